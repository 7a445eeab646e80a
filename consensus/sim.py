"""An in-process simulated network for the consensus core: seeded, with per-link delays, drops,
duplicates, reordering (random delays), partitions that heal, crashed validators and Twins
(two cores sharing one validator's key). Time is simulated; every message crosses the real wire
encoding, and a frame that does not decode is dropped and counted.

Each link carries what net.Network would (`limits`, net.Limits' defaults): a receiver reads at most
inbound_frames_per_s frames and inbound_bytes_per_s bytes a second of one sender (a second's worth
at once), and a frame that would wait behind more than queue_frames frames or queue_bytes bytes of
its sender's is dropped (`overflow`), as a real sender's full queue drops it. Honest traffic is far
below these bounds and is delivered exactly as without them; a Byzantine flood is paced and shed,
so the simulation's event queue stays bounded as a real node's memory does (two validators
replaying each other's floods grew it fivefold every 10 ms of simulated time)."""
from __future__ import annotations

import heapq
import random
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable

from nacl.signing import SigningKey

from . import messages, snapshots, statesync
from .apps.kv import KvApp, transfer_body
from .core import Broadcast, Committed, Config, Core, Persist, ProposeTimer, Rejected, Send, SetTimer
from .inbox import FairInbox
from .messages import BlockRequest, SnapshotRequest, Vote
from .net import ANSWER_TYPES, Limits
from .node import ANSWER_BACKLOG, REQUEST_BACKLOG, request_admitted
from .store import Store
from .verify import Verifier


@dataclass
class Link:
    delay_ms: tuple[float, float] = (1.0, 10.0)  # uniform one-way delay
    drop: float = 0.0
    duplicate: float = 0.0


@dataclass
class Node:
    index: int          # validator index (twins share one)
    core: Core
    name: str
    committed: list = field(default_factory=list)  # (block, time committed, validation ms)
    rejected: list = field(default_factory=list)
    store: Store | None = None
    busy_until: float = 0.0
    snapshot_every: int = 0  # with a store: a state snapshot every this many committed blocks (0: none)
    committed_txs: int = 0   # transactions committed up to the core's committed block
    sync: statesync.StateSync | None = None  # while it takes a snapshot from its peers
    inbox: FairInbox = field(default_factory=FairInbox)  # compute: what waits while its core is busy
    serving: bool = False  # compute: a "serve" event (its core takes the next of its inbox) is due


