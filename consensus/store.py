"""A validator's durable state in SQLite (WAL mode, synchronous writes): the safety state, written
before any vote that follows it leaves, and the committed blocks, from which a restarted
validator replays its state and serves peers that are catching up."""
from __future__ import annotations

import sqlite3

from . import messages
from .core import Safety
from .messages import Proposal


class Store:
    def __init__(self, path):
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a vote may leave only after its state is on disk
        self.db.execute("CREATE TABLE IF NOT EXISTS safety (one INTEGER PRIMARY KEY CHECK (one = 1), "
                        "last_voted_view INTEGER NOT NULL, high_qc BLOB NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS committed (height INTEGER PRIMARY KEY, id BLOB NOT NULL, "
                        "proposal BLOB NOT NULL)")

    def save_safety(self, safety: Safety) -> None:
        self.db.execute("INSERT OR REPLACE INTO safety VALUES (1, ?, ?)",
                        (safety.last_voted_view, messages.encode_qc(safety.high_qc)))

    def safety(self) -> Safety | None:
        row = self.db.execute("SELECT last_voted_view, high_qc FROM safety").fetchone()
        return Safety(row[0], messages.decode_qc(row[1])) if row else None

    def add_committed(self, proposal: Proposal) -> None:
        b = proposal.block
        self.db.execute("INSERT OR IGNORE INTO committed VALUES (?, ?, ?)", (b.height, b.id, messages.encode(proposal)))

    def history(self) -> tuple[Proposal, ...]:
        rows = self.db.execute("SELECT proposal FROM committed ORDER BY height").fetchall()
        return tuple(messages.decode(r[0]) for r in rows)

    def close(self) -> None:
        self.db.close()
