"""A Python client of the validators' API (consensus/rpc.py): keys, signed clearing transactions
(consensus/apps/clearing_tx.py's bodies, signed by every signer the body names) and the calls.

    from nacl.signing import SigningKey
    from consensus.client import Client, register, deposit
    alice = SigningKey.generate()
    c = Client(["http://10.0.0.10:26657", "http://10.0.0.11:26657", "http://10.0.0.12:26657", "http://10.0.0.13:26657"])
    chain = c.chain_id()  # the network's (/status), signed into each body: another chain's is refused
    results = c.broadcast([register(alice, chain), deposit(alice, 0, "USD", 1_000 * 10**8, chain)])
    heights = c.wait_committed([r["hash"] for r in results])
    c.account(alice.verify_key)   # nonce, collateral, positions, proof at the last committed block

A transaction is (body, [signatures]). The validators do not gossip their mempools to each other
yet: a transaction sent to one validator is proposed when that validator leads (one view in n),
so `broadcast` sends it to every URL the client has; validators that cannot be reached are passed
over (as BFT passes over f of them), and reads go to the first that answers but the committed
nonce and the chain id, asked of every one (next_nonce, chain_id). Standard library only
(urllib)."""
from __future__ import annotations

import collections
import hashlib
import http.client
import ipaddress
import json
import math
import os
import socket
import stat
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from decimal import Decimal, InvalidOperation
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

from .apps import clearing_tx as ctx
from .apps.clearing import INDEX_RANGE, MAX_AMOUNT, MAX_PRICE, MAX_SIZE, VOL_RANGE, asset_name_ok

Tx = tuple[bytes, list[bytes]]
QUANTA = 10**8  # quanta per unit of any asset
MAX_QUANTA = 10**60  # quanta() refuses this or more: far past every amount and price (u64 fields)
MAX_TIMEOUT_S = 1_000_000  # a request's timeout, at most (11 days)


class RpcError(Exception):
    """A validator refused a request (4xx/5xx) or could not be reached; the message says why.
    From Client.broadcast: results, the verdicts of the transactions sent before the failure;
    unsent, the indices (in the list given) of the rest, with no verdict (see broadcast)."""

    def __init__(self, message: str, status: int | None = None, body: dict | None = None):
        super().__init__(message)
        self.status, self.body = status, body or {}
        self.results: list[dict] = []
        self.unsent: list[int] = []


def _seconds(name: str, value, positive: bool = False) -> float:
    """A finite number of seconds, 0 or more (above 0 if positive): a NaN timeout never passed
    its deadline (wait_committed waited for ever), and time.sleep refuses NaN, inf and negatives
    with its own words, or an OverflowError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            value < 0 or positive and value == 0:
        raise ValueError(f"{name} must be a finite number of seconds, {'above' if positive else 'at least'} 0, "
                         f"not {value!r}")
    return float(value)


# ---- keys ------------------------------------------------------------------------------------------
def public(key) -> bytes:
    """32 bytes of a SigningKey's, a VerifyKey's, raw bytes or a hex string's public key."""
    if isinstance(key, SigningKey):
        return bytes(key.verify_key)
    if isinstance(key, VerifyKey):
        return bytes(key)
    if isinstance(key, str):
        raw = bytes.fromhex(key[2:] if key[:2] == "0x" else key)
    elif isinstance(key, (bytes, bytearray, memoryview)):
        raw = bytes(key)
    else:  # bytes(32) would be 32 zero bytes (the small-order identity), a list of ints anything
        raise TypeError(f"a public key is a SigningKey, a VerifyKey, 32 bytes or hex, not {type(key).__name__}")
    if len(raw) != 32:
        raise ValueError(f"a public key is 32 bytes, not {len(raw)}")
    return raw


def write_key(path, key: SigningKey | None = None, force: bool = False) -> SigningKey:
    """A key file: {"seed": hex, "public_key": hex}, readable by its owner only (0600); an existing
    file is kept unless force. With force the old file (or a symbolic link, itself, not its target)
    is replaced by a new 0600 file, never rewritten in place (anything else, a device, a FIFO, a
    socket, is refused): an existing file's wider mode, or a link's target, would
    otherwise receive the secret seed."""
    key = key or SigningKey.generate()
    path = Path(path)
    if not force and (path.exists() or path.is_symlink()):
        raise ValueError(f"{path} exists; not overwriting a key (--force does)")
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give the key file's name")
    try:  # --force replaced a device or FIFO too: `--out /dev/null --force` as root deleted /dev/null
        kind = os.lstat(path).st_mode
    except FileNotFoundError:
        kind = None
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror}") from None
    if kind is not None and not (stat.S_ISREG(kind) or stat.S_ISLNK(kind)):
        raise ValueError(f"{path} is not a regular file (a device, FIFO or socket); --force replaces only a key "
                         "file or a symbolic link")
    if not path.parent.is_dir():
        raise ValueError(f"{path}: no directory {path.parent} to write the key file in")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600, O_EXCL
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"seed": bytes(key).hex(), "public_key": bytes(key.verify_key).hex()}, fh)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        if force:
            os.replace(tmp, path)
        else:  # a file that appeared meanwhile is still kept
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise ValueError(f"{path} exists; not overwriting a key (--force does)") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return key


