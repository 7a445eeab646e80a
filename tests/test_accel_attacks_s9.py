"""Fresh attacks on the accel kernel boundary (session 9, helper h1): inputs the earlier reviews
(tests/test_kernel_boundary_s5.py, test_kernels_s6.py, test_kernels_s7.py) did not try.

Regression tests for the defects found (each failed before its fix):
- MarginParams was validated only in __post_init__, and its kernel layout cached by identity: a
  MarginParams changed afterwards (object.__setattr__, as the Portfolio/Marks tests of session 5
  do) or unpickled (pickle and copy skip __post_init__) reached the kernels unchecked. Too many
  moves wrote past the kernels' per-account scenario array (a segfault of the C fallback at
  100,000 moves, silent garbage below), a NaN shock or a negative tick became margins, and a
  change after the first call was ignored (the stale cached layout) while params.scenario() and
  params.moves described the new one.
- Portfolio and Marks re-checked the layout of their arrays on every call but not their values:
  an array swapped for another read-only one, or index / rate set with object.__setattr__, was
  margined silently (a negative index or forward, a negative vol or expiry, a string index parsed
  as a number, a NaN size that standard margin skipped).
- pack_messages took message lengths from len() and checked only their sum: items whose len() is
  not their size (a bytes subclass, a shaped array) but whose errors cancel split the batch at the
  wrong places, giving other digests, roots and Ed25519 verdicts without an error.
- MarginParams took a bool as a scalar parameter (True = 1.0) while refusing one among the moves.
- dispatch kept its fallback counter lock across fork(): a child forked while another thread held
  it hung on its first fallback or metrics read.
- The OpenCL contraction check knew only "fma.rn.f64" and "fma.rn.f32" in PTX (not fma.rn.ftz.f32,
  mad.rn.f64, other rounding modes) and only llvm.fmuladd in LLVM bitcode (not llvm.fma).
- A worker forked from a process that started the configured GPU backend raised BackendUnavailable
  on every call (backend=None) instead of redoing the work on the C fallback.
- greeks refused is_call = [] (float64 to NumPy) for an empty batch that every other input took."""
from __future__ import annotations

import copy
import hashlib
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import accel
from accel import merkle, risk_numpy
from accel.risk import CALL, FUTURE, PUT, MarginParams, Marks, Portfolio


def _book():
    mk = Marks(index=100.0, rate=0.01, forward=np.array([100.0, 101.0, 100.0]), strike=np.array([100.0, 90.0, 0.0]),
               expiry=np.array([0.1, 0.02, 0.5]), vol=np.array([0.5, 0.8, 0.0]),
               kind=np.array([CALL, PUT, FUTURE], np.uint8))
    pf = Portfolio(offsets=np.array([0, 2, 3]), instrument=np.array([0, 1, 2]), size=np.array([-1.0, 2.0, -3.0]))
    return pf, mk


# ---------------------------------------------------------------- MarginParams changed after its checks

CHANGES = {
    "17 moves": ("moves", tuple([0.01] * 17), "moves"),
    "17 extended moves": ("extended_moves", tuple([0.5] * 17), "extended moves"),
    "a move of -100%": ("moves", (-1.0, 0.0, 0.1), "above -1"),
    "NaN vol_up": ("vol_up", float("nan"), "vol_up"),
    "infinite tick": ("tick", float("inf"), "tick"),
    "negative tick": ("tick", -1e-8, "tick"),
    "zero days_per_year": ("days_per_year", 0.0, "days_per_year"),
    "moves not numbers": ("moves", ("0.1",), "moves"),
    "vol_down_floor 0": ("vol_down_floor", 0.0, "vol_down_floor"),
}


@pytest.mark.parametrize("what", sorted(CHANGES))
@pytest.mark.parametrize("api", ["portfolio", "standard", "numpy"])
def test_margin_params_changed_after_construction_are_checked_again(backends, what, api):
    """A frozen MarginParams changed with object.__setattr__ is refused with the ValueError its
    constructor gives, on every backend and on the software-only path, whether or not it was used
    before (its cached layout must not hide the change)."""
    name, value, message = CHANGES[what]
    pf, mk = _book()
    for used_before in (False, True):
        p = MarginParams()
        if used_before:
            accel.portfolio_margin(pf, mk, p, backend="cpu")
        object.__setattr__(p, name, value)
        for b in backends:
            call = {"portfolio": lambda: accel.portfolio_margin(pf, mk, p, backend=b),
                    "standard": lambda: accel.standard_margin(pf, mk, p, backend=b),
                    "numpy": lambda: risk_numpy.portfolio_margin(pf, mk, p)}[api]
            with pytest.raises(ValueError, match=message):
                call()


