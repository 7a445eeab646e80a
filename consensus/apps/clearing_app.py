"""The clearing state machine behind the consensus core (the KvApp interface): validate() a block
before voting, stage by stage (every signature of the block and its certificates in one batch,
the transaction root, execution with margin timed apart, the state root), propose from the
mempool, replay committed blocks after a restart.

A block holding a transaction that a rule refuses is invalid: its proposer should have left it
out (propose() does), so honest validators reject the block rather than skip the transaction.
Margin is deferred to the end of the block: every book (account, settlement asset) a trade or
withdrawal touched must end the block above initial margin, checked in one portfolio_margin call
per (underlying, settlement asset) group, and no mark may liquidate such a book on the way
(docs/CLEARING.md, "Order inside a block").
Transactions enter the mempool with their signatures checked in one batch, and validation skips
the signatures of block transactions the mempool already holds (verified) unless sig_cache is off.
Software-only validation prices and margins with accel.risk_numpy: the kernels' bits in NumPy, so
both kinds of validator reach the same state roots. No input raises out of submit_many, propose
or validate (docs/CLEARING.md, "Invariants")."""
from __future__ import annotations

import contextlib
import gc
import hashlib
import heapq
import itertools
import logging
import operator
import time
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import numpy as np

import accel
from accel import Packed
from accel.packing import exact_bytes, pack_fixed, pack_messages

from ..messages import MAX_BLOCK_TXS, Block, Txs
from ..verify import Verifier
from . import clearing_tx as ctx
from .clearing import Clearing, Rejected, ShortBooks, TooEarly, unsafe_key
from .clearing_columns import apply_run
from .kv import EMPTY, Verdict
from .mark_watch import GRACE_S, MarkWatch

log = logging.getLogger("consensus.clearing")
_COLUMNAR = (ctx.DEPOSIT, ctx.WITHDRAW, ctx.TRADE, ctx.TOP_UP)
MAX_PASSES = 4  # fills of one proposal before it falls back to what no margin check refuses
REFUSALS_KEPT = 10_000  # reasons of recently refused transactions, for clients asking
# The mempool admits a transaction only if each account it consumes a nonce of is at most this
# many nonces past the account's next committed one: max(AHEAD_BLOCKS x max_txs, MIN_AHEAD). One
# account signing consecutive deposits (each valid, so never refused) filled the client API's
# whole mempool (max_mempool, 100,000), and the API then refused every other client's
# transaction until 1,000 default blocks drained it.
AHEAD_BLOCKS, MIN_AHEAD = 4, 1024
# A proposal from a mempool holding more than a block goes round-robin across accounts (_fair)
# once an account weighs more than 1/FAIR_PART of a block; below that, arrival order, in which no
# account's queue takes more than that part of a block ahead of anyone (many accounts still can,
# each with its share: FIFO, so at most the mempool's max_mempool / max_txs blocks). The
# round-robin order costs a 10,000-transaction proposal about 3.4 ms to compute and 1.5 ms in the
# fill (measured in one process, the validate-bench block with max_txs 9,999: 27.5 -> 32.4 ms),
# which an honest load whose busiest account holds 1.2% of the block (validate-bench: 1,000
# traders) does not pay.
FAIR_PART = 64
# The mempool owner of every mark listing a quorum of the network's oracles (whose signatures
# admission checks before it admits anything). Up to MARKS_KEPT pending marks weigh
# nothing: a full mempool takes a quorum mark in place of the heaviest owner's last transaction,
# whatever it weighs (a flood of fresh keys' registrations, free, each weighing two, kept the
# oracles' marks out, and prices stood still), and never evicts one for another owner; past it
# they weigh what they hold beyond it, like anyone's.
MARKS = ("oracle marks",)
MARKS_KEPT = 64
# Keys ed25519_keys_are_safe found safe, kept by the app (oldest dropped first) so that a
# registration checked on admission is not checked again by the proposal that takes it.
SAFE_KEYS_KEPT = 1 << 18


EARLY_ROUNDS = 8  # passes of _early over the transactions waiting on others refused in the same fill
# A shorter run of deposits, withdrawals and trades leaves out the transactions its nonces refuse
# (_nonce_gaps) before any columnar try, and what is left is applied one by one unless the columnar
# working set is live: apply_run costs about 0.2 ms a call whatever the run's length, and after a
# declined run the block's room refills with as many candidates as it refused, so a stretch of
# refused ones went a declined run of 3 at a time (review s19: 30,600 transactions kept waiting
# past such a run, 2.2 s a proposal; one by one, a transaction costs about 10 us). Where the
# working set is live a short run stays columnar: one by one writes it back and the next long
# run reads it again (a write-back a round of oracle marks, review s19).
MIN_RUN = 32


class _Internal(Rejected):
    """An exception no rule raises (a bug, or accel failing outright): the transaction or block is
    refused and the error logged, so no input can crash a validator."""


def _trading_partners(candidates: list, accounts: set[bytes]) -> set[bytes]:
    """accounts and every account linked to one of them by candidate trades, directly or through
    others: those whose positions depend on a held-back account's trades (a union-find)."""
    parent: dict[bytes, bytes] = {}

    def root(k: bytes) -> bytes:
        while parent.get(k, k) != k:
            parent[k] = parent.get(parent[k], parent[k])
            k = parent[k]
        return k
    for _, pending in candidates:
        if pending.tx.op == ctx.TRADE:
            a, b = root(pending.tx.signers[0]), root(pending.tx.signers[1])
            if a != b:
                parent[a] = b
    linked = {root(k) for k in accounts}
    return set(accounts) | linked | {k for k in parent if root(k) in linked}


def _marks_first(candidates: list) -> tuple[list, int]:
    """(candidates reordered, how many lead): every registration and each account's deposits
    that come before anything else it signs, then every mark, each in arrival order, then the
    rest in arrival order. The lead touches no book (deposits are not margined), so no mark in
    it can catch one: the marks apply, and liquidate, the same way whoever is held back after
    it; past the lead, accounts that no candidate trade links change nothing of each other's."""
    head, marks, rest = [], [], []
    busy: set[bytes] = set()  # accounts that signed a trade or a withdrawal before
    for item in candidates:
        tx = item[1].tx
        if tx.op == ctx.MARK:
            marks.append(item)
        elif tx.op in (ctx.REGISTER, ctx.DEPOSIT) and tx.signers[0] not in busy:
            head.append(item)
        else:
            busy.update(tx.signers)
            rest.append(item)
    return head + marks + rest, len(head) + len(marks)


def _fair(candidates: list, state: Clearing, quantum: int = 1) -> list:
    """candidates (arrival order) taken round-robin across accounts, `quantum` transactions of
    each account a round (ClearingApp.propose: a block's share, max_txs over the accounts
    pending, so the first round is about one block holding every account's share): a
    transaction's round is its account's count of earlier candidates over quantum, for each
    account it signs, and never before the round of an earlier candidate any of its signers
    signed; the candidates go by round, arrival order within one. So one account's long queue no
    longer takes every block ahead of everyone else (the mempool went in arrival order: 40,000
    deposits queued by one account filled the next four 10,000-transaction blocks while every
    other client waited), and a transaction still comes after every earlier one signed by any of
    its signers (a nonce chain in order, a registration before what its key signs). A mark with
    an oracle quorum takes the round after its underlying's previous quorum mark (and after the
    last quorum mark's), and everything arriving after it comes after it: the freshest prices
    first, and never behind a queue that arrived before it (a mark placed after everything that
    came before it, as arrival order did, made every mark a barrier: an account's 40,000 deposits
    queued before each block's oracle mark took the next four blocks ahead of every client
    arriving after it, and the mark with them). What arrived before a mark and goes after it is
    checked at the mark's prices, as the block's margin is at its end anyway. A mark without a
    quorum (refused, changing nothing) is none of this: any key can sign one. A transaction of
    a key not registered yet, admitted for a client (Pending.owner: ClearingApp._owner_for), counts
    against that client, not the key: a client's flood of fresh keys' registrations was as many
    accounts, all in the first round ahead of every account's second transaction; now it is one
    (its order unchanged: each key's chain still goes by its signers' rounds). One pass, no sort;
    an order close to arrival order where no account holds more than its share (the objects
    visited in about the order they were made: a reordered block of 10,000 costs its proposal
    milliseconds more in cache misses alone)."""
    rounds: list[list] = []
    last: dict = {}  # account (or ("mark", underlying)) -> the round of its latest candidate so far
    seen: dict = {}  # account (or a client's unregistered keys: Pending.owner) -> its candidates so far
    get, count, floor, mark, q = last.get, seen.get, 0, ctx.MARK, max(1, quantum)
    oracles, quorum = set(state.oracles), state.quorum
    for item in candidates:  # (0.25 us a candidate, measured: the common cases written out)
        tx = item[1].tx
        signers = tx.signers
        if tx.op == mark:
            if len(oracles.intersection(signers)) >= quorum:
                chain = ("mark", tx.fields[0])
                r = get(chain, -1) + 1
                if r < floor:
                    r = floor
                last[chain] = r
                floor = r + 1
            else:
                r = floor
        elif len(signers) == 1:
            k = signers[0]
            o = getattr(item[1], "owner", None) or k  # (a client's unregistered keys: one share)
            n = count(o, 0)
            seen[o] = n + 1
            r = n // q
            was = get(k, 0)
            if r < was:
                r = was
            if r < floor:
                r = floor
            last[k] = r
        else:  # a trade: two signers
            a, b = signers
            na, nb = count(a, 0), count(b, 0)
            seen[a], seen[b] = na + 1, nb + 1
            r = (na if na > nb else nb) // q
            was, wb = get(a, 0), get(b, 0)
            if wb > was:
                was = wb
            if r < was:
                r = was
            if r < floor:
                r = floor
            last[a] = last[b] = r
        if r == len(rounds):
            rounds.append([item])
        else:
            rounds[r].append(item)
    return [item for one in rounds for item in one] if len(rounds) > 1 else candidates


