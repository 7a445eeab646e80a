"""A validator's client API (issue 21): HTTP + JSON on the node's own asyncio loop (aiohttp), after
CometBFT's RPC conventions. Served when the validator's file has `[rpc] listen = "host:port"`
(docs/OPERATOR.md, "Client API", with curl examples):

  POST /broadcast_tx_sync   {"tx": BYTES, "signatures": [BYTES, ...]}     -> the mempool's verdict
  POST /broadcast_txs       {"txs": [{"tx": ..., "signatures": [...]}, ...]} -> a verdict per item
  GET  /tx?hash=0x<64 hex>  pending | committed (height) | refused (reason); 404 if unknown
  POST /txs                 {"hashes": ["0x<64 hex>", ...]} -> the same, per hash (unknown: 200)
  GET  /account?key=0x<64 hex>  nonce, collateral, positions at the last committed block, with
                                the account's Merkle proof against that block's state root
  GET  /status              chain id, height, view, peers, backend, catching up, mempool
  GET  /health              200 while the node commits blocks, else 503 with the reason

BYTES is "0x" followed by hex, or base64 (CometBFT's JSON encoding). A transaction's hash is
sha256(body), in hex. Every refusal is a 4xx with {"error": "<one line>"}: a malformed request
(400), an unknown path (404) or method (405), a body over max_body_bytes (413), a client over
its request rate or its share of the validator's verification time (429, with Retry-After), a
full mempool (503), a client over its connections (503), an Expect header other than
100-continue (417; a body declared over max_body_bytes with 100-continue: 413 at once), a body
in chunks (411: Content-Length only; the connection closed, the rest not read) or compressed
(400: Content-Encoding is never decoded, so a zlib bomb costs nothing). Every request's time
on the loop (parsing, reading, answering) is charged to the client's share of it (/health's and
refused requests' to the client's own only), a body's reading as it comes; a body is checked
again once read, and no longer read once its client would be refused. Bodies
being read are bounded in all (max_body_bytes_in_flight: past it, 503). A request
the HTTP parser refuses (a bad request line, header or length) is a 400 with the same one-line
JSON, logged at debug level only. JSON bodies are strict: no NaN or Infinity, no key twice, no
field the endpoint does not name; hex is "0x" and an even number of hex digits, nothing else.
Connections are bounded (per client address and in all) and one that does not send a request's
head within idle_timeout_s of connecting or of its last answer (and its body within
idle_timeout_s more) is closed (at once, its answers read or not), however it trickles bytes,
so slow or idle connections cannot take the process's file descriptors from its peers and store.
A handler that fails is logged and answered 500; no request can stop the node."""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import ipaddress
import json
import logging
import re
import resource
import time

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

log = logging.getLogger("consensus.rpc")
CLIENTS_TRACKED = 10_000  # rate-limit buckets kept (the oldest go first)
TOTAL_REQUESTS = 20  # requests a second from all clients together: this many times requests_per_s
CONTENDED_S = 1.0  # a total (requests, verification time) is contended under this many seconds' worth left (of 2)
FAIR_ACTIVE_S = 10.0  # FairShare: a site shares a contended total this long after its last request
RESERVE_S = 1.0  # WorkBudget: a site under its part waiting for room closes the slack to others this long
# FairShare: a site's largest request is forgotten once the fair clock has allotted it this many
# times that since (kept for good, one 0.8 s batch held an honest site to a quarter of its part)
LARGEST_KEPT = 4.0
# the loop's time per read of a connection besides the parser's (the selector, recv, waking the
# handler's task and appending the chunk): measured with bodies sent a byte a segment
SEGMENT_S = 20e-6


class BadRequest(ValueError):
    """A request this API refuses; the message is the one-line reason."""


_NOT_HEX = re.compile(r"[^0-9a-fA-F]")


def _hex_digits(text: str) -> bool:
    """An even number of hex digits and nothing else (bytes.fromhex alone would skip spaces)."""
    return not len(text) % 2 and not _NOT_HEX.search(text)


def decode_bytes(text, what: str) -> bytes:
    """'0x' + an even number of hex digits (nothing else: bytes.fromhex alone would skip spaces),
    else base64. '0', 'x' and 'X' are base64 digits too, so a base64 string may begin with "0x"
    (one signature in 2,048; every transaction of a chain whose id begins 0xD31 or 0xD17): it is
    hex only if the rest is hex digits, which a base64 signature (ending "==") never is. The check
    is one scan for a character that is not a hex digit: the pattern (?:[0-9a-fA-F]{2})* it
    replaces took 90 ms of the loop for a megabyte."""
    if not isinstance(text, str):
        raise BadRequest(f"{what} must be a string: \"0x\" + hex, or base64")
    try:
        if text[:2] in ("0x", "0X") and _hex_digits(text[2:]):
            return bytes.fromhex(text[2:])
        return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise BadRequest(f"{what} is neither \"0x\" + an even number of hex digits nor base64") from None


def decode_hash(text, what: str) -> bytes:
    """A 32-byte hash or key: a string of 64 hex digits, with or without "0x"."""
    if not isinstance(text, str):
        raise BadRequest(f"{what} must be a string of 64 hex digits, not {type(text).__name__}")
    digits = text[2:] if text[:2] in ("0x", "0X") else text
    if not _hex_digits(digits):
        raise BadRequest(f"{what} is not 64 hex digits")
    raw = bytes.fromhex(digits)
    if len(raw) != 32:
        raise BadRequest(f"{what} is {len(raw)} bytes, not 32")
    return raw


def _hash_param(request: web.Request, name: str) -> bytes:
    values = request.query.getall(name, [])
    if not values:
        raise BadRequest(f"missing ?{name}=0x<64 hex digits>")
    if len(values) > 1:
        raise BadRequest(f"?{name}= given {len(values)} times; give it once")
    return decode_hash(values[0], name)


class _Bucket:
    __slots__ = ("tokens", "at")

    def __init__(self, tokens: float, at: float):
        self.tokens, self.at = tokens, at


