"""Session 9 fresh attacks on the consensus core, its messages and its store (issues 8, 22).

A seeded adversary (Adversary) mixes, per message it handles, what a Byzantine validator holding
its own key can do: equivocating proposals (a private version to one validator, another to the
rest), votes for blocks nobody else saw and for several blocks of one view, timeouts for far
views and with old or forged QCs, proposals carrying a TC and an old QC, relabelled replays,
unsolicited responses; optionally as Twins (two cores with its key). The honest validators must
stay on one chain, never raise, and commit again once it stops. Time is the simulation's."""
import os
import random
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from consensus import messages as m  # noqa: E402
from consensus.core import Broadcast, Core, Send  # noqa: E402
from consensus.messages import QC, Proposal, Timeout, Vote, proposal_bytes, timeout_bytes, vote_bytes  # noqa: E402
from consensus.sim import Link, Simulation  # noqa: E402
from test_consensus import assert_safe  # noqa: E402

BYZ = 1


class Adversary(Core):
    """Validator BYZ, misbehaving at random (seeded by `seed`) while `active`."""
    active = True
    seed = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rng = random.Random(Adversary.seed * 1_000_003 + self.cfg.me)
        self.qcs = {}  # view -> a valid QC seen (from blocks it validated)

    def handle(self, sender, msg):
        return self._misbehave(super().handle(sender, msg))

    def on_timer(self, view):
        return self._misbehave(super().on_timer(view))

    def _seen_qcs(self):
        for b in self.blocks.values():
            if b.qc.view:
                self.qcs[b.qc.view] = replace(b.qc, height=self.blocks[b.qc.block_id].height) \
                    if b.qc.block_id in self.blocks else b.qc
        if self.safety.high_qc.view:
            self.qcs[self.safety.high_qc.view] = self.safety.high_qc
        while len(self.qcs) > 64:
            del self.qcs[min(self.qcs)]

    def _sig(self, data):
        return self.sign(data)

    def _misbehave(self, out):
        if not Adversary.active:
            return out
        rng, net, n, me = self.rng, self.cfg.network, self.cfg.n, self.cfg.me
        self._seen_qcs()
        others = [i for i in range(n) if i != me]
        res = []
        for a in out:
            msg = getattr(a, "msg", None)
            if isinstance(msg, Proposal) and isinstance(a, Broadcast) and msg.block.proposer == me:
                b = msg.block
                r = rng.random()
                if r < 0.3:  # equivocate: a second valid-looking block (other state root) to one validator
                    other = replace(b, state_root=os.urandom(32) if rng.random() < 0.5 else b.state_root,
                                    txs=m.Txs.empty(), tx_root=self.app.tx_root(m.Txs.empty()),
                                    sig_digest=m.Txs.empty().digest())
                    if not len(b.txs):
                        other = replace(other, state_root=os.urandom(32))
                    twin = Proposal(other, self._sig(proposal_bytes(other.id, net)))
                    lone = rng.choice(others)
                    res += [Send(i, twin if i == lone else msg) for i in others]
                    # and a vote for the twin to the next leader (a block nobody else may hold)
                    nxt = self.cfg.leader(b.view + 1)
                    res.append(Send(nxt, Vote(other.id, other.view, other.height, me,
                                              self._sig(vote_bytes(other.id, other.view, net)))))
                    continue
                if r < 0.45:  # withhold from a random half
                    keep = rng.sample(others, k=rng.randrange(0, len(others) + 1))
                    res += [Send(i, msg) for i in keep]
                    continue
                if r < 0.55 and self.last_tc is not None and self.qcs:
                    # a block with a TC of the view before and the lowest QC it knows
                    low = self.qcs[min(self.qcs)]
                    parent = self.blocks.get(low.block_id)
                    if parent is not None and self.last_tc.view + 1 == b.view:
                        odd = replace(b, parent=parent.id, height=parent.height + 1, qc=low, tc=self.last_tc,
                                      state_root=self.states[parent.id].root, txs=m.Txs.empty(),
                                      tx_root=self.app.tx_root(m.Txs.empty()), sig_digest=m.Txs.empty().digest())
                        res.append(Broadcast(Proposal(odd, self._sig(proposal_bytes(odd.id, net)))))
                        continue
            if isinstance(msg, Vote) and rng.random() < 0.3:
                # vote for another block of that view too, to the next leader and to everyone
                fake = os.urandom(32)
                for i in others:
                    res.append(Send(i, Vote(fake, msg.view, msg.height, me, self._sig(vote_bytes(fake, msg.view, net)))))
                if rng.random() < 0.5:
                    res += [Send(i, msg) for i in others]
            res.append(a)
        # unprompted: timeouts far ahead, with an old QC; forged QCs; votes for future views
        r = rng.random()
        qc = self.qcs[rng.choice(list(self.qcs))] if self.qcs and rng.random() < 0.8 else QC(self.genesis.id, 0, 0)
        if r < 0.1:
            v = self.view + rng.choice([0, 1, 2, 5, 50, 10_000])
            res.append(Broadcast(Timeout(v, qc, me, self._sig(timeout_bytes(v, qc.view, net)))))
        elif r < 0.15 and qc.view:
            forged = replace(qc, view=qc.view + rng.randrange(1, 4))
            v = self.view
            res.append(Broadcast(Timeout(v, forged, me, self._sig(timeout_bytes(v, forged.view, net)))))
        elif r < 0.2 and qc.view:
            relabel = replace(qc, height=qc.height + rng.randrange(1, 5))
            v = self.view
            res.append(Broadcast(Timeout(v, relabel, me, self._sig(timeout_bytes(v, relabel.view, net)))))
        elif r < 0.25:
            v = self.view + rng.randrange(0, 40)
            fake = os.urandom(32) if rng.random() < 0.5 else rng.choice(list(self.blocks))
            res.append(Send(self.cfg.leader(v + 1), Vote(fake, v, rng.randrange(0, 50), me,
                                                         self._sig(vote_bytes(fake, v, net)))))
        elif r < 0.3 and self.proposals:
            ps = sorted(self.proposals.values(), key=lambda p: p.block.height)[-m.MAX_RANGE:]
            rng.shuffle(ps)
            res.append(Send(rng.choice(others), m.BlockResponse(tuple(ps[:rng.randrange(1, len(ps) + 1)]))))
        return res


