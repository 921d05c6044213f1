/*
 * linear.h: y = x W + b in float32 over a packed W, compiled once per ISA
 * (float32 only) by kernel_body.h.
 *
 * Why a GEMM of our own next to the BLAS: a row's result must not depend
 * on the other rows of the call.  Optimized BLAS libraries choose their
 * kernels, and within a kernel the arithmetic of an edge, by the shape of
 * the call and by where a row falls in it (OpenBLAS's Haswell sgemm, say,
 * rounds rows 6-11 of every 12 differently from rows 0-5), so a sentence's
 * embedding would change with its neighbours in a packed batch.  Here every
 * output element is one chain of multiply-adds over k = 0 .. K-1, in that
 * order, started from zero, with the bias added last: the same sequence of
 * operations whatever the row's position, the number of rows, the row
 * blocking or the thread, so results are bitwise invariant by construction.
 *
 * Layout (FA_LIN_NR = 16 columns a panel on every ISA, so a packed weight
 * serves every path): panel p holds columns [16p, 16p + 16) of W as K rows
 * of 16 floats, panels one after another; the last panel is zero-padded.
 *
 * Blocking, as in the classic GEMM design: K in blocks of FA_LIN_KC, rows
 * in blocks of FA_LIN_MC.  A block of x (MC x KC, 128 KiB) is packed so
 * that the FA_LIN_MR rows of a register block lie side by side for each k
 * (zero rows pad the last group; their results are never stored) and stays
 * in L2; a panel's KC x 16 slice of W (16 KiB) stays in L1 while the
 * register blocks of the row block pass over it.  Each K block's products
 * are summed from zero in registers and then added to y, so an element is
 * ((block 0 + block 1) + ...) + bias: the order is fixed by K alone, and
 * the blocked sum is also more accurate than one chain over all of K.
 */

#if !FA_IS_DOUBLE && FA_S_KIND == 0 && !FA_KV_I8

#ifndef FA_LIN_MR
#define FA_LIN_MR 4 /* rows of a register block */
#endif
#define FA_LIN_NV (FA_LIN_NR / VL) /* vectors across a panel */
/* A broadcast straight from memory (vbroadcastss m32): the generic VSPLAT
 * adds the scalar to a zero vector first, one more instruction per row and
 * k in the inner loop. */
#if defined(__AVX512F__) && FA_VBYTES == 64
#define FA_LIN_SPLAT(p) ((VT)_mm512_set1_ps(*(p)))
#elif defined(__AVX__) && FA_VBYTES == 32
#define FA_LIN_SPLAT(p) ((VT)_mm256_set1_ps(*(p)))
#else
#define FA_LIN_SPLAT(p) VSPLAT(*(p))
#endif

/* One register block: FA_LIN_MR packed rows (a[kk * MR + i]) times the
 * kc x 16 slice w of a panel.  The rows < rows and columns < cols of y
 * receive the sum (first: y = sum, else y += sum; last: + bias). */
FA_INLINE void FA_FN(fa_linear_block_)(const float *a, const float *w, int64_t kc, float *y,
                                        int64_t ldy, int rows, int cols, int first,
                                        const float *bias)
{
    VT acc[FA_LIN_MR][FA_LIN_NV];
    for (int i = 0; i < FA_LIN_MR; i++)
        for (int v = 0; v < FA_LIN_NV; v++) acc[i][v] = VSPLAT(0);
    for (int64_t kk = 0; kk < kc; kk++) {
        VT b[FA_LIN_NV];
        for (int v = 0; v < FA_LIN_NV; v++) b[v] = FA_FN(fa_loadu_)(w + kk * FA_LIN_NR + v * VL);
        for (int i = 0; i < FA_LIN_MR; i++) {
            const VT s = FA_LIN_SPLAT(a + kk * FA_LIN_MR + i);
            for (int v = 0; v < FA_LIN_NV; v++) acc[i][v] += s * b[v];
        }
    }
    for (int i = 0; i < rows; i++) {
        float *yi = y + i * ldy;
        for (int v = 0; v < FA_LIN_NV; v++) {
            VT r = acc[i][v];
            if (cols == FA_LIN_NR) {
                if (!first) r += FA_FN(fa_loadu_)(yi + v * VL);
                if (bias) r += FA_FN(fa_loadu_)(bias + v * VL);
                FA_FN(fa_storeu_)(yi + v * VL, r);
            } else { /* the last panel: touch only its n - 16p real columns */
                for (int l = 0; l < VL && v * VL + l < cols; l++) {
                    float e = r[l];
                    if (!first) e = yi[v * VL + l] + e;
                    if (bias) e += bias[v * VL + l];
                    yi[v * VL + l] = e;
                }
            }
        }
    }
}

