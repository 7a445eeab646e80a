"""The consensus loop serves its peers in turn (s13 cons2 3): one inbox FIFO for all peers let a
Byzantine validator's block requests (2,000 frames a second, ~1.7 ms of the core each) hold every
honest vote, proposal and timeout behind up to INBOX_PER_PEER of them, seconds past a view's timeout."""
import asyncio

import pytest

from consensus import messages as m
from consensus.localnet import write_configs


def _flood_then_vote(put, flood=1_000):
    for k in range(flood):
        put(1, m.BlockRequest(bytes(32), 1 + k % 80, 64))
    put(2, m.Vote(bytes(32), 1, 1, 2, bytes(64)))


def test_a_flood_delays_another_peers_message_by_one_of_its_own():
    from consensus.inbox import FairInbox
    inbox = FairInbox()
    _flood_then_vote(lambda peer, msg: inbox.put((peer, msg), peer))
    assert inbox.qsize() == 1_001
    first = [inbox.get_nowait() for _ in range(2)]
    assert [p for p, _ in first] == [1, 2] and isinstance(first[1][1], m.Vote)
    assert [inbox.get_nowait()[0] for _ in range(999)] == [1] * 999  # the flood's own order is kept
    assert inbox.qsize() == 0
    with pytest.raises(asyncio.QueueEmpty):
        inbox.get_nowait()


def test_peers_in_turn_each_peers_messages_in_order_timers_after_what_came_before_them():
    """A timer is served after the messages that came before it (a QC waiting while the core was
    busy moves the view before the view's timer times it out), a message that came after it
    does not hold it."""
    from consensus.inbox import FairInbox
    inbox = FairInbox()
    for i in range(3):
        inbox.put(("a", i), 1)
    inbox.put(("b", 0), 2)
    inbox.put(("timer", 7))
    inbox.put(("c", 0), 3)
    inbox.put(("c", 1), 3)
    inbox.put(("a", 3), 1)
    inbox.put(("timer", 8))
    got = [inbox.get_nowait() for _ in range(inbox.qsize())]
    assert got == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("c", 1), ("a", 2), ("timer", 7),
                   ("a", 3), ("timer", 8)]
    inbox.put(("b", 1), 2)  # a peer whose messages ran out is served again once it sends more
    inbox.put(("a", 4), 1)
    assert [inbox.get_nowait() for _ in range(2)] == [("b", 1), ("a", 4)]


def test_a_flood_holds_a_timer_back_by_timer_wait_of_its_messages_at_most():
    from consensus.inbox import TIMER_WAIT, FairInbox
    inbox = FairInbox()
    for i in range(1000):
        inbox.put(("request", i), 1)
    inbox.put(("vote",), 2)
    inbox.put(("timer", 5))
    got = [inbox.get_nowait() for _ in range(TIMER_WAIT + 2)]
    assert got[1] == ("vote",) and got[TIMER_WAIT + 1] == ("timer", 5)
    assert ("timer", 5) not in got[:TIMER_WAIT + 1]


def test_get_waits_for_a_message():
    from consensus.inbox import FairInbox

    async def scenario():
        inbox = FairInbox()
        reader = asyncio.create_task(inbox.get())
        await asyncio.sleep(0)
        assert not reader.done()
        inbox.put("vote", 2)
        return await reader
    assert asyncio.run(scenario()) == "vote"
    assert asyncio.run(scenario()) == "vote"  # and in another event loop


class _Handled(Exception):
    pass


def _run_loop(node, record, count):
    """NodeRunner's consensus loop until `count` messages were handled; record(sender, msg) each."""
    handled = []

    def take(sender, msg, *_):
        handled.append((sender, type(msg).__name__))
        if len(handled) == count:
            raise _Handled
        return []
    record(take)
    with pytest.raises(_Handled):
        asyncio.run(node._consensus())
    return handled


@pytest.fixture
def node(tmp_path):
    from consensus.node import NodeConfig, NodeRunner
    config = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, app="kv", load="none")[0]
    runner = NodeRunner(NodeConfig.load(config))
    yield runner
    runner.close()


def test_the_node_handles_a_vote_queued_behind_a_flood_second(node):
    _flood_then_vote(node._deliver)
    handled = _run_loop(node, lambda take: setattr(node, "_handle", take), 2)
    assert handled == [(1, "BlockRequest"), (2, "Vote")]
    assert node.queued == {1: 999, 2: 0} and node.inbox.qsize() == 999


def test_a_node_taking_a_snapshot_serves_its_peers_in_turn_too(node):
    from types import SimpleNamespace
    node.sync = SimpleNamespace(done=None, from_genesis=False, on_timer=lambda view: [])
    _flood_then_vote(node._deliver)
    handled = _run_loop(node, lambda take: setattr(node.sync, "handle", take), 2)
    assert handled == [(1, "BlockRequest"), (2, "Vote")]


def test_the_simulation_serves_a_busy_validators_peers_in_turn_too():
    """Simulation(compute=True) queues what reaches a busy validator as the node does: the reviewer's
    flood probe ran on a FIFO there. All arrive at once, before the validator takes any."""
    from consensus.core import Core
    from consensus.sim import Simulation
    handled = []

    class Recording(Core):
        def handle(self, sender, msg):
            if self.cfg.me == 0:
                handled.append((sender, type(msg).__name__))
                if len(handled) == 2:
                    raise _Handled
            return super().handle(sender, msg)

    sim = Simulation(n=4, seed=1, compute=True, make_core=Recording)
    _flood_then_vote(lambda peer, msg: sim.inject(0.0, "v0", peer, msg))
    with pytest.raises(_Handled):
        sim.run(blocks=1)
    assert handled == [(1, "BlockRequest"), (2, "Vote")]
