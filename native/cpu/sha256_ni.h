/* SHA-256 compressions on x86 SHA extensions: the C fallback's fast path, chosen at run time.
 * Digests are bit-identical to kernels/sha256.h (same function, different instructions). */
#ifndef AV_SHA256_NI_H
#define AV_SHA256_NI_H
#include <stdint.h>
#include <string.h>
#include "sha256.h" /* the round constants and IV, shared with the portable kernel */

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

/* The SHA instructions keep the state as ABEF / CDGH halves. */
AV_SHANI static inline void ni_load(const uint32_t h[8], __m128i s[2]) {
    __m128i tmp = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&h[0]), 0xB1); /* CDAB */
    __m128i efgh = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&h[4]), 0x1B); /* EFGH */
    s[0] = _mm_alignr_epi8(tmp, efgh, 8);      /* ABEF */
    s[1] = _mm_blend_epi16(efgh, tmp, 0xF0);   /* CDGH */
}

AV_SHANI static inline void ni_load_iv(__m128i s[2]) {
    u32 iv[8];
    sha256_init(iv);
    ni_load(iv, s);
}

AV_SHANI static inline void ni_store_digest(uint8_t out[32], const __m128i s[2]) {
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i feba = _mm_shuffle_epi32(s[0], 0x1B);
    __m128i dchg = _mm_shuffle_epi32(s[1], 0xB1);
    __m128i dcba = _mm_blend_epi16(feba, dchg, 0xF0);
    __m128i hgfe = _mm_alignr_epi8(dchg, feba, 8);
    _mm_storeu_si128((__m128i *)out, _mm_shuffle_epi8(dcba, bswap));
    _mm_storeu_si128((__m128i *)(out + 16), _mm_shuffle_epi8(hgfe, bswap));
}

/* One block into each of LANES independent states: interleaving hides the rounds' latency. */
#define AV_NI_BLOCKS(LANES)                                                                          \
    AV_SHANI static inline void ni_block_x##LANES(__m128i s[LANES][2], const uint8_t *d[LANES]) {    \
        const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);        \
        __m128i save[LANES][2], w[LANES][4];                                                         \
        for (int l = 0; l < LANES; ++l) { save[l][0] = s[l][0]; save[l][1] = s[l][1]; }              \
        _Pragma("GCC unroll 16") for (int g = 0; g < 16; ++g) {                                      \
            __m128i k = _mm_loadu_si128((const __m128i *)&SHA256_K[4 * g]);                      \
            for (int l = 0; l < LANES; ++l) {                                                        \
                __m128i wg;                                                                          \
                if (g < 4)                                                                           \
                    wg = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(d[l] + 16 * g)), bswap); \
                else                                                                                 \
                    wg = _mm_sha256msg2_epu32(                                                       \
                        _mm_add_epi32(_mm_sha256msg1_epu32(w[l][g & 3], w[l][(g + 1) & 3]),         \
                                      _mm_alignr_epi8(w[l][(g + 3) & 3], w[l][(g + 2) & 3], 4)),    \
                        w[l][(g + 3) & 3]);                                                          \
                w[l][g & 3] = wg;                                                                    \
                __m128i m = _mm_add_epi32(wg, k);                                                    \
                s[l][1] = _mm_sha256rnds2_epu32(s[l][1], s[l][0], m);                                \
                s[l][0] = _mm_sha256rnds2_epu32(s[l][0], s[l][1], _mm_shuffle_epi32(m, 0x0E));       \
            }                                                                                        \
        }                                                                                            \
        for (int l = 0; l < LANES; ++l) {                                                            \
            s[l][0] = _mm_add_epi32(s[l][0], save[l][0]);                                            \
            s[l][1] = _mm_add_epi32(s[l][1], save[l][1]);                                            \
        }                                                                                            \
    }
AV_NI_BLOCKS(1)

/* Message (prefix byte, if has_prefix) || msg padded into buf; returns its block count, or 0 if it
 * needs more than two blocks (the caller then streams it). */
static inline int ni_pad_short(uint8_t buf[128], int has_prefix, uint8_t prefix, const uint8_t *msg, uint64_t len) {
    uint64_t total = len + (has_prefix ? 1 : 0);
    if (total > 119) return 0;
    int nb = total + 9 <= 64 ? 1 : 2;
    size_t pos = 0;
    if (has_prefix) buf[pos++] = prefix;
    memcpy(buf + pos, msg, len);
    pos += len;
    buf[pos++] = 0x80;
    memset(buf + pos, 0, 64 * nb - pos);
    uint64_t bits = total * 8;
    for (int k = 0; k < 8; ++k) buf[64 * nb - 1 - k] = (uint8_t)(bits >> (8 * k));
    return nb;
}

