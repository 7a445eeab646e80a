"""s13 API review (/tmp/s13/api/report.md): the client API charged only part of a request's loop
time to the WorkBudget and held unfinished bodies in memory without a bound in all; the client
signed with one validator's nonce, reported success when most refused and lost a broadcast's
verdicts on a failed chunk; config keys were accepted and never read; listen hosts, bound
ports and IPv6 URLs were reported badly; tx_heights was copied whole on every block."""
import asyncio
import contextlib
import hashlib
import json
import re
import socket
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from nacl.signing import SigningKey

from accel.config import ConfigError
from consensus import client as cl
from consensus.localnet import write_configs
from consensus.node import NodeConfig, NodeRunner, StartupError
from tests.test_api_review_s11 import _serve, node_log


def _api(tmp_path, scenario, **limits):
    """scenario(rpc, session, base_url) on a fresh validator's API (port 0), with the runner closed after."""
    import aiohttp

    async def with_session(rpc):
        async with aiohttp.ClientSession() as session:
            return await scenario(rpc, session, f"http://127.0.0.1:{rpc.bound_port()}")
    return _serve(tmp_path, with_session, **limits)


def _charges(rpc) -> list:
    seen, real = [], rpc.work.charge
    rpc.work.charge = lambda client, seconds: (seen.append(seconds), real(client, seconds))[1]
    return seen


# ---- 1. every request's loop time charged, every endpoint but /health checked ------------------------
def test_a_requests_whole_handler_time_is_charged_once(tmp_path):
    """/txs's answer (a status per hash, 100 kB of JSON) was 2/3 of its loop time and uncharged;
    GETs were not charged at all. The clock here advances only inside the work a handler does
    (a status per hash, /status, the mempool's checks), so the charge is exact: all of it, once
    (a submission is charged by _submit and not again by _guard)."""
    clock = {"t": 0.0}

    def ticking(fn, seconds):
        def run(*args, **kw):
            clock["t"] += seconds
            return fn(*args, **kw)
        return run

    async def scenario(rpc, s, base):
        rpc.clock = lambda: clock["t"]
        rpc.segment_cost_s = 0.0  # (the fixed cost charged per read, s13b: the charge here is exact)
        rpc._tx_status = ticking(rpc._tx_status, 1.0)
        rpc.node.status = ticking(rpc.node.status, 3.0)
        rpc._submit_now = ticking(rpc._submit_now, 5.0)
        charged, out = _charges(rpc), {}
        hashes = ["0x" + hashlib.sha256(b"%d" % i).hexdigest() for i in range(10)]
        for name, call in (("txs", s.post(base + "/txs", json={"hashes": hashes})),
                           ("status", s.get(base + "/status")),
                           ("tx", s.get(base + "/tx?hash=" + hashes[0])),
                           ("submit", s.post(base + "/broadcast_tx_sync",
                                             json=cl.encode_tx(cl.register(SigningKey(bytes(32))))))):
            before = len(charged)
            async with call as r:
                await r.read()
                out[name] = (r.status, sum(charged[before:]))
        return out
    out = _api(tmp_path, scenario, submit_share_s=1000.0, submit_total_s=1000.0)
    assert out == {"txs": (200, 10.0), "status": (200, 3.0), "tx": (404, 1.0), "submit": (200, 5.0)}, out


def test_a_client_over_its_share_is_refused_every_endpoint_but_health(tmp_path):
    """GET /status, /tx, /account and POST /txs were served to a client over its share of the
    loop (only a body's parse and a submission were checked): 24 addresses at the request rate
    took half the loop. Now every request but /health is checked before any work."""
    async def scenario(rpc, s, base):
        clock = {"t": 0.0}
        rpc.clock = lambda: clock["t"]
        status = rpc.node.status
        rpc.node.status = lambda: (clock.__setitem__("t", clock["t"] + 1.0), status())[1]
        out = {}
        async with s.get(base + "/status") as r:
            out["first"] = r.status
        for name, call in (("status", s.get(base + "/status")), ("tx", s.get(base + "/tx?hash=" + "00" * 32)),
                           ("account", s.get(base + "/account?key=" + "00" * 32)),
                           ("txs", s.post(base + "/txs", json={"hashes": []})), ("health", s.get(base + "/health"))):
            async with call as r:
                out[name] = (r.status, "share of this validator" in (await r.json(content_type=None)).get("error", ""),
                             r.headers.get("Retry-After") is not None)
        return out
    out = _api(tmp_path, scenario, submit_share_s=0.01, submit_total_s=1000.0)
    refused = (429, True, True)
    assert out["first"] == 200 and out["health"][0] in (200, 503) and not out["health"][1]
    assert [out[k] for k in ("status", "tx", "account", "txs")] == [refused] * 4, out


