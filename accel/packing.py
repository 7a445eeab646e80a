"""Turns Python inputs into the packed buffers kernels read: messages end to end with an offsets
array, fixed-width records as (n, width) uint8 arrays. Wrong types and shapes raise here, naming
the offending index, before any backend is touched."""
from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbcSet
from typing import NamedTuple

import numpy as np

_BYTES = (bytes, bytearray, memoryview)


class Packed(NamedTuple):
    """Messages already packed end to end: message i is data[offsets[i]:offsets[i + 1]]. Batch
    APIs take it as it is (checked with a few vectorised comparisons, no per-item work), so a
    block decoded from the wire goes to the kernels without a Python loop."""
    data: np.ndarray     # uint8
    offsets: np.ndarray  # uint64, n + 1 entries, from 0 to len(data), never decreasing

    @classmethod
    def join(cls, parts) -> "Packed":
        """One Packed from several, in order (array concatenation, no per-item work). Each part is
        checked as the batch APIs check a Packed (uint8 data, uint64 offsets from 0 to the data's
        length, never decreasing); a ValueError names the first bad part, a TypeError a part that
        is not a Packed. (Unchecked, each part's first offset was dropped and its last never
        compared with its data: two malformed parts joined into a well-formed batch cut in other
        places, and int64 offsets came out as float64.)"""
        checked = []
        for i, p in enumerate(parts):
            if not isinstance(p, Packed):
                raise TypeError(f"Packed.join: part {i} is a {type(p).__name__}, not a Packed")
            try:
                checked.append(_check_packed(p, "message"))
            except ValueError as exc:
                raise ValueError(f"Packed.join: part {i}: {exc}") from None
        datas = [d for d, _ in checked]
        sizes = np.cumsum([0] + [len(d) for d in datas[:-1]], dtype=np.uint64)
        offsets = np.concatenate([np.zeros(1, np.uint64)] + [o[1:] + base for (_, o), base in zip(checked, sizes)])
        return cls(np.concatenate(datas) if datas else np.zeros(0, np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def item(self, i: int) -> bytes:
        """Message i, counted from the end when negative as in a list (offsets[i + 1] of i = -1 is
        offsets[0]: that read an empty message); IndexError outside the batch."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):  # (1.0 and True read message 1)
            raise TypeError(f"a message index is an integer, not {type(i).__name__}")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"message {i} of a batch of {n}")
        i = int(i) + n if i < 0 else int(i)
        return self.data[int(self.offsets[i]):int(self.offsets[i + 1])].tobytes()


def exact_bytes(b) -> bytes:
    """The bytes in b (bytes, bytearray or a byte memoryview) as an exact bytes object, whose
    length and comparisons no subclass overrides (a body whose len() said 61 of its 64 bytes
    decoded, verified and was proposed, and every validator refused the block)."""
    if type(b) is bytes:
        return b
    return bytes.__getitem__(b, slice(None)) if isinstance(b, bytes) else bytes(memoryview(b))


def _buffer_problem(m) -> str | None:
    """Why m cannot be taken as a run of bytes, or None: bytes and bytearray always can; a
    memoryview only when it is one C-contiguous dimension of 1-byte items (len() counts other
    views' rows or items, not bytes, and b"".join refuses a non-contiguous one)."""
    if isinstance(m, (bytes, bytearray)):
        return None
    if not isinstance(m, memoryview):
        return type(m).__name__
    if m.ndim != 1 or m.itemsize != 1:
        return f"a {m.ndim}-D memoryview of {m.itemsize}-byte items ({m.format!r})"
    if not m.c_contiguous:
        return "a non-contiguous memoryview (bytes() copies it)"
    return None


def _check_sequence(items, plural: str, expected: str) -> None:
    """Batch inputs are ordered: a set or a mapping would pair items with others' by hash order."""
    if isinstance(items, (str, *_BYTES)) or not hasattr(items, "__len__"):
        raise TypeError(f"{plural} must be {expected}, not {type(items).__name__}")
    if isinstance(items, (AbcSet, Mapping)):
        raise TypeError(f"{plural} must be {expected} in order, not a {type(items).__name__} (unordered)")


def _plain(a: np.ndarray) -> np.ndarray:
    """a as a plain ndarray on the same memory. A subclass may override shape, dtype, ndim or
    len(): checks must read the array's own (a 10-byte array claiming 2**40 bytes let offsets
    that far through, and the kernels read past it)."""
    return a if type(a) is np.ndarray else np.ndarray.view(a, np.ndarray)


def _check_packed(p: Packed, what: str) -> tuple[np.ndarray, np.ndarray]:
    data, offsets = p
    if isinstance(data, np.ndarray):
        data = _plain(data)
    if isinstance(offsets, np.ndarray):
        offsets = _plain(offsets)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 1):
        raise ValueError(f"packed {what}s: data must be a 1-D uint8 array")
    if not (isinstance(offsets, np.ndarray) and offsets.dtype == np.uint64 and offsets.ndim == 1 and len(offsets)):
        raise ValueError(f"packed {what}s: offsets must be a non-empty 1-D uint64 array")
    # Our own copy of the offsets, checked and then handed to the kernels: they index the data with
    # them while the GIL is released (the C fallback) or after an upload, so checking the caller's
    # array would let another thread change it in between and send a kernel past the data (a
    # segfault). 8 bytes per message. The data may change too, but only changes the digests.
    offsets = np.array(offsets, dtype=np.uint64, order="C", copy=True)
    if offsets[0] != 0 or int(offsets[-1]) != len(data):
        raise ValueError(f"packed {what}s: offsets must run from 0 to the data's {len(data)} bytes")
    bad = np.flatnonzero(offsets[1:] < offsets[:-1])
    if bad.size:
        raise ValueError(f"packed {what}s: offsets decrease at {what} {int(bad[0])}")
    return np.ascontiguousarray(data), np.ascontiguousarray(offsets)


def _plural(what: str) -> str:
    return what[:-1] + "ves" if what.endswith("f") else what + "s"


def pack_messages(messages, what: str = "message") -> tuple[np.ndarray, np.ndarray]:
    """(data uint8[total], offsets uint64[n+1]) from a list of bytes, a 2-D uint8 array, or a
    Packed."""
    if isinstance(messages, Packed):
        return _check_packed(messages, what)
    if isinstance(messages, np.ndarray):
        messages = _plain(messages)  # its own shape and dtype, not a subclass's
        if messages.dtype != np.uint8 or messages.ndim != 2:
            raise ValueError(f"{_plural(what)} as an array must be 2-D uint8 (n, length), got {messages.dtype} {messages.shape}")
        n, width = messages.shape
        return np.ascontiguousarray(messages).reshape(-1), np.arange(n + 1, dtype=np.uint64) * np.uint64(width)
    _check_sequence(messages, _plural(what), "a list of bytes or a 2-D uint8 array")
    # One snapshot: the joined bytes and the lengths must come from the same items, or a sequence
    # that yields other items a second time (or a list another thread changes meanwhile) would
    # hand the kernels offsets past the end of the data.
    items = list(messages)
    n = len(items)
    try:
        joined = b"".join(items)  # fast path; a non-bytes item is found below
    except TypeError:
        joined = None
    offsets = np.zeros(n + 1, dtype=np.uint64)
    if n and joined is not None:
        # Each item's own size: len() is whatever a class says (a bytes subclass may override it,
        # a shaped buffer's len() counts rows), and sizes that are wrong but add up to the joined
        # length split the messages in the wrong places (other digests and verdicts, no error).
        try:  # bytes and its subclasses: the real length, as fast as len()
            sizes = np.fromiter(map(bytes.__len__, items), dtype=np.uint64, count=n)
        except TypeError:  # bytearrays, memoryviews, other buffers: len() must be the size
            sizes = np.fromiter((_size(what, i, m) for i, m in enumerate(items)), dtype=np.uint64, count=n)
        np.cumsum(sizes, out=offsets[1:])
    if joined is None or int(offsets[-1]) != len(joined):
        # len() undercounts a buffer whose items are wider than a byte: name the first offender
        for i, m in enumerate(items):
            problem = _buffer_problem(m)
            if problem is None and _len(m) != memoryview(m).nbytes:
                problem = f"{type(m).__name__} whose len() is not its size"
            if problem:
                raise TypeError(f"{what} {i} is {problem}, expected bytes")
        if joined is None:
            raise TypeError(f"{_plural(what)} could not be joined as bytes")
        raise ValueError(f"{_plural(what)} changed size while being packed (another thread resized a "
                         f"bytearray?); {len(joined)} bytes joined, lengths sum to {int(offsets[-1])}")
    return np.frombuffer(joined, dtype=np.uint8), offsets


def _size(what: str, i: int, m) -> int:
    """The byte size of item i, a buffer b"".join took; TypeError unless it is what every entry
    point takes as bytes (_buffer_problem) and its len() is that size. (A list of NumPy rows was
    taken here alone: a root or verdict from the kernels, a TypeError from the single-item calls,
    pack_fixed and the software-only models.)"""
    problem, size = _buffer_problem(m), memoryview(m).nbytes
    if problem is None and _len(m) != size:
        problem = f"{type(m).__name__} whose len() is not its size"
    if problem:
        raise TypeError(f"{what} {i} is {problem}, expected bytes")
    return size


def _len(m) -> int | None:
    """len(m), or None for an object without one (a 0-d array: len() raised a TypeError that named
    no item)."""
    try:
        return len(m)
    except TypeError:
        return None


def pack_fixed(records, width: int, what: str) -> np.ndarray:
    """(n, width) uint8 array from a list of `width`-byte strings or such an array."""
    if isinstance(records, np.ndarray):
        records = _plain(records)  # its own shape and dtype, not a subclass's
        if records.dtype != np.uint8 or records.ndim != 2 or records.shape[1] != width:
            raise ValueError(f"{what}s as an array must be uint8 of shape (n, {width}), got {records.dtype} {records.shape}")
        return np.ascontiguousarray(records)
    _check_sequence(records, f"{what}s", f"a list of {width}-byte strings or a uint8 array")
    items = list(records)  # one snapshot, as in pack_messages
    for i, r in enumerate(items):
        problem = _buffer_problem(r)
        if problem:
            raise TypeError(f"{what} {i} is {problem}, expected {width} bytes")
        if len(r) != width or memoryview(r).nbytes != width:
            raise ValueError(f"{what} {i} is {memoryview(r).nbytes} bytes, expected {width}")
    joined = b"".join(items)
    if len(joined) != width * len(items):
        raise ValueError(f"{_plural(what)} changed size while being packed (another thread resized a bytearray?)")
    return np.frombuffer(joined, dtype=np.uint8).reshape(len(items), width).copy()
