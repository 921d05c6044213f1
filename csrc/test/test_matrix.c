/*
 * test_matrix.c: the matrix-unit kernel family, driven through the C core
 * (fa_attention) on the tile emulation (path amx_emu), against a float64
 * reference on awkward sizes, strides, masks, both causal alignments,
 * windows, ALiBi, soft cap, padded and packed batches, GQA, lse, split-KV
 * and two threads; float32 inputs with the bf16 and bf16x3 precisions.
 * Where the CPU has usable AMX tiles, the real kernels are checked against
 * the emulation (otherwise that part says why it is skipped).  Also: a
 * forked child and a process with a small sigaltstack keep working.
 * Built and run by tools/check_amx.sh (plain and with ASan/UBSan).
 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../fastattn.h"
#include "../half.h"

typedef struct {
    const char *name;
    int b, hq, hkv, nq, nk, d, dv;
    int causal;     /* 0 none, 1 bottom-right, 2 top-left */
    int window;     /* > 0: keys at most `window` before the diagonal */
    int mask;       /* 0 none, 1 bool, 2 additive float32 */
    int alibi, kv_len, varlen, kt, threads;
    double softcap;
    fa_dtype dtype;
    int precision;
} mx_case;

/* Inputs and buffers of one case.  Rows are stored (row, head, column)
 * with rows of all batches end to end; K may be stored transposed. */
typedef struct {
    int64_t qs[5], ks[5], nq_b[8], nk_b[8], tq, tk;
    float *qf, *kf, *vf, *mask_f, *out_f, *lse;
    uint16_t *q16, *k16, *v16, *out16;
    uint8_t *mask_b;
    double *slopes, *ref, *ref_lse;
    int64_t q_start[9], k_start[9], k_len[8];
} mx_data;

static double frand(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return ((*s >> 8) & 0xFFFF) / 16384.0 - 2.0;
}

/* The 16-bit storage of a value (bfloat16, or float16 for FA_F16), and
 * back; the inputs are values exact in the case's type. */
static uint16_t to16(const mx_case *c, float x)
{
    return c->dtype == FA_F16 ? fa_f32_to_half(x) : fa_f32_to_bf16(x);
}

static float from16(const mx_case *c, uint16_t x)
{
    return c->dtype == FA_F16 ? fa_half_to_f32(x) : fa_bf16_to_f32(x);
}

static float round_in(const mx_case *c, double x)
{
    return c->dtype == FA_F32 ? (float)x : from16(c, to16(c, (float)x));
}

/* Element offsets: q/out rows (row, head, col); k/v (row, head, col) or,
 * for kt, K as (head, col, row). */
static int64_t q_at(const mx_case *c, int64_t row, int h, int e, int width)
{
    return (row * c->hq + h) * width + e;
}

static int64_t k_at(const mx_case *c, const mx_data *x, int64_t row, int h, int e)
{
    return c->kt ? ((int64_t)h * c->d + e) * x->tk + row : (row * c->hkv + h) * c->d + e;
}

static void mx_alloc(const mx_case *c, mx_data *x)
{
    x->tq = x->tk = 0;
    x->q_start[0] = x->k_start[0] = 0;
    for (int b = 0; b < c->b; b++) {
        /* varlen 2: the second batch has no query */
        x->nq_b[b] = c->varlen == 2 && b == 1 ? 0 : c->varlen ? c->nq - 5 * b : c->nq;
        x->nk_b[b] = c->varlen ? c->nk - 7 * b : c->nk;
        /* kv_len 2: the first batch has no key at all */
        x->k_len[b] = c->kv_len == 2 && b == 0 ? 0 : c->kv_len ? c->nk - 9 * b - 3 : c->nk;
        x->tq += c->varlen ? x->nq_b[b] : c->nq;
        x->tk += c->varlen ? x->nk_b[b] : c->nk;
        x->q_start[b + 1] = x->tq;
        x->k_start[b + 1] = x->tk;
    }
    const size_t nqe = (size_t)x->tq * c->hq, nke = (size_t)x->tk * c->hkv;
    x->qf = calloc(nqe * c->d, sizeof(float));
    x->kf = calloc(nke * c->d, sizeof(float));
    x->vf = calloc(nke * c->dv, sizeof(float));
    x->q16 = calloc(nqe * c->d, 2);
    x->k16 = calloc(nke * c->d, 2);
    x->v16 = calloc(nke * c->dv, 2);
    x->out_f = calloc(nqe * c->dv, sizeof(float));
    x->out16 = calloc(nqe * c->dv, 2);
    x->lse = calloc(nqe, sizeof(float));
    x->ref = calloc(nqe * c->dv, sizeof(double));
    x->ref_lse = calloc(nqe, sizeof(double));
    const size_t nm = (size_t)c->b * c->hq * c->nq * c->nk;
    x->mask_f = calloc(nm, sizeof(float));
    x->mask_b = calloc(nm, 1);
    x->slopes = calloc((size_t)c->hq, sizeof(double));
}

