"""Results against the float64 reference, under the tolerance rule below,
with a failure report that names the worst entry and its values.

Tolerance rule (the one FlashAttention's tests use)
---------------------------------------------------
``ref64`` is the NumPy reference run on float64 copies of the inputs, and
``naive`` is the reference run on the inputs as given (float32 math for
float32 inputs).  For float32 inputs the compiled result must satisfy

    max|fast - ref64| <= 2 * max|naive - ref64| + floor
    floor = (1e-6 + 2 * sqrt(Nk) * u) * max(1, max|ref64|) + 4 * u * S * V

with u = 2**-24 (float32 unit roundoff), S = max |scale * q.k| over all
(query, key) pairs and V = max|v| (V = 1 for the lse).  So the result may
be at most twice as far from the exact answer as the straightforward
float32 computation, plus a floor.  The floor matters when the naive
computation happens to be (nearly) exact, which BLAS's blocked summation and
exactly representable products sometimes achieve:

* 1e-6 is about 8 float32 ulps of the result;
* 2 * sqrt(Nk) * u is the statistical size of the rounding error of a sum
  of Nk float32 terms (the kernel sums each block of keys on its own and
  then adds the block sums, so even correlated terms, such as all key and
  value rows equal, stay well inside it);
* 4 * u * S * V: any float32 implementation rounds each score (or q scaled
  by scale * log2(e)), an absolute error of about u * S in the exponent,
  i.e. a relative error of u * S in each weight.

For float64 inputs the reference is already float64 and the rule is

    max|fast - ref64| <= 1e-12 * (1 + max|ref64|)

which leaves room for a different summation order and a vectorized exp
(both worth about 1e-15 relative per operation) over thousands of keys,
while still catching any real bug.

Both rules are applied to the output and, when returned, to the
log-sum-exp.  Only entries that are finite in ``ref64`` are compared
numerically; NaN positions and infinities (the ``-inf`` lse of rows that see
no key) must match exactly.
"""

import numpy as np
import pytest

F32_U = 2.0 ** -24
F32_FLOOR = 1e-6
F64_RTOL = 1e-12


# ---------------------------------------------------------------------------
# Reference and tolerance
# ---------------------------------------------------------------------------

def _reference():
    from fastattn import reference
    return reference


def to64(x):
    if x is None:
        return None
    x = np.asarray(x)
    return x.astype(np.float64) if x.dtype == np.float32 else x


def reference_results(q, k, v, **kw):
    """(ref64_out, ref64_lse, naive_out, naive_lse) for the given inputs."""
    ref = _reference()
    kw = dict(kw)
    mask = kw.pop("mask", None)
    mask64 = to64(mask)
    o64, l64 = ref.attention(to64(q), to64(k), to64(v), mask=mask64,
                             return_lse=True, **kw)
    if np.asarray(q).dtype == np.float64:
        return o64, l64, o64, l64
    with np.errstate(all="ignore"):
        on, ln = ref.attention(q, k, v, mask=mask, return_lse=True, **kw)
    return o64, l64, on, ln


