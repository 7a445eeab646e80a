"""The validators' TCP transport against strangers (issue 22): the handshake binds a connection
to a validator's key, and every bound of consensus/net.Limits holds. The handshake is written out
here from docs/FRAME.md, apart from net.py, so the two are checked against each other."""
import asyncio
import logging
import os
import struct

import numpy as np
import pytest
from nacl.signing import SigningKey, VerifyKey

from accel import Packed
from consensus import messages
from consensus.localnet import _free_ports
from consensus.net import Limits, Network

SEEDS = [bytes([i + 1]) * 32 for i in range(3)]
KEYS = [bytes(SigningKey(s).verify_key) for s in SEEDS]
SAFETY_S = 5.0  # a safety limit on waits for what should happen at once, never a measurement


def request(i: int) -> messages.BlockRequest:
    return messages.BlockRequest(bytes([i]) * 32)


def transcript(role, listener_challenge, dialer_challenge, dialer, listener):
    return (b"AV-NET-HANDSHAKE-" + role + listener_challenge + dialer_challenge + struct.pack(">HH", dialer, listener)
            + KEYS[dialer] + KEYS[listener])


async def until(condition) -> None:
    async with asyncio.timeout(SAFETY_S):
        while not condition():
            await asyncio.sleep(0.005)


async def closed(reader: asyncio.StreamReader) -> bool:
    """Whether the other side closed the connection (all it sent is read and dropped)."""
    async with asyncio.timeout(SAFETY_S):
        try:
            while await reader.read(1 << 16):
                pass
        except ConnectionError:
            pass
    return True


async def dial(addr, index: int, seed: bytes, listener: int = 0):
    """A dialer's side of the handshake as docs/FRAME.md gives it; returns the connection and the
    bytes it sent."""
    reader, writer = await asyncio.open_connection(*addr)
    hello = await reader.readexactly(38)
    assert hello[:4] == b"AVN1" and struct.unpack(">H", hello[4:6])[0] == listener
    mine = os.urandom(32)
    signed = SigningKey(seed).sign(transcript(b"dialer", hello[6:], mine, index, listener)).signature
    sent = b"AVN1" + struct.pack(">H", index) + mine + signed
    writer.write(sent)
    return reader, writer, hello[6:], mine, sent


async def authenticated(addr, index: int, listener: int = 0):
    """A connection of validator `index` that checked the listener's proof."""
    reader, writer, theirs, mine, _ = await dial(addr, index, SEEDS[index], listener)
    proof = await reader.readexactly(64)
    VerifyKey(KEYS[listener]).verify(transcript(b"listener", theirs, mine, index, listener), proof)
    return reader, writer


def network(me: int, addrs, got: list, limits: Limits = Limits(), count: int = 3) -> Network:
    return Network(me, addrs[:count], lambda sender, msg: got.append((sender, msg)), seed=SEEDS[me],
                   keys=KEYS[:count], limits=limits)


def addresses(count: int = 3):
    return [("127.0.0.1", p) for p in _free_ports(count)]


async def listening(limits: Limits = Limits()):
    """(addresses, what it delivers, the network): validator 0 of three, listening."""
    addrs, got = addresses(), []
    net = network(0, addrs, got, limits)
    await net.start()
    return addrs, got, net


def test_keys_are_required_and_checked():
    addrs = addresses()
    with pytest.raises(TypeError):
        Network(0, addrs, lambda s, m: None)
    with pytest.raises(ValueError, match="seed's public key is not keys\\[0\\]"):
        Network(0, addrs, lambda s, m: None, seed=SEEDS[1], keys=KEYS)
    with pytest.raises(ValueError, match="32-byte Ed25519 public key"):
        Network(0, addrs, lambda s, m: None, seed=SEEDS[0], keys=[KEYS[0], b"short", KEYS[2]])


def test_two_validators_with_keys_exchange_messages_both_ways():
    async def scenario():
        addrs = addresses(2)
        got0, got1 = [], []
        a, b = network(0, addrs, got0, count=2), network(1, addrs, got1, count=2)
        await a.start()
        await b.start()
        a.send(1, request(1))
        b.send(0, request(2))
        b.broadcast(request(3))
        await until(lambda: len(got0) == 2 and len(got1) == 1)
        await a.stop()
        await b.stop()
        return got0, got1, a, b

    got0, got1, a, b = asyncio.run(scenario())
    assert [(s, m.block_id[0]) for s, m in got0] == [(1, 2), (1, 3)]
    assert [(s, m.block_id[0]) for s, m in got1] == [(0, 1)]
    assert a.handshake_failures == b.handshake_failures == a.handshake_timeouts == b.handshake_timeouts == 0


