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
 * bfloat16 kernels (the AVX512-BF16 variant), FA_ONLY_I8 just the int8
 * ones (the AVX512-VNNI variant).
 */
#include "../half.h"
#include "scratch.h"

#define FA_T float
#define FA_IS_DOUBLE 0
#ifdef FA_VBYTES_F32
#define FA_VBYTES FA_VBYTES_F32
#endif

#if !defined(FA_ONLY_BF16) && !defined(FA_ONLY_I8)
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

#ifndef FA_ONLY_I8
#define FA_S uint16_t
#define FA_S_KIND 2
#define FA_TNAME bf16
#include "kernel_body.h"
#undef FA_S
#undef FA_S_KIND
#undef FA_TNAME
#endif

#ifndef FA_ONLY_BF16
/* float32 queries and outputs over int8 keys and values (FA_I8KV) */
#define FA_S float
#define FA_S_KIND 0
#define FA_KV int8_t
#define FA_KV_I8 1
#define FA_TNAME i8
#include "kernel_body.h"
#undef FA_S
#undef FA_S_KIND
#undef FA_TNAME
#endif

#ifdef FA_VBYTES_F32
#undef FA_VBYTES
#endif
#undef FA_T
#undef FA_IS_DOUBLE

#if !defined(FA_ONLY_BF16) && !defined(FA_ONLY_I8)
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

/* The kernel table of this ISA (read by dispatch.c's registry). */
#define FA_KT_(isa) fa_kernels_##isa
#define FA_KT(isa) FA_KT_(isa)
#define FA_K3_(f, t, isa) f##_##t##_##isa
#define FA_K3(f, t, isa) FA_K3_(f, t, isa)
#define FA_DTYPES(f) {FA_K3(f, f32, FA_ISA_NAME), FA_K3(f, f64, FA_ISA_NAME), \
                      FA_K3(f, f16, FA_ISA_NAME), FA_K3(f, bf16, FA_ISA_NAME), \
                      FA_K3(f, i8, FA_ISA_NAME)}
#if defined(FA_ONLY_I8)
/* Only the few-row int8 kernel gains from vpdpbusd (see kernel_avx512vnni.c). */
const fa_kernels FA_KT(FA_ISA_NAME) = {
    .kernel = {[FA_FAMILY_ROWS] = {[FA_I8KV] = FA_K3(fa_rows, i8, FA_ISA_NAME)}},
};
#elif !defined(FA_ONLY_BF16)
const fa_kernels FA_KT(FA_ISA_NAME) = {
    .kernel = {[FA_FAMILY_TILE] = FA_DTYPES(fa_tile), [FA_FAMILY_ROWS] = FA_DTYPES(fa_rows),
               [FA_FAMILY_WEIGHTS] = FA_DTYPES(fa_weights)},
    .exp2_f32 = FA_K3(fa_exp2_array, f32, FA_ISA_NAME),
    .tanh_f32 = FA_K3(fa_tanh_array, f32, FA_ISA_NAME),
    .exp2_f64 = FA_K3(fa_exp2_array, f64, FA_ISA_NAME),
    .tanh_f64 = FA_K3(fa_tanh_array, f64, FA_ISA_NAME),
    .fma_probe = FA_K3(fa_fma_probe, f32, FA_ISA_NAME),
#if FA_LIN_DOT
    .dot_probe = FA_K3(fa_dot_probe, f32, FA_ISA_NAME),
#endif
    .linear_f32 = FA_K3(fa_linear, f32, FA_ISA_NAME),
    .layer_norm_f32 = FA_K3(fa_layer_norm, f32, FA_ISA_NAME),
    .lanes = FA_K3(fa_vec_lanes, f32, FA_ISA_NAME),
};
#else
/* The bfloat16 kernels that use vdpbf16ps, in two tables because they pay
 * off on different CPUs (dispatch.c's registry decides): the few-row
 * kernel's dot products (memory-bound decode: wherever the instruction
 * exists), and the tile kernel's Q.K^T on pairs along d (see tile.h), with
 * the weights pass that shares its scores: only where vdpbf16ps issues at
 * the rate of an FMA, doing the work of two. */
const fa_kernels FA_KT(FA_ISA_NAME) = {
    .kernel = {[FA_FAMILY_ROWS] = {[FA_BF16] = FA_K3(fa_rows, bf16, FA_ISA_NAME)}},
};
#define FA_KT_TILE_(isa) fa_kernels_##isa##_tile
#define FA_KT_TILE(isa) FA_KT_TILE_(isa)
const fa_kernels FA_KT_TILE(FA_ISA_NAME) = {
    .kernel = {[FA_FAMILY_TILE] = {[FA_BF16] = FA_K3(fa_tile, bf16, FA_ISA_NAME)},
               [FA_FAMILY_WEIGHTS] = {[FA_BF16] = FA_K3(fa_weights, bf16, FA_ISA_NAME)}},
};
#undef FA_KT_TILE
#undef FA_KT_TILE_
#endif
#undef FA_DTYPES
#undef FA_K3
#undef FA_K3_
#undef FA_KT
#undef FA_KT_