def test_a_valid_change_after_the_first_call_is_what_the_kernels_use(backends):
    """The cached layout followed the object's identity only: a shock changed after the first
    call kept the old margins (and the worst scenario's index then named the new moves)."""
    pf, mk = _book()
    p = MarginParams()
    before = accel.portfolio_margin(pf, mk, p, backend="cpu")
    object.__setattr__(p, "vol_up", 2.0)
    object.__setattr__(p, "moves", (-0.3, 0.0, 0.3))
    want = accel.portfolio_margin(pf, mk, MarginParams(vol_up=2.0, moves=(-0.3, 0.0, 0.3)), backend="cpu")
    assert not np.array_equal(want.maintenance, before.maintenance)
    for b in backends:
        got = accel.portfolio_margin(pf, mk, p, backend=b)
        assert all(np.array_equal(g, w) for g, w in zip(got, want)), b.name
    got = risk_numpy.portfolio_margin(pf, mk, p)
    assert all(np.array_equal(g, w) for g, w in zip(got, want))


def _unpickled(**state):
    """A MarginParams as pickle rebuilds one from (possibly crafted) state: __post_init__ never runs."""
    p = pickle.loads(pickle.dumps(MarginParams()))
    p.__dict__.update(state)
    return p


@pytest.mark.parametrize("state, message", [
    ({"moves": [0.1] * 40}, "moves"),
    ({"tick": "1e-8"}, "tick"),
    ({"vol_exponent": None}, "vol_exponent"),
    ({"extended_moves": (-2.0,)}, "above -1"),
])
def test_unpickled_margin_params_are_checked_before_the_kernels(backends, state, message):
    pf, mk = _book()
    p = _unpickled(**state)
    for b in backends:
        with pytest.raises(ValueError, match=message):
            accel.portfolio_margin(pf, mk, p, backend=b)
    with pytest.raises(ValueError, match=message):
        risk_numpy.portfolio_margin(pf, mk, p)


def test_copies_of_good_params_give_the_same_bits(backends):
    """What the checks must keep: copies and pickles of valid parameters margin as the original."""
    pf, mk = _book()
    p = MarginParams(moves=[-0.2, -0.0, 0.2], tick=1e-6)
    want = accel.portfolio_margin(pf, mk, p, backend="cpu")
    for q in (copy.copy(p), copy.deepcopy(p), pickle.loads(pickle.dumps(p)), p):
        for b in backends:
            got = accel.portfolio_margin(pf, mk, q, backend=b)
            assert all(np.array_equal(g, w) for g, w in zip(got, want)), b.name


