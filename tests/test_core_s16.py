"""Review s16 (crash and recovery): a leader whose own check of the block it built refused it or
raised broadcast it before any record of the view was on its disk (core._propose sent the block
after the Persist of its own vote, and first where there was none). The others committed it; the
leader, killed before it heard the view's certificate (an OOM kill under the memory pressure that
made its check fail), restarted in the view and signed a second block of it: an honest validator
equivocating. Now the view is written (last_voted_view) before the block leaves."""
import dataclasses
import logging
import shutil

import pytest

from consensus import snapshots
from consensus.core import Broadcast, Core, Persist
from consensus.messages import Proposal
from consensus.sim import Simulation
from consensus.store import Store


@pytest.mark.parametrize("how", ["raises", "refuses"])
def test_a_leader_restarted_after_sending_a_block_its_own_check_refused_signs_no_second_one(tmp_path, how, caplog):
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
    sent, image = [], tmp_path / "image"
    apply = sim._apply

    def watch(n, actions):
        if n is leader:
            stored = False
            for a in actions:
                stored |= isinstance(a, Persist) and a.safety.last_voted_view >= view
                if isinstance(a, Broadcast) and isinstance(a.msg, Proposal) and a.msg.block.view == view:
                    sent.append((a.msg.block, stored))
        apply(n, actions)
        if sent and not image.exists():  # killed right after the block left: what is on its disk
            image.mkdir()
            for suffix in ("", "-wal", "-shm", ".safety"):
                source = tmp_path / f"{leader.name}.db{suffix}"
                if source.exists():
                    shutil.copyfile(source, image / f"validator.db{suffix}")
    sim._apply = watch
    with caplog.at_level(logging.CRITICAL):
        sim.run(blocks=14)
    assert failed and leader.core.counters["own_proposal_refused"] == 1
    assert len(sent) == 1 and sent[0][1], "the block left before the view was written"
    # the others decide on it as on any block; the network goes on, on one chain
    heights = [len(n.committed) for n in sim.nodes]
    chains = [[b.id for b, _, _ in n.committed[:min(heights)]] for n in sim.nodes]
    assert min(heights) >= 12 and all(c == chains[0] for c in chains)
    # restarted from what its disk held then, with another mempool, it proposes nothing in the view
    store = Store(image / "validator.db")
    try:
        app = sim._make_app(sim.genesis)
        start = snapshots.load(store, app)
        safety = store.safety()
        assert safety.last_voted_view >= view
        key = sim.keys[leader.index]
        core = Core(sim.cfg[leader.index], lambda m: key.sign(m).signature, app, safety, start.history,
                    store.committed_range, start.base)
        again = [a.msg.block for a in core.start() if isinstance(a, Broadcast) and isinstance(a.msg, Proposal)]
    finally:
        store.close()
    assert not [b for b in again if b.view == view and b.id != sent[0][0].id]
