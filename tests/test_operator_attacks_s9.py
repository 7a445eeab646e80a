"""Review s9 of the operator surface: a validator's file, its data directory, the accel
configuration's environment and the `accel` command, attacked with inputs the earlier rounds did
not try. Each test failed before its fix."""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from accel import cli, config
from accel.config import ConfigError
from accel.ed25519_ref import encode, torsion_points
from consensus.localnet import write_configs
from consensus.node import NodeConfig, NodeRunner, StartupError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(tmp_path):
    return write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, app="kv", load="none")


def _keys_line(path):
    text = path.read_text()
    line = next(x for x in text.splitlines() if x.startswith("keys = "))
    return text, line, json.loads(line.split("=", 1)[1])


@pytest.mark.parametrize("case", ["small_order", "identity", "not_a_point", "non_canonical", "duplicate"])
def test_validator_keys_anyone_could_sign_for_or_listed_twice_are_refused(tmp_path, case):
    """[network] keys is the validator set. A small-order key (the identity, any torsion point)
    verifies the signature (R = a small-order point, s = 0) on every message under ZIP-215, so
    anyone could cast that validator's votes; a key listed twice gives its holder two of the n
    votes; a key that is no point (or a non-canonical encoding) is a validator that can never
    sign. Each was loaded and run; now the file is refused naming [network] keys and the index."""
    paths = _config(tmp_path)
    text, line, keys = _keys_line(paths[0])
    bad = {"small_order": encode(torsion_points()[3]).hex(),
           "identity": (bytes([1]) + bytes(31)).hex(),
           "not_a_point": (bytes([2]) + bytes(31)).hex(),  # y = 2 has no x on the curve
           "non_canonical": (b"\xed" + b"\xff" * 30 + b"\x7f").hex(),  # y = p: not reduced
           "duplicate": keys[1]}[case]
    keys[2] = bad
    paths[0].write_text(text.replace(line, "keys = " + json.dumps(keys)))
    with pytest.raises(ConfigError) as err:
        NodeConfig.load(paths[0])
    message = str(err.value)
    assert "\n" not in message and "[network] keys[2]" in message
    assert re.match(rf"{re.escape(str(paths[0]))}:\d+:", message)
    assert ("listed twice" in message) if case == "duplicate" else ("anyone could sign" in message
                                                                     or "not a curve point" in message)


def test_the_identity_key_really_verifies_any_message():
    """Why a small-order validator key is refused: with ZIP-215's cofactored rule both verifiers
    accept one signature for every message under it."""
    from consensus.verify import Verifier
    identity = bytes([1]) + bytes(31)
    forged = identity + bytes(32)
    for mode in ("software", "accel"):
        v = Verifier(mode)
        assert v.verify_one(identity, b"vote for block A", forged) and v.verify_one(identity, b"block B", forged)


def test_the_same_address_for_two_validators_is_refused(tmp_path):
    paths = _config(tmp_path)
    text = paths[0].read_text()
    line = next(x for x in text.splitlines() if x.startswith("addresses = "))
    addresses = json.loads(line.split("=", 1)[1])
    addresses[3] = addresses[1]
    paths[0].write_text(text.replace(line, "addresses = " + json.dumps(addresses)))
    with pytest.raises(ConfigError) as err:
        NodeConfig.load(paths[0])
    assert "[network] addresses[3]" in str(err.value) and "addresses[1]" in str(err.value)


HOLDER = textwrap.dedent("""
    import sys, time
    from consensus.node import NodeConfig, NodeRunner
    runner = NodeRunner(NodeConfig.load(sys.argv[1]))
    print("ready", flush=True)
    sys.stdin.read()
""")


