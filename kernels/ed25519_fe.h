/* GF(2^255 - 19), portable: ten signed limbs in radix 2^25.5 (limb i has weight 2^ceil(25.5 i),
 * alternately 26 and 25 bits), so every product fits an i64 without 128-bit integers.
 * After a carry limbs are balanced (|limb| <= 2^25 or 2^24, plus a little in limb 1). Add, sub
 * and neg do not carry; the group code feeds products at most 4-term sums of carried values,
 * which keeps every column of a product below 2^62.
 * ed25519_fe51.h provides the same functions for the C fallback. */
#ifndef AV_ED25519_FE_H
#define AV_ED25519_FE_H
#include "portable.h"

typedef struct { i32 v[10]; } ed_fe;
#define ED_FE_LIMBS 10

DEVICE u32 ed_fe_bits(u32 i) { return (i & 1) ? 25 : 26; }
DEVICE u32 ed_fe_offset(u32 i) { return (51 * i + 1) / 2; }

DEVICE void ed_fe_set(ed_fe *h, i32 small) {
    for (u32 i = 0; i < 10; i++) h->v[i] = 0;
    h->v[0] = small;
}

DEVICE void ed_fe_add(ed_fe *h, const ed_fe *f, const ed_fe *g) {
    for (u32 i = 0; i < 10; i++) h->v[i] = f->v[i] + g->v[i];
}

DEVICE void ed_fe_sub(ed_fe *h, const ed_fe *f, const ed_fe *g) {
    for (u32 i = 0; i < 10; i++) h->v[i] = f->v[i] - g->v[i];
}

DEVICE void ed_fe_neg(ed_fe *h, const ed_fe *f) {
    for (u32 i = 0; i < 10; i++) h->v[i] = -f->v[i];
}

/* Rounding carries leave balanced limbs; the carry out of limb 9 is worth 2^255 = 19. */
DEVICE void ed_fe_carry(ed_fe *h, i64 *t) {
    for (u32 i = 0; i < 10; i++) {
        u32 b = ed_fe_bits(i);
        i64 c = (t[i] + ((i64)1 << (b - 1))) >> b;
        t[i] -= c * ((i64)1 << b);
        if (i < 9) t[i + 1] += c;
        else t[0] += 19 * c;
    }
    i64 c = (t[0] + ((i64)1 << 25)) >> 26;
    t[0] -= c * ((i64)1 << 26);
    t[1] += c;
    for (u32 i = 0; i < 10; i++) h->v[i] = (i32)t[i];
}

/* Inline on every target. Kept out of line (__noinline__), nvcc/NVRTC 13.0 at -O3 miscompiled
 * this file's squares on some inputs: ZIP-215 torsion cases got other verdicts than the C
 * fallback on an H100, while -G or inlining gave the right ones, and gcc/clang with UBSan and
 * ASan find nothing in the source. tests/test_ed25519.py's cross-backend checks catch a relapse.
 *
 * Limbs i and j land in column i + j; both odd means the weights overshoot by one bit (factor
 * 2), and columns past 9 wrap around with factor 19. */
DEVICE void ed_fe_mul(ed_fe *h, const ed_fe *f, const ed_fe *g) {
    i64 t[10];
    for (u32 k = 0; k < 10; k++) t[k] = 0;
    for (u32 i = 0; i < 10; i++) {
        i64 fi = f->v[i];
        for (u32 j = 0; j < 10; j++) {
            i64 gj = g->v[j];
            if (i + j >= 10) gj *= 19;
            if (i & j & 1) gj *= 2;
            t[(i + j) % 10] += fi * gj;
        }
    }
    ed_fe_carry(h, t);
}

DEVICE void ed_fe_sq(ed_fe *h, const ed_fe *f) {
    i64 t[10];
    for (u32 k = 0; k < 10; k++) t[k] = 0;
    for (u32 i = 0; i < 10; i++) {
        i64 fi = f->v[i];
        for (u32 j = i; j < 10; j++) {
            i64 fj = f->v[j];
            if (i != j) fj *= 2;
            if (i + j >= 10) fj *= 19;
            if (i & j & 1) fj *= 2;
            t[(i + j) % 10] += fi * fj;
        }
    }
    ed_fe_carry(h, t);
}

/* Little-endian 255-bit value; bit 255 is ignored and values >= p are accepted (they reduce). */
DEVICE void ed_fe_frombytes(ed_fe *h, const u8 *s) {
    i64 t[10];
    for (u32 i = 0; i < 10; i++) {
        u32 lo = ed_fe_offset(i);
        u64 acc = 0;
        for (u32 k = 0; k < 5; k++)
            if (lo / 8 + k < 32) acc |= (u64)s[lo / 8 + k] << (8 * k);
        t[i] = (i64)((acc >> (lo % 8)) & (((u64)1 << ed_fe_bits(i)) - 1));
    }
    ed_fe_carry(h, t); /* balanced limbs, like every other operand */
}

/* Canonical encoding. A rounding carry first balances the limbs whatever uncarried sums produced
 * f (a difference of such sums can sit below -2p); adding 2p then makes the value positive, two
 * floor-carry passes bring it below 2^255, and a trial carry of value + 19 says whether it is
 * still >= p. */
DEVICE void ed_fe_tobytes(u8 *s, const ed_fe *f) {
    i64 t[10];
    ed_fe g;
    for (u32 i = 0; i < 10; i++) t[i] = f->v[i];
    ed_fe_carry(&g, t);
    for (u32 i = 0; i < 10; i++)
        t[i] = (i64)g.v[i] + ((i64)2 << ed_fe_bits(i)) - (i == 0 ? 38 : 2);
    for (u32 pass = 0; pass < 2; pass++) {
        for (u32 i = 0; i < 10; i++) {
            i64 c = t[i] >> ed_fe_bits(i);
            t[i] -= c * ((i64)1 << ed_fe_bits(i));
            if (i < 9) t[i + 1] += c;
            else t[0] += 19 * c;
        }
    }
    i64 q = 19;
    for (u32 i = 0; i < 10; i++) q = (t[i] + q) >> ed_fe_bits(i);
    t[0] += 19 * q;
    for (u32 i = 0; i < 9; i++) {
        i64 c = t[i] >> ed_fe_bits(i);
        t[i] -= c * ((i64)1 << ed_fe_bits(i));
        t[i + 1] += c;
    }
    t[9] &= ((i64)1 << 25) - 1;
    u64 w[4] = {0, 0, 0, 0};
    for (u32 i = 0; i < 10; i++) {
        u32 off = ed_fe_offset(i);
        w[off / 64] |= (u64)t[i] << (off % 64);
        if (off % 64 + ed_fe_bits(i) > 64) w[off / 64 + 1] |= (u64)t[i] >> (64 - off % 64);
    }
    for (u32 i = 0; i < 32; i++) s[i] = (u8)(w[i / 8] >> (8 * (i % 8)));
}

#endif