def test_strangers_deliver_nothing():
    """No key (not this protocol), a key that is not the claimed validator's, a validator's key
    claiming another's index, a handshake replayed from another connection, and one relayed from
    a validator that thought it dialed another listener: each is closed and counted, and frames
    sent after it are never delivered."""
    async def scenario():
        addrs, got, net = await listening()
        frame = messages.encode(request(9))
        attempts = []

        reader, writer = await asyncio.open_connection(*addrs[0])  # no key at all
        await reader.readexactly(38)
        writer.write(b"GET / HTTP/1.1\r\n" + bytes(86) + frame)
        attempts.append((reader, writer))

        reader, writer, *_ = await dial(addrs[0], 1, os.urandom(32))  # a key that is not validator 1's
        writer.write(frame)
        attempts.append((reader, writer))

        reader, writer, *_ = await dial(addrs[0], 1, SEEDS[2])  # validator 2's key, index 1
        writer.write(frame)
        attempts.append((reader, writer))

        honest_reader, honest, *_, recorded = await dial(addrs[0], 1, SEEDS[1])  # replayed elsewhere
        reader, writer = await asyncio.open_connection(*addrs[0])
        await reader.readexactly(38)
        writer.write(recorded + frame)
        attempts.append((reader, writer))

        # Relayed: validator 1 dials "validator 2" at a stranger's address; the stranger hands it
        # validator 0's challenge and passes its signed answer on to validator 0.
        async def relay(r1, w1):
            r0, w0 = await asyncio.open_connection(*addrs[0])
            challenge = (await r0.readexactly(38))[6:]
            w1.write(b"AVN1" + struct.pack(">H", 2) + challenge)
            w0.write(await r1.readexactly(102) + frame)
            attempts.append((r0, w0))
        stranger_at = ("127.0.0.1", _free_ports(1)[0])
        stranger = await asyncio.start_server(relay, *stranger_at)
        victim = network(1, [addrs[0], addrs[1], stranger_at], [])
        await victim.start()
        await until(lambda: len(attempts) == 5)

        results = [await closed(r) for r, _ in attempts]  # writers kept: a dropped one closes
        failures = net.handshake_failures
        await victim.stop()
        stranger.close()
        honest.close()
        await net.stop()
        return got, results, failures

    got, results, failures = asyncio.run(scenario())
    assert got == [] and results == [True] * 5 and failures == 5


def test_a_connection_that_never_finishes_the_handshake_is_closed():
    async def scenario():
        addrs, got, net = await listening(Limits(handshake_timeout_s=0.05))
        silent, kept = await asyncio.open_connection(*addrs[0])  # kept: a dropped writer closes
        partial, w = await asyncio.open_connection(*addrs[0])
        w.write(b"AVN1\x00\x01" + bytes(20))  # a third of a dialer's hello
        done = [await closed(silent), await closed(partial)]
        await net.stop()
        return done, net.handshake_timeouts, net.pending_connections

    assert asyncio.run(scenario()) == ([True, True], 2, 0)


def test_an_impossible_length_prefix_closes_the_connection_before_any_payload():
    """The prefix alone, no payload after it: the connection closes without waiting for the
    64 MiB + 1 it announces. Malformed frames with possible lengths are dropped and the
    connection goes on (the message after them arrives)."""
    async def scenario():
        addrs, got, net = await listening()
        good = messages.encode(request(1))
        future = good[:4] + b"\x09" + good[5:]
        reader, writer = await authenticated(addrs[0], 1)
        writer.write(struct.pack(">I", 3) + b"abc" + future + struct.pack(">I", 8) + b"\x01\x04" + bytes(6) + good)
        await until(lambda: got)
        r2, w2 = await authenticated(addrs[0], 2)
        w2.write(struct.pack(">I", messages.MAX_MESSAGE + 1))
        was_closed = await closed(r2)
        writer.write(good)
        await until(lambda: len(got) == 2)
        await net.stop()
        return got, net.dropped, net.oversized, was_closed

    got, dropped, oversized, was_closed = asyncio.run(scenario())
    assert [(s, m.block_id) for s, m in got] == [(1, request(1).block_id)] * 2
    assert dropped == 4 and oversized == 1 and was_closed


