"""Consensus, fourteenth session's second review.

1. A restart that enters its last voted view (9c98e7b:
all four restarted 10 timed-out views past their last QC took 162 s simulated to commit again) lost
liveness for good with f validators down (fixed).

n = 4 (A, B, C, D). Views 1..4 end in TCs; in view 5 every validator times out, but only A receives
a quorum of view-5 timeouts: A forms TC(5), enters view 6 and times out there. B and C stay in
view 5. A power loss: A, B and C come back from their stores, D does not (one crash: within f).
A enters view 6, B and C view 5, holding 2 of the 3 view-5 timeouts a TC needs; A never times out
in view 5 again and held nothing to help them with (the tally it formed TC(5) from was in
memory): no TC, no QC, no block, for ever. Now a validator asked by a peer's timeout of a view it
is past, holding no quorum of that view's timeouts, answers with its own timeout of that view
(Core._help_behind: it never votes in a view before its own; its high QC only grows).
2. The per-peer inbox byte bound (83a0380) still undercounted decoded proposals (~2.5 KB of
   objects weighed 648) and certificates' signers (~166 bytes weighed 104): one peer's queue held
   2.4 times the bound (613 MiB of 64-proposal BlockResponses). Weighed now at least what decoding
   holds, measured.
3. A block taken from a BlockResponse padded with stale proposals (dropped unchecked) kept the
   whole frame alive (596 bytes of transactions, 62.9 MB held) while the block was: copied out now.
4. A validator.key holding another validator's key in upper case, after a BOM or before a NUL was
   called damaged, with the advice to write this validator's key over it (taking the other's
   safety state): read as an editor may leave it now, and remains of another's key name it."""

import gc
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from accel import Packed
from consensus import messages, node
from consensus.core import Broadcast, Core, Persist, Send
from consensus.messages import QC, TC, Block, BlockResponse, Proposal, Txs
from consensus.sim import Simulation

pytestmark = pytest.mark.usefixtures("quiet_logs")


def run() -> tuple:
    sim = Simulation(n=4, seed=5, validation="software")
    sim.load(16)
    cores = [n.core for n in sim.nodes]
    stored = {i: c.safety for i, c in enumerate(cores)}  # what each store holds (last Persist)
    queue = []

    def apply(i, acts, drop=lambda src, dst, m: False):
        for a in acts:
            if isinstance(a, Persist):
                stored[i] = a.safety
            elif isinstance(a, Send):
                if not drop(i, a.to, a.msg):
                    queue.append((i, a.to, a.msg))
            elif isinstance(a, Broadcast):
                for j in range(4):
                    if j != i and not drop(i, j, a.msg):
                        queue.append((i, j, a.msg))

    def pump(alive, drop):
        while queue:
            src, dst, m = queue.pop(0)
            if dst in alive and src in alive and not drop(src, dst, m):
                apply(dst, cores[dst].handle(src, m), drop)

    # ---- phase 1: the history before the power loss --------------------------------------------
    no_proposals = lambda s, d, m: isinstance(m, Proposal)
    for i in range(4):
        apply(i, cores[i].start(), no_proposals)
    pump(range(4), no_proposals)
    while min(c.view for c in cores) < 5:  # views 1..4 end in TCs
        for i in range(4):
            apply(i, cores[i].on_timer(cores[i].view), no_proposals)
            pump(range(4), no_proposals)
    assert [c.view for c in cores] == [5, 5, 5, 5], [c.view for c in cores]
    # view 5: only B's and D's timeouts reach A; nothing else is delivered
    view5 = lambda s, d, m: isinstance(m, Proposal) or not (d == 0 and s in (1, 3))
    for i in (0, 1, 2, 3):
        apply(i, cores[i].on_timer(5), view5)
    pump(range(4), view5)
    assert cores[0].view == 6 and [c.view for c in cores[1:]] == [5, 5, 5]
    apply(0, cores[0].on_timer(6), lambda s, d, m: True)  # A times out in 6; its frames die with the power
    queue.clear()
    lvv = {i: stored[i].last_voted_view for i in range(4)}
    assert lvv == {0: 6, 1: 5, 2: 5, 3: 5}, lvv

    # ---- phase 2: A, B, C restart from their stores; D stays down (f = 1) -----------------------
    alive = (0, 1, 2)
    for i in alive:
        key = sim.keys[i]
        app = sim._make_app(sim.genesis)
        cores[i] = Core(sim.cfg[i], lambda m, k=key: k.sign(m).signature, app, stored[i])
    never = lambda s, d, m: False
    for i in alive:
        apply(i, cores[i].start(), never)
    pump(alive, never)
    entered = [cores[i].view for i in alive]
    for _ in range(40):  # 40 rounds of every live validator's timer firing, all frames delivered
        for i in alive:
            apply(i, cores[i].on_timer(cores[i].view), never)
            pump(alive, never)
    return entered, [cores[i].view for i in alive], [cores[i].committed.height for i in alive]


