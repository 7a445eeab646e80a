"""Ed25519 verification under ZIP-215 on every backend: RFC 8032 vectors, PyNaCl-signed batches and
their tampered copies, edge cases built here from the rule's definitions, the public Wycheproof and
speccheck suites (read from ../shared/testdata), and the C fallback's batch path against its
single checks."""
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from nacl.signing import SigningKey

import accel
# The reference model of the curve and of the rule, in plain Python: it builds the inputs and
# gives the expected verdicts here, and software-only validation (consensus/verify.py) uses it.
from accel.ed25519_ref import (BASE, L, P, add, challenge, decode, encode, is_identity, key_is_safe, mul, neg,
                               point_from_y, torsion_points, zip215_verdict)

TORSION = torsion_points()
NONCANONICAL_SMALL = [
    (P + 1).to_bytes(32, "little"),                   # identity with y = p + 1
    (P + 0).to_bytes(32, "little"),                   # y = 0 (order 4) written as y = p
    (1 | 1 << 255).to_bytes(32, "little"),            # identity with the sign bit of x = 0 set
    ((P - 1) | 1 << 255).to_bytes(32, "little"),      # (0, -1) with the sign bit set
]

# ---- fixtures ----------------------------------------------------------------------------------


def signed_batch(n, seed, max_len=2000):
    rng = random.Random(seed)
    keys = [SigningKey(rng.randbytes(32)) for _ in range(min(n, 64))]
    pks, msgs, sigs = [], [], []
    for i in range(n):
        sk = keys[i % len(keys)]
        msg = rng.randbytes(rng.randrange(max_len + 1))
        pks.append(bytes(sk.verify_key))
        msgs.append(msg)
        sigs.append(sk.sign(msg).signature)
    return pks, msgs, sigs


@pytest.fixture(scope="module")
def valid2000():
    return signed_batch(2000, seed=8032)


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def verdicts(b, pks, msgs, sigs):
    out = accel.ed25519_verify_batch(pks, msgs, sigs, backend=b)
    assert out.dtype == bool and out.shape == (len(sigs),)
    return out


# ---- RFC 8032 section 7.1 ---------------------------------------------------------------------

TEST_1024_MSG = bytes.fromhex(
    "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98fa6e264bf09efe12ee50f8f54e9f77b1"
    "e355f6c50544e23fb1433ddf73be84d879de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20329d"
    "658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc1a858efcb8550ee3a5e1998bd177e93a"
    "7363c344fe6b199ee5d02e82d522c4feba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e"
    "06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbefefd75499da96bd68a8a97b928a8bbc10"
    "3b6621fcde2beca1231d206be6cd9ec7aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed1"
    "85ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2d17ba70eb6248e594e1a2297acbbb39d"
    "502f1a8c6eb6f1ce22b3de1a1f40cc24554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f270"
    "88d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc2732e69485bbc9c90bfbd62481d9089b"
    "eccf80cfe2df16a2cf65bd92dd597b0707e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128ba"
    "b27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51addd3b75a2b1ae0784504df543af8969b"
    "e3ea7082ff7fc9888c144da2af58429ec96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9b47acdb7"
    "51fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c42f58c30c04aafdb038dda0847dd988d"
    "cda6f3bfd15c4b4c4525004aa06eeff8ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34df"
    "f7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08d78ff4ef5d63653a65040cf9bfd4aca7"
    "984a74d37145986780fc0b16ac451649de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e4"
    "88acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a32ef5b52a1ecc820e308aa342721aac09"
    "43bf6686b64b2579376504ccc493d97e6aed3fb0f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5f"
    "b93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e506b50d334ba77c225bc307ba537152f3f161"
    "0e4eafe595f6d9d90d11faa933a15ef1369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380d"
    "b2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c0618983f8741c5ef68d3a101e8a3b8ca"
    "c60c905c15fc910840b94c00a0b9d0")

# (secret key, public key, message, signature)
RFC8032 = {
    "TEST 1": ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
               "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", b"",
               "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    "TEST 2": ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
               "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", bytes.fromhex("72"),
               "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    "TEST 3": ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
               "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", bytes.fromhex("af82"),
               "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
    "TEST 1024": ("f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
                  "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e", TEST_1024_MSG,
                  "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03"),
    "TEST SHA(abc)": ("833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
                      "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
                      hashlib.sha512(b"abc").digest(),
                      "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704"),
}


def test_rfc8032_vectors_typed_in_correctly():
    for name, (sk, pk, msg, sig) in RFC8032.items():
        key = SigningKey(bytes.fromhex(sk))
        assert bytes(key.verify_key).hex() == pk, name
        assert key.sign(msg).signature.hex() == sig, name


