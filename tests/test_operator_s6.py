"""Session 6 review of the front door (the client API, the Python client, the operator's
commands) as a new operator and as an attacker: every test here failed before its fix."""
import asyncio
import json
import re
import socket
import sys
import threading
import tomllib
from pathlib import Path

import pytest
from nacl.signing import SigningKey

sys.path.insert(0, str(Path(__file__).parent))
from test_rpc import _serve  # noqa: E402

from consensus import client as cl  # noqa: E402

K1, K2 = SigningKey(bytes(range(32))), SigningKey(bytes(range(1, 33)))


# ---- the Python client against a hostile or broken server -----------------------------------------
class _Hostile:
    """A TCP server answering every connection with the same bytes, whatever it was asked."""

    def __init__(self, answer: bytes):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.answer = answer
        threading.Thread(target=self._run, daemon=True).start()
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                conn.settimeout(2)
                conn.recv(65536)
                conn.sendall(self.answer)
            except OSError:
                pass
            conn.close()

    def close(self):
        self.sock.close()


def _http(status: str, body: bytes, headers: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n%s" % (status.encode(), len(body), headers, body)


DEEP = b"[" * 100_000 + b"]" * 100_000
HOSTILE_ANSWERS = {
    "JSON nested past the recursion limit": _http("200 OK", DEEP),
    "an error whose JSON is nested past the recursion limit": _http("500 Oops", DEEP),
    "not an HTTP status line": b"HELLO\r\n\r\n",
    "more than 100 headers": b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n{}",
    "a header line over 64 KiB": b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n{}",
    "a broken chunked body": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "a redirect to ftp": _http("302 Found", b"", b"Location: ftp://127.0.0.1:1/x\r\n"),
    "a redirect to another http server": _http("307 Temporary Redirect", b"", b"Location: http://127.0.0.1:1/x\r\n"),
    "a status whose hash is a list": _http("200 OK", json.dumps({"results": [{"status": "committed", "hash": [1]},
                                                                             {"hash": {}}], "hash": [2],
                                                                 "status": "committed"}).encode()),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_ANSWERS))
def test_the_client_raises_only_rpc_error_whatever_the_server_answers(name):
    """Found by answering the client from a hostile server: JSON nested 100,000 deep raised
    RecursionError, a bad status line, too many or too long headers and a broken chunked body
    raised http.client's exceptions (BadStatusLine, HTTPException, LineTooLong, IncompleteRead),
    an error answer that failed while read raised ConnectionResetError, a status whose hash was
    a list raised TypeError out of wait_committed, and a 302 to ftp:// was followed (urllib opens
    ftp, which Client refuses as a URL). Now each is one RpcError naming the URL; redirects are
    never followed."""
    server = _Hostile(HOSTILE_ANSWERS[name])
    try:
        c = cl.Client(server.url, timeout=5)
        calls = {"status": c.status, "health": c.health, "account": lambda: c.account(K1),
                 "tx": lambda: c.tx("00" * 32), "statuses": lambda: c.statuses(["00" * 32]),
                 "wait_committed": lambda: c.wait_committed(["00" * 32], timeout=0.5, poll=0.05),
                 "broadcast": lambda: c.broadcast([cl.register(K1)]), "submit": lambda: c.submit(cl.register(K1))}
        for call, fn in calls.items():
            if name in ("a status whose hash is a list",) and call in ("status", "health", "account", "submit"):
                continue  # a JSON object: what these return as is
            with pytest.raises(cl.RpcError) as err:
                fn()
            text = str(err.value)
            assert text.startswith(server.url) and "\n" not in text and len(text) < 600, (call, text)
            if "redirect" in name:
                assert "redirect" in text, (call, text)
    finally:
        server.close()


def test_the_client_checks_each_verdict_and_status_names_what_it_asked_about():
    """A validator answering /broadcast_txs or /txs about other hashes than the client's
    transactions (or a committed status without an integer height) was taken as the answer:
    wait_committed would report a height for a transaction never committed. Now the client
    computes each hash itself and an answer about anything else is an RpcError."""
    tx = cl.register(K1)
    digest = __import__("hashlib").sha256(tx[0]).hexdigest()
    other = "11" * 32
    bad = {
        "broadcast": {"results": [{"hash": other, "accepted": True, "code": 0, "reason": ""}]},
        "broadcast accepted not bool": {"results": [{"hash": digest, "accepted": "yes", "code": 0, "reason": ""}]},
        "statuses": {"results": [{"hash": other, "status": "committed", "height": 5}]},
        "statuses height": {"results": [{"hash": digest, "status": "committed", "height": "5"}]},
        "tx": {"hash": other, "status": "committed", "height": 5},
    }
    for name, answer in bad.items():
        server = _Hostile(_http("200 OK", json.dumps(answer).encode()))
        try:
            c = cl.Client(server.url, timeout=5)
            fn = {"broadcast": lambda: c.broadcast([tx]), "statuses": lambda: c.wait_committed([digest], timeout=0.5),
                  "tx": lambda: c.tx(digest)}[name.split()[0]]
            with pytest.raises(cl.RpcError):
                fn()
        finally:
            server.close()
    good = _Hostile(_http("200 OK", json.dumps({"results": [{"hash": digest, "status": "committed",
                                                              "height": 7}]}).encode()))
    try:
        assert cl.Client(good.url).wait_committed([digest], timeout=1) == {digest: 7}
    finally:
        good.close()


