"""A validator's durable state in SQLite (WAL mode, synchronous writes): the safety state, written
before any vote that follows it leaves, with the uncommitted blocks it carries (Safety.blocks: up
to the high QC's block and the last block voted for, so a network restarted all at once still
holds the block its high QCs certify), the committed blocks, from which a restarted validator
replays its state and serves peers that are catching up, and the latest snapshots of the
application's state (consensus/snapshots.py), so a restart replays only the blocks after the
newest one. Uncommitted blocks are deleted as their height commits.

Beside the database, `<file>.safety` (the seal, see _Seal) holds the last safety state written:
SQLite drops a missing or damaged WAL without a word, and a store that lost its latest safety
writes that way is refused at open, not started with an older last voted view.

The committed blocks run without a gap from height 1, or, in a store that began from a peer's
snapshot (state sync), from that snapshot's height: the blocks below it were never fetched."""
from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import struct
import time
from typing import Callable, Iterator

from . import messages
from .core import Safety
from .messages import Proposal


SERVING_S = 45.0  # a snapshot a chunk of which was served this recently is in a peer's transfer (see add_snapshot;
#                   over statesync.SLOW_MS, the longest an ask waits for a chunk)
SEAL_SUFFIX = ".safety"  # the seal's file: the database's path with this appended
# PRAGMA user_version of a store (0: one this release never opened, which has no seal yet):
# SEALED from the seal's creation on, CLEAN written by close() (see _Seal)
SEALED, CLEAN = 0x5EA1, 0xC1EA


class StoreError(RuntimeError):
    """The store does not hold what this validator must have written (one line, with heights)."""


# SQLite's primary result codes of a store that is intact but cannot be used now: busy, locked,
# out of memory, read-only, I/O error, full, cannot open (the disk, or another program)
_ENVIRONMENTAL = {5, 6, 7, 8, 10, 13, 14}


def environmental(exc: sqlite3.Error) -> bool:
    """Whether exc is the disk's or another program's doing (a full or read-only disk, a file
    another process holds locked), not a damaged store: free space or stop that program and start
    again; removing the data directory would forget this validator's votes."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _ENVIRONMENTAL


def _overwritten(held, written) -> str:
    """Why save_safety refuses: the safety row is not what this process last wrote or read."""
    view = held[0] if held is not None else "none"
    return (f"the stored safety state changed under this validator (last voted view {view}, this process wrote "
            f"{written[0] if written is not None else 'none'}): another process writes to this data_dir (its "
            "validator.lock was removed?); stop every validator process using it, then start one")


def _damaged(exc: sqlite3.DatabaseError) -> StoreError:
    return StoreError(f"the store does not read back ({exc}): its file is damaged; restore a backup, or remove the "
                      "data directory to start again (from the genesis, or from a peer's snapshot with state_sync)")


class _Cursor(sqlite3.Cursor):
    """A cursor whose reads raise StoreError (one line) where SQLite finds the file damaged
    ("database disk image is malformed", "file is not a database": a plain sqlite3.DatabaseError,
    raised by whichever read reaches the damaged page), not an exception from deep in a caller;
    so does text that is not UTF-8 (a damaged schema: UnicodeDecodeError from the statement; a
    column whose type byte was flipped to text: "Could not decode to UTF-8" from the row). Other
    errors (a full disk, a locked file, a constraint) are left as they are."""

    def execute(self, *args):
        return _reading(super().execute, *args)

    def fetchone(self):
        return _reading(super().fetchone)

    def fetchall(self):
        return _reading(super().fetchall)

    def __next__(self):
        return _reading(super().__next__)


def _reading(call, *args):
    try:
        return call(*args)
    except UnicodeDecodeError as exc:
        raise _damaged(exc) from None
    except sqlite3.DatabaseError as exc:
        # (SQLite's own decoding of a column read as text: an OperationalError)
        if type(exc) is sqlite3.DatabaseError or str(exc).startswith("Could not decode to UTF-8"):
            raise _damaged(exc) from None
        raise


class _Connection(sqlite3.Connection):
    def execute(self, *args):
        return self.cursor(_Cursor).execute(*args)


def _id(value, what: str) -> bytes:
    """A stored id column's bytes; StoreError (one line) where a damaged row holds another type."""
    if not isinstance(value, bytes):
        raise StoreError(f"{what} holds {type(value).__name__}, not a block id: the store is damaged")
    return bytes(value)


