/*
 * kernel_avx512bf16.c: the bfloat16 kernels for CPUs with AVX512-BF16.
 * Compiled with the avx512 flags plus -mavx512bf16; its kernel table holds
 * only the few-row (decode) kernel, which dispatch.c's registry row
 * "avx512bf16" puts in place of avx512's when cpuid has the bit: its dot
 * products use vdpbf16ps on the raw bfloat16 keys, 32 per instruction, with
 * float32 accumulation.  The tile kernel keeps the widen-to-float32 path of
 * kernel_avx512.c (vectors there run along the queries, while vdpbf16ps
 * pairs elements along D).
 */
#include <stdint.h>
#include <immintrin.h>
#include "kernel.h"

#define FA_VMAX_PS(a, b) _mm512_max_ps((__m512)(a), (__m512)(b))
#define FA_VMAX_PD(a, b) _mm512_max_pd((__m512d)(a), (__m512d)(b))
#define FA_VRCP_PS(x) _mm512_rcp14_ps((__m512)(x))
#define FA_VSCALEF_PS(p, n) _mm512_scalef_ps((__m512)(p), (__m512)(n))

#define FA_ISA_NAME avx512bf16
#define FA_VBYTES 64
#define FA_QK_IB 4
#define FA_QK_JB 6
#define FA_PV_IB 4
#define FA_PV_EB 4
#define FA_BF16DP 1
#define FA_ONLY_BF16 1

#include "kernel_instantiate.h"
