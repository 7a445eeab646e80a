"""Which oracle marks a proposal must carry for this validator to vote for it.

A proposer chooses which pending marks its block carries. Left free, it could margin its own
accounts' trades (or withdrawals) at a mark it knows is stale and have the insurance fund pay the
move it held back (docs/CLEARING.md, "What the rule does not stop: a mark held back"): no rule of
the ledger can tell a stale mark from a current one, every validator must reach the same verdict
on a block. So the check is a vote, not a verdict: a validator holding a signed mark the block
leaves out does not vote for it, the view times out, and the next leader's block carries it. A
block refused this way is not invalid (it is kept, and taken if the others certify it), its
proposer is not faulted, and a replayed, fetched or restored block is never judged so.

What is demanded, per underlying, of a block whose certificate (its TC, else its QC) holds this
validator's own timeout or vote, so that its leader built it after that left here: where this
validator holds quorum marks the parent's state has not reached, got `grace_s` before the
previous proposal it was asked to vote for as it came (or built) arrived, the block carries a mark
of that underlying, unless none of them would apply on the block's state. The leader had those
marks when it built (it built after this validator's vote or timeout, sent after that proposal
came, and oracle messages reach validators less than `grace_s` apart); a block fetched, resumed
or of another view moves nothing, and a block whose certificate lacks this validator's vote or
timeout is asked nothing (nothing then bounds when it was built). Any mark past the parent's will
do (this validator may have missed older ones the proposer carries). An honest proposer always
carries a pending quorum mark of each underlying that is not stale on its parent (ClearingApp.
propose moves the first ones ahead of a full block), so no honest block is refused unless the
oracles' messages reached the proposer more than `grace_s` after this validator. What is left: a
mark that arrived within about a view (after the previous proposal, less grace_s) can still be
held back, and where several marks of an underlying wait (a mempool deeper than a block) a
proposer may carry the oldest alone."""
from __future__ import annotations

import time
from typing import Callable

from . import clearing_tx as ctx

GRACE_S = 0.5  # [node] mark_grace_ms's default: oracle messages reach validators further apart than this rarely


class MarkWatch:
    def __init__(self, clock: Callable[[], float] = time.monotonic, grace_s: float = GRACE_S):
        self.clock, self.grace_s = clock, grace_s
        self.arrived: dict[bytes, tuple[float, ctx.Tx]] = {}  # mempool digest -> (when admitted, the mark)
        # when the latest proposal this validator was asked to vote for (a valid one of its view,
        # come as a proposal: ClearingApp.endorse) arrived, or it built one: not a block fetched,
        # resumed after its parent was fetched, or of another view (a parent fetched just before its child made every mark older than grace_s demanded
        # of the child, also ones that reached the leader after it built it), nor one that does not
        # validate (a Byzantine peer's, sent just before the leader's)
        self.last_handled = float("-inf")

    def admitted(self, digest: bytes, tx: ctx.Tx) -> None:
        self.arrived.setdefault(digest, (self.clock(), tx))

    def prune(self, mempool) -> None:
        """Forget the marks gone from the mempool (committed, stale or evicted)."""
        for digest in [d for d in self.arrived if d not in mempool]:
            del self.arrived[digest]

    def demanded(self, mempool, parent, cutoff: float) -> dict[str, list[tuple[ctx.Tx, float]]]:
        """Per underlying, the marks the `parent` state (a Clearing) has not reached that this
        validator got before `cutoff`, oldest first, each with the seconds it was held."""
        self.prune(mempool)
        now = self.clock()
        oracles, quorum, held = set(parent.oracles), parent.quorum, {}
        for at, tx in self.arrived.values():
            underlying, _, sequence, timestamp, _ = tx.fields
            last = parent.marks.get(underlying)
            if at > cutoff or (last is not None and (sequence <= last.sequence or timestamp <= last.timestamp)):
                continue
            if len(oracles.intersection(tx.signers)) >= quorum:
                held.setdefault(underlying, []).append((tx, now - at))
        return {u: sorted(marks, key=lambda m: m[0].fields[2]) for u, marks in sorted(held.items())}
