"""Runs work on a backend; a GPU that fails mid-batch is logged and the work redone on the C
fallback, whose results are bit-identical, so a validator's verdict never depends on the GPU.
Every such fallback is counted by (backend, kernel): fallbacks(), which a validator exports as a
metric (consensus/metrics.py), since a GPU that keeps failing is otherwise only a slower node."""
from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from contextlib import contextmanager
from typing import Callable, TypeVar

from . import config
from .backends import Backend, ForkedAway, get_backend

log = logging.getLogger("accel")
T = TypeVar("T")


# Batch sizes from which the GPU beat the C fallback end to end (host arrays in, results out) on
# an H100 beside 16 host cores: `bench/gpu_throughput.py`, figures in bench/RESULTS.md. Below
# them, work on the configured backend stays on the C fallback unless gpu_min_batch says otherwise.
# Greeks lost end to end at every size measured (10^2..10^7 options: the copies cost more than the
# C fallback's whole job), so risk work stays on the C fallback by default; SHA-256 of messages
# follows the Merkle leaf kernel.
NEVER = 1 << 62
GPU_MIN_BATCH = {"ed25519": 4096, "merkle": 4096, "sha256": 4096, "risk": NEVER}


def min_batch(kernel: str) -> int:
    configured = config.get().gpu_min_batch
    return GPU_MIN_BATCH[kernel] if configured < 0 else configured


_strict = threading.local()
_fallbacks: Counter[tuple[str, str]] = Counter()
_fallbacks_lock = threading.Lock()
_told: set[tuple[str, str]] = set()  # (backend, kernel) whose fallbacks were logged


def _after_fork_in_child() -> None:
    """Another thread may have held the lock at the fork: the child has no such thread to release
    it, and its first fallback (every GPU call there falls back: base._same_process) or metrics
    read would wait forever. The counts are kept; what was logged is forgotten: the child's first
    fallback of each kernel says why this process falls back (its parent's log lines said why
    the parent's did, and kept a worker silent about being forked away)."""
    global _fallbacks_lock
    _fallbacks_lock = threading.Lock()
    _told.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def fallbacks() -> dict[tuple[str, str], int]:
    """{(backend, kernel): batches redone on the C fallback} since the process started."""
    with _fallbacks_lock:
        return dict(_fallbacks)


@contextmanager
def no_fallback():
    """In this thread, a failing GPU raises instead of being redone on the C fallback (readiness
    checks must see the backend itself)."""
    before = getattr(_strict, "on", False)
    _strict.on = True
    try:
        yield
    finally:
        _strict.on = before  # nested: the outer block stays strict


def run(backend: str | Backend | None, fn: Callable[[Backend], T], n: int | None = None,
        kernel: str | None = None) -> T:
    """fn(backend). With backend=None (the configured one), a GPU, and n items of `kernel` below
    its minimum batch, fn runs on the C fallback instead: GPU launches lose on small batches."""
    try:
        b = get_backend(backend)
    except ForkedAway as exc:
        # The configured GPU backend was started by the process this one was forked from (a
        # worker pool started with fork): its work is redone on the C fallback like a GPU's that
        # fails, rather than every call of the child raising. A backend named by the caller
        # still raises, saying why. A batch the parent kept on the C fallback (below
        # gpu_min_batch: all risk work by default) runs there as it did, neither counted as a
        # fallback nor refused under no_fallback().
        if (backend is None and exc.was_gpu and kernel is not None and n is not None
                and n < min_batch(kernel)):
            return fn(get_backend("cpu"))
        if backend is not None or not config.get().gpu_fallback or getattr(_strict, "on", False):
            raise
        _count(config.get().backend, kernel or "other", f"{type(exc).__name__}: {exc}", once=True)
        return fn(get_backend("cpu"))
    if backend is None and b.is_gpu and kernel is not None and n is not None and n < min_batch(kernel):
        b = get_backend("cpu")
    if b.name == "cpu":
        return fn(b)
    try:
        return fn(b)
    except Exception as exc:
        try:
            b.abandon()
        except Exception:  # the verdict comes from the C fallback whatever state the GPU is in
            log.exception("%s backend: letting go of a failed call's buffers failed", b.name)
        if not config.get().gpu_fallback or getattr(_strict, "on", False):
            raise
        _count(b.name, kernel or "other", f"{type(exc).__name__}: {exc}")
        return fn(get_backend("cpu"))


def _count(backend: str, kernel: str, error: str, once: bool = False) -> None:
    """Count and log a batch redone on the C fallback; once: log only the first of this process
    for (backend, kernel) (a forked child redoes every call: one line says why)."""
    with _fallbacks_lock:
        _fallbacks[backend, kernel] += 1
        if once and (backend, kernel) in _told:
            return
        _told.add((backend, kernel))
    log.warning("%s backend failed on %s (%s); redoing the work on the C fallback", backend, kernel, error,
                extra={"backend": backend, "kernel": kernel, "error": error})
