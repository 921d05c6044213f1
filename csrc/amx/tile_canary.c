/*
 * tile_canary.c: the self-test of the real AMX tiles (tile_canary.h; the
 * public interface is fa_tile_self_test_* in fastattn.h).
 *
 * Containment: the canary runs in a child made by fork(), never in the
 * caller's process.  Signal handlers installed for the canary would be
 * process-wide: they would catch other threads' faults while it runs, and
 * a fault inside a tile instruction can leave the tile state undefined for
 * the thread that goes on.  A child keeps every fault its own: SIGILL,
 * SIGSEGV or SIGBUS kills only the child, a hang is cut by SIGKILL after a
 * timeout, and the caller's signal handlers, signal mask and threads are
 * never touched.  What fork() costs: the page tables of the process are
 * copied (measured in docs/amx.md), and the pthread_atfork handlers of the
 * loaded libraries run, as for os.fork().  The child runs single-threaded
 * (OpenMP is never entered after a fork: attention.c), gives every signal
 * the caller handles its default action (the fault signals through the
 * system call, past any interposed sigaction), ignores SIGINT, SIGQUIT and
 * SIGTSTP (a terminal's keys must not read as a fault), writes no core file, writes its results
 * into a shared anonymous mapping and leaves with _exit().
 *
 * Its exit status is read with waitpid() on its own pid.  If the caller has
 * SIGCHLD ignored or reaps children itself (waitpid(-1)), the status is lost
 * to us (ECHILD): a flag the child sets in the mapping after its last case
 * then says whether it finished.
 *
 * The check: every matrix kernel this CPU runs (bfloat16; float16 with
 * AMX-FP16; float32 with precision bf16 and bf16x3), GQA (4 query heads on 2
 * kv heads), 37 queries and 45 keys, d = 72 and dv = 40 (full and partial
 * tiles along rows, keys, d and dv), bottom-right causal, and an additive
 * float32 mask.  The child's outputs and lse are compared with the vector
 * path's (computed here, in the caller's thread, with the matrix family off)
 * under the rule of the tests (tests/support/matrix.py):
 *     max|matrix - vector| <= 2 max|plain - vector| + floor
 * where plain is the computation at the operands' precision (operands and P
 * rounded to the 16-bit type, the row sum from the rounded P), done here in
 * double; for bf16x3 the bound is 1/50 of bfloat16's.  The floor allows the
 * float32 rounding of a sum of nk terms and one rounding of the output to
 * its type.
 *
 * Then the linear layer's tile products (kernels/linear_tiles.h): a 37 x 72
 * by 72 x 40 product with bias on bfloat16 weights (TDPBF16PS) and, where
 * the CPU has AMX-INT8, on int8 weights (TDPBSSD): K not a whole tile
 * step and a last single panel.  Each is held against the vector path's
 * result: both sum the same exact products (of the bfloat16 operands, or
 * the exact int32 block sums scaled in float32) in float32, so they may
 * differ by the float32 roundings of two summation orders,
 *     |tiles - vector| <= 2 (k + 4) 2^-24 sum_k |x w|
 * (for int8, |x| plus its block's step); a wrong product is far beyond.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "tile_canary.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../dispatch.h"
#include "../fastattn.h"
#include "../half.h"
#include "amx_gate.h"

#if defined(__linux__)
#define FA_CANARY_FORK 1
#include <errno.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#else
#define FA_CANARY_FORK 0
#endif

/* The process-wide decision waits this long for the child. */
#define FA_CANARY_TIMEOUT_S 10.0

/* Sizes of every case (see the file comment). */
enum { CN_HQ = 4, CN_HKV = 2, CN_NQ = 37, CN_NK = 45, CN_D = 72, CN_DV = 40 };
#define CN_Q (CN_HQ * CN_NQ * CN_D)
#define CN_K (CN_HKV * CN_NK * CN_D)
#define CN_V (CN_HKV * CN_NK * CN_DV)
#define CN_O (CN_HQ * CN_NQ * CN_DV)
#define CN_L (CN_HQ * CN_NQ)
#define CN_M (CN_NQ * CN_NK)

typedef struct {
    const char *kernel; /* as reported */
    fa_dtype dtype;
    int precision;
} fa_canary_kernel;

static const fa_canary_kernel fa_canary_kernels[] = {
    {"bfloat16", FA_BF16, FA_PRECISION_HIGHEST},
    {"float16", FA_F16, FA_PRECISION_HIGHEST},
    {"float32 precision=\"bf16\"", FA_F32, FA_PRECISION_BF16},
    {"float32 precision=\"bf16x3\"", FA_F32, FA_PRECISION_BF16X3},
};
#define FA_CANARY_KERNELS 4
#define FA_CANARY_VARIANTS 2 /* 0: causal; 1: additive mask */
#define FA_CANARY_CASES (FA_CANARY_KERNELS * FA_CANARY_VARIANTS)

static const char *const fa_canary_variant_names[FA_CANARY_VARIANTS] = {
    "causal (bottom-right)", "additive float32 mask"};

/* The linear-layer cases, after the attention cases: bfloat16, int8. */
enum { CL_M = 37, CL_K = 72, CL_N = 40, CL_KP = 96 /* K padded to 32 */, CL_P = 3 /* panels */ };
#define FA_CANARY_LINEAR 2
#define FA_CANARY_ALL (FA_CANARY_CASES + FA_CANARY_LINEAR)

