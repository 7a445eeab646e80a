"""Attacks on columnar execution (consensus/apps/clearing_columns.py): an attacker with two
accounts and a proposer, and a reviewer looking for any divergence between the columnar engine and
the one-by-one engine it replaces. Every block is executed both ways (tests.test_clearing_columns
.both: the same verdict and reason, leaves, globals, liquidations, holders index, state root), and
accepted states must keep the ledger's invariants (Clearing.violations() empty).

Covered: int64 edges (balances near 2^62, accounts in debt, prices 0 and MAX_PRICE, MAX_SIZE,
positions at MAX_POSITION, nonces near 2^62 and 2^64 - 1, inverse futures' flows), the same
account many times in one run (deposits, withdrawals of everything, trades on both sides,
positions opened, closed and reopened), reduce-only series, settled series, underlyings without a
mark, unknown assets, marks between runs that settle or liquidate or catch a touched book,
registrations mid-block, refused runs after columnar ones, proposals then validation on one parent
(copy-on-write), replays and snapshots of columnar states, readers in the middle of a block, and
the C margin's instrument table against accel.risk_numpy."""
import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import accel
from accel import risk_numpy
from accel.risk import CALL, FUTURE, INVERSE, PUT, MarginParams, Marks, Portfolio
from consensus.apps import clearing_snapshot
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing import MAX_POSITION, MAX_PRICE, MAX_SIZE, Rejected
from consensus.apps.clearing_app import ClearingApp
from consensus.apps.clearing_columns import apply_run
from consensus.verify import Verifier
from tests.test_clearing_columns import both as strict_both
from tests.test_clearing_columns import funded_genesis, outcome, sequential
from tests.test_clearing_properties import K, O, T0, USD, USERS, block_of, signed

BTC_FUT, BTC_CALL, INV_FUT, INV_CALL, ETH_FUT = 3, 1, 5, 4, 6


pytestmark = pytest.mark.usefixtures("quiet_logs")


def make_app(c=None, **kw) -> ClearingApp:
    return ClearingApp(Verifier("accel", "cpu"), c if c is not None else funded_genesis(), **kw)


class Txs:
    """Transactions on top of a state with the nonces they need, tracked as they are built (skew:
    a wrong nonce on purpose, not counted)."""

    def __init__(self, state):
        self.nonce = {k: a.nonce for k, a in state.accounts.items()}
        self.seq = {u: m.sequence for u, m in state.marks.items()}
        self.ts = {u: m.timestamp for u, m in state.marks.items()}

    def _n(self, k, skew=0):
        n = self.nonce.get(k, 0)
        if not skew:
            self.nonce[k] = n + 1
        return (n + skew) % 2**64

    def dep(self, i, q, asset="USD", skew=0):
        return ctx.Tx(ctx.DEPOSIT, (K[i], self._n(K[i], skew), asset, q), (K[i],))

    def wd(self, i, q, asset="USD", skew=0):
        return ctx.Tx(ctx.WITHDRAW, (K[i], self._n(K[i], skew), asset, q), (K[i],))

    def trade(self, b, s, series, size, price, skew=0):
        return ctx.Tx(ctx.TRADE, (K[b], self._n(K[b], skew), K[s], self._n(K[s]), series, size, price), (K[b], K[s]))

    def mark(self, und, index, vols=None, dt=600):
        self.seq[und] = self.seq.get(und, 0) + 1
        self.ts[und] = self.ts.get(und, T0) + dt
        if vols is None:
            vols = {"BTC": {1: 0.7, 2: 0.7, 4: 0.7}, "ETH": {7: 0.7}}[und]
        return ctx.decode(ctx.mark(und, index, self.seq[und], self.ts[und], vols, O[:2]))

    def register(self, i):
        self.nonce[K[i]] = 0
        return ctx.Tx(ctx.REGISTER, (K[i],), (K[i],))


def both(app, parent, txs) -> tuple:
    """tests.test_clearing_columns.both, with the holders index compared without its empty sets
    (the one difference found there has its own test below)."""
    def norm(r):
        return r if r[0] != "ok" else (*r[:5], [(i, h) for i, h in r[5] if h])
    columnar = outcome(app, parent, txs)
    with sequential():
        one_by_one = outcome(app, parent, txs)
    assert norm(columnar) == norm(one_by_one)
    return norm(columnar)


def accepted(app, parent, txs):
    """Both ways, the same result; accepted, with the invariants holding; the state."""
    result = both(app, parent, txs)
    assert result[0] == "ok", result
    state, _ = app._run(parent, txs)
    assert state.clearing.violations() == []
    state.root = state.clearing.root()
    return state


def refused(app, parent, txs, at=None, why=""):
    result = both(app, parent, txs)
    assert result[0] == "refused", result
    if at is not None:
        assert result[1].startswith(f"transaction {at}:"), result
    assert why in result[1], result
    return result[1]


