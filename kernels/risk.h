/* Options risk module: batch greeks and per-account margin (issue 4). Item functions here, the
 * math in mathx.h, black76.h and margin.h; GPU entries at the end. */
#ifndef AV_RISK_H
#define AV_RISK_H
#include "portable.h"
#include "mathx.h"
#include "black76.h"
#include "margin.h"

/* Inputs the Python side would otherwise scan on the host: positive finite x, k, vol, index;
 * finite t >= 0, r, q; exp(-r t) and exp((r-q) t) finite. b76_greeks is safe (no UB, no trap)
 * on any input, so it runs first and invalid results are replaced by NaN. Checked here so valid batches (the
 * common case) cost no extra pass; accel/risk.py names the first bad index when one is NaN. */
DEVICE int greeks_valid(double x, double k, double t, double r, double q, double vol, double index)
{
    /* & not &&: every comparison runs, so the C loop stays branch-free */
    double big = 1.7976931348623157e308;
    double rt = mx_abs(r * t), gt = mx_abs((r - q) * t);
    int ok = (x > 0.0) & (x <= big) & (k > 0.0) & (k <= big) & (vol > 0.0) & (vol <= big);
    ok &= (index > 0.0) & (index <= big) & (t >= 0.0) & (t <= big);
    ok &= (r >= -big) & (r <= big) & (q >= -big) & (q <= big);
    return ok & (rt <= B76_MAX_EXP_ARG) & (gt <= B76_MAX_EXP_ARG);
}

/* One option: its six outputs to out[0], out[stride], ... (all NaN for invalid input or a
 * non-finite result); rt = sqrt(t),
 * assume as for b76_greeks. */
DEVICE void greeks_one(double x, double k, double t, double rt, double r, double q, double vol, double index,
                       u32 flags, u32 assume, GLOBAL double *out, u64 stride)
{
    double g[B76_OUTPUTS];
    b76_greeks(x, k, t, rt, r, q, vol, index, flags, assume, g);
    int ok = greeks_valid(x, k, t, r, q, vol, index);
    /* valid but extreme inputs can overflow double precision: every output then becomes the one
     * canonical NaN (payloads of computed NaNs differ between targets) and the caller raises */
    for (int j = 0; j < B76_OUTPUTS; j++) ok &= mx_isfinite(g[j]);
    double nan = mx_from_bits(0x7ff8000000000000ULL);
    for (int j = 0; j < B76_OUTPUTS; j++) out[(u64)j * stride] = mx_sel(ok, g[j], nan);
}

/* out holds B76_OUTPUTS rows of n: price, delta, gamma, vega, theta, rho. Bit j of `scalars` set:
 * input j (x, k, t, r, q, vol, index, flags) has one element shared by every item. */
DEVICE void greeks_item(u64 i, GLOBAL const double *x, GLOBAL const double *k, GLOBAL const double *t,
                        GLOBAL const double *r, GLOBAL const double *q, GLOBAL const double *vol,
                        GLOBAL const double *index, GLOBAL const u8 *flags, u32 scalars, GLOBAL double *out,
                        u64 n)
{
    double ti = t[(scalars & 4u) ? 0 : i];
    greeks_one(x[(scalars & 1u) ? 0 : i], k[(scalars & 2u) ? 0 : i], ti, sqrt(ti), r[(scalars & 8u) ? 0 : i], q[(scalars & 16u) ? 0 : i], vol[(scalars & 32u) ? 0 : i],
               index[(scalars & 64u) ? 0 : i], flags[(scalars & 128u) ? 0 : i], 0u, out + i, n);
}

#ifdef KERNEL
KERNEL void av_greeks(GLOBAL const double *x, GLOBAL const double *k, GLOBAL const double *t,
                      GLOBAL const double *r, GLOBAL const double *q, GLOBAL const double *vol,
                      GLOBAL const double *index, GLOBAL const u8 *flags, u32 scalars, GLOBAL double *out,
                      u64 n)
{
    u64 i = GLOBAL_ID;
    if (i < n) greeks_item(i, x, k, t, r, q, vol, index, flags, scalars, out, n);
}

KERNEL void av_portfolio_margin(GLOBAL const i64 *offsets, GLOBAL const i32 *pos_inst,
                                GLOBAL const double *pos_size, GLOBAL const double *forward,
                                GLOBAL const double *strike, GLOBAL const double *expiry,
                                GLOBAL const double *vol, GLOBAL const u8 *kind, GLOBAL const double *pp,
                                GLOBAL i64 *im, GLOBAL i64 *mm, GLOBAL i32 *worst, u64 n)
{
    u64 a = GLOBAL_ID;
    if (a < n) portfolio_margin_item(a, offsets, pos_inst, pos_size, forward, strike, expiry, vol, kind, pp, im, mm, worst);
}

KERNEL void av_standard_margin(GLOBAL const i64 *offsets, GLOBAL const i32 *pos_inst,
                               GLOBAL const double *pos_size, GLOBAL const double *forward,
                               GLOBAL const double *strike, GLOBAL const double *expiry,
                               GLOBAL const double *vol, GLOBAL const u8 *kind, GLOBAL const double *pp,
                               GLOBAL i64 *im, GLOBAL i64 *mm, u64 n)
{
    u64 a = GLOBAL_ID;
    if (a < n) standard_margin_item(a, offsets, pos_inst, pos_size, forward, strike, expiry, vol, kind, pp, im, mm);
}
#endif

#endif