# ---- 2. request bodies being read: bounded in all, fairly -----------------------------------------------
async def _start_body(port: int, source: str, length: int, sent: bytes):
    r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    w.write(b"POST /txs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (length, sent))
    await w.drain()
    return r, w


async def _answer(r) -> tuple[bytes, bytes]:
    """An answer's head and body (the connection may stay open: aiohttp reads a body it refused,
    unread, for its lingering close, into a bounded buffer)."""
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    return head, await asyncio.wait_for(r.readexactly(length), 10)


async def _until(predicate):
    for _ in range(500):  # a bound on the wait, not a timed assertion
        if predicate():
            return
        await asyncio.sleep(0.01)


def test_bodies_being_read_are_bounded_in_all_and_shared_fairly(tmp_path):
    """Every connection could hold a body one byte short of max_body_bytes until idle_timeout_s:
    60 connections took 75 MiB, 1.3 GiB at 1,024. Now the declared lengths being read are bounded
    (max_body_bytes_in_flight): past it a 503 with Retry-After, unread; a client reading less
    than the heaviest takes the place of that one's oldest body (else one address's 64 slow
    bodies kept everyone's out); what a request reserved is released however it ends."""
    body = json.dumps({"hashes": []}).encode().ljust(1000)

    async def scenario(rpc, s, base):
        port, out = rpc.bound_port(), {}
        held = [await _start_body(port, "127.0.0.1", 1000, b"{") for _ in range(3)]
        await _until(lambda: rpc.body_bytes_in_flight == 3000)
        out["held"] = rpc.body_bytes_in_flight
        r, w = await _start_body(port, "127.0.0.1", 1000, b"{")  # the same address: no room, refused unread
        head, answer = await _answer(r)
        out["same"] = (head.split()[1], b"Retry-After" in head, b"max_body_bytes_in_flight" in answer)
        w.close()
        r, w = await _start_body(port, "127.0.0.2", 1000, body)  # another: in place of the oldest body
        out["other"] = (await _answer(r))[0].split()[1]
        w.close()
        out["oldest closed"] = await asyncio.wait_for(held[0][0].read(), 10)
        out["displaced"] = rpc.displaced_connections
        for _, w in held:
            w.close()
        await _until(lambda: rpc.body_bytes_in_flight == 0)
        out["after"] = rpc.body_bytes_in_flight
        return out
    out = _api(tmp_path, scenario, max_body_bytes=1000, max_body_bytes_in_flight=3000)
    assert out["held"] == 3000 and out["same"] == (b"503", True, True), out
    assert out["other"] == b"200" and out["oldest closed"] == b"" and out["displaced"] == 1, out
    assert out["after"] == 0


@pytest.mark.parametrize("lines, error", [
    ("max_body_bytes_in_flight = 1000\n", "must be at least [rpc] max_body_bytes"),
    ("max_body_bytes_in_flight = 0\n", "max_body_bytes_in_flight must be"),
])
def test_max_body_bytes_in_flight_is_an_rpc_key_checked_at_load(tmp_path, lines, error):
    path = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, load="none", rpc_port=0)[0]
    path.write_text(path.read_text().replace("[rpc]\n", "[rpc]\n" + lines))
    with pytest.raises(ConfigError, match=re.escape(error)) as err:
        NodeConfig.load(path)
    line = int(re.match(rf"{re.escape(str(path))}:(\d+):", str(err.value)).group(1))
    assert path.read_text().splitlines()[line - 1].startswith("max_body_bytes_in_flight")
    path.write_text(path.read_text().replace(lines, "max_body_bytes_in_flight = 4194304\n"))
    assert NodeConfig.load(path).rpc_limits["max_body_bytes_in_flight"] == 4 << 20


