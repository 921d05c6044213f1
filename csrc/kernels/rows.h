/*
 * rows.h: the few-row kernel (decode: Nq of 1 to FA_ROWS_MAX rows per kv
 * head).  With one query row, vectors along the queries would leave all
 * lanes but one idle, so here vectors run along d for Q.K (a dot product
 * per key, reduced across lanes), along the keys for the score epilogue
 * and the softmax, and along dv for P.V.  It needs unit d-strides for K
 * and V (the driver checks).  Rows share each key block while it is hot in
 * L1.  16-bit keys and values are widened in registers as they are loaded
 * (int8 ones too, their scales folded into q and p: see quant.h);
 * with FA_BF16DP (the AVX512-BF16 variant) bfloat16 dot products use
 * vdpbf16ps on the raw values instead.
 *
 * Its vector primitives, the dot products along d and the P.V sums along
 * dv, are in rows_dot.h (included before it by kernel_body.h); here are the
 * block steps (scores, epilogue, softmax, the grouped rows) and the driver.
 */

/* Prefetch into L2 row j of the next key block (kn, vn: its first key and
 * value row; kn NULL when there is none or this caller does not prefetch).
 * A decode call streams K and V from memory once; on one core the hardware
 * prefetchers alone keep too few lines in flight while a block is
 * computed, and memory time and compute time add up.  One row of each per
 * key, spread over the dot products, overlaps them. */
FA_INLINE void FA_FN(fa_prefetch_next_)(const fa_params *p, const FA_KV *kn, const FA_KV *vn,
                                        int64_t j, int64_t nn)
{
    if (!kn || j >= nn) return;
    const char *kr = (const char *)(kn + j * p->k_sn);
    const char *vr = (const char *)(vn + j * p->v_sn);
    for (int64_t c = 0; c < p->d * (int64_t)sizeof(FA_KV); c += 64) __builtin_prefetch(kr + c, 0, 2);
    for (int64_t c = 0; c < p->dv * (int64_t)sizeof(FA_KV); c += 64) __builtin_prefetch(vr + c, 0, 2);
}

/* Row j of K (or V: base, page stride sb, row stride sn) of a work item:
 * linear from base, or for a paged item (t->pages) row j % page_size of
 * page t->pages[j / page_size].  Taken once per key block; a block never
 * straddles two pages (page sizes are multiples of FA_BK, blocks start at
 * multiples of FA_BK). */
FA_INLINE const FA_KV *FA_FN(fa_row_at_)(const fa_params *p, const fa_work_item *t,
                                         const FA_KV *base, int64_t sb, int64_t sn, int64_t j)
{
    if (!t->pages) return base + j * sn;
    return base + (int64_t)t->pages[j / p->page_size] * sb + (j % p->page_size) * sn;
}

/* The score epilogue over one row's nb scores s (vectors along the keys),
 * the tail through fa_load_tail_ / fa_store_tail_. */
FA_INLINE void FA_FN(fa_rows_epilogue_)(const FA_FN(fa_epi_) *e, int nb,
                                        const FA_FN(fa_rowv_) *row, FA_T *restrict s,
                                        const FA_T *restrict mt, const int capped,
                                        const int alibi, const int masked, const int band)
{
    const VT cap = e->cap, capinv = e->capinv;
    VT jidx;
    for (int l = 0; l < VL; l++) jidx[l] = (FA_T)l;
    int j = 0;
    for (; j + VL <= nb; j += VL, jidx += VSPLAT(VL))
        FA_FN(fa_storeu_)(s + j, FA_FN(fa_score_epilogue_)(cap, capinv, capped, alibi, masked,
                                                           band, FA_FN(fa_loadu_)(s + j), jidx,
                                                           row, mt + j));
    if (j < nb) {
        const int n = nb - j;
        FA_T mtail[VL];
        for (int l = 0; l < VL; l++) mtail[l] = l < n && masked ? mt[j + l] : 0;
        const VT x = FA_FN(fa_score_epilogue_)(cap, capinv, capped, alibi, masked, band,
                                               FA_FN(fa_load_tail_)(s + j, n, 0), jidx, row,
                                               mtail);
        FA_FN(fa_store_tail_)(s + j, n, x);
    }
}

/* The dot products' scale (where they were taken unscaled) and the score
 * epilogue of one row's nb scores s. */
