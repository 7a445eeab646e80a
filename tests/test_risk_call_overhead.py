"""The per-call shortcuts of portfolio_margin on the C fallback: the parameter array built once per
MarginParams, the kernel signatures looked up once, and validity checks that skip their masks when
the input is good, each still giving what the full work gave."""
from __future__ import annotations

import re

import numpy as np
import pytest

from accel.backends import KernelError
from accel.risk import _P_INDEX, _P_RATE, CALL, FUTURE, MarginParams, Marks, Portfolio, portfolio_margin

MARKS = dict(index=100.0, rate=0.0, forward=[100.0, 100.0], strike=[100.0, 90.0], expiry=[0.1, 0.2],
             vol=[0.5, 0.6], kind=[CALL, FUTURE])
BOOK = dict(offsets=[0, 1, 3], instrument=[0, 1, 1], size=[1.0, -1.0, 2.0])


def test_param_array_is_fresh_per_call():
    p = MarginParams(moves=(-0.1, 0.1), extended_moves=(0.5,))
    p._array(100.0, 0.01)[:] = np.nan  # a caller's scribbles stay in its own copy
    got = p._array(250.0, -0.0)
    assert got[_P_INDEX] == 250.0 and got[_P_RATE] == 0.0 and np.signbit(got[_P_RATE])
    built = MarginParams(**vars(p))._array(250.0, -0.0)  # an equal object: its array built anew
    assert got.tobytes() == built.tobytes()


def test_param_array_is_kept_per_object_not_per_equal_value():
    plus, minus = MarginParams(vol_up=0.0), MarginParams(vol_up=-0.0)
    assert plus == minus and hash(plus) == hash(minus)
    assert not np.signbit(plus._array(100.0, 0.0)[2])
    assert np.signbit(minus._array(100.0, 0.0)[2])


def test_cached_signature_still_checks_arguments(cpu):
    portfolio_margin(BOOK, MARKS, backend=cpu)  # the signature of av_portfolio_margin is now cached
    n = 2
    args = [np.zeros(3, np.int64), np.zeros(n, np.int32), np.zeros(n)] + [np.ones(2)] * 4 + \
        [np.zeros(2, np.uint8), MarginParams()._array(100.0, 0.0), np.empty(n, np.int64), np.empty(n, np.int64),
         np.empty(n, np.int32)]
    with pytest.raises(KernelError, match="takes 12 arguments before n, got 11"):
        cpu.launch("portfolio_margin", n, *args[:-1])
    with pytest.raises(KernelError, match=re.escape("argument 1: int64 array passed as int32_t *")):
        cpu.launch("portfolio_margin", n, *args[:1], np.zeros(n, np.int64), *args[2:])
    with pytest.raises(KernelError, match=re.escape("argument 2: expected a contiguous double * buffer")):
        cpu.launch("portfolio_margin", n, *args[:2], np.zeros(2 * n)[::2], *args[3:])
    for _ in range(2):  # a missing kernel is not remembered as found
        with pytest.raises(KernelError, match="has no av_nope"):
            cpu.launch("nope", 1)


@pytest.mark.parametrize("book,marks,message", [
    (dict(offsets=np.array([0, 3, 2, 3], np.int32)), {}, "offsets[2] = 2: must not decrease"),
    (dict(offsets=np.array([0, 1, 2**63], np.uint64)), {}, "offsets[2] = 9223372036854775808: does not fit int64"),
    (dict(instrument=[0, 2**31, -2**31 - 1]), {}, "instrument[1] = 2147483648: does not fit int32"),
    (dict(instrument=np.array([0, 2**40, 1], np.uint64)), {}, "instrument[1] = 1099511627776: does not fit int32"),
    (dict(instrument=[0, -1, 1]), {}, "instrument[1] = -1: must index the 2 instruments of marks"),
    (dict(instrument=np.array([0, 1, 2], np.int8)), {}, "instrument[2] = 2: must index the 2 instruments of marks"),
    (dict(size=[1.0, np.inf, np.nan]), {}, "size[1] = inf: must be finite"),
    ({}, dict(kind=[CALL, 255]), "kind[1] = 255: must be one of (0, 1, 8, 2, 3, 10)"),
])
def test_bad_input_messages_behind_the_fast_paths(cpu, book, marks, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        portfolio_margin(BOOK | book, MARKS | marks, backend=cpu)


@pytest.mark.parametrize("instrument", [[True, False, False], np.array([1, 0, 0], np.int8),
                                        np.array([1, 0, 0], np.uint64), np.array([1, 0, 0], np.int64)])
def test_integer_types_that_fit_need_no_range_check(cpu, instrument):
    book = Portfolio(offsets=[0, 1, 3], instrument=instrument, size=[1.0, -1.0, 2.0])
    assert book.instrument.dtype == np.int32 and book.instrument.tolist() == [1, 0, 0]
    want = portfolio_margin(BOOK | dict(instrument=np.array([1, 0, 0], np.int32)), Marks(**MARKS), backend=cpu)
    got = portfolio_margin(book, Marks(**MARKS), backend=cpu)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(got, want))
