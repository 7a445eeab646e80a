"""The eleventh session's ledger review: a proposer holding a signed oracle mark back for one block
(each test failed before the fix, Clearing._guarantee).

ShortBooks stops a trade and the mark that liquidates it from sharing a block, but a proposer
chooses which pending marks go into its block. Block h (its own, the oracles' -29% BTC mark left
out): its accounts A and B deposit the initial margin of 5 BTC futures at the stale mark (62,401
USD each), B buying them from A. Block h + 1 (any proposer): the mark liquidates B against A, B's
loss is 87,000 USD against its 62,401, and the fund paid the 24,599 beyond, as far as it went
(20,000), before A, which kept its whole gain: A withdrew 144,802 USD against the pair's 124,802,
the whole fund, and under the breakers' fund floor every USD series stayed reduce-only for good.
A write and its expiry the same way: 5,516.33 USD at a +25% expiry. Now the counterparties of a
book's trades since the underlying's last mark pay what it owes first, each up to what it gained
at this mark on the contracts traded with it (docs/CLEARING.md, step 2)."""
import logging

import pytest
from nacl.signing import SigningKey

from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing_app import ClearingApp
from consensus.verify import Verifier
from tests.test_clearing_columns import funded_genesis
from tests.test_clearing_properties import O, USD

BTC_FUT, CALL = 3, 1
A, B = (bytes(SigningKey(bytes([i]) * 32).verify_key) for i in (201, 202))
C = bytes(SigningKey(bytes([203]) * 32).verify_key)


@pytest.fixture(autouse=True)
def _quiet():
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


def _run(app, parent, txs):
    """A block of txs on parent, both ways (validated as the proposer built it), invariants kept."""
    state, _ = app._run(parent, txs)
    state.root = state.clearing.root()
    assert state.clearing.violations() == []
    return state


def _opened(app, n: int, cash: dict) -> tuple:
    """Block h: A, B (and C) registered with cash, B long n BTC futures from A at the stale mark."""
    txs = [ctx.Tx(ctx.REGISTER, (k,), (k,)) for k in cash]
    txs += [ctx.Tx(ctx.DEPOSIT, (k, 0, "USD", q), (k,)) for k, q in cash.items()]
    txs.append(ctx.Tx(ctx.TRADE, (B, 1, A, 1, BTC_FUT, n, 60_000 * USD), (B, A)))
    return _run(app, app.genesis, txs)


def _crash(app, state, index: float, **extra):
    last = state.clearing.marks["BTC"]
    mark = ctx.decode(ctx.mark("BTC", index, last.sequence + 1, extra.get("timestamp", last.timestamp + 600),
                               extra.get("vols", {1: 0.7, 2: 0.7, 4: 0.7}), O[:2]))
    return _run(app, state, [mark])


def _initial_margin(app, n: int) -> int:
    probe = app.genesis.clearing.snapshot()
    for k in (A, B):
        probe.register(k)
        probe.deposit(k, 0, "USD", 10**6 * USD)
    probe.trade(B, 1, A, 1, BTC_FUT, n, 60_000 * USD)
    return probe.margins([B], {"USD"})["USD"][0][0]


@pytest.mark.parametrize("move", [0.71, 0.78, 0.75])
def test_a_pair_trading_at_a_withheld_mark_cannot_take_the_fund(move):
    app = ClearingApp(Verifier("accel", "cpu"), funded_genesis())
    fund = app.genesis.clearing.funds["USD"]
    deposit = _initial_margin(app, 5) + USD
    state = _crash(app, _opened(app, 5, {A: deposit, B: deposit}), 60_000.0 * move)
    c = state.clearing
    (liq,) = c.liquidations
    assert liq.account == B and liq.insurance == 0 and c.funds["USD"] == fund
    out = c.accounts[A].collateral["USD"]
    state = _run(app, state, [ctx.Tx(ctx.WITHDRAW, (A, 2, "USD", out), (A,))])
    assert out <= 2 * deposit  # (the pair took out at most what it put in: 124,802 USD of 144,802 before)
    assert not state.clearing._reduce_only(state.clearing.series[BTC_FUT])


