"""GPU throughput figures (issue 11) beside the C fallback, in one process and one run.

For each kernel: kernel time with the inputs already on the device (launch to synchronise), the
end-to-end time of the public API (host arrays in, results out), the C fallback's end-to-end time
on the same inputs, and a bit-for-bit comparison of the two. Then, per kernel, the crossover: the
smallest batch from which the GPU stays faster end to end (what `gpu_min_batch` defaults to).

    python bench/gpu_throughput.py [--gpu cuda|opencl] [--small] [--json FILE]

--small shrinks every size so the script itself can be checked on PoCL without a GPU.
Times are medians of --repeat runs after one warm-up."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import accel
from accel import ed25519, merkle, risk
from accel.backends import get_backend
from accel.backends.base import KernelError
from accel.ed25519 import GPU_GROUP, verify_on_gpu

os.environ["ACCEL_GPU_FALLBACK"] = "false"  # a GPU error must show, not be redone on the C fallback


def median_s(fn, repeat: int) -> float:
    fn()  # warm-up: compilation, module load, allocator pools
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def kernel_s(b, fn, repeat: int) -> float:
    """Device time of fn's launches: the host clock around launch + synchronise."""
    def run():
        fn()
        b.synchronize()
    return median_s(run, repeat)


def signed_batch(n: int, distinct: int, msg_len: int = 100):
    """n signatures of msg_len-byte messages: `distinct` fresh ones (PyNaCl) tiled to n. Every
    item is verified in full whatever repeats, so tiling changes no work, only set-up time."""
    from nacl.signing import SigningKey
    rng = np.random.default_rng(11)
    d = min(n, distinct)
    msgs = rng.integers(0, 256, size=(d, msg_len), dtype=np.uint8)
    pks = np.empty((d, 32), np.uint8)
    sigs = np.empty((d, 64), np.uint8)
    keys = [SigningKey(rng.bytes(32)) for _ in range(min(d, 1024))]
    for i in range(d):
        sk = keys[i % len(keys)]
        pks[i] = np.frombuffer(bytes(sk.verify_key), np.uint8)
        sigs[i] = np.frombuffer(sk.sign(msgs[i].tobytes()).signature, np.uint8)
    reps = -(-n // d)
    return (np.tile(pks, (reps, 1))[:n], np.tile(msgs, (reps, 1))[:n], np.tile(sigs, (reps, 1))[:n])


def rate(n, seconds):
    return n / seconds if seconds > 0 else float("inf")


def crossover(sizes, gpu_s, cpu_s):
    """Smallest size from which the GPU is faster at every larger size measured (None: never)."""
    best = None
    for n in reversed(sizes):
        if gpu_s[n] < cpu_s[n]:
            best = n
        else:
            break
    return best


def sweep(label, sizes, gpu_fn, cpu_fn, repeat):
    gpu_s = {n: median_s(lambda: gpu_fn(n), repeat) for n in sizes}
    cpu_s = {n: median_s(lambda: cpu_fn(n), repeat) for n in sizes}
    rows = [{"n": n, "gpu_ms": gpu_s[n] * 1e3, "cpu_ms": cpu_s[n] * 1e3, "gpu_over_cpu": cpu_s[n] / gpu_s[n]}
            for n in sizes]
    x = crossover(sizes, gpu_s, cpu_s)
    print(f"  {label} crossover sweep (end to end, ms):")
    for r in rows:
        print(f"    n={r['n']:>9,}  gpu {r['gpu_ms']:9.3f}  cpu {r['cpu_ms']:9.3f}  gpu speed-up {r['gpu_over_cpu']:6.2f}x")
    print(f"  {label} crossover: {x if x is not None else 'GPU never faster in this range'}")
    return {"rows": rows, "crossover": x}


def bench_ed25519(g, c, small, repeat):
    big = 4096 if small else 1 << 20
    pks, msgs, sigs = signed_batch(big, 512 if small else 65536)
    out = {}
    probe = min(big, 65536)
    accel.ed25519_verify_batch(pks[:probe], msgs[:probe], sigs[:probe], backend=g)  # load the modules first
    t0 = time.perf_counter()
    accel.ed25519_verify_batch(pks[:probe], msgs[:probe], sigs[:probe], backend=g)
    per_sig = (time.perf_counter() - t0) / probe
    while big > probe and big * per_sig > 4.0:  # keep one run within seconds on a slow kernel
        big //= 2
    pks, msgs, sigs = pks[:big], msgs[:big], sigs[:big]
    d = [g.to_device(a) for a in (pks, msgs.reshape(-1), np.arange(big + 1, dtype=np.uint64) * 100, sigs)]
    res, ks = g.empty((big,), np.uint8), g.empty((big, 32), np.uint8)
    none = g.to_device(np.zeros(1, np.uint32))
    k = kernel_s(g, lambda: verify_on_gpu(g, big, *d, res, None), repeat)
    k_hash = kernel_s(g, lambda: g.launch("ed25519_challenge", big, *d, none, np.uint32(0), ks), repeat)
    k_check = kernel_s(g, lambda: g.launch("ed25519_verify_k", big, d[0], d[3], ks, res, group=GPU_GROUP), repeat)
    k_portable = kernel_s(g, lambda: g.launch("ed25519_verify", big, *d, none, np.uint32(0), res), max(1, repeat // 2))
    e2e_g = median_s(lambda: accel.ed25519_verify_batch(pks, msgs, sigs, backend=g), repeat)
    ed25519.GPU_SHAPED = not ed25519.GPU_SHAPED  # the other path end to end too, to choose the default
    try:
        e2e_other = median_s(lambda: accel.ed25519_verify_batch(pks, msgs, sigs, backend=g), repeat)
    finally:
        ed25519.GPU_SHAPED = not ed25519.GPU_SHAPED
    e2e_c = median_s(lambda: accel.ed25519_verify_batch(pks, msgs, sigs, backend=c), max(1, repeat // 3))
    vg = accel.ed25519_verify_batch(pks, msgs, sigs, backend=g)
    bad = sigs.copy()
    bad[::3, 40] ^= 1  # every third signature broken: verdicts must still match
    same = bool((vg == accel.ed25519_verify_batch(pks, msgs, sigs, backend=c)).all()) and bool(
        (accel.ed25519_verify_batch(pks, msgs, bad, backend=g) == accel.ed25519_verify_batch(pks, msgs, bad, backend=c)).all())
    out["batch"] = {"n": big, "kernel_sig_per_s": rate(big, k), "challenge_kernel_ms": k_hash * 1e3,
                    "check_kernel_ms": k_check * 1e3, "portable_kernel_sig_per_s": rate(big, k_portable),
                    "e2e_sig_per_s": rate(big, e2e_g), "default_path": "GPU-shaped" if ed25519.GPU_SHAPED else "one-kernel",
                    "other_path_e2e_sig_per_s": rate(big, e2e_other),
                    "cpu_e2e_sig_per_s": rate(big, e2e_c), "all_valid": bool(vg.all()), "identical": same}
    block = min(10_000, big)
    b_g = median_s(lambda: accel.ed25519_verify_batch(pks[:block], msgs[:block], sigs[:block], backend=g), repeat)
    b_c = median_s(lambda: accel.ed25519_verify_batch(pks[:block], msgs[:block], sigs[:block], backend=c), repeat)
    # A block fills few SMs in blocks of 256 threads (10,000 signatures: 40 of an H100's 132), so
    # its time is one thread's latency; smaller thread blocks spread it over more SMs.
    d_block = [g.to_device(a) for a in (pks[:block], msgs[:block].reshape(-1),
                                        np.arange(block + 1, dtype=np.uint64) * 100, sigs[:block])]
    res_block = g.empty((block,), np.uint8)
    by_group = {}
    for grp in (32, 64, 128, 256):
        try:
            by_group[grp] = 1e3 * kernel_s(g, lambda: g.launch("ed25519_verify", block, *d_block, none, np.uint32(0),
                                                               res_block, group=grp), repeat)
        except KernelError as exc:  # a work-group size this device refuses
            print(f"  (threads per block {grp}: {exc})")
    out["block"] = {"n": block, "gpu_ms": b_g * 1e3, "cpu_ms": b_c * 1e3, "kernel_ms_by_threads_per_block": by_group}
    print(f"ed25519 ({g.device}): {big:,} x 100-byte messages")
    print(f"  kernel {rate(big, k) / 1e6:8.3f} M sig/s   end-to-end {rate(big, e2e_g) / 1e6:8.3f} M sig/s   "
          f"C fallback {rate(big, e2e_c) / 1e6:8.3f} M sig/s   identical={same}")
    print(f"  GPU-shaped kernels: challenges {k_hash * 1e3:.2f} ms + checks {k_check * 1e3:.2f} ms; "
          f"portable one-kernel path {rate(big, k_portable) / 1e6:.3f} M sig/s")
    print(f"  end to end: default ({out['batch']['default_path']}) {rate(big, e2e_g) / 1e6:.3f} M sig/s, "
          f"the other path {rate(big, e2e_other) / 1e6:.3f} M sig/s")
    print(f"  block of {block:,}: gpu {b_g * 1e3:.2f} ms, C fallback {b_c * 1e3:.2f} ms; one-kernel path's kernel "
          "by threads per block: " + ", ".join(f"{grp}: {ms:.2f} ms" for grp, ms in by_group.items()))
    sizes = [1 << s for s in range(4, 13 if small else 17, 2)]
    out["sweep"] = sweep("ed25519", sizes,
                         lambda n: accel.ed25519_verify_batch(pks[:n], msgs[:n], sigs[:n], backend=g),
                         lambda n: accel.ed25519_verify_batch(pks[:n], msgs[:n], sigs[:n], backend=c), repeat)
    return out


def bench_merkle(g, c, small, repeat):
    n = 1 << (14 if small else 24)
    leaves = np.random.default_rng(5).integers(0, 256, size=(n, 32), dtype=np.uint8)
    d_data, d_off = g.to_device(leaves.reshape(-1)), g.to_device(np.arange(n + 1, dtype=np.uint64) * 32)
    k = kernel_s(g, lambda: merkle.device_levels(g, d_data, d_off, n), repeat)
    e2e_g = median_s(lambda: accel.merkle_root(leaves, backend=g), repeat)
    e2e_c = median_s(lambda: accel.merkle_root(leaves, backend=c), repeat)
    same = accel.merkle_root(leaves, backend=g) == accel.merkle_root(leaves, backend=c)
    print(f"merkle ({g.device}): {n:,} x 32-byte leaves")
    print(f"  kernel {rate(n, k) / 1e9:8.3f} G leaves/s   end-to-end {rate(n, e2e_g) / 1e9:8.3f} G leaves/s   "
          f"C fallback {rate(n, e2e_c) / 1e9:8.3f} G leaves/s   identical={same}")
    out = {"batch": {"n": n, "kernel_leaves_per_s": rate(n, k), "e2e_leaves_per_s": rate(n, e2e_g),
                     "cpu_e2e_leaves_per_s": rate(n, e2e_c), "identical": same}}
    sizes = [1 << s for s in range(6, 15 if small else 21, 2)]
    out["sweep"] = sweep("merkle", sizes, lambda m: accel.merkle_root(leaves[:m], backend=g),
                         lambda m: accel.merkle_root(leaves[:m], backend=c), repeat)
    return out


def bench_greeks(g, c, small, repeat):
    n = 10**5 if small else 10**7
    rng = np.random.default_rng(7)
    f = rng.uniform(1_000.0, 100_000.0, n)
    args = (f, f * np.exp(rng.normal(0, 0.3, n)), rng.uniform(1 / 365, 1.0, n), 0.02, rng.uniform(0.2, 1.5, n),
            rng.random(n) < 0.5)
    call = args[5].astype(np.uint8) * np.uint8(risk.CALL)
    host = [args[0], args[1], args[2], np.full(n, 0.02), np.full(n, 0.02), args[4], args[0], call]
    dev = [g.to_device(a) for a in host]
    res = g.empty((6, n), np.float64)
    k = kernel_s(g, lambda: g.launch("greeks", n, *dev, np.uint32(0), res), repeat)
    e2e_g = median_s(lambda: risk.greeks(*args, backend=g), repeat)
    e2e_c = median_s(lambda: risk.greeks(*args, backend=c), repeat)
    a, b = np.array(risk.greeks(*args, backend=g)), np.array(risk.greeks(*args, backend=c))
    same = a.tobytes() == b.tobytes()
    print(f"greeks ({g.device}): {n:,} options, price + 5 greeks in double")
    print(f"  kernel {rate(n, k) / 1e9:8.3f} G opt/s   end-to-end {rate(n, e2e_g) / 1e9:8.3f} G opt/s   "
          f"C fallback {rate(n, e2e_c) / 1e9:8.3f} G opt/s   identical={same}")
    out = {"batch": {"n": n, "kernel_options_per_s": rate(n, k), "e2e_options_per_s": rate(n, e2e_g),
                     "cpu_e2e_options_per_s": rate(n, e2e_c), "identical": same}}
    sizes = [10**s for s in range(2, 6 if small else 8)]
    out["sweep"] = sweep("greeks", sizes, lambda m: risk.greeks(*(x[:m] if np.ndim(x) else x for x in args), backend=g),
                         lambda m: risk.greeks(*(x[:m] if np.ndim(x) else x for x in args), backend=c), repeat)
    return out


def first_call_s(gpu: str) -> dict:
    """Seconds from a fresh process's first Ed25519 call to its result: with CuPy's on-disk cache
    of compiled modules warm (this process compiled them), no compilation is paid again."""
    code = ("import time, numpy as np, accel; t = time.perf_counter(); "
            f"accel.ed25519_verify_batch(np.zeros((1, 32), np.uint8), [b''], np.zeros((1, 64), np.uint8), backend='{gpu}'); "
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    return {"seconds": float(out.stdout.strip()) if out.returncode == 0 else None, "stderr": out.stderr[-500:]}


def bench_margin(g, c, small, repeat):
    """portfolio_margin: accounts x 20 positions over 400 instruments, the full scenario grid."""
    rng = np.random.default_rng(3)
    m = 400
    kind = rng.choice([risk.CALL, risk.PUT, risk.FUTURE], m, p=[0.45, 0.45, 0.1]).astype(np.uint8)
    marks = risk.Marks(index=60_000.0, rate=0.02, forward=60_000.0 * np.exp(rng.normal(0, 0.01, m)),
                       strike=60_000.0 * np.exp(rng.normal(0, 0.25, m)), expiry=rng.uniform(1 / 365, 1.0, m),
                       vol=rng.uniform(0.3, 1.2, m), kind=kind)

    def book(accounts):
        return risk.Portfolio(offsets=np.arange(accounts + 1) * 20, instrument=rng.integers(0, m, accounts * 20),
                              size=np.round(rng.normal(0, 5, accounts * 20), 1))
    n = 10_000 if small else 100_000
    pf = book(n)
    e2e_g = median_s(lambda: risk.portfolio_margin(pf, marks, backend=g), repeat)
    e2e_c = median_s(lambda: risk.portfolio_margin(pf, marks, backend=c), repeat)
    same = all(np.array_equal(a, b) for a, b in zip(risk.portfolio_margin(pf, marks, backend=g),
                                                    risk.portfolio_margin(pf, marks, backend=c)))
    print(f"margin ({g.device}): {n:,} accounts x 20 positions, the default scenario grid")
    print(f"  end-to-end {rate(n, e2e_g) / 1e6:8.3f} M accounts/s   C fallback {rate(n, e2e_c) / 1e6:8.3f} M accounts/s   "
          f"identical={same}")
    out = {"batch": {"n": n, "e2e_accounts_per_s": rate(n, e2e_g), "cpu_e2e_accounts_per_s": rate(n, e2e_c),
                     "identical": same}}
    books = {k: book(k) for k in [10**s for s in range(1, 5 if small else 6)]}
    out["sweep"] = sweep("margin", sorted(books), lambda k: risk.portfolio_margin(books[k], marks, backend=g),
                         lambda k: risk.portfolio_margin(books[k], marks, backend=c), repeat)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpu", default="cuda", choices=["cuda", "opencl"])
    ap.add_argument("--small", action="store_true", help="small sizes, to check the script on PoCL")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--only", default="ed25519,merkle,greeks,margin")
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args(argv)
    g, c = get_backend(args.gpu), get_backend("cpu")
    print(f"GPU backend: {g.device}; C fallback: {c.device}")
    results = {"gpu": g.device, "cpu": c.device, "host_cores": os.cpu_count()}
    ok = True

    def save():  # after every kernel: a run cut short by its time limit keeps what it measured
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=1)
    for name in args.only.split(","):
        r = globals()["bench_" + name](g, c, args.small, args.repeat)
        ok &= r["batch"]["identical"]
        results[name] = r
        save()
        sys.stdout.flush()
    results["fresh_process_first_call"] = first_call_s(args.gpu)
    print(f"first Ed25519 call in a fresh process (compiled modules cached): "
          f"{results['fresh_process_first_call']['seconds']} s")
    save()
    print("every GPU result identical to the C fallback" if ok else "MISMATCH between GPU and C fallback")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
