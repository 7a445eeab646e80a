"""Review of the kernels and the accel API (session 6): adversarial inputs, concurrency and backend
differences.

Regression tests for the defects found (each failed before its fix):
- a Packed batch's offsets were checked in the caller's own array and the kernels then indexed the
  data with that same array, read while the GIL is released (the C fallback) or uploaded after the
  check (a GPU): another thread changing an offset in between sent the kernel past the data. A
  thread flipping one offset of a Packed that sha256_many was hashing segfaulted the process
  within seconds; a valid but different change gave digests of other messages than were checked.
  Now the offsets are copied, then checked, and the copy is what the kernels read.
- the same race in portfolio_margin and standard_margin: a Portfolio's and a Marks' arrays are
  read-only copies checked again on every call, but read-only is a flag any thread may set back,
  and the kernels then read the object's arrays: a thread making the instrument ids (or offsets)
  writeable, setting one past the instruments and back segfaulted portfolio_margin within
  seconds. Now each call checks and hands the kernels its own sealed copies.
- backend="" (or 0, False) silently ran on the configured backend, and skipped the rule that keeps
  small batches of the configured GPU on the C fallback (dispatch.run applies it to None only);
  bytes or other objects were cached as unknown names, one entry per distinct value. Now only None
  means the configured backend: another type is a TypeError, an unknown string BackendUnavailable,
  neither remembered.
- verify_merkle_proof took a shaped memoryview root by its row count ("root is 1 bytes" for 32
  bytes in one row) and raised "can't concat memoryview to bytes" for a strided leaf; both are now
  a TypeError naming the view, as ed25519_verify does.
- two builds of one CUDA module into one directory (two `accel build-cuda` runs sharing the
  cache, or a module named twice) shared their .cu and .part paths: one deleted the other's source
  mid-compile or moved its half-written output into place (FileNotFoundError seen with a stand-in
  compiler). Each build now works in a directory of its own beside the target.
- opencl_device = " " (a blank value) matched every OpenCL device whose name has a space and took
  the first of them, a CPU driver listed before the GPU included, where an empty value takes the
  first GPU: now refused, saying why.
- a process forked after it had used the OpenCL backend hung for ever at its first OpenCL call in
  the child (PoCL's threads, like any GPU driver's state, do not survive fork(); a fresh context
  hung too), where the C fallback already runs on one thread in such a child. Now a GPU backend
  started before a fork is unavailable in the child: a named one raises BackendUnavailable saying
  why, `auto` takes the C fallback, and a backend object kept from the parent refuses work with a
  KernelError that dispatch redoes on the C fallback (logged).

Attacks that held are kept as guards: Ed25519 batches whose errors cancel in an unweighted sum,
and every backend and C thread count called from many threads at once."""
from __future__ import annotations

import random
import subprocess
import threading
import sys
import textwrap

import numpy as np
import pytest
from nacl.signing import SigningKey

import accel
from accel import dispatch
from accel.packing import Packed
from accel.risk import CALL, FUTURE, PUT, Marks, Portfolio


def _packed(msgs: list[bytes]) -> Packed:
    offsets = np.zeros(len(msgs) + 1, np.uint64)
    np.cumsum([len(m) for m in msgs], out=offsets[1:])
    return Packed(np.frombuffer(b"".join(msgs), np.uint8).copy(), offsets)


def _signed(n: int):
    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(n)]
    msgs = [bytes([i]) * (i * 7 % 50) for i in range(n)]
    sigs = [k.sign(m).signature for k, m in zip(keys, msgs)]
    sigs[3] = sigs[3][:40] + bytes([sigs[3][40] ^ 1]) + sigs[3][41:]
    return [k.verify_key.encode() for k in keys], msgs, sigs


# ---------------------------------------------------------------- Packed offsets after the check

