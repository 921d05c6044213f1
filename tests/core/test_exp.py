"""Accuracy of the kernel's vector exp2 on every ISA path.

The softmax evaluates exp2 only for x <= 0 (scores minus the running max,
in log2 units), so that is the range checked.  ``_core.exp2`` runs the same
inline function the kernels use, on the ISA path currently selected.

Errors are in ulps of the result's format: |got - exact| divided by the
spacing of that format at the exact value.

* float32: the exact value is ``np.exp2`` in float64 (its own error, about
  1e-16 relative, is some 1e-9 float32 ulps and does not matter).  Target:
  2 ulps.  Measured maxima on a dense grid over [-126, 0]: 1.23 ulp on the
  scalar path (compiled without FMA, so the polynomial rounds twice per
  step), 0.96 ulp on avx2 and avx512.
* float64: the only reference at hand is ``np.exp2`` in float64, which has
  up to about 1 ulp of error itself, so the bound is the 2 ulp target plus
  1 ulp for the reference: 3 ulps.  Measured maximum against np.exp2:
  1.0 ulp on every path.

Below the smallest normal number (2**-126 for float32, 2**-1022 for
float64; "min_exp" below) the kernel clamps x to min_exp - 1, where the
2**n it builds in the exponent field is +0.  So:

* x < min_exp - 0.5 (which includes -inf) gives exactly +0;
* x in [min_exp - 0.5, min_exp) rounds to n = min_exp and gives the
  polynomial times 2**min_exp, a subnormal within 1 ulp of the subnormal
  spacing (measured: 0.86 ulp scalar, 0.92-0.94 ulp avx2/avx512 for float32;
  1.0 ulp against np.exp2 for float64);
* x in (min_exp - 1, min_exp - 0.5) is flushed to +0 although the true
  value is a subnormal: an absolute error below 2**(min_exp - 0.5), which
  never matters next to a softmax row sum >= 1.

The tests require exactly +0 below min_exp - 0.5 and, in
[min_exp - 0.5, min_exp), either +0 (a flush) or a value within 2 ulps of
the subnormal spacing.
"""

import numpy as np
import pytest

from fastattn import _core

ISA_PATHS = _core.isa_available()

F32_MAX_ULP = 2.0
F64_MAX_ULP = 3.0  # 2 ulp target + up to 1 ulp error of np.exp2 itself


def _grid(lo, hi, npoints, dtype):
    """A dense grid over [lo, hi] in ``dtype`` with both ends, every integer,
    the points n +- 0.5 (ties of the round-to-nearest range reduction) and
    the neighbours of each integer in the format."""
    dense = np.linspace(lo, hi, npoints).astype(dtype)
    n = np.arange(lo, hi + 1).astype(dtype)
    x = np.concatenate([
        dense, n, n - dtype(0.5), n + dtype(0.5),
        np.nextafter(n, dtype(-np.inf)), np.nextafter(n, dtype(np.inf)),
        np.array([lo, hi], dtype=dtype),
    ])
    return np.unique(x[(x >= lo) & (x <= hi)])


def _max_ulp_error(x, got, ulp_dtype):
    """(max error in ulps of ulp_dtype, x where it occurs); the exact value
    is np.exp2 in float64, rounded to ulp_dtype to pick the ulp size."""
    exact = np.exp2(x.astype(np.float64))
    ulp = np.spacing(exact.astype(ulp_dtype)).astype(np.float64)
    err = np.abs(got.astype(np.float64) - exact) / ulp
    i = int(np.argmax(err))
    return float(err[i]), x[i]


def test_every_path_is_tested():
    assert "scalar" in ISA_PATHS


@pytest.mark.parametrize("dtype, lo, points, max_ulp", [
    pytest.param(np.float32, -126, 2_000_001, F32_MAX_ULP, id="float32"),
    pytest.param(np.float64, -1022, 200_001, F64_MAX_ULP, id="float64"),
])
def test_exp2_ulp(isa, dtype, lo, points, max_ulp):
    # float32 against np.exp2 in float64 (exact for it); float64 against
    # np.exp2 itself (see the module docstring)
    x = _grid(lo, 0, points, dtype)
    assert x[0] == lo and x[-1] == 0
    got = _core.exp2(x)
    assert got.dtype == dtype and got.shape == x.shape
    worst, at = _max_ulp_error(x, got, dtype)
    name = np.dtype(dtype).name
    print(f"\nexp2 {name} on {isa}: max error {worst:.4f} ulp at x={at!r}")
    assert worst <= max_ulp, (
        f"{isa}: {name} exp2 error {worst:.4f} ulp at x={at!r} "
        f"(got {got[np.searchsorted(x, at)]!r}, np.exp2 in float64 "
        f"{np.exp2(np.float64(at))!r})")


