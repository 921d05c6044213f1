/*
 * kernel_body.h: the fused attention tile, written once.
 *
 * Included by kernel_<isa>.c once per element type, after defining:
 *   FA_T          float or double
 *   FA_TNAME      f32 or f64 (name suffix)
 *   FA_ISA_NAME   scalar, avx2, avx512 (name suffix)
 *   FA_VBYTES     vector width in bytes (16, 32, 64)
 *   FA_QK_IB, FA_QK_JB   register block of the Q.K^T micro-kernel
 *                        (query vectors x keys)
 *   FA_PV_IB, FA_PV_EB   register block of the P.V micro-kernel
 *                        (query vectors x value columns)
 * Each kernel_<isa>.c is compiled with its own ISA flags, so the GCC/Clang
 * vector types below become AVX-512, AVX2 or baseline (SSE2/NEON) code.
 *
 * Layout: vectors run along the QUERIES.  Q is packed transposed once per
 * tile (qt[d][row], pre-multiplied by the scale); the scores tile is
 * st[key][row] and the output accumulator ot[col][row].  Keys and values are
 * then only ever read as scalars broadcast into a vector, straight from
 * their strided storage: K and V are never packed or copied, any stride
 * works, and the online softmax is purely vertical (one lane = one query
 * row: the running max, sum and rescale factor need no horizontal
 * reductions).
 *
 * Storage types: the 16-bit types (FA_S_KIND 1 = float16, 2 = bfloat16) are
 * widened to float32 as they are loaded (F16C's vcvtph2ps on x86, a shift
 * for bfloat16): Q while it is packed, K and V one key block at a time into
 * a float32 block in scratch (the tile reuses each block for 64 rows, so
 * the conversion is noise), and straight into registers in the few-row
 * kernel, where the loads are the cost.  Every product and sum is float32;
 * the output is rounded to the storage type once, at the end.
 *
 * Numerics: Q is pre-multiplied by the scale, so scores (and the additive
 * mask, and the running max) are in natural units; the softmax evaluates
 * exp(s - m) as exp2((s - m) * log2(e)), scaling only the difference, which
 * cannot overflow (scaling the scores themselves by log2(e) would overflow
 * scores above FLT_MAX / log2(e)).  A row
 * whose running max is still -inf uses 0 as its reference so that
 * exp2(-inf - -inf) never produces NaN; a row that saw no key ends with
 * sum 0 and is written as exact zeros with lse -inf.  NaN scores are not
 * filtered: they reach the sum and the accumulator and so the output.
 */

#define FA_PASTE3_(a, b, c) a##b##_##c
#define FA_PASTE3(a, b, c) FA_PASTE3_(a, b, c)
#define FA_FN(name) FA_PASTE3(name, FA_TNAME, FA_ISA_NAME)

#define VL ((int)(FA_VBYTES / sizeof(FA_T)))
#define VT FA_FN(fa_vt_)
#define VI FA_FN(fa_vi_)

typedef FA_T VT __attribute__((vector_size(FA_VBYTES)));

#define VU FA_FN(fa_vu_)
#if FA_IS_DOUBLE
typedef int64_t VI __attribute__((vector_size(FA_VBYTES)));
typedef uint64_t VU __attribute__((vector_size(FA_VBYTES)));
#else
typedef int32_t VI __attribute__((vector_size(FA_VBYTES)));
typedef uint32_t VU __attribute__((vector_size(FA_VBYTES)));
#endif

#define FA_INLINE static inline __attribute__((always_inline))
#define VLOAD(ptr) (*(const VT *)(ptr))
#define VSTORE(ptr, x) (*(VT *)(ptr) = (x))
#define VSPLAT(x) ((VT){0} + (FA_T)(x))

/* Unaligned vector load and store. */
FA_INLINE VT FA_FN(fa_loadu_)(const FA_T *x)
{
    VT v;
    __builtin_memcpy(&v, x, sizeof(VT));
    return v;
}

FA_INLINE void FA_FN(fa_storeu_)(FA_T *x, VT v) { __builtin_memcpy(x, &v, sizeof(VT)); }

#if FA_S_KIND != 0
#define VH FA_FN(fa_vh_)
typedef uint16_t VH __attribute__((vector_size(FA_VBYTES / 2)));
#endif

/* One stored element to the compute type, and back (round to nearest
 * even, as the conversion instructions do). */
FA_INLINE FA_T FA_FN(fa_s2t_)(FA_S x)
{
#if FA_S_KIND == 0
    return x;
#elif FA_S_KIND == 1 && defined(__F16C__)
    return _cvtsh_ss(x);
#elif FA_S_KIND == 1
    return fa_half_to_f32(x);
#else
    return fa_bf16_to_f32(x);
#endif
}

FA_INLINE FA_S FA_FN(fa_t2s_)(FA_T x)
{
#if FA_S_KIND == 0
    return x;
#elif FA_S_KIND == 1 && defined(__F16C__)
    return (FA_S)_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT);
#elif FA_S_KIND == 1
    return fa_f32_to_half(x);
#else
    return fa_f32_to_bf16(x);
#endif
}

/* VL stored elements (unaligned) widened to a vector, and back. */
FA_INLINE VT FA_FN(fa_loads_)(const FA_S *x)
{
#if FA_S_KIND == 0
    return FA_FN(fa_loadu_)(x);
#elif FA_S_KIND == 1 && defined(__F16C__) && FA_VBYTES == 64
    return (VT)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)x));
#elif FA_S_KIND == 1 && defined(__F16C__) && FA_VBYTES == 32
    return (VT)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)x));
#elif FA_S_KIND == 1
    VT v;
    for (int l = 0; l < VL; l++) v[l] = fa_half_to_f32(x[l]);
    return v;
#else
    VH h;
    __builtin_memcpy(&h, x, sizeof(VH));
    return (VT)(__builtin_convertvector(h, VU) << 16);
#endif
}

FA_INLINE void FA_FN(fa_stores_)(FA_S *x, VT v)
{
#if FA_S_KIND == 0
    FA_FN(fa_storeu_)(x, v);
#elif FA_S_KIND == 1 && defined(__F16C__) && FA_VBYTES == 64
    _mm256_storeu_si256((__m256i *)x, _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT));
#elif FA_S_KIND == 1 && defined(__F16C__) && FA_VBYTES == 32
    _mm_storeu_si128((__m128i *)x, _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT));
#elif FA_S_KIND == 1
    for (int l = 0; l < VL; l++) x[l] = fa_f32_to_half(v[l]);
#else
    /* round to nearest even on the top 16 bits; NaN stays a quiet NaN */
    const VU u = (VU)v;
    const VU nan = (VU)(v != v);
    const VU r = ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16 & ~nan) | (((u >> 16) | 0x40u) & nan);
    const VH h = __builtin_convertvector(r, VH);
    __builtin_memcpy(x, &h, sizeof(VH));
#endif
}

