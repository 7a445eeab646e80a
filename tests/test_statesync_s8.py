"""Session 8 review of state sync: the leads the last consensus review left (an old but valid
snapshot from a Byzantine peer, a snapshot pruned mid-transfer) and fresh attacks on sync and
catch-up. Each test failed before its fix. Time is the simulation's (or a clock the test moves),
never asserted as speed."""
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from consensus import messages, snapshots, statesync  # noqa: E402
from consensus.messages import (  # noqa: E402
    OFFER, BlockRequest, BlockResponse, SnapshotChunk, SnapshotOffer, SnapshotRequest,
)
from test_sync_attacks import _net as _chain, _record_syncs, _wire  # noqa: E402


def _forget_below(store, height: int) -> None:
    """An honest validator that holds no block below `height` (it was state-synced there itself,
    or pruned): its committed rows and snapshots below it deleted."""
    store.db.execute("DELETE FROM committed WHERE height < ?", (height,))
    store.db.execute("DELETE FROM snapshots WHERE height < ?", (height,))


def _same_chain(sim, name: str) -> None:
    ids = {b.height: b.id for n in sim.nodes if n.name != name for b, _, _ in n.committed}
    node = sim._node(name)
    assert node.committed and all(ids.get(b.height, b.id) == b.id for b, _, _ in node.committed)


# ---- lead 1: an old but valid snapshot ----------------------------------------------------------

def test_an_old_valid_snapshot_below_every_honest_validators_blocks_is_passed_over(tmp_path, monkeypatch):
    """v0 (Byzantine, the first peer v3 asks) keeps every snapshot and serves its oldest, at
    height 10, under a real commit proof, and answers no block request but a one-block one. v1 and
    v2 hold no block below 45 (state-synced there themselves). Before: v3 took the snapshot at 10,
    then asked everyone for the blocks after it for ever (committed nothing). Now a snapshot is
    taken only once f + 1 peers showed they hold the block after it (statesync: the probe), so v3
    leaves v0's (snapshot_unservable), takes v1's and joins the chain."""
    monkeypatch.setattr(snapshots, "KEPT", 1_000)
    made = _record_syncs(monkeypatch)
    sim = _chain(tmp_path, blocks=60)
    v0 = sim._node("v0")
    assert v0.store.snapshots()[-1][0] == 10
    v0.core.snapshot_source = lambda height, chunk: statesync.serve(v0.store, height or 10, chunk)
    answer = v0.core._on_block_request
    v0.core._on_block_request = lambda sender, req: answer(sender, req) if req.max_blocks == 1 else []
    for name in ("v1", "v2"):
        _forget_below(sim._node(name).store, 45)
    sim.state_sync("v3", tmp_path / "v3.db", sim.now + 1.0)
    first = len(sim._node("v1").committed)
    sim.run(blocks=first + 15, max_ms=sim.now + 60_000, live=lambda node: node.name != "v0")
    sync = made[0]
    assert sync.done is not None and sync.done.peer != 0, sync.counters
    assert sync.counters.get("snapshot_unservable") == 1, sync.counters
    assert sim._node("v3").store.first_height() >= 45
    _same_chain(sim, "v3")


def test_the_probe_counts_f_plus_1_distinct_peers_answering_with_the_block_after_the_snapshot(tmp_path):
    """At the StateSync level: chunk 0 asks every peer for the proof's first block not committed by
    it; the restored snapshot waits until f + 1 distinct peers answered with that block. Answers
    with another block, from this validator's own index or no validator's, or the same peer
    twice, count for nothing; the timer with too few holders leaves the snapshot
    (snapshot_unservable) for the next peer; a second holder arriving in time completes it."""
    sim = _chain(tmp_path, blocks=25)
    store = sim._node("v0").store
    head = statesync.serve(store, 0, 0)
    assert head.chunks == 1
    k = statesync._direct_commit(head.proof)
    want = head.proof[k + 1]
    other = head.proof[k]
    for late in (False, True):
        sync = statesync.StateSync(sim.cfg[3], sim._make_app(sim.genesis), probe=True)
        sync.start()
        out = sync.handle(0, _wire(head))
        asks = [a for a in out if type(a).__name__ == "Send"]
        assert {a.to for a in asks} == {0, 1, 2}
        assert all(a.msg == BlockRequest(want.block.id, want.block.height, 1) for a in asks)
        assert sync.done is None and sync.ready is not None
        timer = out[-1]
        for sender, answer in ((1, other), (3, want), (9, want), (0, want), (0, want)):
            assert sync.handle(sender, _wire(BlockResponse((answer,)))) == []
        assert sync.done is None and sync.holders == {0}
        if late:
            (ask, _) = sync.on_timer(timer.view)
            assert sync.counters == {"snapshot_unservable": 1} and ask.to == 1 and sync.ready is None
            assert sync.handle(2, _wire(BlockResponse((want,)))) == [] and sync.done is None
        else:
            assert sync.handle(2, _wire(BlockResponse((want,)))) == [] and sync.done is not None
            assert sync.done.proposal.block.id == head.proof[0].block.id and sync.on_timer(timer.view) == []


