"""Adversarial review of the clearing app's entry points (submit_many, propose, validate), fresh
attacks beside the existing property and attack suites:

- Python-level type confusion in submit_many's items (bytearray, memoryview, str, None, ints,
  generators, dicts, bytes subclasses, nested and oversized lists);
- transactions whose fields sit at and past every edge (nonces 0 / 2^63 / 2^64 - 1, amounts, sizes,
  prices and series at their limits and past them, unknown assets and series, non-ASCII and
  non-canonical names, NaN / inf / -0.0 / subnormal indices and vols, sequences and timestamps at
  the ends of u64, marks signed by non-oracles, keys nobody can sign for), re-signed by whoever
  the body names so they reach the rules rather than stopping at the signature check, then raw
  byte mutations of those bodies (bit flips, truncation, extension, count fields set to 0 / huge);
- proposal frames mutated on the wire and handed to validate after decoding;
- headers that do not match their transactions (tx root, signature digest, state root, signatures
  swapped, dropped or added), blocks replayed, duplicated transactions within one block;
- thousands of transactions of one account in one block (and one duplicated nonce among them);
- an attacker with several accounts trading against itself, withdrawing after trading, crashing
  the mark in the same block, and self-liquidating in the next;
- a proposer starved by accounts that keep coming back short (see the last test).

Every block is validated by two validators that must agree (accelerated with the mempool's
signature cache, and software-only with none), accepted states keep the ledger's invariants
(tests.test_clearing_properties.check_invariants, Clearing.violations), and nothing may raise."""
import hashlib
import os
import random
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from nacl.signing import SigningKey

from consensus import messages as M
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing import MAX_AMOUNT, MAX_PRICE, MAX_SIZE, Rejected
from consensus.apps.clearing_app import ClearingApp
from consensus.messages import Txs
from consensus.verify import Verifier
from tests.test_clearing_columns import funded_genesis
from tests.test_clearing_properties import (K, O, ORACLES, T0, USD, USERS, as_txs, block_of,
                                            check_invariants, committed_flows, genesis, signed)

EXAMPLES = int(os.environ.get("REVIEW_FUZZ_EXAMPLES", "400"))
SECRET = {bytes(k.verify_key): k for k in USERS + ORACLES}
STRANGER = SigningKey(bytes([250]) * 32)
SECRET[bytes(STRANGER.verify_key)] = STRANGER  # a key that signs but is not registered
U64 = 2**64 - 1


pytestmark = pytest.mark.usefixtures("quiet_logs")


def funded_supply(c) -> dict:
    """Per asset, the genesis state's cash plus funds: the starting supply, from which
    check_invariants then counts each committed block's deposits and withdrawals itself."""
    return {a: sum(x.collateral.get(a, 0) for x in c.accounts.values()) + c.funds[a] for a in c.assets}


OPEN = [(0, 1, 1, 1, 1240), (2, 3, 2, 3, 57), (3, 4, 3, 2, 60_000), (1, 2, 4, 5, 0.006), (4, 0, 5, 20_000, 60_000),
        (2, 1, 6, 4, 3_000), (0, 3, 7, 10, 15)]  # (buyer, seller, series, size, USD) at genesis


def positioned_genesis():
    """funded_genesis with books in every series (options, puts, futures, inverse, ETH), so marks
    margin, liquidate and settle real positions."""
    c = funded_genesis()
    for b, s, sid, n, p in OPEN:
        c.trade(K[b], c.accounts[K[b]].nonce, K[s], c.accounts[K[s]].nonce, sid, n, int(p * USD))
    return c


def apps(make=funded_genesis):
    """A proposer, an accelerated validator (its mempool fed like the proposer's) and a
    software-only validator with an empty mempool, each on its own copy of the same genesis."""
    return (ClearingApp(Verifier("accel", "cpu"), make()),
            ClearingApp(Verifier("accel", "cpu"), make()),
            ClearingApp(Verifier("software"), make()))


def resign(body: bytes) -> tuple[bytes, list[bytes]]:
    """body with a signature by each signer it names: a real one where the key is known, else 64
    random bytes (so the body reaches the rules whenever it can)."""
    try:
        signers = ctx.decode(body).signers
    except ctx.Malformed:
        return body, [bytes(64)]
    return body, [SECRET[k].sign(body).signature if k in SECRET else random.Random(body).randbytes(64)
                  for k in signers]