def _nonce_order(items: Iterator, state: Clearing, pool: "Mempool", skip: set) -> Iterator:
    """items (digest, Pending), an order of the candidates, with each account's moves (deposits,
    withdrawals, top-ups) in nonce order over the places its moves hold: at each place of an
    account's move the account's next nonce is taken if a move pending holds it (pulled from
    later in the order), else the move there; a move passed over goes at a later place of its
    account's, or at the end, in nonce order. Trades, registrations and marks keep their places.
    A client sending its nonces K - 1, ..., 1, 0 had each proposal look at, refuse and keep
    waiting every one of them to take the 0 (_stays keeps a chain waiting in place): 10,000
    candidates for a block of 20, a proposal of 100 from 100,000 pending 1.3 s against 60 ms in
    nonce order (review s21). One dictionary look a candidate; a candidate is listed once."""
    nxt: dict[bytes, int | None] = {}  # account -> the next nonce it is owed in this order
    waiting: dict[bytes, list] = {}  # account -> heap of (nonce, seq, item): moves passed over
    passed: set[bytes] = set()  # their digests
    listed: set[bytes] = set()  # moves listed ahead of their nonce (pulled ones: their own places passed over)
    seq = 0

    def next_of(k: bytes) -> int | None:
        if k not in nxt:
            nxt[k] = state.next_nonce(k)
        return nxt[k]

    def pulled(k: bytes, n: int):
        for digest in sorted(pool.holders.get((k, n), ())):
            held = pool.get(digest)
            if held is not None and held.tx.op in ctx.MOVES and digest not in skip and digest not in listed \
                    and digest not in passed:
                return digest, held
        return None

    for item in items:
        if item[0] in listed:
            continue
        tx = item[1].tx
        if tx.op not in ctx.MOVES:
            for k, n in ctx.consumed(tx)[0]:
                if next_of(k) == n:
                    nxt[k] = n + 1
            yield item
            continue
        k, n = tx.fields[0], tx.fields[1]
        want = next_of(k)
        if want is None or n == want:  # (its nonce is passed for good: never pulled again)
            nxt[k] = None if want is None else n + 1
            yield item
            continue
        heap = waiting.get(k)
        if heap and heap[0][0] == want:
            out = heapq.heappop(heap)[2]
            passed.discard(out[0])
        else:
            out = pulled(k, want) if n > want else None
            if out is None:  # nothing holds the next nonce (yet): this one as it is
                if n > want:  # (its nonce may come: it is not pulled then)
                    listed.add(item[0])
                yield item
                continue
        listed.add(out[0])
        seq += 1
        heapq.heappush(waiting.setdefault(k, []), (n, seq, item))
        passed.add(item[0])
        nxt[k] = want + 1
        yield out
    for heap in waiting.values():  # what never found its place: in nonce order, at the end
        while heap:
            yield heapq.heappop(heap)[2]


class _Candidates(list):
    """Candidates (digest, Pending) listed only as far as a fill reaches: the list so far, and the
    iterator `more` of those after it, which draw() appends to it (ClearingApp._apply_fill draws
    as it goes). Listing the whole mempool for every proposal, and scanning it, cost a block of
    10,000 deposits 23 ms to propose from 10,000 pending and 67-73 ms from 100,000 (24 ms now:
    bench_clearing.py, test_propose_from_a_deep_mempool).
    `more` may iterate the mempool itself, so nothing is drawn once the mempool has changed."""

    def __init__(self, more: Iterator):
        super().__init__()
        self.more: Iterator | None = more

    def draw(self, n: int) -> int:
        """Appends up to n more candidates; how many it did."""
        if self.more is None or n <= 0:
            return 0
        was = len(self)
        self.extend(itertools.islice(self.more, n))
        if len(self) - was < n:
            self.more = None
        return len(self) - was


def _quorum_marks_ahead(candidates: _Candidates, state: Clearing, room: int, pool: Mempool, skip: set) -> None:
    """candidates (in place) with the first mark listing a quorum of oracles of each underlying
    moved to the front, where it sits past the first `room` (a block's worth: ClearingApp.propose,
    from a mempool past one block): it waited at its arrival place (in arrival order, or in its
    round-robin round, which holds every owner's first transactions), so a flood of fresh keys'
    registrations that arrived before it from many addresses held every price out of the next
    max_mempool / max_txs blocks. Only that one, and only then: moving every pending quorum mark
    ahead (the first cut) checked the trades that arrived before them at prices up to 40,000
    transactions later, and in the demo market (4 blocks pending, a mark every 20) they left
    their accounts below margin, each refusal took its account's later nonces with it, and blocks
    of 10,000 held 2,103, then about 120 transactions. Everything that arrived after a mark
    already goes after it (_fair); what arrived before it and now goes after it is checked at its
    prices, as the block's margin is at its end anyway. A mark without a quorum (refused,
    changing nothing) stays where it was, and so does one stale on state (the parent: an
    uncommitted ancestor may carry a newer mark than ones still pending): moved ahead and
    refused, it left the underlying's fresh marks past the block, and validators holding them
    withheld their votes (mark_watch) from every honest block until the stale ones were gone.
    Moving one ahead pushes the others back: an underlying's first mark inside the room that a
    move pushes past it moves too (BTC's mark at place room - 1, ETH's past the room: the block
    carried ETH alone, and every validator holding the BTC mark withheld its vote).

    The marks are found in the mempool's index (Mempool.marks), not by a scan of every candidate:
    quorum marks keep their arrival order in every candidate order (_fair gives each a later round
    than the one before), so an underlying's first one among the candidates is its first one
    pending that `skip` (the excluded) does not name, and only the first `room` candidates are
    listed to find their places. Those moved join `skip`, so the candidates drawn after them
    leave them out."""
    oracles, quorum = set(state.oracles), state.quorum
    found: dict[bytes, int] = {}  # each underlying's first quorum mark not stale on state -> its Mempool.seq
    for underlying, held in pool.marks.items():
        last = state.marks.get(underlying)
        for digest, arrival in held.items():
            tx = pool[digest].tx
            if digest not in skip and len(oracles.intersection(tx.signers)) >= quorum and (
                    last is None or (tx.fields[2] > last.sequence and tx.fields[3] > last.timestamp)):
                found[digest] = arrival
                break
    if not found:
        return
    candidates.draw(room - len(candidates))
    first = {digest: place for place, (digest, _) in enumerate(candidates[:room]) if digest in found}
    for digest in sorted(found, key=found.get):  # past the room: in arrival order, after every place in it
        first.setdefault(digest, room + len(first))
    ahead: set[int] = set()
    while True:  # (a mark moved ahead pushes those after it back: one inside the room went past it)
        late = {p for p in first.values() if p not in ahead and p + sum(1 for q in ahead if q > p) >= room}
        if not late:
            break
        ahead |= late
    if not ahead:
        return
    moved = sorted((d for d, p in first.items() if p in ahead), key=first.get)
    skip.update(moved)
    candidates[:] = [(d, pool[d]) for d in moved] + [item for item in candidates if item[0] not in skip]


def _guarded(fn, *args):
    """fn(*args), with every failure a Rejected: a rule's own, accel's ValueError refusing an
    input, or anything else as _Internal."""
    try:
        return fn(*args)
    except Rejected:
        raise
    except ValueError as exc:
        raise Rejected(str(exc)) from None
    except Exception as exc:
        log.exception("clearing: internal error")
        raise _Internal(f"internal error: {type(exc).__name__}: {exc}") from None


