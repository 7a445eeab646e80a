"""bench/report.py (issue 21): rows and plot lines named apart by their parameters, no plot of a
single batch size, the all-bad runs off the batch-size lines, a new --png-dir made, and a
subset run's report leaving no older plots beside its own."""
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
spec = importlib.util.spec_from_file_location("bench_report", Path(__file__).resolve().parents[1] / "bench" / "report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def _bench(group, median, **info):
    return {"name": "t", "group": group, "extra_info": info, "stats": {"median": median, "rounds": 5}}


def _results(path: Path, subset: bool = False) -> Path:
    benches = [_bench(f"ed25519_verify n={n}", n / 10_000, impl="pynacl (libsodium, 1 core)", n=n, baseline=True)
               for n in (1024, 16384)]
    benches += [_bench(f"ed25519_verify n={n}", n / 50_000, impl="accel-cpu", device="x", n=n) for n in (1024, 16384)]
    benches += [_bench("ed25519_verify all-bad n=16384", 2.0, impl="pynacl (libsodium, 1 core)", n=16384, baseline=True)]
    benches += [_bench("ed25519 n=16384 with b bad: per-signature verdicts", 0.3 + b / 1e5,
                       impl="accel-cpu ed25519_verify_batch", n=16384, bad=b, baseline=b == 0) for b in (0, 1, 8, 64, 16384)]
    if not subset:
        benches += [_bench(f"merkle_root n={n}", n / 1e7, impl="hashlib", n=n, baseline=True) for n in (1024, 4096)]
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": benches}))
    return path


def test_rows_carry_their_parameters_and_single_sizes_are_not_plotted(tmp_path):
    _, rows = report.load(_results(tmp_path / "r.json"))
    bad_rows = [r["impl"] for r in rows if "with b bad" in r["group"]]
    assert len(set(bad_rows)) == 5 and "accel-cpu ed25519_verify_batch (bad=64)" in bad_rows
    table = report.table(rows)
    assert table.count("| accel-cpu ed25519_verify_batch (bad=0) (baseline) |") == 1
    out = tmp_path / "new" / "plots"  # does not exist yet
    written = report.plot(rows, out, "test machine")
    assert sorted(p.name for p in written) == ["ed25519_verify.png", "merkle_root.png"]
    # the all-bad group is its own family (one size: not drawn), not a point on the PyNaCl line
    assert report.family("ed25519_verify all-bad n=16384") == "ed25519_verify all-bad"


def test_a_subset_report_removes_the_plots_it_did_not_write(tmp_path):
    _, rows = report.load(_results(tmp_path / "r.json"))
    report.plot(rows, tmp_path, "m")
    assert (tmp_path / "merkle_root.png").exists()
    (tmp_path / "keep.png").write_bytes(b"not ours")
    _, rows = report.load(_results(tmp_path / "r.json", subset=True))
    report.main([str(tmp_path / "r.json")])
    assert (tmp_path / "ed25519_verify.png").exists() and not (tmp_path / "merkle_root.png").exists()
    assert (tmp_path / "keep.png").exists()
