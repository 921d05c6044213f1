/*
 * kernel_avx512bf16.c: the bfloat16 kernels for CPUs with AVX512-BF16.
 * Compiled with the avx512 flags plus -mavx512bf16.  It provides two
 * kernel tables, which dispatch.c's registry rows "avx512bf16" put in place
 * of avx512's: the few-row (decode) kernel, whose dot products use
 * vdpbf16ps on the raw bfloat16 keys, 32 per instruction, with float32
 * accumulation (wherever cpuid has the bit); and the tile kernel and
 * weights pass with Q.K^T on bfloat16 pairs along d (tile.h), only where
 * vdpbf16ps is as fast as an FMA (AMD; FASTATTN_BF16_TILE overrides).
 * P.V keeps the widen-to-float32 path everywhere: pairs there would need
 * P rounded to bfloat16, which changes the rounding of about a third of
 * the bfloat16 outputs (the tests' correctly-rounded check allows 1%).
 */
#include <stdint.h>
#include <immintrin.h>
#include "kernel.h"

#define FA_VMAX_PS(a, b) _mm512_max_ps((__m512)(a), (__m512)(b))
#define FA_VMAX_PD(a, b) _mm512_max_pd((__m512d)(a), (__m512d)(b))
#define FA_VRCP_PS(x) _mm512_rcp14_ps((__m512)(x))
#define FA_VSCALEF_PS(p, n)                                                          \
    _mm512_maskz_scalef_ps(                                                          \
        _mm512_cmp_ps_mask((__m512)(n), _mm512_set1_ps(-127.0f), _CMP_NEQ_UQ), (__m512)(p), \
        (__m512)(n))

#define FA_ISA_NAME avx512bf16
#define FA_VBYTES 64
#define FA_QK_IB 4
#define FA_QK_JB 6
#define FA_PV_IB 4
#define FA_PV_EB 6
#define FA_BF16DP 1
#define FA_ONLY_BF16 1

#include "kernel_instantiate.h"
