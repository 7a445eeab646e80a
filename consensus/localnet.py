"""`accel localnet`: N validator processes on loopback, each with its own config, key, store and
events file; runs until every validator committed the requested blocks, shows progress, stops the
processes (also on Ctrl-C, SIGTERM, an error of its own; validators it started also stop by
themselves when it dies, even by SIGKILL: `accel node --exit-with-parent`) and writes the report
scripts read. Every validator validates through
accel, or every one software-only, or a mix: the last K software-only (software_validators), the
others accel; the report records each validator's mode."""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

from nacl.signing import SigningKey

from accel import config
from accel.config import AccelConfig

from .apps.clearing_load import market_load, write_stream
from .store import Store

CRASH_AFTER_BLOCKS = 5  # the market's volatility crash, as [node] crash_after_blocks' default
# a clearing network fed by its clients (load = "none") gets oracles of its own: 3 new keys, a
# mark signed by any 2 of them
ORACLE_COUNT, ORACLE_QUORUM = 3, 2
ACCEL_VARIABLES = {"ACCEL_CONFIG"} | {"ACCEL_" + key.upper() for key in config.KEYS}


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def launch_limit(validators: int) -> str | None:
    """Why this process cannot start `validators` validators on loopback, or None: past
    node.MAX_VALIDATORS, or more free ports than it may hold open at once (_free_ports holds
    two a validator): `accel localnet --validators 70000` said only "[Errno 24] Too many open
    files", the demo a traceback."""
    import resource

    from .node import MAX_VALIDATORS
    if validators > MAX_VALIDATORS:
        return (f"a network has at most {MAX_VALIDATORS:,} validators (a vote's validator index is 16 bits on "
                "the wire)")
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    need = 2 * validators + 64  # their peer and API ports at once, and this process's own files
    if soft != resource.RLIM_INFINITY and need > soft:
        return (f"picking {validators:,} validators' free ports needs about {need:,} open files at once; this "
                f"process may open {soft:,} (ulimit -n)")
    return None


def validation_modes(validators: int, validation: str, software_validators: int = 0) -> list[str]:
    """Each validator's [node] validation: `validation`, except the last software_validators
    validators, which run "software" (a network that mixes software-only validators with
    accelerated ones)."""
    if not 0 <= software_validators <= validators:
        raise ValueError(f"software validators: {software_validators} is not between 0 and the {validators} validators")
    return [validation] * (validators - software_validators) + ["software"] * software_validators


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT, SIGHUP) while the network runs; its validators are stopped."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def toml_string(value) -> str:
    """value (a path, say) as a TOML basic string: quotes, backslashes and control characters
    escaped. The files were written with "..." around the raw text, so a directory or data root
    holding a quote or a backslash gave a file no validator could load (or one with other keys
    than written)."""
    text = str(value)
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append("\\u%04x" % code)
        elif 0xD800 <= code <= 0xDFFF:  # a file name's undecodable bytes (surrogateescape)
            raise ValueError(f"{text!r}: not UTF-8, cannot be written in a TOML file")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def write_oracles(directory: Path, force: bool = False, count: int = ORACLE_COUNT) -> list[SigningKey]:
    """count new oracle keys, oracle<j>.json in directory: key files (mode 0600) that
    `accel tx mark --oracle` signs with; an existing one is replaced only with force."""
    from .client import write_key
    return [write_key(Path(directory) / f"oracle{j}.json", force=force) for j in range(count)]


def oracle_table(oracles: list[SigningKey], quorum: int = ORACLE_QUORUM) -> str:
    """The [clearing] table naming these oracles' public keys and their quorum."""
    keys = [bytes(k.verify_key).hex() for k in oracles]
    return f"\n[clearing]\noracles = {json.dumps(keys)}\noracle_quorum = {quorum}\n"


