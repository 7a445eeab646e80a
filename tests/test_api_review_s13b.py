"""s13 second API review (/tmp/s13/api2/report.md): a request's body was parsed and verified
unchecked (the WorkBudget was checked at its head only); displaced and idle connections whose
client did not read stayed open, uncounted; a body trickled in small pieces was almost
uncharged and never stopped; /health, never refused, was charged to every client's total."""
import asyncio
import contextlib
import hashlib
import json
import re
import socket

from aiohttp import web_protocol
from nacl.signing import SigningKey

from consensus import client as cl
from consensus import rpc as rpc_module
from tests.test_api_review_s11 import _serve


def _api(tmp_path, scenario, **limits):
    """scenario(rpc, port) on a fresh validator's API (port 0), with the runner closed after."""
    return _serve(tmp_path, lambda rpc: scenario(rpc, rpc.bound_port()), **limits)


def _fake_clock(rpc) -> dict:
    clock = {"t": 0.0}
    rpc.clock = lambda: clock["t"]
    return clock


async def _until(predicate):
    for _ in range(500):  # a bound on the wait, not a timed assertion
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


async def _status(r) -> int | None:
    """An answer's status (its body read), or None if the connection closed without one."""
    try:
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    await asyncio.wait_for(r.readexactly(int(re.search(rb"Content-Length: (\d+)", head).group(1))), 10)
    return int(head.split()[1])


async def _get(port, path, source):
    r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    w.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    try:
        return await _status(r)
    finally:
        w.close()


def _post_head(path: str, length: int) -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (path.encode(), length))


# ---- 1. a body is checked again once read ----------------------------------------------------------------
def test_bodies_sent_after_their_heads_are_checked_again_before_their_work(tmp_path):
    """One address sent K heads while its share was full (each checked and admitted), then the K
    bodies: all K were parsed and submitted (20 of 20, 2 s of the loop against a 0.2 s burst), and
    another address was refused /status. Now a body is checked again once read, before it is
    parsed: the share's burst is served (2 submissions of 0.1 s, a third if it refilled), the rest
    429, and the other address is served."""
    k = 10

    async def scenario(rpc, port):
        clock, real = _fake_clock(rpc), rpc._submit_now

        def costly(items, client="?"):
            clock["t"] += 0.1  # a batch of bad signatures
            return real(items, client)
        rpc._submit_now = costly
        body = json.dumps(cl.encode_tx(cl.register(SigningKey(bytes(32))))).encode()
        conns = []
        for _ in range(k):
            r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
            w.write(_post_head("/broadcast_tx_sync", len(body)))
            await w.drain()
            conns.append((r, w))
        admitted = await _until(lambda: rpc.body_bytes_in_flight == k * len(body))
        for _, w in conns:
            w.write(body)
        codes = [await _status(r) for r, _ in conns]
        for _, w in conns:
            w.close()
        return admitted, codes, await _get(port, "/status", "127.0.0.3")
    admitted, codes, other = _api(tmp_path, scenario, submit_share_s=0.1, submit_total_s=0.4)
    assert admitted
    assert 2 <= codes.count(200) <= 3 and codes.count(429) == k - codes.count(200), codes
    assert other == 200


# ---- 2. displaced and idle connections go, even when their client does not read -------------------------
async def _not_reading(port, source, raw):
    """A connection that sends its requests and never reads the answers."""
    loop = asyncio.get_running_loop()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.bind((source, 0))
    s.setblocking(False)
    await loop.sock_connect(s, ("127.0.0.1", port))
    await loop.sock_sendall(s, raw)
    return s


def _tracking_handlers(monkeypatch) -> list:
    """The API's connection handlers, each with a small send buffer (an unread answer stays)."""
    handlers, made = [], rpc_module._Handler.connection_made

    def connection_made(self, transport):
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        handlers.append(self)
        made(self, transport)
    monkeypatch.setattr(rpc_module._Handler, "connection_made", connection_made)
    return handlers


