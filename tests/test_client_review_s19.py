"""Review s19: one Byzantine validator of four made Client.wait_committed (and `accel tx --wait`)
report a transaction committed that no honest validator committed: its "committed" was believed
wherever it was listed. Now a commit counts once f + 1 validators name its height."""
import hashlib
import pytest
from nacl.signing import SigningKey

from consensus import client as cl
from tests.test_api_review_s11 import _fake_validator, _statuses, _verdicts


def _urls(servers):
    return [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]


def test_one_liar_listed_first_makes_wait_committed_say_committed():
    digest = hashlib.sha256(b"never committed").hexdigest()
    liar = _fake_validator(_statuses({"status": "committed", "height": 7}))
    honest = [_fake_validator(_statuses({"status": "refused", "reason": "stale nonce"})) for _ in range(3)]
    servers = [liar] + honest
    try:
        with pytest.raises(cl.RpcError):   # three honest validators of four say refused
            cl.Client(_urls(servers), timeout=5).wait_committed([digest], timeout=1, poll=0.1)
    finally:
        for s in servers:
            s.shutdown()


def test_one_liar_listed_last_makes_wait_committed_say_committed():
    digest = hashlib.sha256(b"never committed").hexdigest()
    honest = [_fake_validator(_statuses({"status": "refused", "reason": "stale nonce"})) for _ in range(3)]
    liar = _fake_validator(_statuses({"status": "committed", "height": 7}))
    servers = honest + [liar]
    try:
        with pytest.raises(cl.RpcError):
            cl.Client(_urls(servers), timeout=5).wait_committed([digest], timeout=1, poll=0.1)
    finally:
        for s in servers:
            s.shutdown()


def test_accel_tx_wait_reports_a_commit_only_the_liar_claims(tmp_path, capsys):
    """accel tx --wait: the liar accepts and says committed; the three honest validators refuse
    the transaction for good (a stale nonce); the command exits 1 (refused by more than f)
    only because of the broadcast check. With the honest ones saying 'mempool full' (not final)
    and never taking it, the liar's 'committed' is printed and the exit status is 0."""
    from accel.cli import main

    def liar(body):
        if "txs" in body:
            return _verdicts(True, "")(body)
        return _statuses({"status": "committed", "height": 7})(body)

    def full(body):
        if "txs" in body:
            return _verdicts(False, "mempool full (100000 transactions)")(body)
        return _statuses({"status": "unknown"})(body)
    servers = [_fake_validator(liar)] + [_fake_validator(full) for _ in range(3)]
    try:
        cl.write_key(tmp_path / "k.json", SigningKey(bytes(range(32))))
        rc = main(["tx", "--node", ",".join(_urls(servers)), "--chain-id", "1", "--wait", "2",
                   "register", "--key", str(tmp_path / "k.json")])
        out = capsys.readouterr().out
        assert not (rc == 0 and '"committed"' in out), ("reported committed on one validator's word", rc, out)
    finally:
        for s in servers:
            s.shutdown()


def test_f_plus_one_validators_naming_one_height_is_a_commit_and_a_lone_one_is_waited_on():
    digest = hashlib.sha256(b"committed at 7").hexdigest()
    liar = _fake_validator(_statuses({"status": "unknown"}))
    honest = [_fake_validator(_statuses({"status": "committed", "height": 7})) for _ in range(2)]
    late = _fake_validator(_statuses({"status": "pending"}))
    servers = [liar, late] + honest
    try:
        assert cl.Client(_urls(servers), timeout=5).wait_committed([digest], timeout=1, poll=0.1) == {digest: 7}
    finally:
        for s in servers:
            s.shutdown()
    ahead = _fake_validator(_statuses({"status": "committed", "height": 7}))
    behind = [_fake_validator(_statuses({"status": "pending"})) for _ in range(3)]
    servers = [ahead] + behind
    try:
        with pytest.raises(cl.RpcError, match="not committed after"):
            cl.Client(_urls(servers), timeout=5).wait_committed([digest], timeout=0.5, poll=0.1)
    finally:
        for s in servers:
            s.shutdown()
