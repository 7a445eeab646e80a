"""What an operator sees of the core's drop counters (Prometheus) and of a broken store or state
(one line, exit status 1, no traceback): issue 22."""
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

from prometheus_client import generate_latest

from consensus.localnet import write_configs
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
    (tmp_path / "node0").mkdir()
    store = Store(tmp_path / "node0" / "validator.db")
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
    import asyncio

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
