"""The thirteenth session's consensus review: one Byzantine validator parking junk proposals.

A proposal's height is signed by its proposer, but the QC it carries is any real old QC the
proposer holds, of a block committed and pruned long ago, with its unsigned height label set far
ahead. Such proposals were parked (their height is above the committed one) and pruned only once
that height committed (never); their parents, pruned everywhere, were asked for again after each
timeout ahead of every other fetch and took all MAX_FETCHES slots. A validator that then missed a
certified block could never fetch it, and once the Byzantine validator stopped voting the chain
stopped for good (n = 4: 64 blocks, then nothing in 600 s simulated). Now a proposal whose QC's
view (signed) is before the committed block's is dropped on arrival, and parked ones go, with
their parents' fetches, when a commit makes them so."""
from dataclasses import replace

import pytest

from consensus.core import Broadcast, Core
from consensus.messages import TC, Block, Proposal, Txs, Vote, proposal_bytes, timeout_bytes
from consensus.sim import Link, Simulation

BYZ = 1


def _junk_sender(after_height: int, mute: dict):
    """A Byzantine validator that, once the chain passes after_height, withholds the votes it
    collects so that the view before one of its own times out, then leads that view with 40
    proposals, each carrying the real TC and a different real old QC relabelled far ahead; with
    mute["on"], it sends no vote and no proposal."""
    class Junk(Core):
        sent = False

        def handle(self, sender, msg):
            if isinstance(msg, Vote) and not Junk.sent and self.committed.height >= after_height:
                return []
            return self._filter(super().handle(sender, msg))

        def on_timer(self, view):
            return self._filter(super().on_timer(view))

        def _filter(self, out):
            if mute["on"]:
                return [a for a in out if not isinstance(getattr(a, "msg", None), (Vote, Proposal))]
            tc = self.last_tc
            if (Junk.sent or tc is None or self.cfg.leader(tc.view + 1) != self.cfg.me
                    or self.view != tc.view + 1 or self.committed.height < after_height):
                return out
            Junk.sent = True
            out = [a for a in out if not isinstance(getattr(a, "msg", None), Proposal)]
            old = sorted((p.block.qc for p in self.proposals.values()
                          if 0 < p.block.qc.view and p.block.qc.height < self.committed.height - 2),
                         key=lambda q: q.height)[:40]
            empty = Txs.empty()
            for i, qc in enumerate(old):
                h = 10**12 + i
                b = Block(self.view, h + 1, qc.block_id, self.cfg.me, self.app.tx_root(empty), bytes(32),
                          empty.digest(), empty, replace(qc, height=h), tc)
                out.append(Broadcast(Proposal(b, self.sign(proposal_bytes(b.id, self.cfg.network)))))
            return out
    return Junk


@pytest.mark.parametrize("seed", [3, 5])
def test_junk_proposals_on_old_qcs_do_not_starve_a_lagging_validators_fetches(seed):
    mute = {"on": False}
    junk = _junk_sender(25, mute)
    sim = Simulation(n=4, seed=seed, link=Link((1.0, 10.0)), txs_per_block=5,
                     make_core=lambda cfg, sign, app, *rest: (junk if cfg.me == BYZ else Core)(cfg, sign, app, *rest))
    sim.load(3000)
    honest = lambda node: node.index != BYZ  # noqa: E731
    sim.run(blocks=60, max_ms=60_000, live=honest)
    assert junk.sent
    t = sim.now
    sim.partitions.append((t, t + 300, [{"v0", "v1", "v2"}, {"v3"}]))  # v3 misses a certified block
    sim.run(blocks=10**9, max_ms=t + 1_000, live=honest)
    mute["on"] = True  # from here the three honest validators need v3's vote for every QC
    before = {n.name: len(n.committed) for n in sim.nodes}
    sim.run(blocks=10**9, max_ms=sim.now + 20_000, live=honest)
    after = {n.name: len(n.committed) for n in sim.nodes if honest(n)}
    assert min(after.values()) >= max(before.values()) + 20, (before, after)
    v3 = sim._node("v3").core
    assert v3.counters["proposal_stale"] > 0  # the junk that came after its QC's block committed


def _core_with_junk():
    """v0 of a chain committed to height 12, and a proposal of a later view, signed by its leader
    with the real TC of the view before, on the QC of a block committed long ago relabelled far
    ahead."""
    sim = Simulation(n=4, seed=0)
    sim.load(200)
    sim.run(blocks=12, max_ms=60_000)
    core = sim._node("v0").core
    old = next(p.block.qc for p in core.proposals.values() if 0 < p.block.qc.view and p.block.qc.height < 4)
    view, hq, voters = core.view + 3, core.safety.high_qc, (1, 2, 3)
    sigs = b"".join(sim.keys[i].sign(timeout_bytes(view - 1, hq.view, sim.network)).signature for i in voters)
    tc = TC(view - 1, voters, (hq.view,) * 3, sigs, hq)
    empty = Txs.empty()
    leader = core.cfg.leader(view)
    b = Block(view, 10**12 + 1, old.block_id, leader, core.app.tx_root(empty), bytes(32),
              empty.digest(), empty, replace(old, height=10**12), tc)
    return core, Proposal(b, sim.keys[leader].sign(proposal_bytes(b.id, sim.network)).signature)


def test_a_proposal_on_a_qc_older_than_the_committed_block_is_dropped_on_arrival():
    core, p = _core_with_junk()
    b = p.block
    assert b.view > core.committed.view and b.qc.view < core.committed.view
    before = core.counters["proposal_stale"]
    assert core.handle(b.proposer, p) == []  # before: parked, and its parent asked of everyone
    assert core.counters["proposal_stale"] == before + 1
    assert b.id not in core.parked and b.parent not in core.fetching


def test_a_commit_lets_parked_proposals_it_made_stale_go_with_their_fetches():
    core, p = _core_with_junk()
    b = p.block
    # parked as it was before the commit that made it stale (its certificates are not the point here)
    core.waiting.setdefault(b.parent, []).append((b.proposer, p))
    core.parked[b.id] = b.proposer
    core.fetching[b.parent], core.fetched_in[b.parent] = b.proposer, core.ticks
    core._prune()
    assert b.id not in core.parked and b.parent not in core.waiting
    assert b.parent not in core.fetching and b.parent not in core.fetched_in
