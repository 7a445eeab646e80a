"""Four validator processes all SIGKILLed at once and started again from their stores (issue 22,
finding 4): the blocks their high QCs certify were stored before their votes left, so the chain
goes on; before, nobody held the block the persisted high QCs certify and nothing was proposed
again. Each restarts from the state snapshot in its store (issue 20) and replays only the blocks
after it."""
import re
import time

from consensus.localnet import Localnet


def _wait(net, until, timeout_s, what):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        time.sleep(0.25)
        net.poll_events()
        for i, p in net.procs.items():
            assert p.poll() is None, f"validator {i} exited with {p.returncode}: see {net.dir}/node{i}.log"
        if until(net.heights()):
            return net.heights()
    raise AssertionError(f"{what}: heights {net.heights()} after {timeout_s} s (logs in {net.dir})")


def test_four_processes_all_killed_together_commit_50_more_blocks(tmp_path):
    net = Localnet(4, 80, 10, "cpu", "accel", 0.0, str(tmp_path / "net"), base_timeout_ms=300.0, app="kv",
                   snapshot_every=10)
    try:
        for i in range(4):
            net.start(i)
        before = _wait(net, lambda h: min(h) >= 15, 120, "first 15 blocks")
        for i in range(4):
            net.kill(i)
        net.poll_events()
        top = max(net.heights())
        for i in range(4):
            net.start(i)
        after = _wait(net, lambda h: min(h) >= top + 50, 180, f"50 blocks after the restart at {top}")
        assert min(after) >= top + 50 and min(before) >= 15
    finally:
        net.stop()
    for i in range(4):  # the second start: from the newest snapshot (every 10 blocks), then the rest
        starts = re.findall(r"state at height (\d+): from (?:the snapshot at height (\d+)|the genesis), (\d+) block",
                            (net.dir / f"node{i}.log").read_text())
        assert len(starts) == 2 and starts[0] == ("0", "", "0"), starts
        height, snapshot, replayed = map(int, starts[1])
        # (a snapshot due at a multiple of 10 is of the newest block of the commit that reached it)
        assert height >= 15 and height - 10 <= snapshot <= height and replayed == height - snapshot, starts
    net.poll_events()
    # one chain: every validator committed the same block at each height
    chains = [{e["height"]: e["block_hash"] for e in ev if e["kind"] == "committed"} for ev in net.events.values()]
    for h in range(1, top + 50):
        assert len({c[h] for c in chains if h in c}) == 1, h
