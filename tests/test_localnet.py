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
    # times come from the events files, which a validator writes after its store: the 50 blocks
    # the run waited for are in every events file, a later one stored just before a validator
    # stopped may be in none
    assert [b["height"] for b in data["blocks"][:50]] == list(range(1, 51))
    assert all(b["committed_ms"] > 0 for b in data["blocks"][:50])
    assert all(b["committed_ms"] is None or b["committed_ms"] > 0 for b in data["blocks"][50:])
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


def test_localnet_stops_its_validators_on_ctrl_c(tmp_path):
    import signal

    from tests.test_node_process import wait_committing
    proc = subprocess.Popen([sys.executable, "-m", "accel.cli", "localnet", "--app", "kv", "--blocks", "100000",
                             "--txs-per-block", "5", "--backend", "cpu", "--dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_committing(proc, tmp_path)
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


# ---- a network of accelerated and software-only validators (issue 19) ----------------------------

MIXED = {"0": "accel", "1": "accel", "2": "software", "3": "software"}


def rejections(directory) -> list[str]:
    """Every block a validator refused, with its mode and reason, from the events files."""
    from pathlib import Path
    out = []
    for path in sorted(Path(directory).glob("node*.events.jsonl")):
        i = path.name.split(".")[0][4:]
        for line in path.read_text().splitlines():
            e = json.loads(line)
            if e["kind"] == "rejected":
                out.append(f"validator {i} ({MIXED.get(i)}) refused {e['proposer']}'s block: {e['reason']}")
    return out


def assert_one_chain(data: dict, blocks: int) -> None:
    """Every validator's store holds the same block id and state root at every height it committed."""
    chains = data["chains"]
    assert sorted(chains) == ["0", "1", "2", "3"] and all(len(c) >= blocks for c in chains.values())
    for i, chain in chains.items():
        assert [b["height"] for b in chain] == list(range(1, len(chain) + 1)), i
    for h in range(max(len(c) for c in chains.values())):
        at_h = {i: (c[h]["block_hash"], c[h]["state_root"]) for i, c in chains.items() if len(c) > h}
        assert len(set(at_h.values())) == 1, f"height {h + 1}: {at_h}"


def test_accel_and_software_validators_commit_one_chain_through_the_crash(tmp_path):
    """4 validators, the last 2 software-only (PyNaCl, hashlib, NumPy/SciPy margin) and the first 2
    through accel's C fallback, run the clearing market through its volatility crash: one chain
    (the same block ids and state roots at every height in every store), no block refused, and the
    crash's liquidations in the committed state, replayed from a software-only validator's store
    by accel with every state root recomputed."""
    from consensus.demo import market_story
    from consensus.node import NodeConfig
    report, net = tmp_path / "report.json", tmp_path / "net"
    proc = subprocess.run(
        [sys.executable, "-m", "accel.cli", "localnet", "--validators", "4", "--software-validators", "2",
         "--blocks", "40", "--txs-per-block", "20", "--backend", "cpu", "--base-timeout-ms", "500", "--dir", str(net),
         "--report", str(report), "--timeout", "240"], capture_output=True, text=True, timeout=300)
    refused = rejections(net)
    assert proc.returncode == 0, "\n".join(refused[:10]) + "\n" + proc.stdout + proc.stderr[-3000:]
    assert "validators 2, 3 software-only" in proc.stderr and "chains agree" in proc.stdout
    assert not refused, "\n".join(refused[:10])
    data = json.loads(report.read_text())
    assert data["validation_modes"] == MIXED and data["software_validators"] == 2
    assert data["validation"] == "accel" and data["backend"] == "cpu"
    assert [NodeConfig.load(net / f"node{i}.toml").validation for i in range(4)] == list(MIXED.values())
    assert_one_chain(data, 40)
    # both kinds validated blocks (each stage timed), not only voted on their own proposals
    full = [b for b in data["blocks"] if b["txs"]]
    assert any(b["validation_ms"] for b in full) and any(b["software_validation_ms"] for b in full)
    for i in (0, 3):  # an accel validator's chain and a software-only one's, replayed through accel
        story = market_story(net / f"node{i}" / "validator.db")
        assert story["state_roots_recomputed"] and story["blocks"] >= 40, i
        assert story["liquidations"] == 8 and story["insurance_charged_usd"] > 0, i
        assert story["transactions"]["trades"] > 300 and story["transactions"]["oracle marks"] > 5, i


def cofactored_only(key, msg: bytes, sig: bytes) -> bytes:
    """The signer's own signature rewritten with R' = R + T (T of order 8) and S' = r + k' a: valid
    under ZIP-215 (cofactored), refused by libsodium (cofactorless): the signature that forked
    software-only validators from accelerated ones before issue 19."""
    import hashlib

    from accel.ed25519_ref import L, add, challenge, decode, encode, torsion_points
    a = int.from_bytes(hashlib.sha512(bytes(key)).digest()[:32], "little") & (2**254 - 8) | 2**254  # RFC 8032 5.1.5
    pk = bytes(key.verify_key)
    r = (int.from_bytes(sig[32:], "little") - challenge(sig[:32], pk, msg) * a) % L
    r_enc = encode(add(decode(sig[:32]), torsion_points()[1]))
    return r_enc + ((r + challenge(r_enc, pk, msg) * a) % L).to_bytes(32, "little")


def test_mixed_validators_agree_on_signatures_only_zip215_accepts(tmp_path):
    """The clearing market's oracle marks signed with cofactored-only signatures (libsodium refuses
    them, ZIP-215 accepts them): accelerated and software-only validators admit and commit the
    same marks, on one chain, and no block is refused."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    from accel.ed25519_ref import zip215_verdict
    from consensus.apps.clearing_load import ORACLES, StreamFile, write_stream
    from consensus.localnet import Localnet
    from consensus.store import Store
    net = Localnet(4, 30, 20, "cpu", "accel", 0.0, str(tmp_path / "net"), 500.0, "clearing", software_validators=2)
    items = StreamFile(net.dir / "load.bin").take(10**6)
    crafted = set()
    for n, (body, sigs) in enumerate(items):
        for j, sig in enumerate(sigs):
            oracle = [k for k in ORACLES if _libsodium_ok(VerifyKey(bytes(k.verify_key)), body, sig, BadSignatureError)]
            if oracle:
                sigs[j] = cofactored_only(oracle[0], body, sig)
                assert zip215_verdict(bytes(oracle[0].verify_key), body, sigs[j])
                assert not _libsodium_ok(oracle[0].verify_key, body, sigs[j], BadSignatureError)
                crafted.add(sigs[j])
    write_stream(net.dir / "load.bin", items)
    assert len(crafted) >= 12  # every oracle signature of the stream's marks
    data = net.run(timeout_s=240, progress=lambda line: None)
    refused = rejections(net.dir)
    assert not refused, "\n".join(refused[:10])
    assert data["validation_modes"] == MIXED
    assert_one_chain(data, 30)
    for i in range(4):
        store = Store(net.dir / f"node{i}" / "validator.db")
        committed = {bytes(s) for p in store.history() for s in p.block.txs.sigs}
        store.close()
        # at least the setup's first mark of each underlying (two oracle signatures each), without
        # which no trade could apply
        assert len(committed & crafted) >= 4, i
    from consensus.demo import market_story
    story = market_story(net.dir / "node3" / "validator.db")
    assert story["state_roots_recomputed"] and story["transactions"]["oracle marks"] >= 2
    assert story["transactions"]["trades"] > 0


def _libsodium_ok(verify_key, body, sig, bad) -> bool:
    try:
        verify_key.verify(body, sig)
        return True
    except bad:
        return False