def test_connection_limits_hold():
    """Past max_pending unauthenticated connections the oldest is closed, so strangers that sit
    on the port cannot keep a validator out; past per_peer connections of one validator its
    oldest is closed."""
    async def scenario():
        addrs, got, net = await listening(Limits(max_pending=3, per_peer=2))
        idle = [await asyncio.open_connection(*addrs[0]) for _ in range(5)]  # kept: a dropped writer closes
        for reader, _ in idle:
            await reader.readexactly(38)  # accepted and challenged
        first_two_closed = [await closed(r) for r, _ in idle[:2]]
        pending = net.pending_connections
        # the first evicts an idle stranger; once authenticated it no longer counts as pending
        conns = [await authenticated(addrs[0], 1) for _ in range(3)]
        oldest_closed = await closed(conns[0][0])
        conns[2][1].write(messages.encode(request(5)))
        await until(lambda: got)
        counts = (net.pending_evicted, net.pending_connections, net.peer_connections_replaced,
                  net.peer_connections)
        await net.stop()
        return first_two_closed, pending, oldest_closed, counts, got

    first_two_closed, pending, oldest_closed, counts, got = asyncio.run(scenario())
    assert first_two_closed == [True, True] and pending == 3 and oldest_closed
    assert counts == (3, 2, 1, 2)
    assert [s for s, _ in got] == [1]


def test_outgoing_bytes_per_peer_are_bounded():
    """With the default limits: 100 responses of 1 MiB for a peer that reads nothing (the
    reflection of block requests) queue at most queue_bytes, not QUEUE_LIMIT frames' worth; the
    rest is dropped and counted. An empty queue takes a frame larger than the bound."""
    txs = messages.Txs(Packed(np.zeros(1 << 20, np.uint8), np.array([0, 1 << 20], np.uint64)),
                       np.zeros((1, 64), np.uint8))
    big = messages.Proposal(messages.Block(1, 1, bytes(32), 0, bytes(32), bytes(32), bytes(32), txs,
                                           messages.QC(bytes(32), 0, 0)), bytes(64))
    frame = len(messages.encode(messages.BlockResponse((big,))))

    async def scenario():
        net = network(0, addresses(), [])  # not started: nothing leaves the queues
        for _ in range(100):
            net.send(1, messages.BlockResponse((big,)))
        small = Network(0, addresses(), lambda s, m: None, seed=SEEDS[0], keys=KEYS, limits=Limits(queue_bytes=1000))
        small.send(2, messages.BlockResponse((big,)))
        return net, small

    net, small = asyncio.run(scenario())
    fit = Limits().queue_bytes // frame
    assert net.queued_bytes[1] == fit * frame <= Limits().queue_bytes
    assert net.overflow == 100 - fit and net.overflow_bytes == (100 - fit) * frame
    assert small.queued_bytes[2] == frame and small.overflow == 0


def test_a_validator_over_its_rate_is_read_later_and_the_others_are_not_held_up():
    async def scenario():
        addrs, got, net = await listening(Limits(inbound_frames_per_s=0.2))  # a burst of 0.2 frames, then one per 5 s
        _, w1 = await authenticated(addrs[0], 1)
        _, w2 = await authenticated(addrs[0], 2)
        w1.write(messages.encode(request(1)) * 3)
        await until(lambda: len(got) == 1)
        w2.write(messages.encode(request(2)))
        await until(lambda: len(got) == 2)
        await net.stop()
        return [s for s, _ in got], net.throttled

    senders, throttled = asyncio.run(scenario())
    assert senders == [1, 2] and throttled >= 1


def test_two_connections_with_one_key_are_logged_and_counted(caplog):
    """Two live connections that both proved validator 1's key, and one that proved the
    receiver's own key: logged (once a minute) and counted; validator 1's frames still arrive
    (they are signed: the index decides nothing)."""
    async def scenario():
        addrs, got, net = await listening()
        frame = messages.encode(request(1))
        writers = [(await authenticated(addrs[0], 1))[1] for _ in range(2)]
        for n, w in enumerate(writers * 2):
            w.write(frame)
            await until(lambda: len(got) == n + 1)
        own, _ = await authenticated(addrs[0], 0)
        own_closed = await closed(own)
        await net.stop()
        return got, net.duplicates, own_closed

    with caplog.at_level(logging.WARNING, logger="consensus.net"):
        got, duplicates, own_closed = asyncio.run(scenario())
    assert [s for s, _ in got] == [1, 1, 1, 1] and duplicates == 4 and own_closed
    text = caplog.text
    assert "two validators run with index 1?" in text and "holds this validator's key (index 0)" in text
    assert text.count("two validators run with index 1?") == 1


