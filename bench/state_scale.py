"""Block validation and proposal against the size of the clearing state (issue 20): the same
10,000-transaction block (`accel validate-bench --app clearing`) over states of 1,000 traders
plus N more funded accounts holding positions, accelerated and software-only, each point in a
fresh process (one state in memory at a time; the C fallback timed where OpenCL never started).

    python bench/state_scale.py [--accounts 0,10000,100000,1000000] [--modes cpu,software]
                                [--txs 10000] [--runs 3] [--json FILE] [--png FILE]

Prints a table (stages in ms, the ratio of each total to the smallest state's), writes the JSON
and a plot of validation and proposal time against the number of accounts."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

STAGES = ("signatures", "tx_root", "execute", "margin", "state_root", "total")


def one(accounts: int, mode: str, txs: int, runs: int) -> dict:
    args = ["--validation", "software"] if mode == "software" else ["--backend", mode]
    out = subprocess.run([sys.executable, "-m", "accel.cli", "validate-bench", "--app", "clearing", "--txs", str(txs),
                          "--runs", str(runs), "--accounts", str(accounts), "--json", *args],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout) | {"mode": mode}


def plot(results: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for mode in sorted({r["mode"] for r in results}):
        rows = sorted((r for r in results if r["mode"] == mode), key=lambda r: r["accounts"])
        n = [r["accounts"] for r in rows]
        ax.plot(n, [r["validation_ms"]["total"] for r in rows], "o-", label=f"validate, {mode}")
        ax.plot(n, [r["validation_ms"]["total"] - r["validation_ms"]["signatures"] for r in rows], "o:",
                label=f"validate without signatures, {mode}")
        ax.plot(n, [r["propose_ms"] for r in rows], "s--", label=f"propose, {mode}")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("accounts in the clearing state")
    ax.set_ylabel("ms per 10,000-transaction block")
    ax.set_title("Block validation and proposal against state size")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accounts", default="0,10000,100000,1000000", help="extra accounts per point")
    p.add_argument("--modes", default="cpu,software", help="accel backends and/or software")
    p.add_argument("--txs", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--png", help="write the plot here")
    args = p.parse_args(argv)
    results = []
    for mode in args.modes.split(","):
        for n in (int(x) for x in args.accounts.split(",")):
            print(f"{mode}: {n:,} more accounts ...", file=sys.stderr, flush=True)
            results.append(one(n, mode, args.txs, args.runs))
    print("| mode | accounts | " + " | ".join(STAGES) + " | propose | total vs smallest |")
    print("|---|---:|" + "---:|" * (len(STAGES) + 2))
    for mode in args.modes.split(","):
        rows = [r for r in results if r["mode"] == mode]
        base = rows[0]["validation_ms"]["total"]
        for r in rows:
            ms = r["validation_ms"]
            print(f"| {mode} | {r['accounts']:,} | " + " | ".join(f"{ms[s]:.1f}" for s in STAGES)
                  + f" | {r['propose_ms']:.1f} | {ms['total'] / base:.2f}x |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    if args.png:
        plot(results, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
