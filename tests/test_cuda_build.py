"""The CUDA build of kernels/ must compile even where no GPU exists: nvcc is on CI machines."""
import os
import shutil
import subprocess

import pytest

from accel.backends.base import KERNEL_DIR, kernel_modules
from accel.backends.cuda import NVRTC_OPTIONS

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def nvcc() -> str:
    path = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
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
    # contraction off: no fused multiply-add may appear in double-precision code
    assert "fma.rn.f64" not in ptx


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
