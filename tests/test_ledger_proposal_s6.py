"""Attacks on clearing proposals and validation cost, sixth session: a client with several
accounts, a flooding stranger, a Byzantine proposer. Work is counted, never timed. Every block
built here is checked by a second, software-only validator (same state root, no violation).

1. Registrations cut blocks into runs (found and fixed): each registration ended the columnar
   run before it, and every run copies the block's whole working set (nonce, cash and position
   columns; every holder of an underlying once a mark has valued it), so a mempool of
   "deposit, deposit, register" repeated (any client can send it; registrations are free) made
   the proposer and every validator do (block / 3) x (working set) work: 8.8 s instead of 35 ms
   to validate 3,000 deposits and 1,500 registrations on a state with 50,000 holders. Now a
   registration whose key no earlier transaction of the run names is applied ahead of the run
   (equivalent: nothing before it in the run can see the new account), so only marks cut runs.
2. Short accounts made _evict_short quadratic (found and fixed): each short account walked every
   kept transaction up to its last one, so S accounts going short in one fill of K kept
   transactions cost S x K / 2 steps (0.09 s for 2,000, 2.2 s for 10,000 per fill, and a fill
   can repeat 9 times a proposal). Now one pass over the kept transactions serves them all.
3. A Byzantine block was bounded only by the 64 MiB frame (fixed: MAX_BLOCK_TXS, refused before
   any signature is checked).
4. accel refusing an input (ValueError) in a run or the block's end margin raised out of propose
   (fixed: the fill is broken and the proposal falls back to what is safe).
5. One account's consecutive deposits could fill the client API's whole mempool (fixed: a window
   of max(4 x max_txs, 1024) nonces past the committed one).
6. Every network signed chain id 1 (fixed in the app: ClearingApp(chain_id=...)).
7. Marks below the oracle quorum (no signature needed) cut the proposal's first fill into runs
   (fixed: refused where they stand, the run goes on)."""
import hashlib
import random

import pytest
from nacl.signing import SigningKey

from consensus.apps import clearing_app
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing import Rejected
from consensus.apps.clearing_app import ClearingApp
from consensus.verify import Verifier
from tests.test_clearing_columns import funded_genesis
from tests.test_clearing_properties import K, O, ORACLES, T0, USD, USERS, as_txs, block_of, signed

VOLS = {1: 0.7, 2: 0.7, 4: 0.7}


pytestmark = pytest.mark.usefixtures("quiet_logs")


def users(base: int, n: int):
    sk = [SigningKey(bytes([base]) + i.to_bytes(4, "big") * 7 + bytes(3)) for i in range(n)]
    return sk, [bytes(s.verify_key) for s in sk]


class Counting:
    """clearing_app.apply_run wrapped: how many runs it was asked to apply (each copies the
    block's working set)."""

    def __init__(self, monkeypatch):
        self.calls, real = 0, clearing_app.apply_run

        def counted(state, txs):
            self.calls += 1
            return real(state, txs)
        monkeypatch.setattr(clearing_app, "apply_run", counted)


def reference(parent, bodies: list[bytes]):
    """The one-by-one reference: each transaction applied alone in block order (deferred margin,
    the block's end checked), no runs. The state, or None if the block is invalid."""
    state = parent.clearing.snapshot()
    state.defer = True
    state.begin_block()
    try:
        for b in bodies:
            ctx.apply(state, ctx.decode(b))
        if state.end_of_block():
            return None
    except Rejected:
        return None
    state.defer = False
    return state


def agree(proposer, validators, txs, state):
    """Every validator accepts the proposal with the proposer's root; the one-by-one reference
    reaches that root; no invariant is violated."""
    ref = reference(proposer.genesis, [txs.bodies.item(i) for i in range(len(txs))])
    assert ref is not None
    assert ref.root() == state.clearing.root()
    for v in validators:
        verdict = v.validate(v.genesis, block_of(txs, bytes(32), state.root, v), ((), (), ()))
        assert verdict.ok, verdict.reason
        assert verdict.state.root == state.root
        assert verdict.state.clearing.violations() == []


# ---- 1. registrations cutting runs -------------------------------------------------------------


