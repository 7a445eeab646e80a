"""SHA-256 of many messages and Merkle trees by CometBFT's rule (RFC 6962 hashing, split at the
largest power of two below n), computed level by level on a backend."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from . import dispatch
from .packing import _buffer_problem, exact_bytes, pack_messages

EMPTY_ROOT = hashlib.sha256(b"").digest()
MAX_TOTAL = (1 << 63) - 1  # the most leaves a proof may claim (CometBFT's int64 total)


def sha256_many(messages, backend=None) -> list[bytes]:
    """SHA-256 digest of every message (list of bytes, or 2-D uint8 array of equal-length rows)."""
    data, offsets = pack_messages(messages)
    n = len(offsets) - 1

    def work(b):
        out = b.empty((n, 32), np.uint8)
        b.launch("sha256_many", n, b.to_device(data), b.to_device(offsets), out)
        return b.to_host(out)

    digests = dispatch.run(backend, work, n, "sha256") if n else np.empty((0, 32), np.uint8)
    return [bytes(row) for row in digests]


def _levels(b, data, offsets, keep: bool) -> list[np.ndarray]:
    """Leaf hashes and every level above them on backend b; only the root level unless keep."""
    return device_levels(b, b.to_device(data), b.to_device(offsets), len(offsets) - 1, keep)


# A GPU finishes a tree on the host once a level is this small: a few dozen hashlib calls cost
# less than a launch and a synchronisation per level.
HOST_TOP = 64


def device_levels(b, data, offsets, n: int, keep: bool = False) -> list[np.ndarray]:
    """_levels over leaves already in device buffers of backend b (packed data, n + 1 offsets).
    Launch refuses offsets fewer than n + 1 (a KernelError); their contents are trusted as
    pack_messages builds them (from 0, never decreasing, ending within data)."""
    level = b.empty((n, 32), np.uint8)
    b.launch("merkle_leaves", n, data, offsets, level)
    levels = [b.to_host(level)] if keep else []
    count = n
    while count > 1:
        if b.is_gpu and not keep and count <= HOST_TOP:
            return [_host_root(b.to_host(level))]
        up = (count + 1) // 2
        above = b.empty((up, 32), np.uint8)
        b.launch("merkle_level", up, level, np.uint64(count), above)
        level, count = above, up
        if keep:
            levels.append(b.to_host(level))
    return levels if keep else [b.to_host(level)]


def merkle_root(leaves, backend=None) -> bytes:
    """Root of the tree over `leaves` (list of bytes or 2-D uint8 array); SHA-256('') when empty."""
    data, offsets = pack_messages(leaves, "leaf")
    if len(offsets) == 1:
        return EMPTY_ROOT
    top = dispatch.run(backend, lambda b: _levels(b, data, offsets, keep=False), len(offsets) - 1, "merkle")
    return bytes(top[-1][0])


@dataclass(frozen=True)
class MerkleProof:
    """CometBFT's proof: the leaf's position, its hash and the sibling hashes from the bottom up."""
    total: int
    index: int
    leaf_hash: bytes
    aunts: tuple[bytes, ...]


def merkle_proof(leaves, index: int, backend=None) -> MerkleProof:
    """The inclusion proof of leaves[index] in the tree merkle_root(leaves) builds: the leaf's
    hash and its siblings' hashes from the bottom up (CometBFT's Proof.Aunts). Check it with
    verify_merkle_proof(root, leaf, proof). Raises ValueError for an index outside the tree."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"index must be an integer, not {type(index).__name__}")
    data, offsets = pack_messages(leaves, "leaf")
    total = len(offsets) - 1
    if not 0 <= index < total:
        raise ValueError(f"index {index} is outside a tree of {total} leaves")
    levels = dispatch.run(backend, lambda b: _levels(b, data, offsets, keep=True), total, "merkle")
    aunts, i = [], index
    for level in levels[:-1]:
        sibling = i ^ 1
        if sibling < len(level):
            aunts.append(bytes(level[sibling]))
        i //= 2
    return MerkleProof(total, index, bytes(levels[0][index]), tuple(aunts))


