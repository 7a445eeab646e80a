"""Session 8: consensus signatures are domain-separated by network (found by a reviewer: vote_bytes,
proposal_bytes and timeout_bytes carried no network identity, so a vote, QC, proposal, timeout or
state-sync commit proof made on one network verified on any other whose validators reuse the same
keys, as operators do between a testnet and a mainnet). Every sign-bytes now carries the network id
(messages.network_id: chain id, genesis state root, validator keys; Config.network), and so does the
transport handshake's transcript; a store records the network it was written for.

Two simulations with the same validator keys are two networks when their genesis differs (kv:
another seed) or their chain id does. Each test checks the same input is taken on its own
network (so it could fail) and refused on the other."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from consensus import messages, statesync  # noqa: E402
from consensus.core import Broadcast, Config, Rejected, Send  # noqa: E402
from consensus.messages import QC, Proposal, Timeout, Vote  # noqa: E402
from consensus.sim import Simulation  # noqa: E402
from test_sync_attacks import _net as _chain, _wire  # noqa: E402


def _run(seed: int = 0, blocks: int = 6, **kw) -> Simulation:
    sim = Simulation(n=4, seed=seed, txs_per_block=5, validation="software", **kw)
    sim.load(blocks * 5)
    sim.run(blocks=blocks)
    return sim


def _fresh(seed: int = 0, **kw) -> Simulation:
    return Simulation(n=4, seed=seed, txs_per_block=5, validation="software", **kw)


def _a_qc(sim) -> QC:
    """A QC of `sim`'s chain (in a block it committed)."""
    return next(p.block.qc for p in sim.nodes[0].core.proposals.values() if p.block.qc.voters)


def test_network_ids_differ_by_chain_id_genesis_and_validator_set():
    keys = [bytes([i]) * 32 for i in range(4)]
    root = bytes(32)
    base = messages.network_id(1, root, keys)
    assert len(base) == messages.NETWORK_ID and base == messages.network_id(1, root, list(keys))
    assert len({base, messages.network_id(2, root, keys), messages.network_id(1, b"\1" * 32, keys),
                messages.network_id(1, root, keys[::-1]), messages.network_id(1, root, keys[:3])}) == 5
    for args in ((-1, root, keys), (1, b"short", keys), (1, root, [b"short"]), (1, root, [])):
        with pytest.raises(ValueError):
            messages.network_id(*args)
    with pytest.raises(ValueError):
        Config(0, tuple(keys), network=b"x" * 31)
    with pytest.raises(ValueError):
        messages.vote_bytes(root, 1, b"x" * 5)
    # every kind of sign bytes differs between two networks, and from the unnamed one
    other = messages.network_id(2, root, keys)
    for make in (lambda n: messages.vote_bytes(root, 7, n), lambda n: messages.timeout_bytes(7, 6, n),
                 lambda n: messages.proposal_bytes(root, n)):
        assert len({make(base), make(other), make(b"")}) == 3


def test_same_keys_other_genesis_is_another_network_in_every_driver():
    a, b, a2 = _fresh(0), _fresh(1), _fresh(0)
    assert a.keys[0].verify_key == b.keys[0].verify_key  # the same validator keys
    assert a.network != b.network and a.network == a2.network
    assert all(c.network == a.network for c in a.cfg) and a.network != _fresh(0, chain_id=2).network


def test_votes_and_a_qc_of_another_network_do_not_verify():
    """The votes inside a QC of network A, sent one by one to the next leader of network B (same
    keys, another genesis): before, each verified there and B's leader formed a QC out of them."""
    a = _run(0)
    qc = _a_qc(a)
    assert qc.voters

    def deliver(sim) -> tuple:
        core = next(n.core for n in sim.nodes if n.index == sim.cfg[0].leader(qc.view + 1))
        for i, voter in enumerate(qc.voters):
            core.handle(voter, _wire(Vote(qc.block_id, qc.view, qc.height, voter, qc.sigs[64 * i:64 * i + 64])))
        keys, msgs, sigs = core.qc_certs(qc)
        return core.counters["vote_invalid"], (qc.view, qc.block_id) in core.votes, \
            core.app.verifier.verify_lists(keys, msgs, sigs)

    assert deliver(_fresh(0)) == (0, True, True)  # on its own network (a fresh copy of A): taken
    assert deliver(_fresh(1)) == (len(qc.voters), False, False)  # on B: every vote refused, the QC too


def test_a_proposal_of_another_network_is_rejected():
    """Network A's proposal at height 1, sent to a validator of network B whose genesis is the same
    (same seed) but whose chain id differs: it extends B's genesis, and only its signature tells
    the networks apart. A validator of A votes for it; B's rejects it and votes for nothing."""
    a = _run(0, blocks=3)
    p = next(q for q in a.nodes[0].core.proposals.values() if q.block.height == 1)

    def deliver(sim) -> list:
        node = next(n for n in sim.nodes if n.index not in (p.block.proposer, sim.cfg[0].leader(p.block.view + 1)))
        node.core.start()
        return node.core.handle(p.block.proposer, _wire(p))

    home = deliver(_fresh(0))
    assert any(isinstance(x, Send) and isinstance(x.msg, Vote) for x in home)
    assert not any(isinstance(x, Rejected) for x in home)
    away = deliver(_fresh(0, chain_id=2))
    assert not any(isinstance(x, (Send, Broadcast)) and isinstance(x.msg, Vote) for x in away)
    assert any(isinstance(x, Rejected) and "signature" in x.reason for x in away), away