def registration_flood(n: int, with_mark: bool = True):
    """A funded market, 2n funded accounts, and a mempool of an oracle mark (which brings every
    holder of BTC into the block's working set), then n times: two deposits by existing accounts
    and the registration of a fresh key."""
    c = funded_genesis()
    (sk, ks), (nk, nks) = users(1, 2 * n), users(2, n)
    for k in ks:
        c.register(k)
    items = [signed(ctx.mark("BTC", 60_100.0, 2, T0 + 120, VOLS, O[:2]), ORACLES[:2])] if with_mark else []
    for i in range(n):
        items += [signed(ctx.deposit(ks[2 * i], 0, "USD", USD), [sk[2 * i]]),
                  signed(ctx.deposit(ks[2 * i + 1], 0, "USD", USD), [sk[2 * i + 1]]),
                  signed(ctx.register(nks[i]), [nk[i]])]
    return c, items


def test_registrations_between_deposits_do_not_cut_validation_into_runs(monkeypatch):
    n = 40
    c, items = registration_flood(n)
    proposer = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=10_000)
    soft = ClearingApp(Verifier("software"), c.snapshot())
    accel_v = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), sig_cache=False)
    assert proposer.submit_many(items) == [""] * len(items)
    txs, state = proposer.propose(proposer.genesis, set())
    assert len(txs) == len(items)
    agree(proposer, [soft, accel_v], txs, state)
    runs = Counting(monkeypatch)
    verdict = accel_v.validate(accel_v.genesis, block_of(txs, bytes(32), state.root, accel_v), ((), (), ()))
    assert verdict.ok and verdict.state.root == state.root
    assert runs.calls <= 1, f"{runs.calls} runs for one stretch of deposits between registrations (was {n})"


def test_registrations_between_deposits_do_not_cut_proposals_into_runs(monkeypatch):
    n = 40
    c, items = registration_flood(n)
    proposer = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=10_000)
    assert proposer.submit_many(items) == [""] * len(items)
    runs = Counting(monkeypatch)
    txs, state = proposer.propose(proposer.genesis, set())
    assert len(txs) == len(items)
    assert runs.calls <= 1, f"{runs.calls} runs in the proposal's fill (was {n})"
    # the block keeps the arrival order (a registration's place in it does not move)
    assert [txs.bodies.item(i) for i in range(len(txs))] == [b for b, _ in items]


def test_a_registration_after_a_transaction_naming_its_key_still_comes_after_it():
    """deposit(K) then register(K) in one block: the deposit is refused (K is not registered yet)
    whatever the runs, so the block is invalid for every validator, and a proposer leaves the
    deposit out and keeps the registration."""
    c = funded_genesis()
    (sk, ks), (nk, nks) = users(3, 2), users(4, 1)
    for k in ks:
        c.register(k)
    items = [signed(ctx.deposit(ks[0], 0, "USD", USD), [sk[0]]),
             signed(ctx.deposit(nks[0], 0, "USD", USD), [nk[0]]),
             signed(ctx.deposit(ks[1], 0, "USD", USD), [sk[1]]),
             signed(ctx.register(nks[0]), [nk[0]]),
             signed(ctx.deposit(ks[0], 1, "USD", USD), [sk[0]])]
    soft = ClearingApp(Verifier("software"), c.snapshot())
    accel_v = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    bad = as_txs(items)
    for v in (soft, accel_v):
        verdict = v.validate(v.genesis, block_of(bad, bytes(32), bytes(32), v), ((), (), ()))
        assert not verdict.ok and "transaction 1" in verdict.reason and "not registered" in verdict.reason
    assert reference(soft.genesis, [b for b, _ in items]) is None
    proposer = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    assert proposer.submit_many(items) == [""] * len(items)
    txs, state = proposer.propose(proposer.genesis, set())
    assert [txs.bodies.item(i) for i in range(len(txs))] == [items[i][0] for i in (0, 2, 3, 4)]
    agree(proposer, [soft, accel_v], txs, state)


