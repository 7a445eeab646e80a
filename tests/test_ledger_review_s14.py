"""The clearing ledger, fourteenth session's review: a block of marks made every validator allocate
about 3,000 times the block's bytes and check far more signatures than MAX_BLOCK_TXS suggests,
before any rule looked at a mark (fixed).

A mark's body is signed by each key it lists, and validate() built the whole signature batch
(each body copied once per listed key, gathered through an int64 index per copied byte) before
the mark's rule ran. One mark listing 255 keys (the leader's own, every signature valid, no
oracle among them) and 4,000 vols: a 73 KB block, 230 MB allocated and 1,020 checks; scaled to a
64 MiB proposal, hundreds of GB. The mempool refused such marks already; the rule counted only
the oracles among the keys and so took a quorum mark listing strangers too.

Now a mark lists only oracles, at least a quorum, and vols only for options on its underlying
(Clearing.mark_form_refusal, a rule of the network: oracles and series are fixed at genesis),
checked by validate on the parent's state before any signature and by the mempool on admission,
and the signature batch joins slices instead of indexing every byte."""
import builtins
import random
import re
import tracemalloc

import numpy as np
import pytest
from nacl.signing import SigningKey

from accel.packing import Packed, pack_messages
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing import Rejected
from consensus.apps.clearing_app import ClearingApp
from consensus.verify import Verifier
from tests.test_clearing_columns import funded_genesis
from tests.test_clearing_properties import K, O, ORACLES, USERS, as_txs, block_of, signed
from tests.test_ledger_proposal_s6 import VOLS

pytestmark = pytest.mark.usefixtures("quiet_logs")

STRANGERS = [SigningKey(bytes([200 + i]) * 32) for i in range(3)]
S = [bytes(s.verify_key) for s in STRANGERS]
SEQ, TS = 5, 1_800_000_500


def counting(app: ClearingApp) -> list:
    """The keys of every signature batch app's verifier is asked to check."""
    calls, verify_all = [], app.verifier.verify_all

    def spy(keys, messages, sigs, certs):
        calls.append(len(keys))
        return verify_all(keys, messages, sigs, certs)
    app.verifier.verify_all = spy
    return calls


def validate(app: ClearingApp, items):
    block = block_of(as_txs(items), app.genesis.root, b"\0" * 32, app)
    return app.validate(app.genesis, block, ((), (), ()))


@pytest.mark.parametrize("vols, signers, why", [
    (VOLS, O[:2] + S, "key(s) that are no oracle's"),
    (VOLS, S, "mark signed by 0 oracle(s), 2 needed"),
    ({**VOLS, 3: 0.7}, O[:2], "vol for series 3, not an option on BTC"),  # series 3: a future
    ({**VOLS, 10_000: 0.7}, O[:2], "vol for series 10000, not an option on BTC"),
], ids=["quorum and strangers", "strangers only", "a future's vol", "an unlisted series' vol"])
def test_a_misformed_mark_is_refused_by_the_mempool_and_validate_before_any_signature(vols, signers, why):
    """Every listed key signs validly: before, the first shape applied (the rule counted only the
    oracles), and each cost its signature checks before the rule ran. Clearing.mark, which also
    replays blocks committed before this rule, still counts only the oracles among the keys (a
    store holding a quorum mark that lists strangers restarts); it refuses the other shapes."""
    keys = {bytes(k.verify_key): k for k in ORACLES + STRANGERS}
    item = signed(ctx.mark("BTC", 60_100.0, SEQ, TS, vols, signers), [keys[k] for k in signers])
    c = funded_genesis()
    if why.endswith("no oracle's"):
        c.mark("BTC", 60_100.0, vols, SEQ, TS, signers)
        assert c.marks["BTC"].sequence == SEQ
    else:
        with pytest.raises(Rejected, match=re.escape(why)):
            c.mark("BTC", 60_100.0, vols, SEQ, TS, signers)
    app = ClearingApp(Verifier("accel", "cpu"), funded_genesis())
    calls = counting(app)
    verdict = validate(app, [signed(ctx.deposit(K[0], 2, "USD", 1), [USERS[0]]), item])
    assert not verdict.ok and "transaction 1" in verdict.reason and why in verdict.reason
    assert calls == []
    assert why in app.submit_many([item])[0]
    assert calls == []


