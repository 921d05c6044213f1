/*
 * dispatch.c: the ISA registry, and the choice of kernels for this CPU.
 *
 * Every kernel file (kernels/kernel_<isa>.c, compiled with its own flags)
 * provides one kernel table, fa_kernels_<isa> (kernel_avx512bf16.c two).
 * The registry below lists them, one row each: the row's name, the CPU
 * features it needs and its table.  A row either is an ISA path (fa_paths,
 * indexed by fa_isa; the user can force a path by name through fa_set_isa /
 * FASTATTN_ISA) or refines a path (fa_refinements): then, while that path
 * runs and the CPU has the row's features, the row's non-NULL kernels
 * replace the path's (the AVX512-BF16 dot product refines avx512 this way).
 * Every row has a name of its own, and rows are told apart by identity,
 * never by name.  A refinement may also need a policy of the plan (the
 * bfloat16 tile policy, fastattn.h), which is not a CPU feature.
 *
 * The CPU is probed once with cpuid, and the OS support of the wide
 * registers with xgetbv (a CPU may have AVX-512 while the OS does not save
 * zmm state).  The best supported path is chosen at first use.  Rows whose
 * kernel file is not part of this build (other architectures) have a NULL
 * table and report "not compiled".
 *
 * Matrix units.  The paths "amx" and "amx_emu" have kernel tables with only
 * the matrix family (kernels/matrix.h); every other family, and the probes,
 * fall back to the path they name ("avx512", with its avx512bf16
 * refinement).  "amx" needs the CPU and OS support of the tiles (cpuid and
 * XCR0, amx/amx_gate.h) and is then the best path; the kernel's tile-data
 * permission is only requested when a plan first wants the matrix family
 * (fa_matrix_usable), and if it is refused the path runs like avx512.
 * "amx_emu" runs the same kernels on the portable emulation; it is never
 * chosen automatically, only forced (FASTATTN_ISA=amx_emu).  Forcing any
 * other path (e.g. FASTATTN_ISA=avx512) never uses the tiles.
 */
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "fastattn.h"
#include "kernels/kernel.h"
#include "dispatch.h"
#ifdef _OPENMP
#include <omp.h>
#endif
#include "fpenv.h"
#include "amx/amx_gate.h"
#include "amx/tile_canary.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define FA_X86 1
#include <cpuid.h>
#else
#define FA_X86 0
#endif
#if defined(__aarch64__)
#define FA_ARM64 1
#else
#define FA_ARM64 0
#endif

/* CPU features a registry row may require. */
enum {
    FA_CPU_AVX2 = 1 << 0,       /* AVX2, FMA, F16C, OS-saved ymm state */
    FA_CPU_AVX512 = 1 << 1,     /* AVX-512 F/DQ/BW/VL, OS-saved zmm state */
    FA_CPU_AVX512BF16 = 1 << 2, /* vdpbf16ps */
    FA_CPU_NEON = 1 << 3,       /* Advanced SIMD (baseline on aarch64) */
    FA_CPU_AMX = 1 << 4,        /* AMX-TILE + AMX-BF16, OS-enabled tile state */
    FA_CPU_AVX512VNNI = 1 << 5, /* vpdpbusd (int8 decode) */
    FA_CPU_AMD = 1 << 6,        /* vendor "AuthenticAMD" (a fact the
                                   bfloat16 tile policy reads) */
    FA_CPU_AVXVNNI = 1 << 7,    /* {vex} vpdpbusd on ymm (int8 linear) */
    FA_CPU_ASIMDDP = 1 << 8,    /* aarch64 sdot (int8 linear) */
    FA_CPU_ARMBF16 = 1 << 9     /* aarch64 bfdot (bfloat16 linear) */
};

