/* C entries of kernels/ed25519.h. Two CPU specialisations, neither of which changes a verdict:
 * - the radix 2^51 field (kernels/ed25519_fe51.h) under the shared group code;
 * - batches: each chunk of signatures is first checked as one random linear combination
 *       [8]( [sum z_i s_i]B - sum [z_i]R_i - sum [z_i k_i]A_i ) == 0
 *   by a Pippenger multi-scalar multiplication. It holds whenever every single cofactored check
 *   holds, and otherwise fails except with probability about 2^-125 over the secret 128-bit z_i,
 *   so when it holds every verdict is true; when it fails the chunk is split in halves, down to
 *   single checks, and the bad signatures get the single check's verdict. */
#define AV_ED25519_FE51
#include <omp.h>
#include <stdlib.h>
#include <sys/random.h>
#include "../kernels/ed25519.h"

#define ED_BATCH_MIN 8     /* below this many signatures an MSM costs more than single checks */
#define ED_CHUNK_MAX 8192  /* signatures per task: bounds memory, still large enough for Pippenger */

typedef struct {
    ed_p3 A, R;
    u8 s[32], k[32];
    u8 z[32];  /* random weight, 128 bits zero-extended */
    u8 zk[32]; /* z k mod L */
} ed_item;

/* S range, decoding and k: the parts of a verdict that need no group arithmetic beyond decoding. */
static int ed_prepare(ed_item *it, u64 i, const u8 *pks, const u8 *msgs, const u64 *offsets,
                      const u8 *sigs) {
    for (int j = 0; j < 32; j++) it->s[j] = sigs[64 * i + 32 + j];
    if (!ed_sc_is_canonical(it->s) || !ed_p3_decode(&it->A, pks + 32 * i)
        || !ed_p3_decode(&it->R, sigs + 64 * i))
        return 0;
    ed25519_challenge(it->k, sigs + 64 * i, pks + 32 * i, msgs + offsets[i],
                      offsets[i + 1] - offsets[i]);
    return 1;
}

/* z_i from SHA-512 of fresh OS randomness and every input of the chunk, so neither an attacker
 * who chose the inputs nor one who could predict the OS state alone can anticipate them. */
static int ed_weights(ed_item *items, const u32 *sel, u32 m) {
    u8 seed[64], h[64], zero[32] = {0};
    sha512_ctx ctx;
    if (getrandom(seed, 32, 0) != 32) return 0;
    sha512_init(&ctx);
    sha512_update(&ctx, seed, 32);
    for (u32 j = 0; j < m; j++) {
        sha512_update(&ctx, items[sel[j]].k, 32);
        sha512_update(&ctx, items[sel[j]].s, 32);
    }
    sha512_final(&ctx, seed);
    for (u32 j = 0; j < m; j++) {
        u8 idx[4] = {(u8)j, (u8)(j >> 8), (u8)(j >> 16), (u8)(j >> 24)};
        ed_item *it = &items[sel[j]];
        sha512_init(&ctx);
        sha512_update(&ctx, seed, 64);
        sha512_update(&ctx, idx, 4);
        sha512_final(&ctx, h);
        for (int b = 0; b < 32; b++) it->z[b] = b < 16 ? h[b] : 0;
        ed_sc_muladd(it->zk, it->z, it->k, zero);
    }
    return 1;
}

/* Signed radix-2^c digits in [-2^(c-1), 2^(c-1)] of a scalar below 2^253; nw = 253/c + 1
 * digits absorb the last carry. */
static void ed_digits(int16_t *d, const u8 *s, u32 c, u32 nw) {
    i32 carry = 0;
    for (u32 w = 0; w < nw; w++) {
        u32 pos = w * c, bits = 0;
        for (u32 k = 0; k < 4 && pos / 8 + k < 32; k++) bits |= (u32)s[pos / 8 + k] << (8 * k);
        i32 v = (i32)((bits >> (pos % 8)) & ((1u << c) - 1)) + carry;
        carry = v > (1 << (c - 1));
        d[w] = (int16_t)(carry ? v - (1 << c) : v);
    }
}

/* Window width minimising bucket additions (7 multiplies) plus bucket sums (18 per bucket);
 * R's weights are 128-bit, so they touch only the low half of the windows. */
static u32 ed_window(u32 m) {
    u32 best = 2;
    u64 best_cost = ~(u64)0;
    for (u32 c = 2; c <= 15; c++) {
        u64 nw = 253 / c + 1;
        u64 cost = 7 * (nw * (m + 1) + (128 / c + 1) * m) + 18 * nw * ((u64)1 << (c - 1));
        if (cost < best_cost) {
            best_cost = cost;
            best = c;
        }
    }
    return best;
}

