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
