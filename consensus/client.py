"""A Python client of the validators' API (consensus/rpc.py): keys, signed clearing transactions
(consensus/apps/clearing_tx.py's bodies, signed by every signer the body names) and the calls.

    from nacl.signing import SigningKey
    from consensus.client import Client, register, deposit
    alice = SigningKey.generate()
    c = Client(["http://127.0.0.1:26800", "http://127.0.0.1:26801"])
    results = c.broadcast([register(alice), deposit(alice, 0, "USD", 1_000 * 10**8)])
    heights = c.wait_committed([r["hash"] for r in results])
    c.account(alice.verify_key)   # nonce, collateral, positions, proof at the last committed block

A transaction is (body, [signatures]). The validators do not gossip their mempools to each other
yet: a transaction sent to one validator is proposed when that validator leads (one view in n),
so `broadcast` sends it to every URL the client has. Standard library only (urllib)."""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from decimal import Decimal, InvalidOperation
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

from .apps import clearing_tx as ctx

Tx = tuple[bytes, list[bytes]]
QUANTA = 10**8  # quanta per unit of any asset


class RpcError(Exception):
    """A validator refused a request (4xx/5xx) or could not be reached; the message says why."""

    def __init__(self, message: str, status: int | None = None, body: dict | None = None):
        super().__init__(message)
        self.status, self.body = status, body or {}


# ---- keys ------------------------------------------------------------------------------------------
def public(key) -> bytes:
    """32 bytes of a SigningKey's, a VerifyKey's, raw bytes or a hex string's public key."""
    if isinstance(key, SigningKey):
        return bytes(key.verify_key)
    if isinstance(key, VerifyKey):
        return bytes(key)
    raw = bytes.fromhex(key[2:] if key[:2] == "0x" else key) if isinstance(key, str) else bytes(key)
    if len(raw) != 32:
        raise ValueError(f"a public key is 32 bytes, not {len(raw)}")
    return raw


def write_key(path, key: SigningKey | None = None, force: bool = False) -> SigningKey:
    """A key file: {"seed": hex, "public_key": hex}, readable by its owner only; an existing file
    is kept unless force."""
    key = key or SigningKey.generate()
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise ValueError(f"{path} exists; not overwriting a key (--force does)") from None
    with os.fdopen(fd, "w") as fh:
        json.dump({"seed": bytes(key).hex(), "public_key": bytes(key.verify_key).hex()}, fh)
        fh.write("\n")
    return key


