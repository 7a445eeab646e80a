"""Field operations a warp issues per signature in the double-scalar loop of each Ed25519 verify
schedule (kernels/ed25519_ge.h, ed25519_gpu.h): a model, not a timing. On a GPU the 32 threads of
a warp execute a branch whenever any of them takes it, so a warp pays for an addition at a bit
where any thread has a digit. Sliding windows (wNAF) put digits at random bits in each thread;
regular digits put them at the same bits in all. The script draws random scalars, applies each
schedule's digit rules as the kernels do, and counts multiplies (M) and squares (S) per warp.

    python bench/ed25519_warp_model.py [--warps 256] [--mul 301] [--sq 220] [--seed 11]

--mul/--sq: sm_90 instructions per field multiply and square (SASS of test kernels, bench/RESULTS.md),
to turn the counts into instructions per signature."""
import argparse
import random

L = 2**252 + 27742317777372353535851937790883648493
WARP = 32
DBL = (3, 4)      # p1p1 -> p2 (3 M), then the doubling (4 S)
ADD = (8, 0)      # p1p1 -> p3 (4 M), then an addition of a cached point (4 M)
MADD = (7, 0)     # p1p1 -> p3 (4 M), then a mixed addition of an affine point (3 M)


def wnaf(k: int, w: int) -> list[int]:
    """ed_wnaf: signed odd digits, |d| < 2^(w-1), by bit position."""
    out, pos, carry = [0] * 256, 0, 0
    while pos < 256:
        window = carry + ((k >> pos) & ((1 << w) - 1))
        if window & 1 == 0:
            pos += 1
            continue
        out[pos] = window if window < 1 << (w - 1) else window - (1 << w)
        carry = int(window >= 1 << (w - 1))
        pos += w
    return out


def top(*digit_lists) -> int:
    return max((i for d in digit_lists for i in range(256) if d[i]), default=-1)


def sliding_portable(ss, ks):
    """ed_check_sliding: wNAF-5 of k over 8 cached -A, wNAF-8 of s from ED_BASE."""
    sn, kn = [wnaf(s, 8) for s in ss], [wnaf(k, 5) for k in ks]
    steps = max(top(a, b) for a, b in zip(sn, kn)) + 1  # the warp runs its longest thread's loop
    adds = sum(any(d[i] for d in kn) for i in range(steps))
    madds = sum(any(d[i] for d in sn) for i in range(steps))
    return {"dbl": steps, "add": adds, "madd": madds}


def shaped_sliding(ss, ks):
    """ed_gpu_check before regular digits: wNAF-4 of k (4 cached -A in shared memory); each nonzero
    byte of s adds its odd part at its lowest set bit; both through ed_add."""
    kn = [wnaf(k, 4) for k in ks]
    sb = []
    for s in ss:
        d = [0] * 256
        for j in range(32):
            b = (s >> (8 * j)) & 0xFF
            if b:
                tz = (b & -b).bit_length() - 1
                d[8 * j + tz] = b >> tz
        sb.append(d)
    steps = max(top(a, b) for a, b in zip(sb, kn)) + 1
    adds = sum(any(d[i] for d in kn) for i in range(steps)) + sum(any(d[i] for d in sb) for i in range(steps))
    return {"dbl": steps, "add": adds, "madd": 0}


def regular(wa, b_through_add):
    """ed_check_regular (wa = 4, B by mixed addition) and ed_gpu_check (wa = 3, B through ed_add):
    the same steps in every thread, whatever the scalars."""
    n_a, n_b = -(-255 // wa), -(-255 // 8)
    fixed = {"dbl": wa * (n_a - 1), "add": n_a + (n_b if b_through_add else 0), "madd": 0 if b_through_add else n_b}
    return lambda ss, ks: fixed


def per_thread(ss, ks):
    """What one thread needs alone (a CPU's cost): wNAF-5 and wNAF-8, no warp."""
    sn, kn = wnaf(ss[0], 8), wnaf(ks[0], 5)
    return {"dbl": top(sn, kn) + 1, "add": sum(map(bool, kn)), "madd": sum(map(bool, sn))}


SCHEDULES = {
    "one kernel, sliding (before)": sliding_portable,
    "one kernel, regular (now)": regular(4, False),
    "GPU-shaped, sliding (before)": shaped_sliding,
    "GPU-shaped, regular (now)": regular(3, True),
    "one thread alone, sliding": per_thread,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warps", type=int, default=256)
    ap.add_argument("--mul", type=int, default=301, help="instructions per field multiply")
    ap.add_argument("--sq", type=int, default=220, help="instructions per field square")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    warps = [([rng.randrange(L) for _ in range(WARP)], [rng.randrange(L) for _ in range(WARP)])
             for _ in range(args.warps)]
    print(f"{args.warps} warps of {WARP} random (s, k); per warp, averaged; instructions at "
          f"{args.mul}/M and {args.sq}/S\n")
    print("| schedule | doublings | additions | mixed additions | M | S | loop instructions (k) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = None
    for name, schedule in SCHEDULES.items():
        tot = {"dbl": 0, "add": 0, "madd": 0}
        for ss, ks in warps:
            for key, v in schedule(ss, ks).items():
                tot[key] += v
        avg = {key: v / len(warps) for key, v in tot.items()}
        m = avg["dbl"] * DBL[0] + avg["add"] * ADD[0] + avg["madd"] * MADD[0]
        s = avg["dbl"] * DBL[1]
        instr = m * args.mul + s * args.sq
        base = base or instr
        print(f"| {name} | {avg['dbl']:.1f} | {avg['add']:.1f} | {avg['madd']:.1f} | {m:.0f} | {s:.0f} | "
              f"{instr / 1e3:.0f} ({instr / base:.2f}x) |")


if __name__ == "__main__":
    main()
