/* dispatch.h: internal interface of dispatch.c. */
#ifndef FA_DISPATCH_H
#define FA_DISPATCH_H

#include "fastattn.h"
#include "kernels/kernel.h"

/* The kernel of a family for dtype on the current ISA path; *source (if
 * not NULL) receives the name of the registry row that provides it. */
fa_kernel_fn fa_dispatch(fa_family family, fa_dtype dtype, const char **source);
/* Whether the matrix family runs dtype on the current path: a kernel is
 * there and, for the real tiles, the gate allows them (this asks the
 * kernel's permission on first use).  *table (if not NULL) receives the
 * serving row's kernel table (its tiles_begin / tiles_end). */
int fa_matrix_usable(fa_dtype dtype, const fa_kernels **table);
/* Whether bfloat16 decode uses the AVX512-BF16 dot product (1) or widens
 * to float32 (0) on the current path. */
int fa_bf16_dot_product(void);

/* The vector exp2 of the current ISA path (exported for its test). */
void fa_exp2_f32(const float *x, float *y, int64_t n);
void fa_exp2_f64(const double *x, double *y, int64_t n);
/* The soft cap's vector tanh of the current ISA path (for its test). */
void fa_tanh_f32(const float *x, float *y, int64_t n);
void fa_tanh_f64(const double *x, double *y, int64_t n);

/* y (m x n, row stride ldy) = act(x (m x k, row stride ldx) W + bias)
 * + residual on the current ISA path, W packed in panels of FA_LIN_NR
 * columns (kernels/linear.h): float32, (wtype FA_LIN_BF16) bfloat16
 * pairs, or (FA_LIN_I8, kernels/linear_i8.h) int8 quads with the column
 * scales w_scale (NULL for the other types).  bias and residual (rows ldr apart) may be NULL; act is an
 * FA_ACT_ value (kernels/kernel.h).  num_threads threads over the output
 * panels (0: the setting of fa_set_num_threads).  y must overlap neither
 * x nor residual (y holds partial sums between K blocks).  Returns 0, or
 * -1 when a scratch cannot be allocated. */
int fa_linear_f32(const float *x, int64_t m, int64_t k, int64_t ldx, const void *packed,
                  int wtype, const float *w_scale, int64_t n, const float *bias,
                  const float *residual, int64_t ldr, int act, float *y, int64_t ldy,
                  int num_threads);

/* The row of the registry whose kernel runs a linear layer of wtype on
 * the current path: a refinement that brings its dot product (avx512bf16,
 * avx512vnni, avxvnni, neon_bf16, neon_dotprod), else the vector path's
 * name. */
const char *fa_linear_kernel(int wtype);
/* iters x the work of 24 zmm dot products on wtype's instruction
 * (kernels/linear_dot.h), or -1 where the current path does not use one. */
double fa_dot_probe(int wtype, int64_t iters);

/* y = LayerNorm(x + residual) * g + b over m rows of n (kernels/linear.h),
 * float32 statistics; residual may be NULL; y may be x or residual.
 * Single-threaded. */
void fa_layer_norm_f32(const float *x, int64_t ldx, const float *residual, int64_t ldr,
                       int64_t m, int64_t n, const float *g, const float *b, float eps,
                       float *y, int64_t ldy);

/* Threads for a call of a driver other than attention's (attention.c). */
int fa_threads_for_call(int requested);

/* Run the FMA peak probe of an ISA path (iters x 12 vector FMAs);
 * *lanes receives its float32 vector length. */
double fa_fma_probe(fa_isa isa, int64_t iters, int *lanes);

/* Memory read bandwidth probe (attention.c): reads n 32-bit words with the
 * current thread count; the caller times it. */
double fa_read_probe(const float *x, int64_t n);

#endif