def read_key(path) -> SigningKey:
    try:
        data = json.loads(Path(path).read_text())
        key = SigningKey(bytes.fromhex(data["seed"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a key file written by `accel keygen` ({exc})") from None
    if "public_key" in data and data["public_key"] != bytes(key.verify_key).hex():
        raise ValueError(f"{path}: public_key does not match the seed")
    return key


def quanta(amount: str | int | Decimal) -> int:
    """An amount in units ("1000", "0.5") as integer quanta (1e-8); refuses what is not a whole
    number of quanta."""
    try:
        value = Decimal(str(amount)) * QUANTA
    except InvalidOperation:
        raise ValueError(f"amount {amount!r} is not a number") from None
    if value != value.to_integral_value():
        raise ValueError(f"amount {amount} is finer than 1e-8")
    return int(value)


# ---- signed clearing transactions -------------------------------------------------------------------
def sign(body: bytes, *signers: SigningKey) -> Tx:
    return body, [k.sign(body).signature for k in signers]


def register(key: SigningKey) -> Tx:
    return sign(ctx.register(public(key)), key)


def deposit(key: SigningKey, nonce: int, asset: str, amount: int) -> Tx:
    """amount in quanta (quanta("1000") for 1,000 units)."""
    return sign(ctx.deposit(public(key), nonce, asset, amount), key)


def withdraw(key: SigningKey, nonce: int, asset: str, amount: int) -> Tx:
    return sign(ctx.withdraw(public(key), nonce, asset, amount), key)


def trade(buyer: SigningKey, buyer_nonce: int, seller: SigningKey, seller_nonce: int, series: int, size: int,
          price: int) -> Tx:
    """Signed by both counterparties; price in quanta of the series' settlement asset per contract."""
    return sign(ctx.trade(public(buyer), buyer_nonce, public(seller), seller_nonce, series, size, price),
                buyer, seller)


def mark(oracles: list[SigningKey], underlying: str, index: float, sequence: int, timestamp: int,
         vols: dict[int, float]) -> Tx:
    """An oracle mark, signed by each oracle it lists (a quorum of the network's oracle keys)."""
    return sign(ctx.mark(underlying, index, sequence, timestamp, vols, [public(k) for k in oracles]), *oracles)


def encode_tx(tx: Tx) -> dict:
    body, sigs = tx
    return {"tx": "0x" + body.hex(), "signatures": ["0x" + s.hex() for s in sigs]}


# ---- the API -----------------------------------------------------------------------------------------
class Client:
    def __init__(self, urls: str | list[str], timeout: float = 10.0, batch: int = 500):
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("no validator URL")
        self.urls = [u.rstrip("/") if "://" in u else "http://" + u.rstrip("/") for u in self.urls]
        self.timeout, self.batch = timeout, batch

    def _call(self, url: str, path: str, body: dict | None = None, ok404: bool = False, retries: int = 20) -> dict:
        """One request; a 429 (over the validator's rate) is retried after a pause, `retries` times."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                payload = json.loads(exc.read())
            except ValueError:
                payload = {}
            if exc.code == 429 and retries > 0:
                time.sleep(0.25)
                return self._call(url, path, body, ok404, retries - 1)
            if ok404 and exc.code in (404, 503):
                return payload | {"http_status": exc.code}
            raise RpcError(f"{url}{path}: {exc.code} {payload.get('error', exc.reason)}", exc.code, payload) from None
        except (urllib.error.URLError, OSError) as exc:
            raise RpcError(f"{url}{path}: {getattr(exc, 'reason', exc)}") from None

    def broadcast(self, txs: list[Tx], all_validators: bool = True) -> list[dict]:
        """Submit signed transactions (in batches, in order) to every validator (or the first);
        per transaction the first validator's verdict: hash, accepted, reason."""
        out = []
        for start in range(0, len(txs), self.batch):
            chunk = {"txs": [encode_tx(t) for t in txs[start:start + self.batch]]}
            results = None
            for url in self.urls if all_validators else self.urls[:1]:
                got = self._call(url, "/broadcast_txs", chunk)["results"]
                results = results or got
            out.extend(results)
        return out

    def submit(self, tx: Tx) -> dict:
        """One transaction to the first validator: its verdict (hash, accepted, reason)."""
        return self._call(self.urls[0], "/broadcast_tx_sync", encode_tx(tx))

    def tx(self, digest: str | bytes, url: str | None = None) -> dict:
        """status: pending, committed (with height), refused (with reason) or unknown."""
        h = digest.hex() if isinstance(digest, bytes) else digest
        return self._call(url or self.urls[0], f"/tx?hash=0x{h}", ok404=True)

    def wait_committed(self, digests: list, timeout: float = 60.0, poll: float = 0.2,
                       url: str | None = None) -> dict[str, int]:
        """hash -> height once every transaction committed (on the first validator, or url); RpcError
        naming the first refused one, or those still pending at the timeout."""
        left = {d.hex() if isinstance(d, bytes) else d for d in digests}
        heights: dict[str, int] = {}
        deadline = time.monotonic() + timeout
        while left:
            for r in self.statuses(sorted(left), url):
                if r.get("status") == "committed":
                    heights[r["hash"]] = r["height"]
                elif r.get("status") == "refused":
                    raise RpcError(f"transaction {r['hash']} refused: {r.get('reason')}", body=r)
            left -= set(heights)
            if left:
                if time.monotonic() > deadline:
                    first = sorted(left)[0]
                    raise RpcError(f"{len(left)} transaction(s) not committed after {timeout:.0f} s, e.g. "
                                   f"{first}: {self.tx(first, url).get('status')}")
                time.sleep(poll)
        return heights

    def statuses(self, digests: list, url: str | None = None) -> list[dict]:
        """/tx of many transactions, `batch` to a request."""
        hexes = [d.hex() if isinstance(d, bytes) else d for d in digests]
        out = []
        for start in range(0, len(hexes), self.batch):
            out += self._call(url or self.urls[0], "/txs", {"hashes": hexes[start:start + self.batch]})["results"]
        return out

    def account(self, key, url: str | None = None) -> dict:
        """The account at the last committed block (nonce, collateral, positions, proof), or
        {"error": ...} with http_status 404 when it is not registered."""
        return self._call(url or self.urls[0], f"/account?key=0x{public(key).hex()}", ok404=True)

    def next_nonce(self, key) -> int:
        """The committed nonce (0 for an account not registered yet); transactions still pending
        are not counted."""
        return self.account(key).get("nonce", 0)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until every validator's /health says 200 (a validator not listening yet is waited for);
        RpcError with the last reason at the timeout."""
        deadline, reason = time.monotonic() + timeout, ""
        while True:
            try:
                answers = [self.health(u) for u in self.urls]
                if all(a.get("healthy") for a in answers):
                    return
                reason = next(f"{u}: {a.get('reason')}" for u, a in zip(self.urls, answers) if not a.get("healthy"))
            except RpcError as exc:
                reason = str(exc)
            if time.monotonic() > deadline:
                raise RpcError(f"not healthy after {timeout:.0f} s: {reason}")
            time.sleep(0.2)

    def status(self, url: str | None = None) -> dict:
        return self._call(url or self.urls[0], "/status")

    def health(self, url: str | None = None) -> dict:
        """{"healthy": bool, "reason": ...}; 503 is an answer here, not an error."""
        return self._call(url or self.urls[0], "/health", ok404=True)


def verify_account_proof(answer: dict) -> bool:
    """Whether /account's proof ties the account's leaf to the state root it names."""
    from accel.merkle import MerkleProof, inner_hash, verify_merkle_proof
    p = answer["proof"]
    proof = MerkleProof(p["total"], p["index"], bytes.fromhex(p["leaf_hash"]), tuple(bytes.fromhex(a) for a in p["aunts"]))
    accounts_root = bytes.fromhex(p["accounts_root"])
    return (p["leaf"][:64] == answer["key"] and verify_merkle_proof(accounts_root, bytes.fromhex(p["leaf"]), proof)
            and inner_hash(accounts_root, bytes.fromhex(p["globals_root"])).hex() == answer["state_root"])
