"""What a client API request costs a clearing validator's event loop (docs/OPERATOR.md): a plain
measurement, with its baseline in the same process where one is meaningful.

- admission: `ClearingApp.submit_many` of a `/broadcast_txs` batch of 1,000 signed clearing
  transactions (trades with two signatures each, oracle marks), software-only validation
  (PyNaCl; a signature libsodium refuses decided by the C fallback's verdict) against accel
  validation on the C fallback, alternated, each round a fresh mempool; the same batch with every
  signature bad (one bit of S flipped), the refused path.
- `/txs`: the handler's work for 1,000 hashes (the strict JSON parse of the body, the hashes
  decoded, a status each, the JSON answer built: `Rpc.txs` without aiohttp's transport).

    python bench/api_costs.py [--rounds 9] [--batch 1000]

Prints medians (ms) of `--rounds` rounds and the ratios. Single-threaded C fallback
(`OMP_NUM_THREADS=1` unless set) so both sides use one core, as a loop does."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "1")

from aiohttp import web  # noqa: E402

from consensus import rpc  # noqa: E402
from consensus.apps import clearing_tx as ctx  # noqa: E402
from consensus.apps.clearing_app import ClearingApp  # noqa: E402
from consensus.apps.clearing_load import ClearingLoad, genesis_market  # noqa: E402
from consensus.verify import Verifier  # noqa: E402


def _median_ms(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def admission(batch: int, rounds: int) -> dict:
    load = ClearingLoad(seed=5, users=200)
    genesis = genesis_market("cpu")
    for body, _ in load.take(load.setup_size):
        ctx.apply(genesis, ctx.decode(body))
    good = load.take(batch, mark_every=200)
    bad = [(body, [s[:40] + bytes([s[40] ^ 1]) + s[41:] for s in sigs]) for body, sigs in good]
    apps = {mode: ClearingApp(Verifier(mode, "cpu" if mode == "accel" else None), genesis, max_txs=batch)
            for mode in ("accel", "software")}
    signatures = sum(len(s) for _, s in good)

    def submit(app, items, expect_refused):
        def run():
            app.mempool.clear()
            reasons = app.submit_many(items)
            assert all(bool(r) == expect_refused for r in reasons), reasons[:3]
        return run

    out = {"transactions": batch, "signatures": signatures}
    for name, items, refused in (("valid", good, False), ("every signature bad", bad, True)):
        runs = {mode: [] for mode in apps}
        for mode, app in apps.items():
            submit(app, items, refused)()  # warm up
        for _ in range(rounds):  # alternated, one round each at a time
            for mode, app in apps.items():
                runs[mode].append(_median_ms(submit(app, items, refused), 1))
        out[name] = {mode: statistics.median(v) for mode, v in runs.items()}
    return out


def txs_answer(batch: int, rounds: int) -> dict:
    digests = [bytes([i % 256, i // 256]) * 16 for i in range(batch)]
    node = SimpleNamespace(tx_heights={d: 1_000 + i for i, d in enumerate(digests)},
                           app=SimpleNamespace(mempool={}, refused={}))
    server = SimpleNamespace(node=node)
    raw = json.dumps({"hashes": ["0x" + d.hex() for d in digests]}).encode()

    def handler():
        body = json.loads(raw, parse_constant=rpc._no_constant, object_pairs_hook=rpc._unique)
        hashes = [rpc.decode_hash(h, f"hashes[{i}]") for i, h in enumerate(body["hashes"])]
        response = web.json_response({"results": [rpc.Rpc._tx_status(server, d) for d in hashes]})
        return len(response.body)

    size = handler()
    return {"hashes": batch, "body_bytes": len(raw), "answer_bytes": size, "ms": _median_ms(handler, rounds)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--batch", type=int, default=1000)
    args = ap.parse_args(argv)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
          f"load average {os.getloadavg()[0]:.2f}")
    a = admission(args.batch, args.rounds)
    print(f"submit_many of {a['transactions']:,} clearing transactions ({a['signatures']:,} signatures), "
          f"medians of {args.rounds}, alternated:")
    for name in ("valid", "every signature bad"):
        acc, sw = a[name]["accel"], a[name]["software"]
        print(f"  {name:20s} C fallback {acc:8.1f} ms   software-only {sw:8.1f} ms   software / C {sw / acc:5.2f}x   "
              f"software-only {sw * 1e3 / a['transactions']:.0f} us a transaction")
    t = txs_answer(args.batch, args.rounds * 5)
    print(f"/txs handler, {t['hashes']:,} hashes ({t['body_bytes']:,} B body, {t['answer_bytes']:,} B answer), "
          f"median of {args.rounds * 5}: {t['ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