def header_block(app, parent, txs: Txs, state_root=None):
    """A block whose tx root and signature digest are honest; the state root is the executing
    validator's own when the block executes (else zeros), unless given."""
    if state_root is None:
        try:
            state_root = app.execute(parent, txs.bodies).root
        except (Rejected, ctx.Malformed):
            state_root = bytes(32)
    return block_of(txs, bytes(32), state_root, app)


def agree(validators, parents, block, supply=None):
    """Every validator's verdict on block: they agree (ok, reason, root); an accepted state keeps
    the invariants. The first verdict."""
    out = []
    for app, parent in zip(validators, parents):
        v = app.validate(parent, block, ((), (), ()))
        assert isinstance(v.reason, str) and (v.ok or v.reason)
        out.append(v)
    first = out[0]
    for v in out[1:]:
        assert (v.ok, v.reason) == (first.ok, first.reason)
        assert (v.state.root if v.ok else None) == (first.state.root if first.ok else None)
    if first.ok:
        assert first.state.clearing.violations() == []
        if supply is not None:
            flows = committed_flows(block.txs)
            check_invariants(first.state.clearing, {a: supply.get(a, 0) + flows.get(a, 0) for a in set(supply) | set(flows)})
    return first


# ---- 1. type confusion in submit_many ---------------------------------------------------------------------


class _BytesChild(bytes):
    pass


def test_submit_many_refuses_every_python_shape_a_client_could_send_with_a_reason():
    app, _, _ = apps()
    body = ctx.deposit(K[0], 2, "USD", USD)
    sig = USERS[0].sign(body).signature
    odd = [
        (bytearray(body), [sig]), (memoryview(body), [sig]), (body.hex(), [sig]), (body, [bytearray(sig)]),
        (body, [memoryview(sig)]), (body, [sig.hex()]), (body, sig), (body, [sig, sig]), (body, []),
        (body, [sig[:63]]), (body, [sig + b"\0"]), None, 5, 5.5, "ab", b"ab", (body,), (body, [sig], 1),
        {body: 1, b"x": 2}, (body, (s for s in [sig])), (body, [None]), (body, 7), (b"", []), (bytes(1 << 20), [sig]),
        (body, [sig] * 10_000), (1.5, [sig]), (True, False), (body, [float("nan")]), (body, [[sig]]), ([body], [sig]),
        (np.frombuffer(body, np.uint8), [sig]), (body, np.frombuffer(sig, np.uint8).reshape(1, 64)),
        (body, [1] * 64), (body, [b""]), (int.from_bytes(body, "big"), [sig]), ((), ()), (body, None),
    ]
    reasons = app.submit_many(odd)
    assert len(reasons) == len(odd)
    assert all(isinstance(r, str) and r.startswith("malformed") for r in reasons), \
        [(repr(o)[:30], r) for o, r in zip(odd, reasons) if not r.startswith("malformed")]
    assert not app.mempool
    # bytes subclasses and a list for a tuple are bytes and a sequence: admitted, once
    assert app.submit_many([(_BytesChild(body), [_BytesChild(sig)]), [body, [sig]], (body, (sig,))]) == ["", "", ""]
    assert len(app.mempool) == 1
    txs, state = app.propose(app.genesis, set())
    assert len(txs) == 1 and state.clearing.accounts[K[0]].nonce == 3


def test_submit_many_of_an_empty_list_and_of_many_duplicates_in_one_call():
    app, _, _ = apps()
    assert app.submit_many([]) == []
    item = signed(ctx.deposit(K[1], 2, "USD", USD), [USERS[1]])
    bad = (item[0], [bytes(64)])
    assert app.submit_many([bad, item, item, bad, item]) == ["a signature does not verify", "", "",
                                                             "a signature does not verify", ""]
    assert len(app.mempool) == 1 and app.mempool[hashlib.sha256(item[0]).digest()].signatures == item[1]


# ---- 2. field edges, re-signed, through submit_many / propose / validate -------------------------------------


class Next:
    """Resolved when a block is built: the account's next nonce (or the underlying's next mark
    sequence and a later timestamp), counted through the block, plus skew."""

    def __init__(self, skew=0):
        self.skew = skew

    def __repr__(self):
        return f"Next({self.skew})"


