"""A clearing state as bytes and back (issue 20: durable state, state sync): the state tree's own
leaves (every account in slot order, then the global leaves: funds, supply, height, marks,
breakers, fixings), so a snapshot is checked by rebuilding the state root from it and comparing
with the root a committed block carries. What the genesis fixes (oracles, quorum, margin
parameters, breakers' settings, listed series, assets) is not in it: restore() takes it from the
genesis state every validator has.

Layout: b"AVSNAP1" | accounts u64 | (length u32 | leaf) x accounts | globals u32 | (length u32 | leaf) x globals."""
from __future__ import annotations

import functools
import struct

from .clearing import LIQUIDATIONS_KEPT, Account, Clearing, Mark
from .ledger_state import Log, MerkleTree, Versioned, VersionedSet

MAGIC = b"AVSNAP1"


def encode(c: Clearing) -> bytes:
    """The snapshot of c (its account leaves and global leaves)."""
    parts = [MAGIC, len(c.accounts).to_bytes(8, "big")]
    parts += [part for leaf in c.leaves() for part in (len(leaf).to_bytes(4, "big"), leaf)]
    globals_ = c.globals_leaves()
    parts.append(len(globals_).to_bytes(4, "big"))
    for leaf in globals_:
        parts += [len(leaf).to_bytes(4, "big"), leaf]
    return b"".join(parts)


def restore(genesis: Clearing, blob: bytes, state_root: bytes, sha256_many) -> Clearing:
    """The state a snapshot holds, on top of the genesis' configuration, after checking that its
    state root (hashed by sha256_many, as Clearing.state_root) is state_root: a snapshot from an
    untrusted peer is only used if it matches a block the validator knows committed. ValueError
    names what is wrong."""
    try:
        accounts, globals_ = _split(blob)
        c = genesis.snapshot()
        most = len(c.assets), len(c.series)
        c.accounts = Versioned({k: a for k, a in (_account(leaf, slot, *most) for slot, leaf in enumerate(accounts))})
        if len(c.accounts) != len(accounts):
            raise ValueError("an account appears twice")
        # the accounts' tree is hashed from the snapshot's own leaves: a root equal to the committed
        # block's proves they are its leaves, and _account reads a leaf back into the account it encodes
        c._private, c._private_holders, c.tree, c.dirty = {}, set(), MerkleTree(), set(c.accounts)
        c._leaves = {leaf[:32]: leaf for leaf in accounts}
        c.holders, c._sizes, c._private_sizes = {}, {}, set()
        c._cash, c._cash_fresh, c._cash_changed, c._cash_count = {}, set(), (), 0
        for key, acct in c.accounts.items():
            for i in acct.positions:
                if i not in c.series:
                    raise ValueError(f"account {key.hex()[:16]} holds series {i}, which the genesis does not list")
                c.holders.setdefault(i, set()).add(key)
        # each series' holders as the versions share them (ledger_state.VersionedSet), once here: a
        # plain set would be taken over (copied) by every version built on this one (each proposal
        # pass, each fork) until one of them commits
        c.holders = {i: VersionedSet(held) for i, held in c.holders.items()}
        _globals(c, globals_)
    except (struct.error, UnicodeDecodeError, IndexError) as exc:
        raise ValueError(f"not a clearing snapshot: {exc}") from None
    c.liquidations, c.touched, c.unchecked, c.defer = Log(keep=LIQUIDATIONS_KEPT), set(), set(), False
    if c.state_root(sha256_many) != state_root:
        raise ValueError("the snapshot's state root does not match the committed block's")
    if c.globals_leaves() != globals_:
        raise ValueError("the snapshot's global leaves are not in their canonical form")
    return c


def _split(blob: bytes) -> tuple[list[bytes], list[bytes]]:
    if not blob.startswith(MAGIC):
        raise ValueError("not a clearing snapshot (no AVSNAP1 header)")
    pos, out = len(MAGIC), []
    for width in (8, 4):
        if pos + width > len(blob):
            raise ValueError("the snapshot ends inside a count")
        count = int.from_bytes(blob[pos:pos + width], "big")
        pos += width
        if count > (len(blob) - pos) // 4:  # every leaf takes at least its 4-byte length
            raise ValueError(f"{count} leaves cannot fit in the snapshot's {len(blob) - pos} bytes left")
        leaves = []
        for _ in range(count):
            if pos + 4 > len(blob):
                raise ValueError("the snapshot ends inside a leaf's length")
            n = int.from_bytes(blob[pos:pos + 4], "big")
            leaves.append(blob[pos + 4:pos + 4 + n])
            if len(leaves[-1]) != n:
                raise ValueError("the snapshot ends inside a leaf")
            pos += 4 + n
        out.append(leaves)
    if pos != len(blob):
        raise ValueError(f"{len(blob) - pos} bytes after the snapshot's last leaf")
    return out[0], out[1]


