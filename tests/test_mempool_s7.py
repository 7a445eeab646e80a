"""Mempool fairness, seventh session (found by review s7: a fee-less chain's mempool shared by
accounts that cost nothing to make).

1. Three accounts locked every other client out of the client API (fixed). The mempool is bounded
   ([rpc] max_mempool, 100,000) and an account may queue up to its window of nonces (40,000 at
   the default max_txs), so three registered accounts' valid deposits filled it: every other
   client got 503 "mempool full", and the attacker refilled it as blocks drained it, for as long
   as it liked. Now the app bounds its own mempool (ClearingApp.max_mempool, set by the API): a
   full mempool takes a transaction from an account weighing at least two less than the heaviest
   (its pending count, plus one for a key not registered at the last committed block) in place
   of the heaviest one's transaction furthest along its nonce chain (the rest still applies).
2. One account's queue took every block ahead of everyone else (fixed): proposals went through
   the mempool in arrival order, so 40,000 queued deposits filled the next four 10,000-transaction
   blocks while an honest client's one deposit waited. Now a mempool holding more than a block is
   taken round-robin across accounts (_fair), keeping every order arrival order needed: a nonce
   chain in order, a registration before what its key signs, an oracle mark where it arrived.
3. What is left (documented in docs/OPERATOR.md): every account has one share, so many accounts
   still share the mempool with everyone; fresh keys weigh one more, so a flood of fresh keys'
   registrations keeps out other fresh keys (new users), not registered accounts."""
import contextlib
import hashlib
import random
from collections import Counter
from types import SimpleNamespace

import pytest

from accel import Packed
from accel.packing import pack_messages
from consensus import rpc as rpc_mod
from consensus.apps import clearing_app
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing_app import ClearingApp, Mempool, _fair
from consensus.verify import Verifier
from tests.test_clearing_columns import funded_genesis
from tests.test_clearing_properties import K, O, ORACLES, T0, USD, USERS, as_txs, block_of, signed
from tests.test_ledger_proposal_s6 import VOLS, agree, users

pytestmark = pytest.mark.usefixtures("quiet_logs")


def deposits(sk, k, start, n):
    return [signed(ctx.deposit(k, start + j, "USD", USD), [sk]) for j in range(n)]


def api(app, max_mempool):
    """The client API's admission path (Rpc._submit: WorkBudget, the mempool bound) on app."""
    return rpc_mod.Rpc(SimpleNamespace(app=app, submitted=0), ("127.0.0.1", 0), max_mempool=max_mempool)


def digest(item):
    return hashlib.sha256(item[0]).digest()


def check_index(app):
    """The Mempool's owner counts, heaps and holders agree with a recount of what it holds."""
    pool = app.mempool
    counts = Counter(clearing_app._owner(p.tx) for p in pool.values())
    assert pool.count == dict(counts)
    assert set(pool.queues) == set(counts)
    holders = {}
    for d, p in pool.items():
        for item in clearing_app._touches(p.tx):
            holders.setdefault(item, set()).add(d)
    assert pool.holders == holders
    weights = {o: n + (o not in app.head.accounts) for o, n in counts.items()}
    top, heavy = pool.heaviest()
    assert top == max(weights.values(), default=0)
    if heavy is not None:
        assert weights[heavy] == top
        last = pool.last(heavy)
        assert clearing_app._owner(pool[last].tx) == heavy
        assert clearing_app._place(pool[last].tx) == max(clearing_app._place(p.tx) for p in pool.values()
                                                          if clearing_app._owner(p.tx) == heavy)


# ---- 1. a full mempool ----------------------------------------------------------------------------


