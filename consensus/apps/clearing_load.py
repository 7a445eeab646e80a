"""A clearing market for simulations and load: the genesis (oracles and listed series) and a
deterministic stream of signed transactions (registrations, deposits, oracle marks, trades) that
apply in order: accounts hold ample collateral and trade one contract at a time, so no nonce is
ever left behind by a refused transaction."""
from __future__ import annotations

import random

from nacl.signing import SigningKey

from accel.risk import CALL, FUTURE, PUT

from . import clearing_tx as ctx
from .clearing import QUANTUM, Clearing, Series

T0 = 1_800_000_000
DAY = 24 * 3600
USD = int(round(1 / QUANTUM))
ORACLES = [SigningKey(bytes([200 + i]) * 32) for i in range(3)]
SERIES = [Series(1, "BTC", CALL, 60_000.0, T0 + 30 * DAY), Series(2, "BTC", PUT, 55_000.0, T0 + 30 * DAY),
          Series(3, "BTC", CALL, 70_000.0, T0 + 90 * DAY), Series(4, "BTC", FUTURE, 0.0, T0 + 90 * DAY)]


def genesis_market(backend=None) -> Clearing:
    c = Clearing([bytes(k.verify_key) for k in ORACLES], quorum=2, backend=backend, insurance=10**6 * USD)
    for s in SERIES:
        c.list_series(s)
    return c


class ClearingLoad:
    def __init__(self, seed: int, users: int = 16):
        self.rng = random.Random(seed)
        self.users = [SigningKey(self.rng.randbytes(32)) for _ in range(users)]
        self.keys = [bytes(u.verify_key) for u in self.users]
        self.nonces = [0] * users
        self.sequence, self.timestamp, self.index = 0, T0, 60_000.0
        self.taken = 0  # transactions after the setup
        self.pending = [self._signed(ctx.register(k), [u]) for k, u in zip(self.keys, self.users)]
        for i in range(users):
            self.pending.append(self._signed(ctx.deposit(self.keys[i], 0, 10**7 * USD), [self.users[i]]))
            self.nonces[i] = 1
        self.pending.append(self._mark())

    @staticmethod
    def _signed(body: bytes, signers: list) -> tuple[bytes, list[bytes]]:
        return body, [k.sign(body).signature for k in signers]

    def _mark(self):
        self.sequence += 1
        self.timestamp += 60
        self.index *= 1 + self.rng.uniform(-0.01, 0.01)
        vols = {s.id: round(self.rng.uniform(0.5, 0.8), 4) for s in SERIES if s.kind != FUTURE}
        oracles = ORACLES[:2] if self.sequence % 2 else ORACLES[1:]
        return self._signed(ctx.mark("BTC", self.index, self.sequence, self.timestamp, vols,
                                     [bytes(k.verify_key) for k in oracles]), oracles)

    def take(self, count: int, mark_every: int | None = None) -> list[tuple[bytes, list[bytes]]]:
        """The next count transactions: setup first, then trades with an oracle mark at random
        one time in 20, or every mark_every-th transaction."""
        out = []
        while len(out) < count:
            if self.pending:
                out.append(self.pending.pop(0))
                continue
            self.taken += 1
            if (self.rng.random() < 0.05) if mark_every is None else (self.taken % mark_every == 0):
                out.append(self._mark())
                continue
            a, b = self.rng.sample(range(len(self.users)), 2)
            series = self.rng.choice(SERIES).id
            body = ctx.trade(self.keys[a], self.nonces[a], self.keys[b], self.nonces[b], series, 1,
                             self.rng.randint(100, 5_000) * USD)
            self.nonces[a] += 1
            self.nonces[b] += 1
            out.append(self._signed(body, [self.users[a], self.users[b]]))
        return out
