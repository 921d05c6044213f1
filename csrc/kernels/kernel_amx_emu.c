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
#include <immintrin.h>
#include "kernel.h"

#define FA_AMX_REAL 0
#include "../amx/amx_tileops.h"

#define FA_VMAX_PS(a, b) _mm512_max_ps((__m512)(a), (__m512)(b))
#define FA_VMAX_PD(a, b) _mm512_max_pd((__m512d)(a), (__m512d)(b))
#define FA_VRCP_PS(x) _mm512_rcp14_ps((__m512)(x))

#define FA_ISA_NAME amx_emu
#define FA_VBYTES 64

#include "matrix_instantiate.h"
