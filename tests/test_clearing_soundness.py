"""The clearing ledger under attack (issue 19): one test per class of defect the review found, each
through the state machine and, where a validator is involved, through propose and validate.
The invariants over long random streams: test_clearing_properties.py."""
import hashlib

import numpy as np
import pytest
from nacl.signing import SigningKey

from accel import Packed
from accel.packing import pack_fixed, pack_messages
from accel.risk import CALL, FUTURE, PUT
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing import (MAX_SIZE, QUANTUM, Breakers, Clearing, Liquidation, Rejected, Series,
                                     ShortBooks)
from consensus.apps.clearing_app import ClearingApp, State
from consensus.messages import QC, Block, Txs
from consensus.verify import Verifier

T0 = 1_800_000_000
DAY = 24 * 3600
USD = 10**8
USERS = [SigningKey(bytes([90 + i]) * 32) for i in range(6)]
K = [bytes(u.verify_key) for u in USERS]
ORACLE_KEYS = [SigningKey(bytes([150 + i]) * 32) for i in range(3)]
O = [bytes(o.verify_key) for o in ORACLE_KEYS]
VOLS = {1: 0.6, 2: 0.6}
ETH_VOLS = {}


def genesis(fund=1_000_000 * USD, breakers=None, software=False) -> Clearing:
    c = Clearing(O, quorum=2, backend="cpu", insurance={"USD": fund, "BTC": 0}, breakers=breakers)
    for s in (Series(1, "BTC", CALL, 60_000.0, T0 + 30 * DAY), Series(2, "BTC", PUT, 55_000.0, T0 + 30 * DAY),
              Series(3, "BTC", FUTURE, 0.0, T0 + 90 * DAY), Series(4, "ETH", FUTURE, 0.0, T0 + 90 * DAY),
              Series(5, "BTC", FUTURE, 0.0, T0 + 90 * DAY, inverse=True), Series(6, "BTC", CALL, 62_000.0, T0 + 3600)):
        c.list_series(s)
    c.software = software
    return c


def funded(cash=(1_000_000,) * 4, **kw) -> Clearing:
    c = genesis(**kw)
    for i, amount in enumerate(cash):
        c.register(K[i])
        if amount:
            c.deposit(K[i], 0, "USD", amount * USD)
    c.mark("BTC", 60_000.0, VOLS | {6: 0.6}, 1, T0, O[:2])
    c.mark("ETH", 3_000.0, {}, 1, T0, O[:2])
    return c


def signed(body: bytes, *signers: SigningKey) -> tuple[bytes, list[bytes]]:
    return body, [s.sign(body).signature for s in signers]


def mark_tx(und, index, seq, ts, vols):
    return signed(ctx.mark(und, index, seq, ts, vols, O[:2]), *ORACLE_KEYS[:2])


def trade_tx(c, b, s, series, size, price, nonces=None):
    nb, ns = (nonces or {}).get(b, c.accounts[K[b]].nonce), (nonces or {}).get(s, c.accounts[K[s]].nonce)
    return signed(ctx.trade(K[b], nb, K[s], ns, series, size, price), USERS[b], USERS[s])


def _txs(items) -> Txs:
    return Txs(Packed(*pack_messages([b for b, _ in items])), pack_fixed([x for _, s in items for x in s], 64, "sig"))


def app_on(c: Clearing, validation="accel") -> tuple[ClearingApp, State]:
    app = ClearingApp(Verifier(validation, "cpu" if validation == "accel" else None), c)
    return app, app.genesis


def validate(app, parent: State, items):
    txs = _txs(items)
    state_root = bytes(32)
    try:
        state_root = app.execute(parent, txs.bodies).root
    except Rejected:
        pass
    block = Block(2, 2, bytes(32), 2, app.tx_root(txs), state_root, txs.digest(), txs, QC(bytes(32), 0, 0))
    return app.validate(parent, block, ((), (), ()))


def bodies(txs: Txs) -> list[bytes]:
    return [txs.bodies.item(i) for i in range(len(txs))]


