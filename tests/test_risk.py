"""Options risk (issue 4): greeks against an mpmath reference and published examples, expiry and
inverse conventions, input errors, margin by hand, and byte-identical results on every backend."""
from __future__ import annotations

import inspect
import math

import mpmath as mp
import numpy as np
import pytest

import accel
import accel.risk as risk
from accel.risk import CALL, FUTURE, INVERSE, PUT, MarginParams, Marks, Portfolio, greeks, portfolio_margin

NAMES = ("price", "delta", "gamma", "vega", "theta", "rho")


# ---------------------------------------------------------------- mpmath reference

def reference(x, k, t, r, vol, is_call, q=None):
    """Exact (30-digit) price and greeks of the double inputs; q=None is Black-76."""
    with mp.workdps(30):
        x, k, t, r, vol = (mp.mpf(float(v)) for v in (x, k, t, r, vol))
        spot = q is not None
        q = mp.mpf(float(q)) if spot else r
        w = 1 if is_call else -1
        disc, dq = mp.exp(-r * t), mp.exp(-q * t)
        f = x * mp.exp((r - q) * t)
        s = vol * mp.sqrt(t)
        d1 = mp.log(f / k) / s + s / 2
        d2 = d1 - s
        n1, n2, pdf = mp.ncdf(w * d1), mp.ncdf(w * d2), mp.npdf(d1)
        price = w * disc * (f * n1 - k * n2)
        theta = -disc * f * pdf * vol / (2 * mp.sqrt(t)) + w * disc * (q * f * n1 - r * k * n2)
        rho = w * t * k * disc * n2 if spot else -t * price
        out = (price, w * dq * n1, dq * pdf / (x * s), disc * f * pdf * mp.sqrt(t), theta, rho)
        return [float(v) for v in out]


def random_options(rng, n):
    x = 10.0 ** rng.uniform(-2, 5, n)
    k = x * np.exp(rng.normal(0, 0.5, n) * rng.choice([0.2, 1.0, 3.0], n))
    t = np.where(rng.random(n) < 0.8, rng.uniform(1e-3, 5, n), 10.0 ** rng.uniform(-5, -3, n))
    vol = np.where(rng.random(n) < 0.9, rng.uniform(0.05, 2.0, n), rng.uniform(2.0, 5.0, n))
    r = rng.uniform(-0.02, 0.15, n)
    q = rng.uniform(0.0, 0.1, n)
    return x, k, t, r, vol, rng.random(n) < 0.5, q


def test_accuracy_against_mpmath(cpu):
    """10,000 random options: within 1e-12 relative, or 1e-12 of the output's natural scale
    (forward for money outputs, 1 for delta, the at-the-money gamma for gamma)."""
    rng = np.random.default_rng(20240501)
    x, k, t, r, vol, call, q = random_options(rng, 10_000)
    spot = np.arange(len(x)) % 3 == 0  # a third Black-Scholes-Merton on the spot
    got_fwd = np.array(greeks(x, k, t, r, vol, call, backend=cpu))
    got_spot = np.array(greeks(x, k, t, r, vol, call, q=q, backend=cpu))
    worst = {name: 0.0 for name in NAMES}
    for i in range(len(x)):
        qi = q[i] if spot[i] else None
        got = (got_spot if spot[i] else got_fwd)[:, i]
        ref = reference(x[i], k[i], t[i], r[i], vol[i], call[i], qi)
        f = x[i] * math.exp((r[i] - (qi if spot[i] else r[i])) * t[i])
        scale = (f, 1.0, 1.0 / (x[i] * vol[i] * math.sqrt(t[i])), f, f, f)
        for j, name in enumerate(NAMES):
            err = abs(got[j] - ref[j]) / (abs(ref[j]) + scale[j])
            worst[name] = max(worst[name], err)
            assert err <= 1e-12, (name, i, got[j], ref[j])
    assert max(worst.values()) > 0  # the comparison saw real numbers


def test_hull_example(cpu):
    """Hull, Options Futures and Other Derivatives: S=49, K=50, r=5%, 20 weeks, vol 20%."""
    g = greeks(49.0, 50.0, 0.3846, 0.05, 0.2, True, q=0.0, backend=cpu)
    assert round(g.price[0], 2) == 2.40
    assert round(g.delta[0], 3) == 0.522
    assert round(g.gamma[0], 3) == 0.066
    assert round(g.vega[0], 1) == 12.1
    assert round(g.theta[0], 2) == -4.31
    assert round(g.rho[0], 2) == 8.91


# Haug, Option Pricing Formulas (1998), as tabulated in QuantLib's test-suite/europeanoption.cpp:
# type, strike, spot, q, r, t, vol, output, value
HAUG_GREEKS = [
    (CALL, 100.0, 105.0, 0.10, 0.10, 0.5, 0.36, "delta", 0.5946),
    (PUT, 100.0, 105.0, 0.10, 0.10, 0.5, 0.36, "delta", -0.3566),
    (PUT, 100.0, 105.0, 0.10, 0.10, 0.5, 0.36, "elasticity", -4.8775),
    (CALL, 60.0, 55.0, 0.00, 0.10, 0.75, 0.30, "gamma", 0.0278),
    (PUT, 60.0, 55.0, 0.00, 0.10, 0.75, 0.30, "gamma", 0.0278),
    (CALL, 60.0, 55.0, 0.00, 0.10, 0.75, 0.30, "vega", 18.9358),
    (PUT, 60.0, 55.0, 0.00, 0.10, 0.75, 0.30, "vega", 18.9358),
    (PUT, 405.0, 430.0, 0.05, 0.07, 1 / 12, 0.20, "theta", -31.1924),
    (PUT, 405.0, 430.0, 0.05, 0.07, 1 / 12, 0.20, "theta_per_day", -0.0855),
    (CALL, 75.0, 72.0, 0.00, 0.09, 1.0, 0.19, "rho", 38.7325),
]
HAUG_VALUES = [
    (CALL, 65.0, 60.0, 0.00, 0.08, 0.25, 0.30, 2.1334),
    (PUT, 95.0, 100.0, 0.05, 0.10, 0.50, 0.20, 2.4648),
    (PUT, 19.0, 19.0, 0.10, 0.10, 0.75, 0.28, 1.7011),
    (CALL, 19.0, 19.0, 0.10, 0.10, 0.75, 0.28, 1.7011),
    (CALL, 1.60, 1.56, 0.08, 0.06, 0.50, 0.12, 0.0291),
    (PUT, 70.0, 75.0, 0.05, 0.10, 0.50, 0.35, 4.0870),
    (CALL, 40.0, 42.0, 0.08, 0.04, 0.75, 0.35, 5.0975),
]


@pytest.mark.parametrize("kind,strike,spot,q,r,t,vol,output,value", HAUG_GREEKS)
def test_haug_greeks(cpu, kind, strike, spot, q, r, t, vol, output, value):
    g = greeks(spot, strike, t, r, vol, kind == CALL, q=q, backend=cpu)
    got = {"elasticity": g.delta[0] * spot / g.price[0], "theta_per_day": g.theta[0] / 365.0}.get(
        output, getattr(g, output, [None])[0])
    assert round(got, 4) == value


