"""Small checks the sixth session's reviews asked for outside their own files: every transport
counter docs/FRAME.md lists is exported as a metric, and device-naming config strings are taken
only as written (no blank or padded value that would match another device or directory)."""
import re
from pathlib import Path

import pytest

from accel.config import AccelConfig, ConfigError
from consensus.metrics import _Transport

ROOT = Path(__file__).resolve().parents[1]


def _documented_counters() -> set[str]:
    text = (ROOT / "docs" / "FRAME.md").read_text()
    table = text.split("### Counters (`Network` attributes)", 1)[1].split("\n## ", 1)[0]
    names = set()
    for row in table.splitlines():
        if row.startswith("| `") and "(gauges)" not in row:
            names.update(re.findall(r"`([a-z_]+)`", row.split("|")[1]))
    return names


def test_every_documented_transport_counter_is_exported():
    documented = _documented_counters()
    assert {"handshake_failures", "handshakes_refused", "pending_address_evicted"} <= documented
    exported = set(_Transport.EVENTS) | {"duplicates"}  # duplicates is its own gauge-like counter metric
    assert documented - exported == set()
    assert exported - documented == set()


@pytest.mark.parametrize("key", ["opencl_device", "cuda_cubin_dir"])
@pytest.mark.parametrize("value", [" ", "\t", " NVIDIA", "NVIDIA ", "gpu\n"])
def test_device_strings_with_surrounding_whitespace_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        AccelConfig(**{key: value})


@pytest.mark.parametrize("key", ["opencl_device", "cuda_cubin_dir"])
def test_device_strings_as_written_are_taken(key):
    assert getattr(AccelConfig(**{key: "NVIDIA H100"}), key) == "NVIDIA H100"
    assert getattr(AccelConfig(**{key: ""}), key) == ""


@pytest.mark.parametrize("argv", [
    ["validate-bench", "--app", "clearing", "--txs", "65537"],
    ["localnet", "--app", "clearing", "--txs-per-block", "65537"],
    ["testnet", "--hosts", "10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4", "--txs-per-block", "100000"],
])
def test_a_clearing_block_past_the_networks_limit_is_refused_before_anything_runs(argv, tmp_path, capsys):
    """Validators refuse a clearing block over MAX_BLOCK_TXS and proposers cap theirs there: a
    benchmark of such a block would report 'did not validate' after building it, and a network
    configured past it would silently propose smaller blocks than asked."""
    from accel.cli import main
    from consensus.apps.clearing_app import MAX_BLOCK_TXS
    if argv[0] == "testnet":
        argv = argv + ["--out", str(tmp_path / "net")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{MAX_BLOCK_TXS:,}" in err and argv[-1 if argv[0] != "testnet" else -3] in err
    assert not (tmp_path / "net").exists()
