/* Per-account margin: Deribit-style portfolio margin (revalue every position under a grid of
 * underlying moves, each position in its own worst volatility state, take the worst loss) and
 * standard margin for short options. One work item per account; positions are summed in array
 * order, so every backend adds the same numbers in the same order. Money leaves as integer
 * ticks. docs/RISK.md documents every parameter. */
#ifndef AV_MARGIN_H
#define AV_MARGIN_H
#include "portable.h"
#include "mathx.h"
#include "black76.h"

#define RK_FUTURE 8u /* instrument flag bit: a future (value F, or -1/F when inverse) */

/* Layout of the float64 parameter array built by accel/risk.py (keep the two in step). */
#define RK_P_NMOVES 0
#define RK_P_NEXT 1
#define RK_P_VOL_UP 2
#define RK_P_VOL_DOWN 3
#define RK_P_VOL_REF_DAYS 4
#define RK_P_VOL_EXPONENT 5
#define RK_P_VOL_DOWN_FLOOR 6
#define RK_P_DAYS_PER_YEAR 7
#define RK_P_EXT_WEIGHT 8 /* informational: the kernel reads each extended move's own weight (below) */
#define RK_P_CONTINGENCY 9
#define RK_P_IM_MULT 10
#define RK_P_TICK 11
#define RK_P_RATE 12
#define RK_P_INDEX 13
#define RK_P_OPT_IM 14
#define RK_P_OPT_IM_FLOOR 15
#define RK_P_OPT_MM 16
#define RK_P_FUT_IM 17
#define RK_P_FUT_MM 18
#define RK_P_VOL_EXPONENT_LONG 19
#define RK_P_VOL_UP_FLOOR 20
#define RK_P_FUT_CONTINGENCY 21
#define RK_P_MOVES 22 /* the nm standard moves, the next extended moves, then the next extended weights */

#define RK_MAX_MOVES 16
#define RK_MAX_EXT 16
#define RK_MAX_SCEN (3 * RK_MAX_MOVES + RK_MAX_EXT) /* a position's values: every move in every vol state */
#define RK_MAX_GAPS (3 * (RK_MAX_MOVES - 1))        /* a position's gap middles, in every vol state */
#define RK_MAX_BANDS (RK_MAX_MOVES - 1)             /* an account's gaps: one per pair of adjacent moves */

/* Whether the parameter array's counts fit the per-account scenario array (RK_MAX_SCEN): 1 to
 * RK_MAX_MOVES moves, 0 to RK_MAX_EXT extended moves. accel/risk.py checks MarginParams before
 * every call; this keeps any other caller's array from writing past pnl[]. Compared as doubles,
 * before any conversion to int (a NaN or huge count converted would be undefined behaviour). */
DEVICE int rk_counts_ok(GLOBAL const double *pp)
{
    double nm = pp[RK_P_NMOVES], ne = pp[RK_P_NEXT];
    return (nm >= 1.0) & (nm <= (double)RK_MAX_MOVES) & (ne >= 0.0) & (ne <= (double)RK_MAX_EXT);
}

/* Value of one contract in the settlement currency: USD, or coin when inverse; rt = sqrt(t).
 * Every case is computed and selected (the option formula on a future's row is harmless garbage),
 * so the C loop over scenarios vectorises. */
DEVICE double rk_value(u32 flags, double f, double index, double k, double rt, double vol, double disc)
{
    int inverse = (flags & B76_INVERSE) != 0;
    double future = mx_sel(inverse, -1.0 / f, f);
    double option = b76_price(flags, f, k, rt, vol, disc);
    option = mx_sel(inverse, option / index, option);
    return mx_sel((flags & RK_FUTURE) != 0, future, option);
}

#define RK_OVERFLOW (-1)   /* margin in ticks: does not fit an i64 */
#define RK_NOT_FINITE (-2) /* margin in ticks: a loss or the margin itself is NaN or infinite */

/* ceil(money / tick) as an integer, or one of the two error values above. */
DEVICE i64 rk_ticks(double money, double tick)
{
    double x = money / tick;
    if (!mx_isfinite(money)) return RK_NOT_FINITE;
    /* margins are >= 0; below -1 tick or beyond int64 (and NaN) is an error, and converting such
     * a double to i64 would be undefined behaviour in C, free to differ between targets */
    if (!(x > -1.0 && x < 9.2e18)) return RK_OVERFLOW;
    i64 v = (i64)x; /* truncation = floor for x >= 0 */
    if ((double)v < x) v += 1;
    return v;
}

