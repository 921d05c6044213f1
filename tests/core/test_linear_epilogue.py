"""fastattn.linear's fused epilogue (activation, residual), its threads, and
fastattn.layer_norm: results against float64 references under the 2x rule,
bitwise row and thread invariance, NaN confined to its row, in-place
forms, and bad arguments."""

import math

import numpy as np
import pytest

import fastattn
from fastattn import layer_norm, linear, pack_linear

ACTS = [None, "relu", "gelu", "gelu_tanh", "silu"]
# (rows, in_features, out_features): one K block and several (K > 256), panel tails
SHAPES = [(3, 5, 7), (37, 300, 40), (130, 384, 96), (9, 600, 17)]

_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _sigmoid(u):
    e = np.exp(-np.abs(u))
    return np.where(u < 0, e, 1.0) / (1.0 + e)


def _act64(z, act):
    """The activations in float64, each from a form without cancellation."""
    if act is None:
        return z
    if act == "relu":
        return np.where(z < 0, 0.0, z)
    if act == "gelu":
        return z * 0.5 * _erfc(-z / math.sqrt(2.0))
    if act == "gelu_tanh":
        return z * _sigmoid(2.0 * math.sqrt(2.0 / math.pi) * (z + 0.044715 * z ** 3))
    return z * _sigmoid(z)


def _problem(rng, m, k, n):
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = (rng.standard_normal((n, k)) / math.sqrt(max(k, 1))).astype(np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    r = rng.standard_normal((m, n), dtype=np.float32)
    return x, w, b, r


def _check(x, w, b, r, act, got):
    """2x rule: the naive computation is NumPy's float32 product and bias,
    then the activation of that float32 sum rounded to float32, then the
    residual; the floor is a few float32 ulps of the sums' scale."""
    z64 = x.astype(np.float64) @ w.astype(np.float64).T + b
    ref = _act64(z64, act) + r
    z32 = x @ w.T + b
    naive = _act64(z32.astype(np.float64), act).astype(np.float32) + r
    err = np.max(np.abs(got - ref), initial=0.0)
    naive_err = np.max(np.abs(naive - ref), initial=0.0)
    scale = (np.abs(x).max(initial=0) * np.abs(w).max(initial=0) * math.sqrt(x.shape[1])
             + np.abs(b).max() + np.abs(r).max() + 1)
    assert err <= 2 * naive_err + 8 * np.finfo(np.float32).eps * scale, (err, naive_err)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("m, k, n", SHAPES)
def test_epilogue_matches_the_float64_reference(rng, isa, act, m, k, n):
    x, w, b, r = _problem(rng, m, k, n)
    p = pack_linear(w, b)
    got = linear(x, p, activation=act, residual=r)
    _check(x, w, b, r, act, got)
    # without a residual, and without a bias
    _check(x, w, b, np.zeros_like(r), act, linear(x, p, activation=act))
    p0 = pack_linear(w)
    _check(x, w, np.zeros_like(b), r, act, linear(x, p0, activation=act, residual=r))


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "silu"])
def test_activation_accuracy_over_its_range(act):
    """Through an identity weight (exact sums), the activation alone: its
    error is at most 2.5e-7 |x| over [-14, 14] (docs/numerics.md), and it
    is within 16 ulps of the result where the result is not a tail value."""
    n = 16
    v = np.linspace(-14, 14, 28001 * n, dtype=np.float32).reshape(-1, n)
    got = linear(v, pack_linear(np.eye(n, dtype=np.float32)), activation=act).astype(np.float64)
    ref = _act64(v.astype(np.float64), act)
    err = np.abs(got - ref)
    assert (err <= 2.5e-7 * np.abs(v)).all()
    body = np.abs(ref) >= 1e-2 * np.abs(v)
    ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    assert (err[body] <= 16 * ulp[body]).all()
    # large arguments: the identity or zero side, exactly where it must be
    big = np.array([[1e30, -1e30, 100, -100] * 4], dtype=np.float32)
    out = linear(big, pack_linear(np.eye(n, dtype=np.float32)), activation=act)
    assert np.array_equal(out[0, :4], np.array([1e30, -0.0, 100, -0.0], np.float32))


@pytest.mark.parametrize("act", ACTS)
def test_nan_and_inf_stay_in_their_row(rng, act):
    x, w, b, r = _problem(rng, 12, 300, 20)
    p = pack_linear(w, b)
    clean = linear(x, p, activation=act, residual=r)
    x[4, 7] = np.nan
    x[9, 2] = np.inf
    got = linear(x, p, activation=act, residual=r)
    assert np.isnan(got[4]).all()
    assert not np.isfinite(got[9]).all()  # (relu maps -inf sums to 0)
    others = [i for i in range(12) if i not in (4, 9)]
    assert np.array_equal(got[others], clean[others])


