/* Ed25519 verification shaped for GPUs, with the verdicts of ed25519_verify_item (ZIP-215):
 *  - the challenges k = SHA-512(R || A || M) mod L come from their own kernel, whose work items
 *    take signatures in an order the host chose (by message length), so a warp hashes messages of
 *    similar length instead of waiting on its longest one;
 *  - the verify kernel then does the same arithmetic for every item, adding at the same bits in
 *    every thread (regular digits, ed25519_ge.h): the [s]B table is the one global table (shared
 *    by all threads), the odd multiples of -A (and R, for the last step) live in work-group
 *    shared memory, laid out thread-minor so a warp's reads fall in distinct banks: the private
 *    stack stays under 1 KB with no spills.
 * GPU targets only (the C fallback has its own batch path). Launch av_ed25519_verify_k with
 * work-groups of exactly ED_GPU_GROUP items. */
#ifndef AV_ED25519_GPU_H
#define AV_ED25519_GPU_H
#include "ed25519.h"

#define ED_GPU_GROUP 32
/* Tunables (bench/RESULTS.md has the measurements behind the defaults; -D overrides them). */
#ifndef ED_GPU_BLOCKS_PER_SM
#define ED_GPU_BLOCKS_PER_SM 8 /* 256 threads x 255 registers fill a 64K-register SM: no spills */
#endif
#ifndef ED_GPU_A_WINDOW
#define ED_GPU_A_WINDOW 3      /* bits per digit of k: odd multiples 1A, 3A, 5A, 7A in shared memory */
#endif
#if ED_GPU_A_WINDOW < 1 || ED_GPU_A_WINDOW > 4
#error "ED_GPU_A_WINDOW must be 1..4: at 5, 17 cached points of 32 items need 87 KB of shared memory, past NVIDIA's 48 KB"
#endif
#define ED_GPU_A_POINTS (1 << (ED_GPU_A_WINDOW - 1))
#define ED_GPU_CACHED_WORDS (4 * ED_FE_LIMBS)            /* one ed_cached as i32 words */

/* Work item j hashes signature order[j] (or j itself when !use_order). */
DEVICE void ed25519_challenge_item(u64 j, GLOBAL const u8 *pks, GLOBAL const u8 *msgs,
                                   GLOBAL const u64 *offsets, GLOBAL const u8 *sigs,
                                   GLOBAL const u32 *order, u32 use_order, GLOBAL u8 *ks) {
    u64 i = use_order ? (u64)order[j] : j;
    u8 k[32];
    ed25519_challenge(k, sigs + 64 * i, pks + 32 * i, msgs + offsets[i], offsets[i + 1] - offsets[i]);
    for (u32 b = 0; b < 32; b++) ks[32 * i + b] = k[b];
}

#ifdef KERNEL
/* Word w of table entry q for work item lid: consecutive items, consecutive banks. Entries
 * 0..ED_GPU_A_POINTS-1 are the odd multiples of -A, the last is R, parked there for the final
 * step instead of holding 40 registers through the loop. */
DEVICE u32 ed_gpu_slot(u32 q, u32 w, u32 lid) {
    return (q * ED_GPU_CACHED_WORDS + w) * ED_GPU_GROUP + lid;
}

DEVICE void ed_gpu_store(LOCAL i32 *tab, u32 q, u32 lid, const ed_cached *c) {
    for (u32 j = 0; j < ED_FE_LIMBS; j++) {
        tab[ed_gpu_slot(q, j, lid)] = c->YpX.v[j];
        tab[ed_gpu_slot(q, ED_FE_LIMBS + j, lid)] = c->YmX.v[j];
        tab[ed_gpu_slot(q, 2 * ED_FE_LIMBS + j, lid)] = c->Z.v[j];
        tab[ed_gpu_slot(q, 3 * ED_FE_LIMBS + j, lid)] = c->T2d.v[j];
    }
}

DEVICE void ed_gpu_load(ed_cached *c, LOCAL const i32 *tab, u32 q, u32 lid) {
    for (u32 j = 0; j < ED_FE_LIMBS; j++) {
        c->YpX.v[j] = tab[ed_gpu_slot(q, j, lid)];
        c->YmX.v[j] = tab[ed_gpu_slot(q, ED_FE_LIMBS + j, lid)];
        c->Z.v[j] = tab[ed_gpu_slot(q, 2 * ED_FE_LIMBS + j, lid)];
        c->T2d.v[j] = tab[ed_gpu_slot(q, 3 * ED_FE_LIMBS + j, lid)];
    }
}