/* A position's value s: the underlying multiplier 1 + move, and its vol state in *vs (0 up, 1 same,
 * 2 down). Standard grid s = vs * nm + move index, then the extended moves (vol up). */
DEVICE double rk_scenario(int s, int nm, GLOBAL const double *pp, int *vs)
{
    int ext = s >= 3 * nm;
    *vs = ext ? 0 : s / nm;
    return 1.0 + pp[RK_P_MOVES + (ext ? s - 2 * nm : s % nm)];
}

/* Per-position constants: discount, sqrt(t) and the volatility of each vol state (0 up, 1 same,
 * 2 down). The shocks grow for short expiries: shock = (ref_days / max(DTE, 1))^p with p the
 * short-term exponent below ref_days and the long-term one from it on; the vol shocked up is at
 * least RK_P_VOL_UP_FLOOR (an absolute volatility), the multiplier of the vol shocked down at least
 * RK_P_VOL_DOWN_FLOOR. */
DEVICE void rk_position(double t, double vol, GLOBAL const double *pp, double *disc, double *rt, double *vols)
{
    *disc = mx_exp(-pp[RK_P_RATE] * t);
    *rt = sqrt(t);
    double dte = mx_max(t * pp[RK_P_DAYS_PER_YEAR], 1.0);
    double ref = pp[RK_P_VOL_REF_DAYS];
    double p = mx_sel(dte < ref, pp[RK_P_VOL_EXPONENT], pp[RK_P_VOL_EXPONENT_LONG]);
    double shock = mx_pow(ref / dte, p);
    vols[0] = mx_max(vol * (1.0 + pp[RK_P_VOL_UP] * shock), pp[RK_P_VOL_UP_FLOOR]);
    vols[1] = vol;
    vols[2] = vol * mx_max(1.0 - pp[RK_P_VOL_DOWN] * shock, pp[RK_P_VOL_DOWN_FLOOR]);
}

/* The vol state (0 up, 2 down) a position is margined in: the one in which it is worth least at
 * every move, vol down for a long option and vol up for a short one (an option's value rises with
 * its vol; a future's does not depend on it). Each position at its own worst state covers a mark
 * that moves each vol anywhere inside its own range, independently (one option's up, another's
 * down: a skew steepening, a calendar's near vol falling as its far vol rises), where one state for
 * the whole book let a long option's vega net against a short one's (docs/RISK.md). */
DEVICE int rk_state(double size)
{
    return size > 0.0 ? 2 : 0;
}

/* Rows of one instrument in an account are one position, at one vol state: row p's net size (its
 * and the later rows' of its instrument, summed in row order), and in *first whether p is its
 * instrument's first row (the others add nothing). O(rows^2) per account, as rk_contingency. */
DEVICE double rk_net(i64 p, i64 lo, i64 hi, GLOBAL const i32 *pos_inst, GLOBAL const double *pos_size, int *first)
{
    i32 j = pos_inst[p];
    int seen = 0;
    for (i64 q = lo; q < p; q++) seen |= pos_inst[q] == j;
    double net = 0.0;
    for (i64 q = p; q < hi; q++) net += mx_sel(pos_inst[q] == j, pos_size[q], 0.0);
    *first = !seen;
    return net;
}

/* Whether a position of that net size leaves a book "long options only": a long option, or none. */
DEVICE int rk_long_option(u32 flags, double size)
{
    return !(size < 0.0) & !(((flags & RK_FUTURE) != 0) & (size != 0.0));
}

/* Positions that net against each other for the contingencies: options of one strike and expiry
 * (calls and puts together), futures of one expiry; linear and inverse apart. */
DEVICE int rk_same_group(u32 fa, double ka, double ta, u32 fb, double kb, double tb)
{
    u32 ga = fa & (RK_FUTURE | B76_INVERSE), gb = fb & (RK_FUTURE | B76_INVERSE);
    return (ga == gb) & (ta == tb) & (((ga & RK_FUTURE) != 0) | (ka == kb));
}

/* The account's contingencies, in the settlement currency:
 *  - per net short option per strike: contingency * |net| * index (coin: contingency * |net|);
 *  - offsetting futures: future_contingency * min(net long, net short) in underlying value,
 *    contracts * index for linear futures, USD notional / index (coin) for inverse ones.
 * Each group's net is summed in position order from its first position, so every backend adds
 * the same numbers in the same order. O(positions^2) per account: accounts are small. */
