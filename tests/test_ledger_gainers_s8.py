"""Step 6's gainers (docs/CLEARING.md, step 6) under a fresh review of this morning's rule
(1dbb3f6, 6177db0): attacks by accounts whose owner also holds the mark's bankrupt books.

A. Found: a gainer weighed the gross gain of the sides that gained (contracts x gain, summed over
   the gaining sides only), so a bystander hedged on the same underlying paid as if it had gained
   what only one leg of its book gained. In the chain search's seed 14710 shape (the expiry of
   the call at 90,000), a bystander H long 1 call and short 1 future (both from an honest rich
   R, at the mark) lost 1,240 USD at this mark, yet weighed the call's 28,760 and paid 6,059 USD
   of the attackers' loss; R (short the call, long the future: net +1,240) paid 6,320; the
   attackers' accounts together ended 12,377 USD ahead of their deposits (their positions are
   all among themselves: honest clearing leaves them where they began). Fixed: a gainer weighs
   its net gain at this mark over the underlying's series in the asset (held at the mark's
   start), and pays at most that; one that lost on the whole pays nothing there.
"""
import pytest

from consensus.apps.clearing import Clearing
from tests.test_clearing_properties import DAY, O, T0, USD
from tests.test_ledger_money_s7 import _eq, _no_fund
from tests.test_ledger_money_s8 import OPEN_SIDE_SHAPES
from tests.test_ledger_scale_s6 import OPTIONS, Reference, _fresh, _inject, _state, _traded

HEDGES = {"long call, short future": ((1, "H"), (3, "R")), "long future, short call": ((3, "H"), (1, "R"))}


class _Watched(Clearing):
    """Records what step 6's gainers paid at each mark (pools.paid)."""

    def mark(self, *a, **kw):
        self.open_paid = {}
        super().mark(*a, **kw)

    def _drain_open(self, cascade):
        super()._drain_open(cascade)
        self.open_paid = {a: dict(p) for a, p in cascade.pools.paid.items()}


def _hedged(cls, name: str, hedge: str):
    """The chain-search shape name (the attackers' accounts 0.., all trading among themselves), a
    cash-only bystander B, and a hedged pair: H (50,000 USD) and R (1,000,000 USD), traded at the
    mark: H long one series and short the other, R the opposite. Then the expiry of the call."""
    deposits, trades, index = OPEN_SIDE_SHAPES[name]
    c = _fresh(cls)
    _no_fund(c)
    ks = [bytes([0x10 + i]) * 32 for i in range(len(deposits))]
    h, r, b = b"\xd1" * 32, b"\xdf" * 32, b"\xee" * 32
    for k, d in zip(ks, deposits):
        _inject(c, k, {"USD": d * USD})
    for k, d in ((h, 50_000), (r, 1_000_000), (b, 1_000_000)):
        _inject(c, k, {"USD": d * USD})
    for buyer, seller, series, n in trades:
        _traded(c, ks[buyer], ks[seller], series, n)
    for series, longer in HEDGES[hedge]:
        _traded(c, *((h, r) if longer == "H" else (r, h)), series, 1)
    before = dict(c.marks["BTC"].values)
    snap = {k: dict(c.accounts[k].positions) for k in (h, r)}
    e0 = {k: _eq(c, k) for k in ks + [h, r, b]}
    supply = dict(c.supply)
    c.mark("BTC", index, {i: 0.7 for i in OPTIONS["BTC"] if i != 1}, 2, T0 + 2 * DAY + 1, O[:2])
    after = {i: c.fixings.get(i, c.marks["BTC"].values.get(i)) for i in before}
    net = {k: sum(p * (after[i] - before[i]) for i, p in snap[k].items() if c.series[i].asset == "USD")
           for k in (h, r)}
    return c, ks, (h, r, b), net, e0, supply


