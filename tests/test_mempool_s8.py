"""Mempool admission and the client API, eighth session: what a stranger with an HTTP connection,
or a client with fresh keys (free to make), can do to everyone else's transactions.

1. A flood of fresh keys' registrations kept every new user out (fixed). Each fresh key was its
   own mempool owner weighing two (one pending, plus one for a key not registered), so a mempool
   full of them refused every other registration ("mempool full": the newcomer weighs one, and
   only an owner two lighter than the heaviest gets in), for as long as the flood was refilled.
   Now a key not registered at the last committed block counts against the client that sent it
   (the API's address, the unit of all its bounds): one flooding client is one heavy owner that
   gives way to a newcomer, and a proposal takes its share of each block like any account's.
2. The same flood kept the oracles' marks out (fixed): an oracle is no account, so a quorum mark
   weighed two like a fresh key and was refused, and prices stood still. Marks listing a quorum
   of the network's oracles are one owner now (MARKS) that weighs nothing up to MARKS_KEPT
   pending: a full mempool takes one in place of the heaviest owner's last transaction.
3. Transactions that arrive before what they need were lost (fixed): a key's deposit sent ahead
   of its registration (in one submission, or relayed), or a client's nonces n+1 before n, were
   refused by the proposal ("not registered", "expected n") and dropped from the mempool, though
   they apply right after it. Now one refused only for that stays pending while what it waits
   for is pending (ClearingApp._early)."""
import contextlib
import hashlib
import random
from collections import Counter
from types import SimpleNamespace

import pytest

from consensus import rpc as rpc_mod
from consensus.apps import clearing_app
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing_app import ClearingApp
from consensus.verify import Verifier
from tests.test_clearing_columns import funded_genesis
from tests.test_clearing_properties import K, O, ORACLES, T0, USD, USERS, block_of, signed
from tests.test_ledger_proposal_s6 import VOLS, users

pytestmark = pytest.mark.usefixtures("quiet_logs")


def api(app, max_mempool):
    """The client API's admission path (Rpc._submit: WorkBudget, the mempool bound, the client)."""
    return rpc_mod.Rpc(SimpleNamespace(app=app, submitted=0), ("127.0.0.1", 0), max_mempool=max_mempool)


def digest(item):
    return hashlib.sha256(item[0]).digest()


def step(app, validator, parent, vparent):
    """One block proposed by app, checked by a software-only validator (valid, same root, no
    violation), committed by both."""
    txs, state = app.propose(parent, set())
    block = block_of(txs, bytes(32), state.root, validator)
    v = validator.validate(vparent, block, ((), (), ()))
    assert v.ok and v.state.root == state.root, v.reason
    assert v.state.clearing.violations() == []
    app.committed(block_of(txs, bytes(32), state.root, app), state)
    validator.committed(block, v.state)
    return txs, state, v.state


# ---- 1. a registration flood and a new user -------------------------------------------------------


