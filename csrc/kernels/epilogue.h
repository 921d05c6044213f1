/*
 * epilogue.h: the activations a linear layer applies to its finished sums
 * (kernels/linear.h), on one vector of float32 lanes, and the reference
 * order of the whole epilogue: sum -> + bias -> activation -> + residual.
 *
 * Every activation is a lane-wise function of its input alone, so a row's
 * result stays independent of the other rows.  exp appears only as
 * exp2 of a non-positive argument (vec.h's fa_exp2_ covers x <= 0 only),
 * which every formula below arranges; NaN in gives NaN out.
 *
 * GELU (erf):  x * Phi(x), Phi(x) = erfc(|x|/sqrt2)/2 for x < 0 and
 *   1 - erfc(|x|/sqrt2)/2 above, with
 *   erfc(z) ~ t exp(-z^2 + P(t)), t = 1 / (1 + z/2), P of degree 9: the
 *   Chebyshev fit with a relative error below 1.2e-7 for every z >= 0
 *   (Press et al., Numerical Recipes, "erfcc"); measured errors of the
 *   float32 code in docs/numerics.md.
 *   Taking the negative side straight from erfc avoids the cancellation in
 *   1 + erf(x), which would leave no correct digit in the tail.
 * GELU (tanh): x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), computed as
 *   x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)), the same function.
 * SiLU: x * sigmoid(x).  sigmoid(u) with e = exp(-|u|): 1 / (1 + e) for
 *   u >= 0 and e / (1 + e) below, so no exponent of a positive number is
 *   ever taken.
 * ReLU: x < 0 ? 0 : x (NaN is not < 0 and passes).
 */

#if !FA_IS_DOUBLE && FA_S_KIND == 0 && !FA_KV_I8

#define FA_LOG2E 1.4426950408889634f

FA_INLINE VT FA_FN(fa_gelu_erf_)(VT x)
{
    const VT z = FA_FN(fa_vabs_)(x) * VSPLAT(0.7071067811865476f);
    const VT t = VSPLAT(1) / (VSPLAT(1) + VSPLAT(0.5f) * z);
    static const float c[10] = {-1.26551223f, 1.00002368f, 0.37409196f,  0.09678418f,
                                -0.18628806f, 0.27886807f, -1.13520398f, 1.48851587f,
                                -0.82215223f, 0.17087277f};
    VT poly = VSPLAT(c[9]);
    for (int i = 8; i >= 0; i--) poly = poly * t + VSPLAT(c[i]);
    /* erfc(z) / 2 = t exp(poly - z^2) / 2; the exponent is <= 0 up to
     * rounding (erfc(z) <= 1 / (1 + z/2)), and exp2 is exact enough a
     * rounding above 0 */
    const VT tail = VSPLAT(0.5f) * t * FA_FN(fa_exp2_)((poly - z * z) * VSPLAT(FA_LOG2E));
    /* Phi(x) = erfc/2 below 0 (no subtraction: the negative tail keeps its
     * relative accuracy), 1 - erfc/2 above */
    return x * FA_FN(fa_vsel_)(x < VSPLAT(0), tail, VSPLAT(1) - tail);
}

/* sigmoid(u) = 1 / (1 + exp(-u)), as e / (1 + e) below 0 with e = exp(-|u|). */
FA_INLINE VT FA_FN(fa_sigmoid_)(VT u)
{
    const VT e = FA_FN(fa_exp2_)(FA_FN(fa_vabs_)(u) * VSPLAT(-FA_LOG2E));
    return FA_FN(fa_vsel_)(u < VSPLAT(0), e, VSPLAT(1)) / (VSPLAT(1) + e);
}

/* (1 + tanh(u)) / 2 = sigmoid(2u): the same function without the
 * cancellation of 1 + tanh(u) for negative u. */
FA_INLINE VT FA_FN(fa_gelu_tanh_)(VT x)
{
    const VT u = (x + VSPLAT(0.044715f) * x * x * x) * VSPLAT(2 * 0.7978845608028654f);
    return x * FA_FN(fa_sigmoid_)(u);
}

FA_INLINE VT FA_FN(fa_silu_)(VT x) { return x * FA_FN(fa_sigmoid_)(x); }

FA_INLINE VT FA_FN(fa_activation_)(VT x, int act)
{
    switch (act) {
    case FA_ACT_RELU: return FA_FN(fa_vsel_)(x < VSPLAT(0), VSPLAT(0), x);
    case FA_ACT_GELU: return FA_FN(fa_gelu_erf_)(x);
    case FA_ACT_GELU_TANH: return FA_FN(fa_gelu_tanh_)(x);
    case FA_ACT_SILU: return FA_FN(fa_silu_)(x);
    default: return x;
    }
}

/* The epilogue of n <= VL adjacent outputs whose sums are in r: + bias,
 * activation, + residual, stored to y (bias and residual may be NULL). */
FA_INLINE void FA_FN(fa_epilogue_)(VT r, int n, const float *bias, int act,
                                   const float *residual, float *y)
{
    if (n == VL) {
        if (bias) r += FA_FN(fa_loadu_)(bias);
        r = FA_FN(fa_activation_)(r, act);
        if (residual) r += FA_FN(fa_loadu_)(residual);
        FA_FN(fa_storeu_)(y, r);
    } else {
        if (bias) r += FA_FN(fa_load_tail_)(bias, n, 0);
        r = FA_FN(fa_activation_)(r, act);
        if (residual) r += FA_FN(fa_load_tail_)(residual, n, 0);
        FA_FN(fa_store_tail_)(y, n, r);
    }
}

#undef FA_LOG2E

#endif
