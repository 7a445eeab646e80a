"""A validator's client API (issue 21): HTTP + JSON on the node's own asyncio loop (aiohttp), after
CometBFT's RPC conventions. Served when the validator's file has `[rpc] listen = "host:port"`
(docs/OPERATOR.md, "Client API", with curl examples):

  POST /broadcast_tx_sync   {"tx": BYTES, "signatures": [BYTES, ...]}     -> the mempool's verdict
  POST /broadcast_txs       {"txs": [{"tx": ..., "signatures": [...]}, ...]} -> a verdict per item
  GET  /tx?hash=0x<64 hex>  pending | committed (height) | refused (reason); 404 if unknown
  POST /txs                 {"hashes": ["0x<64 hex>", ...]} -> the same, per hash (unknown: 200)
  GET  /account?key=0x<64 hex>  nonce, collateral, positions at the last committed block, with
                                the account's Merkle proof against that block's state root
  GET  /status              height, view, peers, backend, catching up, mempool
  GET  /health              200 while the node commits blocks, else 503 with the reason

BYTES is "0x" followed by hex, or base64 (CometBFT's JSON encoding). A transaction's hash is
sha256(body), in hex. Every refusal is a 4xx with {"error": "<one line>"}: a malformed request
(400), an unknown path (404) or method (405), a body over max_body_bytes (413), a client over
its request rate (429), a full mempool (503). A handler that fails is logged and answered 500;
no request can stop the node."""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import time

from aiohttp import web

log = logging.getLogger("consensus.rpc")
CLIENTS_TRACKED = 10_000  # rate-limit buckets kept (the oldest go first)


class BadRequest(ValueError):
    """A request this API refuses; the message is the one-line reason."""


def decode_bytes(text, what: str) -> bytes:
    """'0x' + hex, or base64."""
    if not isinstance(text, str):
        raise BadRequest(f"{what} must be a string: \"0x\" + hex, or base64")
    try:
        if text[:2] in ("0x", "0X"):
            return bytes.fromhex(text[2:])
        return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raise BadRequest(f"{what} is neither \"0x\" + hex nor base64") from None


def _hash_param(request: web.Request, name: str) -> bytes:
    text = request.query.get(name)
    if text is None:
        raise BadRequest(f"missing ?{name}=0x<64 hex digits>")
    raw = decode_bytes(text if text[:2] in ("0x", "0X") else "0x" + text, name)
    if len(raw) != 32:
        raise BadRequest(f"{name} is {len(raw)} bytes, not 32")
    return raw


class _Bucket:
    __slots__ = ("tokens", "at")

    def __init__(self, tokens: float, at: float):
        self.tokens, self.at = tokens, at