@pytest.mark.parametrize("clients", [1, 4, 16])
def test_a_flood_of_fresh_keys_registrations_lets_a_new_user_in_within_a_bounded_number_of_blocks(clients):
    """An attacker sending through `clients` addresses keeps a mempool of 64 full of fresh keys'
    registrations and refills it before every block (80 more each time, so some of its own give
    way too); a newcomer sends its registration and two deposits once, after the flood filled the
    mempool. Before, the newcomer's registration was refused ("mempool full") and never got in.
    Now all three are admitted (each in place of the attacker's latest), none is evicted by the
    refills, and the newcomer's account exists within ceil(max_mempool / max_txs) + 1 blocks
    (docs/OPERATOR.md's bound: what arrived before it), each deposit at most a block after it
    (from one flooding address, all in the next block: the flood is one owner of the
    round-robin, the newcomer another)."""
    c = funded_genesis()
    max_mempool, max_txs = 64, 8
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=max_txs)
    validator = ClearingApp(Verifier("software"), c.snapshot(), max_txs=max_txs)
    rpc = api(app, max_mempool)
    fresh = iter(zip(*users(91, 1000)))
    attackers = [f"10.0.{i}.1" for i in range(clients)]

    def flood(n):
        for j in range(n):
            s, k = next(fresh)
            with contextlib.suppress(rpc_mod._Full):  # (503 once its clients hold their share)
                rpc._submit([signed(ctx.register(k), [s])], attackers[j % clients])
    flood(max_mempool + 16)
    assert len(app.mempool) == max_mempool
    (nsk,), (nk,) = users(92, 1)
    newcomer = [signed(ctx.register(nk), [nsk])] + [signed(ctx.deposit(nk, n, "USD", USD), [nsk]) for n in range(2)]
    answers = rpc._submit(newcomer, "192.0.2.7")
    assert [a["reason"] for a in answers] == [""] * 3
    parent, vparent = app.genesis, validator.genesis
    bound = -(-max_mempool // max_txs) + 1
    registered = None
    for block in range(1, bound + 3):
        flood(80)
        assert len(app.mempool) == max_mempool
        assert digest(newcomer[0]) in app.mempool or registered  # its registration is never evicted
        _, parent, vparent = step(app, validator, parent, vparent)
        acct = parent.clearing.accounts.get(nk)
        if acct is not None and registered is None:
            registered = block
        if acct is not None and acct.collateral.get("USD") == 2 * USD:
            break
    else:
        pytest.fail(f"the newcomer's account is not funded after {bound + 2} blocks (registered: {registered})")
    assert registered <= bound and block <= registered + 2  # (then one block for each deposit)
    if clients == 1:  # the flood is one owner of the round-robin, the newcomer another: the next block
        assert block == 1
    assert not any(digest(item) in app.refused for item in newcomer)


def test_an_ipv6_sites_many_64s_are_one_owner_of_fresh_keys():
    """One IPv6 /48 is 65,536 API clients (/64s): counted per /64, 64 of them each sending one
    fresh key's registration filled a mempool of 64 with owners weighing two, and a newcomer from
    elsewhere was refused. Fresh keys count against an IPv6 client's /48 (rpc.site_of): the site
    is one heavy owner, the newcomer gets in in place of its latest registration."""
    c = funded_genesis()
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    rpc = api(app, 64)
    sk, ks = users(98, 65)
    for j, (s, k) in enumerate(zip(sk[:64], ks[:64])):
        assert rpc._submit([signed(ctx.register(k), [s])], rpc_mod.client_of(f"2001:db8:7:{j:x}::1"))[0]["accepted"]
    assert len(app.mempool) == 64
    newcomer = signed(ctx.register(ks[64]), [sk[64]])
    assert rpc._submit([newcomer], rpc_mod.client_of("2001:db8:9:1::1"))[0]["reason"] == ""
    assert digest(newcomer) in app.mempool and len(app.mempool) == 64
    assert rpc_mod.site_of(rpc_mod.client_of("2001:db8:7:ffff::1")) == "2001:db8:7::/48"
    assert rpc_mod.site_of("10.0.0.1") == "10.0.0.1"


def test_a_flooding_clients_registrations_take_a_share_of_each_block_not_all_of_it():
    """One client's 64 fresh keys' registrations arrived first, then five registered accounts
    send three deposits each: the flood is one owner in the proposal's round-robin (by key, each
    registration was an account of its own, all in round 0 ahead of every account's second
    transaction), so a block of 16 takes every honest deposit's first two rounds' worth (before,
    16 registrations took it, the honest deposits waited)."""
    c = funded_genesis()
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=16)
    rpc = api(app, 1000)
    sk, ks = users(93, 64)
    rpc._submit([signed(ctx.register(k), [s]) for s, k in zip(sk, ks)], "10.1.0.1")
    honest = [signed(ctx.deposit(k, c.accounts[k].nonce + n, "USD", USD), [s])
              for n in range(3) for s, k in zip(USERS, K)]
    assert [a["reason"] for a in rpc._submit(honest, "192.0.2.8")] == [""] * len(honest)
    txs, state = app.propose(app.genesis, set())
    got = [ctx.decode(txs.bodies.item(i)) for i in range(len(txs))]
    deposits = sum(tx.op == ctx.DEPOSIT for tx in got)
    assert len(got) == 16 and deposits >= 10, [tx.op for tx in got]
    validator = ClearingApp(Verifier("software"), c.snapshot(), max_txs=16)
    v = validator.validate(validator.genesis, block_of(txs, bytes(32), state.root, validator), ((), (), ()))
    assert v.ok and v.state.root == state.root, v.reason


# ---- 2. the oracles' marks ------------------------------------------------------------------------


