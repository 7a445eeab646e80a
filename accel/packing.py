"""Turns Python inputs into the packed buffers kernels read: messages end to end with an offsets
array, fixed-width records as (n, width) uint8 arrays. Wrong types and shapes raise here, naming
the offending index, before any backend is touched."""
from __future__ import annotations

import numpy as np

_BYTES = (bytes, bytearray, memoryview)


def pack_messages(messages, what: str = "message") -> tuple[np.ndarray, np.ndarray]:
    """(data uint8[total], offsets uint64[n+1]) from a list of bytes or a 2-D uint8 array."""
    if isinstance(messages, np.ndarray):
        if messages.dtype != np.uint8 or messages.ndim != 2:
            raise ValueError(f"{what}s as an array must be 2-D uint8 (n, length), got {messages.dtype} {messages.shape}")
        n, width = messages.shape
        return np.ascontiguousarray(messages).reshape(-1), np.arange(n + 1, dtype=np.uint64) * np.uint64(width)
    if isinstance(messages, (str, *_BYTES)) or not hasattr(messages, "__len__"):
        raise TypeError(f"{what}s must be a list of bytes or a 2-D uint8 array, not {type(messages).__name__}")
    n = len(messages)
    try:
        joined = b"".join(messages)  # fast path; a non-bytes item is found below
    except TypeError:
        joined = None
    offsets = np.zeros(n + 1, dtype=np.uint64)
    if n and joined is not None:
        np.cumsum(np.fromiter(map(len, messages), dtype=np.uint64, count=n), out=offsets[1:])
    # len() undercounts any buffer whose items are wider than a byte, so equal totals mean every
    # item is plain bytes-like; otherwise find and name the first offender.
    if joined is None or int(offsets[-1]) != len(joined):
        for i, m in enumerate(messages):
            if not isinstance(m, _BYTES) or len(m) != memoryview(m).nbytes:
                raise TypeError(f"{what} {i} is {type(m).__name__}, expected bytes")
    data = np.frombuffer(joined, dtype=np.uint8)
    return data, offsets


def pack_fixed(records, width: int, what: str) -> np.ndarray:
    """(n, width) uint8 array from a list of `width`-byte strings or such an array."""
    if isinstance(records, np.ndarray):
        if records.dtype != np.uint8 or records.ndim != 2 or records.shape[1] != width:
            raise ValueError(f"{what}s as an array must be uint8 of shape (n, {width}), got {records.dtype} {records.shape}")
        return np.ascontiguousarray(records)
    if isinstance(records, (str, *_BYTES)) or not hasattr(records, "__len__"):
        raise TypeError(f"{what}s must be a list of {width}-byte strings or a uint8 array, not {type(records).__name__}")
    for i, r in enumerate(records):
        if not isinstance(r, _BYTES):
            raise TypeError(f"{what} {i} is {type(r).__name__}, expected {width} bytes")
        if len(r) != width:
            raise ValueError(f"{what} {i} is {len(r)} bytes, expected {width}")
    return np.frombuffer(b"".join(records), dtype=np.uint8).reshape(len(records), width).copy()