def read_key(path) -> SigningKey:
    """A key file written by write_key; one that others may read is refused, as ssh refuses a
    private key others can read (the seed may already be exposed: make a new key)."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{path}: not a regular file")
        if mode & 0o077:
            raise ValueError(f"{path}: the key file is readable or writable by others (mode {mode & 0o777:o}); "
                             f"`chmod 600 {path}`, or make a new key if others may have read it")
        data = json.loads(Path(path).read_text())
        key = SigningKey(bytes.fromhex(data["seed"]))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such key file (accel keygen --out {path} writes one)") from None
    except (KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a key file written by `accel keygen` ({exc})") from None
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith(f"{path}:") else
                         f"{path}: not a key file written by `accel keygen` ({msg})") from None
    except Exception as exc:  # nacl's errors for a seed of the wrong length, say
        raise ValueError(f"{path}: not a key file written by `accel keygen` ({exc})") from None
    if "public_key" in data and data["public_key"] != bytes(key.verify_key).hex():
        raise ValueError(f"{path}: public_key does not match the seed")
    return key


def quanta(amount: str | int | Decimal) -> int:
    """An amount in units ("1000", "0.5") as integer quanta (1e-8); refuses what is not a whole
    number of quanta."""
    if isinstance(amount, bool):
        raise ValueError(f"amount {amount!r} is not a number")
    text = str(amount).strip()
    shown = text if len(text) <= 40 else text[:40] + "..."
    try:
        value = Decimal(text) * QUANTA
    except ArithmeticError:  # InvalidOperation; Overflow past the context's exponent (1e99999999)
        raise ValueError(f"amount {shown!r} is not a number a transaction can carry") from None
    if not value.is_finite():
        raise ValueError(f"amount {shown!r} is not a finite number")
    if abs(value) >= MAX_QUANTA:  # before int(): 1e999999 was a million-digit integer, printed whole
        raise ValueError(f"amount {shown} is past any amount or price ({MAX_QUANTA:.0e} quanta)")
    if value != value.to_integral_value():
        raise ValueError(f"amount {shown} is finer than 1e-8")
    return int(value)


# ---- signed clearing transactions -------------------------------------------------------------------
# Each builder checks its fields against the wire format's widths (clearing_tx.py) and the clearing
# rules' bounds (clearing.py) and raises ValueError naming the field, before anything is signed or
# sent: a value the wire cannot carry would otherwise surface as struct.error, and one the
# validators refuse as a round trip.
U32, U64 = 2**32 - 1, 2**64 - 1


def _int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} {value} outside {low}..{high}")
    return value


def _real(name: str, value, bounds: tuple[float, float]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, not {value!r}")
    if not (math.isfinite(value) and bounds[0] <= value <= bounds[1]):
        raise ValueError(f"{name} {value!r} outside {bounds[0]:g}..{bounds[1]:g}")
    return float(value)


def _asset(name: str, value) -> str:
    if not asset_name_ok(value):
        raise ValueError(f"{name} {value!r}: 1 to 8 ASCII letters or digits")
    return value


def _chain(value) -> int:
    return _int("chain id", value, 0, U32)


def _key(value) -> SigningKey:
    if not isinstance(value, SigningKey):
        raise ValueError(f"a signer must be a nacl SigningKey (read_key reads a key file), not {type(value).__name__}")
    return value


def sign(body: bytes, *signers: SigningKey) -> Tx:
    return body, [_key(k).sign(body).signature for k in signers]


# chain: the network's chain id (its validators' [node] chain_id, in their /status; Client.chain_id):
# every body starts with it, so what a key signs for one network is refused on another.

def register(key: SigningKey, chain: int = ctx.CHAIN_ID) -> Tx:
    return sign(ctx.register(public(_key(key)), _chain(chain)), key)


def deposit(key: SigningKey, nonce: int, asset: str, amount: int, chain: int = ctx.CHAIN_ID) -> Tx:
    """amount in quanta (quanta("1000") for 1,000 units)."""
    return sign(ctx.deposit(public(_key(key)), _int("nonce", nonce, 0, U64), _asset("asset", asset),
                            _int("amount (quanta)", amount, 1, MAX_AMOUNT), _chain(chain)), key)


def withdraw(key: SigningKey, nonce: int, asset: str, amount: int, chain: int = ctx.CHAIN_ID) -> Tx:
    return sign(ctx.withdraw(public(_key(key)), _int("nonce", nonce, 0, U64), _asset("asset", asset),
                             _int("amount (quanta)", amount, 1, MAX_AMOUNT), _chain(chain)), key)


def top_up(key: SigningKey, nonce: int, asset: str, amount: int, chain: int = ctx.CHAIN_ID) -> Tx:
    """amount of the key's free collateral into the asset's insurance fund (quanta)."""
    return sign(ctx.top_up(public(_key(key)), _int("nonce", nonce, 0, U64), _asset("asset", asset),
                           _int("amount (quanta)", amount, 1, MAX_AMOUNT), _chain(chain)), key)


def trade(buyer: SigningKey, buyer_nonce: int, seller: SigningKey, seller_nonce: int, series: int, size: int,
          price: int, chain: int = ctx.CHAIN_ID) -> Tx:
    """Signed by both counterparties; price in quanta of the series' settlement asset per contract."""
    if public(_key(buyer)) == public(_key(seller)):
        raise ValueError("a trade needs two accounts: the buyer is the seller")
    return sign(ctx.trade(public(buyer), _int("buyer nonce", buyer_nonce, 0, U64), public(seller),
                          _int("seller nonce", seller_nonce, 0, U64), _int("series", series, 0, U32),
                          _int("size", size, 1, MAX_SIZE), _int("price (quanta)", price, 0, MAX_PRICE),
                          _chain(chain)),
                buyer, seller)


