/* The edwards25519 group -x^2 + y^2 = 1 + d x^2 y^2 (Hisil-Wong-Carter-Dawson formulas, a = -1),
 * variable time: verification handles only public data.
 * Representations: p2 (X:Y:Z), p3 extended (X:Y:Z:T, T = XY/Z), p1p1 "completed" (x = X/Z,
 * y = Y/T; what add and dbl produce before the final multiplies), cached (Y+X, Y-X, Z, 2dT) for
 * adding a point twice or more, precomp (y+x, y-x, 2dxy) for affine table points.
 * These formulas are complete on the whole curve (d is not a square), so points of small or
 * mixed order need no special cases; ZIP-215 accepts such points. */
#ifndef AV_ED25519_GE_H
#define AV_ED25519_GE_H
#include "portable.h"
#ifdef AV_ED25519_FE51
#include "ed25519_fe51.h"
#else
#include "ed25519_fe.h"
#endif
#include "ed25519_tables.h"

#define ED_CONST_D 0
#define ED_CONST_D2 1
#define ED_CONST_SQRTM1 2
#define ED_A_WINDOW 5 /* odd multiples 1A..15A: 8 cached points per work item */

/* The double-scalar schedule of ed_check. Sliding windows (0: the C fallback) add only at a
 * scalar's nonzero digits, about 70 additions a signature, where a CPU branches for free. On a
 * GPU the 32 threads of a warp run each branch when any of them takes it, and with sliding
 * windows some thread has a digit at nearly every bit: the warp issues both additions at ~250
 * bits. Regular digits (1: GPU targets) are odd and nonzero at fixed bits, so every thread adds
 * at the same steps: 64 + 32 additions, none of them idle lanes. Same group element, same bits. */
#ifndef ED_REGULAR_DIGITS
#ifdef KERNEL
#define ED_REGULAR_DIGITS 1
#else
#define ED_REGULAR_DIGITS 0
#endif
#endif
#ifndef ED_REGULAR_A_BITS
#define ED_REGULAR_A_BITS 4 /* bits per regular digit of k: odd multiples 1A..15A, as wNAF-5 */
#endif
#if ED_REGULAR_A_BITS < 1 || ED_REGULAR_A_BITS > 8
#error "ED_REGULAR_A_BITS must be 1..8: ed_regular_entry reads a digit from two bytes"
#endif

/* The point formulas below, inline by default. ED_OUTLINE_POINTS=1 keeps them out of line on
 * CUDA (elsewhere DEVICE_OUTLINED is DEVICE): a tuning variant (bench/ed25519_variants.py), since
 * inlined, the loop of ed_check is 150 KB of sm_90 code, past an SM's instruction cache. */
#if defined(ED_OUTLINE_POINTS) && ED_OUTLINE_POINTS
#define ED_POINT_FN DEVICE_OUTLINED
#else
#define ED_POINT_FN DEVICE
#endif

typedef struct { ed_fe X, Y, Z; } ed_p2;
typedef struct { ed_fe X, Y, Z, T; } ed_p3;
typedef struct { ed_fe X, Y, Z, T; } ed_p1p1;
typedef struct { ed_fe YpX, YmX, Z, T2d; } ed_cached;
typedef struct { ed_fe ypx, ymx, xy2d; } ed_precomp;

DEVICE void ed_fe_const(ed_fe *h, u32 which) {
    for (u32 i = 0; i < ED_FE_LIMBS; i++) h->v[i] = ED_CONST[which][i];
}

DEVICE void ed_base_load(ed_precomp *p, u32 idx) {
    for (u32 i = 0; i < ED_FE_LIMBS; i++) {
        p->ypx.v[i] = ED_BASE[idx][0][i];
        p->ymx.v[i] = ED_BASE[idx][1][i];
        p->xy2d.v[i] = ED_BASE[idx][2][i];
    }
}

