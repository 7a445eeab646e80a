"""Review s9b of the operator surface: a second attack on the first s9 round's fixes (the
data_dir lock, paths read from the validator's file, the events file, the memory checks, the
ACCEL_* variable check) and on the accel configuration of a software-only validator. Each test
failed (or hung) before its fix."""
import errno
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from accel import config
from accel.backends import BackendUnavailable, get_backend
from accel.config import ConfigError
from consensus import node
from consensus.localnet import write_configs
from consensus.node import NodeConfig, NodeRunner, StartupError, run_node

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCEL = [sys.executable, "-m", "accel.cli"]


def _config(tmp_path, app="kv"):
    return write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, app=app, load="none")


def _set(path, **values):
    text = path.read_text()
    for key, value in values.items():
        line = next((x for x in text.splitlines() if x.startswith(f"{key} = ")), None)
        new = f"{key} = {value}"
        text = text.replace(line, new) if line else text.replace("[node]\n", f"[node]\n{new}\n", 1)
    path.write_text(text)


def _close(runner):
    runner.store.close()
    runner.events.close()


def test_events_through_a_link_to_data_dir_never_write_into_the_store(tmp_path):
    """NodeConfig.load compares [node] events with the store's files by name, and by file only
    where both exist: on a first start validator.db does not, so events named through a link to
    data_dir (alias/validator.db) loaded, the store created the file, and the events were
    appended to the SQLite database. The runner now compares the opened events file with the
    store's files, the lock, the load file and the validator's own file."""
    path = _config(tmp_path)[0]
    cfg = NodeConfig.load(path)
    os.symlink(cfg.data_dir, tmp_path / "alias")
    _set(path, events=json.dumps(str(tmp_path / "alias" / "validator.db")))
    cfg = NodeConfig.load(path)  # nothing exists yet: names differ
    with pytest.raises(StartupError) as err:
        NodeRunner(cfg)
    line = str(err.value)
    assert "\n" not in line and "[node] events" in line and "validator.db" in line and "another name" in line
    _set(path, events=json.dumps(str(tmp_path / "events.jsonl")))
    _close(NodeRunner(NodeConfig.load(path)))  # refused, it let the data_dir go


FIFO_START = textwrap.dedent("""
    import sys
    from consensus.node import NodeConfig, NodeRunner, StartupError
    try:
        r = NodeRunner(NodeConfig.load(sys.argv[1])); r.store.close(); r.events.close()
        print("started")
    except StartupError as exc:
        print("refused:", exc)
""")


