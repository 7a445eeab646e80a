"""Money review of the clearing ledger, sixth session (an attacker with two or more funded
accounts, sometimes the proposer): socialized loss, auto-deleveraging, settlement and
liquidation. Every block proposed here is checked by a second, software-only validator (same
state root, Clearing.violations() empty, which now includes: no account holds negative cash in an
asset in which it holds no position, a debt no later mark could collect).

1. A socialized-loss share beyond what the counterparty had: the loss of a liquidated book was
   charged to its deleveraged counterparties in proportion to the value they closed, whatever
   they held. A counterparty whose weight was large beside its equity (long ETH futures bought
   on borrowed cash, its equity just its initial margin) was charged far beyond it by a BTC
   crash it had no part in and left, fully deleveraged, with negative cash and no position: a
   debt nobody would ever collect, while the attacker's other account (the bankrupt's BTC
   counterparty) kept most of its gain. Now a share is capped at the counterparty's equity in
   the asset (a book the same mark liquidates later is not capped: it passes its share on) and
   the rest goes to the others, then to every account with a positive balance, the same way.
2. A write and its expiry in one block: the mark checked (ShortBooks) only holders of series it
   does not settle, so a writer with no collateral, its trade's margin deferred to the block's
   end, had its settlement debt paid by the fund and ended the block clean: an attacker took the
   whole fund to its other account. Now every holder of an expiring series is checked.
3. A writer left bankrupt by an expiry but holding a position on another underlying was neither
   liquidated at that mark nor given to the settlement-debt rule: the receivers withdrew their
   gain before the other underlying's next mark handed the loss to bystanders. Now it is
   liquidated at the expiry mark, the settlement's receivers among those charged.
4. With shares capped at equity, a counterparty hedged by a position with the attacker's third
   account (its equity unmoved by the crash) handed the rest of the loss to every account with a
   balance. Now the rest goes to the counterparties still holding positions, beyond their
   equity, and they are liquidated at the same mark: the loss follows the positions to the gain.
5. The capped charge as a property (Hypothesis), and the engines' agreement on streams of books
   holding both underlyings, borrowed cash, tenfold moves and expiries (with section 1 as a
   stream)."""

import pytest

from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing import Clearing
from consensus.apps.clearing_app import ClearingApp
from consensus.verify import Verifier
from tests.test_clearing_properties import DAY, O, ORACLES, SERIES, T0, USD, block_of, chain, signed
from tests.test_proposal_starvation_review import keys, supply_of

VOLS = {1: 0.7, 2: 0.7, 4: 0.7}


pytestmark = pytest.mark.usefixtures("quiet_logs")


def market(fund=100 * USD):
    c = Clearing(O, quorum=2, backend="cpu", insurance={"USD": fund, "BTC": 0})
    for s in SERIES:
        c.list_series(s)
    c.mark("BTC", 60_000.0, VOLS, 1, T0 + 60, O[:2])
    c.mark("ETH", 3_000.0, {7: 0.7}, 1, T0 + 60, O[:2])
    return c


def apps(c):
    return ClearingApp(Verifier("accel", "cpu"), c.snapshot()), ClearingApp(Verifier("software"), c.snapshot())


def marked(app, *bodies):
    items = [(b, [k.sign(b).signature for k in ORACLES[:2]]) for b in bodies]
    assert app.submit_many(items) == [""] * len(items)


def no_unbacked_debt(c):
    for k, a in c.accounts.items():
        books = {c.series[i].asset for i in a.positions}
        for asset, q in a.collateral.items():
            assert q >= 0 or asset in books, (k.hex()[:16], asset, q)


# ---- 1. a socialized-loss share beyond the counterparty's equity -------------------------------


