"""The options risk of accel.risk in plain NumPy, for software-only validation: a validator (or an
auditor) that does not run accel's kernels computes every account's margin, and option prices,
**bit-identical** to `accel.portfolio_margin` and `accel.greeks(...).price` on every backend.

Why the bits agree: this module performs the kernels' own IEEE-754 double operations in the kernels'
own order. kernels/mathx.h builds exp, log and the normal density and CDF from + - * / only (and
sqrt, correctly rounded everywhere), with every polynomial as four interleaved Horner chains and
every choice a select; each function here is an operation-by-operation port of one of them
(`_exp` is mx_exp, `_log` mx_log, `_ncdf_pdf` mx_ncdf_pdf, `_b76_core` b76_core, ...), written
as NumPy float64 array operations, which are single correctly rounded IEEE operations (no
contraction into FMA, no extended precision; no library transcendental is called). Selects
(`mx_sel`, `mx_min`, `mx_max`) are `np.where` with the kernel's comparison and operand order, not
np.minimum / np.maximum (which differ on NaN and signed zeros). Integer steps (the exponent
arithmetic of exp and log, the tick rounding of rk_ticks) run on int64 / uint64 arrays.

Margin (kernels/margin.h): a position's value under a scenario depends only on its instrument, so
each used instrument is valued once under every scenario (rk_position, rk_value), and each
account's PnL is then summed position by position in row order, `pnl += size * (value - base)`,
looping over the position index within accounts and vectorised across accounts (never a pairwise
or unspecified-order reduction); the contingencies net each (account, group) in row order and add
the groups in the order of their first row, as rk_contingency does; the worst scenario is the first
strict maximum (rk_finish) and ticks round up as rk_ticks does. No Python loop per account, option
or position: loops run over scenarios and over the position index within accounts."""
from __future__ import annotations

import numpy as np

from . import risk
from .risk import CALL, FUTURE, INVERSE, MarginParams, MarginResult

# kernels/margin.h: RK_P_* slots of the parameter array (MarginParams._array)
(_P_NMOVES, _P_NEXT, _P_VOL_UP, _P_VOL_DOWN, _P_VOL_REF_DAYS, _P_VOL_EXPONENT, _P_VOL_DOWN_FLOOR,
 _P_DAYS_PER_YEAR, _P_EXT_WEIGHT, _P_CONTINGENCY, _P_IM_MULT, _P_TICK, _P_RATE, _P_INDEX, _P_OPT_IM,
 _P_OPT_IM_FLOOR, _P_OPT_MM, _P_FUT_IM, _P_FUT_MM, _P_VOL_EXPONENT_LONG, _P_VOL_UP_FLOOR,
 _P_FUT_CONTINGENCY, _P_MOVES) = range(23)

_CHUNK = 1 << 15  # elements per block of the elementwise math: temporaries stay in cache

# ---------------------------------------------------------------- kernels/mathx.h

_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.9082149292705877e-10
_INV_LN2 = 1.4426950408889634
_INV_SQRT_2PI = 0.3989422804014327
_ROUND = 6755399441055744.0  # 1.5 * 2^52
_DBL_MAX = risk._DBL_MAX

_EXP_C = (
    1.6059043836821613e-10, 2.08767569878681e-09, 2.505210838544172e-08,
    2.755731922398589e-07, 2.7557319223985893e-06, 2.48015873015873e-05,
    0.0001984126984126984, 0.001388888888888889, 0.008333333333333333,
    0.041666666666666664, 0.16666666666666666, 0.5,
)
_LOG_C = (
    0.08, 0.08695652173913043, 0.09523809523809523,
    0.10526315789473684, 0.11764705882352941, 0.13333333333333333,
    0.15384615384615385, 0.18181818181818182, 0.2222222222222222,
    0.2857142857142857, 0.4, 0.6666666666666666,
)
_MILLS_C = (
    -2.0413246427731482e-11, -7.927806444762621e-11, 3.2727122405453924e-11,
    6.078299112665504e-10, 6.654448337657835e-10, -2.1961057193228833e-09,
    -5.934462386698541e-09, 2.978253084505927e-09, 3.148500274925815e-08,
    2.1002566985021374e-08, -1.3418717709691641e-07, -2.3448908568035809e-07,
    5.176305002321168e-07, 1.65749648670305e-06, -2.0795959006017973e-06,
    -1.0787239282565638e-05, 1.1609763625746678e-05, 7.181071820125288e-05,
    -0.00011418921790530319, -0.0004692013782834537, 0.0016012688666719036,
    0.001272269448062075, -0.02128652664657672, 0.07736659066386112,
    -0.17974381473324635, 0.3117725582109463, -0.4271237467660585,
    0.23665238291356067,
)

