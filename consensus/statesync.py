"""State sync (issue 20): a validator with an empty store takes a peer's state snapshot instead of
replaying the chain from the genesis.

What makes a peer's snapshot trustworthy is the block it belongs to having committed, not the
peer: with at most f faulty validators, a QC (2f + 1 signatures) over a block B1 whose view is its
parent B0's plus one commits B0 (the 2-chain rule), and every ancestor of a committed block is
committed. So the peer sends, with the snapshot's first chunk, the committed proposals from the
snapshot's block S up to such a pair and the proposal whose QC certifies B1 (commit_proof checks:
consecutive heights, each block's parent the one before, each proposer the view's leader and its
signature, the QC's signers and signatures, and every other QC and TC the proof's blocks carry
(a block id covers neither, and the blocks are stored and served on), all in one batch; and the transactions of the blocks
from S to the committed one, which the validator stores and replays, those their proposers
signed: digest and root, _signed_txs). The snapshot then must hash to S's
state root (snapshots.restore), which the 2f + 1 validators that voted for S checked. The chunks
(SNAPSHOT_CHUNK bytes each, at most MAX_SNAPSHOT_CHUNKS) are asked for one at a time from one
peer; a peer that answers what was not asked, sends a bad proof or chunk, or goes quiet for a
timer's length is left for the next one. After it, the validator starts from the snapshot (Core's
base) and fetches the blocks after it as any validator behind does (ranged BlockRequests).

What a syncing validator holds before it can tell a snapshot is wrong is bounded (the state root
is checked only on the whole snapshot). Chunk 0 carries a manifest: the snapshot's size and the
SHA-256 of each chunk. The size must agree with the chunk count and be at most `max_bytes`
(MAX_SYNC_BYTES, 4 GiB, unless the caller gives less); every chunk is checked against its hash on
arrival and a chunk that does not match is dropped with the peer that sent it (snapshot_bad), so
the peer cannot grow a snapshot past its manifest or change it midway. A snapshot over
VOUCH_FREE bytes (64 MiB) is fetched past chunk 0 only once f + 1 peers (the serving peer one of
them) vouch for its size: each answers SnapshotRequest(0, OFFER) with the size of its newest
snapshot (a SnapshotOffer), and one vouches when VOUCH_FACTOR x that size + VOUCH_FREE is at least
the manifest's (honest validators' snapshots are of heights a snapshot interval or two apart, so
of similar sizes). At least one of f + 1 is honest, so a Byzantine peer can make this validator
hold at most 2 x an honest peer's snapshot + 64 MiB (plus one frame) of junk, never 4 GiB; a
size not vouched for within a timer is left for the next peer (snapshot_unvouched).

What a slow peer can cost is bounded too. A peer answering each chunk just inside the 2 s timer
held a sync for chunks x 2 s (about 8.5 minutes for a 1 GiB snapshot, and again for each such
peer), and the chunks of one snapshot can only come from peers holding that snapshot (validators
snapshot at staggered heights, so usually only the one). So each peer's snapshot is also due by
a deadline, set when its chunk 0 arrives: wait_ms + (chunks - 1) x chunk_ms. Both double each
round of the peers: an ask waits wait_ms for its answer, RETRY_MS (2 s) in the first round, at
most SLOW_MS (36 s); chunk_ms is CHUNK_MS (500 ms) in the first round, at most wait_ms.
An ask's timer runs out at the deadline at the latest, and a chunk arriving after it is not
taken: the peer is left for the next one (peer_slow), its chunks dropped, and the next peer's
snapshot (of whatever height) is asked for. An honest peer serving 4 MiB chunks at about 64 Mbit/s
or faster is done in the first round (each peer before it cost at most its deadline, 2 s +
chunks x 500 ms); a slower one in the round whose deadline fits it, the rounds before it costing
each peer at most its deadline: a sync takes at most about 4 (n - 1) times the longer of what the
fastest honest peer needs and chunks x CHUNK_MS, where each slow Byzantine peer cost that
round's chunks x chunk_ms. A joiner's own link sets the pace too: until the s22 review the wait
stayed 2 s, so one carrying less than 4 MiB in 2 s (about 17 Mbit/s) never took a chunk of a
snapshot over 4 MiB, and its peers' chunk 0 answers, all late, counted as unasked; now the
rounds' waits grow to fit links down to about 1 Mbit/s, and a chunk 0 late for its ask still
counts as an offer (_late_head).
The chunk count is the peer's word, bounded by the vouched size (a snapshot over
VOUCH_FREE needs f + 1 vouchers, one of them honest), so a Byzantine peer claiming a large
snapshot for a long deadline gets at most the deadline of 2 x an honest snapshot + 64 MiB.

A snapshot must also be one the validator can go on from (probe, which the node and the
simulation turn on). A Byzantine peer could serve a snapshot committed long ago, valid against
its block's state root, below the first block every honest validator holds (each was itself
state-synced, or pruned), and then withhold the blocks after it: the validator took it and asked
for those blocks for ever. So with its chunk 0 every peer is asked for the first block the
snapshot needs fetched (the certified child of the proof's directly committed block: a
BlockRequest for that one block, its id and height from the proof), and the snapshot is taken
only once f + 1 peers (one of them honest, which serves the blocks after it) answered with it.
Answers usually come before the last chunk; if not, the restored snapshot waits one timer, the
probe asked again, and is then left for the next peer (snapshot_unservable). Honest validators
hold every block from their first one up, and an honest peer's snapshot is at or above its own
first block, so the highest honest snapshot is held after by every honest validator caught up:
a live network (f + 1 honest peers up) always passes the probe for it. The cost: one block from
each peer per snapshot tried. f + 1 holders need not exist with only f faults (n = 4, one down,
two joining at once: neither joiner ever synced), so in a later round of the peers a restored
snapshot at least as high as every one restored in the sync is taken with one holder
(snapshot_one_holder, see _taken_alone).

A server keeps a snapshot a chunk of which it served recently beside its KEPT newest
(Store.add_snapshot), so a transfer slower than the snapshot interval is not cut by pruning; a
chunk asked of a snapshot the server no longer holds is answered with its newest one's offer,
and the syncing validator asks that peer for its newest at once (snapshot_gone; a second time,
the next peer)."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from typing import Callable

from . import messages, snapshots
from .core import Base, Config, InvalidCertificate, SetTimer, Send, genesis_block, qc_certs, tc_certs
from .messages import (
    MAX_RANGE, MAX_SNAPSHOT_CHUNKS, OFFER, SNAPSHOT_CHUNK, BlockRequest, BlockResponse, Proposal, SnapshotChunk,
    SnapshotOffer, SnapshotRequest, proposal_bytes,
)
from .store import Store, snapshot_row_problem

RETRY_MS = 2_000.0  # a peer silent this long after an ask is left for the next one (first round; doubling each round)
SLOW_MS = 36_000.0  # ... up to this: a 4 MiB chunk at 1 Mbit/s takes 33.6 s
CHUNK_MS = 500.0    # a peer's snapshot is due wait_ms + (chunks - 1) x this after its chunk 0 (doubling each round)
SYNC_TIMER = -1     # the SetTimer view of state sync's first ask; ask n's is SYNC_TIMER - n (views are >= 0)
MAX_TXS = 1 << 48   # a snapshot's count of committed transactions (the peer's word) beyond this is refused
MAX_SYNC_BYTES = MAX_SNAPSHOT_CHUNKS * SNAPSHOT_CHUNK  # StateSync's default max_bytes: 4 GiB
VOUCH_FREE = 64 << 20  # a snapshot up to this size is taken from one peer; a larger one needs f + 1 vouching
VOUCH_FACTOR = 2       # a peer whose own snapshot is s bytes vouches for one up to 2 s + VOUCH_FREE
FRUITLESS_ROUNDS = 2   # rounds of the peers with snapshots offered by f or fewer of them before `from_genesis`


def _chunk_problem(msg: SnapshotChunk) -> bool:
    """Whether a chunk is malformed: over SNAPSHOT_CHUNK bytes, short though not its snapshot's
    last, or with a count of transactions out of range."""
    last = msg.chunk == msg.chunks - 1
    return len(msg.data) > SNAPSHOT_CHUNK or (not last and len(msg.data) != SNAPSHOT_CHUNK) or not 0 <= msg.txs < MAX_TXS


def _direct_commit(proposals) -> int | None:
    """The index k of the first block of `proposals` (a chain, oldest first) that the chain shows
    committed directly: its child k+1 in the next view, and k+2 carrying a QC over the child."""
    for k in range(len(proposals) - 2):
        b0, b1, b2 = (p.block for p in proposals[k:k + 3])
        if b1.view == b0.view + 1 and b2.qc.block_id == b1.id and b2.qc.view == b1.view:
            return k
    return None


def serve(store: Store, height: int, chunk: int) -> SnapshotChunk | SnapshotOffer | None:
    """A chunk of the newest stored snapshot whose commit the store can prove (height 0), or of the
    one at `height`; None if there is none. Only a first chunk carries the proof and the manifest,
    and only when they fit in one frame beside the chunk (an older snapshot may do otherwise).
    chunk OFFER: the SnapshotOffer of the newest stored snapshot (its height, size and chunks).
    A chunk of a height the store holds no snapshot at (pruned since the peer's transfer began):
    the newest's SnapshotOffer, which tells the peer at once that its snapshot is gone (it went
    on waiting for a timer's length, then left this validator). Each chunk served keeps its
    snapshot from being pruned for a while (Store.served)."""
    if chunk != OFFER and height != 0 and (not 1 <= height < messages.MAX_HEIGHT or store.db.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM snapshots WHERE height = ?)", (height,)).fetchone()[0]):
        chunk = OFFER
    if chunk == OFFER:
        row = store.db.execute("SELECT height, length(blob) FROM snapshots WHERE typeof(blob) = 'blob' "
                               "AND typeof(height) = 'integer' ORDER BY height DESC LIMIT 1").fetchone()
        if row is None or not 1 <= row[0] < messages.MAX_HEIGHT:
            return None
        chunks = max(1, -(-row[1] // SNAPSHOT_CHUNK))
        return SnapshotOffer(row[0], row[1], chunks) if chunks <= MAX_SNAPSHOT_CHUNKS else None
    for h, block_id, state_root, txs in store.snapshots():
        if height not in (0, h) or snapshot_row_problem(h, block_id, state_root, txs):
            continue  # (a row a damaged disk left: what it says cannot be served, or would raise)
        proof, proof_bytes = (), 0
        if chunk == 0 or height == 0:
            found = _proof_of(store, h, block_id)
            if found is None:
                continue  # (not provable here, or not yet: an older snapshot may do)
            proof, proof_bytes = found
        size, kind = store.db.execute("SELECT length(blob), typeof(blob) FROM snapshots WHERE height = ?",
                                      (h,)).fetchone()
        if kind != "blob":
            continue
        chunks = max(1, -(-size // SNAPSHOT_CHUNK))
        if chunk >= chunks or chunks > MAX_SNAPSHOT_CHUNKS:
            return None
        data = store.snapshot_piece(h, chunk * SNAPSHOT_CHUNK, SNAPSHOT_CHUNK)  # (not SQL substr: the whole blob)
        if data is None:
            continue
        manifest = store.snapshot_manifest(h, SNAPSHOT_CHUNK) if chunk == 0 else b""
        if manifest is None:
            continue
        out = SnapshotChunk(h, chunk, chunks, txs, proof if chunk == 0 else (), bytes(data), manifest)
        if chunk == 0 and proof_bytes + len(data) + len(manifest) + 1024 > messages.MAX_MESSAGE:
            continue  # blocks too large to carry beside the chunk in one frame
        store.served(h)
        return out
    return None


def _proof_of(store: Store, h: int, block_id: bytes) -> tuple[tuple, int] | None:
    """The commit proof of the stored snapshot at height h (of block block_id) and its encoded
    size, or None where the store cannot prove it (yet: the blocks that commit it may come). A
    proof found, or a snapshot never provable (MAX_RANGE blocks after it and no direct commit
    among them), is kept in store.snapshot_proofs while the snapshot is stored: serve looked for
    it on every chunk 0 and every ask for height 0, reading and decoding up to MAX_RANGE
    committed blocks in the consensus loop for each 50-byte request."""
    key = (h, block_id)
    if key in store.snapshot_proofs:
        return store.snapshot_proofs[key]
    try:
        found = store.committed_range(h, 3)  # usually enough: the block, its child, the QC over it
        if not all(isinstance(p, Proposal) for p in found):
            raise ValueError("a committed row holds another message")
        if _direct_commit(found) is None:
            found = store.committed_range(h, MAX_RANGE)
            if not all(isinstance(p, Proposal) for p in found):
                raise ValueError("a committed row holds another message")
    except ValueError:  # (DecodeError) a damaged row above it: an older snapshot may do
        return None
    k = _direct_commit(found)
    if k is None or found[0].block.id != block_id:
        if len(found) == MAX_RANGE or (found and found[0].block.id != block_id):
            store.keep_proof(key, None)  # never: no direct commit in MAX_RANGE blocks, or another block's row
        return None
    proof = tuple(found[:k + 3])
    out = (proof, sum(len(messages.encode(p)) for p in proof))
    if out[1] > messages.MAX_MESSAGE:
        out = None  # (never fits in a frame: kept as such, not its blocks)
    store.keep_proof(key, out)
    return out


def commit_proof(cfg: Config, verifier, proof: tuple, genesis_id: bytes | None = None) -> str:
    """Why `proof` does not show that proof[0]'s block committed ("" if it does); see the module's
    docstring. Never raises on what a peer sent.

    Every certificate the proof carries is checked too, in the same batch: each block's QC (over
    its parent: the block before it in the proof, its view and height) and TC, as the core checks
    a proposal's (core.qc_certs, core.tc_certs, with the network id); the QC height label (not
    signed) must be its block's in the blocks stored (proof[0..k]; a relabelled one in the two
    after them, never stored, is harmless). A block id covers neither
    its QC nor its TC, so a Byzantine snapshot server could send the proof's blocks with forged
    ones; the joiner stored them (its snapshot's block and the committed ones after it) and served
    them to peers, which took it for a Byzantine validator. The proof must end with the QC that
    commits: nothing after it is taken unchecked (an honest server sends exactly that, _proof_of),
    so what one costs is at most MAX_RANGE blocks' certificates, in one verifier call.
    genesis_id: the genesis block's id, which a view-0 QC must name (StateSync gives it; without
    it a view-0 QC is checked for its form only)."""
    if not 3 <= len(proof) <= MAX_RANGE or not all(isinstance(p, Proposal) for p in proof):
        return f"a proof of {len(proof)} proposals (3 to {MAX_RANGE})"
    k = _direct_commit(proof)
    if k is None:
        return "no block of the proof is committed by a QC over its child in the next view"
    if len(proof) != k + 3:
        return f"a proof of {len(proof)} proposals: the one whose QC commits is the {k + 3}th"
    triples: dict[tuple, None] = {}  # (key, message, signature), in order, each once
    for i, (prev, p) in enumerate(zip((None,) + proof[:-1], proof)):
        b = p.block
        if prev is not None and (b.parent != prev.block.id or b.height != prev.block.height + 1):
            return f"the proposal at height {b.height} does not extend the one before it"
        if not 0 <= b.proposer < cfg.n or b.proposer != cfg.leader(b.view) or len(p.signature) != 64:
            return f"the proposal at height {b.height} is not its view's leader's"
        qc, tc = b.qc, b.tc
        if qc.block_id != b.parent or (i <= k and qc.height + 1 != b.height) or b.view <= qc.view \
                or (prev is not None and qc.view != prev.block.view) \
                or (tc is None and qc.view + 1 != b.view) or (tc is not None and tc.view + 1 != b.view):
            return f"the proposal at height {b.height} does not carry a certificate of its parent and view"
        try:
            keys, msgs, sigs = qc_certs(cfg, qc.block_id if genesis_id is None else genesis_id, qc)
            if tc is not None:
                tk, tm, ts = tc_certs(cfg, tc.high_qc.block_id if genesis_id is None else genesis_id, tc)
                keys, msgs, sigs = keys + tk, msgs + tm, sigs + ts
        except InvalidCertificate as exc:
            return f"the proposal at height {b.height} carries an invalid certificate: {exc}"
        except Exception:  # (whatever a peer's certificate makes the checks do: refused, never raised)
            return f"the proposal at height {b.height} carries a malformed certificate"
        keys.append(cfg.keys[b.proposer])
        msgs.append(proposal_bytes(b.id, cfg.network))
        sigs.append(p.signature)
        for t in zip(keys, msgs, sigs):
            triples.setdefault(tuple(bytes(x) for x in t))
    if not triples or not verifier.verify_lists(*(list(x) for x in zip(*triples))):
        return "a proposer's signature or a certificate's does not verify"
    return ""


@dataclass
class Synced:
    """A snapshot taken from a peer, verified: the committed proposal it belongs to, its state,
    the snapshot's bytes, the transactions committed up to it (the peer's word), and the
    proposals after it that the proof shows committed (up to the directly committed one; the
    certified child after it is not yet)."""
    proposal: Proposal
    state: object
    blob: bytes
    txs: int
    after: tuple
    peer: int


class StateSync:
    """A validator with an empty store, taking a snapshot from its peers (see the module's
    docstring). Like the core, it only computes: start(), handle(sender, msg) and on_timer() return
    Send and SetTimer actions (the timer's view is SYNC_TIMER); `done` is set once a snapshot
    restored, `from_genesis` once FRUITLESS_ROUNDS rounds of the peers had f or fewer offer one
    (the validator then starts from the genesis, as without state sync). Nothing a peer sends
    raises; what is refused is counted in `counters`. max_bytes:
    the largest snapshot taken (at most MAX_SYNC_BYTES); the chunks held are never more than the
    manifest's size, which is at most this. clock: milliseconds, for a peer's snapshot's deadline
    (time.monotonic's unless given; the simulation gives its own)."""

    def __init__(self, cfg: Config, app, max_bytes: int = MAX_SYNC_BYTES, clock: Callable[[], float] | None = None,
                 probe: bool = False):
        self.cfg, self.app = cfg, app
        self.probe = probe
        self.max_bytes = min(max_bytes, MAX_SYNC_BYTES)
        self.clock = clock if clock is not None else (lambda: time.monotonic() * 1000.0)
        self.peer = cfg.me
        self.asks = 0  # each ask sets its own timer (SYNC_TIMER - its number): an answered ask's timer is void
        self.tries = 0  # peers asked for a snapshot so far (each round of the n - 1 doubles chunk_ms)
        self.done: Synced | None = None
        # f or fewer peers offered a snapshot in FRUITLESS_ROUNDS rounds: the validator starts
        # from the genesis instead (_next_peer)
        self.from_genesis = False
        self.offered: set[int] = set()  # peers whose chunk 0 came with a valid commit proof
        self.awaiting: set[int] = set()  # peers asked for a chunk 0 that has not come (see _late_head)
        self.counters: dict[str, int] = {}
        self.highest = 0  # the highest snapshot restored in this sync, or begun by a peer then slow (_seen)
        self._reset()

    def _reset(self) -> None:
        self.head: SnapshotChunk | None = None
        self.parts: list[bytes] = []
        self.size = 0  # the manifest's
        self.vouching: dict[int, int] | None = None  # while a large snapshot waits for f + 1 vouchers: peer -> size
        self.due: float | None = None  # (clock) by when the peer's whole snapshot is in, from its chunk 0 on
        self.probing: tuple[bytes, int] | None = None  # (id, height) of the first block the snapshot needs fetched
        self.holders: set[int] = set()  # peers that answered the probe with that block
        self.ready: Synced | None = None  # the snapshot restored, waiting for f + 1 holders

    def _count(self, why: str) -> None:
        self.counters[why] = self.counters.get(why, 0) + 1

    def _next_peer(self) -> list:
        if len(self.offered) <= self.cfg.f and self.tries >= FRUITLESS_ROUNDS * max(1, self.cfg.n - 1):
            # A young network has no snapshot yet (the first is due at a quarter of
            # snapshot_every, and provable blocks later), nor one whose validators snapshot
            # nothing: waiting for one, a joiner never voted, and with one validator down it was
            # the 2f + 1st the chain needed to move and make one (review s21). Its peers then hold
            # every block from the genesis up, which it fetches as any validator behind does.
            # f + 1 peers offering one: one of them is honest (a Byzantine one offers a real
            # commit proof and junk, or goes quiet after its chunk 0: the second review), and an
            # honest validator that holds no block from the genesis up holds snapshots.
            self.from_genesis = True
            self._count("no_snapshot")
            return []
        self.tries += 1
        self.regone = False  # (this peer said its snapshot is gone once: see _gone)
        self.peer = (self.peer + 1) % self.cfg.n
        if self.peer == self.cfg.me:
            self.peer = (self.peer + 1) % self.cfg.n
        self._reset()
        return self._ask()

    def _ask(self) -> list:
        height = self.head.height if self.head is not None else 0
        self.asks += 1
        if self.head is None:
            self.awaiting.add(self.peer)
        wait = self.wait_ms if self.due is None else min(self.wait_ms, max(0.0, self.due - self.clock()))
        return [Send(self.peer, SnapshotRequest(height, len(self.parts))), SetTimer(self.timer, wait)]

    def _late(self) -> bool:
        """Whether the peer's snapshot is past its deadline (within a millisecond: a timer set for
        the deadline runs out at it)."""
        return self.due is not None and self.clock() >= self.due - 1.0

    @property
    def _round(self) -> int:
        return min(16, max(0, self.tries - 1) // max(1, self.cfg.n - 1))

    @property
    def wait_ms(self) -> float:
        """How long an ask waits for its answer: RETRY_MS in the first round of the peers,
        doubled each round after, at most SLOW_MS (a joiner whose link carries a 4 MiB chunk in
        more than 2 s is served in the round whose wait fits it)."""
        return min(SLOW_MS, RETRY_MS * 2 ** self._round)

    @property
    def chunk_ms(self) -> float:
        """The time per chunk the peer's snapshot is given: CHUNK_MS in the first round of the
        peers, doubled each round after, at most wait_ms (the silence timer's)."""
        return min(self.wait_ms, CHUNK_MS * 2 ** self._round)

    @property
    def timer(self) -> int:
        """The timer view of the latest ask."""
        return SYNC_TIMER - (self.asks - 1)

    def start(self) -> list:
        return self._next_peer()

    def on_timer(self, view: int) -> list:
        """A state-sync timer (view <= SYNC_TIMER) ran out: if it is the latest ask's, its peer was
        silent (or, for a large snapshot, f + 1 peers did not vouch for its size in time), or its
        snapshot is past its deadline (see the module's docstring)."""
        if self.done is not None or view != self.timer:
            return []
        if self.ready is not None and self._taken_alone():
            self._count("snapshot_one_holder")
            self.done, self.ready = self.ready, None
            return []
        self._seen()
        self._count("snapshot_unservable" if self.ready is not None else "peer_slow" if self._late()
                    else "peer_silent" if self.vouching is None else "snapshot_unvouched")
        return self._next_peer()

    def _seen(self) -> None:
        """The peer is left for slowness or silence (not for a bad chunk) after its chunk 0 (a
        real commit proof): its snapshot's height counts toward `highest` as a restored one's
        does. An honest peer too slow to finish in the first round still showed how high the
        honest snapshots are, so a Byzantine peer's old one restored in the next round is not
        taken alone before it."""
        if self.head is not None:
            self.highest = max(self.highest, self.head.height)

    def _taken_alone(self) -> bool:
        """Whether the restored snapshot waiting for f + 1 holders is taken with fewer: in a later
        round of the peers (each was asked once), with at least one holder, and at least as high
        as every snapshot restored in this sync, or whose chunk 0 came from a peer left for
        slowness or silence (_seen). f + 1 holders may not exist with no fault beyond
        f: n = 4, one validator down, and two joining at once (a lost disk, a new one): the only
        peers beside the one serving were the down one and the other joiner, which holds nothing
        until it is synced itself, so neither ever synced and the chain stopped for good. An old
        snapshot a Byzantine peer restores (the probe's reason) is below the honest one restored
        in the first round, so it is never the highest; a higher one restored (a real committed
        block's, its state root checked) is above every honest validator's first block, so the
        honest ones caught up hold the blocks after it. (What is left: a Byzantine peer that
        begins a higher snapshot than the honest ones, a real committed block's, then goes
        quiet keeps them from being taken alone: such a sync waits for f + 1 holders as before.)"""
        return self.tries > self.cfg.n - 1 and len(self.holders) >= 1 \
            and self.ready.proposal.block.height >= self.highest

    def _gone(self) -> list:
        """The peer answered an ask for a chunk with the offer of another snapshot: the one being
        fetched is gone (pruned, see serve). Its newest is asked for at once, once a peer (its
        deadline anew from that one's chunk 0; the chunks held are dropped); a second time, or
        a Byzantine peer saying so to restart its deadline, the next peer is asked."""
        self._count("snapshot_gone")
        if self.regone:
            return self._next_peer()
        self.regone = True
        self._reset()
        return self._ask()

    def _vouched(self) -> bool:
        return sum(VOUCH_FACTOR * s + VOUCH_FREE >= self.size for s in self.vouching.values()) > self.cfg.f

    def _offer(self, sender: int, msg: SnapshotOffer) -> list:
        if self.vouching is None:  # none asked for, or a late answer to an ask that is done
            if sender == self.peer and self.head is not None and self.ready is None and msg.height != self.head.height:
                return self._gone()
            return []
        if not 0 <= sender < self.cfg.n or sender == self.cfg.me or sender in self.vouching:
            self._count("offer_unasked")
            return []
        self.vouching[sender] = msg.size
        if not self._vouched():
            return []
        self.vouching = None
        return self._ask()

    def handle(self, sender: int, msg) -> list:
        if self.done is not None:
            return []
        if isinstance(msg, SnapshotOffer):
            return self._offer(sender, msg)
        if isinstance(msg, BlockResponse):
            return self._held(sender, msg)
        if not isinstance(msg, SnapshotChunk):
            return []
        if self.ready is not None or sender != self.peer or msg.chunk != len(self.parts) or self.vouching is not None \
                or (self.head is not None and (msg.height, msg.chunks) != (self.head.height, self.head.chunks)):
            return self._late_head(sender, msg)
        if self._late():
            self._count("peer_slow")  # its snapshot not in by its deadline: dropped, the next peer's asked for
            self._seen()
            return self._next_peer()
        if self.head is None:
            self.awaiting.discard(sender)
            why = self._head_problem(msg)
            if why:
                self._count(why)
                return self._next_peer()
            self.offered.add(sender)
        elif _chunk_problem(msg):
            self._count("chunk_bad")
            return self._next_peer()
        elif hashlib.sha256(msg.data).digest() != self.head.manifest[8 + 32 * msg.chunk:40 + 32 * msg.chunk]:
            self._count("snapshot_bad")  # not the chunk its manifest names: dropped, and the peer left
            return self._next_peer()
        return self._take(sender, msg)

    def _late_head(self, sender: int, msg: SnapshotChunk) -> list:
        """A chunk not asked for, unless it is the chunk 0 of a peer asked for one whose ask's
        timer ran out before it came. Such a peer holds a snapshot all the same: it counts
        toward the f + 1 offers that keep the sync from starting from the genesis (where no
        peer holds the blocks from it, all state-synced or pruned, that start never ends: the
        s21 lead). It is not taken: the peer asked now is waited for, and the rounds' waits grow
        until a slow link's chunk 0 fits (taken, a Byzantine peer's late chunk 0 displaced an
        honest peer's ask and, moving the sync's place among the peers, had the Byzantine peers
        behind it asked again: f of them held a sync 2^f - 1 takeovers long, the second review).
        Each ask of a peer lets one such chunk be checked (awaiting), as the answer to the ask
        itself is."""
        if msg.chunk != 0 or sender not in self.awaiting:
            self._count("chunk_unasked")
            return []
        self.awaiting.discard(sender)
        why = self._head_problem(msg)
        if why:
            self._count(why)
            return []
        self.offered.add(sender)
        self._count("chunk_late")
        return []

    def _head_problem(self, msg: SnapshotChunk) -> str | None:
        """Why a chunk 0 is refused (a counter's name), or None."""
        if _chunk_problem(msg):
            return "chunk_bad"
        why = commit_proof(self.cfg, self.app.verifier, msg.proof, genesis_block(self.app.genesis.root).id)
        if why or msg.proof[0].block.height != msg.height or msg.height < 1 \
                or not self._signed_txs(msg.proof):  # (the genesis needs no sync)
            return "proof_bad"
        size = int.from_bytes(msg.manifest[:8], "big")
        if len(msg.manifest) != 8 + 32 * msg.chunks or msg.chunks != max(1, -(-size // SNAPSHOT_CHUNK)):
            return "manifest_bad"
        if size > self.max_bytes:
            return "snapshot_too_large"
        if hashlib.sha256(msg.data).digest() != msg.manifest[8:40]:
            return "snapshot_bad"
        return None

    def _take(self, sender: int, msg: SnapshotChunk) -> list:
        """Holds a chunk checked against its manifest (chunk 0: its commit proof too)."""
        last = msg.chunk == msg.chunks - 1
        probes = []
        if self.head is None:
            self.head, self.size = msg, int.from_bytes(msg.manifest[:8], "big")
            self.due = self.clock() + self.wait_ms + (msg.chunks - 1) * self.chunk_ms
            if self.probe:
                b = msg.proof[_direct_commit(msg.proof) + 1].block
                self.probing = (b.id, b.height)
                probes = self._probes()
        self.parts.append(msg.data)
        if not last:
            if msg.chunk == 0 and self.size > VOUCH_FREE:
                self.vouching = {sender: self.size}
                if not self._vouched():  # (f = 0: the serving peer alone is enough)
                    self.asks += 1
                    return probes + [Send(p, SnapshotRequest(0, OFFER)) for p in range(self.cfg.n)
                                     if p not in (sender, self.cfg.me)] + [SetTimer(self.timer, self.wait_ms)]
                self.vouching = None
            return probes + self._ask()
        blob = b"".join(self.parts)
        self.parts = []
        first = self.head.proof[0]
        try:
            if len(blob) != self.size:
                raise ValueError(f"{len(blob)} bytes, the manifest says {self.size}")
            state = snapshots.restore(self.app, blob, first.block.state_root)
        except ValueError:
            self._count("snapshot_bad")
            return self._next_peer()
        k = _direct_commit(self.head.proof)
        synced = Synced(first, state, blob, self.head.txs, tuple(self.head.proof[1:k + 1]), sender)
        self.highest = max(self.highest, first.block.height)
        if not self.probe or len(self.holders) > self.cfg.f:
            self.done = synced
            return []
        # f + 1 peers have not shown they hold the block after it yet: asked again (a probe may
        # have been dropped), and the snapshot is left for the next peer's if they do not in time
        self.ready, self.parts = synced, []
        self.asks += 1
        return (probes or self._probes()) + [SetTimer(self.timer, self.wait_ms)]

    def _signed_txs(self, proof: tuple) -> bool:
        """Whether the transactions of the proof's blocks that a sync stores (the snapshot's block
        and the committed ones after it) are those their proposers signed: a block's id covers
        its transactions' digest, root and count, not the transactions, so a Byzantine peer's
        proof with other ones passed commit_proof, was stored, and the core's replay of it raised
        InvariantViolation (the node stopped, and again on every restart from that store)."""
        try:
            return all(p.block.txs.digest() == p.block.sig_digest and self.app.tx_root(p.block.txs) == p.block.tx_root
                       for p in proof[:_direct_commit(proof) + 1])
        except Exception:  # (whatever a peer's transactions make the hashing do: refused, never raised)
            return False

    def _probes(self) -> list:
        """Ask every peer that has not yet shown it holds the first block the snapshot needs
        fetched (one block, its id and height from the proof) for that block."""
        block_id, height = self.probing
        return [Send(p, BlockRequest(block_id, height, 1)) for p in range(self.cfg.n)
                if p != self.cfg.me and p not in self.holders]

    def _held(self, sender: int, msg: BlockResponse) -> list:
        """A peer's answer to the probe: it holds the block after the snapshot (one of f + 1
        needed, see the module's docstring); anything else is not counted."""
        if self.probing is None or not 0 <= sender < self.cfg.n or sender == self.cfg.me \
                or not msg.proposals or msg.proposals[0].block.id != self.probing[0]:
            return []
        self.holders.add(sender)
        if self.ready is not None and len(self.holders) > self.cfg.f:
            self.done, self.ready = self.ready, None
        return []


def bounded(synced: Synced, per_block: int) -> Synced:
    """The synced snapshot with its count of committed transactions (the peer's word; only the
    built-in load uses it: a synced node skips that many of its stream, and its own snapshots
    carry the count on) at most per_block (the node's txs_per_block) for each block up to the
    snapshot's. A Byzantine peer's 2^47 had a joining node with the built-in clearing load
    generate and sign that many transactions (it never joined); an honest count past the bound
    (proposers with a larger txs_per_block) only makes the load offer some committed ones again,
    which the mempool refuses."""
    return replace(synced, txs=min(synced.txs, synced.proposal.block.height * max(0, per_block)))


def begin(store: Store, synced: Synced, safety=None) -> Base:
    """Write a verified snapshot and the committed blocks that came with it into an empty store,
    with the core's starting safety state (Core(...).safety before it votes; see
    Store.begin_from_snapshot); the Base a core starts from (its history: synced.after)."""
    store.begin_from_snapshot(synced.proposal, synced.txs, synced.blob, safety)
    for p in synced.after:
        store.add_committed(p)
    return Base(synced.proposal, synced.state)