@pytest.mark.parametrize("via_api", [False, True])
def test_an_oracle_mark_gets_into_a_mempool_full_of_fresh_keys(via_api):
    """64 fresh keys' registrations fill a mempool of 64 (in-process, each key its own owner; or
    through the API from 64 addresses, each a client of its own): a quorum mark was refused
    ("mempool full": the oracle, no account, weighed like a fresh key), so the price feed stopped.
    Now it is admitted in place of a registration, nobody's submission evicts it, and it is in
    the next block, which applies its price."""
    c = funded_genesis()
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=8)
    rpc = api(app, 64)
    sk, ks = users(94, 80)
    for j, (s, k) in enumerate(zip(sk[:64], ks[:64])):
        item = signed(ctx.register(k), [s])
        assert (rpc._submit([item], f"10.2.{j}.1")[0]["reason"] if via_api else app.submit_many([item])[0]) == ""
    app.max_mempool = 64
    mark = signed(ctx.mark("BTC", 60_300.0, 2, T0 + 120, VOLS, O[:2]), ORACLES[:2])
    assert (rpc._submit([mark], "192.0.2.9")[0]["reason"] if via_api else app.submit_many([mark])[0]) == ""
    assert digest(mark) in app.mempool and len(app.mempool) == 64
    for j, (s, k) in enumerate(zip(sk[64:], ks[64:])):  # more fresh keys: refused, the mark stays
        item = signed(ctx.register(k), [s])
        if via_api:
            with pytest.raises(rpc_mod._Full):
                rpc._submit([item], f"10.3.{j}.1")
        else:
            assert app.submit_many([item])[0].startswith("mempool full")
    assert digest(mark) in app.mempool
    honest = signed(ctx.deposit(K[0], c.accounts[K[0]].nonce, "USD", USD), [USERS[0]])
    assert app.submit_many([honest]) == [""] and digest(mark) in app.mempool
    txs, state = app.propose(app.genesis, set())
    assert mark[0] in {txs.bodies.item(i) for i in range(len(txs))}
    assert state.clearing.marks["BTC"].sequence == 2


def test_marks_past_marks_kept_weigh_like_anyones():
    """The oracles' marks weigh nothing only up to MARKS_KEPT pending: past it they weigh what
    they hold beyond it, so a quorum flooding marks cannot keep the mempool to itself."""
    c = funded_genesis()
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    kept = clearing_app.MARKS_KEPT
    marks = [signed(ctx.mark("BTC", 60_000.0 + n, 2 + n, T0 + 120, VOLS, O[:2]), ORACLES[:2]) for n in range(kept + 3)]
    assert app.submit_many(marks) == [""] * len(marks)
    assert app.mempool.heaviest() == (3, clearing_app.MARKS)
    app.max_mempool = len(marks)
    honest = signed(ctx.deposit(K[0], c.accounts[K[0]].nonce, "USD", USD), [USERS[0]])
    assert app.submit_many([honest]) == [""]  # in place of the latest mark
    assert digest(marks[-1]) not in app.mempool and digest(marks[0]) in app.mempool


# ---- 3. what can never apply ----------------------------------------------------------------------


def test_a_registration_after_its_keys_deposit_in_one_submission_loses_nothing():
    """[deposit(k, 0), register(k)] in one submit_many call: both were admitted in that order, the
    proposal refused the deposit (not registered) and dropped it from the mempool: lost. Now a
    transaction refused only for coming before its key's pending registration stays pending: the
    first block registers k (the block a validator accepts), the next credits the deposit."""
    c = funded_genesis()
    (s,), (k,) = users(95, 1)
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    validator = ClearingApp(Verifier("software"), c.snapshot())
    items = [signed(ctx.deposit(k, 0, "USD", USD), [s]), signed(ctx.register(k), [s])]
    assert app.submit_many(items) == ["", ""]
    txs, parent, vparent = step(app, validator, app.genesis, validator.genesis)
    assert [txs.bodies.item(i) for i in range(len(txs))] == [items[1][0]]
    assert app.refused == {} and digest(items[0]) in app.mempool
    txs, parent, vparent = step(app, validator, parent, vparent)
    assert [txs.bodies.item(i) for i in range(len(txs))] == [items[0][0]]
    assert parent.clearing.accounts[k].collateral == {"USD": USD} and len(app.mempool) == 0


