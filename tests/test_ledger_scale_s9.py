"""A block's cost follows the block, not the state (issue 20, review s9, helper h2).

Third (/tmp/s9h2): Clearing.snapshot copied the list of every liquidation since genesis for each
block (list(self.liquidations)): a per-block cost and a per-version memory that grow with the
chain's history. ledger_state.Log is that list shared by the versions (frozen chunks, a tail of
its own): 6. a version's copy allocates the same bytes over 10,000 and 40,000 records; Log
against a list through appends, writes, reads and copies (Hypothesis).

Found at 8c29529 (/tmp/s9h2/hold.py): each version of the ledger copied the whole holders set of
every series a block traded (Clearing._holders: set(self.holders[series])), so one trade of a
series with H holders cost O(H) time and kept O(H) memory per uncommitted block: 160,000
holders of one future, 15 ms a block for one trade (2-core machine, shared; 143 ms for a
million-key set copy alone), and the bytes a block allocates grew 3.8x from N to 4N holders.
The state root and every verdict are unchanged: the holders index is only ever read by
membership, size, or sorted (no iteration order reaches a result), so the fix is a
representation, not a rule: ledger_state.VersionedSet, layers of {key: present?} shared by the
copies with a private delta on top (copy costs the delta, at most SET_DELTA entries), merged
log-structured.

Tests:
1. one trade of a widely held series per block: the bytes a block allocates (snapshot, trade,
   state root; tracemalloc's peak, a count, never a time) at 4N holders at most 1.5x N's
   (8c29529: 3.8x);
2. VersionedSet against a plain set over random add / discard / copy streams, parent and copies
   changed independently (Hypothesis): the same members, size, equality, iteration without
   repeats;
3. the holders index through snapshots, a restore (plain sets taken over) and the columnar path of
   a block stays equal to the positions (Clearing.violations) and to the one-by-one engine.

Found the same way (/tmp/s9h2/adl2.py): a book liquidated at a BTC mark holding one contract of
an ETH future was closed against a heap built from all of that future's H holders (_Ranks._heap),
whose mark did not margin them, at every such mark: 7,482 / 21,889 / 81,889 calls at H = 1,000 /
4,000 / 16,000. Now each series auto-deleveraging reaches keeps a SizeIndex (its positions,
versioned like the holders, each layer sorted once): the order is merged from it, the same order
as the heap's (the differential below runs the property tests' dense streams through the app
with the index rebuilt from every holder at each use, the old pass, and requires the same
blocks, states and liquidations).

4. marks each liquidating a book with one contract of a future of another underlying held by N
   accounts: the calls of the marks after the first (which builds the index) at 4N at most 1.5x
   N's (before: about 4x);
5. random markets on forks of versions (positions grown, shrunk, flipped, opened, closed between
   marks that liquidate thin books holding the ETH future) and a columnar block through the app
   whose flip only the columns' write tells the index: the kept index against a fresh pass over
   the holders at every use, the same records and positions (tests/test_ledger_scale_s6.py's
   random markets check it against the Reference's sort of all holders, mark after mark)."""
import random
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import consensus.apps.ledger_state as ledger_state
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing import Clearing, Liquidation
from consensus.apps.clearing_app import ClearingApp
from consensus.apps.ledger_state import Log, SizeIndex, VersionedSet
from consensus.verify import Verifier
from tests.test_clearing_properties import USD
from tests.test_clearing_columns import funded_genesis, outcome
from tests.test_clearing_properties import K, O, OPTIONS, T0
from tests.test_ledger_scale_s6 import _calls, _fresh, _inject, _position, _traded


def _key(kind: int, i: int) -> bytes:
    return bytes([kind]) + i.to_bytes(31, "big")


def _widely_held(n: int) -> Clearing:
    """n holders long one future (series 3) each against one whale; two traders with cash."""
    c = _fresh(Clearing)
    whale = _key(9, 0)
    _inject(c, whale, {"USD": 10**9 * USD})
    for i in range(n):
        _inject(c, _key(1, i), {"USD": 100_000 * USD})
        _position(c, _key(1, i), whale, 3, 1)
    for j in range(2):
        _inject(c, _key(2, j), {"USD": 100_000 * USD})
    c.root()
    return c


def _block_bytes(c: Clearing, blocks: int = 4) -> tuple[Clearing, list[int]]:
    """Each block: a new version, one trade of series 3 between the two traders, its state root;
    the peak bytes each block allocated."""
    peaks = []
    a, b = _key(2, 0), _key(2, 1)
    for nonce in range(blocks):
        tracemalloc.start()
        try:
            c = c.snapshot()
            c.begin_block()
            c.trade(a, nonce, b, nonce, 3, 1, c.marks["BTC"].values[3])
            c.root()
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    return c, peaks


