"""Versioned state for the ledger: copies that share what they do not change, so a validator holds
the state of every uncommitted block without copying the whole ledger per block (issue 20), and a
block's snapshot and state root cost what the block changed, not what the state holds.

- Versioned: a map whose copy() costs the entries changed lately (at most REBASE_AT), not the
  map's size: a shared, never-mutated base dict, shared frozen layers merged log-structured, and
  a private delta on top.
- MerkleTree: the state root's tree (accel.merkle's rule: RFC 6962 hashes, neighbours paired
  level by level, an odd last node carried up) over a list of leaves that grows and changes in
  place. update() hashes only the changed leaves and their ancestors, one batch per level, and
  sorts them into each level's small newest patch (the older patches frozen, shared and merged
  log-structured as Versioned's layers); copy() shares every level.

Every log-structured merge here (VersionedSet, SizeIndex, Versioned, the tree's levels), the fold
of a quarter of the state into a new base included, is a _Merge done a bounded step at a time:
a copy that freezes d entries advances each merge under way by MERGE_STEP x d entries, so no one
block copies a whole merge (a fold was 116-266 ms at a million accounts, in one block); the reads
use the two layers as they are until it is done. What a step still pays in proportion to n is
CPython's: the dict a merge builds grows by doubling (the step that crosses one moves its
entries, ~30 ns each), and the last version to drop an old base frees it."""
from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import MutableSet, Sequence, Set
from itertools import chain, islice
from typing import Callable

import numpy as np

from accel.merkle import EMPTY_ROOT, MerkleProof

_MISSING = object()
REBASE_AT = 1 << 10  # Versioned's delta, _Level's newest patch: frozen onto the shared layers once larger than this
SET_DELTA = 1 << 10  # VersionedSet: a delta larger than this is frozen into the layers at the next copy
LAYER_RATIO = 4  # a layer is merged into the one under it once it is over a quarter of its size
# A copy that freezes d entries advances each merge under way by MERGE_STEP x d entries: a merge of
# a layer into one of n entries (n + at most ~n/2 to copy) is then done once ~n/5 more entries are
# frozen, about when the layers over it (under n/16 when it started) can first reach the n/4 that
# makes the next merge into it due. One not done by then is only later: the layers over it wait
# and stay apart (a lookup reads one more). Each merge under way (O(log n)) takes its step.
MERGE_STEP = 8
entries_copied = 0  # entries copied or sorted (copies, merges, folds): the tests' count


class _Merge:
    """Two adjacent frozen layers, lower and upper (upper's word wins), being merged into one, a
    bounded step at a time (advance). Neither is ever changed, so the result is theirs alone: the
    versions holding both share the merge, whichever advances it advances it for all, and each
    reads the two layers as they are until one of its copies finds the result and puts it in their
    place (_settle)."""
    __slots__ = ("lower", "upper", "result", "_work")

    def __init__(self, lower, upper, work):
        self.lower, self.upper, self.result, self._work = lower, upper, None, work
        next(work)

    def advance(self, budget: int) -> None:
        if self._work is not None:
            try:
                self._work.send(budget)
            except StopIteration as done:
                self.result, self._work = done.value, None


def _settle(stack: list, merges: tuple, frozen: int, size: Callable, job: Callable) -> tuple[list, tuple]:
    """The layers (oldest first, stack[0] the bottom) and the merges under way once a copy froze
    `frozen` entries onto them (0: none; then the merges done elsewhere are only put in place).
    Each merge under way is advanced by MERGE_STEP x frozen entries, and a new one started (and
    advanced as much) for each two adjacent layers, neither in a merge, the upper more than
    1/LAYER_RATIO of the lower's size; one done at once may be merged again with the one under it.
    job(lower, upper, bottom) is the generator merging two layers (bottom: the lower one is
    stack[0])."""
    budget = MERGE_STEP * frozen
    running = []
    for m in merges:
        if budget:
            m.advance(budget)
        if m.result is None:
            running.append(m)
        else:  # (nothing merges into a layer in a merge: its two layers are still next to each other)
            at = next(i for i, layer in enumerate(stack) if layer is m.lower)
            stack[at:at + 2] = [m.result]
    busy = {id(layer) for m in running for layer in (m.lower, m.upper)}
    i = len(stack) - 1
    while i > 0:
        lower, upper = stack[i - 1], stack[i]
        if id(lower) not in busy and id(upper) not in busy and size(upper) * LAYER_RATIO > size(lower):
            m = _Merge(lower, upper, job(lower, upper, i == 1))
            if budget:
                m.advance(budget)
            if m.result is None:
                running.append(m)
                busy.update((id(lower), id(upper)))
            else:
                stack[i - 1:i + 1] = [m.result]
        i -= 1
    return stack, tuple(running)


