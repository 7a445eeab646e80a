"""Mempool admission, the twelfth session's review (failed before its fix): the refusal of marks
without an oracle quorum before their signatures are checked (tests/test_mempool_s11.py) counted
the oracle keys a mark lists, which are public. A mark listing the quorum's keys beside 253 fresh
ones, no signature made by anyone, had all 255 checked before it was refused: 30 such marks in a
request were the 7,650 checks the eleventh session removed. A mark listing a key that is no
oracle's is now refused unchecked (Clearing.mark counts only the oracles, and no oracle service
signs so)."""
from nacl.signing import SigningKey

from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing_app import ClearingApp
from consensus.apps.clearing_load import ORACLES, genesis_market
from tests.test_mempool_s11 import _Counting

PUBLIC = [bytes(k.verify_key) for k in ORACLES]


def _mark(seq: int, keys: list, sigs: list) -> tuple:
    return ctx.mark("BTC", 60_000.0, seq, 1_800_000_000 + seq, {}, keys), sigs


def test_a_mark_listing_the_oracles_public_keys_beside_others_is_refused_unchecked():
    app = ClearingApp(_Counting("accel", "cpu"), genesis_market())
    _Counting.checked = 0
    fresh = [bytes(SigningKey(bytes([j, 1]) * 16).verify_key) for j in range(253)]
    reasons = app.submit_many([_mark(10 + m, PUBLIC[:2] + fresh, [bytes(64)] * 255) for m in range(30)])
    assert all(r.startswith("mark signed by 253 key(s) that are no oracle's") for r in reasons)
    assert _Counting.checked == 0 and len(app.mempool) == 0


def test_a_mark_the_oracles_signed_is_still_admitted():
    app = ClearingApp(_Counting("accel", "cpu"), genesis_market())
    body = ctx.mark("BTC", 60_000.0, 5, 1_800_000_005, {1: 0.6, 2: 0.6, 3: 0.6, 9: 0.6}, PUBLIC)
    assert app.submit_many([(body, [k.sign(body).signature for k in ORACLES])]) == [""]
    forged = ctx.mark("BTC", 60_000.0, 6, 1_800_000_006, {}, PUBLIC[:2])
    assert app.submit_many([(forged, [bytes(64)] * 2)]) == ["a signature does not verify"]
