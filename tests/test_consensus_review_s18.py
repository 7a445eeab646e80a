"""Review s18 of the consensus core: a validator's own timeout signed to help a peer behind
(Core._help_behind) left without last_voted_view raised and on disk. Restarted before anything
else was saved, the validator entered that view again and voted in it: a timeout and a vote of
one view, the equivocation Jolteon's lock rests on. With one Byzantine leader (of four) holding
back messages, that made a QC and a TC of low high QCs in one view, and two honest validators
committed different blocks at height 3 (the reviewer's schedule, below up to the vote that made
it). Only Z (v1 in the second test) deviates; the rest is honest cores on an asynchronous network
and one crash. The class: every vote, timeout and proposal a validator signs leaves after its view
is on disk, checked on every send of random lossy runs (3 of their 6 seeds failed before)."""
import pytest

from consensus.core import Broadcast, Committed, Persist, Send
from consensus.messages import QC, TC, Proposal, Timeout, Txs, Vote, proposal_bytes, timeout_bytes
from consensus.sim import Link, Simulation


def test_a_validator_restarted_after_a_helping_timeout_never_votes_in_that_view(tmp_path):
    """v0's delayed timeout of view 1 reaches v3 in view 2: v3 signs its own timeout of view 1,
    crashes, restarts from its store and gets the delayed proposal of view 1."""
    sim = Simulation(n=4, seed=1)
    sim.durable("v3", str(tmp_path / "v3.db"))
    X = sim.nodes[3]
    signed = []  # (kind, view) signed by v3

    def run(i, actions):
        """Return the messages the actions send; v3's Persist goes to its store, and v3's signatures are noted."""
        msgs = []
        for a in actions:
            if isinstance(a, Persist) and i == 3:
                X.store.save_safety(a.safety)
            if isinstance(a, (Send, Broadcast)):
                msgs.append(a.msg)
                if i == 3 and isinstance(a.msg, (Vote, Timeout)):
                    signed.append((type(a.msg).__name__, a.msg.view))
        return msgs

    def cores():
        return [n.core for n in sim.nodes]
    out = {i: run(i, c.start()) for i, c in enumerate(cores())}
    b1 = next(m for m in out[1] if isinstance(m, Proposal))
    assert b1.block.view == 1
    c = cores()
    # B1 reaches v0 and v2 (its copy to v3 is delayed); their votes go to v2 (leader of view 2), which forms QC(1)
    v0 = run(0, c[0].handle(1, b1))
    v2 = run(2, c[2].handle(1, b1))
    v2 += run(2, c[2].handle(0, next(m for m in v0 if isinstance(m, Vote))))
    v1vote = next(m for m in out[1] if isinstance(m, Vote))
    v2 += run(2, c[2].handle(1, v1vote))
    assert c[2].view == 2 and c[2].safety.high_qc.view == 1
    # v0's view-1 timer fires before B2 reaches it: it times out in view 1 (its timeout to v3 is delayed)
    t0 = next(m for m in run(0, c[0].on_timer(1)) if isinstance(m, Timeout))
    assert t0.view == 1
    # v2's view-2 timer fires: its timeout (high QC = QC(1)) reaches v3, which enters view 2 (B1 not held)
    t2 = next(m for m in run(2, c[2].on_timer(2)) if isinstance(m, Timeout))
    run(3, c[3].handle(2, t2))
    assert c[3].view == 2 and c[3].safety.high_qc.view == 0, (c[3].view, c[3].safety)
    # v0's delayed timeout of view 1 reaches v3: v3 signs ITS OWN timeout of view 1 (_help_behind)
    run(3, c[3].handle(0, t0))
    assert ("Timeout", 1) in signed, signed
    # v3 crashes now and restarts from its store
    sim._restart(X)
    # the delayed copy of B1 reaches it
    run(3, X.core.handle(1, b1))
    assert not (("Timeout", 1) in signed and ("Vote", 1) in signed), \
        "v3 voted in view 1 after signing a timeout of view 1 (equivocation across a restart)"


