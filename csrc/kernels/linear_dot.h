/*
 * linear_dot.h: the dot-product blocks of the linear layer on CPUs that
 * have them, included by linear.h in three tables:
 *   avx512  VDPBF16PS for bfloat16 pairs (the avx512bf16 refinement) and
 *           VPDPBUSD for int8 quads (avx512vnni);
 *   avx2    the VEX form of VPDPBUSD on ymm for int8 (avxvnni: Intel
 *           client cores without AVX-512, and AMD's since Zen 5);
 *   neon    SDOT for int8 (neon_dotprod) and BFDOT for bfloat16
 *           (neon_bf16).
 * dispatch.c sets fa_linear_args.dot when the current path's refinement
 * row says the CPU has the instruction, so these are never reached on a
 * CPU without it.  FA_LIN_DOT_I8 and FA_LIN_DOT_BF16 say which of the two
 * a table has; FA_LIN_DOT, that it has their peak probe (fa_dot_probe_:
 * each iteration does the work of 24 zmm instructions, whatever the
 * vector width, so that the binding's count of operations holds).
 *
 * The instructions are written as inline assembly, so that each table
 * keeps its flags (it must run on CPUs of its path without them) and no
 * function needs a target attribute; on AVX-512 the broadcast of x comes
 * from memory as the instruction's {1to16} operand, one instruction per
 * row and step.
 *
 * Rows: a group's rows run together (up to FA_LIN_MR accumulators), or in
 * sub-blocks of FA_LIN_DOT_RS for a group that is not full; every row gets
 * the same instructions in the same order either way, so the result of a
 * row does not depend on the others.  Whether a path uses the dot product
 * is fixed by the CPU, so all rows of all calls on it do.
 */

#if FA_VBYTES == 64 && defined(__AVX512F__) && defined(__x86_64__)
#define FA_LIN_DOT 1
#define FA_LIN_DOT_I8 1
#define FA_LIN_DOT_BF16 1
#define FA_LIN_DOT_RS 4 /* rows of a sub-block of a group that is not full */

#define FA_VPDPBUSD_BCAST(acc, wu, p)                                       \
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(wu),         \
            "m"(*(const int32_t *)(p)))
