/*
 * score.h: the score pipeline, written once for every kernel layout.
 *
 * A score s = q.k (the scale folded into q) goes through the epilogue
 *     soft cap  ->  ALiBi  ->  mask  ->  band
 * then the online softmax (running max m, running sum l, accumulator acc,
 * exponentials taken relative to a reference that is never -inf), and
 * each row ends with the row finish (normalize once, or exact zeros for a
 * row that saw no key; then lse).  The functions below work on one vector
 * of scores whose lanes may be different rows (the tile kernel: vectors
 * along the queries) or different keys of one row (the few-row kernel:
 * vectors along the keys): the caller hands each lane its row data and key
 * index, so a new layout (e.g. matrix-unit tiles) reuses them as they are.
 */

/* The mask terms of keys [j0, j0 + nb) of one mask row, written to
 * dst[j * dst_stride]: 0 (visible) or -inf (hidden) for a bool mask, the
 * user's value for an additive one (where -inf hides the key like a
 * False).  Returns nonzero if any key is visible. */
FA_INLINE int FA_FN(fa_mask_terms_)(fa_mask_kind kind, const void *row, int64_t sk,
                                    int64_t j0, int nb, FA_T *dst, int64_t dst_stride)
{
    const FA_T ninf = -(FA_T)__builtin_inf();
    int any = 0;
    if (kind == FA_MASK_BOOL) {
        const uint8_t *m = (const uint8_t *)row + j0 * sk;
        for (int j = 0; j < nb; j++) {
            const int vis = m[j * sk] != 0;
            any |= vis;
            dst[j * dst_stride] = vis ? (FA_T)0 : ninf;
        }
    } else if (kind == FA_MASK_ADD_F32) {
        const float *m = (const float *)row + j0 * sk;
        for (int j = 0; j < nb; j++) {
            const FA_T a = (FA_T)m[j * sk];
            any |= a != ninf;
            dst[j * dst_stride] = a;
        }
    } else if (kind == FA_MASK_ADD_F64) {
        const double *m = (const double *)row + j0 * sk;
        for (int j = 0; j < nb; j++) {
            const FA_T a = (FA_T)m[j * sk];
            any |= a != ninf;
            dst[j * dst_stride] = a;
        }
    } else {
        /* 16-bit masks (transformers builds them in the model's dtype):
         * widening to float32 is exact, so this equals a float32 copy */
        const int bf16 = kind == FA_MASK_ADD_BF16;
        const uint16_t *m = (const uint16_t *)row + j0 * sk;
        for (int j = 0; j < nb; j++) {
            const uint16_t h = m[j * sk];
            const FA_T a = (FA_T)(bf16 ? fa_bf16_to_f32(h) : fa_half_to_f32(h));
            any |= a != ninf;
            dst[j * dst_stride] = a;
        }
    }
    return any;
}

/* Which stages of the epilogue a block needs (constant over its loops). */
typedef struct {
    int capped, alibi, masked, band;
    VT cap, capinv; /* softcap and 1 / softcap */
} FA_FN(fa_epi_);

FA_INLINE FA_FN(fa_epi_) FA_FN(fa_epi_init_)(const fa_params *p)
{
    FA_FN(fa_epi_) e;
    e.capped = p->softcap > 0;
    e.alibi = p->alibi != NULL;
    e.masked = p->mask_kind != FA_MASK_NONE;
    e.band = 0;
    e.cap = VSPLAT(e.capped ? p->softcap : 1.0);
    e.capinv = VSPLAT(e.capped ? 1.0 / p->softcap : 1.0);
    return e;
}

/* The stages as a 4-bit mode (0: nothing to do). */
FA_INLINE int FA_FN(fa_epi_mode_)(const FA_FN(fa_epi_) *e)
{
    return e->capped | e->alibi << 1 | e->masked << 2 | e->band << 3;
}