def _stepped(parts: list, result: Callable, whole: Callable | None = None):
    """A merge as _Merge runs it: parts is a list of (n, step), step(k) doing about k of the part's
    n entries (at least one, at most 2k) and saying how many it did; each budget sent is spent
    across them in order, and the generator returns result() once they are done. whole, if given,
    builds the same result at once, faster, when the first budget covers it all."""
    global entries_copied
    budget = yield
    if whole is not None and sum(n for n, _ in parts) <= budget:
        entries_copied += sum(n for n, _ in parts)
        return whole()
    for n, step in parts:
        while n > 0:
            if budget <= 0:
                budget = yield
            done = step(min(n, budget))
            entries_copied += done
            n -= done
            budget -= done
    return result()


def _dict_job(lower: dict, upper: dict, bottom: bool = False):
    """{**lower, **upper}: the same dict, in the same order."""
    new: dict = {}

    def part(layer: dict):
        items = iter(layer.items())

        def step(k: int) -> int:
            new.update(islice(items, k))
            return k
        return len(layer), step
    return _stepped([part(lower), part(upper)], lambda: new, lambda: {**lower, **upper})


def _kept_job(lower: dict, upper: dict):
    """{k: v for k, v in {**lower, **upper}.items() if v}: a bottom layer keeps what is present."""
    new: dict = {}
    low, up, get = iter(lower.items()), iter(upper.items()), upper.get

    def from_lower(k: int) -> int:
        new.update({key: w for key, v in islice(low, k) if (w := get(key, v))})
        return k

    def from_upper(k: int) -> int:  # (a key of lower's it keeps is there already, with this value)
        new.update({key: v for key, v in islice(up, k) if v})
        return k
    return _stepped([(len(lower), from_lower), (len(upper), from_upper)], lambda: new)


def _set_job(lower: dict, upper: dict, bottom: bool):
    """The merge of two of VersionedSet's (or SizeIndex's) layers: the bottom keeps what is present."""
    return _kept_job(lower, upper) if bottom else _dict_job(lower, upper)


class Versioned:
    """A dict-like map of never-deleted keys, versioned like VersionedSet: a shared, never-mutated
    base dict, frozen layers over it (dicts, newest first, never changed once frozen, shared by the
    copies) and a private delta on top. copy() freezes a delta larger than REBASE_AT onto the
    layers, merging each layer into the one under it once it is more than 1/LAYER_RATIO of that
    one's size, the base as the bottom one (a fold into a new base; the old base stays with the
    copies that use it), each merge a _Merge: a bounded step a copy. So a copy costs at most
    REBASE_AT entries (or the last block's, if more) and MERGE_STEP times them for each merge under
    way (O(log n) of them), never a whole merge; each change is copied O(log n) times in all; and
    a lookup reads the delta, O(log n) layers and the base."""
    __slots__ = ("_base", "_layers", "_delta", "_len", "_merges")

    def __init__(self, data=None):
        self._base, self._layers, self._delta, self._merges = dict(data or {}), (), {}, ()
        self._len = len(self._base)

    def copy(self) -> "Versioned":
        global entries_copied
        frozen = len(self._delta) if len(self._delta) > REBASE_AT else 0
        if frozen or self._merges:  # (the same map, held differently)
            stack = [self._base, *reversed(self._layers), *([self._delta] if frozen else ())]
            stack, self._merges = _settle(stack, self._merges, frozen, len, _dict_job)
            self._base, self._layers = stack[0], tuple(reversed(stack[1:]))
            if frozen:
                self._delta = {}
        new = object.__new__(Versioned)
        new._base, new._layers, new._delta, new._len = self._base, self._layers, dict(self._delta), self._len
        new._merges = self._merges
        entries_copied += len(self._delta)
        return new

    def __getitem__(self, key):
        delta = self._delta
        if key in delta:
            return delta[key]
        for layer in self._layers:
            if key in layer:
                return layer[key]
        return self._base[key]

    def get(self, key, default=None):
        delta = self._delta
        if key in delta:
            return delta[key]
        for layer in self._layers:
            if key in layer:
                return layer[key]
        return self._base.get(key, default)

    def __contains__(self, key) -> bool:
        if key in self._base or key in self._delta:  # (no key is ever deleted)
            return True
        for layer in self._layers:
            if key in layer:
                return True
        return False

    def __setitem__(self, key, value) -> None:
        if key not in self:
            self._len += 1
        self._delta[key] = value

    def replace_existing(self, pairs: dict) -> None:
        """New values for keys the map holds already (so the count stays)."""
        self._delta.update(pairs)

    def __len__(self) -> int:
        return self._len

    def items(self):
        if self._layers:
            decided: dict = {}
            for layer in (*reversed(self._layers), self._delta):  # oldest first: the newest word wins
                decided.update(layer)
        else:
            decided = self._delta
        yield from decided.items()
        yield from ((k, v) for k, v in self._base.items() if k not in decided)

    def __iter__(self):
        return (k for k, _ in self.items())

    def values(self):
        return (v for _, v in self.items())