@pytest.mark.parametrize("m, k, n", [(37, 300, 40), (256, 384, 1536), (200, 1536, 100)])
def test_threads_and_rows_do_not_change_a_bit(rng, m, k, n):
    x, w, b, r = _problem(rng, m, k, n)
    p = pack_linear(w, b)
    one = linear(x, p, activation="gelu", residual=r, num_threads=1)
    for t in (2, 3, 7):
        assert np.array_equal(linear(x, p, activation="gelu", residual=r, num_threads=t), one)
    alone = np.concatenate([linear(x[i:i + 1], p, activation="gelu", residual=r[i:i + 1])
                            for i in range(0, m, 13)])
    assert np.array_equal(alone, one[::13])


def test_residual_in_place(rng):
    """``residual=h, out=h`` (the transformer's h += f(h W)): h is read
    before it is written, also across K blocks."""
    x, w, b, r = _problem(rng, 20, 600, 30)
    p = pack_linear(w, b)
    want = linear(x, p, activation="silu", residual=r)
    h = r.copy()
    assert linear(x, p, activation="silu", residual=h, out=h) is h
    assert np.array_equal(h, want)
    # a residual view that overlaps out partly is read from a copy too
    buf = np.concatenate([r, r[:, :5]], axis=1)
    got = linear(x, p, residual=buf[:, :30], out=buf[:, 5:35])
    assert np.array_equal(got, linear(x, p, residual=np.concatenate([r, r[:, :5]], 1)[:, :30]))


def test_empty_in_features_runs_the_epilogue(rng):
    p = pack_linear(np.zeros((3, 0), np.float32), np.array([-1, 0.5, 2], np.float32))
    r = np.ones((2, 3), np.float32)
    got = linear(np.zeros((2, 0), np.float32), p, activation="relu", residual=r)
    assert np.array_equal(got, np.array([[1, 1.5, 3]] * 2, np.float32))


# --- layer_norm ---

def _ln64(v, g, b, eps):
    mu = v.mean(axis=-1, keepdims=True)
    var = ((v - mu) ** 2).mean(axis=-1, keepdims=True)
    return (v - mu) / np.sqrt(var + eps) * g + b