# ---- files the operator's commands write ---------------------------------------------------------
@pytest.mark.parametrize("odd", ['quo"te', "back\\slash", 'x"\nload = "builtin', "tab\there", "ünï"])
def test_testnet_and_localnet_files_load_whatever_the_directory_is_called(tmp_path, odd):
    """Found by `accel testnet --data-root 'x"y'`: the path went into the TOML file between
    quotes as it was, so every node<i>.toml failed to load ("Expected newline ... line 6"), and a
    data root holding a newline and a quote wrote keys of its own choosing (load = "builtin").
    `accel localnet --dir` wrote its paths the same way. Now the paths are TOML strings (escaped)
    and read back as given; a data root with control characters, or empty (the store would have
    gone to /node0), is refused in one line."""
    from consensus.localnet import write_configs, write_network
    from consensus.node import NodeConfig
    control = any(ord(c) < 0x20 for c in odd)
    if control:
        with pytest.raises(ValueError, match="--data-root"):
            write_network(tmp_path / "net", ["a", "b", "c", "d"], data_root=odd)
    else:
        paths = write_network(tmp_path / "net", ["a", "b", "c", "d"], data_root=odd)
        node = tomllib.loads(paths[1].read_text())["node"]
        assert node["data_dir"] == f"{odd}/node1" and node["events"] == f"{odd}/node1/events.jsonl"
        assert node["load"] == "none"
    with pytest.raises(ValueError, match="--data-root"):
        write_network(tmp_path / "net2", ["a", "b", "c", "d"], data_root="")
    where = tmp_path / odd
    where.mkdir()
    path = write_configs(where, 4, 10, "software", 0.0, 1000.0, load="none", rpc_port=0,
                         load_file=where / "load.bin")[2]
    cfg = tomllib.loads(path.read_text())["node"]
    assert cfg["data_dir"] == str(where / "node2") and cfg["load_file"] == str(where / "load.bin")
    assert cfg["load"] == "none"
    # (load = "none" reads no load_file: s13 refuses one there; load = "builtin" no [clearing] oracles)
    text = re.sub(r"\n\[clearing\]\noracles = .*\noracle_quorum = \d+\n", "\n", path.read_text())
    path.write_text(text.replace('load = "none"', 'load = "builtin"'))
    assert NodeConfig.load(path).index == 2


def test_localnet_config_files_holding_a_seed_are_private_whatever_the_umask(tmp_path):
    """write_configs (accel localnet, `--dir` an operator's directory) wrote each node<i>.toml,
    which holds the validator's secret seed, with path.write_text: mode 0644 under the usual
    umask, readable by every local user (accel testnet and keygen write 0600). Now 0600."""
    import os
    from consensus.localnet import write_configs
    old = os.umask(0o002)
    try:
        paths = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, load="none")
        again = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, load="none")  # replaced, still 0600
    finally:
        os.umask(old)
    for p in paths + again:
        assert p.stat().st_mode & 0o777 == 0o600, (p, oct(p.stat().st_mode))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ---- the operator's commands: every field checked before any request or run ----------------------
@pytest.mark.parametrize("args,message", [
    (["deposit", "--key", "{key}", "--amount", "1e-9"], "finer than 1e-8"),
    (["withdraw", "--key", "{key}", "--amount", "0"], "amount (quanta) 0 outside"),
    (["trade", "--buyer", "{key}", "--seller", "{key}", "--series", "1", "--size", "1", "--price", "1"],
     "the buyer is the seller"),
    (["trade", "--buyer", "{key}", "--seller", "{key2}", "--series", "1", "--size", "1", "--price", "0.000000001"],
     "finer than 1e-8"),
    (["trade", "--buyer", "{key}", "--seller", "{key2}", "--series", "1", "--size", "0", "--price", "1"],
     "size 0 outside"),
    (["mark", "--oracle", "{key}", "--underlying", "BTC", "--index", "1", "--sequence", "1", "--vol", "1=abc"],
     "--vol '1=abc'"),
    (["mark", "--oracle", "{key}", "--underlying", "BTC", "--index", "1", "--sequence", "1", "--vol", "1=0.5",
      "--vol", "01=0.6"], "series 1 given twice"),
])
def test_accel_tx_checks_every_field_before_asking_for_a_nonce(tmp_path, capsys, args, message):
    """Found as a new user: `accel tx deposit --amount 1e-9` (no --nonce) first asked the
    validator for the committed nonce, so a bad amount or price, a trade with one key on both
    sides or a size of 0 was reported as the validator's connection error (or, with a validator
    up, after a request); `--vol 1=abc` said only "could not convert string to float". Now every
    field is checked before any request, and --vol names itself."""
    from accel.cli import main
    for name in ("key", "key2"):
        cl.write_key(tmp_path / f"{name}.json")
    args = [a.format(key=tmp_path / "key.json", key2=tmp_path / "key2.json") for a in args]
    assert main(["tx", "--node", "http://127.0.0.1:9", *args]) == 2  # nothing listens there
    err = capsys.readouterr().err.strip()
    assert err.startswith("accel: error: ") and "\n" not in err and message in err, err
    assert "127.0.0.1:9" not in err


