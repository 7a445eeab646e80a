"""Review s23 of the operator and client surface:
1. a validator file without [accel] took accel.toml of the working directory: `accel check
   --config /etc/accel/validator.toml`, as OPERATOR.md has it, run from a shell elsewhere said
   "ready" on the C fallback while the node under systemd (in /etc/accel) ran backend = "cuda".
   Now $ACCEL_CONFIG, else the accel.toml beside the file, for the node and every command alike;
2. `--config FILE` took a misspelt [acel] table for no [accel] table (the defaults, "ready") where
   $ACCEL_CONFIG refuses it;
3. an [accel] value as a top-level dotted key or inline table was reported at line 0, and
   [[accel]] as a key "outside any table";
4. `accel build-cuda --out` of a file or of a directory that cannot be made: a bare OSError after
   the build had begun;
5. a 405 without Allow, and a body in UTF-16 or with a BOM taken for the strict JSON it must be."""
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from accel import config
from accel.config import ConfigError
from consensus.localnet import write_configs
from consensus.node import NodeConfig
from tests.test_api_review_s22 import _served

ROOT = Path(__file__).resolve().parents[1]
ACCEL = [sys.executable, "-m", "accel.cli"]
CLEAN = {k: v for k, v in os.environ.items() if not k.startswith("ACCEL_")} | {"PYTHONPATH": str(ROOT)}


def _validator_file(tmp_path) -> Path:
    """A validator's file without [accel] (accel testnet's kind), in its own directory."""
    d = tmp_path / "etc"
    d.mkdir()
    path = write_configs(d, 4, 10, "software", 0.0, 1000.0, load="none", rpc_port=0)[0]
    assert "[accel]" not in path.read_text()
    return path


def test_a_validator_file_without_accel_reads_the_accel_toml_beside_it_wherever_it_runs(tmp_path, monkeypatch):
    path = _validator_file(tmp_path)
    (path.parent / "accel.toml").write_text("[accel]\nthreads = 3\n")
    shell = tmp_path / "home"
    shell.mkdir()
    (shell / "accel.toml").write_text("[accel]\nthreads = 2\n")
    monkeypatch.chdir(shell)
    for k in [k for k in os.environ if k.startswith("ACCEL_")]:
        monkeypatch.delenv(k)
    assert NodeConfig.load(path).accel.threads == 3  # was 2: the shell's
    monkeypatch.setenv("ACCEL_CONFIG", str(shell / "accel.toml"))
    assert NodeConfig.load(path).accel.threads == 2  # $ACCEL_CONFIG first, as for any accel program
    monkeypatch.delenv("ACCEL_CONFIG")
    (path.parent / "accel.toml").unlink()
    assert NodeConfig.load(path).accel == config.AccelConfig()  # neither: the defaults


def test_the_accel_toml_beside_a_linked_validator_file_is_the_link_s_neighbour(tmp_path, monkeypatch):
    path = _validator_file(tmp_path)
    etc = tmp_path / "etc-accel"
    etc.mkdir()
    (etc / "validator.toml").symlink_to(path)
    (etc / "accel.toml").write_text("[accel]\ngpu_min_batch = 7\n")
    for k in [k for k in os.environ if k.startswith("ACCEL_")]:
        monkeypatch.delenv(k)
    assert NodeConfig.load(etc / "validator.toml").accel.gpu_min_batch == 7  # was -1: the target's directory


