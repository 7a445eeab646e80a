"""The store's index of committed ids (review s15 of aa1d897 / e4eeabb). An index on committed(id)
took each block's random id at a random leaf: every commit's synchronous transaction wrote one
more page and its splits (5.1 -> 10.6 KB of WAL a block at 300,000 blocks where the index grew
with the chain, 17.7 KB where an older store had it built at open). Now the ids go into a table
of their own ID_BATCH at a time, those not written yet held by the store (store.ID_BATCH says
what that saves as the chain grows). Also: a damaged schema met by the index's creation got out of the start as a raw
sqlite3.OperationalError, and a Core started from a snapshot with its store's committed_range
wrapped (a partial, a lambda) lost every id below the snapshot without a word."""
import functools
import os
import sqlite3
import types

import pytest

from consensus import core as core_module
from consensus import messages as m
from consensus import snapshots
from consensus import store as store_module
from consensus.core import Core
from consensus.sim import Simulation
from consensus.store import Store, StoreError

PAGE = 4096 + 24  # a WAL frame: a page and its header


def _filled(path, rows: int) -> list[bytes]:
    """A store of `rows` committed rows (random ids, as blocks' are), written as an older release's
    store would be: the committed table alone. Their ids."""
    Store(path).close()
    db = sqlite3.connect(str(path), isolation_level=None)
    for name in ("committed_ids", "committed_ids_top"):
        db.execute(f"DROP TABLE IF EXISTS {name}")
    db.execute("DROP INDEX IF EXISTS committed_id")
    ids = [os.urandom(32) for _ in range(rows)]
    db.execute("BEGIN")
    db.executemany("INSERT INTO committed VALUES (?, ?, ?)", ((h + 1, i, b"x" * 400) for h, i in enumerate(ids)))
    db.execute("COMMIT")
    db.close()
    return ids


def _wal_per_block(store: Store, path, first: int, parent: bytes, blocks: int) -> float:
    """WAL bytes written per block by store.add_committed, `blocks` blocks from height `first`."""
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.db.execute("PRAGMA wal_autocheckpoint=0")
    store.db.execute("PRAGMA synchronous=OFF")  # (what is written is the same; only the waits go)
    for h in range(first, first + blocks):
        b = types.SimpleNamespace(height=h, id=os.urandom(32), parent=parent)
        store.add_committed(types.SimpleNamespace(block=b))
        parent = b.id
    return os.path.getsize(f"{path}-wal") / blocks


def test_the_id_index_costs_less_than_a_page_of_wal_a_committed_block(tmp_path, monkeypatch):
    """A block's own row costs about one page of WAL (the committed table's last leaf); an index
    written with each block costs at least one more, its random leaf (before: +5.8 KB a block on
    a store of 40,000 blocks opened by an older release, measured). The ids written a batch at a
    time share leaves: under 3/4 of a page a block (+1.6 KB measured)."""
    monkeypatch.setattr(m, "encode", lambda p: b"x" * 400)
    path = tmp_path / "s.db"
    ids = _filled(path, 40_000)
    store = Store(path)
    try:
        per_block = _wal_per_block(store, path, len(ids) + 1, ids[-1], 2048)
        assert store.committed_height_of(ids[7]) == 8
    finally:
        store.db.close()
    db = sqlite3.connect(str(path), isolation_level=None)  # the same blocks' rows alone, for the base
    for name in ("committed_ids", "committed_ids_top"):
        db.execute(f"DROP TABLE IF EXISTS {name}")
    db.execute("DROP INDEX IF EXISTS committed_id")
    db.execute("DELETE FROM committed WHERE height > ?", (len(ids),))
    db.execute("VACUUM")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("PRAGMA wal_autocheckpoint=0")
    for h in range(len(ids) + 1, len(ids) + 2049):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO committed VALUES (?, ?, ?)", (h, os.urandom(32), b"x" * 400))
        db.execute("COMMIT")
    base = os.path.getsize(f"{path}-wal") / 2048
    db.close()
    assert per_block - base < 0.75 * PAGE, f"the id index writes {per_block - base:.0f} WAL bytes a block"