def test_rfc8032_vectors(backend):
    vecs = list(RFC8032.values())
    pks = [bytes.fromhex(v[1]) for v in vecs]
    sigs = [bytes.fromhex(v[3]) for v in vecs]
    msgs = [v[2] for v in vecs]
    assert verdicts(backend, pks, msgs, sigs).all()
    assert not verdicts(backend, pks, msgs[1:] + msgs[:1], sigs).any()
    for pk, msg, sig in zip(pks, msgs, sigs):
        assert accel.ed25519_verify(pk, msg, sig, backend=backend)


# ---- PyNaCl-signed batches ---------------------------------------------------------------------


def test_random_signatures_all_valid(backend, valid2000):
    assert verdicts(backend, *valid2000).all()


def test_tampered_signatures_all_invalid(backend, valid2000):
    pks, msgs, sigs = valid2000
    rng = random.Random(215)
    bad_key = [flip(pk, rng.randrange(256)) for pk in pks]
    bad_msg = [flip(m, rng.randrange(8 * len(m))) if m else b"\x00" for m in msgs]
    bad_r = [flip(s, rng.randrange(256)) for s in sigs]
    bad_s = [flip(s, 256 + rng.randrange(256)) for s in sigs]
    assert not verdicts(backend, bad_key, msgs, sigs).any()
    assert not verdicts(backend, pks, bad_msg, sigs).any()
    assert not verdicts(backend, pks, msgs, bad_r).any()
    assert not verdicts(backend, pks, msgs, bad_s).any()


def test_every_padding_boundary(backend):
    """Messages of every length 0..300: R || A || M crosses each SHA-512 padding edge (112, 128, ...)."""
    sk = SigningKey(b"\x07" * 32)
    msgs = [bytes((i * 7 + j) % 256 for j in range(i)) for i in range(301)]
    sigs = [sk.sign(m).signature for m in msgs]
    pks = [bytes(sk.verify_key)] * len(msgs)
    assert verdicts(backend, pks, msgs, sigs).all()
    assert not verdicts(backend, pks, msgs[1:] + msgs[:1], sigs).any()


def test_empty_batch_and_batch_of_one(backend, valid2000):
    assert verdicts(backend, [], [], []).shape == (0,)
    empty = accel.ed25519_verify_batch(np.zeros((0, 32), np.uint8), [], np.zeros((0, 64), np.uint8),
                                       backend=backend)
    assert empty.shape == (0,) and empty.dtype == bool
    pks, msgs, sigs = valid2000
    assert verdicts(backend, pks[:1], msgs[:1], sigs[:1]).tolist() == [True]
    assert verdicts(backend, pks[:1], msgs[1:2], sigs[:1]).tolist() == [False]


def test_array_inputs_match_lists(backend, valid2000):
    pks, msgs, sigs = (x[:50] for x in valid2000)
    as_arrays = accel.ed25519_verify_batch(
        np.frombuffer(b"".join(pks), np.uint8).reshape(-1, 32), msgs,
        np.frombuffer(b"".join(sigs), np.uint8).reshape(-1, 64), backend=backend)
    assert as_arrays.all()


def test_100k_signatures_on_the_c_fallback(cpu):
    """Short messages keep signing cheap; a few bad ones at known places exercise the batch split."""
    pks, msgs, sigs = signed_batch(100_000, seed=100_000, max_len=64)
    bad = {7, 4095, 4096, 50_000, 99_999}
    sigs = [flip(s, 300) if i in bad else s for i, s in enumerate(sigs)]
    out = verdicts(cpu, pks, msgs, sigs)
    assert set(np.flatnonzero(~out).tolist()) == bad


def test_tables_match_their_generator():
    root = Path(__file__).resolve().parents[1]
    gen = subprocess.run([sys.executable, str(root / "tools" / "gen_ed25519_tables.py")],
                         capture_output=True, text=True, check=True).stdout
    assert gen == (root / "kernels" / "ed25519_tables.h").read_text()


# ---- ZIP-215 edge cases, built from the rule ---------------------------------------------------


def forge(a_scalar, a_enc, r_enc, r_scalar, msg):
    """A signature with the given nonce point and encodings: S = r + k a, k over the bytes given."""
    k = challenge(r_enc, a_enc, msg)
    s = (r_scalar + k * a_scalar) % L
    return r_enc + s.to_bytes(32, "little")


