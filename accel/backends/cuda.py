"""CUDA through CuPy: the kernel modules compiled by NVRTC, with FMA contraction off."""
from __future__ import annotations

import numpy as np

from .base import Backend, BackendUnavailable, KernelError, inline_source, module_of

NVRTC_OPTIONS = ("--fmad=false", "--std=c++14")
BLOCK = 256


def _import():
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailable("CuPy is not installed (pip install 'accel-verify[cuda]')") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CuPy raises its own runtime error types when no driver is present
        raise BackendUnavailable(f"no CUDA driver or device ({exc})") from exc
    if count == 0:
        raise BackendUnavailable("CUDA driver found but no CUDA device")
    return cupy


class CudaBackend(Backend):
    name = "cuda"

    def __init__(self, device_index: int = 0):
        self._cp = cp = _import()
        count = cp.cuda.runtime.getDeviceCount()
        if not 0 <= device_index < count:
            raise BackendUnavailable(f"cuda_device = {device_index}, but this machine has {count} CUDA device(s)")
        self._dev = cp.cuda.Device(device_index)
        props = cp.cuda.runtime.getDeviceProperties(device_index)
        self.device = f"{props['name'].decode()} (CUDA device {device_index})"
        self._modules: dict[str, object] = {}
        self._functions: dict[str, object] = {}

    def _function(self, kernel: str):
        """The compiled kernel, loaded on this backend's device (call inside `with self._dev`)."""
        fn = self._functions.get(kernel)
        if fn is None:
            module = module_of(kernel)
            try:
                if module not in self._modules:
                    src = inline_source("portable.h") + "\n" + inline_source(module)
                    self._modules[module] = self._cp.RawModule(code=src, options=NVRTC_OPTIONS)
                fn = self._functions[kernel] = self._modules[module].get_function("av_" + kernel)
            except Exception as exc:
                raise KernelError(f"NVRTC build of kernels/{module} failed: {exc}") from exc
        return fn

    def to_device(self, array):
        with self._dev:
            return self._cp.asarray(np.ascontiguousarray(array))

    def empty(self, shape, dtype):
        with self._dev:
            return self._cp.empty(shape, dtype)

    def to_host(self, buffer):
        with self._dev:
            return self._cp.asnumpy(buffer)

    def synchronize(self):
        with self._dev:
            self._cp.cuda.get_current_stream().synchronize()

    def launch(self, kernel, n, *args, group=None):
        if n == 0:
            return
        with self._dev:
            fn = self._function(kernel)
            block = min(group or BLOCK, fn.max_threads_per_block)
            if group and block != group:
                raise KernelError(f"av_{kernel} needs blocks of {group} threads; this device allows {block}")
            try:
                fn(((int(n) + block - 1) // block,), (block,), (*args, np.uint64(n)))
            except Exception as exc:
                raise KernelError(f"CUDA launch of av_{kernel} failed: {exc}") from exc
