"""Benchmarks run each backend that exists here; a missing one is skipped with its reason.

Suites set their own rounds (the slow baselines take seconds a round), but
`--benchmark-min-rounds` raises them, as it does for plain benchmarks, so noise can be cut from
the command line. The JSON's machine_info names the CPU, the flags the kernels use and the
libraries measured, so runs stay comparable (`make bench` autosaves under .benchmarks/;
`.venv/bin/pytest-benchmark compare` lists and compares them).

A case on the OpenCL or CUDA backend is marked `driver`: `make bench` runs those in a process of
their own (-m driver), after the rest (-m "not driver"), since a driver stays in the process
that started it, and PoCL's threads (OpenCL on a CPU) would compete with the C fallback's."""
import os
import platform
import re
import subprocess
from importlib import metadata

import pytest

from accel.backends import Backend, BackendUnavailable, get_backend, started

# Not a suite (no test in it): a script that times process CPU time (python bench/bench_state_fold.py)
collect_ignore = ["bench_state_fold.py"]
DRIVERS = ("opencl", "cuda")

CPU_FLAGS = ("sse4_2", "avx2", "avx512f", "avx512ifma", "sha_ni", "aes")
LIBRARIES = ("accel-verify", "numpy", "scipy", "pynacl", "cryptography", "cffi", "pyopencl", "cupy-cuda13x",
             "cupy-cuda12x", "pytest-benchmark")


def backend_or_skip(name):
    try:
        return get_backend(name)
    except BackendUnavailable as exc:
        pytest.skip(f"{name} unavailable: {exc}")


@pytest.fixture(params=["cpu", *DRIVERS])
def backend(request):
    return backend_or_skip(request.param)


def pytest_configure(config):
    config.addinivalue_line("markers", "driver: a case that starts the OpenCL or CUDA driver (make bench runs "
                                       "these in a process of their own)")


def pytest_collection_modifyitems(items):
    for item in items:
        if getattr(item, "callspec", None) and item.callspec.params.get("backend") in DRIVERS:
            item.add_marker(pytest.mark.driver)


@pytest.fixture
def benchmark(benchmark, request):
    """The plugin's fixture, whose pedantic() takes at least --benchmark-min-rounds rounds when
    that option is given."""
    given = any(a.startswith("--benchmark-min-rounds") for a in request.config.invocation_params.args)
    floor = request.config.getoption("benchmark_min_rounds") if given else 0
    pedantic = benchmark.pedantic

    def at_least(*args, rounds=1, **kwargs):
        return pedantic(*args, rounds=max(rounds, floor), **kwargs)
    benchmark.pedantic = at_least
    return benchmark


def _cpu():
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return platform.processor(), []
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = set(re.search(r"^flags\s*:\s*(.+)$", text, re.M).group(1).split()) if "flags" in text else set()
    return (model.group(1).strip() if model else platform.processor()), [f for f in CPU_FLAGS if f in flags]


def pytest_benchmark_update_machine_info(config, machine_info):
    model, flags = _cpu()
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        gcc = "not found"
    # Only the backends this process ran: creating the others here started their drivers (with
    # --benchmark-compare, before the first case), in the process that times the C fallback.
    devices = {name: found.device if isinstance(found, Backend) else f"unavailable: {found}"
               for name, found in started().items()}
    machine_info["accel"] = {"cpu_model": model, "cpu_flags": flags, "cores": os.cpu_count(),
                             "libraries": versions, "compiler": gcc, "backends": devices}
