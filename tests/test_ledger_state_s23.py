"""Review s23 of the state layer's cost: a mark applied while a block's columns were live loaded
every holder of its underlying into the block's working set, which only a write-back drops: every
later mark and columnar run of the block then scanned or copied all of them (a block of 100 small
marks and runs after a mark of an underlying held by 200,000 accounts: 3.5 s more than its two
parts apart). Now a mark reads the accounts the columns do not hold where they are; its verdicts
and the block's state are the same as one by one (tests/test_clearing_columns.py)."""
from accel import Packed
from accel.packing import pack_messages
from consensus.apps import clearing_columns as cc
from consensus.apps import clearing_tx as ctx
from consensus.apps.clearing_app import ClearingApp
from consensus.apps.clearing_load import ORACLES, ClearingLoad, genesis_market
from consensus.bench import BULK_UNDERLYING, add_accounts
from consensus.verify import Verifier


def _work(holders: int) -> tuple[int, bytes]:
    """(lines and rows the block's columns scanned or copied after a mark of an underlying held by
    `holders` bulk accounts, in 20 small runs and marks; the block's state root)."""
    load = ClearingLoad(seed=1, users=32)
    g = genesis_market("cpu")
    for body, _ in load.take(load.setup_size):
        ctx.apply(g, ctx.decode(body))
    add_accounts(g, holders)
    app = ClearingApp(Verifier("accel", "cpu"), g, max_txs=20_000, sig_cache=False)
    lead = [b for b, _ in load.take(2, mark_every=10**9)]
    small = [b for b, _ in load.take(60, mark_every=3)]
    big = ctx.mark(BULK_UNDERLYING, 100.5, 2, load.timestamp + 60, {}, [bytes(k.verify_key) for k in ORACLES[:2]])
    work = [0]
    lines, check = cc.Columns._lines_by_account, cc._check

    def counted_lines(self):
        work[0] += len(self.by_line.sorted)
        return lines(self)

    def counted_check(state, txs):
        if state._cols is not None:
            work[0] += len(state._cols.nonce) + len(state._cols.size)
        return check(state, txs)
    cc.Columns._lines_by_account, cc._check = counted_lines, counted_check
    try:
        state = app.execute(app.genesis, Packed(*pack_messages(lead + [big] + small)))
    finally:
        cc.Columns._lines_by_account, cc._check = lines, check
    return work[0], state.root


def test_a_mark_of_a_widely_held_underlying_leaves_the_rest_of_the_block_its_own_cost():
    few, _ = _work(100)
    many, _ = _work(5_000)
    assert many <= few + 100, (few, many)  # was about 20 x 5,000 more
