"""The thirteenth session's consensus review: one Byzantine validator parking junk proposals.

A proposal's height is signed by its proposer, but the QC it carries is any real old QC the
proposer holds, of a block committed and pruned long ago, with its unsigned height label set far
ahead. Such proposals were parked (their height is above the committed one) and pruned only once
that height committed (never); their parents, pruned everywhere, were asked for again after each
timeout ahead of every other fetch and took all MAX_FETCHES slots. A validator that then missed a
certified block could never fetch it, and once the Byzantine validator stopped voting the chain
stopped for good (n = 4: 64 blocks, then nothing in 600 s simulated). Now a proposal whose QC's
view (signed) is before the committed block's is dropped on arrival, and parked ones go, with
their parents' fetches, when a commit makes them so.

The same class, found by a second review: a Byzantine leader that withholds the QCs it forms on
others' blocks (their views time out; the blocks, abandoned, are pruned everywhere once the chain
commits past them) keeps the proposal it would have made on each, in its own view, on the QC of
the view before: no TC, no relabelling. A validator coming back (a partition healing, a restart
from its store) still has an older committed view, so they are not stale for it: 20 of them
parked took every fetch slot, a slot freed after n unanswered tries went to them again, and once
the Byzantine validator stopped voting the three honest ones committed nothing in 120 s
simulated. Fetch slots now go to the newest views a fetch serves (Core._need). And a peer that
answered a fetch with one real block padded with 63 copies of it (or of old blocks) passed for a
full answer and kept the fetch, one block per round trip.

A third review: counting only the proposals parked directly on a block, the Byzantine leader's
junk of its own view V tied with its real block of V, on which the honest proposals after it were
parked without a fetch of their own, and a tie evicts nothing: the junk kept every slot again
(the three honest validators committed nothing in 120 s). A fetch's need is now the newest view
parked anywhere above it. And counting an answer's blocks from the committed height made an
honest full answer short once another answer had committed past where it was asked from: the
fetches hopped to the next validator (maybe silent, for 8 views). Answers are now measured from
the height they were asked from."""
from dataclasses import replace

import pytest

from consensus import messages as m
from consensus.core import Broadcast, Core, Send
from consensus.messages import QC, TC, Block, Proposal, Txs, Vote, proposal_bytes, timeout_bytes, vote_bytes
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


LAG, WANT = 3, 20


