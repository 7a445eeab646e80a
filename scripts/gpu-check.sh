#!/usr/bin/env bash
# One call on a lent GPU machine (no network; CuPy comes with its image): build, run every CUDA and
# OpenCL-GPU test with those backends required (a skip there is a failure), the GPU throughput
# figures beside the C fallback (bench/gpu_throughput.py), and print a summary last.
# Outputs go to $OUT (else bench/out). TUNE=1 also times the Ed25519 kernel variants
# (bench/ed25519_variants.py), BENCH=1 the pytest-benchmark suites.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/out}"; mkdir -p "$out"
status=0
step() { echo "[gpu-check $(date +%T)] $*"; }

# No venv: a venv made from the image's python (itself a venv holding CuPy) would not see CuPy.
# Wheels carried in gpu-wheels/ (ignored by git, sent with the run's `carry`; the README's "GPU
# check" says how to fetch them) go to .gpu-site on PYTHONPATH; the C fallback is built in place.
py=python3
export PYTHONPATH="$PWD/.gpu-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d gpu-wheels ]; then
    step "installing carried wheels"
    $py -m pip install -q --no-index --no-deps --target .gpu-site gpu-wheels/*.whl >"$out/install.log" 2>&1 ||
        { echo "wheel install failed: see $out/install.log"; tail -20 "$out/install.log"; exit 1; }
fi
step "building the C fallback"
if ! $py setup.py -q build_ext --inplace >>"$out/install.log" 2>&1; then
    tail -20 "$out/install.log"
    # the extension is abi3: one built elsewhere from the same sources (carried) loads here too
    [ -f accel/_native.abi3.so ] || { echo "build of the C fallback failed: see $out/install.log"; exit 1; }
    echo "note: build failed here; using the carried accel/_native.abi3.so"
fi

# NVIDIA's OpenCL driver ships with the CUDA driver, but a container often lacks its ICD file.
if ! ls /etc/OpenCL/vendors/*.icd >/dev/null 2>&1; then
    lib=$( (ldconfig -p | awk '/libnvidia-opencl\.so\.1/ {print $NF; exit}'; \
            find /usr/local/nvidia /usr/lib /usr/lib64 -name 'libnvidia-opencl.so.1' 2>/dev/null) | head -n 1)
    if [ -n "$lib" ]; then
        mkdir -p /tmp/ocl-vendors && echo "$lib" > /tmp/ocl-vendors/nvidia.icd
        export OCL_ICD_VENDORS=/tmp/ocl-vendors
    fi
fi
required=cuda
opencl_gpu=0
if $py -c "from accel.backends import get_backend as g; import sys; sys.exit(0 if g('opencl').is_gpu else 1)" 2>/dev/null; then
    required=cuda,opencl; opencl_gpu=1
else
    echo "note: no OpenCL GPU device (pyopencl or NVIDIA's OpenCL ICD missing): OpenCL-GPU tests skip"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader > "$out/gpu.txt" 2>&1
$py -m accel.cli info | tee "$out/info.txt"

# A GPU error must fail here, not be redone quietly on the C fallback.
export ACCEL_GPU_FALLBACK=false
step "tests (required: $required)"
# nvcc's compile checks need no GPU and run in CI; here they would only spend device time.
ACCEL_REQUIRE_BACKENDS=$required timeout "${TEST_TIMEOUT:-400}" $py -m pytest -q -rs -p no:cacheprovider tests \
    -k "not nvcc and not fits_registers" \
    > "$out/tests.txt" 2>&1 || status=1
step "throughput (cuda)"
timeout "${THROUGHPUT_TIMEOUT:-300}" $py bench/gpu_throughput.py --gpu cuda --repeat "${REPEAT:-5}" \
    --json "$out/throughput-cuda.json" > "$out/throughput-cuda.txt" 2>&1 || status=1
if [ $opencl_gpu = 1 ]; then
    step "throughput (opencl)"
    timeout "${THROUGHPUT_TIMEOUT:-300}" $py bench/gpu_throughput.py --gpu opencl --repeat 3 \
        --json "$out/throughput-opencl.json" > "$out/throughput-opencl.txt" 2>&1 || status=1
fi
step "block validation through CUDA (accel validate-bench of clearing and key-value blocks, consensus sweep)"
for app in clearing kv; do
    for v in "--backend cuda" "--backend cpu" "--validation software"; do
        timeout 300 $py -m accel.cli validate-bench --app $app --txs 10000 $v --runs 3 >> "$out/consensus.txt" 2>&1 || status=1
    done
done
OMP_WAIT_POLICY=PASSIVE timeout "${SWEEP_TIMEOUT:-300}" $py bench/consensus_sweep.py --validators 4,7 --txs 1000,10000 \
    --delays 0,5 --modes cuda,cpu,software --blocks 4 --json "$out/consensus.json" >> "$out/consensus.txt" 2>&1 || status=1
if [ "${TUNE:-0}" = 1 ]; then
    step "Ed25519 kernel variants (about a minute of NVRTC each)"
    timeout "${TUNE_TIMEOUT:-400}" $py bench/ed25519_variants.py > "$out/variants.txt" 2>&1 || status=1
fi
if [ "${BENCH:-0}" = 1 ]; then
    step "pytest-benchmark suites"
    ACCEL_REQUIRE_BACKENDS=cuda $py -m pytest -q -p no:cacheprovider bench --benchmark-only \
        --benchmark-json="$out/bench.json" > "$out/bench.txt" 2>&1 || status=1
    $py bench/report.py "$out/bench.json" --md "$out/bench.md" --png-dir "$out" > /dev/null 2>&1 || status=1
fi

echo "===== gpu-check summary ====="
echo "GPU: $(cat "$out/gpu.txt")"
echo "tests: $(tail -n 1 "$out/tests.txt")"
grep -E "^(FAILED|ERROR)" "$out/tests.txt" | head -20
for f in "$out"/throughput-*.txt; do
    [ -f "$f" ] && { echo "--- $(basename "$f")"; grep -vE "^    n=" "$f" | tail -n 25; }
done
[ -f "$out/consensus.txt" ] && tail -n 20 "$out/consensus.txt"
[ -f "$out/variants.txt" ] && cat "$out/variants.txt"
[ -f "$out/bench.txt" ] && echo "bench: $(tail -n 1 "$out/bench.txt")"
echo "gpu-check: $([ $status = 0 ] && echo PASS || echo FAIL)"
exit $status
