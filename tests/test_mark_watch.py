"""A validator votes for no proposal that leaves out a signed oracle mark it has held a while
(consensus/apps/mark_watch.py, ClearingApp.endorse, Core._endorsed).

The attack it answers (tests/test_ledger_review_s11.py, docs/CLEARING.md "A mark held back"): a
leader holds the oracles' -29% BTC mark back from its block, in which its accounts A and B trade 5
futures at the stale mark, each at its initial margin; the mark, a block later, takes B past its
collateral and the insurance fund pays. Every validator reaches the same verdict on that block (no
rule can tell a stale mark), but a validator holding the mark need not vote for it."""
import hashlib

import pytest
from nacl.signing import SigningKey

from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing_app import ClearingApp, State
from consensus.sim import Link, Simulation
from consensus.verify import Verifier
from tests.test_clearing_columns import funded_genesis
from tests.test_clearing_properties import O, ORACLES, USD, block_of, signed

BTC_FUT = 3
KA, KB = SigningKey(bytes([201]) * 32), SigningKey(bytes([202]) * 32)
A, B = bytes(KA.verify_key), bytes(KB.verify_key)
VOLS = {1: 0.7, 2: 0.7, 4: 0.7}
NO_CERTS = ((), (), ())


pytestmark = pytest.mark.usefixtures("quiet_logs")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def crash_mark(sequence: int = 2, index: float = 60_000.0 * 0.71, vols=None):
    return signed(ctx.mark("BTC", index, sequence, 1_800_000_060 + 600 * (sequence - 1), VOLS if vols is None else vols,
                           O[:2]), ORACLES[:2])


def initial_margin() -> int:
    probe = funded_genesis()
    for k in (A, B):
        probe.register(k)
        probe.deposit(k, 0, "USD", 10**6 * USD)
    probe.trade(B, 1, A, 1, BTC_FUT, 5, 60_000 * USD)
    return probe.margins([B], {"USD"})["USD"][0][0]


def setup_items(deposit: int) -> list:
    return ([signed(ctx.register(k), [sk]) for k, sk in ((A, KA), (B, KB))]
            + [signed(ctx.deposit(k, 0, "USD", deposit), [sk]) for k, sk in ((A, KA), (B, KB))])


def the_trade():
    return signed(ctx.trade(B, 1, A, 1, BTC_FUT, 5, 60_000 * USD), [KB, KA])


def app(clock=None, **kw) -> ClearingApp:
    return ClearingApp(Verifier("accel", "cpu"), funded_genesis(), clock=clock or Clock(), **kw)


def admit(a: ClearingApp, items) -> None:
    assert a.submit_many(items) == [""] * len(items)


def proposed(proposer: ClearingApp, parent, voter: ClearingApp, vparent):
    """proposer's block on parent, validated by voter on vparent: (block, voter's verdict)."""
    txs, state = proposer.propose(parent, set())
    block = block_of(txs, bytes(32), state.root, voter)
    verdict = voter.validate(vparent, block, NO_CERTS)
    assert verdict.ok, verdict.reason
    return block, verdict


def scene(grace: float = 0.5):
    """The leader (`attacker`, which never holds the mark) proposes A and B's setup, then their
    trade; the `voter` was given the crash mark at t=0, before it validated the setup block at t=1."""
    clock = Clock()
    attacker, voter = app(), app(clock, mark_grace_s=grace)
    admit(attacker, setup_items(initial_margin() + USD))
    admit(voter, [crash_mark()])
    clock.now = 1.0
    setup, v1 = proposed(attacker, attacker.genesis, voter, voter.genesis)
    assert voter.endorse(voter.genesis, setup, v1.state) == ""  # (the mark: held since before nothing)
    commit(attacker, setup)
    admit(attacker, [the_trade()])
    return clock, attacker, voter, v1, setup


def commit(a: ClearingApp, block) -> State:
    """block executed and committed by a, its state returned (the parent of a's next proposal)."""
    state = a.execute(a.genesis, block.txs.bodies)
    a.committed(block, state)
    return state


