"""A clearing market for simulations, load and the demo: the genesis (oracles, the USD, BTC and ETH
assets, linear and inverse BTC and ETH series) and a deterministic stream of signed transactions
that all apply in order, so a validator restarted after n committed transactions resumes the
stream at n.

Who trades (each book is margined in its own asset, so an account trades the series of the
assets it deposited):
  market makers  a few accounts with deep USD collateral, the other side of every taker's trade;
                 the first quarter of them (at least one) also deposit BTC and ETH and make the
                 inverse markets
  takers         buy or sell 1-3 contracts of a random series of their book at the model price:
                 half deposit USD and trade the linear series, a quarter deposit BTC and trade the
                 inverse BTC series, a quarter ETH likewise (inverse options priced in coin,
                 inverse futures in lots of 10,000 USD of notional)
  leveraged      (with crash_after) USD accounts that each sell linear puts once, collateralised
                 just above initial margin, and never trade again: the crash liquidates them
One deposit per account and asset (coin makers: three), so the setup is about as long as with one
asset. Oracle marks come one time in 20 (or every mark_every-th transaction),
alternating BTC and ETH, the index on a random walk. With crash_after=n, the marks after the n-th
trade are a volatility crash: the index falls by `crash` (50%) and vols double, which liquidates the
leveraged accounts (USD books) and charges the USD insurance fund with the losses beyond their
collateral."""
from __future__ import annotations

import math
import random
import struct

import numpy as np
from nacl.signing import SigningKey

import accel
from accel.risk import CALL, FUTURE, PUT, MarginParams, Marks, Portfolio

from . import clearing_tx as ctx
from .clearing import QUANTUM, YEAR_S, Breakers, Clearing, Series

T0 = 1_800_000_000
DAY = 24 * 3600
USD = int(round(1 / QUANTUM))
# The demo's oracles, whose seeds are in this file: the built-in load signs its marks with them,
# so anyone can sign a mark for a genesis that names them (a validator takes them only with
# [node] load = "builtin"; node.NodeConfig refuses them as [clearing] oracles)
ORACLES = [SigningKey(bytes([200 + i]) * 32) for i in range(3)]
ORACLE_QUORUM = 2
SERIES = [Series(1, "BTC", CALL, 60_000.0, T0 + 30 * DAY), Series(2, "BTC", PUT, 55_000.0, T0 + 30 * DAY),
          Series(3, "BTC", CALL, 70_000.0, T0 + 90 * DAY), Series(4, "BTC", FUTURE, 0.0, T0 + 90 * DAY),
          Series(5, "ETH", CALL, 3_000.0, T0 + 30 * DAY), Series(6, "ETH", PUT, 2_700.0, T0 + 30 * DAY),
          Series(7, "ETH", CALL, 3_500.0, T0 + 90 * DAY), Series(8, "ETH", FUTURE, 0.0, T0 + 90 * DAY),
          # inverse (coin-settled): options priced in coin, futures sized in USD of notional
          Series(9, "BTC", CALL, 60_000.0, T0 + 30 * DAY, inverse=True), Series(10, "BTC", FUTURE, 0.0, T0 + 90 * DAY, inverse=True),
          Series(11, "ETH", CALL, 3_000.0, T0 + 30 * DAY, inverse=True), Series(12, "ETH", FUTURE, 0.0, T0 + 90 * DAY, inverse=True)]
START = {"BTC": 60_000.0, "ETH": 3_000.0}
COIN = USD  # quanta per coin (every asset counts in 1e-8)
MAKER_CASH, TAKER_CASH = 200_000_000 * USD, 10_000_000 * USD
# coin collateral of makers and takers: as much as their USD at the opening index
MAKER_COIN = {"BTC": 3_400 * COIN, "ETH": 67_000 * COIN}
TAKER_COIN = {"BTC": 170 * COIN, "ETH": 3_400 * COIN}
INVERSE_FUTURE_LOT = 10_000  # USD of notional per lot; a taker trades 1-3 lots
INSURANCE = {"USD": 10**6 * USD, "BTC": 20 * COIN, "ETH": 400 * COIN}
TAKER_BOOKS = ("USD", "USD", "BTC", "ETH")  # taker j's book: TAKER_BOOKS[j % 4]
TRADED = {a: [s.id for s in SERIES if s.asset == a] for a in ("USD", "BTC", "ETH")}  # the series of each book
LEVERAGED_SERIES, LEVERAGED_SIZE = 2, 5  # each leveraged account sells 5 BTC 55k puts
# collateral = initial margin of that position at the opening marks times this: enough for the
# marks that may follow in the same block, far from enough for the crash
LEVERAGED_CUSHION = 1.2


# Circuit breakers wide enough that the demo's 50% crash liquidates rather than halts; tests use tighter ones.
BREAKERS = Breakers(band=0.6, window=20)