class Store:
    def __init__(self, path, clock: Callable[[], float] | None = None):
        """clock: seconds, for how recently a snapshot was served (time.monotonic's unless given;
        the simulation gives its own)."""
        self.clock = clock if clock is not None else time.monotonic
        self.serving: dict[int, float] = {}  # snapshot height -> when a chunk of it was last served
        self.db = sqlite3.connect(str(path), isolation_level=None, factory=_Connection)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a vote may leave only after its state is on disk
        # checked before anything is created: a statement that names a column of a damaged table
        # (CREATE INDEX) raised "no such column" out of the start, not the one line below
        problem = _schema_problem(self.db)
        if problem:
            raise StoreError(f"the store's schema is damaged ({problem}): restore a backup, or remove the data "
                             "directory to start again")
        # ids committed since the id index's last batch (see ID_BATCH): id -> height
        self._unindexed: dict[bytes, int] = {}
        try:
            for statement in _TABLES + _TRIGGERS + _RETIRED:
                self.db.execute(statement)
            self._index_tail()
            # the safety row as this process last wrote or read it (save_safety: nobody else writes it)
            self._written = _raw_safety(self.db)
        except sqlite3.Error as exc:
            self._rollback()
            if environmental(exc):  # (the disk or another program, not the store: intact, nothing to repair)
                raise
            raise StoreError(f"the store could not be opened ({exc}): if its schema is damaged, restore a backup, "
                             "or remove the data directory to start again") from None
        self._kept = {_id(r[0], "an uncommitted row") for r in self.db.execute("SELECT id FROM uncommitted")}
        self.seal = None if str(path) in (":memory:", "") else _Seal(f"{path}{SEAL_SUFFIX}")
        if self.seal is not None:
            try:
                self.seal.check(self.db)
            except BaseException:
                self.seal.close(None)
                self.db.close()
                raise
        self._manifests: dict[tuple, bytes] = {}  # (height, block id, chunk size) -> snapshot_manifest's answer
        # (height, block id) -> a stored snapshot's commit proof and its encoded size, or None where
        # it can never have one (statesync._proof_of): found once, not per request
        self.snapshot_proofs: dict[tuple, tuple | None] = {}

    def claim_network(self, network: bytes) -> str:
        """Why this store cannot serve a validator of `network` ("" if it can): an empty store is
        claimed for it (the id written); a store of another network, or one written before
        consensus signatures carried the network id (no id, yet blocks, a safety row or
        snapshots), is refused: its blocks' signatures verify on no network now, and a validator
        must not carry another network's votes into this one. One line, for the operator."""
        network = bytes(network)
        row = self.db.execute("SELECT id FROM network").fetchone()
        if row is not None:
            held = bytes(row[0]) if isinstance(row[0], bytes) else b""
            if held == network:
                return ""
            return (f"the store belongs to network {held.hex()[:16] or '?'}, this validator's is "
                    f"{network.hex()[:16]} (another chain_id, genesis, [network] keys or [clearing] oracles): "
                    "start it with an empty data_dir, or give it that network's configuration")
        held = ("SELECT EXISTS (SELECT 1 FROM safety) OR EXISTS (SELECT 1 FROM committed) "
                "OR EXISTS (SELECT 1 FROM uncommitted) OR EXISTS (SELECT 1 FROM snapshots)")
        if self.db.execute(held).fetchone()[0]:
            return ("the store was written before consensus signatures carried the network id (its blocks' "
                    "signatures verify on no network now): move data_dir aside and start the validator with "
                    "an empty one (state_sync = true takes a peer's snapshot)")
        self.db.execute("INSERT INTO network VALUES (1, ?)", (network,))
        return ""

    def _rollback(self) -> None:
        # SQLite undoes a transaction itself on some errors (a full disk): a ROLLBACK then raises
        # "no transaction is active" and hides the error that stopped the write
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def save_safety(self, safety: Safety) -> None:
        """The safety state and the uncommitted blocks it carries (those not stored yet), in one
        synchronous transaction: on disk before the caller lets a vote leave."""
        new = [p for p in safety.blocks if p.block.id not in self._kept]
        if self.seal is not None:
            self.seal.arm(self.db)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            held = _raw_safety(self.db)
            if held != self._written:
                raise StoreError(_overwritten(held, self._written))
            if held is not None and isinstance(held[0], int) and safety.last_voted_view < held[0]:
                raise StoreError(f"refusing to lower the stored last voted view from {held[0]} to "
                                 f"{safety.last_voted_view}: this validator could vote twice in a view")
            for p in new:
                self.db.execute("INSERT OR IGNORE INTO uncommitted VALUES (?, ?, ?)",
                                (p.block.id, p.block.height, messages.encode(p)))
            row, state = self._write_safety(safety)
            self.db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._written = row
        self._kept.update(p.block.id for p in new)
        if self.seal is not None:
            self.seal.write(state)

    def _write_safety(self, safety: Safety) -> tuple:
        """The safety row and its digest (inside the caller's transaction); (the row, its seal state)."""
        qc = messages.encode_qc(safety.high_qc)
        self.db.execute("INSERT OR REPLACE INTO safety VALUES (1, ?, ?)", (safety.last_voted_view, qc))
        self.db.execute("INSERT OR REPLACE INTO safety_check VALUES (1, ?)",
                        (_safety_digest(safety.last_voted_view, qc),))
        return (safety.last_voted_view, qc), (safety.last_voted_view, safety.high_qc.view)

    def safety(self) -> Safety | None:
        """The safety state, with the uncommitted blocks stored above the committed chain."""
        row = _safety_row(self.db)
        if row is None:
            return None
        top = self.db.execute("SELECT COALESCE(MAX(height), 0) FROM committed").fetchone()[0]
        rows = self.db.execute("SELECT id, height, proposal FROM uncommitted WHERE height > ? ORDER BY height",
                               (top,)).fetchall()
        blocks = []
        for block_id, height, frame in rows:
            try:
                p = messages.decode(bytes(frame))
            except (messages.DecodeError, TypeError) as exc:
                raise StoreError(f"stored uncommitted block at height {height} does not decode: {exc}") from None
            if not isinstance(p, Proposal) or p.block.id != _id(block_id, f"the uncommitted row at height {height}") \
                    or p.block.height != height:
                raise StoreError(f"stored uncommitted block at height {height} is not the block its row names")
            blocks.append(p)
        return Safety(row[0], row[1], tuple(blocks))

    def add_committed(self, proposal: Proposal) -> None:
        """Append the next committed block: its height must be the last one's plus one and its
        parent the last one's id (StoreError otherwise: a broken invariant of the caller, never
        silently ignored). The same block again is a no-op."""
        b = proposal.block
        last = self.db.execute("SELECT height, id FROM committed ORDER BY height DESC LIMIT 1").fetchone()
        if last is not None and last[0] >= b.height:
            row = self.db.execute("SELECT id FROM committed WHERE height = ?", (b.height,)).fetchone()
            stored = _id(row[0], f"the committed row at height {b.height}") if row is not None else None
            if stored == b.id:
                return
            raise StoreError(f"committed block at height {b.height} conflicts with the stored one "
                             f"{stored.hex() if stored else '(none)'}; stored chain ends at {last[0]}")
        want_height, want_parent = (last[0] + 1, _id(last[1], f"the committed row at height {last[0]}")) \
            if last is not None else (1, None)
        if b.height != want_height or (want_parent is not None and b.parent != want_parent):
            raise StoreError(f"committed block at height {b.height} does not extend the stored chain "
                             f"(which ends at height {want_height - 1})")
        batch = len(self._unindexed) + 1 >= ID_BATCH
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("INSERT INTO committed VALUES (?, ?, ?)", (b.height, b.id, messages.encode(proposal)))
            gone = [r[0] for r in self.db.execute("SELECT id FROM uncommitted WHERE height <= ?", (b.height,))]
            self.db.execute("DELETE FROM uncommitted WHERE height <= ?", (b.height,))
            if batch:
                self._write_ids({**self._unindexed, b.id: b.height}, b.height)
            self.db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._kept.difference_update(gone)
        if batch:
            self._unindexed.clear()
        else:
            self._unindexed[b.id] = b.height

    def _write_ids(self, ids: dict, top: int) -> None:
        """ids (id -> height) into the id index, which then holds every committed id up to height
        top (inside the caller's transaction)."""
        self.db.executemany("INSERT OR REPLACE INTO committed_ids VALUES (?, ?)", sorted(ids.items()))
        self.db.execute("INSERT OR REPLACE INTO committed_ids_top VALUES (1, ?)", (top,))

    def _index_tail(self) -> None:
        """The committed ids above the id index's top (at open): those of the batch a stop cut
        short (at most ID_BATCH - 1) are read into _unindexed, as if never stopped (written, they
        made nearly every start write: on a full disk, or with another program holding the file,
        the start failed as if the store were damaged); in a store an older release wrote (or
        wrote to), every one it committed is indexed (once: ~1 s per million blocks)."""
        row = self.db.execute("SELECT height FROM committed_ids_top").fetchone()
        indexed = row[0] if row is not None and type(row[0]) is int else 0
        # (a state-synced store holds nothing below its snapshot's height: no id there to index)
        first = self.first_height()
        if type(first) is int:
            indexed = max(indexed, first - 1)
        top = self.top_height()
        if top <= indexed:
            return
        if top - indexed < ID_BATCH:
            for height, block_id in self.db.execute("SELECT height, id FROM committed WHERE height > ?", (indexed,)):
                if isinstance(height, int):  # (a damaged page's rows: see committed_ids)
                    self._unindexed[_id(block_id, f"the committed row at height {height}")] = height
            return
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("INSERT OR REPLACE INTO committed_ids SELECT id, height FROM committed WHERE height > ? "
                        "ORDER BY id", (indexed,))
        self.db.execute("INSERT OR REPLACE INTO committed_ids_top VALUES (1, ?)", (top,))
        self.db.execute("COMMIT")

    def add_snapshot(self, height: int, block_id: bytes, state_root: bytes, txs: int, blob: bytes,
                     keep: int = 2) -> None:
        """Store the state snapshot of the committed block at `height` and drop all but the newest
        `keep` (one older than the newest stays, should the newest be unreadable), and the newest
        of the others a chunk of which was served within SERVING_S (served): a peer's transfer
        slower than `keep` snapshot intervals lost its snapshot midway, and every peer's the
        same way on a slow link, so such a sync never finished. At most keep + 1 are kept: a
        peer asking for chunks of an old snapshot holds one more on disk, never more."""
        row = self.db.execute("SELECT id FROM committed WHERE height = ?", (height,)).fetchone()
        if row is None or row[0] != block_id:
            raise StoreError(f"a snapshot at height {height} is not of the stored committed block there")
        now = self.clock()
        self.serving = {h: at for h, at in self.serving.items() if now - at <= SERVING_S}
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?, ?)",
                            (height, block_id, state_root, txs, blob))
            stored = [r[0] for r in self.db.execute("SELECT height FROM snapshots ORDER BY height DESC")]
            kept = stored[:keep] + [h for h in stored[keep:] if h in self.serving][:1]
            self.db.execute(f"DELETE FROM snapshots WHERE height NOT IN ({','.join('?' * len(kept))})"
                            if kept else "DELETE FROM snapshots", kept)
            self.db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def begin_from_snapshot(self, proposal: Proposal, txs: int, blob: bytes, safety: Safety | None = None) -> None:
        """Start an empty store from a peer's snapshot (state sync): the committed block it
        belongs to, whose commit the caller verified, and the snapshot, in one transaction; the
        next committed block is that block's child. safety: the core's starting safety state
        (nothing voted yet), written in the same transaction where given: a store holding blocks
        but no safety row is refused on restart (safety()), and a validator killed after its sync
        but before its core first persisted had to sync again from an emptied data directory."""
        b = proposal.block
        if self.db.execute("SELECT EXISTS (SELECT 1 FROM committed)").fetchone()[0]:
            raise StoreError(f"state sync to height {b.height} into a store that holds committed blocks")
        if safety is not None and self.seal is not None:
            self.seal.arm(self.db)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("INSERT INTO committed VALUES (?, ?, ?)", (b.height, b.id, messages.encode(proposal)))
            self.db.execute("INSERT INTO snapshots VALUES (?, ?, ?, ?, ?)", (b.height, b.id, b.state_root, txs, blob))
            row, state = self._write_safety(safety) if safety is not None else (self._written, None)
            self.db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self._written = row
        self._unindexed[b.id] = b.height
        if state is not None and self.seal is not None:
            self.seal.write(state)

    def keep_proof(self, key: tuple, proof) -> None:
        """Keep a snapshot's commit proof (see snapshot_proofs), forgetting those of snapshots no
        longer stored: at most one per stored snapshot."""
        stored = {(h, bytes(i)) for h, i, _, _ in self.snapshots()}
        self.snapshot_proofs = {k: v for k, v in self.snapshot_proofs.items() if k in stored}
        if key in stored:
            self.snapshot_proofs[key] = proof

    def served(self, height: int) -> None:
        """A chunk of the snapshot at `height` went to a peer (statesync.serve): see add_snapshot."""
        self.serving[height] = self.clock()
        if len(self.serving) > 64:  # (heights a peer named that are not stored go with the oldest)
            del self.serving[min(self.serving, key=self.serving.get)]

    def snapshots(self) -> list[tuple[int, bytes, bytes, int]]:
        """(height, block id, state root, transactions committed up to it) of each stored
        snapshot, newest first. A row a damaged disk left with a column of another type reads with
        b"" for an id or root that is not a blob, and as it is otherwise: snapshot_row_problem
        says what is wrong with it (its readers pass over such a row, never raise on it)."""
        rows = self.db.execute("SELECT height, id, state_root, txs FROM snapshots ORDER BY height DESC").fetchall()
        return [(h, _blob(i), _blob(r), t) for h, i, r, t in rows]

    def snapshot_blob(self, height: int) -> bytes | None:
        """The snapshot's bytes (None: no such row, or its bytes are not stored as a blob)."""
        row = self.db.execute("SELECT blob FROM snapshots WHERE height = ?", (height,)).fetchone()
        return bytes(row[0]) if row and isinstance(row[0], bytes) else None

    def snapshot_piece(self, height: int, offset: int, length: int) -> bytes | None:
        """Up to `length` bytes of the stored snapshot at `height` from `offset`, read with
        incremental blob I/O (None: no such row, or not a blob). SQL substr(blob, ...) made
        SQLite load the whole blob for every piece: each chunk a peer asked of a 4 GiB snapshot
        read and held 4 GiB."""
        if type(height) is not int or not 1 <= height < messages.MAX_HEIGHT:
            return None
        try:
            with self.db.blobopen("snapshots", "blob", height, readonly=True) as blob:
                if offset >= len(blob):
                    return b""
                blob.seek(offset)
                return blob.read(length)
        except sqlite3.OperationalError:  # no such row, or the column holds another type
            return None

    def snapshot_manifest(self, height: int, chunk_size: int) -> bytes | None:
        """The stored snapshot at `height`'s manifest (state sync, SnapshotChunk.manifest): its size
        u64 | the SHA-256 of each chunk_size-byte chunk. Computed once per snapshot and kept (a
        peer asking for chunk 0 again and again costs no hashing of a large snapshot each time)."""
        row = self.db.execute("SELECT id, length(blob) FROM snapshots WHERE height = ?", (height,)).fetchone()
        if row is None:
            return None
        key = (height, _blob(row[0]), chunk_size)
        if key not in self._manifests:
            blob = self.snapshot_blob(height)
            if blob is None:
                return None
            digests = [hashlib.sha256(blob[i:i + chunk_size]).digest()
                       for i in range(0, max(len(blob), 1), chunk_size)]
            stored = {(h, bytes(i)) for h, i, _, _ in self.snapshots()}
            self._manifests = {k: v for k, v in self._manifests.items() if k[:2] in stored}
            self._manifests[key] = len(blob).to_bytes(8, "big") + b"".join(digests)
        return self._manifests[key]

    def first_height(self) -> int:
        """The lowest committed height stored: 1, or a state-synced store's snapshot height (0: none)."""
        return self.db.execute("SELECT COALESCE(MIN(height), 0) FROM committed").fetchone()[0]

    def top_height(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(height), 0) FROM committed").fetchone()[0]

    def committed_ids(self) -> list[bytes | None]:
        """The committed block ids by height from 1, without decoding the blocks: entry h - 1 is the
        id at height h, None where no row is (below a state-synced store's first height, or a row a
        damaged disk lost: placed by height, so a lost row never shifts the ids above it)."""
        # (a damaged table's pages can hand back rows out of order, or below the WHERE: sized by
        # the highest, those below height 1 passed over, never an IndexError)
        rows = [(h, i) for h, i in self.db.execute("SELECT height, id FROM committed WHERE height >= 1 "
                                                   "ORDER BY height").fetchall() if isinstance(h, int) and h >= 1]
        out: list[bytes | None] = [None] * max((h for h, _ in rows), default=0)
        for height, block_id in rows:
            out[height - 1] = _id(block_id, f"the committed row at height {height}")
        return out

    def committed_ids_between(self, low: int, high: int) -> list[bytes | None]:
        """The committed ids at heights low .. high - 1, None where no row is (as committed_ids),
        without decoding the blocks: Core's read of the ids below those it holds (core._Chain)."""
        out: list[bytes | None] = [None] * max(0, high - low)
        for height, block_id in self.db.execute("SELECT height, id FROM committed WHERE height >= ? AND height < ?",
                                                (low, high)).fetchall():
            if isinstance(height, int) and low <= height < high:  # (a damaged page's rows: see committed_ids)
                out[height - low] = _id(block_id, f"the committed row at height {height}")
        return out

    def committed_height_of(self, block_id: bytes) -> int | None:
        """The height of the committed block `block_id` (None: none stored), from the ids not
        indexed yet or by the id index: a peer's request for an id nobody committed costs one
        lookup, not a scan."""
        block_id = bytes(block_id)
        height = self._unindexed.get(block_id)
        if height is not None:
            return height
        row = self.db.execute("SELECT height FROM committed_ids WHERE id = ?", (block_id,)).fetchone()
        return row[0] if row is not None and type(row[0]) is int and row[0] >= 1 else None

    def committed_range(self, from_height: int, count: int) -> list[Proposal]:
        """Up to `count` committed proposals from from_height on, in height order (Core's
        committed_source: what it serves peers once it pruned them from memory)."""
        rows = self.db.execute("SELECT height, proposal FROM committed WHERE height >= ? ORDER BY height LIMIT ?",
                               (from_height, count)).fetchall()
        out = []
        for height, frame in rows:  # a damaged row: DecodeError naming it, whatever the column holds
            if not isinstance(frame, bytes):
                raise messages.DecodeError(f"the stored block at height {height} is a {type(frame).__name__}")
            out.append(messages.decode(frame))
        return out

    def history(self, after: int = 0, parent: bytes | None = None) -> "History":
        """The committed proposals above height `after` (the first one's parent must be `parent`,
        where given) in height order, checked as they are read (History)."""
        return History(self.db, after, parent)

    def close(self) -> None:
        try:
            if self.seal is not None:
                self.seal.close(self.db)
        finally:
            self.db.close()


