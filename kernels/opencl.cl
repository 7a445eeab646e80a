/* OpenCL entry: FP_CONTRACT is switched off in portable.h; never build with the mad-enable option. */
#include "all.h"
