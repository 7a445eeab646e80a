/* Deterministic elementary functions for the risk kernels.
 *
 * CUDA's and glibc's exp/log/erfc differ in the last ulp, so every kernel uses these instead:
 * + - * / only, one fixed evaluation order, built with contraction off on every target, so each
 * backend returns the same bits. Accuracy is about 1 ulp for exp and log and a few ulp relative
 * for the normal tail, far inside the 1e-12 the pricing needs.
 *
 * Coefficient provenance (reproducible with mpmath at 40 digits):
 *   exp: Taylor coefficients 1/n!, n = 2..13, after reduction to |r| <= ln2/2.
 *   log: atanh series coefficients 2/(2k+1), k = 1..12, for s = f/(2+f), |s| <= 0.1716.
 *   ncdf: Phi(-u) = pdf(u) * M(u), M the Mills ratio, from mpmath.chebyfit (28 coefficients) of
 *   M(4 (1+w)/(1-w)) for w = (u-4)/(u+4) in [-1, 40/48], i.e. u in [0, 44]; fit error 4e-21,
 *   9e-16 relative once the coefficients are rounded to double.
 * Every polynomial has a multiple of 4 coefficients and runs as four interleaved Horner chains in
 * s^4: a quarter of the dependent latency of one chain, which is what bounds the CPU loop. */
#ifndef AV_MATHX_H
#define AV_MATHX_H
#include "portable.h"

/* Type punning through a union is defined in C99 and OpenCL C and supported by nvcc/NVRTC. */
typedef union { double d; u64 u; } mx_bits;

DEVICE double mx_from_bits(u64 u) { mx_bits b; b.u = u; return b.d; }
DEVICE u64 mx_to_bits(double d) { mx_bits b; b.d = d; return b.u; }
DEVICE double mx_inf(void) { return mx_from_bits(0x7ff0000000000000ULL); }
/* c ? a : b through bit masks: selects written as ?: let gcc sink the arithmetic of one side into
 * a branch it then cannot if-convert, which stops the C loop from vectorising. */
DEVICE double mx_sel(int c, double a, double b)
{
    u64 m = (u64)0 - (u64)(c != 0);
    return mx_from_bits((mx_to_bits(a) & m) | (mx_to_bits(b) & ~m));
}
/* Finite: not NaN and not infinite, from the exponent bits (no comparison a compiler could fold). */
DEVICE int mx_isfinite(double x) { return (mx_to_bits(x) & 0x7ff0000000000000ULL) != 0x7ff0000000000000ULL; }
DEVICE double mx_abs(double x) { return mx_from_bits(mx_to_bits(x) & 0x7fffffffffffffffULL); }
DEVICE double mx_min(double a, double b) { return mx_sel(b < a, b, a); }
DEVICE double mx_max(double a, double b) { return mx_sel(b > a, b, a); }

/* 2^k for -1022 <= k <= 1023, built from the exponent bits. */
DEVICE double mx_pow2(i32 k) { return mx_from_bits((u64)(u32)(k + 1023) << 52); }

/* out = tab[start] s^(4g-1) + ... + tab[start+4g-1], highest degree first, g = groups of 4. */
#define MX_POLY4(out, tab, start, groups, s)                                                     \
    do {                                                                                         \
        double s2_ = (s) * (s), s4_ = s2_ * s2_;                                                 \
        u64 o_ = (u64)(start);                                                                   \
        double a_ = tab[o_], b_ = tab[o_ + 1], c_ = tab[o_ + 2], d_ = tab[o_ + 3];               \
        for (int g_ = 1; g_ < (groups); g_++) {                                                  \
            o_ += 4;                                                                             \
            a_ = a_ * s4_ + tab[o_];                                                             \
            b_ = b_ * s4_ + tab[o_ + 1];                                                         \
            c_ = c_ * s4_ + tab[o_ + 2];                                                         \
            d_ = d_ * s4_ + tab[o_ + 3];                                                         \
        }                                                                                        \
        out = (a_ * (s) + b_) * s2_ + (c_ * (s) + d_);                                           \
    } while (0)

#define MX_LN2_HI 6.93147180369123816490e-01 /* 21 trailing zero bits: k*MX_LN2_HI is exact */
#define MX_LN2_LO 1.9082149292705877e-10
#define MX_INV_LN2 1.4426950408889634
#define MX_INV_SQRT_2PI 0.3989422804014327

CONSTANT_TABLE double MX_EXP_C[12] = {
    1.6059043836821613e-10, 2.08767569878681e-09, 2.505210838544172e-08,
    2.755731922398589e-07, 2.7557319223985893e-06, 2.48015873015873e-05,
    0.0001984126984126984, 0.001388888888888889, 0.008333333333333333,
    0.041666666666666664, 0.16666666666666666, 0.5
};

