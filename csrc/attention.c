/*
 * attention.c: the driver.  Splits one attention call into tiles, runs
 * them on OpenMP threads and calls the ISA kernel through the dispatch
 * table.
 *
 * Work decomposition.  For every (batch, kv head) the query rows of all
 * query heads that share that kv head are laid end to end, head-major
 * ("virtual rows" g * n_q + i for group member g), and cut into tiles of
 * FA_BQ rows.  With plain attention and long queries a tile is a block of
 * one head's rows; with grouped-query attention and short queries (decode)
 * one tile holds the rows of several heads, so their shared K and V are
 * read once and the vector lanes are filled.  Each tile is independent:
 * results do not depend on the thread count or schedule.
 *
 * Memory: each thread owns one scratch buffer of O(FA_BQ * (d + dv + FA_BK))
 * elements for the whole call; the Nq x Nk score matrix never exists.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "fastattn.h"
#include "kernels/kernel.h"
#include "dispatch.h"
#include "half.h"
#include "kernels/scratch.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static int fa_num_threads = 0; /* 0: the OpenMP default */

/* OpenMP's thread pool (libgomp's in particular) does not survive fork():
 * a child that enters a parallel region after the parent started the pool
 * can wait forever for threads that no longer exist.  So a child forked
 * after the pool started runs serially and never enters OpenMP again. */
#if defined(_OPENMP) && !defined(_WIN32)
#include <pthread.h>
static volatile int fa_pool_started = 0;
static volatile int fa_serial_only = 0;
static void fa_atfork_child(void)
{
    if (fa_pool_started) fa_serial_only = 1;
}
__attribute__((constructor)) static void fa_register_atfork(void)
{
    pthread_atfork(NULL, NULL, fa_atfork_child);
}
#elif defined(_OPENMP)
static const int fa_serial_only = 0;
#endif

void fa_set_num_threads(int n) { fa_num_threads = n > 0 ? n : 0; }

#ifdef _OPENMP
/* OpenMP's thread count (nthreads-var) when the module was loaded.  A lower
 * value later means someone limited OpenMP on this thread after that, e.g.
 * threadpoolctl's threadpool_limits(n, user_api="openmp"), which calls
 * omp_set_num_threads(): the limit then also caps fastattn's own setting. */
static int fa_omp_base = 0;
__attribute__((constructor)) static void fa_record_omp_base(void)
{
    fa_omp_base = omp_get_max_threads();
}
#endif

int fa_get_num_threads(void)
{
#ifdef _OPENMP
    if (fa_serial_only) return 1;
    const int omp = omp_get_max_threads();
    if (fa_num_threads <= 0) return omp;
    if (omp < fa_omp_base && omp < fa_num_threads) return omp;
    return fa_num_threads;
#else
    return 1;
#endif
}

/* Threads for one call: its own num_threads if set, else the setting above. */
static int fa_call_threads(const fa_params *p)
{
#ifdef _OPENMP
    if (fa_serial_only) return 1;
    return p->num_threads > 0 ? p->num_threads : fa_get_num_threads();
#else
    (void)p;
    return 1;
#endif
}

/* Threads for a call of another driver (the linear layers, dispatch.c):
 * requested if > 0, else the setting above; 1 in a child forked after the
 * pool started.  A count above 1 marks the pool as started. */
int fa_threads_for_call(int requested)
{
#ifdef _OPENMP
    if (fa_serial_only) return 1;
    const int n = requested > 0 ? requested : fa_get_num_threads();
#if !defined(_WIN32)
    if (n > 1) fa_pool_started = 1;
#endif
    return n;
#else
    (void)requested;
    return 1;
#endif
}

int fa_has_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* Bytes of one stored element, and of one element of the compute type
 * (float32 for the 16-bit storage types). */
static size_t fa_store_size(const fa_params *p)
{
    switch (p->dtype) {
    case FA_F64: return sizeof(double);
    case FA_F16:
    case FA_BF16: return sizeof(uint16_t);
    default: return sizeof(float);
    }
}

static size_t fa_compute_size(const fa_params *p)
{
    return p->dtype == FA_F64 ? sizeof(double) : sizeof(float);
}

/* Query and key counts of batch b, and the row offsets of its first query
 * and key (packed variable-length batches). */
static int64_t fa_nq(const fa_params *p, int64_t b)
{
    return p->q_start ? p->q_start[b + 1] - p->q_start[b] : p->n_q;
}

static int64_t fa_nk(const fa_params *p, int64_t b)
{
    if (p->k_start) return p->k_start[b + 1] - p->k_start[b];
    if (p->k_len) return p->k_len[b] < p->n_k ? p->k_len[b] : p->n_k;
    return p->n_k;
}

/* a + b clamped to [lo, hi] (b may be huge: an unbounded band side). */
static int64_t fa_clamp_add(int64_t a, int64_t b, int64_t lo, int64_t hi)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r)) r = b > 0 ? INT64_MAX : INT64_MIN;
    return r < lo ? lo : r > hi ? hi : r;
}

