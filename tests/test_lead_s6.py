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
