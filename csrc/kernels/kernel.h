/*
 * kernel.h: the interface between the driver (attention.c) and the per-ISA
 * kernels (kernel_body.h compiled once per instruction set).
 *
 * Every kernel family receives the same work item (fa_work_item): up to
 * FA_BQ query rows that share one kv head (a row tile of the plan).  The
 * driver resolves every row to its own pointers (q row, out row, lse slot,
 * mask row) and its query index, so the kernel never needs to know about
 * batch, head or grouped-query layout: the same kernel serves plain,
 * GQA-grouped and split-KV work.
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
    const float *k_scale, *v_scale; /* FA_I8KV: channel scale 0 and the
                                       scale of value 0 of this kv head */
    int64_t k_lo, k_hi;             /* keys [k_lo, k_hi) are processed */
    int out_compute;                /* o_row/lse_row hold the compute type
                                       (float32 for the 16-bit types):
                                       split-KV partials */
    const uint16_t *packed;         /* matrix family: this kv head's K and V,
                                       packed once per call, panel by panel */
    int64_t n_keys;                 /* matrix family: keys of the kv head */
    const int32_t *pages;           /* few-row family, paged calls: the page
                                       of keys [i * page_size, (i + 1) *
                                       page_size) is pages[i], k and v the
                                       kv head's rows in page 0 of the pool;
                                       NULL: keys are linear from k and v */
} fa_work_item;

/* A kernel of any family: attention (or weights) of work item t. */
typedef void (*fa_kernel_fn)(const fa_params *p, const fa_work_item *t, void *scratch);
/* Matrix family: pack key panel `panel` of the kv head of t (t->k, t->v,
 * t->n_keys) into dst (layout: scratch.h, fa_matrix_panel). */
typedef void (*fa_pack_fn)(const fa_params *p, const fa_work_item *t, int64_t panel,
                           uint16_t *dst);
typedef void (*fa_vec_f32_fn)(const float *x, float *y, int64_t n);
/* Columns of a packed linear-layer weight panel (kernels/linear.h): the
 * same on every ISA, so one packed weight serves every path. */
#define FA_LIN_NR 16
/* Its blocking: K in blocks of FA_LIN_KC, rows in blocks of FA_LIN_MC (the
 * scratch of a call holds one packed block of x, dispatch.c). */
#define FA_LIN_KC 256
#define FA_LIN_MC 128
/* The k rows of a bfloat16 or int8 panel are padded with zeros to a
 * multiple of FA_LIN_KALIGN: the depth of a matrix-unit tile step (32
 * bfloat16 pairs' k, or one int8 block of FA_LIN_QB), so that the tiles
 * read a packed weight in place (kernels/linear_tiles.h). */
#define FA_LIN_KALIGN 32
/* int8 mode: k of a block of x with its own scale (kernels/linear_i8.h) */
#define FA_LIN_QB 32
/* K blocks of the narrower products, whose packed x takes fewer bytes (the
 * same 128 KiB at most): int8 (a multiple of FA_LIN_QB) and bfloat16 pairs
 * on VDPBF16PS.  Fewer K blocks, fewer passes over y. */
#define FA_LIN_KC_I8 1024
#define FA_LIN_KC_PAIRS 512
/* floats of scratch per row of a row block: the largest packed row (int8:
 * FA_LIN_KC_I8 bytes and 2 x FA_LIN_KC_I8 / FA_LIN_QB scales and sums) */
#define FA_LIN_SCRATCH_ROW (2 * FA_LIN_KC)
/* The activations of the linear layer's epilogue (kernels/linear.h);
 * the numbers are the binding's too (_core.pxd). */
enum { FA_ACT_NONE = 0, FA_ACT_RELU = 1, FA_ACT_GELU = 2, FA_ACT_GELU_TANH = 3, FA_ACT_SILU = 4 };
/* One linear-layer call: y (m x n) = act(x (m x k) W + bias) + residual
 * over a packed W (kernels/linear.h), for the output panels [p0, p1).
 * bias and residual may be NULL. */
/* the packed weight's type: float32, bfloat16 pairs, or int8 quads with
 * one float32 scale per column (w_scale) */