def write_configs(directory: Path, validators: int, txs: int, validation: str, delay_ms: float,
                  base_timeout_ms: float, app: str = "clearing", accel: AccelConfig | None = None,
                  metrics_port: int | None = None, sig_cache: bool = True, load_file: Path | None = None,
                  software_validators: int = 0, rpc_port: int | None = None, load: str = "builtin",
                  snapshot_every: int | None = None, accounts: int = 0,
                  oracles: list[SigningKey] | None = None) -> list[Path]:
    """One TOML file per validator (docs/OPERATOR.md); with accel, an [accel] table holding every
    key, so the file alone says what the validator runs; with metrics_port, validator i serves
    its metrics on metrics_port + i, with rpc_port its client API on rpc_port + i (0: free ports);
    the last software_validators validators get validation = "software" (validation_modes);
    load = "none": no built-in load, only what clients submit; snapshot_every: [node] snapshot_every
    (None: its default); accounts: [node] genesis_accounts, the same bulk accounts in every genesis;
    oracles (clearing, load = "none"): the network's oracle keys, None: new ones (write_oracles)."""
    modes = validation_modes(validators, validation, software_validators)
    directory = Path(directory).absolute()  # the files name absolute paths, wherever they are read from
    seeds = [os.urandom(32) for _ in range(validators)]
    keys = [bytes(SigningKey(s).verify_key).hex() for s in seeds]
    # every free port in one call, so the peer and API ports cannot coincide; none of them in
    # the fixed ranges the metrics and API ports take (rpc_port, metrics_port + i)
    fixed = {base + i for base in (metrics_port, rpc_port) if base for i in range(validators)}
    for base, name in ((metrics_port, "metrics_port"), (rpc_port, "rpc_port")):
        if base and not 1 <= base <= 65535 - (validators - 1):
            raise ValueError(f"{name} {base}: {validators} validators' ports from it do not fit in 1..65535")
    if metrics_port and rpc_port and len(fixed) < 2 * validators:
        raise ValueError(f"metrics_port {metrics_port} and rpc_port {rpc_port}: the validators' ports overlap")
    while True:
        free = _free_ports(2 * validators if rpc_port == 0 else validators)
        if not fixed & set(free):
            break
    addresses = [f"127.0.0.1:{p}" for p in free[:validators]]
    accel_table = "" if accel is None else "\n[accel]\n" + "".join(
        f"{key} = {json.dumps(value)}\n" for key, value in asdict(accel).items())
    rpc_ports = (None if rpc_port is None else free[validators:] if rpc_port == 0
                 else [rpc_port + i for i in range(validators)])
    clearing = ""
    if app == "clearing" and load == "none":
        clearing = oracle_table(write_oracles(directory, force=True) if oracles is None else oracles)
    paths = []
    for i, seed in enumerate(seeds):
        path = directory / f"node{i}.toml"
        metrics = "" if metrics_port is None else f"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port + i}\"\n"
        rpc = "" if rpc_ports is None else f"\n[rpc]\nlisten = \"127.0.0.1:{rpc_ports[i]}\"\n"
        _write_secret(path,
            "[node]\n"
            f"index = {i}\nlisten = \"{addresses[i]}\"\nseed = \"{seed.hex()}\"\n"
            f"data_dir = {toml_string(directory / f'node{i}')}\nevents = {toml_string(directory / f'node{i}.events.jsonl')}\n"
            f"validation = \"{modes[i]}\"\ntxs_per_block = {txs}\nbase_timeout_ms = {base_timeout_ms}\n"
            f"delay_ms = {delay_ms}\nload_seed = 1\napp = \"{app}\"\nsig_cache = {str(sig_cache).lower()}\n"
            + (f"load_file = {toml_string(Path(load_file).absolute())}\n" if load_file else "") + f"load = \"{load}\"\n"
            + (f"snapshot_every = {snapshot_every}\n" if snapshot_every is not None else "")
            + (f"genesis_accounts = {accounts}\n" if accounts else "") + "\n"
            "[network]\n"
            f"keys = {json.dumps(keys)}\naddresses = {json.dumps(addresses)}\n" + clearing + accel_table + metrics
            + rpc)
        paths.append(path)
    return paths


