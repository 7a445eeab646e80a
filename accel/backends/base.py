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


# How many items of each buffer a kernel reads or writes for n items and its (checked) scalars:
# kernel -> f(n, args) giving, per parameter before n, the fewest items its buffer must hold (0 for
# a scalar, or for a buffer whose extent its contents give: messages' bytes by the offsets,
# margin's positions and instruments by offsets and pos_inst). launch refuses a smaller buffer: a
# raw launch whose n outran its buffers read and wrote past them (SIGSEGV on the C fallback and
# PoCL, a digest written past `out`). What is needed at n = 0 counts too (the C fallback reads
# offsets[0] and margin's parameter header, and writes ed25519_verify_all's verdict, at any n).
_PACKED = lambda n, a: (0, n + 1, 32 * n)  # noqa: E731  (data by offsets, n + 1 offsets, digests)
RK_P_HEADER = 22  # kernels/margin.h RK_P_MOVES: the parameters read before the counts they hold
B76_OUTPUTS = 6  # kernels/black76.h: rows of greeks' out


def _greeks_sizes(n, a):
    """Bit j of `scalars` set: input j holds one element shared by every item."""
    s, one = int(a[8]), 1 if n else 0
    return (one if s & 1 else n, one if s & 2 else n, one if s & 4 else n, one if s & 8 else n,
            one if s & 16 else n, one if s & 32 else n, one if s & 64 else n, one if s & 128 else n,
            0, B76_OUTPUTS * n)


def _level_sizes(n, a):
    """merkle_level: node i of the level above `count` nodes for i < n = (count + 1) // 2 (the
    kernels' relation; the C fallback hashed count // 2 pairs whatever n was)."""
    count = int(a[1])
    if n != (count + 1) // 2:
        raise KernelError(f"av_merkle_level: n = {n} items for a level of count = {count} nodes; "
                          f"a level above {count} nodes has (count + 1) // 2 = {(count + 1) // 2}")
    return (32 * count, 0, 32 * n)


SIZES = {
    "sha256_many": _PACKED,
    "merkle_leaves": _PACKED,
    "merkle_level": _level_sizes,
    # pks, msgs (by offsets), offsets, sigs, order (read when use_order), use_order, out
    "ed25519_verify": lambda n, a: (32 * n, 0, n + 1, 64 * n, n if a[5] else 0, 0, n),
    "ed25519_challenge": lambda n, a: (32 * n, 0, n + 1, 64 * n, n if a[5] else 0, 0, 32 * n),
    "ed25519_verify_k": lambda n, a: (32 * n, 64 * n, 32 * n, n),
    "ed25519_verify_all": lambda n, a: (32 * n, 0, n + 1, 64 * n, 1),  # one verdict, even for n = 0
    "ed25519_verify_single": lambda n, a: (32 * n, 0, n + 1, 64 * n, n),
    "ed25519_key_is_safe": lambda n, a: (32 * n, n),
    "greeks": _greeks_sizes,
    # offsets, pos_inst, pos_size, forward, strike, expiry, vol, kind, pp, im, mm[, worst]
    "portfolio_margin": lambda n, a: (n + 1, 0, 0, 0, 0, 0, 0, 0, RK_P_HEADER, n, n, n),
    "standard_margin": lambda n, a: (n + 1, 0, 0, 0, 0, 0, 0, 0, RK_P_HEADER, n, n),
}
# Kernels whose `order` (a permutation of 0..n-1 when use_order, parameter ORDERED[k] + 1, is set)
# says which item work item j takes: the GPU kernels write out[order[j]] and the C fallback checks
# item j, so launch refuses any other order (an entry >= n wrote past out on a GPU, a repeated one
# left items unwritten there, where the C fallback wrote every one).
ORDERED = {"ed25519_verify": 4, "ed25519_challenge": 4}


