/* C entries of kernels/sha256.h and kernels/merkle.h, across cores, SHA-NI where the CPU has it. */
#include <omp.h>
#include "../kernels/merkle.h"
#include "cpu/sha256_ni.h"

/* Below this many items (about 0.2 ms of hashing) waking other threads costs more than it saves,
 * and on a busy machine a descheduled thread stalls the whole region. */
#define AV_PAR_MIN 8192
#define AV_LANES 2

#ifdef AV_HAVE_SHANI_CODE
static int use_shani(void) {
    static int cached = -1;
    if (cached < 0) cached = sha256_ni_available();
    return cached;
}

/* Items AV_LANES*g .. AV_LANES*g+AV_LANES-1 of a packed batch, side by side when all are short. */
static void ni_hash_group(uint64_t g, uint64_t n, int has_prefix, uint8_t prefix, const uint8_t *data,
                          const uint64_t *offsets, uint8_t *out) {
    uint64_t i = AV_LANES * g, len[AV_LANES];
    const uint8_t *m[AV_LANES];
    uint8_t *o[AV_LANES];
    int short_all = i + AV_LANES <= n;
    for (int l = 0; short_all && l < AV_LANES; ++l) {
        len[l] = offsets[i + l + 1] - offsets[i + l];
        m[l] = data + offsets[i + l];
        o[l] = out + 32 * (i + l);
        short_all = len[l] < 119;
    }
    if (short_all && has_prefix && prefix == 0x00 && len[0] == 32 && len[1] == 32) {
        sha256_ni_leaf32_x2(o, m);
        return;
    }
    if (short_all) {
        sha256_ni_digest_x2(o, has_prefix, prefix, m, len);
        return;
    }
    for (uint64_t j = i; j < i + AV_LANES && j < n; ++j)
        sha256_ni_digest(out + 32 * j, has_prefix, prefix, data + offsets[j], offsets[j + 1] - offsets[j]);
}
#else
static int use_shani(void) { return 0; }
#define ni_hash_group(g, n, hp, pre, data, offsets, out) ((void)0)
#endif

static int hash_packed(const uint8_t *data, const uint64_t *offsets, uint8_t *out, uint64_t n, int has_prefix,
                       uint8_t prefix) {
    if (use_shani()) {
#pragma omp parallel for schedule(dynamic, 128) if (n >= AV_PAR_MIN)
        for (int64_t g = 0; g < (int64_t)((n + AV_LANES - 1) / AV_LANES); ++g)
            ni_hash_group((uint64_t)g, n, has_prefix, prefix, data, offsets, out);
        return 0;
    }
#pragma omp parallel for schedule(dynamic, 256) if (n >= AV_PAR_MIN)
    for (int64_t i = 0; i < (int64_t)n; ++i) {
        if (has_prefix)
            merkle_leaves_item((u64)i, data, offsets, out);
        else
            sha256_many_item((u64)i, data, offsets, out);
    }
    return 0;
}

int av_sha256_many(const uint8_t *data, const uint64_t *offsets, uint8_t *out, uint64_t n) {
    return hash_packed(data, offsets, out, n, 0, 0);
}

int av_merkle_leaves(const uint8_t *data, const uint64_t *offsets, uint8_t *out, uint64_t n) {
    return hash_packed(data, offsets, out, n, 1, 0x00);
}

/* Nodes 0..n-1 of the level above `count` nodes, as the GPU kernels compute them (node i for every
 * i < n, whatever count is; launch checks n == (count + 1) / 2). */
int av_merkle_level(const uint8_t *below, uint64_t count, uint8_t *above, uint64_t n) {
    uint64_t pairs = count / 2; /* nodes with two children; an odd last one is copied up */
    if (pairs > n) pairs = n;   /* never past node n - 1 (count once reached past `above`) */
    if (use_shani()) {
#pragma omp parallel for schedule(static) if (n >= AV_PAR_MIN)
        for (int64_t g = 0; g < (int64_t)((pairs + AV_LANES - 1) / AV_LANES); ++g) {
            uint64_t i = AV_LANES * (uint64_t)g;
            if (i + AV_LANES <= pairs) {
                const uint8_t *m[AV_LANES] = {below + 64 * i, below + 64 * i + 64};
                uint8_t *o[AV_LANES] = {above + 32 * i, above + 32 * i + 32};
                sha256_ni_inner_x2(o, m);
            } else {
                for (uint64_t j = i; j < pairs; ++j) sha256_ni_digest(above + 32 * j, 1, 0x01, below + 64 * j, 64);
            }
        }
        for (uint64_t i = pairs; i < n; ++i) merkle_level_item(i, below, count, above); /* an odd last one */
        return 0;
    }
#pragma omp parallel for schedule(static) if (n >= AV_PAR_MIN)
    for (int64_t i = 0; i < (int64_t)n; ++i) merkle_level_item((u64)i, below, count, above);
    return 0;
}

/* Threads of the calling thread's next parallel regions; 0 means one per core. */
int av_set_threads(int32_t threads) {
    omp_set_num_threads(threads > 0 ? threads : omp_get_num_procs());
    return omp_get_max_threads();
}
