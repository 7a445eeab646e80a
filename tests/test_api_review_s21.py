"""Review s21 of the client surface:
1. the API reads bytes as "0x" + hex or base64, and took any string beginning "0x" for hex, though
   '0', 'x' and 'X' are base64 digits: one base64 signature in 2,048, and every base64 transaction
   of a chain whose id begins 0xD31 or 0xD17, was refused as malformed;
2. one hostile validator's verdict (a refusal whose reason is null, an acceptance carrying its own
   "refused_by") crashed `accel tx` with a traceback and passed its fields into the merged verdict;
3. `python -m consensus.demo --backends cpu,cpu` ran a whole network and then died on the second
   one finding the first's directory;
4. consensus.client took an int as a public key (bytes(32): the small-order identity) and raised
   AttributeError from deep inside for a transaction whose signatures are not a list of bytes."""
import asyncio
import base64
import subprocess
import sys

import aiohttp
import pytest
from nacl.signing import SigningKey

from consensus import client as cl
from consensus.rpc import BadRequest, decode_bytes, decode_hash
from tests.test_api_review_s11 import _fake_validator, _verdicts


def _signature_in_base64_beginning_0x():
    for i in range(100_000):
        tx = cl.register(SigningKey(i.to_bytes(32, "little")))
        if base64.b64encode(tx[1][0]).startswith((b"0x", b"0X")):
            return tx
    raise AssertionError("no such signature in 100,000 keys (one in 2,048 expected)")


def test_base64_beginning_0x_is_base64():
    body = cl.register(SigningKey(bytes(range(32))), 0xD3100001)[0]
    b64 = base64.b64encode(body).decode()
    assert b64.startswith("0x")
    assert decode_bytes(b64, "tx") == body
    signature = _signature_in_base64_beginning_0x()[1][0]
    assert decode_bytes(base64.b64encode(signature).decode(), "signature") == signature
    assert decode_bytes("0x" + signature.hex(), "signature") == signature
    assert decode_bytes("0X" + signature.hex().upper(), "signature") == signature


def test_what_is_neither_is_refused_and_a_hash_is_hex_only():
    for text in ("0x", "0xabc", "0x12 34", "@@@@", "abc"):
        if text == "0x":  # "0x" and no digits: the empty bytes in hex
            assert decode_bytes(text, "tx") == b""
            continue
        with pytest.raises(BadRequest, match="neither"):
            decode_bytes(text, "tx")
    digest = bytes(range(32))
    assert decode_hash(digest.hex(), "hash") == decode_hash("0x" + digest.hex(), "hash") == digest
    with pytest.raises(BadRequest, match="not 64 hex digits"):
        decode_hash(base64.b64encode(digest).decode(), "hash")  # 44 base64 digits: 32 bytes, not a hash's form
    with pytest.raises(BadRequest, match="bytes, not 32"):
        decode_hash("0x" + digest.hex()[:-2], "hash")


def test_a_base64_transaction_beginning_0x_is_accepted_over_http(tmp_path):
    from consensus.localnet import write_configs
    from consensus.node import NodeConfig, NodeRunner
    from consensus.rpc import Rpc
    tx = _signature_in_base64_beginning_0x()
    runner = NodeRunner(NodeConfig.load(write_configs(tmp_path, 4, 10, "software", 0.0, 1000.0, load="none",
                                                      rpc_port=0)[0]))

    async def post():
        rpc = Rpc(runner, runner.cfg.rpc)
        await rpc.start()
        try:
            async with aiohttp.ClientSession() as session:
                url = "http://%s:%d/broadcast_tx_sync" % (runner.cfg.rpc[0], rpc.bound_port())
                as_b64 = {"tx": base64.b64encode(tx[0]).decode(),
                          "signatures": [base64.b64encode(tx[1][0]).decode()]}
                async with session.post(url, json=as_b64) as r:
                    return r.status, await r.json(content_type=None)
        finally:
            await rpc.stop()
    try:
        status, answer = asyncio.run(post())
    finally:
        runner.store.close()
    assert status == 200 and answer["accepted"], answer


def test_an_answer_with_more_verdicts_than_transactions_is_passed_over():
    def extra(body):
        got = _verdicts(True, "")(body)
        return {"results": got["results"] + [{"junk": 1}]}
    servers = [_fake_validator(extra)] + [_fake_validator(_verdicts(False, "stale nonce")) for _ in range(3)]
    urls = [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
    try:
        out = cl.Client(urls, timeout=5).broadcast([cl.register(SigningKey(bytes(32)))])[0]
        assert not out["accepted"] and "refused_by" not in out  # the three that answered right refused it
    finally:
        for s in servers:
            s.shutdown()


@pytest.mark.parametrize("hostile", [{"accepted": False, "code": 1, "reason": None},
                                     {"accepted": False, "code": 1, "reason": ""},
                                     {"accepted": True, "reason": "", "refused_by": {"x": "y"}, "height": 9}])
def test_one_hostile_verdict_is_passed_over(tmp_path, capsys, hostile):
    from accel.cli import main

    def liar(body):
        return {"results": [r | hostile for r in _verdicts(True, "")(body)["results"]]}
    servers = [_fake_validator(liar)] + [_fake_validator(_verdicts(True, "")) for _ in range(3)]
    urls = [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
    try:
        out = cl.Client(urls, timeout=5).broadcast([cl.register(SigningKey(bytes(32)))])[0]
        assert set(out) == {"hash", "code", "accepted", "reason"} and out["accepted"], out
        cl.write_key(tmp_path / "k.json", SigningKey(bytes(range(32))))
        assert main(["tx", "--node", ",".join(urls), "--chain-id", "1", "register",
                     "--key", str(tmp_path / "k.json")]) == 0
        assert '"accepted": true' in capsys.readouterr().out
    finally:
        for s in servers:
            s.shutdown()


def test_a_duplicate_and_a_refusal_keep_their_fields():
    servers = [_fake_validator(_verdicts(False, "stale nonce"))] + \
              [_fake_validator(lambda body: {"results": [r | {"duplicate": True}
                                                         for r in _verdicts(True, "")(body)["results"]]})
               for _ in range(3)]
    urls = [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
    try:
        out = cl.Client(urls, timeout=5).broadcast([cl.register(SigningKey(bytes(32)))])[0]
        assert out["duplicate"] is True and out["refused_by"] == {urls[0]: "stale nonce"}
        assert out["accepted_by"] == urls[1:]
    finally:
        for s in servers:
            s.shutdown()


def test_demo_refuses_a_backend_given_twice():
    r = subprocess.run([sys.executable, "-m", "consensus.demo", "--backends", "cpu,cpu"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "a backend given twice" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_client_refuses_what_is_not_a_key_or_a_transaction():
    for key in (32, [1] * 32, None, 1.5):
        with pytest.raises(TypeError, match="public key"):
            cl.public(key)
    body, sigs = cl.register(SigningKey(bytes(range(32))))
    client = cl.Client(["http://127.0.0.1:9"], timeout=0.5)
    for tx in ((body, [sigs[0].hex()]), (body, sigs[0]), (body.hex(), sigs), body, (body, sigs, 1)):
        with pytest.raises(ValueError, match="transaction"):
            client.broadcast([tx])
        with pytest.raises(ValueError, match="transaction"):
            client.submit(tx)
