"""A quorum is n - f at every n (review s15: 2f + 1 with f = (n - 1) // 3 let 3 of 5 validators
certify a block, so two QCs of one view shared a single validator, and one equivocating leader,
within the f = 1 the network tolerates, could certify two blocks of one view)."""
from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from consensus.core import Config, InvalidCertificate, qc_certs
from consensus.core import vote_bytes
from consensus.messages import QC

SEEDS = [bytes([i + 1]) * 32 for i in range(13)]


@pytest.mark.parametrize("n", range(4, 41))
def test_two_quorums_share_an_honest_validator(n):
    cfg = Config(me=0, keys=tuple(bytes([i]) * 32 for i in range(n)))
    assert 2 * cfg.quorum - n >= cfg.f + 1  # the validators any two quorums share
    assert cfg.quorum <= n - cfg.f  # and f crashed leave one
    if n % 3 == 1:
        assert cfg.quorum == 2 * cfg.f + 1


def test_three_of_five_votes_are_no_qc():
    keys = [SigningKey(s) for s in SEEDS[:5]]
    cfg = Config(me=0, keys=tuple(bytes(k.verify_key) for k in keys))
    genesis, block = bytes(32), bytes([17]) * 32

    def qc(voters):
        msg = vote_bytes(block, 3, cfg.network)
        return QC(block, 3, 2, tuple(voters), b"".join(keys[v].sign(msg).signature for v in voters))
    with pytest.raises(InvalidCertificate, match="4 needed"):
        qc_certs(cfg, genesis, qc([0, 1, 2]))
    assert len(qc_certs(cfg, genesis, qc([0, 1, 2, 3]))[0]) == 4


def test_a_store_certified_under_the_old_quorum_says_how_to_start_again(tmp_path, monkeypatch):
    """An n = 5 store holds QCs of 2f + 1 = 3 votes: after c472d04 it cannot restart, and the one
    line said only that a certificate was malformed (review s15, second round)."""
    from consensus.core import InvariantViolation
    from consensus.sim import Link, Simulation
    quorum = Config.quorum
    monkeypatch.setattr(Config, "quorum", property(lambda self: 2 * self.f + 1))  # the rule before
    sim = Simulation(n=5, seed=1, link=Link((1.0, 5.0)), validation="software")
    sim.durable("v0", tmp_path / "v0.db")
    sim.load(10)
    sim.run(blocks=6, max_ms=30_000)
    node = sim._node("v0")
    assert len(node.core.safety.high_qc.voters) == 3
    monkeypatch.setattr(Config, "quorum", quorum)
    with pytest.raises(InvariantViolation, match="3 distinct signers, 4 needed .*empty data_dir"):
        sim._restart(node)