@pytest.mark.parametrize("hedge", sorted(HEDGES))
@pytest.mark.parametrize("name", sorted(OPEN_SIDE_SHAPES))
def test_a_hedged_bystander_pays_step_6_at_most_its_net_gain_at_the_mark(name, hedge):
    """A: whatever the chain-search shape and whichever leg H is long, step 6's charge takes from
    H and R at most what each gained at this mark on the whole (net over its series of the
    underlying; nothing from the one that lost), checked against the positions before the mark
    and the series' values before and after it; the cash-only B pays nothing; invariants, supply,
    and the same state as the Reference. At 6177db0, seed 14710 (long call, short future): H, net
    -1,240 USD, paid 6,059 to step 6; R, net +1,240, paid 6,320."""
    out = []
    for cls in (_Watched, Reference):
        c, ks, (h, r, b), net, e0, supply = _hedged(cls, name, hedge)
        assert c.violations() == [] and c.supply == supply
        assert c.accounts[b].collateral["USD"] == 1_000_000 * USD
        assert net[h] == -net[r] != 0
        if cls is _Watched:
            paid = c.open_paid.get("USD", {})
            for k in (h, r):
                assert 0 <= paid.get(k, 0) <= max(net[k], 0), (k.hex()[:2], paid.get(k, 0), net[k])
        out.append(_state(c))
    assert out[0] == out[1]


def test_the_hedged_bystanders_of_seed_14710_no_longer_fund_the_attackers():
    """A, the figures: seed 14710 with H long the call and short the future. At 6177db0 step 6
    took 6,059 USD from H and 6,320 from R, and the attackers' accounts ended 12,377 USD above
    their deposits. Now H (a net loser) pays step 6 nothing, R at most its 1,240 of net gain, and
    the attackers keep less than 1,240 + 1 USD of their bystanders' money (what R's net gain
    paid instead of them); step 6 still charged someone (the check is not vacuous)."""
    c, ks, (h, r, b), net, e0, _ = _hedged(_Watched, "seed 14710: the side's tapped holder carries it to the "
                                                    "settled side", "long call, short future")
    paid = c.open_paid.get("USD", {})
    assert sum(paid.values()) > 0
    assert paid.get(h, 0) == 0 and paid.get(r, 0) <= net[r] == 1_239_94934628
    ahead = sum(_eq(c, k) - e0[k] for k in ks)
    assert ahead <= net[r] + USD, ahead / USD


@pytest.mark.parametrize("hedge", sorted(HEDGES))
def test_a_settled_sides_holder_pays_at_most_its_part_when_the_other_holders_are_tapped_out(hedge):
    """B: seed 9951 with the hedged pair: attacker 2 wrote the call to attacker 4 and cannot pay
    its 57,420 USD; its loss is owed to the call's long side, where 4 (liquidated at the expiry,
    the fixing spent on its futures, whose gain the attackers' longs 1 and 7 took) holds 3 and the
    bystander holding one call (H, or R in the other hedge) 1. At 6177db0 and e069dd3 the side's
    charge shared 4's part out to the bystander: H paid 48,760 USD, its whole equity, and 8,660
    more as a carrier (R, in the other hedge, 57,420); the attackers' accounts, trading only among
    themselves, ended 57,796 USD above their deposits at e069dd3 (64,334 at 6177db0). Now the bystander pays its part, a quarter (to the quantum), and 4's
    part goes to the own weights of 4's liquidation (1 and 7); the attackers keep at most that
    quarter (what pro-rata sharing of a side always costs its holders) and what step 6 took of
    the pair's net gain (1,240 USD at most)."""
    name = "seed 9951: the side's holders were closed by other liquidations"
    out = []
    for cls in (Clearing, Reference):
        c, ks, (h, r, b), net, e0, supply = _hedged(cls, name, hedge)
        assert c.violations() == [] and c.supply == supply
        holder = h if HEDGES[hedge][0][0] == 1 else r  # who holds the long call beside attacker 4
        (writer,) = [x for x in c.liquidations if x.account == ks[2]]
        part = writer.socialized // 4
        paid = e0[holder] + net[holder] - _eq(c, holder)
        assert part - 1 <= paid <= part + 1, (paid / USD, part / USD)
        assert _eq(c, h) > 0
        gained = sum(max(net[k], 0) for k in (h, r))  # step 6 may take the pair's net gain (A)
        assert sum(_eq(c, k) - e0[k] for k in ks) <= part + gained + 1
        out.append(_state(c))
    assert out[0] == out[1]


