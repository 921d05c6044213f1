/*
 * tile.h: the tile kernel (vectors along the QUERIES) and the weights pass
 * that shares its score path.
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
 * Register blocking (from kernel_<isa>.c): FA_QK_IB x FA_QK_JB query
 * vectors x keys for Q.K^T, FA_PV_IB x FA_PV_EB query vectors x value
 * columns for P.V.
 */

#if defined(FA_BF16DP) && FA_S_KIND == 2
/* bfloat16 pairs (the AVX512-BF16 variant): Q^T is packed as raw,
 * unscaled bfloat16 pairs along d, one 32-bit word per lane, and each key
 * is read as the same pairs, broadcast: vdpbf16ps adds both products of a
 * pair (exact, in float32) to the lane's float32 sum, so one instruction
 * does the work of two FMAs and K is never widened.  The scale is applied
 * to the finished sums. */
#define FA_QK_PAIRS 1
FA_INLINE VT FA_FN(fa_qk_pair_)(VT acc, VT q, const FA_T *kword)
{
    int32_t u;
    __builtin_memcpy(&u, kword, sizeof u);
    return (VT)_mm512_dpbf16_ps((__m512)acc, (__m512bh)q, (__m512bh)_mm512_set1_epi32(u));
}
#else
#define FA_QK_PAIRS 0
#endif

/*
 * Q.K^T micro-kernel: scores of ib query vectors against jb keys, summed
 * over all d, accumulated in ib*jb vector registers.  Per d: ib vector loads
 * of the packed Q^T and jb scalar broadcasts of K (an FMA with a memory
 * broadcast operand on AVX-512).  ib, jb, k_sd and pairs are compile-time
 * constants after inlining, so the loops unroll into registers.  With
 * pairs (see FA_QK_PAIRS), qt, k, k_sn and d count 32-bit bfloat16 pairs
 * and the sums are multiplied by sc.
 */
FA_INLINE void FA_FN(fa_qk_micro_)(const int ib, const int jb, const int pairs,
                                   const FA_T *restrict qt,
                                   const FA_T *restrict k, int64_t k_sn,
                                   const int64_t k_sd, int64_t d, FA_T sc,
                                   FA_T *restrict st, FA_T *restrict bmax)
{
    VT acc[FA_QK_IB][FA_QK_JB];
#pragma GCC unroll 16
    for (int i = 0; i < ib; i++)
#pragma GCC unroll 16
        for (int j = 0; j < jb; j++) acc[i][j] = VSPLAT(0);
    const FA_T *krow[FA_QK_JB];
#pragma GCC unroll 16
    for (int j = 0; j < jb; j++) krow[j] = k + j * k_sn;
    for (int64_t c = 0; c < d; c++) {
        VT qv[FA_QK_IB];
#pragma GCC unroll 16
        for (int i = 0; i < ib; i++) qv[i] = VLOAD(qt + c * FA_BQ + i * VL);
#pragma GCC unroll 16
        for (int j = 0; j < jb; j++) {
#if FA_QK_PAIRS
            if (pairs) {
#pragma GCC unroll 16
                for (int i = 0; i < ib; i++)
                    acc[i][j] = FA_FN(fa_qk_pair_)(acc[i][j], qv[i], krow[j] + c);
                continue;
            }
#endif
            const FA_T kv = krow[j][c * k_sd];
#pragma GCC unroll 16
            for (int i = 0; i < ib; i++) acc[i][j] += qv[i] * kv;
        }
    }
#pragma GCC unroll 16
    for (int j = 0; j < jb; j++)
#pragma GCC unroll 16
        for (int i = 0; i < ib; i++) {
            if (pairs) acc[i][j] *= VSPLAT(sc);
            VSTORE(st + j * FA_BQ + i * VL, acc[i][j]);
        }
    /* The block's row max, while the scores are still in registers. */
#pragma GCC unroll 16
    for (int i = 0; i < ib; i++) {
        VT mx = VLOAD(bmax + i * VL);
#pragma GCC unroll 16
        for (int j = 0; j < jb; j++) mx = FA_FN(fa_vmax_)(acc[i][j], mx);
        VSTORE(bmax + i * VL, mx);
    }
}

/* The part [x, n) of a row of micro-tiles that does not fill a block of
 * `full`, as CALL(4), CALL(2), CALL(1) at x (x advances). */
