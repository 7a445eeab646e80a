"""Review s16 of the accel boundary (rule 5), pricing inputs:
- a long double below double's range became 0 without a word: an option of t = 1e-4000 years was
  priced as expired, a strike of 1e-4000 refused as "must be > 0" (not the value given);
- |r * t| past double's range raised NumPy's RuntimeWarning, not the ValueError naming r, where
  warnings are errors (python -W error, pytest's filterwarnings = error)."""
import warnings

import numpy as np
import pytest

import accel


@pytest.mark.skipif(np.finfo(np.longdouble).tiny >= np.finfo(np.float64).tiny,
                    reason="long double is double on this platform")
def test_a_long_double_below_doubles_range_is_refused_by_name():
    tiny = np.array([np.longdouble("1e-4000")])
    with pytest.raises(ValueError, match=r"t\[0\] = 1\.e-4000: nonzero but below double precision's range"):
        accel.greeks(100.0, 100.0, tiny, 0.0, 0.5, True)
    with pytest.raises(ValueError, match=r"strike\[0\] = 1\.e-4000"):
        accel.greeks(100.0, tiny, 0.5, 0.0, 0.5, True)


def test_long_doubles_within_range_price_as_their_doubles():
    a = accel.greeks(np.array([100.0], np.longdouble), 100.0, np.array([0.5], np.longdouble), 0.0, 0.5, True)
    b = accel.greeks(100.0, 100.0, 0.5, 0.0, 0.5, True)
    for x, y in zip(a, b):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
    zero = accel.greeks(100.0, 100.0, np.array([0.0], np.longdouble), 0.0, 0.5, True)  # (0 stays 0: expired)
    assert zero.price[0] == 0.0


@pytest.mark.parametrize("r,q,name", [(1e300, 0.0, "r"), (0.0, 1e300, "q"), (1e300, -1e300, "r")])
def test_a_rate_past_doubles_range_is_a_value_error_where_warnings_are_errors(r, q, name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=rf"^{name}\[0\] = "):
            accel.greeks(100.0, 100.0, 1e300, r, 0.5, True, q=q)
