"""OpenCL through pyopencl: a GPU in production, PoCL (a CPU OpenCL) in CI. Same kernel source."""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass

import numpy as np

from .base import Backend, BackendUnavailable, KernelError, inline_source, module_of, starting_driver

# Never the OpenCL mad-enable or fast-relaxed-math options: results must match the other backends
# bit for bit.
BUILD_OPTIONS = ["-cl-std=CL1.2"]
log = logging.getLogger("accel")
WORK_GROUP = 64


def _import():
    try:
        import pyopencl as cl
    except ImportError as exc:
        raise BackendUnavailable("pyopencl is not installed: from the checkout, "
                                 "`.venv/bin/pip install -e '.[opencl]'` (make test does it)") from exc
    return cl


def list_devices() -> list:
    cl = _import()
    try:
        platforms = cl.get_platforms()
    except cl.Error as exc:
        raise BackendUnavailable(
            f"no OpenCL platform ({exc}); install a driver, e.g. `apt-get install pocl-opencl-icd` for CPU OpenCL"
        ) from exc
    devices = []
    for platform in platforms:
        try:  # a registered driver without hardware (a GPU ICD in a container) reports no device
            devices.extend(platform.get_devices())
        except cl.Error:
            continue
    return devices


def pick_device(prefer: str = ""):
    """The device whose name contains `prefer`, else the first GPU, else the first device;
    prefer = "gpu" takes the first GPU and refuses anything else."""
    cl = _import()
    devices = list_devices()
    if not devices:
        raise BackendUnavailable("OpenCL platforms expose no device; `apt-get install pocl-opencl-icd` adds a CPU one")
    if prefer and not prefer.strip():  # a substring every device name with a space contains
        raise BackendUnavailable(f"opencl_device = {prefer!r} is only whitespace and would pick whichever device "
                                 "name has a space; leave it empty (the first GPU, else the first device) or "
                                 "name the device")
    if prefer.lower() == "gpu":
        gpus = [d for d in devices if d.type & cl.device_type.GPU]
        if not gpus:
            raise BackendUnavailable(f"opencl_device = \"gpu\" but OpenCL offers no GPU, only {[d.name.strip() for d in devices]}")
        return gpus[0]
    if prefer:
        named = [d for d in devices if prefer.lower() in d.name.lower()]
        if not named:
            raise BackendUnavailable(f"no OpenCL device matches {prefer!r}; have {[d.name for d in devices]}")
        return named[0]
    gpus = [d for d in devices if d.type & cl.device_type.GPU]
    return (gpus or devices)[0]


def is_gpu_device(device) -> bool:
    return bool(device.type & _import().device_type.GPU)


# Every PTX spelling of a fused floating multiply-add: fma and mad (on sm_20 and later mad.f64 and
# mad.rnd.f32 are fused too) with any rounding mode, .ftz and .sat, f32 and f64 (only "fma.rn.f64"
# and "fma.rn.f32" were looked for: "fma.rn.ftz.f32" or "mad.rn.f64" passed). The kernels use no
# floating FMA of their own (mad.wide.s32 in portable.h is integer and does not match).
_PTX_FUSED = re.compile(rb"\b(?:fma|mad)(?:\.r[nzmp])?(?:\.ftz)?(?:\.sat)?\.f(?:32|64)\b")


def check_no_contraction(program, what: str) -> bool:
    """Refuse a build whose binary shows fused multiply-adds: a driver may ignore FP_CONTRACT OFF,
    and fused results differ from the other backends'. Readable binaries: PTX (NVIDIA) and LLVM
    bitcode (PoCL and other LLVM-based drivers). Returns False where the format is unknown and
    nothing could be checked (README: OpenCL drivers)."""
    cl = _import()
    checked = True
    for binary in program.get_info(cl.program_info.BINARIES):
        binary = bytes(binary)
        if b".target" in binary and b".version" in binary:  # PTX text
            fused = _PTX_FUSED.search(binary) is not None
        elif b"BC\xc0\xde" in binary:  # LLVM bitcode: contraction appears as llvm.fmuladd
            fused = b"llvm.fmuladd" in binary or b"llvm.fma." in binary
        else:
            log.info("%s: driver binary format unknown; FMA contraction not checked", what)
            checked = False
            continue
        if fused:
            raise KernelError(f"{what}: the driver contracted multiply-adds into FMA despite FP_CONTRACT OFF; "
                              "results would differ from the other backends, so this device is refused")
    return checked


