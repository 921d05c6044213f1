/*
 * linear.h: y = act(x W + b) + residual in float32 over a packed W, and the
 * residual add + LayerNorm, compiled once per ISA (float32 only) by
 * kernel_body.h.
 *
 * Why a GEMM of our own next to the BLAS: a row's result must not depend
 * on the other rows of the call.  Optimized BLAS libraries choose their
 * kernels, and within a kernel the arithmetic of an edge, by the shape of
 * the call and by where a row falls in it (OpenBLAS's Haswell sgemm, say,
 * rounds rows 6-11 of every 12 differently from rows 0-5), so a sentence's
 * embedding would change with its neighbours in a packed batch.  Here every
 * output element is one chain of multiply-adds over k = 0 .. K-1, in that
 * order, started from zero, with the bias added last: the same sequence of
 * operations whatever the row's position, the number of rows, the row
 * blocking or the thread, so results are bitwise invariant by construction.
 *
 * Layout (FA_LIN_NR = 16 columns a panel on every ISA, so a packed weight
 * serves every path): panel p holds columns [16p, 16p + 16) of W as K rows
 * of 16 floats, panels one after another; the last panel is zero-padded.
 *
 * Blocking, as in the classic GEMM design: K in blocks of FA_LIN_KC, rows
 * in blocks of FA_LIN_MC.  A block of x (MC x KC, 128 KiB) is packed so
 * that the FA_LIN_MR rows of a register block lie side by side for each k
 * (zero rows pad the last group; their results are never stored) and stays
 * in L2; a panel's KC x 16 slice of W (16 KiB) stays in L1 while the
 * register blocks of the row block pass over it.  Each K block's products
 * are summed from zero in registers and then added to y, so an element is
 * ((block 0 + block 1) + ...) + bias: the order is fixed by K alone, and
 * the blocked sum is also more accurate than one chain over all of K.
 */

#if !FA_IS_DOUBLE && FA_S_KIND == 0 && !FA_KV_I8

#ifndef FA_LIN_MR
#define FA_LIN_MR 4 /* rows of a register block */
#endif
#define FA_LIN_NV (FA_LIN_NR / VL) /* vectors across a panel */
/* A broadcast straight from memory (vbroadcastss m32): the generic VSPLAT
 * adds the scalar to a zero vector first, one more instruction per row and
 * k in the inner loop. */
#if defined(__AVX512F__) && FA_VBYTES == 64
#define FA_LIN_SPLAT(p) ((VT)_mm512_set1_ps(*(p)))
#elif defined(__AVX__) && FA_VBYTES == 32
#define FA_LIN_SPLAT(p) ((VT)_mm256_set1_ps(*(p)))
#else
#define FA_LIN_SPLAT(p) VSPLAT(*(p))
#endif

/* The epilogue's operands for one register block. */
typedef struct {
    const float *bias, *residual;
    int64_t ldr;
    int act;
} FA_FN(fa_lin_ep_);

/* A's epilogue operands for the block whose first element is row r (of
 * the call), column c0 of y. */
FA_INLINE FA_FN(fa_lin_ep_) FA_FN(fa_lin_ep_at_)(const fa_linear_args *A, int64_t r, int64_t c0)
{
    const FA_FN(fa_lin_ep_) ep = {A->bias ? A->bias + c0 : NULL,
                                  A->residual ? A->residual + r * A->ldr + c0 : NULL, A->ldr,
                                  A->act};
    return ep;
}

/* ep (NULL: no epilogue yet) moved c columns right, written to *e. */
FA_INLINE const FA_FN(fa_lin_ep_) *FA_FN(fa_lin_ep_shift_)(const FA_FN(fa_lin_ep_) *ep, int64_t c,
                                                        FA_FN(fa_lin_ep_) *e)
{
    if (!ep) return NULL;
    *e = *ep;
    if (e->bias) e->bias += c;
    if (e->residual) e->residual += c;
    return e;
}

/* A register block's sums to y: the rows < rows and columns < cols of y
 * receive them (first: y = sum, else y += sum); after the last K block
 * (ep != NULL) the epilogue (epilogue.h) runs on the finished sums, with
 * ep's bias, activation and residual (its pointers at the block's first
 * column, the residual's rows ldr apart). */
