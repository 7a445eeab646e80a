"""The ledger's invariants (docs/CLEARING.md, "Invariants") over long random and adversarial
streams, with Hypothesis:

- per asset, the accounts' cash plus the insurance fund equals the funds at genesis plus every
  committed deposit minus every committed withdrawal (counted here from the committed blocks, not
  from the ledger's own bookkeeping), after every block and every transaction;
- per series, open interest sums to zero; settled series are held by nobody;
- no insurance fund is ever below zero;
- the state root kept incrementally (docs/CLEARING.md, "State root") equals the one rebuilt from
  every leaf;
- submit_many, propose and validate never raise, whatever the mempool or the block holds; every
  block a proposer builds is valid, and the validator reaches the proposer's state root.

Streams mix sane market activity (deposits, trades near the model price, marks on a random walk)
with an attacker's: unfunded accounts, sizes and prices at the wire's limits, marks at extreme
indices, out-of-order sequences and unknown underlyings, withdrawals of everything, a trade and a
crash in one block, expiries, fund exhaustion and circuit breakers. ACCEL_HYPOTHESIS_EXAMPLES sets
the number of streams of each test (default 200, under a minute on 2 cores)."""
import hashlib
import os

from hypothesis import HealthCheck, given, settings, strategies as st
from nacl.signing import SigningKey

from accel import Packed
from accel.merkle import hashlib_root, inner_hash, merkle_root
from accel.packing import pack_fixed, pack_messages
from accel.risk import CALL, FUTURE, PUT
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing import Breakers, Clearing, Rejected, Series
from consensus.apps.clearing_app import ClearingApp
from consensus.messages import QC, Block, Txs
from consensus.verify import Verifier

T0 = 1_800_000_000
DAY = 24 * 3600
USD = 10**8
USERS = [SigningKey(bytes([70 + i]) * 32) for i in range(5)]
K = [bytes(u.verify_key) for u in USERS]
ORACLES = [SigningKey(bytes([170 + i]) * 32) for i in range(3)]
O = [bytes(o.verify_key) for o in ORACLES]
SERIES = (Series(1, "BTC", CALL, 60_000.0, T0 + 2 * DAY), Series(2, "BTC", PUT, 55_000.0, T0 + 2 * DAY),
          Series(3, "BTC", FUTURE, 0.0, T0 + 30 * DAY), Series(4, "BTC", CALL, 60_000.0, T0 + 4 * 3600, inverse=True),
          Series(5, "BTC", FUTURE, 0.0, T0 + 30 * DAY, inverse=True), Series(6, "ETH", FUTURE, 0.0, T0 + 6 * 3600),
          Series(7, "ETH", PUT, 3_000.0, T0 + 3 * 3600))