def test_a_deleveraged_counterparty_is_not_charged_beyond_its_equity():
    """Attacker A buys 1 BTC future from its own account H (60,000) and sells 10 ETH futures to
    honest E, which buys them on borrowed cash with its initial margin (6,241 USD) deposited;
    A deposits its initial margin. BTC crashes to 6,000: A's loss beyond its cash (35,279) was
    charged 30/36 to E (ETH futures closed at 3,000 x 10 against BTC's 6,000 x 1), which, fully
    deleveraged, ended with -23,074 USD and no position, for good; H kept 48,136 of its 54,000
    gain. Then E paid at most its equity (6,241) and H the rest; since session 7 (a share weighs
    what the counterparty gained at this mark) E, which gained nothing at the BTC mark, pays 6
    quanta and H the rest."""
    c = market()
    _, kk = keys(100, 4)
    A, H, E, Z = sorted(kk)
    deposits = {A: 18_721 * USD, H: 1_000_000 * USD, E: 6_241 * USD, Z: 1_000_000 * USD}
    for k, q in deposits.items():
        c.register(k)
        c.deposit(k, 0, "USD", q)
    c.trade(A, 1, H, 1, 3, 1, 60_000 * USD)
    c.trade(E, 1, A, 2, 6, 10, 3_000 * USD)
    assert c.accounts[E].collateral["USD"] < 0  # E's futures are bought on borrowed cash
    app, validator = apps(c)
    marked(app, ctx.mark("BTC", 6_000.0, 2, T0 + 120, VOLS, O[:2]))
    txs, state, vstate = chain(app, validator, app.genesis, validator.genesis, supply_of(c))
    after = state.clearing
    assert [l.account for l in after.liquidations] == [A]
    assert not after.accounts[E].positions and not after.accounts[A].positions
    no_unbacked_debt(after)
    assert after.accounts[E].collateral["USD"] == deposits[E] - 6  # its 10 ETH futures gained nothing at the BTC mark: 10 quanta of weight beside H's 54,000 USD gain
    assert after.accounts[Z].collateral["USD"] == deposits[Z]  # the bystander pays nothing
    (liq,) = after.liquidations
    assert liq.insurance == 100 * USD and liq.socialized == 35_179 * USD
    # H, the other counterparty, pays the rest: 60,000 received, 6,000 paid back at the mark
    assert after.accounts[H].collateral["USD"] == deposits[H] + 54_000 * USD - (35_179 * USD - 6)
    assert vstate.clearing.accounts[E].collateral["USD"] == deposits[E] - 6


# ---- 2. a write and its expiry in one block: the fund paid a book no margin check ever saw -------


def test_a_write_and_the_expiry_in_one_block_cannot_drain_the_fund():
    """Attacker X (no collateral at all) writes 10 puts (55,000) to its account Y at price 0 and
    the expiry mark (50,000) follows in the same block (the attacker proposing, or simply sending
    the trade before the oracles' mark arrives): the trade's margin is deferred to the block's
    end, the mark's ShortBooks check looked only at holders of series the mark does not settle,
    the settlement left X 50,000 USD in debt with no position, the fund paid it and the block
    ended with both books clean: Y withdrew the whole 50,000 USD fund. Now the holders of the
    expiring series are checked at the mark too: X's book, touched in the block, makes it
    invalid; the proposer holds the trade back."""
    c = market(fund=50_000 * USD)
    (XS, YS, ZS), (X, Y, Z) = keys(100, 3)
    for k, q in ((X, 0), (Y, 1_000 * USD), (Z, 1_000_000 * USD)):
        c.register(k)
        if q:
            c.deposit(k, 0, "USD", q)
    app, validator = apps(c)
    trade = signed(ctx.trade(Y, 1, X, 0, 2, 10, 0), [YS, XS])
    body = ctx.mark("BTC", 50_000.0, 2, T0 + 2 * DAY, {}, O[:2])
    mark = (body, [k.sign(body).signature for k in ORACLES[:2]])
    # the attacker's block, trade then mark: invalid
    from tests.test_clearing_properties import as_txs
    raw = as_txs([trade, mark])
    try:
        root = validator.execute(validator.genesis, raw.bodies).root
    except ValueError:
        root = bytes(32)
    v = validator.validate(validator.genesis, block_of(raw, bytes(32), root, validator), ((), (), ()))
    assert not v.ok
    # the honest proposer's block: the mark alone (the trade held back), the fund untouched
    assert app.submit_many([trade, mark]) == ["", ""]
    txs, state, vstate = chain(app, validator, app.genesis, validator.genesis, supply_of(c))
    assert len(txs) == 1 and 2 in state.clearing.fixings
    assert state.clearing.funds["USD"] == 50_000 * USD
    assert state.clearing.accounts[Y].collateral["USD"] == 1_000 * USD
    assert not state.clearing.liquidations



