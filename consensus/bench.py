"""`accel validate-bench`: one validator's validate() of a valid T-transaction key-value or clearing
block, by stage, accelerated or software-only (median of several runs, on an otherwise idle machine)."""
from __future__ import annotations

import hashlib
import statistics
import time

import numpy as np

from nacl.signing import SigningKey

from .apps import clearing_tx as ctx
from .apps.clearing import FUTURE, Account, Clearing, Series
from .apps.clearing_app import ClearingApp
from .apps.clearing_load import T0, USD, ClearingLoad, genesis_market
from .apps.kv import KvApp, pack_txs, set_body, transfer_body
from .core import Config, Core, genesis_block
from .messages import QC, Block, Txs, proposal_bytes, vote_bytes
from .verify import Verifier

STAGES = ("signatures", "tx_root", "execute", "margin", "state_root", "total")


def kv_block(txs: int, verifier: Verifier, senders: int = 1000):
    """A valid block of `txs` signed transactions over a genesis of `senders` funded accounts."""
    clients = [SigningKey(i.to_bytes(4, "big") * 8) for i in range(senders)]
    pks = [bytes(c.verify_key) for c in clients]
    app = KvApp(verifier, {pk: 10**9 for pk in pks}, max_txs=txs)
    bodies, sigs = [], []
    for i in range(txs):
        c, nonce = i % senders, i // senders
        body = (transfer_body(pks[c], nonce, pks[(c + 1) % senders], 1) if i % 2
                else set_body(pks[c], nonce, b"key%d" % (i % 7), b"value"))
        bodies.append(body)
        sigs.append(clients[c].sign(body).signature)
    packed = pack_txs(bodies, sigs)
    return certified(app, app.genesis, packed, app.execute(app.genesis, packed.bodies).root)


BULK_UNDERLYING, BULK_SERIES, BULK_CASH = "IDX", 1_000, 10**6 * USD


def add_accounts(c: Clearing, n: int) -> None:
    """n more funded accounts with positions, written straight into the state (a benchmark's way,
    not a transaction's: a million registrations would take an hour to sign): each holds 10^6
    USD and one contract of a future on an index of its own (half long, half short, so open
    interest sums to zero), so the state has n more leaves and positions while the block's marks
    (BTC and ETH) margin only the traders. Keys are SHA-256 of the account's number: they never
    sign."""
    c.list_series(Series(BULK_SERIES, BULK_UNDERLYING, FUTURE, 0.0, T0 + 365 * 24 * 3600))
    c.mark(BULK_UNDERLYING, 100.0, {}, 1, T0, c.oracles[:c.quorum])  # the genesis's own oracles, whoever they are
    start = len(c.accounts)
    bulk = {hashlib.sha256(b"bulk account %d" % i).digest(): Account(0, {"USD": BULK_CASH}, {BULK_SERIES: 1 - 2 * (i % 2)}, start + i)
            for i in range(n - n % 2)}
    c.accounts = type(c.accounts)({**dict(c.accounts.items()), **bulk})
    c.holders[BULK_SERIES] = set(bulk)
    c.supply["USD"] += BULK_CASH * len(bulk)
    c.dirty.update(bulk)


def clearing_block(txs: int, verifier: Verifier, traders: int = 1000, mark_every: int = 1000, accounts: int = 0):
    """A valid clearing block of `txs` transactions over a genesis of `traders` funded accounts
    (plus `accounts` more holding positions, add_accounts) and a first mark: one-contract trades
    between random pairs (two signatures each) and, every `mark_every` transactions, an oracle
    mark moving the index by up to 1% (every holder is margined after it)."""
    load = ClearingLoad(seed=1, users=traders)
    genesis = genesis_market(verifier.backend)
    for body, _ in load.take(load.setup_size):  # registrations, deposits, the first marks
        ctx.apply(genesis, ctx.decode(body))
    if accounts:
        add_accounts(genesis, accounts)
    app = ClearingApp(verifier, genesis, max_txs=txs, sig_cache=False)
    items = load.take(txs, mark_every=mark_every)
    packed = pack_txs([b for b, _ in items], [s for _, sigs in items for s in sigs])
    return certified(app, app.genesis, packed, app.execute(app.genesis, packed.bodies).root)


