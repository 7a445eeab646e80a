"""Signature and Merkle work of block validation, accelerated or software-only.

"accel": every signature of a block in one accel.ed25519_verify_all call on the configured backend
(ZIP-215 verdicts), Merkle roots by accel.merkle_root. "software": the measurement baseline, one
PyNaCl (libsodium) verification per signature and a hashlib tree, as a Python validator would do
it, with the same ZIP-215 verdicts as accel: libsodium accepts a subset of what ZIP-215 accepts
(it also refuses small-order and non-canonical A and R, and signatures that hold only with the
cofactor; docs/ED25519.md), so each signature it refuses is decided again with ZIP-215's rules:
by the C fallback's kernel (accel's "cpu" backend, a fraction of a millisecond), or by the
plain-Python ZIP-215 model (accel/ed25519_ref.py) where no C fallback is built. Honest signatures
cost one libsodium call as before. (The Python model alone took about 5 ms a refused signature:
a Byzantine validator's votes or timeouts with bad signatures, each one verify, at its 2,000
frames a second held a software-only validator's loop for 10 s a second.) Software-only and
accelerated validators therefore agree on every signature and may share a network."""
from __future__ import annotations

import hashlib

import numpy as np

import accel
from accel import Packed
from accel.ed25519_ref import zip215_verdict
from accel.merkle import hashlib_root
from accel.packing import pack_fixed, pack_messages

MODES = ("accel", "software")


class Verifier:
    def __init__(self, validation: str = "accel", backend=None):
        if validation not in MODES:
            raise ValueError(f"validation must be one of {MODES}, not {validation!r}")
        self.validation, self.backend = validation, backend

    def verify_all(self, keys: np.ndarray, messages: Packed, sigs: np.ndarray, certs=((), (), ())) -> bool:
        """Whether every signature holds: the block's (keys (n, 32), packed messages, (n, 64)) and
        the certificates' (lists of keys, messages and signatures), in one batch."""
        cert_keys, cert_msgs, cert_sigs = certs
        if len(cert_keys):
            keys = np.concatenate([keys, pack_fixed(list(cert_keys), 32, "public key")])
            messages = Packed.join([messages, Packed(*pack_messages(list(cert_msgs)))])
            sigs = np.concatenate([sigs, pack_fixed(list(cert_sigs), 64, "signature")])
        if self.validation == "accel":
            return accel.ed25519_verify_all(keys, messages, sigs, backend=self.backend)
        return all(_software_verdicts(keys, messages, sigs))  # stops at the first bad one

    def verify_each(self, keys: np.ndarray, messages: Packed, sigs: np.ndarray) -> np.ndarray:
        """A verdict per signature (a mempool admitting a batch of transactions)."""
        if self.validation == "accel":
            return accel.ed25519_verify_batch(keys, messages, sigs, backend=self.backend)
        return np.fromiter(_software_verdicts(keys, messages, sigs), bool, count=len(keys))

    def digests(self, items: Packed) -> list[bytes]:
        """SHA-256 of every item."""
        if self.validation == "accel":
            return accel.sha256_many(items, backend=self.backend)
        return [hashlib.sha256(items.item(i)).digest() for i in range(len(items))]

    def verify_lists(self, keys: list, messages: list, sigs: list) -> bool:
        """verify_all over plain lists (a vote, a timeout and its QC): one batch."""
        if not keys:
            return True
        none = Packed(np.zeros(0, np.uint8), np.zeros(1, np.uint64))
        return self.verify_all(np.zeros((0, 32), np.uint8), none, np.zeros((0, 64), np.uint8), (keys, messages, sigs))

    def verify_one(self, key: bytes, message: bytes, sig: bytes) -> bool:
        return self.verify_lists([key], [message], [sig])

    def sha256_rows(self, rows: np.ndarray) -> np.ndarray:
        """SHA-256 of each row of a 2-D uint8 array, as an (n, 32) array (a state tree's nodes)."""
        if self.validation == "accel":
            digests = accel.sha256_many(rows, backend=self.backend)
        else:
            digests = [hashlib.sha256(r.tobytes()).digest() for r in rows]
        return np.frombuffer(b"".join(digests), np.uint8).reshape(-1, 32)

    def merkle_root(self, leaves) -> bytes:
        if self.validation == "accel":
            return accel.merkle_root(leaves, backend=self.backend)
        packed = Packed(*pack_messages(leaves, "leaf"))  # (taken and refused as accel does)
        return hashlib_root([packed.item(i) for i in range(len(packed))])


def _software_verdicts(keys: np.ndarray, messages: Packed, sigs: np.ndarray):
    """Software-only ZIP-215 verdicts, one at a time: PyNaCl (libsodium) per signature, and for
    each signature it refuses, the plain-Python ZIP-215 check (accel.ed25519_ref).

    Why libsodium's acceptance settles the verdict: it accepts only if S < L (the same canonical-S
    test as ZIP-215), A is a canonical encoding of a curve point that is not of small order, R is
    not of small order, and the canonical encoding of [S]B - [k]A, with k = SHA-512(R || A || M)
    over the bytes as given, equals R's 32 bytes. Then A and R decode under ZIP-215 to the same
    points, k is ZIP-215's k, and [S]B = R + [k]A holds, so [8][S]B = [8]R + [8][k]A holds too:
    every signature libsodium accepts is ZIP-215-valid. Only its refusals need a second look
    (tests/test_ed25519.py compares these verdicts with accel's on the edge cases and suites)."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey
    if not len(keys) == len(messages) == len(sigs):  # as accel refuses: never a verdict on part of a batch
        raise ValueError(f"batch lengths differ: {len(keys)} keys, {len(messages)} messages, {len(sigs)} signatures")
    data, offsets = messages.data.tobytes(), messages.offsets.tolist()
    for i in range(len(keys)):
        key, msg, sig = keys[i].tobytes(), data[offsets[i]:offsets[i + 1]], sigs[i].tobytes()
        try:
            VerifyKey(key).verify(msg, sig)
            yield True
        except (BadSignatureError, ValueError):
            yield _refused_verdict(key, msg, sig)


def _refused_verdict(key: bytes, msg: bytes, sig: bytes) -> bool:
    """The ZIP-215 verdict on one signature libsodium refused: the C fallback's (the verdicts every
    backend gives), else the plain-Python model's where no C fallback is built (the same verdicts,
    tests/test_ed25519.py; about 30 times slower)."""
    # Any failure of the C path is that path's, never the signature's: not only a C fallback that
    # is not built (BackendUnavailable), but one built from other sources (KernelError: no such
    # kernel) and an accel configuration that does not load (ConfigError from an ACCEL_* variable
    # or an accel.toml in the working directory, which a software-only validator never reads
    # otherwise and its start does not check). Each raised out of every verify call that met a
    # signature libsodium refuses: a block carrying a transaction whose signature only ZIP-215
    # accepts was refused ("validation raised") by software-only validators and taken by the
    # accelerated ones. The plain-Python model gives the same verdict.
    try:
        got = accel.ed25519_verify_batch(np.frombuffer(key, np.uint8).reshape(1, 32),
                                         Packed(np.frombuffer(msg, np.uint8), np.array([0, len(msg)], np.uint64)),
                                         np.frombuffer(sig, np.uint8).reshape(1, 64), backend="cpu")
        verdict = got[0]
    except Exception:
        return zip215_verdict(key, msg, sig)
    return bool(verdict)
