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
 * per FA_LIN_KC_I8 block and then goes through the float32 path's store and
 * epilogue.  Block scales instead of one scale per row: a row's outliers
 * then only coarsen the steps of their own block (docs/numerics.md gives
 * the accuracy each choice reached on MiniLM).
 *
 * Everything a row's result depends on is the row itself, the K blocking
 * (fixed by k) and the column: the quantization is per row, the integer
 * sums are exact, and the float operations of an element are the same
 * whichever rows share its register block or thread.
 *
 * Layout: panel p holds columns [16p, 16p + 16) as kp / 4 quads (kp: k
 * rounded up to FA_LIN_KALIGN), each
 * 16 columns x 4 consecutive k as int8 (64 bytes; the VPDPBUSD layout),
 * zero-padded in k and in the last panel's columns.  The packed block of x
 * keeps the FA_LIN_MR rows of a group side by side: 32-bit word
 * j * FA_LIN_MR + i holds row i's xq for k = 4j .. 4j + 3.
 *
 * AVX2 has no signed-by-signed byte product: vpmaddubsw multiplies
 * unsigned by signed bytes.  |x| times w with x's sign moved onto w
 * (vpsignb) is the same product, and since both are in [-127, 127] a pair
 * sum is at most 2 * 127 * 127 < 2^15: vpmaddubsw never saturates.  (The
 * dot-product instructions, where the CPU has them, are in linear_dot.h:
 * VPDPBUSD on zmm or on AVX-VNNI's ymm, and Arm's SDOT.)
 */

/* One block of a row: n values of src (n <= FA_LIN_QB) to np >= n int8
 * (the pad zero) at d, with its scale and the sum of its xq.  A block
 * with a NaN or an infinity gets a NaN scale (the row's outputs become
 * NaN), one whose largest |x| is below 2^-119 quantizes to zero (its
 * steps would be subnormal, and the call flushes subnormals).  xq =
 * x * (127 / amax) rounded to nearest even (the rounding mode of the
 * call), so |xq| <= 127. */
FA_INLINE void FA_FN(fa_quant_block_)(const float *src, int n, int np, int8_t *d,
                                       float *scale, int32_t *sum)
{
#if FA_VBYTES == 64 && defined(__AVX512F__)
    const __mmask16 m0 = (__mmask16)(n >= 16 ? 0xffff : (1u << n) - 1);
    const __mmask16 m1 = (__mmask16)(n >= 32 ? 0xffff : n > 16 ? (1u << (n - 16)) - 1 : 0);
    const __m512 v0 = _mm512_maskz_loadu_ps(m0, src), v1 = _mm512_maskz_loadu_ps(m1, src + 16);
    const __m512 a = _mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1));
    /* not finite: |v| > FLT_MAX is false for NaN, so test "not <=" */
    const __mmask16 ok = _mm512_cmp_ps_mask(a, _mm512_set1_ps(3.40282347e38f), _CMP_LE_OQ);
    const float amax = _mm512_reduce_max_ps(a);
    const int finite = ok == 0xffff;
#elif FA_VBYTES == 32 && defined(__AVX2__)
    __m256 v[4], a = _mm256_setzero_ps();
    __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int h = 0; h < 4; h++) {
        const int c = n - 8 * h;
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i mk = _mm256_cmpgt_epi32(_mm256_set1_epi32(c > 0 ? c : 0), lane);
        v[h] = _mm256_maskload_ps(src + 8 * h < src + n ? src + 8 * h : src, mk);
        const __m256 av = _mm256_and_ps(v[h], absmask);
        ok = _mm256_and_ps(ok, _mm256_cmp_ps(av, _mm256_set1_ps(3.40282347e38f), _CMP_LE_OQ));
        a = _mm256_max_ps(a, av);
    }
    __m128 r4 = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    r4 = _mm_max_ps(r4, _mm_movehl_ps(r4, r4));
    r4 = _mm_max_ss(r4, _mm_shuffle_ps(r4, r4, 1));
    const float amax = _mm_cvtss_f32(r4);
    const int finite = _mm256_movemask_ps(ok) == 0xff;
#else
    float amax = 0.0f;
    int finite = 1;
    for (int k = 0; k < n; k++) {
        const float a = __builtin_fabsf(src[k]);
        finite &= a <= 3.40282347e38f; /* false for NaN and inf */
        amax = a > amax ? a : amax;
    }
