"""Shared helpers for the fastattn test suite.

Test modules import the helpers with ``from conftest import ...``; the
directory of this file is put on ``sys.path`` so that works whatever pytest
import mode is configured.

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

import os
import sys
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    from hypothesis import HealthCheck, settings as _hsettings
except ImportError:  # the property tests need it; the others do not
    pass
else:
    # "default" keeps the suite fast; run a long search with
    # `pytest tests/test_property.py --hypothesis-profile=stress`.
    _common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow],
                   print_blob=True)
    _hsettings.register_profile("fastattn", max_examples=60, **_common)
    _hsettings.register_profile("stress", max_examples=3000, **_common)
    _hsettings.load_profile("fastattn")

F32_U = 2.0 ** -24
F32_FLOOR = 1e-6
F64_RTOL = 1e-12

LAYOUTS = (
    "contiguous",
    "fortran",
    "transposed",
    "negative",
    "strided",
    "unaligned",
    "readonly",
    "broadcast_rows",
    "broadcast_lead",
    "broadcast_cols",
)


# ---------------------------------------------------------------------------
# Random inputs
# ---------------------------------------------------------------------------

@pytest.fixture
def rng(request):
    """A generator seeded from the test's id: reproducible, distinct per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def randn(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def make_qkv(rng, lead, nq, nk, d, dv=None, hkv=None, dtype=np.float32):
    """Random q, k, v with q of shape lead + (nq, d).

    ``lead`` is (), (H,) or (B, H).  ``hkv`` gives k/v fewer heads (GQA);
    ``dv`` defaults to ``d``.
    """
    lead = tuple(lead)
    dv = d if dv is None else dv
    kv_lead = lead
    if hkv is not None:
        kv_lead = lead[:-1] + (hkv,)
    q = randn(rng, lead + (nq, d), dtype)
    k = randn(rng, kv_lead + (nk, d), dtype)
    v = randn(rng, kv_lead + (nk, dv), dtype)
    return q, k, v


def make_mask(rng, kind, shape, p_visible=0.75):
    """A mask of the given shape.

    kind: "bool" (True = visible), "add32" / "add64" (float32 / float64
    additive mask: random values, about 1 - p_visible of them -inf).
    """
    hidden = rng.random(shape) >= p_visible
    if kind == "bool":
        return ~hidden
    dtype = {"add32": np.float32, "add64": np.float64}[kind]
    m = rng.standard_normal(shape).astype(dtype)
    m[hidden] = -np.inf
    return m


def relayout(a, kind):
    """Return an array of a's shape and dtype stored in the given layout.

    The values are a's, except for the stride-0 kinds, which repeat one
    slice of a along an axis (a broadcast view cannot hold distinct values).
    Tests compute their expectations from the returned array.
    """
    ndim = a.ndim
    if kind == "contiguous":
        return np.ascontiguousarray(a)
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "transposed":
        # The (B, N, H, D) storage of PyTorch-style projections, viewed as
        # (B, H, N, D); (N, H, D) for 3-D; column-major rows for 2-D.
        perm = {2: (1, 0), 3: (1, 0, 2), 4: (0, 2, 1, 3)}[ndim]
        return np.ascontiguousarray(a.transpose(perm)).transpose(perm)
    if kind == "negative":
        flip = (slice(None, None, -1),) * ndim
        return np.ascontiguousarray(a[flip])[flip]
    if kind == "strided":
        big = np.zeros(tuple(2 * s + 1 for s in a.shape), dtype=a.dtype)
        view = big[(slice(1, None, 2),) * ndim]
        view[...] = a
        return view
    if kind == "unaligned":
        buf = bytearray(a.nbytes + a.itemsize)
        u = np.ndarray(a.shape, dtype=a.dtype, buffer=buf, offset=1)
        u[...] = a
        return u
    if kind == "readonly":
        r = a.copy()
        r.setflags(write=False)
        return r
    if kind == "broadcast_rows":
        # Every row (query or key) identical: stride 0 on the row axis.
        return np.broadcast_to(a[..., :1, :], a.shape)
    if kind == "broadcast_lead":
        # Stride 0 on the outermost axis (batch or head; rows for 2-D).
        return np.broadcast_to(a[:1], a.shape)
    if kind == "broadcast_cols":
        # Stride 0 on the last (feature) axis: each row is one value repeated.
        return np.broadcast_to(a[..., :1], a.shape)
    raise ValueError(f"unknown layout {kind!r}")


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


