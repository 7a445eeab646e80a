/* C entries of kernels/sha256.h and kernels/merkle.h, across cores, SHA-NI where the CPU has it. */
#include <omp.h>
#include "../kernels/merkle.h"
#include "cpu/sha256_ni.h"

#ifdef AV_HAVE_SHANI_CODE
static int use_shani(void) {
    static int cached = -1;
    if (cached < 0) cached = sha256_ni_available();
    return cached;
}
#else
static int use_shani(void) { return 0; }
#define sha256_ni_digest(out, hp, p, msg, len) ((void)0)
#endif

/* Below this many items a parallel region costs more than it saves. */
#define AV_PAR_MIN 512

int av_sha256_many(const uint8_t *data, const uint64_t *offsets, uint8_t *out, uint64_t n) {
    int ni = use_shani();
#pragma omp parallel for schedule(dynamic, 256) if (n >= AV_PAR_MIN)
    for (int64_t i = 0; i < (int64_t)n; ++i) {
        if (ni)
            sha256_ni_digest(out + 32 * i, 0, 0, data + offsets[i], offsets[i + 1] - offsets[i]);
        else
            sha256_many_item((u64)i, data, offsets, out);
    }
    return 0;
}

int av_merkle_leaves(const uint8_t *data, const uint64_t *offsets, uint8_t *out, uint64_t n) {
    int ni = use_shani();
#pragma omp parallel for schedule(dynamic, 1024) if (n >= AV_PAR_MIN)
    for (int64_t i = 0; i < (int64_t)n; ++i) {
        if (ni)
            sha256_ni_digest(out + 32 * i, 1, 0x00, data + offsets[i], offsets[i + 1] - offsets[i]);
        else
            merkle_leaves_item((u64)i, data, offsets, out);
    }
    return 0;
}

int av_merkle_level(const uint8_t *below, uint64_t count, uint8_t *above, uint64_t n) {
    int ni = use_shani();
#pragma omp parallel for schedule(static) if (n >= AV_PAR_MIN)
    for (int64_t i = 0; i < (int64_t)n; ++i) {
        if (ni && 2 * (uint64_t)i + 1 < count)
            sha256_ni_digest(above + 32 * i, 1, 0x01, below + 64 * i, 64);
        else
            merkle_level_item((u64)i, below, count, above);
    }
    return 0;
}

int av_set_threads(int32_t threads) {
    if (threads > 0) omp_set_num_threads(threads);
    return omp_get_max_threads();
}