static void ed_add_p3(ed_p3 *acc, int *set, const ed_p3 *q) {
    ed_cached c;
    ed_p1p1 t;
    if (!*set) {
        *acc = *q;
        *set = 1;
        return;
    }
    ed_p3_to_cached(&c, q);
    ed_add(&t, acc, &c, 0);
    ed_p1p1_to_p3(acc, &t);
}

/* Multi-scalar multiplication state: point j is pts[j] (affine) = +-src[j], with nw signed
 * digits dig[j * nw ..] of its scalar. */
typedef struct {
    u32 npts, c, nw, nb;
    ed_precomp *pts;
    const ed_p3 **src;
    int16_t *dig;
    ed_p3 *bucket;
    u8 *used;
} ed_msm;

/* Sum of digit * point over all points for window w: bucket i gathers the points whose digit is
 * +-(i + 1), and summing the running sums from the top weighs bucket i by i + 1. Returns 0 if
 * the sum is the identity (no point has a digit here). */
static int ed_window_sum(ed_p3 *sum, const ed_msm *ms, u32 w) {
    ed_p1p1 t;
    ed_p3 run;
    int run_set = 0, sum_set = 0;
    for (u32 i = 0; i < ms->nb; i++) ms->used[i] = 0;
    for (u32 j = 0; j < ms->npts; j++) {
        int d = ms->dig[j * ms->nw + w];
        if (d == 0) continue;
        u32 i = (u32)(d < 0 ? -d : d) - 1;
        if (!ms->used[i]) {
            /* pts[j] is -src[j], except the base point (j = 0), which enters as is */
            if ((j == 0) == (d < 0)) ed_p3_neg(&ms->bucket[i], ms->src[j]);
            else ms->bucket[i] = *ms->src[j];
            ms->used[i] = 1;
        } else {
            ed_madd(&t, &ms->bucket[i], &ms->pts[j], d < 0);
            ed_p1p1_to_p3(&ms->bucket[i], &t);
        }
    }
    for (int i = (int)ms->nb - 1; i >= 0; i--) {
        if (ms->used[i]) ed_add_p3(&run, &run_set, &ms->bucket[i]);
        if (run_set) ed_add_p3(sum, &sum_set, &run);
    }
    return sum_set;
}

/* [8] * (the MSM), by Horner's rule over the windows, is the identity. */
static int ed_msm_cofactored_zero(const ed_msm *ms) {
    ed_p3 acc, sum;
    ed_p1p1 t;
    ed_p2 r;
    int acc_set = 0;
    for (int w = (int)ms->nw - 1; w >= 0; w--) {
        if (acc_set) {
            ed_p3_dbl(&t, &acc);
            for (u32 i = 1; i < ms->c; i++) {
                ed_p1p1_to_p2(&r, &t);
                ed_p2_dbl(&t, &r);
            }
            ed_p1p1_to_p3(&acc, &t);
        }
        if (ed_window_sum(&sum, ms, (u32)w)) ed_add_p3(&acc, &acc_set, &sum);
    }
    if (!acc_set) return 1;
    ed_p3_dbl(&t, &acc);
    for (u32 i = 1; i < 3; i++) {
        ed_p1p1_to_p2(&r, &t);
        ed_p2_dbl(&t, &r);
    }
    return ed_p1p1_is_identity(&t);
}

/* Whether the combined equation holds for the signatures sel[0..m): 1 or 0; -1 when memory ran
 * out, which callers answer with smaller batches or single checks (that allocate nothing), so
 * no verdict depends on memory. */
static int ed_batch_holds(const ed_item *items, const u32 *sel, u32 m, const ed_p3 *base) {
    ed_msm ms;
    ms.npts = 2 * m + 1;
    ms.c = ed_window(m);
    ms.nw = 253 / ms.c + 1;
    ms.nb = 1u << (ms.c - 1);
    ms.pts = malloc(sizeof(ed_precomp) * ms.npts);
    ms.src = malloc(sizeof(ed_p3 *) * ms.npts);
    ms.dig = malloc(sizeof(int16_t) * ms.npts * ms.nw);
    ms.bucket = malloc(sizeof(ed_p3) * ms.nb);
    ms.used = malloc(ms.nb);
    int ok = ms.pts && ms.src && ms.dig && ms.bucket && ms.used ? 1 : -1;
    if (ok == 1) {
        u8 b[32] = {0};
        ed_fe d2;
        ed_fe_const(&d2, ED_CONST_D2);
        for (u32 j = 0; j < m; j++) ed_sc_muladd(b, items[sel[j]].z, items[sel[j]].s, b);
        ms.src[0] = base;
        ed_base_load(&ms.pts[0], 0);
        ed_digits(ms.dig, b, ms.c, ms.nw);
        /* A and R enter negated; decoded points are affine (Z = 1) */
        for (u32 j = 0; j < 2 * m; j++) {
            const ed_item *it = &items[sel[j / 2]];
            const ed_p3 *p = (j & 1) ? &it->R : &it->A;
            ed_precomp *q = &ms.pts[1 + j];
            ms.src[1 + j] = p;
            ed_fe_sub(&q->ypx, &p->Y, &p->X);
            ed_fe_add(&q->ymx, &p->Y, &p->X);
            ed_fe_mul(&q->xy2d, &p->T, &d2);
            ed_fe_neg(&q->xy2d, &q->xy2d);
            ed_digits(ms.dig + (1 + j) * ms.nw, (j & 1) ? it->z : it->zk, ms.c, ms.nw);
        }
        ok = ed_msm_cofactored_zero(&ms);
    }
    free(ms.pts);
    free(ms.src);
    free(ms.dig);
    free(ms.bucket);
    free(ms.used);
    return ok;
}