def test_a_hundred_thousand_moves_set_after_the_checks_do_not_crash_the_process():
    """In a child process (a segfault fails this test instead of ending the run): 100,000 moves set
    on a checked MarginParams wrote past the C kernel's 64-scenario array and crashed it."""
    code = textwrap.dedent("""
        import numpy as np, accel
        from accel.risk import CALL, MarginParams, Marks, Portfolio
        mk = Marks(index=100.0, rate=0.0, forward=np.array([100.0]), strike=np.array([100.0]),
                   expiry=np.array([0.1]), vol=np.array([0.5]), kind=np.array([CALL], np.uint8))
        pf = Portfolio(offsets=np.array([0, 1]), instrument=np.array([0]), size=np.array([-1.0]))
        p = MarginParams()
        object.__setattr__(p, "moves", tuple([0.01] * 100_000))
        try:
            accel.portfolio_margin(pf, mk, p, backend="cpu")
        except ValueError as exc:
            print("refused:", exc)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused: MarginParams: 1..16 moves" in done.stdout


# ---------------------------------------------------------------- books whose values changed after their checks

def _read_only(values):
    a = np.array(values, np.float64)
    a.flags.writeable = False
    return a


BOOK_CHANGES = {
    "index negative": (lambda pf, mk: object.__setattr__(mk, "index", -100.0), "index must be finite and > 0"),
    "index a string": (lambda pf, mk: object.__setattr__(mk, "index", "100"), "index must be real numbers"),
    "rate a string": (lambda pf, mk: object.__setattr__(mk, "rate", "0.05"), "rate must be real numbers"),
    "rate huge": (lambda pf, mk: object.__setattr__(mk, "rate", 1e6), r"makes \|rate \* expiry\| exceed"),
    "rate NaN": (lambda pf, mk: object.__setattr__(mk, "rate", float("nan")), "rate must be finite"),
    "vol negative": (lambda pf, mk: object.__setattr__(mk, "vol", _read_only([-0.5, 0.8, 0.0])),
                     r"vol\[0\] = -0.5: must be finite and > 0 for an option"),
    "strike zero": (lambda pf, mk: object.__setattr__(mk, "strike", _read_only([100.0, 0.0, 0.0])),
                    r"strike\[1\] = 0.0: must be finite and > 0 for an option"),
    "forward negative": (lambda pf, mk: object.__setattr__(mk, "forward", _read_only([100.0, 101.0, -100.0])),
                         r"forward\[2\] = -100.0: must be finite and > 0"),
    "expiry negative": (lambda pf, mk: object.__setattr__(mk, "expiry", _read_only([-0.1, 0.02, 0.5])),
                        r"expiry\[0\] = -0.1: must be finite and >= 0"),
    "size NaN": (lambda pf, mk: object.__setattr__(pf, "size", _read_only([-1.0, np.nan, -3.0])),
                 r"size\[1\] = nan: must be finite"),
    "size infinite": (lambda pf, mk: object.__setattr__(pf, "size", _read_only([-1.0, 2.0, -np.inf])),
                      r"size\[2\] = -inf: must be finite"),
}


@pytest.mark.parametrize("what", sorted(BOOK_CHANGES))
def test_book_values_swapped_after_their_checks_are_refused_by_name(backends, what):
    """Session 5 made the kernels' arrays read-only copies and re-checked their layout on every
    call, but not their values: a book whose array was swapped for another read-only one, or whose
    index or rate was set (object.__setattr__), was margined silently: a negative index or forward, a negative vol or expiry, a string index parsed
    as a number, a NaN size dropped by standard margin. Now refused with the constructor's
    ValueError, on every backend, by standard margin and by the software-only path."""
    change, message = BOOK_CHANGES[what]
    for b in backends:
        for api in (accel.portfolio_margin, accel.standard_margin):
            pf, mk = _book()
            change(pf, mk)
            with pytest.raises(ValueError, match=message):
                api(pf, mk, backend=b)
    pf, mk = _book()
    change(pf, mk)
    with pytest.raises(ValueError, match=message):
        risk_numpy.portfolio_margin(pf, mk, checked=False)


def test_unpickled_books_are_checked_like_built_ones(backends):
    """Held before (unpickled arrays are writeable, so the book is checked in full): a pickled book
    margins as the original; one whose state was edited after loading is refused."""
    pf, mk = _book()
    want = accel.portfolio_margin(pf, mk, backend="cpu")
    pf2, mk2 = pickle.loads(pickle.dumps((pf, mk)))
    for b in backends:
        assert all(np.array_equal(g, w) for g, w in zip(accel.portfolio_margin(pf2, mk2, backend=b), want)), b.name
    mk2.__dict__["vol"] = _read_only([0.5, -0.8, 0.0])
    with pytest.raises(ValueError, match=r"vol\[1\] = -0.8"):
        accel.portfolio_margin(pf2, mk2, backend="cpu")


# ---------------------------------------------------------------- messages whose len() is not their size

class _LyingBytes(bytes):
    """bytes whose len() is set by hand (a subclass may say anything)."""
    def __len__(self):
        return self.claimed


def _lying(data: bytes, claimed: int) -> _LyingBytes:
    out = _LyingBytes(data)
    out.claimed = claimed
    return out


def test_message_lengths_come_from_the_bytes_not_from_len(backends):
    """pack_messages took each message's length from len() and only checked their sum against the
    joined bytes: a bytes subclass claiming 1 byte for b"abc" beside one claiming 5 for b"def" (sum
    6, as joined) split the batch at the wrong places: SHA-256 of b"a" and b"bcdef", with no error.
    The same with a (6, 0) and a (2, 4) uint8 array (len 6 and 2, 0 and 8 bytes). bytes now count
    their own length; other buffers whose len() is not their size are a TypeError naming the item
    (and since review s18 every array: only bytes, bytearrays and 1-D byte memoryviews are items)."""
    msgs = [_lying(b"abc", 1), _lying(b"def", 5)]
    want = [hashlib.sha256(b"abc").digest(), hashlib.sha256(b"def").digest()]
    for b in backends:
        assert accel.sha256_many(msgs, backend=b) == want, b.name
        assert accel.merkle_root(msgs, backend=b) == merkle.hashlib_root([b"abc", b"def"]), b.name
    shaped = [np.zeros((6, 0), np.uint8), np.arange(8, dtype=np.uint8).reshape(2, 4)]
    with pytest.raises(TypeError, match="message 0 is ndarray, expected bytes"):
        accel.sha256_many(shaped, backend="cpu")
    with pytest.raises(TypeError, match="leaf 0 is ndarray, expected bytes"):
        accel.merkle_root(shaped, backend="cpu")
    views = [memoryview(np.zeros((6, 0), np.uint8)), memoryview(np.zeros((2, 4), np.uint8))]
    with pytest.raises(TypeError, match="message 0 is a 2-D memoryview"):
        accel.sha256_many(views, backend="cpu")


def test_signatures_are_checked_on_the_messages_they_sign(backends):
    """The Ed25519 side of the same defect: two signed messages passed as bytes subclasses whose
    len() values are wrong but add up got both signatures refused (each checked against a piece
    of the other message); with the sizes the bytes have they are both valid, on every backend,
    batched, all-or-nothing and one by one."""
    nacl = pytest.importorskip("nacl.signing")
    keys = [nacl.SigningKey(bytes([7 + i]) * 32) for i in range(2)]
    raw = [b"pay 10 to alice", b"pay 20 to bob!"]
    sigs = [k.sign(m).signature for k, m in zip(keys, raw)]
    pks = [bytes(k.verify_key) for k in keys]
    msgs = [_lying(raw[0], 3), _lying(raw[1], len(raw[0]) + len(raw[1]) - 3)]
    for b in backends:
        assert accel.ed25519_verify_batch(pks, msgs, sigs, backend=b).tolist() == [True, True], b.name
        assert accel.ed25519_verify_all(pks, msgs, sigs, backend=b), b.name
        assert all(accel.ed25519_verify(p, m, s, backend=b) for p, m, s in zip(pks, msgs, sigs)), b.name


@pytest.mark.parametrize("name", ["vol_up", "tick", "initial_multiplier", "extended_weight"])
@pytest.mark.parametrize("value", [True, False])
def test_margin_params_refuse_bools_like_the_moves_do(name, value):
    """moves and every risk input refuse bools (session 5), but a scalar parameter took True as
    1 and False as 0 (a JSON true in a parameter file became a shock of 100%)."""
    with pytest.raises(ValueError, match=f"MarginParams.{name} must be finite numbers"):
        MarginParams(**{name: value})
    p = MarginParams()
    object.__setattr__(p, name, value)
    pf, mk = _book()
    with pytest.raises(ValueError, match=f"MarginParams.{name} must be finite numbers"):
        accel.portfolio_margin(pf, mk, p, backend="cpu")


# ---------------------------------------------------------------- fork while another thread counts a fallback

_FORK_WITH_LOCK_HELD = """
import os, signal, sys
from accel import dispatch
dispatch._fallbacks_lock.acquire()  # as another thread counting a GPU fallback at the fork
pid = os.fork()
if pid == 0:
    signal.alarm(10)  # a child stuck on the lock dies here instead of hanging the test
    print("child", dispatch.fallbacks(), flush=True)
    os._exit(0)
dispatch._fallbacks_lock.release()
_, status = os.waitpid(pid, 0)
print("status", status, flush=True)
sys.exit(0 if status == 0 else 1)
"""


def test_a_child_forked_while_a_fallback_was_counted_does_not_hang():
    """dispatch's fallback counter lock was not renewed in a forked child: forked while another
    thread held it (counting a fallback), the child's next fallback (in a forked child every GPU
    call falls back) or metrics read waited forever."""
    done = subprocess.run([sys.executable, "-c", _FORK_WITH_LOCK_HELD], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, (done.stdout, done.stderr[-2000:])
    assert "child {}" in done.stdout


# ---------------------------------------------------------------- the OpenCL contraction check

class _FakeProgram:
    """What check_no_contraction reads of a built program: its binaries."""
    def __init__(self, *binaries):
        self.binaries = binaries

    def get_info(self, _what):
        return list(self.binaries)


_PTX_HEAD = b"//\n.version 8.0\n.target sm_90\n.address_size 64\n"


@pytest.mark.parametrize("fused", [b"fma.rn.ftz.f32 %f3, %f1, %f2, %f0;", b"mad.rn.f64 %fd3, %fd1, %fd2, %fd0;",
                                   b"mad.f64 %fd3, %fd1, %fd2, %fd0;", b"fma.rz.f64 %fd3, %fd1, %fd2, %fd0;"])
def test_every_ptx_spelling_of_a_fused_multiply_add_is_refused(fused):
    """The PTX check looked for "fma.rn.f64" and "fma.rn.f32" only: a driver's fused multiply-add
    written fma.rn.ftz.f32, mad.rn.f64 (fused on sm_20 and later) or with another rounding mode
    passed, and the device would have been used with results that differ from the other backends."""
    pytest.importorskip("pyopencl")
    from accel.backends.base import KernelError
    from accel.backends.opencl import check_no_contraction
    with pytest.raises(KernelError, match="contracted multiply-adds"):
        check_no_contraction(_FakeProgram(_PTX_HEAD + fused), "a PTX test binary")


def test_ptx_without_floating_fma_and_bitcode_with_llvm_fma_are_told_apart():
    pytest.importorskip("pyopencl")
    from accel.backends.base import KernelError
    from accel.backends.opencl import check_no_contraction
    clean = _PTX_HEAD + b"mad.wide.s32 %rd1, %r1, %r2, %rd0;\nmad.lo.s32 %r3, %r1, %r2, %r0;\n" \
        b"mul.rn.f64 %fd3, %fd1, %fd2;\nadd.rn.f64 %fd4, %fd3, %fd0;\n"
    assert check_no_contraction(_FakeProgram(clean), "integer mad and separate mul/add") is True
    with pytest.raises(KernelError, match="contracted multiply-adds"):
        check_no_contraction(_FakeProgram(b"BC\xc0\xde....call double @llvm.fma.f64(...)"), "bitcode with llvm.fma")
    assert check_no_contraction(_FakeProgram(b"\x7fELF unknown"), "unknown format") is False


# ---------------------------------------------------------------- a forked worker of a configured GPU backend

_FORKED_WORKER = """
import logging, os, sys
import numpy as np
import accel
from accel import dispatch
from accel.backends import BackendUnavailable
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="LOG %(message)s")
leaves = [bytes([i]) * 32 for i in range(100)]
root = accel.merkle_root(leaves)  # the configured backend (OpenCL) starts in the parent
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    import signal
    signal.alarm(60)
    out = []
    try:
        out.append(accel.merkle_root(leaves) == root)
        out.append(accel.merkle_root(leaves) == root)
        out.append(accel.sha256_many([b"abc"]) == [__import__("hashlib").sha256(b"abc").digest()])
        out.append(accel.ed25519_verify_batch([bytes(32)], [b""], [bytes(64)]).tolist() == [True])
        out.append(dispatch.fallbacks().get(("opencl", "merkle")) == 2)
        try:
            accel.merkle_root(leaves, backend="opencl")
            out.append("named: ran")
        except BackendUnavailable as exc:
            out.append("named: " + str(exc)[:22])
        with dispatch.no_fallback():
            try:
                accel.merkle_root(leaves)
                out.append("strict: ran")
            except BackendUnavailable:
                out.append("strict: raised")
    except Exception as exc:
        out.append(f"{type(exc).__name__}: {exc}")
    os.write(w, repr(out).encode())
    os._exit(0)
