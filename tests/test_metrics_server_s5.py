"""The metrics port under strangers holding connections open (review s5: 300 half-sent requests
kept 300 threads, none ever timed out)."""
import socket
import threading
import time
import types
import urllib.request

from consensus.metrics import NodeMetrics, _Quiet, _Server


def _threads(server):
    return sum(1 for t in threading.enumerate() if t.is_alive() and t.name.startswith("Thread-")
               and getattr(t, "_target", None) == server.process_request_thread)


def _hold(server, port: int, held: list, n: int) -> None:
    """n connections from 127.0.0.1, each with a request never finished (into held), and a wait
    until the server has threaded as many as it takes."""
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finished
        held.append(s)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _threads(server) < _Server.MAX_CONNECTIONS:
        time.sleep(0.05)


def test_half_sent_requests_hold_at_most_max_connections_threads():
    metrics = NodeMetrics(types.SimpleNamespace(mempool={}), "cpu", "test", "accel")
    server = metrics.serve(("127.0.0.1", 0))
    port = server.server_address[1]
    held = []
    try:
        _hold(server, port, held, 3 * _Server.MAX_CONNECTIONS)
        time.sleep(0.3)  # every connection accepted by now; the surplus closed, not threaded
        assert _threads(server) == _Server.MAX_CONNECTIONS
        n = _Server.MAX_CONNECTIONS
        for s in held[n:]:  # accepted in order: past the first n, closed at once
            s.settimeout(5)
            assert s.recv(1) == b""
        for s in held[:n]:  # the first n wait for the rest of their request...
            s.settimeout(0.1)
            try:
                s.recv(1)
                raise AssertionError("a connection within the bound was closed at once")
            except socket.timeout:
                pass
        for s in held[:n]:  # ...until the idle timeout closes them
            s.settimeout(_Quiet.timeout + 10)
            assert s.recv(1) == b""
    finally:
        for s in held:
            s.close()
    # the slots come back once the holders are gone, and metrics are served again
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _threads(server) > 0:
        time.sleep(0.05)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    assert b"accel_committed_height" in body
    server.shutdown()
    server.server_close()



def test_one_address_holding_every_slot_does_not_keep_a_scraper_out():
    """One address holds every slot with half-sent requests (and could reconnect each time the
    deadline cuts them): a scrape from another address was closed at once, first come first
    served. Now a site holding fewer than the heaviest less one takes the place of the heaviest's
    oldest connection, which is cut; the slots stay at MAX_CONNECTIONS."""
    metrics = NodeMetrics(types.SimpleNamespace(mempool={}), "cpu", "test", "accel")
    server = metrics.serve(("127.0.0.1", 0))
    port = server.server_address[1]
    held = []
    try:
        _hold(server, port, held, _Server.MAX_CONNECTIONS)
        assert _threads(server) == _Server.MAX_CONNECTIONS
        scraper = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0))
        scraper.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        body = b""
        while chunk := scraper.recv(65536):
            body += chunk
        scraper.close()
        assert b"200 OK" in body.split(b"\r\n")[0] and b"accel_committed_height" in body
        held[0].settimeout(5)
        assert held[0].recv(1) == b""  # the heaviest address's oldest connection, cut for it
        assert server._open <= _Server.MAX_CONNECTIONS
    finally:
        for s in held:
            s.close()
        server.shutdown()
        server.server_close()