class FairShare:
    """`rate` a second of something (requests, verification seconds) shared max-min fairly
    among the sites asking for it (a site: an IPv4 address, an IPv6 /48, site_of), for a bound
    on all clients together that would otherwise go to whoever asks first. A fair clock advances
    rate / (active sites) a second (a site is active FAIR_ACTIVE_S seconds after its last
    request); each site is credited what the clock advanced since its last request (at most 2 s
    of its part; a site seen the first time starts at zero, owing nothing) and owes what it is
    charged. The bound's owner admits a site while the bound is contended only with a credit of
    zero or more: a site that has taken more than its part waits until the clock has repaid it.
    The latest CLIENTS_TRACKED sites are kept (the oldest go first, with what they owed)."""

    def __init__(self, rate: float):
        self.rate = rate
        # site -> [credit, the clock then, charged since its last request, its largest request, the clock
        # when that was set], most recent last
        self.sites: dict[str, list[float]] = {}
        self.active: dict[str, float] = {}  # site -> its last request, oldest first
        self.clock, self.at = 0.0, None  # what each active site was allotted; when

    def _advance(self, now: float) -> None:
        """The clock to now; a site idle FAIR_ACTIVE_S is no longer counted from the moment it
        went idle."""
        at = now if self.at is None else self.at
        while self.active:
            site, last = next(iter(self.active.items()))
            idle = last + FAIR_ACTIVE_S
            if idle > now:
                break
            if idle > at:
                self.clock += (idle - at) * self.rate / len(self.active)
                at = idle
            del self.active[site]
        if now > at:
            self.clock += (now - at) * self.rate / max(1, len(self.active))
            at = now
        self.at = at

    def credit(self, site: str, now: float, visit: bool = True) -> float:
        """The site's credit now (below zero: what it owes). With visit, the site asks now: it is
        counted as active, and tracked."""
        self._advance(now)
        if visit:
            self.active.pop(site, None)
            self.active[site] = max(now, self.at)
            entry = self.sites.pop(site, None) or [0.0, self.clock, 0.0, 0.0, self.clock]
            self.sites[site] = entry
            if entry[2] >= entry[3] or self.clock - entry[4] >= LARGEST_KEPT * entry[3]:
                entry[3], entry[4] = entry[2], self.clock
            entry[2] = 0.0
            while len(self.sites) > CLIENTS_TRACKED:
                gone = next(iter(self.sites))
                del self.sites[gone]
                self.active.pop(gone, None)
        else:
            entry = self.sites.get(site)
            if entry is None:
                return 0.0
        asking = len(self.active) + (site not in self.active)
        value = min(2 * self.rate / asking, entry[0] + self.clock - entry[1])
        if visit:
            entry[0], entry[1] = value, self.clock
        return value

    def charge(self, site: str, amount: float) -> None:
        entry = self.sites.get(site)
        if entry is not None:
            entry[0] -= amount
            entry[2] += amount

    def largest(self, site: str) -> float:
        """The most the site was charged for one request (what it was charged between two of its
        requests) lately: a larger one replaces it, and it is forgotten (the latest request's
        charge instead) once the fair clock has allotted LARGEST_KEPT times it since it was set.
        Kept while tracked, one large batch long ago held an honest site (or the other users of
        its /48 or NAT address) to the total's full burst for every request: a quarter of its
        part beside four heavy clients, for good. A site sending a large request whenever its
        largest is forgotten gains little: it could send one every LARGEST_KEPT x its part's
        worth, not as often as its credit allows (tests/test_api_review_s8.py)."""
        entry = self.sites.get(site)
        return 0.0 if entry is None else entry[3]

    def part(self) -> float:
        """Each active site's part, a second."""
        return self.rate / max(1, len(self.active))

    def refusal(self, site: str, credit: float, what: str, unit: str) -> tuple[str, float]:
        """The words and the wait for a site whose credit is below zero."""
        part, wait = self.part(), -credit / self.part() + 0.1
        return (f"{what} is contended: {site} is over its fair part of it ({part:.3g} {unit} a second; "
                f"clients asking: {len(self.active)}); try again in {wait:.1f} s"), wait


class RateLimit:
    """A token bucket per client address: `rate` requests a second, bursts of up to 2 s worth; and,
    with total, one for every client together (total requests a second, bursts of 2 s worth),
    shared fairly (FairShare) while under CONTENDED_S seconds' worth is left. The per-client
    bound alone let many addresses (an IPv6 /48 is 65,536 clients) send as many requests as their
    bandwidth allows, each answered on the loop that runs consensus; the total alone, first come
    first served, was taken whole by total / rate addresses at their rate (20 at the defaults,
    each sending more than its rate so as to be first when the total refilled): every other
    client's requests and connections were refused, /status and /health included."""

    def __init__(self, rate: float, total: float | None = None):
        self.rate, self.burst = rate, max(1.0, 2 * rate)
        self.buckets: dict[str, _Bucket] = {}
        self.total = total
        self.all: _Bucket | None = None  # made at the first request
        self.fair = FairShare(total) if total is not None else None
        self.clock = time.monotonic  # `now` when a caller gives none

    def _level(self, b: _Bucket | None, rate: float, burst: float, now: float) -> float:
        return burst if b is None else min(burst, b.tokens + max(0.0, now - b.at) * rate)

    def _contended(self, level: float) -> bool:
        return level < CONTENDED_S * self.total

    def empty(self, client: str, now: float | None = None) -> bool:
        """Whether the client's next request would be refused (nothing taken)."""
        now = self.clock() if now is None else now
        if self._level(self.buckets.get(client), self.rate, self.burst, now) < 1:
            return True
        if self.total is None:
            return False
        level = self._level(self.all, self.total, max(1.0, 2 * self.total), now)
        return level < 1 or self._contended(level) and self.fair.credit(site_of(client), now, visit=False) < 0

    def refusal(self, client: str, now: float | None = None) -> str:
        """'' if the client may make a request now (taken from its bucket and the total), else
        'client', 'all' or 'fair' (its site over its part of a contended total): which bound
        refuses it."""
        now = self.clock() if now is None else now
        site = site_of(client)
        credit = self.fair.credit(site, now) if self.fair is not None else 0.0
        b = self.buckets.pop(client, None) or _Bucket(self.burst, now)
        self.buckets[client] = b  # most recently used last
        while len(self.buckets) > CLIENTS_TRACKED:
            del self.buckets[next(iter(self.buckets))]
        b.tokens, b.at = self._level(b, self.rate, self.burst, now), max(b.at, now)
        if b.tokens < 1:
            return "client"
        if self.total is not None:
            if self.all is None:
                self.all = _Bucket(max(1.0, 2 * self.total), now)
            a = self.all
            a.tokens, a.at = self._level(a, self.total, max(1.0, 2 * self.total), now), max(a.at, now)
            if a.tokens < 1:
                return "all"
            if self._contended(a.tokens) and credit < 0:
                return "fair"
            a.tokens -= 1
            self.fair.charge(site, 1.0)
        b.tokens -= 1
        return ""

    def allow(self, client: str, now: float | None = None) -> bool:
        return not self.refusal(client, now)


