"""The sixteenth session's second review of Backend.launch (each test failed on the code before its
fix; the SIGSEGV cases killed the test process):

- merkle_level's `count` passed the check at any value, and the C fallback's SHA-NI loop hashed
  count // 2 pairs whatever n was: count = 2**64 - 1 with n = 3 crashed it, count = 1 with n = 3
  left rows 1 and 2 of `above` unwritten where PoCL copied nodes up (other bits than PoCL).
  native/merkle.c now computes node i for every i < n as the GPU kernels do, and launch checks
  n == (count + 1) // 2.
- No buffer's size was checked against n: sha256_many with n = 2 and a 1-row out wrote past it,
  ed25519_verify_all with n = 0 wrote its verdict past a 0-byte out, greeks with 1-element inputs
  and n = 2**24 crashed the C fallback and PoCL. Each kernel now has a size rule (base.SIZES).
- ed25519_verify's `order` was read by the GPU kernels only: [0, 0, 0, 0] gave [1, 7, 7, 7] on PoCL
  and [1, 1, 1, 1] on the C fallback, an entry >= n wrote past out. launch now refuses an order
  that is not a permutation of 0..n-1 when use_order is set.
- In an installed package (no native/*.h) the C-only ed25519_verify_all and _single took a
  read-only `out` (a bytes object's memory written).
- group= was not checked: PoCL raised RuntimeError/TypeError for -1, 1.5, "32"; the C fallback took
  anything.
- The C fallback launched any av_* symbol: launch("set_threads", 4) changed its thread count."""
from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from accel.backends import KernelError
from accel.backends.base import SIZES, kernel_modules, kernel_params
from conftest import require
from test_launch_args_s16 import _cuda, _DeviceArray

ON_HOST = ("cpu", "opencl")


@pytest.fixture(params=ON_HOST)
def b(request):
    return require(request.param)


def _below(rows=5) -> np.ndarray:
    return np.arange(rows * 32, dtype=np.uint8).reshape(rows, 32)


def _node(below: np.ndarray, count: int, i: int) -> bytes:
    """Node i of the level above `count` rows of `below`, by the kernels' rule."""
    flat = below.reshape(-1)
    if 2 * i + 1 < count:
        return hashlib.sha256(b"\x01" + bytes(flat[64 * i:64 * i + 64])).digest()
    return bytes(flat[64 * i:64 * i + 32])


# -- merkle_level's count ------------------------------------------------------------------------

@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 2**64 - 1])
def test_merkle_level_refuses_a_count_other_than_its_n(b, count):
    with pytest.raises(KernelError, match=f"av_merkle_level: n = 3 items for a level of count = {count}"):
        b.launch("merkle_level", 3, b.to_device(_below()), np.uint64(count), b.empty((3, 32), np.uint8))


@pytest.mark.parametrize("count", [5, 6])
def test_merkle_level_with_its_count_gives_the_same_nodes_everywhere(b, count):
    above = b.empty((3, 32), np.uint8)
    b.launch("merkle_level", 3, b.to_device(_below(count)), np.uint64(count), above)
    assert [bytes(r) for r in b.to_host(above)] == [_node(_below(count), count, i) for i in range(3)]


@pytest.mark.parametrize("count,n", [(1, 3), (5, 1), (9, 2), (3, 2)])
def test_the_c_merkle_level_computes_node_i_for_every_i_below_n_whatever_count(cpu, count, n):
    """The C function itself (launch refuses these): nodes 0..n-1 by the GPU kernels' rule, and
    nothing at or past n (the SHA-NI loop ran to count // 2 pairs and ignored n)."""
    ffi, lib = cpu._ffi, cpu._lib
    below = _below(5)
    above = np.full((4, 32), 0xEE, np.uint8)
    lib.av_merkle_level(ffi.from_buffer("uint8_t[]", below), count, ffi.from_buffer("uint8_t[]", above), n)
    assert [bytes(r) for r in above[:n]] == [_node(below, count, i) for i in range(n)]
    assert (above[n:] == 0xEE).all()


# -- sizes against n -----------------------------------------------------------------------------

