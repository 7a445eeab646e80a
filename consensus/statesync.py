"""State sync (issue 20): a validator with an empty store takes a peer's state snapshot instead of
replaying the chain from the genesis.

What makes a peer's snapshot trustworthy is the block it belongs to having committed, not the
peer: with at most f faulty validators, a QC (2f + 1 signatures) over a block B1 whose view is its
parent B0's plus one commits B0 (the 2-chain rule), and every ancestor of a committed block is
committed. So the peer sends, with the snapshot's first chunk, the committed proposals from the
snapshot's block S up to such a pair and the proposal whose QC certifies B1 (commit_proof checks:
consecutive heights, each block's parent the one before, each proposer the view's leader and its
signature, the QC's signers and signatures, all in one batch). The snapshot then must hash to S's
state root (snapshots.restore), which the 2f + 1 validators that voted for S checked. The chunks
(SNAPSHOT_CHUNK bytes each, at most MAX_SNAPSHOT_CHUNKS) are asked for one at a time from one
peer; a peer that answers what was not asked, sends a bad proof or chunk, or goes quiet for a
timer's length is left for the next one. After it, the validator starts from the snapshot (Core's
base) and fetches the blocks after it as any validator behind does (ranged BlockRequests)."""
from __future__ import annotations

from dataclasses import dataclass

from . import messages, snapshots
from .core import Base, Config, SetTimer, Send
from .messages import (
    MAX_RANGE, MAX_SNAPSHOT_CHUNKS, SNAPSHOT_CHUNK, Proposal, SnapshotChunk, SnapshotRequest, proposal_bytes, vote_bytes,
)
from .store import Store

RETRY_MS = 2_000.0  # a peer silent this long after an ask is left for the next one
SYNC_TIMER = -1     # the SetTimer view of state sync's first ask; ask n's is SYNC_TIMER - n (views are >= 0)
MAX_TXS = 1 << 48   # a snapshot's count of committed transactions (the peer's word) beyond this is refused


def _direct_commit(proposals) -> int | None:
    """The index k of the first block of `proposals` (a chain, oldest first) that the chain shows
    committed directly: its child k+1 in the next view, and k+2 carrying a QC over the child."""
    for k in range(len(proposals) - 2):
        b0, b1, b2 = (p.block for p in proposals[k:k + 3])
        if b1.view == b0.view + 1 and b2.qc.block_id == b1.id and b2.qc.view == b1.view:
            return k
    return None


