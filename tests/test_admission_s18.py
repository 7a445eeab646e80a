"""The mempool refuses on admission what the ledger refuses whatever the state (review s18): a
deposit of an asset the ledger lacks ("usd" typed for "USD"), a trade of a series not listed or
fixed, sizes, amounts and prices out of range. Before, submit_many answered "accepted" and the
next proposal refused it, with the account's later transactions (a nonce gap).

Each refusal must also be the ledger's: admission never refuses what a block would take, with
the same reason the ledger gives (clearing_tx.form_refusal and Clearing.apply share the rules)."""
import hashlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing import MAX_AMOUNT, MAX_PRICE, MAX_SIZE, Rejected
from consensus.apps.clearing_app import ClearingApp
from consensus.verify import Verifier
from tests.test_clearing_columns import _oracles, funded_genesis
from tests.test_clearing_properties import EXAMPLES, K, SERIES, T0, USERS, signed

ETH_PUT = 7  # expires T0 + 3 h: fixed by a mark after that (_fixed)


def _fixed():
    state = funded_genesis()
    state.mark("ETH", 3_000.0, {ETH_PUT: 0.7}, 2, T0 + 4 * 3600, list(_oracles()))
    assert ETH_PUT in state.fixings
    return state


def _apply_refusal(state, body) -> str:
    """What the ledger says applying body on a copy of state in a block ("" if it applies)."""
    copy = state.snapshot()
    copy.defer = True
    copy.begin_block()
    try:
        ctx.apply(copy, ctx.decode(body))
    except Rejected as exc:
        return str(exc)
    return ""


def _move(op, user, asset, amount, state):
    return signed(ctx.move(op, K[user], state.accounts[K[user]].nonce, asset, amount), [USERS[user]])


def _trade(buyer, seller, series, size, price, state):
    body = ctx.trade(K[buyer], state.accounts[K[buyer]].nonce, K[seller], state.accounts[K[seller]].nonce,
                     series, size, price)
    return signed(body, [USERS[buyer], USERS[seller]])


CASES = {
    "deposit of an asset the ledger lacks": lambda s: _move(ctx.DEPOSIT, 0, "usd", 5, s),
    "withdrawal of an asset the ledger lacks": lambda s: _move(ctx.WITHDRAW, 0, "ETH", 5, s),
    "top-up of an asset the ledger lacks": lambda s: _move(ctx.TOP_UP, 0, "DOGE", 5, s),
    "deposit of nothing": lambda s: _move(ctx.DEPOSIT, 0, "USD", 0, s),
    "withdrawal past the wire's limit": lambda s: _move(ctx.WITHDRAW, 0, "USD", MAX_AMOUNT + 1, s),
    "trade of a series not listed": lambda s: _trade(1, 2, 999, 1, 10, s),
    "trade of a fixed series": lambda s: _trade(1, 2, ETH_PUT, 1, 10, s),
    "trade with itself": lambda s: _trade(1, 1, 1, 1, 10, s),
    "trade of no contracts": lambda s: _trade(1, 2, 1, 0, 10, s),
    "trade past the size limit": lambda s: _trade(1, 2, 1, MAX_SIZE + 1, 10, s),
    "trade past the price limit": lambda s: _trade(1, 2, 1, 1, MAX_PRICE + 1, s),
    "inverse future at price 0": lambda s: _trade(1, 2, 5, 1, 0, s),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_what_no_state_accepts_is_refused_on_admission_with_the_ledgers_reason(case):
    state = _fixed()
    app = ClearingApp(Verifier("accel", "cpu"), state)
    tx = CASES[case](state)
    why = _apply_refusal(state, tx[0])
    assert why, "the ledger takes it: the case is wrong"
    assert app.submit_many([tx]) == [why]
    assert hashlib.sha256(tx[0]).digest() not in app.mempool


def test_a_refused_deposit_leaves_the_accounts_next_one_admitted():
    state = funded_genesis()
    app = ClearingApp(Verifier("accel", "cpu"), state)
    bad, good = _move(ctx.DEPOSIT, 0, "usd", 2, state), _move(ctx.DEPOSIT, 0, "USD", 3, state)
    assert app.submit_many([bad, good])[1] == ""
    txs, after = app.propose(app.genesis, set())
    was = state.accounts[K[0]].collateral["USD"]
    assert len(txs) == 1 and after.clearing.accounts[K[0]].collateral["USD"] == was + 3


assets = st.sampled_from(["USD", "BTC", "ETH", "usd", "DOGE", "A"])
amounts = st.one_of(st.integers(0, 3), st.integers(1, 10**9), st.sampled_from([MAX_AMOUNT, MAX_AMOUNT + 1, 2**64 - 1]))
series = st.sampled_from([s.id for s in SERIES] + [0, 99, 2**32 - 1])
sizes = st.one_of(st.integers(0, 3), st.sampled_from([MAX_SIZE, MAX_SIZE + 1, 2**32 - 1]))
prices = st.one_of(st.integers(0, 10**6), st.sampled_from([MAX_PRICE, MAX_PRICE + 1, 2**64 - 1]))
user = st.integers(0, len(USERS) - 1)
moves = st.tuples(st.just("move"), st.sampled_from(ctx.MOVES), user, assets, amounts)
trades = st.tuples(st.just("trade"), user, user, series, sizes, prices)

FIXED = _fixed()


@settings(max_examples=5 * EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(moves, trades))
def test_admission_refuses_exactly_what_the_ledger_refuses_for_its_fields(op):
    """On funded accounts at their next nonces, with every underlying marked and margin left to the
    block's end, the ledger refuses a move or trade only for its fields or a balance past a cap;
    admission must refuse the former, with the ledger's words, and nothing else."""
    app = ClearingApp(Verifier("accel", "cpu"), FIXED)
    tx = _move(op[1], *op[2:], FIXED) if op[0] == "move" else _trade(*op[1:], FIXED)
    why, reason = _apply_refusal(FIXED, tx[0]), app.submit_many([tx])[0]
    if "past a position" in why or "balance past" in why or "exceeds the cash" in why:
        assert reason == ""  # a balance: the state decides, at the proposal
    else:
        assert reason == why
