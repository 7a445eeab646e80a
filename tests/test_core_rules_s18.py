"""The consensus core's safety and liveness rules, each asked directly (review s18's mutation
audit: 11 of 14 single-point mutants of core.py passed every test, 6 of them safety rules). Each
test fails on its mutant (named in its section) and passes on the rules: one vote per view, the
lock a TC's timeouts name, a voter counted once in a QC, a TC or a tally, a TC carrying its
highest QC, the 2-chain commit of consecutive views, f + 1 timeouts to end a view, the view's
leader alone proposing, and a timeout raising last_voted_view."""
from dataclasses import replace

import pytest
from nacl.signing import SigningKey

from consensus.core import (Config, InvalidCertificate, Rejected, Send, proposal_bytes, qc_certs, tc_certs,
                            timeout_bytes, vote_bytes)
from consensus.messages import QC, TC, Block, Proposal, Timeout, Vote
from consensus.sim import Simulation


# ---- C03: a second vote in a view voted in; C04: the lock a TC names (_safe_to_vote) -------------

def _sim():
    """Four validators (software-only) three blocks in: a live core to ask the rules of."""
    sim = Simulation(n=4, seed=1, validation="software")
    sim.load(10)
    sim.run(blocks=3)
    return sim


def _core():
    core = _sim().nodes[0].core
    b = max(core.blocks.values(), key=lambda b: b.height)
    return core, b


def test_no_second_vote_in_a_view_already_voted_in():
    core, b = _core()
    v = core.view
    core.timed_out.discard(v)
    block = replace(b, view=v, qc=replace(b.qc, view=v - 1), tc=None)
    core.safety = replace(core.safety, last_voted_view=v - 1)
    assert core._safe_to_vote(block)
    core.safety = replace(core.safety, last_voted_view=v)  # voted in v already (another block, or before a restart)
    assert not core._safe_to_vote(block)


def test_a_tc_block_must_extend_the_highest_qc_its_timeouts_name():
    core, b = _core()
    v = core.view
    core.timed_out.discard(v)
    core.safety = replace(core.safety, last_voted_view=v - 1)
    qc = replace(b.qc, view=v - 5)
    tc_ok = TC(v - 1, (0, 1, 2), (v - 5, v - 6, v - 7), b"", qc)
    tc_locked = TC(v - 1, (0, 1, 2), (v - 5, v - 3, v - 7), b"", qc)  # a validator locked on a QC of view v-3
    assert core._safe_to_vote(replace(b, view=v, qc=qc, tc=tc_ok))
    assert not core._safe_to_vote(replace(b, view=v, qc=qc, tc=tc_locked))


# ---- C01: a voter named twice in a certificate; C08: a TC carrying a lower QC than it names ------

SEEDS = [bytes([i + 1]) * 32 for i in range(4)]
KEYS = [SigningKey(s) for s in SEEDS]
CFG = Config(me=0, keys=tuple(bytes(k.verify_key) for k in KEYS))
GENESIS, BLOCK = bytes(32), bytes([17]) * 32


def _qc(voters, view=3):
    msg = vote_bytes(BLOCK, view, CFG.network)
    return QC(BLOCK, view, 2, tuple(voters), b"".join(KEYS[v].sign(msg).signature for v in voters))


def test_a_validator_named_twice_in_a_qc_counts_once():
    assert len(qc_certs(CFG, GENESIS, _qc([0, 1, 2]))[0]) == 3  # n = 4: a quorum of 3
    with pytest.raises(InvalidCertificate, match="distinct signers"):
        qc_certs(CFG, GENESIS, _qc([0, 0, 1]))  # every signature verifies, 2 validators


def test_a_validator_named_twice_in_a_tc_counts_once():
    high = _qc([0, 1, 2])

    def tc(voters):
        return TC(5, tuple(voters), (3,) * len(voters),
                  b"".join(KEYS[v].sign(timeout_bytes(5, 3, CFG.network)).signature for v in voters), high)
    assert len(tc_certs(CFG, GENESIS, tc([1, 2, 3]))[0]) == 6
    with pytest.raises(InvalidCertificate, match="distinct signers"):
        tc_certs(CFG, GENESIS, tc([1, 1, 2]))


def test_a_tc_must_carry_the_highest_qc_its_timeouts_name():
    """Mutant C08 (tc_certs: high_qc.view == max(high_views) dropped): a TC carrying a lower QC than
    one of its timeouts names hides that validator's lock (the next leader extends the lower QC).
    Only test_statesync_s9's forged-TC case covers it, through state sync; the core's tests do not."""
    high = _qc([0, 1, 2])  # view 3
    sig = b"\x01" * 64
    assert tc_certs(CFG, GENESIS, TC(5, (1, 2, 3), (3, 2, 3), sig * 3, high))
    with pytest.raises(InvalidCertificate, match="highest"):
        tc_certs(CFG, GENESIS, TC(5, (1, 2, 3), (3, 4, 3), sig * 3, high))


