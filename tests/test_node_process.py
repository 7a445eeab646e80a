"""A validator process as an operator meets it (issue 21): no validator outlives its launcher,
[node] listen is what it binds, start-up failures in one line naming the key and address, and a
validator that hears from nobody says so (log, metrics, /health)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from consensus.localnet import Localnet, _free_ports, write_configs

ACCEL = [sys.executable, "-m", "accel.cli"]


def _survivors(directory) -> list[str]:
    """Validator processes whose config lies under directory."""
    ps = subprocess.run(["pgrep", "-af", f"node --config {directory}/"], capture_output=True, text=True)
    return [line for line in ps.stdout.splitlines() if "pgrep" not in line]


def _committing(directory, validators: int = 4) -> bool:
    """Whether every validator's events file records a committed block: each is past its start,
    signal handlers in place."""
    files = [directory / f"node{i}.events.jsonl" for i in range(validators)]
    return all(f.exists() and '"kind": "committed"' in f.read_text() for f in files)


def wait_committing(proc: subprocess.Popen, directory, timeout_s: float = 120.0) -> None:
    """Until every validator committed a block. A launcher signalled before that may still be
    writing its configs (a clearing load of 100,000 blocks took over a minute to sign on a loaded
    machine: the signal then came before any validator, or its handler, existed), so no test
    signals it sooner; this fails with the launcher's output instead of racing it."""
    deadline = time.time() + timeout_s
    while not _committing(directory):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"the validators did not all commit a block (launcher status {proc.returncode}): "
                                 f"{(out or '')[-1000:]} {(err or '')[-2000:]}")
        time.sleep(0.2)


