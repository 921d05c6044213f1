"""The matrix-unit paths and the plain computation at their precision.

The matrix kernels (family "matrix": the "amx" path on real tiles, the
"amx_emu" path on their emulation) multiply 16-bit operands: bfloat16 or
float16 inputs as they are, float32 inputs rounded to bfloat16 under
``precision="bf16"``.  The softmax probabilities P are rounded to the
operand type before P.V, and each row sum is taken from the rounded values.
So FlashAttention's rule "at bf16 precision" compares a result with the
float64 reference against the *plain computation at that precision*,
``matrix_reference``, which does exactly those roundings and nothing else
(float32 scores of the rounded operands, float32 sums; the lse from the
unrounded probabilities, as the kernels take it):

    max|fast - ref64| <= 2 * max|plain - ref64| + floor

with the floors of support/compare.py, and the same count of entries that
differ from the correctly rounded reference (a wrongly rounded P shows up
there).  ``AttentionRefs(q, k, v, fn=matrix_reference_for(op), **kw)``
gives the check.  ``matrix_oracle`` is what the per-ISA harness hands a
case module's ``isa_cases(oracle)`` for the 16-bit cases of the matrix
kernels: the reference function for inputs of a given dtype.
"""

import numpy as np

# The paths whose prefill shapes run on the matrix kernels.
MATRIX_PATHS = ("amx", "amx_emu")


def _reference():
    from fastattn import reference
    return reference


def bfloat16():
    """ml_dtypes' bfloat16, or None without the optional package."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def round_to(a, op):
    """float32 values of ``a`` rounded to the 16-bit dtype ``op`` (nearest even)."""
    return np.asarray(a, dtype=np.float32).astype(op).astype(np.float32)


def matrix_reference_for(op):
    """The plain attention at the matrix precision of operand type ``op``
    (bfloat16 or float16), with the signature of ``reference.attention``.

    float64 inputs get the exact reference (they are the ref64 of
    AttentionRefs); any other input is rounded to ``op`` (a no-op for
    inputs of that type), its scores computed in float32, P rounded to
    ``op``, the row sum taken from the rounded P, and the output cast to
    the input dtype once."""
    op = np.dtype(op)

    ref = _reference()
    exact = ref.attention

    def attention(q, k, v, *, mask=None, return_lse=False, **kw):
        q, k, v = (np.asarray(a) for a in (q, k, v))
        if q.dtype == np.float64:
            return exact(q, k, v, mask=mask, return_lse=return_lse, **kw)
        q32, k32, v32 = (round_to(a, op) for a in (q, k, v))
        with np.errstate(all="ignore"):
            w = ref.attention_weights(q32, k32, mask=mask, **kw)
            _, lse = exact(q32, k32, v32[..., :1], mask=mask, return_lse=True, **kw)
            top = np.max(w, axis=-1, keepdims=True, initial=0.0)
            seen = ~(top == 0)                  # NaN rows stay NaN
            # exp(s - row max), rounded as the kernel rounds P
            p = round_to(np.where(seen, w / np.where(seen, top, 1), 0), op)
            total = p.sum(axis=-1, keepdims=True, dtype=np.float32)
            if q32.ndim >= 3 and k32.shape[-3] != q32.shape[-3]:
                v32 = np.repeat(v32, q32.shape[-3] // k32.shape[-3], axis=-3)
            out = np.matmul(p, v32) / np.where(seen, total, 1)
            out = np.where(seen, out, 0).astype(q.dtype)
        # the lse comes from the unrounded probabilities: float32-accurate
        return (out, lse.astype(np.float32)) if return_lse else out

    attention.rounds_p = True       # AttentionRefs adds no slack for the rounding
    return attention


def exact_oracle(dtype):
    """The reference function of checks of any kernel's results:
    ``fastattn.reference.attention`` (None, its stand-in for
    ``AttentionRefs(fn=...)``)."""
    return None


def matrix_oracle(dtype):
    """The reference function of checks of the matrix kernels' results for
    inputs of ``dtype``: the plain computation at that 16-bit precision
    (``matrix_reference_for``); None (the exact reference) for others."""
    dtype = np.dtype(dtype)
    if dtype == np.float16 or (dtype.name == "bfloat16" and dtype.itemsize == 2):
        return matrix_reference_for(dtype)
    return None