#define FA_REST_421(full, x, n, CALL)            \
    do {                                         \
        if ((full) > 4 && (n) - (x) >= 4) {      \
            CALL(4);                             \
            (x) += 4;                            \
        }                                        \
        if ((full) > 2 && (n) - (x) >= 2) {      \
            CALL(2);                             \
            (x) += 2;                            \
        }                                        \
        if ((n) - (x) >= 1) CALL(1);             \
    } while (0)

/*
 * The keys of a row of micro-tiles that do not fill FA_QK_JB, in calls of
 * 4, 2 and 1 keys.  A one-key call has only ib independent FMA chains:
 * with two FMA ports of latency 4 (Intel) it needs 8 to keep both busy,
 * so 64 keys as 10 x 6 + 4 x 1 ran the last 4 at half rate.  The order
 * of the sum over d of each score is the same in every call.
 */
FA_INLINE void FA_FN(fa_qk_rest_)(const int ib, const int pairs, int j, int nb,
                                  const FA_T *qt, const FA_T *k, int64_t k_sn,
                                  const int64_t k_sd, int64_t d, FA_T sc, FA_T *st,
                                  FA_T *bmax)
{
#define FA_QK_CALL(jb)                                                                \
    FA_FN(fa_qk_micro_)(ib, jb, pairs, qt, k + j * k_sn, k_sn, k_sd, d, sc, st + j * FA_BQ, \
                        bmax)
    FA_REST_421(FA_QK_JB, j, nb, FA_QK_CALL);
#undef FA_QK_CALL
}

/* Scores of nv query vectors against nb keys starting at k. */
FA_INLINE void FA_FN(fa_qk_tile_)(int nv, int nb, const int pairs, const FA_T *qt,
                                  const FA_T *k, int64_t k_sn, const int64_t k_sd,
                                  int64_t d, FA_T sc, FA_T *st, FA_T *bmax)
{
    int iv = 0;
    for (; iv + FA_QK_IB <= nv; iv += FA_QK_IB) {
        int j = 0;
        for (; j + FA_QK_JB <= nb; j += FA_QK_JB)
            FA_FN(fa_qk_micro_)(FA_QK_IB, FA_QK_JB, pairs, qt + iv * VL, k + j * k_sn, k_sn,
                                k_sd, d, sc, st + j * FA_BQ + iv * VL, bmax + iv * VL);
        FA_FN(fa_qk_rest_)(FA_QK_IB, pairs, j, nb, qt + iv * VL, k, k_sn, k_sd, d, sc,
                           st + iv * VL, bmax + iv * VL);
    }
    for (; iv < nv; iv++) {
        int j = 0;
        for (; j + FA_QK_JB <= nb; j += FA_QK_JB)
            FA_FN(fa_qk_micro_)(1, FA_QK_JB, pairs, qt + iv * VL, k + j * k_sn, k_sn, k_sd, d,
                                sc, st + j * FA_BQ + iv * VL, bmax + iv * VL);
        FA_FN(fa_qk_rest_)(1, pairs, j, nb, qt + iv * VL, k, k_sn, k_sd, d, sc, st + iv * VL,
                           bmax + iv * VL);
    }
}

/*
 * P.V micro-kernel: ot[col][rows] = ot * alpha + sum_j p[j][rows] * v[j][col]
 * for ib query vectors and eb value columns.  The block's sum starts from
 * zero and is added to the rescaled running accumulator at the end
 * (blocked summation): the rounding error then grows with
 * FA_BK + Nk / FA_BK instead of Nk, at the cost of one FMA per block.
 */