/* What the child leaves in the shared mapping. */
typedef struct {
    volatile int started;        /* cases begun (the case that faults is started - 1) */
    volatile int finished;       /* 1 once every case ran */
    volatile int status[FA_CANARY_CASES]; /* fa_attention's status */
    volatile int family[FA_CANARY_CASES]; /* the planned kernel family */
    float lse[FA_CANARY_CASES][CN_L];
    float out[FA_CANARY_CASES][CN_O]; /* 16-bit outputs use the first half */
    volatile int lin_status[FA_CANARY_LINEAR]; /* fa_linear_f32's */
    volatile int lin_tiles[FA_CANARY_LINEAR];  /* 1 if it ran on the subject's tiles */
    float lin[FA_CANARY_LINEAR][CL_M * CL_N];
} fa_canary_shared;

/* The fixed inputs: float values, their 16-bit forms, the mask. */
typedef struct {
    float q[CN_Q], k[CN_K], v[CN_V], mask[CN_M];
    float ref_out[CN_O], ref_lse[CN_L]; /* the vector path's results of a case */
    uint16_t q_bf[CN_Q], k_bf[CN_K], v_bf[CN_V];
    uint16_t q_h[CN_Q], k_h[CN_K], v_h[CN_V];
    float qr[2][CN_Q], kr[2][CN_K], vr[2][CN_V]; /* rounded to bfloat16 [0], float16 [1] */
    double vmax, smax; /* max|v|, and the largest scale * sum_c |q_c k_c| */
    /* the linear cases: x, the bias, the weight packed as bfloat16 pairs
     * and as int8 quads with its column scales (kernels/linear.h and
     * linear_i8.h), and their float values (the weight as rounded or
     * dequantized) */
    float lx[CL_M * CL_K], lbias[CL_N], lw[2][CL_N * CL_K], lscale[CL_P * 16];
    uint16_t lw_bf[CL_P * CL_KP * 16];
    int8_t lw_q[CL_P * CL_KP * 16];
    float lref[CL_M * CL_N]; /* the vector path's result of a linear case */
    /* the plain computations' outputs and lse, [half][variant] */
    double plain[2 * FA_CANARY_VARIANTS * (CN_O + CN_L)];
} fa_canary_inputs;

static void fa_canary_fill(fa_canary_inputs *in)
{
    uint64_t s = 0x9e3779b97f4a7c15ull;
#define FA_CN_NEXT() (s = s * 6364136223846793005ull + 1442695040888963407ull, \
                      (double)(s >> 11) * (1.0 / 9007199254740992.0))
    for (int i = 0; i < CN_Q; i++) in->q[i] = (float)(4.0 * FA_CN_NEXT() - 2.0);
    for (int i = 0; i < CN_K; i++) in->k[i] = (float)(4.0 * FA_CN_NEXT() - 2.0);
    for (int i = 0; i < CN_V; i++) in->v[i] = (float)(2.0 * FA_CN_NEXT() - 1.0);
    for (int i = 0; i < CN_M; i++) in->mask[i] = (float)(-3.0 * FA_CN_NEXT());
    for (int i = 0; i < CN_Q; i++) in->q_bf[i] = fa_f32_to_bf16(in->q[i]), in->q_h[i] = fa_f32_to_half(in->q[i]);
    for (int i = 0; i < CN_K; i++) in->k_bf[i] = fa_f32_to_bf16(in->k[i]), in->k_h[i] = fa_f32_to_half(in->k[i]);
    for (int i = 0; i < CN_V; i++) in->v_bf[i] = fa_f32_to_bf16(in->v[i]), in->v_h[i] = fa_f32_to_half(in->v[i]);
    for (int i = 0; i < CN_Q; i++)
        in->qr[0][i] = fa_bf16_to_f32(in->q_bf[i]), in->qr[1][i] = fa_half_to_f32(in->q_h[i]);
    for (int i = 0; i < CN_K; i++)
        in->kr[0][i] = fa_bf16_to_f32(in->k_bf[i]), in->kr[1][i] = fa_half_to_f32(in->k_h[i]);
    for (int i = 0; i < CN_V; i++)
        in->vr[0][i] = fa_bf16_to_f32(in->v_bf[i]), in->vr[1][i] = fa_half_to_f32(in->v_h[i]);
    in->vmax = in->smax = 0;
    for (int i = 0; i < CN_V; i++)
        if (fabs(in->v[i]) > in->vmax) in->vmax = fabs(in->v[i]);
    for (int i = 0; i < CN_HQ * CN_NQ; i++)
        for (int j = 0; j < CN_NK; j++) {
            const float *q = in->q + (size_t)i * CN_D;
            const float *k = in->k + ((size_t)(i / CN_NQ / (CN_HQ / CN_HKV)) * CN_NK + j) * CN_D;
            double a = 0;
            for (int c = 0; c < CN_D; c++) a += fabs((double)q[c] * k[c]);
            if (a > in->smax) in->smax = a;
        }
    in->smax /= sqrt((double)CN_D);
    /* the linear cases */
    s = 0x2545f4914f6cdd1dull;
    double w[CL_N * CL_K];
    for (int i = 0; i < CL_M * CL_K; i++) in->lx[i] = (float)(4.0 * FA_CN_NEXT() - 2.0);
    for (int i = 0; i < CL_N * CL_K; i++) w[i] = 2.0 * FA_CN_NEXT() - 1.0;
    for (int i = 0; i < CL_N; i++) in->lbias[i] = (float)(FA_CN_NEXT() - 0.5);
