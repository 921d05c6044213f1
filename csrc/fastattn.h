/*
 * fastattn.h: the public C API of the fastattn core.
 *
 * Plain C11, no Python headers: the core can be driven and tested from C.
 * Callers describe one attention problem in an fa_params struct and call
 * fa_attention().  Validation is the job of the binding layer: the core
 * trusts that pointers, strides and extents describe valid memory, that
 * outputs do not alias inputs, that dtype, mask_kind and precision are
 * enum values and that masks, offsets and scales hold what this header
 * says.  The planner (fa_plan, which fa_attention runs first) keeps only
 * the checks it needs to make a plan at all, or that no binding could
 * make in advance:
 *   FA_ERR_PARAMS  a negative size or batch length (from q_start, k_start,
 *                  k_len), h_kv == 0 or h_q % h_kv != 0 (the head group
 *                  is a division), FA_I8KV without k_scale or v_scale, a
 *                  weights pass without weights or lse, and the matrix
 *                  units refused after the plan (the path was changed by
 *                  fa_set_isa in between);
 *   FA_ERR_NOMEM   a head dim above 2^32, or buffer sizes that
 *                  would overflow (stride-0 views bound nothing by
 *                  memory), as well as a failed allocation.
 * Each costs O(batch) at most, and keeps the size arithmetic from wrapping.
 *
 * Shapes follow PyTorch's scaled_dot_product_attention:
 *   q   (B, H,   Nq, D)        out (B, H, Nq, Dv)
 *   k   (B, Hkv, Nk, D)        lse (B, H, Nq)        (optional)
 *   v   (B, Hkv, Nk, Dv)       mask broadcast to (B, H, Nq, Nk) (optional)
 * Every tensor is addressed through int64 element strides, so transposed,
 * sliced, negative-stride and stride-0 (broadcast) views cost no copy.
 */
#ifndef FASTATTN_H
#define FASTATTN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Element type of q, k, v, out and weights.  The half types are storage
 * only: they are widened to float32 in registers, every sum is float32, and
 * lse (and the split-KV partials) are float32.  lse is float64 for FA_F64. */
typedef enum {
    FA_F32 = 0,
    FA_F64 = 1,
    FA_F16 = 2,  /* IEEE binary16, as uint16_t bits */
    FA_BF16 = 3, /* bfloat16 (the top half of a float32), as uint16_t bits */
    FA_I8KV = 4, /* q, out, lse float32; k and v int8 with float32 scales
                    (fa_params.k_scale, v_scale): dequantized in the kernels */
    FA_DTYPE_COUNT = 5
} fa_dtype;

/* How the optional mask is read. */
typedef enum {
    FA_MASK_NONE = 0,
    FA_MASK_BOOL = 1,   /* uint8, nonzero = query may attend key */
    FA_MASK_ADD_F32 = 2, /* float32 added to the scaled scores (-inf allowed) */
    FA_MASK_ADD_F64 = 3, /* float64 added to the scaled scores (-inf allowed) */
    FA_MASK_ADD_F16 = 4, /* IEEE binary16, widened exactly, then added */
    FA_MASK_ADD_BF16 = 5 /* bfloat16, widened exactly, then added */
} fa_mask_kind;

/* Arithmetic of the matrix products for float32 inputs (fa_params.precision).
 * Ignored for the other dtypes.  FA_PRECISION_HIGHEST (0, the zeroed default)
 * is the float32 vector path.  The reduced modes run on the matrix units
 * where the CPU has them, and otherwise fall back to FA_PRECISION_HIGHEST
 * (fa_plan_info.precision tells which mode a call really uses). */
typedef enum {
    FA_PRECISION_HIGHEST = 0, /* float32 products, float32 sums */
    FA_PRECISION_BF16 = 1,    /* operands rounded once to bfloat16 */
    FA_PRECISION_BF16X3 = 2   /* hi*hi + hi*lo + lo*hi bfloat16 products */
} fa_precision;

