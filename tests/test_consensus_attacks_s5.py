"""Attacks on the consensus core by an authenticated Byzantine validator (review s5): blocks it
signs for views it leads (any number of them, far ahead or many versions of one view), handed
over directly or in unasked BlockResponses, must not pile up in an honest validator's memory or
each cost it a validation; and a relayed copy of a proposal with other transactions must not keep
the real one out of the parked proposals. Each test injects what the attacker can sign with its
own key only, and checks the honest validators keep committing."""
import hashlib
from dataclasses import replace

from consensus import messages as m
from consensus.core import Broadcast, Core, Rejected, Send
from consensus.messages import QC, Block, BlockResponse, Proposal, proposal_bytes, vote_bytes
from consensus.sim import Simulation
from test_consensus import assert_safe


def _running(blocks=3, seed=1):
    sim = Simulation(n=4, seed=seed)
    sim.load(400)  # more than the blocks take: variants of a block pick different transactions
    sim.run(blocks=blocks)
    return sim


def _signed(sim, block: Block) -> Proposal:
    return Proposal(block, sim.keys[block.proposer].sign(proposal_bytes(block.id, sim.network)).signature)


def _qc(sim, block: Block, voters=(0, 1, 2)) -> QC:
    """A real QC over `block`: the voters' signatures (as honest validators that voted for it)."""
    sigs = b"".join(sim.keys[v].sign(vote_bytes(block.id, block.view, sim.network)).signature for v in voters)
    return QC(block.id, block.view, block.height, tuple(voters), sigs)


def _variant(core, parent: Block, qc: QC, view: int, proposer: int, skip: int) -> Block:
    """A valid block of `view` over `parent`: the mempool's transactions but the first `skip`
    (each skip a different block with its own correct roots)."""
    exclude = set(list(core.app.mempool)[:skip])
    txs, state = core.app.propose(core.states[parent.id], exclude)
    return Block(view, parent.height + 1, parent.id, proposer, core.app.tx_root(txs), state.root, txs.digest(), txs, qc)


def test_blocks_for_far_future_views_of_a_byzantine_leader_are_not_kept():
    """A Byzantine validator signs a valid block over the current high QC for each of its views
    ahead (views it leads, up to 4,000 views on): no honest validator votes for a block whose QC
    is not of the view before it, so none is validated or kept (before the fix: all 1,000 were,
    each with its state), and the chain goes on."""
    sim = _running()
    core = sim.nodes[0].core
    hq, byz = core.safety.high_qc, 2
    parent = core.blocks[hq.block_id]
    before = len(core.blocks)
    out = []
    for view in range(core.view + 2, core.view + 4_000):
        if core.cfg.leader(view) == byz:
            out += core.handle(byz, _signed(sim, _variant(core, parent, hq, view, byz, 0)))
    assert len(core.blocks) <= before and len(core.states) == len(core.blocks)
    assert out and all(isinstance(a, Rejected) for a in out)
    sim.run(blocks=8)
    assert all(len(n.committed) >= 8 for n in sim.nodes)
    assert_safe(sim)


def _child(core, grandparent: Block, b: Block, qc_b: QC) -> Block:
    """A valid block of the view after b's, over b (b not held: its state is computed here), by
    that view's leader, carrying qc_b."""
    state_b = core.app.execute(core.states[grandparent.id], b.txs.bodies)
    txs, state = core.app.propose(state_b, {hashlib.sha256(b.txs.bodies.item(i)).digest() for i in range(len(b.txs))})
    return Block(b.view + 1, b.height + 1, b.id, core.cfg.leader(b.view + 1), core.app.tx_root(txs), state.root,
                 txs.digest(), txs, qc_b)


def _first_of_view(sim, core, parent, hq, view, byz) -> Block:
    """The block of `view` the core holds (the real one, if it came), else version 0, sent now."""
    held = [b for b in core.blocks.values() if b.view == view]
    if not held:
        core.handle(byz, _signed(sim, _variant(core, parent, hq, view, byz, 0)))
        held = [b for b in core.blocks.values() if b.view == view]
    assert len(held) == 1
    return held[0]