def _txs_request(n: int = 1000) -> bytes:
    body = json.dumps({"hashes": ["0x" + hashlib.sha256(b"%d" % i).hexdigest() for i in range(n)]}).encode()
    return _post_head("/txs", len(body)) + body


def test_a_displaced_connection_whose_client_does_not_read_is_closed(tmp_path, monkeypatch):
    """close() waits for the answers to be read: a displaced connection whose client did not read
    stayed open for ever, no longer counted, with its answers buffered (11 sockets open at
    max_connections 2 after 10 rounds). Now it is closed at once."""
    handlers = _tracking_handlers(monkeypatch)

    async def scenario(rpc, port):
        held = [await _not_reading(port, "127.0.0.2", _txs_request() * 2) for _ in range(2)]
        buffered = await _until(lambda: len(handlers) == 2 and all(
            h.transport is not None and h.transport.get_write_buffer_size() > 0 for h in handlers))
        r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.3", 0))  # displaces the oldest
        gone = await _until(lambda: handlers[0].transport is None)
        out = (buffered, gone, rpc.displaced_connections, rpc.open_connections,
               sum(h.transport is not None for h in handlers))
        w.close()
        for s in held:
            s.close()
        return out
    buffered, gone, displaced, counted, open_ = _api(tmp_path, scenario, max_connections=2, idle_timeout_s=60.0,
                                                     submit_share_s=1000.0, submit_total_s=1000.0)
    assert buffered and displaced == 1
    assert gone and counted == 2 and open_ == 2, (gone, counted, open_)


def test_an_idle_connection_whose_client_does_not_read_is_closed_and_uncounted(tmp_path, monkeypatch):
    """The idle timeout's close() waited for the answers to be read as well: the connection stayed
    open and counted for as long as its client kept them unread."""
    handlers = _tracking_handlers(monkeypatch)

    async def scenario(rpc, port):
        s = await _not_reading(port, "127.0.0.2", _txs_request() * 2)
        buffered = await _until(lambda: handlers and handlers[0].transport is not None
                                and handlers[0].transport.get_write_buffer_size() > 0)
        gone = await _until(lambda: handlers[0].transport is None)
        out = buffered, gone, rpc.idle_closed, rpc.open_connections, dict(rpc.connections)
        s.close()
        return out
    buffered, gone, idle, counted, per_client = _api(tmp_path, scenario, idle_timeout_s=0.5,
                                                     submit_share_s=1000.0, submit_total_s=1000.0)
    assert buffered and idle == 1
    assert gone and counted == 0 and per_client == {}, (gone, counted, per_client)


# ---- 3. reading is charged as it happens; a client out of its share mid-body is no longer read ---------
def test_a_trickled_body_is_charged_per_read_and_no_longer_read_past_the_share(tmp_path):
    """A body sent a byte a segment kept the loop 45 to 98% busy while 0.06 to 0.18 s a second
    was charged (only the parser's time, and only when the request ended), and its client was
    never refused. Now each read is charged at once (measured, plus segment_cost_s for the loop's
    work around it), and once its client would be refused the body is no longer read: a 429, and
    the connection closed. Here each read costs 0.01 s (the clock is fake: the parser's time is
    zero), the share's burst is 0.2 s."""
    async def scenario(rpc, port):
        _fake_clock(rpc)
        rpc.segment_cost_s = 0.01
        r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
        w.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        w.write(_post_head("/txs", 1000) + b"{")
        await _until(lambda: rpc.body_bytes_in_flight == 1000)
        sent = 0
        with contextlib.suppress(ConnectionError):  # (the writes once the API closed the connection)
            for _ in range(400):
                w.write(b" ")
                await w.drain()
                sent += 1
                await asyncio.sleep(0.002)  # a segment each, mostly
                if getattr(rpc, "starved_bodies", 0) or r.at_eof():
                    break
        status = await _status(r)
        closed = await asyncio.wait_for(r.read(), 10) == b""
        w.close()
        return (sent, status, closed, getattr(rpc, "starved_bodies", 0), rpc.work.clients["127.0.0.2"][0],
                rpc.body_bytes_in_flight)
    sent, status, closed, starved, left, in_flight = _api(tmp_path, scenario, submit_share_s=0.1, submit_total_s=0.4)
    assert starved == 1 and status == 429 and closed, (sent, status, starved)
    assert left <= 0.0 and sent < 400 and in_flight == 0, (sent, left, in_flight)