OPTIONS = {"BTC": [1, 2, 4], "ETH": [7]}
START = {"BTC": 60_000.0, "ETH": 3_000.0}
GENESIS_FUNDS = {"USD": 20_000 * USD, "BTC": USD // 2}
EXAMPLES = int(os.environ.get("ACCEL_HYPOTHESIS_EXAMPLES", "200"))


def genesis() -> Clearing:
    c = Clearing(O, quorum=2, backend="cpu", insurance=dict(GENESIS_FUNDS),
                 breakers=Breakers(band=0.3, window=3, fund_floor={"USD": 5_000 * USD}))
    for s in SERIES:
        c.list_series(s)
    return c


# ---- what a stream is made of ----------------------------------------------------------------
user = st.integers(0, len(USERS) - 1)
nonce_skew = st.sampled_from([0] * 30 + [-1, 1, 2**64 - 1])
amount = st.one_of(st.integers(1, 2_000_000).map(lambda x: x * USD), st.integers(1, 2_000_000).map(lambda x: x * USD),
                   st.integers(0, 2**64 - 1),
                   st.sampled_from([10**18, 10**18 + 1, 1]))
size = st.one_of(st.integers(1, 3), st.integers(1, 3), st.integers(1, 20), st.integers(1, 2**32 - 1), st.sampled_from([10**9, 10**9 + 1]))
price_scale = st.one_of(st.floats(0.5, 1.5), st.sampled_from([0.0, 1e-9, 1e6]))
JUMPS = (0.5, 0.6, 0.8, 1.0, 1.25, 1.6, 2.0)
move = st.one_of(st.sampled_from(JUMPS), st.sampled_from(JUMPS), st.floats(0.9, 1.1))
weird_index = st.sampled_from([1e300, 5e-324, float("nan"), float("inf"), -1.0, 0.0, 1e-4, 1e8, 1.0000001e8])

deposit = st.tuples(st.just("deposit"), user, st.sampled_from(["USD", "USD", "BTC", "ETH"]), amount, nonce_skew)
withdraw = st.tuples(st.just("withdraw"), user, st.sampled_from(["USD", "BTC"]),
                     st.one_of(amount, st.just("all")), nonce_skew)
top_up = st.tuples(st.just("top_up"), user, st.sampled_from(["USD", "BTC"]), st.one_of(amount, st.just("all")), nonce_skew)
sane_trade = st.tuples(st.just("trade"), user, user, st.sampled_from([s.id for s in SERIES]), st.integers(1, 3),
                       st.floats(0.8, 1.2), st.just(0)).filter(lambda o: o[1] != o[2])
trade = st.one_of(sane_trade, sane_trade, sane_trade,
                  st.tuples(st.just("trade"), user, user, st.sampled_from([s.id for s in SERIES] + [99]), size,
                            price_scale, nonce_skew))
mark = st.tuples(st.just("mark"), st.sampled_from(["BTC", "BTC", "ETH", "DOGE"]), st.one_of(move, move, weird_index),
                 st.sampled_from([1] * 10 + [0, -1, 2**63]), st.sampled_from([60, 600, 3600, 6 * 3600] * 3 + [0, -5]),
                 st.sampled_from([True] * 5 + [False]), st.sampled_from([2] * 5 + [1, 3]))
register = st.tuples(st.just("register"), user)
garbage = st.tuples(st.just("garbage"), st.binary(max_size=80))
op = st.one_of(deposit, withdraw, trade, trade, trade, trade, mark, mark, register, garbage, top_up)
blocks = st.lists(st.lists(op, max_size=12), min_size=4, max_size=20)


class Stream:
    """Turns abstract operations into signed transactions on top of a committed state, tracking a
    scratch copy of it through the block so nonces and mark sequences follow what applied (an
    operation's skew then makes some of them wrong on purpose)."""

    def __init__(self, state: Clearing):
        self.scratch = state.snapshot()
        self.scratch.defer = True
        self.index = {u: self.scratch.marks[u].index if u in self.scratch.marks else START[u] for u in START}

    def _nonce(self, i, skew=0):
        acct = self.scratch.accounts.get(K[i])
        return ((acct.nonce if acct else 0) + skew) % 2**64

    def tx(self, o):
        body, signers = self._body(o)
        try:
            ctx.apply(self.scratch, ctx.decode(body))
        except ValueError:  # refused (or malformed): what follows is built as if it never came
            pass
        return body, signers

    def _body(self, o):
        kind = o[0]
        if kind == "register":
            return ctx.register(K[o[1]]), [USERS[o[1]]]
        if kind == "garbage":
            return o[1], []
        if kind == "deposit":
            _, i, asset, q, skew = o
            return ctx.deposit(K[i], self._nonce(i, skew), asset, q % 2**64), [USERS[i]]
        if kind in ("withdraw", "top_up"):  # (a top-up: into the asset's insurance fund)
            _, i, asset, q, skew = o
            acct = self.scratch.accounts.get(K[i])
            if q == "all":
                q = max(acct.collateral.get(asset, 0), 1) if acct else 1
            return getattr(ctx, kind)(K[i], self._nonce(i, skew), asset, q % 2**64), [USERS[i]]
        if kind == "trade":
            _, b, s, sid, n, scale, skew = o
            series = next((x for x in SERIES if x.id == sid), SERIES[0])
            ref = self.index[series.underlying]
            quote = ref if series.kind == FUTURE else max(ref * 0.05, 1.0)
            if series.inverse and series.kind != FUTURE:
                quote /= ref
            price = min(int(quote * scale * USD), 2**64 - 1)
            return (ctx.trade(K[b], self._nonce(b, skew), K[s], self._nonce(s), sid, n % 2**32, price),
                    [USERS[b], USERS[s]])
        _, und, x, seq_step, dt, with_vols, signers = o
        index = self.index.get(und, 1.0) * x if x in JUMPS or 0.9 <= x <= 1.1 else x
        if und in self.index and 1e-4 <= index <= 1e8:
            self.index[und] = index
        last = self.scratch.marks.get(und)
        seq = ((last.sequence if last else 0) + seq_step) % 2**64
        ts = max((last.timestamp if last else T0) + dt, 0)
        vols = {i: 0.7 for i in OPTIONS.get(und, [])} if with_vols else {}
        return ctx.mark(und, index, seq, ts, vols, O[:signers]), ORACLES[:signers]


def signed(body, signers):
    return body, [k.sign(body).signature for k in signers]


def as_txs(items) -> Txs:
    if not items:
        return Txs.empty()
    return Txs(Packed(*pack_messages([b for b, _ in items])), pack_fixed([s for _, sig in items for s in sig], 64, "sig"))


def committed_flows(txs: Txs) -> dict:
    """Deposits minus withdrawals per asset of a committed block, read from its transactions."""
    out = {}
    for t in ctx.decode_all(txs.bodies):
        if t.op in (ctx.DEPOSIT, ctx.WITHDRAW):
            out[t.fields[2]] = out.get(t.fields[2], 0) + (t.fields[3] if t.op == ctx.DEPOSIT else -t.fields[3])
    return out


def check_invariants(c: Clearing, supply: dict) -> None:
    for asset in c.assets:
        cash = sum(a.collateral.get(asset, 0) for a in c.accounts.values())
        assert cash + c.funds[asset] == supply.get(asset, 0), asset
        assert c.funds[asset] >= 0, asset
    for s in SERIES:
        assert sum(a.positions.get(s.id, 0) for a in c.accounts.values()) == 0, s.id
        if s.id in c.fixings:
            assert not any(s.id in a.positions for a in c.accounts.values())
    assert c.violations() == []
    # the incrementally kept state tree against the tree rebuilt from every leaf
    assert c.root() == inner_hash(merkle_root(c.leaves(), backend="cpu"), hashlib_root(c.globals_leaves()))


def block_of(txs, parent_root, state_root, app):
    return Block(2, 2, parent_root, 2, app.tx_root(txs), state_root, txs.digest(), txs, QC(bytes(32), 0, 0))


def _reported_refused(app, txs) -> list[bytes]:
    """The transactions of app's own proposal that left its mempool as refused (/tx: "refused"):
    none may have (review s18: a later fill applied what the first refused and evicted)."""
    digests = (hashlib.sha256(txs.bodies.item(i)).digest() for i in range(len(txs)))
    return [d for d in digests if d in app.refused and d not in app.mempool]


def chain(app, validator, parent, vparent, supply):
    """One block proposed by app on parent, checked by a second (software-only) validator: valid,
    the same state root, supply (asset -> quanta, updated here) and the invariants kept, no
    violations; committed by both. (txs, app's state, validator's state)."""
    txs, state = app.propose(parent, set())
    assert not _reported_refused(app, txs)
    block = block_of(txs, bytes(32), state.root, validator)
    v = validator.validate(vparent, block, ((), (), ()))
    assert v.ok, v.reason
    assert v.state.root == state.root
    for a, q in committed_flows(txs).items():
        supply[a] = supply.get(a, 0) + q
    check_invariants(state.clearing, supply)
    assert v.state.clearing.violations() == []
    app.committed(block_of(txs, bytes(32), state.root, app), state)
    validator.committed(block, v.state)
    return txs, state, v.state


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(blocks)
def test_propose_and_validate_never_raise_and_the_ledger_balances(stream):
    proposer = ClearingApp(Verifier("accel", "cpu"), genesis())
    validator = ClearingApp(Verifier("accel", "cpu"), genesis())
    parent = proposer.genesis
    supply = dict(GENESIS_FUNDS)
    for ops in [[("register", i) for i in range(len(USERS))] + [("deposit", i, "USD", q * USD, 0) for i, q in enumerate((30_000, 100_000, 300_000, 2_000_000))]
                + [("mark", "BTC", 1.0, 1, 60, True, 2), ("mark", "ETH", 1.0, 1, 60, True, 2)]
                + [("trade", 3, 0, 3, 2, 1.0, 0), ("trade", 3, 1, 2, 5, 1.0, 0)]] + stream:  # thin shorts
        maker = Stream(parent.clearing)
        items = [signed(*maker.tx(o)) for o in ops]
        reasons = proposer.submit_many(items)
        assert len(reasons) == len(items)
        # an attacker proposing the raw stream in its order: refused or valid, never a crash, and a
        # valid one balances too
        raw = as_txs(items)
        try:
            attacker_root = validator.execute(parent, raw.bodies).root
        except (Rejected, ctx.Malformed):
            attacker_root = bytes(32)
        verdict = validator.validate(parent, block_of(raw, bytes(32), attacker_root, validator), ((), (), ()))
        if verdict.ok:
            flows = committed_flows(raw)
            check_invariants(verdict.state.clearing, {a: supply.get(a, 0) + flows.get(a, 0) for a in set(supply) | set(flows)})
        else:
            assert verdict.reason
        txs, state = proposer.propose(parent, set())
        assert not _reported_refused(proposer, txs)
        verdict = validator.validate(parent, block_of(txs, bytes(32), state.root, validator), ((), (), ()))
        assert verdict.ok, verdict.reason
        assert verdict.state.root == state.root
        for asset, q in committed_flows(txs).items():
            supply[asset] = supply.get(asset, 0) + q
        check_invariants(state.clearing, supply)
        proposer.committed(block_of(txs, bytes(32), state.root, proposer), state)
        parent = state


liquidity = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.sampled_from([1, 2, 3, 5, 6, 7]),
                               st.integers(1, 40), st.floats(0.5, 1.5),
                               st.one_of(st.none(), st.sampled_from([0.4, 0.7, 0.9, 1.1, 1.4, 2.5])),
                               st.integers(0, 3)),
                     min_size=50, max_size=500)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(liquidity)
