"""Second-round review of the ledger's shared state (review s9, helper r2): the holders index
(VersionedSet), the kept order of auto-deleveraging (SizeIndex) and the shared liquidation log
(Log) attacked as a fresh reviewer.

1. A settled series kept its SizeIndex for ever: _settle popped the series' holders and every
   position straight from the accounts (not through _set_position), but Clearing._sizes kept the
   index (every holder's size at the settlement, and both sides' sorted views) in every later
   version of the chain, and the columns' write went on filtering each run's lines against it. A
   chain of expiring series each once auto-deleveraged against kept them all. Nothing reads a
   settled series' order again (nobody holds it, no trade opens it), so the settlement drops it;
   the state root and every record are unchanged.
   Clearing.violations() now also checks every kept index against the positions (so every test
   that audits a state checks the index too).
2. A restore (state sync, a restart from a snapshot) left each series' holders a plain set, so
   every version built on the restored state (each proposal pass, each fork) took it over with
   an O(holders) copy until one of them committed: 4x the bytes per version from 2,000 to 8,000
   holders. The restore builds them as VersionedSets once.
3. (held) Differentials on forks with sibling versions built and dropped as a proposer's passes
   are, a validator restored from a snapshot mid-stream, tiny layers (SET_DELTA 2) so that every
   version freezes and merges: the same refusals, records, leaves and funds as a fresh pass over
   the holders at every use; and through the app, each block proposed twice (the first dropped)
   and validated by a software-only validator restarting from snapshots: the same roots and
   records. No divergence was found this way (the differentials of 3 pass before the fixes
   too): they guard the kept order against later changes."""
import random
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings

import consensus.apps.ledger_state as ledger_state
from consensus.apps import clearing_snapshot
from consensus.apps.clearing import Clearing, Rejected
from consensus.apps.clearing_app import ClearingApp, State
from consensus.apps.ledger_state import SizeIndex
from consensus.verify import Verifier
from tests.test_clearing_properties import O, OPTIONS, SERIES, T0, USD, USERS, Stream, block_of, blocks, genesis, signed
from tests.test_ledger_scale_s6 import _fresh, _inject, _traded, book

SHA = Verifier("accel", "cpu").sha256_rows


def _key(kind: int, i: int) -> bytes:
    return bytes([kind]) + i.to_bytes(31, "big")


# ---- 1. a settled series' kept order is dropped ----------------------------------------------------
def _adl_then_expiry(n: int) -> Clearing:
    """n holders long the ETH future (series 6, expiring at T0 + 6 h) against a whale; a thin book
    short a BTC future and long one ETH future liquidated by a BTC rally (its ETH future closed
    against the whale: the kept order of series 6 is built); then the ETH mark after the expiry
    settles series 6 and 7."""
    c = _fresh(Clearing)
    whale = _key(9, 0)
    _inject(c, whale, {"USD": 10**10 * USD})
    for i in range(n):
        _inject(c, _key(1, i), {"USD": 100_000 * USD})
        _traded(c, _key(1, i), whale, 6, 1 + i % 3)
    thin, rich = _key(2, 0), _key(3, 0)
    _inject(c, thin, {"USD": 7_000 * USD})
    _inject(c, rich, {"USD": 100_000 * USD})
    _traded(c, rich, thin, 3, 1)
    _traded(c, thin, whale, 6, 1)
    c = c.snapshot()
    c.mark("BTC", 60_000.0 * 1.13, {i: 0.7 for i in OPTIONS["BTC"]}, 2, T0 + 120, O[:2])
    assert c.liquidations[-1].account == thin and 6 in c._sizes
    c = c.snapshot()
    c.mark("ETH", 3_000.0, {}, 2, T0 + 7 * 3600, O[:2])
    assert 6 in c.fixings and 6 not in c.holders and not c.violations()
    return c