def test_a_byzantine_leader_and_one_restart_cannot_get_a_vote_in_a_view_timed_out_in(tmp_path):
    """Hv = v0, Z = v1 (Byzantine), X = v2 (honest, durable, crashes once), Hl = v3. Z takes X to
    view 5 on QC(2) and a real TC(4), then sends X a timeout of view 4 (its signature need not
    verify): X signs its own timeout of view 4 with high QC 2. Restarted, X must not vote for B4
    in view 4: that vote completed QC(4) (committing B3 at Hv), while the helped timeout completed
    a TC(4) of high views 2 on which Hl committed another block at height 3."""
    HV, Z, X, HL = 0, 1, 2, 3
    sim = Simulation(n=4, seed=1)
    sim.durable("v2", str(tmp_path / "x.db"))
    net = sim.network
    zkey = sim.keys[Z]

    def zsign(m):
        return zkey.sign(m).signature

    committed = {i: {} for i in range(4)}   # validator -> height -> block id

    def core(i):
        return sim.nodes[i].core

    def act(i, actions):
        """Apply validator i's actions; return [(to, msg)] it sends (to = None: broadcast)."""
        sent = []
        for a in actions:
            if isinstance(a, Persist) and i == X:
                sim.nodes[X].store.save_safety(a.safety)
            elif isinstance(a, Committed):
                committed[i][a.block.height] = a.block.id
                if i == X:
                    sim.nodes[X].store.add_committed(a.proposal)
            elif isinstance(a, Send):
                sent.append((a.to, a.msg))
            elif isinstance(a, Broadcast):
                sent.append((None, a.msg))
        return sent

    def deliver(i, sender, msg):
        return act(i, core(i).handle(sender, msg))

    def pick(sent, cls, to="any"):
        return [m for t, m in sent if isinstance(m, cls) and (to == "any" or t == to)]

    # ---- views 1, 2, 3: honest blocks B1 (by Z), B2 (by X), B3 (by Hl) ----------------------------
    start = {i: act(i, core(i).start()) for i in range(4)}
    B1 = pick(start[Z], Proposal)[0]
    votes = pick(start[Z], Vote)
    for i in (HV, X, HL):
        votes += pick(deliver(i, Z, B1), Vote)
    out = []
    for v in votes:
        out += deliver(X, v.voter, v) if v.voter != X else []
    B2 = pick(out, Proposal)[0]
    assert B2.block.view == 2
    votes = pick(out, Vote)
    for i in (HV, Z, HL):
        votes += pick(deliver(i, X, B2), Vote)
    out = []
    for v in votes:
        out += deliver(HL, v.voter, v) if v.voter != HL else []
    B3 = pick(out, Proposal)[0]
    assert B3.block.view == 3 and core(HL).safety.high_qc.view == 2
    QC2 = B3.block.qc
    # B3 reaches Hv and Z only (its copy to X is delayed); the view-3 votes go to Hv (leader of 4)
    votes = pick(out, Vote)
    votes += pick(deliver(Z, HL, B3), Vote)
    out = deliver(HV, HL, B3)
    for v in votes:
        out += deliver(HV, v.voter, v)
    B4 = pick(out, Proposal)[0]
    assert B4.block.view == 4 and B4.block.qc.view == 3
    QC3 = B4.block.qc
    hv_vote4 = pick(out, Vote)[0]   # Hv's vote for B4, to Z (leader of 5)
    assert hv_vote4.block_id == B4.block.id
    # B4 reaches Z only (Z holds Hv's vote)

    # ---- view 3 ends in a TC at Hl and X (neither holds QC(3)) ------------------------------------
    t3_hl = pick(act(HL, core(HL).on_timer(3)), Timeout)[0]
    deliver(X, HL, t3_hl)                     # X adopts QC(2) from it and enters view 3
    assert core(X).view == 3
    t3_x = pick(act(X, core(X).on_timer(3)), Timeout)[0]      # X times out in 3 (last voted view 3, on disk)
    t3_z = Timeout(3, QC2, Z, zsign(timeout_bytes(3, QC2.view, net)))
    deliver(HL, X, t3_x)
    deliver(HL, Z, t3_z)
    deliver(X, Z, t3_z)
    assert core(HL).view == 4 and core(X).view == 4
    t4_hl = pick(act(HL, core(HL).on_timer(4)), Timeout)[0]  # Hl's view-4 timeout: high QC view 2
    t4_hv = pick(act(HV, core(HV).on_timer(4)), Timeout)[0]  # Hv's: high QC view 3
    assert t4_hl.high_qc.view == 2 and t4_hv.high_qc.view == 3
    t4_z = Timeout(4, QC2, Z, zsign(timeout_bytes(4, QC2.view, net)))

    # ---- Z (leader of 5) takes X to view 5 with the real TC(4), on QC(2); X holds no B3 -------------
    by = {HV: t4_hv, Z: t4_z, HL: t4_hl}
    voters = tuple(sorted(by))
    TC4 = TC(4, voters, tuple(by[v].high_qc.view for v in voters), b"".join(by[v].signature for v in voters), QC3)
    empty = Txs.empty()
    root2 = core(Z).states[B2.block.id].root
    blk = B2.block.__class__(5, 3, B2.block.id, Z, core(Z).app.tx_root(empty), root2, empty.digest(), empty, QC2, TC4)
    P = Proposal(blk, zsign(proposal_bytes(blk.id, net)))
    deliver(X, Z, P)
    assert core(X).view == 5 and core(X).safety.high_qc.view == 2 and core(X).safety.last_voted_view == 3, \
        (core(X).view, core(X).safety)
    # Z's "own timeout of view 4" (its signature need not even verify): X answers with ITS OWN timeout of view 4
    sent = deliver(X, Z, Timeout(4, QC(core(X).genesis.id, 0, 0), Z, bytes(64)))
    t4_x = pick(sent, Timeout)[0]
    assert t4_x.voter == X and t4_x.view == 4 and t4_x.high_qc.view == 2
    assert sim.nodes[X].store.safety().last_voted_view >= 4  # on disk before the timeout left

    # ---- X crashes and restarts from its store ----------------------------------------------------
    sim._restart(sim.nodes[X])
    deliver(X, Z, B3)                          # relayed by Z (or the delayed copy): no vote, X timed out in 3
    sent = deliver(X, Z, B4)                   # X adopts QC(3), enters view 4 and votes for B4
    x_vote4 = pick(sent, Vote)
    assert not x_vote4, ("X voted for B4 in view 4 after signing a timeout of view 4: with it, Z builds a QC and "
                         "a TC of view 4, and two honest validators commit different blocks at height 3")