def _minimal(kernel: str, n: int, new, scalars=None) -> list:
    """The smallest buffers launch accepts for av_<kernel> over n items (zeros: empty messages,
    margin parameters that give RK_NOT_FINITE), built with new(items, dtype); and the scalars."""
    params = kernel_params(kernel) if kernel in kernel_modules() else None
    scalars = dict(scalars or {})
    if kernel == "merkle_level":
        scalars.setdefault(1, 2 * n - 1)
    if kernel.startswith("ed25519_verify") and kernel not in kernel_modules():  # the C-only ones
        dtypes = [np.uint8, np.uint8, np.uint64, np.uint8, np.uint8]
    else:
        dtypes = [None if not p.buffer else {"u8": np.uint8, "u32": np.uint32, "u64": np.uint64, "i32": np.int32,
                                             "i64": np.int64, "double": np.float64}[p.ctype.rstrip(" *")]
                  for p in params]
    args = [np.uint32(0) if d is None else np.zeros(0, d) for d in dtypes]
    for pos, v in scalars.items():
        args[pos] = type(args[pos])(v) if dtypes[pos] is None else v
    if kernel == "merkle_level":
        args[1] = np.uint64(args[1])
    needs = SIZES[kernel](n, args)
    return [a if dtypes[pos] is None else new(needs[pos], dtypes[pos]) for pos, a in enumerate(args)], needs


def _cases():
    for kernel in sorted(SIZES):
        scal = [{}]
        if kernel == "greeks":
            scal = [{8: 0}, {8: 0b10100101}]
        if kernel in ("ed25519_verify", "ed25519_challenge"):
            scal = [{5: 0}]
        for s in scal:
            yield kernel, s


@pytest.mark.parametrize("kernel,scalars", [(k, s) for k, s in _cases() if k in kernel_modules()])
def test_every_buffer_one_item_short_of_what_n_needs_is_refused_cuda(kernel, scalars):
    b, fn = _cuda(kernel)
    args, needs = _minimal(kernel, 3, lambda items, d: _DeviceArray(d, size=items), scalars)
    b.launch(kernel, 3, *args)
    assert len(fn.calls) == 1
    names = [p.name for p in kernel_params(kernel)]
    for pos, need in enumerate(needs):
        if not need:
            continue
        short = list(args)
        short[pos] = _DeviceArray(args[pos].dtype, size=need - 1)
        with pytest.raises(KernelError, match=f"av_{kernel} argument {pos}: a buffer of {need - 1} .* needs {need} "
                                              f"\\(parameter {names[pos]}\\)"):
            b.launch(kernel, 3, *short)
    assert len(fn.calls) == 1


def _cpu_kernels():
    return [(k, s) for k, s in _cases() if k not in ("ed25519_challenge", "ed25519_verify_k")]


@pytest.mark.parametrize("kernel,scalars", _cpu_kernels())
def test_every_buffer_one_item_short_of_what_n_needs_is_refused_cpu(cpu, kernel, scalars):
    """The C fallback runs the smallest accepted launch, and refuses each buffer one item short
    (sentinel memory after each view stays untouched)."""
    pools = []

    def new(items, dtype):
        pool = np.zeros(items + 8, dtype)
        pools.append(pool)
        return pool[:items]

    args, needs = _minimal(kernel, 3, new, scalars)
    if kernel in ("portfolio_margin", "standard_margin"):
        args[0][:] = 0  # every account without positions
    cpu.launch(kernel, 3, *args)
    for pos, need in enumerate(needs):
        if not need:
            continue
        short = list(args)
        short[pos] = args[pos][:need - 1]
        with pytest.raises(KernelError, match=f"av_{kernel} argument {pos}: a buffer of {need - 1} .* needs {need}"):
            cpu.launch(kernel, 3, *short)


def test_sha256_many_with_n_past_its_out_is_refused_and_writes_nothing_past_it(b):
    out = b.to_device(np.full((2, 32), 0xAA, np.uint8))
    data, offsets = b.to_device(np.frombuffer(b"abcdefgh", np.uint8)), b.to_device(np.array([0, 4, 8], np.uint64))
    short = out if b.name == "opencl" else out[:1]
    if b.name == "opencl":
        from accel.backends.opencl import ClBuffer
        short = ClBuffer(out.buf, (1, 32), out.dtype)
    with pytest.raises(KernelError, match="av_sha256_many argument 2: a buffer of 32 .* n = 2 needs 64 "
                                          "\\(parameter out\\)"):
        b.launch("sha256_many", 2, data, offsets, short)
    assert (b.to_host(out)[1] == 0xAA).all()


def test_a_cl_buffer_claiming_more_than_it_holds_is_refused():
    b = require("opencl")
    from accel.backends.opencl import ClBuffer
    out = b.empty((1, 32), np.uint8)
    lying = ClBuffer(out.buf, (2, 32), out.dtype)
    with pytest.raises(KernelError, match="a buffer of 32 .* needs 64"):
        b.launch("sha256_many", 2, b.to_device(np.zeros(8, np.uint8)), b.to_device(np.array([0, 4, 8], np.uint64)),
                 lying)


