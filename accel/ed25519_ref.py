"""Ed25519 under ZIP-215 in plain Python: the reference model of the curve and of the verdict rule.

This module is the rule of docs/ED25519.md written as plainly as possible, with Python integers
and hashlib only: no accel kernel, no backend, no NumPy. Two users:

- the tests (tests/test_ed25519.py), which build edge-case inputs with it (torsion points,
  non-canonical encodings, signatures that hold only with the cofactor) and take its verdicts as
  the expected ones for every backend;
- software-only validation (consensus/verify.py), which asks libsodium (PyNaCl) first and this
  model only for the signatures libsodium refuses, so that a software-only validator reaches the
  same verdict as an accelerated one on every signature (libsodium accepts a subset of what
  ZIP-215 accepts: docs/ED25519.md).

It is slow (milliseconds per signature: a double-and-add over the complete extended-coordinate
addition) and variable time, which is fine for public data. Points are extended coordinates
(X, Y, Z, T) with x = X/Z, y = Y/Z, xy = T/Z.

    zip215_verdict(pk, msg, sig)   the ZIP-215 verdict on one signature (bytes, 32 / any / 64)
    key_is_safe(pk)                accel.ed25519_key_is_safe's rule: canonical and not small order
    decode(enc), encode(pt)        ZIP-215's lenient decoding; the canonical encoding
    add, neg, mul, is_identity     group law, negation, scalar multiplication, identity test
    BASE, IDENTITY, P, L, D        the base point, the neutral element, the field prime, the
                                   group order, the curve constant
    torsion_points()               the 8 points of small order
"""
from __future__ import annotations

import hashlib

from .packing import _buffer_problem

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRTM1 = pow(2, (P - 1) // 4, P)
IDENTITY = (0, 1, 1, 0)


def add(p1, p2):
    """Extended-coordinate addition (RFC 8032 section 5.1.4); complete on the whole curve."""
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a, b = (y1 - x1) * (y2 - x2) % P, (y1 + x1) * (y2 + x2) % P
    c, d = 2 * t1 * t2 * D % P, 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def mul(s, pt):
    """[s]pt for an integer s >= 0, by double-and-add."""
    out = IDENTITY
    while s:
        if s & 1:
            out = add(out, pt)
        pt, s = add(pt, pt), s >> 1
    return out


def neg(pt):
    x, y, z, t = pt
    return (-x % P, y, z, -t % P)


def affine(pt):
    zi = pow(pt[2], P - 2, P)
    return pt[0] * zi % P, pt[1] * zi % P


def is_identity(pt):
    x, y = affine(pt)
    return x == 0 and y == 1


def encode(pt):
    """The canonical 32-byte encoding: y < p, bit 255 the parity of x."""
    x, y = affine(pt)
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _as_bytes(name: str, value, length: int | None = None) -> bytes:
    """value's bytes if it is bytes, a bytearray or a one-dimensional contiguous memoryview of
    single bytes (of `length` bytes where given).
    Anything else is a TypeError, as accel.ed25519_verify gives: bytes() would turn an int n
    into n zero bytes (a small-order key) and a list of ints into bytes."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    problem = _buffer_problem(value)
    if problem:  # a view of 2-byte items, of two dimensions or with gaps: accel refuses them too
        raise TypeError(f"{name} is {problem}, expected bytes")
    value = bytes(value)
    if length is not None and len(value) != length:
        raise ValueError(f"{name} is {len(value)} bytes, expected {length}")
    return value


def decode(enc: bytes):
    """ZIP-215 decoding: y taken mod p, x = 0 may carry the sign bit; None if not on the curve."""
    v = int.from_bytes(_as_bytes("an encoded point", enc, 32), "little")
    y, sign = (v & (2**255 - 1)) % P, v >> 255
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRTM1 % P
    if (x * x - x2) % P:
        return None
    if x & 1 != sign:
        x = -x % P
    return (x, y, 1, x * y % P)


def point_from_y(y, sign=0):
    return decode((y | sign << 255).to_bytes(32, "little"))


BASE = point_from_y(4 * pow(5, P - 2, P) % P)


def challenge(r_enc: bytes, a_enc: bytes, msg: bytes) -> int:
    """k = SHA-512(R || A || M) mod L, over the bytes of R and A as given."""
    return int.from_bytes(hashlib.sha512(r_enc + a_enc + msg).digest(), "little") % L


def zip215_verdict(pk: bytes, msg: bytes, sig: bytes) -> bool:
    """The ZIP-215 verdict on one signature: S < L, A and R decode (leniently), and
    [8]([S]B - R - [k]A) is the identity with k over the bytes as given."""
    pk, msg, sig = _as_bytes("public key", pk), _as_bytes("message", msg), _as_bytes("signature", sig)
    if len(pk) != 32 or len(sig) != 64:
        raise ValueError(f"a public key is 32 bytes and a signature 64, not {len(pk)} and {len(sig)}")
    s = int.from_bytes(sig[32:], "little")
    if s >= L:
        return False
    a, r = decode(pk), decode(sig[:32])
    if a is None or r is None:
        return False
    k = challenge(sig[:32], pk, msg)
    lhs = add(mul(s, BASE), neg(add(r, mul(k, a))))
    return is_identity(mul(8, lhs))


def key_is_safe(pk: bytes) -> bool:
    """accel.ed25519_key_is_safe's rule: A decodes, its encoding is canonical (re-encoding the
    point gives the same 32 bytes) and it is not of small order ([8]A is not the identity)."""
    pk = _as_bytes("public key", pk, 32)
    a = decode(pk)
    return a is not None and encode(a) == pk and not is_identity(mul(8, a))


def torsion_points():
    """The 8 points of small order: [L]Q for a Q with a full-order torsion part, and its multiples."""
    y = 2
    while True:
        q = point_from_y(y)
        if q is not None:
            t = mul(L, q)
            if not is_identity(mul(4, t)):
                return [mul(i, t) for i in range(8)]
        y += 1