class Builder:
    """Bodies from specs on top of a state; Next fields take the nonces and sequences that follow."""

    def __init__(self, state):
        self.nonce = {k: a.nonce for k, a in state.accounts.items()}
        self.seq = {u: (m.sequence, m.timestamp) for u, m in state.marks.items()}

    def n(self, key, v):
        if not isinstance(v, Next):
            return v
        n = self.nonce.get(key, 0)
        self.nonce[key] = n + 1
        return (n + v.skew) % 2**64

    def body(self, spec) -> bytes:
        op, args = spec
        if op == ctx.REGISTER:
            return ctx.register(*args)
        if op in (ctx.DEPOSIT, ctx.WITHDRAW):
            k, nonce, asset8, q = args
            return struct.pack(">IB32sQ8sQ", ctx.CHAIN_ID, op, k, self.n(k, nonce), asset8, q)
        if op == ctx.TRADE:
            b, bn, s, sn, sid, z, p = args
            return ctx.trade(b, self.n(b, bn), s, self.n(s, sn), sid, z, p)
        name8, index, seq, ts, vols, signers = args
        und = name8.rstrip(b"\0").decode("latin-1")
        last_seq, last_ts = self.seq.get(und, (0, T0))
        if isinstance(seq, Next):
            seq, ts = (last_seq + 1 + seq.skew) % 2**64, (last_ts + ts) % 2**64
            self.seq[und] = (seq, ts)
        return raw_mark(name8, index, seq, ts, vols, signers)


def raw_mark(name8: bytes, index, seq, ts, vols: list, signers: list):
    """A mark body as the wire carries it, whatever its fields (repeated oracles included)."""
    out = struct.pack(">IB8sdQQH", ctx.CHAIN_ID, ctx.MARK, name8, index, seq, ts, len(vols))
    out += b"".join(struct.pack(">Id", i, v) for i, v in vols)
    return out + struct.pack(">B", len(signers)) + b"".join(signers)


UNSAFE = [bytes(32), bytes([1] + [0] * 31), b"\xff" * 32, bytes([0xEC] + [0xFF] * 30 + [0x7F])]
key = st.one_of(st.sampled_from(K), st.sampled_from(K), st.sampled_from(O), st.just(bytes(STRANGER.verify_key)),
                st.sampled_from(UNSAFE), st.binary(min_size=32, max_size=32))
user = st.sampled_from(K)
nonce = st.one_of(st.just(Next()), st.just(Next()), st.just(Next()), st.sampled_from([Next(-1), Next(1)]),
                  st.integers(0, 4), st.sampled_from([2**31, 2**32 - 1, 2**62, 2**63 - 1, 2**63, U64]))
asset8 = st.one_of(st.sampled_from([b"USD\0\0\0\0\0", b"BTC\0\0\0\0\0"] * 4),
                   st.sampled_from([b"ETH\0\0\0\0\0", b"usd\0\0\0\0\0", b"\0USD\0\0\0\0", b"US\0D\0\0\0\0", bytes(8),
                                    b"USD\xff\0\0\0\0", b"\xc3\xa9TH\0\0\0\0", b"USD     ", b"ABCDEFGH",
                                    b"BTC\0\0\0\0\x01"]), st.binary(min_size=8, max_size=8))
amount = st.one_of(st.integers(1, 10**6).map(lambda x: x * USD), st.integers(1, 10**6).map(lambda x: x * USD),
                   st.sampled_from([0, 1, MAX_AMOUNT, MAX_AMOUNT + 1, 2**62, 2**63 - 1, 2**63, U64]))
series = st.one_of(st.integers(1, 7), st.integers(1, 7), st.sampled_from([0, 8, 99, 2**31, 2**32 - 1]))
size = st.one_of(st.integers(1, 5), st.integers(1, 5), st.sampled_from([0, MAX_SIZE, MAX_SIZE + 1, 2**31, 2**32 - 1]))
price = st.one_of(st.integers(0, 70_000).map(lambda x: x * USD), st.integers(0, 5_000).map(lambda x: x * USD),
                  st.sampled_from([0, 1, MAX_PRICE, MAX_PRICE + 1, 2**62, 2**63 - 1, 2**63, U64]))
floats = st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 0.0, 5e-324, 1e-4, 1e8,
                          1.0000001e8, 9.9e-5, -60_000.0, 1e308])
index = st.one_of(st.floats(30_000, 120_000), st.floats(1_000, 200_000), floats)
vol = st.one_of(st.floats(0.05, 3.0), st.floats(0.05, 3.0), floats, st.sampled_from([1e-4, 100.0, 100.00001]))
name8 = st.sampled_from([b"BTC\0\0\0\0\0", b"ETH\0\0\0\0\0", b"DOGE\0\0\0\0", b"USD\0\0\0\0\0", b"btc\0\0\0\0\0",
                         bytes(8), b"BT\0C\0\0\0\0", b"\xffBTC\0\0\0\0"])