FA_INLINE void FA_FN(fa_rows_epi_)(const fa_params *p, const fa_work_item *t, int r,
                                   FA_FN(fa_epi_) *e, int64_t j0, int nb, int64_t lo,
                                   int64_t hi, FA_T *restrict s, FA_T *restrict mt)
{
#if FA_DOT_UNSCALED
    const FA_T c = (FA_T)p->scale;
    for (int j = 0; j < nb; j++) s[j] *= c;
#endif
    e->band = lo > 0 || hi < nb;
    const int mode = FA_FN(fa_epi_mode_)(e);
    if (!mode) return;
    if (e->masked) FA_FN(fa_mask_terms_)(p->mask_kind, t->mask_row[r], p->m_sk, j0, nb, mt, 1);
    FA_FN(fa_rowv_) row;
    row.slope = VSPLAT((FA_T)t->slope[r]);
    row.pos = VSPLAT((FA_T)(t->pos[r] - j0));
    row.lo = VSPLAT((FA_T)lo);
    row.hi = VSPLAT((FA_T)hi);
#define FA_RUN(c, a, m, b) FA_FN(fa_rows_epilogue_)(e, nb, &row, s, mt, c, a, m, b)
    FA_EPI_SWITCH(mode, FA_RUN)
#undef FA_RUN
}

/* Scores of one row for keys [j0, j0 + nb): the dot products, then the
 * score epilogue along the keys (the row's band inside the block is
 * [lo, hi)).  mt receives the row's mask terms.  The next block (kn, vn,
 * its nn rows) is prefetched; kn is NULL when not by this row. */
FA_INLINE void FA_FN(fa_rows_scores_)(const fa_params *p, const fa_work_item *t, int r,
                                      FA_FN(fa_epi_) *e, const FA_T *q, const FA_KV *kb,
                                      int64_t j0, int nb, int64_t lo, int64_t hi,
                                      FA_T *restrict s, FA_T *restrict mt, const FA_KV *kn,
                                      const FA_KV *vn, int64_t nn)
{
    const int64_t k_sn = p->k_sn, d = p->d;
    int j = 0;
    for (; j + 4 <= nb; j += 4) {
        for (int u = 0; u < 4; u++) FA_FN(fa_prefetch_next_)(p, kn, vn, j + u, nn);
        FA_FN(fa_dot4_)(q, kb + j * k_sn, k_sn, d, s + j);
    }
    for (; j < nb; j++) {
        FA_FN(fa_prefetch_next_)(p, kn, vn, j, nn);
        s[j] = FA_FN(fa_dot1_)(q, kb + j * k_sn, d);
    }
    FA_FN(fa_rows_epi_)(p, t, r, e, j0, nb, lo, hi, s, mt);
}

#if FA_KV_I8
/* out[j] = p[j] * v_scale[j] for the block's keys (out may be p): the
 * int8 values' per-token scales, folded into the probabilities that
 * multiply them; the row sum keeps the unscaled p. */
FA_INLINE void FA_FN(fa_v_scaled_)(const fa_params *p, const fa_work_item *t, int64_t j0, int nb,
                                   const FA_T *pr, FA_T *out)
{
    const float *vs = t->v_scale + j0 * p->vs_sn;
    for (int j = 0; j < nb; j++) out[j] = pr[j] * vs[j * p->vs_sn];
}
#endif

/* Online softmax of one row over a block of nb scores (along the keys):
 * the scores become probabilities, the running max and sum move on, and
 * the accumulator's rescale factor is returned. */
FA_INLINE FA_T FA_FN(fa_rows_softmax_)(FA_T *restrict s, int nb, FA_T *row_max, FA_T *row_sum)
{
    const FA_T ninf = -(FA_T)__builtin_inf();
    VT mv = VSPLAT(ninf);
    int j = 0;
    for (; j + VL <= nb; j += VL) mv = FA_FN(fa_vmax_)(FA_FN(fa_loadu_)(s + j), mv);
    FA_T m_new = FA_FN(fa_hmax_)(mv);
    for (; j < nb; j++) m_new = s[j] > m_new ? s[j] : m_new;
    if (*row_max > m_new) m_new = *row_max;
    const VT mr = FA_FN(fa_softmax_ref_)(VSPLAT(m_new));
    VT sum = VSPLAT(0);
    for (j = 0; j + VL <= nb; j += VL) {
        const VT pj = FA_FN(fa_softmax_exp_)(FA_FN(fa_loadu_)(s + j), mr);
        FA_FN(fa_storeu_)(s + j, pj);
        sum += pj;
    }
    FA_T tail = 0;
    if (j < nb) {
        const int n = nb - j;
        FA_FN(fa_store_tail_)(s + j, n, FA_FN(fa_softmax_exp_)(FA_FN(fa_load_tail_)(s + j, n, ninf), mr));
        for (int u = 0; u < n; u++) tail += s[j + u];
    }
    const FA_T a = FA_FN(fa_softmax_exp_)(VSPLAT(*row_max), mr)[0];
    *row_sum = *row_sum * a + (FA_FN(fa_hsum_)(sum) + tail);
    *row_max = m_new;
    return a;
}