DEVICE double rk_contingency(u64 a, GLOBAL const i64 *offsets, GLOBAL const i32 *pos_inst,
                             GLOBAL const double *pos_size, GLOBAL const double *strike,
                             GLOBAL const double *expiry, GLOBAL const u8 *kind, GLOBAL const double *pp)
{
    double index = pp[RK_P_INDEX];
    double opt = 0.0, lin_long = 0.0, lin_short = 0.0, inv_long = 0.0, inv_short = 0.0;
    i64 lo = offsets[a], hi = offsets[a + 1];
    for (i64 p = lo; p < hi; p++) {
        i32 j = pos_inst[p];
        u32 fl = kind[j];
        double k = strike[j], t = expiry[j];
        int first = 1;
        for (i64 q = lo; q < p && first; q++) {
            i32 jq = pos_inst[q];
            first = !rk_same_group(fl, k, t, kind[jq], strike[jq], expiry[jq]);
        }
        if (!first) continue; /* counted with the group's first position */
        double net = 0.0;
        for (i64 q = p; q < hi; q++) {
            i32 jq = pos_inst[q];
            net += mx_sel(rk_same_group(fl, k, t, kind[jq], strike[jq], expiry[jq]), pos_size[q], 0.0);
        }
        double longs = mx_max(net, 0.0), shorts = mx_max(-net, 0.0);
        if (fl & RK_FUTURE) {
            if (fl & B76_INVERSE) { inv_long += longs; inv_short += shorts; }
            else { lin_long += longs; lin_short += shorts; }
        } else {
            opt += shorts * ((fl & B76_INVERSE) ? 1.0 : index);
        }
    }
    double offset = mx_min(lin_long, lin_short) * index + mx_min(inv_long, inv_short) / index;
    return pp[RK_P_CONTINGENCY] * opt + pp[RK_P_FUT_CONTINGENCY] * offset;
}

/* The gaps between adjacent standard moves. A grid of moves alone misses a book whose positions
 * offset at every move and not between them (long calls struck between two moves, short futures:
 * flat at both, a loss in the middle). Each gap (moves a and b, array neighbours) gets a bound of
 * the loss anywhere between them from lines below each position's P&L P_p(m) in its vol state
 * (docs/RISK.md, "Gaps between the moves"):
 *  - every instrument's value is monotone in the index, so min(P_p(a), P_p(b)) is below P_p;
 *  - a P&L concave or linear in the move (short linear options, linear futures, long inverse
 *    futures) lies above its chord; a convex one (long linear options, short inverse futures)
 *    above each of its tangents, here at the gap's middle, at a and at b.
 * Four bounds: the chords (concave), the horizontal lines (inverse options, whose curvature has no
 * sign), and for the convex positions either their horizontal lines or one of their three
 * tangents, each position in its own vol state (rk_state). Each is a line in the move, whose
 * minimum is at a or b; the largest of the four counts. Books whose positions all move one way get
 * their endpoints' loss; hedged books about their worst loss (a long option hedged at its delta:
 * its tangent at the hedge's move is flat). */
#define RK_GAP_MONO 0
#define RK_GAP_CHORD 1
#define RK_GAP_TANGENT 2
#define RK_GAP_SUMS 9 /* per gap, see rk_gaps_add */

DEVICE int rk_gap_class(u32 flags, double size)
{
    int future = (flags & RK_FUTURE) != 0, inverse = (flags & B76_INVERSE) != 0;
    int chord = inverse ? future & (size > 0.0) : future | (size < 0.0);
    int tangent = inverse ? future & (size < 0.0) : !future & (size > 0.0);
    return chord ? RK_GAP_CHORD : (tangent ? RK_GAP_TANGENT : RK_GAP_MONO);
}

/* d value / d forward of one contract at forward f, for what the gaps take tangents of: a linear
 * option's discounted Phi(omega d1) (at expiry the step: 1 in the money, 0.5 at the strike, 0 out),
 * an inverse future's 1/f^2 (a linear future's 1). Meaningless for an inverse option. */
