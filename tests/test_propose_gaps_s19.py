"""A declined run without what its nonces refuse (_nonce_gaps, nineteenth session): the same
proposals as applying the run one by one. Transactions queued ahead of their account's missing
nonce were applied, and refused, by every proposal (a run holding one declined and went one by
one); now a declined run is tried again without them, recorded as refused with apply's TooEarly.
Differential: one app proposing as now, one with _nonce_gaps finding nothing (the fills as they
were), the same transactions, three blocks in a row: the same blocks, states, mempools (in order)
and refusals, over random mempools heavy with nonces out of order (chains sent backwards, ahead
of a missing nonce, trades whose one leg is early and the other used or early)."""
import hashlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.apps import clearing_app
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing import Rejected, TooEarly
from consensus.apps.clearing_app import ClearingApp, _nonce_gaps
from consensus.verify import Verifier
from tests.test_clearing_properties import block_of, signed
from tests.test_propose_scale_s15 import FRESH_K, P, RICH_K, SK, THIN_K, market, outcome, stream

pytestmark = pytest.mark.usefixtures("quiet_logs")


def out_of_order(rnd: random.Random, head) -> list:
    """Chains of deposits sent backwards or with their first nonce last, trades with one leg early."""
    out = []
    for k in rnd.sample(RICH_K + THIN_K + FRESH_K[:2], 4):
        n = head.accounts[k].nonce if k in head.accounts else 0
        n += rnd.choice((0, 0, 1, 5))  # (past it: a gap no transaction fills)
        chain = [signed(ctx.deposit(k, n + j, "USD", USD_), [SK[k]]) for j in range(rnd.randint(2, 6))]
        if rnd.random() < 0.5:
            chain.reverse()
        else:
            chain.append(chain.pop(0))
        out += chain
    for _ in range(rnd.randint(0, 4)):
        b, s = rnd.sample(RICH_K + THIN_K, 2)
        nb = head.accounts[b].nonce + rnd.choice((0, 1, -1, 9))
        ns = head.accounts[s].nonce + rnd.choice((0, 2, 9))
        out.append(signed(ctx.trade(b, max(0, nb), s, ns, 3, 1, P), [SK[b], SK[s]]))
    return out


USD_ = 10**6


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_a_proposal_is_the_one_applying_its_runs_one_by_one_made(seed):
    rnd = random.Random(seed)
    c = market()
    room = rnd.randint(3, 40)
    apps = [ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=room) for _ in range(2)]
    items = stream(rnd, c, heavy=rnd.random() < 0.3)
    for item in out_of_order(rnd, c):
        items.insert(rnd.randint(0, len(items)), item)
    for app in apps:
        assert not [r for r in app.submit_many(items) if r.startswith("malformed")]
    parents = [app.genesis for app in apps]
    min_run = clearing_app.MIN_RUN
    clearing_app.MIN_RUN = rnd.choice((2, min_run))  # (runs this short columnar, declined and tried again)
    try:
        for _ in range(3):
            clearing_app._nonce_gaps = _nonce_gaps
            now = apps[0].propose(parents[0], set())
            clearing_app._nonce_gaps = lambda state, txs: {}
            was = apps[1].propose(parents[1], set())
            assert outcome(apps[0], now) == outcome(apps[1], was)
            for app, (txs, state) in zip(apps, (now, was)):
                app.committed(block_of(txs, bytes(32), state.root, app), state)
            parents = [now[1], was[1]]
    finally:
        clearing_app._nonce_gaps, clearing_app.MIN_RUN = _nonce_gaps, min_run


def test_the_differential_does_find_gaps():
    """Across seeds the skipped path is taken: the comparison above is not of two identical paths."""
    total = 0
    real = clearing_app._nonce_gaps

    def counting(state, txs):
        nonlocal total
        gaps = real(state, txs)
        total += len(gaps)
        return gaps
    clearing_app._nonce_gaps = counting
    try:
        for seed in range(12):
            rnd = random.Random(seed)
            c = market()
            app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=40)
            items = stream(rnd, c, heavy=False) + out_of_order(rnd, c)
            app.submit_many(items)
            app.propose(app.genesis, set())
    finally:
        clearing_app._nonce_gaps = real
    assert total > 20