def conserved(c) -> bool:
    return all(sum(a.collateral.get(x, 0) for a in c.accounts.values()) + c.funds[x] == c.supply[x] for x in c.assets)


# ---- defects the review found (fixed: a run declines what int64 cannot hold exactly) ------------


def test_inverse_future_flow_beyond_int64_is_refused_for_the_same_reason():
    app = make_app()
    t = Txs(app.genesis.clearing)
    txs = [t.trade(0, 1, INV_FUT, MAX_SIZE, 1), t.dep(2, 5)]
    assert "internal error" not in refused(app, app.genesis, txs)


def test_one_inverse_trade_cannot_empty_every_proposal():
    c = funded_genesis()
    t = Txs(c)
    items = [signed(ctx.deposit(K[2], t._n(K[2]), "USD", 5), [USERS[2]]),
             signed(ctx.trade(K[0], t._n(K[0]), K[1], t._n(K[1]), INV_FUT, MAX_SIZE, 1), [USERS[0], USERS[1]]),
             signed(ctx.deposit(K[3], t._n(K[3]), "USD", 5), [USERS[3]])]
    built = []
    for seq in (False, True):
        app = make_app()
        app.submit_many(items)
        with sequential() if seq else contextlib.nullcontext():
            txs, state = app.propose(app.genesis, set())
        built.append((len(txs), state.root, sorted(app.refused.values())))
    assert built[1][0] == 2  # one by one: the two deposits, the trade evicted for its margin
    assert built[0] == built[1]


def test_a_holder_with_a_nonce_beyond_int64_does_not_break_a_mark():
    app = make_app()
    t = Txs(app.genesis.clearing)
    s = accepted(app, app.genesis, [t.trade(2, 3, BTC_FUT, 1, 60_000 * USD)])
    s.clearing._mut(K[2]).nonce = 2**63  # as a genesis or a restored snapshot could hold
    t = Txs(s.clearing)
    assert both(app, s, [t.dep(1, 5), t.dep(1, 5), t.mark("BTC", 60_600.0)])[0] == "ok"


def test_a_position_opened_and_closed_in_one_run_leaves_the_same_holders_index():
    app = make_app()
    t = Txs(app.genesis.clearing)
    strict_both(app, app.genesis, [t.trade(0, 1, BTC_CALL, 1, 3_000 * USD), t.trade(1, 0, BTC_CALL, 1, 3_000 * USD)])


# ---- what held ------------------------------------------------------------------------------------


def test_one_account_many_times_in_a_run_opening_closing_reopening():
    """Deposits, a withdrawal of everything, trades on both sides; positions opened, closed and
    reopened inside one run: the holders index and the state the same both ways."""
    app = make_app()
    g = app.genesis.clearing
    t = Txs(g)
    cash0 = g.accounts[K[0]].collateral["USD"]
    txs = [t.dep(0, 7 * USD), t.wd(0, cash0 + 7 * USD),  # everything out
           t.dep(0, 50_000 * USD),
           t.trade(0, 1, BTC_FUT, 2, 60_000 * USD), t.trade(1, 0, BTC_FUT, 2, 60_000 * USD),  # open, close
           t.trade(1, 0, BTC_FUT, 1, 60_000 * USD), t.trade(0, 1, BTC_FUT, 1, 60_000 * USD),  # other side, close
           t.trade(0, 2, BTC_CALL, 1, 3_000 * USD), t.trade(2, 0, BTC_CALL, 1, 3_000 * USD),
           t.trade(0, 1, BTC_FUT, 1, 60_000 * USD)]  # reopened
    s = accepted(app, app.genesis, txs)
    assert s.clearing.accounts[K[0]].positions == {BTC_FUT: 1}
    assert K[0] not in s.clearing.holders.get(BTC_CALL, set())
    assert K[0] in s.clearing.holders[BTC_FUT] and K[1] in s.clearing.holders[BTC_FUT]
    # closing everything inside the next block's run leaves nobody in the index
    t = Txs(s.clearing)
    s2 = accepted(app, s, [t.trade(1, 0, BTC_FUT, 1, 60_000 * USD), t.dep(0, 1), t.dep(1, 1)])
    assert K[0] not in s2.clearing.holders.get(BTC_FUT, set())
    assert s.clearing.holders[BTC_FUT] >= {K[0], K[1]}  # the parent's index untouched


def test_withdrawal_of_one_more_than_everything_anywhere_in_a_run():
    app = make_app()
    g = app.genesis.clearing
    cash0 = g.accounts[K[0]].collateral["USD"]
    for at in range(5):
        for extra in (1, 0):
            t = Txs(g)
            pre = [lambda: t.dep(0, 3 * USD), lambda: t.trade(0, 1, BTC_FUT, 1, 100 * USD), lambda: t.dep(1, USD),
                   lambda: t.dep(0, 1), lambda: t.trade(1, 0, BTC_FUT, 1, 50 * USD)][:at]
            pre = [f() for f in pre]
            cash = cash0 + [0, 3 * USD, -97 * USD, -97 * USD, -97 * USD + 1][at] + (50 * USD if at > 4 else 0)
            txs = pre + [t.wd(0, cash + extra), t.dep(2, 1)]
            if extra:
                refused(app, app.genesis, txs, at=at, why="exceeds the cash")
            else:
                both(app, app.genesis, txs)


