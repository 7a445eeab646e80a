"""Review attacks on clearing snapshots after 7359953 and 27e3a39: restore() hashes the snapshot's
own account leaves (not a re-encoding of the accounts read from them), leaves() places leaves by
slot, and each validator snapshots at a phase of its own (snapshots.due). What held is pinned here."""
import logging
from dataclasses import replace

import pytest

from accel.merkle import hashlib_root, inner_hash
from consensus import snapshots, statesync
from consensus.apps import clearing_snapshot as snap
from consensus.apps.clearing import Clearing
from consensus.apps.ledger_state import MerkleTree
from consensus.core import Core
from consensus.sim import Simulation
from consensus.verify import Verifier
from tests.test_clearing_soundness import K, USD, funded, genesis

SHA = Verifier("accel", "cpu").sha256_rows


# ---- helpers ------------------------------------------------------------------------------------

def _state() -> Clearing:
    """Four funded accounts; user 0 holds two assets and long positions in two series, user 1 the
    short side, user 2 USD only, user 3 nothing at all."""
    c = funded(cash=(1_000_000, 1_000_000, 50_000, 0))
    c.deposit(K[0], c.accounts[K[0]].nonce, "BTC", 5 * USD)
    n = lambda i: c.accounts[K[i]].nonce  # noqa: E731
    c.trade(K[0], n(0), K[1], n(1), 3, 2, 60_000 * USD)
    c.trade(K[0], n(0), K[1], n(1), 1, 1, 1_000 * USD)
    return c


def _raw(key: bytes, nonce: int, cash, lines, count=None) -> bytes:
    """An account leaf as bytes, in whatever order and form it is given (Clearing._leaf's layout)."""
    parts = [key, nonce.to_bytes(8, "big"), (len(cash) if count is None else count).to_bytes(1, "big")]
    for name, q in cash:
        parts += [name.ljust(8, b"\0"), q.to_bytes(16, "big", signed=True)]
    for i, s in lines:
        parts += [i.to_bytes(4, "big"), s.to_bytes(8, "big", signed=True)]
    return b"".join(parts)


def _blob(accounts: list[bytes], globals_: list[bytes]) -> bytes:
    parts = [snap.MAGIC, len(accounts).to_bytes(8, "big")]
    for leaf in accounts:
        parts += [len(leaf).to_bytes(4, "big"), leaf]
    parts.append(len(globals_).to_bytes(4, "big"))
    for leaf in globals_:
        parts += [len(leaf).to_bytes(4, "big"), leaf]
    return b"".join(parts)


def _root_of(accounts: list[bytes], globals_: list[bytes]) -> bytes:
    """The state root restore() computes for these leaves (accounts' tree by position, globals whole)."""
    t = MerkleTree()
    t.update(dict(enumerate(accounts)), len(accounts), SHA)
    return inner_hash(t.root, hashlib_root(globals_))


def _forgeries(c: Clearing) -> dict[str, tuple[int, bytes]]:
    """Non-canonical leaves (slot, bytes) that _account reads, none of which Clearing._leaf makes."""
    a0, a1, a2, a3 = (c.accounts[K[i]] for i in range(4))
    cash0 = [(name.encode(), q) for name, q in sorted(a0.collateral.items())]
    lines0 = sorted(a0.positions.items())
    usd2 = a2.collateral["USD"]
    one = c.leaves()[0]
    return {
        "assets_unsorted": (0, _raw(K[0], a0.nonce, cash0[::-1], lines0)),
        "asset_repeated": (0, _raw(K[0], a0.nonce, cash0 + cash0[-1:], lines0)),
        "zero_balance": (2, _raw(K[2], a2.nonce, [(b"BTC", 0), (b"USD", usd2)], [])),
        "zero_only_account": (3, _raw(K[3], a3.nonce, [(b"USD", 0)], [])),
        "padding_inside_name": (2, _raw(K[2], a2.nonce, [(b"U\0SD", usd2)], [])),
        "lowercase_name": (2, _raw(K[2], a2.nonce, [(b"usd", usd2)], [])),
        "non_letter_name": (2, _raw(K[2], a2.nonce, [(b"US$", usd2)], [])),
        "series_unsorted": (0, _raw(K[0], a0.nonce, cash0, lines0[::-1])),
        "series_repeated": (0, _raw(K[0], a0.nonce, cash0, lines0 + lines0[:1])),
        "zero_size": (0, _raw(K[0], a0.nonce, cash0, lines0 + [(2, 0)])),
        "count_byte_one_too_many": (0, one[:40] + bytes([one[40] + 1]) + one[41:]),
    }


