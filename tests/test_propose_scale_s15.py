"""ClearingApp.propose, fifteenth session: a proposal's work follows the block, not the mempool.
Before, every proposal listed the whole mempool, scanned it for quorum marks
(_quorum_marks_ahead) and for the marks and registrations that cut runs (_apply_fill): a block
of 10,000 deposits took 23 ms to propose from 10,000 pending and 67-73 ms from 100,000
(bench_clearing.py, test_propose_from_a_deep_mempool; 23 and 24 ms now). Now the
candidates are listed only as far as the first fill reaches (_Candidates), the marks moved ahead
come from the mempool's index of marks (Mempool.marks), and only the round-robin order (_fair,
an account weighing more than 1/FAIR_PART of a block) still reads every pending transaction.
What must not change: the block, its state, what leaves the mempool and why. The old propose is
kept here, as it was, to compare against (its fills are today's, on the whole list; marked s18,
the fills' refusals leaving the mempool with the block, but for what it keeps)."""
import hashlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from consensus.apps import clearing_app
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing_app import MARKS, ClearingApp, Mempool, Pending
from consensus.verify import Verifier
from tests.test_clearing_properties import O, ORACLES, T0, USD, genesis, signed
from tests.test_ledger_proposal_s6 import VOLS

pytestmark = pytest.mark.usefixtures("quiet_logs")

P = 60_000 * USD  # a BTC future's price (series 3)


# ---- the proposal as it was (d70987b), the reference ---------------------------------------------


def old_quorum_marks_ahead(candidates, state, room):
    oracles, quorum = set(state.oracles), state.quorum
    first = {}
    for place, (_, pending) in enumerate(candidates):
        tx = pending.tx
        if tx.op == ctx.MARK and tx.fields[0] not in first and len(oracles.intersection(tx.signers)) >= quorum:
            last = state.marks.get(tx.fields[0])
            if last is None or (tx.fields[2] > last.sequence and tx.fields[3] > last.timestamp):
                first[tx.fields[0]] = place
    ahead = set()
    while True:
        late = {p for p in first.values() if p not in ahead and p + sum(1 for q in ahead if q > p) >= room}
        if not late:
            break
        ahead |= late
    if not ahead:
        return candidates
    return [candidates[place] for place in sorted(ahead)] + [item for place, item in enumerate(candidates)
                                                            if place not in ahead]