# ---- 1. work (bytes allocated, not time) ---------------------------------------------------------
def test_one_trade_of_a_widely_held_series_costs_the_same_at_n_and_4n_holders(monkeypatch):
    # the accounts map and the tree fold their deltas early, so what is left is the holders index
    monkeypatch.setattr(ledger_state, "REBASE_AT", 64)
    work = []
    for n in (5_000, 20_000):
        c, peaks = _block_bytes(_widely_held(n))
        assert len(c.holders[3]) == n + 3 and not c.violations()
        assert c.accounts[_key(2, 0)].positions[3] == 4 and c.accounts[_key(2, 1)].positions[3] == -4
        work.append(max(peaks[1:]))  # the first block after the build folds the build's deltas
    assert work[1] <= 1.5 * work[0], work  # 8c29529: 285 KB -> 1,071 KB (3.8x), the holders copied


# ---- 2. VersionedSet is a set ---------------------------------------------------------------------
_ops = st.lists(st.tuples(st.sampled_from(["add", "discard", "copy", "switch", "update", "diff"]),
                          st.integers(0, 40), st.integers(0, 5)), max_size=300)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(initial=st.sets(st.integers(0, 40), max_size=30), ops=_ops)
def test_versioned_sets_behave_as_sets_through_copies(initial, ops):
    import consensus.apps.ledger_state as ls
    old = ls.SET_DELTA
    ls.SET_DELTA = 2  # many layers and merges in a short stream
    try:
        versions = [(VersionedSet(initial), set(initial))]
        cur = 0
        for op, k, j in ops:
            vs, plain = versions[cur]
            if op == "add":
                vs.add(k), plain.add(k)
            elif op == "discard":
                vs.discard(k), plain.discard(k)
            elif op == "update":
                vs.update(range(k, k + j)), plain.update(range(k, k + j))
            elif op == "diff":
                vs.difference_update(range(k, k + j)), plain.difference_update(range(k, k + j))
            elif op == "copy":
                versions.append((vs.copy(), set(plain)))
            else:
                cur = k % len(versions)
            for v, p in versions:  # every version still its own set
                listed = list(v)
                assert len(listed) == len(set(listed)) == len(v) == len(p)
                assert set(listed) == p and v == p and p == v and bool(v) == bool(p)
                assert all((x in v) == (x in p) for x in range(-1, 42))
    finally:
        ls.SET_DELTA = old


# ---- 3. the index through versions, restores and the columnar path --------------------------------
def test_the_holders_index_stays_the_positions_through_versions_and_restore():
    from consensus.apps import clearing_snapshot
    c = _widely_held(50)
    forks = []
    for step in range(6):  # a chain of versions, each opening and closing positions, and forks
        c = c.snapshot()
        for i in range(step, 50, 7):
            _position(c, _key(1, i), _key(9, 0), 3, -1)  # closes holder i
        for i in range(step * 3, step * 3 + 5):
            _inject(c, _key(3, i), {"USD": 10_000 * USD})
            _position(c, _key(3, i), _key(9, 0), 3, 1)
        forks.append((c, {k for k, a in c.accounts.items() if 3 in a.positions}))
    for v, held in forks:  # later versions changed nothing of the earlier ones
        assert v.holders[3] == held and set(v.holders[3]) == held and not v.violations()
    blob = clearing_snapshot.encode(c)
    back = clearing_snapshot.restore(_fresh(Clearing), blob, c.root(), Verifier("software").sha256_rows)
    assert back.holders[3] == c.holders[3]
    nxt = back.snapshot()  # the restore's plain set taken over, then changed
    _position(nxt, _key(3, 0), _key(9, 0), 3, -1)
    assert not nxt.violations() and _key(3, 0) in back.holders[3] and not back.violations()


def test_versioned_sets_compare_and_combine_as_sets():
    v, p = VersionedSet({1, 2, 3}), {1, 2, 3}
    w = v.copy()
    w.discard(1)
    w.add(4)
    q = {2, 3, 4}
    assert v >= {1, 2} and {1, 2} <= v and not v >= {4} and w > {2, 3} and {2, 3} < w and v != w and w == q
    assert (v | w) == {1, 2, 3, 4} and (v & w) == {2, 3} and (v - w) == {1} and (v ^ w) == {1, 4}
    assert v.union(q) == p | q and v.intersection(q) == p & q and v.difference(q) == p - q
    assert v.issubset({1, 2, 3, 9}) and v.issuperset({1}) and not w.issubset(p) and v.isdisjoint({7})
    assert v == p and set(v) == p and sorted(w) == [2, 3, 4] and v != [1, 2, 3]