/* Pack rows [0, m) x columns [0, kc) of x into groups of FA_LIN_MR rows,
 * interleaved by k; the last group is padded with zero rows. */
static void FA_FN(fa_linear_pack_)(const float *x, int64_t ldx, int64_t m, int64_t kc,
                                   float *dst)
{
    for (int64_t g = 0; g < m; g += FA_LIN_MR) {
        float *d = dst + g * kc;
        for (int i = 0; i < FA_LIN_MR; i++) {
            if (g + i < m) {
                const float *src = x + (g + i) * ldx;
                for (int64_t kk = 0; kk < kc; kk++) d[kk * FA_LIN_MR + i] = src[kk];
            } else {
                for (int64_t kk = 0; kk < kc; kk++) d[kk * FA_LIN_MR + i] = 0.0f;
            }
        }
    }
}

/* y (m x n, row stride ldy) = x (m x k, row stride ldx) W + bias, W packed
 * as above (ceil(n / 16) panels of k x 16); bias may be NULL; scratch holds
 * FA_LIN_SCRATCH floats (FA_LIN_MC rows rounded up to FA_LIN_MR, times
 * FA_LIN_KC). */
static void FA_FN(fa_linear_)(const float *x, int64_t m, int64_t k, int64_t ldx,
                              const float *packed, int64_t n, const float *bias, float *y,
                              int64_t ldy, float *scratch)
{
    const int64_t panels = (n + FA_LIN_NR - 1) / FA_LIN_NR;
    if (k == 0) { /* no products: y = bias (or 0) */
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) y[i * ldy + j] = bias ? bias[j] : 0.0f;
        return;
    }
    for (int64_t k0 = 0; k0 < k; k0 += FA_LIN_KC) {
        const int64_t kc = k - k0 < FA_LIN_KC ? k - k0 : FA_LIN_KC;
        const int first = k0 == 0, last = k0 + kc == k;
        for (int64_t r0 = 0; r0 < m; r0 += FA_LIN_MC) {
            const int64_t rows = m - r0 < FA_LIN_MC ? m - r0 : FA_LIN_MC;
            FA_FN(fa_linear_pack_)(x + r0 * ldx + k0, ldx, rows, kc, scratch);
            for (int64_t p = 0; p < panels; p++) {
                const int64_t c0 = p * FA_LIN_NR;
                const int cols = (int)(n - c0 < FA_LIN_NR ? n - c0 : FA_LIN_NR);
                const float *w = packed + (p * k + k0) * FA_LIN_NR;
                for (int64_t g = 0; g < rows; g += FA_LIN_MR) {
                    const int gr = (int)(rows - g < FA_LIN_MR ? rows - g : FA_LIN_MR);
                    FA_FN(fa_linear_block_)(scratch + g * kc, w, kc, y + (r0 + g) * ldy + c0,
                                            ldy, gr, cols, first,
                                            last && bias ? bias + c0 : NULL);
                }
            }
        }
    }
}

#undef FA_LIN_NV
#undef FA_LIN_SPLAT

#endif
