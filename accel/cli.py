"""`accel info`: which backends run here and why the others do not.
`accel merkle-demo`: a Merkle root over many leaves on every available backend, timed."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import config, merkle
from .backends import Backend, probe


def cmd_info(args) -> int:
    cfg = config.get()
    print(f"configured backend: {cfg.backend}")
    for name, b in probe().items():
        if isinstance(b, Backend):
            kind = "GPU" if b.is_gpu else "CPU"
            print(f"  {name:7s} available  {kind}  {b.device}")
        else:
            print(f"  {name:7s} missing    {b}")
    from .backends import get_backend
    print(f"auto picks: {get_backend('auto').name}")
    return 0


def cmd_merkle(args) -> int:
    rng = np.random.default_rng(args.seed)
    leaves = rng.integers(0, 256, size=(args.leaves, 32), dtype=np.uint8)
    print(f"Merkle root over {args.leaves:,} random 32-byte leaves (seed {args.seed})")
    roots = {}
    for name, b in probe().items():
        if not isinstance(b, Backend):
            print(f"  {name:7s} skipped: {b}")
            continue
        merkle.merkle_root(leaves[:2], backend=b)  # compile / warm up outside the timing
        t0 = time.perf_counter()
        roots[name] = merkle.merkle_root(leaves, backend=b)
        dt = time.perf_counter() - t0
        print(f"  {name:7s} {dt * 1e3:9.1f} ms  {args.leaves / dt / 1e6:7.2f} M leaves/s  root {roots[name].hex()[:16]}…")
    if len(set(roots.values())) > 1:
        print("ERROR: backends disagree on the root", file=sys.stderr)
        return 1
    print(f"all {len(roots)} backends agree")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="accel", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="list backends and devices").set_defaults(fn=cmd_info)
    m = sub.add_parser("merkle-demo", help="time a Merkle root on every backend")
    m.add_argument("--leaves", type=int, default=1_000_000)
    m.add_argument("--seed", type=int, default=1)
    m.set_defaults(fn=cmd_merkle)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
