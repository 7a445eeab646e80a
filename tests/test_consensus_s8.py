"""Session 8 review of consensus robustness: the simulator's flood mode with two flooders, a slow
Byzantine state-sync server, and the handshake work a validator's own address can force. Each
test failed before its fix. Work is counted, never timed: the simulation's clock is simulated,
and the transport's budgets run on a clock the test moves."""
import asyncio
import os
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from consensus import messages, statesync  # noqa: E402
from consensus.core import Core  # noqa: E402
from consensus.messages import SnapshotChunk, SnapshotRequest  # noqa: E402
from consensus.net import Limits  # noqa: E402
from consensus.sim import Link, Simulation  # noqa: E402
from test_byzantine import Byzantine  # noqa: E402
from test_consensus import assert_safe  # noqa: E402


# ---- 3. the simulator's flood mode with two flooders ------------------------------------------

class Flooder(Byzantine):
    modes = ("flood",)


def test_two_flooders_replaying_each_other_keep_the_simulation_bounded():
    """Validators 1 and 2 of 7 flood (every message they handle answered with forged votes,
    timeouts, requests and a replay to everyone): each replays the other's flood, so the events
    grew fivefold every 10 ms of simulated time (1.4 million at 70 ms, then out of memory). The
    simulation now applies the transport's bounds to each link (a receiver reads a sender at
    inbound_frames_per_s, beyond queue_frames waiting a frame is dropped): the events stay under
    the 12 flooding links' queues plus the honest traffic, floods are shed and counted, the honest
    five commit on one chain meanwhile, and everyone goes on once the flood stops."""
    Byzantine.active = True
    sim = Simulation(n=7, seed=1, link=Link((1.0, 25.0)),
                     make_core=lambda cfg, sign, app, *rest: (Flooder if cfg.me in (1, 2) else Core)(cfg, sign, app,
                                                                                                     *rest))
    sim.load(300)
    honest = {"v0", "v3", "v4", "v5", "v6"}
    bound = 2 * 6 * Limits().queue_frames + 5_000  # 2 flooders x 6 peers' queues, and the honest traffic
    peak = [0]

    def check(s):
        peak[0] = max(peak[0], len(s.queue))
        assert len(s.queue) <= bound, (s.now, len(s.queue))
    for t in range(5, 1_000, 5):
        sim.at(float(t), check)
    try:
        sim.run(blocks=10**9, max_ms=1_000.0, live=lambda node: node.name in honest)
        during = {n.name: len(n.committed) for n in sim.nodes}
        assert_safe(sim, honest)
        Byzantine.active = False
        sim.run(blocks=max(during.values()) + 10, max_ms=60_000.0, live=lambda node: True)
    finally:
        Byzantine.active = True
    assert min(during[x] for x in honest) >= 3, during
    assert sim.overflow > 0 and peak[0] <= bound
    assert all(len(n.committed) >= during[n.name] + 10 for n in sim.nodes)
    assert_safe(sim)
    assert all(n.core.counters["input_error"] == 0 for n in sim.nodes if n.name in honest)


# ---- 2. a slow Byzantine state-sync server ------------------------------------------------------

def _slow(sim, names, ms: float) -> list:
    """The validators `names` answer every snapshot request `ms` late (a Byzantine server just
    inside the 2 s silence timer, or an honest one on a slow link); returns the chunks they sent,
    as (name, chunk)."""
    sent, deliver = [], sim._deliver

    def slow(src, to, msg):
        if src.name in names and isinstance(msg, SnapshotChunk):
            sent.append((src.name, msg.chunk))
            sim.at(sim.now + ms, lambda s: deliver(src, to, msg))
        else:
            deliver(src, to, msg)
    sim._deliver = slow
    return sent


