/* OpenCL entry: FP_CONTRACT is switched off in portable.h; never build with -cl-mad-enable. */
#include "all.h"
