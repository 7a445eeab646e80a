"""A clearing validator's mempool costs.

- test_propose (issue 19): propose() of a 1,000-transaction block from a mempool holding just
  those, against the same mempool plus 5,000 transactions the rules refuse (withdrawals with
  nonces far ahead, trades of unregistered accounts), half before the good ones, half after. Each
  round fills the mempool anew (the first proposal evicts what it refuses), so every round pays
  for them; the ratio is the cost of the refused ones.
- test_commit: committed() of that block, following the head, with its transactions alone in the
  mempool against the same plus 100,000 others pending (deposits of keys not registered yet): the
  ratio is what the others cost a commit (it must scale with the block, not the mempool).
- test_propose_from_a_deep_mempool: propose() of a 10,000-transaction block from 10,000, 50,000
  and 100,000 pending (deposits of 1,000 accounts in turn, each lighter than 1/FAIR_PART of a
  block: arrival order; a quorum mark every 2,000): what the pending ones past the block cost a
  proposal (it must scale with the block, not the mempool); and from 10,000 and 100,000 pending
  of 50 accounts, the round-robin order (_fair), which reads every pending transaction.
- test_evict_short: _evict_short alone, for that account, from 10,000 and 100,000 pending: the
  part of the proposal that scanned the mempool.
- test_propose_with_a_short_account: the same from 10,000 and 100,000 pending, with one account
  whose withdrawal (first in the mempool) leaves it below initial margin, and five later deposits
  of it (last in the mempool): the proposal evicts the withdrawal and the deposits after it
  (_evict_short), which scanned the whole mempool for them until the sixteenth session.
- test_propose_past_early_transactions (review s18): propose() of a 10,000-deposit block from
  20,000 pending, behind 0 or 30,600 deposits queued ahead of their accounts' missing nonce
  (3,400 accounts, nonces 1..9, nonce 0 sent after the backlog): they stay pending and every
  proposal that reaches them looks at them; the ratio is what they cost it (each was applied and
  refused, and declined its run to one-by-one, until the nineteenth session). "first": the first
  proposal to reach them; "next": the one after it, which finds them behind the backlog (every
  proposal paid "first" until the nineteenth session)."""
import hashlib
import itertools

import pytest
from nacl.signing import SigningKey

from accel.risk import FUTURE
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing_app import MARKS, ClearingApp, Pending
from consensus.apps.clearing_load import ORACLES, SERIES, T0, USD, ClearingLoad, genesis_market
from consensus.messages import QC, Block
from consensus.verify import Verifier

GOOD, REFUSED = 1_000, 5_000


def _signed(body, *keys):
    return body, [k.sign(body).signature for k in keys]