#undef FA_CN_NEXT
    memset(in->lw_bf, 0, sizeof in->lw_bf);
    memset(in->lw_q, 0, sizeof in->lw_q);
    memset(in->lscale, 0, sizeof in->lscale);
    for (int c = 0; c < CL_N; c++) {
        double amax = 0;
        for (int k = 0; k < CL_K; k++) amax = fmax(amax, fabs(w[c * CL_K + k]));
        in->lscale[c] = (float)(amax / 127);
        for (int k = 0; k < CL_K; k++) {
            /* panel c / 16, then pair (k / 2) or quad (k / 4) rows of 16 columns */
            const uint16_t b = fa_f32_to_bf16((float)w[c * CL_K + k]);
            const int q = (int)lrint(w[c * CL_K + k] / in->lscale[c]);
            in->lw_bf[((c / 16) * CL_KP + (k & ~1)) * 16 + (c % 16) * 2 + (k & 1)] = b;
            in->lw_q[((c / 16) * CL_KP + (k & ~3)) * 16 + (c % 16) * 4 + (k & 3)] = (int8_t)q;
            in->lw[0][c * CL_K + k] = fa_bf16_to_f32(b);
            in->lw[1][c * CL_K + k] = (float)q * in->lscale[c];
        }
    }
}

/* Linear case l (0: bfloat16, 1: int8) into y, single-threaded. */
static int fa_canary_linear(const fa_canary_inputs *in, int l, float *y)
{
    return fa_linear_f32(in->lx, CL_M, CL_K, CL_K, l ? (const void *)in->lw_q : in->lw_bf,
                         l ? FA_LIN_I8 : FA_LIN_BF16, l ? in->lscale : NULL, CL_N, in->lbias, NULL,
                         0, FA_ACT_NONE, y, CL_N, 1);
}

/* The parameters of case c (kernel c / 2, variant c % 2), writing to out
 * and lse; single-threaded. */
static void fa_canary_params(fa_params *p, const fa_canary_inputs *in, int c, void *out, float *lse)
{
    const fa_canary_kernel *kn = &fa_canary_kernels[c / FA_CANARY_VARIANTS];
    memset(p, 0, sizeof *p);
    p->dtype = kn->dtype;
    p->precision = kn->precision;
    p->batch = 1, p->h_q = CN_HQ, p->h_kv = CN_HKV, p->n_q = CN_NQ, p->n_k = CN_NK;
    p->d = CN_D, p->dv = CN_DV;
    p->q = kn->dtype == FA_BF16 ? (const void *)in->q_bf : kn->dtype == FA_F16 ? (const void *)in->q_h : in->q;
    p->k = kn->dtype == FA_BF16 ? (const void *)in->k_bf : kn->dtype == FA_F16 ? (const void *)in->k_h : in->k;
    p->v = kn->dtype == FA_BF16 ? (const void *)in->v_bf : kn->dtype == FA_F16 ? (const void *)in->v_h : in->v;
    p->q_sb = CN_Q, p->q_sh = CN_NQ * CN_D, p->q_sn = CN_D, p->q_sd = 1;
    p->k_sb = CN_K, p->k_sh = CN_NK * CN_D, p->k_sn = CN_D, p->k_sd = 1;
    p->v_sb = CN_V, p->v_sh = CN_NK * CN_DV, p->v_sn = CN_DV, p->v_sd = 1;
    p->out = out;
    p->o_sb = CN_O, p->o_sh = CN_NQ * CN_DV, p->o_sn = CN_DV, p->o_sd = 1;
    p->lse = lse;
    p->l_sb = CN_L, p->l_sh = CN_NQ, p->l_sn = 1;
    p->band_lo = FA_UNBOUNDED_LO, p->band_hi = FA_UNBOUNDED_HI;
    if (c % FA_CANARY_VARIANTS == 0) {
        p->band_hi = 0;
        p->band_from_end = 1;
    } else {
        p->mask_kind = FA_MASK_ADD_F32;
        p->mask = in->mask;
        p->m_sq = CN_NK, p->m_sk = 1; /* broadcast over batch and heads */
    }
    p->scale = 1.0 / sqrt((double)CN_D);
    p->num_threads = 1;
}

static double fa_canary_get(fa_dtype dtype, const void *buf, int i)
{
    if (dtype == FA_BF16) return fa_bf16_to_f32(((const uint16_t *)buf)[i]);
    if (dtype == FA_F16) return fa_half_to_f32(((const uint16_t *)buf)[i]);
    return ((const float *)buf)[i];
}

static void fa_canary_set(fa_dtype dtype, void *buf, int i, float x)
{
    if (dtype == FA_BF16) ((uint16_t *)buf)[i] = fa_f32_to_bf16(x);
    else if (dtype == FA_F16) ((uint16_t *)buf)[i] = fa_f32_to_half(x);
    else ((float *)buf)[i] = x;
}

