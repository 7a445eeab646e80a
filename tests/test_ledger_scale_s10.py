"""Step 6's last resort, "everyone in profit", charged the whole state (review s9's top lead, fixed
in session 10 by a rule change).

What nobody of steps 3-5 could carry was charged to every account with a positive balance in the
asset, in proportion to it: a loss of L quanta touched min(L, N) accounts, found by a pass over all
N accounts at each mark that reached it. With the fund empty, a bankrupt book whose loss past its
own closure was 0.001 USD took 0.48-0.59 s of one mark with 100,000 cash-only bystanders (every one
of them charged 1 quantum), and the fund can be drained by two accounts trading with each other.
Now the loss is charged to the `Clearing.profit_payers` (256) largest positive balances in the
asset (ties by key), in proportion to them, each at most its equity and its part of the group's
charge (review s10: 992c769); what they cannot pay goes to the next 256, and so on, so the whole
market still pays before a debt stays (invariant 6). They are found through a kept index of the
positive balances per asset (ledger_state.SizeIndex, shared by the versions), built the first time
the asset reaches step 6; a block only notes the accounts it changed (5cae9f6 brought the indexes
up to date at every state root: 140-260 ms a block of 20,000 changed accounts), and the next use
reads those again, or rebuilds the indexes once more than a quarter of the accounts changed: that
mark 0.002 s at 100,000 bystanders (/tmp/s10/profit_bench.py, bench/RESULTS.md).

Tests:
1. the payers: exactly the largest balances, in proportion, nobody else touched; the next group
   for what the first cannot pay;
2. work counts (calls, not time): such a mark at N and 4N bystanders once the index is built; a
   block's state root with and without kept indexes; the per-block notes folded over many blocks;
3. random markets of construction 4 with bystanders and 1-5 payers a group, so that the cut
   decides who pays, against tests/test_ledger_scale_s6.py's Reference (a sort of every balance
   at each use), round after round;
4. forks, dropped sibling versions and restores mid-stream with tiny layers, and with the indexes
   dropped and rebuilt at every quarter (CASH_SLACK 0), against a fresh sort at every use;
5. through the app, columnar blocks and a software-only validator restarting from snapshots, with
   the index built at genesis: Clearing.violations() (which checks the index against the
   balances) after every block on both sides."""
import random

import pytest
from hypothesis import HealthCheck, given, settings

import consensus.apps.ledger_state as ledger_state
from consensus.apps import clearing, clearing_snapshot
from consensus.apps.clearing import Clearing, Rejected
from consensus.apps.clearing_app import ClearingApp, State
from consensus.verify import Verifier
from tests.test_clearing_properties import O, OPTIONS, USD, Stream, block_of, blocks, genesis, signed
from tests.test_ledger_scale_s6 import Reference, _calls, _fresh, _inject, _state, _traded
from tests.test_ledger_scale_s7 import _key, construction
from tests.test_ledger_scale_s9b import OPENING


SHA = Verifier("accel", "cpu").sha256_rows


def _every_balance(self, asset):
    """The payers in step 6's order as a fresh sort of every account's balance finds them."""
    rich = sorted((-c, h) for h, a in self.accounts.items() if (c := a.collateral.get(asset, 0)) > 0)
    return ((h, -c) for c, h in rich)


def _bystanders(n: int, cash=lambda i: 1_000 * USD) -> Clearing:
    """tests/test_ledger_scale_s7.py's construction 4 (a thin short against a long bought on
    borrowed cash, the fund empty: the rally leaves both bankrupt and the loss past them to
    everyone in profit), with n cash-only bystanders."""
    c, _ = construction(Clearing, 4, 1)
    for i in range(n):
        _inject(c, _key(7, i), {"USD": cash(i)})
    c.root()
    return c


def _pair(c: Clearing, r: int) -> None:
    _inject(c, _key(2, 1000 + r), {"USD": 100 * USD})
    _inject(c, _key(1, 1000 + r), {"USD": -10_000 * USD + 1})
    _traded(c, _key(1, 1000 + r), _key(2, 1000 + r), 3, 1)


def _rally(c: Clearing) -> None:
    m = c.marks["BTC"]
    c.mark("BTC", m.index * 1.17, {i: 0.7 for i in OPTIONS["BTC"]}, m.sequence + 1, m.timestamp + 60, O[:2])


