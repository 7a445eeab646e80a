"""The one interface every backend implements: compile (lazily, per kernel module), allocate, copy,
launch. Kernel sources are read from kernels/ and their quoted includes inlined here, so the GPU
compilers and their caches see one self-contained text."""
from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from functools import lru_cache
from pathlib import Path

import numpy as np



def _kernel_dir() -> Path:
    """kernels/ of a source checkout, else the copy installed as the package accel.kernels."""
    source = Path(__file__).resolve().parents[2] / "kernels"
    if (source / "portable.h").exists():
        return source
    return Path(__file__).resolve().parents[1] / "kernels"


KERNEL_DIR = _kernel_dir()
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.M)
_KERNEL_DEF = re.compile(r"KERNEL(?:\s+void|_BOUNDED\([^)]*\))\s+av_(\w+)\s*\(")


# The process this module runs in, updated in a forked child: GPU drivers (CUDA, OpenCL, PoCL's
# thread pool) do not survive fork(), so a GPU backend started before a fork refuses work in the
# child (a KernelError, which dispatch redoes on the C fallback) instead of hanging in the driver.
_process = os.getpid()


def _after_fork_in_child() -> None:
    global _process
    _process = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


def current_process() -> int:
    return _process


# GPU drivers this process, or one it was forked from, began to start: {backend name: the pid}.
# Kept through backends.reset() and across fork(): a forked child must never start such a driver
# again (its threads and state were not copied; PoCL's first kernel there waited forever).
drivers_started: dict[str, int] = {}


def starting_driver(name: str) -> int:
    """Note that backend `name` is about to start its driver here; returns this process's id."""
    drivers_started.setdefault(name, _process)
    return _process


class BackendUnavailable(RuntimeError):
    """The backend cannot run here; the message says what is missing and how to get it."""


class ForkedAway(BackendUnavailable):
    """The backend was started by the process this one was forked from: GPU drivers cannot follow
    a fork. dispatch.run redoes the configured backend's work on the C fallback then. was_gpu:
    whether it ran on a GPU there (True when not known), so batches below gpu_min_batch, which
    never went to it, stay on the C fallback uncounted, as in the parent."""

    def __init__(self, message: str, was_gpu: bool = True):
        super().__init__(message)
        self.was_gpu = was_gpu


class KernelError(RuntimeError):
    """A kernel failed to compile or launch."""


def inline_source(name: str, seen: set[str] | None = None) -> str:
    """The text of kernels/<name> with every quoted include inlined once (include guards kept)."""
    seen = set() if seen is None else seen
    if name in seen:
        return ""
    seen.add(name)
    text = (KERNEL_DIR / name).read_text()
    return _INCLUDE.sub(lambda m: inline_source(m.group(1), seen), text)


@lru_cache(maxsize=None)
def kernel_modules() -> dict[str, str]:
    """Kernel name -> the module header under kernels/ that defines it."""
    found: dict[str, str] = {}
    for path in sorted(KERNEL_DIR.glob("*.h")):
        for kname in _KERNEL_DEF.findall(path.read_text()):
            found[kname] = path.name
    return found


def module_of(kernel: str) -> str:
    try:
        return kernel_modules()[kernel]
    except KeyError:
        raise KernelError(f"no kernel av_{kernel} in {KERNEL_DIR}") from None


class Backend(ABC):
    name: str
    device: str

    @abstractmethod
    def to_device(self, array: np.ndarray):
        """A device copy of a host array (on cpu: the contiguous array itself)."""

    @abstractmethod
    def empty(self, shape, dtype):
        """An uninitialised device buffer."""

    @abstractmethod
    def to_host(self, buffer) -> np.ndarray:
        """The buffer's contents as a host NumPy array (waits for pending work)."""

    @abstractmethod
    def launch(self, kernel: str, n: int, *args, group: int | None = None) -> None:
        """Run av_<kernel> over items 0..n-1; args are buffers or NumPy scalars of the C types.
        group: the work-group size a kernel is written for (GPU targets; the C loop ignores it)."""

    def synchronize(self) -> None:
        """Wait until every launched kernel has finished (for timing device work alone)."""

    def abandon(self) -> None:
        """Let go of what a failed call left behind (GPU backends: staging buffers of its copies)."""

    def _same_process(self) -> None:
        """GPU backends: refuse work in a process forked after this backend started its driver."""
        started = getattr(self, "_started_in", None)
        if started is not None and started != _process:
            raise KernelError(fork_reason(self.name, started))

    def chunked(self, n: int, chunk: int, step, axis: int = 0) -> np.ndarray:
        """step(lo, hi) uploads items lo..hi-1, launches, and returns a device buffer of results;
        the results of every chunk, joined along `axis`, come back as one host array. GPU
        backends overlap one chunk's copies with another's kernels."""
        if n <= chunk:
            return self.to_host(step(0, n))
        return np.concatenate([self.to_host(step(lo, min(n, lo + chunk))) for lo in range(0, n, chunk)], axis=axis)

    @property
    def is_gpu(self) -> bool:
        return self.name != "cpu"

    def __repr__(self) -> str:
        return f"<{self.name} backend: {self.device}>"


def fork_reason(name: str, started: int) -> str:
    return (f"the {name} backend was started in process {started}, and this process was forked from it: "
            "GPU drivers cannot follow a fork (their calls would hang); start workers with the 'spawn' or "
            "'forkserver' method, or use the C fallback (backend = \"cpu\") in forked workers")
