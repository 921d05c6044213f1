/*
 * matrix_instantiate.h: compile the matrix-unit kernel (matrix.h, with the
 * vector vocabulary and score pipeline it shares) once per storage type,
 * and define the kernel table fa_kernels_<isa> of a matrix-unit file.
 * Included by kernel_amx.c and kernel_amx_emu.c after they have included
 * amx_tileops.h and avx512_hooks.h and defined FA_ISA_NAME.
 *
 * The table holds only the matrix family: float32 (the reduced-precision
 * modes of fa_params.precision), bfloat16, and float16 (both tile
 * vocabularies have TDPFP16PS; on the real tiles dispatch.c runs it only
 * where the gate reported AMX-FP16).  Every other family falls back to the
 * vector path the registry row names (dispatch.c); the linear layer runs
 * that path's driver with this table's tile products (linear_tiles.h).
 */
#include "../half.h"
#include "scratch.h"

#define FA_MATRIX_ONLY 1
#define FA_T float
#define FA_IS_DOUBLE 0

#define FA_MX_KIND 0 /* float32 (the reduced precisions) */
#include "matrix_type.h"
#define FA_MX_KIND 1 /* float16 (TDPFP16PS; dispatched only with AMX-FP16) */
#include "matrix_type.h"
#define FA_MX_KIND 2 /* bfloat16 */
#include "matrix_type.h"

#undef FA_T
#undef FA_IS_DOUBLE
#undef FA_MATRIX_ONLY

#define FA_MX_NAME_(f, isa) f##_##isa
#define FA_MX_NAME(f, isa) FA_MX_NAME_(f, isa)

/* One configuration for every product of the kernel (the tile GEMM's),
 * loaded once per thread per call and released after. */
static void FA_MX_NAME(fa_tiles_begin, FA_ISA_NAME)(void) { fa_tile_gemm_config(); }

static void FA_MX_NAME(fa_tiles_end, FA_ISA_NAME)(void) { FA_TILE_RELEASE(); }

#include "linear_tiles.h"

const fa_kernels FA_MX_NAME(fa_kernels, FA_ISA_NAME) = {
    .kernel = {[FA_FAMILY_MATRIX] = {[FA_F32] = FA_MX_NAME(fa_matrix_f32, FA_ISA_NAME),
                                     [FA_F16] = FA_MX_NAME(fa_matrix_f16, FA_ISA_NAME),
                                     [FA_BF16] = FA_MX_NAME(fa_matrix_bf16, FA_ISA_NAME)}},
    .tiles_begin = FA_MX_NAME(fa_tiles_begin, FA_ISA_NAME),
    .tiles_end = FA_MX_NAME(fa_tiles_end, FA_ISA_NAME),
    .pack = {[FA_F32] = FA_MX_NAME(fa_matrix_pack_f32, FA_ISA_NAME),
             [FA_F16] = FA_MX_NAME(fa_matrix_pack_f16, FA_ISA_NAME),
             [FA_BF16] = FA_MX_NAME(fa_matrix_pack_bf16, FA_ISA_NAME)},
    .lin_tiles = &FA_MX_NAME(fa_lin_tiles, FA_ISA_NAME),
};
#undef FA_MX_NAME
#undef FA_MX_NAME_
