"""The C fallback: the portable kernels compiled by cffi at install time, run across cores."""
from __future__ import annotations

import logging
import os

import numpy as np

from .base import (C_TYPES, Backend, BackendUnavailable, KernelError, kernel_modules, kernel_params, param,
                   parse_params)


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


# The C fallback's kernels that kernels/*.h does not define, as native/ed25519.h declares them (a
# test holds the two equal). Read from here, not from native/*.h, which an installed package does
# not ship: without it these had no constness, and `out` took read-only memory.
C_ONLY = {
    "ed25519_verify_all": "int av_ed25519_verify_all(const uint8_t *pks, const uint8_t *msgs, "
                          "const uint64_t *offsets, const uint8_t *sigs, uint8_t *out, uint64_t n);",
    "ed25519_verify_single": "int av_ed25519_verify_single(const uint8_t *pks, const uint8_t *msgs, "
                             "const uint64_t *offsets, const uint8_t *sigs, uint8_t *out, uint64_t n);",
}


def _declared(kernel: str):
    """av_<kernel>'s parameters as declared in source (for their names and which buffers the
    kernel writes): kernels/*.h's KERNEL definition, or C_ONLY's declaration (never native/*.h,
    so an installed package reads the same); None where neither has it."""
    try:
        if kernel in C_ONLY:
            return parse_params(kernel, C_ONLY[kernel])
        return kernel_params(kernel)
    except KernelError:
        return None


def launchable(kernel) -> bool:
    """Whether the C fallback's launch runs av_<kernel>: the kernels only, not the library's other
    av_* entries (av_set_threads, av_ledger_run ...)."""
    return isinstance(kernel, str) and (kernel in C_ONLY or kernel in kernel_modules())


def _params(kernel: str, ctypes) -> tuple:
    """The Params of the C function's arguments before n (cffi's types: the C fallback takes
    exactly these), with the names and constness its declaration gives where they agree."""
    params = []
    for ctype in ctypes:
        pointer = ctype.kind == "pointer"
        portable = C_TYPES.get((ctype.item if pointer else ctype).cname)
        if portable is None:
            raise KernelError(f"av_{kernel}: the C fallback's parameter type {ctype.cname} has no NumPy counterpart")
        params.append(param(portable, pointer, True, shown=ctype.cname, convert=int))
    declared = _declared(kernel)
    if declared is not None and [(d.kinds, d.itemsize, d.buffer) for d in declared] == \
            [(p.kinds, p.itemsize, p.buffer) for p in params]:
        params = [p._replace(name=d.name, writes=d.writes) for p, d in zip(params, declared)]
    return tuple(params)


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
        """(function, Params of the arguments before n, cffi array type or None per argument),
        looked up once per kernel: a clearing block launches the same kernel dozens of times on
        small batches."""
        try:
            found = self._signatures.get(kernel)
        except TypeError:  # unhashable
            found = None
        if found is None:
            if not launchable(kernel):
                raise KernelError(f"the C fallback has no av_{kernel} to launch (its kernels: kernels/*.h's "
                                  f"and {', '.join(sorted(C_ONLY))})")
            try:
                fn = getattr(self._lib, "av_" + kernel)
            except AttributeError:
                raise KernelError(f"the C fallback has no av_{kernel}; rebuild with `pip install -e .`") from None
            ffi = self._ffi
            ctypes = ffi.typeof(fn).args[:-1]
            array_types = tuple(ffi.typeof(ffi.getctype(c.item, "[]")) if c.kind == "pointer" else None
                                for c in ctypes)
            found = self._signatures[kernel] = fn, _params(kernel, ctypes), array_types
        return found

    def launch(self, kernel, n, *args, group=None):
        fn, params, array_types = self._signature(kernel)
        # the check every backend shares (base.Backend.check_args): kind, item size, byte order,
        # contiguity and writability of each array, the range of each scalar
        n, args = self.check_args(kernel, n, args, params)
        self.check_group(kernel, group)  # ignored here, refused where a GPU backend refuses it
        from_buffer = self._ffi.from_buffer
        cargs = [arg if array_type is None else from_buffer(array_type, arg, require_writable=False)
                 for array_type, arg in zip(array_types, args)]
        # OpenMP's thread count belongs to the calling thread: set it on every call
        self._lib.av_set_threads(1 if _forked else self.threads)
        rc = fn(*cargs, n)
        if rc != 0:
            raise KernelError(f"av_{kernel} returned {rc}")
