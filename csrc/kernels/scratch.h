/*
 * scratch.h: the per-thread scratch buffer of the kernels, sized and carved
 * by one definition.
 *
 * The driver (attention.c) allocates fa_scratch_size() bytes per thread,
 * aligned to FA_ALIGN; each kernel carves its buffer with the layout
 * function of its family.  Both read the same offsets, so the size can
 * never fall behind the carving.  Offsets and sizes are in elements of the
 * compute type (float32 for the 16-bit storage types, float64 for f64).
 */
#ifndef FA_SCRATCH_H
#define FA_SCRATCH_H

#include <stddef.h>
#include <stdint.h>

#include "kernel.h"

/* The tile and weights kernels.  Every part before kc is a multiple of
 * FA_BQ elements long and kc is FA_BK rows long, so every part stays
 * aligned like the base. */
typedef struct {
    size_t qt;      /* d x BQ: packed, scaled Q^T */
    size_t st;      /* BK x BQ: scores, then probabilities */
    size_t mt;      /* BK x BQ: mask terms */
    size_t ot;      /* dv x BQ: output accumulator */
    size_t row_max; /* BQ each: running max, running sum, rescale of the */
    size_t row_sum; /*   block, the block's max; the ALiBi slope, the     */
    size_t alpha;   /*   diagonal and the band (lo, hi) of each lane,     */
    size_t bmax;    /*   relative to the block's first key                */
    size_t slope, pos, lo, hi;
    size_t kc, vc;  /* BK x d, BK x dv: widened key and value blocks
                       (16-bit storage types only) */
    size_t end;
} fa_tile_scratch;

static inline fa_tile_scratch fa_tile_scratch_layout(int64_t d, int64_t dv, int widen)
{
    fa_tile_scratch s;
    size_t o = 0;
    s.qt = o, o += (size_t)d * FA_BQ;
    s.st = o, o += (size_t)FA_BK * FA_BQ;
    s.mt = o, o += (size_t)FA_BK * FA_BQ;
    s.ot = o, o += (size_t)dv * FA_BQ;
    s.row_max = o, o += FA_BQ;
    s.row_sum = o, o += FA_BQ;
    s.alpha = o, o += FA_BQ;
    s.bmax = o, o += FA_BQ;
    s.slope = o, o += FA_BQ;
    s.pos = o, o += FA_BQ;
    s.lo = o, o += FA_BQ;
    s.hi = o, o += FA_BQ;
    s.kc = o, o += widen ? (size_t)FA_BK * (size_t)d : 0;
    s.vc = o, o += widen ? (size_t)FA_BK * (size_t)dv : 0;
    s.end = o;
    return s;
}

/* The few-row kernel: FA_ROWS_MAX rows of each part, d and dv padded to
 * `pad` elements (the kernel's vector length; the size uses the largest
 * one, FA_ALIGN bytes, which bounds every path's layout). */
typedef struct {
    int64_t dpad, dvpad;
    size_t qs;      /* rows x dpad: scaled queries (or raw bfloat16) */
    size_t acc;     /* rows x dvpad: output accumulators */
    size_t sc;      /* rows x BK: scores, then probabilities */
    size_t mt;      /* BK: the mask terms of the row in work */
    size_t row_max; /* rows: running max */
    size_t row_sum; /* rows: running sum */
    size_t end;
} fa_rows_scratch;

static inline fa_rows_scratch fa_rows_scratch_layout(int64_t d, int64_t dv, int64_t pad)
{
    fa_rows_scratch s;
    size_t o = 0;
    s.dpad = (d + pad - 1) / pad * pad;
    s.dvpad = (dv + pad - 1) / pad * pad;
    s.qs = o, o += (size_t)FA_ROWS_MAX * (size_t)s.dpad;
    s.acc = o, o += (size_t)FA_ROWS_MAX * (size_t)s.dvpad;
    s.sc = o, o += (size_t)FA_ROWS_MAX * FA_BK;
    s.mt = o, o += FA_BK;
    s.row_max = o, o += FA_ROWS_MAX;
    s.row_sum = o, o += FA_ROWS_MAX;
    s.end = o;
    return s;
}

