"""Byzantine peers and strangers on the simulated network (issue 22): each test injects what an
attacker can put on the wire (the sender index is unauthenticated, so anyone can claim any
validator's index) or runs a validator whose core misbehaves, and checks that the honest
validators stay safe, keep committing and never raise out of Core.handle."""
from dataclasses import replace

import pytest

from consensus.core import Broadcast, Core, Send
from consensus.messages import QC, Proposal, Timeout, proposal_bytes
from consensus.sim import Link, Simulation
from test_consensus import assert_safe


def _one_of(index, cls):
    """make_core for a Simulation: validator `index` runs cls, the others Core."""
    return lambda cfg, sign, app, *rest: (cls if cfg.me == index else Core)(cfg, sign, app, *rest)


def _newest(node):
    return max(node.core.blocks.values(), key=lambda b: (b.view, b.height))


def _signed(core, qc) -> bool:
    """Whether a QC is the genesis QC or carries 2f+1 valid signatures."""
    return qc.view == 0 or core.app.verifier.verify_lists(*core.qc_certs(qc))


def _forged_qc(block, view=None):
    """A QC for `block` signed by nobody: three voters, zero signatures."""
    return QC(block.id, block.view if view is None else view, block.height, (0, 2, 3), bytes(64 * 3))


# ---- finding 1: no shortcut for a timeout that names the receiver ------------------------------

def _forge_self_timeouts(sim):
    """Send every validator unsigned timeouts in its own name, for its current view, carrying a
    forged QC for the newest block it holds (at that block's view and one view above)."""
    for node in sim.nodes:
        b = _newest(node)
        for qc in (_forged_qc(b), _forged_qc(b, b.view + 1)):
            sim.inject(sim.now + 0.5, node.name, node.index, Timeout(node.core.view, qc, node.index, bytes(64)))


@pytest.mark.parametrize("seed", range(4))
def test_forged_timeouts_in_the_receivers_own_name_change_nothing(seed):
    """A Timeout naming the receiver as its voter is verified like any other: its forged QC never
    becomes a high QC, is never persisted, and commits nothing; the chain is the attack-free one."""
    clean = Simulation(n=4, seed=seed)
    clean.load(60)
    clean.run(blocks=8)
    sim = Simulation(n=4, seed=seed)
    sim.load(60)
    for t in range(20, 2_000, 37):
        sim.at(t, _forge_self_timeouts)
    sim.run(blocks=8)
    assert_safe(sim)
    assert all(len(n.committed) >= 8 for n in sim.nodes)
    for n in sim.nodes:
        assert _signed(n.core, n.core.safety.high_qc), n.name
        assert _signed(n.core, sim.persisted[n.name].high_qc), n.name
        assert n.core.counters["timeout_invalid"] > 0
    shortest = min(len(clean.chains()["v0"]), len(sim.chains()["v0"]))
    assert sim.chains()["v0"][:shortest] == clean.chains()["v0"][:shortest]


# ---- findings 2 and 3: a QC's and a block's height are bound to the chain ----------------------

class Relabeller(Core):
    """A leader that proposes a valid block to itself and, to everyone else, the same content
    with the heights `relabel(core, block)` picks, signed again (its QC's signatures still hold:
    they never covered the height)."""
    relabel = None

    def _propose(self, view):
        out = super()._propose(view)
        for i, a in enumerate(out):
            if isinstance(a, Broadcast):
                qc_height, height = self.relabel(a.msg.block)
                bad = replace(a.msg.block, height=height, qc=replace(a.msg.block.qc, height=qc_height))
                out[i] = Broadcast(Proposal(bad, self.sign(proposal_bytes(bad.id, self.cfg.network))))
        return out


RELABELS = {
    "qc_height_plus_5": lambda b: (b.qc.height + 5, b.qc.height + 6),
    "near_2_64": lambda b: (2**64 - 2, 2**64 - 1),
    "same_as_parent": lambda b: (max(b.qc.height - 1, 0), max(b.qc.height, 1)),
    "back_to_1": lambda b: (0, 1),
    "block_only": lambda b: (b.qc.height, b.qc.height + 3),
}


