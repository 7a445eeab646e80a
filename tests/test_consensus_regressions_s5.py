"""Regressions of the review s5 consensus-core changes (independent review, p6): each test fails
on the code before its fix. Fast, deterministic, seed-bounded."""
import os
from dataclasses import replace

from consensus import messages as m
from consensus.core import Send
from consensus.messages import QC, TC, timeout_bytes, vote_bytes
from test_consensus_attacks_s5 import _running, _signed, _variant


def _tc_setup():
    """A running simulation, an honest validator's core that is not the leader of view v (three
    views past its high QC's, not entered yet), and two valid TCs of view v - 1 for one block: the
    real one (its QC the highest the timeouts name) and one naming a higher QC, over which no
    validator may vote."""
    sim = _running()
    for node in sim.nodes:
        core = node.core
        hq = core.safety.high_qc
        v = hq.view + 3
        if core.cfg.leader(v) != node.index and core.view <= v - 1:
            break
    else:
        raise AssertionError("no validator that is not the leader of the view")
    voters = (0, 1, 2)

    def tc(highs, high_qc):
        sigs = b"".join(sim.keys[i].sign(timeout_bytes(v - 1, h, sim.network)).signature for i, h in zip(voters, highs))
        return TC(v - 1, voters, tuple(highs), sigs, high_qc)
    rid = os.urandom(32)
    higher = QC(rid, hq.view + 1, hq.height + 1, voters,
                b"".join(sim.keys[i].sign(vote_bytes(rid, hq.view + 1, sim.network)).signature for i in voters))
    return sim, node, core, hq, v, tc((hq.view,) * 3, hq), tc((hq.view, hq.view, hq.view + 1), higher)


def test_a_proposers_second_copy_cannot_change_the_transactions_of_a_held_block():
    """The proposer's own copy of a held block replaces a relayed copy whose TC kept this
    validator from voting (8d2dc38). The block id covers the transactions' root and digest, not
    the transactions: a Byzantine leader that first relays its block with the unvotable TC, then
    sends it itself with the votable TC and other transactions (same count, so the same id and a
    valid signature), had the held block's transactions replaced unchecked. The validator voted,
    kept a state computed from the first transactions beside a block holding others, stored and
    served that block (peers refuse it), and could not restart from its store (the replay finds
    transactions that do not match the digest). Now only the certificates are taken from the
    proposer's copy."""
    sim, node, core, hq, v, real_tc, bad_tc = _tc_setup()
    leader = core.cfg.leader(v)
    parent = core.blocks[hq.block_id]
    real = replace(_variant(core, parent, hq, v, leader, 0), tc=real_tc)
    other = _variant(core, parent, hq, v, leader, len(real.txs))  # other transactions, as many
    assert len(other.txs) == len(real.txs) and other.txs.digest() != real.txs.digest()
    relayed = replace(real, tc=bad_tc)
    swapped = replace(real, txs=other.txs)
    assert relayed.id == swapped.id == real.id
    core.handle(leader, _signed(sim, relayed))
    assert real.id in core.blocks and core.safety.last_voted_view < v
    core.handle(leader, _signed(sim, swapped))
    held = core.blocks[real.id]
    assert held.tc == real_tc and core.safety.last_voted_view == v  # the vote went out
    assert held.txs.digest() == held.sig_digest and core.app.tx_root(held.txs) == held.tx_root
    assert core.proposals[real.id].block.txs.digest() == real.txs.digest()
    assert core.states[real.id].root == held.state_root


def test_a_proposers_copy_replaces_a_relayed_copy_parked_with_another_tc():
    """8d2dc38 let the proposer's copy replace a relayed copy held with an unvotable TC, but not
    one parked (its parent missing): a Byzantine peer relaying the leader's block first, with a
    valid TC of the same view naming a higher QC among its timeouts, had it parked; the
    proposer's own copy only redirected the parent's fetch and was dropped, so once the parent
    came the relayed copy was taken and this validator did not vote in the view. Now the
    proposer's certificates replace the relayed copy's in the parked proposal (its transactions,
    checked when parked, stay)."""
    from consensus.sim import Simulation
    sim, node, donor, hq, v, real_tc, bad_tc = _tc_setup()
    leader = donor.cfg.leader(v)
    real = replace(_variant(donor, donor.blocks[hq.block_id], hq, v, leader, 0), tc=real_tc)
    me = next(i for i in range(4) if i != leader)
    relayer = next(i for i in range(4) if i not in (leader, me))
    fresh = Simulation(n=4, seed=1).nodes[me].core  # (the same genesis; it holds no block yet)
    fresh.handle(relayer, _signed(sim, replace(real, tc=bad_tc)))
    assert real.id in fresh.parked
    fresh.handle(leader, _signed(sim, real))
    chain = donor._ancestry(hq.block_id, 1, m.MAX_RANGE)
    out = fresh.handle(leader, m.BlockResponse(tuple(donor.proposals[i] for i in chain)))
    assert real.id in fresh.blocks and fresh.blocks[real.id].tc == real_tc
    assert fresh.safety.last_voted_view == v and fresh.voted == real.id
    assert any(isinstance(a, Send) and isinstance(a.msg, m.Vote) and a.msg.block_id == real.id for a in out) \
        or fresh.cfg.leader(v + 1) == me
    assert fresh.blocks[real.id].txs.digest() == real.txs.digest()