def old_propose(self, parent, exclude):
    m = clearing_app
    self.marks_seen.last_handled = self.marks_seen.clock()
    candidates = [(h, p) for h, p in self.mempool.items() if h not in exclude] if exclude else \
        list(self.mempool.items())
    # (each account's moves in nonce order over their places, as every proposal lists them since review s21)
    candidates = list(m._nonce_order(iter(candidates), parent.clearing, self.mempool, set(exclude)))
    if len(candidates) > self.max_txs:
        if self.mempool.heaviest()[0] > self.max_txs // m.FAIR_PART:
            candidates = m._fair(candidates, parent.clearing, self.max_txs // max(1, len(self.mempool.count)))
        if MARKS in self.mempool.count:
            candidates = old_quorum_marks_ahead(candidates, parent.clearing, self.max_txs)
    held_back = set()
    refusing = {}  # s18: the fills' refusals leave the mempool with the block, but for what it keeps
    tail = []
    free = 0
    for attempt in range(m.MAX_PASSES + 3):
        if attempt == m.MAX_PASSES:
            candidates, free = m._marks_first(candidates)
        if attempt >= m.MAX_PASSES:
            held_back = m._trading_partners(candidates, held_back)
        lead = {"free": free} if free else {}
        fill = self._fill(parent, candidates, held_back, only_safe=attempt == m.MAX_PASSES + 2, **lead)
        if attempt == 0:
            refusing = self._early(fill.refused)
        if attempt in (0, m.MAX_PASSES) and fill.stop is not None:
            if attempt == 0:
                tail = candidates[fill.stop:]
            del candidates[fill.stop:]
        if fill.broken is None and not fill.short:
            break
        held_back.update(fill.short)
        self._evict_short(candidates, fill.kept, fill.short)
        if fill.broken is not None and fill.broken >= 0:
            self._evict({candidates[fill.broken][0]: "internal error while applying it (logged)"})
            candidates.pop(fill.broken)
            free -= fill.broken < free
        elif fill.broken is not None:
            held_back = {k for _, p in candidates for k in p.tx.signers}
    else:
        fill = self._fill(parent, [], set(), only_safe=True)
    kept = [candidates[p][1] for p in fill.kept]
    if fill.short or fill.broken is not None or len(kept) >= self.max_txs or not tail:
        return self._block(fill.state, kept, refusing)
    signed_ = held_back.union(*(p.tx.signers for p in kept))
    more = [c for c in tail if c[0] in self.mempool and c[1].tx.op != ctx.MARK
            and signed_.isdisjoint(c[1].tx.signers)]
    out = set()
    for attempt in range(2):
        ext = self._apply_fill(fill.state, False, self.max_txs - len(kept), more, out, False)
        if attempt == 0:
            refusing.update(self._early(ext.refused))
            if ext.stop is not None:
                del more[ext.stop:]
        if ext.broken is None and not ext.short:
            return self._block(ext.state, kept + [more[p][1] for p in ext.kept], refusing)
        self._evict_short(more, ext.kept, ext.short)
        if ext.broken is not None:
            break
        out = m._trading_partners(more, out | set(ext.short))
    return self._block(fill.state, kept, refusing)


# ---- random mempools -------------------------------------------------------------------------------


def keys(base, n):
    s = [SigningKey(hashlib.sha256(b"%d %d" % (base, i)).digest()) for i in range(n)]
    return s, [bytes(x.verify_key) for x in s]


RICH, RICH_K = keys(1, 6)
THIN, THIN_K = keys(2, 6)      # each sold a BTC future in genesis: a big withdrawal or a jump leaves it short
FRESH, FRESH_K = keys(3, 6)    # not registered
SK = dict(zip(RICH_K + THIN_K + FRESH_K, RICH + THIN + FRESH))


def market():
    c = genesis()
    for k in RICH_K:
        c.register(k)
        c.deposit(k, 0, "USD", 1_000_000 * USD)
    for k in THIN_K:
        c.register(k)
        c.deposit(k, 0, "USD", 20_000 * USD)
    c.mark("BTC", 60_000.0, {1: 0.7, 2: 0.7, 4: 0.7}, 1, T0 + 60, O[:2])
    c.mark("ETH", 3_000.0, {7: 0.7}, 1, T0 + 60, O[:2])
    for i, k in enumerate(THIN_K):
        c.trade(RICH_K[i], 1, k, 1, 3, 1, P)
    return c


def stream(rnd: random.Random, head, heavy: bool, reversed_: bool = False) -> list:
    """Transactions around the committed state, in arrival order: deposits at, past (early) and
    twice at an account's next nonce, withdrawals small, large (a thin account short) and
    impossible, trades (some leaving a thin account short), fresh keys' registrations and what
    they sign (before or after the registration), quorum marks (some jumps, some out of order),
    and with heavy one account's long queue (the round-robin order)."""
    nxt = {k: (head.accounts[k].nonce if k in head.accounts else 0) for k in SK}
    seq = {"BTC": 2, "ETH": 2}
    out = []

    def take(k, skew=0):
        n = nxt[k] + skew
        if not skew:
            nxt[k] += 1
        return n
    for _ in range(rnd.randint(20, 90)):
        kind = rnd.random()
        k = rnd.choice(RICH_K + THIN_K + FRESH_K[:3])
        if kind < 0.3:
            skew = rnd.choice([0] * 6 + [1, 3, -1])
            out.append(signed(ctx.deposit(k, max(0, take(k, skew)), "USD", rnd.choice((1, 2)) * USD), [SK[k]]))
        elif kind < 0.45:
            k = rnd.choice(THIN_K + [k])
            amount = rnd.choice((USD, 19_000 * USD, 19_000 * USD, 10**9 * USD))
            out.append(signed(ctx.withdraw(k, take(k), "USD", amount), [SK[k]]))
        elif kind < 0.65:
            b, s = rnd.sample(RICH_K + THIN_K, 2)
            out.append(signed(ctx.trade(b, take(b), s, take(s), 3, rnd.randint(1, 3), P), [SK[b], SK[s]]))
        elif kind < 0.75:
            f = rnd.choice(FRESH_K)
            out.append(signed(ctx.register(f), [SK[f]]))
        elif kind < 0.9:
            u = rnd.choice(("BTC", "ETH"))
            index = {"BTC": 60_000.0, "ETH": 3_000.0}[u] * rnd.choice((1.0, 1.01, 0.99, 1.08, 0.93))
            s = seq[u] + rnd.choice((0, 0, 0, 1, -1))
            seq[u] = max(seq[u], s + 1)
            vols = VOLS if u == "BTC" else {7: 0.7}
            out.append(signed(ctx.mark(u, index, max(1, s), T0 + 100 + s, vols, O[:2]), ORACLES[:2]))
        else:
            f = rnd.choice(FRESH_K)
            out.append(signed(ctx.deposit(f, take(f), "USD", USD), [SK[f]]))
    if heavy:
        k = rnd.choice(RICH_K)
        at = rnd.randint(0, len(out))
        out[at:at] = [signed(ctx.deposit(k, take(k), "USD", USD), [SK[k]]) for _ in range(rnd.randint(5, 40))]
    if reversed_:  # a client's nonces sent last first (review s21: the candidates take each account's moves in nonce order)
        a = rnd.randint(0, len(out))
        b = rnd.randint(a, len(out))
        out[a:b] = out[a:b][::-1]
    return out


def outcome(app, proposal):
    txs, state = proposal
    return ([txs.bodies.item(i) for i in range(len(txs))], txs.sigs.tobytes(), state.root,
            list(app.mempool), dict(app.refused))


def check_marks(pool: Mempool) -> None:
    """Mempool.marks agrees with a recount: each underlying's marks, in the mempool's order."""
    recount = {}
    for d, p in pool.items():
        if p.tx.op == ctx.MARK:
            recount.setdefault(p.tx.fields[0], []).append(d)
    assert {u: list(held) for u, held in pool.marks.items()} == recount
    assert all(list(held.values()) == sorted(held.values()) for held in pool.marks.values())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_a_proposal_is_the_one_the_old_propose_made(seed):
    """Two apps given the same transactions, one proposing as now, one as before (in the
    round-robin order, or in arrival order: FAIR_PART 1 keeps a small block's there), on the
    genesis state or on an uncommitted block's (its transactions excluded, its marks making
    pending ones stale there), three blocks in a row: the same blocks, states, mempools (in
    order) and refusals. Now and then one transaction fails inside the rules (an internal error:
    the fill is cut short), alone or in a run, and the last-resort fills come sooner (MAX_PASSES
    0 or 1)."""
    rnd = random.Random(seed)
    part, passes, apply, apply_run = clearing_app.FAIR_PART, clearing_app.MAX_PASSES, ctx.apply, clearing_app.apply_run
    min_run = clearing_app.MIN_RUN
    clearing_app.FAIR_PART = part if rnd.random() < 0.5 else 1
    clearing_app.MAX_PASSES = rnd.choice((passes, passes, passes, 0, 1))
    clearing_app.MIN_RUN = rnd.choice((2, min_run))  # (short runs columnar too, as before session 19)
    try:
        c = market()
        room = rnd.randint(2, 40)
        apps = [ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=room) for _ in range(2)]
        items = stream(rnd, c, heavy=rnd.random() < 0.3, reversed_=rnd.random() < 0.4)
        bad = ctx.decode(rnd.choice(items)[0]) if rnd.random() < 0.2 else None

        def failing(state, tx):
            if tx == bad:
                raise RuntimeError("a bug")
            return apply(state, tx)

        def failing_run(state, txs):
            if bad in txs:
                raise ValueError("accel refuses an input")
            return apply_run(state, txs)
        ctx.apply, clearing_app.apply_run = failing, failing_run if rnd.random() < 0.5 else apply_run
        client = rnd.choice((None, "client"))
        for app in apps:
            assert not [r for r in app.submit_many(items, client) if r.startswith("malformed")]
        parent, exclude = [app.genesis for app in apps], set()
        if rnd.random() < 0.4:  # an uncommitted block first: the next proposals build on it
            first = apps[0].propose(apps[0].genesis, set())
            again = old_propose(apps[1], apps[1].genesis, set())
            assert outcome(apps[0], first) == outcome(apps[1], again)
            parent = [first[1], again[1]]
            exclude = {hashlib.sha256(first[0].bodies.item(i)).digest() for i in range(len(first[0]))}
            more = stream(rnd, first[1].clearing, heavy=False)
            for app in apps:
                app.submit_many(more, client)
        for _ in range(3):
            now = outcome(apps[0], apps[0].propose(parent[0], exclude))
            was = outcome(apps[1], old_propose(apps[1], parent[1], exclude))
            assert now == was
            check_marks(apps[0].mempool)
    finally:
        clearing_app.FAIR_PART, clearing_app.MAX_PASSES, clearing_app.MIN_RUN = part, passes, min_run
        ctx.apply, clearing_app.apply_run = apply, apply_run


