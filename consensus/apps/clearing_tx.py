"""Clearing transactions on the wire (issue 9): the body every signer signs, who signs it, and the
signature batch of a whole block. A trade is signed by both counterparties and an oracle mark by
each oracle it lists, so a block's signatures outnumber its transactions; they follow the
bodies' order, each transaction's signers in the order its body lists them.

Body: chain id u32 | op u8 | fields (big-endian). The chain id names the network (ClearingApp's
chain_id, CHAIN_ID unless its genesis says otherwise), so what a key signs for one network cannot
be replayed on another; every encoder takes it as `chain`.
  1 register  key 32
  2 deposit   key 32 | nonce u64 | asset 8 (ASCII letters/digits, zero-padded) | amount u64 (quanta)
  3 withdraw  key 32 | nonce u64 | asset 8 | amount u64
  4 trade     buyer 32 | buyer nonce u64 | seller 32 | seller nonce u64 | series u32 | size u32 |
              price u64 (quanta of the series' settlement asset per contract; an inverse future:
              its USD futures price in USD quanta, size in USD of notional)
  5 mark      underlying 8 (ASCII, zero-padded) | index f64 | sequence u64 | timestamp u64 |
              count u16, then (series u32 | vol f64) x count | signers u8, then key 32 x signers
  7 top-up    key 32 | nonce u64 | asset 8 | amount u64: from the signer's free collateral into the
              asset's insurance fund
A series settles by itself at the first mark at or after its expiry; operation 6 (settle) is
retired and decodes as Malformed.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from accel import Packed

from .clearing import Clearing, asset_name_ok

CHAIN_ID = 1
REGISTER, DEPOSIT, WITHDRAW, TRADE, MARK, TOP_UP = 1, 2, 3, 4, 5, 7
_RETIRED = {6: "settle: a series settles by itself at the first mark at or after its expiry"}
MOVES = (DEPOSIT, WITHDRAW, TOP_UP)  # one account's cash in or out of an asset: the same layout
_FIXED = {REGISTER: ">32s", TRADE: ">32sQ32sQIIQ", **dict.fromkeys(MOVES, ">32sQ8sQ")}


class Malformed(ValueError):
    """Bytes that are not a clearing transaction; the message says what is wrong."""


class Tx(NamedTuple):
    op: int
    fields: tuple
    signers: tuple[bytes, ...]
    body: bytes | None = None  # the bytes it was decoded from (None: built from its fields)


def register(key: bytes, chain: int = CHAIN_ID) -> bytes:
    return struct.pack(">IB", chain, REGISTER) + key


def _name(name: str, what: str) -> bytes:
    if not asset_name_ok(name):
        raise ValueError(f"{what} {name!r}: 1 to 8 ASCII letters or digits")
    return name.encode("ascii").ljust(8, b"\0")


def move(op: int, key: bytes, nonce: int, asset: str, amount: int, chain: int = CHAIN_ID) -> bytes:
    """The body of a deposit, withdrawal or top-up (MOVES: one layout)."""
    return struct.pack(">IB32sQ8sQ", chain, op, key, nonce, _name(asset, "asset"), amount)


def deposit(key: bytes, nonce: int, asset: str, amount: int, chain: int = CHAIN_ID) -> bytes:
    return move(DEPOSIT, key, nonce, asset, amount, chain)


def withdraw(key: bytes, nonce: int, asset: str, amount: int, chain: int = CHAIN_ID) -> bytes:
    return move(WITHDRAW, key, nonce, asset, amount, chain)


def top_up(key: bytes, nonce: int, asset: str, amount: int, chain: int = CHAIN_ID) -> bytes:
    return move(TOP_UP, key, nonce, asset, amount, chain)


def trade(buyer: bytes, buyer_nonce: int, seller: bytes, seller_nonce: int, series: int, size: int,
          price: int, chain: int = CHAIN_ID) -> bytes:
    return struct.pack(">IB32sQ32sQIIQ", chain, TRADE, buyer, buyer_nonce, seller, seller_nonce, series, size, price)


def mark(underlying: str, index: float, sequence: int, timestamp: int, vols: dict, oracles: list[bytes],
         chain: int = CHAIN_ID) -> bytes:
    name = underlying.encode("ascii")
    if len(name) > 8:
        raise ValueError(f"underlying {underlying!r} is longer than 8 characters")
    out = struct.pack(">IB8sdQQH", chain, MARK, name.ljust(8, b"\0"), index, sequence, timestamp, len(vols))
    out += b"".join(struct.pack(">Id", i, v) for i, v in sorted(vols.items()))
    return out + struct.pack(">B", len(oracles)) + b"".join(oracles)


def decode(body: bytes, chain_id: int = CHAIN_ID) -> Tx:
    """The transaction in a body of the network chain_id; Malformed says why it is not one."""
    if len(body) < 5:
        raise Malformed("shorter than a transaction header")
    chain, op = struct.unpack_from(">IB", body)
    if chain != chain_id:
        raise Malformed(f"chain id {chain}, this network is {chain_id}")
    try:
        if op in _FIXED:
            fmt = _FIXED[op]
            if len(body) != 5 + struct.calcsize(fmt):
                raise Malformed(f"operation {op} takes {5 + struct.calcsize(fmt)} bytes, not {len(body)}")
            fields = struct.unpack_from(fmt, body, 5)
            if op in MOVES:
                name = fields[2].rstrip(b"\0")
                if not asset_name_ok(name.decode("ascii")):
                    raise Malformed(f"operation {op}: asset {fields[2]!r} is not 1 to 8 ASCII letters or digits, "
                                    "zero-padded")
                fields = (fields[0], fields[1], name.decode("ascii"), fields[3])
            signers = (fields[0], fields[2]) if op == TRADE else (fields[0],)
            return Tx(op, fields, signers, body)
        if op == MARK:
            name, index, sequence, timestamp, count = struct.unpack_from(">8sdQQH", body, 5)
            pos = 5 + 34
            vols = dict(struct.unpack_from(">Id", body, pos + 12 * i) for i in range(count))
            pos += 12 * count
            (nsig,) = struct.unpack_from(">B", body, pos)
            keys = tuple(body[pos + 1 + 32 * i:pos + 33 + 32 * i] for i in range(nsig))
            if pos + 1 + 32 * nsig != len(body) or len(vols) != count:
                raise Malformed("mark length does not match its counts (or repeats a series)")
            underlying = name.rstrip(b"\0").decode("ascii")
            if not asset_name_ok(underlying):
                raise Malformed(f"mark: underlying {name!r} is not 1 to 8 ASCII letters or digits, zero-padded")
            if len(set(keys)) != len(keys):
                raise Malformed("mark lists an oracle twice")
            return Tx(op, (underlying, index, sequence, timestamp, vols), keys, body)
    except (struct.error, UnicodeDecodeError) as exc:
        raise Malformed(f"operation {op}: {exc}") from None
    if op in _RETIRED:
        raise Malformed(f"operation {op} is retired ({_RETIRED[op]})")
    raise Malformed(f"unknown operation {op}")


class BadSignature(ValueError):
    """A well-formed transaction whose signatures do not all verify."""


def decode_all(bodies: Packed, chain_id: int = CHAIN_ID) -> list[Tx]:
    return [decode(bodies.item(i), chain_id) for i in range(len(bodies))]


def signer_counts(txs: list[Tx], sigs: np.ndarray) -> np.ndarray:
    """Signatures per transaction; Malformed if they do not add up to the block's signatures."""
    counts = np.array([len(t.signers) for t in txs], np.int64)
    if int(counts.sum()) != len(sigs):
        raise Malformed(f"{len(sigs)} signatures for {int(counts.sum())} signers")
    return counts