/* ---- grouped rows (GQA decode): the FA_ROWS_MAX rows of a kv head read
 * each key and value once per block, for all rows, instead of once per
 * row.  The per-row pass above streams the block from L2 once per row, and
 * that traffic, not the arithmetic, bounds it.  For float and 16-bit K and
 * V the arithmetic is the per-row pass's, in the same order, so the
 * results are bit for bit the same.  int8 keys and values are widened the
 * same way; the FA_ROWS_MAX dot products of a key are reduced together by
 * fa_hsum4_, and the values' scales are folded into each row's
 * probabilities after its softmax, as in the per-row pass.  Their P.V
 * widens too, even where VNNI exists: one widened value vector serves all
 * rows, which costs less than each row's digit split and vpdpbusd.
 * Row r's query is at qs + r * dpad and its scores at sc + r * FA_BK; rows
 * past t->rows hold a zero query and are never read back. */
#if FA_DOT_UNSCALED
FA_INLINE void FA_FN(fa_dot_group_)(const FA_T *restrict qs, int64_t dpad,
                                    const FA_S *restrict k, int64_t d, FA_T *restrict out)
{
    __m512 a[FA_ROWS_MAX];
    for (int u = 0; u < FA_ROWS_MAX; u++) a[u] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 32 <= d; c += 32) {
        const __m512bh kv = (__m512bh)_mm512_loadu_si512((const void *)(k + c));
#pragma GCC unroll 4
        for (int u = 0; u < FA_ROWS_MAX; u++)
            a[u] = _mm512_dpbf16_ps(a[u], (__m512bh)_mm512_loadu_si512(
                                              (const void *)((const uint16_t *)(qs + u * dpad) + c)),
                                    kv);
    }
    for (int u = 0; u < FA_ROWS_MAX; u++) {
        const uint16_t *q = (const uint16_t *)(qs + u * dpad);
        FA_T s = _mm512_reduce_add_ps(a[u]);
        for (int64_t e = c; e < d; e++) s += fa_bf16_to_f32(q[e]) * fa_bf16_to_f32(k[e]);
        out[u * FA_BK] = s;
    }
}
#else
FA_INLINE void FA_FN(fa_dot_group_)(const FA_T *restrict qs, int64_t dpad,
                                    const FA_KV *restrict k, int64_t d, FA_T *restrict out)
{
    VT a[FA_ROWS_MAX];
    for (int u = 0; u < FA_ROWS_MAX; u++) a[u] = VSPLAT(0);
    int64_t c = 0;
    for (; c + VL <= d; c += VL) {
        const VT kv = FA_KV_LOAD(k + c);
#pragma GCC unroll 4
        for (int u = 0; u < FA_ROWS_MAX; u++) a[u] += VLOAD(qs + u * dpad + c) * kv;
    }
    FA_T sum[FA_ROWS_MAX];
#if FA_KV_I8
    if (FA_ROWS_MAX == 4 && VL >= 4)
        FA_FN(fa_hsum4_)(a[0], a[1], a[2], a[3], sum);
    else
#endif
        for (int u = 0; u < FA_ROWS_MAX; u++) sum[u] = FA_FN(fa_hsum_)(a[u]);
    for (int u = 0; u < FA_ROWS_MAX; u++) {
        FA_T s = sum[u];
        for (int64_t e = c; e < d; e++) s += qs[u * dpad + e] * FA_KV_T(k[e]);
        out[u * FA_BK] = s;
    }
}
#endif

/* acc[r] = acc[r] * alpha[r] + sum_j p[r][j] * v[j] for every row r (dv
 * contiguous): each value vector is loaded once for all rows. */
