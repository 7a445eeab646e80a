"""Session 8 fresh attacker review of the morning's transport and state-sync changes (the probe,
served snapshots, the safety row, the per-validator handshake buckets). Each test failed before
its fix. Time is the simulation's (or a clock the test moves), never asserted as speed."""
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from consensus import snapshots, statesync  # noqa: E402
from consensus.messages import BlockResponse  # noqa: E402
from consensus.sim import Simulation  # noqa: E402
from test_statesync_s8 import _chain  # noqa: E402
from test_sync_attacks import _record_syncs, _wire  # noqa: E402


def test_two_validators_syncing_at_once_beside_one_faulty_peer_both_join(tmp_path, monkeypatch):
    """n = 4, f = 1: v0 is down (the one fault), v1 is up and holds the chain, and v2 (its disk
    lost) and v3 (new) both join with state sync. 3 = 2f + 1 honest validators are up, so the
    network must go on. Before: each joiner restored v1's snapshot and waited for f + 1 = 2
    peers holding the block after it, but the only other peers were the down v0 and the other
    joiner (which holds nothing until it is synced itself): snapshot_unservable for ever, no
    joiner ever synced and the chain never moved again. Now, in a later round of the peers,
    a restored snapshot at least as high as every snapshot restored in the sync is taken with
    one holder (see statesync's docstring): both join and the chain goes on."""
    made = _record_syncs(monkeypatch)
    sim = Simulation(n=4, seed=5, txs_per_block=5, validation="software")
    for node in sim.nodes[:3]:
        sim.durable(node.name, tmp_path / f"{node.name}.db", snapshot_every=10)
    sim.crashed.add("v3")
    sim.load(400)
    sim.run(blocks=30, max_ms=10**9, live=lambda node: node.name != "v3")
    top = sim._node("v1").store.top_height()
    sim.crashed.add("v0")  # down for good
    sim.state_sync("v2", tmp_path / "v2-new.db", sim.now + 1.0)
    sim.state_sync("v3", tmp_path / "v3.db", sim.now + 1.0)
    sim.run(blocks=10**6, max_ms=sim.now + 120_000, live=lambda node: node.name != "v0")
    assert len(made) == 2 and all(s.done is not None for s in made), [s.counters for s in made]
    for name in ("v1", "v2", "v3"):
        assert sim._node(name).store.top_height() >= top + 10, (name, top)
    ids = {}
    for name in ("v1", "v2", "v3"):
        store = sim._node(name).store
        for h, block_id in enumerate(store.committed_ids(), start=1):
            if block_id is not None:
                assert ids.setdefault(h, block_id) == block_id


def test_one_holder_takes_only_the_highest_snapshot_restored_and_only_after_a_round(tmp_path, monkeypatch):
    """At the StateSync level, what a snapshot with fewer than f + 1 holders needs: v0
    (Byzantine) serves its oldest snapshot and holds the block after it itself, v1 its newest,
    v2 is silent. In the first round neither is taken with one holder; in the second, v0's old
    one is still not (below v1's, restored in the first round), and v1's is (the highest)."""
    monkeypatch.setattr(snapshots, "KEPT", 1_000)
    sim = _chain(tmp_path, blocks=45)
    old = statesync.serve(sim._node("v0").store, 10, 0)
    new = statesync.serve(sim._node("v1").store, 0, 0)
    assert old.chunks == new.chunks == 1 and old.height == 10 < new.height

    def after(chunk):  # the block the probe asks for
        return chunk.proof[statesync._direct_commit(chunk.proof) + 1]

    sync = statesync.StateSync(sim.cfg[3], sim._make_app(sim.genesis), probe=True)
    sync.start()
    for rnd in range(2):
        assert sync.peer == 0
        sync.handle(0, _wire(old))
        sync.handle(0, _wire(BlockResponse((after(old),))))
        assert sync.ready is not None and sync.holders == {0}
        sync.on_timer(sync.timer)
        assert sync.done is None and sync.peer == 1
        sync.handle(1, _wire(new))
        sync.handle(1, _wire(BlockResponse((after(new),))))
        assert sync.ready is not None and sync.holders == {1}
        sync.on_timer(sync.timer)
        if rnd == 0:
            assert sync.done is None and sync.peer == 2
            sync.on_timer(sync.timer)  # v2 silent
    assert sync.done is not None and sync.done.proposal.block.height == new.height, sync.counters
    assert sync.counters == {"snapshot_unservable": 3, "peer_silent": 1, "snapshot_one_holder": 1}


# ---- the per-validator handshake bucket: a stranger at a validator's address ---------------------

import asyncio  # noqa: E402

from consensus.net import Limits, Network  # noqa: E402
from test_consensus_s8 import HOST, _hello, _listener  # noqa: E402
from test_net_auth import KEYS, SEEDS  # noqa: E402


