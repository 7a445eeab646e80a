"""Session 14 review of the operator's and performance engineer's experience (/tmp/s14/ops): each
test here failed before its fix."""
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from accel import cli, config
from accel.config import AccelConfig, ConfigError
from consensus import client as cl
from consensus import localnet
from consensus.localnet import write_configs
from consensus.node import NodeConfig

pytestmark = pytest.mark.usefixtures("quiet_logs")
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "validator.example.toml"
NO_USER = "~nosuchuser-s14"


def _no_accel_env(monkeypatch):
    for name in list(os.environ):
        if name.upper().startswith("ACCEL_"):
            monkeypatch.delenv(name)


# ---- 2: check, info and build-cuda read a validator file's [accel] (--config) -------------------------
def _validator_file(tmp_path, backend="cuda", cubin_dir="cubins"):
    # new keys: the example's are published, which `accel check --config` refuses (as the node does)
    from nacl.signing import SigningKey
    text, example = EXAMPLE.read_text(), NodeConfig.load(EXAMPLE)
    seeds = [os.urandom(32) for _ in example.keys]
    for old, seed in zip(example.keys, seeds):
        text = text.replace(old.hex(), bytes(SigningKey(seed).verify_key).hex())
    text = text.replace(example.seed.hex(), seeds[example.index].hex())
    text = text.replace('backend = "auto" ', f'backend = "{backend}" ')
    text = text.replace('cuda_cubin_dir = ""', f'cuda_cubin_dir = "{cubin_dir}"')
    path = tmp_path / "validator.toml"
    path.write_text(text)
    assert NodeConfig.load(path).accel.backend == backend
    return path