_U52 = np.uint64(52)
_U63 = np.uint64(63)
_ONE_BITS = np.uint64(0x3FF0000000000000)
_MANT = np.uint64(0x000FFFFFFFFFFFFF)


def _max(a, b):
    """mx_max(a, b) = b > a ? b : a (NaN and signed zeros as the kernel's select, not np.maximum)."""
    return np.where(b > a, b, a)


def _min(a, b):
    """mx_min(a, b) = b < a ? b : a."""
    return np.where(b < a, b, a)


def _poly4(tab, groups, s):
    """MX_POLY4: tab[0] s^(4g-1) + ... + tab[4g-1] as four interleaved Horner chains in s^4."""
    s2 = s * s
    s4 = s2 * s2
    a, b, c, d = tab[0], tab[1], tab[2], tab[3]
    for g in range(1, groups):
        o = 4 * g
        a = a * s4 + tab[o]
        b = b * s4 + tab[o + 1]
        c = c * s4 + tab[o + 2]
        d = d * s4 + tab[o + 3]
    return (a * s + b) * s2 + (c * s + d)


def _pow2(k):
    """mx_pow2 for int64 k in -1022..1099: the bits (k + 1023) << 52."""
    return ((k + 1023).astype(np.uint64) << _U52).view(np.float64)


def _exp(x):
    """mx_exp: x = k ln2 + r, Taylor polynomial of r, times 2^k in two exact factors."""
    kd = x * _INV_LN2
    kd = np.where((kd > -1100.0) & (kd < 1100.0), kd, 0.0)
    kr = (kd + _ROUND) - _ROUND  # k as a double: (double)(i32)kr is kr itself (an integer < 1101)
    hi = x - kr * _LN2_HI
    lo = kr * _LN2_LO
    r = hi - lo
    p = _poly4(_EXP_C, 3, r)
    y = 1.0 + (hi - (lo - r * r * p))
    k = kr.astype(np.int64)
    k2 = np.where(k < -1021, -1000, 0) + (k > 1023)  # the kernel's k2 from sign bits
    v = y * _pow2(k - k2) * _pow2(k2)
    v = np.where(x > 709.782712893384, np.inf, v)
    v = np.where(x < -745.2, 0.0, v)
    return np.where(x != x, x, v)


def _log(x):
    """mx_log for x >= 0: x = 2^k (1 + f), log(1 + f) = 2 atanh(f / (2 + f))."""
    sub = ((x.view(np.uint64) >> _U52) - np.uint64(1)) >> _U63  # 1 for 0 and subnormals
    b = (x * (_ONE_BITS + sub * np.uint64(54 << 52)).view(np.float64)).view(np.uint64)
    k = (b >> _U52).astype(np.int64) - 1023 - 54 * sub.astype(np.int64)
    m = ((b & _MANT) | _ONE_BITS).view(np.float64)  # [1, 2)
    big = m > 1.4142135623730951
    m = np.where(big, m * 0.5, m)
    k = k + big
    f = m - 1.0
    s = f / (2.0 + f)
    z = s * s
    r = _poly4(_LOG_C, 3, z)
    r = r * z
    hfsq = 0.5 * f * f
    kd = k.astype(np.float64)
    v = kd * _LN2_HI - ((hfsq - (s * (hfsq + r) + kd * _LN2_LO)) - f)
    v = np.where(x == 0.0, -np.inf, v)
    return np.where(x > _DBL_MAX, x, v)


