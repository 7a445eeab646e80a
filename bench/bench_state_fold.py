"""A block's snapshot and state root, block after block, against the size of the clearing state:
the worst block as well as the median (the versioned state's merges, ledger_state, are work some
block pays; a validator's block validation waits on it, so its tail matters, not only its mean).

Over `--accounts` funded accounts (consensus.bench.add_accounts, as `accel validate-bench --app
clearing --accounts N` builds them), `--blocks` blocks, each a snapshot of the last one, `--per-block`
deposits to accounts taken in turn (no recent block touched them: the most a block can freeze
into the layers), then its state root. Timed: snapshot + state root, not the deposits, in this
process's CPU time (time.process_time: the machine's other processes do not count; a block that
waits on memory does).

    python bench/bench_state_fold.py [--accounts 500000] [--blocks 500] [--per-block 1000] [--json FILE]

Prints the median, 99th percentile, worst block and mean (CPU ms), the blocks over 5x the median,
and the most entries any one block's snapshot + root copied or sorted (ledger_state.entries_copied)."""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import statistics
import sys
import time

# Before OpenMP starts (accel's C fallback): its idle threads spin by default, and this process's
# CPU time is what is timed.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import consensus.apps.ledger_state as ledger_state  # noqa: E402
from accel.cli import _positive  # noqa: E402
from consensus.apps.clearing_load import genesis_market  # noqa: E402
from consensus.bench import add_accounts  # noqa: E402
from consensus.verify import Verifier  # noqa: E402


def run(accounts: int, blocks: int, per_block: int) -> dict:
    sha = Verifier("accel", "cpu").sha256_rows
    c = genesis_market("cpu")
    add_accounts(c, accounts)
    c.root()
    keys = [hashlib.sha256(b"bulk account %d" % i).digest() for i in range(accounts - accounts % 2)]
    at, times, copied = 0, [], []
    gc.collect()
    gc.disable()  # (a collection's pause is not the state's)
    try:
        for _ in range(blocks):
            count = ledger_state.entries_copied
            t0 = time.process_time()
            c = c.snapshot()
            c.begin_block()
            t1 = time.process_time()
            for _ in range(per_block):
                k = keys[at % len(keys)]
                at += 1
                c.deposit(k, c.accounts[k].nonce, "USD", 1)
            t2 = time.process_time()
            c.state_root(sha)
            t3 = time.process_time()
            times.append((t1 - t0 + t3 - t2) * 1e3)
            copied.append(ledger_state.entries_copied - count)
    finally:
        gc.enable()
    med = statistics.median(times)
    return {"accounts": accounts, "blocks": blocks, "per_block": per_block,
            "median_ms": med, "p99_ms": sorted(times)[int(0.99 * (len(times) - 1))], "max_ms": max(times),
            "mean_ms": statistics.mean(times), "over_5x_median": sum(t > 5 * med for t in times),
            "max_entries_copied": max(copied), "median_entries_copied": statistics.median(copied)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accounts", type=_positive, default=500_000, help="funded accounts (default 500,000)")
    p.add_argument("--blocks", type=_positive, default=500, help="blocks timed (default 500)")
    p.add_argument("--per-block", type=_positive, default=1000, help="deposits a block (default 1,000)")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    r = run(args.accounts, args.blocks, args.per_block)
    print(f"{r['accounts']:,} accounts, {r['blocks']} blocks of {r['per_block']:,} deposits: snapshot + root (CPU) "
          f"median {r['median_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, worst {r['max_ms']:.1f} ms, mean "
          f"{r['mean_ms']:.2f} ms, {r['over_5x_median']} blocks over 5x the median; entries copied a block: "
          f"median {r['median_entries_copied']:,}, most {r['max_entries_copied']:,}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(r, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
