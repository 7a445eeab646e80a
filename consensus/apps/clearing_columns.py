"""Columnar execution (issue 20, docs/CLEARING.md "Columnar execution"): while a block executes,
the hot state of the accounts it reaches (nonce, cash per asset, position per series) lives in
arrays, transactions between two marks are applied as one run, marks read the margin inputs of
every holder from the arrays, and the accounts are written back once, at the block's end (or
before a rule that works on accounts one by one: a settlement, a liquidation, a transaction
applied alone).

apply_run() applies a run of deposits, withdrawals and trades exactly as Clearing.deposit,
withdraw and trade would one after the other, or declines and changes nothing: when one of them
would be refused, or an amount leaves the range where int64 arithmetic is exact. The caller then
applies the run one transaction at a time, which refuses the same transactions with their
reasons, so a verdict never depends on which path ran. A run is checked in two steps:
  - the checks on each transaction's own fields, in array passes (_legs): sizes, prices, amounts,
    assets, listed and marked series, two distinct accounts;
  - its legs (a deposit or withdrawal is one leg, a trade a buyer's and a seller's) applied in
    order to copies of the columns by native/ledger.c, with the checks that depend on the state:
    the account's next nonce, a withdrawal leaving its cash >= 0, a position within MAX_POSITION,
    a reduce-only series' legs shrinking it (MAX_BALANCE, far above int64, cannot be reached).
Marks do not change inside a run, and the reduce-only state only loosens (a top-up may lift a
fund above its floor; only marks tighten it): the run takes the state its first transaction
sees, so it is never looser than the one-by-one checks in the one-by-one order, and a run where
it is stricter is declined and applied one by one (the same verdict)."""
from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from accel import _native as _c
from accel.risk import FUTURE

from . import clearing_tx as ctx
from .clearing import _PER_UNIT, MAX_AMOUNT, MAX_POSITION, MAX_PRICE, MAX_SIZE, Account, _name8

log = logging.getLogger("consensus.clearing")
_SAFE = 2**62  # every value and running sum stays below this in magnitude: int64 cannot wrap
_LOW = 0xFFFFFFFF


def _key_array(keys: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(keys), np.uint8).reshape(len(keys), 32)