def is_permutation(order: np.ndarray, n: int) -> bool:
    """Whether the first n entries of a host array of unsigned integers are 0..n-1 in some order."""
    head = np.asarray(order).reshape(-1)[:n]
    if n == 0:
        return True
    if len(head) < n or int(head.max()) >= n:
        return False
    return bool(np.bincount(head, minlength=n).all())


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
        group: the work-group size a kernel is written for (GPU targets; the C loop ignores it),
        None or a positive int the device allows.

        Checked (check_args, a KernelError naming the argument): each argument's kind, type,
        byte order and contiguity, each scalar's range, each buffer's size against n and the
        scalars (SIZES), merkle_level's n against its count, and ed25519's `order`, which must be
        a permutation of 0..n-1 when use_order is set. Trusted, not checked (checking them costs
        a pass over the data, on a GPU a copy back): the CONTENTS of the other buffers, i.e.
        offsets that start at 0, never decrease and end within the data; margin's pos_inst
        entries within the instrument arrays and pp's counts within pp. Offsets that break that
        read outside the buffers. The high-level APIs (accel.sha256_many, merkle_root,
        ed25519_verify_batch, greeks, portfolio_margin ...) build these buffers themselves and
        are the checked entry points; launch is for code that built them as they do."""

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
        C-contiguous, writable where the kernel writes, and hold at least the items SIZES says
        the kernel reads or writes for n and the scalars; a scalar must be an integer (a real
        number for a floating parameter) in the parameter's range, and comes back converted to
        its exact type; ed25519's order must be a permutation of 0..n-1 when use_order is set.
        Anything else is a KernelError naming the kernel and the argument. Returns (n as an int,
        the arguments to pass)."""
        if params is None:
            params = self.params(kernel)
        sizes = SIZES.get(kernel)
        if sizes is None:
            raise KernelError(f"av_{kernel} has no size rule (base.SIZES): launch cannot check its buffers")
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
        for pos, (arg, need) in enumerate(zip(checked, sizes(n, checked))):
            if need and arg.size < need:
                p = params[pos]
                raise _refuse(kernel, pos, p, f"a buffer of {arg.size} {p.ctype[:-2].strip()} items "
                                              f"passed where n = {n} needs {need}")
        at = ORDERED.get(kernel)
        if at is not None and checked[at + 1] and n:
            self._check_order(kernel, at, params[at], checked[at], n)
        return n, checked

    def check_group(self, kernel: str, group):
        """launch's group: None, or a positive int (not a bool); else a KernelError naming the
        kernel (whether the device allows it, each GPU backend checks)."""
        if group is None:
            return None
        if isinstance(group, (bool, np.bool_)) or not isinstance(group, (int, np.integer)) or \
                not 1 <= group <= 0x7FFFFFFF:
            raise KernelError(f"av_{kernel}: group={group!r}: a work-group size is a positive int or None")
        return int(group)

    # Orders uploaded by upload_order, already found permutations: {id: (buffer, n)}, a few at most
    _orders: dict | None = None

    def upload_order(self, order: np.ndarray):
        """A device copy of `order` (a host uint32 array) after checking that it is a permutation
        of 0..len(order)-1 (a ValueError if not): the next launch given it skips the check, which
        on a GPU would copy it back."""
        order = np.ascontiguousarray(order)
        if order.dtype != np.uint32 or order.ndim != 1 or not is_permutation(order, len(order)):
            raise ValueError("order must be a 1-D uint32 permutation of 0..n-1")
        buffer = self.to_device(order)
        if not self.host_buffers:
            if self._orders is None:
                self._orders = {}
            while len(self._orders) >= 8:
                del self._orders[next(iter(self._orders))]
            self._orders[id(buffer)] = (buffer, len(order))
        return buffer

    def _check_order(self, kernel: str, pos: int, p: Param, order, n: int) -> None:
        known = (self._orders or {}).pop(id(order), None)
        if known is not None and known[0] is order and known[1] == n:
            return
        host = order if self.host_buffers else self.to_host(order)
        if not is_permutation(host, n):
            raise _refuse(kernel, pos, p, f"order is not a permutation of 0..{n - 1} (use_order is set)")

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