def test_ids_not_indexed_yet_are_found_and_indexed_after_a_crash(tmp_path, monkeypatch):
    """The ids committed since the last batch are held by the store and found; a validator killed
    (its store never closed) finds them after its restart, read at open from the committed rows
    above the index's top (held in memory, as before the kill, since the sixteenth session); a store an older release wrote (its committed_id index, or none)
    is indexed whole at open and loses that index; each lookup is one statement on a key."""
    monkeypatch.setattr(store_module, "ID_BATCH", 16, raising=False)
    monkeypatch.setattr(core_module, "WINDOW", 8, raising=False)
    sim = Simulation(n=4, seed=1, txs_per_block=5)
    sim.durable("v0", tmp_path / "v0.db")
    sim.load(40)
    sim.run(blocks=70, max_ms=10**9)
    store = sim._node("v0").store
    ids = store.committed_ids()
    assert all(store.committed_height_of(i) == h for h, i in enumerate(ids, 1))
    store.db.close()  # (a kill: no close, the ids of the batch not written yet only in memory)
    path = tmp_path / "v0.db"
    for older in ("CREATE INDEX committed_id ON committed (id)", ""):
        store = Store(path)
        try:
            statements = []
            store.db.set_trace_callback(statements.append)
            assert [store.committed_height_of(i) for i in ids] == list(range(1, len(ids) + 1))
            assert store.committed_height_of(os.urandom(32)) is None
            store.db.set_trace_callback(None)
            # (the first time, the killed batch's ids are in memory; then, an older release's store, all indexed)
            assert len(store._unindexed) == (len(ids) % 16 if older else 0)
            assert len(statements) == len(ids) + 1 - len(store._unindexed)
            for statement in set(s.split(" WHERE ")[0] for s in statements):
                plan = str(store.db.execute(f"EXPLAIN QUERY PLAN {statement} WHERE id = ?", (ids[0],)).fetchall())
                assert "SCAN" not in plan, plan
            names = [r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")]
            assert "committed_id" not in names
        finally:
            store.close()
        db = sqlite3.connect(str(path))  # as an older release leaves it
        db.execute("DROP TABLE committed_ids")
        db.execute("DROP TABLE committed_ids_top")
        if older:
            db.execute(older)
        db.commit()
        db.close()


def test_an_older_store_with_a_damaged_schema_stops_the_start_with_one_line(tmp_path):
    """A store an older release wrote (no id index yet) whose schema text renames committed.id:
    creating the index raised sqlite3.OperationalError "no such column: id" out of Store(), before
    the schema was checked."""
    sim = Simulation(n=4, seed=4, txs_per_block=5)
    sim.durable("v0", tmp_path / "v0.db")
    sim.load(60)
    sim.run(blocks=6)
    sim._node("v0").store.close()
    path = tmp_path / "v0.db"
    db = sqlite3.connect(str(path))
    for statement in ("DROP TABLE IF EXISTS committed_ids", "DROP TABLE IF EXISTS committed_ids_top",
                      "DROP INDEX IF EXISTS committed_id"):
        db.execute(statement)
    db.commit()
    db.execute("VACUUM")
    db.close()
    data = bytearray(path.read_bytes())
    old = b"committed (height INTEGER PRIMARY KEY, id BLOB"
    at = data.index(old)
    data[at:at + len(old)] = old.replace(b" id BLOB", b" ix BLOB")
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="damaged") as exc:
        Store(path)
    assert "\n" not in str(exc.value)


def test_a_core_from_a_snapshot_refuses_a_committed_source_that_hides_its_store(tmp_path):
    """Given its store's committed_range wrapped, a Core started from a snapshot read every id
    below it as unknown and served peers none of those blocks; now it refuses to start, and
    with the bound method it serves them."""
    sim = Simulation(n=4, seed=1, txs_per_block=5)
    sim.durable("v2", tmp_path / "v2.db", snapshot_every=20)
    sim.load(40)
    sim.run(blocks=50, max_ms=10**9)
    node = sim._node("v2")
    store, key = node.store, sim.keys[node.index]
    ids = store.committed_ids()

    def core(source):
        app = sim._make_app(sim.genesis)
        start = snapshots.load(store, app)
        assert start.base is not None and start.base.proposal.block.height > 10
        return Core(sim.cfg[node.index], lambda msg: key.sign(msg).signature, app, store.safety(), start.history,
                    source, start.base)

    for wrapped in (functools.partial(store.committed_range), lambda first, count: store.committed_range(first, count)):
        with pytest.raises(ValueError, match="snapshot"):
            core(wrapped)
    direct = core(store.committed_range)
    out = direct.handle(0, m.BlockRequest(ids[5], 3, 4))
    assert [p.block.height for a in out for p in a.msg.proposals] == [3, 4, 5, 6]