def mark(oracles: list[SigningKey], underlying: str, index: float, sequence: int, timestamp: int,
         vols: dict[int, float], chain: int = ctx.CHAIN_ID) -> Tx:
    """An oracle mark, signed by each oracle it lists (a quorum of the network's oracle keys)."""
    oracles = [_key(k) for k in oracles]
    if not 1 <= len(oracles) <= 255:
        raise ValueError(f"a mark lists 1..255 oracles, not {len(oracles)}")
    if len({public(k) for k in oracles}) != len(oracles):
        raise ValueError("a mark lists an oracle twice")
    if not isinstance(vols, dict) or len(vols) > 65535:
        raise ValueError("vols must be a dict {series: vol} of at most 65,535 series")
    vols = {_int("vol's series", i, 0, U32): _real(f"vol of series {i}", v, VOL_RANGE) for i, v in vols.items()}
    return sign(ctx.mark(_asset("underlying", underlying), _real("index", index, INDEX_RANGE),
                         _int("sequence", sequence, 0, U64), _int("timestamp", timestamp, 0, U64), vols,
                         [public(k) for k in oracles], _chain(chain)), *oracles)


def encode_tx(tx: Tx) -> dict:
    """A transaction (body, [signature, ...]) as the API's JSON; ValueError naming what is wrong."""
    try:
        body, sigs = tx
    except (TypeError, ValueError):
        raise ValueError(f"a transaction is (body, [signature, ...]), not {type(tx).__name__}") from None
    if not isinstance(body, (bytes, bytearray)):
        raise ValueError(f"a transaction's body is bytes, not {type(body).__name__}")
    if not isinstance(sigs, (list, tuple)) or not all(isinstance(g, (bytes, bytearray)) for g in sigs):
        raise ValueError("a transaction's signatures are a list of bytes, one per signer")
    return {"tx": "0x" + body.hex(), "signatures": ["0x" + g.hex() for g in sigs]}


def _reason(exc: BaseException) -> str:
    """One line saying why a request failed (URLError's reason, else the exception itself)."""
    reason = getattr(exc, "reason", None) if isinstance(exc, urllib.error.URLError) else None
    text = " ".join(str(reason if reason is not None else exc).split()) or type(exc).__name__
    if isinstance(exc, http.client.HTTPException):
        text = f"not an HTTP answer ({type(exc).__name__}: {text})"
    return text[:300]


def _hex_hash(digest) -> str:
    """A transaction hash (32 bytes, or 64 hex digits with or without "0x") as 64 lowercase hex
    digits; ValueError otherwise (before any request)."""
    if isinstance(digest, (bytes, bytearray)):
        raw = bytes(digest)
    elif isinstance(digest, str):
        text = digest.strip().removeprefix("0x").removeprefix("0X")
        if len(text) != 64 or not all(c in "0123456789abcdefABCDEF" for c in text):
            raise ValueError(f"transaction hash {digest!r} is not 64 hex digits")
        raw = bytes.fromhex(text)
    else:
        raise ValueError(f"a transaction hash is bytes or hex, not {type(digest).__name__}")
    if len(raw) != 32:
        raise ValueError(f"a transaction hash is 32 bytes, not {len(raw)}")
    return raw.hex()


MAX_ANSWER = 64 << 20  # bytes of one answer a client reads (a hostile server's endless body)


def _bounded(resp, where: str) -> bytes:
    data = resp.read(MAX_ANSWER + 1)
    if len(data) > MAX_ANSWER:
        raise RpcError(f"{where}: the answer is over {MAX_ANSWER >> 20} MiB; not the API's")
    return data


def _loads(data: bytes):
    """json.loads, with JSON nested past Python's recursion limit a ValueError like any other
    JSON the client cannot read (a RecursionError escaped the client before)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The API never redirects: urllib would follow a validator's 3xx to any http, https or ftp
    URL (Client refuses ftp:// itself), and turn a POST into a GET without its body."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise RpcError(f"{req.full_url}: answered {code}, a redirect to {str(newurl)[:200]!r}; "
                       "the validators' API never redirects", code)


_local = threading.local()  # the sockets the current thread's request opened (_Deadline)


def _watched(cls):
    """cls (HTTPConnection or HTTPSConnection), recording its socket for this thread's _Deadline."""
    class Watched(cls):
        def connect(self):
            super().connect()
            socks = getattr(_local, "socks", None)
            if socks is not None:
                socks.append(self.sock)
    Watched.__name__ = cls.__name__
    return Watched


_WATCHED = {cls: _watched(cls) for cls in (http.client.HTTPConnection, http.client.HTTPSConnection)}


class _WatchedHTTP(urllib.request.HTTPHandler):
    def do_open(self, http_class, req, **kw):
        return super().do_open(_WATCHED.get(http_class, http_class), req, **kw)


class _WatchedHTTPS(urllib.request.HTTPSHandler):
    def do_open(self, http_class, req, **kw):
        return super().do_open(_WATCHED.get(http_class, http_class), req, **kw)