def edge_cases():
    """(name, public key, message, signature, ZIP-215 verdict)"""
    rng = random.Random(25519)
    a = rng.randrange(1, L)
    a_pt = mul(a, BASE)
    a_enc = encode(a_pt)
    r = rng.randrange(1, L)
    r_enc = encode(mul(r, BASE))
    msg = b"zip215"
    good = forge(a, a_enc, r_enc, r, msg)
    s_good = int.from_bytes(good[32:], "little")
    cases = [("valid", a_enc, msg, good, True),
             ("S = L", a_enc, msg, good[:32] + L.to_bytes(32, "little"), False),
             ("S + L", a_enc, msg, good[:32] + (s_good + L).to_bytes(32, "little"), False),
             ("S = 2^256 - 1", a_enc, msg, good[:32] + b"\xff" * 32, False),
             ("A undecodable (y = 2)", (2).to_bytes(32, "little"), msg, good, False),
             ("R undecodable (y = 2)", a_enc, msg, (2).to_bytes(32, "little") + good[32:], False)]
    for i, t in enumerate(TORSION):
        t_enc = encode(t)
        # small-order A and R with S = 0: [8](0 - R - kA) = 0 for every message
        cases.append((f"small-order A and R #{i}", t_enc, msg, t_enc + bytes(32), True))
        # small-order A with an honest R = [r]B, S = r
        cases.append((f"small-order A #{i}", t_enc, msg, r_enc + r.to_bytes(32, "little"), True))
        # small-order R, S = k a: [8](kaB - R - kaB) = 0
        k = challenge(t_enc, a_enc, msg)
        cases.append((f"small-order R #{i}", a_enc, msg, t_enc + (k * a % L).to_bytes(32, "little"), True))
    for i, enc in enumerate(NONCANONICAL_SMALL):
        assert decode(enc) is not None
        cases.append((f"non-canonical A #{i}", enc, msg, r_enc + r.to_bytes(32, "little"), True))
        # k over the non-canonical R bytes: a verifier that re-encoded R would get another k
        k = challenge(enc, a_enc, msg)
        cases.append((f"non-canonical R #{i}", a_enc, msg, enc + (k * a % L).to_bytes(32, "little"), True))
    for i, t in enumerate(TORSION[1:], 1):
        # R = [r]B + T: holds with the cofactor, fails without (S B - R - k A = -T)
        rt_enc = encode(add(mul(r, BASE), t))
        cases.append((f"cofactored only, R + T{i}", a_enc, msg, forge(a, a_enc, rt_enc, r, msg), True))
        # A = [a]B + T: k A carries k T, which the cofactor clears
        at_enc = encode(add(a_pt, t))
        cases.append((f"cofactored only, A + T{i}", at_enc, msg, forge(a, at_enc, r_enc, r, msg), True))
    return cases


EDGE = edge_cases()


def test_edge_cases_follow_the_reference_model():
    for name, pk, msg, sig, want in EDGE:
        assert zip215_verdict(pk, msg, sig) == want, name
    for name, pk, msg, sig, _ in EDGE:
        if name.startswith("cofactored only, R"):
            k = challenge(sig[:32], pk, msg)
            s = int.from_bytes(sig[32:], "little")
            cofactorless = add(mul(s, BASE), neg(add(decode(sig[:32]), mul(k, decode(pk)))))
            assert not is_identity(cofactorless), name


def test_zip215_edge_cases(backend):
    out = verdicts(backend, [c[1] for c in EDGE], [c[2] for c in EDGE], [c[3] for c in EDGE])
    assert {c[0]: bool(v) for c, v in zip(EDGE, out)} == {c[0]: c[4] for c in EDGE}


def test_key_is_safe(backend):
    key = bytes(SigningKey(b"\x01" * 32).verify_key)
    assert accel.ed25519_key_is_safe(key, backend=backend)
    mixed = encode(add(decode(key), TORSION[1]))  # mixed order is not small order
    assert accel.ed25519_key_is_safe(mixed, backend=backend)
    for t in TORSION:
        assert not accel.ed25519_key_is_safe(encode(t), backend=backend)
    for enc in NONCANONICAL_SMALL:
        assert not accel.ed25519_key_is_safe(enc, backend=backend)
    y_plus_p = [y for y in range(3, 19) if point_from_y(y) is not None][0] + P  # large order, y >= p
    assert not accel.ed25519_key_is_safe(y_plus_p.to_bytes(32, "little"), backend=backend)
    assert accel.ed25519_key_is_safe(encode(point_from_y(y_plus_p - P)), backend=backend)
    assert not accel.ed25519_key_is_safe((2).to_bytes(32, "little"), backend=backend)



