"""Review attacks on state sync, stored snapshots and the authenticated transport (issues 20, 22):
a Byzantine peer or a stranger against StateSync, tampered snapshot rows against a restart, and
reflection, boundary lengths and a rate-limited peer against net.Network. Tests that show a defect
are fixed now and pinned here with the rest of what held."""
import asyncio
import logging
import random
import struct
from dataclasses import replace

import numpy as np
import pytest
from nacl.signing import SigningKey

from accel import Packed
from consensus import messages, snapshots, statesync
from consensus.apps import clearing_snapshot
from consensus.core import Core, Send, genesis_block
from consensus.messages import (
    MAX_MESSAGE, MAX_RANGE, MAX_SNAPSHOT_CHUNKS, QC, SNAPSHOT_CHUNK, Block, Proposal, SnapshotChunk, SnapshotRequest,
    Txs, proposal_bytes,
)
from consensus.net import Limits, Network
from consensus.sim import Link, Simulation
from consensus.store import Store
from tests.test_net_auth import KEYS, SEEDS, addresses, authenticated, closed, listening, network, until


# ---- helpers ------------------------------------------------------------------------------------

def _net(tmp_path, blocks: int = 25, every: int = 10, app: str = "kv") -> Simulation:
    """v0..v2 with stores (a snapshot every `every` blocks) commit `blocks` blocks; v3 is down."""
    sim = Simulation(n=4, seed=3, txs_per_block=5, validation="software", app=app)
    for node in sim.nodes[:3]:
        sim.durable(node.name, tmp_path / f"{node.name}.db", snapshot_every=every)
    sim.crashed.add("v3")
    sim.load(blocks * 5)
    sim.run(blocks=blocks, max_ms=10**9, live=lambda node: node.name != "v3")
    return sim


def _sync(sim) -> statesync.StateSync:
    sync = statesync.StateSync(sim.cfg[3], sim._make_app(sim.genesis))
    (ask, _) = sync.start()
    assert ask.to == 0
    return sync


def _wire(msg):
    """What a peer's message is after the wire (every test input crosses the real encoding)."""
    return messages.decode(messages.encode(msg))


def _with_qc(chunk: SnapshotChunk, **changes) -> SnapshotChunk:
    """The chunk with the committing QC (the one in proof[k + 2]) changed."""
    k = statesync._direct_commit(chunk.proof)
    p = chunk.proof[k + 2]
    b = replace(p.block, qc=replace(p.block.qc, **changes))
    return replace(chunk, proof=chunk.proof[:k + 2] + (replace(p, block=b),) + chunk.proof[k + 3:])


# ---- state sync: forged proofs --------------------------------------------------------------

def _forgeries(sim, chunk):
    store = sim._node("v1").store
    k = statesync._direct_commit(chunk.proof)
    qc = chunk.proof[k + 2].block.qc
    b0 = chunk.proof[k].block
    prev = store.committed_range(chunk.height - 1, 1)[0]
    other = store.committed_range(chunk.height + 5, 1)[0]
    bad_sig = replace(chunk.proof[0], signature=bytes(64))
    return {
        "qc_view_relabelled": _with_qc(chunk, view=qc.view + 1),
        "qc_over_another_block": _with_qc(chunk, block_id=b0.id),
        "qc_voter_repeated": _with_qc(chunk, voters=(qc.voters[0],) * len(qc.voters),
                                      sigs=qc.sigs[:64] * len(qc.voters)),
        "qc_below_quorum": _with_qc(chunk, voters=qc.voters[:sim.cfg[0].quorum - 1],
                                    sigs=qc.sigs[:64 * (sim.cfg[0].quorum - 1)]),
        "qc_voter_out_of_range": _with_qc(chunk, voters=qc.voters[:-1] + (7,)),
        "proof_skips_a_block": replace(chunk, height=prev.block.height, proof=(prev,) + chunk.proof[1:]),
        "proof_of_another_height": replace(chunk, proof=(other,) + chunk.proof[1:]),
        "height_not_the_proofs": replace(chunk, height=chunk.height - 10),
        "proposer_signature_forged": replace(chunk, proof=(bad_sig,) + chunk.proof[1:]),
        "proof_reordered": replace(chunk, proof=chunk.proof[::-1]),
        "no_proof": replace(chunk, proof=()),
        "proof_too_short": replace(chunk, proof=chunk.proof[:2]),
    }


