"""merkle_root over 32-byte leaves on each backend, against a hashlib tree in the same process."""
import hashlib
import os

import numpy as np
import pytest

import accel

SIZES = [1 << 10, 1 << 14, 1 << 17, 1 << 20]


def hashlib_root(leaves: list[bytes]) -> bytes:
    sha = hashlib.sha256
    level = [sha(b"\x00" + leaf).digest() for leaf in leaves]
    while len(level) > 1:
        up = [sha(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) & 1:
            up.append(level[-1])
        level = up
    return level[0]


def _leaves(n):
    return np.frombuffer(os.urandom(32 * n), np.uint8).reshape(n, 32)


def _rounds(n):
    return 3 if n >= 1 << 17 else 20


@pytest.mark.parametrize("n", SIZES)
def test_merkle_hashlib(benchmark, n):
    leaves = [r.tobytes() for r in _leaves(n)]
    benchmark.group = f"merkle_root n={n}"
    benchmark.extra_info.update(impl="hashlib", n=n, baseline=True)
    benchmark.pedantic(hashlib_root, args=(leaves,), rounds=_rounds(n), warmup_rounds=0)


@pytest.mark.parametrize("n", SIZES)
def test_hashlib_leaf_loop(benchmark, n):
    """Only the leaf hashes, in a hashlib loop: the floor of any pure-Python tree (about half of it)."""
    leaves = [r.tobytes() for r in _leaves(n)]
    sha = hashlib.sha256
    benchmark.group = f"merkle_root n={n}"
    benchmark.extra_info.update(impl="hashlib leaf loop only", n=n)
    benchmark.pedantic(lambda: [sha(b"\x00" + leaf).digest() for leaf in leaves], rounds=_rounds(n))


@pytest.mark.parametrize("n", SIZES)
def test_merkle_accel(benchmark, backend, n):
    leaves = _leaves(n)
    expected = accel.merkle_root(leaves, backend="cpu")
    assert accel.merkle_root(leaves, backend=backend) == expected  # also warms up / compiles
    benchmark.group = f"merkle_root n={n}"
    benchmark.extra_info.update(impl=f"accel-{backend.name}", device=backend.device, n=n)
    benchmark.pedantic(accel.merkle_root, args=(leaves,), kwargs={"backend": backend},
                       rounds=_rounds(n) * 2, warmup_rounds=1)


@pytest.mark.parametrize("n", [1 << 20])
def test_merkle_accel_from_list(benchmark, n):
    """The same tree from a Python list of bytes: includes packing the leaves."""
    leaves = [r.tobytes() for r in _leaves(n)]
    benchmark.group = f"merkle_root n={n}"
    benchmark.extra_info.update(impl="accel-cpu (list input)", n=n)
    benchmark.pedantic(accel.merkle_root, args=(leaves,), kwargs={"backend": "cpu"}, rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("how", ["configured backend", "named backend"])
def test_sha256_one_message(benchmark, how):
    """A vote-sized call: with the configured backend (backend=None) every call used to re-probe
    CUDA under a lock (issue 7); now it costs about what naming the backend does."""
    backend = None if how == "configured backend" else accel.get_backend("cpu")
    benchmark.group = "sha256_many([b'x'])"
    benchmark.extra_info.update(impl=f"accel, {how}", n=1, baseline=how == "named backend")
    assert benchmark(accel.sha256_many, [b"x"], backend=backend) == [hashlib.sha256(b"x").digest()]
