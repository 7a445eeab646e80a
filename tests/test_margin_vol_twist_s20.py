"""Vols moving apart (docs/RISK.md, "Portfolio margin"; review s19): a mark may move each option's
vol anywhere inside its own range, from its vol-down state to its vol-up state, independently of
the others. The maintenance margin covers the loss of every such mark whose index move stays inside
the standard grid: each position is taken in its own worst vol state (down for a long option, up
for a short one) at every move and in every gap (kernels/margin.h, rk_state), so a long option's
vega no longer nets against a short one's."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from accel import risk_numpy
from accel.risk import CALL, FUTURE, INVERSE, PUT, MarginParams, Marks, Portfolio, portfolio_margin
from tests.test_margin_gaps_s17 import hedged_books


def vol_range(mk: Marks, p: MarginParams) -> tuple[np.ndarray, np.ndarray]:
    """Each instrument's vol-down and vol-up states, written out from docs/RISK.md."""
    dte = np.maximum(mk.expiry * p.days_per_year, 1.0)
    shock = (p.vol_ref_days / dte) ** np.where(dte < p.vol_ref_days, p.vol_exponent, p.vol_exponent_long)
    up = np.maximum(mk.vol * (1 + p.vol_up * shock), p.vol_up_floor)
    down = mk.vol * np.maximum(1 - p.vol_down * shock, p.vol_down_floor)
    return down, up


def values(mk: Marks, move: float, vol: np.ndarray) -> np.ndarray:
    """Every instrument's value at the index moved by `move`, with the vols `vol` (SciPy-free: the
    kernels' own Black-76 through risk_numpy, which the backends match bit for bit)."""
    f, index = mk.forward * (1 + move), mk.index * (1 + move)
    option = (mk.kind & FUTURE) == 0
    price = np.zeros(len(f))
    if option.any():
        price[option] = risk_numpy.greeks_price(f[option], mk.strike[option], mk.expiry[option], mk.rate,
                                                vol[option], (mk.kind[option] & CALL) != 0)
    inverse = (mk.kind & INVERSE) != 0
    return np.where(option, np.where(inverse, price / index, price), np.where(inverse, -1.0 / f, f))


def book_losses(pf: Portfolio, mk: Marks, move: float, vol: np.ndarray) -> np.ndarray:
    """Each account's loss at that mark: -(sum of size * (value - value now))."""
    change = values(mk, move, vol) - values(mk, 0.0, mk.vol)
    acc = np.repeat(np.arange(len(pf.offsets) - 1), np.diff(pf.offsets))
    pnl = np.zeros(len(pf.offsets) - 1)
    np.add.at(pnl, acc, pf.size * change[pf.instrument])
    return -pnl


def covered(pf, mk, p, move, vol):
    """Accounts whose loss at the mark exceeds their maintenance margin (money), as (account, loss, margin)."""
    mm = risk_numpy.portfolio_margin(pf, mk, p).maintenance * p.tick
    loss = book_losses(pf, mk, move, vol)
    over = np.flatnonzero(loss > mm + 1e-9 * np.abs(mm) + 1e-6)
    return [(int(a), float(loss[a]), float(mm[a])) for a in over]