FA_INLINE void FA_FN(fa_linear_store_)(VT acc[FA_LIN_MR][FA_LIN_NV], float *y, int64_t ldy,
                                        int rows, int cols, int first,
                                        const FA_FN(fa_lin_ep_) *ep)
{
    for (int i = 0; i < rows; i++) {
        float *yi = y + i * ldy;
        for (int v = 0; v < FA_LIN_NV; v++) {
            const int n = cols - v * VL < VL ? cols - v * VL : VL; /* the last panel's tail */
            if (n <= 0) break;
            VT r = acc[i][v];
            if (!first)
                r += n == VL ? FA_FN(fa_loadu_)(yi + v * VL)
                             : FA_FN(fa_load_tail_)(yi + v * VL, n, 0);
            if (ep)
                FA_FN(fa_epilogue_)(r, n, ep->bias ? ep->bias + v * VL : NULL, ep->act,
                                    ep->residual ? ep->residual + i * ep->ldr + v * VL : NULL,
                                    yi + v * VL);
            else if (n == VL)
                FA_FN(fa_storeu_)(yi + v * VL, r);
            else
                FA_FN(fa_store_tail_)(yi + v * VL, n, r);
        }
    }
}

/* One register block: FA_LIN_MR packed rows (a[kk * MR + i]) times the
 * kc x 16 float32 slice w of a panel, stored by fa_linear_store_. */
FA_INLINE void FA_FN(fa_linear_block_)(const float *a, const float *w, int64_t kc, float *y,
                                        int64_t ldy, int rows, int cols, int first,
                                        const FA_FN(fa_lin_ep_) *ep)
{
    VT acc[FA_LIN_MR][FA_LIN_NV];
    for (int i = 0; i < FA_LIN_MR; i++)
        for (int v = 0; v < FA_LIN_NV; v++) acc[i][v] = VSPLAT(0);
    for (int64_t kk = 0; kk < kc; kk++) {
        VT b[FA_LIN_NV];
        for (int v = 0; v < FA_LIN_NV; v++) b[v] = FA_FN(fa_loadu_)(w + kk * FA_LIN_NR + v * VL);
        for (int i = 0; i < FA_LIN_MR; i++) {
            const VT s = FA_LIN_SPLAT(a + kk * FA_LIN_MR + i);
            for (int v = 0; v < FA_LIN_NV; v++) acc[i][v] += s * b[v];
        }
    }
    FA_FN(fa_linear_store_)(acc, y, ldy, rows, cols, first, ep);
}

#if FA_VBYTES == 64 /* FA_LIN_NV == 1 */
/* Two panels at once (w and w + w_sp) for a path whose panel is one vector
 * (AVX-512): 2 x FA_LIN_MR independent sums per k hide the FMA latency
 * with one broadcast of x for both panels, where one panel needs a
 * broadcast per FMA and is bound by the loads.  Each element gets exactly
 * fa_linear_block_'s operations.  cols counts both panels' columns. */
FA_INLINE void FA_FN(fa_linear_block2_)(const float *a, const float *w, int64_t w_sp,
                                         int64_t kc, float *y, int64_t ldy, int cols, int first,
                                         const FA_FN(fa_lin_ep_) *ep)
{
    VT r0[FA_LIN_MR], r1[FA_LIN_MR]; /* no address taken: kept in registers */
    for (int i = 0; i < FA_LIN_MR; i++) r0[i] = r1[i] = VSPLAT(0);
    for (int64_t kk = 0; kk < kc; kk++) {
        const VT b0 = FA_FN(fa_loadu_)(w + kk * FA_LIN_NR);
        const VT b1 = FA_FN(fa_loadu_)(w + w_sp + kk * FA_LIN_NR);
        for (int i = 0; i < FA_LIN_MR; i++) {
            const VT s = FA_LIN_SPLAT(a + kk * FA_LIN_MR + i);
            r0[i] += s * b0;
            r1[i] += s * b1;
        }
    }
    VT acc[FA_LIN_MR][FA_LIN_NV];
    for (int i = 0; i < FA_LIN_MR; i++) acc[i][0] = r0[i];
    FA_FN(fa_linear_store_)(acc, y, ldy, FA_LIN_MR, cols < FA_LIN_NR ? cols : FA_LIN_NR, first,
                            ep);
    for (int i = 0; i < FA_LIN_MR; i++) acc[i][0] = r1[i];
    FA_FN(fa_lin_ep_) e;
    FA_FN(fa_linear_store_)(acc, y + FA_LIN_NR, ldy, FA_LIN_MR, cols - FA_LIN_NR, first,
                            FA_FN(fa_lin_ep_shift_)(ep, FA_LIN_NR, &e));
}
#endif