def test_a_gap_is_refused_as_apply_refuses_it():
    """Where the run applies, each transaction left out is refused with the TooEarly apply gives it
    at its place: apply on the state the run's transactions before it lead to."""
    rnd = random.Random(7)
    checked = 0
    for _ in range(40):
        c = market()
        txs = [ctx.decode(body) for body, _ in stream(rnd, c, heavy=False) + out_of_order(rnd, c)]
        txs = [tx for tx in txs if tx.op in (ctx.DEPOSIT, ctx.WITHDRAW, ctx.TRADE)]
        state = c.snapshot()
        state.defer = True
        state.begin_block()
        gaps = _nonce_gaps(state, txs)
        exact = True  # every transaction before applied, as _nonce_gaps counts them
        for i, tx in enumerate(txs):
            try:
                ctx.apply(state, tx)
            except TooEarly as exc:
                if i in gaps and exact:
                    assert (exc.account, exc.nonce, exc.expected) == (gaps[i].account, gaps[i].nonce, gaps[i].expected)
                    checked += 1
                exact = exact and i in gaps
            except Rejected:
                exact = False
            else:
                assert i not in gaps, f"transaction {i} applied but was left out"
    assert checked > 20


# ---- review s19: runs refilled a few candidates at a time ----------------------------------------


def _counted(app, held):
    """(apply_run calls, ctx.apply calls of each op, the block's length) of one proposal on held."""
    calls, applied = [0], {}
    real_run, real_apply = clearing_app.apply_run, ctx.apply

    def run(state, txs):
        calls[0] += 1
        return real_run(state, txs)

    def apply(state, tx):
        applied[tx.fields[0], tx.fields[1]] = applied.get((tx.fields[0], tx.fields[1]), 0) + 1
        return real_apply(state, tx)
    clearing_app.apply_run, ctx.apply = run, apply
    try:
        app.mempool = dict(held)
        txs, _ = app.propose(app.genesis, set())
    finally:
        clearing_app.apply_run, ctx.apply = real_run, real_apply
    return calls[0], applied, len(txs)


def _entry(body):
    from consensus.apps.clearing_app import Pending
    tx = ctx.decode(body)
    return hashlib.sha256(body).digest(), Pending(body, [bytes(64)] * len(tx.signers), tx, bytes(64 * len(tx.signers)))


def _keys(tag, n):
    from nacl.signing import SigningKey
    return [bytes(SigningKey(hashlib.sha256(b"%s %d" % (tag, i)).digest()).verify_key) for i in range(n)]


def _ledger(honest, attackers):
    from consensus.apps.clearing_load import genesis_market
    g = genesis_market("cpu")
    for k in honest:
        g.register(k)
        g.deposit(k, 0, "USD", 10**6 * USD_)
    for k in attackers:
        g.register(k)  # no cash
    return g


ROOM = 1_000  # (each account at most ROOM // FAIR_PART pending: arrival order, not round-robin)


def test_refused_candidates_refilled_a_few_at_a_time_cost_no_columnar_run_each():
    """[a gap, two withdrawals with no cash behind them] x 3,000 behind ROOM - 3 deposits: the first
    run declines, and the block's room refilled three candidates at a time, each a declined run
    (about 0.2 ms of apply_run) and then the run again without its gap. Runs under MIN_RUN go one
    by one: two apply_run calls in all, and no gap applied."""
    honest, att = _keys(b"h", 200), _keys(b"a", 600)
    app = ClearingApp(Verifier("accel", "cpu"), _ledger(honest, att), max_txs=ROOM)
    held = dict(_entry(ctx.deposit(honest[i % 200], 1 + i // 200, "USD", USD_)) for i in range(ROOM - 3))
    for i in range(3_000):
        a = att[i % 600]
        held.update([_entry(ctx.withdraw(a, 5 + i, "USD", USD_)),
                     _entry(ctx.withdraw(a, 0, "USD", USD_ + i)),
                     _entry(ctx.withdraw(att[(i + 1) % 600], 0, "USD", 2 * USD_ + i))])
    calls, applied, n = _counted(app, held)
    assert n == ROOM - 3
    assert calls <= 2, calls
    assert not any(nonce >= 5 for (k, nonce) in applied if k in set(att)), "a gap was applied"


def test_early_transactions_past_a_refilled_run_are_not_applied():
    """3 early deposits among the first run, the other early ones (nonces 1..9 of 1,000 accounts,
    nonce 0 after them) past the block's reach: runs of a few refilled candidates each cost a
    declined apply_run (70 us an early transaction a proposal, against 5 in one long run)."""
    honest, att = _keys(b"w", ROOM), _keys(b"e", 1_000)
    app = ClearingApp(Verifier("accel", "cpu"), _ledger(honest, att), max_txs=ROOM)
    early = [_entry(ctx.deposit(k, n, "USD", USD_)) for n in range(1, 10) for k in att]
    held = dict(early[:3])
    held.update(_entry(ctx.deposit(k, 1, "USD", USD_)) for k in honest[:ROOM - 3])
    held.update(early[3:])
    held.update(_entry(ctx.deposit(k, 0, "USD", USD_)) for k in att)
    calls, applied, n = _counted(app, held)
    assert n == ROOM
    assert calls <= 3, calls
    assert not any(k in set(att) and nonce >= 1 for (k, nonce) in applied), "an early transaction was applied"
