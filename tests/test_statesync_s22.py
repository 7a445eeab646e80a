"""Review s22: a joiner whose link carries a 4 MiB chunk in more than 2 s (about 17 Mbit/s) never
state-synced a snapshot over 4 MiB. Every ask waited RETRY_MS (2 s) in every round, so each peer's
chunk 0 came after its ask's timer and counted as unasked: after statesync.FRUITLESS_ROUNDS the
joiner started from the genesis, and where no peer holds the blocks from it (every validator
state-synced once, or pruned) that start never ends. Now the wait of an ask doubles each round of
the peers (statesync.SLOW_MS at most), as the per-chunk time of a snapshot's deadline does, and a
chunk 0 late for its ask still counts as that peer's offer. (Taken too, while no other peer's was
in, a Byzantine peer's late chunk 0 displaced an honest peer's ask: the second review.)"""
from dataclasses import replace

from consensus import statesync
from consensus.messages import SnapshotRequest
from tests.test_consensus_s8 import _slow
from tests.test_statesync import _chunk, _sync
from tests.test_sync_attacks import _net, _record_syncs


def test_a_chunk_0_late_for_its_ask_counts_as_an_offer_and_leaves_the_ask_of_the_next_peer(tmp_path):
    sim, chunk = _chunk(tmp_path)
    sync = _sync(sim)
    (ask, timer) = sync.on_timer(sync.timer)  # peer 0 silent for 2 s: peer 1 asked
    assert ask.to == 1 and timer.delay_ms == statesync.RETRY_MS
    asked = (sync.peer, sync.timer, sync.tries)
    assert sync.handle(0, chunk) == [] and sync.done is None and sync.offered == {0}
    assert (sync.peer, sync.timer, sync.tries) == asked  # peer 1's ask stands
    assert sync.handle(1, chunk) == [] and sync.done is not None and sync.done.peer == 1
    assert sync.counters == {"peer_silent": 1, "chunk_late": 1}


def test_a_late_chunk_0_counts_as_an_offer_once_per_ask_and_a_bad_one_leaves_the_current_peer(tmp_path):
    sim, chunk = _chunk(tmp_path)
    sync = statesync.StateSync(sim.cfg[3], sim._make_app(sim.genesis), probe=True)
    sync.start()
    sync.on_timer(sync.timer)                       # peer 0 silent: peer 1 asked
    k = statesync._direct_commit(chunk.proof)
    few = replace(chunk, proof=chunk.proof[:k + 2])  # not shown committed
    assert sync.handle(0, few) == [] and sync.peer == 1 and sync.counters["proof_bad"] == 1
    assert sync.handle(0, chunk) == [] and sync.counters["chunk_unasked"] == 1  # one check per ask
    assert sync.offered == set()
    sync.handle(1, chunk)                           # peer 1's, in time: restored, waiting on the probe
    assert sync.ready is not None and sync.offered == {1}
    sync.on_timer(sync.timer)                       # no holder: peer 2 asked, then peer 0 again
    sync.on_timer(sync.timer)
    assert sync.peer == 0
    sync.on_timer(sync.timer)                       # peer 0 silent again: peer 1 asked
    sync.handle(0, chunk)                           # peer 0's, late: an offer
    assert sync.offered == {0, 1} and sync.counters["chunk_late"] == 1 and sync.peer == 1
    sync.handle(2, chunk)                           # peer 2's, late for its first-round ask: an offer
    assert sync.offered == {0, 1, 2} and sync.counters["chunk_late"] == 2
    for _ in range(4 * statesync.FRUITLESS_ROUNDS * (sim.cfg[3].n - 1)):
        sync.on_timer(sync.timer)
    assert not sync.from_genesis                    # f + 1 offered: snapshots exist, the sync goes on


def test_the_wait_of_an_ask_doubles_each_round_up_to_slow_ms(tmp_path):
    """Each peer serves its snapshot, whose next block no peer shows it holds (the probe): the
    sync goes round after round, and its asks' and probes' waits double each round."""
    sim, chunk = _chunk(tmp_path)
    sync = statesync.StateSync(sim.cfg[3], sim._make_app(sim.genesis), probe=True)
    peers = sim.cfg[3].n - 1
    asks, probes = [sync.start()[-1].delay_ms], []
    for _ in range(8 * peers):
        probes.append(sync.handle(sync.peer, chunk)[-1].delay_ms)
        asks.append(sync.on_timer(sync.timer)[-1].delay_ms)
    assert sync.done is None and not sync.from_genesis
    rounds = [min(statesync.SLOW_MS, statesync.RETRY_MS * 2 ** (i // peers)) for i in range(8 * peers + 1)]
    assert asks == rounds and probes == rounds[:-1] and rounds[-1] == statesync.SLOW_MS


def test_peers_serving_every_chunk_slower_than_the_first_rounds_wait_are_taken_in_a_later_round(tmp_path, monkeypatch):
    """Every peer answers every snapshot request 3 s late (an honest network seen through a joiner's
    slow link): before, each chunk 0 counted as unasked, and v3 started from the genesis after two
    rounds; now it takes a peer's snapshot in the round whose wait and deadline fit, and commits on
    the same chain."""
    from consensus import snapshots
    monkeypatch.setattr(statesync, "SNAPSHOT_CHUNK", 64)
    monkeypatch.setattr(snapshots, "KEPT", 1_000)
    made = _record_syncs(monkeypatch)
    sim = _net(tmp_path, blocks=25)
    chunks = statesync.serve(sim._node("v0").store, 0, 0).chunks
    assert chunks >= 4
    _slow(sim, {"v0", "v1", "v2"}, 3_000.0)
    sim.state_sync("v3", tmp_path / "v3.db", sim.now + 1.0)
    first = len(sim._node("v1").committed)
    sim.run(blocks=first + 5, max_ms=sim.now + 1_200_000, live=lambda node: True)
    sync = made[0]
    assert not sync.from_genesis and sync.done is not None, sync.counters
    assert sync.counters.get("chunk_late", 0) >= 1 and sync.counters.get("peer_slow", 0) >= 1, sync.counters
    v3 = sim._node("v3")
    assert v3.sync is None and v3.store.first_height() > 1 and len(v3.committed) >= 1
    ids = {b.height: b.id for b, _, _ in sim._node("v1").committed}
    assert all(ids.get(b.height, b.id) == b.id for b, _, _ in v3.committed)
