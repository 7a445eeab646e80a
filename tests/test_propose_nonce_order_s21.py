"""Review s21: a client queuing its nonces last first (K - 1, ..., 1, 0) had every proposal look at,
refuse and keep waiting each of them to take the 0 (ClearingApp._stays keeps a waiting chain in
place): 10,000 candidates for a block of 20, and a proposal of 100 from 100,000 pending 1.3 s
against 60 ms in nonce order, for K blocks. The candidates now take each account's moves in nonce
order over the places its moves hold (clearing_app._nonce_order)."""
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from consensus.apps import clearing_app
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing_app import ClearingApp
from consensus.verify import Verifier
from tests.test_clearing_columns import funded_genesis
from tests.test_clearing_properties import USD, block_of
from tests.test_propose_scale_s15 import market, stream

M, K, ROOM = 20, 500, 20


def _proposals(reverse: bool) -> tuple[list, list]:
    sk = [SigningKey(bytes([33]) + i.to_bytes(4, "big") * 7 + bytes(3)) for i in range(M)]
    kk = [bytes(s.verify_key) for s in sk]
    c = funded_genesis()
    for k in kk:
        c.register(k)
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=ROOM)
    for s, k in zip(sk, kk):
        order = range(K - 1, -1, -1) if reverse else range(K)
        items = [(b, [s.sign(b).signature]) for b in (ctx.deposit(k, j, "USD", USD) for j in order)]
        assert app.submit_many(items) == [""] * K
    looked, real = [], app._apply_fill

    def counted(*args, **kwargs):
        out = real(*args, **kwargs)
        looked.append(out.stop or 0)
        return out
    app._apply_fill = counted
    parent, sizes, work = app.genesis, [], []
    for _ in range(3):
        looked.clear()
        txs, state = app.propose(parent, set())
        sizes.append(len(txs))
        work.append(sum(looked))
        app.committed(block_of(txs, bytes(32), state.root, app), state)
        parent = state
    return sizes, work


def test_nonces_sent_last_first_cost_a_proposal_what_nonces_in_order_do():
    (fwd, fwd_work), (rev, rev_work) = _proposals(False), _proposals(True)
    assert fwd == rev == [ROOM] * 3
    assert max(rev_work) <= 2 * ROOM and max(fwd_work) <= 2 * ROOM, (fwd_work, rev_work)  # [10000, 9980, 9960]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_the_nonce_order_lists_every_candidate_once_each_accounts_moves_in_nonce_order(seed):
    rnd = random.Random(seed)
    c = market()
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=40)
    app.submit_many(stream(rnd, c, heavy=rnd.random() < 0.3, reversed_=rnd.random() < 0.6))
    items = list(app.mempool.items())
    skip = {d for d, _ in rnd.sample(items, min(len(items), rnd.randint(0, 3)))}
    listed = list(clearing_app._nonce_order(iter([i for i in items if i[0] not in skip]), c, app.mempool, skip))
    assert sorted(d for d, _ in listed) == sorted(d for d, _ in items if d not in skip)  # a permutation
    moves: dict[bytes, list] = {}
    traded = set()
    for d, p in listed:
        if p.tx.op in ctx.MOVES:
            moves.setdefault(p.tx.fields[0], []).append(p.tx.fields[1])
        traded.update(k for k, _ in ctx.consumed(p.tx)[0] if p.tx.op == ctx.TRADE)
    for k, nonces in moves.items():  # an account moving only: from its next nonce on, in order
        if k not in traded and c.next_nonce(k) is not None:
            chain, n = [], c.next_nonce(k)  # the nonces that can apply: from the next one, no gap
            while n in nonces:
                chain.append(n)
                n += 1
            first = [n for i, n in enumerate(nonces) if n in chain and n not in nonces[:i]]  # (a second: stale)
            assert first == chain, (k.hex()[:8], nonces)
