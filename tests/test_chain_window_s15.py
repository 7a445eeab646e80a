"""The committed ids a validator holds in memory (session 15): Core.chain and Core.heights kept
every committed id for ever (~100-157 bytes a block), and an idle network of the default config
commits 135-151 empty blocks a second: each validator grew by ~1.5-2 GB a day in these two alone.
With a store they now hold the newest WINDOW to 2 x WINDOW ids and read the older ones from the
store (an index on the committed ids), so peers are still served blocks far below the window, a
restart and a state sync still start, and a snapshot's Base carries no list of the chain's ids.
WINDOW is made small here so that a few hundred blocks cross it many times."""
import os
import sqlite3
from dataclasses import fields

import pytest

from consensus import core as core_module
from consensus import messages as m
from consensus import snapshots
from consensus import store as store_module
from consensus.core import Base, Core
from consensus.sim import Simulation
from consensus.store import Store

SMALL = 8  # WINDOW in these tests


@pytest.fixture(autouse=True)
def _small_window(monkeypatch):
    monkeypatch.setattr(core_module, "WINDOW", SMALL, raising=False)
    monkeypatch.setattr(store_module, "ID_BATCH", 2 * SMALL, raising=False)


def _ids_held(obj) -> int:
    """The 32-byte ids reachable in memory from obj (through lists, tuples, dicts and objects'
    attributes; a store is not followed: what it holds is on disk)."""
    seen, count, todo = set(), 0, [obj]
    while todo:
        o = todo.pop()
        if id(o) in seen or isinstance(o, Store):
            continue
        seen.add(id(o))
        if isinstance(o, bytes):
            count += len(o) == 32
        elif isinstance(o, (list, tuple)):
            todo.extend(o)
        elif isinstance(o, dict):
            todo.extend(o)
            todo.extend(o.values())
        elif hasattr(o, "__dict__"):
            todo.extend(vars(o).values())
    return count


def _durable(tmp_path, blocks: int, every: int = 0) -> Simulation:
    sim = Simulation(n=4, seed=1, txs_per_block=5)
    for node in sim.nodes:
        sim.durable(node.name, tmp_path / f"{node.name}.db", snapshot_every=every)
    sim.load(40)
    sim.run(blocks=blocks, max_ms=10**9)
    return sim


def _restarted(sim, name: str) -> Core:
    node = sim._node(name)
    app = sim._make_app(sim.genesis)
    start = snapshots.load(node.store, app)
    key = sim.keys[node.index]
    return Core(sim.cfg[node.index], lambda msg: key.sign(msg).signature, app, node.store.safety(), start.history,
                node.store.committed_range, start.base)


def _served(core: Core, block_id: bytes, from_height: int, count: int = m.MAX_RANGE) -> list[int]:
    out = core.handle(2, m.BlockRequest(block_id, from_height, count))
    return [p.block.height for a in out for p in a.msg.proposals]


def _bounded(core: Core) -> None:
    held = _ids_held(core.chain) + _ids_held(core.heights)
    assert held <= 4 * SMALL + 1, f"{held} committed ids held in memory at height {core.committed.height}"


def test_the_committed_ids_held_in_memory_are_a_window_not_the_chain(tmp_path):
    """150 blocks with a window of 8: the ids held stay under 2 x 8 in each structure (before:
    all 150 in both), and every height still reads its id, the older ones from the store."""
    sim = _durable(tmp_path, 150)
    node = sim._node("v0")
    core, ids = node.core, node.store.committed_ids()
    assert core.committed.height >= 150
    _bounded(core)
    assert len(core.chain) == core.committed.height + 1
    assert core.chain[0] == core.genesis.id and core.chain[1:len(core.chain)] == ids[:core.committed.height]
    assert [core.chain[h] for h in (1, 2, 77, core.committed.height)] == [ids[0], ids[1], ids[76],
                                                                          core.committed.id]


