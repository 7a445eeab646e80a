"""A signed key-value application: accounts by Ed25519 key, nonces against replay, set and
transfer. Its validate() is the block validation the project measures: every signature of the
block (its transactions and the certificates it carries) in one batch, the transaction root, the
execution and the state root, each stage timed.

Transaction body (what the signature signs):
  chain id u32 | sender key 32 | nonce u64 | op u8 | payload
  op 1 set:      key length u8 | key | value length u16 | value
  op 2 transfer: recipient key 32 | amount u64
A transaction whose nonce is not the sender's next one, or that spends more than the balance, is
skipped by the state transition (the block stays valid); a bad signature, an unknown op, a body
whose length is not exactly its layout's, or signature rows that are not one per body make the
block invalid (well_formed), and the mempool refuses such a transaction (submit_many). No input raises
out of validate, submit or propose.
"""
from __future__ import annotations

import functools
import hashlib
import struct
import time
from dataclasses import dataclass, replace

import numpy as np

from accel import Packed
from accel.packing import exact_bytes, pack_fixed, pack_messages

from ..messages import MAX_BLOCK_TXS, MAX_MESSAGE, Block, Txs
from ..verify import Verifier

CHAIN_ID = 1
OP_SET, OP_TRANSFER = 1, 2
HEADER = 4 + 32 + 8 + 1  # chain id, sender, nonce, op
EMPTY = hashlib.sha256(b"").digest()
# a block's transaction bytes (bodies, signatures, offsets): its proposal, and a BlockResponse
# holding it, fit one message with room for its certificates. Bounded by count alone, a block of
# 64 KiB "set" values did not: every leader proposed the same unsendable block, and the chain
# stopped (review s22)
BLOCK_BYTES = MAX_MESSAGE // 2
TX_EXTRA = 64 + 4  # a transaction's bytes in a block beside its body: its signature and offset


@dataclass(frozen=True)
class Account:
    nonce: int = 0
    balance: int = 0
    data: tuple = ()  # sorted (key, value) pairs

    @functools.cached_property
    def data_digest(self) -> bytes:
        """(Kept with the account, which is never changed: an account untouched by a block is not
        hashed again; one holding many keys cost every later block their whole hash.)"""
        return hashlib.sha256(b"".join(struct.pack(">B", len(k)) + k + struct.pack(">H", len(v)) + v
                                       for k, v in self.data)).digest()

    def leaf(self, key: bytes) -> bytes:
        return key + struct.pack(">QQ", self.nonce, self.balance) + self.data_digest


@dataclass(frozen=True)
class State:
    accounts: dict  # key -> Account (never mutated: each block gets a new dict)
    root: bytes


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    state: State | None
    timings_ms: dict


def set_body(sender: bytes, nonce: int, key: bytes, value: bytes, chain: int = CHAIN_ID) -> bytes:
    return struct.pack(">I", chain) + sender + struct.pack(">QB", nonce, OP_SET) \
        + struct.pack(">B", len(key)) + key + struct.pack(">H", len(value)) + value


def transfer_body(sender: bytes, nonce: int, to: bytes, amount: int, chain: int = CHAIN_ID) -> bytes:
    return struct.pack(">I", chain) + sender + struct.pack(">QB", nonce, OP_TRANSFER) + to + struct.pack(">Q", amount)


def _block_bytes(txs: Txs) -> int:
    """What BLOCK_BYTES bounds: each transaction's body, 64-byte signature and 4-byte offset."""
    return txs.bodies.data.nbytes + txs.sigs.nbytes + 4 * len(txs)


def pack_txs(bodies: list[bytes], sigs: list[bytes]) -> Txs:
    return Txs(Packed(*pack_messages(bodies)), pack_fixed(sigs, 64, "signature"))


