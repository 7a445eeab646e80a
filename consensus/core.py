"""The consensus protocol as a pure state machine: chained BFT in the Jolteon / DiemBFT-v4 style,
with 2-chain commits and timeout certificates, for n = 3f + 1 validators.

Why this member of the HotStuff family: in the common case a block commits after two rounds of
votes instead of classic HotStuff's three (lower finality, which is what this project measures),
and the price, a view change whose timeouts carry each validator's highest QC, is paid only when
a leader fails.

The core only computes: handle(sender, message), on_timer(view) and start() return actions
(send, broadcast, set a timer, persist the safety state, a block committed or rejected); the
driver delivers messages and timer expiries and carries the actions out, Persist before any send
that follows it. No I/O, clock or randomness lives here.

Safety rules (the only things that keep two honest validators from committing different blocks):
  * vote at most once per view, and only in the current view: last_voted_view only grows, and it
    is written (Persist) before the vote leaves;
  * vote for a block only if it extends the QC of the view just before it, or carries a TC for
    that view and extends a QC at least as high as any in the TC (_safe_to_vote);
  * stop voting in a view once this validator has timed out in it (_on_local_timeout), its own
    timeouts sent to help a peer behind included (_help_behind): each raises last_voted_view to
    its view, written before the timeout leaves, so no restart votes in a view timed out in.
Commit rule (2-chain): a block B0 is committed when a QC certifies its child B1 and B1's view is
B0's plus one (_process_qc); its uncommitted ancestors commit with it, in order.
Pacemaker: a view ends with a QC (the leader of the next view collects the votes) or a TC (2f+1
timeouts); timeouts grow 2x for each view in a row that failed, back to the base after a QC. A TC is formed by
each validator from the timeouts it receives and never sent on its own, so a validator left in a
view the others formed a TC in is helped on (review p6): a peer's own timeout of such a view is
answered with that TC's timeouts (_help_behind), and f+1 voters' timeouts in views ahead move a
validator to the lowest view at least one honest validator reached. A proposer's own copy of a
block held or parked from a relayer gives it the proposer's certificates, never its transactions.

Input from the network (issue 22): every message is verified before it changes any state, with no
shortcut keyed on a field its sender controls (a timeout naming this validator is verified like
any other; only _on_local_timeout tallies this validator's own). A QC's signatures cover its block
id and view, not its height: the height is trusted only where it equals the certified block's
(_qc_matches), a block's height must be its parent's plus one, and views and heights are below
messages.MAX_VIEW / MAX_HEIGHT. handle() never raises on input: what fails a check is dropped (a
Rejected action for a block) and counted in Core.counters; only InvariantViolation gets out.
Missing blocks are fetched in ranges (BlockRequest from the committed height, at most MAX_RANGE a
response, stopped before a proposal no frame would hold), one fetch per block, at most MAX_FETCHES
outstanding and MAX_PARKED proposals waiting (certificates and proposer's signature checked first;
one of a proposer's view unless certified, its transactions within its share of PARKED_BYTES),
children processed in a loop.
Blocks a Byzantine leader signs (review s5): a block is taken only if an honest validator could
vote for it (its QC or a TC is of the view just before it), above the committed block's view, and
one block a view unless it is known to be certified (fetched, or certified by the next proposal of
a response, _vouched); so a leader's blocks for far views or many versions of one view are dropped
before any validation. A parked proposal's transactions must match its digest and root (the id
covers only those). Committed ids are looked up by a dict of the newest (self.heights) and, where
a store is attached, its index of the older ones, never by a chain scan; with a store, memory holds
the ids of the last WINDOW to 2 x WINDOW heights, not of the whole chain (_Chain). A verified QC
over a block not held yet waits for it (pending_qcs), so a next leader from whom the proposal was
withheld still proposes; a fetch answered short (under MAX_RANGE and RANGE_BYTES) goes on with
the next validator. Exceptions from input are logged at counts 1, 2, 4, 8...
A sender whose timeout or proposal does not verify (or validate) is one no honest validator is:
its timeouts, proposals and block responses are dropped unchecked until this validator's view
changes (_faulty), and a QC verified once is not verified again (good_qcs), so a Byzantine
validator's forged certificates cost their 2f+1 signatures once a view, not once a frame; a
sender's block that does not validate has its other blocks of that view refused unchecked.
A valid proposal this validator may vote for is also put to the application (app.endorse, where
it has one): a clearing validator holding a signed oracle mark that the block leaves out does not
vote (apps/mark_watch.py), so a leader cannot margin its block at a mark it holds back. That is a
vote withheld, not a verdict: the block is kept and taken if others certify it, and its proposer
is not faulted.
Durability: Persist carries the uncommitted blocks up to the high QC's block and the last voted
block (Safety.blocks), so a network restarted all at once still holds what its high QCs certify;
a leader's block leaves after its own vote is persisted, and a leader does not propose in a view
it voted in, so one restarted in its view signs no second block of it;
memory is pruned below the committed block (_prune).
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

from .apps.kv import EMPTY
from .messages import (
    MAX_HEIGHT, MAX_MESSAGE, MAX_RANGE, MAX_VIEW, QC, RANGE_BYTES, RESPONSE_HEAD, TC, Block, BlockRequest,
    BlockResponse, Proposal, SnapshotChunk, SnapshotRequest, Timeout, Txs, Vote, proposal_bytes, proposal_size,
    timeout_bytes, vote_bytes, network_bytes,
)


def _detached(p: Proposal) -> Proposal:
    """p with its transactions copied out of the frame it was decoded from: a decoded block's
    bodies and signatures are views into the whole frame, so a proposal parked from a 64 MiB
    BlockResponse kept all of it alive (MAX_PARKED of them: up to 64 x 64 MiB from one Byzantine
    leader) for the few bytes of its own transactions."""
    txs = p.block.txs
    if txs.bodies.data.base is None and txs.sigs.base is None:
        return p
    copy = Txs(type(txs.bodies)(txs.bodies.data.copy(), txs.bodies.offsets.copy()), txs.sigs.copy())
    return Proposal(replace(p.block, txs=copy), p.signature)


def _pins_more(p: Proposal) -> bool:
    """Whether p's transactions are views into a buffer much larger than themselves (a block taken
    from a BlockResponse padded with stale proposals, dropped unchecked: its 596 bytes kept a
    62.9 MB frame alive for as long as the block was held)."""
    txs = p.block.txs
    own = txs.bodies.data.nbytes + txs.sigs.nbytes
    return held_bytes([txs.bodies.data, txs.sigs]) > 2 * own + (64 << 10)


def _tx_bytes(b: Block) -> int:
    return b.txs.bodies.data.nbytes + b.txs.sigs.nbytes


def held_bytes(arrays) -> int:
    """The bytes of the buffers numpy arrays are views into (an array's own if none), each buffer
    once (a decoded frame's proposals all look into the frame)."""
    roots = {}
    for a in arrays:
        while True:
            if getattr(a, "base", None) is not None:
                a = a.base
            elif isinstance(a, memoryview) and a.obj is not None:
                a = a.obj
            else:
                roots[id(a)] = a.nbytes if hasattr(a, "nbytes") else len(a)
                break
    return sum(roots.values())


# ---- actions ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Send:
    to: int
    msg: object


@dataclass(frozen=True)
class Broadcast:
    msg: object  # to every validator but this one


@dataclass(frozen=True)
class SetTimer:
    view: int
    delay_ms: float


@dataclass(frozen=True)
class ProposeTimer:
    """A leader with nothing to propose (Config.empty_block_interval_ms) waits this long in `view`:
    the driver calls Core.on_propose_timer(view) then (Core.on_txs as soon as transactions come)."""
    view: int
    delay_ms: float


@dataclass(frozen=True)
class Safety:
    """What must be on disk before a vote (or timeout) that follows it leaves: the last view this
    validator voted in, its highest QC, and `blocks`, the proposals of the uncommitted chains from
    the committed block up to the high QC's block and up to the block it last voted for. With
    those a validator restarted together with all the others still holds the block its high QC
    certifies, and the chain goes on (a store keeps each block once; equality ignores them)."""
    last_voted_view: int
    high_qc: QC
    blocks: tuple = field(default=(), compare=False)


@dataclass(frozen=True)
class Persist:
    safety: Safety


@dataclass(frozen=True)
class Committed:
    block: Block
    proposal: Proposal  # what a store keeps, so the block can be served and replayed
    validation_ms: dict


@dataclass(frozen=True)
class Rejected:
    block_id: bytes
    proposer: int
    reason: str


@dataclass(frozen=True)
class Config:
    me: int
    keys: tuple[bytes, ...]  # every validator's Ed25519 public key, by index
    base_timeout_ms: float = 1000.0
    # a view's timeout doubles per failed view up to this, or up to base_timeout_ms where that is
    # more (timeout_ms): a base above it ran every view at this cap, not at the configured base
    max_timeout_ms: float = 60_000.0
    # a leader with no transaction to propose, and no uncommitted block of transactions that needs
    # successors to commit (or to show the others it committed), waits up to this long before it
    # proposes an empty block (0: at once). An idle network committed empty blocks as fast as its
    # links and CPUs allowed (135-151 a second on loopback, ~1.5 KB of store, events and log each
    # per validator: ~20 GB a day); less than base_timeout_ms / 2, so no follower's view times out
    empty_block_interval_ms: float = 0.0
    # the network id (messages.network_id: chain id, genesis state root, validator keys), in the
    # bytes of every vote, timeout and proposal this validator signs or checks; the drivers derive
    # it (node.py, sim.py); b"" (the unnamed network) only for unit tests and benches
    network: bytes = b""

    @property
    def n(self) -> int:
        return len(self.keys)

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    @property
    def quorum(self) -> int:
        """n - f: any two quorums share at least f + 1 validators, one of them honest, whatever n
        (2f + 1 at n = 3f + 1; CometBFT's "more than 2/3"). 2f + 1 at every n made n = 5 certify
        with 3 votes: two QCs of one view shared one validator, and one equivocating leader
        could fork the chain (review s15)."""
        return self.n - self.f

    def leader(self, view: int) -> int:
        return view % self.n

    def timeout_ms(self, failures: int) -> float:
        """A view's timer after this many failed views in a row: the base, doubled per failure, up
        to max(max_timeout_ms, base_timeout_ms)."""
        return min(self.base_timeout_ms * 2 ** min(failures, 16), max(self.max_timeout_ms, self.base_timeout_ms))

    def __post_init__(self):
        # Under 4 validators f is 0: the leader's own vote is a quorum, so a lone validator would
        # propose, certify and propose again without end (and no fault would be tolerated).
        if self.n < 4:
            raise ValueError(f"{self.n} validator(s): BFT needs n = 3f + 1 >= 4")
        if not 0 <= self.me < self.n:
            raise ValueError(f"validator index {self.me} outside 0..{self.n - 1}")
        network_bytes(self.network)
        interval = self.empty_block_interval_ms
        if not (0 <= interval < math.inf) or (interval and interval >= self.base_timeout_ms / 2):
            raise ValueError(f"empty_block_interval_ms {interval}: 0, or at least 0 and below base_timeout_ms / 2 "
                             f"({self.base_timeout_ms / 2:g})")


@dataclass(frozen=True)
class Base:
    """A committed block and its state to start from instead of the genesis (a snapshot, its state
    already checked against the block's state root). The ids below it are the store's to answer
    (Core.chain): carried here, every id below a snapshot at height 10^8 took ~7 GB (a state
    sync's None for each, 0.8 GB)."""
    proposal: Proposal
    state: object


def genesis_block(state_root: bytes) -> Block:
    """View 0, height 0: the same on every validator of one application genesis."""
    zero = bytes(32)
    empty = Txs.empty()
    return Block(0, 0, zero, 0, EMPTY, state_root, empty.digest(), empty, QC(zero, 0, 0))


log = logging.getLogger("consensus.core")
MAX_PARKED = 256   # proposals kept while their parent is fetched
PARKED_BYTES = 256 << 20  # their transactions' bytes; a proposer's share is this / n (one always fits)
MAX_FETCHES = 16   # blocks asked for and not yet received
ASKED_FROM = 1024  # (peer, height) of the block requests sent, latest kept: what answers are measured from
FETCH_VIEWS = 8    # views entered (not by fetched blocks) a fetch waits for its answer before it is asked again
VOTE_WINDOW = 1_000  # votes for views further ahead of this validator's are dropped
GOOD_QCS = 32      # QCs whose signatures verified, kept so a timeout carrying one again costs one signature
FUTURE_TIMEOUTS = 8  # a voter's timeouts for views ahead checked per view of this validator (_over_budget)
REPLAY_CHECK_BATCH = 256  # stored blocks whose certificates a restart verifies in one batch
# committed ids held in memory (WINDOW to 2 x WINDOW of the newest) where a store holds them all
# (_Chain): more than one handle() can commit (a response's MAX_RANGE blocks and the MAX_PARKED
# proposals waiting on them), so every id let go is one the driver has stored already
WINDOW = 1024


def _id_store(committed_source):
    """The store whose committed_range is committed_source (a bound method), if it answers for
    committed ids (Store.committed_height_of, committed_ids_between); else None (refused with a
    Base: see Core)."""
    store = getattr(committed_source, "__self__", None)
    return store if hasattr(store, "committed_height_of") and hasattr(store, "committed_ids_between") else None


class _Chain:
    """The committed block ids by height, read as the list they were (chain[h], chain[low:high],
    len; None where not known: below a state-synced store's first block). Where a store holds the
    committed blocks (store), only the newest WINDOW to 2 x WINDOW ids are in memory and the older
    ones are read from it: an idle network commits ~150 empty blocks a second, and a list of every
    id (with Core.heights) grew each validator by ~1.5 GB a day. Without a store (the simulation's
    validators without one, unit tests) every id stays: nothing else could answer for them."""

    def __init__(self, genesis: bytes, first: int = 1, ids=(), store=None):
        self.genesis = genesis  # height 0's, on every chain of the network
        self.first = first  # the height of ids[0]
        self.ids: list = list(ids)
        self.store = store

    def __len__(self) -> int:
        return self.first + len(self.ids)

    def append(self, block_id: bytes) -> None:
        self.ids.append(block_id)
        if self.store is not None and len(self.ids) > 2 * WINDOW:
            gone = len(self.ids) - WINDOW
            del self.ids[:gone]
            self.first += gone

    def __getitem__(self, key):
        if isinstance(key, slice):
            low, high, step = key.indices(len(self))
            if step != 1:
                raise ValueError("a chain is sliced in height order")
            held = self.ids[max(low - self.first, 0):max(high - self.first, 0)]
            if low >= self.first:
                return held
            older = [self.genesis] if low == 0 < high else []
            top = min(high, self.first)
            if self.store is not None:
                older += self.store.committed_ids_between(max(low, 1), top)
            else:
                older += [None] * (top - max(low, 1))
            return older + held
        if key < 0:
            key += len(self)
        if not 0 <= key < len(self):
            raise IndexError(key)
        if key >= self.first:
            return self.ids[key - self.first]
        return self[key:key + 1][0]


class InvalidCertificate(ValueError):
    pass


class InvariantViolation(AssertionError):
    """A broken internal invariant of this validator (never something a peer sent): the one
    exception Core.handle lets out, so the driver stops the node with its one-line message."""


@dataclass
class _Tally:
    """Votes (or timeouts) for one target, by voter."""
    sigs: dict = field(default_factory=dict)


def _check_voters(cfg: Config, voters, sigs: bytes) -> None:
    if len(voters) > cfg.n:  # before any pass over them: a frame may name 65,535
        raise InvalidCertificate(f"{len(voters)} signers, {cfg.n} validators")
    if len(set(voters)) != len(voters) or len(voters) < cfg.quorum:
        raise InvalidCertificate(f"{len(set(voters))} distinct signers, {cfg.quorum} needed")
    if any(not 0 <= v < cfg.n for v in voters) or len(sigs) != 64 * len(voters):
        raise InvalidCertificate("signer index or signature length out of range")


def qc_certs(cfg: Config, genesis_id: bytes, qc: QC) -> tuple[list, list, list]:
    """The (keys, messages, signatures) that make `qc` valid on the network of `cfg` whose genesis
    block is `genesis_id`; InvalidCertificate if it cannot be. The signatures cover the block id
    and view, not the height: see Core._qc_matches. Shared by the core and state sync
    (statesync.commit_proof), so both check a certificate the same way."""
    if qc.view == 0:
        if qc.block_id != genesis_id or qc.voters or qc.height != 0:
            raise InvalidCertificate("a view-0 QC must be the genesis QC")
        return [], [], []
    if qc.view >= MAX_VIEW or qc.height >= MAX_HEIGHT:
        raise InvalidCertificate("view or height out of range")
    _check_voters(cfg, qc.voters, qc.sigs)
    msg = vote_bytes(qc.block_id, qc.view, cfg.network)
    return ([cfg.keys[v] for v in qc.voters], [msg] * len(qc.voters),
            [qc.sigs[64 * i:64 * i + 64] for i in range(len(qc.voters))])


def _qc_key(qc: QC) -> tuple:
    """good_qcs' key: what a QC's signatures cover and are (its height label is not signed)."""
    return qc.block_id, qc.view, qc.voters, qc.sigs


def tc_certs(cfg: Config, genesis_id: bytes, tc: TC) -> tuple[list, list, list]:
    """The (keys, messages, signatures) that make `tc` valid (its timeouts' and its high QC's);
    InvalidCertificate if it cannot be."""
    _check_voters(cfg, tc.voters, tc.sigs)
    if not 0 <= tc.view < MAX_VIEW or len(tc.high_views) != len(tc.voters) or not tc.high_views \
            or tc.high_qc.view != max(tc.high_views):
        raise InvalidCertificate("a TC's QC must be the highest its timeouts name")
    keys, msgs, sigs = qc_certs(cfg, genesis_id, tc.high_qc)
    return (keys + [cfg.keys[v] for v in tc.voters], msgs + [timeout_bytes(tc.view, h, cfg.network)
                                                          for h in tc.high_views],
            sigs + [tc.sigs[64 * i:64 * i + 64] for i in range(len(tc.voters))])


class Core:
    def __init__(self, cfg: Config, sign: Callable[[bytes], bytes], app, safety: Safety | None = None,
                 history: Iterable[Proposal] = (), committed_source: Callable[[int, int], list] | None = None,
                 base: Base | None = None):
        """safety and history: what a store kept (the safety state, the committed proposals in
        height order after the genesis, or after base: a snapshot's block and state; any iterable,
        read once), to restart a
        validator where it stopped; self.replayed counts the blocks executed to get there. committed_source(from_height,
        count): committed proposals from a store (Store.committed_range), to serve peers; with one,
        committed proposals are pruned from memory like blocks and states (see _prune), without
        one they are kept (to serve peers catching up) and the rest is pruned; a store's committed_range
        also has the committed ids older than WINDOW read from its store, not held (_Chain): with a base,
        it must be that bound method, not a wrapper (ValueError: the ids below the base are the store's)."""
        self.cfg, self.sign, self.app = cfg, sign, app
        # snapshot_source(height, chunk): a SnapshotChunk from a store (statesync.serve) or None;
        # a driver with a store sets it, so validators joining late can state-sync from this one
        self.snapshot_source: Callable[[int, int], SnapshotChunk | None] | None = None
        self.genesis = genesis_block(app.genesis.root)
        gqc = QC(self.genesis.id, 0, 0)
        self.safety = replace(safety, blocks=()) if safety is not None else Safety(0, gqc)
        self.voted = b""  # the block this validator last voted for
        self.view = 0
        self.blocks: dict[bytes, Block] = {self.genesis.id: self.genesis}
        self.states = {self.genesis.id: app.genesis}
        self.proposals: dict[bytes, Proposal] = {}
        self.timings: dict[bytes, dict] = {}
        self.committed = self.genesis
        self.votes: dict[tuple[int, bytes], _Tally] = {}
        self.vote_voters: dict[int, set] = {}  # view -> voters with a verified vote in it (one each)
        self.timeouts: dict[int, dict] = {}  # view -> voter -> Timeout
        self.last_tc: TC | None = None
        self.failures = 0
        self.proposed: set[int] = set()
        self.idle_view = 0  # the view whose proposal waits for transactions (ProposeTimer), if any
        # the view whose first timer is passed over: its leader waited (idle_view) and set the
        # view's timer again as it proposed, so its own view does not time out for the wait
        self.rearmed = -1
        # view -> the first block taken in it: a second one of the same view (an equivocating
        # leader's) is taken only where it is certified (see _vouched), so one Byzantine leader
        # cannot fill memory with blocks of its view
        self.view_blocks: dict[int, bytes] = {}
        self.timed_out: set[int] = set()
        self.helped: set[int] = set()  # peers sent a TC's timeouts since this validator's last timer (_help_behind)
        self.waiting: dict[bytes, list[tuple[int, Proposal]]] = {}  # parent id -> proposals needing it
        self.parked: dict[bytes, int] = {}  # id -> proposer of the proposals in waiting (at most MAX_PARKED)
        self.fetching: dict[bytes, int] = {}  # block id asked for -> the peer asked (at most MAX_FETCHES)
        # views entered other than by fetched blocks (a response's QCs move a validator behind
        # through many views at once): the clock of _refetch, with the tick each fetch was last asked at
        self.ticks = 0
        self.answering = False  # while a BlockResponse's proposals are taken
        self.fetched_in: dict[bytes, int] = {}  # block id asked for -> self.ticks when last asked (_refetch)
        self.asked_from: dict[tuple[int, int], None] = {}  # (peer, from_height) asked, oldest first (_ask)
        self.fetch_tries: dict[bytes, int] = {}  # block id asked for -> times _refetch asked it again
        # block id -> a verified QC over it that came before the block (at most MAX_FETCHES): taken
        # when the block arrives, so a leader that formed a QC for a proposal withheld from it
        # still proposes in its view (see _process_qc)
        self.pending_qcs: dict[bytes, QC] = {}
        self.chain = _Chain(self.genesis.id, 0, [self.genesis.id])  # committed block ids by height
        # committed block id -> height, above the genesis, of the ids self.chain holds (the older
        # ones: the store's index, _height_of): a peer's BlockRequest for a block pruned from
        # memory is looked up, never found by a scan of the chain (a Byzantine validator asking for
        # ids nobody committed would otherwise cost a scan of the whole chain per request)
        self.heights: dict[bytes, int] = {}
        self.committed_source = committed_source
        # what was dropped or refused, by reason: input from the network that failed a check
        # (a driver exports these; nothing here is an error of this validator)
        self.counters: Counter = Counter()
        # sender -> the view of this validator in which it sent a timeout or proposal whose
        # certificates or signatures do not verify (which an honest validator never sends: it
        # sends only what it signed or verified itself): its timeouts, proposals and block
        # responses are dropped unchecked for the rest of that view (_faulty). Each of those
        # costs a QC's 2f+1 signatures to refuse, and one frame can carry 64 of them
        self.muted: dict[int, int] = {}
        # the same for a sender whose block response held such a proposal: only its responses are
        # dropped. An honest validator may serve a block whose certificates it never verified: one
        # state-synced before statesync.commit_proof checked every certificate of a proof holds
        # its snapshot's block and the proof's blocks as its snapshot server sent them, and a
        # block id covers neither its QC nor its TC (a Byzantine server could forge those); its
        # proposals and timeouts must still count
        self.muted_responses: dict[int, int] = {}
        self.refused: dict[int, int] = {}  # sender -> the view of its last block that did not validate
        self.future_checks: dict[int, tuple[int, int]] = {}  # voter -> (this view, its timeouts ahead checked in it)
        self.good_qcs: dict[tuple, None] = {}  # (block id, view, voters, sigs) of QCs verified (GOOD_QCS)
        if base is not None:
            b = base.proposal.block
            if getattr(base.state, "root", None) != b.state_root:
                raise InvariantViolation(f"the snapshot at height {b.height} is not of its block")
            self.blocks, self.states = {b.id: b}, {b.id: base.state}
            if committed_source is None:
                self.proposals[b.id] = base.proposal
            self.committed = b
            if committed_source is not None and self.ids_store is None:
                # a wrapper (a lambda, a partial) hides the store: every id below the snapshot read
                # as unknown, and no block below it was served, without a word
                raise ValueError("a Core started from a snapshot (Base) needs committed_source to be its store's "
                                 "own committed_range (a bound Store.committed_range), not a wrapper: the committed "
                                 f"ids below height {b.height} are read from that store")
            self.chain = _Chain(self.genesis.id, b.height, [b.id], self.ids_store)
            self.heights = {b.id: b.height}
            app.committed(b, self.states[b.id])
        self.replayed = 0
        # (checked a batch at a time: history is read from the store as it goes, never held whole)
        unchecked: list[Proposal] = [base.proposal] if base is not None else []
        for p in history:  # replay what this validator committed before it stopped
            b = p.block
            if b.parent != self.committed.id or b.height != self.committed.height + 1:
                raise InvariantViolation(f"stored block at height {b.height} does not extend the one at height "
                                         f"{self.committed.height}")
            if b.qc.block_id != b.parent or (b.qc.view, b.qc.height) != (self.committed.view, self.committed.height) \
                    or (b.tc is not None and b.tc.view + 1 != b.view):
                raise InvariantViolation(f"stored block at height {b.height}: its certificates are not of its parent "
                                         "and view")
            if b.txs.digest() != b.sig_digest or app.tx_root(b.txs) != b.tx_root:
                raise InvariantViolation(f"stored block at height {b.height} ({b.id.hex()}): its transactions do not "
                                         "match its signature digest or transaction root")
            state = app.execute(self.states[b.parent], b.txs.bodies)
            if state.root != b.state_root:
                raise InvariantViolation(f"stored block at height {b.height} does not replay to its state root")
            self.blocks[b.id], self.states[b.id] = b, state
            if committed_source is None:
                self.proposals[b.id] = p
            self.committed = b
            self._record(b)
            app.committed(b, self.states[b.id])
            if b.parent != self.genesis.id:  # only the newest block's state is needed to go on
                del self.blocks[b.parent], self.states[b.parent]
            self.replayed += 1
            unchecked.append(p)
            if len(unchecked) >= REPLAY_CHECK_BATCH:
                self._check_proposers(unchecked)
                unchecked = []
        self._check_proposers(unchecked)
        self._check_high_qc()
        for p in sorted(safety.blocks if safety is not None else (), key=lambda p: p.block.height):
            self._restore(p)  # the uncommitted blocks stored with the safety state

    @property
    def committed_source(self) -> Callable[[int, int], list] | None:
        return self._committed_source

    @committed_source.setter
    def committed_source(self, source: Callable[[int, int], list] | None) -> None:
        # (a driver may give its store after the core is made: the simulation's durable())
        self._committed_source = source
        self.ids_store = _id_store(source)
        self.chain.store = self.ids_store

    def _record(self, b: Block) -> None:
        """b committed: its id by height and its height by id, the oldest let go where a store
        holds them (see WINDOW and _Chain)."""
        self.chain.append(b.id)
        self.heights[b.id] = b.height
        if self.ids_store is not None and len(self.heights) > 2 * WINDOW:  # (in height order, as added)
            self.heights = dict(itertools.islice(self.heights.items(), len(self.heights) - WINDOW, None))

    def _check_high_qc(self) -> None:
        """The stored high QC's signatures (2f+1, once a start). A store written before its safety
        row had a digest (store.py) read a damaged high QC back as it was: the validator started,
        and every timeout and proposal it made carried a QC nobody verifies, so every peer took
        it for a Byzantine one and stopped listening to it for the view (_faulty), silently."""
        qc = self.safety.high_qc
        try:
            ok = self.app.verifier.verify_lists(*self.qc_certs(qc))
        except InvalidCertificate:
            ok = False
        if not ok:
            raise InvariantViolation(f"the stored high QC (view {qc.view}, block {qc.block_id.hex()[:16]}) does not "
                                     "verify: the store is damaged; restore a backup, or remove the data directory "
                                     "to start again")

    def _restore(self, p: Proposal) -> None:
        """Take back a stored uncommitted block: validated again like any proposal (its state is
        rebuilt by executing it), without acting on it. One that does not validate is a damaged
        store (InvariantViolation): this validator wrote it after validating it."""
        b = p.block
        if b.id in self.blocks or b.height <= self.committed.height:
            return
        if b.parent not in self.blocks:
            self.counters["stored_block_orphan"] += 1  # a branch below it was lost; it is fetched if needed
            return
        try:
            certs = self._proposal_certs(p)
        except InvalidCertificate as exc:  # (a damaged row's QC or TC: one line, as any block that does not validate)
            raise InvariantViolation(f"stored block at height {b.height} ({b.id.hex()}) does not validate: "
                                     f"invalid certificate: {exc}") from None
        verdict = self.app.validate(self.states[b.parent], b, certs)
        if not verdict.ok:
            raise InvariantViolation(f"stored block at height {b.height} ({b.id.hex()}) does not validate: "
                                     f"{verdict.reason}")
        self.blocks[b.id], self.states[b.id], self.proposals[b.id] = b, verdict.state, p
        self.timings[b.id] = verdict.timings_ms
        self.view_blocks.setdefault(b.view, b.id)

    # ---- entry points -------------------------------------------------------------------------
    def start(self) -> list:
        # A restart enters the last view this validator voted or timed out in, when that is past
        # its high QC's: every view before it ended for this validator (in a TC or a QC it may not
        # hold), and starting at high_qc.view + 1 walked them all again, each on a timer doubled
        # from the last (a network restarted 30 TC-ended views past its last QC: ~25 minutes at
        # the defaults). In that view it may only time out (no vote nor proposal at or below
        # last_voted_view): its timeout and the others' form the TC that moves everyone on.
        out = self._enter_view(max(1, self.safety.high_qc.view + 1, self.safety.last_voted_view), via_qc=True)
        if self.safety.high_qc.view == 0:  # (a state-synced validator holds no genesis block to fetch)
            return out
        return out + self._fetch(self.safety.high_qc.block_id, self.cfg.me)  # (if missing: an older store)

    def handle(self, sender: int, msg) -> list:
        """The actions for one message from the network. Never raises on input: what fails a
        check is dropped (Rejected for a block) and counted in self.counters; an exception from
        anywhere below is counted as "input_error" and logged, and the message dropped. Only an
        InvariantViolation (this validator's own state broken) gets out."""
        try:
            return self._dispatch(sender, msg)
        except InvariantViolation:
            raise
        except Exception:
            self._log_exception("input_error", "dropped a %s from %s: it raised", type(msg).__name__, sender)
            return []

    def _log_exception(self, reason: str, text: str, *args) -> None:
        """Count an exception under `reason` and log it with its traceback the 1st, 2nd, 4th, 8th...
        time: whatever input makes something raise, a peer can send at its full frame rate, and a
        traceback each time would fill the log."""
        self.counters[reason] += 1
        n = self.counters[reason]
        if n & (n - 1) == 0:
            log.exception(text + " (%d so far)", *args, n)

    def _malformed(self, msg) -> str:
        """Why a decoded message cannot be one this protocol sends (field ranges and lengths the
        wire decoder does not know), or ""; checked before anything else looks at it."""
        def qc_bad(qc):
            return not (isinstance(qc, QC) and len(qc.block_id) == 32 and 0 <= qc.view < MAX_VIEW
                        and 0 <= qc.height < MAX_HEIGHT and len(qc.sigs) == 64 * len(qc.voters)
                        and len(qc.voters) <= self.cfg.n and all(0 <= v < self.cfg.n for v in qc.voters))
        if isinstance(msg, BlockResponse):
            ps = msg.proposals
            if not (isinstance(ps, tuple) and 1 <= len(ps) <= MAX_RANGE and all(isinstance(p, Proposal) for p in ps)):
                return "response"
            return next((why for why in map(self._malformed, ps) if why), "")
        if isinstance(msg, Proposal):
            b = msg.block
            if not (0 <= b.view < MAX_VIEW and 0 <= b.height < MAX_HEIGHT and 0 <= b.proposer < self.cfg.n
                    and len(b.parent) == 32 and len(msg.signature) == 64) or qc_bad(b.qc):
                return "proposal"
            tc = b.tc
            if tc is not None and (qc_bad(tc.high_qc) or not 0 <= tc.view < MAX_VIEW or len(tc.voters) > self.cfg.n
                                   or len(tc.high_views) != len(tc.voters) or len(tc.sigs) != 64 * len(tc.voters)
                                   or not all(0 <= v < self.cfg.n for v in tc.voters)):
                return "proposal"
        elif isinstance(msg, Vote):
            if not (0 <= msg.view < MAX_VIEW and 0 <= msg.voter < self.cfg.n and len(msg.signature) == 64
                    and len(msg.block_id) == 32):
                return "vote"
        elif isinstance(msg, Timeout):
            if not (0 <= msg.view < MAX_VIEW and 0 <= msg.voter < self.cfg.n and len(msg.signature) == 64) \
                    or qc_bad(msg.high_qc):
                return "timeout"
        elif isinstance(msg, BlockRequest):
            if len(msg.block_id) != 32 or not 0 <= msg.from_height < MAX_HEIGHT or not 1 <= msg.max_blocks <= MAX_RANGE:
                return "request"
        elif not isinstance(msg, (SnapshotRequest, SnapshotChunk)):
            return "unknown"
        return ""

    def _dispatch(self, sender: int, msg) -> list:
        bad = self._malformed(msg)
        if bad:
            self.counters[f"{bad}_malformed"] += 1
            return []
        if isinstance(msg, (Proposal, Timeout, BlockResponse)) and (self.muted.get(sender) == self.view or (
                isinstance(msg, BlockResponse) and self.muted_responses.get(sender) == self.view)):
            self.counters["muted"] += 1
            if isinstance(msg, Proposal):  # (refused unchecked, as a block breaking a rule on its face)
                return [Rejected(msg.block.id, msg.block.proposer, "not checked: its sender sent a certificate, "
                                 "signature or block that does not verify or validate in this view")]
            return []
        if isinstance(msg, Proposal):
            return self._on_proposal(sender, msg)
        if isinstance(msg, Vote):
            return self._on_vote(sender, msg)
        if isinstance(msg, Timeout):
            return self._on_timeout(sender, msg)
        if isinstance(msg, BlockRequest):
            return self._on_block_request(sender, msg)
        if isinstance(msg, BlockResponse):
            return self._on_block_response(sender, msg)
        if isinstance(msg, SnapshotChunk):  # only a validator state-syncing (statesync.StateSync) takes them
            self.counters["snapshot_unasked"] += 1
            return []
        if isinstance(msg, SnapshotRequest) and self.snapshot_source is not None:
            chunk = self.snapshot_source(msg.height, msg.chunk)
            return [Send(sender, chunk)] if chunk is not None else []
        return []

    def on_timer(self, view: int) -> list:
        if view != self.view:
            return []
        if view == self.rearmed:  # (the timer set on entering the view; the one set again counts)
            self.rearmed = -1
            return []
        # a view that timed out: fetches still unanswered may be asked again (of anyone)
        retry = [b for b in self.fetching if b not in self.blocks]
        retry += [b for b in self.waiting if b not in self.parked and b not in self.blocks and b not in retry]
        retry.sort(key=self._needs(), reverse=True)  # the newest needs first (_fetch)
        self.fetching.clear()
        self.fetched_in.clear()
        self.fetch_tries.clear()
        self.helped.clear()
        out = self._on_local_timeout(view)
        for block_id in retry:
            out += self._fetch(block_id, self.cfg.me)
        return self._one_request_per_range(out)

    def on_propose_timer(self, view: int) -> list:
        """The wait of an idle leader (ProposeTimer) is over: it proposes, an empty block if still
        nothing came."""
        if view != self.view or self.idle_view != view:
            return []
        return self._propose(view, wait=False)

    def on_txs(self) -> list:
        """The driver admitted transactions: a leader waiting for some (ProposeTimer) proposes now."""
        if self.idle_view != self.view or self.view in self.proposed:
            return []
        return self._propose(self.view)

    def _idle(self, parent: Block) -> bool:
        """Nothing to propose: the app has nothing a proposal may take (has_pending), no
        uncommitted block up to the high QC's (parent) holds transactions (it needs successors,
        in consecutive views, to commit), nor does the parent's parent (committed by the high QC
        here, the others learn it only from the QC in this view's proposal)."""
        has_pending = getattr(self.app, "has_pending", None)
        if has_pending is None or has_pending():
            return False
        cursor = parent
        while cursor is not None and cursor.height > self.committed.height:
            if len(cursor.txs):
                return False
            cursor = self.blocks.get(cursor.parent)
        grand = self.blocks.get(parent.parent) if parent.height else None
        return grand is None or not len(grand.txs)

    # ---- certificates -------------------------------------------------------------------------
    def qc_certs(self, qc: QC) -> tuple[list, list, list]:
        """The (keys, messages, signatures) that make `qc` valid; see qc_certs (module)."""
        return qc_certs(self.cfg, self.genesis.id, qc)

    def tc_certs(self, tc: TC) -> tuple[list, list, list]:
        return tc_certs(self.cfg, self.genesis.id, tc)

    def _labelled(self, qc: QC) -> QC:
        """qc with the height of the block it certifies, where that block is held (the id its
        signatures cover fixes the height; the label is anyone's to change): a Byzantine
        validator's timeouts carrying the QC it formed, height + 1, went into every TC, whose
        high_views then kept each next leader from proposing while no validator adopted the QC
        (qc_mismatch), and one validator stopped the chain for good (review s12)."""
        b = self.blocks.get(qc.block_id)
        return replace(qc, height=b.height) if b is not None and b.view == qc.view and b.height != qc.height else qc

    def _qc_matches(self, qc: QC) -> bool:
        """Whether this validator holds the block `qc` certifies, with the QC's view and height. A
        QC's signatures cover the block id (which covers the block's height) and the view, but not
        the QC's height field: that is a label anyone relaying the QC can change, so it is trusted
        only where it equals the certified block's height. A QC whose block is unknown is never
        adopted (it only gets the block fetched)."""
        b = self.blocks.get(qc.block_id)
        return b is not None and b.view == qc.view and b.height == qc.height

    # ---- proposals ----------------------------------------------------------------------------
    def _on_proposal(self, sender: int, p: Proposal, vouch: QC | None = None) -> list:
        """Validate a proposal and act on it; then, in a loop (never recursion, however long the
        chain that was waiting for it), each parked proposal whose parent it was. vouch: a QC that
        may certify p (the next proposal's in a BlockResponse), see _vouched."""
        if self.muted.get(sender) == self.view or (self.answering and self.muted_responses.get(sender) == self.view):
            # (the rest of a response from a sender found faulty in it)
            self.counters["muted"] += 1
            return []
        out, todo = [], [(sender, p)]
        while todo:
            s, q = todo.pop()
            out += self._on_one_proposal(s, q, vouch if q is p else None, resumed=q is not p)
            if q.block.id in self.blocks:
                for child in self.waiting.pop(q.block.id, []):
                    self.parked.pop(child[1].block.id, None)
                    todo.append(child)
        return out

    def _on_one_proposal(self, sender: int, p: Proposal, vouch: QC | None = None, resumed: bool = False) -> list:
        """resumed: a parked proposal whose parent came (its certificates, signature and
        transactions were checked when it was parked), taken under the sender it was parked from."""
        b = p.block
        if b.id in self.blocks:
            return self._proposers_copy(sender, p)
        if self._stale(b):
            self.counters["proposal_stale"] += 1
            return []
        if b.proposer != self.cfg.leader(b.view) or not 0 <= b.proposer < self.cfg.n:
            return [Rejected(b.id, b.proposer, f"view {b.view}'s leader is {self.cfg.leader(b.view)}")]
        if b.view >= MAX_VIEW or b.height >= MAX_HEIGHT:
            return [Rejected(b.id, b.proposer, "view or height out of range")]
        if b.parent != b.qc.block_id or b.height != b.qc.height + 1 or b.view <= b.qc.view:
            return [Rejected(b.id, b.proposer, "block does not extend the QC it carries")]
        if b.tc is not None and b.tc.view + 1 != b.view:
            return [Rejected(b.id, b.proposer, "a block's TC must be for the view just before it")]
        if b.tc is None and b.qc.view + 1 != b.view:
            # no honest validator votes for it (_safe_to_vote), so it is never certified and never
            # needed: without this a leader could sign blocks for any of its views, up to MAX_VIEW,
            # each one validated and kept
            return [Rejected(b.id, b.proposer, "a block needs the QC or a TC of the view just before it")]
        if self.view_blocks.get(b.view, b.id) != b.id and not self._vouched(b, vouch, sender):
            self.counters["proposal_equivocation"] += 1  # a second block of one view, not certified
            return []
        parent = self.blocks.get(b.parent)
        if parent is None:  # park it and fetch the missing ancestors from whoever sent it
            return self._park(sender, p, vouch)
        if parent.view != b.qc.view or parent.height != b.qc.height:
            return [Rejected(b.id, b.proposer, "the QC's view or height is not its block's")]
        if b.height != parent.height + 1:  # implied by the two checks above; the rule itself
            return [Rejected(b.id, b.proposer, "a block's height must be its parent's plus one")]
        if self.refused.get(sender) == b.view and sender != self.cfg.me and not resumed:
            # another block of a view whose block from this sender did not validate. Never a parked
            # one resumed: it was parked under the first sender of its id, maybe a relayer (the
            # proposer's own copy then only re-asks for the parent), which could otherwise send
            # any failing block of that view (no key needed) and have the leader's block dropped
            self.counters["muted"] += 1
            return []
        if sender != self.cfg.me and not self.app.verifier.verify_one(
                self.cfg.keys[b.proposer], proposal_bytes(b.id, self.cfg.network), p.signature):
            # checked alone, before the batch of the block's transactions and certificates: a
            # validator sending a block its leader never signed (any proposer index: no key
            # needed) made every other one verify a whole block's signatures to refuse it
            self.counters["proposal_invalid"] += 1
            self.refused[sender] = b.view
            self._faulty(sender)
            return [Rejected(b.id, b.proposer, "the proposer's signature does not verify")]
        try:
            certs = self._proposal_certs(p, signer=False)  # (its leader's signature: just checked, or its own)
        except InvalidCertificate as exc:
            return [Rejected(b.id, b.proposer, f"invalid certificate: {exc}")]
        try:
            verdict = self.app.validate(self.states[b.parent], b, certs)
        except Exception as exc:  # an application must not raise on a block; if it does, the block is refused
            self._log_exception("validate_error", "validation of block %s raised", b.id.hex())
            return [Rejected(b.id, b.proposer, f"validation raised {type(exc).__name__}: {exc}")]
        if not verdict.ok:
            # (its signatures checked, maybe executed: the sender's other blocks of that view are
            # refused unchecked; a leader that is not the sender never made one that fails). And
            # the sender is not listened to for the rest of this view (_faulty): no honest one
            # sends a block that does not validate, while another view each frame (a made-up TC
            # of the view before, any proposer index: no key needed) cost a full validation a frame
            self.refused[sender] = b.view
            self._faulty(sender)
            return [Rejected(b.id, b.proposer, verdict.reason)]
        kept = _detached(p) if _pins_more(p) else p
        self.blocks[b.id], self.states[b.id], self.proposals[b.id] = kept.block, verdict.state, kept
        self.timings[b.id] = verdict.timings_ms
        self.view_blocks.setdefault(b.view, b.id)
        out = self._process_qc(b.qc, sender)
        if b.tc is not None:
            out += self._process_tc(b.tc)
        if self._safe_to_vote(b) and self._endorsed(b, fresh=not resumed and not self.answering):
            out += self._vote(b)
        qc = self.pending_qcs.pop(b.id, None)
        if qc is not None and qc.view == b.view:
            # a QC that came first (this validator, the next leader, formed it from the votes for a
            # proposal its leader withheld from it): taken now, with the block's height (the
            # height is not signed; a vote's may have been anyone's), and the view proposed in
            out += self._process_qc(replace(qc, height=b.height), sender)
            out += self._propose(self.view)
        return out

    def _proposers_copy(self, sender: int, p: Proposal) -> list:
        """A block held already, sent again by its proposer: the id covers neither its QC nor its
        TC, so a relayed copy taken first may carry other valid certificates than the proposer's
        (another TC of the same view, with a higher QC view among its timeouts), making the block
        one this validator may not vote for where the proposer's own makes it one it may; then
        the proposer's copy replaces it (certificates verified) and the vote goes out. Only the
        certificates are taken from it: nor does the id cover the transactions (only their root,
        digest and count), so the held block's, validated and executed, stay (a Byzantine leader's
        second copy with other transactions would otherwise be stored, served and replayed beside
        a state computed from the first)."""
        held = self.blocks[p.block.id]
        b = replace(held, qc=p.block.qc, tc=p.block.tc)
        if sender != b.proposer or (held.qc, held.tc) == (b.qc, b.tc) or self._safe_to_vote(held) \
                or not self._safe_to_vote(b) or b.parent not in self.blocks:
            return []
        p = self._recertified(held, p)
        if p is None:  # (the proposer's own certificates do not verify: each copy cost them, unmuted)
            self._faulty(sender)
            return []
        parent = self.blocks[b.parent]
        if parent.view != b.qc.view or parent.height != b.qc.height:
            return []
        self.counters["proposal_recertified"] += 1
        p = _detached(p) if _pins_more(p) else p
        self.blocks[b.id], self.proposals[b.id] = p.block, p
        out = self._process_qc(b.qc, sender)
        if b.tc is not None:
            out += self._process_tc(b.tc)
        return out + (self._vote(b) if self._safe_to_vote(b) and self._endorsed(b) else [])

    def _vouched(self, b: Block, qc: QC | None, sender: int) -> bool:
        """Whether block b is known to be certified, so it is taken although another block of
        its view was (an equivocating leader's second version, which the others certified): a
        block this validator fetches (a verified QC or parked proposal names it) or one that `qc`,
        verified here, certifies."""
        if b.id in self.fetching or b.id in self.waiting:
            return True
        if qc is None or qc.block_id != b.id or qc.view != b.view:
            return False
        known = _qc_key(qc)
        if known in self.good_qcs:
            return True
        try:
            ok = self.app.verifier.verify_lists(*self.qc_certs(qc))
        except InvalidCertificate:
            ok = False
        if ok:
            self._good_qc(known)
        else:  # (an honest responder's next block is certified by the QC it carries)
            self._faulty(sender)
        return ok

    def _proposal_certs(self, p: Proposal, signer: bool = True) -> tuple[list, list, list]:
        """(keys, messages, signatures) a proposal's validity rests on: its QC's, its TC's and
        (signer) its proposer's signature over the block id. InvalidCertificate if a certificate
        is malformed."""
        b = p.block
        keys, msgs, sigs = self.qc_certs(b.qc)
        if b.tc is not None:
            tk, tm, ts = self.tc_certs(b.tc)
            keys, msgs, sigs = keys + tk, msgs + tm, sigs + ts
        if not signer:
            return keys, msgs, sigs
        return keys + [self.cfg.keys[b.proposer]], msgs + [proposal_bytes(b.id, self.cfg.network)], sigs + [p.signature]

    # ---- fetching missing blocks --------------------------------------------------------------
    def _stale(self, b: Block) -> bool:
        """Whether b can no longer commit: its view, or its QC's, is before the committed block's,
        so it does not descend from it (views grow along a chain; a QC's view is signed, unlike its
        height label). Dropped before any work: a Byzantine leader's old views, a late copy, or a
        block of the leader's view on a QC of a block committed long ago, whose height label it set
        far ahead: parked, such blocks stayed until that height committed (never), and their
        parents' fetches (of blocks pruned everywhere, served by nobody) held every fetch slot
        again after each timeout, so a validator that missed a block never fetched it and the
        chain stopped once the Byzantine validator stopped voting (tests/test_consensus_review_s13.py)."""
        floor = self.committed.view
        return b.view <= floor or b.qc.view < floor

    def _park(self, sender: int, p: Proposal, vouch: QC | None = None) -> list:
        """Keep a proposal whose parent is unknown until the parent arrives, and fetch it: only a
        proposal above the committed height whose proposer's signature and certificates (QC, TC)
        hold, at most MAX_PARKED of them and MAX_PARKED / n of one proposer's, whose transactions
        take at most PARKED_BYTES / n (but one), and one of a proposer's view unless it is
        certified (_vouched); no fetch where the parent is itself parked (the fetch
        for its own parent brings the chain) or already asked for. The certificates are checked
        here, not only once the parent is known, because the proposer's signature covers the
        block id and the id does not cover them: a relayed copy with a forged QC parked first
        would otherwise keep the real one out (one copy is parked per id). The bytes and the one
        a view (review s22): a Byzantine leader signed 64 versions of its block of one view, each
        a frame of junk on a real QC whose block a validator behind lacked; all were parked (4 GiB
        at 64 MiB a frame) and, once the parent came, validated in one handle() (about 10 s each)."""
        b = p.block
        if b.height <= self.committed.height:
            return []
        if b.id in self.parked:
            # the proposer's own copy after a relayed one: the parent was asked of the relayer, who
            # may never answer (a Byzantine peer racing the leader's proposals to every validator
            # held each fetch until the view timed out); the proposer built on the parent, so it
            # is asked too (once: the fetch is then its)
            if sender == b.proposer:
                self._repark(sender, p)
            asked = self.fetching.get(b.parent)
            if sender == b.proposer and asked is not None and asked not in (sender, self.cfg.me):
                self.fetching[b.parent], self.fetched_in[b.parent] = sender, self.ticks
                return [self._ask(sender, b.parent, self.committed.height + 1)]
            return []
        if len(self.parked) >= MAX_PARKED:
            self.counters["parked_full"] += 1
            return []
        if sum(1 for q in self.parked.values() if q == b.proposer) >= MAX_PARKED // self.cfg.n:
            self.counters["parked_full_proposer"] += 1  # one Byzantine leader's equivocations cannot fill it
            return []
        mine = [q.block for entries in self.waiting.values() for _, q in entries if q.block.proposer == b.proposer]
        if any(q.view == b.view for q in mine) and not self._vouched(b, vouch, sender):
            self.counters["proposal_equivocation"] += 1
            return []
        if mine and sum(map(_tx_bytes, mine)) + _tx_bytes(b) > PARKED_BYTES // self.cfg.n:
            self.counters["parked_full_proposer"] += 1
            return []
        try:
            certs = self._proposal_certs(p)
        except InvalidCertificate as exc:
            self.counters["proposal_invalid"] += 1
            return [Rejected(b.id, b.proposer, f"invalid certificate: {exc}")]
        if not self.app.verifier.verify_lists(*certs):
            self.counters["proposal_invalid"] += 1
            self._faulty(sender)
            return [Rejected(b.id, b.proposer, "a certificate or the proposer's signature does not verify")]
        if b.txs.digest() != b.sig_digest or self.app.tx_root(b.txs) != b.tx_root:
            # nor does the id cover the transactions, only their root and digest: a relayed copy
            # with other transactions parked first would keep the real one out just the same
            self.counters["proposal_invalid"] += 1
            self._faulty(sender)
            return [Rejected(b.id, b.proposer,
                             "its transactions do not match its signature digest or transaction root")]
        self.waiting.setdefault(b.parent, []).append((sender, _detached(p)))
        self.parked[b.id] = b.proposer
        return [] if b.parent in self.parked else self._fetch(b.parent, sender)

    def _repark(self, sender: int, p: Proposal) -> None:
        """The proposer's own copy of a proposal parked from a relayer: its certificates replace
        the relayed copy's (as _proposers_copy does for a held block), since a relayed copy whose
        TC names a higher QC among its timeouts is one no validator may vote for once its parent
        comes. The parked transactions (checked against the digest and root) stay; the
        proposer's copy replaces a relayer's once."""
        entries = self.waiting.get(p.block.parent, [])
        i = next((i for i, (_, q) in enumerate(entries) if q.block.id == p.block.id), None)
        if i is None:
            return
        s, q = entries[i]
        if s == q.block.proposer or (q.block.qc, q.block.tc) == (p.block.qc, p.block.tc):
            return
        copy = self._recertified(q.block, p)
        if copy is None:
            self._faulty(sender)
        else:
            entries[i] = (sender, copy)
            self.counters["proposal_recertified"] += 1

    def _recertified(self, block: Block, p: Proposal) -> Proposal | None:
        """block with the certificates and signature of p, its proposer's copy, if they verify
        (its transactions stay block's: the id does not cover them)."""
        copy = Proposal(replace(block, qc=p.block.qc, tc=p.block.tc), p.signature)
        try:
            certs = self._proposal_certs(copy)
        except InvalidCertificate:
            return None
        return copy if self.app.verifier.verify_lists(*certs) else None

    def _fetch(self, block_id: bytes, peer: int, need: int | None = None) -> list:
        """Ask `peer` (everyone, if it is this validator) for the chain from the committed height
        up to block_id, once: at most MAX_FETCHES outstanding, forgotten when a view times out.
        With every slot taken, the fetch serving the oldest view (_needs; `need`: this one's,
        where what it serves is not recorded yet) gives its slot to a newer one."""
        if block_id in self.blocks or block_id in self.fetching:
            return []
        if len(self.fetching) >= MAX_FETCHES:
            # first come, a Byzantine leader's proposals on blocks it had certified and withheld
            # (abandoned, pruned everywhere, served by nobody) held every slot of a validator
            # coming back, for good: a slot freed after n unanswered tries went to them again. The
            # honest chain's proposals and QCs are of the newest views; such blocks' are old
            need_of = self._needs()
            victim = min(self.fetching, key=need_of)
            if need_of(victim) >= (need_of(block_id) if need is None else need):
                self.counters["fetches_full"] += 1
                return []
            self._drop_fetch(victim)
            self.counters["fetch_evicted"] += 1
        self.fetching[block_id], self.fetched_in[block_id] = peer, self.ticks
        return [self._ask(peer, block_id, self.committed.height + 1)]

    def _drop_fetch(self, block_id: bytes) -> None:
        del self.fetching[block_id]
        self.fetched_in.pop(block_id, None)
        self.fetch_tries.pop(block_id, None)

    def _ask(self, peer: int, block_id: bytes, from_height: int):
        """A request for the chain from from_height up to block_id, of `peer` (everyone, if it is
        this validator); the height is kept per peer (at most ASKED_FROM), so that an answer is
        measured from where it was asked (_on_block_response)."""
        for p in (range(self.cfg.n) if peer == self.cfg.me else (peer,)):
            if p != self.cfg.me:
                self.asked_from.pop((p, from_height), None)
                self.asked_from[p, from_height] = None
        while len(self.asked_from) > ASKED_FROM:
            del self.asked_from[next(iter(self.asked_from))]
        ask = BlockRequest(block_id, from_height, MAX_RANGE)
        return Broadcast(ask) if peer == self.cfg.me else Send(peer, ask)

    def _needs(self) -> Callable[[bytes], int]:
        """need(block_id): the newest view a fetch of block_id serves: of the proposals parked
        above it (on it, or on one parked above it: a chain waits on its lowest missing block), of
        a QC over it waiting for it (pending_qcs), of the high QC where it is that QC's block (0:
        none). Counting only the proposals parked on it, a Byzantine leader's junk of its own view
        tied with the honest block of that view, on which the next honest proposals were parked
        without a fetch of their own: the junk kept every slot (a tie evicts nothing)."""
        above: dict[bytes, int] = {}

        def parked_above(root: bytes) -> int:
            stack = [(root, False)]
            while stack:  # (no recursion: a parked chain may be MAX_PARKED long)
                i, expanded = stack.pop()
                if i in above:
                    continue
                kids = self.waiting.get(i, ())
                if expanded:
                    above[i] = max((max(p.block.view, above[p.block.id]) for _, p in kids), default=0)
                else:
                    stack.append((i, True))
                    stack.extend((p.block.id, False) for _, p in kids if p.block.id not in above)
            return above[root]

        def need(block_id: bytes) -> int:
            views = [parked_above(block_id)]
            qc = self.pending_qcs.get(block_id)
            if qc is not None:
                views.append(qc.view)
            if block_id == self.safety.high_qc.block_id:
                views.append(self.safety.high_qc.view)
            return max(views)
        return need

    def _height_of(self, block_id: bytes) -> int | None:
        b = self.blocks.get(block_id)
        if b is not None:
            return b.height
        height = self.heights.get(block_id)  # a committed block pruned from memory
        if height is None and self.ids_store is not None:  # (older than the ids held: one indexed lookup)
            height = self.ids_store.committed_height_of(block_id)
        return height

    def _ancestry(self, block_id: bytes, from_height: int, limit: int) -> list[bytes]:
        """The ids of the chain ending at block_id from from_height up (0: the block alone), oldest
        first, at most `limit` (the oldest ones); committed heights are looked up by height, not
        walked."""
        return self._ancestry_from(block_id, from_height, limit)[1]

    def _ancestry_from(self, block_id: bytes, from_height: int, limit: int) -> tuple[int, list[bytes]]:
        """(the height of the first, _ancestry's ids)."""
        top = self._height_of(block_id)
        if top is None:
            return 0, []
        low = max(from_height, 1) if from_height else top
        if low > top:
            return 0, []
        def committed(block_id, height):
            return height <= self.committed.height and self.chain[height] == block_id
        b = self.blocks.get(block_id)
        ids = []  # the uncommitted part, newest first
        while b is not None and b.height >= low and not committed(b.id, b.height):
            ids.append(b.id)
            b = self.blocks.get(b.parent)
        ids.reverse()
        # the committed part is sliced to at most `limit` ids, never from `low` to its top first:
        # a request for the tip from height 1 copied the whole chain (15 ms a request at height
        # 1,000,000, at a peer's full frame rate; and every request of a validator catching up)
        if b is None and not ids:  # a committed block pruned from memory (its height is a committed one's)
            prefix = self.chain[low:min(top, low + limit - 1) + 1]
        elif b is None:
            return 0, []  # a branch whose lower part this validator does not hold
        elif b.height >= low:  # reached the committed chain
            prefix = self.chain[low:min(b.height, low + limit - 1) + 1]
        else:
            prefix = []
        out = (prefix + ids)[:limit]
        if None in out:
            return 0, []  # (below a state-synced validator's first block: others serve it)
        return low, out

    def _on_block_request(self, sender: int, req: BlockRequest) -> list:
        first, ids = self._ancestry_from(req.block_id, req.from_height, min(req.max_blocks, MAX_RANGE))
        # pruned proposals read from the store as far as the answer goes, in batches doubling from
        # one: all of the range read at once took 64 blocks of a 32 MiB-block chain (2 GiB, twice
        # that once decoded) to answer one (review s23)
        stored: dict = {}
        from_store = self.committed_source is not None and ids and ids[0] not in self.proposals
        read_to, batch = first, 1
        props, size, frame = [], 0, RESPONSE_HEAD
        for k, i in enumerate(ids):
            p = self.proposals.get(i) or stored.get(i)
            if p is None and from_store and first + k >= read_to:
                count = min(batch, len(ids) - k)
                stored = {q.block.id: q for q in self.committed_source(first + k, count)}
                read_to, batch = first + k + count, 2 * batch
                p = stored.get(i)
            if p is None:
                break
            frame += proposal_size(p)
            if props and frame > MAX_MESSAGE:
                # small blocks and then one near a frame's size made an answer no frame holds: every
                # peer built the same one for a validator behind, which never caught up (review s22)
                break
            props.append(p)
            size += 512 + _tx_bytes(p.block)
            if size >= RANGE_BYTES:
                break
        return [Send(sender, BlockResponse(tuple(props)))] if props else []

    def _on_block_response(self, sender: int, resp: BlockResponse) -> list:
        """Proposals of one chain, oldest first: each validated as any proposal. A fetch that the
        answer brought closer but not to its end asks the same peer for the next range."""
        out, new = [], 0
        lo = resp.proposals[0].block.height
        # blocks from where it was asked (an answer to a request from an older height, taken after
        # another answer committed part of its range, is still full); else, or where all of the
        # range asked is committed (a Byzantine peer answering a request it left unanswered, with
        # blocks committed since and one new one), from the committed height
        asked = self.asked_from.pop((sender, lo), False) is None and lo + MAX_RANGE - 1 > self.committed.height
        floor = lo - 1 if asked else self.committed.height
        self.answering = True
        try:
            for i, p in enumerate(resp.proposals):
                known = p.block.id in self.blocks
                nxt = resp.proposals[i + 1].block.qc if i + 1 < len(resp.proposals) else None
                out += self._on_proposal(sender, p, nxt)
                new += not known and p.block.id in self.blocks
        finally:
            self.answering = False
        last = resp.proposals[-1].block
        # an answer that stops short of the fetched block is full (MAX_RANGE proposals or about
        # RANGE_BYTES, as _on_block_request cuts it) from an honest peer that holds the chain; a
        # short one means the peer lacks the rest or holds it back (a Byzantine peer answering
        # first, one block at a time, had every fetch go on with it at 1/64th of the speed): the
        # next range is asked of the next validator. Only distinct blocks taken, from the height
        # asked, count: one real block padded with 63 copies of it (or with old blocks, dropped
        # before any check) passed for a full answer
        # (an id above the floor was committed, if at all, by this answer or at most MAX_RANGE
        # heights before it asked: fewer than WINDOW, so self.heights holds it, and no proposal of
        # a frame costs a store read)
        useful = {p.block.id: p for p in resp.proposals
                  if p.block.height > floor and (p.block.id in self.blocks or p.block.id in self.heights)}
        size = sum(512 + _tx_bytes(p.block) for p in useful.values())
        ask = sender if len(useful) >= MAX_RANGE or size >= RANGE_BYTES else self._after(sender)
        need_of = self._needs()
        for block_id, peer in sorted(self.fetching.items(), key=lambda kv: need_of(kv[0]), reverse=True):
            if block_id in self.blocks:
                del self.fetching[block_id]
                self.fetched_in.pop(block_id, None)
            elif peer in (sender, self.cfg.me) and new and last.id in self.blocks:  # progress, not there yet
                # (a fetch asked of everyone goes on with the first to answer)
                self.fetching[block_id], self.fetched_in[block_id] = ask, self.ticks
                out.append(self._ask(ask, block_id, last.height + 1))
        return self._one_request_per_range(out)

    @staticmethod
    def _one_request_per_range(out: list) -> list:
        """One block request per (peer, height) in `out` (a broadcast counting for every peer),
        the first: the newest need's, whose range the others share. Each fetch asked its own
        range from the committed height, so a validator catching up asked everyone for one range
        up to 16 times at each timeout and again per fetch at each answer: on a slow link the
        copies filled its peers' answer backlogs and came late, and 1,500 blocks behind at 1.6
        Mbit/s it got 506 of 1,686 blocks in 60 s (66 times the blocks it needed) and never
        caught up. The other fetches stay recorded as asked; the answer moves them on too."""
        seen, kept = set(), []
        for a in out:
            msg = getattr(a, "msg", None)
            if isinstance(msg, BlockRequest):
                key = (None if isinstance(a, Broadcast) else a.to, msg.from_height)
                if key in seen or (None, msg.from_height) in seen:
                    continue
                seen.add(key)
            kept.append(a)
        return kept

    def _after(self, peer: int) -> int:
        """The validator after `peer` in index order, this one skipped."""
        nxt = (peer + 1) % self.cfg.n
        return (nxt + 1) % self.cfg.n if nxt == self.cfg.me else nxt

    def _safe_to_vote(self, b: Block) -> bool:
        if b.view != self.view or b.view <= self.safety.last_voted_view or b.view in self.timed_out:
            return False
        if b.qc.view + 1 == b.view:
            return True
        # (a TC naming no QC view is no TC: _proposers_copy asks before its certificates are verified)
        return b.tc is not None and b.tc.view + 1 == b.view and b.qc.view >= max(b.tc.high_views, default=MAX_VIEW)

    def _endorsed(self, b: Block, fresh: bool = False) -> bool:
        """Whether the application, asked of another's valid proposal this validator may vote for,
        lets it vote (app.endorse, where the app has it: a clearing validator holding an oracle
        mark the block leaves out does not). A refusal is no verdict: the block stays held and is
        taken if certified, its proposer is not faulted, and the view times out unless others vote.
        fresh: the proposal came as one, not resumed after its parent was fetched nor in a fetch's
        answer (its arrival then says nothing of when the leader built it). after_mine: the block's
        certificate (its TC, else its QC) holds this validator's own timeout or vote, so the leader
        built it after that left here."""
        endorse = getattr(self.app, "endorse", None)
        if endorse is None or b.proposer == self.cfg.me:
            return True
        after_mine = self.cfg.me in (b.tc.voters if b.tc is not None else b.qc.voters)
        reason = endorse(self.states[b.parent], b, self.states[b.id], fresh, after_mine)
        if not reason:
            return True
        self.counters["vote_withheld"] += 1
        log.warning("no vote for block %s of view %d from validator %d: %s", b.id.hex()[:16], b.view,
                    b.proposer, reason)
        return False

    def _vote(self, b: Block) -> list:
        self.safety = replace(self.safety, last_voted_view=b.view)
        vote = Vote(b.id, b.view, b.height, self.cfg.me, self.sign(vote_bytes(b.id, b.view, self.cfg.network)))
        self.voted = b.id
        out = [self._persist()]
        nxt = self.cfg.leader(b.view + 1)
        return out + (self._on_vote(self.cfg.me, vote) if nxt == self.cfg.me else [Send(nxt, vote)])

    def _propose(self, view: int, wait: bool = True) -> list:
        if view in self.proposed or self.cfg.leader(view) != self.cfg.me or view <= self.safety.last_voted_view:
            # (voted in it: for its own block, before a restart; a second one would be an equivocation)
            return []
        parent = self.blocks.get(self.safety.high_qc.block_id)
        if parent is None:
            return []  # the block is being fetched; this view will time out
        tc = self.last_tc if self.last_tc is not None and self.last_tc.view + 1 == view else None
        hq = self.safety.high_qc
        if hq.view + 1 != view and (tc is None or hq.view < max(tc.high_views)):
            # entered by a QC (or a TC naming a QC) whose block is not held yet: no one would vote
            # for the block (_safe_to_vote); proposed once it arrives (pending_qcs)
            return []
        if wait and self.cfg.empty_block_interval_ms and self._idle(parent):
            if self.idle_view == view:
                return []  # (waiting already)
            self.idle_view = view
            return [ProposeTimer(view, self.cfg.empty_block_interval_ms)]
        self.proposed.add(view)
        exclude = set()
        cursor = parent
        while cursor.height > self.committed.height:
            exclude.update(hashlib.sha256(cursor.txs.bodies.item(i)).digest() for i in range(len(cursor.txs)))
            cursor = self.blocks[cursor.parent]
        try:
            txs, state = self.app.propose(self.states[parent.id], exclude)
        except Exception:  # no block from this leader in this view; the view times out
            self._log_exception("propose_error", "proposing for view %d raised", view)
            return []
        b = Block(view, parent.height + 1, parent.id, self.cfg.me, self.app.tx_root(txs), state.root, txs.digest(),
                  txs, self.safety.high_qc, tc)
        p = Proposal(b, self.sign(proposal_bytes(b.id, self.cfg.network)))
        out = self._on_proposal(self.cfg.me, p)
        # the block leaves after its own vote is on disk (last_voted_view: the view's proposal made),
        # so a leader restarted in the view does not propose it again with another mempool
        at = max((i + 1 for i, a in enumerate(out) if isinstance(a, Persist) and a.safety.last_voted_view >= view),
                 default=0)
        if not at:  # its own check refused or raised (logged): the block still leaves (a local failure,
            # such as memory, does not make it invalid), but after the view is on disk: sent first,
            # it could commit with no record of the view here, and the leader restarted in the view
            # signed a second block of it (review s16)
            self.counters["own_proposal_refused"] += 1
            self.safety = replace(self.safety, last_voted_view=max(self.safety.last_voted_view, view))
            out, at = [self._persist()] + out, 1
        rearm = []
        if self.idle_view == view:  # it waited in its view: the view's timer starts again
            self.rearmed = view
            rearm = [SetTimer(view, self.cfg.timeout_ms(self.failures))]
        return rearm + out[:at] + [Broadcast(p)] + out[at:]

    # ---- votes, QCs, commits ------------------------------------------------------------------
    def _on_vote(self, sender: int, v: Vote) -> list:
        """A vote, from its voter only: a validator sends only its own votes (to the next leader),
        and a sender's index is its authenticated link's. Another's vote was verified, a check a
        frame, for ever (review s23); one's own that does not verify, of a view this validator is
        in or past, is its one vote of that view (an honest validator's never fails)."""
        if self.cfg.leader(v.view + 1) != self.cfg.me or v.view + 1 < self.view or not 0 <= v.voter < self.cfg.n:
            return []
        if v.voter != sender:
            self.counters["vote_not_senders"] += 1
            return []
        if v.view >= MAX_VIEW:
            return []
        if v.view > self.view + VOTE_WINDOW:
            self.counters["vote_far_ahead"] += 1
            return []
        if v.voter in self.vote_voters.get(v.view, ()):
            return []  # one vote per voter and view: a second (another block) is an equivocation
        tally = self.votes.get((v.view, v.block_id))
        if tally is not None and (v.voter in tally.sigs or len(tally.sigs) >= self.cfg.quorum):
            return []
        if not self.app.verifier.verify_one(self.cfg.keys[v.voter], vote_bytes(v.block_id, v.view, self.cfg.network),
                                            v.signature):
            self.counters["vote_invalid"] += 1
            if v.view <= self.view:  # (not views ahead: frames injected into an honest validator's
                # link would take its votes of the next 1,000 views; the second review)
                self.vote_voters.setdefault(v.view, set()).add(v.voter)
            return []  # (no tally is created for a vote that does not verify)
        tally = self.votes.setdefault((v.view, v.block_id), _Tally())
        tally.sigs[v.voter] = v.signature
        self.vote_voters.setdefault(v.view, set()).add(v.voter)
        if len(tally.sigs) < self.cfg.quorum:
            return []
        voters = tuple(sorted(tally.sigs))
        # the height is the certified block's, never a voter's say (a vote's signature does not
        # cover it); a QC for a block not held yet keeps the last vote's, checked by _qc_matches
        # before anything relies on it
        block = self.blocks.get(v.block_id)
        qc = QC(v.block_id, v.view, block.height if block is not None else v.height, voters,
                b"".join(tally.sigs[i] for i in voters))
        return self._process_qc(qc, self.cfg.me)

    def _process_qc(self, qc: QC, sender: int) -> list:
        out, qc = [], self._labelled(qc)
        if qc.block_id not in self.blocks:  # e.g. a restarted validator's high QC: ask for the block
            if qc.view > self.safety.high_qc.view:  # (an older one's block may be pruned: nothing to do)
                out += self._fetch(qc.block_id, sender, need=qc.view)
                held = self.pending_qcs.get(qc.block_id)
                if qc.block_id in self.fetching and (held is None or held.view < qc.view):
                    self.pending_qcs[qc.block_id] = qc
                    if len(self.pending_qcs) > MAX_FETCHES:  # the lowest view goes
                        del self.pending_qcs[min(self.pending_qcs, key=lambda i: self.pending_qcs[i].view)]
        elif not self._qc_matches(qc):
            self.counters["qc_mismatch"] += 1
            return []  # signatures over one block, view or height of another: nothing to act on
        elif qc.view > self.safety.high_qc.view:
            self.safety = replace(self.safety, high_qc=qc)
            out.append(self._persist())
            out += self._commit_for(qc)
        if qc.view >= self.view:
            out += self._enter_view(qc.view + 1, via_qc=True)
        return out

    def _persist(self) -> Persist:
        """The safety state to write, with the uncommitted blocks it needs (see Safety)."""
        ids = []
        for tip in (self.safety.high_qc.block_id, self.voted):
            b = self.blocks.get(tip)
            while b is not None and b.height > self.committed.height and b.id not in ids:
                ids.append(b.id)
                b = self.blocks.get(b.parent)
        props = sorted((self.proposals[i] for i in ids if i in self.proposals), key=lambda p: p.block.height)
        return Persist(replace(self.safety, blocks=tuple(props)))

    def _commit_for(self, qc: QC) -> list:
        b1 = self.blocks[qc.block_id]
        b0 = self.blocks.get(b1.parent)
        if b0 is None or b1.view != b0.view + 1 or b0.height <= self.committed.height:
            return []
        chain = []
        cursor = b0
        while cursor.height > self.committed.height:
            chain.append(cursor)
            cursor = self.blocks[cursor.parent]
        if cursor.id != self.committed.id:  # would be a fork of what this validator committed
            raise InvariantViolation(f"safety violated: block {b0.id.hex()} at height {b0.height} does not extend "
                                     f"the committed block {self.committed.id.hex()} at height {self.committed.height}")
        out = []
        for b in reversed(chain):
            self.committed = b
            self._record(b)
            self.app.committed(b, self.states[b.id])
            out.append(Committed(b, self.proposals[b.id], self.timings.get(b.id, {})))
        self._prune()
        return out

    def _check_proposers(self, history) -> None:
        """The proposers' signatures and the certificates (QC, TC) of stored blocks, in one batch:
        a damaged store would otherwise serve peers blocks they reject. The block id covers
        neither certificate, so a flipped bit in a stored QC passed every check at start, and
        each peer catching up from this validator refused the block and took it for a faulty
        one (review s12)."""
        if not history:
            return
        batch: tuple[list, list, list] = ([], [], [])
        for p in history:
            try:
                for whole, part in zip(batch, self._proposal_certs(p)):
                    whole.extend(part)
            except InvalidCertificate as exc:
                cfg = self.cfg
                older = (f" (a network of {cfg.n} validators certifies with n - f = {cfg.quorum} signatures since "
                         f"the fifteenth session, 2f + 1 = {2 * cfg.f + 1} before: a store written before restarts "
                         "on no validator; start every validator again from an empty data_dir)"
                         if cfg.quorum != 2 * cfg.f + 1 else "")
                raise InvariantViolation(f"stored block at height {p.block.height}: its certificate is "
                                         f"malformed: {exc}{older}") from None
        if not self.app.verifier.verify_lists(*batch):
            bad = next(p.block.height for p in history if not self.app.verifier.verify_lists(*self._proposal_certs(p)))
            raise InvariantViolation(f"stored block at height {bad}: its proposer's signature or a certificate "
                                     "does not verify")

    def _prune(self) -> None:
        """Forget what nothing can need any more: tallies of views before the committed block's,
        and blocks, states and timings below the committed height (the committed block stays,
        the parent of every block that can still commit; branches off below it never can).
        Committed proposals go too where a store serves them (committed_source); the proposals
        of abandoned branches always do. Parked proposals that can no longer commit go (at or
        below the committed height, or _stale), and the fetches of their parents."""
        floor, height = self.committed.view, self.committed.height
        self.votes = {k: t for k, t in self.votes.items() if k[0] >= floor}
        self.vote_voters = {v: s for v, s in self.vote_voters.items() if v >= floor}
        self.timeouts = {v: t for v, t in self.timeouts.items() if v >= floor}
        self.proposed = {v for v in self.proposed if v >= floor}
        self.view_blocks = {v: i for v, i in self.view_blocks.items() if v > floor}
        self.pending_qcs = {i: q for i, q in self.pending_qcs.items() if q.view > floor}
        self.timed_out = {v for v in self.timed_out if v >= floor}
        for i in [i for i, b in self.blocks.items() if b.height < height]:
            b = self.blocks.pop(i)
            self.states.pop(i, None)
            self.timings.pop(i, None)
            if self.committed_source is not None or self.chain[b.height] != i:
                self.proposals.pop(i, None)
        forgotten = []
        for parent, entries in list(self.waiting.items()):
            keep = []
            for sender, p in entries:
                if p.block.height > height and not self._stale(p.block):
                    keep.append((sender, p))
                else:
                    self.parked.pop(p.block.id, None)
            if keep:
                self.waiting[parent] = keep
            else:
                del self.waiting[parent]
                forgotten.append(parent)
        # the fetch of a parent nothing waits for any more gives its slot back (unless a QC over
        # it, or the high QC, still needs it): else each timeout asked for it again, ahead of the
        # fetches still needed
        for block_id in forgotten:
            if block_id in self.fetching and block_id not in self.pending_qcs and block_id != self.safety.high_qc.block_id:
                self._drop_fetch(block_id)

    # ---- views, timeouts ----------------------------------------------------------------------
    def _enter_view(self, view: int, via_qc: bool) -> list:
        if view <= self.view:
            return []
        self.view = view
        self.helped.clear()
        self.failures = 0 if via_qc else self.failures + 1
        delay = self.cfg.timeout_ms(self.failures)
        if self.answering:
            return [SetTimer(view, delay)] + self._propose(view)
        self.ticks += 1
        return [SetTimer(view, delay)] + self._one_request_per_range(self._refetch()) + self._propose(view)

    def _refetch(self) -> list:
        """Fetches unanswered for FETCH_VIEWS views, asked again of the validator after the one
        asked (of everyone's first but this one for a fetch asked of everyone), and the slots of
        blocks that came another way freed. A fetch was forgotten only when a view of this
        validator timed out, and while QCs or TCs formed by the others move it on no view of it
        does: a validator behind whose requests went unanswered (a peer's request backlog, a frame
        lost, a Byzantine peer that never answers) held MAX_FETCHES of them for ever and fetched
        nothing more, parking the chain's proposals as they came (found driving the simulation with
        a validator whose link stalled while the others went on: stuck at height 46 for good)."""
        out = []
        for block_id, asked in list(self.fetched_in.items()):
            if block_id not in self.fetching or self._height_of(block_id) is not None:
                self.fetching.pop(block_id, None)  # (came another way; committed ones may be pruned already)
                del self.fetched_in[block_id]
            elif self.ticks - asked >= FETCH_VIEWS:
                tries = self.fetch_tries.get(block_id, 0) + 1
                if tries >= self.cfg.n:  # every validator asked: a block nobody serves (an abandoned
                    self._drop_fetch(block_id)  # branch's); its slot is freed
                    continue
                peer = self._after(self.fetching[block_id])
                self.fetching[block_id], self.fetched_in[block_id] = peer, self.ticks
                self.fetch_tries[block_id] = tries
                self.counters["fetch_retried"] += 1
                out.append(self._ask(peer, block_id, self.committed.height + 1))
        self.fetch_tries = {i: t for i, t in self.fetch_tries.items() if i in self.fetching}
        # parents of parked proposals that no fetch is for (MAX_FETCHES were out when they were parked)
        for parent in sorted(self.waiting, key=self._needs(), reverse=True):
            if parent not in self.parked and parent not in self.blocks and parent not in self.fetching:
                out += self._fetch(parent, self.waiting[parent][0][0])
        return out

    def _on_local_timeout(self, view: int) -> list:
        """Stop voting in this view and ask everyone to move on, showing the highest QC known."""
        self.timed_out.add(view)
        self.safety = replace(self.safety, last_voted_view=max(self.safety.last_voted_view, view))
        hq = self.safety.high_qc
        t = Timeout(view, hq, self.cfg.me, self.sign(timeout_bytes(view, hq.view, self.cfg.network)))
        delay = self.cfg.timeout_ms(self.failures + 1)
        return [self._persist(), Broadcast(t), SetTimer(view, delay)] + self._tally_timeout(self.cfg.me, t)

    def _on_timeout(self, sender: int, t: Timeout) -> list:
        """A timeout from the network: its signature and its QC's are verified whoever it names as
        voter (this validator included: anyone can put its index in a frame). This validator's own
        timeouts never come this way; _on_local_timeout tallies them directly."""
        if t.view < self.view and t.voter == sender:
            return self._help_behind(sender, t.view)
        if t.view < self.view or t.view >= MAX_VIEW or not 0 <= t.voter < self.cfg.n \
                or t.voter in self.timeouts.get(t.view, {}) or self._superseded(t) or self._over_budget(t):
            return []
        try:
            keys, msgs, sigs = self.qc_certs(t.high_qc)
        except InvalidCertificate:
            self.counters["timeout_invalid"] += 1
            self._faulty(sender)
            return []
        known = _qc_key(t.high_qc)
        if known in self.good_qcs:  # (a QC verified before: only the timeout's own signature is left)
            keys, msgs, sigs = [], [], []
        certs = (keys + [self.cfg.keys[t.voter]], msgs + [timeout_bytes(t.view, t.high_qc.view, self.cfg.network)],
                 sigs + [t.signature])
        if not self.app.verifier.verify_lists(*certs):
            self.counters["timeout_invalid"] += 1
            self._faulty(sender)
            return []
        if keys:
            self._good_qc(known)
        return self._tally_timeout(sender, t)

    def _superseded(self, t: Timeout) -> bool:
        """Whether a voter's timeout for a view ahead of this validator's is older than one held
        from it, which _tally_timeout drops: dropped before its signatures are checked, since a
        Byzantine voter alternating two future views, with real QCs of old blocks (past the
        GOOD_QCS cache), cost quorum + 1 checks a frame and was never muted (review s19)."""
        return t.view > self.view and any(v > t.view and t.voter in tally for v, tally in self.timeouts.items())

    def _over_budget(self, t: Timeout) -> bool:
        """Whether t, a timeout for a view ahead, is past its voter's FUTURE_TIMEOUTS checked in this
        validator's view (else counted): an honest validator ahead sends one a timer expiry, and
        f + 1 of them move this one on (_tally_timeout). A Byzantine voter's own timeouts for ever
        higher views, each with a real QC of an old block (more than GOOD_QCS of them), were each
        newer than the one held: quorum + 1 checks a frame, none failing, so never muted (review s23)."""
        if t.view <= self.view:
            return False
        view, checked = self.future_checks.get(t.voter, (self.view, 0))
        checked = checked if view == self.view else 0
        if checked >= FUTURE_TIMEOUTS:
            self.counters["timeout_ahead_budget"] += 1
            return True
        self.future_checks[t.voter] = (self.view, checked + 1)
        return False

    def _good_qc(self, known: tuple) -> None:
        self.good_qcs[known] = None
        if len(self.good_qcs) > GOOD_QCS:
            del self.good_qcs[next(iter(self.good_qcs))]

    def _faulty(self, sender: int) -> None:
        """`sender` sent a timeout or proposal whose certificates or signatures do not verify, or a
        block that does not validate (refusals on a block's face, checked before any signature,
        do not count): never an honest validator (its timeouts carry its verified
        high QC, it proposes valid blocks and answers fetches with blocks it validated, and a
        sender's index is its authenticated link's). Its timeouts, proposals and block responses
        are dropped unchecked until this validator's view changes: a Byzantine validator's
        frames each cost up to a QC's 2f+1 signatures to refuse (a timeout with a forged QC
        reusing one signature of its own, a response of 64 proposals each "certified" by the
        next one's forged QC) and now cost that once a view."""
        if 0 <= sender < self.cfg.n and sender != self.cfg.me:
            # (in a block response: only its responses; see muted_responses)
            (self.muted_responses if self.answering else self.muted)[sender] = self.view
            self.counters["faulty_sender"] += 1

    def _help_behind(self, peer: int, view: int) -> list:
        """A peer's own timeout of a view before this validator's: if this validator formed a TC
        in that view, the timeouts it formed it from go to the peer, which forms the TC itself.
        A TC is never sent on its own, and a timeout of a view before the receiver's is not
        counted: without this, validators that lost the timeouts of a view the others formed a
        TC in (one of those crashed since) waited in it for ever. Once per peer between this
        validator's timer expiries and views (the peer's timeout comes again with each of its own), from
        what is held anyway, else (nothing held, the view just before this validator's, no QC
        since) its own timeout of that view, signed once."""
        if peer in self.helped or not 0 <= peer < self.cfg.n or peer == self.cfg.me:
            return []
        tally = self.timeouts.get(view, {})
        if len(tally) >= self.cfg.quorum:
            self.helped.add(peer)
            return [Send(peer, t) for v, t in sorted(tally.items()) if v != peer][:self.cfg.quorum]
        if view + 1 != self.view or self.safety.high_qc.view >= view:
            return []  # (a QC moves it on, or f + 1 timeouts of views ahead)
        self.helped.add(peer)
        # The timeouts are gone (a restart keeps none: it enters its last voted view, past the
        # views TCs it formed ended): this validator's own timeout of that view, which it never
        # votes in again (every view before its own), with its high QC. Without it, validators
        # left in the view a TC ended for the others, with f of them down, waited for ever (all
        # restarted: views 6, 5, 5, nothing committed; safe: its high QC only grows, so the TC
        # it helps form hides no lock). On disk before it leaves, as every signature is: restarted
        # before anything else was saved, it entered that view again and voted in it (review s18:
        # with one Byzantine leader building a QC and a TC of low high QCs in that view, two honest
        # validators committed different blocks at one height).
        self.safety = replace(self.safety, last_voted_view=max(self.safety.last_voted_view, view))
        hq = self.safety.high_qc
        return [self._persist(),
                Send(peer, Timeout(view, hq, self.cfg.me, self.sign(timeout_bytes(view, hq.view, self.cfg.network))))]

    def _tally_timeout(self, sender: int, t: Timeout) -> list:
        """Count a verified timeout (or this validator's own). Of a voter's timeouts for views
        ahead of this validator's, only the latest is kept (an honest one times out in increasing
        views), so signed timeouts for many future views cannot pile up."""
        if t.view < self.view or t.voter in self.timeouts.get(t.view, {}):
            return []
        if t.view > self.view:
            if self._superseded(t):
                return []
            held = [v for v, tally in self.timeouts.items() if v > self.view and t.voter in tally]
            for v in held:
                del self.timeouts[v][t.voter]
                if not self.timeouts[v]:
                    del self.timeouts[v]
        tally = self.timeouts.setdefault(t.view, {})
        tally[t.voter] = t
        out = self._process_qc(t.high_qc, sender) if t.high_qc.view > 0 else []
        if t.view < self.view:  # the QC moved this validator past the view
            return out
        ahead = sorted((v for v, held in self.timeouts.items() if v > self.view for _ in held), reverse=True)
        if len(ahead) > self.cfg.f and ahead[self.cfg.f] not in self.timed_out:
            # f+1 voters timed out in views at or past ahead[f] (one each, see above): at least
            # one honest validator got there. A TC is formed by each validator from the timeouts
            # it receives, never forwarded, and a timeout of a view before a validator's is
            # dropped: two honest validators that missed the timeouts of a view the others formed
            # a TC in waited in it for ever (found driving the simulation past a partition with
            # 5% loss: views 3, 3, 4 and 5 after the faults stopped, no block in 400 s)
            self.view = ahead[self.cfg.f]
            out += self._on_local_timeout(self.view)
        if len(tally) > self.cfg.f and t.view not in self.timed_out and t.view >= self.view:
            self.view = t.view  # f+1 timeouts: at least one honest validator gave up on this view
            out += self._on_local_timeout(t.view)
        if len(tally) == self.cfg.quorum:
            voters = tuple(sorted(tally))
            high = max((tally[v].high_qc for v in voters), key=lambda q: q.view)
            tc = TC(t.view, voters, tuple(tally[v].high_qc.view for v in voters),
                    b"".join(tally[v].signature for v in voters), high)
            out += self._process_tc(tc)
        return out

    def _process_tc(self, tc: TC) -> list:
        tc = replace(tc, high_qc=self._labelled(tc.high_qc))
        if self.last_tc is None or tc.view > self.last_tc.view:
            self.last_tc = tc
        out = []
        if tc.high_qc.view > self.safety.high_qc.view and self._qc_matches(tc.high_qc):
            self.safety = replace(self.safety, high_qc=tc.high_qc)
            out.append(self._persist())
            out += self._commit_for(tc.high_qc)
        return out + self._enter_view(tc.view + 1, via_qc=False)
