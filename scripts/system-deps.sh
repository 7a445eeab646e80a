#!/usr/bin/env bash
# System packages the tests need: PoCL, a CPU OpenCL driver, so the OpenCL backend runs without a GPU.
# Installed with apt where we are root; elsewhere the OpenCL tests skip and we say how to enable them.
set -euo pipefail

have_pocl() { [ -e /etc/OpenCL/vendors/pocl.icd ] || ls /etc/OpenCL/vendors/*.icd >/dev/null 2>&1; }

if have_pocl; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing PoCL (CPU OpenCL) with apt-get..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq pocl-opencl-icd ocl-icd-libopencl1 >/dev/null 2>&1 || {
        apt-get update -qq && apt-get install -y -qq pocl-opencl-icd ocl-icd-libopencl1 >/dev/null
    }
    have_pocl && exit 0
fi
msg="no OpenCL driver: the OpenCL tests will skip. Enable them with 'sudo apt-get install pocl-opencl-icd' (Debian/Ubuntu) or 'pip install pocl-binary-distribution' in .venv."
if [ "${CI:-}" = "true" ]; then
    echo "error: $msg (required under CI)" >&2
    exit 1
fi
echo "warning: $msg" >&2