# ---- 3. the nonce of f + 1 validators; `accel tx` fails when more than f refuse -------------------------
def _validator(nonce=None, verdict=("", True)):
    """A validator's API on a thread: /account answers nonce (None: not reachable, a 503),
    /broadcast_txs the verdict (reason, accepted) for every transaction."""
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, code, data):
            data = json.dumps(data).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if nonce is None:
                return self._answer(503, {"error": "down"})
            key = self.path.split("key=0x")[1]
            self._answer(200, {"key": key, "nonce": nonce})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self._answer(200, {"results": [{"hash": hashlib.sha256(bytes.fromhex(t["tx"][2:])).hexdigest(),
                                            "code": 0 if verdict[1] else 1, "accepted": verdict[1],
                                            "reason": verdict[0]} for t in body["txs"]]})

        def log_message(self, *args):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@contextlib.contextmanager
def _validators(*specs):
    servers = [_validator(*spec) for spec in specs]
    try:
        yield [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


@pytest.mark.parametrize("nonces, want", [
    ((3, 5, 5, 5), 5),      # the first lags (catching up): its 3 was signed, and refused as stale by the rest
    ((100, 5, 5, 5), 5),    # one faulty validator cannot push it ahead
    ((0, 5, 5, 5), 5),      # nor hold it back
    ((9, 8, 7, 6, 5, 5, 5), 7),  # n = 7, f = 2: the third highest
    ((None, 4, None, None), 4),  # fewer than f + 1 answered: the lowest of those that did
])
def test_the_nonce_is_the_f_plus_1th_highest_of_the_validators(nonces, want):
    with _validators(*[(n,) for n in nonces]) as urls:
        assert cl.Client(urls, timeout=5).next_nonce(SigningKey(bytes(32))) == want


def test_the_nonce_with_no_validator_answering_is_an_error():
    with _validators((None,), (None,)) as urls, pytest.raises(cl.RpcError, match="503"):
        cl.Client(urls, timeout=5).next_nonce(SigningKey(bytes(32)))


@pytest.mark.parametrize("verdicts, code", [
    ((("", True), ("stale: nonce", False), ("stale: nonce", False), ("stale: nonce", False)), 1),
    ((("", True), ("", True), ("", True), ("stale: nonce", False)), 0),  # f = 1 refusal
    ((("", True), ("mempool full (9 transactions)", False), ("mempool full (9 transactions)", False),
      ("mempool full (9 transactions)", False)), 0),  # transient: it stays pending where it was taken
])
def test_accel_tx_fails_when_more_than_f_validators_refuse_for_good(tmp_path, capsys, verdicts, code):
    """One validator's acceptance was reported as success (exit 0) while three refused the
    transaction as stale: it could never commit."""
    from accel.cli import main
    cl.write_key(tmp_path / "k.json", SigningKey(bytes(32)))
    with _validators(*[(5, v) for v in verdicts]) as urls:
        got = main(["tx", "--node", ",".join(urls), "--chain-id", "1", "deposit", "--key", str(tmp_path / "k.json"),
                    "--asset", "USD", "--amount", "10"])
    out, err = capsys.readouterr()
    assert got == code and json.loads(out)["accepted"], (got, err)
    assert ("more than f = 1: it may never commit" in err) == (code == 1) and err.count("\n") == 1 + code, err


# ---- 4. a failed chunk keeps the verdicts of those before it --------------------------------------------
def test_broadcast_names_the_verdicts_given_and_the_transactions_unsent():
    calls = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append(len(body["txs"]))
            if len(calls) == 1:
                code, data = 200, {"results": [{"hash": hashlib.sha256(bytes.fromhex(t["tx"][2:])).hexdigest(),
                                                "code": 0, "accepted": True, "reason": ""} for t in body["txs"]]}
            else:
                code, data = 400, {"error": "no"}
            data = json.dumps(data).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    key = SigningKey(bytes(32))
    try:
        with pytest.raises(cl.RpcError) as err:
            cl.Client(f"http://127.0.0.1:{server.server_address[1]}", timeout=5, batch=2).broadcast(
                [cl.deposit(key, n, "USD", 1) for n in range(5)])
    finally:
        server.shutdown()
        server.server_close()
    assert calls == [2, 2] and [r["accepted"] for r in err.value.results] == [True, True]
    assert err.value.unsent == [2, 3, 4]


# ---- 5. keys the app or load would not read -------------------------------------------------------------
@pytest.mark.parametrize("app, load, line, key", [
    ("kv", "none", 'load_file = "stream.bin"', "load_file"),
    ("kv", "builtin", 'load_file = "stream.bin"', "load_file"),
    ("clearing", "none", 'load_file = "stream.bin"', "load_file"),
    ("kv", "none", "genesis_accounts = 1000", "genesis_accounts"),
    ("kv", "none", "mark_grace_ms = 100.0", "mark_grace_ms"),
    ("kv", "none", "chain_id = 7", "chain_id"),
    ("clearing", "none", "crash_after_blocks = 2", "crash_after_blocks"),
    ("clearing", "none", "load_seed = 9", "load_seed"),
])
def test_a_key_this_app_and_load_would_not_read_is_refused_at_its_line(tmp_path, app, load, line, key):
    path = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, app=app, load=load)[0]
    text = re.sub(rf"\n{key} = [^\n]*", "", path.read_text())
    path.write_text(text.replace("[node]\n", f"[node]\n{line}\n", 1))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:2: \[node\] {key} = .* would not be read"):
        NodeConfig.load(path)


