/* C entries of kernels/risk.h across cores. math.h only declares sqrt, which is correctly
 * rounded IEEE on every target; the kernels call no other libm function. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "../kernels/risk.h"

/* Greeks run in blocks: the block's inputs are first laid out densely (broadcasting the scalar
 * ones, taking sqrt(t), widening the flags), then one branch-free loop over the block vectorises,
 * AVX2 where the CPU has it, into a block-local output that is copied out row by row (six output
 * rows written side by side collide in the cache: n*8 bytes apart is a multiple of the page
 * size). Each lane runs greeks_one's IEEE operations in the same order, so the bits equal the
 * portable path's. */
#define AV_RISK_BLOCK 256

#if defined(__SSE2__)
#include <emmintrin.h>
/* The output rows are not read again here: non-temporal stores skip the read for ownership, which
 * is about a third of the loop's memory traffic. The fence orders them before the caller reads. */
static void store_row(double *dst, const double *src, uint64_t len) {
    uint64_t j = 0;
    if (((uintptr_t)dst & 15) && len) {
        dst[0] = src[0];
        j = 1;
    }
    for (; j + 1 < len; j += 2) _mm_stream_pd(dst + j, _mm_loadu_pd(src + j));
    if (j < len) dst[j] = src[j];
}
#define STORE_FENCE() _mm_sfence()
#else
static void store_row(double *dst, const double *src, uint64_t len) { memcpy(dst, src, len * sizeof(double)); }
#define STORE_FENCE() ((void)0)
#endif

static void load_block(double *dst, const double *src, int scalar, uint64_t i0, uint64_t len) {
    if (scalar)
        for (uint64_t j = 0; j < len; ++j) dst[j] = src[0];
    else
        memcpy(dst, src + i0, len * sizeof(double));
}

/* One vectorised pass over a block; `assume` is a constant at each expansion, so the compiler drops
 * the work it makes exact. */
#define GREEKS_SIMD(assume)                                                                                   \
    _Pragma("omp simd") for (uint64_t j = 0; j < len; ++j)                                                   \
        greeks_one(b[0][j], b[1][j], b[2][j], rt[j], b[3][j], b[4][j], b[5][j], b[6][j], (u32)fb[j], (assume), \
                   &g[0][j], AV_RISK_BLOCK)

__attribute__((target_clones("avx2", "default"), flatten))
static void greeks_block(uint64_t i0, uint64_t len, const double *const *in, const uint8_t *flags,
                         uint32_t scalars, double *out, uint64_t n) {
    double b[7][AV_RISK_BLOCK], rt[AV_RISK_BLOCK], g[B76_OUTPUTS][AV_RISK_BLOCK];
    uint64_t fb[AV_RISK_BLOCK]; /* 64-bit: gcc will not vectorise tests on bytes next to doubles */
    for (int a = 0; a < 7; ++a) load_block(b[a], in[a], (scalars >> a) & 1u, i0, len);
    int no_carry = 1, linear = 1;
    for (uint64_t j = 0; j < len; ++j) {
        rt[j] = sqrt(b[2][j]);
        fb[j] = flags[(scalars & 128u) ? 0 : i0 + j];
        no_carry &= b[3][j] == b[4][j];
        linear &= (fb[j] & B76_INVERSE) == 0;
    }
    if (no_carry && linear)
        GREEKS_SIMD(B76_ASSUME_NO_CARRY | B76_ASSUME_LINEAR);
    else if (no_carry)
        GREEKS_SIMD(B76_ASSUME_NO_CARRY);
    else
        GREEKS_SIMD(0u);
    for (int o = 0; o < B76_OUTPUTS; ++o) store_row(out + (uint64_t)o * n + i0, g[o], len);
    STORE_FENCE();
}

int av_greeks(const double *x, const double *k, const double *t, const double *r, const double *q,
              const double *vol, const double *index, const uint8_t *flags, uint32_t scalars, double *out,
              uint64_t n) {
    const double *in[7] = {x, k, t, r, q, vol, index};
    int64_t blocks = (int64_t)((n + AV_RISK_BLOCK - 1) / AV_RISK_BLOCK);
#pragma omp parallel for schedule(static) if (blocks >= 4)
    for (int64_t bi = 0; bi < blocks; ++bi) {
        uint64_t i0 = (uint64_t)bi * AV_RISK_BLOCK;
        greeks_block(i0, n - i0 < AV_RISK_BLOCK ? n - i0 : AV_RISK_BLOCK, in, flags, scalars, out, n);
    }
    return 0;
}

/* Portfolio margin as the portable item computes it, with every rk_value call of a chunk of
 * positions (the base value, each scenario, each gap's middle) and every rk_dvalue call (each
 * gap's middle) gathered into arrays and evaluated in vectorised loops; the losses and the gaps'
 * bounds are then summed in the item's order. When the positions of a call outnumber its
 * instruments, each instrument is valued once for the call (a table of its values) instead of once
 * per position holding it: the same calls on the same inputs, so the same bits. */