class KvApp:
    """One validator's application; state snapshots are per block and shared by reference."""

    def __init__(self, verifier: Verifier, genesis: dict[bytes, int] | None = None, max_txs: int = 10_000):
        self.verifier = verifier
        self.max_txs = min(max_txs, MAX_BLOCK_TXS)
        accounts = {k: Account(balance=v) for k, v in (genesis or {}).items()}
        self.genesis = State(accounts, self._root(accounts))
        self.mempool: dict[bytes, tuple[bytes, bytes]] = {}  # sha256(body) -> (body, signature)

    # ---- state transition ---------------------------------------------------------------------
    def _root(self, accounts: dict) -> bytes:
        if not accounts:
            return EMPTY
        return self.verifier.merkle_root([accounts[k].leaf(k) for k in sorted(accounts)])

    def _accounts_after(self, parent: State, bodies: Packed) -> dict:
        """The accounts after bodies. A sender's keys are copied once a block and sorted at its
        end (copied and sorted at each set, n sets of one sender took time in n^2: 8,000 of them
        3.9 s)."""
        accounts, edited = dict(parent.accounts), {}
        data, offsets = bodies.data.tobytes(), bodies.offsets.tolist()
        for i in range(len(offsets) - 1):
            self._apply(accounts, edited, data[offsets[i]:offsets[i + 1]])
        for sender, keys in edited.items():
            accounts[sender] = replace(accounts[sender], data=tuple(sorted(keys.items())))
        return accounts

    def execute(self, parent: State, bodies: Packed) -> State:
        accounts = self._accounts_after(parent, bodies)
        return State(accounts, self._root(accounts))

    @staticmethod
    def _apply(accounts: dict, edited: dict, body: bytes) -> None:
        """One transaction; a set's key goes to edited[sender] (its keys as a dict, made into the
        account's sorted data by _accounts_after)."""
        chain, sender, nonce, op = struct.unpack_from(">I32sQB", body)
        acct = accounts.get(sender, Account())
        if chain != CHAIN_ID or nonce != acct.nonce:
            return
        if op == OP_SET:
            klen = body[HEADER]
            key = body[HEADER + 1:HEADER + 1 + klen]
            (vlen,) = struct.unpack_from(">H", body, HEADER + 1 + klen)
            keys = edited.get(sender)
            if keys is None:
                keys = edited[sender] = dict(acct.data)
            keys[key] = body[HEADER + 3 + klen:HEADER + 3 + klen + vlen]
            accounts[sender] = replace(acct, nonce=nonce + 1)
        elif op == OP_TRANSFER:
            to, amount = struct.unpack_from(">32sQ", body, HEADER)
            if amount > acct.balance:
                accounts[sender] = replace(acct, nonce=nonce + 1)
                return
            accounts[sender] = replace(acct, nonce=nonce + 1, balance=acct.balance - amount)
            dest = accounts.get(to, Account())
            accounts[to] = replace(dest, balance=dest.balance + amount)

    @staticmethod
    def well_formed(bodies: Packed) -> str:
        """Why the bodies cannot be transactions, or "" (vectorised): each is a header, an op of 1
        or 2, and exactly the payload that op's layout says (a set's key and value lengths inside
        the body and adding up to it; a transfer's 40 bytes)."""
        lengths = np.diff(bodies.offsets.astype(np.int64))
        if not len(lengths):
            return ""
        if lengths.min() < HEADER + 9:
            return f"transaction {int(np.argmin(lengths))} is shorter than a transaction header"
        data = bodies.data
        starts = bodies.offsets[:-1].astype(np.int64)
        ops = data[starts + HEADER - 1]
        bad = np.flatnonzero((ops != OP_SET) & (ops != OP_TRANSFER))
        if len(bad):
            return f"transaction {int(bad[0])} has an unknown op {int(ops[bad[0]])}"
        bad = np.flatnonzero((ops == OP_TRANSFER) & (lengths != HEADER + 40))
        if len(bad):
            return f"transaction {int(bad[0])}: a transfer is {HEADER + 40} bytes, not {int(lengths[bad[0]])}"
        sets = np.flatnonzero(ops == OP_SET)
        if len(sets):
            klen = data[starts[sets] + HEADER].astype(np.int64)
            past = np.flatnonzero(HEADER + 3 + klen > lengths[sets])
            if len(past):
                return f"transaction {int(sets[past[0]])}: its key length points past the body's end"
            at = starts[sets] + HEADER + 1 + klen
            vlen = data[at].astype(np.int64) * 256 + data[at + 1].astype(np.int64)
            wrong = np.flatnonzero(HEADER + 3 + klen + vlen != lengths[sets])
            if len(wrong):
                return f"transaction {int(sets[wrong[0]])}: its key and value lengths do not add up to its length"
        return ""

    # ---- validation ---------------------------------------------------------------------------
    def validate(self, parent: State, block: Block, certs: tuple) -> Verdict:
        """Every check a validator makes before voting, timed by stage. certs: the (keys, messages,
        signatures) of the QC and TC the block carries, verified in the same batch."""
        t = {}
        start = time.perf_counter()
        txs = block.txs
        if len(txs) > MAX_BLOCK_TXS:
            return Verdict(False, f"a block of {len(txs)} transactions (at most {MAX_BLOCK_TXS})", None, {})
        if txs.sigs.ndim != 2 or txs.sigs.shape[0] != len(txs):
            return Verdict(False, f"{txs.sigs.shape[0]} signature rows for {len(txs)} transactions", None, {})
        reason = self.well_formed(txs.bodies)
        if reason:
            return Verdict(False, reason, None, {})
        if txs.digest() != block.sig_digest:
            return Verdict(False, "signature digest does not match the header", None, {})
        size = _block_bytes(txs)
        if size > BLOCK_BYTES:
            return Verdict(False, f"its transactions take {size} bytes, over {BLOCK_BYTES}", None, {})
        n = len(txs)
        starts = txs.bodies.offsets[:-1].astype(np.int64)
        keys = txs.bodies.data[starts[:, None] + np.arange(4, 36)] if n else np.zeros((0, 32), np.uint8)
        ok = self.verifier.verify_all(keys, txs.bodies, txs.sigs, certs)
        t["signatures"] = (time.perf_counter() - start) * 1e3
        if not ok:
            return Verdict(False, "a transaction or certificate signature does not verify", None, t)
        mark = time.perf_counter()
        root = self.verifier.merkle_root(txs.bodies) if n else EMPTY
        t["tx_root"] = (time.perf_counter() - mark) * 1e3
        if root != block.tx_root:
            return Verdict(False, "transaction root does not match the header", None, t)
        mark = time.perf_counter()
        accounts = self._accounts_after(parent, txs.bodies)
        t["execute"] = (time.perf_counter() - mark) * 1e3
        mark = time.perf_counter()
        state = State(accounts, self._root(accounts))
        t["state_root"] = (time.perf_counter() - mark) * 1e3
        t["total"] = (time.perf_counter() - start) * 1e3
        if state.root != block.state_root:
            return Verdict(False, "state root does not match the header", None, t)
        return Verdict(True, "", state, t)

    # ---- proposing and mempool ----------------------------------------------------------------
    def submit(self, body: bytes, signature: bytes) -> str:
        """Admit one transaction (submit_many)."""
        return self.submit_many([(body, [signature])])[0]

    def has_pending(self) -> bool:
        """Whether the mempool holds a transaction (a leader with none may wait to propose:
        Config.empty_block_interval_ms)."""
        return len(self.mempool) > 0

    def submit_many(self, items: list[tuple[bytes, list[bytes]]]) -> list[str]:
        """Admit (body, [signature]) pairs to the mempool; per item why not ("" when admitted): a
        body that is not a well-formed transaction, anything but one signature of 64 bytes, or a
        signature that does not verify (one batch for the items). A block holding any of these is
        invalid, and only a commit takes a transaction out of the mempool: one bad signature
        admitted was proposed by every leader in turn, each block refused, and the chain stopped."""
        reasons, body_of, sig_of = [], {}, {}
        for i, item in enumerate(items):
            body, sigs = item if isinstance(item, tuple) and len(item) == 2 else (None, None)
            if not isinstance(body, bytes) or not isinstance(sigs, (list, tuple)) \
                    or len(sigs) != 1 or not isinstance(sigs[0], bytes):
                reasons.append("a transaction has exactly one signature of 64 bytes")
                continue
            body, sigs = exact_bytes(body), [exact_bytes(sigs[0])]
            if len(sigs[0]) != 64:
                reasons.append("a transaction has exactly one signature of 64 bytes")
                continue
            reasons.append(self.well_formed(Packed(np.frombuffer(body, np.uint8), np.array([0, len(body)], np.uint64))))
            if not reasons[-1]:
                body_of[i], sig_of[i] = body, sigs[0]
        if body_of:
            at = list(body_of)
            bodies = [body_of[i] for i in at]
            keys = np.frombuffer(b"".join(b[4:36] for b in bodies), np.uint8).reshape(-1, 32)
            sigs = np.frombuffer(b"".join(sig_of[i] for i in at), np.uint8).reshape(-1, 64)
            for i, ok in zip(at, self.verifier.verify_each(keys, Packed(*pack_messages(bodies)), sigs)):
                if ok:
                    self.mempool.setdefault(hashlib.sha256(body_of[i]).digest(), (body_of[i], sig_of[i]))
                else:
                    reasons[i] = "the signature does not verify"
        return reasons

    def propose(self, parent: State, exclude: set[bytes]) -> tuple[Txs, State]:
        """Up to max_txs mempool transactions not already in an uncommitted ancestor, taking at
        most BLOCK_BYTES (one that does not fit is left for a later block), and the state after them."""
        picked, room = [], BLOCK_BYTES
        for h, tx in self.mempool.items():
            if len(picked) == self.max_txs or room < HEADER + 9 + TX_EXTRA:
                break
            if h not in exclude and len(tx[0]) + TX_EXTRA <= room:
                picked.append(tx)
                room -= len(tx[0]) + TX_EXTRA
        txs = pack_txs([b for b, _ in picked], [s for _, s in picked]) if picked else Txs.empty()
        return txs, self.execute(parent, txs.bodies)

    def tx_root(self, txs: Txs) -> bytes:
        return self.verifier.merkle_root(txs.bodies) if len(txs) else EMPTY

    def committed(self, block: Block, state=None) -> None:
        """Drop the block's transactions from the mempool (state: the block's, unused here)."""
        for i in range(len(block.txs)):
            self.mempool.pop(hashlib.sha256(block.txs.bodies.item(i)).digest(), None)
