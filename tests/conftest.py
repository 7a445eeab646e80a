"""Backend fixtures. A backend that cannot run here is skipped with the reason, except under CI
(CI=true), where the C fallback and OpenCL (PoCL) must be present and their absence fails the run,
and except those named in ACCEL_REQUIRE_BACKENDS (e.g. "cuda,opencl" on a GPU machine, set by
`make gpu-check`), whose absence fails too."""
from __future__ import annotations

import logging
import os

import pytest

from accel import config
from accel.backends import Backend, BackendUnavailable, get_backend

ALL = ("cpu", "opencl", "cuda")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REQUIRED = ({"cpu", "opencl"} if IN_CI else {"cpu"}) | {
    name.strip() for name in os.environ.get("ACCEL_REQUIRE_BACKENDS", "").split(",") if name.strip()}

_cache: dict[str, Backend | BackendUnavailable] = {}


def backend_or_reason(name: str) -> Backend | BackendUnavailable:
    if name not in _cache:
        try:
            _cache[name] = get_backend(name)
        except BackendUnavailable as exc:
            _cache[name] = exc
    return _cache[name]


def require(name: str) -> Backend:
    b = backend_or_reason(name)
    if isinstance(b, Backend):
        return b
    if name in REQUIRED:
        pytest.fail(f"{name} backend is required here but unavailable: {b}")
    pytest.skip(f"{name} backend unavailable: {b}")


@pytest.fixture(params=ALL)
def backend(request) -> Backend:
    """Each backend in turn."""
    return require(request.param)


@pytest.fixture(scope="session")
def backends() -> list[Backend]:
    """Every backend that runs here (the C fallback always among them), for cross-checks."""
    found = []
    for name in ALL:
        b = backend_or_reason(name)
        if isinstance(b, Backend):
            found.append(b)
        elif name in REQUIRED:
            pytest.fail(f"{name} backend is required here but unavailable: {b}")
    return found


@pytest.fixture
def cpu() -> Backend:
    return require("cpu")


@pytest.fixture(autouse=True)
def fresh_config():
    """The configuration is read once per process; a test that changes the environment calls
    config.reload(), and this puts the process's settings back after monkeypatch undoes it."""
    yield
    config.reload()


@pytest.fixture
def quiet_logs():
    """Internal errors are logged with their tracebacks; tests that feed the ledger hostile input
    look at verdicts, so they silence the log (pytestmark = pytest.mark.usefixtures("quiet_logs"))."""
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)