/* SHA-256 of (prefix byte, if has_prefix) || msg, any length, into out. */
AV_SHANI static void sha256_ni_digest(uint8_t out[32], int has_prefix, uint8_t prefix, const uint8_t *msg, uint64_t len) {
    __m128i s[1][2];
    uint8_t buf[128];
    const uint8_t *d[1];
    ni_load_iv(s[0]);
    uint64_t total = len + (has_prefix ? 1 : 0);
    if (has_prefix && len >= 64) { /* the first block straddles the prefix */
        buf[0] = prefix;
        memcpy(buf + 1, msg, 63);
        d[0] = buf;
        ni_block_x1(s, d);
        msg += 63;
        len -= 63;
        has_prefix = 0;
    }
    for (; len >= 64 && !has_prefix; len -= 64, msg += 64) {
        d[0] = msg;
        ni_block_x1(s, d);
    }
    int nb = ni_pad_short(buf, has_prefix, prefix, msg, len);
    /* the tail fits two blocks, but its length field must count the whole message */
    uint64_t bits = total * 8;
    for (int k = 0; k < 8; ++k) buf[64 * nb - 1 - k] = (uint8_t)(bits >> (8 * k));
    for (int b = 0; b < nb; ++b) {
        d[0] = buf + 64 * b;
        ni_block_x1(s, d);
    }
    ni_store_digest(out, s[0]);
}

/* LANES short messages (each at most 119 bytes with its prefix) hashed side by side; lanes whose
 * block counts differ from lane 0's are finished one at a time. */
#define AV_NI_DIGEST_LANES(LANES)                                                                     \
    AV_SHANI static void sha256_ni_digest_x##LANES(uint8_t *out[LANES], int has_prefix, uint8_t prefix, \
                                                   const uint8_t *m[LANES], const uint64_t len[LANES]) { \
        uint8_t buf[LANES][128];                                                                      \
        __m128i s[LANES][2];                                                                          \
        const uint8_t *d[LANES];                                                                      \
        int nb[LANES], same = 1;                                                                      \
        for (int l = 0; l < LANES; ++l) {                                                             \
            nb[l] = ni_pad_short(buf[l], has_prefix, prefix, m[l], len[l]);                           \
            same &= nb[l] == nb[0];                                                                   \
            ni_load_iv(s[l]);                                                              \
        }                                                                                             \
        if (!same) {                                                                                  \
            for (int l = 0; l < LANES; ++l) sha256_ni_digest(out[l], has_prefix, prefix, m[l], len[l]); \
            return;                                                                                   \
        }                                                                                             \
        for (int b = 0; b < nb[0]; ++b) {                                                             \
            for (int l = 0; l < LANES; ++l) d[l] = buf[l] + 64 * b;                                   \
            ni_block_x##LANES(s, d);                                                                  \
        }                                                                                             \
        for (int l = 0; l < LANES; ++l) ni_store_digest(out[l], s[l]);                                \
    }
AV_NI_BLOCKS(2)
AV_NI_DIGEST_LANES(2)

/* Merkle's two hot shapes with their padding laid out once: a 32-byte leaf behind 0x00 (one
 * block) and an inner node 0x01 || left || right (two blocks, the second nearly all padding). */
AV_SHANI static void sha256_ni_leaf32_x2(uint8_t *out[2], const uint8_t *m[2]) {
    uint8_t buf[2][64];
    __m128i s[2][2];
    const uint8_t *d[2] = {buf[0], buf[1]};
    for (int l = 0; l < 2; ++l) {
        memset(buf[l], 0, 64);
        memcpy(buf[l] + 1, m[l], 32);
        buf[l][33] = 0x80;
        buf[l][62] = 0x01; /* 33 bytes = 264 bits */
        buf[l][63] = 0x08;
        ni_load_iv(s[l]);
    }
    ni_block_x2(s, d);
    ni_store_digest(out[0], s[0]);
    ni_store_digest(out[1], s[1]);
}

AV_SHANI static void sha256_ni_inner_x2(uint8_t *out[2], const uint8_t *children[2]) {
    uint8_t buf[2][128];
    __m128i s[2][2];
    const uint8_t *d[2];
    for (int l = 0; l < 2; ++l) {
        buf[l][0] = 0x01;
        memcpy(buf[l] + 1, children[l], 64);
        memset(buf[l] + 65, 0, 63);
        buf[l][65] = 0x80;
        buf[l][126] = 0x02; /* 65 bytes = 520 bits */
        buf[l][127] = 0x08;
        ni_load_iv(s[l]);
    }
    for (int b = 0; b < 2; ++b) {
        d[0] = buf[0] + 64 * b;
        d[1] = buf[1] + 64 * b;
        ni_block_x2(s, d);
    }
    ni_store_digest(out[0], s[0]);
    ni_store_digest(out[1], s[1]);
}

#endif
#endif