/* Pack rows [0, m) x columns [0, kc) of x into groups of FA_LIN_MR rows,
 * interleaved by k, with kp >= kc k rows (those past kc are zero: the pad
 * of an odd K block of bfloat16 pairs); the last group is padded with zero
 * rows.  bf16: each value is rounded to bfloat16 (to nearest even; NaN
 * stays NaN), the one rounding of x in the bfloat16 products. */
static void FA_FN(fa_linear_pack_)(const float *x, int64_t ldx, int64_t m, int64_t kc,
                                   int64_t kp, int bf16, float *dst)
{
    for (int64_t g = 0; g < m; g += FA_LIN_MR) {
        float *d = dst + g * kp;
        for (int i = 0; i < FA_LIN_MR; i++) {
            int64_t kk = 0;
            if (g + i < m) {
                const float *src = x + (g + i) * ldx;
                if (bf16)
                    for (; kk < kc; kk++)
                        d[kk * FA_LIN_MR + i] = fa_bf16_to_f32(fa_f32_to_bf16(src[kk]));
                else
                    for (; kk < kc; kk++) d[kk * FA_LIN_MR + i] = src[kk];
            }
            for (; kk < kp; kk++) d[kk * FA_LIN_MR + i] = 0.0f;
        }
    }
}

/* The float32 value of one half of each 32-bit word of a bfloat16 pair:
 * the low half (even k) shifted up, or the high half (odd k) masked. */
FA_INLINE VT FA_FN(fa_bf16_half_)(VU raw, int odd)
{
    return (VT)(odd ? raw & 0xffff0000u : raw << 16);
}

/* The bfloat16 twin of fa_linear_block_: w is a panel's slice of kp / 2
 * pairs, each 16 32-bit words (word c holds column c's weights for k = 2j
 * in its low half and 2j + 1 in its high half, the VDPBF16PS layout).  A
 * bfloat16 is the top half of a float32, so the widening is a shift (even
 * k) or a mask (odd k), and the sum runs over k in order, as in float32. */
FA_INLINE void FA_FN(fa_linear_block_bf16_)(const float *a, const uint16_t *w, int64_t kp,
                                             float *y, int64_t ldy, int rows, int cols,
                                             int first, const FA_FN(fa_lin_ep_) *ep)
{
    VT acc[FA_LIN_MR][FA_LIN_NV];
    for (int i = 0; i < FA_LIN_MR; i++)
        for (int v = 0; v < FA_LIN_NV; v++) acc[i][v] = VSPLAT(0);
    for (int64_t kk = 0; kk < kp; kk++) {
        /* k = kk: even k in the words' low halves, odd k in the high */
        const uint16_t *wk = w + (kk & ~(int64_t)1) * FA_LIN_NR;
        VT b[FA_LIN_NV];
        for (int v = 0; v < FA_LIN_NV; v++) {
            VU raw;
            __builtin_memcpy(&raw, wk + 2 * v * VL, sizeof raw);
            b[v] = FA_FN(fa_bf16_half_)(raw, (int)(kk & 1));
        }
        for (int i = 0; i < FA_LIN_MR; i++) {
            const VT s = FA_LIN_SPLAT(a + kk * FA_LIN_MR + i);
            for (int v = 0; v < FA_LIN_NV; v++) acc[i][v] += s * b[v];
        }
    }
    FA_FN(fa_linear_store_)(acc, y, ldy, rows, cols, first, ep);
}