def _pow(x, p):
    """mx_pow: exp(p log x)."""
    return _exp(p * _log(x))


def _npdf(x):
    """mx_npdf: the standard normal density, one exp of -x^2/2."""
    return _INV_SQRT_2PI * _exp(-0.5 * (x * x))


def _ncdf_pdf(x, pdf):
    """mx_ncdf_pdf: Phi(x) given pdf = npdf(x); Phi(-u) = pdf(u) M(u), M the Mills ratio."""
    u = _min(np.abs(x), 44.0)
    w = (u - 4.0) / (u + 4.0)
    m = _poly4(_MILLS_C, 7, w)
    tail = pdf * m
    return np.where(x < 0.0, tail, 1.0 - tail)


# ---------------------------------------------------------------- kernels/black76.h

def _b76_core(omega, f, k, s):
    """b76_core: (undiscounted price, pdf(d1), Phi(omega d1), Phi(omega d2))."""
    fk = f / k
    d1 = _log(fk) / s + 0.5 * s
    d2 = d1 - s
    first = np.abs(d1) <= np.abs(d2)
    p = _npdf(np.where(first, d1, d2))
    other = np.where(p > 0.0, np.where(first, p * fk, p / fk), 0.0)
    p1 = np.where(first, p, other)
    p2 = np.where(first, other, p)
    n1 = _ncdf_pdf(omega * d1, p1)
    n2 = _ncdf_pdf(omega * d2, p2)
    return omega * (f * n1 - k * n2), p1, n1, n2


def _b76_price(omega, f, k, rt, vol, disc):
    """b76_price: the discounted price, the intrinsic value where vol * sqrt(t) is 0."""
    s = vol * rt
    price = _b76_core(omega, f, k, s)[0]
    return disc * np.where(s > 0.0, price, _max(omega * (f - k), 0.0))


def _b76_greeks_ok(x, k, t, r, vol, index, call, inverse):
    """b76_greeks and greeks_one for Black-76 (q = r, no B76_SPOT): (price, ok), ok false where
    accel.greeks gives NaN (invalid input or any of the six outputs not finite). The growth
    exp((r - q) t) is exp(0) = 1 exactly for every valid input, as the C fallback assumes."""
    q = r
    omega = np.where(call, 1.0, -1.0)
    rt = np.sqrt(t)
    disc = _exp(-r * t)
    dq = disc  # disc * growth, growth = 1
    f = x  # x * growth
    s = vol * rt
    core, pdf1, n1, n2 = _b76_core(omega, f, k, s)
    price = disc * core
    delta = omega * dq * n1
    gamma = np.where(pdf1 > 0.0, dq * pdf1 / (x * s), 0.0)
    vega = disc * f * pdf1 * rt
    decay = vega * vol / (2.0 * t)
    theta = omega * disc * (q * f * n1 - r * k * n2) - decay
    rho = -t * price
    expired = ~(s > 0.0)
    itm = omega * (f - k)
    step = np.where(itm > 0.0, 1.0, np.where(itm == 0.0, 0.5, 0.0))
    scale = np.where(inverse, index, 1.0)
    g0 = np.where(expired, disc * _max(itm, 0.0), price) / scale
    g1 = np.where(expired, omega * dq * step, delta) / scale
    ok = np.isfinite(g0) & np.isfinite(g1)
    for g in (gamma, vega, theta, rho):
        ok &= np.isfinite(np.where(expired, 0.0, g) / scale)
    # greeks_valid (kernels/risk.h)
    big = _DBL_MAX
    rtv, gt = np.abs(r * t), np.abs((r - q) * t)
    ok &= (x > 0.0) & (x <= big) & (k > 0.0) & (k <= big) & (vol > 0.0) & (vol <= big)
    ok &= (index > 0.0) & (index <= big) & (t >= 0.0) & (t <= big)
    ok &= (r >= -big) & (r <= big) & (q >= -big) & (q <= big)
    ok &= (rtv <= risk._MAX_EXP_ARG) & (gt <= risk._MAX_EXP_ARG)
    return g0, ok