/* Fill the tile whose first virtual row is vr0 for (b, hkv). */
static void fa_fill_item(const fa_params *p, int64_t b, int64_t hkv,
                         int64_t vr0, int64_t tile_rows, int64_t nvr, fa_work_item *t)
{
    const size_t es = fa_store_size(p);
    const size_t les = fa_compute_size(p);
    const int64_t group = p->h_q / p->h_kv;
    const int64_t nq = fa_nq(p, b), nk = fa_nk(p, b);
    const int64_t q0 = p->q_start ? p->q_start[b] : 0;
    const int64_t k0 = p->k_start ? p->k_start[b] : 0;
    const int64_t base = p->band_from_end ? nk - nq : 0;
    const char *q = (const char *)p->q;
    char *o = (char *)p->out;
    char *lse = (char *)p->lse;
    char *w = (char *)p->weights;
    const size_t mes = p->mask_kind == FA_MASK_BOOL ? 1
                       : p->mask_kind == FA_MASK_ADD_F32 ? 4
                       : p->mask_kind == FA_MASK_ADD_F64 ? 8 : 2;
    const char *mask = (const char *)p->mask;

    int rows = (int)(nvr - vr0 < tile_rows ? nvr - vr0 : tile_rows);
    t->rows = rows;
    for (int r = 0; r < rows; r++) {
        const int64_t vr = vr0 + r;
        const int64_t h = hkv * group + vr / nq;
        const int64_t i = vr % nq;
        const int64_t row = q0 + i;
        t->q_row[r] = q + (size_t)(b * p->q_sb + h * p->q_sh + row * p->q_sn) * es;
        t->o_row[r] = o + (size_t)(b * p->o_sb + h * p->o_sh + row * p->o_sn) * es;
        t->lse_row[r] = lse ? lse + (size_t)(b * p->l_sb + h * p->l_sh + row * p->l_sn) * les
                            : NULL;
        t->mask_row[r] = p->mask_kind != FA_MASK_NONE
                             ? mask + (size_t)(b * p->m_sb + h * p->m_sh + i * p->m_sq) * mes
                             : NULL;
        t->w_row[r] = w ? w + (size_t)(b * p->w_sb + h * p->w_sh + i * p->w_sq) * es : NULL;
        t->jlo[r] = p->band_lo == FA_UNBOUNDED_LO ? 0 : fa_clamp_add(i + base, p->band_lo, 0, nk);
        t->jhi[r] = p->band_hi == FA_UNBOUNDED_HI ? nk
                                                  : fa_clamp_add(i + base + 1, p->band_hi, 0, nk);
        if (t->jhi[r] < t->jlo[r]) t->jhi[r] = t->jlo[r];
        t->pos[r] = i + nk - nq;
        t->slope[r] = p->alibi ? p->alibi[b * p->a_sb + h * p->a_sh] : 0.0;
    }
    t->k_lo = 0;
    t->k_hi = nk;
    t->out_compute = 0;
    t->packed = NULL;
    t->n_keys = nk;
    t->pages = NULL;
    if (p->block_table) return; /* paged: the pointers are per page */
    const size_t kes = p->dtype == FA_I8KV ? 1 : es; /* int8 keys and values */
    t->k = (const char *)p->k + (size_t)(b * p->k_sb + hkv * p->k_sh + k0 * p->k_sn) * kes;
    t->v = (const char *)p->v + (size_t)(b * p->v_sb + hkv * p->v_sh + k0 * p->v_sn) * kes;
    t->k_scale = p->k_scale ? p->k_scale + b * p->ks_sb + hkv * p->ks_sh : NULL;
    t->v_scale = p->v_scale ? p->v_scale + b * p->vs_sb + hkv * p->vs_sh + k0 * p->vs_sn : NULL;
}

/* Split-KV: when there are fewer than FA_SPLIT_TASKS tiles, the keys are
 * cut into chunks (of at least FA_SPLIT_MIN_KEYS) computed as separate work
 * items and merged by their lse.  The split depends only on the shape,
 * never on the thread count, so results are bitwise reproducible. */
#define FA_SPLIT_TASKS 16
/* Largest d or dv accepted: scratch is O(64 * d) elements, so anything
 * larger is beyond any memory, and sizes stay far from size_t overflow. */
#define FA_MAX_HEAD_DIM ((int64_t)1 << 32)
#define FA_SPLIT_MIN_KEYS 512

/* Merge nsplit partial results of one tile (rows x (dv + 1) values per
 * split, in the compute type: the normalized output then the lse) into the
 * real output: out = sum_s w_s o_s / sum_s w_s with
 * w_s = exp(lse_s - max lse), in double precision.  NaN in any partial
 * makes the row NaN. */
static double fa_part(const fa_params *p, const char *row, int64_t idx)
{
    return p->dtype == FA_F64 ? ((const double *)row)[idx] : (double)((const float *)row)[idx];
}

static void fa_store(const fa_params *p, void *dst, int64_t idx, double x)
{
    switch (p->dtype) {
    case FA_F64: ((double *)dst)[idx] = x; break;
    case FA_F16: ((uint16_t *)dst)[idx] = fa_f32_to_half((float)x); break;
    case FA_BF16: ((uint16_t *)dst)[idx] = fa_f32_to_bf16((float)x); break;
    default: ((float *)dst)[idx] = (float)x; break;
    }
}

static void fa_merge_tile(const fa_params *p, const fa_work_item *t, const char *part,
                          int64_t nsplit, size_t split_stride)
{
    const int64_t dv = p->dv;
    double w[FA_SPLIT_TASKS]; /* nsplit <= FA_SPLIT_TASKS (see fa_attention) */
    for (int r = 0; r < t->rows; r++) {
        const int64_t base = r * (dv + 1);
        double m = -__builtin_inf();
        int nan = 0;
        for (int64_t s = 0; s < nsplit; s++) {
            const double l = fa_part(p, part + s * split_stride, base + dv);
            if (l != l) nan = 1;
            else if (l > m) m = l;
        }
        /* each split's weight once per row, normalized */
        double wsum = 0;
        for (int64_t s = 0; s < nsplit; s++) {
            w[s] = (!nan && m != -__builtin_inf())
                       ? __builtin_exp(fa_part(p, part + s * split_stride, base + dv) - m)
                       : 0.0;
            wsum += w[s];
        }
        if (wsum > 0)
            for (int64_t s = 0; s < nsplit; s++) w[s] /= wsum;
        for (int64_t e = 0; e < dv; e++) {
            double x = 0;
            if (nan) {
                x = __builtin_nan("");
            } else {
                for (int64_t s = 0; s < nsplit; s++)
                    if (w[s] != 0) x += w[s] * fa_part(p, part + s * split_stride, base + e);
            }
            fa_store(p, t->o_row[r], e * p->o_sd, x);
        }
        if (t->lse_row[r]) {
            const double lse = nan ? __builtin_nan("")
                               : wsum > 0 ? m + __builtin_log(wsum) : -__builtin_inf();
            if (p->dtype == FA_F64) *(double *)t->lse_row[r] = lse;
            else *(float *)t->lse_row[r] = (float)lse;
        }
    }
}

/* Everything a worker needs to run one work item or merge one task. */
typedef struct {
    const fa_params *p;   /* the caller's params */
    fa_params pp;         /* the params a split item's kernel sees */
    fa_kernel_fn kernel;
    const fa_kernels *tiles; /* matrix family: its tiles_begin / tiles_end */
    int64_t tile_rows, tasks, nsplit, chunk;
    int64_t *task_start;  /* batch + 1 offsets: first task of each batch */
    /* Matrix family: K and V packed once per call, panel by panel (the
     * panels of batch b, kv head h start at pack_start[b] + h * panels) */
    uint16_t *packed;
    int64_t *pack_start;  /* batch + 1 offsets, or NULL */
    size_t panel_elems;
    char *part;           /* split partials, or NULL */
    size_t split_stride;
    const struct fa_paged *paged; /* paged keys and values, or NULL */
    size_t kernel_scratch; /* bytes of the scratch the kernel uses */
} fa_work;

