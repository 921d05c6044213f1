/*
 * test_amx.c: tests of the AMX tile emulation, the gate, and the tile GEMM
 * and packed-B index map of the matrix kernel (tile_gemm.h, the code
 * matrix.h runs), on the emulation and on the real tiles (run by
 * tools/check_amx.sh).  Exit status 0 when every check passed.
 *
 * The real-instruction tests (GEMM and single TDPBF16PS against the
 * emulation, the throughput probe) run only where fa_amx_available() says
 * so; elsewhere the program prints why they did not run.
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "amx_emu.h"
#include "amx_gate.h"
#include "amx_gemm.h"
#include "amx_tileops.h"

static int failures = 0, checks = 0;

#define CHECK(cond, ...)                                              \
    do {                                                              \
        checks++;                                                     \
        if (!(cond) && ++failures <= 30) {                            \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);      \
            fprintf(stderr, __VA_ARGS__);                             \
            fputc('\n', stderr);                                      \
        }                                                             \
    } while (0)

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* float -> bfloat16, round to nearest even (test data only, no NaN) */
static uint16_t to_bf16(float f)
{
    const uint32_t u = bits(f);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double uniform(void) /* [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) * 0x1p-52 - 1.0;
}

/* ---- the arithmetic primitive ------------------------------------------ */

static void test_fma_ftz(void)
{
    const float tiny_normal = 0x1p-126f, sub = 0x1p-130f;
    /* normal results: plain fused multiply-add */
    CHECK(fa_amx_fma_ftz(3.0f, 5.0f, 1.0f) == 16.0f, "3*5+1");
    CHECK(fa_amx_fma_ftz(1.0f + 0x1p-7f, 1.0f + 0x1p-7f, -1.0f) == 0x1p-6f + 0x1p-14f,
          "the product is not rounded before the add");
    /* DAZ: subnormal operands are zero, keeping their sign */
    CHECK(fa_amx_fma_ftz(sub, 0x1p100f, 0.0f) == 0.0f, "subnormal a is zero");
    CHECK(fa_amx_fma_ftz(1.0f, 1.0f, sub) == 1.0f, "subnormal c is zero");
    CHECK(bits(fa_amx_fma_ftz(1.0f, 0.0f, -sub)) == 0x00000000u, "1*0 + (-0) = +0");
    CHECK(bits(fa_amx_fma_ftz(-0.0f, 1.0f, -sub)) == 0x80000000u, "-0 + -0 = -0");
    /* FTZ: tiny results become zero with the true sign */
    CHECK(bits(fa_amx_fma_ftz(0x1p-64f, 0x1p-63f, 0.0f)) == 0, "2^-127 flushed");
    CHECK(bits(fa_amx_fma_ftz(-0x1p-64f, 0x1p-63f, 0.0f)) == 0x80000000u, "-2^-127 flushed to -0");
    CHECK(fa_amx_fma_ftz(0x1p-63f, 0x1p-63f, 0.0f) == tiny_normal, "2^-126 kept");
    /* tininess after rounding to 24 bits with an unbounded exponent:
     * 2^-126 - 2^-150 is representable there (tiny: 0) although the
     * subnormal grid rounds it up to 2^-126 */
    CHECK(fa_amx_fma_ftz(-0x1p-75f, 0x1p-75f, tiny_normal) == 0.0f, "2^-126 - 2^-150 is tiny");
    /* 2^-126 - 2^-151: the midpoint, ties to the even 2^-126 (not tiny) */
    CHECK(fa_amx_fma_ftz(-0x1p-75f, 0x1p-76f, tiny_normal) == tiny_normal, "midpoint -> 2^-126");
    /* 2^-126 - 2^-152 rounds to 2^-126 */
    CHECK(fa_amx_fma_ftz(-0x1p-76f, 0x1p-76f, tiny_normal) == tiny_normal, "2^-126 - 2^-152");
    CHECK(bits(fa_amx_fma_ftz(0x1p-75f, 0x1p-75f, -tiny_normal)) == 0x80000000u,
          "-(2^-126 - 2^-150) flushed to -0");
    /* overflow and NaN */
    CHECK(isinf(fa_amx_fma_ftz(0x1p100f, 0x1p100f, 0.0f)), "overflow to inf");
    CHECK(isnan(fa_amx_fma_ftz(NAN, 1.0f, 1.0f)), "NaN propagates");
    /* the same answers with the host's own DAZ | FTZ set */
#if defined(__x86_64__)
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u);
    CHECK(fa_amx_fma_ftz(-0x1p-75f, 0x1p-75f, tiny_normal) == 0.0f, "host FTZ: tiny");
    CHECK(fa_amx_fma_ftz(-0x1p-75f, 0x1p-76f, tiny_normal) == tiny_normal, "host FTZ: midpoint");
    CHECK(bits(fa_amx_fma_ftz(-0x1p-64f, 0x1p-63f, 0.0f)) == 0x80000000u, "host FTZ: sign");
    _mm_setcsr(csr);
#endif
}