def test_random_blocks_of_registrations_deposits_trades_and_withdrawals_match_one_by_one():
    """Blocks mixing registrations (some of keys named earlier in the block, some twice), deposits
    (some of accounts registered later in the block), trades, withdrawals and a mark: the
    validators' verdict and root are the one-by-one reference's, and a proposer fed the same
    transactions builds a block every validator accepts."""
    rng = random.Random(6)
    sk, ks = users(5, 12)
    for trial in range(25):
        c = funded_genesis()
        for k in ks[:6]:
            c.register(k)
            c.deposit(k, 0, "USD", 100_000 * USD)
        nonce = {k: (1 if i < 6 else 0) for i, k in enumerate(ks)}
        items = []
        for _ in range(rng.randrange(5, 30)):
            i, j = rng.sample(range(12), 2)
            kind = rng.choice(["register", "register", "deposit", "deposit", "trade", "withdraw", "mark"])
            if kind == "register":
                items.append(signed(ctx.register(ks[i]), [sk[i]]))
                continue
            if kind == "mark":
                if not any(ctx.decode(b).op == ctx.MARK for b, _ in items):
                    items.append(signed(ctx.mark("BTC", 60_050.0, 2, T0 + 120, VOLS, O[:2]), ORACLES[:2]))
                continue
            n = nonce[ks[i]]
            if kind == "deposit":
                body, who = ctx.deposit(ks[i], n, "USD", 50_000 * USD), [sk[i]]
            elif kind == "withdraw":
                body, who = ctx.withdraw(ks[i], n, "USD", rng.choice([USD, 40_000 * USD])), [sk[i]]
            else:
                body, who = ctx.trade(ks[i], n, ks[j], nonce[ks[j]], 3, 1, 60_000 * USD), [sk[i], sk[j]]
                nonce[ks[j]] += 1
            nonce[ks[i]] += 1
            items.append(signed(body, who))
        bodies = [b for b, _ in items]
        soft = ClearingApp(Verifier("software"), c.snapshot())
        accel_v = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
        ref = reference(soft.genesis, bodies)
        block = as_txs(items)
        for v in (soft, accel_v):
            root = ref.root() if ref is not None else bytes(32)
            verdict = v.validate(v.genesis, block_of(block, bytes(32), root, v), ((), (), ()))
            assert verdict.ok == (ref is not None), (trial, verdict.reason)
            if ref is not None:
                assert verdict.state.clearing.leaves() == ref.leaves()
        proposer = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
        proposer.submit_many(items)
        txs, state = proposer.propose(proposer.genesis, set())
        agree(proposer, [ClearingApp(Verifier("software"), c.snapshot())], txs, state)


# ---- 2. many short accounts in one fill --------------------------------------------------------


class CountingList(list):
    """A list that counts the items iterated out of it."""
    steps = 0

    def __iter__(self):
        for x in list.__iter__(self):
            CountingList.steps += 1
            yield x


def short_crowd(s: int):
    """s attacker accounts each short one BTC future (committed), each sending a withdrawal that
    leaves it below initial margin; an honest pair trading after them."""
    c = funded_genesis()
    (sk, ks), (hk, hks) = users(6, s + 1), users(7, 2)
    maker = ks[s]
    c.register(maker)
    c.deposit(maker, 0, "USD", 10**9 * USD)
    for i, k in enumerate(ks[:s]):
        c.register(k)
        c.deposit(k, 0, "USD", 20_000 * USD)
        c.trade(maker, 1 + i, k, 1, 3, 1, 60_000 * USD)
    for k in hks:
        c.register(k)
        c.deposit(k, 0, "USD", 100_000 * USD)
    items = [signed(ctx.withdraw(ks[i], 2, "USD", 19_000 * USD), [sk[i]]) for i in range(s)]
    items.append(signed(ctx.trade(hks[0], 1, hks[1], 1, 3, 1, 60_000 * USD), [hk[0], hk[1]]))
    return c, items


def test_many_short_accounts_cost_one_pass_over_the_fill():
    s = 150
    c, items = short_crowd(s)
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    assert app.submit_many(items) == [""] * len(items)
    candidates = list(app.mempool.items())
    fill = app._fill(app.genesis, candidates, set(), False)
    assert len(fill.short) == s and len(fill.kept) == s + 1
    CountingList.steps = 0
    app._evict_short(candidates, CountingList(fill.kept), fill.short)
    assert CountingList.steps <= 2 * len(fill.kept), f"{CountingList.steps} steps for {s} short accounts (was ~s^2/2)"
    assert len(app.mempool) == 1  # every short account lost its withdrawal, the honest trade stays


def test_many_short_accounts_are_evicted_and_the_honest_trade_gets_in():
    c, items = short_crowd(60)
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    assert app.submit_many(items) == [""] * len(items)
    txs, state = app.propose(app.genesis, set())
    assert [txs.bodies.item(i) for i in range(len(txs))] == [items[-1][0]]
    assert all(app.refused[h].startswith("left account") for h in
               [hashlib.sha256(b).digest() for b, _ in items[:-1]])
    agree(app, [ClearingApp(Verifier("software"), c.snapshot())], txs, state)


# ---- 3. blocks longer than any honest proposer builds -------------------------------------------


