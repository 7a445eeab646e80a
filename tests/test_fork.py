"""The C fallback in forked processes (issue 7): libgomp's thread pool does not survive fork(), so
a child whose parent had run a parallel region used to hang at its first call."""
import multiprocessing
import os
import select

import numpy as np

import accel


def _leaves():
    return np.random.default_rng(7).integers(0, 256, (100_000, 32), dtype=np.uint8)


def _root(leaves):
    return accel.merkle_root(leaves, backend="cpu")


def test_fork_pool_after_a_parallel_region(cpu):
    leaves = _leaves()
    want = accel.merkle_root(leaves, backend=cpu)  # the parent's OpenMP pool is now running
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = [pool.apply_async(_root, (leaves[: 50_000 + i],)) for i in range(3)]
        got = [r.get(timeout=120) for r in results]
    assert got[0] == accel.merkle_root(leaves[:50_000], backend=cpu)
    assert len(set(got)) == 3
    assert accel.merkle_root(leaves, backend=cpu) == want  # and the parent still has its threads


def test_bare_fork_after_a_parallel_region(cpu):
    leaves = _leaves()
    sig_case = ([bytes(32)], [b""], [bytes(64)])  # small-order A and R, S = 0: valid under ZIP-215
    want = accel.merkle_root(leaves, backend=cpu) + bytes([accel.ed25519_verify_all(*sig_case, backend=cpu)])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: any exception still ends it, with nothing written
        try:
            os.write(write, accel.merkle_root(leaves, backend="cpu")
                     + bytes([accel.ed25519_verify_all(*sig_case, backend="cpu")]))
        finally:
            os._exit(0)
    os.close(write)
    ready, _, _ = select.select([read], [], [], 120)
    if not ready:
        os.kill(pid, 9)
    os.waitpid(pid, 0)
    assert ready, "the forked child hung in the C fallback"
    got = os.read(read, 64)
    assert got == want
