"""Block validation by stage and time to finality on the simulated network (issue 8): every
combination of validators, transactions per block, one-way delay and validation mode, each
validator charged the real time its validation takes (Simulation(compute=True)).

    python bench/consensus_sweep.py [--validators 4,7,10] [--txs 100,1000,10000] [--delays 0,5,50]
                                    [--modes cpu,software] [--blocks 6] [--json FILE] [--png FILE]

Modes: an accel backend name (cpu, opencl, cuda) or software (PyNaCl and hashlib)."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from accel.cli import _at_least, _finite, _positive, _report_path, _runnable_modes, comma_list
from consensus.sim import Link, Simulation

STAGES = ("signatures", "tx_root", "execute", "state_root", "total")


def _mode(text: str) -> str:
    if text not in MODES:
        raise argparse.ArgumentTypeError(f"not a mode ({', '.join(MODES)})")
    return text


MODES = ("cpu", "opencl", "cuda", "software")
DRIVERS = ("opencl", "cuda")


def one(n: int, txs: int, delay: float, mode: str, blocks: int) -> dict:
    validation = "software" if mode == "software" else "accel"
    sim = Simulation(n=n, seed=1, link=Link((delay, delay)), txs_per_block=txs, validation=validation,
                     base_timeout_ms=max(2000.0, 20 * delay), compute=True)
    if validation == "accel":
        sim.verifier.backend = mode
    sim.load(txs * (blocks + 2))
    started = time.perf_counter()
    sim.run(blocks=blocks, max_ms=3_600_000)
    wall = time.perf_counter() - started
    node = sim.nodes[0]
    full = [(b, t, ms) for b, t, ms in node.committed if len(b.txs) == txs and ms]
    first_commit = {}
    for x in sim.nodes:
        for b, t, _ in x.committed:
            first_commit[b.id] = min(first_commit.get(b.id, t), t)
    finality = [first_commit[b.id] - sim.proposed_at[b.id] for b, _, _ in full if b.id in sim.proposed_at]
    return {"validators": n, "txs": txs, "delay_ms": delay, "mode": mode, "blocks": len(full),
            "validation_ms": {s: statistics.median(ms[s] for _, _, ms in full) for s in STAGES} if full else {},
            "finality_ms": statistics.median(finality) if finality else None, "wall_s": wall}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # every value checked before the sweep (a negative delay was simulated and reported, 0 blocks
    # or transactions gave rows of nan, --validators 3 a traceback minutes in)
    ap.add_argument("--validators", type=comma_list(_at_least(4)), default="4,7,10",
                    help="validator counts, each 3f+1 >= 4 (default 4,7,10)")
    ap.add_argument("--txs", type=comma_list(_positive), default="100,1000,10000",
                    help="transactions per block (default 100,1000,10000)")
    ap.add_argument("--delays", type=comma_list(_finite(False, "milliseconds")), default="0,5,50",
                    help="one-way delays in ms, 0 or more (default 0,5,50)")
    ap.add_argument("--modes", type=comma_list(_mode), default="cpu,software",
                    help="cpu, opencl, cuda (accel backends) or software (default cpu,software)")
    ap.add_argument("--blocks", type=_positive, default=6, help="blocks per point (default 6)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--png", help="write the plot here")
    args = ap.parse_args(argv)
    try:
        for flag in ("json", "png"):  # before the sweep: a bad path lost minutes of results at its end
            _report_path(getattr(args, flag), f"--{flag}")
        _runnable_modes(args.modes)
    except ValueError as exc:
        ap.error(str(exc))
    rows = []
    print("| validators | txs/block | delay ms | mode | validation total ms | signatures ms | execute ms | finality ms |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|")
    # Every point of the C fallback (and software-only) before any of a GPU backend's: a driver,
    # once started, stays in this process, and PoCL's threads (OpenCL on a CPU) compete with the
    # C fallback's.
    for modes in ([m for m in args.modes if m not in DRIVERS], [m for m in args.modes if m in DRIVERS]):
        for n in args.validators:
            for txs in args.txs:
                for delay in args.delays:
                    for mode in modes:
                        r = one(n, txs, delay, mode, args.blocks)
                        rows.append(r)
                        v = r["validation_ms"]
                        print(f"| {n} | {txs:,} | {delay:g} | {mode} | {v.get('total', float('nan')):.1f} | "
                              f"{v.get('signatures', float('nan')):.1f} | {v.get('execute', float('nan')):.1f} | "
                              f"{r['finality_ms'] if r['finality_ms'] is not None else float('nan'):.1f} |",
                              flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    if args.png:
        plot(rows, args.png)
    return 0


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sizes = sorted({r["txs"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 3.8), squeeze=False)
    for ax, txs in zip(axes[0], sizes):
        for mode in sorted({r["mode"] for r in rows}):
            for n in sorted({r["validators"] for r in rows}):
                pts = sorted((r["delay_ms"], r["finality_ms"]) for r in rows
                             if r["txs"] == txs and r["mode"] == mode and r["validators"] == n and r["finality_ms"])
                if pts:
                    ax.plot(*zip(*pts), "o-" if mode != "software" else "s--", label=f"{mode}, n={n}")
        ax.set_title(f"{txs:,} transactions per block")
        ax.set_xlabel("one-way delay (ms)")
        ax.set_ylabel("time to finality (ms)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Time to finality, accelerated (C fallback) against software-only validation (simulated network)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
