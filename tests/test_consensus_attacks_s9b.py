"""Session 9, second round: attacks on the first round's fixes to the consensus core, its store
and the software-only verifier (tests/test_consensus_attacks_s9.py)."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import accel  # noqa: E402
from accel.backends import KernelError  # noqa: E402
from accel.config import ConfigError  # noqa: E402
from consensus import verify  # noqa: E402


# ---- software-only verification: the C path's failures are never a verdict ---------------------

@pytest.mark.parametrize("error", [ConfigError("ACCEL_THREADS must be an integer, not 'abc'"),
                                   KernelError("the C fallback has no av_ed25519_verify"),
                                   RuntimeError("anything else")])
def test_a_broken_c_path_still_gives_software_only_validators_the_zip215_verdicts(monkeypatch, error):
    """Software-only mode sends each signature libsodium refuses to the C fallback's kernel and,
    where it is not built (BackendUnavailable), to the plain-Python model. Every other failure of
    that path raised out of the verify call: an accel configuration that does not load (an
    ACCEL_* variable or an accel.toml in the working directory: a software-only validator's start
    never reads it; ACCEL_THREADS=abc raised ConfigError at the first refused signature), a
    C fallback built from other sources (KernelError). A block carrying one transaction whose
    signature only ZIP-215 accepts was then refused by the software-only validators ("validation
    raised") and taken by the accelerated ones; a mempool's verify_each raised. The verdicts are
    the ZIP-215 ones whatever the C path does, the same as the accelerated backend's."""
    from test_ed25519 import EDGE
    cases = [c for c in EDGE if c[0] != "valid"][:12]
    want = accel.ed25519_verify_batch(np.array([np.frombuffer(c[1], np.uint8) for c in cases]),
                                      [c[2] for c in cases],
                                      np.array([np.frombuffer(c[3], np.uint8) for c in cases]), backend="cpu")
    assert [bool(w) for w in want] == [c[4] for c in cases]  # (the accelerated verdicts: the reference)
    assert any(want) and not all(want)

    def broken(*args, **kwargs):
        raise error
    monkeypatch.setattr(accel, "ed25519_verify_batch", broken)
    v = verify.Verifier("software")
    for (name, pk, msg, sig, verdict), w in zip(cases, want):
        assert v.verify_one(pk, msg, sig) is bool(w), name
    keys = np.array([np.frombuffer(c[1], np.uint8) for c in cases])
    sigs = np.array([np.frombuffer(c[3], np.uint8) for c in cases])
    packed = accel.Packed(*accel.packing.pack_messages([c[2] for c in cases]))
    assert list(v.verify_each(keys, packed, sigs)) == [bool(w) for w in want]
    ok = [i for i, c in enumerate(cases) if c[4]]
    assert v.verify_all(keys[ok], accel.Packed(*accel.packing.pack_messages([cases[i][2] for i in ok])), sigs[ok])
