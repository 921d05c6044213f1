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
                    x[i] = r0 + i < rows ? FA_FN(fa_loadu_)((const FA_T *)t->q_row[r0 + i] + k0)
                                         : VSPLAT(0);
                FA_FN(fa_transpose_)(x);
#pragma GCC unroll 16
                for (int i = 0; i < VL; i++) VSTORE(qt + (k0 + i) * FA_BQ + r0, x[i] * c);
            }
    }
    for (int r = 0; r < rows; r++) {
        const FA_T *q = (const FA_T *)t->q_row[r];
        for (int64_t k = k0; k < d; k++) qt[k * FA_BQ + r] = q[k * q_sd] * c;
    }
    for (int r = rows; r < lanes; r++)
        for (int64_t k = k0; k < d; k++) qt[k * FA_BQ + r] = 0;
}

/* The tile: online softmax attention of t->rows query rows over keys
 * [t->k_lo, t->k_hi), written normalized to t->o_row and t->lse_row. */
void FA_FN(fa_tile_)(const fa_params *p, const fa_tile *t, void *scratch)
{
    const int64_t d = p->d, dv = p->dv;
    const int rows = t->rows;
    const int nv = (rows + VL - 1) / VL; /* query vectors in use */
    const int lanes = nv * VL;
    const FA_T ninf = -(FA_T)__builtin_inf();
    const VT log2e = VSPLAT(1.4426950408889634074);

    /* Scratch: all sizes are multiples of FA_BQ elements, so every part
     * stays aligned like the base (FA_ALIGN). */
    FA_T *qt = (FA_T *)scratch;       /* d x BQ: packed, scaled Q^T */
    FA_T *st = qt + d * FA_BQ;        /* BK x BQ: scores, then probs */
    FA_T *mt = st + FA_BK * FA_BQ;    /* BK x BQ: mask terms */
    FA_T *ot = mt + FA_BK * FA_BQ;    /* dv x BQ: output accumulator */
    FA_T *row_max = ot + dv * FA_BQ;  /* BQ: running max (log2 units) */
    FA_T *row_sum = row_max + FA_BQ;  /* BQ: running sum */
    FA_T *alpha = row_sum + FA_BQ;    /* BQ: rescale of this block */
    FA_T *bmax = alpha + FA_BQ;       /* BQ: max score of this block */

    /* Pack Q^T with the scale folded in; padded lanes are zero. */
    const FA_T c = (FA_T)p->scale;
    FA_FN(fa_pack_q_)(t, d, p->q_sd, c, lanes, qt);

    for (int64_t e = 0; e < dv; e++)
        for (int r = 0; r < lanes; r++) ot[e * FA_BQ + r] = 0;
    for (int r = 0; r < lanes; r++) {
        row_max[r] = ninf;
        row_sum[r] = 0;
    }

    /* Key range.  Causal: row r sees key j iff j <= qi[r] + offset, so
     * nothing past the largest limit is read, and keys up to the smallest
     * limit need no causal masking. */
    int64_t j_end = t->k_hi;
    int64_t lim_min = INT64_MAX;
    if (p->causal) {
        int64_t lim_max = INT64_MIN;
        for (int r = 0; r < rows; r++) {
            const int64_t lim = t->qi[r] + p->causal_offset;
            if (lim > lim_max) lim_max = lim;
            if (lim < lim_min) lim_min = lim;
        }
        if (lim_max + 1 < j_end) j_end = lim_max + 1;
    }

    const FA_T *kbase = (const FA_T *)t->k;
    const FA_T *vbase = (const FA_T *)t->v;
    const int64_t k_sn = p->k_sn, k_sd = p->k_sd;
    const int64_t v_sn = p->v_sn, v_sd = p->v_sd;

    for (int64_t j0 = t->k_lo; j0 < j_end; j0 += FA_BK) {
        const int nb = (int)(j_end - j0 < FA_BK ? j_end - j0 : FA_BK);

        if (p->mask_kind != FA_MASK_NONE &&
            !FA_FN(fa_load_mask_)(p, t, j0, nb, mt))
            continue; /* every row masked for this block */

        /* S = Q.K^T (the contiguous-row case gets its own unrolling),
         * with each row's block max taken from the registers. */
        for (int i = 0; i < nv; i++) VSTORE(bmax + i * VL, VSPLAT(ninf));
        const FA_T *kb = kbase + j0 * k_sn;
        if (k_sd == 1)
            FA_FN(fa_qk_tile_)(nv, nb, qt, kb, k_sn, 1, d, st, bmax);
        else
            FA_FN(fa_qk_tile_)(nv, nb, qt, kb, k_sn, k_sd, d, st, bmax);
        int masked = 0;

        if (p->mask_kind != FA_MASK_NONE) {
            masked = 1;
            for (int j = 0; j < nb; j++)
                for (int i = 0; i < nv; i++) {
                    /* hidden keys become -inf whatever their score (a NaN
                     * or inf score there must not reach the row) */
                    FA_T *s = st + j * FA_BQ + i * VL;
                    const VT m = VLOAD(mt + j * FA_BQ + i * VL);
                    VSTORE(s, FA_FN(fa_vsel_)(m == VSPLAT(ninf), m, VLOAD(s) + m));
                }
        }
        if (p->causal && j0 + nb - 1 > lim_min) {
            masked = 1;
            for (int r = 0; r < rows; r++) {
                int64_t first = t->qi[r] + p->causal_offset + 1 - j0;
                if (first < 0) first = 0;
                for (int64_t j = first; j < nb; j++) st[j * FA_BQ + r] = ninf;
            }
        }

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
                FA_T *s = st + j * FA_BQ + i * VL;
                const VT pj = FA_FN(fa_exp2_)((VLOAD(s) - m_ref) * log2e);
                VSTORE(s, pj);
                sum += pj;
            }
            VSTORE(row_sum + i * VL, VLOAD(row_sum + i * VL) * a + sum);
            VSTORE(row_max + i * VL, m_new);
            VSTORE(alpha + i * VL, a);
        }

        /* O = O * alpha + P.V */
        const FA_T *vb = vbase + j0 * v_sn;
        if (v_sd == 1)
            FA_FN(fa_pv_tile_)(nv, nb, st, vb, v_sn, 1, dv, alpha, ot);
        else
            FA_FN(fa_pv_tile_)(nv, nb, st, vb, v_sn, v_sd, dv, alpha, ot);
    }

    /* Normalize once and write out through the output strides: unit
     * column stride in VL x VL blocks through the transpose, the rest (and
     * rows that saw no key, which must be exact zeros) element by element. */
    const int64_t o_sd = p->o_sd;
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
                for (int i = 0; i < VL; i++)
                    if (r0 + i < rows) FA_FN(fa_storeu_)((FA_T *)t->o_row[r0 + i] + e0, x[i]);
            }
    }
    for (int r = 0; r < rows; r++) {
        FA_T *o = (FA_T *)t->o_row[r];
        const FA_T l = row_sum[r];
        FA_T *lse = (FA_T *)t->lse_row[r];
        if (l == 0) {
            /* No visible key: exact zeros over the whole row (and -inf lse). */
            for (int64_t e = 0; e < dv; e++) o[e * o_sd] = 0;
            if (lse) *lse = ninf;
        } else {
            const FA_T inv = (FA_T)1 / l;
            for (int64_t e = e0; e < dv; e++) o[e * o_sd] = ot[e * FA_BQ + r] * inv;
            if (lse) *lse = (FA_T)((double)row_max[r] + __builtin_log((double)l));
        }
    }
}


