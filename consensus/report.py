"""Side-by-side table of localnet reports (e.g. accelerated and software-only validation):
median validation time per stage, time to finality and committed transactions per second, each
with the number of blocks it rests on. Medians are over the non-empty blocks a validator of the
report's mode validated; throughput is over a steady window: from the commit of the WARMUP-th
non-empty block to the last one (the first blocks carry the market's setup and the validators'
start), every block in between counted, empty ones too.

    python -m consensus.report demo-out/accel.json demo-out/software.json"""
from __future__ import annotations

import json
import statistics
import sys

STAGES = ("signatures", "tx_root", "execute", "margin", "state_root", "total")
WARMUP = 2          # non-empty blocks left out of the throughput window
MIN_WINDOW = 5      # blocks a throughput figure needs after its first commit, else none is given


def summary(report: dict) -> dict:
    """Medians, with "blocks" (how many non-empty validated blocks they rest on), "finality_blocks",
    and "tx_per_s" with "tx_per_s_blocks" (the blocks committed in its window)."""
    blocks = [b for b in report["blocks"] if b["txs"] and b["validation_ms"]]
    out = {s: statistics.median(b["validation_ms"][s] for b in blocks) for s in STAGES
           if blocks and s in blocks[0]["validation_ms"]}
    out["blocks"] = len(blocks)
    sizes = sorted(b["txs"] for b in blocks)
    out["txs"] = statistics.median(sizes) if sizes else float("nan")
    out["txs_range"] = f"{sizes[0]:,}-{sizes[-1]:,}" if sizes else ""
    out["empty_blocks"] = sum(1 for b in report["blocks"] if not b["txs"])
    final = [b["finality_ms"] for b in blocks if b["finality_ms"] is not None]
    out["finality"] = statistics.median(final) if final else float("nan")
    out["finality_blocks"] = len(final)
    timed = [b for b in report["blocks"] if b.get("committed_ms") is not None]
    full = [i for i, b in enumerate(timed) if b["txs"]]
    out["tx_per_s"], out["tx_per_s_blocks"] = float("nan"), 0
    if len(full) > WARMUP:
        window = timed[full[WARMUP]:full[-1] + 1]
        span = (window[-1]["committed_ms"] - window[0]["committed_ms"]) / 1e3
        if len(window) - 1 >= MIN_WINDOW and span > 0:
            out["tx_per_s"] = sum(b["txs"] or 0 for b in window[1:]) / span
            out["tx_per_s_blocks"] = len(window) - 1
    return out


def _times(ratio: float, better: str, worse: str) -> str:
    return f"{ratio:.1f}x {better}" if ratio >= 1 else f"{1 / ratio:.1f}x {worse}"


def table(reports: list[dict]) -> str:
    names = [f"{r['validation']} ({r['backend']})" if r["validation"] == "accel" else "software-only" for r in reports]
    rows = [summary(r) for r in reports]
    first = reports[0]
    lines = [f"{first['validators']} validators, {first.get('app', 'kv')} application, {first['txs_per_block']} "
             f"transactions per block, medians per block; committed tx/s over the blocks after the first {WARMUP} "
             "non-empty ones",
             "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    stages = [s for s in STAGES if any(s in row for row in rows)]
    for key, label in [(s, f"validation: {s} (ms)") for s in stages] + [("finality", "time to finality (ms)"),
                                                                         ("tx_per_s", "committed tx/s")]:
        lines.append(f"| {label} | " + " | ".join(f"{row.get(key, float('nan')):,.1f}" for row in rows) + " |")
    lines.append("| transactions per non-empty block: median (range) | "
                 + " | ".join(f"{row['txs']:,.0f} ({row['txs_range']})" for row in rows) + " |")
    lines.append("| non-empty blocks behind the medians (empty blocks) | "
                 + " | ".join(f"{row['blocks']} ({row['empty_blocks']})" for row in rows) + " |")
    lines.append("| blocks in the tx/s window | " + " | ".join(str(row["tx_per_s_blocks"]) for row in rows) + " |")
    software = [row for r, row in zip(reports, rows) if r["validation"] == "software"]
    for name, r, row in zip(names, reports, rows):
        if software and r["validation"] == "accel" and row.get("total") and software[0].get("total"):
            lines.append(f"{name} against software-only: validation {_times(software[0]['total'] / row['total'], 'faster', 'slower')}, "
                         f"time to finality {_times(software[0]['finality'] / row['finality'], 'shorter', 'longer')}")
    return "\n".join(lines)


def main(argv=None) -> int:
    paths = (argv if argv is not None else sys.argv[1:])
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    reports = []
    for p in paths:  # a missing or foreign file: one line naming it, not a traceback
        try:
            with open(p) as fh:
                report = json.load(fh)
            if not isinstance(report, dict) or not isinstance(report.get("blocks"), list):
                raise ValueError("not a localnet report (no \"blocks\" list)")
        except (OSError, ValueError, RecursionError) as exc:
            print(f"python -m consensus.report: error: {p}: {' '.join(str(exc).split())[:300]}", file=sys.stderr)
            return 2
        reports.append(report)
    try:
        print(table(reports))
    except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:  # a number past a float too
        print(f"python -m consensus.report: error: not a localnet report ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