@pytest.mark.parametrize("kind,strike,spot,q,r,t,vol,value", HAUG_VALUES)
def test_haug_values(cpu, kind, strike, spot, q, r, t, vol, value):
    assert round(greeks(spot, strike, t, r, vol, kind == CALL, q=q, backend=cpu).price[0], 4) == value


def test_put_call_parity(cpu):
    rng = np.random.default_rng(7)
    x, k, t, r, vol, _, q = random_options(rng, 5000)
    for qq in (None, q):
        c = greeks(x, k, t, r, vol, True, q=qq, backend=cpu)
        p = greeks(x, k, t, r, vol, False, q=qq, backend=cpu)
        carry = r if qq is None else qq
        f, disc = x * np.exp((r - carry) * t), np.exp(-r * t)
        tol = 1e-12 * (f + k)
        assert np.all(np.abs((c.price - p.price) - disc * (f - k)) <= tol)
        assert np.all(np.abs((c.delta - p.delta) - np.exp(-carry * t)) <= 1e-12)
        assert np.array_equal(c.gamma, p.gamma) and np.array_equal(c.vega, p.vega)


# ---------------------------------------------------------------- conventions

def test_expiry(cpu):
    """t = 0: intrinsic value, delta 1 / 0 (one half at the money), every other greek 0."""
    g = greeks([90.0, 100.0, 110.0], 100.0, 0.0, 0.05, 0.5, True, backend=cpu)
    assert g.price.tolist() == [0.0, 0.0, 10.0]
    assert g.delta.tolist() == [0.0, 0.5, 1.0]
    for name in ("gamma", "vega", "theta", "rho"):
        assert getattr(g, name).tolist() == [0.0, 0.0, 0.0]
    p = greeks([90.0, 100.0, 110.0], 100.0, 0.0, 0.05, 0.5, False, backend=cpu)
    assert p.price.tolist() == [10.0, 0.0, 0.0] and p.delta.tolist() == [-1.0, -0.5, 0.0]


def test_near_expiry_converges(cpu):
    g = greeks(110.0, 100.0, 1e-12, 0.0, 0.5, True, backend=cpu)
    assert abs(g.price[0] - 10.0) < 1e-12 and g.delta[0] == 1.0


def test_inverse_divides_by_index(cpu):
    usd = np.array(greeks(30000.0, 32000.0, 0.1, 0.0, 0.6, True, backend=cpu))
    coin = np.array(greeks(30000.0, 32000.0, 0.1, 0.0, 0.6, True, inverse=True, index=29900.0, backend=cpu))
    np.testing.assert_allclose(coin, usd / 29900.0, rtol=1e-15)
    default_index = np.array(greeks(30000.0, 32000.0, 0.1, 0.0, 0.6, True, inverse=True, backend=cpu))
    np.testing.assert_allclose(default_index, usd / 30000.0, rtol=1e-15)


def test_scalars_broadcast_like_arrays(cpu):
    rng = np.random.default_rng(3)
    x, k, t, r, vol, call, _ = random_options(rng, 1000)
    full = greeks(x, k, t, np.full(1000, 0.03), np.full(1000, 0.7), np.full(1000, True), backend=cpu)
    scal = greeks(x, k, t, 0.03, 0.7, True, backend=cpu)
    for a, b in zip(full, scal):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("kwargs,message", [
    (dict(strike=[100.0, np.nan, 90.0]), r"strike\[1\]"),
    (dict(strike=[100.0, 100.0, -1.0]), r"strike\[2\]"),
    (dict(forward_or_spot=[100.0, 0.0, 100.0]), r"forward_or_spot\[1\]"),
    (dict(forward_or_spot=[np.inf, 100.0, 100.0]), r"forward_or_spot\[0\]"),
    (dict(vol=[0.5, 0.5, 0.0]), r"vol\[2\]"),
    (dict(t=[1.0, -1e-9, 1.0]), r"t\[1\]"),
    (dict(t=[1.0, 1.0, np.inf]), r"t\[2\]"),
    (dict(r=[0.0, np.nan, 0.0]), r"r\[1\]"),
    (dict(strike=[100.0, 100.0]), r"strike has 2 entries"),
])
def test_bad_input_names_first_bad_index(cpu, kwargs, message):
    args = dict(forward_or_spot=[100.0, 100.0, 100.0], strike=100.0, t=1.0, r=0.0, vol=0.5, is_call=True)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        greeks(**args, backend=cpu)


# ---------------------------------------------------------------- margin

def one_account(kinds, forwards, strikes, expiries, vols, sizes, index=100.0, rate=0.0):
    marks = Marks(index=index, rate=rate, forward=forwards, strike=strikes, expiry=expiries, vol=vols, kind=kinds)
    return Portfolio(offsets=[0, len(sizes)], instrument=np.arange(len(sizes)), size=sizes), marks


def ceil_ticks(money, tick):
    x = money / tick
    return int(x) + (int(x) < x)


def test_short_future_margin_exact(cpu):
    """A short linear future loses 16% of F at +16% (its vol states tie)."""
    p = MarginParams(extended_moves=())
    pf, mk = one_account([FUTURE], [100.0], [0.0], [0.25], [0.0], [-2.0])
    res = portfolio_margin(pf, mk, p, backend=cpu)
    loss = -(-2.0 * (100.0 * (1.0 + 0.16) - 100.0))
    assert res.maintenance.tolist() == [ceil_ticks(loss, p.tick)]
    assert res.initial.tolist() == [ceil_ticks(loss * 1.3, p.tick)]
    assert p.scenario(int(res.worst[0])) == (0.16, "worst")


def scipy_black(f, k, t, vol, call=True, r=0.0):
    """Discounted Black-76 price with SciPy's normal CDF (independent of kernels/)."""
    from scipy.stats import norm
    s = vol * math.sqrt(t)
    d1 = math.log(f / k) / s + s / 2
    w = 1.0 if call else -1.0
    return math.exp(-r * t) * w * (f * norm.cdf(w * d1) - k * norm.cdf(w * (d1 - s)))


def vol_up(vol, days):
    """The documented vol-up state (docs/RISK.md) for the default parameters, written out."""
    dte = max(days, 1.0)
    shock = (30.0 / dte) ** (0.3 if dte < 30.0 else 0.13)
    return max(vol * (1.0 + 0.5 * shock), 0.5)


def assert_ticks_near(ticks, money, tick=1e-8):
    """ticks is money rounded up to whole ticks, money known to ~1e-12 relative (SciPy)."""
    slack = 1e-11 * abs(money) + 1e-9
    assert -slack < ticks * tick - money < tick + slack, (ticks * tick, money)


