/*
 * kernel_body.h: the attention kernels, written once and compiled once per
 * (ISA, element type) by kernel_instantiate.h.
 *
 * Included after kernel_<isa>.c and kernel_instantiate.h have defined:
 *   FA_T          the compute type, float or double (every product and sum)
 *   FA_S          the storage type of q, k, v, out and weights
 *   FA_S_KIND     0: FA_S is FA_T; 1: IEEE float16 bits; 2: bfloat16 bits
 *   FA_KV, FA_KV_I8  (optional) int8_t and 1: k and v are int8 with scales
 *                 (dtype FA_I8KV; q and out are FA_S = float, see quant.h)
 *   FA_TNAME      f32, f64, f16 or bf16 (name suffix)
 *   FA_IS_DOUBLE  1 for double
 *   FA_ISA_NAME   the row of csrc/isa_flags.txt (name suffix)
 *   FA_VBYTES     vector width in bytes (4 or 8 on scalar, 16, 32, 64)
 *   FA_QK_IB, FA_QK_JB   register block of the Q.K^T micro-kernel
 *                        (query vectors x keys) of the tile kernel
 *   FA_PV_IB, FA_PV_EB   register block of its P.V micro-kernel
 *                        (query vectors x value columns)
 * and optionally the customization points of vec.h (FA_VMAX_PS/PD,
 * FA_VRCP_PS, FA_VSCALEF_PS: every AVX-512-class file takes them from
 * avx512_hooks.h), FA_BF16DP (bfloat16 dot products with vdpbf16ps) and
 * FA_I8DP (int8 P.V with vpdpbusd).  Each kernel_<isa>.c is compiled with
 * its own flags (csrc/isa_flags.txt), so the GCC/Clang vector types become
 * AVX-512, AVX2, baseline SSE2 or NEON code.
 *
 * The parts, by concern:
 *   vec.h     the vector vocabulary (loads, stores, tails, exp2, tanh, ...)
 *   score.h   the score pipeline every layout shares: epilogue (soft cap,
 *             ALiBi, mask, band), online-softmax steps, row finish
 *   micro.h   the register-blocked Q.K^T and P.V micro-kernels
 *   tile_pack.h  the tile kernel's operands: Q packed, K and V widened,
 *             the mask read
 *   tile.h    the tile kernel (vectors along the queries) and the weights
 *             pass, with tile_stair.h (the blocks on the causal diagonal)
 *   rows_dot.h   the few-row kernel's dot products and P.V sums
 *   rows.h    the few-row (decode) kernel (vectors along d and the keys)
 *   probes.h  exp2/tanh array functions and the FMA probe (not on the
 *             attention path)
 *   epilogue.h  bias -> activation -> residual on a linear layer's finished sums
 *   linear.h  the row-invariant float32 GEMM of the linear layers, LayerNorm
 * The scratch each kernel carves is laid out in scratch.h, which the
 * driver sizes from.
 *
 * Storage types: the 16-bit types are widened to float32 as they are
 * loaded (F16C's vcvtph2ps on x86, a shift for bfloat16); every product and
 * sum is float32, and the output is rounded to the storage type once, at
 * the end.
 *
 * Numerics: Q is pre-multiplied by the scale, so scores (and the additive
 * mask, and the running max) are in natural units.  NaN scores are not
 * filtered: they reach the sum and the accumulator and so the output.
 */

#define FA_PASTE3_(a, b, c) a##b##_##c
#define FA_PASTE3(a, b, c) FA_PASTE3_(a, b, c)
#define FA_FN(name) FA_PASTE3(name, FA_TNAME, FA_ISA_NAME)

/* FA_KV: the storage type of k and v (FA_S, or int8_t with FA_KV_I8). */
#ifndef FA_KV
#define FA_KV FA_S
#endif
#ifndef FA_KV_I8
#define FA_KV_I8 0
#endif

#include "vec.h"
#include "score.h"
#ifndef FA_MATRIX_ONLY
#include "quant.h"
#include "micro.h"
#include "tile_pack.h"
#include "tile.h"
#include "rows_dot.h"
#include "rows.h"
#if !FA_KV_I8
#include "probes.h"
#endif
#include "epilogue.h" /* float32 only */
#include "linear.h"  /* float32 only */
#else
#include "matrix.h" /* the matrix-unit files (matrix_instantiate.h) */
#endif

#undef VL
#undef VT
#undef VI
#undef VU
#undef VH
#undef FA_TANH_SMALL
#undef FA_SIGN_BITS
#undef FA_DOT_UNSCALED
#undef FA_KV
#undef FA_KV_I8
#undef VLOAD
#undef VSTORE
#undef VSPLAT
#undef FA_INLINE
#undef FA_FN
#undef FA_PASTE3
#undef FA_PASTE3_