def _write_secret(path: Path, text: str) -> None:
    """A validator's file (it holds the secret seed) as a new file of mode 0600, whatever the
    umask (path.write_text left it readable by everyone under the usual 022); a file there
    before is replaced."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


class Localnet:
    def __init__(self, validators: int, blocks: int, txs: int, backend: str | None, validation: str,
                 delay_ms: float, directory: str | None, base_timeout_ms: float = 1000.0, app: str = "clearing",
                 gpu_min_batch: int | None = None, metrics_port: int | None = None, sig_cache: bool = True,
                 software_validators: int = 0, rpc_port: int | None = 0, load: str = "builtin",
                 load_stream: Path | None = None, snapshot_every: int | None = None, accounts: int = 0):
        """rpc_port: every validator serves the client API, on rpc_port + i (0, the default: free
        ports; None: no API). load_stream: a load.bin of another network with the same blocks and
        txs, copied instead of signing the same stream again. snapshot_every, accounts: every
        validator's [node] snapshot_every and genesis_accounts (clearing: N funded accounts holding
        positions in every genesis, consensus.bench.add_accounts)."""
        if accounts and app != "clearing":
            raise ValueError(f"{accounts} genesis accounts: only the clearing app has bulk accounts")
        too_many = launch_limit(validators)
        if too_many:  # before the load is signed or a file written
            raise ValueError(f"{validators:,} validators: {too_many}")
        self.modes = validation_modes(validators, validation, software_validators)  # checked before anything is written
        self.dir = Path(directory or tempfile.mkdtemp(prefix="accel-localnet-")).absolute()
        self.dir.mkdir(parents=True, exist_ok=True)
        used = sorted(p.name for p in self.dir.iterdir()
                      if p.name.startswith(("node", "oracle")) or p.name == "load.bin")
        if used:  # another network's stores and events would be read as this one's
            raise ValueError(f"{self.dir} already holds a network ({', '.join(used[:3])}"
                             f"{', ...' if len(used) > 3 else ''}); give a new or empty directory")
        self.validators, self.blocks, self.txs = validators, blocks, txs
        self.backend, self.validation = backend, validation
        self.software_validators = software_validators
        self.app, self.metrics_port = app, metrics_port
        # This process's accel configuration (accel.toml, ACCEL_*), then the flags, written into
        # every validator's file, software-only ones too (a clearing one checks registration keys
        # on its backend): the validators start without ACCEL_* variables, which would override
        # their files. (A software network had no table: its --backend and --gpu-min-batch were
        # dropped and its validators ran whatever ACCEL_* they inherited.)
        accel = config.get()
        if backend:
            accel = replace(accel, backend=backend)
        if gpu_min_batch is not None:
            accel = replace(accel, gpu_min_batch=gpu_min_batch)
        load_file = None
        self.load, self.rpc_port = load, rpc_port
        # the network's oracles (their key files in the directory), for clients to sign marks with;
        # none where the built-in load signs them with the demo's
        self.oracles = write_oracles(self.dir) if app == "clearing" and load == "none" else []
        if app == "clearing" and load == "builtin":
            # The clients sign the market's transactions once, here; validators read them from the
            # file and only verify them, instead of each signing the whole stream again.
            load_file = self.dir / "load.bin"
            if load_stream is not None:
                shutil.copyfile(load_stream, load_file)
            else:
                write_stream(load_file, market_load(1, txs, CRASH_AFTER_BLOCKS).take((blocks + 5) * txs))
        self.configs = write_configs(self.dir, validators, txs, validation, delay_ms, base_timeout_ms, app, accel,
                                     metrics_port, sig_cache, load_file, software_validators, rpc_port, load,
                                     snapshot_every, accounts, self.oracles)
        self.sig_cache = sig_cache
        # Validators here share the machine's cores: OpenMP threads that spin after a parallel
        # region (libgomp's default) would take them from the other validators' Python work
        # (measured: execution twice as slow with 4 validators on 2 cores).
        self.env = {"OMP_WAIT_POLICY": "PASSIVE"} | {k: v for k, v in os.environ.items()
                                                     if accel is None or k not in ACCEL_VARIABLES}
        self.procs: dict[int, subprocess.Popen] = {}
        self.events: dict[int, list[dict]] = {i: [] for i in range(validators)}
        self._read: dict[int, int] = {i: 0 for i in range(validators)}

    def start(self, i: int) -> None:
        log = open(self.dir / f"node{i}.log", "a")
        # Its own session (a terminal's Ctrl-C reaches this launcher, which stops it in order), and
        # --exit-with-parent: it stops by itself if this process dies without stopping it.
        self.procs[i] = subprocess.Popen([sys.executable, "-m", "accel.cli", "node", "--config", str(self.configs[i]),
                                          "--exit-with-parent", str(os.getpid())],
                                         stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        log.close()

    def rpc_urls(self) -> list[str]:
        """Each validator's client API (rpc_port given)."""
        from .node import NodeConfig
        return ["http://%s:%d" % NodeConfig.load(c).rpc for c in self.configs]

    def kill(self, i: int) -> None:
        os.killpg(self.procs[i].pid, signal.SIGKILL)
        self.procs[i].wait()

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 5
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def poll_events(self) -> None:
        for i in range(self.validators):
            path = self.dir / f"node{i}.events.jsonl"
            if not path.exists():
                continue
            with open(path) as fh:
                fh.seek(self._read[i])
                chunk = fh.read()
            complete = chunk[:chunk.rfind("\n") + 1]
            self._read[i] += len(complete.encode())
            self.events[i].extend(json.loads(line) for line in complete.splitlines() if line)

    def heights(self) -> list[int]:
        return [max((e["height"] for e in ev if e["kind"] == "committed"), default=0) for ev in self.events.values()]

    def run(self, kill_restart: bool = False, timeout_s: float = 600.0, progress=print) -> dict:
        """Runs until every validator committed `blocks`; SIGTERM or SIGINT raise Interrupted (a
        KeyboardInterrupt) after the validators stopped."""
        with stopping_on_signals():
            return self._run(kill_restart, timeout_s, progress)

    def _run(self, kill_restart: bool, timeout_s: float, progress) -> dict:
        t0 = time.time()
        for i in range(self.validators):
            self.start(i)
        if self.metrics_port is not None:
            progress(f"metrics: http://127.0.0.1:{self.metrics_port}/metrics .. "
                     f"http://127.0.0.1:{self.metrics_port + self.validators - 1}/metrics")
        killed = restarted = False
        last = ""
        try:
            while True:
                time.sleep(0.25)
                self.poll_events()
                h = self.heights()
                line = f"[{time.time() - t0:6.1f} s] committed heights: " + " ".join(f"v{i}={x}" for i, x in enumerate(h))
                if line[12:] != last:
                    progress(line)
                    last = line[12:]
                for i, p in self.procs.items():
                    if p.poll() is not None and not (killed and i == 1 and not restarted):
                        raise RuntimeError(f"validator {i} exited with status {p.returncode}; see {self.dir}/node{i}.log")
                if kill_restart and not killed and min(h) >= self.blocks // 2:
                    progress("killing validator 1 with SIGKILL")
                    self.kill(1)
                    killed, kill_at = True, time.time()
                if killed and not restarted and time.time() - kill_at > 1.0:
                    progress("restarting validator 1")
                    self.start(1)
                    restarted = True
                if min(h) >= self.blocks and (not kill_restart or restarted):
                    break
                if time.time() - t0 > timeout_s:
                    raise RuntimeError(f"timed out after {timeout_s:.0f} s at heights {h}")
        finally:
            self.stop()
        self.poll_events()
        return self.report(t0)

    def report(self, t0: float) -> dict:
        """Chains from each validator's store (what it committed durably: a validator killed
        between its store and its events file still shows the block), times from the events.
        A block's validation_ms comes from a validator of validator 0's mode; in a mixed network
        software_validation_ms comes from a software-only one."""
        committed, proposed = {}, {}
        timings: dict[str, dict] = {mode: {} for mode in set(self.modes)}
        for i, ev in self.events.items():
            for e in ev:
                if e["kind"] == "committed":
                    committed[e["block_hash"]] = min(committed.get(e["block_hash"], e["at"]), e["at"])
                    if e["validation_ms"]:
                        timings[self.modes[i]].setdefault(e["height"], (e["txs"], e["validation_ms"]))
                elif e["kind"] == "proposed":
                    proposed.setdefault(e["block_hash"], e["at"])
        chains = {}
        for i in range(self.validators):
            store = Store(self.dir / f"node{i}" / "validator.db")
            chains[str(i)] = [{"height": p.block.height, "block_hash": p.block.id.hex(),
                               "state_root": p.block.state_root.hex()} for p in store.history()]
            store.close()
        longest = max(chains.values(), key=len)
        blocks = []
        for entry in longest:
            h, bh = entry["height"], entry["block_hash"]
            txs, ms = timings[self.modes[0]].get(h, (None, {}))
            block = {"height": h, "txs": txs, "validation_ms": ms,
                     "finality_ms": (committed[bh] - proposed[bh]) * 1e3 if bh in proposed and bh in committed
                     else None,
                     "committed_ms": (committed[bh] - t0) * 1e3 if bh in committed else None}
            if len(timings) > 1:
                block["software_validation_ms"] = timings["software"].get(h, (None, {}))[1]
            blocks.append(block)
        return {"validators": self.validators, "app": self.app, "backend": self.backend or "configured",
                "validation": self.modes[0], "software_validators": self.modes.count("software"),
                "validation_modes": {str(i): mode for i, mode in enumerate(self.modes)},
                "txs_per_block": self.txs, "sig_cache": self.sig_cache, "directory": str(self.dir),
                "chains": chains, "blocks": blocks}


