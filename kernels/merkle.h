/* Merkle trees by CometBFT's rule (RFC 6962): leaf = SHA-256(0x00 || leaf),
 * inner = SHA-256(0x01 || left || right), split at the largest power of two below n.
 * Built level by level, that rule is: pair neighbours, and carry an odd last node up unchanged. */
#ifndef AV_MERKLE_H
#define AV_MERKLE_H
#include "sha256.h"

DEVICE void merkle_leaves_item(u64 i, GLOBAL const u8 *data, GLOBAL const u64 *offsets, GLOBAL u8 *out) {
    u32 h[8];
    sha256_global(h, 1, 0x00, data + offsets[i], offsets[i + 1] - offsets[i]);
    sha256_store(out + 32 * i, h);
}

/* Node i of the level above a level of `count` nodes (the caller launches (count + 1) / 2 items). */
DEVICE void merkle_level_item(u64 i, GLOBAL const u8 *below, u64 count, GLOBAL u8 *above) {
    if (2 * i + 1 < count) {
        u32 h[8];
        sha256_global(h, 1, 0x01, below + 64 * i, 64);
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