def test_rpc_limits_without_rpc_listen_are_refused_and_used_keys_load(tmp_path):
    path = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, load="none")[0]
    text = path.read_text()
    path.write_text(text + "\n[rpc]\nmax_body_bytes = 5000\n")
    with pytest.raises(ConfigError, match=r"\[rpc\] max_body_bytes = 5000 would not be read: only with \[rpc\] listen"):
        NodeConfig.load(path)
    path.write_text(text + '\n[rpc]\nlisten = ""\nmax_body_bytes = 1048576\n')  # the default, as the example spells it
    assert NodeConfig.load(path).rpc is None
    # read: a clearing validator generating its load reads all of them
    (tmp_path / "b").mkdir()
    path = write_configs(tmp_path / "b", 4, 10, "software", 0.0, 1000.0)[0]
    text = re.sub(r"\nload_seed = [^\n]*", "", path.read_text())
    path.write_text(text.replace("[node]\n", "[node]\ncrash_after_blocks = 2\nload_seed = 9\n"
                                             "genesis_accounts = 10\nchain_id = 7\nmark_grace_ms = 100.0\n", 1))
    cfg = NodeConfig.load(path)
    assert (cfg.crash_after_blocks, cfg.load_seed, cfg.genesis_accounts, cfg.chain_id) == (2, 9, 10, 7)


def test_chain_id_is_refused_for_a_load_file_that_is_read(tmp_path):
    """chain_id was refused "because of load_file" with load = "none", which never reads it: the
    load_file is what is refused there."""
    path = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0)[0]
    text = path.read_text().replace("[node]\n", '[node]\nchain_id = 7\nload_file = "s.bin"\n', 1)
    path.write_text(text)
    with pytest.raises(ConfigError, match=r":2: \[node\] chain_id 7: load_file's transactions are signed for chain 1"):
        NodeConfig.load(path)
    path.write_text(text.replace('load = "builtin"', 'load = "none"'))
    with pytest.raises(ConfigError, match=r":3: \[node\] load_file = 's.bin' would not be read"):
        NodeConfig.load(path)


# ---- 6. a listen host that cannot be used -----------------------------------------------------------------
@pytest.mark.parametrize("table", ["node", "rpc", "metrics"])
def test_a_listen_host_no_name_can_be_is_refused_at_its_line(tmp_path, table):
    path = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, load="none", rpc_port=0, metrics_port=0)[0]
    lines = path.read_text().splitlines()
    start = lines.index(f"[{table}]")
    at = next(i for i in range(start, len(lines)) if lines[i].startswith("listen = "))
    lines[at] = f'listen = "{"a" * 64}:0"'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as err:
        NodeConfig.load(path)
    assert str(err.value).startswith(f"{path}:{at + 1}: [{table}] listen: ") and "is not a host name" in str(err.value)


