"""Tuning of the GPU-shaped Ed25519 kernels (kernels/ed25519_gpu.h) on CUDA: each variant is the
module built with other -D values of its tunables, its verdicts checked against the C fallback on
valid, tampered, ZIP-215 edge and torsion-carrying signatures, then its kernel time at 2^20
signatures of 100-byte messages, beside the portable one-kernel path.

    python bench/ed25519_variants.py        (NVRTC takes about a minute per variant, cold)
    ncu ... python bench/ed25519_variants.py --profile 65536   (one launch of each, for a profiler)
    python bench/ed25519_variants.py --prebuild DIR [--arch sm_90]
                                            (nvcc, no GPU: cubins the CUDA backend then loads
                                             from DIR = [accel] cuda_cubin_dir, in seconds)

Prints one row per variant; the fastest with the same verdicts is what kernels/ed25519_gpu.h and
accel/ed25519.py (GPU_SHAPED) should default to."""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench"), str(ROOT)]

from accel.backends import cubins  # noqa: E402

try:
    import cupy as cp
except ImportError:  # --prebuild needs nvcc, not CuPy
    cp = None

VARIANTS = {"shaped w4 b8": ("-DED_GPU_A_WINDOW=4", "-DED_GPU_BLOCKS_PER_SM=8"),
            "shaped w5 b8": ("-DED_GPU_A_WINDOW=5", "-DED_GPU_BLOCKS_PER_SM=8"),
            "shaped w5 b7": ("-DED_GPU_A_WINDOW=5", "-DED_GPU_BLOCKS_PER_SM=7")}
N = 1 << 20


def prebuild(directory, arch):
    builds = [("ed25519_gpu.h", opts) for opts in VARIANTS.values()]
    for module, opts, path, resources in cubins.build_all(arch, directory, builds):
        verify = [r for r in resources if r.kernel == "av_ed25519_verify_k"][0]
        print(f"{' '.join(opts)}: {path.name}  av_ed25519_verify_k {verify.registers} registers, "
              f"{verify.stack} B stack, {verify.spill_stores} B spilled, {verify.shared} B shared per group",
              flush=True)


def median_s(fn, reps=5):
    fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        cp.cuda.Device().synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def shaped(mod):
    challenge, check = mod.get_function("av_ed25519_challenge"), mod.get_function("av_ed25519_verify_k")

    def run(d, n, order):
        ks, out = cp.empty((n, 32), cp.uint8), cp.empty(n, cp.uint8)
        o = cp.asarray(order if order is not None else np.zeros(1, np.uint32))
        challenge(((n + 255) // 256,), (256,), (*d, o, np.uint32(order is not None), ks, np.uint64(n)))
        check(((n + 31) // 32,), (32,), (d[0], d[3], ks, out, np.uint64(n)))
        return out
    return run, check


def portable(mod):
    verify = mod.get_function("av_ed25519_verify")

    def run(d, n, order):
        out = cp.empty(n, cp.uint8)
        verify(((n + 255) // 256,), (256,), (*d, out, np.uint64(n)))
        return out
    return run, verify


def main(profile: int = 0):
    """profile > 0: launch each build's kernels once on that many signatures and stop, for a
    profiler (ncu) to read; no checks, no timing."""
    import accel
    import test_ed25519 as cases_from
    from accel.ed25519 import hash_order
    from accel.packing import pack_fixed, pack_messages
    from gpu_throughput import signed_batch
    cuda = accel.get_backend("cuda")
    mixed, tors = cases_from.mixed_batch(), cases_from.torsion_batch(96, seed=21)
    pks, msgs, sigs = (a + b for a, b in zip(mixed, tors))
    want = accel.ed25519_verify_batch(pks, msgs, sigs, backend="cpu")
    data, offsets = pack_messages(msgs)
    check_args = [cp.asarray(a) for a in (pack_fixed(pks, 32, "pk"), data, offsets, pack_fixed(sigs, 64, "sig"))]
    n = profile or N
    big = signed_batch(n, min(n, 65536))
    bench_args = [cp.asarray(a) for a in (big[0], big[1].reshape(-1), np.arange(n + 1, dtype=np.uint64) * 100, big[2])]
    builds = {name: ("ed25519_gpu.h", shaped, opts) for name, opts in VARIANTS.items()}
    builds["portable"] = ("ed25519.h", portable, ())
    if profile:
        for name, (module, kind, opts) in builds.items():
            kind(cuda.module(module, opts))[0](bench_args, n, None).get()
            print(f"profiled launch: {name}", flush=True)
        return
    print("variant        verdicts  M sig/s (kernel, 2^20)  registers  local bytes  load s  from", flush=True)
    for name, (module, kind, opts) in builds.items():
        t0 = time.perf_counter()
        run, fn = kind(cuda.module(module, opts))
        load_s = time.perf_counter() - t0
        same = np.array_equal(run(check_args, len(pks), hash_order(offsets)).get().astype(bool), want)
        rate = N / median_s(lambda: run(bench_args, N, None)) / 1e6
        origin = Path(cuda.origins[module, opts]).name
        print(f"{name:14s} {'same' if same else 'DIFF':8s}  {rate:8.3f}                {fn.num_regs:9d}  "
              f"{fn.local_size_bytes:11d}  {load_s:6.1f}  {origin}", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prebuild", metavar="DIR", help="only build the variants' cubins into DIR with nvcc")
    ap.add_argument("--arch", default="sm_90", help="target of --prebuild (default sm_90: H100, H200)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="launch each variant once on N signatures, for ncu; no checks or timing")
    args = ap.parse_args()
    if args.prebuild:
        prebuild(args.prebuild, args.arch)
    else:
        main(args.profile)
