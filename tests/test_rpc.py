"""The validators' client API (issue 21): consensus/rpc.py on a node, the Python client
(consensus/client.py), `accel keygen` / `accel tx`, and a 4-validator network that commits 1,000
clearing transactions submitted through it."""
import asyncio
import json
import signal
import subprocess
import sys
import time

import pytest
from nacl.signing import SigningKey

from consensus import client as cl
from consensus.apps.clearing_load import T0
from consensus.localnet import Localnet, write_configs
from consensus.node import NodeConfig, NodeRunner
from consensus.rpc import RateLimit, Rpc

USD = 10**8


# ---- one node's API, in process: every refusal a 4xx with a one-line reason ------------------------
def _node(tmp_path, **rpc) -> NodeRunner:
    cfg = NodeConfig.load(write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, load="none", rpc_port=0)[0])
    runner = NodeRunner(cfg)
    return runner


def _serve(tmp_path, scenario, **limits):
    """scenario(session, base_url, runner) against a node's API on a free port (the node itself
    not running consensus)."""
    import aiohttp
    runner = _node(tmp_path)

    async def main():
        rpc = Rpc(runner, runner.cfg.rpc, **limits)
        await rpc.start()
        try:
            async with aiohttp.ClientSession() as session:
                return await scenario(session, "http://%s:%d" % runner.cfg.rpc, runner)
        finally:
            await rpc.stop()
    try:
        return asyncio.run(main())
    finally:
        runner.store.close()


async def _get(session, url, **kw):
    async with session.get(url, **kw) as r:
        return r.status, await r.json(content_type=None)


async def _post(session, url, **kw):
    async with session.post(url, **kw) as r:
        return r.status, await r.json(content_type=None)