/* Table entry idx as a cached point (Z = 1), for code that adds through ed_add only. */
DEVICE void ed_base_cached(ed_cached *c, u32 idx) {
    for (u32 i = 0; i < ED_FE_LIMBS; i++) {
        c->YpX.v[i] = ED_BASE[idx][0][i];
        c->YmX.v[i] = ED_BASE[idx][1][i];
        c->Z.v[i] = i == 0;
        c->T2d.v[i] = ED_BASE[idx][2][i];
    }
}

DEVICE int ed_fe_iszero(const ed_fe *f) {
    u8 s[32];
    ed_fe_tobytes(s, f);
    u8 acc = 0;
    for (u32 i = 0; i < 32; i++) acc |= s[i];
    return acc == 0;
}

DEVICE int ed_fe_isodd(const ed_fe *f) {
    u8 s[32];
    ed_fe_tobytes(s, f);
    return s[0] & 1;
}

DEVICE void ed_fe_sqn(ed_fe *h, const ed_fe *f, u32 n) {
    ed_fe_sq(h, f);
    for (u32 i = 1; i < n; i++) ed_fe_sq(h, h);
}

/* z^((p-5)/8) = z^(2^252 - 3), the core of the square root in decoding. */
DEVICE void ed_fe_pow22523(ed_fe *out, const ed_fe *z) {
    ed_fe z2, z9, a, b, c;
    ed_fe_sq(&z2, z);
    ed_fe_sqn(&a, &z2, 2);
    ed_fe_mul(&z9, &a, z);
    ed_fe_mul(&a, &z9, &z2);
    ed_fe_sq(&a, &a);
    ed_fe_mul(&a, &a, &z9);       /* 2^5 - 1 */
    ed_fe_sqn(&b, &a, 5);
    ed_fe_mul(&b, &b, &a);        /* 2^10 - 1 */
    ed_fe_sqn(&c, &b, 10);
    ed_fe_mul(&c, &c, &b);        /* 2^20 - 1 */
    ed_fe_sqn(&a, &c, 20);
    ed_fe_mul(&a, &a, &c);        /* 2^40 - 1 */
    ed_fe_sqn(&a, &a, 10);
    ed_fe_mul(&a, &a, &b);        /* 2^50 - 1 */
    ed_fe_sqn(&b, &a, 50);
    ed_fe_mul(&b, &b, &a);        /* 2^100 - 1 */
    ed_fe_sqn(&c, &b, 100);
    ed_fe_mul(&c, &c, &b);        /* 2^200 - 1 */
    ed_fe_sqn(&c, &c, 50);
    ed_fe_mul(&c, &c, &a);        /* 2^250 - 1 */
    ed_fe_sqn(&c, &c, 2);
    ed_fe_mul(out, &c, z);        /* 2^252 - 3 */
}

/* ZIP-215 decoding: y is taken mod p, so encodings with y >= p are accepted, and so is x = 0
 * with the sign bit set. Fails (returns 0) only when no x satisfies the curve equation. */
DEVICE_OUTLINED int ed_p3_decode(ed_p3 *h, const u8 *s) {
    ed_fe u, v, v3, t, check;
    ed_fe_frombytes(&h->Y, s);
    ed_fe_set(&h->Z, 1);
    ed_fe_sq(&u, &h->Y);
    ed_fe_const(&t, ED_CONST_D);
    ed_fe_mul(&v, &u, &t);
    ed_fe_sub(&u, &u, &h->Z);          /* u = y^2 - 1 */
    ed_fe_add(&v, &v, &h->Z);          /* v = d y^2 + 1, never 0 */
    ed_fe_sq(&v3, &v);
    ed_fe_mul(&v3, &v3, &v);
    ed_fe_sq(&t, &v3);
    ed_fe_mul(&t, &t, &v);
    ed_fe_mul(&t, &t, &u);             /* u v^7 */
    ed_fe_pow22523(&t, &t);
    ed_fe_mul(&t, &t, &v3);
    ed_fe_mul(&h->X, &t, &u);          /* candidate sqrt(u / v) = u v^3 (u v^7)^((p-5)/8) */
    ed_fe_sq(&check, &h->X);
    ed_fe_mul(&check, &check, &v);
    ed_fe_sub(&t, &check, &u);
    if (!ed_fe_iszero(&t)) {
        ed_fe_add(&t, &check, &u);
        if (!ed_fe_iszero(&t)) return 0;
        ed_fe_const(&t, ED_CONST_SQRTM1);
        ed_fe_mul(&h->X, &h->X, &t);
    }
    if (ed_fe_isodd(&h->X) != (s[31] >> 7)) ed_fe_neg(&h->X, &h->X);
    ed_fe_mul(&h->T, &h->X, &h->Y);
    return 1;
}

