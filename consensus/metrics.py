"""A validator's Prometheus metrics (names and labels: docs/OPERATOR.md). One registry per node, not
prometheus_client's global one, so several nodes can live in one process (tests, simulations).
Values that exist elsewhere (mempool size, accel's fallback counts) are read at scrape time rather
than copied on every change."""
from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app
from prometheus_client.core import CounterMetricFamily

from accel import dispatch

from .rpc import client_of, site_of

# Stages run from tens of microseconds (the transaction root of a small block) to seconds (the
# signatures of a large block on the C fallback).
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Fallbacks:
    """accel_gpu_fallbacks_total from accel.dispatch's process-wide counts."""

    def collect(self):
        family = CounterMetricFamily("accel_gpu_fallbacks", "GPU batches that failed and were redone on the C "
                                     "fallback", labels=["backend", "kernel"])
        for (backend, kernel), count in sorted(dispatch.fallbacks().items()):
            family.add_metric([backend, kernel], count)
        yield family


class _Dropped:
    """accel_input_dropped_total from the core's counters (Core.counters: messages and blocks from
    the network dropped or refused, by reason), read at scrape time."""

    def __init__(self, node):
        self.node = node

    def collect(self):
        family = CounterMetricFamily("accel_input_dropped", "Messages from peers the consensus core dropped or "
                                     "refused, by reason (a check they failed; none is this validator's error but "
                                     "propose_error and own_proposal_refused, its own proposal's)",
                                     labels=["reason"])
        core = getattr(self.node, "core", None)
        # dict.copy runs in C under the GIL: no "changed size during iteration" against the
        # consensus thread adding a reason
        for reason, count in sorted(dict.copy(core.counters).items() if core is not None else ()):
            family.add_metric([reason], count)
        yield family


class _Transport:
    """accel_transport_events_total from the transport's counters (consensus/net.py Network), by
    event, read at scrape time: what strangers and peers cost the validator's connections."""
    EVENTS = ("handshake_failures", "handshake_timeouts", "pending_evicted", "peer_connections_replaced",
              "oversized", "dropped", "overflow", "overflow_bytes", "throttled", "unencodable",
              "handshakes_refused", "pending_address_evicted")

    def __init__(self, node):
        self.node = node

    def collect(self):
        family = CounterMetricFamily("accel_transport_events", "Transport events by kind: connections closed for a "
                                     "failed or slow handshake, strangers evicted, frames dropped (undecodable, "
                                     "oversized, a full queue: overflow, overflow_bytes), reads throttled",
                                     labels=["event"])
        net = getattr(self.node, "net", None)
        for event in self.EVENTS if net is not None else ():
            family.add_metric([event], getattr(net, event))
        yield family


