"""Vols moving apart (review s19, ledger; docs/CLEARING.md, "Vols moving apart"): a book long one
option and short another of the same underlying (a delta-hedged risk reversal), opened at exactly
its initial margin, its other side the attacker's second account. An oracle mark in which each vol
stays inside its own scenario range but they move apart (OTM put vol to its vol-up state, OTM call
vol to its vol-down state: a skew steepening) took the book past its margin when the kernel shocked
every vol of a book the same way, and the fund paid the counterparty 107,103 USD. Each position is
now in its own worst vol state at every move (kernels/margin.h, rk_state)."""
import pytest
from nacl.signing import SigningKey

from accel.risk import CALL, FUTURE, PUT
from consensus.apps.clearing import Clearing, Series
from tests.test_clearing_properties import O
from tests.test_ledger_deleverage_s18 import at_initial_margin

USD = 10**8
T0 = 1_800_000_000
DAY = 86_400
S0 = 60_000.0
A, B = (bytes(SigningKey(bytes([i]) * 32).verify_key) for i in (61, 62))
SHOCK30 = 1.0  # (30 / DTE) ** p at 30 days to expiry


def market() -> Clearing:
    c = Clearing(O, quorum=2, backend="cpu", insurance={"USD": 10**6 * USD})
    c.list_series(Series(1, "BTC", CALL, 63_000.0, T0 + 30 * DAY))
    c.list_series(Series(2, "BTC", PUT, 57_000.0, T0 + 30 * DAY))
    c.list_series(Series(3, "BTC", FUTURE, 0.0, T0 + 90 * DAY))
    c.mark("BTC", S0, {1: 0.6, 2: 0.6}, 1, T0, O[:2])
    for k in (A, B):
        c.register(k)
    # A: long 100 calls (63k), short 60 puts (57k), short 60 futures; B the other side of each.
    # Both deposit exactly their initial margin.
    c.need = at_initial_margin(c, [A, B], [(A, B, 1, 100), (B, A, 2, 60), (B, A, 3, 60)])
    return c


@pytest.mark.parametrize("twist", [1.0, 0.75, 0.6])
def test_vols_moving_apart_within_their_ranges_do_not_take_the_fund(twist):
    c = market()
    fund = c.funds["USD"]
    up = 0.6 * (1 + 0.5 * SHOCK30 * twist)      # the put's vol-up state (twist 1: exactly it)
    down = 0.6 * (1 - 0.25 * SHOCK30 * twist)   # the call's vol-down state
    c.begin_block()
    c.mark("BTC", S0 * 1.01, {1: down, 2: up}, 2, T0 + 600, O[:2])  # 10 minutes later, +1%
    assert c.violations() == []
    paid = fund - c.funds["USD"]
    assert paid == 0, (f"the fund paid {paid / USD:,.2f} USD (A deposited {c.need[A] / USD:,.2f}) at a mark "
                       f"10 min later, index +1%, call vol 0.6->{down:.3f}, put vol 0.6->{up:.3f}")
