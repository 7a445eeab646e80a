"""SHA-256 and CometBFT Merkle trees on every backend, against hashlib and a recursive reference."""
import hashlib
import os
import random

import numpy as np
import pytest

import accel
from accel.merkle import MerkleProof


def ref_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 / CometBFT, written recursively as the spec states it."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((n - 1).bit_length() - 1)  # largest power of two < n
    return hashlib.sha256(b"\x01" + ref_root(leaves[:k]) + ref_root(leaves[k:])).digest()


def ref_aunts(leaves: list[bytes], index: int) -> list[bytes]:
    """Sibling roots from the leaf upwards, as CometBFT's proofs list them."""
    n = len(leaves)
    if n <= 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if index < k:
        return ref_aunts(leaves[:k], index) + [ref_root(leaves[k:])]
    return ref_aunts(leaves[k:], index - k) + [ref_root(leaves[:k])]


FIPS_VECTORS = [
    (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
     "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
    (b"a" * 1_000_000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
    (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
]


def test_fips_180_4_examples(backend):
    digests = accel.sha256_many([m for m, _ in FIPS_VECTORS], backend=backend)
    assert [d.hex() for d in digests] == [h for _, h in FIPS_VECTORS]


def test_random_messages_match_hashlib(backend):
    rng = random.Random(180_4)
    msgs = [rng.randbytes(rng.randint(0, 1000)) for _ in range(1000)]
    assert accel.sha256_many(msgs, backend=backend) == [hashlib.sha256(m).digest() for m in msgs]


def test_padding_boundaries(backend):
    """Lengths around the 55/56/64-byte edges where padding spills into another block."""
    msgs = [bytes([i % 251]) * n for i, n in enumerate(list(range(50, 70)) + list(range(110, 135)) + [0, 1, 127, 128])]
    assert accel.sha256_many(msgs, backend=backend) == [hashlib.sha256(m).digest() for m in msgs]


def test_array_input(backend):
    arr = np.frombuffer(os.urandom(100 * 48), np.uint8).reshape(100, 48)
    assert accel.sha256_many(arr, backend=backend) == [hashlib.sha256(r.tobytes()).digest() for r in arr]


SIZES = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 255, 256, 257, 1023, 1024, 1025]


def _leaves(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    # empty, short, exactly-one-block and long (> 64 byte) leaves mixed
    return [rng.randbytes(rng.choice([0, 1, 31, 32, 33, 55, 64, 65, 200])) for _ in range(n)]


@pytest.mark.parametrize("n", SIZES)
def test_merkle_root_matches_reference(backend, n):
    leaves = _leaves(n, n)
    assert accel.merkle_root(leaves, backend=backend) == ref_root(leaves)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 8, 9, 33])
def test_merkle_proofs(backend, n):
    leaves = _leaves(n, 100 + n)
    root = ref_root(leaves)
    for i in range(n):
        proof = accel.merkle_proof(leaves, i, backend=backend)
        assert list(proof.aunts) == ref_aunts(leaves, i)
        assert accel.verify_merkle_proof(root, leaves[i], proof)
        assert not accel.verify_merkle_proof(root, leaves[i] + b"x", proof)
        if proof.aunts:
            bad = MerkleProof(proof.total, proof.index, proof.leaf_hash, (b"\0" * 32,) + proof.aunts[1:])
            assert not accel.verify_merkle_proof(root, leaves[i], bad)
        if n > 1:
            moved = MerkleProof(proof.total, (i + 1) % n, proof.leaf_hash, proof.aunts)
            assert not accel.verify_merkle_proof(root, leaves[i], moved) or leaves[i] == leaves[(i + 1) % n]


def test_backends_agree_byte_for_byte(backends):
    leaves = np.frombuffer(os.urandom((1 << 14) * 32 + 32 * 77), np.uint8).reshape(-1, 32)
    roots = {b.name: accel.merkle_root(leaves, backend=b) for b in backends}
    assert len(set(roots.values())) == 1, roots
    msgs = _leaves(3000, 7)
    digests = {b.name: accel.sha256_many(msgs, backend=b) for b in backends}
    assert all(d == digests["cpu"] for d in digests.values())


def test_large_tree_on_cpu(cpu):
    leaves = np.frombuffer(os.urandom((1 << 17) * 32), np.uint8).reshape(-1, 32)
    assert accel.merkle_root(leaves, backend=cpu) == ref_root([r.tobytes() for r in leaves])


@pytest.mark.parametrize("bad,err", [
    ("abc", TypeError), (b"abc", TypeError), ([b"a", "b"], TypeError), ([b"a", 3], TypeError),
    (np.zeros((3, 4), np.int32), ValueError), (np.zeros(12, np.uint8), ValueError),
])
def test_bad_input_is_rejected(bad, err):
    with pytest.raises(err):
        accel.merkle_root(bad)
    with pytest.raises(err):
        accel.sha256_many(bad)


def test_error_names_the_index():
    with pytest.raises(TypeError, match="leaf 2"):
        accel.merkle_root([b"a", b"b", "c"])


def test_proof_index_out_of_range():
    with pytest.raises(ValueError, match="outside"):
        accel.merkle_proof([b"a"], 1)


def test_word_and_byte_paths_of_leaf_hashing_agree(backend):
    """32-byte leaves at 4-byte-aligned places take the word-load path, others the byte path:
    a 1-, 2- or 3-byte leaf in front shifts every later leaf off alignment, a 4-byte one keeps it."""
    rng = np.random.default_rng(33)
    body = [rng.bytes(32) for _ in range(37)]
    for head in (b"", b"a", b"ab", b"abc", b"abcd"):
        leaves = ([head] if head else []) + body
        assert accel.merkle_root(leaves, backend=backend) == ref_root(leaves), head


class GpuLike:
    """The C fallback presented as a GPU, so the GPU-only host finish of small top levels runs."""
    name, device, is_gpu = "cuda", "C fallback posing as a GPU", True

    def __init__(self, cpu):
        self.cpu = cpu

    def __getattr__(self, attr):
        return getattr(self.cpu, attr)


@pytest.mark.parametrize("n", [1, 2, 3, 63, 64, 65, 127, 128, 129, 1000])
def test_gpu_finishes_small_top_levels_on_the_host(cpu, n):
    from accel.merkle import device_levels
    leaves = [bytes([i % 251]) * (i % 40) for i in range(n)]
    data, offsets = np.frombuffer(b"".join(leaves), np.uint8), np.cumsum([0] + [len(x) for x in leaves]).astype(np.uint64)
    (root,) = device_levels(GpuLike(cpu), data, offsets, n)
    assert root.tobytes() == ref_root(leaves)


def test_proof_inputs_are_typed(cpu):
    """Issue 10: a hex root used to give a quiet False where the README promises a TypeError."""
    from accel.merkle import verify_merkle_proof
    leaves = [bytes([i]) * 5 for i in range(9)]
    root, proof = accel.merkle_root(leaves, backend=cpu), accel.merkle_proof(leaves, 4, backend=cpu)
    assert verify_merkle_proof(root, leaves[4], proof)
    with pytest.raises(TypeError, match="root must be bytes, not str"):
        verify_merkle_proof(root.hex(), leaves[4], proof)
    with pytest.raises(TypeError, match="leaf must be bytes, not str"):
        verify_merkle_proof(root, "leaf", proof)
    with pytest.raises(ValueError, match="root is 31 bytes"):
        verify_merkle_proof(root[:31], leaves[4], proof)
    with pytest.raises(TypeError, match="index must be an integer"):
        accel.merkle_proof(leaves, "4", backend=cpu)


def test_public_functions_document_themselves():
    for fn in (accel.merkle_proof, accel.merkle_root, accel.verify_merkle_proof, accel.portfolio_margin,
               accel.ed25519_verify_all, accel.greeks):
        assert fn.__doc__ and len(fn.__doc__) > 80, fn.__name__
    assert "offsets" in accel.portfolio_margin.__doc__ and "Marks" in accel.portfolio_margin.__doc__
