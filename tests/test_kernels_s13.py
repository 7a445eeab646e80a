"""The thirteenth session's review of the backends: a CUDA device that cannot be opened, the pinned
buffers of failed GPU calls, and the inputs the Python model refuses. No GPU here: the CUDA backend
runs against a stand-in for CuPy that fails where a real device does."""
import array
import contextlib
import sys
import threading
import types

import numpy as np
import pytest

import accel
from accel import config, ed25519_ref
from accel.backends import BackendUnavailable, cuda as cuda_mod, reset
from accel.backends.base import current_process
from accel.backends.cuda import PINNED_MIN_BYTES, CudaBackend
from accel.merkle import hashlib_root
from accel.risk import MarginParams


class CUDARuntimeError(RuntimeError):
    """As cupy_backends.cuda.api.runtime.CUDARuntimeError: a RuntimeError, not BackendUnavailable."""


class _Device:
    compute_capability = "90"

    def __init__(self, i):
        self.i = i

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.fixture
def busy_gpu(monkeypatch):
    """A CuPy whose device answers its count and properties (no context needed) but whose first
    stream fails, as a device held in exclusive mode by another process does."""
    def stream(non_blocking=False):
        raise CUDARuntimeError("cudaErrorDevicesUnavailable: CUDA-capable device(s) is/are busy or unavailable")
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1,
                                      getDeviceProperties=lambda i: {"name": b"NVIDIA H100 80GB HBM3"}),
        Device=_Device, Stream=stream)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(cuda_mod, "driver_present", lambda: True)
    reset()
    yield
    reset()


def test_auto_skips_a_cuda_device_that_cannot_be_opened(busy_gpu):
    config.use(config.AccelConfig(backend="auto"))
    assert accel.ed25519_verify(bytes(32), b"", bytes(64)) is True  # small-order key, R and S zero: valid
    assert accel.get_backend().name in ("cpu", "opencl")
    with pytest.raises(BackendUnavailable, match="CUDA device 0 cannot be opened.*busy"):
        accel.get_backend("cuda")


def test_a_validators_start_up_check_survives_a_cuda_device_that_cannot_be_opened(busy_gpu):
    from accel import readiness
    config.use(config.AccelConfig(backend="auto"))
    device, results = readiness.check()
    assert results and all(r.ok for r in results), results


class _Stream:
    def __init__(self, fails=False):
        self.fails, self.waits = fails, 0

    def synchronize(self):
        self.waits += 1
        if self.fails:
            raise CUDARuntimeError("cudaErrorIllegalAddress: an illegal memory access was encountered")

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _stand_in(sticky: bool = False) -> CudaBackend:
    """A CudaBackend on a GPU whose memory another process took: every small upload fails after a
    call's large (pinned, staged) one. sticky: its streams fail every wait, as after a kernel fault."""
    class _DevArray:
        def __init__(self, shape, dtype):
            self.shape, self.dtype = shape, dtype

        def set(self, host, stream=None):
            pass

    def asarray(a):
        raise MemoryError("out of memory to allocate 262144 bytes (allocated so far: 79 GiB)")

    current = _Stream(sticky)
    b = object.__new__(CudaBackend)
    b._cp = types.SimpleNamespace(asarray=asarray, empty=lambda shape, dtype: _DevArray(shape, dtype),
                                  cuda=types.SimpleNamespace(get_current_stream=lambda: current))
    b._dev, b._staged, b._started_in = contextlib.nullcontext(), threading.local(), current_process()
    b._streams = (_Stream(sticky), _Stream(sticky))
    b.device, b._functions, b._modules, b.origins = "stand-in H100 (CUDA device 0)", {}, {}, {}
    return b


@pytest.mark.parametrize("sticky", [False, True])
def test_a_failed_gpu_call_lets_its_pinned_buffers_go(monkeypatch, sticky):
    """Each call below stages 1.25 MiB through pinned memory, then fails; it is redone on the C
    fallback. Before, the staged inputs stayed pinned until a later call succeeded: 5 failed calls
    held 6.25 MiB, and a GPU that kept failing kept adding to it."""
    monkeypatch.setitem(sys.modules, "cupyx", types.SimpleNamespace(empty_pinned=np.empty))
    config.use(config.AccelConfig(backend="cpu", gpu_fallback=True))
    b = _stand_in(sticky)
    leaves = np.random.default_rng(0).integers(0, 256, (1 << 15, 40), dtype=np.uint8)
    assert leaves.nbytes >= PINNED_MIN_BYTES
    want = hashlib_root([bytes(r) for r in leaves])
    for _ in range(5):
        assert accel.merkle_root(leaves, backend=b) == want
        assert b._keep() == []
    assert all(s.waits == 5 for s in b._streams)  # each stream waited for, even after another's wait failed


def test_chunked_lets_its_buffers_go_when_a_stream_has_failed(monkeypatch):
    """A sticky error failed chunked's first stream wait: the second stream was not waited for and
    the list of staged buffers was never cleared."""
    monkeypatch.setitem(sys.modules, "cupyx", types.SimpleNamespace(empty_pinned=np.empty))
    b = _stand_in(sticky=True)
    b._keep().append(np.empty(PINNED_MIN_BYTES, np.uint8))

    def step(lo, hi):
        raise CUDARuntimeError("cudaErrorLaunchFailure: unspecified launch failure")
    with pytest.raises(CUDARuntimeError):
        b.chunked(10, 4, step)
    assert b._keep() == []
    assert [s.waits for s in b._streams] == [1, 1]


@pytest.mark.parametrize("args", [
    (memoryview(array.array("H", [0] * 16)), b"", bytes(64)),          # 32 bytes as 16 two-byte items
    (memoryview(bytes(32)).cast("B", (4, 8)), b"", bytes(64)),          # a 4 x 8 view
    (bytes(32), memoryview(b"abcdef")[::2], bytes(64)),                 # a message with gaps
    (bytes(32), b"", memoryview(bytes(64)).cast("B", (8, 8))),
], ids=["2-byte items", "2-D key", "strided message", "2-D signature"])
def test_the_model_refuses_the_buffers_accel_refuses(args):
    with pytest.raises(TypeError, match="expected bytes"):
        accel.ed25519_verify(*args, backend="cpu")
    with pytest.raises(TypeError, match="expected bytes"):
        ed25519_ref.zip215_verdict(*args)


def test_the_models_key_check_refuses_a_shaped_view():
    key = memoryview(bytes(32)).cast("B", (4, 8))
    with pytest.raises(TypeError, match="expected bytes"):
        accel.ed25519_key_is_safe(key, backend="cpu")
    with pytest.raises(TypeError, match="expected bytes"):
        ed25519_ref.key_is_safe(key)


@pytest.mark.parametrize("moves", [{-0.1: 1, 0.1: 1}, {-0.1, 0.1}, frozenset([0.2])], ids=["dict", "set", "frozenset"])
def test_margin_moves_in_no_order_are_refused(moves):
    with pytest.raises(ValueError, match="in order"):
        MarginParams(moves=moves)
    with pytest.raises(ValueError, match="in order"):
        MarginParams(extended_moves=moves)
