/*
 * kernel.h: the interface between the driver (attention.c) and the per-ISA
 * tile kernels (kernel_body.h compiled once per instruction set).
 *
 * A tile is up to FA_BQ query rows that share one kv head.  The driver
 * resolves every row to its own pointers (q row, out row, lse slot, mask
 * row) and its query index, so the kernel never needs to know about batch,
 * head or grouped-query layout: the same kernel serves plain, GQA-grouped
 * and split-KV work.
 */
#ifndef FA_KERNEL_H
#define FA_KERNEL_H

#include "../fastattn.h"

/* Query rows per tile.  A multiple of every vector width in use (16 floats
 * for AVX-512), small enough that the per-tile scratch stays in L2. */
#define FA_BQ 64
/* Keys per block: the scores tile is FA_BK x FA_BQ. */
#define FA_BK 64

/* Rows handled by the few-row (decode) kernel. */
#define FA_ROWS_MAX 4

/* Memory alignment of the scratch buffers (one cache line, one zmm). */
#define FA_ALIGN 64

typedef struct {
    int rows;                       /* valid rows, 1..FA_BQ */
    const void *q_row[FA_BQ];       /* start of each query row */
    void *o_row[FA_BQ];             /* start of each output row */
    void *lse_row[FA_BQ];           /* lse slot of each row, or NULL */
    const void *mask_row[FA_BQ];    /* mask row (b, h, i, 0), or NULL */
    void *w_row[FA_BQ];             /* weights row (b, h, i, 0) (weights pass) */
    int64_t jlo[FA_BQ], jhi[FA_BQ]; /* keys [jlo, jhi) are inside the band */
    int64_t pos[FA_BQ];             /* i + nk_b - nq_b: ALiBi's diagonal */
    double slope[FA_BQ];            /* ALiBi slope of the row's head, or 0 */
    const void *k;                  /* key 0, column 0 of this kv head */
    const void *v;                  /* value 0, column 0 of this kv head */
    int64_t k_lo, k_hi;             /* keys [k_lo, k_hi) are processed */
    int out_compute;                /* o_row/lse_row hold the compute type
                                       (float32 for the 16-bit types):
                                       split-KV partials */
} fa_tile;

/* Scratch bytes a kernel needs for the given params. */
size_t fa_scratch_bytes(const fa_params *p);

typedef void (*fa_tile_fn)(const fa_params *p, const fa_tile *t, void *scratch);

/* One tile function per dtype for each ISA (defined in kernel_<isa>.c),
 * plus the vector exp2 exported for its accuracy test. */
#define FA_DECLARE_TYPE(t, isa)                                               \
    void fa_tile_##t##_##isa(const fa_params *p, const fa_tile *tl, void *s); \
    void fa_rows_##t##_##isa(const fa_params *p, const fa_tile *tl, void *s); \
    void fa_weights_##t##_##isa(const fa_params *p, const fa_tile *tl, void *s);
#define FA_DECLARE_ISA(isa)                                                   \
    FA_DECLARE_TYPE(f32, isa)                                                 \
    FA_DECLARE_TYPE(f64, isa)                                                 \
    FA_DECLARE_TYPE(f16, isa)                                                 \
    FA_DECLARE_TYPE(bf16, isa)                                                \
    void fa_exp2_array_f32_##isa(const float *x, float *y, int64_t n);       \
    double fa_fma_probe_f32_##isa(int64_t iters);                            \
    int fa_vec_lanes_f32_##isa(void);                                        \
    void fa_exp2_array_f64_##isa(const double *x, double *y, int64_t n);     \
    void fa_tanh_array_f32_##isa(const float *x, float *y, int64_t n);       \
    void fa_tanh_array_f64_##isa(const double *x, double *y, int64_t n);

FA_DECLARE_ISA(scalar)
FA_DECLARE_ISA(avx2)
FA_DECLARE_ISA(avx512)
FA_DECLARE_ISA(neon)
FA_DECLARE_TYPE(bf16, avx512bf16)

#endif /* FA_KERNEL_H */
