"""A write that SQLite undid itself (a full disk rolls the transaction back) reaches the caller
with its own error, not with "cannot rollback - no transaction is active" from the store's
rollback after it, which named the wrong failure to the operator."""
import sqlite3

import pytest

from consensus.core import Safety
from consensus.messages import QC
from consensus.store import Store


def test_a_write_sqlite_undid_itself_raises_its_own_error(tmp_path, monkeypatch):
    store = Store(tmp_path / "validator.db")
    safety = Safety(3, QC(bytes(32), 0, 0), ())

    def full_disk(_safety):
        store.db.execute("ROLLBACK")  # what SQLite does itself on SQLITE_FULL
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "_write_safety", full_disk)
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        store.save_safety(safety)
    store.close()