class stopping_on_signals:
    """Within it, SIGTERM, SIGINT and SIGHUP (the terminal or ssh session closed) raise Interrupted
    in the main thread (so `finally` blocks stop what was started); the previous handlers come
    back after it. SIGHUP killed the launcher outright before: its validators were left to notice
    their parent gone, nothing said why it stopped."""

    def __enter__(self):
        self.old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self.old[sig] = signal.signal(sig, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise Interrupted(signum)

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        return False


_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


def _check_host(host: str) -> None:
    """A host name, or an IPv4 or IPv6 address without brackets or port (--port and the other
    flags set the ports): "10.0.0.1:26700" would have been written as the host "10.0.0.1:26700"."""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if host.startswith("[") and host.endswith("]"):
        raise ValueError(f"host {host!r}: give an IPv6 address without brackets, e.g. {host[1:-1]}")
    if re.fullmatch(r"[^:]+:\d+", host):
        raise ValueError(f"host {host!r}: give the host without a port ({host.rsplit(':', 1)[0]}); --port, "
                         "--rpc-port and --metrics-port set the ports")
    if not _HOSTNAME.fullmatch(host):
        raise ValueError(f"host {host!r} is neither a host name nor an IP address")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def write_network(directory: Path, hosts: list[str], port: int = 26700, rpc_port: int | None = 26657,
                  metrics_port: int | None = 9464, data_root: str = "/var/lib/accel-validator",
                  listen_on_address: bool = False, app: str = "clearing", validation: str = "accel",
                  txs: int = 1000, base_timeout_ms: float = 1000.0, load: str = "none",
                  chain_id: int | None = None, oracles: int | None = None,
                  oracle_quorum: int | None = None) -> list[Path]:
    """`accel testnet`: the files of a network of len(hosts) validators on other machines, as
    `cometbft testnet` writes them: node<i>.toml for the validator on hosts[i] (its secret seed
    inside, mode 0600), every peer at host:port, the client API and metrics on their ports, data
    under data_root/node<i>, and network.json (keys, addresses, API URLs: nothing secret).
    Validator i binds 0.0.0.0 (listen_on_address: its own host, for several on one machine).
    A clearing network with load = "none" gets `oracles` new oracles (None: ORACLE_COUNT), any
    `oracle_quorum` of whom sign a mark (None: ORACLE_QUORUM, or all of them if fewer): their key
    files oracle<j>.json (mode 0600, for whoever runs each oracle), their public keys and quorum
    in every validator's file.
    chain_id (clearing): the network's, drawn at random when None, so that transactions signed for
    this network are refused on any other sharing its clients' keys."""
    if len(hosts) < 4:
        raise ValueError(f"{len(hosts)} hosts: BFT needs n = 3f + 1 >= 4 validators")
    for host in hosts:
        _check_host(host)
    from .node import host_key, unspecified
    for host in hosts:
        if unspecified(host):
            raise ValueError(f"host {host!r}: give each validator's host as the others reach it; 0.0.0.0 or :: "
                             "would have every peer dial its own machine")
    ipv6 = any(":" in h for h in hosts)
    same = {}
    for host in hosts:  # one address however it is spelt: "::1" and "0::1", "127.1" and "127.0.0.1", "A" and "a."
        same.setdefault(host_key(host), []).append(host)
    twice = next((names for names in same.values() if len(names) > 1), None)
    if twice:
        raise ValueError(f"two validators at the same host:port ({' and '.join(twice[:2])}, port {port})")
    named = {"--port (peers)": port, "--rpc-port": rpc_port, "--metrics-port": metrics_port}
    for name, value in named.items():
        if value is not None and not (isinstance(value, int) and 1 <= value <= 65535):
            raise ValueError(f"{name} {value!r} is not a TCP port (1..65535)")
    used = [(name, value) for name, value in named.items() if value is not None]
    for i, (a, pa) in enumerate(used):
        for b, pb in used[i + 1:]:
            if pa == pb:
                raise ValueError(f"{a} and {b} are both {pa}: each validator binds them on one host")
    if not data_root or any(ord(c) < 0x20 or ord(c) == 0x7F for c in data_root):
        raise ValueError(f"--data-root {data_root!r}: give a directory (no control characters); validator i "
                         "keeps its store under DATA_ROOT/node<i>")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"--out {directory}: a file, not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    taken = sorted(p.name for p in [*directory.glob("node*.toml"), *directory.glob("oracle*.json")])
    if taken:
        raise ValueError(f"{directory} already holds {', '.join(taken[:2])}: not overwriting validators' or "
                         "oracles' keys")
    if app != "clearing" and chain_id is not None:
        raise ValueError(f"--chain-id {chain_id}: the clearing app's (transactions of --app {app} carry none)")
    if app == "clearing" and chain_id is None:
        chain_id = int.from_bytes(os.urandom(4), "big")
    own_oracles = app == "clearing" and load == "none"
    for name, value in (("--oracles", oracles), ("--oracle-quorum", oracle_quorum)):
        if value is not None and not own_oracles:
            raise ValueError(f"{name} {value}: only a clearing network with --load none has oracles of its own "
                             "(the built-in load signs its marks with the demo's)")
        if value is not None and not (isinstance(value, int) and 1 <= value <= 255):
            raise ValueError(f"{name} {value!r}: give 1..255 (a mark lists at most 255 signers)")
    count = ORACLE_COUNT if oracles is None else oracles
    quorum = min(ORACLE_QUORUM, count) if oracle_quorum is None else oracle_quorum
    if quorum > count:
        raise ValueError(f"--oracle-quorum {quorum}: more than the {count} oracles (--oracles)")
    seeds = [os.urandom(32) for _ in hosts]
    keys = [bytes(SigningKey(s).verify_key).hex() for s in seeds]
    addresses = [f"{h}:{port}" for h in hosts]
    # a network that only clients feed paces its empty blocks (an idle one committed them as
    # fast as it could: ~20 GB of store, events and log a day per validator); below half the
    # view timeout, which the node requires
    idle = min(500.0, 0.4 * base_timeout_ms) if load == "none" else 0.0
    oracles = write_oracles(directory, count=count) if own_oracles else []
    paths = []
    for i, (host, seed) in enumerate(zip(hosts, seeds)):
        # an IPv6 network binds "::" (both families on Linux): "0.0.0.0" takes IPv4 only, and
        # peers dialling the IPv6 addresses would never reach it
        bind = host if listen_on_address else "::" if ipv6 else "0.0.0.0"
        data = f"{data_root}/node{i}"
        text = ("# accel testnet: validator %d of %d, on %s. Keep it secret (seed). docs/OPERATOR.md\n" % (i, len(hosts), host)
                + "[node]\n"
                f"index = {i}\nlisten = \"{bind}:{port}\"\nseed = \"{seed.hex()}\"\n"
                f"data_dir = {toml_string(data)}\nevents = {toml_string(data + '/events.jsonl')}\napp = \"{app}\"\n"
                f"validation = \"{validation}\"\ntxs_per_block = {txs}\nbase_timeout_ms = {base_timeout_ms}\n"
                f"load = \"{load}\"\nlog_format = \"json\"\n"
                + (f"chain_id = {chain_id}\n" if app == "clearing" else "")
                + (f"empty_block_interval_ms = {idle}\n" if idle else "") + "\n"
                "[network]\n"
                f"keys = {json.dumps(keys)}\naddresses = {json.dumps(addresses)}\n"
                + (oracle_table(oracles, quorum) if oracles else ""))
        if rpc_port is not None:
            text += f"\n[rpc]\nlisten = \"{bind}:{rpc_port}\"\n"
        if metrics_port is not None:
            text += f"\n[metrics]\nlisten = \"{bind}:{metrics_port}\"\n"
        path = directory / f"node{i}.toml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        paths.append(path)
    (directory / "network.json").write_text(json.dumps({
        "chain_id": chain_id if app == "clearing" else None,
        "oracles": [{"index": j, "public_key": bytes(k.verify_key).hex(), "key_file": f"oracle{j}.json"}
                    for j, k in enumerate(oracles)],
        "oracle_quorum": quorum if oracles else None,
        "validators": [{"index": i, "host": h, "public_key": k, "address": a,
                        "rpc": f"http://{_url_host(h)}:{rpc_port}" if rpc_port is not None else None,
                        "metrics": f"http://{_url_host(h)}:{metrics_port}/metrics" if metrics_port is not None
                        else None}
                       for i, (h, k, a) in enumerate(zip(hosts, keys, addresses))]}, indent=1) + "\n")
    return paths
