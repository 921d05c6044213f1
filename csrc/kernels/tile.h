/*
 * tile.h: the tile kernel (vectors along the QUERIES) and the weights pass
 * that shares its score path: the block steps (scores, epilogue, online
 * softmax, the rows' finish) and the two drivers, fa_tile_ and fa_weights_.
 *
 * Q is packed transposed once per tile (qt[d][row], pre-multiplied by the
 * scale); the scores tile is st[key][row] and the output accumulator
 * ot[col][row].  Keys and values are only ever read as scalars broadcast
 * into a vector, straight from their strided storage: K and V are never
 * packed or copied (16-bit ones are widened one key block at a time into
 * scratch, reused by all 64 rows), any stride works, and the online
 * softmax is purely vertical: one lane = one query row, so the running
 * max, sum and rescale factor need no horizontal reductions.
 *
 * The parts it stands on, included before it by kernel_body.h:
 *   micro.h       the register-blocked Q.K^T and P.V micro-kernels
 *   tile_pack.h   Q packed for the tile, 16-bit K and V widened, the mask
 *                 read, a key block as the micro-kernels read it
 * and, included below before the drivers, tile_stair.h (the blocks on the
 * causal diagonal).
 */

/* Scratch of a tile (carved by fa_tile_scratch_layout), the packed Q and
 * the ALiBi slopes of its lanes. */
typedef struct {
    FA_T *qt, *st, *mt, *ot, *row_max, *row_sum, *alpha, *bmax;
    FA_T *slope, *pos, *lo, *hi; /* per lane, relative to the block */
    FA_T *kc, *vc;               /* widened key and value blocks (16-bit types) */
    int nv, lanes;
    int pairs; /* Q.K^T on bfloat16 pairs (FA_QK_PAIRS; d and the key stride even) */
    /* The staircase of a block on the causal diagonal (see fa_stair_):
     * query vector i needs only the block's first nbv[i] keys. */
    int nbv[FA_BQ / VL];
} FA_FN(fa_scr_);

FA_INLINE FA_FN(fa_scr_) FA_FN(fa_tile_setup_)(const fa_params *p, const fa_work_item *t,
                                               void *scratch)
{
    FA_FN(fa_scr_) w;
    FA_T *base = (FA_T *)scratch;
    const fa_tile_scratch s = fa_tile_scratch_layout(p->d, p->dv, FA_S_KIND != 0 || FA_KV_I8);
    w.nv = (t->rows + VL - 1) / VL; /* query vectors in use */
    w.lanes = w.nv * VL;
    w.qt = base + s.qt;
    w.st = base + s.st;
    w.mt = base + s.mt;
    w.ot = base + s.ot;
    w.row_max = base + s.row_max;
    w.row_sum = base + s.row_sum;
    w.alpha = base + s.alpha;
    w.bmax = base + s.bmax;
    w.slope = base + s.slope;
    w.pos = base + s.pos;
    w.lo = base + s.lo;
    w.hi = base + s.hi;
    w.kc = base + s.kc;
    w.vc = base + s.vc;

    w.pairs = FA_QK_PAIRS && p->k_sd == 1 && p->d % 2 == 0 && p->k_sn % 2 == 0;
#if FA_QK_PAIRS
    if (w.pairs)
        FA_FN(fa_pack_q_pairs_)(t, p->d, p->q_sd, w.lanes, w.qt);
    else
#endif
        FA_FN(fa_pack_q_)(t, p->d, p->q_sd, (FA_T)p->scale, w.lanes, w.qt);
    for (int r = 0; r < w.lanes; r++) {
        w.slope[r] = r < t->rows ? (FA_T)t->slope[r] : (FA_T)0;
        w.pos[r] = 0;
    }
    return w;
}

/* Each lane's diagonal and band relative to key j0 of a block of nb keys
 * (padded lanes see the whole block). */