/* ------------------------------------------------------------------------
 * Few-row kernel (decode: Nq of 1 to a few rows per kv head).  With one
 * query row, vectors along the queries would leave all lanes but one idle,
 * so here vectors run along d for Q.K (a dot product per key, reduced
 * across lanes) and along dv for P.V, and the softmax runs along the keys.
 * It needs unit d-strides for K and V (the driver checks).  Rows share each
 * key block while it is hot in L1.
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

/* Dot products of one scaled query row with 4 keys (d contiguous). */
FA_INLINE void FA_FN(fa_dot4_)(const FA_T *restrict q, const FA_T *restrict k,
                               int64_t k_sn, int64_t d, FA_T *restrict out)
{
    VT a0 = VSPLAT(0), a1 = VSPLAT(0), a2 = VSPLAT(0), a3 = VSPLAT(0);
    const FA_T *k0 = k, *k1 = k + k_sn, *k2 = k + 2 * k_sn, *k3 = k + 3 * k_sn;
    int64_t c = 0;
    for (; c + VL <= d; c += VL) {
        const VT qv = VLOAD(q + c);
        a0 += qv * FA_FN(fa_loadu_)(k0 + c);
        a1 += qv * FA_FN(fa_loadu_)(k1 + c);
        a2 += qv * FA_FN(fa_loadu_)(k2 + c);
        a3 += qv * FA_FN(fa_loadu_)(k3 + c);
    }
    FA_T s0 = FA_FN(fa_hsum_)(a0), s1 = FA_FN(fa_hsum_)(a1);
    FA_T s2 = FA_FN(fa_hsum_)(a2), s3 = FA_FN(fa_hsum_)(a3);
    for (; c < d; c++) {
        s0 += q[c] * k0[c];
        s1 += q[c] * k1[c];
        s2 += q[c] * k2[c];
        s3 += q[c] * k3[c];
    }
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
}