FA_INLINE void FA_FN(fa_pv_group_)(const FA_T *restrict sc, const FA_KV *restrict v,
                                   int64_t v_sn, int nb, int64_t dv, const FA_T *alpha,
                                   FA_T *restrict acc, int64_t dvpad)
{
    /* CH x R accumulators and CH values in registers (32 with AVX-512, 16 below) */
    enum { CH = FA_VBYTES >= 64 ? 4 : 2, R = FA_ROWS_MAX };
    int64_t e = 0;
    for (; e + CH * VL <= dv; e += CH * VL) {
        VT a[R][CH];
#pragma GCC unroll 16
        for (int i = 0; i < R * CH; i++) a[i / CH][i % CH] = VSPLAT(0);
        for (int j = 0; j < nb; j++) {
            VT vv[CH];
            const FA_KV *vr = v + j * v_sn + e;
#pragma GCC unroll 4
            for (int u = 0; u < CH; u++) vv[u] = FA_KV_LOAD(vr + u * VL);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                const FA_T pj = sc[r * FA_BK + j];
#pragma GCC unroll 4
                for (int u = 0; u < CH; u++) a[r][u] += vv[u] * pj;
            }
        }
        for (int r = 0; r < R; r++)
#pragma GCC unroll 4
            for (int u = 0; u < CH; u++) {
                FA_T *ar = acc + r * dvpad + e + u * VL;
                VSTORE(ar, VLOAD(ar) * alpha[r] + a[r][u]);
            }
    }
    for (int r = 0; r < R; r++) /* the rest of dv, row by row */
        FA_FN(fa_pv_rows_)(sc + r * FA_BK, v + e, v_sn, nb, dv - e, alpha[r],
                           acc + r * dvpad + e);
}

/* One key block of the grouped pass, when every row of the tile sees some
 * of it (else the caller takes the per-row pass, which skips a row). */
FA_INLINE void FA_FN(fa_rows_group_block_)(const fa_params *p, const fa_work_item *t,
                                           FA_FN(fa_epi_) *e, const FA_T *qs, int64_t dpad,
                                           const FA_KV *kb, const FA_KV *vb, int64_t j0, int nb,
                                           FA_T *sc, FA_T *mt, FA_T *row_max, FA_T *row_sum,
                                           FA_T *acc, int64_t dvpad, const FA_KV *kn,
                                           const FA_KV *vn, int64_t nn)
{
    FA_T alpha[FA_ROWS_MAX];
    for (int j = 0; j < nb; j++) {
        FA_FN(fa_prefetch_next_)(p, kn, vn, j, nn);
        FA_FN(fa_dot_group_)(qs, dpad, kb + j * p->k_sn, p->d, sc + j);
    }
    for (int r = 0; r < FA_ROWS_MAX; r++) {
        alpha[r] = 1;
        if (r >= t->rows) continue;
        const int64_t lo = t->jlo[r] - j0 > 0 ? t->jlo[r] - j0 : 0;
        const int64_t hi = t->jhi[r] - j0 < nb ? t->jhi[r] - j0 : nb;
        FA_FN(fa_rows_epi_)(p, t, r, e, j0, nb, lo, hi, sc + r * FA_BK, mt);
        alpha[r] = FA_FN(fa_rows_softmax_)(sc + r * FA_BK, nb, row_max + r, row_sum + r);
#if FA_KV_I8
        FA_FN(fa_v_scaled_)(p, t, j0, nb, sc + r * FA_BK, sc + r * FA_BK);
#endif
    }
    FA_FN(fa_pv_group_)(sc, vb, p->v_sn, nb, p->dv, alpha, acc, dvpad);
}

/* Whether every row of the tile sees a key of [j0, j0 + nb). */
FA_INLINE int FA_FN(fa_rows_all_see_)(const fa_work_item *t, int64_t j0, int nb)
{
    for (int r = 0; r < t->rows; r++)
        if (t->jhi[r] <= j0 || t->jlo[r] >= j0 + nb || t->jhi[r] <= t->jlo[r]) return 0;
    return 1;
}