def _make(twins):
    def make(cfg, sign, app, *rest):
        return (Adversary if cfg.me == BYZ else Core)(cfg, sign, app, *rest)
    return make


def _attack(seed, twins=False, n=4, during_ms=4_000.0):
    Adversary.active, Adversary.seed = True, seed
    sim = Simulation(n=n, seed=seed, link=Link((1.0, 30.0), drop=0.02, duplicate=0.02), make_core=_make(twins))
    if twins:
        sim.add_node(BYZ, f"v{BYZ}-twin", sim.genesis)
    honest = {f"v{i}" for i in range(n) if i != BYZ}
    sim.load(200)
    sim.at(during_ms, lambda s: setattr(Adversary, "active", False))
    try:
        sim.run(blocks=10**9, max_ms=during_ms, live=lambda node: node.name in honest)
        during = {x.name: len(x.committed) for x in sim.nodes}
        assert_safe(sim, honest)
        top = max(during[x] for x in honest)
        sim.run(blocks=top + 6, max_ms=during_ms + 150_000, live=lambda node: node.name in honest)
    finally:
        Adversary.active = True
    assert_safe(sim, honest)
    for x in sim.nodes:
        if x.name in honest:
            assert x.core.counters["input_error"] == 0, (x.name, x.core.counters)
            assert len(x.committed) >= top + 6, (x.name, during, {y.name: len(y.committed) for y in sim.nodes})
    return sim, during


@pytest.mark.parametrize("seed", range(4))
def test_a_random_adversary_never_splits_the_honest_and_cannot_stall_them(seed):
    _attack(seed, twins=seed % 2 == 1)


# ---- crashes between any two writes of the store ---------------------------------------------

