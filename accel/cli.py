"""The `accel` command. Errors print one line and exit with status 2; `check` exits 1 when this
validator may not start."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from . import config, merkle, readiness
from .backends import Backend, BackendUnavailable, KernelError, get_backend, probe, run_apart


def _version() -> str:
    try:
        return metadata.version("accel-verify")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _use_config(path: str | None):
    """--config FILE: the configuration `accel node --config FILE` runs (config.for_file), installed
    for this command, with the file checked as the node checks it (returned: its NodeConfig); a
    file without [node] is an accel.toml, read as $ACCEL_CONFIG would be (an unknown table is an
    error). check, info and build-cuda read only accel.toml / $ACCEL_CONFIG before: a validator
    file's backend = "cuda" passed `accel check` on the C fallback; and a misspelt [acel] table
    was taken for no [accel] table at all (review s23)."""
    if path is None:
        return None
    if "node" not in config.read_toml(path)[1]:
        config.use(config.load(path))
        return None
    from consensus.node import NodeConfig
    node = NodeConfig.load(path)
    config.use(node.accel)
    return node


def cmd_info(args) -> int:
    _use_config(args.config)
    cfg = config.get()
    found = probe()
    auto = get_backend("auto")
    cuda = found.get("cuda")
    modules = _cuda_modules(cuda) if isinstance(cuda, Backend) else None
    if args.json:
        report = {"configured_backend": cfg.backend, "auto_picks": auto.name, "backends": {
            name: ({"available": True, "gpu": b.is_gpu, "device": b.device} if isinstance(b, Backend)
                   else {"available": False, "reason": str(b)}) for name, b in found.items()}}
        if modules:
            report["backends"]["cuda"]["modules"] = modules
        print(json.dumps(report, indent=1))
        return 0
    print(f"configured backend: {cfg.backend}")
    for name, b in found.items():
        if isinstance(b, Backend):
            print(f"  {name:7s} available  {'GPU' if b.is_gpu else 'CPU'}  {b.device}")
        else:
            print(f"  {name:7s} missing    {b}")
    if modules:
        missing = modules["compiled_by_nvrtc_at_first_use"]
        print(f"  cuda modules for {modules['arch']} in {modules['cubin_dir']}: "
              + ("every one prebuilt" if not missing else f"no current cubin for {', '.join(missing)} "
                 "(NVRTC compiles each at first use, about a minute for Ed25519; `accel build-cuda` prebuilds)"))
    print(f"auto picks: {auto.name}")
    print("(`accel check` says whether the configured backend can run; `info` only lists)")
    return 0


def _cuda_modules(b) -> dict:
    """Where the CUDA backend's modules will come from: prebuilt cubins, or NVRTC at first use."""
    from .backends import cubins
    return {"arch": b.arch, "cubin_dir": b.cubin_dir,
            "compiled_by_nvrtc_at_first_use": cubins.stale(b.cubin_dir, b.arch)}


def cmd_check(args) -> int:
    node = _use_config(args.config)
    if node is not None:  # what `accel node` refuses at start (a seed that is not keys[index]) got
        from consensus.node import check_keys  # "ready: this validator may start" (review s15)
        check_keys(node)
    device, results = readiness.check(args.backend)
    ok = all(r.ok for r in results)
    if args.json:
        print(json.dumps({"backend": device, "ready": ok,
                          "kernels": [{"kernels": r.kernels, "ok": r.ok, "detail": r.detail} for r in results]},
                         indent=1))
    else:
        print(f"backend {device}")
        for r in results:
            print(f"  {'ok  ' if r.ok else 'FAIL'}  {r.kernels:38s} {r.detail}")
        print("ready: this validator may start" if ok else "NOT READY: this validator must not start on this backend")
    return 0 if ok else 1


def cmd_merkle(args) -> int:
    from consensus.node import memory_limit  # the machine's, or its container's limit where lower
    limit = memory_limit()
    if limit and args.leaves * 96 > limit[0]:  # the leaves, the level above them and a backend's copy
        raise ValueError(f"--leaves {args.leaves}: about {args.leaves * 96 / 2**30:,.1f} GiB of memory; "
                         f"{limit[1]} {limit[0] / 2**30:,.1f} GiB")
    rng = np.random.default_rng(args.seed)
    leaves = rng.integers(0, 256, size=(args.leaves, 32), dtype=np.uint8)
    rows, roots = [], {}
    # Each backend created just before its run, the C fallback's first: PoCL (OpenCL on a CPU) keeps
    # its threads once started, and they must not compete with the C fallback's timed run.
    for name in ("cpu", "opencl", "cuda"):
        try:
            b = get_backend(name)
        except BackendUnavailable as exc:
            rows.append({"backend": name, "skipped": str(exc)})
            continue
        merkle.merkle_root(leaves[:2], backend=b)  # compile / warm up outside the timing
        t0 = time.perf_counter()
        roots[name] = merkle.merkle_root(leaves, backend=b)
        dt = time.perf_counter() - t0
        rows.append({"backend": name, "ms": dt * 1e3, "leaves_per_s": args.leaves / dt, "root": roots[name].hex()})
    agree = len(set(roots.values())) <= 1
    if args.json:
        print(json.dumps({"leaves": args.leaves, "seed": args.seed, "agree": agree, "runs": rows}, indent=1))
    else:
        print(f"Merkle root over {args.leaves:,} random 32-byte leaves (seed {args.seed})")
        for r in rows:
            if "skipped" in r:
                print(f"  {r['backend']:7s} skipped: {r['skipped']}")
            else:
                print(f"  {r['backend']:7s} {r['ms']:9.1f} ms  {r['leaves_per_s'] / 1e6:7.2f} M leaves/s  "
                      f"root {r['root'][:16]}...")
        print(f"all {len(roots)} backends agree" if agree else "ERROR: backends disagree on the root")
    return 0 if agree else 1


