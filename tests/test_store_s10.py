"""A store that lost its latest safety writes is refused, not started with an older last voted
view. SQLite drops a missing or damaged WAL without a word: a validator restarted on such a store
(the -wal file deleted or damaged, validator.db copied or restored without it) voted again in views
it had voted in. The store now keeps a seal of its last safety state beside the database
(validator.db.safety), written before save_safety returns, and compares the two at open."""
import os
import shutil
import sqlite3

import pytest

from consensus.core import Safety
from consensus.messages import QC
from consensus.store import Store, StoreError

SEAL = "validator.db.safety"


def _newest_slot(seal: bytes) -> int:
    """Which of the seal's two 512-byte records is the newer (its sequence number, u64 after the
    16-byte magic, the higher)."""
    return max((0, 1), key=lambda i: int.from_bytes(seal[i * 512 + 16:i * 512 + 24], "big"))


def _safety(view, qc_view=None):
    return Safety(view, QC(bytes([qc_view or 0]) * 32, qc_view if qc_view is not None else view - 1, 1), ())


def _copy(src, dst, names=("validator.db", "validator.db-wal", SEAL)):
    """The files of a store, copied while it is open (what a crash leaves on disk)."""
    dst.mkdir()
    for name in names:
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    return dst / "validator.db"


def _running(tmp_path):
    """A store that saved view 5, was closed (its backup.db taken then), and saved view 9 into its
    WAL alone (open: not folded into validator.db)."""
    live = tmp_path / "live"
    live.mkdir()
    store = Store(live / "validator.db")
    store.save_safety(_safety(5))
    store.close()
    shutil.copy(live / "validator.db", tmp_path / "backup.db")
    store = Store(live / "validator.db")
    store.save_safety(_safety(9))
    assert os.path.getsize(live / "validator.db-wal") > 0
    return store, live


def _refused(path, match):
    with pytest.raises(StoreError, match=match) as exc:
        Store(path)
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_a_lost_or_damaged_wal_is_refused_not_started_with_an_older_view(tmp_path):
    store, live = _running(tmp_path)
    # the WAL deleted (as by an operator "cleaning up" after a crash)
    why = _refused(_copy(live, tmp_path / "deleted", ("validator.db", SEAL)),
                   "lost its latest safety writes")
    assert "last voted view 5" in why and "says view 9" in why and "restore the data directory whole" in why
    # the WAL damaged: a byte of its first frame (header 32 bytes, frame header 24) flipped, the
    # frame's checksum fails and SQLite drops it and every frame after it, the commit of view 9
    path = _copy(live, tmp_path / "damaged")
    wal = bytearray((tmp_path / "damaged" / "validator.db-wal").read_bytes())
    wal[32 + 24 + 100] ^= 0xFF
    (tmp_path / "damaged" / "validator.db-wal").write_bytes(bytes(wal))
    _refused(path, "lost its latest safety writes")
    # the WAL cut short inside its first frame
    path = _copy(live, tmp_path / "truncated")
    os.truncate(tmp_path / "truncated" / "validator.db-wal", 32 + 24 + 2000)
    _refused(path, "lost its latest safety writes")
    # a backup of validator.db (from a clean stop at view 5) restored into the data directory
    restored = _copy(live, tmp_path / "restored", (SEAL,))
    shutil.copy(tmp_path / "backup.db", restored)
    _refused(restored, "lost its latest safety writes")
    store.close()


def test_validator_db_copied_alone_from_a_running_store_is_refused(tmp_path):
    store, live = _running(tmp_path)
    _refused(_copy(live, tmp_path / "alone", ("validator.db",)), "safety seal .* is missing")
    # and with its WAL but not the seal (it holds view 9, but nothing says it holds everything)
    _refused(_copy(live, tmp_path / "no-seal", ("validator.db", "validator.db-wal")), "is missing")
    # a reader of the running validator's store (it saves nothing) marks nothing as it closes
    reader = Store(live / "validator.db")
    assert reader.safety().last_voted_view == 9
    reader.close()
    _refused(_copy(live, tmp_path / "after-reader", ("validator.db", "validator.db-wal")), "is missing")
    # the seal deleted in place
    store.close()
    reopened = Store(live / "validator.db")
    reopened.save_safety(_safety(10))
    copied = _copy(live, tmp_path / "in-place")
    os.remove(copied.parent / SEAL)
    _refused(copied, "is missing")
    reopened.close()