@pytest.mark.parametrize("args,message", [
    (["tx", "--node", "http://[::1", "status", "00" * 32], "validator URL 'http://[::1'"),
    (["tx", "--node", "http://127.0.0.1:99999", "status", "00" * 32], "validator URL 'http://127.0.0.1:99999'"),
    (["tx", "--node", "http://127.0.0.1:0", "status", "00" * 32], "port 0"),
    (["validate-bench", "--report", "{dir}/missing/r.json"], "--report"),
    (["validate-bench", "--report", "{dir}"], "give the report file's name"),
    (["localnet", "--report", "{dir}/missing/r.json"], "--report"),
    (["validate-bench", "--accounts", "-1"], "--accounts"),
    (["merkle-demo", "--seed", "-1"], "--seed"),
    (["build-cuda", "--jobs", "-1", "--arch", "sm_90"], "--jobs"),
])
def test_operator_commands_refuse_bad_flags_in_one_line_before_running(tmp_path, capsys, args, message):
    """`accel localnet --report /missing/r.json` ran the whole network (minutes) and then lost its
    report on the write; validate-bench the same. `--node http://[::1` said "Invalid IPv6 URL"
    without the URL, a port past 65535 was taken; --accounts -1 was run as 0, --seed -1 and
    --jobs -1 failed in numpy and concurrent.futures without naming the flag. Now each is one
    line naming the flag, before anything runs."""
    from accel.cli import main
    try:
        status = main([a.format(dir=tmp_path) for a in args])
    except SystemExit as exc:  # argparse's own refusal
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err and "Traceback" not in err, err
    assert not [p for p in tmp_path.iterdir()]


# ---- the client API's loop time -------------------------------------------------------------------
def test_parsing_request_bodies_is_bounded_by_the_clients_share_of_the_loop(tmp_path):
    """Found by timing what a stranger's request costs the node's loop: a 1 MB body of small
    JSON objects takes 50 to 100 ms to parse (the strict-JSON hook runs per object) before any
    check, and only submissions were charged to the WorkBudget, so a client at the request rate
    (100 a second) kept the loop that runs consensus busy for seconds a second with /txs or
    /broadcast_txs bodies that are refused after parsing (too many items). Now every body's
    parse is charged to the client's share too, and a client over it gets a 429 (with
    Retry-After and a one-line reason, not a tuple's repr) before its body is parsed; other
    clients are still served."""
    import aiohttp
    junk = b'{"hashes": [' + b",".join([b"{}"] * 300_000) + b"]}"  # refused after parsing: not hashes

    async def scenario(s, base, runner):
        out = {"first": await _post_raw(s, base + "/txs", junk)}
        async with s.post(base + "/txs", data=junk) as r:
            out["second"] = (r.status, await r.json(), r.headers.get("Retry-After"))
        out["broadcast"] = await _post_raw(s, base + "/broadcast_tx_sync", json.dumps(cl.encode_tx(cl.register(K1))).encode())
        out["status"] = await _get_raw(s, base + "/status")
        out["health"] = await _get_raw(s, base + "/health")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as other:
            out["other"] = await _post_raw(other, base + "/txs", json.dumps({"hashes": ["00" * 32]}).encode())
        return out
    # a share the body can be read in (since s13b a body whose client is refused mid-body is no
    # longer read) and its parse (50 to 100 ms) takes past
    out = _serve(tmp_path, scenario, max_body_bytes=4 << 20, submit_share_s=0.01, submit_total_s=1000.0)
    assert out["first"][0] == 400
    status, answer, retry = out["second"]
    assert status == 429 and "share of this validator's verification time" in answer["error"], out["second"]
    assert "\n" not in answer["error"] and not answer["error"].startswith("(") and int(retry) >= 1
    assert out["broadcast"][0] == 429 and out["broadcast"][1]["error"].startswith("127.0.0.1 is over its share")
    # every endpoint but /health is checked against the client's share (s13: GETs cost the loop too)
    assert out["status"][0] == 429 and out["health"][0] in (200, 503) and out["other"][0] == 200


async def _post_raw(session, url, data):
    async with session.post(url, data=data) as r:
        return r.status, await r.json(content_type=None)


