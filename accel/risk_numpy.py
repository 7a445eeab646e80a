"""The portfolio margin model of accel.risk in NumPy/SciPy, for software-only validation: a
validator (or an auditor) that does not run accel's kernels can still compute every account's
margin. Same model, parameters and integer-tick rounding (up) as `accel.portfolio_margin`
(docs/RISK.md); not the same bits: NumPy's exp/log and SciPy's ndtr differ from kernels/mathx.h in
the last digits, so results agree to within a tick or two, not byte for byte
(tests/test_risk.py measures it). Vectorised over positions x scenarios; no Python loop per
account or position."""
from __future__ import annotations

import numpy as np

from . import risk
from .risk import FUTURE, INVERSE, CALL, MarginParams, MarginResult

_MAX_TICKS = 9.2e18  # rk_ticks: x >= this does not fit an int64
_CHUNK = 1 << 15  # positions per block: the (scenarios x positions) temporaries stay in cache-sized MBs


def _ndtr():
    try:
        from scipy.special import ndtr
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("accel.risk_numpy needs SciPy (scipy.special.ndtr for the normal CDF): "
                          "pip install scipy") from exc
    return ndtr


def portfolio_margin(portfolio, marks, params: MarginParams | None = None) -> MarginResult:
    """Per-account initial and maintenance margin (int64 ticks) and worst scenario (int32), as
    accel.portfolio_margin computes them, in NumPy/SciPy (Black-76 with scipy.special.ndtr).

    portfolio, marks, params: as for accel.portfolio_margin (a Portfolio / Marks or dicts of their
    fields; params default MarginParams()). Inputs are validated by the same code, so bad input
    raises the same ValueError; so do an account whose margin does not fit int64 ticks and one
    whose scenario loss is not finite."""
    pf, mk, _ = risk._margin_inputs(portfolio, marks, params)
    p = MarginParams() if params is None else params
    n_acc = len(pf.offsets) - 1
    loss = _losses(pf, mk, p)
    worst = np.argmax(loss, axis=0).astype(np.int32)  # first maximum: ties go to the lower index
    worst_loss = loss[worst, np.arange(n_acc)]
    with np.errstate(all="ignore"):
        contingency = _contingency(pf, mk, p, np.repeat(np.arange(n_acc), np.diff(pf.offsets)), n_acc)
    finite = np.isfinite(loss).all(axis=0) & np.isfinite(contingency)
    with np.errstate(all="ignore"):
        mm_money = np.maximum(worst_loss, 0.0) + contingency
        mm = _ticks(mm_money, p.tick, finite)
        im = _ticks(mm_money * p.initial_multiplier, p.tick, finite)
    risk._check_ticks(mm, im)
    return MarginResult(im, mm, worst)


def scenario_losses(portfolio, marks, params: MarginParams | None = None) -> np.ndarray:
    """Every account's loss under every scenario, float64 of shape (params.n_scenarios, accounts),
    extended-table losses already times extended_weight: the matrix whose column maxima
    portfolio_margin takes (MarginParams.scenario names the rows). Contingencies not included."""
    pf, mk, _ = risk._margin_inputs(portfolio, marks, params)
    return _losses(pf, mk, MarginParams() if params is None else params)


def _losses(pf, mk, p):
    with np.errstate(all="ignore"):  # overflow and 0 * inf become non-finite losses, reported as such
        return _losses_of(pf, mk, p)


def _losses_of(pf, mk, p):
    ndtr = _ndtr()
    n_acc = len(pf.offsets) - 1
    nm, ns = len(p.moves), p.n_scenarios
    # scenario s: underlying multiplier and vol state (0 up, 1 same, 2 down), as MarginParams.scenario
    mult = 1.0 + np.array(p.moves * 3 + p.extended_moves)
    state = np.concatenate([np.repeat([0, 1, 2], nm), np.zeros(len(p.extended_moves), int)])
    weight = np.where(np.arange(ns) < 3 * nm, 1.0, p.extended_weight)

    pnl = np.zeros((ns, n_acc))
    counts = np.diff(pf.offsets)
    acc_of_row = np.repeat(np.arange(n_acc), counts)
    n = len(pf.instrument)
    for lo in range(0, n, _CHUNK):  # blocks of positions (not accounts): memory, not semantics
        hi = min(lo + _CHUNK, n)
        block = _position_pnl(pf, mk, p, lo, hi, mult, state, ndtr)  # (ns, hi - lo)
        acc = acc_of_row[lo:hi]
        starts = np.flatnonzero(np.r_[True, acc[1:] != acc[:-1]])  # rows of one account are contiguous
        pnl[:, acc[starts]] += np.add.reduceat(block, starts, axis=1)
    return -pnl * weight[:, None]