class _Deadline:
    """A whole request's time bound: urllib's timeout bounds each wait for a byte, so a server
    trickling its answer a byte at a time (headers included) held the client for ever. At the
    deadline the request's sockets are shut down, and the read fails at once."""

    def __init__(self, seconds: float):
        self.seconds, self.fired = seconds, False

    def __enter__(self):
        self.socks = _local.socks = []
        self.timer = threading.Timer(self.seconds, self._fire)
        self.timer.daemon = True
        self.timer.start()
        return self

    def _fire(self) -> None:
        self.fired = True
        for sock in list(self.socks):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def why(self, where: str) -> "RpcError | None":
        return RpcError(f"{where}: no complete answer within {self.seconds:g} s") if self.fired else None

    def __exit__(self, *exc):
        self.timer.cancel()
        _local.socks = None
        return False


_OPENER = urllib.request.build_opener(_NoRedirect, _WatchedHTTP, _WatchedHTTPS)
# What reading a hostile or broken server's answer can raise besides HTTPError: the connection
# (OSError, URLError), the HTTP framing (http.client.HTTPException: a bad status line, too many
# or too long headers, a body shorter than its length) and the JSON (ValueError).
_TRANSPORT = (OSError, http.client.HTTPException)


def _status_of(r, digest: str) -> bool:
    """Whether r is /tx's answer about digest (64 lowercase hex digits)."""
    if not isinstance(r, dict) or r.get("hash") != digest:
        return False
    status = r.get("status")
    if status == "committed":
        return type(r.get("height")) is int and r["height"] >= 0
    return status in ("pending", "refused", "unknown")