/* The kernel table of an architecture's kernel file, or NULL elsewhere. */
#if FA_X86
#define FA_X86_TABLE(isa) &fa_kernels_##isa
#define FA_ARM64_TABLE(isa) NULL
#elif FA_ARM64
#define FA_X86_TABLE(isa) NULL
#define FA_ARM64_TABLE(isa) &fa_kernels_##isa
#else
#define FA_X86_TABLE(isa) NULL
#define FA_ARM64_TABLE(isa) NULL
#endif

extern const fa_kernels fa_kernels_scalar;
#if FA_X86
extern const fa_kernels fa_kernels_avx2, fa_kernels_avx512, fa_kernels_avx512bf16,
    fa_kernels_avx512bf16_tile;
extern const fa_kernels fa_kernels_amx, fa_kernels_amx_emu;
extern const fa_kernels fa_kernels_avx512vnni;
#endif
#if FA_ARM64
extern const fa_kernels fa_kernels_neon;
#endif

/* The table of a refinement that brings only a linear layer's dot product:
 * those blocks live in the path's own table (kernels/linear_dot.h, reached
 * through fa_linear_args.dot), so the row's table has no kernel and never
 * serves attention; it only says that the row is part of this build. */
#if FA_X86 || FA_ARM64
static const fa_kernels fa_kernels_linear_dot;
#endif
#if FA_X86
#define FA_X86_LINEAR_DOT &fa_kernels_linear_dot
#define FA_ARM64_LINEAR_DOT NULL
#elif FA_ARM64
#define FA_X86_LINEAR_DOT NULL
#define FA_ARM64_LINEAR_DOT &fa_kernels_linear_dot
#else
#define FA_X86_LINEAR_DOT NULL
#define FA_ARM64_LINEAR_DOT NULL
#endif

typedef struct fa_isa_row {
    const char *name;          /* the path's name, or the refinement's */
    unsigned features;         /* FA_CPU_* bits the row needs */
    const fa_kernels *kernels; /* NULL: not part of this build */
    /* a path only: */
    const struct fa_isa_row *falls_back; /* the path serving what it lacks */
    int forced_only;                     /* never chosen automatically */
    /* a refinement only: */
    fa_isa refines; /* the path it refines */
    int pairs;      /* runs only under FA_BF16_TILE_PAIRS */
} fa_isa_row;

/* The paths, indexed by fa_isa.  A path's name is how the user forces it
 * (fa_set_isa, FASTATTN_ISA); within an architecture better paths come
 * later. */
static const fa_isa_row fa_paths[] = {
    [FA_ISA_SCALAR] = {"scalar", 0, &fa_kernels_scalar},
    [FA_ISA_AVX2] = {"avx2", FA_CPU_AVX2, FA_X86_TABLE(avx2)},
    [FA_ISA_AVX512] = {"avx512", FA_CPU_AVX2 | FA_CPU_AVX512, FA_X86_TABLE(avx512)},
    [FA_ISA_NEON] = {"neon", FA_CPU_NEON, FA_ARM64_TABLE(neon)},
    [FA_ISA_AMX] = {"amx", FA_CPU_AVX2 | FA_CPU_AVX512 | FA_CPU_AVX512BF16 | FA_CPU_AMX,
                    FA_X86_TABLE(amx), &fa_paths[FA_ISA_AVX512], 0},
    [FA_ISA_AMX_EMU] = {"amx_emu", FA_CPU_AVX2 | FA_CPU_AVX512 | FA_CPU_AVX512BF16,
                        FA_X86_TABLE(amx_emu), &fa_paths[FA_ISA_AVX512], 1},
};
_Static_assert(sizeof fa_paths / sizeof fa_paths[0] == FA_ISA_COUNT,
               "fa_paths must have one row per fa_isa value (fastattn.h)");

/* The refinements: while the path they refine runs and the CPU has their
 * features, their non-NULL kernels replace the path's (a later row wins).
 * Each has a name of its own: fa_plan_info.kernel_isa reports it. */
