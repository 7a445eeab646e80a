"""Columnar execution (consensus/apps/clearing_columns.py) against the sequential engine it
replaces: the same blocks executed both ways, over long random and adversarial streams, must give
the same verdicts (with the same reasons), the same state (every leaf, the globals, the
liquidations, the state root), and proposers built both ways the same blocks. The sequential
engine is the columnar one with apply_run declining every run, which is the path a run takes
whenever one of its transactions is refused."""
import contextlib
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from consensus.apps import clearing_app
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing import MAX_POSITION, Breakers, Rejected
from consensus.apps.clearing_app import ClearingApp
from consensus.apps.clearing_columns import _native, _ptr
from consensus.verify import Verifier
from tests.test_clearing_properties import (EXAMPLES, JUMPS, K, OPTIONS, SERIES, USD, USERS, Stream, blocks, genesis,
                                            signed)

DENSE_EXAMPLES = max(EXAMPLES // 2, 10)


@contextlib.contextmanager
def sequential():
    """The engine without columnar runs: every transaction applied alone."""
    real = clearing_app.apply_run
    clearing_app.apply_run = lambda state, txs: False
    try:
        yield
    finally:
        clearing_app.apply_run = real


def outcome(app: ClearingApp, parent, txs: list) -> tuple:
    try:
        state, _ = app._run(parent, txs)
    except Rejected as exc:
        return ("refused", str(exc))
    c = state.clearing
    return ("ok", c.root(), c.leaves(), c.globals_leaves(), c.liquidations, sorted(c.holders.items()))


def both(app, parent, txs) -> tuple:
    columnar = outcome(app, parent, txs)
    with sequential():
        one_by_one = outcome(app, parent, txs)
    assert columnar == one_by_one
    return columnar


def funded_genesis(breakers=None):
    """The property tests' market with its five users registered and funded, and first marks."""
    c = genesis()
    if breakers is not None:
        c.breakers = breakers
    for i, k in enumerate(K):
        c.register(k)
        c.deposit(k, 0, "USD", (50_000, 200_000, 1_000_000, 5_000_000, 30_000)[i] * USD)
        c.deposit(k, 1, "BTC", USD * (i + 1))
    for und, index in (("BTC", 60_000.0), ("ETH", 3_000.0)):
        c.mark(und, index, {i: 0.7 for i in OPTIONS[und]}, 1, 1_800_000_060, [bytes(o) for o in _oracles()])
    return c


def _oracles():
    from tests.test_clearing_properties import O
    return O[:2]


# dense blocks: few accounts, many transactions each, so runs carry many legs per account and
# book, with the refusals an attacker would try mixed in
user = st.integers(0, len(USERS) - 1)
skew = st.sampled_from([0] * 40 + [-1, 1])
dense_trade = st.tuples(st.just("trade"), user, user, st.sampled_from([s.id for s in SERIES]),
                        st.one_of(st.integers(1, 5), st.integers(1, 5), st.sampled_from([10**9, MAX_POSITION])),
                        st.floats(0.5, 1.5), skew).filter(lambda o: o[1] != o[2])
dense_deposit = st.tuples(st.just("deposit"), user, st.sampled_from(["USD", "BTC"]),
                          st.integers(1, 10**6).map(lambda x: x * USD), skew)
dense_withdraw = st.tuples(st.just("withdraw"), user, st.sampled_from(["USD", "BTC"]),
                           st.one_of(st.integers(1, 10**5).map(lambda x: x * USD), st.just("all")), skew)
dense_mark = st.tuples(st.just("mark"), st.sampled_from(["BTC", "ETH"]),
                       st.one_of(st.floats(0.97, 1.03), st.sampled_from(JUMPS)), st.just(1), st.just(600),
                       st.just(True), st.just(2))
dense_top_up = st.tuples(st.just("top_up"), user, st.sampled_from(["USD", "BTC"]),
                         st.integers(1, 10**4).map(lambda x: x * USD), skew)
dense_op = st.one_of(*[dense_trade] * 8, dense_deposit, dense_withdraw, dense_mark, dense_top_up)
dense_blocks = st.lists(st.lists(dense_op, min_size=20, max_size=150), min_size=1, max_size=6)


def run_stream(stream, app):
    """Each block of the stream executed both ways on top of the last state both accepted."""
    parent = app.genesis
    accepted = 0
    for ops in stream:
        maker = Stream(parent.clearing)
        txs = [ctx.decode(maker.tx(o)[0]) for o in ops if o[0] != "garbage"]
        result = both(app, parent, txs)
        if result[0] == "ok":
            accepted += 1
            state, _ = app._run(parent, txs)
            state.root = state.clearing.root()
            parent = state
    return accepted


@settings(max_examples=DENSE_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(dense_blocks)
def test_dense_blocks_execute_the_same_columnar_and_one_by_one(stream):
    run_stream(stream, ClearingApp(Verifier("accel", "cpu"), funded_genesis()))


@settings(max_examples=DENSE_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(blocks)
def test_adversarial_blocks_execute_the_same_columnar_and_one_by_one(stream):
    """The property tests' streams (wire limits, bad nonces, extreme marks, crashes, expiries)."""
    run_stream(stream, ClearingApp(Verifier("accel", "cpu"), funded_genesis()))


@settings(max_examples=DENSE_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(dense_blocks)
def test_proposers_build_the_same_blocks_columnar_and_one_by_one(stream):
    """Two proposers with the same mempool, one of them without columnar runs: the same block and
    state root, the same refusals (evicted with the same reasons), block after block."""
    apps = [ClearingApp(Verifier("accel", "cpu"), funded_genesis(), max_txs=64) for _ in range(2)]
    parents = [a.genesis for a in apps]
    for ops in stream:
        maker = Stream(parents[0].clearing)
        items = [signed(*maker.tx(o)) for o in ops]
        built = []
        for j, app in enumerate(apps):
            app.submit_many(items)
            with sequential() if j else contextlib.nullcontext():
                txs, state = app.propose(parents[j], set())
            built.append((txs.bodies.data.tobytes(), txs.bodies.offsets.tobytes(), state.root, dict(app.refused)))
            parents[j] = state
            from tests.test_clearing_properties import block_of
            app.committed(block_of(txs, bytes(32), state.root, app), state)
        assert built[0] == built[1]


def test_a_run_that_breaks_a_rule_anywhere_is_refused_for_the_same_reason():
    """One valid run of 400 trades among three accounts, then the same run with one transaction
    broken at a random place (a nonce skipped, a withdrawal of more than the cash, a trade with
    itself, an unlisted series): refused both ways with the same reason; the valid run accepted
    both ways with the same state."""
    rng = random.Random(7)
    app = ClearingApp(Verifier("accel", "cpu"), funded_genesis())
    maker = Stream(app.genesis.clearing)
    ops = [("trade", *rng.sample(range(1, 4), 2), rng.choice([5, 6, 7]), rng.randint(1, 4), 1.0, 0)
           for _ in range(400)]
    good = [ctx.decode(maker.tx(o)[0]) for o in ops]
    assert both(app, app.genesis, good)[0] == "ok"
    for breakage in range(16):
        txs = list(good)
        at = rng.randrange(len(txs))
        buyer, nonce, seller, seller_nonce, series, size, price = txs[at].fields
        if breakage % 4 == 0:
            txs[at] = ctx.Tx(ctx.TRADE, (buyer, nonce + 1, seller, seller_nonce, series, size, price), (buyer, seller))
        elif breakage % 4 == 1:
            txs.insert(at, ctx.Tx(ctx.WITHDRAW, (buyer, nonce, "USD", 10**17), (buyer,)))
        elif breakage % 4 == 2:
            txs[at] = ctx.Tx(ctx.TRADE, (buyer, nonce, buyer, nonce, series, size, price), (buyer, buyer))
        else:
            txs[at] = ctx.Tx(ctx.TRADE, (buyer, nonce, seller, seller_nonce, 99, size, price), (buyer, seller))
        result = both(app, app.genesis, txs)
        assert result[0] == "refused" and result[1].startswith(f"transaction {at}:"), result


def test_a_position_past_its_limit_inside_a_run_is_refused_for_the_same_reason():
    """Eleven trades of 10^9 contracts at price 0 between two accounts: the tenth reaches
    MAX_POSITION, the eleventh passes it and is refused, both ways."""
    app = ClearingApp(Verifier("accel", "cpu"), funded_genesis())
    nonce = [a.nonce for a in (app.genesis.clearing.accounts[K[0]], app.genesis.clearing.accounts[K[1]])]
    txs = [ctx.Tx(ctx.TRADE, (K[0], nonce[0] + j, K[1], nonce[1] + j, 3, 10**9, 0), (K[0], K[1])) for j in range(11)]
    assert both(app, app.genesis, txs[:10])[0] == "refused"  # below margin at the block's end
    result = both(app, app.genesis, txs)
    assert result[0] == "refused" and result[1].startswith("transaction 10:") and "past a position" in result[1]


def test_the_native_run_applies_legs_in_order_and_names_the_first_that_fails():
    """native/ledger.c on three accounts: nonces in order, a withdrawal may empty the cash but not
    overdraw it, a position may reach the limit but not pass it, a reduce-only leg must shrink;
    0 when every leg applies, else 1 + the first leg that does not."""
    def run(row, nonce, flow, withdraw, line, size, shrink, cash=(10, 0, 5), held=(0, 3)):
        cols = (np.array([0, 0, 7], np.int64), np.array(cash, np.int64).reshape(3, 1), np.array(held, np.int64))
        arrays = [np.array(x, np.int64) for x in (row, nonce, [0] * len(row), flow)]
        arrays += [np.array(withdraw, np.uint8), np.array(line, np.int64), np.array(size, np.int64),
                   np.array(shrink, np.uint8)]
        failed = _native().av_ledger_run(*(_ptr(a) for a in arrays), 1, 10, 2**62, *(_ptr(c) for c in cols),
                                         len(row))
        return failed, [c.ravel().tolist() for c in cols]
    # a trade between rows 0 (buys 4 at 2) and 1, then row 1 withdraws all it got, row 2 deposits
    ok = run([0, 1, 1, 2], [0, 0, 1, 7], [-8, 8, -8, 1], [0, 0, 1, 0], [0, 1, -1, -1], [4, -4, 0, 0], [0] * 4)
    assert ok == (0, [[1, 2, 8], [2, 0, 6], [4, -1]])
    assert run([0, 0], [0, 0], [1, 1], [0, 0], [-1, -1], [0, 0], [0, 0])[0] == 2        # a nonce used twice
    assert run([2], [7], [-6], [1], [-1], [0], [0])[0] == 1                              # overdrawn
    assert run([0], [0], [0], [0], [0], [10], [0])[0] == 0                               # at the limit
    assert run([0, 0], [0, 1], [0, 0], [0, 0], [0, 0], [10, 1], [0, 0])[0] == 2          # past it
    assert run([1], [0], [0], [0], [1], [-3], [1])[0] == 0                               # shrinks to 0
    assert run([1], [0], [0], [0], [1], [-4], [1])[0] == 1                               # flips: not a shrink
    assert run([1], [0], [0], [0], [1], [1], [1])[0] == 1                                # grows
    assert run([0], [0], [1], [0], [-1], [0], [0], cash=(2**62 - 1, 0, 0))[0] == 1       # leaves int64's exact range


def test_a_balance_beyond_int64_takes_the_one_by_one_path_with_the_same_result():
    """An account holding more than 2^62 quanta cannot live in int64 columns: its runs are applied
    one by one, and the state is the same."""
    c = funded_genesis()
    c.supply["USD"] += 2**63
    k = K[3]
    c._mut(k).collateral["USD"] += 2**63
    app = ClearingApp(Verifier("accel", "cpu"), c)
    maker = Stream(app.genesis.clearing)
    ops = [("trade", 3, 1, 3, 1, 1.0, 0), ("deposit", 3, "USD", 5 * USD, 0), ("trade", 0, 3, 3, 2, 1.0, 0)]
    txs = [ctx.decode(maker.tx(o)[0]) for o in ops]
    assert both(app, app.genesis, txs)[0] == "ok"


def test_a_run_reads_the_same_legs_from_its_bodies_as_from_its_fields():
    """Legs are read from the wire bodies as records; a transaction built from its fields (no body)
    is encoded again. A mixed run (trades beside deposits and withdrawals) gives the same legs both
    ways, and a run holding another operation is declined."""
    from consensus.apps.clearing_columns import _legs
    state = funded_genesis().snapshot()
    state.defer = True
    maker = Stream(state)
    ops = [("trade", 0, 1, SERIES[0].id, 3, 1.0, 0), ("deposit", 2, "BTC", 5 * USD, 0),
           ("trade", 3, 4, SERIES[-1].id, 2, 1.1, 0), ("withdraw", 1, "USD", 7 * USD, 0),
           ("trade", 4, 0, SERIES[1].id, 1, 0.9, 0)]
    decoded = [ctx.decode(maker.tx(o)[0]) for o in ops]
    built = [ctx.Tx(t.op, t.fields, t.signers) for t in decoded]
    a, b = _legs(state, state.columns(), decoded), _legs(state, state.columns(), built)
    assert a is not None and b is not None and len(a.kind) == 8
    for name in ("key_bytes", "nonce", "asset", "flow", "series", "size", "kind", "shrink"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.kind.tolist() == [ctx.TRADE] * 2 + [ctx.DEPOSIT] + [ctx.TRADE] * 2 + [ctx.WITHDRAW] + [ctx.TRADE] * 2
    assert a.key_bytes[0].tobytes() == K[0] and a.key_bytes[1].tobytes() == K[1] and a.flow[2] == 5 * USD
    register = ctx.decode(ctx.register(bytes(range(32))))
    assert _legs(state, state.columns(), decoded[:2] + [register]) is None


def test_written_back_accounts_carry_the_leaves_their_encoding_gives():
    """Write-back encodes the changed accounts' state-tree leaves in array passes; each must be
    byte for byte Clearing._leaf of the account written (negative cash, several assets, opened and
    closed positions), and a later one-by-one change of the account drops it."""
    app = ClearingApp(Verifier("accel", "cpu"), funded_genesis())
    state = app.genesis.clearing.snapshot()
    state.defer = True
    maker = Stream(state)
    ops = [("trade", 0, 1, SERIES[0].id, 3, 1.0, 0), ("trade", 1, 0, SERIES[0].id, 3, 1.0, 0),
           ("trade", 2, 3, SERIES[-1].id, 2, 1.1, 0), ("withdraw", 4, "BTC", USD, 0),
           ("deposit", 1, "USD", 3 * USD, 0), ("trade", 3, 4, SERIES[1].id, 5, 0.8, 0)]
    txs = [ctx.decode(maker.tx(o)[0]) for o in ops]
    assert clearing_app.apply_run(state, txs)
    cols = state.columns()
    cols.cash[0, cols.asset_col["BTC"]] = -7  # a negative balance encodes as a sign-extended i128
    cols.changed[0] = True
    state._flush()
    assert set(state._leaves) == set(K)
    for k, leaf in state._leaves.items():
        assert leaf == state._leaf(k, state.accounts[k]), k.hex()
    state.deposit(K[2], state.accounts[K[2]].nonce, "USD", 1)
    assert K[2] not in state._leaves and K[0] in state._leaves
    root = state.state_root(Verifier("accel", "cpu").sha256_rows)
    fresh = state.snapshot()
    fresh.dirty, fresh._leaves, fresh.tree = set(fresh.accounts), {}, type(fresh.tree)()
    assert fresh.state_root(Verifier("accel", "cpu").sha256_rows) == root