static int64_t fa_tiles_in(const fa_params *p, int64_t b, int64_t q_block);
static int64_t fa_tiles_of(const fa_work *pl, int64_t b) { return fa_tiles_in(pl->p, b, pl->tile_rows); }

/* The batch of item idx given per-batch start offsets: the last b with
 * start[b] <= idx. */
static int64_t fa_batch_of(const int64_t *start, int64_t batch, int64_t idx)
{
    int64_t lo = 0, hi = batch - 1;
    while (lo < hi) {
        const int64_t mid = (lo + hi + 1) / 2;
        if (start[mid] <= idx) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* Key panels per kv head of batch b (matrix family). */
static int64_t fa_panels_in(const fa_params *p, int64_t b)
{
    return (fa_nk(p, b) + FA_MX_KP - 1) / FA_MX_KP;
}

/* Tile of a task: last tiles first, since with causal masking they are the
 * heaviest, which balances the dynamic schedule. */
static void fa_task_item(const fa_work *pl, int64_t task, fa_work_item *tile)
{
    const fa_params *p = pl->p;
    const int64_t b = fa_batch_of(pl->task_start, p->batch, task);
    const int64_t tiles = fa_tiles_of(pl, b);
    const int64_t rel = task - pl->task_start[b];
    const int64_t hkv = rel / tiles;
    const int64_t ti = tiles - 1 - rel % tiles;
    fa_fill_item(p, b, hkv, ti * pl->tile_rows, pl->tile_rows,
                 p->h_q / p->h_kv * fa_nq(p, b), tile);
    if (pl->packed)
        tile->packed = pl->packed + (size_t)(pl->pack_start[b] + hkv * fa_panels_in(p, b)) *
                                        pl->panel_elems;
}

/* Matrix family: pack key panel `item` (of all batches and kv heads). */
static void fa_pack_item(const fa_work *pl, int64_t item)
{
    const fa_params *p = pl->p;
    const int64_t b = fa_batch_of(pl->pack_start, p->batch, item);
    const int64_t panels = fa_panels_in(p, b), rel = item - pl->pack_start[b];
    fa_work_item t; /* no rows: only the kv head's pointers and key count */
    fa_fill_item(p, b, rel / panels, 0, 1, 0, &t);
    pl->tiles->pack[p->dtype](p, &t, rel % panels, pl->packed + (size_t)item * pl->panel_elems);
}

static void fa_paged_item(const fa_work *pl, int64_t item, fa_work_item *tile, char *scratch);
static void fa_paged_merge(const fa_work *pl, int64_t task, fa_work_item *tile, char *scratch);

static void fa_run_item(const fa_work *pl, int64_t item, fa_work_item *tile, void *scratch)
{
    if (pl->paged) {
        fa_paged_item(pl, item, tile, (char *)scratch);
        return;
    }
    const fa_params *p = pl->p;
    const int64_t task = item / pl->nsplit, split = item % pl->nsplit;
    fa_task_item(pl, task, tile);
    if (pl->nsplit == 1) {
        pl->kernel(p, tile, scratch);
        return;
    }
    const size_t es = fa_compute_size(p);
    char *dst = pl->part + (size_t)item * pl->split_stride;
    for (int r = 0; r < tile->rows; r++) {
        tile->o_row[r] = dst + (size_t)r * (size_t)(p->dv + 1) * es;
        tile->lse_row[r] = dst + ((size_t)r * (size_t)(p->dv + 1) + (size_t)p->dv) * es;
    }
    tile->out_compute = 1;
    const int64_t nk = tile->k_hi;
    tile->k_lo = split * pl->chunk < nk ? split * pl->chunk : nk;
    tile->k_hi = tile->k_lo + pl->chunk < nk ? tile->k_lo + pl->chunk : nk;
    pl->kernel(&pl->pp, tile, scratch);
}

static void fa_merge_task(const fa_work *pl, int64_t task, fa_work_item *tile, void *scratch)
{
    if (pl->paged) {
        fa_paged_merge(pl, task, tile, (char *)scratch);
        return;
    }
    fa_task_item(pl, task, tile);
    fa_merge_tile(pl->p, tile, pl->part + (size_t)task * pl->nsplit * pl->split_stride,
                  pl->nsplit, pl->split_stride);
}

#include "fpenv.h" /* FA_FP_SAVE / FA_FP_FLUSH / FA_FP_RESTORE: why, there */

int fa_flush_subnormals(void)
{
    static _Atomic int flush = -1;
    int f = atomic_load(&flush);
    if (f < 0) {
        const char *e = getenv("FASTATTN_KEEP_SUBNORMALS");
        f = !(e && *e && strcmp(e, "0") != 0);
        atomic_store(&flush, f);
    }
    return f;
}

/* Run a plan's items (and merges) on the thread pool. */
static int fa_run_plan(fa_work *pl, const fa_plan_info *info)
{
    const size_t scratch_bytes = info->scratch_bytes;
    const int64_t items = info->items;
    const int nthreads = info->threads;

    int status = FA_OK;
    /* (not with a positive subnormal soft cap: the kernels test cap > 0,
     * which flushing would turn false, silently switching capping off) */
    const int flush = fa_flush_subnormals() &&
        !(pl->p->softcap > 0 && pl->p->softcap < 0x1p-1022);
    if (nthreads <= 1) {
        /* Serial: no OpenMP construct at all (cheaper for small calls, and
         * safe in a child process forked after the pool started). */
        void *scratch = aligned_alloc(FA_ALIGN, scratch_bytes);
        fa_work_item tile;
        if (!scratch) {
            status = FA_ERR_NOMEM;
        } else {
            const fa_fp_state fp = FA_FP_SAVE();
            if (flush) FA_FP_FLUSH(fp);
            const int64_t npack = pl->packed ? pl->pack_start[pl->p->batch] : 0;
            for (int64_t item = 0; item < npack; item++) fa_pack_item(pl, item);
            if (pl->tiles) pl->tiles->tiles_begin();
            for (int64_t item = 0; item < items; item++) fa_run_item(pl, item, &tile, scratch);
            if (pl->tiles) pl->tiles->tiles_end();
            if (pl->nsplit > 1)
                for (int64_t task = 0; task < pl->tasks; task++) fa_merge_task(pl, task, &tile, scratch);
            if (flush) FA_FP_RESTORE(fp);
            free(scratch);
        }
    }
#ifdef _OPENMP
    else {
#if !defined(_WIN32)
        fa_pool_started = 1;
#endif
#pragma omp parallel num_threads(nthreads)
        {
            void *scratch = aligned_alloc(FA_ALIGN, scratch_bytes);
            fa_work_item tile;
            const fa_fp_state fp = FA_FP_SAVE();
            if (flush) FA_FP_FLUSH(fp);
            if (!scratch) {
#pragma omp atomic write
                status = FA_ERR_NOMEM;
            }
            /* K and V packed once (the loop's barrier orders the tiles after) */
            const int64_t npack = pl->packed ? pl->pack_start[pl->p->batch] : 0;
#pragma omp for schedule(dynamic, 1)
            for (int64_t item = 0; item < npack; item++) fa_pack_item(pl, item);
            /* the tile configuration: once per thread per call */
            if (pl->tiles) pl->tiles->tiles_begin();
#pragma omp for schedule(dynamic, 1)
            for (int64_t item = 0; item < items; item++)
                if (scratch) fa_run_item(pl, item, &tile, scratch);
            if (pl->tiles) pl->tiles->tiles_end();
            /* (the implicit barrier of the loop above orders the merge) */
            if (pl->nsplit > 1) {
#pragma omp for schedule(static)
                for (int64_t task = 0; task < pl->tasks; task++)
                    if (scratch) fa_merge_task(pl, task, &tile, scratch);
            }
            if (flush) FA_FP_RESTORE(fp);
            free(scratch);
        }
    }
#endif
    return status;
}

/* Work items per batch b (all kv heads) for tiles of q_block rows. */
static int64_t fa_tiles_in(const fa_params *p, int64_t b, int64_t q_block)
{
    const int64_t nvr = p->h_q / p->h_kv * fa_nq(p, b);
    return (nvr + q_block - 1) / q_block;
}

/* Matrix units: at least this many query rows per kv head (prefill; decode
 * stays on the vector kernels). */
#define FA_MX_MIN_ROWS 16

/* Does p ask for 16-bit products: 16-bit inputs, or float32 with a reduced
 * precision? */
static int fa_matrix_wanted(const fa_params *p)
{
    if (p->dtype == FA_BF16 || p->dtype == FA_F16) return 1;
    return p->dtype == FA_F32 &&
           (p->precision == FA_PRECISION_BF16 || p->precision == FA_PRECISION_BF16X3);
}

static int fa_plan_paged(const fa_params *p, fa_plan_info *info);

/* The plan of fa_attention (weights = 0) or fa_attention_weights: the
 * kernel family, ISA, blocks, key splits, threads and scratch.  Every
 * choice the driver makes is made here. */
static int fa_plan_make(const fa_params *p, int weights, fa_plan_info *info)
{
    memset(info, 0, sizeof *info);
    info->family = weights ? FA_FAMILY_WEIGHTS : FA_FAMILY_TILE;
    info->isa = (int)fa_get_isa();
    info->q_block = FA_BQ;
    info->k_block = FA_BK;
    info->key_splits = 1;
    if (p->batch < 0 || p->h_q < 0 || p->h_kv < 0 || p->n_q < 0 ||
        p->n_k < 0 || p->d < 0 || p->dv < 0)
        return FA_ERR_PARAMS;
    if (p->batch == 0 || p->h_q == 0 || p->n_q == 0) goto kernel; /* nothing to do */
    if (p->h_kv == 0 || p->h_q % p->h_kv != 0) return FA_ERR_PARAMS;
    if (p->dtype == FA_I8KV && (!p->k_scale || !p->v_scale)) return FA_ERR_PARAMS;
    /* Head dims this large (possible with stride-0 views) could not get
     * their O(d) scratch anyway, and the size arithmetic below must not
     * wrap around: refuse them as out of memory. */
    if (p->d > FA_MAX_HEAD_DIM || p->dv > FA_MAX_HEAD_DIM) return FA_ERR_NOMEM;
    if (p->block_table) {
        if (weights) return FA_ERR_PARAMS;
        const int status = fa_plan_paged(p, info);
        if (status != FA_OK) return status;
        goto kernel;
    }

    const int64_t group = p->h_q / p->h_kv;
    int64_t max_nvr = 0, max_nk = 0;
    for (int64_t b = 0; b < p->batch; b++) {
        const int64_t nq = fa_nq(p, b), nk = fa_nk(p, b);
        if (nq < 0 || nk < 0) return FA_ERR_PARAMS;
        if (group * nq > max_nvr) max_nvr = group * nq;
        if (nk > max_nk) max_nk = nk;
        info->work += (double)p->h_q * nq * nk * (p->d + p->dv);
    }
    /* Few rows per kv head and unit column strides: the decode kernel. */
    if (!weights && max_nvr <= FA_ROWS_MAX && p->k_sd == 1 && p->v_sd == 1) {
        info->family = FA_FAMILY_ROWS;
        info->q_block = FA_ROWS_MAX;
    }
    /* Prefill with 16-bit products on a path with the matrix family (for
     * the real tiles, once the gate allows them); otherwise float32 with a
     * reduced precision runs the float32 vector path, and says so. */
    if (!weights && max_nvr >= FA_MX_MIN_ROWS && fa_matrix_wanted(p) &&
        fa_matrix_usable(p->dtype, NULL)) {
        info->family = FA_FAMILY_MATRIX;
        info->k_block = FA_MX_KP;
        if (p->dtype == FA_F32) info->precision = p->precision;
    }
    for (int64_t b = 0; b < p->batch; b++) info->tasks += p->h_kv * fa_tiles_in(p, b, info->q_block);

    /* Split-KV: too few tiles for the threads, and long keys. */
    info->split_keys = max_nk;
    if (!weights && info->tasks < FA_SPLIT_TASKS && max_nk >= 2 * FA_SPLIT_MIN_KEYS) {
        int64_t nsplit = (FA_SPLIT_TASKS + info->tasks - 1) / info->tasks;
        if (nsplit > max_nk / FA_SPLIT_MIN_KEYS) nsplit = max_nk / FA_SPLIT_MIN_KEYS;
        int64_t chunk = (max_nk + nsplit - 1) / nsplit;
        chunk = (chunk + FA_BK - 1) / FA_BK * FA_BK;
        info->split_keys = chunk;
        info->key_splits = (max_nk + chunk - 1) / chunk;
    }
    info->items = info->tasks * info->key_splits;
    info->scratch_bytes = fa_scratch_size(p->d, p->dv, fa_compute_size(p),
                                          p->dtype == FA_F16 || p->dtype == FA_BF16 ||
                                              p->dtype == FA_I8KV);
    if (info->family == FA_FAMILY_MATRIX) {
        const int nseg = info->precision == FA_PRECISION_BF16X3 ? 3 : 1;
        const size_t mx = fa_matrix_scratch_layout(p->d, p->dv, nseg).end * sizeof(float);
        if (mx > info->scratch_bytes) info->scratch_bytes = (mx + FA_ALIGN - 1) / FA_ALIGN * FA_ALIGN;
    }
    /* Threads only pay off above a few hundred thousand FMAs of work (the
     * weights pass does half the work of the attention). */
    info->threads = fa_call_threads(p);
    if ((weights ? info->work / 2 : info->work) < 4.0e5 || info->items < 2) info->threads = 1;
    if (info->threads > info->items) info->threads = (int)info->items;
kernel:
    info->bf16_tile = fa_bf16_tile_policy();
    fa_dispatch((fa_family)info->family, p->dtype, &info->kernel_isa);
    return FA_OK;
}

const char *fa_family_name(int family)
{
    static const char *const names[FA_FAMILY_COUNT] = {
        [FA_FAMILY_TILE] = "tile",
        [FA_FAMILY_ROWS] = "rows",
        [FA_FAMILY_WEIGHTS] = "weights",
        [FA_FAMILY_MATRIX] = "matrix",
    };
    return family >= 0 && family < FA_FAMILY_COUNT && names[family] ? names[family] : "unknown";
}

int fa_plan(const fa_params *p, fa_plan_info *info) { return fa_plan_make(p, 0, info); }
int fa_plan_weights(const fa_params *p, fa_plan_info *info) { return fa_plan_make(p, 1, info); }

/* Matrix family: the buffer of K and V packed once per call (O(keys x
 * (d + dv)) per kv head; three times that for bf16x3). */
static int fa_matrix_pack_alloc(fa_work *pl, const fa_plan_info *info)
{
    const fa_params *p = pl->p;
    const int nseg = info->precision == FA_PRECISION_BF16X3 ? 3 : 1;
    pl->panel_elems = fa_matrix_panel_layout(p->d, p->dv, nseg).elems;
    pl->pack_start = (int64_t *)malloc((size_t)(p->batch + 1) * sizeof(int64_t));
    if (!pl->pack_start) return FA_ERR_NOMEM;
    pl->pack_start[0] = 0;
    int64_t panels;
    size_t n, bytes;
    for (int64_t b = 0; b < p->batch; b++)
        if (__builtin_mul_overflow(p->h_kv, fa_panels_in(p, b), &panels) ||
            __builtin_add_overflow(pl->pack_start[b], panels, &pl->pack_start[b + 1]))
            return FA_ERR_NOMEM;
    /* broadcast K (stride 0) does not bound the keys by memory: sizes checked */
    if (__builtin_mul_overflow((size_t)pl->pack_start[p->batch], (size_t)pl->panel_elems, &n) ||
        __builtin_mul_overflow(n, (size_t)2, &bytes) || bytes > SIZE_MAX - 2 * FA_ALIGN)
        return FA_ERR_NOMEM;
    pl->packed = (uint16_t *)aligned_alloc(FA_ALIGN, (bytes / FA_ALIGN + 1) * FA_ALIGN);
    return pl->packed ? FA_OK : FA_ERR_NOMEM;
}

/* ---------------------------------------------------------------- paged */

/* Paged keys and values (fa_params.block_table).  The work of batch b is
 * its row tiles (a few-row tile of FA_ROWS_MAX rows where all its query
 * rows of a kv head fit, as in decode, else tiles of FA_BQ rows: one call
 * serves decode and prefill chunks each with its own kernel), and each
 * tile's keys are cut into splits of FA_PAGED_SPLIT_KEYS keys (whole
 * pages) run as separate items and merged by their lse.  The few-row
 * kernel walks the pages of a split itself (work item pages), one key
 * block at a time, when the pages hold whole blocks and the keys are not
 * int8 (whose key scales are per page); otherwise every page is one kernel
 * call on that page alone (its rows' bands, ALiBi diagonal and scales
 * moved to the page), its normalized partial folded into a running one by
 * its lse, in double precision.  Every cut is at a fixed key position, so a
 * row's result depends neither on where its pages lie, nor on the thread
 * count, nor on the other sequences of the batch. */
#define FA_PAGED_SPLIT_KEYS 4096

typedef struct fa_paged {
    int64_t split_pages;  /* pages per split */
    int64_t *item_start;  /* batch + 1: first item of each batch */
    int64_t *merge_start; /* batch + 1: first merge of each batch (its
                             tiles, when it has more than one split) */
    size_t *part_start;   /* batch: byte offset of its split partials */
    fa_kernel_fn rows_kernel, tile_kernel;
} fa_paged;

/* One batch's shape of work. */
typedef struct {
    int64_t nk, nvr;      /* keys, and query rows of a kv head (all heads) */
    int64_t q_block;      /* rows per tile */
    int64_t head_tiles;   /* tiles per kv head */
    int64_t tiles;        /* tiles of all kv heads */
    int64_t pages, splits;
} fa_paged_batch;

static fa_paged_batch fa_paged_shape(const fa_params *p, int64_t b, int64_t split_pages)
{
    fa_paged_batch s;
    s.nk = fa_nk(p, b);
    s.nvr = p->h_q / p->h_kv * fa_nq(p, b);
    s.q_block = s.nvr <= FA_ROWS_MAX && p->k_sd == 1 && p->v_sd == 1 ? FA_ROWS_MAX : FA_BQ;
    s.head_tiles = (s.nvr + s.q_block - 1) / s.q_block;
    s.tiles = p->h_kv * s.head_tiles;
    s.pages = (s.nk + p->page_size - 1) / p->page_size;
    s.splits = s.pages > split_pages ? (s.pages + split_pages - 1) / split_pages : 1;
    return s;
}

static int64_t fa_paged_split_pages(const fa_params *p)
{
    return p->page_size >= FA_PAGED_SPLIT_KEYS ? 1 : FA_PAGED_SPLIT_KEYS / p->page_size;
}

/* The fold of partial results, per row: [max lse, weight sum, NaN seen,
 * weighted output (dv)], in double. */
static size_t fa_fold_bytes(const fa_params *p)
{
    const size_t part = (size_t)FA_BQ * (size_t)(p->dv + 1) * fa_compute_size(p);
    const size_t fold = (size_t)FA_BQ * (size_t)(p->dv + 3) * sizeof(double);
    return (part + FA_ALIGN - 1) / FA_ALIGN * FA_ALIGN + fold;
}

static void fa_fold_init(double *f, int rows, int64_t dv)
{
    for (int r = 0; r < rows; r++) {
        double *fr = f + r * (dv + 3);
        fr[0] = -__builtin_inf();
        for (int64_t e = 1; e < dv + 3; e++) fr[e] = 0;
    }
}

/* Fold rows x (dv + 1) normalized partials (output, then lse; compute
 * type) into f.  (Typed loops: this runs once per page and row.) */
static void fa_fold_row(double *fr, const float *o32, const double *o64, double l, int64_t dv)
{
    double *acc = fr + 3;
    if (l != l) {
        fr[2] = 1;
        return;
    }
    if (l == -__builtin_inf()) return; /* saw no key */
    if (l > fr[0]) {
        const double c = fr[0] == -__builtin_inf() ? 0.0 : __builtin_exp(fr[0] - l);
        fr[1] *= c;
        for (int64_t e = 0; e < dv; e++) acc[e] *= c;
        fr[0] = l;
    }
    const double w = __builtin_exp(l - fr[0]);
    fr[1] += w;
    if (o32)
        for (int64_t e = 0; e < dv; e++) acc[e] += w * (double)o32[e];
    else
        for (int64_t e = 0; e < dv; e++) acc[e] += w * o64[e];
}

static void fa_fold_add(const fa_params *p, double *f, int rows, const char *part)
{
    const int64_t dv = p->dv;
    for (int r = 0; r < rows; r++) {
        double *fr = f + r * (dv + 3);
        if (p->dtype == FA_F64) {
            const double *row = (const double *)part + (size_t)r * (size_t)(dv + 1);
            fa_fold_row(fr, NULL, row, row[dv], dv);
        } else {
            const float *row = (const float *)part + (size_t)r * (size_t)(dv + 1);
            fa_fold_row(fr, row, NULL, (double)row[dv], dv);
        }
    }
}

/* Write the folded rows: to t's output and lse rows (final), or as
 * normalized partials in the compute type to part (a split's result). */
static void fa_fold_store(const fa_params *p, const double *f, const fa_work_item *t, char *part)
{
    const int64_t dv = p->dv;
    const size_t cs = fa_compute_size(p);
    for (int r = 0; r < t->rows; r++) {
        const double *fr = f + r * (dv + 3), *acc = fr + 3;
        const int nan = fr[2] != 0, none = !nan && !(fr[1] > 0);
        const double lse = nan ? __builtin_nan("") : none ? -__builtin_inf()
                                                          : fr[0] + __builtin_log(fr[1]);
        char *row = part ? part + (size_t)r * (size_t)(dv + 1) * cs : NULL;
        for (int64_t e = 0; e < dv; e++) {
            const double x = nan ? __builtin_nan("") : none ? 0.0 : acc[e] / fr[1];
            if (!row) fa_store(p, t->o_row[r], e * p->o_sd, x);
            else if (cs == sizeof(double)) ((double *)row)[e] = x;
            else ((float *)row)[e] = (float)x;
        }
        void *ls = row ? (void *)(row + (size_t)dv * cs) : t->lse_row[r];
        if (!ls) continue;
        if (cs == sizeof(double)) *(double *)ls = lse;
        else *(float *)ls = (float)lse;
    }
}

/* The tile of task `task` of batch b. */
static void fa_paged_tile(const fa_params *p, int64_t b, const fa_paged_batch *s, int64_t task,
                          fa_work_item *tile)
{
    const int64_t hkv = task / s->head_tiles;
    const int64_t ti = s->head_tiles - 1 - task % s->head_tiles; /* heaviest first */
    fa_fill_item(p, b, hkv, ti * s->q_block, s->q_block, s->nvr, tile);
}

/* A few-row item whose pages the kernel walks itself (pages of whole key
 * blocks; not int8, whose key scales are per page): one kernel call for
 * pages [g0, g1) of the split, written as the final result when the tile
 * has one split, else as the split's partial. */
static void fa_paged_walk(const fa_work *pl, int64_t b, const fa_paged_batch *s, int64_t rel,
                          int64_t g0, int64_t g1, int64_t hkv, const fa_work_item *tile,
                          fa_work_item *pt, char *scratch)
{
    const fa_params *p = pl->p;
    const size_t kes = fa_store_size(p), cs = fa_compute_size(p);
    const int64_t k0 = g0 * p->page_size;
    const int64_t kl = (s->nk < g1 * p->page_size ? s->nk : g1 * p->page_size) - k0;
    for (int r = 0; r < tile->rows; r++) {
        int64_t lo = tile->jlo[r] - k0, hi = tile->jhi[r] - k0;
        lo = lo < 0 ? 0 : lo > kl ? kl : lo;
        hi = hi < lo ? lo : hi > kl ? kl : hi;
        pt->jlo[r] = lo;
        pt->jhi[r] = hi;
        pt->pos[r] = tile->pos[r] - k0;
    }
    pt->k = (const char *)p->k + (size_t)(hkv * p->k_sh) * kes;
    pt->v = (const char *)p->v + (size_t)(hkv * p->v_sh) * kes;
    pt->pages = p->block_table + b * p->bt_sb + g0;
    pt->k_scale = pt->v_scale = NULL;
    pt->k_lo = 0;
    pt->k_hi = pt->n_keys = kl;
    if (s->splits == 1) { /* the result itself, as the unpaged kernel writes it */
        for (int r = 0; r < tile->rows; r++) {
            pt->o_row[r] = tile->o_row[r];
            pt->lse_row[r] = tile->lse_row[r];
        }
        pt->out_compute = 0;
        pl->paged->rows_kernel(p, pt, scratch);
        return;
    }
    char *part = pl->part + pl->paged->part_start[b] +
                 (size_t)rel * (size_t)s->q_block * (size_t)(p->dv + 1) * cs;
    for (int r = 0; r < tile->rows; r++) {
        pt->o_row[r] = part + (size_t)r * (size_t)(p->dv + 1) * cs;
        pt->lse_row[r] = part + ((size_t)r * (size_t)(p->dv + 1) + (size_t)p->dv) * cs;
    }
    pl->paged->rows_kernel(&pl->pp, pt, scratch);
}

/* Run one item: the pages of one split of one tile, folded. */
static void fa_paged_item(const fa_work *pl, int64_t item, fa_work_item *tile, char *scratch)
{
    const fa_params *p = pl->p;
    const fa_paged *pg = pl->paged;
    const int64_t b = fa_batch_of(pg->item_start, p->batch, item);
    const fa_paged_batch s = fa_paged_shape(p, b, pg->split_pages);
    const int64_t rel = item - pg->item_start[b];
    const int64_t task = rel / s.splits, split = rel % s.splits;
    const int64_t hkv = task / s.head_tiles;
    fa_paged_tile(p, b, &s, task, tile);
    const int rows = tile->rows;
    const int64_t dv = p->dv, ps = p->page_size;
    const size_t cs = fa_compute_size(p);
    const size_t kes = p->dtype == FA_I8KV ? 1 : fa_store_size(p);
    char *part = scratch + pl->kernel_scratch;
    double *fold = (double *)(part + ((size_t)FA_BQ * (size_t)(dv + 1) * cs + FA_ALIGN - 1) /
                                         FA_ALIGN * FA_ALIGN);
    fa_fold_init(fold, rows, dv);

    /* the keys any row of the tile sees */
    int64_t jmin = INT64_MAX, jmax = INT64_MIN;
    for (int r = 0; r < rows; r++)
        if (tile->jlo[r] < tile->jhi[r]) {
            if (tile->jlo[r] < jmin) jmin = tile->jlo[r];
            if (tile->jhi[r] > jmax) jmax = tile->jhi[r];
        }
    fa_work_item pt; /* one page's item */
    pt.rows = rows;
    pt.out_compute = 1;
    pt.packed = NULL;
    pt.pages = NULL;
    for (int r = 0; r < rows; r++) {
        pt.q_row[r] = tile->q_row[r];
        pt.mask_row[r] = NULL;
        pt.w_row[r] = NULL;
        pt.slope[r] = tile->slope[r];
        pt.o_row[r] = part + (size_t)r * (size_t)(dv + 1) * cs;
        pt.lse_row[r] = part + ((size_t)r * (size_t)(dv + 1) + (size_t)dv) * cs;
    }
    const int64_t g1 = (split + 1) * pg->split_pages < s.pages ? (split + 1) * pg->split_pages
                                                                : s.pages;
    if (s.q_block == FA_ROWS_MAX && p->dtype != FA_I8KV && ps % FA_BK == 0) {
        fa_paged_walk(pl, b, &s, rel, split * pg->split_pages, g1, hkv, tile, &pt, scratch);
        return;
    }
    for (int64_t g = split * pg->split_pages; g < g1; g++) {
        const int64_t k0 = g * ps, kl = s.nk - k0 < ps ? s.nk - k0 : ps;
        if (k0 >= jmax || k0 + kl <= jmin) continue; /* no row sees this page */
        const int64_t page = p->block_table[b * p->bt_sb + g];
        for (int r = 0; r < rows; r++) {
            int64_t lo = tile->jlo[r] - k0, hi = tile->jhi[r] - k0;
            lo = lo < 0 ? 0 : lo > kl ? kl : lo;
            hi = hi < lo ? lo : hi > kl ? kl : hi;
            pt.jlo[r] = lo;
            pt.jhi[r] = hi;
            pt.pos[r] = tile->pos[r] - k0;
        }
        pt.k = (const char *)p->k + (size_t)(page * p->k_sb + hkv * p->k_sh) * kes;
        pt.v = (const char *)p->v + (size_t)(page * p->v_sb + hkv * p->v_sh) * kes;
        pt.k_scale = p->k_scale ? p->k_scale + page * p->ks_sb + hkv * p->ks_sh : NULL;
        pt.v_scale = p->v_scale ? p->v_scale + page * p->vs_sb + hkv * p->vs_sh : NULL;
        pt.k_lo = 0;
        pt.k_hi = kl;
        pt.n_keys = kl;
        (s.q_block == FA_ROWS_MAX ? pg->rows_kernel : pg->tile_kernel)(&pl->pp, &pt, scratch);
        fa_fold_add(p, fold, rows, part);
    }
    if (s.splits == 1) {
        fa_fold_store(p, fold, tile, NULL);
    } else {
        const size_t slot = (size_t)s.q_block * (size_t)(dv + 1) * cs;
        fa_fold_store(p, fold, tile, pl->part + pg->part_start[b] + (size_t)rel * slot);
    }
}

/* Merge the splits of one tile (merge index m of all batches). */
static void fa_paged_merge(const fa_work *pl, int64_t m, fa_work_item *tile, char *scratch)
{
    const fa_params *p = pl->p;
    const fa_paged *pg = pl->paged;
    const int64_t b = fa_batch_of(pg->merge_start, p->batch, m);
    const fa_paged_batch s = fa_paged_shape(p, b, pg->split_pages);
    const int64_t task = m - pg->merge_start[b];
    const size_t cs = fa_compute_size(p);
    const size_t slot = (size_t)s.q_block * (size_t)(p->dv + 1) * cs;
    fa_paged_tile(p, b, &s, task, tile);
    double *fold = (double *)(scratch + pl->kernel_scratch +
                              ((size_t)FA_BQ * (size_t)(p->dv + 1) * cs + FA_ALIGN - 1) /
                                  FA_ALIGN * FA_ALIGN);
    fa_fold_init(fold, tile->rows, p->dv);
    for (int64_t sp = 0; sp < s.splits; sp++)
        fa_fold_add(p, fold, tile->rows,
                    pl->part + pg->part_start[b] + (size_t)(task * s.splits + sp) * slot);
    fa_fold_store(p, fold, tile, NULL);
}

/* The plan of a paged call. */
static int fa_plan_paged(const fa_params *p, fa_plan_info *info)
{
    if (p->page_size < 1 || !p->k_len || !p->q_start || p->mask_kind != FA_MASK_NONE)
        return FA_ERR_PARAMS;
    const int64_t sp = fa_paged_split_pages(p);
    int all_rows = 1;
    for (int64_t b = 0; b < p->batch; b++) {
        const fa_paged_batch s = fa_paged_shape(p, b, sp);
        if (s.nk < 0 || s.nvr < 0) return FA_ERR_PARAMS;
        if (s.nvr == 0) continue;
        all_rows &= s.q_block == FA_ROWS_MAX;
        info->tasks += s.tiles;
        info->items += s.tiles * s.splits;
        if (s.splits > info->key_splits) info->key_splits = s.splits;
        info->work += (double)p->h_q * fa_nq(p, b) * s.nk * (p->d + p->dv);
    }
    info->family = all_rows ? FA_FAMILY_ROWS : FA_FAMILY_TILE;
    info->q_block = all_rows ? FA_ROWS_MAX : FA_BQ;
    info->k_block = p->page_size;
    info->split_keys = sp * p->page_size;
    info->scratch_bytes = fa_scratch_size(p->d, p->dv, fa_compute_size(p),
                                          p->dtype == FA_F16 || p->dtype == FA_BF16 ||
                                              p->dtype == FA_I8KV) +
                          fa_fold_bytes(p);
    info->threads = fa_call_threads(p);
    if (info->work < 4.0e5 || info->items < 2) info->threads = 1;
    if (info->threads > info->items) info->threads = (int)(info->items > 0 ? info->items : 1);
    return FA_OK;
}

/* Run a paged call (its plan made). */
static int fa_execute_paged(const fa_params *p, const fa_plan_info *info)
{
    fa_work pl;
    memset(&pl, 0, sizeof pl);
    fa_paged pg;
    memset(&pg, 0, sizeof pg);
    pl.p = p;
    pl.pp = *p;
    pl.pp.o_sd = 1; /* the kernels write page partials, row after row */
    pl.paged = &pg;
    pl.kernel_scratch = info->scratch_bytes - fa_fold_bytes(p);
    pg.split_pages = fa_paged_split_pages(p);
    pg.rows_kernel = fa_dispatch(FA_FAMILY_ROWS, p->dtype, NULL);
    pg.tile_kernel = fa_dispatch(FA_FAMILY_TILE, p->dtype, NULL);
    pg.item_start = (int64_t *)malloc((size_t)(p->batch + 1) * sizeof(int64_t));
    pg.merge_start = (int64_t *)malloc((size_t)(p->batch + 1) * sizeof(int64_t));
    pg.part_start = (size_t *)malloc((size_t)(p->batch + 1) * sizeof(size_t));
    int status = FA_OK;
    if (!pg.item_start || !pg.merge_start || !pg.part_start) status = FA_ERR_NOMEM;
    if (status == FA_OK) {
        const size_t cs = fa_compute_size(p);
        size_t bytes = 0;
        pg.item_start[0] = pg.merge_start[0] = 0;
        for (int64_t b = 0; b < p->batch; b++) {
            const fa_paged_batch s = fa_paged_shape(p, b, pg.split_pages);
            const int64_t tiles = s.nvr ? s.tiles : 0;
            pg.item_start[b + 1] = pg.item_start[b] + tiles * s.splits;
            pg.merge_start[b + 1] = pg.merge_start[b] + (s.splits > 1 ? tiles : 0);
            pg.part_start[b] = bytes;
            if (s.splits > 1) bytes += (size_t)(tiles * s.splits * s.q_block) * (size_t)(p->dv + 1) * cs;
        }
        pl.tasks = pg.merge_start[p->batch];
        pl.nsplit = pl.tasks > 0 ? 2 : 1; /* (fa_run_plan merges when > 1) */
        if (bytes && !(pl.part = (char *)malloc(bytes))) status = FA_ERR_NOMEM;
    }
    if (status == FA_OK) status = fa_run_plan(&pl, info);
    free(pl.part);
    free(pg.item_start);
    free(pg.merge_start);
    free(pg.part_start);
    return status;
}

/* Run the plan of p: the work decomposition and buffers it asks for. */
static int fa_execute(const fa_params *p, int weights)
{
    fa_plan_info info;
    int status = fa_plan_make(p, weights, &info);
    if (status != FA_OK || info.items == 0) return status;
    if (p->block_table) return fa_execute_paged(p, &info);
    fa_work pl;
    pl.p = p;
    pl.pp = *p;
    pl.kernel = fa_dispatch((fa_family)info.family, p->dtype, NULL);
    pl.tiles = NULL;
    pl.packed = NULL;
    pl.pack_start = NULL;
    pl.paged = NULL;
    pl.kernel_scratch = info.scratch_bytes;
    /* the matrix kernel and its tile functions from one table: the path may
     * have been changed (fa_set_isa) since the plan */
    if (info.family == FA_FAMILY_MATRIX) {
        if (!fa_matrix_usable(p->dtype, &pl.tiles)) return FA_ERR_PARAMS;
        pl.kernel = pl.tiles->kernel[FA_FAMILY_MATRIX][p->dtype];
    }
    pl.tile_rows = info.q_block;
    pl.tasks = info.tasks;
    pl.nsplit = info.key_splits;
    pl.chunk = info.split_keys;
    pl.part = NULL;
    pl.task_start = (int64_t *)malloc((size_t)(p->batch + 1) * sizeof(int64_t));
    if (!pl.task_start) return FA_ERR_NOMEM;
    pl.task_start[0] = 0;
    for (int64_t b = 0; b < p->batch; b++)
        pl.task_start[b + 1] = pl.task_start[b] + p->h_kv * fa_tiles_of(&pl, b);
    /* Partial results of split work: per item, rows x (dv + 1) values. */
    pl.split_stride = (size_t)pl.tile_rows * (size_t)(p->dv + 1) * fa_compute_size(p);
    if (pl.nsplit > 1) {
        pl.part = (char *)malloc((size_t)(pl.tasks * pl.nsplit) * pl.split_stride);
        pl.pp.o_sd = 1;
    }
    if (pl.nsplit > 1 && !pl.part) status = FA_ERR_NOMEM;
    else if (pl.tiles) status = fa_matrix_pack_alloc(&pl, &info);
    if (status == FA_OK) status = fa_run_plan(&pl, &info);
    free(pl.part);
    free(pl.task_start);
    free(pl.packed);
    free(pl.pack_start);
    return status;
}

int fa_attention(const fa_params *p) { return fa_execute(p, 0); }

int fa_attention_weights(const fa_params *p)
{
    if (!p->weights || !p->lse) return FA_ERR_PARAMS;
    return fa_execute(p, 1);
}

/* Memory read bandwidth probe (declared in dispatch.h; for the decode
 * benchmarks): reads n 32-bit words with the current thread count.  An integer XOR reduction, which the
 * compiler vectorizes freely, so arithmetic never limits the loads.  The
 * caller times it; the result only keeps the loads alive. */
double fa_read_probe(const float *x, int64_t n)
{
    const uint32_t *w = (const uint32_t *)(const void *)x;
    uint32_t total = 0;
    int nthreads = fa_get_num_threads();
    (void)nthreads;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(^ : total)
#endif
    for (int64_t c = 0; c < (n + 4095) / 4096; c++) {
        const int64_t lo = c * 4096, hi = lo + 4096 < n ? lo + 4096 : n;
        uint32_t s = 0;
        for (int64_t i = lo; i < hi; i++) s ^= w[i];
        total ^= s;
    }
    return (double)total;
}
