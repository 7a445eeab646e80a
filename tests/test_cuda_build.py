"""The CUDA build of kernels/ must compile even where no GPU exists: nvcc is on CI machines."""
import json
import os
import subprocess

import numpy as np
import pytest

from accel.backends import cubins
from accel.backends.base import KERNEL_DIR, kernel_modules
from accel.backends.cuda import NVRTC_OPTIONS
from accel.backends.opencl import _PTX_FUSED

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def nvcc() -> str:
    path = cubins.nvcc()
    if path is None:
        if IN_CI:
            pytest.fail("nvcc is required under CI to compile the CUDA kernels")
        pytest.skip("nvcc not found: install the CUDA toolkit to compile-check the CUDA kernels")
    return path


def test_cuda_source_compiles_with_nvcc(tmp_path):
    assert "--fmad=false" in NVRTC_OPTIONS
    out = tmp_path / "kernels.ptx"
    proc = subprocess.run(
        [nvcc(), "--ptx", "-arch=sm_90", "--fmad=false", "-std=c++14", "-I", str(KERNEL_DIR),
         str(KERNEL_DIR / "cuda.cu"), "-o", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    ptx = out.read_text()
    for kernel in kernel_modules():
        assert f".entry av_{kernel}(" in ptx, kernel
    # contraction off: no fused floating multiply-add in any spelling (opencl's check of PTX)
    assert not _PTX_FUSED.search(ptx.encode())


def test_opencl_whole_source_builds(backends):
    """All modules together (what kernels/opencl.cl builds) compile as one OpenCL program."""
    ocl = [b for b in backends if b.name == "opencl"]
    if not ocl:
        pytest.skip("no OpenCL backend here")
    import pyopencl as cl

    from accel.backends.base import inline_source
    from accel.backends.opencl import BUILD_OPTIONS
    b = ocl[0]
    src = inline_source("portable.h") + inline_source("opencl.cl")
    cl.Program(b._ctx, src).build(options=BUILD_OPTIONS)


def test_gpu_verify_kernel_fits_registers_and_a_small_stack(tmp_path):
    """Issue 11's bar for the GPU-shaped Ed25519 kernel, read off ptxas for an H100 (sm_90): at
    most 1 KB of stack per thread and no spills, in the kernel or the functions it calls. Every
    other Ed25519 kernel of the module (the one-kernel path too) must not spill either: the field
    multiply's 32-bit products keep them within 255 registers (bench/RESULTS.md)."""
    _, resources = cubins.build("ed25519_gpu.h", "sm_90", tmp_path, compiler=nvcc())
    by_name = {r.kernel: r for r in resources}
    assert set(by_name) == {"av_ed25519_verify_k", "av_ed25519_challenge", "av_ed25519_verify",
                            "av_ed25519_key_is_safe"}, resources
    shaped = by_name["av_ed25519_verify_k"]
    assert shaped.stack <= 1024 and shaped.cumulative_stack <= 1024, shaped
    assert all(r.spill_stores == r.spill_loads == 0 for r in resources), resources


def test_opencl_builds_are_checked_for_contraction(backends):
    """The OpenCL twin of the PTX check above: every module's binary is read for fused
    multiply-adds (where the driver's format is known), and a contracted build is refused."""
    ocl = [b for b in backends if b.name == "opencl"]
    if not ocl:
        pytest.skip("no OpenCL backend here")
    import pyopencl as cl

    from accel.backends.base import KernelError
    from accel.backends.opencl import check_no_contraction
    b = ocl[0]
    for module in sorted(set(kernel_modules().values())):
        b._program(module)
    assert b.contraction_checked  # PoCL's LLVM bitcode is readable
    fused = cl.Program(b._ctx, "#pragma OPENCL FP_CONTRACT ON\n#pragma OPENCL EXTENSION cl_khr_fp64 : enable\n"
                       "__kernel void k(__global double *a) { a[0] = a[1] * a[2] + a[3]; }").build()
    with pytest.raises(KernelError, match="contracted multiply-adds"):
        check_no_contraction(fused, "a contracted test kernel")


# ---- prebuilt modules (accel build-cuda) --------------------------------------------------------
def test_build_cuda_writes_a_cubin_the_backend_finds_and_reports_ptxas(tmp_path, capsys):
    from accel.cli import main
    nvcc()
    assert main(["build-cuda", "--arch", "sm_90", "--module", "merkle.h", "--out", str(tmp_path), "--json"]) == 0
    found = cubins.find(tmp_path, "merkle.h", "sm_90")
    assert found is not None and found.read_bytes()[:4] == b"\x7fELF"
    assert [p.name for p in tmp_path.iterdir()] == [found.name]  # no source or partial file left behind
    report = json.loads(capsys.readouterr().out)
    assert {r["kernel"] for r in report} == {"av_merkle_leaves", "av_merkle_level", "av_sha256_many"}
    assert all(r["registers"] > 0 and r["spill_stores"] == 0 for r in report)
    # another architecture, other defines, or edited sources have no cubin: NVRTC builds them
    assert cubins.find(tmp_path, "merkle.h", "sm_80") is None
    assert cubins.find(tmp_path, "merkle.h", "sm_90", ("-DX=1",)) is None


def test_a_cubin_is_named_by_its_exact_source(monkeypatch):
    name = cubins.cubin_name("merkle.h", "sm_90")
    text = cubins.module_source("merkle.h")
    monkeypatch.setattr(cubins, "module_source", lambda module: text + "\n/* edited */")
    assert cubins.cubin_name("merkle.h", "sm_90") != name


def test_build_cuda_refuses_bad_arguments(capsys):
    from accel.cli import main
    assert main(["build-cuda", "--arch", "sm90"]) == 2
    assert main(["build-cuda", "--arch", "sm_90", "--module", "nope.h"]) == 2
    err = capsys.readouterr().err
    assert "expected sm_<compute capability>" in err and "not a kernel module" in err


class _FakeModule:
    """Stands in for cupy.RawModule: records how it was made; `broken` paths fail to load."""
    broken: set = set()

    def __init__(self, code=None, options=(), path=None):
        self.code, self.options, self.path = code, options, path

    def compile(self):
        if self.path in self.broken:
            raise RuntimeError("CUDA_ERROR_UNSUPPORTED_PTX_VERSION")


def _fake_cuda_backend(cubin_dir):
    import contextlib
    import types

    from accel.backends.cuda import CudaBackend
    b = object.__new__(CudaBackend)
    b._cp, b._dev = types.SimpleNamespace(RawModule=_FakeModule), contextlib.nullcontext()
    b.arch, b.cubin_dir, b._modules, b._functions, b.origins = "sm_90", str(cubin_dir), {}, {}, {}
    return b


def test_the_cuda_backend_loads_a_prebuilt_cubin_else_compiles(tmp_path, caplog):
    from accel.backends.cuda import NVRTC_OPTIONS
    caplog.set_level("INFO", logger="accel")
    b = _fake_cuda_backend(tmp_path)
    compiled = b.module("merkle.h")
    assert compiled.path is None and compiled.code == cubins.module_source("merkle.h")
    assert compiled.options == NVRTC_OPTIONS and b.module("merkle.h") is compiled  # loaded once
    assert "no prebuilt cubin for kernels/merkle.h" in caplog.text

    cubin = tmp_path / cubins.cubin_name("risk.h", "sm_90")
    cubin.write_bytes(b"\x7fELF")
    assert b.module("risk.h").path == str(cubin) == b.origins["risk.h", ()]
    variant = b.module("risk.h", ("-DX=1",))  # a variant is its own module
    assert variant.path is None and variant.options == NVRTC_OPTIONS + ("-DX=1",)

    bad = tmp_path / cubins.cubin_name("sha256.h", "sm_90")
    bad.write_bytes(b"\x7fELF")
    _FakeModule.broken = {str(bad)}
    assert b.module("sha256.h").path is None  # a cubin this driver cannot load: NVRTC instead
    assert b.origins["sha256.h", ()] == b.origins["merkle.h", ()] == "NVRTC"
    assert "cannot load" in caplog.text and "UNSUPPORTED_PTX_VERSION" in caplog.text


def test_prebuilt_cubins_give_the_bits_of_nvrtc_builds_on_a_gpu(tmp_path):
    """On a GPU: modules nvcc prebuilt (what `accel build-cuda` writes) and modules NVRTC compiled
    give the same bits, so where a validator's module came from cannot fork it."""
    from conftest import require

    from accel import greeks, merkle_root
    from accel.backends.cuda import CudaBackend
    require("cuda")
    compiler = cubins.nvcc()
    if compiler is None:
        pytest.skip("nvcc not found on this GPU machine")
    for module in ("merkle.h", "risk.h"):
        cubins.build(module, "sm_90", tmp_path / "prebuilt", compiler=compiler)
    prebuilt, nvrtc = CudaBackend(0, str(tmp_path / "prebuilt")), CudaBackend(0, str(tmp_path / "empty"))
    if prebuilt.arch != "sm_90":
        for module in ("merkle.h", "risk.h"):
            cubins.build(module, prebuilt.arch, tmp_path / "prebuilt", compiler=compiler)
    rng = np.random.default_rng(11)
    n = 100_000
    args = (rng.uniform(50, 150, n), rng.uniform(50, 150, n), rng.uniform(0, 2, n), rng.uniform(-0.01, 0.08, n),
            rng.uniform(0.05, 1.5, n), rng.integers(0, 2, n).astype(bool))
    a, b = greeks(*args, backend=prebuilt), greeks(*args, backend=nvrtc)
    assert all(np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in zip(a, b))
    leaves = rng.integers(0, 256, (1 << 14, 32), dtype=np.uint8)
    assert merkle_root(leaves, backend=prebuilt) == merkle_root(leaves, backend=nvrtc)
    for m in ("merkle.h", "risk.h"):
        assert prebuilt.origins[m, ()] == str(cubins.find(tmp_path / "prebuilt", m, prebuilt.arch))
        assert nvrtc.origins[m, ()] == "NVRTC"


def test_build_cuda_without_nvcc_says_what_to_install(monkeypatch, capsys, tmp_path):
    from accel.cli import main
    monkeypatch.setattr(cubins, "nvcc", lambda: None)
    assert main(["build-cuda", "--arch", "sm_90", "--module", "merkle.h", "--out", str(tmp_path)]) == 2
    assert "nvcc not found: install the CUDA toolkit" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_info_says_which_cuda_modules_nvrtc_will_compile(tmp_path, monkeypatch, capsys, cpu):
    """An operator reads off `accel info` whether the first block will wait on NVRTC."""
    from accel import cli
    cuda = _fake_cuda_backend(tmp_path)
    cuda.device = "NVIDIA H100 80GB HBM3 (CUDA device 0)"
    monkeypatch.setattr(cli, "probe", lambda: {"cpu": cpu, "cuda": cuda})
    monkeypatch.setattr(cli, "get_backend", lambda name=None: cuda)
    for module in sorted(set(kernel_modules().values()) - {"risk.h"}):
        (tmp_path / cubins.cubin_name(module, "sm_90")).write_bytes(b"\x7fELF")
    assert cli.main(["info"]) == 0
    assert f"cuda modules for sm_90 in {tmp_path}: no current cubin for risk.h (NVRTC" in capsys.readouterr().out
    (tmp_path / cubins.cubin_name("risk.h", "sm_90")).write_bytes(b"\x7fELF")
    assert cli.main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["backends"]["cuda"]
    assert report["available"] and report["modules"] == {
        "arch": "sm_90", "cubin_dir": str(tmp_path), "compiled_by_nvrtc_at_first_use": []}
