"""The GPU targets' field arithmetic (kernels/ed25519_fe.h) compiled as plain C, checked against
Python integers at the limb bounds its comments promise: products of 4-term sums of carried
limbs. Built with -fwrapv, so an i32 or i64 overflow gives a wrong product here instead of
undefined behaviour (the GPU compilers wrap too)."""
import random

import pytest

from kernel_c import compile_as_c

P = 2**255 - 19
OFFSETS = [(51 * i + 1) // 2 for i in range(10)]
CARRIED = 2**25 + 2**12  # a carried limb: |v| <= 2^25 (26-bit limbs) plus a little


# Each build of the field code a GPU may run: the default, and the tuning variants that change it.
BUILDS = {"default": [], "two carry chains": ["-DED_FE_CARRY_CHAINS=2"]}


@pytest.fixture(scope="module", params=sorted(BUILDS))
def fe(tmp_path_factory, request):
    return compile_as_c(tmp_path_factory.mktemp("fe"), "_fe_under_test_" + request.param.replace(" ", "_"),
                        "void fe_mul(int32_t *h, const int32_t *f, const int32_t *g);"
                        "void fe_sq(int32_t *h, const int32_t *f);", """
        #include "ed25519_fe.h"
        void fe_mul(int32_t *h, const int32_t *f, const int32_t *g) {
            ed_fe a, b, c;
            for (int i = 0; i < 10; i++) { a.v[i] = f[i]; b.v[i] = g[i]; }
            ed_fe_mul(&c, &a, &b);
            for (int i = 0; i < 10; i++) h[i] = c.v[i];
        }
        void fe_sq(int32_t *h, const int32_t *f) {
            ed_fe a, c;
            for (int i = 0; i < 10; i++) a.v[i] = f[i];
            ed_fe_sq(&c, &a);
            for (int i = 0; i < 10; i++) h[i] = c.v[i];
        }""", BUILDS[request.param])


def value(limbs) -> int:
    return sum(v << OFFSETS[i] for i, v in enumerate(limbs))


def call(fe, fn, *operands):
    h = fe.ffi.new("int32_t[10]")
    getattr(fe.lib, fn)(h, *(fe.ffi.new("int32_t[10]", list(x)) for x in operands))
    return list(h)


def operands(rng, terms):
    """Limbs of a sum of `terms` carried values, extremes included."""
    pick = [lambda: terms * CARRIED, lambda: -terms * CARRIED, lambda: rng.randint(-terms * CARRIED, terms * CARRIED)]
    return [rng.choice(pick)() for _ in range(10)]


@pytest.mark.parametrize("terms", [1, 2, 4])
def test_products_at_the_limb_bounds_are_exact(fe, terms):
    rng = random.Random(terms)
    cases = [[terms * CARRIED] * 10, [-terms * CARRIED] * 10] + [operands(rng, terms) for _ in range(3000)]
    for f in cases:
        g = operands(rng, terms)
        h = call(fe, "fe_mul", f, g)
        assert value(h) % P == value(f) * value(g) % P, (f, g)
        assert all(abs(v) <= CARRIED for v in h), h  # carried again, ready for the next product
        s = call(fe, "fe_sq", f)
        assert value(s) % P == value(f) ** 2 % P, f
        assert all(abs(v) <= CARRIED for v in s), s