static float fa_canary_round(int half, float x)
{
    return half ? fa_half_to_f32(fa_f32_to_half(x)) : fa_bf16_to_f32(fa_f32_to_bf16(x));
}

/* The plain computation at 16-bit precision (half: float16, else
 * bfloat16) of variant `variant`, in double: operands rounded to the type,
 * float32 scores, P rounded to the type, the row sum from the rounded P;
 * the lse from the unrounded probabilities. */
static void fa_canary_plain(const fa_canary_inputs *in, int half, int variant, double *out, double *lse)
{
    const double scale = 1.0 / sqrt((double)CN_D);
    double s[CN_NK];
    float p[CN_NK];
    for (int h = 0; h < CN_HQ; h++) {
        const int hk = h / (CN_HQ / CN_HKV);
        for (int i = 0; i < CN_NQ; i++) {
            const float *q = in->qr[half] + ((size_t)h * CN_NQ + i) * CN_D;
            double m = -INFINITY;
            for (int j = 0; j < CN_NK; j++) {
                const float *k = in->kr[half] + ((size_t)hk * CN_NK + j) * CN_D;
                if (variant == 0 && j > i + CN_NK - CN_NQ) { s[j] = -INFINITY; continue; }
                double acc = 0;
                for (int c = 0; c < CN_D; c++) acc += (double)q[c] * k[c];
                s[j] = (float)(acc * scale);
                if (variant == 1) s[j] = (float)(s[j] + in->mask[i * CN_NK + j]);
                if (s[j] > m) m = s[j];
            }
            double total = 0, exact = 0;
            for (int j = 0; j < CN_NK; j++) {
                const double e = exp(s[j] - m);
                exact += e;
                p[j] = fa_canary_round(half, (float)e);
                total += p[j];
            }
            lse[h * CN_NQ + i] = m + log(exact);
            for (int c = 0; c < CN_DV; c++) {
                double acc = 0;
                for (int j = 0; j < CN_NK; j++)
                    acc += (double)p[j] * in->vr[half][((size_t)hk * CN_NK + j) * CN_DV + c];
                out[(h * CN_NQ + i) * CN_DV + c] = acc / total;
            }
        }
    }
}

/* The calling thread's role: 0 none, 1 computing the canary's reference
 * (matrix family off), 2 the canary's child (the matrix family runs
 * without the decision it is deciding). */
static _Thread_local int fa_canary_role = 0;

int fa_canary_matrix_off(void) { return fa_canary_role == 1; }

static const char *fa_signal_name(int sig)
{
#if FA_CANARY_FORK
    switch (sig) {
    case SIGILL: return "SIGILL";
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGABRT: return "SIGABRT";
    case SIGTRAP: return "SIGTRAP";
    case SIGKILL: return "SIGKILL";
    case SIGTERM: return "SIGTERM";
    default: break;
    }
#endif
    (void)sig;
    return "a signal";
}

static double fa_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Whether the canary runs kernel kn for subject: float16 on the real tiles
 * needs AMX-FP16. */
static int fa_canary_runs_kernel(int subject, int kernel)
{
    if (fa_canary_kernels[kernel].dtype != FA_F16) return 1;
    return subject != FA_ISA_AMX || fa_amx_fp16_available();
}

/* Linear case l (1: int8) runs where the tiles have TDPBSSD. */
static int fa_canary_runs_linear(int subject, int l)
{
    return l == 0 || subject != FA_ISA_AMX || fa_amx_int8_available();
}

#if FA_CANARY_FORK
/* Give sig its default action in the child.  On x86-64 Linux through the
 * system call itself: a preloaded library that interposes sigaction (a
 * sanitizer runtime, a crash reporter) would otherwise keep its own
 * handler, and the child would report a fault its own way instead of dying
 * of it. */
static void fa_canary_default_action(int sig, const struct sigaction *dfl)
{
#if defined(__x86_64__)
    (void)dfl;
    struct {
        void (*handler)(int);
        unsigned long flags;
        void (*restorer)(void);
        uint64_t mask;
    } k = {SIG_DFL, 0, NULL, 0}; /* the kernel's struct sigaction */
    syscall(SYS_rt_sigaction, sig, &k, NULL, sizeof k.mask);
#else
    sigaction(sig, dfl, NULL);
#endif
}

