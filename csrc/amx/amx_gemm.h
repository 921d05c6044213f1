/*
 * amx_gemm.h: what amx_gemm_real.c (compiled into kernel_amx.c with the
 * AMX flags) gives outside the kernel table: whether the real-tile code was
 * compiled, the TDPBF16PS throughput probe, and the matrix kernel's tile
 * GEMM (tile_gemm.h) on the real tiles for amx/test_amx.c.
 */
#ifndef FA_AMX_GEMM_H
#define FA_AMX_GEMM_H

#include <stddef.h>
#include <stdint.h>

/* 1 if this build has the real-instruction code. */
int fa_amx_real_compiled(void);

/* TDPBF16PS throughput probe (real instructions): iters rounds of 4
 * independent TDPBF16PS on tiles already loaded (16 x 16 x 32 each, 16384
 * FLOP).  Returns GFLOP/s of the calling thread, or -1 when the tiles are
 * not available (fa_amx_available() says why) or not compiled. */
double fa_amx_tdpbf16ps_probe(int64_t iters);

/* C (m x n, float32) = A (m x k, bfloat16) . B packed by fa_mx_b_index,
 * on the real tiles through the matrix kernel's GEMM (tile_gemm.h: m, n, k
 * multiples of 32), with its tile configuration loaded and released
 * around it.  Only after fa_amx_available(); returns 0, or -1 when the
 * real-instruction code was not compiled. */
int fa_amx_gemm_bf16_amx(int m, int64_t n, int64_t k, const uint16_t *a, int64_t lda,
                         const uint16_t *packed_b, float *c, int64_t ldc);

#endif /* FA_AMX_GEMM_H */