def _launch(tmp_path) -> subprocess.Popen:
    # key-value: nothing signed up front, the validators start at once
    proc = subprocess.Popen(ACCEL + ["localnet", "--app", "kv", "--blocks", "100000", "--txs-per-block", "5",
                                     "--backend", "cpu", "--base-timeout-ms", "300", "--dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_committing(proc, tmp_path)
    assert len(_survivors(tmp_path)) == 4
    return proc


def test_sigterm_to_localnet_stops_every_validator(tmp_path):
    proc = _launch(tmp_path)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "stopped (SIGTERM)" in err, err[-2000:]
    assert _survivors(tmp_path) == [], "validator processes left running"
    for i in range(4):
        log = (tmp_path / f"node{i}.log").read_text()
        assert f"validator {i} stopping: SIGTERM" in log and f"validator {i} stopped at height" in log, log[-1000:]


def test_validators_stop_by_themselves_when_their_launcher_is_killed(tmp_path):
    """SIGKILL leaves the launcher no chance to stop anything: the validators notice their parent
    is gone (accel node --exit-with-parent) and stop."""
    proc = _launch(tmp_path)
    proc.kill()
    proc.wait()
    deadline = time.time() + 20
    while _survivors(tmp_path) and time.time() < deadline:
        time.sleep(0.2)
    assert _survivors(tmp_path) == [], "validators outlived their launcher"
    log = (tmp_path / "node2.log").read_text()
    assert f"validator 2 stopping: its launcher (pid {proc.pid}) exited" in log


def test_demo_stops_its_validators_on_sigterm(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "consensus.demo", "--out", str(tmp_path), "--sizes", "100",
                             "--backends", "cpu", "--blocks", "1000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    runs = tmp_path / "runs"
    deadline = time.time() + 120
    while time.time() < deadline and not list(runs.glob("*/node3.events.jsonl")):
        time.sleep(0.2)
    (run,) = list(runs.glob("*/node3.events.jsonl")) or [None]
    assert run is not None, "the demo started no network in 120 s"
    wait_committing(proc, run.parent)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert _survivors(runs) == [], out[-2000:]


def test_localnet_gives_every_validator_a_client_api_on_its_own_port(tmp_path):
    from consensus.node import NodeConfig
    net = Localnet(4, 1, 5, "cpu", "accel", 0.0, str(tmp_path))
    urls = net.rpc_urls()
    ports = [int(u.rsplit(":", 1)[1]) for u in urls] + [NodeConfig.load(c).listen[1] for c in net.configs]
    assert len(urls) == 4 and len(set(ports)) == 8


def test_localnet_refuses_a_directory_holding_another_network(tmp_path):
    Localnet(4, 1, 5, "cpu", "accel", 0.0, str(tmp_path))
    with pytest.raises(ValueError, match="already holds a network"):
        Localnet(4, 1, 5, "cpu", "accel", 0.0, str(tmp_path))


# ---- [node] listen, start-up errors ---------------------------------------------------------------------
def _node(config, timeout=60, **kw):
    return subprocess.run(ACCEL + ["node", "--config", str(config)], capture_output=True, text=True, timeout=timeout,
                          **kw)


def _software_configs(tmp_path, **kw):
    return write_configs(tmp_path, 4, 10, "software", 0.0, 300.0, load="none", **kw)


def test_node_binds_listen_not_its_advertised_address(tmp_path):
    """addresses[0] = 127.0.0.1:P (what peers dial), listen = 0.0.0.0:P: the node answers on
    another loopback address too, which binding addresses[0] would not; the network commits."""
    from consensus.client import Client
    configs = _software_configs(tmp_path, rpc_port=0)
    text = configs[0].read_text()
    advertised = json.loads(text.split("addresses = ")[1].split("\n")[0])[0]
    port = int(advertised.rsplit(":", 1)[1])
    configs[0].write_text(text.replace(f'listen = "{advertised}"', f'listen = "0.0.0.0:{port}"'))
    procs = [subprocess.Popen(ACCEL + ["node", "--config", str(c)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for c in configs]
    try:
        from consensus.node import NodeConfig
        c = Client(["http://%s:%d" % NodeConfig.load(p).rpc for p in configs])
        c.wait_healthy(60)
        with socket.create_connection(("127.0.0.2", port), timeout=5):
            pass
        # a peer counts as connected while heard from lately: on a loaded machine one may lapse
        # for a moment after the network turned healthy, so it is waited for, not read once
        deadline = time.monotonic() + 60
        while (connected := c.status()["peers"]["connected"]) != 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert connected == 3
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


@pytest.mark.parametrize("which", ["node", "rpc", "metrics"])
def test_an_address_in_use_names_the_address_and_the_key(tmp_path, which):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        config = _software_configs(tmp_path, rpc_port=_free_ports(1)[0], metrics_port=_free_ports(1)[0])[0]
        text = config.read_text()
        if which == "node":
            text = text.replace(text.split("listen = ")[1].split("\n")[0], f'"127.0.0.1:{port}"', 1)
        else:
            head, _, tail = text.partition(f"[{which}]\nlisten = ")
            text = head + f"[{which}]\nlisten = \"127.0.0.1:{port}\"\n" + tail.split("\n", 1)[1]
        config.write_text(text)
        proc = _node(config)
    finally:
        busy.close()
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} ([{which}] listen" in err[-1] and "in use" in err[-1], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("key", ["data_dir", "load_file", "events"])
def test_a_path_that_cannot_be_used_is_one_line_naming_its_key(tmp_path, key):
    config = write_configs(tmp_path, 4, 10, "software", 0.0, 300.0)[0]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    text = config.read_text()
    if key == "load_file":
        text = text.replace("[node]\n", f"[node]\nload_file = \"{tmp_path / 'missing.bin'}\"\n")
    else:
        value = text.split(f"{key} = ")[1].split("\n")[0]
        text = text.replace(f"{key} = {value}", f"{key} = \"{blocker / 'sub'}\"")
    config.write_text(text)
    proc = _node(config)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert f"[node] {key}" in last and str(config) in last, proc.stderr


def _metrics(cfg) -> dict:
    """The node's metrics by sample name; {} while its metrics port does not answer yet."""
    from prometheus_client.parser import text_string_to_metric_families
    try:
        text = urllib.request.urlopen("http://%s:%d/metrics" % cfg.metrics, timeout=5).read().decode()
    except OSError:
        return {}
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_a_validator_alone_says_so(tmp_path):
    """One validator of four, the others never started: a warning that no peer is connected,
    view timeouts counted, /health 503 with the reason, then SIGTERM logged."""
    configs = _software_configs(tmp_path, rpc_port=_free_ports(1)[0], metrics_port=_free_ports(1)[0])
    from consensus.node import NodeConfig
    cfg = NodeConfig.load(configs[0])
    proc = subprocess.Popen(ACCEL + ["node", "--config", str(configs[0])], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        # waits for the node to be 7 s old by its own clock (a loaded machine starts it late),
        # past the no-peer warning's window, rather than sleeping a fixed 8 s
        deadline, values = time.monotonic() + 90, {}
        while values.get("accel_seconds_since_commit", 0) < 7 or values.get("accel_view_timeouts_total", 0) < 1:
            assert time.monotonic() < deadline and proc.poll() is None, values
            time.sleep(0.5)
            values = _metrics(cfg)
        try:
            urllib.request.urlopen("http://%s:%d/health" % cfg.rpc, timeout=5)
            pytest.fail("healthy without peers")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and "0 of 3 peers connected" in json.loads(exc.read())["reason"]
        assert _metrics(cfg)["accel_peers_connected"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert "no peer connected: nothing heard from any of the 3 other validators since the start" in out
    assert "timed out (leader" in out
    assert "validator 0 stopping: SIGTERM" in out and "validator 0 stopped at height 0" in out
    assert proc.returncode == 0
