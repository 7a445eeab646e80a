"""State sync (s9): a joining validator stores its snapshot server's proof blocks (the snapshot's
block and the committed ones after it) and later serves them; a block id covers neither its QC
nor its TC, so commit_proof now checks every certificate the proof carries (each block's QC over
the block before it, its TC's timeouts and high QC, with the network id) in the one verifier
batch that checks the proposers' signatures. Before, a Byzantine server's forged QC or TC in a
proof block was stored and then served to peers, which took the honest joiner for a Byzantine
validator (see test_consensus_attacks_s9b)."""
from dataclasses import replace

from consensus import statesync
from consensus.core import Config
from consensus.messages import QC, TC, SnapshotChunk, timeout_bytes, vote_bytes
from tests.test_sync_attacks import _net, _sync, _wire


def _with_block(chunk: SnapshotChunk, i: int, **changes) -> SnapshotChunk:
    """The chunk with proof[i]'s block changed (its id, and so its proposer's signature, unchanged
    where only the QC or TC changes)."""
    p = chunk.proof[i]
    proof = chunk.proof[:i] + (replace(p, block=replace(p.block, **changes)),) + chunk.proof[i + 1:]
    return replace(chunk, proof=proof)


def _tc(sim, cfg: Config, view: int, high_qc: QC, voters=(0, 1, 2), high_views=None) -> TC:
    """A TC of `view` signed by `voters` (the simulation's validator keys), its high QC high_qc,
    each timeout naming high_views (default: high_qc's view)."""
    high_views = high_views or (high_qc.view,) * len(voters)
    sigs = b"".join(sim.keys[v].sign(timeout_bytes(view, h, cfg.network)).signature
                    for v, h in zip(voters, high_views))
    return TC(view, tuple(voters), high_views, sigs, high_qc)


def _flip(sigs: bytes, at: int = 5) -> bytes:
    return sigs[:at] + bytes([sigs[at] ^ 1]) + sigs[at + 1:]


def _refused(sim, chunk) -> None:
    sync = _sync(sim)
    sync.handle(0, _wire(chunk))
    assert sync.done is None and sync.counters == {"proof_bad": 1}, sync.counters
    assert statesync.commit_proof(sim.cfg[3], sync.app.verifier, _wire(chunk).proof) != ""


def _taken(sim, chunk) -> None:
    sync = _sync(sim)
    assert sync.handle(0, _wire(chunk)) == [] and sync.done is not None, sync.counters
    assert sync.done.proposal.block.height == chunk.height


class _Counting:
    """A verifier that counts its calls and the signatures it is given."""

    def __init__(self, inner):
        self.inner, self.calls, self.sigs = inner, 0, 0

    def __getattr__(self, name):  # (the app's hashing and block checks: the inner verifier's)
        return getattr(self.inner, name)

    def verify_lists(self, keys, msgs, sigs):
        self.calls += 1
        self.sigs += len(sigs)
        return self.inner.verify_lists(keys, msgs, sigs)


def test_a_forged_qc_in_a_stored_proof_block_is_refused(tmp_path):
    """The QC over the snapshot block's parent (in proof[0], stored) and the one over the
    snapshot's block (in proof[1]): their signatures changed, their signers' order, signed for
    another network, or (stored) relabelled: each refused; before, only the committing QC
    (proof[k + 2]) was checked and the joiner took and stored proof[0]'s."""
    sim = _net(tmp_path)
    chunk = statesync.serve(sim._node("v1").store, 0, 0)
    _taken(sim, chunk)
    for i in (0, 1):
        qc = chunk.proof[i].block.qc
        assert qc.view > 0
        for name, forged in {"sig": replace(qc, sigs=_flip(qc.sigs)),
                             "voters": replace(qc, voters=qc.voters[1:] + qc.voters[:1]),
                             "network": replace(qc, sigs=b"".join(
                                 sim.keys[v].sign(vote_bytes(qc.block_id, qc.view, b"\x00" * 32)).signature
                                 for v in qc.voters)),
                             "height": replace(qc, height=qc.height + 1)}.items():
            if name == "height" and i > statesync._direct_commit(chunk.proof):
                continue  # (an unsigned label, in a block not stored: harmless, test_sync_attacks)
            _refused(sim, _with_block(chunk, i, qc=forged))