DEVICE double rk_dvalue(u32 flags, double f, double k, double rt, double vol, double disc)
{
    double omega = mx_sel((flags & B76_CALL) != 0, 1.0, -1.0);
    double s = vol * rt;
    double pdf1, n1, n2;
    b76_core(omega, f, k, s, &pdf1, &n1, &n2);
    double itm = omega * (f - k);
    double step = mx_sel(itm > 0.0, 1.0, mx_sel(itm == 0.0, 0.5, 0.0));
    double option = disc * omega * mx_sel(s > 0.0, n1, step);
    double future = mx_sel((flags & B76_INVERSE) != 0, 1.0 / (f * f), 1.0);
    return mx_sel((flags & RK_FUTURE) != 0, future, option);
}

/* Gap i's middle multiplier (between ma = 1 + moves[i] and mb = 1 + moves[i + 1]) and, in
 * off[0..2], ma - middle, mb - middle and mb - ma. */
DEVICE double rk_gap_mid(int i, GLOBAL const double *pp, double *off)
{
    double ma = 1.0 + pp[RK_P_MOVES + i], mb = 1.0 + pp[RK_P_MOVES + i + 1];
    double mc = 0.5 * (ma + mb);
    off[0] = ma - mc;
    off[1] = mb - mc;
    off[2] = mb - ma;
    return mc;
}

/* Every gap's offsets (rk_gap_mid), by move index: off[3 i + 0..2]. */
DEVICE void rk_gap_offsets(int nm, GLOBAL const double *pp, double *off)
{
    for (int i = 0; i < nm - 1; i++) rk_gap_mid(i, pp, off + 3 * i);
}

/* Adds one position, in vol state v (rk_state), to the gaps' sums, gaps[k * RK_MAX_BANDS + i] for
 * the gap from move i to i + 1: k = 0, 1 what every bound takes of the chords and horizontal lines
 * at a and at b; of the tangent positions: 2 their horizontal lines, 3 and 4 their middle tangents
 * at a and b, 5 and 6 their tangents at a, 7 and 8 at b. d[s]: the position's P&L at its value s
 * (rk_scenario); vc[g], sm[g]: its instrument's value and f * rk_dvalue at the middle of gap i in
 * vol state w, g = w * (nm - 1) + i; sp[s] f * rk_dvalue at value s, read only for a tangent; off:
 * rk_gap_offsets. (Split on the class outside the loops, which then vectorise in the C fallback.) */
DEVICE void rk_gaps_add(const double *d, const double *vc, const double *sm, const double *sp, const double *off,
                        double base, double size, int cls, int nm, int v, double *gaps)
{
    double *ca = gaps, *cb = gaps + RK_MAX_BANDS;
    const double *x = d + v * nm;
    int g0 = v * (nm - 1);
    if (cls == RK_GAP_CHORD) {
        for (int i = 0; i < nm - 1; i++) {
            ca[i] += x[i];
            cb[i] += x[i + 1];
        }
    } else if (cls == RK_GAP_MONO) {
        for (int i = 0; i < nm - 1; i++) {
            double m = mx_min(x[i], x[i + 1]);
            ca[i] += m;
            cb[i] += m;
        }
    } else {
        for (int i = 0; i < nm - 1; i++) {
            double *t = gaps + i;
            const double *o = off + 3 * i;
            double pc = size * (vc[g0 + i] - base), sc = size * sm[g0 + i];
            double sa = size * sp[v * nm + i], sb = size * sp[v * nm + i + 1];
            t[2 * RK_MAX_BANDS] += mx_min(x[i], x[i + 1]);
            t[3 * RK_MAX_BANDS] += pc + sc * o[0];
            t[4 * RK_MAX_BANDS] += pc + sc * o[1];
            t[5 * RK_MAX_BANDS] += x[i];
            t[6 * RK_MAX_BANDS] += x[i] + sa * o[2];
            t[7 * RK_MAX_BANDS] += x[i + 1] - sb * o[2];
            t[8 * RK_MAX_BANDS] += x[i + 1];
        }
    }
}

/* Gap i's loss from its sums: -(the largest over the four bounds of min(bound at a, at b)). */
DEVICE double rk_gap_loss(const double *gaps, int i)
{
    const double *t = gaps + i;
    double ca = t[0], cb = t[RK_MAX_BANDS];
    double b1 = mx_min(ca + t[2 * RK_MAX_BANDS], cb + t[2 * RK_MAX_BANDS]);
    double b2 = mx_min(ca + t[3 * RK_MAX_BANDS], cb + t[4 * RK_MAX_BANDS]);
    double b3 = mx_min(ca + t[5 * RK_MAX_BANDS], cb + t[6 * RK_MAX_BANDS]);
    double b4 = mx_min(ca + t[7 * RK_MAX_BANDS], cb + t[8 * RK_MAX_BANDS]);
    return -mx_max(mx_max(b1, b2), mx_max(b3, b4));
}