def test_an_oracle_listed_twice_counts_once():
    """Clearing.mark is called directly too (genesis builders, tools; the decoder refuses a repeated
    key): the quorum is of distinct oracles."""
    c = funded_genesis()
    with pytest.raises(Rejected, match=re.escape("mark signed by 1 oracle(s), 2 needed")):
        c.mark("BTC", 60_100.0, VOLS, SEQ, TS, [O[0], O[0]])


def test_a_well_formed_mark_still_applies():
    """The same mark signed by a quorum of oracles and nothing else, with the vols the genesis
    series need: valid, and its signatures checked in the block's one batch."""
    item = signed(ctx.mark("BTC", 60_100.0, SEQ, TS, VOLS, O[:2]), ORACLES[:2])
    c = funded_genesis()
    c.mark("BTC", 60_100.0, VOLS, SEQ, TS, O[:2])
    app = ClearingApp(Verifier("accel", "cpu"), funded_genesis(), sig_cache=False)
    calls = counting(app)
    assert app.submit_many([item]) == [""]
    txs, state = app.propose(app.genesis, set())
    assert len(txs) == 1
    verdict = app.validate(app.genesis, block_of(txs, app.genesis.root, state.root, app), ((), (), ()))
    assert verdict.ok and verdict.state.root == state.root, verdict.reason
    assert calls == [2]


def test_a_block_of_a_mark_listing_255_keys_costs_a_small_multiple_of_its_bytes():
    """As found: 4,000 vols, 255 listed keys (none an oracle): the 73 KB block allocated 230 MB
    (3,168 times its bytes) in validate. Now it is refused before its batch is built."""
    keys = [bytes(SigningKey(i.to_bytes(2, "big") * 16).verify_key) for i in range(255)]
    body = ctx.mark("BTC", 60_100.0, SEQ, TS, {10_000 + i: 0.7 for i in range(4_000)}, keys)
    app = ClearingApp(Verifier("accel", "cpu"), funded_genesis())
    size = len(body) + 64 * len(keys)
    tracemalloc.start()
    try:
        verdict = validate(app, [(body, [bytes(64)] * len(keys))])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not verdict.ok and "no oracle's" not in verdict.reason and "0 oracle(s)" in verdict.reason
    assert peak < 16 * size, f"validate allocated {peak / size:.0f} times the block's bytes"


def reference_batch(bodies: list[bytes], signers: list[list[bytes]], skip):
    keys, messages, rows, row = [], [], [], 0
    for i, (body, ks) in enumerate(zip(bodies, signers)):
        for k in ks:
            if skip is None or not skip[i]:
                keys.append(k)
                messages.append(body)
                rows.append(row)
            row += 1
    return keys, messages, rows


@pytest.mark.parametrize("seed", range(6))
def test_the_signature_batch_pairs_each_signature_with_its_key_and_body(seed):
    """Random bodies (empty ones too) with 0 to 4 signers each, some skipped (found in the
    mempool), against a plain loop: the same keys, messages and rows, in order."""
    rnd = random.Random(seed)
    n = rnd.choice((0, 1, 7, 200))
    bodies = [rnd.randbytes(rnd.choice((0, 1, 40, 300))) for _ in range(n)]
    signers = [[rnd.randbytes(32) for _ in range(rnd.randrange(5))] for _ in range(n)]
    txs = [ctx.Tx(ctx.DEPOSIT, (), tuple(ks), b) for b, ks in zip(bodies, signers)]
    skip = np.array([rnd.random() < 0.4 for _ in range(n)], bool) if seed % 2 else None
    packed = Packed(*pack_messages(bodies)) if n else Packed(np.zeros(0, np.uint8), np.zeros(1, np.uint64))
    keys, messages, rows = ctx.signature_batch(packed, txs, np.array([len(k) for k in signers], np.int64), skip)
    want_keys, want_messages, want_rows = reference_batch(bodies, signers, skip)
    assert [bytes(k) for k in keys] == want_keys
    assert [messages.item(i) for i in range(len(messages))] == want_messages
    assert rows.tolist() == want_rows
    assert messages.offsets.dtype == np.uint64 and int(messages.offsets[-1]) == len(messages.data)


