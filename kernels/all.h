/* Every kernel module, for whole-source builds (nvcc check, OpenCL full build). */
#include "merkle.h"
#include "ed25519.h"
#include "ed25519_gpu.h"
#include "risk.h"
