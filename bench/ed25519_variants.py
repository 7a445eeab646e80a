"""Tuning of the GPU-shaped Ed25519 kernels (kernels/ed25519_gpu.h) on CUDA: each variant is the
module built with other -D values of its tunables, its verdicts checked against the C fallback on
valid, tampered, ZIP-215 edge and torsion-carrying signatures, then its kernel time at 2^20
signatures of 100-byte messages, beside the portable one-kernel path.

    python bench/ed25519_variants.py        (NVRTC takes about a minute per variant, cold)

Prints one row per variant; the fastest with the same verdicts is what kernels/ed25519_gpu.h and
accel/ed25519.py (GPU_SHAPED) should default to."""
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

import cupy as cp  # noqa: E402

import accel  # noqa: E402
import test_ed25519 as cases_from  # noqa: E402
from accel.backends.base import inline_source  # noqa: E402
from accel.backends.cuda import NVRTC_OPTIONS  # noqa: E402
from accel.ed25519 import hash_order  # noqa: E402
from accel.packing import pack_fixed, pack_messages  # noqa: E402
from gpu_throughput import signed_batch  # noqa: E402

VARIANTS = {"shaped w4 b8": ("-DED_GPU_A_WINDOW=4", "-DED_GPU_BLOCKS_PER_SM=8"),
            "shaped w5 b8": ("-DED_GPU_A_WINDOW=5", "-DED_GPU_BLOCKS_PER_SM=8"),
            "shaped w5 b7": ("-DED_GPU_A_WINDOW=5", "-DED_GPU_BLOCKS_PER_SM=7")}
N = 1 << 20


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


def main():
    mixed, tors = cases_from.mixed_batch(), cases_from.torsion_batch(96, seed=21)
    pks, msgs, sigs = (a + b for a, b in zip(mixed, tors))
    want = accel.ed25519_verify_batch(pks, msgs, sigs, backend="cpu")
    data, offsets = pack_messages(msgs)
    check_args = [cp.asarray(a) for a in (pack_fixed(pks, 32, "pk"), data, offsets, pack_fixed(sigs, 64, "sig"))]
    big = signed_batch(N, 65536)
    bench_args = [cp.asarray(a) for a in (big[0], big[1].reshape(-1), np.arange(N + 1, dtype=np.uint64) * 100, big[2])]
    builds = {name: (inline_source("ed25519_gpu.h"), shaped, opts) for name, opts in VARIANTS.items()}
    builds["portable"] = (inline_source("ed25519.h"), portable, ())
    print("variant        verdicts  M sig/s (kernel, 2^20)  registers  local bytes  compile s", flush=True)
    for name, (body, kind, opts) in builds.items():
        t0 = time.perf_counter()
        mod = cp.RawModule(code=inline_source("portable.h") + "\n" + body, options=NVRTC_OPTIONS + opts)
        run, fn = kind(mod)
        compile_s = time.perf_counter() - t0
        same = np.array_equal(run(check_args, len(pks), hash_order(offsets)).get().astype(bool), want)
        rate = N / median_s(lambda: run(bench_args, N, None)) / 1e6
        print(f"{name:14s} {'same' if same else 'DIFF':8s}  {rate:8.3f}                {fn.num_regs:9d}  "
              f"{fn.local_size_bytes:11d}  {compile_s:9.1f}", flush=True)


if __name__ == "__main__":
    main()
