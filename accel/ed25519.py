"""Ed25519 signature verification under the ZIP-215 rules (docs/ED25519.md) on any backend.

Verdicts are a pure function of the inputs: every backend, and the C fallback's batch and single
paths, return the same bits."""
from __future__ import annotations

import numpy as np

from . import dispatch
from .packing import _buffer_problem, pack_fixed, pack_messages

_BYTES = (bytes, bytearray, memoryview)


def _packed(public_keys, messages, signatures):
    pks = pack_fixed(public_keys, 32, "public key")
    sigs = pack_fixed(signatures, 64, "signature")
    data, offsets = pack_messages(messages)
    n = len(pks)
    if not n == len(sigs) == len(offsets) - 1:
        raise ValueError(
            f"batch lengths differ: {n} public keys, {len(offsets) - 1} messages, {len(sigs)} signatures")
    return n, pks, data, offsets, sigs


def ed25519_verify_all(public_keys, messages, signatures, backend=None) -> bool:
    """Whether every signature is valid: all() of ed25519_verify_batch's verdicts, for block
    validation, where one bad signature makes the block invalid. On the C fallback it is one
    batch equation per chunk with no search for the bad ones, so its cost does not depend on how
    many are bad (bench/RESULTS.md); inputs as for ed25519_verify_batch."""
    n, pks, data, offsets, sigs = _packed(public_keys, messages, signatures)
    if n == 0:
        return True

    def work(b):
        if b.name != "cpu":  # a GPU checks every signature at the same cost anyway
            return bool(_verify(b, n, pks, data, offsets, sigs).all())
        out = b.empty((1,), np.uint8)
        b.launch("ed25519_verify_all", n, pks, data, offsets, sigs, out)
        return bool(out[0])

    return dispatch.run(backend, work, n, "ed25519")


def ed25519_verify_batch(public_keys, messages, signatures, backend=None) -> np.ndarray:
    """One bool per signature: does signatures[i] sign messages[i] under public_keys[i]?

    public_keys: (n, 32) uint8 array or list of 32-byte strings; signatures likewise with 64
    bytes; messages: list of bytes (or a 2-D uint8 array of equal-length rows). Malformed input
    raises ValueError/TypeError naming the index; a key or R that is not a curve point is simply a
    False verdict. With b bad signatures the C fallback's cost grows with b, up to its single
    checks of the whole batch plus two batch checks (the price when all are bad)."""
    n, pks, data, offsets, sigs = _packed(public_keys, messages, signatures)
    if n == 0:
        return np.zeros(0, dtype=bool)

    return dispatch.run(backend, lambda b: _verify(b, n, pks, data, offsets, sigs), n, "ed25519").astype(bool)


def _verify(b, n, pks, data, offsets, sigs) -> np.ndarray:
    """Per-signature verdicts (uint8) on backend b."""
    if b.name == "cpu":
        out = b.empty((n,), np.uint8)
        b.launch("ed25519_verify", n, pks, data, offsets, sigs, *ordering(b, None), out)
        return out

    def step(lo, hi):
        base = offsets[lo]
        rebased = offsets[lo:hi + 1] - base
        out = b.empty((hi - lo,), np.uint8)
        args = [b.to_device(a) for a in (pks[lo:hi], data[base:offsets[hi]], rebased, sigs[lo:hi])]
        order = hash_order(rebased)
        if GPU_SHAPED:
            verify_on_gpu(b, hi - lo, *args, out, order)
        else:
            b.launch("ed25519_verify", hi - lo, *args, *ordering(b, order), out)
        return out
    return b.chunked(n, GPU_CHUNK, step)


# Which kernels a GPU runs. The one-kernel portable path measured faster on an H100 (3.41 M sig/s
# of kernel time at 2^20, against 2.51-2.55 M for the GPU-shaped kernels, both with sliding
# windows; bench/RESULTS.md), so it is the default; both are tested on every GPU target and timed
# by bench/gpu_throughput.py, and the default follows the measurement.
GPU_SHAPED = False
GPU_GROUP = 32  # ED_GPU_GROUP in kernels/ed25519_gpu.h
GPU_CHUNK = 1 << 17  # signatures per chunk: copies of one overlap the kernels of the one before