static const fa_isa_row fa_refinements[] = {
    /* bfloat16 decode: vdpbf16ps dot products wherever the CPU has them */
    {"avx512bf16", FA_CPU_AVX2 | FA_CPU_AVX512 | FA_CPU_AVX512BF16, FA_X86_TABLE(avx512bf16),
     .refines = FA_ISA_AVX512},
    /* bfloat16 tile and weights: Q.K^T on pairs, under the pairs policy */
    {"avx512bf16_pairs", FA_CPU_AVX2 | FA_CPU_AVX512 | FA_CPU_AVX512BF16,
     FA_X86_TABLE(avx512bf16_tile), .refines = FA_ISA_AVX512, .pairs = 1},
    /* int8 decode: vpdpbusd */
    {"avx512vnni", FA_CPU_AVX2 | FA_CPU_AVX512 | FA_CPU_AVX512VNNI, FA_X86_TABLE(avx512vnni),
     .refines = FA_ISA_AVX512},
    /* the linear layer's dot products only (fa_linear_dot_row): int8 on
     * AVX-VNNI's ymm vpdpbusd, and on aarch64 int8 on sdot and bfloat16 on
     * bfdot */
    {"avxvnni", FA_CPU_AVX2 | FA_CPU_AVXVNNI, FA_X86_LINEAR_DOT, .refines = FA_ISA_AVX2},
    {"neon_dotprod", FA_CPU_NEON | FA_CPU_ASIMDDP, FA_ARM64_LINEAR_DOT, .refines = FA_ISA_NEON},
    {"neon_bf16", FA_CPU_NEON | FA_CPU_ARMBF16, FA_ARM64_LINEAR_DOT, .refines = FA_ISA_NEON},
};
#define FA_REFINEMENTS ((int)(sizeof fa_refinements / sizeof fa_refinements[0]))

#if FA_X86
static unsigned long long fa_xgetbv0(void)
{
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

static unsigned fa_probe_cpu(void)
{
    unsigned int a = 0, b = 0, c = 0, d = 0;
    unsigned f = 0;
    /* vendor "AuthenticAMD": ebx "Auth" */
    if (__get_cpuid(0, &a, &b, &c, &d) && b == 0x68747541u) f |= FA_CPU_AMD;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1;
    const int f16c = (c >> 29) & 1; /* float16 conversions */
    if (!osxsave || !avx || !fma || !f16c) return f;
    const unsigned long long xcr0 = fa_xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return f; /* xmm and ymm state */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
    if ((b >> 5) & 1) f |= FA_CPU_AVX2;
    const int avx512 = ((b >> 16) & 1) && ((b >> 17) & 1) && ((b >> 30) & 1) && ((b >> 31) & 1);
    if (avx512 && (xcr0 & 0xE0) == 0xE0) f |= FA_CPU_AVX512; /* opmask, zmm0-15, zmm16-31 */
    if ((c >> 11) & 1) f |= FA_CPU_AVX512VNNI; /* leaf 7, ecx bit 11 */
    /* leaf 7, subleaf 1, eax: AVX-VNNI bit 4 (the ymm state checked above),
     * AVX512-BF16 bit 5 */
    if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) {
        if ((a >> 4) & 1) f |= FA_CPU_AVXVNNI;
        if ((a >> 5) & 1) f |= FA_CPU_AVX512BF16;
    }
    /* the tiles: cpuid and XCR0 only; the permission comes at first use */
    fa_amx_facts facts;
    const char *why;
    fa_amx_read_facts(&facts);
    if (fa_amx_cpu_ok(&facts, &why)) f |= FA_CPU_AMX;
    return f;
}
#elif FA_ARM64 && defined(__linux__)
#include <sys/auxv.h>
/* The kernel's hardware capabilities (the numbers of <asm/hwcap.h>, for
 * C libraries whose headers predate them). */
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#ifndef HWCAP2_BF16
#define HWCAP2_BF16 (1UL << 14)
#endif
static unsigned fa_probe_cpu(void)
{
    unsigned f = FA_CPU_NEON;
    if (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) f |= FA_CPU_ASIMDDP;
    if (getauxval(AT_HWCAP2) & HWCAP2_BF16) f |= FA_CPU_ARMBF16;
    return f;
}
#else
static unsigned fa_probe_cpu(void) { return FA_ARM64 ? FA_CPU_NEON : 0; }
#endif