def test_bad_requests_get_a_4xx_with_one_line_and_the_node_carries_on(tmp_path):
    alice = SigningKey(bytes(range(32)))
    body, sigs = cl.register(alice)

    async def scenario(s, base, runner):
        out = {}
        out["not json"] = await _post(s, base + "/broadcast_tx_sync", data=b"{nope")
        out["no tx"] = await _post(s, base + "/broadcast_tx_sync", json={"signatures": []})
        # (neither hex nor base64: "0xzz" is base64 of 3 bytes, a malformed transaction, since review s21)
        out["bad hex"] = await _post(s, base + "/broadcast_tx_sync", json={"tx": "0xzzz", "signatures": []})
        out["bad base64"] = await _post(s, base + "/broadcast_tx_sync", json={"tx": "!!", "signatures": []})
        out["sigs not list"] = await _post(s, base + "/broadcast_tx_sync", json={"tx": "0x00", "signatures": "x"})
        out["too deep"] = await _post(s, base + "/broadcast_txs", data=b"[" * 2000 + b"]" * 2000)
        out["tx not a string"] = await _post(s, base + "/broadcast_txs", json={"txs": [{"tx": [1], "signatures": []}]})
        out["not a list"] = await _post(s, base + "/broadcast_txs", json={"txs": 5})
        out["too many"] = await _post(s, base + "/broadcast_txs", json={"txs": [cl.encode_tx((body, sigs))] * 11})
        out["too large"] = await _post(s, base + "/broadcast_txs", data=b"x" * 5000)
        out["no such path"] = await _get(s, base + "/nope")
        out["wrong method"] = await _get(s, base + "/broadcast_tx_sync")
        out["hash missing"] = await _get(s, base + "/tx")
        out["hash short"] = await _get(s, base + "/tx?hash=0xabcd")
        out["unknown tx"] = await _get(s, base + "/tx?hash=" + "00" * 32)
        out["unknown account"] = await _get(s, base + "/account?key=0x" + "11" * 32)
        # a transaction the mempool refuses is an answer, not an error
        out["malformed"] = await _post(s, base + "/broadcast_tx_sync", json={"tx": "0x0102", "signatures": []})
        out["bad signature"] = await _post(s, base + "/broadcast_tx_sync",
                                           json=cl.encode_tx((body, [bytes(64)])))
        out["good"] = await _post(s, base + "/broadcast_tx_sync", json=cl.encode_tx((body, sigs)))
        import base64
        out["good, base64"] = await _post(s, base + "/broadcast_tx_sync", json={
            "tx": base64.b64encode(body).decode(), "signatures": [base64.b64encode(x).decode() for x in sigs]})
        out["pending"] = await _get(s, base + "/tx?hash=" + out["good"][1]["hash"])
        out["full"] = await _post(s, base + "/broadcast_tx_sync", json=cl.encode_tx(cl.register(SigningKey(bytes(32)))))
        out["status"] = await _get(s, base + "/status")
        out["health"] = await _get(s, base + "/health")
        return out

    out = _serve(tmp_path, scenario, max_body_bytes=4096, max_batch=10, max_mempool=1)
    for name in ("not json", "too deep", "tx not a string", "no tx", "bad hex", "bad base64", "sigs not list", "not a list", "too many", "hash missing",
                 "hash short"):
        status, answer = out[name]
        assert status == 400 and "\n" not in answer["error"] and answer["error"], (name, out[name])
    assert out["too large"][0] == 413 and "4096 bytes" in out["too large"][1]["error"]
    assert out["no such path"][0] == 404 and "/status" in out["no such path"][1]["error"]
    assert out["wrong method"][0] == 405
    assert out["unknown tx"][0] == 404 and out["unknown tx"][1]["status"] == "unknown"
    assert out["unknown account"][0] == 404 and "not registered" in out["unknown account"][1]["error"]
    assert out["malformed"][0] == 200 and out["malformed"][1]["reason"].startswith("malformed")
    assert not out["malformed"][1]["accepted"] and out["malformed"][1]["code"] == 1
    assert out["bad signature"][1]["reason"] == "a signature does not verify"
    assert out["good"] == (200, {"hash": __import__("hashlib").sha256(body).hexdigest(), "code": 0, "accepted": True,
                                 "reason": ""})
    assert out["good, base64"][1]["accepted"]
    assert out["pending"] == (200, {"hash": out["good"][1]["hash"], "status": "pending"})
    assert out["full"][0] == 503 and "mempool full" in out["full"][1]["error"]
    status = out["status"][1]
    assert out["status"][0] == 200 and status["height"] == 0 and status["mempool"] == 1
    assert status["peers"] == {"connected": 0, "validators": 3, "last_heard_s": {}} and status["backend"] == "software"
    assert out["health"][0] == 503 and "no block committed yet" in out["health"][1]["reason"]


def test_requests_over_the_rate_get_429(tmp_path):
    async def scenario(s, base, runner):
        return [(await _get(s, base + "/status"))[0] for _ in range(12)]
    codes = _serve(tmp_path, scenario, requests_per_s=5.0)
    assert codes[:10] == [200] * 10 and codes[10:] == [429, 429]  # a burst of 2 s worth, then refused
    limit = RateLimit(1.0)
    assert [limit.allow("a", 0.0), limit.allow("a", 0.0), limit.allow("a", 0.0), limit.allow("a", 1.5)] == \
        [True, True, False, True]
    assert limit.allow("b", 0.0)  # per client


def test_the_rpc_table_is_checked(tmp_path):
    from accel.config import ConfigError
    path = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, rpc_port=0)[0]
    path.write_text(path.read_text() + "max_batch = 0\n")
    with pytest.raises(ConfigError, match=r"\[rpc\] max_batch must be above 0"):
        NodeConfig.load(path)
    path.write_text(path.read_text().replace("max_batch = 0\n", 'listen = "nowhere"\n').replace(
        '[rpc]\nlisten = "127.0.0.1', '[rpc]\nmax_mempool = 5\nxlisten = "127.0.0.1'))
    with pytest.raises(ConfigError, match="unknown \\[rpc\\] key 'xlisten'"):
        NodeConfig.load(path)