def test_without_the_probe_a_state_sync_is_as_before(tmp_path):
    """StateSync(probe=False), the unit tests' default: the snapshot is taken on its last chunk."""
    sim = _chain(tmp_path, blocks=25)
    sync = statesync.StateSync(sim.cfg[3], sim._make_app(sim.genesis))
    sync.start()
    assert sync.handle(0, _wire(statesync.serve(sim._node("v0").store, 0, 0))) == [] and sync.done is not None
    assert sync.holders == set() and sync.probing is None


# ---- lead 2: a snapshot pruned mid-transfer ------------------------------------------------------

def _slow(sim, names, ms: float) -> None:
    """The validators `names` answer every snapshot request `ms` late (a slow link)."""
    deliver = sim._deliver

    def slow(src, to, msg):
        if src.name in names and isinstance(msg, SnapshotChunk):
            sim.at(sim.now + ms, lambda s: deliver(src, to, msg))
        else:
            deliver(src, to, msg)
    sim._deliver = slow


def test_a_transfer_slower_than_the_snapshots_life_still_finishes(tmp_path, monkeypatch):
    """Every peer serves chunks 450 ms late (a slow link, inside every deadline), and the chain
    takes a snapshot every 2 blocks, keeping 2: each snapshot is pruned long before its transfer
    ends. Before, every peer went silent on the snapshot it had pruned (peer_silent), the next
    peer's went the same way, and v3 never synced. Now a snapshot a chunk of which was served in
    the last SERVING_S stays (one more than KEPT at most), and v3 takes v0's, the first asked."""
    monkeypatch.setattr(statesync, "SNAPSHOT_CHUNK", 64)
    made = _record_syncs(monkeypatch)
    sim = _chain(tmp_path, blocks=25, every=2)
    chunks = statesync.serve(sim._node("v0").store, 0, 0).chunks
    assert chunks >= 6
    _slow(sim, {"v0", "v1", "v2"}, 450.0)
    v1 = sim._node("v1")
    began, at_done, most = v1.core.committed.height, [], [0]

    def watch(s):
        most[0] = max([most[0]] + [len(n.store.snapshots()) for n in s.nodes[:3]])
        if s._node("v3").sync is None and made and not at_done:
            at_done.append(v1.core.committed.height)
    for t in range(0, 20_000, 20):
        sim.at(sim.now + t, watch)
    sim.state_sync("v3", tmp_path / "v3.db", sim.now + 1.0)
    sim.run(blocks=len(v1.committed) + 40, max_ms=sim.now + 20_000, live=lambda node: True)
    sync = made[0]
    assert sync.done is not None and sync.done.peer == 0, sync.counters
    assert set(sync.counters) <= {"chunk_unasked"}, sync.counters
    assert at_done and at_done[0] - began > 2 * (snapshots.KEPT + 1)  # the snapshot would have been pruned
    assert most[0] <= snapshots.KEPT + 1
    _same_chain(sim, "v3")


