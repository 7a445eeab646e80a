"""Byzantine peers and strangers on the simulated network (issue 22): each test injects what an
attacker can put on the wire (the sender index is unauthenticated, so anyone can claim any
validator's index) or runs a validator whose core misbehaves, and checks that the honest
validators stay safe, keep committing and never raise out of Core.handle."""
from dataclasses import replace

import pytest

from consensus.core import Broadcast, Core
from consensus.messages import QC, Proposal, Timeout, proposal_bytes
from consensus.sim import Link, Simulation
from test_consensus import assert_safe


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
        assert all(b.id in clean.nodes[0].core.blocks or b.id in n.core.blocks for b, _, _ in n.committed)
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
                out[i] = Broadcast(Proposal(bad, self.sign(proposal_bytes(bad.id))))
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
    sim = Simulation(n=4, seed=seed, make_core=lambda cfg, sign, app, *a: (Leader if cfg.me == 1 else Core)(cfg, sign, app, *a))
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
    sim = Simulation(n=4, seed=seed, make_core=lambda cfg, sign, app, *a: (HeightLiar if cfg.me == 2 else Core)(cfg, sign, app, *a))
    sim.load(60)
    sim.run(blocks=10, max_ms=200_000)
    assert all(len(x.committed) >= 10 for x in sim.nodes)
    assert_safe(sim)
    for x in sim.nodes:
        for b, _, _ in x.committed:
            if b.qc.view:
                assert b.qc.height == x.core.blocks[b.qc.block_id].height


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
    assert [type(a).__name__ for a in fresh.handle(1, Proposal(huge, p.signature))] == ["Rejected"]
    assert fresh.handle(1, vote) == []


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