def client_of(remote: str | None) -> str:
    """Whom a connection's or request's bounds count against: its IPv4 address, or the /64 network
    of an IPv6 one (a host holds a whole /64, so counting single IPv6 addresses would give one
    attacker endless fresh budgets)."""
    try:
        ip = ipaddress.ip_address((remote or "").split("%")[0])
    except ValueError:
        return remote or "?"
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@functools.lru_cache(maxsize=4096)  # asked on every request (RateLimit), and parsing an IPv6 network takes 10 us
def site_of(client: str) -> str:
    """Whom a client's keys not yet registered count against in the mempool (ClearingApp's
    owner of them): the client (an IPv4 address), but for IPv6 its /48, a site: one holds 65,536
    /64 clients, more than half the default mempool, so counting them per /64 let one site's
    registrations keep every new user out (docs/OPERATOR.md, "Mempool fairness")."""
    if client.endswith("/64"):
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_network(client).supernet(new_prefix=48))
    return client


class WorkBudget:
    """Seconds of the node's event loop that API requests may take, per second: `share` for one
    client, `total` for every client together, each a bucket holding up to 2 s worth. A
    request is answered while both buckets are above zero, and its measured time is taken
    from both afterwards (a bucket may go below zero; it refills before the client's next one).
    The loop that verifies submissions also runs consensus: without this bound, batches of
    invalid signatures at the request rate kept it busy past the view timeout (1,000 transactions
    with every signature bad take 0.07-0.25 s on the C fallback, 0.27-0.56 s software-only,
    bench/api_costs.py; 100 such requests a second is seconds of work a second), and strangers
    sending them to every validator stalled the chain.

    The total is shared max-min fairly (FairShare) among the sites asking for it while it is
    contended (under CONTENDED_S seconds' worth left). It was first come first served: total /
    share clients at their share (4 at the defaults) kept it at zero, and whoever asked the
    moment it refilled, most likely one of them, took it: every other client was refused for as
    long as they kept at it. The total is still a hard bound (a request needs it above zero), so
    addresses rotated through cannot take more than it; with A sites over their part a site under
    it still finds the total above zero (together they are held to A / (A + 1) of it) and gets
    about total / (A + 1); what sites under their part leave goes back to the total and to
    whoever asks while it is not contended."""

    def __init__(self, share: float, total: float):
        self.share, self.total = share, total
        self.clients: dict[str, list[float]] = {}  # client -> [seconds left, at], most recent last
        self.all: list = [2 * total, None]  # [seconds left, at]; at None: the first request's time
        self.fair = FairShare(total)
        self.reserved_until = float("-inf")  # till then, no slack for sites over their part

    @staticmethod
    def _refill(bucket: list, rate: float, now: float) -> list:
        at = now if bucket[1] is None else bucket[1]
        bucket[0] = min(2 * rate, bucket[0] + max(0.0, now - at) * rate)
        bucket[1] = max(at, now)
        return bucket

    def _mine(self, client: str, now: float) -> list:
        """The client's bucket, refilled to now (made full the first time), most recently used last."""
        mine = self.clients.pop(client, None) or [2 * self.share, now]
        self.clients[client] = mine
        while len(self.clients) > CLIENTS_TRACKED:
            del self.clients[next(iter(self.clients))]
        return self._refill(mine, self.share, now)

    def refusal(self, client: str, now: float | None = None, again: bool = False) -> tuple[str, float]:
        """('', 0) if the client may submit now, else (why not, seconds until it may). again: the
        same request checked once more (its body read): not a new visit to the fair clock, which
        would split the request's charge in two and hide its size (FairShare.largest)."""
        now = time.monotonic() if now is None else now
        site = site_of(client)
        credit = self.fair.credit(site, now, visit=not again)
        mine = self._mine(client, now)
        if mine[0] <= 0:
            wait = -mine[0] / self.share + 0.1
            return (f"{client} is over its share of this validator's verification time ({self.share:g} s a second); "
                    f"try again in {wait:.1f} s"), wait
        if self._refill(self.all, self.total, now)[0] <= 0:
            wait = -self.all[0] / self.total + 0.1
            return (f"submissions are over this validator's verification time ({self.total:g} s a second); "
                    f"try again in {wait:.1f} s"), wait
        # over its part, a site may still take what the others leave (the total above CONTENDED_S
        # seconds' worth), but only as much as its largest request fits in: else, sending
        # requests larger than that (a batch whose signatures take longer than the total's burst)
        # whenever the total refilled, sites over their part took it
        # below zero each time, and the sites under theirs found it there for seconds
        largest = max(0.0, self.fair.largest(site))
        if credit < 0 and (self.all[0] - CONTENDED_S * self.total < largest or now < self.reserved_until):
            what = f"this validator's verification time ({self.total:g} s a second)"
            return self.fair.refusal(site, credit, what, "s")
        # a request starts only when the total has room for the site's largest (at most its full
        # burst): a request is charged after it ran, and sites sending requests larger than the
        # total's headroom (1.6 s) at their part took it below zero for seconds each time (a
        # light client then waited up to 14 s); now that happens only when it is full, once a
        # site has shown such a request. A site under its part waiting for room keeps those over
        # theirs from the slack for RESERVE_S (else they took it first, and it never came)
        need = min(2 * self.total, largest)
        if self.all[0] < need:
            if credit >= 0:
                self.reserved_until = max(self.reserved_until, now + RESERVE_S)
            wait = (need - self.all[0]) / self.total + 0.1
            return (f"this validator's verification time has {max(0.0, self.all[0]):.2f} s left and {site}'s "
                    f"requests take up to {largest:.2f} s; try again in {wait:.1f} s"), wait
        return "", 0.0

    def charge(self, client: str, seconds: float) -> None:
        if client in self.clients:
            self.clients[client][0] -= seconds
        self.fair.charge(site_of(client), seconds)
        self.all[0] -= seconds

    def charge_own(self, client: str, seconds: float) -> None:
        """Charges the client's bucket only: work this budget did not admit (/health, a refusal, the
        head of a request refused), bounded by the request rate. Taken from the total too, /health
        (never refused) or 429s from a few addresses held it at zero, and every other client was
        refused."""
        self._mine(client, time.monotonic())[0] -= seconds


class _Full(Exception):
    pass


class _Busy(Exception):
    """Over a bound (the WorkBudget: 429; the body bytes in flight: 503); args: why, the seconds
    to wait, the status, whether the connection is closed after the answer (a body left unread)."""

    def __init__(self, reason: str, wait: float, status: int = 429, close: bool = False):
        super().__init__(reason, wait, status, close or status == 503)


