"""Protocol objects and their wire format.

Every message on the wire is a 4-byte big-endian length, then a version byte, a type byte and the
body. Decoding checks every length against what is left, so a malformed or oversized message
raises DecodeError (the driver drops and counts it) and never crashes a node. A block keeps its
transactions packed as they arrived: one buffer of bodies with offsets, and an (n, 64) array of
signatures, decoded with array operations, never a per-transaction loop.

Bodies by type (big-endian; a QC is block id 32 | view u64 | height u64 | count u16 | voters u16 each
| 64-byte signatures): 1 Proposal (block, then the proposer's signature), 2 Vote, 3 Timeout,
4 BlockRequest (block id 32 | from_height u64 | max_blocks u16, 1 to MAX_RANGE), 5 BlockResponse
(count u16, 1 to MAX_RANGE | that many Proposal bodies, oldest first), 6 SnapshotRequest (height u64 |
chunk u32, below MAX_SNAPSHOT_CHUNKS or OFFER), 7 SnapshotChunk (height u64 | chunk u32 | chunks u32, 1 to
MAX_SNAPSHOT_CHUNKS | txs u64 | count u16, 0 to MAX_RANGE | that many Proposal bodies | data length
u32, at most SNAPSHOT_CHUNK | data | manifest length u32, at most 8 + 32 x MAX_SNAPSHOT_CHUNKS |
manifest: on chunk 0 the snapshot's size u64 | the SHA-256 of each chunk, empty on the others),
8 SnapshotOffer (height u64 | size u64 | chunks u32, 1 to MAX_SNAPSHOT_CHUNKS, size at most chunks x
SNAPSHOT_CHUNK; the answer to a SnapshotRequest for chunk OFFER). Every view is below MAX_VIEW
and every height below MAX_HEIGHT, or the frame does not decode. What a signature covers:
vote_bytes (block id, view), timeout_bytes (view, the high QC's view), proposal_bytes (block id);
a QC's height is not signed (the core checks it against the certified block, whose id covers
its height). Every one of them also covers the network id (network_id: the chain id, the genesis
state root and the validator keys, 32 bytes; Config.network), right after its tag, so that a vote,
proposal or timeout signed on one network never verifies on another whose validators reuse the
keys (a testnet and a mainnet); the handshake transcript (net.transcript) covers it too."""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

import numpy as np

from accel import Packed

VERSION = 1
MAX_MESSAGE = 64 << 20  # bytes; a 10,000-transaction block is about 2 MB
# Views and heights on the wire are below these (DecodeError otherwise), so view + 1 and height + 1
# always fit the u64 fields of Block.id (2^48 views at one a millisecond is 8,900 years).
MAX_VIEW = 1 << 48
MAX_HEIGHT = 1 << 48
MAX_RANGE = 64  # proposals one BlockRequest may ask for (and one BlockResponse carry)
# Transactions one block may hold, in every app (a rule of the network, not of one node's
# configuration): a validator refuses a longer block before checking anything in it, and a
# proposer never builds one (max_txs above it is capped). Only the 64 MiB frame bounded a
# Byzantine proposer's clearing block before: about 600,000 registrations or 290,000 trades, 60
# times the largest block the project runs (10,000) and 6,000 times a node's default (100); a kv
# block, only its 32 MiB of transactions: 219,000 no-op transfers, 3-4 s to validate (review s23).
MAX_BLOCK_TXS = 65_536
RANGE_BYTES = 8 << 20  # a responder stops adding proposals to a response past about this size
SNAPSHOT_CHUNK = 4 << 20  # bytes of a state snapshot per SnapshotChunk (every chunk but the last is this long)
MAX_SNAPSHOT_CHUNKS = 1024  # so a snapshot taken from a peer is at most 4 GiB
OFFER = 0xFFFFFFFF  # a SnapshotRequest's chunk asking for the peer's SnapshotOffer instead of a chunk


class DecodeError(ValueError):
    """A message that is not a well-formed message of this protocol version."""


NETWORK_ID = 32  # bytes of a network id (network_id); b"" is the unnamed network of unit tests and benches