def test_forged_and_relabelled_proofs_are_refused_and_the_next_peer_asked(tmp_path):
    sim = _net(tmp_path, blocks=30)  # blocks past v1's newest snapshot (at its phase, 22) to forge from
    store = sim._node("v1").store
    chunk = statesync.serve(store, 0, 0)
    assert chunk is not None and chunk.height == store.snapshots()[0][0] and chunk.chunks == 1
    for name, forged in _forgeries(sim, chunk).items():
        sync = _sync(sim)
        out = sync.handle(0, _wire(forged))
        assert sync.done is None, name
        assert sync.counters in ({"proof_bad": 1}, {"snapshot_bad": 1}), (name, sync.counters)
        (ask, timer) = out
        assert ask.to == 1 and ask.msg == SnapshotRequest(0, 0) and timer.view == sync.timer < statesync.SYNC_TIMER, name
        assert sync.handle(1, _wire(chunk)) == [] and sync.done is not None, name
        assert sync.done.state.root == chunk.proof[0].block.state_root


def test_a_relabelled_qc_height_is_harmless(tmp_path):
    """A QC's height is not signed: relabelling it changes nothing the proof relies on."""
    sim = _net(tmp_path)
    chunk = statesync.serve(sim._node("v1").store, 0, 0)
    k = statesync._direct_commit(chunk.proof)
    sync = _sync(sim)
    sync.handle(0, _wire(_with_qc(chunk, height=chunk.proof[k].block.height + 7)))
    assert sync.done is not None and sync.done.proposal.block.height == chunk.height


def test_an_older_snapshots_bytes_under_a_newer_blocks_proof_are_refused(tmp_path):
    sim = _net(tmp_path)
    store = sim._node("v1").store
    newest, older = [h for h, *_ in store.snapshots()]
    new, old = statesync.serve(store, newest, 0), statesync.serve(store, older, 0)
    assert new.proof[0].block.state_root != old.proof[0].block.state_root
    sync = _sync(sim)
    (ask, _) = sync.handle(0, _wire(replace(new, data=old.data)))
    assert sync.counters == {"snapshot_bad": 1} and ask.to == 1 and sync.done is None
    sync.handle(1, _wire(old))  # an older committed snapshot, proven: taken
    assert sync.done is not None and sync.done.proposal.block.height == older


def test_garbage_snapshots_with_a_valid_proof_never_raise(tmp_path):
    sim = _net(tmp_path)
    chunk = statesync.serve(sim._node("v1").store, 0, 0)
    rng = random.Random(7)
    for data in (b"", b"AVKVSN1", b"AVKVSN1" + b"\xff" * 8, b"AVSNAP1" + bytes(12), rng.randbytes(500),
                 chunk.data[:-1], chunk.data + b"\0", chunk.data[:7] + b"\0" * 7 + b"\x01" + chunk.data[15:]):
        sync = _sync(sim)
        (ask, _) = sync.handle(0, _wire(replace(chunk, data=data)))
        assert sync.counters == {"snapshot_bad": 1} and ask.to == 1 and sync.done is None, data[:20]


def test_a_genesis_snapshot_signed_by_validator_0_is_refused(tmp_path):
    sim = _net(tmp_path)
    store = sim._node("v1").store
    p1, p2 = store.committed_range(1, 2)
    assert (p1.block.view, p2.block.qc.view, p2.block.qc.block_id) == (1, 1, p1.block.id)
    app = sim._make_app(sim.genesis)
    g = genesis_block(app.genesis.root)
    forged = Proposal(g, sim.keys[0].sign(proposal_bytes(g.id, sim.network)).signature)  # a Byzantine validator 0
    chunk = SnapshotChunk(0, 0, 1, 0, (forged, p1, p2), snapshots.encode(app, app.genesis))
    sync = _sync(sim)
    sync.handle(0, _wire(chunk))
    if sync.done is not None:  # what follows a sync to height 0
        synced = Store(tmp_path / "v3.db")
        statesync.begin(synced, sync.done)
        assert synced.first_height() != 0, "the synced store reads as empty (a restart state-syncs into it again)"
    assert sync.done is None and sync.counters.get("proof_bad") == 1


