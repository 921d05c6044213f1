/*
 * kernel_avx512.c: the attention tile (kernel_body.h) for the avx512 path.
 * This file alone is compiled with the avx512 ISA flags (see setup.py); it is
 * called only after dispatch.c has checked that the CPU supports them.
 * AVX-512F: 32 zmm registers; 24 (Q.K, 4 query vectors x 6 keys) and 24
 * (P.V, 4 x 6 value columns) accumulators, K and V broadcast straight from
 * memory as FMA operands.  One blocking serves both vendors: on Intel
 * (two 512-bit FMA ports) the P.V block of 4 x 6 measured 2-5% faster than
 * 4 x 4 (fewer P loads per FMA); on AMD Zen 4 (one 512-bit FMA per cycle)
 * both keep the FMA unit saturated with loads to spare.  Keys and columns
 * that do not fill a block run in blocks of 4, 2 and 1 (tile.h).
 */
#include <stdint.h>
#include <immintrin.h>
#include "kernel.h"

/* Native lane max (the generic select costs three instructions). */
#define FA_VMAX_PS(a, b) _mm512_max_ps((__m512)(a), (__m512)(b))
#define FA_VMAX_PD(a, b) _mm512_max_pd((__m512d)(a), (__m512d)(b))
/* 14-bit reciprocal estimate (the soft cap's tanh refines it). */
#define FA_VRCP_PS(x) _mm512_rcp14_ps((__m512)(x))
/* p * 2^n in one instruction (the softmax's exp2; see vec.h), +0 where
 * n == -127 (the clamp) and NaN where n is NaN. */
#define FA_VSCALEF_PS(p, n)                                                          \
    _mm512_maskz_scalef_ps(                                                          \
        _mm512_cmp_ps_mask((__m512)(n), _mm512_set1_ps(-127.0f), _CMP_NEQ_UQ), (__m512)(p), \
        (__m512)(n))

#define FA_ISA_NAME avx512
#define FA_VBYTES 64
#define FA_QK_IB 4
#define FA_QK_JB 6
#define FA_PV_IB 4
#define FA_PV_EB 6
/* linear.h: 12 rows x 1 zmm = 12 accumulators (two FMA ports x 4 cycles
 * of latency need 8 in flight) */
#define FA_LIN_MR 12

#include "kernel_instantiate.h"
