"""State snapshots of either application, in a validator's store (issue 20: durable state, fast
restart, state sync).

A snapshot is the state of a committed block as bytes: the clearing ledger's leaves
(apps/clearing_snapshot.py), or the key-value accounts in key order. restore() rebuilds the state
and refuses it unless it hashes to the state root the block carries, so a snapshot read back from
a damaged disk or received from a peer is used only if it is exactly the committed state.

A restart (load) starts from the newest snapshot that restores, and replays only the committed
blocks after it; a snapshot that does not restore is logged in one line and the next older one
(or the genesis, where the store holds every block from height 1) is used instead: every block
replayed is checked again, so falling back costs only time."""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import Iterable

from .core import Base
from .messages import Txs
from .store import Store, StoreError, snapshot_row_problem

log = logging.getLogger("consensus.snapshots")
KEPT = 2  # snapshots a store keeps: the newest, and one to fall back on (and one in a transfer: Store.add_snapshot)
KV_MAGIC = b"AVKVSN1"


def encode(app, state) -> bytes:
    clearing = getattr(state, "clearing", None)
    if clearing is not None:
        from .apps import clearing_snapshot
        return clearing_snapshot.encode(clearing)
    # key-value: KV_MAGIC | count u64 | (key 32 | nonce u64 | balance u64 | n u16 | (klen u8 | key |
    # vlen u16 | value) x n) x count, in key order (Account.leaf hashes the data, so it cannot be
    # read back from the leaves)
    parts = [KV_MAGIC, struct.pack(">Q", len(state.accounts))]
    for key in sorted(state.accounts):
        a = state.accounts[key]
        parts += [key, struct.pack(">QQH", a.nonce, a.balance, len(a.data))]
        parts += [struct.pack(">B", len(k)) + k + struct.pack(">H", len(v)) + v for k, v in a.data]
    return b"".join(parts)


def restore(app, blob: bytes, state_root: bytes):
    """The application state a snapshot holds, if it hashes to state_root; ValueError says why not."""
    genesis = app.genesis
    if hasattr(genesis, "clearing"):
        from .apps import clearing_snapshot
        from .apps.clearing_app import State
        c = clearing_snapshot.restore(genesis.clearing, blob, state_root, app.verifier.sha256_rows)
        return State(c, state_root)
    from .apps.kv import Account, State
    try:
        if not blob.startswith(KV_MAGIC):
            raise ValueError("not a key-value snapshot (no AVKVSN1 header)")
        pos = len(KV_MAGIC)
        (count,), pos = struct.unpack_from(">Q", blob, pos), pos + 8
        accounts = {}
        for _ in range(count):
            key = blob[pos:pos + 32]
            nonce, balance, n = struct.unpack_from(">QQH", blob, pos + 32)
            pos += 50
            data = []
            for _ in range(n):
                klen = blob[pos]
                k = blob[pos + 1:pos + 1 + klen]
                (vlen,) = struct.unpack_from(">H", blob, pos + 1 + klen)
                data.append((k, blob[pos + 3 + klen:pos + 3 + klen + vlen]))
                pos += 3 + klen + vlen
            accounts[key] = Account(nonce, balance, tuple(data))
    except (struct.error, IndexError) as exc:
        raise ValueError(f"not a key-value snapshot: {exc}") from None
    if pos != len(blob) or len(accounts) != count:
        raise ValueError("the key-value snapshot is malformed (trailing bytes or a repeated account)")
    # execute() of no transactions computes the root of exactly these accounts
    state = app.execute(State(accounts, b""), Txs.empty().bodies)
    if state.root != state_root:
        raise ValueError("the snapshot's state root does not match the committed block's")
    return state


def due(height: int, every: int, me: int, n: int) -> bool:
    """Whether validator me of n snapshots the committed block at height: one block in every
    `every`, at a phase of its own (me * every // n), because encoding a large state pauses the
    validator (seconds at a million accounts) and validators pausing together stall the chain."""
    return bool(every) and height % every == me * every // n


def take(store: Store, app, block, state, txs: int) -> int:
    """Snapshot the committed block's state into the store (keeping the newest KEPT); returns
    the snapshot's size in bytes."""
    blob = encode(app, state)
    store.add_snapshot(block.height, block.id, block.state_root, txs, blob, keep=KEPT)
    return len(blob)


@dataclass
class Start:
    """What a restarted validator begins from: a verified snapshot (base; None: the genesis), the
    committed blocks after it to replay, and the transactions committed up to the base."""
    base: Base | None
    history: Iterable  # (store.History: read from the store as it is iterated)
    txs: int


def load(store: Store, app) -> Start:
    """The newest snapshot that restores and the committed blocks after it (see the module's
    docstring). StoreError where nothing can be started from: a state-synced store (no blocks
    from height 1) with no snapshot that restores."""
    first = store.first_height()
    for height, block_id, state_root, txs in store.snapshots():
        try:
            problem = snapshot_row_problem(height, block_id, state_root, txs)
            if problem:
                raise ValueError(f"its row is damaged: {problem}")
            (p,) = store.committed_range(height, 1) or (None,)
            if p is None or not hasattr(p, "block") or p.block.height != height or p.block.id != block_id \
                    or p.block.state_root != state_root:
                raise ValueError("it is not of the committed block stored at its height")
            blob = store.snapshot_blob(height)
            if blob is None:
                raise ValueError("its bytes are not stored as a blob")
            state = restore(app, blob, state_root)
        except ValueError as exc:
            log.warning("the snapshot at height %r is refused (%s); starting from an older one or the genesis",
                        height, exc)
            continue
        return Start(Base(p, state), store.history(height, block_id), txs)
    if first > 1:
        raise StoreError(f"the store begins at height {first} (state sync) and holds no snapshot that restores: "
                         "remove the data directory to sync again (it forgets this validator's votes: start it "
                         "only once the network is past the views it voted in, or it could vote twice in a view)")
    return Start(None, store.history(), 0)