#define FA_VDPBF16PS_BCAST(acc, w, p)                                       \
    __asm__("vdpbf16ps %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w),         \
            "m"(*(const int32_t *)(p)))
/* the same with x already broadcast in a register (used by two panels:
 * one load instead of two) */
#define FA_VPDPBUSD(acc, wu, xb) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(wu), "v"(xb))
#define FA_VDPBF16PS(acc, w, xb) __asm__("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(w), "v"(xb))

/* Panels a dot-product block covers at once: 12 rows x 2 panels give the
 * 24 independent chains that hide the instructions' latency (the probe
 * needs about 18 for full rate on Zen 5; 12 reach three quarters). */
#define FA_LIN_DOT_NP 2
/* int8 runs a full group as two halves of FA_LIN_MR / 2 rows: each row
 * and panel needs an int32 block sum and a float32 sum over the blocks, 48
 * registers for 12 rows x 2 panels where there are 32, and the spills cost
 * more than loading each quad of weights twice; 6 rows x 2 panels keep
 * their 24 sums in registers (Zen 5, one core: 606 -> 700 GOP/s on 256 x
 * 384 by 384 x 1536, 430 -> 600 with 4096 rows). */
#define FA_LIN_I8_HALVES 1

/* int8: R rows (a constant after inlining) of a group's words a (row i's
 * word j at a[i * lda + j]) and
 * block scales sc / sums su (quant layout, linear_i8.h) times np (1 or
 * FA_LIN_DOT_NP, a constant) panels' slices of kq / 4 quads, w the first
 * and w_sp bytes between panels, into facc[p] (rows of 16 floats).
 * VPDPBUSD multiplies unsigned by signed bytes: w + 128 (w ^ 0x80, one
 * XOR per quad for all rows) times xq, less 128 * (the block's sum of
 * xq), is sum xq * w exactly. */
FA_INLINE void FA_FN(fa_linear_i8_dot_)(const int R, const int np, const int32_t *a,
                                         int64_t lda, const float *sc, const int32_t *su, const int8_t *w,
                                         int64_t w_sp, int64_t kq, int64_t nb,
                                         float (*facc)[FA_LIN_MR][FA_LIN_NR])
{
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    VT f[FA_LIN_DOT_NP][FA_LIN_MR];
    for (int p = 0; p < np; p++)
        for (int i = 0; i < R; i++) f[p][i] = VSPLAT(0);
    for (int64_t b = 0; b < nb; b++) {
        const int64_t j0 = b * (FA_LIN_QB / 4);
        const int64_t j1 = kq / 4 < j0 + FA_LIN_QB / 4 ? kq / 4 : j0 + FA_LIN_QB / 4;
        /* each sum starts at the compensation, -128 * (the sum of xq) */
        __m512i acc[FA_LIN_DOT_NP][FA_LIN_MR];
        for (int i = 0; i < R; i++) {
            const __m512i c = _mm512_set1_epi32(-128 * su[b * FA_LIN_MR + i]);
            for (int p = 0; p < np; p++) acc[p][i] = c;
        }
        for (int64_t j = j0; j < j1; j++) {
            __m512i wu[FA_LIN_DOT_NP];
            /* a few rows read weights faster than the prefetchers fetch
             * them from memory (decode): fetch the next panels' lines */
            if (R <= FA_LIN_DOT_RS)
                for (int p = 0; p < np; p++)
                    _mm_prefetch((const char *)(w + (p + np) * w_sp + j * 64), _MM_HINT_T0);
            for (int p = 0; p < np; p++)
                wu[p] = _mm512_xor_si512(_mm512_loadu_si512(w + p * w_sp + j * 64), flip);
            for (int i = 0; i < R; i++)
                if (np == 1)
                    FA_VPDPBUSD_BCAST(acc[0][i], wu[0], a + i * lda + j);
                else {
                    const __m512i xb = _mm512_set1_epi32(a[i * lda + j]);
                    for (int p = 0; p < np; p++) FA_VPDPBUSD(acc[p][i], wu[p], xb);
                }
        }
        for (int i = 0; i < R; i++) {
            const VT s = (VT)_mm512_set1_ps(sc[b * FA_LIN_MR + i]);
            /* one fused multiply-add, written out: every int8 block of
             * every path takes exactly this step, at any optimization */
            for (int p = 0; p < np; p++)
                f[p][i] = (VT)_mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[p][i]), (__m512)s, (__m512)f[p][i]);
        }
    }
    for (int p = 0; p < np; p++)
        for (int i = 0; i < R; i++) /* (a flat index: gcc's bounds check misreads facc[p][i]) */
            FA_FN(fa_storeu_)(&facc[0][0][0] + (p * FA_LIN_MR + i) * FA_LIN_NR, f[p][i]);
}

/* bfloat16: R rows of a group's packed pairs a (word a[i * lda + j]:
 * row i's bfloat16 x for k = 2j and 2j + 1) times np panels' slices of
 * kp / 2 pairs (w the first, w_sp elements between panels), stored by
 * fa_linear_store_ (as fa_linear_block_bf16_) into y's columns from the
 * first panel's on (cols of them in all). */
