"""Review s16 (crash and recovery): a leader whose own check of the block it built refused it or
raised still broadcast it, before any record of the view was on its disk (core._propose sent
the block after the Persist of its own vote, and first where there was none). The others
committed it; the leader, killed before it heard the view's certificate (an OOM kill under the
memory pressure that made its check fail), restarted in the view and signed a second block of
it: an honest validator equivocating. Now such a block is not sent: the view times out."""
import dataclasses
import logging

import pytest

from consensus.core import Broadcast, Persist
from consensus.messages import Proposal
from consensus.sim import Simulation


@pytest.mark.parametrize("how", ["raises", "refuses"])
def test_a_leader_does_not_send_a_block_its_own_check_refused(tmp_path, how, caplog):
    sim = Simulation(n=4, seed=3, txs_per_block=5, validation="software")
    for n in sim.nodes:
        sim.durable(n.name, tmp_path / f"{n.name}.db")
    sim.load(200)
    sim.run(blocks=6)
    view = max(n.core.view for n in sim.nodes) + 1
    leader = sim.nodes[sim.cfg[0].leader(view)]
    real = leader.core.app.validate
    failed = []

    def flaky(parent, block, certs):  # one failure, on the leader's own block of the view
        if block.proposer == leader.index and block.view == view and not failed:
            failed.append(block.id)
            if how == "raises":
                raise MemoryError("the C fallback could not allocate")
            return dataclasses.replace(real(parent, block, certs), ok=False, reason="refused by its own check")
        return real(parent, block, certs)
    leader.core.app.validate = flaky
    sent, persisted = [], []
    apply = sim._apply

    def watch(n, actions):
        if n is leader:
            for a in actions:
                if isinstance(a, Broadcast) and isinstance(a.msg, Proposal) and a.msg.block.view == view:
                    sent.append(a.msg.block.id)
                if isinstance(a, Persist) and a.safety.last_voted_view >= view:
                    persisted.append(a)
        apply(n, actions)
    sim._apply = watch
    with caplog.at_level(logging.CRITICAL):
        sim.run(blocks=14)
    assert failed, "the leader did not propose in the view"
    assert not sent, "a block its own check refused was sent"
    assert leader.core.counters["own_proposal_refused"] == 1
    # the network goes on past the view, on one chain
    heights = [len(n.committed) for n in sim.nodes]
    assert min(heights) >= 12
    chains = [[b.id for b, _, _ in n.committed[:min(heights)]] for n in sim.nodes]
    assert all(c == chains[0] for c in chains)
    assert all(b.view != view or b.proposer != leader.index for b, _, _ in sim.nodes[0].committed)