# ---- state sync: chunks, bounds, unasked answers, silent peers ---------------------------------

def test_chunks_out_of_order_duplicated_or_relabelled_are_not_taken(tmp_path, monkeypatch):
    monkeypatch.setattr(statesync, "SNAPSHOT_CHUNK", 64)
    sim = _net(tmp_path)
    store = sim._node("v1").store
    head = statesync.serve(store, 0, 0)
    parts = [head] + [statesync.serve(store, head.height, i) for i in range(1, head.chunks)]
    assert head.chunks >= 4 and all(p is not None and p.proof == () for p in parts[1:])
    sync = _sync(sim)
    assert sync.handle(0, _wire(parts[1])) == []            # before chunk 0
    (ask, _) = sync.handle(0, _wire(parts[0]))
    assert ask.to == 0 and ask.msg == SnapshotRequest(head.height, 1)
    assert sync.handle(0, _wire(parts[0])) == []            # a duplicate
    assert sync.handle(0, _wire(parts[2])) == []            # skips one
    assert sync.handle(0, _wire(replace(parts[1], chunks=head.chunks + 1))) == []  # another snapshot's count
    assert sync.handle(0, _wire(replace(parts[1], height=head.height - 10))) == []  # another snapshot's chunk
    assert sync.handle(2, _wire(parts[1])) == []            # not the peer asked
    assert sync.handle(9, _wire(parts[1])) == []            # no such validator
    assert sync.counters == {"chunk_unasked": 7} and len(sync.parts) == 1
    (ask, _) = sync.handle(0, _wire(replace(parts[1], data=parts[1].data[:-1])))  # short, not the last
    assert sync.counters["chunk_bad"] == 1 and ask.to == 1 and sync.parts == []
    for i, p in enumerate(parts):
        out = sync.handle(1, _wire(p))
        assert (out == []) == (i == len(parts) - 1)
    assert sync.done is not None and sync.done.blob == store.snapshot_blob(head.height)
    assert sync.done.state.root == head.proof[0].block.state_root


def test_an_endless_stream_from_the_peer_asked_stays_bounded(tmp_path):
    sim = _net(tmp_path)
    chunk = _wire(statesync.serve(sim._node("v1").store, 0, 0))
    sync = _sync(sim)
    bad = _wire(replace(chunk, chunks=2, chunk=1))
    for _ in range(5_000):
        assert sync.handle(0, bad) == []
    assert sync.counters == {"chunk_unasked": 5_000} and sync.parts == [] and sync.head is None
    sync.handle(0, chunk)
    for _ in range(1_000):  # after it is done: ignored, not even counted
        assert sync.handle(0, chunk) == [] and sync.on_timer(sync.timer) == []
    assert sync.done is not None and sync.counters == {"chunk_unasked": 5_000}


def test_snapshot_messages_at_and_past_their_bounds_on_the_wire():
    top = SnapshotChunk(1, MAX_SNAPSHOT_CHUNKS - 1, MAX_SNAPSHOT_CHUNKS, 0, (), bytes(SNAPSHOT_CHUNK))
    assert _wire(top) == top
    for bad in (replace(top, chunks=MAX_SNAPSHOT_CHUNKS + 1), replace(top, chunk=MAX_SNAPSHOT_CHUNKS),
                replace(top, chunks=0, chunk=0), replace(top, data=bytes(SNAPSHOT_CHUNK + 1)),
                replace(top, height=messages.MAX_HEIGHT)):
        with pytest.raises(messages.DecodeError):
            messages.decode(messages.encode(bad))
    frame = bytearray(messages.encode(replace(top, data=b"")))  # a proof count past MAX_RANGE
    frame[4 + 2 + 24:4 + 2 + 26] = struct.pack(">H", MAX_RANGE + 1)
    with pytest.raises(messages.DecodeError):
        messages.decode(bytes(frame))
    assert _wire(SnapshotRequest(5, MAX_SNAPSHOT_CHUNKS - 1)) == SnapshotRequest(5, MAX_SNAPSHOT_CHUNKS - 1)
    for bad in (SnapshotRequest(5, MAX_SNAPSHOT_CHUNKS), SnapshotRequest(messages.MAX_HEIGHT, 0)):
        with pytest.raises(messages.DecodeError):
            messages.decode(messages.encode(bad))


