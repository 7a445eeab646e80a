"""Packing inputs for the kernels (issue 7): the data and the offsets come from one snapshot, and
any disagreement between them is refused, so no kernel is handed offsets past its data."""
import numpy as np
import pytest

import accel
from accel.packing import pack_fixed, pack_messages


class Shifty(list):
    """A sequence whose items change between iterations, as a list another thread rewrites."""

    def __init__(self, first, later):
        super().__init__(first)
        self.later, self.passes = later, 0

    def __iter__(self):
        self.passes += 1
        return iter(list.__iter__(self) if self.passes == 1 else self.later)


class LyingLength(bytearray):
    """A buffer whose len() disagrees with the bytes it exports."""

    def __len__(self):
        return 1000


def test_offsets_never_pass_the_data():
    data, offsets = pack_messages(Shifty([b"x" * 10, b"y" * 10], [b"x" * 1000, b"y" * 1000]))
    assert int(offsets[-1]) == len(data) == 20
    assert offsets.tolist() == [0, 10, 20]


def test_fixed_records_come_from_one_snapshot():
    keys = pack_fixed(Shifty([b"a" * 32, b"b" * 32], [b"c" * 32]), 32, "public key")
    assert keys.shape == (2, 32) and bytes(keys[1]) == b"b" * 32


def test_a_disagreeing_length_is_refused(cpu):
    with pytest.raises((TypeError, ValueError), match="message 1"):
        pack_messages([b"ok", LyingLength(b"12345")])
    with pytest.raises(ValueError, match="public key 0"):
        pack_fixed([LyingLength(b"1" * 32)], 32, "public key")
    with pytest.raises((TypeError, ValueError), match="leaf 0"):
        accel.merkle_root([LyingLength(b"abc")], backend=cpu)


def test_verification_with_a_shifting_sequence_is_safe(cpu):
    """The old two-pass packing read the lengths of the second pass against the bytes of the
    first: here 2,000 bytes of offsets over 20 bytes of data."""
    msgs = Shifty([b"m" * 10, b"n" * 10], [b"m" * 1000, b"n" * 1000])
    out = accel.ed25519_verify_batch([bytes(32)] * 2, msgs, [bytes(64)] * 2, backend=cpu)
    assert out.shape == (2,)
    assert accel.sha256_many(Shifty([b"abc"], [b"abcdef" * 100]), backend=cpu) == \
        accel.sha256_many([b"abc"], backend=cpu)


def test_errors_say_leaves(cpu):
    with pytest.raises(TypeError, match="^leaves must be a list of bytes"):
        accel.merkle_root("abc", backend=cpu)
    with pytest.raises(ValueError, match="^leaves as an array must be 2-D"):
        accel.merkle_root(np.zeros(3, np.uint8), backend=cpu)
    with pytest.raises(TypeError, match="^messages must be a list"):
        accel.sha256_many(b"abc", backend=cpu)


def test_packed_input_is_taken_as_it_is(cpu):
    from accel import Packed
    msgs = [bytes([i]) * (i % 7) for i in range(50)]
    data, offsets = pack_messages(msgs)
    packed = Packed(data, offsets)
    assert accel.merkle_root(packed, backend=cpu) == accel.merkle_root(msgs, backend=cpu)
    assert accel.sha256_many(packed, backend=cpu) == accel.sha256_many(msgs, backend=cpu)
    joined = Packed.join([Packed(*pack_messages(msgs[:20])), Packed(*pack_messages(msgs[20:]))])
    assert joined.data.tobytes() == data.tobytes() and np.array_equal(joined.offsets, offsets)
    assert len(joined) == 50 and joined.item(13) == msgs[13]


@pytest.mark.parametrize("data,offsets,match", [
    (np.zeros(10, np.uint8), np.array([0, 5, 11], np.uint64), "from 0 to the data's 10 bytes"),
    (np.zeros(10, np.uint8), np.array([0, 7, 5, 10], np.uint64), "decrease at message 1"),
    (np.zeros(10, np.uint8), np.array([1, 10], np.uint64), "from 0"),
    (np.zeros(10, np.int8), np.array([0, 10], np.uint64), "1-D uint8"),
    (np.zeros(10, np.uint8), np.array([0, 10], np.int64), "uint64"),
])
def test_bad_packed_input_is_refused(cpu, data, offsets, match):
    from accel import Packed
    with pytest.raises(ValueError, match=match):
        accel.sha256_many(Packed(data, offsets), backend=cpu)
