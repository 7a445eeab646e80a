"""Third-round review of step 6's last resort (docs/CLEARING.md step 6, "everyone in profit"): b97093d's
second walk over the groups, each member up to its equity, for what the capped first walk left.

1. invariant 6 and conservation: s6's Reference against the fast code over random markets of
   bystanders, writers with cash but no equity and accounts whose equity is mostly positions
   (cash small, long futures), 1-256 payers a group; after each mark no debt while the accounts'
   equity covers it, the other invariants (supply, funds >= 0, open interest); each member at most
   its equity, in the first walk at most its part rounded up;
2. fairness: who pays what beside writers without equity, against every positive balance in
   proportion (before session 10) and 5cae9f6 (each group up to its equity, no cap);
3. cost (_room calls, measured, not asserted): one loss of about 9,900 USD, accounts of about
   1,000 USD of which 1 in r has full equity and the others are writers: r = 2: 3,029 / 11,333 /
   8,452 calls at 2,000 / 8,000 / 32,000 accounts (12 / 45 / 33 groups: at 8,000 the first walk
   reaches the market's end and the second walks 14 groups again; the halving stops the walk near
   33 groups whatever N); r = 16: 4,005 / 15,685 / 62,213 (16 / 62 / 244 groups); r = 256: 4,005 /
   16,005 / 64,005. The walk grows with the writers (the attacker's k, about N here), a group per
   256 of them, at most twice (the two walks); no shape found where k small walks N.

Found (strict xfail): the second walk reads the balances again after the first, so an account
whose part in the first walk took it past its cash (its equity held in positions) is no longer a
positive balance and is left out, its remaining equity with it. 256 writers (12,000 USD each,
equity 1 quantum) above one account of 3,000 USD cash long 1,025 ETH futures (equity 3,078,000
USD) and one writer of 3,000 USD: the second group's parts are 4,950 USD each, the account pays
its part (cash -1,950 USD), the writer 1 quantum, and 4,950 USD stay as a debt beside 3,073,050
USD of that account's equity. The Reference does the same (the differential cannot see it). In the
random markets below (seeds 0-399, 1,200 marks), 6 marks left a new debt beside the equity of
the accounts in profit at the mark's start (11 quanta to 10,667 USD); with the second walk over
the first walk's payers (the balances as at the start, each up to its equity now) none did, and
the account above paid the whole loss. 400 seeds against the Reference: the same states (and
seeds 400-2,399 at CASH_SLACK 1,024 and 0, measured: the same states; 16 of those 6,000 marks
left a debt beside the equity of accounts in profit at the start, 115 beside other equity).

Fairness (strict xfails): 255 self-traded writers beside the largest balance H (12,000 USD) take
H's share off it and onto the smallest balances (992c769's cap: 1,000 bystanders of 10 USD pay
9,861 USD, 98.6% of what they hold, H 39; without the writers 1,735 and 8,165); and the second
walk charges the largest balances read again first, so H pays 4,608 USD while the attacker's
account of 11,900 USD, one group below among its own writers, pays 37 (all balances in
proportion: 4,005 and 3,971).

Also (not new, the rule since s7 against invariant 6's wording, "the accounts' equity together"):
an account whose cash is 0 or below but whose positions carry equity was never in profit, so a
debt stayed beside it: 30 of the 1,200 marks (e.g. a long of 4 ETH futures bought with all its
cash, equity 12,000 USD, beside a 9,900 USD debt). Fixed in session 11: such equity pays once
every positive balance has given its own."""
import random

import pytest

from consensus.apps.clearing import Clearing, Rejected
from tests.test_clearing_properties import USD
from tests.test_ledger_scale_s6 import Reference, _inject, _state, _traded
from tests.test_ledger_scale_s7 import _key, construction
from tests.test_ledger_review_s10b import _writers, profit_groups
from tests.test_ledger_scale_s10 import _market, _pair, _rally, _round


def _debts(c: Clearing) -> int:
    """The debts step 6 gave back: negative cash beside no position (violations())."""
    return -sum(int(v.split(" cash ")[1].split()[0]) for v in c.violations() if "below zero with no position in USD" in v)


