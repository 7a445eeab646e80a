"""What an operator runs and watches (issue: one TOML file per validator with [accel], GPU
failures redone on the C fallback and counted, Prometheus metrics, structured logs)."""
import io
import json
import logging
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import accel
from accel import config, dispatch
from accel.backends import Backend
from accel.config import AccelConfig, ConfigError
from consensus.apps.kv import Verdict
from consensus.localnet import Localnet, _free_ports
from consensus.metrics import NodeMetrics
from consensus.node import SCHEMA, NodeConfig, configure_logging

DOCS = Path(__file__).resolve().parents[1] / "docs"
EXAMPLE = DOCS / "validator.example.toml"


@pytest.fixture(autouse=True)
def no_accel_variables(monkeypatch):
    """ACCEL_* variables override every file; these tests set the ones they need."""
    for name in ["ACCEL_CONFIG"] + ["ACCEL_" + key.upper() for key in config.KEYS]:
        monkeypatch.delenv(name, raising=False)


# ---- the validator's file -----------------------------------------------------------------------
def test_the_example_file_loads_and_every_key_is_documented():
    cfg = NodeConfig.load(EXAMPLE)
    assert cfg.accel == AccelConfig(backend="auto") and cfg.metrics == ("127.0.0.1", 9464)
    assert cfg.log_format == "json" and len(cfg.keys) == len(cfg.addresses) == 4
    operator = (DOCS / "OPERATOR.md").read_text()
    example = EXAMPLE.read_text()
    for table, keys in [*SCHEMA.items(), ("accel", config.KEYS)]:
        assert f"## [{table}]" in operator
        for key in keys:
            assert f"| `{key}` |" in operator, f"[{table}] {key} is not in docs/OPERATOR.md"
            assert re.search(rf"^{key} = ", example, re.M), f"[{table}] {key} is not in the example"


@pytest.mark.parametrize("edit,message", [
    (("txs_per_block = 1000", "txs_per_blok = 1000"), r":14: unknown \[node\] key 'txs_per_blok'"),
    (("txs_per_block = 1000", 'txs_per_block = "1000"'), r":14: \[node\] txs_per_block must be an integer"),
    (('log_format = "json"', 'log_format = "xml"'), r":18: \[node\] log_format must be one of text, json"),
    (("gpu_fallback = true", 'gpu_fallback = "yes"'), r":43: gpu_fallback must be true or false"),
    (("threads = 0", "thread = 0"), r":39: unknown \[accel\] key 'thread'"),
    (("[metrics]", "[metric]"), r":46: unknown table or key 'metric'"),
    (('listen = "127.0.0.1:9464"', 'listen = "9464"'), r":48: \[metrics\] listen: '9464' is not \"host:port\""),
    (("index = 0", "index = 1"), r":9: \[node\] seed's public key is not \[network\] keys\[1\]"),
    (("sig_cache = true", "sig_cache = 1"), r":19: \[node\] sig_cache must be true or false"),
    (("crash_after_blocks = 5", "crash_after_blocks = true"), r":20: \[node\] crash_after_blocks must be an integer"),
    (("mark_grace_ms = 500.0", "mark_grace_ms = -1.0"), r":27: \[node\] mark_grace_ms must be 0 or more"),
    (("mark_grace_ms = 500.0", "mark_grace_ms = inf"), r":27: \[node\] mark_grace_ms"),
])
def test_a_bad_file_names_its_line(tmp_path, edit, message):
    path = tmp_path / "validator.toml"
    path.write_text(EXAMPLE.read_text().replace(*edit))
    with pytest.raises(ConfigError, match=re.escape(str(path)) + message):
        NodeConfig.load(path)


def test_the_accel_table_replaces_accel_toml_and_the_environment_still_overrides(tmp_path, monkeypatch):
    (tmp_path / "accel.toml").write_text('[accel]\nbackend = "opencl"\nthreads = 3\n')
    monkeypatch.setenv("ACCEL_CONFIG", str(tmp_path / "accel.toml"))
    path = tmp_path / "validator.toml"
    path.write_text(EXAMPLE.read_text().replace('backend = "auto"', 'backend = "cpu"'))
    assert config.use(NodeConfig.load(path).accel) is config.get()
    assert (config.get().backend, config.get().threads) == ("cpu", 0)  # nothing from accel.toml
    monkeypatch.setenv("ACCEL_THREADS", "2")
    assert NodeConfig.load(path).accel.threads == 2


