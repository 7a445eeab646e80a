"""The margin between the scenario grid's moves (docs/RISK.md, "Gaps between the moves"): each gap's
bound covers the book's loss at every move inside it, it adds nothing to a book whose positions all
move one way, and every backend and the NumPy model give it the same bits."""
from __future__ import annotations

import numpy as np
import pytest

from accel import risk_numpy
from accel.risk import CALL, FUTURE, INVERSE, PUT, MarginParams, Marks, Portfolio, portfolio_margin

KINDS = (CALL, PUT, FUTURE, CALL | INVERSE, PUT | INVERSE, FUTURE | INVERSE)


def hedged_books(rng, accounts, instruments=40, kinds=KINDS):
    """Accounts of 2-6 positions of both signs over instruments near the index (strikes within
    10%, expiries from minutes to a year, the expired ones included): books whose legs offset."""
    index = 60_000.0
    kind = rng.choice(kinds, instruments).astype(np.uint8)
    expiry = np.where(rng.random(instruments) < 0.3, rng.choice([0.0, 1e-5, 1e-4], instruments),
                      rng.uniform(0.0, 1.0, instruments))
    marks = Marks(index=index, rate=0.0, forward=index * np.exp(rng.normal(0, 0.003, instruments)),
                  strike=np.round(index * (1 + rng.uniform(-0.1, 0.1, instruments)), -2),
                  expiry=expiry, vol=rng.uniform(0.2, 1.5, instruments), kind=kind)
    counts = rng.integers(2, 7, accounts)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    n = int(offsets[-1])
    inst = np.concatenate([rng.choice(instruments, c, replace=False) for c in counts])
    size = rng.choice([-1.0, 1.0], n) * np.round(rng.uniform(1, 100, n))
    size = np.where(kind[inst] & FUTURE & INVERSE, size * 1000.0, size)  # inverse futures: USD of notional
    return Portfolio(offsets=offsets, instrument=inst, size=size), marks


def losses_at(pf, mk, move):
    """Every account's loss at one move of the index, in each vol state (up, same, down)."""
    return risk_numpy.scenario_losses(pf, mk, MarginParams(moves=(move,), extended_moves=()))


@pytest.mark.parametrize("seed", range(3))
def test_a_gap_bounds_the_loss_at_every_move_inside_it(seed):
    rng = np.random.default_rng(seed)
    pf, mk = hedged_books(rng, 400)
    p = MarginParams()
    loss = risk_numpy.scenario_losses(pf, mk, p)
    n, first_gap = len(p.moves), 3 * len(p.moves) + len(p.extended_moves)
    above_grid = 0
    for k in range(n - 1):
        a, b = p.moves[k], p.moves[k + 1]
        inside = np.max([losses_at(pf, mk, a + (b - a) * j / 16) for j in range(1, 16)], axis=0)  # (3, accounts)
        for v in range(3):
            bound = loss[first_gap + v * (n - 1) + k]
            grid = np.maximum(loss[v * n + k], loss[v * n + k + 1])
            assert (inside[v] <= bound + 1e-9 * np.abs(bound) + 1e-6).all(), (a, b, v)
            above_grid += int((inside[v] > grid + 1e-6).sum())
    assert above_grid > 30  # the books do lose between the moves more than at them: the bound is needed


def test_books_whose_positions_move_one_way_pay_only_their_endpoints():
    """Long calls, short puts, long futures (and the mirror): every position gains as the index
    rises, so a gap's bound is its worse endpoint's loss (bound 2, a tangent, may come out a rounding
    below it, never above) and the margin is the grid's."""
    rng = np.random.default_rng(7)
    up = (CALL, PUT, FUTURE, CALL | INVERSE, PUT | INVERSE, FUTURE | INVERSE)
    pf, mk = hedged_books(rng, 300, kinds=up)
    rising = np.where(mk.kind[pf.instrument] & (CALL | FUTURE), 1.0, -1.0)
    for sign in (1.0, -1.0):
        one_way = Portfolio(offsets=pf.offsets, instrument=pf.instrument, size=sign * rising * np.abs(pf.size))
        p = MarginParams()
        loss = risk_numpy.scenario_losses(one_way, mk, p)
        n, first_gap = len(p.moves), 3 * len(p.moves) + len(p.extended_moves)
        for v in range(3):
            for k in range(n - 1):
                grid = np.maximum(loss[v * n + k], loss[v * n + k + 1])
                gap = loss[first_gap + v * (n - 1) + k]
                assert (gap <= grid).all() and (gap >= grid - 1e-12 * np.abs(grid) - 1e-6).all()
        res = risk_numpy.portfolio_margin(one_way, mk, p)
        assert (res.worst < first_gap).all()


def test_gaps_identical_on_every_backend_and_in_numpy(backends):
    rng = np.random.default_rng(17)
    pf, mk = hedged_books(rng, 2_000)
    p = MarginParams()
    first_gap = 3 * len(p.moves) + len(p.extended_moves)
    ref = risk_numpy.portfolio_margin(pf, mk, p)
    assert (ref.worst >= first_gap).sum() > 200  # many books' worst case is a gap
    for b in backends:
        got = portfolio_margin(pf, mk, p, backend=b)
        for x, y in zip(ref, got):
            assert x.tobytes() == y.tobytes(), b.name
    odd = MarginParams(moves=(0.1, -0.05, 0.0, 0.02, -0.2))  # any order: gaps join array neighbours
    ref = risk_numpy.portfolio_margin(pf, mk, odd)
    for b in backends:
        assert all(x.tobytes() == y.tobytes() for x, y in zip(ref, portfolio_margin(pf, mk, odd, backend=b)))


def test_one_move_has_no_gap_and_16_moves_have_45(backends):
    rng = np.random.default_rng(3)
    pf, mk = hedged_books(rng, 200)
    for moves in ((0.0,), tuple(np.linspace(-0.3, 0.3, 16))):
        p = MarginParams(moves=moves)
        assert p.n_scenarios == 3 * len(moves) + len(p.extended_moves) + 3 * (len(moves) - 1)
        loss = risk_numpy.scenario_losses(pf, mk, p)
        assert loss.shape == (p.n_scenarios, 200)
        ref = risk_numpy.portfolio_margin(pf, mk, p)
        assert (ref.worst < p.n_scenarios).all()
        for b in backends:
            assert all(x.tobytes() == y.tobytes() for x, y in zip(ref, portfolio_margin(pf, mk, p, backend=b)))