/* The features of this CPU, probed once (-1 until then). */
static unsigned fa_cpu_features(void)
{
    static _Atomic long cached = -1;
    long v = atomic_load(&cached);
    if (v < 0) {
        v = (long)fa_probe_cpu();
        atomic_store(&cached, v);
    }
    return (unsigned)v;
}

/* The bfloat16 tile policy (fastattn.h): the environment's override, else
 * the vendor rule; decided once (-1 until then).  The per-ISA tests set
 * FASTATTN_BF16_TILE=pairs to run the pairs on any CPU with the
 * instruction. */
int fa_bf16_tile_policy(void)
{
    static _Atomic int cached = -1;
    int v = atomic_load(&cached);
    if (v < 0) {
        const char *env = getenv("FASTATTN_BF16_TILE");
        if (env && strcmp(env, "pairs") == 0) v = FA_BF16_TILE_PAIRS;
        else if (env && strcmp(env, "widen") == 0) v = FA_BF16_TILE_WIDEN;
        else v = fa_cpu_features() & FA_CPU_AMD ? FA_BF16_TILE_PAIRS : FA_BF16_TILE_WIDEN;
        atomic_store(&cached, v);
    }
    return v;
}

const char *fa_bf16_tile_name(int policy)
{
    return policy == FA_BF16_TILE_PAIRS   ? "pairs"
           : policy == FA_BF16_TILE_WIDEN ? "widen"
                                          : "unknown";
}

#if FA_X86
int fa_amx_real_compiled(void); /* kernel_amx.c (amx_gemm_real.c) */
#endif

/* 1 if the row's kernels are part of this build (kernel_amx.c built by a
 * compiler without the AMX flags leaves an empty table). */
static int fa_row_compiled(const fa_isa_row *row)
{
#if FA_X86
    if (row->kernels == &fa_kernels_amx) return fa_amx_real_compiled();
#endif
    return row->kernels != NULL;
}

static int fa_row_runs(const fa_isa_row *row)
{
    return fa_row_compiled(row) && (fa_cpu_features() & row->features) == row->features;
}

/* The registry row of path `isa`, or NULL. */
static const fa_isa_row *fa_path_row(int isa)
{
    return isa >= 0 && isa < FA_ISA_COUNT ? &fa_paths[isa] : NULL;
}

int fa_isa_count(void) { return FA_ISA_COUNT; }

int fa_isa_compiled(fa_isa isa)
{
    const fa_isa_row *row = fa_path_row((int)isa);
    return row && fa_row_compiled(row);
}

int fa_isa_supported(fa_isa isa)
{
    const fa_isa_row *row = fa_path_row((int)isa);
    return row && fa_row_runs(row);
}

const char *fa_isa_name(fa_isa isa)
{
    const fa_isa_row *row = fa_path_row((int)isa);
    return row ? row->name : "unknown";
}

/* -1 until first use; then the chosen path. */
static _Atomic int fa_current = -1;

fa_isa fa_get_isa(void)
{
    int cur = atomic_load(&fa_current);
    if (cur < 0) {
        /* the last supported path of the registry (the scalar one always runs) */
        cur = 0;
        for (int i = fa_isa_count() - 1; i > 0; i--)
            if (!fa_path_row(i)->forced_only && fa_isa_supported((fa_isa)i)) { cur = i; break; }
        int expected = -1;
        if (!atomic_compare_exchange_strong(&fa_current, &expected, cur))
            cur = expected;
    }
    return (fa_isa)cur;
}