static void mx_free(mx_data *x)
{
    free(x->qf), free(x->kf), free(x->vf), free(x->q16), free(x->k16), free(x->v16);
    free(x->out_f), free(x->out16), free(x->lse), free(x->ref), free(x->ref_lse);
    free(x->mask_f), free(x->mask_b), free(x->slopes);
}

static void mx_fill(const mx_case *c, mx_data *x)
{
    unsigned s = 777u + (unsigned)(c->nq * 31 + c->nk * 7 + c->d);
    for (int64_t r = 0; r < x->tq; r++)
        for (int h = 0; h < c->hq; h++)
            for (int e = 0; e < c->d; e++) {
                const int64_t i = q_at(c, r, h, e, c->d);
                x->qf[i] = round_in(c, frand(&s));
                x->q16[i] = to16(c, x->qf[i]);
            }
    for (int64_t r = 0; r < x->tk; r++)
        for (int h = 0; h < c->hkv; h++) {
            for (int e = 0; e < c->d; e++) {
                const int64_t i = k_at(c, x, r, h, e);
                x->kf[i] = round_in(c, frand(&s));
                x->k16[i] = to16(c, x->kf[i]);
            }
            for (int e = 0; e < c->dv; e++) {
                const int64_t i = (r * c->hkv + h) * c->dv + e;
                x->vf[i] = round_in(c, frand(&s) * 0.5);
                x->v16[i] = to16(c, x->vf[i]);
            }
        }
    const size_t nm = (size_t)c->b * c->hq * c->nq * c->nk;
    for (size_t i = 0; i < nm; i++) {
        const double u = frand(&s);
        x->mask_b[i] = u > -1.2;
        x->mask_f[i] = u < -1.5 ? -INFINITY : (float)(0.5 * u);
    }
    for (int h = 0; h < c->hq; h++) x->slopes[h] = 0.05 * (h + 1);
}

/* float64 attention of one query row (b, h, i). */
static void mx_ref_row(const mx_case *c, const fa_params *p, mx_data *x, int b, int h, int i)
{
    const int64_t nq = x->nq_b[b], nk = c->varlen ? x->nk_b[b] : x->k_len[b];
    const int64_t q0 = c->varlen ? x->q_start[b] : (int64_t)b * c->nq;
    const int64_t k0 = c->varlen ? x->k_start[b] : (int64_t)b * c->nk;
    const int hk = h / (c->hq / c->hkv);
    const int64_t base = p->band_from_end ? nk - nq : 0;
    double *s = malloc(sizeof(double) * (size_t)(nk > 0 ? nk : 1)), m = -INFINITY, l = 0;
    for (int64_t j = 0; j < nk; j++) {
        double acc = 0;
        for (int e = 0; e < c->d; e++)
            acc += (double)x->qf[q_at(c, q0 + i, h, e, c->d)] * x->kf[k_at(c, x, k0 + j, hk, e)];
        acc *= p->scale;
        if (c->softcap > 0) acc = c->softcap * tanh(acc / c->softcap);
        if (c->alibi) acc -= x->slopes[h] * fabs((double)(i + nk - nq - j));
        const size_t mi = (((size_t)b * c->hq + h) * c->nq + i) * c->nk + j;
        if (c->mask == 1 && !x->mask_b[mi]) acc = -INFINITY;
        if (c->mask == 2) acc = x->mask_f[mi] == -INFINITY ? -INFINITY : acc + x->mask_f[mi];
        const int64_t rel = j - i - base;
        if ((p->band_lo != FA_UNBOUNDED_LO && rel < p->band_lo) ||
            (p->band_hi != FA_UNBOUNDED_HI && rel > p->band_hi))
            acc = -INFINITY;
        s[j] = acc;
        if (acc > m) m = acc;
    }
    double *o = x->ref + q_at(c, q0 + i, h, 0, c->dv);
    for (int e = 0; e < c->dv; e++) o[e] = 0;
    if (m > -INFINITY) {
        for (int64_t j = 0; j < nk; j++) l += exp(s[j] - m);
        for (int64_t j = 0; j < nk; j++) {
            const double w = exp(s[j] - m) / l;
            for (int e = 0; e < c->dv; e++) o[e] += w * x->vf[((k0 + j) * c->hkv + hk) * c->dv + e];
        }
    }
    x->ref_lse[(q0 + i) * c->hq + h] = m > -INFINITY ? m + log(l) : -INFINITY;
    free(s);
}