/* Instruction-set paths: the paths of the registry in dispatch.c, which
 * is indexed by this enum and has FA_ISA_COUNT paths (a static assertion
 * there; csrc/test/test_core.c checks that every value names a path).
 * Within an architecture, better paths have larger numbers.  fa_isa_name()
 * gives each path's name. */
typedef enum {
    FA_ISA_SCALAR = 0, /* portable C, one element at a time */
    FA_ISA_AVX2 = 1,   /* x86-64: AVX2 + FMA */
    FA_ISA_AVX512 = 2, /* x86-64: AVX-512 F/DQ/BW/VL */
    FA_ISA_NEON = 3,   /* aarch64: Advanced SIMD */
    FA_ISA_AMX = 4,    /* x86-64: AVX-512 plus the AMX tiles (matrix family) */
    FA_ISA_AMX_EMU = 5, /* the same kernels on the portable tile emulation:
                           only when forced (FASTATTN_ISA=amx_emu), for tests */
    FA_ISA_COUNT = 6
} fa_isa;

typedef struct {
    /* Element type of q, k, v, out, lse. */
    fa_dtype dtype;

    /* Problem sizes.  h_q % h_kv == 0; query head h reads kv head
     * h / (h_q / h_kv) (grouped- and multi-query attention). */
    int64_t batch, h_q, h_kv;
    int64_t n_q, n_k;
    int64_t d, dv;

    /* Data pointers (element type = dtype) and their element strides,
     * in the order batch, head, row, column. */
    const void *q;
    int64_t q_sb, q_sh, q_sn, q_sd;
    const void *k;
    int64_t k_sb, k_sh, k_sn, k_sd;
    const void *v;
    int64_t v_sb, v_sh, v_sn, v_sd;
    void *out;
    int64_t o_sb, o_sh, o_sn, o_sd;

    /* Optional log-sum-exp output (natural log), NULL if not wanted. */
    void *lse;
    int64_t l_sb, l_sh, l_sn;

    /* Optional mask, broadcast to (batch, h_q, n_q, n_k) through strides
     * (0 for broadcast dimensions). */
    fa_mask_kind mask_kind;
    const void *mask;
    int64_t m_sb, m_sh, m_sq, m_sk;

    /* Band of visible keys (causal masking and sliding windows): query i of
     * batch b may attend key j only if
     *     band_lo <= j - i - base_b <= band_hi,
     * where base_b = nk_b - nq_b when band_from_end (bottom-right
     * alignment: the last query sits on the last key) and 0 otherwise
     * (top-left).  FA_UNBOUNDED_LO / FA_UNBOUNDED_HI disable a side; both
     * unbounded is no band.  Causal is band_hi = 0. */
    int64_t band_lo, band_hi;
    int band_from_end;

    /* Optional ALiBi slopes (float64), indexed [b * a_sb + h * a_sh]: the
     * scaled score of query i and key j gets -slope * |i + nk_b - nq_b - j|
     * (bottom-right alignment).  NULL: no bias. */
    const double *alibi;
    int64_t a_sb, a_sh;

    /* Soft capping: scores s become softcap * tanh(s / softcap) before the
     * bias and the mask are applied.  0 disables it. */
    double softcap;

    /* Optional per-batch lengths; NULL means every batch has n_q queries
     * and n_k keys (n_q and n_k are then also the largest lengths).
     *   q_start, k_start: batch + 1 ascending row offsets (packed variable
     *     length batches): batch b's queries are rows q_start[b] ..
     *     q_start[b+1] - 1 of q, out and lse, counted with the row strides
     *     (the batch strides are then normally 0); likewise its keys.
     *   k_len: batch key counts (padded batches): keys j >= k_len[b] of
     *     batch b do not exist.  Ignored when k_start is set. */
    const int64_t *q_start, *k_start, *k_len;

    /* Multiplier of q.k (usually 1/sqrt(d)). */
    double scale;

    /* Attention weights, for fa_attention_weights only: written for
     * (b, h, i, j), j < nk_b, in the element type, through these strides. */
    void *weights;
    int64_t w_sb, w_sh, w_sq, w_sk;

    /* Threads for this call; 0 means fa_get_num_threads(). */
    int num_threads;

    /* Matrix-product arithmetic for float32 inputs (fa_precision). */
    int precision;

    /* Scales of 8-bit keys and values (dtype FA_I8KV; finite, > 0):
     *   key (b, h, j, c)   = k[...] * k_scale[b * ks_sb + h * ks_sh + c * ks_sd]
     *                        (one scale per channel of each kv head),
     *   value (b, h, j, e) = v[...] * v_scale[b * vs_sb + h * vs_sh + j * vs_sn]
     *                        (one scale per token; j counts rows as k and v
     *                        do, so packed batches index it by row). */
    const float *k_scale;
    int64_t ks_sb, ks_sh, ks_sd;
    const float *v_scale;
    int64_t vs_sb, vs_sh, vs_sn;

    /* Paged keys and values (NULL: k and v are addressed as above).  The
     * keys of batch b live in pages of page_size rows: key j is row
     * j % page_size of page block_table[b * bt_sb + j / page_size], and
     * kv head h of page g starts at k + g * k_sb + h * k_sh (k_sb, v_sb,
     * ks_sb and vs_sb are then strides between pages; FA_I8KV keeps one
     * key scale per channel of each kv head of each page, and one value
     * scale per row).  Batch b has k_len[b] keys (required; n_k bounds
     * them) and the queries q_start gives (required).  The core trusts the
     * first ceil(k_len[b] / page_size) entries of every row to name pages
     * of the pool; no other entry is read.  The call runs each page as a
     * key block of its own, merged by lse in a fixed order, so results
     * do not depend on where the pages lie.  No mask (mask_kind NONE), no
     * weights pass, and the vector kernels only (precision is ignored). */
    const int32_t *block_table;
    int64_t bt_sb;
    int64_t page_size;
} fa_params;