@contextlib.contextmanager
def _gc_paused():
    """Cyclic garbage collection held off for one block: a block allocates tens of thousands of
    young objects (decoded transactions, their fields, arrays), and each collection triggered on
    the way walks all of them again (about a fifth of execution time, measured). Reference
    counting frees them as usual; any cycle waits for the next collection after the block."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _runs(txs: list) -> list[tuple[list[int], list[int]]]:
    """txs cut into steps (alone, run), each applied in turn: `alone` the positions applied one by
    one first (a mark; registrations), then `run` the deposits, withdrawals and trades applied at
    once (columnar execution). Only marks cut runs: a registration whose key no transaction of
    the run before it names joins the run's registrations, applied ahead of the run, which is the
    state of applying them in block order (a registration touches only its new account, and
    nothing before it in the run can see that account). A registration of a key the run named
    before it (that transaction or the registration is refused: the block is invalid) is a step
    alone, after the run. Every run copies the block's working set (every holder of an underlying
    a mark valued), so registrations between deposits (any client can send them) made the work
    (block / 3) x (working set)."""
    out: list[tuple[list[int], list[int]]] = []
    regs: list[int] = []
    run: list[int] = []
    named: set[bytes] = set()
    seen = 0  # run[:seen]'s signers are in named: gathered only when a registration asks
    for i, tx in enumerate(txs):
        if tx.op in _COLUMNAR:
            run.append(i)
            continue
        if tx.op == ctx.REGISTER:
            for j in run[seen:]:
                named.update(txs[j].signers)
            seen = len(run)
            if tx.signers[0] not in named:
                regs.append(i)
                continue
        if regs or run:
            out.append((regs, run))
        out.append(([i], []))
        regs, run, named, seen = [], [], set(), 0
    if regs or run:
        out.append((regs, run))
    return out


def _owner(tx: ctx.Tx) -> bytes:
    """The account a mempool transaction counts against, read from the transaction: its first
    signer (a trade's buyer, who signed it with the seller; a registration's new key; a mark's
    first signer, b"" for a mark listing none, which needs no signature: all such marks share one
    owner). ClearingApp.submit_many may name another (Pending.owner, ClearingApp._owner_for):
    MARKS for a mark with a quorum of oracles, the client that sent a key's transactions while
    that key is not registered."""
    return tx.signers[0] if tx.signers else b""


def _owner_of(pending):
    """The owner a mempool entry counts against: the one it was admitted under, else _owner."""
    owner = getattr(pending, "owner", None)
    return _owner(pending.tx) if owner is None else owner


def _who(owner) -> str:
    """An owner, in words (a refusal's or an eviction's reason)."""
    if owner == b"":
        return "marks listing no signer"
    if isinstance(owner, bytes):
        return f"account {owner.hex()[:16]}"
    if owner == MARKS:
        return "the oracles' marks"
    return f"client {owner[1]}'s unregistered keys"


def _touches(tx: ctx.Tx) -> set:
    """What a block must share with tx to make it stale (ClearingApp._stale): an (account, nonce)
    pair it consumes (admission refuses a nonce below the committed one and each commit drops
    those a block uses, so a block makes stale only what shares one of its pairs: not every
    transaction its accounts queue, 33,333 of them checked at each commit of one deposit of
    each of three accounts), the underlying (a str) of its mark (a mark makes every pending one
    of its underlying up to its sequence stale). A registration's body is its key: only the same
    body, the block's own transaction, registers it."""
    nonces, _, mark = ctx.consumed(tx)
    out = set(nonces)
    if mark is not None:
        out.add(mark[0])
    return out


def _place(tx: ctx.Tx) -> int:
    """Where tx sits in its owner's queue: the owner's nonce it consumes (a mark: its sequence; a
    registration: before anything its key signs)."""
    if tx.op == ctx.REGISTER:
        return -1
    return tx.fields[2] if tx.op == ctx.MARK else tx.fields[1]


class Mempool(dict):
    """sha256(body) -> Pending in arrival order (a dict: every read is a dict's), which also keeps,
    on every insertion and removal, each owner's pending count (_owner_of), a max-heap of the owners
    by weight (`weight`: ClearingApp._weight), a max-heap of each owner's transactions by _place,
    who holds what a commit can make stale (`holders`, _touches), each account's pending nonces
    (`held`: _evict_short), and each underlying's marks in arrival order (`marks`):
    ClearingApp.submit_many finds the heaviest account and its last transaction in O(log n),
    ClearingApp.committed looks only at the transactions that share a nonce or an underlying with
    the block, and a proposal finds the marks it moves ahead (_quorum_marks_ahead) without reading
    the rest. Heap entries go stale as counts fall (removals do no heap work); they are checked where read, and a
    heap past twice what it indexes is rebuilt (amortized O(1) an insertion)."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.count: dict[bytes, int] = {}
        self.queues: dict[bytes, list] = {}   # owner -> heap of (-place, -seq, digest)
        self.owners: list = []                # heap of (-weight, seq, owner), weights possibly stale
        self.since: dict[bytes, int] = {}     # owner -> seq of its weight's last change seen
        self.nonces: dict[tuple, int] = {}    # (account, nonce) -> pending transactions consuming it
        self.held: dict[bytes, set] = {}      # account -> the nonces of it in `nonces`
        self.holders: dict[object, set] = {}  # _touches item -> digests of the transactions it has
        self.marks: dict[str, dict] = {}      # underlying -> {digest: seq} of its marks, in arrival order
        self.seq = 0
        self.removed = 0                      # removals so far: (seq, removed) changes with any change
        self.weight = lambda owner, n: n      # an owner's weight, holding n (ClearingApp sets it)
        self.update(*args, **kwargs)

    def __setitem__(self, digest, pending) -> None:
        if not isinstance(getattr(pending, "tx", None), ctx.Tx):  # (before anything is written)
            raise TypeError(f"a mempool holds Pending entries, not {type(pending).__name__}")
        if digest in self:
            self._gone(digest, dict.pop(self, digest))
        dict.__setitem__(self, digest, pending)
        owner = _owner_of(pending)
        for pair in ctx.consumed(pending.tx)[0]:
            n = self.nonces[pair] = self.nonces.get(pair, 0) + 1
            if n == 1:
                self.held.setdefault(pair[0], set()).add(pair[1])
        for item in _touches(pending.tx):
            self.holders.setdefault(item, set()).add(digest)
        self.seq += 1
        if pending.tx.op == ctx.MARK:
            self.marks.setdefault(pending.tx.fields[0], {})[digest] = self.seq
        n = self.count[owner] = self.count.get(owner, 0) + 1
        queue = self.queues.setdefault(owner, [])
        heapq.heappush(queue, (-_place(pending.tx), -self.seq, digest))
        if len(queue) > 2 * n + 8:
            seen: set[bytes] = set()  # (a digest that left and came back has two entries)
            self.queues[owner] = queue = [e for e in sorted(queue) if self._live(e[2], owner)
                                          and not (e[2] in seen or seen.add(e[2]))]
        self.since[owner] = self.seq
        heapq.heappush(self.owners, (-self.weight(owner, n), self.seq, owner))
        if len(self.owners) > 2 * len(self.count) + 64:  # (ties keep their order: since)
            self.reweigh(self.weight)

    def reweigh(self, weight) -> None:
        """weight(owner, n) from now on, every owner's entry made again with it (entries may be
        too heavy where read, never too light)."""
        self.weight = weight
        self.owners = [(-weight(o, n), self.since[o], o) for o, n in self.count.items()]
        heapq.heapify(self.owners)

    def _live(self, digest: bytes, owner: bytes) -> bool:
        held = self.get(digest)
        return held is not None and _owner_of(held) == owner

    def _gone(self, digest: bytes, pending) -> None:
        self.removed += 1
        for pair in ctx.consumed(pending.tx)[0]:
            left = self.nonces[pair] - 1
            if left:
                self.nonces[pair] = left
            else:
                del self.nonces[pair]
                held = self.held[pair[0]]
                held.discard(pair[1])
                if not held:
                    del self.held[pair[0]]
        for item in _touches(pending.tx):
            held = self.holders[item]
            held.discard(digest)
            if not held:
                del self.holders[item]
        if pending.tx.op == ctx.MARK:
            held = self.marks[pending.tx.fields[0]]
            del held[digest]
            if not held:
                del self.marks[pending.tx.fields[0]]
        owner = _owner_of(pending)
        n = self.count[owner] - 1
        if n:
            self.count[owner] = n
        else:
            del self.count[owner], self.queues[owner], self.since[owner]

    def last(self, owner: bytes) -> bytes | None:
        """The digest of owner's pending transaction furthest along its queue (latest arrival on a tie)."""
        queue = self.queues.get(owner, [])
        while queue and not self._live(queue[0][2], owner):
            heapq.heappop(queue)
        return queue[0][2] if queue else None

    def heaviest(self) -> tuple[int, bytes | None]:
        """(weight, owner) of the owner weighing the most; on a tie, the one whose weight was seen
        to change first (an account arriving at that weight after another gives way after it:
        no key bytes decide, which a client could grind); (0, None) if the mempool is empty."""
        owners = self.owners
        while owners:
            w, seq, owner = owners[0]
            n = self.count.get(owner, 0)
            now = self.weight(owner, n) if n else 0
            if now == -w and seq == self.since.get(owner):
                return now, owner
            heapq.heappop(owners)  # stale: its count changed, or its key was registered since
            if now and seq == self.since.get(owner):  # the owner's current entry: reweighed
                self.seq += 1
                self.since[owner] = self.seq
                heapq.heappush(owners, (-now, self.seq, owner))
        return 0, None

    def requeue(self, digests: list[bytes]) -> None:
        """digests (those held) moved to the end of the arrival order, in the order given, as if
        they had just arrived; nothing else changes (their owners' counts, queues and seq: a
        proposal that moved only these left the mempool as it was, ClearingApp.barren)."""
        for digest in digests:
            held = dict.pop(self, digest, None)
            if held is not None:
                dict.__setitem__(self, digest, held)

    def __delitem__(self, digest) -> None:
        self._gone(digest, dict.pop(self, digest))

    def pop(self, digest, *default):
        if digest in self:
            held = dict.pop(self, digest)
            self._gone(digest, held)
            return held
        if default:
            return default[0]
        raise KeyError(digest)

    def popitem(self):
        digest, held = dict.popitem(self)
        self._gone(digest, held)
        return digest, held

    def clear(self) -> None:
        dict.clear(self)
        self.count, self.queues, self.owners, self.since, self.nonces, self.holders = {}, {}, [], {}, {}, {}
        self.marks, self.held = {}, {}

    def setdefault(self, digest, default=None):
        if digest not in self:
            self[digest] = default
        return self[digest]

    def update(self, *args, **kwargs) -> None:
        for digest, held in dict(*args, **kwargs).items():
            self[digest] = held

    def __ior__(self, other):
        self.update(other)
        return self


class Pending(NamedTuple):
    """A mempool transaction: its body, signatures (checked on admission), decoded form, and its
    signatures joined as they sit in a block."""
    body: bytes
    signatures: list
    tx: ctx.Tx
    joined: bytes
    owner: object = None  # whom it counts against in the mempool (None: _owner(tx))