FA_INLINE void FA_FN(fa_linear_bf16_dot_)(const int R, const int np, const uint32_t *a,
                                           int64_t lda, const uint16_t *w, int64_t w_sp, int64_t kp,
                                           float *y, int64_t ldy, int cols, int first,
                                           const FA_FN(fa_lin_ep_) *ep)
{
    /* the sums in registers (an array whose address is taken stays in
     * memory), then copied out for the store */
    VT r[FA_LIN_DOT_NP][FA_LIN_MR];
    for (int p = 0; p < np; p++)
        for (int i = 0; i < R; i++) r[p][i] = VSPLAT(0);
    for (int64_t j = 0; j < kp / 2; j++) {
        __m512 wv[FA_LIN_DOT_NP];
        if (R <= FA_LIN_DOT_RS) /* as in fa_linear_i8_dot_ */
            for (int p = 0; p < np; p++)
                _mm_prefetch((const char *)(w + (p + np) * w_sp + j * 2 * FA_LIN_NR), _MM_HINT_T0);
        for (int p = 0; p < np; p++)
            wv[p] = _mm512_loadu_ps((const float *)(w + p * w_sp + j * 2 * FA_LIN_NR));
        for (int i = 0; i < R; i++)
            if (np == 1)
                FA_VDPBF16PS_BCAST(r[0][i], wv[0], a + i * lda + j);
            else {
                const __m512 xb = _mm512_castsi512_ps(_mm512_set1_epi32((int)a[i * lda + j]));
                for (int p = 0; p < np; p++) FA_VDPBF16PS(r[p][i], wv[p], xb);
            }
    }
    VT acc[FA_LIN_DOT_NP][FA_LIN_MR][FA_LIN_NV];
    for (int p = 0; p < np; p++)
        for (int i = 0; i < R; i++) acc[p][i][0] = r[p][i];
    for (int p = 0; p < np; p++) {
        const int c = p * FA_LIN_NR, pc = cols - c < FA_LIN_NR ? cols - c : FA_LIN_NR;
        FA_FN(fa_lin_ep_) e;
        FA_FN(fa_linear_store_)(acc[p], y + c, ldy, R, pc, first,
                                FA_FN(fa_lin_ep_shift_)(ep, c, &e));
    }
}

/* Pack rows [0, m) x columns [0, kc) of x as bfloat16 pairs, row r's
 * kp / 2 words at dst + r * (kp / 2) (the pad and rows [m, mp) zero: the
 * last group's missing rows, or the tiles'), each value rounded to
 * nearest even with NaN kept NaN, as fa_f32_to_bf16 does (16 at a time:
 * the same integer steps). */
static void FA_FN(fa_linear_pack_pairs_)(const float *x, int64_t ldx, int64_t m, int64_t mp,
                                         int64_t kc, int64_t kp, uint32_t *dst)
{
    for (int64_t r = 0; r < mp; r++) {
        uint16_t *d = (uint16_t *)(dst + r * (kp / 2));
        const float *src = x + r * ldx;
        const int64_t n = r < m ? kc : 0;
        for (int64_t k = 0; k < kp; k += 16) {
            const int c = (int)(n - k < 0 ? 0 : n - k < 16 ? n - k : 16);
            const __m512i u = _mm512_castps_si512(
                _mm512_maskz_loadu_ps((__mmask16)((1u << c) - 1), src + k));
            const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
            __m512i h = _mm512_srli_epi32(
                _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd)), 16);
            const __mmask16 nan = _mm512_cmpgt_epu32_mask(
                _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
            h = _mm512_mask_or_epi32(h, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
            const int t = (int)(kp - k < 16 ? kp - k : 16);
            _mm256_mask_storeu_epi16(d + k, (__mmask16)((1u << t) - 1), _mm512_cvtepi32_epi16(h));
        }
    }
}

/* Peak probe of the dot products (kind 1: VDPBF16PS, 2: VPDPBUSD): 24
 * independent chains of zmm instructions on registers (their latency
 * needs more than the FMA probe's 12); ops = iters * 24 * 64 (bfloat16:
 * 32 products, two operations each) or iters * 24 * 128 (int8: 64).
 * Only called where the CPU has kind. */
