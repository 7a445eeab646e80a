"""Versioned ledger state (issue 20): copies that share what they do not change, and the state
tree kept incrementally; both checked against recomputing everything from scratch."""
import random

import numpy as np
import pytest

import accel
from accel.merkle import hashlib_root, inner_hash, merkle_proof, merkle_root, verify_merkle_proof
from consensus.apps import ledger_state
from consensus.apps.ledger_state import MerkleTree, Versioned
from consensus.verify import Verifier

accel_sha256_many = Verifier("accel", "cpu").sha256_rows
hashlib_sha256_many = Verifier("software").sha256_rows


@pytest.fixture
def small_rebase(monkeypatch):
    monkeypatch.setattr(ledger_state, "REBASE_AT", 8)  # fold patches into new bases often


def test_a_versioned_map_copy_never_sees_later_writes_of_the_other(small_rebase):
    rng = random.Random(3)
    truth, maps = [{}], [Versioned()]
    for step in range(400):
        i = rng.randrange(len(maps))
        if rng.random() < 0.3:  # branch
            maps.append(maps[i].copy())
            truth.append(dict(truth[i]))
            continue
        k, v = rng.randrange(60), step
        maps[i][k] = v
        truth[i][k] = v
    for m, t in zip(maps, truth):
        assert dict(m.items()) == t and len(m) == len(t) and all(m[k] == v and k in m for k, v in t.items())
        assert m.get(-1, "none") == "none" and -1 not in m


def test_the_tree_equals_the_full_tree_and_its_proofs_across_versions(small_rebase):
    rng = random.Random(1)
    leaves, tree, kept = [], MerkleTree(), []
    sha = accel_sha256_many
    for step in range(250):
        changed = {}
        for _ in range(rng.randint(0, 5)):
            leaves.append(rng.randbytes(rng.randint(1, 60)))
            changed[len(leaves) - 1] = leaves[-1]
        for _ in range(rng.randint(0, 5)):
            if leaves:
                i = rng.randrange(len(leaves))
                leaves[i] = rng.randbytes(rng.randint(1, 60))
                changed[i] = leaves[i]
        kept.append((tree, tree.root))
        tree = tree.copy()
        tree.update(changed, len(leaves), sha if step % 2 else hashlib_sha256_many)
        assert tree.root == merkle_root(leaves, backend="cpu")
        if leaves:
            i = rng.randrange(len(leaves))
            assert tree.proof(i) == merkle_proof(leaves, i, backend="cpu")
    assert all(old.root == root for old, root in kept)  # no later update reached an earlier version


def _reference_root(c):
    return inner_hash(merkle_root(c.leaves(), backend="cpu"), hashlib_root(c.globals_leaves()))


def test_sibling_blocks_and_their_parent_keep_their_own_states():
    """Two blocks on one parent (a fork the core holds until one commits): each reaches the root of
    its own accounts, and the parent's root and accounts do not move."""
    from tests.test_clearing_soundness import K, funded, trade_tx  # noqa: F401
    from consensus.apps import clearing_tx as ctx
    parent = funded()
    before = (parent.root(), parent.leaves())
    left, right = parent.snapshot(), parent.snapshot()
    for c, series in ((left, 3), (right, 1)):
        c.defer = True
        ctx.apply(c, ctx.decode(trade_tx(c, 0, 1, series, 2, 60_000 * 10**8 if series == 3 else 10**11)[0]))
        assert c.end_of_block() == [] and c.root() == _reference_root(c)
    assert left.accounts[K[0]].positions == {3: 2} and right.accounts[K[0]].positions == {1: 2}
    assert (parent.root(), parent.leaves()) == before and parent.accounts[K[0]].positions == {}
    grand = left.snapshot()
    grand.deposit(K[2], 1, "USD", 5)
    assert grand.root() == _reference_root(grand) and left.root() == _reference_root(left)


def test_an_account_proof_checks_against_the_state_root():
    from tests.test_clearing_soundness import K, funded
    c = funded()
    c.trade(K[0], 1, K[1], 1, 3, 1, 60_000 * 10**8)
    root = c.root()
    leaf, proof, accounts_root, globals_root = c.account_proof(K[1])
    assert verify_merkle_proof(accounts_root, leaf, proof) and inner_hash(accounts_root, globals_root) == root
    assert leaf[:32] == K[1] and not verify_merkle_proof(accounts_root, leaf[:-1] + b"\x01", proof)
    with pytest.raises(KeyError):
        c.account_proof(bytes(32))


def test_software_and_accel_hashing_build_the_same_tree():
    rows = np.frombuffer(bytes(range(256)) * 13, np.uint8)[:65 * 40].reshape(40, 65)
    assert np.array_equal(hashlib_sha256_many(rows), accel_sha256_many(rows))
    assert accel.sha256_many([b"x"], backend="cpu")[0] == hashlib_sha256_many(np.frombuffer(b"x", np.uint8).reshape(1, 1))[0].tobytes()


def test_the_benchmarks_bulk_accounts_make_a_sound_state_and_a_valid_block():
    from consensus.bench import add_accounts, validate_bench
    from consensus.apps.clearing_load import genesis_market
    c = genesis_market("cpu")
    add_accounts(c, 300)
    assert len(c.accounts) == 300 and c.violations() == []
    assert c.root() == _reference_root(c)
    result = validate_bench(60, "accel", "cpu", runs=1, app="clearing", accounts=500)
    assert result["accounts"] == 1_500 and result["propose_ms"] > 0 and result["validation_ms"]["state_root"] > 0
