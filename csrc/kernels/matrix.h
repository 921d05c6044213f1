/*
 * matrix.h: the matrix-unit kernel (family FA_FAMILY_MATRIX): Q.K^T and P.V
 * on the AMX tiles, the softmax on AVX-512 through the shared score
 * pipeline of score.h.  Compiled by matrix_instantiate.h once against the
 * real tile instructions (kernel_amx.c) and once against the portable
 * emulation (kernel_amx_emu.c), so the code tested everywhere is the code
 * that runs on the matrix units.
 *
 * Why this shape:
 *  - The tile product is 16 rows x 16 float32 columns x 32 16-bit pairs.
 *    The kernel blocks 2 x 2 (tiles 0-3 accumulate 32 x 32 floats, 4-5
 *    hold two A blocks, 6-7 two B blocks, each loaded tile used twice), and
 *    one tile configuration (8 tiles of 16 x 64 bytes) serves every
 *    product, so it is loaded once per thread per call (tiles_begin).
 *  - Keys come in panels of FA_MX_KP (256): the panel's packed K and V are
 *    reused by every 32-row block of the tile, and the softmax runs once
 *    per panel, not per 32 keys (small key blocks leave the matrix unit
 *    idle through the softmax round trip).
 *  - The products run on the one tile GEMM (amx/tile_gemm.h), and K and V
 *    are packed by one packer (fa_mx_pack_b_) through its index map into
 *    the pair-interleaved layout that TDPBF16PS reads (row kp of a B tile
 *    holds elements 2kp and 2kp+1 of 16 columns), from any strides, once
 *    per call (fa_matrix_pack_, run by the driver
 *    before the tiles): every query tile and every head of a GQA group then
 *    reads the same packed panels, and packing costs O(keys x d) per kv
 *    head instead of per 64 query rows.  Panels start at multiples of
 *    FA_MX_KP; keys of a panel outside the tile's range are hidden.
 *  - Scores are float32 products of the 16-bit operands, scaled once in
 *    float32 (not folded into rounded Q).  P is rounded to the operand type
 *    and the row sum is taken from the rounded values, so numerator and
 *    denominator agree; lse is taken from a second sum of the unrounded
 *    probabilities, so it keeps float32 accuracy (and split-KV partials
 *    merge by their true mass).  exp2 clamps its input (vec.h), so no subnormal
 *    probability reaches an FMA, and the tile products flush subnormals.
 *  - P.V of a panel goes to float32 tiles from zero and is added to the
 *    rescaled float32 accumulator once per panel (the accumulator of a
 *    64-row tile at D = 128 needs 32 tiles, more than the 8 there are).
 *
 * Operands per storage type: bfloat16 as is; float16 as is with
 * TDPFP16PS (dispatched on real tiles only with AMX-FP16); float32 per
 * p->precision: FA_PRECISION_BF16 rounds Q, K, V and P to bfloat16 once,
 * FA_PRECISION_BF16X3 splits each into hi + lo bfloat16 and sums
 * hi*hi + hi*lo + lo*hi as one product of three times the depth:
 * [qh|qh|ql].[kh|kl|kh] for Q.K^T and [ph|pl|ph].[vh;vh;vl] for P.V.
 */

#if FA_S_KIND == 1
#define FA_MX_DP(c, a, b) FA_TILE_DPFP16PS(c, a, b)
#else
#define FA_MX_DP(c, a, b) FA_TILE_DPBF16PS(c, a, b)
#endif

typedef uint16_t FA_FN(fa_mx_vh_) __attribute__((vector_size(FA_VBYTES / 2)));

/* The carved scratch of one tile. */
typedef struct {
    uint16_t *qa, *pa;
    float *st, *mt, *pv, *ot, *row_max, *row_sum, *alpha, *lse_sum;
    int64_t dpad, dvpad;
    int nseg, mpad;
} FA_FN(fa_mx_);

/* One stored element as its 16-bit operand(s): hi, and the rounding rest
 * lo (float32 inputs split for bf16x3; 0 for an infinite or NaN hi). */
