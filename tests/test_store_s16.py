"""Review s16 (crash and recovery) of the store:
1. validator.lock, the file LockedStore locked, reads like a stale pid file: removed while its
   validator ran, a second process opened the data_dir, and its save_safety wrote a lower last
   voted view over the first one's (the first, restarted, could vote twice in a view). Now the
   directory itself is locked too, and save_safety refuses a safety row that changed under it
   (another writer) or a lower last voted view.
2. Every start after a stop wrote the id index's tail (_index_tail): on a full disk, or with
   another program holding the database's write lock, the start failed as a damaged store, with
   the advice to remove the data directory (which forgets the validator's votes). Now the tail is
   read into memory, and an error of the disk or of another program is said to be one."""
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from consensus import store as store_module
from consensus.core import Safety
from consensus.messages import QC
from consensus.node import DataDirInUse, LockedStore, NodeConfig, NodeRunner, StartupError
from consensus.sim import Simulation
from consensus.store import Store, StoreError

HOLD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from consensus.core import Safety
    from consensus.messages import QC
    from consensus.node import LockedStore
    s = LockedStore(Path(sys.argv[1]))
    s.save_safety(Safety(10, QC(bytes([9]) * 32, 9, 1), ()))
    print("ready", flush=True)
    sys.stdin.readline()