def _equity(c: Clearing) -> int:
    """What the whole market could still pay: every account's equity in USD (_room)."""
    return sum(c._room(k, "USD") for k in c.accounts)


def _long_holder(cls) -> tuple:
    """Construction 4's loss of about 9,900 USD, its rich bystander left with 1 quantum; 256 writers
    (short 4 ETH futures each, cash 12,000 USD, equity 1 quantum) and one more short 1 (3,000 USD),
    all against A, which holds the 1,025 longs and 3,000 USD of cash: equity 3,078,000 USD."""
    c, _ = construction(cls, 4, 1)
    _inject(c, _key(5, 0), {"USD": -1_000_000 * USD + 1})
    a = _key(8, 0)
    _inject(c, a, {"USD": 3_000 * USD + 1_025 * 3_000 * USD})
    for i in range(256):
        _inject(c, _key(9, i), {"USD": 1})
        _traded(c, a, _key(9, i), 6, 4)
    _inject(c, _key(10, 0), {"USD": 1})
    _traded(c, a, _key(10, 0), 6, 1)
    c.root()
    return c, a


@pytest.mark.parametrize("cls", [Clearing, Reference])
def test_an_account_that_paid_past_its_cash_still_pays_the_rest_up_to_its_equity(cls):
    c, a = _long_holder(cls)
    assert c.accounts[a].collateral["USD"] == 3_000 * USD and c._room(a, "USD") == 3_078_000 * USD
    supply = dict(c.supply)
    _rally(c)
    assert c.supply == supply
    debt = _debts(c)
    # as found: 4,950 USD of debt, 3,073,050 USD of A's equity left
    assert debt == 0, (debt / USD, c._room(a, "USD") / USD)


# ---- random markets: writers without equity, holders whose equity is their positions ------------------
def _shape(cls, seed: int) -> Clearing:
    """s10's _market with 0-12 writers (short 1-4 ETH futures, cash 3,000-12,000 USD, equity 1
    quantum) whose longs are 0-3 holders of 1 quantum, 100 or 3,000 USD of cash (their equity
    mostly their futures), or, without holders, accounts of their own with cash 0."""
    rng = random.Random(seed)
    c = _market(cls, rng)
    holders = rng.randint(0, 3)
    for h in range(holders):
        _inject(c, _key(8, h), {"USD": rng.choice([1, 100 * USD, 3_000 * USD])})
    for i in range(rng.randint(0, 12)):
        _inject(c, _key(9, i), {"USD": 1})
        buyer, k = _key(8, rng.randrange(holders)) if holders else _key(11, i), rng.randint(1, 4)
        _inject(c, buyer, {"USD": k * 3_000 * USD})
        _traded(c, buyer, _key(9, i), 6, k)
    return c


def _streams(seeds) -> tuple:
    """Each seed's three rounds on the fast code and the Reference (1-256 payers a group): the
    rounds where they differ, and the marks that left a new debt while the equity of the accounts
    in profit at the mark's start (or, second list, of every account) covered it."""
    differ, beside_payers, beside_anyone = [], [], []
    for seed in seeds:
        Clearing.profit_payers = random.Random(seed).choice([1, 2, 3, 5, 256])
        new, old = _shape(Clearing, seed), _shape(Reference, seed)
        for r in range(3):
            payers = {k for k, a in new.accounts.items() if a.collateral.get("USD", 0) > 0}
            before = _debts(new)
            outcome = []
            for c in (new, old):
                try:
                    _round(c, random.Random(seed * 10 + r), r)
                    outcome.append(None)
                except Rejected as exc:
                    outcome.append(str(exc))
            if outcome[0] != outcome[1] or _state(new) != _state(old):
                differ.append((seed, r))
                break
            # violations() checks the supply against every balance and fund, the funds >= 0 and the
            # open interest; only step 6's debts may stand
            assert [v for v in new.violations() if "below zero with no position" not in v] == [], (seed, r)
            debt = _debts(new) - before
            if debt > 0 and sum(new._room(k, "USD") for k in payers) >= debt:
                beside_payers.append((seed, r, debt / USD))
            elif debt > 0 and sum(new._room(k, "USD") for k in new.accounts) >= debt:
                beside_anyone.append((seed, r, debt / USD))
    return differ, beside_payers, beside_anyone


