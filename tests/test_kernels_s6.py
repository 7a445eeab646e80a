"""Review of the kernels and the accel API (session 6): adversarial inputs, concurrency and backend
differences.

Regression tests for the defects found (each failed before its fix):
- a Packed batch's offsets were checked in the caller's own array and the kernels then indexed the
  data with that same array, read while the GIL is released (the C fallback) or uploaded after the
  check (a GPU): another thread changing an offset in between sent the kernel past the data. A
  thread flipping one offset of a Packed that sha256_many was hashing segfaulted the process
  within seconds; a valid but different change gave digests of other messages than were checked.
  Now the offsets are copied, then checked, and the copy is what the kernels read."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from nacl.signing import SigningKey

import accel
from accel import dispatch
from accel.packing import Packed


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
    def flip():
        while not stop:
            offsets[n // 2] = np.uint64(1 << 60)  # far past the data
            offsets[n // 2] = good
    t = threading.Thread(target=flip)
    t.start()
    want, done, refused, start = accel.sha256_many([bytes(40)], backend="cpu")[0], 0, 0, time.monotonic()
    try:
        while time.monotonic() - start < 3 and done < 40:
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
