/* SHA-256 compressions on x86 SHA extensions: the C fallback's fast path, chosen at run time.
 * Digests are bit-identical to kernels/sha256.h (same function, different instructions). */
#ifndef AV_SHA256_NI_H
#define AV_SHA256_NI_H
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define AV_HAVE_SHANI_CODE 1

static int sha256_ni_available(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((b >> 29) & 1)) return 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    return ((c >> 19) & 1) && ((c >> 9) & 1); /* SSE4.1 and SSSE3 */
}

#define AV_SHANI __attribute__((target("sha,sse4.1,ssse3")))

AV_SHANI static void sha256_ni_blocks(uint32_t state[8], const uint8_t *data, size_t nblocks) {
    static const uint32_t K[64] = {
        0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
        0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
        0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
        0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
        0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
        0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
        0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
        0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u};
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i tmp = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&state[0]), 0xB1); /* CDAB */
    __m128i s1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&state[4]), 0x1B);  /* EFGH */
    __m128i s0 = _mm_alignr_epi8(tmp, s1, 8);                                            /* ABEF */
    s1 = _mm_blend_epi16(s1, tmp, 0xF0);                                                 /* CDGH */
    for (; nblocks; --nblocks, data += 64) {
        __m128i abef = s0, cdgh = s1, w[16];
#pragma GCC unroll 16
        for (int g = 0; g < 16; ++g) {
            if (g < 4)
                w[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 16 * g)), bswap);
            else
                w[g] = _mm_sha256msg2_epu32(
                    _mm_add_epi32(_mm_sha256msg1_epu32(w[g - 4], w[g - 3]), _mm_alignr_epi8(w[g - 1], w[g - 2], 4)),
                    w[g - 1]);
            __m128i m = _mm_add_epi32(w[g], _mm_loadu_si128((const __m128i *)&K[4 * g]));
            s1 = _mm_sha256rnds2_epu32(s1, s0, m);
            s0 = _mm_sha256rnds2_epu32(s0, s1, _mm_shuffle_epi32(m, 0x0E));
        }
        s0 = _mm_add_epi32(s0, abef);
        s1 = _mm_add_epi32(s1, cdgh);
    }
    tmp = _mm_shuffle_epi32(s0, 0x1B);     /* FEBA */
    s1 = _mm_shuffle_epi32(s1, 0xB1);      /* DCHG */
    s0 = _mm_blend_epi16(tmp, s1, 0xF0);   /* DCBA */
    s1 = _mm_alignr_epi8(s1, tmp, 8);      /* HGFE */
    _mm_storeu_si128((__m128i *)&state[0], s0);
    _mm_storeu_si128((__m128i *)&state[4], s1);
}

/* SHA-256 of (prefix byte, if has_prefix) || msg, big-endian digest into out. */
static void sha256_ni_digest(uint8_t out[32], int has_prefix, uint8_t prefix, const uint8_t *msg, uint64_t len) {
    uint32_t h[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                     0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    uint8_t block[128];
    uint64_t total = len + (has_prefix ? 1 : 0), done = 0;
    if (has_prefix && len >= 63) { /* first block straddles the prefix: build it */
        block[0] = prefix;
        memcpy(block + 1, msg, 63);
        sha256_ni_blocks(h, block, 1);
        msg += 63;
        done = 64;
        has_prefix = 0;
    }
    uint64_t rest = total - done;
    uint64_t whole = has_prefix ? 0 : rest / 64;
    sha256_ni_blocks(h, msg, whole);
    msg += whole * 64;
    uint64_t tail = rest - whole * 64; /* bytes left, prefix included */
    size_t pos = 0;
    if (has_prefix) block[pos++] = prefix;
    memcpy(block + pos, msg, tail - pos);
    pos = tail;
    block[pos++] = 0x80;
    size_t blen = pos + 8 <= 64 ? 64 : 128;
    memset(block + pos, 0, blen - pos);
    uint64_t bits = total * 8;
    for (int k = 0; k < 8; ++k) block[blen - 1 - k] = (uint8_t)(bits >> (8 * k));
    sha256_ni_blocks(h, block, blen / 64);
    for (int j = 0; j < 8; ++j) {
        out[4 * j] = (uint8_t)(h[j] >> 24); out[4 * j + 1] = (uint8_t)(h[j] >> 16);
        out[4 * j + 2] = (uint8_t)(h[j] >> 8); out[4 * j + 3] = (uint8_t)h[j];
    }
}
#endif
#endif