def test_a_forged_tc_in_a_stored_proof_block_is_refused_and_a_real_one_taken(tmp_path):
    """A TC of the view before proof[1]'s: signed by 2f + 1 validators, it is taken (a block may
    carry one); a timeout's signature changed, a high QC forged, a signer repeated, a TC of another
    network or of another view: refused. Before, any TC there passed and was stored."""
    sim = _net(tmp_path)
    cfg = sim.cfg[3]
    chunk = statesync.serve(sim._node("v1").store, 0, 0)
    b = chunk.proof[1].block
    good = _tc(sim, cfg, b.view - 1, b.qc)
    _taken(sim, _with_block(chunk, 1, tc=good))
    bad_high = replace(b.qc, sigs=_flip(b.qc.sigs))
    other_net = replace(cfg, network=bytes(32))
    forgeries = {
        "timeout_sig": replace(good, sigs=_flip(good.sigs, 64 + 7)),
        "high_qc": replace(good, high_qc=bad_high),
        "signer_repeated": _tc(sim, cfg, b.view - 1, b.qc, voters=(0, 0, 1)),  # (every signature verifies)
        "two_signers": _tc(sim, cfg, b.view - 1, b.qc, voters=(0, 1)),
        "other_network": _tc(sim, other_net, b.view - 1, b.qc),
        "high_view_not_its_qc": _tc(sim, cfg, b.view - 1, b.qc, high_views=(b.qc.view, b.qc.view + 1, b.qc.view)),
        "other_view": _tc(sim, cfg, b.view - 2, b.qc),
    }
    for name, tc in forgeries.items():
        _refused(sim, _with_block(chunk, 1, tc=tc))
    for i in (0, 2):  # the snapshot's own block (stored), and the certified one after
        pb = chunk.proof[i].block
        _refused(sim, _with_block(chunk, i, tc=replace(_tc(sim, cfg, pb.view - 1, pb.qc), sigs=bytes(192))))


def test_an_honest_proof_costs_one_verifier_batch(tmp_path):
    """The whole proof (proposers' signatures and every certificate) is one verify_lists call,
    each distinct signature once; a proof with blocks after the committing QC is refused before
    any signature is checked (nothing after it would be checked or stored)."""
    sim = _net(tmp_path)
    chunk = statesync.serve(sim._node("v1").store, 0, 0)
    k = statesync._direct_commit(chunk.proof)
    assert len(chunk.proof) == k + 3
    sync = _sync(sim)
    counting = _Counting(sync.app.verifier)
    sync.app.verifier = counting
    sync.handle(0, _wire(chunk))
    assert sync.done is not None
    qcs = [p.block.qc for p in chunk.proof] + [p.block.tc.high_qc for p in chunk.proof if p.block.tc is not None]
    votes = {(qc.block_id, qc.view, v) for qc in qcs for v in qc.voters}
    timeouts = [(p.block.tc.view, v) for p in chunk.proof if p.block.tc is not None for v in p.block.tc.voters]
    assert counting.calls == 1 and counting.sigs == len(chunk.proof) + len(votes) + len(timeouts)
    assert counting.sigs <= statesync.MAX_RANGE * (1 + 3 * sim.cfg[3].n)
    store = sim._node("v1").store
    extra = store.committed_range(chunk.proof[-1].block.height + 1, 1)[0]
    longer = replace(chunk, proof=chunk.proof + (extra,))
    sync = _sync(sim)
    counting = _Counting(sync.app.verifier)
    sync.app.verifier = counting
    sync.handle(0, _wire(longer))
    assert sync.done is None and sync.counters == {"proof_bad": 1} and counting.calls == 0


def test_a_synced_store_serves_only_verified_certificates(tmp_path):
    """After a sync, every certificate of the proposals the joiner stored verifies (the core's
    own checks): what it serves can never get it taken for a Byzantine validator."""
    sim = _net(tmp_path)
    chunk = statesync.serve(sim._node("v1").store, 0, 0)
    sync = _sync(sim)
    sync.handle(0, _wire(chunk))
    assert sync.done is not None
    cfg = sim.cfg[3]
    from consensus.core import genesis_block, qc_certs, tc_certs
    gid = genesis_block(sync.app.genesis.root).id
    for p in (sync.done.proposal,) + sync.done.after:
        keys, msgs, sigs = qc_certs(cfg, gid, p.block.qc)
        if p.block.tc is not None:
            tk, tm, ts = tc_certs(cfg, gid, p.block.tc)
            keys, msgs, sigs = keys + tk, msgs + tm, sigs + ts
        assert keys and sync.app.verifier.verify_lists(keys, msgs, sigs)