static void test_conversions(void)
{
    /* every binary16 value against ldexp */
    for (uint32_t h = 0; h < 0x10000u; h++) {
        const int exp = (h >> 10) & 0x1f, man = h & 0x3ff;
        const float got = fa_amx_f16_to_f32((uint16_t)h);
        double want;
        if (exp == 0x1f) want = man ? NAN : INFINITY;
        else if (exp == 0) want = ldexp(man, -24);
        else want = ldexp(1024 + man, exp - 25);
        if (h & 0x8000u) want = -want;
        if (isnan(want)) CHECK(isnan(got), "f16 %04x NaN", h);
        else CHECK(got == (float)want && !signbit(got) == !signbit(want), "f16 %04x", h);
    }
    CHECK(fa_amx_bf16_to_f32(0x3f80) == 1.0f, "bf16 1");
    CHECK(fa_amx_bf16_to_f32(0xc040) == -3.0f, "bf16 -3");
}

/* ---- configuration, loads, stores -------------------------------------- */

static void test_config(void)
{
    fa_amx_tilecfg cfg;
    fa_amx_cfg_init(&cfg);
    cfg.rows[0] = 16, cfg.colsb[0] = 64;
    CHECK(fa_amx_emu_loadconfig(&cfg) == 0 && !fa_amx_emu_fault(), "a good config");
    fa_amx_tilecfg bad = cfg;
    bad.palette_id = 2;
    CHECK(fa_amx_emu_loadconfig(&bad) < 0 && fa_amx_emu_fault(), "palette 2 refused");
    bad = cfg, bad.reserved[3] = 1;
    CHECK(fa_amx_emu_loadconfig(&bad) < 0 && fa_amx_emu_fault(), "reserved byte refused");
    bad = cfg, bad.rows[1] = 17, bad.colsb[1] = 4;
    CHECK(fa_amx_emu_loadconfig(&bad) < 0 && fa_amx_emu_fault(), "17 rows refused");
    bad = cfg, bad.rows[1] = 1, bad.colsb[1] = 65;
    CHECK(fa_amx_emu_loadconfig(&bad) < 0 && fa_amx_emu_fault(), "65 bytes refused");
    bad = cfg, bad.rows[1] = 1;
    CHECK(fa_amx_emu_loadconfig(&bad) < 0 && fa_amx_emu_fault(), "rows without colsb refused");
    bad = cfg, bad.rows[8] = 1, bad.colsb[8] = 4;
    CHECK(fa_amx_emu_loadconfig(&bad) < 0 && fa_amx_emu_fault(), "tile 8 refused");

    /* load with a stride, zero the rest; store only rows x colsb */
    fa_amx_cfg_init(&cfg);
    cfg.rows[2] = 3, cfg.colsb[2] = 8;
    CHECK(fa_amx_emu_loadconfig(&cfg) == 0, "config 3 x 8");
    uint8_t src[5 * 16], dst[5 * 16];
    for (int i = 0; i < (int)sizeof src; i++) src[i] = (uint8_t)(i + 1);
    memset(dst, 0xee, sizeof dst);
    CHECK(fa_amx_emu_loadd(2, src, 16) == 0 && fa_amx_emu_stored(2, dst, 20) == 0, "load, store");
    int ok = 1;
    for (int r = 0; r < 4; r++)
        for (int b = 0; b < 20 && r * 20 + b < (int)sizeof dst; b++) {
            const uint8_t want = (r < 3 && b < 8) ? src[r * 16 + b] : 0xee;
            ok &= dst[r * 20 + b] == want;
        }
    CHECK(ok, "strided load and store move exactly rows x colsb bytes");
    CHECK(fa_amx_emu_zero(2) == 0 && fa_amx_emu_stored(2, dst, 20) == 0 && dst[0] == 0 &&
              dst[47] == 0, "tilezero");
    CHECK(fa_amx_emu_loadd(3, src, 16) < 0 && fa_amx_emu_fault(), "unconfigured tile refused");
    fa_amx_emu_release();
    CHECK(fa_amx_emu_zero(2) < 0 && fa_amx_emu_fault(), "released tiles refused");
}