def test_prices_sizes_and_positions_at_their_limits():
    app = make_app()
    g = app.genesis.clearing
    cases = [
        [(0, 1, BTC_FUT, MAX_SIZE, 0)], [(0, 1, BTC_FUT, 1, MAX_PRICE)], [(0, 1, BTC_FUT, 1, MAX_PRICE + 1)],
        [(0, 1, BTC_FUT, MAX_SIZE + 1, 0)], [(0, 1, BTC_FUT, 2**32 - 1, 0)], [(0, 1, BTC_FUT, 92, MAX_PRICE)],
        [(0, 1, BTC_FUT, 23, MAX_PRICE)] * 2, [(0, 1, BTC_CALL, 1, 2**64 - 1)],
        [(0, 1, INV_FUT, 1, 0)], [(0, 1, INV_FUT, MAX_SIZE, MAX_PRICE)], [(0, 1, INV_FUT, 1, 2)],
        [(0, 1, INV_FUT, 3, 2)], [(0, 1, INV_CALL, MAX_SIZE, 0)], [(0, 1, INV_FUT, 1000, 10**13)],
        [(0, 1, BTC_FUT, MAX_SIZE, 0)] * 10 + [(1, 0, BTC_FUT, 1, 0)],  # at MAX_POSITION, then back
        [(0, 1, BTC_FUT, MAX_SIZE, 0)] * 11,  # past it
        [(0, 1, 99, 1, 0)], [(0, 0, BTC_FUT, 1, 0)],
    ]
    for trades in cases:
        t = Txs(g)
        txs = [t.dep(2, 1)] + [t.trade(*x) for x in trades] + [t.dep(3, 1)]
        both(app, app.genesis, txs)


def test_nonces_near_the_int64_edges():
    app = make_app()
    g = app.genesis.clearing
    for skew in (1, -1, 2**62, 2**63, 2**64 - 1, 2**62 - 1 - g.accounts[K[0]].nonce):
        t = Txs(g)
        txs = [t.dep(1, 1), t.dep(0, 1, skew=skew), t.dep(1, 1)]
        refused(app, app.genesis, txs, at=1, why="nonce")
        t = Txs(g)
        refused(app, app.genesis, [t.dep(1, 1), t.trade(1, 0, BTC_FUT, 1, 0, skew=skew)], at=1, why="nonce")
    for n in (2**62 - 2, 2**62 - 1, 2**62, 2**63 - 2):  # an account whose nonce is already that far
        c = funded_genesis()
        c._mut(K[0]).nonce = n
        app2 = make_app(c)
        t = Txs(c)
        s = accepted(app2, app2.genesis, [t.dep(0, 1), t.dep(1, 1), t.dep(0, 1), t.trade(0, 1, BTC_FUT, 1, 0)])
        assert s.clearing.accounts[K[0]].nonce == n + 3


def test_balances_near_2_62_and_accounts_in_debt():
    for cash in (2**62 - 10, 2**62 - 1, 2**62, 2**63 - 1, 2**63, -(2**62) + 5, -5 * USD):
        c = funded_genesis()
        c._mut(K[0]).collateral["USD"] = cash
        c._mut(K[1]).collateral["USD"] += 10**6 * USD
        c.supply["USD"] = sum(a.collateral.get("USD", 0) for a in c.accounts.values()) + c.funds["USD"]
        app = make_app(c)
        t = Txs(c)
        txs = [t.dep(0, 3), t.dep(0, 8), t.wd(0, 2), t.trade(1, 0, BTC_FUT, 1, 5), t.dep(1, 1)]
        both(app, app.genesis, txs)
        t = Txs(c)
        both(app, app.genesis, [t.dep(0, 10**18), t.dep(0, 10**18), t.wd(0, 10**18), t.dep(1, 1)])
        if -10**18 <= cash < 0:  # in debt: a withdrawal needs a deposit covering the debt first
            t = Txs(c)
            refused(app, app.genesis, [t.dep(0, -cash), t.wd(0, 1), t.dep(1, 1)], at=1, why="exceeds the cash")
            t = Txs(c)
            s = accepted(app, app.genesis, [t.dep(0, -cash + 5), t.wd(0, 5), t.dep(1, 1)])
            assert "USD" not in s.clearing.accounts[K[0]].collateral


