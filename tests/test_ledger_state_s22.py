"""Review s22 of the state layer's cost: a settled series' fixing leaf was encoded and hashed again
at every state root (2,000 settled options: 2.6-10.8 ms of an empty block, though a fixing never
changes), and a mark's form check (before a block's signatures) built its underlying's listed
series from all of them (0.3 ms a mark at 2,000 options: a block of 5,000 junk marks took 1,182 ms
to refuse against 327 ms with 2 listed). Now both are kept (per fixing; per series dict), and what
they give must equal what the state holds: roots against the plain hash of globals_leaves() across
forks that fix one series at different values, and listings after the series change."""
from accel.merkle import hashlib_root, inner_hash
from accel.risk import CALL, FUTURE
from consensus.apps import clearing as clearing_mod
from consensus.apps.clearing import Clearing, Series
from tests.test_clearing_properties import O, T0, USD


def _settled(n: int) -> Clearing:
    c = Clearing(O, quorum=2, backend="cpu", insurance={"USD": 10**6 * USD})
    for i in range(n):
        c.list_series(Series(1 + i, "BTC", CALL, 50_000.0 + 10 * i, T0 + 3600))
    c.list_series(Series(10**6, "BTC", CALL, 60_000.0, T0 + 400 * 86400))
    c.begin_block()
    c.mark("BTC", 60_000.0, {i: 0.7 for i in c.series}, 1, T0 + 60, O[:2])
    c.root()
    return c


def _plain_root(c: Clearing) -> bytes:
    return inner_hash(c.tree.root, hashlib_root(c.globals_leaves()))


def test_forks_fixing_one_series_at_different_values_keep_their_own_roots():
    c = _settled(50)
    a, b = c.snapshot(), c.snapshot()
    a.begin_block()
    a.mark("BTC", 61_000.0, {10**6: 0.7}, 2, T0 + 7200, O[:2])
    b.begin_block()
    b.mark("BTC", 59_000.0, {10**6: 0.7}, 2, T0 + 7200, O[:2])
    assert a.fixings and a.fixings != b.fixings
    for v in (a, b, a, b):  # (the fixing hashes are shared by the forks)
        assert v.root() == _plain_root(v)
    assert a.root() != b.root()


def test_an_empty_block_hashes_no_fixing_leaf_again(monkeypatch):
    c = _settled(200)
    c.begin_block()
    c.mark("BTC", 61_000.0, {10**6: 0.7}, 2, T0 + 7200, O[:2])
    c.root()
    assert len(c.fixings) == 200
    hashed = []
    real = clearing_mod.leaf_hash
    monkeypatch.setattr(clearing_mod, "leaf_hash", lambda leaf: hashed.append(leaf[:6]) or real(leaf))
    d = c.snapshot()
    d.begin_block()
    assert d.root() == _plain_root(d)
    assert b"fixing" not in hashed and len(hashed) < 10  # the head leaves and the breaker's


def test_a_mark_s_form_check_lists_the_series_of_its_underlying_whatever_was_listed_before():
    c = Clearing(O, quorum=2, backend="cpu", insurance={"USD": 10**6 * USD})
    c.list_series(Series(1, "BTC", CALL, 60_000.0, T0 + 86400))
    assert c.mark_form_refusal("ETH", {}, O[:2]) == "no listed series has the underlying 'ETH'"
    assert c.mark_form_refusal("BTC", {1: 0.5}, O[:2]) == ""
    c.list_series(Series(2, "ETH", FUTURE, 0.0, T0 + 86400))
    c.list_series(Series(3, "ETH", CALL, 3_000.0, T0 + 86400))
    assert c.mark_form_refusal("ETH", {3: 0.5}, O[:2]) == ""
    assert "not an option on ETH" in c.mark_form_refusal("ETH", {2: 0.5}, O[:2])
    assert "not an option on BTC" in c.mark_form_refusal("BTC", {3: 0.5}, O[:2])
    assert list(c._listed("ETH")) == [i for i, s in c.series.items() if s.underlying == "ETH"]
