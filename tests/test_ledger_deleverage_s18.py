"""Auto-deleveraging that breaks a counterparty's hedge (review s18). A liquidation closes the
bankrupt book against opposite positions at the mark: the counterparty's equity is unchanged, but
one leg of its hedge may go, leaving the other naked on a few USD. Nothing looked at that book
before the next mark of its underlying, whose move was then the fund's.

B (a bystander, or the attacker's third account) is long 100 deep-in-the-money BTC calls (strike
30,000, 30 days) bought from L and short 100 BTC futures sold to W: a delta-flat book whose
initial margin is 5.92 USD. L and W each post exactly their initial margin. A +5% mark liquidates
L with equity to spare; step 1 closed L's calls against B, the only long, and left B short 100
futures with 2.63 USD of equity against a maintenance of 1,008,000 USD. The next mark, +0.5%, had
the fund pay 31,497 USD (+5%: 314,997), all of it to W, and a fall cost the attacker nothing.

Now the mark liquidates, at the same mark, every book its closures leave below maintenance
(Clearing._deleveraged_short): B's own liquidation costs nobody anything, and the fund pays 0.
Each block is checked by a software-only validator (same state root, invariants kept)."""
import pytest
from nacl.signing import SigningKey

from accel.risk import CALL, FUTURE
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing import Clearing, Series
from consensus.apps.clearing_app import ClearingApp
from consensus.verify import Verifier
from tests.test_clearing_properties import O, ORACLES, chain

USD = 10**8
T0 = 1_800_000_000
EXP = T0 + 30 * 86_400
L, B, W = (bytes(SigningKey(bytes([i]) * 32).verify_key) for i in (41, 42, 43))
S0 = 60_000.0


def at_initial_margin(c: Clearing, keys: list[bytes], trades: list[tuple]) -> dict[bytes, int]:
    """Registered keys' books opened in one block by trades (buyer, seller, series, size) at the
    series' values, each account depositing exactly the initial margin its book needs (found on a
    copy funded far beyond it): {key: its deposit}."""
    v, big, probe = {i: x for m in c.marks.values() for i, x in m.values.items()}, 10**9 * USD, c.snapshot()
    need = {}
    for state, deposit in ((probe, lambda k: big), (c, lambda k: need[k])):
        state.defer = True
        state.begin_block()
        nonce = dict.fromkeys(keys, 1)
        for k in keys:
            state.deposit(k, 0, "USD", deposit(k))
        for b, s, i, size in trades:
            state.trade(b, nonce[b], s, nonce[s], i, size, v[i])
            nonce[b] += 1
            nonce[s] += 1
        if state is probe:
            eqs, m = probe.equity(keys), probe.margins(keys, {"USD"})["USD"][0]
            need = {k: max(int(m[i]) - (eqs[i]["USD"] - big), 1) for i, k in enumerate(keys)}
    assert c.end_of_block() == []
    c.defer = False
    return need


def opened(eth: bool = False) -> Clearing:
    """B long 100 deep-in-the-money calls from L, short 100 futures to W (eth: and L long 2,000 ETH
    futures from W), every book at its initial margin."""
    c = Clearing(O, quorum=2, backend="cpu", insurance={"USD": 10**6 * USD})
    c.list_series(Series(1, "BTC", CALL, 30_000.0, EXP))
    c.list_series(Series(3, "BTC", FUTURE, 0.0, EXP + 90 * 86_400))
    if eth:
        c.list_series(Series(5, "ETH", FUTURE, 0.0, EXP + 90 * 86_400))
        c.mark("ETH", 3_000.0, {}, 1, T0, O[:2])
    c.mark("BTC", S0, {1: 0.6}, 1, T0, O[:2])
    for k in (L, B, W):
        c.register(k)
    c.need = at_initial_margin(c, [L, B, W], [(B, L, 1, 100), (W, B, 3, 100)] + [(L, W, 5, 2000)] * eth)
    return c


def calendar() -> Clearing:
    """B long 100 BTC futures expiring in 30 days from L, short 100 expiring in 120 days to W."""
    c = Clearing(O, quorum=2, backend="cpu", insurance={"USD": 10**6 * USD})
    c.list_series(Series(2, "BTC", FUTURE, 0.0, EXP))
    c.list_series(Series(3, "BTC", FUTURE, 0.0, EXP + 90 * 86_400))
    c.mark("BTC", S0, {}, 1, T0, O[:2])
    for k in (L, B, W):
        c.register(k)
    at_initial_margin(c, [L, B, W], [(B, L, 2, 100), (W, B, 3, 100)])
    return c


def network(build):
    """A proposer (C fallback) and a software-only validator, each on a ledger of its own from
    build() (no cache shared), the supply and the fund."""
    c = build()
    supply = {"USD": sum(a.collateral.get("USD", 0) for a in c.accounts.values()) + c.funds["USD"]}
    return ClearingApp(Verifier("accel", "cpu"), c), ClearingApp(Verifier("software"), build()), supply, c.funds["USD"]


def mark(app, index, seq, ts, underlying="BTC", vols=None):
    body = ctx.mark(underlying, index, seq, ts, {1: 0.6} if vols is None else vols, O[:2])
    assert app.submit_many([(body, [k.sign(body).signature for k in ORACLES[:2]])]) == [""]