FA_INLINE void FA_FN(fa_tile_rows_at_)(const fa_work_item *t, const FA_FN(fa_scr_) *w,
                                       const FA_FN(fa_epi_) *e, int64_t j0, int nb)
{
    if (e->alibi)
        for (int r = 0; r < t->rows; r++) w->pos[r] = (FA_T)(t->pos[r] - j0);
    if (e->band)
        for (int r = 0; r < w->lanes; r++) {
            int64_t lo = r < t->rows ? t->jlo[r] - j0 : 0, hi = r < t->rows ? t->jhi[r] - j0 : nb;
            lo = lo < 0 ? 0 : lo > nb ? nb : lo;
            hi = hi < 0 ? 0 : hi > nb ? nb : hi;
            w->lo[r] = (FA_T)lo;
            w->hi[r] = (FA_T)hi;
        }
}

/* The score epilogue over a block st[key][row] of nb keys (of each query
 * vector's first nbv[i] keys on a staircase; nbv is NULL otherwise, a
 * constant after inlining). */
FA_INLINE void FA_FN(fa_tile_epilogue_)(const FA_FN(fa_scr_) *w, const FA_FN(fa_epi_) *e,
                                        int nb, const int *nbv, const int capped,
                                        const int alibi, const int masked, const int band)
{
    const VT cap = e->cap, capinv = e->capinv;
    for (int i = 0; i < w->nv; i++) {
        FA_FN(fa_rowv_) row;
        row.slope = alibi ? VLOAD(w->slope + i * VL) : VSPLAT(0);
        row.pos = alibi ? VLOAD(w->pos + i * VL) : VSPLAT(0);
        row.lo = band ? VLOAD(w->lo + i * VL) : VSPLAT(0);
        row.hi = band ? VLOAD(w->hi + i * VL) : VSPLAT(0);
        const int n = nbv ? nbv[i] : nb;
        for (int j = 0; j < n; j++) {
            FA_T *sp = w->st + j * FA_BQ + i * VL;
            VSTORE(sp, FA_FN(fa_score_epilogue_)(cap, capinv, capped, alibi, masked, band,
                                                 VLOAD(sp), VSPLAT(j), &row,
                                                 w->mt + j * FA_BQ + i * VL));
        }
    }
}

/*
 * Scores of one key block, st[key][row]: Q.K^T (scale folded into Q), then
 * the score epilogue (fa_score_epilogue_) on every vector.  bmax receives
 * each lane's block max when it is still exact on return (the return value
 * is 0; tanh is increasing, so a soft cap alone caps the max like the
 * scores); 1 means ALiBi or masking changed scores and the caller must
 * take the max again.
 */
FA_INLINE int FA_FN(fa_block_scores_)(const fa_params *p, const fa_work_item *t,
                                      const FA_FN(fa_scr_) *w, FA_FN(fa_epi_) *e,
                                      int64_t j0, int nb, const FA_T *kb, int64_t k_sn,
                                      int64_t k_sd, int band, const int *nbv)
{
    const int nv = w->nv;
    FA_T *st = w->st, *bmax = w->bmax;
    for (int i = 0; i < nv; i++) VSTORE(bmax + i * VL, VSPLAT(-(FA_T)__builtin_inf()));
    if (nbv) {
        /* the staircase: keys [nbv[i - 1], nbv[i]) for query vectors i.. */
        for (int i = 0, j = 0; i < nv; j = nbv[i], i++) {
            const int n = nbv[i] - j;
            if (n <= 0) continue;
            FA_T *sb = st + j * FA_BQ + i * VL, *mb = bmax + i * VL;
            const FA_T *qb = w->qt + i * VL, *kj = kb + j * k_sn;
            if (FA_QK_PAIRS && w->pairs)
                FA_FN(fa_qk_tile_)(nv - i, n, 1, qb, kj, k_sn, 1, p->d / 2, (FA_T)p->scale, sb,
                                   mb);
            else
                FA_FN(fa_qk_tile_)(nv - i, n, 0, qb, kj, k_sn, k_sd, p->d, 0, sb, mb);
        }
    } else if (FA_QK_PAIRS && w->pairs)
        FA_FN(fa_qk_tile_)(nv, nb, 1, w->qt, kb, k_sn, 1, p->d / 2, (FA_T)p->scale, st, bmax);
    else if (k_sd == 1)
        FA_FN(fa_qk_tile_)(nv, nb, 0, w->qt, kb, k_sn, 1, p->d, 0, st, bmax);
    else
        FA_FN(fa_qk_tile_)(nv, nb, 0, w->qt, kb, k_sn, k_sd, p->d, 0, st, bmax);

    e->band = band;
    const int mode = FA_FN(fa_epi_mode_)(e);
    if (!mode) return 0;
    FA_FN(fa_tile_rows_at_)(t, w, e, j0, nb);
#define FA_RUN(c, a, m, b) FA_FN(fa_tile_epilogue_)(w, e, nb, nbv, c, a, m, b)
    FA_EPI_SWITCH(mode, FA_RUN)
#undef FA_RUN
    if (e->capped)
        for (int i = 0; i < nv; i++)
            VSTORE(bmax + i * VL, e->cap * FA_FN(fa_tanh_)(VLOAD(bmax + i * VL) * e->capinv));
    return e->alibi | e->masked | e->band;
}

