"""Review s15 of the accel API: MarginParams took NumPy scalars in its moves but refused them in
its scalar fields, saying they were not finite numbers."""
from __future__ import annotations

import numpy as np
import pytest

from accel.risk import MarginParams


@pytest.mark.parametrize("field, value", [("vol_ref_days", np.int64(30)), ("vol_up", np.float32(0.5)),
                                          ("initial_multiplier", np.int32(2)), ("tick", np.float64(0.01))])
def test_margin_params_take_numpy_scalars_as_plain_floats(field, value):
    p = MarginParams(**{field: value})
    assert type(getattr(p, field)) is float and getattr(p, field) == float(value)
    assert p == MarginParams(**{field: float(value)})


@pytest.mark.parametrize("value", [np.float64("nan"), np.float32("inf"), np.bool_(True), True, "30", None])
def test_margin_params_still_refuse_what_is_not_a_finite_number(value):
    with pytest.raises(ValueError, match="vol_ref_days must be finite numbers"):
        MarginParams(vol_ref_days=value)