def test_reference_key_is_safe_is_the_kernels_rule(cpu):
    """accel.ed25519_ref.key_is_safe (for software-only code) against the C fallback's."""
    key = bytes(SigningKey(b"\x01" * 32).verify_key)
    y_plus_p = [y for y in range(3, 19) if point_from_y(y) is not None][0] + P
    keys = ([key, encode(add(decode(key), TORSION[1])), (2).to_bytes(32, "little"), y_plus_p.to_bytes(32, "little"),
             encode(point_from_y(y_plus_p - P))] + [encode(t) for t in TORSION] + NONCANONICAL_SMALL
            + [c[1] for c in EDGE])
    assert [key_is_safe(k) for k in keys] == [accel.ed25519_key_is_safe(k, backend=cpu) for k in keys]
    assert key_is_safe(key) and not key_is_safe(encode(TORSION[1]))

# ---- public suites (../shared/testdata/ed25519) ------------------------------------------------

# The public vectors live outside the repository (../shared/testdata beside the checkout, as CI
# lays it out); ACCEL_TESTDATA points the tests at another copy of that folder.
TESTDATA = Path(os.environ.get("ACCEL_TESTDATA") or Path(__file__).resolve().parents[2] / "shared" / "testdata")


def load_or_skip(name):
    path = TESTDATA / "ed25519" / name
    if not path.exists():
        pytest.skip(f"{path} not present: the Wycheproof and speccheck vectors come from the shared "
                    "testdata folder beside the checkout (../shared/testdata); set ACCEL_TESTDATA to its path")
    return json.loads(path.read_text())


def test_missing_vectors_say_where_they_come_from(monkeypatch, tmp_path):
    monkeypatch.setattr(sys.modules[__name__], "TESTDATA", tmp_path)
    with pytest.raises(pytest.skip.Exception, match="ACCEL_TESTDATA") as info:
        load_or_skip("wycheproof_ed25519_test.json")
    assert "../shared/testdata" in str(info.value)


def test_wycheproof(backend):
    data = load_or_skip("wycheproof_ed25519_test.json")
    cases = [(bytes.fromhex(g["publicKey"]["pk"]), t) for g in data["testGroups"] for t in g["tests"]]
    sized = [(pk, t) for pk, t in cases if len(t["sig"]) == 128]
    for pk, t in cases:
        if len(t["sig"]) != 128:  # truncated or padded signatures are input errors here
            with pytest.raises(ValueError, match="signature 0"):
                accel.ed25519_verify_batch([pk], [bytes.fromhex(t["msg"])], [bytes.fromhex(t["sig"])],
                                           backend=backend)
    out = verdicts(backend, [pk for pk, _ in sized], [bytes.fromhex(t["msg"]) for _, t in sized],
                   [bytes.fromhex(t["sig"]) for _, t in sized])
    for (pk, t), got in zip(sized, out):
        want = zip215_verdict(pk, bytes.fromhex(t["msg"]), bytes.fromhex(t["sig"]))
        assert got == want, t["tcId"]
        if want != (t["result"] == "valid"):  # ZIP-215 may only be more lenient about encodings
            assert want and "InvalidEncoding" in t["flags"], t["tcId"]
    assert out[[t["tcId"] for _, t in sized].index(151)]


def test_speccheck(backend):
    cases = load_or_skip("speccheck_cases.json")
    out = verdicts(backend, [bytes.fromhex(c["pub_key"]) for c in cases],
                   [bytes.fromhex(c["message"]) for c in cases], [bytes.fromhex(c["signature"]) for c in cases])
    assert "".join("V" if v else "X" for v in out) == "VVVVVVXXXVVV"


# ---- bit-for-bit agreement ---------------------------------------------------------------------


def mixed_batch():
    """Valid, tampered and edge-case signatures shuffled together."""
    pks, msgs, sigs = signed_batch(3000, seed=3, max_len=300)
    rng = random.Random(4)
    for i in rng.sample(range(3000), 60):
        sigs[i] = flip(sigs[i], rng.randrange(512))
    for _, pk, msg, sig, _ in EDGE:
        j = rng.randrange(len(pks))
        pks.insert(j, pk)
        msgs.insert(j, msg)
        sigs.insert(j, sig)
    return pks, msgs, sigs


def test_backends_agree_bit_for_bit(backends):
    pks, msgs, sigs = mixed_batch()
    results = {b.name: verdicts(b, pks, msgs, sigs) for b in backends}
    ref = results["cpu"]
    assert 0 < ref.sum() < len(ref)
    for name, out in results.items():
        assert np.array_equal(out, ref), name


