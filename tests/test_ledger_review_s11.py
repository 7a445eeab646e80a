"""The eleventh session's ledger review.

Fixed: an inverse future's value per USD of notional is rounded to whole coin quanta while its
margin is computed on the unrounded value; at a high index one quantum is most of a contract's
value, so a dip across a rounding boundary took a pair at initial margin past its collateral and
the fund paid (margins now add a quantum a contract).

Left (strict xfails, docs/CLEARING.md "What the rule does not stop: a mark held back"): a
proposer chooses which pending oracle marks its block carries, so the books of its block are
margined at a mark it knows is stale. Its accounts trading (or withdrawing) at the stale mark, at
initial margin, have the fund pay what a move past the margin takes beyond their collateral, while
their other side keeps the gain. Two rules were reverted after their reviews (2364be8: the trades'
counterparties guarantee them; 5cc0dbe: net gains on the trades since the mark pay first): both
were bypassed, and both charged honest accounts what they never gained (docs/CLEARING.md). Since
the twelfth session validators vote for no block leaving out a mark they have held since before
the previous proposal (tests/test_mark_watch.py); these tests apply the blocks directly, so they pin
what the ledger's rules alone allow, and a mark that arrives within a view is still that."""

import pytest
from nacl.signing import SigningKey

from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing_app import ClearingApp
from consensus.verify import Verifier
from tests.test_clearing_columns import funded_genesis
from tests.test_clearing_properties import O, T0, USD

BTC_FUT, CALL = 3, 1
A, B = (bytes(SigningKey(bytes([i]) * 32).verify_key) for i in (201, 202))
LEFT = ("left (docs/CLEARING.md 'What the rule does not stop: a mark held back'): the fund pays what a move "
        "past the margin of books margined at a stale mark takes beyond their collateral")


pytestmark = pytest.mark.usefixtures("quiet_logs")


def _run(app, parent, txs):
    """A block of txs on parent, the invariants kept."""
    state, _ = app._run(parent, txs)
    state.root = state.clearing.root()
    assert state.clearing.violations() == []
    return state


def _mark(state, index: float, **extra):
    last = state.clearing.marks["BTC"]
    return ctx.decode(ctx.mark("BTC", index, last.sequence + 1, extra.get("timestamp", last.timestamp + 600),
                               extra.get("vols", {1: 0.7, 2: 0.7, 4: 0.7}), O[:2]))


def _initial_margin(app, n: int) -> int:
    probe = app.genesis.clearing.snapshot()
    for k in (A, B):
        probe.register(k)
        probe.deposit(k, 0, "USD", 10**6 * USD)
    probe.trade(B, 1, A, 1, BTC_FUT, n, 60_000 * USD)
    return probe.margins([B], {"USD"})["USD"][0][0]


def _setup(cash: dict) -> list:
    return ([ctx.Tx(ctx.REGISTER, (k,), (k,)) for k in cash]
            + [ctx.Tx(ctx.DEPOSIT, (k, 0, "USD", q), (k,)) for k, q in cash.items()])


@pytest.mark.xfail(strict=True, reason=LEFT)
def test_a_pair_trading_at_a_withheld_crash_mark_does_not_take_the_fund():
    """As found: the oracles' -29% BTC mark held back from block h, A and B deposit the initial
    margin of 5 futures at the stale mark (62,401 USD each) and B buys them from A; the mark, next
    block, liquidates B, 24,599 USD past its collateral: the fund pays 20,000 (all it has) and A,
    withdrawing, takes out 144,802 USD of the pair's 124,802. (Then the fund floor keeps every USD
    series reduce-only for good.)"""
    app = ClearingApp(Verifier("accel", "cpu"), funded_genesis())
    fund, deposit = app.genesis.clearing.funds["USD"], _initial_margin(app, 5) + USD
    state = _run(app, app.genesis, _setup({A: deposit, B: deposit})
                 + [ctx.Tx(ctx.TRADE, (B, 1, A, 1, BTC_FUT, 5, 60_000 * USD), (B, A))])
    state = _run(app, state, [_mark(state, 60_000.0 * 0.71)])
    c = state.clearing
    assert c.funds["USD"] == fund and c.accounts[A].collateral["USD"] <= 2 * deposit


