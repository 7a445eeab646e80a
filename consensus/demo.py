"""`make demo` (python -m consensus.demo): the main job. For each block size, a 4-validator clearing
network on loopback validates through every accel backend this machine has, then software-only
(PyNaCl with the ZIP-215 model, hashlib, accel.risk_numpy); the validators' load is the clearing market of
consensus/apps/clearing_load.py (BTC and ETH options, market makers and takers, oracle marks, a
volatility crash that liquidates leveraged accounts). Ends with a table per block size
(validation time by stage, time to finality), the market's story (replayed from a validator's
store, its state roots checked), a plot, and the raw reports in the output directory."""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import accel
from accel.backends import BackendUnavailable

from . import report
from .apps import clearing_tx as ctx
from .apps.clearing_app import MAX_BLOCK_TXS, ClearingApp
from .apps.clearing_load import USD, genesis_market
from .localnet import Localnet, launch_limit
from .store import Store
from .verify import Verifier

MIN_BLOCKS = 10             # a median of fewer non-empty blocks is not a measurement
MAX_LOAD = 2_000_000        # transactions signed up front per run (blocks x size)
DEMO_RUN = re.compile(r"(cuda|opencl|cpu|software)-\d+(\.json)?")  # what a demo writes in OUT/runs
DEFAULT_BLOCKS = {100: 20, 1000: 20, 10_000: 12}  # per size; others 20 (--blocks sets every size)
OPS = {ctx.REGISTER: "registrations", ctx.DEPOSIT: "deposits", ctx.WITHDRAW: "withdrawals", ctx.TRADE: "trades",
       ctx.MARK: "oracle marks", ctx.TOP_UP: "insurance fund top-ups"}


def backends() -> tuple[list[str], list[str]]:
    """(the accel backends worth a run here, GPUs first; notes on those left out). OpenCL on a CPU
    driver (PoCL) runs the same kernels as the C fallback, slower, so it is left out unless asked."""
    found, use, notes = accel.probe(), [], []
    for name in ("cuda", "opencl", "cpu"):
        b = found[name]
        if isinstance(b, BackendUnavailable):
            notes.append(f"{name}: {str(b).splitlines()[0]}")
        elif name != "cpu" and not b.is_gpu:
            notes.append(f"{name}: {b.device} is not a GPU, left out (--backends {name},cpu runs it)")
        else:
            use.append(name)
    return use, notes


def market_story(store_path: Path) -> dict:
    """Replays a validator's committed chain: what the market did, and whether every state root
    recomputes."""
    app = ClearingApp(Verifier("accel", "cpu"), genesis_market("cpu"))
    state, ops, roots_ok = app.genesis, Counter(), True
    funds0 = dict(state.clearing.funds)
    topped: Counter = Counter()  # asset -> what top-ups paid into its fund (not a charge the other way)
    socialized: Counter = Counter()  # asset -> quanta (the ledger holds only the latest records)
    blocks = 0
    store = Store(store_path)
    try:
        for p in store.history():  # (read from the store as it goes)
            bodies = p.block.txs.bodies
            txs = ctx.decode_all(bodies)
            ops.update(OPS[t.op] for t in txs)
            before = len(state.clearing.liquidations)
            state = app.execute(state, bodies)
            for x in state.clearing.liquidations[before:]:
                socialized[x.asset] += x.socialized
            roots_ok &= state.root == p.block.state_root
            for t in txs:
                if t.op == ctx.TOP_UP:
                    topped[t.fields[2]] += t.fields[3]
            blocks += 1
    finally:
        store.close()
    c = state.clearing
    charged = {a: (funds0.get(a, 0) + topped[a] - q) / USD for a, q in sorted(c.funds.items())}
    return {"blocks": blocks, "transactions": dict(ops), "accounts": len(c.accounts),
            "open_positions": sum(len(a.positions) for a in c.accounts.values()),
            "liquidations": len(c.liquidations),
            "insurance_charged_usd": charged["USD"],
            "insurance_charged": charged,
            "socialized": {a: socialized[a] / USD for a in sorted(c.funds)},
            "index": {u: m.index for u, m in sorted(c.marks.items())},
            "state_roots_recomputed": roots_ok}