static void mx_params(const mx_case *c, mx_data *x, fa_params *p)
{
    memset(p, 0, sizeof *p);
    const int wide = c->dtype == FA_F32;
    p->dtype = c->dtype;
    p->precision = c->precision;
    p->batch = c->b, p->h_q = c->hq, p->h_kv = c->hkv, p->n_q = c->nq, p->n_k = c->nk;
    p->d = c->d, p->dv = c->dv;
    const int64_t rq = c->varlen ? 0 : c->nq, rk = c->varlen ? 0 : c->nk;
    p->q = wide ? (const void *)x->qf : x->q16;
    p->q_sb = rq * c->hq * c->d, p->q_sh = c->d, p->q_sn = (int64_t)c->hq * c->d, p->q_sd = 1;
    p->k = wide ? (const void *)x->kf : x->k16;
    if (c->kt) p->k_sb = rk, p->k_sh = (int64_t)c->d * x->tk, p->k_sn = 1, p->k_sd = x->tk;
    else p->k_sb = rk * c->hkv * c->d, p->k_sh = c->d, p->k_sn = (int64_t)c->hkv * c->d, p->k_sd = 1;
    p->v = wide ? (const void *)x->vf : x->v16;
    p->v_sb = rk * c->hkv * c->dv, p->v_sh = c->dv, p->v_sn = (int64_t)c->hkv * c->dv, p->v_sd = 1;
    p->out = wide ? (void *)x->out_f : x->out16;
    p->o_sb = rq * c->hq * c->dv, p->o_sh = c->dv, p->o_sn = (int64_t)c->hq * c->dv, p->o_sd = 1;
    p->lse = x->lse, p->l_sb = rq * c->hq, p->l_sh = 1, p->l_sn = c->hq;
    p->band_lo = FA_UNBOUNDED_LO, p->band_hi = FA_UNBOUNDED_HI;
    if (c->causal) p->band_hi = 0, p->band_from_end = c->causal == 1;
    if (c->window) p->band_lo = -c->window, p->band_hi = 0, p->band_from_end = 1;
    if (c->mask) {
        p->mask_kind = c->mask == 1 ? FA_MASK_BOOL : FA_MASK_ADD_F32;
        p->mask = c->mask == 1 ? (const void *)x->mask_b : x->mask_f;
        p->m_sk = 1, p->m_sq = c->nk, p->m_sh = (int64_t)c->nq * c->nk;
        p->m_sb = (int64_t)c->hq * c->nq * c->nk;
    }
    if (c->alibi) p->alibi = x->slopes, p->a_sh = 1;
    p->softcap = c->softcap;
    if (c->varlen) p->q_start = x->q_start, p->k_start = x->k_start;
    if (c->kv_len) p->k_len = x->k_len;
    p->scale = 1.0 / sqrt((double)c->d);
    p->num_threads = c->threads;
}

/* Max errors of the output and lse just computed against the reference. */
static void mx_errors(const mx_case *c, const mx_data *x, double *eo, double *el)
{
    *eo = *el = 0;
    for (int64_t r = 0; r < x->tq; r++)
        for (int h = 0; h < c->hq; h++) {
            for (int e = 0; e < c->dv; e++) {
                const int64_t i = q_at(c, r, h, e, c->dv);
                const double o = c->dtype == FA_F32 ? x->out_f[i] : from16(c, x->out16[i]);
                const double d = fabs(o - x->ref[i]);
                if (!(d <= *eo)) *eo = d;
            }
            const double lr = x->ref_lse[r * c->hq + h], lf = x->lse[r * c->hq + h];
            const double d = lr == -INFINITY && lf == -INFINITY ? 0 : fabs(lf - lr);
            if (!(d <= *el)) *el = d;
        }
}