def _record_syncs(monkeypatch) -> list:
    """The StateSync objects the simulation makes from now on, in order."""
    made = []
    original = statesync.StateSync

    def recording(*args, **kwargs):
        made.append(original(*args, **kwargs))
        return made[-1]
    monkeypatch.setattr(statesync, "StateSync", recording)
    return made


def test_a_syncing_validator_passes_a_silent_peer_and_strangers_in_the_simulation(tmp_path, monkeypatch):
    """v0 (the first peer v3 asks) is down; frames with a bad snapshot arrive under the indices of
    peers not asked, of v3 itself and of no validator: v3 counts them, asks v1 after v0's
    silence, syncs from it and commits on the same chain."""
    made = _record_syncs(monkeypatch)
    sim = _net(tmp_path, blocks=25)
    newest = sim._node("v1").store.snapshots()[0][0]
    junk = _wire(replace(statesync.serve(sim._node("v1").store, 0, 0), data=b"AVKVSN1" + b"\xff" * 8))
    sim.state_sync("v3", tmp_path / "v3.db", sim.now + 1.0)
    sim.crashed.add("v0")
    for sender in (2, 3, 9, 65535):
        sim.inject(sim.now + 2.0, "v3", sender, junk)
    sim.inject(sim.now + 2.0, "v3", 1, messages.Vote(bytes(32), 1, 1, 1, bytes(64)))
    start = len(sim._node("v1").committed)
    sim.run(blocks=start + 15, max_ms=sim.now + 60_000, live=lambda node: node.name in ("v1", "v2", "v3"))
    v3 = sim._node("v3")
    assert v3.sync is None and made and made[0].done.peer == 1
    assert made[0].counters == {"chunk_unasked": 4, "peer_silent": 1}
    assert v3.store.first_height() == newest  # v1's newest snapshot when v3 asked
    ids = {b.height: b.id for b, _, _ in sim._node("v1").committed}
    assert v3.committed and all(ids.get(b.height, b.id) == b.id for b, _, _ in v3.committed)


def test_a_peer_answering_every_chunk_in_time_is_not_abandoned(tmp_path, monkeypatch):
    monkeypatch.setattr(statesync, "SNAPSHOT_CHUNK", 64)
    made = _record_syncs(monkeypatch)
    sim = _net(tmp_path, blocks=25)
    chunks = statesync.serve(sim._node("v1").store, 0, 0).chunks
    assert chunks >= 5
    sim.link = Link(delay_ms=(150.0, 150.0))  # a 300 ms round trip per chunk, well inside RETRY_MS
    sim.state_sync("v3", tmp_path / "v3.db", sim.now + 1.0)
    sim.run(blocks=10**6, max_ms=sim.now + 30_000, live=lambda node: True)
    sync = made[0]
    assert sync.counters.get("peer_silent", 0) == 0, sync.counters
    assert sim._node("v3").sync is None


def test_serving_a_snapshot_beside_large_blocks_never_builds_an_unencodable_frame(tmp_path):
    store = Store(tmp_path / "big.db")
    size = MAX_MESSAGE // 3
    txs = Txs(Packed(np.zeros(size, np.uint8), np.array([0, size], np.uint64)), np.zeros((1, 64), np.uint8))
    parent, qc, props = genesis_block(bytes(32)).id, QC(genesis_block(bytes(32)).id, 0, 0), []
    for h in (1, 2, 3):
        b = Block(h, h, parent, h % 4, bytes(32), bytes(32), txs.digest(), txs, qc)
        props.append(Proposal(b, bytes(64)))
        assert len(messages.encode(props[-1])) <= MAX_MESSAGE + 4  # each block is a legal frame
        store.add_committed(props[-1])
        parent, qc = b.id, QC(b.id, h, h, (0, 1, 2), bytes(192))
    store.add_snapshot(1, props[0].block.id, bytes(32), 0, bytes(SNAPSHOT_CHUNK + 10))
    sim = Simulation(n=4, seed=0, validation="software")
    core = sim.nodes[0].core
    core.snapshot_source = lambda height, chunk: statesync.serve(store, height, chunk)
    out = core.handle(1, SnapshotRequest(0, 0))
    for a in out:
        if isinstance(a, Send):
            messages.encode(a.msg)  # what every driver does with a Send