def _equivocation_setup():
    """A running simulation, an honest validator's core, and the Byzantine leader of the view
    after the core's high QC (not the core's own validator)."""
    sim = _running()
    for node in sim.nodes:
        core = node.core
        hq = core.safety.high_qc
        byz = core.cfg.leader(hq.view + 1)
        if byz != node.index:
            return sim, node, core, hq, byz
    raise AssertionError("no validator that is not the next leader")


def test_one_view_of_an_equivocating_leader_keeps_one_block_directly_or_in_responses():
    """The Byzantine leader of the next view signs 40 valid versions of its block (different
    transactions, each with correct roots) and sends them directly, then 40 more in unasked
    BlockResponses: one block of that view is kept and validated, the others are dropped before
    any validation (before the fix: all 80 kept, each executed)."""
    sim, node, core, hq, byz = _equivocation_setup()
    parent = core.blocks[hq.block_id]
    view = hq.view + 1
    before = len(core.blocks)
    for skip in range(40):
        core.handle(byz, _signed(sim, _variant(core, parent, hq, view, byz, skip)))
    for start in range(40, 80, 4):
        props = tuple(_signed(sim, _variant(core, parent, hq, view, byz, s)) for s in range(start, start + 4))
        core.handle(byz, BlockResponse(props))
    kept = [b for b in core.blocks.values() if b.view == view]
    assert len(kept) == 1 and len(core.blocks) <= before + 1 and len(core.states) == len(core.blocks)
    assert core.counters["proposal_equivocation"] >= 79  # (80 where the real block of the view came first)
    sim.run(blocks=len(node.committed) + 6)
    assert all(len(n.committed) >= 8 for n in sim.nodes)
    assert_safe(sim)


def test_a_second_block_of_a_view_that_the_others_certified_is_still_taken():
    """The other side of the one-block-a-view rule: the validator first took version A of an
    equivocating leader's view; the others certified version B. B is fetched (the next proposal's
    verified QC names it) and taken, and so is B in a response whose next proposal's QC
    certifies it (verified before B is taken)."""
    sim, node, core, hq, byz = _equivocation_setup()
    parent = core.blocks[hq.block_id]
    view = hq.view + 1
    a = _first_of_view(sim, core, parent, hq, view, byz)
    b = _variant(core, parent, hq, view, byz, 5)
    assert a.id != b.id
    child = _child(core, parent, b, _qc(sim, b))
    # B alone, directly: a second block of the view, not certified as far as this validator knows
    core.handle(byz, _signed(sim, b))
    assert b.id not in core.blocks and core.counters["proposal_equivocation"] == 1
    # in a response with the child carrying its QC: taken, and so is the child
    core.handle(child.proposer, BlockResponse((_signed(sim, b), _signed(sim, child))))
    assert b.id in core.blocks and child.id in core.blocks
    assert core.safety.high_qc.block_id == b.id


def test_a_second_block_of_a_view_is_taken_when_fetched():
    """As above, by the usual path: the child arrives first (parked, B fetched), B in the answer."""
    sim, node, core, hq, byz = _equivocation_setup()
    parent = core.blocks[hq.block_id]
    view = hq.view + 1
    a = _first_of_view(sim, core, parent, hq, view, byz)
    b = _variant(core, parent, hq, view, byz, 5)
    assert a.id != b.id
    child = _child(core, parent, b, _qc(sim, b))
    out = core.handle(child.proposer, _signed(sim, child))
    assert child.id in core.parked and any(isinstance(getattr(x, "msg", None), m.BlockRequest) for x in out)
    core.handle(child.proposer, BlockResponse((_signed(sim, b),)))
    assert b.id in core.blocks and child.id in core.blocks