/* Panels a few-row kernel covers at once (the weight streams it reads
 * side by side). */
#define FA_LIN_NP 4

/* One row (a[kk * FA_LIN_MR], a packed row of a group that is not full)
 * times np panels (np <= FA_LIN_NP, a compile-time constant after
 * inlining), w the first panel's slice and w_sp the elements between
 * panels; wtype as fa_linear_args.  Each output element gets exactly the
 * operations of fa_linear_block_ (or its bfloat16 twin), so the row's
 * result is bitwise the same as in a full group; but no work is spent on
 * the group's missing rows, and the np weight streams keep a one-row
 * product (decode) bound by memory, not by arithmetic. */
FA_INLINE void FA_FN(fa_linear_row_)(const int np, const float *a, const void *w, int64_t w_sp,
                                      int bf16, int64_t kc, float *y, int64_t ldy,
                                      int64_t ncols, int first, const FA_FN(fa_lin_ep_) *ep)
{
    VT acc[FA_LIN_NP][FA_LIN_NV];
    for (int p = 0; p < np; p++)
        for (int v = 0; v < FA_LIN_NV; v++) acc[p][v] = VSPLAT(0);
    if (bf16) {
        /* kc is even here (a bfloat16 block is padded to whole pairs):
         * each word is loaded once for its two k */
        const uint16_t *wb = (const uint16_t *)w;
        for (int64_t kk = 0; kk < kc; kk += 2) {
            const VT s0 = FA_LIN_SPLAT(a + kk * FA_LIN_MR);
            const VT s1 = FA_LIN_SPLAT(a + (kk + 1) * FA_LIN_MR);
            for (int p = 0; p < np; p++)
                for (int v = 0; v < FA_LIN_NV; v++) {
                    VU raw;
                    __builtin_memcpy(&raw, wb + p * w_sp + kk * FA_LIN_NR + 2 * v * VL,
                                     sizeof raw);
                    acc[p][v] += s0 * FA_FN(fa_bf16_half_)(raw, 0);
                    acc[p][v] += s1 * FA_FN(fa_bf16_half_)(raw, 1);
                }
        }
    } else {
        const float *wf = (const float *)w;
        for (int64_t kk = 0; kk < kc; kk++) {
            const VT s = FA_LIN_SPLAT(a + kk * FA_LIN_MR);
            for (int p = 0; p < np; p++)
                for (int v = 0; v < FA_LIN_NV; v++)
                    acc[p][v] += s * FA_FN(fa_loadu_)(wf + p * w_sp + kk * FA_LIN_NR + v * VL);
        }
    }
    for (int p = 0; p < np; p++) {
        VT one[FA_LIN_MR][FA_LIN_NV];
        for (int v = 0; v < FA_LIN_NV; v++) one[0][v] = acc[p][v];
        const int64_t c = p * FA_LIN_NR;
        const int cols = (int)(ncols - c < FA_LIN_NR ? ncols - c : FA_LIN_NR);
        FA_FN(fa_lin_ep_) e;
        FA_FN(fa_linear_store_)(one, y + c, ldy, 1, cols, first,
                                FA_FN(fa_lin_ep_shift_)(ep, c, &e));
    }
}

/* The epilogue with no products (k == 0): y = act(bias or 0) + residual. */
static void FA_FN(fa_linear_k0_)(const fa_linear_args *A)
{
    const int64_t c0 = A->p0 * FA_LIN_NR, c1 = A->p1 * FA_LIN_NR < A->n ? A->p1 * FA_LIN_NR : A->n;
    for (int64_t i = 0; i < A->m; i++)
        for (int64_t c = c0; c < c1; c += VL) {
            const int n = c1 - c < VL ? (int)(c1 - c) : VL;
            FA_FN(fa_epilogue_)(VSPLAT(0), n, A->bias ? A->bias + c : NULL, A->act,
                                A->residual ? A->residual + i * A->ldr + c : NULL,
                                A->y + i * A->ldy + c);
        }
}