# ---- clearing snapshots: malformed bytes -------------------------------------------------------

class _Unbounded(Exception):
    pass


class _Counting(bytes):
    """A blob that counts the slices taken of it: a parse of n bytes needs O(n) of them."""
    limit = 0

    def __getitem__(self, k):
        _Counting.limit -= 1
        if _Counting.limit < 0:
            raise _Unbounded("the parser keeps slicing past the blob's end")
        return bytes.__getitem__(self, k)


def _clearing_state():
    sim = Simulation(n=4, seed=1, app="clearing", validation="software", txs_per_block=20)
    sim.load(60)
    sim.run(blocks=6)
    node = sim.nodes[0]
    b = node.core.committed
    return sim, snapshots.encode(node.core.app, node.core.states[b.id]), b.state_root


def test_a_clearing_snapshot_count_past_its_bytes_is_refused_at_once():
    sim, _, root = _clearing_state()
    app = sim._make_app(None)
    _Counting.limit = 10_000
    with pytest.raises(ValueError):
        snapshots.restore(app, _Counting(clearing_snapshot.MAGIC + b"\xff" * 8), root)


def test_mutated_clearing_snapshots_raise_only_value_error():
    sim, blob, root = _clearing_state()
    app = sim._make_app(None)
    assert snapshots.restore(app, blob, root).root == root
    rng = random.Random(5)
    odd = []
    for _ in range(1_500):
        d = bytearray(blob)
        op = rng.randrange(4)
        if op == 0:
            for _ in range(rng.randrange(1, 4)):
                d[rng.randrange(len(d))] ^= rng.randrange(1, 256)
        elif op == 1:
            d = d[:rng.randrange(len(d))]
        elif op == 2:
            p = rng.randrange(len(d) - 4)
            d[p:p + 4] = rng.randbytes(4)
        else:
            p = rng.randrange(len(d))
            d[p:p] = rng.randbytes(rng.randrange(1, 30))
        if bytes(d) == blob:
            continue
        _Counting.limit = 200_000
        try:
            snapshots.restore(app, _Counting(bytes(d)), root)
            odd.append(("accepted", op))
        except ValueError:  # (an _Unbounded parse is odd: it falls to the next clause)
            pass
        except Exception as exc:  # noqa: BLE001 - what escapes restore escapes StateSync.handle
            odd.append((type(exc).__name__, op))
    assert odd == []


def test_mutated_frames_raise_only_decode_error(tmp_path):
    sim = _net(tmp_path)
    store = sim._node("v1").store
    frames = [messages.encode(statesync.serve(store, 0, 0)), messages.encode(SnapshotRequest(20, 3)),
              messages.encode(messages.BlockResponse(tuple(store.committed_range(5, 3))))]
    rng = random.Random(11)
    for _ in range(3_000):
        f = bytearray(rng.choice(frames))
        for _ in range(rng.randrange(1, 4)):
            f[rng.randrange(4, len(f))] = rng.randrange(256)
        try:
            messages.decode(bytes(f))
        except messages.DecodeError:
            pass


# ---- snapshots in the store, restart ------------------------------------------------------------

def _durable(tmp_path, blocks=27, app="kv"):
    sim = Simulation(n=4, seed=1, app=app, validation="software", txs_per_block=3)
    for node in sim.nodes:
        sim.durable(node.name, tmp_path / f"{node.name}.db", snapshot_every=10)
    sim.load(blocks * 3)
    sim.run(blocks=blocks)
    return sim


def _restart(sim, name, app=None) -> Core:
    node = sim._node(name)
    app = app or sim._make_app(sim.genesis)
    start = snapshots.load(node.store, app)
    key = sim.keys[node.index]
    return Core(sim.cfg[node.index], lambda m: key.sign(m).signature, app, node.store.safety(), start.history,
                node.store.committed_range, start.base)


