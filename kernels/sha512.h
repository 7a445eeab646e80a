/* SHA-512 (FIPS 180-4), streaming. Input is read from GLOBAL buffers because that is where
 * Ed25519's R || A || M lives; the block buffer and state stay private.
 * K and the initial state are the fractional bits of cube and square roots of the first primes,
 * computed with integer roots (no table was copied). */
#ifndef AV_SHA512_H
#define AV_SHA512_H
#include "portable.h"

CONSTANT_TABLE u64 SHA512_K[80] = {
0x428a2f98d728ae22, 0x7137449123ef65cd, 0xb5c0fbcfec4d3b2f, 0xe9b5dba58189dbbc,
    0x3956c25bf348b538, 0x59f111f1b605d019, 0x923f82a4af194f9b, 0xab1c5ed5da6d8118,
    0xd807aa98a3030242, 0x12835b0145706fbe, 0x243185be4ee4b28c, 0x550c7dc3d5ffb4e2,
    0x72be5d74f27b896f, 0x80deb1fe3b1696b1, 0x9bdc06a725c71235, 0xc19bf174cf692694,
    0xe49b69c19ef14ad2, 0xefbe4786384f25e3, 0x0fc19dc68b8cd5b5, 0x240ca1cc77ac9c65,
    0x2de92c6f592b0275, 0x4a7484aa6ea6e483, 0x5cb0a9dcbd41fbd4, 0x76f988da831153b5,
    0x983e5152ee66dfab, 0xa831c66d2db43210, 0xb00327c898fb213f, 0xbf597fc7beef0ee4,
    0xc6e00bf33da88fc2, 0xd5a79147930aa725, 0x06ca6351e003826f, 0x142929670a0e6e70,
    0x27b70a8546d22ffc, 0x2e1b21385c26c926, 0x4d2c6dfc5ac42aed, 0x53380d139d95b3df,
    0x650a73548baf63de, 0x766a0abb3c77b2a8, 0x81c2c92e47edaee6, 0x92722c851482353b,
    0xa2bfe8a14cf10364, 0xa81a664bbc423001, 0xc24b8b70d0f89791, 0xc76c51a30654be30,
    0xd192e819d6ef5218, 0xd69906245565a910, 0xf40e35855771202a, 0x106aa07032bbd1b8,
    0x19a4c116b8d2d0c8, 0x1e376c085141ab53, 0x2748774cdf8eeb99, 0x34b0bcb5e19b48a8,
    0x391c0cb3c5c95a63, 0x4ed8aa4ae3418acb, 0x5b9cca4f7763e373, 0x682e6ff3d6b2b8a3,
    0x748f82ee5defb2fc, 0x78a5636f43172f60, 0x84c87814a1f0ab72, 0x8cc702081a6439ec,
    0x90befffa23631e28, 0xa4506cebde82bde9, 0xbef9a3f7b2c67915, 0xc67178f2e372532b,
    0xca273eceea26619c, 0xd186b8c721c0c207, 0xeada7dd6cde0eb1e, 0xf57d4f7fee6ed178,
    0x06f067aa72176fba, 0x0a637dc5a2c898a6, 0x113f9804bef90dae, 0x1b710b35131c471b,
    0x28db77f523047d84, 0x32caab7b40c72493, 0x3c9ebe0a15c9bebc, 0x431d67c49c100d4c,
    0x4cc5d4becb3e42b6, 0x597f299cfc657e2a, 0x5fcb6fab3ad6faec, 0x6c44198c4a475817
};

typedef struct {
    u64 h[8];
    u8 buf[128];
    u32 fill;   /* bytes waiting in buf */
    u64 total;  /* bytes absorbed; messages here stay far below 2^61 bytes */
} sha512_ctx;

DEVICE u64 sha512_rotr(u64 x, u32 n) { return (x >> n) | (x << (64 - n)); }

DEVICE void sha512_compress(u64 *h, const u8 *block) {
    u64 w[80];
    for (u32 t = 0; t < 16; t++) {
        u64 v = 0;
        for (u32 j = 0; j < 8; j++) v = (v << 8) | block[8 * t + j];
        w[t] = v;
    }
    for (u32 t = 16; t < 80; t++) {
        u64 s0 = sha512_rotr(w[t - 15], 1) ^ sha512_rotr(w[t - 15], 8) ^ (w[t - 15] >> 7);
        u64 s1 = sha512_rotr(w[t - 2], 19) ^ sha512_rotr(w[t - 2], 61) ^ (w[t - 2] >> 6);
        w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    u64 a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (u32 t = 0; t < 80; t++) {
        u64 t1 = k + (sha512_rotr(e, 14) ^ sha512_rotr(e, 18) ^ sha512_rotr(e, 41))
                 + ((e & f) ^ (~e & g)) + SHA512_K[t] + w[t];
        u64 t2 = (sha512_rotr(a, 28) ^ sha512_rotr(a, 34) ^ sha512_rotr(a, 39))
                 + ((a & b) ^ (a & c) ^ (b & c));
        k = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
}

DEVICE void sha512_init(sha512_ctx *c) {
    const u64 iv[8] = {0x6a09e667f3bcc908, 0xbb67ae8584caa73b, 0x3c6ef372fe94f82b, 0xa54ff53a5f1d36f1, 0x510e527fade682d1, 0x9b05688c2b3e6c1f, 0x1f83d9abfb41bd6b, 0x5be0cd19137e2179};
    for (u32 i = 0; i < 8; i++) c->h[i] = iv[i];
    c->fill = 0;
    c->total = 0;
}

/* Absorbs n bytes straight from a host buffer: every Ed25519 input (R, A and M) lives in one. */
DEVICE void sha512_update(sha512_ctx *c, GLOBAL const u8 *p, u64 n) {
    c->total += n;
    while (n > 0) {
        u32 take = 128 - c->fill;
        if ((u64)take > n) take = (u32)n;
        for (u32 i = 0; i < take; i++) c->buf[c->fill + i] = p[i];
        c->fill += take;
        p += take;
        n -= take;
        if (c->fill == 128) {
            sha512_compress(c->h, c->buf);
            c->fill = 0;
        }
    }
}

DEVICE void sha512_final(sha512_ctx *c, u8 *out) {
    u64 bits = c->total << 3;
    c->buf[c->fill++] = 0x80;
    if (c->fill > 112) {
        while (c->fill < 128) c->buf[c->fill++] = 0;
        sha512_compress(c->h, c->buf);
        c->fill = 0;
    }
    while (c->fill < 120) c->buf[c->fill++] = 0;
    for (u32 j = 0; j < 8; j++) c->buf[120 + j] = (u8)(bits >> (56 - 8 * j));
    sha512_compress(c->h, c->buf);
    for (u32 i = 0; i < 64; i++) out[i] = (u8)(c->h[i / 8] >> (56 - 8 * (i % 8)));
}

#endif