@pytest.mark.parametrize("days,vol", [(30.0, 0.6), (10.0, 0.8), (90.0, 0.8), (0.5, 0.9)])
def test_short_call_margin(cpu, days, vol):
    """Short call: the worst loss is the SciPy revaluation at +16% with vol up, shocked by
    (30/DTE)^0.3 under 30 days to expiry and ^0.13 from 30 on (DTE floored at 1), plus 1% of the
    index for the one net short option."""
    p = MarginParams(extended_moves=())
    f, k, t = 100.0, 110.0, days / 365
    pf, mk = one_account([CALL], [f], [k], [t], [vol], [-1.0])
    res = portfolio_margin(pf, mk, p, backend=cpu)
    assert p.scenario(int(res.worst[0])) == (0.16, "worst")
    expected = scipy_black(f * 1.16, k, t, vol_up(vol, days)) - scipy_black(f, k, t, vol) + 0.01 * 100.0
    assert vol_up(vol, days) > 0.5  # the shock, not the floor, sets the vol here
    assert_ticks_near(res.maintenance[0], expected)
    assert_ticks_near(res.initial[0], 1.3 * expected)


def test_vol_up_floor(cpu):
    """A low-vol option is shocked up to at least 50% vol (Deribit's min vol for shock up)."""
    f, k, t, vol = 100.0, 105.0, 60 / 365, 0.2
    assert 0.2 * (1 + 0.5 * (30 / 60) ** 0.13) < 0.5
    pf, mk = one_account([CALL], [f], [k], [t], [vol], [-1.0])
    p = MarginParams(extended_moves=(), short_option_contingency=0.0)
    res = portfolio_margin(pf, mk, p, backend=cpu)
    assert p.scenario(int(res.worst[0])) == (0.16, "worst")
    assert_ticks_near(res.maintenance[0], scipy_black(f * 1.16, k, t, 0.5) - scipy_black(f, k, t, vol))
    unfloored = portfolio_margin(pf, mk, MarginParams(extended_moves=(), short_option_contingency=0.0,
                                                      vol_up_floor=0.0), backend=cpu)
    shocked = 0.2 * (1 + 0.5 * (30 / 60) ** 0.13)
    assert_ticks_near(unfloored.maintenance[0], scipy_black(f * 1.16, k, t, shocked) - scipy_black(f, k, t, vol))


def scipy_losses(kind, f, k, t, vol, size, index, p):
    """One position's loss under each scenario, written out from docs/RISK.md with SciPy: the
    vol states, floors and exponents (a standard move at the worst of the three vol states, an
    extended one with vol up), and each extended move's weight extended_weight * min(1,
    extended_reference_move / |m|). A gap between two moves bounds one position's loss by its
    worse endpoint's (docs/RISK.md, "Gaps")."""
    dte = max(t * p.days_per_year, 1.0)
    shock = (p.vol_ref_days / dte) ** (p.vol_exponent if dte < p.vol_ref_days else p.vol_exponent_long)
    vols = {"up": max(vol * (1 + p.vol_up * shock), p.vol_up_floor), "same": vol,
            "down": vol * max(1 - p.vol_down * shock, p.vol_down_floor)}
    inverse, call = bool(kind & INVERSE), bool(kind & CALL)
    base = scipy_black(f, k, t, vol, call) / (index if inverse else 1.0)
    losses = []
    for i in range(p.n_scenarios):
        move, state = p.scenario(i)
        if isinstance(move, tuple):
            losses.append(max(losses[p.moves.index(m)] for m in move))
            continue
        states = ("up", "same", "down") if state == "worst" else (state,)
        value = [scipy_black(f * (1 + move), k, t, vols[v], call) / (index * (1 + move) if inverse else 1.0)
                 for v in states]
        ext = i >= len(p.moves)
        weight = p.extended_weight * min(1.0, p.extended_reference_move / abs(move)) if ext else 1.0
        losses.append(max(-size * (v - base) for v in value) * weight)
    return losses


@pytest.mark.parametrize("strike,move", [(120.0, 0.16), (200.0, 2.0), (400.0, 5.0)])
def test_extended_scenarios_and_inverse(cpu, strike, move):
    """Short inverse calls further and further out of the money: the worst scenario moves from the
    standard grid's +16% into the extended table, each extended loss counting its dampened
    weight (0.16 / |move| by default); plus 0.01 coin for the net short option."""
    p = MarginParams()
    f = index = 100.0
    pf, mk = one_account([CALL | INVERSE], [f], [strike], [0.1], [0.5], [-1.0], index=index)
    res = portfolio_margin(pf, mk, p, backend=cpu)
    losses = scipy_losses(CALL | INVERSE, f, strike, 0.1, 0.5, -1.0, index, p)
    worst = int(np.argmax(losses))
    assert p.scenario(worst) == (move, "worst" if move in p.moves else "up") and int(res.worst[0]) == worst
    assert_ticks_near(res.maintenance[0], losses[worst] + 0.01)
    undamped = MarginParams(extended_weight=0.25, extended_reference_move=5.0)  # a flat quarter
    res = portfolio_margin(pf, mk, undamped, backend=cpu)
    losses = scipy_losses(CALL | INVERSE, f, strike, 0.1, 0.5, -1.0, index, undamped)
    assert undamped.extended_weights == (0.25,) * 8
    assert_ticks_near(res.maintenance[0], max(losses) + 0.01)


def test_extended_table_does_not_dominate_a_future():
    """The dampener makes a linear position's weighted extended loss equal its +-16% loss (Paradex's
    Deribit-like weights: 24%, 48%, 32%, 16%, 8%, 5.33%, 4%, 3.2%), so a short future is
    margined at 16% of its notional, not at half of a +500% move."""
    p = MarginParams()
    assert np.allclose(p.extended_weights, [0.24, 0.48, 0.32, 0.16, 0.08, 0.0533, 0.04, 0.032], atol=0.005)  # printed rounded
    pf, mk = one_account([FUTURE], [60_000.0], [0.0], [0.1], [0.0], [-1.0], index=60_000.0)
    res = portfolio_margin(pf, mk, p)
    assert_ticks_near(res.maintenance[0], 0.16 * 60_000.0)
    assert p.scenario(int(res.worst[0])) == (0.16, "worst")  # ties with +500%: the lower index wins


