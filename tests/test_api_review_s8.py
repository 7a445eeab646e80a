"""Fresh attacks on the eighth session's client API and mempool changes (519fbf0 .. 6d0480e):
what an account holder, a stranger with many addresses or an oracle can do with them.

1. ClearingApp._early (8fdee39, a2a355a) kept a transaction refused only for arriving early while
   what it waits for is pending, but did not ask whether that ever applies. Two accounts' trades
   waiting on each other's nonces ((A, a), (B, b + 1) and (A, a + 1), (B, b)) each saw the other
   pending and stayed for ever, retried by every proposal (fixed: what a kept one waits for must
   lead to a transaction the fill did not refuse). The walk it did per expected nonce was
   quadratic in an account's far nonces interleaved with ones that apply (fixed: one walk over
   each run of pending pairs)."""
import hashlib

import pytest

from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing_app import ClearingApp
from consensus.rpc import WorkBudget
from consensus.verify import Verifier
from tests.test_clearing_columns import funded_genesis
from tests.test_clearing_properties import K, USD, USERS, signed
from tests.test_mempool_s8 import CountingDict, step

pytestmark = pytest.mark.usefixtures("quiet_logs")


def digest(item):
    return hashlib.sha256(item[0]).digest()


def trade(buyer, bn, seller, sn, size=1, price=100):
    return signed(ctx.trade(K[buyer], bn, K[seller], sn, 1, size, price), [USERS[buyer], USERS[seller]])


# ---- 1. ClearingApp._early ------------------------------------------------------------------------


def test_trades_waiting_on_each_others_nonces_are_not_kept_for_ever():
    """Accounts 0 and 1 sign two trades that each consume the nonce the other one waits for, and
    accounts 2, 3 and 4 a cycle of three: none can ever apply. Each was refused "expected n" with
    its nonce n pending (held by the other), so _early kept every one, and every proposal tried
    them again, for ever (an account pair's whole nonce window of them: thousands of refusals in
    every block, and the mempool room with them). Now a transaction waiting on pairs whose every
    holder the same fill refused (and did not keep) is evicted with its reason in that proposal;
    a legitimate out-of-order pair of the same accounts' deposits beside them still applies."""
    c = funded_genesis()
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    validator = ClearingApp(Verifier("software"), c.snapshot())
    n = [c.accounts[k].nonce for k in K]
    stuck = [trade(0, n[0], 1, n[1] + 1), trade(0, n[0] + 1, 1, n[1]),
             trade(2, n[2], 3, n[3] + 1), trade(3, n[3], 4, n[4] + 1), trade(4, n[4], 2, n[2] + 1)]
    assert app.submit_many(stuck) == [""] * len(stuck)
    txs, parent, vparent = step(app, validator, app.genesis, validator.genesis)
    assert len(txs) == 0
    for item in stuck:
        assert digest(item) not in app.mempool
        assert "expected" in app.refused[digest(item)]
    # the same accounts' own deposits, sent out of order, are still kept and credited
    later = [signed(ctx.deposit(K[0], n[0] + j, "USD", USD), [USERS[0]]) for j in (1, 0)]
    assert app.submit_many(later) == ["", ""]
    for _ in range(2):
        _, parent, vparent = step(app, validator, parent, vparent)
    assert parent.clearing.accounts[K[0]].nonce == n[0] + 2 and len(app.mempool) == 0


def test_trades_arriving_in_reverse_order_between_two_accounts_still_all_apply():
    """The rule above must not drop an honest chain: trades i = 0..7 between accounts 0 and 1, each
    consuming both accounts' nonce n + i, arrive last first. The first fill applies trade 0 and
    refuses the rest "expected"; each waits on pairs held by the one before it, refused but kept,
    down to trade 0, which applied: all are kept and all apply."""
    c = funded_genesis()
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    validator = ClearingApp(Verifier("software"), c.snapshot())
    n0, n1 = c.accounts[K[0]].nonce, c.accounts[K[1]].nonce
    chain = [trade(0, n0 + i, 1, n1 + i) for i in range(8)]
    for item in reversed(chain):
        assert app.submit_many([item]) == [""]
    parent, vparent = app.genesis, validator.genesis
    for _ in range(8):
        _, parent, vparent = step(app, validator, parent, vparent)
        if not app.mempool:
            break
    assert not any(digest(item) in app.refused for item in chain)
    assert parent.clearing.accounts[K[0]].nonce == n0 + 8 and parent.clearing.accounts[K[1]].nonce == n1 + 8


