"""The fourteenth session's review of consensus persistence, recovery and the node driver.

1. A restart entered view high_qc.view + 1 even where the stored last_voted_view was higher (views
   that ended in TCs: slow validation, lost or withheld votes). No one may propose or vote at or
   below last_voted_view, and the timer doubled again from the base in each such view: four
   validators restarted 10 TC-ended views past their last QC committed their first block after
   162 s simulated (200 ms base), against 0.2 s now that a restart enters last_voted_view.
2. The per-peer inbox byte bound weighed a message by its transactions only: a Timeout whose QC
   has 65,535 signers (a 4.3 MB frame, 6.8 MB decoded) weighed 512 bytes, so one validator could
   queue INBOX_PER_PEER (4,096) such frames, or 4,096 BlockResponses of 66.7 MB (254.7 GiB),
   against INBOX_BYTES_PER_PEER (256 MiB). Certificates are weighed now, for every message kind.
3. A proposal parked from a BlockResponse kept the whole frame alive (its transactions were views
   into it); parked proposals now hold a copy of their own transactions.
4. validator.key was written and renamed with no fsync; a crash at the first start could leave it
   empty, and the validator was then refused for good as "the store of the validator with key
   ..." (another validator's). It is synced now (file and directory), and an empty or malformed
   one is reported as damaged, with the key to write back.
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


# ---- 2. the inbox byte bound counts certificates -----------------------------------------------
def _big_messages():
    """One of each wire message, each as heavy as its kind allows in certificates."""
    from consensus.messages import (TC, Block, BlockRequest, BlockResponse, SnapshotChunk, SnapshotOffer,
                                    SnapshotRequest, Txs)
    n = 65535
    qc = QC(b"\1" * 32, 5, 4, tuple(range(n)), b"\2" * (64 * n))
    small = QC(b"\1" * 32, 5, 4, tuple(range(4000)), b"\2" * (64 * 4000))
    tc = TC(6, tuple(range(4000)), tuple(range(4000)), b"\5" * (64 * 4000), small)
    blk = Block(7, 5, b"\1" * 32, 2, b"\0" * 32, b"\0" * 32, b"\0" * 32, Txs.empty(), small, tc)
    prop = Proposal(blk, b"\4" * 64)
    return [Timeout(6, qc, 1, b"\3" * 64), prop, BlockResponse((prop,) * 8),
            SnapshotChunk(5, 0, 2, 0, (prop,) * 4, b"\6" * 1000, b"\7" * 64),
            Vote(b"\1" * 32, 3, 2, 1, b"\3" * 64), BlockRequest(b"\1" * 32, 1, 64), SnapshotRequest(5, 1),
            SnapshotOffer(5, 100, 1)]


def test_every_message_weighs_at_least_its_frame():
    """node._weight weighed a Timeout of a 65,535-signer QC (a 4.3 MB frame, 6.8 MB decoded) as
    512 bytes, and a BlockResponse of 64 proposals with 16k-signer QCs (66.7 MB) as 33 KB."""
    from consensus import messages, node
    for msg in _big_messages():
        frame = messages.encode(msg)
        assert node._weight(messages.decode(frame)) >= len(frame), type(msg).__name__


def test_one_peers_certificate_frames_are_held_to_the_inbox_byte_bound():
    """4,096 such Timeouts (17.7 GB of frames) were admitted from one peer, against 256 MiB."""
    import collections
    from consensus import messages, node
    frame = messages.encode(_big_messages()[0])
    msg = messages.decode(frame)

    class Stub:  # what NodeRunner._deliver touches
        def __init__(self):
            self.peers_seen, self.queued, self.queued_bytes = {}, {}, {}
            self.core = type("C", (), {"counters": collections.Counter()})()
            self.inbox = type("I", (), {"put": lambda s, item, peer: None})()
    s = Stub()
    for _ in range(node.INBOX_PER_PEER):
        node.NodeRunner._deliver(s, 1, msg)
    assert s.queued[1] * len(frame) <= node.INBOX_BYTES_PER_PEER
    assert s.core.counters["inbox_bytes_full"] > 0


# ---- 3. a parked proposal holds its own transactions, not the frame it came in ----------------
def _held(a) -> int:
    """The bytes of the buffer that numpy array a keeps alive."""
    while getattr(a, "base", None) is not None:
        a = a.base
    return len(a.obj) if isinstance(a, memoryview) else a.nbytes


def test_a_parked_proposal_does_not_keep_its_frame_alive():
    """A decoded block's transactions are views into its whole frame: a proposal parked from a
    64 MiB BlockResponse kept all of it (MAX_PARKED of them, 64 from one Byzantine leader)."""
    from consensus import messages
    from consensus.messages import BlockResponse
    sim = Simulation(n=4, seed=4, validation="software", txs_per_block=4)
    sim.load(40)
    sim.run(blocks=4)
    ps = sorted(sim.nodes[0].core.proposals.values(), key=lambda p: p.block.height)
    p = next(q for q in ps if q.block.height >= 3 and len(q.block.txs))
    pad = ps[0] if ps[0] is not p else ps[1]
    frame = messages.encode(BlockResponse((p,) + (pad,) * 50))
    got = messages.decode(frame).proposals[0]
    assert _held(got.block.txs.bodies.data) >= len(frame) - 4  # (what decoding gives: views of the frame)
    fresh = next(n for n in sim.nodes if n.index != p.block.proposer)
    key = sim.keys[fresh.index]
    core = Core(sim.cfg[fresh.index], lambda m, k=key: k.sign(m).signature, sim._make_app(sim.genesis))
    core.start()
    core.handle(p.block.proposer, got)
    assert p.block.id in core.parked
    parked = next(q for e in core.waiting.values() for _, q in e if q.block.id == p.block.id)
    txs = parked.block.txs
    for a in (txs.bodies.data, txs.bodies.offsets, txs.sigs):
        assert _held(a) == a.nbytes
    assert txs.digest() == p.block.txs.digest() and parked.block.id == p.block.id
    assert messages.encode(parked) == messages.encode(p)


# ---- 4. validator.key is made durable; a damaged one is reported as damaged ---------------------
def test_validator_key_is_synced_and_a_damaged_one_is_named_so(tmp_path, monkeypatch):
    """validator.key was written and renamed with no fsync: a crash before writeback could leave
    it empty, and every later start was refused as "the store of the validator with key ..."
    (an empty key), telling the operator the data_dir was another validator's."""
    import os
    from types import SimpleNamespace
    from consensus import node
    keys = [bytes([i]) * 32 for i in range(4)]
    cfg = SimpleNamespace(keys=keys, index=1, data_dir=tmp_path)
    synced, real = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd)), real(fd))[1])
    assert node.NodeRunner._claim_data_dir(cfg, "")  # (unclaimed: written once the network is checked)
    node.NodeRunner._write_key(cfg, "")
    monkeypatch.setattr(os, "fsync", real)
    import stat
    assert any(stat.S_ISREG(s.st_mode) for s in synced), "validator.key's data is not synced before the rename"
    assert any(stat.S_ISDIR(s.st_mode) for s in synced), "data_dir is not synced after the rename"
    assert (tmp_path / "validator.key").read_text() == keys[1].hex() + "\n"
    node.NodeRunner._claim_data_dir(cfg, "")  # (its own: starts)
    for damaged in ("", "\0" * 65, keys[1].hex()[:40]):
        (tmp_path / "validator.key").write_text(damaged)
        with pytest.raises(node.StartupError) as exc:
            node.NodeRunner._claim_data_dir(cfg, "")
        line = str(exc.value)
        assert "\n" not in line and "damaged" in line and "validator.key" in line, line
        assert keys[1].hex() in line and "another" not in line and "the store of" not in line, line
    (tmp_path / "validator.key").write_text(keys[2].hex() + "\n")  # another validator's: as before
    with pytest.raises(node.StartupError, match="is the store of the validator with key 0202"):
        node.NodeRunner._claim_data_dir(cfg, "")