def test_a_peer_that_pruned_the_snapshot_says_so_and_its_newest_is_fetched_at_once(tmp_path, monkeypatch):
    """A chunk of a snapshot the peer no longer holds: serve answers with its newest snapshot's
    offer (it answered nothing, and the syncing validator waited RETRY_MS on it), and StateSync
    asks the same peer for its newest at once (snapshot_gone), its chunks held dropped; a second
    'gone' from the same peer (or a Byzantine one repeating it) moves on to the next peer."""
    monkeypatch.setattr(statesync, "SNAPSHOT_CHUNK", 64)
    sim = _chain(tmp_path, blocks=25)
    store = sim._node("v0").store
    (newest, older) = [h for h, _, _, _ in store.snapshots()]
    gone = statesync.serve(store, 3, 1)
    assert isinstance(gone, SnapshotOffer) and gone == statesync.serve(store, 0, OFFER) and gone.height == newest
    assert statesync.serve(store, 1 << 70, 0) == gone  # no such height at all: the same answer
    sync = statesync.StateSync(sim.cfg[3], sim._make_app(sim.genesis))
    sync.start()
    (ask, _) = sync.handle(0, _wire(statesync.serve(store, older, 0)))
    assert ask.msg == SnapshotRequest(older, 1)
    assert sync.handle(1, _wire(gone)) == [] and sync.counters == {}  # not the peer asked: nothing
    (ask, timer) = sync.handle(0, _wire(gone))
    assert sync.counters == {"snapshot_gone": 1} and sync.head is None and sync.parts == []
    assert ask.to == 0 and ask.msg == SnapshotRequest(0, 0) and timer.delay_ms == statesync.RETRY_MS
    (ask, _) = sync.handle(0, _wire(statesync.serve(store, 0, 0)))
    assert ask.msg == SnapshotRequest(newest, 1)
    assert sync.handle(0, _wire(replace(gone, height=newest))) == []  # its own snapshot's offer: not "gone"
    (ask, _) = sync.handle(0, _wire(replace(gone, height=newest + 10)))  # gone again (a newer one since)
    assert sync.counters == {"snapshot_gone": 2} and ask.to == 1 and ask.msg == SnapshotRequest(0, 0)


# ---- 3. fresh attacks and faults ------------------------------------------------------------------

def test_a_validator_killed_right_after_its_state_sync_restarts_from_its_store(tmp_path):
    """v3 is killed the moment its snapshot is in (before its core persisted any safety state: no
    vote, timeout or QC yet) and restarted from its store. Before: the store held the synced block
    but no safety row, and the restart refused it ('holds blocks but no safety row'), so the
    validator stopped and its data directory had to be removed. Now the synced store gets the
    core's starting safety state (last voted view 0, the genesis QC) in the same transaction as the
    snapshot, and v3 restarts from its snapshot and goes on with the chain."""
    sim = _chain(tmp_path, blocks=25)
    killed = []

    def kill_when_synced(s):
        node = s._node("v3")
        if node.sync is None and not killed and node.store.first_height():
            killed.append(s.now)
            assert node.store.db.execute("SELECT COUNT(*) FROM committed").fetchone()[0] >= 1
            s.crashed.add("v3")
            s.kill("v3", s.now, s.now + 50.0)
    start = sim.now
    for t in range(0, 5_000):
        sim.at(start + 1.0 + t, kill_when_synced)
    sim.state_sync("v3", tmp_path / "v3.db", start + 1.0)
    first = len(sim._node("v1").committed)
    sim.run(blocks=first + 20, max_ms=start + 30_000, live=lambda node: True)
    assert killed and sim._node("v3").store.safety() is not None
    _same_chain(sim, "v3")


def _proof_with_after(tmp_path):
    """A chunk 0 of a snapshot whose block is committed only through a later one (its child in a
    later view than the next, v3's views timing out: the proof carries committed blocks after it,
    which a sync stores and replays), built from v0's store as a peer serves it."""
    import hashlib
    sim = _chain(tmp_path, blocks=25, every=10)
    store = sim._node("v0").store
    app = sim._make_app(sim.genesis)
    for h, _, root, txs in store.snapshots():
        found = store.committed_range(h + 1, messages.MAX_RANGE)
        k = statesync._direct_commit(found)
        if k is not None and k >= 1 and len(found[1].block.txs):
            break
    else:
        raise AssertionError("no block committed through a later one")
    state = app.execute(snapshots.restore(app, store.snapshot_blob(h), root), found[0].block.txs.bodies)
    assert state.root == found[0].block.state_root
    blob = snapshots.encode(app, state)
    manifest = len(blob).to_bytes(8, "big") + hashlib.sha256(blob).digest()
    chunk = SnapshotChunk(h + 1, 0, 1, txs + len(found[0].block.txs), tuple(found[:k + 3]), blob, manifest)
    return sim, chunk


