"""A held-out review of the safety seal (8a38974, 17d61b7, 87f4a6e): a reader of a running
validator's store is not refused because the validator saved while it opened, and a seal that
cannot be read or written (a FIFO, a directory at its .tmp, a failing disk) is one StoreError line
naming the file, never a traceback."""
import errno
import os
import shutil
import sqlite3

import pytest

from consensus import store as store_module
from consensus.core import Safety
from consensus.messages import QC
from consensus.store import Store, StoreError

SEAL = "validator.db.safety"


def _safety(view):
    return Safety(view, QC(bytes([view]) * 32, view - 1, 1), ())


def _one_line(exc_info, *words):
    text = str(exc_info.value)
    assert "\n" not in text
    for word in words:
        assert word in text, text


def test_a_reader_opening_while_the_validator_saves_is_not_refused(tmp_path, monkeypatch):
    """The validator writes its seal after the row's COMMIT: a reader (localnet's report, demo's
    market_story, an operator's script) that read the row, then the seal, with a save between,
    saw a seal ahead of the row and was refused as a store that lost its latest safety writes."""
    writer = Store(tmp_path / "validator.db")
    writer.save_safety(_safety(5))
    row_state = store_module._row_state

    def saved_meanwhile(db):
        row = row_state(db)
        writer.save_safety(_safety(6))  # the running validator's next save, as the reader opens
        return row

    monkeypatch.setattr(store_module, "_row_state", saved_meanwhile)
    reader = Store(tmp_path / "validator.db")
    monkeypatch.setattr(store_module, "_row_state", row_state)
    assert reader.safety().last_voted_view == 6
    reader.close()
    writer.close()
    # a store that did lose its latest writes is still refused (the WAL of view 6 deleted)
    writer = Store(tmp_path / "validator.db")
    writer.save_safety(_safety(7))
    os.mkdir(tmp_path / "lost")
    for name in ("validator.db", SEAL):
        shutil.copy(tmp_path / name, tmp_path / "lost" / name)
    with pytest.raises(StoreError, match="lost its latest safety writes"):
        Store(tmp_path / "lost" / "validator.db")
    writer.close()


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink"])
def test_a_seal_that_is_not_a_file_is_refused_in_one_line(tmp_path, kind):
    """A FIFO at the seal's path opened (O_RDWR does not block on one) and its read raised
    OSError 'Illegal seek' out of Store()."""
    path = tmp_path / "validator.db"
    store = Store(path)
    store.save_safety(_safety(5))
    store.close()
    os.remove(tmp_path / SEAL)
    {"fifo": os.mkfifo, "directory": os.mkdir,
     "symlink": lambda p: os.symlink(tmp_path / "elsewhere", p)}[kind](tmp_path / SEAL)
    with pytest.raises(StoreError) as exc:
        Store(path)
    _one_line(exc, str(tmp_path / SEAL))


def test_a_seal_that_cannot_be_created_is_one_line_naming_it(tmp_path):
    """The seal is made through validator.db.safety.tmp: a directory there (or a link, or a file
    another user owns) raised IsADirectoryError out of save_safety, and the node, which reports
    OSError in one line only for a full or failing disk, stopped with a traceback."""
    path = tmp_path / "validator.db"
    os.mkdir(tmp_path / (SEAL + ".tmp"))
    store = Store(path)
    with pytest.raises(StoreError) as exc:
        store.save_safety(_safety(5))
    _one_line(exc, str(tmp_path / SEAL))
    store.close()
    os.rmdir(tmp_path / (SEAL + ".tmp"))
    store = Store(path)  # the save was refused before its transaction: nothing was written
    assert store.safety() is None
    store.save_safety(_safety(5))
    store.close()


@pytest.mark.parametrize("call", ["pwrite", "fdatasync"])
def test_a_seal_write_that_fails_is_one_line_and_the_restart_starts(tmp_path, monkeypatch, call):
    """A disk failing under the seal (EIO) as a save seals it: one StoreError line naming the
    file (the vote does not leave); the database committed the state, the seal stayed behind it:
    the restart starts with that state."""
    path = tmp_path / "validator.db"
    store = Store(path)
    store.save_safety(_safety(5))

    def failing(*args):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(store_module.os, call, failing)
    with pytest.raises(StoreError) as exc:
        store.save_safety(_safety(6))
    monkeypatch.undo()
    _one_line(exc, str(tmp_path / SEAL), os.strerror(errno.EIO))
    # the crash that follows: every file as it is
    os.mkdir(tmp_path / "crashed")
    for name in ("validator.db", "validator.db-wal", SEAL):
        shutil.copy(tmp_path / name, tmp_path / "crashed" / name)
    store.close()
    restarted = Store(tmp_path / "crashed" / "validator.db")
    assert restarted.safety().last_voted_view == 6
    restarted.save_safety(_safety(7))
    restarted.close()


def test_the_sealed_mark_reaches_the_database_file_after_a_reader_let_go(tmp_path):
    """The first save after a start marks the database SEALED and checkpoints, so validator.db
    copied alone (without its WAL and seal) is refused. A reader holding a read transaction then
    (another program's) kept the checkpoint from reaching the file, its result was not read, and
    no later save tried again: validator.db copied alone, while the validator ran on, started
    at view 5 (CLEAN in its file) though view 10 was voted."""
    path = tmp_path / "validator.db"
    store = Store(path)
    store.save_safety(_safety(5))
    store.close()  # a clean stop: CLEAN
    store = Store(path)
    store.db.execute("PRAGMA busy_timeout = 10")  # (the checkpoint gives up on the reader at once)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT * FROM safety").fetchall()
    store.save_safety(_safety(9))
    reader.execute("COMMIT")
    reader.close()
    store.save_safety(_safety(10))
    os.mkdir(tmp_path / "alone")
    shutil.copy(path, tmp_path / "alone" / "validator.db")
    with pytest.raises(StoreError, match="is missing"):
        Store(tmp_path / "alone" / "validator.db")
    store.close()
