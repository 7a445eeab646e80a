"""State sync (issue 20): a validator with an empty store takes a peer's snapshot, checked against
the state root of a block whose commit it verifies (a QC over its child in the next view), and
fetches only the blocks after it; a forged proof, a tampered chunk, a chunk nobody asked for
are refused and the next peer asked."""
from dataclasses import replace

from consensus import messages, statesync
from consensus.messages import SnapshotChunk, SnapshotRequest
from consensus.sim import Simulation


def _network(tmp_path, blocks: int, joiner: str | None = None):
    sim = Simulation(n=4, seed=3, txs_per_block=5, validation="software")
    for node in sim.nodes[:3]:
        sim.durable(node.name, tmp_path / f"{node.name}.db", snapshot_every=100)
    if joiner:
        def join(s):
            if len(s._node("v0").committed) >= blocks:
                s.state_sync(joiner, tmp_path / f"{joiner}.db", s.now)
            else:
                s.at(s.now + 50.0, join)
        sim.at(50.0, join)
    sim.crashed.add("v3")
    sim.load(blocks * 4)
    return sim


def test_a_validator_with_an_empty_store_syncs_from_a_snapshot_and_goes_on(tmp_path):
    sim = _network(tmp_path, 600, joiner="v3")
    sim.run(blocks=700, max_ms=10**9, live=lambda node: node.name != "v3")
    v3 = sim._node("v3")
    assert v3.sync is None, "v3 never finished its state sync"
    first = v3.store.first_height()
    assert first >= 500 and first % 100 == 0  # a snapshot of a peer's, not the genesis
    assert v3.core.replayed <= 64 and v3.committed and v3.committed[0][0].height > first
    assert v3.core.committed.height >= 690
    top = v3.core.committed.height
    ids = {b.height: (b.id, b.state_root) for b, _, _ in sim._node("v0").committed}
    assert all(ids[b.height] == (b.id, b.state_root) for b, _, _ in v3.committed)
    stored = v3.store.history(first, v3.store.committed_range(first, 1)[0].block.id)
    assert [p.block.height for p in stored] == list(range(first + 1, v3.store.top_height() + 1))
    assert ids[top][1] == v3.core.committed.state_root


def _chunk(tmp_path):
    sim = _network(tmp_path, 250)
    sim.run(blocks=250, max_ms=10**9, live=lambda node: node.name != "v3")
    chunk = statesync.serve(sim._node("v1").store, 0, 0)
    assert chunk is not None and chunk.chunks == 1 and len(chunk.proof) >= 3
    return sim, chunk


def _sync(sim):
    sync = statesync.StateSync(sim.cfg[3], sim._make_app(sim.genesis))
    (ask, timer) = sync.start()
    assert ask.to == 0 and ask.msg == SnapshotRequest(0, 0) and timer.view == statesync.SYNC_TIMER
    return sync


def test_forged_proofs_and_chunks_are_refused_and_the_next_peer_asked(tmp_path):
    sim, chunk = _chunk(tmp_path)
    frame = messages.encode(chunk)
    assert messages.encode(messages.decode(frame)) == frame and len(frame) < messages.MAX_MESSAGE

    sync = _sync(sim)
    assert sync.handle(2, chunk) == [] and sync.counters == {"chunk_unasked": 1}  # not the peer asked

    k = statesync._direct_commit(chunk.proof)
    qc = chunk.proof[k + 2].block.qc
    forged_qc = replace(qc, sigs=bytes(64) + qc.sigs[64:])
    b = replace(chunk.proof[k + 2].block, qc=forged_qc)
    forged = replace(chunk, proof=chunk.proof[:k + 2] + (replace(chunk.proof[k + 2], block=b),))
    (ask, _) = sync.handle(0, forged)
    assert sync.counters["proof_bad"] == 1 and ask.to == 1 and sync.done is None

    few = replace(chunk, proof=chunk.proof[:k + 2])  # no QC over the child: not shown committed
    (ask, _) = sync.handle(1, few)
    assert sync.counters["proof_bad"] == 2 and ask.to == 2

    data = bytearray(chunk.data)
    data[len(data) // 2] ^= 1
    (ask, _) = sync.handle(2, replace(chunk, data=bytes(data)))
    assert sync.counters["snapshot_bad"] == 1 and ask.to == 0 and sync.done is None

    assert sync.handle(0, chunk) == [] and sync.done is not None
    assert sync.done.proposal.block.height == chunk.height and sync.done.state.root == chunk.proof[0].block.state_root
    assert sync.on_timer(sync.timer) == [] and sync.handle(0, chunk) == []


def test_a_silent_peer_is_left_for_the_next(tmp_path):
    sim, chunk = _chunk(tmp_path)
    sync = _sync(sim)
    stale = sync.timer
    (ask, _) = sync.on_timer(sync.timer)
    assert ask.to == 1 and sync.counters == {"peer_silent": 1}
    assert sync.on_timer(stale) == []  # an earlier ask's timer: void
    (ask, _) = sync.on_timer(sync.timer)
    assert ask.to == 2
    (ask, _) = sync.on_timer(sync.timer)
    assert ask.to == 0  # never itself


def test_a_running_validator_drops_snapshot_chunks_and_serves_requests(tmp_path):
    sim, chunk = _chunk(tmp_path)
    core = sim._node("v1").core
    assert core.handle(0, chunk) == [] and core.counters["snapshot_unasked"] == 1
    (send,) = core.handle(0, SnapshotRequest(0, 0))
    assert send.to == 0 and isinstance(send.msg, SnapshotChunk) and send.msg.height == chunk.height
    assert core.handle(0, SnapshotRequest(chunk.height, 5)) == []  # no such chunk


def test_a_validator_process_with_a_lost_disk_syncs_from_a_peer(tmp_path):
    """Four validator processes (key-value, a snapshot every 20 blocks); validator 3 is killed, its
    data directory removed, and started with state_sync: it takes a peer's snapshot and commits
    with the others again, its store beginning at the snapshot."""
    import re
    import shutil

    from consensus.localnet import Localnet
    from consensus.store import Store
    from tests.test_restart_all import _wait
    net = Localnet(4, 80, 5, None, "software", 0.0, str(tmp_path / "net"), base_timeout_ms=300.0, app="kv",
                   rpc_port=None, snapshot_every=20)
    try:
        for i in range(4):
            net.start(i)
        _wait(net, lambda h: min(h) >= 45, 120, "45 blocks")
        net.kill(3)
        shutil.rmtree(net.dir / "node3")
        config = net.configs[3]
        config.write_text(config.read_text().replace("[node]\n", "[node]\nstate_sync = true\n"))
        top = max(net.heights())
        net.start(3)
        _wait(net, lambda h: h[3] >= top + 20, 120, "validator 3 after its state sync")
    finally:
        net.stop()
    log = (net.dir / "node3.log").read_text()
    synced = re.search(r"state synced: the snapshot at height (\d+) from validator (\d)", log)
    # the peer's snapshot heights: its phase (index * 20 // 4) in every 20, or the block after where
    # one commit reached two blocks
    assert synced and int(synced[1]) >= 5 and (int(synced[1]) - int(synced[2]) * 5) % 20 in (0, 1), log[-3000:]
    store = Store(net.dir / "node3" / "validator.db")
    first, top3 = store.first_height(), store.top_height()
    store.close()
    assert first == int(synced[1]) and top3 >= top + 20
