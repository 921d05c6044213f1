/*
 * probes.h: functions exported beside the kernels, compiled with the same
 * ISA flags: the vector exp2 and tanh over arrays (for their accuracy
 * tests) and the FMA peak probe (for the benchmarks' % of peak).  None of
 * them is on the attention path.
 */

#if FA_S_KIND == 0
/* y[i] = f(x[i]) for n values (any n, any alignment), f a vector function
 * of the kernels: whole vectors, then one tail. */
#define FA_ARRAY_FN(name, f)                                                          \
    static void FA_FN(name)(const FA_T *x, FA_T *y, int64_t n)                        \
    {                                                                                 \
        int64_t i = 0;                                                                \
        for (; i + VL <= n; i += VL) FA_FN(fa_storeu_)(y + i, f(FA_FN(fa_loadu_)(x + i))); \
        if (i < n)                                                                    \
            FA_FN(fa_store_tail_)(y + i, (int)(n - i),                                \
                                  f(FA_FN(fa_load_tail_)(x + i, (int)(n - i), 0)));   \
    }
FA_ARRAY_FN(fa_exp2_array_, FA_FN(fa_exp2_)) /* the softmax's exp2 */
FA_ARRAY_FN(fa_tanh_array_, FA_FN(fa_tanh_)) /* the soft cap's tanh */
#undef FA_ARRAY_FN
#endif

#if !FA_IS_DOUBLE && FA_S_KIND == 0
/* FMA peak probe: 12 independent chains of vector FMAs (enough to cover
 * the latency of two FMA pipes), compiled with this path's flags.  Returns
 * a value that depends on every result so nothing is optimized away;
 * the caller times it: flops = iters * 12 * 2 * VL. */
static double FA_FN(fa_fma_probe_)(int64_t iters)
{
    VT a[12];
    const VT b = VSPLAT(0.999999f), c = VSPLAT(1e-7f);
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) a[i] = VSPLAT((FA_T)i);
    for (int64_t it = 0; it < iters; it++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = a[i] * b + c;
    }
    double sum = 0;
    for (int i = 0; i < 12; i++)
        for (int l = 0; l < VL; l++) sum += (double)a[i][l];
    return sum;
}

static int FA_FN(fa_vec_lanes_)(void) { return VL; }
#endif