@dataclass
class _Fill:
    state: Clearing
    kept: list            # positions in candidates of the transactions kept, in order
    refused: dict         # digest -> the Rejected a rule refused it with
    short: dict           # account -> candidate position of its last kept transaction
    broken: int | None    # candidate position of an internal error (-1: at the block's end)
    stop: int | None = None  # candidates looked at: those before this position (None: cut short)


def _nonce_gaps(state: Clearing, txs: list) -> dict[int, TooEarly]:
    """The moves and trades of a run (txs, in order: declined by apply_run, or under MIN_RUN) that
    cannot apply on state for their nonces if the run's others apply, by index, with the TooEarly
    apply refuses them with then: a nonce past its account's next one, counting the run's
    transactions before it as applied. A run holding one was applied one by one, and
    transactions queued ahead of their account's missing nonce were applied, and refused, by
    every proposal's fills while an honest backlog kept that nonce out of the blocks (review s18:
    30,600 such deposits took a 10,000-transaction proposal from 68-110 ms to 463-470 ms).
    Counted only where the checks before the nonces pass (move_refusal, Clearing.trade_stop)
    and every pair before the one past its account's next nonce is that account's next. Where
    the run's others do not all apply, one may apply after all (a trade whose leg a refused
    transaction had seemed to use advances its other account unseen): _refused_for_nonces checks
    each again then."""
    nxt: dict[bytes, int | None] = {}  # account -> its next nonce, the run's earlier transactions applied
    out: dict[int, TooEarly] = {}

    def refusal(tx: ctx.Tx, k: bytes, n: int) -> TooEarly | None:
        f = tx.fields
        stop = state.trade_stop(f[0], f[2], f[4], f[5], f[6]) if tx.op == ctx.TRADE else \
            state.move_refusal(f[2], f[3], "move")
        if stop:
            return None
        return TooEarly(k) if nxt[k] is None else TooEarly(k, n, nxt[k])

    for i, tx in enumerate(txs):
        pairs = ctx.consumed(tx)[0]
        for k, n in pairs:
            if k not in nxt:
                nxt[k] = state.next_nonce(k)
            b = nxt[k]
            if b is None or n > b:
                exc = refusal(tx, k, n)
                if exc is not None:
                    out[i] = exc
                break
            if n < b:  # used already: apply says so
                break
        else:
            for k, n in pairs:
                nxt[k] = n + 1
    return out


def _stays(state: Clearing, tx: ctx.Tx, pool: Mempool, waiting: set[bytes]) -> bool:
    """Whether a transaction kept waiting keeps its place in the mempool's order: each of its
    (account, nonce) pairs is its account's next on the proposal's state, or what that next nonce
    is held by was reached by the proposal and kept waiting too (a client's nonces arriving 2, 1,
    4, 3: the block takes 1, and 2, 3 and 4 go in the next ones where they are; sent behind the
    backlog, they went there again at every step). What waits on a nonce the proposal did not
    reach (sent after a backlog) goes to the end."""
    for k, n in ctx.consumed(tx)[0]:
        m = state.next_nonce(k)
        if n != m and (m is None or waiting.isdisjoint(pool.holders.get((k, m), ()))):
            return False
    return True


def _refused_for_nonces(state: Clearing, candidate: tuple, refused: dict) -> bool:
    """Whether move or trade candidate (digest, Pending), a gap of a declined run (_nonce_gaps:
    the checks before its nonces pass), is refused for its nonces on state: its refusal then
    goes into refused (digest -> Rejected) as apply's, without applying it. If it is not (the run's
    others did not all apply), or looking fails, it is applied."""
    try:
        for k, n in ctx.consumed(candidate[1].tx)[0]:
            exc = _guarded(state.nonce_refusal, k, n)
            if exc is not None:
                refused[candidate[0]] = exc
                return True
    except Rejected:
        pass
    return False


@dataclass
class State:
    clearing: Clearing
    root: bytes
    arrived: float = float("-inf")  # when its block's validation began here (MarkWatch)


