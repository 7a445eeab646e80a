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
    chains = list(data["chains"].values())
    assert all(len(c) >= 50 for c in chains)
    shortest = min(len(c) for c in chains)
    assert all(c[:shortest] == chains[0][:shortest] for c in chains)
    assert [b["height"] for b in chains[1]] == list(range(1, len(chains[1]) + 1))
    full = [b for b in data["blocks"] if b["txs"]]
    assert full and set(full[0]["validation_ms"]) == {"signatures", "tx_root", "execute", "state_root", "total"}
    assert all(b["committed_ms"] > 0 for b in data["blocks"])
    assert any(b["finality_ms"] is not None and b["finality_ms"] > 0 for b in data["blocks"])


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
