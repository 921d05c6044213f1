/*
 * avx512_hooks.h: what every AVX-512-class kernel file (kernel_avx512.c,
 * kernel_avx512bf16.c, kernel_avx512vnni.c, kernel_amx.c, kernel_amx_emu.c)
 * tells the shared kernel code: 64-byte vectors, and vec.h's
 * customization points as single AVX-512 instructions.  Included by those
 * files before their instantiation header; they are compiled with at least
 * the avx512 flags of csrc/isa_flags.txt.
 */
#ifndef FA_AVX512_HOOKS_H
#define FA_AVX512_HOOKS_H

#include <immintrin.h>

#define FA_VBYTES 64

/* Native lane max (the generic select costs three instructions). */
#define FA_VMAX_PS(a, b) _mm512_max_ps((__m512)(a), (__m512)(b))
#define FA_VMAX_PD(a, b) _mm512_max_pd((__m512d)(a), (__m512d)(b))
/* 14-bit reciprocal estimate (the soft cap's tanh refines it). */
#define FA_VRCP_PS(x) _mm512_rcp14_ps((__m512)(x))
/* p * 2^n in one instruction (the softmax's exp2; see vec.h), +0 where
 * n == -127 (the clamp) and NaN where n is NaN. */
#define FA_VSCALEF_PS(p, n)                                                                 \
    _mm512_maskz_scalef_ps(                                                                 \
        _mm512_cmp_ps_mask((__m512)(n), _mm512_set1_ps(-127.0f), _CMP_NEQ_UQ), (__m512)(p), \
        (__m512)(n))

#endif /* FA_AVX512_HOOKS_H */
