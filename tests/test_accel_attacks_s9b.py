"""Second-round attacks on the first round's fixes to the accel kernel boundary (session 9,
helper r1; tests/test_accel_attacks_s9.py is the first round). Each regression test failed before
its fix; a few guards (harmless subclasses, a subclass read once, counts at the kernels' bounds,
-0.0 kept) check that valid input gives the same bits through the new paths and passed before too.

- NumPy array subclasses whose shape, len() or dtype lie: pack_messages took a Packed's data
  length from len(data) and a 2-D array's row count and width from .shape, both overridable by a
  subclass, so offsets ran past the real data (SHA-256 of a 10-byte array read a terabyte: a
  segfault); pack_fixed's width check read the subclass's shape too.
- Subclasses of Portfolio, Marks and MarginParams: portfolio_margin kept the caller's subclass
  through its checks (dataclasses.replace builds obj.__class__ and so runs the subclass's
  __post_init__; params._array is the subclass's method), so a subclass that skips __post_init__
  or returns its own parameter array reached the kernels unchecked (offsets past the positions,
  a million moves: segfaults). The checks now always run on the exact classes.
- MarginParams' cached layout was reused while every field was the same object, but a field set
  to a list (object.__setattr__) is the same object after it is changed in place: later calls
  used the stale layout, other margins than a fresh process computes for the same parameters.
  Scalars were kept as given: a float subclass whose __float__ changes answer passed the checks
  with one value and reached the kernel with another. Every field is now an exact float (or a
  tuple of them) and only such fields are cached.
- greeks took the batch length from np.shape of its inputs, which reads an ndarray subclass's (or
  any object's) .shape: 3 forwards claiming 2**26 sent the kernels 2**26 options (a segfault).
- verify_merkle_proof compared and measured the proof's hashes as the objects given: a bytes
  subclass as leaf_hash whose != always says False made a true proof of one leaf prove any leaf,
  and an aunt was measured by one bytes(a) and hashed from another (__bytes__ may differ).
- Defence in depth: the kernels (kernels/margin.h portfolio_margin_item, native/risk.c
  av_portfolio_margin) took the move counts of any parameter array as given: no moves divided by
  zero, more than 16 wrote past the per-account scenario array. They now give every account
  RK_NOT_FINITE (-2) for counts outside [1, 16] / [0, 16], as risk_numpy does.
- backends.reset() forgot the after-fork markers: a forked child that called it started the
  parent's OpenCL driver afresh and hung in its first kernel; a parent that called reset() after
  starting it forked children with no marker at all. (A CUDA probe that found no driver is not a
  start: the child still says why CUDA is unavailable, as its parent does.)
- A forked child dropped the parent's GPU backend object (the registry held its last reference),
  so its context, queue, programs and buffers were released through the driver by the child.
- A forked child of a GPU-configured process counted every call as a GPU fallback, also batches
  the parent keeps on the C fallback (below gpu_min_batch: every margin call), and refused them
  under no_fallback(); they now run on the C fallback as in the parent, uncounted.
- dispatch's once-per-kernel log of a forked worker's fallback remembered what the parent had
  logged: a worker whose parent had logged a GPU failure of that kernel never said why it falls
  back."""
from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import accel
from accel import merkle, risk_numpy
from accel.packing import Packed, pack_fixed, pack_messages
from accel.risk import CALL, FUTURE, PUT, MarginParams, Marks, Portfolio


def _book():
    mk = Marks(index=100.0, rate=0.01, forward=np.array([100.0, 101.0, 100.0]), strike=np.array([100.0, 90.0, 0.0]),
               expiry=np.array([0.1, 0.02, 0.5]), vol=np.array([0.5, 0.8, 0.0]),
               kind=np.array([CALL, PUT, FUTURE], np.uint8))
    pf = Portfolio(offsets=np.array([0, 2, 3]), instrument=np.array([0, 1, 2]), size=np.array([-1.0, 2.0, -3.0]))
    return pf, mk


def _same(a, b) -> bool:
    return all(x.tobytes() == y.tobytes() for x, y in zip(a, b))


def _in_child(code: str) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter: a defect here was a segfault, which must not end pytest."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------- array subclasses that lie

class _LongArray(np.ndarray):
    def __len__(self):
        return 1 << 40


class _WideArray(np.ndarray):
    @property
    def shape(self):
        real = np.ndarray.view(self, np.ndarray).shape
        return (real[0], 1000) if len(real) == 2 else real