@pytest.mark.parametrize("seed", range(4))
def test_no_mark_inside_the_ranges_takes_more_than_the_margin(seed):
    """Random hedged books; marks that move the index anywhere in the grid (on and between its
    moves) and send each option's vol to one end of its range or the other, at random: each
    account's loss stays within its maintenance margin."""
    rng = np.random.default_rng(seed)
    pf, mk = hedged_books(rng, 400)
    p = MarginParams()
    down, up = vol_range(mk, p)
    twisted = 0
    for move in np.linspace(-0.16, 0.16, 41):
        for _ in range(6):
            vol = np.where(rng.random(len(up)) < 0.5, up, down)
            assert covered(pf, mk, p, float(move), vol) == [], (seed, move)
            twisted += 1
    assert twisted == 41 * 6


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_an_adversary_choosing_each_vol_and_the_move_is_covered(data):
    """Hypothesis picks the books' seed, the move (inside the grid) and, for each instrument, where
    in its range its vol lands: no account loses more than its maintenance margin."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    pf, mk = hedged_books(rng, 60, instruments=8)
    p = MarginParams()
    down, up = vol_range(mk, p)
    move = data.draw(st.floats(-0.16, 0.16), label="move")
    where = np.array(data.draw(st.lists(st.sampled_from([0.0, 1.0, 0.5, 0.9, 0.1]), min_size=8, max_size=8),
                               label="where in each range"))
    vol = down + where * (up - down)
    assert covered(pf, mk, p, move, vol) == []


def risk_reversal(days_put=30.0, days_call=30.0):
    """Long 100 calls struck 63k, short 60 puts struck 57k, short 60 futures: delta-hedged, long
    vega in the call and short vega in the put (the s19 ledger review's book)."""
    s = 60_000.0
    mk = Marks(index=s, rate=0.0, forward=[s, s, s], strike=[63_000.0, 57_000.0, 1.0],
               expiry=[days_call / 365, days_put / 365, 90 / 365], vol=[0.6, 0.6, 0.0], kind=[CALL, PUT, FUTURE])
    pf = Portfolio(offsets=[0, 3], instrument=[0, 1, 2], size=[100.0, -60.0, -60.0])
    return pf, mk


@pytest.mark.parametrize("days_put,days_call", [(30.0, 30.0), (7.0, 90.0), (90.0, 7.0)])
def test_a_risk_reversal_and_a_calendar_are_covered_when_their_vols_move_apart(days_put, days_call, backends):
    """The call's vol to its down state, the put's to its up state (the skew steepening that took
    107,103 USD from the fund in review s19), at every move of the grid: covered on every backend."""
    pf, mk = risk_reversal(days_put, days_call)
    p = MarginParams()
    down, up = vol_range(mk, p)
    vol = np.array([down[0], up[1], 0.0])
    ref = risk_numpy.portfolio_margin(pf, mk, p)
    for b in backends:
        assert all(x.tobytes() == y.tobytes() for x, y in zip(ref, portfolio_margin(pf, mk, p, backend=b))), b.name
    mm = ref.maintenance[0] * p.tick
    worst = max(book_losses(pf, mk, float(m), vol)[0] for m in np.linspace(-0.16, 0.16, 321))
    assert 0 < worst <= mm
    together = max(book_losses(pf, mk, float(m), v)[0] for m in np.linspace(-0.16, 0.16, 321)
                   for v in (np.array([up[0], up[1], 0.0]), np.array([down[0], down[1], 0.0])))
    assert worst > together  # the twist is what the margin must now hold: it loses more than any common shock


def test_rows_of_one_instrument_are_one_position_at_one_vol_state(backends):
    """Rows of one instrument net (docs/RISK.md): a +10 row and a -10 row of one option are no
    position, whatever its vol does, and a position split into rows is margined as the whole (to a
    rounding of the sizes' sum), on every backend and in NumPy."""
    rng = np.random.default_rng(5)
    pf, mk = hedged_books(rng, 300)
    p = MarginParams()
    whole = risk_numpy.portfolio_margin(pf, mk, p)
    # each account's rows again, each split in two (0.25 + 0.75 of it, both exact), the halves
    # interleaved with an opposite pair of another instrument that cancels
    offsets, inst, size = [0], [], []
    for a in range(len(pf.offsets) - 1):
        rows = range(pf.offsets[a], pf.offsets[a + 1])
        other = int(mk.kind.size - 1 - pf.instrument[rows[0]])
        for r in rows:
            inst += [pf.instrument[r], other, pf.instrument[r], other]
            size += [0.25 * pf.size[r], 7.0, 0.75 * pf.size[r], -7.0]
        offsets.append(len(inst))
    split = Portfolio(offsets=offsets, instrument=inst, size=size)
    got = risk_numpy.portfolio_margin(split, mk, p)
    for b in backends:
        assert all(x.tobytes() == y.tobytes() for x, y in zip(got, portfolio_margin(split, mk, p, backend=b))), b.name
    tick = p.tick
    assert (np.abs(got.maintenance - whole.maintenance) * tick <= 1e-9 * whole.maintenance * tick + 2 * tick).all()
    assert (np.abs(got.initial - whole.initial) * tick <= 1e-9 * whole.initial * tick + 2 * tick).all()


@pytest.mark.parametrize("strike,days", [(60_000.0, 30.0), (69_600.0, 1.0)])
def test_a_short_option_is_margined_in_an_up_state_at_least_its_vol_whatever_the_shock(strike, days, backends):
    """Review s20: vol_up = 0 with a shock that overflowed to infinity (vol_exponent 250, or
    vol_ref_days 1e300) made the up state NaN, priced as expired: 10 short calls margined at 60,876
    USD lost 66,795 at +16% with their vol unchanged. Such parameters are refused; the largest shock
    allowed keeps the up state at the vol, and the margin covers that mark."""
    for bad in (dict(vol_exponent=250.0), dict(vol_ref_days=1e300, vol_exponent=2.0)):
        with pytest.raises(ValueError, match="vol shock of a 1-day option"):
            MarginParams(vol_up=0.0, **bad)
    p = MarginParams(vol_up=0.0, vol_up_floor=0.0, vol_exponent=200.0, extended_moves=())  # 30^200: 1e295
    s = 60_000.0
    mk = Marks(index=s, rate=0.0, forward=[s], strike=[strike], expiry=[days / 365], vol=[0.6], kind=[CALL])
    pf = Portfolio(offsets=[0, 1], instrument=[0], size=[-10.0])
    ref = risk_numpy.portfolio_margin(pf, mk, p)
    for b in backends:
        assert all(x.tobytes() == y.tobytes() for x, y in zip(ref, portfolio_margin(pf, mk, p, backend=b))), b.name
    assert book_losses(pf, mk, 0.16, mk.vol)[0] <= ref.maintenance[0] * p.tick
