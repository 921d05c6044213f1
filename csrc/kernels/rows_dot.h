/*
 * rows_dot.h: the vector primitives of the few-row kernel (rows.h): Q.K
 * as dot products along d (widening the keys; on bfloat16 pairs with
 * vdpbf16ps under FA_BF16DP; int8 keys with their scales folded into q),
 * four keys at a time or one, and P.V as sums along dv (int8 values with
 * vpdpbusd under FA_I8DP).  FA_KV_LOAD and FA_KV_T, the key and value
 * loads, are undefined at the end of rows.h.
 */

#if defined(FA_BF16DP) && FA_S_KIND == 2
#define FA_KV_LOAD(x) FA_FN(fa_loads_)(x)
#define FA_KV_T(x) FA_FN(fa_s2t_)(x)
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
/* Keys and values as compute-type vectors and scalars: widened from the
 * storage type, or from int8 (quant.h; their scales are folded into the
 * query and the probabilities, see fa_rows_). */
#if FA_KV_I8
#define FA_KV_LOAD(x) FA_FN(fa_load_i8_)(x)
#define FA_KV_T(x) ((FA_T)(x))
#else
#define FA_KV_LOAD(x) FA_FN(fa_loads_)(x)
#define FA_KV_T(x) FA_FN(fa_s2t_)(x)
#endif
/* Lane sums of a0..a3 as (s0, s1, s2, s3) by a transposed reduction: two
 * folds that pair vectors, then folds within one vector (13 operations
 * for 16 lanes, where four separate reductions take 32). */
FA_INLINE void FA_FN(fa_hsum4_)(VT a0, VT a1, VT a2, VT a3, FA_T *restrict out)
{
    VI lo, hi, idx;
    const int h1 = VL / 2, h2 = VL / 4;
#pragma GCC unroll 16
    for (int l = 0; l < VL; l++) {
        lo[l] = (l & h1) ? VL + l - h1 : l;
        hi[l] = (l & h1) ? VL + l : l + h1;
        idx[l] = l;
    }
    const VT c01 = __builtin_shuffle(a0, a1, lo) + __builtin_shuffle(a0, a1, hi);
    const VT c23 = __builtin_shuffle(a2, a3, lo) + __builtin_shuffle(a2, a3, hi);
#pragma GCC unroll 16
    for (int l = 0; l < VL; l++) {
        lo[l] = (l & h2) ? VL + l - h2 : l;
        hi[l] = (l & h2) ? VL + l : l + h2;
    }
    /* lane groups of VL / 4: a0, a2, a1, a3 */
    VT x = __builtin_shuffle(c01, c23, lo) + __builtin_shuffle(c01, c23, hi);
#pragma GCC unroll 8
    for (int h = VL / 8; h >= 1; h /= 2) x += __builtin_shuffle(x, idx ^ h);
    out[0] = x[0];
    out[1] = x[2 * h2];
    out[2] = x[h2];
    out[3] = x[3 * h2];
}

/* Dot products of one scaled query row with 4 keys (d contiguous). */
FA_INLINE void FA_FN(fa_dot4_)(const FA_T *restrict q, const FA_KV *restrict k,
                               int64_t k_sn, int64_t d, FA_T *restrict out)
{
    VT a0 = VSPLAT(0), a1 = VSPLAT(0), a2 = VSPLAT(0), a3 = VSPLAT(0);
    const FA_KV *k0 = k, *k1 = k + k_sn, *k2 = k + 2 * k_sn, *k3 = k + 3 * k_sn;
    int64_t c = 0;
    for (; c + VL <= d; c += VL) {
        const VT qv = VLOAD(q + c);
        a0 += qv * FA_KV_LOAD(k0 + c);
        a1 += qv * FA_KV_LOAD(k1 + c);
        a2 += qv * FA_KV_LOAD(k2 + c);
        a3 += qv * FA_KV_LOAD(k3 + c);
    }
    FA_T s0, s1, s2, s3;
#if FA_KV_I8
    if (VL >= 4) {
        FA_T t[4];
        FA_FN(fa_hsum4_)(a0, a1, a2, a3, t);
        s0 = t[0], s1 = t[1], s2 = t[2], s3 = t[3];
    } else
#endif
    {
        s0 = FA_FN(fa_hsum_)(a0), s1 = FA_FN(fa_hsum_)(a1);
        s2 = FA_FN(fa_hsum_)(a2), s3 = FA_FN(fa_hsum_)(a3);
    }
    for (; c < d; c++) {
        s0 += q[c] * FA_KV_T(k0[c]);
        s1 += q[c] * FA_KV_T(k1[c]);
        s2 += q[c] * FA_KV_T(k2[c]);
        s3 += q[c] * FA_KV_T(k3[c]);
    }
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
}

