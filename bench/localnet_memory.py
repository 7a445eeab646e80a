"""Validator memory and restart time against the chain's length (issues 20 and 22): a localnet of
small blocks run to 2,000 committed blocks with state snapshots on; validator 0's resident memory
(VmRSS) at block 200 and at block 2,000, and validator 3 killed (SIGKILL) and started again at
each of the two heights, timed until its state is loaded and until it commits a new block.

Requirements: memory at 2,000 at most 1.2x memory at 200; restart at 2,000 at most 2x restart at
200. Prints and writes JSON (bench/localnet-memory-<date>.json, or --out).

    .venv/bin/python bench/localnet_memory.py [--app kv|clearing] [--blocks 2000] [--txs 5]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consensus.localnet import Localnet  # noqa: E402

RESTARTED = 3   # the validator killed and started again
MEASURED = 0    # the validator whose memory is sampled (never restarted)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_height(net: Localnet, height: int, timeout_s: float, who=None) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        net.poll_events()
        heights = net.heights()
        if min(heights[i] for i in (who if who is not None else range(net.validators))) >= height:
            return
        for i, p in net.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"validator {i} exited with {p.returncode}: see {net.dir}/node{i}.log")
        time.sleep(0.05)
    raise RuntimeError(f"heights {net.heights()} after {timeout_s} s, waiting for {height}")


def restart(net: Localnet, i: int, timeout_s: float) -> dict:
    """Kill validator i, start it again, and time it: until its log says its state is loaded
    (process start and imports included), the load itself as the node measured it, and until it
    commits a block it had not committed before."""
    net.kill(i)
    net.poll_events()
    top = net.heights()[i]
    log = net.dir / f"node{i}.log"
    seen = log.read_text().count("state at height")
    t0 = time.time()
    net.start(i)
    loaded = line = None
    deadline = t0 + timeout_s
    while time.time() < deadline:
        if loaded is None:
            starts = re.findall(r"state at height .*", log.read_text())
            if len(starts) > seen:
                loaded, line = time.time() - t0, starts[-1]
        net.poll_events()
        if loaded is not None and net.heights()[i] > top:
            m = re.search(r"state at height (\d+): from (?:the snapshot at height (\d+)|the genesis), (\d+) block"
                          r"\(s\) replayed \(([\d.]+) s\)", line)
            return {"height": int(m[1]), "snapshot_height": int(m[2] or 0), "replayed_blocks": int(m[3]),
                    "state_load_s": float(m[4]), "until_state_loaded_s": round(loaded, 3),
                    "until_next_commit_s": round(time.time() - t0, 3)}
        time.sleep(0.02)
    raise RuntimeError(f"validator {i} did not commit after its restart in {timeout_s} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--app", choices=["kv", "clearing"], default="kv")
    ap.add_argument("--blocks", type=int, default=2000)
    ap.add_argument("--early", type=int, default=200, help="the first measuring height (default 200)")
    ap.add_argument("--txs", type=int, default=5, help="transactions per block (default 5: small blocks)")
    ap.add_argument("--snapshot-every", type=int, default=100)
    ap.add_argument("--validation", choices=["accel", "software"], default="software")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--dir", help="the network's directory (default: a new temporary one)")
    ap.add_argument("--out", help=f"JSON report (default bench/localnet-memory-{date.today()}.json)")
    args = ap.parse_args()
    net = Localnet(4, args.blocks, args.txs, args.backend if args.validation == "accel" else None, args.validation,
                   0.0, args.dir, base_timeout_ms=300.0, app=args.app, rpc_port=None,
                   snapshot_every=args.snapshot_every)
    out = {"app": args.app, "validators": 4, "txs_per_block": args.txs, "validation": args.validation,
           "snapshot_every": args.snapshot_every, "base_timeout_ms": 300.0, "directory": str(net.dir)}
    t0 = time.time()
    try:
        for i in range(4):
            net.start(i)
        for label, height in (("early", args.early), ("late", args.blocks)):
            wait_height(net, height, 3600)
            out[f"{label}_height"] = net.heights()[MEASURED]
            out[f"{label}_rss_kib"] = rss_kib(net.procs[MEASURED].pid)
            out[f"{label}_rss_kib_all"] = {str(i): rss_kib(p.pid) for i, p in net.procs.items()}
            out[f"{label}_restart"] = restart(net, RESTARTED, 300)
            print(f"[{time.time() - t0:6.1f} s] height {out[f'{label}_height']}: validator {MEASURED} "
                  f"{out[f'{label}_rss_kib'] / 1024:.1f} MiB; validator {RESTARTED} restarted: "
                  f"{out[f'{label}_restart']}", flush=True)
    finally:
        net.stop()
    out["rss_ratio"] = round(out["late_rss_kib"] / out["early_rss_kib"], 3)
    out["restart_ratio"] = round(out["late_restart"]["until_state_loaded_s"] /
                                 out["early_restart"]["until_state_loaded_s"], 3)
    out["state_load_ratio"] = round(max(out["late_restart"]["state_load_s"], 0.01) /
                                    max(out["early_restart"]["state_load_s"], 0.01), 3)
    out["memory_ok"], out["restart_ok"] = out["rss_ratio"] <= 1.2, out["restart_ratio"] <= 2.0
    path = Path(args.out or Path(__file__).parent / f"localnet-memory-{date.today()}.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if not k.endswith("_all")}, indent=1))
    print(f"written to {path}")
    return 0 if out["memory_ok"] and out["restart_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