/* Run the case on `isa` (and check its plan); returns 0 on success. */
static int mx_run(const mx_case *c, mx_data *x, fa_isa isa, int want_family, double *eo,
                  double *el)
{
    fa_params p;
    fa_plan_info info;
    if (fa_set_isa(isa) != FA_OK) return 1;
    mx_params(c, x, &p);
    if (fa_plan(&p, &info) != FA_OK || (want_family >= 0 && info.family != want_family)) {
        printf("  %s: plan family %d, expected %d\n", c->name, info.family, want_family);
        return 1;
    }
    if (want_family == 3 && c->dtype == FA_F32 && info.precision != c->precision) return 1;
    if (fa_attention(&p) != FA_OK) return 1;
    mx_errors(c, x, eo, el);
    return 0;
}

/* One case: the matrix path (emulated) and the vector path against the
 * float64 reference; the matrix error may be at most `ratio` times the
 * vector path's plus `floor` (FlashAttention's rule, with the vector path
 * as the plain computation in the input precision). */
/* Set up the case in x with its float64 reference rows. */
static void mx_prepare(const mx_case *c, mx_data *x)
{
    fa_params p;
    mx_alloc(c, x);
    mx_fill(c, x);
    mx_params(c, x, &p);
    for (int b = 0; b < c->b; b++)
        for (int h = 0; h < c->hq; h++)
            for (int i = 0; i < x->nq_b[b]; i++) mx_ref_row(c, &p, x, b, h, i);
}

static int mx_case_run(const mx_case *c, double ratio, double floor_)
{
    mx_data x;
    mx_prepare(c, &x);
    double vo, vl, mo, ml;
    int bad = mx_run(c, &x, FA_ISA_AVX512, 0, &vo, &vl);
    bad |= mx_run(c, &x, FA_ISA_AMX_EMU, 3, &mo, &ml);
    /* lse comes from the unrounded probabilities: float32 accuracy, unless
     * float32 inputs were rounded to bfloat16 (then within about 2^-8) */
    const double lse_tol = c->dtype == FA_F32 && c->precision == FA_PRECISION_BF16
                               ? 4e-3 : 4 * vl + 2e-6;
    const int fail = bad || !(mo <= ratio * vo + floor_) || !(ml <= lse_tol);
    printf("%-28s vector out %.3g lse %.3g | matrix (emulated) out %.3g lse %.3g  %s\n", c->name,
           vo, vl, mo, ml, fail ? "FAIL" : "ok");
    mx_free(&x);
    return fail;
}

/* Set up the case in x, run it on the matrix path of `isa` and return a
 * copy of the 16-bit output (*n elements); *bad is set on failure. */
static uint16_t *mx_run_saved(const mx_case *c, mx_data *x, fa_isa isa, size_t *n, int *bad)
{
    double eo, el;
    mx_alloc(c, x);
    mx_fill(c, x);
    *bad = mx_run(c, x, isa, 3, &eo, &el);
    *n = (size_t)x->tq * c->hq * c->dv;
    uint16_t *copy = malloc(*n * 2);
    memcpy(copy, x->out16, *n * 2);
    return copy;
}

/* Real tiles, where the CPU allows them: against the float64 reference
 * under the rule of the emulated bfloat16 cases (2x the vector path's
 * error + 2e-3).  The hardware's TDPBF16PS may sum in another order than
 * the SDM pseudocode the emulation follows, so agreement with the
 * emulation is only reported, not required.  Float16 (TDPFP16PS) also
 * needs the CPU's AMX-FP16. */
static int mx_real_vs_emu(const mx_case *c)
{
    fa_amx_info st;
    fa_amx_status(&st, 1);
    if (!fa_isa_supported(FA_ISA_AMX) || !st.available) {
        printf("real tiles vs emulation, %s: SKIPPED (%s)\n", c->name, st.reason);
        return 0;
    }
    if (c->dtype == FA_F16 && !st.amx_fp16) {
        printf("real tiles vs emulation, %s: SKIPPED (the CPU does not report AMX-FP16, "
               "cpuid leaf 7 subleaf 1 EAX bit 21: float16 runs on the vector kernels)\n",
               c->name);
        return 0;
    }
    mx_data x;
    mx_prepare(c, &x);
    double vo, vl, ro, rl, eo, el;
    int bad = mx_run(c, &x, FA_ISA_AVX512, 0, &vo, &vl);
    bad |= mx_run(c, &x, FA_ISA_AMX, 3, &ro, &rl);
    const size_t n = (size_t)x.tq * c->hq * c->dv;
    uint16_t *real = malloc(n * 2);
    memcpy(real, x.out16, n * 2);
    bad |= mx_run(c, &x, FA_ISA_AMX_EMU, 3, &eo, &el);
    size_t same = 0;
    for (size_t i = 0; i < n; i++) same += real[i] == x.out16[i];
    bad |= !(ro <= 2.0 * vo + 2e-3) || !(rl <= 4 * vl + 2e-6);
    printf("real tiles: out %.3g lse %.3g (vector %.3g, emulated %.3g); %zu of %zu outputs "
           "bit-equal to the emulation  %s\n", ro, rl, vo, eo, same, n, bad ? "FAIL" : "ok");
    free(real);
    mx_free(&x);
    return bad;
}