def test_the_guarantee_is_the_trades_counterpartys_not_the_largest_opposite_holders():
    """Auto-deleveraging closes B against the largest short, bystander Y (20 contracts held since
    the last mark), not A: before the fix Y then carried B's loss beyond the fund (step 3, its own
    weight) while A kept its gain. Now A, B's counterparty since the last mark, pays it, and Y keeps
    all it gained: 20 x the move."""
    app = ClearingApp(Verifier("accel", "cpu"), funded_genesis())
    deposit = _initial_margin(app, 5) + USD
    Y, Z = C, bytes(SigningKey(bytes([204]) * 32).verify_key)
    txs = [ctx.Tx(ctx.REGISTER, (k,), (k,)) for k in (Y, Z)]
    txs += [ctx.Tx(ctx.DEPOSIT, (k, 0, "USD", 10**7 * USD), (k,)) for k in (Y, Z)]
    state = _run(app, app.genesis, txs + [ctx.Tx(ctx.TRADE, (Z, 1, Y, 1, BTC_FUT, 20, 60_000 * USD), (Z, Y))])
    state = _crash(app, state, 60_000.0)  # a mark at the same index: Y's short is no longer fresh
    c = state.clearing
    txs = [ctx.Tx(ctx.REGISTER, (k,), (k,)) for k in (A, B)]
    txs += [ctx.Tx(ctx.DEPOSIT, (k, 0, "USD", deposit), (k,)) for k in (A, B)]
    state = _run(app, state, txs + [ctx.Tx(ctx.TRADE, (B, 1, A, 1, BTC_FUT, 5, 60_000 * USD), (B, A))])
    y_before, fund = state.clearing.equity([Y])[0]["USD"], state.clearing.funds["USD"]
    state = _crash(app, state, 42_600.0)
    c = state.clearing
    move = state.clearing.marks["BTC"].values[BTC_FUT] - 60_000 * USD  # a long contract's, at this mark
    (liq,) = c.liquidations
    assert liq.account == B and liq.insurance == 0 and c.funds["USD"] == fund
    assert c.accounts[Y].positions[BTC_FUT] == -15  # B's 5 closed against Y's short
    assert c.equity([Y])[0]["USD"] - y_before == 20 * -move  # its whole gain, nothing charged
    assert c.equity([A])[0]["USD"] <= 2 * deposit  # the pair (A still short 5): at most what it put in


def test_a_write_and_its_withheld_expiry_cannot_take_the_fund():
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
    txs = [ctx.Tx(ctx.REGISTER, (k,), (k,)) for k in need] + [ctx.Tx(ctx.DEPOSIT, (k, 0, "USD", q), (k,))
                                                             for k, q in need.items()]
    state = _run(app, app.genesis, txs + [ctx.Tx(ctx.TRADE, (A, 1, B, 1, CALL, n, price), (A, B))])
    state = _crash(app, state, 75_000.0, vols={2: 0.7, 4: 0.7}, timestamp=state.clearing.series[CALL].expiry)
    c = state.clearing
    assert CALL in c.fixings and c.funds["USD"] == fund
    assert sum(e.get("USD", 0) for e in c.equity([A, B])) <= need[A] + need[B]  # 5,516.33 USD ahead before


def test_the_trades_kept_since_a_mark_are_bounded_alike_both_ways(monkeypatch):
    """Clearing.fresh is state (its root hashes it every block): an underlying left without marks
    while trading went on would grow it without end. Past MAX_FRESH trades since its last mark
    its series wait for the next one, columnar and one by one alike; a mark clears them."""
    from consensus.apps import clearing, clearing_columns
    from tests.test_clearing_columns_attacks import Txs, both
    from tests.test_clearing_properties import K
    for module in (clearing, clearing_columns):
        monkeypatch.setattr(module, "MAX_FRESH", 3)
    app = ClearingApp(Verifier("accel", "cpu"), funded_genesis())
    t = Txs(app.genesis.clearing)
    txs = [t.trade(0, 1, BTC_FUT, 1, 60_000 * USD) for _ in range(4)]
    result = both(app, app.genesis, txs)
    assert result[0] == "refused" and result[1].startswith("transaction 3:") and "3 trades since its last" in result[1]
    state = _run(app, app.genesis, txs[:3])
    assert state.clearing.fresh_count == {"BTC": 3}
    t = Txs(state.clearing)
    state = _run(app, state, [t.mark("BTC", 60_000.0), t.trade(0, 1, BTC_FUT, 1, 60_000 * USD)])
    assert state.clearing.fresh_count == {"BTC": 1}
    assert K[0] in {bytes(r["buyer"]) for chunk in state.clearing.fresh["BTC"] for r in chunk}