int fa_set_isa(fa_isa isa)
{
    if (!fa_isa_supported(isa)) return FA_ERR_PARAMS;
    atomic_store(&fa_current, (int)isa);
    return FA_OK;
}

/* The row that serves (family, dtype) on a path: the last runnable
 * refinement of the path that provides it (under the policy in force),
 * else the path itself if it does, else the row serving it on the path it
 * falls back to; NULL if none. */
static const fa_isa_row *fa_serving_on(const fa_isa_row *path, fa_family family, fa_dtype dtype)
{
    for (int i = FA_REFINEMENTS - 1; i >= 0; i--) {
        const fa_isa_row *row = &fa_refinements[i];
        if (&fa_paths[row->refines] != path) continue;
        if (row->pairs && fa_bf16_tile_policy() != FA_BF16_TILE_PAIRS) continue;
        if (fa_row_runs(row) && row->kernels->kernel[family][dtype]) return row;
    }
    if (fa_row_runs(path) && path->kernels->kernel[family][dtype]) return path;
    return path->falls_back ? fa_serving_on(path->falls_back, family, dtype) : NULL;
}

static const fa_isa_row *fa_serving_row(fa_family family, fa_dtype dtype)
{
    const fa_isa_row *path = fa_path_row((int)fa_get_isa());
    const fa_isa_row *row = fa_serving_on(path, family, dtype);
    return row ? row : path;
}

fa_kernel_fn fa_dispatch(fa_family family, fa_dtype dtype, const char **source)
{
    const fa_isa_row *row = fa_serving_row(family, dtype);
    if (source) *source = row->name;
    return row->kernels->kernel[family][dtype];
}

/* Whether the tile products of a matrix-unit row may run now: never
 * while this thread computes the self-test's reference; on the real tiles
 * only with the kernel's permission (requested here, once), with the
 * extension the product needs (fp16: TDPFP16PS, AMX-FP16; int8: TDPBSSD,
 * AMX-INT8), and once they have passed the self-test (run here on first
 * use).  The emulation needs none of these. */
static int fa_tiles_may_run(const fa_isa_row *row, int fp16, int int8)
{
    if (fa_canary_matrix_off()) return 0;
    if (!(row->features & FA_CPU_AMX)) return 1;
    if (!fa_amx_available()) return 0;
    if ((fp16 && !fa_amx_fp16_available()) || (int8 && !fa_amx_int8_available())) return 0;
    return fa_tile_canary_ok();
}

int fa_matrix_usable(fa_dtype dtype, const fa_kernels **table)
{
    const fa_isa_row *row = fa_serving_row(FA_FAMILY_MATRIX, dtype);
    if (!row->kernels || !row->kernels->kernel[FA_FAMILY_MATRIX][dtype]) return 0;
    if (!fa_tiles_may_run(row, dtype == FA_F16, 0)) return 0;
    if (table) *table = row->kernels;
    return 1;
}

int fa_bf16_dot_product(void)
{
#if FA_X86
    return fa_serving_row(FA_FAMILY_ROWS, FA_BF16)->kernels == &fa_kernels_avx512bf16;
#else
    return 0;
#endif
}

/* The kernel table of a path's probes and vector functions (the fallback's
 * for a matrix-unit path). */
static const fa_kernels *fa_vector_table(const fa_isa_row *path)
{
    return path->falls_back ? path->falls_back->kernels : path->kernels;
}

static const fa_kernels *fa_current_table(void)
{
    return fa_vector_table(fa_path_row((int)fa_get_isa()));
}

void fa_exp2_f32(const float *x, float *y, int64_t n) { fa_current_table()->exp2_f32(x, y, n); }
void fa_exp2_f64(const double *x, double *y, int64_t n) { fa_current_table()->exp2_f64(x, y, n); }
void fa_tanh_f32(const float *x, float *y, int64_t n) { fa_current_table()->tanh_f32(x, y, n); }
void fa_tanh_f64(const double *x, double *y, int64_t n) { fa_current_table()->tanh_f64(x, y, n); }

