"""`accel validate-bench`: one validator's validate() of a valid T-transaction key-value block, by
stage, accelerated or software-only (median of several runs, on an otherwise idle machine)."""
from __future__ import annotations

import statistics
import time

from nacl.signing import SigningKey

from .apps.kv import KvApp, pack_txs, set_body, transfer_body
from .core import Config, Core, genesis_block
from .messages import QC, Block, proposal_bytes, vote_bytes
from .verify import Verifier

STAGES = ("signatures", "tx_root", "execute", "state_root", "total")


def kv_block(txs: int, verifier: Verifier, senders: int = 1000):
    """A valid block of `txs` signed transactions over a genesis of `senders` funded accounts, the
    parent QC signed by 3 of 4 validators, and the certificates its validation checks."""
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
    state = app.execute(app.genesis, packed.bodies)
    validators = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
    core = Core(Config(1, tuple(bytes(v.verify_key) for v in validators)), lambda m: b"", app)
    g = genesis_block(app.genesis.root)
    parent = Block(1, 1, g.id, 1, g.tx_root, app.genesis.root, g.sig_digest, g.txs, QC(g.id, 0, 0))
    qc = QC(parent.id, 1, 1, (0, 1, 2), b"".join(validators[i].sign(vote_bytes(parent.id, 1)).signature for i in range(3)))
    block = Block(2, 2, parent.id, 2, app.tx_root(packed), state.root, packed.digest(), packed, qc)
    keys, msgs, qsigs = core.qc_certs(qc)
    certs = (keys + [bytes(validators[2].verify_key)], msgs + [proposal_bytes(block.id)],
             qsigs + [validators[2].sign(proposal_bytes(block.id)).signature])
    return app, app.genesis, block, certs


def validate_bench(txs: int, validation: str, backend=None, runs: int = 5) -> dict:
    verifier = Verifier(validation, backend)
    app, parent_state, block, certs = kv_block(txs, verifier)
    samples = []
    for _ in range(runs + 1):  # the first run loads kernels and warms caches
        t0 = time.perf_counter()
        verdict = app.validate(parent_state, block, certs)
        wall = (time.perf_counter() - t0) * 1e3
        if not verdict.ok:
            raise RuntimeError(f"the benchmark block did not validate: {verdict.reason}")
        samples.append(verdict.timings_ms | {"wall": wall})
    samples = samples[1:]
    return {"txs": txs, "validation": validation, "runs": runs,
            "validation_ms": {s: statistics.median(x[s] for x in samples) for s in STAGES}}
