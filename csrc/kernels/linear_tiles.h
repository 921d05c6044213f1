/*
 * linear_tiles.h: the matrix-unit products of the linear layer, for the
 * tables of the amx and amx_emu paths (matrix_instantiate.h, after
 * amx_tileops.h): bfloat16 weights on TDPBF16PS through the one tile GEMM
 * (amx/tile_gemm.h), int8 weights on TDPBSSD.  The driver is linear.h's
 * (the fallback vector path's), which packs or quantizes x, runs the
 * epilogue and stores y; it calls these through fa_linear_args.tiles
 * (kernel.h's fa_lin_tiles) for each block of FA_LIN_TILE_ROWS rows and
 * two panels, so the tiles read the packed weight in place: a bfloat16
 * panel's pairs and an int8 panel's quads are the B layouts of the two
 * instructions, 1 KB a tile step (FA_LIN_KALIGN pads K to whole steps).
 *
 * int8: the sums of each block of FA_LIN_QB k are exact in int32 (TDPBSSD
 * multiplies signed bytes; |xq|, |wq| <= 127, so 32 products stay far
 * from 2^31), so they equal the vector paths' block sums bitwise, and the
 * float steps after them are the VPDPBUSD path's: the int8 results of the
 * two paths are the same bits.  Each block needs its own tile products
 * (the scale of x changes per block): A tiles of 16 rows x 32 bytes, B
 * tiles of 8 quad rows, the four int32 accumulators stored after each
 * block and scaled into float32 sums.
 */

/* The int8 tile shapes: C 16 rows x 64 bytes (tiles 0-3), A 16 rows x
 * FA_LIN_QB bytes (4-5), B FA_LIN_QB / 4 quad rows x 64 bytes (6-7). */
static void FA_MX_NAME(fa_lin_tiles_i8_config, FA_ISA_NAME)(void)
{
    fa_amx_tilecfg cfg;
    fa_amx_cfg_init(&cfg);
    for (int t = 0; t < 4; t++) fa_amx_cfg_tile(&cfg, t, 16, 64);
    fa_amx_cfg_tile(&cfg, 4, 16, FA_LIN_QB);
    fa_amx_cfg_tile(&cfg, 5, 16, FA_LIN_QB);
    fa_amx_cfg_tile(&cfg, 6, FA_LIN_QB / 4, 64);
    fa_amx_cfg_tile(&cfg, 7, FA_LIN_QB / 4, 64);
    FA_TILE_CONFIG(&cfg);
}

static void FA_MX_NAME(fa_lin_tiles_begin, FA_ISA_NAME)(int wtype)
{
    if (wtype == FA_LIN_I8) FA_MX_NAME(fa_lin_tiles_i8_config, FA_ISA_NAME)();
    else fa_tile_gemm_config();
}

static void FA_MX_NAME(fa_lin_tiles_end, FA_ISA_NAME)(void) { FA_TILE_RELEASE(); }

/* The one tile GEMM over bfloat16 pairs, as the linear layer calls it. */
#define FA_TILE_GEMM FA_MX_NAME(fa_lin_tile_gemm, FA_ISA_NAME)
#define FA_TILE_GEMM_DP FA_TILE_DPBF16PS
#include "../amx/tile_gemm.h"

static void FA_MX_NAME(fa_lin_tiles_bf16, FA_ISA_NAME)(const uint16_t *a, int64_t lda,
                                                       const uint16_t *w, int64_t w_sp,
                                                       int64_t kp, int np, float *c, int64_t ldc)
{
    FA_MX_NAME(fa_lin_tile_gemm, FA_ISA_NAME)(FA_LIN_TILE_ROWS, 16 * np, kp, a, lda, w, w_sp, c,
                                              ldc);
}

static void FA_MX_NAME(fa_lin_tiles_i8, FA_ISA_NAME)(const int8_t *a, int64_t lda,
                                                     const float *sc, const int8_t *w,
                                                     int64_t w_sp, int64_t nb, int np,
                                                     float f[2][FA_LIN_TILE_ROWS][16])
{
    int32_t blk[FA_LIN_TILE_ROWS][32] __attribute__((aligned(64)));
    const int8_t *a1 = a + 16 * lda;
    for (int p = 0; p < np; p++)
        for (int r = 0; r < FA_LIN_TILE_ROWS; r++)
            for (int c = 0; c < 16; c++) f[p][r][c] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const int64_t kb = b * FA_LIN_QB; /* bytes into a row of x; quad rows * 64 into w */
        FA_TILE_ZERO(0);
        FA_TILE_ZERO(2);
        FA_TILE_LOAD(4, a + kb, lda);
        FA_TILE_LOAD(5, a1 + kb, lda);
        FA_TILE_LOAD(6, w + kb * 16, 64);
        FA_TILE_DPBSSD(0, 4, 6);
        FA_TILE_DPBSSD(2, 5, 6);
        if (np == 2) {
            FA_TILE_ZERO(1);
            FA_TILE_ZERO(3);
            FA_TILE_LOAD(7, w + w_sp + kb * 16, 64);
            FA_TILE_DPBSSD(1, 4, 7);
            FA_TILE_DPBSSD(3, 5, 7);
            FA_TILE_STORE(1, &blk[0][16], sizeof blk[0]);
            FA_TILE_STORE(3, &blk[16][16], sizeof blk[0]);
        }
        FA_TILE_STORE(0, &blk[0][0], sizeof blk[0]);
        FA_TILE_STORE(2, &blk[16][0], sizeof blk[0]);
        /* as the vector paths: f = f + (float)sum * scale, one fused
         * multiply-add, written out */
        for (int p = 0; p < np; p++)
            for (int r = 0; r < FA_LIN_TILE_ROWS; r++) {
                const float s = sc[b * FA_LIN_TILE_ROWS + r];
                for (int c = 0; c < 16; c++)
                    f[p][r][c] = __builtin_fmaf((float)blk[r][16 * p + c], s, f[p][r][c]);
            }
    }
}

static const fa_lin_tiles FA_MX_NAME(fa_lin_tiles, FA_ISA_NAME) = {
    .begin = FA_MX_NAME(fa_lin_tiles_begin, FA_ISA_NAME),
    .end = FA_MX_NAME(fa_lin_tiles_end, FA_ISA_NAME),
    .bf16 = FA_MX_NAME(fa_lin_tiles_bf16, FA_ISA_NAME),
    .i8 = FA_MX_NAME(fa_lin_tiles_i8, FA_ISA_NAME),
};