def _profit_charges(monkeypatch) -> list:
    """Each step-6 last resort of the marks: (asset, loss, the positive balances then, the first
    profit_payers payers a fresh sort finds)."""
    seen, orig = [], Clearing._charge_profit

    def charge(self, pools):
        for asset, q in sorted(pools.profit.items()):
            if q:
                rich = {h: c for h, a in self.accounts.items() if (c := a.collateral.get(asset, 0)) > 0}
                seen.append((asset, q, rich, dict(list(_every_balance(self, asset))[:self.profit_payers])))
        orig(self, pools)
    monkeypatch.setattr(Clearing, "_charge_profit", charge)
    return seen


# ---- 1. who pays ------------------------------------------------------------------------------------
def test_the_largest_balances_pay_in_proportion_and_nobody_else(monkeypatch):
    rng = random.Random(7)
    amounts = [rng.choice([1, 10, 1_000, 1_000, 50_000]) * USD + rng.randrange(USD) for _ in range(600)]
    c = _bystanders(600, lambda i: amounts[i])
    seen = _profit_charges(monkeypatch)
    before = {k: a.collateral.get("USD", 0) for k, a in c.accounts.items()}
    supply = dict(c.supply)
    _rally(c)
    (asset, loss, rich, payers), = seen
    assert asset == "USD" and len(rich) > c.profit_payers == len(payers) == 256
    assert min(payers.values()) >= max(q for k, q in rich.items() if k not in payers)
    liquidated = {r.account for r in c.liquidations}
    paid = {k: before[k] - a.collateral.get("USD", 0) for k, a in c.accounts.items() if k not in liquidated}
    assert {k for k, q in paid.items() if q} <= set(payers)  # nobody outside the 256 paid
    assert sum(paid.values()) == loss  # they had the room: all of it paid, nothing came back
    total = sum(payers.values())
    for k, q in payers.items():  # in proportion, the rounding remainder at most one quantum each
        assert loss * q // total <= paid[k] <= loss * q // total + 1
    assert not c.violations() and c.supply == supply


def test_what_the_largest_balances_cannot_pay_goes_to_the_next_ones(monkeypatch):
    """600 bystanders of about 20 USD each and a loss of about 9,900 USD: the 256 largest give all
    their equity (here their cash), the next 256 pay the rest in proportion, the 88 smallest
    nothing; no debt is left (invariant 6: the whole market still pays before a debt stays)."""
    c = _bystanders(600, lambda i: 20 * USD + i)
    _inject(c, _key(5, 0), {"USD": -1_000_000 * USD + 1})  # construction 4's rich bystander: 1 quantum
    seen = _profit_charges(monkeypatch)
    _rally(c)
    (_, loss, rich, _), = seen
    assert 256 * 20 * USD < loss < 512 * 20 * USD
    left = [c.accounts[_key(7, i)].collateral.get("USD", 0) for i in range(600)]  # smallest first
    assert left[344:] == [0] * 256  # the 256 largest
    assert all(0 < q < 20 * USD + i for i, q in enumerate(left[88:344], 88))  # the next 256, in part
    assert left[:88] == [20 * USD + i for i in range(88)]
    assert c.accounts[_key(5, 0)].collateral.get("USD", 0) == 1  # the smallest balance of all
    assert not c.violations()


# ---- 2. work -----------------------------------------------------------------------------------------
def test_a_mark_reaching_everyone_in_profit_costs_the_same_at_n_and_4n_bystanders():
    """The second such mark (the first builds the index), on the next version: its calls at 4N at
    most 1.5x N's (before: every bystander charged, 4x); each mark charged 255 bystanders of 1,000
    USD beside construction 4's rich one (before: all of them)."""
    work = []
    for n in (2_000, 8_000):
        c = _bystanders(n)
        for r in range(2):
            if r:
                c = c.snapshot()
                _pair(c, 1)
            before = [c.accounts[_key(7, i)].collateral["USD"] for i in range(n)]
            calls = _calls(lambda: _rally(c))
            assert sum(c.accounts[_key(7, i)].collateral["USD"] != q for i, q in enumerate(before)) == 255
            c.root()
        work.append(calls)
        assert not c.violations()
    assert work[1] <= 1.5 * work[0], work


