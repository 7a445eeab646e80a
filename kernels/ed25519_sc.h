/* Scalars mod L = 2^252 + 27742317777372353535851937790883648493, as little-endian bytes.
 * Reduction is Barrett's (HAC 14.42) on 32-bit limbs with 64-bit products: plain integer code
 * that every target compiles. */
#ifndef AV_ED25519_SC_H
#define AV_ED25519_SC_H
#include "portable.h"
#include "ed25519_tables.h"

DEVICE u32 ed_sc_word(const u8 *s, u32 i) {
    return (u32)s[4 * i] | ((u32)s[4 * i + 1] << 8) | ((u32)s[4 * i + 2] << 16)
           | ((u32)s[4 * i + 3] << 24);
}

/* w (9 limbs) >= L */
DEVICE int ed_sc_geq_l(const u32 *w) {
    if (w[8] != 0) return 1;
    for (int i = 7; i >= 0; i--)
        if (w[i] != ED_L[i]) return w[i] > ED_L[i];
    return 1;
}

/* ZIP-215 and RFC 8032 both require S < L. */
DEVICE int ed_sc_is_canonical(const u8 *s) {
    u32 w[9];
    for (u32 i = 0; i < 8; i++) w[i] = ed_sc_word(s, i);
    w[8] = 0;
    return !ed_sc_geq_l(w);
}

/* x (16 limbs, < 2^512) mod L into 32 bytes. */
DEVICE void ed_sc_reduce_limbs(u8 *out, const u32 *x) {
    u32 q3[9], r[9];
    u64 q2[18];
    for (u32 i = 0; i < 18; i++) q2[i] = 0;
    /* q2 = floor(x / 2^224) * mu; only limbs 9.. of q2 matter (q3 = q2 / 2^288) */
    for (u32 i = 0; i < 9; i++) {
        u64 carry = 0;
        for (u32 j = 0; j < 9; j++) {
            u64 t = (u64)x[7 + i] * ED_MU[j] + q2[i + j] + carry;
            q2[i + j] = (u32)t;
            carry = t >> 32;
        }
        q2[i + 9] = carry;
    }
    for (u32 i = 0; i < 9; i++) q3[i] = (u32)q2[9 + i];
    /* r = (x - q3 * L) mod 2^288; Barrett guarantees 0 <= r < 3L */
    for (u32 i = 0; i < 9; i++) r[i] = x[i];
    u64 prod[9];
    for (u32 k = 0; k < 9; k++) prod[k] = 0;
    for (u32 i = 0; i < 9; i++) {
        u64 carry = 0;
        for (u32 j = 0; i + j < 9 && j < 8; j++) {
            u64 t = (u64)q3[i] * ED_L[j] + prod[i + j] + carry;
            prod[i + j] = (u32)t;
            carry = t >> 32;
        }
        if (i == 0) prod[8] = carry; /* higher carries fall outside 2^288 */
    }
    u64 borrow = 0;
    for (u32 i = 0; i < 9; i++) {
        u64 t = (u64)r[i] - (u32)prod[i] - borrow;
        r[i] = (u32)t;
        borrow = (t >> 32) & 1;
    }
    for (u32 round = 0; round < 2 && ed_sc_geq_l(r); round++) {
        borrow = 0;
        for (u32 i = 0; i < 9; i++) {
            u64 t = (u64)r[i] - (i < 8 ? ED_L[i] : 0) - borrow;
            r[i] = (u32)t;
            borrow = (t >> 32) & 1;
        }
    }
    for (u32 i = 0; i < 32; i++) out[i] = (u8)(r[i / 4] >> (8 * (i % 4)));
}

DEVICE void ed_sc_reduce64(u8 *out, const u8 *in) {
    u32 x[16];
    for (u32 i = 0; i < 16; i++) x[i] = ed_sc_word(in, i);
    ed_sc_reduce_limbs(out, x);
}

/* out = a * b + c mod L (all 32-byte inputs below 2^256); the batch check combines scalars. */
DEVICE void ed_sc_muladd(u8 *out, const u8 *a, const u8 *b, const u8 *c) {
    u32 aw[8], bw[8], x[16];
    for (u32 i = 0; i < 8; i++) {
        aw[i] = ed_sc_word(a, i);
        bw[i] = ed_sc_word(b, i);
        x[i] = ed_sc_word(c, i);
        x[8 + i] = 0;
    }
    for (u32 i = 0; i < 8; i++) {
        u64 carry = 0;
        for (u32 j = 0; j < 8; j++) {
            u64 t = (u64)aw[i] * bw[j] + x[i + j] + carry;
            x[i + j] = (u32)t;
            carry = t >> 32;
        }
        for (u32 k = i + 8; carry != 0 && k < 16; k++) {
            u64 t = (u64)x[k] + carry;
            x[k] = (u32)t;
            carry = t >> 32;
        }
    }
    ed_sc_reduce_limbs(out, x);
}

#endif
