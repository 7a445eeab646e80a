"""Review of the last five columnar commits (legs read from wire bodies, leaves encoded at write-back
and cached for the state root, marks reading accounts in working-set row order, int64 position
sums under a float64 bound, holders updated per series, accounts loaded in one pass) from an
attacker's side: every block is executed by the columnar engine and by the one-by-one engine
(apply_run declining every run) and must give the same verdict, reason, leaves, globals,
liquidations and holders; every state's incrementally kept root (with the cached leaves) must be
the root rebuilt from every leaf.

Covered here, all holding on the reviewed code:
- keys sharing their first 8 bytes (the working set's index): valid Ed25519 points built to
  collide with a user's key and with each other (a birthday search of 2^32 key pairs finds such a
  pair for an attacker who signs), registered in shuffled order so working-set rows, slots and key
  order all differ;
- legs read from bodies against legs read from fields, for any encodable field values;
- write-back leaves for any column contents (negative and near-2^62 cash, nonces at 2^62, positions
  at +-MAX_POSITION and beyond, series 0 and 2^32 - 1) against Clearing._leaf;
- position sums near 2^61..2^64 against Python integers, and books worth more than 2^63 quanta
  margined and liquidated by marks both ways;
- cached leaves through settlement at expiry, liquidation, registration, snapshot / restore,
  forks (siblings and half-applied blocks on one parent) and proposals filled several times;
- hash-seed independence of the roots (row assignment follows set iteration order);
- submit_many / propose / validate on marks without signers and odd items."""
import contextlib
import hashlib
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import accel
from accel import Packed
from accel.packing import pack_messages
from accel.merkle import hashlib_root, inner_hash, merkle_root
from consensus.apps import clearing_snapshot
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing import MAX_POSITION, MAX_PRICE, MAX_SIZE, Account, Mark, _sums_fit
from consensus.apps.clearing_app import ClearingApp, Pending, State
from consensus.apps.clearing_columns import _legs, apply_run
from consensus.messages import Txs as BlockTxs
from consensus.verify import Verifier
from tests.test_clearing_columns import funded_genesis, outcome, sequential
from tests.test_clearing_properties import K, O, T0, USD, block_of, genesis

BTC_CALL, BTC_PUT, BTC_FUT, INV_CALL, INV_FUT, ETH_FUT, ETH_PUT = 1, 2, 3, 4, 5, 6, 7
VOLS = {"BTC": {1: 0.7, 2: 0.7, 4: 0.7}, "ETH": {7: 0.7}}
PRICE = {1: 3_000 * USD, 2: 1_000 * USD, 3: 60_000 * USD, 4: 5 * USD // 100, 5: 60_000 * USD, 6: 3_000 * USD,
         7: 150 * USD}


pytestmark = pytest.mark.usefixtures("quiet_logs")


# ---- keys whose first 8 bytes collide -------------------------------------------------------------

_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P