#define FA_DOT_PROBE_BODY(insn, init)                                            \
    __m512i a[24];                                                               \
    const __m512i b = _mm512_set1_epi32(0x3f803f80), c = _mm512_set1_epi32(0x3c003c00); \
    _Pragma("GCC unroll 24") for (int i = 0; i < 24; i++) a[i] = (init);        \
    for (int64_t it = 0; it < iters; it++) {                                     \
        _Pragma("GCC unroll 24") for (int i = 0; i < 24; i++)                    \
            __asm__(insn " %2, %1, %0" : "+v"(a[i]) : "v"(b), "v"(c));           \
    }                                                                            \
    double sum = 0;                                                              \
    _Pragma("GCC unroll 24") for (int i = 0; i < 24; i++)                        \
        sum += _mm_cvtsi128_si32(_mm512_castsi512_si128(a[i]));                  \
    return sum;
/* bfloat16: sums of normal floats (1 + i, plus pairs of 1 * 2^-7; a
 * subnormal operand could take a slow path) */
static double FA_FN(fa_dot_probe_bf16_)(int64_t iters)
{
    FA_DOT_PROBE_BODY("vdpbf16ps", _mm512_castps_si512(_mm512_set1_ps(1.0f + (float)i)))
}
static double FA_FN(fa_dot_probe_i8_)(int64_t iters)
{
    FA_DOT_PROBE_BODY("vpdpbusd", _mm512_set1_epi32(i))
}
#undef FA_DOT_PROBE_BODY
static double FA_FN(fa_dot_probe_)(int kind, int64_t iters)
{
    return kind == 1 ? FA_FN(fa_dot_probe_bf16_)(iters) : FA_FN(fa_dot_probe_i8_)(iters);
}

#elif FA_VBYTES == 32 && defined(__AVX2__) && defined(__x86_64__)
#define FA_LIN_DOT 1
#define FA_LIN_DOT_I8 1
#define FA_LIN_DOT_BF16 0
#define FA_LIN_DOT_RS 4
/* One panel (two ymm) at a time: FA_LIN_MR = 6 rows give 12 independent
 * chains, and with the two weight vectors and the broadcast of x they fill
 * the 16 ymm registers. */
#define FA_LIN_DOT_NP 1

/* The VEX encoding: the avx2 table has no AVX-512 registers, and VEX has
 * no embedded broadcast, so x comes broadcast in a register.  ({vex}
 * selects AVX-VNNI's form of the mnemonic; the braces are escaped because
 * GCC reads them as assembler-dialect alternatives.) */
#define FA_VPDPBUSD_VEX(acc, wu, xb) \
    __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(wu), "x"(xb))

/* int8 on AVX-VNNI: the avx512 function's contract (np is 1).  The same
 * compensation: w ^ 0x80 is w + 128 as an unsigned byte, and each block's
 * sum starts at -128 * (the sum of its xq).  The float steps are those of
 * fa_linear_i8_rows_ (facc from zero, one FMA per block into memory: the
 * 12 integer sums take the registers), so the result is bitwise the same
 * as the vpmaddubsw path's on every row. */