def assert_matches_half(name, fast, ref64, naive, naive32, nk, score_term=0.0):
    """The 16-bit rule above for one result array (fast and naive in the
    16-bit dtype, naive32 the float32 value naive was rounded from)."""
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
    rounded = ref64[fin].astype(fast.dtype).astype(np.float64)
    flips = int(np.count_nonzero(f[fin] != rounded))
    flips_naive = int(np.count_nonzero(naive.astype(np.float64)[fin] != rounded))
    allowed = 2 * flips_naive + 0.01 * rounded.size + 2
    assert flips <= allowed, (
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
    """

    def __init__(self, q, k, v, fn=None, nk=None, s_max=None, **kw):
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
                                self.s_max * self.v_max)
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


# ---------------------------------------------------------------------------
# Shapes that reach each path of the core
# ---------------------------------------------------------------------------

# name: (lead of q, kv heads, Nq, Nk, D, Dv).  The core uses the few-row
# ("decode") kernel when H / Hkv * Nq <= 4 (and k, v have unit column
# strides), the 64-row tile kernel otherwise, and splits the keys among
# work items (split-KV, merged by lse) when there are fewer than 16 tiles
# and Nk >= 1024.
PATH_SHAPES = {
    "decode": ((2, 4), 2, 2, 150, 32, 24),          # 2 heads x 2 rows per kv head
    "decode_split": ((1, 4), 1, 1, 2100, 32, 32),   # MQA, 1 task, 4 key chunks
    "tile": ((2, 4), 2, 70, 130, 16, 16),           # GQA, 3 tiles per kv head
    "tile_split": ((1, 2), 2, 40, 1100, 16, 8),     # 2 tiles, 2 key chunks
}


def path_qkv(rng, path, dtype=np.float32):
    """Random q, k, v of the PATH_SHAPES entry ``path``."""
    lead, hkv, nq, nk, d, dv = PATH_SHAPES[path]
    return make_qkv(rng, lead, nq, nk, d, dv=dv, hkv=hkv, dtype=dtype)


# ---------------------------------------------------------------------------
# Per-ISA runs of the variant test modules
# ---------------------------------------------------------------------------
#
# Each variant module (VARIANT_MODULES) defines ``isa_cases()``: a
# deterministic list of IsaCase.  The session fixture ``isa_runs`` starts
# one child interpreter per (ISA path, thread count), with FASTATTN_ISA set
# (it is read at import), which runs every module's cases and pickles the
# results; a crash fails that path's tests, not the run.  Each module's
# ``test_every_isa_path[isa-threads]`` then checks its cases' results on
# that path against the float64 reference (computed once, in the parent),
# requires float32/float64 results to agree with the scalar path at 1
# thread (normalized MSE <= 1e-10 / 1e-24, same NaN and inf positions) and,
# at 2 threads, to be bitwise equal to the 1-thread results.

ISA_NAMES = ("scalar", "avx2", "avx512")
ISA_THREADS = (1, 2)
ISA_COMBOS = [(i, t) for i in ISA_NAMES for t in ISA_THREADS]
VARIANT_MODULES = ("test_window", "test_alibi_softcap", "test_kv_lengths", "test_varlen",
                   "test_kvcache", "test_half", "test_weights_merge")
ISA_NMSE_MAX = {"float32": 1e-10, "float64": 1e-24}
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


class IsaCase:
    """One problem of the per-ISA runs.

    ``run()`` computes fastattn's results (an array or a tuple of arrays)
    in the child; ``check(results)`` raises AssertionError if they are
    wrong (in the parent; it may cache its reference).
    """

    def __init__(self, name, run, check):
        self.name, self.run, self.check = name, run, check


def attention_case(name, q, k, v, **kw):
    """IsaCase of fastattn.attention(q, k, v, return_lse=True, **kw)."""
    cache = {}

    def run():
        import fastattn
        return fastattn.attention(q, k, v, return_lse=True, **kw)

    def check(res):
        if "refs" not in cache:
            cache["refs"] = AttentionRefs(q, k, v, **kw)
        out, lse = res
        cache["refs"].check(out, lse)

    return IsaCase(name, run, check)


def _isa_child_main():
    """Child: run every variant module's cases on the forced path."""
    import importlib
    import pickle
    import traceback

    import fastattn

    forced = os.environ["FASTATTN_ISA"]
    assert fastattn.info()["isa"] == forced, (forced, fastattn.info()["isa"])
    threads = int(os.environ["FASTATTN_TEST_THREADS"])
    fastattn.set_num_threads(threads)
    if fastattn.info()["openmp"]:
        assert fastattn.get_num_threads() == threads
    saved, errors = {}, {}
    for mod in VARIANT_MODULES:
        try:
            cases = importlib.import_module(mod).isa_cases()
        except Exception:
            errors[mod] = traceback.format_exc(limit=5)
            continue
        for c in cases:
            key = f"{mod}::{c.name}"
            print(f"@@start {key}", flush=True)
            try:
                res = c.run()
            except Exception as e:
                errors[key] = f"{type(e).__name__}: {e}"
                continue
            res = res if isinstance(res, tuple) else (res,)
            saved[key] = tuple(np.array(a, copy=True) for a in res)
    with open(os.environ["FASTATTN_TEST_DUMP"], "wb") as f:
        pickle.dump({"saved": saved, "errors": errors}, f)
    print("@@done", flush=True)


def _run_isa_child(isa, threads, dump):
    import pickle
    import subprocess

    import fastattn

    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastattn.__file__)))
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "passive")  # two children share the cores
    env.update(FASTATTN_ISA=isa, FASTATTN_TEST_THREADS=str(threads),
               FASTATTN_TEST_DUMP=str(dump))
    env["PYTHONPATH"] = os.pathsep.join(
        [pkg_parent, _TESTS_DIR] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    r = subprocess.run([sys.executable, "-c", "import conftest; conftest._isa_child_main()"],
                       env=env, capture_output=True, text=True, timeout=300, cwd=_TESTS_DIR)
    started = [ln for ln in r.stdout.splitlines() if ln.startswith("@@start ")]
    res = {"returncode": r.returncode, "stderr": r.stderr[-3000:],
           "last_started": started[-1].split(None, 1)[1] if started else None}
    if r.returncode == 0 and "@@done" in r.stdout:
        with open(dump, "rb") as f:
            res.update(pickle.load(f))
    return res


@pytest.fixture(scope="session")
def isa_runs(tmp_path_factory):
    """{(isa, threads): child result} for every available path, each run
    once per session, two children at a time (this machine has 2 cores)."""
    from concurrent.futures import ThreadPoolExecutor

    import fastattn

    available = fastattn.info()["isa_available"]
    tmp = tmp_path_factory.mktemp("variant_isa")
    combos = [c for c in ISA_COMBOS if c[0] in available]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {c: pool.submit(_run_isa_child, c[0], c[1], tmp / f"{c[0]}-{c[1]}.pkl")
                   for c in combos}
        return {c: f.result() for c, f in futures.items()}


_ISA_CASES = {}


def _module_cases(module):
    if module not in _ISA_CASES:
        import importlib
        _ISA_CASES[module] = importlib.import_module(module).isa_cases()
    return _ISA_CASES[module]


def _nmse(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    fin = np.isfinite(b)
    den = np.sum(b[fin] ** 2)
    num = np.sum((a[fin] - b[fin]) ** 2)
    return num / den if den > 0 else num


def check_isa_path(runs, module, isa, threads):
    """The checks of one (path, thread count) for one module's cases (see
    the comment above IsaCase)."""
    import fastattn

    if isa not in fastattn.info()["isa_available"]:
        pytest.skip(f"this CPU or build does not support the {isa} path")

    def ok(combo):
        res = runs[combo]
        assert res["returncode"] == 0 and "saved" in res, (
            f"FASTATTN_ISA={combo[0]}, {combo[1]} threads: the child died (exit status "
            f"{res['returncode']}) during {res['last_started']}:\n{res['stderr']}")
        return res

    got = ok((isa, threads))
    base = ok(("scalar", 1))
    one = ok((isa, 1))
    assert module not in got["errors"], f"{module}.isa_cases() failed:\n{got['errors'][module]}"
    cases = _module_cases(module)
    assert cases, f"{module} has no isa cases"
    fails = []
    for c in cases:
        key = f"{module}::{c.name}"
        try:
            if key in got["errors"]:
                raise AssertionError(f"raised {got['errors'][key]}")
            res = got["saved"][key]
            c.check(res if len(res) > 1 else res[0])
            for i, (a, b) in enumerate(zip(res, base["saved"][key])):
                assert a.shape == b.shape and a.dtype == b.dtype, f"result {i}: shape/dtype"
                assert np.array_equal(np.isnan(a), np.isnan(b)), (
                    f"result {i}: NaN positions differ from the scalar path")
                if a.dtype.name in ISA_NMSE_MAX:
                    inf = np.isinf(b)
                    assert np.array_equal(np.isinf(a), inf) and np.array_equal(a[inf], b[inf]), (
                        f"result {i}: infinities differ from the scalar path")
                    e = _nmse(a, b)
                    assert e <= ISA_NMSE_MAX[a.dtype.name], (
                        f"result {i}: normalized MSE {e:.3g} against the scalar path at "
                        f"1 thread")
            if threads != 1:
                for i, (a, b) in enumerate(zip(res, one["saved"][key])):
                    assert a.tobytes() == b.tobytes(), (
                        f"result {i}: differs from the same path at 1 thread")
        except AssertionError as e:
            fails.append(f"{c.name}: {str(e).strip()[:700]}")
    assert not fails, (f"FASTATTN_ISA={isa}, {threads} threads: {len(fails)} of {len(cases)} "
                       f"cases of {module} fail:\n" + "\n".join(fails[:6]))


def random_variant_problem(rng, force=(), dtypes=None):
    """A random attention problem with the variants mixed: (q, k, v, kw).

    Sizes around the 64-row/key blocks, decode shapes over long keys
    (few-row kernel, split-KV), few long tiles (tile kernel, split-KV),
    GQA, Dv != D, float32/float64/float16 (or ``dtypes``), any of window,
    alibi_slopes ((H,) or (B, H)), softcap, kv_lengths (0 and Nk included),
    causal modes, bool/additive masks with broadcasting, scales, and
    strided/transposed/negative layouts.  ``force`` names variants that
    must be present ("window", "alibi", "softcap", "kv_lengths").
    NaN is never injected (see test_numeric_edges.py for why).
    """
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    dtype = pick(dtypes or [np.float32, np.float32, np.float64, np.float16])
    hkv = pick([1, 1, 2])
    h = hkv * pick([1, 2, 4])
    b = pick([1, 2, 3])
    r = rng.random()
    if r < 0.2:        # decode: few rows per kv head, long keys
        nq, nk = pick([1, 1, 2, 3]), int(rng.integers(900, 2300))
        h = hkv * pick([1, 2]) if nq > 1 else h
    elif r < 0.3:      # few long tiles: split-KV on the tile kernel
        b, h, hkv = 1, 2, pick([1, 2])
        nq, nk = int(rng.integers(30, 140)), int(rng.integers(1024, 1400))
    else:
        sizes = [0, 1, 2, 5, 17, 63, 64, 65, 100, 130]
        nq, nk = pick(sizes), pick(sizes)
    d = pick([8, 16, 32, 64])
    dv = pick([d, d, 8, 24])
    q, k, v = make_qkv(rng, (b, h), nq, nk, d, dv=dv, hkv=hkv, dtype=dtype)
    q *= pick([1, 1, 4])      # larger scores now and then
    kw = {}
    causal = pick([False, False, True, "top_left"])
    if "window" in force or rng.random() < 0.4:
        sides = [-1, 0, 1, 3, 17, 64, 200]
        kw["window"] = (pick(sides), pick(sides))
        if causal == "top_left":
            causal = True
    if causal is not False:
        kw["causal"] = causal
    if "alibi" in force or rng.random() < 0.3:
        shape = pick([(h,), (b, h)])
        kw["alibi_slopes"] = rng.uniform(-0.3, 1.0, shape) * pick([0.01, 0.1, 1.0])
    if "softcap" in force or rng.random() < 0.3:
        kw["softcap"] = pick([0.05, 1.0, 5.0, 30.0])
    if "kv_lengths" in force or rng.random() < 0.3:
        kw["kv_lengths"] = np.array([pick([0, nk, int(rng.integers(0, nk + 1))])
                                     for _ in range(b)])
    if rng.random() < 0.2:
        full = (b, h, nq, nk)
        shape = tuple(s if rng.random() < 0.6 else 1 for s in full)
        shape = shape[int(rng.integers(0, 4)):]
        kw["mask"] = make_mask(rng, pick(["bool", "add32"]), shape, p_visible=pick([0.3, 0.9]))
    if rng.random() < 0.3:
        kw["scale"] = float(rng.uniform(-1.5, 1.5))
    if rng.random() < 0.3:
        lay = ["contiguous", "transposed", "negative", "strided"]
        q, k, v = (relayout(a, pick(lay)) for a in (q, k, v))
    return q, k, v, kw


def random_variant_cases(seed, n, prefix="random", **kwargs):
    """n IsaCase of random_variant_problem, reproducible from seed."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        q, k, v, kw = random_variant_problem(rng, **kwargs)
        cases.append(attention_case(f"{prefix}{i}", q, k, v, **kw))
    return cases
