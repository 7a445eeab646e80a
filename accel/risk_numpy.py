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
_CHUNK = 1 << 14  # rows per block: the (scenarios x rows) temporaries stay a few MB


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
    weight = np.r_[np.ones(3 * nm), p.extended_weights]

    pnl = np.zeros((ns, n_acc))
    acc_of_row = np.repeat(np.arange(n_acc), np.diff(pf.offsets))
    kind = mk.kind[pf.instrument].astype(np.int64)
    # four kinds of rows, each valued by its own formula and summed per account apart (a subset of
    # rows in account order still holds each account's rows together, which reduceat needs)
    future, inverse = (kind & FUTURE) != 0, (kind & INVERSE) != 0
    for rows_of_kind in (~future & ~inverse, ~future & inverse, future & ~inverse, future & inverse):
        rows = np.flatnonzero(rows_of_kind)
        for lo in range(0, len(rows), _CHUNK):  # blocks of rows: memory, not semantics
            r = rows[lo:lo + _CHUNK]
            block = _position_pnl(pf, mk, p, r, kind[r], mult, state, ndtr)  # (ns, len(r))
            acc = acc_of_row[r]
            starts = np.flatnonzero(np.r_[True, acc[1:] != acc[:-1]])
            pnl[:, acc[starts]] += np.add.reduceat(block, starts, axis=1)
    return -pnl * weight[:, None]


def _position_pnl(pf, mk, p, rows, kind, mult, state, ndtr):
    """size * (value under each scenario - value now) of rows of one kind (kernels/margin.h,
    rk_value): an array (scenarios, rows)."""
    j = pf.instrument[rows]
    size = pf.size[rows]
    f, t = mk.forward[j], mk.expiry[j]
    m = np.r_[1.0, mult][:, None]  # row 0: now; row 1 + s: scenario s
    inverse = (kind[0] & INVERSE) != 0
    if kind[0] & FUTURE:
        values = -1.0 / (f * m) if inverse else f * m
    else:
        k, vol = mk.strike[j], mk.vol[j]
        dte = np.maximum(t * p.days_per_year, 1.0)
        power = np.where(dte < p.vol_ref_days, p.vol_exponent, p.vol_exponent_long)
        shock = np.exp(power * np.log(p.vol_ref_days / dte))
        vols = np.stack([np.maximum(vol * (1.0 + p.vol_up * shock), p.vol_up_floor), vol,
                         vol * np.maximum(1.0 - p.vol_down * shock, p.vol_down_floor)])
        scen_vol = np.vstack([vol[None, :], vols[state]])
        values = _black76(f, m, k, t, scen_vol, mk.rate, (kind & CALL) != 0, ndtr)
        if inverse:
            values /= float(mk.index) * m
    return size * (values[1:] - values[0])


def black76_price(forward, strike, t, vol, call, rate: float = 0.0) -> np.ndarray:
    """Discounted Black-76 prices (the intrinsic value at expiry), the pricing this model margins
    with: for software-only valuation of positions, beside accel.greeks(...).price."""
    with np.errstate(all="ignore"):  # log(f/k)/0 at expiry, replaced by the intrinsic value
        return _black76(np.asarray(forward, float), 1.0, np.asarray(strike, float), np.asarray(t, float),
                        np.asarray(vol, float), rate, np.asarray(call, bool), _ndtr())


def _black76(f, m, k, t, vol, rate, call, ndtr):
    """Discounted Black-76 price of forward f * m (m: a column of multipliers); the intrinsic
    value where vol * sqrt(t) is 0 (expiry)."""
    w = np.where(call, 1.0, -1.0)
    fm = f * m
    s = vol * np.sqrt(t)
    d1 = (np.log(f / k) + np.log(m)) / s + 0.5 * s
    n1 = ndtr(w * d1)
    d1 -= s
    price = w * (fm * n1 - k * ndtr(w * d1))
    price = np.where(s > 0.0, price, np.maximum(w * (fm - k), 0.0))
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
