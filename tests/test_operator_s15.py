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


def test_check_config_refuses_what_the_node_refuses(tmp_path, no_accel_env, capsys):
    """`accel check --config` read only [accel]: a file the node refuses at load (an unknown key)
    got "ready: this validator may start", exit 0."""
    path = _file(tmp_path, EXAMPLE.read_text().replace("txs_per_block", "txs_per_blok"))
    assert cli.main(["check", "--config", str(path)]) == 2
    assert "txs_per_blok" in capsys.readouterr().err


def test_check_config_passes_a_file_the_node_loads(tmp_path, no_accel_env, capsys):
    path = _file(tmp_path, EXAMPLE.read_text())
    assert cli.main(["check", "--config", str(path)]) == 0
    assert "ready: this validator may start" in capsys.readouterr().out
