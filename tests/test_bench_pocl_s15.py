"""Project rule 6 (review s15): the C fallback is timed in a process where OpenCL's driver (PoCL,
OpenCL on a CPU) never started, since PoCL's threads stay once started and compete with the C
fallback's. Each path that times the C fallback is run in a fresh process, which reports whether
libpocl was mapped into it at the moment the C fallback would be timed; nothing is timed here.
Before the fix, `make bench` ran every suite in one process (OpenCL cases, then C-fallback ones),
the sweep's argument check and `accel merkle-demo` created every backend first, and `auto` created
the OpenCL backend only to learn that it was not a GPU."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Prints, as JSON, what each C-fallback run saw: {"pocl": libpocl mapped in this process}.
SEEN = """
import json, os
seen = []
def pocl_loaded():
    return "libpocl" in open("/proc/self/maps").read()
"""


def _run(script: str, tmp_path: Path, *args: str) -> list:
    path = tmp_path / "probe.py"
    path.write_text(SEEN + textwrap.dedent(script) + "\nprint('SEEN ' + json.dumps(seen))\n")
    done = subprocess.run([sys.executable, "-P", str(path), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT), "ACCEL_BACKEND": "auto"})
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    line = [x for x in done.stdout.splitlines() if x.startswith("SEEN ")][-1]
    return json.loads(line[len("SEEN "):])


def _opencl_is_pocl_only(tmp_path) -> None:
    """Skips where OpenCL is absent (nothing to start) or offers a GPU (auto then picks it)."""
    seen = _run("""
        from accel.backends.opencl import is_gpu_device, list_devices
        seen.extend(is_gpu_device(d) for d in list_devices())
    """, tmp_path) if _has_pyopencl() else []
    if not seen or any(seen):
        pytest.skip("needs OpenCL with no GPU device (PoCL)")


def _has_pyopencl() -> bool:
    import importlib.util
    return importlib.util.find_spec("pyopencl") is not None


def test_auto_on_pocl_takes_the_c_fallback_without_starting_pocl(tmp_path):
    _opencl_is_pocl_only(tmp_path)
    seen = _run("""
        import accel
        b = accel.get_backend()
        seen.append({"backend": b.name, "pocl": pocl_loaded()})
        accel.merkle_root([b"x"] * 100)
        seen.append({"backend": "after a call", "pocl": pocl_loaded()})
    """, tmp_path)
    assert seen == [{"backend": "cpu", "pocl": False}, {"backend": "after a call", "pocl": False}]


@pytest.mark.parametrize("child_says, picked", [("1", "opencl"), ("0", "cpu")])
def test_auto_creates_opencl_where_a_child_process_found_a_gpu(monkeypatch, child_says, picked):
    """`auto` asks a child process whether OpenCL would pick a GPU; only then is it created here
    (and picked, CUDA absent). The child's answer is the one the test gives."""
    if not _has_pyopencl():
        pytest.skip("no pyopencl")
    from types import SimpleNamespace

    from accel import backends, config
    created = []
    real = backends._create

    def create(name, cfg):
        created.append(name)
        if name == "cuda":
            raise backends.BackendUnavailable("no CUDA in this test")
        return SimpleNamespace(name="opencl", is_gpu=True, device="a GPU") if name == "opencl" else real(name, cfg)
    monkeypatch.setattr(backends, "_create", create)
    monkeypatch.setattr(backends, "run_apart",
                        lambda code, *args, timeout: subprocess.CompletedProcess(args, 0, f"{child_says}\n", ""))
    monkeypatch.setattr(backends._base, "drivers_started", {})  # as if this process had started none
    backends.reset()
    try:
        config.use(config.AccelConfig(backend="auto"))
        assert backends.get_backend().name == picked
        assert ("opencl" in created) == (picked == "opencl")
    finally:
        backends.reset()


def test_validate_bench_on_the_configured_backend(tmp_path):
    """`accel validate-bench` without --backend (README's and RESULTS' commands): auto."""
    _opencl_is_pocl_only(tmp_path)
    seen = _run("""
        import contextlib, io
        import accel, accel.cli as cli
        real = accel.ed25519_verify_all
        def spy(*a, **k):
            seen.append({"backend": str(k.get("backend")), "pocl": pocl_loaded()})
            return real(*a, **k)
        accel.ed25519_verify_all = spy
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli.main(["validate-bench", "--app", "clearing", "--txs", "50", "--runs", "1", "--json"]) == 0
    """, tmp_path)
    assert seen and not any(s["pocl"] for s in seen), seen


