"""The options clearing state machine: accounts identified by Ed25519 keys, collateral per asset
in integer quanta, option series and futures listed at genesis, trades, oracle marks, expiry
fixings, liquidation with auto-deleveraging, and circuit breakers. docs/CLEARING.md states the
rules and the invariants the tests check; transactions on the wire: clearing_tx.py; behind the
consensus core: clearing_app.py.

Money is integers only. A mark values every open series of its underlying once, in integer quanta
per contract (accel's bit-identical kernels, or accel.risk_numpy's same bits for software-only
validators); equity, settlement and liquidation multiply those integers by sizes, and margins are
summed as Python integers, so no sum can wrap. Every cash movement is a transfer between two
holders (accounts, the insurance fund) or a deposit or withdrawal, so per asset
    sum(account cash) + fund == deposits - withdrawals        (Clearing.supply)
holds after every transaction, and per series the positions sum to zero (Clearing.violations()
checks both, and the rest of the list in docs/CLEARING.md).

Each refusal raises Rejected with the reason and leaves the state unchanged."""
from __future__ import annotations

import functools
import heapq
import itertools
from fractions import Fraction
import struct
import time
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

import accel
from accel import risk_numpy
from accel.merkle import MerkleProof, hashlib_root, inner_hash, leaf_hash, root_of_leaf_hashes
from accel.risk import CALL, FUTURE, INVERSE, PUT, MarginParams, Marks, Portfolio

from ..verify import Verifier
from .ledger_state import Log, MerkleTree, SizeIndex, Versioned, VersionedSet

QUANTUM = 1e-8
YEAR_S = 365 * 24 * 3600
USD = "USD"
_PER_UNIT = 10**8  # quanta per unit of any asset (1 / QUANTUM)

# Limits (docs/CLEARING.md, "Limits"): every amount, size, price and mark is bounded where it
# enters, so position values stay far inside the state root's i128 and no price leaves the range
# where the kernels' doubles are exact enough to round to the same quanta everywhere.
MAX_AMOUNT = 10**18        # quanta per deposit or withdrawal (10^10 units)
MAX_SIZE = 10**9           # contracts (USD of notional for inverse futures) per trade
MAX_POSITION = 10**10      # |contracts| an account may hold in one series
MAX_PRICE = 10**17         # quanta per contract (10^9 units)
MAX_BALANCE = 10**30       # |quanta| of one asset an account may hold after its own transaction
INDEX_RANGE = (1e-4, 1e8)  # a mark's index, USD
VOL_RANGE = (1e-4, 100.0)  # a mark's implied vols
STRIKE_RANGE = (1e-4, 1e8)  # a listed option's strike, USD
MAX_EXPIRY = 2**40         # a listed series' expiry, unix seconds


DEFAULT_PARAMS = MarginParams(tick=QUANTUM)  # an underlying without parameters of its own
# Liquidation records a ledger holds (Clearing.liquidations, 223 bytes each, not in the state root):
# at least this many of the latest, at most about 4x (ledger_state.Log's keep)
LIQUIDATIONS_KEPT = 1 << 16
# The longest gap between two marks of an underlying the market expects, in seconds (a genesis
# parameter, Clearing(decay_horizon_s=)): a book's margin is also taken one horizon later, with
# what time took from its options meanwhile (_margins, _at_horizon, _decay). Without it, a
# straddle bought on borrowed cash at initial margin (0.902 of its premium, the worst scenario
# being "vol down" at the same time to expiry) lost all of its time value at the expiry mark with
# the index unchanged, and the insurance fund paid the writer the rest: 2,876 USD for 200
# straddles a mark interval of 600 s before expiry, the whole fund at 1,400 (review s16).
DECAY_HORIZON_S = 3600
# Changed accounts past a quarter of the accounts and this many: the balance indexes are rebuilt
# (one pass over the accounts) rather than brought up to date one account at a time
CASH_SLACK = 1024


class Rejected(ValueError):
    """A transaction the state machine refuses; the message says why."""


class TooEarly(Rejected):
    """A refusal that a transaction still pending may lift: account's key not registered yet
    (nonce None), or nonce past the account's next one, expected. The mempool keeps what it
    refuses while what it waits for is pending (ClearingApp._early), reading these fields."""

    def __init__(self, account: bytes, nonce: int | None = None, expected: int | None = None):
        super().__init__(account, nonce, expected)  # (worded when read: a proposal makes thousands)
        self.account, self.nonce, self.expected = account, nonce, expected

    def __str__(self) -> str:
        tail = " is not registered" if self.nonce is None else \
            f": nonce {self.nonce}, expected {self.expected} (replayed or out of order)"
        return f"account {self.account.hex()[:16]}{tail}"


class ShortBooks(Rejected):
    """Books that a transaction of this block left below initial margin, found at the block's end
    or by a mark that would liquidate them; `accounts` lists their owners."""

    def __init__(self, accounts: list[bytes], why: str):
        super().__init__(f"account {accounts[0].hex()[:16]} {why}")
        self.accounts = accounts


def unsafe_key(key: bytes) -> str:
    """Why a registration of key (not ed25519_key_is_safe) is refused, at admission and in a block."""
    return f"key {key.hex()[:16]} is unsafe (non-canonical or of small order): anyone could sign for it"


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


@dataclass(frozen=True)
class Breakers:
    """Circuit breakers (docs/CLEARING.md): an underlying whose index moves more than `band` (a
    fraction) from any of its marks of the last `window` blocks goes reduce-only until a later
    mark is within the band of every mark still in the window; a settlement asset whose
    insurance fund is below `fund_floor[asset]` quanta is reduce-only while it is."""
    band: float = 0.25
    window: int = 20
    fund_floor: dict = field(default_factory=dict)

    def __post_init__(self):
        if not (np.isfinite(self.band) and self.band > 0) or self.window < 1:
            raise ValueError(f"Breakers: band must be > 0 and window >= 1 block, not {self.band}, {self.window}")
        if any(not isinstance(q, int) or q < 0 for q in self.fund_floor.values()):
            raise ValueError("Breakers.fund_floor: quanta >= 0 per asset")


@dataclass
class Account:
    nonce: int = 0
    collateral: dict = field(default_factory=dict)       # asset -> quanta (no zero entries)
    positions: dict = field(default_factory=dict)        # series id -> contracts (netted, != 0)
    slot: int = 0                                        # its leaf in the state tree: registration order


@dataclass(frozen=True)
class Mark:
    index: float
    vols: dict       # series id -> implied vol
    sequence: int
    timestamp: int
    values: dict     # series id -> value of one contract in quanta of its asset, at this mark


class _Cascade(list):
    """(account, asset) books to liquidate at the same mark: those a mark's socialized losses took
    all the equity of (Clearing._socialize), and those its liquidations left below maintenance
    (Clearing._deleveraged_short); settled: the books (account, asset) that held a series the mark
    settled, with holders on its other side; done: the books the mark liquidated so far (never
    carriers: a mark liquidates a book once); closed: the books its liquidations closed positions
    against since the last look (_deleveraged_short); pools: the mark's _Pools."""
    settled: set = frozenset()
    done: set = frozenset()
    closed: set = frozenset()
    pools: "_Pools | None" = None


def _gain(pools: "_Pools", series: int, sign: int) -> int:
    """A contract's weight in a socialized loss for a holder of series on the side sign (1 long,
    -1 short) closed (or settled) at this mark: what the holder gained on it at this mark, sign x
    (its value at this mark - its value at the underlying's previous mark, pools.moves), at least
    1 quantum (a series of another underlying, unmoved by this mark: 1). Not
    its value (notional, before session 7's review): a bankrupt book long 100 ETH futures from a
    bystander at a BTC mark (the ETH value unchanged, nothing gained) handed the bystander 300,000 /
    370,000 of the loss its BTC futures' buyer (its owner's other account) gained, and that buyer
    kept it (tests/test_ledger_money_s7.py)."""
    return max(sign * pools.moves.get(series, 0), 1)