def test_a_block_over_max_block_txs_is_refused_before_its_signatures_and_proposals_stay_under(monkeypatch):
    """A Byzantine proposer's block was bounded only by the 64 MiB frame (600,000 registrations,
    6,000 times a node's default block), and every validator checked every signature in it. Now a
    block over MAX_BLOCK_TXS (here made 30) is refused before any signature is checked, whatever
    the validator's own max_txs, and a proposer never builds one."""
    c, items = registration_flood(20, with_mark=False)  # 60 valid transactions
    big = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=10_000)
    assert big.submit_many(items) == [""] * len(items)
    txs, state = big.propose(big.genesis, set())
    assert len(txs) == 60
    monkeypatch.setattr(clearing_app, "MAX_BLOCK_TXS", 30)
    for v in (ClearingApp(Verifier("software"), c.snapshot(), max_txs=10_000),
              ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=10_000, sig_cache=False)):
        checked = []
        real = v.verifier.verify_all
        monkeypatch.setattr(v.verifier, "verify_all", lambda *a: checked.append(1) or real(*a))
        verdict = v.validate(v.genesis, block_of(txs, bytes(32), state.root, v), ((), (), ()))
        assert not verdict.ok and "at most 30" in verdict.reason
        assert checked == []
    proposer = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=10_000)
    assert proposer.max_txs == 30
    assert proposer.submit_many(items) == [""] * len(items)
    txs, state = proposer.propose(proposer.genesis, set())
    assert len(txs) == 30
    agree(proposer, [ClearingApp(Verifier("software"), c.snapshot())], txs, state)


# ---- 4. accel refusing an input inside a proposal ----------------------------------------------


def _margined_mempool():
    c = funded_genesis()
    n = [c.accounts[k].nonce for k in K]
    items = [signed(ctx.trade(K[0], n[0], K[1], n[1], 3, 1, 60_000 * USD), [USERS[0], USERS[1]]),
             signed(ctx.withdraw(K[2], n[2], "USD", USD), [USERS[2]]),
             signed(ctx.deposit(K[3], n[3], "USD", USD), [USERS[3]])]
    return c, items


def test_accel_refusing_the_margin_call_at_the_blocks_end_does_not_raise_out_of_propose(monkeypatch):
    """accel.portfolio_margin raising ValueError (how accel refuses an input) at the end of a fill
    came out of propose as Rejected (only _Internal was caught there), against invariant 4; the
    leader lost its view, and every leader every view while the state made accel refuse. Now the
    fill is broken and the proposal falls back to what is safe (nothing here: every signer is
    held back), valid for a software-only validator (whose margin is NumPy's), and nothing is
    refused for it."""
    import accel
    c, items = _margined_mempool()
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    assert app.submit_many(items) == [""] * 3

    def refuses(*a, **k):
        raise ValueError("the backend refuses this batch")
    monkeypatch.setattr(accel, "portfolio_margin", refuses)
    txs, state = app.propose(app.genesis, set())
    assert len(txs) == 0
    assert len(app.mempool) == 3 and not app.refused
    agree(app, [ClearingApp(Verifier("software"), c.snapshot())], txs, state)


def test_a_run_raising_valueerror_does_not_raise_out_of_propose(monkeypatch):
    c, items = _margined_mempool()
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    assert app.submit_many(items) == [""] * 3

    def refuses(state, txs):
        raise ValueError("refused")
    monkeypatch.setattr(clearing_app, "apply_run", refuses)
    monkeypatch.setattr(clearing_app, "MIN_RUN", 2)  # (a run this short goes one by one since session 19)
    txs, state = app.propose(app.genesis, set())  # raised Rejected before
    assert len(txs) == 0 and len(app.mempool) == 3 and not app.refused
    agree(app, [ClearingApp(Verifier("software"), c.snapshot())], txs, state)


# ---- 5. one account filling the mempool ----------------------------------------------------------


def test_one_account_cannot_queue_more_than_its_window_of_consecutive_transactions():
    """One account's consecutive deposits are each valid, so never refused nor evicted: 100,000 of
    them filled the client API's mempool (max_mempool) and every other client got 503 until 1,000
    default blocks drained it. Now the mempool admits an account's transactions only up to
    max(4 x max_txs, 1024) nonces past its committed one (here 1024); the window moves on with
    each committed block, and an honest account is unaffected."""
    c = funded_genesis()
    (sk,), (k,) = users(8, 1)
    c.register(k)
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=100)
    window = max(clearing_app.AHEAD_BLOCKS * 100, clearing_app.MIN_AHEAD)
    items = [signed(ctx.deposit(k, n, "USD", USD), [sk]) for n in range(window + 5)]
    reasons = app.submit_many(items)
    assert reasons[:window] == [""] * window
    assert all(r.startswith("ahead: ") for r in reasons[window:])
    honest = signed(ctx.deposit(K[0], c.accounts[K[0]].nonce, "USD", USD), [USERS[0]])
    assert app.submit_many([honest]) == [""]
    txs, state = app.propose(app.genesis, set())
    assert len(txs) == 100
    agree(app, [ClearingApp(Verifier("software"), c.snapshot())], txs, state)
    app.committed(block_of(txs, bytes(32), state.root, app), state)
    assert app.submit_many(items[window:window + 5]) == [""] * 5  # the window moved on by the block