def test_a_block_leaving_out_a_held_mark_gets_no_vote_and_one_carrying_it_does():
    clock, attacker, voter, v1, setup = scene()
    clock.now = 2.0
    block, v2 = proposed(attacker, commit(attacker, setup), voter, v1.state)
    assert [ctx.decode(block.txs.bodies.item(i)).op for i in range(len(block.txs))] == [ctx.TRADE]
    reason = voter.endorse(v1.state, block, v2.state)
    assert "carries no BTC mark" in reason and "2.00 s" in reason
    # an honest leader holding the mark and the trade carries the mark; the trade, which arrived
    # first, would have B liquidated by it in its own block, so A and B are held back
    honest = app()
    parent = commit(honest, setup)
    admit(honest, [the_trade(), crash_mark()])
    block, v3 = proposed(honest, parent, voter, v1.state)
    assert voter.endorse(v1.state, block, v3.state) == ""
    assert v3.state.clearing.marks["BTC"].sequence == 2
    assert v3.state.clearing.funds["USD"] == voter.genesis.clearing.funds["USD"]
    assert v3.state.clearing.accounts[B].positions == {}


def test_the_fund_pays_only_where_the_block_is_voted_for():
    """What the withheld vote prevents, on the same states: the held-back block then the mark."""
    clock, attacker, voter, v1, setup = scene()
    clock.now = 2.0
    block, v2 = proposed(attacker, commit(attacker, setup), voter, v1.state)
    after, _ = voter._run(v2.state, [ctx.decode(crash_mark()[0])])
    assert after.clearing.funds["USD"] < voter.genesis.clearing.funds["USD"]  # the attack, were it certified
    assert voter.endorse(v1.state, block, v2.state) != ""


@pytest.mark.parametrize("when", ["young", "after the previous proposal", "before a block that did not validate"])
def test_a_mark_too_recent_to_be_the_leaders_is_not_demanded(when):
    """The leader builds after the previous proposal's votes: a mark this validator got after
    handling that proposal, or within mark_grace_s, may not have reached the leader yet; nor does a
    block that did not validate (a Byzantine peer's, sent just before the leader's) count as one."""
    clock = Clock()
    attacker, voter = app(), app(clock, mark_grace_s=0.5)
    admit(attacker, setup_items(initial_margin() + USD))
    clock.now = 1.0
    if when == "young":
        admit(voter, [crash_mark()])
        clock.now = 1.2
    setup, v1 = proposed(attacker, attacker.genesis, voter, voter.genesis)
    assert voter.endorse(voter.genesis, setup, v1.state) == ""
    if when != "young":
        clock.now = 1.5
        admit(voter, [crash_mark()])
        clock.now = 9.0
    if when == "before a block that did not validate":
        junk = block_of(setup.txs, bytes(32), bytes(32), voter)
        assert not voter.validate(v1.state, junk, NO_CERTS).ok
        clock.now = 9.5
    else:
        clock.now = 1.3
    parent = commit(attacker, setup)
    admit(attacker, [the_trade()])
    block, v2 = proposed(attacker, parent, voter, v1.state)
    assert voter.endorse(v1.state, block, v2.state) == ""


def test_a_mark_no_block_could_apply_is_not_demanded():
    """A quorum mark that lacks an option's vol is admitted (the mempool checks signatures,
    staleness and the quorum) but refused in any block: leaving it out is no withholding."""
    clock, attacker, voter, v1, setup = scene()
    admit(voter, [crash_mark(sequence=3, vols={1: 0.7})])
    voter.mempool.pop(next(h for h, p in voter.mempool.items() if p.tx.fields[2] == 2))
    clock.now = 2.0
    block, v2 = proposed(attacker, commit(attacker, setup), voter, v1.state)
    assert voter.endorse(v1.state, block, v2.state) == ""


def test_a_newer_mark_than_the_one_held_satisfies_it():
    clock, attacker, voter, v1, setup = scene()
    parent = commit(attacker, setup)
    admit(attacker, [crash_mark(sequence=3, index=60_000.0)])
    clock.now = 2.0
    block, v2 = proposed(attacker, parent, voter, v1.state)
    assert v2.state.clearing.marks["BTC"].sequence == 3
    assert voter.endorse(v1.state, block, v2.state) == ""


def test_a_committed_mark_is_forgotten():
    clock, attacker, voter, v1, setup = scene()
    honest = app()
    parent = commit(honest, setup)
    admit(honest, [crash_mark()])
    block, v3 = proposed(honest, parent, voter, v1.state)
    voter.committed(block, v3.state)
    assert voter.marks_seen.demanded(voter.mempool, v1.state.clearing, float("inf")) == {}
    assert voter.marks_seen.arrived == {}


# ---- the core: a withheld vote is no verdict -----------------------------------------------------