def _host_root(level: np.ndarray) -> np.ndarray:
    """The root above a (small) level of node hashes, by the same pairing rule as the kernels."""
    return np.frombuffer(_root_above([row.tobytes() for row in level]), np.uint8).reshape(1, 32)


def _root_above(nodes: list[bytes]) -> bytes:
    """Pair neighbours level by level, carrying an odd last node up (the kernels' rule)."""
    while len(nodes) > 1:
        nodes = [inner_hash(*nodes[i:i + 2]) if i + 1 < len(nodes) else nodes[i] for i in range(0, len(nodes), 2)]
    return nodes[0]


def hashlib_root(leaves: list[bytes]) -> bytes:
    """merkle_root computed with hashlib alone: the software-only baseline and a reference."""
    return root_of_leaf_hashes([leaf_hash(x) for x in leaves])


def root_of_leaf_hashes(hashes: list[bytes]) -> bytes:
    """hashlib_root of the leaves whose leaf_hash are `hashes` (a caller keeping some leaves'
    hashes hashes only the others)."""
    return _root_above(hashes) if hashes else EMPTY_ROOT


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def inner_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_merkle_proof(root: bytes, leaf: bytes, proof: MerkleProof) -> bool:
    """Whether `leaf` sits at proof.index of a proof.total-leaf tree with this root. root and leaf
    are bytes (a hex string is a TypeError, not a quiet False)."""
    if not isinstance(proof, MerkleProof):
        raise TypeError(f"proof must be a MerkleProof, not {type(proof).__name__}")
    for name, value in (("root", root), ("leaf", leaf)):
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
        problem = _buffer_problem(value)
        if problem:  # len() of a shaped view counts rows; a strided one cannot be concatenated
            raise TypeError(f"{name} is {problem}, expected bytes")
    # Every hash as plain bytes of its buffer, read once, before it is measured or compared: a bytes
    # subclass may override len(), ==, != and __bytes__ (a leaf_hash equal to anything proved any
    # leaf under a true proof of another; an aunt 32 bytes when measured and longer when hashed).
    root, leaf = exact_bytes(root), exact_bytes(leaf)
    if len(root) != 32:
        raise ValueError(f"root is {len(root)} bytes, expected 32")
    for name in ("total", "index"):
        value = getattr(proof, name)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"proof.{name} must be an integer, not {type(value).__name__}")
    aunts = proof.aunts
    if not isinstance(aunts, (tuple, list)):
        raise TypeError(f"proof.aunts must be a tuple of bytes, not {type(aunts).__name__}")
    aunts = list(aunts)  # one snapshot: a list another thread changes is read once
    for j, aunt in enumerate(aunts):
        if not isinstance(aunt, (bytes, bytearray, memoryview)):
            raise TypeError(f"proof.aunts[{j}] must be bytes, not {type(aunt).__name__}")
    # A proof from elsewhere is data: a total past int64 (CometBFT's bound; also what keeps the
    # loop below from running once per bit of a huge integer), more aunts than such a tree has
    # levels, or a hash that is not 32 bytes is simply not a proof of this leaf.
    total, index = int(proof.total), int(proof.index)
    if not 0 <= index < total <= MAX_TOTAL or len(aunts) > 63:
        return False
    stated = proof.leaf_hash
    if not isinstance(stated, (bytes, bytearray, memoryview)):
        return False
    stated, aunts = exact_bytes(stated), [exact_bytes(a) for a in aunts]
    if any(len(a) != 32 for a in aunts) or leaf_hash(leaf) != stated:
        return False
    h, i, count = stated, index, total
    while count > 1:
        if i ^ 1 < count:  # a last odd node is carried up without a sibling
            if not aunts:
                return False
            sib = aunts.pop(0)
            h = inner_hash(sib, h) if i & 1 else inner_hash(h, sib)
        i, count = i // 2, (count + 1) // 2
    return not aunts and h == root