DEVICE void ed_p3_neg(ed_p3 *r, const ed_p3 *p) {
    ed_fe_neg(&r->X, &p->X);
    r->Y = p->Y;
    r->Z = p->Z;
    ed_fe_neg(&r->T, &p->T);
}

DEVICE void ed_p1p1_identity(ed_p1p1 *r) {
    ed_fe_set(&r->X, 0);
    ed_fe_set(&r->Y, 1);
    ed_fe_set(&r->Z, 1);
    ed_fe_set(&r->T, 1);
}

/* x = 0 and y = 1 */
DEVICE int ed_p1p1_is_identity(const ed_p1p1 *p) {
    ed_fe d;
    ed_fe_sub(&d, &p->Y, &p->T);
    return ed_fe_iszero(&p->X) && ed_fe_iszero(&d);
}

ED_POINT_FN void ed_p1p1_to_p2(ed_p2 *r, const ed_p1p1 *p) {
    ed_fe_mul(&r->X, &p->X, &p->T);
    ed_fe_mul(&r->Y, &p->Y, &p->Z);
    ed_fe_mul(&r->Z, &p->Z, &p->T);
}

ED_POINT_FN void ed_p1p1_to_p3(ed_p3 *r, const ed_p1p1 *p) {
    ed_fe_mul(&r->X, &p->X, &p->T);
    ed_fe_mul(&r->Y, &p->Y, &p->Z);
    ed_fe_mul(&r->Z, &p->Z, &p->T);
    ed_fe_mul(&r->T, &p->X, &p->Y);
}

DEVICE void ed_p3_to_cached(ed_cached *c, const ed_p3 *p) {
    ed_fe d2;
    ed_fe_add(&c->YpX, &p->Y, &p->X);
    ed_fe_sub(&c->YmX, &p->Y, &p->X);
    c->Z = p->Z;
    ed_fe_const(&d2, ED_CONST_D2);
    ed_fe_mul(&c->T2d, &p->T, &d2);
}

/* Doubling needs no T, so runs of doublings stay in p2 and skip a multiply each. */
ED_POINT_FN void ed_p2_dbl(ed_p1p1 *r, const ed_p2 *p) {
    ed_fe xx, yy, b, a;
    ed_fe_sq(&xx, &p->X);
    ed_fe_sq(&yy, &p->Y);
    ed_fe_sq(&b, &p->Z);
    ed_fe_add(&b, &b, &b);
    ed_fe_add(&a, &p->X, &p->Y);
    ed_fe_sq(&a, &a);
    ed_fe_add(&r->Y, &yy, &xx);        /* Y^2 + X^2 */
    ed_fe_sub(&r->Z, &yy, &xx);        /* Y^2 - X^2 */
    ed_fe_sub(&r->X, &a, &r->Y);       /* 2XY */
    ed_fe_sub(&r->T, &b, &r->Z);
}