def test_packed_offsets_changed_after_the_check_do_not_reach_the_kernels(backends, monkeypatch):
    """Another thread rewrites the caller's offsets between the check and the kernel (simulated
    at dispatch, after packing, before any backend reads them) to a valid but different split:
    every API still computes over the batch it checked."""
    leaves = [bytes([i % 251]) * (i % 70) for i in range(41)]
    pks, msgs, sigs = _signed(20)
    apis = {
        "sha256_many": (leaves, lambda p, b: accel.sha256_many(p, backend=b)),
        "merkle_root": (leaves, lambda p, b: accel.merkle_root(p, backend=b)),
        "merkle_proof": (leaves, lambda p, b: accel.merkle_proof(p, 40, backend=b)),
        "ed25519_verify_batch": (msgs, lambda p, b: accel.ed25519_verify_batch(pks, p, sigs, backend=b).tolist()),
        "ed25519_verify_all": (msgs[4:], lambda p, b: accel.ed25519_verify_all(pks[4:], p, sigs[4:], backend=b)),
    }
    real_run = dispatch.run
    for b in backends:
        for name, (items, call) in apis.items():
            want = call(items, b)
            packed = _packed(items)
            caller_offsets = packed.offsets

            def run(*args, **kw):
                # every message moved to the end: still valid offsets, other messages
                caller_offsets[1:-1] = caller_offsets[-1]
                return real_run(*args, **kw)

            monkeypatch.setattr(dispatch, "run", run)
            got = call(packed, b)
            monkeypatch.setattr(dispatch, "run", real_run)
            assert caller_offsets[1] == caller_offsets[-1] != 0  # the change did happen
            assert got == want, (b.name, name)


_RACE = textwrap.dedent("""
    import sys, threading, time
    import numpy as np
    import accel
    from accel.packing import Packed
    n = 100_000
    data = np.zeros(n * 40, np.uint8)
    offsets = np.arange(n + 1, dtype=np.uint64) * np.uint64(40)
    packed, good, stop = Packed(data, offsets), offsets[n // 2], []
    def flip():  # far past the data about half the time, so a check may pass and a kernel then read it
        while not stop:
            for value in (np.uint64(1 << 60), good):
                offsets[n // 2] = value
                for _ in range(300):
                    pass
    t = threading.Thread(target=flip)
    t.start()
    want, done, refused, start = accel.sha256_many([bytes(40)], backend="cpu")[0], 0, 0, time.monotonic()
    try:
        while time.monotonic() - start < 3 and done < 60:
            try:
                got = accel.sha256_many(packed, backend="cpu")
            except ValueError:  # the check saw the bad offset: refused, as it should be
                refused += 1
                continue
            assert set(got) == {want}, "digests of other bytes than the checked batch"
            done += 1
    finally:
        stop.append(1)
        t.join()
    print("done", done, "refused", refused)
""")


