"""Review s22 of the consensus layer:
1. a Byzantine leader signed MAX_PARKED / n versions of its block of one view, each a frame of junk
   transactions on a real QC whose block a validator behind lacked: every one was parked (no byte
   bound: 4 GiB at 64 MiB a frame) and, once the parent came, every one validated in one handle().
   Now one block of a proposer's view is parked unless it is certified, and a proposer's parked
   transactions take at most core.PARKED_BYTES / n (one always fits);
2. the proposer's own copies of its held block with forged certificates each cost a full batch of
   certificate checks and never muted it;
3. a key-value block had no byte bound (a "set" carries up to 64 KiB): every leader proposed the
   same block no frame holds and the chain stopped; and a validator behind was answered small
   blocks and then one near a frame's size in one BlockResponse no frame holds, by every peer."""
import os
from dataclasses import replace

import numpy as np
from nacl.signing import SigningKey

from consensus import core as core_mod
from consensus import messages
from consensus.apps import kv
from consensus.core import MAX_PARKED, Core
from consensus.messages import QC, TC, Block, BlockRequest, BlockResponse, Proposal, Timeout, Txs, proposal_bytes, \
    timeout_bytes
from consensus.sim import Simulation

BYZ, VICTIM, HONEST = 1, 3, 0


def _junk_txs(count: int) -> Txs:
    body = kv.transfer_body(bytes(SigningKey(b"\x07" * 32).verify_key), 0, bytes(32), 1)
    rng = np.random.default_rng(1)
    return kv.pack_txs([body] * count, [bytes(rng.integers(0, 256, 64, dtype=np.uint8)) for _ in range(count)])


def _behind():
    """A network 14 blocks on, a validator holding only the genesis, and a real QC over a block it
    lacks, of a view just before one BYZ leads (the chain to that block from an honest peer)."""
    sim = Simulation(n=4, seed=3)
    sim.load(40)
    sim.run(blocks=14)
    cfg = sim.cfg[VICTIM]
    committed = sim.nodes[HONEST].committed
    by_id = {b.id: b for b, _, _ in committed}
    qc = next(replace(b.qc, height=by_id[b.qc.block_id].height) for b, _, _ in committed
              if b.qc.view and cfg.leader(b.qc.view + 1) == BYZ and b.qc.block_id in by_id)
    chain = [sim.nodes[HONEST].core.proposals[b.id] for b, _, _ in committed if b.height <= qc.height]
    app = sim._make_app(sim.genesis)
    victim = Core(cfg, lambda m, k=sim.keys[VICTIM]: k.sign(m).signature, app)
    victim.start()
    return sim, qc, chain, victim


def _signed(sim, b: Block) -> Proposal:
    return Proposal(b, sim.keys[b.proposer].sign(proposal_bytes(b.id, sim.network)).signature)