""")


def test_a_data_dir_whose_lock_file_was_removed_is_still_refused_to_a_second_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(DataDirInUse, match=f"pid {holder.pid}"):
            LockedStore(tmp_path)
        os.unlink(tmp_path / "validator.lock")  # taken for a stale pid file
        with pytest.raises(DataDirInUse, match="in use by another validator process"):
            LockedStore(tmp_path)
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=30)
    store = LockedStore(tmp_path)  # its holder gone, the data_dir opens, its votes as they were
    try:
        assert store.safety().last_voted_view == 10
    finally:
        store.close()


def test_a_forked_child_does_not_keep_the_database_locked(tmp_path):
    store = LockedStore(tmp_path)
    pid = os.fork()
    if pid == 0:  # the child: its copies of the locks are closed at the fork
        os._exit(0 if store.lock == -1 and store.db_lock == -1 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    store.close()
    LockedStore(tmp_path).close()  # (released by close)


def test_save_safety_refuses_a_row_another_writer_changed_or_a_lower_view(tmp_path):
    path = tmp_path / "validator.db"
    first, second = Store(path), Store(path)
    try:
        first.save_safety(Safety(10, QC(bytes([9]) * 32, 9, 1), ()))
        for view in (5, 11):  # whatever the other one writes, it writes over a row it never read
            with pytest.raises(StoreError, match="another process writes to this data_dir"):
                second.save_safety(Safety(view, QC(bytes([4]) * 32, 4, 1), ()))
        first.save_safety(Safety(12, QC(bytes([9]) * 32, 9, 1), ()))  # (the first goes on)
        with pytest.raises(StoreError, match="refusing to lower the stored last voted view from 12 to 11"):
            first.save_safety(Safety(11, QC(bytes([9]) * 32, 9, 1), ()))
        assert first.safety().last_voted_view == 12
    finally:
        first.close()
        second.close()
    reopened = Store(path)
    try:
        assert reopened.safety().last_voted_view == 12
        reopened.save_safety(Safety(13, QC(bytes([9]) * 32, 9, 1), ()))  # (a store opened again writes on)
    finally:
        reopened.close()


def _stopped_store(tmp_path, blocks=12):
    sim = Simulation(n=4, seed=3, txs_per_block=5, validation="software")
    sim.durable("v1", tmp_path / "validator.db", snapshot_every=4)
    sim.load(60)
    sim.run(blocks=blocks)
    store = sim._node("v1").store
    ids = store.committed_ids()
    assert 0 < len(ids) < store_module.ID_BATCH  # (a tail the id index has not taken: as after any stop)
    store.close()
    return tmp_path / "validator.db", ids


def test_opening_a_store_writes_nothing_and_finds_the_tail(tmp_path, monkeypatch):
    path, ids = _stopped_store(tmp_path)
    real = store_module._Connection.execute

    def full(self, *args):  # SQLite's answer to any write on a full disk
        if str(args[0]).lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE", "BEGIN IMMEDIATE", "CREATE",
                                                       "DROP")) and "IF NOT EXISTS" not in str(args[0]).upper() \
                and "IF EXISTS" not in str(args[0]).upper():
            raise sqlite3.OperationalError("database or disk is full")
        return real(self, *args)
    monkeypatch.setattr(store_module._Connection, "execute", full)
    store = Store(path)
    try:
        assert [store.committed_height_of(i) for i in ids] == list(range(1, len(ids) + 1))
        assert store.safety() is not None
    finally:
        store.close()


def test_another_program_holding_the_write_lock_does_not_stop_the_start(tmp_path):
    path, ids = _stopped_store(tmp_path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        store = Store(path)
        try:
            assert store.committed_height_of(ids[-1]) == len(ids)
        finally:
            store.close()
    finally:
        other.execute("ROLLBACK")
        other.close()


def _sqlite_error(text: str, code: int) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(text)
    exc.sqlite_errorcode = code
    return exc


@pytest.mark.parametrize("text,code", [("database or disk is full", 13), ("database is locked", 5),
                                       ("disk I/O error", 10 | (3 << 8)), ("attempt to write a readonly database", 8)])
def test_a_disk_or_another_programs_error_at_start_is_said_to_be_one(tmp_path, monkeypatch, text, code):
    from consensus.localnet import write_configs
    path = write_configs(tmp_path, 4, 5, "software", 0.0, 1000.0, app="kv")[0]
    real = store_module._Connection.execute

    def failing(self, *args):
        if str(args[0]).lstrip().upper().startswith("CREATE TABLE"):
            raise _sqlite_error(text, code)
        return real(self, *args)
    monkeypatch.setattr(store_module._Connection, "execute", failing)
    with pytest.raises(StartupError) as caught:
        NodeRunner(NodeConfig.load(path))
    message = str(caught.value)
    assert text in message and "the store is not damaged" in message and "do not remove" in message
    monkeypatch.setattr(store_module._Connection, "execute", real)
    NodeRunner(NodeConfig.load(path)).close()  # (nothing held: the data_dir opens once the disk is back)


def test_a_damaged_schema_at_start_is_still_a_damaged_store(tmp_path, monkeypatch):
    path, _ = _stopped_store(tmp_path)
    real = store_module._Connection.execute

    def damaged(self, *args):
        if str(args[0]).lstrip().upper().startswith("CREATE TABLE"):
            raise _sqlite_error("malformed database schema (committed)", 11)  # SQLITE_CORRUPT
        return real(self, *args)
    monkeypatch.setattr(store_module._Connection, "execute", damaged)
    with pytest.raises(StoreError, match="restore a backup, or remove the data directory"):
        Store(path)


# ---- a restart's replay reads the chain a batch at a time --------------------------------------


def test_a_replay_from_the_genesis_holds_a_batch_of_blocks_not_the_chain(tmp_path):
    """Store.history() read every committed row into one tuple and Core took it whole (and
    verified every certificate in one batch at the end): a replay from the genesis
    (snapshot_every = 0, or snapshots that do not restore) held the whole chain, about 19 KB a
    small block, and a chain that outgrew memory could never restart. Now the store reads
    HISTORY_BATCH rows at a time and the core checks REPLAY_CHECK_BATCH blocks at a time."""
    import gc

    from consensus import core as core_module
    from consensus import snapshots
    from consensus.core import Core
    from consensus.messages import Proposal
    sim = Simulation(n=4, seed=2, txs_per_block=5, validation="software")
    sim.durable("v1", tmp_path / "v1.db")
    sim.load(40)
    sim.run(blocks=700, max_ms=10**9)
    node = sim._node("v1")
    top = node.store.top_height()
    assert top >= 700
    app = sim._make_app(sim.genesis)
    start = snapshots.load(node.store, app)
    assert start.base is None
    gc.collect()
    before = sum(1 for o in gc.get_objects() if type(o) is Proposal)  # (the simulation's other validators')
    live, seen = [], [0]

    def watched(history):
        for p in history:
            seen[0] += 1
            if seen[0] % 100 == 1:
                live.append(sum(1 for o in gc.get_objects() if type(o) is Proposal) - before)
            yield p
    key = sim.keys[node.index]
    core = Core(sim.cfg[node.index], lambda msg: key.sign(msg).signature, app, node.store.safety(),
                watched(start.history), node.store.committed_range, start.base)
    assert core.replayed == top and core.committed.height == top and seen[0] == top
    bound = store_module.HISTORY_BATCH + core_module.REPLAY_CHECK_BATCH + 64
    assert max(live) <= bound < top, live  # (the whole chain was alive from the first block on)


def test_a_replay_still_refuses_a_stored_block_whose_certificate_does_not_verify(tmp_path):
    """Checked a batch at a time, a bad certificate past the first batch still stops the start."""
    from consensus import snapshots
    from consensus.core import Core, InvariantViolation
    from consensus.messages import Proposal, decode, encode
    sim = Simulation(n=4, seed=5, txs_per_block=5, validation="software")
    sim.durable("v1", tmp_path / "v1.db")
    sim.load(40)
    sim.run(blocks=300, max_ms=10**9)
    node = sim._node("v1")
    height = 280  # (past REPLAY_CHECK_BATCH)
    (frame,) = node.store.db.execute("SELECT proposal FROM committed WHERE height = ?", (height,)).fetchone()
    p = decode(bytes(frame))
    forged = Proposal(p.block, bytes(64))  # the proposer's signature zeroed: the block id is unchanged
    node.store.db.execute("UPDATE committed SET proposal = ? WHERE height = ?", (encode(forged), height))
    app = sim._make_app(sim.genesis)
    start = snapshots.load(node.store, app)
    key = sim.keys[node.index]
    with pytest.raises(InvariantViolation, match=f"stored block at height {height}: its proposer's signature"):
        Core(sim.cfg[node.index], lambda msg: key.sign(msg).signature, app, node.store.safety(), start.history,
             node.store.committed_range, start.base)


def test_a_validator_of_another_network_leaves_no_key_in_an_unnamed_data_dir(tmp_path):
    """validator.key was written before the network check: a validator of another network given a
    data_dir that names no validator yet (one an older release wrote) left its key there, was then
    refused as of another network, and the data_dir's own validator was refused as another's."""
    import dataclasses

    from consensus.localnet import write_configs
    owner = NodeConfig.load(write_configs(_made(tmp_path / "a"), 4, 10, "software", 0.0, 1000.0, app="kv", load="none")[0])
    NodeRunner(owner).close()
    os.unlink(owner.data_dir / "validator.key")  # (as an older release left it)
    stranger = NodeConfig.load(write_configs(_made(tmp_path / "b"), 4, 10, "software", 0.0, 1000.0, app="kv",
                                             load="none")[0])
    stranger = dataclasses.replace(stranger, data_dir=owner.data_dir)
    with pytest.raises(StartupError, match="belongs to network"):
        NodeRunner(stranger)
    assert not (owner.data_dir / "validator.key").exists()
    NodeRunner(owner).close()  # its own validator starts, and names it
    assert (owner.data_dir / "validator.key").read_text().strip() == owner.keys[owner.index].hex()
    with pytest.raises(StartupError, match="is the store of the validator with key"):
        NodeRunner(stranger)


def _made(path):
    path.mkdir()
    return path


def test_a_state_synced_store_opens_without_writing(tmp_path):
    """Review s16 of the above: a state-synced store has no committed_ids_top row, so every id
    from height 0 counted as unindexed and the open took the older-release path, which writes:
    another program holding the write lock (here) or a full disk failed the start."""
    import hashlib

    from consensus.messages import Block, Proposal, Txs

    def block(h, parent):
        return Block(7 + h, h, parent, 1, bytes(32), bytes([h % 251]) * 32, hashlib.sha256(b"").digest(),
                     Txs.empty(), QC(parent, 6 + h, h - 1, (), b""), None)
    path = tmp_path / "validator.db"
    first = block(5_000, b"\x11" * 32)  # a snapshot past ID_BATCH blocks
    store = Store(path)
    store.claim_network(b"\x22" * 32)
    store.begin_from_snapshot(Proposal(first, bytes(64)), 0, b"snapshot", Safety(0, QC(bytes(32), 0, 0), ()))
    ids, parent = [first.id], first.id
    for h in range(5_001, 5_011):
        b = block(h, parent)
        store.add_committed(Proposal(b, bytes(64)))
        ids.append(b.id)
        parent = b.id
    store.close()
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    try:
        store = Store(path)
        try:
            assert [store.committed_height_of(i) for i in ids] == list(range(5_000, 5_011))
        finally:
            store.close()
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_a_validator_started_under_flock_of_its_data_dir_opens_it(tmp_path):
    """Review s16: the first fix locked the data_dir itself, so `flock <data_dir> accel node`, a
    common guard against a second start, made the validator refuse its own data_dir. The lock is
    now on validator.db (flock, apart from SQLite's fcntl locks)."""
    import fcntl
    (tmp_path / "validator.lock").write_text("424242\n")  # (a run before left its pid)
    held = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the wrapper's lock
        store = LockedStore(tmp_path)
        store.close()
    finally:
        os.close(held)
