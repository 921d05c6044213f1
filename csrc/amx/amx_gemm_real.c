/*
 * amx_gemm_real.c: the TDPBF16PS probe, and the matrix kernel's tile GEMM
 * (tile_gemm.h) as an entry point for amx/test_amx.c, on the real tiles
 * (declared in amx_gemm.h).  Compiled into kernel_amx.c, or alone by
 * tools/check_amx.sh, with -mamx-tile -mamx-bf16 where the compiler has
 * them (gcc >= 11); without them only stubs remain.  Nothing here runs
 * unless fa_amx_available() said yes.
 */
#include <time.h>

#include "amx_gate.h"
#include "amx_gemm.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define FA_AMX_REAL 1
#include "amx_tileops.h"
#define FA_TILE_GEMM fa_amx_gemm_bf16_real
#define FA_TILE_GEMM_DP FA_TILE_DPBF16PS
#include "tile_gemm.h"

int fa_amx_real_compiled(void) { return 1; }

int fa_amx_gemm_bf16_amx(int m, int64_t n, int64_t k, const uint16_t *a, int64_t lda,
                         const uint16_t *packed_b, float *c, int64_t ldc)
{
    fa_tile_gemm_config();
    fa_amx_gemm_bf16_real(m, n, k, a, lda, packed_b, k * 16, c, ldc);
    FA_TILE_RELEASE();
    return 0;
}

double fa_amx_tdpbf16ps_probe(int64_t iters)
{
    if (!fa_amx_available() || iters <= 0) return -1;
    static _Alignas(64) uint16_t src[16 * 32]; /* zeros: no subnormal, no NaN */
    fa_tile_gemm_config();
    FA_TILE_ZERO(0);
    FA_TILE_ZERO(1);
    FA_TILE_ZERO(2);
    FA_TILE_ZERO(3);
    FA_TILE_LOAD(4, src, 64);
    FA_TILE_LOAD(5, src, 64);
    FA_TILE_LOAD(6, src, 64);
    FA_TILE_LOAD(7, src, 64);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int64_t i = 0; i < iters; i++) {
        /* four independent accumulator chains hide the instruction latency */
        FA_TILE_DPBF16PS(0, 4, 6);
        FA_TILE_DPBF16PS(1, 4, 7);
        FA_TILE_DPBF16PS(2, 5, 6);
        FA_TILE_DPBF16PS(3, 5, 7);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    FA_TILE_RELEASE();
    const double sec = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    return sec > 0 ? (double)iters * 4.0 * 16384.0 / sec * 1e-9 : -1;
}

double fa_amx_tdpbssd_probe(int64_t iters)
{
    if (!fa_amx_available() || !fa_amx_int8_available() || iters <= 0) return -1;
    static _Alignas(64) int8_t src[16 * 64]; /* zeros */
    fa_tile_gemm_config(); /* 16 x 64 bytes: 16 x 16 x 64 products a tile step */
    FA_TILE_ZERO(0);
    FA_TILE_ZERO(1);
    FA_TILE_ZERO(2);
    FA_TILE_ZERO(3);
    FA_TILE_LOAD(4, src, 64);
    FA_TILE_LOAD(5, src, 64);
    FA_TILE_LOAD(6, src, 64);
    FA_TILE_LOAD(7, src, 64);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int64_t i = 0; i < iters; i++) {
        FA_TILE_DPBSSD(0, 4, 6);
        FA_TILE_DPBSSD(1, 4, 7);
        FA_TILE_DPBSSD(2, 5, 6);
        FA_TILE_DPBSSD(3, 5, 7);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    FA_TILE_RELEASE();
    const double sec = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    return sec > 0 ? (double)iters * 4.0 * 32768.0 / sec * 1e-9 : -1;
}
#else
int fa_amx_real_compiled(void) { return 0; }

int fa_amx_gemm_bf16_amx(int m, int64_t n, int64_t k, const uint16_t *a, int64_t lda,
                         const uint16_t *packed_b, float *c, int64_t ldc)
{
    (void)m, (void)n, (void)k, (void)a, (void)lda, (void)packed_b, (void)c, (void)ldc;
    return -1;
}

double fa_amx_tdpbf16ps_probe(int64_t iters)
{
    (void)iters;
    return -1;
}

double fa_amx_tdpbssd_probe(int64_t iters)
{
    (void)iters;
    return -1;
}
#endif
