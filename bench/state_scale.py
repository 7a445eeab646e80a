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

from accel.cli import _accounts, _block_size, _count, _positive, _report_path, _runnable_modes, comma_list

MODES = ("cpu", "opencl", "cuda", "software")
STAGES = ("signatures", "tx_root", "execute", "margin", "state_root", "total")


def _mode(text: str) -> str:
    if text not in MODES:
        raise argparse.ArgumentTypeError(f"not a mode ({', '.join(MODES)})")
    return text


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
    # every value checked before the first point (each bad one was a traceback, some minutes in)
    p.add_argument("--accounts", type=comma_list(_count), default="0,10000,100000,1000000",
                   help="extra accounts per point (default 0,10000,100000,1000000)")
    p.add_argument("--modes", type=comma_list(_mode), default="cpu,software",
                   help="accel backends (cpu, opencl, cuda) and/or software (default cpu,software)")
    p.add_argument("--txs", type=_positive, default=10_000, help="transactions in the block (default 10,000)")
    p.add_argument("--runs", type=_positive, default=3, help="timed runs per point (default 3)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--png", help="write the plot here")
    args = p.parse_args(argv)
    try:
        _block_size("clearing", "--txs", args.txs)
        for n in args.accounts:
            _accounts(n)
        for flag in ("json", "png"):  # before the run: a bad path lost its results at the end
            _report_path(getattr(args, flag), f"--{flag}")
        _runnable_modes(args.modes)
    except ValueError as exc:
        p.error(str(exc))
    results = []
    for mode in args.modes:
        for n in args.accounts:
            print(f"{mode}: {n:,} more accounts ...", file=sys.stderr, flush=True)
            try:
                results.append(one(n, mode, args.txs, args.runs))
            except subprocess.CalledProcessError as exc:  # its one-line error, not a traceback
                lines = (exc.stderr or "").strip().splitlines()
                print(f"state_scale.py: error: {mode}, {n:,} accounts: {lines[-1] if lines else exc}",
                      file=sys.stderr)
                return 1
    print("| mode | accounts | " + " | ".join(STAGES) + " | propose | total vs smallest |")
    print("|---|---:|" + "---:|" * (len(STAGES) + 2))
    for mode in args.modes:
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
