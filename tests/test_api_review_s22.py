"""Review s22 of the client and operator surface:
1. requests refused before the API's own checks (the HTTP parser's 400s, an Expect header's 417 or
   413) did not count against the client's request rate: one address, a new connection for each,
   had 3,500 malformed requests a second answered at requests_per_s = 2;
2. with log_format = "json", the line saying why the validator stopped was plain text after the
   JSON records;
3. errors that misled: a validator URL whose host cannot be encoded was reported as an answer not
   in the API's JSON; `--vol ²=0.5` as an int() traceback's words; a dotted key or sub-table
   unknown at line 0; the 404's endpoints without /txs;
4. (kernels review) risk inputs past double's range (a long double, rate * expiry) raised NumPy's
   RuntimeWarning under -W error instead of the ValueError naming them."""
import asyncio
import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from accel.config import ConfigError
from consensus import client as cl

ROOT = Path(__file__).resolve().parents[1]


async def _one(port: int, data: bytes) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(data)
    head = await r.read(64)
    w.close()
    return head[9:12]


def _served(tmp_path, scenario, **limits):
    """scenario(port) run against one validator's API (limits: Rpc's), then the API and store closed."""
    from consensus.localnet import write_configs
    from consensus.node import NodeConfig, NodeRunner
    from consensus.rpc import Rpc
    runner = NodeRunner(NodeConfig.load(write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, load="none",
                                                      rpc_port=0)[0]))

    async def run():
        rpc = Rpc(runner, runner.cfg.rpc, **limits)
        await rpc.start()
        try:
            return await scenario(rpc.bound_port())
        finally:
            await rpc.stop()
    try:
        return asyncio.run(run())
    finally:
        runner.store.close()


@pytest.mark.parametrize("request_bytes, status", [(b"GARBAGE\r\n\r\n", b"400"),
                                                   (b"GET /status HTTP/1.1\r\nHost: x\r\nExpect: nope\r\n\r\n", b"417")])
def test_requests_refused_before_the_api_count_against_the_request_rate(tmp_path, request_bytes, status):
    async def flood(port):
        seen, start = {}, time.monotonic()
        for _ in range(40):
            got = await _one(port, request_bytes)
            seen[got] = seen.get(got, 0) + 1
        return seen, time.monotonic() - start
    seen, took = _served(tmp_path, flood, requests_per_s=2.0)
    # a burst of 2 s worth (4) and 2 a second after: before, all 40 were answered
    assert 1 <= seen.get(status, 0) <= 4 + 2 * took + 1 and seen.get(b"429", 0) >= 40 - 4 - 2 * took - 1, (seen, took)


def test_a_json_log_says_why_the_validator_stopped_in_json(tmp_path):
    from consensus.localnet import write_configs
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        path = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, app="kv", rpc_port=0)[0]
        text = path.read_text().replace("[network]", 'log_format = "json"\n\n[network]', 1)
        text = re.sub(r'\[rpc\]\nlisten = "127\.0\.0\.1:\d+"', f'[rpc]\\nlisten = "127.0.0.1:{busy.getsockname()[1]}"', text)
        path.write_text(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACCEL_")} | {"PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-m", "accel.cli", "node", "--config", str(path)], capture_output=True,
                             text=True, timeout=120, cwd=tmp_path, env=env)
    finally:
        busy.close()
    records = [json.loads(line) for line in out.stderr.strip().splitlines()]  # every line JSON
    assert out.returncode == 1
    last = records[-1]
    assert last["level"] == "ERROR" and "cannot listen" in last["msg"] and last["exit_status"] == 1, last


def test_a_url_whose_host_cannot_be_encoded_is_refused_as_such():
    for url in ("http://a..b:26657", "http://" + "a" * 64 + ".example:1"):
        with pytest.raises(ValueError, match="is not a host name"):
            cl.Client([url])
    cl.Client(["http://bücher.example:80", "http://[::1]:5"])  # (an IDN and an IPv6 literal are hosts)


def test_a_vol_series_in_other_digits_names_the_flag():
    from accel import cli
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli.main(["tx", "--node", "http://127.0.0.1:1", "--chain-id", "1", "mark", "--oracle", "/nonexistent.json",
                       "--underlying", "BTC", "--index", "60000", "--sequence", "1", "--vol", "\u00b2=0.5"])
    assert rc == 2 and "--vol '\u00b2=0.5': expected SERIES=VOL" in err.getvalue(), err.getvalue()


def test_an_unknown_dotted_key_or_sub_table_is_named_at_its_line(tmp_path):
    from consensus.localnet import write_configs
    from consensus.node import NodeConfig
    base = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, load="none", rpc_port=0)[0].read_text()
    for text, key in ((base.replace("[node]\n", "[node]\nrpc.max_batch = 1\n"), "rpc.max_batch"),
                      (base + "\n[rpc.limits]\nmax_batch = 1\n", "[rpc.limits]")):
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(ConfigError) as got:
            NodeConfig.load(path)
        line = int(re.search(r"bad\.toml:(\d+):", str(got.value)).group(1))
        assert key in text.splitlines()[line - 1], (str(got.value), line)


def test_the_404_lists_every_endpoint(tmp_path):
    async def ask(port):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /tsx HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = await r.read()
        w.close()
        return body
    body = _served(tmp_path, ask)
    listed = set(re.findall(rb"(/[a-z_]+)", body.split(b"see", 1)[1]))
    assert listed == {b"/status", b"/health", b"/tx", b"/txs", b"/account", b"/broadcast_tx_sync", b"/broadcast_txs"}


def test_risk_inputs_past_doubles_range_are_value_errors_under_warnings_as_errors():
    from accel import risk_numpy
    from accel.risk import Marks, Portfolio, greeks
    huge = np.array([np.longdouble(10) ** 4000])
    if not np.isfinite(huge[0]):
        pytest.skip("long double is double on this platform")
    cases = [lambda: Marks(index=1.0, rate=1e200, forward=[1.0], strike=[1.0], expiry=[1e200], vol=[0.5],
                           kind=np.array([1], np.uint8)),
             lambda: greeks(1.0, 1.0, huge, 0.0, 0.5, True, backend="cpu"),
             lambda: risk_numpy.greeks_price(1.0, 1.0, huge, 0.0, 0.5, True),
             lambda: Marks(index=1.0, rate=0.0, forward=huge, strike=[1.0], expiry=[1.0], vol=[0.5],
                           kind=np.array([1], np.uint8)),
             lambda: Portfolio(offsets=[0, 1], instrument=[0], size=huge)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i, case in enumerate(cases):
            with pytest.raises(ValueError, match="beyond double precision's range|exceed"):
                case()