FA_INLINE FA_T FA_FN(fa_dot1_)(const FA_T *restrict q, const FA_KV *restrict k, int64_t d)
{
    VT a = VSPLAT(0);
    int64_t c = 0;
    for (; c + VL <= d; c += VL) a += VLOAD(q + c) * FA_KV_LOAD(k + c);
    FA_T s = FA_FN(fa_hsum_)(a);
    for (; c < d; c++) s += q[c] * FA_KV_T(k[c]);
    return s;
}

#endif

/* acc[0:dv] = acc * alpha + sum_j p[j] * v[j][0:dv] (dv contiguous), the
 * block summed on its own first (see fa_pv_micro_). */
FA_INLINE void FA_FN(fa_pv_rows_)(const FA_T *restrict pr, const FA_KV *restrict v,
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
            const FA_KV *vr = v + j * v_sn + e;
#pragma GCC unroll 8
            for (int u = 0; u < CH; u++) a[u] += FA_KV_LOAD(vr + u * VL) * pj;
        }
#pragma GCC unroll 8
        for (int u = 0; u < CH; u++)
            VSTORE(acc + e + u * VL, VLOAD(acc + e + u * VL) * alpha + a[u]);
    }
    for (; e + VL <= dv; e += VL) {
        VT a = VSPLAT(0);
        for (int j = 0; j < nb; j++) a += FA_KV_LOAD(v + j * v_sn + e) * pr[j];
        VSTORE(acc + e, VLOAD(acc + e) * alpha + a);
    }
    for (; e < dv; e++) {
        FA_T a = 0;
        for (int j = 0; j < nb; j++) a += pr[j] * FA_KV_T(v[j * v_sn + e]);
        acc[e] = acc[e] * alpha + a;
    }
}

#if FA_KV_I8 && defined(FA_I8DP)
/*
 * P.V with AVX512-VNNI (vpdpbusd: 4 unsigned x signed byte products summed
 * into each int32 lane).  The block's probabilities (already times their
 * value scales, all >= 0) become 24-bit integers relative to the block's
 * largest, p_int = round(p / step) with step = max p / (2^24 - 1), split
 * into three byte digits; the int8 values are the signed operand.  Every
 * product and sum is then exact in int32 (a lane gathers at most
 * 16 x 4 x 255 x 128 < 2^22 per digit), and the only rounding is p's, at
 * most one step (2^-24 of the block's largest weight), the size of a
 * float32 rounding.  vpdpbusd sums 4 consecutive bytes, which must belong
 * to 4 keys of one column: 4 value rows are interleaved by byte and word
 * unpacks, which permute the columns within 128-bit lanes; the permutation
 * is undone once per block, on the float sums.  Keys beyond a multiple of
 * 4, and columns beyond a multiple of 64, take the widening path.
 */