def _ln32_naive(v, g, b, eps):
    mu = v.mean(axis=-1, keepdims=True, dtype=np.float32)
    d = v - mu
    var = (d * d).mean(axis=-1, keepdims=True, dtype=np.float32)
    return d / np.sqrt(var + np.float32(eps)) * g + b


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (50, 384), (2, 5, 768), (9, 1000)])
def test_layer_norm_matches_the_float64_reference(rng, isa, shape):
    n = shape[-1]
    x = (rng.standard_normal(shape) * 3 + 5).astype(np.float32)
    r = rng.standard_normal(shape, dtype=np.float32)
    g = rng.standard_normal(n, dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    for res, eps in ((None, 1e-12), (r, 1e-5)):
        got = layer_norm(x, g, b, eps, residual=res)
        v32 = x if res is None else x + res
        ref = _ln64(v32.astype(np.float64), g, b, eps)
        naive = _ln32_naive(v32, g, b, eps)
        err = np.max(np.abs(got - ref))
        naive_err = np.max(np.abs(naive - ref))
        floor = 8 * np.finfo(np.float32).eps * (np.abs(g).max() * math.sqrt(n) + np.abs(b).max())
        assert err <= 2 * naive_err + floor, (err, naive_err)


def test_layer_norm_in_place_and_rows(rng):
    x = rng.standard_normal((40, 384), dtype=np.float32)
    r = rng.standard_normal((40, 384), dtype=np.float32)
    g = rng.standard_normal(384, dtype=np.float32)
    b = rng.standard_normal(384, dtype=np.float32)
    want = layer_norm(x, g, b, 1e-12, residual=r)
    for target in ("x", "residual"):
        xc, rc = x.copy(), r.copy()
        out = xc if target == "x" else rc
        assert layer_norm(xc, g, b, 1e-12, residual=rc, out=out) is out
        assert np.array_equal(out, want)
    # a row alone, strided and transposed layouts
    assert np.array_equal(layer_norm(x[7:8], g, b, 1e-12, residual=r[7:8]), want[7:8])
    wide = np.zeros((40, 400), np.float32)
    wide[:, 3:387] = x
    assert np.array_equal(layer_norm(wide[:, 3:387], g, b, 1e-12, residual=r), want)
    xt = np.ascontiguousarray(x.T).T
    assert np.array_equal(layer_norm(xt, g, b, 1e-12, residual=r), want)


def test_layer_norm_special_rows():
    g = np.full(8, 2.0, np.float32)
    b = np.full(8, 0.5, np.float32)
    x = np.ones((3, 8), np.float32)
    x[1, 3] = np.nan
    x[2] = np.arange(8)
    got = layer_norm(x, g, b, 1e-5)
    assert np.array_equal(got[0], b)           # a constant row: (x - mean) = 0
    assert np.isnan(got[1]).all()              # NaN stays in its row
    assert np.isfinite(got[2]).all()


@pytest.mark.parametrize("call, exc, words", [
    (lambda x, g: layer_norm(x.astype(np.float64), g, g), TypeError, "x has dtype float64"),
    (lambda x, g: layer_norm(x, g[:3], g), ValueError, "weight must have shape (4,)"),
    (lambda x, g: layer_norm(x, g, g[:2]), ValueError, "bias must have shape (4,)"),
    (lambda x, g: layer_norm(x, g, g, -1.0), ValueError, "eps must be finite and >= 0"),
    (lambda x, g: layer_norm(x, g, g, "1"), TypeError, "eps must be a real number"),
    (lambda x, g: layer_norm(x, g, g, residual=x[:1]), ValueError, "residual must have x's shape"),
    (lambda x, g: layer_norm(x, g, g, out=np.empty((4, 4))), TypeError, "out has dtype float64"),
    (lambda x, g: layer_norm(x, g, g, out=x[::-1]), ValueError, "out must be x itself"),
    (lambda x, g: layer_norm(x, g.astype(np.int64), g), TypeError, "weight has dtype int64"),
])
def test_layer_norm_bad_arguments(call, exc, words):
    x = np.ones((4, 4), np.float32)
    g = np.ones(4, np.float32)
    with pytest.raises(exc) as e:
        call(x, g)
    assert words in str(e.value)


def test_exported():
    assert {"linear", "layer_norm"} <= set(fastattn.__all__)


# --- bfloat16 products ---

ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes provides NumPy's bfloat16")


def _bf16(a):
    return a.astype(ml_dtypes.bfloat16).astype(np.float32)


@pytest.mark.parametrize("act", [None, "gelu"])
@pytest.mark.parametrize("m, k, n", SHAPES + [(4, 1, 3), (6, 257, 33)])
def test_bfloat16_matches_its_error_model(rng, isa, act, m, k, n):
    """dtype="bfloat16": x and W rounded to bfloat16 once, exact products
    summed in float32.  Against float64 of the rounded operands, the 2x
    rule with NumPy's float32 product of the same rounded operands as the
    naive computation; against the unrounded float64 product, the rounding
    of both operands, 2 * 2^-8 * sum |x||w| per element (plus the float32
    sums' share)."""
    x, w, b, r = _problem(rng, m, k, n)
    p = pack_linear(w, b, dtype="bfloat16")
    # 2 bytes a weight, k padded to a multiple of 32 (the tile depth)
    kp = -(-k // 32) * 32
    assert p.dtype == "bfloat16" and p.nbytes == -(-n // 16) * 16 * kp * 2 + b.nbytes
    assert np.array_equal(p.weight(), _bf16(w))
    got = linear(x, p, activation=act, residual=r)
    _check(_bf16(x), _bf16(w), b, r, act, got)
    exact = x.astype(np.float64) @ w.astype(np.float64).T + b
    bound = (2 * 2.0 ** -8 + 1e-6) * (np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64))
    if act is None:
        assert (np.abs(got - r - exact) <= bound + 1e-6).all()


def test_bfloat16_rows_threads_pickle_and_io(rng):
    import pickle

    x, w, b, r = _problem(rng, 40, 300, 50)
    p = pack_linear(w, b, dtype="bfloat16")
    one = linear(x, p, activation="silu", residual=r, num_threads=1)
    assert np.array_equal(linear(x, p, activation="silu", residual=r, num_threads=3), one)
    alone = np.concatenate([linear(x[i:i + 1], p, activation="silu", residual=r[i:i + 1])
                            for i in range(40)])
    assert np.array_equal(alone, one)
    q = pickle.loads(pickle.dumps(p))
    assert q.dtype == "bfloat16" and np.array_equal(linear(x, q, activation="silu", residual=r), one)
    # bfloat16 x: the output, residual and out are bfloat16, rounded once
    xb, rb = x.astype(ml_dtypes.bfloat16), r.astype(ml_dtypes.bfloat16)
    yb = linear(xb, p, residual=rb)
    assert yb.dtype == xb.dtype
    assert np.array_equal(yb, linear(_bf16(x), p, residual=_bf16(r)).astype(ml_dtypes.bfloat16))
    ob = np.empty((40, 50), ml_dtypes.bfloat16)
    assert linear(xb, p, residual=rb, out=ob) is ob and np.array_equal(ob, yb)
    with pytest.raises(TypeError, match="residual has dtype float32; expected x's"):
        linear(xb, p, residual=r)


def test_weights_must_be_finite_and_representable():
    w = np.ones((3, 4), np.float32)
    w[1, 2] = np.nan
    with pytest.raises(ValueError, match="weight has non-finite values"):
        pack_linear(w)
    with pytest.raises(ValueError, match="bias has non-finite values"):
        pack_linear(np.ones((3, 4)), np.array([0, np.inf, 0]))
    with pytest.raises(ValueError, match="beyond bfloat16's range"):
        pack_linear(np.full((3, 4), 3.4e38, np.float32), dtype="bfloat16")
