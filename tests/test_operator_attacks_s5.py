"""A hostile client's and a new operator's review of the front door (session 5): the client API
(consensus/rpc.py) under strict-JSON, hex, HTTP-parser, connection and idle attacks; the account
proof bound to the fields served beside it; the Python client's builders and answers; `accel
keygen` / `accel tx` / `accel testnet` / `accel localnet` arguments; [accel] bounds. Every test
here failed before its fix."""
import asyncio
import http.server
import json
import logging
import os
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from nacl.signing import SigningKey

sys.path.insert(0, str(Path(__file__).parent))
from test_rpc import _get, _node, _post, _serve  # noqa: E402

from accel import config  # noqa: E402
from accel.config import ConfigError  # noqa: E402
from consensus import client as cl  # noqa: E402
from consensus.rpc import Rpc  # noqa: E402

K1, K2 = SigningKey(bytes(range(32))), SigningKey(bytes(range(1, 33)))


def _one_line_400(answer):
    status, body = answer
    return status == 400 and isinstance(body, dict) and body.get("error") and "\n" not in body["error"]


# ---- strict JSON and hex ---------------------------------------------------------------------------
def test_strict_json_and_hex_are_refused_with_one_line(tmp_path):
    """NaN/Infinity literals, a key given twice, an unknown (misspelt) field, hex with spaces, a
    hash given as a JSON number (10**63 read as 64 hex digits), ?hash= given twice: each was
    accepted before (200) and is now a one-line 400."""
    body, sigs = cl.register(K1)
    good = cl.encode_tx((body, sigs))

    async def scenario(s, base, runner):
        P = base + "/broadcast_tx_sync"
        out = {
            "NaN": await _post(s, P, data=b'{"tx": "0x00", "signatures": [], "x": NaN}'),
            "Infinity": await _post(s, base + "/txs", data=b'{"hashes": [], "n": Infinity}'),
            "key twice": await _post(s, P, data=('{"tx": "%s", "tx": "0x0102", "signatures": %s}'
                                                 % (good["tx"], json.dumps(good["signatures"]))).encode()),
            "misspelt signatures": await _post(s, P, json={"tx": good["tx"], "signature": good["signatures"]}),
            "unknown item field": await _post(s, base + "/broadcast_txs", json={"txs": [good | {"fee": 1}]}),
            "unknown body field": await _post(s, base + "/txs", json={"hashes": [], "more": 1}),
            "hex with spaces": await _post(s, P, json={"tx": "0x " + good["tx"][2:], "signatures": good["signatures"]}),
            "hash as a number": await _post(s, base + "/txs", data=json.dumps({"hashes": [10**63]}).encode()),
            "hash twice": await _get(s, base + "/tx?hash=" + "00" * 32 + "&hash=" + "11" * 32),
            "hash with spaces": await _get(s, base + "/tx?hash=0x" + "00 " * 31 + "00"),
        }
        out["still serves"] = await _post(s, P, json=good)
        return out
    out = _serve(tmp_path, scenario)
    for name, answer in out.items():
        if name != "still serves":
            assert _one_line_400(answer), (name, answer)
    assert "twice" in out["key twice"][1]["error"] and "'signature'" in out["misspelt signatures"][1]["error"]
    assert out["still serves"][0] == 200 and out["still serves"][1]["accepted"]


# ---- the HTTP parser's refusals ------------------------------------------------------------------
async def _raw(host, port, data: bytes) -> bytes:
    r, w = await asyncio.open_connection(host, port)
    w.write(data)
    await w.drain()
    out = await asyncio.wait_for(r.read(65536), 10)
    w.close()
    return out


