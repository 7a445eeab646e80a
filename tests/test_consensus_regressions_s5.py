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
        sigs = b"".join(sim.keys[i].sign(timeout_bytes(v - 1, h)).signature for i, h in zip(voters, highs))
        return TC(v - 1, voters, tuple(highs), sigs, high_qc)
    rid = os.urandom(32)
    higher = QC(rid, hq.view + 1, hq.height + 1, voters,
                b"".join(sim.keys[i].sign(vote_bytes(rid, hq.view + 1)).signature for i in voters))
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
