"""State snapshots in the validator's store (issue 20): a restart starts from the newest snapshot
and replays only the blocks after it, a snapshot that does not hash to its block's state root is
refused (the next older one, or the genesis, is used), and the chain goes on with the same states."""
import logging

import pytest
from hypothesis import given, settings, strategies as st
from nacl.signing import SigningKey

from consensus import snapshots
from consensus.apps.kv import KvApp, pack_txs, set_body, transfer_body
from consensus.core import Core
from consensus.sim import Simulation
from consensus.store import Store, StoreError
from consensus.verify import Verifier


def _run(tmp_path, blocks, every=10, app="kv", seed=1):
    sim = Simulation(n=4, seed=seed, app=app)
    for node in sim.nodes:
        sim.durable(node.name, tmp_path / f"{node.name}.db", snapshot_every=every)
    sim.load(blocks * 3)
    sim.run(blocks=blocks)
    return sim


def _restart(sim, name) -> Core:
    """The core a restart of `name` builds from its store (as the simulation's restart does)."""
    node = sim._node(name)
    app = sim._make_app(sim.genesis)
    start = snapshots.load(node.store, app)
    key = sim.keys[node.index]
    return Core(sim.cfg[node.index], lambda m: key.sign(m).signature, app, node.store.safety(), start.history,
                node.store.committed_range, start.base)


def _corrupt(store: Store, height: int) -> None:
    blob = bytearray(store.snapshot_blob(height))
    blob[len(blob) // 2] ^= 1
    store.db.execute("UPDATE snapshots SET blob = ? WHERE height = ?", (bytes(blob), height))


@pytest.mark.parametrize("app", ["kv", "clearing"])
def test_a_restart_replays_only_the_blocks_after_the_newest_snapshot(tmp_path, app):
    sim = _run(tmp_path, 27, app=app)
    store = sim._node("v1").store
    top = store.top_height()
    # the newest two are kept; v1 takes them at its own phase, 1 * 10 // 4 blocks past each tenth
    # (or the block after, where one commit reached two blocks: the newest is the one kept)
    newest, older = [h for h, *_ in store.snapshots()]
    assert newest in (22, 23) and older in (12, 13)
    core = _restart(sim, "v1")
    assert core.replayed == top - newest and core.committed.height == top
    # the state a restart rebuilt is the one the validator had, and every other validator's
    held = sim._node("v1").committed[top - 1][0]
    assert core.committed.id == held.id and core.states[held.id].root == held.state_root
    assert {n.committed[top - 1][0].state_root for n in sim.nodes} == {held.state_root}


def test_a_restarted_validator_goes_on_from_its_snapshot_on_the_same_chain(tmp_path):
    """Killed after 25 blocks and restarted from its store (a snapshot at 25, v2's phase being
    2 * 10 // 4), it commits the next 30 blocks with every other validator, the same ids and
    state roots."""
    sim = Simulation(n=4, seed=2)
    for node in sim.nodes:
        sim.durable(node.name, tmp_path / f"{node.name}.db", snapshot_every=10)
    sim.load(200)
    killed = {}

    def kill_at_25(s):
        v2 = s._node("v2")
        if len(v2.committed) >= 25:
            killed["height"], killed["restart"] = v2.store.top_height(), s.now + 500.0
            s.kill("v2", s.now, killed["restart"])
        else:
            s.at(s.now + 5.0, kill_at_25)
    sim.at(5.0, kill_at_25)
    sim.run(blocks=60, max_ms=120_000, live=lambda node: True)
    v2 = sim._node("v2")
    assert 25 <= killed["height"] < 30 and v2.core.replayed == killed["height"] - 25
    assert len([t for _, t, _ in v2.committed if t > killed["restart"]]) >= 30
    chains = {n.name: [(b.id, b.state_root) for b, _, _ in n.committed] for n in sim.nodes}
    for name, chain in chains.items():
        assert chain[:60] == chains["v0"][:60], name


def test_a_tampered_snapshot_is_refused_and_an_older_one_or_the_genesis_used(tmp_path, caplog):
    sim = _run(tmp_path, 27)
    store = sim._node("v1").store
    top = store.top_height()
    _corrupt(store, 22)  # v1's two snapshots (its phase: 2)
    with caplog.at_level(logging.WARNING, logger="consensus.snapshots"):
        assert _restart(sim, "v1").replayed == top - 12
    assert "the snapshot at height 22 is refused (the snapshot's state root does not match" in caplog.text
    _corrupt(store, 12)
    core = _restart(sim, "v1")
    assert core.replayed == top and core.committed.state_root == sim._node("v0").committed[top - 1][0].state_root


def test_a_state_synced_store_without_a_good_snapshot_stops_with_one_line(tmp_path):
    sim = _run(tmp_path, 27)
    src = sim._node("v1").store
    h, block_id, root, txs = src.snapshots()[0]
    (p,) = src.committed_range(h, 1)
    synced = Store(tmp_path / "synced.db")
    synced.begin_from_snapshot(p, txs, src.snapshot_blob(h))
    for q in src.committed_range(h + 1, 100):
        synced.add_committed(q)
    app = sim._make_app(sim.genesis)
    start = snapshots.load(synced, app)
    assert start.base.proposal.block.id == block_id and len(list(start.history)) == src.top_height() - h
    assert start.txs == txs and synced.committed_ids()[:h - 1] == [None] * (h - 1)
    _corrupt(synced, h)
    with pytest.raises(StoreError, match=f"begins at height {h} .* no snapshot that restores"):
        snapshots.load(synced, app)


def test_a_key_value_snapshot_holds_data_nonces_and_balances_exactly():
    keys = [SigningKey(bytes([i]) * 32) for i in range(1, 4)]
    pks = [bytes(k.verify_key) for k in keys]
    app = KvApp(Verifier("software"), {pk: 1_000 for pk in pks})
    bodies = [set_body(pks[0], 0, b"k", b"v" * 300), set_body(pks[0], 1, b"", b""), transfer_body(pks[1], 0, pks[2], 7)]
    state = app.execute(app.genesis, pack_txs(bodies, [keys[i].sign(b).signature for i, b in
                                                       zip((0, 0, 1), bodies)]).bodies)
    blob = snapshots.encode(app, state)
    back = snapshots.restore(app, blob, state.root)
    assert back.accounts == state.accounts and back.root == state.root
    for bad, why in ((blob[:-1], "snapshot"), (blob + b"\0", "malformed"), (b"X" + blob, "no AVKVSN1 header")):
        with pytest.raises(ValueError, match=why):
            snapshots.restore(app, bad, state.root)
    with pytest.raises(ValueError, match="does not match"):
        snapshots.restore(app, blob, app.genesis.root)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 2**64 - 1),
       st.dictionaries(st.sampled_from(["USD", "BTC", "ETH", "A", "SOL12345"]), st.integers(-2**127, 2**127 - 1).filter(bool)),
       st.dictionaries(st.integers(0, 2**32 - 1), st.integers(-2**63, 2**63 - 1).filter(bool), max_size=40),
       st.integers(0, 10**6))
