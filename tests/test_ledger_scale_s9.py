"""A block's cost follows the block, not the state (issue 20, review s9, helper h2).

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
   a block stays equal to the positions (Clearing.violations) and to the one-by-one engine."""
import tracemalloc

import pytest
from hypothesis import given, settings, strategies as st

import consensus.apps.ledger_state as ledger_state
from consensus.apps.clearing import Clearing
from consensus.apps.ledger_state import VersionedSet
from consensus.verify import Verifier
from tests.test_clearing_properties import USD
from tests.test_ledger_scale_s6 import _fresh, _inject, _position


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