static void ed_singles(const ed_item *items, const u32 *sel, u32 m, u8 *out) {
    for (u32 j = 0; j < m; j++) {
        const ed_item *it = &items[sel[j]];
        out[sel[j]] = (u8)ed_check(&it->A, &it->R, it->s, it->k);
    }
}

/* Cost units of the split below: a single check costs ED_SINGLE_COST, a batch check of m
 * signatures m (one thread: 49k/s batched against 11k/s singly, bench/RESULTS.md). */
#define ED_SINGLE_COST 4

/* sel[0..m) failed the batch equation. Bisection: check the left half; if it holds, the right
 * half holds a bad signature and needs no check of its own; a half that fails is split again,
 * down to single checks. One bad signature then costs about one more batch check of the chunk
 * spread over the levels, so the cost grows with the number of bad signatures. A budget stops
 * splitting where finishing by single checks is cheaper: the worst case, every signature bad,
 * costs the single checks of the chunk plus two batch checks of it, as the old quarter split
 * did; 8 bad among 8,192 no longer cost that much. */
static void ed_split(const ed_item *items, const u32 *sel, u32 m, const ed_p3 *base, u8 *out) {
    u32 stack[2 * 64]; /* (lo, size) pairs; depth-first, so at most two per level */
    u64 budget = (u64)m * (ED_SINGLE_COST + 1), spent = m, unresolved = m;
    u32 top = 0;
    stack[top++] = 0;
    stack[top++] = m;
    while (top) {
        u32 size = stack[--top], lo = stack[--top];
        u32 half = size / 2;
        if (size < 2 * ED_BATCH_MIN || top >= 2 * 62
            || spent + size + (unresolved - half) * ED_SINGLE_COST > budget) {
            ed_singles(items, sel + lo, size, out);
            spent += (u64)size * ED_SINGLE_COST;
            unresolved -= size;
            continue;
        }
        int left = ed_batch_holds(items, sel + lo, half, base) == 1;
        spent += half;
        int right = 0;
        if (!left) {
            right = ed_batch_holds(items, sel + lo + half, size - half, base) == 1;
            spent += size - half;
        }
        if (left || right) { /* the half that holds is settled; the other one is known bad */
            u32 ok_lo = left ? lo : lo + half, ok_n = left ? half : size - half;
            for (u32 j = 0; j < ok_n; j++) out[sel[ok_lo + j]] = 1;
            unresolved -= ok_n;
            stack[top++] = left ? lo + half : lo;
            stack[top++] = left ? size - half : half;
        } else {
            stack[top++] = lo;
            stack[top++] = half;
            stack[top++] = lo + half;
            stack[top++] = size - half;
        }
    }
}

static int ed_verify_chunk(u64 lo, u64 hi, const u8 *pks, const u8 *msgs, const u64 *offsets,
                           const u8 *sigs, u8 *out, const ed_p3 *base) {
    u32 m = 0, cnt = (u32)(hi - lo);
    ed_item *items = malloc(sizeof(ed_item) * cnt);
    u32 *sel = malloc(sizeof(u32) * cnt);
    if (!items || !sel) {
        free(items);
        free(sel);
        return -1;
    }
    for (u32 j = 0; j < cnt; j++) {
        out[lo + j] = 0;
        if (ed_prepare(&items[j], lo + j, pks, msgs, offsets, sigs)) sel[m++] = j;
    }
    if (m < ED_BATCH_MIN || !ed_weights(items, sel, m))
        ed_singles(items, sel, m, out + lo);
    else if (ed_batch_holds(items, sel, m, base) == 1)
        for (u32 j = 0; j < m; j++) out[lo + sel[j]] = 1;
    else
        ed_split(items, sel, m, base, out + lo);
    free(items);
    free(sel);
    return 0;
}