/* ---- TDPBF16PS / TDPFP16PS against a direct model ---------------------- */

/* The SDM pseudocode on plain arrays: c (m x n) += a (m x 2kp) . b, with
 * b given unpacked (2kp x n); values already widened to float. */
static void model_dp(int m, int n, int kp, const float *a, const float *b, float *c)
{
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            float even = 0, odd = 0;
            for (int k = 0; k < kp; k++) {
                even = fa_amx_fma_ftz(a[i * 2 * kp + 2 * k], b[(2 * k) * n + j], even);
                odd = fa_amx_fma_ftz(a[i * 2 * kp + 2 * k + 1], b[(2 * k + 1) * n + j], odd);
            }
            c[i * n + j] = fa_amx_fma_ftz(c[i * n + j], 1.0f, fa_amx_fma_ftz(even, 1.0f, odd));
        }
}

/* one instruction, M=5 rows, N=7 columns, 9 pairs, with subnormals, signed
 * zeros and a few exact cancellations in the data */
static void test_dp_instruction(int bf16)
{
    enum { M = 5, N = 7, KP = 9 };
    uint16_t a16[M][2 * KP], b16[KP][N][2];
    float af[M * 2 * KP], bf[2 * KP * N], c0[M * N], cm[M * N], ce[16 * 16];
    for (int i = 0; i < M; i++)
        for (int k = 0; k < 2 * KP; k++) {
            float v = (float)uniform() * 4;
            if ((i + k) % 7 == 0) v = (float)uniform() * 0x1p-128f; /* subnormal */
            uint16_t h = bf16 ? to_bf16(v) : (uint16_t)(((i * 31 + k * 7) & 0x3ff) |
                                                        ((k & 1) << 15) | ((i + k) % 5 ? 0x3800 : 0));
            a16[i][k] = h;
            af[i * 2 * KP + k] = bf16 ? fa_amx_bf16_to_f32(h) : fa_amx_f16_to_f32(h);
        }
    for (int k = 0; k < 2 * KP; k++)
        for (int j = 0; j < N; j++) {
            float v = (float)uniform() * 2;
            if ((k * 3 + j) % 11 == 0) v = -v;
            uint16_t h = bf16 ? to_bf16(v) : (uint16_t)(((k * 13 + j * 5) & 0x3ff) |
                                                        ((j & 1) << 15) | ((k + j) % 3 ? 0x3c00 : 0));
            b16[k / 2][j][k % 2] = h;
            bf[k * N + j] = bf16 ? fa_amx_bf16_to_f32(h) : fa_amx_f16_to_f32(h);
        }
    for (int i = 0; i < M * N; i++) {
        c0[i] = (float)uniform();
        if (i % 6 == 0) c0[i] = from_bits(0x00012345u); /* subnormal accumulator */
        cm[i] = c0[i];
    }
    model_dp(M, N, KP, af, bf, cm);

    fa_amx_tilecfg cfg;
    fa_amx_cfg_init(&cfg);
    cfg.rows[0] = M, cfg.colsb[0] = N * 4;   /* C */
    cfg.rows[1] = M, cfg.colsb[1] = KP * 4;  /* A */
    cfg.rows[2] = KP, cfg.colsb[2] = N * 4;  /* B */
    cfg.rows[3] = KP, cfg.colsb[3] = 4;      /* a wrongly shaped B */
    CHECK(fa_amx_emu_loadconfig(&cfg) == 0, "dp config");
    int (*dp)(int, int, int) = bf16 ? fa_amx_emu_dpbf16ps : fa_amx_emu_dpfp16ps;
    CHECK(fa_amx_emu_loadd(0, c0, N * 4) == 0, "load C");
    CHECK(fa_amx_emu_loadd(1, a16, sizeof a16[0]) == 0, "load A");
    CHECK(fa_amx_emu_loadd(2, b16, sizeof b16[0]) == 0, "load B");
    CHECK(dp(0, 1, 3) < 0 && fa_amx_emu_fault(), "shape mismatch refused");
    CHECK(dp(0, 1, 1) < 0 && fa_amx_emu_fault(), "repeated tile refused");
    CHECK(dp(0, 1, 2) == 0 && !fa_amx_emu_fault(), "dp runs");
    memset(ce, 0xff, sizeof ce);
    CHECK(fa_amx_emu_stored(0, ce, N * 4) == 0, "store C");
    int same = 1;
    for (int i = 0; i < M * N; i++) same &= bits(ce[i]) == bits(cm[i]);
    CHECK(same, "%s: tile result == scalar model, bitwise", bf16 ? "tdpbf16ps" : "tdpfp16ps");
    /* and against float64 with the flushing rules applied to the inputs */
    double maxerr = 0, bound = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double ref = fabs(c0[i * N + j]) < 0x1p-126 ? 0 : c0[i * N + j], mag = fabs(ref);
            for (int k = 0; k < 2 * KP; k++) {
                double x = af[i * 2 * KP + k], y = bf[k * N + j];
                if (fabs(x) < 0x1p-126) x = 0; /* only bf16 inputs can be subnormal floats */
                if (fabs(y) < 0x1p-126) y = 0;
                ref += x * y, mag += fabs(x * y);
            }
            const double err = fabs(ce[i * N + j] - ref);
            if (err > maxerr) maxerr = err;
            if ((2 * KP + 3) * 0x1p-24 * mag > bound) bound = (2 * KP + 3) * 0x1p-24 * mag;
        }
    CHECK(maxerr <= bound, "%s vs float64: %g > %g", bf16 ? "bf16" : "fp16", maxerr, bound);
    fa_amx_emu_release();
}