HISTORY_BATCH = 256  # committed rows History reads at a time


class History:
    """The committed proposals above a height, read HISTORY_BATCH rows at a time each time it is
    iterated (a restart's replay held every one at once: about 19 KB a small block, a chain
    replayed from the genesis could outgrow the memory it had run in; review s16), each checked:
    heights after + 1, after + 2, ... without a gap, each block's parent the one before, each
    row's id its block's (StoreError, one line, naming the height). The core checks the digests,
    proposers' signatures and state roots on replay."""

    def __init__(self, db, after: int, parent: bytes | None):
        self.db, self.after, self.parent = db, after, parent

    def __iter__(self) -> Iterator[Proposal]:
        height, parent = self.after, self.parent
        while True:
            rows = self.db.execute("SELECT height, id, proposal FROM committed WHERE height > ? ORDER BY height "
                                   "LIMIT ?", (height, HISTORY_BATCH)).fetchall()
            if not rows:
                return
            for row_height, block_id, frame in rows:
                if row_height != height + 1:
                    raise StoreError(f"stored chain has a gap: height {row_height} follows height {height}")
                p = _stored_proposal(row_height, block_id, frame, parent)
                height, parent = row_height, p.block.id
                yield p


def _stored_proposal(height: int, block_id, frame, parent: bytes | None) -> Proposal:
    """A committed row's proposal, checked (see History)."""
    try:
        p = messages.decode(frame)
    except (messages.DecodeError, TypeError) as exc:
        raise StoreError(f"stored block at height {height} does not decode: {exc}") from None
    if not isinstance(p, Proposal):
        raise StoreError(f"stored block at height {height} is a {type(p).__name__}, not a proposal")
    b = p.block
    block_id = _id(block_id, f"the committed row at height {height}")
    if b.height != height or b.id != block_id:
        raise StoreError(f"stored block at height {height} is not the block its row names "
                         f"(height {b.height}, id {b.id.hex()[:16]}, row id {block_id.hex()[:16]})")
    if parent is not None and b.parent != parent:
        raise StoreError(f"stored block at height {height} does not extend the one at height {height - 1}")
    return p