def test_three_accounts_filling_the_mempool_do_not_lock_honest_clients_out():
    """Three registered accounts queue their whole window of deposits (1,024 each at max_txs 100)
    through the API into a mempool of 2,048: before, every honest client was then refused (503,
    _Full) until blocks drained it, and the attacker refilled it first. Now each honest client's
    deposits are admitted, each in place of the heaviest attacker account's last deposit (reason
    kept for its client), the attacker's remaining deposits are a prefix of each of its chains
    (all still apply), and an attacker account at the top is refused more (503)."""
    c = funded_genesis()
    sk, ks = users(31, 3)
    for k in ks:
        c.register(k)
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=100)
    window = max(clearing_app.AHEAD_BLOCKS * 100, clearing_app.MIN_AHEAD)
    rpc = api(app, 2048)
    attack = [deposits(s, k, 0, window) for s, k in zip(sk, ks)]
    for j in range(0, window, 256):  # interleaved batches, as a client would send them
        for chain in attack:
            with contextlib.suppress(rpc_mod._Full):  # (once it holds its share: 503)
                rpc._submit(chain[j:j + 256], "attacker")
    assert len(app.mempool) == 2048
    honest = [item for i, k in enumerate(K) for item in deposits(USERS[i], k, c.accounts[k].nonce, 3)]
    answers = rpc._submit(honest, "honest")
    assert [a["reason"] for a in answers] == [""] * len(honest)
    assert len(app.mempool) == 2048 and all(digest(h) in app.mempool for h in honest)
    evicted = [r for r in app.refused.values() if r.startswith("evicted from a full mempool")]
    assert len(evicted) >= len(honest)
    for chain in attack:  # what is left of each chain is its first nonces: it all applies
        held = [j for j, item in enumerate(chain) if digest(item) in app.mempool]
        assert held == list(range(len(held)))
    counts = [sum(digest(item) in app.mempool for item in chain) for chain in attack]
    assert max(counts) - min(counts) <= 1  # the heaviest gave way first
    heaviest = max(range(3), key=lambda i: counts[i])
    more = deposits(sk[heaviest], ks[heaviest], counts[heaviest], 1)
    with pytest.raises(rpc_mod._Full):  # the single submission: 503 "mempool full"
        rpc._submit(more, "attacker")
    assert app.submit_many(more)[0].startswith("mempool full")
    check_index(app)
    # the block: every honest deposit in it, checked by a software-only validator
    txs, state = app.propose(app.genesis, set())
    got = {txs.bodies.item(i) for i in range(len(txs))}
    assert len(txs) == 100 and all(b in got for b, _ in honest)
    agree(app, [ClearingApp(Verifier("software"), c.snapshot())], txs, state)
    app.committed(block_of(txs, bytes(32), state.root, app), state)
    check_index(app)


def test_a_flood_of_fresh_keys_does_not_keep_out_a_registered_account():
    """Registrations are free: 64 fresh keys' registrations fill a mempool of 64, one each, so the
    share rule alone (evict only from an account holding two more) would refuse everyone holding
    nothing. A key not registered at the last committed block weighs one more, so a registered
    account holding nothing gets in (the fresh key that got there first gives way), while another
    fresh key is refused: the limit docs/OPERATOR.md states (new users wait behind the flood, and
    a registered account's share there is one pending transaction)."""
    c = funded_genesis()
    sk, ks = users(41, 65)
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    app.max_mempool = 64
    flood = [signed(ctx.register(k), [s]) for s, k in zip(sk[:64], ks[:64])]
    assert app.submit_many(flood) == [""] * 64
    honest = deposits(USERS[0], K[0], c.accounts[K[0]].nonce, 1)
    assert app.submit_many(honest) == [""]
    assert digest(flood[0]) not in app.mempool and digest(honest[0]) in app.mempool
    assert app.refused[digest(flood[0])].startswith("evicted from a full mempool")
    newcomer = signed(ctx.register(ks[64]), [sk[64]])
    assert app.submit_many([newcomer])[0].startswith("mempool full")
    # its share: one pending (a fresh key's registration weighs two); a second waits for a block
    assert app.submit_many(deposits(USERS[0], K[0], c.accounts[K[0]].nonce + 1, 1))[0].startswith("mempool full")
    check_index(app)


def test_admission_never_raises_and_the_index_stays_exact_through_evictions_refusals_and_commits():
    """Random submissions (valid deposits, bad signatures, signerless marks, stale and far-ahead
    nonces, resubmissions) into a small bounded mempool, with blocks proposed, checked and
    committed between them: submit_many never raises, the mempool never exceeds its bound, and the
    owner counts and heaps always match a recount."""
    rnd = random.Random(7)
    c = funded_genesis()
    sk, ks = users(51, 6)
    for k in ks:
        c.register(k)
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=20)
    validator = ClearingApp(Verifier("software"), c.snapshot(), max_txs=20)
    app.max_mempool = 40
    signers = list(zip(sk, ks)) + list(zip(USERS, K))
    nxt = {k: (c.accounts[k].nonce if k in c.accounts else 0) for _, k in signers}
    parent, vparent = app.genesis, validator.genesis
    for _ in range(6):
        items = []
        for _ in range(60):
            s, k = rnd.choice(signers)
            roll = rnd.random()
            if roll < 0.6:
                items.append(signed(ctx.deposit(k, nxt[k], "USD", USD), [s]))
                nxt[k] += 1
            elif roll < 0.7:
                items.append((ctx.deposit(k, nxt[k], "USD", USD), [bytes(64)]))
            elif roll < 0.8:
                items.append((ctx.mark("BTC", 61_000.0, rnd.randrange(2, 9), T0 + 500, VOLS, []), []))
            elif roll < 0.9:
                items.append(signed(ctx.deposit(k, nxt[k] + 5000, "USD", USD), [s]))
            else:
                items.append(rnd.choice(items) if items else signed(ctx.register(k), [s]))
        reasons = app.submit_many(items)
        assert len(reasons) == len(items) and len(app.mempool) <= 40
        check_index(app)
        txs, state = app.propose(parent, set())
        block = block_of(txs, bytes(32), state.root, validator)
        v = validator.validate(vparent, block, ((), (), ()))
        assert v.ok and v.state.root == state.root, v.reason
        app.committed(block_of(txs, bytes(32), state.root, app), state)
        validator.committed(block, v.state)
        parent, vparent = state, v.state
        check_index(app)
        for k in nxt:  # what was evicted or refused is sent again from the committed nonce
            nxt[k] = parent.clearing.accounts[k].nonce + sum(
                1 for p in app.mempool.values() if clearing_app._owner(p.tx) == k and p.tx.op == ctx.DEPOSIT)


