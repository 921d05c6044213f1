/*
 * vec.h: the vector vocabulary of the kernels, compiled once per
 * (ISA, element type) like the rest of kernel_body.h.
 *
 * GCC/Clang vector types of FA_VBYTES bytes (the ISA flags of the
 * including kernel_<isa>.c turn them into AVX-512, AVX2, SSE2 or NEON
 * code): VT of the compute type, VI/VU its integer lanes, VH the 16-bit
 * storage lanes.  Loads and stores (aligned, unaligned, widening from and
 * rounding to the storage type), one tail helper for arrays that are not
 * a multiple of the vector length, lane select and max, the exp2 and tanh
 * of the softmax and the soft cap, horizontal sum and max, and an
 * in-register transpose.  Everything here is static inline and is meant
 * to vanish into the kernels' loops.
 *
 * Customization points (optional, defined by kernel_<isa>.c):
 *   FA_VMAX_PS / FA_VMAX_PD  a native lane max (the generic select costs
 *                            three instructions)
 *   FA_VRCP_PS               a float32 reciprocal estimate (tanh refines it)
 *   FA_VSCALEF_PS            p * 2^n for float32 p and integral n, +0
 *                            where n == -127 (exp2)
 */

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
 * against a float64 exp2: see tests/core/test_exp.py and the README.
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
    return p * pow2n; /* NaN stays NaN; a clamped lane has pow2n == +0 */
#else
    const VT magic = VSPLAT(12582912.0f); /* 1.5 * 2^23 */
    x = FA_FN(fa_vmax_)(VSPLAT(-127.0f), x);
    VT t = x + magic;
    VT n = t - magic;
    VT f = x - n;
    VT p = VSPLAT(1.5461444698569129083e-4f);
    p = p * f + VSPLAT(1.340042817761583794e-3f);
    p = p * f + VSPLAT(9.6180566785246380754e-3f);
    p = p * f + VSPLAT(5.5503272266703020589e-2f);
    p = p * f + VSPLAT(2.4022650922288758071e-1f);
    p = p * f + VSPLAT(6.9314720670283259577e-1f);
    p = p * f + VSPLAT(1.0f);
#ifdef FA_VSCALEF_PS
    /* p * 2^n in one instruction instead of three (integer add, shift,
     * multiply), plus a compare for the clamped lanes: on Intel every
     * 512-bit vector instruction issues to one of the two FMA ports, so the
     * softmax's instructions take issue slots from the dot products.  The
     * same values bit for bit: one rounding of the exact product, +0 at
     * n = -127. */
    return (VT)FA_VSCALEF_PS(p, n);
#else
    /* unsigned lanes: a NaN lane's garbage must not be a signed overflow */
    VU ni = (VU)t - (VU)magic;
    VT pow2n = (VT)((ni + 127) << 23);
    return p * pow2n; /* NaN stays NaN; a clamped lane has pow2n == +0 */
#endif
#endif
}


/* The first n < VL elements of x as a vector, the other lanes `fill`; and
 * the first n lanes of v stored to x.  The one way the kernels handle the
 * part of an array that does not fill a vector. */
/* (Lane by lane on the vector itself, with no array whose address is
 * taken: an over-aligned vector spilled into a plain stack array is what
 * ASan's use-after-return checking, which moves such arrays to its own
 * frames, faulted on.) */
FA_INLINE VT FA_FN(fa_load_tail_)(const FA_T *x, int n, FA_T fill)
{
    VT r = VSPLAT(fill);
    for (int l = 0; l < n; l++) r[l] = x[l];
    return r;
}

FA_INLINE void FA_FN(fa_store_tail_)(FA_T *x, int n, VT v)
{
    for (int l = 0; l < n; l++) x[l] = v[l];
}

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