#define FA_UNBOUNDED_LO INT64_MIN
#define FA_UNBOUNDED_HI INT64_MAX

/* Status codes. */
#define FA_OK 0
#define FA_ERR_NOMEM 1
#define FA_ERR_PARAMS 2

/* Compute attention as described by p.  Returns FA_OK or an error code.
 * Releases nothing and takes no locks: safe to call from several threads
 * at once on distinct outputs.  Uses up to p->num_threads threads, or
 * fa_get_num_threads() when that is 0. */
int fa_attention(const fa_params *p);

/* The softmax probabilities (the attention matrix) of the problem in p,
 * given its lse (p->lse, as computed by fa_attention with the same params,
 * is read, not written): weights = exp(score - lse), written to
 * p->weights for every visible (query, key) pair and 0 for hidden pairs of
 * the key blocks that are computed; the caller zero-fills the buffer, since
 * key blocks nobody sees are skipped.  Rows with lse = -inf stay zero. */
int fa_attention_weights(const fa_params *p);

/* Kernel families: the layouts the driver can run a work item with
 * (fa_plan_info.family; fa_family_name() gives the name of each). */
typedef enum {
    FA_FAMILY_TILE = 0,    /* "tile": vectors along the queries, a block
                              of query rows an item */
    FA_FAMILY_ROWS = 1,    /* "rows": few rows, vectors along d and keys */
    FA_FAMILY_WEIGHTS = 2, /* "weights": the attention-weights pass */
    FA_FAMILY_MATRIX = 3,  /* "matrix": matrix units (AMX tiles), 16-bit
                              products, prefill shapes */
    FA_FAMILY_COUNT = 4
} fa_family;

/* The name of a kernel family ("tile", "rows", "weights", "matrix"), or
 * "unknown". */
const char *fa_family_name(int family);