def test_ed25519_verify_all_with_n_0_needs_its_one_verdict(cpu):
    z = np.zeros(0, np.uint8)
    room = np.full(8, 0xAA, np.uint8)
    with pytest.raises(KernelError, match="av_ed25519_verify_all argument 4: a buffer of 0 .* needs 1"):
        cpu.launch("ed25519_verify_all", 0, z, z, np.zeros(1, np.uint64), z, room[:0])
    assert room[0] == 0xAA
    cpu.launch("ed25519_verify_all", 0, z, z, np.zeros(1, np.uint64), z, room[:1])
    assert room[0] == 1


@pytest.mark.parametrize("scalars", [0, 0b0000_0001, 0b1111_1111])
def test_greeks_with_n_past_its_inputs_is_refused(b, scalars):
    """1-element inputs and n = 2**24 crashed the C fallback and PoCL (scalars = 0)."""
    one = [b.to_device(np.ones(1)) for _ in range(7)] + [b.to_device(np.zeros(1, np.uint8))]
    out = b.empty((6, 1), np.float64)
    with pytest.raises(KernelError, match="av_greeks argument .*: a buffer of [16] .* needs"):
        b.launch("greeks", 1 << 24, *one, np.uint32(scalars), out)


def test_greeks_scalar_inputs_of_one_element_are_accepted_and_agree(b):
    n = 5
    rng = np.random.default_rng(7)
    x = rng.uniform(50, 150, n)
    args = [x, np.array([100.0]), np.array([0.5]), np.array([0.01]), np.array([0.0]), np.array([0.3]),
            np.array([100.0]), np.zeros(1, np.uint8)]
    out = b.empty((6, n), np.float64)
    b.launch("greeks", n, *(b.to_device(a) for a in args), np.uint32(0b1111_1110), out)
    cpu = require("cpu")
    ref = np.empty((6, n))
    cpu.launch("greeks", n, *args, np.uint32(0b1111_1110), ref)
    assert b.to_host(out).tobytes() == ref.tobytes()


def test_device_levels_refuses_n_past_its_offsets(b):
    from accel.merkle import device_levels
    data, offsets = b.to_device(np.zeros(64, np.uint8)), b.to_device(np.array([0, 32, 64], np.uint64))
    with pytest.raises(KernelError, match="av_merkle_leaves argument 1: a buffer of 3 .* needs 6"):
        device_levels(b, data, offsets, 5)
    top = device_levels(b, data, offsets, 2)
    leaf = hashlib.sha256(b"\x00" + bytes(32)).digest()
    assert bytes(top[-1][0]) == hashlib.sha256(b"\x01" + leaf + leaf).digest()


# -- ed25519's order -----------------------------------------------------------------------------

def _signed(n: int):
    from nacl.signing import SigningKey
    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(n)]
    msgs = [bytes([i]) * (i * 50) for i in range(n)]
    pks = np.frombuffer(b"".join(bytes(k.verify_key) for k in keys), np.uint8).reshape(n, 32)
    sigs = np.frombuffer(b"".join(k.sign(m).signature for k, m in zip(keys, msgs)), np.uint8).reshape(n, 64).copy()
    if n > 2:
        sigs[2, 5] ^= 1  # one bad signature
    data = np.frombuffer(b"".join(msgs) or b"\0", np.uint8)
    offsets = np.concatenate([[0], np.cumsum([len(m) for m in msgs])]).astype(np.uint64)
    return pks, data, offsets, sigs


def _verify(b, order, use_order):
    pks, data, offsets, sigs = _signed(4)
    out = b.to_device(np.full(4, 7, np.uint8))
    b.launch("ed25519_verify", 4, *(b.to_device(a) for a in (pks, data, offsets, sigs)),
             b.to_device(np.array(order, np.uint32)), np.uint32(use_order), out)
    return b.to_host(out).tolist()


@pytest.mark.parametrize("order", [[0, 0, 0, 0], [0, 1, 2, 4], [3, 2, 1], [1, 0, 3, 3]])
def test_an_order_that_is_not_a_permutation_is_refused(b, order):
    with pytest.raises(KernelError, match="av_ed25519_verify argument 4: .*(not a permutation|needs 4)"):
        _verify(b, order, 1)