/* ---- the tile GEMM of the matrix kernel (tile_gemm.h) -------------------- */

/* The attention kernel's GEMM on the emulation, as matrix.h instantiates
 * it (kernel_amx_emu.c), and its packed-B index map. */
#define FA_TILE_GEMM gemm_bf16_emu
#define FA_TILE_GEMM_DP FA_TILE_DPBF16PS
#include "tile_gemm.h"

static void model_gemm(int m, int n, int k, const uint16_t *a, const uint16_t *b, float *c)
{
    float *af = malloc(sizeof(float) * 32), *bf = malloc(sizeof(float) * 32 * (size_t)n);
    for (int i = 0; i < m * n; i++) c[i] = 0;
    for (int kb = 0; kb < k; kb += 32) {
        for (int kk = 0; kk < 32; kk++)
            for (int j = 0; j < n; j++) bf[kk * n + j] = fa_amx_bf16_to_f32(b[(kb + kk) * n + j]);
        for (int i = 0; i < m; i++) {
            for (int kk = 0; kk < 32; kk++) af[kk] = fa_amx_bf16_to_f32(a[i * k + kb + kk]);
            /* one TDPBF16PS per 32 k, as the kernel issues them */
            model_dp(1, n, 16, af, bf, c + i * n);
        }
    }
    free(af);
    free(bf);
}

static void fill_bf16(uint16_t *x, size_t count, double scale)
{
    for (size_t i = 0; i < count; i++) x[i] = to_bf16((float)(uniform() * scale));
}

/* B (k x n, row-major; k, n multiples of 32) packed through the kernel's
 * index map. */
static void pack_b(int k, int n, const uint16_t *b, uint16_t *packed)
{
    for (int row = 0; row < k; row++)
        for (int col = 0; col < n; col++)
            packed[fa_mx_b_index(k / 32, row, col)] = b[row * n + col];
}

/* bf16 operands of an M x N x K product (fill_bf16 at the given scales),
 * and B packed. */
static void gemm_operands(int M, int N, int K, double scale_a, double scale_b,
                          uint16_t **a, uint16_t **b, uint16_t **bp)
{
    *a = malloc(sizeof(uint16_t) * M * K);
    *b = malloc(sizeof(uint16_t) * K * N);
    *bp = malloc(sizeof(uint16_t) * K * N);
    fill_bf16(*a, M * K, scale_a);
    fill_bf16(*b, K * N, scale_b);
}

