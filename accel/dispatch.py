"""Runs work on a backend; a GPU that fails mid-batch is logged and the work redone on the C
fallback, whose results are bit-identical, so a validator's verdict never depends on the GPU."""
from __future__ import annotations

import logging
from typing import Callable, TypeVar

from . import config
from .backends import Backend, get_backend

log = logging.getLogger("accel")
T = TypeVar("T")


def run(backend: str | Backend | None, fn: Callable[[Backend], T]) -> T:
    b = get_backend(backend)
    if b.name == "cpu":
        return fn(b)
    try:
        return fn(b)
    except Exception as exc:
        if not config.load().gpu_fallback:
            raise
        log.warning("%s backend failed (%s: %s); redoing the work on the C fallback", b.name, type(exc).__name__, exc)
        return fn(get_backend("cpu"))