@pytest.mark.parametrize("relabel", sorted(RELABELS))
@pytest.mark.parametrize("seed", range(2))
def test_a_leader_relabelling_heights_is_rejected_and_the_chain_goes_on(relabel, seed):
    class Leader(Relabeller):
        pass
    Leader.relabel = staticmethod(RELABELS[relabel])
    sim = Simulation(n=4, seed=seed, make_core=_one_of(1, Leader))
    sim.load(60)
    honest = {"v0", "v2", "v3"}
    sim.run(blocks=10, max_ms=200_000, live=lambda node: node.name in honest)
    nodes = [x for x in sim.nodes if x.name in honest]
    assert all(len(x.committed) >= 10 for x in nodes)
    assert_safe(sim, honest)
    for x in nodes:  # no high QC with a height its block does not have
        qc = x.core.safety.high_qc
        assert qc.height == x.core.blocks[qc.block_id].height
    # refused by the core, or (heights past messages.MAX_HEIGHT) by the wire decoder
    assert any(r.proposer == 1 for x in nodes for r in x.rejected) or sim.undecodable


class HeightLiar(Core):
    """Votes with a height that is not its block's (the vote's signature does not cover it)."""

    def _vote(self, b):
        out = super()._vote(b)
        return [replace(a, msg=replace(a.msg, height=a.msg.height + 7)) if hasattr(a, "msg") and
                type(a.msg).__name__ == "Vote" else a for a in out]


@pytest.mark.parametrize("seed", range(4))
def test_a_vote_with_a_wrong_height_cannot_set_the_qcs_height(seed):
    sim = Simulation(n=4, seed=seed, make_core=_one_of(2, HeightLiar))
    sim.load(60)
    sim.run(blocks=10, max_ms=200_000)
    assert all(len(x.committed) >= 10 for x in sim.nodes)
    assert_safe(sim)
    for x in sim.nodes:
        height = {b.id: b.height for b, _, _ in x.committed}
        for b, _, _ in x.committed:
            if b.qc.view:
                assert b.qc.height == height[b.qc.block_id]


def test_views_and_heights_past_the_bound_do_not_decode_and_are_refused():
    from consensus import messages
    sim = Simulation(n=4, seed=1)
    sim.load(10)
    sim.run(blocks=2)
    core = sim.nodes[0].core
    p = next(iter(core.proposals.values()))
    for bad in (replace(p.block, height=messages.MAX_HEIGHT), replace(p.block, view=2**64 - 1),
                replace(p.block, qc=replace(p.block.qc, height=2**64 - 2))):
        with pytest.raises(messages.DecodeError, match="out of range"):
            messages.decode(messages.encode(Proposal(bad, p.signature)))
    vote = messages.Vote(p.block.id, messages.MAX_VIEW, 1, 2, bytes(64))
    with pytest.raises(messages.DecodeError, match="out of range"):
        messages.decode(messages.encode(vote))
    fresh = Simulation(n=4, seed=1).nodes[2].core  # and in the core, for input that skips the wire
    huge = replace(p.block, height=2**64 - 1)
    assert fresh.handle(1, Proposal(huge, p.signature)) == [] and fresh.handle(1, vote) == []
    assert fresh.counters["proposal_malformed"] == 1 and fresh.counters["vote_malformed"] == 1


def test_the_store_refuses_a_gap_or_a_second_block_at_a_height(tmp_path):
    from consensus.store import Store, StoreError
    sim = Simulation(n=4, seed=1)
    sim.load(30)
    sim.run(blocks=4)
    props = [sim.nodes[0].core.proposals[b.id] for b, _, _ in sim.nodes[0].committed]
    store = Store(tmp_path / "s.db")
    store.add_committed(props[0])
    store.add_committed(props[0])  # the same block again: nothing
    with pytest.raises(StoreError, match="height 3 does not extend"):
        store.add_committed(props[2])
    other = replace(props[0].block, state_root=bytes(32))
    with pytest.raises(StoreError, match="height 1 conflicts"):
        store.add_committed(Proposal(other, bytes(64)))
    store.add_committed(props[1])
    assert [p.block.id for p in store.history()] == [p.block.id for p in props[:2]]


# ---- finding 5: no input raises out of Core.handle ---------------------------------------------

def _kv_block(core, view, bodies, sigs):
    """A block on genesis for `view` with these transactions (headers consistent with them)."""
    from consensus.apps.kv import EMPTY
    from consensus.messages import Block, Txs
    from accel import Packed
    import numpy as np
    data = np.frombuffer(b"".join(bodies), np.uint8)
    offsets = np.zeros(len(bodies) + 1, np.uint64)
    np.cumsum([len(x) for x in bodies], out=offsets[1:])
    txs = Txs(Packed(data, offsets), np.frombuffer(b"".join(sigs), np.uint8).reshape(-1, 64))
    g = core.genesis
    root = core.app.tx_root(txs) if len(bodies) else EMPTY
    return Block(view, 1, g.id, core.cfg.leader(view), root, g.state_root, txs.digest(), txs, QC(g.id, 0, 0))