/* The slice of panel p from k row k0 on (panels of k_pad rows of 16). */
FA_INLINE const void *FA_FN(fa_lin_panel_)(const fa_linear_args *A, int64_t p, int64_t k_pad,
                                          int64_t k0)
{
    const int64_t off = (p * k_pad + k0) * FA_LIN_NR;
    return A->wtype == FA_LIN_BF16 ? (const void *)((const uint16_t *)A->packed + off)
                                   : (const void *)((const float *)A->packed + off);
}

/* A block of finished float32 sums to y: gr <= FA_LIN_MR rows from row r
 * (row i of panel p at f + p * fsp + i * fst), np panels from panel pc on,
 * each times the column scales where scale is not NULL (int8); the store
 * and, after the last K block, the epilogue. */
FA_INLINE void FA_FN(fa_linear_out_)(const fa_linear_args *A, const float *f, int64_t fsp,
                                      int64_t fst, int gr, int64_t r, int64_t pc, int np,
                                      int first, int last, const float *scale)
{
    for (int p = 0; p < np; p++) {
        const int64_t c0 = (pc + p) * FA_LIN_NR;
        const int cols = (int)(A->n - c0 < FA_LIN_NR ? A->n - c0 : FA_LIN_NR);
        VT acc[FA_LIN_MR][FA_LIN_NV];
        for (int i = 0; i < gr; i++)
            for (int v = 0; v < FA_LIN_NV; v++) {
                acc[i][v] = FA_FN(fa_loadu_)(f + p * fsp + i * fst + v * VL);
                if (scale) acc[i][v] = acc[i][v] * FA_FN(fa_loadu_)(scale + c0 + v * VL);
            }
        const FA_FN(fa_lin_ep_) ep = FA_FN(fa_lin_ep_at_)(A, r, c0);
        FA_FN(fa_linear_store_)(acc, A->y + r * A->ldy + c0, A->ldy, gr, cols, first,
                                last ? &ep : NULL);
    }
}

#include "linear_dot.h"
#include "linear_i8.h"

#if FA_LIN_DOT_BF16
/* One row block [r0, r0 + rows) and K block [k0, k0 + kc) of a bfloat16
 * call on the bfloat16 dot product (A->dot: VDPBF16PS or BFDOT): x packed as pairs, every group (full or
 * not) through fa_linear_bf16_dot_, panel by panel. */
static void FA_FN(fa_linear_bf16_dots_)(const fa_linear_args *A, int64_t r0, int64_t rows,
                                        int64_t k0, int64_t kc, int64_t kp, int64_t k_pad,
                                        int first, int last, uint32_t *pairs)
{
    FA_FN(fa_linear_pack_pairs_)(A->x + r0 * A->ldx + k0, A->ldx, rows,
                                 (rows + FA_LIN_MR - 1) / FA_LIN_MR * FA_LIN_MR, kc, kp, pairs);
    for (int64_t pc = A->p0; pc < A->p1; pc += FA_LIN_DOT_NP) {
        const int np = (int)(A->p1 - pc < FA_LIN_DOT_NP ? A->p1 - pc : FA_LIN_DOT_NP);
        const int64_t c0 = pc * FA_LIN_NR;
        const int cols = (int)(A->n - c0 < np * FA_LIN_NR ? A->n - c0 : np * FA_LIN_NR);
        const uint16_t *w = (const uint16_t *)FA_FN(fa_lin_panel_)(A, pc, k_pad, k0);
        for (int64_t g = 0; g < rows; g += FA_LIN_MR) {
            const int gr = (int)(rows - g < FA_LIN_MR ? rows - g : FA_LIN_MR);
#define FA_LIN_BF16_DOT(R_, np_, s_)                                                      \
    do {                                                                                  \
        const FA_FN(fa_lin_ep_) ep = FA_FN(fa_lin_ep_at_)(A, r0 + g + (s_), c0);         \
        FA_FN(fa_linear_bf16_dot_)(R_, np_, pairs + (g + (s_)) * (kp / 2), kp / 2, w,     \
                                   k_pad * FA_LIN_NR, kp, A->y + (r0 + g + (s_)) * A->ldy \
                                   + c0, A->ldy, cols, first, last ? &ep : NULL);         \
    } while (0)
            FA_LIN_DOT_ROWS(gr, np, FA_LIN_BF16_DOT);
#undef FA_LIN_BF16_DOT
        }
    }
}