def test_a_writer_withdrawing_its_margin_in_the_expiry_block_cannot_drain_the_fund():
    """The same with a margined writer: X deposits 200,000 USD and writes 10 puts to Y in an
    earlier block; the block of the expiry mark (50,000) withdraws X's whole cash first (a
    withdrawal's margin is deferred too): the fund paid X's 50,000 settlement debt and the block
    was valid. Now X's book, touched in the block and short at the mark, makes it invalid."""
    from tests.test_clearing_properties import as_txs
    c = market(fund=50_000 * USD)
    (XS, YS), (X, Y) = keys(100, 2)
    for k, q in ((X, 200_000 * USD), (Y, 100_000 * USD)):
        c.register(k)
        c.deposit(k, 0, "USD", q)
    c.trade(Y, 1, X, 1, 2, 10, c.values([2])[2])
    app, validator = apps(c)
    out = signed(ctx.withdraw(X, 2, "USD", c.accounts[X].collateral["USD"]), [XS])
    body = ctx.mark("BTC", 50_000.0, 2, T0 + 2 * DAY, {}, O[:2])
    mark = (body, [k.sign(body).signature for k in ORACLES[:2]])
    raw = as_txs([out, mark])
    try:
        root = validator.execute(validator.genesis, raw.bodies).root
    except ValueError:
        root = bytes(32)
    assert not validator.validate(validator.genesis, block_of(raw, bytes(32), root, validator), ((), (), ())).ok
    assert app.submit_many([out, mark]) == ["", ""]
    txs, state, vstate = chain(app, validator, app.genesis, validator.genesis, supply_of(c))
    assert len(txs) == 1 and state.clearing.funds["USD"] == 50_000 * USD
    assert state.clearing.accounts[X].collateral["USD"] > 0  # the settlement came out of X's margin

# ---- 3. a settlement debt parked behind a position on another underlying ------------------------


def test_a_writer_left_bankrupt_by_an_expiry_is_liquidated_at_that_mark_whatever_else_it_holds():
    """Attacker X writes 20 ETH puts (3,000, expiring in 3 h) to its account Y and holds 1 BTC
    future against honest E. The ETH mark at expiry fixes the puts at 2,700 (index 300): X's
    USD book is bankrupt, but the mark checked only holders of ETH series it did not settle and
    the settlement debt rule skipped X because it still held a USD position (the BTC future):
    X stayed bankrupt until the next BTC mark, while Y withdrew its 54,000 gain; that mark then
    charged X's loss to E and, beyond E, to everyone with a USD balance. Now the holders of the
    expiring series are checked at the mark: X is liquidated there, its loss charged to E (whose
    future it closed) and Y (whom the settlement paid) in proportion to the value they closed."""
    c = market(fund=100 * USD)
    (XS, YS, ES, ZS), (X, Y, E, Z) = keys(100, 4)
    deposits = {X: 30_000 * USD, Y: 1_000 * USD, E: 20_000 * USD, Z: 1_000_000 * USD}
    for k, q in deposits.items():
        c.register(k)
        c.deposit(k, 0, "USD", q)
    c.trade(Y, 1, X, 1, 7, 20, c.values([7])[7])
    c.trade(X, 2, E, 1, 3, 1, 60_000 * USD)
    app, validator = apps(c)
    supply = supply_of(c)
    marked(app, ctx.mark("ETH", 300.0, 2, T0 + 3 * 3600, {}, O[:2]))
    txs, state, vstate = chain(app, validator, app.genesis, validator.genesis, supply)
    after = state.clearing
    assert 7 in after.fixings and [l.account for l in after.liquidations] == [X]
    (liq,) = after.liquidations
    assert liq.insurance == 100 * USD and liq.socialized > 0
    assert not after.accounts[X].positions and after.accounts[X].collateral.get("USD", 0) == 0
    assert not after.accounts[E].positions
    y_gain = after.accounts[Y].collateral["USD"] - deposits[Y]
    e_gain = after.accounts[E].collateral["USD"] - deposits[E]
    assert y_gain < 20 * 2_700 * USD and e_gain < 0  # both share X's loss
    assert y_gain + e_gain == deposits[X] + 100 * USD  # which leaves the pair no more than X put in
    assert after.accounts[Z].collateral["USD"] == deposits[Z]
    # Y takes out everything; a later BTC mark finds nothing left to charge anyone
    assert app.submit_many([signed(ctx.withdraw(Y, 2, "USD", after.accounts[Y].collateral["USD"]), [YS])]) == [""]
    marked(app, ctx.mark("BTC", 59_000.0, 2, T0 + 4 * 3600, VOLS, O[:2]))
    txs, state, vstate = chain(app, validator, state, vstate, supply)
    assert len(txs) == 2 and len(state.clearing.liquidations) == 1
    assert state.clearing.accounts[Z].collateral["USD"] == deposits[Z]
    assert state.clearing.accounts[E].collateral["USD"] == after.accounts[E].collateral["USD"]


