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

/* One rounding carry out of limb i: it leaves limb i balanced; the carry out of limb 9 is worth
 * 2^255 = 19. */
DEVICE void ed_fe_carry_from(i64 *t, u32 i) {
    u32 b = ed_fe_bits(i);
    i64 c = (t[i] + ((i64)1 << (b - 1))) >> b;
    t[i] -= c * ((i64)1 << b);
    if (i < 9) t[i + 1] += c;
    else t[0] += 19 * c;
}

/* Balanced limbs from column sums. By default one chain, limb 0 to 9 and round to 0 and 1 again;
 * ED_FE_CARRY_CHAINS=2 runs two chains side by side (0..4 and 4..9, then 9 round to 0 and 1, as
 * ref10 orders them), half the dependent steps for a GPU to wait on (a tuning variant, timed by
 * bench/ed25519_variants.py). Either leaves every limb within 2^25 plus a little: the limbs differ
 * between the two, their value mod p does not. */
DEVICE void ed_fe_carry(ed_fe *h, i64 *t) {
#if defined(ED_FE_CARRY_CHAINS) && ED_FE_CARRY_CHAINS == 2
    for (u32 i = 0; i < 4; i++) {
        ed_fe_carry_from(t, i);
        ed_fe_carry_from(t, i + 4);
    }
    ed_fe_carry_from(t, 4);
    ed_fe_carry_from(t, 8);
#else
    for (u32 i = 0; i < 9; i++) ed_fe_carry_from(t, i);
#endif
    ed_fe_carry_from(t, 9);
    ed_fe_carry_from(t, 0);
    for (u32 i = 0; i < 10; i++) h->v[i] = (i32)t[i];
}

/* Inline on every target. Kept out of line (__noinline__), nvcc/NVRTC 13.0 at -O3 miscompiled
 * this file's squares on some inputs: ZIP-215 torsion cases got other verdicts than the C
 * fallback on an H100, while -G or inlining gave the right ones, and gcc/clang with UBSan and
 * ASan find nothing in the source. tests/test_ed25519.py's cross-backend checks catch a relapse.
 * ED_OUTLINE_FE=1 builds them out of line again on CUDA, for bench/ed25519_variants.py only,
 * which compares that build's verdicts on the torsion cases with the C fallback's before timing.
 *
 * Limbs i and j land in column i + j; both odd means the weights overshoot by one bit (factor
 * 2), and columns past 9 wrap around with factor 19. Every product is of two i32 values (the
 * factors 2 folded into the limb of f, at most 4 * 2^27 < 2^31), so it is one 32 x 32 -> 64-bit
 * multiply-add on a GPU (MAD_WIDE: IMAD.WIDE on NVIDIA) instead of a 64-bit multiply; a
 * column's wrapped products are summed apart and multiplied by 19 once. Column by column, only
 * two accumulators are live besides t. The column values, and so the results, are the same
 * integers as summing 19 * f_i * g_j term by term: on sm_90 the double-scalar loop of ed_check
 * went from 9,602 to 6,544 instructions and from 255 registers (spilling) to 206. */
#if defined(ED_OUTLINE_FE) && ED_OUTLINE_FE
#define ED_FE_FN DEVICE_OUTLINED
#else
#define ED_FE_FN DEVICE
#endif

ED_FE_FN void ed_fe_mul(ed_fe *h, const ed_fe *f, const ed_fe *g) {
    i64 t[10];
    for (u32 k = 0; k < 10; k++) { /* column k: f_i g_j with i + j = k, then 19x those with k + 10 */
        i64 col = 0, wrap = 0;
        for (u32 i = 0; i <= k; i++)
            col = MAD_WIDE((i & (k - i) & 1) ? 2 * f->v[i] : f->v[i], g->v[k - i], col);
        for (u32 i = k + 1; i < 10; i++)
            wrap = MAD_WIDE((i & (k + 10 - i) & 1) ? 2 * f->v[i] : f->v[i], g->v[k + 10 - i], wrap);
        t[k] = col + 19 * wrap;
    }
    ed_fe_carry(h, t);
}

ED_FE_FN void ed_fe_sq(ed_fe *h, const ed_fe *f) {
    i64 t[10];
    for (u32 k = 0; k < 10; k++) { /* as ed_fe_mul, each cross term once and doubled */
        i64 col = 0, wrap = 0;
        for (u32 i = 0; 2 * i <= k; i++) {
            u32 j = k - i;
            col = MAD_WIDE((i != j ? 2 : 1) * ((i & j & 1) ? 2 : 1) * f->v[i], f->v[j], col);
        }
        for (u32 i = (k + 11) / 2; i < 10; i++) {
            u32 j = k + 10 - i;
            wrap = MAD_WIDE((i != j ? 2 : 1) * ((i & j & 1) ? 2 : 1) * f->v[i], f->v[j], wrap);
        }
        t[k] = col + 19 * wrap;
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
