"""Money review of the clearing ledger, fifth session (an attacker with two or more funded
accounts, sometimes the proposer): rounding at liquidation, auto-deleveraging and socialized
loss, settlement at expiry, deposit and withdrawal edge amounts, replay, the columnar engine
against the one-by-one engine, and the repeated work a short account's held-back transactions
cost later proposals. Every block proposed here is checked by a second, software-only validator
(same state root, Clearing.violations() empty).

1. Held-back work (the known improvement, fixed): a short account's transactions stayed in the
   mempool and only its last left per block, so an account sending N transactions that leave it
   short (the first already does) had N-1, N-2, ... of them applied again in the first fill of
   each of the next N blocks (about N^2/2 applications; up to max_txs per block). Now a short
   account loses its last kept transaction, the upper half of its margined transactions of the
   fill, and every transaction of it in the mempool from the first of those nonces on (they can
   no longer apply in nonce order): about 2N applications in about log2(N) blocks. Evicted
   transactions are not remembered against the account: resubmitted, they are admitted and
   proposed like any other.
2. The proposer's engine (columnar, accel's C fallback), a software-only validator and the
   one-by-one engine agree on streams aimed at liquidation, ADL, socialized loss and expiry
   (same roots, liquidations, fixings; no debt left where no mark could liquidate it).
3. Bystanders paid for two bankrupt books trading with each other (fixed: heirs).
4. A settlement left its writer a debt no mark would ever liquidate (fixed: fund, then the
   other side of the series)."""

import pytest

from consensus.apps import clearing_app as capp
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing_app import ClearingApp
from consensus.verify import Verifier
from tests.test_clearing_properties import O, T0, USD, chain, genesis, signed
from tests.test_proposal_starvation_review import keys, supply_of

VOLS = {1: 0.7, 2: 0.7, 4: 0.7}


pytestmark = pytest.mark.usefixtures("quiet_logs")


class Counter:
    """How many transactions propose() applies (one by one, or in columnar runs, declined or not)."""

    def __init__(self, monkeypatch):
        self.n = 0
        apply_run, apply_one = capp.apply_run, capp.ctx.apply

        def run(state, txs):
            self.n += len(txs)
            return apply_run(state, txs)

        def one(state, tx):
            self.n += 1
            return apply_one(state, tx)
        monkeypatch.setattr(capp, "apply_run", run)
        monkeypatch.setattr(capp.ctx, "apply", one)


def short_market():
    """A short 1 BTC future (committed) against B; A's cash 100,000 USD, B's 1,000,000."""
    c = genesis()
    (A, B, H, G), (AK, BK, HK, GK) = keys(240, 4)
    for k, q in zip((AK, BK, HK, GK), (100_000, 1_000_000, 1_000_000, 1_000_000)):
        c.register(k)
        c.deposit(k, 0, "USD", q * USD)
    c.mark("BTC", 60_000.0, VOLS, 1, T0 + 60, O[:2])
    c.trade(BK, 1, AK, 1, 3, 1, 60_000 * USD)
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    validator = ClearingApp(Verifier("software"), c.snapshot())
    return app, validator, (A, B, H, G), (AK, BK, HK, GK)


def test_a_short_accounts_held_back_transactions_cost_later_proposals_linear_work(monkeypatch):
    app, validator, (A, B, H, G), (AK, BK, HK, GK) = short_market()
    n = 40
    # w0 takes A below initial margin, w1.. (1 quantum each) all apply after it in deferred mode
    mine = [signed(ctx.withdraw(AK, 2, "USD", 99_000 * USD), [A])]
    mine += [signed(ctx.withdraw(AK, 2 + i, "USD", 1), [A]) for i in range(1, n)]
    assert app.submit_many(mine) == [""] * n
    honest = [signed(ctx.trade(HK, 1, GK, 1, 3, 1, 60_000 * USD), [H, G])]
    assert app.submit_many(honest) == [""]
    counter = Counter(monkeypatch)
    parent, vparent, supply = app.genesis, validator.genesis, supply_of(app.genesis.clearing)
    got, blocks = set(), 0
    bodies = {b for b, _ in mine}
    while bodies & {p.body for p in app.mempool.values()}:
        txs, parent, vparent = chain(app, validator, parent, vparent, supply)
        got |= {txs.bodies.item(i) for i in range(len(txs))}
        blocks += 1
        assert blocks <= n
    assert honest[0][0] in got  # the honest trade was never kept out
    assert not bodies & got  # every one of A's withdrawals leaves it short: none committed
    # before: 40 blocks and 40 + 39 + ... + 1 = 820 applications of A's withdrawals
    assert blocks <= 8, blocks
    assert counter.n <= 4 * n + 2 * blocks, counter.n