FA_INLINE FA_T FA_FN(fa_dot1_)(const FA_T *restrict q, const FA_T *restrict k, int64_t d)
{
    VT a = VSPLAT(0);
    int64_t c = 0;
    for (; c + VL <= d; c += VL) a += VLOAD(q + c) * FA_FN(fa_loadu_)(k + c);
    FA_T s = FA_FN(fa_hsum_)(a);
    for (; c < d; c++) s += q[c] * k[c];
    return s;
}

/* acc[0:dv] = acc * alpha + sum_j p[j] * v[j][0:dv] (dv contiguous), the
 * block summed on its own first (see fa_pv_micro_). */
FA_INLINE void FA_FN(fa_pv_rows_)(const FA_T *restrict pr, const FA_T *restrict v,
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
            const FA_T *vr = v + j * v_sn + e;
#pragma GCC unroll 8
            for (int u = 0; u < CH; u++) a[u] += FA_FN(fa_loadu_)(vr + u * VL) * pj;
        }
#pragma GCC unroll 8
        for (int u = 0; u < CH; u++)
            VSTORE(acc + e + u * VL, VLOAD(acc + e + u * VL) * alpha + a[u]);
    }
    for (; e + VL <= dv; e += VL) {
        VT a = VSPLAT(0);
        for (int j = 0; j < nb; j++) a += FA_FN(fa_loadu_)(v + j * v_sn + e) * pr[j];
        VSTORE(acc + e, VLOAD(acc + e) * alpha + a);
    }
    for (; e < dv; e++) {
        FA_T a = 0;
        for (int j = 0; j < nb; j++) a += pr[j] * v[j * v_sn + e];
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
        const FA_T *q = (const FA_T *)t->q_row[r];
        for (int64_t k = 0; k < d; k++) qs[r * dpad + k] = q[k * p->q_sd] * c;
        for (int64_t k = d; k < dpad; k++) qs[r * dpad + k] = 0;
        for (int64_t e = 0; e < dvpad; e++) acc[r * dvpad + e] = 0;
        row_max[r] = ninf;
        row_sum[r] = 0;
    }

    int64_t j_end = t->k_hi;
    if (p->causal) {
        int64_t lim_max = INT64_MIN;
        for (int r = 0; r < rows; r++)
            if (t->qi[r] + p->causal_offset > lim_max) lim_max = t->qi[r] + p->causal_offset;
        if (lim_max + 1 < j_end) j_end = lim_max + 1;
    }
    const FA_T *kbase = (const FA_T *)t->k;
    const FA_T *vbase = (const FA_T *)t->v;
    const int64_t k_sn = p->k_sn, v_sn = p->v_sn;

    for (int64_t j0 = t->k_lo; j0 < j_end; j0 += FA_BK) {
        const int nb = (int)(j_end - j0 < FA_BK ? j_end - j0 : FA_BK);
        const FA_T *kb = kbase + j0 * k_sn;
        for (int r = 0; r < rows; r++) {
            FA_T *s = sc + r * FA_BK;
            const FA_T *q = qs + r * dpad;
            int j = 0;
            for (; j + 4 <= nb; j += 4) FA_FN(fa_dot4_)(q, kb + j * k_sn, k_sn, d, s + j);
            for (; j < nb; j++) s[j] = FA_FN(fa_dot1_)(q, kb + j * k_sn, d);
            /* mask and causal limit; an additive -inf hides the key */
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
            if (p->causal) {
                int64_t first = t->qi[r] + p->causal_offset + 1 - j0;
                if (first < 0) first = 0;
                for (int64_t jj = first; jj < nb; jj++) s[jj] = ninf;
            }
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
        FA_T *o = (FA_T *)t->o_row[r];
        FA_T *lse = (FA_T *)t->lse_row[r];
        const FA_T l = row_sum[r];
        if (l == 0) {
            for (int64_t e = 0; e < dv; e++) o[e * p->o_sd] = 0;
            if (lse) *lse = ninf;
        } else {
            const FA_T inv = (FA_T)1 / l;
            for (int64_t e = 0; e < dv; e++) o[e * p->o_sd] = acc[r * dvpad + e] * inv;
            if (lse) *lse = (FA_T)((double)row_max[r] + __builtin_log((double)l));
        }
    }
}

#if !FA_IS_DOUBLE
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
#undef VLOAD
#undef VSTORE
#undef VSPLAT
#undef FA_INLINE
#undef FA_FN
#undef FA_PASTE3
#undef FA_PASTE3_