def network_id(chain_id: int, genesis_root: bytes, keys) -> bytes:
    """The id of one network: SHA-256 over its chain id (u64), its genesis state root and its
    validator keys in index order. Every validator of a network computes the same id from its
    configuration and genesis, and any two networks differing in one of them get different ids,
    so a signature over sign bytes that carry it (vote_bytes, timeout_bytes, proposal_bytes) is
    worthless on any other network, even one whose validators reuse the same keys."""
    keys = [bytes(k) for k in keys]
    if not 0 <= chain_id < 1 << 64 or len(genesis_root) != 32 or not keys or any(len(k) != 32 for k in keys):
        raise ValueError("a network id needs a u64 chain id, a 32-byte genesis root and 32-byte validator keys")
    return hashlib.sha256(b"AV-NETWORK" + chain_id.to_bytes(8, "big") + bytes(genesis_root)
                          + len(keys).to_bytes(2, "big") + b"".join(keys)).digest()


def network_bytes(network: bytes) -> bytes:
    """network as bytes; ValueError unless b\"\" or NETWORK_ID bytes (Config, Network and the sign bytes)."""
    network = bytes(network)
    if len(network) not in (0, NETWORK_ID):
        raise ValueError(f"a network id of {len(network)} bytes (0 or {NETWORK_ID})")
    return network


def vote_bytes(block_id: bytes, view: int, network: bytes = b"") -> bytes:
    return b"AV-VOTE" + network_bytes(network) + block_id + view.to_bytes(8, "big")


def timeout_bytes(view: int, high_qc_view: int, network: bytes = b"") -> bytes:
    return b"AV-TIMEOUT" + network_bytes(network) + view.to_bytes(8, "big") + high_qc_view.to_bytes(8, "big")


def proposal_bytes(block_id: bytes, network: bytes = b"") -> bytes:
    return b"AV-PROPOSAL" + network_bytes(network) + block_id


@dataclass(frozen=True)
class QC:
    """2f+1 votes for one block in one view (the genesis QC has none)."""
    block_id: bytes
    view: int
    height: int
    voters: tuple[int, ...] = ()
    sigs: bytes = b""  # 64 bytes per voter, in the voters' order


@dataclass(frozen=True)
class TC:
    """2f+1 timeouts for one view; each voter's highest QC view is signed with it, and the
    highest of those QCs travels along so the next leader can extend it."""
    view: int
    voters: tuple[int, ...]
    high_views: tuple[int, ...]
    sigs: bytes
    high_qc: QC


@dataclass(frozen=True)
class Txs:
    """A block's transactions, packed: bodies (what the signatures sign) and the signatures."""
    bodies: Packed
    sigs: np.ndarray  # (m, 64) uint8: the signatures of every transaction in order (m = n when
                      # each has one signer; more where a transaction has several, as a trade)

    def __len__(self) -> int:
        return len(self.bodies)

    @classmethod
    def empty(cls) -> "Txs":
        return cls(Packed(np.zeros(0, np.uint8), np.zeros(1, np.uint64)), np.zeros((0, 64), np.uint8))

    def digest(self) -> bytes:
        return hashlib.sha256(self.sigs.tobytes()).digest()


@dataclass(frozen=True)
class Block:
    view: int
    height: int
    parent: bytes
    proposer: int
    tx_root: bytes
    state_root: bytes
    sig_digest: bytes  # sha256 of the signatures (the tx root covers the bodies)
    txs: Txs = field(repr=False)
    qc: QC
    tc: TC | None = None

    @property
    def id(self) -> bytes:
        header = struct.pack(">QQI", self.view, self.height, self.proposer) + self.parent + self.tx_root \
            + self.state_root + self.sig_digest + struct.pack(">I", len(self.txs))
        return hashlib.sha256(b"AV-BLOCK" + header).digest()


@dataclass(frozen=True)
class Proposal:
    block: Block
    signature: bytes  # the proposer's, over proposal_bytes(block.id, network)


@dataclass(frozen=True)
class Vote:
    block_id: bytes
    view: int
    height: int
    voter: int
    signature: bytes  # over vote_bytes(block_id, view, network)


@dataclass(frozen=True)
class Timeout:
    view: int
    high_qc: QC
    voter: int
    signature: bytes  # over timeout_bytes(view, high_qc.view, network)


@dataclass(frozen=True)
class BlockRequest:
    """Ask a peer for a block this node has not seen (a parent it needs to validate a child) and
    its ancestors: the chain ending at block_id, from height from_height on (0: the block alone),
    oldest first, at most max_blocks (<= MAX_RANGE) of them; the oldest part of that chain when it
    is longer, so a validator far behind asks again from where the answer stopped."""
    block_id: bytes
    from_height: int = 0
    max_blocks: int = 1


@dataclass(frozen=True)
class BlockResponse:
    """Proposals of one chain, oldest first (each a parent of the next): at most MAX_RANGE, and
    about RANGE_BYTES unless a single proposal is larger."""
    proposals: tuple