FA_INLINE uint16_t FA_FN(fa_mx_op_)(FA_S x, uint16_t *lo)
{
#if FA_S_KIND == 0
    const uint16_t hi = fa_f32_to_bf16(x);
    const float h = fa_bf16_to_f32(hi);
    *lo = h - h == 0 ? fa_f32_to_bf16(x - h) : 0;
    return hi;
#else
    *lo = 0;
    return x;
#endif
}

/* A vector of probabilities rounded to the operand type (written to dst),
 * returned widened: the exact values the tiles multiply. */
FA_INLINE VT FA_FN(fa_mx_round_)(VT x, uint16_t *dst)
{
#if FA_S_KIND == 1
    FA_FN(fa_stores_)(dst, x);
    return FA_FN(fa_loads_)(dst);
#else
    /* round to nearest even on the top 16 bits; NaN stays a quiet NaN */
    const VU u = (VU)x;
    const VU nan = (VU)(x != x);
    const VU q = ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16 & ~nan) | (((u >> 16) | 0x40u) & nan);
    const FA_FN(fa_mx_vh_) h = __builtin_convertvector(q, FA_FN(fa_mx_vh_));
    __builtin_memcpy(dst, &h, sizeof h);
    return (VT)(q << 16);
#endif
}

/* The tile GEMM (fa_mx_gemm_) and the packed-B index map (fa_mx_b_index). */
#define FA_TILE_GEMM FA_FN(fa_mx_gemm_)
#define FA_TILE_GEMM_DP FA_MX_DP
#include "../amx/tile_gemm.h"

/* Q rows as the A operand: [q] or [qh|qh|ql], zero rows up to mpad. */
static void FA_FN(fa_mx_pack_q_)(const fa_params *p, const fa_work_item *t, const FA_FN(fa_mx_) *w)
{
    const int64_t dp = w->dpad, lda = w->nseg * dp;
    for (int r = 0; r < w->mpad; r++) {
        uint16_t *a = w->qa + (size_t)r * (size_t)lda;
        __builtin_memset(a, 0, (size_t)lda * 2);
        if (r >= t->rows) continue;
        const FA_S *q = (const FA_S *)t->q_row[r];
        for (int64_t c = 0; c < p->d; c++) {
            uint16_t lo;
            a[c] = FA_FN(fa_mx_op_)(q[c * p->q_sd], &lo);
            if (w->nseg == 3) a[dp + c] = a[c], a[2 * dp + c] = lo;
        }
    }
}

#if FA_S_KIND != 0
typedef uint16_t FA_FN(fa_mx_w32_) __attribute__((vector_size(64)));

/* The fast packings of 16-bit keys and values with unit column stride:
 * whole 32-element blocks, the rest is left to the element loops.
 *
 * K: a B tile of 16 keys x 32 d holds, in row kp, the 4-byte pair kp of
 * each key: a 16 x 16 transpose of 32-bit words (done on float vectors:
 * shuffles only, the bits pass unchanged).  Returns the d packed. */
static int64_t FA_FN(fa_mx_pack_k_fast_)(const fa_params *p, const FA_FN(fa_mx_) *w,
                                         const FA_S *k, int nb, int nbp, uint16_t *kp)
{
    const int64_t full = p->d / 32 * 32, kblocks = w->dpad / 32;
    for (int n0 = 0; n0 < nbp; n0 += 16)
        for (int64_t c = 0; c < full; c += 32) {
            VT x[VL];
            for (int i = 0; i < VL; i++) {
                if (n0 + i < nb) __builtin_memcpy(&x[i], k + (n0 + i) * p->k_sn + c, 64);
                else x[i] = VSPLAT(0);
            }
            FA_FN(fa_transpose_)(x);
            __builtin_memcpy(kp + fa_mx_b_index(kblocks, c, n0), x, sizeof x);
        }
    return full;
}

/* V: a B tile of 32 keys x 16 columns holds in row kp the columns of keys
 * 2kp and 2kp+1 interleaved.  Returns the columns packed. */
