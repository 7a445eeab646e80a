"""A transaction this validator admitted and then dropped at a commit, because another validator's
committed block used its nonce, keeps its reason (review s15: /tx answered "unknown", the answer
for a transaction never sent here, and Client.wait_committed waited out its whole timeout)."""
from __future__ import annotations

import hashlib

from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing_app import ClearingApp
from consensus.verify import Verifier
from tests.test_clearing_columns import funded_genesis
from tests.test_clearing_properties import K, USERS, block_of, signed


def test_a_transaction_made_stale_by_a_commit_is_refused_with_its_reason():
    mine = ClearingApp(Verifier("accel", "cpu"), funded_genesis())
    other = ClearingApp(Verifier("accel", "cpu"), funded_genesis())  # the leader whose block commits
    n = mine.head.accounts[K[0]].nonce
    a = signed(ctx.deposit(K[0], n, "USD", 2), [USERS[0]])
    b = signed(ctx.deposit(K[0], n, "USD", 3), [USERS[0]])
    assert other.submit_many([a]) == [""] and mine.submit_many([b]) == [""]
    txs, state = other.propose(other.genesis, set())
    mine.committed(block_of(txs, bytes(32), state.root, other), state)
    digest = hashlib.sha256(b[0]).digest()
    assert digest not in mine.mempool
    assert mine.refused[digest].startswith(f"stale: account {K[0].hex()[:16]} nonce {n} is used")
