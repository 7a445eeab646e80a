"""Backend selection, configuration, and the fall back to the C fallback when a GPU fails."""
import hashlib
import logging
import os

import numpy as np
import pytest

import accel
from accel import config, dispatch
from accel.backends import Backend, BackendUnavailable, get_backend


def test_cpu_always_available(cpu):
    assert cpu.name == "cpu" and not cpu.is_gpu


def test_unknown_backend_named():
    with pytest.raises(BackendUnavailable, match="unknown backend 'tpu'"):
        get_backend("tpu")


def test_auto_prefers_gpu_else_cpu():
    b = get_backend("auto")
    others = [x for x in accel.probe().values() if isinstance(x, Backend) and x.is_gpu]
    assert b.is_gpu == bool(others)


def test_env_selects_backend(monkeypatch):
    monkeypatch.setenv("ACCEL_BACKEND", "cpu")
    config.reload()
    assert get_backend().name == "cpu"


def test_config_file(tmp_path):
    p = tmp_path / "accel.toml"
    p.write_text('[accel]\nbackend = "opencl"\nthreads = 2\ngpu_fallback = false\n')
    cfg = config.load(p, env={})
    assert (cfg.backend, cfg.threads, cfg.gpu_fallback) == ("opencl", 2, False)
    assert config.load(p, env={"ACCEL_BACKEND": "cpu"}).backend == "cpu"


@pytest.mark.parametrize("text,match", [
    ('[accel]\nbackend = "gpu"\n', "backend must be one of"),
    ('[accel]\nthreds = 2\n', r"accel.toml:2: unknown \[accel\] key 'threds'"),
    ('backend = "cuda"\n', r"accel.toml:1: 'backend' is outside any table; put it under \[accel\]"),
    ('# GPU on\n[acel]\nbackend = "cuda"\n', r"accel.toml:2: unknown table \[acel\]"),
    ('[accel]\nbackend = "cpu"\n[accel.extra]\nx = 1\n', r"accel.toml:3: unknown \[accel\] key 'extra'"),
    ('[accel]\n\nthreads = -1\n', r"accel.toml:3: threads must be >= 0"),
    ('[accel]\nthreads = -1\n', "threads must be"),
    ("[accel\n", "cannot read"),
    ('[accel]\ngpu_fallback = "false"\n', "gpu_fallback must be true or false"),
    ('[accel]\nthreads = "4"\n', "threads must be an integer"),
    ('[accel]\ncuda_device = -1\n', "cuda_device must be >= 0"),
])
def test_bad_config_is_explained(tmp_path, text, match):
    p = tmp_path / "accel.toml"
    p.write_text(text)
    with pytest.raises(config.ConfigError, match=match):
        config.load(p, env={})


@pytest.mark.parametrize("name,raw,match", [
    ("ACCEL_GPU_FALLBACK", "maybe", "ACCEL_GPU_FALLBACK must be true or false"),
    ("ACCEL_GPU_FALLBACK", "yes", "ACCEL_GPU_FALLBACK must be true or false"),  # TOML rejects "yes" too
    ("ACCEL_GPU_FALLBACK", "1", "ACCEL_GPU_FALLBACK must be true or false"),
    ("ACCEL_THREADS", "4.0", "ACCEL_THREADS must be an integer"),
    ("ACCEL_THREADS", "-2", "ACCEL_THREADS: threads must be >= 0"),
    ("ACCEL_BACKEND", "gpu", "ACCEL_BACKEND: backend must be one of"),
])
def test_bad_env_values_name_the_variable(name, raw, match):
    with pytest.raises(config.ConfigError, match=match):
        config.load(None, env={name: raw})


def test_env_bools_as_toml_spells_them():
    assert config.load(None, env={"ACCEL_GPU_FALLBACK": "false"}).gpu_fallback is False
    assert config.load(None, env={"ACCEL_GPU_FALLBACK": "true"}).gpu_fallback is True


def test_more_threads_than_cores_is_a_warning(tmp_path, caplog):
    p = tmp_path / "accel.toml"
    p.write_text(f"[accel]\nthreads = {(os.cpu_count() or 1) + 1}\n")
    with caplog.at_level(logging.WARNING, logger="accel"):
        config.load(p, env={})
    assert "accel.toml:2: threads" in caplog.text and "cores" in caplog.text