def test_a_data_dir_is_used_by_one_validator_process_at_a_time(tmp_path):
    """Two processes on one data_dir (the same validator started twice, by systemd and by hand
    with another listen port, or a copied file whose data_dir was not changed) each wrote the
    other's safety state: a validator whose last voted view is overwritten may vote twice in a
    view. The second now stops at start with one line naming data_dir and the holder's pid; the
    lock goes with the process (a SIGKILLed validator restarts)."""
    paths = _config(tmp_path)
    cfg = NodeConfig.load(paths[0])
    other = NodeConfig.load(paths[1])
    copied = NodeConfig(**{**other.__dict__, "data_dir": cfg.data_dir})  # node1's file, node0's data_dir
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(paths[0])], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        for c in (cfg, copied):
            with pytest.raises(StartupError) as err:
                NodeRunner(c)
            line = str(err.value)
            assert "\n" not in line and "data_dir" in line and "in use" in line and str(holder.pid) in line
    finally:
        holder.kill()
        holder.wait()
    runner = NodeRunner(cfg)  # the holder is gone: its lock too
    runner.store.close()
    again = NodeRunner(cfg)  # closed: the same process opens it again
    again.store.close()


def test_a_runner_that_fails_to_start_lets_its_data_dir_go(tmp_path):
    """A NodeRunner refused after it opened the store (here: its events file cannot be opened)
    closes the store and its lock, so the next start is not told the directory is in use."""
    paths = _config(tmp_path)
    cfg = NodeConfig.load(paths[0])
    bad = NodeConfig(**{**cfg.__dict__, "events": tmp_path})  # a directory
    with pytest.raises(StartupError) as err:
        NodeRunner(bad)
    assert "[node] events" in str(err.value)
    runner = NodeRunner(cfg)
    runner.store.close()


