"""The sixteenth session's review of Backend.launch's arguments and Packed.join (each test failed on
the code before its fix; the crashes killed the test process).

- OpenClBackend.launch checked no argument: float64 or big-endian offsets for sha256_many crashed
  PoCL (SIGSEGV), int64 offsets [0, -1] gave a garbage digest, and an np.uint32 or np.int32 given
  for merkle_level's `u64 count` was passed 4 bytes wide (the high half read from whatever
  followed: another node, changing from run to run) where the C fallback converted it. CUDA's
  launch had the same gap.
- CpuBackend.launch compared item size and kind, not byte order: big-endian offsets crashed it, a
  big-endian forward of 100.0 priced as 0.0. It also let a kernel write into read-only memory.
- Packed.join did not check its parts: two malformed ones joined into a well-formed batch cut in
  other places, and int64 offsets came out as float64.

Now every backend's launch runs one check (base.Backend.check_args) against the kernel's
parameters: kernels/*.h's signatures for the GPU backends, the compiled C functions' for the C
fallback."""
from __future__ import annotations

import contextlib
import hashlib
import types

import numpy as np
import pytest

from accel import Packed
from accel.backends import KernelError
from accel.backends.base import current_process, kernel_modules
from accel.backends.cuda import CudaBackend
from conftest import require

ON_HOST = ("cpu", "opencl")
CARRIED = bytes(range(128, 160))  # node 4 of _below(), carried up a level unchanged


@pytest.fixture(params=ON_HOST)
def b(request):
    return require(request.param)


def _below() -> np.ndarray:
    return np.arange(5 * 32, dtype=np.uint8).reshape(5, 32)


def _level(b, count) -> bytes:
    above = b.empty((3, 32), np.uint8)
    b.launch("merkle_level", 3, b.to_device(_below()), count, above)
    return bytes(b.to_host(above)[2])


def _sha(b, offsets) -> bytes:
    out = b.empty((1, 32), np.uint8)
    b.launch("sha256_many", 1, b.to_device(np.frombuffer(b"abcd", np.uint8)), b.to_device(offsets), out)
    return bytes(b.to_host(out)[0])


# -- buffers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("offsets,message", [
    (np.array([0.0, 4.0]), "float64 array passed as"),
    (np.array([0, -1], np.int64), "int64 array passed as"),
    (np.array([0, 4], ">u8"), ">u8 array passed as"),
], ids=["float64", "int64", "big-endian"])
def test_offsets_of_another_type_are_refused_on_every_backend(b, offsets, message):
    with pytest.raises(KernelError, match=f"av_sha256_many argument 1: {message}.*parameter offsets"):
        _sha(b, offsets)
    assert _sha(b, np.array([0, 4], np.uint64)) == hashlib.sha256(b"abcd").digest()


def test_a_big_endian_forward_is_refused_not_priced_as_another_number(b):
    """(The C fallback priced a big-endian 100.0 as 0.0, without an error.)"""
    ones = np.ones(1)
    out = b.empty((1, 8), np.float64)
    args = [np.array([100.0], ">f8"), *[ones] * 6, np.zeros(1, np.uint8)]
    with pytest.raises(KernelError, match=r"av_greeks argument 0: >f8 array .*byte order.*parameter x"):
        b.launch("greeks", 1, *(b.to_device(a) for a in args), np.uint32(0), out)
    native = [a.astype("=f8") if a.dtype.kind == "f" else a for a in args]
    b.launch("greeks", 1, *(b.to_device(a) for a in native), np.uint32(0), out)
    assert b.to_host(out)[0, 0] > 0  # a price, not 0.0


def test_something_other_than_this_backends_buffer_is_refused(b):
    offsets = np.array([0, 4], np.uint64)
    data = np.frombuffer(b"abcd", np.uint8)
    wrong = [bytes(4), [0, 4], None] + ([data] if b.name != "cpu" else [])  # a host array is not a device buffer
    for arg in wrong:
        with pytest.raises(KernelError, match="av_sha256_many argument 0: .* passed as .*parameter data"):
            b.launch("sha256_many", 1, arg, b.to_device(offsets), b.empty((1, 32), np.uint8))


def test_the_c_fallback_refuses_read_only_memory_for_what_a_kernel_writes(cpu):
    """(The kernel wrote the digest into the bytes object's memory.)"""
    frozen = bytes(32)
    out = np.frombuffer(frozen, np.uint8).reshape(1, 32)
    data, offsets = np.frombuffer(b"abcd", np.uint8), np.array([0, 4], np.uint64)  # read-only data is fine
    with pytest.raises(KernelError, match="argument 2: a read-only array .*parameter out"):
        cpu.launch("sha256_many", 1, data, offsets, out)
    assert frozen == bytes(32)


