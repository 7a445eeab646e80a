"""Whether this validator may start: the configured backend initialises, compiles every kernel it
runs, and gives the known answers, bit for bit. `accel check` prints the result; a node calls
check() before it joins the network and refuses to start on a backend that cannot run.

Known answers are independent of this package where a reference exists (hashlib, RFC 8032), and
otherwise the exact bits the C fallback gives on every machine (greeks, margin): every backend
must return those bits, or validators on different hardware would fork."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import config, dispatch, ed25519, merkle, risk
from .backends import Backend, BackendUnavailable, get_backend


@dataclass(frozen=True)
class KernelCheck:
    kernels: str
    ok: bool
    detail: str


# RFC 8032 section 7.1, TEST 1 and TEST 2 (public key, message, signature).
_RFC8032 = [
    ("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
]
_SMALL_ORDER = bytes([1] + [0] * 31)  # the identity: valid as A and R under ZIP-215, never a safe key
# A = [a]B + T and R = [r]B + T' with T, T' of order 8: valid only by the cofactored equation, the
# cases a miscompiled GPU build once got wrong (bench/RESULTS.md). The first challenge is even (a
# GPU's regular digits use k + L there), the second odd. Made by accel.ed25519_ref's model.
_COFACTORED = [
    ("6b951dc903395ccad29ddebb9169d2b5df6f1942dd0cd4806c74ce291a15bd7d",
     "24a3553ab7778b4fac4bf44e9300efbc760f8e5817770ac7685a54ce12fea0bf0a73c55ba7ac62df2f7b639945afc0bac21f57560"
     "3fcf36004c9047de848f33a18727051f518d307fd8c43e35966b3c3926bbff2502823a2483e6df3cc47a8a85bdbab90c87bda6b07"
     "a31bce83babe6746b6293523c938c35272e91a98dbf61a3fbc",
     "8c7f903876ab4a9e9ca22e146ab3bb4459bd69252d154eaf805ff0136b3a2bac20053c6de9e86bf8ba541fd7f8d654fea0f7c39b39"
     "43043bc3e573df33c97101"),
    ("01292f0540898cc8c1d71377fd672307d18278cf91e0c865ec4b538d0de66b7c",
     "9eb07e8bc7c2158f9fabaa96f7e47c3f520348ad757e7244a9315b26a24328a87c",
     "5a700d9e382e51857ad804b5e887e02fddf1a4f8e84ec1201cead7962e80e3fab654d45e8aff82fab6170daecdcdfb0cfdbc3da944"
     "8678516b0ea6743d39b107"),
]

# Exact bits of the C fallback (float64 as uint64; margins in ticks) for the inputs below.
_GREEKS_BITS = [
    [4662411763738087777, 4631349639758068347, 4620389392870878458],
    [4601780209201128925, 13820645456726742413, 4602893852666288461],
    [4537069703166213068, 4562027159615698758, 4581208838597913660],
    [4667711676544117185, 4635667659355412389, 4630618318471110450],
    [13892295579606468834, 13880715666746410371, 13838706655046761476],
    [13876776601338122593, 13829422869134220487, 13843761429725654266],
]
_PORTFOLIO_TICKS = [[2352727931191, 102733675], [1809790716301, 79025904], [8, 9]]
_STANDARD_TICKS = [[4254786053097, 41190638], [2814336053097, 36190638]]


def _signatures():
    cases = _RFC8032 + _COFACTORED
    pks = [bytes.fromhex(pk) for pk, _, _ in cases]
    msgs = [bytes.fromhex(m) for _, m, _ in cases]
    sigs = [bytes.fromhex(s) for _, _, s in cases]
    tampered = bytearray(sigs[0])
    tampered[40] ^= 1
    off_by_one = bytearray(sigs[2])
    off_by_one[32] ^= 1  # S of the first cofactored case, one apart
    return (pks + [pks[0], pks[2], _SMALL_ORDER], msgs + [msgs[0], msgs[2], b"any message"],
            sigs + [bytes(tampered), bytes(off_by_one), _SMALL_ORDER + bytes(32)]), \
        [True, True, True, True, False, False, True]


def _block(b: Backend):
    """A block's worth of signatures for the batch path, what validate() calls (verify_all): the
    valid cases of _signatures over and over, enough for every thread of the C fallback a chunk of
    at least 8 (native/ed25519.c's ED_BATCH_MIN: smaller chunks are single checks); and the same
    with the tampered one in the middle."""
    sigs, want = _signatures()
    valid = [i for i, ok in enumerate(want) if ok]
    n = 8 * getattr(b, "threads", 16) + 1
    batch = [[col[valid[i % len(valid)]] for i in range(n)] for col in sigs]
    bad = [list(col) for col in batch]
    for col, src in zip(bad, sigs):
        col[n // 2] = src[want.index(False)]
    return batch, bad


def _book():
    """Two accounts; the first short a call and long a put of another strike and expiry (vegas of
    both signs: each at its own worst vol state) and long a future, in two rows (they net)."""
    marks = risk.Marks(index=60000.0, rate=0.02, forward=np.array([60100.0, 60200.0, 60300.0, 60150.0]),
                       strike=np.array([60000.0, 55000.0, 0.0, 57000.0]), expiry=np.array([0.1, 0.3, 0.2, 0.05]),
                       vol=np.array([0.6, 0.7, 0.0, 0.8]),
                       kind=np.array([risk.CALL, risk.PUT | risk.INVERSE, risk.FUTURE, risk.PUT], np.uint8))
    return risk.Portfolio(offsets=[0, 4, 5], instrument=[0, 2, 3, 2, 1], size=[-3.0, 1.0, 2.0, 0.5, -2.0]), marks


def _cases(b: Backend) -> list[tuple[str, Callable[[], tuple[bool, str]]]]:
    sigs, want = _signatures()
    messages = [b"", b"abc", bytes(range(256)) * 4]
    leaves = [i.to_bytes(4, "little") * 8 for i in range(1000)]
    greeks_in = ([60000.0, 2000.0, 100.0], [65000.0, 1800.0, 100.0], [0.25, 0.02, 1.0], 0.03, [0.6, 1.1, 0.2],
                 [True, False, True])

    def verdicts():
        got = [bool(v) for v in ed25519._verify(b, *ed25519._packed(*sigs))]
        return got == want, f"{got} (RFC 8032 x2, cofactored only x2, two tampered, ZIP-215 small order)"

    def shaped():
        n, pks, data, offsets, s = ed25519._packed(*sigs)
        out = b.empty((n,), np.uint8)
        ed25519.verify_on_gpu(b, n, *(b.to_device(a) for a in (pks, data, offsets, s)), out,
                              ed25519.hash_order(offsets))
        got = [bool(v) for v in b.to_host(out)]
        return got == want, f"{got} (GPU-shaped kernels)"

    def block():
        batch, bad = _block(b)
        n = len(batch[0])
        whole, one_bad = ed25519.ed25519_verify_all(*batch, backend=b), ed25519.ed25519_verify_all(*bad, backend=b)
        each = ed25519.ed25519_verify_batch(*bad, backend=b)
        ok = whole and not one_bad and each.tolist() == [i != n // 2 for i in range(n)]
        return ok, f"a block of {n}: all valid {whole}, with one tampered {one_bad}, the tampered alone refused {ok}"

    def safe_keys():
        got = [ed25519.ed25519_key_is_safe(k, backend=b) for k in (sigs[0][0], _SMALL_ORDER)]
        return got == [True, False], f"{got} (an RFC 8032 key, the identity)"

    def sha256():
        ok = merkle.sha256_many(messages, backend=b) == [hashlib.sha256(m).digest() for m in messages]
        return ok, "3 messages against hashlib"

    def merkle_root():
        root = merkle.merkle_root(leaves, backend=b)
        return root == merkle.hashlib_root(leaves), f"1,000 leaves against a hashlib tree: {root.hex()[:16]}..."

    def greeks():
        got = [a.view(np.uint64).tolist() for a in risk.greeks(*greeks_in, backend=b)]
        return got == _GREEKS_BITS, "3 options, price and 5 greeks, exact bits"

    def portfolio():
        got = [a.tolist() for a in risk.portfolio_margin(*_book(), backend=b)]
        return got == _PORTFOLIO_TICKS, f"2 accounts, vegas of both signs, ticks {got[1]}"

    def standard():
        got = [a.tolist() for a in risk.standard_margin(*_book(), backend=b)]
        return got == _STANDARD_TICKS, f"2 accounts, ticks {got[1]}"

    cases = [("ed25519_verify", verdicts), ("ed25519_verify_all", block)]
    if b.name != "cpu":
        cases.append(("ed25519_challenge + ed25519_verify_k", shaped))
    return cases + [("ed25519_key_is_safe", safe_keys), ("sha256_many", sha256),
                    ("merkle_leaves + merkle_level", merkle_root), ("greeks", greeks),
                    ("portfolio_margin", portfolio), ("standard_margin", standard)]


def check(backend: str | None = None) -> tuple[str, list[KernelCheck]]:
    """(the backend's description, one KernelCheck per kernel). A backend that cannot start gives
    one failing line saying why. Raises ConfigError for a bad configuration."""
    cfg = config.get()
    name = cfg.backend if backend is None else backend
    try:
        b = get_backend(backend)
    except BackendUnavailable as exc:
        return f"{name} (configured)" if backend is None else name, [KernelCheck("backend", False, str(exc))]
    results = []
    # a GPU backend leaves batches below gpu_min_batch (blocks under 4,096 signatures, all risk
    # work by default) on the C fallback: its answers decide blocks too
    cases = _cases(b) if b.name == "cpu" else _cases(b) + [
        (f"cpu: {kernels}", case) for kernels, case in _cases(get_backend("cpu"))]
    for kernels, case in cases:
        try:
            with dispatch.no_fallback():
                ok, detail = case()
        except Exception as exc:  # a compile or launch failure is this kernel's verdict
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        results.append(KernelCheck(kernels, ok, detail))
    return f"{b.name}: {b.device}", results