async def _get_raw(session, url):
    async with session.get(url) as r:
        return r.status, await r.json(content_type=None)


async def _raw(host, port, data: bytes) -> bytes:
    r, w = await asyncio.open_connection(host, port)
    w.write(data)
    await w.drain()
    out = b""
    try:
        while chunk := await asyncio.wait_for(r.read(65536), 2):
            out += chunk
    except asyncio.TimeoutError:
        pass
    w.close()
    return out


def test_expect_headers_get_the_apis_one_line_answers(tmp_path):
    """Found sending raw HTTP to the API port: aiohttp's own Expect handling ran before the API's,
    so `Expect: 200-ok` was answered 417 in plain text (every refusal is documented as one-line
    JSON), and `Expect: 100-continue` with a Content-Length far over max_body_bytes was answered
    "100 Continue", inviting the client to send it all before the 413. Now both are one-line
    JSON refusals at once (413 before any body), on every path and method, and 100-continue
    within the bound still works."""
    head = "POST {path} HTTP/1.1\r\nHost: x\r\nExpect: {expect}\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"

    async def scenario(s, base, runner):
        host, port = runner.cfg.rpc
        body = b'{"hashes": []}'
        return {
            "bad expect": await _raw(host, port, head.format(path="/txs", expect="200-ok", n=len(body)).encode() + body),
            "bad expect, unknown path": await _raw(host, port, head.format(path="/nope", expect="x", n=2).encode() + b"{}"),
            "bad expect, wrong method": await _raw(host, port, head.format(path="/status", expect="x", n=2).encode()
                                                   + b"{}"),
            "too big": await _raw(host, port, head.format(path="/broadcast_txs", expect="100-continue",
                                                          n=10**9).encode()),
            "fine": await _raw(host, port, head.format(path="/txs", expect="100-continue", n=len(body)).encode() + body),
        }
    out = _serve(tmp_path, scenario)
    for name in ("bad expect", "bad expect, unknown path", "bad expect, wrong method", "too big"):
        raw = out[name]
        head_, _, body = raw.partition(b"\r\n\r\n")
        assert b" 100 Continue" not in head_, (name, raw[:300])
        assert head_.split(b" ")[1] == (b"413" if name == "too big" else b"417"), (name, raw[:300])
        assert b"application/json" in head_, (name, raw[:300])
        error = json.loads(body)["error"]
        assert error and "\n" not in error
    assert out["fine"].startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK") and out["fine"].endswith(
        b'{"results": []}')


def test_a_connection_trickling_a_request_is_closed_after_idle_timeout(tmp_path):
    """Slowloris on the API port: the idle clock restarted at every byte received, so a client
    sending a request's head and then one byte of its body every idle_timeout_s - 1 seconds held
    its connections for ever (64 per address, up to max_connections in all: 16 addresses took
    the whole API from every other client; aiohttp's keep-alive timer covers only the head).
    Now the body must arrive within idle_timeout_s of the head (and a head within
    idle_timeout_s of the connection or of the last answer); a client answered in time keeps
    its connection alive for more requests."""
    head = b"POST /txs HTTP/1.1\r\nHost: x\r\nContent-Length: 400\r\n\r\n"
    body = b'{"hashes": [' + b" " * 386 + b"]}"

    async def scenario(s, base, runner):
        host, port = runner.cfg.rpc
        r, w = await asyncio.open_connection(host, port)
        w.write(head)
        closed_after = None
        for i in range(len(body)):  # one byte every 0.1 s: never 0.5 s silent, 40 s in all
            try:
                w.write(body[i:i + 1])
                await w.drain()
            except ConnectionError:
                closed_after = i
                break
            try:
                if await asyncio.wait_for(r.read(1), 0.1) == b"":
                    closed_after = i
                    break
            except asyncio.TimeoutError:
                pass
        w.close()
        # keep-alive: two requests on one connection, each answered within the bound
        r, w = await asyncio.open_connection(host, port)
        answers = []
        for _ in range(2):
            w.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            await w.drain()
            answers.append(await asyncio.wait_for(r.readuntil(b"}"), 5))
            await asyncio.sleep(0.3)
        w.close()
        return closed_after, answers
    closed_after, answers = _serve(tmp_path, scenario, idle_timeout_s=0.5)
    assert closed_after is not None and closed_after < len(body) - 1, closed_after
    assert all(b"healthy" in a for a in answers)


