"""Attacker review of the clearing ledger, fifth session (two or a handful of funded accounts, at
times the proposer): money, the insurance fund, halts, proposer censorship. Every block found here
is checked by a second, software-only validator (same state root, Clearing.violations() empty).

1. Censorship through an oracle mark (the open lead of the last review, demonstrated and fixed):
   a chain of five attacker accounts falling short one after another (each fill's short account
   is below maintenance margin at any mark, so a pending oracle mark would liquidate its touched
   book and is left out of fills 0..3, and no fill that a mark refused ran the end-of-block check)
   plus an unlinked attacker account X whose withdrawal leaves it between maintenance and
   initial margin at the pending mark. The partners fill holds the chain back, the mark applies,
   X is short at the block's end -> the block was the safe fallback, every honest trade and
   withdrawal out, block after block, for any fresh mark (X is tuned to each one; the chain's
   transactions are never committed: they cost nothing). The fix: the last fills put every
   registration, each account's leading deposits and every mark before the trades and
   withdrawals, so the marks apply on the same state whatever is held back, and accounts trading
   only among themselves then fill the same way in every such fill.
2. Censorship by block room (found and fixed): one short account sending a block's worth of
   withdrawals ahead of the honest ones filled the first fill's reach, and the later fills look
   only at that reach (the last review's fix), so every block was empty. The fix: a block with
   room left goes on past the reach with accounts that signed nothing in it."""

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing import Mark
from consensus.apps.clearing_app import ClearingApp
from consensus.verify import Verifier
from tests.test_clearing_properties import O, ORACLES, T0, USD, chain, genesis, signed
from tests.test_proposal_starvation_review import keys, supply_of

VOLS = {1: 0.7, 2: 0.7, 4: 0.7}


pytestmark = pytest.mark.usefixtures("quiet_logs")


def blocks(app, validator, heights, attacker, honest, at=lambda h: 0):
    """Blocks proposed by app and checked by a software-only validator (valid, same root,
    invariants); per block, how many of the honest transactions submitted for it got in. The
    honest transactions arrive after the first at(height) of the attacker's."""
    parent, vparent = app.genesis, validator.genesis
    supply = supply_of(parent.clearing)
    out = []
    for h in range(heights):
        mine, theirs = honest(parent.clearing), attacker(parent.clearing, h)
        assert all(r == "" or r.startswith("stale") for r in app.submit_many(theirs[:at(h)]))
        assert app.submit_many(mine) == [""] * len(mine)
        assert all(r == "" or r.startswith("stale") for r in app.submit_many(theirs[at(h):]))
        txs, parent, vparent = chain(app, validator, parent, vparent, supply)
        got = {txs.bodies.item(i) for i in range(len(txs))}
        out.append(sum(b in got for b, _ in mine))
    return out


# ---- 1. a mark kept out by a chain, applied in the partners fill ----------------------------------