# 1. A liquidation inside a block must not absorb a same-block trade's or withdrawal's loss --------

def test_a_mark_cannot_liquidate_a_book_a_trade_of_the_same_block_left_short():
    """User 1 sells far more puts than it can carry, a crash mark follows in the same block: the
    block is invalid; a proposer holds the trade back and includes the mark; nobody's loss reaches
    the fund."""
    c = funded(cash=(1_000_000, 10_000, 1_000_000, 1_000_000))
    app, parent = app_on(c)
    dump = trade_tx(c, 0, 1, 2, 500, 1_000 * USD)
    crash = mark_tx("BTC", 30_000.0, 2, T0 + 60, VOLS | {6: 1.2})
    verdict = validate(app, parent, [dump, crash])
    # (short at the marks it traded under: the mark's check of the touched books refuses it first
    # since review s21; tests/test_ledger_prespend_s21.py has a touched book the mark would liquidate)
    assert not verdict.ok and ("would be liquidated by this BTC mark" in verdict.reason
                               or "below initial margin before this BTC mark" in verdict.reason)
    assert app.submit_many([dump, crash]) == ["", ""]
    txs, state = app.propose(parent, set())
    assert bodies(txs) == [crash[0]] and state.clearing.funds["USD"] == c.funds["USD"]
    assert validate(app, parent, [crash]).ok


def test_a_mark_cannot_liquidate_a_book_emptied_by_a_withdrawal_of_the_same_block():
    c = funded()
    c.trade(K[0], 1, K[1], 1, 2, 10, 1_000 * USD)  # user 1 short 10 puts, well collateralised
    app, parent = app_on(c)
    cash = c.accounts[K[1]].collateral["USD"]
    drain = signed(ctx.withdraw(K[1], 2, "USD", cash), USERS[1])
    crash = mark_tx("BTC", 40_000.0, 2, T0 + 60, VOLS | {6: 1.0})
    verdict = validate(app, parent, [drain, crash])
    assert not verdict.ok and ("would be liquidated" in verdict.reason or "below initial margin before" in verdict.reason)
    app.submit_many([drain, crash])
    txs, state = app.propose(parent, set())
    assert bodies(txs) == [crash[0]] and state.clearing.liquidations == []
    assert state.clearing.accounts[K[1]].collateral["USD"] == cash and state.clearing.funds == c.funds


def test_a_liquidation_after_a_mark_of_an_earlier_block_is_the_funds_business():
    """The rule catches only same-block books: the same crash one block after the trade liquidates
    normally (the trade was margined when it was made)."""
    c = funded(cash=(1_000_000, 70_000, 1_000_000, 1_000_000))
    c.trade(K[0], 1, K[1], 1, 2, 5, 1_000 * USD)
    app, parent = app_on(c)
    verdict = validate(app, parent, [mark_tx("BTC", 25_000.0, 2, T0 + 60, VOLS | {6: 1.5})])
    assert verdict.ok and [x.account for x in verdict.state.clearing.liquidations] == [K[1]]


# 2. Margins are summed as exact integers --------------------------------------------------------

def test_margins_of_two_underlyings_add_without_wrapping():
    """Two unfunded accounts trade futures in two underlyings; each group's initial margin fits in
    int64 ticks, their sum does not: the sum is exact, so the trades are refused."""
    c = funded(cash=(0, 0))
    c.defer = True
    c.trade(K[0], 0, K[1], 0, 3, 4_000_000, 60_000 * USD)
    c.trade(K[1], 1, K[0], 1, 4, 800_000_000, 3_000 * USD)
    im = c.margins([K[0], K[1]])["USD"][0]
    assert all(m is None or m > 2**63 for m in im)
    assert c.end_of_block() == [K[0], K[1]]