def test_a_nonce_held_by_a_trade_waiting_for_its_keys_registration_is_no_gap():
    """A fresh key k's registration, its deposit and its trade with account 0 (k's nonce 1,
    account 0's next nonce a), and account 0's deposit at a + 1, arrive registration last. The
    first fill registers k and refuses the rest as early: the trade and k's deposit wait for k's
    registration, account 0's deposit for nonce a, which the trade holds. The trade is kept, so
    nonce a is no gap and the deposit must stay too (a first cut of the fix above counted only
    nonces held by transactions kept for their nonces, and evicted it). All four apply."""
    from tests.test_ledger_proposal_s6 import users
    c = funded_genesis()
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    validator = ClearingApp(Verifier("software"), c.snapshot())
    (s,), (k,) = users(99, 1)
    a = c.accounts[K[0]].nonce
    items = [signed(ctx.deposit(K[0], a + 1, "USD", USD), [USERS[0]]),
             signed(ctx.deposit(k, 0, "USD", 5000 * USD), [s]),
             signed(ctx.trade(k, 1, K[0], a, 1, 1, 100), [s, USERS[0]]),
             signed(ctx.register(k), [s])]
    assert app.submit_many(items) == [""] * 4
    parent, vparent = app.genesis, validator.genesis
    for _ in range(4):
        _, parent, vparent = step(app, validator, parent, vparent)
    assert app.refused == {} and len(app.mempool) == 0
    assert parent.clearing.accounts[K[0]].nonce == a + 2 and parent.clearing.accounts[k].nonce == 2


def test_far_nonces_interleaved_with_ones_that_apply_are_looked_at_about_once():
    """An account sends k deposits at nonces n + k + i interleaved with k at n + i (far, near,
    far, near, ...): each far one is refused "nonce n + k + i, expected n + i", a different
    expected nonce each time, and kept (every nonce between is pending). _early's walk was
    memoized per (account, expected) only, so each far one walked k pairs: k^2 lookups of
    Mempool.nonces (4,000 of each: 16 million, 3 s of the proposer's time; an account's window
    at the project's max_txs is 40,000). Now a run of pairs found pending is skipped as a whole:
    at most 2 k lookups, the same verdicts (the far ones kept, then applied). (Since review s21 the
    candidates take an account's deposits in nonce order, so the near ones here are trades, which
    keep their places.)"""
    k = 300
    c = funded_genesis()
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=4 * k)
    validator = ClearingApp(Verifier("software"), c.snapshot(), max_txs=4 * k)
    n, m = c.accounts[K[0]].nonce, c.accounts[K[3]].nonce
    items = []
    for i in range(k):
        items.append(signed(ctx.deposit(K[0], n + k + i, "USD", 1), [USERS[0]]))
        items.append(trade(0, n + i, 3, m + i))
    assert app.submit_many(items) == [""] * (2 * k)
    app.mempool.nonces = CountingDict(app.mempool.nonces)
    txs, parent, vparent = step(app, validator, app.genesis, validator.genesis)
    assert len(txs) == k and app.mempool.nonces.lookups <= 2 * k
    assert app.refused == {} and len(app.mempool) == k
    _, parent, _ = step(app, validator, parent, vparent)
    assert parent.clearing.accounts[K[0]].nonce == n + 2 * k and len(app.mempool) == 0


@pytest.mark.parametrize("with_fresh_keys", [False, True])
def test_random_out_of_order_nonces_and_trades_always_drain_from_the_mempool(with_fresh_keys):
    """A seeded random walk over the class: five accounts' and two fresh keys' deposits and trades
    at nonces a few past their next ones (gaps, duplicates, cycles, chains out of order, a fresh
    key's transactions before its registration), submitted in random order through two clients,
    then no more submissions. Whatever the shape, every block is valid (a software-only
    validator agrees), and the mempool empties within a bounded number of blocks: nothing is
    kept for ever. Before the fix, seed 9's trades (without fresh keys) formed a cycle, kept
    pending for good."""
    import random

    from tests.test_ledger_proposal_s6 import users
    fresh_sk, fresh = users(98, 2) if with_fresh_keys else ([], [])
    keys, sks = K + fresh, USERS + fresh_sk
    for seed in range(24):
        rng = random.Random(seed)
        c = funded_genesis()
        app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=8)
        validator = ClearingApp(Verifier("software"), c.snapshot(), max_txs=8)
        n = [c.accounts[k].nonce if k in c.accounts else 0 for k in keys]
        items = [signed(ctx.register(k), [sk]) for k, sk in zip(fresh, fresh_sk)]
        for _ in range(30):
            a = rng.randrange(len(keys))
            if rng.random() < 0.5:
                items.append(signed(ctx.deposit(keys[a], n[a] + rng.randrange(5), "USD", 100 * USD), [sks[a]]))
            else:
                b = rng.choice([x for x in range(len(keys)) if x != a])
                body = ctx.trade(keys[a], n[a] + rng.randrange(5), keys[b], n[b] + rng.randrange(5), 1, 1, 100)
                items.append(signed(body, [sks[a], sks[b]]))
        rng.shuffle(items)
        for at in range(0, len(items), 7):
            app.submit_many(items[at:at + 7], client=f"10.0.0.{at % 2}")
        parent, vparent = app.genesis, validator.genesis
        for _ in range(12):
            if not app.mempool:
                break
            _, parent, vparent = step(app, validator, parent, vparent)
        assert not app.mempool, (seed, len(app.mempool), sorted(set(app.refused.values()))[:3])
        assert parent.clearing.violations() == []


