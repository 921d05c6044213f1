/*
 * test_linear.c: drives the linear layer of the C core (fa_linear_f32) on
 * every ISA path this CPU supports, with weights packed here in the three
 * layouts of kernels/linear.h and linear_i8.h, against float64 references
 * under the error models of docs/numerics.md; see tools/check_c_core.sh.
 *
 * Each path runs whatever its registry rows give it on this CPU (e.g. the
 * avx2 path's int8 on AVX-VNNI, the neon path's int8 on SDOT and bfloat16
 * on BFDOT), so a run under qemu-aarch64 -cpu max and one under -cpu
 * cortex-a72 cover both sides of the neon rows.  Checked:
 *   - float32: against the float64 product, within a blocked float32 sum's
 *     bound;
 *   - bfloat16: against the float64 product of the bfloat16-rounded
 *     operands, within twice that bound (BFDOT rounds to odd: up to one ulp
 *     an addition), and against the unrounded operands within 2u sum |xw|;
 *   - int8: against the float64 value of the model's own steps (x quantized
 *     here by the same rule, exact integer block sums, then the scales),
 *     within the float32 share alone;
 *   - a row alone gives bitwise the same as in the batch, and two threads
 *     the same as one;
 *   - int8: the dot-product block (where the path has one) and the path's
 *     other int8 block give bitwise the same result (exact block sums, the
 *     same float steps);
 *   - the dot products' peak probe runs where a path uses them.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../dispatch.h"

#if defined(__x86_64__)
extern const fa_kernels fa_kernels_avx2, fa_kernels_avx512;
#elif defined(__aarch64__)
extern const fa_kernels fa_kernels_neon;
#endif

static double frand(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return ((*s >> 8) & 0xFFFF) / 32768.0 - 1.0;
}

static uint16_t to_bf16(float f) /* to nearest even (the inputs are finite) */
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static float from_bf16(uint16_t h)
{
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void *zalloc(size_t bytes)
{
    void *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
    memset(p, 0, (bytes + 63) / 64 * 64);
    return p;
}

/* One problem: x (m x k, rows ldx apart), W (n x k, row c is output
 * column c; float32, or its bfloat16 rounding, or q * w_scale), the bias,
 * and W packed for the kernels. */
typedef struct {
    int m, k, n, ldx, wtype;
    float *x, *w, *bias, *w_scale;
    int8_t *q;
    void *packed;
} problem;

static int64_t k_pad_of(int k, int wtype)
{
    return wtype == FA_LIN_F32 ? k : (k + FA_LIN_KALIGN - 1) / FA_LIN_KALIGN * FA_LIN_KALIGN;
}

/* The element of column c (< n), k row kk of the packed panels: float32 k
 * rows of 16; bfloat16 pairs (word c of pair j holds k = 2j low, 2j + 1
 * high); int8 quads (16 columns x 4 consecutive k). */
static int64_t packed_index(const problem *P, int c, int kk)
{
    const int64_t base = (c / FA_LIN_NR) * k_pad_of(P->k, P->wtype) * FA_LIN_NR;
    const int cc = c % FA_LIN_NR;
    switch (P->wtype) {
    case FA_LIN_BF16: return base + (kk & ~1) * FA_LIN_NR + 2 * cc + (kk & 1);
    case FA_LIN_I8: return base + (kk & ~3) * FA_LIN_NR + 4 * cc + (kk & 3);
    default: return base + (int64_t)kk * FA_LIN_NR + cc;
    }
}

static problem make_problem(int m, int k, int n, int wtype)
{
    problem P = {m, k, n, k + 3, wtype, NULL, NULL, NULL, NULL, NULL, NULL};
    unsigned s = 777u + 31u * m + 17u * k + n + 1000u * wtype;
    const int64_t panels = (n + FA_LIN_NR - 1) / FA_LIN_NR, kp = k_pad_of(k, wtype);
    const size_t esize = wtype == FA_LIN_F32 ? 4 : wtype == FA_LIN_BF16 ? 2 : 1;
    P.x = zalloc(sizeof(float) * ((size_t)m * P.ldx + 1));
    P.w = zalloc(sizeof(float) * ((size_t)n * k + 1));
    P.bias = zalloc(sizeof(float) * n);
    P.w_scale = zalloc(sizeof(float) * panels * FA_LIN_NR);
    P.q = zalloc((size_t)n * k + 1);
    P.packed = zalloc(esize * panels * kp * FA_LIN_NR + 1);
    for (int i = 0; i < m; i++)
        for (int kk = 0; kk < k; kk++) P.x[i * P.ldx + kk] = (float)frand(&s);
    for (int c = 0; c < n; c++) P.bias[c] = (float)frand(&s);
    for (int c = 0; c < n; c++) {
        if (wtype == FA_LIN_I8) P.w_scale[c] = (float)((1.5 + frand(&s)) / (127 * sqrt(k)));
        for (int kk = 0; kk < k; kk++) {
            const int64_t e = packed_index(&P, c, kk);
            const float v = (float)(frand(&s) / sqrt(k));
            if (wtype == FA_LIN_F32) {
                P.w[c * k + kk] = v;
                ((float *)P.packed)[e] = v;
            } else if (wtype == FA_LIN_BF16) {
                ((uint16_t *)P.packed)[e] = to_bf16(v);
                P.w[c * k + kk] = from_bf16(to_bf16(v));
            } else {
                const int8_t q = (int8_t)lrint(127 * frand(&s));
                P.q[c * k + kk] = q;
                ((int8_t *)P.packed)[e] = q;
                P.w[c * k + kk] = q * P.w_scale[c];
            }
        }
    }
    return P;
}

static void free_problem(problem *P)
{
    free(P->x); free(P->w); free(P->bias); free(P->w_scale); free(P->q); free(P->packed);
}

/* x's row i quantized as linear_i8.h's fa_quant_block_ does: per block of
 * FA_LIN_QB, scale max|x| / 127, xq = rint(x * (127 / max|x|)). */
static void quantize_row(const float *x, int k, int8_t *xq, float *sx)
{
    for (int b = 0; b * FA_LIN_QB < k; b++) {
        const int k0 = b * FA_LIN_QB, k1 = k0 + FA_LIN_QB < k ? k0 + FA_LIN_QB : k;
        float amax = 0;
        for (int kk = k0; kk < k1; kk++) amax = fabsf(x[kk]) > amax ? fabsf(x[kk]) : amax;
        const float inv = amax >= 0x1p-119f ? 127.0f / amax : 0.0f;
        sx[b] = amax >= 0x1p-119f ? amax / 127.0f : 0.0f;
        for (int kk = k0; kk < k1; kk++) {
            float v = rintf(x[kk] * inv);
            xq[kk] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
        }
    }
}

/* The reference of element (i, c) and its error bound. */
static void reference(const problem *P, int i, int c, double *ref, double *bound)
{
    const int k = P->k;
    const float *x = P->x + (int64_t)i * P->ldx, *w = P->w + (int64_t)c * k;
    const double eps = 0x1p-24;
    if (P->wtype == FA_LIN_I8) {
        /* the model's steps in float64: exact block sums, then the scales;
         * the kernels' float32 steps cost at most an ulp each of the
         * running sum (nb blocks, the column scale, the bias) */
        int8_t *xq = malloc((size_t)k + 1);
        float *sx = malloc(sizeof(float) * (k / FA_LIN_QB + 1));
        quantize_row(x, k, xq, sx);
        double sum = 0, mag = 0;
        for (int b = 0; b * FA_LIN_QB < k; b++) {
            int32_t acc = 0;
            for (int kk = b * FA_LIN_QB; kk < k && kk < (b + 1) * FA_LIN_QB; kk++)
                acc += xq[kk] * P->q[(int64_t)c * k + kk];
            sum += (double)acc * sx[b];
            mag += fabs((double)acc * sx[b]);
        }
        const int nb = (k + FA_LIN_QB - 1) / FA_LIN_QB;
        *ref = sum * P->w_scale[c] + P->bias[c];
        *bound = 2 * (nb + 3) * eps * (mag * P->w_scale[c] + fabs(P->bias[c]));
        free(xq);
        free(sx);
        return;
    }
    /* float32: each value once; bfloat16: x rounded once, W already */
    double sum = 0, mag = 0;
    for (int kk = 0; kk < k; kk++) {
        const double xv = P->wtype == FA_LIN_BF16 ? from_bf16(to_bf16(x[kk])) : x[kk];
        sum += xv * w[kk];
        mag += fabs(xv * w[kk]);
    }
    /* a blocked float32 sum: a chain over a K block (FA_LIN_KC, or
     * FA_LIN_KC_PAIRS for the bfloat16 dot products), then one add a block
     * and the bias; bfloat16 twice that (BFDOT rounds to odd: within one
     * ulp, not half) */
    const int kc = P->wtype == FA_LIN_BF16 ? FA_LIN_KC_PAIRS : FA_LIN_KC;
    const int chain = (k < kc ? k : kc) + k / FA_LIN_KC + 3;
    *ref = sum + P->bias[c];
    *bound = (P->wtype == FA_LIN_BF16 ? 2 : 1) * chain * eps * (mag + fabs(P->bias[c])) + 1e-30;
}

/* The unrounded operands against bfloat16: 2u sum |x w| (u = 2^-8) on top. */
static double bf16_rounding_bound(const problem *P, int i, int c)
{
    double mag = 0;
    for (int kk = 0; kk < P->k; kk++)
        mag += fabs((double)P->x[(int64_t)i * P->ldx + kk] * P->w[(int64_t)c * P->k + kk]);
    return 2 * 0x1p-8 * mag;
}

static int call(const problem *P, const float *x, int m, float *y, int threads)
{
    return fa_linear_f32(x, m, P->k, P->ldx, P->packed, P->wtype,
                         P->wtype == FA_LIN_I8 ? P->w_scale : NULL, P->n, P->bias, NULL, 0,
                         FA_ACT_NONE, y, P->n, threads);
}

/* The current path's own table (the one fa_linear_f32 calls), or NULL
 * where this test does not know it. */
static const fa_kernels *path_table(void)
{
    const fa_isa isa = fa_get_isa();
#if defined(__x86_64__)
    if (isa == FA_ISA_AVX2) return &fa_kernels_avx2;
    if (isa == FA_ISA_AVX512) return &fa_kernels_avx512;
#elif defined(__aarch64__)
    if (isa == FA_ISA_NEON) return &fa_kernels_neon;
#endif
    (void)isa;
    return NULL;
}

/* int8 on the path's table directly, with the dot-product block or
 * without: bitwise the same. */
static int dot_matches_other_block(const problem *P, const float *y_dot)
{
    const fa_kernels *kt = path_table();
    if (!kt) return 1;
    const int64_t panels = (P->n + FA_LIN_NR - 1) / FA_LIN_NR;
    float *y = zalloc(sizeof(float) * P->m * P->n);
    const int64_t rows = P->m < FA_LIN_MC ? P->m : FA_LIN_MC;
    float *scratch = zalloc(sizeof(float) * (rows + 12) * FA_LIN_SCRATCH_ROW);
    const fa_linear_args a = {.x = P->x, .m = P->m, .k = P->k, .ldx = P->ldx, .packed = P->packed,
                              .wtype = P->wtype, .w_scale = P->w_scale, .dot = 0, .n = P->n,
                              .p0 = 0, .p1 = panels, .bias = P->bias, .y = y, .ldy = P->n,
                              .act = FA_ACT_NONE};
    kt->linear_f32(&a, scratch);
    const int same = memcmp(y, y_dot, sizeof(float) * P->m * P->n) == 0;
    free(y);
    free(scratch);
    return same;
}

/* One problem on the current path: returns the failures; worst[0]
 * receives the largest error / bound against the reference, worst[1]
 * (bfloat16) against the unrounded x. */
static int run_problem(const problem *P, double worst[2])
{
    const int m = P->m, n = P->n;
    float *y = zalloc(sizeof(float) * m * n), *y1 = zalloc(sizeof(float) * n);
    float *y2 = zalloc(sizeof(float) * m * n);
    int bad = 0;
    if (call(P, P->x, m, y, 1) != 0) return 1;
    for (int i = 0; i < m; i++)
        for (int c = 0; c < n; c++) {
            double ref, bound;
            reference(P, i, c, &ref, &bound);
            double err = fabs((double)y[i * n + c] - ref);
            const double r = err / bound;
            double r2 = 0;
            if (P->wtype == FA_LIN_BF16) {
                /* and against the unrounded x (W is already its bfloat16
                 * rounding: that one is the pack's, not the kernel's) */
                double ref_x = P->bias[c];
                for (int kk = 0; kk < P->k; kk++)
                    ref_x += (double)P->x[i * P->ldx + kk] * P->w[(int64_t)c * P->k + kk];
                const double e2 = fabs((double)y[i * n + c] - ref_x);
                const double b2 = bound + bf16_rounding_bound(P, i, c);
                r2 = e2 / b2;
            }
            if (!(r <= 1) || !(r2 <= 1)) { /* NaN fails too */
                if (bad < 3)
                    printf("  FAIL m=%d k=%d n=%d (%d, %d): got %.9g ref %.9g bound %.3g\n", m,
                           P->k, n, i, c, y[i * n + c], ref, bound);
                bad++;
            }
            if (!(r <= worst[0])) worst[0] = r;
            if (!(r2 <= worst[1])) worst[1] = r2;
        }
    /* each row alone: bitwise the row of the batch */
    for (int i = 0; i < m; i++) {
        if (call(P, P->x + i * P->ldx, 1, y1, 1) != 0 || memcmp(y1, y + i * n, sizeof(float) * n)) {
            printf("  FAIL m=%d k=%d n=%d: row %d alone differs\n", m, P->k, n, i);
            bad++;
            break;
        }
    }
    if (call(P, P->x, m, y2, 2) != 0 || memcmp(y2, y, sizeof(float) * m * n)) {
        printf("  FAIL m=%d k=%d n=%d: two threads differ from one\n", m, P->k, n);
        bad++;
    }
    if (P->wtype == FA_LIN_I8 && strcmp(fa_linear_kernel(FA_LIN_I8), fa_isa_name(fa_get_isa())) != 0
        && !dot_matches_other_block(P, y)) {
        printf("  FAIL m=%d k=%d n=%d: int8 on %s differs from the path's other block\n", m, P->k,
               n, fa_linear_kernel(FA_LIN_I8));
        bad++;
    }
    free(y); free(y1); free(y2);
    return bad;
}

int main(void)
{
    /* m: one row, groups that are not full, several groups; k: below and
     * past the K blocks (256; 512 pairs; 1024 int8), not multiples of 32
     * or 4; n: panel tails */
    static const int shapes[][3] = {{1, 37, 7},    {5, 100, 33}, {13, 300, 50}, {40, 64, 16},
                                    {40, 1100, 20}, {13, 1, 3},   {5, 530, 17}};
    static const char *const wname[] = {"float32", "bfloat16", "int8"};
    int bad = 0;
    for (int isa = 0; isa < fa_isa_count(); isa++) {
        if (!fa_isa_supported((fa_isa)isa)) continue;
        fa_set_isa((fa_isa)isa);
        for (int wtype = 0; wtype < 3; wtype++) {
            double worst[2] = {0, 0};
            int fails = 0;
            for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
                problem P = make_problem(shapes[s][0], shapes[s][1], shapes[s][2], wtype);
                fails += run_problem(&P, worst);
                free_problem(&P);
            }
            /* the dot product's peak probe runs where the path uses one */
            const char *row = fa_linear_kernel(wtype);
            const int dot = wtype != FA_LIN_F32 && strcmp(row, fa_isa_name((fa_isa)isa)) != 0
                            && strcmp(row, "avx512") != 0;
            const double probe = dot ? fa_dot_probe(wtype, 64) : 0;
            if (probe == -1 || probe != probe) {
                printf("  FAIL the peak probe of %s returned %g\n", row, probe);
                fails++;
            }
            printf("%-8s %-9s on %-13s max err/bound %.3f", fa_isa_name((fa_isa)isa), wname[wtype],
                   fa_linear_kernel(wtype), worst[0]);
            if (wtype == FA_LIN_BF16) printf(" (x unrounded: %.3f)", worst[1]);
            printf(", rows and threads bitwise: %s\n", fails ? "FAIL" : "ok");
            bad += fails;
        }
    }
    printf(bad ? "%d FAILED\n" : "all ok\n", bad);
    return bad != 0;
}