def test_a_margin_beyond_int64_refuses_the_trade_and_a_block_holding_it():
    c = funded(cash=(0, 0, 0, 0))
    app, parent = app_on(c)
    huge = trade_tx(c, 0, 1, 3, MAX_SIZE, 100_000 * USD)
    verdict = validate(app, parent, [huge])
    assert not verdict.ok and "ends the block below initial margin" in verdict.reason
    with pytest.raises(Rejected, match="below initial margin"):
        ctx.apply(c, ctx.decode(huge[0]))
    assert c.accounts[K[0]].positions == {} and c.accounts[K[0]].nonce == 0


# 3. Nothing a client sends raises out of submit_many, propose or validate -------------------------

def test_a_trade_on_an_underlying_without_a_mark_is_refused_not_raised():
    c = genesis()
    for i in range(2):
        c.register(K[i])
        c.deposit(K[i], 0, "USD", 10**6 * USD)
    app, parent = app_on(c)
    t = signed(ctx.trade(K[0], 1, K[1], 1, 3, 1, 60_000 * USD), USERS[0], USERS[1])
    verdict = validate(app, parent, [t])
    assert not verdict.ok and "has no oracle mark yet" in verdict.reason
    app.submit_many([t])
    txs, _ = app.propose(parent, set())
    assert len(txs) == 0 and "no oracle mark" in app.refused[hashlib.sha256(t[0]).digest()]


@pytest.mark.parametrize("item", [
    (b"\x00\x00\x00\x01\x04", []), ("not bytes", []), (b"\x00\x00\x00\x01\x01" + bytes(32), [b"short"]),
    (b"\x00\x00\x00\x01\x01" + bytes(32), None), (None, None), (b"\x00\x00\x00\x01\x01" + bytes(32), [bytes(64)] * 2),
    (b"\x00\x00\x00\x01\x05" + b"BTC\0\0\0\0\1" + bytes(24) + b"\x00\x00\x00", []),
])
def test_submit_many_refuses_junk_with_a_reason_and_keeps_the_rest(item):
    c = funded()
    app, _ = app_on(c)
    good = signed(ctx.deposit(K[0], 1, "USD", USD), USERS[0])
    reasons = app.submit_many([item, good])
    assert reasons[0] and reasons[1] == "" and len(app.mempool) == 1


# 4. Liquidated positions keep a counterparty -------------------------------------------------------

def test_liquidation_closes_positions_against_counterparties_and_open_interest_stays_zero():
    c = funded(cash=(1_000_000, 70_000, 1_000_000, 1_000_000))
    c.trade(K[0], 1, K[1], 1, 2, 3, 1_000 * USD)  # 0 long 3 puts from 1
    c.trade(K[2], 1, K[1], 2, 2, 2, 1_000 * USD)  # 2 long 2 puts from 1
    c.mark("BTC", 30_000.0, VOLS | {6: 1.0}, 2, T0 + 60, O[:2])
    assert [x.account for x in c.liquidations] == [K[1]]
    assert all(2 not in c.accounts[k].positions for k in K[:3])  # both longs deleveraged
    assert c.violations() == []
    c.mark("BTC", 10_000.0, VOLS | {6: 1.0}, 3, T0 + 30 * DAY, O[:2])  # expiry: nothing pays from nothing
    assert c.violations() == []


