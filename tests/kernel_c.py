"""kernels/ compiled as plain C through cffi, for tests that call kernel functions directly."""
import importlib.util

import pytest

from accel.backends.base import KERNEL_DIR


def compile_as_c(tmp_dir, name: str, cdef: str, source: str, flags=()):
    """The module `name` built from `source` (which #includes kernel headers), exposing `cdef`.
    -fwrapv: an i32 or i64 overflow gives a wrong result here instead of undefined behaviour (the
    GPU compilers wrap too). Skips when there is no C compiler, as the C fallback could not have
    been built either."""
    cffi = pytest.importorskip("cffi")
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    ffi.set_source(name, source, include_dirs=[str(KERNEL_DIR)],
                   extra_compile_args=["-O2", "-fwrapv", "-std=gnu99", *flags])
    try:
        path = ffi.compile(tmpdir=str(tmp_dir))
    except Exception as exc:
        pytest.skip(f"cannot compile kernels/ as C: {exc}")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