#endif

#if FA_LIN_TILES
/* The same on the matrix units (A->tiles, linear_tiles.h): kp a multiple
 * of 32 (a tile step; the pairs past kc are zero), FA_LIN_TILE_ROWS rows
 * (the missing ones zero) and two panels a tile GEMM, whose float32 block
 * is then stored FA_LIN_MR rows at a time. */
static void FA_FN(fa_linear_bf16_tiles_)(const fa_linear_args *A, int64_t r0, int64_t rows,
                                         int64_t k0, int64_t kc, int64_t kp, int64_t k_pad,
                                         int first, int last, uint32_t *pairs)
{
    const int64_t mt = (rows + FA_LIN_TILE_ROWS - 1) / FA_LIN_TILE_ROWS * FA_LIN_TILE_ROWS;
    float *c = (float *)(pairs + mt * (kp / 2)); /* FA_LIN_TILE_ROWS x 32 */
    FA_FN(fa_linear_pack_pairs_)(A->x + r0 * A->ldx + k0, A->ldx, rows, mt, kc, kp, pairs);
    for (int64_t pc = A->p0; pc < A->p1; pc += 2) {
        const int np = A->p1 - pc < 2 ? 1 : 2;
        const uint16_t *w = (const uint16_t *)FA_FN(fa_lin_panel_)(A, pc, k_pad, k0);
        for (int64_t g = 0; g < rows; g += FA_LIN_TILE_ROWS) {
            A->tiles->bf16((const uint16_t *)(pairs + g * (kp / 2)), kp, w, k_pad * FA_LIN_NR, kp,
                           np, c, 2 * FA_LIN_NR);
            for (int s = 0; s < FA_LIN_TILE_ROWS && g + s < rows; s += FA_LIN_MR) {
                const int gr = (int)(rows - g - s < FA_LIN_MR ? rows - g - s : FA_LIN_MR);
                const int gt = FA_LIN_TILE_ROWS - s < gr ? FA_LIN_TILE_ROWS - s : gr;
                FA_FN(fa_linear_out_)(A, c + s * 2 * FA_LIN_NR, FA_LIN_NR, 2 * FA_LIN_NR, gt,
                                      r0 + g + s, pc, np, first, last, NULL);
            }
        }
    }
}
#endif

/* y = act(x W + bias) + residual on the panels [p0, p1) of A (kernel.h's
 * fa_linear_args), W packed as above: ceil(n / 16) panels of k x 16
 * float32, or (FA_LIN_BF16) of kp / 2 x 16 bfloat16 pairs (kp: k rounded up
 * to FA_LIN_KALIGN, the pad zero);
 * scratch holds (min(m, FA_LIN_MC) + FA_LIN_TILE_ROWS) * FA_LIN_SCRATCH_ROW floats
 * (enough for the row block rounded up to FA_LIN_MR, times the largest
 * packed row, kernel.h). */
