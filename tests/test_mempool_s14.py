"""ClearingApp.committed, fourteenth session: dropping what a commit made stale costs the block,
not the mempool. Before, every commit checked every pending transaction (67 ms at 100,000
pending); now, after the block that follows the last committed one, only the transactions
sharing an (account, nonce) pair or a mark's underlying with the block are looked at
(Mempool.holders), and any other block (the first one, a snapshot's, a jump) is checked against
the whole mempool. What must not change: after any commit nothing stale is left, and nothing
else leaves but the block's own transactions."""
import hashlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.apps import clearing_app
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing_app import ClearingApp
from consensus.verify import Verifier
from tests.test_clearing_columns import funded_genesis
from tests.test_clearing_properties import K, O, ORACLES, T0, USERS, block_of, signed
from tests.test_ledger_proposal_s6 import VOLS, users

pytestmark = pytest.mark.usefixtures("quiet_logs")

FRESH, FRESH_KEYS = users(61, 4)


def digest(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


def offers(rnd: random.Random, app: ClearingApp) -> list:
    """Transactions an honest client and an attacker would send around the committed state:
    deposits at, before and past each account's next nonce, in two amounts (two bodies for one
    nonce: one commits, the other goes stale), fresh keys' registrations, marks at, before and
    past the committed sequence."""
    items = []
    for sk, k in zip(USERS, K):
        held = app.head.accounts[k].nonce
        for nonce in rnd.sample(range(max(0, held - 2), held + 4), 3):
            items.append(signed(ctx.deposit(k, nonce, "USD", rnd.choice((1, 2))), [sk]))
    for sk, k in zip(FRESH, FRESH_KEYS):
        if rnd.random() < 0.3:
            items.append(signed(ctx.register(k), [sk]))
    last = app.head.marks["BTC"].sequence
    for sequence in rnd.sample(range(max(1, last - 1), last + 4), 2):
        items.append(signed(ctx.mark("BTC", rnd.choice((59_900.0, 60_100.0)), sequence, T0 + 100 + sequence,
                                     VOLS, O[:2]), ORACLES[:2]))
    return items


def check_holders(app: ClearingApp) -> None:
    """Mempool.holders agrees with a recount of what the mempool holds."""
    recount = {}
    for d, p in app.mempool.items():
        for item in clearing_app._touches(p.tx):
            recount.setdefault(item, set()).add(d)
    assert app.mempool.holders == recount


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_a_commit_drops_what_it_made_stale_and_nothing_else(seed):
    """Two validators on one chain of blocks: the proposer, and a follower offered other bodies
    for the same nonces and sequences (so the blocks hold transactions its mempool never had).
    Each follows every block; now and then the follower misses one and commits the next on its
    own (a statesync's jump), which must check the whole mempool."""
    rnd = random.Random(seed)
    proposer = ClearingApp(Verifier("accel", "cpu"), funded_genesis(), max_txs=8)
    follower = ClearingApp(Verifier("accel", "cpu"), funded_genesis(), max_txs=8)
    parent, parent_id = proposer.genesis, bytes(32)
    for _ in range(8):
        for app in (proposer, follower):
            app.submit_many(offers(rnd, app))
        txs, state = proposer.propose(parent, set())
        block = block_of(txs, parent_id, state.root, proposer)
        for app in (proposer, follower):
            if app is follower and rnd.random() < 0.25:
                continue  # missed: the next block it commits does not follow its head
            follows = app.head_id == parent_id
            before = dict(app.mempool)
            in_block = {digest(txs.bodies.item(i)) for i in range(len(txs))}
            app.committed(block, state)
            assert app.head_id == block.id
            left = set(app.mempool)
            stale = {d for d, p in before.items() if app._stale(p.tx)}
            assert left == set(before) - in_block - stale, f"follows={follows}"
            check_holders(app)
        parent, parent_id = state, block.id


def test_a_block_that_does_not_follow_the_head_is_checked_against_the_whole_mempool():
    """A pending deposit made stale by a block the app never committed (a snapshot's jump) goes
    at the next commit though that block shares nothing with it."""
    sk, k = USERS[0], K[0]
    app = ClearingApp(Verifier("accel", "cpu"), funded_genesis(), max_txs=8)
    nonce = app.head.accounts[k].nonce
    a, b = signed(ctx.deposit(k, nonce, "USD", 1), [sk]), signed(ctx.deposit(k, nonce, "USD", 2), [sk])
    assert app.submit_many([a]) == [""]
    other = ClearingApp(Verifier("accel", "cpu"), funded_genesis(), max_txs=8)
    assert other.submit_many([b]) == [""]
    txs1, s1 = other.propose(other.genesis, set())
    block1 = block_of(txs1, bytes(32), s1.root, other)
    other.committed(block1, s1)
    item = signed(ctx.deposit(K[1], app.head.accounts[K[1]].nonce, "USD", 1), [USERS[1]])
    other.submit_many([item])
    txs2, s2 = other.propose(s1, set())
    block2 = block_of(txs2, block1.id, s2.root, other)
    app.head_id = bytes(32)  # as if it had committed the genesis block: block2 follows block1, not it
    app.committed(block2, s2)
    assert digest(a[0]) not in app.mempool


def test_a_commit_looks_at_the_nonces_the_block_used_not_at_every_queued_one():
    """As found after the first fix (index by account): a block of one deposit of each of three
    accounts, each with 33,333 later nonces queued, had every queued transaction checked (99,999
    _stale calls, 177-194 ms a commit). A block makes stale only what shares one of its (account,
    nonce) pairs: the queues behind are not looked at; a second body for a used nonce is, and goes."""
    app = ClearingApp(Verifier("accel", "cpu"), funded_genesis(), max_txs=8)
    proposer = ClearingApp(Verifier("accel", "cpu"), funded_genesis(), max_txs=8)
    first = [signed(ctx.deposit(k, app.head.accounts[k].nonce, "USD", 1), [sk]) for sk, k in zip(USERS[:3], K[:3])]
    queued = [signed(ctx.deposit(k, app.head.accounts[k].nonce + j, "USD", 1), [sk])
              for sk, k in zip(USERS[:3], K[:3]) for j in range(1, 200)]
    rival = signed(ctx.deposit(K[0], app.head.accounts[K[0]].nonce, "USD", 2), [USERS[0]])
    assert proposer.submit_many(first) == [""] * 3
    txs, state = proposer.propose(proposer.genesis, set())
    assert len(txs) == 3
    block = block_of(txs, bytes(32), state.root, proposer)
    app.head_id = block.parent  # (as if it had committed the parent: the block follows it)
    assert set(app.submit_many(queued + [rival])) == {""}
    checked = []
    stale = app._stale
    app._stale = lambda tx: checked.append(tx) or stale(tx)
    app.committed(block, state)
    assert [tx.body for tx in checked] == [rival[0]]
    assert len(app.mempool) == len(queued)