def test_a_peer_serving_its_snapshot_just_inside_the_timer_is_left_by_its_deadline(tmp_path, monkeypatch):
    """v0, the first peer v3 asks, serves every chunk 1.9 s late (inside RETRY_MS, so never
    'silent'): v3 took its whole snapshot from it, chunks x 1.9 s. Now v0's snapshot is due within
    RETRY_MS + (chunks - 1) x CHUNK_MS; past it v0 is left (peer_slow), v3 takes v1's snapshot (of
    another height) and joins the chain. Requests to v0 are counted: it served fewer chunks than
    its snapshot has, and v3 was done before v0's slow snapshot would have been."""
    from test_sync_attacks import _net, _record_syncs
    monkeypatch.setattr(statesync, "SNAPSHOT_CHUNK", 64)
    made = _record_syncs(monkeypatch)
    sim = _net(tmp_path, blocks=25)
    chunks = statesync.serve(sim._node("v0").store, 0, 0).chunks
    assert chunks >= 6
    sent = _slow(sim, {"v0"}, 1_900.0)
    start = sim.now + 1.0
    finished = []
    sim.state_sync("v3", tmp_path / "v3.db", start)

    def watch(s):
        if s._node("v3").sync is None and not finished:
            finished.append(s.now)
    for t in range(0, 30_000, 50):
        sim.at(start + t, watch)
    first = len(sim._node("v1").committed)
    sim.run(blocks=first + 10, max_ms=start + 60_000, live=lambda node: node.name != "v0")
    sync = made[0]
    assert sync.done is not None and sync.done.peer != 0, sync.counters
    assert sync.counters.get("peer_slow") == 1 and "peer_silent" not in sync.counters, sync.counters
    deadline = statesync.RETRY_MS + (chunks - 1) * statesync.CHUNK_MS
    # chunk 0's ask, then one ask per chunk arriving before the deadline (which runs from chunk 0's arrival)
    assert len(sent) < chunks and len(sent) <= deadline // 1_900.0 + 2
    assert finished and finished[0] - start < chunks * 1_900.0
    ids = {b.height: b.id for b, _, _ in sim._node("v1").committed}
    v3 = sim._node("v3")
    assert v3.committed and all(ids.get(b.height, b.id) == b.id for b, _, _ in v3.committed)


def test_honest_peers_all_slower_than_the_first_rounds_deadline_are_taken_in_a_later_round(tmp_path, monkeypatch):
    """Every peer serves chunks 900 ms late (honest, on a slow link): the first round's deadline
    (500 ms a chunk) leaves each of the three; the second round's (1 s a chunk) fits, and v3 takes
    the first peer's snapshot: a slow network is slowed, never locked out. (The peers keep every
    snapshot here: with KEPT = 2 and a snapshot every 10 blocks, a transfer this slow would outlive
    the snapshot it fetches, and the peer would go silent on it.)"""
    from consensus import snapshots
    from test_sync_attacks import _net, _record_syncs
    monkeypatch.setattr(statesync, "SNAPSHOT_CHUNK", 64)
    monkeypatch.setattr(snapshots, "KEPT", 1_000)
    made = _record_syncs(monkeypatch)
    sim = _net(tmp_path, blocks=25)
    chunks = statesync.serve(sim._node("v0").store, 0, 0).chunks
    assert chunks * 900.0 > statesync.RETRY_MS + (chunks - 1) * statesync.CHUNK_MS
    assert chunks * 900.0 < statesync.RETRY_MS + (chunks - 1) * 2 * statesync.CHUNK_MS
    _slow(sim, {"v0", "v1", "v2"}, 900.0)
    sim.state_sync("v3", tmp_path / "v3.db", sim.now + 1.0)
    first = len(sim._node("v1").committed)
    sim.run(blocks=first + 5, max_ms=sim.now + 120_000, live=lambda node: True)
    sync = made[0]
    assert sync.done is not None and sync.done.peer == 0 and sync.tries == 4
    # (a left peer's chunk already on its way arrives unasked)
    assert sync.counters["peer_slow"] == 3 and set(sync.counters) <= {"peer_slow", "chunk_unasked"}, sync.counters
    assert sim._node("v3").sync is None and len(sim._node("v3").committed) >= 1


