"""The two double-scalar schedules of kernels/ed25519_ge.h compiled as plain C: sliding windows (the
C fallback's) and regular digits (GPU targets'), with the recoding read straight off the scalar's
bits. Both must give the ZIP-215 model's verdicts, torsion and edge cases included, wherever they
run; PoCL and CUDA compare the regular one with the C fallback again (tests/test_ed25519.py)."""
import random

import pytest

from accel.ed25519_ref import L, zip215_verdict

from kernel_c import compile_as_c
from test_ed25519 import EDGE, mixed_batch, torsion_batch

LEN = {w: -(-255 // w) for w in (2, 3, 4, 5, 8)}  # ED_REGULAR_LEN


# The default build, and the tuning variant that changes the regular digits of k (bench/ed25519_variants.py).
BUILDS = {"default": [], "3-bit digits of k": ["-DED_REGULAR_A_BITS=3"]}


@pytest.fixture(scope="module", params=sorted(BUILDS))
def ge(tmp_path_factory, request):
    return compile_as_c(tmp_path_factory.mktemp("ge"),
                        "_ge_schedules_under_test_" + request.param.replace(" ", "_").replace("-", "_"), """
        unsigned regular_entry(const uint8_t *k, unsigned j, unsigned w, int *neg);
        void sc_odd(uint8_t *out, const uint8_t *k);
        int verify(const uint8_t *pk, const uint8_t *msg, uint64_t len, const uint8_t *sig, int regular);""", """
        #include "ed25519.h"
        unsigned regular_entry(const u8 *k, unsigned j, unsigned w, int *neg) {
            return ed_regular_entry(k, j, w, neg);
        }
        void sc_odd(u8 *out, const u8 *k) { ed_sc_odd(out, k); }
        int verify(const u8 *pk, const u8 *msg, uint64_t len, const u8 *sig, int regular) {
            ed_p3 A, R;
            u8 k[32];
            if (!(ed_sc_is_canonical(sig + 32) && ed_p3_decode(&A, pk) && ed_p3_decode(&R, sig))) return 0;
            ed25519_challenge(k, sig, pk, msg, len);
            return regular ? ed_check_regular(&A, &R, sig + 32, k) : ed_check_sliding(&A, &R, sig + 32, k);
        }""", BUILDS[request.param])


def scalars():
    rng = random.Random(2019)
    special = [0, 1, 2, 3, L - 1, L - 2, 2**252, 2**252 - 1, 2**252 + 1, 2**128, 2**253 - 1 - 2**200]
    return [s for s in special if s < L] + [rng.randrange(L) for _ in range(400)]


def test_sc_odd_adds_l_to_even_scalars_only(ge):
    for k in scalars():
        out = ge.ffi.new("uint8_t[32]")
        ge.lib.sc_odd(out, k.to_bytes(32, "little"))
        got = int.from_bytes(bytes(out), "little")
        assert got == (k if k & 1 else k + L) and got & 1 and got < 2**254, k


@pytest.mark.parametrize("w", sorted(LEN))
def test_regular_digits_are_odd_bounded_and_sum_to_the_scalar(ge, w):
    neg = ge.ffi.new("int *")
    for k in scalars():
        odd = k if k & 1 else k + L
        enc = odd.to_bytes(32, "little")
        total = 0
        for j in range(LEN[w]):
            e = ge.lib.regular_entry(enc, j, w, neg)
            assert e < 2 ** (w - 1), (k, j)  # an entry of the table of odd multiples up to 2^w - 1
            total += (-1 if neg[0] else 1) * (2 * e + 1) << (w * j)
        assert total == odd, (k, w)


def test_both_schedules_give_the_model_verdicts(ge):
    """Valid, tampered, ZIP-215 edge and torsion-carrying signatures: one verdict per schedule,
    each the plain-Python model's."""
    pks, msgs, sigs = (a + b for a, b in zip(mixed_batch(), torsion_batch(200, seed=31)))
    cases = list(zip(pks, msgs, sigs))[::7] + [(pk, msg, sig) for _, pk, msg, sig, _ in EDGE]
    valid = 0
    for pk, msg, sig in cases:
        want = zip215_verdict(pk, msg, sig)
        valid += want
        for regular in (0, 1):
            assert ge.lib.verify(pk, msg, len(msg), sig, regular) == want, (regular, pk.hex(), sig.hex())
    assert 0 < valid < len(cases)