/* Lane select: mask ? a : b (mask lanes are all ones or all zeros). */
FA_INLINE VT FA_FN(fa_vsel_)(VI mask, VT a, VT b)
{
    return (VT)(((VI)a & mask) | ((VI)b & ~mask));
}

/* Lane-wise max that keeps b when a is NaN (the running max ignores NaN
 * scores; they still propagate through exp2 into the sums). */
FA_INLINE VT FA_FN(fa_vmax_)(VT a, VT b)
{
#if defined(FA_VMAX_PS) && !FA_IS_DOUBLE
    return (VT)FA_VMAX_PS(a, b);
#elif defined(FA_VMAX_PD) && FA_IS_DOUBLE
    return (VT)FA_VMAX_PD(a, b);
#else
    return FA_FN(fa_vsel_)(a > b, a, b);
#endif
}

/*
 * exp2 for x <= 0 (also -inf and NaN), the only range the softmax needs.
 * Range reduction x = n + f with n = round(x), |f| <= 1/2, by the
 * add-a-magic-constant trick; 2^f by a polynomial fitted on [-1/2, 1/2]
 * (degree 6 for float: fit error 2e-9 relative; degree 12 for double:
 * 4e-20); 2^n built in the exponent field.  x is first clamped to -127
 * (-1023 for double): there n = -127 makes 2^n's bit pattern +0, so every
 * x below about -126.5 (including -inf) gives exactly 0, and the tiny
 * values in between never matter next to a row sum >= 1.  The clamp is a
 * lane max whose NaN operand wins, so NaN in gives NaN out.  Measured error
 * against a float64 exp2: see tests/test_exp.py and the README.
 */
FA_INLINE VT FA_FN(fa_exp2_)(VT x)
{
#if FA_IS_DOUBLE
    const VT magic = VSPLAT(6755399441055744.0); /* 1.5 * 2^52 */
    x = FA_FN(fa_vmax_)(VSPLAT(-1023.0), x);
    VT t = x + magic;
    VT n = t - magic;
    VT f = x - n;
    /* unsigned lanes: a NaN lane's garbage must not be a signed overflow */
    VU ni = (VU)t - (VU)magic;
    VT pow2n = (VT)((ni + 1023) << 52);
    VT p = VSPLAT(2.5733568308756891235e-11);
    p = p * f + VSPLAT(4.4566753410492058782e-10);
    p = p * f + VSPLAT(7.0548943863483480445e-9);
    p = p * f + VSPLAT(1.017805119296064896e-7);
    p = p * f + VSPLAT(1.3215486815999976975e-6);
    p = p * f + VSPLAT(1.5252733856293466416e-5);
    p = p * f + VSPLAT(1.5403530393362755291e-4);
    p = p * f + VSPLAT(1.3333558146390352775e-3);
    p = p * f + VSPLAT(9.6181291076284830543e-3);
    p = p * f + VSPLAT(5.5504108664821698992e-2);
    p = p * f + VSPLAT(2.4022650695910071228e-1);
    p = p * f + VSPLAT(6.9314718055994530835e-1);
    p = p * f + VSPLAT(1.0);
#else
    const VT magic = VSPLAT(12582912.0f); /* 1.5 * 2^23 */
    x = FA_FN(fa_vmax_)(VSPLAT(-127.0f), x);
    VT t = x + magic;
    VT n = t - magic;
    VT f = x - n;
    /* unsigned lanes: a NaN lane's garbage must not be a signed overflow */
    VU ni = (VU)t - (VU)magic;
    VT pow2n = (VT)((ni + 127) << 23);
    VT p = VSPLAT(1.5461444698569129083e-4f);
    p = p * f + VSPLAT(1.340042817761583794e-3f);
    p = p * f + VSPLAT(9.6180566785246380754e-3f);
    p = p * f + VSPLAT(5.5503272266703020589e-2f);
    p = p * f + VSPLAT(2.4022650922288758071e-1f);
    p = p * f + VSPLAT(6.9314720670283259577e-1f);
    p = p * f + VSPLAT(1.0f);
#endif
    /* NaN * pow2n stays NaN; a clamped lane has pow2n == +0. */
    return p * pow2n;
}

#if FA_S_KIND == 0
/* Exported for the exp accuracy test: y[i] = exp2(x[i]) for n values
 * (n a multiple of the vector length is not required). */
void FA_FN(fa_exp2_array_)(const FA_T *x, FA_T *y, int64_t n)
{
    int64_t i = 0;
    for (; i + VL <= n; i += VL) {
        VT xv;
        __builtin_memcpy(&xv, x + i, sizeof(VT));
        VT yv = FA_FN(fa_exp2_)(xv);
        __builtin_memcpy(y + i, &yv, sizeof(VT));
    }
    if (i < n) {
        FA_T buf[VL];
        int r = (int)(n - i);
        for (int l = 0; l < VL; l++) buf[l] = l < r ? x[i + l] : (FA_T)0;
        VT xv;
        __builtin_memcpy(&xv, buf, sizeof(VT));
        VT yv = FA_FN(fa_exp2_)(xv);
        __builtin_memcpy(buf, &yv, sizeof(VT));
        for (int l = 0; l < r; l++) y[i + l] = buf[l];
    }
}
#endif

/*
 * Q.K^T micro-kernel: scores of ib query vectors against jb keys, summed
 * over all d, accumulated in ib*jb vector registers.  Per d: ib vector loads
 * of the packed Q^T and jb scalar broadcasts of K (an FMA with a memory
 * broadcast operand on AVX-512).  ib, jb and k_sd are compile-time
 * constants after inlining, so the loops unroll into registers.
 */
FA_INLINE void FA_FN(fa_qk_micro_)(const int ib, const int jb,
                                   const FA_T *restrict qt,
                                   const FA_T *restrict k, int64_t k_sn,
                                   const int64_t k_sd, int64_t d,
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
            const FA_T kv = krow[j][c * k_sd];
#pragma GCC unroll 16
            for (int i = 0; i < ib; i++) acc[i][j] += qv[i] * kv;
        }
    }
#pragma GCC unroll 16
    for (int j = 0; j < jb; j++)
#pragma GCC unroll 16
        for (int i = 0; i < ib; i++) VSTORE(st + j * FA_BQ + i * VL, acc[i][j]);
    /* The block's row max, while the scores are still in registers. */
#pragma GCC unroll 16
    for (int i = 0; i < ib; i++) {
        VT mx = VLOAD(bmax + i * VL);
#pragma GCC unroll 16
        for (int j = 0; j < jb; j++) mx = FA_FN(fa_vmax_)(acc[i][j], mx);
        VSTORE(bmax + i * VL, mx);
    }
}