def test_any_mapping_assigned_as_the_mempool_is_indexed():
    """app.mempool = {...} (a test or a tool replacing it) becomes a Mempool: the index cannot
    drift from what it holds, and its owners are weighed by the app's rule from the start (the
    owners' heap was first built with the plain count and reweighed afterwards: an unregistered
    key's entry too light, so another owner could be named the heaviest)."""
    c = funded_genesis()
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    items = deposits(USERS[1], K[1], c.accounts[K[1]].nonce, 3)
    assert app.submit_many(items) == [""] * 3
    app.mempool = dict(app.mempool)
    assert isinstance(app.mempool, Mempool) and app.mempool.count == {K[1]: 3}
    del app.mempool[digest(items[0])]
    app.mempool.pop(digest(items[1]))
    assert app.mempool.count == {K[1]: 1} and app.mempool.heaviest() == (1, K[1])
    (s,), (k,) = users(64, 1)
    reg = signed(ctx.register(k), [s])
    pending = clearing_app.Pending(reg[0], reg[1], ctx.decode(reg[0]), b"".join(reg[1]))
    app.mempool = {digest(items[2]): app.mempool[digest(items[2])], digest(reg): pending}
    assert app.mempool.heaviest() == (2, k)  # a fresh key's registration weighs two
    app.mempool.clear()
    assert app.mempool.count == {} and app.mempool.heaviest() == (0, None)


def test_which_of_equally_heavy_accounts_gives_way_is_not_decided_by_key_bytes():
    """Among accounts of the heaviest weight, the one that got there first gives way first. The
    owners' heap is rebuilt when it holds twice its owners (amortized O(1) an insertion), and the
    rebuild first gave every owner the same age: ties went to the lowest key, which a client can
    grind to keep its own transactions and have an honest account's evicted."""
    def fake(owner, nonce):
        return SimpleNamespace(tx=ctx.Tx(ctx.DEPOSIT, (owner, nonce, "USD", 1), (owner,)))
    pool = Mempool()
    early, late, other = b"\xff" * 32, b"\x00" * 32, b"\x01" * 32
    for n in range(40):
        pool[b"e%d" % n] = fake(early, n)
    for n in range(40):
        pool[b"l%d" % n] = fake(late, n)
    for n in range(200):  # heap rebuilds on the way
        pool[b"o%d" % n] = fake(other, n)
        del pool[b"o%d" % n]
    assert pool.heaviest() == (40, early)
    assert pool.last(early) == b"e39"
    del pool[b"e39"]
    assert pool.heaviest() == (40, late) and pool.last(late) == b"l39"
    del pool[b"l39"]
    assert pool.heaviest() == (39, early)  # (both at 39: the early one got there first)


# ---- 2. proposals ----------------------------------------------------------------------------------