def _tamper(store: Store, how: str) -> int:
    """Damage the row of the newest snapshot (20); the height a restart should start from."""
    db = store.db
    if how == "root":
        db.execute("UPDATE snapshots SET state_root = ? WHERE height = 20", (bytes(32),))
    elif how == "truncated":
        db.execute("UPDATE snapshots SET blob = substr(blob, 1, length(blob) - 9) WHERE height = 20")
    elif how == "other_heights_blob":
        db.execute("UPDATE snapshots SET blob = ? WHERE height = 20", (store.snapshot_blob(10),))
    elif how == "block_not_stored":
        db.execute("UPDATE snapshots SET id = ? WHERE height = 20", (bytes(32),))
    elif how == "wrong_height":
        db.execute("UPDATE snapshots SET height = 21 WHERE height = 20")
    elif how == "newer_than_chain":
        top = store.top_height()
        db.execute("INSERT INTO snapshots SELECT ?, id, state_root, txs, blob FROM snapshots WHERE height = 20",
                   (top + 5,))
        return 20
    return 10


@pytest.mark.parametrize("how", ["root", "truncated", "other_heights_blob", "block_not_stored", "wrong_height",
                                 "newer_than_chain"])
def test_a_tampered_snapshot_row_falls_back_with_one_warning_to_the_same_state(tmp_path, caplog, how):
    sim = _durable(tmp_path)
    store = sim._node("v0").store  # v0 snapshots at phase 0: at 10 and 20
    top = store.top_height()
    want = _tamper(store, how)
    with caplog.at_level(logging.WARNING, logger="consensus.snapshots"):
        core = _restart(sim, "v0")
    warnings = [r for r in caplog.records if r.name == "consensus.snapshots"]
    assert len(warnings) == 1 and "is refused" in warnings[0].getMessage()
    assert core.replayed == top - want and core.committed.height == top
    live = sim._node("v1").committed[top - 1][0]
    assert core.committed.id == live.id and core.states[live.id].root == live.state_root


def test_a_restart_from_a_snapshot_refuses_the_same_transactions_as_a_validator_that_never_stopped(tmp_path):
    """Clearing: the mempool's staleness reads the committed state, so a validator restarted from
    a snapshot (every transaction ever given to it submitted again) holds exactly the mempool of
    one that never restarted, and refuses the same transactions."""
    from consensus.apps.clearing_load import ClearingLoad
    sim = Simulation(n=4, seed=1, app="clearing", validation="software", txs_per_block=10)
    for node in sim.nodes:
        sim.durable(node.name, tmp_path / f"{node.name}.db", snapshot_every=10)
    sim._clearing_load = ClearingLoad(4)
    batch = sim._clearing_load.take(400)
    for node in sim.nodes:
        assert not any(node.core.app.submit_many(batch))
    sim.run(blocks=25)
    live = sim._node("v0")  # phase 0: snapshots at 10 and 20
    top = live.store.top_height()
    assert [h for h, *_ in live.store.snapshots()][0] == 20 and top > 20
    app = sim._make_app(None)
    assert not any(app.submit_many(batch))  # before the restart: nothing committed yet as far as it knows
    core = _restart(sim, "v0", app)
    assert core.replayed == top - 20 and core.states[core.committed.id].root == live.core.committed.state_root
    assert set(app.mempool) == set(live.core.app.mempool)
    assert len(app.mempool) < len(batch)
    assert app.submit_many(batch) == live.core.app.submit_many(batch)


# ---- authenticated transport --------------------------------------------------------------------

def test_a_reflected_handshake_authenticates_nothing():
    """A fake listener at validator 1's address hands validator 0's own challenge back to it (as
    validator 1's) and relays its signed answer to validator 0's listener: a connection of
    validator 0 to itself is never authenticated, no frame is written or delivered."""
    async def scenario():
        addrs = addresses(2)
        got = []
        fake_at = ("127.0.0.1", addrs[1][1])
        reflected = []

        async def reflect(r1, w1):
            r0, w0 = await asyncio.open_connection(*addrs[0])
            hello = await r0.readexactly(38)
            w1.write(b"AVN1" + struct.pack(">H", 1) + hello[6:])
            answer = await r1.readexactly(102)
            w0.write(answer)
            reflected.append((r0, w0, w1, await r0.read(64)))

        fake = await asyncio.start_server(reflect, *fake_at)
        net = Network(0, [addrs[0], fake_at], lambda s, m: got.append((s, m)), seed=SEEDS[0], keys=KEYS[:2],
                      limits=Limits(handshake_timeout_s=1.0))
        await net.start()
        net.send(1, messages.BlockRequest(bytes(32)))
        await until(lambda: reflected)
        counts = (net.handshake_failures, net.peer_connections, net.duplicates)
        await net.stop()
        fake.close()
        return got, reflected[0][3], counts

    got, proof, (failures, peers, duplicates) = asyncio.run(scenario())
    assert got == [] and proof == b"" and peers == 0 and failures >= 1 and duplicates == 0