def test_nonces_that_arrive_out_of_order_are_not_lost():
    """A client's consecutive deposits reach the validator in the wrong order (two connections, or
    relayed): nonces n+2, n+1 then n. The proposal applied n and refused (and dropped) n+1 and
    n+2 ("expected n"): lost, though the chain applies. Now each stays pending while every nonce
    below it is pending, and all three are credited within three blocks. A nonce past a gap that
    nothing pending fills is still refused and dropped, with the reason."""
    c = funded_genesis()
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    validator = ClearingApp(Verifier("software"), c.snapshot())
    n = c.accounts[K[2]].nonce
    chain = [signed(ctx.deposit(K[2], n + j, "USD", USD), [USERS[2]]) for j in range(3)]
    gap = signed(ctx.deposit(K[3], c.accounts[K[3]].nonce + 5, "USD", USD), [USERS[3]])
    for item in reversed(chain):
        assert app.submit_many([item]) == [""]
    assert app.submit_many([gap]) == [""]
    parent, vparent = app.genesis, validator.genesis
    for _ in range(3):
        _, parent, vparent = step(app, validator, parent, vparent)
    assert parent.clearing.accounts[K[2]].nonce == n + 3
    assert parent.clearing.accounts[K[2]].collateral["USD"] == c.accounts[K[2]].collateral["USD"] + 3 * USD
    assert not any(digest(item) in app.refused for item in chain)
    assert "expected" in app.refused[digest(gap)] and digest(gap) not in app.mempool


class CountingDict(dict):
    def __init__(self, *args):
        super().__init__(*args)
        self.lookups = 0

    def __contains__(self, key):
        self.lookups += 1
        return dict.__contains__(self, key)


def test_a_long_nonce_run_behind_a_refused_one_is_looked_at_once():
    """An account queues a withdrawal it cannot pay at its next nonce and k deposits after it:
    each deposit is refused "expected n" and kept while the nonces below it are pending. Each
    walked every nonce below it (k^2 / 2 lookups: 40,000, an account's window, cost the proposer
    about a minute, 2.65 s at 8,000 measured). Now an account's run is walked once: at most
    2 k lookups. The withdrawal is refused for good, so the deposits can never apply: they
    go in the same proposal, each with the reason of the gap (they stayed one block more before
    tests/test_api_review_s8.py's fix: what they waited for was refused in that very fill)."""
    k = 2_000
    c = funded_genesis()
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=4 * k)
    n = c.accounts[K[0]].nonce
    items = [signed(ctx.withdraw(K[0], n, "USD", 10**18), [USERS[0]])]
    items += [signed(ctx.deposit(K[0], n + j, "USD", 1), [USERS[0]]) for j in range(1, k)]
    assert app.submit_many(items) == [""] * k
    app.mempool.nonces = CountingDict(app.mempool.nonces)
    txs, _ = app.propose(app.genesis, set())
    assert len(txs) == 0 and app.mempool.nonces.lookups <= 2 * k
    assert digest(items[0]) in app.refused and len(app.mempool) == 0
    assert all("expected" in app.refused[digest(item)] for item in items[1:])


def test_copies_of_a_transaction_in_one_submission_are_checked_once():
    """A batch of 300 copies of one deposit and 300 of one with a bad signature: every copy's
    signatures were checked (600 verifications, the client's share of the loop spent 300 times
    over for two verdicts). Now the copies read their first's verdict: two checks, the same
    per-item answers, one transaction admitted."""
    c = funded_genesis()
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    checked = []
    verify = app.verifier.verify_each
    app.verifier.verify_each = lambda keys, *a: checked.append(len(keys)) or verify(keys, *a)
    good = signed(ctx.deposit(K[0], c.accounts[K[0]].nonce, "USD", USD), [USERS[0]])
    bad = (ctx.deposit(K[1], c.accounts[K[1]].nonce, "USD", USD), [bytes(64)])
    reasons = app.submit_many([good, bad] * 300)
    assert reasons == ["", "a signature does not verify"] * 300
    assert sum(checked) == 2 and len(app.mempool) == 1


# ---- 4. all of it at once ---------------------------------------------------------------------------


def check_index(app):
    """The Mempool's owner counts, owner weights and (account, nonce) index agree with a recount."""
    pool = app.mempool
    counts = Counter(clearing_app._owner_of(p) for p in pool.values())
    assert pool.count == dict(counts) and set(pool.queues) == set(counts)
    nonces = Counter(pair for p in pool.values() for pair in ctx.consumed(p.tx)[0])
    assert pool.nonces == dict(nonces)
    top, heavy = pool.heaviest()
    assert top == max((app._weight(o, n) for o, n in counts.items()), default=0)
    if heavy is not None:
        assert app._weight(heavy, counts[heavy]) == top