# ---- keys and the command line ----------------------------------------------------------------------
def test_keygen_writes_a_private_key_file_and_keeps_an_existing_one(tmp_path):
    from accel.cli import main
    path = tmp_path / "alice.json"
    assert main(["keygen", "--out", str(path)]) == 0
    assert path.stat().st_mode & 0o777 == 0o600
    key = cl.read_key(path)
    assert json.loads(path.read_text())["public_key"] == bytes(key.verify_key).hex()
    assert main(["keygen", "--out", str(path)]) == 2  # exists: not overwritten
    assert cl.read_key(path) == key
    with pytest.raises(ValueError, match="finer than 1e-8"):
        cl.quanta("0.000000001")
    assert cl.quanta("1000.5") == 100_050_000_000


def test_accel_tx_says_in_one_line_when_no_validator_answers(tmp_path, capsys):
    from accel.cli import main
    from consensus.localnet import _free_ports
    main(["keygen", "--out", str(tmp_path / "k.json")])
    port = _free_ports(1)[0]
    assert main(["tx", "--node", f"http://127.0.0.1:{port}", "register", "--key", str(tmp_path / "k.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("accel: error: http://127.0.0.1:") and "\n" not in err


# ---- a network: 1,000 transactions through the API ----------------------------------------------
def _market(oracles, accounts: int, total: int, chain: int = 1):
    """Signed transactions for the network chain, in an order every validator can apply:
    registrations, deposits, a BTC mark by two of its oracles, then BTC-future trades between neighbours
    (alternating sides)."""
    keys = [SigningKey(bytes([7, i % 256, i // 256]) + bytes(29)) for i in range(accounts)]
    nonce = [0] * accounts
    txs = [cl.register(k, chain) for k in keys]
    for i, k in enumerate(keys):
        txs.append(cl.deposit(k, nonce[i], "USD", 10_000_000 * USD, chain))
        nonce[i] += 1
    txs.append(cl.mark(oracles[:2], "BTC", 60_000.0, 1, T0, {1: 0.6, 2: 0.6, 3: 0.6, 9: 0.6}, chain))
    n = 0
    while len(txs) < total:
        a, b = (2 * n) % accounts, (2 * n + 1) % accounts
        buyer, seller = (a, b) if (n // (accounts // 2)) % 2 == 0 else (b, a)
        txs.append(cl.trade(keys[buyer], nonce[buyer], keys[seller], nonce[seller], 4, 1, 60_000 * USD, chain))
        nonce[buyer] += 1
        nonce[seller] += 1
        n += 1
    return keys, nonce, txs


def test_four_validators_commit_a_thousand_transactions_sent_through_the_api(tmp_path):
    net = Localnet(4, 1, 250, "cpu", "accel", 0.0, str(tmp_path / "net"), 500.0, "clearing", rpc_port=0, load="none")
    keys, nonces, txs = _market(net.oracles, 100, 1000)
    assert len(txs) == 1000
    c = cl.Client(net.rpc_urls(), timeout=30)
    try:
        for i in range(4):
            net.start(i)
        try:
            c.wait_healthy(60)  # healthy = committing (empty blocks: no built-in load)
        except cl.RpcError:
            pytest.fail("\n".join(_tail(net, i) for i in range(4)))
        verdicts = c.broadcast(txs)
        assert [v["reason"] for v in verdicts if not v["accepted"]] == []
        heights = c.wait_committed([v["hash"] for v in verdicts], timeout=60)
        assert len(heights) == 1000
        # every validator indexes them at the same heights
        sample = [verdicts[i]["hash"] for i in (0, 150, 400, 999)]
        for url in c.urls[1:]:
            assert [c.tx(h, url)["height"] for h in sample] == [heights[h] for h in sample]
        # an account as committed, with its proof against the state root
        i = 5
        c.wait_committed([verdicts[-1]["hash"]], url=c.urls[2])  # validator 2 may be a block behind
        acct = c.account(keys[i], c.urls[2])
        assert acct["nonce"] == nonces[i] and acct["key"] == bytes(keys[i].verify_key).hex()
        assert acct["positions"] in ({}, {"4": 1}, {"4": -1}) and acct["collateral"]["USD"] > 0
        assert acct["height"] >= max(heights.values())
        assert cl.verify_account_proof(acct)
        forged = json.loads(json.dumps(acct))
        forged["proof"]["leaf"] = forged["proof"]["leaf"][:-2] + "ff"
        assert not cl.verify_account_proof(forged)
        status = c.status(c.urls[3])
        assert status["height"] >= max(heights.values()) and status["peers"]["connected"] == 3
        assert not status["catching_up"] and status["backend"] == "cpu"
        assert all(c.health(u) == {"healthy": True} for u in c.urls)
        # resubmitting a committed transaction: refused as stale, and its status still "committed"
        again = c.broadcast(txs[:1], all_validators=False)[0]
        assert not again["accepted"] and "registered" in again["reason"]
        assert c.tx(again["hash"])["status"] == "committed"
        # a validator stopped: the others report the peer gone
        net.procs[3].send_signal(signal.SIGTERM)
        net.procs[3].wait(10)
        deadline = time.monotonic() + 15
        while c.status(c.urls[0])["peers"]["connected"] != 2:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    finally:
        net.stop()
    log3 = (net.dir / "node3.log").read_text()
    assert "validator 3 stopping: SIGTERM" in log3 and "validator 3 stopped at height" in log3


def _tail(net, i) -> str:
    path = net.dir / f"node{i}.log"
    return path.read_text()[-2000:] if path.exists() else "(no log)"


def test_accel_tx_commands_against_a_network(tmp_path):
    """keygen, register, deposit (amount in units), status and account through `accel`."""
    net = Localnet(4, 1, 50, "cpu", "accel", 0.0, str(tmp_path / "net"), 500.0, "clearing", rpc_port=0, load="none")
    node = ",".join(net.rpc_urls())
    accel = [sys.executable, "-m", "accel.cli"]

    def run(*args):
        return subprocess.run(accel + list(args), capture_output=True, text=True, timeout=120)
    try:
        for i in range(4):
            net.start(i)
        cl.Client(node.split(",")).wait_healthy(60)
        key = tmp_path / "alice.json"
        assert run("keygen", "--out", str(key)).returncode == 0
        r = run("tx", "--node", node, "--wait", "60", "register", "--key", str(key))
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["status"] == "committed"
        r = run("tx", "--node", node, "--wait", "60", "deposit", "--key", str(key), "--amount", "1234.5")
        assert r.returncode == 0, r.stderr
        digest = json.loads(r.stdout)["hash"]
        status = json.loads(run("tx", "--node", node, "status", digest).stdout)
        assert status["status"] == "committed" and status["height"] >= 1
        acct = json.loads(run("tx", "--node", node, "account", str(key)).stdout)
        assert acct["nonce"] == 1 and acct["collateral"] == {"USD": 123_450_000_000}
        r = run("tx", "--node", node, "deposit", "--key", str(key), "--amount", "1", "--nonce", "0")
        assert r.returncode == 1 and "stale" in json.loads(r.stdout)["reason"]
    finally:
        net.stop()


def test_the_api_through_a_validator_killed_and_restarted(tmp_path):
    """1,000 transactions committed; validator 1 SIGKILLed; 200 more committed by the other three;
    validator 1 restarted from its store: healthy again, and its index tells every transaction's
    height as the others do."""
    net = Localnet(4, 1, 250, "cpu", "accel", 0.0, str(tmp_path / "net"), 500.0, "clearing", rpc_port=0, load="none")
    keys, nonces, txs = _market(net.oracles, 100, 1000)
    c = cl.Client(net.rpc_urls(), timeout=30)
    try:
        for i in range(4):
            net.start(i)
        c.wait_healthy(60)
        first = [v["hash"] for v in c.broadcast(txs)]
        c.wait_committed(first, timeout=60)
        net.kill(1)
        three = cl.Client([u for i, u in enumerate(c.urls) if i != 1], timeout=30)
        more = [cl.withdraw(k, nonces[i] + j, "USD", USD) for j in range(2) for i, k in enumerate(keys)]
        verdicts = three.broadcast(more)
        assert all(v["accepted"] for v in verdicts), verdicts[0]
        later = three.wait_committed([v["hash"] for v in verdicts], timeout=60)
        net.start(1)
        c.wait_healthy(60)
        one = c.urls[1]
        c.wait_committed(list(later), timeout=60, url=one)
        sample = first[::97] + list(later)[::37]
        assert [r["height"] for r in c.statuses(sample, one)] == [r["height"] for r in c.statuses(sample)]
        acct = c.account(keys[7], one)
        assert acct["nonce"] == nonces[7] + 2 and cl.verify_account_proof(acct)
    finally:
        net.stop()
    assert "validator 1 stopping" not in (net.dir / "node1.log").read_text().split("starting")[1]  # SIGKILL: no word


def test_a_network_from_accel_testnet_on_four_loopback_addresses(tmp_path):
    """`accel testnet` writes the files for 4 hosts (here 127.0.0.1 .. 127.0.0.4, each validator
    binding its own address); 4 validators started from them commit 1,000 transactions sent
    through the API, an account reads back with its proof, every /health is 200."""
    import os

    from accel.cli import main
    from consensus.localnet import _free_ports
    port, rpc, metrics = _free_ports(3)
    hosts = [f"127.0.0.{i}" for i in range(1, 5)]
    assert main(["testnet", "--hosts", ",".join(hosts), "--out", str(tmp_path / "net"), "--port", str(port),
                 "--rpc-port", str(rpc), "--metrics-port", str(metrics), "--data-root", str(tmp_path / "data"),
                 "--listen-on-address", "--txs-per-block", "250", "--base-timeout-ms", "500"]) == 0
    net = json.loads((tmp_path / "net" / "network.json").read_text())
    assert [v["address"] for v in net["validators"]] == [f"{h}:{port}" for h in hosts]
    assert all((tmp_path / "net" / f"node{i}.toml").stat().st_mode & 0o777 == 0o600 for i in range(4))
    assert main(["testnet", "--hosts", ",".join(hosts), "--out", str(tmp_path / "net")]) == 2  # keys kept
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCEL_")} | {"ACCEL_BACKEND": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-m", "accel.cli", "node", "--config", str(tmp_path / "net" / f"node{i}.toml")],
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"node{i}.log", "w"), env=env)
             for i in range(4)]
    try:
        c = cl.Client([v["rpc"] for v in net["validators"]], timeout=30)
        c.wait_healthy(60)
        assert c.chain_id() == net["chain_id"]  # drawn by accel testnet, in every validator's file
        oracles = [cl.read_key(tmp_path / "net" / o["key_file"]) for o in net["oracles"]]  # accel testnet's
        keys, nonces, txs = _market(oracles, 100, 1000, net["chain_id"])
        verdicts = c.broadcast(txs)
        assert all(v["accepted"] for v in verdicts)
        c.wait_committed([v["hash"] for v in verdicts], timeout=60)
        acct = c.account(keys[3])
        assert acct["nonce"] == nonces[3] and cl.verify_account_proof(acct)
        assert all(c.health(u) == {"healthy": True} for u in c.urls)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(20)
    assert all((tmp_path / "data" / f"node{i}" / "validator.db").exists() for i in range(4))