class _ByteArray(np.ndarray):
    @property
    def dtype(self):
        return np.dtype(np.uint8)


def test_a_packed_batch_whose_data_lies_about_its_length_is_refused():
    """len(data) of a Packed was the data's own __len__: a subclass claiming 2**40 bytes of a
    10-byte array let offsets up to 2**40 through, and the C fallback hashed past the array."""
    data = np.zeros(10, np.uint8).view(_LongArray)
    with pytest.raises(ValueError, match="offsets must run from 0 to the data's 10 bytes"):
        pack_messages(Packed(data, np.array([0, 1 << 40], np.uint64)))
    done = _in_child("""
        import numpy as np
        from accel import merkle
        from accel.packing import Packed
        class Long(np.ndarray):
            def __len__(self): return 1 << 40
        try:
            merkle.sha256_many(Packed(np.zeros(10, np.uint8).view(Long), np.array([0, 1 << 40], np.uint64)), backend="cpu")
            print("ran")
        except ValueError as exc:
            print("refused", exc)
    """)
    assert done.returncode == 0 and done.stdout.startswith("refused"), (done.returncode, done.stdout, done.stderr[-500:])


def test_a_packed_batch_of_real_bytes_in_a_subclass_gives_the_plain_digests(backends):
    data = np.frombuffer(b"abcdef", np.uint8).view(_LongArray)
    offsets = np.array([0, 3, 6], np.uint64)
    want = merkle.sha256_many([b"abc", b"def"])
    for b in backends:
        assert merkle.sha256_many(Packed(data, offsets), backend=b) == want


def test_a_packed_batch_whose_data_lies_about_its_dtype_is_refused():
    data = np.zeros(10, np.float64).view(_ByteArray)
    with pytest.raises(ValueError, match="data must be a 1-D uint8 array"):
        pack_messages(Packed(data, np.array([0, 10], np.uint64)))


@pytest.mark.parametrize("packer", ["messages", "fixed"])
def test_a_2d_array_whose_shape_lies_is_packed_by_its_real_shape(packer):
    """A 2-D uint8 array's rows and width came from .shape, which a subclass may override: rows of
    2 bytes claimed as 1000 gave offsets past the data (messages) or passed as 32-byte keys."""
    rows = np.arange(8, dtype=np.uint8).reshape(4, 2).view(_WideArray)
    assert rows.shape == (4, 1000)
    if packer == "messages":
        data, offsets = pack_messages(rows)
        assert offsets.tolist() == [0, 2, 4, 6, 8] and data.tobytes() == bytes(range(8))
    else:
        with pytest.raises(ValueError, match=r"shape \(n, 1000\), got uint8 \(4, 2\)"):
            pack_fixed(rows, 1000, "record")


def test_a_2d_array_whose_shape_lies_hashes_as_its_real_rows(backends):
    rows = np.arange(8, dtype=np.uint8).reshape(4, 2)
    want = merkle.sha256_many(rows)
    for b in backends:
        assert merkle.sha256_many(rows.view(_WideArray), backend=b) == want
        assert merkle.merkle_root(rows.view(_WideArray), backend=b) == merkle.merkle_root(rows)


def test_keys_whose_shape_lies_are_refused_before_the_kernels():
    """An (n, 16) array claiming (n, 32) passed pack_fixed's width check: the kernels read 32
    bytes a key, past the array."""
    keys = np.zeros((2, 16), np.uint8).view(_WideArray)
    sigs = np.zeros((2, 64), np.uint8)
    with pytest.raises(ValueError, match=r"shape \(n, 32\), got uint8 \(2, 16\)"):
        accel.ed25519_verify_batch(keys, [b"", b""], sigs, backend="cpu")
    with pytest.raises(ValueError, match=r"shape \(n, 32\)"):
        accel.ed25519_keys_are_safe(keys, backend="cpu")


# ---------------------------------------------------------------- subclasses of the risk inputs

