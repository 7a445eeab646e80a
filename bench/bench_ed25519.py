"""ed25519_verify_batch on each backend against a PyNaCl (libsodium) loop and a `cryptography`
(OpenSSL) loop in the same process. The C fallback runs twice: on all cores, and on one thread
(the per-core comparison with libsodium, which verifies on one core)."""
import random

import numpy as np
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

import accel
from accel.backends.cpu import CpuBackend

SIZES = [1, 64, 1024, 16384]


@pytest.fixture(scope="module")
def signed():
    """16,384 signatures by 256 keys over 64..256-byte messages (vote-sized); sizes take prefixes."""
    rng = random.Random(16384)
    keys = [SigningKey(rng.randbytes(32)) for _ in range(256)]
    pks, msgs, sigs = [], [], []
    for i in range(max(SIZES)):
        sk = keys[i % len(keys)]
        msg = rng.randbytes(rng.randrange(64, 257))
        pks.append(bytes(sk.verify_key))
        msgs.append(msg)
        sigs.append(sk.sign(msg).signature)
    return (np.frombuffer(b"".join(pks), np.uint8).reshape(-1, 32), msgs,
            np.frombuffer(b"".join(sigs), np.uint8).reshape(-1, 64))


def _prefix(signed, n):
    pks, msgs, sigs = signed
    return pks[:n], msgs[:n], sigs[:n]


def _rounds(n, slow=False):
    if slow:
        return 1 if n >= 16384 else 3
    return 3 if n >= 16384 else 10 if n >= 1024 else 50


def _count_valid(verify, rejected, keys, msgs, sigs):
    """A plain loop over one library's verify(key, msg, sig), counting the signatures it accepts."""
    ok = 0
    for key, msg, sig in zip(keys, msgs, sigs):
        try:
            verify(key, msg, sig)
            ok += 1
        except rejected:
            pass
    return ok


def _nacl_loop(keys, msgs, sigs):
    return _count_valid(lambda k, m, s: k.verify(m, s), BadSignatureError, keys, msgs, sigs)


def _cryptography_loop(keys, msgs, sigs):
    return _count_valid(lambda k, m, s: k.verify(s, m), InvalidSignature, keys, msgs, sigs)


@pytest.mark.parametrize("n", SIZES)
def test_ed25519_pynacl(benchmark, signed, n):
    pks, msgs, sigs = _prefix(signed, n)
    keys = [VerifyKey(pk.tobytes()) for pk in pks]
    sig_bytes = [s.tobytes() for s in sigs]
    benchmark.group = f"ed25519_verify n={n}"
    benchmark.extra_info.update(impl="pynacl (libsodium, 1 core)", n=n, baseline=True)
    assert benchmark.pedantic(_nacl_loop, args=(keys, msgs, sig_bytes), rounds=_rounds(n)) == n


@pytest.mark.parametrize("n", SIZES)
def test_ed25519_cryptography(benchmark, signed, n):
    pks, msgs, sigs = _prefix(signed, n)
    keys = [Ed25519PublicKey.from_public_bytes(pk.tobytes()) for pk in pks]
    sig_bytes = [s.tobytes() for s in sigs]
    benchmark.group = f"ed25519_verify n={n}"
    benchmark.extra_info.update(impl="cryptography (OpenSSL, 1 core)", n=n)
    assert benchmark.pedantic(_cryptography_loop, args=(keys, msgs, sig_bytes), rounds=_rounds(n)) == n


@pytest.mark.parametrize("n", SIZES)
def test_ed25519_accel(benchmark, backend, signed, n):
    pks, msgs, sigs = _prefix(signed, n)
    assert accel.ed25519_verify_batch(pks, msgs, sigs, backend=backend).all()  # also compiles
    benchmark.group = f"ed25519_verify n={n}"
    benchmark.extra_info.update(impl=f"accel-{backend.name}", device=backend.device, n=n)
    slow = backend.name == "opencl" and not backend.is_gpu
    benchmark.pedantic(accel.ed25519_verify_batch, args=(pks, msgs, sigs), kwargs={"backend": backend},
                       rounds=_rounds(n, slow), warmup_rounds=0 if slow else 1)


@pytest.fixture
def cpu_one_thread():
    """The C fallback limited to one OpenMP thread (set per call, so other backends keep theirs)."""
    return CpuBackend(threads=1)