# ---- C05: the 2-chain commit needs the very next view (_commit_for) ------------------------------

def test_a_qc_for_a_child_two_views_later_commits_nothing():
    sim = _sim()
    core = sim.nodes[0].core
    b0 = max(core.blocks.values(), key=lambda b: b.height)
    assert b0.height > core.committed.height  # held, not committed yet
    committed = core.committed
    for gap, commits in ((2, False), (1, True)):
        b1 = replace(b0, view=b0.view + gap, height=b0.height + 1, parent=b0.id,
                     qc=QC(b0.id, b0.view, b0.height))
        core.blocks[b1.id] = b1
        out = core._commit_for(QC(b1.id, b1.view, b1.height))
        if commits:  # (the control: the very next view commits b0)
            assert core.committed.id == b0.id and out
        else:
            assert core.committed is committed and out == []


# ---- C11: a voter counted twice in a view; C14: a timeout raises last_voted_view; C10: f + 1 end a view ---

def test_a_voter_counts_once_per_view_whatever_block_it_votes_for():
    sim = _sim()
    view = max(n.core.view for n in sim.nodes)
    node = sim.nodes[sim.cfg[0].leader(view + 1)]
    core, cfg = node.core, sim.cfg[node.index]
    core.view = view
    a, b = bytes([1]) * 32, bytes([2]) * 32
    voter = next(i for i in range(cfg.n) if i != node.index)

    def vote(block):
        return Vote(block, view, 9, voter, sim.keys[voter].sign(vote_bytes(block, view, cfg.network)).signature)
    core._on_vote(vote(a).voter, vote(a))
    core._on_vote(vote(b).voter, vote(b))  # the same voter, another block of the view: an equivocation
    assert voter in core.votes[(view, a)].sigs
    assert (view, b) not in core.votes or voter not in core.votes[(view, b)].sigs


def test_a_validator_that_timed_out_in_a_view_never_votes_in_it():
    sim = _sim()
    core = sim.nodes[0].core
    view = core.view
    core.safety = replace(core.safety, last_voted_view=view - 1)
    core._on_local_timeout(view)
    assert core.safety.last_voted_view >= view  # persisted: a restart does not vote in the view either
    core.timed_out.discard(view)  # (what a restart forgets)
    hq = core.safety.high_qc
    b = replace(core.blocks[hq.block_id], view=view, qc=replace(hq, view=view - 1), tc=None)
    assert not core._safe_to_vote(b)


def test_one_byzantine_timeout_does_not_end_a_view_but_f_plus_one_do():
    """Mutant C10 (_tally_timeout: len(tally) > f -> >= f): at n = 4 a single validator's timeout
    made every honest one give up the view it was voting in, so one Byzantine validator could time
    out every view (no block commits)."""
    sim = _sim()
    core, cfg = sim.nodes[0].core, sim.cfg[0]
    view, hq = core.view, core.safety.high_qc
    others = [i for i in range(cfg.n) if i != cfg.me]
    core._tally_timeout(others[0], Timeout(view, hq, others[0], bytes(64)))
    assert view not in core.timed_out and core.view == view
    core._tally_timeout(others[1], Timeout(view, hq, others[1], bytes(64)))  # f + 1 = 2: one is honest
    assert view in core.timed_out


# ---- C07: only the view's leader proposes (_on_one_proposal) -------------------------------------

def test_a_block_from_a_validator_that_does_not_lead_its_view_gets_no_vote():
    sim = _sim()
    me = sim.nodes[0]
    core, cfg = me.core, sim.cfg[0]
    view, hq = core.view, core.safety.high_qc
    assert hq.view + 1 == view
    parent = core.blocks[hq.block_id]
    impostor = next(i for i in range(1, cfg.n) if i != cfg.leader(view))
    txs, state = core.app.propose(core.states[parent.id], set())
    b = Block(view, parent.height + 1, parent.id, impostor, core.app.tx_root(txs), state.root, txs.digest(), txs, hq)
    sig = sim.keys[impostor].sign(proposal_bytes(b.id, cfg.network)).signature
    out = core._on_one_proposal(impostor, Proposal(b, sig))
    assert not any(isinstance(a, Send) and isinstance(a.msg, Vote) for a in out)
    assert any(isinstance(a, Rejected) and "leader" in a.reason for a in out), out