def test_one_block_of_a_proposers_view_is_parked_and_its_junk_validated_once():
    sim, qc, chain, victim = _behind()
    txs = _junk_txs(2_000)
    root, digest = victim.app.tx_root(txs), txs.digest()
    validated = []
    real = victim.app.validate
    victim.app.validate = lambda *a: validated.append(a[1].id) or real(*a)
    ids = []
    for _ in range(MAX_PARKED // 4):
        b = Block(qc.view + 1, qc.height + 1, qc.block_id, BYZ, root, os.urandom(32), digest, txs, qc)
        victim.handle(BYZ, messages.decode(messages.encode(_signed(sim, b))))
        ids.append(b.id)
    assert sum(1 for q in victim.parked.values() if q == BYZ) == 1
    assert victim.counters["proposal_equivocation"] == MAX_PARKED // 4 - 1
    victim.handle(HONEST, BlockResponse(tuple(chain)))
    assert chain[-1].block.id in victim.blocks
    assert len([i for i in validated if i in set(ids)]) == 1


def test_a_proposers_parked_blocks_are_bounded_in_bytes_one_always_fits(monkeypatch):
    """Blocks of BYZ's later views (each on a TC of the view before: signed, valid on their face)
    over a parent the validator lacks: past the proposer's share of PARKED_BYTES none is parked."""
    sim, qc, chain, victim = _behind()
    txs = _junk_txs(1_000)
    size = txs.bodies.data.nbytes + txs.sigs.nbytes
    monkeypatch.setattr(core_mod, "PARKED_BYTES", 4 * (2 * size + size // 2))  # a share of 2.5 blocks
    root, digest = victim.app.tx_root(txs), txs.digest()
    parked = 0
    for view in range(qc.view + 1, qc.view + 40):
        if sim.cfg[0].leader(view) != BYZ:
            continue
        tc = None
        if view != qc.view + 1:
            tos = [Timeout(view - 1, qc, i, sim.keys[i].sign(timeout_bytes(view - 1, qc.view, sim.network)).signature)
                   for i in range(3)]
            tc = TC(view - 1, (0, 1, 2), (qc.view,) * 3, b"".join(t.signature for t in tos), qc)
        b = Block(view, qc.height + 1, qc.block_id, BYZ, root, os.urandom(32), digest, txs, qc, tc)
        victim.handle(BYZ, _signed(sim, b))
        parked = sum(1 for q in victim.parked.values() if q == BYZ)
    assert parked == 2 and victim.counters["parked_full_proposer"] >= 1
    # a block over the share is parked for a proposer with nothing parked
    big = _junk_txs(4_000)
    other = next(v for v in range(qc.view + 1, qc.view + 40) if sim.cfg[0].leader(v) == 2 and v > qc.view + 1)
    tos = [Timeout(other - 1, qc, i, sim.keys[i].sign(timeout_bytes(other - 1, qc.view, sim.network)).signature)
           for i in range(3)]
    tc = TC(other - 1, (0, 1, 2), (qc.view,) * 3, b"".join(t.signature for t in tos), qc)
    b = Block(other, qc.height + 1, qc.block_id, 2, victim.app.tx_root(big), os.urandom(32), big.digest(), big, qc, tc)
    victim.handle(2, _signed(sim, b))
    assert b.id in victim.parked
    assert messages.proposal_size(_signed(sim, b)) == len(messages.encode(_signed(sim, b))) - 6  # (with a TC)


def test_forged_copies_of_a_held_block_cost_the_proposer_its_view():
    sim = Simulation(n=4, seed=5, validation="software")
    sim.load(20)
    sim.run(blocks=6)
    core, cfg, net = sim.nodes[0].core, sim.cfg[0], sim.network
    c = core.view
    byz = cfg.leader(c + 1)
    assert byz != 0
    hq, committed = core.safety.high_qc, core.committed
    child = next(b for b in core.blocks.values() if b.parent == committed.id and b.qc.block_id == committed.id)
    low = replace(child.qc, height=committed.height)
    tos = [Timeout(c, hq, i, sim.keys[i].sign(timeout_bytes(c, hq.view, net)).signature) for i in range(4)]
    for t in tos[1:]:
        core.handle(t.voter, t)
    assert core.view == c + 1
    tc = TC(c, (1, 2, 3), (hq.view,) * 3, b"".join(t.signature for t in tos[1:]), hq)
    empty = Txs.empty()
    held = Block(c + 1, committed.height + 1, committed.id, byz, core.app.tx_root(empty),
                 core.states[committed.id].root, empty.digest(), empty, low, tc)
    ph = _signed(sim, held)
    core.handle(byz, ph)
    assert held.id in core.blocks and not core._safe_to_vote(held)  # taken, not votable (the lock)
    checked = []
    verify = core.app.verifier.verify_lists
    core.app.verifier.verify_lists = lambda k, m, s: checked.append(len(k)) or verify(k, m, s)
    for _ in range(50):
        forged = QC(os.urandom(32), c, committed.height, (1, 2, 3), os.urandom(192))
        core.handle(byz, Proposal(replace(held, qc=forged, tc=None), ph.signature))
    assert sum(checked) <= cfg.quorum + 1 and core.muted.get(byz) == core.view


def test_a_kv_block_takes_at_most_block_bytes_and_a_larger_one_is_refused():
    sim = Simulation(n=4, seed=1, validation="software", txs_per_block=1_100)
    client = SigningKey(b"\x09" * 32)
    batch = []
    for i in range(1_100):
        body = kv.set_body(bytes(client.verify_key), i, b"k", bytes(65_535))
        batch.append((body, [client.sign(body).signature]))
    app = sim.nodes[0].core.app
    assert not any(app.submit_many(batch))
    genesis = sim.nodes[0].core.states[sim.nodes[0].core.committed.id]
    txs, _ = app.propose(genesis, set())
    assert 0 < len(txs) < 1_100 and kv._block_bytes(txs) <= kv.BLOCK_BYTES
    over = kv.pack_txs([b for b, _ in batch[:len(txs) + 1]], [s[0] for _, s in batch[:len(txs) + 1]])
    b = Block(1, 1, bytes(32), 0, app.tx_root(over), bytes(32), over.digest(), over, QC(bytes(32), 0, 0))
    verdict = app.validate(genesis, b, ([], [], []))
    assert not verdict.ok and "over" in verdict.reason
    for node in sim.nodes[1:]:
        assert not any(node.core.app.submit_many(batch))
    sim.run(blocks=3, max_ms=60_000)  # (before: no block in 30 s, each leader's unsendable)
    assert min(len(n.committed) for n in sim.nodes) >= 3


def test_a_block_response_stops_before_a_proposal_no_frame_would_hold(monkeypatch):
    sim = Simulation(n=4, seed=3)
    sim.load(100)
    sim.run(blocks=12)
    core = sim.nodes[0].core
    chain = [core.proposals[b.id] for b, _, _ in sim.nodes[0].committed]
    sizes = [messages.proposal_size(p) for p in chain]
    assert all(s == len(messages.encode(p)) - 6 for s, p in zip(sizes, chain))  # (length, version, type)
    limit = messages.RESPONSE_HEAD + sum(sizes[:5]) + sizes[5] // 2  # the 6th would not fit
    monkeypatch.setattr(core_mod, "MAX_MESSAGE", limit)
    (send,) = core.handle(3, BlockRequest(chain[-1].block.id, 1, messages.MAX_RANGE))
    assert [p.block.id for p in send.msg.proposals] == [p.block.id for p in chain[:5]]
    assert len(messages.encode(send.msg)) - 4 <= limit
    monkeypatch.setattr(core_mod, "MAX_MESSAGE", 10)  # one proposal is always sent
    (send,) = core.handle(3, BlockRequest(chain[-1].block.id, 1, messages.MAX_RANGE))
    assert len(send.msg.proposals) == 1
