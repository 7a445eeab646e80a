"""A transaction the proposal's first fill refused left the mempool with its reason, but a later
fill (an account held back, so a mark's auto-deleveraging closed against another book) applied it,
and the proposer's own block carried it while it reported it refused and had lost it from its
mempool (review s18). Now the fills' refusals leave the mempool with the block, but for what it
keeps; the Hypothesis streams (tests/test_clearing_properties.py) check every proposal for it.

Market: a 5% breaker band (a bigger move halts BTC: trades must shrink both positions). L naked
short 10 BTC futures near initial margin; Z long 10, X long 12 (the largest long); Y short. In
arrival order: X gives 3 futures to W at price 0 (X ends the block short of initial margin: held
back from the second fill); a +12% mark (liquidates L; the move halts BTC); T: Z sells 3 futures
to Y. First fill: X long 9 is below Z's 10, so L is closed against Z, and T (Z holds nothing) is
refused as reduce-only. Second fill, X held back: L is closed against X, Z keeps 10, T applies."""
import hashlib

from nacl.signing import SigningKey

from accel.risk import FUTURE
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing import Breakers, Clearing, Series
from consensus.apps.clearing_app import ClearingApp
from consensus.verify import Verifier
from tests.test_clearing_properties import O, ORACLES, block_of

USD, T0 = 10**8, 1_800_000_000
S = {n: SigningKey(bytes([80 + i]) * 32) for i, n in enumerate("LZXYW")}
K = {n: bytes(s.verify_key) for n, s in S.items()}


def sign(body, *names):
    return body, [S[n].sign(body).signature for n in names]


def test_a_proposal_never_carries_what_it_reports_refused():
    c = Clearing(O, quorum=2, backend="cpu", insurance={"USD": 10**6 * USD},
                 breakers=Breakers(band=0.05, window=3))
    c.list_series(Series(3, "BTC", FUTURE, 0.0, T0 + 120 * 86_400))
    c.mark("BTC", 60_000.0, {}, 1, T0, O[:2])
    for k in K.values():
        c.register(k)
    v = c.marks["BTC"].values[3]
    big = 10**9 * USD
    probe = c.snapshot()
    for k in K.values():
        probe.deposit(k, 0, "USD", big)
    probe.trade(K["Y"], 1, K["L"], 1, 3, 10, v)
    probe.trade(K["Z"], 1, K["Y"], 2, 3, 10, v)
    probe.trade(K["X"], 1, K["Y"], 3, 3, 12, v)
    m = probe.margins([K["L"], K["X"]], {"USD"})["USD"][0]
    eq = probe.equity([K["L"], K["X"]])
    need_l = int(m[0]) - (eq[0]["USD"] - big) + 1
    # X's deposit: after giving 3 futures away at price 0 and the +12% mark, X (long 9) is between
    # its maintenance (not caught by the mark) and its initial margin (short at the block's end)
    p2 = c.snapshot()
    for k in K.values():
        p2.deposit(k, 0, "USD", big)
    p2.trade(K["X"], 1, K["Y"], 1, 3, 9, v)
    p2.mark("BTC", 60_000.0 * 1.12, {}, 2, T0 + 600, O[:2])
    mm = p2.margins([K["X"]], {"USD"})["USD"]
    eqx = p2.equity([K["X"]])[0]["USD"] - big   # what long 9 added to its equity
    im9, mm9 = mm[0][0], mm[1][0]
    need_x = (im9 + mm9) // 2 - eqx + 3 * v
    c.defer = True
    c.begin_block()
    for n, k in K.items():
        c.deposit(k, 0, "USD", need_l if n == "L" else need_x if n == "X" else 10**7 * USD)
    c.trade(K["Y"], 1, K["L"], 1, 3, 10, v)     # L short 10 (Y long 10 for now)
    c.trade(K["Z"], 1, K["Y"], 2, 3, 10, v)     # Z long 10
    c.trade(K["X"], 1, K["Y"], 3, 3, 12, v)     # X long 12; Y short 12
    assert c.end_of_block() == []
    c.defer = False

    app = ClearingApp(Verifier("accel", "cpu"), c.snapshot())
    val = ClearingApp(Verifier("software"), c.snapshot())
    x_sell = sign(ctx.trade(K["W"], 1, K["X"], 2, 3, 3, 0), "W", "X")  # X gives 3 away: short at the block's end
    mb = ctx.mark("BTC", 60_000.0 * 1.12, 2, T0 + 600, {}, O[:2])
    mark = (mb, [o.sign(mb).signature for o in ORACLES[:2]])
    t = sign(ctx.trade(K["Y"], 4, K["Z"], 2, 3, 3, int(v * 1.12)), "Y", "Z")
    items = [x_sell, mark, t]
    assert app.submit_many(items) == ["", "", ""]
    txs, state = app.propose(app.genesis, set())
    bodies = [txs.bodies.item(i) for i in range(len(txs))]
    assert bodies == [mb, t[0]]  # the mark and T; X held back
    assert val.validate(val.genesis, block_of(txs, bytes(32), state.root, val), ((), (), ())).ok
    d = hashlib.sha256(t[0]).digest()
    assert d not in app.refused and d in app.mempool
    assert hashlib.sha256(x_sell[0]).digest() not in app.mempool  # (held back: evicted as short)
