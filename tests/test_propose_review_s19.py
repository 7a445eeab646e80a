"""The second review of the proposer's early-transaction changes (review s19, e029275): both pass
at 01dd3dc, failed at e029275, pass since. Counts of Columns.write_back calls and of blocks."""
import hashlib

from nacl.signing import SigningKey

from accel.risk import FUTURE
from consensus.apps import clearing_columns
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing_app import MARKS, ClearingApp, Pending
from consensus.apps.clearing_load import ORACLES, SERIES, T0, USD, genesis_market
from consensus.messages import QC, Block
from consensus.verify import Verifier

OR = [bytes(k.verify_key) for k in ORACLES[:2]]


def entry(body):
    tx = ctx.decode(body)
    sigs = [bytes(64)] * len(tx.signers)
    return hashlib.sha256(body).digest(), Pending(body, sigs, tx, b"".join(sigs), MARKS if tx.op == ctx.MARK else None)


def funded(n, tag):
    keys = [bytes(SigningKey(hashlib.sha256(b"%s %d" % (tag, i)).digest()).verify_key) for i in range(n)]
    g = genesis_market("cpu")
    for k in keys:
        g.register(k)
        g.deposit(k, 0, "USD", 10**6 * USD)
    return g, keys


def test_marks_published_together_do_not_flush_the_working_set_each_round():
    """Oracle rounds publish a BTC mark and, a few transactions later, an ETH mark: runs alternate
    long (300 deposits) and short (3). At 01dd3dc every run was columnar and the working set was
    written back once, at the block's end; at e029275 each short run goes one by one (MIN_RUN), its
    first deposit flushes the columns (Clearing.nonce_refusal -> _flush), and the next long run
    rebuilds them: a write-back per round (10k block, 1,000 accounts, a round every 1,000
    deposits: 29 -> 55 ms measured; 10 write-backs here, cost.py "BTC+ETH")."""
    g, keys = funded(1_000, b"pairs")
    bvols = {s.id: 0.7 for s in SERIES if s.underlying == "BTC" and s.kind != FUTURE}
    evols = {s.id: 0.7 for s in SERIES if s.underlying == "ETH" and s.kind != FUTURE}
    held, i, seq = {}, 0, 0

    def dep():
        nonlocal i
        held.update([entry(ctx.deposit(keys[i % 1_000], 1 + i // 1_000, "USD", USD))])
        i += 1
    while i < 3_000:
        for _ in range(300):
            dep()
        seq += 1
        held.update([entry(ctx.mark("BTC", 60_000.0, seq, T0 + 60 + seq, bvols, OR))])
        for _ in range(3):
            dep()
        held.update([entry(ctx.mark("ETH", 3_000.0, seq, T0 + 60 + seq, evols, OR))])
    app = ClearingApp(Verifier("accel", "cpu"), g, max_txs=4_000)
    app.mempool = held
    calls, real = [0], clearing_columns.Columns.write_back

    def counted(cols, state):
        calls[0] += 1
        return real(cols, state)
    clearing_columns.Columns.write_back = counted
    try:
        txs, _ = app.propose(app.genesis, set())
    finally:
        clearing_columns.Columns.write_back = real
    assert len(txs) == len(held)
    assert calls[0] <= 2, f"the working set was written back {calls[0]} times"


def test_a_client_pipelining_over_two_connections_is_not_sent_behind_the_backlog_each_step():
    """A steady backlog of 4 blocks (arrival order: no account past 1/64 of a block) and a client's
    deposits 1..8 arriving as 2,1,4,3,6,5,8,7 (two connections: _early's own example). At 01dd3dc
    they committed two a block once reached (blocks 5..9). At e029275 only the one the block brings
    its account to keeps its place; the rest go behind the backlog again after each step, two
    nonces per trip through the mempool (blocks 5..18; latency.py: 20 nonces behind 10 blocks of
    2,000, last at block 21 -> 102)."""
    room, depth = 512, 4
    g, keys = funded(1_025, b"pipe")
    me, others = keys[0], keys[1:]
    app = ClearingApp(Verifier("accel", "cpu"), g, max_txs=room)
    nxt, cursor = {k: 1 for k in others}, [0]

    def backlog(n):
        for _ in range(n):
            k = others[cursor[0] % len(others)]
            cursor[0] += 1
            d, p = entry(ctx.deposit(k, nxt[k], "USD", USD))
            nxt[k] += 1
            app.mempool[d] = p
    backlog(depth * room)
    mine = {}
    for n in (2, 1, 4, 3, 6, 5, 8, 7):
        d, p = entry(ctx.deposit(me, n, "USD", USD))
        app.mempool[d] = p
        mine[d] = n
    parent, done = app.genesis, {}
    for b in range(1, 40):
        txs, state = app.propose(parent, set())
        done.update((mine[d], b) for d in (hashlib.sha256(txs.bodies.item(i)).digest() for i in range(len(txs)))
                    if d in mine)
        app.committed(Block(b + 1, b + 1, bytes(32), b + 1, app.tx_root(txs), state.root, txs.digest(), txs,
                            QC(bytes(32), 0, 0)), state)
        parent = state
        backlog(room)
        if len(done) == len(mine):
            break
    assert len(done) == len(mine)
    first, last = min(done.values()), max(done.values())
    assert last - first <= 4, f"committed from block {first} to block {last}: {sorted(done.items())}"