# Its last line: why the backend cannot run, empty when it can (a driver may print before it).
_UNAVAILABLE = """
from accel.backends import BackendUnavailable, get_backend
try:
    get_backend(sys.argv[1])
    print()
except BackendUnavailable as exc:
    print((str(exc) or "unavailable").splitlines()[0])
"""


def _runnable_modes(modes) -> None:
    """Each accel backend among modes (or "software") can run here: checked before a run of
    minutes (a bench's --modes), each in a child process: tried here, OpenCL started PoCL, whose
    threads then competed with the C fallback that the bench times in this process."""
    for mode in modes:
        if mode == "software":
            continue
        done = run_apart(_UNAVAILABLE, mode, timeout=600)
        reason = ("trying it took over 600 s" if done is None
                  else (done.stdout.splitlines() or ["no answer"])[-1] if done.returncode == 0
                  else (done.stderr.strip().splitlines() or [f"status {done.returncode}"])[-1])
        if reason:
            raise ValueError(f"--modes: {mode} cannot run here: {reason}")


def _report_path(path: str | None, flag: str = "--report") -> None:
    """--report's file (or another output, flag) can be written: checked before a run of minutes,
    whose results were lost when only the write at its end found no such directory."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"{flag} {path}: a directory; give the {flag.lstrip('-')} file's name")
    parent = target.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: no directory {parent} to write the {flag.lstrip('-')} in")
    if not os.access(parent, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise ValueError(f"{flag} {path}: not writable")


def _out_dir(path: Path, what: str) -> None:
    """A directory to write into, made if missing, checked before the work: build-cuda's --out of a
    file or of /proc/nope said only "[Errno 17] File exists" after it had started (review s23)."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path}: not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot make the directory: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: not writable")


def comma_list(parse):
    """An argparse type: a comma-separated list, each item read by parse (an argparse type), none
    twice (bench/consensus_sweep.py, bench/state_scale.py)."""
    def read(text: str) -> list:
        items = [item.strip() for item in text.split(",")]
        values = []
        for item in items:
            try:
                values.append(parse(item))
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentTypeError(f"{item!r}: {exc}") from None
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"{text!r}: a value given twice")
        return values
    return read


def _block_size(app: str, flag: str, n: int) -> None:
    """A clearing block longer than the network's rule is refused by every validator: say so before
    a run whose block would not validate, or a network whose proposers would cap it silently."""
    from consensus.apps.clearing_app import MAX_BLOCK_TXS
    from consensus.node import KV_MAX_TXS
    if app == "clearing" and n > MAX_BLOCK_TXS:
        raise ValueError(f"{flag} {n}: a clearing block holds at most {MAX_BLOCK_TXS:,} transactions "
                         "(clearing_app.MAX_BLOCK_TXS, a rule of the network)")
    if app == "kv" and n > KV_MAX_TXS:  # validate-bench --app kv --txs 10**11 built it until memory ran out
        raise ValueError(f"{flag} {n}: a key-value block holds at most {KV_MAX_TXS:,} transactions "
                         "(node.KV_MAX_TXS, a rule of the network)")


def _accounts(n: int) -> None:
    """--accounts that this machine's memory cannot hold: one line before minutes of building."""
    from consensus.node import accounts_fit
    too_many = accounts_fit(n)
    if too_many:
        raise ValueError(f"--accounts {n}: {too_many}")


def cmd_validate_bench(args) -> int:
    from consensus.bench import validate_bench
    if args.backend and args.validation == "software":
        raise ValueError("--backend applies to --validation accel only")
    _block_size(args.app, "--txs", args.txs)
    _accounts(args.accounts)
    _report_path(args.report)
    result = validate_bench(args.txs, args.validation, args.backend, args.runs, args.app, args.sig_cache,
                            args.accounts)
    result["backend"] = get_backend(args.backend).name if args.validation == "accel" else "software"
    if args.report:
        with open(args.report, "w") as fh:
            json.dump(result, fh, indent=1)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        ms = result["validation_ms"]
        print(f"validate() of a {args.txs:,}-transaction {args.app} block, {result['backend']}, "
              f"median of {args.runs}" + (f", {result['accounts']:,} accounts in state:" if "accounts" in result else ":"))
        print("  " + "  ".join(f"{s} {ms[s]:.2f} ms" for s in ms))
        if "propose_ms" in result:
            print(f"  propose() of the same block: {result['propose_ms']:.2f} ms; the parent state as a snapshot: "
                  f"{result['snapshot_mb']:.1f} MB, written in {result['snapshot_s']:.2f} s, restored and checked "
                  f"against its root in {result['restore_s']:.2f} s")
    return 0


