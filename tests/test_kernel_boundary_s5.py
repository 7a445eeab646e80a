"""Differential review of the accel kernel boundary (session 5): every backend against the NumPy and
pure-Python references on fresh edge inputs, and malformed input at the Python API.

Regression tests for the defects found (each failed before its fix):
- risk inputs of non-real dtypes were silently converted (a complex array lost its imaginary part with
  a mere warning, datetime64/timedelta64 became day counts, strings were parsed, bools became 1.0,
  a masked array lost its mask) or raised other than ValueError (an integer beyond double precision:
  OverflowError; Marks.index or rate given as a string, None or huge int: TypeError), which the
  clearing app, catching ValueError, would let escape;
- verify_merkle_proof accepted a proof claiming more leaves than int64 (CometBFT's bound), looped
  once per bit of such a total (quadratic time in its size: a hang), and raised obscure TypeErrors
  for a float index or a str total.
The differential tests (greeks raw bits with NaN lanes, margin at subnormal/huge values, Merkle
trees around powers of two with proofs of the last leaf, Ed25519 edge encodings at chunk
boundaries) held when written and guard the bit-identity rule."""
from __future__ import annotations

import decimal
import hashlib

import numpy as np
import pytest

import accel
from accel import ed25519_ref as ref
from accel import risk, risk_numpy
from accel.backends import Backend
from accel.merkle import MAX_TOTAL, MerkleProof, hashlib_root, leaf_hash, verify_merkle_proof
from accel.risk import CALL, FUTURE, MarginParams, Marks, Portfolio

# ---------------------------------------------------------------- risk: malformed numbers

BAD_REALS = {
    "complex array": np.array([100.0 + 1j, 90.0]),
    "complex scalar": np.complex128(100.0 + 0j),
    "datetime64": np.array(["2026-01-01", "2026-01-02"], "datetime64[D]"),
    "timedelta64": np.array([100, 90], "timedelta64[D]"),
    "strings": np.array(["100", "90"]),
    "a string": "100",
    "bools": np.array([True, True]),
    "masked": np.ma.array([100.0, 90.0], mask=[False, True]),
    "huge int": [10**400, 90.0],
    "None in a list": [100.0, None],
    "bytes in a list": [100.0, b"90"],
}


@pytest.mark.parametrize("what", sorted(BAD_REALS))
def test_risk_inputs_refuse_values_that_are_not_real_numbers(what):
    bad = BAD_REALS[what]
    good = dict(strike=100.0, t=0.5, r=0.01, vol=0.4, is_call=True)
    with pytest.raises(ValueError, match="forward_or_spot"):
        accel.greeks(bad, backend="cpu", **good)
    with pytest.raises(ValueError, match=r"\bvol\b"):
        accel.greeks([100.0, 90.0], 100.0, 0.5, 0.01, bad, True, backend="cpu")
    with pytest.raises(ValueError, match=r"\bq\b"):
        accel.greeks([100.0, 90.0], 100.0, 0.5, 0.01, 0.4, True, q=bad, backend="cpu")
    with pytest.raises(ValueError, match="forward_or_spot"):
        risk_numpy.greeks_price(bad, **good)
    marks = dict(index=100.0, rate=0.0, forward=[100.0, 90.0], strike=[100.0, 90.0], expiry=[0.1, 0.2],
                 vol=[0.5, 0.6], kind=[CALL, FUTURE])
    with pytest.raises(ValueError, match="strike"):
        Marks(**(marks | dict(strike=bad)))
    with pytest.raises(ValueError, match="size"):
        Portfolio(offsets=[0, 2], instrument=[0, 1], size=bad)
    if np.ndim(bad) == 0 or isinstance(bad, str):
        for field in ("index", "rate"):
            with pytest.raises(ValueError, match=field):
                Marks(**(marks | {field: bad}))


def test_real_numbers_in_every_form_give_the_float64_bits():
    """What the strict parsing still takes: ints, float16/32, big-endian, strided views, 0-d
    arrays, Decimal and object arrays of real numbers, each giving the bits of its float64 value."""
    x = np.array([100.0, 90.0, 120.0, 80.0])
    want = accel.greeks(x, 100.0, 0.5, 0.01, 0.4, True, backend="cpu")
    forms = [x.astype(">f8"), x.astype(np.float32), x.astype(np.int64), x.astype(np.uint16), x.astype(np.float16),
             np.repeat(x, 2)[::2], x.astype(object), [decimal.Decimal(str(v)) for v in x], [int(v) for v in x]]
    for form in forms:
        got = accel.greeks(form, 100.0, 0.5, 0.01, 0.4, True, backend="cpu")
        assert all(a.tobytes() == b.tobytes() for a, b in zip(got, want)), type(form)
    scalar = accel.greeks(np.array(100.0), np.float32(100.0), decimal.Decimal("0.5"), 0, 0.4, 1, backend="cpu")
    assert scalar.price.tobytes() == accel.greeks(100.0, 100.0, 0.5, 0.0, 0.4, True, backend="cpu").price.tobytes()
    mk = Marks(index=np.float64(100.0), rate=0, forward=[100], strike=np.array([100], np.int32), expiry=[0.1],
               vol=[0.5], kind=[CALL])
    assert type(mk.index) is float and mk.index == 100.0 and mk.rate == 0.0
    assert Marks(index=np.array([100.0]), rate=0.0, forward=[1.0], strike=[1.0], expiry=[0.0], vol=[1.0],
                 kind=[FUTURE]).index == 100.0