/* The self-test (amx/tile_canary.c) on the emulation: it passes, and an
 * injected mismatch and fault fail it.  On the real tiles (where the gate
 * allows them) the process's own decision must pass: a failure there is a
 * defect of the tile code, not a reason to skip. */
static int mx_self_test(void)
{
    static const int injects[] = {FA_INJECT_NONE, FA_INJECT_MISMATCH, FA_INJECT_SIGILL};
    int bad = 0;
    for (int i = 0; i < 3; i++) {
        char report[1024];
        double ms = 0;
        const int rc = fa_tile_self_test_run(FA_ISA_AMX_EMU, injects[i], 10, report, sizeof report, &ms);
        const int ok = (rc == FA_OK) == (injects[i] == FA_INJECT_NONE);
        printf("self-test on amx_emu, injection %d: %s (%.1f ms): %s\n", injects[i],
               ok ? "ok" : "FAIL", ms, report);
        bad |= !ok;
    }
    fa_amx_info st;
    fa_amx_status(&st, 1); /* runs the gate, then the process's self-test */
    fa_self_test_info self;
    fa_tile_self_test_status(&self);
    if (self.state == FA_SELF_TEST_NOT_RUN) {
        printf("self-test on the real tiles: SKIPPED (%s)\n", st.reason);
        return bad;
    }
    const int ok = self.state == FA_SELF_TEST_PASSED && st.available;
    printf("self-test on the real tiles: %s (%.1f ms): %s\n", ok ? "ok" : "FAIL", self.ms,
           self.report);
    return bad | !ok;
}

/* A child forked after the parent ran the matrix path on two threads gets
 * the same bits (it runs serially: OpenMP's pool does not survive fork). */
static int mx_fork_test(const mx_case *c)
{
    mx_data x;
    size_t n;
    int bad;
    double eo, el;
    uint16_t *first = mx_run_saved(c, &x, FA_ISA_AMX_EMU, &n, &bad);
    fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {
        memset(x.out16, 0, n * 2);
        const int r = mx_run(c, &x, FA_ISA_AMX_EMU, 3, &eo, &el);
        _exit(r || memcmp(first, x.out16, n * 2) != 0);
    }
    int status = 0;
    bad |= pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
           WEXITSTATUS(status) != 0;
    printf("forked child, same bits as its parent  %s\n", bad ? "FAIL" : "ok");
    free(first);
    mx_free(&x);
    return bad;
}

/* In a fresh child: a small sigaltstack installed before the first use; the
 * gate must refuse the tiles (or the CPU lacks them) without harm, the
 * default path must compute right, and the sigaltstack must be intact. */
static int mx_sigaltstack_test(const mx_case *c)
{
    fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {
        static char small[4096];
        stack_t ss = {.ss_sp = small, .ss_size = sizeof small, .ss_flags = 0}, now;
        if (sigaltstack(&ss, NULL) != 0) _exit(2);
        fa_amx_info st;
        fa_amx_status(&st, 1);
        printf("  small sigaltstack: AMX %s (%s; permission %s)\n",
               st.available ? "available" : "off", st.reason, st.permission);
        mx_data x;
        mx_alloc(c, &x);
        mx_fill(c, &x);
        fa_params p;
        mx_params(c, &x, &p);
        for (int b = 0; b < c->b; b++)
            for (int h = 0; h < c->hq; h++)
                for (int i = 0; i < x.nq_b[b]; i++) mx_ref_row(c, &p, &x, b, h, i);
        double eo, el;
        int bad = st.available; /* a 4 KB stack cannot hold a tile frame */
        bad |= mx_run(c, &x, fa_get_isa(), -1, &eo, &el) || !(eo < 2e-2);
        bad |= sigaltstack(NULL, &now) != 0 || now.ss_sp != small || now.ss_size != sizeof small;
        fflush(stdout);
        mx_free(&x);
        _exit(bad);
    }
    int status = 0;
    const int bad = pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
                    WEXITSTATUS(status) != 0;
    printf("small sigaltstack before first use  %s\n", bad ? "FAIL" : "ok");
    return bad;
}