def _position_pnl(pf, mk, p, lo, hi, mult, state, ndtr):
    """size * (value under each scenario - value now) of positions lo..hi-1: (scenarios, positions)."""
    j = pf.instrument[lo:hi]
    size = pf.size[lo:hi]
    f, k, t, vol, kind = mk.forward[j], mk.strike[j], mk.expiry[j], mk.vol[j], mk.kind[j].astype(np.int64)
    index = float(mk.index)
    future = (kind & FUTURE) != 0
    inverse = (kind & INVERSE) != 0

    dte = np.maximum(t * p.days_per_year, 1.0)
    power = np.where(dte < p.vol_ref_days, p.vol_exponent, p.vol_exponent_long)
    shock = np.exp(power * np.log(p.vol_ref_days / dte))
    # a future's vol is ignored and may be anything
    vols = np.stack([np.maximum(vol * (1.0 + p.vol_up * shock), p.vol_up_floor), vol,
                     vol * np.maximum(1.0 - p.vol_down * shock, p.vol_down_floor)])

    values = np.empty((len(mult) + 1, hi - lo))  # row 0: now; row 1 + s: scenario s
    m = np.r_[1.0, mult][:, None]
    scen_vol = np.vstack([vol[None, :], vols[state]])
    values[:, future] = np.where(inverse[future], -1.0 / (f[future] * m), f[future] * m)
    o = ~future
    if o.any():
        values[:, o] = _black76(f[o] * m, k[o], t[o], scen_vol[:, o], mk.rate, (kind[o] & CALL) != 0, ndtr)
        values[:, o] = np.where(inverse[o], values[:, o] / (index * m), values[:, o])
    return size * (values[1:] - values[0])


def _black76(f, k, t, vol, rate, call, ndtr):
    """Discounted Black-76 price; the intrinsic value where vol * sqrt(t) is 0 (expiry)."""
    w = np.where(call, 1.0, -1.0)
    s = vol * np.sqrt(t)
    d1 = np.log(f / k) / s + 0.5 * s
    price = w * (f * ndtr(w * d1) - k * ndtr(w * (d1 - s)))
    price = np.where(s > 0.0, price, np.maximum(w * (f - k), 0.0))
    return np.exp(-rate * t) * price


def _contingency(pf, mk, p, acc_of_row, n_acc):
    """Per net short option per strike and per offsetting futures, by account (kernels/margin.h,
    rk_contingency): rows net within (account, linear/inverse, option strike or future, expiry)."""
    j = pf.instrument
    kind = mk.kind[j].astype(np.int64)
    future = (kind & FUTURE) != 0
    group = kind & (FUTURE | INVERSE)
    strike = np.where(future, 0.0, mk.strike[j])  # a future's strike is ignored
    expiry = mk.expiry[j]
    out = np.zeros(n_acc)
    if len(j) == 0:
        return out
    order = np.lexsort((expiry, strike, group, acc_of_row))
    keys = [a[order] for a in (acc_of_row, group, strike, expiry)]
    new = np.ones(len(order), bool)
    new[1:] = np.any([a[1:] != a[:-1] for a in keys], axis=0)
    starts = np.flatnonzero(new)
    net = np.add.reduceat(pf.size[order], starts)
    acc, grp = keys[0][starts], keys[1][starts]
    fut, inv = (grp & FUTURE) != 0, (grp & INVERSE) != 0
    index = float(mk.index)
    shorts, longs = np.maximum(-net, 0.0), np.maximum(net, 0.0)
    opt = np.bincount(acc[~fut], shorts[~fut] * np.where(inv[~fut], 1.0, index), n_acc)
    offset = np.zeros(n_acc)
    for inv_side, unit in ((False, index), (True, 1.0 / index)):
        sel = fut & (inv == inv_side)
        long_sum = np.bincount(acc[sel], longs[sel], n_acc)
        short_sum = np.bincount(acc[sel], shorts[sel], n_acc)
        offset += np.minimum(long_sum, short_sum) * unit
    return p.short_option_contingency * opt + p.future_contingency * offset


def _ticks(money, tick, finite):
    """ceil(money / tick) as int64, with the kernel's error values (RK_NOT_FINITE, RK_OVERFLOW)."""
    x = money / tick
    ok = finite & np.isfinite(money) & (x > -1.0) & (x < _MAX_TICKS)
    ticks = np.ceil(np.where(ok, x, 0.0)).astype(np.int64)
    ticks = np.where(ok, ticks, risk._OVERFLOW)
    return np.where(finite & np.isfinite(money), ticks, risk._NOT_FINITE).astype(np.int64)