/* The matrix-unit kernel (matrix.h), in float32 elements; its 16-bit
 * operand buffers count two elements per float.  The depth of Q.K^T is
 * nseg x dpad (nseg = 3 for the bf16x3 split, else 1) and that of P.V
 * nseg x FA_MX_KP; d and dv are padded to 32 (one tile row of bfloat16
 * pairs, and two 16-column accumulator tiles).  Every part is a multiple of
 * 16 floats, so every part stays aligned like the base.  K and V are not
 * here: the driver packs them once per call (fa_matrix_panel). */
#define FA_MX_KP 256 /* keys per panel: reused by every row block of a tile */
typedef struct {
    int64_t dpad, dvpad;
    size_t qa;      /* BQ x nseg*dpad 16-bit: packed Q rows (A operand) */
    size_t pa;      /* BQ x nseg*KP 16-bit: rounded probabilities (A operand) */
    size_t st;      /* BQ x KP: scores of the panel */
    size_t mt;      /* KP: mask terms of the row in work */
    size_t pv;      /* BQ x dvpad: P.V of the panel */
    size_t ot;      /* BQ x dvpad: output accumulator */
    size_t row_max, row_sum, alpha; /* BQ each */
    size_t lse_sum; /* BQ: the row sums of the unrounded probabilities */
    size_t end;
} fa_matrix_scratch;

static inline fa_matrix_scratch fa_matrix_scratch_layout(int64_t d, int64_t dv, int nseg)
{
    fa_matrix_scratch s;
    size_t o = 0;
    s.dpad = (d + 31) / 32 * 32;
    s.dvpad = (dv + 31) / 32 * 32;
    const size_t depth = (size_t)nseg * (size_t)s.dpad;
    s.qa = o, o += FA_BQ * depth / 2;
    s.pa = o, o += FA_BQ * (size_t)nseg * FA_MX_KP / 2;
    s.st = o, o += (size_t)FA_BQ * FA_MX_KP;
    s.mt = o, o += FA_MX_KP;
    s.pv = o, o += FA_BQ * (size_t)s.dvpad;
    s.ot = o, o += FA_BQ * (size_t)s.dvpad;
    s.row_max = o, o += FA_BQ;
    s.row_sum = o, o += FA_BQ;
    s.alpha = o, o += FA_BQ;
    s.lse_sum = o, o += FA_BQ;
    s.end = o;
    return s;
}

/* One packed key panel of the matrix kernel, in 16-bit elements: K as the
 * B operand of Q.K^T (kp: KP keys x nseg*dpad), then V as the B operand of
 * P.V (vp: nseg*KP keys x dvpad), both pair-interleaved in tiles (matrix.h).
 * Every kv head has ceil(keys / KP) panels, the last one shorter in use. */
typedef struct {
    size_t kp, vp, elems;
} fa_matrix_panel;

static inline fa_matrix_panel fa_matrix_panel_layout(int64_t d, int64_t dv, int nseg)
{
    fa_matrix_panel s;
    const size_t dpad = (size_t)(d + 31) / 32 * 32, dvpad = (size_t)(dv + 31) / 32 * 32;
    s.kp = 0;
    s.vp = FA_MX_KP * (size_t)nseg * dpad;
    s.elems = s.vp + (size_t)nseg * FA_MX_KP * dvpad;
    return s;
}

/* Bytes of scratch per thread for head dims d, dv and compute elements of
 * elem bytes (widen: 16-bit storage), rounded up to FA_ALIGN. */
static inline size_t fa_scratch_size(int64_t d, int64_t dv, size_t elem, int widen)
{
    const size_t tile = fa_tile_scratch_layout(d, dv, widen).end;
    const size_t rows = fa_rows_scratch_layout(d, dv, (int64_t)(FA_ALIGN / elem)).end;
    const size_t bytes = (tile > rows ? tile : rows) * elem;
    return (bytes + FA_ALIGN - 1) / FA_ALIGN * FA_ALIGN;
}

#endif /* FA_SCRATCH_H */