def _withholding_run(variant: str, tmp_path, seed: int = 1):
    st = {"collect": False, "mute": False, "votes": {}, "junk": [], "cut": variant == "partition"}

    class Byz(Core):
        def handle(self, sender, msg):
            if st["collect"] and isinstance(msg, Vote) and self.cfg.leader(msg.view + 1) == self.cfg.me \
                    and (msg.view // 4) % 2 == 0 and len(st["junk"]) < WANT:
                sigs = st["votes"].setdefault((msg.view, msg.block_id, msg.height), {})
                sigs[msg.voter] = msg.signature
                if len(sigs) == 2 and self.cfg.me not in sigs:  # with its own vote: a quorum
                    sigs[self.cfg.me] = self.sign(vote_bytes(msg.block_id, msg.view, self.cfg.network))
                    voters = tuple(sorted(sigs))
                    qc = QC(msg.block_id, msg.view, msg.height, voters, b"".join(sigs[v] for v in voters))
                    empty = Txs.empty()
                    b = Block(msg.view + 1, msg.height + 1, msg.block_id, self.cfg.me, self.app.tx_root(empty),
                              bytes(32), empty.digest(), empty, qc, None)
                    st["junk"].append(Proposal(b, self.sign(proposal_bytes(b.id, self.cfg.network))))
                return []  # the QC withheld: the view times out, v0's block is abandoned
            return self._filter(super().handle(sender, msg))

        def on_timer(self, view):
            return self._filter(super().on_timer(view))

        def _filter(self, out):
            res = []
            for a in out:
                m = getattr(a, "msg", None)
                if st["mute"] and isinstance(m, (Vote, Proposal)):
                    continue
                if st["cut"] and isinstance(a, Broadcast):  # (partition variant: nothing to v3 but the junk)
                    res += [Send(i, m) for i in range(self.cfg.n) if i not in (self.cfg.me, LAG)]
                elif st["cut"] and isinstance(a, Send) and a.to == LAG:
                    continue
                else:
                    res.append(a)
            return res

    sim = Simulation(n=4, seed=seed, link=Link((1.0, 10.0)), txs_per_block=5,
                     make_core=lambda cfg, sign, app, *rest: (Byz if cfg.me == BYZ else Core)(cfg, sign, app, *rest))
    sim.load(2000)
    if variant == "restart":
        sim.durable("v3", tmp_path / "v3.db")
    honest = lambda node: node.index != BYZ  # noqa: E731
    sim.run(blocks=10, max_ms=30_000, live=honest)
    t0 = sim.now
    st["collect"] = True
    if variant == "partition":  # v3 cut off from v0 and v2; v1 reaches everyone
        sim.partitions.append((t0, 10**9, [{"v0", "v1", "v2"}, {"v1", "v3"}]))
    else:
        sim.kill("v3", t0, 10**12)
    while len(st["junk"]) < WANT and sim.now < t0 + 200_000:
        sim.run(blocks=10**9, max_ms=sim.now + 1_000, live=honest)
    st["collect"] = False
    sim.run(blocks=10**9, max_ms=sim.now + 3_000, live=honest)  # the chain commits past the abandoned blocks
    assert len(st["junk"]) == WANT
    assert not [p for p in st["junk"] if p.block.parent in sim._node("v0").core.blocks]  # pruned: nobody serves them
    if variant == "restart":
        sim.crashed.discard("v3")
        sim._restart(sim._node("v3"))
    v3 = sim._node("v3").core
    floor = v3.committed.view
    assert all(p.block.qc.view >= floor for p in st["junk"])  # not stale for v3
    for p in st["junk"]:
        sim.inject(sim.now + (1 if variant == "partition" else 0), "v3", BYZ, p)
    sim.run(blocks=10**9, max_ms=sim.now + 100, live=honest)
    sim.partitions.clear()
    sim.run(blocks=10**9, max_ms=sim.now + 5_000, live=honest)
    st["mute"] = True  # from here the honest three need v3's vote for every QC
    before = {n.name: len(n.committed) for n in sim.nodes if honest(n)}
    sim.run(blocks=10**9, max_ms=sim.now + 120_000, live=honest)
    after = {n.name: len(n.committed) for n in sim.nodes if honest(n)}
    return before, after, v3


@pytest.mark.parametrize("variant", ["partition", "restart"])
def test_withheld_proposals_on_abandoned_blocks_do_not_starve_a_lagging_validators_fetches(variant, tmp_path):
    before, after, v3 = _withholding_run(variant, tmp_path)
    assert min(after.values()) >= max(before.values()) + 20, (before, after, v3.counters["fetches_full"])


def _donor_and_fresh(blocks: int = 150):
    """Validator 0 of a chain of `blocks`, the chain, and validator 2 of a fresh network (at genesis)."""
    sim = Simulation(n=4, seed=9)
    sim.load(200)
    sim.run(blocks=blocks)
    donor = sim.nodes[0].core
    chain = [b for b, _, _ in sim.nodes[0].committed]
    fresh = Simulation(n=4, seed=9).nodes[2].core
    return donor, chain, fresh


def test_a_peer_answering_one_block_padded_with_copies_is_passed_over():
    donor, chain, fresh = _donor_and_fresh()
    target = chain[140].id
    fresh._fetch(target, fresh.cfg.me)  # asked of everyone; validator 1 (Byzantine) answers first
    asked, got = [], 0
    for _ in range(20):
        nxt = donor.proposals[chain[fresh.committed.height].id]  # the next block only
        out = fresh.handle(1, m.BlockResponse((nxt,) * m.MAX_RANGE))
        asked += [a.to for a in out if isinstance(getattr(a, "msg", None), m.BlockRequest)]
        got += 1
        if fresh.fetching.get(target) != 1:
            break
    # as with an unpadded one-block answer (tests/test_consensus_attacks_s5.py), the next range
    # goes to the next validator (3; 2 is this one) after the first short answer
    assert asked and asked[0] == 3, f"{got} one-block answers, every next range asked of {set(asked)}"


def test_padding_with_stale_old_blocks_works_as_well():
    donor, chain, fresh = _donor_and_fresh()
    target = chain[140].id
    fresh._fetch(target, fresh.cfg.me)
    asked = []
    for _ in range(20):
        h = fresh.committed.height
        nxt = donor.proposals[chain[h].id]
        pad = donor.proposals[chain[max(h - 3, 0)].id] if h >= 3 else nxt  # committed: stale, dropped unchecked
        out = fresh.handle(1, m.BlockResponse((pad,) * (m.MAX_RANGE - 1) + (nxt,)))
        asked += [a.to for a in out if isinstance(getattr(a, "msg", None), m.BlockRequest)]
        if fresh.fetching.get(target) != 1:
            break
    assert asked and asked[0] == 3, f"every next range asked of {set(asked)}"


def test_junk_of_the_newest_view_does_not_keep_the_fetch_slots(tmp_path):
    """v1 withholds 16 QCs it forms on others' blocks while v3 is down, then, leading view V on
    TC(V-1), sends v3 as it restarts 16 proposals of V on them and its real block of V, and stops."""
    st = {"phase": "idle", "qcs": [], "votes": {}, "junk": [], "real": None, "mute": False}

    class Byz(Core):
        def handle(self, sender, msg):
            if isinstance(msg, Vote) and self.cfg.leader(msg.view + 1) == self.cfg.me:
                if st["phase"] == "collect" and (msg.view // 4) % 2 == 0 and len(st["qcs"]) < 16:
                    sigs = st["votes"].setdefault((msg.view, msg.block_id, msg.height), {})
                    sigs[msg.voter] = msg.signature
                    if len(sigs) == 2 and self.cfg.me not in sigs:
                        sigs[self.cfg.me] = self.sign(vote_bytes(msg.block_id, msg.view, self.cfg.network))
                        voters = tuple(sorted(sigs))
                        st["qcs"].append(QC(msg.block_id, msg.view, msg.height, voters,
                                            b"".join(sigs[v] for v in voters)))
                    return []
                if st["phase"] == "arm":
                    return []  # the view before its own times out: it leads its own on TC(V-1)
            return self._filter(super().handle(sender, msg))

        def on_timer(self, view):
            return self._filter(super().on_timer(view))

        def _filter(self, out):
            if st["mute"]:
                return [a for a in out if not isinstance(a, (Send, Broadcast))]
            for a in out:
                msg = getattr(a, "msg", None)
                if st["phase"] == "arm" and isinstance(a, Broadcast) and isinstance(msg, Proposal) \
                        and msg.block.proposer == self.cfg.me and msg.block.tc is not None:
                    empty = Txs.empty()
                    for qc in st["qcs"]:
                        b = Block(msg.block.view, qc.height + 1, qc.block_id, self.cfg.me, self.app.tx_root(empty),
                                  bytes(32), empty.digest(), empty, qc, msg.block.tc)
                        st["junk"].append(Proposal(b, self.sign(proposal_bytes(b.id, self.cfg.network))))
                    st["real"], st["phase"] = msg, "armed"
            if st["phase"] == "armed" and any(isinstance(getattr(a, "msg", None), Vote) for a in out):
                st["mute"] = True  # its vote for its own block of V goes; then nothing more
            return out

    sim = Simulation(n=4, seed=1, link=Link((1.0, 10.0)), txs_per_block=5,
                     make_core=lambda cfg, sign, app, *rest: (Byz if cfg.me == BYZ else Core)(cfg, sign, app, *rest))
    sim.load(2000)
    sim.durable("v3", tmp_path / "v3.db")
    honest = lambda node: node.index != BYZ  # noqa: E731
    sim.run(blocks=10, max_ms=30_000, live=honest)
    t0 = sim.now
    sim.kill("v3", t0, 10**12)
    st["phase"] = "collect"
    while len(st["qcs"]) < 16 and sim.now < t0 + 200_000:
        sim.run(blocks=10**9, max_ms=sim.now + 1_000, live=honest)
    st["phase"] = "idle"
    sim.run(blocks=10**9, max_ms=sim.now + 3_000, live=honest)  # the chain commits past the abandoned blocks
    assert len(st["qcs"]) == 16 and not [q for q in st["qcs"] if q.block_id in sim._node("v0").core.blocks]
    st["phase"] = "arm"
    while st["phase"] != "armed" and sim.now < t0 + 400_000:
        sim.run(blocks=10**9, max_ms=sim.now + 50, live=honest)
    assert st["phase"] == "armed"
    sim.crashed.discard("v3")
    sim._restart(sim._node("v3"))
    for p in st["junk"]:
        sim.inject(sim.now, "v3", BYZ, p)
    sim.inject(sim.now + 0.5, "v3", BYZ, st["real"])
    before = {n.name: len(n.committed) for n in sim.nodes}
    sim.run(blocks=10**9, max_ms=sim.now + 30_000, live=honest)
    after = {n.name: len(n.committed) for n in sim.nodes if honest(n)}
    assert min(after.values()) >= max(before.values()) + 20, (before, after)


def test_an_honest_full_answer_stays_full_after_another_committed_part_of_its_range():
    """Validator 2 catching up asks honest peer 0 for X from height 65 and for Z from 63; 0 answers
    Z's first (63..126 committed), then X's (65..128, all taken): counted from the committed
    height it was short, and every fetch of 0 hopped to validator 1."""
    donor, chain, fresh = _donor_and_fresh(300)

    def answer(block_id, from_height):
        out = donor.handle(2, m.BlockRequest(block_id, from_height, m.MAX_RANGE))
        return next(a.msg for a in out if isinstance(a, Send))

    X, Z = chain[250].id, chain[280].id
    fresh._fetch(X, 0)
    out = fresh.handle(0, answer(X, 1))
    req_x = [a.msg for a in out if isinstance(getattr(a, "msg", None), m.BlockRequest)]
    assert [a.to for a in out if isinstance(getattr(a, "msg", None), m.BlockRequest)] == [0]
    req_z = fresh._fetch(Z, 0)[0].msg
    assert req_z.from_height < req_x[0].from_height
    fresh.handle(0, answer(Z, req_z.from_height))
    rx = answer(X, req_x[0].from_height)
    assert len({p.block.id for p in rx.proposals}) == m.MAX_RANGE
    out = fresh.handle(0, rx)
    assert all(p.block.id in fresh.blocks or p.block.id in fresh.heights for p in rx.proposals)
    asked = [a.to for a in out if isinstance(getattr(a, "msg", None), m.BlockRequest)]
    assert asked and set(asked) == {0} and set(fresh.fetching.values()) == {0}


def test_a_validator_catching_up_asks_each_peer_for_a_range_once():
    """Each fetch asked its own range from the committed height: 1,500 blocks behind with parked
    proposals for 16 parents, a validator asked everyone for the same range 16 times at each
    timeout and again per fetch at each answer; at 1.6 Mbit/s its peers' answer backlogs filled,
    copies were dropped or came late, and it got 506 of 1,686 blocks in 60 s simulated (66 times
    the blocks it needed). Now one request per (peer, height), of the newest need."""
    donor, chain, fresh = _donor_and_fresh(200)
    for b in chain[100:116]:  # 16 fetches out, as with proposals parked on 16 parents
        fresh._fetch(b.id, fresh.cfg.me)
    assert len(fresh.fetching) == 16
    out = fresh.on_timer(fresh.view)
    asks = [a for a in out if isinstance(getattr(a, "msg", None), m.BlockRequest)]
    assert len(asks) == 1 and isinstance(asks[0], Broadcast) and asks[0].msg.from_height == 1
    assert len(fresh.fetching) == 16  # the others stay recorded as asked
    first = donor.handle(2, asks[0].msg)
    answer = next(a.msg for a in first if isinstance(a, Send))
    out = fresh.handle(0, answer)
    asks = [a for a in out if isinstance(getattr(a, "msg", None), m.BlockRequest)]
    assert len(asks) == 1 and asks[0].to == 0 and asks[0].msg.from_height == answer.proposals[-1].block.height + 1


def test_a_late_answer_to_a_request_whose_range_is_committed_is_measured_from_the_commit():
    """Validator 1 (Byzantine) leaves the requests each timeout broadcasts to it unanswered, then
    answers them late with the 63 blocks asked (committed since, from honest 0's answers) and one
    new one: measured from the height asked, they made a full answer and every next range was
    asked of it again, one block per answer."""
    donor, chain, fresh = _donor_and_fresh(400)
    target = chain[390].id

    def requests(out):
        return [a for a in out if isinstance(getattr(a, "msg", None), m.BlockRequest)]

    def honest_answer():
        out = donor.handle(2, m.BlockRequest(target, fresh.committed.height + 1, m.MAX_RANGE))
        return next(a.msg for a in out if isinstance(a, Send))

    fresh._fetch(target, fresh.cfg.me)
    left = []  # heights asked of validator 1, never answered
    for _ in range(4):
        out = fresh.on_timer(fresh.view) if fresh.view else []
        out += fresh.handle(0, honest_answer())
        left += [a.msg.from_height for a in requests(out) if isinstance(a, Broadcast) or a.to == 1]
    out = fresh.on_timer(fresh.view)  # every fetch asked of everyone again: validator 1 answers first
    left = sorted(set(left + [a.msg.from_height for a in requests(out) if isinstance(a, Broadcast)]))
    asked = []
    for h in left:
        if h + 62 > fresh.committed.height:
            break
        pad = tuple(donor.proposals[chain[x - 1].id] for x in range(h, h + 63))  # chain[i] is height i + 1
        top = max(b.height for b in fresh.blocks.values())
        out = fresh.handle(1, m.BlockResponse(pad + (donor.proposals[chain[top].id],)))
        asked += [a.to if isinstance(a, Send) else None for a in requests(out)]
    assert asked and 1 not in asked and None not in asked, asked