def cmd_node(args) -> int:
    import logging

    from consensus.node import run_node
    if args.exit_with_parent is not None and args.exit_with_parent != os.getppid():
        # it would stop half a second after starting, with the reason only in its log
        raise ValueError(f"--exit-with-parent {args.exit_with_parent}: this process's parent is pid {os.getppid()}; "
                         "give the launcher's own pid (or leave the flag out)")
    from consensus.node import configure_logging
    # the file's log format from the first record on: a warning raised while the file loads
    # ([accel] threads above the cores) came out in text ahead of a JSON log, a line no shipper
    # parses (run_node checks the file and configures the same again)
    log_format, index = "text", None
    try:
        _, data = config.read_toml(args.config)
        node = data.get("node")
        if isinstance(node, dict):
            log_format = "json" if node.get("log_format") == "json" else "text"
            index = node["index"] if type(node.get("index")) is int else None
    except config.ConfigError:
        pass  # run_node says what is wrong, in one line
    configure_logging(index, log_format)

    def stopped(text: str, status: int) -> int:
        """Why the validator stopped, in the log's format: in a JSON log, a plain line after the
        records was the one line a log shipper dropped (review s22)."""
        if log_format == "json":
            logging.getLogger("consensus.node").error("%s", text, extra={"exit_status": status})
        else:
            print(text, file=sys.stderr)
        return status
    try:
        return run_node(args.config, args.exit_with_parent)
    except config.ConfigError as exc:
        return stopped(f"accel: error: {exc}", 2)  # status 2: the file must change first (the unit does not restart it)
    except (BackendUnavailable, KernelError, ValueError, TypeError, OSError) as exc:
        # a failure of the running validator, not of its file: status 1, which the unit restarts
        # (status 2 kept a validator down for good as a configuration error: review s15)
        return stopped(f"accel: error: {exc}", 1)
    except SystemExit as exc:  # run_node's one line (a port taken, a backend that cannot run): status 1
        if isinstance(exc.code, str):
            return stopped(exc.code, 1)
        raise


def cmd_localnet(args) -> int:
    from consensus.localnet import Localnet, launch_limit
    if args.validators < 4:
        raise ValueError(f"--validators {args.validators}: BFT needs n = 3f + 1 >= 4")
    too_many = launch_limit(args.validators)
    if too_many:
        raise ValueError(f"--validators {args.validators}: {too_many}")
    k = args.software_validators
    if k and args.validation != "accel":
        raise ValueError(f"--software-validators {k} mixes software-only validators into an accel network; "
                         "with --validation software every validator already is one")
    if k > args.validators:
        raise ValueError(f"--software-validators {k}: there are only {args.validators} validators")
    backend = None
    if args.validation == "accel" or args.backend:  # software: the backend its clearing key checks run on
        backend = get_backend(args.backend).name  # fails here, before any process starts
    if args.accounts and args.app != "clearing":
        raise ValueError("--accounts sizes the clearing app's genesis (--app clearing)")
    if args.no_sig_cache and args.app != "clearing":
        raise ValueError("--no-sig-cache turns off the clearing app's signature cache (--app clearing)")
    _block_size(args.app, "--txs-per-block", args.txs_per_block)
    _accounts(args.accounts)
    _report_path(args.report)
    if args.dir and os.path.exists(args.dir) and not os.path.isdir(args.dir):  # (a bare "[Errno 17] File exists")
        raise ValueError(f"--dir {args.dir}: not a directory")
    _port_ranges(args.validators, **{"metrics-port": args.metrics_port, "rpc-port": args.rpc_port})
    try:  # building the network signs the load first (seconds): Ctrl-C there stops cleanly too
        net = Localnet(args.validators, args.blocks, args.txs_per_block, backend, args.validation, args.delay_ms,
                       args.dir, args.base_timeout_ms, args.app, args.gpu_min_batch, args.metrics_port,
                       not args.no_sig_cache, k, args.rpc_port or 0, accounts=args.accounts)
        software = [i for i, mode in enumerate(net.modes) if mode == "software"]
        mix = (f"; validators {', '.join(map(str, software))} software-only"
               if software and len(software) < args.validators
               else "; every validator software-only" if software and args.validation == "accel" else "")
        print(f"{args.validators} validators in {net.dir} ({args.validation} validation"
              f"{', backend ' + backend if backend else ''}{mix}); Ctrl-C stops them", file=sys.stderr)
        print(f"client API (accel tx --node ...): {','.join(net.rpc_urls())}", file=sys.stderr)
        report = net.run(args.kill_restart, args.timeout, progress=lambda line: print(line, file=sys.stderr))
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", 2)
        print(f"stopped ({getattr(exc, 'args', ('SIGINT',))[0] or 'SIGINT'}); every validator it started has exited",
              file=sys.stderr)
        return 128 + signum
    except RuntimeError as exc:
        print(f"accel: error: {exc}", file=sys.stderr)
        return 1
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1))
    chains = list(report["chains"].values())
    shortest = min(len(c) for c in chains)
    same = all(c[:shortest] == chains[0][:shortest] for c in chains)
    totals = sorted(b["validation_ms"].get("total", 0.0) for b in report["blocks"] if b["validation_ms"])
    print(f"every validator committed {shortest} or more blocks; chains {'agree' if same else 'DISAGREE'}; "
          f"median validation {totals[len(totals) // 2] if totals else float('nan'):.1f} ms per block")
    return 0 if same else 1