def serve(store: Store, height: int, chunk: int) -> SnapshotChunk | None:
    """A chunk of the newest stored snapshot whose commit the store can prove (height 0), or of the
    one at `height`; None if there is none. Only a first chunk carries the proof, and only when
    it fits in one frame beside the chunk (an older snapshot may do otherwise)."""
    for h, block_id, _, txs in store.snapshots():
        if height not in (0, h):
            continue
        proof: tuple = ()
        if chunk == 0 or height == 0:
            found = store.committed_range(h, 3)  # usually enough: the block, its child, the QC over it
            if _direct_commit(found) is None:
                found = store.committed_range(h, MAX_RANGE)
            k = _direct_commit(found)
            if k is None or found[0].block.id != block_id:
                continue  # (the blocks that commit it are not committed here yet: an older snapshot may do)
            proof = tuple(found[:k + 3])
        size = store.db.execute("SELECT length(blob) FROM snapshots WHERE height = ?", (h,)).fetchone()[0]
        chunks = max(1, -(-size // SNAPSHOT_CHUNK))
        if chunk >= chunks or chunks > MAX_SNAPSHOT_CHUNKS:
            return None
        (data,) = store.db.execute("SELECT substr(blob, ?, ?) FROM snapshots WHERE height = ?",
                                   (chunk * SNAPSHOT_CHUNK + 1, SNAPSHOT_CHUNK, h)).fetchone()
        out = SnapshotChunk(h, chunk, chunks, txs, proof if chunk == 0 else (), bytes(data))
        if chunk == 0 and sum(len(messages.encode(p)) for p in proof) + len(data) + 1024 > messages.MAX_MESSAGE:
            continue  # blocks too large to carry beside the chunk in one frame
        return out
    return None


def commit_proof(cfg: Config, verifier, proof: tuple) -> str:
    """Why `proof` does not show that proof[0]'s block committed ("" if it does); see the module's
    docstring. Never raises on what a peer sent."""
    if not 3 <= len(proof) <= MAX_RANGE or not all(isinstance(p, Proposal) for p in proof):
        return f"a proof of {len(proof)} proposals (3 to {MAX_RANGE})"
    keys, msgs, sigs = [], [], []
    for prev, p in zip((None,) + proof[:-1], proof):
        b = p.block
        if prev is not None and (b.parent != prev.block.id or b.height != prev.block.height + 1):
            return f"the proposal at height {b.height} does not extend the one before it"
        if not 0 <= b.proposer < cfg.n or b.proposer != cfg.leader(b.view) or len(p.signature) != 64:
            return f"the proposal at height {b.height} is not its view's leader's"
        keys.append(cfg.keys[b.proposer])
        msgs.append(proposal_bytes(b.id))
        sigs.append(p.signature)
    k = _direct_commit(proof)
    if k is None:
        return "no block of the proof is committed by a QC over its child in the next view"
    qc = proof[k + 2].block.qc
    if len(set(qc.voters)) != len(qc.voters) or len(qc.voters) < cfg.quorum \
            or not all(0 <= v < cfg.n for v in qc.voters) or len(qc.sigs) != 64 * len(qc.voters):
        return f"the QC at height {proof[k + 1].block.height} has {len(set(qc.voters))} valid signers"
    for i, v in enumerate(qc.voters):
        keys.append(cfg.keys[v])
        msgs.append(vote_bytes(qc.block_id, qc.view))
        sigs.append(qc.sigs[64 * i:64 * i + 64])
    if not verifier.verify_lists(keys, msgs, sigs):
        return "a proposer's or the QC's signature does not verify"
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
    restored. Nothing a peer sends raises; what is refused is counted in `counters`."""

    def __init__(self, cfg: Config, app):
        self.cfg, self.app = cfg, app
        self.peer = cfg.me
        self.asks = 0  # each ask sets its own timer (SYNC_TIMER - its number): an answered ask's timer is void
        self.done: Synced | None = None
        self.counters: dict[str, int] = {}
        self._reset()

    def _reset(self) -> None:
        self.head: SnapshotChunk | None = None
        self.parts: list[bytes] = []

    def _count(self, why: str) -> None:
        self.counters[why] = self.counters.get(why, 0) + 1

    def _next_peer(self) -> list:
        self.peer = (self.peer + 1) % self.cfg.n
        if self.peer == self.cfg.me:
            self.peer = (self.peer + 1) % self.cfg.n
        self._reset()
        return self._ask()

    def _ask(self) -> list:
        height = self.head.height if self.head is not None else 0
        self.asks += 1
        return [Send(self.peer, SnapshotRequest(height, len(self.parts))), SetTimer(self.timer, RETRY_MS)]

    @property
    def timer(self) -> int:
        """The timer view of the latest ask."""
        return SYNC_TIMER - (self.asks - 1)

    def start(self) -> list:
        return self._next_peer()

    def on_timer(self, view: int) -> list:
        """A state-sync timer (view <= SYNC_TIMER) ran out: if it is the latest ask's, its peer was
        silent."""
        if self.done is not None or view != self.timer:
            return []
        self._count("peer_silent")
        return self._next_peer()

    def handle(self, sender: int, msg) -> list:
        if self.done is not None or not isinstance(msg, SnapshotChunk):
            return []
        if sender != self.peer or msg.chunk != len(self.parts) or \
                (self.head is not None and (msg.height, msg.chunks) != (self.head.height, self.head.chunks)):
            self._count("chunk_unasked")
            return []
        last = msg.chunk == msg.chunks - 1
        if len(msg.data) > SNAPSHOT_CHUNK or (not last and len(msg.data) != SNAPSHOT_CHUNK) or not 0 <= msg.txs < MAX_TXS:
            self._count("chunk_bad")
            return self._next_peer()
        if self.head is None:
            why = commit_proof(self.cfg, self.app.verifier, msg.proof)
            if why or msg.proof[0].block.height != msg.height or msg.height < 1:  # the genesis needs no sync
                self._count("proof_bad")
                return self._next_peer()
            self.head = msg
        self.parts.append(msg.data)
        if not last:
            return self._ask()
        blob = b"".join(self.parts)
        first = self.head.proof[0]
        try:
            state = snapshots.restore(self.app, blob, first.block.state_root)
        except ValueError:
            self._count("snapshot_bad")
            return self._next_peer()
        k = _direct_commit(self.head.proof)
        self.done = Synced(first, state, blob, self.head.txs, tuple(self.head.proof[1:k + 1]), sender)
        return []


def begin(store: Store, synced: Synced) -> Base:
    """Write a verified snapshot and the committed blocks that came with it into an empty store;
    the Base a core starts from (its history: synced.after)."""
    store.begin_from_snapshot(synced.proposal, synced.txs, synced.blob)
    for p in synced.after:
        store.add_committed(p)
    b = synced.proposal.block
    return Base(synced.proposal, synced.state, (None,) * b.height + (b.id,))