# (kinds, strikes, expiries, sizes, expected contingency in units of index * 1%, or of 1% coin
# when inverse): the netting rules of docs/RISK.md, by hand
CONTINGENCY_CASES = [
    ([CALL, PUT], [100.0, 100.0], [0.1, 0.1], [10.0, -20.0], 10.0),   # Deribit's example: net -10 at strike X
    ([CALL, PUT], [100.0, 90.0], [0.1, 0.1], [10.0, -20.0], 20.0),    # different strikes do not net
    ([CALL, PUT], [100.0, 100.0], [0.1, 0.2], [10.0, -20.0], 20.0),   # nor different expiries
    ([CALL, CALL, PUT], [100.0, 100.0, 90.0], [0.1, 0.1, 0.1], [-3.0, -2.0, 4.0], 5.0),  # rows of one strike add
    ([CALL, PUT], [100.0, 100.0], [0.1, 0.1], [20.0, -20.0], 0.0),    # fully netted
    ([FUTURE, FUTURE], [0.0, 0.0], [0.1, 0.2], [100.0, -100.0], 100.0),  # Deribit's example: offsetting futures
    ([FUTURE, FUTURE], [0.0, 0.0], [0.1, 0.2], [100.0, -60.0], 60.0),    # only the offsetting part
    ([FUTURE, FUTURE, FUTURE], [0.0, 0.0, 0.0], [0.1, 0.1, 0.2], [50.0, -50.0, 30.0], 0.0),  # same expiry nets first
    ([FUTURE, FUTURE], [0.0, 0.0], [0.1, 0.2], [-100.0, -60.0], 0.0),   # all short: nothing offsets
    ([CALL | INVERSE, PUT | INVERSE], [100.0, 100.0], [0.1, 0.1], [1.0, -4.0], 3.0),
    ([FUTURE | INVERSE, FUTURE | INVERSE], [0.0, 0.0], [0.1, 0.2], [3000.0, -5000.0], 3000.0),  # USD notional
    ([CALL, CALL | INVERSE], [100.0, 100.0], [0.1, 0.1], [5.0, -2.0], 2.0),  # linear and inverse apart
]


@pytest.mark.parametrize("kinds,strikes,expiries,sizes,units", CONTINGENCY_CASES)
def test_contingency_netting(backend, kinds, strikes, expiries, sizes, units):
    """Scenario losses switched off (one zero move, no vol shocks): the margin is the contingency."""
    index = 200.0
    p = MarginParams(moves=(0.0,), extended_moves=(), vol_up=0.0, vol_down=0.0, vol_up_floor=0.0,
                     short_option_contingency=0.01, future_contingency=0.02)
    pf, mk = one_account(kinds, [index] * len(kinds), strikes, expiries, [0.5] * len(kinds), sizes, index=index)
    res = portfolio_margin(pf, mk, p, backend=backend)
    if kinds[-1] & INVERSE and kinds[-1] & FUTURE:
        expected = 0.02 * units / index  # coin: USD notional / index
    elif kinds[0] & FUTURE:
        expected = 0.02 * units * index
    elif kinds[-1] & INVERSE:
        expected = 0.01 * units  # coin per contract
    else:
        expected = 0.01 * units * index
    assert_ticks_near(res.maintenance[0], expected)
    from accel import risk_numpy
    assert_same_result(risk_numpy.portfolio_margin(pf, mk, p), res)


def test_long_options_and_empty_accounts(cpu):
    pf = Portfolio(offsets=[0, 0, 1, 1], instrument=[0], size=[1.0])
    mk = Marks(index=100.0, rate=0.01, forward=[100.0], strike=[100.0], expiry=[0.5], vol=[0.5], kind=[PUT])
    res = portfolio_margin(pf, mk, backend=cpu)
    assert res.maintenance[0] == 0 and res.maintenance[2] == 0 and res.initial[0] == 0
    assert 0 < res.maintenance[1] * 1e-8 < greeks(100.0, 100.0, 0.5, 0.01, 0.5, False).price[0]


def test_standard_margin(cpu):
    from scipy.stats import norm
    f = k = 100.0
    t, v = 0.25, 0.5
    pf, mk = one_account([CALL, PUT, FUTURE, CALL], [f, f, f, f], [k, 90.0, 0.0, k], [t, t, t, t],
                         [v, v, 0.0, v], [-2.0, -1.0, 3.0, 5.0])
    im, mm = risk.standard_margin(pf, mk, backend=cpu)
    s = v * math.sqrt(t)
    call = f * norm.cdf(s / 2) - k * norm.cdf(-s / 2)
    d1 = math.log(f / 90.0) / s + s / 2
    put = 90.0 * norm.cdf(-(d1 - s)) - f * norm.cdf(-d1)
    exp_mm = 2 * (7.5 + call) + (7.5 + put) + 0.01 * 300.0
    exp_im = 2 * (15.0 + call) + max(max(15.0 - 10.0, 10.0) + put, 7.5 + put) + 0.02 * 300.0
    assert abs(mm[0] * 1e-8 - exp_mm) < 1e-8 and abs(im[0] * 1e-8 - exp_im) < 1e-8


def test_margin_params():
    p = MarginParams()
    assert p.n_scenarios == 9 + 8 + 8 and p.moves[4] == 0.0 and len(p.moves) == 9
    assert p.scenario(4) == (0.0, "worst") and p.scenario(9) == (-0.66, "up")
    assert p.scenario(16) == (5.0, "up") and p.scenario(8) == (0.16, "worst")
    assert p.scenario(17) == ((-0.16, -0.12), "worst") and p.scenario(17 + 3) == ((-0.04, 0.0), "worst")
    assert p.scenario(24) == ((0.12, 0.16), "worst")
    assert p.extended_weights[3] == 0.16 and len(p.extended_weights) == 8
    for bad in (dict(tick=0.0), dict(moves=()), dict(moves=(-1.0, 0.0)), dict(vol_up=-0.1),
                dict(initial_multiplier=0.9), dict(vol_down_floor=0.0), dict(extended_weight=float("nan")),
                dict(vol_up_floor=-0.5), dict(vol_exponent_long=float("inf")), dict(future_contingency=-0.01),
                dict(extended_moves=(0.5,) * 17), dict(vol_exponent=250.0), dict(vol_ref_days=1e300, vol_exponent=2.0)):
        with pytest.raises(ValueError, match="MarginParams"):
            MarginParams(**bad)
    with pytest.raises(ValueError, match="scenario index 25"):
        p.scenario(25)