FA_INLINE void FA_FN(fa_linear_i8_dot_)(const int R, const int np, const int32_t *a,
                                         int64_t lda, const float *sc, const int32_t *su, const int8_t *w,
                                         int64_t w_sp, int64_t kq, int64_t nb,
                                         float (*facc)[FA_LIN_MR][FA_LIN_NR])
{
    (void)np;
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    float *fr = facc[0][0]; /* row i at fr + i * FA_LIN_NR */
    for (int i = 0; i < R; i++)
        for (int h = 0; h < 2; h++) _mm256_storeu_ps(fr + i * FA_LIN_NR + 8 * h, _mm256_setzero_ps());
    for (int64_t b = 0; b < nb; b++) {
        const int64_t j0 = b * (FA_LIN_QB / 4);
        const int64_t j1 = kq / 4 < j0 + FA_LIN_QB / 4 ? kq / 4 : j0 + FA_LIN_QB / 4;
        __m256i acc[FA_LIN_MR][2];
        for (int i = 0; i < R; i++) acc[i][0] = acc[i][1] = _mm256_set1_epi32(-128 * su[b * FA_LIN_MR + i]);
        for (int64_t j = j0; j < j1; j++) {
            if (R <= FA_LIN_DOT_RS) /* as on AVX-512: the next panel's line */
                _mm_prefetch((const char *)(w + w_sp + j * 64), _MM_HINT_T0);
            const __m256i w0 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(w + j * 64)), flip);
            const __m256i w1 =
                _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(w + j * 64 + 32)), flip);
            for (int i = 0; i < R; i++) {
                const __m256i xb = _mm256_set1_epi32(a[i * lda + j]);
                FA_VPDPBUSD_VEX(acc[i][0], w0, xb);
                FA_VPDPBUSD_VEX(acc[i][1], w1, xb);
            }
        }
        for (int i = 0; i < R; i++) {
            const __m256 s = _mm256_set1_ps(sc[b * FA_LIN_MR + i]);
            for (int h = 0; h < 2; h++) {
                float *f = fr + i * FA_LIN_NR + 8 * h;
                _mm256_storeu_ps(f, _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i][h]), s, _mm256_loadu_ps(f)));
            }
        }
    }
}

/* Peak probe (kind 2 only: the path has no bfloat16 dot product): the
 * work of the avx512 probe's iteration (24 x 64 bytes) as 48 ymm
 * instructions on 12 chains, as many as 16 registers hold beside the
 * operands. */
static double FA_FN(fa_dot_probe_)(int kind, int64_t iters)
{
    (void)kind;
    __m256i a[12];
    const __m256i b = _mm256_set1_epi32(0x01010101), c = _mm256_set1_epi32(0x02020202);
    _Pragma("GCC unroll 12") for (int i = 0; i < 12; i++) a[i] = _mm256_set1_epi32(i);
    for (int64_t it = 0; it < iters; it++) {
        _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) {
            _Pragma("GCC unroll 12") for (int i = 0; i < 12; i++) FA_VPDPBUSD_VEX(a[i], b, c);
        }
    }
    double sum = 0;
    _Pragma("GCC unroll 12") for (int i = 0; i < 12; i++)
        sum += _mm_cvtsi128_si32(_mm256_castsi256_si128(a[i]));
    return sum;
}

#elif FA_VBYTES == 16 && defined(__aarch64__)
#include <arm_neon.h>
#define FA_LIN_DOT 1
#define FA_LIN_DOT_I8 1
#define FA_LIN_DOT_BF16 1
#define FA_LIN_DOT_RS 4
/* One panel (four q registers) at a time: FA_LIN_MR = 4 rows give 16
 * chains, with 4 registers of x and 4 of weights 24 of the 32. */
#define FA_LIN_DOT_NP 1

/* The indexed forms: lane l of x's vector (4 consecutive words of a row)
 * broadcast against a weight vector, so one load of x serves 4 steps of
 * k.  A directive in the asm lets the assembler take the instruction
 * without a -march flag for the whole table (it only widens what the
 * assembler accepts for the rest of the file; the compiler's own code is
 * unchanged).  bf16 is an extension of any base; GNU as takes dotprod only
 * on an Armv8.2 base, so a build below that raises its base for it (a
 * build with dotprod in its -march needs nothing, and one with a base
 * above 8.2 has it from Armv8.4 on). */
#if defined(__ARM_FEATURE_DOTPROD)
#define FA_ARCH_DOTPROD ""
#else
#define FA_ARCH_DOTPROD ".arch armv8.2-a+dotprod\n\t"
#endif
#define FA_SDOT_LANE(acc, wq, xv, l)                                                     \
    __asm__(FA_ARCH_DOTPROD "sdot %0.4s, %1.16b, %2.4b[" #l "]"                           \
            : "+w"(acc) : "w"(wq), "w"(xv))