def test_a_relayed_copy_with_other_transactions_cannot_keep_the_real_proposal_out():
    """The proposer's signature covers the block id, and the id covers the transactions only by
    their root and signature digest: a Byzantine peer relays a real proposal whose parent the
    receiver lacks with one transaction signature changed, ahead of the real one. The copy is
    refused before it is parked (before the fix it was parked, the real one dropped as a
    duplicate, and the copy then rejected once the parent came: the block was lost); the real one
    is parked and taken."""
    import numpy as np
    sim = Simulation(n=4, seed=9)
    sim.load(200)
    sim.run(blocks=6)
    donor = sim.nodes[0].core
    chain = [b for b, _, _ in sim.nodes[0].committed]
    fresh = Simulation(n=4, seed=9).nodes[2].core
    real = donor.proposals[chain[3].id]
    assert len(real.block.txs) > 0
    sigs = np.array(real.block.txs.sigs, copy=True)
    sigs[0, 0] ^= 1
    forged = replace(real, block=replace(real.block, txs=replace(real.block.txs, sigs=sigs)))
    assert forged.block.id == real.block.id
    assert [type(a).__name__ for a in fresh.handle(3, forged)] == ["Rejected"]
    fresh.handle(0, real)
    assert real.block.id in fresh.parked
    fresh.handle(0, m.BlockResponse(tuple(donor.proposals[b.id] for b in chain[:3])))
    assert real.block.id in fresh.blocks


class _ScanCountingList(list):
    """A chain of committed ids that counts the whole-chain scans made on it."""
    scans = 0

    def index(self, *args):
        type(self).scans += 1
        return super().index(*args)

    def __contains__(self, item):
        type(self).scans += 1
        return super().__contains__(item)


def test_block_requests_for_unknown_ids_cost_no_scan_of_the_chain(tmp_path):
    """A Byzantine validator asks for blocks nobody committed (random ids), at its full frame rate:
    each request was a scan of the whole committed chain (10 ms at a million blocks, 2,000 frames
    a second allowed per validator), now a lookup; a pruned committed block is still served."""
    import os
    sim = Simulation(n=4, seed=3)
    sim.durable("v0", tmp_path / "v0.db")
    sim.load(100)
    sim.run(blocks=12)
    core = sim.nodes[0].core
    core.chain = _ScanCountingList(core.chain)
    for _ in range(200):
        assert core.handle(2, m.BlockRequest(os.urandom(32), 1, m.MAX_RANGE)) == []
    old = core.chain[2]
    assert old not in core.blocks  # pruned from memory, served from the store
    out = core.handle(2, m.BlockRequest(old, 1, m.MAX_RANGE))
    assert [p.block.id for p in out[0].msg.proposals] == list(core.chain[1:3])
    assert _ScanCountingList.scans == 0


def _runner(tmp_path):
    from consensus.localnet import write_configs
    from consensus.node import NodeConfig, NodeRunner
    config = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, app="kv", load="none")[0]
    return NodeRunner(NodeConfig.load(config))


async def _work_through(node):
    import asyncio
    task = asyncio.create_task(node._consensus())
    while node.inbox.qsize():
        await asyncio.sleep(0.01)
    task.cancel()


def test_a_proposal_claiming_a_far_height_does_not_make_a_validator_catch_up(tmp_path):
    """A Byzantine peer sends a proposal claiming height 2^40 (unsigned, its parent unknown): the
    node's /health said "catching up" for ever (highest_seen took the claim on arrival); only a
    proposal the core took or parked counts now."""
    import asyncio
    node = _runner(tmp_path)
    try:
        core = node.core
        g = core.genesis
        fake = Block(2, 1 << 40, bytes(32), 2, g.tx_root, g.state_root, g.sig_digest, g.txs,
                     QC(bytes(32), 1, (1 << 40) - 1))
        node._deliver(2, Proposal(fake, bytes(64)))
        asyncio.run(_work_through(node))
        assert node.highest_seen == 0 and not node.catching_up()
    finally:
        node.store.close()
        node.events.close()


