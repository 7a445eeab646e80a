"""The eleventh session's review of the backends (each test failed on the code before its fix).

- A backend that cannot start was cached as one exception object and raised again on every call:
  each raise extended its traceback with the caller's frames, which held their batches. A worker
  forked after the configured GPU backend started (every call redone on the C fallback) kept all it
  ever hashed: 41 -> 346 MiB after 300 calls of 1 MiB, 400 frames after 200 calls.
- `accel check` never ran the kernel block validation calls (ed25519_verify_all) nor the C
  fallback's batch path (chunks of at least 8 a thread; its 7 signatures were single checks): a
  C fallback whose verify_all said "all valid" was declared ready; and a GPU backend's check left
  out the C fallback, which keeps every batch below gpu_min_batch.
- CpuBackend.launch compared an array's item size, not its kind: float64 or int64 offsets passed
  as uint64_t were read 4.6e18 bytes away (SIGSEGV instead of KernelError)."""
import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import accel
from accel import readiness
from accel.backends import BackendUnavailable, KernelError, get_backend
from accel.backends.cpu import CpuBackend


def _depth(exc: BaseException) -> int:
    tb, depth = exc.__traceback__, 0
    while tb is not None:
        depth, tb = depth + 1, tb.tb_next
    return depth


def test_an_unavailable_backend_named_again_and_again_keeps_no_callers_frames():
    try:
        get_backend("cuda")
        pytest.skip("needs a machine where CUDA cannot start")
    except BackendUnavailable:
        pass
    depths = []
    for _ in range(50):
        try:
            get_backend("cuda")
        except BackendUnavailable as exc:
            depths.append(_depth(exc))
    assert max(depths) <= 2, depths[-1]  # (the cached object's grew by one frame a call)


FORKED = textwrap.dedent("""
    import gc, logging, os
    os.environ["ACCEL_BACKEND"] = "opencl"
    import accel
    from accel import backends
    accel.sha256_many([b"warm"])  # the configured OpenCL backend starts in the parent
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        logging.disable(logging.CRITICAL)
        rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20
        before = rss()
        for i in range(200):  # 200 batches of 1 MiB, each redone on the C fallback
            accel.sha256_many([bytes([i % 256]) * (1 << 20)])
        gc.collect()
        os.write(w, f"{rss() - before}".encode())
        os._exit(0)
    os.waitpid(pid, 0)
    print(os.read(r, 100).decode())
""")


def test_a_worker_forked_from_a_gpu_backend_frees_its_batches():
    try:
        get_backend("opencl")
    except BackendUnavailable as exc:
        pytest.skip(f"needs the OpenCL backend (PoCL): {exc}")
    out = subprocess.run([sys.executable, "-c", FORKED], capture_output=True, text=True, timeout=300, cwd=os.getcwd())
    grown = int(out.stdout.split()[0])
    assert grown < 64, f"the forked worker grew {grown} MiB over 200 batches of 1 MiB"


def _launches(monkeypatch) -> list:
    seen = []
    launch = CpuBackend.launch

    def spy(self, kernel, n, *args, **kw):
        seen.append((kernel, int(n)))
        return launch(self, kernel, n, *args, **kw)

    monkeypatch.setattr(CpuBackend, "launch", spy)
    return seen


def test_accel_check_runs_the_block_verdict_kernel_on_the_c_batch_path(monkeypatch):
    seen = _launches(monkeypatch)
    _, results = readiness.check("cpu")
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    threads = get_backend("cpu").threads
    blocks = [n for kernel, n in seen if kernel == "ed25519_verify_all"]
    # native/ed25519.c splits n into chunks of ceil(n / threads); below 8 a chunk is single checks
    assert blocks and -(-max(blocks) // threads) >= 8, seen


def test_accel_check_refuses_a_c_fallback_whose_block_verdicts_are_wrong(monkeypatch):
    launch = CpuBackend.launch

    def all_valid(self, kernel, n, *args, **kw):
        launch(self, kernel, n, *args, **kw)
        if kernel == "ed25519_verify_all":
            args[-1][0] = 1

    monkeypatch.setattr(CpuBackend, "launch", all_valid)
    _, results = readiness.check("cpu")
    assert [r.kernels for r in results if not r.ok] == ["ed25519_verify_all"]


def test_accel_check_of_a_gpu_backend_checks_the_c_fallback_too(monkeypatch):
    try:
        get_backend("opencl")
    except BackendUnavailable as exc:
        pytest.skip(f"needs the OpenCL backend (PoCL): {exc}")
    seen = _launches(monkeypatch)
    _, results = readiness.check("opencl")
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    assert {"ed25519_verify_all", "greeks", "portfolio_margin", "sha256_many"} <= {k for k, _ in seen}
    assert any(r.kernels == "cpu: ed25519_verify_all" for r in results)


@pytest.mark.parametrize("offsets", [np.array([0.0, 4.0]), np.array([0, -1], np.int64)], ids=["float64", "int64"])
def test_an_array_of_another_kind_is_refused_not_read_as_offsets(offsets):
    """(Run in this process: before the fix it died here with SIGSEGV.)"""
    b = get_backend("cpu")
    with pytest.raises(KernelError, match="array passed as uint64_t"):
        b.launch("sha256_many", 1, np.zeros(4, np.uint8), offsets, b.empty((1, 32), np.uint8))
    assert accel.sha256_many([b"abcd"]) == [hashlib.sha256(b"abcd").digest()]


def test_a_config_path_that_is_a_directory_is_refused_in_words(tmp_path):
    """(`accel node --config DIR` ended its one line with ": 3", the descriptor fdopen was given.)"""
    from accel import config
    with pytest.raises(config.ConfigError) as exc:
        config.read_toml(tmp_path)
    assert str(exc.value) == f"cannot read config {tmp_path}: not a regular file"


@pytest.mark.parametrize("index", [1.0, True, "1"])
def test_a_message_index_that_is_not_an_integer_is_refused(index):
    """(Packed.item(1.0) and Packed.item(True) read message 1.)"""
    from accel.packing import pack_messages
    from accel import Packed
    with pytest.raises(TypeError, match="a message index is an integer"):
        Packed(*pack_messages([b"a", b"b"])).item(index)
    assert Packed(*pack_messages([b"a", b"b"])).item(np.int64(1)) == b"b"