static void FA_FN(fa_linear_)(const fa_linear_args *A, float *scratch)
{
    const int64_t k = A->k, n = A->n, m = A->m, ldx = A->ldx, ldy = A->ldy;
    const int bf16 = A->wtype == FA_LIN_BF16;
    /* k rows of a packed panel */
    const int64_t k_pad = bf16 ? (k + FA_LIN_KALIGN - 1) / FA_LIN_KALIGN * FA_LIN_KALIGN : k;
    if (k == 0) {
        FA_FN(fa_linear_k0_)(A);
        return;
    }
    if (A->wtype == FA_LIN_I8) {
        FA_FN(fa_linear_i8_)(A, scratch);
        return;
    }
    /* bfloat16 pairs on VDPBF16PS pack 2 bytes a value: longer K blocks */
    const int64_t kcb = (FA_LIN_DOT_BF16 || FA_LIN_TILES) && bf16 && (A->dot || A->tiles)
                            ? FA_LIN_KC_PAIRS
                            : FA_LIN_KC;
    for (int64_t k0 = 0; k0 < k; k0 += kcb) {
        const int64_t kc = k - k0 < kcb ? k - k0 : kcb;
        /* the K blocks are even, or whole tile steps */
        const int64_t kp = !bf16 ? kc
                           : A->tiles ? (kc + FA_LIN_KALIGN - 1) / FA_LIN_KALIGN * FA_LIN_KALIGN
                                      : (kc + 1) & ~(int64_t)1;
        const int first = k0 == 0, last = k0 + kc == k;
        for (int64_t r0 = 0; r0 < m; r0 += FA_LIN_MC) {
            const int64_t rows = m - r0 < FA_LIN_MC ? m - r0 : FA_LIN_MC;
#if FA_LIN_TILES
            if (bf16 && A->tiles) {
                FA_FN(fa_linear_bf16_tiles_)(A, r0, rows, k0, kc, kp, k_pad, first, last,
                                             (uint32_t *)scratch);
                continue;
            }
#endif
#if FA_LIN_DOT_BF16
            if (bf16 && A->dot) {
                FA_FN(fa_linear_bf16_dots_)(A, r0, rows, k0, kc, kp, k_pad, first, last,
                                            (uint32_t *)scratch);
                continue;
            }
#endif
            FA_FN(fa_linear_pack_)(A->x + r0 * ldx + k0, ldx, rows, kc, kp, bf16, scratch);
            /* FA_LIN_NP panels at a time: the full groups of FA_LIN_MR rows
             * panel by panel (a panel's slice stays in L1 while they pass),
             * then the rows of a last group that is not full, one at a time
             * over all FA_LIN_NP panels (their slices still in L2) */
            const int64_t full = rows - rows % FA_LIN_MR;
            for (int64_t pc = A->p0; pc < A->p1; pc += FA_LIN_NP) {
                const int np = (int)(A->p1 - pc < FA_LIN_NP ? A->p1 - pc : FA_LIN_NP);
                for (int64_t p = pc; p < pc + np; p++) {
                    const int64_t c0 = p * FA_LIN_NR;
                    const int cols = (int)(n - c0 < FA_LIN_NR ? n - c0 : FA_LIN_NR);
                    const void *w = FA_FN(fa_lin_panel_)(A, p, k_pad, k0);
#if FA_VBYTES == 64 /* FA_LIN_NV == 1 */
                    if (!bf16 && p + 1 < pc + np) { /* this panel and the next */
                        const int cols2 = (int)(n - c0 < 2 * FA_LIN_NR ? n - c0 : 2 * FA_LIN_NR);
                        for (int64_t g = 0; g < full; g += FA_LIN_MR) {
                            const FA_FN(fa_lin_ep_) ep = FA_FN(fa_lin_ep_at_)(A, r0 + g, c0);
                            FA_FN(fa_linear_block2_)(scratch + g * kp, (const float *)w,
                                                     k_pad * FA_LIN_NR, kc,
                                                     A->y + (r0 + g) * ldy + c0, ldy, cols2,
                                                     first, last ? &ep : NULL);
                        }
                        p++;
                        continue;
                    }
#endif
                    for (int64_t g = 0; g < full; g += FA_LIN_MR) {
                        const FA_FN(fa_lin_ep_) ep = FA_FN(fa_lin_ep_at_)(A, r0 + g, c0);
                        float *y = A->y + (r0 + g) * ldy + c0;
                        if (bf16)
                            FA_FN(fa_linear_block_bf16_)(scratch + g * kp,
                                                         (const uint16_t *)w, kp,
                                                         y, ldy, FA_LIN_MR, cols, first,
                                                         last ? &ep : NULL);
                        else
                            FA_FN(fa_linear_block_)(scratch + g * kp,
                                                    (const float *)w, kc, y, ldy,
                                                    FA_LIN_MR, cols, first, last ? &ep : NULL);
                    }
                }
                for (int64_t i = full; i < rows; i++) {
                    const float *a = scratch + full * kp + (i - full);
                    const int64_t c0 = pc * FA_LIN_NR;
                    const FA_FN(fa_lin_ep_) ep = FA_FN(fa_lin_ep_at_)(A, r0 + i, c0);
                    const void *w = FA_FN(fa_lin_panel_)(A, pc, k_pad, k0);
                    const int64_t w_sp = k_pad * FA_LIN_NR, ncols = n - c0;
                    float *y = A->y + (r0 + i) * ldy + c0;
                    const FA_FN(fa_lin_ep_) *e = last ? &ep : NULL;
#define FA_LIN_ROW(np_) \
    FA_FN(fa_linear_row_)(np_, a, w, w_sp, bf16, kp, y, ldy, ncols, first, e)
                    switch (np) { /* np a constant in each call */
                    case FA_LIN_NP: FA_LIN_ROW(FA_LIN_NP); break;
                    case 3: FA_LIN_ROW(3); break;
                    case 2: FA_LIN_ROW(2); break;
                    default: FA_LIN_ROW(1); break;
                    }
#undef FA_LIN_ROW
                }
            }
        }
    }
}