seq = st.one_of(st.just(Next()), st.integers(0, 4), st.sampled_from([Next(-1), Next(1), 2**63, U64]))
ts = st.one_of(st.sampled_from([60, 600, 3600, 3 * 3600, 86400, 0]),
               st.sampled_from([0, 1, T0 + 2 * 86400, 2**40, 2**63, U64]))
vols = st.lists(st.tuples(series, vol), max_size=5, unique_by=lambda p: p[0])
oracles = st.one_of(st.just(O[:2]), st.just(O), st.just(O[1:]), st.just(O[:1]), st.just([]),
                    st.lists(key, max_size=4, unique=True))
btc_vols = st.tuples(vol, vol, vol).map(lambda v: [(1, v[0]), (2, v[1]), (4, v[2])])

spec = st.one_of(
    st.tuples(st.just(ctx.REGISTER), st.tuples(key)),
    st.tuples(st.sampled_from([ctx.DEPOSIT, ctx.WITHDRAW]), st.tuples(key, nonce, asset8, amount)),
    st.tuples(st.sampled_from([ctx.DEPOSIT, ctx.WITHDRAW]), st.tuples(user, st.just(Next()), asset8, amount)),
    st.tuples(st.just(ctx.TRADE), st.tuples(key, nonce, key, nonce, series, size, price)),
    st.tuples(st.just(ctx.TRADE), st.tuples(user, st.just(Next()), user, st.just(Next()), series, size, price)),
    st.tuples(st.just(ctx.TRADE), st.tuples(user, st.just(Next()), user, st.just(Next()), series, size, price)),
    st.tuples(st.just(ctx.MARK), st.tuples(name8, index, seq, ts, vols, oracles)),
    st.tuples(st.just(ctx.MARK), st.tuples(st.just(b"BTC\0\0\0\0\0"), index, st.just(Next()), ts, btc_vols,
                                           st.just(O[:2]))),
    st.tuples(st.just(ctx.MARK), st.tuples(st.just(b"ETH\0\0\0\0\0"), index, st.just(Next()), ts,
                                           st.tuples(vol).map(lambda v: [(7, v[0])]), st.just(O[1:]))),
)


def mutate(body: bytes, how: int, at: int, value: int) -> bytes:
    """A raw mutation: a bit flipped, a byte set, cut, extended, or a count field (a mark's vol
    count or signer count, an op byte, the chain id) set to an edge value."""
    if not body:
        return body
    at %= len(body)
    b = bytearray(body)
    if how == 0:
        b[at] ^= 1 << (value % 8)
    elif how == 1:
        b[at] = value % 256
    elif how == 2:
        del b[at:]
    elif how == 3:
        b[at:at] = bytes([value % 256]) * (1 + value % 40)
    elif how == 4 and len(b) >= 39 and b[4] == ctx.MARK:  # the vol count
        b[37:39] = (value % 65536).to_bytes(2, "big")
    elif how == 5 and len(b) >= 40 and b[4] == ctx.MARK:  # the signer count
        count = int.from_bytes(b[37:39], "big")
        if 39 + 12 * count < len(b):
            b[39 + 12 * count] = value % 256
    elif how == 6:
        b[4] = value % 256
    elif how == 7:
        b[0:4] = (value % 2**32).to_bytes(4, "big")
    return bytes(b)


mutation = st.one_of(st.none(), st.none(), st.none(),
                     st.tuples(st.integers(0, 7), st.integers(0, 300), st.integers(0, 2**32)))
stream = st.lists(st.lists(st.tuples(spec, mutation, st.sampled_from([True] * 9 + [False])), max_size=10),
                  min_size=1, max_size=4)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(stream, st.booleans())
