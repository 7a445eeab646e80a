"""CUDA through CuPy. Each kernel module is loaded from a cubin that `accel build-cuda` prebuilt
with nvcc for this GPU's architecture (accel/backends/cubins.py), else compiled by NVRTC; both
with FMA contraction off. CuPy keeps NVRTC's modules in its on-disk cache ($CUPY_CACHE_DIR,
default ~/.cupy/kernel_cache), so only the first process on a machine pays for compilation."""
from __future__ import annotations

import contextlib
import ctypes
import logging
import threading

import numpy as np

from . import cubins
from .base import Backend, BackendUnavailable, KernelError, current_process, module_of, starting_driver

NVRTC_OPTIONS = cubins.CUDA_OPTIONS
BLOCK = 256
log = logging.getLogger("accel")
# Below this, one synchronous copy is cheaper than staging through pinned memory.
PINNED_MIN_BYTES = 1 << 20


def driver_present() -> bool:
    """Whether NVIDIA's driver library loads: without it CuPy reports cudaErrorInsufficientDriver,
    which reads as "upgrade the driver" on a machine that has none."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def _import():
    if not driver_present():
        raise BackendUnavailable("no NVIDIA driver found (libcuda.so.1 cannot be loaded): this machine has no "
                                 "usable NVIDIA GPU driver")
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailable("CuPy is not installed: from the checkout, `.venv/bin/pip install -e '.[cuda]'` "
                                 "(CUDA 13 drivers) or `-e '.[cuda12]'` (CUDA 12)") from exc
    starting_driver("cuda")  # from here the driver starts, even if it fails: not again in a forked child
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CuPy raises its own runtime error types
        raise BackendUnavailable(f"the NVIDIA driver is present but CUDA cannot start ({exc})") from exc
    if count == 0:
        raise BackendUnavailable("CUDA driver found but no CUDA device")
    return cupy


class CudaBackend(Backend):
    name = "cuda"
    host_buffers = False  # CuPy's arrays: device memory, always writable (their flags have no writeable)

    def __init__(self, device_index: int = 0, cubin_dir: str = ""):
        self._cp = cp = _import()
        self._started_in = current_process()  # a forked child may not use it (base._same_process)
        count = cp.cuda.runtime.getDeviceCount()
        if not 0 <= device_index < count:
            raise BackendUnavailable(f"cuda_device = {device_index}, but this machine has {count} CUDA device(s)")
        try:
            self._dev = cp.cuda.Device(device_index)
            props = cp.cuda.runtime.getDeviceProperties(device_index)
            self.device = f"{props['name'].decode()} (CUDA device {device_index})"
            self.arch = "sm_" + self._dev.compute_capability  # "90" on an H100
            with self._dev:  # the device's context starts here
                self._streams = (cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True))
        except Exception as exc:
            # a device that is there but cannot be opened (another process holds it in exclusive
            # mode, no memory left for a context, an ECC error): CuPy's own error escaped every
            # caller, `auto` included, and stopped a validator at start instead of using the C fallback
            raise BackendUnavailable(f"CUDA device {device_index} cannot be opened "
                                     f"({type(exc).__name__}: {exc})") from exc
        self.buffer_type = cp.ndarray  # launch takes CuPy arrays on this device (to_device, empty)
        self.cubin_dir = cubin_dir or str(cubins.default_dir())
        self._modules: dict[tuple, object] = {}
        self.origins: dict[tuple, str] = {}  # (module, extra options) -> the cubin it came from, or "NVRTC"
        self._functions: dict[str, object] = {}
        # pinned staging buffers of copies in flight, per thread, kept until their stream syncs
        self._staged = threading.local()

    def module(self, module: str, extra: tuple[str, ...] = ()):
        """kernels/<module> loaded on this device: the prebuilt cubin for this architecture if
        there is one, else NVRTC's build. extra: more compiler options (-D..., --maxrregcount=...)."""
        self._same_process()
        key = (module, extra)
        if key not in self._modules:
            with self._dev:
                self._modules[key] = self._load(module, extra)
        return self._modules[key]

    def _load(self, module: str, extra: tuple[str, ...]):
        cubin = cubins.find(self.cubin_dir, module, self.arch, extra)
        if cubin is not None:
            try:
                loaded = self._cp.RawModule(path=str(cubin))
                loaded.compile()  # CuPy loads lazily: load now, so a bad file is caught here
                log.info("CUDA: kernels/%s loaded from %s", module, cubin)
                self.origins[module, extra] = str(cubin)
                return loaded
            except Exception as exc:  # a cubin from a newer nvcc than this driver knows
                log.warning("CUDA: cannot load %s (%s); compiling kernels/%s with NVRTC", cubin, exc, module)
        else:
            log.info("CUDA: no prebuilt cubin for kernels/%s (%s) in %s; compiling with NVRTC "
                     "(`accel build-cuda` prebuilds)", module, self.arch, self.cubin_dir)
        try:
            built = self._cp.RawModule(code=cubins.module_source(module), options=NVRTC_OPTIONS + extra)
            built.compile()
            self.origins[module, extra] = "NVRTC"
            return built
        except Exception as exc:
            raise KernelError(f"NVRTC build of kernels/{module} failed: {exc}") from exc

    def _function(self, kernel: str):
        """The compiled kernel, loaded on this backend's device (call inside `with self._dev`)."""
        fn = self._functions.get(kernel)
        if fn is None:
            try:
                fn = self._functions[kernel] = self.module(module_of(kernel)).get_function("av_" + kernel)
            except KernelError:
                raise
            except Exception as exc:
                raise KernelError(f"CUDA module of av_{kernel} has no such kernel: {exc}") from exc
        return fn

    def _keep(self) -> list:
        if not hasattr(self._staged, "buffers"):
            self._staged.buffers = []
        return self._staged.buffers

    def _pinned(self, shape, dtype) -> np.ndarray:
        """A host array in page-locked memory (from CuPy's pool), which copies run from
        asynchronously and at full bus speed."""
        import cupyx
        return cupyx.empty_pinned(shape, dtype)

    def to_device(self, array):
        """Large arrays go through pinned memory as an asynchronous copy on the current stream."""
        self._same_process()
        array = np.ascontiguousarray(array)
        cp = self._cp
        with self._dev:
            if array.nbytes < PINNED_MIN_BYTES:
                return cp.asarray(array)
            host = self._pinned(array.shape, array.dtype)
            np.copyto(host, array)
            out = cp.empty(array.shape, array.dtype)
            out.set(host, stream=cp.cuda.get_current_stream())
            self._keep().append(host)
            return out

    def empty(self, shape, dtype):
        self._same_process()
        with self._dev:
            return self._cp.empty(shape, dtype)

    def to_host(self, buffer):
        self._same_process()
        with self._dev:
            out = self._cp.asnumpy(buffer)  # waits for the current stream
            self._keep().clear()
            return out

    def chunked(self, n, chunk, step, axis=0):
        """Chunks alternate between two streams: while one chunk's kernels run, the next one's
        inputs are staged and copied, and results come back into pinned memory asynchronously."""
        self._same_process()
        parts = []
        with self._dev:
            try:
                for i, lo in enumerate(range(0, n, chunk)):
                    with self._streams[i % 2] as stream:
                        buf = step(lo, min(n, lo + chunk))
                        host = self._pinned(buf.shape, buf.dtype)
                        buf.get(stream=stream, out=host, blocking=False)
                        parts.append(host)
            except BaseException:
                self.abandon()
                raise
            for stream in self._streams:
                stream.synchronize()
            self._keep().clear()
        return np.concatenate(parts, axis=axis)

    def abandon(self):
        """After a failed call: wait for the copies it left in flight, each stream on its own (a
        sticky error fails every wait, and after it no copy runs), then let their pinned buffers
        go back to the pool, where the next call may reuse them. Before, only a later call's
        to_host let them go: while the GPU kept failing, each failed call kept its staged inputs."""
        try:
            with self._dev:
                for stream in (self._cp.cuda.get_current_stream(), *self._streams):
                    with contextlib.suppress(Exception):
                        stream.synchronize()
        finally:
            self._keep().clear()

    def synchronize(self):
        self._same_process()
        with self._dev:
            self._cp.cuda.get_current_stream().synchronize()

    def launch(self, kernel, n, *args, group=None):
        self._same_process()
        # the check every backend shares (base.Backend.check_args), against kernels/*.h's
        # signature: CuPy passes a NumPy scalar at its own width and an array of any dtype
        n, args = self.check_args(kernel, n, args)
        group = self.check_group(kernel, group)
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
