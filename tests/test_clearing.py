"""The clearing state machine's rules (issue 9, first part), one test each, and its determinism
across backends."""
import hashlib
import random

import numpy as np
import pytest
from nacl.signing import SigningKey

from accel.risk import CALL, FUTURE, PUT
from consensus.apps.clearing import QUANTUM, Clearing, Liquidation, Rejected, Series

T0 = 1_800_000_000
USD = int(round(1 / QUANTUM))
ORACLES = [bytes(SigningKey(bytes([50 + i]) * 32).verify_key) for i in range(3)]


def key(i: int) -> bytes:
    return bytes(SigningKey(bytes([i + 1]) * 32).verify_key)


BTC = 10**8  # quanta per coin
DAY = 24 * 3600
INVERSE = (Series(11, "BTC", CALL, 60_000.0, T0 + 30 * DAY, inverse=True),
           Series(12, "BTC", FUTURE, 0.0, T0 + 90 * DAY, inverse=True),
           Series(13, "BTC", CALL, 65_000.0, T0 + 3600, inverse=True),
           Series(14, "BTC", FUTURE, 0.0, T0 + 3600, inverse=True))
VOLS = {1: 0.6, 2: 0.65, 4: 0.7}
INVERSE_VOLS = VOLS | {11: 0.6, 13: 0.7}


def market(backend="cpu", accounts=3, cash=1_000_000, coin=None):
    """Linear BTC series 1-4 and `accounts` accounts with `cash` USD each; with coin (BTC per
    account) the inverse series 11-14 too, and a BTC insurance fund of 10 BTC."""
    c = Clearing(ORACLES, quorum=2, backend=backend,
                 insurance=1_000_000 * USD if coin is None else {"USD": 1_000_000 * USD, "BTC": 10 * BTC})
    for s in (Series(1, "BTC", CALL, 60_000.0, T0 + 30 * DAY), Series(2, "BTC", PUT, 55_000.0, T0 + 30 * DAY),
              Series(3, "BTC", FUTURE, 0.0, T0 + 90 * DAY), Series(4, "BTC", CALL, 65_000.0, T0 + 3600)):
        c.list_series(s)
    for s in INVERSE if coin is not None else ():
        c.list_series(s)
    for i in range(accounts):
        c.register(key(i))
        c.deposit(key(i), 0, "USD", cash * USD)
        if coin:
            c.deposit(key(i), 1, "BTC", int(coin * BTC))
    c.mark("BTC", 60_000.0, VOLS if coin is None else INVERSE_VOLS, 1, T0, ORACLES[:2])
    return c


def test_unsafe_keys_are_refused_at_registration():
    c = Clearing(ORACLES, 2, backend="cpu")
    with pytest.raises(Rejected, match="unsafe"):
        c.register(bytes([1] + [0] * 31))  # the identity point: anyone can sign for it under ZIP-215
    c.register(key(0))
    with pytest.raises(Rejected, match="already registered"):
        c.register(key(0))


def test_replayed_nonce_is_refused():
    c = market()
    with pytest.raises(Rejected, match="nonce 0, expected 1"):
        c.deposit(key(0), 0, "USD", USD)
    c.deposit(key(0), 1, "USD", USD)
    with pytest.raises(Rejected, match="replayed"):
        c.withdraw(key(0), 1, "USD", USD)


def test_withdrawal_beyond_free_collateral_is_refused():
    c = market()
    c.trade(key(0), 1, key(1), 1, 1, 5, 4_000 * USD)  # key(1) sells 5 calls: margin held against it
    seller_cash = c.accounts[key(1)].collateral["USD"]
    with pytest.raises(Rejected, match="exceeds the free collateral"):
        c.withdraw(key(1), 2, "USD", seller_cash)
    before = c.root()
    c.withdraw(key(1), 2, "USD", 10 * USD)
    assert c.accounts[key(1)].collateral["USD"] == seller_cash - 10 * USD and c.root() != before


def test_under_margined_trade_is_refused_and_changes_nothing():
    c = market(cash=10_000)
    before = c.root()
    with pytest.raises(Rejected, match="below initial margin"):
        c.trade(key(0), 1, key(1), 1, 1, 1, 4_000 * USD)  # a short call needs about 76,000 USD here
    assert c.root() == before and c.accounts[key(0)].nonce == 1
    c.deposit(key(1), 1, "USD", 200_000 * USD)
    c.trade(key(0), 1, key(1), 2, 1, 1, 4_000 * USD)
    assert c.accounts[key(0)].positions == {1: 1} and c.accounts[key(1)].positions == {1: -1}


@pytest.mark.parametrize("signers,seq,ts,match", [
    (ORACLES[:1], 2, T0 + 60, "signed by 1 oracle"),
    ([key(7), key(8)], 2, T0 + 60, "signed by 0 oracle"),
    (ORACLES[:2], 1, T0 + 60, "stale or out of order"),
    (ORACLES[:2], 2, T0, "stale or out of order"),
    (ORACLES, 3, T0 - 5, "stale or out of order"),
])
def test_bad_marks_are_refused(signers, seq, ts, match):
    c = market()
    with pytest.raises(Rejected, match=match):
        c.mark("BTC", 61_000.0, {1: 0.6, 2: 0.6, 4: 0.6}, seq, ts, signers)
    with pytest.raises(Rejected, match="does not verify"):
        c.mark("BTC", 61_000.0, {1: 0.6, 2: 0.6, 4: 0.6}, 9, T0 + 99, ORACLES, signatures_valid=False)
    c.mark("BTC", 61_000.0, {1: 0.6, 2: 0.6, 4: 0.6}, 2, T0 + 60, ORACLES[1:])


