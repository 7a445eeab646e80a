"""Backend registry: one instance per backend, created on first use; `auto` prefers a GPU."""
from __future__ import annotations

import copy
import importlib.util
import logging
import os
import subprocess
import sys
import threading

from .. import config as _config
from . import base as _base
from .base import Backend, BackendUnavailable, ForkedAway, KernelError, fork_reason

_lock = threading.Lock()
# Outcomes are remembered, failures too: `auto` must not retry CUDA (a CuPy import under the lock)
# on every call, since consensus verifies many small batches. reset() probes again.
_instances: dict[str, Backend | BackendUnavailable] = {}
_auto_pick: dict[_config.AccelConfig, Backend] = {}
# Whether OpenCL offers a GPU here, per opencl_device, as a child process found (_try_opencl).
_opencl_gpu_found: dict[str, bool] = {}
_warned: set[str] = set()
# GPU backends this process may not start, since a process it was forked from started their
# drivers: kept by reset(), which only forgets what can be probed again.
_forked_away: dict[str, ForkedAway] = {}
# The GPU backend objects a parent process started, kept alive in its forked children: dropped
# there, their contexts, queues, programs and buffers were released through the driver by the
# child (pyopencl's and CuPy's destructors), the very driver calls a forked child must not make.
_orphans: list[Backend] = []
log = logging.getLogger("accel")


def _after_fork_in_child() -> None:
    """GPU drivers do not survive fork(): a GPU backend the parent started is unavailable here (its
    calls, or a new context's, would hang), so `auto` takes the C fallback and a named GPU backend
    says why. A GPU backend object kept from the parent refuses work (base._same_process)."""
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    # Every GPU driver the parent began to start, whether or not its backend is still registered
    # (reset() forgets instances, a start that failed halfway still touched the driver):
    # reset() in this child used to start PoCL afresh, and its first kernel waited forever.
    started = {name: getattr(found, "_started_in", None) for name, found in _instances.items()
               if isinstance(found, Backend) and found.name != "cpu"}
    gpu = {name: found.is_gpu for name, found in _instances.items() if isinstance(found, Backend)}
    _orphans.extend(found for found in _instances.values() if isinstance(found, Backend) and found.name != "cpu")
    _orphans.extend(picked for picked in _auto_pick.values() if picked.name != "cpu")
    for name, pid in _base.drivers_started.items():
        started.setdefault(name, pid)
    for name, pid in started.items():
        marker = _instances[name] = _forked_away.setdefault(
            name, ForkedAway(fork_reason(name, pid), was_gpu=gpu.get(name, True)))
        # the CUDA driver may be under OpenCL and the other way round: no fresh start of either
        other = "cuda" if name == "opencl" else "opencl"
        if other not in started and other not in _instances:
            _instances[other] = _forked_away.setdefault(other, marker)
    for cfg, picked in list(_auto_pick.items()):
        if picked.name != "cpu":
            del _auto_pick[cfg]


os.register_at_fork(after_in_child=_after_fork_in_child)


def reset() -> None:
    """Forget every backend and failure, e.g. after installing a driver or CuPy."""
    with _lock:
        _instances.clear()
        _auto_pick.clear()
        _opencl_gpu_found.clear()
        _warned.clear()
        _instances.update(_forked_away)  # a driver started before a fork stays unavailable here


def _create(name: str, cfg: _config.AccelConfig) -> Backend:
    if name == "cpu":
        from .cpu import CpuBackend
        return CpuBackend(cfg.threads)
    if name == "opencl":
        from .opencl import OpenClBackend
        return OpenClBackend(cfg.opencl_device)
    if name == "cuda":
        from .cuda import CudaBackend
        return CudaBackend(cfg.cuda_device, cfg.cuda_cubin_dir)
    raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(_config.BACKENDS)}")


