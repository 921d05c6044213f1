/*
 * kernel_avx512bf16.c: the bfloat16 kernels for CPUs with AVX512-BF16.
 * Compiled with the avx512bf16 flags of csrc/isa_flags.txt.  It provides
 * two kernel tables, which dispatch.c's refinements "avx512bf16" and
 * "avx512bf16_pairs" put in place of avx512's: the few-row (decode)
 * kernel, whose dot products use vdpbf16ps on the raw bfloat16 keys, 32 per
 * instruction, with float32 accumulation (wherever cpuid has the bit); and
 * the tile kernel and weights pass with Q.K^T on bfloat16 pairs along d
 * (tile.h), only under the plan's bfloat16 tile policy "pairs" (fastattn.h:
 * AMD by default, FASTATTN_BF16_TILE overrides).
 * P.V keeps the widen-to-float32 path everywhere: pairs there would need
 * P rounded to bfloat16, which changes the rounding of about a third of
 * the bfloat16 outputs (the tests' correctly-rounded check allows 1%).
 */
#include <stdint.h>
#include "kernel.h"
#include "avx512_hooks.h"

#define FA_ISA_NAME avx512bf16
#define FA_QK_IB 4
#define FA_QK_JB 6
#define FA_PV_IB 4
#define FA_PV_EB 6
#define FA_BF16DP 1
#define FA_ONLY_BF16 1

#include "kernel_instantiate.h"