def _bad_set_body(client, nonce=0):
    from consensus.apps.kv import set_body
    body = bytearray(set_body(bytes(client.verify_key), nonce, b"k", b"v" * 8))
    body[45] = 250  # the key length points past the body's end
    return bytes(body)


def test_malformed_kv_proposals_are_rejected_not_raised():
    """Unsigned proposals on genesis (the proposer's signature is checked with the rest, after the
    layout): signature rows that do not match the bodies, a key length past a body's end."""
    from consensus.apps.kv import transfer_body
    sim = Simulation(n=4, seed=3)
    c = sim.clients[0]
    good = transfer_body(bytes(c.verify_key), 0, bytes(32), 1)
    bad_set = _bad_set_body(c)
    cases = [([good, good], [c.sign(good).signature]), ([good], [c.sign(good).signature] * 2),
             ([bad_set], [c.sign(bad_set).signature]), ([good[:60]], [c.sign(good[:60]).signature]),
             ([good + b"x"], [c.sign(good + b"x").signature])]
    for node in sim.nodes:
        for i, (bodies, sigs) in enumerate(cases):
            b = _kv_block(node.core, 4 * i + 1 + (node.index + 1) % 4, bodies, sigs)  # led by another
            out = node.core.handle(b.proposer, Proposal(b, bytes(64)))
            assert [type(a).__name__ for a in out] == ["Rejected"], (i, out)
    sim.load(40)
    sim.run(blocks=6)
    assert all(len(x.committed) >= 6 for x in sim.nodes)


class BadSetLeader(Core):
    """A Byzantine leader: its blocks carry a validly signed set transaction whose key length
    points past the body's end, signed by the proposer and with a consistent state root."""
    client = None

    def _propose(self, view):
        from consensus.apps.kv import pack_txs
        if view in self.proposed or self.cfg.leader(view) != self.cfg.me:
            return []
        out = super()._propose(view)
        for i, a in enumerate(out):
            if isinstance(a, Broadcast):
                b = a.msg.block
                body = _bad_set_body(self.client, 10**6 + view)
                sigs = [b.txs.sigs[j].tobytes() for j in range(len(b.txs))] + [self.client.sign(body).signature]
                txs = pack_txs([b.txs.bodies.item(j) for j in range(len(b.txs))] + [body], sigs)
                bad = replace(b, txs=txs, tx_root=self.app.tx_root(txs), sig_digest=txs.digest())
                out[i] = Broadcast(Proposal(bad, self.sign(proposal_bytes(bad.id, self.cfg.network))))
        return out


@pytest.mark.parametrize("seed", range(3))
def test_a_leaders_malformed_transaction_is_rejected_and_a_clients_is_refused(seed):
    sim = Simulation(n=4, seed=seed, make_core=_one_of(1, BadSetLeader))
    BadSetLeader.client = sim.clients[1]
    sim.load(40)
    for node in sim.nodes:  # and a client hands every mempool the same malformed body
        body = _bad_set_body(sim.clients[2], 0)
        node.core.app.submit(body, sim.clients[2].sign(body).signature)
    honest = {"v0", "v2", "v3"}
    sim.run(blocks=8, max_ms=200_000, live=lambda node: node.name in honest)
    nodes = [x for x in sim.nodes if x.name in honest]
    assert all(len(x.committed) >= 8 for x in nodes)
    assert_safe(sim, honest)
    assert any(r.proposer == 1 and "key length" in r.reason for x in nodes for r in x.rejected)


