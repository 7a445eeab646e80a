"""The options clearing state machine (issue 9, first part): accounts, collateral, a registry of
option series and futures, trades, oracle marks, liquidation and settlement, with every margin
computed by accel.portfolio_margin. Deterministic: integer quanta for money, prices from accel's
bit-identical kernels turned into quanta by one rounding rule, everything else integer.

Transactions on the wire: clearing_tx.py; behind the consensus core: clearing_app.py.

Money: collateral, cash flows and margins are integer quanta of the settlement currency (USD),
QUANTUM = 1e-8, the tick margins are computed in. A position is valued at its mark (an option's
model price from the oracle's index and vol, a future's forward), so equity = collateral + the
marked value of the positions; buying pays price x size from buyer to seller at the trade.

Rules (each raises Rejected with the reason, leaving the state unchanged; so does a ValueError from
accel refusing a margin, so a proposer can skip a refused transaction without rebuilding):
  register   the key must pass accel.ed25519_key_is_safe (canonical, not small order)
  nonces     every signer's nonce must be its next one
  withdraw   at most the free collateral: min(cash, equity - initial margin)
  trade      both counterparties sign; afterwards each one's equity covers its initial margin
             (in a block: at the block's end, every touched account checked in one margin call)
  mark       signed by at least `quorum` distinct registered oracle keys; sequence and timestamp
             must both increase (stale or out-of-order marks are refused)
  liquidate  after a mark, every account on that underlying whose equity is below maintenance
             margin has all its positions closed at the mark; a loss beyond its collateral is
             charged to the insurance fund
  settle     once a mark at or after expiry exists, any account may settle the series at its
             intrinsic value
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np

import accel
from accel import risk_numpy
from accel.risk import CALL, FUTURE, PUT, MarginParams, Marks, Portfolio

QUANTUM = 1e-8
YEAR_S = 365 * 24 * 3600


class Rejected(ValueError):
    """A transaction the state machine refuses; the message says why."""


def to_quanta(amount: float) -> int:
    """USD as integer quanta: round half to even of amount / QUANTUM (bit-identical inputs give
    identical quanta on every validator)."""
    if not np.isfinite(amount):
        raise Rejected(f"amount {amount!r} is not finite")
    return int(round(amount / QUANTUM))


def _black76_numpy(forward: float, strike, years, vol, call) -> np.ndarray:
    """Black-76 prices at zero rate in NumPy/SciPy (software-only validation)."""
    from scipy.special import ndtr
    sd = vol * np.sqrt(years)
    live = sd > 0
    d1 = np.where(live, np.log(forward / strike) / np.where(live, sd, 1.0) + sd / 2, 0.0)
    value = np.where(live, forward * ndtr(d1) - strike * ndtr(d1 - sd), np.maximum(forward - strike, 0.0))
    return np.where(call, value, value - forward + strike)


@dataclass(frozen=True)
class Series:
    id: int
    underlying: str
    kind: int        # CALL, PUT or FUTURE
    strike: float    # USD; 0 for futures
    expiry: int      # unix seconds


@dataclass
class Account:
    nonce: int = 0
    collateral: int = 0                                  # quanta
    positions: dict = field(default_factory=dict)        # series id -> contracts (netted, != 0)


@dataclass
class Mark:
    index: float
    vols: dict       # series id -> implied vol
    sequence: int
    timestamp: int


class Clearing:
    def __init__(self, oracle_keys: list[bytes], quorum: int, params: dict[str, MarginParams] | None = None,
                 backend=None, insurance: int = 0):
        if not 1 <= quorum <= len(oracle_keys):
            raise ValueError(f"quorum {quorum} outside 1..{len(oracle_keys)} oracle keys")
        self.oracles, self.quorum = list(oracle_keys), quorum
        self.params = params or {}
        self.backend = backend
        self.accounts: dict[bytes, Account] = {}
        self.series: dict[int, Series] = {}
        self.settled: set[int] = set()
        self.marks: dict[str, Mark] = {}
        self.insurance = insurance
        self.liquidations: list[tuple[bytes, int]] = []  # (account, insurance charged), in order
        self.margin_s = 0.0  # time spent computing margins (a validation stage of its own)
        # Software-only validation (the measurement baseline): prices and margins in NumPy/SciPy
        # instead of accel's kernels. Not the same bits, so such validators form their own network.
        self.software = False
        # Deferred margin (how blocks are validated): trades and withdrawals skip their own margin
        # check and note the accounts they touch; end_of_block() then checks them all in one
        # portfolio_margin call per underlying instead of one call per transaction.
        self.defer = False
        self.touched: set[bytes] = set()

    def __deepcopy__(self, memo) -> "Clearing":
        """A snapshot for the next block: accounts, marks and sets copied; the backend, the oracle
        keys, parameters and listed series (never changed in place) shared."""
        new = copy.copy(self)
        new.accounts = {k: Account(a.nonce, a.collateral, dict(a.positions)) for k, a in self.accounts.items()}
        new.series, new.settled, new.marks = dict(self.series), set(self.settled), dict(self.marks)
        new.liquidations = list(self.liquidations)
        new.touched = set(self.touched)
        return new

    # ---- helpers ------------------------------------------------------------------------------
    def _account(self, key: bytes) -> Account:
        acct = self.accounts.get(key)
        if acct is None:
            raise Rejected(f"account {key.hex()[:16]} is not registered")
        return acct

    def _nonce(self, key: bytes, nonce: int) -> None:
        want = self._account(key).nonce
        if nonce != want:
            raise Rejected(f"account {key.hex()[:16]}: nonce {nonce}, expected {want} (replayed or out of order)")

    def _mark_for(self, underlying: str) -> Mark:
        mark = self.marks.get(underlying)
        if mark is None:
            raise Rejected(f"{underlying} has no oracle mark yet")
        return mark

    def _years(self, s: Series, now: int) -> float:
        return max(s.expiry - now, 0) / YEAR_S

    def values(self, ids: list[int]) -> dict[int, float]:
        """Mark value per contract of each series, USD (one greeks batch per underlying)."""
        out = {}
        by_underlying: dict[str, list[Series]] = {}
        for i in ids:
            by_underlying.setdefault(self.series[i].underlying, []).append(self.series[i])
        for und, group in by_underlying.items():
            mark = self._mark_for(und)
            options = [s for s in group if s.kind != FUTURE]
            for s in group:
                if s.kind == FUTURE:
                    out[s.id] = mark.index
            if options:
                args = (mark.index, np.array([s.strike for s in options]),
                        np.array([self._years(s, mark.timestamp) for s in options]),
                        np.array([mark.vols.get(s.id, 1.0) for s in options]), np.array([s.kind == CALL for s in options]))
                price = _black76_numpy(*args) if self.software else accel.greeks(
                    *args[:3], 0.0, *args[3:], backend=self.backend).price
                out.update({s.id: float(p) for s, p in zip(options, price)})
        return out

    def equity(self, keys: list[bytes]) -> list[int]:
        ids = sorted({i for k in keys for i in self.accounts[k].positions})
        value = self.values(ids) if ids else {}
        return [self.accounts[k].collateral + sum(to_quanta(size * value[i]) for i, size in
                                                  sorted(self.accounts[k].positions.items())) for k in keys]

    def margins(self, keys: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(initial, maintenance) in quanta per account: one portfolio_margin call per underlying,
        summed (each underlying has its own parameters)."""
        started = time.perf_counter()
        try:
            return self._margins(keys)
        finally:
            self.margin_s += time.perf_counter() - started

    def _margins(self, keys: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        im, mm = np.zeros(len(keys), np.int64), np.zeros(len(keys), np.int64)
        unds = sorted({self.series[i].underlying for k in keys for i in self.accounts[k].positions})
        for und in unds:
            mark = self._mark_for(und)
            inst = sorted(i for i, s in self.series.items() if s.underlying == und)
            slot = {i: j for j, i in enumerate(inst)}
            offsets, rows, sizes = [0], [], []
            for k in keys:
                for i, size in sorted(self.accounts[k].positions.items()):
                    if i in slot:
                        rows.append(slot[i])
                        sizes.append(float(size))
                offsets.append(len(rows))
            series = [self.series[i] for i in inst]
            marks = Marks(index=mark.index, rate=0.0, forward=np.full(len(inst), mark.index),
                          strike=np.array([s.strike if s.kind != FUTURE else 1.0 for s in series]),
                          expiry=np.array([self._years(s, mark.timestamp) for s in series]),
                          vol=np.array([mark.vols.get(s.id, 1.0) for s in series]),
                          kind=np.array([s.kind for s in series], np.uint8))
            params = self.params.get(und, MarginParams(tick=QUANTUM))
            book = Portfolio(np.array(offsets), np.array(rows, np.int64), np.array(sizes))
            res = (risk_numpy.portfolio_margin(book, marks, params) if self.software
                   else accel.portfolio_margin(book, marks, params, backend=self.backend))
            im += res.initial
            mm += res.maintenance
        return im, mm

    # ---- transactions -------------------------------------------------------------------------
    def register(self, key: bytes) -> None:
        if key in self.accounts:
            raise Rejected(f"account {key.hex()[:16]} is already registered")
        if not accel.ed25519_key_is_safe(key, backend=self.backend):
            raise Rejected(f"key {key.hex()[:16]} is unsafe (non-canonical or of small order): anyone could sign for it")
        self.accounts[key] = Account()

    def list_series(self, s: Series) -> None:
        if s.id in self.series:
            raise Rejected(f"series {s.id} is already listed")
        if s.kind not in (CALL, PUT, FUTURE) or (s.kind != FUTURE and not s.strike > 0):
            raise Rejected(f"series {s.id}: kind must be CALL, PUT or FUTURE, with a positive strike for options")
        self.series[s.id] = s

    def deposit(self, key: bytes, nonce: int, amount: int) -> None:
        if amount <= 0:
            raise Rejected("a deposit must be positive")
        self._nonce(key, nonce)
        acct = self.accounts[key]
        acct.collateral += amount
        acct.nonce += 1

    def withdraw(self, key: bytes, nonce: int, amount: int) -> None:
        if amount <= 0:
            raise Rejected("a withdrawal must be positive")
        self._nonce(key, nonce)
        acct = self.accounts[key]
        if self.defer:
            if amount > acct.collateral:
                raise Rejected(f"withdrawal of {amount} exceeds the cash {acct.collateral}")
            acct.collateral -= amount
            acct.nonce += 1
            self.touched.add(key)
            return
        (equity,), (im, _) = self.equity([key]), self.margins([key])
        free = min(acct.collateral, equity - int(im[0]))
        if amount > free:
            raise Rejected(f"withdrawal of {amount} exceeds the free collateral {max(free, 0)}")
        acct.collateral -= amount
        acct.nonce += 1

    def trade(self, buyer: bytes, buyer_nonce: int, seller: bytes, seller_nonce: int, series: int, size: int,
              price: int) -> None:
        """buyer pays price (quanta per contract) x size to seller; both must still cover their
        initial margin afterwards. (Both signatures are checked where the transaction is decoded.)"""
        if buyer == seller or size <= 0 or price < 0:
            raise Rejected("a trade needs two accounts, a positive size and a price >= 0")
        if series not in self.series or series in self.settled:
            raise Rejected(f"series {series} is not open for trading")
        self._nonce(buyer, buyer_nonce)
        self._nonce(seller, seller_nonce)
        saved = {k: (self.accounts[k].collateral, dict(self.accounts[k].positions)) for k in (buyer, seller)}
        for key, sign in ((buyer, 1), (seller, -1)):
            acct = self.accounts[key]
            acct.collateral -= sign * price * size
            held = acct.positions.get(series, 0) + sign * size
            if held:
                acct.positions[series] = held
            else:
                acct.positions.pop(series, None)
        keys = [buyer, seller]
        if self.defer:
            self.touched.update(keys)
            self.accounts[buyer].nonce += 1
            self.accounts[seller].nonce += 1
            return
        try:
            equity, (im, _) = self.equity(keys), self.margins(keys)
            short = [k for k, e, m in zip(keys, equity, im) if e < m]
            if short:
                raise Rejected(f"trade leaves account {short[0].hex()[:16]} below initial margin")
        except ValueError:  # refused, or accel refusing the margin: the trade leaves no trace
            for k, (cash, positions) in saved.items():
                self.accounts[k].collateral, self.accounts[k].positions = cash, positions
            raise
        self.accounts[buyer].nonce += 1
        self.accounts[seller].nonce += 1

    def end_of_block(self) -> list[bytes]:
        """With deferred margin: the accounts a trade or withdrawal of this block touched that end
        it below initial margin (one margin call for all of them); clears the record."""
        keys, self.touched = sorted(self.touched), set()
        if not keys:
            return []
        equity, (im, _) = self.equity(keys), self.margins(keys)
        return [k for k, e, m in zip(keys, equity, im) if e < m]

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
        keys = sorted(k for k, a in self.accounts.items()
                      if any(self.series[i].underlying == underlying for i in a.positions))
        if not keys:
            return
        equity, (_, mm) = self.equity(keys), self.margins(keys)
        for key, e, m in zip(keys, equity, mm):
            if e >= m:
                continue
            acct = self.accounts[key]
            acct.collateral = e  # every position closed at its mark value
            acct.positions = {}
            charged = 0
            if acct.collateral < 0:
                charged = -acct.collateral
                self.insurance -= charged
                acct.collateral = 0
            self.liquidations.append((key, charged))

    def settle(self, key: bytes, nonce: int, series: int) -> None:
        """Any registered account may trigger a series' settlement once it has expired."""
        s = self.series.get(series)
        if s is None or series in self.settled:
            raise Rejected(f"series {series} is not open")
        self._nonce(key, nonce)
        mark = self._mark_for(s.underlying)
        if mark.timestamp < s.expiry:
            raise Rejected(f"series {series} expires at {s.expiry}; the last mark is at {mark.timestamp}")
        value = {CALL: max(mark.index - s.strike, 0.0), PUT: max(s.strike - mark.index, 0.0), FUTURE: mark.index}[s.kind]
        for holder in sorted(self.accounts):
            acct = self.accounts[holder]
            size = acct.positions.pop(series, 0)
            if size:
                acct.collateral += to_quanta(size * value)
        self.settled.add(series)
        self.accounts[key].nonce += 1

    def leaves(self) -> list[bytes]:
        """What the state root commits to: the accounts sorted by key, then the insurance fund."""
        leaves = [k + a.nonce.to_bytes(8, "big") + a.collateral.to_bytes(16, "big", signed=True)
                  + b"".join(i.to_bytes(4, "big") + s.to_bytes(8, "big", signed=True) for i, s in sorted(a.positions.items()))
                  for k, a in sorted(self.accounts.items())]
        return leaves + [b"insurance" + self.insurance.to_bytes(16, "big", signed=True)]

    def root(self) -> bytes:
        return accel.merkle_root(self.leaves(), backend=self.backend)