def _prefix(keys: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each 32-byte key as an integer (an index into keys, checked in full)."""
    return np.ascontiguousarray(keys[:, :8]).view(np.uint64).reshape(-1)


class _Index:
    """A sorted array of integer keys with the position each came with: lookups for many keys in
    one searchsorted, insertions of a few in one pass."""

    def __init__(self):
        self.sorted = np.zeros(0, np.uint64)
        self.at = np.zeros(0, np.int64)

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions, found): for each key the position of an equal one (where found)."""
        if not len(self.sorted):
            return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
        i = np.minimum(np.searchsorted(self.sorted, keys), len(self.sorted) - 1)
        return self.at[i], self.sorted[i] == keys

    def add(self, keys: np.ndarray, at: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        keys, at = keys[order], at[order]
        where = np.searchsorted(self.sorted, keys)
        self.sorted = np.insert(self.sorted, where, keys)
        self.at = np.insert(self.at, where, at)


class Columns:
    """The block's working set. Rows are accounts in the order they were first reached; cash is
    dense (accounts x assets); positions are sparse lines (row << 32 | series id -> size), a
    closed position a line holding 0; touched marks the books (row, asset) whose margin the
    block's end checks."""

    def __init__(self, state):
        self.assets = sorted(state.assets)
        self.asset_col = {a: j for j, a in enumerate(self.assets)}
        self.names8 = np.frombuffer(b"".join(map(_name8, self.assets)), np.uint8).reshape(-1, 8)
        self.keys: list[bytes] = []
        self.row: dict[bytes, int] = {}   # every row (a key's prefix may be another key's)
        self.key_bytes = np.zeros((0, 32), np.uint8)
        self.by_prefix = _Index()
        self.nonce = np.zeros(0, np.int64)
        self.slot = np.zeros(0, np.int64)    # each account's leaf in the state tree
        self.cash = np.zeros((0, len(self.assets)), np.int64)
        self.touched = np.zeros((0, len(self.assets)), bool)
        self.changed = np.zeros(0, bool)
        self.by_line = _Index()
        self.line_key = np.zeros(0, np.int64)
        self.size = np.zeros(0, np.int64)

    def rows(self, state, array: np.ndarray) -> np.ndarray | None:
        """The rows of the keys of array (n, 32), reaching the accounts not held yet; None if one is
        not registered or holds a balance or position beyond the int64 range."""
        out, found = self.by_prefix.find(_prefix(array))
        if len(self.keys):
            found &= (self.key_bytes[out] == array).all(axis=1)
        if found.all():
            return out
        missing = np.flatnonzero(~found)
        blob = array[missing].tobytes()
        keys = [blob[i:i + 32] for i in range(0, len(blob), 32)]
        new = [k for k in dict.fromkeys(keys) if k not in self.row]
        if new and not self._load(state, new):
            return None
        out[missing] = [self.row[k] for k in keys]
        return out

    def _load(self, state, new: list[bytes]) -> bool:
        accts = list(map(state.accounts.get, new))
        if None in accts:
            return False
        nonce, slot, ncash, nlines, cols, values, ids, sizes = [], [], [], [], [], [], [], []
        col_of = self.asset_col.__getitem__
        for a in accts:  # one pass: a block reaches a thousand accounts or more
            c, p = a.collateral, a.positions
            nonce.append(a.nonce)
            slot.append(a.slot)
            ncash.append(len(c))
            cols += map(col_of, c)
            values += c.values()
            nlines.append(len(p))
            ids += p
            sizes += p.values()
        if (max(map(abs, values), default=0) >= _SAFE or max(map(abs, sizes), default=0) >= _SAFE
                or max(nonce) >= _SAFE):
            return False
        first = len(self.keys)
        cash = np.zeros((len(new), len(self.assets)), np.int64)
        cash[np.repeat(np.arange(len(new)), ncash), np.array(cols, np.int64)] = np.array(values, np.int64)
        line_key = (np.repeat(np.arange(first, first + len(new), dtype=np.int64), nlines) << 32) | np.array(ids, np.int64)
        self._add_lines(line_key, np.array(sizes, np.int64))
        self.row.update(zip(new, range(first, first + len(new))))
        self.keys += new
        array = _key_array(new)
        self.key_bytes = np.concatenate([self.key_bytes, array])
        self.by_prefix.add(_prefix(array), np.arange(first, first + len(new)))
        self.nonce = np.concatenate([self.nonce, np.array(nonce, np.int64)])
        self.slot = np.concatenate([self.slot, np.array(slot, np.int64)])
        self.cash = np.concatenate([self.cash, cash])
        self.touched = np.concatenate([self.touched, np.zeros(cash.shape, bool)])
        self.changed = np.concatenate([self.changed, np.zeros(len(new), bool)])
        return True

    def _add_lines(self, keys: np.ndarray, sizes: np.ndarray) -> None:
        self.by_line.add(keys.view(np.uint64), np.arange(len(self.line_key), len(self.line_key) + len(keys)))
        self.line_key = np.concatenate([self.line_key, keys])
        self.size = np.concatenate([self.size, sizes])

    def lines(self, keys: np.ndarray) -> np.ndarray:
        """The lines (indices) of (row << 32 | series) keys, adding a 0 line for each one missing."""
        out, found = self.by_line.find(keys.view(np.uint64))
        if not found.all():
            fresh = np.unique(keys[~found])
            self._add_lines(fresh, np.zeros(len(fresh), np.int64))
            out[~found], _ = self.by_line.find(keys[~found].view(np.uint64))
        return out

    def take_touched(self) -> set[tuple[bytes, str]]:
        """The books marked touched, as (account, asset), unmarked."""
        r, c = np.nonzero(self.touched)
        self.touched[:] = False
        return set(zip(map(self.keys.__getitem__, r.tolist()), map(self.assets.__getitem__, c.tolist())))

    def _leaves(self, changed, cash, rs, cs, ids, sizes, bounds: list[int]) -> list[bytes]:
        """The state-tree leaves (Clearing._leaf's bytes) of the accounts at rows changed, built in
        array passes: cash[rs, cs] their nonzero balances (row by row, assets in name order), ids
        and sizes their open positions (account by account in series order, bounds[j] the first
        of changed[j]'s)."""
        m = len(changed)
        ncash, npos = np.bincount(rs, minlength=m), np.diff(bounds)
        length = 41 + 24 * ncash + 12 * npos
        start = np.cumsum(length) - length
        out = np.zeros(int(length.sum()), np.uint8)
        head = np.zeros((m, 41), np.uint8)  # key 32 | nonce u64 | assets u8
        head[:, :32] = self.key_bytes[changed]
        head[:, 32:40] = self.nonce[changed].astype(">u8").view(np.uint8).reshape(m, 8)
        head[:, 40] = ncash
        out[start[:, None] + np.arange(41)] = head
        value = cash[rs, cs]
        entry = np.zeros((len(rs), 24), np.uint8)  # asset 8 | quanta i128
        entry[:, :8] = self.names8[cs]
        entry[:, 8:16] = np.where(value < 0, 0xFF, 0)[:, None]
        entry[:, 16:] = value.astype(">i8").view(np.uint8).reshape(-1, 8)
        nth = np.arange(len(rs)) - (np.cumsum(ncash) - ncash)[rs]
        out[(start[rs] + 41 + 24 * nth)[:, None] + np.arange(24)] = entry
        owner = np.repeat(np.arange(m), npos)
        entry = np.zeros((len(ids), 12), np.uint8)  # series u32 | size i64
        entry[:, :4] = ids.astype(">u4").view(np.uint8).reshape(-1, 4)
        entry[:, 4:] = sizes.astype(">i8").view(np.uint8).reshape(-1, 8)
        nth = np.arange(len(ids)) - np.asarray(bounds[:-1], np.int64)[owner]
        out[(start[owner] + 41 + 24 * ncash[owner] + 12 * nth)[:, None] + np.arange(12)] = entry
        blob, ends = out.tobytes(), (start + length).tolist()
        return [blob[a:b] for a, b in zip(start.tolist(), ends)]

    def is_touched(self, key: bytes, asset: str) -> bool:
        r = self.row.get(key)
        return r is not None and bool(self.touched[r, self.asset_col[asset]])

    def positions(self, state, keys: list[bytes]):
        """(order, rows, (owner, series id, size)): keys[order] are the accounts in the order of
        their rows, rows their rows in that order, and owner indexes keys[order], each account's
        open positions together in series order (the order of the line index); None if an
        account cannot be held in int64 columns."""
        rows = self.rows(state, _key_array(keys))
        if rows is None:
            return None
        order = np.argsort(rows)
        owner_of = np.full(len(self.keys), -1, np.int64)
        owner_of[rows[order]] = np.arange(len(keys))
        row, series, size = self._lines_by_account()
        owner = owner_of[row]
        held = (owner >= 0) & (size != 0)
        return order, rows[order], (owner[held], series[held], size[held])

    def _lines_by_account(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, series id, size) of every line, by row and then series (the line index's order)."""
        line = self.by_line.sorted
        return (line >> 32).astype(np.int64), (line & _LOW).astype(np.int64), self.size[self.by_line.at]

    def balances(self, rows: np.ndarray, asset: str) -> np.ndarray:
        return self.cash[rows, self.asset_col[asset]]

    def write_back(self, state) -> None:
        """Every changed account's nonce, cash and positions into the state (new Account objects,
        this version's own), and the touched books into its record."""
        changed = np.flatnonzero(self.changed)
        if len(changed):
            cash = self.cash[changed]
            collateral: list[dict] = [{} for _ in range(len(changed))]
            rs, cs = np.nonzero(cash)
            for j, c, v in zip(rs.tolist(), cs.tolist(), cash[rs, cs].tolist()):
                collateral[j][self.assets[c]] = v
            owner, series, size = self._lines_by_account()
            mine = self.changed[owner] & (size != 0)
            at = np.full(len(self.keys), -1, np.int64)
            at[changed] = np.arange(len(changed))
            bounds = np.searchsorted(at[owner[mine]], np.arange(len(changed) + 1)).tolist()
            ids, sizes = series[mine], size[mine]
            leaves = self._leaves(changed, cash, rs, cs, ids, sizes, bounds)
            ids, sizes = ids.tolist(), sizes.tolist()
            new = {}
            for j, (r, nonce, slot) in enumerate(zip(changed.tolist(), self.nonce[changed].tolist(),
                                                     self.slot[changed].tolist())):
                a, b = bounds[j], bounds[j + 1]
                new[self.keys[r]] = Account(nonce, collateral[j], dict(zip(ids[a:b], sizes[a:b])), slot)
            state._replace_many(new, dict(zip(new, leaves)))
            self.changed[:] = False
        books = self.take_touched()
        state.touched |= books
        state.unchecked |= books


class _Legs:
    """A run's legs in transaction order (a trade's buyer, then its seller), as columns."""

    def __init__(self, n: int):
        self.key_bytes = np.zeros((n, 32), np.uint8)
        self.nonce = np.zeros(n, np.int64)
        self.asset = np.zeros(n, np.int64)    # column of the asset its cash moves in
        self.flow = np.zeros(n, np.int64)     # quanta into the account's cash
        self.series = np.zeros(n, np.int64)   # trades: the series
        self.size = np.zeros(n, np.int64)     # trades: contracts into the account's position
        self.kind = np.zeros(n, np.int64)     # the transaction's operation
        self.shrink = np.zeros(n, bool)       # trades in a reduce-only series


# the bodies of clearing_tx's wire format, read as records (after the 5-byte chain id and op)
_TRADE = np.dtype([("head", "V5"), ("buyer", "u1", 32), ("bn", ">u8"), ("seller", "u1", 32), ("sn", ">u8"),
                   ("series", ">u4"), ("size", ">u4"), ("price", ">u8")])
_MOVE = np.dtype([("head", "V5"), ("key", "u1", 32), ("nonce", ">u8"), ("asset", "S8"), ("amount", ">u8")])


def _body(tx: ctx.Tx) -> bytes:
    """The body of a deposit, withdrawal, top-up or trade built from its fields, not decoded."""
    if tx.op == ctx.TRADE:
        return ctx.trade(*tx.fields)
    if tx.op in ctx.MOVES:
        return ctx.move(tx.op, *tx.fields)
    raise ValueError(f"operation {tx.op} is not applied in runs")


def _records(txs: list[ctx.Tx]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(ops, trades, moves): each transaction's operation, and the bodies of the trades and of the
    deposits and withdrawals as records, in order; None if another operation is among them."""
    bodies = [t.body if t.body is not None else _body(t) for t in txs]
    data = np.frombuffer(b"".join(bodies), np.uint8)
    lengths = np.fromiter(map(len, bodies), np.int64, len(bodies))
    starts = np.cumsum(lengths) - lengths
    ops = data[starts + 4].astype(np.int64)
    trade, move = ops == ctx.TRADE, np.isin(ops, ctx.MOVES)
    if not (trade | move).all():
        return None
    if trade.all():  # the bodies side by side are the records
        return ops, data.view(_TRADE), np.zeros(0, _MOVE)

    def gather(which: np.ndarray, dtype: np.dtype) -> np.ndarray:
        return np.ascontiguousarray(data[starts[which][:, None] + np.arange(dtype.itemsize)]).view(dtype).reshape(-1)
    return ops, gather(trade, _TRADE), gather(move, _MOVE)


def _legs(state, cols: Columns, txs: list[ctx.Tx]) -> _Legs | None:
    """The run's legs, read from the transactions' bodies, or None where a transaction would be
    refused on its own fields, or its amounts could leave the int64 range."""
    records = _records(txs)
    if records is None:
        return None
    ops, trades, moves = records
    trade = ops == ctx.TRADE
    count = np.where(trade, 2, 1)
    first = np.cumsum(count) - count
    legs = _Legs(int(count.sum()))
    legs.kind[first] = ops
    legs.kind[first[trade] + 1] = ctx.TRADE
    if len(trades):
        size, price = trades["size"].astype(np.int64), trades["price"]
        nonces = np.concatenate([trades["bn"], trades["sn"]])
        if ((trades["buyer"] == trades["seller"]).all(axis=1).any() or not ((size > 0) & (size <= MAX_SIZE)).all()
                or (price > MAX_PRICE).any() or (nonces >= _SAFE).any()):
            return None
        price = price.astype(np.int64)
        series = trades["series"].astype(np.int64)
        listed, which = np.unique(series, return_inverse=True)
        per = []  # per listed series: (asset column, an inverse future, reduce-only)
        for i in listed.tolist():
            s = state.series.get(i)
            if s is None or i in state.fixings or s.underlying not in state.marks:
                return None
            per.append((cols.asset_col[s.asset], s.inverse and s.kind == FUTURE, bool(state._reduce_only(s))))
        asset, inverse, shrink = (np.array(c)[which] for c in zip(*per))
        if (price.astype(np.float64) * size >= 2**61).any() or (inverse & (price <= 0)).any():
            return None
        flow = price * size
        if inverse.any():  # coin quanta for size USD at the futures price, rounded half up
            coins = [-((z * _PER_UNIT * _PER_UNIT + p // 2) // p)
                     for z, p in zip(size[inverse].tolist(), price[inverse].tolist())]
            if max(map(abs, coins)) >= _SAFE:
                return None
            flow[inverse] = coins
        at = first[trade]
        legs.key_bytes[at], legs.key_bytes[at + 1] = trades["buyer"], trades["seller"]
        legs.nonce[at], legs.nonce[at + 1] = trades["bn"].astype(np.int64), trades["sn"].astype(np.int64)
        legs.asset[at] = legs.asset[at + 1] = asset
        legs.flow[at], legs.flow[at + 1] = -flow, flow
        legs.series[at] = legs.series[at + 1] = series
        legs.size[at], legs.size[at + 1] = size, -size
        legs.shrink[at] = legs.shrink[at + 1] = shrink
    if len(moves):
        amounts, nonces = moves["amount"], moves["nonce"]
        names, column = np.unique(moves["asset"], return_inverse=True)
        assets = [n.rstrip(b"\0").decode("ascii") for n in names.tolist()]
        if (not ((amounts > 0) & (amounts <= MAX_AMOUNT)).all() or (nonces >= _SAFE).any()
                or not set(assets) <= state.assets):
            return None
        at = first[~trade]
        legs.key_bytes[at] = moves["key"]
        legs.nonce[at] = nonces.astype(np.int64)
        legs.asset[at] = np.array([cols.asset_col[a] for a in assets], np.int64)[column]
        legs.flow[at] = np.where(ops[~trade] == ctx.DEPOSIT, 1, -1) * amounts.astype(np.int64)
    if np.abs(legs.flow).astype(np.float64).sum() >= 2**61:
        return None
    return legs


class _Plan(NamedTuple):
    """What a run that passed every check writes."""
    legs: _Legs
    rows: np.ndarray     # each leg's row
    line: np.ndarray     # each trade leg's line (-1: not a trade)
    nonce: np.ndarray    # the columns after the run
    cash: np.ndarray
    size: np.ndarray


def apply_run(state, txs: list[ctx.Tx]) -> bool:
    """Applies txs (deposits, withdrawals and trades only) to state if every one of them applies,
    and says so; otherwise leaves it as it was and returns False. The checks write nothing: if
    one of them fails in a way it should not (a bug), the run is declined and logged, and the
    one-by-one engine, the reference, decides."""
    if not state.defer or not txs:
        return False
    try:
        plan = _check(state, txs)
    except Exception:
        log.exception("columnar execution could not check a run of %d transactions; applying them one by one",
                      len(txs))
        return False
    if plan is None:
        return False
    _write(state, plan)
    return True


def _check(state, txs: list[ctx.Tx]) -> _Plan | None:
    """The run's plan if every transaction of it applies, else None: the legs applied in order to
    copies of the columns by native/ledger.c (the checks that depend on the state), after the
    checks on the transactions' own fields (_legs)."""
    cols = state.columns()
    legs = _legs(state, cols, txs)
    if legs is None:
        return None
    rows = cols.rows(state, legs.key_bytes)
    if rows is None:
        return None
    trade = legs.kind == ctx.TRADE
    line = np.full(len(rows), -1, np.int64)
    line[trade] = cols.lines((rows[trade] << 32) | legs.series[trade])
    nonce, cash, size = cols.nonce.copy(), cols.cash.copy(), cols.size.copy()
    withdraw = ((legs.kind == ctx.WITHDRAW) | (legs.kind == ctx.TOP_UP)).view(np.uint8)  # (cash kept >= 0)
    failed = _native().av_ledger_run(*(_ptr(a) for a in (rows, legs.nonce, legs.asset, legs.flow, withdraw, line,
                                                         legs.size, legs.shrink.view(np.uint8))),
                                     len(cols.assets), MAX_POSITION, _SAFE, _ptr(nonce), _ptr(cash), _ptr(size),
                                     len(rows))
    return None if failed else _Plan(legs, rows, line, nonce, cash, size)


def _write(state, plan: _Plan) -> None:
    """A checked run's columns kept; the holders whose positions opened or closed, the supply and
    the touched books into the state."""
    cols, legs, rows = state.columns(), plan.legs, plan.rows
    moved = np.zeros(len(plan.size), bool)
    moved[plan.line[plan.line >= 0]] = True
    lines = np.flatnonzero(moved)
    flipped = lines[(cols.size[lines] == 0) != (plan.size[lines] == 0)]
    cols.nonce, cols.cash, cols.size = plan.nonce, plan.cash, plan.size
    cols.changed[rows] = True
    for i in np.unique(legs.series[legs.kind == ctx.TRADE]).tolist():
        state._holders(i)  # this version's own holders set of every series traded, as one by one
    flipped = flipped[np.argsort(cols.line_key[flipped] & _LOW, kind="stable")]  # by series
    series, owner, opened = cols.line_key[flipped] & _LOW, cols.line_key[flipped] >> 32, cols.size[flipped] != 0
    cuts = np.flatnonzero(np.diff(series)) + 1
    for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(series)].tolist()):
        if a < b:
            holders, now = state._holders(int(series[a])), opened[a:b]
            holders.difference_update(map(cols.keys.__getitem__, owner[a:b][~now].tolist()))
            holders.update(map(cols.keys.__getitem__, owner[a:b][now].tolist()))
    if state._sizes:  # the kept positions indexes (auto-deleveraging's order) of the series traded
        kept = lines[np.isin(cols.line_key[lines] & _LOW, np.array(sorted(state._sizes), np.int64))]
        for i, r, n in zip((cols.line_key[kept] & _LOW).tolist(), (cols.line_key[kept] >> 32).tolist(),
                           cols.size[kept].tolist()):
            state._size_index(i).set(cols.keys[r], n)
    for j in np.flatnonzero(legs.kind != ctx.TRADE).tolist():
        if legs.kind[j] == ctx.TOP_UP:
            state.funds[cols.assets[legs.asset[j]]] -= int(legs.flow[j])
        else:
            state.supply[cols.assets[legs.asset[j]]] += int(legs.flow[j])
    margined = legs.kind != ctx.DEPOSIT
    cols.touched[rows[margined], legs.asset[margined]] = True


def _native():
    return _c.lib


def _ptr(array: np.ndarray):
    """A C pointer to an int64 or uint8 array's data; the pointer holds the buffer it points into
    (a contiguous copy where the array is not), so the data lives as long as the pointer."""
    ctype = "int64_t[]" if array.dtype == np.int64 else "uint8_t[]"
    return _c.ffi.from_buffer(ctype, np.ascontiguousarray(array))