def hash_order(offsets: np.ndarray) -> np.ndarray | None:
    """Signatures ordered by the SHA-512 blocks their challenge hashes (64 + message bytes), so
    a warp of a kernel that hashes takes messages of one length; None when all lengths match."""
    blocks = (np.diff(offsets) + (64 + 17 + 127)) // 128
    if len(blocks) == 0 or blocks.min() == blocks.max():
        return None
    return np.argsort(np.minimum(blocks, 0xFFFF).astype(np.uint16), kind="stable").astype(np.uint32)


def ordering(b, order: np.ndarray | None) -> tuple:
    """The (order, use_order) arguments of the GPU kernels that hash, on backend b. An order goes
    up through b.upload_order, which checks it is a permutation on the host: launch refuses any
    other, and would otherwise copy a GPU's order back to check it."""
    if order is None:
        return b.to_device(np.zeros(1, np.uint32)), np.uint32(0)
    return b.upload_order(order), np.uint32(1)


def verify_on_gpu(b, n, pks, data, offsets, sigs, out, order) -> None:
    """The GPU-shaped path (kernels/ed25519_gpu.h) over device buffers: challenges, then checks."""
    ks = b.empty((n, 32), np.uint8)
    b.launch("ed25519_challenge", n, pks, data, offsets, sigs, *ordering(b, order), ks)
    b.launch("ed25519_verify_k", n, pks, sigs, ks, out, group=GPU_GROUP)


def _check_bytes(name: str, value, length: int | None) -> None:
    if not isinstance(value, _BYTES):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    problem = _buffer_problem(value)
    if problem:  # len() of a shaped view counts its rows, not its bytes
        raise TypeError(f"{name} is {problem}, expected bytes")
    if length is not None and len(value) != length:
        raise ValueError(f"{name} is {len(value)} bytes, expected {length}")


def ed25519_verify(public_key, message, signature, backend=None) -> bool:
    """Whether `signature` (64 bytes) signs `message` under `public_key` (32 bytes), by ZIP-215."""
    _check_bytes("public_key", public_key, 32)
    _check_bytes("message", message, None)
    _check_bytes("signature", signature, 64)
    return bool(ed25519_verify_batch([public_key], [message], [signature], backend)[0])


def ed25519_key_is_safe(public_key, backend=None) -> bool:
    """Whether `public_key` is canonically encoded and not of small order. ZIP-215 verification
    accepts other keys too; this tells an application which keys it may want to refuse."""
    _check_bytes("public_key", public_key, 32)
    return bool(_keys_safe(pack_fixed([public_key], 32, "public key"), backend)[0])


def ed25519_keys_are_safe(public_keys, backend=None) -> np.ndarray:
    """ed25519_key_is_safe's verdict for each key, one bool each, in one kernel launch (one call
    a key paid the call's overhead, about 7 us on the C fallback, per key). public_keys: an (n, 32)
    uint8 array or a list of 32-byte strings; anything else is a ValueError (a wrong shape, dtype
    or length, naming the index) or TypeError (not bytes). Dispatched as the other Ed25519 calls:
    a batch below gpu_min_batch stays on the C fallback, and a GPU that fails is logged and the
    batch redone there, with the same verdicts."""
    return _keys_safe(pack_fixed(public_keys, 32, "public key"), backend).astype(bool)


def _keys_safe(pks: np.ndarray, backend) -> np.ndarray:
    """Per key of the (n, 32) uint8 array, 1 if safe else 0 (uint8)."""
    n = len(pks)
    if n == 0:
        return np.zeros(0, np.uint8)

    def work(b):
        out = b.empty((n,), np.uint8)
        b.launch("ed25519_key_is_safe", n, b.to_device(pks), out)
        return b.to_host(out)

    return dispatch.run(backend, work, n, "ed25519")
