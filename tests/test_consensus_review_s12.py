"""The twelfth session's consensus review.

1. A QC's signatures cover its block id and view, not its height label. A Byzantine validator
   that kept to itself the QC it formed as leader, and sent on entering each view its timeout
   carrying that QC with height + 1, had it in every TC: the TC's high_views kept each next leader
   from proposing (its own high QC was lower), while every validator refused the QC itself
   (qc_mismatch). One validator stopped the chain for good: 0 blocks in 642 s simulated, views
   backing off to 60 s. A QC over a held block now takes that block's height.
2. A stored block's QC or TC, which the block id does not cover, was never checked at start: one
   flipped bit in a committed row started silently, and every peer catching up from this validator
   refused the block and took it for a faulty one. They are verified with the proposers'
   signatures, in the same batch, and must be of the parent and the view."""
import sqlite3
from dataclasses import replace

import pytest

from consensus import messages as m
from consensus.core import Broadcast, Core, InvariantViolation
from consensus.messages import Timeout, timeout_bytes
from consensus.sim import Simulation
from tests.test_byzantine import _restart_core, _store_with_blocks

BYZ = 3


def _relabelling(by: int):
    class Relabeller(Core):
        def _propose(self, view):
            return []  # keeps the QC it forms as a leader to itself

        def _enter_view(self, view, via_qc):
            out = super()._enter_view(view, via_qc)
            hq = self.safety.high_qc
            if self.view == view and hq.view > 0:  # its timeout at once, ahead of every honest one
                out.append(Broadcast(Timeout(view, replace(hq, height=hq.height + by), self.cfg.me,
                                             self.sign(timeout_bytes(view, hq.view, self.cfg.network)))))
            return out
    return Relabeller


@pytest.mark.parametrize("seed", range(2))
def test_a_timeout_carrying_a_relabelled_qc_does_not_stop_the_chain(seed):
    byz = _relabelling(1)
    sim = Simulation(n=4, seed=seed, make_core=lambda cfg, sign, app, *rest: (byz if cfg.me == BYZ else Core)(
        cfg, sign, app, *rest))
    sim.load(400)
    sim.run(blocks=30, max_ms=600_000, live=lambda node: node.index != BYZ)
    honest = [n for n in sim.nodes if n.index != BYZ]
    assert min(len(n.committed) for n in honest) >= 30, [len(n.committed) for n in honest]
    assert sim.now < 60_000  # no view backed off towards its 60 s ceiling


@pytest.mark.parametrize("damage", ["qc signature", "qc view", "tc view"])
def test_a_stored_block_with_a_damaged_certificate_stops_the_start(tmp_path, damage):
    sim, path = _store_with_blocks(tmp_path / "v0", blocks=6)
    db = sqlite3.connect(path)
    prop = m.decode(db.execute("SELECT proposal FROM committed WHERE height = 3").fetchone()[0])
    b = prop.block
    if damage == "qc signature":
        sigs = bytearray(b.qc.sigs)
        sigs[5] ^= 1
        b = replace(b, qc=replace(b.qc, sigs=bytes(sigs)))
    elif damage == "qc view":
        b = replace(b, qc=replace(b.qc, view=b.qc.view + 1))
    else:
        b = replace(b, tc=m.TC(b.view + 3, (), (), b"", b.qc))
    assert b.id == prop.block.id  # nothing the id covers: the proposer's signature still verifies
    db.execute("UPDATE committed SET proposal = ? WHERE height = 3", (m.encode(replace(prop, block=b)),))
    db.commit()
    db.close()
    with pytest.raises(InvariantViolation, match="height 3: its (certificate|proposer's signature or a certificate)"):
        _restart_core(sim, path)
    _restart_core(*_store_with_blocks(tmp_path / "intact", blocks=6))  # (an intact store starts)


def test_a_leader_restarted_in_its_view_does_not_propose_a_second_block():
    """Core.proposed is not persisted: a leader killed after its proposal left, restarted in the
    same view with another mempool (client transactions are not stored), signed a second block of
    the view. Its proposal now leaves after its own vote (last_voted_view) is on disk, and a view it
    voted in is one it does not propose in."""
    from consensus.core import Persist
    sim = Simulation(n=4, seed=4)
    sim.load(20)
    leader = sim.cfg[0].leader(1)
    node = next(n for n in sim.nodes if n.index == leader)
    first = node.core.start()
    kinds = [type(a).__name__ for a in first]
    persisted = [i for i, a in enumerate(first) if isinstance(a, Persist) and a.safety.last_voted_view == 1]
    sent = [i for i, a in enumerate(first) if isinstance(a, Broadcast) and isinstance(a.msg, m.Proposal)]
    assert persisted and sent and persisted[0] < sent[0], kinds
    key = sim.keys[leader]
    again = Core(sim.cfg[leader], lambda x: key.sign(x).signature, sim._make_app(sim.genesis), first[persisted[0]].safety)
    assert not any(isinstance(a, Broadcast) and isinstance(a.msg, m.Proposal) for a in again.start())