def test_a_dialer_claiming_the_listeners_own_index_is_refused():
    async def scenario():
        addrs, got, net = await listening()
        reader, writer = await asyncio.open_connection(*addrs[0])
        hello = await reader.readexactly(38)
        writer.write(b"AVN1" + struct.pack(">H", 0) + hello[6:] + bytes(64) + messages.encode(messages.BlockRequest(bytes(32))))
        was_closed = await closed(reader)
        await net.stop()
        return got, was_closed, net.handshake_failures, net.peer_connections

    assert asyncio.run(scenario()) == ([], True, 1, 0)


def test_a_frame_of_exactly_max_message_is_delivered_and_the_connection_goes_on():
    body = messages.encode(Proposal(genesis_block(bytes(32)), bytes(64)))
    pad = MAX_MESSAGE - (len(body) - 4) - 4  # (- 4: the one transaction's length)
    txs = Txs(Packed(np.zeros(pad, np.uint8), np.array([0, pad], np.uint64)), np.zeros((0, 64), np.uint8))
    big = Proposal(replace(genesis_block(bytes(32)), txs=txs), bytes(64))
    frame = messages.encode(big)
    assert len(frame) == MAX_MESSAGE + 4
    with pytest.raises(ValueError):
        messages.encode(replace(big, signature=bytes(65)))

    async def scenario():
        addrs, got, net = await listening()
        reader, writer = await authenticated(addrs[0], 1)
        writer.write(frame)
        writer.write(messages.encode(messages.BlockRequest(bytes(32))))
        await until(lambda: len(got) == 2)
        await net.stop()
        return got, net.dropped, net.oversized

    got, dropped, oversized = asyncio.run(scenario())
    assert [type(m).__name__ for _, m in got] == ["Proposal", "BlockRequest"] and (dropped, oversized) == (0, 0)
    assert len(got[0][1].block.txs.bodies.data) == pad


def test_a_peer_at_its_rate_limit_loses_nothing_and_keeps_its_connection():
    async def scenario():
        addrs, got, net = await listening(Limits(inbound_frames_per_s=200.0))
        reader, writer = await authenticated(addrs[0], 1)
        for i in range(300):
            writer.write(messages.encode(messages.BlockRequest(struct.pack(">I", i) * 8)))
        await until(lambda: len(got) == 300)
        counts = (net.throttled > 0, net.dropped, net.peer_connections)
        await net.stop()
        return got, counts

    got, counts = asyncio.run(scenario())
    assert [struct.unpack(">I", m.block_id[:4])[0] for _, m in got] == list(range(300))
    assert counts == (True, 0, 1)


def test_half_open_strangers_do_not_keep_a_validator_out():
    """max_pending strangers each send all but the last byte of a dialer's hello; a real validator
    dialing afterwards still connects and delivers."""
    async def scenario():
        addrs, got, net = await listening(Limits(max_pending=4, handshake_timeout_s=30.0))
        held = []
        for _ in range(4):
            r, w = await asyncio.open_connection(*addrs[0])
            await r.readexactly(38)
            w.write(b"AVN1" + struct.pack(">H", 1) + bytes(95))
            held.append((r, w))
        await until(lambda: net.pending_connections == 4)
        dialer = network(1, addrs, [])
        await dialer.start()
        dialer.send(0, messages.BlockRequest(bytes(32)))
        await until(lambda: got)
        evicted = net.pending_evicted
        await dialer.stop()
        await net.stop()
        return got, evicted

    got, evicted = asyncio.run(scenario())
    assert [s for s, _ in got] == [1] and evicted >= 1