@pytest.mark.parametrize("scenario", ["mark chain", "chain", "room"])
def test_the_attacks_on_proposals_get_the_proposals_they_got(scenario):
    """The reviews' attacks on proposals (every fill, the last-resort fills, the block going on
    past the first fill's reach): the same block, state, mempool and refusals as before."""
    from tests.test_ledger_attacks_s5 import mark_chain_attack
    from tests.test_proposal_starvation_review import chain_attack, room_attack
    apps = []
    for _ in range(2):
        if scenario == "mark chain":
            app, _, honest, attacker = mark_chain_attack()
            items = honest(app.head) + attacker(app.head, 0)
        else:
            app, _, _, resubmit = chain_attack() if scenario == "chain" else room_attack(max_txs=12)
            items = resubmit()
        assert set(app.submit_many(items)) == {""}
        apps.append(app)
    now = outcome(apps[0], apps[0].propose(apps[0].genesis, set()))
    assert now == outcome(apps[1], old_propose(apps[1], apps[1].genesis, set()))
    assert now[0]


# ---- the work a proposal does ---------------------------------------------------------------------


class CountingPool(Mempool):
    """A Mempool counting the entries its items() yields and the transactions read (Pending.tx)."""
    listed = 0

    def items(self):
        for item in super().items():
            CountingPool.listed += 1
            yield item