def test_block_and_snapshot_requests_wait_for_the_peer_to_read_its_answers(tmp_path):
    """A Byzantine peer sends requests and does not read the answers: each answer costs a read and
    an encoding of up to RANGE_BYTES (a request 50 bytes), and all were made and then dropped at
    the full outgoing queue. Past REQUEST_BACKLOG bytes waiting for that peer its requests are
    dropped before the core serves them (counted); another peer's are served."""
    import asyncio
    from types import SimpleNamespace
    from consensus import node as node_module
    backlog = getattr(node_module, "REQUEST_BACKLOG", m.RANGE_BYTES)  # (the limit: one largest answer)
    node = _runner(tmp_path)
    try:
        served = []
        handle = node.core.handle
        node.core.handle = lambda sender, msg: served.append(sender) or handle(sender, msg)
        node.net = SimpleNamespace(queued_bytes={1: backlog, 2: 0}, answer_bytes={1: 0, 2: 0}, send=lambda *a: None)
        for _ in range(50):
            node._deliver(1, m.BlockRequest(node.core.genesis.id, 1, m.MAX_RANGE))
            node._deliver(1, m.SnapshotRequest(0, 0))
        node._deliver(2, m.BlockRequest(node.core.genesis.id, 1, m.MAX_RANGE))
        asyncio.run(_work_through(node))
        assert served == [2] and node.core.counters["request_backlog"] == 100
    finally:
        node.store.close()
        node.events.close()


def test_damaged_safety_rows_stop_the_start_with_one_store_error(tmp_path):
    """An operator's store damaged in the safety row or the uncommitted blocks (a truncated high
    QC, garbage, another message type, another block's frame under a row): each start-up stops
    with a StoreError naming what is wrong (before: a DecodeError or an AttributeError from inside
    the core's start, a traceback instead of the node's one line)."""
    import shutil
    import sqlite3

    import pytest

    from consensus.store import Store, StoreError
    sim = Simulation(n=4, seed=2)
    sim.durable("v0", tmp_path / "v0.db")
    sim.load(50)
    sim.run(blocks=5)
    sim._node("v0").store.close()
    db = sqlite3.connect(tmp_path / "v0.db")
    top = db.execute("SELECT MAX(height) FROM committed").fetchone()[0]
    rows = db.execute("SELECT id, height, proposal FROM uncommitted WHERE height > ?", (top,)).fetchall()
    db.close()
    assert rows
    vote = m.encode(m.Vote(bytes(32), 1, 1, 1, bytes(64)))
    db = sqlite3.connect(tmp_path / "v0.db")
    other = db.execute("SELECT proposal FROM committed WHERE height = 1").fetchone()[0]  # another block's
    db.close()
    cases = {
        "qc": ("UPDATE safety SET high_qc = substr(high_qc, 1, 20)", "high QC does not decode"),
        "garbage": ("UPDATE uncommitted SET proposal = x'00000003010203'", "does not decode"),
        "vote": ("UPDATE uncommitted SET proposal = ?", "not the block its row names", vote),
        "other": ("UPDATE uncommitted SET proposal = ?", "not the block its row names", other),
        "view": ("UPDATE safety SET last_voted_view = -5", "not a view"),
    }
    for name, (sql, why, *args) in cases.items():
        path = tmp_path / f"{name}.db"
        shutil.copy(tmp_path / "v0.db", path)
        db = sqlite3.connect(path)
        db.execute(sql, args)
        db.commit()
        db.close()
        store = Store(path)
        try:
            with pytest.raises(StoreError, match=why):
                store.safety()
        finally:
            store.close()
    intact = Store(tmp_path / "v0.db")
    assert len(intact.safety().blocks) == len(rows)
    intact.close()


