"""The mempool keeps a transaction that came before what it needs (ClearingApp._early) by reading
the ledger's refusal, not its wording: clearing raises TooEarly with the account's whole key and
the nonces. Parsing the text matched a signer by a 16-hex-digit prefix of its key (two keys an
attacker grinds to share one, 2^32 work, swapped whose registration or nonces were waited on) and
lost every early transaction if a message was ever reworded."""

import pytest

from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing import Rejected, TooEarly
from consensus.apps.clearing_app import ClearingApp
from consensus.verify import Verifier
from tests.test_clearing_columns import funded_genesis
from tests.test_clearing_properties import K, USD, USERS, signed
from tests.test_ledger_proposal_s6 import users
from tests.test_mempool_s8 import digest, step

pytestmark = pytest.mark.usefixtures("quiet_logs")


def test_the_ledger_says_what_an_early_transaction_waits_for_with_the_whole_key():
    c = funded_genesis()
    (_,), (stranger,) = users(96, 1)
    n = c.accounts[K[2]].nonce
    with pytest.raises(TooEarly) as ahead:
        ctx.apply(c.snapshot(), ctx.decode(ctx.deposit(K[2], n + 3, "USD", USD)))
    assert (ahead.value.account, ahead.value.nonce, ahead.value.expected) == (K[2], n + 3, n)
    with pytest.raises(TooEarly) as unknown:
        ctx.apply(c.snapshot(), ctx.decode(ctx.deposit(stranger, 0, "USD", USD)))
    assert (unknown.value.account, unknown.value.nonce) == (stranger, None)
    state = c.snapshot()
    ctx.apply(state, ctx.decode(ctx.deposit(K[2], n, "USD", USD)))
    with pytest.raises(Rejected) as replay:
        ctx.apply(state, ctx.decode(ctx.deposit(K[2], n, "USD", USD)))
    assert not isinstance(replay.value, TooEarly) and "replayed or out of order" in str(replay.value)


def test_early_transactions_are_kept_whatever_the_refusals_wording(monkeypatch):
    """The out-of-order and before-registration cases of test_mempool_s8, with every refusal
    reworded: still kept and applied (the text parser evicted them all)."""
    monkeypatch.setattr(Rejected, "__str__", lambda self: "refused: " + self.args[0])
    c = funded_genesis()
    (s,), (k,) = users(95, 1)
    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    validator = ClearingApp(Verifier("software"), c.snapshot())
    n = c.accounts[K[2]].nonce
    chain = [signed(ctx.deposit(K[2], n + j, "USD", USD), [USERS[2]]) for j in range(3)]
    for item in reversed(chain):
        assert app.submit_many([item]) == [""]
    newcomer = [signed(ctx.deposit(k, 0, "USD", USD), [s]), signed(ctx.register(k), [s])]
    assert app.submit_many(newcomer) == ["", ""]
    parent, vparent = app.genesis, validator.genesis
    for _ in range(3):
        _, parent, vparent = step(app, validator, parent, vparent)
    assert parent.clearing.accounts[K[2]].nonce == n + 3
    assert parent.clearing.accounts[k].collateral == {"USD": USD}
    assert not any(digest(item) in app.refused for item in chain + newcomer)
