"""The one interface every backend implements: compile (lazily, per kernel module), allocate, copy,
launch. Kernel sources are read from kernels/ and their quoted includes inlined here, so the GPU
compilers and their caches see one self-contained text."""
from __future__ import annotations

import operator
import os
import re
from abc import ABC, abstractmethod
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

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
_PARAM_TOKEN = re.compile(r"\w+|\*")


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


# The kernels' parameter types (kernels/portable.h): the NumPy kinds an array of them may have, the
# item size, and the NumPy type a scalar of them is converted to. Launch arguments went to the
# driver unchecked: float64 or big-endian offsets crashed PoCL (SIGSEGV), a negative int64 offset
# read past the data, and an np.uint32 given for a `u64 count` was passed 4 bytes wide, its high
# half read from whatever followed (other bits than the C fallback's, which converted it).
_TYPES = {
    "u8": ("ub", 1, np.uint8), "u32": ("u", 4, np.uint32), "u64": ("u", 8, np.uint64),
    "i8": ("i", 1, np.int8), "i32": ("i", 4, np.int32), "i64": ("i", 8, np.int64),
    "float": ("f", 4, np.float32), "double": ("f", 8, np.float64),
}
# The C fallback's spellings of the same types (cffi's names for native/*.h's declarations)
C_TYPES = {"uint8_t": "u8", "uint32_t": "u32", "uint64_t": "u64", "int8_t": "i8", "int32_t": "i32",
           "int64_t": "i64", "float": "float", "double": "double"}


class Param(NamedTuple):
    """One kernel parameter before n, as launch checks an argument for it."""
    ctype: str     # its C type as messages show it: "u64 *", "uint32_t"
    name: str      # its name in the kernel's signature, "" where not known
    buffer: bool   # a pointer: the argument must be a buffer of the backend's own kind
    writes: bool   # a buffer the kernel may write (not const): read-only host memory is refused
    kinds: str     # the NumPy dtype kinds its items may have
    itemsize: int
    lo: float      # a scalar's range
    hi: float
    convert: object  # a scalar's conversion, once in range, to the exact type the kernel takes
    exact: type    # the NumPy type of the C type: a scalar of it passes as it is
    dtypes: frozenset  # the native dtypes a buffer's items have (the quick test; others checked in full)


def param(ctype: str, pointer: bool, const: bool, shown: str = "", name: str = "", convert=None) -> Param:
    """The Param of a parameter of portable type `ctype` (u64, double: kernels/portable.h).
    shown: the type as messages show it (default ctype, with " *" for a pointer); convert: what a
    scalar in range becomes (default the NumPy type of ctype: np.uint64(5), never np.uint32(5))."""
    try:
        kinds, itemsize, numpy_type = _TYPES[ctype]
    except KeyError:
        raise KernelError(f"parameter {name or '?'}: type {ctype} has no NumPy counterpart") from None
    if kinds == "f":
        lo, hi = -float(np.finfo(numpy_type).max), float(np.finfo(numpy_type).max)
    else:
        info = np.iinfo(numpy_type)
        lo, hi = int(info.min), int(info.max)
    shown = shown or (f"{ctype} *" if pointer else ctype)
    dtypes = frozenset(np.dtype(t) for t in (numpy_type, np.bool_) if np.dtype(t).kind in kinds)
    return Param(shown, name, pointer, pointer and not const, kinds, itemsize, lo, hi, convert or numpy_type,
                 numpy_type, dtypes)


def parse_params(kernel: str, text: str) -> tuple[Param, ...] | None:
    """The Params of av_<kernel> before its last parameter (u64 n), as `text` declares them (a
    KERNEL definition of kernels/*.h, or a declaration of native/*.h); None where it does not."""
    m = re.search(r"\bav_" + re.escape(kernel) + r"\s*\(([^)]*)\)", text)
    if m is None:
        return None
    params = []
    for decl in m.group(1).split(","):
        tokens = _PARAM_TOKEN.findall(decl)
        words = [t for t in tokens if t not in ("GLOBAL", "const", "*")]
        if len(words) != 2 or tokens.count("*") > 1:
            raise KernelError(f"av_{kernel}: cannot read parameter {decl.strip()!r}")
        ctype, name = C_TYPES.get(words[0], words[0]), words[1]
        params.append(param(ctype, "*" in tokens, "const" in tokens, name=name))
    last = params[-1] if params else None
    if last is None or last.buffer or (last.ctype, last.name) != ("u64", "n"):
        raise KernelError(f"av_{kernel}: the last parameter must be u64 n")
    return tuple(params[:-1])


@lru_cache(maxsize=None)
def kernel_params(kernel: str) -> tuple[Param, ...]:
    """The parameters of av_<kernel> before n, read from its KERNEL definition in kernels/*.h:
    the GPU backends launch exactly these."""
    found = parse_params(kernel, (KERNEL_DIR / module_of(kernel)).read_text())
    if found is None:
        raise KernelError(f"no kernel av_{kernel} in {KERNEL_DIR}")
    return found


_N = param("u64", False, False, convert=int)


def _refuse(kernel: str, pos, p: Param, problem: str) -> KernelError:
    named = f" (parameter {p.name})" if p.name else ""
    return KernelError(f"av_{kernel} argument {pos}: {problem}{named}")