/* The refinement of the current vector path that brings the dot product
 * of a linear layer's wtype (kernels/linear_dot.h, compiled into the
 * path's own table): on avx512, avx512bf16 (VDPBF16PS on bfloat16 pairs)
 * and avx512vnni (VPDPBUSD on int8 quads); on avx2, avxvnni (int8); on
 * neon, neon_bf16 (BFDOT) and neon_dotprod (SDOT, int8).  NULL when the
 * CPU lacks it or the path has none. */
static const fa_isa_row *fa_linear_dot_row(int wtype)
{
    const unsigned need = wtype == FA_LIN_BF16 ? FA_CPU_AVX512BF16 | FA_CPU_ARMBF16
                          : wtype == FA_LIN_I8 ? FA_CPU_AVX512VNNI | FA_CPU_AVXVNNI | FA_CPU_ASIMDDP
                                               : 0;
    const fa_isa_row *path = fa_path_row((int)fa_get_isa());
    if (path->falls_back) path = path->falls_back;
    for (int i = 0; need && i < FA_REFINEMENTS; i++) {
        const fa_isa_row *row = &fa_refinements[i];
        if (&fa_paths[row->refines] == path && !row->pairs && (row->features & need)
            && fa_row_runs(row))
            return row;
    }
    return NULL;
}

/* The matrix units' products for a linear layer of wtype
 * (kernels/linear_tiles.h), or NULL: bfloat16 and int8 on a matrix-unit
 * path whose tiles may run (as for attention), int8 only with AMX-INT8. */
static const fa_lin_tiles *fa_linear_tiles(int wtype)
{
    const fa_isa_row *path = fa_path_row((int)fa_get_isa());
    if (wtype == FA_LIN_F32 || !path->kernels || !path->kernels->lin_tiles) return NULL;
    return fa_tiles_may_run(path, 0, wtype == FA_LIN_I8) ? path->kernels->lin_tiles : NULL;
}

const char *fa_linear_kernel(int wtype)
{
    if (fa_linear_tiles(wtype)) return fa_path_row((int)fa_get_isa())->name;
    const fa_isa_row *row = fa_linear_dot_row(wtype), *path = fa_path_row((int)fa_get_isa());
    return row ? row->name : path->falls_back ? path->falls_back->name : path->name;
}

/* One thread's share of a linear call: the panels [p0, p1). */
static int fa_linear_part(const fa_kernels *kt, fa_linear_args a, int64_t p0, int64_t p1)
{
    if (p0 >= p1) return 0;
    /* the packed block of x: min(m, FA_LIN_MC) rows rounded up to the
     * largest register block (12) or to the tiles' FA_LIN_TILE_ROWS (with
     * their 32 x 32 block of sums), times FA_LIN_SCRATCH_ROW; a few-row
     * call stays far below malloc's mmap threshold (no fresh pages to
     * fault in) */
    const int64_t rows = a.m < FA_LIN_MC ? a.m : FA_LIN_MC;
    const size_t bytes = (size_t)((rows + FA_LIN_TILE_ROWS) * FA_LIN_SCRATCH_ROW) * sizeof(float);
    float *scratch = aligned_alloc(FA_ALIGN, (bytes + FA_ALIGN - 1) / FA_ALIGN * FA_ALIGN);
    if (!scratch) return -1;
    a.p0 = p0;
    a.p1 = p1;
    if (a.tiles) a.tiles->begin(a.wtype); /* this thread's tile configuration */
    kt->linear_f32(&a, scratch);
    if (a.tiles) a.tiles->end();
    free(scratch);
    return 0;
}