#define FA_BFDOT_LANE(acc, wq, xv, l)                                                    \
    __asm__(".arch_extension bf16\n\tbfdot %0.4s, %1.8h, %2.2h[" #l "]"                  \
            : "+w"(acc) : "w"(wq), "w"(xv))

/* Words [j, j + t) of a packed row (t <= 4) as a vector, the missing lanes
 * zero: the row's next words belong to the next row (or lie past the
 * block), and a NaN there times a zero weight would still be NaN. */
FA_INLINE uint32x4_t FA_FN(fa_dot_words_)(const uint32_t *a, int t)
{
    if (t == 4) return vld1q_u32(a);
    uint32_t tmp[4] = {0, 0, 0, 0};
    __builtin_memcpy(tmp, a, (size_t)t * 4);
    return vld1q_u32(tmp);
}

/* One step of k (word j + l of each row, l a literal) of the R rows: the
 * step's four weight vectors (16 columns) against lane l of xv. */
#define FA_SDOT_STEP(l)                                                                  \
    do {                                                                                 \
        int8x16_t wq[4];                                                                 \
        for (int v = 0; v < 4; v++) wq[v] = vld1q_s8(w + (j + l) * 64 + 16 * v);         \
        for (int i = 0; i < R; i++)                                                      \
            for (int v = 0; v < 4; v++) FA_SDOT_LANE(acc[i][v], wq[v], xv[i], l);        \
    } while (0)
#define FA_BFDOT_STEP(l)                                                                 \
    do {                                                                                 \
        uint16x8_t wv[4];                                                                \
        for (int v = 0; v < 4; v++) wv[v] = vld1q_u16(w + (j + l) * 2 * FA_LIN_NR + 8 * v); \
        for (int i = 0; i < R; i++)                                                      \
            for (int v = 0; v < 4; v++) FA_BFDOT_LANE(r[i][v], wv[v], xv[i], l);         \
    } while (0)
/* The steps of a group of t <= 4 words, lane by lane. */
#define FA_DOT_STEPS(STEP, t)                                                            \
    do {                                                                                 \
        STEP(0);                                                                         \
        if ((t) > 1) STEP(1);                                                            \
        if ((t) > 2) STEP(2);                                                            \
        if ((t) > 3) STEP(3);                                                            \
    } while (0)

/* int8 on SDOT: the avx512 function's contract (np is 1, su unused).
 * SDOT multiplies signed by signed bytes, 4 products summed into each
 * int32 lane: no compensation.  The float steps are the portable branch's
 * of fa_linear_i8_rows_ (facc from zero, one multiply-add per block, fused
 * as the compiler fuses that one), so the result is the same. */
FA_INLINE void FA_FN(fa_linear_i8_dot_)(const int R, const int np, const int32_t *a,
                                         int64_t lda, const float *sc, const int32_t *su, const int8_t *w,
                                         int64_t w_sp, int64_t kq, int64_t nb,
                                         float (*facc)[FA_LIN_MR][FA_LIN_NR])
{
    (void)np, (void)su, (void)w_sp;
    float *fr = facc[0][0]; /* row i at fr + i * FA_LIN_NR */
    for (int i = 0; i < R; i++)
        for (int v = 0; v < 4; v++) vst1q_f32(fr + i * FA_LIN_NR + 4 * v, vdupq_n_f32(0.0f));
    for (int64_t b = 0; b < nb; b++) {
        const int64_t j0 = b * (FA_LIN_QB / 4);
        const int64_t j1 = kq / 4 < j0 + FA_LIN_QB / 4 ? kq / 4 : j0 + FA_LIN_QB / 4;
        int32x4_t acc[FA_LIN_MR][4];
        for (int i = 0; i < R; i++)
            for (int v = 0; v < 4; v++) acc[i][v] = vdupq_n_s32(0);
        for (int64_t j = j0; j < j1; j += 4) {
            const int t = (int)(j1 - j < 4 ? j1 - j : 4);
            int8x16_t xv[FA_LIN_MR];
            for (int i = 0; i < R; i++)
                xv[i] = vreinterpretq_s8_u32(FA_FN(fa_dot_words_)((const uint32_t *)a + i * lda + j, t));
            FA_DOT_STEPS(FA_SDOT_STEP, t);
        }
        for (int i = 0; i < R; i++) {
            const float32x4_t s = vdupq_n_f32(sc[b * FA_LIN_MR + i]);
            for (int v = 0; v < 4; v++) {
                float *f = fr + i * FA_LIN_NR + 4 * v;
                vst1q_f32(f, vfmaq_f32(vld1q_f32(f), vcvtq_f32_s32(acc[i][v]), s));
            }
        }
    }
}

