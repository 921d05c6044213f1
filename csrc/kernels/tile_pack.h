/*
 * tile_pack.h: the operands of the tile kernel (tile.h) in the layout its
 * micro-kernels (micro.h) read: Q^T packed once per tile (scaled, or as raw
 * bfloat16 pairs), 16-bit keys and values widened one key block at a time,
 * the mask of a block read into mt[key][row], and FA_BLOCK, a key or value
 * block as compute-type rows (undefined at the end of tile.h).
 */

/* Pack Q^T for the tile: qt[k][r] = q_row[r][k] * c, rows >= rows and up to
 * `lanes` zero.  Unit column stride: VL x VL blocks through the transpose;
 * otherwise, and for the d tail, element by element. */
FA_INLINE void FA_FN(fa_pack_q_)(const fa_work_item *t, int64_t d, int64_t q_sd, FA_T c,
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
static int FA_FN(fa_load_mask_)(const fa_params *p, const fa_work_item *t,
                                int64_t j0, int nb, FA_T *mt)
{
    int any = 0;
    for (int r = 0; r < t->rows; r++)
        any |= FA_FN(fa_mask_terms_)(p->mask_kind, t->mask_row[r], p->m_sk, j0, nb, mt + r, FA_BQ);
    for (int r = t->rows; r < FA_BQ; r++)
        for (int j = 0; j < nb; j++) mt[j * FA_BQ + r] = 0;
    return any;
}

#if FA_QK_PAIRS
/* Pack Q^T as raw bfloat16 pairs: word c of lane r holds q[r][2c] (low
 * half) and q[r][2c + 1]; lanes >= rows are zero. */
static void FA_FN(fa_pack_q_pairs_)(const fa_work_item *t, int64_t d, int64_t q_sd, int lanes,
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