def _mutants(msg, rng):
    """Field-level corruptions of a protocol object, delivered without the wire's checks (so the
    core's own checks are what stands): out-of-range voters, wrong lengths, huge numbers."""
    import numpy as np
    from consensus import messages as m
    ints = [0, 1, 3, 4, 99, 2**16 - 1, 2**48, 2**64 - 1, -1]
    qcs = lambda qc: [replace(qc, voters=(0, 1, 99)), replace(qc, voters=(0, 0, 1)), replace(qc, sigs=b"x"),
                      replace(qc, height=rng.choice(ints)), replace(qc, view=rng.choice(ints)),
                      replace(qc, voters=(-1, 0, 1)), replace(qc, block_id=b"short")]
    if isinstance(msg, m.Proposal):
        b = msg.block
        out = [replace(msg, signature=b"")] + [replace(msg, block=replace(b, qc=q)) for q in qcs(b.qc)]
        out += [replace(msg, block=replace(b, **{f: rng.choice(ints)})) for f in ("view", "height", "proposer")]
        out += [replace(msg, block=replace(b, txs=replace(b.txs, sigs=np.zeros((len(b.txs) + 1, 64), np.uint8))))]
        out += [replace(msg, block=replace(b, txs=replace(b.txs, sigs=np.zeros((3,), np.uint8))))]
        tc = m.TC(b.view - 1, (0, 1, 2), (1, 2), bytes(100), b.qc)
        out += [replace(msg, block=replace(b, tc=tc)), m.BlockResponse((out[0],)), m.BlockResponse(()),
                m.BlockResponse(out[0])]
        return out
    if isinstance(msg, m.Vote):
        return [replace(msg, voter=v) for v in ints] + [replace(msg, signature=b"abc"), replace(msg, view=2**64 - 1)]
    if isinstance(msg, m.Timeout):
        return ([replace(msg, high_qc=q) for q in qcs(msg.high_qc)] + [replace(msg, voter=v) for v in ints]
                + [replace(msg, signature=b""), replace(msg, view=2**64 - 1)])
    return [m.BlockRequest(b"short"), m.BlockRequest(bytes(32)), m.BlockRequest(bytes(32), 2**64, 10**6),
            m.BlockRequest(bytes(32), 1, 0), "not a message", None]


@pytest.mark.parametrize("seed", range(3))
def test_core_handle_never_raises_on_corrupted_messages(seed):
    import random
    from consensus import messages as m
    rng = random.Random(seed)
    sim = Simulation(n=4, seed=seed)
    sim.load(30)
    sim.run(blocks=4)
    core = sim.nodes[0].core
    samples = list(core.proposals.values())
    b = samples[-1].block
    samples += [m.Vote(b.id, b.view, b.height, 1, bytes(64)), m.Timeout(core.view, b.qc, 2, bytes(64)),
                m.BlockRequest(b.id)]
    for node in sim.nodes:
        for msg in samples:
            for bad in _mutants(msg, rng):
                # itself, one Byzantine validator (f = 1: two sending bad frames of their own votes
                # and timeouts, whose links are authenticated, are past what a network of 4 survives)
                # and strangers
                for sender in (node.core.cfg.me, 1, 5, -1):
                    node.core.handle(sender, bad)  # must not raise
        # each corruption met an explicit check, not the last-resort catch in handle()
        assert node.core.counters["input_error"] == 0, node.core.counters
        assert node.core.counters["proposal_malformed"] and node.core.counters["vote_malformed"]
    sim.run(blocks=8)  # and the network still commits
    assert all(len(x.committed) >= 8 for x in sim.nodes)
    assert_safe(sim)


def test_an_application_that_raises_gets_the_block_refused():
    sim = Simulation(n=4, seed=0)
    sim.load(20)
    v3 = sim.nodes[3].core
    validate = v3.app.validate
    calls = []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return validate(*args)
    v3.app.validate = flaky
    sim.run(blocks=5)
    assert all(len(x.committed) >= 5 for x in sim.nodes)
    assert any("validation raised RuntimeError: boom" in r.reason for r in sim.nodes[3].rejected)
    assert v3.counters["validate_error"] == 1


# ---- finding 6: catching up is iterative, ranged, de-duplicated and bounded --------------------

@pytest.mark.parametrize("behind", [1_500, pytest.param(5_000, marks=pytest.mark.slow)])
def test_a_validator_far_behind_catches_up(behind):
    """v3 is down while the others commit 1,500 or 5,000 (empty) blocks, then starts from genesis: it
    fetches the chain in ranges (no recursion: CPython's default limit is 1,000 frames) and
    commits the same blocks."""
    from consensus import messages as m
    sim = Simulation(n=4, seed=7, link=Link((1.0, 5.0)), base_timeout_ms=500.0)
    sim.crashed = {"v3"}
    sim.run(blocks=behind, max_ms=10**7)
    v3 = sim._node("v3")
    assert not v3.committed and all(len(x.committed) >= behind for x in sim.nodes if x is not v3)
    requests = []
    deliver = sim._deliver

    def spy(src, to, msg):
        if src is v3 and isinstance(msg, m.BlockRequest):
            requests.append(msg)
        deliver(src, to, msg)
    sim._deliver = spy
    sim.crashed.clear()
    sim._apply(v3, v3.core.start())
    target = len(sim.nodes[0].committed) + 5
    sim.run(blocks=target, max_ms=sim.now + 600_000, live=lambda node: True)
    assert len(v3.committed) >= target
    assert_safe(sim)
    assert v3.core.counters["input_error"] == 0
    assert len(requests) < behind // 16 and all(r.max_blocks <= m.MAX_RANGE for r in requests)
    assert len({(r.block_id, r.from_height) for r in requests}) == len(requests)  # no request twice