class ClearingApp:
    def __init__(self, verifier: Verifier, genesis: Clearing, max_txs: int = 10_000, sig_cache: bool = True,
                 chain_id: int = ctx.CHAIN_ID, clock: Callable[[], float] = time.monotonic,
                 mark_grace_s: float = GRACE_S):
        """chain_id: the network's (every transaction body starts with it, so what a key signed for
        another network, or a test network, is refused here: all networks had chain id 1).
        clock, mark_grace_s: when marks arrive, and how long one is held before a block leaving
        it out gets no vote from this validator (endorse)."""
        if not (isinstance(chain_id, int) and 0 <= chain_id < 2**32):
            raise ValueError(f"chain id {chain_id!r}: a u32")
        self.verifier, self.max_txs, self.sig_cache = verifier, min(max_txs, MAX_BLOCK_TXS), sig_cache
        self.chain_id = chain_id
        genesis.software = verifier.validation == "software"
        self.genesis = State(genesis, genesis.state_root(verifier.sha256_rows))
        # sha256(body) -> (body, signatures). Every entry's signatures verified on admission, so
        # the mempool is also the signature cache: a block transaction found here with the same
        # signatures needs no second check (sig_cache=False checks everything, for measurement).
        self.mempool = Mempool()
        # Transactions the mempool holds at most (None: no bound; the client API sets its
        # [rpc] max_mempool). A full mempool makes room for an account holding fewer than the
        # heaviest (submit_many): one that fills it cannot keep everyone else out.
        self.max_mempool: int | None = None
        # The state of the last committed block: a transaction needing what it used up (a nonce,
        # a registration, a mark sequence) can never apply, so the mempool refuses it and drops it
        # at the next commit instead of keeping it forever. Read, never changed.
        self.head: Clearing = self.genesis.clearing
        self.head_id: bytes | None = None  # the block whose state head is (None: not known)
        self.refused: dict[bytes, str] = {}  # sha256(body) -> why it left the mempool unapplied
        self._safe_keys: dict[bytes, None] = {}  # keys found safe (SAFE_KEYS_KEPT), oldest first
        self.marks_seen = MarkWatch(clock, mark_grace_s)

    def _check_keys(self, keys: list[bytes]) -> tuple[set[bytes], bool]:
        """(the safe keys among keys, whether every key was checked): those found safe before,
        and the rest in one ed25519_keys_are_safe call (bit-identical on every backend, and
        ed25519_key_is_safe's verdict: Clearing.register's rule). If accel fails outright, only
        what was known; the caller then leaves the rest to register's own check (verdicts
        unchanged, only slower)."""
        known = self._safe_keys
        safe = {k for k in keys if k in known}
        unknown = list(dict.fromkeys(k for k in keys if k not in known))
        if not unknown:
            return safe, True
        try:
            verdicts = accel.ed25519_keys_are_safe(unknown, backend=self.genesis.clearing.backend).tolist()
        except Exception:
            log.exception("clearing: the batched key check failed; registrations check their keys one by one")
            return safe, False
        for k, ok in zip(unknown, verdicts):
            if ok:
                safe.add(k)
                known[k] = None
        while len(known) > SAFE_KEYS_KEPT:
            del known[next(iter(known))]
        return safe, True

    @property
    def mempool(self) -> Mempool:
        return self._mempool

    @mempool.setter
    def mempool(self, held) -> None:
        """Any mapping assigned becomes a Mempool (its owners' counts kept from then on)."""
        held = held if isinstance(held, Mempool) else Mempool(held)
        held.reweigh(self._weight)
        self._mempool = held
        self.head_id = None  # (what it holds was never checked: the next commit checks it all)
        # the mempool's (seq, removed) when a proposal from it came out empty and left it as it was
        self.barren: tuple | None = None
        self._proposing: tuple | None = None  # the same when the proposal under way began

    def _weight(self, owner, n: int) -> int:
        """An owner's weight in the mempool, holding n transactions: an account's n, one more for
        a key not registered at the last committed block (keys are free, so a flood of fresh
        keys' registrations, one pending each, must not keep out an account that is registered
        and holds nothing pending); a client's unregistered keys' (_owner_for), n + 1 likewise;
        the oracles' marks (MARKS), what they hold past MARKS_KEPT."""
        if isinstance(owner, bytes):
            return n + (owner not in self.head.accounts)
        if owner == MARKS:
            return max(0, n - MARKS_KEPT)
        return n + 1

    def _owner_for(self, tx: ctx.Tx, client):
        """The owner tx is admitted under: _owner(tx), but for the transactions of a key not
        registered at the last committed block (its registration, what it signs after it) sent
        through the client API, the client that sent them (("client", its address): the unit of
        every bound of the API, an IPv4 address or an IPv6 /64). Keys cost nothing, so a flood of
        fresh keys' registrations, each its own owner weighing two, kept every other new user's
        registration out of a full mempool for as long as the flood went on; counted per client,
        the flood is one heavy owner that gives way to anyone holding less, and keeping a new
        user out takes as many addresses as half the mempool (docs/OPERATOR.md)."""
        head, owner = self.head, _owner(tx)
        if tx.op == ctx.MARK:  # (a mark short of a quorum is refused: _misformed)
            return MARKS
        if client is None or owner in head.accounts:
            return owner
        try:  # (the client API gives a site's name; an in-process caller's odd object must not raise)
            return ("client", client if isinstance(client, str) else str(client))
        except Exception:
            return ("client", "?")

    def has_pending(self) -> bool:
        """Whether the mempool holds a transaction a proposal may take (a leader with none may wait
        to propose: Config.empty_block_interval_ms): not when this validator's last proposal came
        out empty, evicted nothing, and nothing was admitted nor a block of transactions committed
        since (a proposal from it would come out empty again; one that evicted, a short account's
        later half for one, may leave what applies now). Any transaction left pending that no
        proposal takes kept the pacing off: the network committed empty blocks as fast as its
        links allowed (about 140 a second on loopback, some 20 GB of store and log a day)."""
        return len(self.mempool) > 0 and self.barren != (self.mempool.seq, self.mempool.removed)

    def submit_many(self, items: list[tuple[bytes, list[bytes]]], client=None) -> list[str]:
        """Admit (body, signatures) pairs to the mempool, every signature checked in one batch;
        per item, "" if admitted (or already there), else why it was refused. client: who sent
        them (the client API's address), which a key not yet registered counts against
        (_owner_for); None (in-process callers) counts it against the key itself."""
        reasons, decoded = [""] * len(items), []
        for i, item in enumerate(items):
            try:
                body, signatures = item
                if not isinstance(body, bytes) or not all(isinstance(s, bytes) for s in signatures):
                    raise ctx.Malformed("a body and its signatures are bytes")
                body, signatures = exact_bytes(body), [exact_bytes(s) for s in signatures]
                tx = ctx.decode(body, self.chain_id)
                if len(signatures) != len(tx.signers) or any(len(s) != 64 for s in signatures):
                    raise ctx.Malformed(f"{len(tx.signers)} signer(s) need as many 64-byte signatures, "
                                        f"got {len(signatures)}")
            except (ctx.Malformed, TypeError, ValueError) as exc:
                reasons[i] = f"malformed: {exc}"
                continue
            reasons[i] = self._stale(tx) or self._ahead(tx) or self._misformed(tx)
            if not reasons[i]:
                decoded.append((i, body, signatures, tx))
        fresh, twice = [], {}  # twice: item -> the earlier item of the submission it repeats
        first: dict[tuple, int] = {}
        for i, body, signatures, tx in decoded:
            digest = hashlib.sha256(body).digest()
            j = first.setdefault((digest, *signatures), i)
            if j != i:  # the same body and signatures again: its verdict, not its work again
                twice[i] = j
                continue
            held = self.mempool.get(digest)
            if held is None:  # (before its signatures are checked: no room, no work)
                reasons[i] = self._room(tx, self._owner_for(tx, client), evict=False)
            if not reasons[i] and (held is None or held.signatures != signatures):
                fresh.append((i, digest, body, signatures, tx))
        regs = [tx.fields[0] for *_, tx in fresh if tx.op == ctx.REGISTER]
        if regs:  # unsafe keys refused before their signatures are checked, all in one call
            safe, checked = self._check_keys(regs)
            if checked and len(safe) < len(set(regs)):
                for i, *_, tx in fresh:
                    if tx.op == ctx.REGISTER and tx.fields[0] not in safe:
                        reasons[i] = unsafe_key(tx.fields[0])
                fresh = [entry for entry in fresh if not reasons[entry[0]]]
        if not fresh:
            return self._echo(reasons, twice)
        keys = np.frombuffer(b"".join(k for *_, tx in fresh for k in tx.signers), np.uint8).reshape(-1, 32)
        messages = Packed(*pack_messages([body for _, _, body, _, tx in fresh for _ in tx.signers]))
        sigs = pack_fixed([s for _, _, _, signatures, _ in fresh for s in signatures], 64, "signature")
        verdicts = self.verifier.verify_each(keys, messages, sigs)
        ends = np.cumsum([len(tx.signers) for *_, tx in fresh])
        for (i, digest, body, signatures, tx), end in zip(fresh, ends):
            if not verdicts[end - len(tx.signers):end].all():
                reasons[i] = "a signature does not verify"
            elif digest not in self.mempool:
                owner = self._owner_for(tx, client)
                reasons[i] = self._room(tx, owner, evict=True)
                if not reasons[i]:
                    self.mempool[digest] = Pending(body, signatures, tx, b"".join(signatures),
                                                   None if owner == _owner(tx) else owner)
                    if tx.op == ctx.MARK:
                        self.marks_seen.admitted(digest, tx)
        return self._echo(reasons, twice)

    @staticmethod
    def _echo(reasons: list[str], twice: dict[int, int]) -> list[str]:
        """reasons, each item that repeats an earlier one of its submission (the same body and
        signatures) given that one's verdict: a batch of 1,000 copies of one transaction had
        1,000 signature checks done (and charged to its client) for one verdict."""
        for i, j in twice.items():
            reasons[i] = reasons[j]
        return reasons

    def _room(self, tx: ctx.Tx, owner, evict: bool) -> str:
        """"" if the mempool has room for tx, counted against owner (_owner_for; with evict, made by
        evicting), else why not. A full mempool (max_mempool) takes a transaction from an owner
        weighing at least two less than the heaviest (_weight; an oracle mark within MARKS_KEPT:
        weighing less), in place of the heaviest one's transaction furthest along its queue: the tail of
        its nonce chain, so the rest still applies in order. Three accounts queueing 40,000
        deposits each (their window, _ahead) filled the client API's 100,000 and refilled it as
        blocks drained it: every other client got 503 for as long as they liked. Now they keep
        their share, and anyone holding less gets in; the owner weighing the most that got there
        first gives way first (one arriving at the same weight after it keeps its place).
        Deterministic, O(log n) an admission (Mempool's heaps)."""
        if self.max_mempool is None:
            return ""
        pool = self.mempool
        while len(pool) >= self.max_mempool:
            mine = pool.weight(owner, pool.count.get(owner, 0))
            top, heavy = pool.heaviest()
            victim = pool.last(heavy) if heavy is not None and heavy != owner else None
            # an oracle mark within MARKS_KEPT takes the place of anyone's (it weighs nothing)
            if victim is None or (mine + 1 >= top and not (owner == MARKS and mine == 0 and top > 0)):
                return (f"mempool full ({len(pool)} transactions): {_who(owner)}: "
                        f"{pool.count.get(owner, 0)} of them, as many as any owner may hold now; try again after a block")
            if not evict:
                return ""
            self._evict({victim: f"evicted from a full mempool: {_who(heavy)} held the most "
                                            f"pending transactions ({pool.count[heavy]}); send it again after a block"})
        return ""

    def _stale(self, tx: ctx.Tx) -> str:
        nonces, key, mark = ctx.consumed(tx)
        accounts = self.head.accounts
        for account, nonce in nonces:
            held = accounts.get(account)
            if held is not None and nonce < held.nonce:
                return f"stale: account {account.hex()[:16]} nonce {nonce} is used by a committed transaction"
        if key is not None and key in accounts:
            return f"stale: account {key.hex()[:16]} is registered"
        last = self.head.marks.get(mark[0]) if mark is not None else None
        if last is not None and mark[1] <= last.sequence:
            return f"stale: {mark[0]} mark {mark[1]} is not after the committed mark {last.sequence}"
        return ""

    def _misformed(self, tx: ctx.Tx) -> str:
        """Why the mempool takes no tx whatever its signatures and whenever it comes ("" if it
        does): ctx.form_refusal on the committed head, checked before its signatures. A deposit of
        an asset the ledger lacks ("usd") or a trade of a series not listed was "accepted", then
        refused by the next proposal, with the account's later transactions (a nonce gap). A mark
        taken whatever its signers: one request of 30 marks of 255 signers each cost 7,650 checks,
        also with the oracles' public keys listed among 253 fresh ones, and marks signed by fresh
        keys, each its own owner, filled a mempool from one address (_owner_for)."""
        return ctx.form_refusal(self.head, tx)

    def _ahead(self, tx: ctx.Tx) -> str:
        """Why tx waits too far ahead of its accounts' committed nonces ("" if it does not)."""
        window = max(AHEAD_BLOCKS * self.max_txs, MIN_AHEAD)
        for account, nonce in ctx.consumed(tx)[0]:
            held = self.head.accounts.get(account)
            if nonce - (held.nonce if held is not None else 0) >= window:
                return (f"ahead: account {account.hex()[:16]} nonce {nonce} is {window} or more past its next "
                        f"committed nonce {held.nonce if held is not None else 0}; send it after a block")
        return ""

    def submit(self, body: bytes, signatures: list[bytes]) -> None:
        """One transaction into the mempool; Malformed or BadSignature says why not."""
        reason = self.submit_many([(body, signatures)])[0]
        if reason:
            raise (ctx.Malformed if reason.startswith("malformed") else ctx.BadSignature)(reason)

    def _cached(self, bodies: Packed, sigs: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Per transaction, whether the mempool holds it with the same signatures (verified)."""
        ends = np.cumsum(counts).tolist()
        out = np.zeros(len(bodies), bool)
        for i, digest in enumerate(self.verifier.digests(bodies)):
            held = self.mempool.get(digest)
            if held is not None:
                out[i] = held.joined == sigs[ends[i] - int(counts[i]):ends[i]].tobytes()
        return out

    def _run(self, parent: State, txs: list) -> tuple[State, float]:
        """The state after txs (all must apply, and every account they touch must end the block
        above initial margin), and the seconds spent on margin."""
        state = parent.clearing.snapshot()
        state.margin_s, state.defer = 0.0, True
        state.begin_block()
        # every registration's key in one call (Clearing.safe_keys), register skipping its own (one
        # kernel call a key: 38 ms to execute 4,000 registrations against 11 ms for 4,000 deposits)
        regs = [tx.fields[0] for tx in txs if tx.op == ctx.REGISTER]
        if regs:
            state.safe_keys = self._check_keys(regs)[0]
        for alone, run in _runs(txs):
            if len(run) > 1:  # after its registrations (alone), which it may name
                for i in alone:
                    self._one(state, txs, i)
                if _guarded(apply_run, state, [txs[i] for i in run]):
                    continue
                alone = []
            for i in alone + run:  # one by one: a mark, registrations, or a run with a refusal
                self._one(state, txs, i)
        short = _guarded(state.end_of_block)
        if short:
            raise Rejected(f"account {short[0].hex()[:16]} ends the block below initial margin")
        state.defer = False
        vars(state).pop("safe_keys", None)  # (the block's keys: not kept with the state)
        return State(state, b""), state.margin_s

    @staticmethod
    def _one(state: Clearing, txs: list, i: int) -> None:
        try:
            _guarded(ctx.apply, state, txs[i])
        except Rejected as exc:
            raise Rejected(f"transaction {i}: {exc}") from None

    @_gc_paused()
    def execute(self, parent: State, bodies: Packed) -> State:
        """Replay (a committed block from this validator's own store)."""
        out, _ = self._run(parent, ctx.decode_all(bodies, self.chain_id))
        out.root = out.clearing.state_root(self.verifier.sha256_rows)
        return out

    def tx_root(self, txs: Txs) -> bytes:
        return self.verifier.merkle_root(txs.bodies) if len(txs) else EMPTY

    @_gc_paused()
    def validate(self, parent: State, block: Block, certs: tuple) -> Verdict:
        t = {}
        start = time.perf_counter()
        began = self.marks_seen.clock()
        if len(block.txs) > MAX_BLOCK_TXS:
            return Verdict(False, f"a block of {len(block.txs)} transactions (at most {MAX_BLOCK_TXS})", None, {})
        if block.txs.digest() != block.sig_digest:
            return Verdict(False, "signature digest does not match the header", None, {})
        bodies, sigs = block.txs.bodies, block.txs.sigs
        try:
            txs = ctx.decode_all(bodies, self.chain_id)
            counts = ctx.signer_counts(txs, sigs)
        except ctx.Malformed as exc:
            return Verdict(False, f"malformed transaction: {exc}", None, {})
        form = parent.clearing.mark_form_refusal
        for i, tx in enumerate(txs):  # (what the rules refuse whatever the signatures: before them)
            refusal = form(tx.fields[0], tx.fields[4], tx.signers) if tx.op == ctx.MARK else ""
            if refusal:
                return Verdict(False, f"invalid transaction: transaction {i}: {refusal}", None, {})
        skip = self._cached(bodies, sigs, counts) if self.sig_cache and self.mempool else None
        keys, messages, rows = ctx.signature_batch(bodies, txs, counts, skip)
        if not self.verifier.verify_all(keys, messages, sigs[rows], certs):
            return Verdict(False, "a transaction or certificate signature does not verify", None, {})
        t["signatures"] = (time.perf_counter() - start) * 1e3
        mark = time.perf_counter()
        root = self.tx_root(block.txs)
        t["tx_root"] = (time.perf_counter() - mark) * 1e3
        if root != block.tx_root:
            return Verdict(False, "transaction root does not match the header", None, t)
        mark = time.perf_counter()
        try:
            state, margin_s = self._run(parent, txs)
        except Rejected as exc:
            return Verdict(False, f"invalid transaction: {exc}", None, t)
        t["margin"] = margin_s * 1e3
        t["execute"] = (time.perf_counter() - mark) * 1e3 - t["margin"]
        mark = time.perf_counter()
        state.root = state.clearing.state_root(self.verifier.sha256_rows)
        t["state_root"] = (time.perf_counter() - mark) * 1e3
        t["total"] = (time.perf_counter() - start) * 1e3
        if state.root != block.state_root:
            return Verdict(False, "state root does not match the header", None, t)
        state.arrived = began
        return Verdict(True, "", state, t)

    def endorse(self, parent: State, block: Block, state: State, fresh: bool = True, after_mine: bool = True) -> str:
        """Why this validator withholds its vote from a valid proposal ("" to vote: Core asks only
        of a proposal it would vote for): the block carries no mark of an underlying while this
        validator has held one a while that the parent has not reached and that would apply on the
        block's state (mark_watch). fresh: it came as a proposal (Core._endorsed), so its arrival
        is the reference for the next one. after_mine: its certificate holds this validator's vote
        or timeout, sent after the reference (else nothing tells when the leader built it, and
        nothing is demanded). Never raises: a failure votes."""
        watch = self.marks_seen
        since = watch.last_handled
        if fresh:
            watch.last_handled = max(since, state.arrived)
        if not after_mine:
            return ""
        try:
            for underlying, marks in watch.demanded(self.mempool, parent.clearing, since - watch.grace_s).items():
                was, now = parent.clearing.marks.get(underlying), state.clearing.marks.get(underlying)
                if now is not None and (was is None or now.sequence > was.sequence):
                    continue  # it carries one (maybe one this validator missed, older than those it holds)
                for tx, held in marks:
                    try:
                        self._run(state, [tx])
                    except Rejected:
                        continue  # no block could apply it there: not the proposer's to carry
                    return (f"the block carries no {underlying} mark; this validator has held mark "
                            f"{tx.fields[2]} (after the parent's {was.sequence if was is not None else 'none'}) "
                            f"for {held:.2f} s")
        except Exception:
            log.exception("clearing: checking a proposal's marks failed; voting for it")
        return ""

    def _fill(self, parent: State, candidates: list, held_back: set[bytes], only_safe: bool,
              free: int = 0) -> _Fill:
        """Candidates applied in order with deferred margin, leaving out those a rule refuses and
        those signed by a held-back account (only_safe: every trade and withdrawal, which no mark
        can then catch), but for the first `free` candidates, which are never held back (the
        registrations, leading deposits and marks _marks_first puts first). A mark that would
        liquidate a book touched earlier is left out too, its short accounts noted."""
        return self._apply_fill(parent.clearing, True, self.max_txs, candidates, held_back, only_safe, free)

    def _apply_fill(self, start: Clearing, new_block: bool, limit: int, candidates: list, held_back: set[bytes],
                    only_safe: bool, free: int = 0) -> _Fill:
        """_fill on top of start (new_block: a block begins there; else the block goes on from a
        fill of it), keeping at most limit transactions. Candidates a _Candidates lists later are
        drawn as the fill reaches them, at most what the block has room for at a time."""
        state = start.snapshot()
        state.defer = True
        if new_block:
            state.begin_block()
        state.safe_keys = self._safe_keys  # registrations admitted with their keys checked: not checked again
        out = _Fill(state, [], {}, {}, None)
        filtering = bool(held_back) or only_safe  # else nothing is skipped: runs are cut without looking at each

        def skipped(pos: int) -> bool:
            tx = candidates[pos][1].tx
            if pos < free:
                return False
            return bool(held_back.intersection(tx.signers)) or (only_safe and tx.op in (ctx.TRADE, ctx.WITHDRAW, ctx.TOP_UP))

        def last(accounts) -> dict[bytes, int]:
            """Per account, the position of the last kept transaction it signed (the short path only)."""
            want, found = set(accounts), {}
            for pos in reversed(out.kept):
                for k in want.intersection(candidates[pos][1].tx.signers):
                    found.setdefault(k, pos)
                if len(found) == len(want):
                    break
            return found

        def one(pos: int) -> bool:
            """Applies candidate pos alone; False if the fill must stop (an internal error)."""
            digest, tx = candidates[pos][0], candidates[pos][1].tx
            try:
                _guarded(ctx.apply, state, tx)
            except ShortBooks as exc:
                out.short.update({k: p for k, p in last(exc.accounts).items() if k not in out.short})
            except _Internal:
                out.broken = pos
                return False
            except Rejected as exc:
                out.refused[digest] = exc
            else:
                out.kept.append(pos)
            return True

        draw = getattr(candidates, "draw", None)

        def there(pos: int, room: int) -> bool:
            """Whether candidate pos (at most the list's end) is listed, drawing room more if not."""
            return pos < len(candidates) or (draw is not None and draw(room) > 0)

        pos = 0
        while len(out.kept) < limit and there(pos, limit - len(out.kept)):
            if filtering and skipped(pos):
                pos += 1
                continue
            if candidates[pos][1].tx.op not in _COLUMNAR:
                if not one(pos):
                    return out
                pos += 1
                continue
            # the run of deposits, withdrawals and trades from here, as many as the block has room
            # for; a registration on the way whose key the run has not named is applied at once
            # and the run goes on (_runs: only marks cut runs)
            run: list[int] = []
            first = len(out.kept)  # out.kept from here: this run's registrations, then the run
            named: set[bytes] = set()
            seen = 0  # run[:seen] is in named
            while len(out.kept) + len(run) < limit and there(pos, limit - len(out.kept) - len(run)):
                if filtering and skipped(pos):
                    pos += 1
                    continue
                tx = candidates[pos][1].tx
                if tx.op in _COLUMNAR:
                    if filtering:
                        run.append(pos)
                        pos += 1
                    else:  # up to the next mark or registration at once
                        end = pos + limit - len(out.kept) - len(run)
                        if draw is not None and end > len(candidates):
                            draw(end - len(candidates))
                        end, stop = min(end, len(candidates)), pos + 1
                        while stop < end and candidates[stop][1].tx.op in _COLUMNAR:
                            stop += 1
                        run += range(pos, stop)
                        pos = stop
                    continue
                if tx.op == ctx.MARK and len(set(tx.signers).intersection(state.oracles)) < state.quorum:
                    # refused by the quorum rule, which depends on no state and changes none, so
                    # the run goes on: such marks need no signature (a mark lists its signers), and
                    # each cut a run, which copies the working set
                    if not one(pos):
                        return out
                    pos += 1
                    continue
                if tx.op != ctx.REGISTER:
                    break
                for p in run[seen:]:
                    named.update(candidates[p][1].tx.signers)
                seen = len(run)
                if tx.signers[0] in named:
                    break
                if not one(pos):
                    return out
                pos += 1
            gaps: dict[int, TooEarly] = {}
            try:
                txs = [candidates[p][1].tx for p in run]
                short = len(run) < MIN_RUN  # (its gaps looked for first: no columnar run for them)
                at_once = not short and _guarded(apply_run, state, txs)
                if run and not at_once:  # declined, or short: without what its nonces refuse
                    gaps = _guarded(_nonce_gaps, state, txs)
                    rest = [p for i, p in enumerate(run) if i not in gaps]
                    columnar = len(rest) >= MIN_RUN or (len(rest) > 1 and state.has_columns)
                    if (gaps or short) and (not rest or columnar and _guarded(
                            apply_run, state, [candidates[p][1].tx for p in rest])):
                        out.refused.update((candidates[run[i]][0], exc) for i, exc in gaps.items())
                        run, at_once = rest, True  # (their refusals apply's: the rest applied)
            except Rejected:  # no rule refuses a whole run (it declines): accel refusing an input
                out.broken = -1  # (ValueError) or a bug, and the state may be half written: propose what is safe
                return out
            if at_once:
                out.kept += run
            else:
                for i, p in enumerate(run):
                    if i in gaps and _refused_for_nonces(state, candidates[p], out.refused):
                        continue
                    if not one(p):
                        out.kept[first:] = sorted(out.kept[first:])
                        return out
            if len(out.kept) > first + 1:  # the block keeps the candidates' order
                out.kept[first:] = sorted(out.kept[first:])
        out.stop = pos
        if not out.short:
            try:
                out.short = last(_guarded(state.end_of_block))
            except Rejected:  # accel refusing the margin call (ValueError) or a bug: no transaction
                out.broken = -1  # to blame, propose what is safe (it raised out of propose before)
        return out

    @_gc_paused()
    def propose(self, parent: State, exclude: set[bytes]) -> tuple[Txs, State]:
        """Mempool transactions that apply on top of parent, up to max_txs, in arrival order, or
        round-robin across accounts when there are more than max_txs of them and an account weighs
        more than 1/FAIR_PART of a block (_fair).
        Refused ones leave the mempool, with their reason in `refused`. If accounts would end the
        block below initial margin (or a mark would liquidate a book they touched), every
        transaction of theirs is held back and the block filled again; what can no longer apply
        leaves the mempool with their last kept and the later half of their margined ones
        (_evict_short), so they cannot hold back the others for good nor cost later blocks their
        whole backlog again. Fills after the first look
        only at the candidates the first one reached, so the room held-back accounts free brings
        in no new account to fall short. After MAX_PASSES fills, the held-back accounts' trading
        partners, theirs and so on are held back too, and the candidates are reordered so that
        every registration, each account's leading deposits and every mark come first, applied
        whatever is held back (_marks_first): the marks then apply on the same state in every such
        fill, accounts linked by no trade fill independently of each other, and a second such fill
        (holding back the first one's short accounts and their partners) finds nobody short. So
        accounts that trade only among themselves keep their place however long a chain of short
        accounts an attacker resubmits, and whatever a pending mark does to the attacker's other
        accounts. If that fill still finds short accounts, or after an internal error, the block
        holds only what no margin check can refuse.
        The candidates are listed only as far as the first fill reaches (_Candidates), and the
        round-robin order alone reads every pending transaction: a proposal's work follows its
        block, not the mempool."""
        self.marks_seen.last_handled = self.marks_seen.clock()
        pool, room = self.mempool, self.max_txs
        self._proposing = (pool.seq, pool.removed)  # (_block: barren if still so and empty)
        skip = set(exclude)  # what no candidate list holds: the excluded, and the marks moved ahead
        listing = pool.items()  # the candidates' order: (digest, Pending) in arrival order
        ordered = True  # (each account's moves in nonce order: _nonce_order, or _fair over it)
        candidates = lazy = _Candidates(_nonce_order((item for item in listing if item[0] not in skip),
                                                     parent.clearing, pool, skip))
        if lazy.draw(room + 1) > room:  # (else the block may take them all: arrival order)
            if pool.heaviest()[0] > room // FAIR_PART:  # (the round-robin order needs them all)
                lazy.draw(len(pool))
                listing = _fair(lazy, parent.clearing, room // max(1, len(pool.count)))
                ordered = False  # (listing, the round-robin order of them all, holds them in nonce order)
                candidates = lazy = _Candidates(item for item in listing if item[0] not in skip)
            if MARKS in pool.count:  # (quorum marks admitted)
                _quorum_marks_ahead(lazy, parent.clearing, room, pool, skip)
        held_back: set[bytes] = set()
        refusing: dict[bytes, str | None] = {}  # the first fills' refusals: evicted or requeued with the block
        first: list = []  # the candidates the first fill drew, when some were left past its reach
        reach = 0  # the first fill's reach
        later: list = []  # the candidates in nonce order past what the first fill drew (order)
        free = 0  # the lead of the candidates no account holds back (the last fills: _marks_first)
        for attempt in range(MAX_PASSES + 3):
            if attempt == MAX_PASSES:  # the last resort: marks on a state nothing held back changes
                if not attempt:  # (no fill before it to reach a part: it reorders them all)
                    lazy.draw(len(pool))
                candidates, free = _marks_first(candidates)
            if attempt >= MAX_PASSES:  # chains of short accounts: hold back whoever trades with them
                held_back = _trading_partners(candidates, held_back)
            lead = {"free": free} if free else {}  # (the first fills' calls as they always were)
            fill = self._fill(parent, candidates, held_back, only_safe=attempt == MAX_PASSES + 2, **lead)
            if attempt == 0:  # (drawn before anything leaves the mempool, and no more: listing reads it)
                if fill.stop is None:  # an internal error: the next fills look at every candidate
                    lazy.draw(len(pool))
                elif len(candidates) > fill.stop or lazy.draw(1):
                    first, reach = list(candidates), fill.stop
                    if ordered and (fill.short or fill.broken is not None):
                        # (the rest of the nonce order, for a block going on past held-back
                        # accounts, before anything leaves the mempool: its order is the pool's now)
                        later = list(lazy.more) if lazy.more is not None else []
                lazy.more = None
                refusing = self._early(fill.refused)
            if attempt in (0, MAX_PASSES) and fill.stop is not None:
                candidates = candidates[:fill.stop]  # room that held-back accounts free brings in nobody new
            if fill.broken is None and not fill.short:
                break
            held_back.update(fill.short)
            self._evict_short(candidates, fill.kept, fill.short)
            if fill.broken is not None and fill.broken >= 0:
                self._evict({candidates[fill.broken][0]: "internal error while applying it (logged)"})
                candidates.pop(fill.broken)
                free -= fill.broken < free
            elif fill.broken is not None:
                held_back = {k for _, p in candidates for k in p.tx.signers}
        else:  # still short or broken after the last fill: an empty block
            fill = self._fill(parent, [], set(), only_safe=True)
        kept = [candidates[p][1] for p in fill.kept]
        if fill.short or fill.broken is not None or len(kept) >= self.max_txs or not first:
            return self._block(fill.state, kept, refusing)
        # Room left, because held-back accounts' transactions filled the first fill's reach: the
        # block goes on with the candidates past it whose signers signed nothing before nor were
        # held back (registrations too, so a new account's deposits are not refused; no mark:
        # what came before stays margined as it was). Those found short are
        # held back with their trading partners once, the second try looking only at what the
        # first reached (accounts linked by no trade change nothing of each other's); if that
        # too finds one short, the block stays as it was.
        signed = held_back.union(*(p.tx.signers for p in kept))
        seen = {digest for digest, _ in first}  # the rest of the tail: listed again, what is still pending
        rest = (c for c in (later if ordered else listing) if c[0] not in skip and c[0] not in seen)
        tail = itertools.chain(first[reach:], rest)
        more = _Candidates(c for c in tail if c[0] in pool and c[1].tx.op != ctx.MARK
                           and signed.isdisjoint(c[1].tx.signers))
        out: set[bytes] = set()
        for attempt in range(2):
            ext = self._apply_fill(fill.state, False, self.max_txs - len(kept), more, out, False)
            if attempt == 0:
                refusing.update(self._early(ext.refused))
                if ext.stop is not None:
                    more = more[:ext.stop]
            if ext.broken is None and not ext.short:
                return self._block(ext.state, kept + [more[p][1] for p in ext.kept], refusing)
            self._evict_short(more, ext.kept, ext.short)
            if ext.broken is not None:
                break
            out = _trading_partners(more, out | set(ext.short))
        return self._block(fill.state, kept, refusing)

    def _block(self, state: Clearing, kept: list, refusing: dict[bytes, str | None]) -> tuple[Txs, State]:
        """The proposal of the transactions kept, with the state they lead to. What the fills
        refused (refusing: digest -> reason) leaves the mempool now, but for what the block keeps:
        a later fill, a held-back account changing whom a mark's auto-deleveraging closed against,
        applied a transaction the first had refused, and the proposer reported refused, and lost
        from its mempool, a transaction its own block carried (review s18). What they refused as
        too early and _early keeps waiting (reason None) goes to the end of the mempool's order
        (Mempool.requeue), unless the proposal reached what it waits for (_stays)."""
        mine = {id(p) for p in kept}
        pool = self.mempool
        left = {d: r for d, r in refusing.items() if (p := pool.get(d)) is None or id(p) not in mine}
        self._evict({d: r for d, r in left.items() if r is not None})
        waiting = {d for d, r in left.items() if r is None and d in pool}
        pool.requeue([d for d in left if d in waiting and not _stays(state, pool[d].tx, pool, waiting)])  # (in order)
        state.defer = False
        vars(state).pop("safe_keys", None)  # (the app's keys: not kept with the state)
        now = (self.mempool.seq, self.mempool.removed)
        self.barren = now if not kept and now == self._proposing else None
        bodies = [p.body for p in kept]
        # every mempool signature is 64 bytes (checked on admission): joined, not checked again
        sigs = b"".join([p.joined for p in kept])
        txs = (Txs(Packed(*pack_messages(bodies)), np.frombuffer(bytearray(sigs), np.uint8).reshape(-1, 64))
               if bodies else Txs.empty())
        return txs, State(state, state.state_root(self.verifier.sha256_rows))

    def _evict_short(self, candidates: list, kept: list, short: dict) -> None:
        """Short accounts' transactions leave the mempool: for each, its last transaction kept
        in the fill (at short[account]), the later half of the transactions it signed there from
        its first trade or withdrawal on (its leading deposits stay; they cannot make it short),
        and then every mempool transaction of it from the first of those nonces on, which can no
        longer apply in nonce order. Only the last one left before, so an account sending N
        transactions that leave it short had N-1, N-2, ... of them applied again in the first
        fill of each of the next N blocks; now each round halves them (about 2N applications in
        all). Nothing is remembered against the account: a transaction sent again is admitted
        and proposed like any other."""
        reasons: dict[bytes, str] = {}
        cut: dict[bytes, int] = {}  # account -> its first nonce evicted
        # one pass over the kept transactions for all short accounts (one pass each made S short
        # accounts of a K-transaction fill cost S x K / 2 steps): per account, the positions it
        # signed up to its last kept one, from its first trade or withdrawal on (kept is in order)
        signed: dict[bytes, list[int]] = {}
        for pos in kept:
            tx = candidates[pos][1].tx
            for k in tx.signers:
                last = short.get(k)
                if last is not None and pos <= last and (k in signed or tx.op != ctx.DEPOSIT):
                    signed.setdefault(k, []).append(pos)
        for k, last in short.items():
            why = f"left account {k.hex()[:16]} below initial margin"
            mine = signed.get(k, [])
            if not mine or mine[-1] != last:
                mine.append(last)
            for pos in mine[len(mine) - max(1, len(mine) // 2):]:
                reasons[candidates[pos][0]] = why
                n = dict(ctx.consumed(candidates[pos][1].tx)[0]).get(k)
                if n is not None:
                    cut[k] = min(cut.get(k, n), n)
        pool = self.mempool
        for k, first in cut.items():  # (from the account's pending nonces: a mempool scan took 10 ms at 100,000)
            why = f"follows a transaction of account {k.hex()[:16]} that left it below initial margin"
            for n in sorted(n for n in pool.held.get(k, ()) if n >= first):
                for digest in sorted(pool.holders[k, n]):
                    reasons.setdefault(digest, why)
        self._evict(reasons)

    def _early(self, refused: dict[bytes, Rejected]) -> dict[bytes, str | None]:
        """refused (digest -> the Rejected), each with its reason to evict it, or None for those
        refused only for coming too early (TooEarly), which stay pending for a later block.
        Early: "not registered" while the key's registration is pending, or a nonce past the
        account's next one while every nonce between is pending. Transactions arrive out of
        order (a key's deposit ahead of its registration in one submission, a client's nonces
        over two connections or relayed) and their chain still applies, so evicting them loses
        them. One kept is tried again while what it waits for is pending: that applies, and it
        with it, or is refused and evicted, and it after it. It goes to the end of the mempool's
        order (_block), behind what it waits for: one sent ahead of its account's missing nonce
        was looked at again by every proposal while a backlog kept that nonce out of the blocks.

        What it waits for must lead to something this fill did not refuse (a nonce pair, or a
        registration, held by a transaction that applied, was not reached or was held back) or
        to one kept here: a pair whose every holder is refused and not kept is a gap. So two
        accounts' trades waiting on each other ((A, a), (B, b + 1) and (A, a + 1), (B, b)) are
        not kept for ever, retried by every proposal. Kept ones are found in EARLY_ROUNDS passes
        over the waiting ones, each account's in nonce order; what is still undecided is evicted
        with its reason (its client sends it again).

        Each pair is looked at about once: `jump` skips runs of pairs found good (with path
        compression), since k far nonces of an account interleaved with k that apply would
        otherwise walk k^2 pairs (4,000 of each: 3 s of a proposal)."""
        out, pool = {}, self.mempool
        nonces = pool.nonces
        dropped: dict[tuple, int] = {}  # (account, nonce) -> refused transactions consuming it
        made: set[tuple] = set()  # pairs consumed by a transaction kept here
        waiting: list = []  # (account, nonce, expected, digest, its pairs)
        for digest, exc in refused.items():
            held = pool.get(digest)
            if held is None:
                out[digest] = str(exc)
                continue
            pairs = ctx.consumed(held.tx)[0]
            for pair in pairs:
                dropped[pair] = dropped.get(pair, 0) + 1
            if not isinstance(exc, TooEarly) or exc.account not in held.tx.signers:
                out[digest] = str(exc)
            elif exc.nonce is None:
                registration = hashlib.sha256(ctx.register(exc.account, self.chain_id)).digest()
                if registration not in pool or registration in refused:
                    out[digest] = str(exc)
                else:  # kept: the nonces it holds are not a gap (a trade's other account waits on it)
                    made.update(pairs)
                    out[digest] = None
            else:
                waiting.append((exc.account, exc.nonce, exc.expected, digest, pairs))
        if not waiting:
            return out
        jump: dict[tuple, int] = {}  # (account, m) -> some m' > m with every pair in [m, m') good

        def reach(account: bytes, m: int, limit: int) -> int:
            path = []
            while m < limit:
                j = jump.get((account, m))
                if j is None:
                    pair = (account, m)
                    if pair not in made and nonces.get(pair, 0) <= dropped.get(pair, 0):
                        break
                    j = m + 1
                path.append(m)
                m = j
            for p in path:
                jump[account, p] = m
            return m

        waiting.sort(key=operator.itemgetter(0, 1))
        for _ in range(EARLY_ROUNDS):
            left = []
            run = (None, 0, 0)  # (account, lo, hi): every pair of account in [lo, hi) found good
            for w in waiting:
                account, nonce, expected = w[0], w[1], w[2]
                if not (account == run[0] and run[1] <= expected and nonce <= run[2]):
                    run = (account, expected, reach(account, expected, nonce))
                if run[2] >= nonce:  # (a chain of an account's far nonces: one reach, not one each)
                    made.update(w[4])
                    out[w[3]] = None
                    if run[2] == nonce:
                        run = (account, run[1], nonce + 1)
                else:
                    left.append(w)
            if len(left) == len(waiting):
                break
            waiting = left
        for w in waiting:
            out[w[3]] = str(refused[w[3]])
        return {d: out[d] for d in refused}  # (in the fills' order: the waiting ones requeued in it)

    def _evict(self, reasons: dict[bytes, str]) -> None:
        """Refused transactions leave the mempool; the latest REFUSALS_KEPT reasons are kept, a
        transaction refused again counting as the latest (its old place was trimmed first, and
        /tx said "unknown" moments after the refusal). The oldest go in one pass: one at a time,
        each from a fresh iterator over the slots the earlier ones freed, a commit that made
        100,000 transactions stale took 3.6 s (review s15)."""
        refused = self.refused
        for digest, reason in reasons.items():
            self.mempool.pop(digest, None)
            refused.pop(digest, None)
            refused[digest] = reason
        for digest in list(itertools.islice(refused, max(0, len(refused) - REFUSALS_KEPT))):
            del refused[digest]

    def committed(self, block: Block, state: State) -> None:
        """block committed, with state its state: drop its transactions from the mempool, and
        those it made stale, their reasons kept as a refusal's (also after a restart from a
        snapshot: staleness reads the state).
        Only a block's transactions use up nonces, keys and mark sequences, so after the block
        that follows head only the transactions sharing a nonce or an underlying with it are
        looked at (Mempool.holders): the work scales with the block, not the mempool (a
        whole-mempool scan took 67 ms a commit at 100,000 pending). Any other block (the first,
        a snapshot's, or after the mempool was assigned whole) is checked against all."""
        follows = self.head_id is not None and block.parent == self.head_id
        self.head, self.head_id = state.clearing, block.id
        if len(block.txs):  # (what the last proposal could not apply may apply now)
            self.barren = None
        mempool, used = self.mempool, set()
        for i in range(len(block.txs)):
            body = block.txs.bodies.item(i)
            held = mempool.pop(hashlib.sha256(body).digest(), None)
            if follows:
                used |= _touches(held.tx if held is not None else ctx.decode(body, self.chain_id))
        look = (((h, mempool[h]) for h in set().union(*(mempool.holders.get(item, ()) for item in used)))
                if follows else mempool.items())
        # with their reasons: /tx answered "unknown" for a transaction this validator had admitted
        # (review s15), as for one never sent to it
        self._evict({h: why for h, p in look if (why := self._stale(p.tx))})
        self.marks_seen.prune(mempool)

