"""One validator process: the core, driven by the TCP transport, real timers and the SQLite store.

Its configuration is a TOML file (`accel localnet` writes them):
  [node]    index, listen ("host:port"), seed (hex of the 32-byte signing key seed), data_dir,
            app ("kv" | "clearing"), validation ("accel" | "software"), txs_per_block,
            base_timeout_ms, delay_ms, events (a JSON-lines file of proposals and commits),
            load_seed (the built-in load generator)
  [network] keys (every validator's public key, hex, by index), addresses ("host:port" by index)
The accel backend comes from the usual [accel] configuration (accel.toml, ACCEL_* variables).
Before it joins, the node runs accel's readiness check on the backend validation uses and refuses
to start if any kernel fails."""
from __future__ import annotations

import asyncio
import json
import logging
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from accel import readiness

from .apps.kv import KvApp, transfer_body
from .core import Broadcast, Committed, Config, Core, Persist, Rejected, Send, SetTimer
from .messages import Proposal
from .store import Store
from .verify import Verifier

log = logging.getLogger("consensus.node")
CLIENTS = 64
FUNDS = 10**15


@dataclass(frozen=True)
class NodeConfig:
    index: int
    listen: tuple[str, int]
    seed: bytes
    data_dir: Path
    validation: str
    txs_per_block: int
    base_timeout_ms: float
    delay_ms: float
    events: Path
    load_seed: int
    keys: tuple[bytes, ...]
    addresses: tuple[tuple[str, int], ...]
    app: str = "kv"

    @classmethod
    def load(cls, path) -> "NodeConfig":
        data = tomllib.loads(Path(path).read_text())
        node, net = data["node"], data["network"]

        def addr(text):
            host, port = text.rsplit(":", 1)
            return host, int(port)
        return cls(int(node["index"]), addr(node["listen"]), bytes.fromhex(node["seed"]), Path(node["data_dir"]),
                   node.get("validation", "accel"), int(node.get("txs_per_block", 100)),
                   float(node.get("base_timeout_ms", 1000)), float(node.get("delay_ms", 0)), Path(node["events"]),
                   int(node.get("load_seed", 1)), tuple(bytes.fromhex(k) for k in net["keys"]),
                   tuple(addr(a) for a in net["addresses"]), node.get("app", "kv"))


class LoadGenerator:
    """The same stream of signed transfers on every validator (as if clients gossiped them to
    all): client c's n-th transfer, in a fixed order, so every mempool holds the same transactions."""

    def __init__(self, seed: int):
        self.clients = [SigningKey(seed.to_bytes(8, "big") + c.to_bytes(8, "big") + bytes(16)) for c in range(CLIENTS)]
        self.keys = [bytes(c.verify_key) for c in self.clients]
        self.made = 0

    def genesis(self) -> dict:
        return {k: FUNDS for k in self.keys}

    def top_up(self, app: KvApp, want: int) -> None:
        while len(app.mempool) < want:
            c, nonce = self.made % CLIENTS, self.made // CLIENTS
            body = transfer_body(self.keys[c], nonce, self.keys[(c + 1) % CLIENTS], 1)
            app.submit(body, self.clients[c].sign(body).signature)
            self.made += 1


class ClearingFeed:
    """The clearing load generator's stream, the same on every validator."""

    def __init__(self, seed: int):
        from .apps.clearing_load import ClearingLoad
        self.load = ClearingLoad(seed)

    def skip(self, count: int) -> None:
        self.load.take(count)

    def top_up(self, app, want: int) -> None:
        if len(app.mempool) < want:
            for body, sigs in self.load.take(want - len(app.mempool)):
                app.submit(body, sigs)


class NodeRunner:
    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(cfg.data_dir / "validator.db")
        key = SigningKey(cfg.seed)
        history = self.store.history()
        replayed = sum(len(p.block.txs) for p in history)  # committed transactions are not reissued
        if cfg.app == "clearing":
            from .apps.clearing_app import ClearingApp
            from .apps.clearing_load import genesis_market
            self.load = ClearingFeed(cfg.load_seed)
            self.load.skip(replayed)
            self.app = ClearingApp(Verifier(cfg.validation), genesis_market(), max_txs=cfg.txs_per_block)
        else:
            self.load = LoadGenerator(cfg.load_seed)
            self.load.made = replayed
            self.app = KvApp(Verifier(cfg.validation), self.load.genesis(), max_txs=cfg.txs_per_block)
        self.core = Core(Config(cfg.index, cfg.keys, cfg.base_timeout_ms), lambda m: key.sign(m).signature,
                         self.app, self.store.safety(), history)
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.events = open(cfg.events, "a", buffering=1)

    def _event(self, **fields) -> None:
        self.events.write(json.dumps(fields | {"validator": self.cfg.index, "at": time.time()}) + "\n")

    def _apply(self, actions: list) -> None:
        for a in actions:
            if isinstance(a, Persist):
                self.store.save_safety(a.safety)  # on disk before anything later in this list leaves
            elif isinstance(a, Send):
                self.net.send(a.to, a.msg)
            elif isinstance(a, Broadcast):
                if isinstance(a.msg, Proposal):
                    self._event(kind="proposed", height=a.msg.block.height, block_hash=a.msg.block.id.hex())
                self.net.broadcast(a.msg)
            elif isinstance(a, SetTimer):
                asyncio.get_running_loop().call_later(a.delay_ms / 1000.0, self.inbox.put_nowait, ("timer", a.view))
            elif isinstance(a, Committed):
                self.store.add_committed(a.proposal)
                b = a.block
                self._event(kind="committed", height=b.height, block_hash=b.id.hex(), state_root=b.state_root.hex(),
                            txs=len(b.txs), validation_ms=a.validation_ms)
            elif isinstance(a, Rejected):
                self._event(kind="rejected", block_hash=a.block_id.hex(), proposer=a.proposer, reason=a.reason)

    async def run(self) -> None:
        from .net import Network
        self.net = Network(self.cfg.index, list(self.cfg.addresses),
                           lambda sender, msg: self.inbox.put_nowait(("msg", sender, msg)), self.cfg.delay_ms)
        await self.net.start()
        self.load.top_up(self.app, 2 * self.cfg.txs_per_block)
        self._apply(self.core.start())
        while True:
            kind, *rest = await self.inbox.get()
            if kind == "timer":
                self._apply(self.core.on_timer(rest[0]))
            else:
                self._apply(self.core.handle(rest[0], rest[1]))
            self.load.top_up(self.app, 2 * self.cfg.txs_per_block)


def run_node(config_path) -> int:
    cfg = NodeConfig.load(config_path)
    if cfg.validation == "accel":
        device, results = readiness.check()
        failed = [r for r in results if not r.ok]
        if failed:
            for r in failed:
                log.error("readiness: %s failed on %s: %s", r.kernels, device, r.detail)
            raise SystemExit(f"validator {cfg.index}: the configured backend cannot run ({device}); not starting")
    runner = NodeRunner(cfg)
    try:
        asyncio.run(runner.run())
    except KeyboardInterrupt:
        pass
    return 0