def test_when_the_fund_runs_dry_the_counterparties_take_the_rest_and_the_fund_stays_at_zero():
    c = funded(cash=(1_000_000, 40_000, 1_000_000, 1_000_000), fund=1_000 * USD)
    c.trade(K[0], 1, K[1], 1, 3, 2, 60_000 * USD)   # 1 short 2 futures to 0
    c.trade(K[2], 1, K[1], 2, 3, 1, 60_000 * USD)   # and 1 to 2
    c.mark("BTC", 90_000.0, VOLS | {6: 0.6}, 2, T0 + 60, O[:2])  # +50%: user 1 owes 90,000, holds 40,000
    loss = (3 * 30_000 - 40_000 - 1_000) * USD
    assert c.liquidations == [Liquidation(K[1], "USD", 1_000 * USD, loss)] and c.funds["USD"] == 0
    assert c.accounts[K[1]].collateral == {} and c.violations() == []
    # closed at the mark (90,000 a contract), the loss beyond the fund shared 2:1 by value closed,
    # the quantum left over by the division to the larger share
    assert c.accounts[K[0]].collateral["USD"] == (1_000_000 - 120_000 + 180_000) * USD - (loss * 2 // 3 + 1)
    assert c.accounts[K[2]].collateral["USD"] == (1_000_000 - 60_000 + 90_000) * USD - loss // 3
    assert all(not c.accounts[k].positions for k in K[:3])


# 5. and 6. Settlement in integers, at the fixing --------------------------------------------------

def test_settlement_pays_each_holder_size_times_one_fixed_value_and_sums_to_zero():
    rng = np.random.default_rng(5)
    c = funded(cash=(100_000_000,) * 4)
    for _ in range(12):
        b, s = rng.choice(4, 2, replace=False)
        c.trade(K[b], c.accounts[K[b]].nonce, K[s], c.accounts[K[s]].nonce, 6, int(rng.integers(1, 300)), 700 * USD)
    sizes = {k: c.accounts[k].positions.get(6, 0) for k in K[:4]}
    cash = {k: c.accounts[k].collateral["USD"] for k in K[:4]}
    c.mark("BTC", 63_333.333333, VOLS, 2, T0 + 3600, O[:2])
    value = c.fixings[6]
    assert value == round((63_333.333333 - 62_000.0) / QUANTUM)
    assert all(c.accounts[k].collateral["USD"] - cash[k] == sizes[k] * value for k in K[:4])
    assert sum(c.accounts[k].collateral["USD"] - cash[k] for k in K[:4]) == 0 and c.violations() == []


def test_the_first_mark_at_or_after_expiry_fixes_the_price_and_closes_the_series():
    c = funded()
    c.trade(K[0], 1, K[1], 1, 6, 2, 100 * USD)
    c.mark("BTC", 61_000.0, VOLS | {6: 0.5}, 2, T0 + 3000, O[:2])
    c.trade(K[0], 2, K[1], 2, 6, 1, 100 * USD)  # before expiry: open
    c.mark("BTC", 64_000.0, VOLS, 3, T0 + 4000, O[:2])
    assert c.fixings[6] == 2_000 * USD
    c.mark("BTC", 80_000.0, VOLS, 4, T0 + 5000, O[:2])
    assert c.fixings[6] == 2_000 * USD
    with pytest.raises(Rejected, match="not open"):
        c.trade(K[0], 3, K[1], 3, 6, 1, 100 * USD)


# 7. A first mark with sequence 0 -------------------------------------------------------------------

def test_a_first_mark_with_sequence_zero_is_admitted_and_the_batch_is_not_lost():
    c = genesis()
    app, parent = app_on(c)
    zero = mark_tx("BTC", 60_000.0, 0, T0, VOLS | {6: 0.6})
    reg = signed(ctx.register(K[0]), USERS[0])
    assert app.submit_many([zero, reg]) == ["", ""]
    txs, state = app.propose(parent, set())
    assert len(txs) == 2 and state.clearing.marks["BTC"].sequence == 0


# 8. Proposals stay linear in refused transactions --------------------------------------------------

def test_proposing_with_thousands_of_refused_transactions_applies_each_once(monkeypatch):
    c = funded()
    app, parent = app_on(c)
    junk = [signed(ctx.withdraw(K[2], 1, "USD", 10**9 * USD + i), USERS[2]) for i in range(2_000)]
    short = [trade_tx(c, 3, 2, 2, 100_000, USD, nonces={3: 1 + i, 2: 1 + i}) for i in range(50)]
    good = [signed(ctx.deposit(K[0], 1 + i, "USD", USD), USERS[0]) for i in range(20)]
    assert not any(app.submit_many(junk + short + good))
    applied = []
    apply = ctx.apply
    monkeypatch.setattr(ctx, "apply", lambda state, tx: applied.append(tx) or apply(state, tx))
    txs, _ = app.propose(parent, set())
    assert bodies(txs) == [b for b, _ in good]
    assert len(applied) <= 2 * len(app.mempool) + len(junk) + len(short) + len(good)
    assert len(app.mempool) < len(short) + len(good)  # refused ones left
    applied.clear()
    app.propose(parent, set())
    assert len(applied) <= 3 * (len(short) + len(good))


# 9. Extreme marks -----------------------------------------------------------------------------------

@pytest.mark.parametrize("index", [1e300, 5e-324, 1e-30, 1.7976931348623157e308, float("nan"), float("inf"), -1.0, 0.0])
def test_extreme_marks_are_refused_with_a_reason_and_change_nothing(index):
    c = funded()
    c.trade(K[0], 1, K[1], 1, 3, 3, 60_000 * USD)
    before = c.root()
    with pytest.raises(Rejected, match="outside"):
        c.mark("BTC", index, VOLS | {6: 0.6}, 2, T0 + 60, O[:2])
    with pytest.raises(Rejected, match="outside"):
        c.mark("BTC", 60_000.0, {1: index, 2: 0.5, 6: 0.5}, 2, T0 + 60, O[:2])
    assert c.root() == before and c.marks["BTC"].sequence == 1
    app, parent = app_on(c)
    verdict = validate(app, parent, [mark_tx("BTC", index, 2, T0 + 60, VOLS | {6: 0.6})])
    assert not verdict.ok and "outside" in verdict.reason


def test_marks_name_a_listed_underlying_and_only_its_options():
    c = funded()
    with pytest.raises(Rejected, match="no listed series has the underlying 'DOGE'"):
        c.mark("DOGE", 1.0, {}, 2, T0 + 60, O[:2])
    with pytest.raises(Rejected, match="vol for series 4, not an option on BTC"):
        c.mark("BTC", 60_000.0, VOLS | {6: 0.6, 4: 0.5}, 2, T0 + 60, O[:2])


# 10. Software-only and accelerated validation reach the same state ---------------------------------

def test_software_only_and_accelerated_ledgers_agree_through_liquidations():
    rng_seed = 11
    roots = {}
    for software in (False, True):
        rng = np.random.default_rng(rng_seed)
        c = funded(cash=(2_000_000, 50_000, 80_000, 1_000_000), software=software)
        seq, ts, index = 1, T0, 60_000.0
        for step in range(150):
            try:
                if rng.random() < 0.7:
                    b, s = (int(x) for x in rng.choice(4, 2, replace=False))
                    series = int(rng.choice([1, 2, 3, 5]))
                    size = int(rng.integers(1, 4)) * (10_000 if series == 5 else 1)
                    price = 60_000 * USD if series in (3, 5) else int(rng.integers(500, 5_000)) * USD
                    if series == 5:
                        size, price = size, int(index) * USD
                    c.trade(K[b], c.accounts[K[b]].nonce, K[s], c.accounts[K[s]].nonce, series, size, price)
                else:
                    seq, ts, index = seq + 1, ts + 600, index * float(rng.choice([0.7, 0.95, 1.05, 1.4]))
                    c.mark("BTC", index, {1: float(rng.uniform(0.3, 1.5)), 2: float(rng.uniform(0.3, 1.5)), 6: 0.8},
                           seq, ts, O[:2])
            except Rejected:
                pass
            roots.setdefault(software, []).append(c.root())
        assert c.violations() == []
    assert roots[True] == roots[False] and len(set(roots[False])) > 40


# circuit breakers ------------------------------------------------------------------------------

def test_a_jump_beyond_the_band_makes_the_underlying_reduce_only_until_a_mark_is_back_in_band():
    c = funded(breakers=Breakers(band=0.2, window=2))
    c.trade(K[0], 1, K[1], 1, 3, 2, 60_000 * USD)
    c.begin_block()
    c.mark("BTC", 75_000.0, VOLS | {6: 0.6}, 2, T0 + 60, O[:2])  # +25% within 2 blocks
    assert "BTC" in c.halted
    with pytest.raises(Rejected, match="reduce-only"):
        c.trade(K[2], 1, K[3], 1, 3, 1, 75_000 * USD)  # opens new positions
    with pytest.raises(Rejected, match="reduce-only"):
        c.trade(K[0], 2, K[1], 2, 3, 1, 75_000 * USD)  # grows both
    c.trade(K[1], 2, K[0], 2, 3, 1, 75_000 * USD)  # shrinks both
    assert c.accounts[K[0]].positions == {3: 1}
    c.trade(K[2], 1, K[3], 1, 4, 1, 3_000 * USD)  # ETH is not halted
    for _ in range(3):
        c.begin_block()
    c.mark("BTC", 76_000.0, VOLS | {6: 0.6}, 3, T0 + 120, O[:2])  # the jump left the window
    assert "BTC" not in c.halted
    c.trade(K[2], 2, K[3], 2, 3, 1, 76_000 * USD)


def test_a_fund_below_its_floor_makes_its_asset_reduce_only():
    c = funded(breakers=Breakers(fund_floor={"USD": 2_000_000 * USD}))
    with pytest.raises(Rejected, match="insurance fund .* below its floor"):
        c.trade(K[0], 1, K[1], 1, 3, 1, 60_000 * USD)
    # coin-settled series are margined against the BTC fund, which has no floor here
    c.deposit(K[0], 1, "BTC", 10**8)
    c.deposit(K[1], 1, "BTC", 10**8)
    c.trade(K[0], 2, K[1], 2, 5, 10_000, 60_000 * USD)


def test_breakers_validate_their_settings():
    with pytest.raises(ValueError, match="band"):
        Breakers(band=0)
    with pytest.raises(ValueError, match="fund_floor"):
        Breakers(fund_floor={"USD": -1})


def test_every_refusal_leaves_the_state_as_it_was():
    """A refused transaction changes nothing (the proposer relies on it to skip one and go on)."""
    c = funded(cash=(1_000_000, 10_000))
    before = c.root()
    for attempt in (lambda: c.trade(K[0], 1, K[1], 1, 2, 10_000, USD),
                    lambda: c.withdraw(K[1], 1, "USD", 10**7 * USD),
                    lambda: c.trade(K[0], 1, K[1], 1, 99, 1, USD),
                    lambda: c.deposit(K[0], 1, "USD", 10**19),
                    lambda: c.mark("BTC", 60_000.0, {}, 2, T0 + 1, O[:2])):
        with pytest.raises(Rejected):
            attempt()
        assert c.root() == before
    assert isinstance(ShortBooks([K[0]], "x"), Rejected) and Liquidation._fields[2:] == ("insurance", "socialized")


def test_a_proposal_that_keeps_finding_short_accounts_ends_with_what_no_margin_check_refuses(monkeypatch):
    """When the fills of MAX_PASSES and the one that also holds back trading partners all find
    short accounts, the proposer keeps registrations, deposits and marks only: a valid block
    whatever the mempool holds. (Accounts that keep coming back short are simulated: the end of
    block names K0 and K3 whenever they signed something kept.)"""
    from consensus.apps import clearing_app
    c = funded()
    app, parent = app_on(c)
    items = [trade_tx(c, 0, 1, 3, 1, 60_000 * USD), signed(ctx.deposit(K[2], 1, "USD", USD), USERS[2]),
             signed(ctx.withdraw(K[3], 1, "USD", USD), USERS[3]), mark_tx("BTC", 61_000.0, 2, T0 + 60, VOLS | {6: 0.6})]
    assert not any(app.submit_many(items))
    monkeypatch.setattr(clearing_app, "MAX_PASSES", 0)
    monkeypatch.setattr(Clearing, "end_of_block", lambda self: [K[0], K[3]])
    txs, state = app.propose(parent, set())
    monkeypatch.undo()
    assert bodies(txs) == [items[1][0], items[3][0]] and validate(app, parent, [items[1], items[3]]).ok
    assert sorted(app.refused.values()) == [f"left account {k.hex()[:16]} below initial margin" for k in sorted([K[0], K[3]])]