_SKIPPING_SUBCLASSES = {
    "portfolio skips its checks": """
        class P(risk.Portfolio):
            def __post_init__(self): pass
        pf = P(offsets=np.array([0, 1 << 30], np.int64), instrument=np.zeros(1, np.int32), size=np.ones(1))
        call = lambda: risk.portfolio_margin(pf, mk, backend="cpu")
    """,
    "marks skip their checks (one forward for two kinds)": """
        class M(risk.Marks):
            def __post_init__(self): pass
        bad = M(index=100.0, rate=0.0, forward=np.array([100.0]), strike=np.array([100.0]), expiry=np.array([0.1]),
                vol=np.array([0.5]), kind=np.array([1, 1], np.uint8))
        call = lambda: risk.portfolio_margin(risk.Portfolio(offsets=[0, 1], instrument=[1], size=[1.0]), bad, backend="cpu")
    """,
    "marks skip their checks (a negative vol)": """
        class M(risk.Marks):
            def __post_init__(self): pass
        bad = M(index=100.0, rate=0.0, forward=np.array([100.0]), strike=np.array([100.0]), expiry=np.array([0.1]),
                vol=np.array([-0.5]), kind=np.array([1], np.uint8))
        call = lambda: risk.portfolio_margin(risk.Portfolio(offsets=[0, 1], instrument=[0], size=[-1.0]), bad,
                                             backend="cpu")
    """,
    "params bring their own array": """
        class MP(risk.MarginParams):
            def _array(self, index, rate):
                a = risk.MarginParams()._array(index, rate)
                a[0] = 1e6
                return a
        book = risk.Portfolio(offsets=[0, 1], instrument=[0], size=[1.0])
        want = risk.portfolio_margin(book, mk, risk.MarginParams(), backend="cpu")
        call = lambda: "same" if all(a.tobytes() == b.tobytes() for a, b in
                                     zip(risk.portfolio_margin(book, mk, MP(), backend="cpu"), want)) else "other"
    """,
}


@pytest.mark.parametrize("what", sorted(_SKIPPING_SUBCLASSES))
def test_subclasses_of_the_risk_inputs_are_checked_as_the_classes_themselves(what):
    """portfolio_margin checked the caller's own subclass: replace() reran the subclass's
    __post_init__ and params._array was the subclass's method, so a subclass that skips the
    checks or returns its own parameter array sent the kernels past their arrays (a segfault)."""
    done = _in_child(textwrap.dedent("""
        import numpy as np
        from accel import risk
        mk = risk.Marks(index=100.0, rate=0.0, forward=[100.0], strike=[100.0], expiry=[0.1], vol=[0.5], kind=[risk.CALL])
    """) + textwrap.dedent(_SKIPPING_SUBCLASSES[what]) + textwrap.dedent("""
        try:
            print("ran", call())
        except ValueError as exc:
            print("refused", exc)
    """))
    expected = "ran same" if what.startswith("params") else "refused"  # its fields are the defaults
    assert done.returncode == 0 and done.stdout.startswith(expected), (done.returncode, done.stdout, done.stderr[-800:])


class _Book(Portfolio):
    """A harmless subclass: the same numbers as the class itself."""


class _Prices(Marks):
    pass


class _Params(MarginParams):
    pass


def test_harmless_subclasses_give_the_same_bits(backends):
    pf, mk = _book()
    sub_pf = _Book(offsets=pf.offsets, instrument=pf.instrument, size=pf.size)
    sub_mk = _Prices(**{name: getattr(mk, name) for name in ("index", "rate", "forward", "strike", "expiry", "vol",
                                                             "kind")})
    p = MarginParams(moves=(-0.1, 0.0, 0.1))
    sub_p = _Params(moves=(-0.1, 0.0, 0.1))
    want = accel.portfolio_margin(pf, mk, p, backend="cpu")
    for b in backends:
        assert _same(accel.portfolio_margin(sub_pf, sub_mk, sub_p, backend=b), want)
        assert _same(accel.standard_margin(sub_pf, sub_mk, sub_p, backend=b),
                     accel.standard_margin(pf, mk, p, backend="cpu"))
    assert _same(risk_numpy.portfolio_margin(sub_pf, sub_mk, sub_p), want)


