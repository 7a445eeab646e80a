"""Review s21: a SizeIndex's merged layer (the fold of its layers into a new bottom one, a bounded
step a block) came out with no order, so the next liquidation against the series sorted every
holder in one block (94,712 entries at 80,000 holders, where a block changing 300 positions sorts
8). A merge now builds its result's order from its two layers' in the same bounded steps, and once
an index was ordered each layer frozen onto it is sorted at once, at the cost of its own changes.
1. the order: every version's ordered(side) is a fresh sort of its sizes, over random changes,
   copies, forks and merges (small layers, so that merges and folds run all the time);
2. the cost, in entries sorted (a count, not time): the first liquidating mark after the fold of a
   series held by H accounts sorts as many at 4H as at H."""
import random

import pytest

import consensus.apps.ledger_state as ls
from consensus.apps.ledger_state import SizeIndex


def _fresh_sort(idx: SizeIndex, side: int) -> list:
    sizes = idx.sizes()
    return sorted((-abs(p), k) if side > 0 else (p, k) for k, p in sizes.items() if (p > 0) == (side > 0))


@pytest.mark.parametrize("seed", range(12))
def test_every_version_orders_its_holders_as_a_fresh_sort(monkeypatch, seed):
    monkeypatch.setattr(ls, "SET_DELTA", 4)
    rng = random.Random(seed)
    keys = [bytes([k]) for k in range(60)]
    versions = [SizeIndex({k: rng.randint(-5, 5) for k in rng.sample(keys, 30)})]
    for step in range(400):
        idx = rng.choice(versions[-6:])
        new = idx.copy()
        for _ in range(rng.choice((1, 3, 9, 20))):
            new.set(rng.choice(keys), rng.choice((0, 0, rng.randint(-9, 9))))
        versions.append(new)
        if rng.random() < 0.4:  # ordered now and then: the layers get sorted, and merges keep it
            v = rng.choice(versions[-6:])
            for side in (1, -1):
                assert list(v.ordered(side)) == _fresh_sort(v, side), (seed, step)
    merged = sum(1 for v in versions for layer in v._layers if layer.views is not None)
    assert merged  # (the property ran over ordered layers, not only lazily sorted ones)
    for v in versions[-20:]:
        for side in (1, -1):
            assert list(v.ordered(side)) == _fresh_sort(v, side)


def test_the_mark_after_a_fold_sorts_what_changed_not_every_holder(monkeypatch):
    from consensus.apps.clearing import Clearing
    from tests.test_clearing_properties import O, OPTIONS, T0, USD
    from tests.test_ledger_scale_s6 import _fresh, _inject, _traded
    count, view = [0], ls._Sizes.view

    def counted(self, side):
        if self.views is None:
            count[0] += len(self.entries)
        return view(self, side)
    monkeypatch.setattr(ls._Sizes, "view", counted)

    def key(kind, i):
        return bytes([kind]) + i.to_bytes(31, "big")

    def liquidating_mark(c, r):  # a thin book long one ETH future (series 6) that a BTC rally liquidates
        thin, rich = key(2, r), key(3, r)
        _inject(c, thin, {"USD": 7_000 * USD})
        _inject(c, rich, {"USD": 100_000 * USD})
        _traded(c, rich, thin, 3, 1)
        _traded(c, key(1, r), thin, 6, 1)
        c.root()
        count[0] = 0
        c.mark("BTC", c.marks["BTC"].index * 1.13, {i: 0.7 for i in OPTIONS["BTC"]}, r + 2, T0 + 60 * (r + 2), O[:2])
        assert c.liquidations[-1].account == thin
        return count[0]

    def after_fold(n):
        c = _fresh(Clearing)
        whale = key(9, 0)
        _inject(c, whale, {"USD": 10**10 * USD})
        for i in range(n):
            _inject(c, key(1, i), {"USD": 100_000 * USD})
            _traded(c, key(1, i), whale, 6, 1 + i % 3)
        c.root()
        for r in (0, 1):  # the first sorts the index once (by design); the second only what changed
            c = c.snapshot()
            c.begin_block()
            sorted_ = liquidating_mark(c, r)
        assert sorted_ < 50
        bottom, j = c._sizes[6]._layers[0], 0
        while c._sizes[6]._layers[0] is bottom:  # blocks of 300 position changes until the fold is done
            c = c.snapshot()
            c.begin_block()
            for _ in range(300):
                _traded(c, key(1, j % n), whale, 6, 1)
                j += 1
            c.root()
        c = c.snapshot()
        c.begin_block()
        return liquidating_mark(c, 2)
    small, large = after_fold(5_000), after_fold(20_000)
    assert large <= 1.5 * small + 50, (small, large)  # 5,711 and 22,711 before review s21