def max_abs_score(q, k, scale=None):
    """max |scale * q.k| over all (query, key) pairs a query head reads."""
    q64, k64 = to64(q), to64(k)
    if q64.size == 0 or k64.size == 0:
        return 0.0
    if q64.ndim >= 3 and k64.shape[-3] != q64.shape[-3]:
        k64 = np.repeat(k64, q64.shape[-3] // k64.shape[-3], axis=-3)
    d = q64.shape[-1]
    if scale is None:
        scale = 1.0 / np.sqrt(d) if d else 1.0
    with np.errstate(all="ignore"):
        s = np.abs(np.matmul(q64, np.swapaxes(k64, -1, -2)))
    s = s[np.isfinite(s)]
    return abs(float(scale)) * float(s.max()) if s.size else 0.0


def _fail_at_worst(name, f, ref64, fin, err, bound, rule):
    """Raise the tolerance failure, naming the worst index and its values."""
    diff = np.where(fin, np.abs(f - np.where(fin, ref64, 0.0)), -1.0)
    where = np.unravel_index(np.argmax(diff), ref64.shape)
    raise AssertionError(
        f"{name}: max error {err:.3g} exceeds {bound:.3g} ({rule}); "
        f"worst at index {tuple(int(i) for i in where)}: "
        f"got {f[where]!r}, expected {ref64[where]!r}")


def assert_matches(name, fast, ref64, naive, dtype, nk, score_term=0.0):
    """Apply the tolerance rule of this module to one result array.

    ``nk`` is the number of keys (the length of the sums behind each entry)
    and ``score_term`` is S * V of the rule (see the module docstring).
    """
    fast = np.asarray(fast)
    assert fast.shape == ref64.shape, f"{name}: shape {fast.shape} != {ref64.shape}"
    f = fast.astype(np.float64)
    nan_f, nan_r = np.isnan(f), np.isnan(ref64)
    if not np.array_equal(nan_f, nan_r):
        bad = np.argwhere(nan_f != nan_r)[:5].tolist()
        raise AssertionError(
            f"{name}: NaN positions differ from the reference, e.g. at {bad}")
    inf_r = np.isinf(ref64)
    if not np.array_equal(np.isinf(f), inf_r) or not np.array_equal(f[inf_r], ref64[inf_r]):
        bad = np.argwhere((np.isinf(f) != inf_r))[:5].tolist()
        raise AssertionError(
            f"{name}: infinities differ from the reference, e.g. at {bad}")
    fin = np.isfinite(ref64)
    if not fin.any():
        return
    err = np.max(np.abs(f[fin] - ref64[fin]))
    scale = np.max(np.abs(ref64[fin]))
    if np.dtype(dtype) == np.float32:
        with np.errstate(invalid="ignore"):
            naive_err = np.max(np.abs(naive.astype(np.float64)[fin] - ref64[fin]))
        bound = (2 * naive_err + (F32_FLOOR + 2 * np.sqrt(nk) * F32_U) * max(1.0, scale)
                 + 4 * F32_U * score_term)
        rule = f"2 * naive32 error {naive_err:.3g} + floor"
    else:
        bound = F64_RTOL * (1.0 + scale)
        rule = f"{F64_RTOL:g} * (1 + max|ref| = {scale:.3g})"
    if not err <= bound:
        _fail_at_worst(name, f, ref64, fin, err, bound, rule)


def _finite_abs_max(a):
    a = np.abs(np.asarray(a, dtype=np.float64))
    return float(np.max(a, initial=0.0, where=np.isfinite(a)))


def assert_result(q, k, v, out, lse=None, **kw):
    """Check a result of fastattn.attention(q, k, v, **kw) (out and, if
    given, lse) against the reference under the tolerance rule."""
    dtype = np.asarray(q).dtype
    o64, l64, on, ln = reference_results(q, k, v, **kw)
    nk = k.shape[-2]
    s_max = max_abs_score(q, k, kw.get("scale"))
    assert_matches("out", out, o64, on, dtype, nk, s_max * _finite_abs_max(v))
    if lse is not None:
        assert_matches("lse", lse, l64, ln, dtype, nk, s_max)


def check_attention(q, k, v, **kw):
    """Run fastattn.attention with return_lse=True and check it.

    Checks shapes, dtypes and values of both the output and the lse against
    the reference under the tolerance rule.  Returns (out, lse).
    """
    import fastattn

    dtype = np.asarray(q).dtype
    out, lse = fastattn.attention(q, k, v, return_lse=True, **kw)
    assert isinstance(out, np.ndarray) and isinstance(lse, np.ndarray)
    assert out.dtype == dtype, f"out dtype {out.dtype}, expected {dtype}"
    assert lse.dtype == dtype, f"lse dtype {lse.dtype}, expected {dtype}"
    assert out.shape == q.shape[:-1] + (v.shape[-1],)
    assert lse.shape == q.shape[:-1]
    assert_result(q, k, v, out, lse, **kw)
    return out, lse


def check_attention_out_only(q, k, v, **kw):
    """Like check_attention, without asking for the lse."""
    import fastattn

    dtype = np.asarray(q).dtype
    out = fastattn.attention(q, k, v, **kw)
    assert isinstance(out, np.ndarray), f"expected an ndarray, got {type(out)}"
    assert out.dtype == dtype
    assert out.shape == q.shape[:-1] + (v.shape[-1],)
    assert_result(q, k, v, out, **kw)
    return out


# ---------------------------------------------------------------------------
# float16 / bfloat16 inputs (stored 16-bit, computed in float32)
# ---------------------------------------------------------------------------
#
# Tolerance rule for 16-bit inputs (FlashAttention's rule at that precision)
# --------------------------------------------------------------------------
# ``ref64`` is the reference on float64 copies of the (16-bit) inputs,
# ``naive`` the reference on the 16-bit inputs as given (it computes in
# float32 and rounds the result to the 16-bit dtype once), and ``naive32``
# the same computation before that rounding (the reference on float32
# copies).  The compiled result must satisfy
#
#     max|fast - ref64| <= 2 * max|naive - ref64| + floor16
#     floor16 = 6 * max|naive32 - ref64| + 2 * floor32
#
# with floor32 the float32 floor of the module docstring.  Why this floor:
# fast is round16(f) for the kernel's float32 result f, naive is round16(n)
# for n = naive32.  round16 picks the nearest 16-bit value, so
# |round16(f) - f| <= |round16(n) - f|, and by the triangle inequality
# |round16(f) - x| <= |round16(n) - x| + 2|n - x| + 2|f - x| for the exact
# x.  With |f - x| within the float32 rule (2 * |n - x| + floor32) that is
# at most naive's error + 6 * naive32's error + 2 * floor32: the floor is a
# few float32 rounding errors, orders of magnitude below one 16-bit ulp, so
# a kernel that rounds the wrong way (truncation, double rounding through
# another format, float16 intermediates) fails.
#
# The max-error rule cannot see a wrong rounding mode (truncation moves
# each entry by less than the 1-ulp slack that 2 * naive's half-ulp error
# leaves), so a sharper count is required too: the entries that differ
# from the correctly rounded float64 reference, round16(ref64), number at
# most 2 * naive's + 1% of the entries + 2.  A float32 error flips the
# rounding only within ~1e-4 ulp of a midpoint; truncation flips half of
# all entries.
#
# The lse of 16-bit inputs is float32 (computed from the widened inputs)
# and is checked with the float32 rule.

F16_U = 2.0 ** -11
BF16_U = 2.0 ** -8

# The matrix kernels (explain's kernel "matrix") round the probabilities P
# to the 16-bit input type before P.V (FlashAttention's numerics): each p_j
# moves by at most u/2 relatively (u the unit above), so the output moves by
# at most u/2 * max|v_j - out| <= u * max|v|.  Their 16-bit results are held
# to the max-error rule with 2 * u * max|v| added; the rounding count does
# not apply (rounding P flips many last bits).  The lse stays
# float32-accurate.  The slack follows the plan of the call, not the path:
# on a matrix path, decode shapes run the few-row kernel, which keeps P in
# float32, and get the plain 16-bit rule.
#
# Whether the checked results rounded P where the reference does not: the
# per-ISA harness sets this while it checks a child's results in the parent
# (False: it checks matrix-kernel results against the plain computation at
# their precision, which rounds P itself); None: the plan of the call in
# this process says.
p_rounded = None


def plan_kernel(q, k, v, **kw):
    """The kernel family ``fastattn.attention(q, k, v, **kw)`` runs in this
    process (explain's ``kernel``)."""
    import fastattn

    return fastattn.explain(q, k, v, **kw)["kernel"]


def plan_kernel_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, **kw):
    """The kernel family ``fastattn.attention_varlen`` runs in this process:
    that of a batch of its longest sequences (the plan's choice follows the
    longest query and key lengths)."""
    longest = [int(np.diff(cu).max()) if len(cu) > 1 else 0
               for cu in (cu_seqlens_q, cu_seqlens_k, cu_seqlens_k)]
    padded = (np.zeros((1, a.shape[1], n, a.shape[2]), a.dtype)
              for a, n in zip((q, k, v), longest))
    return plan_kernel(*padded, **{key: kw[key] for key in ("causal", "window") if key in kw})