def test_a_size_past_memory_is_one_line_not_a_traceback(capsys):
    """`accel merkle-demo --leaves 10**14` was a MemoryError traceback (exit 1)."""
    assert cli.main(["merkle-demo", "--leaves", str(10**14)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("accel: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert "GiB of memory" in err  # refused before allocating (a MemoryError is one line too: below)


def test_an_out_of_memory_without_a_message_still_says_what(monkeypatch, capsys):
    """A bare MemoryError (no message) printed "out of memory: " and nothing after."""
    def boom(args):
        raise MemoryError()
    args = cli.parser().parse_args(["info"])
    args.fn = boom
    monkeypatch.setattr(cli, "parser", lambda: type("P", (), {"parse_args": lambda self, argv: args})())
    assert cli.main(["info"]) == 2
    assert capsys.readouterr().err == "accel: error: out of memory: a size too large for this machine\n"


@pytest.mark.parametrize("name, meant", [("ACCEL_BACKNED", "ACCEL_BACKEND"), ("ACCEL_THREAD", "ACCEL_THREADS"),
                                         ("ACCEL_GPU_MIN_BATCHES", "ACCEL_GPU_MIN_BATCH"),
                                         ("ACCEL_GPUFALLBACK", "ACCEL_GPU_FALLBACK"),
                                         ("accel_backend", "ACCEL_BACKEND")])
def test_a_misspelt_accel_variable_is_an_error_naming_the_one_meant(name, meant):
    """A misspelt key in a file is an error; a misspelt variable was ignored, and the validator
    ran the file's (or the default) value: ACCEL_BACKNED=cpu left a GPU in use."""
    with pytest.raises(ConfigError) as err:
        config.load(None, env={name: "1"})
    assert name in str(err.value) and meant in str(err.value) and "\n" not in str(err.value)


def test_other_accel_variables_and_empty_ones_are_left_alone():
    """Variables of the tests and scripts (not settings) load; an empty setting is unset, as
    docs/OPERATOR.md says."""
    env = {"ACCEL_CONFIG": "", "ACCEL_REQUIRE_BACKENDS": "cpu", "ACCEL_TESTDATA": "/x",
           "ACCEL_HYPOTHESIS_EXAMPLES": "5", "ACCEL_BACKEND": "", "ACCEL_THREADS": ""}
    assert config.load(None, env=env) == config.AccelConfig()
    docs = open(os.path.join(ROOT, "docs", "OPERATOR.md")).read()
    assert "set to the empty string counts as unset" in " ".join(docs.split())


ACCEL = [sys.executable, "-m", "accel.cli"]


def test_the_example_network_made_of_published_keys_never_runs(tmp_path):
    """docs/validator.example.toml's keys are RFC 8032's test keys (their seeds are published): a
    copy of it with its paths changed ran as a validator anyone could sign for. Now `accel node`
    stops before creating, binding or signing anything, naming the key."""
    text = open(os.path.join(ROOT, "docs", "validator.example.toml")).read()
    text = text.replace('"/var/lib/accel-validator"', json.dumps(str(tmp_path / "data")))
    text = text.replace('"/var/lib/accel-validator/events.jsonl"', json.dumps(str(tmp_path / "events.jsonl")))
    text = text.replace('"0.0.0.0:26700"', '"127.0.0.1:0"').replace('validation = "accel"', 'validation = "software"')
    text = text.replace('"127.0.0.1:9464"', '""').replace('"127.0.0.1:26657"', '""')
    path = tmp_path / "validator.toml"
    path.write_text(text)
    os.chmod(path, 0o600)
    NodeConfig.load(path)  # it loads (the documentation's example)
    proc = subprocess.run(ACCEL + ["node", "--config", str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    # (a configuration error: exit 2 since session 15, which the systemd unit does not restart)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "[network] keys[0]" in last and "published" in last and str(path) in last
    assert not (tmp_path / "data").exists() and not (tmp_path / "events.jsonl").exists()


@pytest.mark.parametrize("mode", [0o644, 0o600])
def test_a_validator_file_others_can_read_is_warned_about(tmp_path, mode):
    """The validator's file holds its signing seed; a client key file others can read is refused,
    a validator's file was taken silently. Now its start logs a warning naming the mode (the
    node then fails here on purpose: its data_dir is a file)."""
    path = _config(tmp_path)[0]
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    text = path.read_text()
    line = next(x for x in text.splitlines() if x.startswith("data_dir = "))
    path.write_text(text.replace(line, "data_dir = " + json.dumps(str(blocker))))
    os.chmod(path, mode)
    proc = subprocess.run(ACCEL + ["node", "--config", str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "[node] data_dir" in proc.stderr.strip().splitlines()[-1], proc.stderr
    warned = "readable or writable by others (mode 644)" in proc.stderr and f"chmod 600 {path}" in proc.stderr
    assert warned == (mode == 0o644)


def _set(path, **values):
    text = path.read_text()
    for key, value in values.items():
        line = next((x for x in text.splitlines() if x.startswith(f"{key} = ")), None)
        new = f"{key} = {value}"
        text = text.replace(line, new) if line else text.replace("[node]\n", f"[node]\n{new}\n", 1)
    path.write_text(text)


def test_relative_paths_are_the_files_not_the_working_directorys(tmp_path, monkeypatch):
    """A relative data_dir was taken from the working directory: the validator restarted from
    another one (a shell elsewhere, systemd's /) found an empty store and began again from the
    genesis with no record of its votes. Now data_dir, events and load_file are read from the
    file's directory (and ~ is the home directory), wherever the node starts."""
    path = _config(tmp_path)[0]
    # (a load_file is read by the clearing app's built-in load only: s13 refuses it elsewhere)
    _set(path, data_dir='"store0"', events='"sub/ev.jsonl"', load_file='"load.bin"', app='"clearing"', load='"builtin"')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for given in (path, os.path.relpath(path, elsewhere)):
        cfg = NodeConfig.load(given)
        assert cfg.data_dir == tmp_path / "store0" and cfg.events == tmp_path / "sub" / "ev.jsonl"
        assert cfg.load_file == str(tmp_path / "load.bin")
    _set(path, data_dir='"~/accel-store"')
    assert NodeConfig.load(path).data_dir == Path.home() / "accel-store"


@pytest.mark.parametrize("key, value", [("data_dir", '""'), ("events", '"  "'), ("data_dir", '"a\\u0000b"'),
                                        ("load_file", '"x\\u0000"')])
def test_a_path_that_is_empty_or_holds_a_nul_is_refused_naming_its_line(tmp_path, key, value):
    """data_dir = "" was the working directory (events = "" failed later as a directory), and a
    NUL in a path was a ValueError traceback at start."""
    path = _config(tmp_path)[0]
    _set(path, **{key: value})
    with pytest.raises(ConfigError) as err:
        NodeConfig.load(path)
    message = str(err.value)
    assert "\n" not in message and f"[node] {key}" in message and "is not a path" in message
    line = int(re.match(rf"{re.escape(str(path))}:(\d+):", message).group(1))
    assert path.read_text().splitlines()[line - 1].startswith(key)


def test_localnet_files_name_absolute_paths_whatever_directory_it_was_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("rel").mkdir()
    paths = write_configs(Path("rel"), 4, 10, "software", 0.0, 1000.0, load_file=Path("rel/load.bin"))
    monkeypatch.chdir("/")
    cfg = NodeConfig.load(tmp_path / "rel" / "node0.toml")
    assert cfg.data_dir == tmp_path / "rel" / "node0" and cfg.load_file == str(tmp_path / "rel" / "load.bin")
    assert all(p.is_absolute() for p in paths)


def test_a_validator_answering_429_for_ever_holds_a_call_no_longer_than_the_timeout():
    """Each 429 was retried 20 times after its Retry-After (up to 5 s): a hostile or stuck
    validator held every call 100 s, whatever the client's timeout. Now a retry is made only if
    its pause ends within the timeout of the first try: with timeout 1 and Retry-After 5, one
    request and an RpcError naming the 429."""
    import http.server
    import threading
    from consensus.client import Client, RpcError
    seen = []

    class Busy(http.server.BaseHTTPRequestHandler):
        retry_after = "5"

        def do_GET(self):
            seen.append(self.path)
            body = b'{"error": "busy"}'
            self.send_response(429)
            self.send_header("Retry-After", self.retry_after)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(RpcError) as err:
            Client(f"http://127.0.0.1:{server.server_port}", timeout=1.0).status()
        assert "429 busy" in str(err.value) and len(seen) == 1
        seen.clear()
        Busy.retry_after = "1"  # retried while the pauses fit: at 0, 1, 2 and 3 s, about
        with pytest.raises(RpcError):
            Client(f"http://127.0.0.1:{server.server_port}", timeout=3.5).status()
        assert 2 <= len(seen) <= 4
    finally:
        server.shutdown()
        server.server_close()


def test_the_report_tool_says_in_one_line_when_a_number_is_past_a_float(tmp_path, capsys):
    """A report whose validation time is an integer past a float's range (JSON allows it) was an
    OverflowError traceback."""
    from consensus import report
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"validators": 4, "txs_per_block": 1, "validation": "software", "backend": "x",
                                "blocks": [{"txs": 1, "validation_ms": {"total": 10**400}, "finality_ms": None}]}))
    assert report.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a localnet report" in err and "OverflowError" in err


def test_the_demo_refuses_a_block_size_no_validator_takes_before_signing(tmp_path, capsys):
    """--sizes 100000 signed a million transactions, then every validator refused its file
    (txs_per_block past clearing_app.MAX_BLOCK_TXS): now an argparse error before anything."""
    from consensus import demo
    with pytest.raises(SystemExit) as exit_:
        demo.main(["--sizes", "100000", "--blocks", "10", "--out", str(tmp_path / "out"), "--backends", "cpu"])
    assert exit_.value.code == 2 and "65,536" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_more_validators_than_a_vote_can_name_is_a_config_error(tmp_path):
    """A validator index is 16 bits on the wire (a QC's voters, the network id's count): a file
    with 65,536 keys loaded and the node failed at start with an OverflowError traceback."""
    path = _config(tmp_path)[0]
    _, _, keys = _keys_line(path)
    many = (keys * 16_384)[:65_536]
    addresses = [f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}:1" for i in range(65_536)]
    _set(path, keys=json.dumps(many), addresses=json.dumps(addresses))
    with pytest.raises(ConfigError) as err:
        NodeConfig.load(path)
    assert "65,536 validators" in str(err.value) and "at most 65,535" in str(err.value)


LIMITED = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    from accel.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("kind", ["fifo", "device", "huge"])
def test_a_config_that_is_no_regular_file_or_too_large_is_one_line(tmp_path, kind):
    """`accel node --config` (or $ACCEL_CONFIG) naming a FIFO waited for a writer for ever;
    /dev/zero was read until memory ran out (a MemoryError traceback under a memory limit). Now
    one line: not a regular file, or larger than config.MAX_FILE_BYTES."""
    if kind == "fifo":
        path = tmp_path / "fifo.toml"
        os.mkfifo(path)
    elif kind == "device":
        path = "/dev/zero"
    else:
        path = tmp_path / "huge.toml"
        with open(path, "wb") as fh:
            fh.write(b"# " + b"x" * 1000 + b"\n")
            fh.truncate(config.MAX_FILE_BYTES + 10)
    proc = subprocess.run([sys.executable, "-c", LIMITED, "node", "--config", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"accel: error: cannot read config {path}: ")
    assert ("larger than 64 MiB" if kind == "huge" else "not a regular file") in proc.stderr


def test_no_peer_warning_names_failed_handshakes_and_the_network_id(tmp_path):
    """Validators given different [network] keys, chain_id or genesis are on different networks:
    every handshake between them fails, and each logged only "no peer connected" (the reasons
    were debug lines), with nothing pointing at the configuration. Now the warning counts the
    failed handshakes and names this validator's network id to compare."""
    from types import SimpleNamespace
    runner = NodeRunner(NodeConfig.load(_config(tmp_path)[0]))
    try:
        alone = runner.no_peer_warning(100.0)
        assert alone == "no peer connected: nothing heard from any of the 3 other validators since the start"
        runner.net = SimpleNamespace(handshake_failures=7)
        line = runner.no_peer_warning(100.0)
        assert line.startswith(alone) and "7 handshake(s) failed" in line and "chain_id" in line
        assert runner.network.hex()[:16] in line
    finally:
        runner.store.close()


@pytest.mark.parametrize("target", ["store", "wal", "lock", "self", "load_file", "self_by_link"])
def test_the_events_file_is_never_the_store_the_lock_the_load_or_the_file_itself(tmp_path, target):
    """[node] events is appended to: given the store's validator.db (or its WAL, the lock) it
    damaged the store with JSON lines; given the validator's own file, the next start could not
    parse it. Each is now refused at load naming [node] events."""
    path = _config(tmp_path)[0]
    cfg = NodeConfig.load(path)
    load = tmp_path / "load.bin"
    load.write_bytes(b"")
    link = tmp_path / "alias.jsonl"
    os.symlink(path, link)
    events = {"store": cfg.data_dir / "validator.db", "wal": cfg.data_dir / "validator.db-wal",
              "lock": cfg.data_dir / "validator.lock", "self": path, "load_file": load,
              "self_by_link": link}[target]
    _set(path, events=json.dumps(str(events)), load_file=json.dumps(str(load)))
    with pytest.raises(ConfigError) as err:
        NodeConfig.load(path)
    assert "[node] events" in str(err.value) and "give the events their own file" in str(err.value)


@pytest.mark.parametrize("amount", ["1e99999999", "1e999999", "1e400", "-1e400", "9" * 5000])
def test_an_amount_past_any_range_is_one_short_line(amount, capsys):
    """--amount 1e99999999 was a decimal.Overflow traceback; 1e400 (or 5,000 nines) an error line
    holding the whole 400-digit (5,000-digit) number of quanta."""
    from consensus.client import quanta
    with pytest.raises(ValueError) as err:
        quanta(amount)
    assert len(str(err.value)) < 200
    path = os.path.join(ROOT, "tests", "no-such-key.json")
    assert cli.main(["tx", "--node", "http://127.0.0.1:1", "--chain-id", "1", "deposit", "--key", path,
                     "--nonce", "0", f"--amount={amount}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 300 and "Traceback" not in err


def test_listening_on_another_validators_address_is_refused(tmp_path):
    """[node] listen equal to addresses[j] of another validator (a copied file whose index was
    changed and listen not): it bound the port validator j's peers dial, or failed as "in use"."""
    path = _config(tmp_path)[0]
    cfg = NodeConfig.load(path)
    host, port = cfg.addresses[2]
    _set(path, listen=json.dumps(f"{host}:{port}"))
    with pytest.raises(ConfigError) as err:
        NodeConfig.load(path)
    assert "[node] listen" in str(err.value) and "addresses[2]" in str(err.value)


def test_node_help_names_every_table():
    text = cli.parser()._subparsers._group_actions[0].choices["node"].format_help()
    assert all(t in " ".join(text.split()) for t in ("[node]", "[network]", "[accel]", "[metrics]", "[rpc]"))


FULL = textwrap.dedent("""
    import errno, sqlite3, sys
    from consensus import node
    async def full(self):
        raise {error}
    node.NodeRunner.run = full
    from accel.cli import main
    sys.exit(main(["node", "--config", sys.argv[1]]))
""")


@pytest.mark.parametrize("error", ['sqlite3.OperationalError("database or disk is full")',
                                   'OSError(errno.ENOSPC, "No space left on device")'])
def test_a_full_disk_mid_run_stops_the_node_with_one_line(tmp_path, error):
    """SQLite's "database or disk is full" (or ENOSPC writing the events) while the validator ran
    was a traceback; now the node stops (nothing more can be recorded) with one line, status 1."""
    path = _config(tmp_path)[0]
    proc = subprocess.run([sys.executable, "-c", FULL.format(error=error), str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "validator 0 stopped: cannot write" in last
    assert ("database or disk is full" if "sqlite3" in error else "No space left on device") in last


@pytest.mark.parametrize("raw", ["\u0663", "\uff11\uff12", "1\u0660"])
def test_an_integer_variable_is_ascii_digits_as_in_toml(raw):
    """ACCEL_THREADS="٣" was read as 3 and ACCEL_GPU_MIN_BATCH="１２" as 12 (a regex \\d takes any
    script's digits, and int() reads them); TOML takes ASCII digits only, and so does the
    environment now."""
    for name in ("ACCEL_THREADS", "ACCEL_GPU_MIN_BATCH", "ACCEL_CUDA_DEVICE"):
        with pytest.raises(ConfigError) as err:
            config.load(None, env={name: raw})
        assert f"{name} must be an integer" in str(err.value)


def test_a_key_value_block_too_large_for_a_message_is_refused_before_anything(tmp_path, capsys):
    """kv txs_per_block had no bound: 10**9 made the node sign 4 x 10**9 transfers for its load at
    start (for ever, memory growing), and `validate-bench --app kv --txs 10**11` or `testnet --app
    kv --txs-per-block 10**8` likewise; a block that large could never be sent (MAX_MESSAGE)."""
    from consensus.node import KV_MAX_TXS
    path = _config(tmp_path)[0]
    _set(path, txs_per_block=str(KV_MAX_TXS))
    NodeConfig.load(path)
    _set(path, txs_per_block=str(10**9))
    with pytest.raises(ConfigError) as err:
        NodeConfig.load(path)
    assert "[node] txs_per_block" in str(err.value) and "holds at most" in str(err.value)
    for argv in (["validate-bench", "--app", "kv", "--txs", str(10**11)],
                 ["testnet", "--hosts", "a,b,c,d", "--out", str(tmp_path / "tn"), "--app", "kv",
                  "--txs-per-block", str(10**8)]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "holds at most" in err
    assert not (tmp_path / "tn").exists()
    assert f"kv: at most {KV_MAX_TXS:,}" in open(os.path.join(ROOT, "docs", "OPERATOR.md")).read()


def test_more_genesis_accounts_than_memory_holds_is_one_line_before_building(tmp_path, capsys):
    """genesis_accounts = 10**14 (or --accounts 10**14) was built until memory ran out: now one
    line naming the key (or flag) and the memory it would take."""
    path = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, load="none", accounts=10**14)[0]
    with pytest.raises(StartupError) as err:
        NodeRunner(NodeConfig.load(path))
    assert "[node] genesis_accounts" in str(err.value) and "GiB of memory" in str(err.value)
    for argv in (["validate-bench", "--accounts", str(10**14), "--txs", "1"],
                 ["localnet", "--accounts", str(10**14), "--validation", "software", "--dir", str(tmp_path / "ln")]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--accounts" in err and "GiB of memory" in err
    assert not (tmp_path / "ln").exists()


def test_merkle_demo_leaves_past_memory_is_one_line_before_allocating(capsys):
    """--leaves 10**9 (32 GB of leaves) on a smaller machine was allocated (overcommitted) and
    filled until the OOM killer; now one line naming the flag, before any allocation."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    leaves = total // 32 + 1  # the leaves alone past this machine's memory
    assert cli.main(["merkle-demo", "--leaves", str(leaves)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--leaves {leaves}" in err and "GiB of memory" in err