# ---- the API -----------------------------------------------------------------------------------------
def _address(host: str, port: int, numeric: bool = True) -> set:
    """The addresses host stands for, each as the host it reaches (an IPv4-mapped IPv6 address as
    its IPv4 one, 0.0.0.0 and :: as loopback): numeric, only if host is an IP address written any
    way the system reads one (127.1, 2130706433, [0:0:0:0:0:0:0:1]), else empty; otherwise what
    the name resolves to (empty if it does not)."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_NUMERICHOST if numeric else 0)
    except (OSError, UnicodeError):
        return set()
    out = set()
    for info in found:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        ip = getattr(ip, "ipv4_mapped", None) or ip
        out.add(ipaddress.ip_address("127.0.0.1" if ip.version == 4 else "::1") if ip.is_unspecified else ip)
    return out


def _same_validator(urls: list[str]) -> tuple[str, str] | None:
    """Two of urls that reach one validator: the same port and the same name, the same address
    however written, or a name that resolves to an address another URL gives. Two names resolving
    to one address stay two validators (virtual hosts behind one proxy), and names are resolved
    only where an address is given beside them."""
    seen = []  # (port, name or None, addresses, url)
    for u in urls:
        parts = urllib.parse.urlsplit(u)
        port = parts.port or {"http": 80, "https": 443}[parts.scheme.lower()]
        literal = _address(parts.hostname, port)
        seen.append((port, None if literal else parts.hostname.lower(), literal, u))
    given = set().union(*(a for _, name, a, _ in seen if name is None))
    resolved = {name: _address(name, port, numeric=False) & given for port, name, _, _ in seen if name and given}
    for i, (port, name, addrs, u) in enumerate(seen):
        for port2, name2, addrs2, u2 in seen[:i]:
            if port != port2:
                continue
            if (name is not None and name == name2) or addrs & addrs2 \
                    or (name is not None and name2 is None and resolved[name] & addrs2) \
                    or (name is None and name2 is not None and resolved[name2] & addrs):
                return u2, u
    return None


class Client:
    def __init__(self, urls: str | list[str], timeout: float = 10.0, batch: int = 500):
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("no validator URL")
        self.urls = [u.strip().rstrip("/") if "://" in u else "http://" + u.strip().rstrip("/") for u in self.urls]
        for u in self.urls:  # urllib would also open file://, ftp://, data: URLs
            try:
                parts = urllib.parse.urlsplit(u)
                port = parts.port  # a ValueError past 65535 or not a number
            except ValueError as exc:
                raise ValueError(f"validator URL {u!r}: {exc}; expected http://host:port") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"validator URL {u!r}: expected http://host:port or https://host:port")
            try:  # (else refused at the first request, as if the validator's answer were not JSON)
                parts.hostname.encode("idna")
            except UnicodeError as exc:
                raise ValueError(f"validator URL {u!r}: {parts.hostname!r} is not a host name ({exc})") from None
            # the API's paths are appended to the URL as given: a user:password@ went to DNS as
            # the host name, and a path, query or fragment made requests like .../x?y/tx?hash=...
            extra = "a user name" if "@" in parts.netloc else "a query" if "?" in u else \
                "a fragment" if "#" in u else "a path" if parts.path not in ("", "/") else ""
            if extra:
                raise ValueError(f"validator URL {u!r}: {extra} is not part of a validator's address; "
                                 "expected http://host:port")
            if port == 0:
                raise ValueError(f"validator URL {u!r}: port 0 is not a port a validator listens on")
        # one validator listed twice counted twice in n and f: given twice, a faulty validator
        # decided the nonce (the (f+1)-th highest) and its refusal counted twice in `accel tx`;
        # 127.0.0.1, localhost, 127.1 and [::ffff:127.0.0.1] are one (review s15)
        twice = _same_validator(self.urls)
        if twice is not None:
            raise ValueError(f"validator URL {twice[1]!r}: the same validator as {twice[0]!r}; give each one once")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive integer, not {batch!r}")
        # bounded: a socket's timeout past the platform's time_t (1e10 s) raised OverflowError at
        # every call, neither an RpcError nor a refusal here
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT_S):
            raise ValueError(f"timeout must be a positive number of seconds, at most {MAX_TIMEOUT_S:,}, not {timeout!r}")
        self.timeout, self.batch = timeout, batch

    def _call(self, url: str, path: str, body: dict | None = None, ok404: bool = False, retries: int = 20,
              until: float | None = None) -> dict:
        """One request; a 429 (over the validator's rate) is retried after a pause, `retries` times
        while the pause ends within `timeout` seconds of the first try (`until`): a validator
        answering 429 with Retry-After 5 to every request held each call 100 s whatever the
        timeout, and `accel tx` ten times its --http-timeout per validator.
        Whatever the server does (no answer, a redirect, broken HTTP, an answer that is not a JSON
        object, however nested or cut short, or one trickled in past `timeout` seconds in all) is
        an RpcError naming the URL, never another exception."""
        where = f"{url}{path}"
        # a retry has what is left of the timeout, not all of it again: a validator that answered
        # 429 and then held the retried request held the call up to twice the timeout
        limit = self.timeout if until is None else round(min(self.timeout, max(0.001, until - time.monotonic())), 3)
        until = time.monotonic() + self.timeout if until is None else until
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"} if data else {})
        with _Deadline(limit) as deadline:
            try:
                try:
                    with _OPENER.open(req, timeout=limit) as resp:
                        answer = _loads(_bounded(resp, where))
                except urllib.error.HTTPError as exc:
                    error = exc
                    try:  # a 4xx/5xx: its one-line JSON reason, if the body holds one
                        payload = _loads(error.read(MAX_ANSWER))
                    except (ValueError, *_TRANSPORT):
                        payload = {}
                    finally:
                        error.close()
                    answer = None
            except RpcError:
                raise
            except (urllib.error.URLError, *_TRANSPORT) as exc:
                raise deadline.why(where) or RpcError(f"{where}: {_reason(exc)}") from None
            except ValueError as exc:  # a 200 whose body is not JSON: not a validator's API
                raise deadline.why(where) or RpcError(
                    f"{where}: the answer is not the API's JSON ({' '.join(str(exc).split())[:200]})") from None
            if deadline.why(where) and (answer is None and not payload):
                raise deadline.why(where)
        if answer is not None:
            if not isinstance(answer, dict):
                raise RpcError(f"{where}: the answer is not the API's JSON (not a JSON object)")
            return answer
        if not isinstance(payload, dict):
            payload = {}
        if error.code == 429 and retries > 0:  # after the validator's Retry-After (at most 5 s)
            try:
                pause = min(5.0, max(0.25, float(error.headers.get("Retry-After") or 0.25)))
            except (TypeError, ValueError):
                pause = 0.25
            if time.monotonic() + pause <= until:
                time.sleep(pause)
                return self._call(url, path, body, ok404, retries - 1, until)
        if ok404 and error.code in (404, 503):
            return payload | {"http_status": error.code}
        reason = payload.get("error", error.reason)
        raise RpcError(f"{where}: {error.code} {' '.join(str(reason).split())[:300]}", error.code, payload) from None

    def broadcast(self, txs: list[Tx], all_validators: bool = True) -> list[dict]:
        """Submit signed transactions (in batches, in order) to every validator (or the first that
        answers); per transaction a verdict: hash, accepted, reason. Validators do not share their
        mempools, so each one's verdict is its own (its mempool full, its committed nonce a block
        behind): a transaction is accepted if any validator accepted it (the first that did gives
        the verdict), and one some refused then also names them, "refused_by": {url: reason}, and
        those that took it, "accepted_by": [url, ...]; refused by all, the first's verdict. A
        validator that cannot be reached or answers something that is not one verdict per
        transaction (in order, each naming its transaction's hash, computed here, and accepted
        true or false) is passed over, as BFT passes over f of them; an RpcError only when none
        answered (it names each one's failure), its `results` the verdicts of the chunks before
        the one that failed (those transactions were sent: do not sign them again with new
        nonces) and its `unsent` the indices of the transactions from that chunk on, with no
        verdict (that chunk's may have reached a validator that did not answer)."""
        out = []
        for start in range(0, len(txs), self.batch):
            try:
                out.extend(self._broadcast_chunk(txs[start:start + self.batch], all_validators))
            except RpcError as exc:
                exc.results, exc.unsent = out, list(range(start, len(txs)))
                raise
        return out

    def _broadcast_chunk(self, part: list[Tx], all_validators: bool) -> list[dict]:
        """One chunk's verdicts (broadcast)."""
        chunk = {"txs": [encode_tx(t) for t in part]}
        hashes = [hashlib.sha256(body).hexdigest() for body, _ in part]

        def send(url):
            got = self._call(url, "/broadcast_txs", chunk).get("results")
            verdicts = ([_verdict(r, h) for r, h in zip(got, hashes)]
                        if isinstance(got, list) and len(got) == len(hashes) else [None])
            if None in verdicts:
                raise RpcError(f"{url}/broadcast_txs: the answer does not hold one verdict per transaction")
            return verdicts
        if all_validators:
            answers, failures = [], []
            for url in self.urls:
                try:
                    answers.append((url, send(url)))
                except RpcError as exc:  # a 4xx too: one hostile validator's 400 must not stop the rest
                    failures.append(exc)
            if not answers:
                raise _none_answered(failures)
            return [_merged([(url, got[i]) for url, got in answers]) for i in range(len(part))]
        return self._any(None, send)

    def _any(self, url: str | None, call):
        """call(url); without url, call on each validator in turn until one answers: one that
        cannot be reached, is overloaded (5xx, 429 past its retries), refuses the request (4xx:
        a hostile validator's 400 must not stop the client) or answers something that is not
        the API's is passed over; an RpcError when none answers."""
        if url is not None:
            return call(url)
        failures = []
        for u in self.urls:
            try:
                return call(u)
            except RpcError as exc:
                failures.append(exc)
        raise _none_answered(failures)

    def submit(self, tx: Tx) -> dict:
        """One transaction to the first validator that answers: its verdict (hash, accepted, reason)."""
        return self._any(None, lambda u: self._call(u, "/broadcast_tx_sync", encode_tx(tx)))

    def tx(self, digest: str | bytes, url: str | None = None) -> dict:
        """status: pending, committed (with height), refused (with reason) or unknown, on url (or
        the first validator that answers); an answer about another hash, or with no known
        status, is an RpcError."""
        want = _hex_hash(digest)

        def ask(u):
            answer = self._call(u, f"/tx?hash=0x{want}", ok404=True)
            if not _status_of(answer, want):
                why = f"{answer.get('http_status')} {answer.get('error')}" if "error" in answer and "status" not in answer \
                    else f"the answer is not a status of transaction {want[:16]}"
                raise RpcError(f"{u}/tx: {' '.join(str(why).split())[:300]}", answer.get("http_status"), answer)
            return answer
        return self._any(url, ask)

    def wait_committed(self, digests: list, timeout: float = 60.0, poll: float = 0.2,
                       url: str | None = None) -> dict[str, int]:
        """hash -> height once every transaction committed (on url, or on the validators);
        RpcError naming the first refused one, or those still pending at the timeout. Without
        url, every validator is asked, and of n, with f = (n - 1) // 3, a transaction is
        committed once f + 1 of them name the same height (at least one honest validator did):
        one faulty validator saying "committed" was believed, listed anywhere, and `accel tx
        --wait` printed a commit no honest validator had made (review s19). One validator's
        refusal (evicted from its full mempool, a nonce it judged a block behind) is its own,
        final only while no validator holds the transaction pending or says it committed.
        timeout and poll: finite seconds, poll above 0 (else a ValueError)."""
        timeout, poll = _seconds("timeout", timeout), _seconds("poll", poll, positive=True)
        left = {_hex_hash(d) for d in digests}
        heights: dict[str, int] = {}
        deadline = time.monotonic() + timeout
        while left:
            if url is not None or len(self.urls) == 1:
                found = {r["hash"]: r for r in self.statuses(sorted(left), url)}
                agreed = {h: r.get("height") for h, r in found.items() if r.get("status") == "committed"}
            else:
                found, agreed = self._agreed_statuses(sorted(left))
            for digest in sorted(left):
                if digest in agreed:
                    heights[digest] = agreed[digest]
                elif found[digest].get("status") == "refused":
                    raise RpcError(f"transaction {digest} refused: {found[digest].get('reason')}", body=found[digest])
            left -= set(heights)
            if left:
                if time.monotonic() > deadline:
                    first = sorted(left)[0]
                    raise RpcError(f"{len(left)} transaction(s) not committed after {timeout:.0f} s, e.g. "
                                   f"{first}: {found[first].get('status')}")
                time.sleep(poll)
        return heights

    def _agreed_statuses(self, digests: list[str]) -> tuple[dict[str, dict], dict[str, int]]:
        """(hash -> the most advanced status the validators that answer give it: committed, then
        pending, then refused, then unknown, among equals the first validator's; hash -> the
        height f + 1 of them say it committed at, for those with one). A "committed" fewer name
        counts as pending (a validator a block ahead of the others, or a faulty one)."""
        rank = {"committed": 3, "pending": 2, "refused": 1, "unknown": 0}
        best: dict[str, dict] = {}
        named: dict[str, collections.Counter] = {h: collections.Counter() for h in digests}
        failures, answered = [], 0
        for u in self.urls:
            try:
                answers = self.statuses(digests, u)
            except RpcError as exc:
                failures.append(exc)
                continue
            answered += 1
            for r in answers:
                if r.get("status") == "committed":
                    named[r["hash"]][r.get("height")] += 1
                if rank.get(r.get("status"), 0) > rank.get(best.get(r["hash"], {}).get("status"), -1):
                    best[r["hash"]] = r
        if not answered:
            raise _none_answered(failures)
        f = (len(self.urls) - 1) // 3
        agreed = {h: height for h, c in named.items() for height, n in c.most_common(1) if n > f}
        for h, r in best.items():
            if r.get("status") == "committed" and h not in agreed:
                best[h] = {"hash": h, "status": "pending",
                           "reason": f"{sum(named[h].values())} validator(s) say committed, {f + 1} needed"}
        return best, agreed

    def statuses(self, digests: list, url: str | None = None) -> list[dict]:
        """/tx of many transactions, `batch` to a request, on url (or the first validator that
        answers). An answer that does not give, in order, each hash asked about with a known
        status (and a committed one's height, an integer) is an RpcError."""
        hexes = ["0x" + _hex_hash(d) for d in digests]
        out = []
        for start in range(0, len(hexes), self.batch):
            asked = hexes[start:start + self.batch]

            def ask(u):
                got = self._call(u, "/txs", {"hashes": asked}).get("results")
                if not isinstance(got, list) or len(got) != len(asked) or \
                        not all(_status_of(r, h[2:]) for r, h in zip(got, asked)):
                    raise RpcError(f"{u}/txs: the answer does not hold one status per hash")
                return got
            out += self._any(url, ask)
        return out

    def account(self, key, url: str | None = None) -> dict:
        """The account at the last committed block (nonce, collateral, positions, proof), or
        {"error": ...} with http_status 404 when it is not registered, from url (or the first
        validator that answers). An answer about another key is an RpcError (verify_account_proof
        alone would accept another account's true proof)."""
        want = public(key).hex()

        def ask(u):
            answer = self._call(u, f"/account?key=0x{want}", ok404=True)
            if answer.get("http_status", 404) != 404:  # a 503 (too many connections) is not "not registered"
                raise RpcError(f"{u}/account: {answer['http_status']} "
                               f"{' '.join(str(answer.get('error')).split())[:300]}", answer["http_status"], answer)
            if answer.get("key", want) != want:
                raise RpcError(f"{u}/account: asked about {want[:16]}, answered about "
                               f"{str(answer.get('key'))[:16]}", body=answer)
            return answer
        return self._any(url, ask)

    def next_nonce(self, key, url: str | None = None) -> int:
        """The committed nonce (0 for an account not registered yet: a 404); transactions still
        pending are not counted. An answer without an integer nonce 0..2^64-1 is an RpcError (a
        503 or a malformed answer was read as nonce 0 before). Without url, every validator is
        asked, and of n, with f = (n - 1) // 3, the (f + 1)-th highest nonce reported is used
        (the lowest if fewer answered; an RpcError if none did): at least one honest validator
        has reached it, and one faulty validator can neither hold it back nor push it ahead. The
        first that answered was used: a validator listed first and lagging (catching up) had
        every transaction signed with a nonce the others refused as stale."""
        if url is not None or len(self.urls) == 1:
            return self._nonce(key, url or self.urls[0])
        nonces, failures = [], []
        for u in self.urls:
            try:
                nonces.append(self._nonce(key, u))
            except RpcError as exc:
                failures.append(exc)
        if not nonces:
            raise _none_answered(failures)
        nonces.sort(reverse=True)
        return nonces[min((len(self.urls) - 1) // 3, len(nonces) - 1)]

    def _nonce(self, key, url: str) -> int:
        answer = self.account(key, url)
        if answer.get("http_status") == 404 and "nonce" not in answer:
            return 0
        nonce = answer.get("nonce")
        if type(nonce) is not int or not 0 <= nonce <= U64:
            raise RpcError(f"{url}/account: no nonce in the answer ({str(nonce)[:40]!r})", body=answer)
        return nonce

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until every validator's /health says 200 (a validator not listening yet is waited for);
        RpcError with the last reason at the timeout (finite seconds, else a ValueError)."""
        deadline, reason = time.monotonic() + _seconds("timeout", timeout), ""
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
        return self._any(url, lambda u: self._call(u, "/status"))

    def chain_id(self, url: str | None = None) -> int:
        """The network's chain id, from the validators' /status: what transactions for it are
        signed with (a body of another chain is refused). Without url, every validator is asked,
        and of n, with f = (n - 1) // 3, the chain id named by more of them than any other and by
        at least f + 1 is used (at least one honest validator names it), else an RpcError saying
        what each named: the first that answered was used, and one faulty or misconfigured
        validator listed first had every transaction signed for its chain. A validator naming
        none is an RpcError (of that validator, passed over when others answer)."""
        if url is not None or len(self.urls) == 1:
            return self._chain_id(url or self.urls[0])
        named, failures = {}, []
        for u in self.urls:
            try:
                named[u] = self._chain_id(u)
            except RpcError as exc:
                failures.append(exc)
        if not named:
            raise _none_answered(failures)
        counts = collections.Counter(named.values()).most_common()
        (chain, most), f = counts[0], (len(self.urls) - 1) // 3
        if most > f and (len(counts) == 1 or counts[1][1] < most):
            return chain
        raise RpcError(f"no chain id is named by f + 1 = {f + 1} of the {len(self.urls)} validators and by more than "
                       f"any other: {', '.join(f'{u}: {c}' for u, c in named.items())}"
                       + (f"; {len(failures)} did not answer" if failures else "")
                       + "; give the chain id (accel tx --chain-id)")

    def _chain_id(self, url: str) -> int:
        answer = self.status(url)
        chain = answer.get("chain_id")
        if type(chain) is not int or not 0 <= chain <= U32:
            raise RpcError(f"{url}/status: no chain id in the answer ({str(chain)[:40]!r})", body=answer)
        return chain

    def health(self, url: str | None = None) -> dict:
        """{"healthy": bool, "reason": ...}; 503 is an answer here, not an error."""
        return self._call(url or self.urls[0], "/health", ok404=True)


def _verdict(r, digest: str) -> dict | None:
    """A validator's verdict on the transaction of that hash, the API's fields only (hash, code,
    accepted, reason: a refusal's a string, an acceptance's empty; duplicate), or None when it is
    not one: a hostile validator's extra fields never reach the merged verdict, nor a refusal
    without a reason its printing."""
    if not isinstance(r, dict) or r.get("hash") != digest or type(r.get("accepted")) is not bool:
        return None
    reason = r.get("reason")
    if not (reason in (None, "") if r["accepted"] else isinstance(reason, str) and reason):
        return None
    out = {"hash": digest, "code": 0 if r["accepted"] else 1, "accepted": r["accepted"], "reason": reason}
    return out | {"duplicate": True} if r["accepted"] and r.get("duplicate") is True else out


def _merged(answers: list[tuple[str, dict]]) -> dict:
    """One transaction's verdict from each validator that answered (url, verdict): Client.broadcast."""
    took = [url for url, r in answers if r["accepted"]]
    if not took:
        return answers[0][1]
    out = dict(next(r for _, r in answers if r["accepted"]))
    refused = {url: r["reason"] for url, r in answers if not r["accepted"]}
    if refused:
        out |= {"accepted_by": took, "refused_by": refused}
    return out


def _none_answered(failures: list) -> RpcError:
    """The RpcError when no validator answered: each one's failure, on one line (one validator's
    as it is, and the first one's when every validator refused the request with a 4xx: the
    request's own fault, say a body over max_body_bytes)."""
    if len(failures) == 1 or failures and all(f.status is not None and 400 <= f.status < 500 and f.status != 429
                                              for f in failures):
        return failures[0]
    return RpcError(f"no validator answered: {'; '.join(str(f) for f in failures)}"[:2000],
                    failures[-1].status if failures else None, failures[-1].body if failures else None)


def decode_account_leaf(leaf: bytes) -> dict:
    """An account's leaf in the state tree (Clearing.leaves: key 32 | nonce u64 | assets u8, then
    (asset 8 zero-padded | quanta i128) per asset, then (series u32 | size i64) per series) as
    /account's fields {"key", "nonce", "collateral", "positions"}; ValueError if it is not one."""
    if len(leaf) < 41:
        raise ValueError(f"an account leaf is at least 41 bytes, not {len(leaf)}")
    count, pos = leaf[40], 41
    collateral, positions = {}, {}
    for _ in range(count):
        if pos + 24 > len(leaf):
            raise ValueError("the leaf ends inside its collateral")
        raw = leaf[pos:pos + 8]
        name = raw.rstrip(b"\0")
        if not (name.isascii() and asset_name_ok(name.decode("ascii")) and raw == name.ljust(8, b"\0")):
            raise ValueError(f"asset {raw!r} is not 1 to 8 ASCII letters or digits, zero-padded")
        collateral[name.decode("ascii")] = int.from_bytes(leaf[pos + 8:pos + 24], "big", signed=True)
        pos += 24
    if (len(leaf) - pos) % 12:
        raise ValueError("the leaf's positions are not whole (series u32 | size i64) entries")
    for at in range(pos, len(leaf), 12):
        positions[str(int.from_bytes(leaf[at:at + 4], "big"))] = int.from_bytes(leaf[at + 4:at + 12], "big", signed=True)
    return {"key": leaf[:32].hex(), "nonce": int.from_bytes(leaf[32:40], "big"), "collateral": collateral,
            "positions": positions}


def verify_account_proof(answer: dict, state_root: str | bytes | None = None, key=None) -> bool:
    """Whether /account's answer is what its proof proves: the account's leaf sits in the
    accounts' tree, that tree and the globals root hash to the state root, and the answer's key,
    nonce, collateral and positions are the leaf's (a validator could otherwise serve a true proof
    beside made-up balances). state_root: the root the caller trusts for that height (from the
    block header the validators signed, or from f + 1 validators that agree); without it the proof
    only ties the answer to the root the same validator names. key: the account asked about (a
    true proof of another account is False). A malformed answer is False."""
    from accel.merkle import MerkleProof, inner_hash, verify_merkle_proof
    try:
        if key is not None and answer["key"] != public(key).hex():
            return False
        p = answer["proof"]
        leaf = bytes.fromhex(p["leaf"])
        root = bytes.fromhex(answer["state_root"])
        if state_root is not None and root != (bytes.fromhex(state_root.removeprefix("0x"))
                                               if isinstance(state_root, str) else bytes(state_root)):
            return False
        aunts = p["aunts"]
        if not (isinstance(p["total"], int) and isinstance(p["index"], int) and isinstance(aunts, list)):
            return False
        proof = MerkleProof(p["total"], p["index"], bytes.fromhex(p["leaf_hash"]),
                            tuple(bytes.fromhex(a) for a in aunts))
        accounts_root, globals_root = bytes.fromhex(p["accounts_root"]), bytes.fromhex(p["globals_root"])
        if len(accounts_root) != 32 or len(globals_root) != 32 or len(root) != 32:
            return False
        fields = decode_account_leaf(leaf)
        claimed = {"key": answer["key"], "nonce": answer["nonce"], "collateral": answer["collateral"],
                   "positions": answer["positions"]}
        return (fields == claimed and type(answer["nonce"]) is int
                and verify_merkle_proof(accounts_root, leaf, proof)
                and inner_hash(accounts_root, globals_root) == root)
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