static int64_t FA_FN(fa_mx_pack_v_fast_)(const fa_params *p, const FA_S *v, int nb, int nbp,
                                         uint16_t *vp)
{
    const int64_t full = p->dv / 16 * 16, kblocks = nbp / 32;
    typedef FA_FN(fa_mx_w32_) W;
    const W mix = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                   8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
    for (int64_t e = 0; e < full; e += 16)
        for (int j = 0; j < nbp; j += 2) {
            W a = {0}, b = {0};
            if (j < nb) __builtin_memcpy(&a, v + j * p->v_sn + e, 32);
            if (j + 1 < nb) __builtin_memcpy(&b, v + (j + 1) * p->v_sn + e, 32);
            const W r = __builtin_shuffle(a, b, mix);
            __builtin_memcpy(vp + fa_mx_b_index(kblocks, j, e), &r, 64);
        }
    return full;
}
#endif

/* The one packer of K and V: nb keys of src (rows sn apart, elements sc
 * apart), elements [x0, nx) of each, into the B operand at dst (zeroed by
 * the caller) through the index map fa_mx_b_index(kblocks, depth, column).
 * keys_deep = 0 (K, for Q.K^T): depth = the element,
 * column = the key; keys_deep = 1 (V, for P.V): depth = the key, column =
 * the element.  With three segments (bf16x3) segment g lies g * seg_depth
 * deeper and holds lo where g == lo_seg, hi elsewhere. */
FA_INLINE void FA_FN(fa_mx_pack_b_)(const FA_S *src, int64_t sn, int64_t sc, int nb,
                                    int64_t x0, int64_t nx, const int keys_deep, int nseg,
                                    int64_t seg_depth, int lo_seg, int64_t kblocks,
                                    uint16_t *dst)
{
    for (int n = 0; n < nb; n++) {
        const FA_S *row = src + n * sn;
        for (int64_t x = x0; x < nx; x++) {
            uint16_t lo;
            const uint16_t hi = FA_FN(fa_mx_op_)(row[x * sc], &lo);
            const int64_t depth = keys_deep ? n : x, col = keys_deep ? x : n;
            dst[fa_mx_b_index(kblocks, depth, col)] = hi;
            for (int g = 1; g < nseg; g++)
                dst[fa_mx_b_index(kblocks, g * seg_depth + depth, col)] = g == lo_seg ? lo : hi;
        }
    }
}

/* Keys [j0, j0 + nb) as the B operand of Q.K^T (depth d, columns keys):
 * [k] or [kh|kl|kh], zero past nb (up to nbp) and past d. */
static void FA_FN(fa_mx_pack_k_)(const fa_params *p, const FA_FN(fa_mx_) *w, const FA_S *k,
                                 int nb, int nbp, uint16_t *kp)
{
    const int64_t dp = w->dpad, kblocks = w->nseg * dp / 32;
    __builtin_memset(kp, 0, (size_t)nbp * (size_t)(w->nseg * dp) * 2);
    int64_t c0 = 0;
#if FA_S_KIND != 0
    if (p->k_sd == 1) c0 = FA_FN(fa_mx_pack_k_fast_)(p, w, k, nb, nbp, kp);
#endif
    FA_FN(fa_mx_pack_b_)(k, p->k_sn, p->k_sd, nb, c0, p->d, 0, w->nseg, dp, 1, kblocks, kp);
}

/* Values [j0, j0 + nb) as the B operand of P.V (depth keys, columns dv):
 * [v] or [vh;vh;vl] (each segment nbp keys deep), zero past nb and dv. */
static void FA_FN(fa_mx_pack_v_)(const fa_params *p, const FA_FN(fa_mx_) *w, const FA_S *v,
                                 int nb, int nbp, uint16_t *vp)
{
    const int64_t kblocks = (int64_t)w->nseg * nbp / 32;
    __builtin_memset(vp, 0, (size_t)(w->nseg * nbp) * (size_t)w->dvpad * 2);
    int64_t e0 = 0;
#if FA_S_KIND != 0
    if (p->v_sd == 1) e0 = FA_FN(fa_mx_pack_v_fast_)(p, v, nb, nbp, vp);
#endif
    FA_FN(fa_mx_pack_b_)(v, p->v_sn, p->v_sd, nb, e0, p->dv, 1, w->nseg, nbp, 2, kblocks, vp);
}