# ---- 1. restore() hashes the snapshot's own leaves ------------------------------------------------

def test_non_canonical_leaves_are_read_but_never_match_the_committed_root():
    """Every forgery is a leaf _account accepts (or, with more balances than the genesis has
    assets, refuses outright) and no live state has; put in the place of the honest leaf, the
    snapshot is refused against the committed root (the bytes are what is hashed), so the accounts
    read from it never become a validator's state."""
    c = _state()
    root, honest = c.root(), c.leaves()
    g = c.globals_leaves()
    assert snap.restore(genesis(), _blob(honest, g), root, SHA).root() == root
    for name, (slot, leaf) in _forgeries(c).items():
        accounts = list(honest)
        accounts[slot] = leaf
        if leaf[40] > len(c.assets):  # more balances than the genesis has assets: refused as read
            with pytest.raises(ValueError, match=f"account leaf {slot} is malformed"):
                snap.restore(genesis(), _blob(accounts, g), root, SHA)
            continue
        key, acct = snap._account(leaf, slot, len(c.assets), len(c.series))
        # either an encoding _leaf does not write, or an account no transaction makes (a zero
        # balance, an asset the genesis does not have)
        odd = Clearing._leaf(key, acct) != leaf or 0 in acct.collateral.values() or set(acct.collateral) - c.assets
        assert key == K[slot] and leaf != honest[slot] and odd, name
        with pytest.raises(ValueError, match="does not match the committed block"):
            snap.restore(genesis(), _blob(accounts, g), root, SHA)


def test_leaves_moved_repeated_or_reordered_are_refused():
    c = _state()
    root, honest, g = c.root(), c.leaves(), c.globals_leaves()
    cases = {
        "swapped": ([honest[1], honest[0]] + honest[2:], "does not match"),
        "reversed": (honest[::-1], "does not match"),
        "repeated_key": (honest + [honest[0]], "appears twice"),
        "same_key_other_bytes": (honest + [honest[0][:40] + b"\0"], "appears twice"),
        "dropped": (honest[:-1], "does not match"),
        "short_key": ([honest[0][1:]] + honest[1:], "malformed|does not match|not a clearing snapshot"),
        "moved_to_globals": (honest[:-1], "unknown global leaf"),
    }
    for name, (accounts, why) in cases.items():
        globals_ = g + [honest[-1]] if name == "moved_to_globals" else g
        with pytest.raises(ValueError, match=why):
            snap.restore(genesis(), _blob(accounts, globals_), root, SHA)


def test_non_canonical_global_leaves_are_refused_even_under_their_own_root():
    """The globals' root is hashed from the re-encoded globals, and the bytes must be canonical too:
    unsorted funds, an asset name padded oddly, a repeated fixing are refused whatever root is given."""
    c = _state()
    honest, g = c.leaves(), c.globals_leaves()
    funds = [x for x in g if x.startswith(b"insurance")]
    rest = [x for x in g if not x.startswith(b"insurance")]
    usd = next(x for x in funds if x[9:12] == b"USD")
    cases = {
        "funds_unsorted": funds[::-1] + rest,
        "fund_repeated": funds + [usd] + rest,
        "fund_name_padded_inside": [x if x is not usd else b"insuranceU\0SD\0\0\0\0" + usd[17:] for x in funds] + rest,
        "height_twice": g + [next(x for x in g if x.startswith(b"height"))],
    }
    for name, globals_ in cases.items():
        with pytest.raises(ValueError):
            snap.restore(genesis(), _blob(honest, globals_), _root_of(honest, globals_), SHA)
        with pytest.raises(ValueError):
            snap.restore(genesis(), _blob(honest, globals_), c.root(), SHA)