@pytest.fixture(scope="module")
def market():
    load = ClearingLoad(seed=3, users=64)
    genesis = genesis_market("cpu")
    for body, _ in load.take(load.setup_size):
        ctx.apply(genesis, ctx.decode(body))
    good = load.take(GOOD, mark_every=200)
    strangers = [SigningKey(bytes([i % 251 + 1, i // 251 + 1]) * 16) for i in range(REFUSED // 2)]
    refused = ([_signed(ctx.withdraw(load.keys[i % 64], 10**6 + i, "USD", 10**9 * USD), load.users[i % 64])
                for i in range(REFUSED // 2)]
               + [_signed(ctx.trade(bytes(s.verify_key), 0, load.keys[0], 0, 1, 1, USD), s, load.users[0])
                  for s in strangers])
    return genesis, good, refused


@pytest.mark.parametrize("with_refused", [False, True], ids=["clean mempool", "plus 5,000 refused"])
def test_propose(benchmark, market, with_refused):
    genesis, good, bad = market
    app = ClearingApp(Verifier("accel", "cpu"), genesis, max_txs=GOOD)
    items = (bad[:len(bad) // 2] + good + bad[len(bad) // 2:]) if with_refused else good

    def fill():
        app.mempool.clear()
        assert not [r for r in app.submit_many(items) if r.startswith("malformed")]
        return (app.genesis, set()), {}

    txs, _ = benchmark.pedantic(app.propose, setup=fill, rounds=9)
    assert len(txs) == GOOD


@pytest.mark.parametrize("others", [0, 100_000], ids=["block alone", "plus 100,000 pending"])
def test_commit(benchmark, market, others):
    genesis, good, _ = market
    proposer = ClearingApp(Verifier("accel", "cpu"), genesis, max_txs=GOOD)
    proposer.submit_many(good)
    txs, state = proposer.propose(proposer.genesis, set())
    assert len(txs) == GOOD
    held = dict(proposer.mempool)
    block = Block(2, 2, bytes(32), 2, proposer.tx_root(txs), state.root, txs.digest(), txs, QC(bytes(32), 0, 0))
    app = ClearingApp(Verifier("accel", "cpu"), genesis, max_txs=GOOD)
    for i in range(others):
        body = ctx.deposit(hashlib.sha256(i.to_bytes(8, "big")).digest(), 0, "USD", USD)
        app.mempool[hashlib.sha256(body).digest()] = Pending(body, [bytes(64)], ctx.decode(body), bytes(64))

    def again():
        app.mempool.update(held)
        app.head, app.head_id = app.genesis.clearing, block.parent
        return (block, state), {}

    benchmark.pedantic(app.committed, setup=again, rounds=9)
    assert len(app.mempool) == others


@pytest.fixture(scope="module")
def deep():
    keys = [bytes(SigningKey(hashlib.sha256(b"deep %d" % i).digest()).verify_key) for i in range(1_000)]
    genesis = genesis_market("cpu")
    for k in keys:
        genesis.register(k)
        genesis.deposit(k, 0, "USD", 10**6 * USD)
    vols = {s.id: 0.7 for s in SERIES if s.underlying == "BTC" and s.kind != FUTURE}
    oracles = [bytes(k.verify_key) for k in ORACLES[:2]]

    def pending(accounts: int, n: int) -> dict:
        held = {}
        for i in range(n):
            body = ctx.deposit(keys[i % accounts], 1 + i // accounts, "USD", USD)
            held[hashlib.sha256(body).digest()] = Pending(body, [bytes(64)], ctx.decode(body), bytes(64))
            if i % 2_000 == 1_999:  # (as admitted: quorum marks count against MARKS)
                body = ctx.mark("BTC", 60_000.0, 1 + i // 2_000, T0 + 60 + i, vols, oracles)
                held[hashlib.sha256(body).digest()] = Pending(body, [bytes(64)] * 2, ctx.decode(body), bytes(128),
                                                              MARKS)
        return held
    return genesis, pending


@pytest.mark.parametrize("pending,accounts", [(10_000, 1_000), (50_000, 1_000), (100_000, 1_000),
                                              (10_000, 50), (100_000, 50)],
                         ids=["10,000 pending", "50,000", "100,000",
                              "10,000, 50 accounts (round-robin)", "100,000, 50 accounts"])
def test_propose_from_a_deep_mempool(benchmark, deep, pending, accounts):
    genesis, make = deep
    app = ClearingApp(Verifier("accel", "cpu"), genesis, max_txs=10_000)
    held = make(accounts, pending)

    def fill():
        app.mempool = held
        return (app.genesis, set()), {}

    txs, _ = benchmark.pedantic(app.propose, setup=fill, rounds=9)
    assert len(txs) == 10_000


def _short_account(deep, pending: int):
    """(the genesis with an account a short 10 BTC futures, the mempool: its withdrawal that
    leaves it short first, the deep fixture's pending deposits, then five later deposits of it,
    the digests of its six transactions)."""
    genesis, make = deep
    short, other = (SigningKey(hashlib.sha256(b"short %d" % i).digest()) for i in range(2))
    a, b = bytes(short.verify_key), bytes(other.verify_key)
    start = genesis.snapshot()
    start.mark("BTC", 60_000.0, {s.id: 0.7 for s in SERIES if s.underlying == "BTC" and s.kind != FUTURE}, 0, T0,
               [bytes(k.verify_key) for k in ORACLES[:2]])  # (before the pending marks: sequence 0)
    for k in (a, b):
        start.register(k)
        start.deposit(k, 0, "USD", 10**6 * USD)
    start.trade(b, 1, a, 1, 4, 10, 60_000 * USD)  # a sells 10 BTC futures

    def entry(body: bytes) -> tuple:
        return hashlib.sha256(body).digest(), Pending(body, [bytes(64)], ctx.decode(body), bytes(64))
    withdrawal, deposits = ctx.withdraw(a, 2, "USD", 999_000 * USD), [ctx.deposit(a, n, "USD", USD) for n in range(3, 8)]
    held = dict([entry(withdrawal)])
    held.update(make(1_000, pending))
    held.update(map(entry, deposits))  # past the block's reach, after the others
    mine = {entry(body)[0] for body in [withdrawal] + deposits}
    return start, held, mine


@pytest.mark.parametrize("pending", [10_000, 100_000], ids=["10,000 pending", "100,000"])
def test_evict_short(benchmark, deep, pending):
    start, held, mine = _short_account(deep, pending)
    app = ClearingApp(Verifier("accel", "cpu"), start, max_txs=10_000)

    def fill():
        app.mempool = held
        candidates = list(itertools.islice(app.mempool.items(), 2))
        found = app._fill(app.genesis, candidates, set(), False)
        assert len(found.short) == 1
        return (candidates, found.kept, found.short), {}

    benchmark.pedantic(app._evict_short, setup=fill, rounds=9)
    assert mine <= app.refused.keys() and mine.isdisjoint(app.mempool)


@pytest.mark.parametrize("pending", [10_000, 100_000], ids=["10,000 pending", "100,000"])
def test_propose_with_a_short_account(benchmark, deep, pending):
    start, held, mine = _short_account(deep, pending)
    app = ClearingApp(Verifier("accel", "cpu"), start, max_txs=10_000)

    def fill():
        app.mempool = held
        return (app.genesis, set()), {}

    txs, _ = benchmark.pedantic(app.propose, setup=fill, rounds=9)
    assert len(txs) > 9_900 and mine <= app.refused.keys() and mine.isdisjoint(app.mempool)


@pytest.mark.parametrize("attackers", [0, 3_400], ids=["no early ones", "30,600 early ones"])
@pytest.mark.parametrize("which", ["first", "next", "scattered"])
def test_propose_past_early_transactions(benchmark, deep, attackers, which):
    genesis, make = deep
    start = genesis.snapshot()
    keys = [bytes(SigningKey(hashlib.sha256(b"early %d" % i).digest()).verify_key) for i in range(attackers)]
    for k in keys:
        start.register(k)

    def entry(body: bytes) -> tuple:
        return hashlib.sha256(body).digest(), Pending(body, [bytes(64)], ctx.decode(body), bytes(64))
    early = [entry(ctx.deposit(k, n, "USD", USD)) for k in keys for n in range(1, 10)]
    lead = min(3, len(early)) if which == "scattered" else len(early)
    held = dict(early[:lead])
    held.update(make(1_000, 9_990 if which == "scattered" else 20_000))  # (scattered: 4 marks, 6 short of a block)
    held.update(early[lead:])
    held.update(entry(ctx.deposit(k, 0, "USD", USD)) for k in keys)
    app = ClearingApp(Verifier("accel", "cpu"), start, max_txs=10_000)

    def fill():
        app.mempool = held
        if which == "next":  # the proposal after one that reached them (on the same parent)
            app.propose(app.genesis, set())
        return (app.genesis, set()), {}

    txs, _ = benchmark.pedantic(app.propose, setup=fill, rounds=7)
    assert len(txs) == (9_994 if which == "scattered" and not attackers else 10_000)
    assert len(app.mempool) == len(held)  # (the early ones kept: each waits on a pending one)