def test_a_subclass_whose_attributes_change_between_reads_is_read_once():
    """Each attribute of a subclass is read once, checked and used: one whose offsets are good at
    the check and huge at the launch cannot send the kernel past the positions."""
    done = _in_child("""
        import numpy as np
        from accel import risk
        mk = risk.Marks(index=100.0, rate=0.0, forward=[100.0], strike=[100.0], expiry=[0.1], vol=[0.5], kind=[risk.CALL])
        class G(risk.Portfolio):
            reads = None
            def __getattribute__(self, name):
                if name == "offsets" and type(self).reads is not None:
                    type(self).reads += 1
                    if type(self).reads > 1:
                        a = np.array([0, 1 << 30], np.int64); a.flags.writeable = False; return a
                return object.__getattribute__(self, name)
        g = G(offsets=[0, 1], instrument=[0], size=[-1.0])
        G.reads = 0
        try:
            got = risk.portfolio_margin(g, mk, backend="cpu")
            want = risk.portfolio_margin(risk.Portfolio(offsets=[0, 1], instrument=[0], size=[-1.0]), mk, backend="cpu")
            print("same" if all(a.tobytes() == b.tobytes() for a, b in zip(got, want)) else "other", G.reads)
        except ValueError as exc:
            print("refused", exc)
    """)
    assert done.returncode == 0 and done.stdout.split()[0] in ("same", "refused"), \
        (done.returncode, done.stdout, done.stderr[-800:])


# ---------------------------------------------------------------- MarginParams: mutable and lying fields

def test_moves_set_to_a_list_and_changed_in_place_are_not_served_from_the_cache(backends):
    """The cached layout was reused while each field was the same object: a list put in moves
    (object.__setattr__) and then changed in place is the same object, so later calls margined
    with the old moves, not what a fresh process (or MarginParams(moves=...)) computes."""
    pf, mk = _book()
    p = MarginParams()
    moves = list(p.moves)
    object.__setattr__(p, "moves", moves)
    for b in backends:
        accel.portfolio_margin(pf, mk, p, backend=b)
    moves[:] = [0.9]
    want = accel.portfolio_margin(pf, mk, MarginParams(moves=(0.9,)), backend="cpu")
    assert not _same(want, accel.portfolio_margin(pf, mk, MarginParams(), backend="cpu"))
    for b in backends:
        assert _same(accel.portfolio_margin(pf, mk, p, backend=b), want)
    assert _same(risk_numpy.portfolio_margin(pf, mk, p), want)
    moves.append("x")
    with pytest.raises(ValueError, match="MarginParams.moves must be finite numbers"):
        accel.portfolio_margin(pf, mk, p, backend="cpu")


class _Shifty(float):
    """A float whose __float__ answers well at first and NaN afterwards."""
    calls = 0

    def __float__(self):
        type(self).calls += 1
        return 1e-8 if type(self).calls <= 1 else float("nan")


def test_a_float_subclass_is_read_once_and_kept_as_a_plain_float():
    """MarginParams kept scalar fields as given: a float subclass whose __float__ changed answer
    was checked as one number and laid out for the kernels as another (a NaN tick margined)."""
    _Shifty.calls = 0
    p = MarginParams(tick=_Shifty(1e-8))
    assert type(p.tick) is float and p.tick == 1e-8
    pf, mk = _book()
    want = accel.portfolio_margin(pf, mk, MarginParams(), backend="cpu")
    assert _same(accel.portfolio_margin(pf, mk, p, backend="cpu"), want)
    assert _same(accel.portfolio_margin(pf, mk, p, backend="cpu"), want)


def test_a_float_subclass_set_after_construction_is_checked_as_the_kernels_see_it():
    p = MarginParams()
    _Shifty.calls = 0
    object.__setattr__(p, "tick", _Shifty(1e-8))
    pf, mk = _book()
    want = accel.portfolio_margin(pf, mk, MarginParams(), backend="cpu")
    assert _same(accel.portfolio_margin(pf, mk, p, backend="cpu"), want)  # 1e-8 read once, checked, used
    with pytest.raises(ValueError, match="MarginParams.tick must be finite numbers"):
        accel.portfolio_margin(pf, mk, p, backend="cpu")  # NaN now: refused, not margined


@pytest.mark.parametrize("name,value", [("vol_ref_days", 30), ("tick", np.float64(1e-8)), ("vol_up", 1),
                                        ("vol_down", -0.0)])
def test_scalars_become_plain_floats_with_the_same_bits(name, value):
    p = MarginParams(**{name: value})
    assert type(getattr(p, name)) is float and getattr(p, name) == value
    assert np.signbit(getattr(p, name)) == np.signbit(value)
    layout = p._array(100.0, 0.0)
    pf, mk = _book()
    assert _same(accel.portfolio_margin(pf, mk, p, backend="cpu"),
                 accel.portfolio_margin(pf, mk, pickle.loads(pickle.dumps(p)), backend="cpu"))
    assert layout.tobytes() == MarginParams(**{name: float(value)})._array(100.0, 0.0).tobytes()


# ---------------------------------------------------------------- a forked worker's fallback is logged

