"""Review s22 of the ledger's money: two ways a bystander paid an attacker's loss at a mark.

1. Step 4 shared what a tapped-out counterparty of a bankrupt book could not pay over the others
   up to their equity, whatever they gained: B (attacker) sells 100 BTC futures to X and 1 ETH
   future to bystander Y; X hedges with 100 BTC futures of another expiry sold to Z (the attacker's
   third account); everyone at initial margin, the fund empty. A +30% BTC mark: B's loss is split
   X : Y by gain (18,000 USD a contract : 1 quantum), X can pay only its margin (its gain went to
   Z), and the rest went to Y, 473,376 USD. Now each pays at most the larger of its proportional
   share and what it gained at this mark on the whole (Clearing._capped): X carries the rest
   (step 5), is liquidated, and Z pays.
2. The owners of earlier liquidations of the mark that closed against a book paid its loss first,
   as far as their cash went: bystander V, liquidated first with its ETH short closed against the
   bankrupt B's ETH long (at the mark value: nothing gained from B), paid 189,600 USD of B's BTC
   loss. Now a taker pays at most what it gained at this mark on what it closed against the book.
Both as validators see them: a signed mark in a block of its own, validated.

Left (docs/CLEARING.md, "What the rule does not stop: a loss shared past the chain"), an xfail
below that turns into a failure when fixed: the same bystander holding calls bought from an
honest maker (its net gain at the mark then lets the sharing again reach it). (A loss coming back
to its own record charged to a lone own weight in the own drain, left here too, is closed since
s23.) Stronger rules tried in this session (a tapped-out carrier's share carried
first, the own drain capped at gains, caps at what one won from the mark's liquidations) closed
them but, over 8,000 random shapes of attackers and bystanders against the code before, made
bystanders pay more in 22 to 85 shapes (up to 775,681 USD) and broke the hedged shapes of
tests/test_ledger_gainers_s8.py (a bystander 511 -> 17,547 USD)."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accel.risk import CALL, FUTURE, PUT
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing import Breakers, Clearing, Series
from tests.test_clearing_soundness import K, O, ORACLE_KEYS, T0, USD, app_on, signed, validate


DAY = 86400
SERIES = [Series(3, "BTC", FUTURE, 0.0, T0 + 90 * DAY), Series(4, "BTC", FUTURE, 0.0, T0 + 180 * DAY),
          Series(7, "ETH", FUTURE, 0.0, T0 + 90 * DAY), Series(1, "BTC", CALL, 60_000.0, T0 + 600),
          Series(2, "BTC", PUT, 60_000.0, T0 + 600), Series(5, "BTC", CALL, 60_000.0, T0 + 30 * DAY)]


def _market(trades, extra=None):
    """BTC futures 3 and 4 (two expiries), ETH future 7, BTC call 1 and put 2 expiring at the mark,
    30-day BTC call 5; the fund empty; the accounts of trades (buyer, seller, series, contracts)
    each deposit its initial margin for them (extra: account -> a factor of it in percent, and cash
    on top), then trade at the marks' values in one block."""
    c = Clearing(O, quorum=2, backend="cpu", insurance={"USD": 0}, breakers=Breakers(band=0.6, window=20))
    for s in SERIES:
        c.list_series(s)
    who = sorted({k for b, s, _, _ in trades for k in (b, s)})
    for k in range(6):
        c.register(K[k])
    c.mark("BTC", 60_000.0, {1: 0.6, 2: 0.6, 5: 0.6}, 1, T0, O[:2])
    c.mark("ETH", 3_000.0, {}, 1, T0, O[:2])
    price = {i: c.marks[s.underlying].values[i] for i, s in c.series.items()}
    probe = c.snapshot()
    probe.defer = True
    for k in who:
        probe.deposit(K[k], 0, "USD", 10**9 * USD)
    for b, s, i, n in trades:
        probe.trade(K[b], probe.accounts[K[b]].nonce, K[s], probe.accounts[K[s]].nonce, i, n, price[i])
    eqs, m = probe.equity([K[k] for k in who]), probe.margins([K[k] for k in who], {"USD"})["USD"][0]
    need = {k: max(im - (e.get("USD", 0) - 10**9 * USD), 1) for k, e, im in zip(who, eqs, m)}
    for k, (factor, cash) in (extra or {}).items():
        need[k] = need[k] * factor // 100 + cash
    c.defer = True
    c.begin_block()
    for k in who:
        c.deposit(K[k], 0, "USD", need[k])
    for b, s, i, n in trades:
        c.trade(K[b], c.accounts[K[b]].nonce, K[s], c.accounts[K[s]].nonce, i, n, price[i])
    assert c.end_of_block() == []
    c.defer = False
    return c, need


