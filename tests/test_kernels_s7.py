"""Registration key checks batched, seventh session (found by review s7: one kernel call a key).

A registration called accel.ed25519_key_is_safe once per key, about 7 us of call overhead each on
the C fallback (a block of 4,000 registrations executed in 38 ms against 11 ms for 4,000
deposits). Now accel.ed25519_keys_are_safe checks n keys in one launch, on every backend through
the same dispatch as the other calls (gpu_min_batch, a failing GPU redone on the C fallback, with
the same verdicts and a log line), and ClearingApp uses it: submit_many refuses unsafe
registrations at admission in one call, block execution (validate, execute) checks all of a
block's registration keys in one call before executing, and a proposal reuses what admission
found; Clearing.register skips its own call for keys so checked (Clearing.safe_keys)."""
import hashlib
import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
from nacl.signing import SigningKey

import accel
from accel import config, dispatch
from accel import ed25519 as ed
from accel.ed25519_ref import L, P, add, decode, encode, key_is_safe, mul, point_from_y, torsion_points
from consensus.apps import clearing_app
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing_app import ClearingApp
from consensus.verify import Verifier
from tests.test_backends import FailingGpu
from tests.test_clearing_columns import funded_genesis
from tests.test_clearing_properties import as_txs, block_of, signed
from tests.test_ledger_proposal_s6 import reference

TORSION = torsion_points()
SHARED = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "ed25519"


@pytest.fixture(autouse=True)
def _quiet_consensus():
    logging.getLogger("consensus").disabled = True
    yield
    logging.getLogger("consensus").disabled = False


def key_cases() -> list[bytes]:
    """Random keys (valid points or not), keys of full, mixed and small order, and the
    non-canonical encodings: y >= p, x = 0 with the sign bit, small order written both ways."""
    rnd = random.Random(7)
    good = [bytes(SigningKey(rnd.randbytes(32)).verify_key) for _ in range(40)]
    out = good + [rnd.randbytes(32) for _ in range(200)]
    out += [encode(add(decode(k), TORSION[1 + i % 7])) for i, k in enumerate(good[:14])]  # mixed order: safe
    out += [encode(t) for t in TORSION]
    out += [(P + d).to_bytes(32, "little") for d in range(19)]  # y = p .. p + 18: non-canonical
    out += [((P + d) | 1 << 255).to_bytes(32, "little") for d in range(19)]
    out += [(1 | 1 << 255).to_bytes(32, "little"), ((P - 1) | 1 << 255).to_bytes(32, "little"),
            (0 | 1 << 255).to_bytes(32, "little"), (2).to_bytes(32, "little")]
    for y in range(2, 60):  # points with x = 0 are only y = +-1; others: both signs
        for sign in (0, 1):
            pt = point_from_y(y, sign)
            if pt is not None:
                out.append(encode(pt))
    for k in good[:10]:  # the same y with its sign bit flipped, and y + p where it fits in 255 bits
        out.append(bytes(k[:31]) + bytes([k[31] ^ 0x80]))
        y = int.from_bytes(k, "little") & ((1 << 255) - 1)
        if y + P < 1 << 255:
            out.append(((y + P) | (int.from_bytes(k, "little") & 1 << 255)).to_bytes(32, "little"))
    if (SHARED / "speccheck_cases.json").exists():
        out += [bytes.fromhex(c["pub_key"]) for c in json.loads((SHARED / "speccheck_cases.json").read_text())]
    if (SHARED / "wycheproof_ed25519_test.json").exists():
        data = json.loads((SHARED / "wycheproof_ed25519_test.json").read_text())
        for group in data.get("testGroups", []):
            pk = (group.get("publicKey") or group.get("key") or {}).get("pk")
            if pk and len(pk) == 64:
                out.append(bytes.fromhex(pk))
    return out


def test_keys_are_safe_is_key_is_safe_and_the_reference_on_every_backend(backends):
    """One batched call's verdicts equal ed25519_key_is_safe's, one key at a time, and the Python
    reference's, on every backend here (C fallback, OpenCL under PoCL, CUDA if present), for keys
    given as a list or an (n, 32) array; both verdicts appear."""
    keys = key_cases()
    ref = np.array([key_is_safe(k) for k in keys])
    assert 0 < ref.sum() < len(keys)
    array = np.frombuffer(b"".join(keys), np.uint8).reshape(-1, 32)
    for b in backends:
        got = accel.ed25519_keys_are_safe(keys, backend=b)
        assert got.dtype == bool and got.shape == (len(keys),)
        assert np.array_equal(got, ref), b.name
        assert np.array_equal(accel.ed25519_keys_are_safe(array, backend=b), ref), b.name
        assert [accel.ed25519_key_is_safe(k, backend=b) for k in keys[:80]] == ref[:80].tolist(), b.name
    assert accel.ed25519_keys_are_safe([]).shape == (0,)
    assert accel.ed25519_keys_are_safe(np.zeros((0, 32), np.uint8)).shape == (0,)


