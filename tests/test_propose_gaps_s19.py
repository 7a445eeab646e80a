"""A declined run without what its nonces refuse (_nonce_gaps, nineteenth session): the same
proposals as applying the run one by one. Transactions queued ahead of their account's missing
nonce were applied, and refused, by every proposal (a run holding one declined and went one by
one); now a declined run is tried again without them, recorded as refused with apply's TooEarly.
Differential: one app proposing as now, one with _nonce_gaps finding nothing (the fills as they
were), the same transactions, three blocks in a row: the same blocks, states, mempools (in order)
and refusals, over random mempools heavy with nonces out of order (chains sent backwards, ahead
of a missing nonce, trades whose one leg is early and the other used or early)."""
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
        clearing_app._nonce_gaps = _nonce_gaps


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