@pytest.mark.parametrize("second", [0.005, 0.05])
def test_a_counterparty_whose_hedge_deleveraging_closed_does_not_take_the_fund(second):
    assert opened().need[B] < 6 * USD  # the hedged book's initial margin
    app, validator, supply, fund = network(opened)
    mark(app, S0 * 1.05, 2, T0 + 600)
    _, state, vstate = chain(app, validator, app.genesis, validator.genesis, supply)
    after = state.clearing
    assert [l.account for l in after.liquidations] == [L, B]        # B too, at the same mark
    assert [(l.insurance, l.socialized) for l in after.liquidations] == [(0, 0), (0, 0)]
    assert after.accounts[B].positions == {} and after.accounts[B].collateral["USD"] > 0
    mark(app, S0 * 1.05 * (1 + second), 3, T0 + 1200)
    _, state2, _ = chain(app, validator, state, vstate, supply)
    paid = fund - state2.clearing.funds["USD"]
    assert paid == 0, f"the fund paid {paid / USD} USD at an honest +{second:.1%} mark"


def test_an_eth_mark_that_breaks_a_btc_hedge_liquidates_it_too():
    """The same hedge; L's USD book also holds 2,000 ETH futures bought from W at initial margin. An
    ETH mark 12% down liquidates L's whole USD book (its BTC calls too, at the BTC mark's value):
    B's BTC hedge is broken by a mark of another underlying, with the BTC index unchanged. The next
    BTC mark, 0.5% up, had the fund pay 29,994 USD; now the ETH mark liquidates B too."""
    app, validator, supply, fund = network(lambda: opened(eth=True))
    mark(app, 2_640.0, 2, T0 + 600, "ETH", {})
    _, state, vstate = chain(app, validator, app.genesis, validator.genesis, supply)
    assert [l.account for l in state.clearing.liquidations] == [L, B]  # B's BTC book, by an ETH mark
    assert state.clearing.funds["USD"] == fund
    assert state.clearing.accounts[B].positions == {}
    mark(app, S0 * 1.005, 2, T0 + 1200)
    _, state2, _ = chain(app, validator, state, vstate, supply)
    paid = fund - state2.clearing.funds["USD"]
    assert paid == 0, f"the fund paid {paid / USD} USD at an honest +0.5% BTC mark"


def test_a_calendar_futures_spread_whose_leg_deleveraging_closed_does_not_take_the_fund():
    """An ordinary futures calendar spread: B long 100 BTC futures expiring in 30 days (bought
    from L), short 100 expiring in 120 days (sold to W); its margin is the offsetting-futures
    contingency, 1% (B posts 1.3%, 78,000 USD for 6M USD a leg). L, naked short at initial margin
    (20.8%), is liquidated by a +12% mark with equity to spare; step 1 closes L's short against
    B's long, the only one. B, short 6.72M USD of futures with 78,000 USD of equity, was not
    looked at until the next mark, and +2% there had the fund pay 56,400 USD."""
    app, validator, supply, fund = network(calendar)
    mark(app, S0 * 1.12, 2, T0 + 600, vols={})
    _, state, vstate = chain(app, validator, app.genesis, validator.genesis, supply)
    assert [l.account for l in state.clearing.liquidations] == [L, B]
    assert state.clearing.funds["USD"] == fund
    assert state.clearing.accounts[B].positions == {}
    mark(app, S0 * 1.12 * 1.02, 3, T0 + 1200, vols={})
    _, state2, _ = chain(app, validator, state, vstate, supply)
    paid = fund - state2.clearing.funds["USD"]
    assert paid == 0, f"the fund paid {paid / USD} USD at an honest +2% mark"


def _chain(n: int):
    """n books each hedged against the next, every one at its initial margin: L short 100
    deep-in-the-money calls to B1, B1 short 100 futures to B2, B2 short 100 calls to B3, ...; a
    +5% mark. (Clearing, margin calls the mark made, its liquidations.)"""
    keys = sorted(bytes(SigningKey(i.to_bytes(4, "big") * 8).verify_key) for i in range(1000, 1000 + n + 2))
    lead, last, chain = keys[-1], keys[-2], keys[:n]
    c = Clearing(O, quorum=2, backend="cpu", insurance={"USD": 10**6 * USD})
    c.list_series(Series(1, "BTC", CALL, 30_000.0, EXP))
    c.list_series(Series(3, "BTC", FUTURE, 0.0, EXP + 90 * 86_400))
    c.mark("BTC", S0, {1: 0.6}, 1, T0, O[:2])
    for k in keys:
        c.register(k)
    at_initial_margin(c, keys, [(chain[0], lead, 1, 100)] + [(chain[j + 1] if j + 1 < n else last, chain[j],
                                                              3 if j % 2 == 0 else 1, 100) for j in range(n)])
    c.begin_block()
    calls, real = [0], c._margins

    def counted(*a, **kw):
        calls[0] += 1
        return real(*a, **kw)
    c._margins = counted
    fund = c.funds["USD"]
    c.mark("BTC", S0 * 1.05, {1: 0.6}, 2, T0 + 600, O[:2])
    assert c.funds["USD"] == fund and c.violations() == []
    return calls[0], len(c.liquidations)


def test_a_chain_of_hedges_costs_one_margin_call_a_link():
    """Each closure of the chain breaks the next hedge: the mark liquidates the chain one link a
    round, each round one margin call over the books just closed against. Linear (2,000 links
    take a mark 0.62 s on the C fallback of an idle 2-vCPU VM, as many liquidations in one round
    0.026 s: docs/CLEARING.md gives the bound), never more than a call a liquidation."""
    for n in (25, 100):
        calls, liquidated = _chain(n)
        assert liquidated == n + 1
        assert calls <= liquidated + 2, (n, calls, liquidated)