def test_liquidation_after_a_shock_charges_the_insurance_fund():
    """The wiped-out short future is closed at the mark against the only long (auto-deleveraging),
    who keeps its profit; the loss beyond the short's collateral comes out of the fund."""
    c = market(cash=80_000)
    c.trade(key(0), 1, key(1), 1, 3, 1, 60_000 * USD)  # key(1) short a future at 60,000 on 80,000 USD
    assert not c.liquidations
    fund = c.insurance
    c.mark("BTC", 150_000.0, {1: 1.2, 2: 1.2, 4: 1.2}, 2, T0 + 60, ORACLES[:2])  # +150%: the short is wiped out
    loss_beyond = (150_000 - 60_000) * USD - 80_000 * USD
    assert c.liquidations == [Liquidation(key(1), "USD", loss_beyond, 0)]
    assert c.accounts[key(1)].positions == {} and c.accounts[key(1)].collateral == {}
    assert c.insurance == fund - loss_beyond and c.funds["USD"] == c.insurance
    assert c.accounts[key(0)].positions == {}  # deleveraged at the mark: its gain is cash now
    assert c.accounts[key(0)].collateral["USD"] == (80_000 + 150_000 - 60_000) * USD
    assert c.violations() == []


def test_expiry_settlement_pays_intrinsic_value():
    """The first mark at or after expiry fixes the settlement value and settles every holder;
    the series closes for trading."""
    c = market()
    c.trade(key(0), 1, key(1), 1, 4, 3, 500 * USD)  # the one-hour 65,000 call
    c.mark("BTC", 70_000.0, {1: 0.6, 2: 0.6, 4: 0.6}, 2, T0 + 3599, ORACLES[:2])  # a second before expiry
    assert 4 not in c.fixings and c.accounts[key(0)].positions == {4: 3}
    cash = (c.accounts[key(0)].collateral["USD"], c.accounts[key(1)].collateral["USD"])
    c.mark("BTC", 66_000.0, {1: 0.6, 2: 0.6}, 3, T0 + 3600, ORACLES[:2])  # the expired series needs no vol
    assert c.fixings[4] == 1_000 * USD
    assert c.accounts[key(0)].collateral["USD"] - cash[0] == 3 * 1_000 * USD
    assert c.accounts[key(1)].collateral["USD"] - cash[1] == -3 * 1_000 * USD
    assert 4 not in c.accounts[key(0)].positions and 4 not in c.accounts[key(1)].positions
    c.mark("BTC", 90_000.0, {1: 0.6, 2: 0.6}, 4, T0 + 3700, ORACLES[:2])  # later marks change nothing
    assert c.fixings[4] == 1_000 * USD
    with pytest.raises(Rejected, match="not open"):
        c.trade(key(0), 2, key(1), 2, 4, 1, USD)


# ---- assets, inverse series, margin per asset ----------------------------------------------------

def test_an_inverse_trade_pays_and_is_margined_in_coin():
    """An inverse call's premium moves BTC and its margin is in BTC (one portfolio_margin call with
    the INVERSE flag); the USD balances and the USD book are untouched. An inverse future sized in
    USD notional pays size / F coin to its buyer, and its P&L is N (1/F0 - 1/F1) BTC."""
    import accel
    from accel.risk import INVERSE as FLAG, MarginParams, Marks, Portfolio
    c = market(coin=5)
    premium = 1_000_000  # 0.01 BTC per contract
    c.trade(key(0), 2, key(1), 2, 11, 2, premium)
    assert c.accounts[key(0)].collateral == {"USD": 1_000_000 * USD, "BTC": 5 * BTC - 2 * premium}
    assert c.accounts[key(1)].collateral == {"USD": 1_000_000 * USD, "BTC": 5 * BTC + 2 * premium}
    margin = c.margins([key(0), key(1), key(2)])
    assert set(margin) == {"BTC"} and margin["BTC"][0][2] == 0 and margin["BTC"][0][1] > margin["BTC"][1][1] > 0
    # the same figure as accel.portfolio_margin of the coin book alone
    s = c.series[11]
    marks = Marks(index=60_000.0, rate=0.0, forward=np.array([60_000.0]), strike=np.array([s.strike]),
                  expiry=np.array([30 / 365]), vol=np.array([0.6]), kind=np.array([CALL | FLAG], np.uint8))
    direct = accel.portfolio_margin(Portfolio(np.array([0, 1]), np.array([0]), np.array([-2.0])), marks,
                                    MarginParams(tick=QUANTUM), backend="cpu")
    assert margin["BTC"][0][1] == direct.initial[0] + 2  # (and a quantum a contract: the rounding of its value)
    linear = accel.portfolio_margin(Portfolio(np.array([0, 1]), np.array([0]), np.array([-2.0])),
                                    Marks(**{**marks.__dict__, "kind": np.array([CALL], np.uint8)}),
                                    MarginParams(tick=QUANTUM), backend="cpu")
    assert 0.5 < margin["BTC"][0][1] * 60_000 / linear.initial[0] < 2  # about the USD margin / index
    (e0, e1, _) = c.equity([key(0), key(1), key(2)])
    value = c.values([11])[11]  # quanta per contract
    assert e1["BTC"] == 5 * BTC + 2 * premium - 2 * value and e1["USD"] == 1_000_000 * USD
    # an inverse future: 60,000 USD of notional at 60,000: the buyer receives 1 BTC
    c.trade(key(2), 2, key(1), 3, 12, 60_000, 60_000 * USD)
    assert c.accounts[key(2)].collateral["BTC"] == 6 * BTC and c.accounts[key(1)].collateral["BTC"] == 4 * BTC + 2 * premium
    before = c.equity([key(2)])[0]["BTC"]
    c.mark("BTC", 66_000.0, INVERSE_VOLS, 2, T0 + 60, ORACLES[:2])
    gain = c.equity([key(2)])[0]["BTC"] - before
    # one USD of notional valued in whole quanta at each mark (-1667, then -1515), times the size
    assert gain == 60_000 * (round(-1 / 66_000 / QUANTUM) - round(-1 / 60_000 / QUANTUM))
    assert abs(gain - 60_000 * (1 / 60_000 - 1 / 66_000) * BTC) <= 60_000