def _split(amount: int, weights: list[int]) -> list[int]:
    """amount (quanta >= 0) in proportion to weights (integers, sum > 0): amount x w // total each,
    the remainder (fewer quanta than parts) one quantum each to the first parts in order."""
    total = sum(weights)
    parts = [amount * w // total for w in weights]
    for j in range(amount - sum(parts)):
        parts[j] += 1
    return parts


class _Caps:
    """The takers' caps of one record or several (_reach's level) as one: a taker's cap is the sum
    of its caps there, and what it paid comes off them in the records' order. Indexed by taker
    once, so a level of N records costs their takers, not N x them."""

    def __init__(self, caps: list[dict]):
        self.where: dict[bytes, list[dict]] = {}
        for part in caps:
            for h in part:
                self.where.setdefault(h, []).append(part)

    def items(self):
        return ((h, sum(part[h] for part in parts)) for h, parts in self.where.items())

    def lower(self, taken: dict) -> None:
        for h, q in sorted(taken.items()):
            for part in self.where.get(h, ()):
                off = min(q, part[h])
                part[h] -= off
                q -= off


class _Pools:
    """One mark's shared sources of socialized losses (docs/CLEARING.md, "Liquidation and
    auto-deleveraging", steps 3-6): what the mark's liquidations owe a source is summed here and
    charged once per drain (Clearing._drain), not once per liquidation (L bankrupt writers of a
    series each charging its H holders: L x H).

    Sources: a settled series' side (series, sign) -> (asset, {holder: contracts}, factor: max(|fixing|,
    1)); a liquidation's record n -> (asset, explicit {account: weight},
    terms [(source, weight)]), never changed once made, referring only to sources made before it.
    amount: source -> quanta owed to it; profit: asset -> quanta owed to the largest positive
    balances in it, charged once at the mark's end (Clearing._charge_profit); owed: asset
    -> {index in Clearing.liquidations: quanta that liquidation put into sources or profit} (what
    the whole market cannot pay goes back to them); ("own", n): what a book liquidated by this mark
    (record n) could not pay of a drained source, owed to its own weights, then along its record's
    chain (_socialize, Clearing._reach); of:
    (account, asset) -> the record of its liquidation at this mark. ("open", asset): what would go
    to everyone in profit, owed first to the mark's gainers in the asset (Clearing._drain_open).
    moves: series of the marked underlying -> its value (or fixing) at this mark less its value
    at the previous one (_gain, the gainers);
    start: series -> {account: its position at the mark's start} for the positions the mark's
    liquidations changed (the others are as they were); gains: asset -> {whoever held, at the
    mark's start, a side of such a series that gained: contracts x the gain a contract, summed},
    built once per mark when first owed; paid: asset -> {account: what the mark's charges of steps
    3-6 took from it so far}; shares: asset -> {account: the sum of its proportional shares in
    them} (Clearing._capped: beyond those, an account pays at most its gain over the whole mark)."""
    __slots__ = ("sides", "records", "amount", "profit", "owed", "of", "takers", "moves", "start",
                 "gains", "paid", "shares")

    def __init__(self):
        # record -> the owners of earlier liquidations that took its book's positions -> what each
        # may still be charged for it: what it gained at the mark on what it closed against the book
        self.takers: dict[int, dict[bytes, int]] = {}
        self.of: dict[tuple[bytes, str], int] = {}  # (account, asset) -> the record of its liquidation
        self.sides: dict[tuple[int, int], tuple] = {}
        self.records: list[tuple] = []
        self.amount: dict = {}
        self.profit: dict[str, int] = {}
        self.owed: dict[str, dict[int, int]] = {}
        self.moves: dict[int, int] = {}
        self.start: dict[int, dict[bytes, int]] = {}
        self.gains: dict[str, dict[bytes, int]] = {}
        self.paid: dict[str, dict[bytes, int]] = {}
        self.shares: dict[str, dict[bytes, int]] = {}

    def count(self, asset: str, taken: dict) -> None:
        """What a charge took from each account, added to paid."""
        paid = self.paid.setdefault(asset, {})
        for h, q in sorted(taken.items()):
            if q:
                paid[h] = paid.get(h, 0) + q

    def put(self, source, amount: int) -> None:
        if amount:
            self.amount[source] = self.amount.get(source, 0) + amount

    def record(self, asset: str, explicit: dict, terms: list) -> int | None:
        """A new record's number (None for an empty one: nothing to charge with it)."""
        if not explicit and not terms:
            return None
        self.records.append((asset, explicit, terms))
        return len(self.records) - 1


class _Ranks:
    """One mark's order of auto-deleveraging (Clearing._liquidate): per (series, side), the holders
    of that side by (not being liquidated in this round, -|position|, key), as heaps instead of a
    sort of all holders per liquidated book (L liquidations of one series: L sorts of its H
    holders). Positions only shrink while a mark liquidates (a closed one's counterparties move
    toward zero, never past it; nothing opens one), so an entry whose position shrank is re-pushed
    when it reaches the top (its key only grows), and the heaps pop in the order the sort gave.
    A round's bankrupt books (all of them are liquidated in the round, and then hold nothing in
    the asset) come first from their own heap, and are dropped from the shared one."""

    def __init__(self, clearing: "Clearing"):
        self.c = clearing
        self.all: dict[tuple[int, int], _Queue] = {}  # (series, side) -> its holders by (-|position|, key)
        self.first: dict[frozenset, dict] = {}     # bankrupt set -> (series, side) -> heap

    def _top(self, queue: "_Queue", series: int, side: int, skip) -> bytes | None:
        """The first valid holder of queue (stale entries re-keyed, gone ones and skip dropped)."""
        accounts = self.c.accounts
        while (entry := queue.peek()) is not None:
            neg, h = entry
            p = accounts[h].positions.get(series)
            if p is None or (p > 0) != (side > 0) or h in skip:
                queue.pop()
            elif -abs(p) != neg:
                queue.replace((-abs(p), h))
            else:
                return h
        return None

    def next(self, series: int, side: int, bankrupt: frozenset, key: bytes) -> bytes | None:
        """The holder of series on side whom key's liquidation closes against next (None: none left)."""
        first = self.first.get(bankrupt)
        if first is None:  # every (series, side) of the round's books at once: their positions, not
            heaps: dict[tuple[int, int], list] = {}  # the round's books once per series
            accounts = self.c.accounts
            for b in bankrupt:
                for j, p in accounts[b].positions.items():
                    heaps.setdefault((j, 1 if p > 0 else -1), []).append((-abs(p), b))
            first = self.first[bankrupt] = {k: _Queue(iter(()), heap) for k, heap in heaps.items()}
        own = first.get((series, side))
        h = self._top(own, series, side, (key,)) if own is not None else None
        if h is not None:
            return h
        queue = self.all.get((series, side))
        if queue is None:  # the holders of the side in order, from the series' kept index (not a pass
            # over all of them: a series of another underlying was not margined by this mark)
            queue = self.all[(series, side)] = _Queue(self.c._size_index(series).ordered(side))
        return self._top(queue, series, side, bankrupt)


class _Queue:
    """A heap's peek, pop and replace (by a larger entry) over an ordered stream of unique entries
    and a heap of the re-keyed ones (given: a heap of entries, the stream empty): the same order
    as one heap of them all (_Ranks)."""
    __slots__ = ("it", "head", "heap")

    def __init__(self, it, heap: list | None = None):
        self.it, self.heap = it, heap if heap is not None else []
        heapq.heapify(self.heap)
        self.head = next(it, None)

    def _from_heap(self) -> bool:
        return bool(self.heap) and (self.head is None or self.heap[0] < self.head)

    def peek(self):
        return self.heap[0] if self._from_heap() else self.head

    def pop(self) -> None:
        if self._from_heap():
            heapq.heappop(self.heap)
        else:
            self.head = next(self.it, None)

    def replace(self, entry) -> None:
        self.pop()
        heapq.heappush(self.heap, entry)


class Liquidation(NamedTuple):
    account: bytes
    asset: str
    insurance: int    # quanta the fund paid for the book's loss beyond its collateral
    socialized: int   # quanta beyond the fund, charged to the deleveraged counterparties


_EXACT = 2**62  # integer columns whose values stay below this are int64: two of them add exactly


def _column(values) -> np.ndarray:
    """Integers as an int64 array where all are below _EXACT in magnitude, else as Python integers
    (an object array): either way + and < are exact."""
    out = np.array(values, dtype=object)
    if not len(out) or max(abs(int(out.max())), abs(int(out.min()))) < _EXACT:
        return out.astype(np.int64)
    return out


class _Sums(NamedTuple):
    sums: np.ndarray  # per account, quanta (_column)
    held: np.ndarray  # per account, whether it holds a position in the asset


def _sums_fit(owner: np.ndarray, sizes: np.ndarray, value: np.ndarray) -> bool:
    """Whether every account's sum of size x value (int64 rows of owner) stays below 2^62 in
    magnitude at every step, so int64 sums it exactly: its sum of |size x value| is bounded in
    float64 against 2^61 (a float sum of n terms errs by far less than the factor 2 between)."""
    if not len(owner):
        return True
    weight = np.abs(sizes).astype(np.float64) * np.abs(value).astype(np.float64)
    return float(np.bincount(owner, weights=weight).max()) < 2.0**61


def _owner_sums(n: int, owner: np.ndarray, sizes: np.ndarray, value: np.ndarray, dtype) -> np.ndarray:
    """Per account 0..n-1, the sum of size x value over its rows (grouped by owner: one sum per
    run of equal owners), in dtype (int64 where _sums_fit, else object: Python integers)."""
    sums = np.zeros(n, dtype)
    if len(owner):
        starts = np.flatnonzero(np.concatenate(([True], owner[1:] != owner[:-1])))
        sums[owner[starts]] = np.add.reduceat(sizes.astype(dtype) * value.astype(dtype), starts)
    return sums


def _credit(acct: Account, asset: str, amount: int) -> None:
    held = acct.collateral.get(asset, 0) + amount
    if held:
        acct.collateral[asset] = held
    else:
        acct.collateral.pop(asset, None)


def _at_horizon(now: np.ndarray, later: np.ndarray, taken: np.ndarray) -> np.ndarray:
    """Per account, the margin at the mark (now) or one decay horizon later plus what time took
    from the book meanwhile (later + taken: the scenario losses of the book at the later time to
    expiry, from its value then, plus the fall from its value now to that), whichever is larger;
    -1 where either kernel margin is an error code (< 0). Exact: int64 where it cannot overflow."""
    bad = (now < 0) | (later < 0)
    if taken.dtype != object and int(np.abs(later).max(initial=0)) + int(np.abs(taken).max(initial=0)) < _EXACT:
        out = np.maximum(now, later + taken)
    else:
        out = np.maximum(now.astype(object), later.astype(object) + taken.astype(object))
    return np.where(bad, -1, out)


def _exact_sum(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(per account, the sum of its margins over groups (a _column: 0 where bad), bad: where a part
    is a kernel error code (< 0: does not fit int64 ticks, not finite)); summed in int64 where that
    cannot overflow, else in Python integers."""
    bad = np.zeros(len(parts[0]), bool)
    for p in parts:
        bad |= p < 0
    clean = [np.where(bad, 0, p) for p in parts]
    if sum(int(p.max(initial=0)) for p in clean) < _EXACT:
        return sum(clean[1:], clean[0].copy()), bad
    return _column([sum(int(p[j]) for p in clean) for j in range(len(bad))]), bad


@functools.lru_cache(maxsize=1024)
def _name8(name: str) -> bytes:
    return name.encode("ascii").ljust(8, b"\0")


def _fixing_leaf(series: int, fixing: int) -> bytes:
    return b"fixing" + struct.pack(">I", series) + fixing.to_bytes(16, "big", signed=True)


def _mark_leaf(und: str, m: Mark) -> bytes:
    return (b"mark" + _name8(und) + struct.pack(">dQQH", m.index, m.sequence, m.timestamp, len(m.vols))
            + b"".join(struct.pack(">Id", i, v) for i, v in sorted(m.vols.items()))
            + struct.pack(">H", len(m.values))
            + b"".join(struct.pack(">I", i) + q.to_bytes(16, "big", signed=True) for i, q in sorted(m.values.items())))


def _amounts(d: dict) -> bytes:
    return b"".join(_name8(a) + q.to_bytes(16, "big", signed=True) for a, q in sorted(d.items()))


def _ranged(name: str, x: float, bounds: tuple[float, float]) -> None:
    if not (isinstance(x, (int, float)) and np.isfinite(x) and bounds[0] <= x <= bounds[1]):
        raise Rejected(f"{name} {x!r} outside {bounds[0]:g}..{bounds[1]:g}")


class Clearing:
    # Keys whose ed25519_key_is_safe verdict is already known to be True for this block (the app
    # checks all of a block's registration keys in one ed25519_keys_are_safe call, the same
    # verdict bit for bit): register skips its own kernel call for them. Only ever holds keys found
    # safe, so whatever holds it changes no verdict; a snapshot starts without it (nothing of one
    # block's set is carried into the next block's state).
    safe_keys: frozenset | set | dict = frozenset()
    # Step 6's last resort charges the positive balances in the asset this many at a time, largest
    # first, until the loss is paid: spread over all of them at once, a loss of L quanta touched
    # min(L, accounts) books at one mark.
    profit_payers = 256

    def __init__(self, oracle_keys: list[bytes], quorum: int, params: dict[str, MarginParams] | None = None,
                 backend=None, insurance: int | dict[str, int] = 0, assets=(USD,), breakers: Breakers | None = None,
                 decay_horizon_s: int = DECAY_HORIZON_S):
        """insurance: the funds per asset (an int: the USD fund). assets: those deposits may name
        (USD always; listing an inverse series adds its underlying). breakers: None, none.
        decay_horizon_s: see DECAY_HORIZON_S."""
        if not 1 <= quorum <= len(oracle_keys):
            raise ValueError(f"quorum {quorum} outside 1..{len(oracle_keys)} oracle keys")
        if type(decay_horizon_s) is not int or not 0 <= decay_horizon_s <= MAX_EXPIRY:
            raise ValueError(f"decay_horizon_s {decay_horizon_s!r}: whole seconds, 0..{MAX_EXPIRY}")
        self.decay_horizon_s = decay_horizon_s
        self.oracles, self.quorum = list(oracle_keys), quorum
        self.params = params or {}
        self.backend = backend
        self.breakers = breakers
        # Copy on write: a snapshot shares every Account object and holders set with its parent;
        # _mut() and _holders() give this version its own before it changes one.
        self.accounts = Versioned()  # key -> Account
        self._private: dict[bytes, Account] = {}
        self.series: dict[int, Series] = {}
        self.holders: dict[int, set[bytes]] = {}  # series id -> accounts holding it
        self._private_holders: set[int] = set()
        # series -> its positions (SizeIndex), kept from the first auto-deleveraging against it on,
        # wherever a position changes (_set_position, the columns' write): its holders in order
        self._sizes: dict[int, SizeIndex] = {}
        self._private_sizes: set[int] = set()
        # asset -> its positive balances (SizeIndex), kept from the first time step 6 charged
        # everyone in profit in it, right for every account but those changed since they were
        # last brought up to date: _cash_fresh (this block's, noted by _mut while there are
        # indexes) and _cash_changed (one frozen set per earlier block, shared by the versions;
        # _cash_count keys in all). _payers reads those again.
        self._cash: dict[str, SizeIndex] = {}
        self._cash_fresh: set[bytes] = set()
        self._cash_changed: tuple[frozenset, ...] = ()
        self._cash_count = 0
        self.tree = MerkleTree()  # over the account leaves, by slot
        self.dirty: set[bytes] = set()  # accounts changed since the tree last saw them
        self._leaves: dict[bytes, bytes] = {}  # leaves of dirty accounts already encoded (dropped by _mut)
        self.fixings: dict[int, int] = {}  # settled series -> its settlement value per contract, quanta
        self.marks: dict[str, Mark] = {}
        self.history: dict[str, list[tuple[int, float, float]]] = {}  # underlying -> (height, lowest, highest index) of recent blocks
        self.halted: dict[str, str] = {}  # underlying -> why it is reduce-only
        funds = dict(insurance) if isinstance(insurance, dict) else {USD: int(insurance)}
        self.assets: set[str] = set()
        self.funds: dict[str, int] = {}   # insurance fund per asset, quanta, never below 0
        self.supply: dict[str, int] = {}  # per asset: the funds at genesis + deposits - withdrawals
        for a in sorted({USD, *assets, *funds}):
            self._add_asset(a)
        for a, q in funds.items():
            if not isinstance(q, int) or q < 0:
                raise ValueError(f"insurance fund {a}: quanta >= 0, not {q!r}")
            self.funds[a] = self.supply[a] = q
        # the liquidations since genesis (or a restore), the latest LIQUIDATIONS_KEPT or more held,
        # shared by the versions; no rule reads one of an earlier mark's
        self.liquidations: Log = Log(keep=LIQUIDATIONS_KEPT)
        self.height = 0  # blocks begun (the circuit breakers' clock)
        self.margin_s = 0.0  # time spent computing margins (a validation stage of its own)
        # Software-only validation: prices and margins by accel.risk_numpy (the kernels' bits).
        self.software = False
        # Deferred margin (how blocks are validated): trades and withdrawals skip their own margin
        # check and note the books (account, asset) they touch; end_of_block() checks them all in
        # one portfolio_margin call per (underlying, settlement asset).
        self.defer = False
        self.touched: set[tuple[bytes, str]] = set()
        # the touched books not yet checked at a mark: each mark first checks them against initial
        # margin at the marks before it (_check_unmarked)
        self.unchecked: set[tuple[bytes, str]] = set()
        # Columnar execution (clearing_columns): while a block executes, the hot state of the
        # accounts it reaches lives in arrays; anything that reads accounts one by one writes them
        # back first (_flush).
        self._cols = None
        # caches the versions share (their keys name all they depend on, a Mark never changes):
        self._instrument_cache: dict = {}  # (underlying, inverse, mark, ...) -> a margin group's instruments
        self._decay_cache: dict = {}  # (underlying, id(mark)) -> (mark, _decay of its series)
        self._mark_hashes: dict = {}  # (underlying, id(mark)) -> (mark, leaf_hash of its leaf)
        self._fixing_hashes: dict = {}  # (series, fixing) -> leaf_hash of its leaf (a fixing never changes)
        self._listed_by: tuple = (None, {})  # (the series dict, underlying -> its series), see _listed

    @property
    def insurance(self) -> int:
        """The USD insurance fund, quanta (every asset's: self.funds)."""
        return self.funds[USD]

    def snapshot(self) -> "Clearing":
        """A copy for the next block, in time proportional to what changed lately, not to the
        ledger: accounts, holders and the state tree copied on write; marks, funds and the small
        indexes copied; the backend, oracle keys, parameters and listed series shared."""
        self._flush()
        new = object.__new__(Clearing)
        new.__dict__.update(self.__dict__)
        new.accounts, new._private, new._private_holders = self.accounts.copy(), {}, set()
        new.tree, new.dirty, new._leaves = self.tree.copy(), set(self.dirty), dict(self._leaves)
        new._cash_fresh = set(self._cash_fresh)
        new.holders = dict(self.holders)
        new._sizes, new._private_sizes = dict(self._sizes), set()
        new.fixings, new.marks = dict(self.fixings), dict(self.marks)  # (series: list_series replaces it)
        new.history = {u: list(h) for u, h in self.history.items()}
        new.halted, new.funds, new.supply = dict(self.halted), dict(self.funds), dict(self.supply)
        new.assets, new.liquidations, new.touched = set(self.assets), self.liquidations.copy(), set(self.touched)
        new.unchecked = set(self.unchecked)
        new.__dict__.pop("safe_keys", None)
        return new

    # ---- helpers ------------------------------------------------------------------------------
    def columns(self):
        """The block's columnar working set (clearing_columns.Columns), made on first use."""
        if self._cols is None:
            from .clearing_columns import Columns
            self._cols = Columns(self)
        return self._cols

    def _flush(self) -> None:
        """The columnar working set written back into the accounts, and dropped."""
        if self._cols is not None:
            self._cols.write_back(self)
            self._cols = None

    def next_nonce(self, key: bytes) -> int | None:
        """key's next nonce (None: not registered), read through the block's columns."""
        cols = self._cols
        row = cols.row.get(key) if cols is not None else None
        if row is not None:
            return int(cols.nonce[row])
        acct = self.accounts.get(key)
        return None if acct is None else acct.nonce

    def _add_asset(self, name: str) -> None:
        if not asset_name_ok(name):
            raise ValueError(f"asset {name!r}: 1 to 8 ASCII letters or digits")
        self.assets.add(name)
        self.funds.setdefault(name, 0)
        self.supply.setdefault(name, 0)

    def _account(self, key: bytes) -> Account:
        acct = self.accounts.get(key)
        if acct is None:
            raise TooEarly(key)
        return acct

    def _nonce(self, key: bytes, nonce: int) -> None:
        exc = self.nonce_refusal(key, nonce)
        if exc is not None:
            raise exc

    def nonce_refusal(self, key: bytes, nonce: int) -> Rejected | None:
        """Why a transaction of key's nonce is refused for that nonce now (None if it is not),
        read through the block's columns (not written back for it)."""
        want = self.next_nonce(key)
        if want is None:
            return TooEarly(key)
        if nonce > want:
            return TooEarly(key, nonce, want)
        if nonce < want:
            return Rejected(f"account {key.hex()[:16]}: nonce {nonce}, expected {want} (replayed or out of order)")
        return None

    @property
    def has_columns(self) -> bool:
        """Whether the block's columnar working set is live (a columnar run applied since the
        last write-back)."""
        return self._cols is not None

    def move_refusal(self, asset: str, amount: int, what: str) -> str:
        """Why a deposit, withdrawal or top-up (what) is refused whatever its account holds ("" if
        it is not). Assets are fixed at genesis, so the mempool refuses it on admission
        (clearing_tx.form_refusal) instead of answering "accepted" for the next proposal to refuse."""
        if not 0 < amount <= MAX_AMOUNT:
            return f"a {what} must be 1..{MAX_AMOUNT} quanta"
        if asset not in self.assets:
            return f"unknown asset {asset!r} (known: {', '.join(sorted(self.assets))})"
        return ""

    def trade_refusal(self, buyer: bytes, seller: bytes, series: int, size: int, price: int) -> str:
        """Why a trade is refused whatever its accounts hold and whatever the marks ("" if it is
        not): series are fixed at genesis, and a fixed one never trades again."""
        if buyer == seller or not 0 < size <= MAX_SIZE or not 0 <= price <= MAX_PRICE:
            return f"a trade needs two accounts, a size of 1..{MAX_SIZE} and a price of 0..{MAX_PRICE}"
        s = self.series.get(series)
        if s is None or series in self.fixings:
            return f"series {series} is not open for trading"
        if s.inverse and s.kind == FUTURE and price <= 0:
            return f"series {series} is an inverse future: its price is a positive USD futures price"
        return ""

    def trade_stop(self, buyer: bytes, seller: bytes, series: int, size: int, price: int) -> str:
        """Why a trade is refused now before its nonces are read ("" if it is not): trade_refusal,
        then its underlying's mark. What Clearing.trade checks first, and what the proposer's
        _nonce_gaps checks before it refuses a trade for its nonces without applying it."""
        why = self.trade_refusal(buyer, seller, series, size, price)
        if why or self.series[series].underlying in self.marks:
            return why
        return f"{self.series[series].underlying} has no oracle mark yet"

    def _mut(self, key: bytes) -> Account:
        """The account, this version's own copy (to change)."""
        self._leaves.pop(key, None)
        acct = self._private.get(key)
        if acct is None:
            a = self.accounts[key]
            acct = self._private[key] = self.accounts[key] = Account(a.nonce, dict(a.collateral), dict(a.positions), a.slot)
        self.dirty.add(key)
        if self._cash:
            self._cash_fresh.add(key)
        return acct

    def _replace_many(self, accounts: dict[bytes, Account], leaves: dict[bytes, bytes]) -> None:
        """Registered accounts given new contents, as this version's own, with their leaves (the
        columns' write-back)."""
        self._private.update(accounts)
        self.accounts.replace_existing(accounts)
        self.dirty.update(accounts)
        if self._cash:
            self._cash_fresh.update(accounts)
        self._leaves.update(leaves)

    def _holders(self, series: int) -> VersionedSet:
        """The series' holders, this version's own set (to change): a copy of the shared one in
        time proportional to its recent changes, not to its holders (ledger_state.VersionedSet;
        a plain set, as a benchmark builds it, is taken over once; a restore builds VersionedSets)."""
        if series not in self._private_holders:
            held = self.holders.get(series)
            self.holders[series] = held.copy() if isinstance(held, VersionedSet) else VersionedSet(held or ())
            self._private_holders.add(series)
        return self.holders[series]

    def _size_index(self, series: int) -> SizeIndex:
        """The series' positions index, this version's own (to change); built from its holders the
        first time (once per series, shared by the versions after)."""
        idx = self._sizes.get(series)
        if idx is None:
            accounts = self.accounts
            idx = SizeIndex({h: accounts[h].positions.get(series, 0) for h in self.holders.get(series, ())})
        elif series in self._private_sizes:
            return idx
        else:
            idx = idx.copy()
        self._sizes[series] = idx
        self._private_sizes.add(series)
        return idx

    def _set_position(self, key: bytes, acct: Account, series: int, held: int) -> None:
        """acct: key's own copy (_mut)."""
        if held:
            acct.positions[series] = held
            self._holders(series).add(key)
        else:
            acct.positions.pop(series, None)
            self._holders(series).discard(key)
        if series in self._sizes:
            self._size_index(series).set(key, held)

    def _value(self, series: int, override: dict[str, Mark] | None = None) -> int:
        und = self.series[series].underlying
        mark = (override or {}).get(und) or self.marks[und]
        return mark.values[series]

    # ---- valuation ----------------------------------------------------------------------------
    def _series_values(self, underlying: str, index: float, vols: dict, timestamp: int) -> dict[int, int]:
        """Value of one contract of every open series of `underlying` at a mark, in quanta of its
        settlement asset: options by Black-76 at rate 0 on F = index (inverse: divided by the
        index), linear futures F, inverse futures -1/F per USD of notional; a series expired by
        then at its intrinsic value (its fixing). Rejected if a value is out of reach."""
        live = [s for s in self.series.values() if s.underlying == underlying and s.id not in self.fixings]
        out = {}
        options = [s for s in live if s.kind != FUTURE and s.expiry > timestamp]
        for s in live:
            if s.kind == FUTURE:
                out[s.id] = to_quanta(-1.0 / index if s.inverse else index)
            elif s.expiry <= timestamp:
                intrinsic = max(index - s.strike, 0.0) if s.kind == CALL else max(s.strike - index, 0.0)
                out[s.id] = to_quanta(intrinsic / index if s.inverse else intrinsic)
        if options:
            args = (index, np.array([s.strike for s in options]),
                    np.array([(s.expiry - timestamp) / YEAR_S for s in options]), 0.0,
                    np.array([vols[s.id] for s in options]), np.array([s.kind == CALL for s in options]))
            inverse = np.array([s.inverse for s in options])
            try:
                if self.software:
                    price = risk_numpy.greeks_price(*args, inverse=inverse, index=index)
                else:
                    price = accel.greeks(*args, inverse=inverse, index=index, backend=self.backend).price
            except ValueError as exc:
                raise Rejected(f"{underlying} mark cannot be priced: {exc}") from None
            out.update({s.id: to_quanta(float(p)) for s, p in zip(options, price)})
        return out

    def values(self, ids: list[int]) -> dict[int, int]:
        """Value of one contract of each open series at its underlying's last mark, in quanta."""
        return {i: self._value(i) for i in ids}

    def equity(self, keys: list[bytes], override: dict[str, Mark] | None = None) -> list[dict[str, int]]:
        """Per account, its equity in every asset it holds collateral or positions in (quanta):
        cash plus size times the value of one contract, exactly."""
        self._flush()
        rows = self._rows(keys)
        held = self._position_values(len(keys), rows, override or {})
        out = []
        for j, k in enumerate(keys):
            eq = dict(self.accounts[k].collateral)
            for a, per in held.items():
                if per.held[j]:
                    eq[a] = eq.get(a, 0) + int(per.sums[j])
            out.append(eq)
        return out

    def margins(self, keys: list[bytes], assets=None, override: dict[str, Mark] | None = None,
                skip: frozenset = frozenset()) -> dict[str, tuple[list, list]]:
        """Per settlement asset (of the books in `assets`, default all): (initial, maintenance) in
        quanta of that asset per account, as Python integers, or None where a margin does not fit
        the kernel's int64 ticks (a book too large to margin counts as below any margin); one
        portfolio_margin call per (underlying, settlement asset) group, summed over underlyings.
        override: marks to use instead of the state's; skip: series to leave out."""
        self._flush()
        started = time.perf_counter()
        try:
            groups = self._margins(len(keys), self._rows(keys, skip), assets, override or {}, skip)
        finally:
            self.margin_s += time.perf_counter() - started
        return {a: tuple([None if b else int(v) for v, b in zip(total, bad)] for total, bad in pair)
                for a, pair in groups.items()}

    def _rows(self, keys: list[bytes], skip: frozenset = frozenset()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The accounts' positions as arrays (owner: index into keys, series id, size), each
        account's rows together and in series order (the kernel sums a book's rows in order, so
        the order is part of the result), without the series in skip."""
        held = [self.accounts[k].positions for k in keys]
        counts = np.fromiter(map(len, held), np.int64, len(held))
        n = int(counts.sum())
        owner = np.repeat(np.arange(len(keys), dtype=np.int64), counts)
        ids = np.fromiter(itertools.chain.from_iterable(held), np.int64, n)
        sizes = np.fromiter(itertools.chain.from_iterable(p.values() for p in held), np.int64, n)
        keep = np.lexsort((ids, owner))
        if skip:
            keep = keep[~np.isin(ids[keep], np.fromiter(skip, np.int64, len(skip)))]
        return owner[keep], ids[keep], sizes[keep]

    def _position_values(self, n: int, rows, override: dict) -> dict[str, "_Sums"]:
        """Per settlement asset, per account, the sum of size x value of one contract over its
        positions, exactly: in int64 where no sum can overflow it, else in Python integers."""
        owner, ids, sizes = rows
        uniq, which = np.unique(ids, return_inverse=True)
        values = [self._value(int(i), override) for i in uniq]
        asset_of = [self.series[int(i)].asset for i in uniq]
        value = np.array(values, np.int64 if max(map(abs, values), default=0) < _EXACT else object)[which]
        exact64 = value.dtype == np.int64 and _sums_fit(owner, sizes, value)
        if not exact64:
            value = value.astype(object)
        out = {}
        for a in sorted(set(asset_of)):
            mine = np.array([x == a for x in asset_of])[which]
            o = owner[mine]
            sums = _owner_sums(n, o, sizes[mine], value[mine], np.int64 if exact64 else object)
            held = np.zeros(n, bool)
            held[o] = True
            out[a] = _Sums(sums if exact64 else _column(sums), held)
        return out

    def _margins(self, n, rows, assets, override, skip) -> dict[str, tuple[tuple, tuple]]:
        """Per settlement asset: (initial, maintenance), each (_column, bad) (_exact_sum)."""
        owner, ids, sizes = rows
        uniq, which = np.unique(ids, return_inverse=True)
        group_of = [(self.series[int(i)].underlying, self.series[int(i)].inverse) for i in uniq]
        totals: dict[str, list] = {}
        for und, inverse in sorted(set(group_of)):
            asset = und if inverse else USD
            if assets is not None and asset not in assets:
                continue
            mine = np.array([g == (und, inverse) for g in group_of])[which]
            mark = override.get(und) or self.marks[und]
            inst, marks, later_marks = self._instruments(und, inverse, mark, skip)
            offsets = np.zeros(n + 1, np.int64)
            np.cumsum(np.bincount(owner[mine], minlength=n), out=offsets[1:])
            book = Portfolio(offsets, np.searchsorted(inst, ids[mine]),
                             sizes[mine].astype(np.float64))
            params = self.params.get(und) or DEFAULT_PARAMS
            res = self._kernel_margin(book, marks, params)
            # one quantum a contract for the rounding of its value to whole quanta (_series_values),
            # which the kernel's margin does not see: an inverse future's value per USD is 1.5
            # quanta at an index of 66.7M USD, so a 0.013% dip moved it by 1 quantum, 67%, and a
            # pair at initial margin of 10^9 USD had the fund pay 0.82 BTC. Added in place where no
            # margin reaches 2^62 (the quanta added stay below 2^40: int64 cannot overflow), else
            # summed exactly as a part of its own (a mark's hundreds of calls: no part more)
            rounding = np.bincount(owner[mine], weights=np.abs(sizes[mine]).astype(np.float64),
                                   minlength=n).astype(np.int64)
            margins = (res.initial, res.maintenance)
            if self.decay_horizon_s:  # the book one horizon later, what time took from it added
                later = self._kernel_margin(book, later_marks, params)
                decay = self._decay(und, mark)
                lost = np.array([decay.get(int(i), 0) for i in inst], np.int64)[np.searchsorted(inst, ids[mine])]
                taken = self._signed_sums(n, owner[mine], sizes[mine], lost)
                margins = tuple(_at_horizon(m, l, taken) for m, l in zip(margins, (later.initial, later.maintenance)))
            if max(int(m.max(initial=0)) for m in margins) < _EXACT:
                totals.setdefault(asset, []).append(tuple(np.where(m < 0, m, m + rounding) for m in margins))
            else:
                totals.setdefault(asset, []).extend((margins, (rounding, rounding)))
        return {asset: tuple(_exact_sum([p[which] for p in parts]) for which in (0, 1))
                for asset, parts in totals.items()}

    def _decay(self, und: str, mark: Mark) -> dict[int, int]:
        """Per option series of und, the quanta one contract's value at `mark` loses to time over
        decay_horizon_s at the same index and vols (its whole time value where it expires within
        the horizon; none listed where it would gain: at rate 0 an option's value never grows as
        its expiry nears); kept per mark (a Mark never changes)."""
        key = (und, id(mark))
        hit = self._decay_cache.get(key)
        if hit is not None and hit[0] is mark:
            return hit[1]
        later = self._series_values(und, mark.index, mark.vols, mark.timestamp + self.decay_horizon_s) \
            if self.decay_horizon_s else {}
        out = {i: mark.values[i] - v for i, v in later.items()
               if self.series[i].kind != FUTURE and i in mark.values and mark.values[i] > v}
        if len(self._decay_cache) > 64 + 4 * len(self.marks):
            self._decay_cache.clear()
        self._decay_cache[key] = (mark, out)
        return out

    def _kernel_margin(self, book: Portfolio, marks: Marks, params: MarginParams):
        return (risk_numpy.portfolio_margin(book, marks, params, checked=False) if self.software
                else accel.portfolio_margin(book, marks, params, backend=self.backend, checked=False))

    @staticmethod
    def _signed_sums(n: int, owner: np.ndarray, sizes: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Per account (rows grouped by owner), the sum of size x value over its rows, exactly (int64
        where no sum can overflow it, else Python integers)."""
        return _owner_sums(n, owner, sizes, value, np.int64 if _sums_fit(owner, sizes, value) else object)

    def _instruments(self, und: str, inverse: bool, mark: Mark, skip: frozenset) -> tuple[np.ndarray, Marks, Marks]:
        """The open series of a margin group (sorted ids) and their kernel inputs at a mark and one
        decay horizon later; kept while the mark, the settled series and skip stay the same (a
        block's marks and its end margin the same groups again, and a mark's rounds of
        re-checks, _deleveraged_short, once a round)."""
        key = (und, inverse, id(mark), len(self.fixings), skip, self.decay_horizon_s)
        hit = self._instrument_cache.get(key)
        if hit is not None and hit[0] is mark:
            return hit[1:]
        inst = sorted(i for i, s in self.series.items() if s.underlying == und and s.inverse == inverse
                      and i not in skip and i not in self.fixings)
        series = [self.series[i] for i in inst]
        flag = INVERSE if inverse else 0
        marks = Marks(index=mark.index, rate=0.0, forward=np.full(len(inst), mark.index),
                      strike=np.array([s.strike if s.kind != FUTURE else 1.0 for s in series]),
                      expiry=np.array([max(s.expiry - mark.timestamp, 0) / YEAR_S for s in series]),
                      vol=np.array([mark.vols.get(s.id, 1.0) for s in series]),
                      kind=np.array([s.kind | flag for s in series], np.uint8))
        later = replace(marks, expiry=np.maximum(marks.expiry - self.decay_horizon_s / YEAR_S, 0.0))
        if len(self._instrument_cache) > 64 + 8 * len(self.marks):
            self._instrument_cache.clear()
        self._instrument_cache[key] = (mark, np.array(inst, np.int64), marks, later)
        return self._instrument_cache[key][1:]

    def _below(self, books: list[tuple[bytes, str]], initial: bool = True, override=None,
               skip: frozenset = frozenset()) -> list[tuple[bytes, str, int]]:
        """The books (account, asset) whose equity is below initial (or maintenance) margin, with
        that equity, in the given order."""
        by_asset: dict[str, set[bytes]] = {}
        for k, a in books:
            by_asset.setdefault(a, set()).add(k)
        rank = {b: i for i, b in enumerate(books)}
        return sorted(self._below_by_asset(by_asset, initial, override, skip), key=lambda b: rank[b[:2]])

    def _below_by_asset(self, by_asset: dict[str, set[bytes]], initial: bool = True, override=None,
                        skip: frozenset = frozenset()) -> list[tuple[bytes, str, int]]:
        """The books (account, asset: the accounts of by_asset[asset]) below initial (or
        maintenance) margin, with their equity, sorted by (account, asset); one pass over the
        accounts' positions into arrays, one margin call per group."""
        started = time.perf_counter()
        try:
            return self._books_below(by_asset, initial, override or {}, skip)
        finally:
            self.margin_s += time.perf_counter() - started

    def _books_below(self, by_asset, initial, override, skip) -> list[tuple[bytes, str, int]]:
        keys = list(set().union(*by_asset.values()))
        assets = sorted(by_asset)
        cols = self._cols
        inside = [k for k in keys if k in cols.row] if cols is not None else []
        held_in = cols.positions(self, inside) if inside else None
        if held_in is None:
            # the accounts the block's columns do not hold are read where they are, not loaded:
            # a mark of an underlying held by H accounts made the rest of the block's marks and
            # runs pay O(H) each (review s23); each account's margin is its own, any order gives it
            if inside:
                self._flush()
            keys.sort()
            rows = self._rows(keys)
            cash = {a: _column([self.accounts[k].collateral.get(a, 0) for k in keys]) for a in assets}
        else:  # the columns' accounts in the order of their rows, then the others
            order, at_row, (owner, ids, sizes) = held_in
            outside = sorted(set(keys).difference(inside))
            o2, i2, s2 = self._rows(outside)
            keys = [inside[i] for i in order.tolist()] + outside
            rows = (np.concatenate([owner, o2 + len(inside)]), np.concatenate([ids, i2]), np.concatenate([sizes, s2]))
            cash = {a: np.concatenate([cols.balances(at_row, a),
                                       _column([self.accounts[k].collateral.get(a, 0) for k in outside])])
                    for a in assets}
        held = self._position_values(len(keys), rows, override)
        if skip:
            live = ~np.isin(rows[1], np.fromiter(skip, np.int64, len(skip)))
            rows = tuple(r[live] for r in rows)
        margin = self._margins(len(keys), rows, set(assets), override, skip)
        at = {k: i for i, k in enumerate(keys)}
        out = []
        for a in assets:
            members = by_asset[a]
            j = (np.arange(len(keys)) if len(members) == len(keys)
                 else np.fromiter(map(at.__getitem__, members), np.int64, len(members)))
            e = cash[a][j] + held[a].sums[j] if a in held else cash[a][j]
            if a in margin:
                m, bad = margin[a][0 if initial else 1]
                short = bad[j] | (e < m[j])
            else:
                short = e < 0
            out += [(keys[b], a, int(q)) for b, q in zip(j[short].tolist(), e[short].tolist())]
        out.sort(key=lambda b: b[:2])
        return out

    def _reduce_only(self, s: Series) -> str:
        """Why trades in s may only shrink positions now ("" if they may do anything)."""
        if s.underlying in self.halted:
            return self.halted[s.underlying]
        floor = self.breakers.fund_floor.get(s.asset, 0) if self.breakers else 0
        if self.funds[s.asset] < floor:
            return f"the {s.asset} insurance fund {self.funds[s.asset]} is below its floor {floor}"
        return ""

    # ---- transactions -------------------------------------------------------------------------
    def begin_block(self) -> None:
        self.height += 1

    def register(self, key: bytes) -> None:
        if len(key) != 32:
            raise Rejected(f"a key is 32 bytes, not {len(key)}")
        if key in self.accounts:
            raise Rejected(f"account {key.hex()[:16]} is already registered")
        if key not in self.safe_keys and not accel.ed25519_key_is_safe(key, backend=self.backend):
            raise Rejected(unsafe_key(key))
        self.accounts[key] = self._private[key] = Account(slot=len(self.accounts))
        self.dirty.add(key)

    def list_series(self, s: Series) -> None:
        """At genesis only (no transaction lists a series); an inverse series makes its underlying
        an asset."""
        if s.id in self.series or not 0 <= s.id < 2**32:
            raise Rejected(f"series {s.id} is already listed or not a u32")
        if s.kind not in (CALL, PUT, FUTURE):
            raise Rejected(f"series {s.id}: kind must be CALL, PUT or FUTURE")
        if s.kind != FUTURE:
            _ranged(f"series {s.id}: strike", s.strike, STRIKE_RANGE)
        if not 0 < s.expiry <= MAX_EXPIRY:
            raise Rejected(f"series {s.id}: expiry {s.expiry} outside 1..{MAX_EXPIRY}")
        if not asset_name_ok(s.underlying) or s.underlying == USD:
            raise Rejected(f"series {s.id}: underlying {s.underlying!r} must be 1 to 8 ASCII letters or digits, not USD")
        if s.inverse:
            self._add_asset(s.underlying)
        self.series = {**self.series, s.id: s}  # (shared by the versions: never changed in place)

    def deposit(self, key: bytes, nonce: int, asset: str, amount: int) -> None:
        self._flush()
        why = self.move_refusal(asset, amount, "deposit")
        if why:
            raise Rejected(why)
        self._nonce(key, nonce)
        if self.accounts[key].collateral.get(asset, 0) + amount > MAX_BALANCE:
            raise Rejected(f"the deposit would take the {asset} balance past {MAX_BALANCE} quanta")
        acct = self._mut(key)
        _credit(acct, asset, amount)
        self.supply[asset] += amount
        acct.nonce += 1

    def withdraw(self, key: bytes, nonce: int, asset: str, amount: int) -> None:
        self._take_out(key, nonce, asset, amount, "withdrawal")
        self.supply[asset] -= amount

    def top_up(self, key: bytes, nonce: int, asset: str, amount: int) -> None:
        """Pays amount of the account's free collateral into the asset's insurance fund: nothing
        else pays into a fund, so one the losses took below its floor (Breakers.fund_floor) kept
        every series of its asset reduce-only for good."""
        self._take_out(key, nonce, asset, amount, "top-up")
        self.funds[asset] += amount

    def _take_out(self, key: bytes, nonce: int, asset: str, amount: int, what: str) -> None:
        """amount out of the account's free collateral in asset (a withdrawal, a top-up of the fund)."""
        self._flush()
        why = self.move_refusal(asset, amount, what)
        if why:
            raise Rejected(why)
        self._nonce(key, nonce)
        cash = self.accounts[key].collateral.get(asset, 0)
        if self.defer:
            if amount > cash:
                raise Rejected(f"{what} of {amount} quanta of {asset} exceeds the cash, {max(cash, 0)} quanta")
            self.touched.add((key, asset))
            self.unchecked.add((key, asset))
        else:
            (equity,), margin = self.equity([key]), self.margins([key], {asset})
            im = margin[asset][0][0] if asset in margin else 0
            free = 0 if im is None else min(cash, equity.get(asset, 0) - im)
            if amount > free:
                raise Rejected(f"{what} of {amount} quanta of {asset} exceeds the free collateral, {max(free, 0)} quanta")
        acct = self._mut(key)
        _credit(acct, asset, -amount)
        acct.nonce += 1

    def trade(self, buyer: bytes, buyer_nonce: int, seller: bytes, seller_nonce: int, series: int, size: int,
              price: int) -> None:
        """buyer pays price (quanta of the settlement asset per contract) x size to seller; for an
        inverse future price is the USD futures price F (USD quanta) and the seller pays the buyer
        size / F coin (the contract's value, -1/F per USD). Both books must cover their initial
        margin afterwards (deferred: at the block's end). Both signatures are checked where the
        transaction is decoded."""
        self._flush()
        why = self.trade_stop(buyer, seller, series, size, price)
        if why:
            raise Rejected(why)
        s = self.series[series]
        if s.inverse and s.kind == FUTURE:
            flow = -((size * _PER_UNIT * _PER_UNIT + price // 2) // price)  # coin quanta, buyer to seller
        else:
            flow = price * size
        self._nonce(buyer, buyer_nonce)
        self._nonce(seller, seller_nonce)
        asset, why = s.asset, self._reduce_only(s)
        new = []
        for key, sign in ((buyer, 1), (seller, -1)):
            acct = self.accounts[key]
            held = acct.positions.get(series, 0)
            cash = acct.collateral.get(asset, 0) - sign * flow
            if abs(held + sign * size) > MAX_POSITION or abs(cash) > MAX_BALANCE:
                raise Rejected(f"the trade takes account {key.hex()[:16]} past a position of {MAX_POSITION} "
                               f"or a balance of {MAX_BALANCE} quanta")
            if why and not (held * sign < 0 and size <= abs(held)):
                raise Rejected(f"series {series} is reduce-only ({why}): the trade must shrink both positions")
            new.append((key, held, held + sign * size, cash))
        for key, _, held, cash in new:  # nothing can refuse the trade from here, but its margin
            acct = self._mut(key)
            _credit(acct, asset, cash - acct.collateral.get(asset, 0))
            self._set_position(key, acct, series, held)
            acct.nonce += 1
        if self.defer:
            self.touched.update(((buyer, asset), (seller, asset)))
            self.unchecked.update(((buyer, asset), (seller, asset)))
            return
        try:
            short = self._below([(buyer, asset), (seller, asset)])
            if short:
                raise Rejected(f"trade leaves account {short[0][0].hex()[:16]} below initial margin in {asset}")
        except Exception:  # refused, or the margin could not be computed: the trade leaves no trace
            for key, held, _, cash in new:
                acct = self._mut(key)
                _credit(acct, asset, cash + (flow if key == buyer else -flow) - acct.collateral.get(asset, 0))
                self._set_position(key, acct, series, held)
                acct.nonce -= 1
            raise

    def end_of_block(self) -> list[bytes]:
        """With deferred margin: the accounts one of whose books a trade or withdrawal of this block
        touched and that book ends it below initial margin (one margin call per group for all of
        them); clears the record."""
        if self._cols is not None:
            self.touched |= self._cols.take_touched()
        by_asset: dict[str, set[bytes]] = {}
        for k, a in self.touched:
            by_asset.setdefault(a, set()).add(k)
        self.touched, self.unchecked = set(), set()
        short = sorted({k for k, _, _ in self._below_by_asset(by_asset)}) if by_asset else []
        self._flush()
        return short

    def _check_unmarked(self, underlying: str, mine: dict) -> None:
        """Before a mark that liquidates changes anything: ShortBooks if a book touched since the
        block began or the last such mark, holding a series of the underlying (mine) that settles
        in the book's asset, is below initial margin at the marks before this one.
        Margined only at the block's end, after the mark, a book could spend before the mark what
        the mark would pay it (a long side of an expiring series, a future's gain), and what the
        mark then charged it, capped at its equity, went on to bystanders. Review s21: the
        attacker's T, long 100 calls its W wrote, bought a future of its X for its cash plus the
        coming fixing and sold it back at 0, X withdrew; the expiry mark (+25%) left W bankrupt and
        T with 1 USD, and a bystander holding only cash paid 157,995 USD of W's debt (all its
        1,000,000 at +50%). A touched book is now as sound at such a mark as one margined in an
        earlier block. A mark that liquidates nothing charges nobody, and what it pays is paid by
        books whose equity covers it: a book may spend that before a later mark (checked there at
        the marks before it), so the check, a margin call per group, is made only where it matters
        (before every mark it cost the demo's 10,000-transaction blocks, a mark every 20, 740 ms).
        Only books the mark moves: one holding nothing of the underlying gains nothing at it (an
        honest account buying futures of one underlying with part of their margin and depositing
        the rest after it was held back by any liquidating mark of another between the two). A
        book not checked stays unchecked, for the next such mark."""
        if not self.defer:
            return
        self._flush()  # (the positions the columns hold, and their touched books: the mark flushes anyway)
        held = {(k, a) for k, a in self.unchecked
                if any(i in mine and mine[i].asset == a for i in self.accounts[k].positions)}
        if not held:
            return
        by_asset: dict[str, set[bytes]] = {}
        for k, a in held:
            by_asset.setdefault(a, set()).add(k)
        short = sorted({k for k, _, _ in self._below_by_asset(by_asset)})
        if short:
            raise ShortBooks(short, f"is below initial margin before this {underlying} mark, after a transaction "
                                    "of the same block touched its book")
        self.unchecked -= held

    @functools.cached_property
    def oracle_set(self) -> frozenset:
        return frozenset(self.oracles)

    def mark_form_refusal(self, underlying: str, vols: dict, signers, strangers_allowed: bool = False) -> str:
        """Why a mark is refused whatever its numbers and whenever it comes ("" if it is not): it
        lists fewer than a quorum of distinct oracles, or a key that is no oracle's, or a vol for
        a series that is not an option listed on its underlying. Oracles and series are fixed at
        genesis, so a validator checks this on the parent's state before a block's signatures
        (ClearingApp.validate, and the mempool on admission): each listed key costs a signature
        check of the mark's whole body, and each vol 12 bytes of it (a mark of 255 listed keys
        and 4,000 vols made a 73 KB block cost 230 MB and 1,020 checks before this refused it).
        strangers_allowed: mark() itself, which also replays blocks committed before that rule,
        counts only the oracles among the keys."""
        oracles = self.oracle_set
        known = len(oracles.intersection(signers))
        if known < self.quorum:
            return f"mark signed by {known} oracle(s), {self.quorum} needed"
        strangers = [] if strangers_allowed else [k for k in signers if k not in oracles]
        if strangers:
            return f"mark signed by {len(strangers)} key(s) that are no oracle's (first {strangers[0].hex()[:16]})"
        mine = self._listed(underlying)
        if not mine:
            return f"no listed series has the underlying {underlying!r}"
        for i in vols:
            if i not in mine or mine[i].kind == FUTURE:
                return f"{underlying} mark has a vol for series {i}, not an option on {underlying}"
        return ""

    def mark(self, underlying: str, index: float, vols: dict, sequence: int, timestamp: int, signers: list[bytes],
             signatures_valid: bool = True) -> None:
        """An oracle mark; signers are the keys whose signatures over it verified (checked where the
        transaction is decoded, in the block's one signature batch). In order: the series expired
        by it are fixed and settled, every book holding the underlying is checked against
        maintenance margin and closed if below it, the circuit breaker is updated. Everything
        that can refuse it is computed before anything changes."""
        if not signatures_valid:
            raise Rejected("an oracle signature does not verify")
        refusal = self.mark_form_refusal(underlying, vols, signers, strangers_allowed=True)
        if refusal:
            raise Rejected(refusal)
        mine = self._listed(underlying)
        _ranged(f"{underlying} index", index, INDEX_RANGE)
        for i, v in vols.items():
            _ranged(f"vol of series {i}", v, VOL_RANGE)
        last = self.marks.get(underlying)
        if last is not None and (sequence <= last.sequence or timestamp <= last.timestamp):
            raise Rejected(f"{underlying} mark {sequence} at {timestamp} is stale or out of order "
                           f"(last: {last.sequence} at {last.timestamp})")
        missing = [i for i, s in sorted(mine.items()) if s.kind != FUTURE and i not in vols
                   and i not in self.fixings and s.expiry > timestamp]  # expired: intrinsic
        if missing:
            raise Rejected(f"{underlying} mark lacks the vol of series {missing[0]}")
        new = Mark(index, dict(vols), sequence, timestamp, self._series_values(underlying, index, vols, timestamp))
        expiring = frozenset(i for i, s in mine.items() if i not in self.fixings and s.expiry <= timestamp)
        # after settlement the expiring series are cash: equity counts them at their fixing, margin skips them.
        # Their holders are checked too, whatever else they hold: a writer whose settlement leaves its
        # book (perhaps only positions on other underlyings) short is liquidated now, with the
        # settlement's receivers among whom its loss is charged to, not at a later mark of another
        # underlying after they withdrew; and one that traded in this block makes it invalid
        # (ShortBooks), so a write and the expiry in one block cannot hand the loss to the fund.
        holders: dict[str, list[set]] = {}
        for i, s in mine.items():
            holders.setdefault(s.asset, []).append(self.holders.get(i, set()))
        by_asset = {a: k for a, sets in holders.items() if (k := set().union(*sets))}
        below = (self._below_by_asset(by_asset, initial=False, override={underlying: new}, skip=expiring)
                 if by_asset else [])
        if below:  # a mark that liquidates charges losses: not to a book that spent its gain first
            self._check_unmarked(underlying, mine)
        caught = sorted({k for k, a, _ in below if (k, a) in self.touched
                         or (self._cols is not None and self._cols.is_touched(k, a))})
        if caught:
            raise ShortBooks(caught, f"would be liquidated by this {underlying} mark after a transaction of "
                                     "the same block touched its book")
        if expiring or below:  # settlement and liquidation work on the accounts one by one
            self._flush()
        halted = self._breaker(underlying, index)
        self.marks[underlying] = new
        pools = _Pools()  # the mark's shared sources of socialized losses, charged once per drain;
        # weights by what each holder gained at this mark (_gain)
        if last is not None:
            pools.moves = {i: v - last.values[i] for i, v in new.values.items() if i in last.values}
        paid: dict[tuple[bytes, str], list] = {}  # settlement payers -> their series' other sides (sources)
        for i in sorted(expiring):
            self._settle(i, paid, pools)
        heirs: dict = {}  # shared by this mark's liquidations (_liquidate)
        ranks = _Ranks(self)  # shared too: who closes against a liquidated book, in order
        pending: dict[str, set[bytes]] = {}  # per asset, the books still to liquidate
        for k, a, _ in below:
            pending.setdefault(a, set()).add(k)
        bankrupt = {a: frozenset(ks) for a, ks in pending.items()}
        cascade = _Cascade()  # books a socialized loss took all the equity of (_socialize)
        cascade.settled = {b for b, other in paid.items() if other}
        cascade.done = done = {(k, a) for k, a, _ in below}
        cascade.closed, cascade.pools = set(), pools
        for key, asset, _ in below:
            pending[asset].discard(key)
            self._liquidate(key, asset, bankrupt[asset], heirs, pending[asset], paid.get((key, asset)), cascade, ranks)
        for step in range(2):  # the cascade, then the settlement debts left (none, by the rules) and theirs
            while True:
                while cascade:  # liquidated at this mark too, in rounds, each in key order: they pass the loss on
                    batch = sorted(set(cascade) - done)
                    cascade.clear()
                    round_bankrupt: dict[str, set[bytes]] = {}
                    for key, asset in batch:
                        pending.setdefault(asset, set()).add(key)
                        round_bankrupt.setdefault(asset, set()).add(key)
                    frozen = {a: frozenset(ks) for a, ks in round_bankrupt.items()}
                    for key, asset in batch:
                        pending[asset].discard(key)
                        done.add((key, asset))
                        self._liquidate(key, asset, frozen[asset], heirs, pending[asset], paid.get((key, asset)), cascade, ranks)
                if self._deleveraged_short(cascade):  # hedges the closures broke: liquidated before any drain
                    continue
                self._drain(cascade)  # the records, each charged once with what it is owed
                if not cascade:  # then the settled sides, only once the cascade is still: each side is
                    self._drain(cascade, sides=True)  # charged again only after a side's carriers
                if not cascade:  # were liquidated (once per side and mark), not once per round; then
                    self._drain(cascade, own=True)  # what liquidated books could not pay, to their own weights
                if not cascade:  # then what nobody of steps 3-5 carried, to the mark's gainers (step 6)
                    self._drain_open(cascade)
                if not cascade:  # (each drain owes only to the ones after it: nothing is owed now)
                    break
            for (key, asset), receivers in sorted(paid.items()) if not step else ():
                self._settle_debt(key, asset, receivers, cascade)
        self._charge_profit(pools)
        if halted:
            self.halted[underlying] = halted
        else:
            self.halted.pop(underlying, None)

    def _deleveraged_short(self, cascade: "_Cascade") -> bool:
        """Whether books this mark's liquidations closed positions against (cascade.closed), not
        liquidated yet, are now below maintenance margin: listed in cascade, to be liquidated at
        this mark too. A closure at the mark keeps a book's equity but may take one leg of its
        hedge: a writer's calls closed against a delta-hedged holder left its short futures naked
        with a few USD of equity, nothing looked at it before the next mark, and that mark's move
        was the fund's (review s18: 31,497 USD at +0.5%). Its own liquidation, at this mark, costs
        nobody anything: its equity covers it. Not a book this block touched: a mark never
        liquidates one (the block's end finds it short of initial margin instead, _socialize)."""
        closed, cascade.closed = cascade.closed - cascade.done, set()
        by_asset: dict[str, set[bytes]] = {}
        for k, a in closed:
            if not self._touched(k, a):
                by_asset.setdefault(a, set()).add(k)
        short = self._below_by_asset(by_asset, initial=False) if by_asset else []
        cascade.extend((k, a) for k, a, _ in short)
        return bool(short)

    def _breaker(self, underlying: str, index: float) -> str:
        """Records the mark in the breaker's window; why the underlying is reduce-only after it
        ("" if it is not). Differing by more than band from some mark in the window is exceeding
        the window's lowest index times 1 + band or falling below its highest times 1 - band, so
        the window keeps one (height, lowest, highest) per block."""
        if self.breakers is None:
            return ""
        band = self.breakers.band
        window = [w for w in self.history.get(underlying, []) if w[0] > self.height - self.breakers.window]
        lo, hi = min((w[1] for w in window), default=index), max((w[2] for w in window), default=index)
        if window and window[-1][0] == self.height:
            window[-1] = (self.height, min(window[-1][1], index), max(window[-1][2], index))
        else:
            window.append((self.height, index, index))
        self.history[underlying] = window
        if index > lo * (1 + band) or index < hi * (1 - band):
            ref = lo if index > lo * (1 + band) else hi
            return (f"{underlying} index {index:g} moved more than {band:.0%} from {ref:g} "
                    f"within {self.breakers.window} blocks")
        return ""

    def _settle(self, series: int, paid: dict | None = None, pools: "_Pools | None" = None) -> None:
        """Every holder paid size x the fixing (one contract's value at the first mark at or after
        expiry, in integer quanta); open interest sums to zero, so the payments do too. paid:
        (holder, asset) -> (source, weight) pairs (pools: (series, side) -> the holders of that side,
        each weighing contracts x the side's gain a contract (_gain) within it, shared by the holders of the other
        side), appended to: whom a loss the settlement leaves the holder is charged to (_liquidate,
        _settle_debt), the side weighing the holder's own contracts x that side's gain a contract, what its
        settlement closed against that side, as a counterparty weighs the value it closed. Not the
        side's total: a bankrupt writer of one contract of a widely held series would hand nearly
        all its loss, its other books' included, to that series' longs (bystanders), and a
        counterparty that closed against it (the writer's owner's other account) would keep its gain."""
        value = self.marks[self.series[series].underlying].values[series]
        asset = self.series[series].asset
        sizes = {}
        for holder in sorted(self.holders.pop(series, ())):
            acct = self._mut(holder)
            sizes[holder] = acct.positions.pop(series)
            _credit(acct, asset, sizes[holder] * value)
        # its kept order (auto-deleveraging's) goes with its holders: nobody holds it from here on,
        # so nothing reads it again, and a chain of expiring series would keep every one for ever
        self._sizes.pop(series, None)
        self._private_sizes.discard(series)
        self.fixings[series] = value
        if paid is not None:
            factor = {sign: _gain(pools, series, sign) for sign in (1, -1)}
            for sign in (1, -1):
                side = {k: abs(n) for k, n in sizes.items() if (n > 0) == (sign > 0)}
                if pools is not None and side:
                    pools.sides[(series, sign)] = (asset, side, factor[sign])
            for k, n in sizes.items():  # (its source, weighing what its own settlement closed against it)
                other = -1 if n > 0 else 1
                paid.setdefault((k, asset), []).append(((series, other), abs(n) * factor[other]))

    def _settle_debt(self, key: bytes, asset: str, receivers: list, cascade: "_Cascade") -> None:
        """A holder of a series this mark settled, left with negative cash in asset and no open
        position in it (so no later mark would ever liquidate it): the fund pays the debt as far
        as it goes, the rest is owed to the other sides of its settled series (receivers: their
        sources in cascade.pools, each weighing its own contracts x the side's gain a contract, spread over
        the side in proportion to contracts: what
        they received, for a writer settling in the money: the settlement at the bankrupt book's
        bankruptcy price), recorded as a Liquidation. Without this, a short option settling deep
        in the money left its writer's debt on the books for good while the holder, perhaps the
        writer's owner's other account, withdrew the gain; and so did a buyer who paid the
        premium with borrowed cash (negative, the option's value its equity) for an option
        expiring worthless, while the writer withdrew the premium."""
        acct = self.accounts[key]
        cash = acct.collateral.get(asset, 0)
        if cash >= 0 or any(self.series[i].asset == asset for i in acct.positions):
            return
        acct = self._mut(key)
        fund = min(-cash, self.funds[asset])
        self.funds[asset] -= fund
        _credit(acct, asset, fund)
        loss = -(cash + fund)
        sides = cascade.pools.sides
        terms = [(s, w) for s, w in receivers if s in sides]
        charged, pooled = self._socialize(asset, loss, {}, terms, frozenset(), cascade)
        if pooled:
            cascade.pools.owed.setdefault(asset, {})[len(self.liquidations)] = pooled
        _credit(acct, asset, charged)
        self.liquidations.append(Liquidation(key, asset, fund, charged))

    def _liquidate(self, key: bytes, asset: str, bankrupt: set[bytes], heirs: dict | None = None,
                   pending: set[bytes] | None = None, settled: list | None = None,
                   cascade: "_Cascade | None" = None, ranks: _Ranks | None = None) -> None:
        """Closes every position of the account's `asset` book at the mark against the opposite
        positions of other accounts (auto-deleveraging: other books being liquidated by the same
        mark first, then the largest opposite positions, then by key). A loss beyond the book's
        collateral is paid by the asset's insurance fund as far as it goes; the rest is charged
        (_socialize) to the deleveraged counterparties in proportion to what they gained at this mark on
        what they closed (_gain; one
        being liquidated by this mark later passes its share on at its turn) and owed to its shared
        sources (cascade.pools, charged once per drain of the mark: _drain): the other sides of its
        series this mark settled (settled: their sources, _settle), and, for a book whose
        positions earlier liquidations of this mark took, the records of whom those liquidations
        charged (heirs, shared by the mark's liquidations), each weighing the value it took, after
        their owners' cash (as far as it goes, in proportion to it): two books trading with each
        other cannot hand one's loss to bystanders while the other, or their owner's third
        account, keeps the gain. No account but those of pending (the books this mark liquidates
        later, default bankrupt) is charged beyond its equity in the asset (_charge). cascade:
        where the books a socialized loss takes past their equity are listed, to be liquidated at
        this mark (_socialize). ranks: the mark's _Ranks (shared by its liquidations). Only a mark
        calls it (cascade: its _Cascade, which it drains and whose carriers it liquidates in
        rounds); called without one it refuses: it would drain its own pools without liquidating
        the carriers its drain adds (step 5), leaving them charged beyond their equity."""
        if cascade is None or cascade.pools is None:
            raise RuntimeError("_liquidate runs only inside a mark (Clearing.mark): the mark liquidates the "
                               "carriers its socialized losses add, and drains its shared sources")
        heirs = {} if heirs is None else heirs
        pending = set(bankrupt) - {key} if pending is None else pending
        ranks = _Ranks(self) if ranks is None else ranks
        pools = cascade.pools
        bankrupt = bankrupt if isinstance(bankrupt, frozenset) else frozenset(bankrupt)
        acct = self._mut(key)
        weights: dict[bytes, int] = {}
        kept: dict[bytes, int] = {}  # what this book gained at the mark on what it closed against each
        gained: dict[bytes, int] = {}  # the same, at least a quantum a contract (_gain): its record's
        # weight in a loss the other book is left with
        took: set[bytes] = set()  # books whose positions this one took (bankrupt or not: one this
        # mark liquidates later with nothing left to close inherits this liquidation)
        for i in sorted(i for i in acct.positions if self.series[i].asset == asset):
            size, value = acct.positions[i], self._value(i)
            start = pools.start.setdefault(i, {})  # positions at the mark's start (step 6's gainers)
            start.setdefault(key, size)
            while size:
                h = ranks.next(i, -1 if size > 0 else 1, bankrupt, key)
                if h is None:
                    break
                theirs = self.accounts[h].positions[i]
                start.setdefault(h, theirs)
                q = min(abs(size), abs(theirs)) * (1 if size > 0 else -1)  # contracts key gives up
                _credit(acct, asset, q * value)
                _credit(self._mut(h), asset, -q * value)
                self._set_position(h, self._mut(h), i, theirs + q)
                size -= q
                weights[h] = weights.get(h, 0) + abs(q) * _gain(pools, i, 1 if theirs > 0 else -1)
                kept[h] = kept.get(h, 0) + abs(q) * max(pools.moves.get(i, 0) * (1 if q > 0 else -1), 0)
                gained[h] = gained.get(h, 0) + abs(q) * _gain(pools, i, 1 if q > 0 else -1)
                took.add(h)  # s7 c2: any counterparty, bankrupt or not (a later liquidation of it inherits)
                cascade.closed.add((h, asset))
            if size:  # open interest sums to zero: someone always holds the other side
                raise RuntimeError(f"series {i}: no counterparty left for {size} contracts of a liquidation")
            self._set_position(key, acct, i, 0)
        cash = acct.collateral.get(asset, 0)
        paid = min(max(-cash, 0), self.funds[asset])
        self.funds[asset] -= paid
        _credit(acct, asset, paid)
        loss = max(-(cash + paid), 0)
        closed = weights  # the value each counterparty closed against this book
        terms: list = []  # its shared sources: (source, weight)
        took_mine = heirs.get((asset, key), {})  # earlier liquidations of this mark that closed against it
        for h in sorted(took_mine):  # their owners pay first, as far as their cash goes (they kept its gain)
            if (n := heirs.get((asset, h, "charged"))) is not None:
                terms.append((n, took_mine[h]))  # then whom they charged, weighing what they took
        for h in sorted(took):  # h's positions went to this book: a loss h is left with comes here, in
            # proportion to what this book gained on them (h's own gain on them, a quantum a contract
            # where it lost, handed a bystander beside it M : N of h's loss: review s23)
            heirs.setdefault((asset, h), {})[key] = gained[h]
            heirs.setdefault((asset, h, "kept"), {})[key] = kept[h]
        sides = pools.sides
        terms += [(s, w) for s, w in settled or () if s in sides]
        takers = dict(heirs.get((asset, key, "kept"), {}))  # each at most what it kept of this book's
        charged = self._charge_cash(asset, loss, _Caps([takers]), pools, pending)
        heirs[(asset, key, "charged")] = n = pools.record(asset, closed, terms)  # not changed from here on
        if n is not None:
            pools.of[(key, asset)] = n
            if took_mine:
                pools.takers[n] = takers
        got, pooled = self._socialize(asset, loss - charged, closed, terms, pending, cascade)
        if pooled:
            pools.owed.setdefault(asset, {})[len(self.liquidations)] = pooled
        charged += got
        _credit(acct, asset, charged)  # what the market cannot pay comes back at the mark's end
        self.liquidations.append(Liquidation(key, asset, paid, charged))

    def _socialize(self, asset: str, loss: int, explicit: dict[bytes, int], terms: list, pending,
                   cascade: "_Cascade", passing: bool = True) -> tuple[int, int]:
        """loss quanta of a debt in asset, charged to the accounts of explicit (weights) and owed to
        the shared sources of terms ((source, weight) in cascade.pools); returns (quanta charged or
        owed: all of loss, quanta owed to sources: what the mark's end gives back in proportion if
        the whole market cannot pay). With terms: loss split in proportion to the weights (explicit
        as their sum, _split), explicit's part charged at once (_charge: none beyond its equity but
        those of pending), what it could not pay split among the terms again, each term's part owed
        to its source. Without terms: charged to explicit; if they cannot pay it all, every one of
        them that still holds a position in the asset, or held one this mark settled (all its
        equity now taken), is charged the rest in proportion, beyond its equity, and, left below
        maintenance, listed in cascade, to be liquidated at this mark (_own_weights, _carried):
        the loss follows the positions on to whoever holds
        their other side, or held it at the settlement (a counterparty hedged by a position with
        the attacker's third account, open or just settled, cannot hand the loss to bystanders
        while that account keeps the gain). Not a book a transaction of this block touched: a mark
        never liquidates one (it stays capped, and the block's end finds it short of initial
        margin: the block is invalid, the proposer holds its transactions back); nor one this mark
        already liquidated. Without one, what the books of explicit this mark already liquidated
        (drained sources only: a liquidation's own counterparties hold its positions) could not pay
        is owed, in proportion to their weights, to ("own", n): the own weights of their
        liquidations' records (whom their positions were closed against: what they gained from
        the debtor passed on to them; passing False, charging those, returns (charged, the rest) for
        Clearing._reach to pass along the record's chain). Only
        without one is the rest owed to step 6 (("open", asset): the mark's gainers first,
        Clearing._drain_open, then the positive balances in the asset, largest first, charged
        once at the mark's end, _charge_profit). Else the attacker's L, long
        the expiring call its W wrote and short futures to its X, liquidated at the expiry before
        the call's side was drained, left W's loss to everyone in profit while X kept L's gain
        (tests/test_ledger_money_s7.py). A settled side's charge is _socialize_parts."""
        if loss <= 0:
            return 0, 0
        pools = cascade.pools
        if terms:
            tw = [w for _, w in terms]
            if explicit:  # what its own weights cannot pay, carried by them first (step 5), as without
                # terms: shared over the terms, a settled side a bystander held of one expiring option
                # paid what the attacker's hedged counterparty could not (468,461 USD: review s23)
                first, *rest = _split(loss, [sum(explicit.values())] + tw)
                short = first - (self._own_weights(asset, first, explicit, pending, cascade) if first else 0)
                if short:
                    rest = [a + b for a, b in zip(rest, _split(short, tw))]
            else:
                rest = _split(loss, tw)
            for (source, _), part in zip(terms, rest):
                pools.put(source, part)
            return loss, sum(rest)
        charged = self._own_weights(asset, loss, explicit, pending, cascade, not passing) if explicit else 0
        if loss > charged and explicit and passing:
            done = cascade.done
            on = [(h, n) for h in sorted(h for h in explicit if (h, asset) in done)
                  if (n := pools.of.get((h, asset))) is not None]
            if on:
                for (h, n), part in zip(on, _split(loss - charged, [explicit[h] for h, _ in on])):
                    pools.put(("own", n), part)
                return loss, loss - charged
        if loss > charged and not passing:  # the own drain passes the rest along the record (_reach)
            return charged, loss - charged
        if loss > charged:  # step 6: the mark's gainers first (_drain_open), then everyone in profit
            pools.put(("open", asset), loss - charged)
            return loss, loss - charged
        return loss, 0

    def _own_weights(self, asset: str, loss: int, weights: dict[bytes, int], pending, cascade: "_Cascade",
                     at_weight: bool = False) -> int:
        """Steps 3 and 5 of a record's own weights: loss charged to them (_capped), what they cannot
        pay to those of them still holding a position in the asset (or one this mark settled),
        untouched by the block and not liquidated by this mark, beyond their equity (_carried);
        at_weight (the own drain): each at most its weight; returns what was charged."""
        charged = self._capped(asset, loss, weights, pending, cascade.pools, at_weight)
        if loss > charged:
            carriers = {h: w for h, w in weights.items() if h not in pending and self._carrier(h, asset, cascade)}
            if carriers:
                taken: dict[bytes, int] = {}
                charged += self._capped(asset, loss - charged, carriers, carriers, cascade.pools, at_weight, taken)
                self._carried(asset, taken, cascade)
        return charged

    def _socialize_parts(self, asset: str, loss: int, weights: dict[bytes, int], cascade: "_Cascade") -> tuple[int, int]:
        """A settled side's charge (_drain, sides): loss split among its holders in proportion to
        their weights (floored, the remainder a quantum each to the largest weights, then by key,
        as _charge), each charged at most its part and its equity (_room; a
        book this mark liquidated: the cash its closure left it). What one cannot pay of its part
        is not shared out among the others: the holder carries it beyond its equity if it still
        holds a position in the asset or held one this mark settled, untouched by the block, and
        not liquidated by this mark (step 5, listed in cascade); else, one this mark liquidated,
        its record's own weights (("own", n): whom its positions went to took what it gained);
        else step 6 (("open", asset)). Returns (loss, what went to ("own", n) or step 6). Shared
        out, a bystander holding one call of three, the other two held by the attacker's book that
        the expiry liquidated after it spent the calls' fixing on its futures, paid all three's
        part, 48,760 USD, its whole equity, and 8,660 more as a carrier, while the attacker's
        longs of the future kept it (tests/test_ledger_gainers_s8.py, B)."""
        pools, done = cascade.pools, cascade.done
        total = sum(weights.values())
        share = {h: loss * w // total for h, w in weights.items()}
        extra = loss - sum(share.values())  # the remainder a quantum each to the largest weights, then by
        for h in heapq.nsmallest(extra, weights, key=lambda h: (-weights[h], h)):  # key (as _charge)
            share[h] += 1
        charged, pooled = 0, 0
        for h in sorted(share):
            part = share[h]
            q = min(part, self._room(h, asset))
            if part > q and self._carrier(h, asset, cascade):
                q = part  # step 5: it carries its part, liquidated at this mark in turn
                cascade.extend([(h, asset)])
            if q:
                _credit(self._mut(h), asset, -q)
                charged += q
            if part > q:
                n = pools.of.get((h, asset)) if (h, asset) in done else None
                pools.put(("own", n) if n is not None else ("open", asset), part - q)
                pooled += part - q
        return loss, pooled

    def _reach(self, asset: str, loss: int, origins: list[int], cascade: "_Cascade") -> int:
        """What the own weights of the records origins (in asset) could not pay of their ("own", n)
        in one pass (_drain), loss in all, charged along their records' chains at once, level by
        level: level 1 the sources the origins refer to (their terms: settled sides and inherited
        records) and the records of their own weights this mark liquidated; level k + 1 the same of
        level k's sources (a settled side's: the records of its holders this mark liquidated);
        each record and side at most once (a loop ends where it started). At each level, the cash
        of whoever took its records' books' positions earlier at the mark first (_Pools.takers, in
        proportion to it), then the members of its sources are charged the rest at once, in proportion to their weights there
        (summed over the level's sources), none beyond its equity (_charge: a book this mark
        liquidated pays the cash its closure left it), what they cannot pay beyond it to those of
        them this mark did not liquidate still holding a position
        in the asset or one this mark settled, untouched by the block (step 5's carriers, listed in
        cascade, liquidated at this mark: the loss follows their positions); returns what no level
        could pay (owed to step 6: the mark's gainers, then everyone in profit). One
        search for all the pass's records, not one per record: N records reaching one shared side
        of H holders would be N x (N + H) (4 s for 3,200 chains at one mark). Without it, a chain
        of books liquidated at the same mark (W short a call to L, L short a future to L2, L2
        short calls to X) left the part of a book that took its gain in cash to everyone in profit
        while X, at the chain's end, kept the gain (tests/test_ledger_money_s7.py)."""
        pools, done = cascade.pools, cascade.done
        seen: set = set(origins)

        def onward(source) -> tuple[dict, list]:
            if isinstance(source, int):  # a record: its own weights, then its terms
                members, after = pools.records[source][1], [s for s, _ in pools.records[source][2]]
            else:  # a settled side
                _, holders, factor = pools.sides[source]
                members, after = {h: c * factor for h, c in holders.items()}, []
            nxt = [m for h in sorted(members) if (h, asset) in done and (m := pools.of.get((h, asset))) is not None]
            return members, nxt + [s for s in after if isinstance(s, int) or s in pools.sides]

        level = [s for n in origins for s in onward(n)[1]]
        while loss and level:
            fresh = []
            for s in level:
                if s not in seen:
                    seen.add(s)
                    fresh.append(s)
            weights: dict = {}
            level = []
            for s in fresh:
                live, nxt = onward(s)
                for h, w in live.items():
                    weights[h] = weights.get(h, 0) + w
                level += nxt
            kept = [pools.takers[s] for s in fresh if isinstance(s, int) and s in pools.takers]
            if kept:  # who took the level's books' positions first, each at most what it kept of theirs
                loss -= self._charge_cash(asset, loss, _Caps(kept), pools)
            if weights and loss:
                loss -= self._capped(asset, loss, weights, frozenset(), pools, True)
            if loss and weights:  # step 5: the rest beyond equity to those still holding (or just
                # settled) a position, liquidated at this mark in turn
                carriers = {h: w for h, w in weights.items() if self._carrier(h, asset, cascade)}
                if carriers:
                    taken = {}
                    loss -= self._capped(asset, loss, carriers, carriers, pools, True, taken)
                    self._carried(asset, taken, cascade)
        return loss

    def _drain(self, cascade: "_Cascade", sides: bool = False, own: bool = False) -> None:
        """Charges what the mark's liquidations owe its shared sources (cascade.pools), each source
        once with the sum owed to it (_socialize with its weights): the liquidations' records from
        the newest (a record refers only to older records and to settled sides, so each is
        charged once with all it is owed), or (sides) the settled sides in (series, side) order,
        each holder at most its part (_socialize_parts: a tapped-out holder's part is not shared out).
        Books it takes past their equity go to cascade (then liquidated, and drained again). own:
        what liquidated books could not pay of a drained source, each record's ("own", n) in
        order of n, charged to its own weights, the rest along the record's chain (_reach), what
        that cannot pay to step 6 (("open", asset): _drain_open)."""
        pools = cascade.pools
        if own:
            short: dict[str, list] = {}  # asset -> [what own weights could not pay, their records]
            for n in sorted(k[1] for k in pools.amount if isinstance(k, tuple) and k[0] == "own"):
                asset, explicit, _ = pools.records[n]
                left = pools.amount.pop(("own", n))
                if explicit:
                    left = self._socialize(asset, left, explicit, [], frozenset(), cascade, False)[1]
                left -= self._charge_cash(asset, left, _Caps([pools.takers.get(n, {})]), pools)  # then its takers', as in step 3
                if left:
                    entry = short.setdefault(asset, [0, []])
                    entry[0] += left
                    entry[1].append(n)
            for asset in sorted(short):
                if left := self._reach(asset, short[asset][0], short[asset][1], cascade):
                    pools.put(("open", asset), left)  # step 6: the mark's gainers first
            return
        if sides:
            for side in sorted(s for s in pools.amount if s in pools.sides):
                asset, holders, factor = pools.sides[side]
                self._socialize_parts(asset, pools.amount.pop(side), {h: n * factor for h, n in holders.items()},
                                      cascade)
            return
        queue = [-n for n in pools.amount if isinstance(n, int)]
        heapq.heapify(queue)
        queued = {-n for n in queue}
        while queue:
            n = -heapq.heappop(queue)
            asset, explicit, terms = pools.records[n]
            self._socialize(asset, pools.amount.pop(n), explicit, terms, frozenset(), cascade)
            for source, _ in terms:  # older records it passed a part to
                if isinstance(source, int) and source in pools.amount and source not in queued:
                    queued.add(source)
                    heapq.heappush(queue, -source)

    def _open_gains(self, asset: str, pools: "_Pools") -> dict[bytes, int]:
        """Step 6's gainers in asset and their weights, built once per mark (when first owed):
        whoever gained at this mark, on the whole, on the series of the marked underlying settling
        in asset that it held at the mark's start: over those series, contracts then x the move of
        a contract's value (or fixing) since the previous mark, signed by the side, summed; an
        account is a gainer when that sum is above 0, and weighs it. A series this mark settled:
        its holders at the settlement (pools.sides, both sides); an open one: its holders now whose
        positions no liquidation changed, and pools.start's (a position at the start never
        changes after). Net, not the gaining sides alone: a bystander long a call and short a
        future (it lost 1,240 USD at the 90,000 expiry) weighed the call's 28,760 and paid 6,059
        to an attacker's loss, its counterparty (net +1,240) 6,320 (tests/test_ledger_gainers_s8.py).
        One pass over the underlying's holders in the asset per mark, as its margin check is."""
        if asset in pools.gains:
            return pools.gains[asset]
        net: dict[bytes, int] = {}
        for i in sorted(pools.moves):
            move = pools.moves[i]
            if not move or self.series[i].asset != asset:
                continue
            if i in self.fixings:  # settled at this mark: its holders on each side then
                for sign in (1, -1):
                    held = pools.sides.get((i, sign), (None, {}, None))[1]
                    for h in sorted(held):
                        net[h] = net.get(h, 0) + sign * held[h] * move
                continue
            start = pools.start.get(i, {})
            for h in sorted(self.holders.get(i, ())):
                if h not in start and (p := self.accounts[h].positions.get(i, 0)):
                    net[h] = net.get(h, 0) + p * move
            for h in sorted(start):
                net[h] = net.get(h, 0) + start[h] * move
        gains = pools.gains[asset] = {h: g for h, g in sorted(net.items()) if g > 0}
        return gains

    def _drain_open(self, cascade: "_Cascade") -> None:
        """Step 6's first part: what nobody of steps 3-5 could carry (("open", asset), summed over
        the pass) charged once per pass and asset to the mark's gainers (_open_gains: whoever gained
        at this mark, net over the marked underlying's series it held at the mark's start), in
        proportion to that net gain, each account at most that much less what the mark's charges
        took from it already (pools.paid, steps 3-6) and at most its equity (_charge; a book this mark liquidated: the cash its closure left it);
        what they cannot pay, to those of them whose equity it took (step 5: not liquidated by this
        mark, untouched by the block, holding a position in the asset or one this mark settled)
        beyond it, still at most their gain, liquidated at this mark in turn (cascade); the rest to
        everyone in profit (pools.profit, _charge_profit). No one pays here more than it gained at
        this mark; one that gained nothing pays nothing here. Without it, a bankrupt book's
        counterparty tapped out by earlier shares of the mark sent the rest to everyone in profit
        (a cash-only bystander paid 1,842 USD) while another holder of the side it closed against,
        the attacker's, kept 207,238 USD of the same gain; or a book liquidated at the mark kept in
        cash the gain on the calls a tapped-out account had written to it (2,143 USD)
        (tests/test_ledger_money_s8.py)."""
        pools = cascade.pools
        for asset in sorted(k[1] for k in pools.amount if isinstance(k, tuple) and k[0] == "open"):
            loss = pools.amount.pop(("open", asset))
            gains = self._open_gains(asset, pools)
            paid = pools.paid.setdefault(asset, {})
            left = {h: w - paid.get(h, 0) for h, w in gains.items()}
            live = {h: gains[h] for h in gains if left[h] > 0}
            if live:
                taken: dict[bytes, int] = {}
                got = self._charge(asset, loss, live, limit=left, taken=taken)
                pools.count(asset, taken)
                for h, q in taken.items():
                    left[h] -= q
                loss -= got
            if loss and live:  # every member gave its equity or its gain: carriers for the rest
                carriers = {h: w for h, w in live.items() if left[h] > 0 and self._carrier(h, asset, cascade)}
                if carriers:
                    taken = {}
                    loss -= self._charge(asset, loss, carriers, carriers, limit=left, taken=taken)
                    pools.count(asset, taken)
                    self._carried(asset, taken, cascade)
            if loss:
                pools.profit[asset] = pools.profit.get(asset, 0) + loss

    def _charge_profit(self, pools: "_Pools") -> None:
        """At the mark's end, per asset, what nobody of steps 3-5 could carry, charged once to
        everyone in profit, largest first (_payers): to the profit_payers largest positive balances
        in the asset, in proportion to them, each up to its equity (what one cannot pay shared by
        the others of the group, _charge); what the group cannot pay, to the next profit_payers,
        and so on; what no positive balance can pay, to the equity held in positions
        (_equity_in_positions). (A cap at each member's part of its group's charge, tried in
        session 10, moved the share of the largest balance onto the smallest where accounts
        without equity filled its group, and left debts beside equity:
        tests/test_ledger_review_s10c.py.) One charge per
        asset and mark, not one per liquidation, touching the books it takes to pay the loss, not
        every account in profit. What the whole market cannot pay goes back, in proportion to
        what each put into the sources (_split, in the order of Clearing.liquidations), to the
        liquidations that owed it: a debt left on the account, its Liquidation's socialized less it."""
        for asset in sorted(a for a, q in pools.profit.items() if q):
            loss = pools.profit[asset]
            payers, unpaid = self._payers(asset), loss
            while unpaid and (rest := dict(itertools.islice(payers, self.profit_payers))):
                unpaid -= self._charge(asset, unpaid, rest)
            if unpaid and (held := self._equity_in_positions(asset)):
                unpaid -= self._charge(asset, unpaid, held)
            owed = pools.owed.get(asset, {})
            if unpaid and owed:
                at = sorted(owed)
                for j, back in zip(at, _split(unpaid, [owed[j] for j in at])):
                    if back:
                        rec = self.liquidations[j]
                        _credit(self._mut(rec.account), asset, -back)
                        self.liquidations[j] = rec._replace(socialized=rec.socialized - back)
        pools.profit.clear()

    def _equity_in_positions(self, asset: str) -> dict[bytes, int]:
        """Once every positive balance in asset gave its equity (_charge_profit): the accounts whose
        equity there is held in positions beside cash of 0 or below, by that equity (_room), the
        last before a debt stays (invariant 6). Found among the holders of the asset's open
        series, the only accounts with any equity left."""
        held = set().union(*(self.holders.get(i, ()) for i, s in self.series.items()
                             if s.asset == asset and i not in self.fixings))
        return {h: r for h in sorted(held) if (r := self._room(h, asset)) > 0}

    def _payers(self, asset: str):
        """Everyone in profit in the order step 6 charges them: an iterator of (key, balance) over
        the positive balances in asset, largest first (ties by key), as they are now; each found in
        time proportional to the accounts changed since the index was last brought up to date
        (_sync_cash), not to the accounts."""
        self._sync_cash(asset)
        return ((h, -c) for c, h in self._cash[asset].ordered(1))

    def _sync_cash(self, asset: str | None = None) -> None:
        """The balance indexes (and asset's, made if missing) brought up to date: the accounts
        changed since (_cash_fresh, _cash_changed) read again, or, where they are many or asset has
        no index yet, every account read in one pass. Copies, never changes, an index a parent
        shares. (The mark's end is the only use: no caller holds an account it changes after.)"""
        assets = {*self._cash, *([asset] if asset else [])}
        if not assets:
            return
        changed = self._cash_fresh.union(*self._cash_changed)
        accounts = self.accounts
        if assets != self._cash.keys() or self._many_changed(len(changed)):
            held: dict[str, dict] = {a: {} for a in sorted(assets)}
            for h, acct in accounts.items():
                for a, q in acct.collateral.items():
                    if q > 0 and a in held:
                        held[a][h] = q
            self._cash = {a: SizeIndex(b) for a, b in held.items()}
        else:
            self._cash = {a: idx.copy() for a, idx in self._cash.items()}  # (the dict too is shared)
            for a, idx in sorted(self._cash.items()):
                for h in changed:
                    idx.set(h, max(accounts[h].collateral.get(a, 0), 0))
        self._cash_fresh, self._cash_changed, self._cash_count = set(), (), 0

    def _many_changed(self, n: int) -> bool:
        """Whether n changed accounts are cheaper to read in a pass over all (CASH_SLACK)."""
        return n > len(self.accounts) // 4 + CASH_SLACK

    def _capped(self, asset: str, loss: int, weights: dict[bytes, int], pending, pools: "_Pools",
                at_weight: bool = False, taken: dict | None = None) -> int:
        """_charge of a socialized loss's weights (a record's own weights, step 3; its carriers,
        step 5; a level of _reach): whom the proportion takes past its equity gives its equity,
        and the rest is shared by the others in proportion again, each at most the larger of its
        proportional share and what it gained at this mark on the whole (_open_gains, step 6's
        measure). Shared up to equity alone (until the s22 review), what a tapped-out counterparty
        could not pay all went to one that gained nothing: a bystander long one ETH future (1
        quantum of weight) beside the attacker's hedged account paid 473,376 USD of a BTC loss,
        while the hedge's other side (the attacker's third account) kept the gain. Over the whole
        mark (pools.shares, pools.paid), not each charge alone: a bystander long 10 of the
        bankrupt book's futures paid its 180,000 USD gain at the liquidation and 174,600 more when
        its tapped-out neighbour's carried loss came back to the book's record (review s23).
        at_weight (the own drain, the chain's levels: _reach): each at most its weight there too,
        what it gained on the link; a lone bystander with a quantum of weight paid a loss come
        back to its own record whole (312,514 USD). taken: filled with what each paid."""
        total, gains = sum(weights.values()), self._open_gains(asset, pools)
        shares, paid = pools.shares.setdefault(asset, {}), pools.paid.setdefault(asset, {})
        share = {h: -(-loss * w // total) for h, w in weights.items()}
        limit = {h: max(max(shares.get(h, 0) + share[h], gains.get(h, 0)) - paid.get(h, 0), 0) for h in weights}
        if at_weight:
            limit = {h: min(q, weights[h]) for h, q in limit.items()}
        taken = {} if taken is None else taken
        got = self._charge(asset, loss, weights, pending, limit=limit, taken=taken)
        for h in sorted(share):
            shares[h] = shares.get(h, 0) + share[h]
        pools.count(asset, taken)
        return got

    def _carried(self, asset: str, taken: dict[bytes, int], cascade: "_Cascade") -> None:
        """Step 5's carriers that the charge left below maintenance margin (past their equity, or
        near it), listed in cascade: liquidated at this mark, they pass the rest on. Not one it took
        nothing from, or left healthy: every carrier was liquidated, a bystander with one ETH
        future that paid a quantum of a BTC loss among them (review s23)."""
        hit = {h for h, q in taken.items() if q}
        if hit:
            cascade.extend((k, a) for k, a, _ in self._below_by_asset({asset: hit}, initial=False))

    def _charge_cash(self, asset: str, loss: int, caps: "_Caps", pools: "_Pools", pending=frozenset()) -> int:
        """Up to loss quanta charged to the keys of caps (the owners of earlier liquidations of the
        mark that took a book's positions: they kept what it lost) with cash in asset, in proportion
        to it, nobody beyond its own (_charge) nor beyond its cap (what it gained at the mark on what
        it closed against the book), each cap lowered by what it paid; returns what was charged.
        Uncapped (until the s22 review), a bystander the mark liquidated first, closed against an
        attacker's book at the mark's value (nothing gained from it), paid 189,600 USD of that
        book's loss from the cash its own closure left it."""
        rich = {h: min(c, cap) for h, cap in sorted(caps.items())
                if (c := self.accounts[h].collateral.get(asset, 0)) > 0 and cap > 0}
        if loss <= 0 or not rich:
            return 0
        taken: dict[bytes, int] = {}
        got = self._charge(asset, min(loss, sum(rich.values())), rich, pending, limit=rich, taken=taken)
        caps.lower(taken)
        pools.count(asset, taken)
        return got

    def _touched(self, key: bytes, asset: str) -> bool:
        """Whether a trade or withdrawal of this block touched key's asset book."""
        return (key, asset) in self.touched or (self._cols is not None and self._cols.is_touched(key, asset))

    def _carrier(self, key: bytes, asset: str, cascade: "_Cascade") -> bool:
        """Step 5: whether key's book in asset may be charged past its equity, then liquidated at
        this mark in turn: not liquidated by it yet, untouched by the block, and holding a position
        in the asset or having held one this mark settled."""
        return ((key, asset) not in cascade.done and not self._touched(key, asset)
                and (self._holds(key, asset) or (key, asset) in cascade.settled))

    def _holds(self, key: bytes, asset: str) -> bool:
        """Whether key holds a position settling in asset."""
        return any(self.series[i].asset == asset for i in self.accounts[key].positions)

    def _room(self, key: bytes, asset: str) -> int:
        """What a socialized loss may take from key's asset book: its equity in the asset (cash plus
        size x the value of one contract at the last mark, over its positions settling in asset),
        not below 0. Charging more would leave it bankrupt, and one with no position in the asset
        (fully deleveraged, or settled) a debt no later mark would ever collect."""
        acct = self.accounts[key]
        equity = acct.collateral.get(asset, 0)
        for i, n in acct.positions.items():
            if self.series[i].asset == asset:
                equity += n * self._value(i)
        return max(equity, 0)

    def _charge(self, asset: str, loss: int, weights: dict[bytes, int], pending=frozenset(), limit: dict | None = None,
                taken: dict | None = None) -> int:
        """Up to loss quanta of asset taken from the accounts of weights in proportion to them (the
        rounding remainder one quantum each to the largest weights, then by key), none beyond its
        room (_room) but the books of pending, which this mark liquidates later (they pass their
        share on at their turn): whom the proportion would take past its room gives its room,
        and the rest is shared by the others in proportion again. Exact integers in a fixed order
        (by room / weight, then key), so every validator takes the same quanta. Returns what was
        taken: loss, unless every account of weights gave all its room. limit: at most so much from
        each (its room the smaller of the two; of pending: the limit); taken: filled with what was
        taken from each."""
        room = {h: None if h in pending else self._room(h, asset) for h in weights}
        if limit is not None:
            room = {h: limit[h] if r is None else min(r, limit[h]) for h, r in room.items()}
        take: dict[bytes, int] = {}
        left, total = loss, sum(weights.values())
        # the proportion only grows as accounts give all their room: the first whose share fits
        # leaves everyone after it (a larger room per weight) fitting too. When every share fits
        # (the usual case) the first in that order fits: nothing to sort.
        if any(r is not None and r * total < left * weights[h] for h, r in room.items()):
            for h in sorted((h for h in weights if room[h] is not None), key=lambda h: (Fraction(room[h], weights[h]), h)):
                if room[h] * total >= left * weights[h]:
                    break
                take[h] = room[h]
                left, total = left - room[h], total - weights[h]
        rest = [h for h in weights if h not in take]
        if left and rest:
            shares = {h: left * weights[h] // total for h in rest}
            extra = left - sum(shares.values())  # below the number of shares with a fraction: each has room
            order = [(-weights[h], h) for h in rest]  # popped in sorted order, only as far as needed
            heapq.heapify(order)
            while extra and order:
                h = heapq.heappop(order)[1]
                if room[h] is None or shares[h] < room[h]:
                    shares[h] += 1
                    extra -= 1
            take.update(shares)
            left = extra
        for h in sorted(take):
            if take[h]:
                _credit(self._mut(h), asset, -take[h])
        if taken is not None:
            taken.update(take)
        return loss - left

    # ---- the commitment and its invariants -------------------------------------------------------
    @staticmethod
    def _leaf(key: bytes, a: Account) -> bytes:
        col = a.collateral
        parts = [key, a.nonce.to_bytes(8, "big"), len(col).to_bytes(1, "big")]
        for name in sorted(col):
            parts += (_name8(name), col[name].to_bytes(16, "big", signed=True))
        for i in sorted(a.positions):
            parts += (i.to_bytes(4, "big"), a.positions[i].to_bytes(8, "big", signed=True))
        return b"".join(parts)

    def leaves(self) -> list[bytes]:
        """Every account's leaf, in slot (registration) order: key 32 | nonce u64 | assets u8, then
        (asset 8 zero-padded | quanta i128) sorted by asset | (series u32 | size i64) sorted by
        series. The state tree's leaves, for audits and tests (the root is kept incrementally)."""
        self._flush()
        out: list = [None] * len(self.accounts)
        for k, a in self.accounts.items():  # slots are 0..n-1: placed, not sorted (a million accounts)
            out[a.slot] = self._leaf(k, a)
        return out

    def globals_leaves(self) -> list[bytes]:
        """Everything in the state but the accounts, as leaves (docs/CLEARING.md, "State root"):
        per asset its insurance fund and its supply, the height, per underlying its last mark
        (with each open series' value at it) and its circuit breaker's window, per settled series
        its fixing. With the account leaves, enough to rebuild the state (clearing_snapshot)."""
        out = self._head_leaves()
        out += [_mark_leaf(und, m) for und, m in sorted(self.marks.items())]
        return out + self._after_marks()

    def _after_marks(self) -> list[bytes]:
        return self._breaker_leaves() + [_fixing_leaf(i, q) for i, q in sorted(self.fixings.items())]

    def _breaker_leaves(self) -> list[bytes]:
        return [b"breaker" + _name8(und) + struct.pack(">H", len(window))
                + b"".join(struct.pack(">Qdd", *w) for w in window) + self.halted.get(und, "").encode()
                for und, window in sorted(self.history.items())]

    def _listed(self, underlying: str) -> dict:
        """The listed series of underlying ({id: Series}), kept per series dict (list_series
        replaces it, never changes it): a mark's form check built it from every listed series,
        0.3 ms a mark at 2,000 options, more than the signatures it saves (review s22)."""
        series, by = self._listed_by
        if series is not self.series:
            by = {}
            for i, s in self.series.items():
                by.setdefault(s.underlying, {})[i] = s
            self._listed_by = (self.series, by)
        return by.get(underlying, {})

    def _globals_hashes(self) -> list[bytes]:
        """leaf_hash of each of globals_leaves(); a mark's leaf (every open series' vol and value
        at it: 65 KB at 2,000 listed options, encoded and hashed at every block) hashed once, kept
        with the mark (never changed) in a cache the versions share, and so is a settled series'
        fixing leaf (2,000 settled options re-encoded and re-hashed at every block took 2.6-10.8 ms
        of an empty one: review s22). Each cache holds a few entries per underlying or series."""
        cache = self._mark_hashes
        marks = []
        for und, m in sorted(self.marks.items()):
            hit = cache.get((und, id(m)))
            if hit is None or hit[0] is not m:
                if len(cache) > 64 + 4 * len(self.marks):
                    cache.clear()
                hit = cache[(und, id(m))] = (m, leaf_hash(_mark_leaf(und, m)))
            marks.append(hit[1])
        fixed, fixings = self._fixing_hashes, []
        for i, q in sorted(self.fixings.items()):
            h = fixed.get((i, q))
            if h is None:
                if len(fixed) > 64 + 2 * len(self.series):
                    fixed.clear()
                h = fixed[(i, q)] = leaf_hash(_fixing_leaf(i, q))
            fixings.append(h)
        return ([leaf_hash(x) for x in self._head_leaves()] + marks + [leaf_hash(x) for x in self._breaker_leaves()]
                + fixings)

    def _head_leaves(self) -> list[bytes]:
        out = [b"insurance" + _amounts({a: q}) for a, q in sorted(self.funds.items())]
        out += [b"supply" + _amounts({a: q}) for a, q in sorted(self.supply.items())]
        return out + [b"height" + self.height.to_bytes(8, "big")]

    def state_root(self, sha256_many) -> bytes:
        """inner_hash(accounts root, globals root) (docs/CLEARING.md, "State root"): the accounts'
        tree updated for the accounts changed since it last was (their leaves and ancestors,
        hashed by sha256_many, rows of a 2-D uint8 array to an (n, 32) array), the few global
        leaves hashed whole."""
        self._flush()
        if self.dirty:
            if self._cash_fresh:  # noted for the next use, not synced: a sync at every block cost
                # more than the block's validation (20,000 accounts, two assets: 140-260 ms)
                self._cash_changed += (frozenset(self._cash_fresh),)
                self._cash_count += len(self._cash_fresh)
                self._cash_fresh = set()
                if len(self._cash_changed) >= 64 or self._many_changed(self._cash_count):
                    # folded: an account changed in many blocks counted once
                    self._cash_changed = (frozenset().union(*self._cash_changed),)
                    self._cash_count = len(self._cash_changed[0])
                if self._many_changed(self._cash_count):  # cheaper to rebuild at the next use
                    self._cash, self._cash_changed, self._cash_count = {}, (), 0
            leaves = self._leaves
            changed = {(a := self.accounts[k]).slot: leaves[k] if k in leaves else self._leaf(k, a) for k in self.dirty}
            self.tree.update(changed, len(self.accounts), sha256_many)
            self.dirty, self._leaves = set(), {}
        return inner_hash(self.tree.root, root_of_leaf_hashes(self._globals_hashes()))

    def root(self) -> bytes:
        return self.state_root(Verifier("accel", self.backend).sha256_rows)

    def account_proof(self, key: bytes, sha256_many=None) -> tuple[bytes, MerkleProof, bytes, bytes]:
        """(the account's leaf, its proof in the accounts' tree, that tree's root, the globals root):
        verify_merkle_proof(accounts_root, leaf, proof) and inner_hash(accounts_root, globals_root)
        == the state root of the block this state belongs to. KeyError for an unknown account."""
        self._flush()
        acct = self.accounts[key]
        self.state_root(sha256_many or Verifier("accel", self.backend).sha256_rows)
        return self._leaf(key, acct), self.tree.proof(acct.slot), self.tree.root, hashlib_root(self.globals_leaves())

    def violations(self) -> list[str]:
        """Every ledger invariant of docs/CLEARING.md that does not hold (an empty list: all do).
        Reads the whole state: for tests and audits, not for every block."""
        self._flush()
        out = []
        for a in sorted(self.assets):
            cash = sum(acct.collateral.get(a, 0) for acct in self.accounts.values())
            if cash + self.funds[a] != self.supply[a]:
                out.append(f"{a}: account cash {cash} + fund {self.funds[a]} != supply {self.supply[a]}")
            if self.funds[a] < 0:
                out.append(f"{a}: insurance fund {self.funds[a]} below zero")
        self._sync_cash()
        for a, idx in sorted(self._cash.items()):
            rich = {k: q for k, acct in self.accounts.items() if (q := acct.collateral.get(a, 0)) > 0}
            if idx.sizes() != rich:
                out.append(f"{a}: the kept order of the positive balances (step 6's) differs from the balances")
        for i in sorted(self.series):
            held = {k: a.positions[i] for k, a in self.accounts.items() if i in a.positions}
            if sum(held.values()):
                out.append(f"series {i}: open interest sums to {sum(held.values())}, not 0")
            if set(held) != self.holders.get(i, set()):
                out.append(f"series {i}: the holders index differs from the positions")
            if i in self._sizes and self._sizes[i].sizes() != held:
                out.append(f"series {i}: the kept order of its holders (auto-deleveraging's) differs from the positions")
            if i in self.fixings and held:
                out.append(f"series {i}: settled but still held")
        for k, acct in self.accounts.items():
            if any(q == 0 for q in acct.collateral.values()) or any(n == 0 for n in acct.positions.values()):
                out.append(f"account {k.hex()[:16]}: a zero balance or position is stored")
            books = {self.series[i].asset for i in acct.positions}
            for a, q in sorted(acct.collateral.items()):
                if q < 0 and a not in books:  # no mark would ever liquidate it: a debt nobody collects
                    out.append(f"account {k.hex()[:16]}: {a} cash {q} below zero with no position in {a}")
        return out