_TABLES = (
    "CREATE TABLE IF NOT EXISTS safety (one INTEGER PRIMARY KEY CHECK (one = 1), "
    "last_voted_view INTEGER NOT NULL, high_qc BLOB NOT NULL)",
    # the safety row's digest (_safety_digest), written with it: SQLite keeps no checksum of a
    # page, and a flipped bit of last_voted_view read back as a lower view let a restarted
    # validator vote again in views it had voted in; one of the high QC's signatures, a high QC
    # whose timeouts nobody accepts. A store written before it has no row (taken as it is), nor
    # has one whose safety row an older release wrote since (_TRIGGERS).
    "CREATE TABLE IF NOT EXISTS safety_check (one INTEGER PRIMARY KEY CHECK (one = 1), digest BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS committed (height INTEGER PRIMARY KEY, id BLOB NOT NULL, proposal BLOB NOT NULL)",
    # uncommitted blocks of the safety state (Safety.blocks), dropped as their height commits
    "CREATE TABLE IF NOT EXISTS uncommitted (id BLOB PRIMARY KEY, height INTEGER NOT NULL, proposal BLOB NOT NULL)",
    # state snapshots: `txs` is the number of transactions committed up to and including `height`
    "CREATE TABLE IF NOT EXISTS snapshots (height INTEGER PRIMARY KEY, id BLOB NOT NULL, "
    "state_root BLOB NOT NULL, txs INTEGER NOT NULL, blob BLOB NOT NULL)",
    # the network id (messages.network_id) the store's blocks and safety state were signed for:
    # written once, by the first claim_network of an empty store
    "CREATE TABLE IF NOT EXISTS network (one INTEGER PRIMARY KEY CHECK (one = 1), id BLOB NOT NULL)",
    # the id index: committed id -> height (Core's lookup of the ids older than those it holds in
    # memory, for peers' block requests), every committed id up to committed_ids_top's height,
    # written ID_BATCH ids a transaction (the newer ones: Store._unindexed)
    "CREATE TABLE IF NOT EXISTS committed_ids (id BLOB PRIMARY KEY, height INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS committed_ids_top (one INTEGER PRIMARY KEY CHECK (one = 1), height INTEGER NOT NULL)",
)


