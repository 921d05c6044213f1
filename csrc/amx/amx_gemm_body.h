/*
 * amx_gemm_body.h: the GEMM micro-kernel, written once against
 * amx_tileops.h and instantiated by amx_gemm_emu.c and amx_gemm_real.c
 * (contract in amx_gemm.h).
 */
#include "amx_gemm.h"
#include "amx_tileops.h"

int FA_TILE_FN(fa_amx_gemm_bf16)(int64_t m, int64_t n, int64_t k, const uint16_t *a,
                                 int64_t lda, const uint16_t *packed_b, float *c,
                                 int64_t ldc, int accumulate)
{
    if (m < 0 || n < 0 || k < 0 || m % 32 || n % 32 || k % 32 || lda < k || ldc < n)
        return -1;
    if (m == 0 || n == 0) return 0;
    /* tiles 0-3: C blocks (16 rows x 16 floats); 4-5: A (16 rows x 32
     * bf16); 6-7: B (16 pair rows x 16 columns) -- all 16 x 64 bytes */
    fa_amx_tilecfg cfg;
    fa_amx_cfg_init(&cfg);
    for (int t = 0; t < 8; t++) fa_amx_cfg_tile(&cfg, t, 16, 64);
    FA_TILE_CONFIG(&cfg);
    const int64_t kblocks = k / 32;
    const size_t a_stride = (size_t)lda * sizeof(uint16_t), c_stride = (size_t)ldc * sizeof(float);
    for (int64_t i = 0; i < m; i += 32) {
        for (int64_t j = 0; j < n; j += 32) {
            float *c00 = c + i * ldc + j, *c01 = c00 + 16;
            float *c10 = c00 + 16 * ldc, *c11 = c10 + 16;
            if (accumulate) {
                FA_TILE_LOAD(0, c00, c_stride);
                FA_TILE_LOAD(1, c01, c_stride);
                FA_TILE_LOAD(2, c10, c_stride);
                FA_TILE_LOAD(3, c11, c_stride);
            } else {
                FA_TILE_ZERO(0);
                FA_TILE_ZERO(1);
                FA_TILE_ZERO(2);
                FA_TILE_ZERO(3);
            }
            /* the two 16-column panels of B for this block */
            const uint16_t *b0 = packed_b + (size_t)(j / 16) * (size_t)kblocks * 512;
            const uint16_t *b1 = b0 + (size_t)kblocks * 512;
            FA_TILE_GEMM_2X2(FA_TILE_DPBF16PS, a + i * lda, a + (i + 16) * lda, a_stride, b0, b1,
                             kblocks);
            FA_TILE_STORE(0, c00, c_stride);
            FA_TILE_STORE(1, c01, c_stride);
            FA_TILE_STORE(2, c10, c_stride);
            FA_TILE_STORE(3, c11, c_stride);
        }
    }
    FA_TILE_RELEASE();
    return 0;
}