/* bfloat16 on BFDOT: the avx512 function's contract (np is 1).  Each lane
 * adds a pair's two products to its float32 sum; Arm specifies (without
 * FEAT_EBF16, or with FPCR.EBF 0) the products and their sum rounded to
 * float32 and the sum added, each rounding to odd, denormals flushed.  The
 * products of two bfloat16 are exact in float32, so a pair costs two
 * roundings, each within one ulp (round-to-nearest's half ulp, twice):
 * the float32 share of docs/numerics.md's bound, doubled, and the order is
 * fixed by K, as on AVX-512. */
FA_INLINE void FA_FN(fa_linear_bf16_dot_)(const int R, const int np, const uint32_t *a,
                                           int64_t lda, const uint16_t *w, int64_t w_sp, int64_t kp,
                                           float *y, int64_t ldy, int cols, int first,
                                           const FA_FN(fa_lin_ep_) *ep)
{
    (void)np, (void)w_sp;
    float32x4_t r[FA_LIN_MR][4];
    for (int i = 0; i < R; i++)
        for (int v = 0; v < 4; v++) r[i][v] = vdupq_n_f32(0.0f);
    for (int64_t j = 0; j < kp / 2; j += 4) {
        const int t = (int)(kp / 2 - j < 4 ? kp / 2 - j : 4);
        uint32x4_t xv[FA_LIN_MR];
        for (int i = 0; i < R; i++) xv[i] = FA_FN(fa_dot_words_)(a + i * lda + j, t);
        FA_DOT_STEPS(FA_BFDOT_STEP, t);
    }
    VT acc[FA_LIN_MR][FA_LIN_NV];
    for (int i = 0; i < R; i++)
        for (int v = 0; v < FA_LIN_NV; v++) acc[i][v] = (VT)r[i][v];
    FA_FN(fa_linear_store_)(acc, y, ldy, R, cols < FA_LIN_NR ? cols : FA_LIN_NR, first, ep);
}
#undef FA_SDOT_STEP
#undef FA_BFDOT_STEP
#undef FA_DOT_STEPS

/* Peak probe (kind 1: BFDOT, 2: SDOT): the work of the avx512 probe's
 * iteration as 96 q-register instructions on 24 chains (bfloat16: sums of
 * normal floats, as there). */
#define FA_DOT_PROBE_BODY(insn, T, init)                                                 \
    T a[24];                                                                             \
    const uint32x4_t b = vdupq_n_u32(0x3f803f80u), c = vdupq_n_u32(0x3c003c00u);         \
    _Pragma("GCC unroll 24") for (int i = 0; i < 24; i++) a[i] = (init);                 \
    for (int64_t it = 0; it < iters; it++) {                                             \
        _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) {                            \
            _Pragma("GCC unroll 24") for (int i = 0; i < 24; i++)                        \
                __asm__(insn : "+w"(a[i]) : "w"(b), "w"(c));                              \
        }                                                                                \
    }                                                                                    \
    double sum = 0;                                                                      \
    _Pragma("GCC unroll 24") for (int i = 0; i < 24; i++) sum += (double)a[i][0];       \
    return sum;