/* One verdict for signatures lo..hi-1: 1 when all are valid. No split on failure, so the cost
 * does not depend on how many are bad. -1 when memory ran out. */
static int ed_all_chunk(u64 lo, u64 hi, const u8 *pks, const u8 *msgs, const u64 *offsets,
                        const u8 *sigs, const ed_p3 *base) {
    u32 cnt = (u32)(hi - lo);
    ed_item *items = malloc(sizeof(ed_item) * cnt);
    u32 *sel = malloc(sizeof(u32) * cnt);
    int ok = items && sel ? 1 : -1;
    for (u32 j = 0; ok == 1 && j < cnt; j++) {
        sel[j] = j;
        ok = ed_prepare(&items[j], lo + j, pks, msgs, offsets, sigs);
    }
    if (ok == 1) {
        int batch = cnt < ED_BATCH_MIN || !ed_weights(items, sel, cnt) ? -1 : ed_batch_holds(items, sel, cnt, base);
        if (batch >= 0)
            ok = batch;
        else /* no batch (too few, or no memory for one): single checks */
            for (u32 j = 0; ok && j < cnt; j++) ok = ed_check(&items[j].A, &items[j].R, items[j].s, items[j].k);
    }
    free(items);
    free(sel);
    return ok;
}

/* B = (x, 4/5) with x even, and the chunking both entries share. */
static void ed_base(ed_p3 *base) {
    static const u8 base_enc[32] = {0x58, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
                                    0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
                                    0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
                                    0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66};
    ed_p3_decode(base, base_enc);
}

static u64 ed_chunk(u64 n) {
    u64 threads = (u64)omp_get_max_threads();
    u64 chunk = (n + threads - 1) / threads;
    if (chunk > ED_CHUNK_MAX) chunk = ED_CHUNK_MAX;
    return chunk < 1 ? 1 : chunk;
}

/* The GPU kernel's arguments (kernels/ed25519.h), so every backend launches it alike; order, the
 * sequence in which a GPU's threads hash, means nothing to chunks that each thread runs alone. */
int av_ed25519_verify(const uint8_t *pks, const uint8_t *msgs, const uint64_t *offsets,
                      const uint8_t *sigs, const uint32_t *order, uint32_t use_order, uint8_t *out, uint64_t n) {
    (void)order;
    (void)use_order;
    ed_p3 base;
    ed_base(&base);
    u64 chunk = ed_chunk(n);
    int64_t nchunks = (int64_t)((n + chunk - 1) / chunk);
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) if (nchunks > 1) reduction(| : failed)
    for (int64_t c = 0; c < nchunks; c++) {
        u64 lo = (u64)c * chunk, hi = lo + chunk < n ? lo + chunk : n;
        failed |= ed_verify_chunk(lo, hi, pks, msgs, offsets, sigs, out, &base) != 0;
    }
    return failed ? -1 : 0;
}

/* out[0] = 1 when every signature is valid (the verdict of all() over av_ed25519_verify's). */
int av_ed25519_verify_all(const uint8_t *pks, const uint8_t *msgs, const uint64_t *offsets,
                          const uint8_t *sigs, uint8_t *out, uint64_t n) {
    ed_p3 base;
    ed_base(&base);
    u64 chunk = ed_chunk(n);
    int64_t nchunks = (int64_t)((n + chunk - 1) / chunk);
    int failed = 0, bad = 0;
#pragma omp parallel for schedule(dynamic, 1) if (nchunks > 1) reduction(| : failed, bad)
    for (int64_t c = 0; c < nchunks; c++) {
        u64 lo = (u64)c * chunk, hi = lo + chunk < n ? lo + chunk : n;
        int ok = ed_all_chunk(lo, hi, pks, msgs, offsets, sigs, &base);
        failed |= ok < 0;
        bad |= ok == 0;
    }
    out[0] = (u8)!bad;
    return failed ? -1 : 0;
}

/* The portable single check only, for tests that compare it with the batch path. */
int av_ed25519_verify_single(const uint8_t *pks, const uint8_t *msgs, const uint64_t *offsets,
                             const uint8_t *sigs, uint8_t *out, uint64_t n) {
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t i = 0; i < (int64_t)n; i++) ed25519_verify_item((u64)i, pks, msgs, offsets, sigs, out);
    return 0;
}

int av_ed25519_key_is_safe(const uint8_t *pks, uint8_t *out, uint64_t n) {
#pragma omp parallel for schedule(dynamic, 64)
    for (int64_t i = 0; i < (int64_t)n; i++) ed25519_key_is_safe_item((u64)i, pks, out);
    return 0;
}
