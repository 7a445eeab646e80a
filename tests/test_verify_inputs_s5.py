"""Signature inputs of another shape than the caller meant are refused the same way by accel and by
software-only validation (review s5)."""
import numpy as np
import pytest

import accel
from accel import Packed
from consensus.verify import Verifier


def test_a_shaped_memoryview_key_is_named_not_counted_by_rows():
    rows = memoryview(bytes(32)).cast("B", (2, 16))  # 32 bytes, but len() says 2
    with pytest.raises(TypeError, match="public_key is a 2-D memoryview"):
        accel.ed25519_verify(rows, b"", bytes(64))
    with pytest.raises(TypeError, match="signature is a 2-D memoryview"):
        accel.ed25519_verify(bytes(32), b"", memoryview(bytes(64)).cast("B", (4, 16)))
    with pytest.raises(TypeError, match="message is a non-contiguous memoryview"):
        accel.ed25519_verify(bytes(32), memoryview(bytes(8))[::2], bytes(64))
    assert accel.ed25519_verify(memoryview(bytes(32)), b"", bytearray(64)) is True  # small order, ZIP-215


@pytest.mark.parametrize("validation", ["accel", "software"])
@pytest.mark.parametrize("keys, messages, sigs", [(1, 2, 1), (2, 1, 2), (2, 2, 1), (1, 1, 2)])
def test_batch_lengths_that_differ_are_a_value_error_in_every_mode(validation, keys, messages, sigs):
    verifier = Verifier(validation)
    packed = Packed(np.zeros(0, np.uint8), np.zeros(messages + 1, np.uint64))
    k, s = np.zeros((keys, 32), np.uint8), np.zeros((sigs, 64), np.uint8)
    with pytest.raises(ValueError, match="batch lengths differ"):
        verifier.verify_all(k, packed, s)
    with pytest.raises(ValueError, match="batch lengths differ"):
        verifier.verify_each(k, packed, s)