# ---- 4. auto-deleveraging against a widely held series of another underlying ---------------------
def _other_underlying(n: int) -> list[int]:
    """n holders long one ETH future (series 6) each against one whale; then, per mark, a thin book
    short a BTC future and holding one ETH future (long against the whale's short side, or short
    to a holder against the longs), liquidated by a BTC rally: the calls of each mark."""
    c = _fresh(Clearing)
    whale = _key(9, 0)
    _inject(c, whale, {"USD": 10**9 * USD})
    for i in range(n):
        _inject(c, _key(1, i), {"USD": 100_000 * USD})
        _traded(c, _key(1, i), whale, 6, 1 + i % 3)
    work = []
    for r in range(4):
        c = c.snapshot()
        thin, rich = _key(2, r), _key(3, r)
        _inject(c, thin, {"USD": 7_000 * USD})
        _inject(c, rich, {"USD": 100_000 * USD})
        _traded(c, rich, thin, 3, 1)
        if r % 2:
            _traded(c, thin, whale, 6, 1)
        else:
            _traded(c, _key(1, r), thin, 6, 1)
        c.root()
        index = c.marks["BTC"].index * 1.13
        work.append(_calls(lambda: c.mark("BTC", index, {i: 0.7 for i in OPTIONS["BTC"]}, r + 2, T0 + 60 * (r + 2),
                                          O[:2])))
        assert c.liquidations[-1].account == thin and not c.accounts[thin].positions and not c.violations()
    return work


def test_liquidating_against_a_series_of_another_underlying_costs_the_same_at_n_and_4n_holders():
    small, large = _other_underlying(1_000), _other_underlying(4_000)
    assert max(large[1:]) <= 1.5 * max(small[1:]), (small, large)  # 8c29529: ~4x, a pass over all holders


# ---- 5. the kept index gives the order a fresh pass gives ----------------------------------------
def _fresh_index(self, series):
    """The order as before the kept index: every holder's position read at each use."""
    return SizeIndex({h: self.accounts[h].positions.get(series, 0) for h in self.holders.get(series, ())})


def _forked_market(seed: int) -> list:
    """A market of holders of the ETH future (series 6) and the BTC future (3) with sizes of every
    kind, and rounds on random earlier versions (forks): positions grown, shrunk, flipped, opened
    and closed, then a thin book holding ETH futures on a random side liquidated by a BTC rally.
    What each round's mark did: the liquidation records and the positions of series 6 and 3."""
    rng = random.Random(seed)
    c = _fresh(Clearing)
    whale = _key(9, 0)
    _inject(c, whale, {"USD": 10**10 * USD})
    n = rng.choice([5, 20, 60])
    for i in range(n):
        _inject(c, _key(1, i), {"USD": 1_000_000 * USD})
        for series in (6, 3):
            if rng.random() < 0.8:
                _traded(c, _key(1, i), whale, series, rng.choice([-7, -3, -1, 1, 2, 5, 9]))
    versions, seen = [c], []
    for r in range(8):
        c = rng.choice(versions).snapshot()
        for _ in range(rng.randint(0, 12)):  # grown, shrunk, flipped, closed, opened
            who = _key(1, rng.randrange(n + 5))
            if who not in c.accounts:
                _inject(c, who, {"USD": 1_000_000 * USD})
            series = rng.choice([6, 6, 3])
            held = c.accounts[who].positions.get(series, 0)
            d = rng.choice([-held or 1, rng.randint(-6, 6) or 2, -2 * held or -1])
            _traded(c, who, whale, series, d)
        thin, rich = _key(2, r), _key(3, r)
        _inject(c, thin, {"USD": 7_000 * USD})
        _inject(c, rich, {"USD": 1_000_000 * USD})
        _traded(c, rich, thin, 3, 1)
        size = rng.randint(1, 12)
        other = rng.choice([whale, *(k for k in sorted(c.holders.get(6, ())) if k != thin)])
        if rng.random() < 0.5:
            _traded(c, thin, other, 6, size)
        else:
            _traded(c, other, thin, 6, size)
        m = c.marks["BTC"]
        c.mark("BTC", m.index * 1.13, {i: 0.7 for i in OPTIONS["BTC"]}, m.sequence + 1, m.timestamp + 60, O[:2])
        assert not c.violations()
        seen.append((c.liquidations[len(versions[0].liquidations):],
                     {i: {k: a.positions.get(i) for k, a in c.accounts.items() if i in a.positions} for i in (3, 6)}))
        versions.append(c)
    return seen