# ---- finding 4: any number of validators can restart together ---------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_all_validators_killed_and_restarted_together_commit_50_more_blocks(tmp_path, seed):
    """Every validator loses its memory at the same moment and starts again from its store: the
    blocks its high QC certifies (and those it voted for) were stored before its votes left, so
    the chain goes on."""
    sim = Simulation(n=4, seed=seed, link=Link((1.0, 20.0)))
    for node in sim.nodes:
        sim.durable(node.name, tmp_path / f"{node.name}.db")
    kill_at = 150.0 + 37.0 * seed
    for node in sim.nodes:
        sim.kill(node.name, kill_at, kill_at + 1_000.0)
    sim.load(600)
    sim.run(blocks=10**9, max_ms=kill_at + 1.0, live=lambda node: True)
    before = {n.name: len(n.committed) for n in sim.nodes}
    assert min(before.values()) >= 2
    sim.run(blocks=max(before.values()) + 50, max_ms=kill_at + 120_000, live=lambda node: True)
    assert all(len(n.committed) >= before[n.name] + 50 for n in sim.nodes), \
        {n.name: (before[n.name], len(n.committed)) for n in sim.nodes}
    assert_safe(sim)
    assert all(len(blocks) == 1 for blocks in sim.votes_signed.values())  # no validator voted twice in a view


# ---- findings 8 and 9: memory flat, and a store checked at start-up ----------------------------

def _held(core) -> dict:
    return {"blocks": len(core.blocks), "states": len(core.states), "proposals": len(core.proposals),
            "timings": len(core.timings), "votes": len(core.votes), "timeouts": len(core.timeouts),
            "parked": len(core.parked), "proposed": len(core.proposed), "timed_out": len(core.timed_out)}


def test_memory_stays_flat_as_the_chain_grows(tmp_path):
    """With a store serving committed blocks, a validator holds the same few blocks, states and
    proposals at height 1,000 as at height 200 (before, every one since genesis)."""
    sim = Simulation(n=4, seed=4, link=Link((1.0, 5.0)))
    for node in sim.nodes:
        sim.durable(node.name, tmp_path / f"{node.name}.db")
    sim.load(400)
    sim.run(blocks=200, max_ms=10**7)
    at_200 = [_held(n.core) for n in sim.nodes]
    sim.run(blocks=1_000, max_ms=10**7)
    at_1000 = [_held(n.core) for n in sim.nodes]
    for a, b in zip(at_200, at_1000):
        assert all(v <= 8 for v in b.values()), b
        assert all(b[k] <= max(a[k], 4) for k in b), (a, b)
    assert_safe(sim)


def test_a_validator_behind_catches_up_from_stores_that_pruned(tmp_path):
    """The others pruned their committed blocks from memory: they serve them from their stores."""
    sim = Simulation(n=4, seed=6, link=Link((1.0, 5.0)))
    for node in sim.nodes:
        sim.durable(node.name, tmp_path / f"{node.name}.db")
    sim.crashed = {"v3"}
    sim.load(300)
    sim.run(blocks=400, max_ms=10**7)
    assert all(len(n.core.proposals) < 10 for n in sim.nodes)
    v3 = sim._node("v3")
    sim.crashed.clear()
    sim._apply(v3, v3.core.start())
    sim.run(blocks=len(sim.nodes[0].committed) + 5, max_ms=sim.now + 300_000, live=lambda node: True)
    assert len(v3.committed) >= 405
    assert_safe(sim)
    assert [p.block.id for p in v3.store.history()] == [b.id for b, _, _ in v3.committed]


def _store_with_blocks(tmp_path, blocks=5):
    tmp_path.mkdir()
    sim = Simulation(n=4, seed=2)
    sim.durable("v0", tmp_path / "v0.db")
    sim.load(50)
    sim.run(blocks=blocks)
    sim._node("v0").store.close()
    return sim, tmp_path / "v0.db"


def _restart_core(sim, path):
    from consensus.store import Store
    store = Store(path)
    app = sim._make_app(sim.genesis)
    key = sim.keys[0]
    return Core(sim.cfg[0], lambda m: key.sign(m).signature, app, store.safety(), store.history(),
                store.committed_range)


