"""Tuning of the Ed25519 verify kernels on CUDA: each variant is a kernel module built with other
-D values of its tunables (kernels/ed25519_fe.h, ed25519_ge.h, ed25519_gpu.h) or a register cap,
and launched with some block size; its verdicts are checked against the C fallback on valid, tampered, ZIP-215 edge and
torsion-carrying signatures, then its kernel time is taken at 2^20 signatures of 100-byte
messages.

    python bench/ed25519_variants.py        (NVRTC takes about a minute per variant, cold)
    ncu ... python bench/ed25519_variants.py --profile 65536   (one launch of each, for a profiler)
    python bench/ed25519_variants.py --prebuild DIR [--arch sm_90]
                                            (nvcc, no GPU: cubins the CUDA backend then loads
                                             from DIR = [accel] cuda_cubin_dir, in seconds)

Prints one row per variant; the fastest with the same verdicts is what the kernels' tunables and
accel/ed25519.py (GPU_SHAPED) should default to."""
import argparse
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

OUTLINED = ("-DED_OUTLINE_POINTS=1",)
OUTLINED_FE = ("-DED_OUTLINE_FE=1",)  # the shape NVVM once miscompiled: its verdicts are checked first
TWO_CARRIES = ("-DED_FE_CARRY_CHAINS=2",)
CAP128 = ("--maxrregcount=128",)  # two blocks of 256 (16 warps) per SM, at the cost of some spills
# name: (module, compiler options, threads per block). The one-kernel path (ed25519.h) takes any block
# size; the GPU-shaped one (ed25519_gpu.h) is written for blocks of ED_GPU_GROUP = 32. Registers
# (nvcc 13.0, sm_90) decide the warps per SM: inline, the one-kernel path needs 226, 8 warps in any
# block size; with the point formulas out of line 192, 10 warps in blocks of 32 (8 in blocks of
# 128 or 256); with the field functions out of line 156, 12 warps in blocks of 128.
VARIANTS = {
    "portable": ("ed25519.h", (), 256),
    # the schedule before regular digits, where a warp issued both additions at ~250 bits
    # (bench/ed25519_warp_model.py): 2.3x the loop's instructions, what the timing should show
    "portable sliding": ("ed25519.h", ("-DED_REGULAR_DIGITS=0",), 256),
    # 3-bit digits of k from 4 multiples of -A: 85 additions instead of 64, 640 B less stack
    "portable w3": ("ed25519.h", ("-DED_REGULAR_A_BITS=3",), 256),
    # 168 registers (72 B spilled, through L1) in blocks of 128: three blocks, 12 warps per SM
    # instead of 8, for a kernel whose schedulers mostly wait (bench/RESULTS.md)
    "portable r168 b128": ("ed25519.h", ("--maxrregcount=168",), 128),
    "portable outlined": ("ed25519.h", OUTLINED, 256),
    "portable outl. b32": ("ed25519.h", OUTLINED, 32),
    "portable fe outl.": ("ed25519.h", OUTLINED_FE, 256),
    "portable fe o. b128": ("ed25519.h", OUTLINED_FE, 128),
    "portable 2 carries": ("ed25519.h", TWO_CARRIES, 256),
    "portable outl. r128": ("ed25519.h", OUTLINED + CAP128, 256),
    "portable fe o. r128": ("ed25519.h", OUTLINED_FE + CAP128, 256),
    "shaped w3": ("ed25519_gpu.h", (), 32),
    "shaped w3 outlined": ("ed25519_gpu.h", OUTLINED, 32),
    "shaped w3 2 carries": ("ed25519_gpu.h", TWO_CARRIES, 32),
    # 4-bit digits of k (64 additions instead of 85) from 8 multiples: 46 KB per block, 4 per SM
    "shaped w4 4/SM": ("ed25519_gpu.h", ("-DED_GPU_A_WINDOW=4", "-DED_GPU_BLOCKS_PER_SM=4"), 32),
    # a smaller table (15 KB per block), 128 additions for k: 12 warps per SM instead of 8
    "shaped w2 outl. 12/SM": ("ed25519_gpu.h", ("-DED_GPU_A_WINDOW=2", "-DED_GPU_BLOCKS_PER_SM=12") + OUTLINED, 32),
}
N = 1 << 20


