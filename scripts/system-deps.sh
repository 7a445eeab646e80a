#!/usr/bin/env bash
# System packages the build and tests need, installed with apt where we are root on Debian/Ubuntu:
#   a C compiler and Python headers (the cffi build of the C fallback), venv, and PoCL (a CPU OpenCL
#   driver, so the OpenCL backend is tested without a GPU). Elsewhere we say what is missing; the
#   OpenCL tests then skip with a reason. Under CI=true a missing PoCL or nvcc fails here, early.
set -euo pipefail

in_ci() { [ "${CI:-}" = "true" ]; }
can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }
apt_updated=0
apt_install() {
    echo "installing $* with apt-get..."
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq "$@" >/tmp/accel-apt.log 2>&1; then
        if [ $apt_updated = 0 ]; then apt-get update -qq; apt_updated=1; fi
        apt-get install -y -qq "$@" || { cat /tmp/accel-apt.log >&2; return 1; }
    fi
}

missing=()
command -v cc >/dev/null || missing+=(gcc)
python3 -c "import venv, ensurepip" 2>/dev/null || missing+=(python3-venv)
python3 -c "import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h'))" \
    2>/dev/null || missing+=(python3-dev)
[ -e /etc/OpenCL/vendors/pocl.icd ] || missing+=(pocl-opencl-icd ocl-icd-libopencl1)

if ((${#missing[@]})); then
    if can_apt; then
        apt_install "${missing[@]}"
    else
        echo "warning: missing system packages: ${missing[*]} (install them as root with apt-get)" >&2
    fi
fi

if [ ! -e /etc/OpenCL/vendors/pocl.icd ]; then
    msg="PoCL is not installed: the OpenCL tests will skip. Enable them with 'sudo apt-get install pocl-opencl-icd' (Debian/Ubuntu) or 'pip install pocl-binary-distribution' in .venv."
    if in_ci; then echo "error: $msg (required under CI)" >&2; exit 1; fi
    echo "warning: $msg" >&2
fi

if ! command -v nvcc >/dev/null && [ ! -x /usr/local/cuda/bin/nvcc ]; then
    msg="nvcc not found: the CUDA kernels cannot be compile-checked (install the CUDA toolkit)"
    if in_ci; then echo "error: $msg (required under CI)" >&2; exit 1; fi
    echo "warning: $msg; that test will skip" >&2
fi