def check_scalar(kernel: str, pos, p: Param, arg):
    """arg converted to p's exact type once in p's range; a KernelError naming the kernel and the
    argument for anything else (a bool, a float for an integer, an array, a value out of range)."""
    if isinstance(arg, (bool, np.bool_)):
        raise _refuse(kernel, pos, p, f"a bool passed as {p.ctype}")
    if p.kinds == "f":
        if not isinstance(arg, (int, float, np.integer, np.floating)):
            raise _refuse(kernel, pos, p, f"{type(arg).__name__} passed as {p.ctype}")
        try:
            value = float(arg)
        except OverflowError:
            value = None
        if value is None or (abs(value) != float("inf") and not p.lo <= value <= p.hi):
            raise _refuse(kernel, pos, p, f"{arg!r} is out of the range of {p.ctype}")
        return p.convert(value)
    try:
        value = operator.index(arg)
    except TypeError:
        raise _refuse(kernel, pos, p, f"{type(arg).__name__} passed as {p.ctype} (an integer is expected)") from None
    if not p.lo <= value <= p.hi:
        raise _refuse(kernel, pos, p, f"{value} is out of the range of {p.ctype} ({p.lo}..{p.hi})")
    return p.convert(value)
    try:
        value = operator.index(arg)
    except TypeError:
        raise KernelError(f"av_{kernel} argument {pos}: {type(arg).__name__} passed as {p.text} "
                          "(an integer is expected)") from None
    if not p.lo <= value <= p.hi:
        raise KernelError(f"av_{kernel} argument {pos}: {value} is out of the range of {p.text} "
                          f"({p.lo}..{p.hi})")
    return p.convert(value)


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

    # What this backend's buffers are (what to_device and empty return; a pointer parameter takes
    # nothing else), whether they carry a flags.c_contiguous (NumPy's and CuPy's arrays), and
    # whether they are host memory, which may be read-only (NumPy's flags.writeable).
    buffer_type: type = np.ndarray
    buffer_flags = True
    host_buffers = True

    def params(self, kernel: str) -> tuple[Param, ...]:
        """av_<kernel>'s parameters before n (the GPU backends launch kernels/*.h's definitions)."""
        return kernel_params(kernel)

    def check_args(self, kernel: str, n, args, params: tuple[Param, ...] | None = None) -> tuple[int, list]:
        """The one check of every launch, before anything reaches a driver or the C fallback: n
        and the arguments for `params` (default self.params(kernel)). A buffer must be this
        backend's, its dtype of the parameter's kind and item size in this machine's byte order,
        C-contiguous, and writable where the kernel writes; a scalar must be an integer (a real
        number for a floating parameter) in the parameter's range, and comes back converted to
        its exact type. Anything else is a KernelError naming the kernel and the argument.
        Returns (n as an int, the arguments to pass)."""
        if params is None:
            params = self.params(kernel)
        if len(args) != len(params):
            raise KernelError(f"av_{kernel} takes {len(params)} arguments before n, got {len(args)}")
        if type(n) is not int or not 0 <= n <= _N.hi:
            n = check_scalar(kernel, "n", _N, n)
        checked = list(args)
        buffer_type, flags, host = self.buffer_type, self.buffer_flags, self.host_buffers
        for pos, p in enumerate(params):
            arg = args[pos]
            if not p.buffer:
                if type(arg) is not p.exact:  # (np.uint64 for a u64 passes as it is)
                    checked[pos] = check_scalar(kernel, pos, p, arg)
            elif not (type(arg) is buffer_type and arg.dtype in p.dtypes and
                      (not flags or (arg.flags.c_contiguous and not (p.writes and host and not arg.flags.writeable)))):
                checked[pos] = self._check_buffer(kernel, pos, p, arg)
        return n, checked

    def _check_buffer(self, kernel: str, pos: int, p: Param, arg):
        """check_args for a buffer that is not plainly right: arg (as a plain ndarray if it is a
        subclass of one) if it is right, else a KernelError saying what is wrong."""
        buffer_type = self.buffer_type
        if type(arg) is not buffer_type:
            if not isinstance(arg, buffer_type):
                raise _refuse(kernel, pos, p, f"{type(arg).__name__} passed as {p.ctype} (expected a "
                                              f"{buffer_type.__name__} of the {self.name} backend)")
            if buffer_type is np.ndarray:  # its own dtype and flags, not what a subclass says
                arg = np.ndarray.view(arg, np.ndarray)
        dtype = arg.dtype
        if not isinstance(dtype, np.dtype):
            raise _refuse(kernel, pos, p, f"a buffer whose dtype is {dtype!r} passed as {p.ctype}")
        if dtype.itemsize != p.itemsize or dtype.kind not in p.kinds:
            raise _refuse(kernel, pos, p, f"{dtype} array passed as {p.ctype}")
        if not dtype.isnative:
            raise _refuse(kernel, pos, p, f"{dtype} array passed as {p.ctype}: not this machine's byte order")
        if self.buffer_flags:
            flags = arg.flags
            if not flags.c_contiguous:
                raise _refuse(kernel, pos, p, f"expected a contiguous {p.ctype} buffer")
            if p.writes and self.host_buffers and not flags.writeable:
                raise _refuse(kernel, pos, p, f"a read-only array passed as {p.ctype}, which the kernel writes")
        return arg

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
