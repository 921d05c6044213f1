/*
 * linear_dot.h: the dot-product blocks of the linear layer on CPUs that
 * have them, included by linear.h in two tables:
 *   avx512  VDPBF16PS for bfloat16 pairs (the avx512bf16 refinement) and
 *           VPDPBUSD for int8 quads (avx512vnni);
 *   avx2    the VEX form of VPDPBUSD on ymm for int8 (avxvnni: Intel
 *           client cores without AVX-512, and AMD's since Zen 5).
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
            for (int p = 0; p < np; p++) f[p][i] += (VT)_mm512_cvtepi32_ps(acc[p][i]) * s;
        }
    }
    for (int p = 0; p < np; p++)
        for (int i = 0; i < R; i++) FA_FN(fa_storeu_)(facc[p][i], f[p][i]);
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
 * kp / 2 words at dst + r * (kp / 2) (the pad and the last group's
 * missing rows zero), each value rounded to nearest even with NaN kept
 * NaN, as fa_f32_to_bf16 does (16 at a time: the same integer steps). */
static void FA_FN(fa_linear_pack_pairs_)(const float *x, int64_t ldx, int64_t m, int64_t kc,
                                         int64_t kp, uint32_t *dst)
{
    const int64_t mp = (m + FA_LIN_MR - 1) / FA_LIN_MR * FA_LIN_MR;
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

#else
#define FA_LIN_DOT 0
#define FA_LIN_DOT_I8 0
#define FA_LIN_DOT_BF16 0
#endif

#if FA_LIN_DOT_I8 || FA_LIN_DOT_BF16
/* Sub-blocks over a group's gr rows: full groups at once, else
 * FA_LIN_DOT_RS rows at a time (R a constant in each call). */
#define FA_LIN_DOT_ROWS_NP(gr, np_, CALL)                                    \
    do {                                                                     \
        if ((gr) == FA_LIN_MR) {                                             \
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