/*
 * LayerNorm of the rows of x + residual (residual may be NULL), in float32
 * statistics: the row is summed into VL lane sums (then across the lanes),
 * its mean taken, and the variance computed from the centred values (two
 * passes over a row that stays in L1: no cancellation of E[x^2] - E[x]^2).
 * y = (v - mean) / sqrt(var + eps) * g + b.  y may be x or residual (each
 * element is read before it is written).  Per row only: a row's result does
 * not depend on the others.
 */
static void FA_FN(fa_layer_norm_)(const float *x, int64_t ldx, const float *residual,
                                  int64_t ldr, int64_t m, int64_t n, const float *g,
                                  const float *b, float eps, float *y, int64_t ldy)
{
    for (int64_t i = 0; i < m; i++) {
        const float *xi = x + i * ldx, *ri = residual ? residual + i * ldr : NULL;
        float *yi = y + i * ldy;
        VT sum = VSPLAT(0);
        for (int64_t c = 0; c < n; c += VL) {
            const int t = n - c < VL ? (int)(n - c) : VL;
            VT v = t == VL ? FA_FN(fa_loadu_)(xi + c) : FA_FN(fa_load_tail_)(xi + c, t, 0);
            if (ri) v += t == VL ? FA_FN(fa_loadu_)(ri + c) : FA_FN(fa_load_tail_)(ri + c, t, 0);
            if (t == VL) FA_FN(fa_storeu_)(yi + c, v);
            else FA_FN(fa_store_tail_)(yi + c, t, v);
            sum += v;
        }
        const float mean_s = FA_FN(fa_hsum_)(sum) / (float)n;
        const VT mean = VSPLAT(mean_s);
        VT sq = VSPLAT(0);
        for (int64_t c = 0; c < n; c += VL) {
            const int t = n - c < VL ? (int)(n - c) : VL;
            /* a tail's missing lanes are filled with the mean: they add 0 */
            const VT d = (t == VL ? FA_FN(fa_loadu_)(yi + c)
                                  : FA_FN(fa_load_tail_)(yi + c, t, mean_s)) - mean;
            sq += d * d;
        }
        const VT sd = VSPLAT(__builtin_sqrtf(FA_FN(fa_hsum_)(sq) / (float)n + eps));
        for (int64_t c = 0; c < n; c += VL) {
            const int t = n - c < VL ? (int)(n - c) : VL;
            if (t == VL) {
                const VT d = FA_FN(fa_loadu_)(yi + c) - mean;
                FA_FN(fa_storeu_)(yi + c, d / sd * FA_FN(fa_loadu_)(g + c) + FA_FN(fa_loadu_)(b + c));
            } else {
                const VT d = FA_FN(fa_load_tail_)(yi + c, t, 0) - mean;
                FA_FN(fa_store_tail_)(yi + c, t,
                                      d / sd * FA_FN(fa_load_tail_)(g + c, t, 0)
                                          + FA_FN(fa_load_tail_)(b + c, t, 0));
            }
        }
    }
}

#undef FA_LIN_NV
#undef FA_LIN_SPLAT

#endif