def certified(app, parent_state, packed: Txs, state_root: bytes):
    """(app, parent state, block, certificates): the block at height 2 over a parent whose QC 3 of
    4 validators signed, with the certificates its validation checks."""
    validators = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
    core = Core(Config(1, tuple(bytes(v.verify_key) for v in validators)), lambda m: b"", app)
    g = genesis_block(parent_state.root)
    parent = Block(1, 1, g.id, 1, g.tx_root, parent_state.root, g.sig_digest, g.txs, QC(g.id, 0, 0))
    qc = QC(parent.id, 1, 1, (0, 1, 2), b"".join(validators[i].sign(vote_bytes(parent.id, 1)).signature for i in range(3)))
    block = Block(2, 2, parent.id, 2, app.tx_root(packed), state_root, packed.digest(), packed, qc)
    keys, msgs, qsigs = core.qc_certs(qc)
    certs = (keys + [bytes(validators[2].verify_key)], msgs + [proposal_bytes(block.id)],
             qsigs + [validators[2].sign(proposal_bytes(block.id)).signature])
    return app, parent_state, block, certs


def validate_bench(txs: int, validation: str, backend=None, runs: int = 5, app: str = "kv",
                   sig_cache: bool = False, accounts: int = 0) -> dict:
    """Median validate() time by stage, and (clearing) median propose() time of the same block from
    a mempool holding its transactions. sig_cache: validation finds the block's transactions
    verified in its mempool, so only the certificates' signatures are checked. accounts: clearing
    state size (add_accounts)."""
    verifier = Verifier(validation, backend)
    started = time.perf_counter()
    if app == "clearing":
        app, parent_state, block, certs = clearing_block(txs, verifier, accounts=accounts)
    elif accounts:
        raise ValueError("--accounts sizes the clearing app's state")
    else:
        app, parent_state, block, certs = kv_block(txs, verifier)
    setup_s = time.perf_counter() - started
    if sig_cache and not isinstance(app, ClearingApp):
        raise ValueError("the signature cache belongs to the clearing app's mempool")
    clearing = isinstance(app, ClearingApp)
    if clearing:  # the block's transactions in the mempool: proposing needs them, the cache reads them
        app.sig_cache = sig_cache
        signers = [len(t.signers) for t in ctx.decode_all(block.txs.bodies)]
        ends = np.cumsum(signers).tolist()
        app.submit_many([(block.txs.bodies.item(i), [s.tobytes() for s in block.txs.sigs[e - n:e]])
                         for i, (n, e) in enumerate(zip(signers, ends))])
    samples, proposals = [], []
    for _ in range(runs + 1):  # the first run loads kernels and warms caches
        t0 = time.perf_counter()
        verdict = app.validate(parent_state, block, certs)
        wall = (time.perf_counter() - t0) * 1e3
        if not verdict.ok:
            raise RuntimeError(f"the benchmark block did not validate: {verdict.reason}")
        samples.append(verdict.timings_ms | {"wall": wall})
        if clearing:
            t0 = time.perf_counter()
            proposed, state = app.propose(parent_state, set())
            proposals.append((time.perf_counter() - t0) * 1e3)
            if state.root != block.state_root or len(proposed) != len(block.txs):
                raise RuntimeError("the proposer did not rebuild the benchmark block")
    samples = samples[1:]
    stages = [s for s in STAGES if s in samples[0]]  # margin: clearing only
    out = {"txs": txs, "validation": validation, "runs": runs, "sig_cache": sig_cache,
           "validation_ms": {s: statistics.median(x[s] for x in samples) for s in stages},
           "setup_s": setup_s}
    if clearing:
        out |= {"accounts": len(parent_state.clearing.accounts), "propose_ms": statistics.median(proposals[1:])}
        out |= snapshot_times(verifier, parent_state)
    return out


def snapshot_times(verifier: Verifier, state) -> dict:
    """Seconds to write the parent state as a snapshot and to restore it (checked against its
    root), and the snapshot's size: what a restart or a state sync would pay."""
    from .apps import clearing_snapshot
    t0 = time.perf_counter()
    blob = clearing_snapshot.encode(state.clearing)
    t1 = time.perf_counter()
    genesis = genesis_market(verifier.backend)
    if BULK_SERIES in state.clearing.series:
        genesis.list_series(state.clearing.series[BULK_SERIES])
    clearing_snapshot.restore(genesis, blob, state.root, verifier.sha256_rows)
    return {"snapshot_s": t1 - t0, "restore_s": time.perf_counter() - t1, "snapshot_mb": len(blob) / 2**20}
