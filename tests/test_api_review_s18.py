"""Review s18 of the operator surface (/tmp/s18/review/api/REPORT.md): a body on a GET was read
after the answer without bound; one Byzantine leader's relabelled QC height kept /health at
"catching up" for good; Client.chain_id believed the first validator; an [node] events or
data_dir path the system refuses to look up was a bare OSError (exit 1); a misspelt ACCEL_CONFIG
was ignored; two validators at one address, spelt differently, loaded; client.py's example
signed for chain 1."""
import asyncio
import contextlib
import json
import re
import subprocess
import sys
import threading
import tomllib
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from nacl.signing import SigningKey

from accel import config
from accel.config import ConfigError
from consensus import client as cl
from consensus import rpc as rpc_module
from consensus.localnet import write_configs, write_network
from consensus.messages import QC, Block, Proposal, Txs, proposal_bytes, vote_bytes
from consensus.node import NodeConfig, NodeRunner
from tests.test_api_review_s11 import _serve


# ---- 1. a body on another method than POST is not read after the answer ----------------------------------
@pytest.mark.parametrize("head", [b"GET /health", b"GET /no/such/path", b"PUT /txs"])
def test_a_body_nothing_reads_is_not_read_after_the_answer(tmp_path, monkeypatch, head):
    """GET /health declaring Content-Length 10^11: aiohttp's lingering close read the body after the
    answer at wire speed for 10 s (2.4 GB in 4 s, half the loop), bounded by nothing (max_body_bytes
    and its reservation apply to POSTs). Now the connection is closed after the answer: of 64 MiB
    sent, the server reads none."""
    read = [0]
    real = rpc_module._Handler.data_received
    monkeypatch.setattr(rpc_module._Handler, "data_received", lambda self, data: (
        read.__setitem__(0, read[0] + len(data)), real(self, data)))

    async def scenario(rpc):
        r, w = await asyncio.open_connection("127.0.0.1", rpc.bound_port())
        w.write(head + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n")
        answer = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        await asyncio.wait_for(r.readexactly(int(re.search(rb"Content-Length: (\d+)", answer).group(1))), 10)
        read[0], chunk = 0, b" " * 65536
        with contextlib.suppress(ConnectionError):
            for _ in range(1024):  # 64 MiB
                w.write(chunk)
                await asyncio.wait_for(w.drain(), 10)
        w.close()
        return answer.split()[1]
    status = _serve(tmp_path, scenario)
    assert status in (b"200", b"503", b"404", b"405"), status
    assert read[0] < 1 << 20, f"{read[0]:,} bytes of the body read after the answer"


# ---- 2. an unproven height keeps /health at "catching up" only while parked, and only f + 1 proposers' --
class _Sent:
    """The transport: what the validator sends is dropped."""
    queued_bytes, answer_bytes = {}, {}

    def send(self, to, msg):
        pass

    def broadcast(self, msg):
        pass


def _validator(tmp_path):
    """Validator 0 of 4 (kv, nothing sent) and the four signing keys."""
    paths = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, app="kv", load="none", rpc_port=0)
    seeds = [SigningKey(bytes.fromhex(tomllib.loads(p.read_text())["node"]["seed"])) for p in paths]
    node = NodeRunner(NodeConfig.load(paths[0]))
    node.net = _Sent()
    return node, seeds


def _chain(node, seeds, views: int) -> list[Proposal]:
    """The honest chain of empty blocks of views (and heights) 1..views, each with its QC."""
    core, empty, out = node.core, Txs.empty(), []
    qc, parent = core.safety.high_qc, core.committed
    for v in range(1, views + 1):
        b = Block(v, v, parent.id, v % 4, core.app.tx_root(empty), core.committed.state_root, empty.digest(), empty,
                  qc, None)
        out.append(Proposal(b, seeds[v % 4].sign(proposal_bytes(b.id, node.network)).signature))
        voters = tuple(i for i in range(4) if i != v % 4)
        sigs = b"".join(seeds[i].sign(vote_bytes(b.id, v, node.network)).signature for i in voters)
        qc = QC(b.id, v, v, voters, sigs)
        parent = b
    return out


def _deliver(node, proposals) -> None:
    async def handle():  # (the core's timers need a running loop)
        for p in proposals:
            node._handle(p.block.proposer, p)
    asyncio.run(handle())