/* ed_check_regular with the table of -A in shared memory (tab, column lid): digits of k of
 * ED_GPU_A_WINDOW bits, of s of 8 bits from the global table, over one chain of doublings. */
DEVICE int ed_gpu_check(const ed_p3 *A, const ed_p3 *R, const u8 *s, const u8 *k, LOCAL i32 *tab, u32 lid) {
    const u32 wa = ED_GPU_A_WINDOW, wb = ED_BASE_WINDOW;
    const i32 top = (i32)(wa * (ED_REGULAR_LEN(wa) - 1));
    u8 so[32], ko[32];
    ed_cached two, c;
    ed_p3 u;
    ed_p1p1 t;
    ed_p2 r;
    int neg;
    ed_sc_odd(so, s);
    ed_sc_odd(ko, k);
    ed_p3_to_cached(&c, R);
    ed_gpu_store(tab, ED_GPU_A_POINTS, lid, &c);
    ed_odd_start(&u, &two, A);
    for (u32 q = 0; q < ED_GPU_A_POINTS; q++) {
        if (q) ed_odd_next(&u, &two);
        ed_p3_to_cached(&c, &u);
        ed_gpu_store(tab, q, lid, &c);
    }
    ed_p1p1_identity(&t);
    for (i32 i = top; i >= 0; i--) {
        if (i != top) {
            ed_p1p1_to_p2(&r, &t);
            ed_p2_dbl(&t, &r);
        }
        /* one inlined addition serves both tables: the code stays small enough for registers */
        for (u32 which = 0; which < 2; which++) {
            u32 w = which ? wb : wa;
            if ((u32)i % w != 0) continue;
            u32 e = ed_regular_entry(which ? so : ko, (u32)i / w, w, &neg);
            if (which) ed_base_cached(&c, e);
            else ed_gpu_load(&c, tab, e, lid);
            ed_p1p1_to_p3(&u, &t);
            ed_add(&t, &u, &c, neg);
        }
    }
    ed_gpu_load(&c, tab, ED_GPU_A_POINTS, lid);
    return ed_check_finish(&t, &c);
}

KERNEL void av_ed25519_challenge(GLOBAL const u8 *pks, GLOBAL const u8 *msgs, GLOBAL const u64 *offsets,
                                 GLOBAL const u8 *sigs, GLOBAL const u32 *order, u32 use_order,
                                 GLOBAL u8 *ks, u64 n) {
    u64 j = GLOBAL_ID;
    if (j < n) ed25519_challenge_item(j, pks, msgs, offsets, sigs, order, use_order, ks);
}

/* Verdicts from precomputed challenges ks (n x 32 bytes, reduced). Every item of a group runs
 * to the end (no early return) because the table is per item and nothing is shared across
 * items; no barrier is needed for that reason either. */
KERNEL_BOUNDED(ED_GPU_GROUP, ED_GPU_BLOCKS_PER_SM) av_ed25519_verify_k(GLOBAL const u8 *pks, GLOBAL const u8 *sigs, GLOBAL const u8 *ks,
                                GLOBAL u8 *out, u64 n) {
    LOCAL_ARRAY(i32, tab, (ED_GPU_A_POINTS + 1) * ED_GPU_CACHED_WORDS * ED_GPU_GROUP);
    u64 i = GLOBAL_ID;
    if (i >= n) return;
    u8 pk[32], sig[64], k[32];
    ed_p3 A, R;
    for (u32 j = 0; j < 32; j++) pk[j] = pks[32 * i + j];
    for (u32 j = 0; j < 64; j++) sig[j] = sigs[64 * i + j];
    for (u32 j = 0; j < 32; j++) k[j] = ks[32 * i + j];
    int ok = ed_sc_is_canonical(sig + 32) && ed_p3_decode(&A, pk) && ed_p3_decode(&R, sig);
    if (ok) ok = ed_gpu_check(&A, &R, sig + 32, k, tab, LOCAL_ID);
    out[i] = (u8)ok;
}
#endif

#endif
