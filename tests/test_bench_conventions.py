"""The benchmark suites follow pytest-benchmark's conventions (issue 10): --benchmark-min-rounds
raises the suites' own rounds, and the JSON names the machine and libraries measured."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_min_rounds_option_and_machine_info(tmp_path):
    out = tmp_path / "b.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "bench" / "bench_merkle.py"),
         "-k", "test_merkle_accel and 1024", "--benchmark-only", "--benchmark-min-rounds=31",
         f"--benchmark-json={out}"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["benchmarks"] and all(b["stats"]["rounds"] >= 31 for b in data["benchmarks"])
    ours = data["machine_info"]["accel"]
    assert ours["cpu_model"] and isinstance(ours["cpu_flags"], list) and ours["cores"] >= 1
    assert "numpy" in ours["libraries"] and "cpu" in ours["backends"]