/* The key block at j0 as fa_block_scores_ reads it: the raw bfloat16
 * pairs (strides in 32-bit words) for the pair path, else compute-type
 * rows. */
FA_INLINE const FA_T *FA_FN(fa_key_block_)(const fa_params *p, const fa_work_item *t,
                                           const FA_FN(fa_scr_) *w, int64_t j0, int nb,
                                           int64_t *k_sn, int64_t *k_sd)
{
    const FA_KV *kbase = (const FA_KV *)t->k;
    const FA_T *kb;
    if (FA_QK_PAIRS && w->pairs) {
        *k_sn = p->k_sn / 2;
        *k_sd = 1;
        return (const FA_T *)(const void *)(kbase + j0 * p->k_sn);
    }
    FA_BLOCK(kbase, j0, p->k_sn, p->k_sd, nb, p->d, w->kc, 1, kb, *k_sn, *k_sd);
    return kb;
}

/* Online softmax of one key block, one lane per query row: the new running
 * max (taken again from the scores when the epilogue changed them), the
 * probabilities in place of the scores, the running sum, and each lane's
 * rescale factor alpha for the accumulator.  The key loop is outside the
 * query-vector loop: each exp2 is a chain of about 14 dependent
 * instructions, and nv independent chains side by side in program order
 * keep both FMA ports busy without relying on a deep scheduler (the sums
 * are the same, in the same order). */
#define FA_SOFTMAX_NV (FA_BQ / VL)
FA_INLINE void FA_FN(fa_tile_softmax_)(const FA_FN(fa_scr_) *w, int nb, int rescan,
                                       const int *nbv)
{
    VT m_ref[FA_SOFTMAX_NV], sum[FA_SOFTMAX_NV];
    const int nv = w->nv;
    for (int i = 0; i < nv; i++) {
        const VT m_old = VLOAD(w->row_max + i * VL);
        VT m_new = m_old;
        if (rescan) {
            for (int j = 0; j < (nbv ? nbv[i] : nb); j++)
                m_new = FA_FN(fa_vmax_)(VLOAD(w->st + j * FA_BQ + i * VL), m_new);
        } else {
            m_new = FA_FN(fa_vmax_)(VLOAD(w->bmax + i * VL), m_new);
        }
        m_ref[i] = FA_FN(fa_softmax_ref_)(m_new);
        VSTORE(w->alpha + i * VL, FA_FN(fa_softmax_exp_)(m_old, m_ref[i]));
        VSTORE(w->row_max + i * VL, m_new);
        sum[i] = VSPLAT(0);
    }
    if (nbv) {
        for (int i = 0; i < nv; i++)
            for (int j = 0; j < nbv[i]; j++) {
                FA_T *sp = w->st + j * FA_BQ + i * VL;
                const VT pj = FA_FN(fa_softmax_exp_)(VLOAD(sp), m_ref[i]);
                VSTORE(sp, pj);
                sum[i] += pj;
            }
    } else if (nv == FA_SOFTMAX_NV) {
        for (int j = 0; j < nb; j++)
#pragma GCC unroll 16
            for (int i = 0; i < FA_SOFTMAX_NV; i++) {
                FA_T *sp = w->st + j * FA_BQ + i * VL;
                const VT pj = FA_FN(fa_softmax_exp_)(VLOAD(sp), m_ref[i]);
                VSTORE(sp, pj);
                sum[i] += pj;
            }
    } else {
        for (int j = 0; j < nb; j++)
            for (int i = 0; i < nv; i++) {
                FA_T *sp = w->st + j * FA_BQ + i * VL;
                const VT pj = FA_FN(fa_softmax_exp_)(VLOAD(sp), m_ref[i]);
                VSTORE(sp, pj);
                sum[i] += pj;
            }
    }
    for (int i = 0; i < nv; i++)
        VSTORE(w->row_sum + i * VL,
               VLOAD(w->row_sum + i * VL) * VLOAD(w->alpha + i * VL) + sum[i]);
}
#undef FA_SOFTMAX_NV