def test_reduce_only_series_from_a_breaker_and_a_fund_floor():
    app = make_app()
    g = app.genesis.clearing
    t = Txs(g)
    s = accepted(app, app.genesis, [t.trade(0, 1, BTC_FUT, 3, 60_000 * USD), t.trade(2, 3, BTC_FUT, 2, 60_000 * USD)])
    for reason in ("halted", "fund"):
        c = s.clearing.snapshot()
        if reason == "halted":
            c.halted["BTC"] = "test halt"
        else:
            c.funds["USD"] -= 16_000 * USD  # below the 5,000 USD floor
            c.supply["USD"] -= 16_000 * USD
        parent = type(s)(c, c.root())
        cases = [[(1, 0, BTC_FUT, 1)], [(1, 0, BTC_FUT, 3)], [(1, 0, BTC_FUT, 4)], [(0, 1, BTC_FUT, 1)],
                 [(1, 0, BTC_FUT, 2), (1, 0, BTC_FUT, 1)], [(1, 0, BTC_FUT, 2), (1, 0, BTC_FUT, 2)],
                 [(1, 0, BTC_FUT, 3), (0, 1, BTC_FUT, 1)], [(1, 0, BTC_FUT, 1), (3, 2, BTC_FUT, 2)],
                 [(1, 2, BTC_FUT, 1)], [(0, 1, ETH_FUT, 1)]]
        for trades in cases:
            t = Txs(c)
            result = both(app, parent, [t.dep(4, 1)] + [t.trade(*x, 60_000 * USD) for x in trades] + [t.dep(4, 1)])
            if trades[0] == (0, 1, BTC_FUT, 1):
                assert result[0] == "refused" and "reduce-only" in result[1]


def test_settled_series_unmarked_underlyings_and_unknown_assets():
    c = funded_genesis()
    del c.marks["ETH"]
    app = make_app(c)
    t = Txs(c)
    refused(app, app.genesis, [t.dep(0, 1), t.trade(0, 1, ETH_FUT, 1, 3_000 * USD)], at=1, why="no oracle mark")
    t = Txs(c)
    refused(app, app.genesis, [t.dep(0, 1), t.dep(1, 1, "ETH")], at=1, why="unknown asset")
    t = Txs(c)
    refused(app, app.genesis, [t.dep(0, 1), t.wd(1, 1, "DOGE")], at=1, why="unknown asset")
    # a series settled by a mark mid-block, traded in the same block: refused; before it: settled
    app = make_app()
    g = app.genesis.clearing
    t = Txs(g)
    txs = [t.trade(0, 1, 7, 1, 100 * USD), t.dep(2, 1), t.mark("ETH", 3_100.0, {}, dt=4 * 3600),
           t.dep(2, 1), t.trade(0, 1, 7, 1, 100 * USD)]
    refused(app, app.genesis, txs, at=4, why="not open for trading")
    t = Txs(g)
    s = accepted(app, app.genesis, [t.trade(0, 1, 7, 2, 100 * USD), t.trade(1, 0, 7, 1, 100 * USD),
                                    t.dep(2, 1), t.mark("ETH", 2_900.0, {}, dt=4 * 3600), t.dep(2, 1), t.dep(0, 1)])
    assert 7 in s.clearing.fixings and 7 not in s.clearing.holders
    assert all(7 not in a.positions for a in s.clearing.accounts.values())


def test_marks_between_runs_that_liquidate_or_catch_a_touched_book():
    app = make_app()
    g = app.genesis.clearing
    t = Txs(g)
    # account 4 (30,000 USD) short 2 BTC futures: a 60% jump liquidates it
    s = accepted(app, app.genesis, [t.trade(3, 4, BTC_FUT, 2, 60_000 * USD)])
    for touch in (False, True):
        t = Txs(s.clearing)
        run = [t.dep(0, USD), t.trade(0, 1, BTC_FUT, 1, 60_000 * USD), t.trade(1, 0, BTC_FUT, 1, 60_000 * USD)]
        if touch:  # the liquidated account's book touched before the mark: the block is invalid
            run += [t.wd(4, 1)]
        txs = run + [t.mark("BTC", 96_000.0), t.dep(0, 1), t.dep(1, 1), t.dep(0, 1), t.dep(3, 1)]
        tail = Txs(s.clearing)
        for x in txs:
            if x.op in (ctx.DEPOSIT, ctx.WITHDRAW, ctx.TRADE):
                tail._n(x.fields[0])
            if x.op == ctx.TRADE:
                tail._n(x.fields[2])
        # the fund drained by the liquidation: every USD series reduce-only after it, both ways
        with_trade = txs + [tail.trade(0, 1, ETH_FUT, 1, 3_000 * USD)]
        if not touch:
            refused(app, s, with_trade, at=len(txs), why="insurance fund")
        result = both(app, s, txs)
        if touch:
            assert result[0] == "refused" and "would be liquidated" in result[1]
        else:
            assert result[0] == "ok" and result[4], result
            state, _ = app._run(s, txs)
            assert state.clearing.violations() == [] and state.clearing.liquidations
    # a crash the other way
    t = Txs(s.clearing)
    txs = [t.dep(0, 1), t.dep(1, 1), t.mark("BTC", 30_000.0), t.dep(0, 1), t.trade(0, 1, BTC_FUT, 1, 30_000 * USD)]
    both(app, s, txs)