FA_INLINE void FA_FN(fa_pv_vnni_)(const FA_T *restrict pr, const int8_t *restrict v,
                                  int64_t v_sn, int nb, int64_t dv, FA_T alpha,
                                  FA_T *restrict acc)
{
    FA_T pmax = 0;
    int bad = 0;
    for (int j = 0; j < nb; j++) {
        bad |= !(pr[j] <= (FA_T)3.0e38f); /* NaN or inf */
        pmax = pr[j] > pmax ? pr[j] : pmax;
    }
    const int nb4 = nb & ~3;
    int64_t e = 0;
    if (!bad && pmax > 0 && nb4 > 0) {
        const FA_T step = pmax / 16777215.0f, inv = 16777215.0f / pmax;
        uint32_t dig[3][FA_BK / 4]; /* digit i of keys 4t .. 4t + 3, one byte each */
        for (int t = 0; t < nb4 / 4; t++) {
            uint32_t w[4];
            for (int u = 0; u < 4; u++) {
                const FA_T x = pr[4 * t + u] * inv + 0.5f;
                w[u] = x >= 16777215.0f ? 16777215u : (uint32_t)x;
            }
            for (int i = 0; i < 3; i++)
                dig[i][t] = ((w[0] >> 8 * i) & 255) | ((w[1] >> 8 * i) & 255) << 8 |
                            ((w[2] >> 8 * i) & 255) << 16 | ((w[3] >> 8 * i) & 255) << 24;
        }
        const __m512 vstep = _mm512_set1_ps(step), valpha = _mm512_set1_ps(alpha);
        for (; e + 64 <= dv; e += 64) {
            __m512i a[3][4];
            for (int i = 0; i < 3; i++)
                for (int x = 0; x < 4; x++) a[i][x] = _mm512_setzero_si512();
            for (int t = 0; t < nb4 / 4; t++) {
                const int8_t *r = v + 4 * t * v_sn + e;
                const __m512i r0 = _mm512_loadu_si512((const void *)r);
                const __m512i r1 = _mm512_loadu_si512((const void *)(r + v_sn));
                const __m512i r2 = _mm512_loadu_si512((const void *)(r + 2 * v_sn));
                const __m512i r3 = _mm512_loadu_si512((const void *)(r + 3 * v_sn));
                const __m512i t0 = _mm512_unpacklo_epi8(r0, r1), t1 = _mm512_unpackhi_epi8(r0, r1);
                const __m512i t2 = _mm512_unpacklo_epi8(r2, r3), t3 = _mm512_unpackhi_epi8(r2, r3);
                const __m512i u[4] = {_mm512_unpacklo_epi16(t0, t2), _mm512_unpackhi_epi16(t0, t2),
                                      _mm512_unpacklo_epi16(t1, t3), _mm512_unpackhi_epi16(t1, t3)};
#pragma GCC unroll 3
                for (int i = 0; i < 3; i++) {
                    const __m512i di = _mm512_set1_epi32((int)dig[i][t]);
#pragma GCC unroll 4
                    for (int x = 0; x < 4; x++) a[i][x] = _mm512_dpbusd_epi32(a[i][x], di, u[x]);
                }
            }
            /* digits combined in float (each int32 sum < 2^24 converts
             * exactly); f[x] holds columns 16 L + 4 x + 0..3 in lane L */
            __m512 f[4];
            for (int x = 0; x < 4; x++)
                f[x] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[2][x]), _mm512_set1_ps(65536.0f),
                                       _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[1][x]),
                                                       _mm512_set1_ps(256.0f),
                                                       _mm512_cvtepi32_ps(a[0][x])));
            const __m512 lo01 = _mm512_shuffle_f32x4(f[0], f[1], 0x44);
            const __m512 lo23 = _mm512_shuffle_f32x4(f[2], f[3], 0x44);
            const __m512 hi01 = _mm512_shuffle_f32x4(f[0], f[1], 0xEE);
            const __m512 hi23 = _mm512_shuffle_f32x4(f[2], f[3], 0xEE);
            const __m512 cols[4] = {_mm512_shuffle_f32x4(lo01, lo23, 0x88),
                                    _mm512_shuffle_f32x4(lo01, lo23, 0xDD),
                                    _mm512_shuffle_f32x4(hi01, hi23, 0x88),
                                    _mm512_shuffle_f32x4(hi01, hi23, 0xDD)};
            for (int x = 0; x < 4; x++) {
                __m512 sum = _mm512_mul_ps(cols[x], vstep);
                for (int j = nb4; j < nb; j++)
                    sum = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                            _mm_loadu_si128((const __m128i *)(v + j * v_sn + e + 16 * x)))),
                        _mm512_set1_ps(pr[j]), sum);
                float *o = acc + e + 16 * x;
                _mm512_storeu_ps(o, _mm512_fmadd_ps(_mm512_loadu_ps(o), valpha, sum));
            }
        }
    }
    if (e < dv) FA_FN(fa_pv_rows_)(pr, v + e, v_sn, nb, dv - e, alpha, acc + e);
}
#endif
