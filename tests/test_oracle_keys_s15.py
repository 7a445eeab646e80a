"""Review s15: every clearing network a validator built took the demo's oracles
(clearing_load.ORACLES, seeds bytes([200 + i]) * 32, published in the source) whatever its file
said: on a network `accel testnet` wrote (load = "none", only client transactions) anyone could
sign a quorum mark, move the index within the breaker band and liquidate accounts (a mark signed
with those seeds was committed at height 78). Now such a network names its oracles ([clearing]
oracles, oracle_quorum; testnet makes new ones and writes their key files), the demo's only sign
for load = "builtin", and the oracles are part of the network id."""
import json
import re

import pytest
from nacl.signing import SigningKey

from accel.config import ConfigError
from consensus import client as cl
from consensus.apps.clearing_load import ORACLES, T0
from consensus.localnet import write_configs, write_network
from consensus.node import NodeConfig, NodeRunner

HOSTS = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
VOLS = {1: 0.6, 2: 0.6, 3: 0.6, 9: 0.6}


def _testnet(tmp_path):
    out = tmp_path / "net"
    paths = write_network(out, HOSTS, data_root=str(tmp_path / "data"), validation="software")
    return out, paths, json.loads((out / "network.json").read_text())


def test_a_testnet_network_takes_marks_of_its_own_oracles_and_not_of_the_demos(tmp_path):
    out, paths, net = _testnet(tmp_path)
    runner = NodeRunner(NodeConfig.load(paths[0]))  # the app as the validator builds it
    try:
        chain = net["chain_id"]
        forged = cl.mark(ORACLES[:2], "BTC", 60_000.0, 1, T0, VOLS, chain)
        assert runner.app.submit_many([forged])[0].startswith("mark signed by 0 oracle(s)")
        # the key files testnet wrote (0600, as `accel tx mark --oracle FILE` reads them) sign for it
        assert net["oracle_quorum"] == 2 and len(net["oracles"]) == 3
        files = [out / o["key_file"] for o in net["oracles"]]
        assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
        oracles = [cl.read_key(f) for f in files]
        assert [bytes(k.verify_key).hex() for k in oracles] == [o["public_key"] for o in net["oracles"]]
        assert runner.app.submit_many([cl.mark(oracles[1:], "BTC", 60_000.0, 1, T0, VOLS, chain)]) == [""]
        assert runner.app.submit_many([cl.mark(oracles[:1], "BTC", 60_000.0, 2, T0, VOLS, chain)])[0] \
            == "mark signed by 1 oracle(s), 2 needed"
    finally:
        runner.close()
    # every validator's file names the same oracles
    assert len({NodeConfig.load(p).oracles for p in paths}) == 1


def _replace_oracles(path, keys, quorum=2) -> None:
    text = path.read_text()
    text, n = re.subn(r"oracles = \[[^\]]*\]\noracle_quorum = \d+\n",
                      f"oracles = {json.dumps([k.hex() for k in keys])}\noracle_quorum = {quorum}\n", text)
    assert n == 1
    path.write_text(text)


DEMO = [bytes(k.verify_key) for k in ORACLES]
FRESH = [bytes(SigningKey.generate().verify_key) for _ in range(3)]


@pytest.mark.parametrize("keys,quorum,message", [
    (DEMO, 2, r"\[clearing\] oracles\[0\] [0-9a-f]{64} is a key whose seed is published"),
    (FRESH[:2] + DEMO[2:], 2, r"\[clearing\] oracles\[2\] [0-9a-f]{64} is a key whose seed is published"),
    ([bytes(SigningKey(bytes([7]) * 32).verify_key)], 1, r"\[clearing\] oracles\[0\] .* published or guessable"),
    # the identity: of small order, so anyone signs for it
    ([bytes(32)] + FRESH[:2], 2, r"\[clearing\] oracles\[0\] 0{64} is not an oracle key"),
    (FRESH[:2] + FRESH[:1], 2, r"\[clearing\] oracles\[2\] is oracles\[0\] listed twice"),
    (FRESH, 4, r"\[clearing\] oracle_quorum 4: give how many of the 3 oracles sign a mark"),
    (FRESH, 0, r"\[clearing\] oracle_quorum 0"),
])
def test_a_load_none_file_with_oracles_anyone_can_sign_for_is_refused_at_load(tmp_path, keys, quorum, message):
    path = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, load="none")[0]
    _replace_oracles(path, keys, quorum)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + r":\d+: " + message) as err:
        NodeConfig.load(path)
    assert "\n" not in str(err.value)


def test_a_load_none_file_without_oracles_is_refused_with_what_to_write(tmp_path):
    path = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, load="none")[0]
    text = path.read_text()
    path.write_text(re.sub(r"\n\[clearing\]\noracles = \[[^\]]*\]\noracle_quorum = \d+\n", "\n", text))
    with pytest.raises(ConfigError) as err:
        NodeConfig.load(path)
    line = text.splitlines().index('load = "none"') + 1
    assert str(err.value).startswith(f"{path}:{line}: ") and "\n" not in str(err.value)
    assert "needs [clearing] oracles" in str(err.value) and "oracle_quorum" in str(err.value)


@pytest.mark.parametrize("app,load", [("clearing", "builtin"), ("kv", "none")])
def test_oracles_where_they_would_not_be_read_are_refused(tmp_path, app, load):
    """load = "builtin" signs its marks with the demo's oracles, and the key-value app has none."""
    path = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, app=app, load=load)[0]
    path.write_text(path.read_text() + f"\n[clearing]\noracles = {json.dumps([k.hex() for k in FRESH])}\n")
    with pytest.raises(ConfigError, match=re.escape(str(path)) + r":\d+: \[clearing\] oracles = .* would not be read"):
        NodeConfig.load(path)


def test_validators_with_other_oracles_are_on_other_networks(tmp_path):
    out, paths, _ = _testnet(tmp_path)
    text = paths[0].read_text()
    variants = {"same": FRESH, "reordered": FRESH[::-1], "other": [bytes(SigningKey.generate().verify_key)] + FRESH[1:]}
    ids = {}
    for name, keys in [*variants.items(), ("quorum 3", FRESH)]:
        path = tmp_path / f"{name}.toml"
        path.write_text(text.replace(str(tmp_path / "data"), str(tmp_path / name)))
        _replace_oracles(path, keys, 3 if name == "quorum 3" else 2)
        runner = NodeRunner(NodeConfig.load(path))
        try:
            ids[name] = runner.network
        finally:
            runner.close()
    assert ids["same"] == ids["reordered"]  # a set: the order it is written in does not matter
    assert len({ids["same"], ids["other"], ids["quorum 3"]}) == 3


def test_bulk_genesis_accounts_on_a_network_of_its_own_oracles(tmp_path):
    """[node] genesis_accounts marks its index as the genesis's oracles would: it named the demo's,
    so a load = "none" network with bulk accounts could not start."""
    path = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, load="none", accounts=10)[0]
    runner = NodeRunner(NodeConfig.load(path))
    try:
        genesis = runner.app.genesis.clearing
        assert len(genesis.accounts) == 10 and "IDX" in genesis.marks and genesis.violations() == []
    finally:
        runner.close()