@dataclass(frozen=True)
class SnapshotRequest:
    """State sync: ask a peer for one chunk of its state snapshot at `height` (0: the newest one it
    can prove committed; its chunk 0 says which height that is), or (chunk OFFER) for the size of
    its newest snapshot (a SnapshotOffer), with which peers vouch for another's (statesync)."""
    height: int
    chunk: int = 0


@dataclass(frozen=True)
class SnapshotChunk:
    """One chunk of a state snapshot. Chunk 0 carries the proof: the committed proposals from the
    snapshot's block (proof[0], whose state root the snapshot must hash to) up to a block whose
    child's QC commits it directly (2-chain), so the asker can check the block committed before
    it trusts the state. txs: the transactions committed up to the snapshot (the responder's word;
    only the built-in load uses it). manifest (chunk 0 only): the snapshot's size in bytes (u64) and
    the SHA-256 of each of its chunks, so the asker checks every chunk as it arrives."""
    height: int
    chunk: int
    chunks: int
    txs: int
    proof: tuple
    data: bytes
    manifest: bytes = b""


@dataclass(frozen=True)
class SnapshotOffer:
    """The answer to SnapshotRequest(_, OFFER): the height, size in bytes and chunk count of the
    newest snapshot the peer holds. A syncing validator takes a large snapshot only when f + 1
    peers' offers vouch for its size (statesync)."""
    height: int
    size: int
    chunks: int


# ---- encoding ---------------------------------------------------------------------------------