def test_a_permutation_gives_the_same_verdicts_everywhere_as_no_order(b):
    assert _verify(b, [3, 1, 0, 2], 1) == _verify(b, [0], 0) == _verify(require("cpu"), [9, 9, 9, 9], 0) == \
        [1, 1, 0, 1]


def test_upload_order_checks_once_and_launch_trusts_that_copy(b, monkeypatch):
    pks, data, offsets, sigs = _signed(4)
    with pytest.raises(ValueError, match="permutation"):
        b.upload_order(np.array([0, 0, 1, 2], np.uint32))
    order = b.upload_order(np.array([2, 0, 3, 1], np.uint32))
    if b.name != "cpu":  # a GPU's launch does not copy a checked order back
        monkeypatch.setattr(b, "to_host", lambda buf: pytest.fail("order copied back"))
    out = b.empty((4,), np.uint8)
    b.launch("ed25519_verify", 4, *(b.to_device(a) for a in (pks, data, offsets, sigs)), order, np.uint32(1), out)
    monkeypatch.undo()
    assert b.to_host(out).tolist() == [1, 1, 0, 1]


# -- the installed package -----------------------------------------------------------------------

def test_installed_layout_still_refuses_a_read_only_out_for_the_c_only_kernels(tmp_path, monkeypatch):
    """An installed package ships kernels/*.h as accel/kernels, never native/*.h."""
    from accel.backends import cpu as cpu_module
    from accel.backends.base import KERNEL_DIR
    kernels = tmp_path / "accel" / "kernels"
    shutil.copytree(KERNEL_DIR, kernels)
    monkeypatch.setattr(cpu_module, "KERNEL_DIR", kernels, raising=False)
    b = cpu_module.CpuBackend(1)
    pks, data, offsets, sigs = _signed(1)
    for kernel in ("ed25519_verify_all", "ed25519_verify_single"):
        frozen = bytes(1)
        with pytest.raises(KernelError, match=f"av_{kernel} argument 4: a read-only array .*parameter out"):
            b.launch(kernel, 1, pks, data, offsets, sigs, np.frombuffer(frozen, np.uint8))
        assert frozen == bytes(1)


def test_the_c_only_declarations_match_native_headers():
    from accel.backends.base import KERNEL_DIR
    from accel.backends.cpu import C_ONLY
    native = (KERNEL_DIR.parent / "native" / "ed25519.h").read_text()
    for kernel, declaration in C_ONLY.items():
        assert declaration in native, kernel


# -- group= and non-kernel symbols ---------------------------------------------------------------

@pytest.mark.parametrize("group", [-1, 0, 1.5, "32", True, np.bool_(True), 2**40])
def test_a_group_that_is_not_a_positive_int_is_refused(b, group):
    with pytest.raises(KernelError, match="av_merkle_level: group="):
        b.launch("merkle_level", 3, b.to_device(_below()), np.uint64(5), b.empty((3, 32), np.uint8), group=group)


def test_a_positive_group_is_accepted(b):
    for group in (1, np.int64(1), None):
        above = b.empty((3, 32), np.uint8)
        b.launch("merkle_level", 3, b.to_device(_below()), np.uint64(5), above, group=group)
        assert bytes(b.to_host(above)[2]) == _node(_below(), 5, 2)


def test_cuda_refuses_a_bad_group_before_the_driver():
    b, fn = _cuda("merkle_level")
    for group in (-1, 1.5, "32", True):
        with pytest.raises(KernelError, match="group="):
            b.launch("merkle_level", 3, _DeviceArray(np.uint8), 5, _DeviceArray(np.uint8), group=group)
    assert fn.calls == []


@pytest.mark.parametrize("kernel", ["set_threads", "ledger_run", 5, ["sha256_many"]])
def test_the_c_fallback_launches_kernels_only(cpu, kernel):
    threads = cpu._lib.av_set_threads(0)
    with pytest.raises(KernelError, match="the C fallback has no av_"):
        cpu.launch(kernel, 4)
    assert cpu._lib.av_set_threads(0) == threads


def test_every_kernel_has_a_size_rule():
    from accel.backends.cpu import C_ONLY
    assert set(SIZES) == set(kernel_modules()) | set(C_ONLY)


def test_the_size_rules_constants_match_the_kernels():
    from accel.backends.base import B76_OUTPUTS, KERNEL_DIR, RK_P_HEADER
    assert f"#define RK_P_MOVES {RK_P_HEADER} " in (KERNEL_DIR / "margin.h").read_text()
    assert f"#define B76_OUTPUTS {B76_OUTPUTS} " in (KERNEL_DIR / "black76.h").read_text()