/* Worst scenario and the account's margins. pnl[s]: scenario s's P&L, the nm standard moves (each
 * position at its worst vol state) then the extended moves; the worst is the largest loss, each
 * extended move's loss times its weight, then each gap's (rk_gap_loss), ties to the lower index
 * (the gaps numbered from nscen). Margins in ticks: initial = maintenance
 * times the multiplier, except that a book of long options only (long_only) never needs more than
 * it is worth (long_value: it cannot lose more), nor less than its maintenance. */
DEVICE void rk_finish(u64 a, const double *pnl, const double *gaps, int nm, int nscen, double contingency,
                      int long_only, double long_value, GLOBAL const double *pp, GLOBAL i64 *im, GLOBAL i64 *mm,
                      GLOBAL i32 *worst)
{
    int w0 = RK_P_MOVES + (nscen - nm); /* pp[w0 + s]: weight of extended scenario s (after the ne moves) */
    i32 wi = 0;
    double wl = -pnl[0];
    int finite = mx_isfinite(wl) & mx_isfinite(contingency);
    for (int s = 1; s < nscen; s++) {
        double loss = s < nm ? -pnl[s] : -pnl[s] * pp[w0 + s];
        finite &= mx_isfinite(loss);
        if (loss > wl) { wl = loss; wi = s; }
    }
    for (int g = 0; g < nm - 1; g++) {
        double loss = rk_gap_loss(gaps, g);
        finite &= mx_isfinite(loss);
        if (loss > wl) { wl = loss; wi = nscen + g; }
    }
    double mmv = mx_max(wl, 0.0) + contingency;
    double imv = mmv * pp[RK_P_IM_MULT];
    imv = mx_sel(long_only, mx_min(imv, mx_max(mmv, long_value)), imv);
    /* a NaN or infinite loss would be skipped by the comparisons above and could leave an
     * account with no margin: it is an error (RK_NOT_FINITE), never a number */
    mm[a] = finite ? rk_ticks(mmv, pp[RK_P_TICK]) : RK_NOT_FINITE;
    im[a] = finite ? rk_ticks(imv, pp[RK_P_TICK]) : RK_NOT_FINITE;
    worst[a] = wi;
}

/* Adds one position's values d[] (rk_scenario's order) to the account's scenario P&Ls: each
 * standard move in its vol state v (rk_state), each extended move as it is (vol up). */
DEVICE void rk_pnl_add(const double *d, int nm, int ne, int v, double *pnl)
{
    for (int i = 0; i < nm; i++) pnl[i] += d[v * nm + i];
    for (int e = 0; e < ne; e++) pnl[nm + e] += d[3 * nm + e];
}

/* Account a: each position (rk_net) revalued at every move in its vol state (rk_state) and at every
 * extended move (and, for a tangent, at every gap's middle), losses and the gaps' bounds summed in
 * position order. (The C fallback batches the
 * same rk_value and rk_dvalue calls and sums in the same order; see native/risk.c.) */