def test_a_usd_only_account_cannot_trade_an_inverse_series_without_coin():
    c = market(coin=5)
    c.register(key(5))
    c.deposit(key(5), 0, "USD", 10_000_000 * USD)  # plenty of USD, no BTC
    before = c.root()
    with pytest.raises(Rejected, match="below initial margin in BTC"):
        c.trade(key(0), 2, key(5), 1, 11, 1, 1_000_000)  # selling an inverse call
    with pytest.raises(Rejected, match="below initial margin in BTC"):
        c.trade(key(5), 1, key(0), 2, 11, 1, 1_000_000)  # buying one: the premium is in BTC
    with pytest.raises(Rejected, match="below initial margin in BTC"):
        c.trade(key(5), 1, key(0), 2, 12, 10_000, 60_000 * USD)  # an inverse future
    assert c.root() == before and c.accounts[key(5)].nonce == 1
    c.trade(key(5), 1, key(0), 2, 1, 1, 4_000 * USD)  # a linear call is fine
    c.deposit(key(5), 2, "BTC", BTC)
    c.trade(key(0), 3, key(5), 3, 11, 1, 1_000_000)
    assert c.accounts[key(5)].positions == {1: 1, 11: -1}


def test_withdrawal_is_limited_by_the_free_collateral_of_its_asset():
    c = market(coin=2)
    c.trade(key(0), 2, key(1), 2, 11, 5, 1_000_000)  # key(1) short 5 inverse calls: BTC margin held
    btc = c.accounts[key(1)].collateral["BTC"]
    (equity,), margin = c.equity([key(1)]), c.margins([key(1)])
    free = min(btc, equity["BTC"] - int(margin["BTC"][0][0]))
    assert 0 < free < btc
    with pytest.raises(Rejected, match=f"withdrawal of {free + 1} quanta of BTC exceeds the free collateral, {free} quanta"):
        c.withdraw(key(1), 3, "BTC", free + 1)
    c.withdraw(key(1), 3, "USD", 1_000_000 * USD)  # the USD book holds no position: all of it is free
    assert "USD" not in c.accounts[key(1)].collateral
    with pytest.raises(Rejected, match="exceeds the free collateral, 0 quanta"):
        c.withdraw(key(1), 4, "USD", 1)
    c.withdraw(key(1), 4, "BTC", free)
    assert c.accounts[key(1)].collateral == {"BTC": btc - free}
    # deferred (in a block): at most the cash now, the margin at the block's end
    c.defer = True
    with pytest.raises(Rejected, match="exceeds the cash"):
        c.withdraw(key(0), 3, "BTC", 3 * BTC)
    c.withdraw(key(0), 3, "BTC", c.accounts[key(0)].collateral["BTC"])  # the long calls' BTC book: short
    c.withdraw(key(2), 2, "USD", 1_000 * USD)
    assert c.touched == {(key(0), "BTC"), (key(2), "USD")} and c.end_of_block() == [key(0)]


def test_liquidation_of_an_inverse_book_charges_the_coin_insurance_fund():
    """A long inverse future on 1 BTC of collateral: BTC falls from 60,000 to 20,000, the BTC book is
    closed at the mark, the BTC loss beyond its collateral charged to the BTC fund; the account's
    USD book (a linear future, well collateralised) is left alone, so is the USD fund."""
    c = market(coin=1)
    c.trade(key(1), 2, key(0), 2, 12, 60_000, 60_000 * USD)  # key(1) long 60,000 USD of notional: +1 BTC
    c.trade(key(1), 3, key(2), 2, 3, 1, 60_000 * USD)  # and long one linear future
    assert c.accounts[key(1)].collateral == {"USD": 940_000 * USD, "BTC": 2 * BTC}
    funds = dict(c.funds)
    c.mark("BTC", 20_000.0, INVERSE_VOLS, 2, T0 + 60, ORACLES[:2])
    # BTC equity: 2 BTC - 60,000 / 20,000 BTC = -1 BTC
    assert c.liquidations == [Liquidation(key(1), "BTC", BTC, 0)]
    assert c.funds == {**funds, "BTC": funds["BTC"] - BTC} and c.insurance == funds["USD"]
    assert c.accounts[key(1)].positions == {3: 1} and c.accounts[key(1)].collateral == {"USD": 940_000 * USD}
    assert c.accounts[key(0)].positions == {}  # the winner is deleveraged: its profit is cash
    assert c.globals_leaves()[:2] == [b"insurance" + b"BTC".ljust(8, b"\0") + (9 * BTC).to_bytes(16, "big", signed=True),
                                      b"insurance" + b"USD".ljust(8, b"\0") + funds["USD"].to_bytes(16, "big", signed=True)]
    assert c.violations() == []


