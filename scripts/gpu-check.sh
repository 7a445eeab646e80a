#!/usr/bin/env bash
# One call on a lent GPU machine (no network; CuPy comes with its image): build, run the test files
# that launch kernels on a GPU backend, with CUDA and any OpenCL GPU required (a missing one fails), the GPU throughput
# figures beside the C fallback (bench/gpu_throughput.py), and print a summary last.
# Outputs go to $OUT (else bench/out), in at most 8 files (what a lease sends back): setup.txt,
# tests.txt, throughput.txt and throughput-{cuda,opencl}.json, tune.txt (the Ed25519 variants,
# TUNE=0 skips them, and ncu's report, PROFILE=0 skips it), consensus.txt and consensus.json.
# BENCH=1 adds the pytest-benchmark suites (more files). BUDGET_S (default 540) bounds the whole.
# Run `make gpu-prep` first, where there is network (no GPU needed), and carry what it prints.
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
    $py -m pip install -q --no-index --no-deps --target .gpu-site gpu-wheels/*.whl >"$out/setup.txt" 2>&1 ||
        { echo "wheel install failed: see $out/setup.txt"; tail -20 "$out/setup.txt"; exit 1; }
fi
step "building the C fallback"
if ! $py setup.py -q build_ext --inplace >>"$out/setup.txt" 2>&1; then
    tail -20 "$out/setup.txt"
    # the extension is abi3: one built elsewhere from the same sources (carried) loads here too
    [ -f accel/_native.abi3.so ] || { echo "build of the C fallback failed: see $out/setup.txt"; exit 1; }
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
# Modules `make gpu-prep` prebuilt (carried in .cubin/): loaded in a second instead of a minute of
# NVRTC each; `accel info` below names any whose sources changed since (NVRTC compiles those here).
if [ -d .cubin ]; then
    export ACCEL_CUDA_CUBIN_DIR="$PWD/.cubin"
else
    echo "note: no .cubin/ (make gpu-prep): NVRTC compiles each module here, about a minute per Ed25519 module"
fi
required=cuda
opencl_gpu=0
if $py -c "from accel.backends import get_backend as g; import sys; sys.exit(0 if g('opencl').is_gpu else 1)" 2>/dev/null; then
    required=cuda,opencl; opencl_gpu=1
else
    echo "note: no OpenCL GPU device (pyopencl or NVIDIA's OpenCL ICD missing): OpenCL-GPU tests skip"
fi
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>&1)
echo "GPU: $gpu" >> "$out/setup.txt"
$py -m accel.cli info | tee -a "$out/setup.txt"

# A GPU error must fail here, not be redone quietly on the C fallback.
export ACCEL_GPU_FALLBACK=false PYTHONUNBUFFERED=1

# A lease is short (15 device minutes, the machine's start included), so the steps run in order of
# what they are worth within BUDGET_S seconds: each gets its own limit or what is left, and one
# that would start with less than it needs is skipped and named in the summary.
deadline=$(( $(date +%s) + ${BUDGET_S:-540} ))
skipped=()
run_step() {  # run_step NAME LIMIT_S MIN_S LOG COMMAND...
    local name=$1 limit=$2 min=$3 log=$4; shift 4
    local left=$(( deadline - $(date +%s) ))
    if [ "$left" -lt "$min" ]; then
        skipped+=("$name"); echo "[gpu-check] skipped, ${left}s of budget left: $name"; return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    step "$name (limit ${limit}s)"
    timeout "$limit" "$@" >> "$out/$log" 2>&1 || { status=1; echo "[gpu-check] FAILED or cut at ${limit}s: $name"; }
}

# The test files that run kernels on a GPU backend (the rest of the suite is CPU work CI runs, over
# five minutes of it: more than a lease's test step); TESTS=tests runs everything. nvcc's compile
# checks need no GPU and run in CI; here they would only spend device time.
tests=${TESTS:-"tests/test_ed25519.py tests/test_ed25519_regular_review.py tests/test_sha256_merkle.py
    tests/test_risk.py tests/test_backends.py tests/test_cli.py tests/test_operator.py tests/test_localnet.py
    tests/test_clearing.py tests/test_clearing_columns_attacks.py tests/test_gpu_scripts.py tests/test_cuda_build.py
    tests/test_kernel_boundary_s5.py"}
run_step "tests (required: $required)" "${TEST_TIMEOUT:-240}" 60 tests.txt \
    env ACCEL_REQUIRE_BACKENDS=$required $py -m pytest -q -rs -p no:cacheprovider $tests -k "not nvcc and not fits_registers"
run_step "throughput (cuda)" "${THROUGHPUT_TIMEOUT:-200}" 60 throughput.txt \
    $py bench/gpu_throughput.py --gpu cuda --repeat "${REPEAT:-5}" --json "$out/throughput-cuda.json"
if [ "${TUNE:-1}" = 1 ]; then
    run_step "Ed25519 kernel variants" "${TUNE_TIMEOUT:-120}" 40 tune.txt $py bench/ed25519_variants.py
fi
run_step "clearing block through CUDA, the C fallback and software-only (accel validate-bench)" 150 45 consensus.txt \
    bash -c "for v in '--backend cuda' '--backend cpu' '--validation software'; do
                 $py -m accel.cli validate-bench --app clearing --txs 10000 \$v --runs 3 || exit 1; done"
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -n 1)
if [ "${PROFILE:-1}" = 1 ] && [ -z "$ncu" ]; then
    echo "note: no ncu found: the profile step is skipped"
elif [ "${PROFILE:-1}" = 1 ]; then
    # --clock-control none: the card is measured as found (its clocks are not ours to set)
    run_step "ncu profile of the Ed25519 verify kernels" 90 45 tune.txt \
        "$ncu" --clock-control none --kernel-name regex:av_ed25519_verify --section SpeedOfLight --section Occupancy \
            --section LaunchStats --section WarpStateStats --section ComputeWorkloadAnalysis \
            --section MemoryWorkloadAnalysis --section InstructionStats \
            $py bench/ed25519_variants.py --profile 32768
fi
if [ $opencl_gpu = 1 ]; then
    run_step "throughput (opencl)" "${THROUGHPUT_TIMEOUT:-200}" 60 throughput.txt \
        $py bench/gpu_throughput.py --gpu opencl --repeat 3 --json "$out/throughput-opencl.json"
fi
run_step "key-value block (accel validate-bench)" 90 30 consensus.txt \
    bash -c "for v in '--backend cuda' '--backend cpu' '--validation software'; do
                 $py -m accel.cli validate-bench --app kv --txs 10000 \$v --runs 3 || exit 1; done"
run_step "consensus sweep (simulated network)" "${SWEEP_TIMEOUT:-300}" 60 consensus.txt \
    env OMP_WAIT_POLICY=PASSIVE $py bench/consensus_sweep.py --validators 4,7 --txs 1000,10000 \
        --delays 0,5 --modes cuda,cpu,software --blocks 4 --json "$out/consensus.json"
if [ "${BENCH:-0}" = 1 ]; then
    # the OpenCL and CUDA cases in a process of their own, after the C fallback's (as make bench)
    run_step "pytest-benchmark suites" 300 60 bench.txt \
        bash -c "$py -m pytest -q -p no:cacheprovider bench --benchmark-only -m 'not driver' \
                     --benchmark-json='$out/bench.json' && env ACCEL_REQUIRE_BACKENDS=cuda \
                 $py -m pytest -q -p no:cacheprovider bench --benchmark-only -m driver \
                     --benchmark-json='$out/bench-drivers.json'"
    $py bench/report.py "$out/bench.json" "$out/bench-drivers.json" --md "$out/bench.md" --png-dir "$out" \
        > /dev/null 2>&1 || status=1
fi

# Least wanted first: the reply keeps the end of the output (every file comes back whole anyway).
echo "===== gpu-check summary ====="
[ -f "$out/tune.txt" ] && { echo "--- ncu headlines (all of it in tune.txt)"
    grep -E "^  av_ed25519|Duration|Achieved Occupancy|Compute \(SM\) Throughput|Executed Ipc Active|Warp Cycles Per Issued" \
        "$out/tune.txt" | head -60
    echo "--- Ed25519 variants"; grep -E "^(variant|shaped|portable)" "$out/tune.txt"; }
[ -f "$out/consensus.txt" ] && { echo "--- block validation"; tail -n 20 "$out/consensus.txt"; }
[ -f "$out/throughput.txt" ] && { echo "--- throughput"; grep -vE "^    n=" "$out/throughput.txt" | tail -n 50; }
echo "GPU: $gpu"
[ -f "$out/tests.txt" ] && { echo "tests: $(tail -n 1 "$out/tests.txt")"; grep -E "^(FAILED|ERROR)" "$out/tests.txt" | head -20; }
[ ${#skipped[@]} -gt 0 ] && echo "skipped for lack of budget: ${skipped[*]}"
[ -f "$out/bench.txt" ] && echo "bench: $(tail -n 1 "$out/bench.txt")"
echo "gpu-check: $([ $status = 0 ] && echo PASS || echo FAIL)"
exit $status
