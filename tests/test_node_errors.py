"""What an operator sees of the core's drop counters (Prometheus) and of a broken store or state
(one line, exit status 1, no traceback): issue 22."""
import asyncio
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

from prometheus_client import generate_latest

from consensus.core import Safety
from consensus.localnet import write_configs
from consensus.messages import QC
from consensus.metrics import NodeMetrics
from consensus.store import Store


def test_the_cores_drop_counters_are_prometheus_counters_by_reason():
    node = SimpleNamespace(core=SimpleNamespace(counters=Counter(), replayed=7, view=3), peers_connected=lambda: [],
                           seconds_since_commit=lambda: 0.0)
    m = NodeMetrics(SimpleNamespace(mempool={}), "cpu", "test", "accel")
    m.liveness(node)
    assert "accel_input_dropped_total{" not in generate_latest(m.registry).decode()
    node.core.counters.update({"vote_invalid": 3, "proposal_malformed": 1})
    text = generate_latest(m.registry).decode()
    assert 'accel_input_dropped_total{reason="vote_invalid"} 3.0' in text
    assert 'accel_input_dropped_total{reason="proposal_malformed"} 1.0' in text
    assert "accel_replayed_blocks 7.0" in text


def test_a_broken_store_stops_the_node_with_one_line(tmp_path):
    config = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, app="kv", load="none")[0]
    from consensus.node import NodeConfig, NodeRunner
    NodeRunner(NodeConfig.load(config)).store.close()  # a store of this network (its id recorded)
    store = Store(tmp_path / "node0" / "validator.db")
    store.save_safety(Safety(1, QC(bytes(32), 0, 0), ()))  # (a store holding blocks holds a safety row)
    store.db.execute("INSERT INTO committed VALUES (1, ?, ?)", (bytes(32), b"not a block"))
    store.close()
    proc = subprocess.run([sys.executable, "-m", "accel.cli", "node", "--config", str(config)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "stopped" in line]
    assert len(lines) == 1 and "validator 0 stopped: store: stored block at height 1 does not decode" in lines[0], \
        proc.stderr


def test_the_transports_counters_are_prometheus_metrics():
    """Every counter consensus/net.py keeps on a Network is exported by event, with the open
    connections by kind; a node without a network yet (starting) exports none."""
    from consensus.metrics import _Transport
    node = SimpleNamespace(core=SimpleNamespace(counters=Counter(), replayed=0, view=0), peers_connected=lambda: [],
                           seconds_since_commit=lambda: 0.0)
    m = NodeMetrics(SimpleNamespace(mempool={}), "cpu", "test", "accel")
    m.liveness(node)
    assert "accel_transport_events_total{" not in generate_latest(m.registry).decode()
    node.net = SimpleNamespace(duplicates=0, pending_connections=5, peer_connections=3,
                               **{event: 10 + j for j, event in enumerate(_Transport.EVENTS)})
    text = generate_latest(m.registry).decode()
    for j, event in enumerate(_Transport.EVENTS):
        assert f'accel_transport_events_total{{event="{event}"}} {10 + j}.0' in text
    assert 'accel_connections{kind="pending"} 5.0' in text and 'accel_connections{kind="validator"} 3.0' in text


def test_every_transport_counter_the_metrics_read_exists_on_a_network():

    from nacl.signing import SigningKey

    from consensus.metrics import _Transport
    from consensus.net import Network
    seed = bytes(32)

    async def make():
        return Network(0, [("127.0.0.1", 1), ("127.0.0.1", 2)], lambda *a: None, seed=seed,
                       keys=[bytes(SigningKey(seed).verify_key), bytes(SigningKey(b"\1" * 32).verify_key)])
    net = asyncio.run(make())
    assert all(isinstance(getattr(net, event), int) for event in _Transport.EVENTS)
    assert net.pending_connections == 0 and net.peer_connections == 0


def test_one_validator_cannot_queue_more_than_its_share_of_the_inbox(tmp_path):
    """A peer within its transport rate can still send faster than a busy core works: past
    INBOX_PER_PEER of its messages waiting, more are dropped and counted (inbox_full), and other
    validators' messages still get in; once the core has worked through them there is room again."""

    from consensus.messages import Vote
    from consensus.node import INBOX_PER_PEER, NodeConfig, NodeRunner
    config = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, app="kv", load="none")[0]
    node = NodeRunner(NodeConfig.load(config))
    try:
        vote = Vote(bytes(32), 1, 1, 1, bytes(64))
        for _ in range(INBOX_PER_PEER + 100):
            node._deliver(1, vote)
        node._deliver(2, vote)
        assert node.inbox.qsize() == INBOX_PER_PEER + 1 and node.core.counters["inbox_full"] == 100
        asyncio.run(_work_through(node))
        assert node.inbox.qsize() == 0 and node.queued == {1: 0, 2: 0}
        for _ in range(INBOX_PER_PEER):
            node._deliver(1, vote)
        assert node.inbox.qsize() == INBOX_PER_PEER and node.core.counters["inbox_full"] == 100
    finally:
        node.store.close()
        node.events.close()


async def _work_through(node):
    """The node's consensus loop until its inbox is empty."""
    task = asyncio.create_task(node._consensus())
    while node.inbox.qsize():
        await asyncio.sleep(0.01)
    task.cancel()