def _marked(c, index: float):
    app, parent = app_on(c)
    v = validate(app, parent, [signed(ctx.mark("BTC", index, 2, T0 + 600, {5: 0.6}, O[:2]), *ORACLE_KEYS[:2])])
    assert v.ok, v.reason
    s = v.state.clearing
    assert s.violations() == [] and s.supply == c.supply
    return s


def _eq(s, k: int) -> int:
    return s.equity([K[k]])[0].get("USD", 0)


B, X, Z, Y = 0, 1, 2, 3


def test_a_tapped_out_counterparty_s_share_goes_on_with_its_hedge_not_to_a_bystander_that_gained_nothing():
    c, need = _market([(X, B, 3, 100), (Z, X, 4, 100), (Y, B, 7, 1)], {Y: (100, 1_000_000 * USD)})
    s = _marked(c, 78_000.0)
    y_paid = need[Y] - _eq(s, Y)
    assert 0 <= y_paid <= 2  # its share rounded up, once per charge of B's record (was 473,376 USD)
    assert any(r.account == K[X] for r in s.liquidations)  # X carried the rest, and was liquidated
    z_pnl = 100 * (s.marks["BTC"].values[4] - c.marks["BTC"].values[4])
    assert _eq(s, Z) < need[Z] + z_pnl  # its hedge's other side, Z, paid from its gain


V, Q = 0, 3
B2 = 2


def _taker(linked: bool):
    """V (bystander, 1.5x its margin) short 100 BTC futures to maker Q and 100 ETH futures to B
    (linked) or Q; the attacker's B short 100 BTC futures to X, at its margin; +25% BTC."""
    assert K[V] < K[B2]  # V is liquidated first (an attacker picks B's key)
    c, need = _market([(X, B2, 3, 100), (Q, V, 3, 100), ((B2 if linked else Q), V, 7, 100)],
                      {V: (150, 0), Q: (100, 10_000_000 * USD)})
    s = _marked(c, 75_000.0)
    return _eq(s, V), sum(_eq(s, k) - need[k] for k in (X, B2))


def test_a_bystander_liquidated_first_against_a_bankrupt_book_pays_none_of_its_loss():
    alone, linked = _taker(False), _taker(True)
    assert linked[0] == alone[0]  # V keeps the same (it kept 276,000 of 465,600 USD)
    assert linked[1] <= alone[1] + 100  # and X + B no more (quanta of rounding; they were 189,600 USD ahead)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(n=st.integers(1, 200), hedge=st.integers(0, 100), y_contracts=st.integers(1, 500),
       y_series=st.sampled_from([7, 4]), move=st.sampled_from([66_000.0, 72_000.0, 78_000.0, 84_000.0, 50_000.0]),
       x_margin=st.integers(100, 130))
def test_an_attacker_with_a_hedged_counterparty_takes_nothing_from_a_bystander(n, hedge, y_contracts, y_series,
                                                                                move, x_margin):
    """B sells n BTC futures to X, X sells hedge% of them again (another expiry) to Z, and B sells
    y_contracts of an ETH future (or of the other expiry) to bystander Y; B, X, Z at (X: up to 1.3x)
    initial margin. Whatever the mark, Y gives up at most what it gained at the mark on its own
    position (as B's counterparty it shares B's loss) and a few quanta, never its own money."""
    z_n = n * hedge // 100
    trades = [(X, B, 3, n), (Y, B, y_series, y_contracts)] + ([(Z, X, 4, z_n)] if z_n else [])
    c, need = _market(trades, {Y: (100, 1_000_000 * USD), X: (x_margin, 0)})
    before = c.marks["ETH" if y_series == 7 else "BTC"].values[y_series]
    s = _marked(c, move)
    after = s.marks["ETH" if y_series == 7 else "BTC"].values[y_series]
    pnl = y_contracts * (after - before)  # Y is long: what the mark moved its own position
    paid = need[Y] + pnl - _eq(s, Y)  # what Y paid of others' losses
    # a contract unmoved by the mark weighs a quantum (docs/CLEARING.md, step 3): Y's share of B's
    # loss is at most that, rounded up, in each of a few charges of B's record
    rounding = 4 * (y_contracts + 1)
    assert paid <= max(pnl, 0) + rounding, (paid / USD, pnl / USD)


def _pnl(c, s, k: int) -> int:
    """What the mark moved k's own positions (at their values; settled ones at their fixings)."""
    out = 0
    for i, n in c.accounts[K[k]].positions.items():
        u = c.series[i].underlying
        out += n * (s.fixings.get(i, s.marks[u].values.get(i, c.marks[u].values[i])) - c.marks[u].values[i])
    return out