def _pairs_market(cls, seed: int):
    """C: a chain-search market (the attackers' accounts trading among themselves, as
    /tmp/t1/fuzz2.py) beside 1-3 hedged bystanders, each long one BTC series and short another
    against one rich R, and a BTC rally or expiry; returns the ledger after the mark (or the
    refusal)."""
    import random
    from consensus.apps.clearing import Rejected
    rng = random.Random(seed)
    n = rng.randint(3, 8)
    deps = [rng.choice([1, 100, 1000, 3000, 10000]) for _ in range(n)] + [rng.choice([20_000, 200_000])]
    trades = [(i + 1, i, rng.choice([1, 2, 3, 3, 6]), rng.randint(1, 3)) for i in range(n)]
    for _ in range(rng.randint(0, 4)):
        a, b = rng.sample(range(n + 1), 2)
        trades.append((a, b, rng.choice([1, 2, 3, 6]), rng.randint(1, 2)))
    pairs = [(rng.choice([1, 2, 3]), rng.choice([1, 2, 3]), rng.choice([1, 2])) for _ in range(rng.randint(1, 3))]
    index = rng.choice([70_000.0, 90_000.0, 40_000.0, 50_000.0, 120_000.0])
    expiry = rng.random() < 0.6
    c = _fresh(cls)
    _no_fund(c)
    ks = [bytes([0x10 + i]) * 32 for i in range(n + 1)]
    r, hs = b"\xdf" * 32, [bytes([0xD0 + j]) * 32 for j in range(len(pairs))]
    for k, d in zip(ks, deps):
        _inject(c, k, {"USD": d * USD})
    _inject(c, r, {"USD": 1_000_000 * USD})
    for h in hs:
        _inject(c, h, {"USD": 50_000 * USD})
    for a, b, s, q in trades:
        _traded(c, ks[a], ks[b], s, q)
    for h, (s1, s2, q) in zip(hs, pairs):
        _traded(c, h, r, s1, q)
        if s2 != s1:
            _traded(c, r, h, s2, q)
    supply = dict(c.supply)
    try:
        if expiry:
            c.mark("BTC", index, {i: 0.7 for i in OPTIONS["BTC"] if i not in (1, 2)}, 2, T0 + 2 * DAY + 1, O[:2])
        else:
            c.mark("BTC", index, {i: 0.7 for i in OPTIONS["BTC"]}, 2, T0 + 120, O[:2])
    except Rejected as e:
        return str(e)
    assert c.supply == supply and c.violations() == []
    for a in c.accounts.values():  # no debt beside nothing a later mark could liquidate
        assert all(q >= 0 or any(c.series[i].asset == asset for i in a.positions) for asset, q in a.collateral.items())
    return _state(c)


# seeds whose settled sides had a holder short of its part: carrying it (20, 31, 37, 58) or
# liquidated, its part to its record's own weights (15, 23, 29, 30)
@pytest.mark.parametrize("seed", [15, 20, 23, 29, 30, 31, 37, 58, 158, 188] + list(range(100, 130)))
def test_markets_with_hedged_bystanders_reach_the_reference_state(seed):
    """C: the fast code and the Reference (step 6 by net gain; a settled side's holders each at
    most their part) reach the same state, invariants, supply, no uncollectable debt."""
    assert _pairs_market(Clearing, seed) == _pairs_market(Reference, seed)


def test_a_settled_sides_tapped_holder_with_nothing_to_carry_sends_its_part_to_step_6():
    """B, the rule by hand on both implementations: a settled side owed 40,000 USD, held by T (3
    contracts, no cash, no position, not a settlement payer: no carrier, not liquidated) and the
    bystander G (1 contract, 50,000 USD). G pays its part, 10,000; T's 30,000 goes to step 6
    (the mark's gainers first), not to G (at e069dd3 G paid all 40,000)."""
    from consensus.apps.clearing import _Cascade, _Pools
    from tests.test_ledger_scale_s6 import _RefPools
    out = []
    for cls in (Clearing, Reference):
        c = _fresh(cls)
        _no_fund(c)
        t, g = b"\x01" * 32, b"\x02" * 32
        _inject(c, t, {"USD": 0})
        _inject(c, g, {"USD": 50_000 * USD})
        side = (1, 1)
        if cls is Clearing:
            pools = _Pools()  # (no move at this mark: every contract weighs 1)
            pools.sides[side] = ("USD", {t: 3, g: 1}, 7)
        else:
            pools = _RefPools()
            pools.sides[side] = ("USD", {t: 21, g: 7})
        pools.amount[side] = 40_000 * USD
        cascade = _Cascade()
        cascade.pools, cascade.done, cascade.settled = pools, set(), set()
        c._drain(cascade, sides=True)
        assert c.accounts[g].collateral["USD"] == 40_000 * USD
        assert pools.amount.get(("open", "USD")) == 30_000 * USD and not cascade
        out.append(_state(c))
    assert out[0] == out[1]
