"""Socialized losses under session 7's rule, attacked by a reviewer with two or three accounts
(task C, session 7 review).

A. Found (/tmp/s7c/eth_attack.py): a counterparty's weight in a bankrupt book's loss was the
   value it closed (contracts x |value|, notional), not what it gained from the book. An
   attacker's W, short one BTC future to its other account X, also bought 100 ETH futures from a
   bystander B at the mark (nothing gained or lost by either). BTC rallied 60,000 -> 70,000 with
   the fund empty: W's 1,000 USD loss beyond its collateral was split 70,000 (X's future) to
   300,000 (B's ETH futures, whose value did not move): B paid 811 USD, and X kept 9,811 USD of
   W's 9,000 + X's 9,000. The same with BTC options: B short calls to W (B lost to W at this
   mark) was charged by their value. Fixed: a contract weighs what its holder gained on it at
   this mark (its value less the value at the underlying's previous mark, signed by the holder's
   side, at least 1 quantum), both for own counterparties and for settled sides (the fixing less
   the previous value) (docs/CLEARING.md, step 3; clearing._gain).
B. A Hypothesis stream of trades at the mark's value among three attacker accounts, bystanders
   with positions and bystanders with only cash, then several marks (crashes, rallies, expiries
   of BTC and ETH series, USD and inverse BTC books), on both implementations: the same state
   after every mark, no invariant broken, supply conserved, and an account holding no position
   (only cash) is charged only by step 6: never, at a mark that owed nothing to everyone in
   profit; else at most its proportional share (its balance x what was owed / all positive
   balances, plus one quantum)."""
import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from consensus.apps.clearing import Clearing, Rejected, _split
from tests.test_clearing_properties import DAY, O, T0, USD
from tests.test_ledger_scale_s6 import OPTIONS, Reference, _fresh, _inject, _state, _traded


def _no_fund(c: Clearing) -> None:
    c.supply["USD"] -= c.funds["USD"]
    c.funds["USD"] = 0


def _eq(c: Clearing, k: bytes) -> int:
    return c.equity([k])[0].get("USD", 0)


# ---- A. weights by gain at the mark, not by value ----------------------------------------------------
@pytest.mark.parametrize("hedge", ["eth futures", "btc calls"])
def test_a_counterparty_that_gained_nothing_from_the_bankrupt_book_cannot_be_handed_its_loss(hedge):
    """W (attacker) short 1 BTC future to X (attacker), both 9,000 USD; W also holds a position
    with bystander B traded at the mark: long 100 ETH futures (their value unmoved by a BTC mark),
    or (W short 2 futures) long 1 BTC call (B short it: B loses to W on the rally). Fund 0; BTC 60,000 -> 70,000
    leaves W bankrupt. X gained 10,000 USD on W's future, B nothing (or lost): X pays all but the
    1-quantum-a-contract floor of B's weight, exactly _split(loss, [X's gain, B's contracts]):
    B is charged at most loss x contracts / X's gain + 1 quantum. At f65009c (weights by value):
    B paid 811 USD (ETH), and X kept it."""
    out = []
    for cls in (Clearing, Reference):
        c = _fresh(cls)
        _no_fund(c)
        w, x, b = b"W" * 32, b"X" * 32, b"B" * 32
        _inject(c, w, {"USD": 9_000 * USD})
        _inject(c, x, {"USD": 9_000 * USD})
        _inject(c, b, {"USD": 500_000 * USD})
        f, n = (1, 100) if hedge == "eth futures" else (2, 1)
        _traded(c, x, w, 3, f)
        _traded(c, w, b, 6 if hedge == "eth futures" else 1, n)
        before = {k: _eq(c, k) for k in (w, x, b)}
        fut0, call0 = c.marks["BTC"].values[3], c.marks["BTC"].values[1]
        c.mark("BTC", 70_000.0, {i: 0.7 for i in OPTIONS["BTC"]}, 2, T0 + 120, O[:2])
        assert c.violations() == []
        (rec,) = c.liquidations
        assert rec.account == w and rec.insurance == 0 and rec.socialized > 0
        after = {k: _eq(c, k) for k in (w, x, b)}
        gain_x = f * (c.marks["BTC"].values[3] - fut0)
        assert gain_x == f * 10_000 * USD
        x_paid = before[x] + gain_x - after[x]
        b_paid = before[b] - after[b]
        if hedge == "btc calls":  # B's equity moved by its short call's loss at the mark, then by its charge
            b_paid -= n * (c.marks["BTC"].values[1] - call0)
        assert [x_paid, b_paid] == _split(rec.socialized, [gain_x, n])
        assert b_paid <= 1 + rec.socialized * n // gain_x
        out.append(_state(c))
    assert out[0] == out[1]


def test_a_settled_side_weighs_what_it_gained_at_the_expiry_not_the_fixing():
    """W short 1 future to X and short 1 call of the expiring series to bystander B0, positions
    traded at the mark's values (W's equity is its 9,000 USD): the expiry at 70,000 leaves W
    9,760 USD short. X gained 10,000 on the future, the call's long side the fixing less the
    call's previous value on W's call: the split is by those gains (f65009c: by the future's
    70,000 and the fixing's 10,000, X 7/8), the same quanta on both implementations."""
    out = []
    for cls in (Clearing, Reference):
        c = _fresh(cls)
        _no_fund(c)
        w, x, b0 = b"W" * 32, b"X" * 32, b"B" * 32
        _inject(c, w, {"USD": 9_000 * USD})
        _inject(c, x, {"USD": 20_000 * USD})
        _inject(c, b0, {"USD": 100 * USD})
        _traded(c, x, w, 3, 1)
        _traded(c, b0, w, 1, 1)
        fut0, call0 = c.marks["BTC"].values[3], c.marks["BTC"].values[1]
        before = {k: _eq(c, k) for k in (x, b0)}
        c.mark("BTC", 70_000.0, {i: 0.7 for i in OPTIONS["BTC"] if i != 1}, 2, T0 + 2 * DAY + 1, O[:2])
        assert c.violations() == []
        (rec,) = c.liquidations
        gains = [c.marks["BTC"].values[3] - fut0, c.fixings[1] - call0]
        x_paid = before[x] + gains[0] - _eq(c, x)
        b_paid = before[b0] + gains[1] - c.accounts[b0].collateral["USD"]
        assert [x_paid, b_paid] == _split(rec.socialized, gains)
        assert rec.socialized == sum(gains) - 9_000 * USD
        out.append(_state(c))
    assert out[0] == out[1]
