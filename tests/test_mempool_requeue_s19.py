"""A transaction kept waiting as too early goes to the end of the mempool's order (nineteenth
session; tests/test_propose_early_s18.py for its cost), unless the proposal reached what it waits
for (ClearingApp._stays): a client's nonce 6 sent before its 5 keeps its place when the block
carries the 5, and goes behind the backlog when the 5 is past the block's reach
(tests/test_propose_review_s19.py: nonces arriving 2, 1, 4, 3, ...)."""
from nacl.signing import SigningKey

from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing_app import ClearingApp
from consensus.verify import Verifier
from tests.test_clearing_columns import funded_genesis
from tests.test_clearing_properties import USD


def keys(tag, n):
    sk = [SigningKey(bytes([tag]) + i.to_bytes(4, "big") * 7 + bytes(3)) for i in range(n)]
    return sk, [bytes(s.verify_key) for s in sk]


def signed(body, sk):
    return body, [sk.sign(body).signature]


def setup(backlog: int, room: int):
    c = funded_genesis()
    (a,), (ak,) = keys(21, 1)
    hsk, hk = keys(22, backlog)
    for k in [ak] + hk:
        c.register(k)
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=room)
    six, five = signed(ctx.deposit(ak, 1, "USD", USD), a), signed(ctx.deposit(ak, 0, "USD", USD), a)
    others = [signed(ctx.deposit(k, 0, "USD", USD), s) for s, k in zip(hsk, hk)]
    return app, six, five, others


def order(app, item):
    return list(app.mempool).index(__import__("hashlib").sha256(item[0]).digest())


def test_one_whose_predecessor_the_block_carries_keeps_its_place():
    """(Since review s21 the candidates take an account's moves in nonce order, so the 5 and the 6
    both go in the block; a 6 waiting on a 5 that a trade holds keeps its place.)"""
    app, six, five, others = setup(10, room=128)
    assert set(app.submit_many([six, five] + others)) == {""}
    txs, _ = app.propose(app.genesis, set())
    bodies = [txs.bodies.item(i) for i in range(len(txs))]
    assert bodies.index(five[0]) < bodies.index(six[0])


def test_one_whose_predecessor_is_past_the_block_goes_behind_the_backlog():
    """(Since review s21 the 6's place, ahead of the backlog, takes the 5: the 5 goes in the block,
    the 6 at the 5's place, past the block.)"""
    app, six, five, others = setup(200, room=128)  # (arrival order: no account past 1/64 of a block)
    assert set(app.submit_many([six] + others + [five])) == {""}
    txs, _ = app.propose(app.genesis, set())
    bodies = [txs.bodies.item(i) for i in range(len(txs))]
    assert bodies[0] == five[0] and six[0] not in bodies and six[0] in [p.body for p in app.mempool.values()]