def test_a_listen_that_fails_with_a_value_error_is_one_line_naming_its_key():
    """The peers' transport let the idna codec's UnicodeError through (only OSError was caught):
    'accel: error: encoding with 'idna' codec failed', naming neither the file nor the key."""
    async def start():
        "x".encode("idna")
        raise UnicodeError("label too long")
    me = types.SimpleNamespace(cfg=types.SimpleNamespace(path="v.toml", index=0))
    with pytest.raises(StartupError, match=r"v\.toml: cannot listen on h:1 \(\[node\] listen, peers\): label too long"):
        asyncio.run(NodeRunner._listen(me, "peers", "[node] listen", ("h", 1), start))


# ---- 7. the ports bound, IPv6 hosts in brackets ---------------------------------------------------------
def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_a_node_logs_the_ports_it_took_and_brackets_ipv6_hosts(tmp_path):
    """[metrics] listen on port 0 was logged as ':0/metrics', and an IPv6 host as http://:::9464."""
    host = "::1" if _ipv6() else "127.0.0.1"
    shown = "[::1]" if host == "::1" else host
    config = write_configs(tmp_path, 4, 10, "software", 0.0, 300.0, load="none", rpc_port=0, metrics_port=0)[0]
    text = re.sub(r'(\[(?:metrics|rpc)\]\nlisten = )"[^"]*"', rf'\1"[{host}]:0"', config.read_text())
    config.write_text(text)
    lines = node_log(config, "client API on")  # (the metrics and peers lines come before it)
    for what, tail in (("metrics on http://", "/metrics"), ("client API on http://", ""), ("peers on ", "")):
        (line,) = [line for line in lines if what in line]
        found = re.search(re.escape(what) + r"(\S+):(\d+)" + re.escape(tail), line)
        assert found and int(found.group(2)) > 0, line
        if what != "peers on ":
            assert found.group(1) == shown, line


# ---- 8. the client's seconds -----------------------------------------------------------------------------
@pytest.mark.parametrize("call", [
    lambda c: c.wait_committed(["00" * 32], timeout=float("nan")),
    lambda c: c.wait_committed(["00" * 32], timeout=-1),
    lambda c: c.wait_committed(["00" * 32], timeout=float("inf")),
    lambda c: c.wait_committed(["00" * 32], poll=0),
    lambda c: c.wait_committed(["00" * 32], poll=float("nan")),
    lambda c: c.wait_healthy(timeout=float("nan")),
    lambda c: c.wait_healthy(timeout=True),
])
def test_the_clients_seconds_are_finite_before_any_request(call, monkeypatch):
    """wait_committed(timeout=nan) never timed out (nan compares false), poll=-1 was time.sleep's
    error after a request, poll=0 polled without a pause. (A pause here fails the test: with a
    NaN deadline it was the first of endless ones.)"""
    def no_pause(seconds):
        raise AssertionError(f"paused {seconds} s: the bad argument was not refused first")
    monkeypatch.setattr(cl.time, "sleep", no_pause)
    with pytest.raises(ValueError, match="must be a finite number of seconds"):
        call(cl.Client("http://127.0.0.1:9", timeout=1))


# ---- 9. the committed-transaction index ------------------------------------------------------------------
def test_the_tx_index_evicts_the_oldest_without_copying_it(monkeypatch):
    """Once full (1M hashes), _index copied every key (list(tx_heights)) on every block."""
    from consensus import node as node_mod

    class Counted(dict):
        read = 0

        def __iter__(self):
            for k in super().__iter__():
                Counted.read += 1
                yield k
    monkeypatch.setattr(node_mod, "TX_INDEX", 1000)
    heights = Counted((bytes([i % 256, i // 256]) * 16, 1) for i in range(1000))
    class Txs:
        bodies = types.SimpleNamespace(item=lambda i: b"tx%d" % i)

        def __len__(self):
            return 3
    block = types.SimpleNamespace(txs=Txs(), height=2)
    NodeRunner._index(types.SimpleNamespace(tx_heights=heights), block)
    assert len(heights) == 1000 and Counted.read == 3
    assert all(hashlib.sha256(b"tx%d" % i).digest() in heights for i in range(3))