def torsion_batch(n, seed):
    """Signatures whose A and R carry random torsion (A = [a]B + T_i, R = [r]B + T_j): the cases
    that CUDA 13.0 at -O3 once got wrong with an out-of-line field multiply. Each holds under the
    cofactored equation unless its S is tampered (every fourth)."""
    rng = random.Random(seed)
    pks, msgs, sigs = [], [], []
    for i in range(n):
        a, r = rng.randrange(1, L), rng.randrange(1, L)
        a_enc = encode(add(mul(a, BASE), TORSION[rng.randrange(8)]))
        r_enc = encode(add(mul(r, BASE), TORSION[rng.randrange(8)]))
        msg = rng.randbytes(rng.randrange(0, 300))
        sig = forge(a, a_enc, r_enc, r, msg)
        pks.append(a_enc)
        msgs.append(msg)
        sigs.append(flip(sig, 300) if i % 4 == 3 else sig)
    return pks, msgs, sigs


def test_torsion_cases_agree_across_backends(backends):
    pks, msgs, sigs = torsion_batch(160, seed=8)
    want = np.array([zip215_verdict(*c) for c in zip(pks, msgs, sigs)])
    assert want.sum() == 120
    for b in backends:
        assert np.array_equal(verdicts(b, pks, msgs, sigs), want), b.name


def test_gpu_path_equals_portable_path(backends):
    """The GPU-shaped kernels (challenges in length order, then checks with the table of -A in
    shared memory) against the one-kernel portable path on the same backend (PoCL here, a GPU
    under make gpu-check), and both against the C fallback; with mixed message lengths (the
    hashing order differs from the input order) and with one length (no reordering)."""
    from accel.ed25519 import hash_order, ordering, verify_on_gpu
    from accel.packing import pack_fixed, pack_messages
    gpu_targets = [b for b in backends if b.name != "cpu"]
    if not gpu_targets:
        pytest.skip("no OpenCL or CUDA backend here to run the GPU-shaped kernels")
    mixed = mixed_batch()
    tors = torsion_batch(64, seed=9)
    keys = [SigningKey(bytes([i]) * 32) for i in range(1, 9)]
    same_len = ([bytes(keys[i % 8].verify_key) for i in range(300)], [bytes([i % 256]) * 100 for i in range(300)], [])
    same_len[2].extend(keys[i % 8].sign(m).signature if i % 7 else bytes(64) for i, m in enumerate(same_len[1]))
    for pks, msgs, sigs in (mixed, tors, same_len):
        ref = verdicts(backends[0], pks, msgs, sigs)
        assert backends[0].name == "cpu" and 0 < ref.sum()
        d_pk, d_sig = pack_fixed(pks, 32, "public key"), pack_fixed(sigs, 64, "signature")
        data, offsets = pack_messages(msgs)
        for b in gpu_targets:
            args = [b.to_device(x) for x in (d_pk, data, offsets, d_sig)]
            portable, shaped = b.empty((len(pks),), np.uint8), b.empty((len(pks),), np.uint8)
            b.launch("ed25519_verify", len(pks), *args, *ordering(b, hash_order(offsets)), portable)
            verify_on_gpu(b, len(pks), *args, shaped, hash_order(offsets))
            assert np.array_equal(b.to_host(portable).astype(bool), ref), b.name
            assert np.array_equal(b.to_host(shaped).astype(bool), ref), b.name


@pytest.mark.parametrize("options", [("-DED_GPU_A_WINDOW=2",), ("-DED_GPU_A_WINDOW=4",), ("-DED_FE_CARRY_CHAINS=2",),
                                     ("-DED_REGULAR_DIGITS=0",), ("-DED_REGULAR_A_BITS=3",)])
