"""s11 API review (/tmp/s11/api/report.md), the client API's and client's findings: reading a
request body was uncharged loop time (a deflate bomb decompressed, 1-byte chunks), the metrics
server was IPv4-only, the client took one validator's word for a network's verdict, and its
arguments let tracebacks and misleading errors through."""
import asyncio
import contextlib
import logging
import zlib

import pytest

from consensus.localnet import write_configs
from consensus.node import NodeConfig, NodeRunner
from consensus.rpc import Rpc


def _serve(tmp_path, scenario):
    """scenario(rpc) on a fresh validator's API (port 0), with the runner closed after."""
    logging.getLogger("consensus").setLevel(logging.ERROR)
    cfg = NodeConfig.load(write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, load="none", rpc_port=0)[0])
    runner = NodeRunner(cfg)

    async def main():
        rpc = Rpc(runner, ("127.0.0.1", 0))
        await rpc.start()
        try:
            return await scenario(rpc)
        finally:
            await rpc.stop()
    try:
        return asyncio.run(main())
    finally:
        runner.close()


async def _send(port: int, head: bytes, body: bytes) -> bytes:
    """The answer's status line, read while the body is written as a client's socket writes it
    (the server may answer, and close, before all of it went)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)

    async def write():
        with contextlib.suppress(ConnectionError):
            w.write(head)
            for i in range(0, len(body), 65536):
                w.write(body[i:i + 65536])
                await w.drain()
    writer = asyncio.create_task(write())
    try:
        return await asyncio.wait_for(r.readline(), 30)
    finally:
        await writer
        w.close()


def _deflate_bomb() -> bytes:
    c = zlib.compressobj(9)
    block = b" " * (1 << 20)
    return b"".join([c.compress(block) for _ in range(1000)] + [c.flush()])  # 1 GiB of spaces in 1 MB


@pytest.mark.parametrize("path", ["/txs", "/health"])
def test_a_compressed_body_is_never_decompressed(tmp_path, monkeypatch, path):
    """Content-Encoding: deflate over 1 MB of zlib (1 GiB of spaces): aiohttp decompressed it,
    all of it even after the 413 (its lingering close read the rest for 10 s), 1 to 4 s of the
    loop per request, charged to nothing; sent to /health, which reads no body, 1.1 s. Now no
    body is ever decompressed: /txs refuses it in one line without reading it."""
    import zlib as zlib_module
    from aiohttp import http_parser
    inflated = []
    real = zlib_module.decompressobj

    def counting(*args, **kwargs):
        inflated.append(args)
        return real(*args, **kwargs)
    monkeypatch.setattr(zlib_module, "decompressobj", counting)
    if hasattr(http_parser, "ZLibDecompressor"):  # aiohttp's own wrapper, where it has one
        monkeypatch.setattr(http_parser, "ZLibDecompressor",
                            lambda *a, **k: inflated.append(a) or (_ for _ in ()).throw(AssertionError("inflated")))
    bomb = _deflate_bomb()
    head = (b"%s %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: deflate\r\n"
            b"Content-Length: %d\r\n\r\n" % (b"POST" if path == "/txs" else b"GET", path.encode(), len(bomb)))

    async def scenario(rpc):
        return await _send(rpc.bound_port(), head, bomb)
    status = _serve(tmp_path, scenario)
    assert not inflated
    if path == "/txs":
        assert status.split()[1] == b"400", status


def test_a_body_in_chunks_is_refused_and_reading_is_charged(tmp_path, monkeypatch):
    """A body in 1-byte chunks (Transfer-Encoding: chunked) cost a Python call per byte: 1 MiB of
    JSON, 6 MB on the wire, took 0.6 s of the loop, none of it charged to the WorkBudget. Now a
    body in chunks is refused (411) and the connection closed unread; and the parser's time for
    any request's bytes is charged to the client's WorkBudget. The clock here ticks a second a
    reading, so each call of the parser is charged one second."""
    from consensus import rpc as rpc_module
    payload = b'{"hashes": [' + b" " * ((1 << 20) - 20) + b"]}"
    chunked = b"".join(b"1\r\n" + payload[i:i + 1] + b"\r\n" for i in range(len(payload))) + b"0\r\n\r\n"
    head = b"POST /txs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    plain = b"POST /txs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload)
    parses = []
    real_data_received = rpc_module._Handler.data_received
    monkeypatch.setattr(rpc_module._Handler, "data_received",
                        lambda self, data: (parses.append(len(data)), real_data_received(self, data)))

    async def scenario(rpc):
        ticks, charged = iter(range(10**9)), []
        rpc.clock = lambda: float(next(ticks))
        real = rpc.work.charge
        rpc.work.charge = lambda client, seconds: (charged.append(seconds), real(client, seconds))
        answered = await _send(rpc.bound_port(), plain, payload)
        calls = len(parses)
        rpc.work.charge = real
        rpc.work.clients.clear()
        rpc.work.all[0] = 1e9
        return answered, calls, sum(charged), await _send(rpc.bound_port(), head, chunked)
    answered, calls, charged, refused = _serve(tmp_path, scenario)
    assert answered.split()[1] == b"200", answered
    # each parser call charged a second, besides the JSON's parse and the hashes' decoding
    assert calls >= 2 and charged >= calls + 2, (calls, charged)
    assert refused.split()[1] == b"411", refused


# ---- 4. the metrics server on IPv6 ----------------------------------------------------------------
@pytest.mark.parametrize("on_address", [False, True])
def test_an_ipv6_testnet_validator_serves_its_metrics(tmp_path, on_address):
    """`accel testnet --hosts ::1,::2,...` writes [metrics] listen = ":::PORT" (with
    --listen-on-address "[::1]:PORT"), which loads; the metrics server (wsgiref, AF_INET only)
    then stopped the validator at start: "Address family for hostname not supported"."""
    import socket
    import urllib.request

    from consensus.localnet import write_network
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    paths = write_network(tmp_path / "net", ["::1", "::2", "::3", "::4"], port=port + 1 if port < 60000 else 20001,
                          rpc_port=None, metrics_port=port, data_root=str(tmp_path / "data"),
                          listen_on_address=on_address, validation="software")
    cfg = NodeConfig.load(paths[0])
    assert cfg.metrics[0] in ("::", "::1")
    runner = NodeRunner(cfg)
    try:
        server = runner.metrics.serve(cfg.metrics)  # what run_node does before asyncio.run
        try:
            with urllib.request.urlopen(f"http://[::1]:{server.server_address[1]}/metrics", timeout=10) as resp:
                assert resp.status == 200 and b"accel_" in resp.read()
        finally:
            server.shutdown()
            server.server_close()
    finally:
        runner.close()
