"""Four validator processes on loopback (issue 8): at least 50 blocks each, one killed with SIGKILL
midway and restarted from its store, all four on the same committed chain; the report as scripts
read it."""
import json
import os
import subprocess
import sys

import pytest


def test_four_processes_commit_the_same_chain_through_a_kill(tmp_path):
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "accel.cli", "localnet", "--validators", "4", "--blocks", "50", "--txs-per-block", "20",
         "--kill-restart", "--base-timeout-ms", "300", "--backend", "cpu", "--dir", str(tmp_path / "net"),
         "--report", str(report), "--timeout", "240"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "killing validator 1" in proc.stderr and "restarting validator 1" in proc.stderr
    data = json.loads(report.read_text())
    assert data["validators"] == 4 and data["backend"] == "cpu" and data["validation"] == "accel"
    assert data["app"] == "clearing"  # the default
    chains = list(data["chains"].values())
    assert all(len(c) >= 50 for c in chains)
    shortest = min(len(c) for c in chains)
    assert all(c[:shortest] == chains[0][:shortest] for c in chains)
    assert [b["height"] for b in chains[1]] == list(range(1, len(chains[1]) + 1))
    full = [b for b in data["blocks"] if b["txs"]]
    assert full and set(full[0]["validation_ms"]) == {"signatures", "tx_root", "execute", "margin", "state_root", "total"}
    assert all(b["committed_ms"] > 0 for b in data["blocks"])
    assert any(b["finality_ms"] is not None and b["finality_ms"] > 0 for b in data["blocks"])
    # the market went through its volatility crash: every leveraged account liquidated, the
    # insurance fund charged, and validator 1's chain (killed and restarted) replays to its roots
    from consensus.demo import market_story
    story = market_story(tmp_path / "net" / "node1" / "validator.db")
    assert story["state_roots_recomputed"] and story["blocks"] >= 50
    assert story["liquidations"] == 8 and story["insurance_charged_usd"] > 0
    assert story["transactions"]["trades"] > 500 and story["transactions"]["oracle marks"] > 10


def test_a_node_refuses_to_start_on_a_backend_that_cannot_run(tmp_path):
    from accel.backends import BackendUnavailable, get_backend
    from consensus.localnet import write_configs
    try:
        get_backend("cuda")
        pytest.skip("CUDA runs here")
    except BackendUnavailable:
        pass
    config = write_configs(tmp_path, 4, 10, "accel", 0.0, 1000.0)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCEL_")} | {"ACCEL_BACKEND": "cuda"}
    proc = subprocess.run([sys.executable, "-m", "accel.cli", "node", "--config", str(config)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode != 0
    assert "cannot run" in proc.stderr and "not starting" in proc.stderr
    assert not (tmp_path / "node0").exists() or not (tmp_path / "node0" / "validator.db").exists()


def test_tcp_transport_drops_malformed_frames_and_keeps_going():
    """Garbage, a frame of a future version and a truncated body are dropped and counted; the
    message after them on the same connection still arrives; an impossible length closes only
    that connection."""
    import asyncio
    import socket
    import struct

    from consensus import messages
    from consensus.net import Network

    async def scenario():
        got = []
        port = socket.socket()
        port.bind(("127.0.0.1", 0))
        addr = port.getsockname()
        port.close()
        net = Network(0, [addr, ("127.0.0.1", 1)], lambda sender, msg: got.append((sender, msg)))
        await net.start()
        good = messages.encode(messages.BlockRequest(bytes(range(32))))
        future = good[:4] + b"\x09" + good[5:]
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(struct.pack(">H", 1) + struct.pack(">I", 3) + b"abc" + future
                     + struct.pack(">I", 8) + b"\x01\x04" + bytes(6) + good)
        await writer.drain()
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.01)
        _, w2 = await asyncio.open_connection(*addr)
        w2.write(struct.pack(">H", 1) + struct.pack(">I", messages.MAX_MESSAGE + 1))
        await w2.drain()
        await asyncio.sleep(0.1)
        writer.write(good)
        await writer.drain()
        for _ in range(100):
            if len(got) == 2:
                break
            await asyncio.sleep(0.01)
        await net.stop()
        return got, net.dropped

    got, dropped = asyncio.run(scenario())
    assert [(s, m.block_id) for s, m in got] == [(1, bytes(range(32)))] * 2
    assert dropped == 4


def test_localnet_stops_its_validators_on_ctrl_c(tmp_path):
    import signal
    import time
    proc = subprocess.Popen([sys.executable, "-m", "accel.cli", "localnet", "--blocks", "100000", "--txs-per-block", "5",
                             "--backend", "cpu", "--dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob("node*.events.jsonl")):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "stopped" in err
    ps = subprocess.run(["pgrep", "-f", str(tmp_path / "node")], capture_output=True, text=True)
    assert ps.stdout.strip() == "", "validator processes left running"


def test_key_value_localnet_checks_every_signature(tmp_path):
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "accel.cli", "localnet", "--app", "kv", "--validators", "4", "--blocks", "8",
         "--txs-per-block", "30", "--backend", "cpu", "--base-timeout-ms", "500", "--dir", str(tmp_path / "net"),
         "--report", str(report), "--timeout", "240"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(report.read_text())
    assert data["app"] == "kv"
    chains = list(data["chains"].values())
    shortest = min(len(c) for c in chains)
    assert shortest >= 8 and all(c[:shortest] == chains[0][:shortest] for c in chains)
    full = [b for b in data["blocks"] if b["txs"] and b["validation_ms"]]
    assert full and all(set(b["validation_ms"]) == {"signatures", "tx_root", "execute", "state_root", "total"}
                        for b in full)