/* The child: run every case on the subject's path, with the injection. */
static void fa_canary_child(fa_canary_shared *sh, const fa_canary_inputs *in, int subject, int inject)
{
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    struct sigaction dfl, ign;
    memset(&dfl, 0, sizeof dfl);
    memset(&ign, 0, sizeof ign);
    dfl.sa_handler = SIG_DFL;
    ign.sa_handler = SIG_IGN;
    sigset_t faults;
    sigemptyset(&faults);
    const int fault_signals[] = {SIGILL, SIGSEGV, SIGBUS, SIGFPE, SIGTRAP, SIGABRT};
    for (size_t i = 0; i < sizeof fault_signals / sizeof *fault_signals; i++) {
        fa_canary_default_action(fault_signals[i], &dfl);
        sigaddset(&faults, fault_signals[i]);
    }
    sigprocmask(SIG_UNBLOCK, &faults, NULL);
    /* none of the caller's handlers runs in the child (Python's would
     * write to the wakeup fd it shares with the caller) */
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction cur;
        if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, NULL, &cur) != 0) continue;
        if (!(cur.sa_flags & SA_SIGINFO) && (cur.sa_handler == SIG_DFL || cur.sa_handler == SIG_IGN))
            continue;
        sigaction(sig, &dfl, NULL);
    }
    /* a terminal's Ctrl-C, Ctrl-\ or Ctrl-Z must not read as a fault */
    sigaction(SIGINT, &ign, NULL);
    sigaction(SIGQUIT, &ign, NULL);
    sigaction(SIGTSTP, &ign, NULL);

    const int matrix = subject == FA_ISA_AMX || subject == FA_ISA_AMX_EMU;
    fa_canary_role = matrix ? 2 : 1;
    if (fa_set_isa((fa_isa)subject) != FA_OK) _exit(3);
    for (int c = 0; c < FA_CANARY_CASES; c++) {
        if (!fa_canary_runs_kernel(subject, c / FA_CANARY_VARIANTS)) continue;
        sh->started = c + 1;
        if (c == 0) {
            if (inject == FA_INJECT_SIGILL) {
#if defined(__x86_64__)
                __asm__ volatile("ud2"); /* an undefined instruction, as a bad tile op */
#else
                raise(SIGILL);
#endif
            }
            if (inject == FA_INJECT_SIGSEGV) { /* a store to a page without access */
                void *page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                if (page != MAP_FAILED) *(volatile int *)page = 1;
                raise(SIGSEGV);
            }
            if (inject == FA_INJECT_SIGBUS) raise(SIGBUS);
            if (inject == FA_INJECT_HANG)
                for (;;) pause();
        }
        fa_params p;
        fa_canary_params(&p, in, c, sh->out[c], sh->lse[c]);
        fa_plan_info plan;
        sh->family[c] = fa_plan(&p, &plan) == FA_OK ? plan.family : -1;
        sh->status[c] = fa_attention(&p);
        if (c == 0 && inject == FA_INJECT_MISMATCH)
            fa_canary_set(p.dtype, sh->out[c], 17, (float)fa_canary_get(p.dtype, sh->out[c], 17) + 0.5f);
        if (c == 0 && inject == FA_INJECT_NAN) fa_canary_set(p.dtype, sh->out[c], 17, NAN);
    }
    for (int l = 0; l < FA_CANARY_LINEAR; l++) {
        if (!fa_canary_runs_linear(subject, l)) continue;
        sh->started = FA_CANARY_CASES + l + 1;
        sh->lin_tiles[l] = strcmp(fa_linear_kernel(l ? FA_LIN_I8 : FA_LIN_BF16),
                                  fa_isa_name((fa_isa)subject)) == 0;
        sh->lin_status[l] = fa_canary_linear(in, l, sh->lin[l]);
    }
    sh->finished = 1;
    /* the child's copy of the parent's block: freed, so that a leak
     * checker following the fork (valgrind) finds nothing lost */
    free((void *)in);
    _exit(0);
}
#endif

/* Write "the <kernel> kernel on <variant> (sizes)" for case c (or the
 * linear case c - FA_CANARY_CASES). */
static void fa_canary_case_text(char *buf, size_t cap, int c)
{
    if (c >= FA_CANARY_CASES) {
        snprintf(buf, cap, "the linear layer on %s weights (37 x 72 by 72 x 40, with bias)",
                 c == FA_CANARY_CASES ? "bfloat16" : "int8");
        return;
    }
    snprintf(buf, cap, "the %s kernel on the %s case (4 query heads on 2 kv heads, 37 queries, "
             "45 keys, d 72, dv 40)", fa_canary_kernels[c / FA_CANARY_VARIANTS].kernel,
             fa_canary_variant_names[c % FA_CANARY_VARIANTS]);
}

/* Compare case c's child results with the vector path; 0 if within the
 * rule, else 1 with the report written. */