def test_an_events_fifo_nobody_reads_is_refused_not_waited_on(tmp_path):
    """open(events, "a") on a FIFO with no reader waits for one for ever: the validator never
    started, with no word and its port unbound. It is refused in one line now; a FIFO some
    process reads, a character device (/dev/null) and a file are taken."""
    path = _config(tmp_path)[0]
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    _set(path, events=json.dumps(str(fifo)))
    proc = subprocess.run([sys.executable, "-c", FIFO_START, str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.startswith("refused:") and "[node] events" in proc.stdout and "FIFO" in proc.stdout, proc
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a process reading it
    try:
        runner = NodeRunner(NodeConfig.load(path))
        runner._event(kind="probe")
        _close(runner)
        assert b'"kind": "probe"' in os.read(reader, 4096)
    finally:
        os.close(reader)
    _set(path, events=json.dumps(os.devnull))
    _close(NodeRunner(NodeConfig.load(path)))


def test_a_file_given_through_a_link_or_stdin_reads_paths_from_its_own_directory(tmp_path):
    """The directory relative paths are read from was the link's (abspath keeps links): one
    validator's file given as /etc/...link and as its real path named two data_dirs, each with its
    own lock, so the same validator could run twice and vote twice; given as /dev/stdin (`accel
    node --config /dev/stdin < validator.toml`) its data_dir was /dev/data, a tmpfs lost at the
    next boot. The file's real directory is taken now."""
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    real = real_dir / "validator.toml"
    real.write_text(_config(tmp_path)[0].read_text())
    _set(real, data_dir='"data"', events='"events.jsonl"')
    link_dir = tmp_path / "etc"
    link_dir.mkdir()
    os.symlink(real, link_dir / "validator.toml")
    assert NodeConfig.load(link_dir / "validator.toml").data_dir == real_dir / "data"
    assert NodeConfig.load(real).data_dir == real_dir / "data"
    with open(real) as fh:
        out = subprocess.run([sys.executable, "-c", "from consensus.node import NodeConfig; "
                              "print(NodeConfig.load('/dev/stdin').data_dir)"], cwd=ROOT, stdin=fh,
                             capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == str(real_dir / "data"), out


def test_a_start_refused_after_the_store_opened_lets_the_data_dir_go_in_the_process(tmp_path):
    """run_node made the runner (store and lock open) then failed to bind [metrics] listen; the
    store was never closed, so a validator started again in the same process (tests, an embedder)
    was refused as "in use by another validator process" with its own pid."""
    path = _config(tmp_path)[0]
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        path.write_text(path.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{taken.getsockname()[1]}"\n')
        with pytest.raises(SystemExit) as err:
            run_node(path)
        assert "[metrics] listen" in str(err.value.code)
    finally:
        taken.close()
    _close(NodeRunner(NodeConfig.load(path)))


def test_a_data_dir_on_a_filesystem_without_locks_is_named_as_such(tmp_path, monkeypatch):
    """flock on a filesystem without locks (some NFS mounts, FUSE) said "[node] data_dir ... is not
    a writable directory: No locks available"; now it names the lock and what to do."""
    cfg = NodeConfig.load(_config(tmp_path)[0])

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(node.fcntl, "flock", no_locks)
    with pytest.raises(StartupError) as err:
        NodeRunner(cfg)
    line = str(err.value)
    assert "[node] data_dir" in line and "lock" in line and "local filesystem" in line
    assert "not a writable directory" not in line


def test_a_lock_file_that_is_a_link_is_not_followed(tmp_path):
    """The lock file is truncated to hold the pid: a validator.lock that was a symbolic link to
    another file emptied that file and wrote the pid into it."""
    cfg = NodeConfig.load(_config(tmp_path)[0])
    cfg.data_dir.mkdir(parents=True)
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    os.symlink(victim, cfg.data_dir / "validator.lock")
    with pytest.raises(StartupError) as err:
        NodeRunner(cfg)
    assert "[node] data_dir" in str(err.value)
    assert victim.read_text() == "keep me\n"


def test_a_forked_child_does_not_keep_the_data_dir_locked(tmp_path):
    """A child forked from a process with a validator's store open (a worker of an embedder) held
    the flock through its copy of the descriptor: after the parent closed its store (or died by
    SIGKILL) the validator could not start again while that child lived."""
    cfg = NodeConfig.load(_config(tmp_path)[0])
    runner = NodeRunner(cfg)
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child waits for its parent's word, holding whatever it inherited
        try:
            os.close(w)
            os.write(ready_w, b"!")  # fork() has returned here: the at-fork handlers have run
            os.read(r, 1)
        finally:
            os._exit(0)
    os.close(r)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"!"
        _close(runner)
        _close(NodeRunner(cfg))
    finally:
        os.close(w)
        os.close(ready_r)
        os.waitpid(pid, 0)


def _fake_root(tmp_path, cgroup: str, files: dict) -> str:
    root = tmp_path / "root"
    (root / "proc" / "self").mkdir(parents=True)
    (root / "proc" / "self" / "cgroup").write_text(cgroup)
    for name, text in files.items():
        p = root / "sys" / "fs" / "cgroup" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(root)


@pytest.mark.parametrize("version", ["v2", "v2_parent", "v1", "v1_container_view"])
def test_the_memory_check_takes_a_containers_limit(tmp_path, version):
    """genesis_accounts / --accounts / merkle-demo --leaves were checked against the machine's
    memory (MemTotal) only: in a container limited to 1 GiB on a large host, a size the host
    holds passed the check and the OOM killer ended the build. The control group's limit (cgroup
    v2 memory.max, v1 memory.limit_in_bytes; of the group or one above it) counts now."""
    gib = 1 << 30
    cgroup, files = {
        "v2": ("0::/box/job\n", {"box/job/memory.max": f"{gib}\n"}),
        "v2_parent": ("0::/box/job\n", {"box/job/memory.max": "max\n", "box/memory.max": f"{gib}\n"}),
        "v1": ("4:memory:/box\n1:cpu:/\n", {"memory/box/memory.limit_in_bytes": f"{gib}\n"}),
        "v1_container_view": ("4:memory:/host/path\n", {"memory/memory.limit_in_bytes": f"{gib}\n"}),
    }[version]
    root = _fake_root(tmp_path, cgroup, files)
    limit = node.memory_limit(root)
    assert limit is not None and limit[0] == gib and "control group" in limit[1]
    why = node.accounts_fit(2 * 1024 * 1024, root)  # 2 GiB of accounts in a 1 GiB container
    assert "control group" in why and "1.0 GiB" in why
    assert node.accounts_fit(1000, root) == ""


def test_an_unlimited_control_group_leaves_the_machines_memory(tmp_path):
    root = _fake_root(tmp_path, "0::/\n", {"memory.max": "max\n"})
    assert node.memory_limit(root)[1] == "this machine has"
    assert node.accounts_fit(1000, root) == ""  # an honest size on any machine


@pytest.mark.parametrize("name", ["accel_gpu_fallbacks", "accel_thread"])
def test_another_programs_lower_case_variable_is_left_alone(name):
    """The variable check took any name within a typo of a setting in any case: a lower-case
    variable of another program (accel_gpu_fallbacks, a metric's name a monitoring script
    exports) stopped every accel command. A setting's exact name in lower case stays an error."""
    assert config.load(None, env={name: "1"}) == config.AccelConfig()
    with pytest.raises(ConfigError):
        config.load(None, env={"accel_backend": "cpu"})
    with pytest.raises(ConfigError):
        config.load(None, env={"ACCEL_THREAD": "1"})


@pytest.mark.parametrize("variable, value, status", [("ACCEL_THREADS", "abc", 2), ("ACCEL_BACKEND", "cuda", 1)])
def test_a_software_clearing_validator_with_an_accel_config_that_cannot_run_stops_at_start(tmp_path, variable,
                                                                                          value, status):
    """A software-only clearing validator still checks registering keys on the configured accel
    backend (clearing.register's ed25519_key_is_safe), and its start looked at neither the
    configuration nor that backend: with ACCEL_THREADS=abc (or backend = "cuda" on a machine
    without the driver) it ran, and refused every registration in its proposals and the blocks of
    others holding one ("internal error"), while accelerated validators took them. It stops at
    start now, in one line: a value no setting takes when the file is read (a configuration
    error, exit status 2, as in a file with an [accel] table), a backend that cannot run at the
    software validator's check (status 1)."""
    if value == "cuda":
        try:
            get_backend("cuda")
            pytest.skip("the CUDA backend runs here")
        except BackendUnavailable:
            pass
    path = _config(tmp_path, app="clearing")[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCEL_")} | {variable: value}
    proc = subprocess.run(ACCEL + ["node", "--config", str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == status and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert variable in last or "cuda" in last.lower(), last
    if status == 1:
        assert 'validation = "software"' in last and str(path) in last
    assert not (tmp_path / "node0").exists()  # before the store


FULL = textwrap.dedent("""
    import sqlite3, sys
    from consensus import node
    async def full(self):  # as Store.save_safety / add_committed meet a full disk
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except BaseException:  # SQLite rolled the transaction back itself: the store's ROLLBACK fails
            raise sqlite3.OperationalError("cannot rollback - no transaction is active")
    node.NodeRunner.run = full
    from accel.cli import main
    sys.exit(main(["node", "--config", sys.argv[1]]))
""")


def test_a_full_disk_is_named_not_the_failed_rollback_that_followed_it(tmp_path):
    """On a full disk SQLite undoes the transaction itself, so the store's ROLLBACK raised "cannot
    rollback - no transaction is active" over "database or disk is full", and the one line the
    node stopped with named the rollback (checked: a real WAL database at its max_page_count
    behaves so). The first error is named now."""
    import sqlite3
    db = sqlite3.connect(tmp_path / "probe.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x BLOB)")
    db.execute("PRAGMA max_page_count=8")
    db.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        for _ in range(64):
            db.execute("INSERT INTO t VALUES (?)", (bytes(4000),))
    assert not db.in_transaction  # why the store's ROLLBACK fails
    db.close()
    path = _config(tmp_path)[0]
    proc = subprocess.run([sys.executable, "-c", FULL, str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "cannot write [node] data_dir's store: database or disk is full" in last, last


def test_a_relative_cubin_dir_in_a_file_is_read_from_the_files_directory(tmp_path, monkeypatch):
    """[accel] cuda_cubin_dir = "cubin" was taken from the working directory, unlike [node]
    data_dir in the same file: a validator started by systemd (in /) looked in /cubin, found no
    prebuilt module and compiled each with NVRTC at its first use; "~/..." was a directory named
    "~". Both are read as the file's other paths now (ACCEL_CUDA_CUBIN_DIR stays as given)."""
    (tmp_path / "conf").mkdir()
    accel_toml = tmp_path / "conf" / "accel.toml"
    accel_toml.write_text('[accel]\ncuda_cubin_dir = "cubin"\n')
    monkeypatch.chdir("/")
    assert config.load(accel_toml, env={}).cuda_cubin_dir == str(tmp_path / "conf" / "cubin")
    accel_toml.write_text('[accel]\ncuda_cubin_dir = "~/prebuilt"\n')
    assert config.load(accel_toml, env={}).cuda_cubin_dir == str(Path.home() / "prebuilt")
    assert config.load(accel_toml, env={"ACCEL_CUDA_CUBIN_DIR": "rel"}).cuda_cubin_dir == "rel"
    path = _config(tmp_path)[0]
    path.write_text(path.read_text() + '\n[accel]\nbackend = "cpu"\ncuda_cubin_dir = "mods"\n')
    assert NodeConfig.load(path).accel.cuda_cubin_dir == str(tmp_path / "mods")


def test_a_retry_after_429_has_what_is_left_of_the_timeout():
    """The s9 fix bounded the pauses between 429 retries by the timeout, but each retried request
    had the whole timeout again: a validator that answered 429 at once and then held the retried
    request held the call about twice the timeout. The retry's own bound is what is left now
    (the error names it: below the timeout)."""
    import http.server
    import threading
    from consensus.client import Client, RpcError
    seen, release = [], threading.Event()

    class Stall(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            if len(seen) > 1:  # the retry: held
                release.wait(10)
                return
            body = b'{"error": "busy"}'
            self.send_response(429)
            self.send_header("Retry-After", "0")  # the client's shortest pause, 0.25 s
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stall)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(RpcError) as err:
            Client(f"http://127.0.0.1:{server.server_port}", timeout=3.0).status()
        assert len(seen) == 2, seen
        bound = float(re.search(r"no complete answer within ([0-9.e-]+) s", str(err.value)).group(1))
        assert bound < 3.0 - 0.2  # what was left after the first answer and the 0.25 s pause
    finally:
        release.set()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("target", ["another_store", "key_file", "log"])
def test_events_never_append_to_a_file_that_is_not_an_events_file(tmp_path, target):
    """The events check named this validator's own files only: events = another validator's
    validator.db on the same host (a file copied and half edited) appended JSON lines into that
    validator's SQLite store; a client key file or a log was appended to as well. An existing
    file must begin with an event line; an empty or absent one, and this validator's own events
    across restarts, are taken."""
    paths = _config(tmp_path)
    other = NodeRunner(NodeConfig.load(paths[1]))
    _close(other)
    events = {"another_store": NodeConfig.load(paths[1]).data_dir / "validator.db",
              "key_file": tmp_path / "client-key.json", "log": tmp_path / "node.log"}[target]
    if target == "key_file":
        events.write_text(json.dumps({"seed": "00" * 32}) + "\n")
    elif target == "log":
        events.write_text("2026-12-06 12:00:00 node0 INFO starting\n")
    before = events.read_bytes()
    _set(paths[0], events=json.dumps(str(events)))
    with pytest.raises(StartupError) as err:
        NodeRunner(NodeConfig.load(paths[0]))
    assert "[node] events" in str(err.value) and "something other than" in str(err.value)
    assert events.read_bytes() == before
    own = tmp_path / "own.jsonl"
    _set(paths[0], events=json.dumps(str(own)))
    for _ in range(2):  # written, then taken again at the restart
        runner = NodeRunner(NodeConfig.load(paths[0]))
        runner._event(kind="probe")
        _close(runner)
    assert own.read_text().count('"kind": "probe"') == 2


def test_a_data_dir_is_one_validators_even_while_its_owner_is_stopped(tmp_path):
    """Validator 1 given validator 0's data_dir (node1's file copied from node0's, index and seed
    changed, data_dir not) while validator 0 was stopped passed the lock (free) and the network
    check (the same network): it took validator 0's safety state as its own and wrote its votes
    over validator 0's. data_dir/validator.key names the owner now; another validator is refused
    before anything is written, and the owner starts again."""
    paths = _config(tmp_path)
    owner = NodeConfig.load(paths[0])
    _close(NodeRunner(owner))
    stored = (owner.data_dir / "validator.db").read_bytes()
    _set(paths[1], data_dir=json.dumps(str(owner.data_dir)))
    with pytest.raises(StartupError) as err:
        NodeRunner(NodeConfig.load(paths[1]))
    line = str(err.value)
    assert "[node] data_dir" in line and owner.keys[0].hex()[:16] in line and "its own data_dir" in line
    assert (owner.data_dir / "validator.db").read_bytes() == stored
    assert (owner.data_dir / "validator.key").read_text().strip() == owner.keys[0].hex()
    _close(NodeRunner(owner))


def _refused_line(path):
    with pytest.raises(ConfigError) as err:  # `accel node` prints it as its one line, status 2
        run_node(path)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("seed", [bytes(32), b"\x11" * 32, bytes.fromhex("0123456789abcdef" * 4)],
                         ids=["zeros", "ones", "counting"])
def test_a_typed_seed_never_runs_as_a_validator(tmp_path, seed):
    """The published-keys refusal took RFC 8032's five keys only: a validator's file written by
    hand with seed = "00" * 32 (or "11" * 32, "0123456789abcdef" * 4) ran, a validator anyone could
    guess the seed of and sign for; one whose committee held such a key too. Both stop now,
    before anything is created."""
    from nacl.signing import SigningKey
    path = _config(tmp_path)[0]
    text, data_dir = path.read_text(), NodeConfig.load(path).data_dir
    key = bytes(SigningKey(seed).verify_key).hex()
    mine = NodeConfig.load(path).keys[0].hex()
    path.write_text(text.replace(mine, key).replace(NodeConfig.load(path).seed.hex(), seed.hex()))
    last = _refused_line(path)
    assert "[node] seed" in last and "guess" in last and str(path) in last
    (tmp_path / "b").mkdir()
    other = NodeConfig.load(_config(tmp_path / "b")[0])  # a fine validator whose committee holds it
    path = Path(other.path)
    guessed = bytes(SigningKey(b"\x11" * 32).verify_key).hex()  # one byte repeated: the first seeds anyone tries
    path.write_text(path.read_text().replace(other.keys[2].hex(), guessed))
    last = _refused_line(path)
    assert "[network] keys[2]" in last and "guess" in last
    assert not data_dir.exists() and not other.data_dir.exists()
