/* SHA-256 (FIPS 180-4) of many messages packed end to end, message i being
 * data[offsets[i] .. offsets[i+1]). An optional one-byte prefix lets Merkle trees hash
 * 0x00 || leaf and 0x01 || left || right without copying. */
#ifndef AV_SHA256_H
#define AV_SHA256_H
#include "portable.h"

CONSTANT_TABLE u32 SHA256_K[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u};

DEVICE u32 sha256_rotr(u32 x, u32 n) { return (x >> n) | (x << (32u - n)); }

DEVICE void sha256_init(u32 h[8]) {
    h[0] = 0x6a09e667u; h[1] = 0xbb67ae85u; h[2] = 0x3c6ef372u; h[3] = 0xa54ff53au;
    h[4] = 0x510e527fu; h[5] = 0x9b05688cu; h[6] = 0x1f83d9abu; h[7] = 0x5be0cd19u;
}

/* One compression of the 16 big-endian words w (clobbered: it holds the rolling schedule). */
DEVICE void sha256_compress(u32 h[8], u32 w[16]) {
    u32 a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int t = 0; t < 64; ++t) {
        u32 wt;
        if (t < 16) {
            wt = w[t];
        } else {
            u32 w15 = w[(t - 15) & 15], w2 = w[(t - 2) & 15];
            u32 s0 = sha256_rotr(w15, 7) ^ sha256_rotr(w15, 18) ^ (w15 >> 3);
            u32 s1 = sha256_rotr(w2, 17) ^ sha256_rotr(w2, 19) ^ (w2 >> 10);
            wt = w[t & 15] + s0 + w[(t - 7) & 15] + s1;
            w[t & 15] = wt;
        }
        u32 t1 = hh + (sha256_rotr(e, 6) ^ sha256_rotr(e, 11) ^ sha256_rotr(e, 25)) +
                 ((e & f) ^ (~e & g)) + SHA256_K[t] + wt;
        u32 t2 = (sha256_rotr(a, 2) ^ sha256_rotr(a, 13) ^ sha256_rotr(a, 22)) +
                 ((a & b) ^ (a & c) ^ (b & c));
        hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

/* Digest of (prefix byte, if has_prefix) || msg[0..len) into h. Bytes are gathered one at a
 * time because msg lives in GLOBAL memory and may sit at any alignment. */
DEVICE void sha256_global(u32 h[8], u32 has_prefix, u8 prefix, GLOBAL const u8 *msg, u64 len) {
    u64 total = len + has_prefix;
    u64 nblocks = (total + 9 + 63) / 64;
    u32 w[16];
    sha256_init(h);
    for (u64 blk = 0; blk < nblocks; ++blk) {
        for (int j = 0; j < 16; ++j) {
            u32 word = 0;
            for (int k = 0; k < 4; ++k) {
                u64 pos = blk * 64 + (u64)(j * 4 + k);
                u32 byte;
                if (pos < total)
                    byte = (has_prefix && pos == 0) ? prefix : msg[pos - has_prefix];
                else if (pos == total)
                    byte = 0x80u;
                else if (pos >= nblocks * 64 - 8)
                    byte = (u32)(((total * 8) >> (8 * (nblocks * 64 - 1 - pos))) & 0xffu);
                else
                    byte = 0;
                word = (word << 8) | byte;
            }
            w[j] = word;
        }
        sha256_compress(h, w);
    }
}

DEVICE void sha256_store(GLOBAL u8 *out, const u32 h[8]) {
    for (int j = 0; j < 8; ++j) {
        out[4 * j + 0] = (u8)(h[j] >> 24);
        out[4 * j + 1] = (u8)(h[j] >> 16);
        out[4 * j + 2] = (u8)(h[j] >> 8);
        out[4 * j + 3] = (u8)h[j];
    }
}

DEVICE void sha256_many_item(u64 i, GLOBAL const u8 *data, GLOBAL const u64 *offsets, GLOBAL u8 *out) {
    u32 h[8];
    sha256_global(h, 0, 0, data + offsets[i], offsets[i + 1] - offsets[i]);
    sha256_store(out + 32 * i, h);
}

#ifdef KERNEL
KERNEL void av_sha256_many(GLOBAL const u8 *data, GLOBAL const u64 *offsets, GLOBAL u8 *out, u64 n) {
    u64 i = GLOBAL_ID;
    if (i < n) sha256_many_item(i, data, offsets, out);
}
#endif
#endif