def test_keys_are_safe_refuses_malformed_input_with_a_clear_error(cpu):
    good = bytes(SigningKey(bytes(32)).verify_key)
    with pytest.raises(ValueError, match="public key 1 is 31 bytes, expected 32"):
        accel.ed25519_keys_are_safe([good, good[:31]], backend=cpu)
    with pytest.raises(ValueError, match=r"shape \(n, 32\)"):
        accel.ed25519_keys_are_safe(np.zeros((3, 31), np.uint8), backend=cpu)
    with pytest.raises(ValueError, match=r"shape \(n, 32\)"):
        accel.ed25519_keys_are_safe(np.zeros((3, 32), np.int32), backend=cpu)
    with pytest.raises(ValueError, match=r"shape \(n, 32\)"):
        accel.ed25519_keys_are_safe(np.zeros(32, np.uint8), backend=cpu)
    with pytest.raises(TypeError):
        accel.ed25519_keys_are_safe([good, "not bytes" * 4], backend=cpu)
    with pytest.raises(TypeError):
        accel.ed25519_keys_are_safe(good, backend=cpu)  # one key is not a list of keys


def test_a_failing_gpu_is_redone_on_the_c_fallback_with_the_same_verdicts(cpu, caplog, monkeypatch):
    monkeypatch.setenv("ACCEL_GPU_FALLBACK", "true")
    config.reload()
    keys = key_cases()
    expected = accel.ed25519_keys_are_safe(keys, backend=cpu)
    before = dispatch.fallbacks().get(("cuda", "ed25519"), 0)
    with caplog.at_level(logging.WARNING, logger="accel"):
        got = accel.ed25519_keys_are_safe(keys, backend=FailingGpu(cpu, 0))
    assert np.array_equal(got, expected)
    assert "redoing the work on the C fallback" in caplog.text
    assert dispatch.fallbacks()[("cuda", "ed25519")] == before + 1


def test_a_small_batch_for_the_configured_gpu_stays_on_the_c_fallback(cpu, monkeypatch):
    """backend=None with a GPU configured: below gpu_min_batch the batch runs on the C fallback,
    as every other Ed25519 call does."""
    launches = []

    class Gpu(FailingGpu):
        def launch(self, kernel, n, *args, group=None):
            launches.append((kernel, n))
            self.cpu.launch(kernel, n, *args)
    gpu = Gpu(cpu, 1 << 30)
    monkeypatch.setattr(dispatch, "get_backend", lambda b: gpu if b is None else cpu if b == "cpu" else b)
    keys = key_cases()
    small = accel.ed25519_keys_are_safe(keys[:10])
    assert launches == []
    monkeypatch.setenv("ACCEL_GPU_MIN_BATCH", "5")
    config.reload()
    assert np.array_equal(accel.ed25519_keys_are_safe(keys[:10]), small)
    assert launches == [("ed25519_key_is_safe", 10)]


# ---- the clearing app -----------------------------------------------------------------------------


class KernelCalls:
    """Launches of the key check kernel (any n) through ed25519.dispatch."""

    def __init__(self, monkeypatch):
        self.calls: list[int] = []
        real = dispatch.run

        def counted(backend, fn, n=None, kernel=None):
            out = real(backend, fn, n, kernel)
            if kernel == "ed25519" and getattr(fn, "__qualname__", "").startswith("_keys_safe"):
                self.calls.append(n)
            return out
        monkeypatch.setattr(ed.dispatch, "run", counted)


def registrations(base: int, n: int):
    sk = [SigningKey(bytes([base]) + i.to_bytes(4, "big") * 7 + bytes(3)) for i in range(n)]
    return [signed(ctx.register(bytes(s.verify_key)), [s]) for s in sk]


UNSAFE = [encode(TORSION[3]), (P + 1).to_bytes(32, "little"), (1 | 1 << 255).to_bytes(32, "little")]