def test_edge_and_mutated_transactions_never_raise_and_validators_agree(blocks, positioned):
    proposer, accel_v, soft_v = apps(positioned_genesis if positioned else funded_genesis)
    parents = [proposer.genesis, accel_v.genesis, soft_v.genesis]
    supply = funded_supply(proposer.genesis.clearing)
    for ops in blocks:
        items, build = [], Builder(parents[0].clearing)
        for sp, mut, good_sigs in ops:
            body = build.body(sp)
            if mut is not None:
                body = mutate(body, *mut)
            item = resign(body)
            if not good_sigs:  # the same body with its first signature broken
                item = (item[0], [bytes(64)] + item[1][1:]) if item[1] else item
            items.append(item)
        reasons = proposer.submit_many(items)
        assert len(reasons) == len(items) and all(isinstance(r, str) for r in reasons)
        accel_v.submit_many(items)
        # the raw stream as a byzantine proposer's block, and each transaction alone, honest roots:
        # both validators agree, accepted states balance
        wire = [it for it in items if it[1] and all(isinstance(s, bytes) and len(s) == 64 for s in it[1])]
        for group in [wire] + [[it] for it in wire]:
            agree([accel_v, soft_v], parents[1:], header_block(accel_v, parents[1], as_txs(group)), supply)
        # the honest proposal: valid everywhere, the same root, the ledger balanced
        txs, state = proposer.propose(parents[0], set())
        block = block_of(txs, bytes(32), state.root, proposer)
        verdict = agree([accel_v, soft_v], parents[1:], block, supply)
        assert verdict.ok, verdict.reason
        assert verdict.state.root == state.root
        for asset, q in committed_flows(txs).items():
            supply[asset] = supply.get(asset, 0) + q
        check_invariants(state.clearing, supply)
        proposer.committed(block, state)
        accel_v.committed(block, verdict.state)
        parents = [state, verdict.state, soft_v.validate(parents[2], block, ((), (), ())).state]


# ---- 3. proposal frames mutated on the wire ------------------------------------------------------------------


def _good_block():
    proposer, accel_v, soft_v = apps()
    items = [signed(ctx.deposit(K[0], 2, "USD", 5 * USD), [USERS[0]]),
             signed(ctx.trade(K[1], 2, K[2], 2, 3, 1, 60_000 * USD), [USERS[1], USERS[2]]),
             signed(ctx.withdraw(K[3], 2, "USD", USD), [USERS[3]]),
             signed(ctx.trade(K[3], 3, K[2], 3, 1, 2, 1_240 * USD), [USERS[3], USERS[2]]),
             signed(ctx.mark("BTC", 60_500.0, 2, 1_800_000_120, {1: 0.7, 2: 0.7, 4: 0.7}, O[:2]), ORACLES[:2]),
             signed(ctx.register(bytes(STRANGER.verify_key)), [STRANGER]),
             signed(ctx.deposit(K[4], 2, "BTC", 7), [USERS[4]])]
    assert proposer.submit_many(items) == [""] * len(items)
    accel_v.submit_many(items[:4])
    txs, state = proposer.propose(proposer.genesis, set())
    assert len(txs) == len(items)
    return accel_v, soft_v, block_of(txs, bytes(32), state.root, proposer), state


def test_mutated_proposal_frames_decode_or_not_and_never_make_validate_raise():
    accel_v, soft_v, block, state = _good_block()
    frame = M.encode(M.Proposal(block, bytes(64)))
    parents = [accel_v.genesis, soft_v.genesis]
    assert agree([accel_v, soft_v], parents, M.decode(frame).block).ok
    rng = random.Random(7)
    seen = {}
    for _ in range(400):
        f = bytearray(frame)
        kind = rng.randrange(5)
        p = rng.randrange(4, len(f))
        if kind == 0:
            f[p] ^= 1 << rng.randrange(8)
        elif kind == 1:
            f[p] = rng.choice([0, 0xFF, 0x7F, 0x80])
        elif kind == 2:
            del f[p:p + rng.randint(1, 40)]
        elif kind == 3:
            f[p:p] = rng.randbytes(rng.randint(1, 40))
        else:  # a length field somewhere in the transactions set to an edge
            p = rng.randrange(len(f) - 1500, len(f) - 4) if len(f) > 1504 else p
            f[p:p + 4] = rng.choice([0, 1, 2**31, 2**32 - 1, 64, 4096]).to_bytes(4, "big")
        if kind in (2, 3) or rng.random() < 0.5:
            f[:4] = (len(f) - 4).to_bytes(4, "big")
        try:
            msg = M.decode(bytes(f))
        except M.DecodeError:
            seen["decode"] = seen.get("decode", 0) + 1
            continue
        if not isinstance(msg, M.Proposal):
            continue
        v = agree([accel_v, soft_v], parents, msg.block)
        if v.ok:  # only a change the roots do not cover (the proposer's signature, the QC)
            assert v.state.root == state.root
        seen[v.reason.split(":")[0]] = seen.get(v.reason.split(":")[0], 0) + 1
    assert seen.get("decode") and len(seen) >= 4, seen