def test_a_validator_file_read_from_stdin_takes_the_accel_toml_beside_the_file(tmp_path):
    path = _validator_file(tmp_path)
    (path.parent / "accel.toml").write_text("[accel]\ngpu_min_batch = 7\n")
    probe = "from consensus.node import NodeConfig; print(NodeConfig.load('/dev/stdin').accel.gpu_min_batch)"
    with open(path) as fh:
        r = subprocess.run([sys.executable, "-c", probe], stdin=fh, cwd=tmp_path, env=CLEAN, capture_output=True,
                           text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "7", r.stderr  # (was -1: /dev/accel.toml)


def test_accel_info_with_a_validator_file_reports_what_the_node_runs_from_any_directory(tmp_path):
    path = _validator_file(tmp_path)
    (path.parent / "accel.toml").write_text('[accel]\nbackend = "cpu"\n')
    shell = tmp_path / "home"
    shell.mkdir()
    (shell / "accel.toml").write_text('[accel]\nbackend = "opencl"\n')
    seen = []
    for cwd in (shell, path.parent):
        r = subprocess.run(ACCEL + ["info", "--json", "--config", str(path)], cwd=cwd, env=CLEAN,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        seen.append(json.loads(r.stdout)["configured_backend"])
    assert seen == ["cpu", "cpu"]


@pytest.mark.parametrize("text, message", [('[acel]\nbackend = "cuda"\n', ":1: unknown table [acel]"),
                                           ('[accel]\nbackend = "cpu"\n[extra]\nx = 1\n', ":3: unknown table [extra]")])
def test_config_flag_reads_an_accel_toml_as_strictly_as_accel_config(tmp_path, text, message):
    path = tmp_path / "gpu.toml"
    path.write_text(text)
    for command in (["info", "--config", str(path)], ["check", "--config", str(path)]):
        r = subprocess.run(ACCEL + command, cwd=tmp_path, env=CLEAN, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (command, r.stderr)


@pytest.mark.parametrize("text, line, words", [
    ('accel.backend = "bogus"\n', 1, "backend must be one of"),
    ('# the GPU\n\naccel = { backend = "bogus" }\n', 3, "backend must be one of"),
    ('[accel]\nthreads = { n = 4 }\n', 2, "threads must be an integer"),
    ('[[accel]]\nbackend = "cpu"\n', 1, "[[accel]] is an array of tables; write one [accel] table")])
def test_an_accel_toml_error_names_its_line(tmp_path, text, line, words):
    path = tmp_path / "accel.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        config.load(path, env={})
    assert f"accel.toml:{line}:" in str(err.value) and (words is None or words in str(err.value)), str(err.value)


@pytest.mark.parametrize("extra, words", [('\n[accel]\nthreads = { n = 4 }\n', "threads must be an integer"),
                                          ('\n[[accel]]\nbackend = "cpu"\n', "[[accel]] is an array of tables")])
def test_a_validator_file_s_accel_error_names_its_line(tmp_path, extra, words):
    path = _validator_file(tmp_path)
    text = path.read_text() + extra
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        NodeConfig.load(path)
    line = len(text.splitlines()) - 1  # the table's line, or its value's
    assert f"{path.name}:{line}:" in str(err.value) or f"{path.name}:{line + 1}:" in str(err.value), str(err.value)
    assert words in str(err.value)


def test_build_cuda_out_that_is_no_directory_is_refused_before_the_build_naming_the_flag(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, words in ((afile, "not a directory"), (afile / "sub", "cannot make the directory")):
        r = subprocess.run(ACCEL + ["build-cuda", "--arch", "sm_90", "--out", str(out)], env=CLEAN,
                           capture_output=True, text=True, timeout=300)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 2 and f"--out {out}: {words}" in last and "building" not in r.stderr, r.stderr


async def _raw(port: int, data: bytes) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(data)
    out = await r.read()
    w.close()
    return out


def _post(body: bytes) -> bytes:
    return b"POST /txs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def test_a_405_names_the_allowed_method_and_a_body_must_be_utf8_without_a_bom(tmp_path):
    async def scenario(port):
        return [await _raw(port, b"GET /broadcast_tx_sync HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
                await _raw(port, _post('{"hashes": []}'.encode("utf-16"))),
                await _raw(port, _post(b'\xef\xbb\xbf{"hashes": []}')),
                await _raw(port, _post(b'{"hashes": []}'))]
    wrong, utf16, bom, plain = _served(tmp_path, scenario)
    head, body = wrong.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 405") and b"\r\nAllow: POST" in head and b"(allowed: POST)" in body, wrong
    for answer in (utf16, bom):
        assert answer.startswith(b"HTTP/1.1 400") and b"not JSON in UTF-8" in answer, answer
    assert plain.startswith(b"HTTP/1.1 200"), plain
