/*
 * kernel_instantiate.h: compile kernel_body.h once per element type.
 * Included by each kernel_<isa>.c after it has defined FA_ISA_NAME and its
 * register blocking (and FA_VBYTES, unless it sets one per compute type
 * through FA_VBYTES_F32 / FA_VBYTES_F64).
 *
 *   FA_T  the compute type (every product and sum)
 *   FA_S  the storage type of q, k, v, out and weights
 *   FA_S_KIND  0: FA_S is FA_T; 1: IEEE float16 bits; 2: bfloat16 bits
 * The 16-bit types compute in float32.  FA_ONLY_BF16 compiles just the
 * bfloat16 kernels (the AVX512-BF16 variant).
 */
#include "../half.h"

#define FA_T float
#define FA_IS_DOUBLE 0
#ifdef FA_VBYTES_F32
#define FA_VBYTES FA_VBYTES_F32
#endif

#ifndef FA_ONLY_BF16
#define FA_S float
#define FA_S_KIND 0
#define FA_TNAME f32
#include "kernel_body.h"
#undef FA_S
#undef FA_S_KIND
#undef FA_TNAME

#define FA_S uint16_t
#define FA_S_KIND 1
#define FA_TNAME f16
#include "kernel_body.h"
#undef FA_S
#undef FA_S_KIND
#undef FA_TNAME
#endif

#define FA_S uint16_t
#define FA_S_KIND 2
#define FA_TNAME bf16
#include "kernel_body.h"
#undef FA_S
#undef FA_S_KIND
#undef FA_TNAME

#ifdef FA_VBYTES_F32
#undef FA_VBYTES
#endif
#undef FA_T
#undef FA_IS_DOUBLE

#ifndef FA_ONLY_BF16
#define FA_T double
#define FA_S double
#define FA_S_KIND 0
#define FA_TNAME f64
#define FA_IS_DOUBLE 1
#ifdef FA_VBYTES_F64
#define FA_VBYTES FA_VBYTES_F64
#endif
#include "kernel_body.h"
#ifdef FA_VBYTES_F64
#undef FA_VBYTES
#endif
#undef FA_T
#undef FA_S
#undef FA_S_KIND
#undef FA_TNAME
#undef FA_IS_DOUBLE
#endif