# ---- 4. a loss routed to bystanders through a hedged counterparty --------------------------------


def hedged_market(expiry=T0 + 30 * DAY):
    """A (12,500 USD) long 1 BTC future from B (15,000), which holds a deep in-the-money call
    (10,000, expiring then) bought from C (15,000); bystander Z (1,000,000); a 100 USD fund."""
    from accel.risk import CALL
    from consensus.apps.clearing import Series
    c = Clearing(O, quorum=2, backend="cpu", insurance={"USD": 100 * USD, "BTC": 0})
    for s in SERIES:
        c.list_series(s)
    c.list_series(Series(20, "BTC", CALL, 10_000.0, expiry))
    vols = {**VOLS, 20: 0.7}
    c.mark("BTC", 60_000.0, vols, 1, T0 + 60, O[:2])
    (AS, BS, CS, ZS), (A, B, C, Z) = keys(100, 4)
    deposits = {A: 12_500 * USD, B: 15_000 * USD, C: 15_000 * USD, Z: 1_000_000 * USD}
    for k, q in deposits.items():
        c.register(k)
        c.deposit(k, 0, "USD", q)
    c.trade(A, 1, B, 1, 3, 1, 60_000 * USD)
    c.trade(B, 2, C, 1, 20, 1, c.values([20])[20])
    return c, (A, B, C, Z), (AS, BS, CS, ZS), deposits, vols


@pytest.mark.parametrize("settled", [False, True])
def test_a_hedged_counterparty_passes_the_loss_on_to_its_other_side_not_to_bystanders(settled):
    """Attacker A buys 1 BTC future from its account B, which hedges it with a deep
    in-the-money call (10,000) bought from its third account C (B's margin is next to nothing
    once hedged).
    A crash (60,000 -> 6,000) bankrupts A: its 41,400 USD loss beyond the fund went to B, whose
    equity hardly moved (the future's gain is the call's loss). Uncapped, B was left bankrupt
    with the call until the next BTC mark, while C withdrew the gain; capped at B's equity, the
    rest went to every account with a balance: bystander Z paid 21,030 USD and the attacker's
    three accounts ended that much above what they put in. Now B, its equity taken and a
    position left, is charged the rest and liquidated at the same mark: its call is closed
    against C, and C pays the loss. Settled: the call expires at the crash's mark (its fixing 0),
    B's hedge is gone with it and B holds nothing after the deleveraging: capped, the rest went to
    Z again (21,033 USD) while C kept the premium; now B passes it on to the other side of its
    settled series (C), as a writer's settlement debt is."""
    c, (A, B, C, Z), _, deposits, vols = hedged_market(T0 + 2 * DAY if settled else T0 + 30 * DAY)
    app, validator = apps(c)
    supply = supply_of(c)
    if settled:
        marked(app, ctx.mark("BTC", 6_000.0, 2, T0 + 2 * DAY, {}, O[:2]))
    else:
        marked(app, ctx.mark("BTC", 6_000.0, 2, T0 + 120, vols, O[:2]))
    txs, state, vstate = chain(app, validator, app.genesis, validator.genesis, supply)
    after = state.clearing
    assert [l.account for l in after.liquidations] == [A, B]
    assert (20 in after.fixings) == settled
    assert after.accounts[Z].collateral["USD"] == deposits[Z]  # the bystander pays nothing
    attacker = sum(after.accounts[k].collateral.get("USD", 0) for k in (A, B, C))
    assert attacker == deposits[A] + deposits[B] + deposits[C] + 100 * USD  # the fund, nothing more
    for k in (A, B, C):
        assert not after.accounts[k].positions
    assert vstate.clearing.accounts[Z].collateral["USD"] == deposits[Z]