/* Write the tile's rows: unit column stride in VL x VL blocks through the
 * transpose, then the row finish for the rest (and for rows that saw no
 * key, which must be exact zeros). */
FA_INLINE void FA_FN(fa_tile_finish_)(const fa_params *p, const fa_work_item *t,
                                      const FA_FN(fa_scr_) *w)
{
    const int rows = t->rows;
    const int64_t dv = p->dv;
    const int wide = t->out_compute || FA_S_KIND == 0;
    FA_T *inv_v = w->alpha;
    int64_t e0 = 0;
    if (VL > 1 && p->o_sd == 1) {
        for (int r = 0; r < w->lanes; r++) inv_v[r] = FA_FN(fa_row_inv_)(w->row_sum[r]);
        for (; e0 + VL <= dv; e0 += VL)
            for (int r0 = 0; r0 < rows; r0 += VL) {
                VT x[VL];
                const VT inv = VLOAD(inv_v + r0);
#pragma GCC unroll 16
                for (int i = 0; i < VL; i++) x[i] = VLOAD(w->ot + (e0 + i) * FA_BQ + r0) * inv;
                FA_FN(fa_transpose_)(x);
#pragma GCC unroll 16
                for (int i = 0; i < VL; i++) {
                    if (r0 + i >= rows) continue;
                    if (wide) FA_FN(fa_storeu_)((FA_T *)t->o_row[r0 + i] + e0, x[i]);
                    else FA_FN(fa_stores_)((FA_S *)t->o_row[r0 + i] + e0, x[i]);
                }
            }
    }
    for (int r = 0; r < rows; r++)
        FA_FN(fa_row_finish_)(p, t, r, w->row_max[r], w->row_sum[r], w->ot + r, FA_BQ, e0);
}

#include "tile_stair.h"

/* The tile: online softmax attention of t->rows query rows over keys
 * [t->k_lo, t->k_hi) (and inside each row's band), written normalized to
 * t->o_row and t->lse_row. */
static void FA_FN(fa_tile_)(const fa_params *p, const fa_work_item *t, void *scratch)
{
    const int64_t dv = p->dv;
    const FA_T ninf = -(FA_T)__builtin_inf();
    FA_FN(fa_scr_) w = FA_FN(fa_tile_setup_)(p, t, scratch);
    FA_FN(fa_epi_) e = FA_FN(fa_epi_init_)(p);
    const int nv = w.nv, lanes = w.lanes;

    for (int64_t c = 0; c < dv; c++)
        for (int r = 0; r < lanes; r++) w.ot[c * FA_BQ + r] = 0;
    for (int r = 0; r < lanes; r++) {
        w.row_max[r] = ninf;
        w.row_sum[r] = 0;
    }

    /* Keys outside every row's band are never read; blocks inside all of
     * them need no band masking. */
    const FA_FN(fa_range_) g = FA_FN(fa_tile_range_)(t);
    const FA_KV *vbase = (const FA_KV *)t->v;

    for (int64_t j0 = g.j_start; j0 < g.j_end; j0 += FA_BK) {
        const int nb = (int)(g.j_end - j0 < FA_BK ? g.j_end - j0 : FA_BK);
        const int band = j0 < g.lo_max || j0 + nb > g.hi_min;
        if (band && !FA_FN(fa_band_meets_)(t, j0, nb)) continue;
        if (e.masked && !FA_FN(fa_load_mask_)(p, t, j0, nb, w.mt))
            continue; /* every row masked for this block */

        int64_t k_sn, k_sd;
        const FA_T *kb = FA_FN(fa_key_block_)(p, t, &w, j0, nb, &k_sn, &k_sd);
        if (band && FA_FN(fa_stair_)(t, &w, j0, nb)) {
            FA_FN(fa_stair_block_)(p, t, &w, &e, j0, nb, kb, k_sn, k_sd);
            continue;
        }
        const int rescan =
            FA_FN(fa_block_scores_)(p, t, &w, &e, j0, nb, kb, k_sn, k_sd, band, NULL);
        FA_FN(fa_tile_softmax_)(&w, nb, rescan, NULL);

        /* O = O * alpha + P.V */
        const FA_T *vb;
        int64_t v_sn, v_sd;
        FA_BLOCK(vbase, j0, p->v_sn, p->v_sd, nb, dv, w.vc, 0, vb, v_sn, v_sd);
        if (v_sd == 1)
            FA_FN(fa_pv_tile_)(nv, nb, w.st, vb, v_sn, 1, dv, w.alpha, w.ot);
        else
            FA_FN(fa_pv_tile_)(nv, nb, w.st, vb, v_sn, v_sd, dv, w.alpha, w.ot);
    }
    FA_FN(fa_tile_finish_)(p, t, &w);
}