# ---- 2. submit_many's client ----------------------------------------------------------------------


def test_a_client_whose_name_cannot_be_written_does_not_raise_out_of_submit_many():
    """submit_many(items, client) names the owner of a fresh key's transactions with str(client):
    an in-process caller's client object whose str() raises took submit_many down with it (no
    input may raise out of it). Now such a client is "?" (the API's name for an unknown peer),
    and a client given as bytes, a number or a list is named by its str() as before."""
    from tests.test_ledger_proposal_s6 import users

    class Unwritable:
        def __str__(self):
            raise RuntimeError("no name")

    c = funded_genesis()
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    sk, pk = users(97, 4)
    for i, client in enumerate([Unwritable(), b"x", 7, [1]]):
        items = [signed(ctx.register(pk[i]), [sk[i]]), signed(ctx.deposit(pk[i], 0, "USD", USD), [sk[i]])]
        assert app.submit_many(items, client=client) == ["", ""]
    owners = {p.owner for p in app.mempool.values()}
    assert owners == {("client", "?"), ("client", "b'x'"), ("client", "7"), ("client", "[1]")}


# ---- 3. rpc.WorkBudget: a site's largest request ----------------------------------------------------


def test_one_large_request_long_ago_does_not_hold_a_site_below_its_part_for_ever():
    """Found attacking 7e2d799 (a request starts only when the total has room for its site's
    largest): the largest was kept for as long as the site was tracked. An honest client that
    once sent one 0.8 s batch (or whose IPv6 /48 or NAT address a stranger shares, who sent one)
    then asks 5 ms every 50 ms beside four heavy clients: every request of its waited for a full
    total, which the four (at their parts) keep from filling: 2.0 s of 8 in each 100 s, a quarter
    of its part, for ever. Now a site's largest is forgotten once the fair clock has allotted it
    LARGEST_KEPT times that since (its next larger request sets it again): the same client gets
    its whole part (8.0 s) in the second 100 s, as one with no large request does."""
    from tests.test_rpc_budget_s8 import HONEST, T0, four_heavy, simulate
    budget = WorkBudget(0.1, 0.4)
    assert budget.refusal(HONEST, T0 - 100.0)[0] == ""
    budget.charge(HONEST, 0.8)
    clients = four_heavy() + [(HONEST, 0.05, 0.005, 0.001)]
    simulate(budget, clients, 100.0)
    later = simulate(budget, clients, 100.0, T0 + 100.0)
    assert later[HONEST][2] >= 0.95 * 0.4 / 5 * 100.0, later[HONEST]
    assert all(later[a][2] <= 0.4 / 5 * 100.0 + 0.5 for a, *_ in four_heavy()), later


def test_clients_sending_a_large_request_whenever_their_largest_is_forgotten_gain_little():
    """The other side of the test above: four clients sending small requests as fast as allowed
    and a 1.6 s one (twice the total's burst) every 80 s, just after their largest is forgotten,
    each such request then starting without waiting for room. An honest client (5 ms every
    0.1 s) is still admitted for most of its tries and never waits more than about 2 s (the
    bound test_rpc_budget_s8 holds clients sending only large requests to)."""
    import heapq

    from tests.test_rpc_budget_s8 import ATTACKERS, HONEST, T0
    budget, every, seconds = WorkBudget(0.1, 0.4), 80.0, 200.0
    clients = [(a, 0.01) for a in ATTACKERS] + [(HONEST, 0.1)]
    big_at = {a: T0 + k * every / 4 for k, a in enumerate(ATTACKERS)}
    events = [(T0 + 0.0001 * i, i) for i in range(len(clients))]
    heapq.heapify(events)
    tries = admitted = 0
    last, longest = None, 0.0
    while events:
        at, i = heapq.heappop(events)
        if at >= T0 + seconds:
            continue
        name, period = clients[i]
        if not budget.refusal(name, at)[0]:
            if name == HONEST:
                cost = 0.005
            elif at >= big_at[name]:
                cost, big_at[name] = 1.6, at + every
            else:
                cost = 0.001
            budget.charge(name, cost)
            if name == HONEST and at > T0 + 30.0:
                admitted += 1
                longest = max(longest, at - last) if last is not None else 0.0
                last = at
        if name == HONEST and at > T0 + 30.0:
            tries += 1
        heapq.heappush(events, (at + period, i))
    assert admitted >= 0.8 * tries and longest <= 3.0, (tries, admitted, longest)