def test_one_accounts_queue_does_not_take_the_block_ahead_of_everyone_else():
    """One account queues 1,000 deposits, then five honest clients send one transaction each (a
    deposit, a trade between two of them, a fresh key's registration with its deposit). Before,
    the block (max_txs 100) took the first 100 of the queue in arrival order and nothing else; now
    every honest transaction is in the first block, and the queue's share of it is its first
    nonces in order."""
    c = funded_genesis()
    (s,), (k,) = users(61, 1)
    c.register(k)
    (fs,), (fk,) = users(62, 1)
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=100)
    queue = deposits(s, k, 0, 1000)
    assert app.submit_many(queue) == [""] * 1000
    n = {x: c.accounts[x].nonce for x in K}
    honest = [signed(ctx.deposit(K[0], n[K[0]], "USD", USD), [USERS[0]]),
              signed(ctx.trade(K[1], n[K[1]], K[2], n[K[2]], 3, 1, 60_000 * USD), [USERS[1], USERS[2]]),
              signed(ctx.withdraw(K[3], n[K[3]], "USD", USD), [USERS[3]]),
              signed(ctx.register(fk), [fs]), signed(ctx.deposit(fk, 0, "USD", USD), [fs])]
    assert app.submit_many(honest) == [""] * len(honest)
    txs, state = app.propose(app.genesis, set())
    got = [txs.bodies.item(i) for i in range(len(txs))]
    assert len(txs) == 100 and all(b in got for b, _ in honest)
    assert [b for b in got if b in {q for q, _ in queue}] == [b for b, _ in queue[:100 - len(honest)]]
    assert not app.refused
    agree(app, [ClearingApp(Verifier("software"), c.snapshot())], txs, state)


def test_an_oracle_mark_is_no_barrier_behind_which_a_queue_takes_the_next_blocks():
    """A first round-robin kept every quorum mark where it arrived (everything before it before
    it): an account queueing 1,000 deposits before the block's oracle mark took every block until
    they were gone, ahead of the mark and of every client arriving after it, as arrival order did
    (and a mark comes every block). Now the mark goes first (the round after its underlying's
    previous mark), what arrives after it after it, round-robin: the mark and the honest
    transactions are in the first block."""
    c = funded_genesis()
    (s,), (k,) = users(63, 1)
    c.register(k)
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=100)
    queue = deposits(s, k, 0, 1000)
    mark = signed(ctx.mark("BTC", 60_300.0, 2, T0 + 120, VOLS, O[:2]), ORACLES[:2])
    honest = [signed(ctx.deposit(K[i], c.accounts[K[i]].nonce, "USD", USD), [USERS[i]]) for i in range(4)]
    honest.append(signed(ctx.withdraw(K[4], c.accounts[K[4]].nonce, "USD", USD), [USERS[4]]))
    assert app.submit_many(queue + [mark] + honest) == [""] * (len(queue) + 1 + len(honest))
    txs, state = app.propose(app.genesis, set())
    got = [txs.bodies.item(i) for i in range(len(txs))]
    assert len(txs) == 100 and mark[0] in got and all(b in got for b, _ in honest)
    assert got.index(mark[0]) < min(got.index(b) for b, _ in honest)
    assert [b for b in got if b in {q for q, _ in queue}] == [b for b, _ in queue[:100 - 1 - len(honest)]]
    assert not app.refused
    agree(app, [ClearingApp(Verifier("software"), c.snapshot())], txs, state)


def test_round_robin_starts_where_an_account_holds_more_than_a_part_of_a_block():
    """The round-robin order costs a 10,000-transaction proposal about 5 ms (0.3 us a candidate
    to compute, and the fill visiting objects out of the order they were made), so a mempool of
    more than a block goes in arrival order while no account weighs more than 1/FAIR_PART of a
    block (no queue then has more than that ahead of anyone; many accounts still can, FIFO:
    docs/OPERATOR.md), and round-robin once one does."""
    c = funded_genesis()
    max_txs = 4 * clearing_app.FAIR_PART  # an account may weigh 4 and keep arrival order
    sk, ks = users(65, 80)
    for k in ks:
        c.register(k)
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=max_txs)
    items = [item for s, k in zip(sk, ks) for item in deposits(s, k, 0, 4)]  # 320: past a block
    late = deposits(USERS[0], K[0], c.accounts[K[0]].nonce, 1)
    assert app.submit_many(items + late) == [""] * (len(items) + 1)
    txs, _ = app.propose(app.genesis, set())
    assert [txs.bodies.item(i) for i in range(len(txs))] == [b for b, _ in items[:max_txs]]  # arrival order
    fifth = deposits(sk[0], ks[0], 4, 1)  # one account now weighs 5
    assert app.submit_many(fifth) == [""]
    txs, _ = app.propose(app.genesis, set())
    got = [txs.bodies.item(i) for i in range(len(txs))]
    assert len(got) == max_txs and late[0][0] in got  # round-robin: the late deposit's round is the first


