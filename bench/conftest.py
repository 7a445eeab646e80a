"""Benchmarks run each backend that exists here; a missing one is skipped with its reason."""
import pytest

from accel.backends import BackendUnavailable, get_backend


def backend_or_skip(name):
    try:
        return get_backend(name)
    except BackendUnavailable as exc:
        pytest.skip(f"{name} unavailable: {exc}")


@pytest.fixture(params=["cpu", "opencl", "cuda"])
def backend(request):
    return backend_or_skip(request.param)
