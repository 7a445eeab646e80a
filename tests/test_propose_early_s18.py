"""Transactions kept pending as "too early" were applied, and refused, again by every proposal and
every fill of one, so a proposal's work followed them, not its block (review s18; fixed in the
nineteenth session). An attacker's accounts each queue nonces e+1..e+9 ahead of an honest backlog
and send nonce e after it: every proposal fills its block before reaching e, refused the nine as
"expected e" (kept by _early, e being pending) and did so again next block; and each one in a
run declined the run, so its honest transactions were applied one by one too. At 10,000 a block
the review measured one fill 90 ms without them, 553 ms with 31,000 of them. Now a declined run
is tried again without the transactions its nonces refuse (_nonce_gaps), which are refused as
apply refuses them without being applied: no one-by-one apply, and the legs applied are the
block's. What is left is linear and cheap: each early transaction is still looked at (a declined
run's check, _nonce_gaps, _early), about 5 us, by the first proposal that reaches it; it then
goes to the end of the mempool's order, behind the nonce it waits for, and the proposals after
look at it only once the block has room for it (bench_clearing.py)."""
from nacl.signing import SigningKey

from consensus.apps import clearing_app
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing_app import ClearingApp
from consensus.verify import Verifier
from tests.test_clearing_columns import funded_genesis
from tests.test_clearing_properties import USD, block_of

MAX_TXS = 640


def keys(tag, n):
    sk = [SigningKey(bytes([tag]) + i.to_bytes(4, "big") * 7 + bytes(3)) for i in range(n)]
    return sk, [bytes(s.verify_key) for s in sk]


def signed(body, sk):
    return body, [sk.sign(body).signature]


class Count:
    """ctx.apply calls, the legs of the columnar runs applied, and the legs of those declined."""

    def __init__(self, monkeypatch):
        self.applies = self.run_legs = self.declined_legs = 0
        real_apply, real_run = ctx.apply, clearing_app.apply_run

        def apply(state, tx):
            self.applies += 1
            return real_apply(state, tx)

        def run(state, txs):
            applied = real_run(state, txs)
            if applied:
                self.run_legs += len(txs)
            else:
                self.declined_legs += len(txs)
            return applied
        monkeypatch.setattr(ctx, "apply", apply)
        monkeypatch.setattr(clearing_app, "apply_run", run)


def scenario(m, count, blocks=3):
    """Per block of 3: (transactions, applies, legs applied, mempool after, legs declined), with m
    attacker accounts."""
    c = funded_genesis()
    ask, ak = keys(11, m)
    hsk, hk = keys(12, 4 * MAX_TXS)
    for k in ak + hk:
        c.register(k)
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=MAX_TXS)
    early = []
    for s, k in zip(ask, ak):
        early += [signed(ctx.deposit(k, j, "USD", USD), s) for j in range(1, 10)]
    assert app.submit_many(early) == [""] * len(early)
    nxt = {k: 0 for k in hk}
    cursor = 0

    def filler(n):
        nonlocal cursor
        out = []
        for _ in range(n):
            i = cursor % len(hk)
            cursor += 1
            out.append(signed(ctx.deposit(hk[i], nxt[hk[i]], "USD", USD), hsk[i]))
            nxt[hk[i]] += 1
        return out
    fill = filler(blocks * MAX_TXS + 60)  # an honest backlog of a few blocks ahead of the missing nonces
    assert app.submit_many(fill) == [""] * len(fill)
    lasts = [signed(ctx.deposit(k, 0, "USD", USD), s) for s, k in zip(ask, ak)]
    assert app.submit_many(lasts) == [""] * len(lasts)
    parent = app.genesis
    out = []
    for h in range(blocks):
        count.applies = count.run_legs = count.declined_legs = 0
        txs, state = app.propose(parent, set())
        out.append((len(txs), count.applies, count.run_legs, len(app.mempool), count.declined_legs))
        app.committed(block_of(txs, bytes(32), state.root, app), state)
        parent = state
    return out


def test_a_proposals_work_follows_its_block_not_the_early_transactions(monkeypatch):
    count = Count(monkeypatch)
    small, big = scenario(50, count), scenario(500, count)
    assert all(s[0] == b[0] == MAX_TXS for s, b in zip(small, big))  # the same blocks

    def work(r):
        return r[1] + r[2]
    ratio = min(work(b) / work(s) for b, s in zip(big, small))
    assert ratio < 1.1, f"a proposal's work grew {ratio:.1f}x with the early transactions kept, the block the same"
    early = 9 * 500
    assert all(b[1] + b[2] == MAX_TXS for b in big), big  # what is applied is the block: no early one
    assert big[0][4] <= early + MAX_TXS, big[0]  # each checked once, in a declined run
    assert [b[4] for b in big[1:]] == [0, 0], big  # then behind the backlog (Mempool.requeue): not looked at