def test_an_account_in_a_series_the_genesis_does_not_list_is_refused_before_hashing():
    c = _state()
    honest, g = c.leaves(), c.globals_leaves()
    a2 = c.accounts[K[2]]
    accounts = list(honest)
    accounts[2] = _raw(K[2], a2.nonce, [(b"USD", a2.collateral["USD"])], [(77, 1)])
    with pytest.raises(ValueError, match="series 77, which the genesis does not list"):
        snap.restore(genesis(), _blob(accounts, g), _root_of(accounts, g), SHA)


def test_the_restored_state_keeps_no_cached_leaves_and_goes_on_like_the_original():
    """The snapshot's own leaves are used for the first root only: after restore() nothing is
    cached or dirty, and a deposit, a trade and a new registration (next slot) give both states the
    same roots, leaves and a snapshot that restores again."""
    c = _state()
    r = snap.restore(genesis(), snap.encode(c), c.root(), SHA)
    assert r._leaves == {} and r.dirty == set() and r.tree.count == len(c.accounts) == 4
    assert [a.slot for a in r.accounts.values()] == [0, 1, 2, 3] and r.leaves() == c.leaves()
    for s in (c, r):
        s.deposit(K[2], s.accounts[K[2]].nonce, "USD", 7 * USD)
        s.trade(K[1], s.accounts[K[1]].nonce, K[0], s.accounts[K[0]].nonce, 3, 1, 61_000 * USD)
        s.register(K[4])
        s.deposit(K[4], 0, "USD", 3 * USD)
    assert r.accounts[K[4]].slot == 4 and r.root() == c.root() and r.leaves() == c.leaves()
    assert None not in r.leaves() and r.violations() == []
    again = snap.restore(genesis(), snap.encode(r), r.root(), SHA)
    assert again.root() == c.root() and again.leaves() == c.leaves()


def test_restoring_does_not_touch_the_genesis():
    c = _state()
    g = genesis()
    g.root()
    before = (g.root(), dict(g.accounts.items()), dict(g._leaves), set(g.dirty))
    snap.restore(g, snap.encode(c), c.root(), SHA)
    with pytest.raises(ValueError):
        snap.restore(g, snap.encode(c), bytes(32), SHA)
    assert (g.root(), dict(g.accounts.items()), dict(g._leaves), set(g.dirty)) == before


def _clearing_sim(tmp_path, blocks=16, every=5, names=("v0", "v1", "v2", "v3")):
    sim = Simulation(n=4, seed=1, app="clearing", validation="software", txs_per_block=20)
    for node in sim.nodes:
        if node.name in names:
            sim.durable(node.name, tmp_path / f"{node.name}.db", snapshot_every=every)
    sim.load(blocks * 15)
    sim.run(blocks=blocks)
    return sim


def _forge_first_balance(blob: bytes) -> tuple[bytes, bytes]:
    """The snapshot with the first account that holds a balance given it twice (a leaf that reads
    into the very same account), and the root of exactly those bytes."""
    accounts, g = snap._split(blob)
    i = next(j for j, leaf in enumerate(accounts) if leaf[40])
    leaf = accounts[i]
    accounts[i] = leaf[:40] + bytes([leaf[40] + 1]) + leaf[41:65] + leaf[41:]
    assert snap._account(accounts[i], i, 8, 64) == snap._account(leaf, i, 8, 64)
    return _blob(accounts, g), _root_of(accounts, g)


def test_a_restart_never_takes_a_snapshot_row_under_a_root_other_than_its_blocks(tmp_path, caplog):
    """load() is the one caller given a root from disk: a non-canonical blob stored with its own
    root (both consistent) is refused as not being of the committed block, and the restart falls
    back to the older snapshot with the live validators' state."""
    sim = _clearing_sim(tmp_path)
    node = sim._node("v0")
    store = node.store
    (newest, *_), (older, *_) = store.snapshots()
    forged, forged_root = _forge_first_balance(store.snapshot_blob(newest))
    store.db.execute("UPDATE snapshots SET blob = ?, state_root = ? WHERE height = ?", (forged, forged_root, newest))
    app = sim._make_app(None)
    with caplog.at_level(logging.WARNING, logger="consensus.snapshots"):
        start = snapshots.load(store, app)
    assert "not of the committed block stored at its height" in caplog.text
    assert start.base.proposal.block.height == older
    key = sim.keys[node.index]
    core = Core(sim.cfg[node.index], lambda m: key.sign(m).signature, app, store.safety(), start.history,
                store.committed_range, start.base)
    top = store.top_height()
    live = sim._node("v1").committed[top - 1][0]
    assert core.committed.id == live.id and core.states[live.id].root == live.state_root


