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


class _CountingDict(dict):
    iterations = 0

    def __iter__(self):
        _CountingDict.iterations += 1
        return super().__iter__()


def test_refusals_are_trimmed_in_one_pass_and_a_second_refusal_is_the_latest(monkeypatch):
    """A commit that made k transactions stale trimmed `refused` one entry at a time, each from a
    fresh iterator (O(k^2): 3.6 s at 100,000); and a transaction refused again kept its old place,
    so it was the first trimmed and /tx said "unknown" (review s15, second round)."""
    import consensus.apps.clearing_app as mod
    monkeypatch.setattr(mod, "REFUSALS_KEPT", 100)
    app = ClearingApp(Verifier("accel", "cpu"), funded_genesis())
    app.refused = _CountingDict()
    again = bytes([1]) * 32
    app._evict({again: "first"} | {i.to_bytes(32, "big"): "x" for i in range(2, 100)})
    app._evict({again: "second"})  # refused again: now the latest
    _CountingDict.iterations = 0
    app._evict({i.to_bytes(32, "big"): "y" for i in range(1_000, 1_500)})
    assert _CountingDict.iterations <= 1
    assert len(app.refused) == 100 and list(app.refused)[-1] == (1_499).to_bytes(32, "big")
    app2 = ClearingApp(Verifier("accel", "cpu"), funded_genesis())
    app2._evict({again: "first"} | {i.to_bytes(32, "big"): "x" for i in range(2, 100)})
    app2._evict({again: "second"})
    app2._evict({i.to_bytes(32, "big"): "z" for i in range(2_000, 2_002)})  # 101: one trimmed
    assert len(app2.refused) == 100 and (2).to_bytes(32, "big") not in app2.refused
    assert app2.refused[again] == "second"  # the oldest went, not the one refused again