def mark_chain_attack(with_chain=True):
    c = genesis()
    A, AK = keys(200, 5)       # attacker: the chain
    H, HK = keys(220, 2)       # honest: trade with each other only
    (X, Y), (XK, YK) = keys(230, 2)  # attacker: X short a future, Y its counterparty
    for k, q in zip(AK + HK + [XK, YK], [15_000] * 4 + [100_000] + [1_000_000] * 4):
        c.register(k)
        c.deposit(k, 0, "USD", q * USD)
    c.mark("BTC", 60_000.0, VOLS, 1, T0 + 60, O[:2])
    c.trade(YK, 1, XK, 1, 3, 1, 60_000 * USD)  # X short 1 future (committed)

    def honest(state):
        n = state.accounts[HK[0]].nonce, state.accounts[HK[1]].nonce
        return [signed(ctx.trade(HK[0], n[0], HK[1], n[1], 3, 1, 60_000 * USD), [H[0], H[1]]),
                signed(ctx.withdraw(HK[0], n[0] + 1, "USD", USD), [H[0]])]

    def attacker(state, h):
        index, ts = (64_000.0, 62_000.0)[h % 2], T0 + 120 + 60 * h  # any fresh mark will do
        seq = state.marks["BTC"].sequence + 1
        mark = signed(ctx.mark("BTC", index, seq, ts, VOLS, O[:2]), ORACLES[:2])
        new = Mark(index, VOLS, seq, ts, state._series_values("BTC", index, VOLS, ts))
        (equity,), m = state.equity([XK], {"BTC": new}), state.margins([XK], override={"BTC": new})
        target = (m["USD"][0][0] + m["USD"][1][0]) // 2  # between maintenance and initial at the mark
        x = [signed(ctx.withdraw(XK, state.accounts[XK].nonce, "USD", equity["USD"] - target), [X])]
        if not with_chain:
            return x + [mark]
        price = int(state.marks["BTC"].index) * USD

        def link(i):  # A[i+1] buys i+1 futures from A[i]
            return signed(ctx.trade(AK[i + 1], state.accounts[AK[i + 1]].nonce + (i < 3), AK[i],
                                    state.accounts[AK[i]].nonce, 3, i + 1, price), [A[i + 1], A[i]])
        drain = signed(ctx.withdraw(AK[0], state.accounts[AK[0]].nonce + 1, "USD", 14_000 * USD), [A[0]])
        return [link(3), link(2), link(1), link(0), drain] + x + [mark]

    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    validator = ClearingApp(Verifier("software"), c.snapshot())
    return app, validator, honest, attacker


def test_control_x_alone_is_held_back_and_the_honest_transactions_get_in():
    app, validator, honest, attacker = mark_chain_attack(with_chain=False)
    assert blocks(app, validator, 3, attacker, honest) == [2, 2, 2]


def test_a_mark_held_out_by_a_chain_cannot_starve_honest_blocks_through_an_unlinked_account():
    app, validator, honest, attacker = mark_chain_attack()
    assert blocks(app, validator, 4, attacker, honest) == [2, 2, 2, 2]


def test_the_last_fills_find_the_chain_then_x_then_nobody():
    """The fix step by step: fills 0..3 find the chain's accounts one by one (the mark left out
    each time), the first last-resort fill (marks first, the chain's partners held back) finds X,
    the second holds X back too and finds nobody."""
    app, validator, honest, attacker = mark_chain_attack()
    fills = []
    orig = app._fill

    def spy(parent, candidates, held_back, only_safe, free=0):
        f = orig(parent, candidates, held_back, only_safe, free)
        fills.append((len(held_back), only_safe, free, len(f.short)))
        return f
    app._fill = spy
    assert blocks(app, validator, 1, attacker, honest) == [2]
    assert fills == [(0, False, 0, 1), (1, False, 0, 1), (2, False, 0, 1), (3, False, 0, 1),
                     (5, False, 1, 1), (6, False, 1, 0)]


# a market the attacker shapes: its accounts' trades among themselves, withdrawals, deposits, and
# oracle marks within 5% of 60,000 (inside every breaker; nobody honest is ever near a margin)
_attacker_op = st.one_of(
    st.tuples(st.just("trade"), st.integers(0, 5), st.integers(0, 5), st.sampled_from([1, 2, 3, 3]),
              st.integers(1, 6), st.floats(0.5, 1.5)),
    st.tuples(st.just("withdraw"), st.integers(0, 5), st.floats(0.0, 1.0)),
    st.tuples(st.just("deposit"), st.integers(0, 5), st.integers(1, 30_000)),
    st.tuples(st.just("tune"), st.integers(0, 5), st.floats(-0.5, 1.0)),
    st.tuples(st.just("mark"), st.floats(57_000.0, 63_000.0)),
    st.tuples(st.just("chain"), st.integers(1, 4)))


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(st.lists(_attacker_op, max_size=14), st.integers(0, 14)), min_size=3, max_size=3))
def test_accounts_trading_among_themselves_get_into_every_block_whatever_the_attacker_sends(stream):
    assert market(stream, 10_000) == [2] * len(stream)


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(st.lists(_attacker_op, max_size=14), st.integers(0, 14)), min_size=3, max_size=3),
       st.integers(2, 8))