def test_a_settled_series_keeps_no_order_of_its_holders():
    c = _adl_then_expiry(2_000)
    assert 6 not in c._sizes  # before: the index of 2,001 holders, and its sorted views, for ever
    c = c.snapshot()
    assert 6 not in c._sizes
    # a restored validator (no index at all) and this one agree on what follows: a BTC rally
    blob, root = clearing_snapshot.encode(c), c.state_root(SHA)
    restored = clearing_snapshot.restore(_fresh(Clearing), blob, root, SHA)
    new = []
    for s in (c, restored):
        done = len(s.liquidations)
        s.mark("BTC", 60_000.0 * 1.3, {i: 0.7 for i in OPTIONS["BTC"]}, 3, T0 + 8 * 3600, O[:2])
        new.append(s.liquidations[done:])
    assert c.root() == restored.root() and new[0] == new[1]


# ---- 2. a restored state hands its children shared holders, not plain sets to copy ----------------
def _children_of_a_restore(n: int) -> list[int]:
    """n holders long the ETH future against a whale, restored from a snapshot (state sync, a
    restart); then three versions on the restored one (a proposer's passes, forks) each trading one
    ETH future between two others: the peak bytes each allocates (tracemalloc, a count)."""
    c = _fresh(Clearing)
    whale = _key(9, 0)
    _inject(c, whale, {"USD": 10**10 * USD})
    for i in range(n):
        _inject(c, _key(1, i), {"USD": 100_000 * USD})
        _traded(c, _key(1, i), whale, 6, 1)
    a, b = _key(2, 0), _key(2, 1)
    for k in (a, b):
        _inject(c, k, {"USD": 100_000 * USD})
    restored = clearing_snapshot.restore(_fresh(Clearing), clearing_snapshot.encode(c), c.state_root(SHA), SHA)
    peaks = []
    for _ in range(3):
        tracemalloc.start()
        try:
            child = restored.snapshot()
            child.begin_block()
            child.trade(a, 0, b, 0, 6, 1, child.marks["ETH"].values[6])
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert len(child.holders[6]) == n + 3 and not child.violations()
    assert not restored.violations() and len(restored.holders[6]) == n + 1
    return peaks


def test_versions_built_on_a_restored_state_do_not_copy_the_holders_of_a_series():
    small, large = _children_of_a_restore(2_000), _children_of_a_restore(8_000)
    # before: each version took the restore's plain set over (an O(holders) copy): 4x the bytes
    assert max(large) <= 1.5 * max(small), (small, large)


# ---- 3. differentials on forks, discarded proposals and a restore mid-stream -----------------------
def _fresh_index(self, series):
    """The order as before the kept index: every holder's position read at each use."""
    return SizeIndex({h: self.accounts[h].positions.get(series, 0) for h in self.holders.get(series, ())})


def _trades(c: Clearing, rng: random.Random, n: int) -> None:
    """Positions grown, shrunk, flipped, closed and opened between random accounts, at the mark."""
    keys = sorted(c.accounts)
    live = [s.id for s in SERIES if s.id not in c.fixings]
    for _ in range(n):
        a, b = rng.sample(keys, 2)
        s = rng.choice(live)
        held = c.accounts[a].positions.get(s, 0)
        d = rng.choice([-held or 1, rng.randint(-6, 6) or 2, -2 * held or -1, 1])
        if d < 0:
            a, b, d = b, a, -d
        _traded(c, a, b, s, d)


def _chain(seed: int, mode: str) -> list:
    """tests/test_ledger_scale_s6.py's random market (crashes, rallies, expiries), each mark on a
    random earlier version (a fork) after random trades, with 0-2 sibling versions built on the same
    parent (trades and a mark of their own) and dropped, as a proposer's passes are; mode "restore":
    40% of the versions start from a snapshot of their parent (clearing_snapshot: no index, plain
    holders sets). What each mark did: refusal, records, leaves, funds, fixings, violations."""
    rng = random.Random(seed)
    c, marks = book(Clearing, seed)
    c.root()
    genesis, versions, out = _fresh(Clearing), [c], []
    for und, index, vols, seq, ts in marks:
        parent = versions[-1] if rng.random() < 0.7 else rng.choice(versions)
        for _ in range(rng.randint(0, 2)):
            sibling = parent.snapshot()
            _trades(sibling, rng, rng.randint(0, 6))
            try:
                sibling.mark(und, index * rng.choice([0.7, 1.3]), vols, seq, ts, O[:2])
            except Rejected:
                pass
        c = parent.snapshot()
        if rng.random() < 0.4 and mode == "restore":
            c = clearing_snapshot.restore(genesis, clearing_snapshot.encode(c), c.state_root(SHA), SHA)
        _trades(c, rng, rng.randint(0, 8))
        done = len(c.liquidations)
        try:
            c.mark(und, index, vols, seq, ts, O[:2])
            refused = None
        except Rejected as exc:
            refused = str(exc)
        out.append((refused, list(c.liquidations[done:]), c.leaves(), dict(c.funds), dict(c.fixings), c.violations()))
        versions.append(c)
    return out


