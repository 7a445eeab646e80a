"""A stranger floods validator 0 of a 4-validator localnet over TCP for a while, at a bounded rate
(issue 22): does validator 0's memory stay under 2x, and does the network go on committing?

    python bench/stranger_flood.py [--seconds 60] [--baseline 15] [--rate 50] [--idle 200]
                                   [--txs 100] [--delay-ms 5] [--dir DIR] [--json FILE]

The stranger holds no validator key. Kinds of connection, each opened at most --rate times a
second (the idle pool too) and at most 200 at once per kind:
  garbage      64 KiB of random bytes
  handshake    the handshake with a validator's index (1 to 3) and a random signature: one
               signature check each for validator 0
  huge_prefix  the old transport's opening (index 1) and a 64 MiB length prefix, then 64 KiB of it
  frames       the old opening, then 100 well-formed frames: unsigned proposals of unknown parents
               (parked, before issue 22), votes and timeouts with bad signatures, block requests
  idle         a pool of --idle connections that send nothing, reopened when closed
First the network runs --baseline seconds without the flood (the heights it commits then are the
comparison), then --seconds with it. Printed: validator 0's RSS (VmRSS) before the flood, at its
peak and after, the other validators' (not flooded) alike; heights each validator committed in
both periods; per kind what the stranger did and how validator 0 answered (a handshake answered
with a listener proof would be a stranger admitted: there must be none); validator 0's metrics of
dropped input."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import struct
import sys
import time
import urllib.request
from pathlib import Path

from consensus import messages
from consensus.localnet import Localnet, _free_ports
from consensus.node import NodeConfig

KINDS = ("garbage", "handshake", "huge_prefix", "frames", "idle")
IN_FLIGHT = 200       # connections of one kind open at once
GIVE_UP_S = 15.0      # the stranger closes a connection the validator kept this long (over its 10 s timeout)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def forged_frames(count: int) -> bytes:
    """Well-formed frames no validator signed."""
    rng = random.Random(1)
    qc = messages.QC(rng.randbytes(32), 5, 4, (1, 2, 3), rng.randbytes(192))
    out = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            block = messages.Block(10 + i, 5 + i, rng.randbytes(32), 1, rng.randbytes(32), rng.randbytes(32),
                                   rng.randbytes(32), messages.Txs.empty(), qc)
            msg = messages.Proposal(block, rng.randbytes(64))
        elif kind == 1:
            msg = messages.Vote(rng.randbytes(32), 10 + i, 5 + i, 1 + i % 3, rng.randbytes(64))
        elif kind == 2:
            msg = messages.Timeout(10 + i, qc, 1 + i % 3, rng.randbytes(64))
        else:
            msg = messages.BlockRequest(rng.randbytes(32), 1, messages.MAX_RANGE)
        out.append(messages.encode(msg))
    return b"".join(out)


class Stranger:
    def __init__(self, address: tuple[str, int], rate: float, idle: int):
        self.address, self.rate, self.idle = address, rate, idle
        self.stats = {k: {"opened": 0, "refused": 0, "closed_by_validator": 0, "kept_open_by_validator": 0,
                          "proofs_received": 0, "bytes_sent": 0} for k in KINDS}
        self.open = {k: 0 for k in KINDS}
        self.frames = forged_frames(100)

    async def run(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(*(self._kind(k, until) for k in KINDS))

    async def _kind(self, kind: str, until: float) -> None:
        tasks = set()
        limit = self.idle if kind == "idle" else IN_FLIGHT
        while time.monotonic() < until:
            if self.open[kind] < limit:
                t = asyncio.create_task(self._one(kind))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            await asyncio.sleep(1.0 / self.rate)
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, kind: str) -> None:
        s = self.stats[kind]
        try:
            reader, writer = await asyncio.open_connection(*self.address)
        except OSError:
            s["refused"] += 1
            return
        s["opened"] += 1
        self.open[kind] += 1
        try:
            if kind == "garbage":
                payload = os.urandom(64 << 10)
            elif kind == "handshake":
                await reader.readexactly(38)
                payload = b"AVN1" + struct.pack(">H", random.randint(1, 3)) + os.urandom(96)
            elif kind == "huge_prefix":
                payload = struct.pack(">HI", 1, messages.MAX_MESSAGE) + os.urandom(64 << 10)
            elif kind == "frames":
                payload = struct.pack(">H", 1) + self.frames
            else:
                payload = b""
            writer.write(payload)
            s["bytes_sent"] += len(payload)
            async with asyncio.timeout(GIVE_UP_S):
                while chunk := await reader.read(1 << 16):
                    if kind == "handshake" and len(chunk) >= 64:
                        s["proofs_received"] += 1
            s["closed_by_validator"] += 1
        except TimeoutError:
            s["kept_open_by_validator"] += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            s["closed_by_validator"] += 1
        finally:
            self.open[kind] -= 1
            writer.close()


def scrape(url: str, names: tuple[str, ...]) -> dict:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {line.split(" ")[0]: float(line.split(" ")[-1]) for line in text.splitlines()
            if line.startswith(names)}


async def measure(net: Localnet, seconds: float, stranger: Stranger | None) -> dict:
    """Heights at the start and end of the period, and every validator's RSS then and at its peak."""
    pids = [net.procs[i].pid for i in range(net.validators)]
    net.poll_events()
    start_heights, start_rss = net.heights(), [rss_kib(p) for p in pids]
    peak = list(start_rss)
    flood = asyncio.create_task(stranger.run(seconds)) if stranger else None
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        await asyncio.sleep(0.5)
        peak = [max(a, rss_kib(p)) for a, p in zip(peak, pids)]
        for i, p in net.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"validator {i} exited with status {p.returncode}; see {net.dir}/node{i}.log")
    if flood:
        await flood
    net.poll_events()
    end = net.heights()
    return {"seconds": seconds, "committed": [b - a for a, b in zip(start_heights, end)], "heights_at_end": end,
            "rss_kib": {"before": start_rss, "peak": peak, "after": [rss_kib(p) for p in pids]}}