def test_a_block_far_below_the_window_is_served_and_an_unknown_id_costs_one_indexed_lookup(tmp_path):
    sim = _durable(tmp_path, 150)
    node = sim._node("v0")
    core, store, ids = node.core, node.store, node.store.committed_ids()
    assert _served(core, ids[2], 1) == [1, 2, 3]  # (height 3: ~140 heights below the ids held)
    assert _served(core, ids[99], 40, 5) == [40, 41, 42, 43, 44]
    assert _served(core, core.committed.id, 1) == list(range(1, m.MAX_RANGE + 1))
    statements = []
    store.db.set_trace_callback(statements.append)
    try:
        assert core.handle(2, m.BlockRequest(os.urandom(32), 1, m.MAX_RANGE)) == []
    finally:
        store.db.set_trace_callback(None)
    assert len(statements) == 1, statements
    plan = " ".join(str(r) for r in store.db.execute(f"EXPLAIN QUERY PLAN {statements[0]}"))
    assert "SCAN" not in plan, plan  # (not a scan of the committed blocks)


def test_a_store_written_without_the_id_index_gets_it_at_open(tmp_path, monkeypatch):
    """A store of an older release has no index of the committed ids: opened, it is made, and a
    restarted validator serves its old blocks from it. (A tail under ID_BATCH is read, not
    written, since the sixteenth session: here the batch is made smaller than the chain.)"""
    from consensus import store as store_module
    monkeypatch.setattr(store_module, "ID_BATCH", 16)
    sim = _durable(tmp_path, 40)
    node = sim._node("v1")
    ids = node.store.committed_ids()
    path = tmp_path / "v1.db"
    node.store.close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE IF EXISTS committed_ids")
    db.execute("DROP TABLE IF EXISTS committed_ids_top")
    db.execute("DROP INDEX IF EXISTS committed_id")
    db.commit()
    db.close()
    node.store = Store(path)
    assert [node.store.committed_height_of(i) for i in ids] == list(range(1, len(ids) + 1))
    assert node.store.db.execute("SELECT COUNT(*) FROM committed_ids").fetchone()[0] == len(ids)
    core = _restarted(sim, "v1")
    _bounded(core)
    assert _served(core, ids[3], 2, 3) == [2, 3, 4]


def test_a_restart_holds_a_window_serves_old_blocks_and_goes_on(tmp_path):
    """A validator restarted from its store (replaying every block) and one from its snapshot
    hold a window of ids; both serve blocks below it, and the killed one commits on with the
    others."""
    sim = _durable(tmp_path, 60, every=20)
    store = sim._node("v2").store
    ids = store.committed_ids()
    core = _restarted(sim, "v2")  # from its newest snapshot
    assert core.replayed < 20
    _bounded(core)
    assert core.chain[5] == ids[4] and _served(core, ids[6], 5, 3) == [5, 6, 7]
    sim.kill("v0", sim.now, sim.now + 500.0)
    sim.run(blocks=140, max_ms=10**9, live=lambda node: True)
    v0 = sim._node("v0")
    assert v0.core.committed.height >= 140 and v0.core.committed.id == sim._node("v1").core.chain[
        v0.core.committed.height]
    _bounded(v0.core)
    assert _served(v0.core, ids[9], 9, 2) == [9, 10]


def test_a_snapshot_base_carries_no_chain_and_a_synced_validator_holds_a_window(tmp_path):
    """Base is the snapshot's block and state (before: also a tuple of every id below it, None
    for a state-synced one: ~800 MB of them at height 10^8). v3 joins from a peer's snapshot:
    it holds a window, serves what it stored, and nothing below its first block."""
    assert {f.name for f in fields(Base)} == {"proposal", "state"}
    sim = Simulation(n=4, seed=3, txs_per_block=5, validation="software")
    for node in sim.nodes[:3]:
        sim.durable(node.name, tmp_path / f"{node.name}.db", snapshot_every=20)

    def join(s):
        if len(s._node("v0").committed) >= 60:
            s.state_sync("v3", tmp_path / "v3.db", s.now)
        else:
            s.at(s.now + 50.0, join)
    sim.at(50.0, join)
    sim.crashed.add("v3")
    sim.load(400)
    sim.run(blocks=140, max_ms=10**9, live=lambda node: node.name != "v3")
    v3 = sim._node("v3")
    assert v3.sync is None, "v3 never finished its state sync"
    core, first = v3.core, v3.store.first_height()
    assert first >= 40 and core.committed.height >= first + 4 * SMALL
    _bounded(core)
    assert core.chain[first - 1] is None and core.chain[first] == v3.store.committed_ids()[first - 1]
    assert _served(core, core.chain[first + 3], first + 1) == [first + 1, first + 2, first + 3]
    assert _served(core, core.chain[first + 3], first - 1) == []  # (below its first block: others serve it)
