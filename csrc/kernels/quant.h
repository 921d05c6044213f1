/*
 * quant.h: int8 keys and values (dtype FA_I8KV), compiled only into the
 * FA_KV_I8 instantiation of kernel_body.h (float32 compute, float32 q and
 * out, FA_KV = int8_t).
 *
 * A stored key k[j][c] means k[j][c] * k_scale[c] (one scale per channel
 * of a kv head) and a value v[j][e] means v[j][e] * v_scale[j] (one scale
 * per token).  Nothing is dequantized in memory beyond one key block:
 *   - the few-row (decode) kernel reads the int8 rows directly, widening
 *     VL of them to float32 in registers per load (an int8 value is exact
 *     in float32), with k_scale folded into the scaled query once per row
 *     and v_scale folded into the probabilities once per key (rows.h);
 *   - the tile kernel (prefill) dequantizes one key block at a time into
 *     its per-thread scratch (the same buffers the 16-bit types widen
 *     into), so every query row of the tile reuses it from L1/L2.
 * Rounding: a dequantized element k * scale is the float32 product (one
 * rounding, as in the reference's dequantization); the fold q * scale *
 * k_scale[c] is rounded once more to float32 before the int8 factor, which
 * differs from summing q . (k * k_scale) by at most one float32 rounding
 * per term, the size of the float32 computation's own rounding.
 */

#if FA_KV_I8

#if defined(__aarch64__) && FA_VBYTES == 16
#include <arm_neon.h>
#endif

/* VL int8 values (unaligned) widened to a float32 vector: sign-extension
 * and conversion (vpmovsxbd + vcvtdq2ps on x86, sxtl + scvtf on NEON).
 * Intrinsics, because GCC 12 lowers __builtin_convertvector from int8
 * lanes to float lanes element by element. */
FA_INLINE VT FA_FN(fa_load_i8_)(const int8_t *x)
{
#if FA_VBYTES == 64 && defined(__AVX512F__)
    return (VT)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)x)));
#elif FA_VBYTES == 32 && defined(__AVX2__)
    return (VT)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)x)));
#elif FA_VBYTES == 16 && defined(__aarch64__)
    uint32_t w;
    __builtin_memcpy(&w, x, sizeof w);
    const int16x8_t h = vmovl_s8(vreinterpret_s8_u32(vdup_n_u32(w)));
    return (VT)vcvtq_f32_s32(vmovl_s16(vget_low_s16(h)));
#else
    VT r;
    for (int l = 0; l < VL; l++) r[l] = (FA_T)x[l];
    return r;
#endif
}

/* Dequantize nb int8 rows j0 .. j0 + nb - 1 of n elements (row stride sn,
 * column stride sd) into dst (rows of n contiguous floats): keys by their
 * channel scales (is_key), values by their token scales. */
static void FA_FN(fa_dequant_rows_)(const fa_params *p, const fa_work_item *t, const int8_t *base,
                                    int64_t j0, int64_t sn, int64_t sd, int nb, int64_t n,
                                    FA_T *restrict dst, int is_key)
{
    const float *ks = t->k_scale;
    const int64_t ks_sd = p->ks_sd;
    for (int j = 0; j < nb; j++) {
        const int8_t *s = base + (j0 + j) * sn;
        FA_T *o = dst + j * n;
        int64_t c = 0;
        if (is_key) {
            if (sd == 1 && ks_sd == 1)
                for (; c + VL <= n; c += VL)
                    FA_FN(fa_storeu_)(o + c, FA_FN(fa_load_i8_)(s + c) * FA_FN(fa_loadu_)(ks + c));
            for (; c < n; c++) o[c] = (FA_T)s[c * sd] * ks[c * ks_sd];
        } else {
            const FA_T vs = t->v_scale[(j0 + j) * p->vs_sn];
            if (sd == 1)
                for (; c + VL <= n; c += VL)
                    FA_FN(fa_storeu_)(o + c, FA_FN(fa_load_i8_)(s + c) * vs);
            for (; c < n; c++) o[c] = (FA_T)s[c * sd] * vs;
        }
    }
}

#endif /* FA_KV_I8 */