@pytest.mark.parametrize("change", [
    dict(vol_up=10**400), dict(tick=10**400), dict(moves=(0.1, 10**400)), dict(moves=("0.1",)),
    dict(extended_moves=(True,)), dict(moves=None), dict(moves=0.1), dict(extended_moves=("x", 1.0)),
])
def test_margin_params_refuse_non_numbers_with_value_error(change):
    with pytest.raises(ValueError, match="MarginParams"):
        MarginParams(**change)
    assert MarginParams(moves=np.array([-0.1, 0.0, 0.1], np.float32)).moves[1] == 0.0  # arrays still fine


def test_margin_params_must_be_margin_params():
    book = Portfolio(offsets=[0, 1], instrument=[0], size=[-1.0])
    marks = Marks(index=100.0, rate=0.0, forward=[100.0], strike=[100.0], expiry=[0.1], vol=[0.5], kind=[CALL])
    for bad in ({}, {"tick": 1e-8}, "default"):
        with pytest.raises(TypeError, match="params must be a MarginParams"):
            accel.portfolio_margin(book, marks, bad, backend="cpu")
        with pytest.raises(TypeError, match="params must be a MarginParams"):
            risk_numpy.portfolio_margin(book, marks, bad)


# ---------------------------------------------------------------- risk: differential bits

SPECIAL = np.array([0.0, -0.0, 5e-324, -5e-324, 1e-310, 2.2250738585072014e-308, 1e-300, 1e-200, 1e-12, 1e-8,
                    0.5, 1.0, 2.0, 1e8, 1e100, 1e154, 1e300, 1.7976931348623157e308, np.inf, -np.inf, np.nan, -1.0])


def _raw_greeks(b, x, k, t, r, q, vol, index, flags):
    """av_greeks' six rows as the kernel writes them, NaN lanes included (accel.greeks raises)."""
    arrays = [np.ascontiguousarray(a, np.float64) for a in (x, k, t, r, q, vol, index)] + [flags.astype(np.uint8)]
    out = b.empty((6, len(x)), np.float64)
    b.launch("greeks", len(x), *(b.to_device(a) for a in arrays), np.uint32(0), out)
    return b.to_host(out)


def _edge_options(rng, n):
    def col(lo, hi, p):
        v = 10.0 ** rng.uniform(lo, hi, n)
        m = rng.random(n) < p
        v[m] = rng.choice(SPECIAL, m.sum())
        return v
    x = col(-3, 6, 0.15)
    with np.errstate(all="ignore"):
        k = np.where(rng.random(n) < 0.5, x * np.exp(rng.normal(0, 1, n)), col(-3, 6, 0.15))
    atm = rng.random(n) < 0.05
    k[atm] = x[atm]
    t, vol = col(-10, 1.5, 0.25), col(-6, 1, 0.2)
    r = rng.uniform(-0.5, 0.5, n)
    sp = rng.random(n) < 0.05
    r[sp] = rng.choice([0.0, -0.0, 699.9, -699.9, 700.0, 1e-320, -1e-320, 1e300], sp.sum())
    q = np.where(rng.random(n) < 0.5, r, rng.uniform(-0.5, 0.5, n))
    index = np.where(rng.random(n) < 0.5, x, col(-3, 6, 0.15))
    flags = (rng.integers(0, 2, n) | rng.integers(0, 2, n) * 2 | rng.integers(0, 2, n) * 4).astype(np.uint8)
    return x, k, t, r, q, vol, index, flags


def test_greeks_raw_bits_on_edge_inputs_agree_everywhere(backends):
    """150,000 options with subnormals, -0.0, infinities, NaN, t = 0 and tiny, vol tiny and huge, r t
    at the 700 bound, spot and inverse flags, q = r and not: every backend writes the same six
    rows bit for bit, every invalid or overflowing lane is the one canonical NaN, and the Black-76
    price of accel.risk_numpy has the kernel's bits and the kernel's verdict on every lane, also
    when q = r everywhere (the C fallback's no-carry and linear fast paths)."""
    rng = np.random.default_rng(2026_12_06)
    x, k, t, r, q, vol, index, flags = _edge_options(rng, 100_000)
    runs = [(x, k, t, r, q, vol, index, flags), (x[:50_000], k[:50_000], t[:50_000], r[:50_000], r[:50_000],
                                                 vol[:50_000], index[:50_000], flags[:50_000] & np.uint8(1))]
    for args in runs:
        first = _raw_greeks(backends[0], *args)
        bits = first.view(np.uint64)
        nan = np.isnan(first)
        assert 0.05 < nan[0].mean() < 0.6 and (nan == nan[0]).all()  # all six NaN together
        assert (bits[nan] == 0x7FF8000000000000).all()
        for b in backends[1:]:
            assert np.array_equal(_raw_greeks(b, *args).view(np.uint64), bits), b.name
        xs, ks, ts, rs, qs, vs, idx, fl = args
        black = ((fl & 4) == 0) & (qs == rs)
        assert black.sum() > 20_000
        with np.errstate(all="ignore"):
            price, ok = risk_numpy._b76_greeks_ok(xs[black], ks[black], ts[black], rs[black], vs[black], idx[black],
                                                  (fl[black] & 1) != 0, (fl[black] & 2) != 0)
        assert np.array_equal(ok, ~nan[0][black])
        assert np.array_equal(price[ok].view(np.uint64), bits[0][black][ok])