/* The weights pass: exp(score - lse) for every visited (row, key), through
 * the same score pipeline as fa_tile_, so the weights are the probabilities
 * the attention used.  lse_row is read; rows with lse -inf are left alone. */
static void FA_FN(fa_weights_)(const fa_params *p, const fa_work_item *t, void *scratch)
{
    const int rows = t->rows;
    const FA_T ninf = -(FA_T)__builtin_inf();
    FA_FN(fa_scr_) w = FA_FN(fa_tile_setup_)(p, t, scratch);
    FA_FN(fa_epi_) e = FA_FN(fa_epi_init_)(p);
    const int nv = w.nv;
    FA_T *st = w.st, *row_lse = w.row_max;
    for (int r = 0; r < w.lanes; r++)
        row_lse[r] = r < rows ? *(const FA_T *)t->lse_row[r] : ninf;

    const FA_FN(fa_range_) g = FA_FN(fa_tile_range_)(t);
    const int64_t w_sk = p->w_sk;
    for (int64_t j0 = g.j_start; j0 < g.j_end; j0 += FA_BK) {
        const int nb = (int)(g.j_end - j0 < FA_BK ? g.j_end - j0 : FA_BK);
        const int band = j0 < g.lo_max || j0 + nb > g.hi_min;
        if (band && !FA_FN(fa_band_meets_)(t, j0, nb)) continue;
        if (e.masked && !FA_FN(fa_load_mask_)(p, t, j0, nb, w.mt)) continue;
        int64_t k_sn, k_sd;
        const FA_T *kb = FA_FN(fa_key_block_)(p, t, &w, j0, nb, &k_sn, &k_sd);
        FA_FN(fa_block_scores_)(p, t, &w, &e, j0, nb, kb, k_sn, k_sd, band, NULL);
        /* the softmax against the final lse; a row that saw no key stays 0 */
        for (int i = 0; i < nv; i++) {
            const VT l = VLOAD(row_lse + i * VL);
            const VI none = l == VSPLAT(ninf);
            for (int j = 0; j < nb; j++) {
                FA_T *sp = st + j * FA_BQ + i * VL;
                VSTORE(sp, FA_FN(fa_vsel_)(none, VSPLAT(0), FA_FN(fa_softmax_exp_)(VLOAD(sp), l)));
            }
        }
        for (int r = 0; r < rows; r++) {
            FA_S *wr = (FA_S *)t->w_row[r] + j0 * w_sk;
            for (int j = 0; j < nb; j++) wr[j * w_sk] = FA_FN(fa_t2s_)(st[j * FA_BQ + r]);
        }
    }
    /* A NaN score made its row's lse NaN: the whole row is NaN (all n_k
     * keys, not only the blocks visited), as a softmax over it would be. */
    const FA_S nan = FA_FN(fa_t2s_)((FA_T)__builtin_nan(""));
    for (int r = 0; r < rows; r++)
        if (row_lse[r] != row_lse[r]) {
            FA_S *wr = (FA_S *)t->w_row[r];
            for (int64_t j = 0; j < p->n_k; j++) wr[j * w_sk] = nan;
        }
}
#undef FA_BLOCK