def greeks_price(forward, strike, t, r, vol, is_call, *, inverse=False, index=None) -> np.ndarray:
    """Black-76 option prices, bit-identical to accel.greeks(forward, strike, t, r, vol, is_call,
    inverse=inverse, index=index).price on every backend (kernels/black76.h, operation by
    operation): discounted, the intrinsic value at expiry, divided by `index` (default: the
    forward) where inverse. Scalars broadcast; arrays must share one length. Raises the ValueError
    accel.greeks raises, naming the first bad input, or the first option whose price or greeks
    overflow double precision."""
    values = {"forward_or_spot": forward, "strike": strike, "t": t, "r": r, "q": r, "vol": vol,
              "index": forward if index is None else index}
    n = risk._common_length(values | {"is_call": is_call, "inverse": inverse})
    arrays = [risk._float_array(name, np.atleast_1d(v)) for name, v in values.items()]
    call, inv = risk._flag_array("is_call", is_call), risk._flag_array("inverse", inverse)
    risk._same_lengths(n, dict(zip(values, arrays)) | {"is_call": call, "inverse": inv})
    if n == 0:
        return np.empty(0)
    x, k, tt, rr, _, vv, idx = (np.broadcast_to(a, (n,)) for a in arrays)
    call, inv = np.broadcast_to(call, (n,)), np.broadcast_to(inv, (n,))
    price = np.empty(n)
    ok = np.empty(n, bool)
    with np.errstate(all="ignore"):  # the expiry and invalid lanes compute inf and NaN, then are selected away
        for lo in range(0, n, _CHUNK):
            sl = slice(lo, lo + _CHUNK)
            price[sl], ok[sl] = _b76_greeks_ok(x[sl], k[sl], tt[sl], rr[sl], vv[sl], idx[sl], call[sl], inv[sl])
    if not ok.all():  # accel.greeks' errors, in its words
        inputs = dict(zip(values, arrays))
        risk._validate_greeks(n, inputs)
        i = int(np.flatnonzero(~ok)[0])
        at = ", ".join(f"{name}={float(a[0 if len(a) == 1 else i])!r}" for name, a in inputs.items())
        raise ValueError(f"greeks: option {i} ({at}) gives a result beyond double precision; "
                         "no backend returns NaN or infinity for it")
    return price


# ---------------------------------------------------------------- kernels/margin.h

def portfolio_margin(portfolio, marks, params: MarginParams | None = None, checked: bool = True) -> MarginResult:
    """Per-account initial and maintenance margin (int64 ticks) and worst scenario (int32),
    bit-identical to accel.portfolio_margin, in NumPy.

    portfolio, marks, params: as for accel.portfolio_margin (a Portfolio / Marks or dicts of their
    fields; params default MarginParams()). Inputs are validated by the same code, so bad input
    raises the same ValueError; so do an account whose margin does not fit int64 ticks and one
    whose scenario loss is not finite, unless checked=False: such accounts then get the kernel's
    negative codes (-1: does not fit, -2: not finite), as accel.portfolio_margin(checked=False)."""
    pf, mk, pp = risk._margin_inputs(portfolio, marks, params)
    n_acc = len(pf.offsets) - 1
    if not _counts_ok(pp):  # rk_counts_ok: every account RK_NOT_FINITE, as the kernels give
        bad = np.full(n_acc, risk._NOT_FINITE, np.int64)
        if checked:
            risk._check_ticks(bad)
        return MarginResult(bad, bad.copy(), np.zeros(n_acc, np.int32))
    with np.errstate(all="ignore"):
        loss, long_only, long_value = _losses(pf, mk, pp)
        contingency = _contingency(pf, mk, pp)
        # rk_finish: the first strict maximum; a non-finite loss or contingency is an error
        nscen = loss.shape[0]
        wl = loss[0].copy()
        wi = np.zeros(n_acc, np.int32)
        finite = np.isfinite(wl) & np.isfinite(contingency)
        for s in range(1, nscen):
            finite &= np.isfinite(loss[s])
            better = loss[s] > wl
            wl = np.where(better, loss[s], wl)
            wi[better] = s
        mmv = _max(wl, 0.0) + contingency
        imv = mmv * pp[_P_IM_MULT]
        imv = np.where(long_only, _min(imv, _max(mmv, long_value)), imv)
        mm = _ticks(mmv, pp[_P_TICK], finite)
        im = _ticks(imv, pp[_P_TICK], finite)
    if checked:
        risk._check_ticks(mm, im)
    return MarginResult(im, mm, wi)


