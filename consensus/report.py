"""Side-by-side table of localnet reports (e.g. accelerated and software-only validation):
median validation time per stage, time to finality and committed transactions per second.

    python -m consensus.report demo-out/accel.json demo-out/software.json"""
from __future__ import annotations

import json
import statistics
import sys

STAGES = ("signatures", "tx_root", "execute", "margin", "state_root", "total")


def summary(report: dict) -> dict:
    blocks = [b for b in report["blocks"] if b["txs"] and b["validation_ms"]]
    out = {s: statistics.median(b["validation_ms"][s] for b in blocks) for s in STAGES
           if blocks and s in blocks[0]["validation_ms"]}
    final = [b["finality_ms"] for b in blocks if b["finality_ms"] is not None]
    out["finality"] = statistics.median(final) if final else float("nan")
    if len(blocks) > 1:
        span = (blocks[-1]["committed_ms"] - blocks[0]["committed_ms"]) / 1e3
        out["tx_per_s"] = sum(b["txs"] for b in blocks[1:]) / span if span > 0 else float("nan")
    return out


def _times(ratio: float, better: str, worse: str) -> str:
    return f"{ratio:.1f}x {better}" if ratio >= 1 else f"{1 / ratio:.1f}x {worse}"


def table(reports: list[dict]) -> str:
    names = [f"{r['validation']} ({r['backend']})" if r["validation"] == "accel" else "software-only" for r in reports]
    rows = [summary(r) for r in reports]
    first = reports[0]
    lines = [f"{first['validators']} validators, {first.get('app', 'kv')} application, {first['txs_per_block']} "
             "transactions per block, medians per block",
             "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    stages = [s for s in STAGES if any(s in row for row in rows)]
    for key, label in [(s, f"validation: {s} (ms)") for s in stages] + [("finality", "time to finality (ms)"),
                                                                         ("tx_per_s", "committed tx/s")]:
        lines.append(f"| {label} | " + " | ".join(f"{row.get(key, float('nan')):,.1f}" for row in rows) + " |")
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
    print(table([json.loads(open(p).read()) for p in paths]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