/* Run RUN(capped, alibi, masked, band) with the stage flags of `mode` as
 * compile-time constants: each layout's epilogue loop is compiled once per
 * combination, so no stage costs a test per vector. */
#ifndef FA_EPI_SWITCH
#define FA_EPI_SWITCH(mode, RUN)                                              \
    switch (mode) {                                                           \
    case 1: RUN(1, 0, 0, 0); break;                                           \
    case 2: RUN(0, 1, 0, 0); break;                                           \
    case 3: RUN(1, 1, 0, 0); break;                                           \
    case 4: RUN(0, 0, 1, 0); break;                                           \
    case 5: RUN(1, 0, 1, 0); break;                                           \
    case 6: RUN(0, 1, 1, 0); break;                                           \
    case 7: RUN(1, 1, 1, 0); break;                                           \
    case 8: RUN(0, 0, 0, 1); break;                                           \
    case 9: RUN(1, 0, 0, 1); break;                                           \
    case 10: RUN(0, 1, 0, 1); break;                                          \
    case 11: RUN(1, 1, 0, 1); break;                                          \
    case 12: RUN(0, 0, 1, 1); break;                                          \
    case 13: RUN(1, 0, 1, 1); break;                                          \
    case 14: RUN(0, 1, 1, 1); break;                                          \
    case 15: RUN(1, 1, 1, 1); break;                                          \
    default: break;                                                           \
    }
#endif

/* Per lane: the row's ALiBi slope, its diagonal (i + nk_b - nq_b) and its
 * band [lo, hi), all relative to the first key of the block, so every
 * value is a small integer, exact in the compute type. */
typedef struct {
    VT slope, pos, lo, hi;
} FA_FN(fa_rowv_);

/*
 * The score epilogue of one vector of scores s, whose lanes are keys jidx
 * (relative to the block) of rows described by `row`; cap and the flags
 * come from the block's fa_epi_ (the flags as constants, see
 * FA_EPI_SWITCH; the caller keeps cap in locals, where stores to the scores
 * cannot alias it):
 *   soft cap  s = cap * tanh(s / cap)
 *   ALiBi     s -= slope * |pos - j|
 *   mask      s += term, and a -inf term hides the key whatever s is (a NaN
 *             or inf score there must not reach the row)
 *   band      keys outside [lo, hi) become -inf.
 */
FA_INLINE VT FA_FN(fa_score_epilogue_)(const VT cap, const VT capinv, const int capped,
                                       const int alibi, const int masked, const int band,
                                       VT s, VT jidx, const FA_FN(fa_rowv_) *row,
                                       const FA_T *mterm)
{
    const VT ninf = VSPLAT(-(FA_T)__builtin_inf());
    if (capped) s = cap * FA_FN(fa_tanh_)(s * capinv);
    if (alibi) s = s - row->slope * FA_FN(fa_vabs_)(row->pos - jidx);
    if (masked) {
        const VT m = FA_FN(fa_loadu_)(mterm);
        s = FA_FN(fa_vsel_)(m == ninf, m, s + m);
    }
    if (band) s = FA_FN(fa_vsel_)((jidx < row->lo) | (jidx >= row->hi), ninf, s);
    return s;
}

/* The online softmax's reference for a new running max: the max itself, or
 * 0 while the row has no finite score (so exp2(-inf - -inf) never makes a
 * NaN). */
FA_INLINE VT FA_FN(fa_softmax_ref_)(VT m_new)
{
    return FA_FN(fa_vsel_)(m_new == VSPLAT(-(FA_T)__builtin_inf()), VSPLAT(0), m_new);
}

/* exp(s - ref) as exp2((s - ref) * log2(e)): only the difference is
 * scaled, which cannot overflow (scaling the scores themselves would, above
 * FLT_MAX / log2(e)). */
FA_INLINE VT FA_FN(fa_softmax_exp_)(VT s, VT ref)
{
    return FA_FN(fa_exp2_)((s - ref) * VSPLAT(1.4426950408889634074));
}