def scenario_losses(portfolio, marks, params: MarginParams | None = None) -> np.ndarray:
    """Every account's loss under every scenario, float64 of shape (params.n_scenarios, accounts),
    extended-table losses already times their weight: the matrix whose first column maxima
    portfolio_margin takes, with the kernel's bits (MarginParams.scenario names the rows).
    Contingencies not included."""
    pf, mk, pp = risk._margin_inputs(portfolio, marks, params)
    with np.errstate(all="ignore"):
        return _losses(pf, mk, pp)[0]


def _scenarios(pp):
    """rk_scenario for every s: (multiplier 1 + move, vol state 0 up / 1 same / 2 down, weight)."""
    nm, ne = int(pp[_P_NMOVES]), int(pp[_P_NEXT])
    moves = pp[_P_MOVES:_P_MOVES + nm + ne]
    mult = 1.0 + np.concatenate([np.tile(moves[:nm], 3), moves[nm:]])
    state = np.concatenate([np.repeat([0, 1, 2], nm), np.zeros(ne, np.int64)])
    return mult, state, pp[_P_MOVES + nm + ne:_P_MOVES + nm + 2 * ne]


def _gap_mids(pp):
    """rk_gap_mid for every gap g = vol state * (nm - 1) + i: (middle multiplier, vol state, and
    ma - middle, mb - middle, mb - ma)."""
    nm = int(pp[_P_NMOVES])
    ma, mb = 1.0 + pp[_P_MOVES:_P_MOVES + nm - 1], 1.0 + pp[_P_MOVES + 1:_P_MOVES + nm]
    mc = 0.5 * (ma + mb)
    return np.tile(mc, 3), np.repeat([0, 1, 2], nm - 1), np.tile(ma - mc, 3), np.tile(mb - mc, 3), np.tile(mb - ma, 3)