_FORK_AFTER_PARENT_LOGGED = """
import logging, os, sys
from accel import dispatch
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="LOG %(process)d %(message)s")
dispatch._count("opencl", "merkle", "KernelError: the parent's GPU failed once")  # logged in the parent
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    dispatch._count("opencl", "merkle", "ForkedAway: forked", once=True)
    dispatch._count("opencl", "merkle", "ForkedAway: forked", once=True)
    os._exit(0)
os.waitpid(pid, 0)
print("CHILD", pid)
"""


def test_a_forked_worker_says_once_why_it_falls_back_even_if_its_parent_logged_that_kernel():
    """_told (the (backend, kernel) pairs logged) was copied into a forked child: a parent that
    had logged one GPU failure of a kernel left its workers silent about why every call of theirs
    now runs on the C fallback."""
    done = subprocess.run([sys.executable, "-c", _FORK_AFTER_PARENT_LOGGED], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    child = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("CHILD")]
    assert len(child) == 1
    forked = [line for line in done.stdout.splitlines() if line.startswith(f"LOG {child[0]} ") and "ForkedAway" in line]
    assert len(forked) == 1, done.stdout


# ---------------------------------------------------------------- greeks: inputs whose shape lies

class _LongRows(np.ndarray):
    @property
    def shape(self):
        return (1 << 26,)


class _ClaimsMany:
    """An array-like whose .shape (read by np.shape) is not what np.asarray gives."""
    shape = (1 << 26,)

    def __array__(self, dtype=None, copy=None):
        return np.full(3, 100.0)


def test_greeks_of_an_array_whose_shape_lies_use_its_real_length(backends):
    """The batch length came from np.shape, which reads a subclass's (or any object's) .shape: 3
    forwards claiming 2**26 sent the kernels 2**26 options past the array (a segfault)."""
    done = _in_child("""
        import numpy as np
        from accel import risk
        class S(np.ndarray):
            @property
            def shape(self): return (1 << 26,)
        try:
            print("ran", len(risk.greeks(np.full(3, 100.0).view(S), 100.0, 0.1, 0.0, 0.5, True, backend="cpu").price))
        except ValueError as exc:
            print("refused", exc)
    """)
    assert done.returncode == 0 and done.stdout.split()[:2] == ["ran", "3"], \
        (done.returncode, done.stdout, done.stderr[-500:])
    want = accel.greeks(np.full(3, 100.0), 100.0, 0.1, 0.0, 0.5, True, backend="cpu")
    for b in backends:
        got = accel.greeks(np.full(3, 100.0).view(_LongRows), 100.0, 0.1, 0.0, 0.5, True, backend=b)
        assert _same(got, want)
    assert risk_numpy.greeks_price(np.full(3, 100.0).view(_LongRows), 100.0, 0.1, 0.0, 0.5, True).tobytes() \
        == want.price.tobytes()


def test_greeks_of_an_array_like_whose_shape_lies_are_refused():
    """An object whose .shape is not its array's (np.shape reads .shape): refused by name, where
    the kernels were sent 2**26 options of a 3-entry array (a segfault, hence the child)."""
    done = _in_child("""
        import numpy as np
        from accel import risk
        class ClaimsMany:
            shape = (1 << 26,)
            def __array__(self, dtype=None, copy=None): return np.full(3, 100.0)
        try:
            print("ran", len(risk.greeks(ClaimsMany(), 100.0, 0.1, 0.0, 0.5, True, backend="cpu").price))
        except ValueError as exc:
            print("refused", exc)
    """)
    assert done.returncode == 0 and done.stdout.strip() == \
        "refused forward_or_spot has 3 entries, expected 67108864 (or one for all)", \
        (done.returncode, done.stdout, done.stderr[-500:])
    with pytest.raises(ValueError, match=r"^forward_or_spot has 3 entries, expected 67108864 \(or one for all\)$"):
        risk_numpy.greeks_price(_ClaimsMany(), 100.0, 0.1, 0.0, 0.5, True)


# ---------------------------------------------------------------- Merkle proofs: hashes whose comparisons lie

class _EqualToAll(bytes):
    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = bytes.__hash__


class _Shapeshifter(bytes):
    """32 bytes when measured through __bytes__ at first, 64 afterwards."""
    calls = 0

    def __bytes__(self):
        type(self).calls += 1
        return bytes(32) if type(self).calls == 1 else bytes(64)