def prebuild(directory, arch):
    """The variants' own modules (plain modules come from `accel build-cuda`)."""
    builds = sorted({(module, opts) for module, opts, _ in VARIANTS.values() if opts})
    for module, opts, path, resources in cubins.build_all(arch, directory, builds):
        for r in resources:
            if r.kernel == ("av_ed25519_verify" if module == "ed25519.h" else "av_ed25519_verify_k"):
                print(f"{module} {' '.join(opts)}: {path.name}  {r.kernel} {r.registers} registers, {r.stack} B "
                      f"stack, {r.spill_stores} B spilled, {r.shared} B shared per block", flush=True)


def launcher(mod, module, block):
    """(run(device args, n, hash order) -> device verdicts, the verify kernel)."""
    if module == "ed25519.h":
        verify = mod.get_function("av_ed25519_verify")

        def run(d, n, order):
            out = cp.empty(n, cp.uint8)
            o = cp.asarray(order if order is not None else np.zeros(1, np.uint32))
            verify(((n + block - 1) // block,), (block,), (*d, o, np.uint32(order is not None), out, np.uint64(n)))
            return out
        return run, verify
    challenge, check = mod.get_function("av_ed25519_challenge"), mod.get_function("av_ed25519_verify_k")

    def run(d, n, order):
        ks, out = cp.empty((n, 32), cp.uint8), cp.empty(n, cp.uint8)
        o = cp.asarray(order if order is not None else np.zeros(1, np.uint32))
        challenge(((n + 255) // 256,), (256,), (*d, o, np.uint32(order is not None), ks, np.uint64(n)))
        check(((n + block - 1) // block,), (block,), (d[0], d[3], ks, out, np.uint64(n)))
        return out
    return run, check


def main(profile: int = 0):
    """profile > 0: launch each variant once on that many signatures and stop, for a profiler
    (ncu) to read; no checks, no timing."""
    import accel
    import test_ed25519 as cases_from
    from accel.ed25519 import hash_order
    from accel.packing import pack_fixed, pack_messages
    from gpu_throughput import kernel_s, signed_batch
    cuda = accel.get_backend("cuda")
    n = profile or N
    big = signed_batch(n, min(n, 65536))
    bench_args = [cp.asarray(a) for a in (big[0], big[1].reshape(-1), np.arange(n + 1, dtype=np.uint64) * 100, big[2])]
    if profile:
        for name, (module, opts, block) in VARIANTS.items():
            launcher(cuda.module(module, opts), module, block)[0](bench_args, n, None).get()
            print(f"profiled launch: {name}", flush=True)
        return
    mixed, tors = cases_from.mixed_batch(), cases_from.torsion_batch(96, seed=21)
    pks, msgs, sigs = (a + b for a, b in zip(mixed, tors))
    want = accel.ed25519_verify_batch(pks, msgs, sigs, backend="cpu")
    data, offsets = pack_messages(msgs)
    check_args = [cp.asarray(a) for a in (pack_fixed(pks, 32, "pk"), data, offsets, pack_fixed(sigs, 64, "sig"))]
    print("variant              verdicts  M sig/s (kernel, 2^20)  registers  local bytes  load s  from", flush=True)
    for name, (module, opts, block) in VARIANTS.items():
        t0 = time.perf_counter()
        run, fn = launcher(cuda.module(module, opts), module, block)
        load_s = time.perf_counter() - t0
        same = np.array_equal(run(check_args, len(pks), hash_order(offsets)).get().astype(bool), want)
        rate = N / kernel_s(cuda, lambda: run(bench_args, N, None), 5) / 1e6
        origin = Path(cuda.origins[module, opts]).name
        print(f"{name:20s} {'same' if same else 'DIFF':8s}  {rate:8.3f}                {fn.num_regs:9d}  "
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