def test_registration_mid_block_then_the_new_account_in_runs():
    c = funded_genesis_without(4)  # only four users at genesis: the fifth registers mid-block
    app = make_app(c)
    t = Txs(c)
    txs = [t.dep(0, 1), t.trade(0, 1, BTC_FUT, 1, 0), t.register(4), t.dep(4, 100_000 * USD), t.dep(4, 5),
           t.trade(4, 0, BTC_FUT, 1, 0), t.wd(4, 5), t.register(4)]
    refused(app, app.genesis, txs, at=7, why="already registered")
    t = Txs(c)
    s = accepted(app, app.genesis, [t.dep(0, 1), t.trade(0, 1, BTC_FUT, 1, 0), t.register(4),
                                    t.dep(4, 100_000 * USD), t.dep(4, 5), t.trade(4, 0, BTC_FUT, 1, 0), t.wd(4, 5)])
    assert s.clearing.accounts[K[4]].positions == {BTC_FUT: 1}
    t = Txs(c)  # a run naming the account before it is registered
    refused(app, app.genesis, [t.dep(0, 1), t.dep(4, 5), t.register(4)], at=1, why="not registered")


def funded_genesis_without(i):
    from tests.test_clearing_columns import _oracles
    from tests.test_clearing_properties import genesis
    c = genesis()
    for j, k in enumerate(K):
        if j == i:
            continue
        c.register(k)
        c.deposit(k, 0, "USD", (50_000, 200_000, 1_000_000, 5_000_000, 30_000)[j] * USD)
        c.deposit(k, 1, "BTC", USD * (j + 1))
    for und, index in (("BTC", 60_000.0), ("ETH", 3_000.0)):
        c.mark(und, index, {x: 0.7 for x in {"BTC": [1, 2, 4], "ETH": [7]}[und]}, 1, 1_800_000_060, _oracles())
    return c


def test_a_run_refused_after_runs_applied_in_columns():
    """Runs applied in columns, marks between them (one that settles, which flushes), then a run
    declined but valid (an account beyond int64) applied one by one, then one refused: the state
    and the reasons the same both ways, whatever the place of the refusal."""
    c = funded_genesis()
    c._mut(K[3]).collateral["USD"] += 2**63
    c.supply["USD"] += 2**63
    app = make_app(c)
    for bad in range(5):
        t = Txs(c)
        txs = [t.dep(0, USD), t.trade(0, 1, BTC_FUT, 1, 60_000 * USD), t.trade(1, 2, 7, 1, 100 * USD),
               t.mark("ETH", 3_050.0, {}, dt=4 * 3600),  # settles series 7
               t.dep(1, 1), t.trade(2, 0, BTC_FUT, 2, 60_000 * USD),
               t.mark("BTC", 60_100.0),
               t.dep(3, 1), t.trade(3, 0, BTC_FUT, 1, 60_000 * USD), t.dep(0, 1)]
        if bad < 4:
            at = [1, 5, 8, 9][bad]
            txs.insert(at, t.wd(2, 10**18))
            refused(app, app.genesis, txs, at=at)
        else:
            s = accepted(app, app.genesis, txs)
            assert s.clearing.accounts[K[3]].collateral["USD"] > 2**63


def test_propose_then_validate_on_one_parent_leaves_the_parent_alone():
    """A proposal and two different blocks validated on the same parent: the parent's leaves,
    holders and root unchanged, no working set on it, each child the same as when built alone."""
    app = make_app(max_txs=200)
    parent = app.genesis
    t = Txs(parent.clearing)
    first = [t.trade(0, 1, BTC_FUT, 2, 60_000 * USD), t.trade(2, 3, BTC_CALL, 1, 3_000 * USD), t.dep(4, 1)]
    parent = accepted(app, parent, first)
    c = parent.clearing
    before = (c.root(), c.leaves(), c.globals_leaves(), {i: set(h) for i, h in c.holders.items()})
    held = {i: h for i, h in c.holders.items()}
    t = Txs(c)
    ops = [(0, 1, BTC_FUT, 1), (1, 0, BTC_FUT, 3), (2, 3, BTC_CALL, 1), (3, 2, BTC_CALL, 2), (4, 0, BTC_FUT, 1)]
    items = [signed(ctx.trade(K[b], t._n(K[b]), K[s], t._n(K[s]), i, n, 60_000 * USD if i == BTC_FUT else 3_000 * USD),
                    [USERS[b], USERS[s]]) for b, s, i, n in ops]
    items += [signed(ctx.deposit(K[0], t._n(K[0]), "USD", 5), [USERS[0]]),
              signed(ctx.withdraw(K[1], t._n(K[1]), "USD", 5), [USERS[1]])]
    app.submit_many(items)
    txs, proposed = app.propose(parent, set())
    assert len(txs) == len(items)
    assert c._cols is None and proposed.clearing._cols is None
    validator = make_app(max_txs=200)
    v = validator.validate(parent, block_of(txs, before[0], proposed.root, validator), ((), (), ()))
    assert v.ok, v.reason
    assert v.state.root == proposed.root and v.state.clearing.leaves() == proposed.clearing.leaves()
    # a second, different block on the same parent
    t = Txs(c)
    other = [t.trade(1, 0, BTC_FUT, 2, 60_000 * USD), t.dep(0, 9), t.trade(3, 2, BTC_CALL, 1, 3_000 * USD)]
    accepted(app, parent, other)
    assert (c.root(), c.leaves(), c.globals_leaves(), {i: set(h) for i, h in c.holders.items()}) == before
    assert all(c.holders[i] is h for i, h in held.items())
    # the proposal's state is still what it was after its sibling was built
    assert proposed.clearing.root() == proposed.root