def _stall_after_a_tc_the_others_missed(seed=1):
    """A running simulation in which every message in flight is lost, all four validators time
    out in view V; the timeouts of v1 and v2 reach v3 only, which forms the TC and moves to
    V + 1; then v1 crashes for good. v0 and v2 are left in V (their timeouts of V are older than
    v3's view, v3's timeouts of V + 1 are one voter's)."""
    from consensus.core import Broadcast
    sim = _running(seed=seed)
    sim.queue.clear()
    v0, v1, v2, v3 = sim.nodes
    view = v0.core.view
    assert all(n.core.view == view for n in sim.nodes)

    def timeout(node):
        out = node.core.on_timer(view)
        sim._apply(node, [a for a in out if not isinstance(a, Broadcast)])  # its broadcast is lost
        return next(a.msg for a in out if isinstance(a, Broadcast) and isinstance(a.msg, m.Timeout))
    t0, t1, t2, t3 = map(timeout, sim.nodes)
    sim._apply(v3, v3.core.handle(1, t1) + v3.core.handle(2, t2))
    sim.crashed.add("v1")
    assert v3.core.view == view + 1 and v0.core.view == v2.core.view == view
    return sim


def test_validators_left_in_a_view_the_others_formed_a_tc_in_catch_up():
    """A TC is formed by each validator from the timeouts it receives and is never sent; a
    timeout of a view before the receiver's was dropped. So two honest validators that lost the
    timeouts of a view in which the third formed a TC (one validator crashed, f = 1) waited in it
    for ever: the three honest never committed again once the loss stopped (found driving the
    simulation past partitions with 5% loss). Now a validator answers a peer's own timeout of a
    view it formed a TC in with the timeouts of that TC (once per peer between its own timer
    expiries), from which the peer forms the TC itself."""
    sim = _stall_after_a_tc_the_others_missed()
    honest = {"v0", "v2", "v3"}
    before = max(len(n.committed) for n in sim.nodes)
    sim.run(blocks=before + 5, max_ms=sim.now + 60_000, live=lambda n: n.name in honest)
    assert all(len(n.committed) >= before + 5 for n in sim.nodes if n.name in honest)
    from test_consensus import assert_safe
    assert_safe(sim, honest)


def test_f_plus_one_timeouts_in_views_ahead_move_a_validator_to_the_lowest_of_them():
    """f+1 validators timed out in views past this validator's, each in another one (V + 1 and
    V + 2, n = 4): at least one honest validator reached V + 1, so this one times out there too
    (before: only f+1 timeouts of one view counted, and validators spread over views 3, 3, 4 and
    5 after a partition with loss never formed another TC)."""
    from consensus.core import Broadcast
    sim = _running()
    core = next(n.core for n in sim.nodes)
    view, hq = core.view, core.safety.high_qc
    others = [i for i in range(4) if i != core.cfg.me]

    def timeout(voter, v):
        return m.Timeout(v, hq, voter, sim.keys[voter].sign(timeout_bytes(v, hq.view, sim.network)).signature)
    assert core.handle(others[0], timeout(others[0], view + 2)) == [] and core.view == view
    out = core.handle(others[1], timeout(others[1], view + 1))
    assert core.view == view + 1 and view + 1 in core.timed_out
    assert any(isinstance(a, Broadcast) and isinstance(a.msg, m.Timeout) and a.msg.view == view + 1 for a in out)
    # one voter (f) ahead is not enough, however far
    core2 = sim.nodes[1].core if core is not sim.nodes[1].core else sim.nodes[2].core
    v2 = core2.view
    voter = next(i for i in range(4) if i != core2.cfg.me)
    core2.handle(voter, m.Timeout(v2 + 5, hq, voter, sim.keys[voter].sign(timeout_bytes(v2 + 5, hq.view, sim.network)).signature))
    assert core2.view == v2
