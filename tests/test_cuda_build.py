"""The CUDA build of kernels/ must compile even where no GPU exists: nvcc is on CI machines."""
import os
import re
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


def test_gpu_verify_kernel_fits_registers_and_a_small_stack(tmp_path):
    """Issue 11's bar for the GPU-shaped Ed25519 kernel, read off ptxas for an H100 (sm_90): at
    most 1 KB of stack per thread and no spills, in the kernel or the functions it calls."""
    from accel.backends.base import inline_source
    src = tmp_path / "ed25519_gpu.cu"
    src.write_text(inline_source("portable.h") + "\n" + inline_source("ed25519_gpu.h"))
    proc = subprocess.run(
        [nvcc(), "-cubin", "-arch=sm_90", "--fmad=false", "-std=c++14", "-Xptxas", "-v", str(src),
         "-o", str(tmp_path / "k.cubin")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = proc.stderr.split("Compiling entry function 'av_ed25519_verify_k'")[1].split("Compiling entry")[0]
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert frames, proc.stderr
    assert int(frames[0][0]) <= 1024, report
    assert all(int(stores) == 0 and int(loads) == 0 for _, stores, loads in frames), report
    assert int(re.search(r"(\d+) bytes cumulative stack size", report).group(1)) <= 1024, report


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