def test_replay_and_snapshots_of_columnar_states():
    app = make_app()
    parent = app.genesis
    roots = []
    for step in range(3):
        t = Txs(parent.clearing)
        txs = [t.dep(0, USD), t.trade(0, 1, BTC_FUT, 1, 60_000 * USD), t.trade(1, 2, BTC_CALL, 2, 3_000 * USD),
               t.trade(2, 0, INV_FUT, 1000, 60_000 * USD), t.mark("BTC", 60_000.0 * (1.01 + 0.01 * step)),
               t.trade(3, 1, BTC_FUT, 1, 60_000 * USD), t.wd(2, USD)]
        parent = accepted(app, parent, txs)
        roots.append(parent.root)
        blob = clearing_snapshot.encode(parent.clearing)
        back = clearing_snapshot.restore(app.genesis.clearing, blob, parent.root, app.verifier.sha256_rows)
        assert back.leaves() == parent.clearing.leaves() and back.violations() == []
        assert {i: h for i, h in back.holders.items() if h} == {i: h for i, h in parent.clearing.holders.items() if h}
        # the restored state executes the next block exactly as the original does
        t = Txs(parent.clearing)
        nxt = [t.trade(1, 0, BTC_FUT, 1, 60_000 * USD), t.dep(3, 1), t.trade(0, 3, BTC_CALL, 1, 3_000 * USD)]
        a = outcome(app, parent, nxt)
        b = outcome(app, type(parent)(back, parent.root), nxt)
        assert a == b and a[0] == "ok"
    # a restart: the committed bodies replayed with execute() reach the same roots
    replay = make_app()
    state = replay.genesis
    parent = app.genesis
    for step in range(3):
        t = Txs(parent.clearing)
        bodies = [ctx.deposit(K[0], t._n(K[0]), "USD", USD),
                  ctx.trade(K[0], t._n(K[0]), K[1], t._n(K[1]), BTC_FUT, 1, 60_000 * USD)]
        from accel import Packed
        from accel.packing import pack_messages
        packed = Packed(*pack_messages(bodies))
        parent = app.execute(parent, packed)
        with sequential():
            state = replay.execute(state, packed)
        assert parent.root == state.root


def test_readers_in_the_middle_of_a_block_see_the_columns():
    """A state with a working set active (after apply_run, before the block's end): every reader
    that flushes gives what the one-by-one engine's state gives at the same point."""
    app = make_app()
    g = app.genesis.clearing
    t = Txs(g)
    run = [t.dep(0, USD), t.trade(0, 1, BTC_FUT, 2, 60_000 * USD), t.trade(1, 2, BTC_CALL, 1, 3_000 * USD),
           t.wd(2, USD), t.trade(2, 0, INV_FUT, 500, 60_000 * USD)]
    states = []
    for columnar in (True, False):
        c = g.snapshot()
        c.defer = True
        c.begin_block()
        if columnar:
            assert apply_run(c, run) and c._cols is not None
        else:
            for x in run:
                ctx.apply(c, x)
        states.append(c)
    a, b = states
    keys = list(K)
    assert a.equity(keys) == b.equity(keys) and a._cols is None  # equity flushes
    for reader in ("margins", "account_proof", "leaves", "violations", "root", "snapshot", "end_of_block"):
        t2 = Txs(b)
        run2 = [t2.dep(3, 1), t2.trade(3, 4, BTC_FUT, 1, 60_000 * USD), t2.wd(4, 1), t2.dep(3, 1)]
        assert apply_run(a, run2) and a._cols is not None
        for x in run2:
            ctx.apply(b, x)
        if reader == "margins":
            assert a.margins(keys) == b.margins(keys)
        elif reader == "account_proof":
            assert a.account_proof(K[4])[0] == b.account_proof(K[4])[0]
        elif reader == "leaves":
            assert a.leaves() == b.leaves()
        elif reader == "violations":
            assert a.violations() == b.violations() == []
        elif reader == "root":
            assert a.root() == b.root()
        elif reader == "snapshot":
            a, b = a.snapshot(), b.snapshot()
            assert a._cols is None and clearing_snapshot.encode(a) == clearing_snapshot.encode(b)
        else:
            assert a.end_of_block() == b.end_of_block() and a.touched == b.touched == set()
            assert a.leaves() == b.leaves() and a.root() == b.root()
        assert a._cols is None