def test_a_peer_serving_a_non_canonical_snapshot_under_a_real_proof_is_passed_over(tmp_path):
    sim = _clearing_sim(tmp_path, names=("v0", "v1", "v2"))
    chunk = statesync.serve(sim._node("v0").store, 0, 0)
    forged, _ = _forge_first_balance(chunk.data)
    sync = statesync.StateSync(sim.cfg[3], sim._make_app(None))
    (ask, _) = sync.start()
    assert ask.to == 0
    (ask, _) = sync.handle(0, replace(chunk, data=forged))
    assert sync.counters == {"snapshot_bad": 1} and ask.to == 1 and sync.done is None
    honest = statesync.serve(sim._node("v1").store, 0, 0)
    sync.handle(1, honest)
    assert sync.done is not None and sync.done.state.root == honest.proof[0].block.state_root


# ---- 2. leaves by slot ------------------------------------------------------------------------------

def test_bench_accounts_on_any_genesis_keep_slots_dense_and_round_trip():
    """bench.add_accounts (odd n: one fewer), then registrations, then a restore: every slot
    0..n-1 once, leaves() without holes, and the snapshot restores to the same root."""
    from consensus.apps.clearing_load import genesis_market
    from consensus.bench import add_accounts

    def make():
        g = genesis_market("cpu")
        for i in range(3):
            g.register(K[i])
        add_accounts(g, 101)
        return g

    c = make()
    c.register(K[3])
    assert sorted(a.slot for a in c.accounts.values()) == list(range(len(c.accounts))) == list(range(104))
    leaves = c.leaves()
    assert None not in leaves and [leaf[:32] for leaf in leaves[:3]] == K[:3] and leaves[-1][:32] == K[3]
    root = c.root()
    r = snap.restore(make(), snap.encode(c), root, SHA)
    assert r.root() == root and r.leaves() == leaves
    r.register(K[4])
    c.register(K[4])
    assert r.accounts[K[4]].slot == 104 and r.root() == c.root()


def test_states_restored_from_validators_snapshots_keep_slots_dense(tmp_path):
    sim = _clearing_sim(tmp_path, names=("v0", "v1", "v2"))
    for name in ("v0", "v1"):
        store = sim._node(name).store
        (h, *_), = store.snapshots()[:1]
        p, = store.committed_range(h, 1)
        state = snapshots.restore(sim._make_app(None), store.snapshot_blob(h), p.block.state_root)
        c = state.clearing
        assert sorted(a.slot for a in c.accounts.values()) == list(range(len(c.accounts)))
        assert [a.slot for a in c.accounts.values()] == list(range(len(c.accounts)))  # dict order is slot order
        assert snap.encode(c) == store.snapshot_blob(h)


# ---- 3. snapshot phases -----------------------------------------------------------------------------