def test_a_thread_flipping_a_packed_offset_cannot_crash_the_c_fallback():
    """A real race, in a child process (a segfault there fails this test instead of ending the
    run): one thread keeps setting an offset of a Packed far past its data and back while the
    main thread hashes it on the C fallback. Each call is refused or hashes the checked batch."""
    proc = subprocess.run([sys.executable, "-c", _RACE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert "done" in proc.stdout


# ---------------------------------------------------------------- margin books after the check

def _book(n_accounts=40, per=5, m=12, seed=3):
    rng = np.random.default_rng(seed)
    marks = Marks(index=100.0, rate=0.01, forward=rng.uniform(90, 110, m), strike=rng.uniform(60, 140, m),
                  expiry=rng.uniform(0.0, 1.0, m), vol=rng.uniform(0.2, 1.0, m),
                  kind=np.array([CALL, PUT, FUTURE] * (m // 3), np.uint8))
    book = Portfolio(offsets=np.arange(n_accounts + 1) * per, instrument=rng.integers(0, m, n_accounts * per),
                     size=rng.uniform(-5, 5, n_accounts * per))
    return book, marks


@pytest.mark.parametrize("api", ["portfolio_margin", "standard_margin"])
def test_margin_books_changed_after_the_check_do_not_reach_the_kernels(backends, monkeypatch, api):
    """A thread makes the book's arrays writeable again and changes them between the per-call
    check and the kernel (simulated at dispatch): offsets and instrument ids still valid but other
    ones, sizes and marks other values. Every backend margins the book as it was checked."""
    real_run = dispatch.run
    fn = getattr(accel, api)
    for b in backends:
        book, marks = _book()
        want = [a.tobytes() for a in fn(book, marks, backend=b)]

        def run(*args, **kw):
            for arr, value in ((book.offsets, None), (book.instrument, 0), (book.size, 7.0), (marks.forward, 50.0),
                               (marks.kind, FUTURE)):
                arr.flags.writeable = True
                if value is None:
                    arr[1:-1] = arr[-1]  # every position in the first account
                else:
                    arr[:] = value
                arr.flags.writeable = False
            return real_run(*args, **kw)

        monkeypatch.setattr(dispatch, "run", run)
        got = [a.tobytes() for a in fn(book, marks, backend=b)]
        monkeypatch.setattr(dispatch, "run", real_run)
        assert book.offsets[1] == book.offsets[-1] and (book.instrument == 0).all()  # the change did happen
        assert got == want, (b.name, api)


_MARGIN_RACE = textwrap.dedent("""
    import sys, threading, time
    import numpy as np
    import accel
    from accel.risk import CALL, Marks, Portfolio
    m, n, per = 50, 20_000, 8
    rng = np.random.default_rng(1)
    marks = Marks(index=100.0, rate=0.01, forward=np.full(m, 100.0), strike=rng.uniform(50, 150, m),
                  expiry=np.full(m, 0.2), vol=np.full(m, 0.5), kind=np.full(m, CALL, np.uint8))
    book = Portfolio(offsets=np.arange(n + 1) * per, instrument=rng.integers(0, m, n * per),
                     size=rng.uniform(-5, 5, n * per))
    arr = book.instrument if sys.argv[1] == "instrument" else book.offsets
    k, stop = len(arr) // 2, []
    good, bad = arr[k:].copy(), (-(1 << 31) if sys.argv[1] == "instrument" else 1 << 40)
    want = accel.portfolio_margin(book, marks, backend="cpu")
    def flip():  # bad about half the time, so a check may pass and a kernel then read it
        while not stop:
            for value in (bad, good):
                arr.flags.writeable = True
                arr[k:] = value
                arr.flags.writeable = False
                for _ in range(300):
                    pass
    t = threading.Thread(target=flip)
    t.start()
    done = refused = 0
    start = time.monotonic()
    try:
        while time.monotonic() - start < 3 and done < 60:
            try:
                got = accel.portfolio_margin(book, marks, backend="cpu")
            except ValueError:  # a check saw the bad value: refused, as it should be
                refused += 1
                continue
            assert all((g == w).all() for g, w in zip(got, want)), "margins of another book than was checked"
            done += 1
    finally:
        stop.append(1)
        t.join()
    print("done", done, "refused", refused)
""")


@pytest.mark.parametrize("array", ["instrument", "offsets"])
def test_a_thread_rewriting_a_sealed_book_cannot_crash_the_c_fallback(array):
    """A real race, in a child process: one thread makes the book's instrument ids (or offsets)
    writeable, sets half of them far outside the instruments (positions) and back, while the main thread
    margins the book on the C fallback. Each call is refused or margins the book as checked."""
    proc = subprocess.run([sys.executable, "-c", _MARGIN_RACE, array], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert "done" in proc.stdout


# ---------------------------------------------------------------- backend names

def _raised(name):
    try:
        accel.get_backend(name)
    except accel.BackendUnavailable as exc:
        return exc
    raise AssertionError(f"{name!r} was taken")


@pytest.mark.parametrize("name,error", [("", accel.BackendUnavailable), (" cpu", accel.BackendUnavailable),
                                        ("CPU", accel.BackendUnavailable), (False, TypeError), (0, TypeError),
                                        (b"cpu", TypeError), (["cpu"], TypeError)])
def test_a_backend_that_is_not_a_name_is_refused_not_the_configured_one(monkeypatch, name, error):
    """Only None stands for the configured backend; every other value that is not a backend's
    name is refused by every API, and not remembered."""
    from accel import backends, config
    monkeypatch.setenv("ACCEL_BACKEND", "cpu")
    config.reload()
    with pytest.raises(error, match="auto, cpu, opencl, cuda"):
        accel.get_backend(name)
    with pytest.raises(error):
        accel.sha256_many([b"x"], backend=name)
    with pytest.raises(error):
        accel.ed25519_verify_batch([bytes(32)], [b""], [bytes(64)], backend=name)
    assert all(isinstance(key, str) and key in config.BACKENDS for key in backends._instances)
    if isinstance(name, str):  # the readiness check fails for it instead of passing the configured one
        from accel import readiness
        assert readiness.check(name) == (name, [readiness.KernelCheck("backend", False, str(_raised(name)))])
    assert accel.sha256_many([b"x"], backend=None) == accel.sha256_many([b"x"], backend="cpu")


# ---------------------------------------------------------------- Merkle proofs: buffers

def test_proof_roots_and_leaves_that_are_not_plain_bytes_are_named():
    leaves = [b"a", b"b", b"c"]
    root, proof = accel.merkle_root(leaves, backend="cpu"), accel.merkle_proof(leaves, 2, backend="cpu")
    rows = memoryview(np.frombuffer(root, np.uint8).reshape(4, 8))
    with pytest.raises(TypeError, match="root is a 2-D memoryview"):
        accel.verify_merkle_proof(rows, b"c", proof)
    with pytest.raises(TypeError, match="leaf is a non-contiguous memoryview"):
        accel.verify_merkle_proof(root, memoryview(b"cxcx")[::2], proof)
    assert accel.verify_merkle_proof(memoryview(bytearray(root)), memoryview(b"c"), proof)


# ---------------------------------------------------------------- Ed25519: cancelling errors

def test_errors_that_cancel_in_an_unweighted_batch_sum_fail_each_signature(backends):
    """Signature i with S + d and signature j with S - d (both S canonical): their errors cancel in
    the sum of the S values, so a batch equation with equal (or predictable) weights would pass
    both. Each must get its single verdict, False, at every batch size around the C fallback's
    batch threshold and chunking, and make verify_all False."""
    from accel.ed25519_ref import L
    pks, msgs, sigs = _signed(70)
    sigs[3] = SigningKey(bytes([4]) * 32).sign(msgs[3]).signature  # undo _signed's tampering
    rng = random.Random(5)
    for n in (2, 7, 8, 9, 16, 17, 64, 70):
        i, j = rng.sample(range(n), 2)
        d = rng.randrange(1, L)
        bad = list(sigs[:n])
        for at, delta in ((i, d), (j, -d)):
            s = (int.from_bytes(bad[at][32:], "little") + delta) % L
            bad[at] = bad[at][:32] + s.to_bytes(32, "little")
        want = [k not in (i, j) for k in range(n)]
        for b in backends:
            assert accel.ed25519_verify_batch(pks[:n], msgs[:n], bad, backend=b).tolist() == want, (b.name, n)
            assert accel.ed25519_verify_all(pks[:n], msgs[:n], bad, backend=b) is False, (b.name, n)
            assert accel.ed25519_verify_all(pks[:n], msgs[:n], sigs[:n], backend=b) is True, (b.name, n)


# ---------------------------------------------------------------- many threads at once

def test_threads_on_every_backend_and_thread_count_get_the_serial_bits(backends):
    """Six Python threads call verification, Merkle, SHA-256, greeks and margin at once on the C
    fallback at 1, 2 and 3 OpenMP threads and on every other backend (the C calls release the
    GIL, so they overlap): every result equals the serial one, bit for bit."""
    from accel.backends.cpu import CpuBackend
    pks, msgs, sigs = _signed(120)
    # past the C fallback's thresholds for going parallel (8,192 leaves, 4 greeks blocks, 4,096 positions)
    leaves = [bytes([i % 256]) * (i % 90) for i in range(9000)]
    x = np.linspace(10.0, 1000.0, 3000)
    book, marks = _book(n_accounts=800, per=6)
    jobs = {
        "verify": lambda b: accel.ed25519_verify_batch(pks, msgs, sigs, backend=b).tobytes(),
        "all": lambda b: accel.ed25519_verify_all(pks[4:], msgs[4:], sigs[4:], backend=b),
        "root": lambda b: accel.merkle_root(leaves, backend=b),
        "sha": lambda b: b"".join(accel.sha256_many(leaves, backend=b)),
        "greeks": lambda b: np.array(accel.greeks(x, 500.0, 0.3, 0.01, 0.6, x > 400.0, backend=b)).tobytes(),
        "margin": lambda b: b"".join(a.tobytes() for a in accel.portfolio_margin(book, marks, backend=b)),
    }
    pool = [CpuBackend(1), CpuBackend(2), CpuBackend(3), *backends]
    want = {name: fn(pool[0]) for name, fn in jobs.items()}
    assert want["all"] is True and want["verify"].count(0) == 1
    errors = []

    def worker(seed):
        r = random.Random(seed)
        for _ in range(12):
            b, name = r.choice(pool), r.choice(sorted(jobs))
            try:
                if jobs[name](b) != want[name]:
                    errors.append((name, b.device))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append((name, b.device, repr(exc)))

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---------------------------------------------------------------- CUDA prebuilds side by side

_SLOW_COMPILER = """#!{python}
import sys, time
args = sys.argv[1:]
out, src = args[args.index("-o") + 1], args[args.index("-o") - 1]
time.sleep(0.2)
data = open(src, "rb").read()
with open(out, "wb") as f:  # written in two halves, as a compiler may
    f.write(b"\\x7fELF" + data[:len(data) // 2])
    f.flush()
    time.sleep(0.2)
    f.write(data[len(data) // 2:])
print("ptxas info    : Compiling entry function 'av_stand_in'", file=sys.stderr)
"""


def test_two_builds_of_one_cuda_module_into_one_directory_both_finish_whole(tmp_path):
    """A stand-in for nvcc that takes a moment and writes its output in two halves; two builds of
    merkle.h for one architecture run at once into one directory. Both succeed, the cubin is whole
    (the full source behind the ELF magic), and nothing else is left in the directory."""
    from concurrent.futures import ThreadPoolExecutor

    from accel.backends import cubins
    compiler = tmp_path / "nvcc"
    compiler.write_text(_SLOW_COMPILER.format(python=sys.executable))
    compiler.chmod(0o755)
    out = tmp_path / "cubins"
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(cubins.build, "merkle.h", "sm_90", out, (), str(compiler)) for _ in range(2)]
        paths = [f.result()[0] for f in futures]
    assert paths[0] == paths[1] == cubins.find(out, "merkle.h", "sm_90")
    assert paths[0].read_bytes() == b"\x7fELF" + cubins.module_source("merkle.h").encode()
    assert [p.name for p in out.iterdir()] == [paths[0].name]


# ---------------------------------------------------------------- OpenCL device choice

def test_a_blank_opencl_device_is_refused_not_matched_against_every_name(monkeypatch):
    pytest.importorskip("pyopencl")
    import pyopencl as cl

    from accel.backends import opencl

    class Dev:
        def __init__(self, name, kind):
            self.name, self.type = name, kind

    cpu_dev, gpu_dev = Dev("pthread-cpu AMD EPYC", cl.device_type.CPU), Dev("NVIDIA H100 80GB", cl.device_type.GPU)
    monkeypatch.setattr(opencl, "list_devices", lambda: [cpu_dev, gpu_dev])
    assert opencl.pick_device("") is gpu_dev
    assert opencl.pick_device("epyc") is cpu_dev
    for blank in (" ", "  ", "\t"):
        with pytest.raises(accel.BackendUnavailable, match="only whitespace"):
            opencl.pick_device(blank)


# ---------------------------------------------------------------- GPU backends across fork()

_FORK = textwrap.dedent("""
    import os, select, sys
    import accel
    leaves = [bytes([i % 256]) * 40 for i in range(5000)]
    want = accel.merkle_root(leaves, backend="opencl")  # the parent has started the driver
    kept = accel.get_backend("opencl")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            out = []
            for how in ("opencl", kept, None, "auto", "cpu"):
                try:
                    out.append("same" if accel.merkle_root(leaves, backend=how) == want else "DIFFERENT")
                except accel.BackendUnavailable as exc:
                    out.append("unavailable: " + str(exc))
            os.write(write, "\\n".join(out).encode())
        finally:
            os._exit(0)
    os.close(write)
    ready, _, _ = select.select([read], [], [], 60)
    if not ready:
        os.kill(pid, 9)
    os.waitpid(pid, 0)
    print(os.read(read, 65536).decode() if ready else "HUNG")
    assert accel.merkle_root(leaves, backend="opencl") == want  # the parent keeps its driver
""")


def test_a_process_forked_after_opencl_ran_does_not_hang_in_it(backends):
    """The parent runs a Merkle root on OpenCL, then forks. In the child, backend="opencl" is
    unavailable with the reason, the parent's backend object falls back to the C fallback (same
    root), None and "auto" take the C fallback: nothing hangs."""
    if not any(b.name == "opencl" for b in backends):
        pytest.skip("no OpenCL backend here")
    proc = subprocess.run([sys.executable, "-c", _FORK], capture_output=True, text=True, timeout=180,
                          env={**__import__("os").environ, "ACCEL_BACKEND": "auto"})
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-2000:])
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("unavailable: the opencl backend was started in process"), lines
    assert "cannot follow a fork" in lines[0]
    assert lines[1:] == ["same"] * 4, lines
