"""The memory a restart's replay takes, against the length of the chain it replays: a validator
restarted with no snapshot (snapshot_every = 0, or snapshots that do not restore) replays every
committed block from the genesis; what it holds meanwhile must not grow with the chain.

A simulated kv network (4 validators, `--txs` transfers a block) commits `--blocks` blocks, one
validator's store on disk; then that store is opened again and a Core built from it (the
replay, as consensus.node does it), with tracemalloc tracing: the peak of Python allocations
during the replay, and that peak per replayed block. Run it for two chain lengths: a bound holds
where the peak stays put.

    python bench/replay_memory.py [--blocks 300 1200] [--txs 50]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import tracemalloc
from pathlib import Path


def replay_peak(blocks: int, txs: int) -> tuple[int, int]:
    from consensus import snapshots
    from consensus.core import Core
    from consensus.sim import Simulation
    from consensus.store import Store
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v1.db"
        sim = Simulation(n=4, seed=3, txs_per_block=txs, validation="software")
        sim.durable("v1", path)
        sim.load(txs * (blocks + 10))
        sim.run(blocks=blocks, max_ms=10**9)
        sim._node("v1").store.close()
        node = sim._node("v1")
        key = sim.keys[node.index]
        app = sim._make_app(sim.genesis)
        store = Store(path)
        try:
            tracemalloc.start()
            start = snapshots.load(store, app)
            core = Core(sim.cfg[node.index], lambda m: key.sign(m).signature, app, store.safety(), start.history,
                        store.committed_range, start.base)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            return core.replayed, peak
        finally:
            store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, nargs="+", default=[300, 1200])
    ap.add_argument("--txs", type=int, default=50, help="transfers a block (default 50)")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    for blocks in args.blocks:
        replayed, peak = replay_peak(blocks, args.txs)
        print(f"{replayed:6d} blocks replayed ({args.txs} transfers each): peak {peak / 2**20:7.1f} MiB, "
              f"{peak / max(1, replayed) / 1024:6.1f} KiB a block", flush=True)


if __name__ == "__main__":
    main()