def test_an_array_subclass_is_checked_by_its_own_dtype(cpu):
    class Liar(np.ndarray):
        @property
        def dtype(self):
            return np.dtype(np.uint64)
    offsets = np.array([0.0, 4.0]).view(Liar)  # float64 memory claiming uint64
    with pytest.raises(KernelError, match="float64 array passed as uint64_t"):
        cpu.launch("sha256_many", 1, np.frombuffer(b"abcd", np.uint8), offsets, np.empty((1, 32), np.uint8))


# -- scalars -------------------------------------------------------------------------------------

@pytest.mark.parametrize("count", [np.uint64(5), np.uint32(5), np.int32(5), np.int64(5), np.uint8(5), 5],
                         ids=["uint64", "uint32", "int32", "int64", "uint8", "int"])
def test_a_scalar_of_another_width_is_converted_to_the_parameters_type(b, count):
    """(On PoCL an np.uint32 or np.int32 count was passed 4 bytes wide: the odd last node was hashed
    with garbage instead of carried up.)"""
    assert _level(b, count) == CARRIED


@pytest.mark.parametrize("count,message", [
    (-1, "-1 is out of the range of"), (2**64, "18446744073709551616 is out of the range of"),
    (np.int64(-1), "-1 is out of the range of"), (5.0, "float passed as"), (np.float64(5), "float64 passed as"),
    (True, "a bool passed as"), ("5", "str passed as"), (np.array([5], np.uint64), "ndarray passed as"),
], ids=["negative", "2**64", "np-negative", "float", "np-float", "bool", "str", "array"])
def test_a_scalar_out_of_range_or_not_an_integer_is_refused(b, count, message):
    with pytest.raises(KernelError, match=f"av_merkle_level argument 1: {message}.*parameter count"):
        _level(b, count)


@pytest.mark.parametrize("n", [-1, 1.0, 2**64, None])
def test_n_that_is_not_a_count_is_refused(b, n):
    with pytest.raises(KernelError, match="av_merkle_level argument n"):
        b.launch("merkle_level", n, b.to_device(_below()), np.uint64(5), b.empty((3, 32), np.uint8))


def test_a_wrong_number_of_arguments_is_refused(b):
    with pytest.raises(KernelError, match="av_merkle_level takes 3 arguments before n, got 2"):
        b.launch("merkle_level", 3, b.to_device(_below()), np.uint64(5))


@pytest.mark.parametrize("ctype,inside,outside", [
    ("u32", [0, 2**32 - 1], [-1, 2**32]), ("u64", [0, 2**64 - 1], [-1, 2**64]),
    ("i32", [-2**31, 2**31 - 1], [-2**31 - 1, 2**31]), ("i64", [-2**63, 2**63 - 1], [-2**63 - 1, 2**63]),
    ("u8", [0, 255], [-1, 256]),
])
def test_the_shared_scalar_check_converts_inside_and_refuses_outside_the_range(ctype, inside, outside):
    from accel.backends.base import check_scalar, param
    p = param(ctype, False, False, name="x")
    for v in inside:
        got = check_scalar("k", 0, p, v)
        assert type(got) is {"u8": np.uint8, "u32": np.uint32, "u64": np.uint64, "i32": np.int32, "i64": np.int64}[ctype]
        assert int(got) == v
    for v in outside:
        with pytest.raises(KernelError, match=f"av_k argument 0: {v} is out of the range of {ctype}"):
            check_scalar("k", 0, p, v)


# -- the parameter tables ------------------------------------------------------------------------

def test_every_kernel_signature_is_read_and_the_c_fallback_agrees_with_it(cpu):
    """The GPU backends check against kernels/*.h, the C fallback against its compiled functions:
    for every kernel both have, the same types and written buffers (the names may differ)."""
    from accel.backends.base import C_TYPES, kernel_params
    assert {"sha256_many", "merkle_level", "greeks", "ed25519_verify", "ed25519_verify_k"} <= set(kernel_modules())
    shared = 0
    for kernel in kernel_modules():
        header = kernel_params(kernel)
        assert header and all(p.name for p in header)
        try:
            _, compiled, _ = cpu._signature(kernel)
        except KernelError:
            continue  # a GPU-only kernel (ed25519_challenge, ed25519_verify_k)
        shared += 1
        assert [(C_TYPES[p.ctype.rstrip(" *")], p.buffer, p.writes) for p in compiled] == \
            [(p.ctype.rstrip(" *"), p.buffer, p.writes) for p in header], kernel
        assert all(p.name for p in compiled), kernel
    assert shared >= 7


# -- CUDA (no GPU needed: a CudaBackend whose CuPy is a stand-in) --------------------------------

class _DeviceArray:
    """What CudaBackend.launch reads of a CuPy array: dtype, flags.c_contiguous and size."""

    def __init__(self, dtype, contiguous=True, size=1 << 20):
        self.dtype, self.flags = np.dtype(dtype), types.SimpleNamespace(c_contiguous=contiguous)
        self.size = size


class _Function:
    max_threads_per_block = 1024

    def __init__(self):
        self.calls = []

    def __call__(self, grid, block, args):
        self.calls.append(args)


