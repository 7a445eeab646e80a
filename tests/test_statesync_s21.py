"""Review s21: a validator started with state_sync and an empty store only ever asked its peers for
a snapshot, so where none had one it waited for ever: a network younger than its first snapshot
(at the default snapshot_every = 500 the first is due at height 125), or one whose validators
snapshot nothing. With one validator down (f = 1 of n = 4) the joiner was the 2f + 1st the chain
needed to commit and make a snapshot, so the chain stopped for good (20 -> 21 in 300 s, the joiner
counting peer_silent); a network started with state_sync everywhere never committed its first
block. Now, after statesync.FRUITLESS_ROUNDS rounds of the peers in which none offered a snapshot
(a chunk 0 with a valid commit proof), the validator starts from the genesis and fetches the blocks
as any validator behind does."""
import re
import shutil

from consensus import statesync
from consensus.sim import Simulation
from tests.test_restart_all import _wait
from tests.test_statesync import _chunk, _sync


def test_fruitless_rounds_of_silent_peers_end_in_a_start_from_the_genesis(tmp_path):
    sim, chunk = _chunk(tmp_path)
    sync = _sync(sim)
    rounds = statesync.FRUITLESS_ROUNDS * (sim.cfg[3].n - 1)
    for ask in range(1, rounds):  # (the first ask was start's)
        assert sync.on_timer(sync.timer) and not sync.from_genesis
    assert sync.on_timer(sync.timer) == [] and sync.from_genesis
    assert sync.counters == {"peer_silent": rounds, "no_snapshot": 1} and sync.done is None


def test_snapshots_offered_by_f_plus_1_peers_keep_the_sync_going_and_by_f_do_not(tmp_path):
    """Two peers (f + 1) sent their snapshots, whose next block no peer then showed it holds (the
    probe): one of them is honest, so snapshots exist and the sync goes on round after round. One
    peer alone may be a Byzantine one sending a real commit proof and junk, or going quiet after
    its chunk 0 (the second review: it kept the joiner from ever falling back): after the fruitless
    rounds the joiner starts from the genesis."""
    import hashlib
    from dataclasses import replace
    sim, chunk = _chunk(tmp_path)
    junk = b"\x01" * 100
    fake = replace(chunk, data=junk, chunks=1, manifest=len(junk).to_bytes(8, "big") + hashlib.sha256(junk).digest())
    for offers in ((fake,), (chunk, chunk)):
        sync = statesync.StateSync(sim.cfg[3], sim._make_app(sim.genesis), probe=True)
        sync.start()
        for _ in range(4 * statesync.FRUITLESS_ROUNDS * (sim.cfg[3].n - 1)):
            if sync.from_genesis:
                break
            if sync.peer < len(offers) and sync.head is None and sync.ready is None:
                if sync.handle(sync.peer, offers[sync.peer]) or sync.ready is not None:
                    continue
            sync.on_timer(sync.timer)
        assert sync.from_genesis == (len(offers) == 1), (offers, sync.counters, sync.offered)


def test_a_joiner_with_no_snapshot_to_take_lets_the_chain_go_on(tmp_path):
    """n = 4 with stores snapshotting every 500 blocks, 20 committed; v0 down for good, v2 rejoins
    on an empty store with state sync: the chain goes on (v1 at 21 after 300 s before)."""
    sim = Simulation(n=4, seed=5, txs_per_block=5, validation="software")
    for node in sim.nodes:
        sim.durable(node.name, tmp_path / f"{node.name}.db", snapshot_every=500)
    sim.load(400)
    sim.run(blocks=20, max_ms=10**9)
    top = sim._node("v1").store.top_height()
    sim.crashed.update(("v0", "v2"))
    sim.state_sync("v2", tmp_path / "v2-new.db", sim.now + 1.0)
    sim.run(blocks=10**6, max_ms=sim.now + 60_000, live=lambda node: node.name != "v0")
    assert sim._node("v1").store.top_height() >= top + 10
    assert sim._node("v2").store.first_height() == 1  # fetched from the genesis up


def test_a_network_started_with_state_sync_everywhere_commits():
    sim = Simulation(n=4, seed=1, txs_per_block=5, validation="software")
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        for node in sim.nodes:
            sim.state_sync(node.name, Path(tmp) / f"{node.name}.db", 1.0)
        sim.load(40)
        sim.run(blocks=5, max_ms=120_000, live=lambda node: True)
        assert all(len(n.committed) >= 5 for n in sim.nodes)


def test_a_validator_process_with_a_lost_disk_and_no_snapshot_anywhere_joins_from_the_genesis(tmp_path):
    """Four validator processes (key-value) that snapshot nothing; validator 3 is killed, its data
    directory removed, and started with state_sync while validator 0 is down: it starts from the
    genesis after the fruitless rounds, and the three commit again."""
    from consensus.localnet import Localnet
    net = Localnet(4, 80, 5, None, "software", 0.0, str(tmp_path / "net"), base_timeout_ms=300.0, app="kv",
                   rpc_port=None, snapshot_every=0)
    try:
        for i in range(4):
            net.start(i)
        _wait(net, lambda h: min(h) >= 10, 120, "10 blocks")
        net.kill(3)
        net.kill(0)
        down = net.procs.pop(0)  # (down for good: _wait checks the others)
        shutil.rmtree(net.dir / "node3")
        config = net.configs[3]
        config.write_text(config.read_text().replace("[node]\n", "[node]\nstate_sync = true\n"))
        top = max(net.heights())
        net.start(3)
        _wait(net, lambda h: h[1] >= top + 10 and h[3] >= top + 10, 120, "validators 1 to 3 after the rejoin")
    finally:
        net.stop()
    assert down.poll() is not None
    log = (net.dir / "node3.log").read_text()
    assert re.search(r"state sync: f or fewer peers offered a snapshot in \d+ rounds", log), log[-3000:]
