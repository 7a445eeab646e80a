"""One validator process: the core, driven by the TCP transport, real timers and the SQLite store.

Its configuration is one TOML file (`accel localnet` writes them; docs/OPERATOR.md describes every
key, docs/validator.example.toml is a complete example):
  [node]    index, listen, seed, data_dir, events, app, validation, txs_per_block, base_timeout_ms,
            delay_ms, load_seed, log_format ("text" | "json"), sig_cache, crash_after_blocks, load_file,
            load, snapshot_every, genesis_accounts, state_sync, chain_id, mark_grace_ms
  [network] keys and addresses of every validator, by index
  [clearing] oracles and oracle_quorum: who signs the index marks (app = "clearing", load = "none")
  [accel]   optional: the accel configuration (accel/config.py), in place of accel.toml (without
            it: $ACCEL_CONFIG, else the accel.toml beside this file); ACCEL_* variables still
            override it
  [metrics] optional: listen = "host:port" serves Prometheus metrics (consensus/metrics.py)
  [rpc]     optional: listen = "host:port" serves the client API (consensus/rpc.py), with its limits
The node binds [node] listen and tells nobody: peers dial [network] addresses[index], which may
differ (a validator behind NAT, or binding 0.0.0.0).
Every table and key is checked: a misspelt or mistyped one is an error naming the file and line,
as is one set that this app and load would not read (_check_read).
Before it joins, the node runs accel's readiness check on the backend validation uses and refuses
to start if any kernel fails."""
from __future__ import annotations

import asyncio
import errno
import fcntl
import gc
import hashlib
import ipaddress
import itertools
import json
import logging
import math
import os
import resource
import signal
import socket
import sqlite3
import stat
import time
import weakref
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from nacl.signing import SigningKey

from accel import config, readiness
from accel.backends import BackendUnavailable, get_backend
from accel.config import AccelConfig, ConfigError, line_of

from .apps.kv import KvApp, transfer_body
from .core import (Broadcast, Committed, Config, Core, InvariantViolation, Persist, ProposeTimer, Rejected, Send,
                   SetTimer, held_bytes)
from .messages import (MAX_BLOCK_TXS, MAX_MESSAGE, RANGE_BYTES, TC, BlockRequest, BlockResponse, Proposal, SnapshotChunk,
                       SnapshotOffer, SnapshotRequest, Timeout, Vote)
from .metrics import NodeMetrics
from . import messages, snapshots, statesync
from .inbox import FairInbox
from .store import Store, StoreError, _sync_dir
from .verify import Verifier