# ---- 4. headers that do not match their transactions -------------------------------------------------------


def test_headers_signatures_and_counts_that_do_not_match_are_refused_by_both():
    accel_v, soft_v, block, state = _good_block()
    parents = [accel_v.genesis, soft_v.genesis]
    txs = block.txs
    bodies = [txs.bodies.item(i) for i in range(len(txs))]
    sigs = [txs.sigs[i].tobytes() for i in range(len(txs.sigs))]

    def pack(bs, ss):
        from accel import Packed
        from accel.packing import pack_fixed, pack_messages
        return Txs(Packed(*pack_messages(bs)) if bs else Txs.empty().bodies,
                   pack_fixed(ss, 64, "sig") if ss else np.zeros((0, 64), np.uint8))

    cases = {
        "tx root": block_of(txs, bytes(32), state.root, accel_v).__class__(**{**block.__dict__, "tx_root": bytes(32)}),
        "state root": block.__class__(**{**block.__dict__, "state_root": hashlib.sha256(state.root).digest()}),
        "digest": block.__class__(**{**block.__dict__, "sig_digest": bytes(32)}),
    }
    swapped = sigs[:]
    swapped[1], swapped[2] = swapped[2], swapped[1]  # the trade's buyer and seller signatures swapped
    cases["swapped"] = header_block(accel_v, parents[0], pack(bodies, swapped), state.root)
    cases["dropped"] = header_block(accel_v, parents[0], pack(bodies, sigs[:-1]), state.root)
    cases["extra"] = header_block(accel_v, parents[0], pack(bodies, sigs + [sigs[0]]), state.root)
    cases["body dropped"] = header_block(accel_v, parents[0], pack(bodies[1:], sigs[1:]), state.root)
    cases["duplicated"] = header_block(accel_v, parents[0], pack(bodies + bodies[:1], sigs + sigs[:1]))
    cases["reordered"] = header_block(accel_v, parents[0], pack(bodies[::-1], [s for i in reversed(range(len(bodies)))
                                                                              for s in _sigs_of(bodies, sigs, i)]))
    cases["empty with sigs"] = header_block(accel_v, parents[0], pack([], sigs[:1]), bytes(32))
    for name, b in cases.items():
        v = agree([accel_v, soft_v], parents, b)
        assert not v.ok, name
    # the genuine block still validates, and replayed on its own state it is refused (nonces used)
    v = agree([accel_v, soft_v], parents, block)
    assert v.ok and v.state.root == state.root
    again = agree([accel_v, soft_v], [v.state, soft_v.validate(parents[1], block, ((), (), ())).state], block)
    assert not again.ok and "nonce" in again.reason
    accel_v.committed(block, v.state)
    items = [(b, _sigs_of(bodies, sigs, i)) for i, b in enumerate(bodies)]
    assert all(r.startswith("stale") for r in accel_v.submit_many(items))


def _sigs_of(bodies, sigs, i):
    start = sum(len(ctx.decode(b).signers) for b in bodies[:i])
    return sigs[start:start + len(ctx.decode(bodies[i]).signers)]


# ---- 5. thousands of transactions of one account -------------------------------------------------------------


def test_thousands_of_transactions_of_one_account_in_one_block():
    proposer, accel_v, soft_v = apps()
    g = proposer.genesis.clearing
    n0 = g.accounts[K[0]].nonce
    items = []
    for i in range(3_000):
        make = ctx.deposit if i % 3 != 2 else ctx.withdraw
        items.append(signed(make(K[0], n0 + i, "USD" if i % 5 else "BTC", 1 + i % 7), [USERS[0]]))
    parents = [accel_v.genesis, soft_v.genesis]
    supply = funded_supply(g)
    v = agree([accel_v, soft_v], parents, header_block(accel_v, parents[0], as_txs(items)), supply)
    assert v.ok, v.reason
    assert v.state.clearing.accounts[K[0]].nonce == n0 + 3_000
    dup = items[:1_500] + [items[1_499]] + items[1_500:]
    v = agree([accel_v, soft_v], parents, header_block(accel_v, parents[0], as_txs(dup)))
    assert not v.ok and v.reason.startswith("invalid transaction: transaction 1500:") and "nonce" in v.reason
    # the mempool in a shuffled order: the proposal keeps what applies in arrival order, validly
    shuffled = items[:]
    random.Random(3).shuffle(shuffled)
    assert proposer.submit_many(shuffled) == [""] * len(shuffled)
    txs, state = proposer.propose(proposer.genesis, set())
    v = agree([accel_v, soft_v], parents, block_of(txs, bytes(32), state.root, proposer), supply)
    assert v.ok and v.state.root == state.root
    assert state.clearing.accounts[K[0]].nonce == n0 + len(txs)