def test_store_checks_at_start_up(tmp_path):
    import sqlite3
    from consensus import messages as m
    from consensus.core import InvariantViolation
    from consensus.store import StoreError
    sim, path = _store_with_blocks(tmp_path / "ok")
    core = _restart_core(sim, path)  # an intact store starts
    assert core.committed.height >= 5

    def damaged(name, sql, *args):
        _, p = _store_with_blocks(tmp_path / name)
        db = sqlite3.connect(p)
        db.execute(sql, args)
        db.commit()
        db.close()
        return p

    with pytest.raises(StoreError, match="gap: height 4 follows height 2"):
        _restart_core(sim, damaged("gap", "DELETE FROM committed WHERE height = 3"))
    with pytest.raises(StoreError, match="no safety row"):
        _restart_core(sim, damaged("nosafety", "DELETE FROM safety"))
    with pytest.raises(StoreError, match="height 2 is not the block its row names"):
        _restart_core(sim, damaged("id", "UPDATE committed SET id = ? WHERE height = 2", bytes(32)))
    # a stored transaction signature flipped (re-encoded, so the frame still decodes)
    _, p = _store_with_blocks(tmp_path / "sig")
    db = sqlite3.connect(p)
    height, frame = next((h, f) for h, f in db.execute("SELECT height, proposal FROM committed ORDER BY height")
                         if len(m.decode(f).block.txs))
    prop = m.decode(frame)
    sigs = prop.block.txs.sigs.copy()
    sigs[0, 3] ^= 1
    bad = replace(prop, block=replace(prop.block, txs=replace(prop.block.txs, sigs=sigs)))
    db.execute("UPDATE committed SET proposal = ? WHERE height = ?", (m.encode(bad), height))
    db.commit()
    db.close()
    with pytest.raises(InvariantViolation, match=f"height {height} .*signature digest"):
        _restart_core(sim, p)
    # a proposer's signature flipped
    _, p = _store_with_blocks(tmp_path / "proposer")
    db = sqlite3.connect(p)
    prop = m.decode(db.execute("SELECT proposal FROM committed WHERE height = 2").fetchone()[0])
    bad = replace(prop, signature=bytes(64))
    db.execute("UPDATE committed SET proposal = ? WHERE height = 2", (m.encode(bad),))
    db.commit()
    db.close()
    with pytest.raises(InvariantViolation, match="height 2: its proposer.s signature or a certificate does not verify"):
        _restart_core(sim, p)


def test_block_requests_are_served_from_memory_and_from_the_store(tmp_path):
    from consensus import messages as m
    sim = Simulation(n=4, seed=8)
    sim.durable("v0", tmp_path / "v0.db")
    sim.load(60)
    sim.run(blocks=30)
    v0, v1 = sim.nodes[0].core, sim.nodes[1].core  # v0 pruned its committed proposals, v1 kept them
    chain = [b.id for b, _, _ in sim.nodes[0].committed]
    for core in (v0, v1):
        def ask(block_id, from_height, count):
            out = core.handle(2, m.BlockRequest(block_id, from_height, count))
            return [p.block.id for p in out[0].msg.proposals] if out else []
        assert ask(chain[9], 0, 1) == [chain[9]]                      # the block alone
        assert ask(chain[9], 3, 64) == chain[2:10]                    # its ancestors from height 3
        assert ask(chain[29], 5, 4) == chain[4:8]                     # the oldest 4 of them
        assert ask(chain[-1], 1, 64) == chain[:len(chain)][:64]
        assert ask(chain[9], 11, 64) == [] and ask(bytes(32), 1, 4) == []
        tip = max(core.blocks.values(), key=lambda b: b.height)       # through uncommitted blocks
        got = ask(tip.id, len(chain) - 1, 64)
        assert got[0] == chain[-2] and got[-1] == tip.id


# ---- a Byzantine validator of several kinds, across seeds ---------------------------------------