def test_malformed_http_gets_one_line_json_and_no_logged_traceback(tmp_path, caplog):
    """A bad request line, method, version, Content-Length or query byte was answered by aiohttp
    in multi-line plain text and logged with a full traceback per request (a stranger could
    flood the validator's log); now a one-line JSON 400, logged at debug level."""
    requests = [b"GARBAGE\r\n\r\n", b"BREW /status HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /status HTTP/9.9\r\n\r\n",
                b"POST /txs HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}",
                b"POST /txs HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n{}",
                b"GET /tx?hash=\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /status HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"]

    async def scenario(s, base, runner):
        host, port = runner.cfg.rpc
        answers = [await _raw(host, port, r) for r in requests]
        return answers, await _get(s, base + "/status")
    with caplog.at_level(logging.INFO):
        answers, status = _serve(tmp_path, scenario)
    for raw in answers:
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"400", raw[:200]
        assert b"application/json" in head, raw[:200]
        error = json.loads(body)["error"]
        assert error.startswith("malformed HTTP request") and "\n" not in error
    assert status[0] == 200
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info], \
        [r.getMessage() for r in caplog.records]


# ---- connections: bounded per client, idle ones closed -------------------------------------------
def test_connections_are_bounded_per_client_and_idle_ones_closed(tmp_path):
    """Before: every connection was accepted and one that sent half a request was held for as
    long as the client liked (keepalive 3,630 s), so one stranger could take the process's file
    descriptors from its peers and store. Now a client's connections past its bound get a
    one-line 503, and a connection silent for idle_timeout_s is closed."""
    half = b"POST /broadcast_tx_sync HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"

    async def scenario(s, base, runner):
        host, port = runner.cfg.rpc
        held = []
        for _ in range(4):
            r, w = await asyncio.open_connection(host, port)
            w.write(half)
            held.append((r, w))
        await asyncio.sleep(0.1)
        refused = await _raw(host, port, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        closed = [await asyncio.wait_for(r.read(), 20) for r, _ in held]  # EOF: the server closed it
        after = await _get(s, base + "/status")
        for _, w in held:
            w.close()
        return refused, closed, after
    refused, closed, after = _serve(tmp_path, scenario, max_connections_per_client=4, idle_timeout_s=0.5)
    head, _, body = refused.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and "4 connections open from" in json.loads(body)["error"]
    assert all(b"201" not in c and b"200 OK" not in c for c in closed)  # closed unanswered, never served
    assert after[0] == 200  # once they closed, the client is served again


def test_the_api_counts_connections_in_all(tmp_path):
    async def scenario(s, base, runner):
        host, port = runner.cfg.rpc
        held = [await asyncio.open_connection(host, port) for _ in range(3)]
        await asyncio.sleep(0.1)
        refused = await _raw(host, port, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        for _, w in held:
            w.close()
        return refused
    refused = _serve(tmp_path, scenario, max_connections=3)
    assert refused.startswith(b"HTTP/1.1 503") and b"3 connections open to this API" in refused


def test_a_port_past_65535_is_an_oserror_the_node_reports_in_one_line(tmp_path):
    runner = _node(tmp_path)
    try:
        with pytest.raises(OSError, match="outside 0..65535"):
            asyncio.run(Rpc(runner, ("127.0.0.1", 99999)).start())
    finally:
        runner.store.close()


# ---- the account proof ---------------------------------------------------------------------------
def _account_answer(tmp_path):
    """/account of an account with collateral, served by an Rpc whose node's committed state holds
    it (a stand-in node: a committed block whose state root is that state's)."""
    import aiohttp
    runner = _node(tmp_path)
    clearing = runner.core.states[runner.core.committed.id].clearing  # this runner is thrown away after
    clearing.register(bytes(K1.verify_key))
    clearing.deposit(bytes(K1.verify_key), 0, "USD", 123 * 10**8)
    clearing.register(bytes(K2.verify_key))
    root = clearing.state_root(runner.app.verifier.sha256_rows)
    block = SimpleNamespace(id=b"\x07" * 32, height=5, state_root=root)
    node = SimpleNamespace(core=SimpleNamespace(committed=block, states={block.id: SimpleNamespace(clearing=clearing)}),
                           app=runner.app)

    async def main():
        rpc = Rpc(node, runner.cfg.rpc)
        await rpc.start()
        try:
            async with aiohttp.ClientSession() as s:
                base = "http://%s:%d" % runner.cfg.rpc
                return (await _get(s, base + f"/account?key=0x{bytes(K1.verify_key).hex()}"),
                        await _get(s, base + f"/account?key=0x{bytes(SigningKey(bytes(32)).verify_key).hex()}"))
        finally:
            await rpc.stop()
    try:
        return asyncio.run(main()), root
    finally:
        runner.store.close()


def test_the_account_proof_binds_the_fields_served_beside_it(tmp_path):
    """verify_account_proof checked only the leaf's key: a validator could serve a true proof
    beside a made-up nonce, collateral or positions and the client said True. Now the fields must
    be the leaf's; a trusted state root can be required; a malformed answer is False, not a
    KeyError; an unknown account is a 404 with no proof."""
    (found, missing), root = _account_answer(tmp_path)
    assert found[0] == 200 and found[1]["collateral"] == {"USD": 123 * 10**8} and found[1]["nonce"] == 1
    answer = found[1]
    assert cl.verify_account_proof(answer) and cl.verify_account_proof(answer, state_root=root)
    assert cl.verify_account_proof(answer, state_root=root.hex())
    assert not cl.verify_account_proof(answer, state_root=bytes(32))  # another height's root
    for forge in (lambda a: a.update(collateral={"USD": 10**20}), lambda a: a.update(nonce=0),
                  lambda a: a.update(positions={"4": 5}), lambda a: a.update(collateral={}),
                  lambda a: a.update(nonce=True), lambda a: a.update(key=bytes(K2.verify_key).hex())):
        forged = json.loads(json.dumps(answer))
        forge(forged)
        assert not cl.verify_account_proof(forged), forged
    for broken in ({}, {"proof": None}, answer | {"proof": {}}, answer | {"state_root": "zz"},
                   answer | {"proof": answer["proof"] | {"aunts": "00"}},
                   answer | {"proof": answer["proof"] | {"leaf": answer["proof"]["leaf"][:80]}}):
        assert cl.verify_account_proof(broken) is False
    assert missing[0] == 404 and "proof" not in missing[1] and "not registered" in missing[1]["error"]
    assert cl.decode_account_leaf(bytes.fromhex(answer["proof"]["leaf"]))["collateral"] == {"USD": 123 * 10**8}
    # another account's true proof, served to whoever asked about K2
    assert cl.verify_account_proof(answer, key=K1) and not cl.verify_account_proof(answer, key=K2)


def test_the_client_refuses_an_answer_about_another_account(stub):
    _Stub.answers = {"/account": (200, json.dumps({"key": bytes(K1.verify_key).hex(), "nonce": 1}).encode())}
    c = cl.Client(stub, timeout=5)
    assert c.account(K1)["nonce"] == 1
    with pytest.raises(cl.RpcError, match="answered about"):
        c.account(K2)


# ---- the Python client ---------------------------------------------------------------------------
@pytest.mark.parametrize("build,field", [
    (lambda: cl.deposit(K1, -1, "USD", 5), "nonce"),
    (lambda: cl.deposit(K1, 2**64, "USD", 5), "nonce"),
    (lambda: cl.deposit(K1, 0, "USD", 0), "amount"),
    (lambda: cl.withdraw(K1, 0, "USD", -5), "amount"),
    (lambda: cl.withdraw(K1, 0, "USD", 10**19), "amount"),
    (lambda: cl.deposit(K1, 0, 5, 5), "asset"),
    (lambda: cl.deposit(K1, 1.5, "USD", 5), "nonce"),
    (lambda: cl.trade(K1, 0, K2, 0, -1, 1, 1), "series"),
    (lambda: cl.trade(K1, 0, K2, 0, 2**32, 1, 1), "series"),
    (lambda: cl.trade(K1, 0, K2, 0, 1, 0, 1), "size"),
    (lambda: cl.trade(K1, 0, K2, 0, 1, 99_999_999_999, 1), "size"),
    (lambda: cl.trade(K1, 0, K2, 0, 1, 1, -1), "price"),
    (lambda: cl.trade(K1, 0, K1, 0, 1, 1, 1), "two accounts"),
    (lambda: cl.mark([K1], "BTC", float("nan"), 1, 1, {}), "index"),
    (lambda: cl.mark([K1], "BTC", 60_000.0, -1, 1, {}), "sequence"),
    (lambda: cl.mark([K1], "BTC", 60_000.0, 1, -5, {}), "timestamp"),
    (lambda: cl.mark([K1], "BTC", 60_000.0, 1, 1, {1: float("inf")}), "vol"),
    (lambda: cl.mark([K1], "BTC", 60_000.0, 1, 1, {-1: 0.5}), "series"),
    (lambda: cl.mark([K1, K1], "BTC", 60_000.0, 1, 1, {}), "twice"),
    (lambda: cl.mark([], "BTC", 60_000.0, 1, 1, {}), "oracles"),
    (lambda: cl.mark([K1], "BTC/", 60_000.0, 1, 1, {}), "underlying"),
    (lambda: cl.register(bytes(32)), "SigningKey"),
    (lambda: cl.quanta("inf"), "finite"),
    (lambda: cl.quanta("NaN"), "finite"),
    (lambda: cl.Client("http://x", batch=0), "batch"),
    (lambda: cl.Client("http://x", timeout=0), "timeout"),
])
def test_the_client_refuses_out_of_range_fields_before_sending(build, field):
    """Before: struct.error (not a ValueError, a traceback out of `accel tx`), OverflowError, a
    transaction the validators then refuse, or a NaN index signed and sent."""
    with pytest.raises(ValueError, match=field):
        build()


def test_the_builders_still_build_what_the_validators_take():
    assert cl.deposit(K1, 0, "USD", 1)[0] and cl.withdraw(K1, 2**64 - 1, "BTC", 10**18)[0]
    body, sigs = cl.trade(K1, 3, K2, 4, 2**32 - 1, 10**9, 0)
    assert len(sigs) == 2 and len(body) == 5 + 32 + 8 + 32 + 8 + 4 + 4 + 8
    body, sigs = cl.mark([K1, K2], "BTC", 60_000.0, 1, 1, {1: 0.6})
    assert len(sigs) == 2


class _Stub(http.server.BaseHTTPRequestHandler):
    answers: dict = {}

    def _answer(self):
        status, body = self.answers.get(self.path.split("?")[0], (404, b"{}"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_client_says_rpc_error_for_answers_that_are_not_the_apis(stub):
    """A proxy's HTML page, or JSON without "results", raised JSONDecodeError or KeyError out of
    the client (a traceback out of `accel tx`); now RpcError naming the URL."""
    c = cl.Client(stub, timeout=5)
    _Stub.answers = {"/broadcast_txs": (200, b"<html>hello</html>"), "/txs": (200, b'{"nothing": 1}'),
                     "/status": (200, b"[1, 2]")}
    with pytest.raises(cl.RpcError, match="not the API's JSON"):
        c.broadcast([cl.register(K1)])
    with pytest.raises(cl.RpcError, match="one status per hash"):
        c.statuses(["00" * 32])
    with pytest.raises(cl.RpcError, match="not the API's JSON"):
        c.status()
    _Stub.answers = {"/broadcast_txs": (200, b'{"results": []}')}
    with pytest.raises(cl.RpcError, match="one verdict per transaction"):
        c.broadcast([cl.register(K1)])


def test_wait_committed_takes_hashes_with_0x(stub):
    """A hash given as "0x..." (as `accel tx` prints them elsewhere) was never matched against the
    validator's plain-hex answer: wait_committed waited out its timeout although it committed."""
    h = "ab" * 32
    _Stub.answers = {"/txs": (200, json.dumps({"results": [{"hash": h, "status": "committed", "height": 7}]}).encode())}
    c = cl.Client(stub, timeout=5)
    assert c.wait_committed(["0x" + h], timeout=2.0) == {h: 7}
    assert c.wait_committed([bytes.fromhex(h)], timeout=2.0) == {h: 7}
    with pytest.raises(ValueError, match="not 64 hex digits"):
        c.tx("0x1234")


# ---- key files -----------------------------------------------------------------------------------
def test_keygen_force_never_leaves_a_key_readable_by_others_nor_follows_a_link(tmp_path):
    """`accel keygen --force` rewrote an existing 0644 file in place (the new secret seed stayed
    world-readable) and followed a symbolic link into its target; read_key read a key file anyone
    could read. Now --force replaces the file with a new 0600 one, a link is replaced rather than
    followed, and read_key refuses a key file others may read."""
    from accel.cli import main
    path = tmp_path / "k.json"
    path.write_text("old")
    path.chmod(0o644)
    assert main(["keygen", "--out", str(path), "--force"]) == 0
    assert path.stat().st_mode & 0o777 == 0o600 and cl.read_key(path)
    target = tmp_path / "elsewhere.txt"
    target.write_text("not a key\n")
    target.chmod(0o644)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert main(["keygen", "--out", str(link)]) == 2  # exists (a link): kept
    assert main(["keygen", "--out", str(link), "--force"]) == 0
    assert target.read_text() == "not a key\n" and not link.is_symlink()
    assert link.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)
    with pytest.raises(ValueError, match="readable or writable by others"):
        cl.read_key(path)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary file left


# ---- the command line: one line, status 2 ----------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (["deposit", "--key", "{key}", "--amount", "5", "--nonce", "-1"], "nonce -1 outside"),
    (["deposit", "--key", "{key}", "--amount", "-5", "--nonce", "0"], "amount (quanta)"),
    (["deposit", "--key", "{key}", "--amount", "inf", "--nonce", "0"], "not a finite number"),
    (["deposit", "--key", "{key}", "--amount", "1e30", "--nonce", "0"], "amount (quanta)"),
    (["trade", "--buyer", "{key}", "--seller", "{key2}", "--series", "-1", "--size", "1", "--price", "1",
      "--buyer-nonce", "0", "--seller-nonce", "0"], "series -1 outside"),
    (["trade", "--buyer", "{key}", "--seller", "{key2}", "--series", "1", "--size", "99999999999", "--price", "1",
      "--buyer-nonce", "0", "--seller-nonce", "0"], "size 99999999999 outside"),
    (["mark", "--oracle", "{key}", "--underlying", "BTC", "--index", "nan", "--sequence", "1"], "index nan"),
    (["mark", "--oracle", "{key}", "--underlying", "BTC", "--index", "1", "--sequence", "1", "--timestamp", "-5"],
     "timestamp -5"),
    (["account", "nothex"], "neither a key file nor a public key"),
    (["register", "--key", "/nonexistent/k.json"], "no such key file"),
])
def test_accel_tx_refuses_bad_fields_in_one_line_before_any_request(tmp_path, capsys, args, message):
    from accel.cli import main
    for name in ("key", "key2"):
        cl.write_key(tmp_path / f"{name}.json")
    args = [a.format(key=tmp_path / "key.json", key2=tmp_path / "key2.json") for a in args]
    # a URL nothing listens on: an error about the request would name it; these come first
    assert main(["tx", "--node", "http://127.0.0.1:9", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("accel: error: ") and "\n" not in err and message in err, err
    assert "127.0.0.1:9" not in err


@pytest.mark.parametrize("args,message", [
    (["testnet", "--hosts", "a,b,c,d", "--out", "{dir}", "--port", "70000"], "not a TCP port"),
    (["testnet", "--hosts", "a,b,c,d", "--out", "{dir}", "--port", "26657"], "--rpc-port are both 26657"),
    (["testnet", "--hosts", "a,b,c,d", "--out", "{dir}", "--metrics-port", "26700"], "are both 26700"),
    (["localnet", "--rpc-port", "65534"], "past 65535"),
    (["localnet", "--rpc-port", "30000", "--metrics-port", "30002"], "overlap"),
    (["tx", "--wait", "-1", "status", "00"], "finite number of seconds"),
    (["localnet", "--base-timeout-ms", "nan"], "finite number of milliseconds, above 0"),
    (["localnet", "--base-timeout-ms", "0"], "finite number of milliseconds, above 0"),
    (["localnet", "--delay-ms", "inf"], "finite number of milliseconds, 0 or more"),
    (["localnet", "--delay-ms", "-5"], "finite number of milliseconds, 0 or more"),
    (["localnet", "--timeout", "-1"], "finite number of seconds, above 0"),
    (["testnet", "--hosts", "a,b,c,d", "--out", "{dir}", "--base-timeout-ms", "-1"], "above 0"),
    (["node", "--config", "{dir}/none.toml", "--exit-with-parent", "1"], "this process's parent is pid"),
])
def test_ports_out_of_range_or_clashing_are_refused_before_anything_is_written(tmp_path, capsys, args, message):
    """Before: a port past 65535 or the API on the peers' port was written into every validator's
    file, and each validator then failed to start (an OverflowError traceback for [node] listen)."""
    from accel.cli import main
    out = tmp_path / "net"
    try:
        status = main([a.format(dir=out) for a in args])
    except SystemExit as exc:  # argparse's own refusal of a flag's value
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err, err
    assert not out.exists() or not list(out.glob("node*.toml"))


def test_localnet_config_writer_keeps_peer_ports_out_of_the_fixed_ranges(tmp_path, monkeypatch):
    """write_configs took the peers' ports from the system without looking at the fixed API and
    metrics ranges: a peer port inside them made two validators bind one port."""
    from consensus import localnet
    calls = iter([[31000, 31001, 31002, 31003], [41000, 41001, 41002, 41003]])
    monkeypatch.setattr(localnet, "_free_ports", lambda n: next(calls))
    paths = localnet.write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, load="none", rpc_port=31000)
    text = paths[0].read_text()
    assert 'listen = "127.0.0.1:41000"' in text and 'listen = "127.0.0.1:31000"' in text


# ---- [accel] -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,value,message", [
    ("ACCEL_THREADS", "99999999999999999999", "threads must be at most 4096"),
    ("ACCEL_CUDA_DEVICE", "99999999999999999999", "cuda_device must be at most 1023"),
    ("ACCEL_GPU_MIN_BATCH", "99999999999999999999", "gpu_min_batch must be at most 2147483647"),
])
def test_accel_integers_past_a_c_int_are_config_errors_naming_the_variable(monkeypatch, name, value, message):
    """threads = 10**20 passed the check and raised OverflowError (a traceback) in the C
    fallback's av_set_threads at the first batch."""
    with pytest.raises(ConfigError, match=f"{name}: {message}"):
        config.load(env={name: value})