@pytest.mark.xfail(strict=True, reason=LEFT)
def test_a_write_and_its_withheld_expiry_do_not_take_the_fund():
    """As found: B writes 10 BTC calls to A at the stale mark, each at its initial margin; the expiry
    mark (+25%), held back a block, settles them: the fund pays 5,516.33 USD, the pair's gain."""
    app = ClearingApp(Verifier("accel", "cpu"), funded_genesis())
    g = app.genesis.clearing
    fund, n, price = g.funds["USD"], 10, g.marks["BTC"].values[CALL]
    probe = g.snapshot()
    for k in (A, B):
        probe.register(k)
        probe.deposit(k, 0, "USD", 10**7 * USD)
    probe.trade(A, 1, B, 1, CALL, n, price)
    (eb, ea), m = probe.equity([B, A]), probe.margins([B, A], {"USD"})["USD"][0]
    need = {A: max(m[1] - (ea["USD"] - 10**7 * USD), 1), B: max(m[0] - (eb["USD"] - 10**7 * USD), 1)}
    state = _run(app, app.genesis, _setup(need) + [ctx.Tx(ctx.TRADE, (A, 1, B, 1, CALL, n, price), (A, B))])
    state = _run(app, state, [_mark(state, 75_000.0, vols={2: 0.7, 4: 0.7}, timestamp=g.series[CALL].expiry)])
    c = state.clearing
    assert CALL in c.fixings and c.funds["USD"] == fund


@pytest.mark.xfail(strict=True, reason=LEFT)
def test_a_withdrawal_at_a_withheld_mark_does_not_take_the_fund():
    """A and B hold 5 futures (B short) since a mark, well collateralized; the +29% mark held back,
    B withdraws down to its initial margin at the stale mark; the next block's rally takes B past
    its collateral and the fund pays while A keeps its gain (no trade: nothing to guarantee)."""
    app = ClearingApp(Verifier("accel", "cpu"), funded_genesis())
    fund, im = app.genesis.clearing.funds["USD"], _initial_margin(app, 5)
    big = 3 * im
    state = _run(app, app.genesis, _setup({A: big, B: big})
                 + [ctx.Tx(ctx.TRADE, (A, 1, B, 1, BTC_FUT, 5, 60_000 * USD), (A, B))])
    state = _run(app, state, [_mark(state, 60_000.0)])
    state = _run(app, state, [ctx.Tx(ctx.WITHDRAW, (B, 2, "USD", big - im - USD), (B,))])
    state = _run(app, state, [_mark(state, 60_000.0 * 1.29)])
    assert state.clearing.funds["USD"] == fund