def test_check_config_checks_the_validator_files_backend(tmp_path, monkeypatch, capsys):
    """`accel check` was the documented pre-flight but could not read the validator file: with
    its backend = "cuda" (no CUDA here) it passed on the C fallback."""
    _no_accel_env(monkeypatch)
    path = _validator_file(tmp_path)
    if not isinstance(cli.probe()["cuda"], cli.BackendUnavailable):
        pytest.skip("CUDA runs here")
    assert cli.main(["check", "--config", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["backend"].startswith("cuda") and not report["ready"]


def test_info_config_shows_the_validator_files_backend(tmp_path, monkeypatch, capsys):
    _no_accel_env(monkeypatch)
    path = _validator_file(tmp_path, backend="cpu")
    assert cli.main(["info", "--config", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["configured_backend"] == "cpu"


def test_build_cuda_config_writes_into_the_files_cubin_dir(tmp_path, monkeypatch, capsys):
    """build-cuda wrote into ~/.cache/accel-verify/cubin of whoever ran it, not where the file's
    cuda_cubin_dir (read relative to the file) has the validator look."""
    from accel.backends import cubins
    _no_accel_env(monkeypatch)
    path = _validator_file(tmp_path, cubin_dir="cubins")
    built = []
    monkeypatch.setattr(cubins, "build_all", lambda arch, out, *a, **k: built.append((arch, Path(out))))
    assert cli.main(["build-cuda", "--config", str(path), "--arch", "sm_90"]) == 0
    assert built == [("sm_90", tmp_path.resolve() / "cubins")]


def test_operator_says_to_check_the_validator_file():
    text = (ROOT / "docs" / "OPERATOR.md").read_text()
    assert "accel check\n   --config /etc/accel/validator.toml" in text
    assert "accel build-cuda --config" in text


# ---- 3: keygen --force replaces only a file or a link ---------------------------------------------
def test_keygen_force_refuses_a_fifo_and_a_socket(tmp_path):
    """--force replaced any non-directory: `accel keygen --out /dev/null --force` as root deleted
    /dev/null and left a 0600 file holding the seed."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        for path, is_kind in ((fifo, stat.S_ISFIFO), (sock_path, stat.S_ISSOCK)):
            with pytest.raises(ValueError, match="not a regular file"):
                cl.write_key(path, force=True)
            assert is_kind(os.lstat(path).st_mode)
            assert cli.main(["keygen", "--out", str(path), "--force"]) == 2
            assert is_kind(os.lstat(path).st_mode)
    finally:
        sock.close()
    link = tmp_path / "link"  # a link is still replaced (itself, not its target)
    link.symlink_to(fifo)
    cl.write_key(link, force=True)
    assert stat.S_ISREG(os.lstat(link).st_mode) and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    key = tmp_path / "key.json"  # and a key file
    cl.write_key(key)
    cl.write_key(key, force=True)


# ---- 4: ~user of no such user ---------------------------------------------------------------------
def test_tilde_of_no_such_user_is_a_config_error_naming_the_line(tmp_path):
    base = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, rpc_port=0)[0].read_text()
    for key in ("data_dir", "events", "load_file"):
        path = tmp_path / f"{key}.toml"
        text = re.sub(rf'^{key} = .*\n', '', base, flags=re.M)
        path.write_text(text.replace("[node]\n", f'[node]\n{key} = "{NO_USER}/x"\n', 1))
        with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}:2: \[node\] {key}: .*no user's home"):
            NodeConfig.load(path)
    toml = tmp_path / "accel.toml"
    toml.write_text(f'[accel]\ncuda_cubin_dir = "{NO_USER}/cubin"\n')
    with pytest.raises(ConfigError, match=rf"{re.escape(str(toml))}:2: .*no user's home"):
        config.load(toml, env={})
    with pytest.raises(ConfigError, match="ACCEL_CUDA_CUBIN_DIR: .*no user's home"):
        config.load(None, env={"ACCEL_CUDA_CUBIN_DIR": f"{NO_USER}/cubin"})


def test_accel_node_with_tilde_of_no_such_user_is_one_line(tmp_path):
    path = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, rpc_port=0)[0]
    path.write_text(re.sub(r'^data_dir = .*$', f'data_dir = "{NO_USER}/x"', path.read_text(), count=1, flags=re.M))
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ACCEL_")} | {"PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "accel.cli", "node", "--config", str(path)], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "no user's home" in out.stderr.strip().splitlines()[-1]


# ---- 9: a validator given twice ---------------------------------------------------------------------
@pytest.mark.parametrize("urls", [["http://10.0.0.1:26657", "http://10.0.0.1:26657/"],
                                  ["HTTP://Host.example:80", "http://host.example"],
                                  ["10.0.0.1:26657", "http://10.0.0.1:26657"],
                                  ["https://h:443", "http://h:443"]])
def test_client_refuses_a_validator_given_twice(urls):
    """n and f were counted over the list: one faulty validator given twice decided the nonce."""
    with pytest.raises(ValueError, match="the same validator"):
        cl.Client(urls + ["http://10.0.0.2:26657", "http://10.0.0.3:26657"])


def test_client_keeps_distinct_validators_and_tx_refuses_a_duplicate(capsys):
    assert len(cl.Client(["http://h:1", "http://h:2", "https://h:3", "http://g:1"]).urls) == 4
    assert cli.main(["tx", "--node", "http://127.0.0.1:1,http://127.0.0.1:1/", "status", "00" * 32]) == 2
    assert "the same validator" in capsys.readouterr().err


# ---- 10: localnet --validation software writes its [accel] table -------------------------------------
def test_software_localnet_writes_backend_and_gpu_min_batch(tmp_path, monkeypatch):
    """--backend and --gpu-min-batch were dropped with --validation software, and its validators
    ran on the ACCEL_* variables they inherited (OPERATOR: "each file is exactly what its validator
    runs")."""
    monkeypatch.setenv("ACCEL_THREADS", "1")
    config.reload()
    made = {}

    def run(self, *a, **k):
        made["net"] = self
        raise RuntimeError("stopped before starting validators (test)")
    monkeypatch.setattr(localnet.Localnet, "run", run)
    rc = cli.main(["localnet", "--validation", "software", "--backend", "cpu", "--gpu-min-batch", "0",
                   "--blocks", "1", "--txs-per-block", "10", "--dir", str(tmp_path / "net")])
    assert rc == 1 and "net" in made
    monkeypatch.delenv("ACCEL_THREADS")
    cfgs = [NodeConfig.load(p) for p in made["net"].configs]
    assert {c.accel for c in cfgs} == {AccelConfig(backend="cpu", threads=1, gpu_min_batch=0)}
    assert {c.validation for c in cfgs} == {"software"}
    assert not any(k.upper().startswith("ACCEL_") for k in made["net"].env)


# ---- 11: demo and localnet bound --validators; demo --out that cannot be made ------------------------
def test_demo_refuses_too_many_validators_and_an_unmakeable_out(tmp_path, capsys):
    from consensus import demo
    blocker = tmp_path / "file"
    blocker.write_text("")
    for args, said in ((["--validators", "70000", "--out", str(tmp_path / "d")], "at most 65,535"),
                       (["--out", str(blocker / "sub")], "cannot make the directory")):
        with pytest.raises(SystemExit) as exc:
            demo.main(args + ["--sizes", "100", "--blocks", "10", "--backends", "cpu"])
        assert exc.value.code == 2
        assert said in capsys.readouterr().err


def test_localnet_refuses_too_many_validators_in_one_line(capsys):
    assert cli.main(["localnet", "--validators", "70000"]) == 2
    assert "at most 65,535 validators" in capsys.readouterr().err


def test_localnet_refuses_no_sig_cache_for_kv_before_starting(capsys):
    """kv validators refuse `sig_cache = false` at load (a key their app does not read): the
    command says so first, rather than writing files every validator refuses."""
    assert cli.main(["localnet", "--app", "kv", "--no-sig-cache"]) == 2
    assert "--no-sig-cache turns off the clearing app's signature cache" in capsys.readouterr().err


def test_launch_limit_follows_the_open_file_limit(monkeypatch):
    import resource
    monkeypatch.setattr(resource, "getrlimit", lambda what: (256, 256))
    assert "ulimit -n" in localnet.launch_limit(100)
    assert localnet.launch_limit(4) is None


# ---- 7: make's bench recipes fail when the benchmark fails --------------------------------------------
@pytest.mark.skipif(shutil.which("make") is None or shutil.which("bash") is None, reason="needs make and bash")
@pytest.mark.parametrize("target", ["bench-consensus", "bench-state"])
def test_make_bench_fails_when_the_benchmark_fails(tmp_path, target):
    """`python ... | tee` under /bin/sh: the status was tee's, 0 after a traceback."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    out = subprocess.run(["make", "-s", "-o", "setup", target, "PY=false"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0, out.stdout + out.stderr
    ok = subprocess.run(["make", "-s", "-o", "setup", target, "PY=true"], cwd=tmp_path, capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr


# ---- 8: the bench scripts check their arguments first ------------------------------------------------
SMALL_SWEEP = ["--validators", "4", "--txs", "10", "--delays", "0", "--modes", "software", "--blocks", "1"]


@pytest.mark.parametrize("extra", [["--delays", "-5"], ["--delays", "nan"], ["--txs", "0"], ["--blocks", "0"],
                                   ["--validators", "3"], ["--modes", "xyz"], ["--validators", "x"],
                                   ["--json", "{tmp}/no/such/dir/out.json"]])
def test_consensus_sweep_refuses_bad_arguments_before_running(tmp_path, extra):
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "consensus_sweep.py"), *SMALL_SWEEP, *extra],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env=os.environ | {"PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-500:]
    assert "error:" in out.stderr and "|" not in out.stdout  # no table, not even its header


@pytest.mark.parametrize("extra", [["--runs", "0"], ["--modes", "xyz"], ["--accounts", "-1"], ["--txs", "0"],
                                   ["--txs", "100000"], ["--png", "{tmp}/no/such/dir/p.png"]])
def test_state_scale_refuses_bad_arguments_before_running(tmp_path, extra):
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "state_scale.py"), "--accounts", "0", "--modes",
                          "software", "--txs", "10", "--runs", "1", *extra], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path, env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-500:]
    assert "error:" in out.stderr


# ---- 12: ACCEL_CUDA_CUBIN_DIR expands ~ as the file's key does ----------------------------------------
def test_cubin_dir_variable_expands_home(tmp_path):
    toml = tmp_path / "accel.toml"
    toml.write_text('[accel]\ncuda_cubin_dir = "~/cubin"\n')
    from_file = config.load(toml, env={}).cuda_cubin_dir
    assert config.load(None, env={"ACCEL_CUDA_CUBIN_DIR": "~/cubin"}).cuda_cubin_dir == from_file \
        == str(Path.home() / "cubin")
    readme = (ROOT / "README.md").read_text()
    assert "from the working directory in the variable" in readme


# ---- 13: a JSON log is JSON from its first line --------------------------------------------------------
def test_json_log_has_no_text_line_before_it(tmp_path):
    """A warning raised while the file loads ([accel] threads above the cores) came out in the
    text format, ahead of the JSON log."""
    path = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, app="kv", rpc_port=0)[0]
    text = path.read_text().replace("[network]", 'log_format = "json"\n\n[network]', 1)
    path.write_text(text + f"\n[accel]\nthreads = {4 * (os.cpu_count() or 1)}\n")
    # the node itself is not started: run_node only loads the file (the warning) and returns
    code = ("import sys, consensus.node as n\n"
            "n.run_node = lambda p, e=None: (n.NodeConfig.load(p), 0)[1]\n"
            "from accel.cli import main\n"
            f"sys.exit(main(['node', '--config', {str(path)!r}]))\n")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ACCEL_")} | {"PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines and any("oversubscribe" in line for line in lines)
    for line in lines:
        entry = json.loads(line)
        assert entry["node"] == 0


# ---- 14: wording -------------------------------------------------------------------------------------
def test_peers_connected_help_names_the_window():
    from consensus.metrics import NodeMetrics
    m = NodeMetrics(SimpleNamespace(mempool=[]), "cpu", "C fallback", "accel")
    node = SimpleNamespace(peers_connected=lambda: [1, 2], seconds_since_commit=lambda: 0.0, peer_window_s=20.0)
    m.liveness(node)
    helps = {f.name: f.documentation for f in m.registry.collect()}
    assert "20 seconds" in helps["accel_peers_connected"] and "last 5 s" not in helps["accel_peers_connected"]


def test_operator_lists_propose_error_and_the_start_lines_accel_field():
    text = (ROOT / "docs" / "OPERATOR.md").read_text()
    assert "`propose_error`" in text
    assert "accel validation only)" not in text