#endif
    float inv = 0.0f;
    *scale = 0.0f;
    if (!finite)
        *scale = __builtin_nanf("");
    else if (amax >= 0x1p-119f) {
        *scale = amax / 127.0f;
        inv = 127.0f / amax;
    }
#if FA_VBYTES == 64 && defined(__AVX512F__)
    const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(inv)));
    const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(inv)));
    /* NaN or inf lanes convert to INT_MIN: a non-finite block stores 0s */
    const __m512i z = finite ? _mm512_setzero_si512() : _mm512_set1_epi32(-1);
    const __m512i c0 = _mm512_andnot_si512(z, q0), c1 = _mm512_andnot_si512(z, q1);
    *sum = _mm512_reduce_add_epi32(_mm512_add_epi32(c0, c1));
    const __m128i b0 = _mm512_cvtsepi32_epi8(c0), b1 = _mm512_cvtsepi32_epi8(c1);
    _mm_mask_storeu_epi8(d, (__mmask16)(np >= 16 ? 0xffff : (1u << np) - 1), b0);
    if (np > 16) _mm_mask_storeu_epi8(d + 16, (__mmask16)(np >= 32 ? 0xffff : (1u << (np - 16)) - 1), b1);
#elif FA_VBYTES == 32 && defined(__AVX2__)
    __m256i q[4];
    const __m256i z = finite ? _mm256_setzero_si256() : _mm256_set1_epi32(-1);
    for (int h = 0; h < 4; h++)
        q[h] = _mm256_andnot_si256(z, _mm256_cvtps_epi32(_mm256_mul_ps(v[h], _mm256_set1_ps(inv))));
    __m256i t = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4e));
    t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0xb1));
    *sum = _mm_cvtsi128_si32(t4);
    /* int32 -> int8 with saturation; the packs interleave the 128-bit
     * lanes, the permutation puts the 4-byte groups back in order */
    const __m256i p16 = _mm256_packs_epi32(q[0], q[1]), p16b = _mm256_packs_epi32(q[2], q[3]);
    const __m256i p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16, p16b),
                                                   _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    int8_t tmp[32];
    _mm256_storeu_si256((__m256i *)tmp, p8);
    __builtin_memcpy(d, tmp, (size_t)np);
#else
    int32_t s = 0;
    for (int k = 0; k < np; k++) {
        float q = k < n ? __builtin_rintf(src[k] * inv) : 0.0f;
        q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q;
        const int8_t qi = (int8_t)(q == q ? q : 0.0f);
        d[k] = qi;
        s += qi;
    }
    *sum = s;
#endif
}

/* Quantize rows [0, m) x columns [0, kc) of x: row r's int8 values to
 * dst + r * kq (kq = kc rounded up to 4; the pad is zero), their block
 * scales to scales and the blocks' sums of xq (the VPDPBUSD kernel's
 * compensation) to sums, both at g * nb + b * FA_LIN_MR + i for row i of
 * the group at row g, block b.  Rows [m, mp) (mp >= m a multiple of
 * FA_LIN_MR: the last group's missing rows, and more for the tiles) are
 * zero with scale 0. */
static void FA_FN(fa_linear_quant_)(const float *x, int64_t ldx, int64_t m, int64_t mp,
                                    int64_t kc, int64_t kq, int8_t *dst, float *scales,
                                    int32_t *sums)
{
    const int64_t nb = (kc + FA_LIN_QB - 1) / FA_LIN_QB;
    for (int64_t r = 0; r < mp; r++) {
        const int64_t sb = (r - r % FA_LIN_MR) * nb + r % FA_LIN_MR;
        for (int64_t b = 0; b < nb; b++) {
            const int64_t kb = b * FA_LIN_QB;
            const int n = r < m ? (int)(kc - kb < FA_LIN_QB ? kc - kb : FA_LIN_QB) : 0;
            const int np = (int)(kq - kb < FA_LIN_QB ? kq - kb : FA_LIN_QB);
            FA_FN(fa_quant_block_)(x + r * ldx + kb, n, np, dst + r * kq + kb,
                                   scales + sb + b * FA_LIN_MR, sums + sb + b * FA_LIN_MR);
        }
    }
}

