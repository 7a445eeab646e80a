"""ClearingApp._evict_short, sixteenth session: the later nonces of an account found short come
from the mempool's per-account index (Mempool.held), not a scan of the whole mempool (about
10 ms a proposal at 100,000 pending, whoever the short accounts were). What must not change:
which transactions leave, and which stay."""
import hashlib
import random

import pytest

from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing_app import ClearingApp, Mempool
from consensus.verify import Verifier
from tests.test_clearing_properties import USD, signed
from tests.test_ledger_proposal_s6 import short_crowd, users

pytestmark = pytest.mark.usefixtures("quiet_logs")


class NoScan(Mempool):
    """A mempool that refuses to be read whole."""

    def items(self):
        raise AssertionError("the whole mempool was read")

    __iter__ = keys = values = items


def old_evict_short(self, candidates: list, kept: list, short: dict) -> None:
    """ClearingApp._evict_short as it was (979dd0e), the reference: its last part scanned the
    whole mempool."""
    reasons: dict[bytes, str] = {}
    cut: dict[bytes, int] = {}
    signed: dict[bytes, list[int]] = {}
    for pos in kept:
        tx = candidates[pos][1].tx
        for k in tx.signers:
            last = short.get(k)
            if last is not None and pos <= last and (k in signed or tx.op != ctx.DEPOSIT):
                signed.setdefault(k, []).append(pos)
    for k, last in short.items():
        why = f"left account {k.hex()[:16]} below initial margin"
        mine = signed.get(k, [])
        if not mine or mine[-1] != last:
            mine.append(last)
        for pos in mine[len(mine) - max(1, len(mine) // 2):]:
            reasons[candidates[pos][0]] = why
            n = dict(ctx.consumed(candidates[pos][1].tx)[0]).get(k)
            if n is not None:
                cut[k] = min(cut.get(k, n), n)
    if cut:
        for digest, pending in self.mempool.items():
            if digest in reasons or cut.keys().isdisjoint(pending.tx.signers):
                continue
            for k, n in ctx.consumed(pending.tx)[0]:
                if k in cut and n >= cut[k]:
                    reasons[digest] = f"follows a transaction of account {k.hex()[:16]} that left it below initial margin"
                    break
    self._evict(reasons)


def crowd_with_tails(s: int, rng: random.Random):
    """short_crowd's s short accounts, each also sending later deposits (some far ahead), some
    trading with each other past their withdrawal; bystanders' deposits around them."""
    c, items = short_crowd(s)
    sk, ks = users(6, s + 1)
    (bk, bks) = users(8, 3)
    for k in bks:
        c.register(k)
    more = []
    for i in range(s):
        for n in rng.sample(range(3, 40), 4):
            more.append(signed(ctx.deposit(ks[i], n, "USD", USD), [sk[i]]))
    for i in range(0, s - 1, 2):  # a trade between two short accounts, later than both withdrawals
        more.append(signed(ctx.trade(ks[i], 50, ks[i + 1], 51, 3, 1, 60_000 * USD), [sk[i], sk[i + 1]]))
    for j, k in enumerate(bks):
        more.extend(signed(ctx.deposit(k, n, "USD", USD), [bk[j]]) for n in range(200))
    rng.shuffle(more)
    return c, items + more


def short_fill(seed: int):
    c, items = crowd_with_tails(12, random.Random(seed))
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=100_000)
    assert app.submit_many(items) == [""] * len(items)
    candidates = list(app.mempool.items())
    fill = app._fill(app.genesis, candidates, set(), False)
    assert len(fill.short) == 12
    return app, candidates, fill


@pytest.mark.parametrize("seed", range(4))
def test_short_accounts_later_nonces_leave_as_the_scan_found_them(seed):
    app, candidates, fill = short_fill(seed)
    ref, ref_candidates, ref_fill = short_fill(seed)
    old_evict_short(ref, ref_candidates, ref_fill.kept, ref_fill.short)
    app.mempool.__class__ = NoScan
    app._evict_short(candidates, fill.kept, fill.short)
    app.mempool.__class__ = Mempool
    assert set(app.mempool) == set(ref.mempool)
    assert app.refused.keys() == ref.refused.keys()
    followers = {h for h, why in ref.refused.items() if why.startswith("follows")}
    assert len(followers) >= 12 * 3  # (the test reaches the part that changed)
    assert all(app.refused[h].startswith("follows a transaction of account") for h in followers)
    # the bystanders' deposits and the honest trade stay, and the index holds exactly what is pending
    assert len(app.mempool) >= 1 + 3 * 200
    assert app.mempool.held == {k: {n for (a, n) in app.mempool.nonces if a == k}
                                for k in {a for a, _ in app.mempool.nonces}}


def test_the_per_account_index_follows_every_mutator():
    c, items = crowd_with_tails(4, random.Random(7))
    pool = Mempool()
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=100_000)
    assert app.submit_many(items) == [""] * len(items)
    for digest, pending in dict.items(app.mempool):
        pool[digest] = pending
    rng = random.Random(1)
    digests = list(pool)
    for step in range(400):
        d = rng.choice(digests)
        if d in pool and rng.random() < 0.6:
            (pool.pop(d) if step % 3 else pool.__delitem__(d))
        else:
            pool[d] = app.mempool[d]
        want: dict = {}
        for (a, n) in pool.nonces:
            want.setdefault(a, set()).add(n)
        assert pool.held == want
    pool.popitem()
    pool.clear()
    assert pool.held == {} and pool.nonces == {}


