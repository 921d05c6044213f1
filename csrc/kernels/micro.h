/*
 * micro.h: the register-blocked micro-kernels of the tile kernel (tile.h):
 * Q.K^T of a block of query vectors against keys, and P.V into the output
 * accumulator, with the calls that cover the keys and columns that do not
 * fill a register block.  They read only the vector vocabulary (vec.h)
 * and their arguments: operands in the tile layout (FA_BQ rows a line),
 * K and V through any strides.
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
#undef FA_REST_421