def _instrument_deltas(mk, pp, inst):
    """For each instrument in `inst`: value - base under every scenario, then at every gap's middle,
    (len(inst), scenarios + gaps); forward * rk_dvalue at every gap's middle, then in every standard
    scenario, (len(inst), gaps + 3 moves); and the base value. rk_position, rk_value and rk_dvalue
    (the base's forward and index times 1.0, which is exact)."""
    mult, state, _ = _scenarios(pp)
    mid, mid_state = _gap_mids(pp)[:2]
    nm = int(pp[_P_NMOVES])
    mult = np.concatenate([[1.0], mult, mid])
    state = np.concatenate([[1], state, mid_state])  # the base value takes the instrument's own vol (state 1)
    first_mid = len(mult) - len(mid)
    sloped = np.concatenate([np.arange(first_mid, len(mult)), np.arange(1, 1 + 3 * nm)])  # columns of mult
    index, rate = pp[_P_INDEX], pp[_P_RATE]
    out = np.empty((len(inst), len(mult) - 1))
    slope = np.empty((len(inst), len(sloped)))
    base = np.empty(len(inst))
    # a block of instruments at a time, valued under every scenario: the temporaries stay small
    step = max(1, _CHUNK // len(mult))
    for lo in range(0, len(inst), step):
        j = inst[lo:lo + step]
        kind = mk.kind[j].astype(np.int64)
        inverse = ((kind & INVERSE) != 0)[:, None]
        f0 = mk.forward[j][:, None]
        f = f0 * mult  # f * mv
        futures = np.where(inverse, -1.0 / f, f)
        fs = f[:, sloped]
        dvalue = np.where(inverse, 1.0 / (fs * fs), 1.0)  # rk_dvalue of a future
        option = (kind & FUTURE) == 0
        val = futures
        if option.any():
            o = np.flatnonzero(option)
            t, vol = mk.expiry[j[o]], mk.vol[j[o]]
            # rk_position
            disc = _exp(-rate * t)
            rt = np.sqrt(t)
            dte = _max(t * pp[_P_DAYS_PER_YEAR], 1.0)
            ref = pp[_P_VOL_REF_DAYS]
            p = np.where(dte < ref, pp[_P_VOL_EXPONENT], pp[_P_VOL_EXPONENT_LONG])
            shock = _pow(ref / dte, p)
            vols = np.stack([_max(vol * (1.0 + pp[_P_VOL_UP] * shock), pp[_P_VOL_UP_FLOOR]), vol,
                             vol * _max(1.0 - pp[_P_VOL_DOWN] * shock, pp[_P_VOL_DOWN_FLOOR])], axis=1)
            # rk_value of an option: b76_price, divided by index * mv where inverse
            omega = np.where((kind[o] & CALL) != 0, 1.0, -1.0)[:, None]
            k = mk.strike[j[o]][:, None]
            price = _b76_price(omega, f[o], k, rt[:, None], vols[:, state], disc[:, None])
            val = futures.copy()
            val[o] = np.where(inverse[o], price / (index * mult), price)
            # rk_dvalue of an option
            s = vols[:, state[sloped]] * rt[:, None]
            n1 = _b76_core(omega, fs[o], k, s)[2]
            itm = omega * (fs[o] - k)
            step_ = np.where(itm > 0.0, 1.0, np.where(itm == 0.0, 0.5, 0.0))
            dvalue[o] = disc[:, None] * omega * np.where(s > 0.0, n1, step_)
        out[lo:lo + len(j)] = val[:, 1:] - val[:, :1]
        slope[lo:lo + len(j)] = f0 * dvalue
        base[lo:lo + len(j)] = val[:, 0]
    return out, slope, base


def _account_order(offsets):
    """Accounts by number of positions, most first (stable), and those counts: the accounts with
    more than r positions are then a prefix."""
    counts = np.diff(offsets)
    order = np.argsort(-counts, kind="stable")
    return order, counts[order]


def _counts_ok(pp) -> bool:
    """rk_counts_ok (kernels/margin.h): 1 to 16 moves, 0 to 16 extended moves."""
    nm, ne = pp[_P_NMOVES], pp[_P_NEXT]
    return bool(1.0 <= nm <= risk._MAX_MOVES and 0.0 <= ne <= risk._MAX_EXT)


def _losses(pf, mk, pp):
    """Loss matrix (scenarios, accounts) with the kernel's bits: each account's positions in row
    order (portfolio_margin_item), each adding size * (value - base) in its vol state (rk_state) to
    each standard move's P&L and as it is to each extended move's (rk_pnl_add); then -pnl, times the
    weight for the extended scenarios, then each gap's loss from its sums (rk_gaps_add,
    rk_gap_loss); and per account whether it holds long options only and their value (sum of
    size * base in row order)."""
    _, _, weight = _scenarios(pp)
    _, _, da, db, w = _gap_mids(pp)
    nm = int(pp[_P_NMOVES])
    da, db, w = da[:nm - 1], db[:nm - 1], w[:nm - 1]  # the same in each vol state
    nvals, ng = 3 * nm + len(weight), 3 * (nm - 1)
    nscen = nm + len(weight)
    n_acc = len(pf.offsets) - 1
    inst, where_ = np.unique(pf.instrument, return_inverse=True)
    dv, slope, base = _instrument_deltas(mk, pp, inst)  # (used, scenarios + gaps), (used, gaps + 3 nm), (used,)
    order, counts = _account_order(pf.offsets)
    starts = pf.offsets[:-1][order]
    pnl = np.zeros((n_acc, nscen))  # accounts in `order`
    sums = np.zeros((9, n_acc, nm - 1))  # rk_gaps_add's nine sums per gap
    long_only, long_value = np.ones(n_acc, bool), np.zeros(n_acc)
    n_active = np.searchsorted(-counts, -np.arange(counts[0] if n_acc else 0), side="left")  # count > r
    first, net = _netted(pf)
    for r, n_r in enumerate(n_active):  # the r-th position of every account that has one
        rows = starts[:n_r] + r
        a = np.flatnonzero(first[rows])  # the accounts whose row r is its instrument's first (rk_net)
        rows = rows[a]
        size = net[rows]
        kind = mk.kind[pf.instrument[rows]].astype(np.int64)
        future, inverse = (kind & FUTURE) != 0, (kind & INVERSE) != 0
        long_only[a] &= ~(size < 0.0) & ~(future & (size != 0.0))  # rk_long_option
        long_value[a] += size * base[where_[rows]]
        d = size[:, None] * dv[where_[rows], :nvals]
        state = np.where(size > 0.0, 2, 0)  # rk_state
        n = np.arange(len(a))
        xs = d[:, :3 * nm].reshape(len(a), 3, nm)[n, state]  # (rows, move) in each row's state
        pnl[a, :nm] += xs
        pnl[a, nm:] += d[:, 3 * nm:]
        chord = np.where(inverse, future & (size > 0.0), future | (size < 0.0))  # rk_gap_class
        tangent = np.where(inverse, future & (size < 0.0), ~future & (size > 0.0)) & ~chord
        x, y = xs[:, :-1], xs[:, 1:]  # each gap's ends
        m = _min(x, y)
        c = np.flatnonzero(~tangent)  # chords and horizontal lines: what every bound takes
        sums[0, a[c]] += np.where(chord[c, None], x[c], m[c])
        sums[1, a[c]] += np.where(chord[c, None], y[c], m[c])
        t = np.flatnonzero(tangent)
        if len(t):
            it, nt, vt = where_[rows[t]], np.arange(len(t)), state[t]  # their instruments and states
            st = size[t, None]
            pc = st * dv[it, nvals:].reshape(len(t), 3, nm - 1)[nt, vt]
            sc = st * slope[it, :ng].reshape(len(t), 3, nm - 1)[nt, vt]
            sp = st * slope[it, ng:].reshape(len(t), 3, nm)[nt, vt]
            sa, sb = sp[:, :-1], sp[:, 1:]
            xt, yt = x[t], y[t]
            for k, add in enumerate((m[t], pc + sc * da, pc + sc * db, xt, xt + sa * w, yt - sb * w, yt), 2):
                sums[k, a[t]] += add
    loss = np.empty((nscen + nm - 1, n_acc))
    loss[:nscen, order] = (-pnl).T
    loss[nm:nscen] *= weight[:, None]  # -pnl[s] * weight[s]
    ca, cb = sums[0], sums[1]
    b = [_min(ca + sums[k], cb + sums[k2]) for k, k2 in ((2, 2), (3, 4), (5, 6), (7, 8))]
    loss[nscen:, order] = (-_max(_max(b[0], b[1]), _max(b[2], b[3]))).T
    only, value = np.empty(n_acc, bool), np.empty(n_acc)
    only[order], value[order] = long_only, long_value
    return loss, only, value


def _netted(pf):
    """rk_net for every row: whether it is its instrument's first row in its account, and the net
    size of its instrument's rows there (0.0 plus each size, in row order)."""
    n = len(pf.instrument)
    first, net = np.ones(n, bool), pf.size.astype(np.float64)
    if n == 0:
        return first, net
    acc = np.repeat(np.arange(len(pf.offsets) - 1), np.diff(pf.offsets))
    order = np.lexsort((pf.instrument, acc))  # stable: each group's rows in row order
    new = np.ones(n, bool)
    new[1:] = (acc[order][1:] != acc[order][:-1]) | (pf.instrument[order][1:] != pf.instrument[order][:-1])
    if new.all():  # no instrument twice in an account (the ledger's books): every row its own net
        return first, np.zeros(n) + net
    label = np.cumsum(new) - 1
    rank = np.arange(n) - np.flatnonzero(new)[label]
    sums = np.zeros(int(label[-1]) + 1)
    for r in range(int(rank.max()) + 1):
        m = rank == r
        sums[label[m]] += pf.size[order[m]]
    first[order], net[order] = new, sums[label]
    return first, net


def _contingency(pf, mk, pp):
    """rk_contingency for every account: each group of rows (options of one strike and expiry,
    futures of one expiry; linear and inverse apart) nets its sizes in row order; the groups add
    into the account's sums in the order of their first rows."""
    n_acc = len(pf.offsets) - 1
    index = pp[_P_INDEX]
    opt, lin_long, lin_short, inv_long, inv_short = (np.zeros(n_acc) for _ in range(5))
    n = len(pf.instrument)
    if n:
        j = pf.instrument
        kind = mk.kind[j].astype(np.int64)
        grp = kind & (FUTURE | INVERSE)
        future = (grp & FUTURE) != 0
        strike = np.where(future, 0.0, mk.strike[j])  # rk_same_group ignores a future's strike
        expiry = mk.expiry[j]
        acc = np.repeat(np.arange(n_acc), np.diff(pf.offsets))
        # group the rows: a stable sort keeps each group's rows in row order (first row first)
        order = np.lexsort((expiry, strike, grp, acc))
        new = np.zeros(n, bool)
        new[0] = True
        for key in (acc[order], grp[order], strike[order], expiry[order]):  # == as rk_same_group: 0.0 == -0.0
            new[1:] |= key[1:] != key[:-1]
        gstart = np.flatnonzero(new)
        label = np.cumsum(new) - 1  # group of each row of `order`
        rank = np.arange(n) - gstart[label]  # its place within the group
        # net = 0.0 + size + size ... in row order: the r-th member of every group at once
        net = np.zeros(len(gstart))
        by_rank = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[by_rank], np.arange(rank.max() + 2))
        for r in range(rank.max() + 1):
            m = by_rank[bounds[r]:bounds[r + 1]]
            net[label[m]] += pf.size[order[m]]
        longs, shorts = _max(net, 0.0), _max(-net, 0.0)
        # the groups of an account in the order of their first rows
        first = order[gstart]
        gorder = np.argsort(first, kind="stable")
        gacc = acc[first][gorder]
        gnew = np.ones(len(gorder), bool)
        gnew[1:] = gacc[1:] != gacc[:-1]
        gpos = np.flatnonzero(gnew)
        grank = np.arange(len(gorder)) - gpos[np.cumsum(gnew) - 1]
        by_grank = np.argsort(grank, kind="stable")
        gbounds = np.searchsorted(grank[by_grank], np.arange(grank.max() + 2))
        ggrp = grp[first][gorder]
        glong, gshort = longs[gorder], shorts[gorder]
        for r in range(grank.max() + 1):
            m = by_grank[gbounds[r]:gbounds[r + 1]]
            a, g, lg, sh = gacc[m], ggrp[m], glong[m], gshort[m]
            fut, inv = (g & FUTURE) != 0, (g & INVERSE) != 0
            o = ~fut
            opt[a[o]] += sh[o] * np.where(inv[o], 1.0, index)
            li = fut & ~inv
            lin_long[a[li]] += lg[li]
            lin_short[a[li]] += sh[li]
            iv = fut & inv
            inv_long[a[iv]] += lg[iv]
            inv_short[a[iv]] += sh[iv]
    offset = _min(lin_long, lin_short) * index + _min(inv_long, inv_short) / index
    return pp[_P_CONTINGENCY] * opt + pp[_P_FUT_CONTINGENCY] * offset


def _ticks(money, tick, finite):
    """rk_ticks, with `finite ? rk_ticks(...) : RK_NOT_FINITE` around it (rk_finish): ceil(money /
    tick) as int64 by truncation plus one where the truncation is below, or the error values."""
    x = money / tick
    ok = (x > -1.0) & (x < 9.2e18)
    v = np.where(ok, x, 0.0).astype(np.int64)  # truncation toward zero, as the C conversion
    v += v.astype(np.float64) < x
    v = np.where(ok, v, risk._OVERFLOW)
    v = np.where(np.isfinite(money), v, risk._NOT_FINITE)
    return np.where(finite, v, risk._NOT_FINITE).astype(np.int64)
