/*
 * linear_i8.h: the int8 mode of the linear layer (FA_LIN_I8), included by
 * linear.h: y = act(x W + b) + residual with W quantized per output column
 * and x quantized on the fly, per row and per block of FA_LIN_QB along K.
 *
 * Numbers: W's column c is wq[c][k] * w_scale[c] with wq in [-127, 127]
 * (pack_linear).  A block of FA_LIN_QB k of row r of x is
 * xq[k] * x_scale[r][b] with x_scale = max|x| / 127 over the block and xq =
 * rint(x / x_scale) in [-127, 127].  The products of a block are summed
 * exactly in int32 (at most 32 * 127 * 127 < 2^24, so the conversion to
 * float32 is exact too), scaled by the block's x_scale and summed in
 * float32 over the blocks in k order; the sum is scaled by w_scale[c] once
 * per FA_LIN_KC block and then goes through the float32 path's store and
 * epilogue.  Block scales instead of one scale per row: a row's outliers
 * then only coarsen the steps of their own block (docs/numerics.md gives
 * the accuracy each choice reached on MiniLM).
 *
 * Everything a row's result depends on is the row itself, the K blocking
 * (fixed by k) and the column: the quantization is per row, the integer
 * sums are exact, and the float operations of an element are the same
 * whichever rows share its register block or thread.
 *
 * Layout: panel p holds columns [16p, 16p + 16) as ceil(k / 4) quads, each
 * 16 columns x 4 consecutive k as int8 (64 bytes; the VPDPBUSD layout),
 * zero-padded in k and in the last panel's columns.  The packed block of x
 * keeps the FA_LIN_MR rows of a group side by side: 32-bit word
 * j * FA_LIN_MR + i holds row i's xq for k = 4j .. 4j + 3.
 *
 * AVX2 has no signed-by-signed byte product: vpmaddubsw multiplies
 * unsigned by signed bytes.  |x| times w with x's sign moved onto w
 * (vpsignb) is the same product, and since both are in [-127, 127] a pair
 * sum is at most 2 * 127 * 127 < 2^15: vpmaddubsw never saturates.
 */

#define FA_LIN_QB 32 /* k of an activation scale block (divides FA_LIN_KC) */

/* Quantize rows [0, m) x columns [0, kc) of x into dst (words, see above;
 * kq = kc rounded up to 4, the pad is zero) and their block scales into
 * scales (group g's at scales + g * nb, block b's row i at b * FA_LIN_MR +
 * i); the last group's missing rows are zero with scale 0.  A block with a
 * NaN or an infinity gets a NaN scale (the row's outputs become NaN), one
 * whose largest |x| is below 2^-119 quantizes to zero (its steps would be
 * subnormal, and the call flushes subnormals). */
static void FA_FN(fa_linear_quant_)(const float *x, int64_t ldx, int64_t m, int64_t kc,
                                    int64_t kq, int32_t *dst, float *scales)
{
    const int64_t nb = (kc + FA_LIN_QB - 1) / FA_LIN_QB;
    const int64_t mp = (m + FA_LIN_MR - 1) / FA_LIN_MR * FA_LIN_MR;
    for (int64_t r = 0; r < mp; r++) {
        const int64_t g = r - r % FA_LIN_MR, i = r % FA_LIN_MR;
        int8_t *d = (int8_t *)(dst + g * (kq / 4)) + 4 * i;
        float *s = scales + g * nb + i;
        const float *src = x + r * ldx;
        for (int64_t b = 0; b < nb; b++) {
            const int64_t kb = b * FA_LIN_QB;
            const int64_t ke = r < m ? (kc < kb + FA_LIN_QB ? kc : kb + FA_LIN_QB) : kb;
            const int64_t kpe = kq < kb + FA_LIN_QB ? kq : kb + FA_LIN_QB;
            float amax = 0.0f;
            int finite = 1;
            for (int64_t k = kb; k < ke; k++) {
                const float a = __builtin_fabsf(src[k]);
                finite &= a <= 3.40282347e38f; /* false for NaN and inf */
                amax = a > amax ? a : amax;
            }
            float scale = 0.0f, inv = 0.0f;
            if (!finite)
                scale = __builtin_nanf("");
            else if (amax >= 0x1p-119f) {
                scale = amax / 127.0f;
                inv = 127.0f / amax;
            }
            s[b * FA_LIN_MR] = scale;
            for (int64_t k = kb; k < kpe; k++) {
                float q = k < ke ? __builtin_rintf(src[k] * inv) : 0.0f;
                q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q;
                d[(k >> 2) * 4 * FA_LIN_MR + (k & 3)] = (int8_t)(q == q ? q : 0.0f);
            }
        }
    }
}

/* R rows (R <= FA_LIN_I8R, a constant after inlining) of a group's packed
 * words a (word j * FA_LIN_MR + i) and block scales sc (b * FA_LIN_MR + i)
 * times a panel's slice w of kq / 4 quads: facc[i][c] += x_scale * (int32
 * sum of the block), block by block. */
