"""Review s21: deferred margin let a book spend, before a mark of its own block, what the mark would
pay it. Trades and withdrawals were margined at the block's end, after the block's marks, so a
book on the winning side of a mark (the long side of a series it settles, a future's gain) could
pay that gain away first; the mark's charge on it (its share of a bankrupt counterparty's loss,
capped at its equity, a touched book being no carrier) then went on to step 6 and to bystanders.
The attacker: W writes 100 calls expiring in 10 minutes to T, each at its initial margin; in the
expiry mark's block, before the mark, T buys a future from X for its cash plus the coming fixing
and sells it back at 0, X withdraws; the mark (+25%) leaves W bankrupt, the fund pays what it holds,
and a bystander holding only cash paid 157,995 USD of W's debt (all of its 1,000,000 at +50%), an
honest proposer building that block from the mempool. Now each mark first checks the books touched
since the block began or the last mark against initial margin at the marks before it
(Clearing._check_unmarked): the block is invalid, and the proposer holds the attacker's
transactions back."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accel.risk import CALL, FUTURE
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing import Breakers, Clearing, Series
from tests.test_clearing_soundness import K, O, ORACLE_KEYS, T0, USD, USERS, app_on, signed, validate

W, T, X, Y = 0, 1, 2, 3  # the attacker's writer, buyer and collector; Y a bystander holding cash only
N = 100
EXP = T0 + 600
BYSTANDER = 1_000_000 * USD


def _genesis(series: list, calls: bool) -> Clearing:
    """W sells N contracts of series[0] to T, each at exactly its initial margin."""
    c = Clearing(O, quorum=2, backend="cpu", insurance={"USD": 10_000 * USD}, breakers=Breakers(band=0.9, window=20))
    for s in series:
        c.list_series(s)
    for i in range(4):
        c.register(K[i])
    c.deposit(K[Y], 0, "USD", BYSTANDER)
    c.mark("BTC", 60_000.0, {s.id: 0.6 for s in series if s.kind != FUTURE}, 1, T0, O[:2])
    c.defer = True
    c.begin_block()
    first = series[0].id
    value = c.marks["BTC"].values[first]
    probe = c.snapshot()
    for k in (T, W):
        probe.deposit(K[k], 0, "USD", 10**9 * USD)
    probe.trade(K[T], 1, K[W], 1, first, N, value)
    (et, ew), m = probe.equity([K[T], K[W]]), probe.margins([K[T], K[W]], {"USD"})["USD"][0]
    c.deposit(K[T], 0, "USD", m[0] - (et["USD"] - 10**9 * USD))
    c.deposit(K[W], 0, "USD", m[1] - (ew["USD"] - 10**9 * USD))
    c.trade(K[T], 1, K[W], 1, first, N, value)
    assert c.end_of_block() == []
    c.defer = False
    return c


def _calls() -> Clearing:
    return _genesis([Series(1, "BTC", CALL, 60_000.0, EXP), Series(3, "BTC", FUTURE, 0.0, T0 + 90 * 86_400)], True)


def _futures() -> Clearing:
    return _genesis([Series(3, "BTC", FUTURE, 0.0, T0 + 90 * 86_400), Series(4, "BTC", FUTURE, 0.0, T0 + 180 * 86_400)],
                    False)


def _prespend(c: Clearing, pay: int, series: int) -> list:
    nt, nx = c.accounts[K[T]].nonce, c.accounts[K[X]].nonce
    return [signed(ctx.trade(K[T], nt, K[X], nx, series, 1, pay), USERS[T], USERS[X]),
            signed(ctx.trade(K[X], nx + 1, K[T], nt + 1, series, 1, 0), USERS[X], USERS[T]),
            signed(ctx.withdraw(K[X], nx + 2, "USD", pay), USERS[X])]


def _mark(index: float, timestamp: int, vols: dict | None = None):
    return signed(ctx.mark("BTC", index, 2, timestamp, vols or {}, O[:2]), *ORACLE_KEYS[:2])


def _bystander(state) -> int:
    return state.clearing.accounts[K[Y]].collateral.get("USD", 0)


def test_the_settled_side_cannot_spend_the_fixing_before_the_expiry_mark():
    c = _calls()
    pay = c.accounts[K[T]].collateral["USD"] + N * 15_000 * USD - USD  # T left 1 USD at the mark
    app, parent = app_on(c)
    honest = validate(app, parent, [_mark(75_000.0, EXP)])
    assert honest.ok and _bystander(honest.state) == BYSTANDER  # T, the settled side, carries W's debt
    attack = _prespend(c, pay, 3) + [_mark(75_000.0, EXP)]
    v = validate(app, parent, attack)
    assert not v.ok and "below initial margin before this BTC mark" in v.reason, v.reason
    app, parent = app_on(_calls())  # the same transactions in an honest proposer's mempool
    assert app.submit_many(attack) == ["", "", "", ""]
    txs, state = app.propose(parent, set())
    assert len(txs) == 1 and _bystander(state) == BYSTANDER and state.clearing.violations() == []


def test_the_columnar_run_is_checked_too():
    """The same attack inside a run of 43 moves (the columns, not one by one: MIN_RUN is 32), W's
    deposits of a quantum after it: the positions the columns hold are the ones checked."""
    c = _calls()
    pay = c.accounts[K[T]].collateral["USD"] + N * 15_000 * USD - USD
    nw = c.accounts[K[W]].nonce
    pad = [signed(ctx.deposit(K[W], nw + j, "USD", 1), USERS[W]) for j in range(40)]
    app, parent = app_on(c)
    v = validate(app, parent, _prespend(c, pay, 3) + pad + [_mark(75_000.0, EXP)])
    assert not v.ok and "below initial margin before this BTC mark" in v.reason, v.reason
    assert validate(app, parent, pad + [_mark(75_000.0, EXP)]).ok


def test_a_futures_gain_cannot_be_spent_before_its_mark():
    c = _futures()
    probe = c.snapshot()  # T's equity at the +60% mark less its maintenance there (W solvent in the probe)
    probe.deposit(K[W], c.accounts[K[W]].nonce, "USD", 10**9 * USD)
    probe.mark("BTC", 96_000.0, {}, 2, T0 + 600, O[:2])
    (eq,) = probe.equity([K[T]])
    pay = eq["USD"] - probe.margins([K[T]], {"USD"})["USD"][1][0] - USD
    app, parent = app_on(c)
    assert _bystander(validate(app, parent, [_mark(96_000.0, T0 + 600)]).state) == BYSTANDER
    v = validate(app, parent, _prespend(c, pay, 4) + [_mark(96_000.0, T0 + 600)])
    assert not v.ok and "below initial margin before this BTC mark" in v.reason, v.reason  # Y paid 806,000 USD


_PAIRS = st.sampled_from([(T, X), (X, T), (W, X), (X, W), (T, W), (W, T)])
_OPS = st.lists(st.one_of(
    st.tuples(st.just("trade"), _PAIRS, st.integers(1, 5), st.floats(0.0, 1.2)),
    st.tuples(st.just("round trip"), _PAIRS, st.integers(1, 5), st.floats(0.0, 1.2)),  # there, then back at 0
    st.tuples(st.just("withdraw"), st.sampled_from([T, X, W]), st.floats(0.01, 1.0))), max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls=st.booleans(), spend=st.floats(0.7, 1.1), take=st.floats(0.5, 1.0), ops=_OPS, move=st.floats(1.05, 1.8),
       mark_first=st.booleans())
def test_three_accounts_and_a_proposer_never_make_a_bystander_pay(calls, spend, take, ops, move, mark_first):
    """The attacker's three accounts trade futures among themselves at any price and withdraw any
    share of their cash in the block of a mark that leaves W bankrupt, before it (or after it),
    starting with T's round trip to X at a share of its equity and the mark's gain (spend) and X's
    withdrawal of a share of it (take): whatever block validates, and whatever an honest proposer
    builds from those transactions, the bystander holding only cash pays nothing, and every
    invariant holds."""
    ops = [("round trip", (T, X), 1, spend), ("withdraw", X, take)] + ops
    c = _calls() if calls else _futures()
    nonce = {k: c.accounts[K[k]].nonce for k in (W, T, X)}
    gain = int(N * 60_000 * (move - 1)) * USD  # about what the mark moves between W and T
    items = []
    paid = dict.fromkeys((W, T, X), 0)  # what the block's trades so far paid each (for the withdrawals)

    def trade(b, s, size, price):
        items.append(signed(ctx.trade(K[b], nonce[b], K[s], nonce[s], 3 if calls else 4, size, price),
                            USERS[b], USERS[s]))
        nonce[b] += 1
        nonce[s] += 1
        paid[s] += price * size
        paid[b] -= price * size
    for op in ops:
        if op[0] != "withdraw":  # priced as a share of the buyer's equity and the mark's gain: a price
            (b, s), size, share = op[1:]  # that spends about what the mark will pay is the attack
            trade(b, s, size, max(int(share * (c.equity([K[b]])[0].get("USD", 0) + gain)) // size, 0))
            if op[0] == "round trip":
                trade(s, b, size, 0)
        else:
            who, share = op[1:]
            amount = int((c.accounts[K[who]].collateral.get("USD", 0) + paid[who]) * share)
            if amount > 0:
                items.append(signed(ctx.withdraw(K[who], nonce[who], "USD", amount), USERS[who]))
                nonce[who] += 1
    mark = _mark(60_000.0 * move, EXP if calls else T0 + 600)
    items = [mark] + items if mark_first else items + [mark]
    app, parent = app_on(c)
    v = validate(app, parent, items)
    if v.ok:
        assert _bystander(v.state) == BYSTANDER and v.state.clearing.violations() == []
    app, parent = app_on(c)
    app.submit_many(items)
    txs, state = app.propose(parent, set())
    assert _bystander(state) == BYSTANDER and state.clearing.violations() == []


def test_a_mark_still_cannot_liquidate_a_book_touched_at_its_initial_margin():
    """The other half of the rule, which the check before the mark leaves in place: T and W trade
    10 more futures, each having deposited exactly its initial margin for them first (they pass the
    check), a crash past that margin follows in the same block: the block is invalid, and the
    proposer holds the trade back."""
    c = _futures()
    nt, nw, value = c.accounts[K[T]].nonce, c.accounts[K[W]].nonce, c.marks["BTC"].values[4]
    probe = c.snapshot()
    probe.defer = True
    probe.begin_block()
    probe.trade(K[T], nt, K[W], nw, 4, 10, value)
    (et, ew), m = probe.equity([K[T], K[W]]), probe.margins([K[T], K[W]], {"USD"})["USD"][0]
    need = {T: m[0] - et["USD"], W: m[1] - ew["USD"]}
    assert min(need.values()) > 0
    tops = [signed(ctx.deposit(K[k], n, "USD", need[k]), USERS[k]) for k, n in ((T, nt), (W, nw))]
    more = signed(ctx.trade(K[T], nt + 1, K[W], nw + 1, 4, 10, value), USERS[T], USERS[W])
    crash = _mark(30_000.0, T0 + 600)
    app, parent = app_on(c)
    assert validate(app, parent, tops + [more]).ok
    v = validate(app, parent, tops + [more, crash])
    assert not v.ok and "would be liquidated by this BTC mark" in v.reason, v.reason
    app.submit_many(tops + [more, crash])
    txs, state = app.propose(parent, set())
    kept = [txs.bodies.item(i) for i in range(len(txs))]
    assert crash[0] in kept and more[0] not in kept and state.clearing.violations() == []