def is_half(dtype):
    """float16 or ml_dtypes.bfloat16 (recognized by name: optional package)."""
    dtype = np.dtype(dtype)
    return dtype == np.float16 or (dtype.name == "bfloat16" and dtype.itemsize == 2)


def half_dtypes():
    """pytest params for the 16-bit dtypes; bfloat16 is skipped, with the
    reason, when ml_dtypes is not installed."""
    try:
        import ml_dtypes
    except ImportError:
        bf16 = pytest.param(None, id="bf16", marks=pytest.mark.skip(
            reason="bfloat16 needs the optional ml_dtypes package (pip install ml_dtypes)"))
    else:
        bf16 = pytest.param(np.dtype(ml_dtypes.bfloat16), id="bf16")
    return [pytest.param(np.dtype(np.float16), id="f16"), bf16]


def to64_any(x):
    """A float64 copy of a float array of any width (float16 and bfloat16
    included); bool and integer arrays (and None) as they are."""
    if x is None:
        return None
    x = np.asarray(x)
    if x.dtype == np.float64 or x.dtype.kind in "biu":
        return x
    return x.astype(np.float64)


def to32(x):
    """float16 / bfloat16 arrays as float32 copies; others as they are."""
    if x is None:
        return None
    x = np.asarray(x)
    return x.astype(np.float32) if is_half(x.dtype) else x