# Ids are random: each lands on a random page of the id index. An index of committed(id) written
# with each block (the previous release's committed_id) added that page and its splits to every
# block's synchronous transaction: WAL bytes a committed block 5.1 K -> 10.6 K at 300,000 blocks
# and 1M, and 17.7 K / 24.4 K where it was built at the open of an older store (its packed pages
# split). Ids written ID_BATCH at a time share pages while the index is small, and cost about a
# page each once it has many more pages than a batch has ids: 9.3 K / 10.1 K (8.6 K / 9.0 K built
# at open), measured with add_committed's statements.
ID_BATCH = 1024
_RETIRED = ("DROP INDEX IF EXISTS committed_id",)


# Any SQL write of the safety row deletes its digest; _write_safety writes the digest after the row,
# in the same transaction. A release from before the digest, run on a store that has one (an
# operator's rollback), writes the row alone: without these the digest of the row before stayed,
# and the next start of this release refused an intact store as damaged ("remove the data
# directory": a validator that forgot its votes). With them such a store reads as one written
# before the digest (taken, and given one at its next save); a row changed on disk, never through
# SQL, still fails its digest. (SQLite runs a store's triggers whichever program writes to it.)
_TRIGGERS = tuple(
    f"CREATE TRIGGER IF NOT EXISTS safety_{event.lower()} AFTER {event} ON safety "
    "BEGIN DELETE FROM safety_check; END" for event in ("INSERT", "UPDATE"))