def test_param_array_layout_matches_kernel():
    """accel/risk.py's _array and the RK_P_* offsets of kernels/margin.h name the same fields."""
    import re
    from accel.backends.base import KERNEL_DIR
    offsets = {name: int(i) for name, i in
               re.findall(r"#define RK_P_(\w+) (\d+)", (KERNEL_DIR / "margin.h").read_text())}
    fields = {"VOL_UP": "vol_up", "VOL_DOWN": "vol_down", "VOL_REF_DAYS": "vol_ref_days",
              "VOL_EXPONENT": "vol_exponent", "VOL_EXPONENT_LONG": "vol_exponent_long",
              "VOL_UP_FLOOR": "vol_up_floor", "VOL_DOWN_FLOOR": "vol_down_floor", "DAYS_PER_YEAR": "days_per_year",
              "EXT_WEIGHT": "extended_weight", "CONTINGENCY": "short_option_contingency",
              "FUT_CONTINGENCY": "future_contingency", "IM_MULT": "initial_multiplier", "TICK": "tick",
              "OPT_IM": "option_initial", "OPT_IM_FLOOR": "option_initial_floor", "OPT_MM": "option_maintenance",
              "FUT_IM": "future_initial", "FUT_MM": "future_maintenance"}
    assert set(offsets) == set(fields) | {"NMOVES", "NEXT", "RATE", "INDEX", "MOVES"}
    # every field a distinct value, so a swapped slot shows
    values = {name: (i + 1) / 32 for i, name in enumerate(fields.values())} | {"initial_multiplier": 2.5}
    p = MarginParams(moves=(0.01, 0.02), extended_moves=(0.5, -2 / 3), extended_reference_move=0.25, **values)
    arr = p._array(index=123.0, rate=0.07)
    for name, field in fields.items():
        assert arr[offsets[name]] == values[field], name
    assert arr[offsets["NMOVES"]] == 2 and arr[offsets["NEXT"]] == 2
    assert arr[offsets["RATE"]] == 0.07 and arr[offsets["INDEX"]] == 123.0
    w = values["extended_weight"]  # the moves, then each extended move's weight w * min(1, 0.25 / |m|)
    assert arr[offsets["MOVES"]:].tolist() == [0.01, 0.02, 0.5, -2 / 3, w * 0.5, w * (0.25 / (2 / 3))]
    assert offsets["MOVES"] == max(offsets.values())


@pytest.mark.parametrize("change,message", [
    (dict(offsets=[0, 2, 1, 2]), r"offsets\[2\]"),
    (dict(offsets=[0, 1]), "end at the number of positions"),
    (dict(instrument=[0, 5]), r"instrument\[1\]"),
    (dict(size=[1.0, np.nan]), r"size\[1\]"),
])
def test_portfolio_errors(cpu, change, message):
    base = dict(offsets=[0, 1, 2], instrument=[0, 0], size=[1.0, -1.0])
    marks = dict(index=100.0, rate=0.0, forward=[100.0], strike=[100.0], expiry=[0.1], vol=[0.5], kind=[CALL])
    with pytest.raises(ValueError, match=message):
        portfolio_margin(base | change, marks, backend=cpu)


@pytest.mark.parametrize("change,message", [
    (dict(vol=[0.0]), r"vol\[0\]"),
    (dict(strike=[np.inf]), r"strike\[0\]"),
    (dict(expiry=[-1.0]), r"expiry\[0\]"),
    (dict(kind=[5]), r"kind\[0\]"),
    (dict(index=0.0), "index"),
])
def test_marks_errors(change, message):
    marks = dict(index=100.0, rate=0.0, forward=[100.0], strike=[100.0], expiry=[0.1], vol=[0.5], kind=[CALL])
    with pytest.raises(ValueError, match=message):
        Marks(**(marks | change))


def test_tick_overflow_raises(cpu):
    pf, mk = one_account([FUTURE], [1e6], [0.0], [0.1], [0.0], [-1e6])
    with pytest.raises(ValueError, match="account 0"):
        portfolio_margin(pf, mk, MarginParams(tick=1e-12), backend=cpu)


# ---------------------------------------------------------------- determinism across backends

def extreme_options(rng, n):
    x, k, t, r, vol, call, q = random_options(rng, n)
    m = n // 8
    k[:m] = x[:m] * 10.0 ** rng.choice([-12, -6, -3, 3, 6, 12], m)  # deep in / out of the money
    t[m:2 * m] = 10.0 ** rng.uniform(-300, -6, m)  # t near 0
    t[2 * m:2 * m + 50] = 0.0
    vol[3 * m:4 * m] = 5.0
    t[3 * m:4 * m] = rng.uniform(1, 30, m)
    k[4 * m:4 * m + 50] = x[4 * m:4 * m + 50]  # exactly at the money
    x[5 * m:5 * m + 50], k[5 * m:5 * m + 50] = 1e-300, 1e300  # ratio underflows
    return x, k, t, r, vol, call, q


EXPIRIES = np.array([0.0, 1 / 365 / 24, 1 / 365, 7 / 365, 29 / 365, 30 / 365, 90 / 365, 1.0])


def random_book(rng, accounts, per_account, instruments=60, kinds=(CALL, PUT, FUTURE, CALL | INVERSE, PUT | INVERSE)):
    """Random accounts over an instrument table whose strikes (a 1,000 grid) and expiries (half from
    a list of 0 to 1 year) repeat, so calls, puts and futures share strikes and expiries and the
    contingencies net."""
    kind = rng.choice(kinds, instruments).astype(np.uint8)
    expiry = np.where(rng.random(instruments) < 0.5, rng.choice(EXPIRIES, instruments), rng.uniform(0, 1, instruments))
    marks = Marks(index=30000.0, rate=0.02, forward=30000.0 * np.exp(rng.normal(0, 0.02, instruments)),
                  strike=np.round(30000.0 * np.exp(rng.normal(0, 0.3, instruments)), -3),
                  expiry=expiry, vol=rng.uniform(0.2, 5.0, instruments), kind=kind)
    counts = rng.integers(0, 2 * per_account, accounts)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    pf = Portfolio(offsets=offsets, instrument=rng.integers(0, instruments, offsets[-1]),
                   size=np.round(rng.normal(0, 10, offsets[-1]), 1))
    return pf, marks


def test_greeks_identical_on_every_backend(backends):
    rng = np.random.default_rng(11)
    x, k, t, r, vol, call, q = extreme_options(rng, 20_000)
    inv = rng.random(len(x)) < 0.3
    inv[x < 1e-200] = False  # coin-settled with a 1e-300 index overflows: an error now, tested apart
    # plain Black-76 (the C fallback's fastest path: no carry, linear), inverse mixed in, and BSM
    runs = {b.name: (greeks(x, k, t, r, vol, call, backend=b),
                     greeks(x, k, t, r, vol, call, inverse=inv, backend=b),
                     greeks(x, k, t, r, vol, call, q=q, backend=b)) for b in backends}
    first = next(iter(runs.values()))
    assert all(np.isfinite(np.array(run)).all() for run in first)
    for name, run in runs.items():
        for a, b in zip(first, run):
            for j, out in enumerate(NAMES):
                assert a[j].tobytes() == b[j].tobytes(), (name, out)


def test_margin_identical_on_every_backend(backends):
    rng = np.random.default_rng(12)
    pf, mk = random_book(rng, 300, 10)
    runs = [(portfolio_margin(pf, mk, backend=b), risk.standard_margin(pf, mk, backend=b)) for b in backends]
    for pm, sm in runs[1:]:
        for a, b in zip(runs[0][0] + runs[0][1], pm + sm):
            assert a.tobytes() == b.tobytes()
    assert (runs[0][0].maintenance >= 0).all() and (runs[0][0].initial >= runs[0][0].maintenance).all()