def test_margin_at_subnormal_and_huge_values_agrees_everywhere(backends):
    """Instruments with subnormal to near-overflow forwards, strikes and vols, expiries 0, -0.0,
    subnormal and at the 30-day switch, sizes including subnormals and 1e300, an index from
    1e-300 to 1e300, and ticks from 5e-324 to 1e300: accel.risk_numpy and every backend give the
    same margins, error codes and worst scenarios (checked=False), and standard margin agrees
    between backends."""
    rng = np.random.default_rng(61)
    spec = np.array([5e-324, 1e-310, 2.2250738585072014e-308, 1e-300, 1e-12, 1.0, 1e12, 1e150, 1e300, 1.7e308])
    m = 1500

    def col(lo, hi, p, values=spec):
        v = 10.0 ** rng.uniform(lo, hi, m)
        pick = rng.random(m) < p
        v[pick] = rng.choice(values, pick.sum())
        return v

    codes = set()
    for index, rate, tick in [(1e-300, -0.3, 5e-324), (3e4, 0.05, 1e-8), (1e300, 0.0, 1e300), (5e-324, -0.0, 1.0)]:
        with np.errstate(all="ignore"):
            forward = np.where(rng.random(m) < 0.5, index * np.exp(rng.normal(0, 0.2, m)), col(-5, 8, 0.2))
            forward = np.where((forward > 0) & np.isfinite(forward), forward, 1.0)
            strike = np.where(rng.random(m) < 0.5, forward * np.exp(rng.normal(0, 0.5, m)), col(-5, 8, 0.2))
        strike = np.where((strike > 0) & np.isfinite(strike), strike, 1.0)
        expiry = col(-12, 1, 0.3, np.array([0.0, -0.0, 5e-324, 1e-300, 1 / 365, 29.99999 / 365, 30 / 365, 1e3]))
        mk = Marks(index=index, rate=rate, forward=forward, strike=strike, expiry=expiry, vol=col(-8, 1.5, 0.2),
                   kind=rng.choice(risk._KINDS, m).astype(np.uint8))
        counts = rng.integers(0, 8, 6000)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        n = int(offsets[-1])
        size = rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(-5, 6, n)
        pick = rng.random(n) < 0.1
        size[pick] = rng.choice([0.0, -0.0, 5e-324, -5e-324, 1e300, -1e300], pick.sum())
        pf = Portfolio(offsets=offsets, instrument=rng.integers(0, m, n), size=size)
        for p in (MarginParams(tick=tick), MarginParams(tick=tick, vol_up=1e6, vol_ref_days=1e300)):
            want = risk_numpy.portfolio_margin(pf, mk, p, checked=False)
            codes |= set(np.unique(want.maintenance[want.maintenance < 0]).tolist())
            for b in backends:
                got = accel.portfolio_margin(pf, mk, p, backend=b, checked=False)
                assert all(np.array_equal(g, w) and g.dtype == w.dtype for g, w in zip(got, want)), b.name
            std = [outcome(lambda: accel.standard_margin(pf, mk, p, backend=b)) for b in backends]
            assert all(_same(s, std[0]) for s in std), [b.name for b in backends]
    assert codes == {-2, -1}  # both error codes were reached


def outcome(fn):
    try:
        return fn()
    except ValueError as exc:
        return str(exc)


def _same(a, b):
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return all(x.tobytes() == y.tobytes() for x, y in zip(a, b))


# ---------------------------------------------------------------- Merkle proofs

def test_a_proof_claiming_more_leaves_than_int64_is_refused():
    """The last leaf of a 2^64 + 1-leaf tree rises alone to the level of two nodes and needs one
    aunt: the root of a two-leaf tree [x, leaf] then "proves" the leaf in a tree of more leaves
    than CometBFT's int64 total allows, which the check used to accept; with a total of
    2^(10^5) + 1 it looped once per bit, each step on a 10^5-bit integer (seconds; 10^7 bits:
    hours). Totals up to int64 keep the rule (totals are not authenticated by the root)."""
    leaf, other = b"the leaf", leaf_hash(b"another leaf")
    root = hashlib_root([b"another leaf", leaf])
    assert verify_merkle_proof(root, leaf, MerkleProof(2, 1, leaf_hash(leaf), (other,)))
    assert verify_merkle_proof(root, leaf, MerkleProof(2**62 + 1, 2**62, leaf_hash(leaf), (other,)))
    for total in (MAX_TOTAL + 1, 2**64 + 1, 2**100_000 + 1):
        assert verify_merkle_proof(root, leaf, MerkleProof(total, total - 1, leaf_hash(leaf), (other,))) is False
    assert MAX_TOTAL == 2**63 - 1


