/*
 * test_core.c: drives the C core directly (no Python) on every ISA path this
 * CPU supports and compares with a naive float64 attention.  Used to check
 * builds for other architectures (e.g. aarch64 under qemu-user) where the
 * Python package is not built; see tools/check_c_core.sh.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../fastattn.h"

static double frand(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return ((*s >> 8) & 0xFFFF) / 32768.0 - 1.0;
}

/* Naive attention for one (b, h) with causal offset (or none). */
static void naive(const float *q, const float *k, const float *v, int nq, int nk,
                  int d, int dv, int causal, long off, double scale, double *out)
{
    double *s = malloc(sizeof(double) * (nk > 0 ? nk : 1));
    for (int i = 0; i < nq; i++) {
        double m = -INFINITY, l = 0;
        for (int j = 0; j < nk; j++) {
            double acc = 0;
            for (int c = 0; c < d; c++) acc += (double)q[i * d + c] * k[j * d + c];
            s[j] = (causal && j > i + off) ? -INFINITY : acc * scale;
            if (s[j] > m) m = s[j];
        }
        for (int e = 0; e < dv; e++) out[i * dv + e] = 0;
        if (m == -INFINITY) continue;
        for (int j = 0; j < nk; j++) l += exp(s[j] - m);
        for (int j = 0; j < nk; j++) {
            const double p = exp(s[j] - m) / l;
            for (int e = 0; e < dv; e++) out[i * dv + e] += p * v[j * dv + e];
        }
    }
    free(s);
}

static int run_case(int nq, int nk, int d, int dv, int causal)
{
    unsigned seed = 12345u + nq * 7 + nk * 13 + d;
    float *q = malloc(sizeof(float) * nq * d + 4), *k = malloc(sizeof(float) * nk * d + 4);
    float *v = malloc(sizeof(float) * nk * dv + 4), *o = malloc(sizeof(float) * nq * dv + 4);
    double *ref = malloc(sizeof(double) * nq * dv + 8);
    for (int i = 0; i < nq * d; i++) q[i] = (float)frand(&seed);
    for (int i = 0; i < nk * d; i++) k[i] = (float)frand(&seed);
    for (int i = 0; i < nk * dv; i++) v[i] = (float)frand(&seed);
    const double scale = 1.0 / sqrt((double)d);
    naive(q, k, v, nq, nk, d, dv, causal, nk - nq, scale, ref);
    int bad = 0;
    for (int isa = 0; isa < fa_isa_count(); isa++) {
        if (!fa_isa_supported((fa_isa)isa)) continue;
        fa_set_isa((fa_isa)isa);
        fa_params p = {0};
        p.dtype = FA_F32;
        p.batch = 1; p.h_q = 1; p.h_kv = 1; p.n_q = nq; p.n_k = nk; p.d = d; p.dv = dv;
        p.q = q; p.q_sn = d; p.q_sd = 1;
        p.k = k; p.k_sn = d; p.k_sd = 1;
        p.v = v; p.v_sn = dv; p.v_sd = 1;
        p.out = o; p.o_sn = dv; p.o_sd = 1;
        p.band_lo = FA_UNBOUNDED_LO; p.band_from_end = 1;
        p.band_hi = causal ? 0 : FA_UNBOUNDED_HI;
        p.scale = scale;
        if (fa_attention(&p) != FA_OK) { printf("FAIL status\n"); bad++; continue; }
        double err = 0;
        for (int i = 0; i < nq * dv; i++) {
            const double e = fabs((double)o[i] - ref[i]);
            if (!(e <= err)) err = e; /* NaN counts as a failure */
        }
        const int ok = err <= 2e-5;
        printf("%-6s nq=%4d nk=%4d d=%3d dv=%3d causal=%d  max err %.2e %s\n",
               fa_isa_name((fa_isa)isa), nq, nk, d, dv, causal, err, ok ? "ok" : "FAIL");
        bad += !ok;
    }
    free(q); free(k); free(v); free(o); free(ref);
    return bad;
}

/* The names of the enums of fastattn.h: every fa_isa value names a path
 * of the registry, distinct from the others, and the family and policy
 * names are the ones the binding reports. */
