/* European option price and greeks under Black-76 on the forward, and Black-Scholes-Merton on
 * the spot through F = S*exp((r-q)t). Units are "per 1.00": vega per unit of volatility, theta
 * per year (the value lost as one year passes), rho per unit of rate; docs/RISK.md gives the
 * per-point and per-day conversions and the greeks at expiry. */
#ifndef AV_BLACK76_H
#define AV_BLACK76_H
#include "portable.h"
#include "mathx.h"

#define B76_CALL 1u    /* flag bit: call (else put) */
#define B76_INVERSE 2u /* flag bit: coin-settled, every output divided by the index */
#define B76_SPOT 4u    /* flag bit: the underlying input is the spot, q a dividend/carry yield */

#define B76_ASSUME_NO_CARRY 1u /* every q == r (Black-76): exp((r-q)t) is 1 */
#define B76_ASSUME_LINEAR 2u   /* no B76_INVERSE flag: no division by the index */

#define B76_OUTPUTS 6 /* price, delta, gamma, vega, theta, rho */
#define B76_MAX_EXP_ARG 700.0 /* |r t| and |(r-q) t| bound: the discount and growth stay finite */

/* Undiscounted Black price on the forward, omega = +1 call / -1 put, s = vol*sqrt(t) (at s = 0
 * the results are meaningless and the callers select the expiry values instead); also gives
 * pdf(d1), Phi(omega d1) and Phi(omega d2) to the greeks. One exp serves both densities:
 * pdf(d2) = pdf(d1) * F/K, taken from the larger density so the other cannot be lost to underflow. */
DEVICE double b76_core(double omega, double f, double k, double s, double *pdf1, double *n1, double *n2)
{
    double fk = f / k;
    double d1 = mx_log(fk) / s + 0.5 * s;
    double d2 = d1 - s;
    int first = mx_abs(d1) <= mx_abs(d2);
    double p = mx_npdf(mx_sel(first, d1, d2));
    double other = mx_sel(p > 0.0, mx_sel(first, p * fk, p / fk), 0.0);
    double p1 = mx_sel(first, p, other);
    double p2 = mx_sel(first, other, p);
    *pdf1 = p1;
    *n1 = mx_ncdf_pdf(omega * d1, p1);
    *n2 = mx_ncdf_pdf(omega * d2, p2);
    return omega * (f * *n1 - k * *n2);
}

/* Discounted price only (the margin scenarios need nothing else); disc = exp(-r t), rt = sqrt(t).
 * Branch-free like b76_greeks: the intrinsic value is selected when vol*sqrt(t) is 0. */
DEVICE double b76_price(u32 flags, double f, double k, double rt, double vol, double disc)
{
    double omega = mx_sel((flags & B76_CALL) != 0, 1.0, -1.0);
    double s = vol * rt;
    double pdf1, n1, n2;
    double price = b76_core(omega, f, k, s, &pdf1, &n1, &n2);
    return disc * mx_sel(s > 0.0, price, mx_max(omega * (f - k), 0.0));
}

/* All six outputs for one option into g[0..5].
 * Black-76 is BSM with q = r (then F = x): the caller passes q = r for it, and B76_SPOT only picks
 * rho (BSM moves the forward with r, Black-76 holds it).
 * rt = sqrt(t) comes from the caller: the C loop takes it outside its vectorised part, where
 * gcc's sqrt keeps an errno branch.
 * `assume` is 0 on the GPU; the C loop passes B76_ASSUME_* constants for blocks where they hold,
 * which only drops work whose result is exact (exp(0) = 1, x/1 = x): the bits do not change.
 * Every case is computed and selected (mx_sel), with no data-dependent branch, so the C loop
 * vectorises; the expiry values apply when vol*sqrt(t) is 0. */
DEVICE void b76_greeks(double x, double k, double t, double rt, double r, double q, double vol,
                       double index, u32 flags, u32 assume, double *g)
{
    double omega = mx_sel((flags & B76_CALL) != 0, 1.0, -1.0);
    double disc = mx_exp(-r * t);
    double growth = (assume & B76_ASSUME_NO_CARRY) ? 1.0 : mx_exp((r - q) * t); /* exactly 1 if q = r */
    double dq = disc * growth;            /* exp(-q t): delta and gamma are by x */
    double f = x * growth;
    double s = vol * rt;
    double pdf1, n1, n2;
    double price = disc * b76_core(omega, f, k, s, &pdf1, &n1, &n2);
    double delta = omega * dq * n1;
    double gamma = mx_sel(pdf1 > 0.0, dq * pdf1 / (x * s), 0.0); /* x*s may underflow to 0 */
    double vega = disc * f * pdf1 * rt;
    double decay = vega * vol / (2.0 * t); /* = disc*F*pdf1*vol/(2 sqrt t) */
    double theta = omega * disc * (q * f * n1 - r * k * n2) - decay;
    double rho = mx_sel((flags & B76_SPOT) != 0, omega * t * k * disc * n2, -t * price);
    /* expiry: intrinsic value, step delta (half at the money), the other greeks 0 */
    int expired = !(s > 0.0);
    double itm = omega * (f - k);
    double step = mx_sel(itm > 0.0, 1.0, mx_sel(itm == 0.0, 0.5, 0.0));
    double scale = (assume & B76_ASSUME_LINEAR) ? 1.0 : mx_sel((flags & B76_INVERSE) != 0, index, 1.0);
    g[0] = mx_sel(expired, disc * mx_max(itm, 0.0), price) / scale;
    g[1] = mx_sel(expired, omega * dq * step, delta) / scale;
    g[2] = mx_sel(expired, 0.0, gamma) / scale;
    g[3] = mx_sel(expired, 0.0, vega) / scale;
    g[4] = mx_sel(expired, 0.0, theta) / scale;
    g[5] = mx_sel(expired, 0.0, rho) / scale;
}

#endif
