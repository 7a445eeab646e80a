"""The C fallback: the portable kernels compiled by cffi at install time, run across cores."""
from __future__ import annotations

import logging
import os

import numpy as np

from .base import Backend, BackendUnavailable, KernelError


# libgomp does not survive fork(): a child's first parallel region after the parent has run one
# waits forever for pool threads that were not copied. A forked child therefore runs the C
# fallback on its own thread (still correct, and the same bits); a fresh process (spawn,
# forkserver) has all its cores.
_forked = False


def _after_fork_in_child() -> None:
    global _forked
    if not _forked:
        logging.getLogger("accel").info(
            "forked child: the C fallback runs on one thread here (OpenMP cannot follow a fork); "
            "start workers with the 'spawn' or 'forkserver' method to use every core")
    _forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def _load():
    try:
        from accel import _native
    except ImportError as exc:
        raise BackendUnavailable(
            f"the C fallback is not built ({exc}); run `pip install -e .` (or `make test`)"
        ) from exc
    return _native


def _kinds(cname: str) -> str:
    """The NumPy dtype kinds an array for a C item type may have: the item size alone let a float64
    or a negative int64 stand for uint64_t offsets, read as offsets 4.6e18 bytes away (SIGSEGV)."""
    if cname in ("double", "float"):
        return "f"
    return "ub" if cname.startswith("uint") else "i"


class CpuBackend(Backend):
    name = "cpu"

    def __init__(self, threads: int = 0):
        native = _load()
        self._ffi, self._lib = native.ffi, native.lib
        self.threads = self._lib.av_set_threads(threads)  # 0 resolves to every core
        self.device = f"C fallback, {self.threads} threads of {os.cpu_count()} cores"
        self._signatures: dict[str, tuple] = {}

    def to_device(self, array):
        return np.ascontiguousarray(array)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype)

    def to_host(self, buffer):
        return buffer

    def _signature(self, kernel):
        """(function, (C type name, array type or None, item size) per argument before n), looked
        up once per kernel: a clearing block launches the same kernel dozens of times on small batches."""
        found = self._signatures.get(kernel)
        if found is None:
            try:
                fn = getattr(self._lib, "av_" + kernel)
            except AttributeError:
                raise KernelError(f"the C fallback has no av_{kernel}; rebuild with `pip install -e .`") from None
            ffi = self._ffi
            params = tuple((ctype.cname, ffi.typeof(ffi.getctype(ctype.item, "[]")), ffi.sizeof(ctype.item),
                            _kinds(ctype.item.cname))
                           if ctype.kind == "pointer" else (ctype.cname, None, None, None)
                           for ctype in ffi.typeof(fn).args[:-1])
            found = self._signatures[kernel] = fn, params
        return found

    def launch(self, kernel, n, *args, group=None):
        fn, params = self._signature(kernel)
        if len(args) != len(params):
            raise KernelError(f"av_{kernel} takes {len(params)} arguments before n, got {len(args)}")
        cargs = []
        for pos, ((cname, array_type, itemsize, kinds), arg) in enumerate(zip(params, args)):
            if isinstance(arg, np.ndarray):
                if array_type is None or not arg.flags.c_contiguous:
                    raise KernelError(f"av_{kernel} argument {pos}: expected a contiguous {cname} buffer")
                if arg.dtype.itemsize != itemsize or arg.dtype.kind not in kinds:
                    raise KernelError(f"av_{kernel} argument {pos}: {arg.dtype} array passed as {cname}")
                cargs.append(self._ffi.from_buffer(array_type, arg, require_writable=False))
            else:
                cargs.append(arg.item() if isinstance(arg, np.generic) else arg)
        # OpenMP's thread count belongs to the calling thread: set it on every call
        self._lib.av_set_threads(1 if _forked else self.threads)
        rc = fn(*cargs, int(n))
        if rc != 0:
            raise KernelError(f"av_{kernel} returned {rc}")
