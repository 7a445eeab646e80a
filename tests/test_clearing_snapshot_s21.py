"""Review s21: a snapshot's mark leaf names its own counts of vols and values, and the values were
read by slices, which past the leaf's end read as 0 without raising: a 40-byte leaf claiming 65,535
values looped that many times before the state root was checked, and a snapshot of such leaves
(one peer's, up to 64 MiB without vouching) held a syncing validator's loop for hours (8.8 KB: 6.5
s). Each count is now checked against the leaf's length before any loop."""
import struct

import pytest

from consensus.apps import clearing_snapshot as snap
from tests.test_clearing_snapshot import SHA, _genesis, _state


def _blob(accounts, globals_):
    parts = [snap.MAGIC, len(accounts).to_bytes(8, "big")]
    for leaves in (accounts, None, globals_):
        if leaves is None:
            parts.append(len(globals_).to_bytes(4, "big"))
            continue
        parts += [part for leaf in leaves for part in (len(leaf).to_bytes(4, "big"), leaf)]
    return b"".join(parts)


def test_a_mark_leaf_claiming_more_than_it_holds_is_refused_before_any_loop():
    c = _state(seed=6, steps=120)
    root, accounts, globals_ = c.root(), c.leaves(), c.globals_leaves()
    assert snap.restore(_genesis(), _blob(accounts, globals_), root, SHA).root() == root
    for nv, nq in ((0, 0xFFFF), (0xFFFF, 0), (3, 1000)):
        evil = b"mark" + b"BTC".ljust(8, b"\0") + struct.pack(">dQQH", 60_000.0, 1, 1, nv) + struct.pack(">H", nq)
        with pytest.raises(ValueError, match="a mark leaf of 40 bytes"):
            snap.restore(_genesis(), _blob(accounts, [evil] * 200), root, SHA)
    marks = [i for i, leaf in enumerate(globals_) if leaf.startswith(b"mark")]
    assert marks
    for i in marks:
        for leaf in (globals_[i][:-1], globals_[i][:-20], globals_[i] + b"\0", globals_[i] + bytes(20)):
            bad = globals_[:i] + [leaf] + globals_[i + 1:]
            with pytest.raises(ValueError, match="mark leaf of"):
                snap.restore(_genesis(), _blob(accounts, bad), root, SHA)