/* The GEMM on the emulation, with its configuration. */
static void gemm_emu(int m, int n, int k, const uint16_t *a, const uint16_t *bp, float *c)
{
    fa_tile_gemm_config();
    gemm_bf16_emu(m, n, k, a, k, bp, (int64_t)k * 16, c, n);
    FA_TILE_RELEASE();
}

/* The index map is a bijection onto the packed panels, and each 1 KB tile
 * holds 16 pair rows of 16 columns. */
static void test_b_index(void)
{
    enum { KB = 3, PANELS = 4 };
    static unsigned char hit[KB * PANELS * 512];
    memset(hit, 0, sizeof hit);
    int ok = 1;
    for (int row = 0; row < KB * 32; row++)
        for (int col = 0; col < PANELS * 16; col++) {
            const size_t i = fa_mx_b_index(KB, row, col);
            ok &= i < sizeof hit && !hit[i];
            if (i < sizeof hit) hit[i] = 1;
            /* tile (panel, row / 32), pair row (row % 32) / 2, column col % 16 */
            ok &= i / 512 == (size_t)((col / 16) * KB + row / 32) &&
                  i % 512 == (size_t)((row % 32 / 2) * 32 + col % 16 * 2 + row % 2);
        }
    CHECK(ok, "b index: one slot per element, in the tile product's layout");
}

static void test_gemm(void)
{
    enum { M = 64, N = 96, K = 128 };
    uint16_t *a, *b, *bp;
    gemm_operands(M, N, K, 3.0, 1.0, &a, &b, &bp);
    float *c = malloc(sizeof(float) * M * N), *cm = malloc(sizeof(float) * M * N);
    a[5] = 0x0003; /* a subnormal bf16: read as zero */
    pack_b(K, N, b, bp);

    for (int i = 0; i < M * N; i++) c[i] = 123.0f; /* overwritten, not added to */
    gemm_emu(M, N, K, a, bp, c);
    CHECK(fa_amx_emu_fault() == NULL, "gemm without faults");
    model_gemm(M, N, K, a, b, cm);
    int same = 1;
    for (int i = 0; i < M * N; i++) same &= bits(c[i]) == bits(cm[i]);
    CHECK(same, "gemm == scalar model, bitwise");
    /* float64: every product exact, K additions in float32 */
    double maxerr = 0, maxbound = 0;
    int within = 1;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double ref = 0, mag = 0;
            for (int kk = 0; kk < K; kk++) {
                double x = fa_amx_bf16_to_f32(a[i * K + kk]);
                if (fabs(x) < 0x1p-126) x = 0; /* DAZ */
                const double y = fa_amx_bf16_to_f32(b[kk * N + j]);
                ref += x * y, mag += fabs(x * y);
            }
            const double err = fabs(c[i * N + j] - ref);
            /* 16 chained roundings per instruction, 2 more, then one per
             * 32 k into C */
            const double bound = (16 + 2 + K / 32) * 0x1p-24 * mag;
            within &= err <= bound;
            if (err > maxerr) maxerr = err;
            if (bound > maxbound) maxbound = bound;
        }
    CHECK(within && maxerr > 0, "gemm vs float64: max error %g, bound %g", maxerr, maxbound);
    /* the kernel must not depend on the host's DAZ/FTZ (it runs inside
     * calls that set them) */
#if defined(__x86_64__)
    {
        const unsigned csr = _mm_getcsr();
        float *c2 = malloc(sizeof(float) * M * N);
        _mm_setcsr(csr | 0x8040u);
        gemm_emu(M, N, K, a, bp, c2);
        _mm_setcsr(csr);
        CHECK(memcmp(c, c2, sizeof(float) * M * N) == 0, "gemm under host DAZ|FTZ: same bits");
        free(c2);
    }
#endif
    free(a), free(b), free(bp), free(c), free(cm);
}

/* The same GEMM on a linear layer's weight: one K block (depth 64 from k
 * row 32 of a panel packed for K = 128: panels b_panel = 128 * 16 apart)
 * and n = 48 (a last single panel, the 2 x 1 block). */