class _Meter:
    """A request's time on the loop: from its handler's start to its return, less the time spent
    awaiting its body (the network's, not the loop's) and less what _charged charged already.
    admitted: whether the WorkBudget let it in (its cost then goes to the total too)."""
    __slots__ = ("clock", "spent", "since", "charged", "admitted")

    def __init__(self, clock):
        self.clock, self.spent, self.charged, self.admitted = clock, 0.0, 0.0, False
        self.since = clock()

    @contextlib.contextmanager
    def waiting(self):
        self.spent += self.clock() - self.since
        try:
            yield
        finally:
            self.since = self.clock()

    def uncharged(self) -> float:
        return max(0.0, self.spent + self.clock() - self.since - self.charged)


_METER = web.RequestKey("meter", _Meter)


def _no_constant(name: str):
    raise BadRequest(f"the body is not strict JSON: {name} is not a JSON value")


def _unique(pairs: list) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise BadRequest(f"the body gives the key {twice!r} twice")
    return out


def _only(obj, fields: tuple[str, ...], where: str) -> None:
    """obj is an object whose keys are among fields (a misspelt "signature" is refused, not read
    as no signatures)."""
    if not isinstance(obj, dict):
        raise BadRequest(f"{where} must be a JSON object with {', '.join(repr(f) for f in fields)}")
    unknown = sorted(set(obj) - set(fields))
    if unknown:
        raise BadRequest(f"{where} has the unknown field {unknown[0][:40]!r}; its fields: "
                         f"{', '.join(repr(f) for f in fields)}")


def _error(code: int, reason: str, retry_after: float | None = None, **extra) -> web.Response:
    headers = None if retry_after is None else {"Retry-After": str(max(1, int(retry_after + 0.999)))}
    return web.json_response({"error": reason} | extra, status=code, headers=headers)


def _default_connections() -> int:
    """A quarter of the process's file descriptors (its peers, store and snapshots keep the rest),
    at most 1,024."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(16, min(1024, (soft if soft != resource.RLIM_INFINITY else 4096) // 4))


class _Handler(RequestHandler):
    """aiohttp's connection handler, with the API's connection bounds (refused connections get a
    one-line 503 and are closed), an idle timeout (idle_timeout_s from the connection, or from its
    last answer, to send a request's head, and idle_timeout_s again for its body: else closed;
    bytes trickled in do not extend it, so a slowloris client cannot hold a connection for ever),
    and the HTTP parser's refusals answered as one-line JSON and logged at debug level only (a
    stranger's bad request lines cannot flood the node's log)."""

    def __init__(self, rpc: "Rpc", manager, **kwargs):
        super().__init__(manager, **kwargs)
        self._rpc, self._client, self._idle, self._heard = rpc, None, None, 0.0
        self._conn, self._released = None, False
        self._parsed = 0.0  # seconds the parser took of the loop, not yet charged to the WorkBudget
        self._serving = None  # the request the WorkBudget let in, being served: what is read is its cost

    def connection_made(self, transport) -> None:
        peer = transport.get_extra_info("peername")
        client = client_of(str(peer[0])) if isinstance(peer, tuple) and peer else "?"
        refusal = self._rpc._admit(client, self)
        if refusal:
            body = json.dumps({"error": refusal}).encode()
            head = (b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\n" if refusal.startswith("over ")
                    else b"HTTP/1.1 503 Service Unavailable\r\n")
            transport.write(head + b"Content-Type: application/json\r\n"
                            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            transport.close()
            return
        self._client, self._conn = client, transport
        super().connection_made(transport)
        self._heard = time.monotonic()
        self._idle = asyncio.get_running_loop().call_later(self._rpc.idle_timeout_s, self._check_idle)

    def _check_idle(self) -> None:
        quiet = time.monotonic() - self._heard
        if quiet >= self._rpc.idle_timeout_s:
            self._rpc.idle_closed += 1
            self._conn.abort()  # close() waits for the answers to be read: a client not reading kept it
        else:
            self._idle = asyncio.get_running_loop().call_later(self._rpc.idle_timeout_s - quiet, self._check_idle)

    def data_received(self, data: bytes) -> None:
        if self._client is None:
            return  # refused: its bytes are not read
        # the loop's work on each read is charged: the parser's, measured, and the rest (the
        # selector, recv, waking the reader; SEGMENT_S): a body in 1-byte pieces kept the loop 98%
        # busy while 0.06 s a second was charged. A body of an admitted request is charged at once,
        # and once the WorkBudget would refuse its client (the check it meets when read, Rpc._json)
        # it is no longer read: its request is answered that 429 and the connection closed (one
        # trickled body kept the loop for idle_timeout_s). A head is charged once its request is
        # refused or admitted (take_parsed)
        rpc = self._rpc
        started = rpc.clock()
        try:
            super().data_received(data)
        finally:
            spent = rpc.clock() - started + rpc.segment_cost_s
            if self._serving is not None:
                rpc.work.charge(self._client, spent)
                self._check_body(self._serving)
            else:
                self._parsed += spent

    def _check_body(self, request: web.Request) -> None:
        """Stops reading a body whose client the WorkBudget now refuses: its read raises the 429."""
        if request.content.is_eof() or request.content.exception() is not None:
            return
        refusal, wait = self._rpc.work.refusal(self._client, again=True)
        if refusal:
            self._rpc.starved_bodies += 1
            self._conn.pause_reading()
            request.content.set_exception(_Busy(refusal, wait, close=True))

    def take_parsed(self) -> float:
        """The parser's time not yet charged, now charged by the caller."""
        parsed, self._parsed = self._parsed, 0.0
        return parsed

    async def finish_response(self, request, resp, start_time):
        out = await super().finish_response(request, resp, start_time)
        if not request.content.is_eof() and ("Transfer-Encoding" in request.headers or request.method != "POST"):
            # closed now, the rest not read: aiohttp's lingering close read it for up to 10 s; in
            # chunks that is a Python call per chunk, and a body on any other method than POST is
            # bounded by nothing (_body_headers checks POSTs: a GET /health declaring 100 GB kept
            # the loop half busy reading it). The rest of a POST's Content-Length body, at most
            # max_body_bytes read raw, costs little, and a client still sending it gets its answer
            self.force_close()
        return out

    def progressed(self) -> None:
        """A request's head arrived, or its answer was given: the idle clock starts again."""
        self._heard = time.monotonic()

    def eof_received(self) -> None:
        if self._client is not None:
            super().eof_received()

    def _let_go(self) -> None:
        if not self._released:
            self._released = True
            if self._idle is not None:
                self._idle.cancel()
            self._rpc._release(self._client, self)

    def displace(self) -> None:
        """Closed for another client (Rpc._admit, Rpc._reserve): not counted from now, so closed at
        once (abort): close() waits for the answers to be read, and a client not reading kept the
        socket and its answers for ever, uncounted, and opened more."""
        self._let_go()
        self._conn.abort()

    def connection_lost(self, exc) -> None:
        if self._client is None:
            return
        self._rpc.work.charge_own(self._client, self.take_parsed())  # (heads no request was admitted for)
        self._let_go()
        self._client = None
        super().connection_lost(exc)

    def log_exception(self, *args, **kwargs) -> None:
        """aiohttp's own connection-level errors (a body it cannot decode, read again after the
        answer went out): a client's doing, at debug level without the traceback (the API's
        handlers log their own failures, consensus.rpc)."""
        exc = kwargs.get("exc_info")
        log.debug("rpc: %s (%s)", args[0] % args[1:] if len(args) > 1 else args[0] if args else "",
                  " ".join(str(exc).split())[:200] if isinstance(exc, BaseException) else exc)

    def handle_error(self, request, status: int = 500, exc=None, message=None):
        if status >= 500:
            log.warning("rpc: %s from %s: %s", status, request.remote, type(exc).__name__ if exc else message)
            reason = "internal error"
        else:
            log.debug("rpc: refused a malformed request from %s: %s", request.remote, exc)
            self._rpc.refused_early(self._client or client_of(request.remote))
            text = str(getattr(exc, "message", None) or message or "malformed request")
            reason = "malformed HTTP request: " + " ".join(text.split())[:200]
        resp = web.json_response({"error": reason}, status=status)
        resp.force_close()
        return resp