def test_random_markets_with_writers_and_holders_reach_the_references_state(monkeypatch):
    monkeypatch.setattr(Clearing, "profit_payers", Clearing.profit_payers)
    differ, _, _ = _streams(range(400))
    assert differ == []


def test_random_markets_leave_no_debt_beside_the_equity_of_those_in_profit(monkeypatch):
    """As found: (seed, round, new debt in USD) (15, 0, 0.00000011), (73, 0, 0.00000888),
    (141, 0, 2,699.62), (242, 0, 10,666.51), (267, 1, 9,329.84), (294, 0, 3,399.41)."""
    monkeypatch.setattr(Clearing, "profit_payers", Clearing.profit_payers)
    _, beside_payers, _ = _streams(range(400))
    assert beside_payers == []


def test_equity_held_in_positions_with_no_cash_pays_before_a_debt_stays():
    """Until session 11 (a strict xfail here) an account with cash 0 but equity in its positions was
    never in profit, so a 9,900 USD debt stayed beside its 12,000 USD of equity: once every
    positive balance has given its equity, step 6 charges such equity (Clearing._equity_in_positions)."""
    c, _ = construction(Clearing, 4, 1)
    _inject(c, _key(5, 0), {"USD": -1_000_000 * USD})
    _inject(c, _key(9, 0), {"USD": 1})
    _inject(c, _key(8, 0), {"USD": 12_000 * USD})
    _traded(c, _key(8, 0), _key(9, 0), 6, 4)  # long 4 ETH futures with all its cash
    c.root()
    assert c.accounts[_key(8, 0)].collateral.get("USD", 0) == 0 and c._room(_key(8, 0), "USD") == 12_000 * USD
    _rally(c)
    assert _debts(c) == 0, (_debts(c) / USD, c._room(_key(8, 0), "USD") / USD)


# ---- 2. fairness: writers without equity beside the largest balance ---------------------------------------
def _paid_beside_writers(writers: int) -> tuple:
    """Construction 4's loss of about 9,900 USD; H of 12,000 USD, 1,000 bystanders of 10 USD, and
    writers of 12,000 USD cash and 1 quantum of equity (short 4 ETH futures, their longs accounts
    of cash -12,000 USD: self-trades that cost their owner nothing). What H and the bystanders paid."""
    c, _ = construction(Clearing, 4, 1)
    _inject(c, _key(5, 0), {"USD": -1_000_000 * USD + 1})
    _writers(c, writers)
    h = _key(6, 0)
    _inject(c, h, {"USD": 12_000 * USD})
    for i in range(1_000):
        _inject(c, _key(7, i), {"USD": 10 * USD})
    c.root()
    _rally(c)
    assert _debts(c) == 0
    return (12_000 * USD - c.accounts[h].collateral["USD"],
            sum(10 * USD - c.accounts[_key(7, i)].collateral.get("USD", 0) for i in range(1_000)))


def test_writers_without_equity_do_not_move_the_largest_balances_share_to_the_smallest():
    """As found (USD): without writers H pays 8,164.95 and the bystanders 1,735.05 (its group's
    parts); with 255 writers in H's group H pays its part of a group of 3,072,000 USD, 38.67, and
    the bystanders 9,861.33, 98.6% of all they hold. (Every positive balance in proportion, as
    before session 10: H 5,400, bystanders 4,500; 5cae9f6, each group up to its equity: H 9,900,
    bystanders 0.) H's owner, owning the writers too, moves 8,126 USD of its share onto them.
    Since the revert (8e595d2, each group up to its equity) H pays its group's share again."""
    alone, beside = _paid_beside_writers(0), _paid_beside_writers(255)
    assert alone[0] + alone[1] == beside[0] + beside[1] + 255  # the same loss; the writers gave 1 quantum each
    assert beside[1] <= alone[1], ([q / USD for q in alone], [q / USD for q in beside])


