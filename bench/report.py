"""Turns pytest-benchmark JSON files of one run into a Markdown table of medians and ratios against
the baseline run beside them (benchmarks whose extra_info has baseline=True), plus one plot
of items per second against batch size for each benchmark group family (the group without its
"n=..."), drawn only where a family has more than one batch size. An implementation's name
carries its other parameters from extra_info (e.g. "bad=64"), so no two rows or lines share a
name. Plots a previous report wrote into the same directory and this one did not are removed
(listed in .report-plots.json there).

Several files are one run's parts, read as one (`make bench` times the OpenCL and CUDA cases in a
process apart from the C fallback's, bench/out/results-drivers.json); the machine is the first's.

    python bench/report.py bench/out/results.json [bench/out/results-drivers.json] [--md out.md] [--png-dir bench/out]
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path


SHOWN = {"impl", "n", "baseline", "device"}  # extra_info keys with a column or place of their own
MANIFEST = ".report-plots.json"


def load(*paths):
    """The machine (the first file's) and the rows of every file."""
    files = [json.loads(Path(path).read_text()) for path in paths]
    return files[0].get("machine_info", {}), [row for data in files for row in _rows(data)]


def _rows(data) -> list[dict]:
    rows = []
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        params = ", ".join(f"{k}={v}" for k, v in sorted(info.items()) if k not in SHOWN)
        rows.append({
            "group": b.get("group") or b["name"],
            "impl": info.get("impl", b["name"]) + (f" ({params})" if params else ""),
            "n": info.get("n"),
            "baseline": bool(info.get("baseline")),
            "median": b["stats"]["median"],
            "rounds": b["stats"]["rounds"],
        })
    return rows


def table(rows) -> str:
    out = ["| group | implementation | median | items/s | vs baseline |", "|---|---|---:|---:|---:|"]
    by_group = defaultdict(list)
    for r in rows:
        by_group[r["group"]].append(r)
    for group in sorted(by_group, key=_natural):
        rs = by_group[group]
        base = min((r["median"] for r in rs if r["baseline"]), default=None)
        for r in sorted(rs, key=lambda r: r["median"]):
            rate = f"{r['n'] / r['median']:,.0f}" if r["n"] else ""
            ratio = f"{base / r['median']:.2f}x" if base else ""
            out.append(f"| {group} | {r['impl']}{' (baseline)' if r['baseline'] else ''} | "
                       f"{_fmt(r['median'])} | {rate} | {ratio} |")
    return "\n".join(out)


def plot(rows, png_dir: Path, machine_label: str) -> list[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    families = defaultdict(list)
    for r in rows:
        if r["n"]:
            families[family(r["group"])].append(r)
    png_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fam, rs in families.items():
        series = defaultdict(list)
        for r in rs:
            series[r["impl"]].append((r["n"], r["n"] / r["median"]))
        series = {k: v for k, v in series.items() if len({n for n, _ in v}) >= 2}
        if not series:  # one batch size: nothing to draw against it (the table has the figures)
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for impl, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size (items)")
        ax.set_ylabel("items per second (median)")
        ax.set_title(f"{fam} on {machine_label}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        path = png_dir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', fam).strip('_')}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    manifest = png_dir / MANIFEST
    try:
        before = json.loads(manifest.read_text()) if manifest.exists() else []
    except ValueError:
        before = []
    for name in set(before) - {p.name for p in written}:
        if "/" not in name:
            (png_dir / name).unlink(missing_ok=True)
    manifest.write_text(json.dumps(sorted(p.name for p in written)))
    return written


def family(group: str) -> str:
    """The group without its batch size: "ed25519_verify n=1024" -> "ed25519_verify"."""
    return re.sub(r"\s*\bn=\d+", "", group).strip()


def _fmt(sec: float) -> str:
    return f"{sec * 1e3:.2f} ms" if sec >= 1e-3 else f"{sec * 1e6:.1f} µs"


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", nargs="+", help="one run's results, in one file or several")
    ap.add_argument("--md", help="also write the table to this file")
    ap.add_argument("--png-dir", default=None, help="where plots go (default: beside the JSON)")
    args = ap.parse_args(argv)
    machine, rows = load(*args.json)
    ours = machine.get("accel", {})
    cpu = ours.get("cpu_model") or machine.get("cpu", {}).get("brand_raw", machine.get("processor", "?"))
    label = f"{cpu}, {ours.get('cores', machine.get('cpu', {}).get('count', '?'))} cores"
    libs = ", ".join(f"{k} {v}" for k, v in ours.get("libraries", {}).items())
    text = (f"Machine: {label}; flags {' '.join(ours.get('cpu_flags', [])) or '?'}; "
            f"Python {machine.get('python_version', '?')}; {ours.get('compiler', '?')}\n"
            f"Libraries: {libs or '?'}\n\n" + table(rows))
    print(text)
    if args.md:
        Path(args.md).write_text(text + "\n")
    for p in plot(rows, Path(args.png_dir or Path(args.json[0]).parent), label):
        print(f"plot: {p}")


if __name__ == "__main__":
    main()
