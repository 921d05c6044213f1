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

#include "kernel_instantiate.h"