class VersionedSet(MutableSet):
    """A set whose copy() costs what changed since the last copies, not the set's size (the holders
    of one series: a block trading it must not copy its million holders, 143 ms, nor keep its own
    copy while uncommitted). Layers of {key: present?} dicts, oldest (the bottom, present keys
    only) first, never changed once frozen and shared by the copies; a private delta on top. A
    copy freezes a delta larger than SET_DELTA onto the layers, merging each layer into the one
    under it once it is more than 1/LAYER_RATIO of that one's size (a log-structured merge, each
    merge a _Merge done a bounded step a copy: each change is copied O(log n) times in all, a
    lookup reads O(log n) small layers). Iteration order is not a set's either way; every user
    sorts or only tests membership. A MutableSet: the comparisons and operators of a set, with
    sets or VersionedSets on either side."""
    __slots__ = ("_layers", "_delta", "_len", "_merges")

    def __init__(self, items=()):
        bottom = dict.fromkeys(items, True)
        self._layers, self._delta, self._len, self._merges = (bottom,), {}, len(bottom), ()

    def _has(self, key) -> bool:
        v = self._delta.get(key)
        if v is not None:
            return v
        for layer in reversed(self._layers):
            v = layer.get(key)
            if v is not None:
                return v
        return False

    __contains__ = _has

    def copy(self) -> "VersionedSet":
        frozen = len(self._delta) if len(self._delta) > SET_DELTA else 0
        if frozen or self._merges:  # (the same set, held differently)
            stack = [*self._layers, *([self._delta] if frozen else ())]
            stack, self._merges = _settle(stack, self._merges, frozen, len, _set_job)
            self._layers = tuple(stack)
            if frozen:
                self._delta = {}
        new = object.__new__(VersionedSet)
        new._layers, new._delta, new._len, new._merges = self._layers, dict(self._delta), self._len, self._merges
        return new

    def add(self, key) -> None:
        if not self._has(key):
            self._delta[key] = True
            self._len += 1

    def discard(self, key) -> None:
        if self._has(key):
            self._delta[key] = False
            self._len -= 1

    def update(self, keys) -> None:
        for k in keys:
            self.add(k)

    def difference_update(self, keys) -> None:
        for k in keys:
            self.discard(k)

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self):
        if not self._delta and len(self._layers) == 1:  # the bottom alone (a mark's pass over a big index)
            return iter(self._layers[0])
        decided: dict = {}
        for layer in (self._delta, *reversed(self._layers[1:])):  # newest first: the first word wins
            for k, v in layer.items():
                decided.setdefault(k, v)
        return chain((k for k, v in decided.items() if v), (k for k in self._layers[0] if k not in decided))

    def __eq__(self, other) -> bool:
        if isinstance(other, Set):
            return len(self) == len(other) and all(k in other for k in self)
        return NotImplemented

    __hash__ = None

    def issubset(self, other) -> bool:
        return all(k in other for k in self) if isinstance(other, Set) else set(self).issubset(other)

    def issuperset(self, other) -> bool:
        return all(k in self for k in other)

    def union(self, *others) -> set:
        return set(self).union(*others)

    def intersection(self, *others) -> set:
        return set(self).intersection(*others)

    def difference(self, *others) -> set:
        return set(self).difference(*others)

    def __repr__(self) -> str:
        return f"VersionedSet({set(self)!r})"


