"""Clearing.liquidations held every liquidation record for the life of the process (review s15:
the same two accounts liquidated 1,000 times kept 1,000 records, 223 bytes each, while the state
stayed two accounts). No rule reads a record of an earlier mark, and the log is not in the state
root: a ledger now holds the latest LIQUIDATIONS_KEPT (at most about 4x), indexes unchanged."""
from __future__ import annotations

import random

import pytest
from nacl.signing import SigningKey

from accel.risk import CALL, FUTURE
from consensus.apps import clearing as clearing_mod
from consensus.apps.clearing import QUANTUM, Clearing, Series
from consensus.apps.ledger_state import Log

T0, DAY = 1_800_000_000, 86400
USD = int(round(1 / QUANTUM))
ORACLES = [bytes(SigningKey(bytes([50 + i]) * 32).verify_key) for i in range(3)]
A, B = (bytes(SigningKey(bytes([i]) * 32).verify_key) for i in (1, 2))


def _held(log: Log) -> int:
    return sum(1 for _ in log)


@pytest.mark.parametrize("seed", range(4))
def test_a_log_with_keep_holds_the_latest_with_their_indexes(seed):
    rng, keep = random.Random(seed), 5
    whole, log, versions = [], Log(keep=keep), []
    for _ in range(400):
        for _ in range(rng.choice((0, 1, 1, 2, 7, 13))):
            whole.append(rng.random())
            log.append(whole[-1])
        if rng.random() < 0.3:
            versions.append((log, list(whole)))  # an older version stays as it was
        log = log.copy()
        assert len(log) == len(whole)
        held = _held(log)
        assert held >= min(keep, len(whole)) and held <= 4 * keep + 13
        assert list(log) == whole[len(whole) - held:]
        assert log[len(whole) - held:] == whole[len(whole) - held:] == log[0:]
        if held < len(whole):
            with pytest.raises(IndexError, match="dropped"):
                log[len(whole) - held - 1]
        if whole:
            assert log[-1] == whole[-1]
    for old, expected in versions:
        assert list(old) == expected[len(expected) - _held(old):]


def _cycle(c, state):
    """B deposits, buys a future from A at 60,000; a mark at 30,000 liquidates B, the next puts the
    index back. Each mark in its own block (a snapshot of the last)."""
    c.deposit(B, state["b"], "USD", 20_000 * USD)
    c.trade(B, state["b"] + 1, A, state["a"], 3, 1, 60_000 * USD)
    state["a"], state["b"] = state["a"] + 1, state["b"] + 2
    for index in (30_000.0, 60_000.0):
        state["seq"] += 1
        c.mark("BTC", index, {1: 0.6}, state["seq"], T0 + state["seq"], ORACLES[:2])
        c = c.snapshot()
    return c


def _market(keep: int, monkeypatch) -> Clearing:
    monkeypatch.setattr(clearing_mod, "LIQUIDATIONS_KEPT", keep)
    c = Clearing(ORACLES, quorum=2, backend="cpu", insurance=10**12 * USD)
    c.list_series(Series(1, "BTC", CALL, 60_000.0, T0 + 3000 * DAY))
    c.list_series(Series(3, "BTC", FUTURE, 0.0, T0 + 3000 * DAY))
    c.mark("BTC", 60_000.0, {1: 0.6}, 1, T0 + 1, ORACLES[:2])
    c.register(A)
    c.register(B)
    c.deposit(A, 0, "USD", 10**10 * USD)
    return c


def test_a_ledger_holds_a_bounded_number_of_liquidation_records(monkeypatch):
    small, whole = _market(8, monkeypatch), _market(10**9, monkeypatch)
    s_small, s_whole = {"a": 1, "b": 0, "seq": 1}, {"a": 1, "b": 0, "seq": 1}
    for _ in range(120):
        small, whole = _cycle(small, s_small), _cycle(whole, s_whole)
        assert small.root() == whole.root() and small.violations() == []
    assert len(small.liquidations) == len(whole.liquidations) >= 120
    assert 8 <= _held(small.liquidations) <= 4 * 8 + 2
    assert list(small.liquidations) == list(whole.liquidations)[-_held(small.liquidations):]