@functools.lru_cache(maxsize=256)
def _shape(assets: int, positions: int) -> struct.Struct:
    """An account leaf's layout with that many balances and positions (i128 balances as 16 bytes)."""
    return struct.Struct(">32sQB" + "8s16s" * assets + "Iq" * positions)


def _account(leaf: bytes, slot: int, most_assets: int, most_positions: int) -> tuple[bytes, Account]:
    """The account a leaf encodes (Clearing._leaf's layout). A leaf with more balances or positions
    than the genesis lists assets or series is refused before its layout is built: a peer's
    snapshot is read before its root can be checked."""
    n = leaf[40] if len(leaf) > 40 else 0
    m, rest = divmod(len(leaf) - 41 - 24 * n, 12)
    if len(leaf) <= 40 or m < 0 or rest or n > most_assets or m > most_positions:
        raise ValueError(f"account leaf {slot} is malformed")
    f = _shape(n, m).unpack(leaf)
    cash = f[3:3 + 2 * n]
    collateral = {name.rstrip(b"\0").decode("ascii"): int.from_bytes(q, "big", signed=True)
                  for name, q in zip(cash[::2], cash[1::2])}
    return f[0], Account(f[1], collateral, dict(zip(f[3 + 2 * n::2], f[4 + 2 * n::2])), slot)


def _globals(c: Clearing, leaves: list[bytes]) -> None:
    c.funds, c.supply, c.marks, c.history, c.halted, c.fixings = {}, {}, {}, {}, {}, {}
    for leaf in leaves:
        if leaf.startswith(b"insurance") or leaf.startswith(b"supply"):
            body = leaf[9:] if leaf.startswith(b"insurance") else leaf[6:]
            asset, quanta = body[:8].rstrip(b"\0").decode("ascii"), int.from_bytes(body[8:24], "big", signed=True)
            (c.funds if leaf.startswith(b"insurance") else c.supply)[asset] = quanta
        elif leaf.startswith(b"height"):
            c.height = int.from_bytes(leaf[6:14], "big")
        elif leaf.startswith(b"mark"):
            und = leaf[4:12].rstrip(b"\0").decode("ascii")
            index, seq, ts, nv = struct.unpack_from(">dQQH", leaf, 12)
            pos = 12 + 26
            # the counts are checked against the leaf's length before any loop: a slice past the
            # end reads as 0, so a 40-byte leaf claiming 65,535 values looped that many times, and
            # a snapshot of such leaves held a syncing validator's loop for hours (review s21)
            if len(leaf) < pos + 12 * nv + 2:
                raise ValueError(f"a mark leaf of {len(leaf)} bytes for {nv} vols")
            vols = dict(struct.unpack_from(">Id", leaf, pos + 12 * j) for j in range(nv))
            pos += 12 * nv
            (nq,) = struct.unpack_from(">H", leaf, pos)
            if len(leaf) != pos + 2 + 20 * nq:
                raise ValueError(f"a mark leaf of {len(leaf)} bytes for {nv} vols and {nq} values")
            values = {int.from_bytes(leaf[pos + 2 + 20 * j:pos + 6 + 20 * j], "big"):
                      int.from_bytes(leaf[pos + 6 + 20 * j:pos + 22 + 20 * j], "big", signed=True) for j in range(nq)}
            c.marks[und] = Mark(index, vols, seq, ts, values)
        elif leaf.startswith(b"breaker"):
            und = leaf[7:15].rstrip(b"\0").decode("ascii")
            (k,) = struct.unpack_from(">H", leaf, 15)
            c.history[und] = [struct.unpack_from(">Qdd", leaf, 17 + 24 * j) for j in range(k)]
            reason = leaf[17 + 24 * k:].decode()
            if reason:
                c.halted[und] = reason
        elif leaf.startswith(b"fixing"):
            c.fixings[int.from_bytes(leaf[6:10], "big")] = int.from_bytes(leaf[10:26], "big", signed=True)
        else:
            raise ValueError(f"unknown global leaf {leaf[:12]!r}")
    if set(c.funds) != c.assets or set(c.supply) != c.assets:
        raise ValueError("the snapshot's funds and supply do not name the genesis' assets")
