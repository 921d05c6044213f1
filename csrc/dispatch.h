/* dispatch.h: internal interface of dispatch.c. */
#ifndef FA_DISPATCH_H
#define FA_DISPATCH_H

#include "fastattn.h"
#include "kernels/kernel.h"

/* The tile kernel of the current ISA path for dtype. */
fa_tile_fn fa_dispatch_tile(fa_dtype dtype);
/* The few-row (decode) kernel of the current ISA path for dtype. */
fa_tile_fn fa_dispatch_rows(fa_dtype dtype);
/* Whether bfloat16 decode uses the AVX512-BF16 dot product (1) or widens
 * to float32 (0) on the current path. */
int fa_bf16_dot_product(void);
/* The attention-weights kernel of the current ISA path for dtype. */
fa_tile_fn fa_dispatch_weights(fa_dtype dtype);

/* The vector exp2 of the current ISA path (exported for its test). */
void fa_exp2_f32(const float *x, float *y, int64_t n);
void fa_exp2_f64(const double *x, double *y, int64_t n);
/* The soft cap's vector tanh of the current ISA path (for its test). */
void fa_tanh_f32(const float *x, float *y, int64_t n);
void fa_tanh_f64(const double *x, double *y, int64_t n);

/* Run the FMA peak probe of an ISA path (iters x 12 vector FMAs);
 * *lanes receives its float32 vector length. */
double fa_fma_probe(fa_isa isa, int64_t iters, int *lanes);

/* Memory read bandwidth probe (attention.c): reads n 32-bit words with the
 * current thread count; the caller times it. */
double fa_read_probe(const float *x, int64_t n);

#endif
