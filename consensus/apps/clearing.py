"""The options clearing state machine (issue 9): accounts identified by Ed25519 keys, collateral
per asset in integer quanta, a registry of option series and futures (underlying, strike, expiry,
call/put/future, inverse or linear), trades, oracle marks, liquidation and settlement, with every
margin computed by accel.portfolio_margin. Deterministic: integer quanta for money, prices from
accel's bit-identical kernels turned into quanta by one rounding rule, everything else integer.
docs/CLEARING.md states the rules; transactions on the wire: clearing_tx.py; behind the consensus
core: clearing_app.py.

Assets: "USD" and the coins (the underlyings of listed inverse series, plus any named at genesis).
Every amount is an integer number of quanta of its asset, QUANTUM = 1e-8 (1e-8 USD, 1e-8 BTC).
A series settles in USD when linear and in its underlying coin when inverse (Series.asset).

Books: an account's positions settling in one asset, with its collateral in that asset, form a
book, margined on its own (Deribit style): equity in asset X = collateral[X] + marked value of
the positions settling in X; initial and maintenance margin of those positions from one
accel.portfolio_margin call per (underlying, settlement asset) group, summed over underlyings
(the USD book holds every underlying's linear series; a coin's book only that coin's inverse
series). A position is valued at its mark: an option at its model price (inverse: divided by the
index, in coin), a linear future at F, an inverse future at -1/F coin per USD of notional.

Rules (each raises Rejected with the reason, leaving the state unchanged; so does a ValueError from
accel refusing a margin, so a proposer can skip a refused transaction without rebuilding):
  register   the key must pass accel.ed25519_key_is_safe (canonical, not small order)
  nonces     every signer's nonce must be its next one
  deposit    a known asset, a positive amount
  withdraw   at most the free collateral of that asset: min(cash, equity - initial margin)
  trade      both counterparties sign; the buyer pays price x size to the seller in the series'
             settlement asset (an inverse future's price is its USD futures price F and the buyer
             receives size / F coin: the contract's value -1/F per USD); afterwards each one's book
             in that asset covers its initial margin (in a block: at the block's end, every
             touched book checked, one margin call per group for all of them)
  mark       signed by at least `quorum` distinct registered oracle keys; sequence and timestamp
             must both increase (stale or out-of-order marks are refused)
  liquidate  after a mark, every book holding that underlying whose equity is below its
             maintenance margin has all its positions closed at the mark; a loss beyond the
             book's collateral is charged to that asset's insurance fund
  settle     once a mark at or after expiry exists, any account may settle the series at its
             intrinsic value (inverse: intrinsic USD / index, in coin)
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np

import accel
from accel import risk_numpy
from accel.risk import CALL, FUTURE, INVERSE, PUT, MarginParams, Marks, Portfolio

QUANTUM = 1e-8
YEAR_S = 365 * 24 * 3600
USD = "USD"
_PER_UNIT = 10**8  # quanta per unit of any asset (1 / QUANTUM)


class Rejected(ValueError):
    """A transaction the state machine refuses; the message says why."""


def to_quanta(amount: float) -> int:
    """An amount as integer quanta: round half to even of amount / QUANTUM (bit-identical inputs
    give identical quanta on every validator)."""
    if not np.isfinite(amount):
        raise Rejected(f"amount {amount!r} is not finite")
    return int(round(amount / QUANTUM))


def asset_name_ok(name: str) -> bool:
    """1 to 8 ASCII letters or digits (what the wire's 8-byte zero-padded field carries)."""
    return isinstance(name, str) and 1 <= len(name) <= 8 and name.isascii() and name.isalnum()


@dataclass(frozen=True)
class Series:
    id: int
    underlying: str
    kind: int        # CALL, PUT or FUTURE
    strike: float    # USD; 0 for futures
    expiry: int      # unix seconds
    inverse: bool = False  # coin-settled (in the underlying); inverse futures are sized in USD notional

    @property
    def asset(self) -> str:
        """The asset it settles in: the underlying coin if inverse, else USD."""
        return self.underlying if self.inverse else USD


@dataclass
class Account:
    nonce: int = 0
    collateral: dict = field(default_factory=dict)       # asset -> quanta (no zero entries)
    positions: dict = field(default_factory=dict)        # series id -> contracts (netted, != 0)


@dataclass
class Mark:
    index: float
    vols: dict       # series id -> implied vol
    sequence: int
    timestamp: int


def _credit(acct: Account, asset: str, amount: int) -> None:
    held = acct.collateral.get(asset, 0) + amount
    if held:
        acct.collateral[asset] = held
    else:
        acct.collateral.pop(asset, None)


class Clearing:
    def __init__(self, oracle_keys: list[bytes], quorum: int, params: dict[str, MarginParams] | None = None,
                 backend=None, insurance: int | dict[str, int] = 0, assets=(USD,)):
        """insurance: the funds per asset (an int: the USD fund). assets: those deposits may name
        (USD always; listing an inverse series adds its underlying)."""
        if not 1 <= quorum <= len(oracle_keys):
            raise ValueError(f"quorum {quorum} outside 1..{len(oracle_keys)} oracle keys")
        self.oracles, self.quorum = list(oracle_keys), quorum
        self.params = params or {}
        self.backend = backend
        self.accounts: dict[bytes, Account] = {}
        self.series: dict[int, Series] = {}
        self.settled: set[int] = set()
        self.marks: dict[str, Mark] = {}
        funds = dict(insurance) if isinstance(insurance, dict) else {USD: int(insurance)}
        self.assets: set[str] = set()
        self.funds: dict[str, int] = {}  # insurance fund per asset, quanta (may go negative)
        for a in sorted({USD, *assets, *funds}):
            self._add_asset(a)
        self.funds.update(funds)
        self.liquidations: list[tuple[bytes, str, int]] = []  # (account, book's asset, insurance charged)
        self.margin_s = 0.0  # time spent computing margins (a validation stage of its own)
        # Software-only validation (the measurement baseline): prices and margins in NumPy/SciPy
        # instead of accel's kernels. Not the same bits, so such validators form their own network.
        self.software = False
        # Deferred margin (how blocks are validated): trades and withdrawals skip their own margin
        # check and note the books (account, asset) they touch; end_of_block() then checks them all
        # in one portfolio_margin call per (underlying, settlement asset) instead of per transaction.
        self.defer = False
        self.touched: set[tuple[bytes, str]] = set()

    @property
    def insurance(self) -> int:
        """The USD insurance fund, quanta (every asset's: self.funds)."""
        return self.funds[USD]

    def __deepcopy__(self, memo) -> "Clearing":
        """A snapshot for the next block: accounts, marks, funds and sets copied; the backend, the
        oracle keys, parameters, assets and listed series (never changed in place) shared."""
        new = copy.copy(self)
        new.accounts = {k: Account(a.nonce, dict(a.collateral), dict(a.positions)) for k, a in self.accounts.items()}
        new.series, new.settled, new.marks = dict(self.series), set(self.settled), dict(self.marks)
        new.funds, new.assets = dict(self.funds), set(self.assets)
        new.liquidations = list(self.liquidations)
        new.touched = set(self.touched)
        return new

    # ---- helpers ------------------------------------------------------------------------------
    def _add_asset(self, name: str) -> None:
        if not asset_name_ok(name):
            raise ValueError(f"asset {name!r}: 1 to 8 ASCII letters or digits")
        self.assets.add(name)
        self.funds.setdefault(name, 0)

    def _account(self, key: bytes) -> Account:
        acct = self.accounts.get(key)
        if acct is None:
            raise Rejected(f"account {key.hex()[:16]} is not registered")
        return acct

    def _nonce(self, key: bytes, nonce: int) -> None:
        want = self._account(key).nonce
        if nonce != want:
            raise Rejected(f"account {key.hex()[:16]}: nonce {nonce}, expected {want} (replayed or out of order)")

    def _asset(self, asset: str) -> None:
        if asset not in self.assets:
            raise Rejected(f"unknown asset {asset!r} (known: {', '.join(sorted(self.assets))})")

    def _mark_for(self, underlying: str) -> Mark:
        mark = self.marks.get(underlying)
        if mark is None:
            raise Rejected(f"{underlying} has no oracle mark yet")
        return mark

    def _years(self, s: Series, now: int) -> float:
        return max(s.expiry - now, 0) / YEAR_S

    def values(self, ids: list[int]) -> dict[int, float]:
        """Mark value per contract of each series in its settlement asset (one greeks batch per
        underlying): options at Black-76 (inverse: divided by the index), linear futures F, inverse
        futures -1/F per USD of notional."""
        out = {}
        by_underlying: dict[str, list[Series]] = {}
        for i in ids:
            by_underlying.setdefault(self.series[i].underlying, []).append(self.series[i])
        for und, group in by_underlying.items():
            mark = self._mark_for(und)
            options = [s for s in group if s.kind != FUTURE]
            for s in group:
                if s.kind == FUTURE:
                    out[s.id] = -1.0 / mark.index if s.inverse else mark.index
            if options:
                inverse = np.array([s.inverse for s in options])
                args = (mark.index, np.array([s.strike for s in options]),
                        np.array([self._years(s, mark.timestamp) for s in options]),
                        np.array([mark.vols.get(s.id, 1.0) for s in options]), np.array([s.kind == CALL for s in options]))
                if self.software:
                    price = risk_numpy.black76_price(*args) / np.where(inverse, mark.index, 1.0)
                else:
                    price = accel.greeks(*args[:3], 0.0, *args[3:], inverse=inverse, index=mark.index,
                                         backend=self.backend).price
                out.update({s.id: float(p) for s, p in zip(options, price)})
        return out

    def equity(self, keys: list[bytes]) -> list[dict[str, int]]:
        """Per account, its equity in every asset it holds collateral or positions in (quanta)."""
        ids = sorted({i for k in keys for i in self.accounts[k].positions})
        value = self.values(ids) if ids else {}
        out = []
        for k in keys:
            acct = self.accounts[k]
            eq = dict(acct.collateral)
            for i, size in sorted(acct.positions.items()):
                a = self.series[i].asset
                eq[a] = eq.get(a, 0) + to_quanta(size * value[i])
            out.append(eq)
        return out

    def margins(self, keys: list[bytes], assets=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per settlement asset (of the books in `assets`, default all): (initial, maintenance) in
        quanta of that asset per account; one portfolio_margin call per (underlying, settlement
        asset) group for all the accounts, summed over underlyings (each has its own parameters).
        Assets no account has positions in are absent (margin 0)."""
        started = time.perf_counter()
        try:
            return self._margins(keys, assets)
        finally:
            self.margin_s += time.perf_counter() - started

    def _margins(self, keys: list[bytes], assets) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        groups = sorted({(s.underlying, s.inverse) for k in keys for i in self.accounts[k].positions
                         for s in (self.series[i],) if assets is None or s.asset in assets})
        for und, inverse in groups:
            mark = self._mark_for(und)
            inst = sorted(i for i, s in self.series.items() if s.underlying == und and s.inverse == inverse)
            slot = {i: j for j, i in enumerate(inst)}
            offsets, rows, sizes = [0], [], []
            for k in keys:
                for i, size in sorted(self.accounts[k].positions.items()):
                    if i in slot:
                        rows.append(slot[i])
                        sizes.append(float(size))
                offsets.append(len(rows))
            series = [self.series[i] for i in inst]
            flag = INVERSE if inverse else 0
            marks = Marks(index=mark.index, rate=0.0, forward=np.full(len(inst), mark.index),
                          strike=np.array([s.strike if s.kind != FUTURE else 1.0 for s in series]),
                          expiry=np.array([self._years(s, mark.timestamp) for s in series]),
                          vol=np.array([mark.vols.get(s.id, 1.0) for s in series]),
                          kind=np.array([s.kind | flag for s in series], np.uint8))
            params = self.params.get(und, MarginParams(tick=QUANTUM))
            book = Portfolio(np.array(offsets), np.array(rows, np.int64), np.array(sizes))
            res = (risk_numpy.portfolio_margin(book, marks, params) if self.software
                   else accel.portfolio_margin(book, marks, params, backend=self.backend))
            asset = und if inverse else USD
            if asset in out:
                im, mm = out[asset]
                out[asset] = (im + res.initial, mm + res.maintenance)
            else:
                out[asset] = (res.initial.astype(np.int64), res.maintenance.astype(np.int64))
        return out

    def _below(self, books: list[tuple[bytes, str]], initial: bool = True) -> list[tuple[bytes, str, int]]:
        """The books (account, asset) whose equity is below initial (or maintenance) margin, with
        that equity, in the given order; one equity pass and one margin call per group."""
        keys = sorted({k for k, _ in books})
        at = {k: j for j, k in enumerate(keys)}
        equity = self.equity(keys)
        margin = self.margins(keys, {a for _, a in books})
        out = []
        for k, a in books:
            j = at[k]
            e = equity[j].get(a, 0)
            m = int(margin[a][0 if initial else 1][j]) if a in margin else 0
            if e < m:
                out.append((k, a, e))
        return out

    # ---- transactions -------------------------------------------------------------------------
    def register(self, key: bytes) -> None:
        if key in self.accounts:
            raise Rejected(f"account {key.hex()[:16]} is already registered")
        if not accel.ed25519_key_is_safe(key, backend=self.backend):
            raise Rejected(f"key {key.hex()[:16]} is unsafe (non-canonical or of small order): anyone could sign for it")
        self.accounts[key] = Account()

    def list_series(self, s: Series) -> None:
        """At genesis only (no transaction lists a series); an inverse series makes its underlying
        an asset."""
        if s.id in self.series:
            raise Rejected(f"series {s.id} is already listed")
        if s.kind not in (CALL, PUT, FUTURE) or (s.kind != FUTURE and not s.strike > 0):
            raise Rejected(f"series {s.id}: kind must be CALL, PUT or FUTURE, with a positive strike for options")
        if not asset_name_ok(s.underlying) or s.underlying == USD:
            raise Rejected(f"series {s.id}: underlying {s.underlying!r} must be 1 to 8 ASCII letters or digits, not USD")
        if s.inverse:
            self._add_asset(s.underlying)
        self.series[s.id] = s

    def deposit(self, key: bytes, nonce: int, asset: str, amount: int) -> None:
        if amount <= 0:
            raise Rejected("a deposit must be positive")
        self._asset(asset)
        self._nonce(key, nonce)
        acct = self.accounts[key]
        _credit(acct, asset, amount)
        acct.nonce += 1

    def withdraw(self, key: bytes, nonce: int, asset: str, amount: int) -> None:
        if amount <= 0:
            raise Rejected("a withdrawal must be positive")
        self._asset(asset)
        self._nonce(key, nonce)
        acct = self.accounts[key]
        cash = acct.collateral.get(asset, 0)
        if self.defer:
            if amount > cash:
                raise Rejected(f"withdrawal of {amount} {asset} exceeds the cash {max(cash, 0)}")
            _credit(acct, asset, -amount)
            acct.nonce += 1
            self.touched.add((key, asset))
            return
        (equity,), margin = self.equity([key]), self.margins([key], {asset})
        free = min(cash, equity.get(asset, 0) - (int(margin[asset][0][0]) if asset in margin else 0))
        if amount > free:
            raise Rejected(f"withdrawal of {amount} {asset} exceeds the free collateral {max(free, 0)}")
        _credit(acct, asset, -amount)
        acct.nonce += 1

    def trade(self, buyer: bytes, buyer_nonce: int, seller: bytes, seller_nonce: int, series: int, size: int,
              price: int) -> None:
        """buyer pays price (quanta of the settlement asset per contract) x size to seller; for an
        inverse future price is the USD futures price F (USD quanta) and the seller pays the buyer
        size / F coin (the contract's value, -1/F per USD). Both books must still cover their initial
        margin afterwards. (Both signatures are checked where the transaction is decoded.)"""
        if buyer == seller or size <= 0 or price < 0:
            raise Rejected("a trade needs two accounts, a positive size and a price >= 0")
        s = self.series.get(series)
        if s is None or series in self.settled:
            raise Rejected(f"series {series} is not open for trading")
        if s.inverse and s.kind == FUTURE:
            if price <= 0:
                raise Rejected(f"series {series} is an inverse future: its price is a positive USD futures price")
            flow = -((size * _PER_UNIT * _PER_UNIT + price // 2) // price)  # coin quanta, buyer to seller
        else:
            flow = price * size
        self._nonce(buyer, buyer_nonce)
        self._nonce(seller, seller_nonce)
        asset = s.asset
        saved = None if self.defer else {k: (dict(self.accounts[k].collateral), dict(self.accounts[k].positions))
                                         for k in (buyer, seller)}  # deferred: nothing can fail from here
        for key, sign in ((buyer, 1), (seller, -1)):
            acct = self.accounts[key]
            _credit(acct, asset, -sign * flow)
            held = acct.positions.get(series, 0) + sign * size
            if held:
                acct.positions[series] = held
            else:
                acct.positions.pop(series, None)
        if self.defer:
            self.touched.update(((buyer, asset), (seller, asset)))
            self.accounts[buyer].nonce += 1
            self.accounts[seller].nonce += 1
            return
        try:
            short = self._below([(buyer, asset), (seller, asset)])
            if short:
                raise Rejected(f"trade leaves account {short[0][0].hex()[:16]} below initial margin in {asset}")
        except ValueError:  # refused, or accel refusing the margin: the trade leaves no trace
            for k, (cash, positions) in saved.items():
                self.accounts[k].collateral, self.accounts[k].positions = cash, positions
            raise
        self.accounts[buyer].nonce += 1
        self.accounts[seller].nonce += 1

    def end_of_block(self) -> list[bytes]:
        """With deferred margin: the accounts one of whose books a trade or withdrawal of this block
        touched and that book ends it below initial margin (one margin call per group for all of
        them); clears the record."""
        books, self.touched = sorted(self.touched), set()
        if not books:
            return []
        return sorted({k for k, _, _ in self._below(books)})

    def mark(self, underlying: str, index: float, vols: dict, sequence: int, timestamp: int, signers: list[bytes],
             signatures_valid: bool = True) -> None:
        """An oracle mark; signers are the keys whose signatures over it verified (checked where the
        transaction is decoded, in the block's one signature batch)."""
        if not signatures_valid:
            raise Rejected("an oracle signature does not verify")
        known = {k for k in signers if k in self.oracles}
        if len(known) < self.quorum:
            raise Rejected(f"mark signed by {len(known)} oracle(s), {self.quorum} needed")
        if not (np.isfinite(index) and index > 0) or not all(np.isfinite(v) and v > 0 for v in vols.values()):
            raise Rejected("a mark needs a positive index and positive vols")
        last = self.marks.get(underlying)
        if last is not None and (sequence <= last.sequence or timestamp <= last.timestamp):
            raise Rejected(f"{underlying} mark {sequence} at {timestamp} is stale or out of order "
                           f"(last: {last.sequence} at {last.timestamp})")
        missing = [i for i, s in self.series.items() if s.underlying == underlying and s.kind != FUTURE
                   and i not in vols and i not in self.settled and s.expiry > timestamp]  # expired: intrinsic
        if missing:
            raise Rejected(f"{underlying} mark lacks the vol of series {missing[0]}")
        previous = self.marks.get(underlying)
        self.marks[underlying] = Mark(index, dict(vols), sequence, timestamp)
        try:
            self._liquidate(underlying)  # computes every margin before it changes an account
        except ValueError:  # accel refusing an extreme mark: the mark leaves no trace
            if previous is None:
                del self.marks[underlying]
            else:
                self.marks[underlying] = previous
            raise

    def _liquidate(self, underlying: str) -> None:
        """Every book holding a series of `underlying` checked against maintenance margin; a book
        below it is closed at the mark, its loss beyond collateral charged to its asset's fund."""
        books = sorted({(k, self.series[i].asset) for k, a in self.accounts.items() for i in a.positions
                        if self.series[i].underlying == underlying})
        if not books:
            return
        for key, asset, e in self._below(books, initial=False):
            acct = self.accounts[key]
            acct.positions = {i: n for i, n in acct.positions.items() if self.series[i].asset != asset}
            acct.collateral.pop(asset, None)
            charged = 0
            if e < 0:  # every position of the book closed at its mark value
                charged = -e
                self.funds[asset] -= charged
            else:
                _credit(acct, asset, e)
            self.liquidations.append((key, asset, charged))

    def settle(self, key: bytes, nonce: int, series: int) -> None:
        """Any registered account may trigger a series' settlement once it has expired: intrinsic
        value per contract, in its settlement asset (inverse: USD intrinsic / index in coin, an
        inverse future -1/index per USD of notional)."""
        s = self.series.get(series)
        if s is None or series in self.settled:
            raise Rejected(f"series {series} is not open")
        self._nonce(key, nonce)
        mark = self._mark_for(s.underlying)
        if mark.timestamp < s.expiry:
            raise Rejected(f"series {series} expires at {s.expiry}; the last mark is at {mark.timestamp}")
        if s.kind == FUTURE:
            value = -1.0 / mark.index if s.inverse else mark.index
        else:
            value = max(mark.index - s.strike, 0.0) if s.kind == CALL else max(s.strike - mark.index, 0.0)
            if s.inverse:
                value /= mark.index
        for holder in sorted(self.accounts):
            acct = self.accounts[holder]
            size = acct.positions.pop(series, 0)
            if size:
                _credit(acct, s.asset, to_quanta(size * value))
        self.settled.add(series)
        self.accounts[key].nonce += 1

    def leaves(self) -> list[bytes]:
        """What the state root commits to: the accounts sorted by key (key 32 | nonce u64 | assets
        u8, then (asset 8 zero-padded | quanta i128) sorted by asset | (series u32 | size i64)
        sorted by series), then one leaf per asset's insurance fund, sorted by asset
        ("insurance" | asset 8 | quanta i128)."""
        def amounts(d: dict) -> bytes:
            return b"".join(a.encode("ascii").ljust(8, b"\0") + q.to_bytes(16, "big", signed=True)
                            for a, q in sorted(d.items()))
        leaves = [k + a.nonce.to_bytes(8, "big") + len(a.collateral).to_bytes(1, "big") + amounts(a.collateral)
                  + b"".join(i.to_bytes(4, "big") + s.to_bytes(8, "big", signed=True) for i, s in sorted(a.positions.items()))
                  for k, a in sorted(self.accounts.items())]
        return leaves + [b"insurance" + amounts({a: q}) for a, q in sorted(self.funds.items())]

    def root(self) -> bytes:
        return accel.merkle_root(self.leaves(), backend=self.backend)