class Crash(Exception):
    """The process dies here (what it had not written yet is lost, what it had not sent never leaves)."""


class CrashSim(Simulation):
    """A simulation whose validator `victim` dies at its store's writes number `at` (counted over
    save_safety, add_committed and add_snapshot, before or `after` the write), each time again
    after `every` more writes, and restarts from a store opened afresh `down_ms` later."""

    def __init__(self, *args, victim="v2", at=(), after=False, down_ms=300.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.victim, self.crash_at, self.after, self.down_ms = victim, set(at), after, down_ms
        self.writes, self.crashes, self.paths = 0, 0, {}

    def durable(self, name, path, snapshot_every=0):
        super().durable(name, path, snapshot_every)
        self.paths[name] = path
        if name == self.victim:
            self._wrap(self._node(name))

    def _wrap(self, node):
        store = node.store
        for what in ("save_safety", "add_committed", "add_snapshot"):
            real = getattr(store, what)

            def write(*args, _real=real, **kwargs):
                self.writes += 1
                hit = self.writes in self.crash_at
                if hit and not self.after:
                    raise Crash()
                out = _real(*args, **kwargs)
                if hit:
                    raise Crash()
                return out
            setattr(store, what, write)

    def _apply(self, node, actions):
        try:
            super()._apply(node, actions)
        except Crash:
            from consensus.store import Store
            self.crashes += 1
            self.crashed.add(node.name)
            node.store.close()
            node.store = Store(self.paths[node.name], clock=lambda: self.now / 1000.0)
            self._wrap(node)
            node.committed = node.committed[:node.store.top_height()]  # what it told the world it committed
            self._push(self.now + self.down_ms, ("restart", node.name))


@pytest.mark.parametrize("after", [False, True])
@pytest.mark.parametrize("first", [1, 2, 5])
def test_a_validator_killed_between_any_two_store_writes_never_votes_twice(tmp_path, first, after):
    """v2 dies at its store's write number first, first + 7, first + 14, ... (before or after
    the write: between a safety row and the vote it guards, between commits of one QC, between a
    commit and its snapshot) and restarts from the store: it never signs two votes in one view,
    its store's chain is the one everyone commits, and the chain goes on."""
    at = range(first, 400, 7)
    sim = CrashSim(n=4, seed=first, link=Link((1.0, 20.0)), at=at, after=after, txs_per_block=5)
    for node in sim.nodes:
        sim.durable(node.name, tmp_path / f"{node.name}.db", snapshot_every=4 if node.name == "v2" else 0)
    sim.load(300)
    sim.run(blocks=20, max_ms=300_000, live=lambda node: True)
    assert sim.crashes >= 4
    assert all(len(x.committed) >= 20 for x in sim.nodes), {x.name: len(x.committed) for x in sim.nodes}
    assert_safe(sim)
    assert all(len(blocks) == 1 for blocks in sim.votes_signed.values()), \
        [k for k, b in sim.votes_signed.items() if len(b) > 1]
    v2 = sim._node("v2")
    stored = [p.block.id for p in v2.store.history()]
    assert stored == sim.chains()["v0"][:len(stored)]
    assert v2.store.safety().last_voted_view >= max(v for (i, v) in sim.votes_signed if i == 2)


# ---- a block request costs what it answers, not the chain's length -----------------------------

class _SliceCounter(list):
    """A list that records the length of every slice taken of it."""
    sliced: list

    def __getitem__(self, key):
        out = super().__getitem__(key)
        if isinstance(key, slice):
            self.sliced.append(len(out))
        return out


def test_a_block_request_from_height_one_costs_no_pass_over_the_chain():
    """A BlockRequest for the committed tip from height 1 (a Byzantine validator's, at its frame
    rate; or every request of an honest validator catching up from far behind) is answered with
    at most MAX_RANGE blocks. Before: _ancestry sliced self.chain from the requested height to
    the tip, then kept MAX_RANGE of it: at height 1,000,000 each request copied a million ids
    (15 ms measured; 2,000 such frames a second from one peer held the validator's loop for
    30 s a second, and catching up a long chain was quadratic for its servers). Now the slice is
    cut to the limit first: no slice longer than MAX_RANGE is taken, and the answer is the same."""
    sim = Simulation(n=4, seed=1)
    sim.load(10)
    sim.run(blocks=3)
    core = sim.nodes[0].core
    n = 20_000
    ids = [os.urandom(32) for _ in range(n)]
    chain = _SliceCounter(core.chain[:] + ids)
    chain.sliced = []
    core.chain = chain
    for h in range(len(chain) - n, len(chain)):
        core.heights[chain[h]] = h
    core.committed = replace(core.committed, height=len(chain) - 1)
    core.proposals = {}
    asked = []
    core.committed_source = lambda first, count: asked.append((first, count)) or []
    for block_id, low in ((ids[-1], 1), (ids[-1], 5), (ids[n // 2], len(chain) - n + 7)):
        core.handle(2, m.BlockRequest(block_id, low, m.MAX_RANGE))
        assert asked[-1][0] == low and 1 <= asked[-1][1] <= m.MAX_RANGE  # (read as far as the answer goes)
    assert core.counters["input_error"] == 0
    biggest = max(chain.sliced, default=None)
    assert biggest is not None and biggest <= m.MAX_RANGE, biggest
    assert core._ancestry(ids[-1], len(chain) - 3, m.MAX_RANGE) == ids[-3:]
    assert core._ancestry(ids[-1], 0, m.MAX_RANGE) == ids[-1:]
    assert core._ancestry(ids[10], 3, 5) == list(chain[3:8])


def test_a_proposers_copy_with_an_empty_tc_is_dropped_without_raising():
    """The proposer's second copy of a held block (which _proposers_copy checks for a vote before
    verifying its certificates) carrying a TC of no timeouts: _safe_to_vote took max() of its
    empty high views and raised ValueError (counted as input_error and logged with a traceback;
    any frame a Byzantine leader sends). Now a TC naming no QC views is not one to vote on, and
    a TC whose voters, views and signatures do not line up, or name more voters than there are,
    is malformed before anything looks at it."""
    from consensus.messages import TC
    sim = Simulation(n=4, seed=3)
    sim.load(10)
    sim.run(blocks=3)
    core = sim.nodes[0].core
    b = max((x for x in core.blocks.values() if x.proposer != 0), key=lambda x: x.view)
    p = core.proposals[b.id]
    # the held block: one this validator may not vote for (its QC is not of the view before)
    core.blocks[b.id] = replace(b, qc=replace(b.qc, view=b.view - 2), tc=None)
    core.view, core.timed_out = b.view, set()
    core.safety = replace(core.safety, last_voted_view=b.view - 1)
    gqc = QC(core.genesis.id, 0, 0)
    for tc in (TC(b.view - 1, (), (), b"", gqc), TC(b.view - 1, (0, 2, 3), (1, 1), bytes(192), gqc),
               TC(b.view - 1, tuple(range(5)), (0,) * 5, bytes(320), gqc)):
        copy = replace(p, block=replace(b, qc=replace(b.qc, view=b.view - 2), tc=tc))
        core.handle(b.proposer, copy)
    assert core.counters["input_error"] == 0, core.counters
    assert core.counters["proposal_malformed"] == 2


# ---- a damaged store: one line, never a silent wrong state ---------------------------------------

def _stored(tmp_path, blocks=6):
    sim = Simulation(n=4, seed=4, txs_per_block=5)
    sim.durable("v0", tmp_path / "v0.db")
    sim.load(60)
    sim.run(blocks=blocks)
    store = sim._node("v0").store
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return sim, tmp_path / "v0.db"


def _start(sim, path):
    """What a restart does with the store (snapshots.load, Store.safety, Core)."""
    from consensus import snapshots
    from consensus.store import Store
    store = Store(path)
    try:
        app = sim._make_app(sim.genesis)
        start = snapshots.load(store, app)
        key = sim.keys[0]
        return Core(sim.cfg[0], lambda msg: key.sign(msg).signature, app, store.safety(), start.history,
                    store.committed_range, start.base)
    finally:
        store.close()


def _sql(path, sql, *args):
    import sqlite3
    db = sqlite3.connect(str(path))
    db.execute(sql, args)
    db.commit()
    db.close()


def _on_disk(path, sql, *args):
    """`sql` changing the file as damage on disk would: not through SQL, so without the store's
    triggers (an SQL write of the safety row is an older release's, which deletes its digest)."""
    import sqlite3
    db = sqlite3.connect(str(path))
    triggers = [r[0] for r in db.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger'")]
    for name, in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        db.execute(f"DROP TRIGGER {name}")
    db.execute(sql, args)
    for statement in triggers:
        db.execute(statement)
    db.commit()
    db.close()


def test_a_safety_row_read_back_with_other_values_stops_the_start(tmp_path):
    """SQLite keeps no checksum of a page: a bit of the safety row flipped on disk read back as
    another last voted view (found flipping each byte of a store: 27 read as 26, and a restarted
    validator may vote again in a view it voted in) or a high QC with a damaged signature (its
    timeouts then verify nowhere), and the validator started on it silently. The row's digest is
    now stored with it in the same transaction and checked on reading: one StoreError line."""
    import shutil
    from consensus.store import Store, StoreError
    sim, path = _stored(tmp_path)
    core = _start(sim, path)  # intact
    voted = core.safety.last_voted_view
    assert voted > 1
    qc = m.encode_qc(core.safety.high_qc)
    damaged = bytearray(qc)
    damaged[-1] ^= 1  # a signature's last byte
    cases = {"lower": ("UPDATE safety SET last_voted_view = ?", voted - 1),
             "higher": ("UPDATE safety SET last_voted_view = ?", voted + 64),
             "qc": ("UPDATE safety SET high_qc = ?", bytes(damaged))}
    for name, (sql, value) in cases.items():
        copy = tmp_path / f"{name}.db"
        shutil.copy(path, copy)
        _on_disk(copy, sql, value)
        with pytest.raises(StoreError, match="does not match its digest") as exc:
            _start(sim, copy)
        assert "\n" not in str(exc.value)
    # a store written before the digest (no safety_check row) starts as it did, and is given one
    legacy = tmp_path / "legacy.db"
    shutil.copy(path, legacy)
    _sql(legacy, "DROP TABLE safety_check")
    assert _start(sim, legacy).safety.last_voted_view == voted
    store = Store(legacy)
    store.save_safety(store.safety())
    store.close()
    _on_disk(legacy, "UPDATE safety SET last_voted_view = ?", voted - 1)
    with pytest.raises(StoreError, match="does not match its digest"):
        _start(sim, legacy)


def test_damaged_schema_text_and_stored_certificates_stop_the_start_with_one_line(tmp_path):
    """More ways a damaged store got out of the start as another exception than the one-line
    StoreError / InvariantViolation (found flipping each byte of a store): a byte of the schema's
    text that is no longer UTF-8 raised UnicodeDecodeError from the first statement Store ran, one
    flipped into another letter renamed a column (OperationalError "no such column" from a later
    read) or a table (an empty one created beside it; Store now checks its tables' columns against
    its schema's), a row's column flipped to text that is not UTF-8 raised OperationalError, and a
    stored uncommitted block whose QC names a voter index out of range raised
    InvalidCertificate from Core's restore."""
    import shutil
    from consensus.core import InvariantViolation
    from consensus.store import StoreError
    sim, path = _stored(tmp_path)
    data = bytearray(path.read_bytes())
    at = data.index(b"CREATE TABLE snapshots") + 3
    schema = tmp_path / "schema.db"
    data[at] = 0xC1
    schema.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="does not read back") as exc:
        _start(sim, schema)
    assert "\n" not in str(exc.value)
    # a byte of the schema's text flipped into another letter: a column renamed ("no such column"
    # from the first read of it) or a table renamed (created anew, empty, beside the damaged one)
    for name, (old, new) in {"column": (b"proposal BLOB", b"proposxl BLOB"),
                             "table": (b"committed (height", b"committex (height")}.items():
        data = bytearray(path.read_bytes())
        at = data.index(old)
        data[at:at + len(old)] = new
        renamed = tmp_path / f"{name}.db"
        renamed.write_bytes(bytes(data))
        with pytest.raises(StoreError, match="damaged") as exc:
            _start(sim, renamed)
        assert "\n" not in str(exc.value)
    # a committed row's id read back as text that is not UTF-8 (its type byte flipped): SQLite's
    # OperationalError "Could not decode to UTF-8 column 'id'" got out of committed_ids
    text = tmp_path / "text.db"
    shutil.copy(path, text)
    _sql(text, "UPDATE committed SET id = CAST(x'c1c1c1' || id AS TEXT) WHERE height = 2")
    with pytest.raises(StoreError, match="does not read back"):
        _start(sim, text)

    import sqlite3
    db = sqlite3.connect(str(path))
    top = db.execute("SELECT MAX(height) FROM committed").fetchone()[0]
    block_id, frame = db.execute("SELECT id, proposal FROM uncommitted WHERE height = ?", (top + 1,)).fetchone()
    db.close()
    p = m.decode(frame)
    bad = replace(p, block=replace(p.block, qc=replace(p.block.qc, voters=(0, 1, 9))))
    assert bad.block.id == block_id
    certs = tmp_path / "certs.db"
    shutil.copy(path, certs)
    _sql(certs, "UPDATE uncommitted SET proposal = ? WHERE id = ?", m.encode(bad), block_id)
    with pytest.raises(InvariantViolation, match=f"height {top + 1} .*invalid certificate"):
        _start(sim, certs)


def test_bad_vote_signatures_cost_a_software_only_validator_no_python_curve_arithmetic(monkeypatch):
    """A Byzantine validator's votes with bad signatures, each verified by the next leader: a
    software-only validator decided every signature libsodium refuses with the plain-Python
    ZIP-215 model (about 5 ms each: at 2,000 frames a second, 10 s of work a second). Now such
    a signature goes to the C fallback's kernel (the verdicts of every backend); the verdicts
    stay (test_ed25519's software cases), and the votes are refused."""
    from consensus import verify
    calls = []
    real = verify.zip215_verdict
    monkeypatch.setattr(verify, "zip215_verdict", lambda *a: calls.append(1) or real(*a))
    sim = Simulation(n=4, seed=2, validation="software")
    sim.load(10)
    sim.run(blocks=3)
    core = sim.nodes[0].core
    views = [v for v in range(core.view, core.view + 40) if core.cfg.leader(v + 1) == 0]
    for i in range(30):
        view = views[i % len(views)]
        block_id = os.urandom(32)
        sig = bytearray(sim.keys[2].sign(vote_bytes(block_id, view, sim.network)).signature)
        sig[7] ^= 1
        core.handle(2, Vote(block_id, view, 1, 2, bytes(sig)))
    sent = [views[i % len(views)] for i in range(30)]  # one a view it is in or past (s23)
    assert core.counters["vote_invalid"] == len({v for v in sent if v <= core.view}) + sum(v > core.view for v in sent)
    assert not calls
    # and a signature only ZIP-215 accepts (libsodium refuses it) is still accepted
    from test_ed25519 import EDGE
    name, pk, msg, sig, want = next(c for c in EDGE if c[4] and c[0] != "valid")
    assert verify.Verifier("software").verify_one(pk, msg, sig) is True


# ---- a Byzantine validator's frames cost a QC's signatures once a view, not once a frame ---------

def _counting(core):
    """Count the signatures core's verifier is asked to check (its blocks' and certificates')."""
    seen = [0]
    real = core.app.verifier.verify_all

    def verify_all(keys, messages, sigs, certs=((), (), ())):
        seen[0] += len(keys) + len(certs[0])
        return real(keys, messages, sigs, certs)
    core.app.verifier.verify_all = verify_all
    return seen


def test_forged_certificates_cost_their_signatures_once_a_view():
    """Byzantine validator 2 sends validator 0, in one view of it: 200 timeouts reusing one
    signature of its own with a freshly forged QC each (its signature covers only the view and
    the QC's view), 200 timeouts carrying the real high QC for new views each, 100 proposals of
    made-up parents with forged QCs (each parked only after its certificates are checked), and
    20 block responses of 64 made-up proposals each "certified" by the next one's forged QC.
    Each of these cost a QC's 2f+1 signatures and more (a response 64 times that): about 7,000
    signatures here, at the sender's full frame rate. Now a sender that sent a certificate or
    signature that does not verify (never an honest one) is not listened to until this
    validator's view changes, and a QC verified once is not verified again: a few dozen
    signatures. The chain goes on after."""
    import hashlib
    sim = Simulation(n=4, seed=6)
    sim.load(40)
    sim.run(blocks=4)
    core = sim.nodes[0].core
    seen = _counting(core)
    key, net = sim.keys[2], sim.network
    hq = core.safety.high_qc
    view = core.view
    mine = key.sign(timeout_bytes(view, hq.view, net)).signature
    for i in range(200):
        forged = replace(hq, sigs=hashlib.sha512(i.to_bytes(2, "big")).digest() * len(hq.voters))
        core.handle(2, Timeout(view, forged, 2, mine))
    for i in range(200):
        v = view + 1 + i
        core.handle(2, Timeout(v, hq, 2, key.sign(timeout_bytes(v, hq.view, net)).signature))
    tip = core.blocks[hq.block_id]

    def made_up(parent_id, v, height, salt):
        qc = QC(parent_id, v - 1, height - 1, hq.voters, hashlib.sha512(salt).digest() * len(hq.voters))
        return replace(tip, view=v, height=height, parent=parent_id, proposer=core.cfg.leader(v), qc=qc, tc=None,
                       state_root=hashlib.sha256(salt).digest())
    for i in range(100):
        b = made_up(hashlib.sha256(b"parent" + bytes([i])).digest(), tip.view + 3, tip.height + 3, bytes([i]))
        core.handle(2, Proposal(b, bytes(64)))
    for r in range(20):
        chain = [made_up(hashlib.sha256(b"root" + bytes([r])).digest(), tip.view + 3, tip.height + 3, bytes([r, 0]))]
        for i in range(1, m.MAX_RANGE):
            last = chain[-1]
            chain.append(made_up(last.id, last.view + 1, last.height + 1, bytes([r, i])))
        core.handle(2, m.BlockResponse(tuple(Proposal(b, bytes(64)) for b in chain)))
    assert core.counters["input_error"] == 0
    assert seen[0] < 100, seen[0]
    sim.run(blocks=10)
    assert all(len(x.committed) >= 10 for x in sim.nodes)
    assert_safe(sim)


def test_blocks_that_do_not_validate_cost_their_validation_once_a_view_and_sender():
    """A sender (here the leader of the next view, its proposer index claimed) sends 100 blocks
    for one view that pass every check on their face (the real QC of the view before) and fail
    validation: each was validated in full (every signature of the block and its certificates
    checked in one batch, 4 here, 10,000 and more in a full block), since a block is taken as the
    view's only after it validates. Now, once one of a sender's blocks of a view failed, its
    other blocks of that view are refused unchecked."""
    import hashlib
    sim = Simulation(n=4, seed=7)
    sim.load(40)
    sim.run(blocks=4)
    core = sim.nodes[0].core
    hq = core.safety.high_qc
    tip = core.blocks[hq.block_id]
    v = tip.view + 1
    core.view_blocks.pop(v, None)
    leader = core.cfg.leader(v)
    seen = _counting(core)
    for i in range(100):
        b = replace(tip, view=v, height=tip.height + 1, parent=tip.id, proposer=leader, qc=hq, tc=None,
                    state_root=hashlib.sha256(bytes([i])).digest())
        core.handle(leader, Proposal(b, bytes(64)))
    assert core.counters["input_error"] == 0
    assert seen[0] <= 2 * (len(hq.voters) + 1), seen[0]
    assert core.counters["muted"] == 99