# ---- inputs whose len() lies ----------------------------------------------------------------------


class Claims(bytes):
    """Bytes whose len() says `claimed` (a subclass may; isinstance(x, bytes) holds)."""
    claimed = 0

    def __len__(self):
        return self.claimed


def claiming(data: bytes, n: int) -> Claims:
    out = Claims(data)
    out.claimed = n
    return out


def test_clearing_admits_a_body_by_its_own_bytes_not_its_len():
    """As found: a 64-byte body whose len() said 61 (a deposit's size) decoded, its signature over
    the 64 bytes verified, and it was admitted: the proposer's block was refused by its own
    validate, and nothing took it out of the mempool. A 65-byte signature saying 64 raised."""
    app = ClearingApp(Verifier("accel", "cpu"), funded_genesis())
    body = ctx.deposit(K[0], app.head.accounts[K[0]].nonce, "USD", 1)
    long = body + bytes(3)
    reasons = app.submit_many([(claiming(long, len(body)), [USERS[0].sign(long).signature]),
                               (body, [claiming(USERS[0].sign(body).signature + b"\0", 64)])])
    assert reasons[0].startswith("malformed: operation 2 takes 61 bytes, not 64")
    assert reasons[1].startswith("malformed: 1 signer(s) need as many 64-byte signatures")
    assert len(app.mempool) == 0
    honest = signed(body, [USERS[0]])
    assert app.submit_many([(claiming(honest[0], 3), [claiming(honest[1][0], 9)])]) == [""]
    held = next(iter(app.mempool.values()))
    assert type(held.body) is bytes and held.body == body and all(type(s) is bytes for s in held.signatures)
    txs, state = app.propose(app.genesis, set())
    assert app.validate(app.genesis, block_of(txs, bytes(32), state.root, app), ((), (), ())).ok


def test_kv_admits_a_body_by_its_own_bytes_not_its_len():
    """The same in the kv app: a 90-byte body saying 85 (a transfer's size) was admitted and every
    proposal carried it, refused by every validator (the chain stopped); a 65-byte signature
    saying 64 raised out of submit_many."""
    from consensus.apps.kv import KvApp, transfer_body
    sk = USERS[0]
    k = bytes(sk.verify_key)
    body = transfer_body(k, 0, bytes(32), 1)
    app = KvApp(Verifier("accel", "cpu"), {k: 100})
    long = body + bytes(5)
    reasons = app.submit_many([(claiming(long, len(body)), [sk.sign(long).signature]),
                               (body, [claiming(sk.sign(body).signature + b"\0", 64)])])
    assert "a transfer is 85 bytes, not 90" in reasons[0]
    assert reasons[1] == "a transaction has exactly one signature of 64 bytes"
    assert app.mempool == {}


# ---- the kv app: a block's cost in its size ---------------------------------------------------------


def test_kv_sorts_a_senders_keys_once_a_block(monkeypatch):
    """As found: each set copied and sorted its sender's whole key list, so one sender's n sets
    took time in n^2 (2,000: 0.17 s, 8,000: 3.9 s; a 64 MiB block of them, hours). Counted, not
    timed: one sort per sender a block, and an account the block does not touch keeps its data's
    digest (not hashed again for the state root)."""
    from consensus.apps import kv
    sk, other = USERS[0], USERS[1]
    k, k2 = bytes(sk.verify_key), bytes(other.verify_key)
    app = kv.KvApp(Verifier("accel", "cpu"))
    first = kv.pack_txs([kv.set_body(k2, 0, b"x", b"1")], [bytes(64)])
    s1 = app.execute(app.genesis, first.bodies)
    sorts = []

    def counted(items):
        sorts.append(1)
        return builtins.sorted(items)
    monkeypatch.setattr(kv, "sorted", counted, raising=False)
    n = 500
    txs = kv.pack_txs([kv.set_body(k, i, i.to_bytes(2, "big"), b"v") for i in range(n)], [bytes(64)] * n)
    s2 = app.execute(s1, txs.bodies)
    assert len(s2.accounts[k].data) == n and [key for key, _ in s2.accounts[k].data] == sorted(
        i.to_bytes(2, "big") for i in range(n))
    assert len(sorts) == 1 + 1  # the sender's keys, and the accounts for the state root
    assert s2.accounts[k2] is s1.accounts[k2] and "data_digest" in vars(s2.accounts[k2])