def test_config_is_read_once_per_process(tmp_path, monkeypatch):
    p = tmp_path / "accel.toml"
    p.write_text('[accel]\nbackend = "cpu"\ngpu_fallback = true\n')
    monkeypatch.setenv("ACCEL_CONFIG", str(p))
    first = config.reload()
    p.write_text('[accel]\nbackend = "opencl"\ngpu_fallback = false\n')  # edited mid-run
    assert config.get() is first and (config.get().backend, config.get().gpu_fallback) == ("cpu", True)
    assert config.reload().backend == "opencl"


class FailingGpu(Backend):
    """A GPU that dies after `ok` launches, as a driver reset mid-batch would."""
    name, device, is_gpu = "cuda", "flaky test GPU", True

    def __init__(self, cpu, ok):
        self.cpu, self.ok = cpu, ok

    def to_device(self, a):
        return self.cpu.to_device(a)

    def empty(self, shape, dtype):
        return self.cpu.empty(shape, dtype)

    def to_host(self, buf):
        return self.cpu.to_host(buf)

    def launch(self, kernel, n, *args, group=None):
        if self.ok == 0:
            raise RuntimeError("CUDA_ERROR_LAUNCH_FAILED (simulated)")
        self.ok -= 1
        self.cpu.launch(kernel, n, *args)


@pytest.mark.parametrize("ok", [0, 1, 5])
def test_gpu_failure_falls_back_with_same_result(cpu, caplog, monkeypatch, ok):
    monkeypatch.setenv("ACCEL_GPU_FALLBACK", "true")  # make gpu-check turns it off for the run
    config.reload()
    leaves = [bytes([i % 256]) * 40 for i in range(5000)]  # enough levels for the sixth launch
    expected = accel.merkle_root(leaves, backend=cpu)
    with caplog.at_level(logging.WARNING, logger="accel"):
        got = accel.merkle_root(leaves, backend=FailingGpu(cpu, ok))
    assert got == expected
    assert "redoing the work on the C fallback" in caplog.text


def test_fallback_can_be_disabled(cpu, monkeypatch):
    monkeypatch.setenv("ACCEL_GPU_FALLBACK", "false")
    config.reload()
    with pytest.raises(RuntimeError, match="simulated"):
        dispatch.run(FailingGpu(cpu, 0), lambda b: b.launch("sha256_many", 1, np.zeros(1, np.uint8),
                                                            np.zeros(2, np.uint64), np.zeros(32, np.uint8)))


def _calls():
    """One call of each public batch API, with inputs, for the fall-back test below."""
    from nacl.signing import SigningKey
    sk = SigningKey(bytes(range(32)))
    msgs = [bytes([i]) * i for i in range(20)]
    sigs = [sk.sign(m).signature for m in msgs]
    sigs[3] = sigs[4]  # one bad signature among good ones
    pks = [bytes(sk.verify_key)] * 20
    return {
        "ed25519_verify_batch": lambda b: accel.ed25519_verify_batch(pks, msgs, sigs, backend=b).tobytes(),
        "greeks": lambda b: np.array(accel.greeks([100.0, 90.0], 95.0, 0.5, 0.01, 0.6, [True, False],
                                                  backend=b)).tobytes(),
        "sha256_many": lambda b: b"".join(accel.sha256_many(msgs, backend=b)),
    }


@pytest.mark.parametrize("api", ["ed25519_verify_batch", "greeks", "sha256_many"])
def test_every_api_falls_back_with_same_bits(cpu, caplog, monkeypatch, api):
    monkeypatch.setenv("ACCEL_GPU_FALLBACK", "true")
    config.reload()
    call = _calls()[api]
    with caplog.at_level(logging.WARNING, logger="accel"):
        assert call(FailingGpu(cpu, 0)) == call(cpu)
    assert "redoing the work on the C fallback" in caplog.text


class CountingGpu(FailingGpu):
    """A healthy GPU stand-in that counts its launches."""

    def __init__(self, cpu):
        super().__init__(cpu, ok=10**9)
        self.launches = 0

    def launch(self, kernel, n, *args, group=None):
        self.launches += 1
        super().launch(kernel, n, *args, group=group)


@pytest.mark.parametrize("env, small_on_gpu", [({}, False), ({"ACCEL_GPU_MIN_BATCH": "0"}, True),
                                               ({"ACCEL_GPU_MIN_BATCH": "50"}, False)])