def _float32_floor(nk, scale, score_term):
    return (F32_FLOOR + 2 * np.sqrt(nk) * F32_U) * max(1.0, scale) + 4 * F32_U * score_term


def assert_matches_half(name, fast, ref64, naive, naive32, nk, score_term=0.0, p_term=None):
    """The 16-bit rule above for one result array (fast and naive in the
    16-bit dtype, naive32 the float32 value naive was rounded from);
    ``p_term`` (max|v|) when P was rounded to 16 bits (matrix paths)."""
    fast = np.asarray(fast)
    assert is_half(fast.dtype), f"{name}: dtype {fast.dtype} is not 16-bit"
    assert fast.shape == ref64.shape, f"{name}: shape {fast.shape} != {ref64.shape}"
    f = fast.astype(np.float64)
    nan_f, nan_r = np.isnan(f), np.isnan(ref64)
    if not np.array_equal(nan_f, nan_r):
        bad = np.argwhere(nan_f != nan_r)[:5].tolist()
        raise AssertionError(f"{name}: NaN positions differ from the reference, e.g. at {bad}")
    inf_r = np.isinf(ref64)
    if not np.array_equal(np.isinf(f), inf_r) or not np.array_equal(f[inf_r], ref64[inf_r]):
        bad = np.argwhere(np.isinf(f) != inf_r)[:5].tolist()
        raise AssertionError(f"{name}: infinities differ from the reference, e.g. at {bad}")
    fin = np.isfinite(ref64)
    if not fin.any():
        return
    err = np.max(np.abs(f[fin] - ref64[fin]))
    scale = np.max(np.abs(ref64[fin]))
    with np.errstate(invalid="ignore"):
        n16 = np.max(np.abs(naive.astype(np.float64)[fin] - ref64[fin]))
        n32 = np.max(np.abs(naive32.astype(np.float64)[fin] - ref64[fin]))
    bound = 2 * n16 + 6 * n32 + 2 * _float32_floor(nk, scale, score_term)
    if p_term is not None:
        bound += 2 * (F16_U if fast.dtype == np.float16 else BF16_U) * p_term
    rounded = ref64[fin].astype(fast.dtype).astype(np.float64)
    flips = int(np.count_nonzero(f[fin] != rounded))
    flips_naive = int(np.count_nonzero(naive.astype(np.float64)[fin] != rounded))
    allowed = 2 * flips_naive + 0.01 * rounded.size + 2
    assert p_term is not None or flips <= allowed, (
        f"{name}: {flips} of {rounded.size} entries differ from the correctly rounded "
        f"float64 reference (naive: {flips_naive}; allowed {allowed:.0f}): wrong rounding?")
    if not err <= bound:
        _fail_at_worst(name, f, ref64, fin, err, bound,
                       f"2 * naive {fast.dtype} error {n16:.3g} + 6 * naive float32 "
                       f"error {n32:.3g} + floor")


# ---------------------------------------------------------------------------
# References computed once, checked many times (any input dtype)
# ---------------------------------------------------------------------------