# ---- 6. replay on another network ----------------------------------------------------------------


def test_a_transaction_signed_for_another_network_is_refused_there():
    """Every network had chain id 1 in every body, so a deposit, withdrawal or trade a key signed
    on a test network replayed on another network with the same genesis accounts (same key, same
    nonce). A ClearingApp now takes its network's chain_id: a body of another chain is refused by
    submit_many (with the reason) and makes a block invalid; its own bodies apply as before."""
    c = funded_genesis()
    n = c.accounts[K[0]].nonce
    other = signed(ctx.withdraw(K[0], n, "USD", USD), [USERS[0]])                  # chain 1
    mine = signed(ctx.withdraw(K[0], n, "USD", USD, chain=7), [USERS[0]])          # chain 7
    assert ctx.decode(mine[0], 7).fields == ctx.decode(other[0]).fields
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), chain_id=7)
    assert app.submit_many([other, mine]) == ["malformed: chain id 1, this network is 7", ""]
    txs, state = app.propose(app.genesis, set())
    assert [txs.bodies.item(i) for i in range(len(txs))] == [mine[0]]
    for v in (ClearingApp(Verifier("software"), c.snapshot(), chain_id=7),
              ClearingApp(Verifier("accel", "cpu"), c.snapshot(), chain_id=7)):
        verdict = v.validate(v.genesis, block_of(txs, bytes(32), state.root, v), ((), (), ()))
        assert verdict.ok and verdict.state.root == state.root
        assert v.execute(v.genesis, txs.bodies).root == state.root
        replayed = as_txs([other])
        verdict = v.validate(v.genesis, block_of(replayed, bytes(32), state.root, v), ((), (), ()))
        assert not verdict.ok and "chain id 1, this network is 7" in verdict.reason
    chain1 = ClearingApp(Verifier("software"), c.snapshot())
    verdict = chain1.validate(chain1.genesis, block_of(txs, bytes(32), state.root, chain1), ((), (), ()))
    assert not verdict.ok and "chain id 7, this network is 1" in verdict.reason
    with pytest.raises(ValueError):
        ClearingApp(Verifier("software"), c.snapshot(), chain_id=2**32)


# ---- 7. unsigned marks cutting proposals into runs ---------------------------------------------


def test_marks_without_an_oracle_quorum_do_not_cut_a_proposal_into_runs(monkeypatch):
    """A mark lists its signers, so one listing none needs no signature: the mempool admits it
    (the rules refuse it at the proposal) and any client can send thousands for nothing. Each was
    a barrier of the proposal's first fill, cutting the run and costing a copy of the working set
    (every holder of BTC after the real mark): n of them between deposits made n runs. Then a mark
    the quorum rule refuses (it reads no state and changes none) was refused where it stands and
    the run went on; since session 11 the mempool refuses it with the same reason."""
    n = 30
    c = funded_genesis()
    sk, ks = users(9, 2 * n)
    for k in ks:
        c.register(k)
    items = [signed(ctx.mark("BTC", 60_100.0, 2, T0 + 120, VOLS, O[:2]), ORACLES[:2])]
    junk = []
    for i in range(n):
        signers = i % 2  # none (no signature at all), or one oracle of the two needed
        junk.append(signed(ctx.mark("BTC", 60_000.0 + i, 3 + i, T0 + 200 + i, VOLS, O[:signers]), ORACLES[:signers]))
        items += [signed(ctx.deposit(ks[2 * i], 0, "USD", USD), [sk[2 * i]]),
                  signed(ctx.deposit(ks[2 * i + 1], 0, "USD", USD), [sk[2 * i + 1]]), junk[-1]]
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    # (since session 11 the mempool refuses them, before their signatures are checked)
    reasons = app.submit_many(items)
    assert [r for r in reasons if r] == [f"mark signed by {i % 2} oracle(s), 2 needed" for i in range(n)]
    runs = Counting(monkeypatch)
    txs, state = app.propose(app.genesis, set())
    assert runs.calls <= 1, f"{runs.calls} runs in the proposal's fill (was {n})"
    assert len(txs) == 1 + 2 * n
    agree(app, [ClearingApp(Verifier("software"), c.snapshot())], txs, state)