def cmd_testnet(args) -> int:
    from consensus.localnet import write_network
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    _block_size(args.app, "--txs-per-block", args.txs_per_block)
    paths = write_network(Path(args.out), hosts, args.port, None if args.no_rpc else args.rpc_port,
                          None if args.no_metrics else args.metrics_port, args.data_root, args.listen_on_address,
                          args.app, args.validation, args.txs_per_block, args.base_timeout_ms, args.load,
                          args.chain_id, args.oracles, args.oracle_quorum)
    for i, (host, path) in enumerate(zip(hosts, paths)):
        print(f"validator {i} on {host}: {path} (copy it there; it holds the validator's secret seed)")
    network = json.loads((Path(args.out) / "network.json").read_text())
    oracles = network["oracles"]
    if oracles:
        print(f"oracle key files (a quorum of {network['oracle_quorum']} signs each mark: "
              "accel tx mark --oracle FILE ...): "
              f"{', '.join(str(Path(args.out) / o['key_file']) for o in oracles)} (give each to whoever runs "
              "that oracle, never to a validator's host)")
    print(f"public keys, addresses and API URLs: {Path(args.out) / 'network.json'}; "
          "then on each host: accel node --config node<i>.toml (docs/OPERATOR.md)")
    return 0


def cmd_keygen(args) -> int:
    from consensus.client import write_key
    key = write_key(args.out, force=args.force)
    print(json.dumps({"public_key": bytes(key.verify_key).hex(), "file": str(args.out)}))
    return 0


def cmd_tx(args) -> int:
    """Build, sign and submit one clearing transaction, or ask about one (consensus/client.py);
    a validator that refuses the request or cannot be reached: one line, exit status 1."""
    from consensus import client as cl
    try:
        return _tx(args, cl)
    except cl.RpcError as exc:
        print(f"accel: error: {exc}", file=sys.stderr)
        return 1


def _chain_id(text: str) -> int:
    if not re.fullmatch(r"\d{1,10}", text) or int(text) >= 2**32:
        raise argparse.ArgumentTypeError(f"{text!r}: an integer 0..{2**32 - 1}")
    return int(text)


def _tx(args, cl) -> int:
    c = cl.Client(args.node.split(","), timeout=args.http_timeout)
    if args.op == "status":
        print(json.dumps(c.tx(args.hash.removeprefix("0x")), indent=1))
        return 0
    if args.op == "account":
        if Path(args.key).exists():
            key = cl.read_key(args.key).verify_key
        elif re.fullmatch(r"(0x)?[0-9a-fA-F]{64}", args.key):
            key = args.key.removeprefix("0x")
        else:
            raise ValueError(f"account {args.key!r}: neither a key file nor a public key of 64 hex digits")
        answer = c.account(key)
        print(json.dumps(answer, indent=1))
        return 0 if "nonce" in answer else 1

    def nonce(key, given):
        return given if given is not None else c.next_nonce(key)

    def build(nonces: bool, chain: int):
        """The signed transaction; nonces False: with nonce 0 for those not given, so that every
        field is checked (amounts, prices, the same key twice, ...) before any request."""
        def n(key, given):
            return nonce(key, given) if nonces else given if given is not None else 0
        if args.op == "register":
            return cl.register(cl.read_key(args.key), chain)
        if args.op in ("deposit", "withdraw", "top-up"):
            key = cl.read_key(args.key)
            return getattr(cl, args.op.replace("-", "_"))(key, n(key, args.nonce), args.asset, cl.quanta(args.amount), chain)
        if args.op == "trade":
            buyer, seller = cl.read_key(args.buyer), cl.read_key(args.seller)
            return cl.trade(buyer, n(buyer, args.buyer_nonce), seller, n(seller, args.seller_nonce), args.series,
                            args.size, cl.quanta(args.price), chain)
        vols = {}  # mark
        for item in args.vol or ():
            series, _, vol = item.partition("=")
            if not (series.isascii() and series.isdigit()) or not vol:
                raise ValueError(f"--vol {item!r}: expected SERIES=VOL, e.g. 1=0.6")
            if int(series) in vols:  # the later one silently replaced the earlier
                raise ValueError(f"--vol {item!r}: series {int(series)} given twice")
            try:
                vols[int(series)] = float(vol)
            except ValueError:
                raise ValueError(f"--vol {item!r}: {vol!r} is not a number") from None
        return cl.mark([cl.read_key(k) for k in args.oracle], args.underlying, args.index, args.sequence,
                       args.timestamp if args.timestamp is not None else int(time.time()), vols, chain)
    tx = build(False, args.chain_id if args.chain_id is not None else 0)
    asks = args.op in ("deposit", "withdraw", "top-up", "trade") and None in (
        (args.nonce,) if args.op != "trade" else (args.buyer_nonce, args.seller_nonce))
    if asks or args.chain_id is None:  # the committed nonce(s) and the chain id, asked of the validator
        tx = build(asks, args.chain_id if args.chain_id is not None else c.chain_id())
    results = c.broadcast([tx])
    out = results[0]
    if out.get("refused_by"):  # pending where it was accepted: the refusals are those validators' own
        print(f"accel tx: accepted by {len(out['accepted_by'])} validator(s), refused by "
              + "; ".join(f"{url}: {reason}" for url, reason in out["refused_by"].items()), file=sys.stderr)
        # more than f refusals that a later try would not change: an honest validator among them
        # (a stale nonce, say), so it may never commit (one lagging validator's acceptance was
        # reported as success, exit 0)
        f = (len(c.urls) - 1) // 3
        final = [u for u, reason in out["refused_by"].items() if not reason.startswith("mempool full")]
        if len(final) > f:
            print(f"accel tx: refused by {len(final)} of the {len(out['accepted_by']) + len(out['refused_by'])} "
                  f"validators that answered, more than f = {f}: it may never commit", file=sys.stderr)
            print(json.dumps(out, indent=1))
            return 1
    if args.wait and out["accepted"]:
        out = out | {"height": c.wait_committed([out["hash"]], timeout=args.wait)[out["hash"]], "status": "committed"}
    print(json.dumps(out, indent=1))
    return 0 if out["accepted"] else 1