def test_a_leaf_hash_that_equals_everything_proves_nothing():
    """verify_merkle_proof compared leaf_hash(leaf) != proof.leaf_hash, and Python asks a bytes
    subclass on the right first: a leaf_hash whose != always says False, holding the true hash of
    leaf 0, made a true proof of leaf 0 prove any leaf at all."""
    leaves = [b"a", b"b", b"c"]
    root = merkle.merkle_root(leaves)
    true = accel.merkle_proof(leaves, 0)
    assert accel.verify_merkle_proof(root, b"a", true)
    forged = accel.MerkleProof(true.total, true.index, _EqualToAll(true.leaf_hash), true.aunts)
    assert not accel.verify_merkle_proof(root, b"never in the tree", forged)
    assert accel.verify_merkle_proof(root, b"a", forged)  # its bytes are the true hash of leaf 0
    assert not accel.verify_merkle_proof(_EqualToAll(bytes(32)), b"a", true)


def test_an_aunt_is_measured_as_it_is_hashed():
    """Aunts were measured with len(bytes(a)) and hashed from a second bytes(a): a 64-byte aunt
    whose __bytes__ said 32 bytes at the check passed it, and a root over a 64-byte sibling
    verified (a hash that is not 32 bytes is not a proof, as CometBFT's rule has it)."""
    true = accel.merkle_proof([b"a", b"b"], 0)
    _Shapeshifter.calls = 0
    odd = accel.MerkleProof(2, 0, true.leaf_hash, (_Shapeshifter(bytes(64)),))
    assert not accel.verify_merkle_proof(merkle.inner_hash(true.leaf_hash, bytes(64)), b"a", odd)
    assert not accel.verify_merkle_proof(merkle.inner_hash(true.leaf_hash, bytes(32)), b"a", odd)


# ---------------------------------------------------------------- the kernels' own guard on the move counts

_BAD_COUNTS = {"17 moves": (17.0, 8.0), "no moves": (0.0, 8.0), "17 extended": (9.0, 17.0),
               "a million moves": (1e6, 8.0), "NaN moves": (float("nan"), 8.0), "-1 extended": (9.0, -1.0),
               "2**40 extended": (9.0, 2.0 ** 40)}


