/*
 * dispatch.c: choose the kernel for this CPU, once.
 *
 * The CPU is probed with cpuid, and the OS support of the wide registers
 * with xgetbv (a CPU may have AVX-512 while the OS does not save zmm
 * state).  The best supported path is chosen at first use; fa_set_isa()
 * forces another (the Python layer maps FASTATTN_ISA onto it).
 * Paths that were not compiled (non-x86 builds) report unsupported.
 */
#include <stdatomic.h>
#include <stddef.h>

#include "fastattn.h"
#include "kernels/kernel.h"
#include "dispatch.h"

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

#if FA_X86
static unsigned long long fa_xgetbv0(void)
{
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

static int fa_probe(fa_isa isa)
{
    unsigned int a, b, c, d;
    if (isa == FA_ISA_SCALAR) return 1;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1;
    const int f16c = (c >> 29) & 1; /* float16 conversions */
    if (!osxsave || !avx || !fma || !f16c) return 0;
    const unsigned long long xcr0 = fa_xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return 0; /* xmm and ymm state */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    const int avx2 = (b >> 5) & 1;
    if (isa == FA_ISA_AVX2) return avx2;
    if (isa == FA_ISA_AVX512) {
        const int f = (b >> 16) & 1, dq = (b >> 17) & 1;
        const int bw = (b >> 30) & 1, vl = (b >> 31) & 1;
        if ((xcr0 & 0xE0) != 0xE0) return 0; /* opmask, zmm0-15, zmm16-31 */
        return avx2 && f && dq && bw && vl;
    }
    return 0;
}
#else
/* Advanced SIMD is mandatory on aarch64. */
static int fa_probe(fa_isa isa) { return isa == FA_ISA_SCALAR || (FA_ARM64 && isa == FA_ISA_NEON); }
#endif

int fa_isa_compiled(fa_isa isa)
{
    switch (isa) {
    case FA_ISA_SCALAR: return 1;
    case FA_ISA_AVX2:
    case FA_ISA_AVX512: return FA_X86;
    case FA_ISA_NEON: return FA_ARM64;
    default: return 0;
    }
}

int fa_isa_supported(fa_isa isa)
{
    if (isa < 0 || isa >= FA_ISA_COUNT) return 0;
    return fa_isa_compiled(isa) && fa_probe(isa);
}

const char *fa_isa_name(fa_isa isa)
{
    switch (isa) {
    case FA_ISA_SCALAR: return "scalar";
    case FA_ISA_AVX2: return "avx2";
    case FA_ISA_AVX512: return "avx512";
    case FA_ISA_NEON: return "neon";
    default: return "unknown";
    }
}

/* -1 until first use; then the chosen path. */
static _Atomic int fa_current = -1;

fa_isa fa_get_isa(void)
{
    int cur = atomic_load(&fa_current);
    if (cur < 0) {
        cur = FA_ISA_SCALAR;
        for (int i = FA_ISA_COUNT - 1; i > 0; i--)
            if (fa_isa_supported((fa_isa)i)) { cur = i; break; }
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

#if FA_X86
#define FA_TABLE(name) \
    { name##_scalar, name##_avx2, name##_avx512, NULL }
#elif FA_ARM64
#define FA_TABLE(name) \
    { name##_scalar, NULL, NULL, name##_neon }
#else
#define FA_TABLE(name) \
    { name##_scalar, NULL, NULL, NULL }
#endif

/* Kernels by [dtype][isa] (fa_dtype order: f32, f64, f16, bf16). */
#define FA_TYPE_TABLES(name)                                                  \
    static const fa_tile_fn name##_table[4][FA_ISA_COUNT] = {                 \
        FA_TABLE(name##_f32), FA_TABLE(name##_f64),                           \
        FA_TABLE(name##_f16), FA_TABLE(name##_bf16)};
FA_TYPE_TABLES(fa_tile)
FA_TYPE_TABLES(fa_rows)
FA_TYPE_TABLES(fa_weights)

#if FA_X86
/* AVX512-BF16 (vdpbf16ps): cpuid leaf 7, subleaf 1, eax bit 5. */
static int fa_has_avx512bf16(void)
{
    static _Atomic int cached = -1;
    int v = atomic_load(&cached);
    if (v < 0) {
        unsigned int a, b, c, d;
        v = __get_cpuid_count(7, 1, &a, &b, &c, &d) && ((a >> 5) & 1);
        atomic_store(&cached, v);
    }
    return v;
}
#endif

fa_tile_fn fa_dispatch_rows(fa_dtype dtype)
{
    const fa_isa isa = fa_get_isa();
#if FA_X86
    if (dtype == FA_BF16 && isa == FA_ISA_AVX512 && fa_has_avx512bf16())
        return fa_rows_bf16_avx512bf16;
#endif
    return fa_rows_table[dtype][isa];
}

int fa_bf16_dot_product(void)
{
#if FA_X86
    return fa_get_isa() == FA_ISA_AVX512 && fa_has_avx512bf16();
#else
    return 0;
#endif
}
fa_tile_fn fa_dispatch_tile(fa_dtype dtype) { return fa_tile_table[dtype][fa_get_isa()]; }
fa_tile_fn fa_dispatch_weights(fa_dtype dtype) { return fa_weights_table[dtype][fa_get_isa()]; }

typedef void (*fa_exp2_f32_fn)(const float *, float *, int64_t);
typedef void (*fa_exp2_f64_fn)(const double *, double *, int64_t);
static const fa_exp2_f32_fn fa_exp2_f32_table[FA_ISA_COUNT] = FA_TABLE(fa_exp2_array_f32);
static const fa_exp2_f64_fn fa_exp2_f64_table[FA_ISA_COUNT] = FA_TABLE(fa_exp2_array_f64);

void fa_exp2_f32(const float *x, float *y, int64_t n)
{
    fa_exp2_f32_table[fa_get_isa()](x, y, n);
}

void fa_exp2_f64(const double *x, double *y, int64_t n)
{
    fa_exp2_f64_table[fa_get_isa()](x, y, n);
}

static const fa_exp2_f32_fn fa_tanh_f32_table[FA_ISA_COUNT] = FA_TABLE(fa_tanh_array_f32);
static const fa_exp2_f64_fn fa_tanh_f64_table[FA_ISA_COUNT] = FA_TABLE(fa_tanh_array_f64);

void fa_tanh_f32(const float *x, float *y, int64_t n) { fa_tanh_f32_table[fa_get_isa()](x, y, n); }
void fa_tanh_f64(const double *x, double *y, int64_t n) { fa_tanh_f64_table[fa_get_isa()](x, y, n); }

typedef double (*fa_probe_fn)(int64_t);
typedef int (*fa_lanes_fn)(void);
static const fa_probe_fn fa_probe_table[FA_ISA_COUNT] = FA_TABLE(fa_fma_probe_f32);
static const fa_lanes_fn fa_lanes_table[FA_ISA_COUNT] = FA_TABLE(fa_vec_lanes_f32);

double fa_fma_probe(fa_isa isa, int64_t iters, int *lanes)
{
    if (!fa_isa_supported(isa)) return 0;
    *lanes = fa_lanes_table[isa]();
    return fa_probe_table[isa](iters);
}