def test_random_clients_submissions_never_raise_and_every_block_is_valid():
    """Random submissions through the API from a few addresses into a bounded mempool: fresh keys'
    registrations and their deposits (some before the registration), registered accounts' nonces
    in and out of order, duplicates, bad signatures, quorum marks and signerless ones, far-ahead
    nonces; blocks proposed, checked by a software-only validator and committed between them.
    Nothing raises, the bound holds, the index matches a recount, every block is valid with the
    proposer's root and no invariant violation."""
    rnd = random.Random(8)
    c = funded_genesis()
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=16)
    validator = ClearingApp(Verifier("software"), c.snapshot(), max_txs=16)
    rpc = api(app, 48)
    fresh = list(zip(*users(97, 200)))
    keys = list(zip(USERS, K))
    nxt = {k: c.accounts[k].nonce for _, k in keys}
    parent, vparent, seq = app.genesis, validator.genesis, 2
    for _ in range(8):
        for _ in range(6):
            items = []
            for _ in range(rnd.randrange(1, 12)):
                roll = rnd.random()
                if roll < 0.25 and fresh:
                    s, k = fresh.pop()
                    reg, dep = signed(ctx.register(k), [s]), signed(ctx.deposit(k, 0, "USD", USD), [s])
                    items += [dep, reg] if rnd.random() < 0.5 else [reg, dep]
                elif roll < 0.55:
                    s, k = rnd.choice(keys)
                    chain = [signed(ctx.deposit(k, nxt[k] + j, "USD", USD), [s]) for j in range(rnd.randrange(1, 4))]
                    nxt[k] += len(chain)
                    items += chain[::-1] if rnd.random() < 0.5 else chain
                elif roll < 0.65:
                    items.append(signed(ctx.mark("BTC", rnd.choice([59_900.0, 60_100.0]), seq, T0 + 100 + seq, VOLS,
                                                 O[:2]), ORACLES[:2]))
                    seq += 1
                elif roll < 0.72:
                    items.append((ctx.mark("BTC", 61_000.0, seq + 9, T0 + 100, VOLS, []), []))
                elif roll < 0.8:
                    s, k = rnd.choice(keys)
                    items.append((ctx.deposit(k, nxt[k], "USD", USD), [bytes(64)]))
                elif roll < 0.88:
                    s, k = rnd.choice(keys)
                    items.append(signed(ctx.deposit(k, nxt[k] + 3000, "USD", USD), [s]))
                elif items:
                    items.append(rnd.choice(items))
            with contextlib.suppress(rpc_mod._Full):
                answers = rpc._submit(items, f"10.9.{rnd.randrange(4)}.1")
                assert len(answers) == len(items)
            assert len(app.mempool) <= 48
            check_index(app)
        _, parent, vparent = step(app, validator, parent, vparent)
        check_index(app)
        for _, k in keys:  # what left the mempool unapplied is sent again from the committed nonce
            pend = [p.tx.fields[1] for p in app.mempool.values() if p.tx.op == ctx.DEPOSIT and p.tx.fields[0] == k]
            nxt[k] = max([parent.clearing.accounts[k].nonce] + [n + 1 for n in pend if n < nxt[k]])


def test_the_demo_markets_backlog_keeps_its_blocks_full():
    """The demo's market (a mark every 20 transactions) with 20 blocks of its stream pending: the
    first cut of the quorum-marks rule moved every pending quorum mark to the front of the
    proposal, so block 1 was 969 marks, and the trades that arrived before them, checked at prices
    hundreds of marks later, left their accounts below margin; each refusal took its account's
    later nonces with it and block 2 held 352 transactions, 2 of them trades (the demo's
    10,000-transaction run committed 155 transactions a second instead of 835). Now only an
    underlying's first quorum mark moves, and only when it would miss the block: both blocks are
    full, nothing is refused, and they are mostly trades."""
    from consensus.apps import clearing_load
    load = clearing_load.market_load(1, 1_000, 5)
    app = ClearingApp(Verifier("accel", "cpu"), clearing_load.genesis_market(), max_txs=1_000)
    app.submit_many(load.take(20_000))
    parent = app.genesis
    for _ in range(2):
        txs, state = app.propose(parent, set())
        ops = [ctx.decode(txs.bodies.item(i)).op for i in range(len(txs))]
        assert len(txs) == 1_000 and not app.refused
        assert ops.count(ctx.TRADE) >= 800 and ops.count(ctx.MARK) <= 100
        app.committed(block_of(txs, bytes(32), state.root, app), state)
        parent = state