enum { FA_LIN_F32 = 0, FA_LIN_BF16 = 1, FA_LIN_I8 = 2 };
/* Rows of a matrix-unit block of the linear layer (two 16-row tiles). */
#define FA_LIN_TILE_ROWS 32
/* The matrix-unit products of the linear layer (kernels/linear_tiles.h,
 * in the tables of the amx and amx_emu paths), driven by linear.h: */
typedef struct {
    /* load (on the calling thread) the tile configuration of wtype's
     * products, and release it */
    void (*begin)(int wtype);
    void (*end)(void);
    /* c (32 rows x 16 np floats, ldc) = a (32 rows of kp bfloat16, lda
     * elements apart) times np <= 2 panels of pairs (w the first, w_sp
     * elements apart), over kp (a multiple of 32) */
    void (*bf16)(const uint16_t *a, int64_t lda, const uint16_t *w, int64_t w_sp, int64_t kp,
                 int np, float *c, int64_t ldc);
    /* int8: for each block b of FA_LIN_QB k (nb blocks), the exact int32
     * products of a's 32 rows of signed bytes (lda apart) and np <= 2
     * panels of quads (w_sp bytes apart), converted and scaled into
     * f[p][r][c] += (float)sum * sc[b * 32 + r], in block order */
    void (*i8)(const int8_t *a, int64_t lda, const float *sc, const int8_t *w, int64_t w_sp,
               int64_t nb, int np, float f[2][FA_LIN_TILE_ROWS][16]);
} fa_lin_tiles;
typedef struct {
    const float *x;
    int64_t m, k, ldx;
    const void *packed; /* wtype: float32 panels, bfloat16 pairs or int8 quads */
    int wtype;
    const float *w_scale; /* FA_LIN_I8: the column scales, else NULL */
    int dot; /* the CPU's dot product for wtype (linear_dot.h; dispatch.c) */
    /* the matrix units' products for wtype, when the path has them and
     * they may run (dispatch.c), else NULL */
    const fa_lin_tiles *tiles;
    int64_t n, p0, p1;
    const float *bias;
    const float *residual;
    int64_t ldr;
    float *y;
    int64_t ldy;
    int act;
} fa_linear_args;
typedef void (*fa_linear_f32_fn)(const fa_linear_args *a, float *scratch);
/* y = LayerNorm(x + residual) * g + b over rows of n (kernels/linear.h);
 * residual may be NULL, y may be x or residual. */
typedef void (*fa_layer_norm_f32_fn)(const float *x, int64_t ldx, const float *residual,
                                     int64_t ldr, int64_t m, int64_t n, const float *g,
                                     const float *b, float eps, float *y, int64_t ldy);
typedef void (*fa_vec_f64_fn)(const double *x, double *y, int64_t n);

/* Everything one kernel_<isa>.c provides, defined by kernel_instantiate.h
 * as fa_kernels_<isa>.  Kernels are indexed [fa_family][fa_dtype] (both
 * enums in fastattn.h); NULL means
 * "not provided here" (a refining registry row, such as the AVX512-BF16
 * one, provides only what it does better). */
typedef struct {
    fa_kernel_fn kernel[FA_FAMILY_COUNT][FA_DTYPE_COUNT];
    fa_vec_f32_fn exp2_f32, tanh_f32;
    fa_vec_f64_fn exp2_f64, tanh_f64;
    fa_linear_f32_fn linear_f32;        /* the row-invariant float32 GEMM */
    fa_layer_norm_f32_fn layer_norm_f32; /* residual add + LayerNorm, by rows */
    double (*fma_probe)(int64_t iters); /* iters x 12 float32 vector FMAs */
    /* iters x the work of 24 zmm dot products (1: bfloat16 pairs, 2: int8
     * quads) on the table's instruction (kernels/linear_dot.h: avx512,
     * avx2's AVX-VNNI, neon's BFDOT and SDOT), called only where the CPU
     * has it */
    double (*dot_probe)(int kind, int64_t iters);
    int (*lanes)(void);                 /* float32 lanes of a vector */
    /* Matrix family only: load the tile configuration on the calling
     * thread before its first matrix kernel of a call, and release the
     * tiles after its last (NULL elsewhere). */
    void (*tiles_begin)(void), (*tiles_end)(void);
    fa_pack_fn pack[FA_DTYPE_COUNT]; /* matrix family, by fa_dtype */
    const fa_lin_tiles *lin_tiles;   /* matrix family: the linear layer's products */
} fa_kernels;

#endif /* FA_KERNEL_H */