/* Scores of nv query vectors against nb keys starting at k. */
FA_INLINE void FA_FN(fa_qk_tile_)(int nv, int nb, const FA_T *qt,
                                  const FA_T *k, int64_t k_sn,
                                  const int64_t k_sd, int64_t d, FA_T *st,
                                  FA_T *bmax)
{
    int iv = 0;
    for (; iv + FA_QK_IB <= nv; iv += FA_QK_IB) {
        int j = 0;
        for (; j + FA_QK_JB <= nb; j += FA_QK_JB)
            FA_FN(fa_qk_micro_)(FA_QK_IB, FA_QK_JB, qt + iv * VL,
                                k + j * k_sn, k_sn, k_sd, d,
                                st + j * FA_BQ + iv * VL, bmax + iv * VL);
        for (; j < nb; j++)
            FA_FN(fa_qk_micro_)(FA_QK_IB, 1, qt + iv * VL, k + j * k_sn,
                                k_sn, k_sd, d, st + j * FA_BQ + iv * VL, bmax + iv * VL);
    }
    for (; iv < nv; iv++) {
        int j = 0;
        for (; j + FA_QK_JB <= nb; j += FA_QK_JB)
            FA_FN(fa_qk_micro_)(1, FA_QK_JB, qt + iv * VL, k + j * k_sn,
                                k_sn, k_sd, d, st + j * FA_BQ + iv * VL, bmax + iv * VL);
        for (; j < nb; j++)
            FA_FN(fa_qk_micro_)(1, 1, qt + iv * VL, k + j * k_sn, k_sn,
                                k_sd, d, st + j * FA_BQ + iv * VL, bmax + iv * VL);
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
        for (; e < dv; e++)
            FA_FN(fa_pv_micro_)(FA_PV_IB, 1, pt + iv * VL, v + e * v_sd,
                                v_sn, v_sd, nb, alpha + iv * VL,
                                ot + e * FA_BQ + iv * VL);
    }
    for (; iv < nv; iv++) {
        int64_t e = 0;
        for (; e + FA_PV_EB <= dv; e += FA_PV_EB)
            FA_FN(fa_pv_micro_)(1, FA_PV_EB, pt + iv * VL, v + e * v_sd,
                                v_sn, v_sd, nb, alpha + iv * VL,
                                ot + e * FA_BQ + iv * VL);
        for (; e < dv; e++)
            FA_FN(fa_pv_micro_)(1, 1, pt + iv * VL, v + e * v_sd, v_sn,
                                v_sd, nb, alpha + iv * VL,
                                ot + e * FA_BQ + iv * VL);
    }
}

/*
 * Read the mask for rows x keys [j0, j0 + nb) into mt[key][row] as an
 * additive term (0 visible, -inf hidden, or the user's additive value; an
 * additive -inf hides the key like a False in a bool mask).  Returns nonzero if any entry is visible,
 * so the caller can skip a block that is masked for every row.
 */
static int FA_FN(fa_load_mask_)(const fa_params *p, const fa_tile *t,
                                int64_t j0, int nb, FA_T *mt)
{
    const FA_T ninf = -(FA_T)__builtin_inf();
    const int64_t sk = p->m_sk;
    int any = 0;
    for (int r = 0; r < t->rows; r++) {
        if (p->mask_kind == FA_MASK_BOOL) {
            const uint8_t *m = (const uint8_t *)t->mask_row[r] + j0 * sk;
            for (int j = 0; j < nb; j++) {
                const int vis = m[j * sk] != 0;
                any |= vis;
                mt[j * FA_BQ + r] = vis ? (FA_T)0 : ninf;
            }
        } else if (p->mask_kind == FA_MASK_ADD_F32) {
            const float *m = (const float *)t->mask_row[r] + j0 * sk;
            for (int j = 0; j < nb; j++) {
                const FA_T a = (FA_T)m[j * sk];
                any |= a != ninf;
                mt[j * FA_BQ + r] = a;
            }
        } else {
            const double *m = (const double *)t->mask_row[r] + j0 * sk;
            for (int j = 0; j < nb; j++) {
                const FA_T a = (FA_T)m[j * sk];
                any |= a != ninf;
                mt[j * FA_BQ + r] = a;
            }
        }
    }
    /* Padded lanes see everything: keeps their arithmetic finite. */
    for (int r = t->rows; r < FA_BQ; r++)
        for (int j = 0; j < nb; j++) mt[j * FA_BQ + r] = 0;
    return any;
}

/* In-register transpose of a VL x VL block: x[i][l] -> x[l][i].  Stage h
 * swaps the off-diagonal h x h blocks of every 2h x 2h block (two-input
 * shuffles with constant masks); after all log2(VL) stages every element
 * has had its row and column bits exchanged. */