static int fa_canary_check(const fa_canary_shared *sh, fa_canary_inputs *in, int c,
                           const double *plain_out, const double *plain_lse,
                           const double *bf16_err, double *plain_errs, char *report, size_t cap)
{
    const fa_canary_kernel *kn = &fa_canary_kernels[c / FA_CANARY_VARIANTS];
    float *vec_lse = in->ref_lse;
    void *vo = in->ref_out; /* 16-bit outputs use its first half */
    fa_params p;
    fa_canary_params(&p, in, c, vo, vec_lse);
    fa_canary_role = 1;
    const int st = fa_attention(&p);
    fa_canary_role = 0;
    char what[256];
    fa_canary_case_text(what, sizeof what, c);
    if (st != FA_OK) {
        snprintf(report, cap, "%s: the vector path's reference failed (status %d)", what, st);
        return 1;
    }
    /* errors against the vector path: of the child, and of plain */
    double err = 0, plain_err = 0, top = 0, lerr = 0, lplain = 0, ltop = 0;
    int where = 0;
    for (int i = 0; i < CN_O; i++) {
        const double ref = fa_canary_get(kn->dtype, vo, i);
        const double e = fabs(fa_canary_get(kn->dtype, sh->out[c], i) - ref);
        if (isnan(e)) { err = e, where = i; break; } /* NaN fails the case */
        if (e > err) err = e, where = i;
        if (fabs(plain_out[i] - ref) > plain_err) plain_err = fabs(plain_out[i] - ref);
        if (fabs(ref) > top) top = fabs(ref);
    }
    for (int i = 0; i < CN_L; i++) {
        const double e = fabs((double)sh->lse[c][i] - vec_lse[i]);
        if (isnan(e)) { lerr = e; break; }
        if (e > lerr) lerr = e;
        if (fabs(plain_lse[i] - vec_lse[i]) > lplain) lplain = fabs(plain_lse[i] - vec_lse[i]);
        if (fabs(vec_lse[i]) > ltop) ltop = fabs(vec_lse[i]);
    }
    plain_errs[0] = plain_err, plain_errs[1] = lplain;
    /* u_out: one rounding of the output to its type; u_p: a probability
     * rounded the other way than plain rounds it (a last-bit difference of
     * exp), which moves the output by at most u_p * max|v| */
    const int x3 = kn->precision == FA_PRECISION_BF16X3;
    const double u_out = kn->dtype == FA_BF16 ? 0x1p-8 : kn->dtype == FA_F16 ? 0x1p-11 : 0x1p-24;
    const double u_p = kn->dtype == FA_F16 ? 0x1p-11 : x3 ? 0x1p-16 : 0x1p-8;
    const double u32 = 0x1p-24;
    const double floor32 = (1e-6 + 2 * sqrt((double)CN_NK) * u32);
    const double vmax = in->vmax, smax = in->smax;
    /* bf16x3: 1/50 of the plain bfloat16 computation's error */
    const double scale_out = x3 ? bf16_err[0] / 50 : 2 * plain_err;
    const double scale_lse = x3 ? bf16_err[1] / 50 : 2 * lplain;
    const double bound = scale_out + 2 * u_out * top + 2 * u_p * vmax +
                         floor32 * (top > 1 ? top : 1) + 4 * u32 * smax * vmax;
    /* the lse: float32 scores summed in another order (at most d roundings) */
    const double lbound = scale_lse + 4 * floor32 * (ltop > 1 ? ltop : 1) + 2 * CN_D * u32 * smax;
    if (!(err <= bound)) {
        snprintf(report, cap, "%s: the output differs from the vector path's by %.3g (row %d, "
                 "column %d of head %d) where the matrix-precision rule allows %.3g",
                 what, err, (where / CN_DV) % CN_NQ, where % CN_DV, where / (CN_NQ * CN_DV), bound);
        return 1;
    }
    if (!(lerr <= lbound)) {
        snprintf(report, cap, "%s: the log-sum-exp differs from the vector path's by %.3g where "
                 "the matrix-precision rule allows %.3g", what, lerr, lbound);
        return 1;
    }
    return 0;
}

/* Compare linear case l's child result with the vector path's under the
 * rule of the file comment; 0 if within it, else 1 with the report. */
static int fa_canary_check_linear(const fa_canary_shared *sh, fa_canary_inputs *in, int l,
                                  char *report, size_t cap)
{
    char what[256];
    fa_canary_case_text(what, sizeof what, FA_CANARY_CASES + l);
    fa_canary_role = 1;
    const int st = fa_canary_linear(in, l, in->lref);
    fa_canary_role = 0;
    if (st != 0) {
        snprintf(report, cap, "%s: the vector path's reference failed (status %d)", what, st);
        return 1;
    }
    for (int i = 0; i < CL_M; i++)
        for (int c = 0; c < CL_N; c++) {
            const float *x = in->lx + i * CL_K, *w = in->lw[l] + c * CL_K;
            double mag = 0;
            for (int b = 0; b < CL_K; b += 32) {
                double step = 0; /* int8: the step of x's block */
                for (int k = b; l && k < b + 32 && k < CL_K; k++) step = fmax(step, fabs(x[k]) / 127);
                for (int k = b; k < b + 32 && k < CL_K; k++) mag += (fabs(x[k]) + step) * fabs(w[k]);
            }
            const double bound = 2 * (CL_K + 4) * 0x1p-24 * mag;
            const double err = fabs((double)sh->lin[l][i * CL_N + c] - in->lref[i * CL_N + c]);
            if (!(err <= bound)) {
                snprintf(report, cap, "%s: the output differs from the vector path's by %.3g (row "
                         "%d, column %d) where the rule allows %.3g", what, err, i, c, bound);
                return 1;
            }
        }
    return 0;
}

/* The test hooks' arguments: a subject this CPU runs (the real tiles only
 * where the gate allows them), a known injection, a positive timeout. */
static int fa_canary_args_ok(int subject, int inject, double timeout_s)
{
    return inject >= 0 && inject < FA_INJECT_COUNT && timeout_s > 0 &&
           fa_isa_supported((fa_isa)subject) && (subject != FA_ISA_AMX || fa_amx_available());
}