def test_a_dialer_writes_nothing_to_a_listener_that_cannot_prove_its_key():
    """A stranger at validator 1's address (it knows the handshake, not the key): validator 0
    never sends it a frame and counts the failed handshakes."""
    async def scenario():
        addrs = addresses()
        received = []

        async def impostor(reader, writer):
            writer.write(b"AVN1" + struct.pack(">H", 1) + os.urandom(32))
            await reader.readexactly(102)
            writer.write(os.urandom(64))
            received.append(await reader.read(1 << 16))

        server = await asyncio.start_server(impostor, *addrs[1])
        net = network(0, addrs, [])
        await net.start()
        net.send(1, request(1))
        await until(lambda: net.handshake_failures >= 2)
        await net.stop()
        server.close()
        return received

    assert set(asyncio.run(scenario())) <= {b""}


def test_a_stranger_flood_delivers_nothing_and_the_honest_link_goes_on():
    """2 s of the flood bench/stranger_flood.py runs for a minute, in process: garbage, handshakes
    with random signatures, the old opening with a 64 MiB length prefix or with well-formed
    unsigned frames, and more idle connections than max_pending. Validator 0 delivers only
    validator 1's messages, every one of them, and validator 1 gets validator 0's."""
    forged = b"".join(messages.encode(request(200 + i)) for i in range(50))
    payloads = [lambda: os.urandom(4096), lambda: b"AVN1\x00\x01" + os.urandom(96),
                lambda: struct.pack(">HI", 1, messages.MAX_MESSAGE) + os.urandom(4096),
                lambda: struct.pack(">H", 1) + forged, lambda: b""]

    async def stranger(addr, payload, held: list):
        try:
            reader, writer = await asyncio.open_connection(*addr)
        except OSError:
            return
        writer.write(payload())
        held.append(writer)  # kept until the validator closes it: a dropped writer closes

    async def scenario():
        addrs = addresses(2)
        got0, got1 = [], []
        limits = Limits(handshake_timeout_s=0.2, max_pending=16)
        a, b = network(0, addrs, got0, limits, count=2), network(1, addrs, got1, limits, count=2)
        await a.start()
        await b.start()
        held, pending, sent = [], [], 0
        loop = asyncio.get_running_loop()
        end = loop.time() + 2.0
        while loop.time() < end:
            for payload in payloads:
                await stranger(addrs[0], payload, held)
            pending.append(a.pending_connections)
            b.send(0, request(sent % 100))
            a.send(1, request(100 + sent % 100))
            sent += 1
            await asyncio.sleep(0.01)
        await until(lambda: len(got0) == sent and len(got1) == sent)
        await until(lambda: a.pending_connections == 0)  # what was left pending times out
        closed_strangers = a.handshake_failures + a.handshake_timeouts + a.pending_evicted
        for w in held:
            w.close()
        await a.stop()
        await b.stop()
        return got0, got1, sent, max(pending), closed_strangers

    got0, got1, sent, most_pending, closed_strangers = asyncio.run(scenario())
    assert [(s, m.block_id[0]) for s, m in got0] == [(1, i % 100) for i in range(sent)]
    assert [(s, m.block_id[0]) for s, m in got1] == [(0, 100 + i % 100) for i in range(sent)]
    # every stranger's connection closed by validator 0 (at least: validator 1's own dials may
    # have been evicted or timed out too while the flood filled max_pending)
    assert most_pending <= 16 and closed_strangers >= len(payloads) * sent


def test_a_message_too_large_to_frame_is_logged_and_counted_not_raised(caplog):
    """A message this validator built too large for a frame (its own bug, e.g. a response that
    outgrew its bound) is dropped with an error line and counted; the driver goes on."""
    async def scenario():
        net = network(0, addresses(), [])
        huge = messages.SnapshotChunk(1, 0, 1, 0, (), bytes(messages.MAX_MESSAGE))
        net.send(1, huge)
        net.send(1, request(1))
        return net.unencodable, net.queues[1].qsize()

    with caplog.at_level(logging.ERROR, logger="consensus.net"):
        unencodable, queued = asyncio.run(scenario())
    assert unencodable == 1 and queued == 1 and "not sent to validator 1: SnapshotChunk" in caplog.text