DEVICE void ed_p3_dbl(ed_p1p1 *r, const ed_p3 *p) {
    ed_p2 q;
    q.X = p->X;
    q.Y = p->Y;
    q.Z = p->Z;
    ed_p2_dbl(r, &q);
}

/* r = p + q, or p - q when neg (negating a cached point swaps Y+X with Y-X and flips 2dT). */
ED_POINT_FN void ed_add(ed_p1p1 *r, const ed_p3 *p, const ed_cached *q, int neg) {
    ed_fe a, b, c, d;
    ed_fe_sub(&a, &p->Y, &p->X);
    ed_fe_mul(&a, &a, neg ? &q->YpX : &q->YmX);
    ed_fe_add(&b, &p->Y, &p->X);
    ed_fe_mul(&b, &b, neg ? &q->YmX : &q->YpX);
    ed_fe_mul(&c, &p->T, &q->T2d);
    ed_fe_mul(&d, &p->Z, &q->Z);
    ed_fe_add(&d, &d, &d);
    ed_fe_sub(&r->X, &b, &a);
    ed_fe_add(&r->Y, &b, &a);
    if (neg) {
        ed_fe_sub(&r->Z, &d, &c);
        ed_fe_add(&r->T, &d, &c);
    } else {
        ed_fe_add(&r->Z, &d, &c);
        ed_fe_sub(&r->T, &d, &c);
    }
}

/* Mixed addition with an affine point: Z2 = 1 saves a multiply. */
ED_POINT_FN void ed_madd(ed_p1p1 *r, const ed_p3 *p, const ed_precomp *q, int neg) {
    ed_fe a, b, c, d;
    ed_fe_sub(&a, &p->Y, &p->X);
    ed_fe_mul(&a, &a, neg ? &q->ypx : &q->ymx);
    ed_fe_add(&b, &p->Y, &p->X);
    ed_fe_mul(&b, &b, neg ? &q->ymx : &q->ypx);
    ed_fe_mul(&c, &p->T, &q->xy2d);
    ed_fe_add(&d, &p->Z, &p->Z);
    ed_fe_sub(&r->X, &b, &a);
    ed_fe_add(&r->Y, &b, &a);
    if (neg) {
        ed_fe_sub(&r->Z, &d, &c);
        ed_fe_add(&r->T, &d, &c);
    } else {
        ed_fe_add(&r->Z, &d, &c);
        ed_fe_sub(&r->T, &d, &c);
    }
}

/* Signed sliding window (wNAF) digits of a scalar below 2^253, one nonzero digit per call:
 * returns 0 when none is left, else sets *at and *digit (odd, |digit| < 2^(w-1); w <= 8, so a
 * digit fits an i8). Start with *pos = *carry = 0. The table holds only odd multiples. */
DEVICE int ed_wnaf_next(const u8 *s, u32 w, u32 *pos, u32 *carry, u32 *at, i32 *digit) {
    while (*pos < 256) {
        u32 bits = 0;
        for (u32 k = 0; k < w && *pos + k < 256; k++)
            bits |= (u32)((s[(*pos + k) / 8] >> ((*pos + k) % 8)) & 1) << k;
        u32 window = *carry + bits;
        if ((window & 1) == 0) { /* digit 0 here; any carry moves up one bit */
            (*pos)++;
            continue;
        }
        *at = *pos;
        if (window < (1u << (w - 1))) {
            *digit = (i32)window;
            *carry = 0;
        } else {
            *digit = (i32)window - (i32)(1u << w);
            *carry = 1;
        }
        *pos += w;
        return 1;
    }
    return 0;
}

DEVICE void ed_wnaf(i8 *naf, const u8 *s, u32 w) {
    u32 pos = 0, carry = 0, at;
    i32 digit;
    for (u32 i = 0; i < 256; i++) naf[i] = 0;
    while (ed_wnaf_next(s, w, &pos, &carry, &at, &digit)) naf[at] = (i8)digit;
}