def test_proof_blocks_whose_transactions_are_not_their_signed_ones_are_refused(tmp_path):
    """A block's id (the proposer's signature) covers its transactions' digest and root, not the
    transactions. A Byzantine peer's proof with the committed blocks after the snapshot carrying
    other transactions passed commit_proof; the syncing validator stored them and its core's replay
    raised InvariantViolation: the node stopped, and stopped again on every restart (the rows were
    in its store). Now every proof block's transactions must match its digest and root (proof_bad,
    the next peer asked)."""
    from consensus.core import Core
    sim, chunk = _proof_with_after(tmp_path)
    sync = statesync.StateSync(sim.cfg[3], sim._make_app(sim.genesis))
    sync.start()
    assert sync.handle(0, _wire(chunk)) == [] and sync.done is not None and sync.done.after  # the real one
    p = chunk.proof[1]
    others = [q.block.txs for q in chunk.proof[2:] + (chunk.proof[0],) if len(q.block.txs) == len(p.block.txs)]
    assert others  # (the id covers the transactions' count: a block with as many)
    for txs in others:
        forged = replace(chunk, proof=(chunk.proof[0], replace(p, block=replace(p.block, txs=txs))) + chunk.proof[2:])
        assert forged.proof[1].block.id == p.block.id  # the signature still verifies
        sync = statesync.StateSync(sim.cfg[3], sim._make_app(sim.genesis))
        sync.start()
        (ask, _) = sync.handle(0, _wire(forged))
        assert sync.done is None and sync.counters == {"proof_bad": 1} and ask.to == 1
    # what it cost before: the synced store and a core started from it
    good = statesync.StateSync(sim.cfg[3], sim._make_app(sim.genesis))
    good.start()
    good.handle(0, _wire(chunk))
    from consensus.store import Store
    store = Store(tmp_path / "v3.db")
    base = statesync.begin(store, good.done)
    Core(sim.cfg[3], lambda m: bytes(64), good.app, None, good.done.after, store.committed_range, base)


def test_a_store_with_votes_but_no_blocks_keeps_its_last_voted_view_through_a_state_sync(tmp_path):
    """A validator that voted before any block committed (the chain's first views), crashed, and
    restarts with state_sync: its store has a safety row but no committed block, so it syncs. The
    synced core started from no safety state (last voted view 0) and the row was overwritten, so it
    could vote again in views it had voted in (equivocation). Now the core and the store go on from
    the stored safety state: v3 votes in no view at or below its stored last voted view."""
    from consensus.core import Safety
    from consensus.messages import QC
    from consensus.store import Store
    sim = _chain(tmp_path, blocks=25)
    voted = sim._node("v1").core.view + 40  # views v3 voted in before (as its row says), ahead of the chain
    pre = Store(tmp_path / "v3.db")
    gqc = sim._node("v3").core.safety.high_qc
    assert gqc == QC(sim._node("v3").core.genesis.id, 0, 0)
    pre.save_safety(Safety(voted, gqc))
    pre.close()
    sim.state_sync("v3", tmp_path / "v3.db", sim.now + 1.0)
    first = len(sim._node("v1").committed)
    sim.run(blocks=first + 40, max_ms=sim.now + 60_000, live=lambda node: True)
    v3 = sim._node("v3")
    assert v3.sync is None and v3.core.view > voted  # it went on past those views
    assert not [view for (who, view) in sim.votes_signed if who == 3 and view <= voted]
    assert v3.store.safety().last_voted_view >= voted
    _same_chain(sim, "v3")