class _Writer:
    def __init__(self):
        self.parts: list[bytes] = []

    def u8(self, v): self.parts.append(struct.pack(">B", v))
    def u16(self, v): self.parts.append(struct.pack(">H", v))
    def u32(self, v): self.parts.append(struct.pack(">I", v))
    def u64(self, v): self.parts.append(struct.pack(">Q", v))
    def raw(self, b): self.parts.append(bytes(b))

    def blob(self, b):
        self.u32(len(b))
        self.raw(b)

    def bytes(self) -> bytes:
        return b"".join(self.parts)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = memoryview(data), 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise DecodeError(f"truncated: wanted {n} bytes at {self.pos} of {len(self.data)}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self): return self.take(1)[0]
    def u16(self): return struct.unpack(">H", self.take(2))[0]
    def u32(self): return struct.unpack(">I", self.take(4))[0]
    def u64(self): return struct.unpack(">Q", self.take(8))[0]
    def raw(self, n): return bytes(self.take(n))
    def blob(self): return self.raw(self.u32())

    def done(self):
        if self.pos != len(self.data):
            raise DecodeError(f"{len(self.data) - self.pos} bytes left over")


def _put_qc(w: _Writer, qc: QC):
    w.raw(qc.block_id)
    w.u64(qc.view)
    w.u64(qc.height)
    w.u16(len(qc.voters))
    for v in qc.voters:
        w.u16(v)
    w.raw(qc.sigs)


def _bounded(view: int, height: int = 0) -> None:
    if view >= MAX_VIEW or height >= MAX_HEIGHT:
        raise DecodeError(f"view {view} or height {height} out of range")


def _get_qc(r: _Reader) -> QC:
    block_id, view, height = r.raw(32), r.u64(), r.u64()
    _bounded(view, height)
    count = r.u16()
    # read as one array, never a Python loop per voter: a Byzantine peer's frame of QCs with 65,535
    # voters each (1M per 64 MiB frame) held the event loop for about a second per frame
    voters = tuple(np.frombuffer(r.take(2 * count), ">u2").tolist())
    return QC(block_id, view, height, voters, r.raw(64 * count))


def _put_tc(w: _Writer, tc: TC):
    w.u64(tc.view)
    w.u16(len(tc.voters))
    for v, hv in zip(tc.voters, tc.high_views):
        w.u16(v)
        w.u64(hv)
    w.raw(tc.sigs)
    _put_qc(w, tc.high_qc)


def _get_tc(r: _Reader) -> TC:
    view, count = r.u64(), r.u16()
    _bounded(view)
    pairs = np.frombuffer(r.take(10 * count), _TC_PAIR)  # (voter u16, high QC view u64), as for a QC's voters
    sigs = r.raw(64 * count)
    return TC(view, tuple(pairs["voter"].tolist()), tuple(pairs["high_view"].tolist()), sigs, _get_qc(r))


_TC_PAIR = np.dtype([("voter", ">u2"), ("high_view", ">u8")])


def _put_block(w: _Writer, b: Block):
    w.u64(b.view)
    w.u64(b.height)
    w.raw(b.parent)
    w.u16(b.proposer)
    w.raw(b.tx_root)
    w.raw(b.state_root)
    w.raw(b.sig_digest)
    _put_qc(w, b.qc)
    w.u8(b.tc is not None)
    if b.tc is not None:
        _put_tc(w, b.tc)
    n = len(b.txs)
    w.u32(n)
    w.raw(np.diff(b.txs.bodies.offsets).astype(">u4").tobytes())
    w.raw(b.txs.bodies.data.tobytes())
    w.u32(len(b.txs.sigs))
    w.raw(b.txs.sigs.tobytes())


def _get_block(r: _Reader) -> Block:
    view, height, parent, proposer = r.u64(), r.u64(), r.raw(32), r.u16()
    _bounded(view, height)
    tx_root, state_root, sig_digest = r.raw(32), r.raw(32), r.raw(32)
    qc = _get_qc(r)
    tc = _get_tc(r) if r.u8() else None
    n = r.u32()
    lengths = np.frombuffer(r.take(4 * n), ">u4").astype(np.uint64)
    offsets = np.zeros(n + 1, np.uint64)
    np.cumsum(lengths, out=offsets[1:])
    data = np.frombuffer(r.take(int(offsets[-1])), np.uint8)
    m = r.u32()
    sigs = np.frombuffer(r.take(64 * m), np.uint8).reshape(m, 64)
    return Block(view, height, parent, proposer, tx_root, state_root, sig_digest, Txs(Packed(data, offsets), sigs),
                 qc, tc)


_TYPES = {Proposal: 1, Vote: 2, Timeout: 3, BlockRequest: 4, BlockResponse: 5, SnapshotRequest: 6, SnapshotChunk: 7,
          SnapshotOffer: 8}


def _put_body(w: _Writer, msg):
    if isinstance(msg, Proposal):
        _put_block(w, msg.block)
        w.raw(msg.signature)
    elif isinstance(msg, Vote):
        w.raw(msg.block_id)
        w.u64(msg.view)
        w.u64(msg.height)
        w.u16(msg.voter)
        w.raw(msg.signature)
    elif isinstance(msg, Timeout):
        w.u64(msg.view)
        _put_qc(w, msg.high_qc)
        w.u16(msg.voter)
        w.raw(msg.signature)
    elif isinstance(msg, BlockRequest):
        w.raw(msg.block_id)
        w.u64(msg.from_height)
        w.u16(msg.max_blocks)
    elif isinstance(msg, BlockResponse):
        w.u16(len(msg.proposals))
        for p in msg.proposals:
            _put_body(w, p)
    elif isinstance(msg, SnapshotRequest):
        w.u64(msg.height)
        w.u32(msg.chunk)
    elif isinstance(msg, SnapshotChunk):
        w.u64(msg.height)
        w.u32(msg.chunk)
        w.u32(msg.chunks)
        w.u64(msg.txs)
        w.u16(len(msg.proof))
        for p in msg.proof:
            _put_body(w, p)
        w.blob(msg.data)
        w.blob(msg.manifest)
    elif isinstance(msg, SnapshotOffer):
        w.u64(msg.height)
        w.u64(msg.size)
        w.u32(msg.chunks)
    else:
        raise TypeError(f"not a protocol message: {type(msg).__name__}")


def _qc_size(qc: QC) -> int:
    return 32 + 8 + 8 + 2 + 2 * len(qc.voters) + len(qc.sigs)


def proposal_size(p: Proposal) -> int:
    """The bytes of p's encoding within a message (as _put_body writes it), computed without
    encoding it: what a BlockResponse adds for it."""
    b = p.block
    head = 8 + 8 + 32 + 2 + 32 + 32 + 32  # view, height, parent, proposer, tx root, state root, digest
    size = head + _qc_size(b.qc) + 1 + 4 + 4 * len(b.txs) + b.txs.bodies.data.nbytes + 4 + b.txs.sigs.nbytes + 64
    if b.tc is not None:
        size += 8 + 2 + 10 * len(b.tc.voters) + len(b.tc.sigs) + _qc_size(b.tc.high_qc)
    return size


RESPONSE_HEAD = 4  # a BlockResponse's bytes before its proposals: version, type, count


def encode(msg) -> bytes:
    """The framed wire bytes of a message."""
    w = _Writer()
    w.u8(VERSION)
    w.u8(_TYPES[type(msg)])
    _put_body(w, msg)
    body = w.bytes()
    if len(body) > MAX_MESSAGE:
        raise ValueError(f"message of {len(body)} bytes exceeds the {MAX_MESSAGE}-byte limit")
    return struct.pack(">I", len(body)) + body


def _get_body(r: _Reader, kind: int):
    if kind == 1:
        block = _get_block(r)
        return Proposal(block, r.raw(64))
    if kind == 2:
        block_id, view, height = r.raw(32), r.u64(), r.u64()
        _bounded(view, height)
        return Vote(block_id, view, height, r.u16(), r.raw(64))
    if kind == 3:
        view, qc = r.u64(), _get_qc(r)
        _bounded(view)
        return Timeout(view, qc, r.u16(), r.raw(64))
    if kind == 4:
        block_id, from_height, count = r.raw(32), r.u64(), r.u16()
        _bounded(0, from_height)
        if not 1 <= count <= MAX_RANGE:
            raise DecodeError(f"a block request for {count} blocks (1 to {MAX_RANGE})")
        return BlockRequest(block_id, from_height, count)
    if kind == 5:
        count = r.u16()
        if not 1 <= count <= MAX_RANGE:
            raise DecodeError(f"a block response of {count} proposals (1 to {MAX_RANGE})")
        return BlockResponse(tuple(_get_body(r, 1) for _ in range(count)))
    if kind == 6:
        height, chunk = r.u64(), r.u32()
        _bounded(0, height)
        if chunk >= MAX_SNAPSHOT_CHUNKS and chunk != OFFER:
            raise DecodeError(f"snapshot chunk {chunk} (below {MAX_SNAPSHOT_CHUNKS})")
        return SnapshotRequest(height, chunk)
    if kind == 7:
        height, chunk, chunks, txs = r.u64(), r.u32(), r.u32(), r.u64()
        _bounded(0, height)
        if not chunk < chunks <= MAX_SNAPSHOT_CHUNKS:
            raise DecodeError(f"snapshot chunk {chunk} of {chunks} (at most {MAX_SNAPSHOT_CHUNKS})")
        count = r.u16()
        if count > MAX_RANGE:
            raise DecodeError(f"a snapshot proof of {count} proposals (at most {MAX_RANGE})")
        proof = tuple(_get_body(r, 1) for _ in range(count))
        size = r.u32()
        if size > SNAPSHOT_CHUNK:
            raise DecodeError(f"a snapshot chunk of {size} bytes (at most {SNAPSHOT_CHUNK})")
        data = r.raw(size)
        manifest = r.blob()
        if len(manifest) > 8 + 32 * MAX_SNAPSHOT_CHUNKS:  # (what it says StateSync checks)
            raise DecodeError(f"a snapshot manifest of {len(manifest)} bytes")
        return SnapshotChunk(height, chunk, chunks, txs, proof, data, manifest)
    if kind == 8:
        height, size, chunks = r.u64(), r.u64(), r.u32()
        _bounded(0, height)
        if not 1 <= chunks <= MAX_SNAPSHOT_CHUNKS or size > chunks * SNAPSHOT_CHUNK:
            raise DecodeError(f"a snapshot offer of {size} bytes in {chunks} chunks")
        return SnapshotOffer(height, size, chunks)
    raise DecodeError(f"unknown message type {kind}")


def encode_qc(qc: QC) -> bytes:
    w = _Writer()
    _put_qc(w, qc)
    return w.bytes()


def decode_qc(data: bytes) -> QC:
    r = _Reader(data)
    qc = _get_qc(r)
    r.done()
    return qc


def decode(frame: bytes):
    """The message in one frame (length prefix included). Raises DecodeError."""
    if len(frame) < 6:
        raise DecodeError("frame shorter than its header")
    (length,) = struct.unpack(">I", frame[:4])
    if length > MAX_MESSAGE:
        raise DecodeError(f"message of {length} bytes exceeds the {MAX_MESSAGE}-byte limit")
    if length != len(frame) - 4:
        raise DecodeError(f"length prefix says {length} bytes, frame has {len(frame) - 4}")
    r = _Reader(frame[4:])
    version, kind = r.u8(), r.u8()
    if version != VERSION:
        raise DecodeError(f"protocol version {version}, this node speaks {VERSION}")
    try:
        msg = _get_body(r, kind)
    except (struct.error, IndexError) as exc:
        raise DecodeError(f"malformed message: {exc}") from None
    r.done()
    return msg
