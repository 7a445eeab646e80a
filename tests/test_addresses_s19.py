"""Review s19: a peer address no validator can be reached at (port 0, 0.0.0.0, ::) was loaded silently,
and `accel testnet --hosts 0.0.0.0,...` wrote one (low: one validator unreachable, the network then
ran with no fault to spare)."""
import pathlib
import re

import pytest

from accel.config import ConfigError
from consensus.localnet import write_configs, write_network
from consensus.node import NodeConfig


@pytest.mark.parametrize("peer", ["127.0.0.1:0", "0.0.0.0:40555", "[::]:40555"])
def test_a_peer_address_nobody_can_dial_is_refused(tmp_path, peer):
    p = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, load="none", rpc_port=0)[0]
    text = p.read_text()
    p.write_text(re.sub(r'addresses = \[("[^"]*"), "[^"]*"', rf'addresses = [\1, "{peer}"', text))
    p.chmod(0o600)
    with pytest.raises(ConfigError):
        NodeConfig.load(p)


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_accel_testnet_refuses_an_unspecified_host(tmp_path, host):
    """--hosts is 'as the others reach it': 0.0.0.0 / :: reach each dialler's own machine."""
    with pytest.raises(ValueError):
        write_network(tmp_path / "net", [host, "10.0.0.2", "10.0.0.3", "10.0.0.4"])


def _config(tmp_path) -> pathlib.Path:
    return write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, load="none", rpc_port=0)[0]


def test_the_api_on_the_peers_port_however_spelt_is_refused_at_load(tmp_path):
    """[rpc] listen 127.1:P beside [node] listen 127.0.0.1:P loaded, then exited 1 at bind (a service
    manager retries that); as the system reads them they are one address."""
    p = _config(tmp_path)
    text = p.read_text()
    port = re.search(r'\[node\][^\[]*listen = "127\.0\.0\.1:(\d+)"', text).group(1)
    p.write_text(re.sub(r'(\[rpc\]\nlisten = )"[^"]*"', rf'\1"127.1:{port}"', text))
    p.chmod(0o600)
    with pytest.raises(ConfigError, match=r"\[rpc\] listen 127\.1:\d+ takes \[node\] listen's port"):
        NodeConfig.load(p)


def test_a_body_limit_error_names_the_line_of_the_key_given(tmp_path):
    p = _config(tmp_path)
    text = p.read_text()
    p.write_text(text.replace("[rpc]\n", "[rpc]\nmax_body_bytes = 100000000\n"))
    p.chmod(0o600)
    line = p.read_text().splitlines().index("max_body_bytes = 100000000") + 1
    with pytest.raises(ConfigError, match=rf":{line}: \[rpc\] max_body_bytes_in_flight"):
        NodeConfig.load(p)


def test_accel_localnet_says_a_dir_that_is_a_file_is_not_a_directory(tmp_path, capsys):
    from accel.cli import main
    f = tmp_path / "file"
    f.write_text("")
    assert main(["localnet", "--dir", str(f), "--blocks", "1"]) == 2
    assert "--dir" in capsys.readouterr().err