#define BF FA_BF16
static const mx_case mx_cases[] = {
    /* name                      b hq hkv nq  nk   d  dv  cau win msk ali kvl var kt thr cap dtype prec */
    {"plain 40x70 d=24",         1, 1, 1, 40, 70, 24, 24, 0, 0, 0, 0, 0, 0, 0, 1, 0, BF, 0},
    {"odd 37x291 d=17 dv=9",     2, 2, 2, 37, 291, 17, 9, 0, 0, 0, 0, 0, 0, 0, 1, 0, BF, 0},
    {"causal br 70x100",         1, 2, 1, 70, 100, 32, 40, 1, 0, 0, 0, 0, 0, 0, 1, 0, BF, 0},
    {"causal tl 100x70",         1, 2, 2, 100, 70, 32, 32, 2, 0, 0, 0, 0, 0, 0, 1, 0, BF, 0},
    {"window 16 64x300",         1, 1, 1, 64, 300, 40, 16, 0, 16, 0, 0, 0, 0, 0, 1, 0, BF, 0},
    {"bool mask + alibi",        2, 2, 2, 33, 80, 32, 32, 0, 0, 1, 1, 0, 0, 0, 1, 0, BF, 0},
    {"additive mask + softcap",  1, 3, 1, 20, 130, 64, 32, 0, 0, 2, 0, 0, 0, 0, 1, 5.0, BF, 0},
    {"gqa 4:1 kv_len K^T",       2, 4, 1, 16, 90, 32, 48, 1, 0, 0, 0, 1, 0, 1, 2, 0, BF, 0},
    {"kv_len, an empty batch",   2, 2, 1, 20, 40, 16, 16, 1, 0, 0, 0, 2, 0, 0, 1, 0, BF, 0},
    {"packed varlen",            3, 2, 2, 50, 120, 16, 16, 1, 0, 0, 1, 0, 1, 0, 2, 0, BF, 0},
    {"varlen, a batch no query", 3, 2, 1, 30, 50, 16, 16, 1, 0, 0, 0, 0, 2, 0, 1, 0, BF, 0},
    {"split-KV 16x1100 2 thr",   1, 1, 1, 16, 1100, 32, 32, 0, 0, 0, 0, 0, 0, 0, 2, 0, BF, 0},
    {"f16 causal gqa",           1, 4, 2, 24, 150, 32, 32, 1, 0, 0, 0, 0, 0, 0, 1, 0, FA_F16, 0},
    {"f16 mask window",          1, 1, 1, 40, 200, 16, 48, 0, 20, 2, 0, 0, 0, 0, 2, 0, FA_F16, 0},
    {"f32 bf16 mask causal",     1, 2, 2, 48, 150, 32, 32, 1, 0, 1, 0, 0, 0, 0, 1, 0, FA_F32, 1},
    {"f32 bf16x3",               1, 2, 1, 40, 200, 48, 24, 0, 0, 0, 0, 0, 0, 0, 1, 0, FA_F32, 2},
    {"f32 bf16x3 alibi cap K^T", 1, 1, 1, 20, 70, 32, 32, 2, 0, 0, 1, 0, 0, 1, 2, 3.0, FA_F32, 2},
};

int main(void)
{
    /* first, while nothing of the core has run in this process */
    int bad = mx_sigaltstack_test(&mx_cases[2]);
    if (!fa_isa_supported(FA_ISA_AMX_EMU)) {
        printf("matrix kernels: SKIPPED (the emulated path needs AVX-512 and AVX512-BF16)\n");
        return bad;
    }
    const int ncases = (int)(sizeof mx_cases / sizeof mx_cases[0]);
    for (int i = 0; i < ncases; i++) {
        const mx_case *c = &mx_cases[i];
        if (c->dtype == FA_F32 && c->precision == FA_PRECISION_BF16X3)
            bad |= mx_case_run(c, 50.0, 2e-5);
        else if (c->dtype == FA_F32)
            bad |= mx_case_run(c, 0.0, 1.5e-2);
        else
            bad |= mx_case_run(c, 2.0, 2e-3);
    }
    bad |= mx_fork_test(&mx_cases[9]);
    bad |= mx_self_test();
    bad |= mx_real_vs_emu(&mx_cases[1]);
    bad |= mx_real_vs_emu(&mx_cases[12]); /* float16: TDPFP16PS */
    printf(bad ? "test_matrix: FAILED\n" : "test_matrix: all passed\n");
    return bad;
}