class NodeMetrics:
    def __init__(self, app, backend: str, device: str, validation: str):
        self.registry = r = CollectorRegistry()
        self.stages = Histogram("accel_validation_seconds", "Block validation time by stage (total: all of it)",
                                ["stage"], buckets=BUCKETS, registry=r)
        Info("accel_backend", "The accel backend validation runs on", registry=r).info(
            {"backend": backend, "device": device, "validation": validation})
        Gauge("accel_mempool_transactions", "Transactions waiting in the mempool",
              registry=r).set_function(lambda: len(app.mempool))
        self.height = Gauge("accel_committed_height", "Height of the last committed block", registry=r)
        self.rejected = Counter("accel_blocks_rejected", "Proposed blocks this validator rejected", registry=r)
        self.reduce_only = Gauge("accel_clearing_reduce_only", "1 while a circuit breaker holds the underlying's "
                                 "series reduce-only (clearing)", ["underlying"], registry=r)
        self.fund = Gauge("accel_clearing_insurance_quanta", "Insurance fund per asset at the last committed block "
                          "(clearing; 1e-8 units)", ["asset"], registry=r)
        self.snapshot_height = Gauge("accel_snapshot_height", "Height of the last state snapshot written to the "
                                     "store (a restart replays only the blocks after it)", registry=r)
        self.snapshot_bytes = Gauge("accel_snapshot_bytes", "Size of the last state snapshot", registry=r)
        self.snapshot_seconds = Gauge("accel_snapshot_seconds", "Time the last snapshot took to encode and store "
                                      "(the consensus loop waits meanwhile)", registry=r)
        self.timeouts = Counter("accel_view_timeouts", "Views whose timer ran out here before a quorum moved on "
                                "(a leader down or slow: each costs a timeout)", registry=r)
        r.register(_Fallbacks())

    def liveness(self, node) -> None:
        """Gauges read from the node (consensus/node.py NodeRunner) at scrape time."""
        r = self.registry
        window = getattr(node, "peer_window_s", None)  # max(5 s, 5 x base_timeout_ms), node.py
        Gauge("accel_peers_connected", "Other validators heard from in the last "
              + (f"{window:g} seconds (" if window is not None else "") + "5 x base_timeout_ms, and never under five seconds"
              + (")" if window is not None else ""), registry=r).set_function(lambda: len(node.peers_connected()))
        Gauge("accel_seconds_since_commit", "Seconds since this validator last committed a block (since its "
              "start if none)", registry=r).set_function(node.seconds_since_commit)
        Gauge("accel_view", "The consensus view this validator is in", registry=r).set_function(
            lambda: node.core.view if hasattr(node, "core") else 0)
        Gauge("accel_replayed_blocks", "Committed blocks replayed at the start (after the snapshot it began "
              "from)", registry=r).set_function(lambda: node.core.replayed if hasattr(node, "core") else 0)
        r.register(_Dropped(node))
        Gauge("accel_duplicate_index_connections", "Connections proving this validator's own key, or a second "
              "live one proving a peer's (two processes with one key)", registry=r).set_function(
            lambda: node.net.duplicates if hasattr(node, "net") else 0)
        connections = Gauge("accel_connections", "Open connections: strangers not yet authenticated (pending), "
                            "and validators", ["kind"], registry=r)
        connections.labels("pending").set_function(lambda: node.net.pending_connections if hasattr(node, "net") else 0)
        connections.labels("validator").set_function(lambda: node.net.peer_connections if hasattr(node, "net") else 0)
        r.register(_Transport(node))

    def committed_state(self, state) -> None:
        """The clearing ledger's breakers and funds after a committed block (other apps: nothing)."""
        clearing = getattr(state, "clearing", None)
        if clearing is None:
            return
        for und in sorted({s.underlying for s in clearing.series.values()}):
            self.reduce_only.labels(und).set(1 if und in clearing.halted else 0)
        for asset, quanta in clearing.funds.items():
            self.fund.labels(asset).set(quanta)

    def snapshot(self, height: int, size: int, seconds: float) -> None:
        self.snapshot_height.set(height)
        self.snapshot_bytes.set(size)
        self.snapshot_seconds.set(seconds)

    def validated(self, verdict) -> None:
        """A block's validation, accepted or not: each stage it reached (verdict.timings_ms)."""
        for stage, ms in verdict.timings_ms.items():
            self.stages.labels(stage).observe(ms / 1e3)

    def serve(self, listen: tuple[str, int]):
        """HTTP /metrics on its own thread, so a slow scrape never holds up the event loop; any
        other path is a 404 (liveness is the client API's /health). Returns the server
        (shutdown() stops it); OSError if listen cannot be bound."""
        metrics = make_wsgi_app(self.registry)

        def only_metrics(environ, start_response):
            if environ.get("PATH_INFO") != "/metrics":
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"not found: metrics are at /metrics (a validator's health: its client API's /health)\n"]
            return metrics(environ, start_response)
        # wsgiref's server is IPv4 only: an IPv6 address ("::" from `accel testnet --hosts` of
        # IPv6 hosts) stopped the validator at start, "Address family ... not supported"
        server = make_server(listen[0], listen[1], only_metrics, _Server6 if ":" in listen[0] else _Server, _Quiet)
        threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
        return server


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per connection, at most MAX_CONNECTIONS of them (a stranger holding half-sent
    requests kept a thread each, without limit). A connection is cut REQUEST_DEADLINE_S after it
    was accepted, whatever it sends: the socket timeout (_Quiet.timeout) bounds only each silence,
    so a stranger trickling a byte every few seconds into 16 connections held every slot for ever
    and no scrape got through. With every slot taken, a connection from a site (_site) holding
    fewer than the heaviest site less one takes the place of that site's oldest, which is cut;
    else it is closed at once: first come first served, one address reconnecting whenever the
    deadline cut it held the slots and the scraper was refused (the client API's rule,
    Rpc._admit)."""
    daemon_threads = True
    MAX_CONNECTIONS = 16
    REQUEST_DEADLINE_S = 10.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._held: dict[str, list] = {}  # site -> its connections' sockets, oldest first
        self._open = 0

    def process_request(self, request, client_address):
        site = _site_of(client_address)
        with self._lock:
            if self._open >= self.MAX_CONNECTIONS:
                heavy = max(self._held, key=lambda s: len(self._held[s]))
                if len(self._held.get(site, ())) + 1 >= len(self._held[heavy]):
                    self.shutdown_request(request)
                    return
                self._forget(heavy, self._held[heavy][0], cut=True)
            self._held.setdefault(site, []).append(request)
            self._open += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self._lock:
                self._forget(site, request)
            raise

    def _forget(self, site: str, request, cut: bool = False) -> None:
        """Stops counting a connection (under the lock); cut: ends it too (its thread then finishes)."""
        held = self._held.get(site, [])
        if request in held:
            held.remove(request)
            self._open -= 1
            if not held:
                del self._held[site]
            if cut:
                _cut(request)

    def process_request_thread(self, request, client_address):
        timer = threading.Timer(self.REQUEST_DEADLINE_S, _cut, (request,))
        timer.daemon = True
        timer.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            timer.cancel()
            with self._lock:
                self._forget(_site_of(client_address), request)

    def handle_error(self, request, client_address):  # a client gone or timed out: no traceback
        pass


class _Server6(_Server):
    address_family = socket.AF_INET6


def _site_of(client_address) -> str:
    """Whom a connection counts against (rpc.site_of: an IPv4 address, an IPv6 /48)."""
    return site_of(client_of(client_address[0] if isinstance(client_address, tuple) and client_address else None))


def _cut(sock) -> None:
    """Ends a connection's reads and writes from another thread (its handler then finishes)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Quiet(WSGIRequestHandler):
    timeout = 10  # seconds a connection may stay silent

    def log_message(self, *args):  # no access log on stderr
        pass
