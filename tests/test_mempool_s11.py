"""Mempool admission, the eleventh session's review (each test failed before its fix).

- The key-value app admitted a well-formed transfer whose signature does not verify ("checked in
  blocks"): every leader proposed it in turn, every validator refused the block, and only a commit
  takes a transaction out of the mempool, so one stranger's request to each validator stopped the
  chain for good (1 block each, then 28 refused proposals in 30 s of simulated time).
- The clearing app checked every signature of a mark no block can apply (fewer than a quorum of
  oracle keys among its signers: 30 marks of 255 keys were 7,650 checks) and admitted it, each
  signed by a fresh key its own owner: one address filled a mempool and kept new users out."""
from nacl.signing import SigningKey

from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing_app import ClearingApp
from consensus.apps.clearing_load import genesis_market
from consensus.apps.kv import KvApp, transfer_body
from consensus.sim import Simulation
from consensus.verify import Verifier


def test_the_kv_mempool_refuses_a_signature_that_does_not_verify_and_keeps_the_rest():
    sim = Simulation(n=4, seed=1)
    a, b = (bytes(c.verify_key) for c in sim.clients[:2])
    good = [transfer_body(a, n, b, 1) for n in range(3)]
    bad = transfer_body(a, 3, b, 1)
    items = [(good[0], [sim.clients[0].sign(good[0]).signature]), (bad, [bytes(64)]),
             (good[1], [sim.clients[0].sign(good[1]).signature]), (good[2], [sim.clients[1].sign(good[2]).signature]),
             (good[2], []), (b"\x00" * 9, [bytes(64)]), None, (good[1],), ("text", [bytes(64)])]
    app = sim.nodes[0].core.app
    before = len(app.mempool)
    reasons = app.submit_many(items)
    assert reasons[0] == reasons[2] == ""
    assert reasons[1] == reasons[3] == "the signature does not verify"  # (3: signed by another key)
    assert reasons[4].startswith("a transaction has exactly one signature") and reasons[5]
    assert all(r.startswith("a transaction has exactly one signature") for r in reasons[6:])
    assert len(app.mempool) == before + 2
    assert app.submit(bad, bytes(64)) == "the signature does not verify"


def test_one_bad_signature_in_every_kv_mempool_does_not_stop_the_chain():
    sim = Simulation(n=4, seed=1)
    sim.load(40)
    body = transfer_body(bytes(sim.clients[0].verify_key), 10**6, bytes(sim.clients[1].verify_key), 1)
    for node in sim.nodes:  # what a stranger sends to each validator's /broadcast_tx_sync
        assert node.core.app.submit(body, bytes(64))
    sim.run(blocks=5, max_ms=30_000)
    assert min(len(n.committed) for n in sim.nodes) >= 5
    assert sum(len(n.rejected) for n in sim.nodes) == 0


class _Counting(Verifier):
    checked = 0

    def verify_each(self, keys, messages, sigs):
        _Counting.checked += len(keys)
        return super().verify_each(keys, messages, sigs)


def _marks(n: int, keys: list) -> list:
    pubs = [bytes(k.verify_key) for k in keys]
    bodies = [ctx.mark("BTC", 100.0, 10**6 + seq, 1, {}, pubs) for seq in range(n)]
    return [(body, [k.sign(body).signature for k in keys]) for body in bodies]


def test_a_mark_without_an_oracle_quorum_is_refused_unchecked_and_takes_no_room():
    app = ClearingApp(_Counting("accel", "cpu"), genesis_market())
    app.max_mempool = 100_000
    _Counting.checked = 0
    reasons = app.submit_many(_marks(30, [SigningKey.generate() for _ in range(255)]))
    assert reasons == [f"mark signed by 0 oracle(s), {app.head.quorum} needed"] * 30
    assert _Counting.checked == 0 and len(app.mempool) == 0


def test_one_client_cannot_keep_new_users_out_with_marks_of_fresh_keys():
    app = ClearingApp(Verifier("accel", "cpu"), genesis_market())
    app.max_mempool = 200
    flood = app.submit_many([m for _ in range(200) for m in _marks(1, [SigningKey.generate()])], client="198.51.100.7")
    assert all(r.startswith("mark signed by 0 oracle(s)") for r in flood) and len(app.mempool) == 0
    k = SigningKey.generate()
    body = ctx.register(bytes(k.verify_key))
    assert app.submit_many([(body, [k.sign(body).signature])], client="203.0.113.9") == [""]


def test_the_kv_load_generators_fill_the_mempool_through_the_batch():
    """(node.LoadGenerator and the simulation admit their own load through submit_many: one batch
    of signature checks, not one call per transaction.)"""
    from consensus.node import LoadGenerator
    calls = []

    class Batches(Verifier):
        def verify_each(self, keys, messages, sigs):
            calls.append(len(keys))
            return super().verify_each(keys, messages, sigs)

    gen = LoadGenerator(7)
    app = KvApp(Batches("accel", "cpu"), gen.genesis())
    gen.top_up(app, 50)
    gen.top_up(app, 50)
    assert len(app.mempool) == 50 and calls == [50]
    sim = Simulation(n=4, seed=1)
    for node in sim.nodes:
        node.core.app.verifier = Batches("accel", "cpu")
    sim.load(40)
    assert calls == [50] + [40] * 4


def test_a_transaction_sent_again_while_pending_is_answered_as_a_duplicate(tmp_path):
    """`accel tx deposit` run twice before a commit signs the same body twice: both runs were
    answered {"accepted": true, "reason": ""} for one deposit. The client API now says
    "duplicate": true for one pending already (from this request or an earlier one)."""
    from consensus import client as cl
    from consensus.localnet import write_configs
    from consensus.node import NodeConfig, NodeRunner
    from consensus.rpc import Rpc
    cfg = NodeConfig.load(write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, load="none", rpc_port=0)[0])
    runner = NodeRunner(cfg)
    try:
        rpc = Rpc(runner, ("127.0.0.1", 0))
        alice = SigningKey.generate()
        register, deposit = cl.register(alice), cl.deposit(alice, 0, "USD", 100 * 10**8)
        first = rpc._submit([register, deposit, deposit], "198.51.100.7")
        again = rpc._submit([deposit], "198.51.100.7")
    finally:
        runner.close()
    assert [a["accepted"] for a in first + again] == [True] * 4
    assert ["duplicate" in a for a in first + again] == [False, False, True, True]
    assert first[2]["hash"] == again[0]["hash"] == first[1]["hash"]