int fa_tile_self_test_run(int subject, int inject, double timeout_s, char *report, size_t cap,
                          double *ms)
{
    const double t0 = fa_now();
    if (ms) *ms = 0;
    if (report && cap) report[0] = 0;
    if (!fa_canary_args_ok(subject, inject, timeout_s) || !report || cap < 2) return FA_ERR_PARAMS;
#if FA_CANARY_FORK
    fa_canary_inputs *in = (fa_canary_inputs *)malloc(sizeof *in);
    fa_canary_shared *sh = (fa_canary_shared *)mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE,
                                                    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (!in || sh == MAP_FAILED) {
        free(in);
        if (sh != MAP_FAILED) munmap(sh, sizeof *sh);
        snprintf(report, cap, "the self-test could not allocate its buffers");
        return FA_ERR_NOMEM;
    }
    fa_canary_fill(in);
    memset((void *)sh, 0, sizeof *sh);
    int failed = 1, ran = 0;
    const pid_t pid = fork();
    if (pid == 0) fa_canary_child(sh, in, subject, inject); /* never returns */
    if (pid < 0) {
        snprintf(report, cap, "the self-test could not start its child process (fork: %s)",
                 strerror(errno));
        goto done;
    }
    /* wait for the child, at most timeout_s */
    int wst = 0, known = 0, timed_out = 0, lost = 0;
    const double deadline = fa_now() + timeout_s;
    long nap_ns = 20000;
    for (;;) {
        const pid_t r = waitpid(pid, &wst, WNOHANG);
        if (r == pid) { known = 1; break; }
        if (r < 0 && errno == ECHILD) {
            /* reaped by someone else (SIGCHLD ignored, or a waitpid(-1)):
             * it is gone, and its pid must not be signalled any more */
            lost = !sh->finished;
            break;
        }
        if (fa_now() >= deadline) {
            /* one last look: a process stopped and resumed past the
             * deadline may find its child done */
            if (sh->finished && waitpid(pid, &wst, WNOHANG) == pid) { known = 1; break; }
            kill(pid, SIGKILL);
            while (waitpid(pid, &wst, 0) < 0 && errno == EINTR) {}
            timed_out = 1;
            break;
        }
        struct timespec nap = {0, nap_ns};
        nanosleep(&nap, NULL);
        if (nap_ns < 1000000) nap_ns *= 2;
    }
    char what[256];
    /* the child's header is not trusted: a wild store may have hit it */
    const int at = sh->started > 0 && sh->started <= FA_CANARY_ALL ? sh->started - 1 : 0;
    fa_canary_case_text(what, sizeof what, at);
    if (timed_out) {
        snprintf(report, cap, "%s: no result within %.3g s (the child process was killed)", what,
                 timeout_s);
        goto done;
    }
    if (known && WIFSIGNALED(wst)) {
        snprintf(report, cap, "%s: the child process was killed by signal %d (%s)", what,
                 WTERMSIG(wst), fa_signal_name(WTERMSIG(wst)));
        goto done;
    }
    if ((known && (!WIFEXITED(wst) || WEXITSTATUS(wst) != 0)) || lost || !sh->finished) {
        if (known && WIFEXITED(wst))
            snprintf(report, cap, "%s: the child process exited with status %d", what,
                     WEXITSTATUS(wst));
        else
            snprintf(report, cap, "%s: the child process ended without finishing (its exit "
                     "status was collected elsewhere)", what);
        goto done;
    }
    /* the child finished: check each case */
    double *plain_out[2][FA_CANARY_VARIANTS], *plain_lse[2][FA_CANARY_VARIANTS];
    for (int h = 0; h < 2; h++)
        for (int var = 0; var < FA_CANARY_VARIANTS; var++) {
            plain_out[h][var] = in->plain + (size_t)(h * FA_CANARY_VARIANTS + var) * (CN_O + CN_L);
            plain_lse[h][var] = plain_out[h][var] + CN_O;
            fa_canary_plain(in, h, var, plain_out[h][var], plain_lse[h][var]);
        }
    const int matrix = subject == FA_ISA_AMX || subject == FA_ISA_AMX_EMU;
    double bf16_err[FA_CANARY_VARIANTS][2] = {{0}};
    for (int c = 0; c < FA_CANARY_CASES; c++) {
        const int kernel = c / FA_CANARY_VARIANTS, var = c % FA_CANARY_VARIANTS;
        if (!fa_canary_runs_kernel(subject, kernel)) continue;
        fa_canary_case_text(what, sizeof what, c);
        if (sh->status[c] != FA_OK) {
            snprintf(report, cap, "%s: fa_attention returned status %d", what, sh->status[c]);
            goto done;
        }
        if (matrix && sh->family[c] != FA_FAMILY_MATRIX) {
            snprintf(report, cap, "%s: the case did not run on the matrix kernels (%s)", what,
                     fa_family_name(sh->family[c]));
            goto done;
        }
        const int half = fa_canary_kernels[kernel].dtype == FA_F16;
        double errs[2];
        if (fa_canary_check(sh, in, c, plain_out[half][var], plain_lse[half][var], bf16_err[var],
                            errs, report, cap))
            goto done;
        ran++;
        /* the float32 bf16 mode's error scale, for bf16x3's bound */
        if (fa_canary_kernels[kernel].dtype == FA_F32 &&
            fa_canary_kernels[kernel].precision == FA_PRECISION_BF16)
            bf16_err[var][0] = errs[0], bf16_err[var][1] = errs[1];
    }
    for (int l = 0; l < FA_CANARY_LINEAR; l++) {
        if (!fa_canary_runs_linear(subject, l)) continue;
        fa_canary_case_text(what, sizeof what, FA_CANARY_CASES + l);
        if (sh->lin_status[l] != 0) {
            snprintf(report, cap, "%s: fa_linear_f32 returned %d", what, sh->lin_status[l]);
            goto done;
        }
        if (matrix && !sh->lin_tiles[l]) {
            snprintf(report, cap, "%s: the case did not run on the tiles", what);
            goto done;
        }
        if (fa_canary_check_linear(sh, in, l, report, cap)) goto done;
        ran++;
    }
    failed = 0;
    snprintf(report, cap, "passed: %d cases (%s; %s) on the %s path", ran,
             fa_amx_fp16_available() || subject != FA_ISA_AMX
                 ? "bfloat16, float16, float32 bf16 and bf16x3; causal and masked"
                 : "bfloat16, float32 bf16 and bf16x3; causal and masked",
             fa_canary_runs_linear(subject, 1) ? "the linear layer on bfloat16 and int8"
                                               : "the linear layer on bfloat16",
             fa_isa_name((fa_isa)subject));
done:
    munmap(sh, sizeof *sh);
    free(in);
    if (ms) *ms = 1e3 * (fa_now() - t0);
    return failed ? FA_ERR_PARAMS + 1 : FA_OK;
#else
    (void)inject;
    (void)timeout_s;
    snprintf(report, cap, "the self-test needs fork() (Linux)");
    if (ms) *ms = 1e3 * (fa_now() - t0);
    return FA_ERR_PARAMS + 1;
#endif
}