/* Scale and score epilogue of one row's nb scores s (vectors along the
 * keys; the stage flags constant, see FA_EPI_SWITCH), keys outside
 * [vlo, vhi) hidden; returns the vector max. */
FA_INLINE VT FA_FN(fa_mx_epi_row_)(float *s, int nb, int vlo, int vhi, VT scale,
                                   const FA_FN(fa_epi_) *e,
                                   const FA_FN(fa_rowv_) *row, const float *mt,
                                   const int capped, const int alibi, const int masked,
                                   const int band)
{
    const VT ninf = VSPLAT(-__builtin_inff()), cap = e->cap, capinv = e->capinv;
    VT iota, mx = ninf;
    for (int l = 0; l < VL; l++) iota[l] = (float)l;
    for (int j = 0; j < nb; j += VL) {
        const VT jidx = VSPLAT(j) + iota;
        VT x = FA_FN(fa_score_epilogue_)(cap, capinv, capped, alibi, masked, band,
                                         VLOAD(s + j) * scale, jidx, row, mt + j);
        if (j < vlo || j + VL > vhi)
            x = FA_FN(fa_vsel_)((jidx < VSPLAT(vlo)) | (jidx >= VSPLAT(vhi)), ninf, x);
        VSTORE(s + j, x);
        mx = FA_FN(fa_vmax_)(x, mx);
    }
    return mx;
}

/* The row's data for the epilogue, relative to key j0 of a panel of nb. */
FA_INLINE FA_FN(fa_rowv_) FA_FN(fa_mx_rowv_)(const fa_work_item *t, int r, int64_t j0, int nb)
{
    FA_FN(fa_rowv_) row;
    int64_t lo = t->jlo[r] - j0, hi = t->jhi[r] - j0;
    lo = lo < 0 ? 0 : lo > nb ? nb : lo;
    hi = hi < 0 ? 0 : hi > nb ? nb : hi;
    row.slope = VSPLAT(t->slope[r]);
    row.pos = VSPLAT((float)(t->pos[r] - j0));
    row.lo = VSPLAT((float)lo);
    row.hi = VSPLAT((float)hi);
    return row;
}

/* Row r of a panel: scores through the epilogue, the online-softmax step,
 * P rounded into the A operand ([p] or [ph|pl|ph]) with the row sum of the
 * rounded values, and the row's rescale factor. */
static void FA_FN(fa_mx_row_)(const fa_params *p, const fa_work_item *t, const FA_FN(fa_mx_) *w,
                              const FA_FN(fa_epi_) *e, int r, int64_t j0, int nb, int nbp,
                              int vlo, int vhi)
{
    float *s = w->st + (size_t)r * FA_MX_KP;
    if (e->masked) {
        FA_FN(fa_mask_terms_)(p->mask_kind, t->mask_row[r], p->m_sk, j0, nb, w->mt, 1);
        for (int j = nb; j < nbp; j++) w->mt[j] = 0;
    }
    const FA_FN(fa_rowv_) row = FA_FN(fa_mx_rowv_)(t, r, j0, nb);
    const VT scale = VSPLAT(p->scale);
    VT mx = VSPLAT(0);
#define FA_RUN(c, a, m, b) \
    mx = FA_FN(fa_mx_epi_row_)(s, nb, vlo, vhi, scale, e, &row, w->mt, c, a, m, b)
    const int mode = FA_FN(fa_epi_mode_)(e);
    if (mode == 0) FA_RUN(0, 0, 0, 0);
    FA_EPI_SWITCH(mode, FA_RUN)
#undef FA_RUN
    const VT m_old = VSPLAT(w->row_max[r]);
    const VT m_new = FA_FN(fa_vmax_)(VSPLAT(FA_FN(fa_hmax_)(mx)), m_old);
    const VT ref = FA_FN(fa_softmax_ref_)(m_new);
    const int64_t lda = (int64_t)w->nseg * nbp;
    uint16_t *a = w->pa + (size_t)r * (size_t)lda;
    VT sum = VSPLAT(0), exact = VSPLAT(0);
    for (int j = 0; j < nb; j += VL) {
        const VT pj = FA_FN(fa_softmax_exp_)(VLOAD(s + j), ref);
        const VT hi = FA_FN(fa_mx_round_)(pj, a + j);
        sum += hi;
        exact += pj;
        if (w->nseg == 3) {
            sum += FA_FN(fa_mx_round_)(pj - hi, a + nbp + j);
            __builtin_memcpy(a + 2 * nbp + j, a + j, VL * 2);
        }
    }
    for (int g = 0; g < w->nseg; g++)
        for (int j = (nb + VL - 1) / VL * VL; j < nbp; j++) a[g * nbp + j] = 0;
    const float alpha = FA_FN(fa_softmax_exp_)(m_old, ref)[0];
    w->row_sum[r] = w->row_sum[r] * alpha + FA_FN(fa_hsum_)(sum);
    w->lse_sum[r] = w->lse_sum[r] * alpha + FA_FN(fa_hsum_)(exact);
    w->row_max[r] = m_new[0];
    w->alpha[r] = alpha;
}

