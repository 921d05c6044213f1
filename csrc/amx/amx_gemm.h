/*
 * amx_gemm.h: a bfloat16 GEMM micro-kernel on the AMX tiles, the building
 * block of the matrix-unit attention kernels.
 *
 *   C (M x N, float32) = A (M x K, bfloat16) . B (K x N, bfloat16)   or  C +=
 *
 * A is read in place (row-major, lda elements between rows).  B is packed
 * once by fa_amx_pack_b into the pair-interleaved tile layout TDPBF16PS
 * expects: for each panel of 16 columns and each block of 32 k, one
 * 1 KB tile whose row kp holds (B[2kp][n], B[2kp+1][n]) for n = 0..15.
 * Odd K is padded with zeros by the packing, and A must then be padded as
 * well: the kernel requires M % 32 == 0, N % 32 == 0 and K % 32 == 0.
 *
 * Register blocking 2 x 2 (as in the best CPU attention kernels): for each
 * 32 x 32 block of C, tiles 0-3 hold the four 16 x 16 float32
 * accumulators for the whole K loop; per 32 k, tiles 4-5 take two 16 x 32
 * blocks of A and tiles 6-7 two packed blocks of B; four TDPBF16PS use
 * each loaded tile twice.
 */
#ifndef FA_AMX_GEMM_H
#define FA_AMX_GEMM_H

#include <stddef.h>
#include <stdint.h>

/* Elements (uint16) of the packed B for K x N. */
size_t fa_amx_packed_b_size(int64_t k, int64_t n);
/* Pack B (K x N bfloat16, ldb elements between rows) for the kernel; N
 * a multiple of 16, K padded to 32 with zeros. */
void fa_amx_pack_b(int64_t k, int64_t n, const uint16_t *b, int64_t ldb, uint16_t *packed);

/* The kernel on the emulation (runs everywhere) and on the real tiles (only
 * after fa_amx_available(); compiled with AMX flags, else a stub).  Return
 * 0, or -1 for a shape outside the contract (or no real build). */
int fa_amx_gemm_bf16_emu(int64_t m, int64_t n, int64_t k, const uint16_t *a, int64_t lda,
                         const uint16_t *packed_b, float *c, int64_t ldc, int accumulate);
int fa_amx_gemm_bf16_amx(int64_t m, int64_t n, int64_t k, const uint16_t *a, int64_t lda,
                         const uint16_t *packed_b, float *c, int64_t ldc, int accumulate);
/* 1 if this build has the real-instruction kernel. */
int fa_amx_real_compiled(void);

/* TDPBF16PS throughput probe (real instructions): iters rounds of 4
 * independent TDPBF16PS on tiles already loaded (16 x 16 x 32 each, 16384
 * FLOP).  Returns GFLOP/s of the calling thread, or -1 when the tiles are
 * not available (fa_amx_available() says why) or not compiled. */
double fa_amx_tdpbf16ps_probe(int64_t iters);

#endif /* FA_AMX_GEMM_H */