/* The process-wide decision. */
static pthread_mutex_t fa_canary_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int fa_canary_state = FA_SELF_TEST_NOT_RUN;
static _Atomic int fa_canary_news = 0;
static char fa_canary_text[768];
static char fa_canary_why[sizeof fa_canary_text + 64];
static double fa_canary_ms = 0;

/* A child forked while another thread held the lock (deciding) starts
 * undecided with a free lock. */
static void fa_canary_atfork_child(void)
{
    const pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    memcpy(&fa_canary_lock, &fresh, sizeof fresh);
}

__attribute__((constructor)) static void fa_canary_register_atfork(void)
{
    pthread_atfork(NULL, NULL, fa_canary_atfork_child);
}

/* FASTATTN_SELF_TEST_INJECT (for checks of the fallback on AMX machines). */
static int fa_canary_env_inject(void)
{
    static const char *const names[FA_INJECT_COUNT] = {"none", "mismatch", "sigill", "sigsegv",
                                                        "sigbus", "hang", "nan"};
    const char *s = getenv("FASTATTN_SELF_TEST_INJECT");
    if (!s || !*s) return FA_INJECT_NONE;
    for (int i = 0; i < FA_INJECT_COUNT; i++)
        if (!strcmp(s, names[i])) return i;
    return FA_INJECT_NONE;
}

static int fa_canary_decide_locked(int subject, int inject, double timeout_s)
{
    char report[sizeof fa_canary_text];
    double ms = 0;
    const int rc = fa_tile_self_test_run(subject, inject, timeout_s, report, sizeof report, &ms);
    const int st = rc == FA_OK ? FA_SELF_TEST_PASSED : FA_SELF_TEST_FAILED;
    if (rc != FA_OK && !report[0]) snprintf(report, sizeof report, "the self-test could not run");
    memcpy(fa_canary_text, report, sizeof report);
    snprintf(fa_canary_why, sizeof fa_canary_why, "the self-test of the tiles failed: %s", report);
    fa_canary_ms = ms;
    atomic_store_explicit(&fa_canary_state, st, memory_order_release);
    if (st == FA_SELF_TEST_FAILED) atomic_store(&fa_canary_news, 1); /* after the report */
    return st;
}

int fa_tile_canary_ok(void)
{
    if (fa_canary_role) return fa_canary_role == 2;
    int st = atomic_load_explicit(&fa_canary_state, memory_order_acquire);
    if (st) return st == FA_SELF_TEST_PASSED;
    pthread_mutex_lock(&fa_canary_lock);
    st = atomic_load_explicit(&fa_canary_state, memory_order_acquire);
    if (!st) st = fa_canary_decide_locked(FA_ISA_AMX, fa_canary_env_inject(), FA_CANARY_TIMEOUT_S);
    pthread_mutex_unlock(&fa_canary_lock);
    return st == FA_SELF_TEST_PASSED;
}

int fa_tile_self_test_decide(int subject, int inject, double timeout_s)
{
    if (fa_canary_role || !fa_canary_args_ok(subject, inject, timeout_s)) return -1;
    pthread_mutex_lock(&fa_canary_lock);
    int st = atomic_load_explicit(&fa_canary_state, memory_order_acquire);
    if (!st) st = fa_canary_decide_locked(subject, inject, timeout_s);
    pthread_mutex_unlock(&fa_canary_lock);
    return st;
}

void fa_tile_self_test_status(fa_self_test_info *info)
{
    info->state = atomic_load_explicit(&fa_canary_state, memory_order_acquire);
    info->report = info->state ? fa_canary_text : "";
    info->ms = info->state ? fa_canary_ms : 0;
}

int fa_tile_self_test_news(void)
{
    if (!atomic_load_explicit(&fa_canary_news, memory_order_relaxed)) return 0;
    return atomic_exchange(&fa_canary_news, 0);
}

const char *fa_tile_canary_failure(void)
{
    return atomic_load_explicit(&fa_canary_state, memory_order_acquire) == FA_SELF_TEST_FAILED
               ? fa_canary_why
               : NULL;
}