/* One key panel [j0, j0 + nb) (keys [vlo, vhi) of it in the tile's range),
 * packed in kp and vp: S = Q.K^T on the tiles, the rows' softmax,
 * O = O * alpha + P.V with P.V on the tiles. */
static void FA_FN(fa_mx_panel_)(const fa_params *p, const fa_work_item *t, const FA_FN(fa_mx_) *w,
                                const FA_FN(fa_epi_) *e, int64_t j0, int nb, int vlo, int vhi,
                                const uint16_t *kp, const uint16_t *vp)
{
    const int nbp = (nb + 31) / 32 * 32;
    const int64_t qdepth = w->nseg * w->dpad, pdepth = (int64_t)w->nseg * nbp;
    FA_FN(fa_mx_gemm_)(w->mpad, nbp, qdepth, w->qa, qdepth, kp, qdepth * 16, w->st, FA_MX_KP);
    for (int r = 0; r < t->rows; r++) FA_FN(fa_mx_row_)(p, t, w, e, r, j0, nb, nbp, vlo, vhi);
    __builtin_memset(w->pa + (size_t)t->rows * (size_t)pdepth, 0,
                     (size_t)(w->mpad - t->rows) * (size_t)pdepth * 2);
    FA_FN(fa_mx_gemm_)(w->mpad, w->dvpad, pdepth, w->pa, pdepth, vp, pdepth * 16, w->pv,
                       w->dvpad);
    for (int r = 0; r < t->rows; r++) {
        const VT a = VSPLAT(w->alpha[r]);
        float *o = w->ot + (size_t)r * (size_t)w->dvpad;
        const float *pv = w->pv + (size_t)r * (size_t)w->dvpad;
        for (int64_t c = 0; c < w->dvpad; c += VL) VSTORE(o + c, VLOAD(o + c) * a + VLOAD(pv + c));
    }
}

/* The operand segments (3 for float32 with bf16x3) and padded head dims. */
static FA_FN(fa_mx_) FA_FN(fa_mx_dims_)(const fa_params *p)
{
    FA_FN(fa_mx_) w;
    w.nseg = FA_S_KIND == 0 && p->precision == FA_PRECISION_BF16X3 ? 3 : 1;
    w.dpad = (p->d + 31) / 32 * 32;
    w.dvpad = (p->dv + 31) / 32 * 32;
    return w;
}

/* Key panel `panel` of the kv head of t, packed into dst (run by the
 * driver once per call, before the tiles). */
static void FA_FN(fa_matrix_pack_)(const fa_params *p, const fa_work_item *t, int64_t panel,
                                   uint16_t *dst)
{
    const FA_FN(fa_mx_) w = FA_FN(fa_mx_dims_)(p);
    const fa_matrix_panel L = fa_matrix_panel_layout(p->d, p->dv, w.nseg);
    const int64_t j0 = panel * FA_MX_KP;
    const int nb = (int)(t->n_keys - j0 < FA_MX_KP ? t->n_keys - j0 : FA_MX_KP);
    const int nbp = (nb + 31) / 32 * 32;
    FA_FN(fa_mx_pack_k_)(p, &w, (const FA_S *)t->k + j0 * p->k_sn, nb, nbp, dst + L.kp);
    FA_FN(fa_mx_pack_v_)(p, &w, (const FA_S *)t->v + j0 * p->v_sn, nb, nbp, dst + L.vp);
}