def _columns(db) -> dict:
    """table name -> its columns (name, declared type, not null, primary key), of every table."""
    names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    out = {}
    for name in names:
        if isinstance(name, str) and not name.startswith("sqlite_"):
            info = db.execute("PRAGMA table_info(\"%s\")" % name.replace('"', '""')).fetchall()
            # (SQLite's names and types are case-insensitive: a letter's case flipped changes nothing)
            out[name.lower()] = [(str(c[1]).lower(), str(c[2]).upper(), c[3], c[5]) for c in info]
    return out


def _schema_problem(db) -> str:
    """What differs between a store's tables and _TABLES' (a byte of the schema's text flipped on
    disk renamed a column or a table: "no such column" from deep in a later read, or a table
    created anew and empty beside the damaged one), or ""."""
    reference = sqlite3.connect(":memory:")
    try:
        for statement in _TABLES:
            reference.execute(statement)
        want = _columns(reference)
    finally:
        reference.close()
    got = _columns(db)
    for name in sorted(got):  # (a table missing is created: a new store, or one an older release wrote)
        if want.get(name) != got.get(name):
            return f"table {name!r}" + (" is not one of its tables" if name not in want else
                                        f" has columns {[c[0] for c in got.get(name, [])]}")
    return ""


def _safety_digest(last_voted_view: int, high_qc: bytes) -> bytes:
    """What the safety_check row holds: SHA-256 over the safety row's last voted view (u64) and
    its encoded high QC."""
    return hashlib.sha256(b"AV-SAFETY-ROW" + last_voted_view.to_bytes(8, "big") + bytes(high_qc)).digest()


class _BadRow(StoreError):
    """The safety row is missing beside blocks, or damaged (_safety_row)."""


def _raw_safety(db) -> tuple | None:
    """The safety row as stored, unchecked: (last voted view, high QC bytes), None where none."""
    return db.execute("SELECT last_voted_view, high_qc FROM safety").fetchone()


def _safety_row(db) -> tuple | None:
    """The safety row checked: (last voted view, high QC), None where the store holds nothing;
    _BadRow saying in one line what is wrong (never a DecodeError or AttributeError from deep in
    the start-up)."""
    row = _raw_safety(db)
    if row is None:
        held = "SELECT EXISTS (SELECT 1 FROM committed) OR EXISTS (SELECT 1 FROM uncommitted)"
        if db.execute(held).fetchone()[0]:
            raise _BadRow("the store holds blocks but no safety row (last voted view): refusing to start, "
                          "a validator that forgot its votes could vote twice in a view")
        return None
    view, qc = row
    if not isinstance(qc, bytes):  # (bytes() of an integer would allocate that many)
        raise _BadRow(f"the stored high QC is a {type(qc).__name__}, not a blob")
    try:
        high_qc = messages.decode_qc(qc)
    except (messages.DecodeError, TypeError) as exc:
        raise _BadRow(f"the stored high QC does not decode: {exc}") from None
    if not isinstance(view, int) or not 0 <= view < messages.MAX_VIEW:
        raise _BadRow(f"the stored last voted view {view!r} is not a view")
    check = db.execute("SELECT digest FROM safety_check").fetchone()
    if check is not None and check[0] != _safety_digest(view, qc):
        raise _BadRow(f"the stored safety row (last voted view {view}, high QC view {high_qc.view}) does not match "
                      "its digest: the store is damaged (a validator that forgot its votes could vote twice in a "
                      "view); restore a backup, or remove the data directory to start again")
    return view, high_qc


