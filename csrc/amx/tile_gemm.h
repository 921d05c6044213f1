/*
 * tile_gemm.h: the tile GEMM of the matrix units and the layout of its
 * packed B operand, written once against amx_tileops.h.  The attention
 * kernel (kernels/matrix.h) instantiates it on the real tiles and on the
 * emulation; amx/test_amx.c tests those same instantiations.
 *
 *   C (mpad x n, float32, ldc) = A (mpad x depth, 16-bit, lda) . B
 *
 * A is read in place, row-major.  B is packed (fa_mx_b_index) as n / 16
 * panels of 16 columns, b_panel elements apart, each depth / 32 tiles of
 * 1 KB whose row kp holds the pair (B[2kp][col], B[2kp+1][col]) of its 16
 * columns: the layout that TDPBF16PS and TDPFP16PS read (and a linear
 * layer's bfloat16 weight, kernels/linear.h: b_panel is then the whole
 * padded K of a panel, depth one block of it).  mpad and depth are
 * multiples of 32, n of 16.  The caller has loaded the tile configuration
 * (fa_tile_gemm_config).  Register blocking 2 x 2: for each 32 x 32 block
 * of C, tiles 0-3 hold the accumulators over the whole depth, 4-5 two
 * blocks of A and 6-7 two of B, each loaded tile used twice
 * (FA_TILE_GEMM_2X2); a last panel of 16 columns runs as 2 x 1 (tiles 0
 * and 2, FA_TILE_GEMM_2X1).
 *
 * Included after amx_tileops.h with FA_TILE_GEMM (the function's name) and
 * FA_TILE_GEMM_DP (the tile product, FA_TILE_DPBF16PS or FA_TILE_DPFP16PS)
 * defined; both are undefined at the end, so it may be included again.
 */
#include <stddef.h>
#include <stdint.h>

#ifndef FA_TILE_GEMM_ONCE
#define FA_TILE_GEMM_ONCE
/* Element (row, col) of a packed B with kblocks tiles per 16-column panel:
 * `row` is the depth index. */
static inline size_t fa_mx_b_index(int64_t kblocks, int64_t row, int64_t col)
{
    return (size_t)((col / 16) * kblocks + row / 32) * 512 + (size_t)((row & 31) >> 1) * 32 +
           (size_t)(col % 16) * 2 + (size_t)(row & 1);
}

/* The one tile configuration of the GEMM: 8 tiles of 16 rows x 64 bytes,
 * loaded on the calling thread (release with FA_TILE_RELEASE). */
static inline __attribute__((always_inline)) void fa_tile_gemm_config(void)
{
    fa_amx_tilecfg cfg;
    fa_amx_cfg_init(&cfg);
    for (int t = 0; t < 8; t++) fa_amx_cfg_tile(&cfg, t, 16, 64);
    FA_TILE_CONFIG(&cfg);
}
#endif

static void FA_TILE_GEMM(int mpad, int64_t n, int64_t depth, const uint16_t *a, int64_t lda,
                         const uint16_t *b, int64_t b_panel, float *c, int64_t ldc)
{
    const int64_t kblocks = depth / 32;
    const size_t as = (size_t)lda * 2, cs = (size_t)ldc * 4;
    for (int64_t j = 0; j < n; j += 32) {
        const uint16_t *b0 = b + (size_t)(j / 16) * (size_t)b_panel;
        const uint16_t *b1 = b0 + (size_t)b_panel;
        for (int i = 0; i < mpad; i += 32) {
            const uint16_t *a0 = a + (size_t)i * (size_t)lda, *a1 = a0 + 16 * (size_t)lda;
            float *c0 = c + (size_t)i * (size_t)ldc + j, *c1 = c0 + 16 * (size_t)ldc;
            FA_TILE_ZERO(0);
            FA_TILE_ZERO(2);
            if (j + 16 < n) {
                FA_TILE_ZERO(1);
                FA_TILE_ZERO(3);
                FA_TILE_GEMM_2X2(FA_TILE_GEMM_DP, a0, a1, as, b0, b1, kblocks);
                FA_TILE_STORE(1, c0 + 16, cs);
                FA_TILE_STORE(3, c1 + 16, cs);
            } else {
                FA_TILE_GEMM_2X1(FA_TILE_GEMM_DP, a0, a1, as, b0, kblocks);
            }
            FA_TILE_STORE(0, c0, cs);
            FA_TILE_STORE(2, c1, cs);
        }
    }
}

#undef FA_TILE_GEMM
#undef FA_TILE_GEMM_DP