@pytest.mark.parametrize("dtype, min_exp", [(np.float32, -126), (np.float64, -1022)],
                         ids=["f32", "f64"])
def test_exp2_special_values(isa, dtype, min_exp):
    tiny = np.finfo(dtype).tiny  # smallest normal, 2**min_exp
    x = np.array([0.0, -0.0, min_exp, -np.inf, np.nan], dtype=dtype)
    y = _core.exp2(x)
    assert y[0] == 1 and y[1] == 1, "exp2(0) must be exactly 1"
    assert y[2] == tiny, f"exp2({min_exp}) = {y[2]!r}, expected the smallest normal"
    assert y[3] == 0 and not np.signbit(y[3]), f"exp2(-inf) = {y[3]!r}, expected +0"
    assert np.isnan(y[4]), f"exp2(nan) = {y[4]!r}, expected NaN"
    # NaN stays NaN whatever the other lanes hold and wherever it sits.
    for pos in (0, 3, 7, 8, 15, 16, 20):
        z = np.full(21, -1.0, dtype=dtype)
        z[pos] = np.nan
        w = _core.exp2(z)
        assert np.isnan(w[pos]) and (np.delete(w, pos) == 0.5).all(), f"NaN at {pos}"


@pytest.mark.parametrize("dtype, min_exp", [(np.float32, -126), (np.float64, -1022)],
                         ids=["f32", "f64"])
def test_exp2_below_smallest_normal(isa, dtype, min_exp):
    half = dtype(min_exp - 0.5)
    # Strictly below min_exp - 0.5: exactly +0.
    flushed = np.concatenate([
        np.array([np.nextafter(half, dtype(-np.inf))], dtype=dtype),
        np.linspace(min_exp - 0.5, min_exp - 1, 2001, dtype=dtype)[1:],
        np.array([min_exp - 1.5, 2 * min_exp, -1e4, np.finfo(dtype).min, -np.inf],
                 dtype=dtype),
    ])
    assert (flushed < half).all()
    yf = _core.exp2(flushed)
    bad = flushed[(yf != 0) | np.signbit(yf)]
    assert bad.size == 0, (
        f"exp2 is not +0 below {min_exp - 0.5}, e.g. at x={bad[:5]!r}")

    # [min_exp - 0.5, min_exp): the true value is subnormal.  Either +0 or
    # close to it in units of the subnormal spacing.
    sub = np.linspace(min_exp - 0.5, min_exp, 20001, dtype=dtype)[:-1]
    assert sub[0] == half and (sub < min_exp).all()
    ys = _core.exp2(sub)
    exact = np.exp2(sub.astype(np.float64))
    spacing = float(np.spacing(np.finfo(dtype).smallest_subnormal))
    err = np.abs(ys.astype(np.float64) - exact) / spacing
    ok = ((ys == 0) & ~np.signbit(ys)) | (err <= 2.0)
    assert ok.all(), (
        f"exp2 in [{min_exp - 0.5}, {min_exp}) is neither +0 nor within 2 subnormal "
        f"ulps, e.g. x={sub[~ok][:3]!r} -> {ys[~ok][:3]!r}")
    nonzero = ys != 0
    print(f"\nexp2 {np.dtype(dtype).name} on {isa} in [{min_exp - 0.5}, {min_exp}): "
          f"{nonzero.sum()} of {ys.size} subnormal, max error "
          f"{err[nonzero].max(initial=0.0):.4f} subnormal ulp")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_exp2_lengths_and_layouts(isa, dtype):
    # Every length up to a few vectors (the tail is handled separately from
    # whole vectors) and non-contiguous / multi-dimensional input give the
    # same values as one long contiguous call.
    rng = np.random.default_rng(7)
    x = (-30 * rng.random(97)).astype(dtype)
    x[::11] = -np.inf
    full = _core.exp2(x)
    for n in range(0, 40):
        np.testing.assert_array_equal(_core.exp2(x[:n]), full[:n], err_msg=f"length {n}")
    np.testing.assert_array_equal(_core.exp2(x[::3]), full[::3])
    np.testing.assert_array_equal(_core.exp2(x[:96].reshape(8, 12)), full[:96].reshape(8, 12))
    with pytest.raises(TypeError, match="x has dtype"):
        _core.exp2(x.astype(np.float16))
