/* Ed25519 signature verification under the ZIP-215 rules (docs/ED25519.md), one signature per
 * work item. Inputs: public keys (n x 32 bytes), signatures (n x 64 bytes, R || S), and all
 * messages packed in one byte buffer where message i is msgs[offsets[i] .. offsets[i + 1]). */
#ifndef AV_ED25519_H
#define AV_ED25519_H
#include "portable.h"
#include "sha512.h"
#include "ed25519_sc.h"
#include "ed25519_ge.h"

/* k = SHA-512(R || A || M) mod L over the encodings exactly as given (ZIP-215 hashes the
 * non-canonical bytes, not a re-encoding). */
DEVICE void ed25519_challenge(u8 *k, GLOBAL const u8 *sig, GLOBAL const u8 *pk,
                              GLOBAL const u8 *msg, u64 mlen) {
    sha512_ctx ctx;
    u8 h[64];
    sha512_init(&ctx);
    sha512_update(&ctx, sig, 32);
    sha512_update(&ctx, pk, 32);
    sha512_update(&ctx, msg, mlen);
    sha512_final(&ctx, h);
    ed_sc_reduce64(k, h);
}

DEVICE void ed25519_verify_item(u64 i, GLOBAL const u8 *pks, GLOBAL const u8 *msgs,
                                GLOBAL const u64 *offsets, GLOBAL const u8 *sigs, GLOBAL u8 *out) {
    u8 pk[32], sig[64], k[32];
    ed_p3 A, R;
    for (u32 j = 0; j < 32; j++) pk[j] = pks[32 * i + j];
    for (u32 j = 0; j < 64; j++) sig[j] = sigs[64 * i + j];
    int ok = ed_sc_is_canonical(sig + 32) && ed_p3_decode(&A, pk) && ed_p3_decode(&R, sig);
    if (ok) {
        ed25519_challenge(k, sigs + 64 * i, pks + 32 * i, msgs + offsets[i],
                          offsets[i + 1] - offsets[i]);
        ok = ed_check(&A, &R, sig + 32, k);
    }
    out[i] = (u8)ok;
}

/* A key is safe when its encoding is canonical (re-encoding gives the same bytes, which rules
 * out y >= p and a set sign bit on x = 0) and it is not of small order ([8]A != 0). */
DEVICE void ed25519_key_is_safe_item(u64 i, GLOBAL const u8 *pks, GLOBAL u8 *out) {
    u8 pk[32], enc[32];
    ed_p3 A;
    ed_p1p1 t;
    ed_p2 r;
    for (u32 j = 0; j < 32; j++) pk[j] = pks[32 * i + j];
    int ok = ed_p3_decode(&A, pk);
    if (ok) {
        ed_fe_tobytes(enc, &A.Y);
        enc[31] |= (u8)(ed_fe_isodd(&A.X) << 7);
        for (u32 j = 0; j < 32; j++) ok &= enc[j] == pk[j];
        ed_p3_dbl(&t, &A);
        for (u32 j = 0; j < 2; j++) {
            ed_p1p1_to_p2(&r, &t);
            ed_p2_dbl(&t, &r);
        }
        ok &= !ed_p1p1_is_identity(&t);
    }
    out[i] = (u8)ok;
}

#ifdef KERNEL
/* Work item j checks signature order[j] (j itself when !use_order): with the host's order by
 * message length, a warp hashes messages of one length instead of waiting on its longest. */
KERNEL void av_ed25519_verify(GLOBAL const u8 *pks, GLOBAL const u8 *msgs,
                              GLOBAL const u64 *offsets, GLOBAL const u8 *sigs,
                              GLOBAL const u32 *order, u32 use_order, GLOBAL u8 *out, u64 n) {
    u64 j = GLOBAL_ID;
    if (j < n) ed25519_verify_item(use_order ? (u64)order[j] : j, pks, msgs, offsets, sigs, out);
}

KERNEL void av_ed25519_key_is_safe(GLOBAL const u8 *pks, GLOBAL u8 *out, u64 n) {
    u64 i = GLOBAL_ID;
    if (i < n) ed25519_key_is_safe_item(i, pks, out);
}
#endif

#endif