def test_an_honest_account_short_for_a_while_is_not_censored():
    app, validator, (A, B, H, G), (AK, BK, HK, GK) = short_market()
    # A: two valid small withdrawals, a third valid one, then one that takes it short
    txs_a = [signed(ctx.withdraw(AK, 2 + i, "USD", USD), [A]) for i in range(3)]
    txs_a.append(signed(ctx.withdraw(AK, 5, "USD", 99_000 * USD), [A]))
    assert app.submit_many(txs_a) == [""] * 4
    parent, vparent, supply = app.genesis, validator.genesis, supply_of(app.genesis.clearing)
    committed = set()
    for _ in range(4):
        txs, parent, vparent = chain(app, validator, parent, vparent, supply)
        committed |= {txs.bodies.item(i) for i in range(len(txs))}
        # resubmitting whatever left the mempool unapplied but the one that takes A short
        again = [t for t in txs_a[:3] if t[0] not in committed]
        assert all(r == "" for r in app.submit_many(again)), app.submit_many(again)
    assert {t[0] for t in txs_a[:3]} <= committed
    assert txs_a[3][0] not in committed
    assert parent.clearing.accounts[AK].nonce == 5


# ---- 2. the three engines on streams aimed at liquidation, ADL, socialized loss and expiry --------
from hypothesis import HealthCheck, example, given, settings, strategies as st  # noqa: E402

from tests.test_clearing_properties import DAY, JUMPS, K, SERIES, Stream  # noqa: E402

_user = st.integers(0, len(K) - 1)
_small = st.one_of(st.integers(1, 3_000).map(lambda x: x * USD), st.sampled_from([1, 2, 3, 10**18, 10**18 + 1]))
_op = st.one_of(
    st.tuples(st.just("deposit"), _user, st.sampled_from(["USD", "USD", "BTC"]), _small, st.just(0)),
    st.tuples(st.just("withdraw"), _user, st.sampled_from(["USD", "BTC"]), st.one_of(st.just("all"), _small),
              st.just(0)),
    *[st.tuples(st.just("trade"), _user, _user, st.sampled_from([6, 6, 6, 7, 7, 5, 4, 1, 2, 3]),
                st.sampled_from([1, 1, 2, 3, 7]), st.floats(0.9, 1.1), st.just(0)).filter(lambda o: o[1] != o[2])] * 4,
    st.tuples(st.just("mark"), st.sampled_from(["BTC", "ETH", "ETH"]), st.sampled_from([0.5, 0.6, 0.8, 1.0, 1.0, 1.25, 1.6, 2.0]), st.just(1),
              st.sampled_from([60] * 8 + [600, 3600, 5 * 3600, 2 * DAY]), st.just(True), st.just(2)),
)
_stream = st.lists(st.lists(_op, max_size=10), min_size=3, max_size=10)


def _one_by_one(parent, txs):
    """The block applied transaction by transaction by the reference engine (no columns)."""
    c = parent.snapshot()
    c.defer = True
    c.begin_block()
    for tx in ctx.decode_all(txs.bodies):
        ctx.apply(c, tx)
    assert c.end_of_block() == []
    c.defer = False
    return c


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_stream)
@example([[("trade", 0, 1, 6, 2, 1.0, 0), ("trade", 2, 3, 6, 3, 1.0, 0)], [("mark", "ETH", 0.5, 1, 60, True, 2)],
          [("mark", "ETH", 2.0, 1, 60, True, 2)]])
@example([[("trade", 0, i, 6, 1, 1.0, 0) for i in (1, 2, 3, 4)] + [("trade", i, 0, 7, n, 1.0, 0) for i, n in ((1, 7), (2, 1), (3, 3))]
          + [("withdraw", 0, "USD", 1_200 * USD, 0)],
          [("mark", "ETH", 0.6, 1, 60, True, 2)], [("mark", "ETH", 0.5, 1, 4 * 3600, True, 2)],
          [("mark", "ETH", 2.0, 1, 3 * 3600, True, 2)]])
@example([[("trade", 0, 1, 2, 7, 1.0, 0), ("trade", 2, 3, 7, 3, 1.0, 0), ("trade", 4, 3, 4, 2, 1.0, 0)],
          [("mark", "ETH", 0.5, 1, 4 * 3600, True, 2)], [("mark", "BTC", 0.5, 1, 2 * DAY, True, 2)],
          [("withdraw", 1, "USD", "all", 0), ("withdraw", 3, "USD", "all", 0)]])