@pytest.mark.parametrize("seed", range(8))
def test_the_kept_order_matches_a_fresh_pass_over_forked_markets(seed, monkeypatch):
    kept = _forked_market(seed)
    assert any(thin[:1] == b"\x02" for records, _ in kept for thin, *_ in records)
    monkeypatch.setattr(Clearing, "_size_index", _fresh_index)
    assert _forked_market(seed) == kept


def test_an_order_changed_by_columnar_runs_is_the_order_auto_deleveraging_follows():
    """Through the app: a BTC rally liquidates account 4 (its ETH future closed against the shorts:
    the index of series 6 is built); a columnar block then flips account 1 from long 2 to short 12
    ETH futures and opens account 0's long 3; the next rally liquidates account 0, whose long
    closes against the largest short, account 1 (12, ahead of account 3's 10): only the columns'
    write tells the index. Each block the same as with a fresh pass over the holders."""
    from tests.test_clearing_columns_attacks import Txs

    app = ClearingApp(Verifier("accel", "cpu"), funded_genesis())
    fut, eth = 3, 6

    def block(parent, make):
        txs = make(Txs(parent.clearing))
        kept = outcome(app, parent, txs)
        real = Clearing._size_index
        Clearing._size_index = _fresh_index
        try:
            assert outcome(app, parent, txs) == kept
        finally:
            Clearing._size_index = real
        assert kept[0] == "ok", kept
        state, _ = app._run(parent, txs)
        state.root = state.clearing.root()
        return state

    p = block(app.genesis, lambda t: [t.trade(2, 3, eth, 5, 3_000 * USD), t.trade(1, 3, eth, 2, 3_000 * USD),
                                      t.trade(4, 3, eth, 1, 3_000 * USD), t.trade(2, 4, fut, 2, 60_000 * USD)])
    p = block(p, lambda t: [t.mark("BTC", 69_000.0)])
    assert [x.account for x in p.clearing.liquidations] == [K[4]] and eth in p.clearing._sizes
    p = block(p, lambda t: [t.trade(2, 1, eth, 14, 3_000 * USD), t.trade(0, 3, eth, 3, 3_000 * USD),
                            t.trade(2, 0, fut, 1, 69_000 * USD), t.wd(0, 30_000 * USD)])
    p = block(p, lambda t: [t.mark("BTC", 80_000.0)])
    c = p.clearing
    assert [x.account for x in c.liquidations] == [K[4], K[0]] and not c.accounts[K[0]].positions
    assert c.accounts[K[1]].positions[eth] == -9 and c.accounts[K[3]].positions[eth] == -10 and not c.violations()


# ---- 6. the liquidation records: shared, not copied per version ----------------------------------
def test_a_version_does_not_copy_the_liquidations_of_the_history():
    work = []
    for n in (10_000, 40_000):
        c = _fresh(Clearing)
        for i in range(n):
            c.liquidations.append(Liquidation(_key(1, i), "USD", i, 0))
        c = c.snapshot()  # the first copy freezes them
        tracemalloc.start()
        try:
            for _ in range(3):
                c = c.snapshot()
                c.liquidations.append(Liquidation(_key(2, 0), "USD", 1, 0))
            work.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert len(c.liquidations) == n + 3 and c.liquidations[n - 1].insurance == n - 1
        assert c.liquidations[-1] == Liquidation(_key(2, 0), "USD", 1, 0)
    assert work[1] <= 1.5 * work[0], work  # 8c29529: a list of every record per version (4x)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(st.lists(st.tuples(st.sampled_from(["append", "set", "copy", "switch", "read"]), st.integers(-50, 50)),
                max_size=200))
def test_logs_behave_as_lists_through_copies(ops):
    versions = [(Log(), [])]
    cur = 0
    for op, k in ops:
        log, plain = versions[cur]
        if op == "append":
            log.append(k), plain.append(k)
        elif op == "set" and plain:
            log[k % len(plain)] = -k
            plain[k % len(plain)] = -k
        elif op == "copy":
            versions.append((log.copy(), list(plain)))
        elif op == "switch":
            cur = k % len(versions)
        elif plain:
            assert log[k % len(plain)] == plain[k % len(plain)] and log[-1] == plain[-1]
            assert log[k % 7:] == plain[k % 7:] and log[:k] == plain[:k]
        for v, p in versions:
            assert len(v) == len(p) and list(v) == p and v == p and (not v) == (not p)
    assert len(versions[0][0]._chunks) <= 2 * max(len(versions[0][1]), 1).bit_length() + 1