static void FA_FN(fa_rows_)(const fa_params *p, const fa_work_item *t, void *scratch)
{
    const int64_t d = p->d, dv = p->dv;
    const int rows = t->rows;
    const FA_T ninf = -(FA_T)__builtin_inf();
    const fa_rows_scratch sl = fa_rows_scratch_layout(d, dv, VL);
    const int64_t dpad = sl.dpad, dvpad = sl.dvpad;
    FA_T *base = (FA_T *)scratch;
    FA_T *qs = base + sl.qs, *acc = base + sl.acc, *sc = base + sl.sc, *mt = base + sl.mt;
    FA_T *row_max = base + sl.row_max, *row_sum = base + sl.row_sum;

    for (int r = 0; r < rows; r++) {
        const FA_S *q = (const FA_S *)t->q_row[r];
#if FA_DOT_UNSCALED
        /* raw bfloat16, zero-padded (2 * dpad >= d rounded up to 32) */
        uint16_t *qr = (uint16_t *)(qs + r * dpad);
        for (int64_t k = 0; k < d; k++) qr[k] = q[k * p->q_sd];
        for (int64_t k = d; k < 2 * dpad; k++) qr[k] = 0;
#elif FA_KV_I8
        /* the keys' channel scales folded into the scaled query */
        const FA_T c = (FA_T)p->scale;
        for (int64_t k = 0; k < d; k++)
            qs[r * dpad + k] = q[k * p->q_sd] * c * t->k_scale[k * p->ks_sd];
        for (int64_t k = d; k < dpad; k++) qs[r * dpad + k] = 0;
#else
        const FA_T c = (FA_T)p->scale;
        for (int64_t k = 0; k < d; k++) qs[r * dpad + k] = FA_FN(fa_s2t_)(q[k * p->q_sd]) * c;
        for (int64_t k = d; k < dpad; k++) qs[r * dpad + k] = 0;
#endif
        for (int64_t e = 0; e < dvpad; e++) acc[r * dvpad + e] = 0;
        row_max[r] = ninf;
        row_sum[r] = 0;
    }
    const int grouped = rows >= 2; /* padded to FA_ROWS_MAX with zero queries */
    if (grouped) {
        for (int64_t k = (int64_t)rows * dpad; k < (int64_t)FA_ROWS_MAX * dpad; k++) qs[k] = 0;
        for (int64_t k = (int64_t)rows * dvpad; k < (int64_t)FA_ROWS_MAX * dvpad; k++) acc[k] = 0;
    }

    const FA_FN(fa_range_) g = FA_FN(fa_tile_range_)(t);
    const FA_KV *kbase = (const FA_KV *)t->k;
    const FA_KV *vbase = (const FA_KV *)t->v;
    const int64_t k_sn = p->k_sn, v_sn = p->v_sn;
    FA_FN(fa_epi_) e = FA_FN(fa_epi_init_)(p);

    /* a paged item's blocks start at multiples of FA_BK, so that none
     * straddles two pages (keys before the bands are masked as usual) */
    const int64_t j_first = t->pages && g.j_start < g.j_end ? g.j_start - g.j_start % FA_BK
                                                            : g.j_start;
    for (int64_t j0 = j_first; j0 < g.j_end; j0 += FA_BK) {
        const int nb = (int)(g.j_end - j0 < FA_BK ? g.j_end - j0 : FA_BK);
        const FA_KV *kb = FA_FN(fa_row_at_)(p, t, kbase, p->k_sb, k_sn, j0);
        const FA_KV *vb = FA_FN(fa_row_at_)(p, t, vbase, p->v_sb, v_sn, j0);
        /* the next block, prefetched while this one is computed */
        const int64_t jn = j0 + FA_BK, nn = g.j_end - jn < FA_BK ? g.j_end - jn : FA_BK;
        const FA_KV *kn = nn > 0 ? FA_FN(fa_row_at_)(p, t, kbase, p->k_sb, k_sn, jn) : NULL;
        const FA_KV *vn = nn > 0 ? FA_FN(fa_row_at_)(p, t, vbase, p->v_sb, v_sn, jn) : NULL;
        if (grouped && FA_FN(fa_rows_all_see_)(t, j0, nb)) {
            FA_FN(fa_rows_group_block_)(p, t, &e, qs, dpad, kb, vb, j0, nb, sc, mt, row_max,
                                        row_sum, acc, dvpad, kn, vn, nn);
            continue;
        }
        for (int r = 0; r < rows; r++) {
            /* this row's band inside the block */
            int64_t lo = t->jlo[r] - j0, hi = t->jhi[r] - j0;
            if (lo < 0) lo = 0;
            if (hi > nb) hi = nb;
            if (hi <= lo) continue; /* nothing visible here: no change */
            FA_T *s = sc + r * FA_BK;
            FA_FN(fa_rows_scores_)(p, t, r, &e, qs + r * dpad, kb, j0, nb, lo, hi, s, mt,
                                   r == 0 ? kn : NULL, vn, nn);
            const FA_T a = FA_FN(fa_rows_softmax_)(s, nb, row_max + r, row_sum + r);
#if FA_KV_I8
            /* p_j * v_scale_j, in the mask terms' buffer (free again) */
            FA_FN(fa_v_scaled_)(p, t, j0, nb, s, mt);
#if defined(FA_I8DP)
            FA_FN(fa_pv_vnni_)(mt, vb, v_sn, nb, dv, a, acc + r * dvpad);
#else
            FA_FN(fa_pv_rows_)(mt, vb, v_sn, nb, dv, a, acc + r * dvpad);
#endif
#else
            FA_FN(fa_pv_rows_)(s, vb, v_sn, nb, dv, a, acc + r * dvpad);
#endif
        }
    }
    for (int r = 0; r < rows; r++)
        FA_FN(fa_row_finish_)(p, t, r, row_max[r], row_sum[r], acc + r * dvpad, 1, 0);
}
#undef FA_KV_LOAD
#undef FA_KV_T