def test_every_transaction_keeps_the_invariants_through_crashes_expiries_and_an_empty_fund(steps):
    """Direct application, one transaction at a time, invariants checked after each: thinly
    collateralised accounts trading options and futures, crashes and rallies that liquidate them,
    expiries that settle, a small fund that runs dry, breakers that trip."""
    c = genesis()
    supply = dict(GENESIS_FUNDS)
    for i in range(4):
        c.register(K[i])
        for asset, q in (("USD", (20_000, 60_000, 150_000, 1_000_000)[i] * USD), ("BTC", USD * (i + 1) // 2)):
            c.deposit(K[i], c.accounts[K[i]].nonce, asset, q)
            supply[asset] = supply.get(asset, 0) + q
    index, seq, ts, height = dict(START), 1, T0, 0
    for und in ("BTC", "ETH"):
        c.mark(und, index[und], {i: 0.7 for i in OPTIONS[und]}, seq, ts, O[:2])
    for b, s, sid, n, scale, jump, blocks_later in steps:
        for _ in range(blocks_later):
            c.begin_block()
        try:
            if jump is not None:
                und = "BTC" if sid < 6 else "ETH"
                index[und] *= jump
                seq, ts = seq + 1, ts + 1800
                c.mark(und, index[und], {i: 0.7 * (jump if jump > 1 else 1 / jump) for i in OPTIONS[und]}, seq, ts, O[:2])
            elif b == s:
                q = c.accounts[K[b]].collateral.get("USD", 0) // 2
                if q > 0:
                    c.withdraw(K[b], c.accounts[K[b]].nonce, "USD", q)
                    supply["USD"] -= q
            else:
                series = next(x for x in SERIES if x.id == sid)
                ref = index[series.underlying]
                quote = ref if series.kind == FUTURE else ref * 0.04
                if series.inverse:
                    n *= 1_000 if series.kind == FUTURE else 1
                    quote = ref if series.kind == FUTURE else 0.04
                c.trade(K[b], c.accounts[K[b]].nonce, K[s], c.accounts[K[s]].nonce, sid, n, int(quote * scale * USD))
        except Rejected:
            pass
        check_invariants(c, supply)