def test_a_block_pays_nothing_per_changed_account_for_a_kept_index():
    """With the balance indexes kept (USD and BTC), a block's state root notes its changed accounts
    for the next use: a few calls more than without them, whatever their number (5cae9f6 brought
    both indexes up to date at every block: 140-260 ms of 20,000 changed accounts, more than the
    block's validation)."""
    extra = []
    for changed in (500, 2_000):
        calls = []
        for kept in (False, True):
            c = _bystanders(4_000)
            if kept:
                c._payers("USD"), c._payers("BTC")
            c.root()
            c = c.snapshot()
            for i in range(changed):
                _inject(c, _key(7, i), {"USD": 1})
            calls.append(_calls(c.root))
            assert sorted(c._cash) == (["BTC", "USD"] if kept else [])
        extra.append(calls[1] - calls[0])
    assert extra[0] == extra[1] <= 10, extra


# ---- 3. random markets against the Reference, the cut deciding who pays -----------------------------
def _market(cls, rng: random.Random) -> Clearing:
    """Construction 4 with 1-3 pairs, bystanders of random balances (ties included), some of them
    holding futures against each other (their equity is not their cash), the rich bystanders of
    the construction left with 0, 1 quantum or their million."""
    c, _ = construction(cls, 4, rng.randint(1, 3))
    n = rng.randint(3, 40)
    for i in range(n):
        _inject(c, _key(7, i), {"USD": rng.choice([1, 7, 100 * USD, 1_000 * USD, 1_000 * USD, 50_000 * USD])
                                + rng.choice([0, 0, rng.randrange(USD)])})
    for _ in range(rng.randint(0, 10)):
        a, b = rng.sample(range(n), 2)
        _traded(c, _key(7, a), _key(7, b), 3, rng.choice([1, 2]))
    for k in [k for k in c.accounts if k[0] == 5]:
        _inject(c, k, {"USD": -rng.choice([0, 1_000_000 * USD - 1, 999_000 * USD])})
    return c


def _round(c: Clearing, rng: random.Random, r: int) -> None:
    """A new pair (after the first round), a few blocks (the breakers' window), a rally."""
    if r:
        _pair(c, r)
    for _ in range(3):
        c.begin_block()
    m = c.marks["BTC"]
    c.mark("BTC", m.index * rng.choice([1.1, 1.17, 1.25]), {i: 0.7 for i in OPTIONS["BTC"]}, m.sequence + 1,
           m.timestamp + 60, O[:2])


def test_random_markets_with_few_payers_reach_the_references_state(monkeypatch):
    seen = _profit_charges(monkeypatch)
    chunks = 0
    for seed in range(60):
        payers = random.Random(seed).choice([1, 2, 3, 5])
        monkeypatch.setattr(Clearing, "profit_payers", payers)  # the Reference, a subclass, takes it too
        new, old = _market(Clearing, random.Random(seed)), _market(Reference, random.Random(seed))
        for r in range(3):
            before = {k: a.collateral.get("USD", 0) for k, a in new.accounts.items() if k[0] == 7}
            outcome = []
            for c in (new, old):
                try:
                    _round(c, random.Random(seed * 10 + r), r)
                    outcome.append(None)
                except Rejected as e:
                    outcome.append(str(e))
            assert outcome[0] == outcome[1], (seed, r)
            assert _state(new) == _state(old), (seed, r)
            chunks += sum(new.accounts[k].collateral.get("USD", 0) < q for k, q in before.items()) > payers
    # the cut decided who paid: more accounts in profit than payers, and losses that took more than
    # one group of payers
    assert sum(len(rich) > 5 for _, _, rich, _ in seen) >= 30 and chunks >= 10, (len(seen), chunks)