def test_serving_a_snapshot_reads_its_commit_proof_once(tmp_path, monkeypatch):
    """serve() looked for the snapshot's commit proof on every chunk 0, and on every chunk of an
    ask for height 0 (the newest provable): up to 3 committed blocks read and decoded per ask, and
    MAX_RANGE (64) where the snapshot's block is committed only through a later one, in the
    consensus loop, for a 50-byte request (a peer asking SnapshotRequest(0, i) over and over made
    this validator decode 64 blocks of up to 64 MiB for each 4 MiB chunk it read). Now a proof
    found is kept per snapshot (Store.snapshot_proofs, dropped with the snapshot): the blocks are
    decoded once."""
    monkeypatch.setattr(statesync, "SNAPSHOT_CHUNK", 64)
    sim, chunk = _proof_with_after(tmp_path)
    store = sim._node("v1").store
    h = chunk.height
    (p,) = store.committed_range(h, 1)
    store.add_snapshot(h, p.block.id, p.block.state_root, chunk.txs, chunk.data, keep=10)
    reads = []
    original = store.committed_range

    def counting(from_height, count):
        out = original(from_height, count)
        reads.append(len(out))
        return out
    store.committed_range = counting
    first = statesync.serve(store, h, 0)
    assert [q.block.id for q in first.proof] == [q.block.id for q in chunk.proof]
    assert sum(reads) > 3  # (k >= 1: the long search)
    newest = statesync.serve(store, 0, 0)
    reads.clear()
    for i in range(50):
        assert messages.encode(statesync.serve(store, h, 0)) == messages.encode(first)
        assert statesync.serve(store, 0, i % newest.chunks).height == newest.height
    assert sum(reads) == 0, reads


def test_a_served_snapshot_outlives_pruning_for_serving_s_and_never_more_than_one(tmp_path):
    """Store level, on a clock the test moves: the newest older snapshot served in the last
    SERVING_S stays beside the `keep` newest; a peer asking for chunks of an older one too holds
    no second one (the newer in transfer is kept, not the older); past SERVING_S without a chunk
    served it goes at the next snapshot."""
    from consensus import store as store_mod
    sim = _chain(tmp_path, blocks=25, every=10)
    src = sim._node("v0").store
    now = [0.0]
    s = store_mod.Store(tmp_path / "pins.db", clock=lambda: now[0])
    for p in src.committed_range(1, 30):
        s.add_committed(p)
    heights = [p.block.height for p in src.committed_range(1, 30)]

    def snap(h):
        (p,) = s.committed_range(h, 1)
        s.add_snapshot(h, p.block.id, p.block.state_root, 0, b"x" * h, keep=2)
        return [r[0] for r in s.snapshots()]
    assert snap(1) == [1] and snap(2) == [2, 1]
    s.served(1)
    assert snap(3) == [3, 2, 1]                # 1 in transfer: kept
    s.served(2)
    assert snap(4) == [4, 3, 2]                # 2 and 1 both served: the newer kept, never both
    now[0] += store_mod.SERVING_S + 1
    assert snap(5) == [5, 4]                   # no chunk of 2 served since: pruned
    for h in heights[5:20]:
        s.served(min(r[0] for r in s.snapshots()))
        now[0] += 1
        assert len(snap(h)) <= 3
    s.close()


