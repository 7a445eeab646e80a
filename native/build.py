"""cffi build of the C fallback: every native/*.c (which include the portable kernels/) into
accel._native, every native/*.h as its declarations
(CPU-only helpers live in native/cpu/). Runs at `pip install`."""
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Contraction and fast-math would make floating point differ from the GPU builds; kernels read
# aligned byte buffers as 32-bit words (kernels/merkle.h), which strict aliasing would forbid.
CFLAGS = ["-O3", "-std=gnu99", "-fopenmp", "-ffp-contract=off", "-fno-fast-math", "-fno-strict-aliasing", "-fPIC"]


def declarations() -> str:
    return "\n".join(p.read_text() for p in sorted(HERE.glob("*.h")))


ffibuilder = FFI()
ffibuilder.cdef(declarations())
ffibuilder.set_source(
    "accel._native",
    "#include <stdint.h>\n" + declarations(),
    sources=[str(p.relative_to(ROOT)) for p in sorted(HERE.glob("*.c"))],
    include_dirs=[str(ROOT / "kernels"), str(HERE)],
    extra_compile_args=CFLAGS,
    extra_link_args=["-fopenmp"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