# ---- 4. forks, dropped siblings and restores ----------------------------------------------------------
def _forked(seed: int, mode: str) -> list:
    """Rounds on random earlier versions (forks), 0-2 sibling versions built on the same parent and
    dropped, as a proposer's passes are; mode "restore": 40% of the versions start from a snapshot
    of their parent (no index). What each round did: refusal, records, leaves, funds, violations."""
    rng = random.Random(seed)
    c = _market(Clearing, rng)
    genesis, versions, out = _fresh(Clearing), [c], []
    for r in range(6):
        parent = versions[-1] if rng.random() < 0.7 else rng.choice(versions)
        for _ in range(rng.randint(0, 2)):
            try:
                _round(parent.snapshot(), random.Random(rng.random()), r + 10)
            except Rejected:
                pass
        c = parent.snapshot()
        if rng.random() < 0.4 and mode == "restore":
            c = clearing_snapshot.restore(genesis, clearing_snapshot.encode(c), c.state_root(SHA), SHA)
        for _ in range(rng.randint(0, 4)):  # balances moved between rounds
            _inject(c, _key(7, rng.randrange(40)), {"USD": rng.choice([1, 100 * USD, 5_000 * USD])})
        done = len(c.liquidations)
        try:
            _round(c, random.Random(rng.random()), r + 1)
            refused = None
        except Rejected as exc:
            refused = str(exc)
        out.append((refused, list(c.liquidations[done:]), c.leaves(), dict(c.funds), c.violations()))
        versions.append(c)
    return out


@pytest.mark.parametrize("slack", [1024, 0])
@pytest.mark.parametrize("seed", range(12))
def test_forks_and_restores_charge_the_balances_a_fresh_sort_finds(seed, slack, monkeypatch):
    """slack 0: the indexes dropped and rebuilt whenever a quarter of the accounts changed."""
    monkeypatch.setattr(ledger_state, "SET_DELTA", 2)  # every version with 3 changes freezes and merges
    monkeypatch.setattr(clearing, "CASH_SLACK", slack)
    monkeypatch.setattr(Clearing, "profit_payers", 2)
    seen = _profit_charges(monkeypatch)
    kept = _forked(seed, "kept")
    assert not any(v for *_, v in kept)  # violations() checks the kept balances too
    assert len(seen) >= 3
    assert _forked(seed, "restore") == kept
    monkeypatch.setattr(Clearing, "_payers", _every_balance)
    assert _forked(seed, "kept") == kept


# ---- 5. through the app -------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(blocks)
def test_columnar_blocks_and_restarts_keep_the_balances_index_true(stream):
    """The property tests' random streams through the app (after tests/test_ledger_scale_s9b.py's
    opening block), with the index of USD balances built at genesis: each block proposed twice on its parent (the first dropped), validated by a
    software-only validator whose parent is, every other block on average, restored from a snapshot
    (its index built again at once); the same roots, and no violation (which checks the index
    against every balance) on either side after every block."""
    proposer = ClearingApp(Verifier("accel", "cpu"), genesis())
    validator = ClearingApp(Verifier("software"), genesis())
    for app in (proposer, validator):
        app.genesis.clearing._payers("USD")
    parent, vparent = proposer.genesis, validator.genesis
    rng = random.Random(len(stream))
    for n, ops in enumerate([OPENING] + stream):
        maker = Stream(parent.clearing)
        proposer.submit_many([signed(*maker.tx(o)) for o in ops])
        proposer.propose(parent, set())
        txs, state = proposer.propose(parent, set())
        if n and rng.random() < 0.5:
            back = clearing_snapshot.restore(genesis(), clearing_snapshot.encode(vparent.clearing), vparent.root,
                                             validator.verifier.sha256_rows)
            back._payers("USD")
            vparent = State(back, vparent.root)
        v = validator.validate(vparent, block_of(txs, bytes(32), state.root, validator), ((), (), ()))
        assert v.ok, v.reason
        assert v.state.root == state.root
        assert "USD" in state.clearing._cash and "USD" in v.state.clearing._cash
        assert not state.clearing.violations() and not v.state.clearing.violations()
        proposer.committed(block_of(txs, bytes(32), state.root, proposer), state)
        parent, vparent = state, v.state


def test_the_noted_changes_fold_and_stay_bounded_over_many_blocks():
    """Blocks that change the same few accounts, with the indexes kept: the per-block sets fold
    every 64 blocks, counting each account once, so the indexes are neither dropped nor read
    again in full; the next use reads the few accounts and finds what a fresh sort finds."""
    c = _bystanders(2_000)
    c._payers("USD")
    c.root()
    for b in range(300):
        c = c.snapshot()
        for i in range(8):
            _inject(c, _key(7, i), {"USD": (b % 3) - 1})
        c.root()
        assert len(c._cash_changed) < 64 and c._cash_count <= 8 * 64 and "USD" in c._cash
    assert list(c._payers("USD")) == list(_every_balance(c, "USD"))
    assert not c.violations()