def test_admission_refuses_unsafe_registrations_in_one_batched_call(monkeypatch):
    """Before, an unsafe key's registration was admitted (only the proposal refused it) and each
    key cost a call of its own; now submit_many checks the batch's new keys in one call, refuses
    the unsafe ones with register's reason before their signatures are checked (a mark listing no
    signer needs none; an unsafe key's registration names it as its signer), and the proposal that
    takes the safe ones calls the kernel no more."""
    c = funded_genesis()
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    good = registrations(91, 20)
    bad = [(ctx.register(k), [bytes(64)]) for k in UNSAFE]
    calls = KernelCalls(monkeypatch)
    reasons = app.submit_many(good[:10] + bad + good[10:])
    assert calls.calls == [20 + len(UNSAFE)]
    assert reasons[:10] == [""] * 10 and reasons[10 + len(UNSAFE):] == [""] * 10
    for r in reasons[10:10 + len(UNSAFE)]:
        assert "is unsafe (non-canonical or of small order)" in r
    assert app.submit_many(good[:3]) == [""] * 3 and calls.calls == [20 + len(UNSAFE)]  # known: no call
    del calls.calls[:]
    txs, state = app.propose(app.genesis, set())
    assert len(txs) == 20
    assert calls.calls == []
    v = ClearingApp(Verifier("software"), c.snapshot())
    verdict = v.validate(v.genesis, block_of(txs, bytes(32), state.root, v), ((), (), ()))
    assert verdict.ok and verdict.state.root == state.root


def test_block_execution_checks_every_registration_key_in_one_call(monkeypatch):
    """A block of 300 registrations and deposits between them, validated by a validator whose
    mempool holds none of them: one kernel call of 300 keys, the only one (before: 300 calls of
    one); a replay after a restart (execute) the same, and none for keys it checked already; the
    state root equals the proposer's."""
    c = funded_genesis()
    items = registrations(92, 300)
    proposer = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    assert proposer.submit_many(items) == [""] * 300
    txs, state = proposer.propose(proposer.genesis, set())
    assert len(txs) == 300
    for mode in ("accel", "software"):
        v = ClearingApp(Verifier(mode, "cpu") if mode == "accel" else Verifier("software"), c.snapshot())
        calls = KernelCalls(monkeypatch)
        verdict = v.validate(v.genesis, block_of(txs, bytes(32), state.root, v), ((), (), ()))
        assert verdict.ok and verdict.state.root == state.root
        assert calls.calls == [300]  # (before: 300 calls of one key)
        del calls.calls[:]
        assert v.execute(v.genesis, txs.bodies).root == state.root  # (replay: the keys known now)
        assert calls.calls == []
        fresh = ClearingApp(v.verifier, c.snapshot())  # (a restart's replay)
        assert fresh.execute(fresh.genesis, txs.bodies).root == state.root
        assert calls.calls == [300]
        monkeypatch.undo()


def test_an_unsafe_registration_makes_a_block_invalid_whatever_was_checked_before(monkeypatch):
    """A Byzantine proposer's block registering an unsafe key (and safe ones the validator checked
    before, at admission and in an earlier block it validated): invalid for accel and software-only
    validators alike, with register's reason; the batched check never lets an unsafe key through,
    and what one block checked is not carried with its state."""
    c = funded_genesis()
    good = registrations(93, 5)
    for mode in ("accel", "software"):
        v = ClearingApp(Verifier(mode, "cpu") if mode == "accel" else Verifier("software"), c.snapshot())
        assert v.submit_many(good[:2]) == ["", ""]
        ok = as_txs(good)
        root = reference(v.genesis, [b for b, _ in good]).state_root(v.verifier.sha256_rows)
        verdict = v.validate(v.genesis, block_of(ok, bytes(32), root, v), ((), (), ()))
        assert verdict.ok, verdict.reason
        assert "safe_keys" not in vars(verdict.state.clearing)
        for unsafe in UNSAFE:
            body = ctx.register(unsafe)
            bad = as_txs(good[:3] + [(body, [bytes(64)])] + good[3:])
            # the signature does not verify either: the block is refused for it first; with the
            # signature skipped (in the mempool), execution itself must refuse the key
            v.mempool[hashlib.sha256(body).digest()] = clearing_app.Pending(body, [bytes(64)], ctx.decode(body),
                                                                           bytes(64))
            verdict = v.validate(v.genesis, block_of(bad, bytes(32), bytes(32), v), ((), (), ()))
            assert not verdict.ok
            assert "is unsafe (non-canonical or of small order)" in verdict.reason, verdict.reason
            with pytest.raises(clearing_app.Rejected, match="is unsafe"):
                v._run(v.genesis, ctx.decode_all(bad.bodies))
            assert unsafe not in v._safe_keys


def test_a_snapshot_does_not_carry_the_checked_keys():
    c = funded_genesis()
    c.safe_keys = {bytes(32)}
    assert c.snapshot().safe_keys == frozenset()
    assert c.safe_keys == {bytes(32)}
    with pytest.raises(clearing_app.Rejected, match="is unsafe"):  # a key not in it is checked as before
        c.snapshot().register(UNSAFE[0])