# ---- random two-account attacks ---------------------------------------------------------------------

who = st.integers(0, 2)
edge_size = st.one_of(st.integers(1, 4), st.sampled_from([MAX_SIZE, MAX_SIZE + 1, 2**32 - 1, 10**4]))
edge_price = st.one_of(st.sampled_from([0, 1, 2, 100 * USD, 3_000 * USD, 60_000 * USD, MAX_PRICE, MAX_PRICE + 1,
                                        2**64 - 1, 10**12, 10**13]))
edge_q = st.one_of(st.integers(1, 10**4).map(lambda x: x * USD),
                   st.sampled_from([1, 10**18, 10**18 + 1, 2**63, 2**64 - 1, "all", "all+1"]))
skew = st.sampled_from([0] * 25 + [1, -1, 2**62, 2**64 - 1])
PRICE = {1: 3_000 * USD, 2: 1_000 * USD, 3: 60_000 * USD, 4: 5 * USD // 100, 5: 60_000 * USD, 6: 3_000 * USD,
         7: 150 * USD, 99: USD}
sane_trade = st.tuples(st.just("trade"), who, who, st.sampled_from(sorted(PRICE)[:-1]), st.integers(1, 3),
                       st.sampled_from([0.5, 0.9, 1.0, 1.1, 2.0]), st.just(0)).filter(lambda o: o[1] != o[2])
edge_trade = st.tuples(st.just("trade"), who, who, st.sampled_from(sorted(PRICE)), edge_size, edge_price, skew)
a_op = st.one_of(
    *[sane_trade] * 6, edge_trade,
    st.tuples(st.just("dep"), who, st.sampled_from(["USD", "USD", "BTC"]), st.integers(1, 10**5).map(lambda x: x * USD),
              st.just(0)),
    st.tuples(st.just("dep"), who, st.sampled_from(["USD", "BTC", "XYZ"]), edge_q, skew),
    st.tuples(st.just("wd"), who, st.sampled_from(["USD", "BTC"]), st.sampled_from([1, USD, 100 * USD, "all"]),
              st.just(0)),
    st.tuples(st.just("wd"), who, st.sampled_from(["USD", "BTC"]), edge_q, skew),
    st.tuples(st.just("mark"), st.sampled_from(["BTC", "ETH"]), st.sampled_from([0.4, 0.7, 0.97, 1.0, 1.02, 1.6, 2.5])),
    st.tuples(st.just("halt"), st.booleans()),
)


def build(state, ops):
    t = Txs(state)
    index = {u: m.index for u, m in state.marks.items()}
    out = []
    for o in ops:
        if o[0] == "trade":
            _, b, s, i, n, p, sk = o
            if isinstance(p, float):
                p = int(PRICE[i] * p)
            out.append(t.trade(b, s, i, n, p, skew=sk))
        elif o[0] in ("dep", "wd"):
            _, i, asset, q, sk = o
            if isinstance(q, str):
                q = max(state.accounts[K[i]].collateral.get(asset, 0), 1) + (q == "all+1")
            out.append((t.dep if o[0] == "dep" else t.wd)(i, q, asset, skew=sk))
        elif o[0] == "mark":
            index[o[1]] = min(max(index[o[1]] * o[2], 1e-4), 1e8)
            vols = {"BTC": {1: 0.7, 2: 0.7, 4: 0.7}, "ETH": {7: 0.7}}[o[1]]
            fixed = state.fixings
            out.append(t.mark(o[1], index[o[1]], {k: v for k, v in vols.items() if k not in fixed}, dt=3600))
    return out


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(st.lists(st.lists(a_op, min_size=2, max_size=30), min_size=1, max_size=5), st.booleans())
def test_two_accounts_and_a_third_attack_columnar_execution(stream, thin):
    c = funded_genesis()
    if thin:  # accounts 0 and 1 nearly empty: margin, debts and liquidations come quickly
        for i in (0, 1):
            c._mut(K[i]).collateral["USD"] = 1_000 * USD
        c.supply["USD"] = sum(a.collateral.get("USD", 0) for a in c.accounts.values()) + c.funds["USD"]
    app = make_app(c)
    parent = app.genesis
    for ops in stream:
        if any(o[0] == "halt" for o in ops):
            cl = parent.clearing.snapshot()
            if ops[0] == ("halt", True):
                cl.halted["BTC"] = "halted by the test"
            parent = type(parent)(cl, cl.root())
        txs = build(parent.clearing, [o for o in ops if o[0] != "halt"])
        result = both(app, parent, txs)
        assert "internal error" not in result[1] if result[0] == "refused" else True
        if result[0] == "ok":
            state, _ = app._run(parent, txs)
            assert state.clearing.violations() == [] and conserved(state.clearing)
            state.root = state.clearing.root()
            parent = state