int fa_linear_f32(const float *x, int64_t m, int64_t k, int64_t ldx, const void *packed,
                  int wtype, const float *w_scale, int64_t n, const float *bias, const float *residual, int64_t ldr, int act,
                  float *y, int64_t ldy, int num_threads)
{
    const fa_kernels *kt = fa_current_table();
    const int64_t panels = (n + FA_LIN_NR - 1) / FA_LIN_NR;
    const fa_linear_args a = {.x = x, .m = m, .k = k, .ldx = ldx, .packed = packed, .wtype = wtype,
                              .w_scale = w_scale, .dot = fa_linear_dot_row(wtype) != NULL,
                              .tiles = fa_linear_tiles(wtype),
                              .n = n,
                              .p0 = 0, .p1 = panels, .bias = bias, .residual = residual,
                              .ldr = ldr, .y = y, .ldy = ldy, .act = act};
    /* threads over the output panels: every element is computed by the same
     * operations whichever thread runs its panel.  Below about 2 MFLOP a
     * thread the fork and join cost more than they save. */
    int nt = fa_threads_for_call(num_threads);
    const int64_t work = m * k * FA_LIN_NR; /* multiply-adds of one panel */
    if (nt > panels) nt = (int)panels;
    while (nt > 1 && work * (panels / nt) < (1 << 20)) nt--;
    /* subnormals flushed for the call, as attention does (fpenv.h): one
     * subnormal activation would otherwise cost a microcode assist per
     * operation, and the result would depend on the caller's control bits */
    const int flush = fa_flush_subnormals();
    int status = 0;
    if (nt <= 1) {
        const fa_fp_state fp = FA_FP_SAVE();
        if (flush) FA_FP_FLUSH(fp);
        status = fa_linear_part(kt, a, 0, panels);
        if (flush) FA_FP_RESTORE(fp);
    }
#ifdef _OPENMP
    else {
#pragma omp parallel num_threads(nt)
        {
            const fa_fp_state fp = FA_FP_SAVE();
            if (flush) FA_FP_FLUSH(fp);
            const int t = omp_get_thread_num(), tn = omp_get_num_threads();
            const int64_t p0 = panels * t / tn, p1 = panels * (t + 1) / tn;
            if (fa_linear_part(kt, a, p0, p1) != 0) {
#pragma omp atomic write
                status = -1;
            }
            if (flush) FA_FP_RESTORE(fp);
        }
    }
#endif
    return status;
}

void fa_layer_norm_f32(const float *x, int64_t ldx, const float *residual, int64_t ldr,
                       int64_t m, int64_t n, const float *g, const float *b, float eps,
                       float *y, int64_t ldy)
{
    const int flush = fa_flush_subnormals();
    const fa_fp_state fp = FA_FP_SAVE();
    if (flush) FA_FP_FLUSH(fp);
    fa_current_table()->layer_norm_f32(x, ldx, residual, ldr, m, n, g, b, eps, y, ldy);
    if (flush) FA_FP_RESTORE(fp);
}

double fa_fma_probe(fa_isa isa, int64_t iters, int *lanes)
{
    if (!fa_isa_supported(isa)) return 0;
    const fa_kernels *k = fa_vector_table(fa_path_row((int)isa));
    *lanes = k->lanes();
    return k->fma_probe(iters);
}

double fa_dot_probe(int wtype, int64_t iters)
{
    const fa_kernels *k = fa_current_table();
    if (!fa_linear_dot_row(wtype) || !k->dot_probe) return -1;
    return k->dot_probe(wtype == FA_LIN_BF16 ? 1 : 2, iters);
}

#if FA_X86
double fa_amx_tdpbf16ps_probe(int64_t iters); /* kernel_amx.c (amx_gemm_real.c) */
double fa_amx_tdpbssd_probe(int64_t iters);
#endif