def test_the_c_fallback_refuses_move_counts_past_its_scenario_array():
    """Defence in depth: accel/risk.py checks MarginParams before every call, but the kernels took
    the move counts of any parameter array as given (a million moves wrote past the 64-entry
    per-account scenario array: a segfault). They now give every account RK_NOT_FINITE (-2)."""
    done = _in_child("""
        import numpy as np
        from accel import risk
        from accel.backends import get_backend
        pf = risk.Portfolio(offsets=[0, 1, 2], instrument=[0, 0], size=[-1.0, 1.0])
        mk = risk.Marks(index=100.0, rate=0.0, forward=[100.0], strike=[100.0], expiry=[0.1], vol=[0.5], kind=[risk.CALL])
        pp = risk.MarginParams()._array(100.0, 0.0)
        pp[0] = 1e6
        im, mm, worst = np.empty(2, np.int64), np.empty(2, np.int64), np.empty(2, np.int32)
        args = [pf.offsets, pf.instrument, pf.size, mk.forward, mk.strike, mk.expiry, mk.vol, mk.kind, pp, im, mm, worst]
        get_backend("cpu").launch("portfolio_margin", 2, *args)
        print("ran", im.tolist(), mm.tolist(), worst.tolist())
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ran [-2, -2] [-2, -2] [0, 0]", \
        (done.returncode, done.stdout, done.stderr[-500:])


def test_every_backend_gives_not_finite_for_move_counts_outside_the_kernels_bounds(backends):
    """Each backend that runs here, and risk_numpy, on parameter arrays whose counts are outside
    the kernels' bounds (no moves divided by zero, more wrote past the scenario array): -2 for
    every account, or the ValueError naming account 0 when checked. In a child process, as a
    regression would be a crash."""
    names = [b.name for b in backends]
    done = _in_child(f"""
        import numpy as np
        import accel
        from accel import risk, risk_numpy
        from accel.risk import MarginParams
        nan = float("nan")
        bad_counts = {_BAD_COUNTS!r}
        real = MarginParams._array
        mk = risk.Marks(index=100.0, rate=0.01, forward=[100.0, 101.0, 100.0], strike=[100.0, 90.0, 0.0],
                        expiry=[0.1, 0.02, 0.5], vol=[0.5, 0.8, 0.0], kind=[risk.CALL, risk.PUT, risk.FUTURE])
        pf = risk.Portfolio(offsets=[0, 2, 3], instrument=[0, 1, 2], size=[-1.0, 2.0, -3.0])
        for what, (nm, ne) in sorted(bad_counts.items()):
            def bad(self, index, rate, nm=nm, ne=ne):
                arr = real(self, index, rate)
                arr[0], arr[1] = nm, ne
                return arr
            MarginParams._array = bad
            got = [risk_numpy.portfolio_margin(pf, mk, checked=False)]
            got += [accel.portfolio_margin(pf, mk, backend=name, checked=False) for name in {names!r}]
            for name in {names!r}:
                try:
                    accel.portfolio_margin(pf, mk, backend=name)
                    print(what, name, "checked: no error")
                except ValueError as exc:
                    assert str(exc).startswith("account 0: a scenario loss is not a finite number"), exc
            print(what, all(r.initial.tolist() == r.maintenance.tolist() == [-2, -2] and r.worst.tolist() == [0, 0]
                            for r in got))
    """)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-800:])
    assert sorted(done.stdout.splitlines()) == sorted(f"{what} True" for what in _BAD_COUNTS), done.stdout


@pytest.mark.parametrize("counts", [(1.0, 0.0), (16.0, 16.0), (1.0, 16.0), (16.0, 0.0)])
def test_move_counts_at_the_kernels_bounds_are_margined(backends, counts):
    nm, ne = int(counts[0]), int(counts[1])
    p = MarginParams(moves=tuple(np.linspace(-0.2, 0.2, nm)) if nm > 1 else (0.05,),
                     extended_moves=tuple(np.linspace(-0.5, 3.0, ne)))
    pf, mk = _book()
    want = risk_numpy.portfolio_margin(pf, mk, p)
    assert (want.maintenance > 0).all()
    for b in backends:
        assert _same(accel.portfolio_margin(pf, mk, p, backend=b), want), b.name


# ---------------------------------------------------------------- reset() in a forked child

_RESET_IN_CHILD = """
import os, signal, sys
import accel
from accel import backends
leaves = [bytes([i]) * 32 for i in range(100)]
cuda_here = isinstance(backends.probe()["cuda"], backends.Backend)
root = accel.merkle_root(leaves, backend="opencl")  # PoCL's threads start in the parent
if sys.argv[1] == "parent reset":
    backends.reset()  # the instance is forgotten; the driver's threads are still there
pid = os.fork()
if pid == 0:
    signal.alarm(30)  # a child stuck in the driver dies here (status 14) instead of hanging the test
    backends.reset()
    try:
        backends.get_backend("opencl")
        print("child started opencl:", accel.merkle_root(leaves, backend="opencl") == root, flush=True)
    except backends.ForkedAway as exc:
        print("child refused:", str(exc)[:30], flush=True)
    print("child fallback:", accel.merkle_root(leaves, backend="cpu") == root, flush=True)
    try:
        backends.get_backend("cuda")
        print("child cuda: started", flush=True)
    except backends.ForkedAway:
        print("child cuda:", "forked away" if cuda_here else "forked away, though never started", flush=True)
    except backends.BackendUnavailable:
        print("child cuda:", "unavailable, though started" if cuda_here else "unavailable as in the parent", flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print("status", status)
"""


@pytest.mark.parametrize("case", ["child reset", "parent reset"])
def test_reset_in_a_forked_child_does_not_start_the_parents_gpu_driver_again(backends, case):
    """backends.reset() cleared the after-fork markers with everything else: a forked child that
    called it started OpenCL afresh, and PoCL's first kernel there waited forever (the driver's
    threads were not copied). Likewise a parent that had reset() after starting it left its
    children no marker at all. The markers now outlive reset(), and every driver a process began
    to start is remembered for its children."""
    if not any(b.name == "opencl" for b in backends):
        pytest.skip("no OpenCL backend here")
    done = subprocess.run([sys.executable, "-c", _RESET_IN_CHILD, case], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    cuda = [line for line in done.stdout.splitlines() if line.startswith("child cuda:")]
    if case == "child reset":  # (after a reset in the parent, CUDA is refused as possibly under OpenCL)
        assert cuda in (["child cuda: forked away"], ["child cuda: unavailable as in the parent"]), done.stdout
    assert [line for line in done.stdout.splitlines() if not line.startswith("child cuda:")] == \
        ["child refused: the opencl backend was started", "child fallback: True", "status 0"], done.stdout


def test_a_message_without_a_length_is_named():
    """A 0-d array among the messages joined as one byte, and len() then raised "len() of unsized
    object", naming neither the item nor what was expected (since review s18 an array is no item at
    all: only bytes, bytearrays and 1-D byte memoryviews are)."""
    with pytest.raises(TypeError, match=r"^message 0 is ndarray, expected bytes$"):
        pack_messages([np.array(5, np.uint8), b"x"])
    with pytest.raises(TypeError, match=r"^leaf 1 is ndarray, expected bytes$"):
        merkle.merkle_root([b"x", np.array(5, np.uint8)])


_DROPPED_IN_CHILD = """
import gc, os, weakref
import accel
from accel import backends
accel.merkle_root([bytes(32)] * 10, backend="opencl")
alive = weakref.ref(backends.get_backend("opencl"))  # the registry holds the only reference
pid = os.fork()
if pid == 0:
    gc.collect()
    print("child: the parent's backend is", "kept" if alive() is not None else "released", flush=True)
    os._exit(0)