def test_an_accel_string_with_a_nul_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "accel.toml"
    path.write_text('[accel]\nbackend = "cpu"\ncuda_cubin_dir = "a\\u0000b"\n')
    with pytest.raises(ConfigError, match=rf"{path}:3: cuda_cubin_dir must not contain a NUL"):
        config.load(path, env={})


# ---- verification time: one client, and all together ------------------------------------------
def _bad_batch(n: int, salt: int) -> dict:
    return {"txs": [cl.encode_tx((cl.register(SigningKey(bytes([salt, i % 256, i // 256]) + bytes(29)))[0],
                                  [bytes(64)])) for i in range(n)]}


def test_submissions_are_bounded_by_the_validators_verification_time(tmp_path, monkeypatch):
    """Batches of invalid signatures were verified on the node's own loop at the request rate
    (100 a second), so a stranger could keep consensus from running (1,000 bad signatures: 50 ms
    on the C fallback, 1.6 s software-only). Now a client's submissions may take its share of the
    loop's time, all clients together theirs; past that a 429 with Retry-After, other clients
    and /health still served (s13: every other endpoint is checked too)."""
    import aiohttp

    async def scenario(s, base, runner):
        out = {"first": await _post(s, base + "/broadcast_txs", json=_bad_batch(20, 1))}
        async with s.post(base + "/broadcast_txs", json=_bad_batch(20, 2)) as r:
            out["second"] = (r.status, await r.json(), r.headers.get("Retry-After"))
        out["status"] = await _get(s, base + "/status")
        out["health"] = await _get(s, base + "/health")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as other:
            out["other client"] = await _post(other, base + "/broadcast_txs", json=_bad_batch(20, 3))
        return out
    # each submission takes 1 s of a fake clock, reading costs nothing on it: the first request is
    # read and served within the share (0.1 s a second, 0.2 s of burst) and takes it past zero
    clock = {"t": 0.0}
    real_init, real_submit = Rpc.__init__, Rpc._submit_now

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.clock, self.segment_cost_s = (lambda: clock["t"]), 0.0

    def costly(self, items, client="?"):
        clock["t"] += 1.0
        return real_submit(self, items, client)
    monkeypatch.setattr(Rpc, "__init__", init)
    monkeypatch.setattr(Rpc, "_submit_now", costly)
    out = _serve(tmp_path, scenario, submit_share_s=0.1, submit_total_s=1000.0)
    assert out["first"][0] == 200 and not any(r["accepted"] for r in out["first"][1]["results"])
    status, answer, retry = out["second"]
    assert status == 429 and "share of this validator's verification time" in answer["error"]
    assert "\n" not in answer["error"] and int(retry) >= 1
    assert out["status"][0] == 429 and out["health"][0] in (200, 503) and out["other client"][0] == 200

    async def together(s, base, runner):
        first = await _post(s, base + "/broadcast_txs", json=_bad_batch(20, 4))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as other:
            return first, await _post(other, base + "/broadcast_tx_sync", json=_bad_batch(1, 5)["txs"][0])
    (tmp_path / "all").mkdir()
    first, other = _serve(tmp_path / "all", together, submit_share_s=1000.0, submit_total_s=0.1)
    # (the total spent, or, contended, the other site over its fair part of it once its body was read)
    assert first[0] == 200 and other[0] == 429 and "this validator's verification time" in other[1]["error"]


def test_bounds_count_an_ipv6_client_by_its_64():
    from consensus.rpc import client_of
    assert client_of("2001:db8:1:2::5") == client_of("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_of("2001:db8:1:3::5") != client_of("2001:db8:1:2::5")
    assert client_of("::ffff:10.0.0.1") == client_of("10.0.0.1") == "10.0.0.1"
    assert client_of("fe80::1%eth0") == "fe80::/64" and client_of(None) == "?"


def test_a_body_that_cannot_be_decoded_is_a_400_not_a_logged_500(tmp_path, caplog):
    """Content-Encoding gzip or deflate over bytes that are neither: aiohttp's decode error went
    through the handler as a 500 with two logged tracebacks per request; now a one-line 400."""
    head = b"POST /broadcast_tx_sync HTTP/1.1\r\nHost: x\r\nContent-Encoding: %s\r\nContent-Length: 10\r\n\r\n"

    async def scenario(s, base, runner):
        host, port = runner.cfg.rpc
        return [await _raw(host, port, head % enc + b"0123456789") for enc in (b"gzip", b"deflate")]
    with caplog.at_level(logging.INFO):
        answers = _serve(tmp_path, scenario)
    for raw in answers:
        top, _, body = raw.partition(b"\r\n\r\n")
        assert top.startswith(b"HTTP/1.1 400"), raw[:200]
        error = json.loads(body)["error"]
        assert error.startswith("the body cannot be read") and "\n" not in error
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info], \
        [r.getMessage() for r in caplog.records]


# ---- the demo's arguments ------------------------------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (["--validators", "2"], "BFT needs n = 3f + 1 >= 4"),
    (["--backends", "gpu"], "'gpu' is not an accel backend"),
    (["--backends", ""], "'' is not an accel backend"),
])
def test_the_demo_refuses_bad_arguments_before_any_network(tmp_path, capsys, args, message):
    """--validators 2 and --backends gpu went on to sign the load and start networks that could
    not run (an unknown backend was a traceback in Localnet)."""
    from consensus import demo
    with pytest.raises(SystemExit) as exc:
        demo.main(["--out", str(tmp_path / "out"), *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_demo_never_removes_a_runs_directory_it_did_not_write(tmp_path, capsys, monkeypatch):
    """`--out .` in a directory of one's own removed its runs/ (shutil.rmtree) before anything
    else: a new user's files lost. Now only a previous demo's networks are removed."""
    from consensus import demo

    def no_network(*args, **kwargs):
        raise RuntimeError("this test starts no network")
    monkeypatch.setattr(demo, "Localnet", no_network)
    mine = tmp_path / "runs" / "experiment-7"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as exc:
        demo.main(["--out", str(tmp_path), "--backends", "cpu", "--sizes", "100", "--blocks", "10"])
    assert exc.value.code == 2 and "which no demo wrote; not removing it" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me"
    # a previous demo's own networks are still replaced
    ours = tmp_path / "again"
    (ours / "runs" / "cpu-100").mkdir(parents=True)
    (ours / "runs" / "software-100.json").write_text("{}")
    with pytest.raises(RuntimeError, match="no network"):
        demo.main(["--out", str(ours), "--backends", "cpu", "--sizes", "100", "--blocks", "10"])
    assert not (ours / "runs").exists()


@pytest.mark.parametrize("url", ["file:///etc", "ftp://example.com", "http://", "gopher://x:70"])
def test_the_client_takes_only_http_urls(url):
    """urllib opened file:// and ftp:// URLs too: `accel tx --node file:///etc ...` read local
    files as if a validator answered."""
    with pytest.raises(ValueError, match="expected http://host:port"):
        cl.Client(url)


def test_the_client_bounds_an_answers_size_and_shape(stub, monkeypatch):
    """A hostile server's endless body was read whole into memory; an error answer that is a JSON
    array was an AttributeError."""
    monkeypatch.setattr(cl, "MAX_ANSWER", 1000)
    _Stub.answers = {"/status": (200, b'{"x": "' + b"a" * 5000 + b'"}'), "/health": (500, b"[1]")}
    c = cl.Client(stub, timeout=5)
    with pytest.raises(cl.RpcError, match="over 0 MiB"):
        c.status()
    with pytest.raises(cl.RpcError, match="500"):
        c.health()


def test_keygen_into_a_missing_directory_names_it(tmp_path, capsys):
    """Since key files are written through a temporary file (the --force fix above) it said
    "[Errno 2] No such file or directory: '.../.k.json.x1y2'", a name the user never gave."""
    from accel.cli import main
    assert main(["keygen", "--out", str(tmp_path / "no" / "k.json")]) == 2
    assert f"no directory {tmp_path / 'no'} to write the key file in" in capsys.readouterr().err
    assert main(["keygen", "--out", str(tmp_path), "--force"]) == 2
    assert "is a directory" in capsys.readouterr().err


# ---- accel testnet's hosts -----------------------------------------------------------------------
@pytest.mark.parametrize("hosts,message", [
    ("10.0.0.1:26700,10.0.0.2:26700,10.0.0.3:26700,10.0.0.4:26700", "without a port"),
    ("[::1],[::2],[::3],[::4]", "without brackets"),
    ('a",b,c,d', "neither a host name nor an IP address"),
    ("a b,c,d,e", "neither a host name nor an IP address"),
])
def test_testnet_refuses_hosts_it_cannot_write(tmp_path, capsys, hosts, message):
    """"10.0.0.1:26700" was written as the host "10.0.0.1:26700" (peers dialled
    10.0.0.1:26700:26700); bracketed IPv6 and names with quotes or spaces went into every file."""
    from accel.cli import main
    assert main(["testnet", "--hosts", hosts, "--out", str(tmp_path / "net")]) == 2
    assert message in capsys.readouterr().err
    assert not list((tmp_path / "net").glob("node*.toml")) if (tmp_path / "net").exists() else True


def test_an_ipv6_testnet_binds_both_families_and_writes_valid_urls(tmp_path):
    """Validators of IPv6 hosts bound 0.0.0.0 (IPv4 only), which their peers, dialling the IPv6
    addresses, could never reach; network.json's URLs were http://::1:26657."""
    from consensus.localnet import write_network
    from consensus.node import NodeConfig
    paths = write_network(tmp_path, ["::1", "::2", "::3", "::4"])
    cfg = NodeConfig.load(paths[0])
    assert cfg.listen == ("::", 26700) and cfg.rpc == ("::", 26657) and cfg.addresses[1] == ("::2", 26700)
    urls = [v["rpc"] for v in json.loads((tmp_path / "network.json").read_text())["validators"]]
    assert urls[0] == "http://[::1]:26657"
    cl.Client(urls)  # each a URL the client takes