class Counted(Pending):
    read: set = set()

    @property
    def tx(self):
        Counted.read.add(id(self))
        return tuple.__getitem__(self, 2)


ROOM = 640
ACCOUNTS, ACCOUNT_K = keys(4, ROOM)  # each holding at most ROOM / FAIR_PART pending: arrival order


def pending_pool(n: int) -> dict:
    """n deposits of ACCOUNTS in turn, a BTC mark (quorum, in order) every 250 and an ETH one past
    the first 1.5 blocks (moved ahead: _quorum_marks_ahead), as admitted."""
    out, seq = {}, 2

    def mark(underlying, vols, sequence):
        index = 60_000.0 if underlying == "BTC" else 3_000.0
        body = ctx.mark(underlying, index, sequence, T0 + 100 + sequence, vols, O[:2])
        out[hashlib.sha256(body).digest()] = Counted(body, [bytes(64)] * 2, ctx.decode(body), bytes(128), MARKS)
    for i in range(n):
        k = ACCOUNT_K[i % len(ACCOUNT_K)]
        body = ctx.deposit(k, 1 + i // len(ACCOUNT_K), "USD", USD)
        out[hashlib.sha256(body).digest()] = Counted(body, [bytes(64)], ctx.decode(body), bytes(64))
        if i % 250 == 249:
            mark("BTC", VOLS, seq)
            seq += 1
        if i == 3 * ROOM // 2:
            mark("ETH", {7: 0.7}, 2)
    return out


def test_a_proposal_reads_what_its_block_reaches_not_the_mempool():
    """A block of ROOM transactions from 2 and 10 blocks' worth pending (accounts light enough
    for arrival order, quorum marks pending throughout, ETH's first one past the block): the
    entries listed and the transactions read are the same from both, those of the block's reach
    and at most one more block's; the old propose listed and read every one."""
    c = genesis()
    for k in ACCOUNT_K:
        c.register(k)
        c.deposit(k, 0, "USD", 10**6 * USD)
    c.mark("BTC", 60_000.0, {1: 0.7, 2: 0.7, 4: 0.7}, 1, T0 + 60, O[:2])
    work = []
    for pending in (2 * ROOM, 10 * ROOM):
        app = ClearingApp(Verifier("accel", "cpu"), c.snapshot(), max_txs=ROOM)
        app.mempool = CountingPool(pending_pool(pending))
        assert app.mempool.heaviest()[0] <= ROOM // clearing_app.FAIR_PART and MARKS in app.mempool.count
        CountingPool.listed, Counted.read = 0, set()
        txs, state = app.propose(app.genesis, set())
        assert len(txs) == ROOM and state.clearing.marks["ETH"].sequence == 2  # (moved ahead)
        work.append((CountingPool.listed, len(Counted.read)))
    assert work[0] == work[1], work
    assert max(work[1]) <= 2 * ROOM + 2, work