/* Table of odd multiples of -A: *u = -A and *two = cached -2A; ed_odd_next then moves *u on by
 * -2A, so successive calls give -3A, -5A, ... */
DEVICE void ed_odd_start(ed_p3 *u, ed_cached *two, const ed_p3 *A) {
    ed_p1p1 t;
    ed_p3 a2;
    ed_p3_neg(u, A);
    ed_p3_dbl(&t, u);
    ed_p1p1_to_p3(&a2, &t);
    ed_p3_to_cached(two, &a2);
}

DEVICE void ed_odd_next(ed_p3 *u, const ed_cached *two) {
    ed_p1p1 t;
    ed_add(&t, u, two, 0);
    ed_p1p1_to_p3(u, &t);
}

/* Highest position where either digit string is nonzero (-1: both scalars are zero). */
DEVICE int ed_top(const i8 *sn, const i8 *kn) {
    int i = 255;
    while (i >= 0 && sn[i] == 0 && kn[i] == 0) i--;
    return i;
}

/* One step of the double-scalar loop after the doubling and the [k](-A) digit: the [s]B digit. */
DEVICE void ed_base_digit(ed_p1p1 *t, i32 digit) {
    ed_p3 u;
    ed_precomp bp;
    if (digit == 0) return;
    ed_p1p1_to_p3(&u, t);
    ed_base_load(&bp, (u32)(digit < 0 ? -digit : digit) / 2);
    ed_madd(t, &u, &bp, digit < 0);
}

/* Given t = [s]B - [k]A and R as a cached point, whether [8](t - R) is the identity: the
 * cofactored ZIP-215 equation. */
DEVICE int ed_check_finish(const ed_p1p1 *t, const ed_cached *R) {
    ed_p3 u;
    ed_p1p1 v;
    ed_p2 r;
    ed_p1p1_to_p3(&u, t);
    ed_add(&v, &u, R, 1);
    for (u32 j = 0; j < 3; j++) {
        ed_p1p1_to_p2(&r, &v);
        ed_p2_dbl(&v, &r);
    }
    return ed_p1p1_is_identity(&v);
}

/* The cofactored ZIP-215 equation [8]([s]B - [k]A - R) == 0, by one wNAF double-scalar
 * multiplication. s and k are reduced scalars, A and R decoded points. */
DEVICE int ed_check_sliding(const ed_p3 *A, const ed_p3 *R, const u8 *s, const u8 *k) {
    i8 sn[256], kn[256];
    ed_cached ai[1 << (ED_A_WINDOW - 2)], two;
    ed_p3 u;
    ed_p1p1 t;
    ed_p2 r;
    ed_wnaf(sn, s, ED_BASE_WINDOW);
    ed_wnaf(kn, k, ED_A_WINDOW);
    ed_odd_start(&u, &two, A);
    for (u32 i = 0; i < (1u << (ED_A_WINDOW - 2)); i++) {
        if (i) ed_odd_next(&u, &two);
        ed_p3_to_cached(&ai[i], &u);
    }
    ed_p1p1_identity(&t);
    for (int i = ed_top(sn, kn); i >= 0; i--) {
        ed_p1p1_to_p2(&r, &t);
        ed_p2_dbl(&t, &r);
        if (kn[i] != 0) {
            ed_p1p1_to_p3(&u, &t);
            ed_add(&t, &u, &ai[(kn[i] < 0 ? -kn[i] : kn[i]) / 2], kn[i] < 0);
        }
        ed_base_digit(&t, sn[i]);
    }
    ed_cached rc;
    ed_p3_to_cached(&rc, R);
    return ed_check_finish(&t, &rc);
}

/* An odd scalar for regular digits: k, or k + L when k is even (below 2^254 either way). The
 * verdict stays: [L]B = 0, and [L]A is a point of order dividing 8, which the cofactored
 * equation's [8] removes whatever A's torsion. */