def test_merkle_demo_times_the_c_fallback_before_opencl_starts(tmp_path):
    seen = _run("""
        import contextlib, io
        import accel.cli as cli
        from accel import merkle
        real = merkle.merkle_root
        def spy(leaves, backend=None):
            seen.append({"backend": backend.name, "pocl": pocl_loaded()})
            return real(leaves, backend=backend)
        merkle.merkle_root = spy
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli.main(["merkle-demo", "--leaves", "64"]) == 0
    """, tmp_path)
    assert [s["pocl"] for s in seen if s["backend"] == "cpu"] == [False, False], seen


def test_consensus_sweep_checks_modes_apart_and_runs_the_c_fallback_first(tmp_path):
    """--modes opencl,cpu: the argument check tries OpenCL in a child process, and every point of
    the C fallback runs before the first of OpenCL (which starts PoCL here)."""
    if not _has_pyopencl():
        pytest.skip("no pyopencl")
    seen = _run(f"""
        import contextlib, io, sys
        sys.path.insert(0, {str(ROOT / "bench")!r})
        import consensus_sweep
        from accel.backends import BackendUnavailable, get_backend
        def one(n, txs, delay, mode, blocks):
            seen.append({{"mode": mode, "pocl": pocl_loaded()}})
            if mode == "opencl":
                get_backend("opencl")
            return {{"validation_ms": {{}}, "finality_ms": None}}
        consensus_sweep.one = one
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                consensus_sweep.main(["--validators", "4", "--txs", "10", "--delays", "0,5", "--modes", "opencl,cpu"])
            except SystemExit as exc:  # no OpenCL here: the check said so
                seen.append({{"exit": str(exc)}})
    """, tmp_path)
    if seen and "exit" in seen[0]:
        pytest.skip("OpenCL cannot run here")
    assert [s["mode"] for s in seen] == ["cpu", "cpu", "opencl", "opencl"], seen
    assert not any(s["pocl"] for s in seen if s["mode"] == "cpu"), seen


PLUGIN = """
import json, os
def pytest_runtest_call(item):
    with open(os.environ["POCL_PROBE_OUT"], "a") as fh:
        fh.write(json.dumps({"test": item.nodeid, "pid": os.getpid(),
                             "pocl": "libpocl" in open("/proc/self/maps").read()}) + "\\n")
"""


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_bench_runs_the_c_fallback_where_pocl_never_started(tmp_path):
    """The pytest commands of `make bench` (make -n), each case run once (--benchmark-disable,
    nothing timed), with a plugin noting at each case's call whether libpocl is mapped."""
    selection = "(test_merkle_accel and 1024]) or test_sha256_one_message"
    make = subprocess.run(["make", "-n", "-o", "setup", "bench", f"BENCH_ARGS=-k '{selection}'"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert make.returncode == 0, make.stderr
    lines = make.stdout.replace("\\\n", " ").splitlines()
    commands = [shlex.split(line.split("||")[0]) for line in lines if " -m pytest " in line]
    assert commands, make.stdout
    (tmp_path / "pocl_probe_s15.py").write_text(PLUGIN)
    out = tmp_path / "seen.jsonl"
    env = {**os.environ, "POCL_PROBE_OUT": str(out), "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
           "ACCEL_BACKEND": "auto"}
    for i, argv in enumerate(commands):
        # the Makefile's selection as it is; its outputs (autosave, JSON) go to tmp_path instead
        argv = [sys.executable] + [a for a in argv[1:] if a not in ("--benchmark-only", "--benchmark-autosave")
                                   and not a.startswith("--benchmark-json")]
        argv += ["-p", "pocl_probe_s15", "-p", "no:cacheprovider", "--benchmark-disable", "-q",
                 f"--benchmark-json={tmp_path / f'{i}.json'}"]
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode in (0, 5), (argv, done.stdout[-3000:], done.stderr[-2000:])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    c_fallback = [r for r in rows if "[cpu" in r["test"] or "backend]" in r["test"]]
    assert len(c_fallback) == 3, rows
    assert not [r["test"] for r in c_fallback if r["pocl"]], rows
    opencl = [r for r in rows if "[opencl" in r["test"]]
    assert not {r["pid"] for r in opencl} & {r["pid"] for r in c_fallback}, rows
