"""fastattn.linear / pack_linear: results against a float64 reference under
the 2x rule, bitwise row invariance (a row's result does not depend on the
other rows, their number or its position), every ISA path, layouts, and
bad arguments."""

import pickle

import numpy as np
import pytest

import fastattn
from fastattn import linear, pack_linear

# (rows, in_features, out_features): panel tails (n % 16), K blocks (k > 256,
# k % 256), row-block tails, and the MiniLM shapes
SHAPES = [(1, 1, 1), (3, 5, 7), (13, 33, 17), (64, 256, 32), (70, 257, 48), (129, 300, 50),
          (256, 384, 1152), (200, 1536, 384), (5, 600, 1)]


def _problem(rng, m, k, n, bias=True):
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32) if bias else None
    return x, w, b


def _check(x, w, b, got):
    """FlashAttention's rule: the error against float64 is at most twice
    that of the plain float32 product (NumPy's BLAS), plus a floor of a few
    float32 ulps of the result's scale."""
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    naive = x @ w.T
    if b is not None:
        ref = ref + b
        naive = naive + b
    err = np.max(np.abs(got - ref), initial=0.0)
    naive_err = np.max(np.abs(naive - ref), initial=0.0)
    scale = np.abs(x).max(initial=0) * np.abs(w).max(initial=0) * np.sqrt(x.shape[-1]) + 1
    assert err <= 2 * naive_err + 8 * np.finfo(np.float32).eps * scale, (err, naive_err)


@pytest.mark.parametrize("m, k, n", SHAPES)
def test_matches_the_float64_reference(rng, isa, m, k, n):
    x, w, b = _problem(rng, m, k, n)
    got = linear(x, pack_linear(w, b))
    assert got.shape == (m, n) and got.dtype == np.float32
    _check(x, w, b, got)
    _check(x, w, None, linear(x, pack_linear(w)))


@pytest.mark.parametrize("m, k, n", [(37, 300, 40), (256, 384, 96), (200, 64, 1)])
def test_a_row_depends_on_itself_alone(rng, isa, m, k, n):
    """Bitwise: each row alone, each row in every position of a shuffled
    batch, and the batch cut at odd places give the same result."""
    x, w, b = _problem(rng, m, k, n)
    p = pack_linear(w, b)
    whole = linear(x, p)
    alone = np.concatenate([linear(x[i:i + 1], p) for i in range(m)])
    assert np.array_equal(whole, alone)
    perm = rng.permutation(m)
    assert np.array_equal(linear(x[perm], p), whole[perm])
    cuts = [0, 1, 7, 20, m]
    parts = np.concatenate([linear(x[a:c], p) for a, c in zip(cuts[:-1], cuts[1:]) if a < c])
    assert np.array_equal(parts, whole)


def test_layouts_and_out(rng):
    x, w, b = _problem(rng, 24, 40, 20)
    p = pack_linear(w, b)
    want = linear(x, p)
    x3 = x.reshape(2, 12, 40)
    assert np.array_equal(linear(x3, p), want.reshape(2, 12, 20))
    # strided rows, a transposed layout (copied) and a negative row stride
    wide = np.zeros((24, 64), dtype=np.float32)
    wide[:, 3:43] = x
    assert np.array_equal(linear(wide[:, 3:43], p), want)
    assert np.array_equal(linear(np.asfortranarray(x), p), want)
    assert np.array_equal(linear(x[::-1], p), want[::-1])
    # out: a strided view is written in place; other layouts through a copy
    buf = np.full((24, 30), 7.0, dtype=np.float32)
    res = linear(x, p, out=buf[:, 5:25])
    assert res.base is buf and np.array_equal(buf[:, 5:25], want)
    assert (buf[:, :5] == 7).all() and (buf[:, 25:] == 7).all()
    fout = np.empty((24, 20), dtype=np.float32, order="F")
    assert linear(x, p, out=fout) is fout and np.array_equal(fout, want)


def test_empty_sizes(rng):
    p = pack_linear(np.ones((3, 4), np.float32), np.arange(3, dtype=np.float32))
    assert linear(np.zeros((0, 4), np.float32), p).shape == (0, 3)
    p0 = pack_linear(np.zeros((3, 0), np.float32), np.arange(3, dtype=np.float32))
    assert np.array_equal(linear(np.zeros((2, 0), np.float32), p0),
                          np.tile(np.arange(3, dtype=np.float32), (2, 1)))
    assert pickle.loads(pickle.dumps(p0)).shape == (3, 0)


def test_unaligned_and_odd_strides_are_copied(rng):
    """A structured array's field (row stride not a multiple of 4) and a
    buffer at an odd offset (unaligned): both are valid NumPy arrays and
    are computed through a copy, never handed to the C code as they are."""
    x, w, b = _problem(rng, 6, 10, 5)
    p = pack_linear(w, b)
    want = linear(x, p)
    rec = np.zeros(6, dtype=[("a", np.float32, (10,)), ("pad", np.uint8)])
    rec["a"] = x
    assert np.array_equal(linear(rec["a"], p), want)
    raw = np.zeros(x.nbytes + 1, dtype=np.uint8)
    raw[1:] = np.frombuffer(x.tobytes(), dtype=np.uint8)
    odd = np.frombuffer(raw.data, dtype=np.float32, count=x.size, offset=1).reshape(6, 10)
    assert not odd.flags.aligned
    assert np.array_equal(linear(odd, p), want)
    out_rec = np.zeros(6, dtype=[("y", np.float32, (5,)), ("pad", np.uint8)])
    linear(x, p, out=out_rec["y"])
    assert np.array_equal(out_rec["y"], want)


