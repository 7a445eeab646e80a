"""Consensus core and drivers under a lagging validator, Byzantine peers, loss and restarts (review
s6). Every test is a deterministic simulation (or a node driven by hand) that failed before its fix."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

from consensus import messages as m
from consensus.sim import Simulation


def _stalled(seed: int, stall_ms: float = 5000.0, end_ms: float = 8000.0, rate: float = 100.0):
    """v3's links carry nothing for stall_ms (frames queue at the senders, the queue bounded, as a
    hung TCP connection), then rate bytes a millisecond; the others go on meanwhile. The node's
    bounds scaled to the simulation's small blocks: a 3.5 KB proposal here stands for a 2 MB one,
    so an answer is cut at about 4 blocks (core.RANGE_BYTES) and a queue holds 32."""
    sim = Simulation(n=4, seed=seed, txs_per_block=20, base_timeout_ms=50, validation="software")
    sim.load(3000)
    sim.slow_link("v3", rate, stall_ms, answer_backlog=14_000, request_backlog=98_000, queue_bytes=112_000)
    mark = {}
    sim.at(stall_ms, lambda s: mark.setdefault("height", s._node("v0").core.committed.height))
    sim.run(blocks=10**9, max_ms=end_ms)
    return sim, mark["height"]


def _agree(sim):
    chains = list(sim.chains().values())
    for a in chains:
        for b in chains:
            assert a[:min(len(a), len(b))] == b[:min(len(a), len(b))]


def test_a_validator_whose_link_stalled_catches_up_while_the_others_go_on(monkeypatch):
    """A validator whose connections hung for 5 s (the others committed 50 blocks meanwhile) never
    caught up: its block requests were refused while the answers queued for it were over the
    backlog, or lost with the frames a full queue dropped, and an unanswered fetch was forgotten only
    when a view of its own timed out; with the others forming QCs and TCs that moved it on, none did,
    so it held MAX_FETCHES of them for good (fetches_full), parked the chain's proposals as they came
    and stayed at height 46 (every seed) while the others reached 82. Now a fetch unanswered for
    FETCH_VIEWS views is asked of the next validator (core._refetch)."""
    import consensus.core as core
    monkeypatch.setattr(core, "RANGE_BYTES", 14_000)  # (scaled with the blocks, see _stalled)
    for seed in (0, 1):
        sim, behind = _stalled(seed)
        v0, v3 = sim._node("v0").core, sim._node("v3").core
        assert v0.committed.height >= behind + 20  # the others went on
        assert v3.committed.height >= max(behind, v0.committed.height - 8), (v3.committed.height, v0.committed.height)
        assert v3.counters["fetch_retried"] > 0
        _agree(sim)


def _runner(tmp_path):
    from consensus.localnet import write_configs
    from consensus.node import NodeConfig, NodeRunner
    config = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, app="kv", load="none")[0]
    return NodeRunner(NodeConfig.load(config))


def _frame(kind: int, size: int) -> bytes:
    """A frame of `size` bytes whose type byte is `kind` (only the queues' accounting reads it)."""
    return (size - 4).to_bytes(4, "big") + bytes([m.VERSION, kind]) + bytes(size - 6)


def test_catch_up_answers_are_bounded_apart_from_the_proposals_queued_for_a_peer(tmp_path):
    """A peer's block requests were refused while RANGE_BYTES of anything waited to go to it: a
    slow peer with a few large proposals queued (4 blocks of 2 MB) had every catch-up request
    dropped, and waited for a retry. Now answers are bounded apart (node.request_admitted): the
    proposals, votes and timeouts queued for a peer hold back none of its requests below
    REQUEST_BACKLOG; an answer waiting for it (ANSWER_BACKLOG bytes) still does, so a Byzantine
    peer that asks and never reads costs at most one range."""
    from consensus import node as node_module
    from consensus.node import ANSWER_BACKLOG, REQUEST_BACKLOG
    from consensus.net import Limits
    assert ANSWER_BACKLOG == m.RANGE_BYTES and REQUEST_BACKLOG + ANSWER_BACKLOG <= Limits().queue_bytes
    node = _runner(tmp_path)
    try:
        served = []
        handle = node.core.handle
        node.core.handle = lambda sender, msg: served.append(sender) or handle(sender, msg)
        # 8 MiB of proposals wait for 1; an answer (and a proposal) for 2; a snapshot chunk for 3, under the bound
        node.net = SimpleNamespace(queued_bytes={1: 4 * (2 << 20), 2: ANSWER_BACKLOG + 1024, 3: 1024},
                                   answer_bytes={1: 0, 2: ANSWER_BACKLOG, 3: 1024}, send=lambda *a: None)
        for peer in (1, 2, 3):
            node._deliver(peer, m.BlockRequest(node.core.genesis.id, 1, m.MAX_RANGE))
        asyncio.run(_work_through(node))
        assert served == [1, 3] and node.core.counters["request_backlog"] == 1
        assert node_module.request_admitted(REQUEST_BACKLOG - 1, 0)
        assert not node_module.request_admitted(REQUEST_BACKLOG, 0)
    finally:
        node.store.close()
        node.events.close()


def test_the_network_counts_the_answers_queued_for_a_peer_as_it_sends_them():
    """net.Network counts the block responses and snapshot chunks among a peer's queued frames
    (answer_bytes) as send queues them and its writer takes them off to the peer."""
    from nacl.signing import SigningKey

    from consensus.net import Network
    seeds = [bytes([i + 1]) * 32 for i in range(4)]
    keys = [bytes(SigningKey(s).verify_key) for s in seeds]
    sim = Simulation(n=4, seed=0, validation="software")
    sim.load(40)
    sim.run(blocks=3)
    core = sim._node("v0").core
    answer = m.BlockResponse(tuple(core.proposals[i] for i in core.chain[1:3]))
    vote = m.Vote(bytes(32), 1, 1, 1, bytes(64))

    async def scenario():
        net = Network(0, [("127.0.0.1", 1)] * 4, lambda *a: None, seed=seeds[0], keys=keys)
        net.send(1, vote)
        net.send(1, answer)
        net.send(2, answer)
        queued = dict(net.answer_bytes)
        written = []
        wrote_two = asyncio.Event()

        class Writer:
            def write(self, frame):
                written.append(frame)
                if len(written) == 2:
                    wrote_two.set()

            async def drain(self):
                await asyncio.sleep(0)

            def close(self):
                pass

        async def connect(peer):
            return Writer() if peer == 1 else await asyncio.sleep(3600)
        net._connect = connect
        tasks = [asyncio.create_task(net._writer(i)) for i in (1, 2)]
        await asyncio.wait_for(wrote_two.wait(), 5)
        for t in tasks:
            t.cancel()
        return queued, dict(net.answer_bytes), written
    queued, after, written = asyncio.run(scenario())
    assert queued[1] == queued[2] == len(m.encode(answer)) and queued[3] == 0
    assert written == [m.encode(vote), m.encode(answer)]
    assert after[1] == 0 and after[2] == len(m.encode(answer))


async def _work_through(node):
    task = asyncio.create_task(node._consensus())
    while node.inbox.qsize():
        await asyncio.sleep(0.01)
    task.cancel()
