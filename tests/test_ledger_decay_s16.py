"""Review s16 (value extraction): a long option's time value counted fully as equity, the premium
could be paid with negative cash, and no margin scenario let time pass. So a straddle bought at
initial margin (0.902 of its premium: the worst scenario, "vol down", at the same time to expiry)
lost all its time value at the expiry mark with the index unchanged: the buyer went bankrupt and
the insurance fund paid the writer, the attacker's other account (2,876 USD for 200 straddles a
mark interval of 600 s before expiry; the whole 20,000 USD fund at 1,400). Opened up to nine mark
intervals early, the straddle passed every maintenance check and still reached the expiry
insolvent. Now a long option's initial and maintenance margin hold what its value loses to time
over the genesis' decay horizon (Clearing.decay_horizon_s, an hour by default: the longest gap
between marks the market expects), its whole time value within the horizon of its expiry."""
import numpy as np
import pytest
from nacl.signing import SigningKey

from accel.risk import CALL, PUT
from consensus.apps.clearing import DECAY_HORIZON_S, Clearing, Rejected, Series

USD = 10**8
T0 = 1_800_000_000
EXPIRY = T0 + 10 * 86_400
ORACLES = [bytes(SigningKey(bytes([170 + i]) * 32).verify_key) for i in range(3)]
A, W = (bytes(SigningKey(bytes([i]) * 32).verify_key) for i in (211, 212))


