/*
 * kernel_avx512.c: the attention tile (kernel_body.h) for the avx512 path.
 * This file alone is compiled with the avx512 flags of csrc/isa_flags.txt;
 * it is called only after dispatch.c has checked that the CPU supports them.
 * AVX-512F: 32 zmm registers; 24 (Q.K, 4 query vectors x 6 keys) and 24
 * (P.V, 4 x 6 value columns) accumulators, K and V broadcast straight from
 * memory as FMA operands.  One blocking serves both vendors: on Intel
 * (two 512-bit FMA ports) the P.V block of 4 x 6 measured 2-5% faster than
 * 4 x 4 (fewer P loads per FMA); on AMD Zen 4 (one 512-bit FMA per cycle)
 * both keep the FMA unit saturated with loads to spare.  Keys and columns
 * that do not fill a block run in blocks of 4, 2 and 1 (tile.h).
 */
#include <stdint.h>
#include "kernel.h"
#include "avx512_hooks.h"

#define FA_ISA_NAME avx512
#define FA_QK_IB 4
#define FA_QK_JB 6
#define FA_PV_IB 4
#define FA_PV_EB 6
/* linear.h: 12 rows x 1 zmm = 12 accumulators (two FMA ports x 4 cycles
 * of latency need 8 in flight) */
#define FA_LIN_MR 12

#include "kernel_instantiate.h"