async def scenario(args) -> dict:
    metrics = _free_ports(1)[0]
    # the kv app: its built-in load has no end (the clearing market's is a file of a given length)
    net = Localnet(4, 0, args.txs, "cpu", "accel", args.delay_ms, args.dir, app="kv", metrics_port=metrics,
                   rpc_port=None)
    try:
        for i in range(4):
            net.start(i)
        deadline = time.monotonic() + 60
        while min(net.heights()) < 3:  # every validator up and committing
            if time.monotonic() > deadline:
                raise RuntimeError(f"the network did not start: heights {net.heights()}; see {net.dir}")
            await asyncio.sleep(0.25)
            net.poll_events()
        baseline = await measure(net, args.baseline, None) if args.baseline else None
        stranger = Stranger(NodeConfig.load(net.configs[0]).listen, args.rate, args.idle)
        flood = await measure(net, args.seconds, stranger)
        dropped = scrape(f"http://127.0.0.1:{metrics}/metrics", ("accel_input_dropped", "accel_duplicate_index"))
        return {"directory": str(net.dir), "app": "kv", "txs_per_block": args.txs, "delay_ms": args.delay_ms,
                "rate_per_kind": args.rate, "idle_pool": args.idle, "baseline": baseline, "flood": flood,
                "stranger": stranger.stats, "validator0_metrics": dropped}
    finally:
        net.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the flood (default 60)")
    ap.add_argument("--baseline", type=float, default=15.0, help="seconds without the flood first (default 15)")
    ap.add_argument("--rate", type=float, default=50.0, help="connections a second, per kind (default 50)")
    ap.add_argument("--idle", type=int, default=200, help="idle connections held at once (default 200)")
    ap.add_argument("--txs", type=int, default=100, help="transactions per block (default 100)")
    ap.add_argument("--delay-ms", type=float, default=5.0, help="one-way delay between validators (default 5)")
    ap.add_argument("--dir", help="the network's directory (default: a new temporary one)")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args(argv)
    result = asyncio.run(scenario(args))
    rss = result["flood"]["rss_kib"]
    print(f"validator 0 RSS: {rss['before'][0] / 1024:.1f} MiB before the flood, peak {rss['peak'][0] / 1024:.1f}, "
          f"after {rss['after'][0] / 1024:.1f} ({rss['peak'][0] / rss['before'][0]:.2f}x at the peak)")
    for i in range(1, 4):
        print(f"validator {i} RSS (not flooded): {rss['before'][i] / 1024:.1f} MiB before, peak "
              f"{rss['peak'][i] / 1024:.1f}, after {rss['after'][i] / 1024:.1f}")
    if result["baseline"]:
        print(f"committed in {args.baseline:g} s without the flood: {result['baseline']['committed']}")
    print(f"committed in {args.seconds:g} s of flood: {result['flood']['committed']} "
          f"(heights at the end {result['flood']['heights_at_end']})")
    print("stranger, per kind:")
    for kind, s in result["stranger"].items():
        print(f"  {kind:12s} " + ", ".join(f"{k} {v:,}" for k, v in s.items()))
    print("validator 0 metrics:", result["validator0_metrics"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
