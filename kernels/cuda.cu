/* CUDA entry: compiled by NVRTC through CuPy (per module) and by nvcc in CI, always --fmad=false. */
#include "all.h"