#define FA_LIN_I8R 3
FA_INLINE void FA_FN(fa_linear_i8_rows_)(const int R, const int32_t *a, const float *sc,
                                          const int8_t *w, int64_t kq, int64_t nb,
                                          float facc[][FA_LIN_NR])
{
    for (int64_t b = 0; b < nb; b++) {
        const int64_t j0 = b * (FA_LIN_QB / 4);
        const int64_t j1 = kq / 4 < j0 + FA_LIN_QB / 4 ? kq / 4 : j0 + FA_LIN_QB / 4;
#if defined(__AVX2__)
        const __m256i ones = _mm256_set1_epi16(1);
        __m256i acc[FA_LIN_I8R][2];
        for (int i = 0; i < R; i++) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
        for (int64_t j = j0; j < j1; j++) {
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + j * 64));
            const __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + j * 64 + 32));
            for (int i = 0; i < R; i++) {
                const __m256i xb = _mm256_set1_epi32(a[j * FA_LIN_MR + i]);
                const __m256i ax = _mm256_abs_epi8(xb);
                const __m256i p0 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w0, xb));
                const __m256i p1 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w1, xb));
                acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(p0, ones));
                acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(p1, ones));
            }
        }
        for (int i = 0; i < R; i++) {
            const __m256 s = _mm256_set1_ps(sc[b * FA_LIN_MR + i]);
            for (int h = 0; h < 2; h++) {
                const __m256 f = _mm256_loadu_ps(facc[i] + 8 * h);
                _mm256_storeu_ps(facc[i] + 8 * h,
                                 _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i][h]), s, f));
            }
        }
#else
        int32_t acc[FA_LIN_I8R][FA_LIN_NR] = {{0}};
        for (int64_t j = j0; j < j1; j++)
            for (int i = 0; i < R; i++) {
                const int8_t *xq = (const int8_t *)(a + j * FA_LIN_MR + i);
                for (int c = 0; c < FA_LIN_NR; c++) {
                    const int8_t *wq = w + j * 64 + 4 * c;
                    acc[i][c] += xq[0] * wq[0] + xq[1] * wq[1] + xq[2] * wq[2] + xq[3] * wq[3];
                }
            }
        for (int i = 0; i < R; i++) {
            const float s = sc[b * FA_LIN_MR + i];
            for (int c = 0; c < FA_LIN_NR; c++) facc[i][c] += (float)acc[i][c] * s;
        }
#endif
    }
}

/* fa_linear_ for FA_LIN_I8 weights (A->w_scale: ceil(n / 16) * 16 column
 * scales); scratch as there (the words and scales of a row block take
 * about a third of it). */
static void FA_FN(fa_linear_i8_)(const fa_linear_args *A, float *scratch)
{
    const int64_t k = A->k, n = A->n, m = A->m, ldy = A->ldy;
    const int64_t k_pad = (k + 3) & ~(int64_t)3; /* k rows of a packed panel */
    const int8_t *packed = (const int8_t *)A->packed;
    for (int64_t k0 = 0; k0 < k; k0 += FA_LIN_KC) {
        const int64_t kc = k - k0 < FA_LIN_KC ? k - k0 : FA_LIN_KC;
        const int64_t kq = (kc + 3) & ~(int64_t)3, nb = (kc + FA_LIN_QB - 1) / FA_LIN_QB;
        const int first = k0 == 0, last = k0 + kc == k;
        for (int64_t r0 = 0; r0 < m; r0 += FA_LIN_MC) {
            const int64_t rows = m - r0 < FA_LIN_MC ? m - r0 : FA_LIN_MC;
            const int64_t mp = (rows + FA_LIN_MR - 1) / FA_LIN_MR * FA_LIN_MR;
            int32_t *words = (int32_t *)scratch;
            float *scales = scratch + mp * (kq / 4);
            FA_FN(fa_linear_quant_)(A->x + r0 * A->ldx + k0, A->ldx, rows, kc, kq, words, scales);
            for (int64_t p = A->p0; p < A->p1; p++) {
                const int64_t c0 = p * FA_LIN_NR;
                const int cols = (int)(n - c0 < FA_LIN_NR ? n - c0 : FA_LIN_NR);
                const int8_t *w = packed + (p * k_pad + k0) * FA_LIN_NR;
                for (int64_t g = 0; g < rows; g += FA_LIN_MR) {
                    const int gr = (int)(rows - g < FA_LIN_MR ? rows - g : FA_LIN_MR);
                    float facc[FA_LIN_MR][FA_LIN_NR] __attribute__((aligned(64))) = {{0}};
                    for (int s = 0; s < gr; s += FA_LIN_I8R) {
                        const int32_t *a = words + g * (kq / 4) + s;
                        const float *sc = scales + g * nb + s;
                        switch (gr - s < FA_LIN_I8R ? gr - s : FA_LIN_I8R) {
                        case 3: FA_FN(fa_linear_i8_rows_)(3, a, sc, w, kq, nb, facc + s); break;
                        case 2: FA_FN(fa_linear_i8_rows_)(2, a, sc, w, kq, nb, facc + s); break;
                        default: FA_FN(fa_linear_i8_rows_)(1, a, sc, w, kq, nb, facc + s); break;
                        }
                    }
                    VT acc[FA_LIN_MR][FA_LIN_NV];
                    for (int i = 0; i < gr; i++)
                        for (int v = 0; v < FA_LIN_NV; v++)
                            acc[i][v] = FA_FN(fa_loadu_)(facc[i] + v * VL)
                                        * FA_FN(fa_loadu_)(A->w_scale + c0 + v * VL);
                    const FA_FN(fa_lin_ep_) ep = {
                        A->bias ? A->bias + c0 : NULL,
                        A->residual ? A->residual + (r0 + g) * A->ldr + c0 : NULL, A->ldr,
                        A->act};
                    FA_FN(fa_linear_store_)(acc, A->y + (r0 + g) * ldy + c0, ldy, gr, cols,
                                            first, last ? &ep : NULL);
                }
            }
        }
    }
}