def _progress(name: str):
    last = [0.0]

    def show(line: str) -> None:
        if time.time() - last[0] >= 2.0 or not line.startswith("["):
            last[0] = time.time()
            print(f"  {name}: {line}", flush=True)
    return show


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sizes = sorted({r["txs_per_block"] for r in runs})
    fig, axes = plt.subplots(2, len(sizes), figsize=(4.8 * len(sizes), 7), squeeze=False)
    colors = {"signatures": "#4c72b0", "tx_root": "#dd8452", "execute": "#55a868", "margin": "#c44e52",
              "state_root": "#8172b3"}
    for col, size in enumerate(sizes):
        group = [r for r in runs if r["txs_per_block"] == size]
        names = [_name(r) for r in group]
        rows = [report.summary(r) for r in group]
        bottom = [0.0] * len(group)
        for stage, color in colors.items():
            values = [row.get(stage, 0.0) for row in rows]
            axes[0][col].bar(names, values, bottom=bottom, color=color, label=stage)
            bottom = [b + v for b, v in zip(bottom, values)]
        axes[0][col].set_title(f"{size:,} transactions per block")
        axes[0][col].set_ylabel("block validation, median (ms)")
        axes[1][col].bar(names, [row["finality"] for row in rows], color="#64b5cd")
        axes[1][col].set_ylabel("time to finality, median (ms)")
        for ax in axes[:, col]:
            ax.grid(True, axis="y", alpha=0.3)
            ax.tick_params(axis="x", labelsize=8)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{runs[0]['validators']} validators, clearing market: accel against software-only validation",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _name(run: dict) -> str:
    return f"accel: {run['backend']}" if run["validation"] == "accel" else "software-only"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m consensus.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="demo-out", help="output directory (default demo-out)")
    ap.add_argument("--validators", type=int, default=4)
    ap.add_argument("--blocks", type=int,
                    help=f"blocks every validator commits per run, for every size (default: 20, and 12 for 10,000-"
                    f"transaction blocks; at least {MIN_BLOCKS}, and at most {MAX_LOAD:,} transactions per run)")
    ap.add_argument("--sizes", default="100,1000,10000",
                    help="transactions per block, comma-separated (default 100,1000,10000)")
    ap.add_argument("--backends", help="accel backends, comma-separated (default: every one available here)")
    ap.add_argument("--sig-cache", action="store_true",
                    help="let validation skip signatures the mempool verified (default: every signature checked, "
                    "as for a block of transactions a validator has not seen)")
    args = ap.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        ap.error(f"--sizes {args.sizes!r}: comma-separated integers")
    if len(set(sizes)) != len(sizes):  # a second run of a size went into the first one's directory and stores
        ap.error(f"--sizes {args.sizes!r}: a size given twice")
    blocks_for = {size: args.blocks or DEFAULT_BLOCKS.get(size, 20) for size in sizes}
    for size, blocks in blocks_for.items():
        if size < 1:
            ap.error(f"--sizes: {size} transactions per block")
        if size > MAX_BLOCK_TXS:  # every validator refused its file, after the run's load was signed
            ap.error(f"--sizes: {size:,} transactions per block; a clearing block holds at most {MAX_BLOCK_TXS:,}")
        if blocks < MIN_BLOCKS:
            ap.error(f"--blocks {blocks}: medians need at least {MIN_BLOCKS} blocks")
        if blocks * size > MAX_LOAD:
            ap.error(f"--blocks {blocks} of {size:,} transactions: {blocks * size:,} transactions to sign up front, "
                     f"more than {MAX_LOAD:,}; ask for at most {MAX_LOAD // size:,} blocks of this size")
    if args.validators < 4:
        ap.error(f"--validators {args.validators}: BFT needs n = 3f + 1 >= 4")
    too_many = launch_limit(args.validators)
    if too_many:  # an EMFILE traceback after the load was signed
        ap.error(f"--validators {args.validators}: {too_many}")
    names = args.backends.split(",") if args.backends is not None else []
    for name in names:
        if name not in ("cuda", "opencl", "cpu"):
            ap.error(f"--backends: {name!r} is not an accel backend (cuda, opencl, cpu)")
    if len(set(names)) != len(names):  # its second run found the first's network in runs/, after a full run
        ap.error(f"--backends {args.backends!r}: a backend given twice")
    for name in names:
        found = accel.probe()[name]  # one that cannot start failed its run's first validator, after the signing
        if isinstance(found, BackendUnavailable):
            ap.error(f"--backends: {name} cannot run here: {str(found).splitlines()[0]}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        ap.error(f"--out {out}: a file, not a directory")
    runs_dir = out / "runs"
    if runs_dir.is_symlink() or (runs_dir.exists() and not runs_dir.is_dir()):
        ap.error(f"--out {out}: {runs_dir} is not a directory a demo wrote; not removing it (give another --out)")
    if runs_dir.exists():
        # only a previous demo's networks (cpu-100, software-1000.json, ...): --out . in a
        # directory of the user's own must not lose its runs/ to rmtree
        foreign = [p.name for p in runs_dir.iterdir() if not DEMO_RUN.fullmatch(p.name)]
        if foreign:
            ap.error(f"--out {out}: {runs_dir} holds {', '.join(sorted(foreign)[:3])}, which no demo wrote; "
                     "not removing it (give another --out)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a traceback before (no such parent, no permission)
        ap.error(f"--out {out}: cannot make the directory: {exc.strerror or exc}")
    if runs_dir.exists():  # never read (or show) another run's files
        print(f"  removing the previous run's networks in {runs_dir}", flush=True)
        shutil.rmtree(runs_dir)
    for old in ("table.md", "demo.json", "demo.png"):
        (out / old).unlink(missing_ok=True)
    names, notes = (args.backends.split(","), []) if args.backends else backends()
    for note in notes:
        print(f"  {note}", flush=True)
    plan = [(size, "accel", b) for size in sizes for b in names] + [(size, "software", None) for size in sizes]
    plan.sort(key=lambda p: p[0])
    print(f"accel backends here: {', '.join(names)}; {len(plan)} runs of {args.validators} validators", flush=True)
    runs, streams = [], {}
    started = time.time()
    try:
        for i, (size, validation, backend) in enumerate(plan, 1):
            name = f"{backend or 'software'}-{size}"
            print(f"[{i}/{len(plan)}] {name}: {blocks_for[size]} blocks of {size:,} transactions, "
                  f"{'accel on ' + backend if backend else 'software-only'} validation", flush=True)
            # the view timeout grows with the block: validating 10,000 transactions software-only on
            # shared cores takes seconds, and a timeout then only wastes work (no validator is down)
            net = Localnet(args.validators, blocks_for[size], size, backend, validation, 0.0, str(out / "runs" / name),
                           base_timeout_ms=max(1000.0, 2.5 * size), app="clearing", sig_cache=args.sig_cache,
                           load_stream=streams.get(size))
            streams.setdefault(size, net.dir / "load.bin")  # the same signed stream for every run of a size
            try:
                runs.append(net.run(progress=_progress(name)))
            except RuntimeError as exc:  # a validator that exited, a run past its timeout: one line
                print(f"python -m consensus.demo: error: run {name}: {exc}", file=sys.stderr, flush=True)
                return 1
            (out / "runs" / f"{name}.json").write_text(json.dumps(runs[-1], indent=1))
    except KeyboardInterrupt as exc:  # SIGINT, SIGTERM (localnet.Interrupted): its validators have stopped
        print(f"stopped ({exc.args[0] if exc.args else 'SIGINT'}); every validator it started has exited", flush=True)
        return 128 + getattr(exc, "signum", 2)
    # the story of the largest blocks among runs long enough to pass the crash (after 5 blocks)
    told = max((r for r in runs if len(r["blocks"]) >= 10), key=lambda r: r["txs_per_block"], default=runs[-1])
    story = market_story(Path(told["directory"]) / "node0" / "validator.db") | {"run": Path(told["directory"]).name}
    tables = [report.table([r for r in runs if r["txs_per_block"] == size]) for size in sizes]
    text = "\n\n".join(tables) + "\n\n" + _story_text(story) + "\n"
    (out / "table.md").write_text(text)
    (out / "demo.json").write_text(json.dumps({"runs": runs, "market": story}, indent=1))
    plot(runs, out / "demo.png")
    print("\n" + text)
    print(f"{len(plan)} runs in {time.time() - started:.0f} s; table {out / 'table.md'}, plot {out / 'demo.png'}, "
          f"raw reports {out / 'demo.json'}")
    return 0 if story["state_roots_recomputed"] else 1


def _story_text(story: dict) -> str:
    ops = ", ".join(f"{n:,} {op}" for op, n in sorted(story["transactions"].items(), key=lambda x: -x[1]))
    index = ", ".join(f"{u} {v:,.0f}" for u, v in story["index"].items())
    return (f"Market (replayed from validator 0 of run {story['run']}, {story['blocks']} blocks, state roots "
            f"{'recomputed and equal' if story['state_roots_recomputed'] else 'DIFFERENT'}): {ops}; "
            f"{story['accounts']} accounts, {story['open_positions']} open positions; last index {index}; "
            f"{story['liquidations']} liquidations; charged to the insurance funds: "
            + ", ".join(f"{q:,.2f} {a}" for a, q in story["insurance_charged"].items()) + ".")


if __name__ == "__main__":
    sys.exit(main())