def market(inverse=False, fund=20_000 * USD, horizon=DECAY_HORIZON_S, software=False):
    asset = "BTC" if inverse else "USD"
    c = Clearing(ORACLES, quorum=2, backend="cpu", insurance={"USD": fund, "BTC": fund // 60_000},
                 decay_horizon_s=horizon)
    c.software = software
    c.list_series(Series(1, "BTC", CALL, 60_000.0, EXPIRY, inverse=inverse))
    c.list_series(Series(2, "BTC", PUT, 60_000.0, EXPIRY, inverse=inverse))
    return c, asset


def at_initial_margin(c: Clearing, asset: str, n: int) -> dict:
    """What A and W must deposit for A to buy n straddles from W at the mark's values, each ending
    exactly at initial margin."""
    v = c.marks["BTC"].values
    probe = c.snapshot()
    big = 10**9 * USD
    probe.deposit(A, 0, asset, big)
    probe.deposit(W, 0, asset, big)
    probe.trade(A, 1, W, 1, 1, n, v[1])
    probe.trade(A, 2, W, 2, 2, n, v[2])
    (ea, ew), m = probe.equity([A, W]), probe.margins([A, W], {asset})[asset][0]
    return {A: max(int(m[0]) - (ea[asset] - big), 1), W: max(int(m[1]) - (ew[asset] - big), 1)}


def open_straddles(c: Clearing, asset: str, n: int, need: dict) -> None:
    v = c.marks["BTC"].values
    c.defer = True
    c.begin_block()
    c.deposit(A, 0, asset, need[A])
    c.deposit(W, 0, asset, need[W])
    c.trade(A, 1, W, 1, 1, n, v[1])
    c.trade(A, 2, W, 2, 2, n, v[2])
    assert c.end_of_block() == []


def marks_until_expiry(c: Clearing, first_seq: int, intervals: int, step: int) -> None:
    seq = first_seq
    for j in range(intervals - 1, -1, -1):
        c.begin_block()
        seq += 1
        c.mark("BTC", 60_000.0, {1: 0.7, 2: 0.7} if j else {}, seq, EXPIRY - j * step, ORACLES[:2])
        assert c.end_of_block() == [] and c.violations() == []


@pytest.mark.parametrize("inverse", [False, True], ids=["linear", "inverse"])
@pytest.mark.parametrize("dt", [60, 600, 3_600])
def test_a_straddle_bought_at_initial_margin_does_not_reach_the_fund_at_expiry(dt, inverse):
    c, asset = market(inverse)
    c.mark("BTC", 60_000.0, {1: 0.7, 2: 0.7}, 1, EXPIRY - dt, ORACLES[:2])
    c.register(A)
    c.register(W)
    need = at_initial_margin(c, asset, 200)
    fund = c.funds[asset]
    open_straddles(c, asset, 200, need)
    marks_until_expiry(c, 1, 1, dt)  # the expiry, the index unchanged
    assert c.funds[asset] == fund
    pair = sum(e.get(asset, 0) for e in c.equity([A, W])) - need[A] - need[W]
    assert pair <= 0
    assert c.accounts[A].collateral.get(asset, 0) >= 0  # (A keeps what it deposited past the premium)


def test_without_the_horizon_the_fund_pays_the_writer():
    """The same market with decay_horizon_s = 0: the defect as it was (the test above is not
    vacuous)."""
    c, asset = market(horizon=0)
    c.mark("BTC", 60_000.0, {1: 0.7, 2: 0.7}, 1, EXPIRY - 600, ORACLES[:2])
    c.register(A)
    c.register(W)
    need = at_initial_margin(c, asset, 200)
    fund = c.funds[asset]
    open_straddles(c, asset, 200, need)
    marks_until_expiry(c, 1, 1, 600)
    assert fund - c.funds[asset] > 2_000 * USD


@pytest.mark.parametrize("intervals", [2, 6, 9, 12])
def test_a_straddle_opened_marks_before_expiry_is_closed_in_time(intervals):
    """Opened at the initial margin of its time, several 600 s marks before expiry, honest marks
    all the way and the index flat: the mark within the horizon of the expiry liquidates it while
    its equity covers what time takes, so the fund pays nothing."""
    c, asset = market(fund=10**6 * USD)
    c.mark("BTC", 60_000.0, {1: 0.7, 2: 0.7}, 1, EXPIRY - intervals * 600, ORACLES[:2])
    c.register(A)
    c.register(W)
    need = at_initial_margin(c, asset, 100)
    fund = c.funds[asset]
    open_straddles(c, asset, 100, need)
    marks_until_expiry(c, 1, intervals, 600)
    assert c.funds[asset] == fund
    assert sum(e.get(asset, 0) for e in c.equity([A, W])) <= need[A] + need[W]


def test_the_margin_one_horizon_later_holds_the_time_value_and_is_alike_in_software():
    """Margin = max(the kernel's at the mark, the kernel's one horizon later plus what time took
    from the book meanwhile): within the horizon of its expiry a long option needs its whole time
    value (paid in full), far from it about an hour's theta more; the same integers in software."""
    far = market()[0]
    far.mark("BTC", 60_000.0, {1: 0.7, 2: 0.7}, 1, EXPIRY - 30 * 86_400, ORACLES[:2])
    near = market()[0]
    near.mark("BTC", 60_000.0, {1: 0.7, 2: 0.7}, 1, EXPIRY - 1_800, ORACLES[:2])
    decay_far, decay_near = far._decay("BTC", far.marks["BTC"]), near._decay("BTC", near.marks["BTC"])
    assert decay_near == near.marks["BTC"].values  # (ATM: all of it is time value)
    assert all(0 < decay_far[i] < far.marks["BTC"].values[i] // 20 for i in (1, 2))
    margins = {}
    for name, c in (("far", far), ("near", near), ("bare", market(horizon=0)[0])):
        if name == "bare":
            c.mark("BTC", 60_000.0, {1: 0.7, 2: 0.7}, 1, EXPIRY - 1_800, ORACLES[:2])
        c.register(A)
        c.register(W)
        c.deposit(A, 0, "USD", 10**7 * USD)
        c.deposit(W, 0, "USD", 10**7 * USD)
        v = c.marks["BTC"].values
        c.trade(A, 1, W, 1, 1, 3, v[1])  # A long 3 straddles, W short them
        c.trade(A, 2, W, 2, 2, 3, v[2])
        soft = c.snapshot()
        soft.software = True
        hard, sw = c.margins([A, W], {"USD"})["USD"], soft.margins([A, W], {"USD"})["USD"]
        assert [np.asarray(x).tolist() for x in hard] == [np.asarray(x).tolist() for x in sw]
        margins[name] = [(int(i), int(m)) for i, m in zip(*hard)]
    premium = 3 * (near.marks["BTC"].values[1] + near.marks["BTC"].values[2])
    (a_im, a_mm), (w_im, w_mm) = margins["near"]
    (a_im0, a_mm0), (w_im0, w_mm0) = margins["bare"]
    assert a_im0 < premium and a_mm0 < premium  # (before: less than what the expiry takes)
    assert premium <= a_mm <= a_im <= premium + 6  # now the premium (and a quantum a contract), no more
    assert (w_im, w_mm) == (w_im0, w_mm0)  # the writer's: time only helps it


def test_a_long_option_paid_in_full_is_never_liquidated_for_time():
    """Review s16 of the first version, which added the charge on top of the kernel's margin
    (already the option's whole value near expiry): a straddle paid in full a day out was
    liquidated 6,600 s before expiry with flat honest marks, its writer's short closed with it."""
    c, asset = market(fund=10**6 * USD)
    c.mark("BTC", 60_000.0, {1: 0.7, 2: 0.7}, 1, EXPIRY - 86_400, ORACLES[:2])
    c.register(A)
    c.register(W)
    v = c.marks["BTC"].values
    premium = 10 * (v[1] + v[2])
    c.defer = True
    c.begin_block()
    c.deposit(A, 0, asset, premium + premium // 1000)
    c.deposit(W, 0, asset, 10**6 * USD)
    c.trade(A, 1, W, 1, 1, 10, v[1])
    c.trade(A, 2, W, 2, 2, 10, v[2])
    assert c.end_of_block() == []
    marks_until_expiry(c, 1, 86_400 // 600, 600)
    assert len(c.liquidations) == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "3600", True, 2**41])
def test_the_horizon_is_whole_seconds(bad):
    with pytest.raises(ValueError, match="decay_horizon_s"):
        Clearing(ORACLES, quorum=2, decay_horizon_s=bad)


def test_a_straddle_at_the_old_initial_margin_ends_its_block_short():
    c, asset = market()
    c.mark("BTC", 60_000.0, {1: 0.7, 2: 0.7}, 1, EXPIRY - 600, ORACLES[:2])
    bare, _ = market(horizon=0)
    bare.mark("BTC", 60_000.0, {1: 0.7, 2: 0.7}, 1, EXPIRY - 600, ORACLES[:2])
    for x in (c, bare):
        x.register(A)
        x.register(W)
    old = at_initial_margin(bare, asset, 200)  # what sufficed before
    v = c.marks["BTC"].values
    c.defer = True
    c.begin_block()
    c.deposit(A, 0, asset, old[A])
    c.deposit(W, 0, asset, old[W])
    c.trade(A, 1, W, 1, 1, 200, v[1])
    c.trade(A, 2, W, 2, 2, 200, v[2])
    assert c.end_of_block() == [A]  # the buyer short (the writer's margin is unchanged)
