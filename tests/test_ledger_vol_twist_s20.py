"""Vols moving apart, through the ledger (docs/CLEARING.md, "Vols moving apart"): an attacker's two
accounts open a delta-hedged book of options of both vega signs against each other, each
depositing exactly the initial margin its side needs; the next mark, 10 minutes later, moves the
index up to 12% either way and each option's vol anywhere inside its own scenario range,
independently of the others. Neither side may end below zero, so the insurance fund pays nothing
(on 9609215, whose margin shocked the book's vols one way at a time, Hypothesis finds a book of
four options and two futures, the index unmoved, one put's vol to its up state and the rest down:
the fund paid 108.46 USD)."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st
from nacl.signing import SigningKey

from accel.risk import CALL, FUTURE, PUT
from consensus.apps.clearing import DEFAULT_PARAMS, Clearing, Series
from tests.test_clearing_properties import O
from tests.test_ledger_deleverage_s18 import at_initial_margin

USD = 10**8
T0 = 1_800_000_000
DAY = 86_400
S0 = 60_000.0
VOL = 0.6
A, B = (bytes(SigningKey(bytes([i]) * 32).verify_key) for i in (71, 72))
OPTIONS = {1: (CALL, 54_000.0, 7), 2: (PUT, 57_000.0, 7), 3: (CALL, 63_000.0, 30), 4: (PUT, 60_000.0, 30),
           5: (CALL, 66_000.0, 90), 6: (PUT, 54_000.0, 90)}
FUTURE_ID = 7


def vol_range(days: float) -> tuple[float, float]:
    """An option's vol-down and vol-up states at VOL, `days` to expiry (docs/RISK.md)."""
    p = DEFAULT_PARAMS
    dte = max(days, 1.0)
    shock = (p.vol_ref_days / dte) ** (p.vol_exponent if dte < p.vol_ref_days else p.vol_exponent_long)
    return VOL * max(1 - p.vol_down * shock, p.vol_down_floor), max(VOL * (1 + p.vol_up * shock), p.vol_up_floor)


def market(sizes: dict[int, int]) -> Clearing:
    c = Clearing(O, quorum=2, backend="cpu", insurance={"USD": 10**6 * USD})
    for i, (kind, strike, days) in OPTIONS.items():
        c.list_series(Series(i, "BTC", kind, strike, T0 + days * DAY))
    c.list_series(Series(FUTURE_ID, "BTC", FUTURE, 0.0, T0 + 120 * DAY))
    c.mark("BTC", S0, dict.fromkeys(OPTIONS, VOL), 1, T0, O[:2])
    for k in (A, B):
        c.register(k)
    trades = [(A, B, i, n) if n > 0 else (B, A, i, -n) for i, n in sizes.items() if n]
    c.need = at_initial_margin(c, [A, B], trades)
    return c


def delta_hedged(legs: dict[int, int]) -> dict[int, int]:
    """The legs and a future against their delta at the mark (whole contracts): books whose risk is
    in their vegas, the ones a twist of the vols takes most from."""
    import accel
    delta = 0.0
    for i, n in legs.items():
        kind, strike, days = OPTIONS[i]
        delta += n * float(accel.greeks(S0, strike, days / 365, 0.0, VOL, kind == CALL, backend="cpu").delta[0])
    return legs | {FUTURE_ID: -round(delta)}


# a long and a short leg (vegas of both signs), sizes up to 100
legs = st.dictionaries(st.sampled_from(list(OPTIONS)), st.integers(-100, 100).filter(bool), min_size=2, max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=legs.filter(lambda d: min(d.values()) < 0 < max(d.values())).map(delta_hedged),
       move=st.floats(-0.03, 0.03) | st.floats(-0.12, 0.12),
       where=st.lists(st.sampled_from([0.0, 1.0, 0.5, 0.2, 0.8]), min_size=len(OPTIONS), max_size=len(OPTIONS)))
def test_two_accounts_at_initial_margin_survive_any_twist_of_their_vols(sizes, move, where):
    c = market(sizes)
    fund = c.funds["USD"]
    vols = {}
    for (i, (_, _, days)), w in zip(OPTIONS.items(), where):
        down, up = vol_range(days)
        vols[i] = down + w * (up - down)
    c.begin_block()
    c.mark("BTC", S0 * (1 + move), vols, 2, T0 + 600, O[:2])
    assert c.violations() == []
    assert c.funds["USD"] >= fund, (f"the fund paid {(fund - c.funds['USD']) / USD:,.2f} USD: book {sizes}, "
                                    f"move {move:+.3f}, vols {vols}")