@dataclass
class ClBuffer:
    buf: object
    shape: tuple
    dtype: np.dtype

    @property
    def size(self) -> int:
        """Its items, as NumPy's size (launch checks them against what the kernel needs): its
        shape's, never more than the OpenCL buffer holds."""
        items = 1
        for d in self.shape:
            items *= d
        return min(items, self.buf.size // self.dtype.itemsize)


class OpenClBackend(Backend):
    name = "opencl"
    buffer_type = ClBuffer  # contiguous device memory (to_device, empty): no flags to read
    buffer_flags = host_buffers = False

    def __init__(self, device_name: str = ""):
        self._cl = cl = _import()
        # from here the driver starts (even if this fails): a forked child may not use it (base._same_process)
        self._started_in = starting_driver("opencl")
        dev = pick_device(device_name)
        self._dev, self._is_gpu = dev, is_gpu_device(dev)  # asked once: no driver call per dispatch
        self.device = f"{dev.name.strip()} ({dev.platform.name.strip()})"
        try:
            if dev.double_fp_config == 0:
                raise BackendUnavailable(f"OpenCL device {self.device} has no double precision")
            self._ctx = cl.Context([dev])
            self._queue = cl.CommandQueue(self._ctx)
        except cl.Error as exc:
            raise BackendUnavailable(f"OpenCL device {self.device} cannot be opened: {exc}") from exc
        self._programs: dict[str, object] = {}
        self._kernels: dict[str, tuple[object, int]] = {}
        # set_args + enqueue on a shared Kernel object must not interleave between threads
        self._lock = threading.Lock()

    @property
    def is_gpu(self) -> bool:
        return self._is_gpu

    def _program(self, module: str):
        prog = self._programs.get(module)
        if prog is None:
            src = inline_source("portable.h") + "\n" + inline_source(module)
            try:
                prog = self._cl.Program(self._ctx, src).build(options=BUILD_OPTIONS)
            except self._cl.Error as exc:
                raise KernelError(f"OpenCL build of kernels/{module} failed on {self.device}:\n{exc}") from exc
            self.contraction_checked = check_no_contraction(prog, f"kernels/{module} on {self.device}")
            self._programs[module] = prog
        return prog

    def to_device(self, array):
        self._same_process()
        array = np.ascontiguousarray(array)
        mf = self._cl.mem_flags
        if array.nbytes:
            buf = self._cl.Buffer(self._ctx, mf.READ_WRITE | mf.COPY_HOST_PTR, hostbuf=array)
        else:
            buf = self._cl.Buffer(self._ctx, mf.READ_WRITE, 1)  # OpenCL has no empty buffers
        return ClBuffer(buf, array.shape, array.dtype)

    def empty(self, shape, dtype):
        self._same_process()
        dtype = np.dtype(dtype)
        shape = tuple(shape) if isinstance(shape, (tuple, list)) else (int(shape),)
        nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
        return ClBuffer(self._cl.Buffer(self._ctx, self._cl.mem_flags.READ_WRITE, nbytes), shape, dtype)

    def to_host(self, buffer):
        self._same_process()
        out = np.empty(buffer.shape, buffer.dtype)
        if out.nbytes:
            self._cl.enqueue_copy(self._queue, out, buffer.buf)
        self._queue.finish()
        return out

    def synchronize(self):
        self._same_process()
        self._queue.finish()

    def _kernel(self, kernel: str):
        """The kernel object and the work-group size to launch it with."""
        entry = self._kernels.get(kernel)
        if entry is None:
            fn = self._cl.Kernel(self._program(module_of(kernel)), "av_" + kernel)
            limit = fn.get_work_group_info(self._cl.kernel_work_group_info.WORK_GROUP_SIZE, self._dev)
            entry = self._kernels[kernel] = (fn, max(1, min(WORK_GROUP, limit)))
        return entry

    def launch(self, kernel, n, *args, group=None):
        self._same_process()
        # the check every backend shares (base.Backend.check_args), against kernels/*.h's
        # signature: set_args passes whatever it is given, and a float64 or big-endian offsets
        # buffer crashed PoCL, an np.uint32 for a u64 was passed 4 bytes wide
        n, args = self.check_args(kernel, n, args)
        group = self.check_group(kernel, group)
        if n == 0:
            return
        cargs = [a.buf if isinstance(a, ClBuffer) else a for a in args]
        with self._lock:
            fn, limit = self._kernel(kernel)
            if group and group > limit:
                raise KernelError(f"av_{kernel} needs work-groups of {group}; {self.device} allows {limit}")
            group = group or limit
            try:
                # A fixed work-group: left to PoCL, large n gets groups whose private arrays
                # overflow its thread stacks (and a rebuild per new size). Kernels ignore items
                # at or past n.
                fn.set_args(*cargs, np.uint64(n))
                groups = (int(n) + group - 1) // group
                self._cl.enqueue_nd_range_kernel(self._queue, fn, (groups * group,), (group,))
            except self._cl.Error as exc:
                raise KernelError(f"OpenCL launch of av_{kernel} failed on {self.device}: {exc}") from exc
