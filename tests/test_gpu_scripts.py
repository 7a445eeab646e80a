"""The GPU check's throughput script runs on PoCL in CI: a change to what it calls (kernel
arguments, module names) fails here instead of on a lease's few device minutes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_throughput_runs_on_pocl_and_matches_the_c_fallback(backends, tmp_path):
    if not any(b.name == "opencl" for b in backends):
        pytest.skip("no OpenCL backend here to run bench/gpu_throughput.py --small")
    out = tmp_path / "throughput.json"
    proc = subprocess.run(
        [sys.executable, "bench/gpu_throughput.py", "--gpu", "opencl", "--small", "--repeat", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    for kernel in ("ed25519", "merkle", "greeks", "margin"):
        assert data[kernel]["batch"]["identical"], kernel
        assert data[kernel]["sweep"]["rows"], kernel
    ed = data["ed25519"]
    assert ed["batch"]["all_valid"] and ed["batch"]["default_path"] in ("one-kernel", "GPU-shaped")
    assert ed["block"]["kernel_ms_by_threads_per_block"]["32"] > 0