def test_a_peer_answering_fetches_one_block_at_a_time_is_passed_over():
    """A Byzantine peer answers a validator's fetch (asked of everyone) first, with one real block
    each time: the fetch went on with it alone, one block per round trip instead of MAX_RANGE.
    An answer short of MAX_RANGE proposals and of RANGE_BYTES that does not reach the fetched
    block now has the next range asked of the next validator; a full answer goes on with its peer."""
    sim = Simulation(n=4, seed=9)
    sim.load(200)
    sim.run(blocks=150)
    donor = sim.nodes[0].core
    chain = [b for b, _, _ in sim.nodes[0].committed]
    fresh = Simulation(n=4, seed=9).nodes[2].core
    target = chain[140].id
    fresh._fetch(target, fresh.cfg.me)
    asked = []
    for _ in range(3):  # validator 1, one block at a time
        nxt = chain[fresh.committed.height:fresh.committed.height + 1]
        out = fresh.handle(1, m.BlockResponse(tuple(donor.proposals[b.id] for b in nxt)))
        asked += [a.to for a in out if isinstance(getattr(a, "msg", None), m.BlockRequest)]
        if fresh.fetching.get(target) != 1:
            break
    assert asked and asked[0] == 3 and fresh.fetching[target] == 3  # (2 is the validator itself)
    full = [donor.proposals[b.id] for b in chain if b.id not in fresh.blocks][:m.MAX_RANGE]
    out = fresh.handle(3, m.BlockResponse(tuple(full)))
    assert [a.to for a in out if isinstance(getattr(a, "msg", None), m.BlockRequest)] == [3]


class _Withholding(Core):
    """A Byzantine leader that sends its proposal to every validator but the next leader."""

    def _propose(self, view):
        out = []
        for a in super()._propose(view):
            if isinstance(a, Broadcast) and isinstance(a.msg, Proposal):
                nxt = self.cfg.leader(view + 1)
                out += [Send(i, a.msg) for i in range(self.cfg.n) if i not in (self.cfg.me, nxt)]
            else:
                out.append(a)
        return out


def test_a_proposal_withheld_from_the_next_leader_still_commits_and_costs_no_view():
    """The next leader forms the QC from the others' votes but lacks the block: it fetched the
    block and dropped the QC, and its own view timed out (a withholding leader cost two views
    each time, and none of its blocks committed: 45 views for 21 blocks). The QC is kept until the
    block arrives, then taken and the view proposed in: the withheld blocks commit and views stay
    about one a block."""
    sim = Simulation(n=4, seed=3, make_core=lambda cfg, *a: (_Withholding if cfg.me == 1 else Core)(cfg, *a))
    sim.load(400)
    sim.run(blocks=20, max_ms=60_000)
    v0 = sim.nodes[0]
    assert len(v0.committed) >= 20
    assert sum(b.proposer == 1 for b, _, _ in v0.committed) >= 3
    assert v0.core.view <= len(v0.committed) + 6
    assert_safe(sim)


def test_a_flood_of_refused_proposals_is_counted_not_logged_line_by_line(tmp_path, caplog):
    """A peer sends 500 unsigned proposals that break a rule on their face (a view whose leader is
    not the proposer they name): each was a warning and an events-file line naming that proposer
    (2,000 frames a second allowed: hundreds of KB a second of disk). Now each is counted in the
    metric and one line per proposer is written, saying how many were not."""
    import asyncio
    import json
    import logging
    node = _runner(tmp_path)
    try:
        g = node.core.genesis
        caplog.set_level(logging.WARNING, logger="consensus.node")
        for view in range(2, 1002, 2):  # proposer 3 is the leader of none of these views
            fake = Block(view, 1, g.id, 3, g.tx_root, g.state_root, g.sig_digest, g.txs, QC(g.id, 0, 0))
            node._deliver(1, Proposal(fake, bytes(64)))
        asyncio.run(_work_through(node))
        node.events.flush()
        events = [json.loads(line) for line in open(node.cfg.events)]
        rejected = [e for e in events if e["kind"] == "rejected"]
        assert len(rejected) == 1 and rejected[0]["proposer"] == 3
        assert len([r for r in caplog.records if r.getMessage() == "rejected a block"]) == 1
        assert node.metrics.rejected._value.get() == 500
    finally:
        node.store.close()
        node.events.close()