DEVICE double mx_exp(double x)
{
    /* x = k*ln2 + r, |r| <= ln2/2; k = kd rounded to nearest by adding and removing 1.5*2^52.
     * Out of range (or NaN) kd is replaced by 0 to keep the conversion defined; those results are
     * selected at the end, so nothing here branches on data. */
    double kd = x * MX_INV_LN2;
    kd = mx_sel((kd > -1100.0) & (kd < 1100.0), kd, 0.0);
    i32 k = (i32)((kd + 6755399441055744.0) - 6755399441055744.0);
    double hi = x - (double)k * MX_LN2_HI;
    double lo = (double)k * MX_LN2_LO;
    double r = hi - lo;
    double p;
    MX_POLY4(p, MX_EXP_C, 0, 3, r);
    /* exp(r) = 1 + (hi - (lo - r^2 p)): the small part is summed before adding the 1 */
    double y = 1.0 + (hi - (lo - r * r * p));
    /* 2^k in two exact factors; below 2^-1021 the second one rounds a subnormal result once.
     * k2 = -1000 if k < -1021, 1 if k > 1023, else 0, from sign bits: gcc turns compares into
     * branches here. */
    i32 k2 = -1000 * (i32)((u32)(k + 1021) >> 31) + (i32)((u32)(1023 - k) >> 31);
    double v = y * mx_pow2(k - k2) * mx_pow2(k2);
    v = mx_sel(x > 709.782712893384, mx_inf(), v);
    v = mx_sel(x < -745.2, 0.0, v);
    return mx_sel(x != x, x, v);
}

CONSTANT_TABLE double MX_LOG_C[12] = {
    0.08, 0.08695652173913043, 0.09523809523809523,
    0.10526315789473684, 0.11764705882352941, 0.13333333333333333,
    0.15384615384615385, 0.18181818181818182, 0.2222222222222222,
    0.2857142857142857, 0.4, 0.6666666666666666
};

/* Natural log for x >= 0 (0 gives -inf, inf gives inf); callers never pass negatives or NaN.
 * Branch-free like mx_exp. */
DEVICE double mx_log(double x)
{
    /* subnormal (or 0, exponent field 0): scale by 2^54 first, in integer arithmetic so gcc keeps
     * it branch-free */
    u64 sub = ((mx_to_bits(x) >> 52) - 1) >> 63;
    u64 b = mx_to_bits(x * mx_from_bits(0x3ff0000000000000ULL + sub * (54ULL << 52)));
    i32 k = (i32)(b >> 52) - 1023 - 54 * (i32)sub;
    double m = mx_from_bits((b & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL); /* [1, 2) */
    int big = m > 1.4142135623730951; /* to [sqrt(1/2), sqrt(2)] */
    m = mx_sel(big, m * 0.5, m);
    k += big;
    double f = m - 1.0;
    double s = f / (2.0 + f);
    double z = s * s;
    double r;
    MX_POLY4(r, MX_LOG_C, 0, 3, z);
    r = r * z;
    double hfsq = 0.5 * f * f;
    double kd = (double)k;
    /* log(1+f) = f - hfsq + s*(hfsq + R): the correction terms are summed before f */
    double v = kd * MX_LN2_HI - ((hfsq - (s * (hfsq + r) + kd * MX_LN2_LO)) - f);
    v = mx_sel(x == 0.0, -mx_inf(), v);
    return mx_sel(x > 1.7976931348623157e308, x, v);
}

/* x^p for x > 0. */
DEVICE double mx_pow(double x, double p) { return mx_exp(p * mx_log(x)); }

/* Standard normal density. A single exp of -x^2/2 costs at most x^2 * 5.6e-17 relative error
 * (7.5e-14 where the density underflows), well inside the pricing tolerance, so the split form
 * exp(-hi^2/2)*exp(-(x-hi)(x+hi)/2) is not needed. */
DEVICE double mx_npdf(double x) { return MX_INV_SQRT_2PI * mx_exp(-0.5 * (x * x)); }

CONSTANT_TABLE double MX_MILLS_C[28] = {
    -2.0413246427731482e-11, -7.927806444762621e-11, 3.2727122405453924e-11,
    6.078299112665504e-10, 6.654448337657835e-10, -2.1961057193228833e-09,
    -5.934462386698541e-09, 2.978253084505927e-09, 3.148500274925815e-08,
    2.1002566985021374e-08, -1.3418717709691641e-07, -2.3448908568035809e-07,
    5.176305002321168e-07, 1.65749648670305e-06, -2.0795959006017973e-06,
    -1.0787239282565638e-05, 1.1609763625746678e-05, 7.181071820125288e-05,
    -0.00011418921790530319, -0.0004692013782834537, 0.0016012688666719036,
    0.001272269448062075, -0.02128652664657672, 0.07736659066386112,
    -0.17974381473324635, 0.3117725582109463, -0.4271237467660585,
    0.23665238291356067
};

/* Standard normal CDF Phi(x), given pdf = mx_npdf(x) so callers that also need the density pay
 * for one exp. Phi(-u) = pdf(u) * M(u) for u = |x|, and Phi(x) = 1 - Phi(-x) for x > 0, so the
 * lower tail keeps its relative accuracy. One polynomial in w = (u-4)/(u+4) covers every u: no
 * table lookup by interval, which would cost the vectorised C loop a gather per coefficient. */
DEVICE double mx_ncdf_pdf(double x, double pdf)
{
    double u = mx_min(mx_abs(x), 44.0); /* pdf is exactly 0 beyond 38.6 */
    double w = (u - 4.0) / (u + 4.0);
    double m;
    MX_POLY4(m, MX_MILLS_C, 0, 7, w);
    double tail = pdf * m;
    return mx_sel(x < 0.0, tail, 1.0 - tail);
}

#endif