def test_the_parsers_time_is_charged_once(tmp_path, monkeypatch):
    """Every read's time is charged once, whether it carried the head (charged with its request)
    or the body (charged as it came): here each read takes one second of a fake clock and nothing
    else does, so the total is charged exactly one second per read."""
    reads, real = [], web_protocol.RequestHandler.data_received

    async def scenario(rpc, port):
        clock = _fake_clock(rpc)
        rpc.segment_cost_s = 0.0

        def ticking(self, data):
            reads.append(len(data))
            clock["t"] += 1.0
            return real(self, data)
        monkeypatch.setattr(web_protocol.RequestHandler, "data_received", ticking)
        charged, charge = [], rpc.work.charge
        rpc.work.charge = lambda client, seconds: (charged.append(seconds), charge(client, seconds))[1]
        body = json.dumps({"hashes": []}).encode()
        r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
        w.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        w.write(_post_head("/txs", len(body)))
        await _until(lambda: rpc.body_bytes_in_flight == len(body))
        for i in range(len(body)):
            w.write(body[i:i + 1])
            await w.drain()
            await asyncio.sleep(0.002)
        status = await _status(r)
        w.close()
        return status, sum(charged)
    status, charged = _api(tmp_path, scenario, submit_share_s=1000.0, submit_total_s=1000.0)
    assert status == 200 and charged == len(reads), (charged, reads)


# ---- 4. /health is charged to its client only ----------------------------------------------------------
def test_health_and_refusals_are_charged_to_their_client_only(tmp_path, monkeypatch):
    """/health is never refused by the WorkBudget (an orchestrator sharing an address with a heavy
    client still reads it), but its time was taken from every client's total: /health traffic
    alone (1 MB of headers: 0.5 to 0.9 ms each) from a few addresses held the total at zero and
    every other client was refused. The same for requests refused 429: charged to the total, never
    served. Now both are charged to their client's own bucket only. Here every head's read costs
    10 ms of a fake clock; one address is over its share, then sends 80 /status (429) and 80
    /health (2 s of the loop, twice the total's burst); another address's /status is served."""
    real = web_protocol.RequestHandler.data_received

    async def scenario(rpc, port):
        import aiohttp
        clock = _fake_clock(rpc)
        rpc.segment_cost_s = 0.0
        status = rpc.node.status
        rpc.node.status = lambda: (clock.__setitem__("t", clock["t"] + 0.15), status())[1]
        monkeypatch.setattr(web_protocol.RequestHandler, "data_received",
                            lambda self, data: (clock.__setitem__("t", clock["t"] + 0.01), real(self, data))[1])
        base, codes = f"http://127.0.0.1:{port}", []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as s:
            for path in ["/status"] + ["/status", "/health"] * 80:
                async with s.get(base + path) as r:
                    await r.read()
                    codes.append((path, r.status))
        rpc.node.status = status
        return codes, rpc.work.clients["127.0.0.2"][0], await _get(port, "/status", "127.0.0.3")
    codes, mine, other = _api(tmp_path, scenario, submit_share_s=0.05, submit_total_s=0.4)
    assert codes[0] == ("/status", 200)
    assert {c for p, c in codes[1:] if p == "/status"} == {429}
    assert {c for p, c in codes[1:] if p == "/health"} <= {200, 503}
    assert mine < -1.0  # its own bucket was charged the 160 refused and /health requests
    assert other == 200