def test_three_restarted_validators_with_one_down_go_on_past_a_tc_only_one_of_them_formed():
    entered, views, heights = run()
    assert entered == [6, 5, 5]  # (each its last voted view)
    assert min(views) > 6 and min(heights) > 0, f"views {views}, committed heights {heights}"


# ---- 2. what a decoded message holds against what it weighs ---------------------------------------

Z = bytes(32)


def qc(k: int) -> QC:
    return QC(b"\1" * 32, 5, 4, tuple(range(257, 257 + k)), b"\2" * (64 * k))


def prop(t=None, q=0) -> Proposal:
    return Proposal(Block(5, 5, Z, 1, Z, Z, Z, Txs.empty(), qc(q), t), b"\4" * 64)


def held_by_decoding(msg, sample: int = 4) -> float:
    frame = messages.encode(msg)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [messages.decode(bytes(frame)) for _ in range(sample)]  # (each from its own frame, as net reads them)
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("msg", [
    BlockResponse(tuple(prop(TC(4, (), (), b"", qc(0))) for _ in range(64))),
    BlockResponse(tuple(prop() for _ in range(64))),
    prop(q=3000),
    prop(TC(4, tuple(range(257, 4257)), tuple(range(1 << 40, (1 << 40) + 4000)), b"\3" * (64 * 4000), qc(0))),
], ids=["64 proposals with empty TCs", "64 empty proposals", "a 3,000-signer QC", "a 4,000-signer TC"])
def test_a_message_weighs_at_least_what_its_decoding_holds(msg):
    assert node._weight(messages.decode(messages.encode(msg))) >= held_by_decoding(msg)


# ---- 3. a taken block's transactions ----------------------------------------------------------------

def root_bytes(a) -> int:
    while True:
        if getattr(a, "base", None) is not None:
            a = a.base
        elif isinstance(a, memoryview) and a.obj is not None:
            a = a.obj
        else:
            return a.nbytes if hasattr(a, "nbytes") else len(a)


def test_a_block_taken_from_a_padded_response_does_not_keep_the_frame():
    sim = Simulation(n=4, seed=4, validation="software", txs_per_block=4)
    sim.load(40)
    sim.run(blocks=2)
    p = next(q for q in sim.nodes[0].core.proposals.values() if q.block.height == 1)
    junk = Txs(Packed(np.zeros(1 << 20, np.uint8), np.array([0, 1 << 20], np.uint64)), np.zeros((1, 64), np.uint8))
    pad = Proposal(Block(0, 1, Z, 0, Z, Z, Z, junk, QC(Z, 0, 0)), bytes(64))  # stale: view 0
    frame = messages.encode(BlockResponse((p,) + (pad,) * 8))
    fresh = next(n for n in sim.nodes if n.index != p.block.proposer)
    relayer = next(i for i in range(4) if i not in (fresh.index, p.block.proposer))
    key = sim.keys[fresh.index]
    core = Core(sim.cfg[fresh.index], lambda m, k=key: k.sign(m).signature, sim._make_app(sim.genesis))
    core.start()
    core.handle(relayer, messages.decode(frame))
    assert p.block.id in core.blocks
    txs = core.proposals[p.block.id].block.txs
    own = txs.bodies.data.nbytes + txs.sigs.nbytes
    assert core.blocks[p.block.id].txs is txs
    assert max(root_bytes(txs.bodies.data), root_bytes(txs.sigs)) <= 2 * own + 4096, len(frame)
    assert txs.digest() == p.block.txs.digest()


# ---- 4. another validator's marker, as an editor may leave it ----------------------------------------

@pytest.mark.parametrize("text", ["{k}\n".upper(), "\ufeff{k}\n", "{k}\0", "  {k}  \n"],
                         ids=["upper case", "BOM", "NUL", "spaces"])
def test_another_validators_marker_is_named_as_its_store(tmp_path, text):
    keys = [bytes([0xa0 + i]) * 32 for i in range(4)]
    cfg = SimpleNamespace(keys=keys, index=1, data_dir=tmp_path)
    (tmp_path / "validator.key").write_text(text.replace("{K}", "{k}").format(k=keys[2].hex()))
    with pytest.raises(node.StartupError, match="a2a2a2a2a2a2a2a2.*give each validator its own data_dir"):
        node.NodeRunner._claim_data_dir(cfg, "")


def test_remains_of_another_validators_key_are_named_not_called_damaged(tmp_path):
    keys = [bytes([0xa0 + i]) * 32 for i in range(4)]
    cfg = SimpleNamespace(keys=keys, index=1, data_dir=tmp_path)
    (tmp_path / "validator.key").write_text(keys[2].hex()[:40])
    with pytest.raises(node.StartupError, match="validator 2's key: it is that validator's store"):
        node.NodeRunner._claim_data_dir(cfg, "")
    (tmp_path / "validator.key").write_text("")
    with pytest.raises(node.StartupError, match="is damaged .empty"):
        node.NodeRunner._claim_data_dir(cfg, "")