static const char *fa_amx_perm_text(int perm)
{
    switch (perm) {
    case -1: return "not requested";
    case FA_AMX_PERM_GRANTED: return "granted";
    case FA_AMX_PERM_NOSPC: return "refused (ENOSPC: a sigaltstack is too small)";
    case FA_AMX_PERM_UNSUPPORTED: return "refused (EINVAL: no dynamic xstate in the kernel)";
    case FA_AMX_PERM_DENIED: return "refused (EPERM/EACCES)";
    case FA_AMX_PERM_NOT_LINUX: return "not available (not Linux)";
    default: return "refused";
    }
}

/* The self-test's part of the status, once the gate allows the tiles:
 * with request it runs (if it has not), and a failure turns them off. */
static void fa_amx_self_test_status(fa_amx_info *info, int request)
{
    if (request) fa_tile_canary_ok();
    fa_self_test_info st;
    fa_tile_self_test_status(&st);
    if (st.state == FA_SELF_TEST_NOT_RUN) {
        info->self_test = "not run yet: the first matrix-unit call runs it";
        info->available = 0;
        info->reason = "undecided: the tiles run once they pass the self-test of the first "
                       "matrix-unit call";
        return;
    }
    info->self_test = st.report;
    if (st.state == FA_SELF_TEST_FAILED) {
        info->available = 0;
        info->reason = fa_tile_canary_failure();
    }
}

void fa_amx_status(fa_amx_info *info, int request)
{
    fa_amx_facts f;
    fa_amx_read_facts(&f);
    memset(info, 0, sizeof *info);
    info->amx_bf16 = (f.leaf7_edx >> 22) & 1;
    info->amx_tile = (f.leaf7_edx >> 24) & 1;
    info->amx_int8 = (f.leaf7_edx >> 25) & 1;
    info->amx_fp16 = (f.leaf7_1_eax >> 21) & 1;
    info->os_enabled = f.osxsave && (f.xcr0 & (3ull << 17)) == (3ull << 17);
#if FA_X86
    info->compiled = fa_amx_real_compiled();
#else
    info->compiled = 0;
#endif
    info->self_test = "not needed: no tiles to test";
    if (!info->compiled) {
        info->reason = FA_X86 ? "not compiled (the compiler has no AMX flags)"
                              : "not compiled for this architecture";
        info->permission = fa_amx_perm_text(-1);
        return;
    }
    if (request || fa_amx_gate_ran()) {
        info->available = fa_amx_available();
        info->reason = fa_amx_reason();
        info->permission = fa_amx_perm_text(fa_amx_permission());
        if (info->available) fa_amx_self_test_status(info, request);
        return;
    }
    /* a report only: the permission as the process holds it, not asked */
    const char *why;
    if (!fa_amx_cpu_ok(&f, &why)) {
        info->reason = why;
        info->permission = fa_amx_perm_text(-1);
    } else if (fa_amx_permission_held() == FA_AMX_PERM_GRANTED) {
        info->available = fa_amx_decide(&f, FA_AMX_PERM_GRANTED, &why);
        info->reason = why;
        info->permission = "granted (held by the process)";
        if (info->available) fa_amx_self_test_status(info, 0);
    } else {
        info->reason = "undecided: the tile permission is requested by the first "
                       "matrix-unit call";
        info->permission = "not requested yet";
        info->self_test = "not run yet: the first matrix-unit call runs it";
    }
}

double fa_amx_peak(int64_t iters)
{
#if FA_X86
    if (!fa_amx_available() || !fa_tile_canary_ok()) return -1;
    return fa_amx_tdpbf16ps_probe(iters);
#else
    (void)iters;
    return -1;
#endif
}

double fa_amx_peak_int8(int64_t iters)
{
#if FA_X86
    if (!fa_amx_available() || !fa_amx_int8_available() || !fa_tile_canary_ok()) return -1;
    return fa_amx_tdpbssd_probe(iters);
#else
    (void)iters;
    return -1;
#endif
}