class Byzantine(Core):
    """Validator 1, misbehaving while `active` (cleared by the test at a set time): `modes` picks
    what it does. equivocate: two different signed blocks per view it leads, one to each half;
    relabel: its proposals' and votes' heights changed; withhold: sends nothing; flood: with every
    message it handles, forged timeouts and votes in others' names (the receiver's included),
    proposals with forged QCs, requests for unknown blocks, and replays of what it received."""
    active = True
    modes: tuple = ()

    def handle(self, sender, msg):
        return self._misbehave(super().handle(sender, msg), msg)

    def on_timer(self, view):
        return self._misbehave(super().on_timer(view), None)

    def _misbehave(self, out, msg):
        import random
        from consensus import messages as m
        if not Byzantine.active:
            return out
        rng = random.Random(len(self.blocks) * 7919 + self.view)
        if "withhold" in self.modes:
            return [a for a in out if not isinstance(a, (Broadcast, Send))]
        res = []
        for a in out:
            msg_out = getattr(a, "msg", None)
            if "relabel" in self.modes and isinstance(msg_out, m.Vote):
                a = replace(a, msg=replace(msg_out, height=msg_out.height + rng.randrange(1, 9)))
            if isinstance(a, Broadcast) and isinstance(msg_out, Proposal) and msg_out.block.proposer == self.cfg.me:
                b = msg_out.block
                if "relabel" in self.modes:
                    bad = replace(b, height=b.height + 3, qc=replace(b.qc, height=b.qc.height + 3))
                    res.append(Broadcast(Proposal(bad, self.sign(proposal_bytes(bad.id, self.cfg.network)))))
                    continue
                if "equivocate" in self.modes:
                    empty = m.Txs.empty()
                    other = replace(b, state_root=bytes(32)) if not len(b.txs) else replace(
                        b, txs=empty, tx_root=self.app.tx_root(empty), sig_digest=empty.digest(),
                        state_root=self.states[b.parent].root)
                    twin = Proposal(other, self.sign(proposal_bytes(other.id, self.cfg.network)))  # valid too, unless b is empty
                    res += [Send(i, msg_out if i % 2 else twin) for i in range(self.cfg.n) if i != self.cfg.me]
                    continue
            res.append(a)
        if "flood" in self.modes:
            newest = max(self.blocks.values(), key=lambda b: b.view)
            forged = QC(newest.id, newest.view + 1, newest.height, (0, 2, 3), bytes(192))
            for i in range(self.cfg.n):
                if i == self.cfg.me:
                    continue
                res += [Send(i, m.Timeout(self.view, forged, i, bytes(64))),
                        Send(i, m.Timeout(self.view, forged, (i + 1) % self.cfg.n, rng.randbytes(64))),
                        Send(i, m.Vote(newest.id, self.view, newest.height, i, rng.randbytes(64))),
                        Send(i, m.BlockRequest(rng.randbytes(32), 1, m.MAX_RANGE))]
                if msg is not None and not isinstance(msg, m.BlockResponse):
                    res.append(Send(i, msg))  # a replay
                if isinstance(msg, Proposal):
                    res.append(Send(i, replace(msg, block=replace(msg.block, qc=replace(msg.block.qc, sigs=bytes(
                        len(msg.block.qc.sigs)))))))
        return res


MODES = [("equivocate",), ("relabel",), ("withhold",), ("flood",), ("equivocate", "flood"), ("relabel", "flood")]


@pytest.mark.parametrize("modes", MODES, ids=["+".join(x) for x in MODES])
@pytest.mark.parametrize("seed", range(4))
def test_a_byzantine_validator_against_three_honest(modes, seed):
    """While it misbehaves the honest three stay on one chain and never raise; after it stops
    (it then runs as an honest validator) every validator commits 10 more blocks."""
    class B(Byzantine):
        pass
    B.modes = modes
    Byzantine.active = True
    sim = Simulation(n=4, seed=seed, link=Link((1.0, 25.0)),
                     make_core=_one_of(1, B))
    sim.load(300)
    honest = {"v0", "v2", "v3"}
    sim.at(3_000.0, lambda s: setattr(Byzantine, "active", False))
    try:
        sim.run(blocks=10**9, max_ms=3_000.0, live=lambda node: node.name in honest)
        during = {n.name: len(n.committed) for n in sim.nodes}
        assert_safe(sim, honest)
        sim.run(blocks=max(during.values()) + 10, max_ms=200_000, live=lambda node: True)
    finally:
        Byzantine.active = True
    assert all(len(n.committed) >= during[n.name] + 10 for n in sim.nodes), (during, sim.chains())
    assert_safe(sim)
    assert all(n.core.counters["input_error"] == 0 for n in sim.nodes if n.name in honest)
    assert min(during[x] for x in honest) >= 3  # the honest made progress under the attack too


def _donor_and_fresh(blocks: int):
    """(simulation, a validator's core that committed `blocks` blocks, its committed blocks, a core
    of the same network that knows the genesis only)."""
    sim = Simulation(n=4, seed=9)
    sim.load(30)
    sim.run(blocks=blocks)
    chain = [b for b, _, _ in sim.nodes[0].committed]
    return sim, sim.nodes[0].core, chain, Simulation(n=4, seed=9).nodes[2].core