@pytest.mark.xfail(strict=True, reason="left: the sharing again reaches a bystander whose net gain at the mark "
                   "came from an honest maker (docs/CLEARING.md, 'a loss shared past the chain')")
def test_a_bystander_that_gained_from_an_honest_maker_pays_no_tapped_out_counterparty_s_share():
    """The second review: with the sharing again capped at each one's net gain at the mark, the
    bystander Y of the first test, holding also 100 30-day calls bought from an honest maker M,
    paid X's share all the same (473,376 USD): its gain on the calls was its cap."""
    m = 4
    out = []
    for with_b in (False, True):
        trades = [(X, B, 3, 100), (Z, X, 4, 100), (Y, m, 5, 100)] + ([(Y, B, 7, 1)] if with_b else [])
        c, need = _market(trades, {Y: (100, 1_000_000 * USD), m: (100, 10_000_000 * USD)})
        s = _marked(c, 78_000.0)
        out.append((need[Y] + _pnl(c, s, Y) - _eq(s, Y), sum(_eq(s, k) - need[k] for k in (B, X, Z))))
    (alone, _), (linked, attackers) = out
    assert alone == 0 and linked <= 4, (alone / USD, linked / USD)  # (473,376 USD)
    assert attackers <= linked


def test_a_loss_back_at_its_own_record_is_not_charged_to_a_bystander_beyond_its_gain():
    """The second review: A sells 100 BTC futures to L (A's key first: liquidated first), L writes
    200 calls expiring at the mark to Z, and L bought 1 ETH future from bystander Y. At +30%, A's
    loss goes to L, L's to Y (1 quantum of weight), A's record and the calls' side; what A's record
    cannot pay comes back to L's own weights, Y alone: Y paid 312,514 USD (its whole equity, in a
    variant where it also held a position: liquidated, its maker paying on). Closed in s23: the own
    drain and the chain charge each at most its weight there (what it gained on the link), and
    step 5 liquidates only the carriers its charge left below maintenance margin."""
    a, l, z, m, y = 0, 3, 1, 2, 4
    assert K[a] < K[l]
    for maker in (False, True):
        trades = [(l, a, 3, 100), (z, l, 1, 200), (l, y, 7, 1)] + ([(m, y, 7, 10)] if maker else [])
        c, need = _market(trades, {y: (100, 1_000_000 * USD)} | ({m: (100, 10_000_000 * USD)} if maker else {}))
        s = _marked(c, 78_000.0)
        paid = need[y] + _pnl(c, s, y) - _eq(s, y)
        assert paid <= 12, paid / USD  # (11 contracts at a quantum of weight each, at most)
        assert K[y] not in {r.account for r in s.liquidations}
        if maker:
            assert need[m] + _pnl(c, s, m) - _eq(s, m) <= 12


def test_a_settled_side_beside_the_own_weights_does_not_send_a_carrier_s_share_to_a_bystander():
    """The third review: the first test's shape, with one call expiring at the mark that B buys from
    its own Z: B's loss now has a shared source (the call's side), the terms path charges the own
    weights without step 5, and Y paid 467,837 USD at f1c2fb2 (and under a rule tried after the
    first fix). The sharing again stops at Y's share (it gained nothing at the mark)."""
    c, need = _market([(X, B, 3, 100), (Z, X, 4, 100), (B, Z, 1, 1), (Y, B, 7, 1)], {Y: (100, 1_000_000 * USD)})
    s = _marked(c, 78_000.0)
    assert need[Y] + _pnl(c, s, Y) - _eq(s, Y) <= 4


def test_a_counterparty_whose_hedge_an_earlier_liquidation_closed_does_not_hand_its_share_to_a_bystander():
    """The third review: the first test's shape, Z also selling 110 of the 90-day future to W so the
    mark liquidates Z (key first) before B: Z's liquidation closes X's hedge, X holds nothing when B
    is liquidated, is no carrier, and Y (1 quantum of weight) paid 473,376 USD at f1c2fb2 (and under
    a rule tried after the first fix). The sharing again stops at Y's share."""
    z, b, x, w, y = 0, 3, 1, 4, 2
    assert K[z] < K[b]
    c, need = _market([(x, b, 3, 100), (z, x, 4, 100), (w, z, 3, 110), (y, b, 7, 1)], {y: (100, 1_000_000 * USD)})
    s = _marked(c, 78_000.0)
    assert need[y] + _pnl(c, s, y) - _eq(s, y) <= 4
