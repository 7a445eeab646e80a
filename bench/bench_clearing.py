"""A clearing proposer's cost with refused transactions in its mempool (issue 19): propose() of a
1,000-transaction block from a mempool holding just those, against the same mempool plus 5,000
transactions the rules refuse (withdrawals with nonces far ahead, trades of unregistered
accounts), half before the good ones, half after. Each round fills the mempool anew (the first proposal
evicts what it refuses), so every round pays for them; the ratio is the cost of the refused ones."""
import pytest
from nacl.signing import SigningKey

from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing_app import ClearingApp
from consensus.apps.clearing_load import USD, ClearingLoad, genesis_market
from consensus.verify import Verifier

GOOD, REFUSED = 1_000, 5_000


def _signed(body, *keys):
    return body, [k.sign(body).signature for k in keys]


@pytest.fixture(scope="module")
def market():
    load = ClearingLoad(seed=3, users=64)
    genesis = genesis_market("cpu")
    for body, _ in load.take(load.setup_size):
        ctx.apply(genesis, ctx.decode(body))
    good = load.take(GOOD, mark_every=200)
    strangers = [SigningKey(bytes([i % 251 + 1, i // 251 + 1]) * 16) for i in range(REFUSED // 2)]
    refused = ([_signed(ctx.withdraw(load.keys[i % 64], 10**6 + i, "USD", 10**9 * USD), load.users[i % 64])
                for i in range(REFUSED // 2)]
               + [_signed(ctx.trade(bytes(s.verify_key), 0, load.keys[0], 0, 1, 1, USD), s, load.users[0])
                  for s in strangers])
    return genesis, good, refused


@pytest.mark.parametrize("with_refused", [False, True], ids=["clean mempool", "plus 5,000 refused"])
def test_propose(benchmark, market, with_refused):
    genesis, good, bad = market
    app = ClearingApp(Verifier("accel", "cpu"), genesis, max_txs=GOOD)
    items = (bad[:len(bad) // 2] + good + bad[len(bad) // 2:]) if with_refused else good

    def fill():
        app.mempool.clear()
        assert not [r for r in app.submit_many(items) if r.startswith("malformed")]
        return (app.genesis, set()), {}

    txs, _ = benchmark.pedantic(app.propose, setup=fill, rounds=9)
    assert len(txs) == GOOD