def test_inputs_that_raise_are_counted_and_logged_sparsely(caplog):
    """Whatever input makes the core or an application raise, a peer can send at its full rate:
    each was a traceback in the log. Now each is counted and logged the 1st, 2nd, 4th, 8th...
    time: 100 raising validations and 100 raising messages give 7 tracebacks each."""
    import logging
    sim = Simulation(n=4, seed=1)
    sim.load(200)
    core = sim.nodes[0].core  # at the genesis: view 1 is validator 1's
    parent, hq, byz = core.genesis, QC(core.genesis.id, 0, 0), 1
    caplog.set_level(logging.ERROR, logger="consensus.core")

    def boom(*args):
        raise RuntimeError("boom")
    core.app.validate = boom
    for skip in range(100):  # none is taken, so each version of the view is validated
        out = core.handle(byz, _signed(sim, _variant(core, parent, hq, 1, byz, skip)))
        assert [type(a).__name__ for a in out] == ["Rejected"]
    core._dispatch = boom
    for _ in range(100):
        assert core.handle(byz, m.Vote(bytes(32), 1, 1, 1, bytes(64))) == []
    assert core.counters["input_error"] == 100
    assert len([r for r in caplog.records if "it raised" in r.getMessage()]) == 7
    assert core.counters["validate_error"] == 100
    assert len([r for r in caplog.records if "validation of block" in r.getMessage()]) == 7


def test_a_leader_shown_a_qc_it_lacks_in_a_timeout_proposes_once_the_block_arrives():
    """A timeout carries a QC over a block the next leader does not hold (the leader missed the
    proposal): the QC moves it to its view, where it proposed a block over its older QC, which no
    one votes for, and the view was lost. Now it proposes nothing until the block arrives
    (fetched), then extends it."""
    from consensus.messages import Timeout, timeout_bytes
    sim = _running()
    for node in sim.nodes:
        core = node.core
        hq = core.safety.high_qc
        if core.cfg.leader(hq.view + 2) == node.index and core.view == hq.view + 1:
            break
    else:
        raise AssertionError("no validator leading the view after next")
    view, others = hq.view + 1, [i for i in range(4) if i != node.index]
    parent = core.blocks[hq.block_id]
    b = _variant(core, parent, hq, view, core.cfg.leader(view), 3)
    qc_b = _qc(sim, b, tuple(sorted(others)))
    assert b.id not in core.blocks
    voter = others[-1]
    out = core.handle(voter, Timeout(view, qc_b, voter, sim.keys[voter].sign(timeout_bytes(view, view, sim.network)).signature))
    assert core.view == view + 1 and b.id in core.fetching
    assert not any(isinstance(a, Broadcast) and isinstance(a.msg, Proposal) for a in out)
    out = core.handle(others[0], BlockResponse((_signed(sim, b),)))
    props = [a.msg for a in out if isinstance(a, Broadcast) and isinstance(a.msg, Proposal)]
    assert len(props) == 1 and props[0].block.view == view + 1 and props[0].block.qc.block_id == b.id
    assert core.safety.high_qc.block_id == b.id and core.safety.high_qc.height == b.height


def test_one_validators_waiting_messages_are_bounded_in_bytes_too(tmp_path):
    """INBOX_PER_PEER bounded a peer's messages waiting for a busy core by count only: 4,096
    frames of up to 64 MiB each (the transport lets 64 MiB a second through) were 256 GiB. Now
    their bytes are bounded too (INBOX_BYTES_PER_PEER), counted past it, other peers unaffected,
    and the room comes back as the core works through them."""
    import asyncio

    import numpy as np

    from accel import Packed
    from consensus import node as node_module
    from consensus.messages import Txs
    limit = getattr(node_module, "INBOX_BYTES_PER_PEER", 4 * m.MAX_MESSAGE)
    node = _runner(tmp_path)
    try:
        g = node.core.genesis
        big = 60 << 20
        txs = Txs(Packed(np.zeros(big, np.uint8), np.array([0, big], np.uint64)), np.zeros((1, 64), np.uint8))
        for view in range(2, 14, 2):
            node._deliver(1, Proposal(Block(view, 1, g.id, 3, g.tx_root, g.state_root, g.sig_digest, txs,
                                            QC(g.id, 0, 0)), bytes(64)))
        node._deliver(2, m.Vote(bytes(32), 1, 1, 2, bytes(64)))
        taken = limit // (big + 1024)
        assert node.inbox.qsize() == taken + 1 and node.core.counters["inbox_bytes_full"] == 6 - taken
        asyncio.run(_work_through(node))
        assert node.queued_bytes == {1: 0, 2: 0}
    finally:
        node.store.close()
        node.events.close()