def test_a_restart_after_a_crash_or_a_clean_stop_starts_with_the_latest_view(tmp_path):
    store, live = _running(tmp_path)
    crashed = Store(_copy(live, tmp_path / "crashed"))  # every file as the crash left it
    assert crashed.safety().last_voted_view == 9
    crashed.save_safety(_safety(11))
    crashed.close()
    crashed = Store(tmp_path / "crashed" / "validator.db")
    assert crashed.safety().last_voted_view == 11
    crashed.close()
    store.close()  # a clean stop: the WAL folded into validator.db, which alone may then be moved
    assert not os.path.exists(live / "validator.db-wal")
    moved = Store(_copy(live, tmp_path / "moved", ("validator.db",)))
    assert moved.safety().last_voted_view == 9
    moved.save_safety(_safety(12))  # sealed from here on, in its new place
    assert os.path.exists(tmp_path / "moved" / SEAL)
    moved.close()
    moved.close()  # again, as a node's runner does: nothing more
    moved = Store(tmp_path / "moved" / "validator.db")
    assert moved.safety().last_voted_view == 12
    moved.close()


def test_a_crash_between_the_commit_and_the_seal_starts(tmp_path):
    """The seal is written after the COMMIT: a crash between leaves it behind the database (the
    vote never left), which starts; a crash tearing the record being written likewise."""
    store, live = _running(tmp_path)
    seal = (live / SEAL).read_bytes()  # the seal as it was before the save below
    store.save_safety(_safety(10, qc_view=9))
    behind = _copy(live, tmp_path / "behind")
    (tmp_path / "behind" / SEAL).write_bytes(seal)
    restarted = Store(behind)
    assert restarted.safety().last_voted_view == 10
    restarted.close()
    torn = _copy(live, tmp_path / "torn")
    other = (1 - _newest_slot(seal)) * 512  # where the record of view 10 was being written
    (tmp_path / "torn" / SEAL).write_bytes(seal[:other + 20] + bytes(40) + seal[other + 60:])
    restarted = Store(torn)
    assert restarted.safety().last_voted_view == 10
    restarted.close()
    store.close()


def test_a_damaged_seal_is_refused_with_one_line(tmp_path):
    store, live = _running(tmp_path)
    store.close()
    seal = (live / SEAL).read_bytes()
    older = (1 - _newest_slot(seal)) * 512 + 18  # a byte of the older record's sequence number
    cases = {"short": seal[:700], "long": seal + b"\0", "empty": b"",
             "both records": bytes([b ^ 1 for b in seal]),
             # a record damaged while the database holds the other's state: no crash tears that
             "older record": seal[:older] + bytes([seal[older] ^ 1]) + seal[older + 1:]}
    for name, data in cases.items():
        path = _copy(live, tmp_path / name.replace(" ", "-"))
        (path.parent / SEAL).write_bytes(data)
        _refused(path, "safety seal .* is damaged")


def test_a_store_written_before_the_seal_starts_and_is_sealed(tmp_path):
    path = tmp_path / "validator.db"
    store = Store(path)
    store.save_safety(_safety(7))
    store.close()
    # as an older release leaves it: no seal, no mark in the header
    os.remove(tmp_path / SEAL)
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 0")
    db.close()
    store = Store(path)
    assert store.safety().last_voted_view == 7
    store.save_safety(_safety(8))
    assert os.path.exists(tmp_path / SEAL)
    # sealed from here on: its WAL lost, it is refused
    _refused(_copy(tmp_path, tmp_path / "lost", ("validator.db", SEAL)), "lost its latest safety writes")
    store.close()


def test_an_empty_store_and_a_memory_store(tmp_path):
    memory = Store(":memory:")
    memory.save_safety(_safety(3))
    assert memory.safety().last_voted_view == 3
    memory.close()
    empty = Store(tmp_path / "validator.db")  # opened and closed: nothing written, nothing sealed
    empty.close()
    assert not os.path.exists(tmp_path / SEAL)
    store = Store(tmp_path / "validator.db")
    assert store.safety() is None
    store.save_safety(_safety(0, qc_view=0))  # nothing voted yet: the first seal
    store.close()
    store = Store(tmp_path / "validator.db")
    assert store.safety().last_voted_view == 0
    store.close()


@pytest.mark.parametrize("high_qc", [10 ** 12, "text"])
def test_a_safety_row_whose_high_qc_is_not_a_blob_is_refused_in_one_line(tmp_path, high_qc):
    """safety() read the high QC through bytes(): a damaged row holding the integer 10**12 asked
    for a terabyte (MemoryError) instead of the row's one-line refusal."""
    store = Store(tmp_path / "validator.db")
    store.save_safety(_safety(5))
    store.close()
    db = sqlite3.connect(tmp_path / "validator.db")
    db.execute("UPDATE safety SET high_qc = ?", (high_qc,))
    db.commit()
    db.close()
    store = Store(tmp_path / "validator.db")
    with pytest.raises(StoreError, match="high QC is a (int|str), not a blob") as exc:
        store.safety()
    assert "\n" not in str(exc.value)