FA_INLINE void FA_FN(fa_pv_micro_)(const int ib, const int eb,
                                   const FA_T *restrict pt,
                                   const FA_T *restrict v, int64_t v_sn,
                                   const int64_t v_sd, int nb,
                                   const FA_T *restrict alpha,
                                   FA_T *restrict ot)
{
    VT acc[FA_PV_IB][FA_PV_EB];
#pragma GCC unroll 16
    for (int i = 0; i < ib; i++)
#pragma GCC unroll 16
        for (int e = 0; e < eb; e++) acc[i][e] = VSPLAT(0);
    for (int j = 0; j < nb; j++) {
        VT pv[FA_PV_IB];
#pragma GCC unroll 16
        for (int i = 0; i < ib; i++) pv[i] = VLOAD(pt + j * FA_BQ + i * VL);
        const FA_T *vrow = v + j * v_sn;
#pragma GCC unroll 16
        for (int e = 0; e < eb; e++) {
            const FA_T vv = vrow[e * v_sd];
#pragma GCC unroll 16
            for (int i = 0; i < ib; i++) acc[i][e] += pv[i] * vv;
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < ib; i++) {
        const VT a = VLOAD(alpha + i * VL);
#pragma GCC unroll 16
        for (int e = 0; e < eb; e++)
            VSTORE(ot + e * FA_BQ + i * VL, VLOAD(ot + e * FA_BQ + i * VL) * a + acc[i][e]);
    }
}

/* The value columns e.. that do not fill FA_PV_EB, in calls of 4, 2 and
 * 1 columns (as fa_qk_rest_, for the same reason). */
FA_INLINE void FA_FN(fa_pv_rest_)(const int ib, int64_t e, int64_t dv, const FA_T *pt,
                                  const FA_T *v, int64_t v_sn, const int64_t v_sd, int nb,
                                  const FA_T *alpha, FA_T *ot)
{
#define FA_PV_CALL(eb) \
    FA_FN(fa_pv_micro_)(ib, eb, pt, v + e * v_sd, v_sn, v_sd, nb, alpha, ot + e * FA_BQ)
    FA_REST_421(FA_PV_EB, e, dv, FA_PV_CALL);
#undef FA_PV_CALL
}

FA_INLINE void FA_FN(fa_pv_tile_)(int nv, int nb, const FA_T *pt,
                                  const FA_T *v, int64_t v_sn,
                                  const int64_t v_sd, int64_t dv,
                                  const FA_T *alpha, FA_T *ot)
{
    int iv = 0;
    for (; iv + FA_PV_IB <= nv; iv += FA_PV_IB) {
        int64_t e = 0;
        for (; e + FA_PV_EB <= dv; e += FA_PV_EB)
            FA_FN(fa_pv_micro_)(FA_PV_IB, FA_PV_EB, pt + iv * VL,
                                v + e * v_sd, v_sn, v_sd, nb, alpha + iv * VL,
                                ot + e * FA_BQ + iv * VL);
        FA_FN(fa_pv_rest_)(FA_PV_IB, e, dv, pt + iv * VL, v, v_sn, v_sd, nb, alpha + iv * VL,
                           ot + iv * VL);
    }
    for (; iv < nv; iv++) {
        int64_t e = 0;
        for (; e + FA_PV_EB <= dv; e += FA_PV_EB)
            FA_FN(fa_pv_micro_)(1, FA_PV_EB, pt + iv * VL, v + e * v_sd,
                                v_sn, v_sd, nb, alpha + iv * VL,
                                ot + e * FA_BQ + iv * VL);
        FA_FN(fa_pv_rest_)(1, e, dv, pt + iv * VL, v, v_sn, v_sd, nb, alpha + iv * VL,
                           ot + iv * VL);
    }
}

/* Pack Q^T for the tile: qt[k][r] = q_row[r][k] * c, rows >= rows and up to
 * `lanes` zero.  Unit column stride: VL x VL blocks through the transpose;
 * otherwise, and for the d tail, element by element. */
FA_INLINE void FA_FN(fa_pack_q_)(const fa_tile *t, int64_t d, int64_t q_sd, FA_T c,
                                 int lanes, FA_T *restrict qt)
{
    const int rows = t->rows;
    int64_t k0 = 0;
    if (VL > 1 && q_sd == 1) {
        for (; k0 + VL <= d; k0 += VL)
            for (int r0 = 0; r0 < lanes; r0 += VL) {
                VT x[VL];
#pragma GCC unroll 16
                for (int i = 0; i < VL; i++)
                    x[i] = r0 + i < rows ? FA_FN(fa_loads_)((const FA_S *)t->q_row[r0 + i] + k0)
                                         : VSPLAT(0);
                FA_FN(fa_transpose_)(x);
#pragma GCC unroll 16
                for (int i = 0; i < VL; i++) VSTORE(qt + (k0 + i) * FA_BQ + r0, x[i] * c);
            }
    }
    for (int r = 0; r < rows; r++) {
        const FA_S *q = (const FA_S *)t->q_row[r];
        for (int64_t k = k0; k < d; k++) qt[k * FA_BQ + r] = FA_FN(fa_s2t_)(q[k * q_sd]) * c;
    }
    for (int r = rows; r < lanes; r++)
        for (int64_t k = k0; k < d; k++) qt[k * FA_BQ + r] = 0;
}

#if FA_S_KIND != 0
/* Widen nb stored rows of n elements (row stride sn, column stride sd)
 * into dst, rows of n contiguous compute-type elements. */
static void FA_FN(fa_widen_rows_)(const FA_S *src, int64_t sn, int64_t sd, int nb,
                                  int64_t n, FA_T *restrict dst)
{
    for (int j = 0; j < nb; j++) {
        const FA_S *s = src + j * sn;
        FA_T *o = dst + j * n;
        int64_t c = 0;
        if (sd == 1)
            for (; c + VL <= n; c += VL) FA_FN(fa_storeu_)(o + c, FA_FN(fa_loads_)(s + c));
        for (; c < n; c++) o[c] = FA_FN(fa_s2t_)(s[c * sd]);
    }
}
#endif

/* Read the mask for the tile's rows x keys [j0, j0 + nb) into mt[key][row]
 * (see fa_mask_terms_); padded lanes see everything, which keeps their
 * arithmetic finite.  Returns nonzero if any entry is visible, so the
 * caller can skip a block that is masked for every row. */
static int FA_FN(fa_load_mask_)(const fa_params *p, const fa_tile *t,
                                int64_t j0, int nb, FA_T *mt)
{
    int any = 0;
    for (int r = 0; r < t->rows; r++)
        any |= FA_FN(fa_mask_terms_)(p->mask_kind, t->mask_row[r], p->m_sk, j0, nb, mt + r, FA_BQ);
    for (int r = t->rows; r < FA_BQ; r++)
        for (int j = 0; j < nb; j++) mt[j * FA_BQ + r] = 0;
    return any;
}

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

#if FA_QK_PAIRS
/* Pack Q^T as raw bfloat16 pairs: word c of lane r holds q[r][2c] (low
 * half) and q[r][2c + 1]; lanes >= rows are zero. */
static void FA_FN(fa_pack_q_pairs_)(const fa_tile *t, int64_t d, int64_t q_sd, int lanes,
                                    FA_T *restrict qt)
{
    for (int r = 0; r < lanes; r++) {
        const FA_S *q = r < t->rows ? (const FA_S *)t->q_row[r] : NULL;
        for (int64_t c = 0; c < d / 2; c++) {
            const uint32_t word = q ? (uint32_t)q[2 * c * q_sd] | (uint32_t)q[(2 * c + 1) * q_sd] << 16 : 0;
            __builtin_memcpy(qt + c * FA_BQ + r, &word, sizeof word);
        }
    }
}
#endif

FA_INLINE FA_FN(fa_scr_) FA_FN(fa_tile_setup_)(const fa_params *p, const fa_tile *t,
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
FA_INLINE void FA_FN(fa_tile_rows_at_)(const fa_tile *t, const FA_FN(fa_scr_) *w,
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

/*
 * A block on the causal diagonal: every key past row r's band end is
 * masked for row r, and with rows in query order the band ends grow with
 * the row.  Query vector i (lanes i*VL ...) then needs only the block's
 * first nbv[i] keys, the largest band end of its rows, and nbv grows with
 * i.  Scores, softmax and P.V skip the rest, which would be exp(-inf) = 0
 * times V (about 3/8 of a 64 x 64 diagonal block with 16 lanes).  Fills
 * w->nbv and returns 1 where that holds and saves something; rows past
 * t->rows and rows that see no key need nothing.
 */
FA_INLINE int FA_FN(fa_stair_)(const fa_tile *t, FA_FN(fa_scr_) *w, int64_t j0, int nb)
{
    int prev = 0, saved = 0;
    for (int i = 0; i < w->nv; i++) {
        int64_t need = 0;
        for (int r = i * VL; r < (i + 1) * VL && r < t->rows; r++)
            if (t->jlo[r] < t->jhi[r] && t->jhi[r] - j0 > need) need = t->jhi[r] - j0;
        const int n = need > nb ? nb : (int)need;
        if (n < prev) return 0; /* not a staircase */
        w->nbv[i] = prev = n;
        saved |= n < nb;
    }
    return saved;
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
FA_INLINE int FA_FN(fa_block_scores_)(const fa_params *p, const fa_tile *t,
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

/* The key block's rows as compute-type pointers (widened for 16-bit;
 * int8 ones dequantized, see quant.h). */
#if FA_KV_I8
#define FA_BLOCK(base, j0, sn, sd, nb, n, buf, key, out_ptr, out_sn, out_sd)            \
    do {                                                                           \
        FA_FN(fa_dequant_rows_)(p, t, base, j0, sn, sd, nb, n, buf, key);            \
        out_ptr = (buf);                                                           \
        out_sn = (n);                                                              \
        out_sd = 1;                                                                \
    } while (0)
#elif FA_S_KIND != 0
#define FA_BLOCK(base, j0, sn, sd, nb, n, buf, key, out_ptr, out_sn, out_sd) \
    do {                                                                 \
        FA_FN(fa_widen_rows_)((base) + (j0) * (sn), sn, sd, nb, n, buf); \
        out_ptr = (buf);                                                 \
        out_sn = (n);                                                    \
        out_sd = 1;                                                      \
    } while (0)
#else
#define FA_BLOCK(base, j0, sn, sd, nb, n, buf, key, out_ptr, out_sn, out_sd) \
    do {                                                                 \
        (void)(n);                                                       \
        (void)(nb);                                                      \
        out_ptr = (base) + (j0) * (sn);                                  \
        out_sn = (sn);                                                   \
        out_sd = (sd);                                                   \
    } while (0)
#endif

/* The key block at j0 as fa_block_scores_ reads it: the raw bfloat16
 * pairs (strides in 32-bit words) for the pair path, else compute-type
 * rows. */
FA_INLINE const FA_T *FA_FN(fa_key_block_)(const fa_params *p, const fa_tile *t,
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

/* O = O * alpha + P.V for a staircase block: P.V runs per key segment
 * [nbv[i - 1], nbv[i]) over query vectors i..; alpha is applied in the
 * first segment (which holds every vector that takes part), and a vector
 * that takes part in none is only rescaled. */
FA_INLINE void FA_FN(fa_stair_pv_)(const FA_FN(fa_scr_) *w, const FA_T *vb, int64_t v_sn,
                                   int64_t v_sd, int64_t dv)
{
    const int nv = w->nv;
    FA_T ones[FA_BQ] __attribute__((aligned(64)));
    for (int r = 0; r < FA_BQ; r++) ones[r] = 1;
    int first = -1;
    for (int i = 0, j = 0; i < nv; i++) {
        const int n = w->nbv[i] - j;
        if (n <= 0) continue;
        FA_FN(fa_pv_tile_)(nv - i, n, w->st + j * FA_BQ + i * VL, vb + j * v_sn, v_sn, v_sd,
                           dv, (first < 0 ? w->alpha : ones) + i * VL, w->ot + i * VL);
        if (first < 0) first = i;
        j = w->nbv[i];
    }
    for (int i = 0; i < (first < 0 ? nv : first); i++) {
        const VT a = VLOAD(w->alpha + i * VL);
        for (int64_t c = 0; c < dv; c++)
            VSTORE(w->ot + c * FA_BQ + i * VL, VLOAD(w->ot + c * FA_BQ + i * VL) * a);
    }
}

/* Write the tile's rows: unit column stride in VL x VL blocks through the
 * transpose, then the row finish for the rest (and for rows that saw no
 * key, which must be exact zeros). */
FA_INLINE void FA_FN(fa_tile_finish_)(const fa_params *p, const fa_tile *t,
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

/* One key block on the causal diagonal (fa_stair_ said so): scores,
 * softmax and P.V over each query vector's own keys.  Kept out of line, so
 * that the hot path of fa_tile_ compiles as it would without it. */
static __attribute__((noinline)) void FA_FN(fa_stair_block_)(
    const fa_params *p, const fa_tile *t, FA_FN(fa_scr_) *w, FA_FN(fa_epi_) *e, int64_t j0,
    int nb, const FA_T *kb, int64_t k_sn, int64_t k_sd)
{
    const int rescan = FA_FN(fa_block_scores_)(p, t, w, e, j0, nb, kb, k_sn, k_sd, 1, w->nbv);
    FA_FN(fa_tile_softmax_)(w, nb, rescan, w->nbv);
    const FA_T *vb;
    int64_t v_sn, v_sd;
    FA_BLOCK((const FA_KV *)t->v, j0, p->v_sn, p->v_sd, nb, p->dv, w->vc, 0, vb, v_sn, v_sd);
    FA_FN(fa_stair_pv_)(w, vb, v_sn, v_sd, p->dv);
}

/* The tile: online softmax attention of t->rows query rows over keys
 * [t->k_lo, t->k_hi) (and inside each row's band), written normalized to
 * t->o_row and t->lse_row. */
static void FA_FN(fa_tile_)(const fa_params *p, const fa_tile *t, void *scratch)
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
static void FA_FN(fa_weights_)(const fa_params *p, const fa_tile *t, void *scratch)
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
#undef FA_REST_421