def test_small_batches_stay_on_the_c_fallback(cpu, monkeypatch, env, small_on_gpu):
    """Below gpu_min_batch (default: the measured crossover) the configured GPU is not used; an
    explicitly named backend always is."""
    from accel import backends
    gpu = CountingGpu(cpu)
    monkeypatch.setattr(backends, "get_backend", lambda name=None: gpu if name is None or name is gpu else cpu)
    monkeypatch.setattr(dispatch, "get_backend", lambda name=None: gpu if name is None or name is gpu else cpu)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
        config.reload()
    leaves = [bytes([i]) * 32 for i in range(40)]
    root = accel.merkle_root(leaves, backend=cpu)
    assert accel.merkle_root(leaves) == root
    assert (gpu.launches > 0) == small_on_gpu
    gpu.launches = 0
    assert accel.merkle_root(leaves, backend=gpu) == root
    assert gpu.launches > 0


def test_gpu_min_batch_is_validated():
    with pytest.raises(config.ConfigError, match="gpu_min_batch"):
        config.load(None, env={"ACCEL_GPU_MIN_BATCH": "-5"})
    assert config.load(None, env={"ACCEL_GPU_MIN_BATCH": "128"}).gpu_min_batch == 128


def test_auto_remembers_unavailable_backends(monkeypatch):
    """Issue 7: every call with the default backend used to retry CUDA (a CuPy import under the
    registry lock). Each backend is now tried once; reset() tries again."""
    from accel import backends
    tried = []
    real = backends._create

    def counting(name, cfg):
        tried.append(name)
        if name == "cuda":
            raise backends.BackendUnavailable("no CUDA in this test")
        return real(name, cfg)
    monkeypatch.setattr(backends, "_create", counting)
    monkeypatch.setenv("ACCEL_BACKEND", "auto")
    config.reload()
    backends.reset()
    try:
        first = backends.get_backend()
        for _ in range(5):
            assert backends.get_backend() is first
            assert accel.sha256_many([b"x"]) == [hashlib.sha256(b"x").digest()]
        assert tried.count("cuda") == 1
        with pytest.raises(backends.BackendUnavailable, match="no CUDA in this test"):
            backends.get_backend("cuda")
        assert tried.count("cuda") == 1
        backends.reset()
        backends.get_backend()
        assert tried.count("cuda") == 2
    finally:
        backends.reset()


def test_no_driver_is_named_as_such():
    from accel.backends.cuda import _import, driver_present
    if driver_present():
        pytest.skip("this machine has an NVIDIA driver")
    with pytest.raises(BackendUnavailable, match="no NVIDIA driver found"):
        _import()


def test_missing_packages_point_at_the_checkout_install(monkeypatch):
    """The README's install is `pip install -e '.[cuda]'` from the checkout: accel-verify is not
    published, so a hint naming the package sends operators nowhere."""
    import sys

    from accel.backends import cuda, opencl
    monkeypatch.setattr(cuda, "driver_present", lambda: True)
    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setitem(sys.modules, "pyopencl", None)
    for module, extra in ((cuda, "cuda"), (opencl, "opencl")):
        with pytest.raises(BackendUnavailable) as info:
            module._import()
        assert f"pip install -e '.[{extra}]'" in str(info.value)
        assert "accel-verify[" not in str(info.value)


def test_opencl_on_a_cpu_driver_is_a_warning_and_can_be_refused(monkeypatch, caplog):
    from accel import backends
    b = backend_or_none("opencl")
    if b is None or b.is_gpu:
        pytest.skip("needs an OpenCL CPU driver (PoCL)")
    monkeypatch.setenv("ACCEL_BACKEND", "opencl")
    config.reload()
    backends.reset()
    try:
        with caplog.at_level(logging.WARNING, logger="accel"):
            assert backends.get_backend().name == "opencl"
        assert "a CPU driver" in caplog.text and 'opencl_device = "gpu"' in caplog.text
        monkeypatch.setenv("ACCEL_OPENCL_DEVICE", "gpu")
        config.reload()
        backends.reset()
        with pytest.raises(BackendUnavailable, match='opencl_device = "gpu" but OpenCL offers no GPU'):
            backends.get_backend()
    finally:
        backends.reset()


def backend_or_none(name):
    try:
        return get_backend(name)
    except BackendUnavailable:
        return None