class Log(Sequence):
    """A list the versions share (the ledger's liquidation records): frozen chunks (tuples, never
    changed, shared by the copies) and this version's own tail. copy() freezes the tail, merging
    each chunk into the one before it while it is more than half its size (O(log n) chunks; each
    record copied O(log n) times in all), so a copy costs the records added lately, not the
    history. With `keep`, copy() drops the oldest chunk while the newer ones hold at least keep
    records (so at most about 4 x keep are held, or the records of one copy if more): the records a process accumulated for ever,
    223 bytes each (review s15). Indexes stay those of the whole history (len() counts every
    record); a dropped one raises IndexError, and iteration yields those held. Without a drop it
    compares equal to a list (or Log) of the same items."""
    __slots__ = ("_chunks", "_starts", "_frozen", "_tail", "_keep")

    def __init__(self, items=(), keep: int | None = None):
        self._chunks, self._starts, self._frozen, self._tail, self._keep = (), (), 0, list(items), keep

    def copy(self) -> "Log":
        if self._tail:
            chunks = [*self._chunks, tuple(self._tail)]
            dropped = self.dropped
            if self._keep is not None:  # (before the merges: a chunk the newer ones were merged into stayed)
                rest = sum(map(len, chunks))
                while len(chunks) > 1 and rest - len(chunks[0]) >= self._keep:
                    rest -= len(chunks[0])
                    dropped += len(chunks.pop(0))
            while len(chunks) > 1 and 2 * len(chunks[-1]) > len(chunks[-2]):
                top = chunks.pop()
                chunks.append(chunks.pop() + top)
            at, starts = dropped, []
            for chunk in chunks:
                starts.append(at)
                at += len(chunk)
            self._chunks, self._starts, self._frozen, self._tail = tuple(chunks), tuple(starts), at, []
        new = object.__new__(Log)
        new._chunks, new._starts, new._frozen, new._tail = self._chunks, self._starts, self._frozen, []
        new._keep = self._keep
        return new

    @property
    def dropped(self) -> int:
        """Records dropped from the front (`keep`)."""
        return self._starts[0] if self._starts else self._frozen

    def __len__(self) -> int:
        return self._frozen + len(self._tail)

    def _place(self, i: int) -> tuple[int, int]:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("log index out of range")
        if i < self.dropped:
            raise IndexError(f"log record {i} was dropped (the latest {self._keep} are kept)")
        return i, bisect_right(self._starts, i) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):  # (indexes of the whole history; the dropped ones left out)
            return [self[j] for j in range(*i.indices(len(self))) if j >= self.dropped]
        i, c = self._place(i)
        return self._tail[i - self._frozen] if i >= self._frozen else self._chunks[c][i - self._starts[c]]

    def __setitem__(self, i: int, value) -> None:
        i, c = self._place(i)
        if i >= self._frozen:
            self._tail[i - self._frozen] = value
        else:  # a frozen record: this version's own chunk (never reached by the ledger's rules)
            chunk = list(self._chunks[c])
            chunk[i - self._starts[c]] = value
            self._chunks = self._chunks[:c] + (tuple(chunk),) + self._chunks[c + 1:]

    def __iter__(self):
        return chain(*self._chunks, self._tail)

    def append(self, value) -> None:
        self._tail.append(value)

    def __eq__(self, other) -> bool:
        if isinstance(other, (Log, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        return f"Log({list(self)!r})"


class _Sizes:
    """A frozen layer of a SizeIndex: {key: size} (0: no position), never changed, and its holders
    by side in order, sorted once when first asked for, or built by the merge that made it."""
    __slots__ = ("entries", "views")

    def __init__(self, entries: dict, views: tuple | None = None):
        self.entries, self.views = entries, views

    def size(self) -> int:
        return len(self.entries)

    @staticmethod
    def job(lower: "_Sizes", upper: "_Sizes", bottom: bool):
        """The merge of two layers' entries (_set_job's), as a layer, with its holders in order
        when the lower one's were asked for: merged from the two layers' in the same bounded
        steps, or the merge's result, a whole series' holders at a fold, was sorted in one block
        by the next liquidation against the series (review s21: 94,712 entries at 80,000
        holders, where a block changing 300 positions sorts 8)."""
        entries = yield from _set_job(lower.entries, upper.entries, bottom)
        if lower.views is None:  # never ordered: sorted when first asked for, as the layers under it
            return _Sizes(entries)
        return _Sizes(entries, (yield from _views_job(lower, upper)))

    def view(self, side: int) -> list:
        if self.views is None:
            self.views = (sorted((-p, k) for k, p in self.entries.items() if p > 0),
                          sorted((p, k) for k, p in self.entries.items() if p < 0))
        return self.views[0 if side > 0 else 1]


def _views_job(lower: _Sizes, upper: _Sizes):
    """The holders in order of {**lower, **upper} on each side: lower's not in upper, with upper's,
    merged (upper, frozen after lower was sorted, is sorted already: SizeIndex.copy)."""
    out: tuple = ([], [])

    def part(side: int):
        low, up, newer = lower.view(side), upper.view(side), upper.entries
        merged = heapq.merge((e for e in low if e[1] not in newer), up)
        dst = out[0 if side > 0 else 1]

        def step(k: int) -> int:  # (k entries out; the ones upper overrides are skipped on the way)
            dst.extend(islice(merged, k))
            return k
        return len(low) + len(up), step
    return _stepped([part(1), part(-1)], lambda: out)


class SizeIndex:
    """One series' positions, key -> contracts (or one asset's positive balances, key -> quanta),
    versioned like VersionedSet (layers shared by the copies, a private delta, merged
    log-structured), and ordered(side): its holders on a side by (-|size|, key), the order
    auto-deleveraging closes against (clearing._Ranks) and step 6 charges in, in time
    proportional to the changes since the layers were sorted, not to the holders: each layer is
    sorted once, when first asked for (or when frozen, once the index was ordered), and the layers
    are merged lazily (ordered) and, a bounded step a copy, log-structured (VersionedSet's
    _Merges), each merge building its result's order from its layers'."""
    __slots__ = ("_layers", "_delta", "_merges")

    def __init__(self, sizes: dict):
        self._layers, self._delta, self._merges = (_Sizes({k: p for k, p in sizes.items() if p}),), {}, ()

    def get(self, key) -> int:
        v = self._delta.get(key)
        if v is not None:
            return v
        for layer in reversed(self._layers):
            v = layer.entries.get(key)
            if v is not None:
                return v
        return 0

    def set(self, key, size: int) -> None:
        self._delta[key] = size

    def sizes(self) -> dict:
        """Every key's size now, the zeros left out (an audit: Clearing.violations)."""
        merged: dict = {}
        for layer in self._layers:
            merged.update(layer.entries)
        merged.update(self._delta)
        return {k: p for k, p in merged.items() if p}

    def copy(self) -> "SizeIndex":
        frozen = len(self._delta) if len(self._delta) > SET_DELTA else 0
        if frozen or self._merges:
            stack = [*self._layers, *([_Sizes(self._delta)] if frozen else ())]
            if frozen and self._layers[0].views is not None:  # ordered before: the new layer is sorted
                stack[-1].view(1)  # now, at the cost of its own changes, and each merge keeps its order
            stack, self._merges = _settle(stack, self._merges, frozen, _Sizes.size, _Sizes.job)
            self._layers = tuple(stack)
            if frozen:
                self._delta = {}
        new = object.__new__(SizeIndex)
        new._layers, new._delta, new._merges = self._layers, dict(self._delta), self._merges
        return new

    def ordered(self, side: int):
        """An iterator of (-|size|, key) over the keys holding side now (size > 0 for side > 0),
        in ascending order; a view of now: later changes do not reach it."""
        layers = [*self._layers, _Sizes(dict(self._delta))]
        newer = [[layer.entries for layer in layers[i + 1:]] for i in range(len(layers))]

        def stream(i):
            later = newer[i]
            for entry in layers[i].view(side):
                if not any(entry[1] in d for d in later):  # a newer layer has its size now
                    yield entry
        return heapq.merge(*(stream(i) for i in range(len(layers))))


def _union(at: np.ndarray, val: np.ndarray, index: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted patch (at, val) with hashes written at index (sorted, unique): where both hold an
    index, the new hash wins."""
    at = np.concatenate([at, index])
    val = np.concatenate([val, hashes])
    order = np.argsort(at, kind="stable")
    at, val = at[order], val[order]
    last = np.r_[at[1:] != at[:-1], True]  # the new hash wins over the patch's old one
    return at[last], val[last]


def _merged(at: np.ndarray, val: np.ndarray, index: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """_union, counted (and copied where the patch is empty: the caller's arrays are not the
    level's to keep)."""
    global entries_copied
    entries_copied += len(at) + len(index)
    if not len(at):
        return index.copy(), hashes.copy()
    return _union(at, val, index, hashes)


def _level_size(layer) -> int:
    return len(layer[0]) if isinstance(layer, tuple) else len(layer)


def _level_job(lower, upper: tuple, bottom: bool):
    """The merge of a level's two patches (_union's), a stretch of indices a step; or, bottom, of
    the base array and a patch into a new base."""
    at, val = upper
    if bottom:
        size = max(len(lower), int(at[-1]) + 1)
        new = np.zeros((size, 32), np.uint8)  # (rows past the old base and the patch: 0, as gather reads them)
        done = [0, 0]

        def rows(k: int) -> int:
            new[done[0]:done[0] + k] = lower[done[0]:done[0] + k]
            done[0] += k
            return k

        def patch(k: int) -> int:
            new[at[done[1]:done[1] + k]] = val[done[1]:done[1] + k]
            done[1] += k
            return k
        return _stepped([(len(lower), rows), (len(at), patch)], lambda: new)
    low_at, low_val = lower
    out_at = np.empty(len(low_at) + len(at), np.int64)  # (the union's size is known at the end: views of these)
    out_val = np.empty((len(out_at), 32), np.uint8)
    done = [0, 0, 0]

    def stretch(k: int) -> int:  # the indices under the k-th next of either patch's, whichever is less
        i, j, o = done
        ends = [int(a[n + k]) for a, n in ((low_at, i), (at, j)) if n + k < len(a)]
        i2, j2 = ((int(np.searchsorted(low_at, min(ends))), int(np.searchsorted(at, min(ends)))) if ends
                  else (len(low_at), len(at)))
        part_at, part_val = _union(low_at[i:i2], low_val[i:i2], at[j:j2], val[j:j2])
        o2 = o + len(part_at)
        out_at[o:o2], out_val[o:o2] = part_at, part_val
        done[:] = i2, j2, o2
        return i2 - i + j2 - j

    def result():
        return out_at[:done[2]], out_val[:done[2]]
    return _stepped([(len(low_at) + len(at), stretch)], result, lambda: _union(low_at, low_val, at, val))


class _Level:
    """One level of node hashes: a shared base array, frozen sorted patches over it (layers, oldest
    first, (indices, hashes) each, shared) and the newest sorted patch (at, val); indices past the
    base live only in the patches. A _Level is never changed: patched() makes a new one. Versioned
    as the accounts map is: the newest patch is frozen onto the layers once it outgrows REBASE_AT,
    a layer is merged into the one under it once it is more than 1/LAYER_RATIO of that one's size,
    the base as the bottom one (a fold into a new base), each merge a _Merge (a bounded step an
    update, shared by the levels that hold both its layers), so an update sorts the block's nodes
    and at most REBASE_AT more, and MERGE_STEP times as many for each merge under way, not the
    level."""
    __slots__ = ("base", "layers", "at", "val", "merges")

    def __init__(self, base: np.ndarray, at=None, val=None, layers=(), merges=()):
        self.base, self.layers, self.merges = base, layers, merges
        self.at = np.zeros(0, np.int64) if at is None else at
        self.val = np.zeros((0, 32), np.uint8) if val is None else val

    def gather(self, index: np.ndarray) -> np.ndarray:
        out = np.zeros((len(index), 32), np.uint8)
        inside = index < len(self.base)
        out[inside] = self.base[index[inside]]
        for at, val in (*self.layers, (self.at, self.val)):  # oldest first: a newer hash overwrites
            if len(at):
                pos = np.minimum(np.searchsorted(at, index), len(at) - 1)
                hit = at[pos] == index
                out[hit] = val[pos[hit]]
        return out

    def patched(self, index: np.ndarray, hashes: np.ndarray) -> "_Level":
        """This level with hashes written at index (sorted, unique)."""
        at, val = _merged(self.at, self.val, index, hashes)
        base, layers, merges = self.base, self.layers, self.merges
        frozen = len(at) if len(at) > REBASE_AT else 0
        if frozen or merges:
            stack, merges = _settle([base, *layers, *([(at, val)] if frozen else ())], merges, frozen,
                                    _level_size, _level_job)
            base, layers = stack[0], tuple(stack[1:])
            if frozen:
                at, val = None, None
        return _Level(base, at, val, layers, merges)


def _inner(sha256_many, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    msgs = np.concatenate([np.ones((len(left), 1), np.uint8), left, right], axis=1)
    return sha256_many(msgs)


class MerkleTree:
    """The tree accel.merkle_root builds over leaves 0..count-1, kept level by level. sha256_many
    hashes the rows of a 2-D uint8 array and returns an (n, 32) array (Verifier.sha256_rows: accel or
    hashlib); every validator computes the same nodes, whichever it uses."""

    def __init__(self):
        self.levels: list[_Level] = []
        self.count = 0

    def copy(self) -> "MerkleTree":
        new = MerkleTree()
        new.levels, new.count = list(self.levels), self.count  # levels are never changed in place
        return new

    @property
    def root(self) -> bytes:
        if not self.count:
            return EMPTY_ROOT
        return self.levels[-1].gather(np.zeros(1, np.int64))[0].tobytes()

    def update(self, leaves: dict[int, bytes], count: int, sha256_many: Callable) -> None:
        """Leaves at the given indices changed (or appeared: count >= the old count, and every new
        index is among them); their hashes and their ancestors' are recomputed."""
        if not leaves and count == self.count:
            return
        index = np.array(sorted(leaves), np.int64)
        hashes = _hash_rows(sha256_many, [b"\x00" + leaves[i] for i in index.tolist()])
        old, new = self.count, count
        level = 0
        if not self.levels:
            self.levels.append(_Level(np.zeros((0, 32), np.uint8)))
        self.levels[0] = self.levels[0].patched(index, hashes)
        while new > 1:
            parents = np.unique(index // 2)
            if new != old:  # the last pair's shape changed: its parent and every new one are redone
                parents = np.union1d(parents, np.arange(max(old - 1, 0) // 2, (new + 1) // 2))
            left_i, right_i = 2 * parents, 2 * parents + 1
            below = self.levels[level]
            left = below.gather(left_i)
            paired = right_i < new
            up = left.copy()  # an odd last node is carried up as it is
            if paired.any():
                up[paired] = _inner(sha256_many, left[paired], below.gather(right_i[paired]))
            level += 1
            if len(self.levels) == level:
                self.levels.append(_Level(np.zeros((0, 32), np.uint8)))
            self.levels[level] = self.levels[level].patched(parents, up)
            index, old, new = parents, (old + 1) // 2, (new + 1) // 2
        del self.levels[level + 1:]
        self.count = count

    def proof(self, i: int) -> MerkleProof:
        """accel.merkle_proof's answer for leaf i, from the kept levels."""
        if not 0 <= i < self.count:
            raise ValueError(f"index {i} is outside a tree of {self.count} leaves")
        aunts, j, count = [], i, self.count
        for level in self.levels[:-1]:
            if j ^ 1 < count:
                aunts.append(level.gather(np.array([j ^ 1]))[0].tobytes())
            j, count = j // 2, (count + 1) // 2
        return MerkleProof(self.count, i, self.levels[0].gather(np.array([i]))[0].tobytes(), tuple(aunts))


def _hash_rows(sha256_many, rows: list[bytes]) -> np.ndarray:
    """Digests of rows of different lengths: grouped by length, each group one batch."""
    out = np.zeros((len(rows), 32), np.uint8)
    lengths = np.array([len(r) for r in rows], np.int64)
    for n in np.unique(lengths).tolist():
        sel = np.flatnonzero(lengths == n)
        out[sel] = sha256_many(np.frombuffer(b"".join(rows[k] for k in sel.tolist()), np.uint8).reshape(len(sel), n))
    return out