def _on_curve(y: int) -> bool:
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x2 = u * pow(v, _P - 2, _P) % _P
    return x2 == 0 or pow(x2, (_P - 1) // 2, _P) == 1


def colliding(prefix: bytes, n: int) -> list[bytes]:
    """n valid, safe Ed25519 public keys whose first 8 bytes are prefix (canonical y, sign bit 0)."""
    out, hi = [], 1
    while len(out) < n:
        y = int.from_bytes(prefix + hi.to_bytes(24, "little"), "little")
        hi += 1
        if y < _P and _on_curve(y):
            key = y.to_bytes(32, "little")
            if accel.ed25519_key_is_safe(key, backend="cpu"):
                out.append(key)
    return out


EXTRA = colliding(K[0][:8], 3) + colliding(K[1][:8], 2)
ALL = list(K) + EXTRA


def test_the_constructed_keys_collide_and_register():
    assert len({k[:8] for k in EXTRA}) == 2 and len(set(ALL)) == len(ALL)
    assert all(k[:8] == K[0][:8] for k in EXTRA[:3]) and all(k[:8] == K[1][:8] for k in EXTRA[3:])
    c = genesis()
    for k in ALL:
        c.register(k)
    assert len(c.accounts) == len(ALL)


def market(seed: int, rich: bool = False):
    """The property tests' market with the five users and the five colliding keys registered in a
    shuffled order (so slots, working-set rows and key order differ), funded, first marks."""
    rng = random.Random(seed)
    c = genesis()
    order = list(range(len(ALL)))
    rng.shuffle(order)
    for j in order:
        c.register(ALL[j])
    for j in order:
        c.deposit(ALL[j], 0, "USD", (10**9 if rich else rng.choice([30_000, 200_000, 5_000_000, 10**9])) * USD)
        c.deposit(ALL[j], 1, "BTC", USD * rng.randint(1, 1000))
    for und, index in (("BTC", 60_000.0), ("ETH", 3_000.0)):
        c.mark(und, index, VOLS[und], 1, T0 + 60, O[:2])
    return c


def make_app(c, **kw) -> ClearingApp:
    return ClearingApp(Verifier("accel", "cpu"), c, **kw)


def rebuilt_root(c) -> bytes:
    return inner_hash(merkle_root(c.leaves(), backend="cpu"), hashlib_root(c.globals_leaves()))


def both(app, parent, txs):
    """The same outcome columnar and one by one (tests.test_clearing_columns.both, strict)."""
    columnar = outcome(app, parent, txs)
    with sequential():
        one_by_one = outcome(app, parent, txs)
    assert columnar == one_by_one
    return columnar


def block(rng, state, count, decoded=True):
    """Random transactions on top of state, built on a scratch copy so most apply; a few refused
    ones are kept on purpose. Sizes, prices and amounts reach the wire's limits now and then."""
    scratch = state.snapshot()
    scratch.defer = True
    scratch.begin_block()
    out = []
    for _ in range(count):
        nonce = {k: a.nonce for k, a in scratch.accounts.items()}
        skew = rng.choice([0] * 40 + [1, -1])
        r = rng.random()
        if r < 0.6:
            i, j = rng.sample(range(len(ALL)), 2)
            sid = rng.choice(list(PRICE))
            size = rng.choice([1, 1, 2, 3, 10] * 8 + [1000, 10**6, MAX_SIZE])
            price = (int(PRICE[sid] * rng.choice([0.5, 0.9, 1.0, 1.1, 2.0])) if rng.random() < 0.9
                     else rng.choice([0, 1, MAX_PRICE]))
            price = max(price, 1) if sid == INV_FUT else price
            body = ctx.trade(ALL[i], (nonce[ALL[i]] + skew) % 2**64, ALL[j], nonce[ALL[j]], sid, size, price)
        elif r < 0.75:
            i = rng.randrange(len(ALL))
            body = ctx.deposit(ALL[i], (nonce[ALL[i]] + skew) % 2**64, rng.choice(["USD", "BTC"]),
                               rng.choice([1, USD, 10**6 * USD, 10**18]))
        elif r < 0.88:
            i = rng.randrange(len(ALL))
            body = ctx.withdraw(ALL[i], (nonce[ALL[i]] + skew) % 2**64, rng.choice(["USD", "BTC"]),
                                rng.choice([1, USD, 1000 * USD, 10**5 * USD]))
        else:
            und = rng.choice(["BTC", "ETH"])
            last = scratch.marks[und]
            index = min(max(last.index * rng.choice([0.5, 0.8, 0.97, 1.0, 1.03, 1.25, 2.0]), 1e-4), 1e8)
            vols = {i: v for i, v in VOLS[und].items() if i not in scratch.fixings}
            body = ctx.mark(und, index, last.sequence + 1, last.timestamp + rng.choice([60, 600, 3600, 4 * 3600]),
                            vols, O[:2])
        tx = ctx.decode(body)
        if not decoded:
            tx = ctx.Tx(tx.op, tx.fields, tx.signers)
        try:
            ctx.apply(scratch, tx)
        except ValueError:
            if rng.random() < 0.93:
                continue
        out.append(tx)
    return out


def advance(app, parent, txs):
    """The state after the longest prefix of txs that applies (both ways the same at each cut
    tried), root checked against the rebuilt one; parent if none applies."""
    for cut in range(len(txs), 0, -1):
        result = both(app, parent, txs[:cut])
        if result[0] == "ok":
            state, _ = app._run(parent, txs[:cut])
            c = state.clearing
            state.root = c.state_root(app.verifier.sha256_rows)
            assert state.root == rebuilt_root(c) == result[1]
            assert c.violations() == []
            return state
    return parent


def test_colliding_keys_in_shuffled_slots_execute_the_same_both_ways():
    """Random blocks over ten accounts, five of them sharing their first 8 bytes with a user's
    key (and each other), trades between every pair, marks that settle and liquidate, bodies and
    fields-built transactions: the same outcome both ways, roots rebuilt from the leaves."""
    accepted = 0
    for seed in range(30):
        rng = random.Random(seed)
        app = make_app(market(seed))
        parent = app.genesis
        for _ in range(6):
            txs = block(rng, parent.clearing, rng.randint(2, 50), decoded=rng.random() < 0.8)
            nxt = advance(app, parent, txs)
            accepted += nxt is not parent
            parent = nxt
    assert accepted >= 100


def test_a_mark_reading_accounts_in_row_order_liquidates_in_key_order():
    """Working-set rows made the reverse of key order (the highest keys reached first by a run),
    then a crash that leaves several books below maintenance: the same liquidations, in key
    order, both ways."""
    c = market(3)
    for k in ALL:  # thin books: 30,000 USD each
        acct = c._mut(k)
        c.supply["USD"] += 30_000 * USD - acct.collateral["USD"]
        acct.collateral["USD"] = 30_000 * USD
    app = make_app(c)
    keys = sorted(ALL, reverse=True)
    nonce = {k: c.accounts[k].nonce for k in ALL}

    def n(k):
        nonce[k] += 1
        return nonce[k] - 1
    txs = [ctx.Tx(ctx.DEPOSIT, (k, n(k), "USD", 1), (k,)) for k in keys]
    for a, b in zip(keys[::2], keys[1::2]):  # longs and shorts of the future, pairwise
        txs.append(ctx.Tx(ctx.TRADE, (a, n(a), b, n(b), BTC_FUT, 2, 60_000 * USD), (a, b)))
    assert both(app, app.genesis, txs)[0] == "ok"
    s = advance(app, app.genesis, txs)
    last = s.clearing.marks["BTC"]
    crash = ctx.decode(ctx.mark("BTC", 45_000.0, last.sequence + 1, last.timestamp + 600, VOLS["BTC"], O[:2]))
    txs = [ctx.Tx(ctx.DEPOSIT, (k, s.clearing.accounts[k].nonce, "USD", 1), (k,)) for k in keys[:2]]
    result = both(app, s, txs + [crash])
    assert result[0] == "ok"
    liquidated = [x.account for x in result[4]]
    assert len(liquidated) >= 2 and liquidated == sorted(liquidated)


# ---- legs from bodies ---------------------------------------------------------------------------

edge_u64 = st.sampled_from([0, 2**62 - 1, 2**62, 2**63, 2**64 - 1])
nonce = st.one_of(*[st.integers(0, 50)] * 12, edge_u64, st.integers(0, 2**64 - 1))
size = st.one_of(*[st.integers(1, 1000)] * 8, st.integers(1, MAX_SIZE),
                 st.sampled_from([0, MAX_SIZE, MAX_SIZE + 1, 2**32 - 1]))
price = st.one_of(*[st.integers(1, 10**13)] * 8, st.integers(1, MAX_PRICE), st.integers(1, 10**6),
                  st.sampled_from([0, 1, 2, MAX_PRICE, MAX_PRICE + 1, 2**64 - 1]))
series = st.one_of(*[st.sampled_from([1, 2, 3, 4, 5, 6, 7])] * 12, st.sampled_from([0, 8, 99, 2**32 - 1]))
amount = st.one_of(*[st.integers(1, 10**18)] * 12, st.sampled_from([0, 10**18 + 1, 2**63, 2**64 - 1]))
who = st.integers(0, len(ALL) - 1)
trade_fields = st.tuples(st.just(ctx.TRADE), who, nonce, who, nonce, series, size, price)
move_fields = st.tuples(st.sampled_from([ctx.DEPOSIT, ctx.WITHDRAW]), who, nonce,
                        st.sampled_from(["USD"] * 6 + ["BTC"] * 3 + ["ETH", "ZZZZZZZZ", "A"]), amount)


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.one_of(trade_fields, move_fields), min_size=1, max_size=6))
def test_legs_from_bodies_equal_legs_from_fields_for_any_field_values(items):
    """_legs on decoded transactions (records read from the bodies) and on the same transactions
    built from their fields (encoded again) agree, and where a run is not declined each leg is
    the transaction's own field: keys, nonces, series, sizes, flows and assets."""
    state = market(1).snapshot()
    state.defer = True
    bodies = []
    for it in items:
        if it[0] == ctx.TRADE:
            _, b, bn, s, sn, series, size, p = it
            bodies.append(ctx.trade(ALL[b], bn, ALL[s], sn, series, size, p))
        else:
            op, k, n, asset, q = it
            bodies.append((ctx.deposit if op == ctx.DEPOSIT else ctx.withdraw)(ALL[k], n, asset, q))
    decoded = [ctx.decode(b) for b in bodies]
    built = [ctx.Tx(t.op, t.fields, t.signers) for t in decoded]
    a, b = _legs(state, state.columns(), decoded), _legs(state, state.columns(), built)
    assert (a is None) == (b is None)
    if a is None:
        return
    for name in ("key_bytes", "nonce", "asset", "flow", "series", "size", "kind", "shrink"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    cols = state.columns()
    j = 0
    for t in decoded:
        f = t.fields
        if t.op == ctx.TRADE:
            s = state.series[f[4]]
            flow = (-((f[5] * 10**16 + f[6] // 2) // f[6]) if s.inverse and s.kind == 8 else f[6] * f[5])
            for leg, (key, nonce, sign) in enumerate(((f[0], f[1], 1), (f[2], f[3], -1))):
                assert a.key_bytes[j + leg].tobytes() == key and a.nonce[j + leg] == nonce
                assert a.series[j + leg] == f[4] and a.size[j + leg] == sign * f[5]
                assert a.flow[j + leg] == -sign * flow and a.asset[j + leg] == cols.asset_col[s.asset]
            j += 2
        else:
            assert a.key_bytes[j].tobytes() == f[0] and a.nonce[j] == f[1] and a.kind[j] == t.op
            assert a.flow[j] == (f[3] if t.op == ctx.DEPOSIT else -f[3]) and a.asset[j] == cols.asset_col[f[2]]
            j += 1
    assert j == len(a.kind)


# ---- leaves encoded at write-back ------------------------------------------------------------------

cash_value = st.one_of(st.just(0), st.integers(-(2**62) + 1, 2**62 - 1),
                       st.sampled_from([1, -1, 2**62 - 1, -(2**62) + 1, 255, -256, 2**31, -(2**32)]))
size_value = st.one_of(st.just(0), st.integers(-MAX_POSITION, MAX_POSITION),
                       st.sampled_from([1, -1, MAX_POSITION, -MAX_POSITION, 2**62 - 1, -(2**62) + 1]))
row_contents = st.tuples(st.integers(0, 2**62), st.lists(cash_value, min_size=2, max_size=2),
                         st.dictionaries(st.sampled_from([0, 1, 3, 5, 7, 255, 256, 2**31, 2**32 - 1]), size_value,
                                         max_size=5), st.booleans())


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(row_contents, min_size=1, max_size=len(ALL)))
def test_write_back_leaves_are_the_leaf_encoding_for_any_column_contents(rows):
    """Columns holding any int64-exact contents (negative and near-2^62 cash, nonces up to 2^62,
    positions up to +-2^62 on series 0..2^32 - 1, some rows unchanged): every cached leaf is
    Clearing._leaf of the account written back, and the root with the cache is the rebuilt one."""
    c = market(2)
    c.root()
    state = c.snapshot()
    state.defer = True
    cols = state.columns()
    got = cols.rows(state, np.frombuffer(b"".join(ALL[:len(rows)]), np.uint8).reshape(-1, 32))
    assert got is not None
    for r, (nonce, cash, positions, changed) in zip(got.tolist(), rows):
        cols.nonce[r] = nonce
        cols.cash[r, :] = cash
        keys = np.array([(r << 32) | i for i in positions], np.int64)
        if len(keys):
            at = cols.lines(keys)  # (adds lines: cols.size is a new array after it)
            cols.size[at] = list(positions.values())
        cols.changed[r] = changed
    state._flush()
    for k, leaf in state._leaves.items():
        assert leaf == state._leaf(k, state.accounts[k])
    for k, (nonce, cash, positions, changed) in zip(ALL, rows):
        a = state.accounts[k]
        if changed:
            assert k in state._leaves and a.nonce == nonce
            assert a.collateral == {x: q for x, q in zip(sorted(state.assets), cash) if q}
            assert a.positions == {i: z for i, z in positions.items() if z}
    assert state.state_root(Verifier("accel", "cpu").sha256_rows) == rebuilt_root(state)


# ---- int64 sums ------------------------------------------------------------------------------------


def test_position_sums_are_exact_around_the_int64_bound():
    """_position_values against Python integers for sizes and values chosen so that accounts' sums
    of |size x value| fall just below and above 2^61, 2^62 and 2^63 (int64 only when _sums_fit)."""
    c = funded_genesis()
    rng = random.Random(5)
    fits = 0
    for trial in range(1500):
        n = rng.randint(1, 4)
        target = 2.0 ** rng.choice([60, 61, 61, 62, 63, 64]) * rng.choice([0.999999, 1.0, 1.000001, 0.5])
        vals = {i: rng.choice([-1, 1]) * rng.randint(1, 2**rng.randint(8, 62) - 1) for i in range(1, 8)}
        rows = []
        for o in range(n):
            ids = sorted(rng.sample(range(1, 8), rng.randint(1, 4)))
            for i in ids:
                z = max(1, min(int(target / len(ids) / abs(vals[i])), 2**62 - 1))
                rows.append((o, i, rng.choice([-1, 1]) * z))
        owner, ids, sizes = (np.array(x, np.int64) for x in zip(*rows))
        marks = {u: Mark(1.0, {}, 1, 1, {i: vals[i] for i in vals if c.series[i].underlying == u})
                 for u in ("BTC", "ETH")}
        got = c._position_values(n, (owner, ids, sizes), marks)
        want: dict = {}
        for o, i, z in rows:
            want.setdefault(c.series[i].asset, [0] * n)[o] += z * vals[i]
        for a, w in want.items():
            assert [int(x) for x in got[a].sums] == w, (trial, a)
        fits += _sums_fit(owner, sizes, np.array([vals[int(i)] for i in ids], np.int64))
    assert 100 < fits < 1400  # both sides of the bound exercised


@pytest.mark.parametrize("size", [384_307, 384_308, 768_614, 768_615, 1_537_228, 1_537_229])
def test_books_worth_around_2_61_to_2_63_quanta_are_margined_the_same_both_ways(size):
    """Two accounts with 3 * 10^18 quanta each trade a BTC future book worth size x 60,000 USD (the
    position sums cross 2^61, 2^62, 2^63 quanta), then marks value it; then a drop that the
    columnar run before it must not hide: the same outcome both ways."""
    c = funded_genesis()
    app = make_app(c)

    def txs_on(state, specs):
        nonce = {k: a.nonce for k, a in state.accounts.items()}
        out = []
        for s in specs:
            if s[0] == "dep":
                out.append(ctx.Tx(ctx.DEPOSIT, (K[s[1]], nonce[K[s[1]]], "USD", s[2]), (K[s[1]],)))
                nonce[K[s[1]]] += 1
            elif s[0] == "trade":
                b, x = K[s[1]], K[s[2]]
                out.append(ctx.Tx(ctx.TRADE, (b, nonce[b], x, nonce[x], s[3], s[4], s[5]), (b, x)))
                nonce[b] += 1
                nonce[x] += 1
            else:
                seq = max([t.fields[2] for t in out if t.op == ctx.MARK] + [state.marks["BTC"].sequence]) + 1
                ts = max([t.fields[3] for t in out if t.op == ctx.MARK] + [state.marks["BTC"].timestamp]) + 600
                out.append(ctx.decode(ctx.mark("BTC", s[1], seq, ts, VOLS["BTC"], O[:2])))
        return out
    g = app.genesis
    s1 = app._run(g, txs_on(g.clearing, [("dep", i, 10**18) for i in (0, 0, 0, 1, 1, 1)] + [("dep", 2, 1)]))[0]
    s1.root = s1.clearing.root()
    txs = txs_on(s1.clearing, [("trade", 0, 1, BTC_FUT, size, 60_000 * USD), ("dep", 2, 1), ("mark", 60_600.0),
                               ("trade", 1, 0, BTC_FUT, 1, 60_600 * USD), ("dep", 3, 1), ("mark", 59_000.0)])
    result = both(app, s1, txs)
    assert result[0] == "ok"
    s2, _ = app._run(s1, txs)
    s2.root = s2.clearing.root()
    assert s2.root == rebuilt_root(s2.clearing)
    eq = s2.clearing.equity([K[0], K[1]])
    assert eq[0]["USD"] + eq[1]["USD"] == 6 * 10**18 + sum(c.accounts[k].collateral["USD"] for k in K[:2])
    for index in (45_000.0, 43_000.0, 80_000.0):
        both(app, s2, txs_on(s2.clearing, [("dep", 2, 1), ("mark", index), ("dep", 3, 1)]))


# ---- cached leaves never outlive a change ------------------------------------------------------------


class Builder:
    """Transactions on top of a state, nonces and mark sequences tracked as they are built."""

    def __init__(self, state):
        self.nonce = {k: a.nonce for k, a in state.accounts.items()}
        self.seq = {u: m.sequence for u, m in state.marks.items()}
        self.ts = {u: m.timestamp for u, m in state.marks.items()}
        self.fixed = set(state.fixings)

    def _n(self, k):
        self.nonce[k] = self.nonce.get(k, 0) + 1
        return self.nonce[k] - 1

    def dep(self, k, q=1):
        return ctx.decode(ctx.deposit(k, self._n(k), "USD", q))

    def trade(self, b, s, series, size, p):
        return ctx.decode(ctx.trade(b, self._n(b), s, self._n(s), series, size, p))

    def register(self, k):
        return ctx.decode(ctx.register(k))

    def mark(self, und, index, dt=600):
        self.seq[und] += 1
        self.ts[und] += dt
        vols = {i: v for i, v in VOLS[und].items() if i not in self.fixed}
        return ctx.decode(ctx.mark(und, index, self.seq[und], self.ts[und], vols, O[:2]))


def test_cached_leaves_through_settlement_liquidation_registration_and_restore():
    """Blocks on states whose accounts were last written by the columns (leaves cached), each then
    changed by a rule that works one by one: a mark settling a series at expiry after a run changed
    its holders, a crash liquidating thin books, a registration mid-block followed by a run with
    the new account (its key colliding with a user's), each state's restored snapshot executing the
    next block. Every root equals the rebuilt one and both engines agree."""
    c = market(4, rich=True)
    newcomer = colliding(K[2][:8], 1)[0]
    thin = (K[4], EXTRA[0])
    for k in thin:
        acct = c._mut(k)
        c.supply["USD"] += 25_000 * USD - acct.collateral["USD"]
        acct.collateral["USD"] = 25_000 * USD
    app = make_app(c)
    steps = [
        lambda b: [b.dep(K[0]), b.trade(K[0], K[1], ETH_PUT, 3, 150 * USD),
                   b.trade(EXTRA[1], K[0], INV_CALL, 2, 5 * USD // 100),
                   b.trade(K[3], K[4], BTC_FUT, 2, 60_000 * USD), b.trade(K[2], EXTRA[0], BTC_FUT, 2, 60_000 * USD),
                   b.dep(K[1])],
        lambda b: [b.dep(K[1]), b.trade(K[1], K[0], ETH_PUT, 1, 150 * USD), b.mark("ETH", 2_900.0, 4 * 3600),
                   b.dep(K[0]), b.dep(K[1])],
        lambda b: [b.dep(K[3]), b.dep(K[2]), b.mark("BTC", 75_000.0), b.dep(K[3]),
                   b.trade(K[0], K[1], BTC_FUT, 1, 75_000 * USD)],
        lambda b: [b.dep(K[0]), b.register(newcomer), b.dep(newcomer, 10**6 * USD),
                   b.trade(newcomer, K[1], BTC_FUT, 1, 75_000 * USD), b.dep(K[0])],
        lambda b: [b.dep(K[0]), b.trade(newcomer, K[3], BTC_FUT, 1, 75_000 * USD), b.dep(K[3]),
                   b.mark("BTC", 74_000.0)],
    ]
    parent = app.genesis
    for step, make in enumerate(steps):
        txs = make(Builder(parent.clearing))
        result = both(app, parent, txs)
        assert result[0] == "ok", result
        state, _ = app._run(parent, txs)
        assert state.clearing._leaves  # the write-back's leaves, there to be used
        state.root = state.clearing.state_root(app.verifier.sha256_rows)
        assert state.root == rebuilt_root(state.clearing) == result[1]
        back = clearing_snapshot.restore(app.genesis.clearing, clearing_snapshot.encode(state.clearing), state.root,
                                         app.verifier.sha256_rows)
        parent = State(back, state.root) if step % 2 else state
        if step == 1:
            assert ETH_PUT in state.clearing.fixings
        if step == 2:
            assert {x.account for x in state.clearing.liquidations} == set(thin)
    assert parent.clearing.accounts[newcomer].positions == {BTC_FUT: 2}


def test_forks_and_half_applied_blocks_leave_the_parent_and_siblings_alone():
    """On each parent: three different blocks, and each of them again with a replayed transaction
    appended (refused after its runs were applied in columns); the parent's leaves, globals,
    holders and root unchanged, each sibling the same as when executed alone; the chain goes on
    from a sibling or from its restored snapshot."""
    def view(c):
        return (c.root(), c.leaves(), c.globals_leaves(), {i: set(h) for i, h in c.holders.items() if h})
    for seed in range(6):
        rng = random.Random(100 + seed)
        app = make_app(market(seed))
        parent = app.genesis
        for _ in range(4):
            before = view(parent.clearing)
            kids = []
            for _ in range(3):
                txs = block(rng, parent.clearing, rng.randint(3, 40))
                child = advance(app, parent, txs)
                if child is not parent:
                    kids.append((txs, child))
                with contextlib.suppress(ValueError):
                    app._run(parent, txs + txs[:1])
            assert view(parent.clearing) == before
            for _, child in kids:
                assert child.clearing.root() == child.root == rebuilt_root(child.clearing)
            if not kids:
                break
            _, child = rng.choice(kids)
            if rng.random() < 0.5:
                back = clearing_snapshot.restore(app.genesis.clearing, clearing_snapshot.encode(child.clearing),
                                                 child.root, app.verifier.sha256_rows)
                child = State(back, child.root)
            parent = child


# ---- proposals filled several times -------------------------------------------------------------------


def _hold(app, txs):
    """Transactions straight into the mempool (as submit_many admits them after their signatures
    verify: the colliding keys cannot sign, and signatures are not what is tested here)."""
    for tx in txs:
        body = tx.body
        sigs = [bytes([7]) * 64 for _ in tx.signers]
        app.mempool[hashlib.sha256(body).digest()] = Pending(body, sigs, tx, b"".join(sigs))


@pytest.mark.parametrize("max_txs", [64, 7])
def test_proposers_refilling_with_colliding_keys_build_the_same_blocks(max_txs):
    """Mempools of random transactions (some shuffled out of nonce order, accounts going short and
    held back, marks catching touched books) among the ten accounts: a columnar proposer and a
    one-by-one proposer build the same blocks, roots and refusals; their roots are the rebuilt ones;
    a validator accepts each block both ways with the proposer's root."""
    for seed in range(8):
        rng = random.Random(seed)
        apps = [make_app(market(seed), max_txs=max_txs) for _ in range(2)]
        validator = make_app(market(seed), max_txs=max_txs)
        parents = [a.genesis for a in apps]
        kept = 0
        for _ in range(4):
            txs = block(rng, parents[0].clearing, rng.randint(5, 60))
            if rng.random() < 0.3:
                rng.shuffle(txs)
            built, states, blocks = [], [], []
            for j, app in enumerate(apps):
                _hold(app, txs)
                with sequential() if j else contextlib.nullcontext():
                    txs_out, state = app.propose(parents[j], set())
                built.append((txs_out.bodies.data.tobytes(), txs_out.bodies.offsets.tobytes(), state.root,
                              dict(app.refused)))
                assert state.root == rebuilt_root(state.clearing)
                assert state.clearing.violations() == []
                states.append(state)
                blocks.append(txs_out)
            assert built[0] == built[1]
            kept += len(blocks[0])
            _hold(validator, txs)
            for one_by_one in (False, True):
                with sequential() if one_by_one else contextlib.nullcontext():
                    v = validator.validate(parents[0], block_of(blocks[0], parents[0].root, states[0].root, validator),
                                           ((), (), ()))
                assert v.ok and v.state.root == states[0].root, v.reason
            for j, app in enumerate(apps):
                app.committed(block_of(blocks[j], parents[j].root, states[j].root, app), states[j])
            validator.committed(block_of(blocks[0], parents[0].root, states[0].root, validator), states[0])
            parents = states
        assert kept > 0


# ---- hash seeds ------------------------------------------------------------------------------------------

_ROOTS = """
import random, hashlib, logging, sys
sys.path.insert(0, {root!r})
logging.disable(logging.CRITICAL)
from tests.test_columns_review_attacks import market, make_app, block
h = hashlib.sha256()
for seed in range(3):
    rng = random.Random(seed)
    app = make_app(market(seed))
    parent = app.genesis
    for _ in range(4):
        txs = block(rng, parent.clearing, 40)
        for cut in range(len(txs), 0, -1):
            try:
                state, _ = app._run(parent, txs[:cut])
            except ValueError:
                continue
            state.root = state.clearing.root()
            h.update(state.root)
            parent = state
            break
print(h.hexdigest())
"""


def test_roots_do_not_depend_on_the_hash_seed():
    """Working-set rows follow the order a mark's holders come out of a set (hash-seed dependent):
    the same blocks under three PYTHONHASHSEEDs reach the same roots."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _ROOTS.format(root=root)
    out = set()
    for seed in ("1", "2", "3"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        done = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        out.add(done.stdout.strip())
    assert len(out) == 1


# ---- nothing raises -------------------------------------------------------------------------------------


def test_marks_without_signers_and_odd_items_do_not_raise():
    app = make_app(funded_genesis())
    body = ctx.mark("BTC", 61_000.0, 5, T0 + 9_999, VOLS["BTC"], [])
    no_quorum = "mark signed by 0 oracle(s), 2 needed"  # (refused by the mempool since session 11)
    assert app.submit_many([(body, [])]) == [no_quorum]
    reasons = app.submit_many([(body, ()), (body, b""), (body, None), None, (b"\0\0\0\1\5BTC\0\0\0\0\0", []),
                               ("text", []), (body, [b"x" * 64]), (body, [b"x" * 64, "y"])])
    assert reasons[0] == reasons[1] == no_quorum and all(r.startswith("malformed") for r in reasons[2:])
    txs, state = app.propose(app.genesis, set())
    assert len(txs) == 0
    only = BlockTxs(Packed(*pack_messages([body])), np.zeros((0, 64), np.uint8))
    v = app.validate(app.genesis, block_of(only, bytes(32), bytes(32), app), ((), (), ()))
    assert not v.ok and "0 oracle(s)" in v.reason


def test_apply_run_declines_a_fields_built_transaction_it_cannot_encode():
    """Only decode gives a transaction a body; one built from fields is encoded again, and fields
    the wire cannot carry (a negative price, a nonce past u64, a bad asset name) decline the run
    (logged) instead of raising, and the one-by-one engine refuses the transaction."""
    app = make_app(funded_genesis())
    g = app.genesis.clearing
    n0, n1 = g.accounts[K[0]].nonce, g.accounts[K[1]].nonce
    for bad in (ctx.Tx(ctx.TRADE, (K[0], n0, K[1], n1, BTC_FUT, 1, -5), (K[0], K[1])),
                ctx.Tx(ctx.DEPOSIT, (K[0], 2**64, "USD", 1), (K[0],)),
                ctx.Tx(ctx.DEPOSIT, (K[0], n0, "U$D", 1), (K[0],)),
                ctx.Tx(ctx.WITHDRAW, (K[0], n0, "USD", -1), (K[0],))):
        txs = [ctx.Tx(ctx.DEPOSIT, (K[1], n1, "USD", 1), (K[1],)), bad]
        state = g.snapshot()
        state.defer = True
        assert apply_run(state, txs) is False
        result = both(app, app.genesis, txs)
        assert result[0] == "refused" and result[1].startswith("transaction 1:")


def test_account_objects_written_back_are_the_states_own():
    """Write-back gives the state new Account objects (its own, in _private): a child snapshot's
    change of one copies it, and the parent's account and cached leaf stay as they were."""
    app = make_app(funded_genesis())
    state = app.genesis.clearing.snapshot()
    state.defer = True
    n0, n1 = state.accounts[K[0]].nonce, state.accounts[K[1]].nonce
    assert apply_run(state, [ctx.Tx(ctx.DEPOSIT, (K[0], n0, "USD", 5), (K[0],)),
                             ctx.Tx(ctx.TRADE, (K[0], n0 + 1, K[1], n1, BTC_FUT, 1, 60_000 * USD), (K[0], K[1]))])
    state._flush()
    leaf = state._leaves[K[0]]
    acct = state.accounts[K[0]]
    assert isinstance(acct, Account) and state._private[K[0]] is acct
    child = state.snapshot()
    child.deposit(K[0], acct.nonce, "USD", 7)
    assert state.accounts[K[0]] is acct and state._leaves[K[0]] == leaf == state._leaf(K[0], acct)
    assert K[0] not in child._leaves
    assert state.root() == rebuilt_root(state) and child.root() == rebuilt_root(child)