class Simulation:
    def __init__(self, n: int = 4, seed: int = 0, link: Link | None = None, txs_per_block: int = 20,
                 validation: str = "accel", base_timeout_ms: float = 200.0, app: str = "kv", backend=None,
                 make_core: Callable[..., Core] = Core, compute: bool = False, limits: Limits = Limits(),
                 chain_id: int = 1, empty_block_interval_ms: float = 0.0):
        """compute: charge each validator the real time its core takes to handle an event (it is
        busy meanwhile, what reaches it waits in an inbox served as the node's, consensus/inbox.py,
        and what it sends leaves after), so validation shows in time to finality; off,
        only network delays pass and runs are exactly reproducible. limits: the transport's
        per-sender read rates and queue bounds each link applies (see the module's docstring).
        chain_id: in the network id only (messages.network_id). empty_block_interval_ms: how long
        a leader with nothing to propose waits (Config; 0: it proposes at once)."""
        self.rng = random.Random(seed)
        self.link = link or Link()
        self.keys = [SigningKey(bytes([i + 1]) * 32) for i in range(n)]
        self.clients = [SigningKey(self.rng.randbytes(32)) for _ in range(8)]
        self.app = app
        genesis = {bytes(c.verify_key): 10**12 for c in self.clients} if app == "kv" else None
        self.txs_per_block = txs_per_block
        self.verifier = Verifier(validation, backend)
        # the network id, as node.py derives it: every consensus signature of this simulation
        # covers it, so another simulation with the same validator keys but another genesis (kv:
        # another seed) or chain id is another network, whose votes and proofs never verify here
        keys = tuple(bytes(k.verify_key) for k in self.keys)
        self.network = messages.network_id(chain_id, self._make_app(genesis).genesis.root, keys)
        self.cfg = [Config(i, keys, base_timeout_ms, network=self.network,
                           empty_block_interval_ms=empty_block_interval_ms) for i in range(n)]
        self.make_core = make_core
        self.nodes: list[Node] = []
        for i in range(n):
            self.add_node(i, f"v{i}", genesis)
        self.genesis = genesis
        self.crashed: set[str] = set()
        self.partitions: list[tuple[float, float, list[set[str]]]] = []
        self.queue: list = []
        self.now = 0.0
        self._seq = 0
        self.undecodable = 0
        self.persisted: dict[str, object] = {}
        self.votes_signed: dict[tuple[int, int], set] = {}  # (validator, view) -> blocks it voted for
        self.restarts: dict[str, float] = {}
        self.compute = compute
        self.proposed_at: dict[bytes, float] = {}
        self.proposed_by: dict[str, dict[int, bytes]] = {}  # node name -> view -> block it proposed
        self._nonces = [0] * len(self.clients)
        # slow_link: validator name -> bytes a millisecond each link into it carries; the frames
        # queued for it by each sender, (time the last byte leaves, bytes, is an answer)
        self.bandwidth: dict[str, float] = {}
        self.stalled: dict[str, float] = {}  # validator name -> until when its links carry nothing
        self.outq: dict[tuple[str, str], deque] = {}
        self.backlog = (ANSWER_BACKLOG, REQUEST_BACKLOG, messages.MAX_MESSAGE)  # answers, all, queue bound
        self.overflow = 0  # frames not queued: the outgoing queue to a slow link (or a paced one) was full
        self.limits = limits
        # (sender, receiver) -> [bytes budget, frames budget, time, when the next frame can be
        # read, the read times and sizes of the frames not yet read, their bytes] (see _paced)
        self.links: dict[tuple[str, str], list] = {}

    def add_node(self, index: int, name: str, genesis: dict) -> Node:
        key = self.keys[index]
        app = self._make_app(genesis)
        node = Node(index, self.make_core(self.cfg[index], lambda m, k=key: k.sign(m).signature, app), name)
        self.nodes.append(node)
        return node

    def _make_app(self, genesis):
        if self.app == "kv":
            return KvApp(self.verifier, genesis, max_txs=self.txs_per_block)
        from .apps.clearing_app import ClearingApp
        from .apps.clearing_load import genesis_market
        return ClearingApp(self.verifier, genesis_market(self.verifier.backend), max_txs=self.txs_per_block,
                           clock=lambda: self.now / 1000.0)

    # ---- load ---------------------------------------------------------------------------------
    def load(self, count: int) -> None:
        """Signed transactions given to every validator's mempool: transfers between the client
        accounts (kv), or a clearing market's registrations, deposits, oracle marks and trades."""
        if self.app != "kv":
            from .apps.clearing_load import ClearingLoad
            if not hasattr(self, "_clearing_load"):
                self._clearing_load = ClearingLoad(self.rng.randrange(1 << 30))
            batch = self._clearing_load.take(count)
            for node in self.nodes:
                refused = [r for r in node.core.app.submit_many(batch) if r]
                if refused:
                    raise RuntimeError(f"the clearing load made a transaction the mempool refuses: {refused[0]}")
            self._admitted_txs()
            return
        batch = []
        for _ in range(count):
            c = self.rng.randrange(len(self.clients))
            to = bytes(self.clients[(c + 1) % len(self.clients)].verify_key)
            body = transfer_body(bytes(self.clients[c].verify_key), self._nonces[c], to, 1)
            self._nonces[c] += 1
            batch.append((body, [self.clients[c].sign(body).signature]))
        for node in self.nodes:
            node.core.app.submit_many(batch)
        self._admitted_txs()

    def _admitted_txs(self) -> None:
        """Each running validator's core told of the transactions its mempool took (Core.on_txs: a
        leader waiting with nothing to propose proposes now)."""
        for node in self.nodes:
            if node.name not in self.crashed and node.sync is None:
                self._apply(node, node.core.on_txs())

    # ---- scheduling ---------------------------------------------------------------------------
    def _push(self, at: float, what: tuple) -> None:
        self._seq += 1
        heapq.heappush(self.queue, (at, self._seq, what))

    def _blocked(self, src: str, dst: str) -> bool:
        for start, end, groups in self.partitions:
            if start <= self.now < end and not any(src in g and dst in g for g in groups):
                return True
        return False

    def _deliver(self, src: Node, to_index: int, msg) -> None:
        frame = messages.encode(msg)
        for dst in self.nodes:
            if dst.index != to_index or dst is src:
                continue
            if self._blocked(src.name, dst.name) or self.rng.random() < self.link.drop:
                continue
            copies = 2 if self.rng.random() < self.link.duplicate else 1
            for _ in range(copies):
                leaves = self._queue(src.name, dst.name, frame) if dst.name in self.bandwidth else self.now
                if leaves is not None:
                    read = self._paced(src.name, dst.name, leaves + self.rng.uniform(*self.link.delay_ms), len(frame))
                    if read is not None:
                        self._push(read, ("msg", dst.name, src.index, frame))

    def _paced(self, src: str, dst: str, arrives: float, size: int) -> float | None:
        """When dst reads a frame of `size` bytes from src that reaches it at `arrives` (None: the
        sender's queue for dst is full and the frame is dropped): net.Network._charge's token
        buckets, one second's worth each, charged after a frame is read; a receiver in debt reads
        the sender's next frame once the debt is paid. Frames not yet read count against the
        sender's queue_frames and queue_bytes, as the frames TCP's push-back holds in a real
        sender's queue do (an empty queue always takes one)."""
        lim = self.limits
        fps, bps = lim.inbound_frames_per_s / 1000.0, lim.inbound_bytes_per_s / 1000.0  # per ms
        link = self.links.get((src, dst))
        if link is None:
            link = self.links[src, dst] = [lim.inbound_bytes_per_s, lim.inbound_frames_per_s, arrives, arrives,
                                           deque(), 0]
        waiting = link[4]
        while waiting and waiting[0][0] <= self.now:
            link[5] -= waiting.popleft()[1]
        if waiting and (len(waiting) >= lim.queue_frames or link[5] + size > lim.queue_bytes):
            self.overflow += 1
            return None
        read = max(arrives, link[3])
        elapsed = max(0.0, read - link[2])
        link[0] = min(lim.inbound_bytes_per_s, link[0] + elapsed * bps) - size
        link[1] = min(lim.inbound_frames_per_s, link[1] + elapsed * fps) - 1
        link[2] = read
        link[3] = read + max(0.0, -link[0] / bps, -link[1] / fps)
        if read > self.now:
            waiting.append((read, size))
            link[5] += size
        return read

    def slow_link(self, name: str, bytes_per_ms: float, stalled_until_ms: float = 0.0,
                  answer_backlog: int = ANSWER_BACKLOG, request_backlog: int = REQUEST_BACKLOG,
                  queue_bytes: int = messages.MAX_MESSAGE) -> None:
        """Each link into validator `name` carries bytes_per_ms, and nothing before stalled_until_ms
        (a connection that hangs, then comes back): a sender's frames to it wait in
        a queue of at most queue_bytes (net.Network's; a full one drops them), and the validators
        serve its block and snapshot requests as a node does (node.request_admitted: answer_backlog
        bytes of answers or request_backlog of anything queued for it drop them). The bounds
        default to the node's; a test with small blocks scales them down with its blocks."""
        self.bandwidth[name], self.stalled[name] = bytes_per_ms, stalled_until_ms
        self.backlog = (answer_backlog, request_backlog, queue_bytes)

    def _queued(self, src: str, dst: str) -> deque:
        q = self.outq.setdefault((src, dst), deque())
        while q and q[0][0] <= self.now:
            q.popleft()
        return q

    def _queue(self, src: str, dst: str, frame: bytes) -> float | None:
        """When the last byte of `frame` leaves src's queue for dst (None: the queue is full)."""
        q = self._queued(src, dst)
        queued = sum(size for _, size, _ in q)
        if queued and queued + len(frame) > self.backlog[2]:
            self.overflow += 1
            return None
        leaves = max(self.now, self.stalled[dst], q[-1][0] if q else 0.0) + len(frame) / self.bandwidth[dst]
        q.append((leaves, len(frame), frame[5] in ANSWER_TYPES))
        return leaves

    def _admitted(self, node: Node, sender: int) -> bool:
        """Whether `node` serves a block or snapshot request of `sender` (see slow_link)."""
        for peer in self.nodes:
            if peer.index == sender and peer.name in self.bandwidth:
                q = self._queued(node.name, peer.name)
                if not request_admitted(sum(size for _, size, _ in q), sum(size for _, size, a in q if a),
                                        *self.backlog[:2]):
                    return False
        return True

    def _apply(self, node: Node, actions: list) -> None:
        due = False
        for a in actions:
            if isinstance(a, Persist):
                self.persisted[node.name] = a.safety
                if node.store is not None:
                    node.store.save_safety(a.safety)
            elif isinstance(a, Send):
                if isinstance(a.msg, Vote):
                    self.votes_signed.setdefault((node.index, a.msg.view), set()).add(a.msg.block_id)
                self._deliver(node, a.to, a.msg)
            elif isinstance(a, Broadcast):
                if isinstance(a.msg, messages.Proposal):
                    self.proposed_at.setdefault(a.msg.block.id, self.now)
                    self.proposed_by.setdefault(node.name, {})[a.msg.block.view] = a.msg.block.id
                for i in range(len(self.keys)):
                    if i != node.index or any(o.index == i and o is not node for o in self.nodes):
                        self._deliver(node, i, a.msg)
            elif isinstance(a, SetTimer):
                self._push(self.now + a.delay_ms, ("timer", node.name, a.view))
            elif isinstance(a, ProposeTimer):
                self._push(self.now + a.delay_ms, ("propose", node.name, a.view))
            elif isinstance(a, Committed):
                node.committed.append((a.block, self.now, a.validation_ms))
                node.committed_txs += len(a.block.txs)
                if node.store is not None:
                    node.store.add_committed(a.proposal)
                    due = due or snapshots.due(a.block.height, node.snapshot_every, node.index, len(self.keys))
            elif isinstance(a, Rejected):
                node.rejected.append(a)
        if due:  # the newest committed block's state (earlier ones of one commit are pruned already)
            b = node.core.committed
            snapshots.take(node.store, node.core.app, b, node.core.states[b.id], node.committed_txs)

    def inject(self, at_ms: float, to: str, sender: int, msg) -> None:
        """Deliver `msg` to validator `to` at at_ms as if validator `sender` had sent it (the sender
        index is unauthenticated on the wire): a Byzantine peer's or a stranger's frame. It crosses
        the wire encoding like any other message."""
        self._push(at_ms, ("msg", to, sender, messages.encode(msg)))

    def at(self, at_ms: float, fn: Callable[["Simulation"], None]) -> None:
        """Call fn(sim) at simulated time at_ms (an adversary acting on what the run has reached)."""
        self._push(at_ms, ("call", "", fn))

    def durable(self, name: str, path, snapshot_every: int = 0) -> None:
        """Give a validator a store (before run()), so it can be killed and restarted; its core
        then serves committed blocks from it and prunes them from memory. snapshot_every: a state
        snapshot every this many committed blocks, which a restart starts from."""
        node = self._node(name)
        node.store, node.snapshot_every = Store(path, clock=lambda: self.now / 1000.0), snapshot_every
        node.core.committed_source = node.store.committed_range
        node.core.snapshot_source = lambda height, chunk: statesync.serve(node.store, height, chunk)

    def kill(self, name: str, at_ms: float, restart_ms: float) -> None:
        """Crash a validator at at_ms (its memory is lost) and start it again from its store."""
        self._push(at_ms, ("kill", name))
        self._push(restart_ms, ("restart", name))

    def _restart(self, node: Node) -> None:
        app = self._make_app(self.genesis)
        # the load the lost mempool had (committed ones are dropped on replay): (body, signature
        # or signatures, ...) of either app, admitted in one batch
        app.submit_many([(p[0], p[1] if isinstance(p[1], list) else [p[1]])
                         for other in self.nodes if other is not node for p in other.core.app.mempool.values()])
        key = self.keys[node.index]
        start = snapshots.load(node.store, app)
        node.core = self.make_core(self.cfg[node.index], lambda m, k=key: k.sign(m).signature, app,
                                   node.store.safety(), start.history, node.store.committed_range, start.base)
        node.core.snapshot_source = lambda height, chunk: statesync.serve(node.store, height, chunk)
        node.committed_txs = start.txs + sum(len(p.block.txs) for p in start.history)
        self._apply(node, node.core.start())

    def state_sync(self, name: str, path, at_ms: float) -> None:
        """A validator down from the start joins at at_ms with an empty store at path: it takes a
        peer's snapshot (statesync.StateSync), then fetches the blocks after it."""
        self.crashed.add(name)
        self._push(at_ms, ("sync", name))
        self._node(name).store = Store(path, clock=lambda: self.now / 1000.0)

    def _synced(self, node: Node) -> None:
        """The snapshot is in: the validator's core starts from it."""
        done, app = statesync.bounded(node.sync.done, self.txs_per_block), node.sync.app
        node.sync = None
        # the safety state its store held (votes from before any commit: its last voted view
        # stays, as the node's does), else the unstarted core's (nothing voted)
        stored = node.store.safety()
        safety = replace(stored if stored is not None else node.core.safety, blocks=())
        base = statesync.begin(node.store, done, safety)
        key = self.keys[node.index]
        node.core = self.make_core(self.cfg[node.index], lambda m, k=key: k.sign(m).signature, app, safety, done.after,
                                   node.store.committed_range, base)
        node.core.snapshot_source = lambda height, chunk: statesync.serve(node.store, height, chunk)
        node.committed_txs = done.txs + sum(len(p.block.txs) for p in done.after)
        self._apply(node, node.core.start())

    def _node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    # ---- running ------------------------------------------------------------------------------
    def run(self, blocks: int, max_ms: float = 120_000.0, live: Callable[[Node], bool] | None = None) -> None:
        """Until every live validator committed `blocks` blocks, or max_ms of simulated time."""
        live = live or (lambda node: node.name not in self.crashed)
        for node in self.nodes:
            if node.name not in self.crashed:
                self._apply(node, node.core.start())
        while self.queue and self.now < max_ms:
            if all(len(n.committed) >= blocks for n in self.nodes if live(n)):
                return
            at, _, (kind, name, *rest) = heapq.heappop(self.queue)
            self.now = at
            if kind == "call":
                rest[0](self)
                continue
            if kind == "kill":
                self.crashed.add(name)
                self._node(name).inbox = FairInbox()  # what waited for its core is lost with it
                continue
            if kind == "restart":
                self.crashed.discard(name)
                self._restart(self._node(name))
                continue
            if kind == "sync":
                self.crashed.discard(name)
                node = self._node(name)
                node.sync = statesync.StateSync(self.cfg[node.index], self._make_app(self.genesis),
                                                 clock=lambda: self.now, probe=True)
                self._apply(node, node.sync.start())
                continue
            if name in self.crashed:
                if kind == "serve":
                    self._node(name).serving = False
                continue
            node = self._node(name)
            if not self.compute:
                self._event(node, at, kind, rest)
                continue
            # a busy validator's inbox is node.NodeRunner's: its peers' messages one per peer in
            # turn, timers after what came before them (a FIFO held every honest vote behind a Byzantine peer's flood)
            if kind != "serve":
                node.inbox.put((kind, *rest), rest[0] if kind == "msg" else None)
                if not node.serving:
                    node.serving = True
                    self._push(max(at, node.busy_until), ("serve", name))
                continue
            if node.inbox.qsize():
                kind, *rest = node.inbox.get_nowait()
                self._event(node, at, kind, rest)
            if node.inbox.qsize():
                self._push(max(at, node.busy_until), ("serve", name))
            else:
                node.serving = False

    def _event(self, node: Node, at: float, kind: str, rest) -> None:
        """A timer or message (rest: view, or sender and frame) that reaches `node` at `at`."""
        if node.sync is not None:  # taking a snapshot: only its own messages and timer count
            if kind == "timer" and rest[0] <= statesync.SYNC_TIMER:
                self._apply(node, node.sync.on_timer(rest[0]))
            elif kind == "msg":
                try:
                    self._apply(node, node.sync.handle(rest[0], messages.decode(rest[1])))
                except messages.DecodeError:
                    self.undecodable += 1
            if node.sync.done is not None:
                self._synced(node)
            elif node.sync.from_genesis:  # f or fewer peers offered a snapshot: from the genesis, as node.py does
                node.sync = None
                self._restart(node)
            return
        if kind == "timer":
            work = lambda: node.core.on_timer(rest[0])  # noqa: E731
        elif kind == "propose":
            work = lambda: node.core.on_propose_timer(rest[0])  # noqa: E731
        else:
            sender, frame = rest
            try:
                msg = messages.decode(frame)
            except messages.DecodeError:
                self.undecodable += 1
                return
            if self.bandwidth and isinstance(msg, (BlockRequest, SnapshotRequest)) \
                    and not self._admitted(node, sender):
                node.core.counters["request_backlog"] += 1
                return
            work = lambda: node.core.handle(sender, msg)  # noqa: E731
        if self.compute:
            self.now = max(at, node.busy_until)
            started = time.perf_counter()
            actions = work()
            self.now += (time.perf_counter() - started) * 1e3
            node.busy_until = self.now
        else:
            actions = work()
        self._apply(node, actions)

    def chains(self, nodes=None) -> dict[str, list[bytes]]:
        return {n.name: [b.id for b, _, _ in n.committed] for n in (nodes or self.nodes)}