def _cuda(kernel: str):
    b = object.__new__(CudaBackend)
    b.buffer_type, b._dev, b._started_in = _DeviceArray, contextlib.nullcontext(), current_process()
    fn = _Function()
    b._functions = {kernel: fn}
    return b, fn


def test_cuda_launch_converts_scalars_to_the_parameters_type():
    b, fn = _cuda("merkle_level")
    for count in (np.uint32(5), np.int32(5), 5, np.uint64(5)):
        b.launch("merkle_level", 3, _DeviceArray(np.uint8), count, _DeviceArray(np.uint8))
        below, got, above, n = fn.calls[-1]
        assert type(got) is np.uint64 and got == 5 and type(n) is np.uint64 and n == 3


@pytest.mark.parametrize("offsets,message", [
    (_DeviceArray(np.float64), "float64 array passed as u64"),
    (_DeviceArray(np.int64), "int64 array passed as u64"),
    (_DeviceArray(">u8"), ">u8 array passed as u64 \\*: not this machine's byte order"),
    (_DeviceArray(np.uint64, contiguous=False), "expected a contiguous u64 \\* buffer"),
    (np.array([0, 4], np.uint64), "ndarray passed as u64 \\* \\(expected a _DeviceArray of the cuda backend\\)"),
], ids=["float64", "int64", "big-endian", "strided", "host array"])
def test_cuda_launch_refuses_a_buffer_of_another_type_before_the_driver_sees_it(offsets, message):
    b, fn = _cuda("sha256_many")
    with pytest.raises(KernelError, match=f"av_sha256_many argument 1: {message}"):
        b.launch("sha256_many", 1, _DeviceArray(np.uint8), offsets, _DeviceArray(np.uint8))
    assert fn.calls == []
    b.launch("sha256_many", 1, _DeviceArray(np.uint8), _DeviceArray(np.uint64), _DeviceArray(np.uint8))
    assert len(fn.calls) == 1


@pytest.mark.parametrize("count", [-1, 2**64, 5.0, True])
def test_cuda_launch_refuses_a_scalar_out_of_range_or_not_an_integer(count):
    b, fn = _cuda("merkle_level")
    with pytest.raises(KernelError, match="av_merkle_level argument 1: .*parameter count"):
        b.launch("merkle_level", 3, _DeviceArray(np.uint8), count, _DeviceArray(np.uint8))
    assert fn.calls == []


# -- Packed.join ---------------------------------------------------------------------------------

def _packed(data: bytes, offsets, dtype=np.uint64) -> Packed:
    return Packed(np.frombuffer(data, np.uint8), np.array(offsets, dtype))


@pytest.mark.parametrize("parts,bad,message", [
    ([_packed(b"ABCD", [0, 1]), _packed(b"EF", [0, 2])], 0, "offsets must run from 0 to the data's 4 bytes"),
    ([_packed(b"EF", [0, 2]), _packed(b"ABCD", [1, 4])], 1, "offsets must run from 0"),
    ([_packed(b"EF", [0, 2]), _packed(b"ABCD", [0, 3, 1, 4])], 1, "offsets decrease at message 1"),
    ([_packed(b"EF", [0, 2]), _packed(b"ABCD", [0, 4], np.int64)], 1, "offsets must be a non-empty 1-D uint64 array"),
    ([_packed(b"EF", [0, 2]), Packed(np.frombuffer(b"AB", np.int8), np.array([0, 2], np.uint64))], 1,
     "data must be a 1-D uint8 array"),
    ([_packed(b"", [])], 0, "offsets must be a non-empty"),
], ids=["short last offset", "first offset not 0", "decreasing", "int64 offsets", "int8 data", "no offsets"])
def test_join_refuses_a_malformed_part_naming_it(parts, bad, message):
    """(Parts 0 and 1 of the first case joined into the messages b"A" and b"BCDEF".)"""
    with pytest.raises(ValueError, match=f"Packed.join: part {bad}: .*{message}"):
        Packed.join(parts)


def test_join_refuses_a_part_that_is_not_a_packed():
    with pytest.raises(TypeError, match="part 1 is a tuple, not a Packed"):
        Packed.join([_packed(b"EF", [0, 2]), (np.zeros(0, np.uint8), np.zeros(1, np.uint64))])


def test_join_of_well_formed_parts_is_unchanged():
    parts = [_packed(b"ABCD", [0, 1, 4]), _packed(b"", [0]), _packed(b"EF", [0, 0, 2]), _packed(b"G", [0, 1])]
    joined = Packed.join(iter(parts))
    assert joined.data.tobytes() == b"ABCDEFG" and joined.data.dtype == np.uint8
    assert joined.offsets.dtype == np.uint64 and joined.offsets.tolist() == [0, 1, 4, 4, 6, 7]
    assert [joined.item(i) for i in range(len(joined))] == [b"A", b"BCD", b"", b"EF", b"G"]
    empty = Packed.join([])
    assert empty.data.dtype == np.uint8 and len(empty.data) == 0 and empty.offsets.tolist() == [0]