@pytest.mark.parametrize("n", SIZES)
def test_ed25519_accel_cpu_one_thread(benchmark, cpu_one_thread, signed, n):
    pks, msgs, sigs = _prefix(signed, n)
    benchmark.group = f"ed25519_verify n={n}"
    benchmark.extra_info.update(impl="accel-cpu (1 thread)", n=n)
    result = benchmark.pedantic(accel.ed25519_verify_batch, args=(pks, msgs, sigs),
                                kwargs={"backend": cpu_one_thread}, rounds=_rounds(n), warmup_rounds=1)
    assert result.all()


BAD_N = 1024


def _all_bad(signed):
    """The first BAD_N signatures, each with one bit of S flipped: the batch check fails every time
    and the C fallback splits down to single checks (the adversarial case)."""
    pks, msgs, sigs = _prefix(signed, BAD_N)
    bad = sigs.copy()
    bad[:, 40] ^= 1
    return pks, msgs, bad


def test_ed25519_all_bad_accel_cpu(benchmark, signed):
    pks, msgs, bad = _all_bad(signed)
    assert not accel.ed25519_verify_batch(pks, msgs, bad, backend="cpu").any()
    benchmark.group = f"ed25519_verify all-bad n={BAD_N}"
    benchmark.extra_info.update(impl="accel-cpu (every signature bad)", n=BAD_N)
    benchmark.pedantic(accel.ed25519_verify_batch, args=(pks, msgs, bad), kwargs={"backend": "cpu"},
                       rounds=5, warmup_rounds=1)


def test_ed25519_all_bad_pynacl(benchmark, signed):
    pks, msgs, bad = _all_bad(signed)
    keys = [VerifyKey(bytes(k)) for k in pks]
    sig_bytes = [bytes(s) for s in bad]
    benchmark.group = f"ed25519_verify all-bad n={BAD_N}"
    benchmark.extra_info.update(impl="pynacl (libsodium, 1 core)", n=BAD_N, baseline=True)
    assert benchmark.pedantic(_nacl_loop, args=(keys, msgs, sig_bytes), rounds=5) == 0


BAD_COUNTS = [0, 1, 8, 64, 16384]


def _with_bad(signed, bad):
    """All 16,384 signatures with `bad` of them broken (one bit of S), evenly spaced: every split
    of a failed batch then finds bad signatures on both sides, the costliest placement."""
    pks, msgs, sigs = signed
    sigs = sigs.copy()
    where = np.linspace(0, len(sigs) - 1, bad).astype(int) if bad else []
    sigs[where, 40] ^= 1
    return pks, msgs, sigs


@pytest.mark.parametrize("bad", BAD_COUNTS)
def test_ed25519_bad_per_signature_cpu(benchmark, signed, bad):
    pks, msgs, sigs = _with_bad(signed, bad)
    assert int((~accel.ed25519_verify_batch(pks, msgs, sigs, backend="cpu")).sum()) == bad
    benchmark.group = "ed25519 n=16384 with b bad: per-signature verdicts"
    benchmark.extra_info.update(impl="accel-cpu ed25519_verify_batch", n=len(sigs), bad=bad, baseline=bad == 0)
    benchmark.pedantic(accel.ed25519_verify_batch, args=(pks, msgs, sigs), kwargs={"backend": "cpu"},
                       rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("bad", BAD_COUNTS)
def test_ed25519_bad_verify_all_cpu(benchmark, signed, bad):
    pks, msgs, sigs = _with_bad(signed, bad)
    assert accel.ed25519_verify_all(pks, msgs, sigs, backend="cpu") is (bad == 0)
    benchmark.group = "ed25519 n=16384 with b bad: one verdict (ed25519_verify_all)"
    benchmark.extra_info.update(impl="accel-cpu ed25519_verify_all", n=len(sigs), bad=bad, baseline=bad == 0)
    benchmark.pedantic(accel.ed25519_verify_all, args=(pks, msgs, sigs), kwargs={"backend": "cpu"},
                       rounds=3, warmup_rounds=1)


def test_ed25519_single_check_path_cpu(benchmark, signed):
    """The per-signature loop (no batch equation) on the same 16,384: the cost the split of a
    failed batch is measured against."""
    from accel.packing import pack_messages
    pks, msgs, sigs = signed
    data, offsets = pack_messages(msgs)
    out = np.empty(len(sigs), np.uint8)
    cpu = accel.get_backend("cpu")
    benchmark.group = "ed25519 n=16384 with b bad: per-signature verdicts"
    benchmark.extra_info.update(impl="accel-cpu single checks only (ed25519_verify_single)", n=len(sigs))
    benchmark.pedantic(cpu.launch, args=("ed25519_verify_single", len(sigs), pks, data, offsets, sigs, out),
                       rounds=3, warmup_rounds=1)
    assert out.all()
