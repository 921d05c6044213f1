/*
 * kernel_amx_emu.c: the matrix-unit kernel (matrix.h) compiled against the
 * portable tile emulation (amx/amx_emu.c), with the instructions' exact
 * arithmetic, bfloat16 and float16 (TDPFP16PS).  It runs on any x86-64 CPU
 * with AVX-512 and AVX512-BF16 (its softmax is the AVX-512 code of the
 * real kernel) and is never chosen automatically: FASTATTN_ISA=amx_emu
 * selects it, so the whole test suite can exercise the matrix path on
 * CPUs without AMX.  Slow (the tile products are scalar C): for tests.
 */
#include <stdint.h>
#include "kernel.h"

#define FA_AMX_REAL 0
#include "../amx/amx_tileops.h"
#include "avx512_hooks.h"

#define FA_ISA_NAME amx_emu

#include "matrix_instantiate.h"