FA_INLINE void FA_FN(fa_transpose_)(VT *x)
{
#pragma GCC unroll 8
    for (int h = VL / 2; h >= 1; h /= 2) {
        VI lo, hi;
#pragma GCC unroll 16
        for (int l = 0; l < VL; l++) {
            lo[l] = (l & h) ? VL + l - h : l;
            hi[l] = (l & h) ? VL + l : l + h;
        }
#pragma GCC unroll 16
        for (int i = 0; i < VL; i++) {
            if (i & h) continue;
            const VT a = x[i], b = x[i + h];
            x[i] = __builtin_shuffle(a, b, lo);
            x[i + h] = __builtin_shuffle(a, b, hi);
        }
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

/* The sign bit in every lane (VSPLAT(-0.0) would be +0: 0 + -0 = +0). */
#if FA_IS_DOUBLE
#define FA_SIGN_BITS ((VU){0} + ((uint64_t)1 << 63))
#else
#define FA_SIGN_BITS ((VU){0} + ((uint32_t)1 << 31))
#endif

/* Lane-wise |x|. */
FA_INLINE VT FA_FN(fa_vabs_)(VT x)
{
    return (VT)((VU)x & ~FA_SIGN_BITS);
}

/*
 * tanh for the soft cap.  |x| >= FA_TANH_SMALL: (1 - e) / (1 + e) with
 * e = exp(-2|x|) = exp2(-2 log2(e) |x|) <= 0.45 (no cancellation in 1 - e);
 * below it, the odd Taylor series to x^13, whose first omitted term is
 * below half an ulp there (x^15 * 0.0015 at 0.4 is 4e-9 relative for float;
 * double uses 0.05).  The sign is copied back; NaN stays NaN, +-inf gives
 * +-1.
 */
#if FA_IS_DOUBLE
#define FA_TANH_SMALL 0.05
#else
#define FA_TANH_SMALL 0.4f
#endif
FA_INLINE VT FA_FN(fa_tanh_)(VT x)
{
    const VT ax = FA_FN(fa_vabs_)(x);
    const VT e = FA_FN(fa_exp2_)(ax * VSPLAT(-2.8853900817779268147));
#if defined(FA_VRCP_PS) && !FA_IS_DOUBLE
    /* 1 / (1 + e) from the 14-bit reciprocal estimate and one Newton step
     * (relative error ~2^-28, far below float's half ulp; 1 + e is in
     * [1, 2], so no special values reach it) */
    const VT den = VSPLAT(1) + e;
    VT rcp = (VT)FA_VRCP_PS(den);
    rcp = rcp * (VSPLAT(2) - den * rcp);
    const VT big = (VSPLAT(1) - e) * rcp;
#else
    const VT big = (VSPLAT(1) - e) / (VSPLAT(1) + e);
#endif
    const VT x2 = ax * ax;
    VT p = VSPLAT(21844.0 / 6081075.0);
    p = p * x2 + VSPLAT(-1382.0 / 155925.0);
    p = p * x2 + VSPLAT(62.0 / 2835.0);
    p = p * x2 + VSPLAT(-17.0 / 315.0);
    p = p * x2 + VSPLAT(2.0 / 15.0);
    p = p * x2 + VSPLAT(-1.0 / 3.0);
    const VT small = ax + ax * x2 * p;
    const VT t = FA_FN(fa_vsel_)(ax < VSPLAT(FA_TANH_SMALL), small, big);
    /* copy the sign of x (NaN keeps its bits through the select) */
    return (VT)((VU)t | ((VU)x & FA_SIGN_BITS));
}

/* Exported for the soft-cap accuracy test: y[i] = tanh(x[i]). */
#if FA_S_KIND == 0
void FA_FN(fa_tanh_array_)(const FA_T *x, FA_T *y, int64_t n)
{
    for (int64_t i = 0; i < n; i += VL) {
        FA_T buf[VL];
        const int r = (int)(n - i < VL ? n - i : VL);
        for (int l = 0; l < VL; l++) buf[l] = l < r ? x[i + l] : (FA_T)0;
        const VT yv = FA_FN(fa_tanh_)(FA_FN(fa_loadu_)(buf));
        FA_FN(fa_storeu_)(buf, yv);
        for (int l = 0; l < r; l++) y[i + l] = buf[l];
    }
}
#endif

/* Per-tile row data of the score pipeline, in lanes (padded lanes 0). */
typedef struct {
    int64_t j_start, j_end;   /* keys worth visiting */
    int64_t lo_max, hi_min;   /* a block inside [lo_max, hi_min) needs no band mask */
} FA_FN(fa_range_);

/* The keys a tile visits: [k_lo, k_hi) cut to the union of its rows' bands. */
FA_INLINE FA_FN(fa_range_) FA_FN(fa_tile_range_)(const fa_tile *t)
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
FA_INLINE int FA_FN(fa_band_meets_)(const fa_tile *t, int64_t j0, int nb)
{
    for (int r = 0; r < t->rows; r++)
        if (t->jlo[r] < j0 + nb && t->jhi[r] > j0 && t->jlo[r] < t->jhi[r]) return 1;
    return 0;
}

/*
 * Scores of one key block, st[key][row], through the whole pipeline:
 * Q.K^T (scale folded into Q), soft cap, ALiBi bias, the mask terms mt
 * (when the call has a mask), and the band (when `band`).  bmax receives
 * each lane's block max when it is still exact on return (the return value
 * is 0); 1 means the bias or masking changed scores and the caller must
 * take the max again.
 */
FA_INLINE int FA_FN(fa_block_scores_)(const fa_params *p, const fa_tile *t,
                                      int64_t j0, int nb, int nv, const FA_T *qt,
                                      const FA_T *kb, int64_t k_sn, int64_t k_sd,
                                      const FA_T *slope_v, FA_T *dist_v,
                                      const FA_T *mt, int band, FA_T *st, FA_T *bmax)
{
    const FA_T ninf = -(FA_T)__builtin_inf();
    const int64_t d = p->d;
    for (int i = 0; i < nv; i++) VSTORE(bmax + i * VL, VSPLAT(ninf));
    if (k_sd == 1)
        FA_FN(fa_qk_tile_)(nv, nb, qt, kb, k_sn, 1, d, st, bmax);
    else
        FA_FN(fa_qk_tile_)(nv, nb, qt, kb, k_sn, k_sd, d, st, bmax);
    int masked = 0;

    if (p->softcap > 0) {
        /* tanh is increasing, so the block max is capped like the scores */
        const VT cap = VSPLAT(p->softcap), inv = VSPLAT(1.0 / p->softcap);
        for (int j = 0; j < nb; j++)
            for (int i = 0; i < nv; i++) {
                FA_T *sp = st + j * FA_BQ + i * VL;
                VSTORE(sp, cap * FA_FN(fa_tanh_)(VLOAD(sp) * inv));
            }
        for (int i = 0; i < nv; i++)
            VSTORE(bmax + i * VL, cap * FA_FN(fa_tanh_)(VLOAD(bmax + i * VL) * inv));
    }
    if (p->alibi) {
        /* -slope * |pos - j|, with the distance counted from this block */
        masked = 1;
        for (int r = 0; r < t->rows; r++) dist_v[r] = (FA_T)(t->pos[r] - j0);
        for (int i = 0; i < nv; i++) {
            const VT sl = VLOAD(slope_v + i * VL), dist = VLOAD(dist_v + i * VL);
            for (int j = 0; j < nb; j++) {
                FA_T *sp = st + j * FA_BQ + i * VL;
                VSTORE(sp, VLOAD(sp) - sl * FA_FN(fa_vabs_)(dist - VSPLAT(j)));
            }
        }
    }
    if (p->mask_kind != FA_MASK_NONE) {
        masked = 1;
        for (int j = 0; j < nb; j++)
            for (int i = 0; i < nv; i++) {
                /* hidden keys become -inf whatever their score (a NaN or
                 * inf score there must not reach the row) */
                FA_T *sp = st + j * FA_BQ + i * VL;
                const VT m = VLOAD(mt + j * FA_BQ + i * VL);
                VSTORE(sp, FA_FN(fa_vsel_)(m == VSPLAT(ninf), m, VLOAD(sp) + m));
            }
    }
    if (band) {
        masked = 1;
        for (int r = 0; r < t->rows; r++) {
            int64_t lo = t->jlo[r] - j0, hi = t->jhi[r] - j0;
            if (lo > nb) lo = nb;
            if (hi < lo) hi = lo;
            for (int64_t j = 0; j < lo; j++) st[j * FA_BQ + r] = ninf;
            for (int64_t j = hi < 0 ? 0 : hi; j < nb; j++) st[j * FA_BQ + r] = ninf;
        }
    }
    return masked;
}

/* Shared tile setup: the scratch layout, the packed Q and the ALiBi lanes. */
typedef struct {
    FA_T *qt, *st, *mt, *ot, *row_max, *row_sum, *alpha, *bmax, *slope_v, *dist_v;
    FA_T *kc, *vc; /* widened key and value blocks (16-bit types only) */
    int nv, lanes;
} FA_FN(fa_scr_);

FA_INLINE FA_FN(fa_scr_) FA_FN(fa_tile_setup_)(const fa_params *p, const fa_tile *t,
                                               void *scratch)
{
    FA_FN(fa_scr_) w;
    const int64_t d = p->d, dv = p->dv;
    w.nv = (t->rows + VL - 1) / VL; /* query vectors in use */
    w.lanes = w.nv * VL;
    /* All sizes are multiples of FA_BQ elements, so every part stays
     * aligned like the base (FA_ALIGN). */
    w.qt = (FA_T *)scratch;          /* d x BQ: packed, scaled Q^T */
    w.st = w.qt + d * FA_BQ;         /* BK x BQ: scores, then probs */
    w.mt = w.st + FA_BK * FA_BQ;     /* BK x BQ: mask terms */
    w.ot = w.mt + FA_BK * FA_BQ;     /* dv x BQ: output accumulator */
    w.row_max = w.ot + dv * FA_BQ;   /* BQ: running max */
    w.row_sum = w.row_max + FA_BQ;   /* BQ: running sum */
    w.alpha = w.row_sum + FA_BQ;     /* BQ: rescale of this block */
    w.bmax = w.alpha + FA_BQ;        /* BQ: max score of this block */
    w.slope_v = w.bmax + FA_BQ;      /* BQ: ALiBi slopes */
    w.dist_v = w.slope_v + FA_BQ;    /* BQ: ALiBi distances */
    w.kc = w.dist_v + FA_BQ;         /* BK x d (16-bit types) */
    w.vc = w.kc + FA_BK * d;         /* BK x dv (16-bit types) */

    FA_FN(fa_pack_q_)(t, d, p->q_sd, (FA_T)p->scale, w.lanes, w.qt);
    for (int r = 0; r < w.lanes; r++) {
        w.slope_v[r] = r < t->rows ? (FA_T)t->slope[r] : (FA_T)0;
        w.dist_v[r] = 0;
    }
    return w;
}

/* The key block's rows as compute-type pointers (widened for 16-bit). */
#if FA_S_KIND != 0
#define FA_BLOCK(base, j0, sn, sd, nb, n, buf, out_ptr, out_sn, out_sd) \
    do {                                                                 \
        FA_FN(fa_widen_rows_)((base) + (j0) * (sn), sn, sd, nb, n, buf); \
        out_ptr = (buf);                                                 \
        out_sn = (n);                                                    \
        out_sd = 1;                                                      \
    } while (0)
#else
#define FA_BLOCK(base, j0, sn, sd, nb, n, buf, out_ptr, out_sn, out_sd) \
    do {                                                                 \
        (void)(n);                                                       \
        out_ptr = (base) + (j0) * (sn);                                  \
        out_sn = (sn);                                                   \
        out_sd = (sd);                                                   \
    } while (0)
#endif

/* The tile: online softmax attention of t->rows query rows over keys
 * [t->k_lo, t->k_hi) (and inside each row's band), written normalized to
 * t->o_row and t->lse_row. */
void FA_FN(fa_tile_)(const fa_params *p, const fa_tile *t, void *scratch)
{
    const int64_t d = p->d, dv = p->dv;
    const int rows = t->rows;
    const FA_T ninf = -(FA_T)__builtin_inf();
    const VT log2e = VSPLAT(1.4426950408889634074);
    FA_FN(fa_scr_) w = FA_FN(fa_tile_setup_)(p, t, scratch);
    const int nv = w.nv, lanes = w.lanes;
    FA_T *st = w.st, *ot = w.ot, *row_max = w.row_max, *row_sum = w.row_sum;
    FA_T *alpha = w.alpha, *bmax = w.bmax;

    for (int64_t e = 0; e < dv; e++)
        for (int r = 0; r < lanes; r++) ot[e * FA_BQ + r] = 0;
    for (int r = 0; r < lanes; r++) {
        row_max[r] = ninf;
        row_sum[r] = 0;
    }

    /* Keys outside every row's band are never read; blocks inside all of
     * them need no band masking. */
    const FA_FN(fa_range_) g = FA_FN(fa_tile_range_)(t);
    const FA_S *kbase = (const FA_S *)t->k;
    const FA_S *vbase = (const FA_S *)t->v;

    for (int64_t j0 = g.j_start; j0 < g.j_end; j0 += FA_BK) {
        const int nb = (int)(g.j_end - j0 < FA_BK ? g.j_end - j0 : FA_BK);
        const int band = j0 < g.lo_max || j0 + nb > g.hi_min;
        if (band && !FA_FN(fa_band_meets_)(t, j0, nb)) continue;
        if (p->mask_kind != FA_MASK_NONE && !FA_FN(fa_load_mask_)(p, t, j0, nb, w.mt))
            continue; /* every row masked for this block */

        const FA_T *kb;
        int64_t k_sn, k_sd;
        FA_BLOCK(kbase, j0, p->k_sn, p->k_sd, nb, d, w.kc, kb, k_sn, k_sd);
        const int masked = FA_FN(fa_block_scores_)(p, t, j0, nb, nv, w.qt, kb, k_sn, k_sd,
                                                   w.slope_v, w.dist_v, w.mt, band, st, bmax);

        /* Online softmax, one lane per query row. */
        for (int i = 0; i < nv; i++) {
            const VT m_old = VLOAD(row_max + i * VL);
            VT m_new = m_old;
            if (masked) {
                /* masking changed the scores: take the max again */
                for (int j = 0; j < nb; j++)
                    m_new = FA_FN(fa_vmax_)(VLOAD(st + j * FA_BQ + i * VL), m_new);
            } else {
                m_new = FA_FN(fa_vmax_)(VLOAD(bmax + i * VL), m_new);
            }
            /* A row with no finite score yet keeps reference 0. */
            const VT m_ref = FA_FN(fa_vsel_)(m_new == VSPLAT(ninf), VSPLAT(0), m_new);
            const VT a = FA_FN(fa_exp2_)((m_old - m_ref) * log2e);
            VT sum = VSPLAT(0);
            for (int j = 0; j < nb; j++) {
                FA_T *sp = st + j * FA_BQ + i * VL;
                const VT pj = FA_FN(fa_exp2_)((VLOAD(sp) - m_ref) * log2e);
                VSTORE(sp, pj);
                sum += pj;
            }
            VSTORE(row_sum + i * VL, VLOAD(row_sum + i * VL) * a + sum);
            VSTORE(row_max + i * VL, m_new);
            VSTORE(alpha + i * VL, a);
        }

        /* O = O * alpha + P.V */
        const FA_T *vb;
        int64_t v_sn, v_sd;
        FA_BLOCK(vbase, j0, p->v_sn, p->v_sd, nb, dv, w.vc, vb, v_sn, v_sd);
        if (v_sd == 1)
            FA_FN(fa_pv_tile_)(nv, nb, st, vb, v_sn, 1, dv, alpha, ot);
        else
            FA_FN(fa_pv_tile_)(nv, nb, st, vb, v_sn, v_sd, dv, alpha, ot);
    }

    /* Normalize once and write out through the output strides: unit
     * column stride in VL x VL blocks through the transpose, the rest (and
     * rows that saw no key, which must be exact zeros) element by element.
     * Split-KV partials (out_compute) stay in the compute type. */
    const int64_t o_sd = p->o_sd;
    const int wide = t->out_compute || FA_S_KIND == 0;
    int64_t e0 = 0;
    if (VL > 1 && o_sd == 1) {
        for (int r = 0; r < lanes; r++)
            alpha[r] = row_sum[r] == 0 ? (FA_T)0 : (FA_T)1 / row_sum[r];
        for (; e0 + VL <= dv; e0 += VL)
            for (int r0 = 0; r0 < rows; r0 += VL) {
                VT x[VL];
                const VT inv = VLOAD(alpha + r0);
#pragma GCC unroll 16
                for (int i = 0; i < VL; i++) x[i] = VLOAD(ot + (e0 + i) * FA_BQ + r0) * inv;
                FA_FN(fa_transpose_)(x);
#pragma GCC unroll 16
                for (int i = 0; i < VL; i++) {
                    if (r0 + i >= rows) continue;
                    if (wide) FA_FN(fa_storeu_)((FA_T *)t->o_row[r0 + i] + e0, x[i]);
                    else FA_FN(fa_stores_)((FA_S *)t->o_row[r0 + i] + e0, x[i]);
                }
            }
    }
    for (int r = 0; r < rows; r++) {
        const FA_T l = row_sum[r];
        FA_T *lse = (FA_T *)t->lse_row[r];
        const FA_T inv = l == 0 ? (FA_T)0 : (FA_T)1 / l;
        /* No visible key: exact zeros over the whole row (and -inf lse). */
        const int64_t from = l == 0 ? 0 : e0;
        if (wide) {
            FA_T *o = (FA_T *)t->o_row[r];
            for (int64_t e = from; e < dv; e++) o[e * o_sd] = l == 0 ? 0 : ot[e * FA_BQ + r] * inv;
        } else {
            FA_S *o = (FA_S *)t->o_row[r];
            for (int64_t e = from; e < dv; e++)
                o[e * o_sd] = FA_FN(fa_t2s_)(l == 0 ? 0 : ot[e * FA_BQ + r] * inv);
        }
        if (lse) *lse = l == 0 ? ninf : (FA_T)((double)row_max[r] + __builtin_log((double)l));
    }
}

/* The weights pass: exp(score - lse) for every visited (row, key), through
 * the same score pipeline as fa_tile_, so the weights are the probabilities
 * the attention used.  lse_row is read; rows with lse -inf are left alone. */
void FA_FN(fa_weights_)(const fa_params *p, const fa_tile *t, void *scratch)
{
    const int64_t d = p->d;
    const int rows = t->rows;
    const FA_T ninf = -(FA_T)__builtin_inf();
    const VT log2e = VSPLAT(1.4426950408889634074);
    FA_FN(fa_scr_) w = FA_FN(fa_tile_setup_)(p, t, scratch);
    const int nv = w.nv;
    FA_T *st = w.st, *row_lse = w.row_max;
    for (int r = 0; r < w.lanes; r++)
        row_lse[r] = r < rows ? *(const FA_T *)t->lse_row[r] : ninf;

    const FA_FN(fa_range_) g = FA_FN(fa_tile_range_)(t);
    const FA_S *kbase = (const FA_S *)t->k;
    const int64_t w_sk = p->w_sk;
    for (int64_t j0 = g.j_start; j0 < g.j_end; j0 += FA_BK) {
        const int nb = (int)(g.j_end - j0 < FA_BK ? g.j_end - j0 : FA_BK);
        const int band = j0 < g.lo_max || j0 + nb > g.hi_min;
        if (band && !FA_FN(fa_band_meets_)(t, j0, nb)) continue;
        if (p->mask_kind != FA_MASK_NONE && !FA_FN(fa_load_mask_)(p, t, j0, nb, w.mt))
            continue;
        const FA_T *kb;
        int64_t k_sn, k_sd;
        FA_BLOCK(kbase, j0, p->k_sn, p->k_sd, nb, d, w.kc, kb, k_sn, k_sd);
        FA_FN(fa_block_scores_)(p, t, j0, nb, nv, w.qt, kb, k_sn, k_sd, w.slope_v,
                                w.dist_v, w.mt, band, st, w.bmax);
        for (int i = 0; i < nv; i++) {
            const VT l = VLOAD(row_lse + i * VL);
            const VI none = l == VSPLAT(ninf);
            for (int j = 0; j < nb; j++) {
                FA_T *sp = st + j * FA_BQ + i * VL;
                const VT pj = FA_FN(fa_exp2_)((VLOAD(sp) - l) * log2e);
                VSTORE(sp, FA_FN(fa_vsel_)(none, VSPLAT(0), pj));
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


/* ------------------------------------------------------------------------
 * Few-row kernel (decode: Nq of 1 to a few rows per kv head).  With one
 * query row, vectors along the queries would leave all lanes but one idle,
 * so here vectors run along d for Q.K (a dot product per key, reduced
 * across lanes) and along dv for P.V, and the softmax runs along the keys.
 * It needs unit d-strides for K and V (the driver checks).  Rows share each
 * key block while it is hot in L1.  16-bit keys and values are widened in
 * registers as they are loaded.
 * ---------------------------------------------------------------------- */


/* Sum (or max) of the lanes by log2(VL) butterfly steps. */
FA_INLINE FA_T FA_FN(fa_hsum_)(VT x)
{
    VI idx;
#pragma GCC unroll 16
    for (int i = 0; i < VL; i++) idx[i] = i;
#pragma GCC unroll 8
    for (int s = VL / 2; s >= 1; s /= 2) x += __builtin_shuffle(x, idx ^ s);
    return x[0];
}

FA_INLINE FA_T FA_FN(fa_hmax_)(VT x)
{
    VI idx;
#pragma GCC unroll 16
    for (int i = 0; i < VL; i++) idx[i] = i;
#pragma GCC unroll 8
    for (int s = VL / 2; s >= 1; s /= 2) x = FA_FN(fa_vmax_)(__builtin_shuffle(x, idx ^ s), x);
    return x[0];
}

#if defined(FA_BF16DP) && FA_S_KIND == 2
/* bfloat16 with the AVX512-BF16 dot-product instruction: q holds the row's
 * raw (unscaled) bfloat16 values, zero-padded to a multiple of 32;
 * vdpbf16ps multiplies pairs of bfloat16 exactly and adds them into float32
 * lanes, 32 elements per instruction.  The caller applies the scale. */
#define FA_DOT_UNSCALED 1
FA_INLINE void FA_FN(fa_dot4_)(const FA_T *restrict qf, const FA_S *restrict k,
                               int64_t k_sn, int64_t d, FA_T *restrict out)
{
    const uint16_t *q = (const uint16_t *)qf;
    __m512 a[4];
    const FA_S *kr[4];
    for (int u = 0; u < 4; u++) { a[u] = _mm512_setzero_ps(); kr[u] = k + u * k_sn; }
    int64_t c = 0;
    for (; c + 32 <= d; c += 32) {
        const __m512bh qv = (__m512bh)_mm512_loadu_si512((const void *)(q + c));
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++)
            a[u] = _mm512_dpbf16_ps(a[u], qv, (__m512bh)_mm512_loadu_si512((const void *)(kr[u] + c)));
    }
    for (int u = 0; u < 4; u++) {
        FA_T s = _mm512_reduce_add_ps(a[u]);
        for (int64_t e = c; e < d; e++) s += fa_bf16_to_f32(q[e]) * fa_bf16_to_f32(kr[u][e]);
        out[u] = s;
    }
}

FA_INLINE FA_T FA_FN(fa_dot1_)(const FA_T *restrict qf, const FA_S *restrict k, int64_t d)
{
    const uint16_t *q = (const uint16_t *)qf;
    __m512 a = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 32 <= d; c += 32)
        a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_loadu_si512((const void *)(q + c)),
                             (__m512bh)_mm512_loadu_si512((const void *)(k + c)));
    FA_T s = _mm512_reduce_add_ps(a);
    for (; c < d; c++) s += fa_bf16_to_f32(q[c]) * fa_bf16_to_f32(k[c]);
    return s;
}
#else
#define FA_DOT_UNSCALED 0
/* Dot products of one scaled query row with 4 keys (d contiguous). */
FA_INLINE void FA_FN(fa_dot4_)(const FA_T *restrict q, const FA_S *restrict k,
                               int64_t k_sn, int64_t d, FA_T *restrict out)
{
    VT a0 = VSPLAT(0), a1 = VSPLAT(0), a2 = VSPLAT(0), a3 = VSPLAT(0);
    const FA_S *k0 = k, *k1 = k + k_sn, *k2 = k + 2 * k_sn, *k3 = k + 3 * k_sn;
    int64_t c = 0;
    for (; c + VL <= d; c += VL) {
        const VT qv = VLOAD(q + c);
        a0 += qv * FA_FN(fa_loads_)(k0 + c);
        a1 += qv * FA_FN(fa_loads_)(k1 + c);
        a2 += qv * FA_FN(fa_loads_)(k2 + c);
        a3 += qv * FA_FN(fa_loads_)(k3 + c);
    }
    FA_T s0 = FA_FN(fa_hsum_)(a0), s1 = FA_FN(fa_hsum_)(a1);
    FA_T s2 = FA_FN(fa_hsum_)(a2), s3 = FA_FN(fa_hsum_)(a3);
    for (; c < d; c++) {
        s0 += q[c] * FA_FN(fa_s2t_)(k0[c]);
        s1 += q[c] * FA_FN(fa_s2t_)(k1[c]);
        s2 += q[c] * FA_FN(fa_s2t_)(k2[c]);
        s3 += q[c] * FA_FN(fa_s2t_)(k3[c]);
    }
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
}

FA_INLINE FA_T FA_FN(fa_dot1_)(const FA_T *restrict q, const FA_S *restrict k, int64_t d)
{
    VT a = VSPLAT(0);
    int64_t c = 0;
    for (; c + VL <= d; c += VL) a += VLOAD(q + c) * FA_FN(fa_loads_)(k + c);
    FA_T s = FA_FN(fa_hsum_)(a);
    for (; c < d; c++) s += q[c] * FA_FN(fa_s2t_)(k[c]);
    return s;
}

#endif

/* acc[0:dv] = acc * alpha + sum_j p[j] * v[j][0:dv] (dv contiguous), the
 * block summed on its own first (see fa_pv_micro_). */
FA_INLINE void FA_FN(fa_pv_rows_)(const FA_T *restrict pr, const FA_S *restrict v,
                                  int64_t v_sn, int nb, int64_t dv, FA_T alpha,
                                  FA_T *restrict acc)
{
    enum { CH = 8 }; /* value vectors held in registers at once */
    int64_t e = 0;
    for (; e + CH * VL <= dv; e += CH * VL) {
        VT a[CH];
#pragma GCC unroll 8
        for (int u = 0; u < CH; u++) a[u] = VSPLAT(0);
        for (int j = 0; j < nb; j++) {
            const FA_T pj = pr[j];
            const FA_S *vr = v + j * v_sn + e;
#pragma GCC unroll 8
            for (int u = 0; u < CH; u++) a[u] += FA_FN(fa_loads_)(vr + u * VL) * pj;
        }
#pragma GCC unroll 8
        for (int u = 0; u < CH; u++)
            VSTORE(acc + e + u * VL, VLOAD(acc + e + u * VL) * alpha + a[u]);
    }
    for (; e + VL <= dv; e += VL) {
        VT a = VSPLAT(0);
        for (int j = 0; j < nb; j++) a += FA_FN(fa_loads_)(v + j * v_sn + e) * pr[j];
        VSTORE(acc + e, VLOAD(acc + e) * alpha + a);
    }
    for (; e < dv; e++) {
        FA_T a = 0;
        for (int j = 0; j < nb; j++) a += pr[j] * FA_FN(fa_s2t_)(v[j * v_sn + e]);
        acc[e] = acc[e] * alpha + a;
    }
}

void FA_FN(fa_rows_)(const fa_params *p, const fa_tile *t, void *scratch)
{
    const int64_t d = p->d, dv = p->dv;
    const int rows = t->rows;
    const FA_T ninf = -(FA_T)__builtin_inf();
    const int64_t dpad = (d + VL - 1) / VL * VL;
    const int64_t dvpad = (dv + VL - 1) / VL * VL;

    /* Scratch: rows x dpad scaled queries, rows x dvpad accumulators,
     * rows x BK scores, running max and sum (fits in the tile scratch). */
    FA_T *qs = (FA_T *)scratch;
    FA_T *acc = qs + FA_ROWS_MAX * dpad;
    FA_T *sc = acc + FA_ROWS_MAX * dvpad;
    FA_T *row_max = sc + FA_ROWS_MAX * FA_BK;
    FA_T *row_sum = row_max + FA_ROWS_MAX;

    const FA_T c = (FA_T)p->scale;
    const VT log2e = VSPLAT(1.4426950408889634074);
    for (int r = 0; r < rows; r++) {
        const FA_S *q = (const FA_S *)t->q_row[r];
#if FA_DOT_UNSCALED
        /* raw bfloat16, zero-padded (2 * dpad >= d rounded up to 32) */
        uint16_t *qr = (uint16_t *)(qs + r * dpad);
        for (int64_t k = 0; k < d; k++) qr[k] = q[k * p->q_sd];
        for (int64_t k = d; k < 2 * dpad; k++) qr[k] = 0;
#else
        for (int64_t k = 0; k < d; k++) qs[r * dpad + k] = FA_FN(fa_s2t_)(q[k * p->q_sd]) * c;
        for (int64_t k = d; k < dpad; k++) qs[r * dpad + k] = 0;
#endif
        for (int64_t e = 0; e < dvpad; e++) acc[r * dvpad + e] = 0;
        row_max[r] = ninf;
        row_sum[r] = 0;
    }

    const FA_FN(fa_range_) g = FA_FN(fa_tile_range_)(t);
    const FA_S *kbase = (const FA_S *)t->k;
    const FA_S *vbase = (const FA_S *)t->v;
    const int64_t k_sn = p->k_sn, v_sn = p->v_sn;
    const int capped = p->softcap > 0;
    const VT cap = VSPLAT(capped ? p->softcap : 1.0), capinv = VSPLAT(capped ? 1.0 / p->softcap : 1.0);

    for (int64_t j0 = g.j_start; j0 < g.j_end; j0 += FA_BK) {
        const int nb = (int)(g.j_end - j0 < FA_BK ? g.j_end - j0 : FA_BK);
        const FA_S *kb = kbase + j0 * k_sn;
        for (int r = 0; r < rows; r++) {
            /* this row's band inside the block */
            int64_t lo = t->jlo[r] - j0, hi = t->jhi[r] - j0;
            if (lo < 0) lo = 0;
            if (hi > nb) hi = nb;
            if (hi <= lo) continue; /* nothing visible here: no change */
            FA_T *s = sc + r * FA_BK;
            const FA_T *q = qs + r * dpad;
            int j = 0;
            for (; j + 4 <= nb; j += 4) FA_FN(fa_dot4_)(q, kb + j * k_sn, k_sn, d, s + j);
            for (; j < nb; j++) s[j] = FA_FN(fa_dot1_)(q, kb + j * k_sn, d);
#if FA_DOT_UNSCALED
            for (j = 0; j < nb; j++) s[j] *= c;
#endif
            if (capped) {
                for (j = 0; j + VL <= nb; j += VL)
                    FA_FN(fa_storeu_)(s + j, cap * FA_FN(fa_tanh_)(FA_FN(fa_loadu_)(s + j) * capinv));
                for (; j < nb; j++) {
                    const VT x = FA_FN(fa_tanh_)(VSPLAT(s[j]) * capinv) * cap;
                    s[j] = x[0];
                }
            }
            if (p->alibi) {
                const FA_T sl = (FA_T)t->slope[r];
                const int64_t pos = t->pos[r] - j0;
                for (j = 0; j < nb; j++) {
                    const int64_t dist = pos - j;
                    s[j] -= sl * (FA_T)(dist < 0 ? -dist : dist);
                }
            }
            /* mask and band; an additive -inf hides the key */
            if (p->mask_kind == FA_MASK_BOOL) {
                const uint8_t *m = (const uint8_t *)t->mask_row[r] + j0 * p->m_sk;
                for (j = 0; j < nb; j++)
                    if (!m[j * p->m_sk]) s[j] = ninf;
            } else if (p->mask_kind == FA_MASK_ADD_F32) {
                const float *m = (const float *)t->mask_row[r] + j0 * p->m_sk;
                for (j = 0; j < nb; j++) {
                    const FA_T a = (FA_T)m[j * p->m_sk];
                    s[j] = a == ninf ? ninf : s[j] + a;
                }
            } else if (p->mask_kind == FA_MASK_ADD_F64) {
                const double *m = (const double *)t->mask_row[r] + j0 * p->m_sk;
                for (j = 0; j < nb; j++) {
                    const FA_T a = (FA_T)m[j * p->m_sk];
                    s[j] = a == ninf ? ninf : s[j] + a;
                }
            }
            for (j = 0; j < lo; j++) s[j] = ninf;
            for (j = (int)hi; j < nb; j++) s[j] = ninf;
            /* online softmax along the keys */
            VT mv = VSPLAT(ninf);
            for (j = 0; j + VL <= nb; j += VL) mv = FA_FN(fa_vmax_)(FA_FN(fa_loadu_)(s + j), mv);
            FA_T m_new = FA_FN(fa_hmax_)(mv);
            for (; j < nb; j++) m_new = s[j] > m_new ? s[j] : m_new;
            if (row_max[r] > m_new) m_new = row_max[r];
            const FA_T m_ref = m_new == ninf ? (FA_T)0 : m_new;
            const VT mr = VSPLAT(m_ref);
            VT sum = VSPLAT(0);
            for (j = 0; j + VL <= nb; j += VL) {
                const VT pj = FA_FN(fa_exp2_)((FA_FN(fa_loadu_)(s + j) - mr) * log2e);
                FA_FN(fa_storeu_)(s + j, pj);
                sum += pj;
            }
            FA_T tail = 0;
            if (j < nb) {
                FA_T buf[VL];
                for (int u = 0; u < VL; u++) buf[u] = j + u < nb ? s[j + u] - m_ref : ninf;
                const VT pj = FA_FN(fa_exp2_)(FA_FN(fa_loadu_)(buf) * log2e);
                FA_FN(fa_storeu_)(buf, pj);
                for (int u = 0; j + u < nb; u++) { s[j + u] = buf[u]; tail += buf[u]; }
            }
            const VT av = FA_FN(fa_exp2_)(VSPLAT(row_max[r] - m_ref) * log2e);
            const FA_T a = av[0];
            row_sum[r] = row_sum[r] * a + (FA_FN(fa_hsum_)(sum) + tail);
            row_max[r] = m_new;
            FA_FN(fa_pv_rows_)(s, vbase + j0 * v_sn, v_sn, nb, dv, a, acc + r * dvpad);
        }
    }

    for (int r = 0; r < rows; r++) {
        FA_T *lse = (FA_T *)t->lse_row[r];
        const FA_T l = row_sum[r];
        const FA_T inv = l == 0 ? (FA_T)0 : (FA_T)1 / l;
        if (t->out_compute || FA_S_KIND == 0) {
            FA_T *o = (FA_T *)t->o_row[r];
            for (int64_t e = 0; e < dv; e++) o[e * p->o_sd] = l == 0 ? 0 : acc[r * dvpad + e] * inv;
        } else {
            FA_S *o = (FA_S *)t->o_row[r];
            for (int64_t e = 0; e < dv; e++)
                o[e * p->o_sd] = FA_FN(fa_t2s_)(l == 0 ? 0 : acc[r * dvpad + e] * inv);
        }
        if (lse) *lse = l == 0 ? ninf : (FA_T)((double)row_max[r] + __builtin_log((double)l));
    }
}

#if !FA_IS_DOUBLE && FA_S_KIND == 0
/* FMA peak probe: 12 independent chains of vector FMAs (enough to cover
 * the latency of two FMA pipes), compiled with this path's flags.  Returns
 * a value that depends on every result so nothing is optimized away;
 * the caller times it: flops = iters * 12 * 2 * VL. */
double FA_FN(fa_fma_probe_)(int64_t iters)
{
    VT a[12];
    const VT b = VSPLAT(0.999999f), c = VSPLAT(1e-7f);
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = VSPLAT((FA_T)i);
    for (int64_t it = 0; it < iters; it++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = a[i] * b + c;
    }
    double sum = 0;
    for (int i = 0; i < 12; i++)
        for (int l = 0; l < VL; l++) sum += (double)a[i][l];
    return sum;
}

int FA_FN(fa_vec_lanes_)(void) { return VL; }
#endif

#undef VL
#undef VT
#undef VI
#undef VU
#undef VH
#undef FA_TANH_SMALL
#undef FA_SIGN_BITS
#undef FA_DOT_UNSCALED
#undef VLOAD
#undef VSTORE
#undef VSPLAT
#undef FA_INLINE
#undef FA_FN
#undef FA_PASTE3
#undef FA_PASTE3_