class RateLimit:
    """A token bucket per client address: `rate` requests a second, bursts of up to 2 s worth."""

    def __init__(self, rate: float):
        self.rate, self.burst = rate, max(1.0, 2 * rate)
        self.buckets: dict[str, _Bucket] = {}

    def allow(self, client: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        b = self.buckets.pop(client, None) or _Bucket(self.burst, now)
        self.buckets[client] = b  # most recently used last
        while len(self.buckets) > CLIENTS_TRACKED:
            del self.buckets[next(iter(self.buckets))]
        b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
        b.at = now
        if b.tokens < 1:
            return False
        b.tokens -= 1
        return True


class _Full(Exception):
    pass


def _error(code: int, reason: str, **extra) -> web.Response:
    return web.json_response({"error": reason} | extra, status=code)


class Rpc:
    """The API of one NodeRunner (its app, core, committed-transaction index and liveness)."""

    def __init__(self, node, listen: tuple[str, int], max_body_bytes: int = 1 << 20, requests_per_s: float = 100.0,
                 max_batch: int = 1000, max_mempool: int = 100_000):
        self.node, self.listen = node, listen
        self.max_batch, self.max_mempool, self.max_body = max_batch, max_mempool, max_body_bytes
        self.limit = RateLimit(requests_per_s)
        self.refused_requests = 0
        app = web.Application(client_max_size=max_body_bytes, middlewares=[self._guard])
        app.router.add_post("/broadcast_tx_sync", self.broadcast_tx)
        app.router.add_post("/broadcast_txs", self.broadcast_txs)
        app.router.add_get("/tx", self.tx)
        app.router.add_post("/txs", self.txs)
        app.router.add_get("/account", self.account)
        app.router.add_get("/status", self.status)
        app.router.add_get("/health", self.health)
        self.app = app
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Binds listen; OSError (address in use, no such address) goes to the caller."""
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.listen[0], self.listen[1]).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        if not self.limit.allow(request.remote or "?"):
            self.refused_requests += 1
            return _error(429, f"over {self.limit.rate:g} requests per second from {request.remote}; slow down")
        try:
            return await handler(request)
        except BadRequest as exc:
            self.refused_requests += 1
            return _error(400, str(exc))
        except web.HTTPException as exc:  # aiohttp's own: unknown path, method, body too large
            self.refused_requests += 1
            reason = {404: f"no such endpoint {request.path}; see /status, /health, /tx, /account, "
                           "/broadcast_tx_sync, /broadcast_txs",
                      405: f"{request.method} is not allowed on {request.path}",
                      413: f"request body over {self.max_body} bytes"}.get(exc.status, exc.reason)
            return _error(exc.status, reason)
        except Exception as exc:  # a bug: logged, answered, the node carries on
            log.exception("rpc: %s %s failed", request.method, request.path)
            return _error(500, f"internal error: {type(exc).__name__}")

    # ---- transactions ----------------------------------------------------------------------------
    async def _json(self, request: web.Request):
        try:
            return json.loads(await request.read())
        except web.HTTPException:
            raise
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the body is not JSON: {exc}") from None
        except RecursionError:
            raise BadRequest("the body's JSON is nested too deeply") from None

    @staticmethod
    def _item(obj, where: str) -> tuple[bytes, list[bytes]]:
        if not isinstance(obj, dict) or "tx" not in obj:
            raise BadRequest(f"{where} must be an object {{\"tx\": ..., \"signatures\": [...]}}")
        sigs = obj.get("signatures", [])
        if not isinstance(sigs, list):
            raise BadRequest(f"{where}.signatures must be a list")
        return (decode_bytes(obj["tx"], f"{where}.tx"),
                [decode_bytes(s, f"{where}.signatures[{i}]") for i, s in enumerate(sigs)])

    def _submit(self, items: list[tuple[bytes, list[bytes]]]) -> list[dict]:
        app = self.node.app
        fresh = sum(1 for body, _ in items if hashlib.sha256(body).digest() not in app.mempool)
        if fresh and len(app.mempool) + fresh > self.max_mempool:
            raise _Full()
        if hasattr(app, "submit_many"):
            reasons = app.submit_many(items)
        else:  # the key-value app: one signature per transaction, checked in blocks
            reasons = [app.submit(body, sigs[0]) if len(sigs) == 1 else "a transfer has exactly one signature"
                       for body, sigs in items]
        out = []
        for (body, _), reason in zip(items, reasons):
            out.append({"hash": hashlib.sha256(body).hexdigest(), "code": 1 if reason else 0,
                        "accepted": not reason, "reason": reason})
        self.node.submitted += sum(1 for r in reasons if not r)
        return out

    async def broadcast_tx(self, request: web.Request) -> web.Response:
        item = self._item(await self._json(request), "body")
        try:
            return web.json_response(self._submit([item])[0])
        except _Full:
            return _error(503, f"mempool full ({len(self.node.app.mempool)} transactions); try again later")

    async def broadcast_txs(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        txs = body.get("txs") if isinstance(body, dict) else None
        if not isinstance(txs, list):
            raise BadRequest("the body must be {\"txs\": [{\"tx\": ..., \"signatures\": [...]}, ...]}")
        if len(txs) > self.max_batch:
            raise BadRequest(f"{len(txs)} transactions in one request; at most {self.max_batch}")
        items = [self._item(t, f"txs[{i}]") for i, t in enumerate(txs)]
        try:
            return web.json_response({"results": self._submit(items)})
        except _Full:
            return _error(503, f"mempool full ({len(self.node.app.mempool)} transactions); try again later")

    def _tx_status(self, digest: bytes) -> dict:
        node, out = self.node, {"hash": digest.hex()}
        if digest in node.tx_heights:
            return out | {"status": "committed", "height": node.tx_heights[digest]}
        if digest in node.app.mempool:
            return out | {"status": "pending"}
        refused = getattr(node.app, "refused", {}).get(digest)
        if refused is not None:
            return out | {"status": "refused", "reason": refused}
        return out | {"status": "unknown", "reason": "not in the mempool, not committed, not recently refused"}

    async def tx(self, request: web.Request) -> web.Response:
        out = self._tx_status(_hash_param(request, "hash"))
        if out["status"] == "unknown":
            return _error(404, out.pop("reason"), **out)
        return web.json_response(out)

    async def txs(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        hashes = body.get("hashes") if isinstance(body, dict) else None
        if not isinstance(hashes, list):
            raise BadRequest("the body must be {\"hashes\": [\"0x<64 hex>\", ...]}")
        if len(hashes) > self.max_batch:
            raise BadRequest(f"{len(hashes)} hashes in one request; at most {self.max_batch}")
        digests = []
        for i, h in enumerate(hashes):
            raw = decode_bytes(h if isinstance(h, str) and h[:2] in ("0x", "0X") else f"0x{h}", f"hashes[{i}]")
            if len(raw) != 32:
                raise BadRequest(f"hashes[{i}] is {len(raw)} bytes, not 32")
            digests.append(raw)
        return web.json_response({"results": [self._tx_status(d) for d in digests]})

    # ---- state ---------------------------------------------------------------------------------------
    async def account(self, request: web.Request) -> web.Response:
        key = _hash_param(request, "key")
        node = self.node
        block = node.core.committed
        state = node.core.states.get(block.id)
        clearing = getattr(state, "clearing", None)
        if clearing is None:
            return _error(501, "account state is served for the clearing app only")
        acct = clearing.accounts.get(key)
        out = {"key": key.hex(), "height": block.height, "block_hash": block.id.hex(),
               "state_root": block.state_root.hex()}
        if acct is None:
            return _error(404, f"account {key.hex()[:16]} is not registered at height {block.height}", **out)
        leaf, proof, accounts_root, globals_root = clearing.account_proof(key, node.app.verifier.sha256_rows)
        return web.json_response(out | {
            "nonce": acct.nonce, "collateral": dict(sorted(acct.collateral.items())),
            "positions": {str(s): n for s, n in sorted(acct.positions.items())},
            "proof": {"leaf": leaf.hex(), "index": proof.index, "total": proof.total,
                      "leaf_hash": proof.leaf_hash.hex(), "aunts": [a.hex() for a in proof.aunts],
                      "accounts_root": accounts_root.hex(), "globals_root": globals_root.hex()}})

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.node.status())

    async def health(self, request: web.Request) -> web.Response:
        reason = self.node.unhealthy()
        if reason:
            return web.json_response({"healthy": False, "reason": reason}, status=503)
        return web.json_response({"healthy": True})