def test_malformed_proofs_get_a_type_error_or_false():
    leaves = [bytes([i]) * i for i in range(5)]
    root, proof = hashlib_root(leaves), accel.merkle_proof(leaves, 4, backend="cpu")
    assert verify_merkle_proof(root, leaves[4], proof)
    h, aunts = proof.leaf_hash, proof.aunts
    for bad, match in [(MerkleProof(5, 4.0, h, aunts), "proof.index must be an integer, not float"),
                       (MerkleProof("5", 4, h, aunts), "proof.total must be an integer, not str"),
                       (MerkleProof(5.0, 4, h, aunts), "proof.total must be an integer, not float"),
                       (MerkleProof(5, 4, h, tuple(a.hex() for a in aunts)), r"proof.aunts\[0\] must be bytes"),
                       (MerkleProof(5, 4, h, aunts[0]), "proof.aunts must be a tuple of bytes, not bytes"),
                       (MerkleProof(5, 4, h, None), "proof.aunts must be a tuple of bytes, not NoneType")]:
        with pytest.raises(TypeError, match=match):
            verify_merkle_proof(root, leaves[4], bad)
    assert verify_merkle_proof(root, leaves[4], MerkleProof(np.int64(5), np.uint8(4), h, list(aunts)))
    for bad in (MerkleProof(5, 4, h, (aunts[0] + b"\0",)), MerkleProof(5, 4, h, (aunts[0][:31],)),
                MerkleProof(5, 4, h[:31], aunts), MerkleProof(5, 4, h, aunts + (b"\0" * 32,)),
                MerkleProof(5, 4, h, aunts * 64), MerkleProof(-1, 4, h, aunts), MerkleProof(5, -1, h, aunts)):
        assert verify_merkle_proof(root, leaves[4], bad) is False


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7, 10])
def test_trees_around_powers_of_two_and_the_last_leaf(backend, k):
    """2^k - 1, 2^k and 2^k + 1 leaves of lengths around the SHA-256 block edges once the 0x00
    prefix is counted (54, 55, 56, 63, 64, 118, 119, 120): roots as hashlib's, and the proofs of
    the first, middle and last leaf as CometBFT gives them, checking against the root."""
    rng = np.random.default_rng(k)
    for n in (2**k - 1, 2**k, 2**k + 1):
        lengths = rng.choice([0, 1, 31, 32, 33, 54, 55, 56, 63, 64, 118, 119, 120, 247], n)
        leaves = [rng.bytes(int(length)) for length in lengths]
        root = hashlib_root(leaves)
        assert accel.merkle_root(leaves, backend=backend) == root
        for i in sorted({0, n // 2, n - 1}):
            proof = accel.merkle_proof(leaves, i, backend=backend)
            assert proof.total == n and proof.leaf_hash == leaf_hash(leaves[i])
            assert verify_merkle_proof(root, leaves[i], proof)
            assert not verify_merkle_proof(root, leaves[i] + b"\0", proof)
    digests = accel.sha256_many([b"\x5a" * n for n in range(0, 300)], backend=backend)
    assert digests == [hashlib.sha256(b"\x5a" * n).digest() for n in range(0, 300)]


# ---------------------------------------------------------------- Ed25519 verdicts

def _nacl_batch(n, seed):
    from nacl.signing import SigningKey
    rng = np.random.default_rng(seed)
    keys = [SigningKey(rng.bytes(32)) for _ in range(8)]
    pks, msgs, sigs = [], [], []
    for i in range(n):
        sk, msg = keys[i % 8], rng.bytes(int(rng.integers(0, 260)))
        pks.append(bytes(sk.verify_key))
        msgs.append(msg)
        sigs.append(sk.sign(msg).signature)
    return pks, msgs, sigs


# every y >= p (y = p + d, d = 0..18) with both signs of x, and x = 0 with the sign bit set
NONCANONICAL = ([((ref.P + d) | s << 255).to_bytes(32, "little") for d in range(19) for s in (0, 1)]
                + [(1 | 1 << 255).to_bytes(32, "little"), ((ref.P - 1) | 1 << 255).to_bytes(32, "little")])


def _edge_signatures():
    """(public key, message, signature) on every non-canonical encoding as A, as R and as both,
    S at and past L with and without high bits, and sign-flipped A and R of an honest signature."""
    pks, msgs, sigs = _nacl_batch(len(NONCANONICAL) + 1, 25519)
    cases = []
    for i, enc in enumerate(NONCANONICAL):
        pk, msg, sig = pks[i], msgs[i], sigs[i]
        cases += [(enc, msg, sig), (pk, msg, enc + sig[32:]), (enc, msg, enc + bytes(32)),
                  (enc, msg, enc + (1).to_bytes(32, "little")), (enc, msg, enc + (ref.L - 1).to_bytes(32, "little"))]
    pk, msg, sig = pks[-1], msgs[-1], sigs[-1]
    s = int.from_bytes(sig[32:], "little")
    for value in (ref.L, ref.L + 1, s + ref.L, s + 2 * ref.L, 2**252, 2**253 - 1, s | 1 << 255, s | 1 << 253,
                  2**256 - 1, ref.L - 1, 0, s):
        cases.append((pk, msg, sig[:32] + value.to_bytes(32, "little")))
    cases.append((pk[:31] + bytes([pk[31] ^ 0x80]), msg, sig))
    cases.append((pk, msg, sig[:31] + bytes([sig[31] ^ 0x80]) + sig[32:]))
    return cases


def test_noncanonical_encodings_and_s_ranges_follow_the_model_everywhere(backends):
    """All 19 non-canonical y values with both signs of x (26 of these 40 encodings decode) as A,
    R or both, S from 0 to 2^256 - 1: every backend's batch, single and all() verdicts and its
    key_is_safe are the ZIP-215 model's."""
    cases = _edge_signatures()
    want = [ref.zip215_verdict(*c) for c in cases]
    assert 5 <= sum(want) < len(want) - 100
    assert sum(ref.decode(e) is not None for e in NONCANONICAL) == 26
    for b in backends:
        assert accel.ed25519_verify_batch(*zip(*cases), backend=b).tolist() == want, b.name
        assert [accel.ed25519_verify(*c, backend=b) for c in cases[::7]] == want[::7], b.name
        valid = [c for c, w in zip(cases, want) if w]
        assert accel.ed25519_verify_all(*zip(*valid), backend=b) is True
        assert accel.ed25519_verify_all(*zip(*(valid + [cases[want.index(False)]])), backend=b) is False
        assert [accel.ed25519_key_is_safe(e, backend=b) for e in NONCANONICAL] == [False] * len(NONCANONICAL)


def test_batches_at_the_c_chunk_edges_keep_every_verdict(monkeypatch):
    """The C fallback checks chunks of at most 8,192 signatures (one per thread below that) as one
    random combination and splits failing ones; batches of 7, 8, 9, 8,191, 8,192 and 8,193 on 1 and
    3 threads, with a signature valid only by the cofactor, a small-order key with S = 0, S + L and
    a changed message at the first, last and chunk-edge positions: every verdict in place, and
    verify_all their all()."""
    from accel.backends.cpu import CpuBackend
    rng = np.random.default_rng(8192)
    pks, msgs, sigs = _nacl_batch(8193, 77)
    torsion = ref.torsion_points()
    a = int(rng.integers(1, 2**62))
    a_enc = ref.encode(ref.mul(a, ref.BASE))

    def special(kind, i):
        if kind == 0:  # R = [r]B + T: valid only with the cofactor
            r = int(rng.integers(1, 2**62))
            r_enc = ref.encode(ref.add(ref.mul(r, ref.BASE), torsion[1 + i % 7]))
            k = ref.challenge(r_enc, a_enc, msgs[i])
            return (a_enc, msgs[i], r_enc + ((r + k * a) % ref.L).to_bytes(32, "little")), True
        if kind == 1:
            t = ref.encode(torsion[i % 8])
            return (t, msgs[i], t + bytes(32)), True
        if kind == 2:
            s = int.from_bytes(sigs[i][32:], "little") + ref.L
            return (pks[i], msgs[i], sigs[i][:32] + s.to_bytes(32, "little")), False
        return (pks[i], msgs[i] + b"!", sigs[i]), False

    for threads in (1, 3):
        cpu = CpuBackend(threads)
        for n in (7, 8, 9, 8191, 8192, 8193):
            p, m, s = list(pks[:n]), list(msgs[:n]), list(sigs[:n])
            want = [True] * n
            for j, pos in enumerate(sorted({0, 7, 8, n // 3, 2730, 2731, 4096, 4097, 8191, 8192, n - 1})):
                if pos < n:
                    (p[pos], m[pos], s[pos]), want[pos] = special((j + n + threads) % 4, pos)
            assert accel.ed25519_verify_batch(p, m, s, backend=cpu).tolist() == want, (threads, n)
            assert accel.ed25519_verify_all(p, m, s, backend=cpu) is all(want)
            good = [i for i in range(n) if want[i]]
            assert accel.ed25519_verify_all([p[i] for i in good], [m[i] for i in good], [s[i] for i in good],
                                            backend=cpu) is True


@pytest.mark.parametrize("shaped", [False, True], ids=["one-kernel", "GPU-shaped"])
def test_gpu_chunks_of_every_small_size_keep_edge_verdicts(backends, monkeypatch, shaped):
    """GPU_CHUNK forced to 1, 2, 7 and 64 on every GPU-kind backend here (PoCL on this machine),
    both GPU paths, over the edge signatures: each verdict stays at its index."""
    from accel import ed25519 as ed
    cases = _edge_signatures()[:120]
    want = [ref.zip215_verdict(*c) for c in cases]
    gpus = [b for b in backends if b.name != "cpu"]
    if not gpus:
        pytest.skip("no OpenCL or CUDA backend here")
    monkeypatch.setattr(ed, "GPU_SHAPED", shaped)
    for chunk in (1, 2, 7, 64):
        monkeypatch.setattr(ed, "GPU_CHUNK", chunk)
        for b in gpus:
            assert accel.ed25519_verify_batch(*zip(*cases), backend=b).tolist() == want, (b.name, chunk)


# ---------------------------------------------------------------- a GPU failing mid-batch

class _FlakyGpu(Backend):
    """A real backend posing as a GPU that fails on launch number `ok` (a driver reset mid-batch)."""
    name, device = "cuda", "flaky stand-in"

    def __init__(self, inner, ok):
        self.inner, self.ok = inner, ok

    @property
    def is_gpu(self):
        return True

    def to_device(self, array):
        return self.inner.to_device(array)

    def empty(self, shape, dtype):
        return self.inner.empty(shape, dtype)

    def to_host(self, buffer):
        return self.inner.to_host(buffer)

    def launch(self, kernel, n, *args, group=None):
        if self.ok == 0:
            raise RuntimeError("CUDA_ERROR_LAUNCH_FAILED (simulated)")
        self.ok -= 1
        self.inner.launch(kernel, n, *args, group=group)


def test_every_api_redoes_a_failed_gpu_batch_on_the_c_fallback(backends, monkeypatch, caplog):
    """Every public batch API over a backend that fails on its first, second or fourth launch
    (chunks already done on the device are thrown away): the C fallback's bits, one logged
    fallback counted per call under the API's kernel."""
    import logging

    from accel import config, dispatch
    from accel import ed25519 as ed
    monkeypatch.setenv("ACCEL_GPU_FALLBACK", "true")
    config.reload()
    monkeypatch.setattr(ed, "GPU_CHUNK", 16)
    monkeypatch.setattr(risk, "_GPU_CHUNK", 50)
    pks, msgs, sigs = _nacl_batch(70, 5)
    sigs[40] = sigs[41]
    leaves = [bytes([i % 256]) * (i % 70) for i in range(300)]
    x = np.linspace(50.0, 150.0, 200)
    book = Portfolio(offsets=[0, 2, 2, 5], instrument=[0, 1, 1, 0, 1], size=[-1.0, 2.0, -3.0, 1.0, -0.5])
    marks = Marks(index=100.0, rate=0.01, forward=[101.0, 100.0], strike=[90.0, 1.0], expiry=[0.2, 0.5],
                  vol=[0.7, 1.0], kind=[CALL, FUTURE])
    calls = {
        "ed25519": [lambda b: accel.ed25519_verify_batch(pks, msgs, sigs, backend=b).tobytes(),
                    lambda b: accel.ed25519_verify_all(pks, msgs, sigs, backend=b),
                    lambda b: accel.ed25519_key_is_safe(pks[0], backend=b)],
        "merkle": [lambda b: accel.merkle_root(leaves, backend=b),
                   lambda b: accel.merkle_proof(leaves, 299, backend=b)],
        "sha256": [lambda b: accel.sha256_many(leaves, backend=b)],
        "risk": [lambda b: np.array(accel.greeks(x, 100.0, 0.5, 0.01, 0.6, x > 100.0, backend=b)).tobytes(),
                 lambda b: tuple(a.tobytes() for a in accel.portfolio_margin(book, marks, backend=b)),
                 lambda b: tuple(a.tobytes() for a in accel.standard_margin(book, marks, backend=b))],
    }
    cpu = next(b for b in backends if b.name == "cpu")
    for inner in backends:
        for kernel, fns in calls.items():
            for fn in fns:
                want = fn(cpu)
                for ok in (0, 1, 3):
                    before = dispatch.fallbacks().get(("cuda", kernel), 0)
                    caplog.clear()
                    with caplog.at_level(logging.WARNING, logger="accel"):
                        got = fn(_FlakyGpu(inner, ok))
                    assert got == want, (inner.name, kernel, ok)
                    launched_all = not caplog.records  # a call needing at most `ok` launches never failed
                    assert not (ok == 0 and launched_all), (inner.name, kernel)
                    after = dispatch.fallbacks().get(("cuda", kernel), 0)
                    assert after == before + (0 if launched_all else 1), (inner.name, kernel, ok)
                    if not launched_all:
                        assert f"cuda backend failed on {kernel}" in caplog.text and "simulated" in caplog.text
                assert fn(_FlakyGpu(inner, 0)) == want  # the first launch failing always falls back


# ---------------------------------------------------------------- packing: buffers and containers

def test_unordered_containers_are_refused():
    """A set or dict of messages, keys or signatures used to be packed in hash order: verdicts and
    digests then belonged to other items than the caller's index says (two good signatures whose
    messages came as a set could both come back False)."""
    pks, msgs, sigs = _nacl_batch(2, 3)
    for bad in ({"messages": set(msgs)}, {"messages": dict.fromkeys(msgs)}, {"public_keys": set(pks)},
                {"signatures": frozenset(sigs)}, {"messages": dict.fromkeys(msgs).keys()}):
        args = dict(public_keys=pks, messages=msgs, signatures=sigs) | bad
        with pytest.raises(TypeError, match="in order, not a"):
            accel.ed25519_verify_batch(**args, backend="cpu")
        with pytest.raises(TypeError, match="in order, not a"):
            accel.ed25519_verify_all(**args, backend="cpu")
    with pytest.raises(TypeError, match="leaves must be .* in order, not a set"):
        accel.merkle_root({b"a", b"b"}, backend="cpu")
    with pytest.raises(TypeError, match="messages must be .* in order, not a dict"):
        accel.sha256_many({b"a": 1}, backend="cpu")
    assert accel.sha256_many((b"a", bytearray(b"b"), memoryview(b"c")), backend="cpu") == \
        [hashlib.sha256(m).digest() for m in (b"a", b"b", b"c")]
    assert accel.ed25519_verify_batch(tuple(pks), tuple(msgs), tuple(sigs), backend="cpu").all()


def test_buffers_that_are_not_plain_bytes_are_named():
    """A non-contiguous memoryview used to fail on a None (TypeError: object of type 'NoneType' has
    no len()), and a 64-byte two-row view was "64 bytes, expected 64": each now gets a TypeError
    naming the item and what it is; a contiguous byte view is still taken as its bytes."""
    strided = memoryview(b"abcdefgh")[::2]
    two_rows = memoryview(np.zeros((2, 32), np.uint8))
    with pytest.raises(TypeError, match=r"^message 1 is a non-contiguous memoryview \(bytes\(\) copies it\), "
                                        r"expected bytes$"):
        accel.sha256_many([b"x", strided], backend="cpu")
    with pytest.raises(TypeError, match="^leaf 0 is a non-contiguous memoryview"):
        accel.merkle_root([strided], backend="cpu")
    two_d = r"^signature 0 is a 2-D memoryview of 1-byte items \('B'\), expected 64 bytes$"
    with pytest.raises(TypeError, match=two_d):
        accel.ed25519_verify_batch([bytes(32)], [b""], [two_rows], backend="cpu")
    with pytest.raises(TypeError, match="^public key 0 is a non-contiguous memoryview"):
        accel.ed25519_verify_batch([memoryview(bytes(64))[::2]], [b""], [bytes(64)], backend="cpu")
    with pytest.raises(TypeError, match=r"^message 0 is a 1-D memoryview of 4-byte items \('I'\)"):
        accel.sha256_many([memoryview(np.zeros(3, np.uint32))], backend="cpu")
    assert accel.sha256_many([bytes(strided), memoryview(b"abc")[1:]], backend="cpu") == \
        [hashlib.sha256(b"aceg").digest(), hashlib.sha256(b"bc").digest()]


# ---------------------------------------------------------------- risk: arrays changed after checks

def _book_and_marks():
    marks = Marks(index=100.0, rate=0.0, forward=[100.0, 100.0], strike=[100.0, 1.0], expiry=[0.1, 0.1],
                  vol=[0.5, 1.0], kind=[CALL, FUTURE])
    return Portfolio(offsets=[0, 1, 2], instrument=[0, 1], size=[-1.0, 1.0]), marks


def _writeable(arr):
    arr.flags.writeable = True
    return arr


@pytest.mark.parametrize("change,message", [
    (lambda pf, mk: _writeable(pf.offsets).__setitem__(1, -10**9), r"offsets\[1\] = -1000000000: must not decrease"),
    (lambda pf, mk: _writeable(pf.offsets).__setitem__(2, 7), "offsets must start at 0 and end at the number of positions"),
    (lambda pf, mk: _writeable(mk.kind).__setitem__(0, 77), r"kind\[0\] = 77: must be one of"),
    (lambda pf, mk: _writeable(pf.size).__setitem__(0, np.nan), r"size\[0\] = nan: must be finite"),
    (lambda pf, mk: _writeable(mk.strike).__setitem__(0, -1.0), r"strike\[0\] = -1.0: must be finite and > 0"),
    (lambda pf, mk: object.__setattr__(pf, "size", np.zeros(0)), "size has 0 entries, instrument has 2"),
    (lambda pf, mk: object.__setattr__(mk, "vol", np.ones(5)), "vol has 5 entries, kind has 2"),
    (lambda pf, mk: object.__setattr__(pf, "offsets", np.array([0, 2, 1, 2])), r"offsets\[2\] = 1: must not decrease"),
])
def test_books_changed_after_construction_are_checked_again(backends, change, message):
    """Portfolio and Marks are frozen, but their arrays were the caller's and writeable: a book
    changed in place after its checks reached the kernels unchecked (offsets past the arrays: a
    segmentation fault; sizes of another length: backends read other memory and disagreed, the C
    fallback 1 tick, OpenCL -1). The objects now keep read-only copies, and every call checks the
    layout the kernels index with again, so even a book forced past that (arrays swapped, made
    writeable) is refused by name on every backend and in accel.risk_numpy alike."""
    for b in backends:
        pf, mk = _book_and_marks()
        change(pf, mk)
        with pytest.raises(ValueError, match=message):
            accel.portfolio_margin(pf, mk, backend=b, checked=False)
        with pytest.raises(ValueError, match=message):
            accel.standard_margin(pf, mk, backend=b)
    pf, mk = _book_and_marks()
    change(pf, mk)
    with pytest.raises(ValueError, match=message):
        risk_numpy.portfolio_margin(pf, mk, checked=False)
    pf, mk = _book_and_marks()  # a book whose instrument ids were swapped for int64 still margins right
    want = accel.portfolio_margin(pf, mk, backend="cpu")
    object.__setattr__(pf, "instrument", pf.instrument.astype(np.int64))
    for b in backends:
        assert all(g.tobytes() == w.tobytes() for g, w in zip(accel.portfolio_margin(pf, mk, backend=b), want))


def test_books_keep_their_own_read_only_arrays():
    """The caller's arrays changing after construction (a reused buffer) no longer change the book,
    and writing into the book's arrays is an error at the write."""
    offsets, inst, size = np.array([0, 1, 2]), np.array([0, 1], np.int32), np.array([-1.0, 1.0])
    strike = np.array([100.0, 1.0])
    pf = Portfolio(offsets=offsets, instrument=inst, size=size)
    mk = Marks(index=100.0, rate=0.0, forward=[100.0, 100.0], strike=strike, expiry=[0.1, 0.1], vol=[0.5, 1.0],
               kind=[CALL, FUTURE])
    want = accel.portfolio_margin(pf, mk, backend="cpu")
    offsets[2], inst[1], size[0], strike[0] = 10**9, 10**6, np.nan, -5.0
    got = accel.portfolio_margin(pf, mk, backend="cpu")
    assert all(g.tobytes() == w.tobytes() for g, w in zip(got, want))
    assert pf.offsets.tolist() == [0, 1, 2] and mk.strike[0] == 100.0
    for arr in (pf.offsets, pf.instrument, pf.size, mk.forward, mk.strike, mk.expiry, mk.vol, mk.kind):
        assert not arr.flags.writeable and arr.flags.owndata
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 1


def test_offsets_past_the_positions_no_longer_crash_the_process():
    """An account's end offset raised in place after the Portfolio's checks: the kernels read
    positions a billion rows past the arrays (a segmentation fault on the C fallback and OpenCL).
    Run in a child process so that a crash fails this test instead of ending the run."""
    import subprocess
    import sys
    code = ("import accel\nfrom accel.risk import Marks, Portfolio\n"
            "mk = Marks(index=100.0, rate=0.0, forward=[100.0], strike=[100.0], expiry=[0.1], vol=[0.5], kind=[1])\n"
            "pf = Portfolio(offsets=[0, 1], instrument=[0], size=[-1.0])\n"
            "pf.offsets.flags.writeable = True\n"
            "pf.offsets[1] = 10**9\n"
            "try:\n    accel.portfolio_margin(pf, mk, backend='cpu')\n"
            "except ValueError as exc:\n    print('refused:', exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-500:])
    assert "refused: offsets must start at 0 and end at the number of positions (1)" in done.stdout


def test_no_fallback_stays_strict_after_a_nested_block(monkeypatch):
    """dispatch.no_fallback() (readiness checks must see the GPU itself) used to end strictness at
    the end of any nested block, so the rest of the outer block quietly fell back again."""
    from accel import config, dispatch
    monkeypatch.setenv("ACCEL_GPU_FALLBACK", "true")
    config.reload()
    cpu = accel.get_backend("cpu")
    with dispatch.no_fallback():
        with dispatch.no_fallback():
            pass
        with pytest.raises(RuntimeError, match="simulated"):
            accel.sha256_many([b"abc"], backend=_FlakyGpu(cpu, 0))
    assert accel.sha256_many([b"abc"], backend=_FlakyGpu(cpu, 0)) == [hashlib.sha256(b"abc").digest()]


def test_reference_model_refuses_what_accel_refuses():
    """accel.ed25519_ref (the software-only validators' second opinion) turned an int n into n
    zero bytes: zip215_verdict(32, 0, 64) was True (a small-order key, R and S of zeros), where
    accel.ed25519_verify raises TypeError; a list of ints passed too, and a 33-byte point encoding
    was read as a larger number. Both sides now refuse the same inputs."""
    for args in [(32, b"", bytes(64)), (bytes(32), 0, bytes(64)), (bytes(32), b"", 64), ([0] * 32, b"", bytes(64)),
                 (bytes(32), b"", [0] * 64), ("00" * 32, b"", bytes(64))]:
        with pytest.raises(TypeError, match="must be bytes"):
            ref.zip215_verdict(*args)
        with pytest.raises(TypeError, match="must be bytes"):
            accel.ed25519_verify(*args, backend="cpu")
    with pytest.raises(TypeError, match="public key must be bytes"):
        ref.key_is_safe(32)
    with pytest.raises(ValueError, match="public key is 33 bytes"):
        ref.key_is_safe(bytes(33))
    with pytest.raises(ValueError, match="33 bytes, expected 32"):
        ref.decode(bytes(32) + b"\x01")
    assert ref.zip215_verdict(bytearray(32), memoryview(b""), bytearray(64)) is True  # small order, S = 0
    assert accel.ed25519_verify(bytearray(32), memoryview(b""), bytearray(64), backend="cpu") is True


def test_masked_flags_and_integer_arrays_are_refused():
    """The flags and integer arrays dropped a mask as the float ones did: the hidden entry became
    an option type, an offset or an instrument kind."""
    with pytest.raises(ValueError, match="is_call has masked entries"):
        accel.greeks([100.0, 90.0], 100.0, 1.0, 0.0, 0.5, np.ma.array([1, 0], mask=[False, True]), backend="cpu")
    with pytest.raises(ValueError, match="inverse has masked entries"):
        accel.greeks([100.0, 90.0], 100.0, 1.0, 0.0, 0.5, True, inverse=np.ma.array([1, 0], mask=[True, False]))
    with pytest.raises(ValueError, match="offsets has masked entries"):
        Portfolio(offsets=np.ma.array([0, 1, 2], mask=[0, 1, 0]), instrument=[0, 0], size=[1.0, 1.0])
    with pytest.raises(ValueError, match="instrument has masked entries"):
        Portfolio(offsets=[0, 1], instrument=np.ma.array([0], mask=[1]), size=[1.0])
    with pytest.raises(ValueError, match="kind has masked entries"):
        Marks(index=1.0, rate=0.0, forward=[1.0], strike=[1.0], expiry=[1.0], vol=[1.0],
              kind=np.ma.array([8], mask=[1]))
    flags = np.ma.array([1, 0], mask=[False, False])
    unmasked = accel.greeks([100.0, 90.0], 100.0, 1.0, 0.0, 0.5, flags, backend="cpu")
    assert unmasked.price.tobytes() == accel.greeks([100.0, 90.0], 100.0, 1.0, 0.0, 0.5, [True, False],
                                                    backend="cpu").price.tobytes()


def test_packed_item_counts_from_the_end_like_a_list():
    """Packed.item(-1) read data[offsets[-1]:offsets[0]], an empty message, instead of the last."""
    packed = accel.Packed.join([accel.Packed(np.frombuffer(b"abcde", np.uint8), np.array([0, 2, 5], np.uint64))])
    assert [packed.item(i) for i in (0, 1, -1, -2, np.int64(1))] == [b"ab", b"cde", b"cde", b"ab", b"cde"]
    for bad in (2, -3):
        with pytest.raises(IndexError):
            packed.item(bad)