log = logging.getLogger("consensus.node")
CATCH_UP_HEIGHTS = 8  # see NodeRunner.catching_up
TX_INDEX = 1_000_000  # committed transactions whose height /tx can tell (the latest ones)
PEER_WINDOW_S = 5.0   # a peer heard from this recently counts as connected (at least; see peer_window_s)
LOAD_DEPTH = 4        # the built-in load keeps this many blocks' worth of transactions in the mempool
# A peer's block and snapshot requests are dropped (request_admitted) while ANSWER_BACKLOG bytes of
# answers (block ranges, snapshot chunks) wait to go to it, or REQUEST_BACKLOG bytes of anything: the
# proposals, votes and timeouts queued for a slow peer do not hold back its catch-up answers (they
# did, with one bound on everything: a validator behind on a slow link had its requests dropped
# while a range's worth of new proposals waited for it), and past REQUEST_BACKLOG an answer would
# not fit in the peer's outgoing queue (net.Limits.queue_bytes) anyway
ANSWER_BACKLOG = RANGE_BYTES
REQUEST_BACKLOG = MAX_MESSAGE - RANGE_BYTES
INBOX_PER_PEER = 4_096  # messages of one validator waiting for the core; more are dropped (timeouts recover)
INBOX_BYTES_PER_PEER = 4 * MAX_MESSAGE  # and their bytes (4,096 frames of up to 64 MiB would be 256 GiB)
WARN_EVERY_S = 10.0   # at most one "no peer" / "nothing committed" warning this often
CLIENTS = 64
SKIP_BATCH = 10_000   # ClearingFeed.skip passes over the stream this many transactions at a time
FUNDS = 10**15
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}  # a disk that cannot take more
KV_TX_BYTES = 85 + 64 + 8  # a key-value transfer's body, its signature and its offset in a proposal's frame
# a kv proposal fits one message, with room for its certificates, and holds no more than any block may
# (messages.MAX_BLOCK_TXS: 213,722 passed the configuration checks and the app capped it, review s23)
KV_MAX_TXS = min((MAX_MESSAGE // 2) // KV_TX_BYTES, MAX_BLOCK_TXS)
ACCOUNT_BYTES = 1024  # about the memory of one bulk genesis account (bench.add_accounts; ~830 B measured)
EVENTS_HEAD = 1 << 16  # the bytes of an existing events file read for its first line (one event: < 1 KiB)
# what a validator keeps in its data_dir: no other file of the node may be one of them
DATA_DIR_FILES = ("validator.db", "validator.db-wal", "validator.db-shm", "validator.db.safety",
                  "validator.db.safety.tmp", "validator.lock", "validator.key")
MAX_VALIDATORS = 65_535  # validator indices and a QC's voter count are u16 (messages.py)

REQUIRED = object()
# table -> key -> (type, default); [accel] is accel.config's. docs/OPERATOR.md says what each means.
SCHEMA = {
    "node": {"index": (int, REQUIRED), "listen": (str, REQUIRED), "seed": (str, REQUIRED),
             "data_dir": (str, REQUIRED), "events": (str, REQUIRED), "app": (str, "clearing"),
             "validation": (str, "accel"), "txs_per_block": (int, 100), "base_timeout_ms": (float, 1000.0),
             "delay_ms": (float, 0.0), "load_seed": (int, 1), "log_format": (str, "text"),
             "sig_cache": (bool, True), "crash_after_blocks": (int, 5), "load_file": (str, ""),
             "load": (str, "builtin"), "snapshot_every": (int, 500), "genesis_accounts": (int, 0),
             "state_sync": (bool, False), "chain_id": (int, 1), "mark_grace_ms": (float, 500.0),
             "empty_block_interval_ms": (float, 0.0)},
    "network": {"keys": (list, REQUIRED), "addresses": (list, REQUIRED)},
    "clearing": {"oracles": (list, []), "oracle_quorum": (int, 0)},
    "metrics": {"listen": (str, "")},
    "rpc": {"listen": (str, ""), "max_body_bytes": (int, 1 << 20), "requests_per_s": (float, 100.0),
            "max_batch": (int, 1000), "max_mempool": (int, 100_000), "max_connections": (int, 0),
            "max_connections_per_client": (int, 64), "idle_timeout_s": (float, 30.0),
            "submit_share_s": (float, 0.1), "submit_total_s": (float, 0.4), "requests_total_per_s": (float, 0.0),
            "max_body_bytes_in_flight": (int, 64 << 20)},
}
CHOICES = {"app": ("kv", "clearing"), "validation": ("accel", "software"), "log_format": ("text", "json"),
           "load": ("builtin", "none")}
NON_NEGATIVE = {("node", "snapshot_every"), ("node", "genesis_accounts"), ("node", "delay_ms"),
                ("node", "crash_after_blocks"), ("node", "load_seed"), ("rpc", "max_connections"),
                ("node", "chain_id"), ("rpc", "requests_total_per_s"), ("node", "mark_grace_ms"),
                ("node", "empty_block_interval_ms"), ("clearing", "oracle_quorum")}
POSITIVE = {("rpc", "max_body_bytes"), ("rpc", "requests_per_s"), ("rpc", "max_batch"), ("rpc", "max_mempool"),
            ("rpc", "max_connections_per_client"), ("rpc", "idle_timeout_s"), ("rpc", "submit_share_s"),
            ("rpc", "submit_total_s"), ("node", "txs_per_block"), ("node", "base_timeout_ms"),
            ("rpc", "max_body_bytes_in_flight")}
BELOW = {("node", "load_seed"): 1 << 64,  # the load's keys are derived from its 8 bytes
         ("node", "chain_id"): 1 << 32,   # a u32 at the head of every clearing transaction
         ("clearing", "oracle_quorum"): 256}  # a mark lists at most 255 signers (u8)
NOUNS = {int: "an integer", str: "a string", float: "a number", list: "an array", bool: "true or false"}


def _addr(text: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isascii() or not port.isdigit():
        raise ValueError(f"{text!r} is not \"host:port\"")
    if host.startswith("[") and host.endswith("]"):  # [::1]:26657, as URLs spell an IPv6 address
        host = host[1:-1]
    if int(port) > 65535:
        raise ValueError(f"{text!r}: port {int(port)} is outside 0..65535")
    try:  # what binding or dialling it does first (a label over 63 characters, say): else a traceback's words at start
        host.encode("idna")
    except UnicodeError as exc:
        raise ValueError(f"{text!r}: host {host[:80]!r} is not a host name ({exc})") from None
    return host, int(port)


def host_key(host: str) -> str:
    """host as one spelling: an IP address as the system reads it however it is written (::1 and
    0:0:0:0:0:0:0:1; 127.0.0.1, 127.1 and 2130706433, which getaddrinfo, and so every dial, reads
    alike; an IPv4-mapped address as its IPv4 one), compressed; a name in lower case without its
    trailing dot."""
    try:
        address = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)[0][4]
    except (OSError, UnicodeError):
        return host.lower().rstrip(".")
    ip = ipaddress.ip_address(address[0])
    scope = f"%{address[3]}" if len(address) == 4 and address[3] else ""  # fe80::1%1 and fe80::1%2 differ
    return (getattr(ip, "ipv4_mapped", None) or ip).compressed + scope


def unspecified(host: str) -> bool:
    """Whether host is 0.0.0.0 or :: however spelt: what a server binds to take every address,
    and what a dial reaches as the dialler's own machine, never another's."""
    try:
        return ipaddress.ip_address(host_key(host).split("%")[0]).is_unspecified
    except ValueError:  # a name
        return False


def url_host(host: str) -> str:
    """host as a URL spells it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def _check_read(path, text: str, data: dict, cfg) -> None:
    """Refuses a key set to other than its default that this app, load and [rpc] listen would not
    read: load_file with app = "kv" or load = "none", genesis_accounts (or sig_cache) with app = "kv",
    or [clearing] oracles where the demo's sign the marks (load = "builtin"), started the validator
    without a word, its operator believing the stream, the bulk genesis, every signature checked (or
    its own oracles) in force."""
    clearing, builtin = cfg.app == "clearing", cfg.load == "builtin"
    generated = clearing and builtin and not cfg.load_file  # clearing_load.market_load
    readers = {"load_file": (clearing and builtin, 'app = "clearing" and load = "builtin"'),
               "genesis_accounts": (clearing, 'app = "clearing"'),
               "sig_cache": (clearing, 'app = "clearing"'),  # only ClearingApp reads it
               "chain_id": (clearing, 'app = "clearing"'),
               "mark_grace_ms": (clearing, 'app = "clearing"'),
               "crash_after_blocks": (generated, 'app = "clearing", load = "builtin" and no load_file'),
               "load_seed": (not clearing or generated,
                             'app = "kv", or app = "clearing", load = "builtin" and no load_file')}
    unread = [("node", key, when) for key, (read, when) in readers.items() if not read]
    if not (clearing and not builtin):  # the built-in load signs its marks with the demo's oracles
        unread += [("clearing", key, 'app = "clearing" and load = "none"') for key in SCHEMA["clearing"]]
    if cfg.rpc is None:
        unread += [("rpc", key, "[rpc] listen set") for key in SCHEMA["rpc"] if key != "listen"]
    for table, key, when in unread:
        given = data.get(table, {}).get(key, SCHEMA[table][key][1])
        if given != SCHEMA[table][key][1]:
            raise ConfigError(f"{path}:{line_of(text, table, key)}: [{table}] {key} = {given!r} would not be read: "
                              f"only with {when}; remove it or change what it depends on")


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer past any float
        return False


def _hex32(text: str) -> bytes:
    raw = bytes.fromhex(text)
    if len(raw) != 32:
        raise ValueError(f"{len(raw)} bytes, not 32")
    return raw


def _check_network(path, text: str, cfg: "NodeConfig") -> None:
    """[network] is the validator set: each key a distinct Ed25519 key no one else can sign for,
    each address its own. A small-order key (the identity, a torsion point) verifies the signature
    (R a small-order point, S = 0) on every message under ZIP-215's cofactored rule, so anyone
    could cast that validator's votes and timeouts; a key that is no canonical point is a validator
    that never signs; a key listed twice gives its holder two of the n votes; two validators at
    one address leave one of them unreachable. Each was loaded and run (review s9)."""
    from accel.ed25519_ref import key_is_safe
    where = f"{path}:{line_of(text, 'network', 'keys')}"
    if len(cfg.keys) > MAX_VALIDATORS:  # the network id's count and a QC's voters are u16 (a traceback at start)
        raise ConfigError(f"{where}: [network] keys: {len(cfg.keys):,} validators; a network has at most "
                          f"{MAX_VALIDATORS:,} (a vote's validator index is 16 bits on the wire)")
    for i, key in enumerate(cfg.keys):
        if key in cfg.keys[:i]:
            raise ConfigError(f"{where}: [network] keys[{i}] is keys[{cfg.keys.index(key)}] listed twice: one "
                              f"holder would cast two of the {len(cfg.keys)} validators' votes")
        if not key_is_safe(key):
            raise ConfigError(f"{where}: [network] keys[{i}] {key.hex()} is not a validator key: not a canonical "
                              "encoding of a curve point, or of small order (anyone could sign for it)")
    # compared as the system reads them: [::1] and [0:0:0:0:0:0:0:1], 127.0.0.1 and 127.1, loaded
    spelt = [(host_key(host), port) for host, port in cfg.addresses]
    listen = (host_key(cfg.listen[0]), cfg.listen[1])
    for j, address in enumerate(spelt):  # it would take the dials meant for validator j
        if j != cfg.index and address == listen and address[1] != 0:
            raise ConfigError(f"{path}:{line_of(text, 'node', 'listen')}: [node] listen {cfg.listen[0]}:"
                              f"{cfg.listen[1]} is [network] addresses[{j}], validator {j}'s, not this validator's "
                              f"({cfg.index})")
    where = f"{path}:{line_of(text, 'network', 'addresses')}"
    for j, (host, port) in enumerate(cfg.addresses):  # (this validator's own is [node] listen's)
        if j != cfg.index and (port == 0 or unspecified(host)):
            raise ConfigError(f"{where}: [network] addresses[{j}] {url_host(host)}:{port} is not where validator {j} "
                              "can be reached: give its host as the others dial it and its port (1..65535); "
                              "0.0.0.0 or :: would dial this machine itself (review s19)")
    for i, address in enumerate(spelt):
        if address[1] != 0 and address in spelt[:i]:
            k, port = spelt.index(address), address[1]
            raise ConfigError(f"{where}: [network] addresses[{i}] {url_host(cfg.addresses[i][0])}:{port} is also "
                              f"addresses[{k}] ({url_host(cfg.addresses[k][0])}:{port}): each validator needs its own")


def _check_oracles(path, text: str, cfg: "NodeConfig") -> None:
    """A clearing network fed only by its clients (load = "none") names its oracles: a quorum of
    them signs every index mark, and a mark moves every margin, so anyone who can sign one can
    liquidate any leveraged account. Its genesis took the demo's oracles, whose seeds are published
    (clearing_load.ORACLES), on every such network (review s15: a mark signed with them was
    committed on a network `accel testnet` wrote). So each key is checked as [network] keys are,
    and none may be a key whose seed is published or guessable (the demo's among them)."""
    if cfg.app != "clearing" or cfg.load != "none":
        return
    from accel.ed25519_ref import key_is_safe
    where = f"{path}:{line_of(text, 'clearing', 'oracles') or line_of(text, 'node', 'load')}"
    if not cfg.oracles:
        raise ConfigError(f"{where}: app = \"clearing\" with load = \"none\" needs [clearing] oracles = "
                          "[\"<64 hex>\", ...] and oracle_quorum = N: the public keys of the oracles whose quorum "
                          "signs the index marks (`accel testnet` writes them, and their key files); the built-in "
                          "load's oracles have published seeds")
    for i, key in enumerate(cfg.oracles):
        if key in cfg.oracles[:i]:
            raise ConfigError(f"{where}: [clearing] oracles[{i}] is oracles[{cfg.oracles.index(key)}] listed twice")
        if not key_is_safe(key):
            raise ConfigError(f"{where}: [clearing] oracles[{i}] {key.hex()} is not an oracle key: not a canonical "
                              "encoding of a curve point, or of small order (anyone could sign for it)")
        if key in cfg.keys:
            raise ConfigError(f"{where}: [clearing] oracles[{i}] is [network] keys[{cfg.keys.index(key)}], a "
                              "validator's key: an oracle signs with a key of its own (whoever holds a validator's "
                              "seed would also move every margin)")
        if key in PUBLISHED_KEYS or key in _guessable_keys():
            raise ConfigError(f"{where}: [clearing] oracles[{i}] {key.hex()} is a key whose seed is published or "
                              "guessable (the built-in load's oracles, RFC 8032's test keys, one byte repeated): "
                              "anyone could sign marks; give each oracle a new key (`accel keygen`)")
    if not 1 <= cfg.oracle_quorum <= len(cfg.oracles):
        line = line_of(text, 'clearing', 'oracle_quorum') or line_of(text, 'clearing', None)
        raise ConfigError(f"{path}:{line}: [clearing] oracle_quorum {cfg.oracle_quorum}: give how many of the "
                          f"{len(cfg.oracles)} oracles sign a mark, 1..{min(len(cfg.oracles), 255)}")


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
    app: str = "clearing"
    log_format: str = "text"
    sig_cache: bool = True
    crash_after_blocks: int = 5
    load_file: str = ""
    metrics: tuple[str, int] | None = None
    accel: AccelConfig | None = None  # config.for_file's (None: the process's, config.get())
    load: str = "builtin"             # "none": only what clients submit through the API
    rpc: tuple[str, int] | None = None
    rpc_limits: dict | None = None    # [rpc]'s keys but listen: consensus.rpc.Rpc's bounds
    path: str = ""
    snapshot_every: int = 500         # a state snapshot every this many committed blocks (0: never)
    genesis_accounts: int = 0         # clearing: funded accounts with positions added to the genesis
    state_sync: bool = False          # an empty store takes a peer's snapshot before the validator joins
    chain_id: int = 1                 # clearing: the network's id, signed into every transaction
    mark_grace_ms: float = 500.0      # clearing: an oracle mark held this long must be in a block voted for
    empty_block_interval_ms: float = 0.0  # a leader with nothing to propose waits this long (Config)
    oracles: tuple[bytes, ...] = ()   # clearing, load = "none": the oracles' public keys (else the demo's)
    oracle_quorum: int = 0            # and how many of them sign a mark

    @classmethod
    def load(cls, path) -> "NodeConfig":
        """Read and check the file; ConfigError names the file and line of the first problem."""
        text, data = config.read_toml(path)
        for name, value in data.items():
            if (name not in SCHEMA and name != "accel") or not isinstance(value, dict):
                line = line_of(text, name, None) or line_of(text, None, name)
                if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                    raise ConfigError(f"{path}:{line}: [[{name}]] is an array of tables; write one [{name}] table"
                                      if name in SCHEMA or name == "accel" else
                                      f"{path}:{line}: unknown array of tables [[{name}]]; a validator's file has "
                                      "[node], [network], [clearing], [accel], [metrics] and [rpc]")
                raise ConfigError(f"{path}:{line}: unknown table or key {name!r}; a validator's file has "
                                  "[node], [network], [clearing], [accel], [metrics] and [rpc]")
        t = {table: cls._table(path, text, table, data) for table in SCHEMA}
        # the directory of the file itself, its symbolic links resolved: a file given through a
        # link (/etc/accel/validator.toml -> /srv/v0/validator.toml) or as /dev/stdin (< file) took
        # its relative paths from the link's directory (/dev: data_dir /dev/data, a tmpfs), so one
        # validator's file named two data_dirs, as many as the ways it was given, each lock apart

        def place(value: str) -> Path:
            """A path of the file, ~ expanded, a relative one from the file's directory
            (config._file_path): it was taken from the working directory, so a validator restarted
            from another one (a shell elsewhere, systemd's /) found an empty data_dir and began
            again from the genesis with no record of its votes, free to vote twice in a view it
            had voted in."""
            if not value.strip() or "\0" in value:
                raise ValueError(f"{value!r} is not a path")
            return Path(config._file_path(path, value))

        def convert(table, key, fn):
            try:
                return fn(t[table][key])
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{path}:{line_of(text, table, key)}: [{table}] {key}: {exc}") from None
        node = t["node"]
        cfg = cls(node["index"], convert("node", "listen", _addr), convert("node", "seed", _hex32),
                   convert("node", "data_dir", place), node["validation"], node["txs_per_block"],
                   float(node["base_timeout_ms"]), float(node["delay_ms"]), convert("node", "events", place),
                   node["load_seed"],
                   convert("network", "keys", lambda ks: tuple(map(_hex32, ks))),
                   convert("network", "addresses", lambda xs: tuple(map(_addr, xs))), node["app"],
                   node["log_format"], node["sig_cache"], node["crash_after_blocks"],
                   convert("node", "load_file", lambda x: str(place(x)) if x else ""),
                   convert("metrics", "listen", lambda x: _addr(x) if x else None),
                   config.for_file(path, data), node["load"],
                   convert("rpc", "listen", lambda x: _addr(x) if x else None),
                   {k: None if (k, v) == ("max_connections", 0) else v  # 0: Rpc's default
                    for k, v in t["rpc"].items() if k != "listen"}, str(path), node["snapshot_every"],
                   node["genesis_accounts"], node["state_sync"], node["chain_id"], float(node["mark_grace_ms"]),
                   float(node["empty_block_interval_ms"]),
                   convert("clearing", "oracles", lambda ks: tuple(map(_hex32, ks))), t["clearing"]["oracle_quorum"])
        if len(cfg.keys) != len(cfg.addresses) or not 0 <= cfg.index < len(cfg.keys):
            raise ConfigError(f"{path}:{line_of(text, 'network', None)}: [network] needs one key and one address "
                              f"per validator, [node] index {cfg.index} among them")
        _check_network(path, text, cfg)
        # the events file is appended to: one that is the store, the lock, the load or this file
        # itself was written into (a JSON line appended to validator.db damaged the store; to this
        # file, the next start could not parse it)
        taken = {cfg.data_dir / name: (f"[node] data_dir's {name}", "data_dir") for name in DATA_DIR_FILES}
        taken[Path(os.path.abspath(path))] = ("this file", "events")
        if cfg.load_file:
            taken[Path(cfg.load_file)] = ("[node] load_file", "load_file")
        events = Path(os.path.normpath(cfg.events))

        def exists(p: Path, what: str, key: str) -> bool:
            # a path the system refuses to look up (a name over NAME_MAX, a directory this user may
            # not enter) raised a bare OSError: exit 1, which the unit restarts, naming no key
            try:
                return p.exists()
            except OSError as exc:
                raise ConfigError(f"{path}:{line_of(text, 'node', key)}: {what} {str(p)!r} cannot be looked up: "
                                  f"{exc.strerror or exc}") from None
        clash = next((what for p, (what, key) in taken.items() if Path(os.path.normpath(p)) == events
                      or (exists(events, "[node] events", "events") and exists(p, what, key)
                          and os.path.samefile(events, p))), None)
        if clash:
            raise ConfigError(f"{path}:{line_of(text, 'node', 'events')}: [node] events {str(cfg.events)!r} is {clash}; "
                              "give the events their own file")
        bound = [(table, a) for table, a in (("node", cfg.listen), ("rpc", cfg.rpc), ("metrics", cfg.metrics))
                 if a is not None and a[1] != 0]
        for i, (first, (host1, port1)) in enumerate(bound):
            for table, (host, port) in bound[i + 1:]:
                # (as the system reads them: 127.1 and 127.0.0.1 one address, review s19)
                if port == port1 and (host_key(host) == host_key(host1) or "" in (host, host1)
                                      or unspecified(host) or unspecified(host1)):
                    raise ConfigError(f"{path}:{line_of(text, table, 'listen')}: [{table}] listen {host}:{port} "
                                      f"takes [{first}] listen's port; give each its own")
        if cfg.app == "clearing" and cfg.txs_per_block > MAX_BLOCK_TXS:
            raise ConfigError(f"{path}:{line_of(text, 'node', 'txs_per_block')}: [node] txs_per_block "
                              f"{cfg.txs_per_block}: a clearing block holds at most {MAX_BLOCK_TXS} transactions")
        if cfg.app == "kv" and cfg.txs_per_block > KV_MAX_TXS:  # the built-in load signed 4x this at start, for ever
            raise ConfigError(f"{path}:{line_of(text, 'node', 'txs_per_block')}: [node] txs_per_block "
                              f"{cfg.txs_per_block}: a key-value block holds at most {KV_MAX_TXS} transactions")
        _check_read(path, text, data, cfg)
        _check_oracles(path, text, cfg)
        if cfg.empty_block_interval_ms and cfg.empty_block_interval_ms >= cfg.base_timeout_ms / 2:
            # (Config refuses it too) the followers' view timers would fire while the leader waits
            raise ConfigError(f"{path}:{line_of(text, 'node', 'empty_block_interval_ms')}: [node] "
                              f"empty_block_interval_ms {cfg.empty_block_interval_ms:g} must be below half of "
                              f"base_timeout_ms ({cfg.base_timeout_ms / 2:g}): the others' views would time out "
                              "while an idle leader waits")
        limits = cfg.rpc_limits
        if limits["max_body_bytes_in_flight"] < limits["max_body_bytes"]:  # else no body that size could be read
            at = line_of(text, 'rpc', 'max_body_bytes_in_flight') or line_of(text, 'rpc', 'max_body_bytes')
            raise ConfigError(f"{path}:{at}: [rpc] max_body_bytes_in_flight "
                              f"{limits['max_body_bytes_in_flight']} must be at least [rpc] max_body_bytes "
                              f"({limits['max_body_bytes']})")
        if cfg.chain_id != 1 and cfg.load_file:  # (read: _check_read)
            raise ConfigError(f"{path}:{line_of(text, 'node', 'chain_id')}: [node] chain_id {cfg.chain_id}: "
                              "load_file's transactions are signed for chain 1")
        if bytes(SigningKey(cfg.seed).verify_key) != cfg.keys[cfg.index]:
            raise ConfigError(f"{path}:{line_of(text, 'node', 'seed')}: [node] seed's public key is not "
                              f"[network] keys[{cfg.index}]")
        return cfg

    @staticmethod
    def _table(path, text: str, table: str, data: dict) -> dict:
        """The table's keys, checked, with defaults for those not given."""
        schema, given = SCHEMA[table], data.get(table, {})
        for key, value in given.items():
            where = f"{path}:{line_of(text, table, key)}"
            if key not in schema:
                raise ConfigError(f"{where}: unknown [{table}] key {key!r}; known: {sorted(schema)}")
            want = schema[key][0]
            if (want is bool) != isinstance(value, bool) or not isinstance(value, (int, float) if want is float else want):
                raise ConfigError(f"{where}: [{table}] {key} must be {NOUNS[want]}, not {value!r}")
            if table == "node" and key in CHOICES and value not in CHOICES[key]:
                raise ConfigError(f"{where}: [node] {key} must be one of {', '.join(CHOICES[key])}, not {value!r}")
            if want is float and not _finite(value):
                raise ConfigError(f"{where}: [{table}] {key} must be a finite number, not {value!r}")
            if (table, key) in BELOW and value >= BELOW[table, key]:
                raise ConfigError(f"{where}: [{table}] {key} must be below {BELOW[table, key]}, not {value!r}")
            if (table, key) in POSITIVE and not value > 0:
                raise ConfigError(f"{where}: [{table}] {key} must be above 0, not {value!r}")
            if (table, key) in NON_NEGATIVE and value < 0:
                raise ConfigError(f"{where}: [{table}] {key} must be 0 or more, not {value!r}")
        missing = [key for key, (_, default) in schema.items() if default is REQUIRED and key not in given]
        if missing:
            raise ConfigError(f"{path}: [{table}] needs {', '.join(missing)}")
        return {key: given.get(key, default) for key, (_, default) in schema.items()}


# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "node"}


def _fields(record: logging.LogRecord) -> dict:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, node, msg, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname, "logger": record.name, "node": getattr(record, "node", None),
                 "msg": record.getMessage()} | _fields(record)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The usual line, with the record's extra fields appended as key=value."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        extra = "".join(f" {k}={json.dumps(v, default=str)}" for k, v in _fields(record).items())
        return super().formatMessage(record) + extra


def configure_logging(index: int, log_format: str, stream=None) -> logging.Handler:
    """Every logger of the process (accel's fallback warnings included) through one handler that
    stamps the validator's index on each record."""
    def stamp(record):
        record.node = index
        return True
    handler = logging.StreamHandler(stream)
    handler.addFilter(stamp)
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         TextFormatter("%(asctime)s node%(node)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    return handler


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
        """Mempool admission, its signatures checked in one batch."""
        batch = []
        for _ in range(want - len(app.mempool)):
            c, nonce = self.made % CLIENTS, self.made // CLIENTS
            body = transfer_body(self.keys[c], nonce, self.keys[(c + 1) % CLIENTS], 1)
            batch.append((body, [self.clients[c].sign(body).signature]))
            self.made += 1
        refused = [r for r in app.submit_many(batch) if r]
        if refused:
            log.warning("the mempool refused %d load transaction(s): %s", len(refused), refused[0])


class ClearingFeed:
    """The clearing market's stream, the same on every validator: read from `load_file` (signed
    once by the clients, as localnet writes it), else generated here (clearing_load.market_load)."""

    def __init__(self, cfg: "NodeConfig"):
        from .apps import clearing_load
        self.load = (clearing_load.StreamFile(cfg.load_file) if cfg.load_file else
                     clearing_load.market_load(cfg.load_seed, cfg.txs_per_block, cfg.crash_after_blocks,
                                               cfg.chain_id))

    def skip(self, count: int) -> None:
        """Pass over the first `count` transactions of the stream, SKIP_BATCH at a time (they were
        taken into one list: a count of millions held them all at once)."""
        while count > 0:
            step = min(count, SKIP_BATCH)
            self.load.skip(step)
            count -= step

    def top_up(self, app, want: int) -> None:
        """Mempool admission, its signatures checked in one batch."""
        if len(app.mempool) < want:
            refused = [r for r in app.submit_many(self.load.take(want - len(app.mempool))) if r]
            if refused:
                log.warning("the mempool refused %d load transaction(s): %s", len(refused), refused[0])


def memory_limit(root: str = "/") -> tuple[int, str] | None:
    """(bytes, what) of the memory this process may use: the machine's, or its control group's
    limit where lower (a container: the OOM killer acts at the group's limit, whatever the host
    has), cgroup v2's memory.max or v1's memory.limit_in_bytes of this process's group and the
    groups above it. None when nothing can be told. root: where /proc and /sys are (tests)."""
    found = []
    try:
        found.append((os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine has"))
    except (ValueError, OSError):
        pass
    base = os.path.join(root, "sys", "fs", "cgroup")
    try:
        with open(os.path.join(root, "proc", "self", "cgroup")) as fh:
            groups = [line.rstrip("\n").split(":", 2) for line in fh]
    except OSError:
        groups = []
    for g in groups:
        if len(g) != 3:
            continue
        if g[0] == "0" and g[1] == "":  # v2 (the unified hierarchy, maybe beside v1 controllers)
            top, name = ([base, os.path.join(base, "unified")], "memory.max")
        elif "memory" in g[1].split(","):
            top, name = ([os.path.join(base, "memory")], "memory.limit_in_bytes")
        else:
            continue
        parts = [p for p in g[2].split("/") if p and p != ".."]
        for t in top:  # the group and those above it; in a container its own view's root too
            for depth in range(len(parts), -1, -1):
                try:
                    with open(os.path.join(t, *parts[:depth], name)) as fh:
                        raw = fh.read().strip()
                except OSError:
                    continue
                if raw.isascii() and raw.isdigit() and 0 < int(raw) < 1 << 62:  # "max", v1's "unlimited"
                    found.append((int(raw), "this process's control group (container) allows"))
    return min(found) if found else None


def accounts_fit(n: int, root: str = "/") -> str:
    """"" when n bulk genesis accounts (genesis_accounts, --accounts) fit in this process's memory
    (memory_limit: a container's limit where lower than the machine's), else why not: 10**14 of
    them were built until memory ran out (hours, then the OOM killer)."""
    limit = memory_limit(root)
    if limit is None or n * ACCOUNT_BYTES <= limit[0]:
        return ""
    return (f"{n:,} genesis accounts need about {n * ACCOUNT_BYTES / 2**30:,.1f} GiB of memory; "
            f"{limit[1]} {limit[0] / 2**30:,.1f} GiB")


def open_events(cfg: "NodeConfig", where: str = ""):
    """[node] events opened for appending, once the store is open: a regular file, a character
    device (/dev/null, a terminal) or a FIFO some process reads, and never the store, its WAL or
    shared memory, its lock, the load file or the validator's own file under any name. A FIFO no
    process read held open() for ever (the validator never started, its port unbound, with no
    word), and NodeConfig.load's check compares names and files that exist before the start: a
    symbolic link to data_dir (or a hard link made later) named validator.db on a first start,
    so the JSON lines went into the SQLite file the store had just created."""
    def refuse(why: str):
        return StartupError(f"validator {cfg.index}: {where}[node] events {str(cfg.events)!r}: {why}")
    try:
        fd = os.open(cfg.events, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO with no reader (or a socket): open() without O_NONBLOCK waited
            raise refuse("a FIFO (or socket) that no process reads; give the events a file") from None
        raise refuse(exc.strerror or str(exc)) from None
    try:
        info = os.fstat(fd)
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISCHR(info.st_mode) or stat.S_ISFIFO(info.st_mode)):
            raise refuse("not a regular file, a character device or a FIFO; give the events a file")
        same = {(info.st_dev, info.st_ino)}
        taken = [(cfg.data_dir / name, f"[node] data_dir's {name}") for name in DATA_DIR_FILES]
        taken += [(Path(cfg.path), "this validator's file")] if cfg.path else []
        taken += [(Path(cfg.load_file), "[node] load_file")] if cfg.load_file else []
        for other, what in taken:
            try:
                o = os.stat(other)
            except OSError:
                continue
            if {(o.st_dev, o.st_ino)} == same:
                raise refuse(f"is {what} ({other}) under another name; give the events their own file")
        if stat.S_ISREG(info.st_mode) and info.st_size:
            # a file that is not an events file already (another validator's validator.db, a key
            # file, a log given by mistake) would have JSON lines appended to it: the names above
            # are this validator's own, and another's store took the lines as it took them
            # the descriptor above is write-only: read the same file again through it where the
            # system lets (a name replaced meanwhile is not read instead), else by its name
            head = f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else cfg.events
            try:
                with open(head, "rb") as fh:
                    first = fh.read(EVENTS_HEAD).split(b"\n", 1)[0]
            except OSError as exc:
                raise refuse(f"cannot be read to check it holds events: {exc.strerror or exc}") from None
            try:
                ok = "kind" in json.loads(first)
            except (ValueError, TypeError, RecursionError):  # not JSON, JSON not an object, or nested past the parser
                ok = False
            if not ok:
                raise refuse(f"holds something other than a validator's events (it begins {first[:16]!r}); "
                             "give the events their own file")
        os.set_blocking(fd, True)  # a FIFO's reader that falls behind holds the writes, as a pipe does
        return os.fdopen(fd, "a", buffering=1)
    except BaseException:
        os.close(fd)
        raise


class EventsLog:
    """[node] events, opened by open_events: a regular file renamed or removed while the node runs
    (logrotate's default, `mv`) is opened again under its name before the next line, so rotation
    by rename works (the lines went on into the renamed file, and the configured one stayed
    missing; copytruncate alone worked). One stat a line. A file put there that open_events
    refuses is reported once (a warning) and the lines stay in the old one until the name holds
    another file. A FIFO whose reader went away (a log shipper restarting) loses the lines until
    a reader opens it again (a warning when it goes, one when it is back): the broken pipe
    stopped the validator (review s15)."""

    def __init__(self, cfg: "NodeConfig", where: str = ""):
        self.cfg, self.file = cfg, open_events(cfg, where)
        self.refused: tuple | None | bool = False  # (dev, inode) open_events refused at the name (None: nothing)
        self.dropped = 0  # lines lost while a FIFO had no reader

    def write(self, line: str) -> None:
        if self.file is None and not self._reader_back():
            self.dropped += 1
            return
        self._follow()
        try:
            self.file.write(line)
        except BrokenPipeError:
            self._reader_gone()
            self.dropped += 1

    def flush(self) -> None:
        if self.file is not None:
            try:
                self.file.flush()
            except BrokenPipeError:
                self._reader_gone()

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except BrokenPipeError:
                pass  # (a FIFO's reader gone: the buffered line is lost, as any written after it)

    def _reader_gone(self) -> None:
        log.warning("validator %d: [node] events %r: its reader went away; events are dropped until one "
                    "reads it again", self.cfg.index, str(self.cfg.events))
        self.close()
        self.file = None

    def _reader_back(self) -> bool:
        try:
            self.file = open_events(self.cfg)
        except (StartupError, OSError):
            return False
        log.warning("validator %d: [node] events %r is read again; %d line(s) were dropped", self.cfg.index,
                    str(self.cfg.events), self.dropped)
        self.dropped = 0
        return True

    def _follow(self) -> None:
        held = os.fstat(self.file.fileno())
        if not stat.S_ISREG(held.st_mode):
            return
        try:
            now = os.stat(self.cfg.events)
            at = (now.st_dev, now.st_ino)
        except FileNotFoundError:
            at = None
        except OSError:
            return  # (the directory unreadable for a moment: the same file still takes the lines)
        if at == (held.st_dev, held.st_ino) or at == self.refused:
            return
        try:
            fresh = open_events(self.cfg)
        except (StartupError, OSError) as exc:
            self.refused = at
            log.warning("%s; its lines go on into the file it named before", exc)
            return
        self.file.close()
        self.file, self.refused = fresh, False


class StartupError(Exception):
    """A validator that cannot start: one line naming the key and the path or address."""


class DataDirInUse(Exception):
    """Another process (or an earlier store of this one) holds the data directory's lock, or its
    filesystem takes no lock."""


NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}  # flock on a filesystem without locks
_locked_stores: "weakref.WeakSet[LockedStore]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child lets its parent's data_dir locks go (its copies of their descriptors are
    closed; the parent's lock stands): a child that outlived its parent (killed by SIGKILL) held
    the lock, and the validator's restart was refused as "in use" by a process long dead."""
    for store in list(_locked_stores):
        for name in ("lock", "db_lock"):
            fd = getattr(store, name, -1)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(store, name, -1)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _in_use(holder: str) -> DataDirInUse:
    if holder == str(os.getpid()):  # a NodeRunner of this process whose store was never closed
        return DataDirInUse(f"in use by this process (pid {holder}): an earlier validator here did not close its store")
    return DataDirInUse(f"in use by another validator process (pid {holder}); stop it first")


def _read_pid(path: Path) -> str:
    """The pid a validator.lock holds, in words ("unknown" where it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(32).decode(errors="replace").strip() or "unknown"
    except OSError:
        return "unknown"


class LockedStore(Store):
    """The store of a data directory that one process at a time may open: an exclusive flock on
    data_dir/validator.lock (holding the holder's pid), held while the store is open and dropped
    by the kernel when the process ends, even by SIGKILL. Two processes on one data_dir (the same
    validator started twice, by its service and by hand with another port; a copied file whose
    data_dir was left as it was) each wrote the other's safety state: a validator whose last voted
    view is overwritten can vote twice in one view, and two validators' blocks interleaved."""

    def __init__(self, data_dir: Path):
        self.lock = self.db_lock = -1
        # not followed if a link: the file is truncated to hold the pid (a validator.lock linked to
        # another file emptied that file)
        self.lock = os.open(data_dir / "validator.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.lock)
            raise _in_use(_read_pid(data_dir / "validator.lock")) from None
        except OSError as exc:
            os.close(self.lock)
            if exc.errno in NO_LOCKS:  # was "is not a writable directory: No locks available"
                raise DataDirInUse(f"its filesystem takes no file lock ({exc.strerror}), so two processes could "
                                   "write one validator's votes; put data_dir on a local filesystem") from None
            raise
        # the database file is locked too (flock: apart from SQLite's own fcntl locks, and from a
        # `flock <data_dir> accel node` wrapper's): validator.lock reads like a stale pid file, and
        # one removed while its validator ran let a second process open the store (review s16).
        # Only once validator.lock is held: a descriptor of the database closed in a process whose
        # SQLite connection has it open drops that connection's fcntl locks
        try:
            self.db_lock = os.open(data_dir / "validator.db", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(self.db_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._unlock_db()
            os.close(self.lock)
            raise _in_use(_read_pid(data_dir / "validator.lock")) from None
        except OSError:
            self._unlock_db()  # (a database SQLite cannot open either says why below)
        _locked_stores.add(self)
        try:
            os.ftruncate(self.lock, 0)
            os.pwrite(self.lock, f"{os.getpid()}\n".encode(), 0)
            super().__init__(data_dir / "validator.db")
        except BaseException:
            os.close(self.lock)  # the lock goes with it
            self._unlock_db()
            raise

    def _unlock_db(self) -> None:
        if self.db_lock >= 0:
            os.close(self.db_lock)
            self.db_lock = -1

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.lock >= 0:
                os.close(self.lock)
                self.lock = -1
            self._unlock_db()


class NodeRunner:
    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        where = f"{cfg.path}: " if cfg.path else ""
        try:
            cfg.data_dir.mkdir(parents=True, exist_ok=True)
            self.store = LockedStore(cfg.data_dir)
        except DataDirInUse as exc:
            raise StartupError(f"validator {cfg.index}: {where}[node] data_dir {str(cfg.data_dir)!r}: {exc}") from None
        except sqlite3.Error as exc:  # (store.environmental: a damaged store is a StoreError)
            raise StartupError(f"validator {cfg.index}: {where}[node] data_dir {str(cfg.data_dir)!r}: cannot open its "
                               f"store ({exc}): the disk is full, read-only or failing, or another program holds "
                               "validator.db; the store is not damaged: free space or stop that program, and start "
                               "again (do not remove the data directory: the validator would forget its votes)") \
                from None
        except OSError as exc:
            raise StartupError(f"validator {cfg.index}: {where}[node] data_dir {str(cfg.data_dir)!r} is not a "
                               f"writable directory: {exc.strerror or exc}") from None
        try:
            self._open(cfg, where, unclaimed=self._claim_data_dir(cfg, where))
        except BaseException:  # a validator that does not start lets its data_dir go
            self.store.close()
            raise

    @staticmethod
    def _claim_data_dir(cfg: NodeConfig, where: str) -> bool:
        """data_dir/validator.key names the validator whose store it is (its public key), written
        at its first start (_write_key, once the store is found to be of this network): another
        validator of the same network given this data_dir (a copied file whose index and seed
        were changed, data_dir not) while its owner was stopped passed the lock and the network
        check, took the owner's safety state as its own and wrote its votes over the owner's. It
        is refused now, before anything is written. Whether the data_dir names no validator yet."""
        mine = cfg.keys[cfg.index].hex()
        marker = cfg.data_dir / "validator.key"
        try:  # (as an editor may leave it: a BOM, NULs, upper case)
            held = marker.read_text(errors="replace").strip().strip("\ufeff\x00").strip().lower()
        except FileNotFoundError:
            held = None
        except OSError as exc:
            raise StartupError(f"validator {cfg.index}: {where}[node] data_dir {str(cfg.data_dir)!r}: cannot read "
                               f"validator.key: {exc.strerror or exc}") from None
        if held is None:
            return True
        if len(held) != 64 or any(c not in "0123456789abcdef" for c in held):
            others = [i for i, k in enumerate(cfg.keys) if i != cfg.index and len(held) >= 8 and held in k.hex()]
            if others:  # (its remains name another validator: never invite taking its safety state)
                raise StartupError(f"validator {cfg.index}: {where}[node] data_dir {str(cfg.data_dir)!r}: its "
                                   f"damaged validator.key holds part of validator {others[0]}'s key: it is that "
                                   "validator's store; give each validator its own data_dir")
            what = "empty" if not held else f"not a 64-hex-digit key ({len(held)} characters)"
            raise StartupError(f"validator {cfg.index}: {where}[node] data_dir {str(cfg.data_dir)!r}: validator.key "
                               f"is damaged ({what}; a crash at the first start can leave it so): if this data_dir is "
                               f"validator {cfg.index}'s own, write its key {mine} into validator.key (or delete "
                               f"the file) and start again")
        if held != mine:
            raise StartupError(f"validator {cfg.index}: {where}[node] data_dir {str(cfg.data_dir)!r} is the store of "
                               f"the validator with key {held[:16]}... (its validator.key), not this one's "
                               f"({mine[:16]}..., [network] keys[{cfg.index}]): give each validator its own data_dir")
        return False

    @staticmethod
    def _write_key(cfg: NodeConfig, where: str) -> None:
        """validator.key written (see _claim_data_dir), after the network check: written before,
        a validator of another network given an unnamed data_dir of this one left its key there,
        and the data_dir's own validator was refused as another's (review s16)."""
        mine = cfg.keys[cfg.index].hex()
        marker = cfg.data_dir / "validator.key"
        part = cfg.data_dir / "validator.key.part"
        try:
            # durable before it is relied on (as the seal file): renamed with no fsync, a crash
            # (power loss) before writeback could leave the name with no data (ext4 and XFS
            # delay allocation), and every later start was refused as another validator's store
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, (mine + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(part, marker)
            _sync_dir(str(cfg.data_dir))
        except OSError as exc:
            raise StartupError(f"validator {cfg.index}: {where}[node] data_dir {str(cfg.data_dir)!r} is not a "
                               f"writable directory: {exc.strerror or exc}") from None

    def _open(self, cfg: NodeConfig, where: str, unclaimed: bool) -> None:
        """The rest of the start, with the store open (unclaimed: validator.key to write, once the
        store is found to be of this network)."""
        key = SigningKey(cfg.seed)
        try:
            if cfg.app == "clearing":
                from .apps.clearing_app import ClearingApp
                from .apps.clearing_load import genesis_market
                self.load = ClearingFeed(cfg) if cfg.load == "builtin" else None
                if cfg.load == "builtin":  # the demo's oracles: the built-in load signs its marks with them
                    genesis = genesis_market()
                elif cfg.oracles:
                    genesis = genesis_market(None, cfg.oracles, cfg.oracle_quorum)
                else:  # (NodeConfig.load refuses it: a NodeConfig made otherwise)
                    raise StartupError(f"validator {cfg.index}: {where}[clearing] oracles: none named")
                if cfg.genesis_accounts:
                    too_many = accounts_fit(cfg.genesis_accounts)
                    if too_many:
                        raise StartupError(f"validator {cfg.index}: {where}[node] genesis_accounts: {too_many}")
                    from .bench import add_accounts
                    add_accounts(genesis, cfg.genesis_accounts)
                self.app = ClearingApp(Verifier(cfg.validation), genesis, max_txs=cfg.txs_per_block,
                                       sig_cache=cfg.sig_cache, chain_id=cfg.chain_id,
                                       mark_grace_s=cfg.mark_grace_ms / 1000)
            else:
                gen = LoadGenerator(cfg.load_seed)  # its accounts are the genesis either way
                self.load = gen if cfg.load == "builtin" else None
                self.app = KvApp(Verifier(cfg.validation), gen.genesis(), max_txs=cfg.txs_per_block)
        except OSError as exc:
            raise StartupError(f"validator {cfg.index}: {where}[node] load_file {cfg.load_file!r}: "
                               f"{exc.strerror or exc}") from None
        # the network id in every consensus signature (messages.network_id): of this chain id,
        # genesis and validator set, the same on every validator of the network and on no other
        self.network = messages.network_id(cfg.chain_id, genesis_digest(self.app.genesis), cfg.keys)
        problem = self.store.claim_network(self.network)
        if problem:
            raise StartupError(f"validator {cfg.index}: {where}[node] data_dir {str(cfg.data_dir)!r}: {problem}")
        if unclaimed:
            self._write_key(cfg, where)
        # the newest snapshot that restores, and the committed blocks after it to replay
        started = time.monotonic()
        start = snapshots.load(self.store, self.app)
        if cfg.validation == "accel":
            b = get_backend()
            backend, device = b.name, b.device
        else:
            backend, device = "software", "PyNaCl and accel.ed25519_ref, hashlib, accel.risk_numpy"
            if cfg.app == "clearing":
                # the backend registration keys are checked on, chosen here and not in a client's
                # first request, which paid for it (auto asks a child process whether OpenCL has
                # a GPU: 0.5 s charged to that client's share); one that cannot run is run_node's
                # to report (_software_key_check)
                try:
                    get_backend()
                except BackendUnavailable:
                    pass
        self.backend, self.device = backend, device
        self.metrics = NodeMetrics(self.app, backend, device, cfg.validation)
        # sha256(body) -> height, for /tx: the latest TX_INDEX committed transactions (after a
        # restart, those of the blocks replayed since the snapshot and the ones committed since)
        self.tx_heights: dict[bytes, int] = {}
        self.committed_txs = start.txs
        self.txs_due = False  # a ("txs",) item waits in the inbox for the core (submitted)
        self.submitted = 0  # transactions clients submitted that the mempool admitted
        self.started = self.last_commit = time.monotonic()
        self.committed_since_start = 0
        self.peers_seen: dict[int, float] = {}
        self.snapshot_due = False
        self.stall_s = max(10.0, 10 * cfg.base_timeout_ms / 1000.0)  # /health: progress within this
        # a peer heard from this recently counts as connected (a validator busy validating a large
        # block sends nothing meanwhile: the window grows with the view timeout)
        self.peer_window_s = max(PEER_WINDOW_S, 5 * cfg.base_timeout_ms / 1000.0)
        self.timed_out = -1  # the last view whose timeout was counted
        # proposer -> (when its last rejection was logged, rejections since not logged): one line
        # and event per proposer every WARN_EVERY_S (see _rejected)
        self.rejections: dict[int, list] = {}
        self.metrics.liveness(self)
        validate = self.app.validate

        def timed_validate(*args):  # every validation, rejected blocks too, observed as it happens
            verdict = validate(*args)
            self.metrics.validated(verdict)
            return verdict
        self.app.validate = timed_validate
        # committed proposals leave memory once stored: peers catching up are served from the store
        self.core = Core(Config(cfg.index, cfg.keys, cfg.base_timeout_ms, network=self.network,
                                empty_block_interval_ms=cfg.empty_block_interval_ms),
                         lambda m: key.sign(m).signature,
                         self.app, self.store.safety(), self._replaying(start.history), self.store.committed_range,
                         start.base)
        # committed transactions are not reissued by the built-in load
        if isinstance(self.load, ClearingFeed):
            self.load.skip(self.committed_txs)
        elif self.load is not None:
            self.load.made = self.committed_txs
        self.core.snapshot_source = self._serve_snapshot
        # an empty store with state_sync: a peer's snapshot first (see _synced)
        self.sync = (statesync.StateSync(self.core.cfg, self.app, probe=True)
                     if cfg.state_sync and self.store.first_height() == 0 else None)
        self.highest_seen = self.core.committed.height  # of the proposals the core took (see _handle)
        self.parked_heights: dict[bytes, tuple[int, int]] = {}  # block id -> (proposer, height): parked ones
        self.metrics.height.set(self.core.committed.height)
        self.restart_s = time.monotonic() - started
        base = start.base.proposal.block.height if start.base else 0
        log.info("state at height %d: %s, %d block(s) replayed (%.3f s)", self.core.committed.height,
                 f"from the snapshot at height {base}" if start.base else "from the genesis", self.core.replayed,
                 self.restart_s, extra={"height": self.core.committed.height, "replayed": self.core.replayed,
                                        "snapshot_height": base})
        # The loaded state is millions of long-lived objects at a large market: a full collection
        # of the cyclic GC would walk them all (seconds, mid-consensus). They are moved out of its
        # reach; what blocks allocate later is collected as usual (clearing_app pauses it per block).
        gc.freeze()
        self.inbox = FairInbox()  # one peer's flood delays another's message by one of its own at most
        self.queued: dict[int, int] = {}  # sender -> its messages in the inbox (at most INBOX_PER_PEER)
        self.queued_bytes: dict[int, int] = {}  # sender -> their bytes, about (_weight; INBOX_BYTES_PER_PEER)
        self.events = EventsLog(cfg, where)
        self.rpc = None
        self.stop_reason = ""
        self.exit_with_parent: int | None = None  # the launcher's pid: stop when it is gone

    @property
    def submitted(self) -> int:
        """Transactions clients submitted that the mempool admitted (counted by consensus.rpc)."""
        return self._submitted

    @submitted.setter
    def submitted(self, count: int) -> None:
        """A transaction admitted tells the core (once per inbox turn): a leader waiting with
        nothing to propose (Config.empty_block_interval_ms) proposes it at once."""
        more = count > getattr(self, "_submitted", count)
        self._submitted = count
        core = getattr(self, "core", None)
        if more and core is not None and self.sync is None and not self.txs_due and core.idle_view == core.view:
            self.txs_due = True
            self.inbox.put(("txs",))

    def close(self) -> None:
        """The store (and its data_dir lock) and the events file let go, once or again (run()
        closes them as it ends; run_node after whatever else failed). A start that failed after
        the runner was made (its [metrics] port taken, the event loop's setup) kept the lock in
        the process, so a validator started again in it (as tests and embedders do) was refused
        as "in use" by itself."""
        try:
            self.store.close()
        finally:
            self.events.close()

    def _serve_snapshot(self, height: int, chunk: int):
        return statesync.serve(self.store, height, chunk)

    def _synced(self) -> None:
        """The peer's snapshot is verified: into the store, and the core starts from it (the
        blocks after it are fetched as by any validator behind)."""
        sync, self.sync = self.sync, None
        done = statesync.bounded(sync.done, self.cfg.txs_per_block)
        # the safety state the store held (a validator that voted before any block committed, then
        # lost them: its last voted view stays), else the unstarted core's (nothing voted); its
        # uncommitted blocks are of the chain below the snapshot and are not kept
        safety = replace(self.core.safety, blocks=())
        base = statesync.begin(self.store, done, safety)
        self.core = Core(self.core.cfg, self.core.sign, self.app, safety, done.after, self.store.committed_range, base)
        self.core.snapshot_source = self._serve_snapshot
        self.committed_txs = done.txs + sum(len(p.block.txs) for p in done.after)
        if isinstance(self.load, ClearingFeed):
            self.load.skip(self.committed_txs)
        elif self.load is not None:
            self.load.made = self.committed_txs
        for p in done.after:
            self._index(p.block)
        self.metrics.height.set(self.core.committed.height)
        log.info("state synced: the snapshot at height %d from validator %d, its commit and state root verified; "
                 "fetching the blocks after it", done.proposal.block.height, done.peer,
                 extra={"height": done.proposal.block.height, "peer": done.peer, "bytes": len(done.blob),
                        "sync_counters": dict(sync.counters)})  # peer_silent, peer_slow, chunk_unasked, ...
        self._top_up()
        self._apply(self.core.start())

    def _unsynced(self) -> None:
        """f or fewer peers offered a snapshot (statesync.FRUITLESS_ROUNDS rounds of them): the core starts
        from the genesis, as without state sync, and fetches the blocks as any validator behind."""
        sync, self.sync = self.sync, None
        log.warning("state sync: f or fewer peers offered a snapshot in %d rounds of the peers (a young network, or "
                    "snapshot_every = 0); starting from the genesis and fetching every block",
                    statesync.FRUITLESS_ROUNDS, extra={"sync_counters": dict(sync.counters)})
        self._top_up()
        self._apply(self.core.start())

    def _replaying(self, history):
        """history as the core replays it, each block counted and its transactions indexed (/tx) as
        it goes: the store reads it a batch at a time, never whole."""
        for p in history:
            self.committed_txs += len(p.block.txs)
            self._index(p.block)
            yield p

    def _index(self, block) -> None:
        for i in range(len(block.txs)):
            self.tx_heights[hashlib.sha256(block.txs.bodies.item(i)).digest()] = block.height
        if len(self.tx_heights) > TX_INDEX:  # the oldest only: list(tx_heights) copied 1M keys a block
            for digest in list(itertools.islice(self.tx_heights, len(self.tx_heights) - TX_INDEX)):
                del self.tx_heights[digest]

    # ---- liveness: /status, /health, metrics, warnings ------------------------------------------------
    def peers_connected(self, now: float | None = None) -> list[int]:
        now = time.monotonic() if now is None else now
        seen = list(self.peers_seen.items())  # one copy: the metrics thread reads this too
        return sorted(i for i, at in seen if now - at <= self.peer_window_s)

    def seconds_since_commit(self) -> float:
        return time.monotonic() - self.last_commit

    def catching_up(self) -> bool:
        """Proposals from peers run more than CATCH_UP_HEIGHTS ahead of what this validator committed.
        In step, the 2-chain commit lags the newest proposal by 2, and a proposal counts as seen
        once the core took or parked it (its signatures checked, see _handle and seen_height): a
        validator under load is a few heights behind for a moment without falling behind."""
        return self.seen_height() > self.core.committed.height + CATCH_UP_HEIGHTS

    def seen_height(self) -> int:
        """The highest proposal seen: of those the core took, and of those it holds parked the
        (f+1)-th highest of their proposers' highest. A parked block's height is a label no parent
        proves yet (a QC's height is not signed): a Byzantine leader's block on a real QC relabelled
        10^12 kept /health at "catching up" for ever. Validators ahead propose by turns, so one
        behind parks proposals of more than f of them."""
        parked, top = self.core.parked, {}
        for block_id, (proposer, height) in self.parked_heights.items():
            if block_id in parked:
                top[proposer] = max(top.get(proposer, 0), height)
        claims = sorted(top.values(), reverse=True)
        f = self.core.cfg.f
        return max(self.highest_seen, claims[f] if len(claims) > f else 0)

    def status(self) -> dict:
        now, b = time.monotonic(), self.core.committed
        return {"node": self.cfg.index, "app": self.cfg.app, "chain_id": self.cfg.chain_id,
                "network_id": self.network.hex(), "height": b.height, "block_hash": b.id.hex(),
                "state_root": b.state_root.hex(), "view": self.core.view, "backend": self.backend,
                "device": self.device, "validation": self.cfg.validation, "catching_up": self.catching_up(),
                "highest_seen_height": self.seen_height(),
                "peers": {"connected": len(self.peers_connected(now)), "validators": len(self.cfg.keys) - 1,
                          "last_heard_s": {str(i): round(now - at, 3) for i, at in sorted(self.peers_seen.items())}},
                "mempool": len(self.app.mempool), "seconds_since_commit": round(now - self.last_commit, 3),
                "committed_since_start": self.committed_since_start, "txs_submitted": self.submitted} | self._oracles()

    def _oracles(self) -> dict:
        """clearing: the oracles whose quorum signs the marks, as this validator's genesis names them,
        in sorted order (an operator compares them with what the oracles' operators hold; network_id only tells
        that two validators differ)."""
        clearing = getattr(getattr(self.app, "genesis", None), "clearing", None)
        if clearing is None:
            return {}
        # (sorted, as the network id takes them: one network's validators list them alike)
        return {"oracles": {"keys": sorted(bytes(k).hex() for k in clearing.oracles), "quorum": clearing.quorum}}

    def unhealthy(self) -> str:
        """Why this validator is not making progress ("" when it is)."""
        since, peers = self.seconds_since_commit(), len(self.peers_connected())
        others = len(self.cfg.keys) - 1
        if not self.committed_since_start and since <= self.stall_s:
            return f"starting: no block committed yet ({since:.0f} s; {peers} of {others} peers connected)"
        if since > self.stall_s:
            return (f"nothing committed for {since:.0f} s (height {self.core.committed.height}, view "
                    f"{self.core.view}); {peers} of {others} peers connected")
        if self.catching_up():
            return f"catching up: committed height {self.core.committed.height}, peers propose at {self.seen_height()}"
        return ""

    def _deliver(self, sender: int, msg) -> None:
        self.peers_seen[sender] = time.monotonic()
        if self.queued.get(sender, 0) >= INBOX_PER_PEER:
            # the transport bounds a peer's rate, not how far ahead of a busy core it may get
            self.core.counters["inbox_full"] += 1
            return
        size = _weight(msg)
        if self.queued_bytes.get(sender, 0) + size > INBOX_BYTES_PER_PEER:
            self.core.counters["inbox_bytes_full"] += 1
            return
        self.queued[sender] = self.queued.get(sender, 0) + 1
        self.queued_bytes[sender] = self.queued_bytes.get(sender, 0) + size
        self.inbox.put(("msg", sender, msg, size), sender)

    def no_peer_warning(self, now: float) -> str:
        """The line logged while no peer is connected; with the handshakes that failed, since peers
        on another network (another [network] keys, chain_id or genesis: another network id) fail
        every handshake, and the operator saw only "no peer connected" (the reasons are debug lines)."""
        last = max(self.peers_seen.values(), default=None)
        line = (f"no peer connected: nothing heard from any of the {len(self.cfg.keys) - 1} other validators "
                + (f"for {now - last:.0f} s" if last else "since the start"))
        failed = getattr(getattr(self, "net", None), "handshake_failures", 0)
        if failed:
            line += (f"; {failed} handshake(s) failed: a peer with another [network] keys, chain_id, genesis or "
                     "[clearing] oracles is on "
                     f"another network (compare network_id in each validator's /status; this one's is "
                     f"{self.network.hex()[:16]}...), or not an accel validator")
        return line

    async def _watchdog(self) -> None:
        """Warnings for a validator that hears from no peer, or commits nothing, for a while."""
        warned = {"peers": 0.0, "commit": 0.0}
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if not self.peers_connected(now) and now - self.started > self.peer_window_s \
                    and now - warned["peers"] >= WARN_EVERY_S:
                warned["peers"] = now
                log.warning("%s", self.no_peer_warning(now),
                            extra={"peers": [f"{h}:{p}" for i, (h, p) in enumerate(self.cfg.addresses)
                                             if i != self.cfg.index],
                                   "handshake_failures": getattr(getattr(self, "net", None), "handshake_failures", 0)})
            since = now - self.last_commit
            if since > self.stall_s and now - warned["commit"] >= WARN_EVERY_S:
                warned["commit"] = now
                log.warning("nothing committed for %.0f s (height %d, view %d, %d of %d peers connected)", since,
                            self.core.committed.height, self.core.view, len(self.peers_connected(now)),
                            len(self.cfg.keys) - 1)

    async def _watch_parent(self, pid: int) -> None:
        while True:
            await asyncio.sleep(0.5)
            if os.getppid() != pid:
                self.stop(f"its launcher (pid {pid}) exited")
                return

    def stop(self, reason: str) -> None:
        if not self.stop_reason:
            self.stop_reason = reason
            log.info("validator %d stopping: %s", self.cfg.index, reason)
            self._stopping.set()

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
                asyncio.get_running_loop().call_later(a.delay_ms / 1000.0, self.inbox.put, ("timer", a.view))
            elif isinstance(a, ProposeTimer):
                asyncio.get_running_loop().call_later(a.delay_ms / 1000.0, self.inbox.put, ("propose", a.view))
            elif isinstance(a, Committed):
                self.store.add_committed(a.proposal)
                b = a.block
                self.committed_txs += len(b.txs)
                self.snapshot_due |= snapshots.due(b.height, self.cfg.snapshot_every, self.cfg.index, len(self.cfg.keys))
                self._event(kind="committed", height=b.height, block_hash=b.id.hex(), state_root=b.state_root.hex(),
                            txs=len(b.txs), validation_ms=a.validation_ms)
                self.metrics.height.set(b.height)
                self.metrics.committed_state(self.core.states.get(b.id))
                self._index(b)
                self.last_commit = time.monotonic()
                self.committed_since_start += 1
                log.info("committed a block", extra={"height": b.height, "block_hash": b.id.hex(), "txs": len(b.txs),
                                                     "validation_ms": a.validation_ms})
            elif isinstance(a, Rejected):
                self._rejected(a)
        if self.snapshot_due:  # after the actions, so this commit's votes and proposal left first
            self.snapshot_due = False
            self._snapshot()

    def _rejected(self, a: Rejected) -> None:
        """A refused block: counted (the metric) every time, logged and written to the events
        file at most once per proposer every WARN_EVERY_S, with the number not logged since. A
        refusal comes before any signature is checked where the block breaks a rule on its face
        (another view's leader, a height that is not its parent's plus one), so a peer's frames
        at its full rate of 2,000 a second were as many warnings and event lines (disk filled at
        hundreds of KB a second), each naming whatever proposer the frame claimed."""
        self.metrics.rejected.inc()
        now = time.monotonic()
        last = self.rejections.setdefault(a.proposer, [-WARN_EVERY_S, 0])
        if now - last[0] < WARN_EVERY_S:
            last[1] += 1
            return
        suppressed, last[:] = last[1], [now, 0]
        self._event(kind="rejected", block_hash=a.block_id.hex(), proposer=a.proposer, reason=a.reason,
                    not_logged=suppressed)
        log.warning("rejected a block", extra={"block_hash": a.block_id.hex(), "proposer": a.proposer,
                                               "reason": a.reason, "not_logged": suppressed})

    def _snapshot(self) -> None:
        """The newest committed block's state into the store (the states of the blocks committed
        before it in one step are pruned already), in the consensus loop: the committed state is
        shared copy-on-write with the blocks above it, so it is encoded here and not on a thread."""
        b = self.core.committed
        started = time.monotonic()
        size = snapshots.take(self.store, self.app, b, self.core.states[b.id], self.committed_txs)
        took = time.monotonic() - started
        self.metrics.snapshot(b.height, size, took)
        log.info("snapshot at height %d: %d bytes in %.3f s", b.height, size, took,
                 extra={"height": b.height, "bytes": size, "seconds": round(took, 3)})

    def _top_up(self) -> None:
        # LOAD_DEPTH blocks' worth: the two blocks not yet committed above the committed one hold
        # two, which a proposal must leave out (with 2, every third block was empty)
        if self.load is not None:
            self.load.top_up(self.app, LOAD_DEPTH * self.cfg.txs_per_block)

    async def _listen(self, what: str, key: str, address: tuple[str, int], start) -> None:
        try:
            await start()
        except (OSError, ValueError) as exc:  # ValueError: a host the idna codec refuses (UnicodeError)
            where = f"{self.cfg.path}: " if self.cfg.path else ""
            raise StartupError(f"validator {self.cfg.index}: {where}cannot listen on {address[0]}:{address[1]} "
                               f"({key}, {what}): {getattr(exc, 'strerror', None) or exc}") from None

    async def run(self) -> None:
        from .net import Network
        from .rpc import Rpc
        cfg = self.cfg
        # the node binds [node] listen; addresses[index] is what peers dial, and may differ
        addresses = list(cfg.addresses)
        addresses[cfg.index] = cfg.listen
        self.net = Network(cfg.index, addresses, self._deliver, cfg.delay_ms, seed=cfg.seed, keys=cfg.keys,
                           network=self.network)
        self._stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # SIGHUP: its terminal or ssh session closed
            loop.add_signal_handler(sig, self.stop, sig.name)
        tasks = []
        try:
            await self._listen("peers", "[node] listen", cfg.listen, self.net.start)
            # the ports bound (listen port 0: the one the system chose)
            log.info("peers on %s:%d", url_host(cfg.listen[0]), self.net.server.sockets[0].getsockname()[1])
            if cfg.rpc is not None:
                self.rpc = Rpc(self, cfg.rpc, **(cfg.rpc_limits or {}))
                await self._listen("client API", "[rpc] listen", cfg.rpc, self.rpc.start)
                log.info("client API on http://%s:%d", url_host(cfg.rpc[0]), self.rpc.bound_port())
                soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                if soft != resource.RLIM_INFINITY and self.rpc.max_connections > soft // 2:
                    log.warning("[rpc] max_connections = %d is above half this process's file-descriptor limit "
                                "(%d, ulimit -n): at that many clients accept() fails, and the peers' connections "
                                "and the store's files with it; raise LimitNOFILE or lower max_connections",
                                self.rpc.max_connections, soft)
            if self.sync is not None:
                log.info("state sync: the store is empty; asking peers for a snapshot")
                self._apply(self.sync.start())
            else:
                self._top_up()
                self._apply(self.core.start())
            tasks = [asyncio.create_task(self._consensus()), asyncio.create_task(self._watchdog())]
            if self.exit_with_parent is not None:
                tasks.append(asyncio.create_task(self._watch_parent(self.exit_with_parent)))
            stopping = asyncio.create_task(self._stopping.wait())
            done, _ = await asyncio.wait(tasks + [stopping], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stopping and not t.cancelled() and t.exception() is not None:
                    raise t.exception()
        finally:
            for t in tasks:
                t.cancel()
            if self.rpc is not None:
                await self.rpc.stop()
            await self.net.stop()
            self.store.close()
            self.events.close()
            if self.stop_reason:
                log.info("validator %d stopped at height %d", cfg.index, self.core.committed.height)

    async def _consensus(self) -> None:
        while True:
            kind, *rest = await self.inbox.get()
            if kind == "txs":
                self.txs_due = False
            if kind == "msg":
                self.queued[rest[0]] -= 1
                self.queued_bytes[rest[0]] -= rest[2]
            if self.sync is not None:  # taking a snapshot: only its own messages and timer count
                if kind == "timer" and rest[0] <= statesync.SYNC_TIMER:
                    self._apply(self.sync.on_timer(rest[0]))
                elif kind == "msg":
                    self._apply(self.sync.handle(rest[0], rest[1]))
                if self.sync.done is not None:
                    self._synced()
                elif self.sync.from_genesis:
                    self._unsynced()
                continue
            if kind == "timer":
                if rest[0] == self.core.view and rest[0] not in (self.timed_out, self.core.rearmed):  # its first timeout
                    self.timed_out = rest[0]
                    self.metrics.timeouts.inc()
                    log.warning("view %d timed out (leader %d); moving on", rest[0],
                                self.core.cfg.leader(rest[0]), extra={"view": rest[0]})
                self._apply(self.core.on_timer(rest[0]))
            elif kind == "propose":  # an idle leader's wait (Config.empty_block_interval_ms) is over
                self._apply(self.core.on_propose_timer(rest[0]))
            elif kind == "txs":
                self._apply(self.core.on_txs())
            else:
                self._handle(rest[0], rest[1])
            self._top_up()
            if self.load is not None:
                self._apply(self.core.on_txs())  # (what the built-in load brought; nothing if none waits)

    def _handle(self, sender: int, msg) -> None:
        """A peer's message to the core. A block or snapshot request is answered only while less
        than ANSWER_BACKLOG bytes of answers (and REQUEST_BACKLOG of anything) wait to go to that
        peer (request_admitted): an answer costs this validator a read and an encoding of up to
        RANGE_BYTES (or a snapshot chunk), a request 50 bytes, and an honest peer asks for the next
        range once it has the last. A proposal counts for catching_up only once the core holds or
        parked it (its signatures checked), and parked ones only while parked and as seen_height says:
        a height a peer merely claims would keep /health at "catching up" for ever."""
        if isinstance(msg, (BlockRequest, SnapshotRequest)):
            net = getattr(self, "net", None)
            if net is not None:
                if not request_admitted(net.queued_bytes.get(sender, 0), net.answer_bytes.get(sender, 0)):
                    self.core.counters["request_backlog"] += 1
                    return
        self._apply(self.core.handle(sender, msg))
        core = self.core
        if isinstance(msg, Proposal) and msg.block.id in core.blocks:
            self.highest_seen = max(self.highest_seen, msg.block.height)
        elif isinstance(msg, Proposal) and msg.block.id in core.parked:
            self.parked_heights[msg.block.id] = (msg.block.proposer, msg.block.height)
        for block_id, (_, height) in list(self.parked_heights.items()):  # (at most MAX_PARKED)
            if block_id in core.blocks:  # its parent came and it connects: its height is proven
                self.highest_seen = max(self.highest_seen, height)
            if block_id not in core.parked:
                del self.parked_heights[block_id]


def request_admitted(queued: int, answers: int, answer_backlog: int = ANSWER_BACKLOG,
                     request_backlog: int = REQUEST_BACKLOG) -> bool:
    """Whether a peer's block or snapshot request is served, with `queued` bytes waiting to go to
    it in all and `answers` of them answers to its earlier requests (the simulation applies the
    same rule with its own bounds). A Byzantine peer that asks and does not read gets at most one
    range's worth of answers queued; an honest peer asks for the next range once it has the last,
    so its answers are never held back by the proposals queued beside them."""
    return answers < answer_backlog and queued < request_backlog


def genesis_digest(genesis) -> bytes:
    """What the network id takes of an app's genesis state: its root, and for the clearing app its
    oracles (in sorted order: a set) and quorum, which no leaf of the state root holds, so that
    validators configured with other oracles form no network together."""
    clearing = getattr(genesis, "clearing", None)
    if clearing is None:
        return genesis.root
    keys = sorted(clearing.oracle_set)
    return hashlib.sha256(b"AV-ORACLES" + genesis.root + clearing.quorum.to_bytes(2, "big")
                          + len(keys).to_bytes(2, "big") + b"".join(keys)).digest()


def _cert_weight(c) -> int:
    """About the bytes a decoded QC or TC holds: its signatures, and its voters (and a TC's high
    views) as Python ints in tuples and the lists decoding builds them from (~166 bytes a signer
    measured; weighed 40, a peer's queue held 2.4 times its bound), its high QC."""
    if c is None:
        return 0
    if isinstance(c, TC):
        return 128 + len(c.sigs) + 104 * (len(c.voters) + len(c.high_views)) + _cert_weight(c.high_qc)
    return 128 + len(c.sigs) + 104 * len(c.voters)


def _proposal_weight(p: Proposal) -> int:
    """A decoded proposal but the buffer its transactions are views into: its block, header and
    arrays (about 2.5 KB of objects), offsets and certificates."""
    b = p.block
    return 2048 + b.txs.bodies.offsets.nbytes + _cert_weight(b.qc) + _cert_weight(b.tc)


def _weight(msg) -> int:
    """About the bytes a decoded message holds: its transactions', certificates' (a QC's or TC's
    signers: up to 65,535 of them, ~100 bytes each once decoded) and snapshot data, 512 beside. A
    frame's bulk that this did not count (a Timeout of a 65,535-signer QC: 4.3 MB weighed 512) let
    one validator queue INBOX_PER_PEER frames of up to MAX_MESSAGE each, past INBOX_BYTES_PER_PEER."""
    if isinstance(msg, (Proposal, BlockResponse)):  # (the frame its transactions are views into, once)
        proposals = (msg,) if isinstance(msg, Proposal) else msg.proposals
        return 512 + sum(map(_proposal_weight, proposals)) \
            + held_bytes([a for p in proposals for a in (p.block.txs.bodies.data, p.block.txs.sigs)])
    if isinstance(msg, SnapshotChunk):
        return 512 + len(msg.data) + len(msg.manifest) + sum(map(_weight, msg.proof))
    if isinstance(msg, Timeout):
        return 512 + _cert_weight(msg.high_qc)
    if isinstance(msg, (Vote, BlockRequest, SnapshotRequest, SnapshotOffer)):
        return 512  # (fixed-size fields only)
    return 512 + len(messages.encode(msg))  # (any other kind: what it weighs on the wire, at least)


# The public keys of RFC 8032's test vectors (TEST 1, 2, 3, 1024, SHA(abc)): their seeds are
# published, so anyone can sign as a validator holding one. docs/validator.example.toml's network is
# made of them (it loads, as the tests check, and must never run).
PUBLISHED_KEYS = frozenset(bytes.fromhex(k) for k in (
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
    "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
    "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
    "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
    "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf"))


def weak_seed(seed: bytes) -> str:
    """Why a validator's 32-byte seed is one a person typed rather than drew ("" if it is not):
    fewer than 12 distinct byte values (32 random bytes have about 30; fewer than 12 happens by
    chance with probability below 2**-80). PUBLISHED_KEYS held five keys only: a file written by
    hand with seed = "00" * 32, "11" * 32 or "0123456789abcdef" * 4 ran as a validator anyone
    could sign for."""
    distinct = len(set(seed))
    return f"has {distinct} distinct byte value(s) of 32 (a typed pattern, not random)" if distinct < 12 else ""


_GUESSABLE: frozenset | None = None


def _guessable_keys() -> frozenset:
    """The public keys of the seeds weak_seed means that anyone would try first: each byte value
    repeated, and the bytes 0..31 and 1..32 in order (the committee's keys are checked against
    these; another validator's seed is not known here)."""
    global _GUESSABLE
    if _GUESSABLE is None:
        seeds = [bytes([b]) * 32 for b in range(256)] + [bytes(range(32)), bytes(range(1, 33))]
        _GUESSABLE = frozenset(bytes(SigningKey(s).verify_key) for s in seeds)
    return _GUESSABLE


def _readable_by_others(path) -> str:
    """Why the validator's file (it holds [node] seed) is exposed: readable or writable by others
    than its owner ("" when not, or when it cannot be told). A client key file so exposed is
    refused (client.read_key); a validator's is warned about at start, as the files copied to a
    host often get the umask's 0644 (accel testnet and localnet write 0600)."""
    try:
        mode = os.stat(path).st_mode & 0o777 if path else 0
    except OSError:
        return ""
    if not mode & 0o077:
        return ""
    return (f"the file holds [node] seed and is readable or writable by others (mode {mode:o}): `chmod 600 {path}`, "
            "and make a new seed (and tell the network its new key) if others may have read it")


def _software_key_check(cfg: "NodeConfig", where: str) -> None:
    """A software-only clearing validator still checks the keys accounts register with on the
    accel backend ([accel], accel.toml or ACCEL_*: clearing.register's ed25519_key_is_safe, whose
    verdicts every backend shares), so that configuration is read and that check run once here.
    Neither was looked at before the first registration: an ACCEL_* variable that does not parse,
    or backend = "cuda" on a machine without an NVIDIA driver, made that validator refuse every
    registration ("internal error while applying it") in its proposals and refuse the blocks of
    the others that held one, while the accelerated validators took them."""
    import accel
    try:
        accel.ed25519_keys_are_safe([cfg.keys[cfg.index]])
    except Exception as exc:  # ConfigError, BackendUnavailable, a driver's own error
        raise SystemExit(f"validator {cfg.index}: {where}validation = \"software\" checks registering accounts' keys "
                         f"on the configured accel backend ([accel], accel.toml or ACCEL_*), which cannot run: "
                         f"{' '.join(str(exc).split()) or type(exc).__name__}; fix it, or set [accel] backend = "
                         "\"cpu\"") from None


def check_keys(cfg: "NodeConfig") -> None:
    """ConfigError (exit 2, which the systemd unit does not restart) for a validator key anyone
    can sign with: a published one, or one of a seed anyone could guess (`accel node` and
    `accel check --config` alike)."""
    where = f"{cfg.path}: " if cfg.path else ""
    published = [i for i, k in enumerate(cfg.keys) if k in PUBLISHED_KEYS]
    if published:
        raise ConfigError(f"validator {cfg.index}: {where}[network] keys[{published[0]}] is a key whose seed is "
                          "published (RFC 8032's test keys, docs/validator.example.toml's): anyone can sign as that "
                          "validator; give every validator a new seed (`accel testnet` writes them)")
    weak = weak_seed(cfg.seed)
    if weak:
        raise ConfigError(f"validator {cfg.index}: {where}[node] seed {weak}: anyone could guess it and sign as this "
                          "validator; make a random one (`accel testnet` writes them) and tell the network its key")
    guessable = [i for i, k in enumerate(cfg.keys) if k in _guessable_keys()]
    if guessable:
        raise ConfigError(f"validator {cfg.index}: {where}[network] keys[{guessable[0]}] is the key of a seed anyone "
                          "could guess (one byte repeated, 0, 1, 2, ... in order): anyone can sign as that validator; "
                          "it needs a random seed")


def run_node(config_path, exit_with_parent: int | None = None) -> int:
    """exit_with_parent: a pid; the validator stops when its parent is no longer that process (a
    launcher such as `accel localnet` that died, even by SIGKILL)."""
    cfg = NodeConfig.load(config_path)
    where = f"{cfg.path}: " if cfg.path else ""
    check_keys(cfg)  # before anything is created, bound or signed
    configure_logging(cfg.index, cfg.log_format)
    exposed = _readable_by_others(cfg.path)
    if exposed:
        log.warning("%s%s", where, exposed)
    if cfg.accel is not None:
        config.use(cfg.accel)  # before readiness, so the check runs the backend this file names
    if cfg.validation == "software" and cfg.app == "clearing":
        _software_key_check(cfg, where)
    log.info("validator %d starting: %s app, %s validation", cfg.index, cfg.app, cfg.validation,
             extra={"accel": asdict(config.get())} if cfg.validation == "accel" or cfg.app == "clearing" else {})
    if cfg.validation == "accel":
        device, results = readiness.check()
        failed = [r for r in results if not r.ok]
        if failed:
            for r in failed:
                log.error("readiness: %s failed on %s: %s", r.kernels, device, r.detail,
                          extra={"kernels": r.kernels, "device": device, "detail": r.detail})
            raise SystemExit(f"validator {cfg.index}: the configured backend cannot run ({device}); not starting")
    try:
        runner = NodeRunner(cfg)
        try:
            runner.exit_with_parent = exit_with_parent
            if cfg.metrics is not None:
                try:
                    server = runner.metrics.serve(cfg.metrics)
                except (OSError, ValueError) as exc:
                    raise StartupError(f"validator {cfg.index}: {where}cannot listen on {cfg.metrics[0]}:"
                                       f"{cfg.metrics[1]} ([metrics] listen, metrics): {getattr(exc, 'strerror', None) or exc}") from None
                log.info("metrics on http://%s:%d/metrics", url_host(cfg.metrics[0]), server.server_address[1])
            asyncio.run(runner.run())
        finally:
            runner.close()
    except StartupError as exc:  # one line on stderr, exit status 1
        raise SystemExit(str(exc)) from None
    except (StoreError, InvariantViolation) as exc:
        # this validator's own store or state is broken: one line saying so, no traceback, and no
        # restart loop hiding it (exit status 1)
        log.error("validator %d stopped: %s: %s", cfg.index, "store" if isinstance(exc, StoreError)
                  else "invariant violated", exc, extra={"error": type(exc).__name__})
        raise SystemExit(1) from None
    except (sqlite3.Error, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in DISK_ERRNOS:
            raise
        # the disk under data_dir or events: full, read-only, failing (SQLite's "database or disk is
        # full" was a traceback): nothing more can be recorded, so the validator stops, in one line.
        # The first error is named: SQLite rolls a transaction back itself on a full disk, so the
        # store's own ROLLBACK then failed with "cannot rollback - no transaction is active",
        # which hid "database or disk is full" (the write was undone either way: nothing half done)
        first = exc
        while isinstance(first.__context__, (sqlite3.Error, OSError)) and first.__context__ is not exc:
            first = first.__context__
        if isinstance(first, sqlite3.Error) or (isinstance(first, OSError) and first.errno in DISK_ERRNOS):
            exc = first
        log.error("validator %d stopped: cannot write %s: %s", cfg.index,
                  "[node] data_dir's store" if isinstance(exc, sqlite3.Error) else "to disk",
                  getattr(exc, "strerror", None) or exc, extra={"error": type(exc).__name__})
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        pass
    return 0
