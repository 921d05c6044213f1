/*
 * kernel_amx.c: the matrix-unit kernel (matrix.h) on the real AMX tiles
 * (TDPBF16PS), for bfloat16 inputs and the reduced-precision float32 modes.
 * Compiled with the avx512bf16 flags plus -mamx-tile -mamx-bf16; nothing
 * here runs unless the gate (amx/amx_gate.c: cpuid, XCR0 and the kernel's
 * tile-data permission) said yes, which the registry row "amx" and the plan
 * check.  Float16 takes TDPFP16PS (AMX-FP16), emitted by amx_tileops.h's
 * own asm since gcc 12 has no -mamx-fp16; fa_matrix_usable dispatches it
 * only where the gate also reported AMX-FP16, else float16 inputs run on
 * the vector kernels.
 *
 * The TDPBF16PS peak probe and the real-tile GEMM of amx/amx_gemm_real.c
 * are compiled into this file, so they get exactly these flags.  Without
 * the AMX flags only an empty table and the stubs remain.
 */
#include <stdint.h>
#include "kernel.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#define FA_AMX_REAL 1
#include "../amx/amx_tileops.h"
#include "avx512_hooks.h"

#define FA_ISA_NAME amx

#include "matrix_instantiate.h"
#else
/* A compiler without -mamx-tile -mamx-bf16 (setup.py drops the flags it
 * lacks): an empty table, and amx_gemm_real.c's stubs say so
 * (fa_amx_real_compiled() == 0: the registry row reports "not compiled"). */
const fa_kernels fa_kernels_amx = {0};
#endif

#include "../amx/amx_gemm_real.c"
