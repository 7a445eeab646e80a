"""Prebuilt CUDA modules: nvcc compiles each kernel module ahead of time into a cubin for one GPU
architecture, so a validator's first block does not wait on NVRTC (about a minute per Ed25519
module on an H100 host). A cubin's file name carries a digest of the exact source text, compile
options and architecture: an edited kernel or another option finds no cubin and is compiled by
NVRTC as before, never run stale. Needs nvcc, not a GPU or CuPy (`accel build-cuda`)."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .base import KernelError, inline_source, kernel_modules

# The same options for NVRTC (accel/backends/cuda.py) and nvcc: no contracted multiply-adds.
CUDA_OPTIONS = ("--fmad=false", "--std=c++14")


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "accel-verify" / "cubin"


def module_source(module: str) -> str:
    """The self-contained text both compilers see for kernels/<module>."""
    return inline_source("portable.h") + "\n" + inline_source(module)


def cubin_name(module: str, arch: str, extra: tuple[str, ...] = ()) -> str:
    digest = hashlib.sha256("\0".join((module_source(module), *CUDA_OPTIONS, *extra, arch)).encode())
    return f"{Path(module).stem}.{arch}.{digest.hexdigest()[:16]}.cubin"


def find(directory: str | os.PathLike, module: str, arch: str, extra: tuple[str, ...] = ()) -> Path | None:
    path = Path(directory) / cubin_name(module, arch, extra)
    return path if path.is_file() else None


def stale(directory: str | os.PathLike, arch: str) -> list[str]:
    """The kernel modules with no current cubin for arch in directory (NVRTC compiles those)."""
    return [m for m in sorted(set(kernel_modules().values())) if find(directory, m, arch) is None]


def nvcc() -> str | None:
    """nvcc on PATH, else in the CUDA toolkit's usual place; None when neither."""
    fallback = "/usr/local/cuda/bin/nvcc"
    return shutil.which("nvcc") or (fallback if os.path.exists(fallback) else None)


@dataclass(frozen=True)
class KernelResources:
    """ptxas's report for one kernel; spills count the out-of-line functions it calls too."""
    kernel: str
    registers: int
    stack: int
    cumulative_stack: int
    spill_stores: int
    spill_loads: int
    shared: int


_ENTRY = re.compile(r"Compiling entry function '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas(report: str) -> list[KernelResources]:
    """The per-kernel figures of `ptxas -v` (nvcc -Xptxas -v) output."""
    out = []
    pieces = _ENTRY.split(report)
    for name, body in zip(pieces[1::2], pieces[2::2]):
        frames = [tuple(map(int, f)) for f in _FRAME.findall(body)]  # the kernel's, then its callees'
        regs = re.search(r"Used (\d+) registers", body)
        cumulative = re.search(r"(\d+) bytes cumulative stack size", body)
        smem = re.search(r"(\d+) bytes smem", body)
        if frames and regs:
            out.append(KernelResources(name, int(regs.group(1)), frames[0][0],
                                       int(cumulative.group(1)) if cumulative else frames[0][0],
                                       sum(f[1] for f in frames), sum(f[2] for f in frames),
                                       int(smem.group(1)) if smem else 0))
    return out


def build(module: str, arch: str, directory: str | os.PathLike, extra: tuple[str, ...] = (),
          compiler: str | None = None) -> tuple[Path, list[KernelResources]]:
    """Compile kernels/<module> into directory/<cubin_name>; (path, ptxas's figures)."""
    compiler = compiler or nvcc()
    if compiler is None:
        raise KernelError("nvcc not found: install the CUDA toolkit (or put nvcc on PATH) to prebuild CUDA modules")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / cubin_name(module, arch, extra)
    # Source and output in a directory of this build's own, beside the target: two builds of one
    # module (two `accel build-cuda` runs into one cache, or a module named twice) shared the .cu
    # and .part paths, so one deleted the other's source mid-compile or moved its half-written
    # output into place. The file names nvcc sees stay the target's.
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=directory))
    src, tmp = work / target.with_suffix(".cu").name, work / target.name
    try:
        src.write_text(module_source(module))
        proc = subprocess.run([compiler, "-cubin", f"-arch={arch}", *CUDA_OPTIONS, *extra, "-Xptxas", "-v",
                               "-diag-suppress", "177", str(src), "-o", str(tmp)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise KernelError(f"nvcc build of kernels/{module} for {arch} failed:\n{proc.stderr.strip()}")
        tmp.replace(target)  # complete or absent: a reader never loads half a file
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target, parse_ptxas(proc.stderr)


def build_all(arch: str, directory: str | os.PathLike, builds=None, jobs: int = 0, progress=None):
    """Compile in parallel each (module, extra options) of `builds` (default: every kernel module as
    it stands); progress(module, extra, path, resources) as each one finishes, in order."""
    builds = builds or [(m, ()) for m in sorted(set(kernel_modules().values()))]
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        futures = [(m, d, pool.submit(build, m, arch, directory, d)) for m, d in builds]
        results = []
        for module, extra, future in futures:
            path, resources = future.result()
            if progress:
                progress(module, extra, path, resources)
            results.append((module, extra, path, resources))
    return results