def test_a_dip_across_a_rounding_boundary_costs_the_fund_nothing():
    """An inverse future's value per USD of notional is rounded to whole coin quanta, its margin
    computed on the unrounded value: at an index of 66.67M USD (1e8/F = 1.4999, inside INDEX_RANGE)
    a 0.013% dip moved it from -1 to -2 quanta, every long's equity by 1 quantum per USD, and a pair
    at initial margin of 10^9 USD had the BTC fund pay 0.82 BTC, the index rising costing them
    nothing. Margins now add a quantum a contract."""
    from accel.risk import FUTURE
    from consensus.apps.clearing import Clearing, Series
    fund = 10 * USD
    c = Clearing(O, quorum=2, backend="cpu", insurance={"USD": 0, "BTC": fund})
    c.list_series(Series(5, "BTC", FUTURE, 0.0, T0 + 30 * 86_400, inverse=True))
    f0, f1 = 1e8 / 1.4999, 1e8 / 1.5001
    c.mark("BTC", f0, {}, 1, T0, O[:2])
    c.register(A), c.register(B)
    size, price = 10**9, int(round(f0 * USD))
    probe = c.snapshot()  # each side's deposit: its initial margin after the trade
    probe.deposit(A, 0, "BTC", 10**6 * USD), probe.deposit(B, 0, "BTC", 10**6 * USD)
    probe.trade(B, 1, A, 1, 5, size, price)
    (eb, ea), m = probe.equity([B, A]), probe.margins([B, A], {"BTC"})["BTC"][0]
    need = {B: max(m[0] - (eb["BTC"] - 10**6 * USD), 1), A: max(m[1] - (ea["BTC"] - 10**6 * USD), 1)}
    c.defer = True
    c.begin_block()
    c.deposit(B, 0, "BTC", need[B]), c.deposit(A, 0, "BTC", need[A])
    c.trade(B, 1, A, 1, 5, size, price)
    assert c.end_of_block() == []
    c.defer = False
    c.begin_block()
    c.mark("BTC", f1, {}, 2, T0 + 600, O[:2])
    assert c.violations() == [] and c.funds["BTC"] == fund
    assert sum(e.get("BTC", 0) for e in c.equity([A, B])) <= need[A] + need[B]


def test_a_top_up_lifts_the_fund_floor_and_is_the_same_both_ways():
    """Nothing paid into a fund: one the losses took below its floor (here a crash past the margin
    of books a mark had margined) kept every series of its asset reduce-only for good. A top-up (operation 7) pays
    free collateral into the fund, columnar and one by one alike; conservation holds (the fund is
    in the supply's sum), and a top-up past the account's cash is refused like a withdrawal."""
    from consensus.apps.clearing import Rejected
    from tests.test_clearing_columns_attacks import Txs, both
    from tests.test_clearing_properties import K
    app = ClearingApp(Verifier("accel", "cpu"), funded_genesis())
    deposit = _initial_margin(app, 5) + USD
    state = _run(app, app.genesis, _setup({A: deposit, B: deposit})
                 + [ctx.Tx(ctx.TRADE, (B, 1, A, 1, BTC_FUT, 5, 60_000 * USD), (B, A))])
    state = _run(app, state, [_mark(state, 60_000.0)])
    state = _run(app, state, [_mark(state, 60_000.0 * 0.71)])
    c = state.clearing
    assert c.funds["USD"] == 0 and "below its floor" in c._reduce_only(c.series[BTC_FUT])
    t = Txs(c)
    honest = [t.trade(2, 3, BTC_FUT, 1, 42_600 * USD)]
    assert both(app, state, honest)[0] == "refused"
    cash = c.accounts[K[0]].collateral["USD"]
    top = ctx.Tx(ctx.TOP_UP, (K[0], c.accounts[K[0]].nonce, "USD", 10_000 * USD), (K[0],))
    result = both(app, state, [top] + honest)
    assert result[0] == "ok", result
    after = _run(app, state, [top] + honest).clearing
    assert after.funds["USD"] == 10_000 * USD and after.accounts[K[0]].collateral["USD"] == cash - 10_000 * USD
    assert not after._reduce_only(after.series[BTC_FUT]) and after.violations() == []
    too_much = ctx.Tx(ctx.TOP_UP, (K[0], c.accounts[K[0]].nonce, "USD", cash + 1), (K[0],))
    assert both(app, state, [too_much])[0] == "refused"
    assert ctx.decode(ctx.top_up(K[0], 3, "USD", 5)) == ctx.Tx(ctx.TOP_UP, (K[0], 3, "USD", 5), (K[0],),
                                                               ctx.top_up(K[0], 3, "USD", 5))
    c2 = state.clearing.snapshot()
    with pytest.raises(Rejected, match="top-up of"):
        c2.top_up(K[0], c.accounts[K[0]].nonce, "USD", cash + 1)