def test_a_relabelled_qc_height_does_not_keep_health_at_catching_up(tmp_path):
    """A QC's height is not signed: the leader of view 2 took the real QC of block X (view 1),
    which validator 0 had not received, relabelled its height 10^12 and signed its own block at
    10^12 + 1. Parked, it set highest_seen to 10^12 + 1, and nothing lowered it: /health said 503
    for good. Now a parked block's height counts only as the (f+1)-th highest of the proposers',
    and only while it is parked: X arrives, the block is refused and forgotten."""
    node, seeds = _validator(tmp_path)
    try:
        x = _chain(node, seeds, 1)[0]
        qc = QC(x.block.id, 1, 1, (1, 2, 3),
                b"".join(seeds[i].sign(vote_bytes(x.block.id, 1, node.network)).signature for i in (1, 2, 3)))
        h, empty, core = 10**12, Txs.empty(), node.core
        b = Block(2, h + 1, x.block.id, 2, core.app.tx_root(empty), bytes(32), empty.digest(), empty,
                  replace(qc, height=h), None)
        _deliver(node, [Proposal(b, seeds[2].sign(proposal_bytes(b.id, node.network)).signature)])
        assert b.id in core.parked
        assert not node.catching_up() and node.status()["highest_seen_height"] == 0
        _deliver(node, [x])  # its parent comes: it does not connect
        assert b.id not in core.parked and not node.parked_heights
        assert node.highest_seen == 1 and not node.catching_up()
    finally:
        node.store.close()


def test_a_validator_behind_still_reports_catching_up(tmp_path):
    """A validator that missed blocks 1..17 parks the proposals of views 18 and 19 (two proposers,
    f + 1 of four): catching up, at height 18; once the chain comes, the heights are proven."""
    node, seeds = _validator(tmp_path)
    try:
        chain = _chain(node, seeds, 19)
        _deliver(node, chain[-2:])
        assert node.catching_up() and node.seen_height() == 18 and node.highest_seen == 0
        _deliver(node, chain[:-2])
        assert node.highest_seen == 19 and node.core.committed.height == 17 and not node.parked_heights
        assert not node.catching_up()
    finally:
        node.store.close()


