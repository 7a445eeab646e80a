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


# ---- ops #6: a base_timeout_ms above Core's 60 s cap is the view's timeout, not the cap ------------------
def _first_timer(base_ms):
    from consensus.core import SetTimer
    from consensus.sim import Simulation
    sim = Simulation(n=4, base_timeout_ms=base_ms, validation="software")
    return [a.delay_ms for a in sim.nodes[1].core.start() if isinstance(a, SetTimer)][0]


def test_base_timeout_above_the_cap_is_in_force():
    assert _first_timer(1000.0) == 1000.0
    assert _first_timer(120_000.0) == 120_000.0  # was 60,000: silently capped


def test_doubling_stops_at_the_cap():
    from nacl.signing import SigningKey
    from consensus.core import Config
    keys = tuple(bytes(SigningKey(bytes([i + 1]) * 32).verify_key) for i in range(4))
    small, big = Config(0, keys, 1000.0), Config(0, keys, 120_000.0)
    assert [small.timeout_ms(k) for k in range(8)] == [1000.0, 2000.0, 4000.0, 8000.0, 16000.0, 32000.0,
                                                       60_000.0, 60_000.0]
    assert small.timeout_ms(10**6) == 60_000.0
    assert [big.timeout_ms(k) for k in (0, 1, 50)] == [120_000.0] * 3
