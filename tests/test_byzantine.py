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