def test_random_interleavings_of_sync_messages_never_raise_and_keep_the_bounds(tmp_path, monkeypatch):
    """A seeded random walk over what peers (and strangers) can send a probing StateSync: real and
    forged chunks of two snapshots, offers naming any height, probe answers with the right block
    or another, timers old and new, from any index. Nothing raises; the chunks held never pass
    the manifest; holders are peers; a done sync is of a real committed snapshot."""
    import random
    monkeypatch.setattr(statesync, "SNAPSHOT_CHUNK", 64)
    sim = _chain(tmp_path, blocks=25)
    stores = [sim._node(f"v{i}").store for i in range(3)]
    real = {}
    for i, st in enumerate(stores):
        head = statesync.serve(st, 0, 0)
        real[i] = [head] + [statesync.serve(st, head.height, c) for c in range(1, head.chunks)]
    blocks = [p for st in stores for p in st.committed_range(1, 30)]
    rng = random.Random(8)
    seen = {}
    for run in range(40):
        now = [0.0]
        sync = statesync.StateSync(sim.cfg[3], sim._make_app(sim.genesis), clock=lambda: now[0], probe=True)
        out = sync.start()
        timers = [a.view for a in out if type(a).__name__ == "SetTimer"]
        for _ in range(60):
            now[0] += rng.choices((0.0, 10.0, 600.0, 2_500.0), (4, 4, 1, 1))[0]
            sender = rng.choice((0, 1, 2, 3, 7))
            kind = rng.choices(range(6), (1, 1, 1, 1, 3, 6))[0]
            if kind == 0 and timers:
                out = sync.on_timer(rng.choice(timers[-3:]))
            elif kind == 1:
                parts = real[rng.randrange(3)]
                msg = rng.choice(parts[:2] if rng.random() < 0.5 else parts)
                if rng.random() < 0.2:
                    msg = replace(msg, data=bytes(len(msg.data)))
                out = sync.handle(sender, _wire(msg))
            elif kind == 2:
                out = sync.handle(sender, _wire(SnapshotOffer(rng.randrange(1, 1 << 40), rng.randrange(1, 64), 1)))
            elif kind == 3:
                out = sync.handle(sender, _wire(BlockResponse((rng.choice(blocks),))))
            elif kind == 4 and sync.probing is not None:
                want = next((p for p in blocks if p.block.id == sync.probing[0]), None)
                out = sync.handle(sender, _wire(BlockResponse((want,)))) if want is not None else []
            else:
                peer = sync.peer
                parts = real.get(peer)
                if parts:
                    out = sync.handle(peer, _wire(parts[min(len(sync.parts), len(parts) - 1)]))
            timers += [a.view for a in out if type(a).__name__ == "SetTimer"]
            assert sync.holders <= {0, 1, 2}
            assert sum(map(len, sync.parts)) <= max(sync.size, 0) or sync.head is None
            if sync.done is not None:
                ok = {(p[0].height, p[0].proof[0].block.id) for p in real.values()}
                assert (sync.done.proposal.block.height, sync.done.proposal.block.id) in ok
                break
        for why in list(sync.counters) + ["done"] * (sync.done is not None):
            seen[why] = seen.get(why, 0) + 1
    # (the walk reaches a finished sync and the refusals this review added)
    assert seen.get("done") and seen.get("snapshot_gone") and seen.get("snapshot_unservable"), seen


def test_a_peers_count_of_committed_transactions_is_bounded_by_the_blocks(tmp_path):
    """A snapshot's count of committed transactions is the peer's word (only the built-in load
    uses it: a synced node skips that many of its stream, and its own snapshots carry the count
    on). A Byzantine peer claiming 2^47 at height 20 made a joining node with the default built-in
    clearing load generate and sign 2^47 transactions into one list (it never joined, and ran out
    of memory), and the count went on into every snapshot it served. Now the count taken is at
    most txs_per_block for each block up to the snapshot's (statesync.committed_txs)."""
    sim = _chain(tmp_path, blocks=25)
    v0 = sim._node("v0")
    v0.core.snapshot_source = lambda height, chunk: (
        lambda c: replace(c, txs=1 << 47) if isinstance(c, SnapshotChunk) else c)(statesync.serve(v0.store, height, chunk))
    sim.state_sync("v3", tmp_path / "v3.db", sim.now + 1.0)
    first = len(sim._node("v1").committed)
    sim.run(blocks=first + 10, max_ms=sim.now + 60_000, live=lambda node: True)
    v3 = sim._node("v3")
    assert v3.sync is None and v3.store.first_height() > 1
    assert v3.committed_txs <= v3.core.committed.height * sim.txs_per_block
    assert all(txs <= h * sim.txs_per_block for h, _, _, txs in v3.store.snapshots())
    _same_chain(sim, "v3")
    # the node's built-in clearing feed skips in bounded batches
    from consensus import node as node_mod
    taken = []

    class Stream:
        def skip(self, count):  # (the stream passes over count transactions: ClearingLoad.skip)
            taken.append(count)
    feed = object.__new__(node_mod.ClearingFeed)
    feed.load = Stream()
    feed.skip(25_000)
    assert sum(taken) == 25_000 and max(taken) <= node_mod.SKIP_BATCH