static void test_gemm_panels(void)
{
    enum { M = 32, N = 48, K = 128, K0 = 32, D = 64 };
    uint16_t *a, *b, *bp;
    gemm_operands(M, N, K, 2.0, 1.0, &a, &b, &bp);
    for (int row = 0; row < K; row++)
        for (int col = 0; col < N; col++) bp[fa_mx_b_index(K / 32, row, col)] = b[row * N + col];
    /* the model on the block alone: A's columns and B's rows [K0, K0 + D) */
    uint16_t *ab = malloc(sizeof(uint16_t) * M * D), *bb = malloc(sizeof(uint16_t) * D * N);
    for (int i = 0; i < M; i++) memcpy(ab + i * D, a + i * K + K0, sizeof(uint16_t) * D);
    memcpy(bb, b + K0 * N, sizeof(uint16_t) * D * N);
    float *c = malloc(sizeof(float) * M * N), *cm = malloc(sizeof(float) * M * N);
    model_gemm(M, N, D, ab, bb, cm);
    fa_tile_gemm_config();
    gemm_bf16_emu(M, N, D, a + K0, K, bp + K0 * 16, (int64_t)K * 16, c, N);
    FA_TILE_RELEASE();
    CHECK(fa_amx_emu_fault() == NULL, "gemm on a K block without faults");
    CHECK(memcmp(c, cm, sizeof(float) * M * N) == 0,
          "gemm on a K block of panels and a last single panel == scalar model, bitwise");
    free(a), free(b), free(bp), free(ab), free(bb), free(c), free(cm);
}

/* TDPBSSD: M = 5 rows, N = 7 columns, 9 quads of signed bytes (the
 * extremes -128 and 127 among them), C starting near the int32 limits so
 * that the sums wrap, against the exact sum modulo 2^32. */
static void test_dpbssd(void)
{
    enum { M = 5, N = 7, KQ = 9 };
    int8_t a8[M][4 * KQ], b8[KQ][N][4];
    int32_t c0[M][N], ce[M][N];
    for (int i = 0; i < M; i++)
        for (int k = 0; k < 4 * KQ; k++)
            a8[i][k] = (int8_t)((i + k) % 9 == 0 ? -128 : (int)(uniform() * 255) - 127);
    for (int k = 0; k < KQ; k++)
        for (int j = 0; j < N; j++)
            for (int q = 0; q < 4; q++)
                b8[k][j][q] = (int8_t)((k + j + q) % 7 == 0 ? 127 : (int)(uniform() * 255) - 127);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) c0[i][j] = (i + j) % 2 ? INT32_MAX - 1000 : INT32_MIN + 1000;
    fa_amx_tilecfg cfg;
    fa_amx_cfg_init(&cfg);
    cfg.rows[0] = M, cfg.colsb[0] = N * 4;  /* C */
    cfg.rows[1] = M, cfg.colsb[1] = KQ * 4; /* A */
    cfg.rows[2] = KQ, cfg.colsb[2] = N * 4; /* B */
    cfg.rows[3] = KQ - 1, cfg.colsb[3] = N * 4; /* a wrongly shaped B */
    CHECK(fa_amx_emu_loadconfig(&cfg) == 0, "tdpbssd config");
    CHECK(fa_amx_emu_loadd(0, c0, sizeof c0[0]) == 0, "load C");
    CHECK(fa_amx_emu_loadd(1, a8, sizeof a8[0]) == 0, "load A");
    CHECK(fa_amx_emu_loadd(2, b8, sizeof b8[0]) == 0, "load B");
    CHECK(fa_amx_emu_dpbssd(0, 1, 3) < 0 && fa_amx_emu_fault(), "tdpbssd shape mismatch refused");
    CHECK(fa_amx_emu_dpbssd(0, 0, 2) < 0 && fa_amx_emu_fault(), "tdpbssd repeated tile refused");
    CHECK(fa_amx_emu_dpbssd(0, 1, 2) == 0 && !fa_amx_emu_fault(), "tdpbssd runs");
    CHECK(fa_amx_emu_stored(0, ce, sizeof ce[0]) == 0, "store C");
    int same = 1, wrapped = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            int64_t s = c0[i][j];
            for (int k = 0; k < 4 * KQ; k++) s += (int64_t)a8[i][k] * b8[k / 4][j][k % 4];
            wrapped |= s > INT32_MAX || s < INT32_MIN;
            same &= (uint32_t)ce[i][j] == (uint32_t)(uint64_t)s;
        }
    CHECK(same && wrapped, "tdpbssd == exact sum modulo 2^32 (some sums wrapped)");
    fa_amx_emu_release();
}