# ---- the metrics port ---------------------------------------------------------------------------
def test_a_metrics_connection_trickling_its_request_is_cut_at_the_deadline(monkeypatch):
    """Slowloris on the metrics port (bound on 0.0.0.0 by accel testnet): the server's only
    bound was a 10 s socket timeout per silence, so a stranger sending a byte every few seconds
    into its 16 connections held every slot (and thread) for ever, and no scrape got through.
    Now a connection is cut REQUEST_DEADLINE_S after it was accepted, whatever it sends."""
    import types
    from consensus.metrics import NodeMetrics, _Server
    monkeypatch.setattr(_Server, "REQUEST_DEADLINE_S", 1.0, raising=False)
    metrics = NodeMetrics(types.SimpleNamespace(mempool={}), "cpu", "test", "accel")
    server = metrics.serve(("127.0.0.1", 0))
    port = server.server_address[1]
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 20
    cut_at = None
    s = socket.create_connection(("127.0.0.1", port))
    try:
        s.settimeout(0.3)
        for i in range(len(request)):  # a byte every 0.3 s: 12 s in all, never 10 s silent
            try:
                s.sendall(request[i:i + 1])
                if s.recv(1) == b"":
                    cut_at = i
                    break
            except socket.timeout:
                pass
            except OSError:
                cut_at = i
                break
    finally:
        s.close()
        server.shutdown()
        server.server_close()
    assert cut_at is not None and cut_at < len(request) - 1, cut_at