def test_settlement_of_inverse_series_pays_coin():
    """At expiry an inverse call pays (index - strike) / index BTC per contract and an inverse
    future -1/index BTC per USD of notional (with the 1/F0 received at the trade: N (1/F0 - 1/F1))."""
    c = market(coin=5)
    c.trade(key(0), 2, key(1), 2, 13, 3, 500_000)  # the one-hour 65,000 inverse call, 0.005 BTC each
    c.trade(key(0), 3, key(1), 3, 14, 66_000, 60_000 * USD)  # the one-hour inverse future, 66,000 USD
    btc = (c.accounts[key(0)].collateral["BTC"], c.accounts[key(1)].collateral["BTC"])
    assert btc == (5 * BTC - 3 * 500_000 + 11 * BTC // 10, 5 * BTC + 3 * 500_000 - 11 * BTC // 10)
    c.mark("BTC", 66_000.0, {1: 0.6, 2: 0.6, 11: 0.6}, 2, T0 + 3600, ORACLES[:2])
    call = 3 * round(1_000 / 66_000 / QUANTUM)  # one contract valued in quanta once, times the size
    future = 66_000 * round(-1 / 66_000 / QUANTUM)  # -1515 quanta per USD of notional
    assert c.accounts[key(0)].collateral["BTC"] - btc[0] == call + future
    assert c.accounts[key(1)].collateral["BTC"] - btc[1] == -call - future
    assert c.accounts[key(0)].collateral["USD"] == c.accounts[key(1)].collateral["USD"] == 1_000_000 * USD
    assert c.accounts[key(0)].positions == {} and {13, 14} <= set(c.fixings)


def test_deposits_name_a_known_asset():
    c = market(coin=1)
    with pytest.raises(Rejected, match="unknown asset 'ETH'"):
        c.deposit(key(0), 2, "ETH", USD)
    with pytest.raises(Rejected, match="unknown asset 'DOGE'"):
        c.withdraw(key(0), 2, "DOGE", 1)
    assert c.accounts[key(0)].nonce == 2 and c.assets == {"USD", "BTC"}
    c.deposit(key(0), 2, "BTC", 7)
    assert c.accounts[key(0)].collateral["BTC"] == BTC + 7
    linear_only = market()
    with pytest.raises(Rejected, match="unknown asset 'BTC'"):
        linear_only.deposit(key(0), 1, "BTC", BTC)
    named = Clearing(ORACLES, 2, backend="cpu", assets=("USD", "ETH"))
    assert named.assets == {"USD", "ETH"} and named.funds == {"USD": 0, "ETH": 0}
    from consensus.apps import clearing_tx as ctx
    with pytest.raises(ValueError, match="1 to 8 ASCII letters or digits"):
        ctx.deposit(key(0), 0, "BITCOINZZ", 1)
    tx = ctx.decode(ctx.withdraw(key(0), 4, "BTC", 9))
    assert tx.op == ctx.WITHDRAW and tx.fields == (key(0), 4, "BTC", 9) and tx.signers == (key(0),)


def test_leaves_commit_to_every_asset_balance_in_a_canonical_order():
    a, b = market(coin=1), market(coin=1)
    assert a.leaves() == b.leaves()
    b.accounts[key(0)].collateral = dict(reversed(list(b.accounts[key(0)].collateral.items())))
    b.funds = dict(reversed(list(b.funds.items())))
    assert a.leaves() == b.leaves() and a.globals_leaves() == b.globals_leaves()  # insertion order does not matter
    a.deposit(key(0), 2, "BTC", 1)
    assert a.root() != b.root()
    leaf = a.leaves()[a.accounts[key(0)].slot]
    assert leaf[:41] == key(0) + (3).to_bytes(8, "big") + bytes([2])
    assert leaf[41:89] == (b"BTC".ljust(8, b"\0") + (BTC + 1).to_bytes(16, "big", signed=True)
                           + b"USD".ljust(8, b"\0") + (1_000_000 * USD).to_bytes(16, "big", signed=True))


def _random_stream(c, rng, steps):
    """Trades of linear and inverse series (options and futures), marks (shocks: liquidations of
    USD and BTC books) and withdrawals of USD and BTC."""
    roots = []
    seq, ts = 1, T0
    for _ in range(steps):
        op = rng.random()
        try:
            if op < 0.6:
                a, b = rng.sample(range(6), 2)
                series = rng.choice([1, 2, 3, 11, 12])
                size, price = rng.randint(1, 3), rng.randint(100, 5_000) * USD
                if series == 11:
                    price = rng.randint(160_000, 8_300_000)  # BTC quanta
                elif series == 12:
                    size, price = size * 10_000, rng.randint(50_000, 70_000) * USD  # USD notional, USD price
                c.trade(key(a), c.accounts[key(a)].nonce, key(b), c.accounts[key(b)].nonce, series, size, price)
            elif op < 0.8:
                seq, ts = seq + 1, ts + rng.randint(1, 600)
                c.mark("BTC", 60_000.0 * (1 + rng.uniform(-0.2, 0.2)), {i: rng.uniform(0.3, 1.5) for i in (1, 2, 4, 11, 13)},
                       seq, ts, ORACLES[:2])
            else:
                a = rng.randrange(6)
                asset, amount = rng.choice([("USD", rng.randint(1, 20_000) * USD), ("BTC", rng.randint(1, 30) * BTC // 10)])
                c.withdraw(key(a), c.accounts[key(a)].nonce, asset, amount)
        except Rejected:
            pass
        roots.append(c.root())
    return roots


def test_state_roots_are_identical_on_every_backend(backends):
    """One random stream of trades (linear and inverse), marks (shocks, liquidations) and
    withdrawals, applied on each backend and on the C fallback with 1 and 2 threads: the same
    state root after every step."""
    from accel.backends.cpu import CpuBackend
    runs = {}
    for b in list(backends) + [CpuBackend(1), CpuBackend(2)]:
        c = market(backend=b, accounts=6, cash=150_000, coin=3)
        runs[f"{b.name}/{getattr(b, 'threads', '')}"] = _random_stream(c, random.Random(9), 200)
    first = next(iter(runs.values()))
    assert len(set(first)) > 50  # the stream did change the state
    for name, roots in runs.items():
        assert roots == first, name
    c = market(backend="cpu", accounts=6, cash=150_000, coin=3)
    _random_stream(c, random.Random(9), 200)
    assert any(a.positions for a in c.accounts.values())
    assert any(s.inverse for a in c.accounts.values() for i in a.positions for s in (c.series[i],))
    assert {x.asset for x in c.liquidations} == {"USD", "BTC"}  # both kinds of book were liquidated
    assert c.violations() == []


# ---- the wire format ---------------------------------------------------------------------------

def test_clearing_transactions_decode_sign_and_apply():
    """Every operation through its body, a block's signature batch with two signers per trade and
    three per mark (one accel.ed25519_verify_all call), then applied to the state."""
    import accel
    from accel import Packed
    from accel.packing import pack_fixed, pack_messages
    from consensus.apps import clearing_tx as ctx
    users = [SigningKey(bytes([i + 1]) * 32) for i in range(2)]
    oracles = [SigningKey(bytes([50 + i]) * 32) for i in range(3)]
    u = [bytes(k.verify_key) for k in users]
    o = [bytes(k.verify_key) for k in oracles]
    signed = [(ctx.register(u[0]), [users[0]]), (ctx.register(u[1]), [users[1]]),
              (ctx.deposit(u[0], 0, "USD", 10**6 * USD), [users[0]]), (ctx.deposit(u[1], 0, "USD", 10**6 * USD), [users[1]]),
              (ctx.mark("BTC", 60_000.0, 1, T0, {1: 0.6, 2: 0.65, 4: 0.7}, o), oracles),
              (ctx.trade(u[0], 1, u[1], 1, 1, 2, 4_000 * USD), users),
              (ctx.withdraw(u[0], 2, "USD", 10 * USD), [users[0]]),
              (ctx.mark("BTC", 66_000.0, 2, T0 + 3600, {1: 0.6, 2: 0.6}, o[:2]), oracles[:2])]
    bodies = Packed(*pack_messages([b for b, _ in signed]))
    sigs = pack_fixed([k.sign(b).signature for b, keys in signed for k in keys], 64, "signature")
    txs = ctx.decode_all(bodies)
    keys, messages, rows = ctx.signature_batch(bodies, txs, ctx.signer_counts(txs, sigs))
    assert (rows == np.arange(len(sigs))).all()
    assert len(sigs) == 1 + 1 + 1 + 1 + 3 + 2 + 1 + 2 and [t.op for t in txs] == [1, 1, 2, 2, 5, 4, 3, 5]
    assert accel.ed25519_verify_all(keys, messages, sigs, backend="cpu")
    tampered = sigs.copy()
    tampered[8, 3] ^= 1  # the seller's signature on the trade
    assert not accel.ed25519_verify_all(keys, messages, tampered, backend="cpu")
    c = Clearing(ORACLES, quorum=2, backend="cpu")
    for s in (Series(1, "BTC", CALL, 60_000.0, T0 + 30 * 24 * 3600), Series(2, "BTC", PUT, 55_000.0, T0 + 30 * 24 * 3600),
              Series(4, "BTC", CALL, 65_000.0, T0 + 3600)):
        c.list_series(s)
    for tx in txs:
        ctx.apply(c, tx)
    assert c.accounts[u[0]].positions == {1: 2} and 4 in c.fixings
    assert c.accounts[u[1]].nonce == 2 and c.accounts[u[0]].nonce == 3
    with pytest.raises(ctx.Malformed, match="2 signatures for 3 signers"):
        ctx.signer_counts(ctx.decode_all(Packed(*pack_messages([signed[5][0], signed[6][0]]))), sigs[:2])


@pytest.mark.parametrize("body,match", [
    (b"\x00\x00", "shorter"), (b"\x00\x00\x00\x02\x01" + bytes(32), "chain id 2"),
    (b"\x00\x00\x00\x01\x09" + bytes(32), "unknown operation 9"),
    (b"\x00\x00\x00\x01\x02" + bytes(40), "takes 61 bytes"),
    (b"\x00\x00\x00\x01\x02" + bytes(40) + bytes(8) + bytes(8), "asset .* is not 1 to 8 ASCII letters"),
    (b"\x00\x00\x00\x01\x03" + bytes(40) + b"U\0SD\0\0\0\0" + bytes(8), "asset .* is not 1 to 8 ASCII letters"),
    (b"\x00\x00\x00\x01\x02" + bytes(40) + b"\xffUSD\0\0\0\0" + bytes(8), "operation 2"),
    (b"\x00\x00\x00\x01\x05" + bytes(10), "operation 5"),
    (b"\x00\x00\x00\x01\x06" + bytes(44), "operation 6 is retired .*settles by itself"),
    (b"\x00\x00\x00\x01\x05" + b"B C\0\0\0\0\0" + bytes(26) + bytes(1), "underlying .* is not 1 to 8"),
])
def test_malformed_clearing_transactions_say_why(body, match):
    from consensus.apps import clearing_tx as ctx
    with pytest.raises(ctx.Malformed, match=match):
        ctx.decode(body)


# ---- behind the consensus core -----------------------------------------------------------------

def test_clearing_network_commits_every_transaction():
    from consensus.sim import Simulation
    sim = Simulation(n=4, seed=3, app="clearing", txs_per_block=30)
    sim.load(300)
    sim.run(blocks=12)
    chains = sim.chains()
    assert all(c[:12] == chains["v0"][:12] for c in chains.values())
    assert sum(len(b.txs) for b, _, _ in sim.nodes[0].committed) == 300
    stages = [ms for b, _, ms in sim.nodes[1].committed if len(b.txs)]
    assert all(set(ms) == {"signatures", "tx_root", "margin", "execute", "state_root", "total"} for ms in stages)
    assert any(ms["margin"] > 0 for ms in stages)
    state = sim.nodes[2].core.states[sim.nodes[2].core.committed.id].clearing
    assert len(state.accounts) == 16 and any(a.positions for a in state.accounts.values())


def test_a_block_with_a_refused_transaction_is_rejected():
    """The leader slips in a well-signed trade that replays a nonce (fixing up the roots and digest
    it can): honest validators refuse the block, the chain goes on without it."""
    from dataclasses import replace

    from accel import Packed
    from accel.packing import pack_messages
    from consensus.apps import clearing_tx as ctx
    from consensus.apps.clearing_load import ClearingLoad
    from consensus.core import Core
    from consensus.messages import Proposal, Txs, proposal_bytes
    from consensus.sim import Simulation
    load = ClearingLoad(seed=5)
    replay_body = ctx.trade(load.keys[0], 0, load.keys[1], 0, 1, 1, 100 * USD)  # nonce 0 was the deposit's
    replay = (replay_body, [load.users[0].sign(replay_body).signature, load.users[1].sign(replay_body).signature])

    class Leader(Core):
        def _propose(self, view):
            out = super()._propose(view)
            for i, a in enumerate(out):
                if type(a).__name__ == "Broadcast" and len(a.msg.block.txs) == 0 and self.committed.height > 3:
                    b = a.msg.block
                    txs = Txs(Packed(*pack_messages([replay[0]])), np.frombuffer(b"".join(replay[1]), np.uint8).reshape(2, 64))
                    bad = replace(b, txs=txs, tx_root=self.app.tx_root(txs), sig_digest=txs.digest())
                    out[i] = type(a)(Proposal(bad, self.sign(proposal_bytes(bad.id, self.cfg.network))))
            return out
    sim = Simulation(n=4, seed=5, app="clearing", txs_per_block=20,
                     make_core=lambda cfg, sign, app, *rest: (Leader if cfg.me == 1 else Core)(cfg, sign, app, *rest))
    sim._clearing_load = load
    sim.load(60)
    honest = {"v0", "v2", "v3"}
    sim.run(blocks=10, max_ms=200_000, live=lambda node: node.name in honest)
    rejected = [r for x in sim.nodes if x.name in honest for r in x.rejected]
    assert rejected and all("invalid transaction" in r.reason and "nonce" in r.reason for r in rejected)
    assert all(len(x.committed) >= 10 for x in sim.nodes if x.name in honest)


def test_clearing_chain_is_the_same_on_every_backend(backends):
    """Differential determinism: one transaction stream over 200 blocks, the whole network on each
    backend and on the C fallback with 1 and 2 threads: the same blocks, so the same state roots,
    at every height."""
    from accel.backends.cpu import CpuBackend
    from consensus.sim import Simulation
    chains = {}
    for b in list(backends) + [CpuBackend(1), CpuBackend(2)]:
        sim = Simulation(n=4, seed=8, app="clearing", txs_per_block=3, backend=b)
        sim.load(600)
        sim.run(blocks=200, max_ms=3_600_000)
        chains[f"{b.name}/{getattr(b, 'threads', '')}"] = [(blk.height, blk.state_root) for blk, _, _ in sim.nodes[0].committed[:200]]
    first = next(iter(chains.values()))
    assert len(first) == 200 and len({r for _, r in first}) > 150
    for name, chain in chains.items():
        assert chain == first, name


def test_margin_is_checked_at_the_end_of_a_block():
    """A block whose trades leave an account below initial margin is invalid; a proposer holds back
    every transaction of such an account, keeps the rest, and evicts the account's last one."""
    from accel import Packed
    from accel.packing import pack_fixed, pack_messages
    from consensus.apps import clearing_tx as ctx
    from consensus.apps.clearing_app import ClearingApp
    from consensus.apps.clearing_load import ClearingLoad, genesis_market
    from consensus.core import genesis_block
    from consensus.messages import QC, Block, Txs
    from consensus.verify import Verifier
    app = ClearingApp(Verifier("accel", "cpu"), genesis_market("cpu"))
    load = ClearingLoad(seed=2, users=8)  # maker 0 (USD, BTC, ETH), takers 1, 2, 5, 6 USD, 3 and 7 BTC, 4 ETH
    setup = load.take(load.setup_size)  # registrations, deposits, a mark per underlying
    txs0 = Txs(Packed(*pack_messages([b for b, _ in setup])), pack_fixed([x for _, s in setup for x in s], 64, "sig"))
    g = genesis_block(app.genesis.root)
    parent = app.execute(app.genesis, txs0.bodies)
    k, u = load.keys, load.users

    def signed(body):
        return body, [u[k.index(body[5:37])].sign(body).signature, u[k.index(body[45:77])].sign(body).signature]
    n = load.nonces  # after the deposits

    def load_coin(i):
        from consensus.apps.clearing_load import TAKER_COIN
        return TAKER_COIN[load.book[i]]
    fine = signed(ctx.trade(k[0], n[0], k[1], n[1], 1, 2, 4_000 * USD))
    huge = signed(ctx.trade(k[0], n[0] + 1, k[1], n[1] + 1, 1, 5_000, 4_000 * USD))  # 5,000 short calls on 10M USD
    after = signed(ctx.trade(k[2], n[2], k[5], n[5], 2, 1, 2_000 * USD))
    coin = signed(ctx.trade(k[3], n[3], k[7], n[7], 9, 2, 8_000_000))  # inverse BTC calls, 0.08 BTC each
    for body, sigs in (fine, huge, after, coin):
        app.submit(body, sigs)
    txs, state = app.propose(parent, set())
    assert [txs.bodies.item(i) for i in range(len(txs))] == [after[0], coin[0]]
    huge_digest = hashlib.sha256(huge[0]).digest()
    assert "below initial margin" in app.refused[huge_digest] and huge_digest not in app.mempool
    assert len(app.mempool) == 3  # fine waits for the next block
    assert state.clearing.accounts[k[3]].collateral["BTC"] == load_coin(3) - 2 * 8_000_000
    block = Block(2, 2, g.id, 2, app.tx_root(txs), state.root, txs.digest(), txs, QC(g.id, 0, 0))
    assert app.validate(parent, block, ((), (), ())).ok
    bad = Txs(Packed(*pack_messages([fine[0], huge[0]])), pack_fixed(fine[1] + huge[1], 64, "sig"))
    block = Block(2, 2, g.id, 2, app.tx_root(bad), state.root, bad.digest(), bad, QC(g.id, 0, 0))
    verdict = app.validate(parent, block, ((), (), ()))
    assert not verdict.ok and "ends the block below initial margin" in verdict.reason


def _funded_app(sig_cache=True, users=4):
    """A clearing app past its setup block (registrations, deposits, a mark) and the load that
    made it."""
    from accel import Packed
    from accel.packing import pack_messages
    from consensus.apps.clearing_app import ClearingApp
    from consensus.apps.clearing_load import ClearingLoad, genesis_market
    from consensus.verify import Verifier
    app = ClearingApp(Verifier("accel", "cpu"), genesis_market("cpu"), sig_cache=sig_cache)
    load = ClearingLoad(seed=2, users=users)
    setup = load.take(load.setup_size)
    return app, load, app.execute(app.genesis, Packed(*pack_messages([b for b, _ in setup])))


def test_the_mempool_checks_signatures_in_one_batch_and_says_why_it_refuses():
    from consensus.apps import clearing_tx as ctx
    app, load, _ = _funded_app()
    calls = []
    each = app.verifier.verify_each
    app.verifier.verify_each = lambda keys, *rest: calls.append(len(keys)) or each(keys, *rest)
    good = load.take(3)
    forged = (good[0][0][:-1] + bytes([good[0][0][-1] ^ 1]), good[0][1])  # the signatures are over another body
    reasons = app.submit_many(good + [(b"\x00\x00\x00\x01\x09", []), forged, (good[1][0], good[1][1][:1])])
    assert reasons[:3] == ["", "", ""] and len(app.mempool) == 3
    assert reasons[3].startswith("malformed: unknown operation 9")
    assert reasons[4] == "a signature does not verify"
    assert reasons[5].startswith("malformed:") and "need as many 64-byte signatures, got 1" in reasons[5]
    assert calls == [sum(len(s) for _, s in good) + len(forged[1])]  # one batch, the malformed ones left out
    with pytest.raises(ctx.BadSignature, match="does not verify"):
        app.submit(*forged)
    with pytest.raises(ctx.Malformed, match="shorter"):
        app.submit(b"\x00", [])
    assert len(app.mempool) == 3


@pytest.mark.parametrize("sig_cache", [True, False])
def test_validation_skips_only_signatures_the_mempool_verified(sig_cache):
    """With the cache, a block of mempool transactions sends only its certificates' signatures to
    verification; a transaction whose block signatures differ from the verified ones (here: one
    forged) is checked and the block refused. With sig_cache off everything is checked."""
    from accel import Packed
    from accel.packing import pack_fixed, pack_messages
    from consensus.core import genesis_block
    from consensus.messages import QC, Block, Txs
    app, load, parent = _funded_app(sig_cache)
    assert not [r for r in app.submit_many(load.take(40)) if r]
    txs, state = app.propose(parent, set())
    g = genesis_block(app.genesis.root)
    checked = []
    verify_all = app.verifier.verify_all
    app.verifier.verify_all = lambda keys, *rest: checked.append(len(keys)) or verify_all(keys, *rest)
    block = Block(2, 2, g.id, 2, app.tx_root(txs), state.root, txs.digest(), txs, QC(g.id, 0, 0))
    assert len(txs) == 40 and app.validate(parent, block, ((), (), ())).ok
    assert checked == [0 if sig_cache else len(txs.sigs)]
    sigs = txs.sigs.copy()
    sigs[5, 10] ^= 1
    forged = Txs(txs.bodies, sigs)
    block = Block(2, 2, g.id, 2, app.tx_root(forged), state.root, forged.digest(), forged, QC(g.id, 0, 0))
    verdict = app.validate(parent, block, ((), (), ()))
    assert not verdict.ok and "signature does not verify" in verdict.reason
    assert checked[-1] == (2 if sig_cache else len(sigs))  # only the forged trade's (or mark's) two signers


def test_a_gpu_failing_mid_batch_falls_back_and_the_roots_are_the_same(caplog):
    """A backend whose every third kernel launch fails, as a driver error or an out-of-memory
    would: each failed batch is redone on the C fallback and logged, and the chain's state roots
    are those of the C fallback alone."""
    import logging

    from accel import KernelError
    from accel.backends.cpu import CpuBackend
    from consensus.sim import Simulation

    class FailingGpu(CpuBackend):
        name, is_gpu = "failing-gpu", True

        def __init__(self):
            super().__init__(0)
            self.launches = self.failures = 0

        def launch(self, kernel, n, *args, group=None):
            self.launches += 1
            if self.launches % 3 == 0:
                self.failures += 1
                raise KernelError(f"av_{kernel}: simulated CUDA_ERROR_LAUNCH_FAILED")
            return super().launch(kernel, n, *args, group=group)

    roots = {}
    gpu = FailingGpu()
    for name, backend in (("failing", gpu), ("cpu", CpuBackend(0))):
        sim = Simulation(n=4, seed=8, app="clearing", txs_per_block=5, backend=backend)
        sim.load(150)
        with caplog.at_level(logging.WARNING, logger="accel"):
            sim.run(blocks=30, max_ms=600_000)
        roots[name] = [(b.height, b.state_root) for b, _, _ in sim.nodes[0].committed[:30]]
    assert len(roots["cpu"]) == 30 and roots["failing"] == roots["cpu"]
    assert gpu.failures > 10
    redone = [r for r in caplog.records if "redoing the work on the C fallback" in r.getMessage()]
    assert len(redone) == gpu.failures and "failing-gpu" in redone[0].getMessage()


def test_software_only_validation_prices_and_margins_without_accel(monkeypatch):
    """A software-only clearing network (PyNaCl, hashlib, NumPy/SciPy margin) commits the load,
    and none of its validation reaches accel's pricing or margin kernels."""
    import accel
    from consensus.sim import Simulation

    def kernel_called(*args, **kwargs):
        raise AssertionError("software-only validation called an accel kernel")
    monkeypatch.setattr(accel, "greeks", kernel_called)
    monkeypatch.setattr(accel, "portfolio_margin", kernel_called)
    sim = Simulation(n=4, seed=4, app="clearing", txs_per_block=40, validation="software")
    sim.load(400)
    sim.run(blocks=12)
    assert sum(len(b.txs) for b, _, _ in sim.nodes[0].committed) == 400
    state = sim.nodes[1].core.states[sim.nodes[1].core.committed.id].clearing
    assert state.software and any(a.positions for a in state.accounts.values())
    assert any(ms.get("margin", 0) > 0 for _, _, ms in sim.nodes[1].committed)


def test_a_mark_that_accel_refuses_leaves_no_trace():
    """accel refusing a margin (ValueError) mid-mark leaves the previous mark and every account as
    they were, so a proposer can skip the transaction without rebuilding the block's state."""
    c = market()
    c.trade(key(0), 1, key(1), 1, 1, 2, 4_000 * USD)
    before = (c.leaves(), c.marks["BTC"])

    def refuse(*args):
        raise ValueError("account 0: margin does not fit in int64 ticks")
    c._margins = refuse  # where every margin computation calls accel
    with pytest.raises(ValueError, match="does not fit"):
        c.mark("BTC", 1e7, {1: 0.6, 2: 0.65, 4: 0.7}, 2, T0 + 60, ORACLES[:2])
    assert (c.leaves(), c.marks["BTC"]) == before
    with pytest.raises(ValueError, match="does not fit"):
        c.trade(key(0), 2, key(1), 2, 1, 2, 4_000 * USD)
    assert c.leaves() == before[0]


def test_the_mempool_drops_and_refuses_what_a_committed_block_used_up():
    """A transaction reusing a nonce, a registration or a mark sequence that a committed block
    consumed can never apply: the commit drops it from the mempool and a later submit is refused
    with the reason."""
    from consensus.apps import clearing_tx as ctx
    from consensus.core import genesis_block
    from consensus.messages import QC, Block
    from consensus.apps.clearing_app import ClearingApp
    from consensus.apps.clearing_load import ClearingLoad, genesis_market
    from consensus.verify import Verifier
    app = ClearingApp(Verifier("accel", "cpu"), genesis_market("cpu"))
    load = ClearingLoad(seed=2, users=4)
    setup = _txs(load.take(load.setup_size))
    parent = app.execute(app.genesis, setup.bodies)
    app.committed(Block(1, 1, bytes(32), 1, b"", parent.root, setup.digest(), setup, QC(bytes(32), 0, 0)), parent)
    trades = load.take(6)
    k, u = load.keys, load.users
    first = next(ctx.decode(b) for b, _ in trades if ctx.decode(b).op == ctx.TRADE)
    buyer, nonce = first.fields[0], first.fields[1]
    rival_body = ctx.deposit(buyer, nonce, "USD", 5)  # the same nonce as the buyer's first trade
    rival = (rival_body, [u[k.index(buyer)].sign(rival_body).signature])
    assert not [r for r in app.submit_many(trades + [rival]) if r] and len(app.mempool) == 7
    txs, state = app.propose(parent, set())
    g = genesis_block(app.genesis.root)
    app.committed(Block(2, 2, g.id, 2, app.tx_root(txs), state.root, txs.digest(), txs, QC(g.id, 0, 0)), state)
    assert len(txs) == 6 and app.mempool == {}  # the rival was refused, then dropped
    assert app.submit_many([rival])[0].startswith(f"stale: account {buyer.hex()[:16]} nonce {nonce}")
    again = ctx.register(k[0])
    assert app.submit_many([(again, [u[0].sign(again).signature])])[0].endswith("is registered")


def test_the_mempool_refuses_what_a_snapshots_state_used_up():
    """A validator restarted from a snapshot replays none of the blocks before it: what they used
    up is read from the committed state itself, so their nonces, registrations and mark sequences
    are refused as stale all the same."""
    from consensus.apps import clearing_tx as ctx
    from consensus.apps.clearing_app import ClearingApp
    from consensus.apps.clearing_load import ClearingLoad, genesis_market
    from consensus.messages import QC, Block, Txs
    from consensus.verify import Verifier
    load = ClearingLoad(seed=2, users=4)
    setup = _txs(load.take(load.setup_size))
    first = ClearingApp(Verifier("accel", "cpu"), genesis_market("cpu"))
    snapshot = first.execute(first.genesis, setup.bodies)  # as restored at start-up
    app = ClearingApp(Verifier("accel", "cpu"), genesis_market("cpu"))
    app.committed(Block(1, 1, bytes(32), 1, b"", snapshot.root, Txs.empty().digest(), Txs.empty(),
                        QC(bytes(32), 0, 0)), snapshot)
    k, u = load.keys, load.users
    used = snapshot.clearing.accounts[k[0]].nonce - 1
    body = ctx.deposit(k[0], used, "USD", 5)
    assert app.submit_many([(body, [u[0].sign(body).signature])])[0].startswith(f"stale: account {k[0].hex()[:16]}")
    again = ctx.register(k[1])
    assert app.submit_many([(again, [u[1].sign(again).signature])])[0].endswith("is registered")
    body = next(b for b in (setup.bodies.item(i) for i in range(len(setup))) if ctx.decode(b).op == ctx.MARK)
    mark = ctx.decode(body)
    sigs = [bytes(64)] * len(mark.signers)  # staleness is decided before any signature is checked
    assert app.submit_many([(body, sigs)])[0].startswith(f"stale: {mark.fields[0]} mark")


def _txs(items):
    from accel import Packed
    from accel.packing import pack_fixed, pack_messages
    from consensus.messages import Txs
    return Txs(Packed(*pack_messages([b for b, _ in items])), pack_fixed([s for _, sig in items for s in sig], 64, "sig"))


def test_a_stream_file_gives_back_the_signed_load_in_order(tmp_path):
    """localnet's load file: the market's transactions, signed once, read back in order and in
    pieces, then nothing once the stream is over."""
    from consensus.apps.clearing_load import StreamFile, market_load, write_stream
    items = market_load(1, 50, 1).take(300)
    write_stream(tmp_path / "load.bin", items)
    stream = StreamFile(tmp_path / "load.bin")
    assert stream.take(100) + stream.take(150) + stream.take(100) == items
    assert stream.take(5) == []