def test_a_timeout_of_another_network_is_refused():
    """A timeout signed by validator 2 of network A (same genesis, chain id 1) for view 1, sent to
    validators of network B (chain id 2): refused there (timeout_invalid), taken at home."""
    a = _fresh(0)
    a.nodes[2].core.start()
    t = next(x.msg for x in a.nodes[2].core.on_timer(1) if isinstance(x, Broadcast) and isinstance(x.msg, Timeout))

    def deliver(sim) -> int:
        core = sim.nodes[0].core
        core.start()
        core.handle(2, _wire(t))
        return core.counters["timeout_invalid"], 2 in core.timeouts.get(1, {})

    assert deliver(_fresh(0)) == (0, True)
    assert deliver(_fresh(0, chain_id=2)) == (1, False)


def test_a_commit_proof_of_a_same_keys_network_is_refused_by_state_sync_without_the_probe(tmp_path):
    """A snapshot and its commit proof served by network A's validator, to a joiner of network B
    with the same keys (another genesis) that does not probe (StateSync(probe=False), as under the
    one-holder rule): before, commit_proof returned "" and the joiner took A's state. Now the
    proof is refused (proof_bad) and the joiner moves to the next peer. At home it is taken."""
    a = _chain(tmp_path, blocks=25)  # seed 3
    chunk = statesync.serve(a._node("v0").store, 0, 0)
    assert statesync.commit_proof(a.cfg[3], a.verifier, chunk.proof) == ""
    b = Simulation(n=4, seed=4, txs_per_block=5, validation="software")
    assert statesync.commit_proof(b.cfg[3], b.verifier, chunk.proof) != ""
    for sim, taken in ((a, True), (b, False)):
        sync = statesync.StateSync(sim.cfg[3], sim._make_app(sim.genesis), probe=False)
        (ask, _) = sync.start()
        sync.handle(ask.to, _wire(chunk))
        assert (sync.done is not None) == taken
        assert sync.counters.get("proof_bad", 0) == (0 if taken else 1)


def test_the_handshake_transcript_names_the_network():
    from consensus import net
    args = (b"dialer", b"l" * 32, b"d" * 32, 1, 2, b"k" * 32, b"K" * 32)
    na, nb = messages.network_id(1, bytes(32), [b"k" * 32]), messages.network_id(2, bytes(32), [b"k" * 32])
    assert len({net.transcript(*args), net.transcript(*args, na), net.transcript(*args, nb)}) == 3


def test_a_store_of_another_network_or_from_before_network_ids_is_refused_with_one_line(tmp_path):
    """A validator's store records its network: started with another network's configuration (or
    with a store written before sign bytes carried the network id, whose blocks' signatures verify
    nowhere now) the node stops at start-up with one line naming data_dir, never replays or serves
    those blocks."""
    import sqlite3

    from consensus.localnet import write_configs
    from consensus.node import NodeConfig, NodeRunner, StartupError
    from consensus.store import Store
    config = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, app="kv", load="none")[0]
    cfg = NodeConfig.load(config)
    runner = NodeRunner(cfg)
    mine = runner.network
    assert runner.core.cfg.network == mine and len(mine) == 32 and runner.status()["network_id"] == mine.hex()
    runner.store.close()
    again = NodeRunner(cfg)  # the same network: starts
    again.store.close()
    path = cfg.data_dir / "validator.db"

    db = sqlite3.connect(str(path))
    db.execute("UPDATE network SET id = ?", (bytes(32),))
    db.commit()
    db.close()
    with pytest.raises(StartupError) as exc:
        NodeRunner(cfg)
    line = str(exc.value)
    assert "\n" not in line and "data_dir" in line and "belongs to network" in line

    db = sqlite3.connect(str(path))  # as written before this change: no network row, a safety row
    db.execute("DELETE FROM network")
    db.execute("INSERT OR REPLACE INTO safety VALUES (1, 3, ?)", (messages.encode_qc(QC(bytes(32), 0, 0)),))
    db.commit()
    db.close()
    with pytest.raises(StartupError) as exc:
        NodeRunner(cfg)
    line = str(exc.value)
    assert "\n" not in line and "data_dir" in line and "before consensus signatures carried the network id" in line

    s = Store(tmp_path / "empty.db")  # an empty store is claimed once, then holds to it
    assert s.claim_network(mine) == "" and s.claim_network(mine) == "" and s.claim_network(bytes(32)) != ""
    s.close()


def test_validators_of_two_networks_sharing_keys_do_not_connect():
    """Validator 1 of network B dials validator 0 of network A, both with the same keys: each side's
    handshake signature names its own network, so the connection fails (counted) and nothing it
    sends is delivered; between two validators of one network frames flow as before."""
    import asyncio

    from test_net_auth import KEYS, SEEDS, addresses, request, until

    from consensus.net import Network
    na, nb = messages.network_id(1, bytes(32), KEYS[:2]), messages.network_id(2, bytes(32), KEYS[:2])

    async def scenario(n0, n1):
        addrs, got = addresses(2), []
        a = Network(0, addrs, lambda s, m: got.append((s, m)), seed=SEEDS[0], keys=KEYS[:2], network=n0)
        b = Network(1, addrs, lambda s, m: None, seed=SEEDS[1], keys=KEYS[:2], network=n1)
        await a.start()
        await b.start()
        b.send(0, request(7))
        await until(lambda: got or a.handshake_failures + b.handshake_failures)
        await a.stop()
        await b.stop()
        return got, a.handshake_failures + b.handshake_failures

    got, failures = asyncio.run(scenario(na, na))
    assert [(s, m.block_id[0]) for s, m in got] == [(1, 7)] and failures == 0
    got, failures = asyncio.run(scenario(na, nb))
    assert got == [] and failures >= 1
    with pytest.raises(ValueError):
        Network(0, addresses(2), lambda s, m: None, seed=SEEDS[0], keys=KEYS[:2], network=b"x")