DEVICE void portfolio_margin_item(u64 a, GLOBAL const i64 *offsets, GLOBAL const i32 *pos_inst,
                                  GLOBAL const double *pos_size, GLOBAL const double *forward,
                                  GLOBAL const double *strike, GLOBAL const double *expiry,
                                  GLOBAL const double *vol, GLOBAL const u8 *kind, GLOBAL const double *pp,
                                  GLOBAL i64 *im, GLOBAL i64 *mm, GLOBAL i32 *worst)
{
    if (!rk_counts_ok(pp)) { /* no margin from such parameters: an error, as a NaN loss is */
        im[a] = RK_NOT_FINITE;
        mm[a] = RK_NOT_FINITE;
        worst[a] = 0;
        return;
    }
    int nm = (int)pp[RK_P_NMOVES], ne = (int)pp[RK_P_NEXT];
    int nvals = 3 * nm + ne, nscen = nm + ne;
    double index = pp[RK_P_INDEX];
    double pnl[RK_MAX_MOVES + RK_MAX_EXT], d[RK_MAX_SCEN], vc[RK_MAX_GAPS], sm[RK_MAX_GAPS], sp[3 * RK_MAX_MOVES];
    double gaps[RK_GAP_SUMS * RK_MAX_BANDS], off[3 * RK_MAX_MOVES];
    rk_gap_offsets(nm, pp, off);
    for (int s = 0; s < nscen; s++) pnl[s] = 0.0;
    for (int g = 0; g < RK_GAP_SUMS * RK_MAX_BANDS; g++) gaps[g] = 0.0;
    int long_only = 1;
    double long_value = 0.0;
    for (i64 p = offsets[a]; p < offsets[a + 1]; p++) {
        int first;
        double size = rk_net(p, offsets[a], offsets[a + 1], pos_inst, pos_size, &first);
        if (!first) continue;
        i32 j = pos_inst[p];
        u32 fl = kind[j];
        double f = forward[j], k = strike[j], v = vol[j];
        double disc, rt, vols[3];
        rk_position(expiry[j], v, pp, &disc, &rt, vols);
        double base = rk_value(fl, f, index, k, rt, v, disc);
        long_only &= rk_long_option(fl, size);
        long_value += size * base;
        int ps = rk_state(size);
        for (int s = 0; s < nvals; s++) {
            int vs;
            double mv = rk_scenario(s, nm, pp, &vs);
            if (s < 3 * nm && vs != ps) continue; /* another state's value: no sum reads it */
            d[s] = size * (rk_value(fl, f * mv, index * mv, k, rt, vols[vs], disc) - base);
        }
        rk_pnl_add(d, nm, ne, ps, pnl);
        int cls = rk_gap_class(fl, size);
        if (cls == RK_GAP_TANGENT) {
            for (int i = 0; i < nm; i++) {
                double mv = 1.0 + pp[RK_P_MOVES + i];
                sp[ps * nm + i] = f * rk_dvalue(fl, f * mv, k, rt, vols[ps], disc);
            }
            for (int i = 0; i < nm - 1; i++) {
                double o[3], mc = rk_gap_mid(i, pp, o);
                vc[ps * (nm - 1) + i] = rk_value(fl, f * mc, index * mc, k, rt, vols[ps], disc);
                sm[ps * (nm - 1) + i] = f * rk_dvalue(fl, f * mc, k, rt, vols[ps], disc);
            }
        }
        rk_gaps_add(d, vc, sm, sp, off, base, size, cls, nm, ps, gaps);
    }
    double contingency = rk_contingency(a, offsets, pos_inst, pos_size, strike, expiry, kind, pp);
    rk_finish(a, pnl, gaps, nm, nscen, contingency, long_only, long_value, pp, im, mm, worst);
}

DEVICE void standard_margin_item(u64 a, GLOBAL const i64 *offsets, GLOBAL const i32 *pos_inst,
                                 GLOBAL const double *pos_size, GLOBAL const double *forward,
                                 GLOBAL const double *strike, GLOBAL const double *expiry,
                                 GLOBAL const double *vol, GLOBAL const u8 *kind, GLOBAL const double *pp,
                                 GLOBAL i64 *im, GLOBAL i64 *mm)
{
    double index = pp[RK_P_INDEX];
    double imv = 0.0, mmv = 0.0;
    for (i64 p = offsets[a]; p < offsets[a + 1]; p++) {
        i32 j = pos_inst[p];
        double size = pos_size[p];
        double qty = size < 0.0 ? -size : size;
        u32 fl = kind[j];
        double f = forward[j], k = strike[j];
        if (fl & RK_FUTURE) {
            double notional = (fl & B76_INVERSE) ? qty / f : qty * f;
            imv += pp[RK_P_FUT_IM] * notional;
            mmv += pp[RK_P_FUT_MM] * notional;
        } else if (size < 0.0) { /* long options are paid for and carry no margin */
            double t = expiry[j];
            double mark = b76_price(fl, f, k, sqrt(t), vol[j], mx_exp(-pp[RK_P_RATE] * t));
            double otm = (fl & B76_CALL) ? mx_max(k - index, 0.0) : mx_max(index - k, 0.0);
            double mmc = pp[RK_P_OPT_MM] * index + mark;
            double imc = mx_max(pp[RK_P_OPT_IM] * index - otm, pp[RK_P_OPT_IM_FLOOR] * index) + mark;
            imc = mx_max(imc, mmc);
            if (fl & B76_INVERSE) { mmc /= index; imc /= index; }
            imv += qty * imc;
            mmv += qty * mmc;
        }
    }
    im[a] = rk_ticks(imv, pp[RK_P_TICK]);
    mm[a] = rk_ticks(mmv, pp[RK_P_TICK]);
}

#endif