class Rpc:
    """The API of one NodeRunner (its app, core, committed-transaction index and liveness).
    max_connections (None: a quarter of the file-descriptor limit, at most 1,024) and
    max_connections_per_client bound the open connections; one that sends nothing for
    idle_timeout_s seconds is closed. Requests (all but /health checked, all charged: those the
    WorkBudget did not admit to the client's own bucket only) may take
    submit_share_s seconds of the node's loop a second per client, submit_total_s for all,
    shared fairly while contended (WorkBudget); past them, 429. Requests: requests_per_s per
    client, requests_total_per_s (None or 0: TOTAL_REQUESTS x requests_per_s) from all clients
    together. Request bodies being read: max_body_bytes_in_flight bytes in all (past it, 503)."""

    def __init__(self, node, listen: tuple[str, int], max_body_bytes: int = 1 << 20, requests_per_s: float = 100.0,
                 max_batch: int = 1000, max_mempool: int = 100_000, max_connections: int | None = None,
                 max_connections_per_client: int = 64, idle_timeout_s: float = 30.0,
                 submit_share_s: float = 0.1, submit_total_s: float = 0.4,
                 requests_total_per_s: float | None = None, max_body_bytes_in_flight: int = 64 << 20):
        self.node, self.listen = node, listen
        self.max_batch, self.max_mempool, self.max_body = max_batch, max_mempool, max_body_bytes
        self.max_body_in_flight, self.body_bytes_in_flight = max_body_bytes_in_flight, 0
        self._bodies: dict[str, dict] = {}  # site -> {its connections' handlers reading a body: bytes}, oldest first
        self._body_sites: dict[str, int] = {}  # site -> body bytes it is reading
        self._body_site: dict = {}  # handler reading a body -> its site
        self.limit = RateLimit(requests_per_s, requests_total_per_s or TOTAL_REQUESTS * requests_per_s)  # 0: default
        self.refused_requests = 0
        self.max_connections = _default_connections() if max_connections is None else max_connections
        self.max_per_client, self.idle_timeout_s = max_connections_per_client, idle_timeout_s
        self.connections: dict[str, int] = {}  # client address -> open connections
        self.open_connections = self.refused_connections = self.idle_closed = self.displaced_connections = 0
        self._held: dict[str, dict] = {}  # site -> its connections' handlers, oldest first
        self._by_count: dict[int, dict[str, None]] = {}  # connections held -> the sites holding that many
        self._heaviest = 0  # the most connections one site holds
        self._server: asyncio.AbstractServer | None = None
        self.work = WorkBudget(submit_share_s, submit_total_s)
        self.clock = time.perf_counter  # what the WorkBudget's charges are measured with
        self.segment_cost_s = SEGMENT_S
        self.starved_bodies = 0  # bodies no longer read: the WorkBudget refused their client mid-body
        app = web.Application(client_max_size=max_body_bytes, middlewares=[self._guard])
        # every path and method has a route of the API's own (a wrong method, an unknown path: one
        # that raises the 405 or 404 _guard words), so every request's Expect header goes to
        # _expect: aiohttp's own answered an unknown expectation in plain text and a body over
        # max_body_bytes with "100 Continue", inviting it
        for path, method, handler in (("/broadcast_tx_sync", "POST", self.broadcast_tx),
                                      ("/broadcast_txs", "POST", self.broadcast_txs), ("/tx", "GET", self.tx),
                                      ("/txs", "POST", self.txs), ("/account", "GET", self.account),
                                      ("/status", "GET", self.status), ("/health", "GET", self.health)):
            add = app.router.add_get if method == "GET" else app.router.add_post
            add(path, handler, expect_handler=self._expect)
            app.router.add_route("*", path, self._wrong_method, expect_handler=self._expect)
        app.router.add_route("*", "/{tail:.*}", self._no_such_endpoint, expect_handler=self._expect)
        self.app = app
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Binds listen; OSError (address in use, no such address, a port outside 0..65535) goes to
        the caller."""
        host, port = self.listen
        if not (isinstance(port, int) and 0 <= port <= 65535):
            raise OSError(f"port {port} is outside 0..65535")
        # shutdown_timeout: how long stop() lets requests in flight finish; aiohttp's 60 s let a
        # client holding a half-sent body delay the validator's own shutdown by 30 s or more
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self.runner.setup()
        loop = asyncio.get_running_loop()
        server = self.runner.server

        # auto_decompress off: a body of 1 MB of zlib (1 GiB of spaces) took 1 to 4 s of the loop
        # to decompress, also in aiohttp's lingering close after a 413 or on /health, which reads
        # no body; the API takes no compressed bodies (Rpc._json refuses them)
        def handler() -> _Handler:
            return _Handler(self, server, loop=loop, access_log=None, keepalive_timeout=self.idle_timeout_s,
                            auto_decompress=False)
        try:
            self._server = await loop.create_server(handler, host, port, reuse_address=True)
        except (OverflowError, ValueError) as exc:
            await self.runner.cleanup()
            raise OSError(str(exc)) from None
        except BaseException:
            await self.runner.cleanup()
            raise

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self.runner is not None:
            await self.runner.cleanup()  # closes the open connections
        if self._server is not None:
            await self._server.wait_closed()

    def bound_port(self) -> int:
        """The port listened on (listen's, or the one the system chose for port 0)."""
        return self._server.sockets[0].getsockname()[1]

    def _admit(self, client: str, handler) -> str:
        """'' if a new connection from client may open (and counts it), else why not. A client
        over its request rate is refused here, before aiohttp spends anything on it. With every
        connection taken, a client whose site (site_of) holds fewer than the heaviest site less
        one is let in in place of that site's oldest connection, which is closed (_displace):
        first come first served, max_connections / max_connections_per_client addresses (16 at
        the defaults) holding theirs open kept every other client out."""
        if self.limit.empty(client):
            self.refused_connections += 1
            return f"over the request rate ({self.limit.rate:g} requests per second from {client}, " \
                   f"{self.limit.total:g} from all clients); slow down"
        if self.connections.get(client, 0) >= self.max_per_client:
            self.refused_connections += 1
            return f"{self.max_per_client} connections open from {client}; close some"
        site = site_of(client)
        if self.open_connections >= self.max_connections:
            if not (len(self._held.get(site, ())) + 1 < self._heaviest and self._displace()):
                self.refused_connections += 1
                return f"{self.max_connections} connections open to this API; try again later"
        self.connections[client] = self.connections.get(client, 0) + 1
        self.open_connections += 1
        self._hold(site, handler, +1)
        return ""

    def _hold(self, site: str, handler, step: int) -> None:
        """Counts (step +1) or forgets (-1) a handler's connection against its site."""
        held = self._held.setdefault(site, {})
        before = len(held)
        if step > 0:
            held[handler] = None
        else:
            held.pop(handler, None)
        after = len(held)
        if not held:
            del self._held[site]
        if after == before:
            return
        if before:
            self._by_count[before].pop(site, None)
            if not self._by_count[before]:
                del self._by_count[before]
        if after:
            self._by_count.setdefault(after, {})[site] = None
        self._heaviest = max(self._heaviest, after)
        while self._heaviest and self._heaviest not in self._by_count:
            self._heaviest -= 1

    def _displace(self) -> bool:
        """Closes the oldest connection of the site holding the most (the first of them to get
        there); whether one was closed."""
        if not self._heaviest:
            return False
        site = next(iter(self._by_count[self._heaviest]))
        victim = next(iter(self._held[site]))
        self.displaced_connections += 1
        victim.displace()
        return True

    def _release(self, client: str, handler) -> None:
        self.open_connections -= 1
        left = self.connections.get(client, 0) - 1
        if left > 0:
            self.connections[client] = left
        else:
            self.connections.pop(client, None)
        self._hold(site_of(client), handler, -1)

    def refused_early(self, client: str) -> None:
        """A request refused before _guard (the HTTP parser's refusals, _expect's) counts against
        its client's request rate as any other: not counted, one address had 3,500 malformed
        requests a second answered at requests_per_s = 2 (a new connection for each: each is
        closed after its refusal, and the rate is what _admit checks), 0.7 s of every second of
        the loop at the defaults (review s22). Taken if there is one to take; if not, the
        client's next connection is refused."""
        self.refused_requests += 1
        self.limit.refusal(client)

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        """Every request's loop time is charged to its client's WorkBudget: the handler's (an
        answer to /txs, a status per hash and 100 kB of JSON, was 2/3 of its cost, and GETs
        were not charged at all: 8 addresses sending /txs kept the loop 98% busy while 0.39 s a
        second was charged) and the parser's (_Handler.take_parsed). A request the WorkBudget
        did not admit (/health, a refusal) is charged to its client's own bucket only."""
        proto = request.protocol
        if isinstance(proto, _Handler):
            proto.progressed()
        request[_METER] = meter = _Meter(self.clock)
        try:
            return await self._guarded(request, handler)
        finally:
            self._unreserve(proto)
            parsed = 0.0
            if isinstance(proto, _Handler):
                proto.progressed()
                proto._serving = None
                parsed = proto.take_parsed()
            charge = self.work.charge if meter.admitted else self.work.charge_own
            charge(client_of(request.remote), parsed + meter.uncharged())

    async def _guarded(self, request: web.Request, handler):
        client = client_of(request.remote)
        refused = self.limit.refusal(client)
        if refused:
            self.refused_requests += 1
            if refused == "client":
                resp = _error(429, f"over {self.limit.rate:g} requests per second from {request.remote}; slow down",
                              retry_after=1)
            elif refused == "all":
                resp = _error(429, f"this API is over {self.limit.total:g} requests per second from all clients; "
                              "try again in a second", retry_after=1)
            else:
                fair, site = self.limit.fair, site_of(client)
                what = f"this API's {self.limit.total:g} requests per second from all clients"
                resp = _error(429, *fair.refusal(site, fair.credit(site, self.limit.clock(), False), what, "requests"))
            # closed after it: requests pipelined behind it are not read (each refusal still cost
            # the loop 0.04 ms: 20,000 pipelined on one connection, 660 kB, 0.8 s of its CPU)
            resp.force_close()
            return resp
        try:
            if request.method == "POST":
                self._body_headers(request)  # a body refused for its headers costs nothing: no need to wait
            # /health, what an orchestrator polls, is answered even to a client over its share (one
            # sharing an address with a heavy client), and charged to that client's bucket only
            if request.path != "/health":
                refusal, wait = self.work.refusal(client)
                if refusal:
                    raise _Busy(refusal, wait)
                request[_METER].admitted = True
                if isinstance(request.protocol, _Handler):
                    request.protocol._serving = request
            return await handler(request)
        except BadRequest as exc:
            self.refused_requests += 1
            return _error(400, str(exc))
        except _Busy as exc:  # over the WorkBudget (429) or the body bytes in flight (503)
            self.refused_requests += 1
            reason, wait, status, close = exc.args
            resp = _error(status, reason, retry_after=wait)
            if close:
                resp.force_close()  # closed after it: the rest of its body is not read, nor kept
            return resp
        except web.HTTPException as exc:  # aiohttp's own: unknown path, method, body too large
            self.refused_requests += 1
            reason = {404: f"no such endpoint {request.path}; see /status, /health, /tx, /txs, /account, "
                           "/broadcast_tx_sync, /broadcast_txs",
                      405: f"{request.method} is not allowed on {request.path} (allowed: "
                           f"{', '.join(sorted(getattr(exc, 'allowed_methods', ())))})",
                      411: "a body in chunks (Transfer-Encoding) is not accepted; send it with a Content-Length",
                      413: f"request body over {self.max_body} bytes"}.get(exc.status, exc.reason)
            resp = _error(exc.status, reason)
            if exc.status == 405:  # (RFC 9110 15.5.6)
                resp.headers["Allow"] = exc.headers.get("Allow", "")
            if exc.status == 413:
                resp.force_close()  # (as for a 503: the body declared too large is never kept)
            return resp
        except ConnectionError:  # the client went away mid-request (or was closed as idle)
            return _error(400, "the connection closed before the request was read")
        except Exception as exc:  # a bug: logged, answered, the node carries on
            log.exception("rpc: %s %s failed", request.method, request.path)
            return _error(500, f"internal error: {type(exc).__name__}")

    async def _wrong_method(self, request: web.Request):
        allowed = {r.method for r in request.match_info.route.resource if r.method != "*"}
        raise web.HTTPMethodNotAllowed(request.method, allowed)

    async def _no_such_endpoint(self, request: web.Request):
        raise web.HTTPNotFound()

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """The Expect header (before the handler and its middleware): "100-continue" is answered
        "100 Continue" unless the declared body is over max_body_bytes (413, closed: the client
        need not send it); any other expectation is a 417. Both refusals one-line JSON."""
        expect = request.headers.get("Expect", "")
        if expect.lower() != "100-continue":
            self.refused_early(client_of(request.remote))
            resp = _error(417, f"Expect: {' '.join(expect.split())[:60]!r} is not supported; only 100-continue")
        elif request.content_length is not None and request.content_length > self.max_body:
            self.refused_early(client_of(request.remote))
            resp = _error(413, f"request body over {self.max_body} bytes")
        else:
            if request.version >= (1, 1):
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.writer.output_size = 0
            return None
        resp.force_close()
        return resp

    # ---- transactions ----------------------------------------------------------------------------
    async def _json(self, request: web.Request, fields: tuple[str, ...]) -> dict:
        """The body: one JSON object with no field but `fields` (strict JSON: no NaN or Infinity, no
        key given twice, which parsers read differently), sent uncompressed with a Content-Length
        (in chunks, 1 MiB of JSON in 1-byte chunks took 0.6 s of the loop to read, half of it in
        aiohttp's reader, which nothing can charge). Reading and parsing it take the loop's time (a
        megabyte of small objects: 50 to 100 ms), so both are charged to the client's WorkBudget
        (_Handler.data_received, _guard). The declared length is reserved from
        max_body_bytes_in_flight before reading (_reserve): a body being read is held in memory. Its
        headers were checked (_body_headers)."""
        self._reserve(request, request.content_length or 0)
        try:
            with request[_METER].waiting():
                raw = await request.read()
        except web.HTTPException:
            raise
        except (RequestPayloadError, HttpProcessingError) as exc:
            raise BadRequest(f"the body cannot be read: {' '.join(str(exc).split())[:160]}") from None
        # checked again now that the body is here (its head was checked before it came): else K heads
        # sent while the share was full, then K bodies, were all parsed and verified, K times the share
        refusal, wait = self.work.refusal(client_of(request.remote), again=True)
        if refusal:
            raise _Busy(refusal, wait)
        try:  # UTF-8 without a BOM (RFC 8259 8.1): json.loads of bytes also took UTF-16 and -32, which
            # a proxy checking UTF-8 reads as something else than this API does (review s23)
            body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant, object_pairs_hook=_unique)
        except BadRequest:
            raise
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the body is not JSON in UTF-8: {exc}") from None
        except RecursionError:
            raise BadRequest("the body's JSON is nested too deeply") from None
        _only(body, fields, "the body")
        return body

    def _body_headers(self, request: web.Request) -> None:
        """Refuses a body compressed (400), in chunks (411) or declared over max_body_bytes (413:
        not read)."""
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            raise BadRequest(f"the body cannot be read: Content-Encoding {encoding[:40]!r} is not accepted; "
                             "send the JSON uncompressed")
        if "Transfer-Encoding" in request.headers:
            raise web.HTTPLengthRequired()
        if (request.content_length or 0) > self.max_body:
            raise web.HTTPRequestEntityTooLarge(max_size=self.max_body, actual_size=request.content_length)

    def _reserve(self, request: web.Request, length: int) -> None:
        """Reserves a body's declared length from max_body_bytes_in_flight (released by _guard
        when its request ends), or raises _Busy (503). Unbounded, every connection could hold a
        body one byte short of max_body_bytes until idle_timeout_s: 1.25 MiB of memory each,
        1.3 GiB at 1,024 connections. Over the bound, a site reading fewer bytes than the
        heaviest (less this body) takes the place of that site's oldest body, whose connection
        is closed: else one address, 64 connections of slow bodies, kept every other client's
        bodies out."""
        proto, site = request.protocol, site_of(client_of(request.remote))
        while self.body_bytes_in_flight + length > self.max_body_in_flight:
            heaviest = max(self._body_sites, key=self._body_sites.get, default=None)
            if heaviest is None or self._body_sites[heaviest] <= self._body_sites.get(site, 0) + length:
                raise _Busy(f"this API is reading {self.body_bytes_in_flight} bytes of request bodies, its bound "
                            f"(max_body_bytes_in_flight {self.max_body_in_flight}); try again in a second", 1.0, 503)
            victim = next(iter(self._bodies[heaviest]))
            self._unreserve(victim)
            if isinstance(victim, _Handler):
                self.displaced_connections += 1
                victim.displace()
        self._bodies.setdefault(site, {})[proto] = length
        self._body_site[proto] = site
        self._body_sites[site] = self._body_sites.get(site, 0) + length
        self.body_bytes_in_flight += length

    def _unreserve(self, proto) -> None:
        """Releases what a connection's request reserved (_reserve), if anything."""
        site = self._body_site.pop(proto, None)
        if site is None:
            return
        length = self._bodies[site].pop(proto)
        if not self._bodies[site]:
            del self._bodies[site]
        left = self._body_sites.pop(site) - length
        if left:
            self._body_sites[site] = left
        self.body_bytes_in_flight -= length

    def _charged(self, client: str, meter: _Meter | None = None):
        """A context that charges the client's WorkBudget the time spent inside (and counts it
        in the request's meter, which _guard charges the rest of)."""
        rpc = self

        class _Charge:
            def __enter__(self):
                self.started = rpc.clock()

            def __exit__(self, *exc):
                spent = rpc.clock() - self.started
                rpc.work.charge(client, spent)
                if meter is not None:
                    meter.charged += spent
                return False
        return _Charge()

    @staticmethod
    def _item(obj, where: str) -> tuple[bytes, list[bytes]]:
        if not isinstance(obj, dict) or "tx" not in obj:
            raise BadRequest(f"{where} must be an object {{\"tx\": ..., \"signatures\": [...]}}")
        _only(obj, ("tx", "signatures"), where)
        sigs = obj.get("signatures", [])
        if not isinstance(sigs, list):
            raise BadRequest(f"{where}.signatures must be a list")
        return (decode_bytes(obj["tx"], f"{where}.tx"),
                [decode_bytes(s, f"{where}.signatures[{i}]") for i, s in enumerate(sigs)])

    def _submit(self, items: list[tuple[bytes, list[bytes]]], client: str = "?",
                meter: _Meter | None = None) -> list[dict]:
        """Admits items, charging the client's WorkBudget (checked when its request came)."""
        with self._charged(client, meter):
            return self._submit_now(items, client)

    def _submit_now(self, items: list[tuple[bytes, list[bytes]]], client: str = "?") -> list[dict]:
        """Per item, the mempool's verdict; _Full if the mempool has no room for any of them. An
        app that bounds its own mempool fairly (ClearingApp.max_mempool: a full mempool makes room
        for an account holding less than the heaviest) is given max_mempool and the client (whom
        a key not registered yet counts against: ClearingApp._owner_for) and answers per item;
        for any other, a batch that would take the mempool past max_mempool is refused whole."""
        app = self.node.app
        digests = [hashlib.sha256(body).digest() for body, _ in items]
        pending = {d for d in digests if d in app.mempool}
        if hasattr(app, "max_mempool"):
            app.max_mempool = self.max_mempool
            reasons = app.submit_many(items, client=site_of(client))
            if reasons and all(r.startswith("mempool full") for r in reasons):
                raise _Full()
            return self._answers(digests, reasons, pending)
        fresh = len(set(digests) - pending)
        if fresh and len(app.mempool) + fresh > self.max_mempool:
            raise _Full()
        return self._answers(digests, app.submit_many(items), pending)

    def _answers(self, digests: list[bytes], reasons: list[str], pending: set[bytes]) -> list[dict]:
        """Per item its verdict; "duplicate": true where it was pending already (sent before, by
        this request or an earlier one): `accel tx` run twice before a commit signs the same body
        twice, and both runs were told only "accepted", for one transaction."""
        out, seen = [], set(pending)
        for digest, reason in zip(digests, reasons):
            answer = {"hash": digest.hex(), "code": 1 if reason else 0, "accepted": not reason, "reason": reason}
            if not reason and digest in seen:
                answer["duplicate"] = True
            elif not reason:
                seen.add(digest)
                self.node.submitted += 1
            out.append(answer)
        return out

    async def broadcast_tx(self, request: web.Request) -> web.Response:
        body, client = await self._json(request, ("tx", "signatures")), client_of(request.remote)
        item = self._item(body, "body")
        try:
            return web.json_response(self._submit([item], client, request[_METER])[0])
        except _Full:
            return _error(503, f"mempool full ({len(self.node.app.mempool)} transactions); try again later")

    async def broadcast_txs(self, request: web.Request) -> web.Response:
        body = await self._json(request, ("txs",))
        txs = body.get("txs")
        if not isinstance(txs, list):
            raise BadRequest("the body must be {\"txs\": [{\"tx\": ..., \"signatures\": [...]}, ...]}")
        if len(txs) > self.max_batch:
            raise BadRequest(f"{len(txs)} transactions in one request; at most {self.max_batch}")
        items = [self._item(t, f"txs[{i}]") for i, t in enumerate(txs)]
        try:
            return web.json_response({"results": self._submit(items, client_of(request.remote), request[_METER])})
        except _Full:
            return _error(503, f"mempool full ({len(self.node.app.mempool)} transactions); try again later")

    def _tx_status(self, digest: bytes) -> dict:
        node, out = self.node, {"hash": digest.hex()}
        if digest in node.tx_heights:
            return out | {"status": "committed", "height": node.tx_heights[digest]}
        if digest in node.app.mempool:
            return out | {"status": "pending"}
        refused = getattr(node.app, "refused", {}).get(digest)
        if refused is not None:
            return out | {"status": "refused", "reason": refused}
        return out | {"status": "unknown", "reason": "not in the mempool, not committed, not recently refused"}

    async def tx(self, request: web.Request) -> web.Response:
        out = self._tx_status(_hash_param(request, "hash"))
        if out["status"] == "unknown":
            return _error(404, out.pop("reason"), **out)
        return web.json_response(out)

    async def txs(self, request: web.Request) -> web.Response:
        body = await self._json(request, ("hashes",))
        hashes = body.get("hashes")
        if not isinstance(hashes, list):
            raise BadRequest("the body must be {\"hashes\": [\"0x<64 hex>\", ...]}")
        if len(hashes) > self.max_batch:
            raise BadRequest(f"{len(hashes)} hashes in one request; at most {self.max_batch}")
        digests = [decode_hash(h, f"hashes[{i}]") for i, h in enumerate(hashes)]
        return web.json_response({"results": [self._tx_status(d) for d in digests]})

    # ---- state ---------------------------------------------------------------------------------------
    async def account(self, request: web.Request) -> web.Response:
        key = _hash_param(request, "key")
        node = self.node
        block = node.core.committed
        state = node.core.states.get(block.id)
        clearing = getattr(state, "clearing", None)
        if clearing is None:
            return _error(501, "account state is served for the clearing app only")
        acct = clearing.accounts.get(key)
        out = {"key": key.hex(), "height": block.height, "block_hash": block.id.hex(),
               "state_root": block.state_root.hex()}
        if acct is None:
            return _error(404, f"account {key.hex()[:16]} is not registered at height {block.height}", **out)
        leaf, proof, accounts_root, globals_root = clearing.account_proof(key, node.app.verifier.sha256_rows)
        return web.json_response(out | {
            "nonce": acct.nonce, "collateral": dict(sorted(acct.collateral.items())),
            "positions": {str(s): n for s, n in sorted(acct.positions.items())},
            "proof": {"leaf": leaf.hex(), "index": proof.index, "total": proof.total,
                      "leaf_hash": proof.leaf_hash.hex(), "aunts": [a.hex() for a in proof.aunts],
                      "accounts_root": accounts_root.hex(), "globals_root": globals_root.hex()}})

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.node.status())

    async def health(self, request: web.Request) -> web.Response:
        reason = self.node.unhealthy()
        if reason:
            return web.json_response({"healthy": False, "reason": reason}, status=503)
        return web.json_response({"healthy": True})