def test_a_stranger_at_a_validators_address_cannot_keep_it_from_reconnecting():
    """A stranger at validator 1's address (a process on its host, a neighbour behind its NAT)
    sends forged hellos claiming validator 1 faster than its handshakes_per_s (the listener's
    clock stands still: the flood keeps the bucket empty). Before: validator 1's own dial was
    closed unchecked like the flood's (handshakes_refused), and for as long as the flood went
    on it could not reconnect: its frames never reached validator 0. Now a dialer's challenge
    carries a tag only the two validators can make (keyed by their X25519 shared secret, the
    wire unchanged), and a tagged hello is charged to the claimed validator's own bucket, which
    no one else can draw from: validator 1 gets in at once; the untagged flood stays bounded by
    the address's bucket (refused unchecked past it)."""
    async def scenario():
        addrs, got, net = _listener(Limits(handshakes_per_s=4.0, handshake_burst=6))
        net.clock = lambda: 50.0
        await net.start()
        flood = [await _hello(addrs[0], 1, None) for _ in range(12)]
        for r, _ in flood:
            try:
                await r.read()
            except ConnectionError:
                pass
        refused = net.handshakes_refused
        dialer = Network(1, addrs, lambda *_: None, seed=SEEDS[1], keys=KEYS)
        writer = await dialer._connect(0)
        ok = writer is not None
        if ok:
            from consensus import messages
            writer.write(messages.encode(messages.BlockRequest(bytes(32))))
            async with asyncio.timeout(5.0):
                while not got:
                    await asyncio.sleep(0.01)
            writer.close()
        for _, w in flood:
            w.close()
        await net.stop()
        return refused, ok, got

    refused, ok, got = asyncio.run(scenario())
    assert refused == 12 - 6  # the flood: 6 checked (and failed), 6 refused unchecked
    assert ok and [s for s, _ in got] == [1]


def _deliver(sync, peer: int, store, height: int) -> None:
    """peer serves the stored snapshot at `height`, chunk after chunk, and answers the probe."""
    while True:
        chunk = statesync.serve(store, height, len(sync.parts))
        sync.handle(peer, _wire(chunk))
        if sync.ready is not None or sync.done is not None or sync.peer != peer:
            break
    head = statesync.serve(store, height, 0)
    after = head.proof[statesync._direct_commit(head.proof) + 1]
    sync.handle(peer, _wire(BlockResponse((after,))))


def test_an_honest_peer_slow_in_the_first_round_still_keeps_an_old_snapshot_from_being_taken_alone(
        tmp_path, monkeypatch):
    """The same with chunks of 256 bytes (several per snapshot): in the first round v1's chunk 0
    arrives (a real commit proof of its newest snapshot) and then v1 is slow (silent past the
    timer). Its snapshot's height counts as a restored one's: in the second round v0's old
    snapshot, the only one restored so far, is still not taken with v0 as its one holder; v1's,
    restored in the second round, is."""
    monkeypatch.setattr(snapshots, "KEPT", 1_000)
    monkeypatch.setattr(statesync, "SNAPSHOT_CHUNK", 256)
    sim = _chain(tmp_path, blocks=45)
    old_store, new_store = sim._node("v0").store, sim._node("v1").store
    new = statesync.serve(new_store, 0, 0)
    assert statesync.serve(old_store, 10, 0).chunks > 1 and new.chunks > 1 and new.height > 10
    sync = statesync.StateSync(sim.cfg[3], sim._make_app(sim.genesis), probe=True)
    sync.start()
    _deliver(sync, 0, old_store, 10)
    assert sync.ready is not None and sync.holders == {0}
    sync.on_timer(sync.timer)
    assert sync.peer == 1
    sync.handle(1, _wire(new))
    assert sync.head is not None and len(sync.parts) == 1
    sync.on_timer(sync.timer)  # v1 silent after its chunk 0
    assert sync.peer == 2
    sync.on_timer(sync.timer)  # v2 silent
    assert sync.peer == 0
    _deliver(sync, 0, old_store, 10)
    assert sync.ready is not None and sync.holders == {0}
    sync.on_timer(sync.timer)
    assert sync.done is None and sync.peer == 1, sync.counters
    _deliver(sync, 1, new_store, new.height)
    sync.on_timer(sync.timer)
    assert sync.done is not None and sync.done.proposal.block.height == new.height, sync.counters
    assert sync.counters == {"snapshot_unservable": 2, "peer_silent": 2, "snapshot_one_holder": 1}


# ---- serving a chunk reads that chunk, not the whole snapshot --------------------------------------


def test_serving_a_chunk_does_not_load_the_whole_snapshot(tmp_path):
    """serve() read a chunk with SQL substr(blob, ...), which makes SQLite load the whole blob
    (a 300 MiB snapshot: 327 MiB resident to serve its last 4 MiB, each time): every 50-byte
    SnapshotRequest of a 4 GiB snapshot read and held 4 GiB, and a peer's transfer of n chunks
    read n x its size. Now a chunk is read with incremental blob I/O (Store.snapshot_piece).
    Shown with SQLite's own heap capped at 16 MiB, in a process of its own: the cap is process
    wide and `PRAGMA hard_heap_limit` can only lower it (set back to 0 in this process, it stayed
    at 16 MiB and a later test's 10 MiB blocks ran out of memory). A 64 MiB snapshot's chunks are
    served under it. (The manifest, hashed once per snapshot and kept, still reads it whole once.)"""
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from consensus import statesync
from consensus.messages import SNAPSHOT_CHUNK
from consensus.store import Store
store = Store({str(tmp_path / "s.db")!r})
size = 16 * SNAPSHOT_CHUNK + 5
store.db.execute("INSERT INTO snapshots VALUES (5, randomblob(32), randomblob(32), 0, randomblob(?))", (size,))
(whole,) = store.db.execute("SELECT blob FROM snapshots").fetchone()
store.db.execute("PRAGMA hard_heap_limit = 16777216")
chunks = [statesync.serve(store, 5, i) for i in (1, 15, 16)]
assert [c.data for c in chunks] == [whole[SNAPSHOT_CHUNK:2 * SNAPSHOT_CHUNK],
                                    whole[15 * SNAPSHOT_CHUNK:16 * SNAPSHOT_CHUNK], whole[16 * SNAPSHOT_CHUNK:]]
assert all(c.chunks == 17 for c in chunks)
print("served")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "served", done.stderr[-2000:]