def test_numpy_margin_inputs_and_errors():
    from accel import risk_numpy
    pf, mk = one_account([FUTURE], [1e6], [0.0], [0.1], [0.0], [-1e6])
    with pytest.raises(ValueError, match="account 0: margin does not fit in int64 ticks"):
        risk_numpy.portfolio_margin(pf, mk, MarginParams(tick=1e-12))
    marks = Marks(index=1.0, rate=0.0, forward=np.array([1.0, 1.7e308]), strike=np.ones(2), expiry=np.ones(2),
                  vol=np.ones(2), kind=np.array([FUTURE, FUTURE]))
    with np.errstate(all="raise"):  # no floating-point warning escapes either
        with pytest.raises(ValueError, match="account 1: a scenario loss is not a finite number"):
            risk_numpy.portfolio_margin(Portfolio(offsets=[0, 1, 3], instrument=[0, 1, 1], size=[2.0, -1.0, 0.0]),
                                        marks)
    with pytest.raises(ValueError, match=r"instrument\[1\]"):
        risk_numpy.portfolio_margin(dict(offsets=[0, 2], instrument=[0, 5], size=[1.0, 1.0]), marks)
    empty = risk_numpy.portfolio_margin(Portfolio(offsets=[0, 0, 0], instrument=[], size=[]), marks)
    assert empty.maintenance.tolist() == [0, 0] and empty.worst.tolist() == [0, 0]


def test_backend_fixture_runs_greeks(backend):
    g = greeks(49.0, 50.0, 0.3846, 0.05, 0.2, True, q=0.0, backend=backend)
    assert round(g.price[0], 2) == 2.40


@pytest.mark.parametrize("flag,match", [(["False"], "is_call must be bool"), ([0.5], "is_call must be bool"),
                                        ([1, 2], r"is_call\[1\] = 2")])
def test_option_type_flags_are_checked(flag, match):
    n = len(flag)
    with pytest.raises(ValueError, match=match):
        greeks([100.0] * n, [100.0] * n, [1.0] * n, [0.0] * n, [0.5] * n, flag)


# ---- extreme but valid inputs (issue 7) --------------------------------------------------------

OVERFLOWING = [(1.7e308, 1.0, 1.0, -1.0, 0.5, True),   # discount e^1 times the largest forward: inf
               (1.0, 1.0, 1e300, 0.0, 1e200, True)]    # vol^2 t beyond double: NaN greeks


@pytest.mark.parametrize("args", OVERFLOWING)
def test_greeks_beyond_double_precision_are_an_error(backend, args):
    """Every backend raises the same ValueError naming the option; none returns NaN or inf, whose
    payloads differ between targets."""
    with pytest.raises(ValueError, match=r"option 0 \(forward_or_spot="):
        accel.greeks(*args, backend=backend)
    f, k, t, r, vol, call = args
    fs = np.array([100.0, 110.0, 120.0, f, 130.0])
    with pytest.raises(ValueError, match="option 3 "):
        accel.greeks(fs, [100.0, 100.0, 100.0, k, 100.0], [0.5, 0.5, 0.5, t, 0.5], r, [0.5, 0.5, 0.5, vol, 0.5],
                     call, backend=backend)
    ok = accel.greeks(np.delete(fs, 3), 100.0, 0.5, r, 0.5, call, backend=backend)
    assert all(np.isfinite(g).all() for g in ok)


def test_a_non_finite_scenario_loss_is_an_error(backend):
    """Two futures near the largest double, sizes -1 and 0: a scenario loss is NaN (0 x inf), which
    the worst-loss comparison used to skip, leaving the account a margin of zero."""
    marks = Marks(index=1.0, rate=0.0, forward=np.array([1.0, 1.7e308]), strike=np.ones(2), expiry=np.ones(2),
                  vol=np.ones(2), kind=np.array([FUTURE, FUTURE]))
    pf = Portfolio(offsets=[0, 1, 3], instrument=[0, 1, 1], size=[2.0, -1.0, 0.0])
    with pytest.raises(ValueError, match="account 1: a scenario loss is not a finite number"):
        accel.portfolio_margin(pf, marks, backend=backend)
    fine = Portfolio(offsets=[0, 1], instrument=[0], size=[2.0])
    assert accel.portfolio_margin(fine, marks, backend=backend).maintenance[0] >= 0


# ---- accel.risk_numpy: the software-only path, bit-identical (issue 19, finding 10) ------------

def assert_same_result(got, ref):
    """Two MarginResults (or arrays) with the same dtypes and the same bytes."""
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype and a.shape == b.shape
        if not np.array_equal(a, b):
            bad = np.flatnonzero(a != b)
            raise AssertionError(f"{len(bad)} differ, first at {bad[:5].tolist()}: {a[bad[:5]]} vs {b[bad[:5]]}")


def outcome(fn):
    """The result of fn(), or the message of the ValueError it raises."""
    try:
        return fn()
    except ValueError as exc:
        return f"ValueError: {exc}"


STRESS_EXPIRIES = np.array([0.0, -0.0, 1e-300, 1e-200, 1e-12, 1e-8, 1 / 365 / 24 / 60, 1 / 365 / 24, 0.5 / 365,
                            1 / 365, 1.0000001 / 365, 29 / 365, 30 / 365, 31 / 365, 90 / 365, 1.0, 5.0])
MONEYNESS = np.array([1e-6, 1e-3, 0.1, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0, 1.01, 1.05, 1.1, 1.25, 2.0, 10.0, 1e3, 1e6])


def stress_book(rng, accounts, instruments, index, rate, largest):
    """Accounts at the edges of the model: all six kinds; strikes deep in and out of the money and
    exactly at the forward; expiries 0, -0.0, 1e-300, minutes, the 1-day DTE floor and the 30-day
    exponent switch, years; vols from 1e-8 to 20; sizes from 1e-3 to `largest` contracts of both signs,
    zeros and rows that cancel exactly; 10% of accounts empty, some with hundreds of positions.
    Strikes and expiries come from small sets and each account draws from a window of instruments,
    so rows repeat and the contingencies net."""
    kind = rng.choice(risk._KINDS, instruments).astype(np.uint8)
    forward = index * np.exp(rng.normal(0, 0.05, instruments))
    forward[rng.random(instruments) < 0.1] = index  # forward exactly at the index
    strike = index * rng.choice(MONEYNESS, instruments)
    atm = rng.random(instruments) < 0.15
    strike[atm] = forward[atm]  # exactly at the money
    expiry = np.where(rng.random(instruments) < 0.6, rng.choice(STRESS_EXPIRIES, instruments),
                      rng.uniform(0, 2, instruments))
    vol = np.where(rng.random(instruments) < 0.7, rng.uniform(0.05, 2.0, instruments),
                   10.0 ** rng.uniform(-8, 1.3, instruments))
    marks = Marks(index=index, rate=rate, forward=forward, strike=strike, expiry=expiry, vol=vol, kind=kind)
    counts = np.where(rng.random(accounts) < 0.1, 0, rng.integers(1, 12, accounts))
    counts[rng.choice(accounts, 8, replace=False)] = rng.integers(100, 400, 8)  # many positions
    offsets = np.concatenate([[0], np.cumsum(counts)])
    n = int(offsets[-1])
    base = np.repeat(rng.integers(0, instruments, accounts), counts)
    inst = (base + rng.integers(0, 12, n)) % instruments
    size = np.where(rng.random(n) < 0.5, np.round(rng.normal(0, 10, n), 1),
                    rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(-3, np.log10(largest), n))
    cancel = np.flatnonzero(rng.random(n) < 0.1)[1:]
    inst[cancel], size[cancel] = inst[cancel - 1], -size[cancel - 1]  # the row before, undone
    size[rng.random(n) < 0.02] = 0.0
    size[rng.random(n) < 0.01] = -0.0
    return Portfolio(offsets=offsets, instrument=inst, size=size), marks