def test_localnet_writes_the_accel_table_from_its_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCEL_THREADS", "1")
    config.reload()
    net = Localnet(4, 1, 10, "cpu", "accel", 0.0, str(tmp_path), gpu_min_batch=0, metrics_port=9100)
    assert "ACCEL_THREADS" not in net.env  # the validators run what their files say
    monkeypatch.delenv("ACCEL_THREADS")
    cfgs = [NodeConfig.load(p) for p in net.configs]
    assert [c.metrics for c in cfgs] == [("127.0.0.1", 9100 + i) for i in range(4)]
    assert {c.accel for c in cfgs} == {AccelConfig(backend="cpu", threads=1, gpu_min_batch=0)}


# ---- a GPU that fails mid-batch -----------------------------------------------------------------
class OutOfMemoryGpu(Backend):
    """The configured backend in these tests: a GPU whose every allocation or launch fails."""
    name, device, is_gpu = "cuda", "out-of-memory test GPU", True

    def _fail(self, *args, **kwargs):
        raise RuntimeError("CUDA_ERROR_OUT_OF_MEMORY (simulated)")
    to_device = empty = to_host = launch = _fail


@pytest.fixture
def failing_gpu(monkeypatch):
    real = dispatch.get_backend
    monkeypatch.setattr(dispatch, "get_backend", lambda name=None: OutOfMemoryGpu() if name is None else real(name))


def _signatures():
    sk = SigningKey(bytes(range(32)))
    msgs = [bytes([i]) * (i + 1) for i in range(40)]
    sigs = [sk.sign(m).signature for m in msgs]
    sigs[7] = sigs[8]  # one bad among good ones
    return [bytes(sk.verify_key)] * 40, msgs, sigs


def test_a_failing_gpu_batch_is_redone_on_the_c_fallback_logged_and_counted(failing_gpu, caplog):
    config.use(AccelConfig(backend="cuda", gpu_min_batch=0))
    before = dispatch.fallbacks().get(("cuda", "ed25519"), 0)
    with caplog.at_level(logging.WARNING, logger="accel"):
        got = accel.ed25519_verify_batch(*_signatures())
    assert got.tolist() == accel.ed25519_verify_batch(*_signatures(), backend="cpu").tolist()
    assert not got[7] and got.sum() == 39
    assert dispatch.fallbacks()[("cuda", "ed25519")] == before + 1
    record = next(r for r in caplog.records if "redoing the work on the C fallback" in r.getMessage())
    assert (record.backend, record.kernel) == ("cuda", "ed25519") and "OUT_OF_MEMORY" in record.error


def test_below_gpu_min_batch_the_gpu_is_not_tried(failing_gpu):
    config.use(AccelConfig(backend="cuda", gpu_min_batch=41))
    before = dispatch.fallbacks()
    assert accel.ed25519_verify_batch(*_signatures()).sum() == 39
    assert dispatch.fallbacks() == before


def test_with_gpu_fallback_off_the_failure_propagates(failing_gpu):
    config.use(AccelConfig(backend="cuda", gpu_min_batch=0, gpu_fallback=False))
    before = dispatch.fallbacks()
    with pytest.raises(RuntimeError, match="OUT_OF_MEMORY"):
        accel.ed25519_verify_batch(*_signatures())
    assert dispatch.fallbacks() == before


# ---- metrics ------------------------------------------------------------------------------------
class FakeApp:
    mempool = {b"a": None, b"b": None, b"c": None}


def _samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_after_a_verdict(monkeypatch):
    monkeypatch.setattr(dispatch, "fallbacks", lambda: {("cuda", "ed25519"): 2})
    m = NodeMetrics(FakeApp(), "cuda", "test GPU", "accel")
    m.validated(Verdict(True, "", None, {"signatures": 4.0, "tx_root": 0.5, "total": 4.5}))
    m.validated(Verdict(False, "bad", None, {"signatures": 30.0, "total": 30.0}))
    m.height.set(12)
    m.rejected.inc()
    s = _samples(generate_latest(m.registry).decode())
    assert s[("accel_validation_seconds_count", (("stage", "signatures"),))] == 2
    assert s[("accel_validation_seconds_sum", (("stage", "signatures"),))] == pytest.approx(0.034)
    assert s[("accel_validation_seconds_bucket", (("le", "0.005"), ("stage", "signatures")))] == 1
    assert s[("accel_validation_seconds_count", (("stage", "tx_root"),))] == 1
    assert s[("accel_backend_info", (("backend", "cuda"), ("device", "test GPU"), ("validation", "accel")))] == 1
    assert s[("accel_gpu_fallbacks_total", (("backend", "cuda"), ("kernel", "ed25519")))] == 2
    assert s[("accel_mempool_transactions", ())] == 3
    assert s[("accel_committed_height", ())] == 12
    assert s[("accel_blocks_rejected_total", ())] == 1


