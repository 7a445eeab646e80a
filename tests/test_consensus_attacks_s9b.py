"""Session 9, second round: attacks on the first round's fixes to the consensus core, its store
and the software-only verifier (tests/test_consensus_attacks_s9.py)."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import accel  # noqa: E402
from accel.backends import KernelError  # noqa: E402
from accel.config import ConfigError  # noqa: E402
from consensus import verify  # noqa: E402


# ---- software-only verification: the C path's failures are never a verdict ---------------------

@pytest.mark.parametrize("error", [ConfigError("ACCEL_THREADS must be an integer, not 'abc'"),
                                   KernelError("the C fallback has no av_ed25519_verify"),
                                   RuntimeError("anything else")])
def test_a_broken_c_path_still_gives_software_only_validators_the_zip215_verdicts(monkeypatch, error):
    """Software-only mode sends each signature libsodium refuses to the C fallback's kernel and,
    where it is not built (BackendUnavailable), to the plain-Python model. Every other failure of
    that path raised out of the verify call: an accel configuration that does not load (an
    ACCEL_* variable or an accel.toml in the working directory: a software-only validator's start
    never reads it; ACCEL_THREADS=abc raised ConfigError at the first refused signature), a
    C fallback built from other sources (KernelError). A block carrying one transaction whose
    signature only ZIP-215 accepts was then refused by the software-only validators ("validation
    raised") and taken by the accelerated ones; a mempool's verify_each raised. The verdicts are
    the ZIP-215 ones whatever the C path does, the same as the accelerated backend's."""
    from test_ed25519 import EDGE
    cases = [c for c in EDGE if c[0] != "valid"][:12]
    want = accel.ed25519_verify_batch(np.array([np.frombuffer(c[1], np.uint8) for c in cases]),
                                      [c[2] for c in cases],
                                      np.array([np.frombuffer(c[3], np.uint8) for c in cases]), backend="cpu")
    assert [bool(w) for w in want] == [c[4] for c in cases]  # (the accelerated verdicts: the reference)
    assert any(want) and not all(want)

    def broken(*args, **kwargs):
        raise error
    monkeypatch.setattr(accel, "ed25519_verify_batch", broken)
    v = verify.Verifier("software")
    for (name, pk, msg, sig, verdict), w in zip(cases, want):
        assert v.verify_one(pk, msg, sig) is bool(w), name
    keys = np.array([np.frombuffer(c[1], np.uint8) for c in cases])
    sigs = np.array([np.frombuffer(c[3], np.uint8) for c in cases])
    packed = accel.Packed(*accel.packing.pack_messages([c[2] for c in cases]))
    assert list(v.verify_each(keys, packed, sigs)) == [bool(w) for w in want]
    ok = [i for i, c in enumerate(cases) if c[4]]
    assert v.verify_all(keys[ok], accel.Packed(*accel.packing.pack_messages([cases[i][2] for i in ok])), sigs[ok])


# ---- the store's safety digest and an older release ---------------------------------------------

def test_a_store_an_older_release_wrote_to_since_starts_and_a_row_damaged_on_disk_still_does_not(tmp_path):
    """The first round stored a digest of the safety row beside it (safety_check), written by this
    release in the same transaction. A release from before it, run on such a store (an operator's
    rollback after an upgrade), writes the safety row alone: the digest of the row before stayed,
    and the next start of this release refused the intact store as damaged ("remove the data
    directory": a validator that forgot its votes may vote twice). Any SQL write of the safety
    row now deletes its digest (a trigger, which SQLite runs whichever program writes): such a
    store starts like one written before the digest, with the older release's row, and is given
    a digest at its next save; a row changed on disk (not through SQL) still stops the start."""
    import shutil
    from test_consensus_attacks_s9 import _on_disk, _sql, _start, _stored
    from consensus import messages as m
    from consensus.store import Store, StoreError
    sim, path = _stored(tmp_path)
    core = _start(sim, path)
    voted, qc = core.safety.last_voted_view, core.safety.high_qc
    rolled = tmp_path / "rolled.db"
    shutil.copy(path, rolled)
    # what the previous release's Store.save_safety ran (its own transaction, no digest)
    _sql(rolled, "INSERT OR REPLACE INTO safety VALUES (1, ?, ?)", voted + 3, m.encode_qc(qc))
    again = _start(sim, rolled)
    assert again.safety.last_voted_view == voted + 3 and again.safety.high_qc == qc
    store = Store(rolled)
    store.save_safety(store.safety())  # the next save writes the digest again
    assert store.db.execute("SELECT COUNT(*) FROM safety_check").fetchone()[0] == 1
    store.close()
    assert _start(sim, rolled).safety.last_voted_view == voted + 3
    _on_disk(rolled, "UPDATE safety SET last_voted_view = ?", voted + 2)
    with pytest.raises(StoreError, match="does not match its digest"):
        _start(sim, rolled)


# ---- a relayer's refusal never drops the proposer's block parked from it ------------------------

def _behind(seed=11, blocks=5):
    """A simulation run some blocks, and a fresh core of validator 3 (at the genesis: behind)."""
    from consensus.core import Core
    from consensus.sim import Simulation
    sim = Simulation(n=4, seed=seed, txs_per_block=3)
    sim.load(40)
    sim.run(blocks=blocks)
    key = sim.keys[3]
    fresh = Core(sim.cfg[3], lambda msg: key.sign(msg).signature, sim._make_app(sim.genesis))
    fresh.start()
    return sim, fresh


def _failing_block(core, view: int):
    """A block of `view` on the genesis, with a well-formed TC of the view before and no valid
    signature: it passes every check on its face and fails validation (anyone can make one)."""
    from consensus.messages import QC, TC, Block, Proposal, Txs
    g = core.genesis
    gqc = QC(g.id, 0, 0)
    empty = Txs.empty()
    tc = TC(view - 1, (0, 1, 2), (0, 0, 0), bytes(64 * 3), gqc)
    b = Block(view, 1, g.id, core.cfg.leader(view), core.app.tx_root(empty), g.state_root, empty.digest(), empty,
              gqc, tc)
    return Proposal(b, bytes(64))


def test_a_relayers_failing_block_does_not_drop_the_leaders_block_it_relayed_first():
    """Core.refused: once a block a sender sent for a view fails validation, its other blocks of
    that view are refused unchecked. A parked proposal is resumed under the sender it was parked
    from, and the proposer's own copy of a parked block only re-asks for the parent (one entry an
    id). So a Byzantine validator M that relayed an honest leader's block B first (to a validator
    behind, which parks it), then sent any block of B's view that fails validation (a TC of the
    view before and no valid signature: no key needed), had B dropped unchecked when its parent
    came: the leader's block lost at that validator, its vote with it. A parked proposal's
    certificates, signature and transactions were checked when it was parked; resuming it is no
    frame of its sender's, so the refusal no longer applies to it."""
    from consensus.messages import BlockRequest, BlockResponse
    sim, x = _behind()
    src = sim.nodes[0].core
    tip = max(src.proposals.values(), key=lambda p: p.block.height)
    b = tip.block
    leader = b.proposer
    m = next(i for i in range(4) if i not in (leader, 3))
    honest = next(i for i in range(4) if i not in (leader, 3, m))
    x.handle(m, tip)  # relayed first: parked, its parent asked of m
    assert b.id in x.parked
    x.handle(leader, tip)  # the leader's own copy: the same entry
    bad = _failing_block(x, b.view)
    out = x.handle(m, bad)
    assert any(getattr(a, "reason", "") for a in out) and x.refused.get(m) == b.view
    # the parent's chain from an honest validator
    resp = [a.msg for a in sim.nodes[honest].core.handle(3, BlockRequest(b.parent, 1, 64))]
    assert resp and isinstance(resp[0], BlockResponse)
    x.handle(honest, resp[0])
    assert b.parent in x.blocks
    assert b.id in x.blocks, x.counters


def test_a_damaged_high_qc_in_a_store_without_a_digest_stops_the_start(tmp_path):
    """A store written before the safety row's digest (the previous release's: taken as it is)
    whose high QC was damaged on disk started silently; every timeout and proposal of that
    validator then carried a QC that verifies nowhere, and its peers took it for a Byzantine one
    (Core._faulty: not listened to for the view). The stored high QC is verified at the start
    (its 2f+1 signatures): one line (InvariantViolation) instead."""
    import shutil
    from test_consensus_attacks_s9 import _on_disk, _start, _stored
    from consensus import messages as m
    from consensus.core import InvariantViolation
    sim, path = _stored(tmp_path)
    core = _start(sim, path)
    assert core.safety.high_qc.view > 0
    legacy = tmp_path / "legacy.db"
    shutil.copy(path, legacy)
    _on_disk(legacy, "DROP TABLE safety_check")
    assert _start(sim, legacy).safety == core.safety  # intact: starts as before
    damaged = bytearray(m.encode_qc(core.safety.high_qc))
    damaged[-1] ^= 1  # a signature's last byte
    _on_disk(legacy, "UPDATE safety SET high_qc = ?", bytes(damaged))
    with pytest.raises(InvariantViolation, match="high QC .* does not verify") as exc:
        _start(sim, legacy)
    assert "\n" not in str(exc.value)


# ---- failing blocks for a new view each frame ---------------------------------------------------

def test_failing_blocks_for_a_new_view_each_cost_their_signatures_once_a_view():
    """Core.refused refuses unchecked a sender's other blocks of a view one of its blocks failed
    validation in, and _faulty mutes a sender whose parked proposal's certificates fail; but a
    block whose parent is held and whose certificates or signature fail (checked inside the
    application's validation) only set refused for that block's view. A sender's frame of a
    block on the genesis with a made-up TC of the view before (no key needed: any proposer
    index, any view past the committed one) and another view each frame was validated in full
    every frame: the TC's 2f+1 signatures and the proposer's, each time. A block that does not
    validate is one no honest validator sends (the leader validated its own, a responder serves
    blocks it validated), as _faulty's docstring said; its sender is now not listened to for the
    rest of the view like one whose certificates fail when parked."""
    from test_consensus_attacks_s9 import _counting
    sim, x = _behind(blocks=2)
    seen = _counting(x)
    m = 2
    for view in range(3, 43):
        out = x.handle(m, _failing_block(x, view))
        assert not any(type(a).__name__ in ("Send", "Broadcast") for a in out)
    assert seen[0] <= 2 * (x.cfg.quorum + 1), seen[0]  # one block's signatures, not 40 blocks'
    assert not x.blocks.keys() - {x.genesis.id}


# ---- an honest server of a block it never verified ----------------------------------------------

def test_a_response_holding_a_forged_certificate_mutes_only_its_senders_responses():
    """The first round took a sender whose proposal does not verify or validate for a Byzantine
    one (Core._faulty), responses included ("a responder serves blocks it validated"). Not so: a
    state-synced validator holds its snapshot's block and the proof's blocks as its snapshot
    server sent them (statesync.commit_proof checks their proposers' signatures and one QC; a
    block id covers neither its QC nor its TC), so a Byzantine snapshot server's forged QC in
    one of them is served by an honest validator to everyone catching up from it; each muted
    that honest validator's proposals and timeouts too for its view (a leader's block ignored,
    its timeouts missing from a TC). A failure inside a block response now mutes only that
    sender's responses for the view (the cost bound of the first round stays: once a view)."""
    from consensus.messages import BlockResponse, Timeout, timeout_bytes
    sim, x = _behind(blocks=4)
    h = 2
    src = sim.nodes[h].core
    chain = sorted((p for p in src.proposals.values() if p.block.height >= 1), key=lambda p: p.block.height)[:4]
    assert [p.block.height for p in chain] == [1, 2, 3, 4]
    second = chain[1].block
    forged = replace(chain[1], block=replace(second, qc=replace(second.qc, sigs=bytes(len(second.qc.sigs)))))
    assert forged.block.id == second.id  # (the id does not cover the QC)
    x.handle(h, BlockResponse((chain[0], forged) + tuple(chain[2:])))
    assert second.id not in x.blocks and x.counters["faulty_sender"] == 1
    muted = x.counters["muted"]
    # its own timeout of this validator's view still counts
    t = Timeout(x.view, x.safety.high_qc, h, sim.keys[h].sign(timeout_bytes(x.view, x.safety.high_qc.view,
                                                                            sim.network)).signature)
    x.handle(h, t)
    assert h in x.timeouts.get(x.view, {}), x.counters
    assert x.counters["muted"] == muted
    # its responses stay muted for the view
    x.handle(h, BlockResponse((forged,)))
    assert x.counters["muted"] == muted + 1


from dataclasses import replace  # noqa: E402


def test_software_only_and_accelerated_verdicts_agree_on_public_vectors_with_the_c_path_or_without(monkeypatch):
    """Every public vector (Wycheproof, ed25519-speccheck, ../shared/testdata) and test_ed25519's
    edge cases: the software-only verifier (libsodium, then the C fallback's kernel), the same
    with the C path failing (the plain-Python model), and the C fallback itself give one verdict."""
    import json
    from accel.ed25519_ref import zip215_verdict
    from test_ed25519 import EDGE
    cases = [(c[1], c[2], c[3]) for c in EDGE]
    data = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "ed25519"
    if data.is_dir():
        wycheproof = json.loads((data / "wycheproof_ed25519_test.json").read_text())
        for group in wycheproof["testGroups"]:
            pk = bytes.fromhex(group["publicKey"]["pk"])
            cases += [(pk, bytes.fromhex(t["msg"]), bytes.fromhex(t["sig"])) for t in group["tests"]
                      if len(t["sig"]) == 128 and len(pk) == 32]
        cases += [(bytes.fromhex(c["pub_key"]), bytes.fromhex(c["message"]), bytes.fromhex(c["signature"]))
                  for c in json.loads((data / "speccheck_cases.json").read_text())]
    software, c_fallback = verify.Verifier("software"), verify.Verifier("accel", backend="cpu")
    want = [c_fallback.verify_one(*c) for c in cases]
    assert want == [zip215_verdict(*c) for c in cases]
    assert [software.verify_one(*c) for c in cases] == want
    monkeypatch.setattr(accel, "ed25519_verify_batch", lambda *a, **k: 1 / 0)
    assert [software.verify_one(*c) for c in cases] == want
