"""Adversarial review of the regular-digit schedule on GPU targets (kernels/ed25519_ge.h
ed_sc_odd / ed_regular_entry / ed_check_regular, kernels/ed25519_gpu.h ed_gpu_check) and of the
one-kernel path taking signatures in the host's hash order (accel/ed25519.py _verify, ordering,
hash_order). Every attack here must leave OpenCL (PoCL here, a GPU under make gpu-check) with the
verdicts of the C fallback and of the plain-Python ZIP-215 model:

- chosen scalars, through a review kernel built from the real OpenCL source: the three schedules
  (sliding, regular one-kernel, GPU-shaped) side by side on (A, R, s, k) picked here, k = 0 and
  k = L - 1 included, which no hash can be made to give; every tuning variant that changes digits;
- scalars whose regular digits are all at the extreme table entries (+-255 for B, +-(2^w - 1) for
  A at every width a build can pick), even and odd, so both s and s + L, k and k + L, are used;
- whole signatures with chosen S (small-order A makes S free), and signatures whose challenge was
  ground even with A carrying each torsion point (k + L adds [L]A = [5]T, which only [8] clears);
- batches whose hash order is a real permutation: SHA-512 block boundaries, long messages,
  duplicates, sizes that are not multiples of a work-group, GPU_CHUNK forced small so each chunk
  has its own order, both kernel paths, and verify_all;
- the scalar reduction feeding the schedule (k < L is what makes k + L < 2^254)."""
from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

import accel
from accel import dispatch
from accel import ed25519 as ed
from accel.ed25519_ref import BASE, L, P, add, challenge, decode, encode, is_identity, mul, neg, point_from_y, zip215_verdict

from test_ed25519 import NONCANONICAL_SMALL, TORSION
# a point of large order whose y < 19, written with y + p (non-canonical, not small order)
_Y = [y for y in range(3, 19) if point_from_y(y) is not None][0]
LARGE_NONCANONICAL = (_Y + P).to_bytes(32, "little")
WIDTHS = (1, 2, 3, 4, 5, 6, 7, 8)  # every ED_REGULAR_A_BITS the code allows (ED_GPU_A_WINDOW: 1..4), and 8 for B


def le(x: int) -> bytes:
    return x.to_bytes(32, "little")


def cofactored(A, R, s: int, k: int) -> bool:
    """[8]([s]B - R - [k]A) == 0 on decoded points: the equation every schedule must decide."""
    return is_identity(mul(8, add(mul(s, BASE), neg(add(R, mul(k, A))))))


# ---- the regular recoding, written independently of the kernels --------------------------------