class _Durable(Simulation):
    """Checks, for every vote, timeout and proposal a validator signs and sends, that a Persist
    before it (in the same action list, or earlier) wrote a last_voted_view at least its view (what
    a restart enters its view from, so what keeps a restarted validator from signing twice) and a
    high QC at least the one it carries (a restart never comes back below what it signed)."""

    def _apply(self, node, actions):
        held = self.persisted.get(node.name)
        durable = held.last_voted_view if held is not None else 0
        high = held.high_qc.view if held is not None else 0
        for a in actions:
            if isinstance(a, Persist):
                durable, high = a.safety.last_voted_view, a.safety.high_qc.view
            elif isinstance(a, (Send, Broadcast)):
                m = a.msg
                mine = (m.voter == node.index if isinstance(m, (Vote, Timeout))
                        else isinstance(m, Proposal) and m.block.proposer == node.index)
                view = m.block.view if isinstance(m, Proposal) else getattr(m, "view", 0)
                if mine:
                    self.signed += 1
                    self.helped += isinstance(m, Timeout) and isinstance(a, Send)
                    assert durable >= view, f"{node.name} sent its {type(m).__name__} of view {view} with " \
                                            f"last_voted_view {durable} on disk"
                    carried = (m.high_qc.view if isinstance(m, Timeout)
                               else m.block.qc.view if isinstance(m, Proposal) else 0)
                    assert high >= carried, f"{node.name} sent a QC of view {carried} with {high} on disk"
        super()._apply(node, actions)


def _lossy(seed: int) -> _Durable:
    sim = _Durable(n=4, seed=seed, link=Link((1.0, 400.0), drop=0.25, duplicate=0.2))
    sim.signed = sim.helped = 0
    sim.load(200)
    sim.run(blocks=30, max_ms=60_000)
    return sim


@pytest.mark.parametrize("seed", range(6))
def test_every_signature_leaves_after_its_view_is_on_disk(seed):
    """Lossy, slow links: views time out, validators fall behind and are helped on (_help_behind
    signs a timeout, sent to one peer), and every signature must leave after its view is stored."""
    assert _lossy(seed).signed > 100


def test_the_helping_timeouts_are_among_what_is_checked():
    """The schedules above do send helping timeouts (else they could not catch their defect)."""
    assert sum(_lossy(seed).helped for seed in range(6)) > 0
