"""Session 15 review of the operator's surface (/tmp/s15/docwalk): each test here failed before its
fix."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from accel import cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "validator.example.toml"


@pytest.fixture
def no_accel_env(monkeypatch):
    for name in list(os.environ):
        if name.upper().startswith("ACCEL_"):
            monkeypatch.delenv(name)


def _file(tmp_path, text: str) -> Path:
    path = tmp_path / "validator.toml"
    path.write_text(text.replace('backend = "auto" ', 'backend = "cpu" '))
    path.chmod(0o600)
    return path


def _fresh(tmp_path) -> str:
    """The example file with new keys (its own are published: refused) and this validator's seed."""
    from nacl.signing import SigningKey

    from consensus.node import NodeConfig
    text = EXAMPLE.read_text()
    cfg = NodeConfig.load(_file(tmp_path, text))
    seeds = [os.urandom(32) for _ in cfg.keys]
    for old, seed in zip(cfg.keys, seeds):
        text = text.replace(old.hex(), bytes(SigningKey(seed).verify_key).hex())
    return text.replace(cfg.seed.hex(), seeds[cfg.index].hex())


def test_check_config_refuses_what_the_node_refuses(tmp_path, no_accel_env, capsys):
    """`accel check --config` read only [accel]: a file the node refuses at load (an unknown key)
    got "ready: this validator may start", exit 0."""
    path = _file(tmp_path, _fresh(tmp_path).replace("txs_per_block", "txs_per_blok"))
    assert cli.main(["check", "--config", str(path)]) == 2
    assert "txs_per_blok" in capsys.readouterr().err


def test_check_config_passes_a_file_the_node_loads(tmp_path, no_accel_env, capsys):
    path = _file(tmp_path, _fresh(tmp_path))
    assert cli.main(["check", "--config", str(path)]) == 0
    assert "ready: this validator may start" in capsys.readouterr().out


def test_check_config_refuses_a_key_anyone_can_sign_with(tmp_path, no_accel_env, capsys):
    """`accel check --config` passed a file whose seed is one byte repeated, or whose keys are
    published, which `accel node` refuses (review s15, second round)."""
    from nacl.signing import SigningKey

    from consensus.node import NodeConfig
    path = _file(tmp_path, _fresh(tmp_path))
    cfg = NodeConfig.load(path)
    seed = b"\x11" * 32
    key = bytes(SigningKey(seed).verify_key).hex()
    path.write_text(path.read_text().replace(cfg.seed.hex(), seed.hex()).replace(cfg.keys[cfg.index].hex(), key))
    assert cli.main(["check", "--config", str(path)]) == 2
    assert "[node] seed" in capsys.readouterr().err
    assert cli.main(["check", "--config", str(_file(tmp_path, EXAMPLE.read_text()))]) == 2
    assert "is a key whose seed is published" in capsys.readouterr().err


@pytest.mark.parametrize("error, status", [(OSError(32, "Broken pipe"), 1), (ValueError("a bug"), 1),
                                           (cli.config.ConfigError("x.toml:3: [node] index: bad"), 2)])
def test_a_running_validators_failure_is_not_a_configuration_error(monkeypatch, tmp_path, capsys, error, status):
    """Every OSError or ValueError out of a running validator exited 2, which the systemd unit
    takes for a configuration error and never restarts (review s15)."""
    from consensus import node

    def fail(*args):
        raise error
    monkeypatch.setattr(node, "run_node", fail)
    path = tmp_path / "v.toml"
    path.write_text("")
    assert cli.main(["node", "--config", str(path)]) == status
    assert str(error) in capsys.readouterr().err
