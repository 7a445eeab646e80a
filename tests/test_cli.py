"""The `accel` command as an operator and a script use it (issue 10): help, version, one-line
errors with status 2, `check` whose exit status says whether a validator may start, --json."""
import json
import os
import subprocess
import sys

import pytest

from accel.backends import BackendUnavailable, get_backend


def accel(*args, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("ACCEL_")} | env
    return subprocess.run([sys.executable, "-m", "accel.cli", *args], capture_output=True, text=True,
                          env=full, timeout=600)


def test_help_describes_every_command():
    out = accel("--help")
    assert out.returncode == 0
    for command in ("info", "check", "merkle-demo"):
        assert command in out.stdout
    assert "--leaves" in accel("merkle-demo", "--help").stdout
    assert "--software-validators K" in accel("localnet", "--help").stdout
    negative = accel("localnet", "--software-validators", "-1")
    assert negative.returncode == 2 and "--software-validators: must be at least 0" in negative.stderr


def test_bare_accel_prints_the_commands():
    out = accel()
    assert out.returncode == 2
    assert "check" in out.stderr and "required" not in out.stderr


def test_version():
    out = accel("--version")
    assert out.returncode == 0 and out.stdout.startswith("accel-verify ")


@pytest.mark.parametrize("args,env,message", [
    (("merkle-demo", "--leaves", "-5"), {}, "must be at least 1"),
    (("info",), {"ACCEL_GPU_FALLBACK": "yes"}, "ACCEL_GPU_FALLBACK must be true or false"),
    (("check",), {"ACCEL_THREADS": "many"}, "ACCEL_THREADS must be an integer"),
    (("localnet", "--software-validators", "5"), {}, "--software-validators 5: there are only 4 validators"),
    (("localnet", "--software-validators", "2", "--validation", "software"), {}, "every validator already is one"),
])
def test_errors_are_one_line_and_status_2(args, env, message):
    out = accel(*args, **env)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2  # argparse adds its usage line


@pytest.mark.parametrize("name", ["cpu", "opencl"])
def test_check_passes_on_the_c_fallback_and_pocl(name):
    """`accel check` in CI: both must be ready (PoCL is required under CI)."""
    try:
        get_backend(name)
    except BackendUnavailable as exc:
        if name == "opencl" and os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
            pytest.skip(f"no OpenCL here: {exc}")
        raise
    out = accel("check", "--backend", name)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ready: this validator may start" in out.stdout
    assert out.stdout.count("  ok  ") >= 7 and "FAIL" not in out.stdout
    report = json.loads(accel("check", "--backend", name, "--json").stdout)
    assert report["ready"] is True and all(k["ok"] for k in report["kernels"])


def test_check_fails_when_the_configured_backend_cannot_run():
    try:
        get_backend("cuda")
        pytest.skip("CUDA runs here")
    except BackendUnavailable:
        pass
    out = accel("check", ACCEL_BACKEND="cuda")
    assert out.returncode == 1
    assert "FAIL" in out.stdout and "NOT READY" in out.stdout
    info = accel("info", ACCEL_BACKEND="cuda")
    assert info.returncode == 0 and "accel check" in info.stdout


def test_info_and_demo_json():
    info = json.loads(accel("info", "--json").stdout)
    assert info["backends"]["cpu"]["available"] is True
    demo = json.loads(accel("merkle-demo", "--leaves", "1000", "--json").stdout)
    assert demo["agree"] is True and demo["leaves"] == 1000


def test_validate_bench_reports_every_stage(tmp_path):
    for validation in ("accel", "software"):
        report = tmp_path / f"{validation}.json"
        out = accel("validate-bench", "--app", "kv", "--txs", "300", "--runs", "2", "--validation", validation,
                    "--report", str(report))
        assert out.returncode == 0, out.stderr
        data = json.loads(report.read_text())
        assert data["txs"] == 300 and data["validation"] == validation
        assert set(data["validation_ms"]) == {"signatures", "tx_root", "execute", "state_root", "total"}
        assert data["validation_ms"]["total"] >= data["validation_ms"]["signatures"] > 0


def test_validate_bench_of_a_clearing_block_has_a_margin_stage(tmp_path):
    for flags in ([], ["--sig-cache"]):
        out = accel("validate-bench", "--app", "clearing", "--txs", "300", "--runs", "1", "--json", *flags)
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        ms = data["validation_ms"]
        assert data["sig_cache"] == bool(flags)
        assert set(ms) == {"signatures", "tx_root", "execute", "margin", "state_root", "total"}
        assert ms["margin"] > 0 and ms["total"] >= ms["signatures"]
    out = accel("validate-bench", "--app", "kv", "--sig-cache", "--txs", "10")
    assert out.returncode == 2 and "clearing app's mempool" in out.stderr