STRESS_PARAMS = [  # (accounts, instruments, index, rate, largest size, params)
    (50_000, 6_000, 30_000.0, 0.02, 1e4, MarginParams()),
    (30_000, 4_000, 0.05, -0.01, 1e7, MarginParams(moves=(-0.3, -0.1, 0.0, 0.1, 0.3), extended_moves=(-0.9, 0.7, 9.0),
                                              vol_up_floor=0.0, vol_exponent=0.5, vol_exponent_long=0.2,
                                              extended_reference_move=10.0, short_option_contingency=0.03,
                                              future_contingency=0.005)),
    (20_000, 3_000, 2e6, 0.1, 1e4, MarginParams(moves=(-0.5, 0.0, 0.9), extended_moves=(), vol_ref_days=7.0, tick=1e-3,
                                           days_per_year=360.0, vol_down_floor=0.5, initial_multiplier=1.0,
                                           vol_up=3.0, vol_down=0.9)),
]


def test_numpy_margin_bit_identical(backends):
    """accel.risk_numpy.portfolio_margin against every backend, byte for byte: 100,000 stress
    accounts under three parameter sets (one with its tick set so the largest margin is just under
    the int64 limit), plus 2,000 random ones; then the same tick overflowing raises the same error."""
    from accel import risk_numpy
    rng = np.random.default_rng(1919)
    total = 0
    for i, (accounts, instruments, index, rate, largest, p) in enumerate(STRESS_PARAMS):
        pf, mk = stress_book(rng, accounts, instruments, index, rate, largest)
        if i == 1:  # a tick at which the largest initial margin is about 9.1e18 ticks (the limit is 9.2e18)
            largest = portfolio_margin(pf, mk, MarginParams(**{**p.__dict__, "tick": 1.0}), backend=backends[0])
            p = MarginParams(**{**p.__dict__, "tick": float(largest.initial.max()) / 9.1e18})
        ours = risk_numpy.portfolio_margin(pf, mk, p)
        for b in backends:
            assert_same_result(ours, portfolio_margin(pf, mk, p, backend=b))
        total += accounts
        assert (ours.maintenance == 0).mean() > 0.05 and (ours.maintenance > 0).mean() > 0.5
        assert len(set(ours.worst.tolist())) >= min(p.n_scenarios, 10)  # many scenarios are the worst somewhere
        if i == 1:
            assert ours.initial.max() > 9.0e18  # near the int64 limit
            over = MarginParams(**{**p.__dict__, "tick": p.tick * 0.98})
            message = outcome(lambda: risk_numpy.portfolio_margin(pf, mk, over))
            assert "margin does not fit in int64 ticks" in message
            for b in backends:
                assert message == outcome(lambda: portfolio_margin(pf, mk, over, backend=b))
            if UNCHECKED:  # the error codes of every account, and the worst scenarios of those too
                ours = risk_numpy.portfolio_margin(pf, mk, over, checked=False)
                assert (ours.initial == -1).any() and (ours.initial > 1e18).any()
                for b in backends:
                    assert_same_result(ours, portfolio_margin(pf, mk, over, backend=b, checked=False))
        # the loss matrix is the one the margins come from: first maximum per account
        if i == 2:
            losses = risk_numpy.scenario_losses(pf, mk, p)
            assert losses.shape == (p.n_scenarios, accounts) and losses.dtype == np.float64
            assert np.array_equal(np.argmax(losses, axis=0), ours.worst)
    assert total >= 100_000
    pf, mk = random_book(rng, 2_000, 12, instruments=150,
                         kinds=(CALL, PUT, FUTURE, CALL | INVERSE, PUT | INVERSE, FUTURE | INVERSE))
    ours = risk_numpy.portfolio_margin(pf, mk)
    for b in backends:
        assert_same_result(ours, portfolio_margin(pf, mk, backend=b))


def test_numpy_margin_sums_in_row_order(cpu):
    """Sizes of very different magnitudes in one account: a different summation order than the
    kernel's (row by row) changes the last bits of the losses, which this test would see."""
    from accel import risk_numpy
    rng = np.random.default_rng(5)
    n = 64
    pf = Portfolio(offsets=np.arange(0, 64 * 200 + 1, 200), instrument=rng.integers(0, n, 64 * 200),
                   size=rng.choice([-1.0, 1.0], 64 * 200) * 10.0 ** rng.uniform(-4, 5, 64 * 200))
    mk = Marks(index=100.0, rate=0.0, forward=100.0 * np.exp(rng.normal(0, 0.1, n)), strike=np.full(n, 100.0),
               expiry=np.full(n, 0.25), vol=np.full(n, 0.8), kind=rng.choice([CALL, PUT, FUTURE], n))
    p = MarginParams(tick=1e-4)
    assert_same_result(risk_numpy.portfolio_margin(pf, mk, p), portfolio_margin(pf, mk, p, backend=cpu))
    losses = risk_numpy.scenario_losses(pf, mk, p)
    # the same rows summed in the reverse order give other bits somewhere: the test can see order
    rev = Portfolio(offsets=pf.offsets, instrument=pf.instrument.reshape(64, 200)[:, ::-1].ravel(),
                    size=pf.size.reshape(64, 200)[:, ::-1].ravel())
    assert not np.array_equal(risk_numpy.scenario_losses(rev, mk, p), losses)


UNCHECKED = "checked" in inspect.signature(portfolio_margin).parameters  # accel.portfolio_margin(checked=False)