def _writers_of(c: Clearing, n: int, tag: int, cash: int) -> None:
    """n writers short 4 ETH futures (12,000 USD) with cash left at cash: equity cash - 12,000 USD."""
    _writers(c, n, tag)
    for i in range(n):
        _inject(c, _key(tag, i), {"USD": cash - 12_000 * USD - 1})


@pytest.mark.xfail(strict=True, reason="largest first (the rule, docs/CLEARING.md 'What the rule does not stop'): "
                   "an account of nearly H's size one group below pays nothing while H's group has the equity "
                   "(H 9,645 USD, A 0; every balance in proportion: 4,005 and 3,971)")
def test_two_accounts_of_nearly_equal_size_and_equity_pay_alike():
    """H (12,000 USD) among 255 writers of 12,001 USD (equity 1 USD each); the attacker's A (11,900
    USD) below its own 255 writers of 11,950 USD (equity below 0); 1,000 bystanders of 5 USD; a loss
    of about 9,900 USD. As found (USD): H 4,607.63, A 37.37, bystanders 5,000 (all they hold). Every
    positive balance in proportion (before session 10): H 4,004.84, A 3,971.47, bystanders
    1,668.69; 5cae9f6: H 9,645, A 0, bystanders 0. The first walk gives each its part (about 38 USD:
    both groups are mostly writers), drains the bystanders, and the second walk's first group,
    the largest balances read again, is H's, which pays the rest up to its equity. Since the revert
    (8e595d2, each group up to its equity): H 9,645, A 0, as 5cae9f6."""
    c, _ = construction(Clearing, 4, 1)
    _inject(c, _key(5, 0), {"USD": -1_000_000 * USD + 1})
    _writers_of(c, 255, 9, 12_001 * USD)
    _writers_of(c, 255, 12, 11_950 * USD)
    h, a = _key(6, 0), _key(6, 1)
    _inject(c, h, {"USD": 12_000 * USD})
    _inject(c, a, {"USD": 11_900 * USD})
    for i in range(1_000):
        _inject(c, _key(7, i), {"USD": 5 * USD})
    c.root()
    _rally(c)
    assert _debts(c) == 0
    paid_h, paid_a = 12_000 * USD - c.accounts[h].collateral["USD"], 11_900 * USD - c.accounts[a].collateral["USD"]
    # both kept most of their equity: each should pay about its balance's share of what the other pays
    assert paid_a * 12_000 >= paid_h * 11_900 // 2, (paid_h / USD, paid_a / USD)


def test_no_member_pays_past_its_equity(monkeypatch):
    """Every group of every step-6 charge over the random markets above: each member at most its
    equity, a group at most what was unpaid (992c769's first walk also held each member to its
    part of the group's charge; reverted)."""
    groups = profit_groups(monkeypatch)  # (and steps 3-5's charges to cash with nothing pending)
    monkeypatch.setattr(Clearing, "profit_payers", Clearing.profit_payers)
    for seed in range(200):
        Clearing.profit_payers = random.Random(seed).choice([1, 2, 3, 5, 256])
        c = _shape(Clearing, seed)
        for r in range(3):
            try:
                _round(c, random.Random(seed * 10 + r), r)
            except Rejected:
                pass
    assert len(groups) > 20
    for unpaid, before, paid, got, _ in groups:
        assert sum(paid.values()) == got <= unpaid
        for h, q in paid.items():
            assert 0 <= q <= before[h][1], (unpaid, q)


def test_random_markets_leave_no_debt_beside_anyones_equity(monkeypatch):
    """Invariant 6's exception is only a market whose equity together falls short of the loss. As
    found before session 11 (equity in positions beside no cash never charged): 30 of the 1,200
    marks left a new debt while the accounts' equity covered it, e.g. (seed, round, USD) (15, 2,
    9,900), (88, 0, 12,597.28), (121, 2, 9,899.18)."""
    monkeypatch.setattr(Clearing, "profit_payers", Clearing.profit_payers)
    _, _, beside_anyone = _streams(range(400))
    assert beside_anyone == []