def test_a_book_touched_in_the_block_is_never_liquidated_by_the_socialized_loss_of_its_mark():
    """The same market; in the crash's block B first withdraws all but its maintenance margin
    (a withdrawal's margin is checked at the block's end). The carrier rule liquidated B at the
    mark, and its book, empty then, passed the block's end: a mark liquidated a book touched in
    its block, which the deferred-margin rule forbids (ShortBooks). Now a touched book is not a
    carrier: capped at its equity, it ends the block short of initial margin, so that block is
    invalid; the proposer holds B's withdrawal back and B, untouched, passes the loss on."""
    from tests.test_clearing_properties import as_txs
    c, (A, B, C, Z), (AS, BS, CS, ZS), deposits, vols = hedged_market()
    app, validator = apps(c)
    (eq,), m = c.equity([B]), c.margins([B])
    out = signed(ctx.withdraw(B, 3, "USD", eq["USD"] - m["USD"][1][0]), [BS])
    body = ctx.mark("BTC", 6_000.0, 2, T0 + 120, vols, O[:2])
    mark = (body, [k.sign(body).signature for k in ORACLES[:2]])
    raw = as_txs([out, mark])
    try:
        root = validator.execute(validator.genesis, raw.bodies).root
    except ValueError:
        root = bytes(32)
    assert not validator.validate(validator.genesis, block_of(raw, bytes(32), root, validator), ((), (), ())).ok
    assert app.submit_many([out, mark]) == ["", ""]
    txs, state, vstate = chain(app, validator, app.genesis, validator.genesis, supply_of(c))
    assert len(txs) == 1
    after = state.clearing
    assert [l.account for l in after.liquidations] == [A, B]
    assert after.accounts[Z].collateral["USD"] == deposits[Z]

# ---- 5. the capped charge itself, and streams through every engine -------------------------------
from hypothesis import HealthCheck, example, given, settings, strategies as st  # noqa: E402


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(st.lists(st.tuples(st.integers(-50, 10**6), st.integers(1, 10**6), st.booleans()), min_size=1, max_size=9),
       st.integers(1, 4 * 10**6))