def test_a_withheld_vote_times_the_view_out_without_faulting_the_leader():
    """Three validators refuse to vote for validator 1's blocks (as if each left out a mark they
    hold): none of its blocks is certified, the others' are, and validator 1 is never taken for a
    faulty sender (its timeouts and votes still count)."""
    sim = Simulation(n=4, seed=3, link=Link((1.0, 10.0)))
    for node in sim.nodes:
        if node.index != 1:
            node.core.app.endorse = lambda parent, b, state, *how: "holds a mark" if b.proposer == 1 else ""
    sim.load(200)
    sim.run(blocks=12, max_ms=60_000)
    for node in sim.nodes:
        chain = [b for b, _, _ in node.committed]
        assert len(chain) >= 12
        assert all(b.proposer != 1 for b in chain)
        if node.index != 1:
            assert node.core.counters["vote_withheld"] > 0
            assert 1 not in node.core.refused and node.core.counters["muted"] == 0


@pytest.mark.parametrize("seed,room", [(0, 150), (1, 150), (2, 20), (3, 12)])
def test_an_honest_leader_under_a_deep_mempool_carries_every_mark_demanded(seed, room):
    """The demo's market, a mempool four blocks deep (a mark about one transaction in 20, the crash
    after 3 blocks; blocks of 12 or 20 leave the first pending mark past the block's room): every
    block an honest leader proposes gets the vote of a validator holding the same transactions, long
    enough for each mark to be demanded, while marks wait past the block."""
    from consensus.apps.clearing_load import genesis_market, market_load
    clock = Clock()
    leader = ClearingApp(Verifier("accel", "cpu"), genesis_market("cpu"), max_txs=room)
    voter = ClearingApp(Verifier("accel", "cpu"), genesis_market("cpu"), max_txs=room, clock=clock)
    load, parent, vparent, demanded = market_load(seed, room, 3), leader.genesis, voter.genesis, 0
    items = load.take(4 * room)
    for height in range(max(12, 400 // room)):
        items += load.take(room)
        assert leader.submit_many(items) == voter.submit_many(items)
        items = []
        clock.now += 10.0
        demanded += len(voter.marks_seen.demanded(voter.mempool, vparent.clearing, clock.now))
        txs, state = leader.propose(parent, set())
        verdict = voter.validate(vparent, block_of(txs, bytes(32), state.root, voter), NO_CERTS)
        assert verdict.ok, verdict.reason
        assert voter.endorse(vparent, None, verdict.state) == ""
        block = block_of(txs, bytes(32), state.root, voter)
        leader.committed(block, state)
        voter.committed(block, verdict.state)
        parent, vparent = state, verdict.state
    assert demanded >= 6  # marks were pending and old before most blocks: the check was no formality
    assert len(voter.mempool) > room  # and the mempool stayed deeper than a block


# ---- the fresh review of the rule (twelfth session) ----------------------------------------------


def tick(sequence: int):
    """A quiet BTC mark (0.1% a sequence), one a minute."""
    return signed(ctx.mark("BTC", 60_000.0 * (1 + 0.001 * sequence), sequence, 1_800_000_060 + 60 * sequence, VOLS,
                           O[:2]), ORACLES[:2])


def fillers(n: int, tag: str) -> list:
    """n registrations of fresh keys: they apply on any state."""
    keys = [SigningKey(bytes(32 - len(f"{tag}{i}")) + f"{tag}{i}".encode()) for i in range(n)]
    return [signed(ctx.register(bytes(k.verify_key)), [k]) for k in keys]


def deep(ticks) -> list:
    """A mempool deeper than a block of 10: 12 registrations before each of these marks."""
    return [item for s in ticks for item in fillers(12, f"f{s}-") + [tick(s)]]


def test_a_mark_stale_on_the_parent_is_not_what_a_leader_moves_ahead():
    """Leader 1, restarted just before mark 5, holds mark 5 alone; its block carries it while marks
    2-4 stay pending everywhere else (a commit drops only what the committed head makes stale).
    Leader 2, on that block, moved its first pending mark (2, stale on the parent, refused) ahead
    of the block instead of mark 6 (past its room), and every validator holding mark 6 withheld its
    vote from this honest block (simulated: 108 blocks in 30 s became 28, vote_withheld in every
    validator)."""
    clock = Clock()
    l1, l2, voter = (app(clock, max_txs=10) for _ in range(3))
    stream = deep((2, 3, 4)) + fillers(12, "g") + [tick(5)]
    for a in (l2, voter):
        admit(a, stream)
    admit(l1, [tick(5)])
    clock.now = 0.5
    for a in (l1, l2, voter):
        admit(a, fillers(12, "h") + [tick(6)])
    clock.now = 1.0
    txs, s1 = l1.propose(l1.genesis, set())
    b1 = block_of(txs, bytes(32), s1.root, voter)
    v1 = voter.validate(voter.genesis, b1, NO_CERTS)
    assert v1.ok and v1.state.clearing.marks["BTC"].sequence == 5
    clock.now = 2.0
    exclude = {hashlib.sha256(b1.txs.bodies.item(i)).digest() for i in range(len(b1.txs))}
    txs, s2 = l2.propose(l2.validate(l2.genesis, b1, NO_CERTS).state, exclude)
    b2 = block_of(txs, bytes(32), s2.root, voter)
    v2 = voter.validate(v1.state, b2, NO_CERTS)
    assert v2.ok and v2.state.clearing.marks["BTC"].sequence == 6
    assert voter.endorse(v1.state, b2, v2.state) == ""


def test_a_validator_that_missed_older_marks_votes_for_a_block_carrying_one_of_them():
    """The oracle client passed over the voter for marks 2-4 (unreachable, restarted): the honest
    leader carries mark 2, the oldest pending, and the voter, holding only mark 5, withheld its vote."""
    clock = Clock()
    leader, voter = app(clock, max_txs=10), app(clock, max_txs=10)
    stream = deep((2, 3, 4)) + fillers(12, "g")
    admit(leader, stream)
    missed = {tick(s)[0] for s in (2, 3, 4)}
    admit(voter, [item for item in stream if item[0] not in missed])
    for a in (leader, voter):
        admit(a, [tick(5)] + fillers(3, "h"))
    clock.now = 1.0
    txs, state = leader.propose(leader.genesis, set())
    block = block_of(txs, bytes(32), state.root, voter)
    voter.marks_seen.last_handled = 1.0  # (a proposal handled since the marks came)
    clock.now = 2.0
    verdict = voter.validate(voter.genesis, block, NO_CERTS)
    assert verdict.ok and verdict.state.clearing.marks["BTC"].sequence == 2
    assert voter.endorse(voter.genesis, block, verdict.state) == ""


def test_a_mark_no_block_applies_does_not_shield_a_newer_one():
    """The voter holds an oracle mark no block can apply (one lacking an option's vol, which
    admission does not check; a vol for a future it refuses since session 14) before the crash
    mark: only the oldest held mark of each underlying was tried, so the block margined at the
    stale mark got the vote."""
    bad = signed(ctx.mark("BTC", 60_000.0, 2, 1_800_000_060 + 300, {1: 0.7, 2: 0.7}, O[:2]), ORACLES[:2])
    clock = Clock()
    attacker, voter = app(), app(clock, mark_grace_s=0.5)
    admit(attacker, setup_items(initial_margin() + USD))
    admit(voter, [bad, crash_mark(sequence=3)])
    clock.now = 1.0
    setup, v1 = proposed(attacker, attacker.genesis, voter, voter.genesis)
    assert voter.endorse(voter.genesis, setup, v1.state) == ""
    parent = commit(attacker, setup)
    admit(attacker, [the_trade()])
    clock.now = 2.0
    block, v2 = proposed(attacker, parent, voter, v1.state)
    assert "held mark 3" in voter.endorse(v1.state, block, v2.state)


def _oracle_feed(sim, missed=frozenset(), reversed_ticks=frozenset(), seconds: float = 30.0) -> None:
    """Every 300 ms, three BTC marks (faster than blocks of 10 carry them), each after five fresh
    registrations, to every validator; validator 1 misses the marks in `missed` (the oracle client
    passed over it) and gets the ticks in `reversed_ticks` with their marks in reverse order."""
    from consensus.apps.clearing_load import ORACLES as ORACLE_KEYS
    from accel.risk import FUTURE
    vols = {s.id: 0.6 for s in genesis_series() if s.kind != FUTURE}
    signers, made = ORACLE_KEYS[:2], [0, 0]

    def mark(seq):
        body = ctx.mark("BTC", 60_000.0 * (1 + 0.001 * seq), seq, 1_800_000_000 + 60 * seq, vols,
                        [bytes(k.verify_key) for k in signers])
        return body, [k.sign(body).signature for k in signers]

    def feed(s):
        made[1] += 1
        tick = []
        for _ in range(3):
            made[0] += 1
            tick.append((fillers(5, f"t{made[0]}-"), mark(made[0])))
        for node in s.nodes:
            ticks = tick[::-1] if node.index == 1 and made[1] in reversed_ticks else tick
            marks = [m for seq, (_, m) in enumerate(ticks) if not (node.index == 1 and made[0] - 2 + seq in missed)]
            node.core.app.submit_many([x for f, _ in tick for x in f] + marks)
        if s.now + 300 < seconds * 1000:
            s.at(s.now + 300, feed)
    sim.at(0.0, feed)


def genesis_series():
    from consensus.apps.clearing_load import genesis_market
    return [s for s in genesis_market("cpu").series.values() if s.underlying == "BTC"]


@pytest.mark.parametrize("upset", ["none", "validator 1 misses marks 40-49", "validator 1 gets 5 ticks reversed"])
def test_honest_validators_withhold_no_vote_when_one_misses_or_reorders_marks(upset):
    """Honest validators only, a mempool deeper than a block, one-way delays of 100-200 ms: as found,
    validator 1's block carried its newest mark, the next honest leaders moved a stale one ahead,
    votes were withheld by everyone and commits fell from 108 to 28 in 30 s."""
    sim = Simulation(n=4, seed=1, app="clearing", txs_per_block=10, link=Link((100.0, 200.0)), base_timeout_ms=1500.0)
    _oracle_feed(sim, missed=set(range(40, 50)) if "misses" in upset else set(),
                 reversed_ticks=set(range(14, 19)) if "reversed" in upset else set())
    sim.run(blocks=10**6, max_ms=30_000)
    assert [n.core.counters["vote_withheld"] for n in sim.nodes] == [0, 0, 0, 0]
    assert min(len(n.committed) for n in sim.nodes) >= 90
    assert all(n.core.app.head.marks["BTC"].sequence >= 150 for n in sim.nodes)  # (of about 300 made: the mempool is deep)


def test_a_parent_fetched_just_before_its_child_makes_no_mark_demanded_of_it():
    """The voter never got block 1's proposal: block 2 (built at t=0.3, before mark 3 reached the
    leader and the voter together at 0.4) waits while block 1 is fetched, and both are validated at
    1.0. Every validation moved the reference, so mark 3, held 0.6 s by then, was demanded of block
    2 and the honest block lost the vote. Only a proposal the validator is asked to vote for (or
    builds) moves it, and the grace runs to the block's arrival, not past its validation."""
    clock = Clock()
    leader, voter = app(clock), app(clock)
    for a in (leader, voter):
        admit(a, [crash_mark(2, 60_000.0 * 1.001)])
    txs, s1 = leader.propose(leader.genesis, set())
    b1 = block_of(txs, bytes(32), s1.root, voter)
    clock.now = 0.3
    exclude = {hashlib.sha256(b1.txs.bodies.item(i)).digest() for i in range(len(b1.txs))}
    txs, s2 = leader.propose(s1, exclude)
    b2 = block_of(txs, b1.state_root, s2.root, voter)
    clock.now = 0.4
    for a in (leader, voter):
        admit(a, [crash_mark(3, 60_000.0 * 0.999)])
    clock.now = 1.0
    v1 = voter.validate(voter.genesis, b1, NO_CERTS)  # (fetched: Core asks no vote for it)
    v2 = voter.validate(v1.state, b2, NO_CERTS)
    assert v1.ok and v2.ok and len(b2.txs) == 0
    clock.now = 1.1
    assert voter.endorse(v1.state, b2, v2.state) == ""


def _btc_ticks(sim, every_ms: float, tag: str, until_ms: float = 60_000.0) -> None:
    """A BTC mark every every_ms to every validator at once, after two fresh registrations."""
    from accel.risk import FUTURE
    from consensus.apps.clearing_load import ORACLES as ORACLE_KEYS
    vols = {s.id: 0.6 for s in genesis_series() if s.kind != FUTURE}
    made = [0]

    def feed(s):
        made[0] += 1
        body = ctx.mark("BTC", 60_000.0 * (1 + 0.001 * made[0]), made[0], 1_800_000_000 + 60 * made[0], vols,
                        [bytes(k.verify_key) for k in ORACLE_KEYS[:2]])
        batch = fillers(2, f"{tag}{made[0]}-") + [(body, [k.sign(body).signature for k in ORACLE_KEYS[:2]])]
        for node in s.nodes:
            node.core.app.submit_many(batch)
        if s.now + every_ms < until_ms:
            s.at(s.now + every_ms, feed)
    sim.at(0.0, feed)


def test_lossy_links_cost_honest_blocks_no_vote():
    """One-way delays of 150-300 ms, a tenth of the frames dropped (parents fetched, children
    resumed), a BTC mark every 1.2 s, all honest: as found, 1-2 votes a minute were withheld from
    honest blocks (and with n = 7, one validator down, 40% fewer blocks)."""
    sim = Simulation(n=4, seed=1, app="clearing", txs_per_block=20, link=Link((150.0, 300.0), drop=0.1),
                     base_timeout_ms=1000.0)
    _btc_ticks(sim, 1200.0, "l")
    sim.run(blocks=10**6, max_ms=60_000)
    assert [n.core.counters["vote_withheld"] for n in sim.nodes] == [0, 0, 0, 0]
    assert min(n.core.committed.height for n in sim.nodes) >= 50
    assert sim.nodes[0].core.app.head.marks["BTC"].sequence >= 40


def test_a_mark_pushed_past_the_block_by_another_moved_ahead_moves_too():
    """Blocks of 10: nine registrations, BTC's mark (place 9, inside the block), five more, ETH's
    (place 15, past it). Moving ETH's ahead pushed BTC's to place 10: every honest leader built a
    block carrying ETH alone, and every validator holding the BTC mark withheld its vote
    (simulated: four views in a row lost, 95 blocks in 40 s against 226)."""
    from accel.risk import FUTURE
    from consensus.apps.clearing_load import ORACLES as ORACLE_KEYS, genesis_market
    series = genesis_market("cpu").series.values()

    def mark(underlying, index):
        vols = {s.id: 0.6 for s in series if s.underlying == underlying and s.kind != FUTURE}
        body = ctx.mark(underlying, index, 1, 1_800_000_060, vols, [bytes(k.verify_key) for k in ORACLE_KEYS[:2]])
        return body, [k.sign(body).signature for k in ORACLE_KEYS[:2]]
    clock = Clock()
    leader, voter = (ClearingApp(Verifier("accel", "cpu"), genesis_market("cpu"), max_txs=10, clock=clock)
                     for _ in range(2))
    items = fillers(9, "a") + [mark("BTC", 60_100.0)] + fillers(5, "b") + [mark("ETH", 3_010.0)] + fillers(10, "c")
    for a in (leader, voter):
        admit(a, items)
    clock.now = 5.0
    txs, state = leader.propose(leader.genesis, set())
    assert {u: m.sequence for u, m in state.clearing.marks.items()} == {"BTC": 1, "ETH": 1}
    verdict = voter.validate(voter.genesis, block_of(txs, bytes(32), state.root, voter), NO_CERTS)
    voter.marks_seen.last_handled = 4.0
    assert verdict.ok and voter.endorse(voter.genesis, None, verdict.state) == ""


def test_a_validator_whose_vote_the_leader_did_not_wait_for_asks_nothing():
    """Validator 3 sits 150 ms further away and a block takes 400 ms to build: it gets each
    proposal after the next leader began building, so a mark it got before that proposal may have
    reached the leader after it built. It withheld votes from honest blocks; now only a block whose
    certificate holds this validator's own vote (or timeout) is asked for marks."""
    from consensus import messages
    build_ms, far_ms = 400.0, 150.0

    class Far(Simulation):
        def _deliver(self, src, to_index, msg):
            if isinstance(msg, messages.Proposal) and msg.block.proposer == src.index and not getattr(self, "late", 0):
                self._push(self.now + build_ms, ("call", None, lambda s, a=src, t=to_index, m=msg: s.later(a, t, m)))
                return
            super()._deliver(src, to_index, msg)

        def later(self, src, to_index, msg):
            self.late = 1
            try:
                super()._deliver(src, to_index, msg)
            finally:
                self.late = 0

        def _paced(self, src, dst, arrives, size):
            return super()._paced(src, dst, arrives + (far_ms if dst == self.nodes[3].name else 0.0), size)

    sim = Far(n=4, seed=1, app="clearing", txs_per_block=10, link=Link((20.0, 40.0)), base_timeout_ms=3000.0)
    _btc_ticks(sim, 1130.0, "s")
    sim.run(blocks=10**6, max_ms=60_000)
    assert [n.core.counters["vote_withheld"] for n in sim.nodes] == [0, 0, 0, 0]
    assert sim.nodes[0].core.app.head.marks["BTC"].sequence >= 40