def regular_len(w: int) -> int:
    return -(-255 // w)


def regular_digits(m: int, w: int) -> list[int]:
    """Joye-Tunstall digits of an odd m < 2^254 at bits w j, as the kernels document them."""
    assert m & 1 and 0 < m < 2**254
    n = regular_len(w)
    out = []
    for j in range(n):
        b = m >> (w * j + 1)
        if j + 1 < n:
            out.append(2 * (b & ((1 << w) - 1)) + 1 - (1 << w))
        else:
            out.append(2 * b + 1)
    return out


def scalar_for(m: int) -> int | None:
    """The scalar s < L whose odd form (s, or s + L when s is even) is m; None if there is none."""
    if m & 1 == 0 or m <= 0 or m >= 2 * L:
        return None
    return m if m < L else m - L  # m - L is even when m >= L (both odd)


def extreme_scalars(w: int, rng: random.Random, count: int = 6) -> list[int]:
    """Scalars below L whose regular w-bit digits are all +-(2^w - 1) below the top digit (the
    first and last entries of the table of odd multiples), both parities, plus the all-negative
    and all-positive patterns where they fit below 2L."""
    n, top = regular_len(w), w * (regular_len(w) - 1)
    mx = (1 << w) - 1
    found = []
    for pattern in ([-mx] * (n - 1), [mx] * (n - 1)):
        low = sum(d << (w * j) for j, d in enumerate(pattern))
        for d_top in range(1, 64, 2):
            s = scalar_for(low + (d_top << top))
            if s is not None:
                found.append(s)
    tries = 0
    while len(found) < 2 + count and tries < 10_000:
        tries += 1
        low = sum(rng.choice((-mx, mx)) << (w * j) for j in range(n - 1))
        s = scalar_for(low + (1 << top))
        if s is not None:
            found.append(s)
    for s in found:  # the construction really reaches the extreme entries
        m = s if s & 1 else s + L
        digits = regular_digits(m, w)
        assert sum(d << (w * j) for j, d in enumerate(digits)) == m
        assert all(abs(d) == mx for d in digits[:-1]), (w, s)
    return sorted(set(found))


SPECIAL = sorted({0, 1, 2, 3, 4, 5, 7, 8, 16, L - 1, L - 2, L - 3, L - 8, 2**252 - 1, 2**252, 2**252 + 1,
                  2**253 - 1 - L, 2**253 + 1 - L, (L - 1) // 2, (L + 1) // 2, 2**251, 2**251 + 1, 2**128,
                  2**200 + 1, 2**252 - 2**251, L - 2**248})


def test_the_odd_form_stays_below_2_254_and_digits_fit_every_width():
    """The bound the schedule rests on: for every reduced k (< L), k + L < 2^254, and the top
    digit of every width stays below 2^w (so the table of 2^(w-1) odd multiples covers it)."""
    assert SPECIAL and all(0 <= s < L for s in SPECIAL)
    assert (L - 1) + L < 2**254 and L % 2 == 1 and L % 8 == 5
    rng = random.Random(254)
    for w in WIDTHS:
        assert w * regular_len(w) >= 255 and w * (regular_len(w) - 1) >= 248  # B's digit at 248 is reached
        for s in SPECIAL + [rng.randrange(L) for _ in range(50)] + extreme_scalars(min(w, 8), rng, 2):
            m = s if s & 1 else s + L
            digits = regular_digits(m, w)
            assert all(d & 1 and abs(d) < 1 << w for d in digits) and digits[-1] > 0, (w, s)
            assert sum(d << (w * j) for j, d in enumerate(digits)) == m


# ---- OpenCL: the three schedules on chosen (A, R, s, k) -----------------------------------------

REVIEW_KERNELS = r"""
/* Item i: A, R, s, k at in[128 i ..]; out[4 i ..] = sliding, regular (one kernel), GPU-shaped,
 * and the build's ED_REGULAR_DIGITS * 16 + ED_REGULAR_A_BITS. */
KERNEL_BOUNDED(ED_GPU_GROUP, ED_GPU_BLOCKS_PER_SM) review_check(GLOBAL const u8 *in, GLOBAL u8 *out, u64 n) {
    LOCAL_ARRAY(i32, tab, (ED_GPU_A_POINTS + 1) * ED_GPU_CACHED_WORDS * ED_GPU_GROUP);
    u64 i = GLOBAL_ID;
    if (i >= n) return;
    u8 a[32], r[32], s[32], k[32];
    for (u32 j = 0; j < 32; j++) {
        a[j] = in[128 * i + j];
        r[j] = in[128 * i + 32 + j];
        s[j] = in[128 * i + 64 + j];
        k[j] = in[128 * i + 96 + j];
    }
    ed_p3 A, R;
    int ok = ed_p3_decode(&A, a) && ed_p3_decode(&R, r);
    out[4 * i + 0] = (u8)(ok && ed_check_sliding(&A, &R, s, k));
    out[4 * i + 1] = (u8)(ok && ed_check_regular(&A, &R, s, k));
    out[4 * i + 2] = (u8)(ok && ed_gpu_check(&A, &R, s, k, tab, LOCAL_ID));
    out[4 * i + 3] = (u8)(ED_REGULAR_DIGITS * 16 + ED_REGULAR_A_BITS);
}

/* Item i: the 64 bytes at in[64 i] reduced mod L, then their odd form (ed_sc_odd). */
KERNEL void review_scalar(GLOBAL const u8 *in, GLOBAL u8 *out, u64 n) {
    u64 i = GLOBAL_ID;
    if (i >= n) return;
    u8 h[64], k[32], o[32];
    for (u32 j = 0; j < 64; j++) h[j] = in[64 * i + j];
    ed_sc_reduce64(k, h);
    ed_sc_odd(o, k);
    for (u32 j = 0; j < 32; j++) {
        out[64 * i + j] = k[j];
        out[64 * i + 32 + j] = o[j];
    }
}
"""

# Builds whose digits differ: the defaults, the widths bench/ed25519_variants.py times, and the
# other widths the kernels allow (1..8 for A, GPU-shaped 1..4 in shared memory).
VARIANTS = {
    "default": (),
    "A_BITS=3": ("-DED_REGULAR_A_BITS=3",),
    "A_BITS=5": ("-DED_REGULAR_A_BITS=5",),
    "A_BITS=2, GPU w2": ("-DED_REGULAR_A_BITS=2", "-DED_GPU_A_WINDOW=2"),
    "A_BITS=1, GPU w1": ("-DED_REGULAR_A_BITS=1", "-DED_GPU_A_WINDOW=1"),
    "A_BITS=8, GPU w4": ("-DED_REGULAR_A_BITS=8", "-DED_GPU_A_WINDOW=4"),
    "A_BITS=6, GPU w3": ("-DED_REGULAR_A_BITS=6", "-DED_GPU_A_WINDOW=3"),
}
A_BITS = {"default": 4, "A_BITS=3": 3, "A_BITS=5": 5, "A_BITS=2, GPU w2": 2, "A_BITS=1, GPU w1": 1,
          "A_BITS=8, GPU w4": 8, "A_BITS=6, GPU w3": 6}


@pytest.fixture(scope="module")
def ocl(backends):
    found = [b for b in backends if b.name == "opencl"]
    if not found:
        pytest.skip("no OpenCL backend here to run the GPU schedules")
    return found[0]


@pytest.fixture(scope="module")
def cpu_b(backends):
    assert backends[0].name == "cpu"
    return backends[0]


_programs: dict = {}


def review_program(b, options=()):
    import pyopencl as cl

    from accel.backends.base import inline_source
    from accel.backends.opencl import BUILD_OPTIONS
    key = tuple(options)
    if key not in _programs:
        src = inline_source("portable.h") + "\n" + inline_source("ed25519_gpu.h") + REVIEW_KERNELS
        _programs[key] = cl.Program(b._ctx, src).build(options=BUILD_OPTIONS + list(options))
    return _programs[key]


def run_review(b, prog, cases) -> np.ndarray:
    import pyopencl as cl
    n = len(cases)
    raw = b"".join(a + r + le(s) + le(k) for a, r, s, k in cases)
    d_in, out = b.to_device(np.frombuffer(raw, np.uint8)), b.empty((n, 4), np.uint8)
    kern = cl.Kernel(prog, "review_check")
    kern.set_args(d_in.buf, out.buf, np.uint64(n))
    # explicit groups of 32: ED_GPU_GROUP, and PoCL's stacks overflow with larger ones
    cl.enqueue_nd_range_kernel(b._queue, kern, (-(-n // 32) * 32,), (32,))
    return b.to_host(out)


def chosen_cases():
    """(A, R, s, k) encodings and scalars, with the model's verdict, for the review kernel."""
    rng = random.Random(8215)
    a = rng.randrange(1, L)
    full = mul(a, BASE)
    points = ([encode(full), encode(add(full, TORSION[1])), encode(add(full, TORSION[2])),
               encode(add(full, TORSION[4])), encode(BASE), encode(neg(BASE)), LARGE_NONCANONICAL]
              + [encode(t) for t in TORSION] + NONCANONICAL_SMALL)
    decoded = {enc: decode(enc) for enc in points}
    assert all(p is not None for p in decoded.values())
    ss = sorted(set(SPECIAL + extreme_scalars(8, rng, 4)))
    ks = sorted(set(SPECIAL + [x for w in (1, 2, 3, 4, 5, 6, 7, 8) for x in extreme_scalars(w, rng, 1)]))
    cases = []

    def push(a_enc, s, k, how):
        A = decoded[a_enc]
        R = add(mul(s, BASE), neg(mul(k, A)))
        if how == "torsion":
            R = add(R, TORSION[rng.randrange(1, 8)])
        elif how == "plus B":
            R = add(R, BASE)
        elif how == "plus [L]A":  # what k + L changes when k is even, before the [8]
            R = add(R, neg(mul(L, A)))
        elif how == "random":
            R = add(R, mul(rng.randrange(1, L), BASE))
        cases.append((a_enc, encode(R), s, k))

    hows = ("exact", "torsion", "plus B", "plus [L]A", "random")
    for i, s in enumerate(ss):
        for j, k in enumerate(ks):
            if (i + j) % 3 == 0 or s in (0, L - 1) or k in (0, L - 1, 1, 2):
                push(points[(i * 7 + j) % len(points)], s, k, hows[(i + 2 * j) % len(hows)])
    for a_enc in points:  # every point with even and odd k and s, and k = 0 / L - 1
        for k in (0, 1, 2, L - 1, L - 2, rng.randrange(L) | 1, rng.randrange(L) & ~1):
            for how in ("torsion", "plus [L]A", "plus B"):
                push(a_enc, rng.randrange(L) & ~1 if rng.random() < 0.5 else rng.randrange(L), k, how)
    # R non-canonical and small: A = [a]B with s = k a makes [s]B - [k]A = 0, so only [8]R is left
    for enc in NONCANONICAL_SMALL:
        for k in (0, 2, L - 1, rng.randrange(L)):
            cases.append((encode(full), enc, k * a % L, k))
            cases.append((encode(full), enc, (k * a + 1) % L, k))
    # undecodable A or R: false whatever the scalars
    cases.append(((2).to_bytes(32, "little"), encode(BASE), 1, 0))
    cases.append((encode(BASE), (2).to_bytes(32, "little"), 0, 0))
    want = []
    for a_enc, r_enc, s, k in cases:
        A, R = decode(a_enc), decode(r_enc)
        want.append(A is not None and R is not None and cofactored(A, R, s, k))
    return cases, np.array(want)


@pytest.fixture(scope="module")
def chosen():
    cases, want = chosen_cases()
    assert 0.3 * len(want) < want.sum() < 0.9 * len(want)
    return cases, want


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_schedules_on_chosen_scalars_match_the_model(ocl, chosen, variant):
    """k = 0, 1, 2, L - 1, L - 2, S = 0 .. L - 1, extreme digits at every width, each torsion
    point in A, non-canonical A and R, R off by [L]A (the term k + L adds): sliding, regular and
    GPU-shaped schedules as PoCL compiles them must each give the model's verdict."""
    if variant != "default" and ocl.is_gpu:
        pytest.skip("the non-default builds run on PoCL in CI; on a GPU each is a slow driver compile, and "
                    "bench/ed25519_variants.py checks the timed ones under CUDA")
    cases, want = chosen
    out = run_review(ocl, review_program(ocl, VARIANTS[variant]), cases)
    assert out[0, 3] == 16 + A_BITS[variant]  # a GPU target: regular digits, at the width asked
    for col, name in enumerate(("sliding", "regular", "GPU-shaped")):
        bad = np.flatnonzero(out[:, col].astype(bool) != want)
        assert bad.size == 0, (variant, name, [(cases[i][0].hex(), cases[i][1].hex(), cases[i][2], cases[i][3],
                                                bool(want[i])) for i in bad[:3]])


def test_scalar_reduction_and_odd_form_on_opencl(ocl):
    """ed_sc_reduce64 on hashes at Barrett's edges (multiples of L, q L + L - 1, 2^512 - 1) and
    ed_sc_odd after it: k < L always, and the odd form is k or k + L, odd, below 2^254."""
    import pyopencl as cl
    rng = random.Random(512)
    top = (2**512 - 1) // L
    xs = [0, 1, L - 1, L, L + 1, 2 * L - 1, 2 * L, 3 * L - 1, 2**252, 2**253, 2**256 - 1, 2**512 - 1,
          top * L, top * L - 1, top * L + (2**512 - 1 - top * L)]
    for _ in range(200):
        q = rng.randrange(top + 1)
        xs.append(min(2**512 - 1, q * L + rng.choice((0, 1, L - 1, L - 2, rng.randrange(L)))))
        xs.append(rng.getrandbits(512))
    xs += [int.from_bytes(hashlib.sha512(bytes([i])).digest(), "little") for i in range(64)]
    prog = review_program(ocl)
    d_in = ocl.to_device(np.frombuffer(b"".join(x.to_bytes(64, "little") for x in xs), np.uint8))
    out = ocl.empty((len(xs), 64), np.uint8)
    kern = cl.Kernel(prog, "review_scalar")
    kern.set_args(d_in.buf, out.buf, np.uint64(len(xs)))
    cl.enqueue_nd_range_kernel(ocl._queue, kern, (-(-len(xs) // 32) * 32,), (32,))
    got = ocl.to_host(out)
    for x, row in zip(xs, got):
        k, odd = int.from_bytes(row[:32].tobytes(), "little"), int.from_bytes(row[32:].tobytes(), "little")
        assert k == x % L, hex(x)
        assert odd == (k if k & 1 else k + L) and odd & 1 and odd < 2**254, hex(x)


# ---- whole signatures through accel.ed25519_verify_batch on OpenCL ------------------------------


def opencl_verdicts(b, pks, msgs, sigs, shaped: bool, chunk: int | None = None, monkeypatch=None):
    """accel.ed25519_verify_batch on backend b, the kernel path chosen, no silent C fallback."""
    monkeypatch.setattr(ed, "GPU_SHAPED", shaped)
    if chunk is not None:
        monkeypatch.setattr(ed, "GPU_CHUNK", chunk)
    with dispatch.no_fallback():
        out = accel.ed25519_verify_batch(pks, msgs, sigs, backend=b)
    assert out.dtype == bool and out.shape == (len(sigs),)
    return out


def chosen_s_batch():
    """Signatures whose S is picked here: A of small order (canonical or not) makes [k]A vanish
    under [8], so R = [S]B + T holds for any S; S + 1 (or S - 1) then fails."""
    rng = random.Random(2520)
    small = [encode(t) for t in TORSION] + NONCANONICAL_SMALL
    ss = sorted(set(SPECIAL + extreme_scalars(8, rng, 6)))
    pks, msgs, sigs = [], [], []
    for i, s in enumerate(ss):
        a_enc = small[i % len(small)]
        r_enc = encode(add(mul(s, BASE), TORSION[(3 * i) % 8]))
        msg = rng.randbytes(rng.choice((0, 1, 47, 48, 200)))
        pks += [a_enc, a_enc]
        msgs += [msg, msg]
        sigs += [r_enc + le(s), r_enc + le(s + 1 if s + 1 < L else s - 1)]
    return pks, msgs, sigs


def ground_k_batch():
    """A = [a]B + T for each torsion point T, messages ground until k is even (and for order 8,
    k = 2 mod 8 and 4 mod 8 as well, where [k]T != 0): the regular schedule then uses k + L,
    which adds [L]A = [5]T. Valid under the cofactored equation; every third S tampered."""
    rng = random.Random(8)
    pks, msgs, sigs, ks = [], [], [], []
    for ti, t in enumerate(TORSION):
        a, r = rng.randrange(1, L), rng.randrange(1, L)
        a_enc = encode(add(mul(a, BASE), t))
        r_enc = encode(add(mul(r, BASE), TORSION[(ti * 5) % 8]))
        for want_mod8 in ((0, 2, 4, 6, 1) if ti % 2 else (0, 2, 3)):
            for ctr in range(10_000):
                msg = b"grind" + ctr.to_bytes(4, "little") + bytes(rng.randrange(3) * 60)
                k = challenge(r_enc, a_enc, msg)
                if k % 8 == want_mod8:
                    break
            s = (r + k * a) % L
            pks.append(a_enc)
            msgs.append(msg)
            sigs.append(r_enc + le(s if len(sigs) % 3 else (s + 3) % L))
            ks.append(k)
    return pks, msgs, sigs, ks


@pytest.fixture(scope="module")
def chosen_s():
    pks, msgs, sigs = chosen_s_batch()
    want = np.array([zip215_verdict(*c) for c in zip(pks, msgs, sigs)])
    assert want[0::2].all() and not want[1::2].any()
    return pks, msgs, sigs, want


@pytest.fixture(scope="module")
def ground():
    pks, msgs, sigs, ks = ground_k_batch()
    want = np.array([zip215_verdict(*c) for c in zip(pks, msgs, sigs)])
    assert sum(k % 2 == 0 for k in ks) >= 20 and 0 < want.sum() < len(want)
    # some of them hold only with the cofactor: the k + L term [5]T is not what makes them pass
    cofactorless_fail = 0
    for pk, msg, sig, k, ok in zip(pks, msgs, sigs, ks, want):
        if ok:
            s = int.from_bytes(sig[32:], "little")
            lhs = add(mul(s, BASE), neg(add(decode(sig[:32]), mul(k, decode(pk)))))
            cofactorless_fail += not is_identity(lhs)
    assert cofactorless_fail >= 10
    return pks, msgs, sigs, want


@pytest.mark.parametrize("shaped", [False, True], ids=["one-kernel", "GPU-shaped"])
def test_chosen_s_signatures(ocl, cpu_b, chosen_s, shaped, monkeypatch):
    """S = 0, 1, 2, L - 1, L - 2, 2^252 +- 1, and S whose 8-bit regular digits are all +-255,
    in whole signatures, both GPU kernel paths, against the C fallback and the model."""
    pks, msgs, sigs, want = chosen_s
    assert np.array_equal(accel.ed25519_verify_batch(pks, msgs, sigs, backend=cpu_b), want)
    assert np.array_equal(opencl_verdicts(ocl, pks, msgs, sigs, shaped, monkeypatch=monkeypatch), want)


@pytest.mark.parametrize("shaped", [False, True], ids=["one-kernel", "GPU-shaped"])
def test_even_challenges_with_torsion_in_a(ocl, cpu_b, ground, shaped, monkeypatch):
    pks, msgs, sigs, want = ground
    assert np.array_equal(accel.ed25519_verify_batch(pks, msgs, sigs, backend=cpu_b), want)
    assert np.array_equal(opencl_verdicts(ocl, pks, msgs, sigs, shaped, monkeypatch=monkeypatch), want)


# ---- hash order: real permutations, chunks, sizes ------------------------------------------------

BOUNDARY_LENGTHS = [0, 1, 46, 47, 48, 49, 111, 112, 113, 174, 175, 176, 177, 239, 240, 241, 303, 304, 305,
                    1000, 4096, 9001]


def ordered_batch():
    """Valid and tampered signatures over messages at every SHA-512 block edge of R || A || M
    (64 + len + 17 crossing 128-byte blocks), long ones first so the hash order reverses whole
    runs; exact duplicates at several places; the torsion and chosen-S cases mixed in; a tail
    of one block count."""
    from nacl.signing import SigningKey
    rng = random.Random(4096)
    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(6)]
    pks, msgs, sigs = [], [], []
    lengths = sorted(BOUNDARY_LENGTHS, reverse=True) + BOUNDARY_LENGTHS[::3] + [rng.randrange(0, 400) for _ in range(40)]
    for i, n in enumerate(lengths):
        key = keys[i % len(keys)]
        msg = rng.randbytes(n)
        sig = key.sign(msg).signature
        if i % 5 == 2:
            sig = sig[:32] + le((int.from_bytes(sig[32:], "little") + 1) % L)  # S off by one
        elif i % 7 == 3:
            msg = msg[:-1] if msg else b"\x00"  # another length than the one signed
        pks.append(bytes(key.verify_key))
        msgs.append(msg)
        sigs.append(sig)
    for j in (0, 5, 17, 30):  # duplicates of valid and invalid entries, far from the originals
        pks.append(pks[j])
        msgs.append(msgs[j])
        sigs.append(sigs[j])
    cs = chosen_s_batch()
    gk = ground_k_batch()[:3]
    for src in (cs, gk):
        for pk, msg, sig in list(zip(*src))[::2]:
            at = rng.randrange(len(pks) + 1)
            pks.insert(at, pk)
            msgs.insert(at, msg)
            sigs.insert(at, sig)
    for i in range(14):  # one block count throughout: some chunk of 7 in here needs no order
        msg = rng.randbytes(rng.randrange(60, 170))
        pks.append(bytes(keys[i % len(keys)].verify_key))
        msgs.append(msg)
        sigs.append(keys[i % len(keys)].sign(msg if i % 3 else msg + b"!").signature)
    return pks, msgs, sigs


@pytest.fixture(scope="module")
def ordered(cpu_b):
    pks, msgs, sigs = ordered_batch()
    want = np.array([zip215_verdict(*c) for c in zip(pks, msgs, sigs)])
    assert np.array_equal(accel.ed25519_verify_batch(pks, msgs, sigs, backend=cpu_b), want)
    assert 0.3 * len(want) < want.sum() < 0.9 * len(want)
    from accel.packing import pack_messages
    order = ed.hash_order(pack_messages(msgs)[1])
    assert order is not None and not np.array_equal(order, np.arange(len(msgs)))  # a real permutation
    return pks, msgs, sigs, want


@pytest.mark.parametrize("chunk", [7, 32, 1 << 17])
@pytest.mark.parametrize("shaped", [False, True], ids=["one-kernel", "GPU-shaped"])
def test_hash_order_and_chunks_keep_each_verdict_in_place(ocl, ordered, shaped, chunk, monkeypatch):
    """Chunks of 7 and 32 each get their own order (or none, where one chunk's lengths share a
    block count); verdicts must land at their own index, whole batch and prefixes of 1, 31, 33
    and 65 (not multiples of a work-group)."""
    from accel.packing import pack_messages
    pks, msgs, sigs, want = ordered
    offsets = pack_messages(msgs)[1]
    orders = [ed.hash_order(offsets[lo:min(len(msgs), lo + chunk) + 1] - offsets[lo]) for lo in range(0, len(msgs), chunk)]
    permuted = [o is not None and not np.array_equal(o, np.arange(len(o))) for o in orders]
    assert any(permuted)  # some chunk's items run in another order than the input's
    if chunk == 7:
        assert any(o is None for o in orders) and not all(permuted[:-1])  # and some keep theirs
    assert np.array_equal(opencl_verdicts(ocl, pks, msgs, sigs, shaped, chunk, monkeypatch), want)
    if chunk == 7:
        for n in (1, 31, 33, 65):
            got = opencl_verdicts(ocl, pks[:n], msgs[:n], sigs[:n], shaped, chunk, monkeypatch)
            assert np.array_equal(got, want[:n]), n
        with dispatch.no_fallback():
            assert accel.ed25519_verify_all(pks, msgs, sigs, backend=ocl) is bool(want.all()) is False
            valid = [i for i in range(len(want)) if want[i]]
            sub = [[x[i] for i in valid] for x in (pks, msgs, sigs)]
            assert accel.ed25519_verify_all(*sub, backend=ocl) is True


def test_one_kernel_any_permutation_gives_the_same_verdicts(ocl, ordered):
    """av_ed25519_verify with use_order = 1 and arbitrary permutations (reversal, random, the
    identity), and with use_order = 0 beside a garbage order buffer: item j checks order[j] and
    writes its verdict at order[j], never at j."""
    from accel.packing import pack_fixed, pack_messages
    pks, msgs, sigs, want = ordered
    n = len(pks)
    data, offsets = pack_messages(msgs)
    args = [ocl.to_device(x) for x in (pack_fixed(pks, 32, "public key"), data, offsets,
                                        pack_fixed(sigs, 64, "signature"))]
    rng = np.random.default_rng(9)
    perms = [np.arange(n)[::-1], rng.permutation(n), np.arange(n), ed.hash_order(offsets)]
    for perm in perms:
        for shaped in (False, True):
            out = ocl.empty((n,), np.uint8)
            order = perm.astype(np.uint32)
            if shaped:
                ed.verify_on_gpu(ocl, n, *args, out, order)
            else:
                ocl.launch("ed25519_verify", n, *args, *ed.ordering(ocl, order), out)
            assert np.array_equal(ocl.to_host(out).astype(bool), want), (shaped, perm[:5])
    out = ocl.empty((n,), np.uint8)
    garbage = ocl.to_device(np.full(n, 0xFFFFFFFF, np.uint32))  # must not be read when use_order = 0
    ocl.launch("ed25519_verify", n, *args, garbage, np.uint32(0), out)
    assert np.array_equal(ocl.to_host(out).astype(bool), want)


def test_hash_order_is_a_stable_permutation_past_the_uint16_clamp():
    """Message lengths past 0xFFFF blocks (8 MiB) clamp to one key; the order stays a permutation,
    stable, grouped by (clamped) block count; a batch of one or of equal counts needs none."""
    lengths = [9 << 20, 0, 10 << 20, 47, 48, 8 << 20, 9 << 20, 175, 176, 1, 2**33, 0]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.uint64)
    order = ed.hash_order(offsets)
    assert order.dtype == np.uint32 and sorted(order.tolist()) == list(range(len(lengths)))
    keys = [min((n + 64 + 17 + 127) // 128, 0xFFFF) for n in lengths]
    assert [keys[i] for i in order] == sorted(keys)
    for a, b in zip(order, order[1:]):
        if keys[a] == keys[b]:
            assert a < b  # stable among equal keys
    assert ed.hash_order(np.array([0, 5], np.uint64)) is None
    assert ed.hash_order(np.array([0, 47, 47, 94], np.uint64)) is None  # 47, 0, 47 bytes: one block each
    assert ed.hash_order(np.array([0, 48, 95], np.uint64)).tolist() == [1, 0]  # 48 bytes cross into a 2nd block
