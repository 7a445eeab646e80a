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


def _clearing_config(tmp_path, node_lines: str = "", rpc_lines: str = ""):
    from consensus.localnet import write_configs
    path = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, load="none", rpc_port=0)[0]
    text = path.read_text().replace("[node]\n", "[node]\n" + node_lines, 1)
    if rpc_lines:
        text = text.replace("[rpc]\n", "[rpc]\n" + rpc_lines, 1)
    path.write_text(text)
    return path


def test_a_network_with_its_own_chain_id_takes_only_transactions_signed_for_it(tmp_path):
    """ClearingApp refuses bodies of another chain (8b7cf39), but no validator could be given a
    chain id: every network was chain 1, so a transaction signed for a test network replayed on
    any other. [node] chain_id sets it, /status reports it, the client and `accel tx` sign with it."""
    import asyncio

    from accel.cli import main
    from consensus import client as cl
    from consensus.node import NodeConfig, NodeRunner
    from consensus.rpc import Rpc
    alice = cl.write_key(tmp_path / "alice.json")
    runner = NodeRunner(NodeConfig.load(_clearing_config(tmp_path, "chain_id = 7\n")))

    async def scenario():
        rpc = Rpc(runner, runner.cfg.rpc)
        await rpc.start()
        try:
            url = "http://%s:%d" % runner.cfg.rpc
            c = cl.Client([url])
            chain = await asyncio.to_thread(c.chain_id)
            foreign = (await asyncio.to_thread(c.broadcast, [cl.register(alice)]))[0]
            code = await asyncio.to_thread(main, ["tx", "--node", url, "register", "--key", str(tmp_path / "alice.json")])
            return chain, foreign, code
        finally:
            await rpc.stop()
    try:
        chain, foreign, code = asyncio.run(scenario())
    finally:
        runner.store.close()
    assert chain == 7 and runner.app.chain_id == 7
    assert not foreign["accepted"] and "chain id 1" in foreign["reason"]
    assert code == 0 and len(runner.app.mempool) == 1  # accel tx asked the chain id and signed for 7


@pytest.mark.parametrize("lines, message", [
    ("chain_id = 4294967296\n", "chain_id must be below"),
    ("chain_id = -1\n", "chain_id must be 0 or more"),
    ("txs_per_block = 65537\n", "at most 65536"),
])
def test_node_keys_out_of_their_range_are_one_line(tmp_path, lines, message):
    from consensus.node import NodeConfig
    path = _clearing_config(tmp_path)
    path.write_text(path.read_text().replace("txs_per_block = 10\n", "").replace("[node]\n", "[node]\n" + lines, 1))
    with pytest.raises(ConfigError, match=message) as exc:
        NodeConfig.load(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_node_config_takes_bracketed_ipv6_listen_and_the_total_request_rate(tmp_path):
    from consensus.node import NodeConfig
    path = _clearing_config(tmp_path, rpc_lines="requests_total_per_s = 50.0\n")
    text = path.read_text()
    listen = next(line for line in text.splitlines() if line.startswith("listen"))
    path.write_text(text.replace(listen, 'listen = "[::1]:0"', 1))
    cfg = NodeConfig.load(path)
    assert cfg.listen == ("::1", 0) and cfg.rpc_limits["requests_total_per_s"] == 50.0 and cfg.chain_id == 1


def test_testnet_writes_one_chain_id_for_its_network(tmp_path):
    from consensus.localnet import write_network
    from consensus.node import NodeConfig
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]
    drawn = [NodeConfig.load(p).chain_id for p in write_network(tmp_path / "a", hosts, data_root=str(tmp_path))]
    given = [NodeConfig.load(p).chain_id for p in write_network(tmp_path / "b", hosts, data_root=str(tmp_path),
                                                                 chain_id=9)]
    assert len(set(drawn)) == 1 and given == [9] * 4
    import json
    assert json.loads((tmp_path / "b" / "network.json").read_text())["chain_id"] == 9
    with pytest.raises(ValueError, match="chain-id"):
        write_network(tmp_path / "c", hosts, app="kv", chain_id=3)


def test_certificates_naming_more_signers_than_validators_are_refused_before_a_pass_over_them():
    """A Byzantine validator's frame may carry a QC or TC of 65,535 signers (bbb09a0 decodes them
    as arrays): the core refused them only after a Python pass over every signer (and a set of
    them). Now their count is checked first; the pass is never made (counted with a voters
    sequence that counts its iterations)."""
    from consensus.core import InvalidCertificate
    from consensus.messages import QC, TC, Timeout
    from consensus.sim import Simulation
    core = Simulation(n=4, seed=0, validation="software")._node("v0").core

    class Counting(tuple):
        iterated = 0

        def __iter__(self):
            Counting.iterated += 1
            return super().__iter__()
    voters = Counting(range(65_535))
    qc = QC(bytes(32), 5, 5, voters, bytes(64 * len(voters)))
    with pytest.raises(InvalidCertificate, match="65535 signers"):
        core.qc_certs(qc)
    with pytest.raises(InvalidCertificate, match="65535 signers"):
        core.tc_certs(TC(6, voters, tuple([5] * len(voters)), bytes(64 * len(voters)), qc))
    assert core._malformed(Timeout(6, qc, 1, bytes(64))) == "timeout"
    assert Counting.iterated == 0


def test_validation_runs_gather_named_keys_only_for_registrations_and_cut_as_before():
    """_runs (584fff3) added every transaction's signers to a set, +3 ms on a 10,000-transaction
    block with no registration in it; now the signers are gathered only when a registration asks.
    The cut must be the eager version's on any sequence of operations."""
    import random
    from types import SimpleNamespace

    from consensus.apps import clearing_app as ca
    from consensus.apps import clearing_tx as ctx

    def eager(txs):
        out, regs, run, named = [], [], [], set()
        for i, tx in enumerate(txs):
            if tx.op in ca._COLUMNAR:
                run.append(i)
                named.update(tx.signers)
            elif tx.op == ctx.REGISTER and tx.signers[0] not in named:
                regs.append(i)
            else:
                if regs or run:
                    out.append((regs, run))
                out.append(([i], []))
                regs, run, named = [], [], set()
        if regs or run:
            out.append((regs, run))
        return out
    ops = [ctx.REGISTER, ctx.DEPOSIT, ctx.WITHDRAW, ctx.TRADE, ctx.MARK]
    rng = random.Random(6)
    for _ in range(2000):
        txs = []
        for _ in range(rng.randint(0, 30)):
            op = rng.choice(ops)
            txs.append(SimpleNamespace(op=op, signers=tuple(bytes([rng.randint(0, 5)])
                                                            for _ in range(2 if op == ctx.TRADE else 1))))
        assert ca._runs(txs) == eager(txs)
