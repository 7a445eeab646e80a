"""Review s16 (value extraction), closed in s17 by the margin's gaps (docs/RISK.md, "Gaps between
the moves"): the margin kernel reprices a book at index moves 4% apart, and a book long near-expiry
options and hedged with futures loses most between two of them. Account A long 3,000 calls struck
2% above the index ten minutes before expiry (worth about 0) and short 100 futures (6M USD of
notional) margined as nearly flat: at +4% the calls pay for the futures' loss, at 0% nothing moves.
It opened for under one USD; an honest mark 0.5-2% up at the expiry made the fund pay 30,000-120,000
USD, the pair's other account W gaining it. Now each gap between adjacent moves is margined by a
bound of the loss anywhere inside it, so the pair must post what the move costs. The mirror (long
puts struck below, long futures) and marks in every gap of the grid are tried too."""
import pytest
from nacl.signing import SigningKey

from accel.risk import CALL, FUTURE, PUT
from consensus.apps.clearing import Clearing, Series

USD = 10**8
T0 = 1_800_000_000
EXPIRY = T0 + 10 * 86_400
ORACLES = [bytes(SigningKey(bytes([170 + i]) * 32).verify_key) for i in range(3)]
A, W = (bytes(SigningKey(bytes([i]) * 32).verify_key) for i in (231, 232))


def open_hedge(kind, strike, a_short_futures):
    """The pair's hedge opened at exactly the margin a probe asks of each account: the clearing
    state and A's deposit."""
    c = Clearing(ORACLES, quorum=2, backend="cpu", insurance={"USD": 10**7 * USD})
    c.list_series(Series(1, "BTC", kind, strike, EXPIRY))
    c.list_series(Series(3, "BTC", FUTURE, 0.0, EXPIRY + 90 * 86_400))
    c.mark("BTC", 60_000.0, {1: 0.7}, 1, EXPIRY - 600, ORACLES[:2])
    c.register(A)
    c.register(W)
    v = c.marks["BTC"].values
    probe = c.snapshot()
    big = 10**9 * USD
    probe.deposit(A, 0, "USD", big)
    probe.deposit(W, 0, "USD", big)
    probe.trade(A, 1, W, 1, 1, 3_000, v[1])
    futures = (W, 2, A, 2) if a_short_futures else (A, 2, W, 2)
    probe.trade(*futures, 3, 100, v[3])
    (ea, ew), m = probe.equity([A, W]), probe.margins([A, W], {"USD"})["USD"][0]
    need = {A: max(int(m[0]) - (ea["USD"] - big), 1), W: max(int(m[1]) - (ew["USD"] - big), 1)}
    c.defer = True
    c.begin_block()
    c.deposit(A, 0, "USD", need[A])
    c.deposit(W, 0, "USD", need[W])
    c.trade(A, 1, W, 1, 1, 3_000, v[1])
    c.trade(*futures, 3, 100, v[3])
    assert c.end_of_block() == []
    return c, need[A]


@pytest.mark.parametrize("move", [0.005, 0.01, 0.02, 0.03, 0.05, 0.06, 0.07, 0.1, 0.14, -0.01])
@pytest.mark.parametrize("kind,offset", [(CALL, 0.02), (CALL, 0.06), (PUT, -0.02)], ids=["call2", "call6", "put2"])
def test_a_futures_hedge_of_near_expiry_options_does_not_take_the_fund_between_grid_moves(kind, offset, move):
    """Long calls struck above the index and short futures (or long puts struck below and long
    futures), marked at the expiry anywhere in the grid: the fund never pays."""
    c, _ = open_hedge(kind, 60_000.0 * (1 + offset), a_short_futures=kind == CALL)
    fund = c.funds["USD"]
    c.begin_block()
    c.mark("BTC", 60_000.0 * (1 + move if kind == CALL else 1 - move), {}, 2, EXPIRY, ORACLES[:2])
    c.end_of_block()
    assert c.funds["USD"] == fund


def test_the_hedge_now_posts_what_the_move_to_the_strike_costs():
    """Opening the s16 book takes at least the futures' loss at the calls' strike (120,000 USD at
    +2%), where it used to take under one USD."""
    _, deposit = open_hedge(CALL, 61_200.0, a_short_futures=True)
    assert deposit >= 120_000 * USD