class AttentionRefs:
    """The float64 reference and the naive results for one
    ``attention(q, k, v, **kw)`` problem, any float dtype, with a
    ``check(out, lse)`` applying the matching tolerance rule.

    ``fn`` is the reference function (``reference.attention`` by default;
    any function with its signature and return_lse, e.g. a wrapper).
    ``kernel`` is the kernel family that computed the checked results,
    given where q, k, v and the options are not one call of
    ``fastattn.attention`` (varlen); default ``plan_kernel(q, k, v, **kw)``.
    It decides the 16-bit P-rounding slack (see ``p_rounded``).
    """

    def __init__(self, q, k, v, fn=None, nk=None, s_max=None, kernel=None, **kw):
        ref = _reference()
        fn = ref.attention if fn is None else fn
        kw = dict(kw)
        mask = kw.pop("mask", None)
        self.dtype = np.asarray(q).dtype
        self.o64, self.l64 = fn(to64_any(q), to64_any(k), to64_any(v), mask=to64_any(mask),
                                return_lse=True, **kw)
        with np.errstate(all="ignore"):
            if self.dtype == np.float64:
                self.on, self.ln = self.o64, self.l64
            else:
                self.on, self.ln = fn(q, k, v, mask=mask, return_lse=True, **kw)
            self.o32 = None
            if is_half(self.dtype):
                self.o32 = fn(to32(q), to32(k), to32(v), mask=mask, **kw)
        self.nk = k.shape[-2] if nk is None else nk
        # the slack is for a kernel that rounded P where the reference did not
        self.p_rounded = is_half(self.dtype) and not getattr(fn, "rounds_p", False) and (
            p_rounded if p_rounded is not None else
            (kernel or plan_kernel(q, k, v, mask=mask, **kw)) == "matrix")
        if s_max is None:
            s_max = max_abs_score(to64_any(q), to64_any(k), kw.get("scale"))
        self.s_max = s_max
        self.v_max = _finite_abs_max(to64_any(v))

    def check(self, out, lse=None, exact_empty=True):
        """Tolerance rule on out (and lse); rows that see no key (lse64 =
        -inf) must be exact zeros with lse -inf."""
        out = np.asarray(out)
        assert out.dtype == self.dtype, f"out dtype {out.dtype}, expected {self.dtype}"
        if is_half(self.dtype):
            assert_matches_half("out", out, self.o64, self.on, self.o32, self.nk,
                                self.s_max * self.v_max,
                                self.v_max if self.p_rounded else None)
        else:
            assert_matches("out", out, self.o64, self.on, self.dtype, self.nk,
                           self.s_max * self.v_max)
        empty = self.l64 == -np.inf
        if exact_empty and empty.any():
            assert (out[empty] == 0).all(), "a row that sees no key is not exact zeros"
        if lse is not None:
            lse = np.asarray(lse)
            want = np.float64 if self.dtype == np.float64 else np.float32
            assert lse.dtype == want, f"lse dtype {lse.dtype}, expected {np.dtype(want)}"
            ldt = np.float64 if self.dtype == np.float64 else np.float32
            assert_matches("lse", lse, self.l64, self.ln, ldt, self.nk, self.s_max)
            if exact_empty and empty.any():
                assert (lse[empty] == -np.inf).all(), "a row that sees no key has lse != -inf"


def check_any(q, k, v, **kw):
    """fastattn.attention(q, k, v, return_lse=True, **kw) checked against
    the reference with the rule for q's dtype (float32, float64 or 16-bit);
    rows that see no key must be exact zeros with lse -inf.  Returns
    (out, lse)."""
    import fastattn

    out, lse = fastattn.attention(q, k, v, return_lse=True, **kw)
    assert out.shape == q.shape[:-1] + (v.shape[-1],)
    assert lse.shape == q.shape[:-1]
    AttentionRefs(q, k, v, **kw).check(out, lse)
    return out, lse


def check_weights(w, q, k, **kw):
    """attention weights w (..., Nq, Nk) against reference.attention_weights
    on float64 copies, with the rule for q's dtype; rows that see no key
    must be all exact zeros."""
    ref = _reference()
    kw = dict(kw)
    mask = kw.pop("mask", None)
    dtype = np.asarray(q).dtype
    w64 = ref.attention_weights(to64_any(q), to64_any(k), mask=to64_any(mask), **kw)
    w = np.asarray(w)
    assert w.dtype == dtype, f"weights dtype {w.dtype}, expected {dtype}"
    assert w.shape == w64.shape, f"weights shape {w.shape}, expected {w64.shape}"
    nk = k.shape[-2]
    s_max = max_abs_score(to64_any(q), to64_any(k), kw.get("scale"))
    with np.errstate(all="ignore"):
        wn = w64 if dtype == np.float64 else ref.attention_weights(q, k, mask=mask, **kw)
        if is_half(dtype):
            w32 = ref.attention_weights(to32(q), to32(k), mask=mask, **kw)
            assert_matches_half("weights", w, w64, wn, w32, nk, s_max)
        else:
            assert_matches("weights", w, w64, wn, dtype, nk, s_max)
    with np.errstate(invalid="ignore"):
        empty = (np.nan_to_num(w64, nan=1.0) == 0).all(axis=-1)
    if empty.any():
        assert (w[empty] == 0).all(), "weights of a row that sees no key are not all 0"
    return w64