# ---- the mempool's index ------------------------------------------------------------------------------


def test_a_mempool_assigned_whole_is_checked_whole_at_the_next_commit():
    """app.mempool = mapping (tests, tools) takes entries unchecked; the next commit, even of the
    block following the head, checks them all (before: only the block's accounts, so a stale
    entry of an idle account stayed for ever)."""
    import hashlib
    from consensus.apps import clearing_app
    app = ClearingApp(Verifier("accel", "cpu"), funded_genesis(), max_txs=8)
    txs0, s0 = app.propose(app.genesis, set())
    b0 = block_of(txs0, bytes(32), s0.root, app)
    app.committed(b0, s0)
    body, sigs = signed(ctx.deposit(K[1], app.head.accounts[K[1]].nonce - 1, "USD", 1), [USERS[1]])
    stale = hashlib.sha256(body).digest()
    app.mempool = {**app.mempool, stale: clearing_app.Pending(body, sigs, ctx.decode(body), b"".join(sigs))}
    assert app.submit_many([signed(ctx.deposit(K[0], app.head.accounts[K[0]].nonce, "USD", 1), [USERS[0]])]) == [""]
    txs1, s1 = app.propose(s0, {stale})
    app.committed(block_of(txs1, b0.id, s1.root, app), s1)
    assert stale not in app.mempool


def test_every_way_into_the_mempool_keeps_its_index():
    """|= (dict's own merge skipped __setitem__: the entry was in no index, never checked for
    staleness, and a later del raised KeyError); setdefault with no entry (None) is refused
    before anything is written."""
    import hashlib
    from consensus.apps import clearing_app
    from consensus.apps.clearing_app import Mempool
    body, sigs = signed(ctx.deposit(K[0], 5, "USD", 1), [USERS[0]])
    d = hashlib.sha256(body).digest()
    pool = Mempool()
    pool |= {d: clearing_app.Pending(body, sigs, ctx.decode(body), b"".join(sigs))}
    assert pool.holders == {(K[0], 5): {d}} and pool.count == {K[0]: 1} and pool.nonces == {(K[0], 5): 1}
    other = hashlib.sha256(b"other").digest()
    with pytest.raises(TypeError):
        pool.setdefault(other)
    assert other not in pool and len(pool) == 1
    del pool[d]
    assert pool.holders == {} and pool.count == {} and pool.nonces == {}


# ---- a block's cost in the listed series ------------------------------------------------------------


def test_a_block_touching_no_series_does_not_encode_the_marks_again(monkeypatch):
    """As found: each block re-encoded and hashed every mark's leaf (each open series' vol and
    value: 65 KB at 2,000 listed options), copied the series and rebuilt every margin group's
    instruments, so 10 deposits cost 2.7 times as much at 20 times the series. Counted: after a
    first root, blocks of deposits and a trade encode no mark leaf again and build a margin group's
    instruments once; the root is the one the leaves give (a fresh validator computes it whole)."""
    from accel.merkle import hashlib_root, inner_hash, merkle_root
    from consensus.apps import clearing
    sha = Verifier("accel", "cpu").sha256_rows
    c = funded_genesis()
    c.state_root(sha)
    encoded, built = [], []
    leaf, marks = clearing._mark_leaf, clearing.Marks
    monkeypatch.setattr(clearing, "_mark_leaf", lambda *a: encoded.append(a[0]) or leaf(*a))
    monkeypatch.setattr(clearing, "Marks", lambda **kw: built.append(kw["index"]) or marks(**kw))
    for n in range(4):
        c = c.snapshot()
        c.begin_block()
        c.deposit(K[0], c.accounts[K[0]].nonce, "USD", 1)
        c.trade(K[1], c.accounts[K[1]].nonce, K[2], c.accounts[K[2]].nonce, 1, 1, 100 * 10**8)
        c.end_of_block()
        root = c.state_root(sha)
    assert encoded == []
    assert len(built) == 1  # (a margin group's instruments: built at the first block, kept since)
    monkeypatch.undo()
    assert root == inner_hash(merkle_root(c.leaves(), backend="cpu"), hashlib_root(c.globals_leaves()))