os.close(w)
os.waitpid(pid, 0)
print("CHILD", os.read(r, 10000).decode())
"""


def test_a_forked_worker_of_the_configured_gpu_backend_falls_back_to_the_c_fallback(backends):
    """backend = "opencl" configured, the parent started it, a worker forked: every call of the
    worker raised BackendUnavailable (even one of a single signature), where a GPU that cannot
    run is redone on the C fallback (base.py says a forked child's GPU work is). Now the configured
    backend's work is redone there, with the same results, counted in fallbacks() and logged once
    per kernel; a backend named by the caller, and no_fallback(), still raise."""
    if not any(b.name == "opencl" for b in backends):
        pytest.skip("no OpenCL backend here")
    env = {**__import__("os").environ, "ACCEL_BACKEND": "opencl", "ACCEL_GPU_FALLBACK": "true"}
    done = subprocess.run([sys.executable, "-c", _FORKED_WORKER], capture_output=True, text=True, timeout=180,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    child = [line for line in done.stdout.splitlines() if line.startswith("CHILD")]
    assert child == ["CHILD [True, True, True, True, True, 'named: the opencl backend was', 'strict: raised']"], \
        done.stdout
    logged = [line for line in done.stdout.splitlines() if line.startswith("LOG opencl backend failed on merkle")]
    assert len(logged) == 1, done.stdout


def test_an_empty_batch_of_greeks_takes_empty_lists_for_the_flags_too(backends):
    """Every float input took [] for an empty batch, but is_call = [] (float64 to NumPy) was
    refused as not bool: an empty batch built from lists failed on one argument."""
    for b in backends:
        g = accel.greeks([], [], [], 0.0, [], [], inverse=[], backend=b)
        assert all(a.shape == (0,) for a in g), b.name
    assert risk_numpy.greeks_price([], [], [], 0.0, [], []).shape == (0,)
    with pytest.raises(ValueError, match="is_call must be bool or 0/1 integers, not float64"):
        accel.greeks([1.0], [1.0], [1.0], 0.0, [1.0], [1.0])