def get_backend(name: str | Backend | None = None) -> Backend:
    """The backend called `name` (default: the configured one). Raises BackendUnavailable saying why."""
    if isinstance(name, Backend):
        return name
    # Only None means "the configured one": "", 0 or False did too, silently, and skipped the
    # small-batch rule that dispatch.run applies to None. A wrong name is an error, never cached.
    if name is not None and not isinstance(name, str):
        raise TypeError(f"backend must be None, a Backend or one of {', '.join(_config.BACKENDS)}, "
                        f"not {type(name).__name__}")
    if name is not None and name not in _config.BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(_config.BACKENDS)}")
    cfg = _config.get()
    configured = name is None
    name = cfg.backend if name is None else name
    if name == "auto":
        picked = _auto_pick.get(cfg)
        if picked is None:
            picked = _auto_pick[cfg] = _auto(cfg)
        return picked
    found = _instances.get(name)
    if found is None:
        with _lock:
            found = _instances.get(name)
            if found is None:
                try:
                    found = _create(name, cfg)
                except BackendUnavailable as exc:
                    found = exc
                _instances[name] = found
    if isinstance(found, BackendUnavailable):
        # a copy, never the cached one: raising an exception again extends its traceback, which
        # then held every caller's frames and their batches (a forked worker, redoing each call on
        # the C fallback, kept all it ever hashed: 300 MiB after 300 calls of 1 MiB)
        raise copy.copy(found).with_traceback(None)
    if configured and name == "opencl" and not found.is_gpu and name not in _warned:
        _warned.add(name)
        log.warning("backend = \"opencl\" runs on %s, a CPU driver: expect it several times slower than the C "
                    "fallback (backend = \"cpu\"); set opencl_device = \"gpu\" to require a GPU", found.device)
    return found


def _auto(cfg) -> Backend:
    """CUDA, then an OpenCL GPU, then the C fallback."""
    for name in ("cuda", "opencl"):
        if name == "opencl" and not _try_opencl(cfg.opencl_device):
            continue
        try:
            b = get_backend(name)
        except BackendUnavailable:
            continue
        if b.is_gpu:
            return b
    return get_backend("cpu")


_PYTHON_HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_apart(code: str, *args: str, timeout: float) -> subprocess.CompletedProcess | None:
    """Runs code in a fresh Python that imports this accel, with args as sys.argv[1:]; None when it
    ran past timeout seconds. For what would start a driver in this process: OpenCL's first
    device listing loads PoCL and starts its threads, which stay and compete with the C fallback's
    OpenMP threads for as long as the process lives."""
    try:
        return subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {_PYTHON_HERE!r})\n{code}",
                               *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None


_OPENCL_GPU = """
from accel.backends.base import BackendUnavailable
from accel.backends.opencl import is_gpu_device, pick_device
try:
    print(int(is_gpu_device(pick_device(sys.argv[1]))))
except BackendUnavailable:
    print(0)
"""


def _try_opencl(prefer: str) -> bool:
    """Whether `auto` creates the OpenCL backend here: where it already started (nothing left to
    spare), or where pick_device(prefer) is a GPU, asked of a child process. Created only to learn
    that it was PoCL (a CPU), it left PoCL's threads beside the C fallback that `auto` then took."""
    if "opencl" in _instances or "opencl" in _base.drivers_started:
        return True
    if importlib.util.find_spec("pyopencl") is None:
        return False
    if prefer not in _opencl_gpu_found:
        done = run_apart(_OPENCL_GPU, prefer, timeout=120)
        found = done is not None and done.returncode == 0 and done.stdout.split()[-1:] == ["1"]
        if done is None or done.returncode != 0:
            log.warning("auto: listing the OpenCL devices %s; taking no OpenCL device",
                        "took over 120 s" if done is None else
                        f"failed: {(done.stderr.strip().splitlines() or ['status %d' % done.returncode])[-1]}")
        _opencl_gpu_found[prefer] = found
    return _opencl_gpu_found[prefer]


def probe() -> dict[str, Backend | BackendUnavailable]:
    """Every backend, or the reason it cannot run here."""
    out: dict[str, Backend | BackendUnavailable] = {}
    for name in ("cpu", "opencl", "cuda"):
        try:
            out[name] = get_backend(name)
        except BackendUnavailable as exc:
            out[name] = exc
    return out


def started() -> dict[str, Backend | BackendUnavailable]:
    """The backends this process has created, or failed to, in the order tried; creates none."""
    return dict(_instances)


__all__ = ["Backend", "BackendUnavailable", "ForkedAway", "KernelError", "get_backend", "probe", "reset", "run_apart",
           "started"]
