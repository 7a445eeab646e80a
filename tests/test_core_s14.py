"""Session 14 fixes in the core and node (/tmp/s14/ops items 1, 5, 6): each test here failed before its fix."""
import pytest

from accel.config import ConfigError
from consensus.localnet import write_configs
from consensus.node import NodeConfig

pytestmark = pytest.mark.usefixtures("quiet_logs")


def _kv_file(tmp_path):
    path = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, app="kv", rpc_port=0)[0]
    assert 'app = "kv"' in path.read_text() and "sig_cache = true" in path.read_text()
    return path


# ---- ops #5: sig_cache is read by the clearing app only --------------------------------------------------
def test_sig_cache_with_kv_is_refused(tmp_path):
    path = _kv_file(tmp_path)
    NodeConfig.load(path)  # the default (true) is fine
    path.write_text(path.read_text().replace("sig_cache = true", "sig_cache = false"))
    with pytest.raises(ConfigError, match=r'sig_cache = False would not be read: only with app = "clearing"'):
        NodeConfig.load(path)