def test_small_blocks_going_on_past_the_first_fills_reach_stay_valid(stream, room):
    """Blocks smaller than the stream (the proposal goes on past the first fill's reach): every one
    valid for the software-only validator, same root, invariants (checked by blocks())."""
    got = market(stream, room)
    assert len(got) == len(stream) and all(0 <= n <= 2 for n in got)


def market(stream, room):
    """The blocks of the attacker's stream (with the honest pair arriving where it says), per block
    the honest transactions that got in."""
    c = genesis()
    A, AK = keys(150, 6)
    H, HK = keys(220, 2)
    C, CK = keys(240, 5)  # a chain of accounts falling short one after another (the first test's)
    for k, q in zip(AK + HK + CK, [15_000, 20_000, 40_000, 50_000, 70_000, 100_000, 1_000_000, 1_000_000]
                    + [15_000] * 4 + [100_000]):
        c.register(k)
        c.deposit(k, 0, "USD", q * USD)
    c.mark("BTC", 60_000.0, VOLS, 1, T0 + 60, O[:2])
    for i in range(5):  # the attacker's accounts start with positions among themselves
        c.trade(AK[i + 1], c.accounts[AK[i + 1]].nonce, AK[i], c.accounts[AK[i]].nonce, 3, i + 1, 60_000 * USD)
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=room)
    validator = ClearingApp(Verifier("software"), c.snapshot(), max_txs=room)

    def honest(state):
        n = state.accounts[HK[0]].nonce, state.accounts[HK[1]].nonce
        return [signed(ctx.trade(HK[0], n[0], HK[1], n[1], 3, 1, 60_000 * USD), [H[0], H[1]]),
                signed(ctx.withdraw(HK[0], n[0] + 1, "USD", USD), [H[0]])]

    def attacker(state, h):
        ops, _ = stream[h]
        nonce = {k: state.accounts[k].nonce for k in AK + CK}
        seq, ts, index = state.marks["BTC"].sequence, state.marks["BTC"].timestamp, state.marks["BTC"].index
        out = []
        for op in ops:
            if op[0] == "trade" and op[1] != op[2]:
                b, s = AK[op[1]], AK[op[2]]
                out.append(signed(ctx.trade(b, nonce[b], s, nonce[s], op[3], op[4],
                                            int(op[5] * (60_000 if op[3] == 3 else 3_000)) * USD), [A[op[1]], A[op[2]]]))
                nonce[b] += 1
                nonce[s] += 1
            elif op[0] in ("withdraw", "deposit", "tune"):
                k = AK[op[1]]
                if op[0] == "tune":  # down to a point between maintenance (0) and initial (1) margin at the last mark
                    at = Mark(index, VOLS, seq, ts, state._series_values("BTC", index, VOLS, ts))
                    (equity,), m = state.equity([k], {"BTC": at}), state.margins([k], override={"BTC": at})
                    im, mm = (m["USD"][0][0], m["USD"][1][0]) if "USD" in m else (0, 0)
                    amount = equity.get("USD", 0) - mm - int(op[2] * (im - mm))
                    op = ("withdraw", op[1])
                else:
                    amount = (int(op[2] * state.accounts[k].collateral.get("USD", 0)) if op[0] == "withdraw"
                              else op[2] * USD)
                if amount > 0:
                    out.append(signed((ctx.withdraw if op[0] == "withdraw" else ctx.deposit)(k, nonce[k], "USD", amount),
                                      [A[op[1]]]))
                    nonce[k] += 1
            elif op[0] == "chain":  # C[i+1] buys i+1 futures from C[i], i = n-1..0, then C0 withdraws
                for i in reversed(range(op[1])):
                    b, s = CK[i + 1], CK[i]
                    out.append(signed(ctx.trade(b, nonce[b], s, nonce[s], 3, i + 1, int(index) * USD), [C[i + 1], C[i]]))
                    nonce[b] += 1
                    nonce[s] += 1
                out.append(signed(ctx.withdraw(CK[0], nonce[CK[0]], "USD", 14_000 * USD), [C[0]]))
                nonce[CK[0]] += 1
            elif op[0] == "mark":
                seq, ts, index = seq + 1, ts + 60, op[1]
                out.append(signed(ctx.mark("BTC", op[1], seq, ts, VOLS, O[:2]), ORACLES[:2]))
        return out

    return blocks(app, validator, len(stream), attacker, honest, at=lambda h: stream[h][1])