def test_a_snapshot_reads_every_account_leaf_back_into_the_account_it_encodes(nonce, collateral, positions, slot):
    """restore() hashes the snapshot's own leaves (a root equal to the committed one proves they are
    its leaves) and keeps the accounts read from them, so reading must invert Clearing._leaf."""
    from consensus.apps.clearing import Account, Clearing
    from consensus.apps.clearing_snapshot import _account
    key = bytes(range(32))
    acct = Account(nonce, collateral, positions, slot)
    leaf = Clearing._leaf(key, acct)
    assert _account(leaf, slot, 5, 40) == (key, acct)
    for bad in (leaf[:40], leaf + b"\0", leaf[:-1]):
        with pytest.raises(ValueError):
            _account(bad, slot, 5, 40)
    if positions:  # more positions than the genesis has series: refused before its layout is built
        with pytest.raises(ValueError, match="malformed"):
            _account(leaf, slot, 5, len(positions) - 1)


def test_validators_snapshot_at_phases_of_their_own():
    """Encoding a large state pauses a validator for seconds; four validators that all paused at
    the same heights would stall the chain, so each takes its snapshot at its own offset."""
    heights = {me: [h for h in range(1, 1001) if snapshots.due(h, 500, me, 4)] for me in range(4)}
    assert heights == {0: [500, 1000], 1: [125, 625], 2: [250, 750], 3: [375, 875]}
    assert [h for h in range(1, 30) if snapshots.due(h, 10, 3, 4)] == [7, 17, 27]
    assert not any(snapshots.due(h, 0, me, 4) for h in range(1, 100) for me in range(4))
    assert [h for h in range(1, 8) if snapshots.due(h, 1, 2, 4)] == list(range(1, 8))
