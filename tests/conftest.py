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
        diff = np.where(fin, np.abs(f - np.where(fin, ref64, 0.0)), -1.0)
        where = np.unravel_index(np.argmax(diff), ref64.shape)
        raise AssertionError(
            f"{name}: max error {err:.3g} exceeds {bound:.3g} ({rule}); "
            f"worst at index {tuple(int(i) for i in where)}: "
            f"got {f[where]!r}, expected {ref64[where]!r}")


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