#define AV_MARGIN_CHUNK 16 /* positions per batch */
#define AV_MARGIN_VALUES (RK_MAX_SCEN + 1 + RK_MAX_GAPS)
#define AV_MARGIN_SLOPES (RK_MAX_GAPS + 3 * RK_MAX_MOVES)
#define AV_MARGIN_TASKS (AV_MARGIN_CHUNK * (AV_MARGIN_VALUES + AV_MARGIN_SLOPES))

/* Doubles per instrument in a table: base, its values (every move in every vol state, then the
 * extended moves), gap middles' values, their slopes, then the slopes at the standard moves. */
static int table_width(const double *pp) {
    int nm = (int)pp[RK_P_NMOVES];
    return 3 * nm + (int)pp[RK_P_NEXT] + 1 + 2 * 3 * (nm - 1) + 3 * nm;
}

/* val[q * per + 0] = instrument inst[q]'s base value, val[q * per + 1 + s] its value s (rk_scenario),
 * val[q * per + 1 + nvals + g] at gap g's middle; then forward * rk_dvalue at each gap's middle and
 * in each standard scenario */
__attribute__((target_clones("avx2", "default"), flatten))
static void value_chunk(const int32_t *inst, int np, const double *forward, const double *strike,
                        const double *expiry, const double *vol, const uint8_t *kind, const double *pp, double *val) {
    int nm = (int)pp[RK_P_NMOVES];
    int nvals = 3 * nm + (int)pp[RK_P_NEXT];
    int ng = 3 * (nm - 1), nv = nvals + 1 + ng, ns = ng + 3 * nm, per = nv + ns;
    double index = pp[RK_P_INDEX];
    double tf[AV_MARGIN_CHUNK * AV_MARGIN_VALUES], ti[AV_MARGIN_CHUNK * AV_MARGIN_VALUES];
    double tk[AV_MARGIN_CHUNK * AV_MARGIN_VALUES], trt[AV_MARGIN_CHUNK * AV_MARGIN_VALUES];
    double tv[AV_MARGIN_CHUNK * AV_MARGIN_VALUES], td[AV_MARGIN_CHUNK * AV_MARGIN_VALUES];
    double out[AV_MARGIN_CHUNK * AV_MARGIN_VALUES];
    uint64_t tfl[AV_MARGIN_CHUNK * AV_MARGIN_VALUES];
    double sout[AV_MARGIN_CHUNK * AV_MARGIN_SLOPES];
    for (int q = 0; q < np; q++) {
        int32_t j = inst[q];
        double disc, rt, vols[3];
        rk_position(expiry[j], vol[j], pp, &disc, &rt, vols);
        for (int s = -1; s < nvals + ng; s++) { /* -1: the base value, unmoved; from nvals: the gaps */
            int vs = 1, o = q * nv + s + 1;
            double off[3], mv = 1.0;
            if (s >= nvals) {
                vs = (s - nvals) / (nm - 1);
                mv = rk_gap_mid((s - nvals) % (nm - 1), pp, off);
            } else if (s >= 0) {
                mv = rk_scenario(s, nm, pp, &vs);
            }
            tf[o] = s < 0 ? forward[j] : forward[j] * mv;
            ti[o] = s < 0 ? index : index * mv;
            tv[o] = s < 0 ? vol[j] : vols[vs];
            tk[o] = strike[j], trt[o] = rt, td[o] = disc, tfl[o] = kind[j];
        }
    }
#pragma omp simd
    for (int o = 0; o < np * nv; o++) out[o] = rk_value((u32)tfl[o], tf[o], ti[o], tk[o], trt[o], tv[o], td[o]);
    /* the slopes: at the gaps' middles and in the standard scenarios, from the same inputs as the values */
    for (int q = 0; q < np; q++) {
        int om = q * nv + nvals + 1, os = q * nv + 1;
        double f0 = forward[inst[q]];
#pragma omp simd
        for (int g = 0; g < ng; g++)
            sout[q * ns + g] = f0 * rk_dvalue((u32)tfl[om + g], tf[om + g], tk[om + g], trt[om + g], tv[om + g], td[om + g]);
#pragma omp simd
        for (int t = 0; t < 3 * nm; t++)
            sout[q * ns + ng + t] = f0 * rk_dvalue((u32)tfl[os + t], tf[os + t], tk[os + t], trt[os + t], tv[os + t],
                                                   td[os + t]);
    }
    for (int q = 0; q < np; q++) {
        memcpy(val + q * per, out + q * nv, (size_t)nv * sizeof(double));
        memcpy(val + q * per + nv, sout + q * ns, (size_t)ns * sizeof(double));
    }
}

/* (AVX2 where present, as value_chunk: the per-move and per-gap sums vectorise, the same IEEE
 * operations either way) */