def genesis_market(backend=None, oracles: list[bytes] | None = None, quorum: int = ORACLE_QUORUM) -> Clearing:
    """The market's genesis, its marks signed by a quorum of `oracles` (public keys; None: the
    demo's ORACLES, which anyone can sign for)."""
    oracles = [bytes(k.verify_key) for k in ORACLES] if oracles is None else list(oracles)
    c = Clearing(oracles, quorum=quorum, backend=backend, insurance=INSURANCE, breakers=BREAKERS)
    for s in SERIES:
        c.list_series(s)
    return c


def black76(f: float, s: Series, t: int, vol: float) -> float:
    """A quote in USD (the load's own pricing; validators never see it, only the price in the
    trade)."""
    if s.kind == FUTURE:
        return f
    years = max(s.expiry - t, 0) / YEAR_S
    sd = vol * math.sqrt(years)
    if sd == 0.0:
        return max(f - s.strike, 0.0) if s.kind == CALL else max(s.strike - f, 0.0)
    d1 = math.log(f / s.strike) / sd + sd / 2
    n = lambda x: 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))  # noqa: E731
    call = f * n(d1) - s.strike * n(d1 - sd)
    return call if s.kind == CALL else call - f + s.strike


class ClearingLoad:
    def __init__(self, seed: int, users: int = 16, crash_after: int | None = None, crash: float = 0.5,
                 leveraged: int = 0, chain: int = ctx.CHAIN_ID):
        self.rng = random.Random(seed)
        self.signing = True  # off while skip() passes over transactions
        self.chain = chain  # the network's chain id, signed into every body
        makers = max(1, users // 8)
        if users - makers - leveraged < 2:
            raise ValueError(f"{users} users leave fewer than 2 takers beside {makers} maker(s) and {leveraged} leveraged")
        self.users = [SigningKey(self.rng.randbytes(32)) for _ in range(users)]
        self.keys = [bytes(u.verify_key) for u in self.users]
        self.makers = list(range(makers))
        self.leveraged = list(range(makers, makers + leveraged))
        self.takers = list(range(makers + leveraged, users))
        self.coin_makers = self.makers[:max(1, makers // 4)]
        self.book = {t: TAKER_BOOKS[j % len(TAKER_BOOKS)] for j, t in enumerate(self.takers)}
        self.nonces = [0] * users
        self.crash_after, self.crash = crash_after, crash
        self.sequence, self.timestamp = {"BTC": 0, "ETH": 0}, T0
        self.index, self.vols = dict(START), {s.id: 0.6 for s in SERIES if s.kind != FUTURE}
        self.taken = 0  # transactions after the setup
        self.trades = 0
        self.crashed: set[str] = set()
        self.pending = [self._signed(ctx.register(k, self.chain), [u]) for k, u in zip(self.keys, self.users)]
        marks = [self._mark("BTC"), self._mark("ETH")]  # made first: the leveraged collateral depends on them
        put_margin = self._leveraged_margin() if leveraged else 0
        for i in range(users):
            if i in self.makers:
                deposits = [("USD", MAKER_CASH)] + (sorted(MAKER_COIN.items()) if i in self.coin_makers else [])
            elif i in self.takers:
                deposits = [("USD", TAKER_CASH)] if self.book[i] == "USD" else [(self.book[i], TAKER_COIN[self.book[i]])]
            else:
                deposits = [("USD", put_margin)]
            for asset, amount in deposits:
                self.pending.append(self._signed(ctx.deposit(self.keys[i], self.nonces[i], asset, amount, self.chain),
                                                 [self.users[i]]))
                self.nonces[i] += 1
        self.pending += marks
        for i in self.leveraged:
            self.pending.append(self._trade(self.makers[0], i, LEVERAGED_SERIES, LEVERAGED_SIZE))
        self.setup_size = len(self.pending)

    def _leveraged_margin(self) -> int:
        """Initial margin (quanta) of LEVERAGED_SIZE short puts at the opening marks, with the cushion."""
        s = next(x for x in SERIES if x.id == LEVERAGED_SERIES)
        f = self.index[s.underlying]
        marks = Marks(index=f, rate=0.0, forward=np.array([f]), strike=np.array([s.strike]),
                      expiry=np.array([(s.expiry - self.timestamp) / YEAR_S]), vol=np.array([self.vols[s.id]]),
                      kind=np.array([s.kind], np.uint8))
        res = accel.portfolio_margin(Portfolio(np.array([0, 1]), np.array([0]), np.array([-float(LEVERAGED_SIZE)])),
                                     marks, MarginParams(tick=QUANTUM), backend="cpu")
        return int(int(res.initial[0]) * LEVERAGED_CUSHION)

    def _signed(self, body: bytes, signers: list) -> tuple[bytes, list[bytes]]:
        return body, [k.sign(body).signature for k in signers] if self.signing else []

    def _mark(self, underlying: str):
        self.sequence[underlying] += 1
        self.timestamp += 60
        step = self.rng.uniform(-0.01, 0.01)
        if self.crash_after is not None and self.trades >= self.crash_after and underlying not in self.crashed:
            self.crashed.add(underlying)
            step = -self.crash
            for s in SERIES:
                if s.underlying == underlying and s.kind != FUTURE:
                    self.vols[s.id] *= 2.0
        self.index[underlying] *= 1 + step
        vols = {}
        for s in SERIES:
            if s.underlying == underlying and s.kind != FUTURE:
                self.vols[s.id] = round(min(max(self.vols[s.id] * (1 + self.rng.uniform(-0.02, 0.02)), 0.2), 3.0), 4)
                vols[s.id] = self.vols[s.id]
        oracles = ORACLES[:2] if self.sequence[underlying] % 2 else ORACLES[1:]
        return self._signed(ctx.mark(underlying, self.index[underlying], self.sequence[underlying], self.timestamp,
                                     vols, [bytes(k.verify_key) for k in oracles], self.chain), oracles)

    def _trade(self, buyer: int, seller: int, series: int, size: int):
        s = next(x for x in SERIES if x.id == series)
        f = self.index[s.underlying]
        price = black76(f, s, self.timestamp, self.vols.get(series, 0.0))
        if s.inverse and s.kind != FUTURE:  # the premium in coin, to 1e-6 coin
            quanta = max(int(round(price / f * 1e6)), 0) * (COIN // 10**6)
        else:  # USD, to the dollar (an inverse future's price is its USD futures price too)
            quanta = max(int(round(price)), 1 if s.inverse else 0) * USD
        if s.inverse and s.kind == FUTURE:
            size *= INVERSE_FUTURE_LOT
        body = ctx.trade(self.keys[buyer], self.nonces[buyer], self.keys[seller], self.nonces[seller], series, size,
                         quanta, self.chain)
        self.nonces[buyer] += 1
        self.nonces[seller] += 1
        return self._signed(body, [self.users[buyer], self.users[seller]])

    def take(self, count: int, mark_every: int | None = None) -> list[tuple[bytes, list[bytes]]]:
        """The next count transactions: the setup first (registrations, deposits, a mark per
        underlying, the leveraged accounts' trades), then trades with an oracle mark at random one
        time in 20, or every mark_every-th transaction."""
        out = []
        while len(out) < count:
            if self.pending:
                out.append(self.pending.pop(0))
                continue
            self.taken += 1
            if (self.rng.random() < 0.05) if mark_every is None else (self.taken % mark_every == 0):
                out.append(self._mark("BTC" if self.sequence["BTC"] <= self.sequence["ETH"] else "ETH"))
                continue
            taker = self.rng.choice(self.takers)
            book = self.book[taker]
            maker = self.rng.choice(self.makers if book == "USD" else self.coin_makers)
            buyer, seller = (taker, maker) if self.rng.random() < 0.5 else (maker, taker)
            out.append(self._trade(buyer, seller, self.rng.choice(TRADED[book]), self.rng.randint(1, 3)))
            self.trades += 1
        return out

    def skip(self, count: int) -> None:
        """Pass over the next count transactions, made as take() makes them but not signed: a
        restarted validator passes over what it committed (node.ClearingFeed.skip), and signing
        each again cost 40-70 us (hours before a start, after months of traffic)."""
        self.signing = False
        try:
            self.take(count)
        finally:
            self.signing = True


def market_load(seed: int, txs_per_block: int, crash_after_blocks: int, chain: int = ctx.CHAIN_ID) -> ClearingLoad:
    """The validators' market (accel localnet, the demo): 64 accounts, 8 of them market makers and
    8 leveraged put sellers, and the crash once crash_after_blocks blocks' worth of trades went by
    (0: none), signed for the network chain."""
    return ClearingLoad(seed, users=64, leveraged=8,
                        crash_after=crash_after_blocks * txs_per_block if crash_after_blocks else None, chain=chain)


# A stream file: the signed transactions, each as body length u32 | body | signatures u8 | 64 x that.
def write_stream(path, items) -> None:
    with open(path, "wb") as fh:
        for body, sigs in items:
            fh.write(struct.pack(">I", len(body)) + body + struct.pack(">B", len(sigs)) + b"".join(sigs))


class StreamFile:
    """Reads a stream file in order (clients signed it once; validators only verify)."""

    def __init__(self, path):
        self.fh = open(path, "rb")

    def take(self, count: int) -> list[tuple[bytes, list[bytes]]]:
        out = []
        while len(out) < count:
            head = self.fh.read(4)
            if len(head) < 4:
                break  # the stream is over: blocks go on empty
            body = self.fh.read(struct.unpack(">I", head)[0])
            n = self.fh.read(1)[0]
            sigs = self.fh.read(64 * n)
            out.append((body, [sigs[64 * i:64 * i + 64] for i in range(n)]))
        return out

    def skip(self, count: int) -> None:
        self.take(count)
