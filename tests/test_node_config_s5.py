"""A validator's file: values the node would run with but cannot use are one-line ConfigErrors
naming the file, line and key (review s5: each was accepted, or an OverflowError traceback at start)."""
import re

import pytest

from accel.config import ConfigError
from consensus.localnet import write_configs
from consensus.node import NodeConfig


def _config(tmp_path):
    return write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, rpc_port=0)[0]


@pytest.mark.parametrize("key, old, new, why", [
    ("txs_per_block", "txs_per_block = 10", "txs_per_block = 0", "must be above 0"),
    ("txs_per_block", "txs_per_block = 10", "txs_per_block = -5", "must be above 0"),
    ("base_timeout_ms", "base_timeout_ms = 1000.0", "base_timeout_ms = nan", "finite number"),
    ("base_timeout_ms", "base_timeout_ms = 1000.0", "base_timeout_ms = -1.0", "must be above 0"),
    ("base_timeout_ms", "base_timeout_ms = 1000.0", "base_timeout_ms = " + "9" * 400, "finite number"),
    ("delay_ms", "delay_ms = 0.0", "delay_ms = inf", "finite number"),
    ("delay_ms", "delay_ms = 0.0", "delay_ms = -3.0", "must be 0 or more"),
    ("load_seed", "load_seed = 1", "load_seed = -1", "must be 0 or more"),
    ("load_seed", "load_seed = 1", "load_seed = 18446744073709551616", "must be below"),
    ("crash_after_blocks", "load_seed = 1", "load_seed = 1\ncrash_after_blocks = -2", "must be 0 or more"),
])
def test_node_values_it_cannot_run_with_are_refused(tmp_path, key, old, new, why):
    path = _config(tmp_path)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        NodeConfig.load(path)
    message = str(err.value)
    assert "\n" not in message and f"[node] {key}" in message and why in message
    line = int(re.match(rf"{re.escape(str(path))}:(\d+):", message).group(1))
    assert path.read_text().splitlines()[line - 1].startswith(key)


def test_rpc_rate_must_be_finite(tmp_path):
    path = _config(tmp_path)
    path.write_text(path.read_text() + "requests_per_s = inf\n")
    with pytest.raises(ConfigError, match=r"\[rpc\] requests_per_s must be a finite number"):
        NodeConfig.load(path)


@pytest.mark.parametrize("port", ["65536", "99999999999999999999", "８０"])
def test_a_listen_port_past_65535_or_not_ascii_is_refused(tmp_path, port):
    path = _config(tmp_path)
    text = path.read_text()
    listen = re.search(r'\[node\][^\[]*?listen = "127\.0\.0\.1:(\d+)"', text).group(1)
    path.write_text(text.replace(f'listen = "127.0.0.1:{listen}"', f'listen = "127.0.0.1:{port}"', 1))
    with pytest.raises(ConfigError, match=r"\[node\] listen"):
        NodeConfig.load(path)


@pytest.mark.parametrize("table, host", [("metrics", "127.0.0.1"), ("metrics", "0.0.0.0"), ("rpc", "")])
def test_two_listeners_on_one_port_are_refused_before_binding(tmp_path, table, host):
    path = _config(tmp_path)
    text = path.read_text()
    port = re.search(r'listen = "127\.0\.0\.1:(\d+)"', text).group(1)  # [node] listen
    if table == "rpc":
        text = re.sub(r'\[rpc\]\nlisten = "[^"]*"', f'[rpc]\nlisten = "{host}:{port}"', text)
    else:
        text += f'\n[metrics]\nlisten = "{host}:{port}"\n'
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"\[{table}\] listen {re.escape(host)}:{port} takes \[node\] listen's port"):
        NodeConfig.load(path)


def test_distinct_ports_and_port_zero_still_load(tmp_path):
    path = _config(tmp_path)
    path.write_text(path.read_text() + '\n[metrics]\nlisten = "127.0.0.1:0"\n')
    cfg = NodeConfig.load(path)
    assert cfg.metrics == ("127.0.0.1", 0) and cfg.rpc[1] != cfg.listen[1]


def test_the_client_apis_bounds_are_keys_of_the_file(tmp_path):
    from consensus.rpc import Rpc
    path = _config(tmp_path)
    path.write_text(path.read_text() + "max_connections_per_client = 3\nidle_timeout_s = 5.0\nsubmit_share_s = 0.05\n")
    cfg = NodeConfig.load(path)
    assert cfg.rpc_limits["max_connections"] is None  # 0, the default: Rpc's own choice
    rpc = Rpc(None, cfg.rpc, **cfg.rpc_limits)
    assert (rpc.max_per_client, rpc.idle_timeout_s, rpc.work.share, rpc.work.total) == (3, 5.0, 0.05, 0.4)
    assert rpc.max_connections > 0
    path.write_text(path.read_text() + "max_connections = 7\n")
    assert Rpc(None, cfg.rpc, **NodeConfig.load(path).rpc_limits).max_connections == 7
    path.write_text(path.read_text().replace("idle_timeout_s = 5.0", "idle_timeout_s = 0.0"))
    with pytest.raises(ConfigError, match=r"\[rpc\] idle_timeout_s must be above 0"):
        NodeConfig.load(path)