def test_a_peers_deadline_cuts_its_asks_short_and_leaves_it_for_the_next_peer(tmp_path, monkeypatch):
    """The deadline on the clock StateSync is given: an ask's timer runs out at the deadline at
    the latest, a chunk arriving after it is not taken (peer_slow, the next peer asked, the chunks
    held dropped), and the next peer's snapshot has a deadline of its own, from its chunk 0."""
    from dataclasses import replace
    from test_sync_attacks import _net, _wire
    monkeypatch.setattr(statesync, "SNAPSHOT_CHUNK", 64)
    sim = _net(tmp_path, blocks=25)
    now = [1_000.0]
    sync = statesync.StateSync(sim.cfg[3], sim._make_app(sim.genesis), clock=lambda: now[0])
    sync.start()
    head = statesync.serve(sim._node("v0").store, 0, 0)
    (ask, timer) = sync.handle(0, _wire(head))
    due = 1_000.0 + statesync.RETRY_MS + (head.chunks - 1) * statesync.CHUNK_MS
    assert sync.due == due and ask.msg == SnapshotRequest(head.height, 1) and timer.delay_ms == statesync.RETRY_MS
    now[0] = due - 600.0
    (ask, timer) = sync.handle(0, _wire(statesync.serve(sim._node("v0").store, head.height, 1)))
    assert ask.msg.chunk == 2 and timer.delay_ms == 600.0   # cut to the deadline
    now[0] = due + 1.0                                      # chunk 2, a millisecond late
    (ask, _) = sync.handle(0, _wire(statesync.serve(sim._node("v0").store, head.height, 2)))
    assert sync.counters == {"peer_slow": 1} and ask.to == 1 and ask.msg == SnapshotRequest(0, 0)
    assert sync.parts == [] and sync.due is None
    (ask, timer) = sync.handle(1, _wire(statesync.serve(sim._node("v1").store, 0, 0)))
    assert sync.due == now[0] + statesync.RETRY_MS + (sync.head.chunks - 1) * statesync.CHUNK_MS
    now[0] += statesync.RETRY_MS                            # v1 silent for an ask, before its deadline
    assert sync.on_timer(timer.view)[0].to == 2 and sync.counters == {"peer_slow": 1, "peer_silent": 1}
    bad = replace(head, data=bytes(64))
    assert sync.handle(0, _wire(bad)) == [] and sync.counters["chunk_unasked"] == 1


# ---- 1. handshake work from a validator's own address ---------------------------------------------

from consensus.localnet import _free_ports  # noqa: E402
from consensus.net import Network  # noqa: E402
from nacl.signing import SigningKey  # noqa: E402
from test_net_auth import KEYS, SEEDS, SAFETY_S, closed, transcript, until  # noqa: E402

HOST, OTHER = "127.0.0.1", "127.0.0.3"  # validators 0 and 1 are given at HOST, validator 2 at OTHER


async def _hello(addr, index: int, seed: bytes | None, source: str = HOST):
    """A connection from `source` that sends a dialer's hello claiming `index`, signed with
    `seed` (None: 64 random bytes); returns (reader, writer)."""
    reader, writer = await asyncio.open_connection(*addr, local_addr=(source, 0))
    hello = await reader.readexactly(38)
    mine = os.urandom(32)
    signature = os.urandom(64) if seed is None else \
        SigningKey(seed).sign(transcript(b"dialer", hello[6:], mine, index, 0)).signature
    writer.write(b"AVN1" + struct.pack(">H", index) + mine + signature)
    return reader, writer


async def _proved(reader) -> bool:
    """Whether the listener answered with its proof (a refused handshake is closed without one)."""
    try:
        async with asyncio.timeout(SAFETY_S):
            return len(await reader.readexactly(64)) == 64
    except asyncio.IncompleteReadError:
        return False


def _listener(limits: Limits = Limits()):
    ports = _free_ports(3)
    addrs = [(HOST, ports[0]), (HOST, ports[1]), (OTHER, ports[2])]
    got = []
    net = Network(0, addrs, lambda sender, msg: got.append((sender, msg)), seed=SEEDS[0], keys=KEYS, limits=limits)
    return addrs, got, net