@example([[], [], [("deposit", 0, "USD", USD, 0), ("deposit", 0, "USD", USD, 0), ("trade", 0, 1, 4, 2, 1.0, 0),
                  ("mark", "BTC", 0.5, 1, 18000, True, 2)]])
def test_liquidation_adl_and_expiry_streams_agree_across_engines(stream):
    """Small books, sizes of 1 to 7 among five accounts, crashes and expiries: the proposer
    (accel's C fallback, columnar), a software-only validator and the one-by-one engine reach the
    same root, the same liquidations and fixings; quanta are neither created nor destroyed."""
    g = genesis()
    g.funds["USD"] = g.supply["USD"] = 300 * USD  # a small fund: socialized losses happen
    g.breakers = None  # (its fund floor would make every USD series reduce-only)
    app = ClearingApp(Verifier("accel", "cpu"), g.snapshot())
    validator = ClearingApp(Verifier("software"), g.snapshot())
    sha = Verifier("software").sha256_rows
    from tests.test_clearing_properties import USERS
    opening = [signed(ctx.register(k), [u]) for k, u in zip(K, USERS)]
    opening += [signed(ctx.deposit(k, 0, "USD", 3_000 * USD), [u]) for k, u in zip(K, USERS)]
    opening += [signed(ctx.deposit(k, 1, "BTC", USD // 20), [u]) for k, u in zip(K, USERS)]
    parent, vparent, ref = app.genesis, validator.genesis, app.genesis.clearing.snapshot()
    supply = supply_of(parent.clearing)
    for h, ops in enumerate([[]] + stream):
        if h == 0:
            items = opening + [signed(ctx.mark(u, x, 1, T0 + 60, {i: 0.7 for i in o}, O[:2]), [])
                               for u, x, o in (("BTC", 60_000.0, [1, 2, 4]), ("ETH", 3_000.0, [7]))]
            from tests.test_clearing_properties import ORACLES
            items = items[:-2] + [(b, [k.sign(b).signature for k in ORACLES[:2]]) for b, _ in items[-2:]]
        else:
            s = Stream(parent.clearing)
            items = [s.tx(o) for o in ops]
            items = [(b, [k.sign(b).signature for k in signers]) for b, signers in items]
        app.submit_many(items)
        before = len(parent.clearing.liquidations)
        txs, parent_new, vstate = chain(app, validator, parent, vparent, supply)
        obo = _one_by_one(ref, txs)
        assert obo.state_root(sha) == parent_new.root == vstate.root
        assert obo.liquidations == parent_new.clearing.liquidations == vstate.clearing.liquidations
        assert obo.fixings == parent_new.clearing.fixings == vstate.clearing.fixings
        assert obo.violations() == []
        for liq in parent_new.clearing.liquidations[before:]:
            assert liq.insurance >= 0 and liq.socialized >= 0
        # no debt that no mark would ever liquidate: negative cash only beside a position in the
        # asset (the last example: a buyer of inverse calls that expired worthless was left owing
        # what it paid beyond its cash, while the writer could withdraw it)
        for k, a in parent_new.clearing.accounts.items():
            for asset, q in a.collateral.items():
                assert q >= 0 or any(parent_new.clearing.series[i].asset == asset for i in a.positions), (k.hex(), asset)
        parent, vparent, ref = parent_new, vstate, obo


# ---- 3. two bankrupt books trading with each other handed their loss to bystanders --------------


@pytest.mark.parametrize("x1_first, x1_cash, futures", [(True, 150_000, 10), (False, 150_000, 10), (True, 130_000, 6)])
def test_bankrupt_books_trading_with_each_other_cannot_charge_bystanders(x1_first, x1_cash, futures):
    """Attacker X1 long 10 BTC futures from its account Y and 4 puts from its account X2; a crash
    (60,000 -> 6,000) takes X1 and X2 below zero. The first liquidated of them closed its puts
    against the other (bankrupt against bankrupt), so the second had no positions left at its
    turn and its loss, much of it charged to it by the first's socialized loss, was charged to
    every account with a positive USD balance: bystander Z, who never traded, paid 84,247 USD,
    and the attacker's three accounts ended 84,247 USD (plus the fund) above what they
    deposited. Now a book whose positions an earlier bankrupt took charges whom that one
    charged (Y). Third case: X1 is
    only below maintenance (its put gain leaves it cash); the loss of X2, whose puts X1 took, is
    charged to X1 as far as its cash goes (a charge beyond it would have left X1, with no
    positions, a debt nobody pays), the rest to whom X1 charged."""
    from consensus.apps.clearing import Clearing
    from tests.test_clearing_properties import ORACLES, SERIES
    c = Clearing(O, quorum=2, backend="cpu", insurance={"USD": 100 * USD, "BTC": 0})
    for s in SERIES:
        c.list_series(s)
    _, kk = keys(100, 12)
    kk = sorted(kk)
    X1, X2 = (kk[0], kk[1]) if x1_first else (kk[1], kk[0])
    Y, Z = kk[5], kk[9]
    deposits = {X1: x1_cash * USD, X2: 50_000 * USD, Y: 2_000_000 * USD, Z: 1_000_000 * USD}
    for k, q in deposits.items():
        c.register(k)
        c.deposit(k, 0, "USD", q)
    c.mark("BTC", 60_000.0, VOLS, 1, T0 + 60, O[:2])
    c.trade(X1, 1, Y, 1, 3, futures, 60_000 * USD)
    c.trade(X1, 2, X2, 1, 2, 4, c.values([2])[2])
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    validator = ClearingApp(Verifier("software"), c.snapshot())
    body = ctx.mark("BTC", 6_000.0, 2, T0 + 120, VOLS, O[:2])
    assert app.submit_many([(body, [k.sign(body).signature for k in ORACLES[:2]])]) == [""]
    txs, state, vstate = chain(app, validator, app.genesis, validator.genesis, supply_of(c))
    assert len(txs) == 1
    after = state.clearing
    assert {l.account for l in after.liquidations} == {X1, X2}
    assert after.accounts[Z].collateral.get("USD", 0) == deposits[Z]  # the bystander pays nothing
    attacker = sum(after.accounts[k].collateral.get("USD", 0) for k in (X1, X2, Y))
    assert attacker <= deposits[X1] + deposits[X2] + deposits[Y] + 100 * USD  # at most the fund
    assert vstate.clearing.accounts[Z].collateral.get("USD", 0) == deposits[Z]
    for k in (X1, X2):  # closed out: no positions, and no debt left behind
        assert not after.accounts[k].positions and after.accounts[k].collateral.get("USD", 0) >= 0


# ---- 4. a settlement leaving its payer a debt no mark would ever liquidate ------------------------


def test_a_settlement_debt_is_paid_by_the_fund_and_the_receivers_not_left_on_the_books():
    """Attacker X writes 4 puts (55,000) to its other account Y with 50,000 USD of margin; the
    first mark at expiry fixes them at a crash (6,000): X pays 196,000 and, holding nothing
    else, was never liquidated: its cash stayed at -145,771 USD for good, the fund untouched,
    while Y withdrew 295,771 USD having deposited 100,000 (the pair took out 145,771 more than it
    put in, owed to every other account). Now the fund pays such a debt as far as it goes and
    the settlement's receivers the rest, in proportion to what they received."""
    from consensus.apps.clearing import Clearing
    from tests.test_clearing_properties import DAY as _DAY, ORACLES, SERIES as _SERIES
    c = Clearing(O, quorum=2, backend="cpu", insurance={"USD": 1_000 * USD, "BTC": 0})
    for s in _SERIES:
        c.list_series(s)
    (XS, YS, ZS), (X, Y, Z) = keys(100, 3)
    deposits = {X: 50_000 * USD, Y: 100_000 * USD, Z: 1_000_000 * USD}
    for k, q in deposits.items():
        c.register(k)
        c.deposit(k, 0, "USD", q)
    c.mark("BTC", 60_000.0, VOLS, 1, T0 + 60, O[:2])
    c.trade(Y, 1, X, 1, 2, 4, c.values([2])[2])
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    validator = ClearingApp(Verifier("software"), c.snapshot())
    supply = supply_of(c)
    body = ctx.mark("BTC", 6_000.0, 2, T0 + 2 * _DAY, {}, O[:2])
    assert app.submit_many([(body, [k.sign(body).signature for k in ORACLES[:2]])]) == [""]
    txs, state, vstate = chain(app, validator, app.genesis, validator.genesis, supply)
    assert len(txs) == 1 and 2 in state.clearing.fixings
    after = state.clearing
    for k, a in after.accounts.items():  # no debt without a position that a mark could liquidate
        assert all(q >= 0 for q in a.collateral.values()) or a.positions, k.hex()
    assert after.funds["USD"] == 0
    assert after.accounts[Z].collateral["USD"] == deposits[Z]
    # Y takes out everything it holds: at most what the pair and the fund put in
    out = [signed(ctx.withdraw(Y, 2, "USD", after.accounts[Y].collateral["USD"]), [YS])]
    assert app.submit_many(out) == [""]
    txs, state, vstate = chain(app, validator, state, vstate, supply)
    assert len(txs) == 1
    assert after.accounts[Y].collateral["USD"] <= deposits[X] + deposits[Y] + 1_000 * USD