/* How the tile kernel and the weights pass take a bfloat16 Q.K^T where the
 * CPU has AVX512-BF16: a speed policy of the plan, not a CPU feature.  On
 * AMD (Zen 4/5) vdpbf16ps issues at the rate of a 512-bit FMA and does two
 * FMAs' work; on Intel (Emerald Rapids) it issues at a quarter of the FMA's
 * rate and measured 0.78x the speed of widening.  The policy in force is
 * FASTATTN_BF16_TILE=pairs or =widen if set (read once, at first use),
 * else pairs on AMD and widen elsewhere.  It changes no result beyond
 * float32 rounding of the sums. */
typedef enum {
    FA_BF16_TILE_WIDEN = 0, /* "widen": to float32, then FMAs */
    FA_BF16_TILE_PAIRS = 1  /* "pairs": vdpbf16ps on pairs along d (the
                               registry row "avx512bf16_pairs") */
} fa_bf16_tile;

int fa_bf16_tile_policy(void);
/* "widen", "pairs", or "unknown". */
const char *fa_bf16_tile_name(int policy);

/* What fa_attention (or fa_attention_weights) would do with the same
 * params: filled by fa_plan (fa_plan_weights), which the driver itself
 * calls before it runs, so the plan and the execution cannot diverge. */
typedef struct {
    int family;           /* the kernel family (fa_family) */
    int isa;              /* the ISA path (fa_isa) */
    const char *kernel_isa; /* the registry row whose kernel runs (the path,
                             or a refinement such as "avx512bf16") */
    int64_t q_block;      /* query rows per work item (a tile) */
    int64_t k_block;      /* keys per block of the kernel's inner loop */
    int64_t tasks;        /* row tiles (all batches and kv heads) */
    int64_t key_splits;   /* key chunks per tile (1: no split-KV) */
    int64_t split_keys;   /* keys per chunk (the largest key count if 1 split) */
    int64_t items;        /* work items: tasks x key_splits */
    int threads;          /* threads the call runs on */
    size_t scratch_bytes; /* scratch per thread */
    double work;          /* multiply-adds of the visible and hidden pairs */
    int precision;        /* the fa_precision the call really uses */
    int bf16_tile;        /* the fa_bf16_tile policy of the call (it acts
                             only on bfloat16 tile and weights kernels
                             where the CPU has AVX512-BF16) */
} fa_plan_info;

/* Fill *info for p.  Returns FA_OK, FA_ERR_PARAMS or FA_ERR_NOMEM (a head
 * dim too large for any scratch), as fa_attention would. */
int fa_plan(const fa_params *p, fa_plan_info *info);
int fa_plan_weights(const fa_params *p, fa_plan_info *info);

/* Threads used by fa_attention (OpenMP; 1 when built without it).  0
 * restores OpenMP's default (omp_get_max_threads()); a later OpenMP limit
 * below the count at load time (omp_set_num_threads, as threadpoolctl
 * does) caps a positive setting. */
void fa_set_num_threads(int n);
int fa_get_num_threads(void);
int fa_has_openmp(void);

/* Runtime ISA dispatch.  fa_isa_supported() tells what this CPU can run;
 * fa_set_isa() forces a path (returns nonzero if unsupported or not built). */
int fa_isa_count(void);
int fa_isa_supported(fa_isa isa);
int fa_isa_compiled(fa_isa isa);
fa_isa fa_get_isa(void);
int fa_set_isa(fa_isa isa);
const char *fa_isa_name(fa_isa isa);

/* The matrix units (Intel AMX) of this machine, and whether the "amx" path
 * may use them.  With request, filling it runs the gate (cpuid, XCR0, then,
 * only where those allow, the kernel's tile-data permission, requested once
 * per process), as the first matrix-unit call does.  Without it, it only
 * reports: until the gate has run, the permission is read (never asked
 * for) and, when the process does not hold it yet, available is 0 with a
 * reason that says so.  It never executes a tile instruction. */