def signature_batch(bodies: Packed, txs: list[Tx], counts: np.ndarray,
                    skip: np.ndarray | None = None) -> tuple[np.ndarray, Packed, np.ndarray]:
    """(keys (m, 32), messages, rows): for every signature of a transaction not in `skip` (a bool
    per transaction), its signer's key, the body it signs and its row in the block's signatures;
    bodies are repeated once per signer, joined from slices: the messages' bytes and little
    else (gathered through an int64 index per byte, they cost 25 bytes per byte signed)."""
    which = np.repeat(np.arange(len(txs)), counts)
    rows = np.arange(len(which))
    if skip is not None:
        rows = rows[~skip[which]]
        which = which[rows]
    signers = [k for t in txs for k in t.signers]
    keys = np.frombuffer(b"".join(signers[r] for r in rows), np.uint8).reshape(-1, 32)
    starts, ends = bodies.offsets[:-1][which], bodies.offsets[1:][which]
    data = bodies.data
    messages = (np.concatenate([data[a:b] for a, b in zip(starts.tolist(), ends.tolist())]) if len(which)
                else np.zeros(0, np.uint8))
    offsets = np.zeros(len(which) + 1, np.uint64)
    np.cumsum(ends - starts, out=offsets[1:])
    return keys, Packed(messages, offsets), rows


def consumed(tx: Tx) -> tuple[list[tuple[bytes, int]], bytes | None, tuple[str, int] | None]:
    """What a committed transaction uses up for good: its (account, nonce) pairs, the key it
    registers, the (underlying, sequence) of its mark."""
    f = tx.fields
    if tx.op == TRADE:
        return [(f[0], f[1]), (f[2], f[3])], None, None
    if tx.op in MOVES:
        return [(f[0], f[1])], None, None
    if tx.op == REGISTER:
        return [], f[0], None
    return [], None, (f[0], f[2])


_MOVE_NAMES = {DEPOSIT: "deposit", WITHDRAW: "withdrawal", TOP_UP: "top-up"}


def form_refusal(state: Clearing, tx: Tx) -> str:
    """Why a rule refuses tx whatever the accounts hold, the marks say and its signatures ("" if
    none does): its fields against what the genesis fixed (assets, series, oracles) and a series
    fixed for good, so the mempool checks it on the committed head before any signature."""
    f = tx.fields
    if tx.op == TRADE:
        return state.trade_refusal(f[0], f[2], f[4], f[5], f[6])
    if tx.op in MOVES:
        return state.move_refusal(f[2], f[3], _MOVE_NAMES[tx.op])
    if tx.op == MARK:
        return state.mark_form_refusal(f[0], f[4], tx.signers)
    return ""


def apply(state: Clearing, tx: Tx) -> None:
    """Carry out a decoded transaction whose signatures verified (Rejected if a rule refuses it)."""
    f = tx.fields
    if tx.op == REGISTER:
        state.register(f[0])
    elif tx.op == DEPOSIT:
        state.deposit(*f)
    elif tx.op == WITHDRAW:
        state.withdraw(*f)
    elif tx.op == TOP_UP:
        state.top_up(*f)
    elif tx.op == TRADE:
        state.trade(*f)
    elif tx.op == MARK:
        state.mark(f[0], f[1], f[4], f[2], f[3], list(tx.signers))