static double FA_FN(fa_dot_probe_bf16_)(int64_t iters)
{
    FA_DOT_PROBE_BODY(".arch_extension bf16\n\tbfdot %0.4s, %1.8h, %2.8h", float32x4_t,
                      vdupq_n_f32(1.0f + (float)i))
}
static double FA_FN(fa_dot_probe_i8_)(int64_t iters)
{
    FA_DOT_PROBE_BODY(FA_ARCH_DOTPROD "sdot %0.4s, %1.16b, %2.16b", int32x4_t, vdupq_n_s32(i))
}
#undef FA_DOT_PROBE_BODY
static double FA_FN(fa_dot_probe_)(int kind, int64_t iters)
{
    return kind == 1 ? FA_FN(fa_dot_probe_bf16_)(iters) : FA_FN(fa_dot_probe_i8_)(iters);
}

/* Pack rows [0, m) x columns [0, kc) of x as bfloat16 pairs (the avx512
 * function's contract), one value at a time by fa_f32_to_bf16: O(m k)
 * next to the products' O(m k n). */
static void FA_FN(fa_linear_pack_pairs_)(const float *x, int64_t ldx, int64_t m, int64_t mp,
                                         int64_t kc, int64_t kp, uint32_t *dst)
{
    for (int64_t r = 0; r < mp; r++) {
        uint16_t *d = (uint16_t *)(dst + r * (kp / 2));
        const int64_t n = r < m ? kc : 0;
        for (int64_t k = 0; k < kp; k++) d[k] = k < n ? fa_f32_to_bf16(x[r * ldx + k]) : 0;
    }
}

#else
#define FA_LIN_DOT 0
#define FA_LIN_DOT_I8 0
#define FA_LIN_DOT_BF16 0
#endif
#ifndef FA_LIN_I8_HALVES
#define FA_LIN_I8_HALVES 0
#endif

/* The driver of the matrix units' products (fa_linear_args.tiles,
 * linear_tiles.h): the avx512 table's, which the matrix-unit paths fall
 * back to. */
#if FA_VBYTES == 64 && defined(__AVX512F__) && defined(__x86_64__)
#define FA_LIN_TILES 1
#else
#define FA_LIN_TILES 0
#endif

#if FA_LIN_DOT_I8 || FA_LIN_DOT_BF16
/* A call of at most this many rows reads each weight once, from memory:
 * its groups run as sub-blocks, which prefetch the next panels. */
#define FA_LIN_STREAM_ROWS 16
/* Sub-blocks over a group's gr rows (A the call's fa_linear_args): full
 * groups at once, else (and in a call of at most FA_LIN_STREAM_ROWS rows)
 * FA_LIN_DOT_RS rows at a time (R a constant in each call). */
#define FA_LIN_DOT_ROWS_NP(gr, np_, CALL)                                    \
    do {                                                                     \
        if ((gr) == FA_LIN_MR && A->m > FA_LIN_STREAM_ROWS) {                \
            CALL(FA_LIN_MR, np_, 0);                                         \
        } else                                                               \
            for (int s_ = 0; s_ < (gr); s_ += FA_LIN_DOT_RS) {               \
                switch ((gr) - s_ < FA_LIN_DOT_RS ? (gr) - s_ : FA_LIN_DOT_RS) { \
                case 4: CALL(4, np_, s_); break;                             \
                case 3: CALL(3, np_, s_); break;                             \
                case 2: CALL(2, np_, s_); break;                             \
                default: CALL(1, np_, s_); break;                            \
                }                                                            \
            }                                                                \
    } while (0)
/* ... and over np panels (1 or FA_LIN_DOT_NP, a constant in each call) */
#define FA_LIN_DOT_ROWS(gr, np, CALL)                                        \
    do {                                                                     \
        if ((np) == FA_LIN_DOT_NP) FA_LIN_DOT_ROWS_NP(gr, FA_LIN_DOT_NP, CALL); \
        else FA_LIN_DOT_ROWS_NP(gr, 1, CALL);                                \
    } while (0)

#endif

