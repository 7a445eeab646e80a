"""`accel validate-bench`: one validator's validate() of a valid T-transaction key-value or clearing
block, by stage, accelerated or software-only (median of several runs, on an otherwise idle machine)."""
from __future__ import annotations

import statistics
import time

import numpy as np

from nacl.signing import SigningKey

from .apps import clearing_tx as ctx
from .apps.clearing_app import ClearingApp
from .apps.clearing_load import ClearingLoad, genesis_market
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


def clearing_block(txs: int, verifier: Verifier, traders: int = 1000, mark_every: int = 1000):
    """A valid clearing block of `txs` transactions over a genesis of `traders` funded accounts
    and a first mark: one-contract trades between random pairs (two signatures each) and, every
    `mark_every` transactions, an oracle mark moving the index by up to 1% (every holder is
    margined after it)."""
    load = ClearingLoad(seed=1, users=traders)
    genesis = genesis_market(verifier.backend)
    for body, _ in load.take(load.setup_size):  # registrations, deposits, the first marks
        ctx.apply(genesis, ctx.decode(body))
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
                   sig_cache: bool = False) -> dict:
    """Median validate() time by stage. sig_cache: the block's transactions sit verified in the
    validator's mempool first (clearing), so only the certificates' signatures are checked."""
    verifier = Verifier(validation, backend)
    build = {"kv": kv_block, "clearing": clearing_block}[app]
    app, parent_state, block, certs = build(txs, verifier)
    if sig_cache:
        if not isinstance(app, ClearingApp):
            raise ValueError("the signature cache belongs to the clearing app's mempool")
        app.sig_cache = True
        signers = [len(t.signers) for t in ctx.decode_all(block.txs.bodies)]
        ends = np.cumsum(signers).tolist()
        app.submit_many([(block.txs.bodies.item(i), [s.tobytes() for s in block.txs.sigs[e - n:e]])
                         for i, (n, e) in enumerate(zip(signers, ends))])
    samples = []
    for _ in range(runs + 1):  # the first run loads kernels and warms caches
        t0 = time.perf_counter()
        verdict = app.validate(parent_state, block, certs)
        wall = (time.perf_counter() - t0) * 1e3
        if not verdict.ok:
            raise RuntimeError(f"the benchmark block did not validate: {verdict.reason}")
        samples.append(verdict.timings_ms | {"wall": wall})
    samples = samples[1:]
    stages = [s for s in STAGES if s in samples[0]]  # margin: clearing only
    return {"txs": txs, "validation": validation, "runs": runs, "sig_cache": sig_cache,
            "validation_ms": {s: statistics.median(x[s] for x in samples) for s in stages}}