def test_numpy_margin_errors_match_the_kernel(backends):
    """The same ValueError for a non-finite loss and for int64 overflow; with checked=False, the
    same error codes (-1, -2) and worst scenarios in a batch that mixes them with good accounts."""
    from accel import risk_numpy
    marks = Marks(index=1.0, rate=0.0, forward=np.array([1.0, 1.7e308]), strike=np.ones(2), expiry=np.ones(2),
                  vol=np.ones(2), kind=np.array([FUTURE, FUTURE]))
    cases = [(Portfolio(offsets=[0, 1, 3], instrument=[0, 1, 1], size=[2.0, -1.0, 0.0]), marks, None),
             one_account([FUTURE], [1e6], [0.0], [0.1], [0.0], [-1e6]) + (MarginParams(tick=1e-12),),
             one_account([CALL, PUT], [1e6, 1e6], [1e6, 1e6], [0.1, 0.0], [0.5, 0.5], [-1e8, 3.0])
             + (MarginParams(tick=1e-6),)]
    for pf, mk, p in cases:
        message = outcome(lambda: risk_numpy.portfolio_margin(pf, mk, p))
        assert message.startswith("ValueError: account")
        for b in backends:
            assert message == outcome(lambda: portfolio_margin(pf, mk, p, backend=b))
    forward = np.array([1.0, 1.7e308, 1e6, 3.0e4, 3.0e4])
    mixed = Marks(index=3.0e4, rate=0.01, forward=forward, strike=np.array([1.0, 1.0, 1.0, 3.0e4, 2.5e4]),
                  expiry=np.array([1.0, 1.0, 0.1, 0.1, 0.0]), vol=np.array([1.0, 1.0, 1.0, 0.5, 0.7]),
                  kind=np.array([FUTURE, FUTURE, FUTURE, CALL, PUT | INVERSE]))
    pf = Portfolio(offsets=[0, 1, 3, 4, 4, 7, 8], instrument=[0, 1, 1, 2, 3, 4, 0, 4],
                   size=[2.0, -1.0, 0.0, -1e11, -3.0, 2.0, 1.0, -5.0])
    message = outcome(lambda: risk_numpy.portfolio_margin(pf, mixed))
    assert message.startswith("ValueError: account 1: a scenario loss is not a finite number")
    if UNCHECKED:
        ours = risk_numpy.portfolio_margin(pf, mixed, checked=False)
        assert ours.maintenance[1] == -2 and ours.maintenance[2] == -1 and (ours.maintenance[[0, 3, 4, 5]] >= 0).all()
        for b in backends:
            assert message == outcome(lambda: portfolio_margin(pf, mixed, backend=b))
            assert_same_result(ours, portfolio_margin(pf, mixed, backend=b, checked=False))


def test_numpy_greeks_price_bit_identical(backends):
    """greeks_price against accel.greeks(...).price on every backend, byte for byte: 120,000
    options (deep in and out of the money, t = 0 and t down to 1e-300, vol 5, at the money,
    underflowing F/K, random) linear, inverse at the forward and inverse at another index; and
    scalars broadcast."""
    from accel import risk_numpy
    rng = np.random.default_rng(1920)
    n = 120_000
    x, k, t, r, vol, call, _ = extreme_options(rng, n)
    t[rng.random(n) < 0.03] = 0.0
    inv = rng.random(n) < 0.4
    inv[x < 1e-200] = False  # coin-settled at a 1e-300 index overflows: an error, tested below
    index = x * np.exp(rng.normal(0, 0.1, n))
    runs = {"linear": dict(), "inverse": dict(inverse=inv), "inverse at an index": dict(inverse=inv, index=index)}
    for name, kw in runs.items():
        ours = risk_numpy.greeks_price(x, k, t, r, vol, call, **kw)
        assert ours.dtype == np.float64 and ours.shape == (n,) and np.isfinite(ours).all()
        for b in backends:
            ref = accel.greeks(x, k, t, r, vol, call, backend=b, **kw).price
            assert np.array_equal(ours.view(np.int64), ref.view(np.int64)), (name, b.name)
    sl = slice(0, 2000)
    for args, kw in [((30_000.0, k[sl] * 0 + 31_000.0, t[sl], 0.02, 0.6, True), dict(inverse=True, index=29_000.0)),
                     ((x[sl], 100.0, 0.0, 0.0, vol[sl], call[sl]), {}),
                     ((x[0], k[0], t[0], r[0], vol[0], bool(call[0])), dict(inverse=True)),
                     (([], 1.0, 1.0, 0.0, 0.5, True), {})]:
        ours = risk_numpy.greeks_price(*args, **kw)
        ref = accel.greeks(*args, backend=backends[0], **kw).price
        assert ours.shape == ref.shape and np.array_equal(ours.view(np.int64), ref.view(np.int64))


@pytest.mark.parametrize("kwargs", [
    dict(strike=[100.0, np.nan, 90.0]), dict(strike=[100.0, 100.0, -1.0]), dict(forward_or_spot=[100.0, 0.0, 100.0]),
    dict(forward_or_spot=[np.inf, 100.0, 100.0]), dict(vol=[0.5, 0.5, 0.0]), dict(t=[1.0, -1e-9, 1.0]),
    dict(t=[1.0, 1.0, np.inf]), dict(r=[0.0, np.nan, 0.0]), dict(strike=[100.0, 100.0]), dict(r=[0.0, 800.0, 0.0]),
    dict(is_call=[True, 2, False]), dict(is_call="yes"), dict(inverse=[True, False, True], index=[1.0, 1.0, -1.0]),
    dict(forward_or_spot=[1e-300, 1.0, 1.0], strike=[1e300, 1.0, 1.0], is_call=False, inverse=True),  # overflows
    dict(forward_or_spot=[100.0, 1.7e308, 100.0], r=-1.0),  # the discount times the largest forward
    dict(vol=[0.5, 1e200, 0.5], t=1e300),  # vol^2 t beyond double: NaN greeks, finite price
])
def test_numpy_greeks_price_errors_match(cpu, kwargs):
    from accel import risk_numpy
    args = dict(forward_or_spot=[100.0, 100.0, 100.0], strike=100.0, t=1.0, r=0.0, vol=0.5, is_call=True) | kwargs
    ref = outcome(lambda: accel.greeks(**args, backend=cpu).price)
    assert isinstance(ref, str)
    forward = args.pop("forward_or_spot")
    assert outcome(lambda: risk_numpy.greeks_price(forward, **args)) == ref


def test_numpy_math_is_ported_not_called(monkeypatch):
    """accel.risk_numpy calls no library transcendental, power, floating-point reduction or SciPy
    (bits would then depend on the library), and runs with SciPy absent."""
    import ast
    import inspect
    import sys
    from accel import risk_numpy
    tree = ast.parse(inspect.getsource(risk_numpy))
    banned = {"exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "power", "float_power", "erf", "erfc", "ndtr",
              "sum", "nansum", "reduceat", "add.reduce", "dot", "einsum", "matmul", "mean", "float128", "longdouble",
              "fma", "cbrt", "hypot", "logaddexp"}
    for node in ast.walk(tree):
        assert not isinstance(node, ast.Attribute) or node.attr not in banned, node.attr
        assert not (isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Pow, ast.MatMult))), ast.dump(node)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not any(nm.split(".")[0] in ("scipy", "math", "cmath") for nm in names), names
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.special", None)
    pf, mk = one_account([CALL], [100.0], [100.0], [0.1], [0.5], [-1.0])
    assert risk_numpy.portfolio_margin(pf, mk).maintenance[0] > 0
    assert risk_numpy.greeks_price(100.0, 100.0, 0.1, 0.0, 0.5, True)[0] > 0
