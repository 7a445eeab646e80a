"""Session 14 fixes in the core and node (/tmp/s14/ops items 1, 5, 6): each test here failed before its fix."""
import pytest

from accel.config import ConfigError
from consensus.localnet import write_configs
from consensus.node import NodeConfig

pytestmark = pytest.mark.usefixtures("quiet_logs")


def _kv_file(tmp_path):
    path = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, app="kv", rpc_port=0)[0]
    assert 'app = "kv"' in path.read_text() and "sig_cache = true" in path.read_text()
    return path


# ---- ops #5: sig_cache is read by the clearing app only --------------------------------------------------
def test_sig_cache_with_kv_is_refused(tmp_path):
    path = _kv_file(tmp_path)
    NodeConfig.load(path)  # the default (true) is fine
    path.write_text(path.read_text().replace("sig_cache = true", "sig_cache = false"))
    with pytest.raises(ConfigError, match=r'sig_cache = False would not be read: only with app = "clearing"'):
        NodeConfig.load(path)


# ---- ops #6: a base_timeout_ms above Core's 60 s cap is the view's timeout, not the cap ------------------
def _first_timer(base_ms):
    from consensus.core import SetTimer
    from consensus.sim import Simulation
    sim = Simulation(n=4, base_timeout_ms=base_ms, validation="software")
    return [a.delay_ms for a in sim.nodes[1].core.start() if isinstance(a, SetTimer)][0]


def test_base_timeout_above_the_cap_is_in_force():
    assert _first_timer(1000.0) == 1000.0
    assert _first_timer(120_000.0) == 120_000.0  # was 60,000: silently capped


def test_doubling_stops_at_the_cap():
    from nacl.signing import SigningKey
    from consensus.core import Config
    keys = tuple(bytes(SigningKey(bytes([i + 1]) * 32).verify_key) for i in range(4))
    small, big = Config(0, keys, 1000.0), Config(0, keys, 120_000.0)
    assert [small.timeout_ms(k) for k in range(8)] == [1000.0, 2000.0, 4000.0, 8000.0, 16000.0, 32000.0,
                                                       60_000.0, 60_000.0]
    assert small.timeout_ms(10**6) == 60_000.0
    assert [big.timeout_ms(k) for k in (0, 1, 50)] == [120_000.0] * 3


# ---- ops #1: an idle network paces its empty blocks (empty_block_interval_ms) ------------------------------
DURATION_MS = 10_000.0
LINK_MAX_MS = 10.0  # sim.Link's default one-way delay is 1-10 ms


def _sim(interval, base=2000.0):
    from consensus.sim import Simulation
    return Simulation(n=4, base_timeout_ms=base, validation="software", empty_block_interval_ms=interval)


def test_an_idle_network_commits_about_one_block_per_interval():
    fast = _sim(0.0)
    fast.run(10**9, max_ms=DURATION_MS)
    assert min(len(n.committed) for n in fast.nodes) > 500  # (today's behaviour with 0: ~1,040 in 10 s)
    for base, interval in ((2000.0, 500.0), (1000.0, 400.0)):
        sim = _sim(interval, base)
        sim.run(10**9, max_ms=DURATION_MS)
        counts = [len(n.committed) for n in sim.nodes]
        # one block per interval and a vote's round trip: about DURATION / interval, not hundreds
        assert all(0.7 * DURATION_MS / interval <= c <= DURATION_MS / interval + 1 for c in counts), counts
        assert all(not n.core.timed_out for n in sim.nodes), "a view timed out on an idle network"
        assert all(len(b.txs) == 0 for n in sim.nodes for b, _, _ in n.committed)


def _waiting_leader(sim):
    return next((n for n in sim.nodes if n.core.idle_view == n.core.view
                 and n.core.view not in n.core.proposed and n.core.cfg.leader(n.core.view) == n.index), None)


def test_a_transaction_reaching_a_waiting_leader_is_proposed_at_once():
    sim = _sim(500.0)
    seen = {}

    def submit(s):
        seen["leader"] = _waiting_leader(s)
        seen["at"] = s.now
        s.load(1)
    sim.at(3_210.0, submit)
    sim.run(10**9, max_ms=5_000.0)
    assert seen["leader"] is not None  # (idle: the leader of the view waits)
    blocks = [b for b, _, _ in sim.nodes[0].committed if len(b.txs)]
    assert len(blocks) == 1 and blocks[0].proposer == seen["leader"].index
    assert sim.proposed_at[blocks[0].id] == seen["at"]  # no wait


def _tx_finality(interval, at):
    sim = _sim(interval)
    sim.at(at, lambda s: s.load(1))
    sim.run(10**9, max_ms=at + 3_000.0)
    done, heights = [], set()
    for n in sim.nodes:
        block, when = next((b, t) for b, t, _ in n.committed if len(b.txs))
        done.append(when - at)
        heights.add(block.height)
    (height,) = heights
    # the block of the transaction and its two successors (its commit, and the QC telling the others)
    chain = {b.height: b for b, _, _ in sim.nodes[0].committed}
    proposed = [sim.proposed_at[chain[h].id] for h in (height, height + 1, height + 2)]
    return max(done), proposed