def random_mempool(rnd, c, fresh):
    """A mempool in arrival order that applies in full in that order on c: deposits, withdrawals and
    trades among the five users with their nonces in order, fresh keys' registrations before what
    they sign, oracle marks (quorum) and signerless ones (refused at admission) anywhere."""
    nonce = {k: c.accounts[k].nonce for k in K}
    keys = list(zip(USERS, K))
    sk = {k: s for s, k in keys}
    out, seq = [], 2
    for _ in range(rnd.randrange(20, 60)):
        roll = rnd.random()
        if roll < 0.1 and fresh:
            s, k = fresh.pop()
            out.append(signed(ctx.register(k), [s]))
            nonce[k] = 0
            keys.append((s, k))
            sk[k] = s
        elif roll < 0.18:
            out.append(signed(ctx.mark("BTC", rnd.choice([59_500.0, 60_000.0, 60_500.0]), seq, T0 + 100 + seq,
                                       VOLS, O[:2]), ORACLES[:2]))
            seq += 1
        elif roll < 0.22:
            out.append((ctx.mark("BTC", 61_000.0, seq + 50, T0 + 100, VOLS, []), []))
        elif roll < 0.6:
            s, k = rnd.choice(keys)
            out.append(signed(ctx.deposit(k, nonce[k], "USD", USD * rnd.randrange(1, 50)), [s]))
            nonce[k] += 1
        elif roll < 0.75:
            s, k = rnd.choice(keys[:5])  # (a fresh key may have nothing to withdraw)
            out.append(signed(ctx.withdraw(k, nonce[k], "USD", USD // 10), [s]))
            nonce[k] += 1
        else:
            (_, a), (_, b) = rnd.sample(keys[1:4], 2)  # (the richest three: nobody ends short)
            out.append(signed(ctx.trade(a, nonce[a], b, nonce[b], rnd.choice([1, 2, 3]), 1, 1_000 * USD),
                              [sk[a], sk[b]]))
            nonce[a] += 1
            nonce[b] += 1
    return out


def assert_admitted(app, items) -> None:
    """random_mempool's items all admitted but its signerless marks (refused at admission since
    session 11, unchecked: no block can apply a mark without an oracle quorum)."""
    assert app.submit_many(items) == ["" if sigs else f"mark signed by 0 oracle(s), {app.head.quorum} needed"
                                      for _, sigs in items]


def test_round_robin_keeps_every_order_arrival_order_needed():
    """On random mempools that apply in full in arrival order (nonce chains, registrations before
    what they sign, trades linking chains, quorum marks and signerless ones; no mark liquidates
    anyone), _fair's order gives the same state root, the same refusals (the signerless marks
    only) and the same accounts short at the block's end; everything arriving after a quorum mark
    goes after it, and quorum marks keep their order."""
    rnd = random.Random(11)
    fresh_sk, fresh_k = users(71, 40)
    for _ in range(25):
        c = funded_genesis()
        items = random_mempool(rnd, c, list(zip(fresh_sk, fresh_k))[rnd.randrange(0, 30):])
        app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
        assert_admitted(app, items)
        arrival = list(app.mempool.items())
        fair = _fair(arrival, c)
        assert sorted(d for d, _ in fair) == sorted(d for d, _ in arrival)

        def run(order):
            state = c.snapshot()
            state.defer = True
            state.begin_block()
            refused = set()
            for d, p in order:
                try:
                    ctx.apply(state, p.tx)
                except clearing_app.Rejected:
                    refused.add(d)
            short = set(state.end_of_block())
            state.defer = False
            # the state but which trades came after the last mark (Clearing.fresh: since session 11
            # in the state, and a trade that arrived before a mark may go after it in _fair's order)
            return state.leaves(), [g for g in state.globals_leaves() if not g.startswith(b"fresh")], refused, short
        assert run(fair) == run(arrival)
        position = {d: i for i, (d, _) in enumerate(fair)}
        for i, (d, p) in enumerate(arrival):
            if p.tx.op == ctx.MARK and p.tx.signers:
                assert all(position[e] > position[d] for e, _ in arrival[i + 1:])
                assert all(position[e] < position[d] for e, q in arrival[:i] if q.tx.op == ctx.MARK and q.tx.signers)


def test_a_proposal_from_a_mempool_past_one_block_is_valid_everywhere():
    """Random mempools as above, proposed with max_txs below their size (round-robin): the block is
    valid for a software-only validator with the same root and the one-by-one reference's root,
    and nothing but the signerless marks is refused."""
    rnd = random.Random(12)
    fresh_sk, fresh_k = users(81, 40)
    for _ in range(12):
        c = funded_genesis()
        items = random_mempool(rnd, c, list(zip(fresh_sk, fresh_k))[rnd.randrange(0, 30):])
        app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=max(1, len(items) // 2))
        assert_admitted(app, items)
        txs, state = app.propose(app.genesis, set())
        assert all("oracle(s)" in r for r in app.refused.values())
        agree(app, [ClearingApp(Verifier("software"), c.snapshot())], txs, state)
