"""Ledger rules no test guarded (review s18's mutation audit: each mutant below passed the ledger's
tests): the block header's roots against its block, the seller's nonce, each rule of violations()
seen to fire, cash (not an unrealized gain) as the most a withdrawal takes, the balance cap, and
the newest layer of a versioned map winning every read. Each test fails on its mutant."""
from dataclasses import replace

import pytest

from consensus.apps import ledger_state
from consensus.apps.clearing import MAX_BALANCE, Rejected, TooEarly
from consensus.apps.ledger_state import Versioned
from consensus.core import genesis_block
from consensus.messages import QC, Block
from tests.test_clearing import ORACLES, T0, USD, VOLS, _funded_app, key, market


# ---- A01-A03: the header's state root, tx root and signature digest against the block ------------

@pytest.mark.parametrize("field", ["state_root", "tx_root", "sig_digest"])
def test_a_header_that_does_not_match_its_block_is_refused(field):
    app, load, parent = _funded_app()
    for body, sigs in load.take(6):
        app.submit(body, sigs)
    txs, state = app.propose(parent, set())
    assert len(txs)
    g = genesis_block(app.genesis.root)
    block = Block(2, 2, g.id, 2, app.tx_root(txs), state.root, txs.digest(), txs, QC(g.id, 0, 0))
    assert app.validate(parent, block, ((), (), ())).ok
    bad = replace(block, **{field: bytes(32)})
    verdict = app.validate(parent, bad, ((), (), ()))
    assert not verdict.ok and "does not match the header" in verdict.reason, verdict.reason


# ---- L08: the seller's nonce ---------------------------------------------------------------------

@pytest.mark.parametrize("defer", [False, True])
def test_a_trade_with_the_sellers_nonce_used_up_or_ahead_is_refused(defer):
    c = market()
    c.defer = defer
    c.deposit(key(1), 1, "USD", USD)  # the seller spends nonce 1: its trade signed at nonce 1 is void
    before = c.root()
    with pytest.raises(Rejected, match="nonce 1, expected 2"):
        c.trade(key(0), 1, key(1), 1, 1, 1, 4_000 * USD)
    with pytest.raises(TooEarly):
        c.trade(key(0), 1, key(1), 5, 1, 1, 4_000 * USD)
    assert c.root() == before and c.accounts[key(0)].nonce == 1 and c.accounts[key(1)].nonce == 2
    c.trade(key(0), 1, key(1), 2, 1, 1, 4_000 * USD)


# ---- L20, L21: each rule of violations() fires ---------------------------------------------------

def test_violations_reports_each_broken_invariant():
    c = market()
    c.trade(key(0), 1, key(1), 1, 3, 2, 60_000 * USD)
    assert c.violations() == []

    broken = c.snapshot()
    broken.supply["USD"] -= broken.funds["USD"] + 1  # cash + fund == supply still: only the fund is wrong
    broken.funds["USD"] = -1
    assert any("insurance fund -1 below zero" in v for v in broken.violations()), broken.violations()

    broken = c.snapshot()
    a = broken._mut(key(0))
    a.positions[3] += 1
    assert any("series 3: open interest sums to 1" in v for v in broken.violations()), broken.violations()

    broken = c.snapshot()
    broken._mut(key(2)).collateral["USD"] += 1
    assert any("!= supply" in v for v in broken.violations()), broken.violations()


# ---- L03: a withdrawal takes at most the cash ----------------------------------------------------

def test_an_unrealized_gain_is_not_withdrawable_cash():
    c = market()
    c.trade(key(0), 1, key(1), 1, 3, 2, 60_000 * USD)  # key(0) long 2 futures at 60,000
    c.mark("BTC", 90_000.0, VOLS, 2, T0 + 60, ORACLES[:2])  # +60,000 USD unrealized for key(0)
    cash = c.accounts[key(0)].collateral["USD"]
    (equity,), margin = c.equity([key(0)]), c.margins([key(0)])
    assert equity["USD"] - int(margin["USD"][0][0]) > cash  # the gain covers more than the cash
    with pytest.raises(Rejected, match=f"exceeds the free collateral, {cash} quanta"):
        c.withdraw(key(0), 2, "USD", cash + 1)
    c.withdraw(key(0), 2, "USD", cash)
    assert "USD" not in c.accounts[key(0)].collateral and not c.violations()


# ---- L22: the balance cap ------------------------------------------------------------------------

def test_a_deposit_past_the_balance_cap_is_refused():
    c = market(accounts=1)
    acct = c._mut(key(0))
    c.supply["USD"] += MAX_BALANCE - 5 - acct.collateral["USD"]
    acct.collateral["USD"] = MAX_BALANCE - 5
    assert c.violations() == []
    before = c.root()
    with pytest.raises(Rejected, match=f"past {MAX_BALANCE} quanta"):
        c.deposit(key(0), 1, "USD", 6)
    assert c.root() == before and c.accounts[key(0)].nonce == 1
    c.deposit(key(0), 1, "USD", 5)
    assert c.accounts[key(0)].collateral["USD"] == MAX_BALANCE


# ---- S02: the newest layer wins every read (Versioned) -------------------------------------------

def test_the_newest_layer_wins_for_every_read(monkeypatch):
    monkeypatch.setattr(ledger_state, "REBASE_AT", 8)
    m, truth = Versioned({k: -1 for k in range(1_000)}), {k: -1 for k in range(1_000)}
    for step in range(60):
        # 12 writes: past REBASE_AT, frozen at the copy
        for k in [0, 1, 2] + [3 + (step * 9 + j) % 900 for j in range(9)]:
            m[k] = truth[k] = step
        m = m.copy()
        for k in (0, 1, 2):
            assert m[k] == m.get(k) == step, (step, k, m[k])
    assert dict(m.items()) == truth and all(m[k] == v for k, v in truth.items())