DEVICE void ed_sc_odd(u8 *out, const u8 *k) {
    u32 even = (k[0] & 1) ^ 1, carry = 0;
    for (u32 i = 0; i < 32; i++) {
        u32 v = (u32)k[i] + (even ? (ED_L[i / 4] >> (8 * (i % 4))) & 0xff : 0) + carry;
        out[i] = (u8)v;
        carry = v >> 8;
    }
}

/* How many regular w-bit digits an odd scalar below 2^254 takes: the last one then stays below 2^w. */
#define ED_REGULAR_LEN(w) ((255 + (w) - 1) / (w))

/* Regular digit j (at bit w j) of an odd scalar k below 2^254, for a table of odd multiples:
 * returns the entry (|digit| - 1) / 2 and sets *neg. Digit j is 2b + 1 - 2^w for the w bits b of
 * k from bit w j + 1, the last one 2b + 1 for all bits above (Joye-Tunstall recoding, read
 * straight from k: every digit odd, |digit| < 2^w, sum of digit_j 2^(w j) = k). w <= 8. */
DEVICE u32 ed_regular_entry(const u8 *k, u32 j, u32 w, int *neg) {
    u32 at = w * j + 1, i = at / 8, mid = 1u << (w - 1);
    u32 bits = (u32)k[i] | (i + 1 < 32 ? (u32)k[i + 1] << 8 : 0);
    u32 b = (bits >> (at % 8)) & ((1u << w) - 1);
    if (j + 1 == ED_REGULAR_LEN(w)) b |= mid;
    *neg = b < mid;
    return (b & (mid - 1)) ^ (*neg ? mid - 1 : 0);
}

/* ed_check with regular digits: [k](-A) in ED_REGULAR_A_BITS-bit digits from a table of odd
 * multiples, [s]B in 8-bit digits from ED_BASE, over one chain of doublings. */
DEVICE int ed_check_regular(const ed_p3 *A, const ed_p3 *R, const u8 *s, const u8 *k) {
    const u32 wa = ED_REGULAR_A_BITS, wb = ED_BASE_WINDOW;
    const i32 top = (i32)(wa * (ED_REGULAR_LEN(wa) - 1));
    u8 so[32], ko[32];
    ed_cached ai[1 << (ED_REGULAR_A_BITS - 1)], two;
    ed_precomp bp;
    ed_p3 u;
    ed_p1p1 t;
    ed_p2 r;
    int neg;
    ed_sc_odd(so, s);
    ed_sc_odd(ko, k);
    ed_odd_start(&u, &two, A);
    for (u32 i = 0; i < (1u << (ED_REGULAR_A_BITS - 1)); i++) {
        if (i) ed_odd_next(&u, &two);
        ed_p3_to_cached(&ai[i], &u);
    }
    ed_p1p1_identity(&t);
    for (i32 i = top; i >= 0; i--) {
        if (i != top) {
            ed_p1p1_to_p2(&r, &t);
            ed_p2_dbl(&t, &r);
        }
        if ((u32)i % wa == 0) {
            u32 e = ed_regular_entry(ko, (u32)i / wa, wa, &neg);
            ed_p1p1_to_p3(&u, &t);
            ed_add(&t, &u, &ai[e], neg);
        }
        if ((u32)i % wb == 0) {
            ed_base_load(&bp, ed_regular_entry(so, (u32)i / wb, wb, &neg));
            ed_p1p1_to_p3(&u, &t);
            ed_madd(&t, &u, &bp, neg);
        }
    }
    ed_cached rc;
    ed_p3_to_cached(&rc, R);
    return ed_check_finish(&t, &rc);
}

DEVICE int ed_check(const ed_p3 *A, const ed_p3 *R, const u8 *s, const u8 *k) {
#if ED_REGULAR_DIGITS
    return ed_check_regular(A, R, s, k);
#else
    return ed_check_sliding(A, R, s, k);
#endif
}

#endif