def test_a_relayed_copy_with_a_forged_qc_cannot_keep_the_real_proposal_out():
    """The proposer's signature covers the block id, which does not cover the QC: a stranger
    relays a real proposal whose parent the receiver lacks, with its QC's signatures zeroed, ahead
    of the real one. The copy is refused before it is parked; the real one is parked and taken."""
    from consensus import messages as m
    sim, donor, chain, fresh = _donor_and_fresh(6)
    real = donor.proposals[chain[3].id]
    forged = replace(real, block=replace(real.block, qc=replace(real.block.qc, sigs=bytes(len(real.block.qc.sigs)))))
    assert forged.block.id == real.block.id
    assert [type(a).__name__ for a in fresh.handle(3, forged)] == ["Rejected"]
    out = fresh.handle(0, real)
    assert real.block.id in fresh.parked and any(isinstance(a.msg, m.BlockRequest) for a in out if hasattr(a, "msg"))
    fresh.handle(0, m.BlockResponse(tuple(donor.proposals[b.id] for b in chain[:3])))
    assert real.block.id in fresh.blocks


def test_one_equivocating_leader_cannot_fill_the_parked_proposals():
    """A Byzantine leader signs many versions of its block over a parent the receiver lacks (each
    with a valid QC and its own signature, so each passes the checks before parking): one of a
    proposer's view is parked (review s22; before, MAX_PARKED / n of them), and another leader's
    proposal still is."""
    from consensus.core import MAX_PARKED
    sim, donor, chain, fresh = _donor_and_fresh(8)
    real = donor.proposals[chain[3].id]
    leader = real.block.proposer
    for j in range(MAX_PARKED):
        block = replace(real.block, state_root=j.to_bytes(32, "big"))
        fresh.handle(leader, Proposal(block, sim.keys[leader].sign(proposal_bytes(block.id, sim.network)).signature))
    mine = sum(1 for q in fresh.parked.values() if q == leader)
    assert mine == 1 and fresh.counters["proposal_equivocation"] == MAX_PARKED - mine
    other = next(donor.proposals[b.id] for b in chain[4:] if b.proposer != leader)
    fresh.handle(other.block.proposer, other)
    assert other.block.id in fresh.parked


def test_a_restarted_validator_far_behind_fetches_its_high_qcs_block_from_everyone(tmp_path):
    """v3 stops at about height 20 and starts again from its store once the others are 300 blocks
    further: its start-up fetch (asked of everyone) goes on range after range with whoever answers."""
    sim = Simulation(n=4, seed=5, link=Link((1.0, 5.0)))
    for node in sim.nodes:
        sim.durable(node.name, tmp_path / f"{node.name}.db")
    sim.load(100)
    sim.run(blocks=20, max_ms=10**7)
    sim.crashed = {"v3"}
    sim.run(blocks=320, max_ms=10**7)
    v3 = sim._node("v3")
    sim.crashed.clear()
    sim._restart(v3)
    sim.run(blocks=len(sim.nodes[0].committed) + 3, max_ms=sim.now + 300_000, live=lambda node: True)
    assert len(v3.committed) >= 320
    assert_safe(sim)


def test_signed_votes_and_timeouts_for_many_views_do_not_pile_up():
    """A Byzantine validator signs votes for many blocks and future views, and timeouts for many
    future views: the next leader keeps one vote per voter and view, none beyond VOTE_WINDOW views
    ahead, and one future timeout per voter."""
    import os
    from consensus import messages as m
    from consensus.core import VOTE_WINDOW
    sim = Simulation(n=4, seed=1)
    sim.load(20)
    sim.run(blocks=3)
    core, byz = sim.nodes[0].core, sim.keys[2]
    gqc = QC(core.genesis.id, 0, 0)
    before = (len(core.votes), len(core.timeouts))
    led = [v for v in range(core.view, core.view + 3 * VOTE_WINDOW) if core.cfg.leader(v + 1) == 0]
    for view in led:
        for _ in range(3):
            block_id = os.urandom(32)
            core.handle(2, m.Vote(block_id, view, 5, 2, byz.sign(m.vote_bytes(block_id, view, sim.network)).signature))
    for view in range(core.view + 1, core.view + 300):
        core.handle(2, m.Timeout(view, gqc, 2, byz.sign(m.timeout_bytes(view, 0, sim.network)).signature))
    assert len(core.votes) <= before[0] + VOTE_WINDOW // 4 + 2
    assert all(len(s) <= 1 for v, s in core.vote_voters.items() if v > core.view)
    assert sum(2 in t for v, t in core.timeouts.items() if v > core.view) == 1
    assert core.counters["vote_far_ahead"] > 0
    sim.run(blocks=8)
    assert all(len(x.committed) >= 8 for x in sim.nodes)
