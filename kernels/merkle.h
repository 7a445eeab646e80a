/* Merkle trees by CometBFT's rule (RFC 6962): leaf = SHA-256(0x00 || leaf),
 * inner = SHA-256(0x01 || left || right), split at the largest power of two below n.
 * Built level by level, that rule is: pair neighbours, and carry an odd last node up unchanged. */
#ifndef AV_MERKLE_H
#define AV_MERKLE_H
#include "sha256.h"

/* Big-endian word j of a 4-byte-aligned GLOBAL buffer: one load where bytes would take four. */
DEVICE u32 merkle_be32(GLOBAL const u8 *p, u32 j) {
    u32 w = ((GLOBAL const u32 *)p)[j];
    return (w >> 24) | ((w >> 8) & 0xff00u) | ((w << 8) & 0xff0000u) | (w << 24);
}

/* SHA-256 of prefix || the 32 * nwords bytes at p (4-byte aligned; nwords is 8 or 16), read as
 * words: the prefix shifts every word by one byte. */
DEVICE void merkle_hash_words(u32 h[8], u8 prefix, GLOBAL const u8 *p, u32 nwords) {
    u32 w[16], carry = (u32)prefix, total = 4 * nwords + 1;
    sha256_init(h);
    for (u32 blk = 0; blk * 16 < nwords + 3; blk++) { /* + 0x80 and the 8-byte length */
        for (u32 j = 0; j < 16; j++) {
            u32 idx = 16 * blk + j, x;
            if (idx < nwords) {
                x = merkle_be32(p, idx);
                w[j] = (carry << 24) | (x >> 8);
                carry = x & 0xffu;
            } else if (idx == nwords) {
                w[j] = (carry << 24) | 0x800000u;
            } else {
                w[j] = 0;
            }
        }
        if (blk * 16 + 15 >= nwords + 2) w[15] = 8 * total; /* total < 2^29 bits */
        sha256_compress(h, w);
    }
}

DEVICE void merkle_leaves_item(u64 i, GLOBAL const u8 *data, GLOBAL const u64 *offsets, GLOBAL u8 *out) {
    u32 h[8];
    u64 start = offsets[i], len = offsets[i + 1] - start;
    if (len == 32 && (((u64)(data + start)) & 3) == 0) /* the usual leaf: a 32-byte hash, aligned */
        merkle_hash_words(h, 0x00, data + start, 8);
    else
        sha256_global(h, 1, 0x00, data + start, len);
    sha256_store(out + 32 * i, h);
}

/* Node i of the level above a level of `count` nodes (the caller launches (count + 1) / 2 items). */
DEVICE void merkle_level_item(u64 i, GLOBAL const u8 *below, u64 count, GLOBAL u8 *above) {
    if (2 * i + 1 < count) {
        u32 h[8];
        merkle_hash_words(h, 0x01, below + 64 * i, 16); /* levels are our own aligned buffers */
        sha256_store(above + 32 * i, h);
    } else {
        for (int j = 0; j < 32; ++j) above[32 * i + j] = below[64 * i + j];
    }
}

#ifdef KERNEL
KERNEL void av_merkle_leaves(GLOBAL const u8 *data, GLOBAL const u64 *offsets, GLOBAL u8 *out, u64 n) {
    u64 i = GLOBAL_ID;
    if (i < n) merkle_leaves_item(i, data, offsets, out);
}

KERNEL void av_merkle_level(GLOBAL const u8 *below, u64 count, GLOBAL u8 *above, u64 n) {
    u64 i = GLOBAL_ID;
    if (i < n) merkle_level_item(i, below, count, above);
}
#endif
#endif