def test_a_capped_charge_takes_what_it_can_in_proportion_and_nobody_past_its_room(accounts, loss):
    """Clearing._charge over accounts with cash only (room = max(cash, 0)), some pending (no cap):
    it takes min(loss, sum of rooms) (all of loss if one is pending), nobody past its room but the
    pending, and nobody at a higher rate per weight than one left with room, beyond a quantum each
    (the rounding remainder goes a quantum each to the largest weights, not the largest fractions)."""
    c = market()
    _, kk = keys(20, len(accounts))
    weights, pending, room = {}, set(), {}
    for k, (cash, w, is_pending) in zip(kk, accounts):
        c.register(k)
        if cash:
            c.accounts[k].collateral["USD"] = cash
        weights[k] = w
        room[k] = max(cash, 0)
        if is_pending:
            pending.add(k)
    before = {k: c.accounts[k].collateral.get("USD", 0) for k in kk}
    taken = c._charge("USD", loss, weights, pending)
    take = {k: before[k] - c.accounts[k].collateral.get("USD", 0) for k in kk}
    assert sum(take.values()) == taken
    assert taken == (loss if pending else min(loss, sum(room.values())))
    for k in kk:
        assert take[k] >= 0
        assert k in pending or take[k] <= room[k]
    for h in kk:
        if h in pending or take[h] < room[h]:  # h could have paid more: nobody paid at a higher rate
            for g in kk:
                assert (take[g] - 1) * weights[h] <= (take[h] + 1) * weights[g], (g.hex()[:8], h.hex()[:8])
    for k in kk:  # nobody but the pending left below zero by it
        assert k in pending or c.accounts[k].collateral.get("USD", 0) >= min(before[k], 0)


from tests.test_clearing_properties import DAY as _DAY  # noqa: E402
from tests.test_ledger_money_s5 import test_liquidation_adl_and_expiry_streams_agree_across_engines as _s5  # noqa: E402

_user = st.integers(0, 4)
_op = st.one_of(
    st.tuples(st.just("deposit"), _user, st.sampled_from(["USD", "BTC"]), st.integers(1, 3_000).map(lambda x: x * USD),
              st.just(0)),
    st.tuples(st.just("withdraw"), _user, st.sampled_from(["USD", "USD", "BTC"]),
              st.one_of(st.just("all"), st.integers(1, 3_000).map(lambda x: x * USD)), st.just(0)),
    *[st.tuples(st.just("trade"), _user, _user, st.sampled_from([6, 6, 3, 3, 7, 2, 1, 4, 5]),
                st.sampled_from([1, 1, 2, 3]), st.sampled_from([0.0, 0.9, 1.0, 1.0, 1.1, 1.5]),
                st.just(0)).filter(lambda o: o[1] != o[2])] * 4,
    st.tuples(st.just("mark"), st.sampled_from(["BTC", "ETH"]), st.sampled_from([0.1, 0.5, 0.8, 1.0, 1.25, 2.0, 4.0]),
              st.just(1), st.sampled_from([60] * 6 + [3 * 3600, 6 * 3600, 2 * _DAY]), st.just(True), st.just(2)),
)


@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.lists(_op, max_size=10), min_size=3, max_size=8))
@example([[("deposit", 0, "USD", 3_000 * USD, 0)] * 8 + [("deposit", 1, "USD", 3_000 * USD, 0)] * 7
          + [("deposit", 2, "USD", 3_000 * USD, 0)] * 3 + [("deposit", 2, "USD", 500 * USD, 0)],
          [("trade", 0, 1, 6, 20, 1.0, 0), ("trade", 2, 0, 3, 1, 1.0, 0)],  # E (2) buys on borrowed cash
          [("mark", "ETH", 0.1, 1, 60, True, 2)]])  # section 1 in a stream: E charged past its equity
@example([[("trade", 0, 1, 3, 1, 1.0, 0), ("trade", 2, 0, 6, 3, 1.0, 0), ("trade", 3, 2, 7, 2, 0.0, 0)],
          [("mark", "BTC", 0.1, 1, 60, True, 2)], [("mark", "ETH", 0.1, 1, 3 * 3600, True, 2)],
          [("withdraw", 1, "USD", "all", 0), ("withdraw", 2, "USD", "all", 0)], [("mark", "BTC", 1.0, 1, 60, True, 2)]])
def test_cross_underlying_books_crashes_and_expiries_agree_across_engines_with_no_unbacked_debt(stream):
    """The fifth session's engine agreement (columnar proposer, software-only validator, one by
    one: same roots, liquidations, fixings; no negative cash beside no position) over books that
    hold both underlyings, trades at a price of 0 or 1.5 x the quote (cash borrowed or lent),
    tenfold crashes and rallies and marks at the expiries, with a small fund."""
    _s5.hypothesis.inner_test(stream)
