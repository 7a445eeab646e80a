/* GF(2^255 - 19) for the C fallback only: five unsigned 51-bit limbs with 128-bit products,
 * about three times fewer multiplies than the portable radix 2^25.5 field. Same function names
 * as ed25519_fe.h; native/ed25519.c selects it by defining AV_ED25519_FE51.
 * Limbs are < 2^52 after a carry. Subtraction adds 4p first (so subtrahends up to 2^53, i.e.
 * 2-term sums, stay non-negative) and carries; addition does not carry. Products accept inputs
 * below 2^55, far above what the group code feeds them. */
#ifndef AV_ED25519_FE51_H
#define AV_ED25519_FE51_H
#include "portable.h"

typedef struct { u64 v[5]; } ed_fe;
#define ED_FE_LIMBS 5
typedef unsigned __int128 ed_u128;

#define ED_MASK51 ((((u64)1) << 51) - 1)

static inline void ed_fe_set(ed_fe *h, i32 small) {
    h->v[0] = (u64)small;
    h->v[1] = h->v[2] = h->v[3] = h->v[4] = 0;
}

static inline void ed_fe_add(ed_fe *h, const ed_fe *f, const ed_fe *g) {
    for (int i = 0; i < 5; i++) h->v[i] = f->v[i] + g->v[i];
}

static inline void ed_fe_weak_carry(ed_fe *h) {
    u64 c;
    c = h->v[0] >> 51; h->v[0] &= ED_MASK51; h->v[1] += c;
    c = h->v[1] >> 51; h->v[1] &= ED_MASK51; h->v[2] += c;
    c = h->v[2] >> 51; h->v[2] &= ED_MASK51; h->v[3] += c;
    c = h->v[3] >> 51; h->v[3] &= ED_MASK51; h->v[4] += c;
    c = h->v[4] >> 51; h->v[4] &= ED_MASK51; h->v[0] += 19 * c;
}

static inline void ed_fe_sub(ed_fe *h, const ed_fe *f, const ed_fe *g) {
    /* 4p = (2^53 - 76, 2^53 - 4, ...) in radix 2^51 */
    h->v[0] = f->v[0] + 0x1FFFFFFFFFFFB4 - g->v[0];
    for (int i = 1; i < 5; i++) h->v[i] = f->v[i] + 0x1FFFFFFFFFFFFC - g->v[i];
    ed_fe_weak_carry(h);
}

static inline void ed_fe_neg(ed_fe *h, const ed_fe *f) {
    ed_fe zero = {{0, 0, 0, 0, 0}};
    ed_fe_sub(h, &zero, f);
}

static inline void ed_fe_reduce_wide(ed_fe *h, ed_u128 t0, ed_u128 t1, ed_u128 t2, ed_u128 t3,
                                     ed_u128 t4) {
    t1 += t0 >> 51;
    t2 += t1 >> 51;
    t3 += t2 >> 51;
    t4 += t3 >> 51;
    ed_u128 r0 = (t0 & ED_MASK51) + 19 * (t4 >> 51);
    h->v[0] = (u64)r0 & ED_MASK51;
    h->v[1] = ((u64)t1 & ED_MASK51) + (u64)(r0 >> 51);
    h->v[2] = (u64)t2 & ED_MASK51;
    h->v[3] = (u64)t3 & ED_MASK51;
    h->v[4] = (u64)t4 & ED_MASK51;
}

