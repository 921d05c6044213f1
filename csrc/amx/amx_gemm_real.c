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

/* iters rounds of four independent tile products (TDPBSSD where int8,
 * else TDPBF16PS) on loaded tiles of zeros (no subnormal, no NaN), in
 * G operations per second: 16 x 16 x 32 bfloat16 or 16 x 16 x 64 byte
 * products a tile step.  Four accumulator chains hide the latency. */
static double fa_amx_dp_probe(int int8, int64_t iters)
{
    static _Alignas(64) uint8_t src[16 * 64]; /* one tile of 16 rows x 64 bytes */
    fa_tile_gemm_config();
    FA_TILE_ZERO(0);
    FA_TILE_ZERO(1);
    FA_TILE_ZERO(2);
    FA_TILE_ZERO(3);
    FA_TILE_LOAD(4, src, 64);
    FA_TILE_LOAD(5, src, 64);
    FA_TILE_LOAD(6, src, 64);
    FA_TILE_LOAD(7, src, 64);
#define FA_AMX_PROBE_ROUNDS(DP)                  \
    for (int64_t i = 0; i < iters; i++) {        \
        DP(0, 4, 6);                             \
        DP(1, 4, 7);                             \
        DP(2, 5, 6);                             \
        DP(3, 5, 7);                             \
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (int8) FA_AMX_PROBE_ROUNDS(FA_TILE_DPBSSD)
    else FA_AMX_PROBE_ROUNDS(FA_TILE_DPBF16PS)
    clock_gettime(CLOCK_MONOTONIC, &t1);
#undef FA_AMX_PROBE_ROUNDS
    FA_TILE_RELEASE();
    const double sec = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    return sec > 0 ? (double)iters * 4.0 * (int8 ? 32768.0 : 16384.0) / sec * 1e-9 : -1;
}

double fa_amx_tdpbf16ps_probe(int64_t iters)
{
    if (!fa_amx_available() || iters <= 0) return -1;
    return fa_amx_dp_probe(0, iters);
}

double fa_amx_tdpbssd_probe(int64_t iters)
{
    if (!fa_amx_available() || !fa_amx_int8_available() || iters <= 0) return -1;
    return fa_amx_dp_probe(1, iters);
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