def test_every_validator_snapshots_once_in_every_window_of_every_blocks():
    """For n validators and any `every`: validator me's due heights are me * every // n + k * every,
    the first within `every` blocks (so a restart replays fewer than `every` blocks); phases are
    distinct whenever every >= n; every = 0 never, every = 1 every block."""
    for n in range(1, 8):
        for every in range(1, 40):
            phases = []
            for me in range(n):
                due = [h for h in range(1, 3 * every + 1) if snapshots.due(h, every, me, n)]
                assert due and due[0] <= every and all(b - a == every for a, b in zip(due, due[1:])), (n, every, me)
                assert len(due) in (2, 3)
                phases.append(due[0] % every)
                assert not any(snapshots.due(h, 0, me, n) for h in range(1, 50))
            if every >= n:
                assert len(set(phases)) == n, (n, every)
    assert all(snapshots.due(h, 1, me, 4) for h in range(1, 20) for me in range(4))
    big = 10**12
    assert snapshots.due(3 * big // 4, big, 3, 4) and snapshots.due(big, big, 0, 4)


def test_an_index_outside_the_validators_never_snapshots():
    """(node.py refuses such an index at startup; the sim only makes indices in range)"""
    for me in (4, 5, -1):
        assert not any(snapshots.due(h, 8, me, 4) for h in range(1, 100))


@pytest.mark.parametrize("every", [1, 2, 3, 7, 40])
def test_a_restart_of_any_validator_replays_at_most_every_blocks(tmp_path, every):
    """every below n (validators share phases), not a multiple of n, and beyond the chain: each
    validator's snapshot heights are its due heights (or the block after, when one commit reached
    two), and restarting any of them replays fewer than `every` blocks (+1) to the same state."""
    sim = Simulation(n=4, seed=5, app="kv", validation="software", txs_per_block=3)
    for node in sim.nodes:
        sim.durable(node.name, tmp_path / f"{node.name}.db", snapshot_every=every)
    sim.load(90)
    sim.run(blocks=25)
    for node in sim.nodes:
        store = node.store
        top = store.top_height()
        for h, *_ in store.snapshots():
            assert snapshots.due(h, every, node.index, 4) or snapshots.due(h - 1, every, node.index, 4), (node.name, h)
        app = sim._make_app(sim.genesis)
        start = snapshots.load(store, app)
        base = start.base.proposal.block.height if start.base else 0
        assert top - base <= every, (node.name, every, base, top)
        key = sim.keys[node.index]
        core = Core(sim.cfg[node.index], lambda m, k=key: k.sign(m).signature, app, store.safety(), start.history,
                    store.committed_range, start.base)
        live = sim._node("v0").committed[top - 1][0]
        assert core.committed.id == live.id and core.states[live.id].root == live.state_root


def test_peers_with_snapshots_at_different_heights_each_sync_a_validator_to_the_same_chain(tmp_path):
    """v0..v2 snapshot at phases 0, 2, 5 of 10: each serves a different height, and a syncing
    validator taking any of them gets the state its proof's block commits to."""
    sim = Simulation(n=4, seed=3, txs_per_block=5, validation="software", app="clearing")
    for node in sim.nodes[:3]:
        sim.durable(node.name, tmp_path / f"{node.name}.db", snapshot_every=10)
    sim.crashed.add("v3")
    sim.load(300)
    sim.run(blocks=26, max_ms=10**9, live=lambda node: node.name != "v3")
    heights = set()
    chain = {b.height: b for b, _, _ in sim._node("v0").committed}
    for peer in range(3):
        chunk = statesync.serve(sim._node(f"v{peer}").store, 0, 0)
        sync = statesync.StateSync(sim.cfg[3], sim._make_app(None))
        sync.peer = peer - 1 if peer else 3  # so the first ask goes to `peer`
        (ask, _) = sync.start()
        assert ask.to == peer
        sync.handle(peer, chunk)
        assert sync.done is not None, (peer, sync.counters)
        b = sync.done.proposal.block
        heights.add(b.height)
        assert chain[b.height].id == b.id and sync.done.state.root == b.state_root
    assert len(heights) == 3


def test_a_refused_snapshot_leaves_no_memory_behind():
    """A peer's garbage snapshot (one account leaf claiming 500,000 positions, 6 MB) is refused
    before a layout for its shape is built and cached: no honest leaf holds more positions than
    the genesis lists series, or more balances than it lists assets."""
    import gc
    import tracemalloc
    c = _state()
    blob = _blob(c.leaves()[:3] + [K[3] + bytes(8) + b"\0" + bytes(12 * 500_000)], c.globals_leaves())
    gc.collect()
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="account leaf 3 is malformed"):
            snap.restore(genesis(), blob, c.root(), SHA)
        gc.collect()
        retained, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert retained < len(blob) // 10, f"{retained / 1e6:.1f} MB kept after refusing a {len(blob) / 1e6:.0f} MB snapshot"