/* Carve the scratch, pack Q and clear the row state. */
static FA_FN(fa_mx_) FA_FN(fa_mx_setup_)(const fa_params *p, const fa_work_item *t, void *scratch)
{
    FA_FN(fa_mx_) w = FA_FN(fa_mx_dims_)(p);
    float *base = (float *)scratch;
    const fa_matrix_scratch s = fa_matrix_scratch_layout(p->d, p->dv, w.nseg);
    w.mpad = (t->rows + 31) / 32 * 32;
    w.qa = (uint16_t *)(base + s.qa);
    w.pa = (uint16_t *)(base + s.pa);
    w.st = base + s.st;
    w.mt = base + s.mt;
    w.pv = base + s.pv;
    w.ot = base + s.ot;
    w.row_max = base + s.row_max;
    w.row_sum = base + s.row_sum;
    w.alpha = base + s.alpha;
    w.lse_sum = base + s.lse_sum;
    FA_FN(fa_mx_pack_q_)(p, t, &w);
    __builtin_memset(w.ot, 0, (size_t)t->rows * (size_t)w.dvpad * sizeof(float));
    for (int r = 0; r < t->rows; r++) {
        w.row_max[r] = -__builtin_inff();
        w.row_sum[r] = w.lse_sum[r] = 0;
    }
    return w;
}

/* The tile: attention of t->rows query rows over keys [t->k_lo, t->k_hi)
 * (inside each row's band), panel by panel from the packed K and V,
 * written normalized through the shared row finish.  The tile
 * configuration is already loaded. */
static void FA_FN(fa_matrix_)(const fa_params *p, const fa_work_item *t, void *scratch)
{
    const FA_FN(fa_mx_) w = FA_FN(fa_mx_setup_)(p, t, scratch);
    const fa_matrix_panel L = fa_matrix_panel_layout(p->d, p->dv, w.nseg);
    FA_FN(fa_epi_) e = FA_FN(fa_epi_init_)(p);
    const FA_FN(fa_range_) g = FA_FN(fa_tile_range_)(t);
    /* (an empty range may sit anywhere, even at INT64_MAX: no panel then) */
    const int64_t first = g.j_start < g.j_end ? g.j_start / FA_MX_KP * FA_MX_KP : g.j_end;
    for (int64_t j0 = first; j0 < g.j_end; j0 += FA_MX_KP) {
        const int nb = (int)(t->n_keys - j0 < FA_MX_KP ? t->n_keys - j0 : FA_MX_KP);
        const int vlo = (int)((g.j_start > j0 ? g.j_start : j0) - j0);
        const int vhi = (int)((g.j_end < j0 + nb ? g.j_end : j0 + nb) - j0);
        e.band = j0 + vlo < g.lo_max || j0 + vhi > g.hi_min;
        if (e.band && !FA_FN(fa_band_meets_)(t, j0 + vlo, vhi - vlo)) continue;
        const uint16_t *panel = t->packed + (size_t)(j0 / FA_MX_KP) * L.elems;
        FA_FN(fa_mx_panel_)(p, t, &w, &e, j0, nb, vlo, vhi, panel + L.kp, panel + L.vp);
    }
    for (int r = 0; r < t->rows; r++) {
        FA_FN(fa_row_finish_)(p, t, r, w.row_max[r], w.row_sum[r],
                              w.ot + (size_t)r * (size_t)w.dvpad, 1, 0);
        /* lse from the unrounded sum (the same formula as the row finish) */
        float *lse = (float *)t->lse_row[r];
        if (lse && w.row_sum[r] != 0)
            *lse = (float)((double)w.row_max[r] + __builtin_log((double)w.lse_sum[r]));
    }
}

#undef FA_MX_DP