# ---- the C margin's instrument table ------------------------------------------------------------------


def test_c_margin_table_and_chunks_match_numpy(backends):
    """av_portfolio_margin values each instrument once when positions outnumber instruments (a
    table), else per chunk of positions, and uses threads from 4,096 positions: every path the
    same bits as accel.risk_numpy, including instruments nobody holds and the highest index held."""
    rng = np.random.default_rng(20)
    kinds = np.array([CALL, PUT, FUTURE, CALL | INVERSE, PUT | INVERSE, FUTURE | INVERSE], np.uint8)
    for accounts, per, instruments in ((1, 3, 50), (3, 2, 40), (5, 40, 7), (200, 30, 60), (1, 5000, 3), (64, 1, 64)):
        n = instruments
        mk = Marks(index=30_000.0, rate=0.0, forward=30_000.0 * np.exp(rng.normal(0, 0.05, n)),
                   strike=np.round(30_000.0 * np.exp(rng.normal(0, 0.3, n)), -2),
                   expiry=rng.choice([0.0, 1e-6, 1 / 365, 0.1, 1.0], n), vol=rng.uniform(0.05, 3.0, n),
                   kind=rng.choice(kinds, n))
        counts = rng.integers(0, 2 * per + 1, accounts)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        inst = rng.integers(0, max(n // 2, 1), int(offsets[-1])).astype(np.int32)  # the top half never held
        pf = Portfolio(offsets=offsets, instrument=inst,
                       size=rng.choice([-1.0, 1.0], len(inst)) * 10.0 ** rng.uniform(-2, 6, len(inst)))
        for p in (MarginParams(tick=1e-8), MarginParams()):
            ours = risk_numpy.portfolio_margin(pf, mk, p, checked=False)
            for b in backends:  # the C fallback always, PoCL where it runs
                got = accel.portfolio_margin(pf, mk, p, backend=b, checked=False)
                for x, y in zip(got, ours):
                    assert x.dtype == y.dtype and np.array_equal(x, y), b


def test_proposers_with_held_back_accounts_and_marks_build_the_same_blocks():
    """A mempool where one account goes short (held back, refilled: the filtering path of _fill),
    a mark between runs that would catch a touched book, refusals mixed in, a block limit cutting a
    run: the same blocks, roots and refusals with and without columnar runs."""
    c = funded_genesis()
    t = Txs(c)
    n4 = t.nonce[K[4]]
    items = [signed(ctx.deposit(K[0], t._n(K[0]), "USD", USD), [USERS[0]]),
             signed(ctx.trade(K[1], t._n(K[1]), K[0], t._n(K[0]), BTC_FUT, 1, 60_000 * USD), [USERS[1], USERS[0]]),
             signed(ctx.trade(K[3], t._n(K[3]), K[4], t._n(K[4]), BTC_FUT, 8, 60_000 * USD), [USERS[3], USERS[4]]),
             signed(ctx.withdraw(K[2], t._n(K[2]), "USD", 10**17), [USERS[2]]),  # refused: more than its cash
             signed(ctx.deposit(K[4], n4 + 5, "USD", USD), [USERS[4]]),  # refused: a nonce gap
             signed(ctx.trade(K[0], t._n(K[0]), K[2], t.nonce[K[2]], BTC_CALL, 2, 3_000 * USD), [USERS[0], USERS[2]])]
    t.nonce[K[2]] += 1
    seq, ts = c.marks["BTC"].sequence + 1, c.marks["BTC"].timestamp + 600
    items.append(signed(ctx.mark("BTC", 60_300.0, seq, ts, {1: 0.7, 2: 0.7, 4: 0.7}, O[:2]), []))
    items += [signed(ctx.deposit(K[1], t._n(K[1]), "USD", 1), [USERS[1]]) for _ in range(6)]
    items += [signed(ctx.trade(K[2], t._n(K[2]), K[1], t._n(K[1]), BTC_FUT, 1, 60_000 * USD), [USERS[2], USERS[1]])]
    from tests.test_clearing_properties import ORACLES
    items[6] = signed(items[6][0], ORACLES[:2])
    for max_txs in (64, 5, 9):
        built = []
        for seq_path in (False, True):
            app = make_app(funded_genesis(), max_txs=max_txs)
            parent = app.genesis
            app.submit_many(items)
            blocks = []
            for _ in range(3):
                with sequential() if seq_path else contextlib.nullcontext():
                    txs, state = app.propose(parent, set())
                blocks.append((txs.bodies.data.tobytes(), state.root))
                assert state.clearing.violations() == []
                app.committed(block_of(txs, parent.root, state.root, app), state)
                parent = state
            built.append((blocks, dict(app.refused)))
        assert built[0] == built[1]
        assert any(len(b[0]) for b in built[0][0])
