#!/usr/bin/env bash
# One call on a lent GPU machine: install, run every CUDA and OpenCL-GPU test, the GPU benchmarks,
# and print a summary last. Results land in $OUT (or bench/out) for bench/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/out}"; mkdir -p "$out"
python3 -m venv --system-site-packages .venv-gpu >/dev/null 2>&1
.venv-gpu/bin/pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 || \
    .venv-gpu/bin/pip install -q -e . >>"$out/install.log" 2>&1
py=.venv-gpu/bin/python
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1
$py -m accel.cli info | tee "$out/info.txt"
$py -m pytest -q -rs tests -k "cuda or opencl or agree or backends" 2>&1 | tee "$out/tests.txt" | tail -25
$py -m pytest -q bench --benchmark-only --benchmark-json="$out/bench.json" -k "cuda or opencl or hashlib or nacl or openssl or numpy or cpu" \
    2>&1 | tail -5 > "$out/bench-tail.txt"
$py bench/report.py "$out/bench.json" --md "$out/bench.md" --png-dir "$out" > /dev/null 2>&1
echo "===== gpu-check summary ====="
cat "$out/gpu.txt"
tail -1 "$out/tests.txt"
[ -f "$out/bench.md" ] && cat "$out/bench.md"