def test_gpu_path_tuning_variants_keep_the_verdicts(backends, options):
    """Tunables that bench/ed25519_variants.py times on CUDA and that change the arithmetic (the
    digit width of [k]A, the carry order, the sliding-window schedule on a GPU target), built by
    OpenCL here, both kernel paths: a variant that changed a verdict shows in CI, before any GPU
    time is spent on it."""
    ocl = [b for b in backends if b.name == "opencl"]
    if not ocl:
        pytest.skip("no OpenCL backend here to build the variants")
    if ocl[0].is_gpu:
        pytest.skip("variants run on PoCL in CI; on a GPU each is a slow driver compile, and "
                    "bench/ed25519_variants.py checks them under CUDA")
    import pyopencl as cl

    from accel.backends.base import inline_source
    from accel.backends.opencl import BUILD_OPTIONS
    from accel.ed25519 import GPU_GROUP, hash_order
    from accel.packing import pack_fixed, pack_messages
    b = ocl[0]
    prog = cl.Program(b._ctx, inline_source("portable.h") + "\n" + inline_source("ed25519_gpu.h")).build(
        options=BUILD_OPTIONS + list(options))
    pks, msgs, sigs = (x + y for x, y in zip(mixed_batch(), torsion_batch(64, seed=17)))
    n = len(pks)
    data, offsets = pack_messages(msgs)
    order = hash_order(offsets)
    args = [b.to_device(x).buf for x in (pack_fixed(pks, 32, "public key"), data, offsets,
                                         pack_fixed(sigs, 64, "signature"), order)]
    ks, out, portable = b.empty((n, 32), np.uint8), b.empty((n,), np.uint8), b.empty((n,), np.uint8)
    size = -(-n // GPU_GROUP) * GPU_GROUP
    challenge, check = cl.Kernel(prog, "av_ed25519_challenge"), cl.Kernel(prog, "av_ed25519_verify_k")
    challenge.set_args(*args, np.uint32(1), ks.buf, np.uint64(n))
    cl.enqueue_nd_range_kernel(b._queue, challenge, (size,), (GPU_GROUP,))
    check.set_args(args[0], args[3], ks.buf, out.buf, np.uint64(n))
    cl.enqueue_nd_range_kernel(b._queue, check, (size,), (GPU_GROUP,))
    one_kernel = cl.Kernel(prog, "av_ed25519_verify")
    one_kernel.set_args(*args, np.uint32(1), portable.buf, np.uint64(n))
    cl.enqueue_nd_range_kernel(b._queue, one_kernel, (size,), (GPU_GROUP,))  # PoCL picks groups too big for its stacks
    want = verdicts(backends[0], pks, msgs, sigs)
    assert np.array_equal(b.to_host(out).astype(bool), want)
    assert np.array_equal(b.to_host(portable).astype(bool), want)


@pytest.mark.parametrize("bad", [0, 1, 2, 8, 64, 300, 3000])
def test_bad_signatures_anywhere_get_their_single_verdicts(cpu, bad):
    """The C fallback's bisection and its budget, with bad signatures spread evenly (each half of
    every split fails) and clustered, against the per-signature loop."""
    from accel.packing import pack_fixed, pack_messages
    pks, msgs, sigs = signed_batch(3000, seed=77, max_len=100)
    for where in (np.linspace(0, 2999, bad).astype(int) if bad else [], range(bad)):
        tampered = [flip(sig, 300) if i in set(where) else sig for i, sig in enumerate(sigs)]
        data, offsets = pack_messages(msgs)
        single = np.empty(3000, np.uint8)
        cpu.launch("ed25519_verify_single", 3000, pack_fixed(pks, 32, "public key"), data, offsets,
                   pack_fixed(tampered, 64, "signature"), single)
        out = verdicts(cpu, pks, msgs, tampered)
        assert np.array_equal(out, single.astype(bool))
        assert int((~out).sum()) == bad


def test_verify_all_is_all_of_the_verdicts(backend):
    mixed = mixed_batch()
    tors = torsion_batch(32, seed=12)
    cases = [mixed, tors, signed_batch(50, seed=3, max_len=80)]
    # ZIP-215 edge cases that hold, alone and among valid signatures: verify_all must accept them
    good_edges = [c for c in EDGE if c[4]]
    cases.append(([c[1] for c in good_edges], [c[2] for c in good_edges], [c[3] for c in good_edges]))
    valid = signed_batch(40, seed=4, max_len=80)
    for i in (0, 17, 39):  # one bad signature at the start, middle, end
        cases.append((valid[0], valid[1], [flip(s, 260) if j == i else s for j, s in enumerate(valid[2])]))
    for pks, msgs, sigs in cases:
        want = bool(verdicts(backend, pks, msgs, sigs).all())
        assert accel.ed25519_verify_all(pks, msgs, sigs, backend=backend) is want
    assert accel.ed25519_verify_all(*valid, backend=backend) is True
    assert accel.ed25519_verify_all([], [], [], backend=backend) is True
    with pytest.raises(ValueError, match="signature 1 is 63 bytes"):
        accel.ed25519_verify_all(valid[0][:2], valid[1][:2], [valid[2][0], valid[2][1][:63]], backend=backend)


def test_hash_order_groups_messages_by_sha512_blocks():
    from accel.ed25519 import hash_order
    lengths = [300, 0, 47, 48, 1000, 5]  # 64 + len + 17 bytes padded: 1, 1, 1, 2 blocks, ...
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.uint64)
    order = hash_order(offsets)
    blocks = [(64 + n + 17 + 127) // 128 for n in lengths]
    assert sorted(order.tolist()) == list(range(len(lengths)))
    assert [blocks[i] for i in order] == sorted(blocks)
    assert order.tolist()[:3] == [1, 2, 5]  # stable among equal block counts
    assert hash_order(np.arange(5, dtype=np.uint64) * 100) is None


def test_c_batch_path_equals_single_checks(cpu):
    """The C fallback's random-linear-combination path against its plain per-signature loop."""
    from accel.packing import pack_fixed, pack_messages
    pks, msgs, sigs = mixed_batch()
    data, offsets = pack_messages(msgs)
    single = np.empty(len(sigs), np.uint8)
    cpu.launch("ed25519_verify_single", len(sigs), pack_fixed(pks, 32, "public key"), data, offsets,
               pack_fixed(sigs, 64, "signature"), single)
    assert np.array_equal(verdicts(cpu, pks, msgs, sigs), single.astype(bool))


# ---- bad input ---------------------------------------------------------------------------------


def test_bad_input_names_the_index(cpu, valid2000):
    pks, msgs, sigs = (list(x[:4]) for x in valid2000)
    with pytest.raises(ValueError, match="public key 2 is 31 bytes"):
        accel.ed25519_verify_batch(pks[:2] + [pks[2][:31]] + pks[3:], msgs, sigs, backend=cpu)
    with pytest.raises(ValueError, match="signature 3 is 65 bytes"):
        accel.ed25519_verify_batch(pks, msgs, sigs[:3] + [sigs[3] + b"\x00"], backend=cpu)
    with pytest.raises(TypeError, match="message 1 is str"):
        accel.ed25519_verify_batch(pks, [msgs[0], "text"] + msgs[2:], sigs, backend=cpu)
    with pytest.raises(TypeError, match="public key 0 is int"):
        accel.ed25519_verify_batch([7] + pks[1:], msgs, sigs, backend=cpu)
    with pytest.raises(ValueError, match="4 public keys, 3 messages, 4 signatures"):
        accel.ed25519_verify_batch(pks, msgs[:3], sigs, backend=cpu)
    with pytest.raises(ValueError, match=r"shape \(n, 64\)"):
        accel.ed25519_verify_batch(pks, msgs, np.zeros((4, 63), np.uint8), backend=cpu)
    with pytest.raises(TypeError, match="message must be bytes"):
        accel.ed25519_verify(pks[0], "text", sigs[0], backend=cpu)
    with pytest.raises(ValueError, match="signature is 63 bytes"):
        accel.ed25519_verify(pks[0], msgs[0], sigs[0][:63], backend=cpu)
    with pytest.raises(ValueError, match="public_key is 33 bytes"):
        accel.ed25519_key_is_safe(pks[0] + b"\x00", backend=cpu)


def test_decoding_agrees_on_random_encodings(backends):
    """Random 32-byte strings (about half are curve points, some with y >= p) through decoding,
    canonical re-encoding and the small-order check on every backend: the field code that has a
    radix-2^51 twin on the C fallback must agree with the portable one bit for bit."""
    rng = np.random.default_rng(215)
    keys = rng.integers(0, 256, (4000, 32), dtype=np.uint8)
    keys[:200, :31] = 0xFF  # y near or above p = 2^255 - 19
    keys[:200, 0] = rng.integers(0xE0, 0x100, 200, dtype=np.uint8)
    keys[:200, 31] = rng.choice([0x7F, 0xFF], 200).astype(np.uint8)
    results = {}
    for b in backends:
        out = b.empty((len(keys),), np.uint8)
        b.launch("ed25519_key_is_safe", len(keys), b.to_device(keys), out)
        results[b.name] = b.to_host(out)
    ref = results["cpu"]
    assert 0 < ref.sum() < len(ref)
    for name, out in results.items():
        assert np.array_equal(out, ref), name


# ---- software-only validation (consensus/verify.py): libsodium, then the reference -------------


def software_cases():
    """(name, public keys, messages, signatures) on which software-only validation must give the
    kernels' verdicts: the edge cases, signatures carrying torsion, a mixed batch, and the public
    suites where present."""
    cases = [("edge cases", [c[1] for c in EDGE], [c[2] for c in EDGE], [c[3] for c in EDGE]),
             ("torsion", *torsion_batch(160, seed=8)),
             ("mixed", *[x[:600] for x in mixed_batch()])]
    if (TESTDATA / "ed25519" / "wycheproof_ed25519_test.json").exists():
        data = load_or_skip("wycheproof_ed25519_test.json")
        sized = [(g["publicKey"]["pk"], t) for g in data["testGroups"] for t in g["tests"] if len(t["sig"]) == 128]
        cases.append(("wycheproof", [bytes.fromhex(pk) for pk, _ in sized], [bytes.fromhex(t["msg"]) for _, t in sized],
                      [bytes.fromhex(t["sig"]) for _, t in sized]))
    if (TESTDATA / "ed25519" / "speccheck_cases.json").exists():
        spec = load_or_skip("speccheck_cases.json")
        cases.append(("speccheck", [bytes.fromhex(c["pub_key"]) for c in spec],
                      [bytes.fromhex(c["message"]) for c in spec], [bytes.fromhex(c["signature"]) for c in spec]))
    return cases


def verifier_inputs(pks, msgs, sigs):
    from accel.packing import pack_fixed, pack_messages
    return pack_fixed(pks, 32, "public key"), accel.Packed(*pack_messages(msgs)), pack_fixed(sigs, 64, "signature")


def test_libsodium_accepts_a_subset_of_zip215():
    """What software-only validation rests on: every signature libsodium (PyNaCl) accepts is
    ZIP-215-valid, so only its refusals need the reference's second look; and it does refuse the
    crafted ones (small-order and non-canonical points, cofactored-only equations)."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    def libsodium(pk, msg, sig):
        try:
            VerifyKey(pk).verify(msg, sig)
            return True
        except BadSignatureError:
            return False
    refused_valid = 0
    for name, pks, msgs, sigs in software_cases():
        for i, case in enumerate(zip(pks, msgs, sigs)):
            if libsodium(*case):
                assert zip215_verdict(*case), (name, i)
            elif zip215_verdict(*case):
                refused_valid += 1
    # libsodium refuses every crafted case that holds under ZIP-215, except "A + T" ones whose k
    # happens to clear T (k T = 0), where the cofactorless equation holds as well
    for name, pk, msg, sig, want in EDGE:
        k, s = challenge(sig[:32], pk, msg), int.from_bytes(sig[32:], "little")
        cofactorless = want and is_identity(add(mul(s, BASE), neg(add(decode(sig[:32]), mul(k, decode(pk))))))
        assert libsodium(pk, msg, sig) is (name == "valid" or (name.startswith("cofactored only, A") and cofactorless)), name
    assert refused_valid >= 40


@pytest.mark.parametrize("case", [c[0] for c in software_cases()])
def test_software_verifier_gives_the_kernels_verdicts(cpu, case):
    """consensus.verify.Verifier("software") (PyNaCl, then the reference on what it refuses)
    against the C fallback's ZIP-215 verdicts, per signature and for a whole block, so a
    software-only validator and an accelerated one never disagree on a block."""
    from consensus.verify import Verifier
    _, pks, msgs, sigs = next(c for c in software_cases() if c[0] == case)
    want = verdicts(cpu, pks, msgs, sigs)
    soft, fast = Verifier("software"), Verifier("accel", cpu)
    got = soft.verify_each(*verifier_inputs(pks, msgs, sigs))
    assert got.dtype == bool and np.array_equal(got, want), np.flatnonzero(got != want).tolist()
    assert soft.verify_all(*verifier_inputs(pks, msgs, sigs)) is bool(want.all()) is fast.verify_all(
        *verifier_inputs(pks, msgs, sigs))
    valid = [j for j in range(len(pks)) if want[j]]
    assert valid and soft.verify_all(*verifier_inputs(*([x[j] for j in valid] for x in (pks, msgs, sigs)))) is True
    for j in range(min(len(pks), 60)):  # one signature at a time, through the certificate path too
        assert soft.verify_one(pks[j], msgs[j], sigs[j]) is bool(want[j]), (case, j)


def test_readiness_known_answers_are_the_models_and_need_the_cofactor():
    """accel check's Ed25519 cases (accel/readiness.py) hold under the ZIP-215 model, and its two
    torsion cases hold only with the cofactor, one of them with an even challenge."""
    from accel.readiness import _COFACTORED, _signatures
    (pks, msgs, sigs), want = _signatures()
    assert [zip215_verdict(*c) for c in zip(pks, msgs, sigs)] == want
    parities = set()
    for pk, msg, sig in ((bytes.fromhex(x) for x in case) for case in _COFACTORED):
        k = challenge(sig[:32], pk, msg)
        s = int.from_bytes(sig[32:], "little")
        assert not is_identity(add(mul(s, BASE), neg(add(decode(sig[:32]), mul(k, decode(pk))))))
        parities.add(k % 2)
    assert parities == {0, 1}