os.waitpid(pid, 0)
print("parent: the backend is", "kept" if alive() is not None else "released", flush=True)
"""


def test_a_forked_child_does_not_release_its_parents_gpu_objects_through_the_driver(backends):
    """After a fork the registry replaced the parent's GPU backend with the ForkedAway marker, its
    last reference in the child: the child then released the parent's context, queue, programs
    and buffers through the driver (pyopencl's and CuPy's destructors), driver calls a forked
    child must not make. The child now keeps them, unused."""
    if not any(b.name == "opencl" for b in backends):
        pytest.skip("no OpenCL backend here")
    done = subprocess.run([sys.executable, "-c", _DROPPED_IN_CHILD], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["child: the parent's backend is kept", "parent: the backend is kept"], \
        done.stdout


_FORKED_GPU_SMALL_BATCHES = """
import os, sys
import numpy as np
import accel
from accel import dispatch
from accel.backends import get_backend
from accel.risk import CALL, Marks, Portfolio
gpu = get_backend("opencl")
gpu._is_gpu = True  # stand in for a GPU: below gpu_min_batch the parent keeps work on the C fallback
small = [bytes([i]) * 32 for i in range(100)]
big = [bytes(32)] * 5000
root_small, root_big = accel.merkle_root(small), accel.merkle_root(big)
book = Portfolio(offsets=[0, 1], instrument=[0], size=[-1.0])
marks = Marks(index=100.0, rate=0.0, forward=[100.0], strike=[100.0], expiry=[0.1], vol=[0.5], kind=[CALL])
margin = accel.portfolio_margin(book, marks)
parent = dict(dispatch.fallbacks())
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    out = [accel.merkle_root(small) == root_small, accel.portfolio_margin(book, marks).maintenance.tolist()
           == margin.maintenance.tolist()]
    with dispatch.no_fallback():
        out.append(accel.merkle_root(small) == root_small)  # never meant for the GPU: runs as in the parent
    out.append(sorted(k for k, v in dispatch.fallbacks().items() if v != parent.get(k, 0)))
    out.append(accel.merkle_root(big) == root_big)  # a GPU batch: redone on the C fallback, counted
    out.append(sorted((k, v - parent.get(k, 0)) for k, v in dispatch.fallbacks().items() if v != parent.get(k, 0)))
    os.write(w, repr(out).encode())
    os._exit(0)
os.close(w)
os.waitpid(pid, 0)
print("CHILD", os.read(r, 10000).decode())
"""


def test_a_forked_gpu_workers_small_batches_stay_on_the_c_fallback_uncounted(backends):
    """A forked child of a GPU-configured process counted every call as a GPU fallback, also the
    batches the parent never sends to the GPU (below gpu_min_batch: every margin call), so the
    fallback metric climbed with each of them, and under no_fallback() they raised ForkedAway
    where the parent ran them on the C fallback."""
    if not any(b.name == "opencl" for b in backends):
        pytest.skip("no OpenCL backend here")
    env = {**__import__("os").environ, "ACCEL_BACKEND": "opencl", "ACCEL_GPU_FALLBACK": "true"}
    done = subprocess.run([sys.executable, "-c", _FORKED_GPU_SMALL_BATCHES], capture_output=True, text=True,
                          timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "CHILD [True, True, True, [], True, [(('opencl', 'merkle'), 1)]]", done.stdout