/* 1 / row_sum, or 0 for a row that saw no key. */
FA_INLINE FA_T FA_FN(fa_row_inv_)(FA_T l) { return l == 0 ? (FA_T)0 : (FA_T)1 / l; }

/*
 * The row finish of row r: out = acc / row_sum through the output strides
 * (rounded to the storage type, unless the tile writes split-KV partials
 * in the compute type), exact zeros over the whole row when it saw no key,
 * and lse = row_max + log(row_sum) (-inf for such a row).  acc[e *
 * acc_stride] is the row's accumulator; columns before `from` were already
 * written by the caller's vector path (ignored for an empty row).
 */
FA_INLINE void FA_FN(fa_row_finish_)(const fa_params *p, const fa_work_item *t, int r,
                                     FA_T row_max, FA_T row_sum, const FA_T *acc,
                                     int64_t acc_stride, int64_t from)
{
    const FA_T ninf = -(FA_T)__builtin_inf();
    const FA_T l = row_sum, inv = FA_FN(fa_row_inv_)(l);
    const int64_t dv = p->dv, o_sd = p->o_sd;
    if (l == 0) from = 0;
    if (t->out_compute || FA_S_KIND == 0) {
        FA_T *o = (FA_T *)t->o_row[r];
        for (int64_t e = from; e < dv; e++) o[e * o_sd] = l == 0 ? 0 : acc[e * acc_stride] * inv;
    } else {
        FA_S *o = (FA_S *)t->o_row[r];
        for (int64_t e = from; e < dv; e++)
            o[e * o_sd] = FA_FN(fa_t2s_)(l == 0 ? 0 : acc[e * acc_stride] * inv);
    }
    FA_T *lse = (FA_T *)t->lse_row[r];
    if (lse) *lse = l == 0 ? ninf : (FA_T)((double)row_max + __builtin_log((double)l));
}

/* The keys a tile visits, and the blocks that need no band masking. */
typedef struct {
    int64_t j_start, j_end;   /* keys worth visiting */
    int64_t lo_max, hi_min;   /* a block inside [lo_max, hi_min) needs no band mask */
} FA_FN(fa_range_);

/* The keys a tile visits: [k_lo, k_hi) cut to the union of its rows' bands. */
FA_INLINE FA_FN(fa_range_) FA_FN(fa_tile_range_)(const fa_work_item *t)
{
    FA_FN(fa_range_) g;
    int64_t lo_min = INT64_MAX, hi_max = INT64_MIN;
    g.lo_max = INT64_MIN;
    g.hi_min = INT64_MAX;
    for (int r = 0; r < t->rows; r++) {
        /* every row bounds the blocks that need no masking (an empty band
         * makes every block need it) ... */
        if (t->jlo[r] > g.lo_max) g.lo_max = t->jlo[r];
        if (t->jhi[r] < g.hi_min) g.hi_min = t->jhi[r];
        /* ... but only rows that see something widen the range visited */
        if (t->jlo[r] >= t->jhi[r]) continue;
        if (t->jlo[r] < lo_min) lo_min = t->jlo[r];
        if (t->jhi[r] > hi_max) hi_max = t->jhi[r];
    }
    g.j_start = lo_min > t->k_lo ? lo_min : t->k_lo;
    g.j_end = hi_max < t->k_hi ? hi_max : t->k_hi;
    if (g.j_end < g.j_start) g.j_end = g.j_start;
    return g;
}

/* Does any row's band meet keys [j0, j0 + nb)? */
FA_INLINE int FA_FN(fa_band_meets_)(const fa_work_item *t, int64_t j0, int nb)
{
    for (int r = 0; r < t->rows; r++)
        if (t->jlo[r] < j0 + nb && t->jhi[r] > j0 && t->jlo[r] < t->jhi[r]) return 1;
    return 0;
}
