"""Clearing state snapshots (issue 20): a state as bytes and back, checked against the state root
of the block it belongs to, and a restored state that goes on exactly as the original."""
import random

import pytest

from consensus.apps import clearing_snapshot as snap
from consensus.apps.clearing import Breakers, Rejected
from consensus.verify import Verifier
from tests.test_clearing_soundness import DAY, K, O, T0, USD, VOLS, funded, genesis

SHA = Verifier("accel", "cpu").sha256_rows


def _stream(c, rng, steps):
    """Trades, marks (jumps that liquidate and trip the breaker, an expiry), deposits and
    withdrawals, each step applied if the rules take it."""
    seq, ts, index = max(m.sequence for m in c.marks.values()), T0, 60_000.0
    for _ in range(steps):
        op = rng.random()
        try:
            if op < 0.55:
                b, s = rng.sample(range(4), 2)
                sid = rng.choice([1, 2, 3, 6])
                c.trade(K[b], c.accounts[K[b]].nonce, K[s], c.accounts[K[s]].nonce, sid, rng.randint(1, 3),
                        int(index * USD) if sid == 3 else rng.randint(500, 3_000) * USD)
            elif op < 0.75:
                seq, ts, index = seq + 1, ts + rng.choice([600, 3_600, DAY]), index * rng.choice([0.6, 0.97, 1.03, 1.5])
                c.begin_block()
                c.mark("BTC", index, {1: 0.7, 2: 0.7, 6: 0.7}, seq, ts, O[:2])
            elif op < 0.9:
                i = rng.randrange(4)
                c.deposit(K[i], c.accounts[K[i]].nonce, "USD", rng.randint(1, 50_000) * USD)
            else:
                i = rng.randrange(4)
                c.withdraw(K[i], c.accounts[K[i]].nonce, "USD", rng.randint(1, 50_000) * USD)
        except Rejected:
            pass


def _state(seed=4, steps=300):
    c = funded(cash=(2_000_000, 60_000, 120_000, 1_000_000), breakers=Breakers(band=0.3, window=3))
    _stream(c, random.Random(seed), steps)
    assert c.liquidations and c.fixings and c.history  # the stream went through all of it
    return c


def _genesis():
    return genesis(breakers=Breakers(band=0.3, window=3))


def test_a_restored_state_has_the_root_the_leaves_and_the_future_of_the_original():
    c = _state()
    root = c.root()
    blob = snap.encode(c)
    r = snap.restore(_genesis(), blob, root, SHA)
    assert r.root() == root and r.leaves() == c.leaves() and r.globals_leaves() == c.globals_leaves()
    assert r.violations() == [] and r.halted == c.halted and r.marks == c.marks and r.holders == c.holders
    _stream(c, random.Random(99), 150)
    _stream(r, random.Random(99), 150)
    assert r.root() == c.root()
    assert snap.restore(_genesis(), blob, root, Verifier("software").sha256_rows).root() == root  # software-only hashing


def test_a_snapshot_that_does_not_match_the_committed_root_is_refused():
    c = _state(seed=6, steps=120)
    root, blob = c.root(), snap.encode(c)
    at = blob.index(K[1]) + 41 + 8 + 12  # inside user 1's first balance
    forged = blob[:at] + bytes([blob[at] ^ 1]) + blob[at + 1:]
    with pytest.raises(ValueError, match="does not match the committed block"):
        snap.restore(_genesis(), forged, root, SHA)
    for bad, why in ((blob[:-3], "ends inside a leaf|not a clearing snapshot"), (b"XX" + blob, "no AVSNAP1 header"),
                     (blob + b"\0", "bytes after")):
        with pytest.raises(ValueError, match=why):
            snap.restore(_genesis(), bad, root, SHA)
    with pytest.raises(ValueError, match="does not match"):
        snap.restore(_genesis(), blob, bytes(32), SHA)


def test_a_validator_restored_from_a_snapshot_validates_the_next_block():
    from consensus.apps.clearing_app import ClearingApp, State
    from consensus.verify import Verifier
    from tests.test_clearing_soundness import mark_tx, trade_tx, validate
    c = _state(seed=8, steps=80)
    app = ClearingApp(Verifier("accel", "cpu"), c)
    parent = app.genesis
    restored = State(snap.restore(_genesis(), snap.encode(c), parent.root, SHA), parent.root)
    nxt = [mark_tx("BTC", c.marks["BTC"].index * 1.01, c.marks["BTC"].sequence + 1, c.marks["BTC"].timestamp + 60,
                   VOLS | {6: 0.6}), trade_tx(c, 0, 3, 3, 1, int(c.marks["BTC"].index * USD))]
    a, b = validate(app, parent, nxt), validate(app, restored, nxt)
    assert a.ok and b.ok and a.state.root == b.state.root
