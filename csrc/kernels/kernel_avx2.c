/*
 * kernel_avx2.c: the attention tile (kernel_body.h) for the avx2 path.
 * This file alone is compiled with the avx2 flags of csrc/isa_flags.txt; it
 * is called only after dispatch.c has checked that the CPU supports them.
 * AVX2 + FMA: 16 ymm registers; 12 (Q.K) and 8 (P.V) accumulators leave
 * room for the operands and the broadcast.
 */
#include <stdint.h>
#include <immintrin.h>
#include "kernel.h"

/* Native lane max (the generic select costs three instructions). */
#define FA_VMAX_PS(a, b) _mm256_max_ps((__m256)(a), (__m256)(b))
#define FA_VMAX_PD(a, b) _mm256_max_pd((__m256d)(a), (__m256d)(b))

#define FA_ISA_NAME avx2
#define FA_VBYTES 32
#define FA_QK_IB 2
#define FA_QK_JB 6
#define FA_PV_IB 2
#define FA_PV_EB 4
/* linear.h: 6 rows x 2 ymm = 12 accumulators */
#define FA_LIN_MR 6

#include "kernel_instantiate.h"