@pytest.mark.parametrize("at", [1_000.0, 1_234.5, 2_750.0])
def test_finality_is_unchanged_by_the_interval(at):
    base, _ = _tx_finality(0.0, at)
    paced, proposed = _tx_finality(500.0, at)
    assert abs(paced - base) <= LINK_MAX_MS, (paced, base)
    # the successors of a block of transactions are proposed without waiting (a vote's round trip)
    assert all(b - a <= 3 * LINK_MAX_MS for a, b in zip(proposed, proposed[1:])), proposed


def test_an_interval_the_views_would_time_out_in_is_refused(tmp_path):
    from consensus.core import Config
    keys = Simulation_keys()
    Config(0, keys, 1000.0, empty_block_interval_ms=499.0)
    for bad in (500.0, 2000.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="empty_block_interval_ms"):
            Config(0, keys, 1000.0, empty_block_interval_ms=bad)
    path = _kv_file(tmp_path)
    text = path.read_text().replace("[node]\n", "[node]\nempty_block_interval_ms = 500\n", 1)
    path.write_text(text)
    with pytest.raises(ConfigError, match=r":2: \[node\] empty_block_interval_ms 500 must be below half of "
                                          r"base_timeout_ms \(500\)"):
        NodeConfig.load(path)
    path.write_text(text.replace("empty_block_interval_ms = 500", "empty_block_interval_ms = 400"))
    assert NodeConfig.load(path).empty_block_interval_ms == 400.0
    path.write_text(text.replace("empty_block_interval_ms = 500", "empty_block_interval_ms = -1"))
    with pytest.raises(ConfigError, match="empty_block_interval_ms"):
        NodeConfig.load(path)


def Simulation_keys():
    from nacl.signing import SigningKey
    return tuple(bytes(SigningKey(bytes([i + 1]) * 32).verify_key) for i in range(4))


def test_the_node_tells_a_waiting_leader_of_admitted_transactions(tmp_path):
    from consensus.core import ProposeTimer
    from consensus.node import NodeRunner
    path = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, app="kv", load="none")[1]
    path.write_text(path.read_text().replace("[node]\n", "[node]\nempty_block_interval_ms = 400\n", 1))
    node = NodeRunner(NodeConfig.load(path))
    try:
        actions = node.core.start()  # validator 1 leads view 1, with nothing to propose
        assert ProposeTimer(1, 400.0) in actions and node.core.idle_view == node.core.view == 1
        assert node.inbox.qsize() == 0
        node.submitted += 1
        node.submitted += 2
        assert node.inbox.qsize() == 1 and node.inbox.get_nowait() == ("txs",)
    finally:
        node.close()


def test_testnet_paces_the_empty_blocks_of_an_idle_network(tmp_path):
    from consensus.localnet import write_network
    hosts = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
    for base, load, want in ((1000.0, "none", 400.0), (5000.0, "none", 500.0), (1000.0, "builtin", 0.0)):
        out = tmp_path / f"{base}-{load}"
        path = write_network(out, hosts, base_timeout_ms=base, load=load)[0]
        text = path.read_text()
        assert ("empty_block_interval_ms" in text) == bool(want)
        if want:
            assert f"empty_block_interval_ms = {want}\n" in text
        assert NodeConfig.load(path).empty_block_interval_ms == want  # (below base_timeout_ms / 2)


# ---- a proposal's leader signature is checked alone, before its transactions' batch ------------------------
def test_a_proposal_its_leader_never_signed_costs_one_signature():
    from consensus.core import Broadcast, Rejected, Send
    from consensus.messages import Proposal, Vote
    from consensus.sim import Simulation
    sim = Simulation(n=4, validation="software", txs_per_block=50)
    sim.load(50)
    leader, victim = sim.nodes[1].core, sim.nodes[0].core  # validator 1 leads view 1 (2 the next)
    real = next(a.msg for a in leader.start() if isinstance(a, Broadcast) and isinstance(a.msg, Proposal))
    assert len(real.block.txs) == 50
    victim.start()
    batches = []
    verify_all = victim.app.verifier.verify_all

    def counted(keys, bodies, sigs, certs=None):
        batches.append(len(sigs) + (len(certs[0]) if certs else 0))
        return verify_all(keys, bodies, sigs, certs)
    victim.app.verifier.verify_all = counted
    forged = Proposal(real.block, bytes(64))  # sent by validator 3 as if validator 1's
    out = victim.handle(3, forged)
    assert [a.reason for a in out if isinstance(a, Rejected)] == ["the proposer's signature does not verify"]
    assert batches == [1]  # (was one batch of the 50 transactions' signatures and the proposer's)
    assert real.block.id not in victim.blocks
    out = victim.handle(1, real)  # the leader's own still gets its vote
    assert real.block.id in victim.blocks and any(isinstance(a, Send) and isinstance(a.msg, Vote) for a in out)
