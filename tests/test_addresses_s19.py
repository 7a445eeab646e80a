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