/* ---- the gate ----------------------------------------------------------- */

static void test_gate_decisions(void)
{
    const char *why;
    fa_amx_facts f = {1, (1u << 22) | (1u << 24) | (1u << 25), 0, 1, 0x60000ull | 0xe7};
    CHECK(fa_amx_decide(&f, FA_AMX_PERM_GRANTED, &why) && strcmp(why, "available") == 0,
          "all present: available");
    CHECK(!fa_amx_decide(&f, FA_AMX_PERM_NOSPC, &why) && strstr(why, "sigaltstack"), "ENOSPC");
    CHECK(!fa_amx_decide(&f, FA_AMX_PERM_UNSUPPORTED, &why) && strstr(why, "EINVAL"), "EINVAL");
    CHECK(!fa_amx_decide(&f, FA_AMX_PERM_DENIED, &why) && strstr(why, "denied"), "EPERM");
    fa_amx_facts g = f;
    g.leaf7_edx &= ~(1u << 24);
    CHECK(!fa_amx_decide(&g, FA_AMX_PERM_GRANTED, &why) &&
              strcmp(why, "cpuid reports no AMX-TILE") == 0, "no AMX-TILE");
    g = f, g.leaf7_edx &= ~(1u << 22);
    CHECK(!fa_amx_decide(&g, FA_AMX_PERM_GRANTED, &why) && strstr(why, "no AMX-BF16"), "no BF16");
    g = f, g.osxsave = 0;
    CHECK(!fa_amx_decide(&g, FA_AMX_PERM_GRANTED, &why) && strstr(why, "OSXSAVE"), "no OSXSAVE");
    g = f, g.xcr0 &= ~(1ull << 18);
    CHECK(!fa_amx_decide(&g, FA_AMX_PERM_GRANTED, &why) && strstr(why, "XCR0"), "XCR0 bit 18");
    g = f, g.has_leaf7 = 0;
    CHECK(!fa_amx_decide(&g, FA_AMX_PERM_GRANTED, &why) && strstr(why, "AMX-TILE"), "no leaf 7");
}

static void *gate_thread(void *arg)
{
    *(int *)arg = fa_amx_available();
    return NULL;
}

static volatile sig_atomic_t on_altstack = 0;
static char *altstack_base;
static size_t altstack_size;

static void usr1_handler(int sig)
{
    (void)sig;
    char here;
    on_altstack = &here >= altstack_base && &here < altstack_base + altstack_size;
}

/* In a child: a small sigaltstack first, then the gate; the process must
 * keep working (signals still delivered on the altstack). */
static int child_small_altstack(void)
{
    altstack_size = 4096; /* small next to a frame with 8 KB of tile data */
    altstack_base = malloc(altstack_size);
    stack_t ss = {.ss_sp = altstack_base, .ss_size = altstack_size, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0) return 10;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = usr1_handler;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGUSR1, &sa, NULL);
    const int avail = fa_amx_available();
    const char *why = fa_amx_reason();
    if (!why || !*why) return 11;
    raise(SIGUSR1);
    if (!on_altstack) return 12;
    /* available with a 4 KB altstack would contradict the kernel's rule */
    if (avail && !strstr(why, "available")) return 13;
    return 0;
}

static void test_gate_runtime(void)
{
    fa_amx_facts f;
    fa_amx_read_facts(&f);
    const int avail = fa_amx_available();
    const char *why = fa_amx_reason();
    printf("amx gate: %s (cpuid leaf7 edx=%08x, leaf7.1 eax=%08x, xcr0=%llx)\n", why,
           (unsigned)f.leaf7_edx, (unsigned)f.leaf7_1_eax, (unsigned long long)f.xcr0);
    CHECK(why && *why, "a reason is given");
    CHECK(avail == (strcmp(why, "available") == 0), "reason agrees with availability");
    const char *cpu_why;
    if (!fa_amx_cpu_ok(&f, &cpu_why)) {
        CHECK(!avail && strcmp(why, cpu_why) == 0, "cpu/os reason reported as is");
    }
    CHECK(fa_amx_available() == avail && fa_amx_reason() == why, "idempotent");
    CHECK(!fa_amx_fp16_available() || avail, "fp16 implies the tiles");
    /* concurrent first use from threads of a fresh process, and fork */
    const pid_t pid = fork();
    if (pid == 0) {
        pthread_t th[4];
        int got[4];
        for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, gate_thread, &got[i]);
        for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
        for (int i = 0; i < 4; i++)
            if (got[i] != avail) _exit(20);
        _exit(0);
    }
    int status = -1;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "threads in a forked child: status %d",
          status);
    const pid_t pid2 = fork();
    if (pid2 == 0) _exit(child_small_altstack());
    waitpid(pid2, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "a process with a small sigaltstack keeps working: status %d", status);
}