def test_a_relayer_racing_the_proposer_does_not_hold_the_parents_fetch():
    """A Byzantine peer relays a real proposal whose parent the receiver lacks ahead of its
    proposer: it is parked and the parent asked of the relayer, who never answers; the proposer's
    own copy was dropped as parked already, so the fetch waited for the view to time out. Now
    the proposer's copy has the parent asked of the proposer, whose answer brings it in."""
    sim = Simulation(n=4, seed=9)
    sim.load(200)
    sim.run(blocks=6)
    donor = sim.nodes[0].core
    chain = [b for b, _, _ in sim.nodes[0].committed]
    fresh = Simulation(n=4, seed=9).nodes[2].core
    real = donor.proposals[chain[3].id]
    proposer = real.block.proposer
    relayer = next(i for i in (3, 1, 0) if i != proposer)
    out = fresh.handle(relayer, real)
    assert real.block.id in fresh.parked and [a.to for a in out if isinstance(a, Send)] == [relayer]
    out = fresh.handle(proposer, real)
    asks = [a for a in out if isinstance(a, Send) and isinstance(a.msg, m.BlockRequest)]
    assert [a.to for a in asks] == [proposer] and asks[0].msg.block_id == real.block.parent
    assert fresh.handle(proposer, real) == []  # once
    fresh.handle(proposer, m.BlockResponse(tuple(donor.proposals[b.id] for b in chain[:3])))
    assert real.block.id in fresh.blocks


def test_a_relayed_copy_with_another_tc_cannot_keep_a_validator_from_voting():
    """After a timed-out view, the leader's block carries a TC whose highest QC it extends. The
    block id covers neither the QC nor the TC: a Byzantine peer relays a copy first whose TC (same
    view, valid signatures) names a higher QC among its timeouts, so the copy is one no validator
    may vote for; the leader's own copy was then dropped as held, and the view lost. Now the
    proposer's copy replaces it and the vote goes out."""
    import os

    from consensus.messages import TC, timeout_bytes
    sim = _running()
    for node in sim.nodes:
        core = node.core
        hq = core.safety.high_qc
        v = hq.view + 3
        if core.cfg.leader(v) != node.index and core.view <= v - 1:
            break
    else:
        raise AssertionError("no validator that is not the leader of the view")
    leader, voters = core.cfg.leader(v), (0, 1, 2)  # (the timeouts of any three validators)

    def tc(highs, high_qc):
        sigs = b"".join(sim.keys[i].sign(timeout_bytes(v - 1, h, sim.network)).signature for i, h in zip(voters, highs))
        return TC(v - 1, voters, tuple(highs), sigs, high_qc)
    rid = os.urandom(32)
    higher = QC(rid, hq.view + 1, hq.height + 1, voters,
                b"".join(sim.keys[i].sign(vote_bytes(rid, hq.view + 1, sim.network)).signature for i in voters))
    parent = core.blocks[hq.block_id]
    real = replace(_variant(core, parent, hq, v, leader, 0), tc=tc((hq.view,) * 3, hq))
    copy = replace(real, tc=tc((hq.view, hq.view, hq.view + 1), higher))
    assert copy.id == real.id
    byz = next(i for i in range(4) if i not in (node.index, leader))
    out = core.handle(byz, _signed(sim, copy))
    assert real.id in core.blocks and core.view == v
    assert not any(isinstance(a, Send) and isinstance(a.msg, m.Vote) for a in out) and core.voted != real.id
    assert core.safety.last_voted_view < v
    core.handle(leader, _signed(sim, real))
    assert core.safety.last_voted_view == v and core.voted == real.id  # (sent to the next leader, or tallied)
    assert core.blocks[real.id].tc == real.tc
    assert core.handle(leader, _signed(sim, real)) == []  # once