static int check_names(void)
{
    int bad = 0;
    if (fa_isa_count() != FA_ISA_COUNT) { printf("FAIL fa_isa_count %d\n", fa_isa_count()); bad++; }
    static const char *const isa[FA_ISA_COUNT] = {
        [FA_ISA_SCALAR] = "scalar", [FA_ISA_AVX2] = "avx2", [FA_ISA_AVX512] = "avx512",
        [FA_ISA_NEON] = "neon", [FA_ISA_AMX] = "amx", [FA_ISA_AMX_EMU] = "amx_emu"};
    for (int i = 0; i < FA_ISA_COUNT; i++)
        if (!isa[i] || strcmp(fa_isa_name((fa_isa)i), isa[i]) != 0) {
            printf("FAIL fa_isa %d is named %s\n", i, fa_isa_name((fa_isa)i));
            bad++;
        }
    static const char *const family[FA_FAMILY_COUNT] = {
        [FA_FAMILY_TILE] = "tile", [FA_FAMILY_ROWS] = "rows", [FA_FAMILY_WEIGHTS] = "weights",
        [FA_FAMILY_MATRIX] = "matrix"};
    for (int i = 0; i < FA_FAMILY_COUNT; i++)
        if (!family[i] || strcmp(fa_family_name(i), family[i]) != 0) {
            printf("FAIL family %d is named %s\n", i, fa_family_name(i));
            bad++;
        }
    if (strcmp(fa_family_name(FA_FAMILY_COUNT), "unknown") != 0 ||
        strcmp(fa_isa_name(FA_ISA_COUNT), "unknown") != 0) {
        printf("FAIL out-of-range names\n");
        bad++;
    }
    const int policy = fa_bf16_tile_policy();
    const char *env = getenv("FASTATTN_BF16_TILE");
    if ((policy != FA_BF16_TILE_PAIRS && policy != FA_BF16_TILE_WIDEN) ||
        (env && strcmp(env, fa_bf16_tile_name(policy)) != 0 &&
         (!strcmp(env, "pairs") || !strcmp(env, "widen")))) {
        printf("FAIL bf16 tile policy %d under FASTATTN_BF16_TILE=%s\n", policy, env ? env : "");
        bad++;
    }
    printf("names: %s (bf16 tile policy: %s)\n", bad ? "FAIL" : "ok", fa_bf16_tile_name(policy));
    return bad;
}

/* The self-test of the tiles (amx/tile_canary.c): a canary that passes,
 * and every injected failure, each contained in the canary's child.  The
 * subject is the tile emulation where this CPU runs it, otherwise the
 * current vector path (the harness alone: fork, wait, checks, reports). */
static int check_self_test(void)
{
    int bad = 0;
    const int subject = fa_isa_supported(FA_ISA_AMX_EMU) ? FA_ISA_AMX_EMU : (int)fa_get_isa();
    static const struct {
        int inject;
        const char *expect; /* in the report */
    } cases[] = {
        {FA_INJECT_NONE, "passed: "},
        {FA_INJECT_MISMATCH, "the output differs from the vector path's by 0.5"},
        {FA_INJECT_NAN, "the output differs from the vector path's by nan"},
        {FA_INJECT_SIGILL, "killed by signal 4 (SIGILL)"},
        {FA_INJECT_SIGSEGV, "killed by signal 11 (SIGSEGV)"},
        {FA_INJECT_SIGBUS, "(SIGBUS)"},
        {FA_INJECT_HANG, "no result within 0.5 s (the child process was killed)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char report[1024];
        double ms = -1;
        const int rc = fa_tile_self_test_run(subject, cases[i].inject, 0.5, report, sizeof report, &ms);
        const int ok = (rc == FA_OK) == (cases[i].inject == FA_INJECT_NONE) &&
                       strstr(report, cases[i].expect) != NULL &&
                       (cases[i].inject == FA_INJECT_NONE ||
                        strstr(report, "the bfloat16 kernel on the causal (bottom-right) case"));
        printf("self-test on %s, injection %d: %s (%.1f ms): %s\n", fa_isa_name((fa_isa)subject),
               cases[i].inject, ok ? "ok" : "FAIL", ms, report);
        bad += !ok;
    }
    /* refused without running: the real tiles where the CPU lacks them */
    char report[256];
    if (!fa_isa_supported(FA_ISA_AMX) &&
        fa_tile_self_test_run(FA_ISA_AMX, FA_INJECT_NONE, 1, report, sizeof report, NULL) != FA_ERR_PARAMS) {
        printf("FAIL self-test on absent tiles did not refuse\n");
        bad++;
    }
    /* the process's decision: taken once, reported, announced once */
    fa_self_test_info st;
    fa_tile_self_test_status(&st);
    const int before = st.state;
    const int d1 = fa_tile_self_test_decide(subject, FA_INJECT_MISMATCH, 5);
    const int d2 = fa_tile_self_test_decide(subject, FA_INJECT_NONE, 5);
    fa_tile_self_test_status(&st);
    const int n1 = fa_tile_self_test_news(), n2 = fa_tile_self_test_news();
    if (before != FA_SELF_TEST_NOT_RUN || d1 != FA_SELF_TEST_FAILED || d2 != FA_SELF_TEST_FAILED ||
        st.state != FA_SELF_TEST_FAILED || !strstr(st.report, "differs") || n1 != 1 || n2 != 0) {
        printf("FAIL self-test decision: before %d, %d then %d, state %d, news %d %d: %s\n",
               before, d1, d2, st.state, n1, n2, st.report);
        bad++;
    }
    printf("self-test: %s\n", bad ? "FAIL" : "ok");
    return bad;
}

int main(void)
{
    int bad = check_names();
    bad += run_case(17, 33, 8, 8, 0);
    bad += run_case(129, 200, 64, 32, 1);
    bad += run_case(1, 1500, 128, 128, 0); /* decode kernel + split keys */
    bad += run_case(3, 700, 17, 9, 1);
    bad += run_case(70, 70, 80, 80, 0);
    bad += check_self_test(); /* last: it takes the process's decision */
    printf(bad ? "%d FAILED\n" : "all ok\n", bad);
    return bad != 0;
}
