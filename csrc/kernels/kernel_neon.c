/*
 * kernel_neon.c: the attention tile (kernel_body.h) for the neon path (aarch64).
 * Advanced SIMD is part of the aarch64 baseline, so no extra flags are
 * needed; only aarch64 builds compile this file.
 * 32 128-bit registers with FMA: 24 (Q.K) and 16 (P.V) accumulators.
 */
#include <stdint.h>
#include "kernel.h"


#define FA_ISA_NAME neon
#define FA_VBYTES 16
#define FA_QK_IB 4
#define FA_QK_JB 6
#define FA_PV_IB 4
#define FA_PV_EB 4

#define FA_T float
#define FA_TNAME f32
#define FA_IS_DOUBLE 0
#include "kernel_body.h"
#undef FA_T
#undef FA_TNAME
#undef FA_IS_DOUBLE

#define FA_T double
#define FA_TNAME f64
#define FA_IS_DOUBLE 1
#include "kernel_body.h"
