"""Session 8 fresh attacker review of the morning's transport and state-sync changes (the probe,
served snapshots, the safety row, the per-validator handshake buckets). Each test failed before
its fix. Time is the simulation's (or a clock the test moves), never asserted as speed."""
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
