"""asyncio TCP transport between validators.

Connections are one-way: validator i dials validator j and writes its frames, j only reads. Each
connection opens with a handshake signed with both validators' Ed25519 keys (docs/FRAME.md,
"Transport between validators"): j sends a fresh challenge, i answers with its index, a challenge
of its own and a signature over both challenges, both indices and both keys; j answers with its
signature over the same. Only a connection whose dialer proved its key delivers frames, as that
validator's, and a dialer writes only to a listener that proved its own: a stranger, a replayed or
relayed handshake or a validator claiming another's index delivers nothing. Handshakes that fail or
do not finish within a timeout close the connection and are counted.

Frames (messages.encode) that are oversized or do not decode are dropped and counted; the
connection stays up unless the length prefix itself is impossible (closed before the payload is
read). Limits (Limits): connections accepted per second per source address and from all
strangers together (each may cost a signature check; past them a connection is closed before
the listener's hello), and from a validator's own address the signature checks per second per
validator claimed (past them a hello is closed unchecked), unauthenticated connections at once,
in all and per source address, the validators' too (the oldest is closed for a newer one),
authenticated connections per validator, bytes and frames a validator may send per second
(its connection is read more slowly past them), frames and bytes queued for a peer (beyond them
frames are dropped: the protocol's timeouts recover from loss). A peer that is down is retried with
backoff. A connection authenticated with this validator's own key is refused, and frames from two
live connections of one validator are logged (once a minute) and counted: both mean two processes
run with one validator's key."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
import struct
from dataclasses import dataclass
from typing import Callable, Sequence

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from . import messages

log = logging.getLogger("consensus.net")
# A validator writes to a peer over one connection at a time: frames from two live connections
# of one validator within this many seconds mean two processes run with its key.
DUPLICATE_WINDOW_S = 2.0
WARN_EVERY_S = 60.0

MAGIC = b"AVN1"  # protocol and handshake version; anything else at a validator's port is not a peer
CHALLENGE = 32
LISTENER_HELLO = len(MAGIC) + 2 + CHALLENGE                # magic | listener index | challenge
DIALER_HELLO = len(MAGIC) + 2 + CHALLENGE + 64             # magic | dialer index | challenge | signature
TAG = b"AV-NET-HANDSHAKE-"
MAC_TAG = b"AV-NET-HELLO-TAG-"
TAG_BYTES = 16  # of a dialer's 32-byte challenge: 16 random bytes | a 16-byte tag (see Network._tagged)
# the type bytes (after the length and version) of the frames that answer a peer's own requests:
# block ranges and snapshot chunks, counted apart (answer_bytes) so that the node bounds them apart
# from the proposals and votes queued beside them (node.request_admitted)
ANSWER_TYPES = frozenset(messages._TYPES[t] for t in (messages.BlockResponse, messages.SnapshotChunk))


@dataclass(frozen=True)
class Limits:
    """What one connection or peer may cost; docs/FRAME.md says why each default."""
    handshake_timeout_s: float = 10.0
    max_pending: int = 64            # connections not (yet) authenticated, at once
    per_peer: int = 2                # authenticated connections of one validator, at once
    queue_frames: int = 10_000       # frames queued for one peer
    queue_bytes: int = messages.MAX_MESSAGE  # bytes queued for one peer (one largest frame always fits)
    inbound_bytes_per_s: float = float(64 << 20)  # read from one validator, all its connections
    inbound_frames_per_s: float = 2_000.0
    # per source address (an IPv4 address, an IPv6 /64); from a validator's own address, per
    # validator the handshake claims (see Network._verify_admitted):
    handshakes_per_s: float = 8.0    # connections accepted per second from one address (each may cost a verify)
    handshake_burst: int = 32        # ... and at once, after a quiet time (the token bucket's size)
    pending_per_address: int = 8     # connections not (yet) authenticated from one address, at once
    #                                  (from a validator's address: this x (its validators + 1))
    tracked_addresses: int = 4_096   # addresses whose handshake budget is remembered (the oldest forgotten)
    strangers_per_s: float = 256.0   # connections accepted per second from every address but the validators', together
    strangers_burst: int = 512       # ... and at once


def transcript(role: bytes, listener_challenge: bytes, dialer_challenge: bytes, dialer: int, listener: int,
               dialer_key: bytes, listener_key: bytes, network: bytes = b"") -> bytes:
    """What the dialer (role b"dialer") or the listener (b"listener") signs. Both challenges make
    it fresh on both sides (no replay), both indices and keys tie it to this pair of validators of
    this network (a signature meant for another listener does not verify here), the network id
    (messages.network_id; b"" for the unnamed network of tests) to this network, so a validator
    whose key also serves another network cannot be connected to across them, and the role keeps
    one side's signature from standing in for the other's."""
    return (TAG + role + bytes(network) + listener_challenge + dialer_challenge + struct.pack(">HH", dialer, listener)
            + dialer_key + listener_key)


class HandshakeError(Exception):
    """A connection that did not prove it is the validator it should be."""


class Network:
    def __init__(self, me: int, addresses: list[tuple[str, int]], deliver: Callable[[int, object], None],
                 delay_ms: float = 0.0, *, seed: bytes, keys: Sequence[bytes], limits: Limits = Limits(),
                 clock: Callable[[], float] | None = None, network: bytes = b""):
        """seed: this validator's 32-byte Ed25519 seed; keys: every validator's public key, by
        index (as addresses); network: the network id (messages.network_id) the handshake
        transcripts carry (b"": none, for tests). clock: seconds, for the per-address handshake budget (the event
        loop's time unless given: tests count refusals with a clock of their own)."""
        if len(keys) != len(addresses) or not 0 <= me < len(keys):
            raise ValueError(f"{len(keys)} keys for {len(addresses)} addresses, this validator's index {me}")
        try:
            self.verify_keys = [VerifyKey(bytes(k)) for k in keys]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"validator keys: {exc} (each a 32-byte Ed25519 public key)") from None
        self.keys = [bytes(k) for k in keys]
        self.network = messages.network_bytes(network)
        self.signing = SigningKey(bytes(seed))
        if bytes(self.signing.verify_key) != self.keys[me]:
            raise ValueError(f"the seed's public key is not keys[{me}]")
        self.me, self.addresses, self.deliver, self.delay = me, addresses, deliver, delay_ms / 1000.0
        self.limits = limits
        self.queues = {i: asyncio.Queue(limits.queue_frames) for i in range(len(addresses)) if i != me}
        self.queued_bytes = {i: 0 for i in self.queues}
        self.answer_bytes = {i: 0 for i in self.queues}  # of them, answers to the peer's requests (ANSWER_TYPES)
        self.dropped = 0    # frames that did not decode or were too large
        self.overflow = 0   # frames not queued because a peer's queue was full (frames or bytes)
        self.overflow_bytes = 0
        self.unencodable = 0  # messages of this validator's own too large to frame (logged as errors)
        self.duplicates = 0  # connections with this validator's key, or a second live one per sender
        self.handshake_failures = 0  # connections closed: not this protocol, no such index, a bad signature
        self.handshake_timeouts = 0  # connections closed: the handshake did not finish in time
        self.pending_evicted = 0     # unauthenticated connections closed for newer ones over max_pending
        self.peer_connections_replaced = 0  # a validator's oldest connections closed past per_peer
        self.oversized = 0           # connections closed for a length prefix over MAX_MESSAGE
        self.throttled = 0           # pauses in reading a validator that went over its rate
        self.handshakes_refused = 0  # connections closed at once: their address over its handshake rate (or,
        #                              from a validator's address, hellos closed unverified: _verify_admitted)
        self.pending_address_evicted = 0  # an address's oldest unauthenticated connection closed past pending_per_address
        self.clock = clock
        self._at_host: dict[str, set[int]] = {}   # a validator's address -> the validators it is given for
        self._verify_budget: dict[object, list[float]] = {}  # (address, claimed validator) or address -> bucket
        self._pair_keys: dict[int, bytes | None] = {}  # peer -> the key of the hello tags between it and this one
        self._by_address: dict[str, dict[object, asyncio.StreamWriter]] = {}  # source -> its pending connections
        self._source_of: dict[object, str] = {}  # a pending connection -> its source (where counted per address)
        self._handshake_budget: dict[str, list[float]] = {}  # source -> [tokens, time], oldest first
        self._strangers_budget: list[float] | None = None     # [tokens, time] of every non-validator address
        self._pending: dict[object, asyncio.StreamWriter] = {}  # in arrival order: the first is the oldest
        self._peers: dict[int, dict[object, asyncio.StreamWriter]] = {}  # sender -> its live connections
        self._budget: dict[int, list[float]] = {}  # sender -> [bytes, frames, time] (token buckets)
        self._last: dict[int, tuple[object, object, float]] = {}  # sender -> (connection, peer address, time)
        self._warned: dict[int, float] = {}
        self.tasks: list[asyncio.Task] = []
        self.server = None

    @property
    def pending_connections(self) -> int:
        return len(self._pending)

    @property
    def peer_connections(self) -> int:
        return sum(len(c) for c in self._peers.values())

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for index, (host, port) in enumerate(self.addresses):
            try:
                infos = await loop.getaddrinfo(host, port, type=1)  # SOCK_STREAM
            except (OSError, UnicodeError):  # a name that does not resolve now: its literal form only
                infos = []
            for source in {_source(info[4][0]) for info in infos} | {_source(host)}:
                self._at_host.setdefault(source, set()).add(index)
        host, port = self.addresses[self.me]
        self.server = await asyncio.start_server(self._serve, host, port)
        self.tasks = [asyncio.create_task(self._writer(i)) for i in self.queues]

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        if self.server is not None:
            self.server.close()
        for w in list(self._pending.values()) + [w for c in self._peers.values() for w in c.values()]:
            w.close()

    def send(self, to: int, msg) -> None:
        try:
            frame = messages.encode(msg)
        except (ValueError, TypeError, struct.error) as exc:
            # this validator built a message no frame can carry (too large, or a field out of its
            # wire range, as from a damaged store row): its bug, not a peer's, and never raised
            self.unencodable += 1
            log.error("not sent to validator %d: %s: %s", to, type(msg).__name__, exc)
            return
        if self.delay:
            asyncio.get_running_loop().call_later(self.delay, self._enqueue, to, frame)
        else:
            self._enqueue(to, frame)

    def broadcast(self, msg) -> None:
        for i in self.queues:
            self.send(i, msg)

    def _enqueue(self, to: int, frame: bytes) -> None:
        if to not in self.queues:  # this validator itself, or no such validator
            return
        queued = self.queued_bytes[to]
        # bytes too, not only frames: queue_frames frames of up to MAX_MESSAGE would be gigabytes
        # (a peer asking for block ranges it does not read); an empty queue takes any frame
        if queued and queued + len(frame) > self.limits.queue_bytes or self.queues[to].full():
            self.overflow += 1
            self.overflow_bytes += len(frame)
            return
        self.queues[to].put_nowait(frame)
        self.queued_bytes[to] = queued + len(frame)
        if frame[5] in ANSWER_TYPES:
            self.answer_bytes[to] += len(frame)

    async def _writer(self, peer: int) -> None:
        backoff = 0.05
        while True:
            writer = await self._connect(peer)
            if writer is not None:
                backoff = 0.05
                try:
                    while True:
                        frame = await self.queues[peer].get()
                        self.queued_bytes[peer] -= len(frame)
                        if frame[5] in ANSWER_TYPES:
                            self.answer_bytes[peer] -= len(frame)
                        writer.write(frame)
                        await writer.drain()
                except OSError:  # the peer went away; dial again
                    pass
                finally:
                    writer.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _connect(self, peer: int) -> asyncio.StreamWriter | None:
        """_dial within the handshake timeout; None (counted unless the peer is just down) when it fails."""
        try:
            async with asyncio.timeout(self.limits.handshake_timeout_s):
                return await self._dial(peer)
        except TimeoutError:  # before OSError, of which it is one
            self.handshake_timeouts += 1
            log.debug("validator %d at %s:%d did not finish the handshake in time", peer, *self.addresses[peer])
        except (HandshakeError, asyncio.IncompleteReadError) as exc:
            self.handshake_failures += 1
            log.debug("dialing validator %d at %s:%d: %s", peer, *self.addresses[peer],
                      exc if isinstance(exc, HandshakeError) else "the connection closed during the handshake")
        except OSError:  # the peer is down: the usual case, not worth a line
            pass
        return None

    async def _dial(self, peer: int) -> asyncio.StreamWriter:
        """A connection to `peer` whose listener proved it holds keys[peer], this validator's proof sent."""
        host, port = self.addresses[peer]
        reader, writer = await asyncio.open_connection(host, port)
        try:
            hello = await reader.readexactly(LISTENER_HELLO)
            if hello[:len(MAGIC)] != MAGIC:
                raise HandshakeError("the listener does not speak this protocol")
            (index,) = struct.unpack(">H", hello[4:6])
            if index != peer:
                raise HandshakeError(f"the listener says it is validator {index}")
            theirs = hello[6:]
            mine = self._challenge(peer, theirs)
            signed = self.signing.sign(transcript(b"dialer", theirs, mine, self.me, peer, self.keys[self.me],
                                                  self.keys[peer], self.network)).signature
            writer.write(MAGIC + struct.pack(">H", self.me) + mine + signed)
            proof = await reader.readexactly(64)
            if not self._verified(peer, transcript(b"listener", theirs, mine, self.me, peer, self.keys[self.me],
                                                   self.keys[peer], self.network), proof):
                raise HandshakeError("the listener's signature does not verify")
        except BaseException:
            writer.close()
            raise
        return writer

    def _verified(self, signer: int, message: bytes, signature: bytes) -> bool:
        try:
            self.verify_keys[signer].verify(message, signature)
            return True
        except BadSignatureError:
            return False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str) -> int:
        """The dialer's index, once it proved its key and this validator sent its own proof."""
        mine = os.urandom(CHALLENGE)
        writer.write(MAGIC + struct.pack(">H", self.me) + mine)
        hello = await reader.readexactly(DIALER_HELLO)
        if hello[:len(MAGIC)] != MAGIC:
            raise HandshakeError("not this protocol")
        (sender,) = struct.unpack(">H", hello[4:6])
        if not 0 <= sender < len(self.keys):
            raise HandshakeError(f"no validator {sender}")
        theirs, signature = hello[6:6 + CHALLENGE], hello[6 + CHALLENGE:]
        if source in self._at_host and not self._verify_admitted(
                source, sender, self._tagged(sender, mine, theirs)):
            self.handshakes_refused += 1  # (and, as the handshake failed, in handshake_failures)
            raise HandshakeError(f"over validator {sender}'s {self.limits.handshakes_per_s:.0f} handshakes a "
                                 f"second from {source}; not verified")
        if not self._verified(sender, transcript(b"dialer", mine, theirs, sender, self.me, self.keys[sender],
                                                 self.keys[self.me], self.network), signature):
            raise HandshakeError(f"a signature that is not validator {sender}'s")
        writer.write(self.signing.sign(transcript(b"listener", mine, theirs, sender, self.me, self.keys[sender],
                                                  self.keys[self.me], self.network)).signature)
        return sender

    def _now(self) -> float:
        return self.clock() if self.clock is not None else asyncio.get_running_loop().time()

    def _pair_key(self, peer: int) -> bytes | None:
        """The key of the hello tags between `peer` and this validator: from their X25519 shared
        secret (each one's Ed25519 key converted), which only the two can compute; None where a
        key does not convert (no tags with that peer: its hellos go by the address's bucket)."""
        if peer not in self._pair_keys:
            key = None
            if peer != self.me and 0 <= peer < len(self.keys):
                try:
                    from nacl.bindings import crypto_scalarmult
                    shared = crypto_scalarmult(bytes(self.signing.to_curve25519_private_key()),
                                               bytes(self.verify_keys[peer].to_curve25519_public_key()))
                    lo, hi = sorted((self.me, peer))
                    key = hashlib.sha256(MAC_TAG + self.network + shared + self.keys[lo] + self.keys[hi]).digest()
                except Exception:  # (a key that is no curve point: no tags, as before them)
                    key = None
            self._pair_keys[peer] = key
        return self._pair_keys[peer]

    def _tag(self, key: bytes, dialer: int, listener_challenge: bytes, nonce: bytes) -> bytes:
        return hmac.new(key, MAC_TAG + struct.pack(">H", dialer) + listener_challenge + nonce,
                        hashlib.sha256).digest()[:TAG_BYTES]

    def _challenge(self, peer: int, listener_challenge: bytes) -> bytes:
        """This dialer's challenge to `peer`: 16 fresh random bytes and a tag over them and the
        listener's challenge that only the two validators can make (random bytes where there is no
        pair key). It is as fresh as a random one (the listener's signature covers it), and the
        listener can tell this validator's hello from a stranger's before any signature check."""
        nonce = os.urandom(CHALLENGE - TAG_BYTES)
        key = self._pair_key(peer)
        return nonce + (self._tag(key, self.me, listener_challenge, nonce) if key is not None
                        else os.urandom(TAG_BYTES))

    def _tagged(self, sender: int, listener_challenge: bytes, dialer_challenge: bytes) -> bool:
        """Whether a hello claiming `sender` carries its tag (see _challenge): only `sender` (or
        this validator) can have made it."""
        key = self._pair_key(sender)
        nonce, tag = dialer_challenge[:CHALLENGE - TAG_BYTES], dialer_challenge[CHALLENGE - TAG_BYTES:]
        return key is not None and hmac.compare_digest(self._tag(key, sender, listener_challenge, nonce), tag)

    def _verify_admitted(self, source: str, sender: int, tagged: bool) -> bool:
        """Whether a handshake from one of the validators' addresses, claiming to be validator
        `sender`, may have its signature checked now. Connections from these addresses are not
        limited per address when they arrive (validators share hosts, and a flood from elsewhere
        must not keep them out), so without this, a Byzantine validator, or a stranger on a
        validator's host, made this validator check one signature (and, with a validator's key,
        make one) per connection, as fast as it could open them. Now each (address, claimed
        validator) pair, for the validators given at that address, has a token bucket of
        handshake_burst tokens refilled at handshakes_per_s; claims of any other validator from
        that address share one more. So an address can cost at most (its validators + 1) x
        handshakes_per_s checks a second, and a flood of claims only delays the handshakes of the
        validator it claims to be from its own address: a validator at another address, or at
        this one but not claimed, is not held up. (Nothing tells the validator at that address
        from a stranger beside it before the check: such a stranger can delay that validator's
        reconnects, never close its live connections.) At most (addresses x (validators + 1))
        buckets, so none is ever forgotten.

        That stranger kept the validator out for as long as it went on (the bucket empty, the
        validator's own hellos closed unchecked like the flood's). So a hello carrying the
        claimed validator's tag (_tagged: keyed by the secret only it and this validator share;
        checked with one HMAC, no signature) is charged to that validator's own bucket,
        source ("tagged", sender), whatever its address: no one else can draw from it, so a
        flood of untagged claims never holds the validator up, and its own flood of tagged
        ones is bounded the same (one more bucket per validator)."""
        lim, now = self.limits, self._now()
        key = ("tagged", sender) if tagged else (source, sender) if sender in self._at_host.get(source, ()) else source
        bucket = _refill(self._verify_budget.setdefault(key, [float(lim.handshake_burst), now]),
                         lim.handshakes_per_s, lim.handshake_burst, now)
        if bucket[0] < 1.0:
            return False
        bucket[0] -= 1.0
        return True

    def _admit(self, source: str) -> bool:
        """Whether a connection from `source` may start a handshake now: its token bucket
        (handshake_burst tokens, handshakes_per_s a second) and the one of every address but the
        validators' together (strangers_burst, strangers_per_s: a stranger with more addresses
        than tracked_addresses, as an IPv6 /48 has /64s, is bounded too) each have one. Buckets of
        the tracked_addresses most recently seen are kept (a forgotten one starts full)."""
        lim = self.limits
        now = self._now()
        bucket = _refill(self._handshake_budget.pop(source, None) or [float(lim.handshake_burst), now],
                         lim.handshakes_per_s, lim.handshake_burst, now)
        self._handshake_budget[source] = bucket  # now the newest
        if len(self._handshake_budget) > lim.tracked_addresses:
            del self._handshake_budget[next(iter(self._handshake_budget))]
        if self._strangers_budget is None:
            self._strangers_budget = [float(lim.strangers_burst), now]
        every = _refill(self._strangers_budget, lim.strangers_per_s, lim.strangers_burst, now)
        if bucket[0] < 1.0 or every[0] < 1.0:
            return False
        bucket[0] -= 1.0
        every[0] -= 1.0
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn, peer = object(), writer.get_extra_info("peername")
        source = _source(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if source not in self._at_host and not self._admit(source):
            self.handshakes_refused += 1
            log.debug("refused a connection from %s: over its %.0f handshakes a second (or strangers' "
                      "%.0f together)", peer, self.limits.handshakes_per_s, self.limits.strangers_per_s)
            writer.close()
            return
        # a validator's address too (with room for each of its validators' and one more): a
        # flood from there evicts its own connections, not other validators' handshakes
        room = self.limits.pending_per_address * (len(self._at_host.get(source, ())) + 1)
        mine = self._by_address.setdefault(source, {})
        if len(mine) >= room:
            # its oldest, as for max_pending: a stranger sharing an address with an honest
            # dialer cannot keep it out by holding connections open
            oldest, stale = next(iter(mine.items()))
            self._pending.pop(oldest, None)
            self._forget(oldest)
            stale.close()
            self.pending_address_evicted += 1
        mine = self._by_address.setdefault(source, {})  # (again: _forget drops an address left with none)
        mine[conn] = writer
        self._source_of[conn] = source
        if len(self._pending) >= self.limits.max_pending:
            # the oldest: an honest handshake takes a round trip, so a stranger has to open
            # max_pending connections within one to keep a validator out
            oldest = next(iter(self._pending))
            self._pending.pop(oldest).close()
            self._forget(oldest)
            self.pending_evicted += 1
        self._pending[conn] = writer
        sender = None
        try:
            try:
                async with asyncio.timeout(self.limits.handshake_timeout_s):
                    sender = await self._accept(reader, writer, source)
            except TimeoutError:
                self.handshake_timeouts += 1
                log.debug("%s did not finish its handshake in %.1f s", peer, self.limits.handshake_timeout_s)
                return
            except (HandshakeError, asyncio.IncompleteReadError, OSError) as exc:
                if conn in self._pending:  # not closed here for a newer connection
                    self.handshake_failures += 1
                    log.debug("handshake from %s refused: %s", peer, exc if isinstance(exc, HandshakeError)
                              else f"the connection closed ({type(exc).__name__})")
                return
            finally:
                self._pending.pop(conn, None)
                self._forget(conn)
            if sender == self.me:
                self._duplicate(sender, f"a connection from {peer} holds this validator's key (index {sender}): "
                                        "is a second validator running with this index and key?")
                return
            live = self._peers.setdefault(sender, {})
            live[conn] = writer
            if len(live) > self.limits.per_peer:  # connections a validator left half-open, or a flood
                oldest = next(iter(live))
                live.pop(oldest).close()
                self.peer_connections_replaced += 1
            await self._read_frames(sender, conn, peer, reader)
        except (asyncio.IncompleteReadError, OSError):
            return
        except asyncio.CancelledError:
            # the loop shutting down; nobody awaits a connection's task, and Python 3.11 would log
            # a cancelled one as an unhandled error
            return
        finally:
            if sender is not None and self._peers.get(sender, {}).get(conn) is writer:
                del self._peers[sender][conn]
            writer.close()

    def _forget(self, conn: object) -> None:
        """conn is no longer pending: out of its address's count (an address with none is dropped)."""
        source = self._source_of.pop(conn, None)
        mine = self._by_address.get(source)
        if mine is not None:
            mine.pop(conn, None)
            if not mine:
                del self._by_address[source]

    async def _read_frames(self, sender: int, conn: object, peer, reader: asyncio.StreamReader) -> None:
        while True:
            head = await reader.readexactly(4)
            (length,) = struct.unpack(">I", head)
            if length > messages.MAX_MESSAGE:
                self.dropped += 1
                self.oversized += 1
                log.debug("closed the connection of validator %d: a length prefix of %d bytes", sender, length)
                return  # cannot resynchronise a stream after an impossible length
            frame = head + await reader.readexactly(length)
            self._take(sender, conn, peer, frame)
            await self._charge(sender, len(frame))

    def _take(self, sender: int, conn: object, peer, frame: bytes) -> None:
        try:
            msg = messages.decode(frame)
        except messages.DecodeError as exc:
            self.dropped += 1
            log.debug("dropped a frame from %d: %s", sender, exc)
            return
        now = asyncio.get_running_loop().time()
        last = self._last.get(sender)
        if last is not None and last[0] is not conn and now - last[2] < DUPLICATE_WINDOW_S:
            self._duplicate(sender, f"validator {sender} is heard over two connections at once, from "
                                    f"{last[1]} and {peer}: two validators run with index {sender}?")
        self._last[sender] = (conn, peer, now)
        self.deliver(sender, msg)

    async def _charge(self, sender: int, size: int) -> None:
        """Token buckets of one second's worth per validator, charged after a frame is handled:
        past its rate, its connections are not read until the debt is paid (TCP pushes back on
        it), so one validator's flood cannot crowd out the others' frames."""
        lim, now = self.limits, asyncio.get_running_loop().time()
        budget = self._budget.setdefault(sender, [lim.inbound_bytes_per_s, lim.inbound_frames_per_s, now])
        elapsed, budget[2] = now - budget[2], now
        budget[0] = min(lim.inbound_bytes_per_s, budget[0] + elapsed * lim.inbound_bytes_per_s) - size
        budget[1] = min(lim.inbound_frames_per_s, budget[1] + elapsed * lim.inbound_frames_per_s) - 1
        wait = max(-budget[0] / lim.inbound_bytes_per_s, -budget[1] / lim.inbound_frames_per_s)
        if wait > 0:
            self.throttled += 1
            await asyncio.sleep(wait)

    def _duplicate(self, sender: int, why: str) -> None:
        self.duplicates += 1
        now = asyncio.get_running_loop().time()
        if now - self._warned.get(sender, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._warned[sender] = now
            log.warning(why)


def _refill(bucket: list[float], rate: float, burst: float, now: float) -> list[float]:
    """A [tokens, time] token bucket brought to `now`: `rate` tokens a second, at most `burst`."""
    bucket[0] = min(float(burst), bucket[0] + max(0.0, now - bucket[1]) * rate)
    bucket[1] = now
    return bucket


def _source(host: str) -> str:
    """The address a per-address limit counts a connection under: an IPv4 address as it is, an
    IPv6 one by its /64 (one host is usually given a whole /64), an IPv4-mapped IPv6 one as the
    IPv4 address; anything else (a name) as written."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
