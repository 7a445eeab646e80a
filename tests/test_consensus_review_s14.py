"""The fourteenth session's review of consensus persistence, recovery and the node driver.

1. A restart entered view high_qc.view + 1 even where the stored last_voted_view was higher (views
   that ended in TCs: slow validation, lost or withheld votes). No one may propose or vote at or
   below last_voted_view, and the timer doubled again from the base in each such view: four
   validators restarted 10 TC-ended views past their last QC committed their first block after
   162 s simulated (200 ms base), against 0.2 s now that a restart enters last_voted_view.
"""
import pytest

from consensus.core import Core, Safety, Send, SetTimer
from consensus.messages import QC, Proposal, Timeout, Vote
from consensus.sim import Simulation

pytestmark = pytest.mark.usefixtures("quiet_logs")


def _restarted(sim: Simulation, safety_of) -> None:
    """Every validator of sim restarted (before run) from the safety state safety_of(core)."""
    for node in sim.nodes:
        c, key = node.core, sim.keys[node.index]
        node.core = Core(sim.cfg[node.index], lambda m, k=key: k.sign(m).signature, c.app, safety_of(c))


# ---- 1. a restart enters the last view voted or timed out in ------------------------------------
def test_a_restart_enters_the_last_voted_view_not_the_one_after_the_high_qc():
    L = 10  # what Store.safety() gives back after 10 views that ended in TCs, no QC
    sim = Simulation(n=4, seed=1, validation="software")  # base timeout 200 ms
    sim.load(40)
    _restarted(sim, lambda c: Safety(L, QC(c.genesis.id, 0, 0)))
    sim.run(blocks=1, max_ms=600_000)
    assert all(n.committed for n in sim.nodes)
    first = min(t for n in sim.nodes for (_, t, *_r) in n.committed[:1])
    assert first <= 20 * 200, f"first commit {first / 1000:.1f} s after the restart: every view up to {L} walked again"
    assert not any(len(v) > 1 for v in sim.votes_signed.values())


def test_in_the_view_a_restart_enters_it_only_times_out():
    """The view entered is one this validator voted (or timed out) in: the proposal it voted for,
    delivered again, gets no second vote, and its own timer there makes a timeout."""
    sim = Simulation(n=4, seed=2, validation="software")
    sim.load(8)
    cores = [n.core for n in sim.nodes]
    for c in cores:
        c.start()
    # view 1 times out everywhere (its leader's proposal is lost): a TC, then view 2's proposal
    timeouts = [a.msg for c in cores for a in c.on_timer(1) if isinstance(getattr(a, "msg", None), Timeout)]
    acts = {c.cfg.me: [a for t in timeouts if t.voter != c.cfg.me for a in c.handle(t.voter, t)] for c in cores}
    leader = cores[0].cfg.leader(2)
    p = next(a.msg for a in acts[leader] if isinstance(getattr(a, "msg", None), Proposal))
    assert p.block.view == 2 and p.block.qc.view == 0
    x = next(c for c in cores if c.cfg.me != leader)
    voted = [a for a in x.handle(leader, p) if isinstance(a, Send) and isinstance(a.msg, Vote)]
    assert voted and x.safety.last_voted_view == 2 and x.safety.high_qc.view == 0
    key = sim.keys[x.cfg.me]
    again = Core(x.cfg, lambda m, k=key: k.sign(m).signature, sim._make_app(sim.genesis),
                 Safety(x.safety.last_voted_view, x.safety.high_qc))
    started = again.start()
    assert again.view == 2 and any(isinstance(a, SetTimer) and a.view == 2 for a in started)
    assert not [a for a in again.handle(leader, p) if isinstance(a, Send) and isinstance(a.msg, Vote)]
    assert any(isinstance(getattr(a, "msg", None), Timeout) and a.msg.view == 2 for a in again.on_timer(2))