def test_subnormals_are_flushed_and_fast(rng):
    """The GEMM flushes subnormals for its duration, as attention does: a
    subnormal input counts as zero, and the caller's control bits are
    unchanged afterwards."""
    x = np.full((4, 8), 1e-39, dtype=np.float32)   # subnormal
    p = pack_linear(np.ones((3, 8), np.float32))
    assert np.array_equal(linear(x, p), np.zeros((4, 3), np.float32))
    tiny = np.float32(1e-39)
    assert tiny * np.float32(1.0) == tiny          # this thread keeps gradual underflow


@pytest.mark.parametrize("case, exc", [
    ("packed_shape", ValueError), ("bias_shape", ValueError), ("out_rows", ValueError),
    ("row_stride", ValueError), ("unaligned", ValueError), ("dtype", TypeError),
])
def test_binding_checks_what_the_c_code_relies_on(case, exc):
    """fastattn._core.linear_f32, called directly, refuses anything that
    would let the C code read or write outside its buffers."""
    from fastattn import _core

    x = np.ones((4, 8), np.float32)
    packed = np.zeros((1, 8, 16), np.float32)
    bias = np.zeros(3, np.float32)
    out = np.empty((4, 3), np.float32)
    if case == "packed_shape":
        packed = np.zeros((1, 7, 16), np.float32)
    elif case == "bias_shape":
        bias = np.zeros(4, np.float32)
    elif case == "out_rows":
        out = np.empty((5, 3), np.float32)
    elif case == "row_stride":
        x = np.ones((4, 16), np.float32)[:, ::2]
    elif case == "unaligned":
        raw = np.zeros(4 * 8 * 4 + 1, np.uint8)
        x = np.frombuffer(raw.data, np.float32, count=32, offset=1).reshape(4, 8)
    elif case == "dtype":
        x = np.ones((4, 8), np.float64)
    with pytest.raises(exc):
        _core.linear_f32(x, packed, bias, out)


def test_packed_object(rng):
    x, w, b = _problem(rng, 5, 33, 17)
    p = pack_linear(w.astype(np.float64), b)
    assert p.shape == (17, 33) and p.in_features == 33 and p.out_features == 17
    assert p.dtype == "float32" and p.has_bias
    assert p.nbytes == 2 * 16 * 33 * 4 + 17 * 4   # two panels of 16 columns, and the bias
    assert np.array_equal(p.weight(), w) and np.array_equal(p.bias(), b)
    with pytest.raises(AttributeError):
        p.dtype = "int8"  # type: ignore[misc]
    q = pickle.loads(pickle.dumps(p))
    assert np.array_equal(linear(x, q), linear(x, p))
    assert "out_features=17" in repr(p)


@pytest.mark.parametrize("call, exc, words", [
    (lambda p, x: pack_linear(np.ones(3, np.float32)), ValueError, "weight must be 2-D"),
    (lambda p, x: pack_linear(np.ones((2, 3), np.int32)), TypeError, "weight has dtype int32"),
    (lambda p, x: pack_linear(np.ones((2, 3)), np.ones(3)), ValueError, "bias must have shape (2,)"),
    (lambda p, x: pack_linear(np.ones((2, 3)), dtype="int4"), ValueError, "dtype must be one of"),
    (lambda p, x: linear(x.astype(np.float64), p), TypeError, "x has dtype float64"),
    (lambda p, x: linear(x[:, :2], p), ValueError, "x must have shape (..., 3)"),
    (lambda p, x: linear(x.tolist(), p), TypeError, "x must be a numpy.ndarray"),
    (lambda p, x: linear(x, np.ones((2, 3))), TypeError, "packed must be a fastattn.PackedLinear"),
    (lambda p, x: linear(x, p, out=np.empty((4, 3), np.float32)), ValueError,
     "out must have shape (4, 2)"),
    (lambda p, x: linear(x, p, out=np.empty((4, 2))), TypeError, "out has dtype float64"),
    (lambda p, x: linear(x, p, activation="tanh"), ValueError,
     "activation must be None or one of"),
    (lambda p, x: linear(x, p, activation=1), ValueError, "activation must be None or one of"),
    (lambda p, x: linear(x, p, residual=np.ones((4, 2))), TypeError, "residual has dtype float64"),
    (lambda p, x: linear(x, p, residual=np.ones((4, 3), np.float32)), ValueError,
     "residual must have the output's shape (4, 2)"),
    (lambda p, x: linear(x, p, residual=[[1, 2]] * 4), TypeError, "residual must be a numpy"),
    (lambda p, x: linear(x, p, num_threads=0), ValueError, "num_threads must be >= 1"),
    (lambda p, x: linear(x, p, num_threads=1.5), TypeError, "num_threads must be an int"),
])
def test_bad_arguments(call, exc, words):
    p = pack_linear(np.ones((2, 3), np.float32))
    x = np.ones((4, 3), np.float32)
    with pytest.raises(exc) as e:
        call(p, x)
    assert words in str(e.value)


def test_out_overlapping_x_is_refused():
    p = pack_linear(np.ones((3, 3), np.float32))
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="out must not overlap x"):
        linear(x, p, out=x)


def test_exported():
    assert {"linear", "pack_linear", "PackedLinear"} <= set(fastattn.__all__)
