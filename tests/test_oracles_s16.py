"""Sixteenth session, the oracle set as an operator handles it (leads of the fifteenth): testnet
writes any number of oracles and quorum (--oracles, --oracle-quorum), a validator refuses an
oracle key that is also a validator's, and /status shows the oracles its genesis names (the
network id only tells that two validators differ, not which oracles either one trusts)."""
import hashlib
import json

import pytest
from nacl.signing import SigningKey

from accel import cli
from accel.config import ConfigError
from consensus import client as cl
from consensus.apps.clearing_load import T0
from consensus.localnet import write_network
from consensus.node import NodeConfig, NodeRunner
from tests.test_oracle_keys_s15 import HOSTS, VOLS, _replace_oracles


def test_testnet_writes_the_oracles_and_quorum_asked_for(tmp_path, capsys):
    out = tmp_path / "net"
    assert cli.main(["testnet", "--hosts", ",".join(HOSTS), "--out", str(out), "--data-root", str(tmp_path / "d"),
                     "--validation", "software", "--oracles", "5", "--oracle-quorum", "3"]) == 0
    assert "a quorum of 3 signs each mark" in capsys.readouterr().out
    net = json.loads((out / "network.json").read_text())
    assert net["oracle_quorum"] == 3 and len(net["oracles"]) == 5
    assert sorted(p.name for p in out.glob("oracle*.json")) == [f"oracle{j}.json" for j in range(5)]
    cfg = NodeConfig.load(out / "node0.toml")
    assert cfg.oracle_quorum == 3 and [k.hex() for k in cfg.oracles] == [o["public_key"] for o in net["oracles"]]
    oracles = [cl.read_key(out / o["key_file"]) for o in net["oracles"]]
    runner = NodeRunner(cfg)
    try:
        assert runner.app.submit_many([cl.mark(oracles[:2], "BTC", 60_000.0, 1, T0, VOLS, net["chain_id"])])[0] \
            == "mark signed by 2 oracle(s), 3 needed"
        assert runner.app.submit_many([cl.mark(oracles[2:], "BTC", 60_000.0, 1, T0, VOLS, net["chain_id"])]) == [""]
        assert runner.status()["oracles"] == {"keys": sorted(o["public_key"] for o in net["oracles"]), "quorum": 3}
    finally:
        runner.close()


def test_testnet_defaults_and_a_single_oracle(tmp_path):
    write_network(tmp_path / "a", HOSTS, data_root="/d")
    net = json.loads((tmp_path / "a" / "network.json").read_text())
    assert net["oracle_quorum"] == 2 and len(net["oracles"]) == 3
    write_network(tmp_path / "b", HOSTS, data_root="/d", oracles=1)  # the quorum follows: all of one
    net = json.loads((tmp_path / "b" / "network.json").read_text())
    assert net["oracle_quorum"] == 1 and len(net["oracles"]) == 1
    assert NodeConfig.load(tmp_path / "b" / "node3.toml").oracle_quorum == 1


@pytest.mark.parametrize("kwargs,message", [
    ({"oracles": 2, "oracle_quorum": 3}, "--oracle-quorum 3: more than the 2 oracles"),
    ({"oracles": 256}, "--oracles 256: give 1..255"),
    ({"oracle_quorum": 0}, "--oracle-quorum 0: give 1..255"),
    ({"oracles": 4, "load": "builtin"}, "--oracles 4: only a clearing network with --load none"),
    ({"oracle_quorum": 1, "app": "kv"}, "--oracle-quorum 1: only a clearing network with --load none"),
])
def test_testnet_refuses_an_oracle_set_that_cannot_sign_and_writes_nothing(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        write_network(tmp_path / "n", HOSTS, data_root="/d", **kwargs)
    assert not list((tmp_path / "n").glob("*"))


def test_the_cli_refuses_a_quorum_over_the_oracles_in_one_line(tmp_path, capsys):
    assert cli.main(["testnet", "--hosts", ",".join(HOSTS), "--out", str(tmp_path / "n"),
                     "--oracles", "2", "--oracle-quorum", "3"]) != 0
    err = capsys.readouterr().err
    assert "--oracle-quorum 3: more than the 2 oracles" in err and "Traceback" not in err


def test_an_oracle_key_that_is_a_validators_is_refused_at_load(tmp_path):
    out = tmp_path / "net"
    paths = write_network(out, HOSTS, data_root=str(tmp_path / "d"), validation="software")
    net = json.loads((out / "network.json").read_text())
    validator = bytes.fromhex(net["validators"][2]["public_key"])
    own = [bytes.fromhex(o["public_key"]) for o in net["oracles"]]
    _replace_oracles(paths[0], [own[0], validator, own[2]])
    with pytest.raises(ConfigError, match=r"oracles\[1\] is \[network\] keys\[2\], a validator's key"):
        NodeConfig.load(paths[0])
    _replace_oracles(paths[0], [own[0], bytes(SigningKey(hashlib.sha256(b"a new oracle").digest()).verify_key), own[2]])
    assert NodeConfig.load(paths[0]).oracles[1] != validator


def test_status_of_a_kv_validator_names_no_oracles(tmp_path):
    paths = write_network(tmp_path / "kv", HOSTS, data_root=str(tmp_path / "d"), app="kv", validation="software")
    runner = NodeRunner(NodeConfig.load(paths[0]))
    try:
        assert "oracles" not in runner.status() and runner.status()["app"] == "kv"
    finally:
        runner.close()


def test_status_lists_one_networks_oracles_alike_whatever_order_a_file_gives(tmp_path):
    """Review s16: the network id takes the oracles as a set (sorted), and /status listed them in
    each file's order: two validators of one network showed two lists."""
    out = tmp_path / "net"
    paths = write_network(out, HOSTS, data_root=str(tmp_path / "d"), validation="software")
    keys = [o["public_key"] for o in json.loads((out / "network.json").read_text())["oracles"]]
    text = paths[1].read_text()
    assert json.dumps(keys) in text
    paths[1].write_text(text.replace(json.dumps(keys), json.dumps(keys[::-1])))
    a, b = NodeRunner(NodeConfig.load(paths[0])), NodeRunner(NodeConfig.load(paths[1]))
    try:
        sa, sb = a.status(), b.status()
        assert sa["network_id"] == sb["network_id"] and sa["oracles"] == sb["oracles"]
        assert sa["oracles"]["keys"] == sorted(keys)
    finally:
        a.close()
        b.close()