# ---- 6. an attacker with several accounts -------------------------------------------------------------------


def test_self_trading_withdraw_after_trade_and_a_crash_in_one_block_then_self_liquidation():
    """Accounts 4 (thin) and 3 (rich) belong to one attacker: 4 sells futures to 3 at an off-market
    price, withdraws what it can, and the attacker's oracle-signed crash comes in the same block.
    The same-block mark cannot liquidate the touched book; in the next block it does, the fund or
    the counterparty pays, and the ledger balances."""
    proposer, accel_v, soft_v = apps()
    parents = [accel_v.genesis, soft_v.genesis]
    g = proposer.genesis.clearing
    supply = funded_supply(g)
    n3, n4 = g.accounts[K[3]].nonce, g.accounts[K[4]].nonce
    cash4 = g.accounts[K[4]].collateral["USD"]
    trade = signed(ctx.trade(K[3], n3, K[4], n4, 3, 2, 59_000 * USD), [USERS[3], USERS[4]])
    for wd in (cash4, cash4 // 2, cash4 // 10):
        withdraw = signed(ctx.withdraw(K[4], n4 + 1, "USD", wd), [USERS[4]])
        spike = signed(ctx.mark("BTC", 90_000.0, 2, 1_800_000_120, {1: 0.9, 2: 0.9, 4: 0.9}, O[:2]), ORACLES[:2])
        for order in ([trade, withdraw, spike], [spike, trade, withdraw], [trade, spike, withdraw]):
            v = agree([accel_v, soft_v], parents, header_block(accel_v, parents[0], as_txs(order)), supply)
            # a mark after a touched book may not liquidate it, nor find it short before it (since
            # review s21); a 50% jump first makes series 3 reduce-only
            assert not v.ok and ("would be liquidated" in v.reason or "reduce-only" in v.reason
                                 or "below initial margin before" in v.reason), v.reason
        # without the crash: withdrawing everything after the trade is short at the block's end
        v = agree([accel_v, soft_v], parents, header_block(accel_v, parents[0], as_txs([trade, withdraw])), supply)
        assert v.ok == (wd == cash4 // 10), v.reason
        if not v.ok:
            assert "ends the block below initial margin" in v.reason
    # the trade alone, then the spike in the next block liquidates 4
    v = agree([accel_v, soft_v], parents, header_block(accel_v, parents[0], as_txs([trade])), supply)
    assert v.ok
    s_parent = soft_v.validate(parents[1], header_block(accel_v, parents[0], as_txs([trade])), ((), (), ())).state
    spike = signed(ctx.mark("BTC", 90_000.0, 2, 1_800_000_120, {1: 0.9, 2: 0.9, 4: 0.9}, O[:2]), ORACLES[:2])
    v2 = agree([accel_v, soft_v], [v.state, s_parent], header_block(accel_v, v.state, as_txs([spike])), supply)
    assert v2.ok and v2.state.clearing.liquidations[-1].account == K[4]
    assert 3 not in v2.state.clearing.accounts[K[4]].positions


def test_marks_from_non_oracles_repeated_oracles_and_out_of_order_in_one_block():
    _, accel_v, soft_v = apps()
    parents = [accel_v.genesis, soft_v.genesis]
    vol = {1: 0.7, 2: 0.7, 4: 0.7}
    stranger = bytes(STRANGER.verify_key)
    m2 = signed(ctx.mark("BTC", 61_000.0, 2, 1_800_000_120, vol, O[:2]), ORACLES[:2])
    m3 = signed(ctx.mark("BTC", 62_000.0, 3, 1_800_000_180, vol, O[:2]), ORACLES[:2])
    cases = {
        "non-oracles": [signed(ctx.mark("BTC", 61_000.0, 2, 1_800_000_120, vol, [stranger, K[0]]), [STRANGER, USERS[0]])],
        "one oracle and a stranger": [signed(ctx.mark("BTC", 61_000.0, 2, 1_800_000_120, vol, [O[0], stranger]),
                                             [ORACLES[0], STRANGER])],
        "out of order": [m3, m2],
        "same twice": [m2, m2],
        "same sequence later time": [m2, signed(ctx.mark("BTC", 61_000.0, 2, 1_800_000_999, vol, O[:2]), ORACLES[:2])],
        "later sequence same time": [m2, signed(ctx.mark("BTC", 61_000.0, 3, 1_800_000_120, vol, O[:2]), ORACLES[:2])],
    }
    for name, items in cases.items():
        v = agree([accel_v, soft_v], parents, header_block(accel_v, parents[0], as_txs(items)))
        assert not v.ok, name
    repeated = raw_mark(b"BTC\0\0\0\0\0", 61_000.0, 2, 1_800_000_120, sorted(vol.items()), [O[0], O[0]])
    assert accel_v.submit_many([(repeated, [ORACLES[0].sign(repeated).signature] * 2)])[0].startswith("malformed")
    assert agree([accel_v, soft_v], parents, header_block(accel_v, parents[0], as_txs([m2, m3]))).ok


# ---- 7. a proposer starved by accounts that keep coming back short ------------------------------------------------


def test_five_attacker_accounts_resubmitting_five_transactions_cannot_keep_honest_trades_out_forever():
    """Liveness: an attacker chains 4 rounds of short accounts: A0 trades with A1 and withdraws
    (short in fill 0); A1's earlier, larger trade with A2 is hedged only by A0's trade (short in
    fill 1, once A0 is held back); likewise A2 (fill 2) and A3 (fill 3). The evicted transactions
    are not stale (no nonce was used), so submit_many takes the same bytes back at once: 5
    transactions a block, no fee, no money at risk. Before the fix, fill 4 was the safe fallback
    with no trade and no withdrawal of anyone, block after block; now the fill after MAX_PASSES
    holds back the short accounts' trading partners, and theirs, at once, so the honest accounts,
    which trade only with each other, get into the first block."""
    c = genesis()
    A = [SigningKey(bytes([200 + i]) * 32) for i in range(5)]
    H = [SigningKey(bytes([220 + i]) * 32) for i in range(2)]
    AK, HK = [bytes(a.verify_key) for a in A], [bytes(h.verify_key) for h in H]
    for k, q in zip(AK + HK, [20_000] * 4 + [100_000] + [1_000_000] * 2):  # 1 future needs ~12,480 USD
        c.register(k)
        c.deposit(k, 0, "USD", q * USD)
    c.mark("BTC", 60_000.0, {1: 0.7, 2: 0.7, 4: 0.7}, 1, T0 + 60, O[:2])
    p = 60_000 * USD

    def link(i, price=p):  # A(i+1) buys i+1 futures from A(i): A(i)'s nonce 1, A(i+1)'s nonce 2 (A4: 1)
        return signed(ctx.trade(AK[i + 1], 1 if i == 3 else 2, AK[i], 1, 3, i + 1, price), [A[i + 1], A[i]])

    withdraw = signed(ctx.withdraw(AK[0], 2, "USD", 19_000 * USD), [A[0]])
    honest = [signed(ctx.trade(HK[0], 1, HK[1], 1, 3, 1, p), [H[0], H[1]]),
              signed(ctx.withdraw(HK[0], 2, "USD", USD), [H[0]])]
    control = ClearingApp(Verifier("accel", "cpu"), c.snapshot())  # without the attacker: in the first block
    assert control.submit_many(honest) == ["", ""]
    assert len(control.propose(control.genesis, set())[0]) == 2
    app = ClearingApp(Verifier("accel", "cpu"), c)
    parent = app.genesis
    assert app.submit_many(honest) == ["", ""]  # the honest client came first
    included = []
    for height in range(1, 7):
        # link(0) alternates between two prices: the copy left in the mempool is refused (nonce order)
        assert app.submit_many([link(3), link(2), link(1), link(0, p + height % 2), withdraw]) == [""] * 5
        txs, state = app.propose(parent, set())
        got = {txs.bodies.item(i) for i in range(len(txs))}
        included.append(all(b in got for b, _ in honest))
        app.committed(block_of(txs, bytes(32), state.root, app), state)
        parent = state
        if included[-1]:
            break
    assert included == [True], "the honest trade and withdrawal waited behind the attacker's chain"