# ---- process hygiene --------------------------------------------------------------------------------
def test_localnet_stops_its_validators_in_order_on_sighup(tmp_path):
    """Found closing the terminal of a running `accel localnet` (SIGHUP): the launcher died at
    once by the signal's default action (status 129, nothing said), leaving its validators to
    notice their parent gone on their own. Now SIGHUP is handled as SIGTERM and SIGINT are: the
    validators are stopped, the launcher says so and exits 128 + 1."""
    import signal
    import subprocess

    from tests.test_node_process import wait_committing
    proc = subprocess.Popen([sys.executable, "-m", "accel.cli", "localnet", "--app", "kv", "--blocks", "100000",
                             "--txs-per-block", "5", "--validation", "software", "--dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_committing(proc, tmp_path)
        proc.send_signal(signal.SIGHUP)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 129 and "stopped (SIGHUP); every validator it started has exited" in err, err[-500:]
    ps = subprocess.run(["pgrep", "-f", str(tmp_path / "node")], capture_output=True, text=True)
    assert ps.stdout.strip() == "", "validator processes left running"


def test_the_demo_says_in_one_line_when_a_run_fails_and_refuses_a_size_twice(tmp_path, capsys, monkeypatch):
    """`make demo` with a validator that exits (or a run past its timeout) ended in a Python
    traceback (localnet's RuntimeError, uncaught); `--sizes 100,100` ran the second network in
    the first one's directory, on its stores. Now the first is one line naming the run (exit 1),
    the second refused before anything runs."""
    from consensus import demo

    class Failing:
        def __init__(self, *args, **kwargs):
            self.dir = Path(args[6])

        def run(self, **kwargs):
            raise RuntimeError("validator 2 exited with status 1; see net/node2.log")
    monkeypatch.setattr(demo, "Localnet", Failing)
    status = demo.main(["--out", str(tmp_path / "out"), "--backends", "cpu", "--sizes", "100", "--blocks", "10"])
    err = capsys.readouterr().err.strip()
    assert status == 1 and err.endswith("error: run cpu-100: validator 2 exited with status 1; see net/node2.log")
    assert "Traceback" not in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as exc:
        demo.main(["--out", str(tmp_path / "out2"), "--backends", "cpu", "--sizes", "100,100", "--blocks", "10"])
    assert exc.value.code == 2 and "a size given twice" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("answer", [
    _http("503 Service Unavailable", b'{"error": "64 connections open from 127.0.0.1; close some"}'),
    _http("200 OK", json.dumps({"key": bytes(K1.verify_key).hex(), "height": 3}).encode()),
    _http("200 OK", json.dumps({"key": bytes(K1.verify_key).hex(), "nonce": "7"}).encode()),
    _http("200 OK", json.dumps({"key": bytes(K1.verify_key).hex(), "nonce": -1}).encode()),
])
def test_next_nonce_is_an_error_unless_the_validator_names_one(answer):
    """`accel tx deposit` without --nonce signs with Client.next_nonce, which read a 503 (the
    validator's connection bound), an answer without a nonce or with a string one as nonce 0
    (or passed "7" on): the transaction was then refused as stale, or a builder's error blamed
    the user's nonce. Now only a 404 (not registered) is nonce 0; anything else without an
    integer nonce is an RpcError."""
    server = _Hostile(answer)
    try:
        with pytest.raises(cl.RpcError):
            cl.Client(server.url).next_nonce(K1)
    finally:
        server.close()
    unknown = _Hostile(_http("404 Not Found", b'{"error": "account 1234 is not registered at height 9"}'))
    known = _Hostile(_http("200 OK", json.dumps({"key": bytes(K1.verify_key).hex(), "nonce": 4}).encode()))
    try:
        assert cl.Client(unknown.url).next_nonce(K1) == 0 and cl.Client(known.url).next_nonce(K1) == 4
    finally:
        unknown.close()
        known.close()


# ---- the client with a validator down -------------------------------------------------------------
class _FakeValidator:
    """An HTTP server answering the API's paths as a validator holding one committed account and
    committing every transaction it is sent at height 9."""

    def __init__(self):
        import http.server
        committed = set()

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.startswith("/account"):
                    key = self.path.split("0x", 1)[1]
                    self._send(200, {"key": key, "nonce": 3, "height": 9})
                elif self.path.startswith("/tx"):
                    h = self.path.split("0x", 1)[1]
                    self._send(200, {"hash": h, "status": "committed", "height": 9} if h in committed
                               else {"hash": h, "status": "pending"})
                else:
                    self._send(200, {"height": 9, "chain_id": 1})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/broadcast_txs":
                    out = []
                    for t in body["txs"]:
                        h = __import__("hashlib").sha256(bytes.fromhex(t["tx"][2:])).hexdigest()
                        committed.add(h)
                        out.append({"hash": h, "code": 0, "accepted": True, "reason": ""})
                    self._send(200, {"results": out})
                elif self.path == "/broadcast_tx_sync":
                    h = __import__("hashlib").sha256(bytes.fromhex(body["tx"][2:])).hexdigest()
                    self._send(200, {"hash": h, "code": 0, "accepted": True, "reason": ""})
                else:  # /txs
                    self._send(200, {"results": [{"hash": h[2:], "status": "committed", "height": 9}
                                                 for h in body["hashes"]]})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _dead_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return "http://127.0.0.1:%d" % port


def test_the_client_passes_over_a_validator_that_is_down(tmp_path, capsys):
    """Found running `accel tx --node URL0,URL1,URL2,URL3` with validator 0 stopped (BFT's f = 1):
    every call failed with "Connection refused" (broadcast stopped at the first validator it
    could not reach, the nonce, statuses and account were asked of the first URL only), so one
    validator down stopped every client (tests/test_rpc.py had to build a Client without it).
    Now broadcast sends to every validator that answers and reads and the nonce go to the first
    that answers; an RpcError names each failure only when none answers."""
    from accel.cli import main
    live = _FakeValidator()
    hostile = _Hostile(b"HELLO\r\n\r\n")
    dead = _dead_url()  # after the others bind: its freed port could be theirs (a validator given twice)
    try:
        c = cl.Client([dead, hostile.url, live.url], timeout=5)
        tx = cl.register(K1)
        verdicts = c.broadcast([tx])
        assert verdicts[0]["accepted"] and c.wait_committed([verdicts[0]["hash"]], timeout=5) == {
            verdicts[0]["hash"]: 9}
        assert c.next_nonce(K1) == 3 and c.tx(verdicts[0]["hash"])["status"] == "committed"
        assert c.status()["height"] == 9 and c.submit(tx)["accepted"]
        cl.write_key(tmp_path / "k.json", K2)
        assert main(["tx", "--node", f"{dead},{live.url}", "--wait", "5", "deposit", "--key",
                     str(tmp_path / "k.json"), "--amount", "5"]) == 0
        assert json.loads(capsys.readouterr().out)["height"] == 9
        refusing = _Hostile(_http("400 Bad Request", b'{"error": "no"}'))  # a hostile validator's 400
        refusing2 = _Hostile(_http("400 Bad Request", b'{"error": "no"}'))  # (one given twice is refused: s14)
        try:
            c2 = cl.Client([refusing.url, live.url], timeout=5)
            assert c2.broadcast([tx])[0]["accepted"] and c2.next_nonce(K1) == 3
            with pytest.raises(cl.RpcError, match="400 no"):  # every one refusing: the first's refusal
                cl.Client([refusing.url, refusing2.url]).status()
        finally:
            refusing.close()
            refusing2.close()
        with pytest.raises(cl.RpcError, match="no validator answered: .*" + dead + ".*" + hostile.url):
            cl.Client([dead, hostile.url]).broadcast([tx])
        with pytest.raises(cl.RpcError, match="no validator answered"):
            cl.Client([dead, hostile.url]).next_nonce(K1)
    finally:
        live.close()
        hostile.close()


def test_the_report_tool_says_in_one_line_what_is_wrong_with_a_file(tmp_path, capsys):
    """`python -m consensus.report` (docs: demo-out/*.json) on a missing file, a file that is not
    JSON or a JSON file that is not a localnet report ended in a traceback; now one line naming
    the file, exit 2."""
    from consensus import report
    (tmp_path / "bad.json").write_text("{nope")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "partial.json").write_text(json.dumps({"blocks": [{"txs": 1}]}))
    for name, needle in (("missing.json", "missing.json"), ("bad.json", "bad.json"), ("list.json", "not a localnet report"),
                         ("partial.json", "not a localnet report")):
        assert report.main([str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err and "Traceback" not in err, (name, err)


def test_ctrl_c_in_an_accel_command_is_one_line_and_status_130(tmp_path, capsys, monkeypatch):
    """Ctrl-C while `accel tx --wait` waited for the commit (or in validate-bench, merkle-demo,
    keygen ...) ended in a KeyboardInterrupt traceback; now one line and status 130, as
    `accel localnet` already did."""
    from accel.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cl.Client, "wait_committed", interrupted)
    monkeypatch.setattr(cl.Client, "broadcast", lambda self, txs: [{"hash": "00" * 32, "accepted": True,
                                                                    "code": 0, "reason": ""}])
    cl.write_key(tmp_path / "k.json", K1)
    assert main(["tx", "--chain-id", "1", "--wait", "30", "register", "--key", str(tmp_path / "k.json")]) == 130
    err = capsys.readouterr().err.strip()
    assert err == "accel tx: interrupted"


@pytest.mark.parametrize("hosts", ["::1,0::1,::2,::3", "node-a,NODE-A,node-b,node-c", "a.example,a.example.,b,c",
                                   "10.0.0.1,10.0.0.1,10.0.0.2,10.0.0.3"])
def test_testnet_refuses_one_host_spelt_twice(tmp_path, capsys, hosts):
    """`accel testnet --hosts ::1,0::1,...` (or NODE-A and node-a, or a name with and without
    its trailing dot) wrote two validators at one address and port: the second could never bind
    and the network ran with one validator missing. The check compared the strings. Now hosts
    are compared as addresses (IPs compressed, names case-folded); nothing is written."""
    from accel.cli import main
    assert main(["testnet", "--hosts", hosts, "--out", str(tmp_path / "net")]) == 2
    err = capsys.readouterr().err.strip()
    assert "two validators at the same host:port" in err and "\n" not in err
    assert not (tmp_path / "net").exists() or not list((tmp_path / "net").glob("node*.toml"))


def test_testnet_out_that_is_a_file_names_the_flag(tmp_path, capsys):
    """`accel testnet --out FILE` said only "[Errno 17] File exists: 'FILE'"; now it names --out."""
    from accel.cli import main
    (tmp_path / "f").write_text("x")
    assert main(["testnet", "--hosts", "a,b,c,d", "--out", str(tmp_path / "f")]) == 2
    assert "--out " + str(tmp_path / "f") + ": a file, not a directory" in capsys.readouterr().err


def test_the_client_gives_up_on_an_answer_trickled_past_its_timeout():
    """A hostile validator trickling its answer (headers included) a byte at a time held the
    client as long as it liked: urllib's timeout bounds each wait for a byte, not the request.
    Now `timeout` bounds the whole request: an RpcError saying so, the socket shut down."""
    import time as _time
    answer = _http("200 OK", b'{"height": 1}')
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)

    def trickle():
        conn, _ = sock.accept()
        try:
            conn.recv(65536)
            for i in range(len(answer)):
                conn.sendall(answer[i:i + 1])
                _time.sleep(0.25)
        except OSError:
            pass
        finally:
            conn.close()
    threading.Thread(target=trickle, daemon=True).start()
    try:
        with pytest.raises(cl.RpcError, match="no complete answer within 1 s"):
            cl.Client("http://127.0.0.1:%d" % sock.getsockname()[1], timeout=1).status()
    finally:
        sock.close()


# ---- docs against code --------------------------------------------------------------------------
def _doc_mismatches(text: str) -> list[str]:
    """Every key row of OPERATOR.md's [table] sections that names a key the loader does not know,
    or a default other than the loader's (the other direction, every loader key documented, is
    tests/test_operator.py's)."""
    import re
    from accel import config
    from consensus.node import REQUIRED, SCHEMA
    accel_defaults = {f.name: f.default for f in __import__("dataclasses").fields(config.AccelConfig)}
    out = []
    for section in re.split(r"^## ", text, flags=re.M):
        m = re.match(r"\[(\w+)\]", section)
        if not m:
            continue
        table = m.group(1)
        known = ({k: d for k, (_, d) in SCHEMA[table].items()} if table in SCHEMA else accel_defaults)
        for line in section.splitlines():
            if not line.startswith("| `") or table == "metrics" and line.startswith("| `accel_"):
                continue
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            key, default = cells[0].strip("`"), cells[2]
            if key not in known:
                out.append(f"[{table}] {key}: documented, not in the loader")
                continue
            want = known[key]
            if want is REQUIRED:
                ok = default == "required"
            else:
                literal = re.match(r"`([^`]*)`", default)
                ok = literal is not None and tomllib.loads(f"v = {literal.group(1)}")["v"] == want
            if not ok:
                out.append(f"[{table}] {key}: documented default {default!r}, the loader's {want!r}")
    return out


def test_every_documented_key_exists_with_its_documented_default():
    """The brief's doc check, in the direction no test made: every key row in OPERATOR.md's
    [node], [network], [accel], [metrics] and [rpc] tables is a key the loader knows, with the
    loader's default (checked to catch a changed default or a row for a removed key)."""
    text = (Path(__file__).parent.parent / "docs" / "OPERATOR.md").read_text()
    assert _doc_mismatches(text) == []
    altered = text.replace("| `txs_per_block` | integer | `100` |", "| `txs_per_block` | integer | `200` |").replace(
        "| `max_batch` |", "| `max_txs` | integer | `5` | gone |\n| `max_batch` |")
    assert len(_doc_mismatches(altered)) == 2


def test_decoding_a_requests_hex_is_charged_to_the_clients_share(tmp_path, monkeypatch):
    """Found timing what a stranger's request costs the loop: checking a megabyte of "0x" hex
    with the pattern (?:[0-9a-fA-F]{2})* took about 90 ms, outside every WorkBudget charge (only
    parsing and the mempool's checks were charged), so bodies of one long hex string kept the
    loop busy at the request rate. Now the check is one scan (milliseconds) and decoding the
    items and hashes is charged to the client's share too. (The charge is observed with a clock
    that only decoding advances, so the test asserts no speed.)"""
    import aiohttp
    from consensus import rpc as rpc_module
    from test_rpc import _node
    runner = _node(tmp_path)
    clock = {"t": 0.0}
    decode = rpc_module.decode_bytes

    def slow_decode(text, what):
        clock["t"] += 10.0
        return decode(text, what)
    monkeypatch.setattr(rpc_module, "decode_bytes", slow_decode)

    async def main():
        rpc = rpc_module.Rpc(runner, runner.cfg.rpc, submit_share_s=1000.0, submit_total_s=1000.0)
        rpc.clock = lambda: clock["t"]
        await rpc.start()
        try:
            before = rpc.work.all[0]
            async with aiohttp.ClientSession() as s:
                async with s.post("http://%s:%d/broadcast_tx_sync" % runner.cfg.rpc,
                                  json=cl.encode_tx(cl.register(K1))) as r:
                    assert r.status == 200
            return before - rpc.work.all[0]
        finally:
            await rpc.stop()
    try:
        charged = asyncio.run(main())
    finally:
        runner.store.close()
    assert charged >= 20.0  # the body and its one signature: two decodes, each 10 s on this clock


def test_requests_over_the_rate_cost_the_loop_nothing_more(tmp_path):
    """Found pipelining requests on one connection: a request over the rate was still parsed,
    routed and answered 429 on the loop that runs consensus (0.04 ms of CPU each, measured with
    the client in another process; 44 s wall when the test's client shared the loop), and the
    connection kept reading, so 20,000 "GET /status" pipelined in 660 kB cost the loop 0.8 s of
    CPU at requests_per_s = 1: about 1.2 MB/s of requests from one address kept it busy. Now a 429 for the rate closes the connection (what was pipelined
    behind it is not read), and a client over its rate is refused a new connection at once
    (a static 429 before aiohttp reads anything)."""
    async def scenario(s, base, runner):
        host, port = runner.cfg.rpc
        r, w = await asyncio.open_connection(host, port)
        w.write(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n" * 2000)
        data = b""
        try:
            while chunk := await asyncio.wait_for(r.read(1 << 20), 5):
                data += chunk
        except (asyncio.TimeoutError, ConnectionError):
            pass
        w.close()
        again = await _raw(host, port, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        return data, again
    data, again = _serve(tmp_path, scenario, requests_per_s=1.0)
    answered = data.count(b"HTTP/1.1 ")
    assert 1 <= data.count(b"HTTP/1.1 429") and answered <= 10, answered  # the burst (2), one 429, closed
    head, _, body = again.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 429") and b"Retry-After: 1" in head
    assert "requests per second" in json.loads(body)["error"]


def test_requests_from_many_addresses_are_bounded_together(tmp_path):
    """The request rate was bounded per client address only, so many addresses (an IPv6 /48 is
    65,536 clients, each with its own burst) could send as many requests as their bandwidth
    allowed, each answered on the loop that runs consensus. Now all clients together get
    requests_total_per_s (default 20 x requests_per_s); past it a 429 for everyone, and a new
    connection is refused at once until the bucket refills."""
    import aiohttp
    from consensus.rpc import RateLimit

    async def scenario(s, base, runner):
        codes = [(await _get_raw(s, base + "/health"))[0] for _ in range(3)]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as other:
            async with other.get(base + "/status") as r:
                codes.append(r.status)
                error = (await r.json())["error"]
        return codes, error
    codes, error = _serve(tmp_path, scenario, requests_per_s=100.0, requests_total_per_s=1.0)
    assert codes[:2] == [503, 503] and codes[2:] == [429, 429], codes  # a burst of 2 in all, then refused
    assert "from all clients" in error or "all clients" in error
    limit = RateLimit(100.0, total=1.0)
    assert [limit.allow("a", 0.0), limit.allow("b", 0.0), limit.allow("c", 0.0), limit.allow("d", 1.0)] == \
        [True, True, False, True]