def test_clearing_breakers_and_funds_are_metrics():
    from consensus.apps.clearing_app import State
    from consensus.apps.clearing_load import genesis_market
    c = genesis_market("cpu")
    c.halted["BTC"] = "BTC index moved more than 60% within 20 blocks"
    m = NodeMetrics(FakeApp(), "cpu", "C fallback", "accel")
    m.committed_state(State(c, b""))
    m.committed_state(None)  # the kv app's states carry no ledger
    s = _samples(generate_latest(m.registry).decode())
    assert s[("accel_clearing_reduce_only", (("underlying", "BTC"),))] == 1
    assert s[("accel_clearing_reduce_only", (("underlying", "ETH"),))] == 0
    assert s[("accel_clearing_insurance_quanta", (("asset", "BTC"),))] == c.funds["BTC"]


def test_metrics_are_served_over_http():
    m = NodeMetrics(FakeApp(), "cpu", "C fallback", "accel")
    port = _free_ports(1)[0]
    server = m.serve(("127.0.0.1", port))
    try:
        FakeApp.mempool = {b"x": None}
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        with pytest.raises(urllib.error.HTTPError) as other:  # only /metrics (issue 21)
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10)
        assert other.value.code == 404
    finally:
        server.shutdown()
        FakeApp.mempool = {b"a": None, b"b": None, b"c": None}
    assert _samples(text)[("accel_mempool_transactions", ())] == 1  # read at scrape time


# ---- logs ---------------------------------------------------------------------------------------
@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_logs_are_one_object_a_line(restore_logging):
    out = io.StringIO()
    configure_logging(3, "json", out)
    logging.getLogger("consensus.node").warning("rejected a block", extra={"reason": "bad root", "proposer": 1})
    logging.getLogger("consensus.node").info("committed a block", extra={"height": 9, "validation_ms": {"total": 1.5}})
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["level"], e["logger"], e["node"], e["msg"]) for e in lines] == [
        ("WARNING", "consensus.node", 3, "rejected a block"), ("INFO", "consensus.node", 3, "committed a block")]
    assert lines[0]["reason"] == "bad root" and lines[1]["validation_ms"] == {"total": 1.5}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", lines[0]["ts"])


def test_text_logs_append_the_fields(restore_logging):
    out = io.StringIO()
    configure_logging(2, "text", out)
    logging.getLogger("consensus.node").info("committed a block", extra={"height": 9})
    assert re.search(r" node2 consensus\.node INFO committed a block height=9$", out.getvalue().strip())


# ---- all of it, in validator processes ----------------------------------------------------------
def test_validators_serve_metrics_and_write_json_logs(tmp_path):
    base = _free_ports(1)[0]
    net = Localnet(4, 3, 10, "cpu", "accel", 0.0, str(tmp_path), base_timeout_ms=300.0, metrics_port=base)
    net.configs[0].write_text(net.configs[0].read_text().replace("[node]\n", '[node]\nlog_format = "json"\n'))
    for i in range(4):
        net.start(i)
    try:
        s, deadline = {}, time.time() + 120
        while s.get(("accel_committed_height", ()), 0) < 3 and time.time() < deadline:
            time.sleep(0.5)
            try:
                s = _samples(urllib.request.urlopen(f"http://127.0.0.1:{base}/metrics", timeout=5).read().decode())
            except OSError:
                assert all(p.poll() is None for p in net.procs.values()), (tmp_path / "node0.log").read_text()
    finally:
        net.stop()
    assert s.get(("accel_committed_height", ()), 0) >= 3, (tmp_path / "node0.log").read_text()
    assert s[("accel_validation_seconds_count", (("stage", "total"),))] >= 2
    assert any(name == "accel_backend_info" and dict(labels)["backend"] == "cpu" for name, labels in s)
    logs = [json.loads(line) for line in (tmp_path / "node0.log").read_text().splitlines() if line.startswith("{")]
    assert logs[0]["msg"].startswith("validator 0 starting") and logs[0]["accel"]["backend"] == "cpu"
    assert any(e["msg"] == "committed a block" and e["node"] == 0 and "total" in e["validation_ms"] for e in logs)