typedef struct {
    int available;          /* the matrix family runs on the real tiles */
    const char *reason;     /* "available", or why not (static sentence) */
    int amx_tile, amx_bf16, amx_int8, amx_fp16; /* cpuid leaf 7 bits */
    int os_enabled;         /* XCR0 bits 17 and 18 (tile config and data) */
    const char *permission; /* "granted", "not requested" (CPU or OS lack
                               the tiles), "not requested yet", "granted
                               (held by the process)" (the report without
                               request), or why the kernel refused */
    int compiled;           /* this build has the real-tile kernels */
    const char *self_test;  /* the self-test: "not run yet", "not needed"
                               (no tiles to test), or its report */
} fa_amx_info;

void fa_amx_status(fa_amx_info *info, int request);

/* The self-test of the real tiles (docs/amx.md, "The self-test").  Before
 * the first call of a process that would run the real tiles (a plan that
 * wants the matrix family on the "amx" path, fa_amx_status with request,
 * fa_amx_peak), the matrix kernels run once on small fixed inputs in a
 * forked child, and their results are held to the matrix-precision rule
 * against the vector path.  If the child faults, hangs (10 s) or
 * mismatches, the matrix unit is off for the process: every call runs on
 * the vector path, and fa_amx_status reports why.  Taken once per process
 * (concurrent first callers wait for the one canary; a child forked
 * meanwhile starts undecided); nothing runs before first use. */
typedef enum {
    FA_SELF_TEST_NOT_RUN = 0,
    FA_SELF_TEST_PASSED = 1,
    FA_SELF_TEST_FAILED = 2
} fa_self_test_state;

/* What the test hooks inject into the canary's child, before or after its
 * first case (FASTATTN_SELF_TEST_INJECT names them for the decision). */
typedef enum {
    FA_INJECT_NONE = 0,
    FA_INJECT_MISMATCH = 1, /* one output value moved by 0.5 */
    FA_INJECT_SIGILL = 2,   /* an undefined instruction (ud2) */
    FA_INJECT_SIGSEGV = 3,  /* a store to a page without access */
    FA_INJECT_SIGBUS = 4,   /* raise(SIGBUS) */
    FA_INJECT_HANG = 5,     /* waits forever */
    FA_INJECT_NAN = 6,      /* one output value made NaN */
    FA_INJECT_COUNT = 7
} fa_inject;

typedef struct {
    int state;          /* fa_self_test_state of the process's decision */
    const char *report; /* "" before it; then what passed, or which kernel
                           and case failed and how (stable from then on) */
    double ms;          /* what it cost: fork, child, reference and checks */
} fa_self_test_info;

void fa_tile_self_test_status(fa_self_test_info *info);
/* Test hook: run a canary now with subject's kernels (FA_ISA_AMX, the real
 * tiles; FA_ISA_AMX_EMU, the emulation; a vector path: the harness alone)
 * and the injection, waiting at most timeout_s for the child; the
 * process's decision is untouched.  Returns FA_OK when it passed, else
 * nonzero with report (cap bytes) saying why; FA_ERR_PARAMS without
 * running for a subject this CPU cannot run. */
int fa_tile_self_test_run(int subject, int inject, double timeout_s, char *report, size_t cap,
                          double *ms);
/* Test hook: take the process's decision now with this canary, unless it
 * was taken; returns the fa_self_test_state, or -1 without running for a
 * subject this CPU cannot run. */
int fa_tile_self_test_decide(int subject, int inject, double timeout_s);
/* 1 exactly once after the decision failed (for one warning), else 0. */
int fa_tile_self_test_news(void);

/* TDPBF16PS peak of the calling thread in GFLOP/s: iters rounds of four
 * independent 16 x 16 x 32 tile products (16384 FLOP each) on tiles
 * already loaded.  Returns -1 without executing any tile instruction when
 * the tiles are not available (fa_amx_status says why) or not compiled. */
double fa_amx_peak(int64_t iters);
/* The same for TDPBSSD (AMX-INT8) in GOP/s: 16 x 16 x 64 byte products
 * (32768 operations) per tile step; -1 also where the CPU lacks AMX-INT8. */
double fa_amx_peak_int8(int64_t iters);

#ifdef __cplusplus
}
#endif

#endif /* FASTATTN_H */
