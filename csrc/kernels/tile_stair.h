/*
 * tile_stair.h: the causal staircase of the tile kernel: a key block on
 * the diagonal, where each query vector needs only a prefix of the keys.
 * Included by tile.h after the block steps it reuses (fa_block_scores_,
 * fa_tile_softmax_) and before the driver that calls it.
 */

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
FA_INLINE int FA_FN(fa_stair_)(const fa_work_item *t, FA_FN(fa_scr_) *w, int64_t j0, int nb)
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

/* One key block on the causal diagonal (fa_stair_ said so): scores,
 * softmax and P.V over each query vector's own keys.  Kept out of line, so
 * that the hot path of fa_tile_ compiles as it would without it. */
static __attribute__((noinline)) void FA_FN(fa_stair_block_)(
    const fa_params *p, const fa_work_item *t, FA_FN(fa_scr_) *w, FA_FN(fa_epi_) *e, int64_t j0,
    int nb, const FA_T *kb, int64_t k_sn, int64_t k_sd)
{
    const int rescan = FA_FN(fa_block_scores_)(p, t, w, e, j0, nb, kb, k_sn, k_sd, 1, w->nbv);
    FA_FN(fa_tile_softmax_)(w, nb, rescan, w->nbv);
    const FA_T *vb;
    int64_t v_sn, v_sd;
    FA_BLOCK((const FA_KV *)t->v, j0, p->v_sn, p->v_sd, nb, p->dv, w->vc, 0, vb, v_sn, v_sd);
    FA_FN(fa_stair_pv_)(w, vb, v_sn, v_sd, p->dv);
}