static inline void ed_fe_mul(ed_fe *h, const ed_fe *f, const ed_fe *g) {
    u64 f0 = f->v[0], f1 = f->v[1], f2 = f->v[2], f3 = f->v[3], f4 = f->v[4];
    u64 g0 = g->v[0], g1 = g->v[1], g2 = g->v[2], g3 = g->v[3], g4 = g->v[4];
    u64 g1_19 = 19 * g1, g2_19 = 19 * g2, g3_19 = 19 * g3, g4_19 = 19 * g4;
    ed_u128 t0 = (ed_u128)f0 * g0 + (ed_u128)f1 * g4_19 + (ed_u128)f2 * g3_19
               + (ed_u128)f3 * g2_19 + (ed_u128)f4 * g1_19;
    ed_u128 t1 = (ed_u128)f0 * g1 + (ed_u128)f1 * g0 + (ed_u128)f2 * g4_19
               + (ed_u128)f3 * g3_19 + (ed_u128)f4 * g2_19;
    ed_u128 t2 = (ed_u128)f0 * g2 + (ed_u128)f1 * g1 + (ed_u128)f2 * g0
               + (ed_u128)f3 * g4_19 + (ed_u128)f4 * g3_19;
    ed_u128 t3 = (ed_u128)f0 * g3 + (ed_u128)f1 * g2 + (ed_u128)f2 * g1
               + (ed_u128)f3 * g0 + (ed_u128)f4 * g4_19;
    ed_u128 t4 = (ed_u128)f0 * g4 + (ed_u128)f1 * g3 + (ed_u128)f2 * g2
               + (ed_u128)f3 * g1 + (ed_u128)f4 * g0;
    ed_fe_reduce_wide(h, t0, t1, t2, t3, t4);
}

static inline void ed_fe_sq(ed_fe *h, const ed_fe *f) {
    u64 f0 = f->v[0], f1 = f->v[1], f2 = f->v[2], f3 = f->v[3], f4 = f->v[4];
    u64 f0_2 = 2 * f0, f1_2 = 2 * f1;
    u64 f1_38 = 38 * f1, f2_38 = 38 * f2, f3_38 = 38 * f3, f3_19 = 19 * f3, f4_19 = 19 * f4;
    ed_u128 t0 = (ed_u128)f0 * f0 + (ed_u128)f1_38 * f4 + (ed_u128)f2_38 * f3;
    ed_u128 t1 = (ed_u128)f0_2 * f1 + (ed_u128)f2_38 * f4 + (ed_u128)f3_19 * f3;
    ed_u128 t2 = (ed_u128)f0_2 * f2 + (ed_u128)f1 * f1 + (ed_u128)f3_38 * f4;
    ed_u128 t3 = (ed_u128)f0_2 * f3 + (ed_u128)f1_2 * f2 + (ed_u128)f4_19 * f4;
    ed_u128 t4 = (ed_u128)f0_2 * f4 + (ed_u128)f1_2 * f3 + (ed_u128)f2 * f2;
    ed_fe_reduce_wide(h, t0, t1, t2, t3, t4);
}

/* Bit 255 is ignored and values >= p are accepted (they reduce). */
static inline void ed_fe_frombytes(ed_fe *h, const u8 *s) {
    u64 w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = 0;
        for (int j = 7; j >= 0; j--) w[i] = (w[i] << 8) | s[8 * i + j];
    }
    h->v[0] = w[0] & ED_MASK51;
    h->v[1] = ((w[0] >> 51) | (w[1] << 13)) & ED_MASK51;
    h->v[2] = ((w[1] >> 38) | (w[2] << 26)) & ED_MASK51;
    h->v[3] = ((w[2] >> 25) | (w[3] << 39)) & ED_MASK51;
    h->v[4] = (w[3] >> 12) & ED_MASK51;
}

/* Canonical encoding: carry fully, then subtract p once if value + 19 reaches 2^255. */
static inline void ed_fe_tobytes(u8 *s, const ed_fe *f) {
    ed_fe t = *f;
    ed_fe_weak_carry(&t);
    ed_fe_weak_carry(&t);
    u64 q = (t.v[0] + 19) >> 51;
    q = (t.v[1] + q) >> 51;
    q = (t.v[2] + q) >> 51;
    q = (t.v[3] + q) >> 51;
    q = (t.v[4] + q) >> 51;
    t.v[0] += 19 * q;
    for (int i = 0; i < 4; i++) {
        t.v[i + 1] += t.v[i] >> 51;
        t.v[i] &= ED_MASK51;
    }
    t.v[4] &= ED_MASK51;
    u64 w[4] = {t.v[0] | (t.v[1] << 51), (t.v[1] >> 13) | (t.v[2] << 38),
                (t.v[2] >> 26) | (t.v[3] << 25), (t.v[3] >> 39) | (t.v[4] << 12)};
    for (int i = 0; i < 32; i++) s[i] = (u8)(w[i / 8] >> (8 * (i % 8)));
}

#endif