def test_handshakes_from_a_validators_address_are_bounded_per_claimed_validator():
    """The validators' addresses were not limited at all: from one (a Byzantine validator's, or a
    stranger's on a validator's host), 1,500 forged hellos a second each cost a signature check,
    and a validator's own key 600 full handshakes a second (a check and a signature each, and its
    own connection replaced). Now each validator claimed from its own address has handshake_burst
    checks at once and handshakes_per_s a second after (the clock is the test's); claims of a
    validator not given at that address share one more bucket; a claim over its budget is closed
    unchecked (handshakes_refused, and handshake_failures). The flood claiming validator 1 does not hold up validator
    2 at its own address, nor claims of validator 2 from HOST (not its address: their own shared
    bucket), nor validator 1's live connection, and validator 1 gets in again once its budget
    refills."""
    now = [50.0]

    async def scenario():
        addrs, got, net = _listener(Limits(handshakes_per_s=4.0, handshake_burst=6))
        net.clock = lambda: now[0]
        await net.start()
        live_r, live_w = await _hello(addrs[0], 1, SEEDS[1])
        assert await _proved(live_r)
        checked = []
        for seed in (None, SEEDS[1]):  # forged, then validator 1's own key: one budget
            flood = [await _hello(addrs[0], 1, seed) for _ in range(10)]
            checked.append([await _proved(r) for r, _ in flood])
            for _, w in flood:
                w.close()
        refused = net.handshakes_refused
        r2, w2 = await _hello(addrs[0], 2, SEEDS[2], OTHER)     # validator 2, at its own address
        other = [await _hello(addrs[0], 2, None) for _ in range(7)]  # validator 2 claimed from HOST
        other_checked = [await closed(r) for r, _ in other]
        ok2 = await _proved(r2)
        now[0] += 1.0
        r1, w1 = await _hello(addrs[0], 1, SEEDS[1])            # validator 1, a second later
        ok1 = await _proved(r1)
        live_w.write(messages.encode(messages.BlockRequest(bytes(32))))
        await until(lambda: got)
        counts = (net.handshakes_refused, net.handshake_failures, net.peer_connections_replaced)
        for w in [w2, w1, live_w] + [w for _, w in other]:
            w.close()
        await net.stop()
        return checked, refused, ok2, other_checked, ok1, counts, got

    checked, refused, ok2, other_checked, ok1, counts, got = asyncio.run(scenario())
    # the live connection took one of validator 1's 6 tokens: 5 forged hellos checked (and
    # failed), the other 5 and all 10 validly signed ones refused unchecked
    assert checked == [[False] * 10, [False] * 10] and refused == 15
    assert ok2 and all(other_checked)
    assert ok1 and [s for s, _ in got] == [1]
    # 7 claims of validator 2 from HOST: 6 checked (their own bucket), 1 refused
    assert counts[0] == 16 and counts[1] == 5 + 15 + 6 + 1 and counts[2] == 0


def test_a_flood_from_a_validators_address_cannot_evict_another_validators_handshake():
    """Validators' addresses were exempt from pending_per_address: idle connections from one
    (here HOST, validators 0 and 1's) filled max_pending and evicted, oldest first, the pending
    handshake of validator 2 dialing from its own address. Now a validator's address holds at
    most pending_per_address x (its validators + 1) and evicts its own oldest past it."""
    async def scenario():
        addrs, got, net = _listener(Limits(max_pending=16, pending_per_address=4, handshake_timeout_s=30.0))
        await net.start()
        reader, writer = await asyncio.open_connection(*addrs[0], local_addr=(OTHER, 0))
        hello = await reader.readexactly(38)  # validator 2's handshake, under way
        idle = [await asyncio.open_connection(*addrs[0], local_addr=(HOST, 0)) for _ in range(40)]
        for r, _ in idle[-12:]:
            await r.readexactly(38)
        await until(lambda: net.pending_connections == 13)
        mine = os.urandom(32)
        signed = SigningKey(SEEDS[2]).sign(transcript(b"dialer", hello[6:], mine, 2, 0)).signature
        writer.write(b"AVN1" + struct.pack(">H", 2) + mine + signed)
        ok = await _proved(reader)
        writer.write(messages.encode(messages.BlockRequest(bytes(32))))
        await until(lambda: got)
        counts = (net.pending_address_evicted, net.pending_evicted)
        for _, w in idle + [(reader, writer)]:
            w.close()
        await net.stop()
        return ok, counts, got

    ok, counts, got = asyncio.run(scenario())
    assert ok and [s for s, _ in got] == [2]
    assert counts == (40 - 12, 0)  # HOST's room: 4 x (2 validators + 1)