__attribute__((target_clones("avx2", "default")))
static void portfolio_margin_one(uint64_t a, const int64_t *offsets, const int32_t *pos_inst, const double *pos_size,
                                 const double *forward, const double *strike, const double *expiry, const double *vol,
                                 const uint8_t *kind, const double *pp, const double *table, int64_t *im, int64_t *mm,
                                 int32_t *worst) {
    int nm = (int)pp[RK_P_NMOVES], ne = (int)pp[RK_P_NEXT];
    int nvals = 3 * nm + ne, nscen = nm + ne;
    int ng = 3 * (nm - 1), per = table_width(pp);
    double pnl[RK_MAX_MOVES + RK_MAX_EXT], d[RK_MAX_SCEN], gaps[RK_GAP_SUMS * RK_MAX_BANDS], off[3 * RK_MAX_MOVES];
    double chunk[AV_MARGIN_TASKS];
    rk_gap_offsets(nm, pp, off);
    for (int s = 0; s < nscen; s++) pnl[s] = 0.0;
    for (int g = 0; g < RK_GAP_SUMS * RK_MAX_BANDS; g++) gaps[g] = 0.0;
    int long_only = 1;
    double long_value = 0.0;
    for (int64_t p0 = offsets[a]; p0 < offsets[a + 1]; p0 += AV_MARGIN_CHUNK) {
        int np = (int)(offsets[a + 1] - p0 < AV_MARGIN_CHUNK ? offsets[a + 1] - p0 : AV_MARGIN_CHUNK);
        if (!table) value_chunk(pos_inst + p0, np, forward, strike, expiry, vol, kind, pp, chunk);
        for (int q = 0; q < np; q++) {
            const double *val = table ? table + (int64_t)pos_inst[p0 + q] * per : chunk + q * per;
            const double *vc = val + 1 + nvals, *sm = vc + ng, *sp = sm + ng;
            double base = val[0];
            int first;
            double size = rk_net(p0 + q, offsets[a], offsets[a + 1], pos_inst, pos_size, &first);
            if (!first) continue;
            long_only &= rk_long_option(kind[pos_inst[p0 + q]], size);
            long_value += size * base;
            for (int s = 0; s < nvals; s++) d[s] = size * (val[1 + s] - base);
            int ps = rk_state(size);
            rk_pnl_add(d, nm, ne, ps, pnl);
            rk_gaps_add(d, vc, sm, sp, off, base, size, rk_gap_class(kind[pos_inst[p0 + q]], size), nm, ps, gaps);
        }
    }
    double contingency = rk_contingency(a, offsets, pos_inst, pos_size, strike, expiry, kind, pp);
    rk_finish(a, pnl, gaps, nm, nscen, contingency, long_only, long_value, pp, im, mm, worst);
}

int av_portfolio_margin(const int64_t *offsets, const int32_t *pos_inst, const double *pos_size,
                        const double *forward, const double *strike, const double *expiry, const double *vol,
                        const uint8_t *kind, const double *params, int64_t *im, int64_t *mm, int32_t *worst,
                        uint64_t n) {
    if (!rk_counts_ok(params)) { /* as portfolio_margin_item: every account RK_NOT_FINITE */
        for (uint64_t a = 0; a < n; ++a) im[a] = mm[a] = RK_NOT_FINITE, worst[a] = 0;
        return 0;
    }
    int64_t positions = offsets[n] - offsets[0], ninst = 0;
    for (int64_t p = offsets[0]; p < offsets[n]; ++p)
        if (pos_inst[p] >= ninst) ninst = (int64_t)pos_inst[p] + 1;
    double *table = NULL;
    int per = table_width(params);
    if (positions > ninst && (table = malloc((size_t)ninst * per * sizeof(double))) != NULL) {
        int32_t inst[AV_MARGIN_CHUNK];
        for (int64_t j0 = 0; j0 < ninst; j0 += AV_MARGIN_CHUNK) {
            int np = (int)(ninst - j0 < AV_MARGIN_CHUNK ? ninst - j0 : AV_MARGIN_CHUNK);
            for (int q = 0; q < np; q++) inst[q] = (int32_t)(j0 + q);
            value_chunk(inst, np, forward, strike, expiry, vol, kind, params, table + j0 * per);
        }
    }
#pragma omp parallel for schedule(dynamic, 64) if (positions >= 4096)
    for (int64_t a = 0; a < (int64_t)n; ++a)
        portfolio_margin_one((uint64_t)a, offsets, pos_inst, pos_size, forward, strike, expiry, vol, kind, params,
                             table, im, mm, worst);
    free(table);
    return 0;
}

int av_standard_margin(const int64_t *offsets, const int32_t *pos_inst, const double *pos_size,
                       const double *forward, const double *strike, const double *expiry, const double *vol,
                       const uint8_t *kind, const double *params, int64_t *im, int64_t *mm, uint64_t n) {
#pragma omp parallel for schedule(dynamic, 64) if (n >= 256)
    for (int64_t a = 0; a < (int64_t)n; ++a)
        standard_margin_item((u64)a, offsets, pos_inst, pos_size, forward, strike, expiry, vol, kind, params, im, mm);
    return 0;
}