_UNREADABLE = "unreadable"  # _row_state of a safety row that safety() refuses (it says why, in one line)


def _row_state(db):
    """The safety row's seal state (last voted view, high QC view), None where the store holds
    nothing, or _UNREADABLE."""
    try:
        row = _safety_row(db)
    except _BadRow:
        return _UNREADABLE
    return None if row is None else (row[0], row[1].view)


_SEAL_MAGIC = b"AV-SAFETY-SEAL-1"
_SLOT = 512  # a record and its zero padding: each of the two in its own sector
_RECORD = struct.Struct(">16sQQQ")  # magic, sequence number, last voted view, high QC view


class _Seal:
    """The last safety state a store wrote, in a file beside it (path + SEAL_SUFFIX): written after
    the state's COMMIT and before save_safety returns, so before any vote that follows it leaves,
    and never ahead of the database (a crash between the two leaves the seal behind, which is
    safe: that vote never left). At open, a database whose safety state is behind its seal (a
    lower last voted view or high QC view) lost writes it had made durable, through its WAL:
    refused. (The core only raises each, and replaces its high QC only with one of a higher view: a
    save that changes neither changes nothing a vote depends on, and is not sealed.) A store whose
    header says SEALED (user_version) and that has no seal was copied or restored without it:
    refused too; CLEAN, written by the close() of a store that saved (which folds the WAL into the
    database), lets such a copy start. Opening a store writes nothing (a validator refused at start, given another's
    data_dir, leaves it as it was): the first save seals it (arm).

    Two records of a sequence number each, in slots 0 and 1 by its parity, overwritten in place:
    one fdatasync a save, where a new file renamed over the old one (fsync of the file and of the
    directory) cost 0.55 ms a save on the development machine against 0.10. A crash tearing the
    record being written leaves the other intact, and the database committed what the torn one
    was to hold: a torn slot beside a record the database's state is ahead of is taken for that;
    any other damage is refused."""

    def __init__(self, path: str):
        self.path = path
        self.fd = -1
        self.seq = 0
        self.state = None  # the sealed (last voted view, high QC view); None: nothing sealed yet
        self.version = 0  # the store's user_version
        self.row = _UNREADABLE  # the store's safety state at open (_row_state)
        # whether this store saved: only its writer marks it CLEAN (a reader of a running
        # validator's store, closing, would mark a database still being written)
        self.saving = False
        # whether a checkpoint put SEALED into the database's own file (not only its WAL) in this run
        self.marked = False

    def check(self, db) -> None:
        """Refuse the store (StoreError) if its safety row (_row_state) is behind the seal, or the
        seal is missing (the store SEALED) or damaged. The header is read first, the seal next and
        the row last: a reader of a running validator's store (localnet's report, an operator's
        script) reading the row first, then a seal the validator wrote after a COMMIT in between,
        was refused as a store that lost its writes; so was one that read no seal yet, then the
        header the validator marked SEALED after creating it."""
        self.version = db.execute("PRAGMA user_version").fetchone()[0]
        data = self._open()
        self.row = row = _row_state(db)
        if row is _UNREADABLE:
            self.close(None)
            return
        if data is None:
            if self.version == SEALED:
                raise StoreError(f"the store's safety seal {self.path} is missing though the store wrote one: the "
                                 "database was copied or restored without it (and may have lost its latest votes "
                                 f"with its -wal file), or it was deleted; {_RESTORE}")
            return
        self._read(row, data)
        if self.state is not None and not _ahead(row, self.state, 0):
            held = f"last voted view {row[0]} (high QC view {row[1]})" if row is not None else "no safety state"
            raise StoreError(f"the store lost its latest safety writes: it holds {held}, its seal {self.path} says "
                             f"view {self.state[0]} (high QC view {self.state[1]}) was written: its -wal file was "
                             f"lost or damaged, or the database was restored or copied without it; {_RESTORE}")

    def _open(self) -> bytes | None:
        """The seal's bytes (None: no seal), its file kept open for the writes to come."""
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"the store's safety seal {self.path} does not open ({exc.strerror}); "
                             f"{_RESTORE}") from None
        try:
            # (a FIFO opens read-write without blocking, and its read raised "Illegal seek")
            if not stat.S_ISREG(os.fstat(self.fd).st_mode):
                raise self._damaged("not a regular file")
            return os.pread(self.fd, 2 * _SLOT + 1, 0)
        except OSError as exc:
            raise StoreError(f"the store's safety seal {self.path} does not read ({exc.strerror}); "
                             f"{_RESTORE}") from None

    def arm(self, db) -> None:
        """Before a save's transaction: a seal of the store's state (one written before this
        release, or closed cleanly and copied without its seal, has none), and SEALED in the
        database's own file, before the save can put a state into the WAL alone."""
        if self.row is _UNREADABLE:
            return  # (a row safety() refuses: never saved over by a validator, which reads it first)
        self.saving = True
        if self.marked and self.fd >= 0:
            return
        if self.fd < 0:
            try:
                self._create(self.row)
            except OSError as exc:
                raise self._unwritable(exc) from None
        mode = "PASSIVE"
        if self.version != SEALED:
            db.execute(f"PRAGMA user_version = {SEALED}")
            self.version, mode = SEALED, "FULL"
        # Another program's reader holding a read transaction keeps the header out of the file
        # (FULL gives up after the busy timeout): a copy of validator.db alone then started at an
        # older view. Until a checkpoint reports every frame in the file, each save tries again
        # (PASSIVE: no wait); SEALED read at open may sit in the WAL alone (a crash before then)
        busy, log, done = db.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        self.marked = not busy and log == done

    def _create(self, row) -> None:
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, _slot(0, row) + bytes(_SLOT))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _sync_dir(os.path.dirname(os.path.abspath(self.path)))
        self.fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.seq, self.state = 0, row

    def _read(self, row, data: bytes) -> None:
        if len(data) != 2 * _SLOT:
            raise self._damaged(f"{len(data)} bytes, not {2 * _SLOT}")
        slots = [_unslot(data[i * _SLOT:(i + 1) * _SLOT], i) for i in (0, 1)]
        good = [r for r in slots if isinstance(r, tuple)]
        if len(good) == 2:
            if abs(good[0][0] - good[1][0]) != 1:
                raise self._damaged("its two records are not consecutive")
            self.seq, self.state = max(good)
            return
        if len(good) == 1:
            seq, state = good[0]
            other = slots[1 - seq % 2]
            if (other == "empty" and seq == 0) or _ahead(row, state, 1):
                self.seq, self.state = seq, state
                return
        raise self._damaged("a record does not read back")

    def _damaged(self, why: str) -> StoreError:
        return StoreError(f"the store's safety seal {self.path} is damaged ({why}); {_RESTORE}")

    def _unwritable(self, exc: OSError) -> StoreError:
        # (before the save's vote leaves: the node stops in one line, where an OSError other than
        # a full or failing disk's was a traceback)
        return StoreError(f"the store's safety seal {self.path} cannot be written ({exc.strerror}): make it a "
                          "writable file on a working disk (free space, fix its permissions, remove what is at "
                          "its path or its .tmp's), then restart")

    def write(self, state: tuple) -> None:
        """Seal a state the database committed (a save that changed nothing writes nothing)."""
        if self.fd < 0 or state == self.state:
            return
        seq = self.seq + 1
        try:
            os.pwrite(self.fd, _slot(seq, state), seq % 2 * _SLOT)
            os.fdatasync(self.fd)
        except OSError as exc:
            raise self._unwritable(exc) from None
        self.seq, self.state = seq, state

    def close(self, db) -> None:
        """db: the store's connection, about to close (None: refused at open, nothing to mark).
        Once or again (a node closes its store as its run ends, and again as it lets go), the
        second time with the connection closed."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if db is not None and self.saving and self.version == SEALED:
            self.version = CLEAN
            try:
                if not db.in_transaction:
                    db.execute(f"PRAGMA user_version = {CLEAN}")
            except sqlite3.Error:
                pass  # (a full disk: without CLEAN a copy of the database alone is refused, the safe side)


_RESTORE = ("restore the data directory whole (the database with its -wal and .safety files), or remove it to start "
            "again (a validator that forgot its votes could vote twice in a view)")


def _ahead(row, state, by: int) -> bool:
    """Whether a safety row's seal state is at or ahead of the sealed `state` (by=0) or strictly
    ahead (by=1: neither view lower, the two not the same); either None: nothing."""
    if state is None:
        return row is not None or not by
    return row is not None and row[0] >= state[0] and row[1] >= state[1] and row[0] + row[1] >= sum(state) + by


def _slot(seq: int, state) -> bytes:
    body = _RECORD.pack(_SEAL_MAGIC, seq, *(state if state is not None else (0, 0)))
    return (body + hashlib.sha256(body).digest()).ljust(_SLOT, b"\0")


def _unslot(data: bytes, index: int):
    """(sequence number, state or None) of an intact record in slot `index`; "empty" (zeros, a slot
    never written), or "bad"."""
    if data == bytes(_SLOT):
        return "empty"
    body, check = data[:_RECORD.size], data[_RECORD.size:_RECORD.size + 32]
    if hashlib.sha256(body).digest() != check or any(data[_RECORD.size + 32:]):
        return "bad"
    magic, seq, view, high = _RECORD.unpack(body)
    if magic != _SEAL_MAGIC or seq % 2 != index:
        return "bad"
    return seq, (view, high) if (view, high) != (0, 0) else None  # (nothing voted, the genesis QC: nothing lost)


def _sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _blob(value) -> bytes:
    return bytes(value) if isinstance(value, bytes) else b""


def snapshot_row_problem(height, block_id: bytes, state_root: bytes, txs) -> str:
    """What makes a snapshots row (as Store.snapshots reads it) unusable, or "": a height or a
    transaction count that is not an integer in range (a count the wire cannot carry would make
    serving it raise), an id or a state root that is not 32 bytes."""
    if type(height) is not int or not 1 <= height < messages.MAX_HEIGHT:
        return f"its height {height!r} is not a height"
    if type(txs) is not int or not 0 <= txs < 1 << 48:
        return f"its transaction count {txs!r} is not a count"
    if len(block_id) != 32 or len(state_root) != 32:
        return "its block id or state root is not 32 bytes"
    return ""
