#!/usr/bin/env bash
# One call on a lent GPU machine (no network; CuPy comes with its image): build, run every CUDA and
# OpenCL test with both backends required (a skip there is a failure), the GPU benchmarks against
# their CPU baselines, and print a summary last. Outputs go to $OUT (else bench/out).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/out}"; mkdir -p "$out"
status=0

python3 -m venv --system-site-packages .venv-gpu >/dev/null 2>&1
# The GPU image has no network: wheels fetched beforehand into gpu-wheels/ (ignored by git, sent
# with the run's `carry`: pip download -d gpu-wheels cffi pyopencl pytest pytest-benchmark pynacl ...)
# are installed first when present.
if [ -d gpu-wheels ]; then
    .venv-gpu/bin/pip install -q --no-index --find-links gpu-wheels gpu-wheels/*.whl >"$out/install.log" 2>&1
fi
.venv-gpu/bin/pip install -q --no-deps --no-build-isolation -e . >>"$out/install.log" 2>&1 ||
    { echo "build of the C fallback failed: see $out/install.log"; tail -20 "$out/install.log"; exit 1; }
py=.venv-gpu/bin/python
required=cuda
if $py -c "import pyopencl" 2>/dev/null; then required=cuda,opencl; else echo "note: pyopencl missing, OpenCL-GPU tests will skip"; fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1
$py -m accel.cli info | tee "$out/info.txt"

ACCEL_REQUIRE_BACKENDS=$required $py -m pytest -q -rs tests > "$out/tests.txt" 2>&1 || status=1
ACCEL_REQUIRE_BACKENDS=cuda $py -m pytest -q bench --benchmark-only --benchmark-json="$out/bench.json" \
    > "$out/bench.txt" 2>&1 || status=1
$py bench/report.py "$out/bench.json" --md "$out/bench.md" --png-dir "$out" > /dev/null 2>&1 || status=1

echo "===== gpu-check summary ====="
echo "GPU: $(cat "$out/gpu.txt")"
echo "tests: $(tail -n 1 "$out/tests.txt")"
echo "bench: $(tail -n 1 "$out/bench.txt")"
grep -E "FAILED|ERROR" "$out/tests.txt" "$out/bench.txt" | head -20
[ -f "$out/bench.md" ] && grep -Ei "cuda|opencl|baseline" "$out/bench.md"
echo "gpu-check: $([ $status = 0 ] && echo PASS || echo FAIL)"
exit $status