def test_a_registration_and_a_mark_hold_no_nonce():
    c, _ = short_crowd(1)
    sk, ks = users(9, 1)
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    body = ctx.register(ks[0], app.chain_id)
    assert app.submit_many([signed(body, [sk[0]])]) == [""]
    assert hashlib.sha256(body).digest() in app.mempool and app.mempool.held == {}


# ---- has_pending: a leader whose last proposal came out empty paces its empty blocks -------------


def test_a_mempool_no_proposal_takes_from_counts_as_idle_until_something_changes():
    """has_pending() was len(mempool) > 0: whatever stayed pending that no proposal took kept
    Config.empty_block_interval_ms off, and the network committed empty blocks as fast as it
    could. Now a proposal that comes out empty marks the mempool barren until a transaction is
    admitted or a block of transactions commits."""
    from tests.test_clearing_columns import funded_genesis
    from tests.test_clearing_properties import K, USERS, block_of
    app = ClearingApp(Verifier("accel", "cpu"), funded_genesis())
    first = signed(ctx.deposit(K[0], 2, "USD", USD), [USERS[0]])
    assert not app.has_pending() and app.submit_many([first]) == [""] and app.has_pending()
    digest = hashlib.sha256(first[0]).digest()
    txs, _ = app.propose(app.genesis, {digest})  # (it sits in an uncommitted block: excluded)
    assert len(txs) == 0 and len(app.mempool) == 1
    assert not app.has_pending()
    second = signed(ctx.deposit(K[1], 2, "USD", USD), [USERS[1]])
    assert app.submit_many([second]) == [""] and app.has_pending()  # admitted: a proposal may take it
    txs, state = app.propose(app.genesis, {digest})
    assert len(txs) == 1 and app.has_pending()  # (a block with something: not barren)
    txs, _ = app.propose(app.genesis, {digest, hashlib.sha256(second[0]).digest()})
    assert len(txs) == 0 and not app.has_pending()
    # a block of transactions committed: what the last proposal could not apply may apply now
    other = signed(ctx.deposit(K[2], 2, "USD", USD), [USERS[2]])
    peer = ClearingApp(Verifier("accel", "cpu"), funded_genesis())
    assert peer.submit_many([other]) == [""]
    block_txs, block_state = peer.propose(peer.genesis, set())
    block = block_of(block_txs, app.genesis.root, block_state.root, app)
    app.committed(block, app.validate(app.genesis, block, ((), (), ())).state)
    assert app.has_pending()
    app.mempool = dict(app.mempool)  # (a mempool assigned whole: nothing known of it)
    assert app.has_pending()


def test_a_proposal_that_evicted_leaves_the_mempool_pending():
    """Review s16 of the above: a proposal comes out empty where an account ends it short, and
    evicts the later half of that account's transactions (_evict_short); what is left may apply
    now. Marked barren all the same, every leader waited an interval per halving (16 withdrawals:
    3.7 s to the first commit against 0.14 s, in the simulator at 400 ms). Now a proposal that
    evicted anything leaves has_pending() true."""
    from tests.test_clearing_columns import funded_genesis
    c = funded_genesis()
    sk, ks = users(6, 2)
    maker, k = ks[1], ks[0]
    c.register(maker)
    c.deposit(maker, 0, "USD", 10**9 * USD)
    c.register(k)
    c.deposit(k, 0, "USD", 20_000 * USD)
    c.trade(maker, 1, k, 1, 3, 1, 60_000 * USD)  # k short one BTC future
    items = [signed(ctx.withdraw(k, n, "USD", 500 * USD), [sk[0]]) for n in (2, 3, 4, 5)]
    items.append(signed(ctx.withdraw(k, 6, "USD", 17_000 * USD), [sk[0]]))  # this one leaves k short
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    assert app.submit_many(items) == [""] * 5
    txs, _ = app.propose(app.genesis, set())
    assert len(txs) == 0 and 0 < len(app.mempool) < 5  # (empty, and some evicted)
    assert app.has_pending()
    txs, _ = app.propose(app.genesis, set())  # nothing admitted, nothing committed: it takes them
    assert len(txs) > 0 and app.has_pending()