@pytest.mark.parametrize("seed", range(16))
def test_forks_discarded_proposals_and_restores_reach_the_records_of_a_fresh_pass(seed, monkeypatch):
    monkeypatch.setattr(ledger_state, "SET_DELTA", 2)  # every version with 3 changes freezes and merges
    kept = _chain(seed, "kept")
    assert sum(len(records) for _, records, *_ in kept) > 0 and not any(v for *_, v in kept)
    assert _chain(seed, "restore") == kept
    monkeypatch.setattr(Clearing, "_size_index", _fresh_index)
    assert _chain(seed, "kept") == kept


# the first block of the streams through the app: registered, funded, marked, thin books long and
# short the BTC and ETH futures
OPENING = ([("register", i) for i in range(len(USERS))]
           + [("deposit", i, "USD", q * USD, 0) for i, q in enumerate((30_000, 100_000, 300_000, 2_000_000))]
           + [("mark", "BTC", 1.0, 1, 60, True, 2), ("mark", "ETH", 1.0, 1, 60, True, 2)]
           + [("trade", 3, 0, 3, 2, 1.0, 0), ("trade", 3, 1, 2, 5, 1.0, 0), ("trade", 2, 0, 6, 3, 1.0, 0),
              ("trade", 2, 1, 6, 2, 1.0, 0)])


# ---- 4. through the app: a proposal dropped, a software-only validator restarting from snapshots -----
@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(blocks)
def test_a_restarting_software_only_validator_reaches_the_proposers_roots_and_records(stream):
    """The property tests' streams (tests/test_clearing_properties.py) with thin books long and
    short the BTC and ETH futures, SET_DELTA 2: each block proposed twice on its parent (the first
    dropped), validated by a software-only validator whose parent state is, every other block on
    average, restored from a snapshot (no kept order, holders rebuilt): valid, the same root, the
    same liquidation records, no violation (which checks every kept order) on either side."""
    old = ledger_state.SET_DELTA
    ledger_state.SET_DELTA = 2
    try:
        proposer = ClearingApp(Verifier("accel", "cpu"), genesis())
        validator = ClearingApp(Verifier("software"), genesis())
        parent, vparent = proposer.genesis, validator.genesis
        rng = random.Random(len(stream))
        for n, ops in enumerate([OPENING] + stream):
            maker = Stream(parent.clearing)
            proposer.submit_many([signed(*maker.tx(o)) for o in ops])
            proposer.propose(parent, set())  # a proposal built and dropped
            txs, state = proposer.propose(parent, set())
            if n and rng.random() < 0.5:
                c = vparent.clearing
                back = clearing_snapshot.restore(genesis(), clearing_snapshot.encode(c), vparent.root,
                                                 validator.verifier.sha256_rows)
                vparent = State(back, vparent.root)
            v = validator.validate(vparent, block_of(txs, bytes(32), state.root, validator), ((), (), ()))
            assert v.ok, v.reason
            assert v.state.root == state.root
            mine, theirs = len(parent.clearing.liquidations), len(vparent.clearing.liquidations)
            assert state.clearing.liquidations[mine:] == v.state.clearing.liquidations[theirs:]
            assert not state.clearing.violations() and not v.state.clearing.violations()
            proposer.committed(block_of(txs, bytes(32), state.root, proposer), state)
            parent, vparent = state, v.state
    finally:
        ledger_state.SET_DELTA = old