# ---- 2. one account's transactions filling the first fill's reach ----------------------------------


def test_one_short_account_filling_the_block_cannot_keep_later_honest_transactions_out():
    """One attacker account S (short 1 future) sends a block's worth of withdrawals, the first
    taking it below initial margin, the rest 1 quantum each, and resends the one evicted each
    block. The first fill reaches only S's (the block is full), finds S short; the later fills
    looked only at what the first reached (the room fix), so every block was empty and the honest
    trade and withdrawal arriving after S's never got in. Now the block goes on past that reach
    with accounts that signed nothing in it."""
    c = genesis()
    (S, Y), (SK, YK) = keys(230, 2)
    H, HK = keys(220, 2)
    for k in (SK, YK, *HK):
        c.register(k)
        c.deposit(k, 0, "USD", (20_000 if k == SK else 1_000_000) * USD)
    c.mark("BTC", 60_000.0, VOLS, 1, T0 + 60, O[:2])
    c.trade(YK, 1, SK, 1, 3, 1, 60_000 * USD)
    room = 40

    def honest(state):
        n = state.accounts[HK[0]].nonce, state.accounts[HK[1]].nonce
        return [signed(ctx.trade(HK[0], n[0], HK[1], n[1], 3, 1, 60_000 * USD), [H[0], H[1]]),
                signed(ctx.withdraw(HK[0], n[0] + 1, "USD", USD), [H[0]])]

    def attacker(state, h):
        n = state.accounts[SK].nonce
        return [signed(ctx.withdraw(SK, n + j, "USD", 1 if j else 10_000 * USD), [S]) for j in range(room)]
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=room)
    validator = ClearingApp(Verifier("software"), c.snapshot(), max_txs=room)
    assert blocks(app, validator, 3, attacker, honest, at=lambda h: room) == [2, 2, 2]


def test_a_new_account_past_the_first_fills_reach_registers_and_deposits_in_the_extension():
    """The extension past the first fill's reach takes registrations too: without them a new
    account's deposit there was refused as unregistered and evicted from the mempool."""
    c = genesis()
    (S, Y, N), (SK, YK, NK) = keys(230, 3)
    for k in (SK, YK):
        c.register(k)
        c.deposit(k, 0, "USD", (20_000 if k == SK else 1_000_000) * USD)
    c.mark("BTC", 60_000.0, VOLS, 1, T0 + 60, O[:2])
    c.trade(YK, 1, SK, 1, 3, 1, 60_000 * USD)
    room = 10
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=room)
    validator = ClearingApp(Verifier("software"), c.snapshot(), max_txs=room)
    new = [signed(ctx.register(NK), [N]), signed(ctx.deposit(NK, 0, "USD", 5 * USD), [N])]
    attack = [signed(ctx.withdraw(SK, 2 + j, "USD", 1 if j else 10_000 * USD), [S]) for j in range(room)]
    assert blocks(app, validator, 1, lambda state, h: attack, lambda state: new, at=lambda h: room) == [2]