/* ---- real instructions, where the CPU has them -------------------------- */

static void test_real(void)
{
    if (!fa_amx_real_compiled()) {
        printf("real AMX tests not run: the real-instruction kernel was not compiled\n");
        return;
    }
    if (!fa_amx_available()) {
        printf("real AMX tests not run: %s\n", fa_amx_reason());
        CHECK(fa_amx_tdpbf16ps_probe(10) < 0, "the probe refuses to run without AMX");
        return;
    }
    enum { M = 64, N = 64, K = 256 };
    uint16_t *a, *b, *bp;
    gemm_operands(M, N, K, 2.0, 2.0, &a, &b, &bp);
    float *ce = malloc(sizeof(float) * M * N), *cr = malloc(sizeof(float) * M * N);
    a[3] = 0x0005, b[7] = 0x8004; /* subnormal inputs */
    pack_b(K, N, b, bp);
    gemm_emu(M, N, K, a, bp, ce);
    CHECK(fa_amx_gemm_bf16_amx(M, N, K, a, K, bp, cr, N) == 0, "real gemm runs");
    int same = 0;
    double maxrel = 0;
    for (int i = 0; i < M * N; i++) {
        same += bits(ce[i]) == bits(cr[i]);
        const double rel = fabs((double)ce[i] - cr[i]) / (fabs((double)ce[i]) + 1e-30);
        if (rel > maxrel) maxrel = rel;
    }
    printf("real TDPBF16PS vs emulation: %d of %d results bitwise equal, max rel diff %g\n",
           same, M * N, maxrel);
    CHECK(maxrel < 1e-5, "real and emulated GEMM agree to float32 accumulation error");
    const double gflops = fa_amx_tdpbf16ps_probe(200000);
    printf("TDPBF16PS probe: %.1f GFLOP/s on this thread\n", gflops);
    CHECK(gflops > 0, "the probe runs");
    free(a), free(b), free(bp), free(ce), free(cr);
}

/* colsb not a whole number of dwords is refused by the tile product, and
 * a fault met through the kernels' vocabulary (amx_tileops.h) aborts. */
static void test_faults(void)
{
    fa_amx_tilecfg cfg;
    fa_amx_cfg_init(&cfg);
    cfg.rows[0] = 2, cfg.colsb[0] = 8; /* C: 2 x 2 floats */
    cfg.rows[1] = 2, cfg.colsb[1] = 6; /* A: 1.5 pairs */
    cfg.rows[2] = 1, cfg.colsb[2] = 8; /* B */
    CHECK(fa_amx_emu_loadconfig(&cfg) == 0, "config with an odd colsb loads");
    const char *why = NULL;
    CHECK(fa_amx_emu_dpbf16ps(0, 1, 2) < 0 && (why = fa_amx_emu_fault()) != NULL &&
              strstr(why, "multiple of 4"),
          "colsb not a multiple of 4 refused");
    fa_amx_emu_release();
    fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) _exit(30);
        static float buf[16 * 16];
        FA_TILE_LOAD(3, buf, 64); /* no configuration: must not return */
        _exit(31);
    }
    int status = -1;
    waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT,
          "an emulated fault in a kernel aborts: status %d", status);
}

int main(void)
{
    test_fma_ftz();
    test_conversions();
    test_config();
    test_dp_instruction(1);
    test_dp_instruction(0);
    test_b_index();
    test_gemm();
    test_gemm_panels();
    test_dpbssd();
    test_faults();
    test_gate_decisions();
    test_gate_runtime();
    test_real();
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