def _local_arch() -> str | None:
    """This machine's GPU architecture (sm_XY) as nvidia-smi reports it, without starting CUDA."""
    import subprocess
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return "sm_" + out[0].replace(".", "") if out and re.fullmatch(r"\d+\.\d+", out[0]) else None


def cmd_build_cuda(args) -> int:
    from .backends import cubins
    _use_config(args.config)
    archs = args.arch or [_local_arch()]
    if archs == [None]:
        raise ValueError("no NVIDIA GPU here to read the architecture from: name the target, "
                         "e.g. --arch sm_90 (H100, H200)")
    for arch in archs:
        if not re.fullmatch(r"sm_\d+a?", arch):
            raise ValueError(f"--arch {arch!r}: expected sm_<compute capability>, e.g. sm_90")
    out = Path(args.out or config.get().cuda_cubin_dir or cubins.default_dir())
    _out_dir(out, "--out" if args.out else "cuda_cubin_dir" if config.get().cuda_cubin_dir else "the cubin directory")
    defines = tuple(f"-D{d}" for d in args.define)
    known = sorted(set(cubins.kernel_modules().values()))
    for m in args.module or ():
        if m not in known:
            raise ValueError(f"--module {m!r}: not a kernel module; known: {', '.join(known)}")
    modules = args.module or known
    builds = [(m, defines) for m in modules]
    print(f"building {len(builds)} CUDA module(s) for {', '.join(archs)} into {out} (ptxas figures per kernel)",
          file=sys.stderr)
    started, report = time.perf_counter(), []

    def progress(module, defs, path, resources):
        print(f"  {module} {' '.join(defs)} -> {path.name}  ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
        for r in resources:
            print(f"      {r.kernel}: {r.registers} registers, "
                  f"{r.stack} B stack, {r.spill_stores}/{r.spill_loads} B spilled, {r.shared} B shared",
                  file=sys.stderr)
            report.append({"arch": path.name.split(".")[1], "module": module, "defines": list(defs),
                           **r.__dict__})

    for arch in archs:
        cubins.build_all(arch, out, builds, args.jobs, progress)
    if args.json:
        print(json.dumps(report, indent=1))
    return 0


def _at_least(minimum: int):
    """An argparse type: an integer of at least `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value
    return parse


_positive, _count = _at_least(1), _at_least(0)


def _port(text: str) -> int:
    """An argparse type: a TCP port, 1..65535."""
    value = _positive(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (1..65535)")
    return value


def _finite(positive: bool, unit: str = "seconds"):
    """An argparse type: a finite number, above 0 (positive) or 0 or more (NaN, inf and negative
    times were written into every validator's file, where timers misbehaved)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {unit}") from None
        if not (value > 0 if positive else value >= 0) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number of {unit}, "
                                             f"{'above 0' if positive else '0 or more'}, not {text}")
        return value
    return parse


_seconds = _finite(False)


def _port_ranges(validators: int, **bases) -> None:
    """Each named base port's range BASE..BASE+validators-1 fits in 1..65535, and no two overlap."""
    spans = {name: (base, base + validators - 1) for name, base in bases.items() if base}
    for name, (low, high) in spans.items():
        if high > 65535:
            raise ValueError(f"--{name} {low}: validator {validators - 1} would listen on {high}, past 65535")
    names = sorted(spans)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if spans[a][0] <= spans[b][1] and spans[b][0] <= spans[a][1]:
                raise ValueError(f"--{a} {spans[a][0]} and --{b} {spans[b][0]}: the {validators} validators' "
                                 "ports overlap; give ranges apart")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="accel", description="GPU-accelerated block validation for BFT validators: Ed25519 (ZIP-215), "
        "Merkle roots and option margin on CUDA, OpenCL or the C fallback, bit-identical on all.",
        epilog="Configuration: [accel] in accel.toml or $ACCEL_CONFIG, ACCEL_* variables (README).")
    ap.add_argument("--version", action="version", version=f"accel-verify {_version()}")
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")
    info = sub.add_parser("info", help="list the backends, their devices, and why the missing ones are missing",
                          description="List every backend and what `auto` picks. Exit status 0 whether or not "
                          "the configured backend can run: use `accel check` for that.")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.add_argument("--config", metavar="FILE", help="the [accel] table of this file, a validator's "
                    "(as `accel node --config FILE` reads it; default: accel.toml or $ACCEL_CONFIG)")
    info.set_defaults(fn=cmd_info)
    check = sub.add_parser("check", help="may this validator start? (exit 0 yes, 1 no)",
                           description="Load the configuration, start the configured backend (or --backend), "
                           "compile its kernels and compare each with known answers, bit for bit. Exit "
                           "status 0 when every kernel passes, 1 when any fails or the backend cannot start.")
    check.add_argument("--backend", choices=config.BACKENDS, help="check this backend instead of the configured one")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("--config", metavar="FILE", help="the [accel] table of this file, a validator's "
                    "(as `accel node --config FILE` reads it; default: accel.toml or $ACCEL_CONFIG)")
    check.set_defaults(fn=cmd_check)
    demo = sub.add_parser("merkle-demo", help="time a Merkle root on every available backend",
                          description="Merkle root over random 32-byte leaves on every backend, timed, with "
                          "the roots compared (exit 1 if they differ).")
    demo.add_argument("--leaves", type=_positive, default=1_000_000, help="number of leaves (default 1,000,000)")
    demo.add_argument("--seed", type=_count, default=1, help="random seed of the leaves (default 1)")
    demo.add_argument("--json", action="store_true", help="machine-readable output")
    demo.set_defaults(fn=cmd_merkle)
    vb = sub.add_parser("validate-bench", help="time one validator's validation of a block, by stage",
                        description="Build a valid block of signed transactions (key-value, or option trades and "
                        "oracle marks) and time validate() on it: signatures, transaction root, execution, margin "
                        "(clearing), state root (median of --runs).")
    vb.add_argument("--app", choices=["kv", "clearing"], default="clearing",
                    help="clearing (default): option trades (two signatures each) and oracle marks, "
                    "with every touched account margined; kv: signed transfers")
    vb.add_argument("--sig-cache", action="store_true",
                    help="clearing: the block's transactions are already verified in the mempool (default: "
                    "every signature checked)")
    vb.add_argument("--txs", type=_positive, default=10_000, help="transactions in the block (default 10,000)")
    vb.add_argument("--validation", choices=["accel", "software"], default="accel",
                    help="accel (the configured backend, or --backend) or software-only: PyNaCl and hashlib")
    vb.add_argument("--backend", choices=config.BACKENDS, help="backend for --validation accel")
    vb.add_argument("--accounts", type=_count, default=0,
                    help="clearing: this many more funded accounts holding positions in the state, written "
                    "directly (default 0: the block's 1,000 traders only)")
    vb.add_argument("--runs", type=_positive, default=5, help="timed runs after one warm-up (default 5)")
    vb.add_argument("--report", help="write the JSON result here")
    vb.add_argument("--json", action="store_true", help="machine-readable output")
    vb.set_defaults(fn=cmd_validate_bench)
    node = sub.add_parser("node", help="run one validator (its file written by accel testnet or localnet)",
                          description="Run one validator process: consensus over TCP, SQLite store, built-in "
                          "load generator. Checks the accel backend first and refuses to start if it cannot run.",
                          epilog="Every key of the validator's file: docs/OPERATOR.md.")
    node.add_argument("--config", required=True, help="the validator's TOML file ([node], [network], optional "
                      "[accel], [metrics] and [rpc]); relative paths in it are read from its directory")
    node.add_argument("--exit-with-parent", type=int, metavar="PID",
                      help="stop when the parent process is no longer PID (a launcher such as localnet died)")
    node.set_defaults(fn=cmd_node)
    tn = sub.add_parser("testnet", help="write the configs and keys of a validator network on several hosts",
                        description="Write node<i>.toml for a validator on each host (its own secret seed, every "
                        "validator's public key and address, the client API and metrics ports) and network.json, "
                        "as `cometbft testnet` does. Copy each file to its host and run `accel node --config`.")
    tn.add_argument("--hosts", required=True, help="comma-separated host names or addresses, one per validator "
                    "(3f+1 of them), as the others reach it")
    tn.add_argument("--out", required=True, help="directory for the files (must not hold node*.toml already)")
    tn.add_argument("--port", type=_port, default=26700, help="peer port on every host (default 26700)")
    tn.add_argument("--rpc-port", type=_port, default=26657, help="client API port (default 26657)")
    tn.add_argument("--metrics-port", type=_port, default=9464, help="Prometheus port (default 9464)")
    tn.add_argument("--no-rpc", action="store_true", help="no client API")
    tn.add_argument("--no-metrics", action="store_true", help="no metrics endpoint")
    tn.add_argument("--data-root", default="/var/lib/accel-validator",
                    help="validator i keeps its store under DATA_ROOT/node<i> (default /var/lib/accel-validator)")
    tn.add_argument("--listen-on-address", action="store_true",
                    help="bind each host's own address instead of 0.0.0.0 (several validators on one machine, "
                    "e.g. 127.0.0.1..127.0.0.4)")
    tn.add_argument("--app", choices=["kv", "clearing"], default="clearing")
    tn.add_argument("--validation", choices=["accel", "software"], default="accel")
    tn.add_argument("--txs-per-block", type=_positive, default=1000)
    tn.add_argument("--base-timeout-ms", type=_finite(True, "milliseconds"), default=1000.0)
    tn.add_argument("--load", choices=["none", "builtin"], default="none",
                    help="none (default): only client transactions; builtin: the market's generated load")
    tn.add_argument("--chain-id", type=_chain_id, metavar="ID",
                    help="clearing: the network's chain id, signed into every transaction (default: drawn at random)")
    tn.add_argument("--oracles", type=_positive, metavar="M",
                    help="clearing, --load none: how many oracle keys to write (default 3)")
    tn.add_argument("--oracle-quorum", type=_positive, metavar="Q",
                    help="clearing, --load none: how many of the oracles sign each mark (default 2, at most M)")
    tn.set_defaults(fn=cmd_testnet)
    kg = sub.add_parser("keygen", help="write a new Ed25519 key file for the client API",
                        description="Write a new Ed25519 signing key ({\"seed\", \"public_key\"} in hex, mode 0600) "
                        "for `accel tx`; prints the public key. An existing file is kept unless --force.")
    kg.add_argument("--out", required=True, help="the key file to write")
    kg.add_argument("--force", action="store_true", help="replace an existing key file or symbolic link (never a "
                    "device, FIFO or socket)")
    kg.set_defaults(fn=cmd_keygen)
    tx = sub.add_parser("tx", help="sign and submit a clearing transaction to validators, or look one up",
                        description="Build a clearing transaction, sign it with the key files given, submit it "
                        "through the validators' client API ([rpc] listen) and print the mempool's verdict and "
                        "its hash; or print a transaction's status or an account's state. Amounts and prices are "
                        "in units (1e-8 is the smallest); a nonce not given is the account's committed nonce.")
    tx.add_argument("--node", default="http://127.0.0.1:26657",
                    help="validator API URL(s), comma-separated: the transaction goes to each (default "
                    "http://127.0.0.1:26657)")
    tx.add_argument("--wait", type=_seconds, default=0.0, metavar="SECONDS",
                    help="wait this long for the transaction to commit, and print its height")
    tx.add_argument("--chain-id", type=_chain_id, metavar="ID",
                    help="the network's chain id, signed into the transaction (default: the one f + 1 of the "
                    "validators name in /status, more than any other)")
    tx.add_argument("--http-timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    ops = tx.add_subparsers(dest="op", metavar="OP", required=True)
    r = ops.add_parser("register", help="register the key's account")
    r.add_argument("--key", required=True, help="key file (accel keygen)")
    for name, what in (("deposit", "deposit collateral"), ("withdraw", "withdraw collateral"),
                       ("top-up", "pay collateral into the asset's insurance fund (lifts a fund floor's reduce-only)")):
        d = ops.add_parser(name, help=what)
        d.add_argument("--key", required=True, help="key file (accel keygen)")
        d.add_argument("--asset", default="USD", help="USD (default), BTC, ETH")
        d.add_argument("--amount", required=True, help="in units, e.g. 1000 or 0.5")
        d.add_argument("--nonce", type=int, help="default: the committed nonce")
    t = ops.add_parser("trade", help="a trade signed by buyer and seller")
    t.add_argument("--buyer", required=True, help="buyer's key file")
    t.add_argument("--seller", required=True, help="seller's key file")
    t.add_argument("--series", type=int, required=True)
    t.add_argument("--size", type=int, required=True, help="contracts")
    t.add_argument("--price", required=True, help="per contract, in units of the series' settlement asset")
    t.add_argument("--buyer-nonce", type=int)
    t.add_argument("--seller-nonce", type=int)
    m = ops.add_parser("mark", help="an oracle mark signed by a quorum of oracle keys")
    m.add_argument("--oracle", action="append", required=True, help="an oracle's key file (repeat for each)")
    m.add_argument("--underlying", required=True, help="BTC, ETH")
    m.add_argument("--index", type=float, required=True, help="the index, USD")
    m.add_argument("--sequence", type=int, required=True, help="after the last committed mark's")
    m.add_argument("--timestamp", type=int, help="unix seconds (default: now)")
    m.add_argument("--vol", action="append", metavar="SERIES=VOL", help="implied vol of a series (repeat)")
    st = ops.add_parser("status", help="pending, committed (height), refused (reason) or unknown")
    st.add_argument("hash", help="the transaction's hash (sha256 of its body), hex")
    ac = ops.add_parser("account", help="an account's nonce, collateral, positions and proof")
    ac.add_argument("key", help="a key file, or a public key in hex")
    tx.set_defaults(fn=cmd_tx)
    ln = sub.add_parser("localnet", help="run a local validator network and report validation and finality",
                        description="Start N validator processes on loopback, run until each committed --blocks "
                        "blocks of --txs-per-block signed transactions, stop them, and report per-block "
                        "validation time by stage and time to finality. --software-validators K runs the last K "
                        "software-only among accelerated ones, on one chain.")
    ln.add_argument("--app", choices=["kv", "clearing"], default="clearing",
                    help="application and its load: the options clearing market (default; BTC and ETH options, "
                    "a volatility crash after 5 blocks), or signed key-value transfers")
    ln.add_argument("--no-sig-cache", action="store_true",
                    help="clearing: check every signature of a block, even those the mempool verified")
    ln.add_argument("--validators", type=_positive, default=4, help="number of validators, 3f+1 (default 4)")
    ln.add_argument("--blocks", type=_positive, default=30, help="blocks every validator must commit (default 30)")
    ln.add_argument("--txs-per-block", type=_positive, default=100, help="transactions per block (default 100)")
    ln.add_argument("--validation", choices=["accel", "software"], default="accel",
                    help="validate through accel (default) or software-only (PyNaCl, hashlib)")
    ln.add_argument("--software-validators", type=_count, default=0, metavar="K",
                    help="with --validation accel: the last K validators validate software-only (PyNaCl, hashlib, "
                    "NumPy/SciPy) and the others through accel, on one network (default 0); the report records "
                    "each validator's mode")
    ln.add_argument("--backend", choices=config.BACKENDS, help="accel backend (default: the configured one); "
                    "software validators check registration keys on it")
    ln.add_argument("--gpu-min-batch", type=int, help="[accel] gpu_min_batch of every validator: smaller batches "
                    "stay on the C fallback (default: the configured one)")
    ln.add_argument("--metrics-port", type=_port, metavar="BASE",
                    help="validator i serves Prometheus metrics on 127.0.0.1:BASE+i")
    ln.add_argument("--rpc-port", type=_port, metavar="BASE",
                    help="validator i serves the client API ([rpc] listen) on 127.0.0.1:BASE+i (default: free "
                    "ports, printed at the start)")
    ln.add_argument("--accounts", type=_count, default=0, metavar="N",
                    help="clearing: N more funded accounts holding positions in every validator's genesis "
                         "([node] genesis_accounts; 1,000,000 build in about 10 s per validator)")
    ln.add_argument("--delay-ms", type=_finite(False, "milliseconds"), default=0.0, help="added one-way delay per message (default 0)")
    ln.add_argument("--base-timeout-ms", type=_finite(True, "milliseconds"), default=1000.0, help="view timeout before backoff (default 1000)")
    ln.add_argument("--kill-restart", action="store_true", help="SIGKILL validator 1 midway and restart it")
    ln.add_argument("--timeout", type=_finite(True), default=600.0, help="give up after this many seconds (default 600)")
    ln.add_argument("--dir", help="where configs, stores and logs go (default: a new temporary directory)")
    ln.add_argument("--report", help="write the JSON report here")
    ln.set_defaults(fn=cmd_localnet)
    bc = sub.add_parser("build-cuda", help="prebuild the CUDA modules with nvcc (no GPU needed)",
                        description="Compile every kernel module with nvcc into a cubin for a GPU architecture, "
                        "where the CUDA backend looks first ([accel] cuda_cubin_dir), so no validator waits on "
                        "NVRTC at its first block. Prints ptxas's registers, stack and spills per kernel.")
    bc.add_argument("--arch", action="append", help="target, e.g. sm_90 for H100/H200 (repeatable; default: this "
                    "machine's GPU)")
    bc.add_argument("--out", help="directory (default: [accel] cuda_cubin_dir of --config FILE, accel.toml or "
                    "$ACCEL_CONFIG, else ~/.cache/accel-verify/cubin of the user running it)")
    bc.add_argument("--module", action="append", help="only this kernels/ module, e.g. ed25519.h (repeatable)")
    bc.add_argument("--define", action="append", default=[], metavar="NAME=VALUE",
                    help="build with -DNAME=VALUE (tuning variants; the backend loads only the plain build)")
    bc.add_argument("--jobs", type=_count, default=0, help="parallel nvcc processes (default: one per core)")
    bc.add_argument("--json", action="store_true", help="print ptxas's figures as JSON")
    bc.add_argument("--config", metavar="FILE", help="cuda_cubin_dir from the [accel] table of this file, a validator's "
                    "(as `accel node --config FILE` reads it; default: accel.toml or $ACCEL_CONFIG)")
    bc.set_defaults(fn=cmd_build_cuda)
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.cmd is None:
        ap.print_help(sys.stderr)
        return 2
    try:
        return args.fn(args)
    except (config.ConfigError, BackendUnavailable, KernelError, ValueError, TypeError, OSError) as exc:
        print(f"accel: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:  # a size past this machine's memory (merkle-demo --leaves 10**14)
        print(f"accel: error: out of memory: {str(exc) or 'a size too large for this machine'}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C in `accel tx --wait`, validate-bench, ...: no traceback
        print(f"accel {args.cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
