"""A restarted validator passes over the committed part of the built-in clearing load without
signing it again (review s15: each skipped transaction was signed and the signature thrown away,
40-70 us each: hours before a start after months of traffic), and goes on with the same stream."""
from __future__ import annotations

import nacl.signing

from consensus.apps.clearing_load import market_load
from consensus.node import ClearingFeed


class _Cfg:  # what ClearingFeed reads of a NodeConfig
    load_file, load_seed, txs_per_block, crash_after_blocks, chain_id = "", 7, 50, 3, 1


def test_skip_signs_nothing_and_the_stream_goes_on_the_same(monkeypatch):
    whole = market_load(7, 50, 3, 1).take(3_400)
    feed = ClearingFeed(_Cfg())
    signed = []
    real = nacl.signing.SigningKey.sign
    monkeypatch.setattr(nacl.signing.SigningKey, "sign", lambda key, msg: signed.append(msg) or real(key, msg))
    feed.skip(3_000)
    assert signed == []
    assert feed.load.take(400) == whole[3_000:]  # bodies and signatures: marks and the crash included
    assert len(signed) > 400