# ---- 3. the chain id: of f + 1 validators at least, more than any other ---------------------------------
@contextlib.contextmanager
def _validators(chains):
    """Fake validators whose /status names these chain ids (None: one that does not answer)."""
    servers, urls = [], []
    for chain in chains:
        class H(BaseHTTPRequestHandler):
            chain_id = chain

            def do_GET(self):
                body = json.dumps({"chain_id": self.chain_id, "height": 5}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass
        s = ThreadingHTTPServer(("127.0.0.1", 0), H)
        if chain is None:
            s.server_close()  # its port, closed: nothing answers there
        else:
            threading.Thread(target=s.serve_forever, daemon=True).start()
            servers.append(s)
        urls.append(f"http://127.0.0.1:{s.server_address[1]}")
    try:
        yield urls
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


def test_the_chain_id_is_not_one_validators_word():
    """Validators 1-3 named chain 9, the first-listed 7: the client signed for 7. Now every
    validator is asked: the chain id f + 1 of them name, more than any other, is used; a tie or
    too few is an error saying what each named."""
    with _validators([7, 9, 9, 9]) as urls:
        assert cl.Client(urls, timeout=5).chain_id() == 9
        assert cl.Client(urls, timeout=5).chain_id(urls[0]) == 7  # (asked of one, its answer)
    with _validators([None, 7, 9, 9]) as urls:
        assert cl.Client(urls, timeout=5).chain_id() == 9
    refused = r"no chain id is named by f \+ 1 = 2 of the 4 validators.*--chain-id"
    for chains in ([7, 7, 9, 9], [None, None, None, 9]):
        with _validators(chains) as urls, pytest.raises(cl.RpcError, match=refused):
            cl.Client(urls, timeout=5).chain_id()


# ---- 5. an events or data_dir path the system will not look up is a configuration error -----------------
@pytest.mark.parametrize("key, what", [("events", "[node] events"), ("data_dir", "[node] data_dir's validator.db")])
def test_a_path_the_system_refuses_is_a_config_error_naming_its_key(tmp_path, key, what):
    """A name over NAME_MAX (or, for a validator not running as root, a directory it may not
    enter) raised OSError out of NodeConfig.load: `accel node` printed "[Errno 36] File name too
    long" naming no key, exit 1, which the unit restarts. Now a ConfigError naming the key and its
    line: exit 2."""
    p = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, load="none", rpc_port=0)[0]
    (tmp_path / "events.jsonl").touch()  # (data_dir's files are looked up where the events file exists)
    text = re.sub(r'(?m)^events = .*$', f'events = "{tmp_path / "events.jsonl"}"', p.read_text())
    p.write_text(re.sub(rf'(?m)^{key} = .*$', f'{key} = "{"e" * 300}"', text))
    p.chmod(0o600)
    with pytest.raises(ConfigError, match=re.escape(what) + ".*cannot be looked up: File name too long") as exc:
        NodeConfig.load(p)
    line = next(i for i, s in enumerate(p.read_text().splitlines(), 1) if s.startswith(f"{key} ="))
    assert f"{p}:{line}:" in str(exc.value)
    if key == "events":
        run = subprocess.run([sys.executable, "-m", "accel.cli", "node", "--config", str(p)], capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 2 and "[node] events" in run.stderr, (run.returncode, run.stderr[-300:])


# ---- 6. a misspelt ACCEL_CONFIG ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ACCEL_CONFG", "ACCEL_CONIFG", "ACCEL_CONFIGS", "accel_config"])
def test_a_misspelt_accel_config_is_an_error_naming_it(tmp_path, name):
    """ACCEL_CONFG=gpu.toml ran every default (backend auto, all cores) without a word; accel_config
    was already an error. Now each names ACCEL_CONFIG."""
    f = tmp_path / "accel.toml"
    f.write_text('[accel]\nbackend = "cpu"\nthreads = 1\n')
    assert config.load(env={"ACCEL_CONFIG": str(f)}).threads == 1
    with pytest.raises(ConfigError, match=f"environment variable {name} is not a setting; did you mean ACCEL_CONFIG"):
        config.load(env={name: str(f)})


# ---- 7. two validators at one address, however spelt ----------------------------------------------------
@pytest.mark.parametrize("a, b", [("[::1]:40330", "[0:0:0:0:0:0:0:1]:40330"), ("127.0.0.1:40331", "127.1:40331"),
                                  ("127.0.0.1:40332", "2130706433:40332"),
                                  ("10.0.0.2:40333", "[::ffff:10.0.0.2]:40333")])
def test_two_validators_at_one_address_are_refused_however_spelt(tmp_path, a, b):
    """[::1] beside [0:0:0:0:0:0:0:1], 127.0.0.1 beside 127.1 or 2130706433 (one address as the
    system reads it) loaded: the dials meant for one validator reached the other. Now refused."""
    p = write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, load="none", rpc_port=0)[0]
    text = p.read_text()
    p.write_text(re.sub(r'addresses = \[("[^"]*"), "[^"]*", "[^"]*"', rf'addresses = [\1, "{a}", "{b}"', text))
    p.chmod(0o600)
    with pytest.raises(ConfigError, match=r"addresses\[2\] .* is also addresses\[1\]"):
        NodeConfig.load(p)


@pytest.mark.parametrize("hosts", [["10.0.0.1", "127.0.0.1", "127.1", "10.0.0.4"],
                                   ["10.0.0.1", "127.0.0.1", "2130706433", "10.0.0.4"],
                                   ["::1", "0:0:0:0:0:0:0:1", "::2", "::3"]])
def test_accel_testnet_refuses_one_host_however_spelt(tmp_path, hosts):
    with pytest.raises(ValueError, match="two validators at the same host:port"):
        write_network(tmp_path / "net", hosts)


# ---- 8. the module's example signs for the network's chain ----------------------------------------------
def test_the_client_modules_example_signs_for_the_networks_chain(monkeypatch):
    """consensus/client.py's example signed register and deposit for chain 1, refused on every
    network `accel testnet` writes (each draws its own chain id). Run here against a chain-7
    ledger, every transaction of it is admitted."""
    from consensus.apps.clearing_app import ClearingApp
    from consensus.verify import Verifier
    from tests.test_clearing_columns import funded_genesis
    app = ClearingApp(Verifier("accel", "cpu"), funded_genesis(), chain_id=7)
    verdicts = []

    class Client:  # the network: chain 7
        def __init__(self, urls):
            pass

        def chain_id(self):
            return 7

        def broadcast(self, txs):
            verdicts.extend(app.submit_many(txs))
            return [{"hash": ""} for _ in txs]

        def wait_committed(self, digests):
            return {}

        def account(self, key):
            return {}
    monkeypatch.setattr(cl, "Client", Client)
    example = re.search(r"\n\n((?:    .*\n)+)\n", cl.__doc__).group(1)
    exec("\n".join(line[4:] for line in example.splitlines()), {})
    assert verdicts == ["", ""], verdicts