/* R rows (R <= FA_LIN_I8R, a constant after inlining) of a group's packed
 * words a (row i's word j at a[i * lda + j]) and block scales sc (b * FA_LIN_MR + i)
 * times a panel's slice w of kq / 4 quads: facc[i][c] += x_scale * (int32
 * sum of the block), block by block. */
#define FA_LIN_I8R 3
FA_INLINE void FA_FN(fa_linear_i8_rows_)(const int R, const int32_t *a, int64_t lda, const float *sc,
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
                const __m256i xb = _mm256_set1_epi32(a[i * lda + j]);
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
                const int8_t *xq = (const int8_t *)(a + i * lda + j);
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

#if FA_LIN_TILES
/* One row block (rows rows from r0, quantized: row i's bytes at a + i *
 * kq, scales and sums in fa_linear_quant_'s layout) of an int8 call on
 * the matrix units (A->tiles, linear_tiles.h): FA_LIN_TILE_ROWS rows and
 * two panels a step. */
static void FA_FN(fa_linear_i8_tiles_)(const fa_linear_args *A, int64_t r0, int64_t rows,
                                       const int8_t *a, const float *scales, int64_t kq,
                                       int64_t nb, const int8_t *w, int64_t w_sp, int first,
                                       int last)
{
    float sc[FA_LIN_KC_I8 / FA_LIN_QB * FA_LIN_TILE_ROWS];
    float f[2][FA_LIN_TILE_ROWS][16] __attribute__((aligned(64)));
    for (int64_t g = 0; g < rows; g += FA_LIN_TILE_ROWS) {
        /* the block scales of the tile rows, block-major */
        for (int r = 0; r < FA_LIN_TILE_ROWS; r++) {
            const int64_t row = g + r, i = row % FA_LIN_MR;
            for (int64_t b = 0; b < nb; b++)
                sc[b * FA_LIN_TILE_ROWS + r] = scales[(row - i) * nb + b * FA_LIN_MR + i];
        }
        for (int64_t pc = A->p0; pc < A->p1; pc += 2) {
            const int np = A->p1 - pc < 2 ? 1 : 2;
            A->tiles->i8(a + g * kq, kq, sc, w + pc * w_sp, w_sp, nb, np, f);
            for (int s = 0; s < FA_LIN_TILE_ROWS && g + s < rows; s += FA_LIN_MR) {
                const int gr = (int)(rows - g - s < FA_LIN_MR ? rows - g - s : FA_LIN_MR);
                const int gt = FA_LIN_TILE_ROWS - s < gr ? FA_LIN_TILE_ROWS - s : gr;
                FA_FN(fa_linear_out_)(A, f[0][s], FA_LIN_TILE_ROWS * 16, FA_LIN_NR, gt,
                                      r0 + g + s, pc, np, first, last, A->w_scale);
            }
        }
    }
}
#endif

/* fa_linear_ for FA_LIN_I8 weights (A->w_scale: ceil(n / 16) * 16 column
 * scales); scratch as there (the words, scales and sums of a row block
 * take about a third of it).  A->dot: the CPU's int8 dot product (VPDPBUSD
 * on zmm or AVX-VNNI's ymm, or SDOT; linear_dot.h); A->tiles: the matrix
 * units (linear_tiles.h). */
static void FA_FN(fa_linear_i8_)(const fa_linear_args *A, float *scratch)
{
    const int64_t k = A->k, m = A->m;
    const int64_t k_pad = (k + FA_LIN_KALIGN - 1) / FA_LIN_KALIGN * FA_LIN_KALIGN; /* k rows of a panel */
    const int8_t *packed = (const int8_t *)A->packed;
    for (int64_t k0 = 0; k0 < k; k0 += FA_LIN_KC_I8) {
        const int64_t kc = k - k0 < FA_LIN_KC_I8 ? k - k0 : FA_LIN_KC_I8;
        /* bytes of a quantized row: whole quads, or whole blocks for the tiles */
        const int64_t kq = A->tiles ? (kc + FA_LIN_QB - 1) / FA_LIN_QB * FA_LIN_QB
                                    : (kc + 3) & ~(int64_t)3;
        const int64_t nb = (kc + FA_LIN_QB - 1) / FA_LIN_QB;
        const int first = k0 == 0, last = k0 + kc == k;
        for (int64_t r0 = 0; r0 < m; r0 += FA_LIN_MC) {
            const int64_t rows = m - r0 < FA_LIN_MC ? m - r0 : FA_LIN_MC;
            /* the tiles read whole blocks of FA_LIN_TILE_ROWS rows */
            const int64_t rt = A->tiles ? (rows + FA_LIN_TILE_ROWS - 1) / FA_LIN_TILE_ROWS
                                              * FA_LIN_TILE_ROWS
                                        : rows;
            const int64_t mp = (rt + FA_LIN_MR - 1) / FA_LIN_MR * FA_LIN_MR;
            int32_t *words = (int32_t *)scratch;
            float *scales = scratch + mp * (kq / 4);
            int32_t *sums = (int32_t *)(scales + mp * nb);
            FA_FN(fa_linear_quant_)(A->x + r0 * A->ldx + k0, A->ldx, rows, mp, kc, kq,
                                    (int8_t *)words, scales, sums);
#if FA_LIN_TILES
            if (A->tiles) {
                FA_FN(fa_linear_i8_tiles_)(A, r0, rows, (const int8_t *)words, scales, kq, nb,
                                           packed + k0 * FA_LIN_NR, k_pad * FA_LIN_NR, first,
                                           last);
                continue;
            }
#endif
#if FA_LIN_DOT_I8
            const int step = A->dot ? FA_LIN_DOT_NP : 1;
#else
            const int step = 1;
#endif
            for (int64_t pc = A->p0; pc < A->p1; pc += step) {
                const int np = (int)(A->p1 - pc < step ? A->p1 - pc : step);
                const int8_t *w = packed + (pc * k_pad + k0) * FA_LIN_NR;
                for (int64_t g = 0; g < rows; g += FA_LIN_MR) {
                    const int gr = (int)(rows - g < FA_LIN_MR ? rows - g : FA_LIN_MR);
                    /* the block sums of the group's rows, panel by panel */
                    float facc[2][FA_LIN_MR][FA_LIN_NR] __attribute__((aligned(64)));
#if FA_LIN_DOT_I8
                    if (A->dot) {
#define FA_LIN_I8_DOT(R_, np_, s_)                                                   \
    FA_FN(fa_linear_i8_dot_)(R_, np_, words + (g + (s_)) * (kq / 4), kq / 4,               \
                             scales + g * nb + (s_),                                      \
                             sums + g * nb + (s_), w, k_pad * FA_LIN_NR, kq, nb,           \
                             (float(*)[FA_LIN_MR][FA_LIN_NR])facc[0][s_])
#if FA_LIN_I8_HALVES /* a full group as two halves (linear_dot.h) */
                        if (gr == FA_LIN_MR && np == FA_LIN_DOT_NP && A->m > FA_LIN_STREAM_ROWS) {
                            FA_LIN_I8_DOT(FA_LIN_MR / 2, FA_LIN_DOT_NP, 0);
                            FA_LIN_I8_DOT(FA_LIN_MR / 2, FA_LIN_DOT_NP, FA_LIN_MR / 2);
                        } else
#endif
                        FA_LIN_DOT_ROWS(gr, np, FA_LIN_I8_DOT);
#undef FA_LIN_I8_DOT
                    } else
#endif
                    {
                        for (int i = 0; i < gr; i++)
                            for (int c = 0; c < FA_LIN_NR; c++) facc[0][i][c] = 0.0f;
                        for (int s = 0; s < gr; s += FA_LIN_I8R) {
                            const int32_t *a = words + (g + s) * (kq / 4);
                            const float *sc = scales + g * nb + s;
                            switch (gr - s < FA_LIN_I8R ? gr - s : FA_LIN_I8R) {
                            case 3: FA_FN(fa_linear_i8_rows_)(3, a, kq / 4, sc, w, kq, nb, facc[0] + s); break;
                            case 2: FA_FN(fa_linear_i8_rows_)(2, a, kq / 4, sc, w, kq, nb, facc[0] + s); break;
                            default: FA_FN(fa_linear_i8_rows_)(1, a, kq / 4, sc, w, kq, nb, facc[0] + s); break;
                            }
                        }
                    }
                    FA_FN(fa_linear_out_)(A, facc[0][0], FA_LIN_MR * FA_LIN_NR, FA_LIN_NR, gr,
                                          r0 + g, pc, np, first, last, A->w_scale);
                }
            }
        }
    }
}
