#!/usr/bin/env bash
# Before a GPU lease, here (nvcc and network, no GPU): what `make gpu-check` needs that the lent
# machine cannot make quickly or at all, in ignored folders that travel with the run's `carry`:
#   .cubin/                every CUDA module and the Ed25519 tuning variants prebuilt for $ARCH
#                          (default sm_90: H100, H200); NVRTC there spends about a minute of
#                          device time on each Ed25519 module
#   gpu-wheels/            the Python packages its image lacks (it has no network)
#   .testdata/             a copy of ../shared/testdata (only the checkout travels)
#   accel/_native.abi3.so  the C fallback, used there if it cannot be built
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PY:-.venv/bin/python}
arch=${ARCH:-sm_90}
rm -rf .cubin  # cubins of edited sources would only add to what travels
$py -m accel.cli build-cuda --arch "$arch" --out .cubin
$py bench/ed25519_variants.py --prebuild .cubin --arch "$arch"
if [ ! -d gpu-wheels ]; then
    $py -m pip download -q --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
        --platform manylinux2014_x86_64 -d gpu-wheels cffi pycparser pyopencl pynacl cryptography mpmath
    rm -f gpu-wheels/numpy-*  # keep the machine's own NumPy
fi
if [ -d ../shared/testdata ]; then
    rm -rf .testdata && cp -r ../shared/testdata .testdata
fi
echo "ready: $(ls .cubin | wc -l) cubins ($(du -sh .cubin | cut -f1)), $(ls gpu-wheels | wc -l) wheels," \
     "test vectors $([ -d .testdata ] && echo copied || echo 'absent (../shared/testdata missing)')"
echo "device run: carry [\"gpu-wheels\", \".cubin\", \".testdata\", \"accel/_native.abi3.so\"]," \
     "command: ACCEL_TESTDATA=\$PWD/.testdata make gpu-check"
