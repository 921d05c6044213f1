"""fastattn.linear with int8 products (pack_linear(..., dtype="int8")):
results against float64 under the bound that the quantization's error model
gives (docs/numerics.md), on every ISA path; bitwise row, batch and thread
invariance; NaN confined to its row; the packed object (scales, pickle,
bytes); and the edge cases of the quantization (zero, tiny and outlier
blocks)."""

import math
import pickle

import numpy as np
import pytest

import fastattn
from fastattn import linear, pack_linear
from fastattn.linear import INT8_BLOCK

from test_linear_epilogue import _act64

# (rows, in_features, out_features): K tails (k % 4, k % 32), several K
# blocks of 256, panel tails, row groups that are not full, MiniLM shapes
SHAPES = [(1, 1, 1), (3, 5, 7), (13, 33, 17), (7, 100, 33), (70, 257, 48), (129, 300, 50),
          (256, 384, 1152), (40, 1536, 384), (5, 603, 1)]
F32_EPS = float(np.finfo(np.float32).eps)


def _problem(rng, m, k, n):
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = (rng.standard_normal((n, k)) / math.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    return x, w, b


def _bound(x, w):
    """The error model, elementwise: with x's block step sx = max|x_blk| /
    127 and the channel step sw = max|w_c| / 127, each product is off by at
    most |x| sw/2 + sx/2 |w| + sx sw/4; plus float32 sums of the scaled
    block sums (a few ulps of sum |x||w|)."""
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    sw = np.abs(w64).max(axis=1, initial=0) / 127
    bound = np.zeros((x.shape[0], w.shape[0]))
    for k0 in range(0, x.shape[1], INT8_BLOCK):
        xb, wb = x64[:, k0:k0 + INT8_BLOCK], w64[:, k0:k0 + INT8_BLOCK]
        sx = np.abs(xb).max(axis=1) / 127
        bound += (np.abs(xb).sum(axis=1)[:, None] * sw[None, :] / 2
                  + sx[:, None] * np.abs(wb).sum(axis=1)[None, :] / 2
                  + xb.shape[1] * sx[:, None] * sw[None, :] / 4)
    nblocks = -(-x.shape[1] // INT8_BLOCK)
    return bound * (1 + 1e-6) + (nblocks + 4) * F32_EPS * (np.abs(x64) @ np.abs(w64).T)


@pytest.mark.parametrize("act", [None, "gelu", "relu"])
@pytest.mark.parametrize("m, k, n", SHAPES)
def test_int8_matches_its_error_model(rng, isa, act, m, k, n):
    """Against float64 with the float32 inputs: within the quantization
    bound (GELU and ReLU change an error by at most 1.13x), and far inside
    it on average (the steps' errors are independent and cancel)."""
    x, w, b = _problem(rng, m, k, n)
    p = pack_linear(w, b, dtype="int8")
    got = linear(x, p, activation=act)
    assert got.shape == (m, n) and got.dtype == np.float32
    ref = _act64(x.astype(np.float64) @ w.astype(np.float64).T + b, act)
    err = np.abs(got - ref)
    bound = 1.13 * _bound(x, w) + 4 * F32_EPS * (np.abs(ref) + 1)
    assert (err <= bound).all(), float((err / bound).max())
    if m * n * k >= 1000:  # a statistic of many elements
        assert err.mean() <= 0.25 * bound.mean(), (err.mean(), bound.mean())


def test_int8_is_much_closer_than_one_scale_per_row(rng):
    """K-blocked activation scales at work: a row with one outlier keeps
    its other blocks' fine steps, so its error stays near that of a row
    without it, where one scale for the whole row would coarsen all of K."""
    m, k, n = 16, 384, 64
    x, w, b = _problem(rng, m, k, n)
    x[:, 5] = 200.0  # one outlier per row, in the first block
    p = pack_linear(w, b, dtype="int8")
    ref = x.astype(np.float64) @ w.astype(np.float64).T + b
    err = np.abs(linear(x, p) - ref).mean()
    # one scale per row: steps of 200 / 127 over all of K, where the
    # blocks have them over one block of 32 (sqrt(12) times less error)
    sx = np.abs(x).max(axis=1, keepdims=True) / 127
    w64 = p.weight().astype(np.float64)
    per_row = (np.rint(x / sx) * sx) @ w64.T + b
    assert err * 2 < np.abs(per_row - ref).mean()


@pytest.mark.parametrize("m, k, n", [(37, 300, 40), (256, 384, 96), (200, 64, 1)])
def test_int8_rows_and_threads_do_not_change_a_bit(rng, isa, m, k, n):
    x, w, b = _problem(rng, m, k, n)
    p = pack_linear(w, b, dtype="int8")
    whole = linear(x, p, activation="gelu", num_threads=1)
    alone = np.concatenate([linear(x[i:i + 1], p, activation="gelu") for i in range(m)])
    assert np.array_equal(whole, alone)
    perm = rng.permutation(m)
    assert np.array_equal(linear(x[perm], p, activation="gelu"), whole[perm])
    for t in (2, 3, 7):
        assert np.array_equal(linear(x, p, activation="gelu", num_threads=t), whole)


def test_int8_nan_and_inf_stay_in_their_row(rng):
    x, w, b = _problem(rng, 9, 100, 40)
    x[2, 50] = np.nan
    x[6, 3] = np.inf
    y = linear(x, pack_linear(w, b, dtype="int8"))
    bad = ~np.isfinite(y)
    assert bad[2].all() and bad[6].all()
    assert np.isfinite(np.delete(y, [2, 6], axis=0)).all()


def test_int8_zero_tiny_and_exact_blocks(rng):
    """A zero block contributes nothing; integers that fit the steps are
    exact; blocks below 2^-119 quantize to zero (their steps would be
    subnormal, which the call flushes)."""
    w = rng.integers(-127, 128, size=(20, 64)).astype(np.float32)
    x = rng.integers(-127, 128, size=(5, 64)).astype(np.float32)
    x[:, :32] = 127.0 * np.sign(x[:, :32])  # each block's max is 127: steps of 1
    x[:, 32:] = 0
    x[:, 40] = 127
    w[:, 0] = 127
    p = pack_linear(w, dtype="int8")
    assert np.array_equal(p.scale(), np.ones(20, np.float32))
    assert np.array_equal(linear(x, p), x @ w.T)  # exact integers, exact sums
    x[1] = 1e-38
    y = linear(x, p)
    assert np.array_equal(y[1], np.zeros(20, np.float32))
    assert np.array_equal(linear(np.zeros((2, 64), np.float32), p), np.zeros((2, 20)))


def test_int8_packed_object(rng):
    x, w, b = _problem(rng, 6, 70, 33)
    p = pack_linear(w, b, dtype="int8")
    assert p.dtype == "int8" and p.shape == (33, 70)
    s = p.scale()
    assert s.dtype == np.float32 and np.array_equal(s, np.abs(w).max(axis=1) / np.float32(127))
    q = np.rint(w / s[:, None].astype(np.float64))
    assert np.array_equal(p.weight(), (q * s[:, None]).astype(np.float32))
    assert np.abs(p.weight() - w).max() <= s.max() / 2 * (1 + 1e-6)
    # a byte a weight (k padded to 96, a multiple of 32), the bias and the scales
    assert p.nbytes == 48 * 96 + 33 * 4 + 48 * 4
    r = pickle.loads(pickle.dumps(p))
    assert r.dtype == "int8" and np.array_equal(r.scale(), s)
    assert np.array_equal(linear(x, r), linear(x, p))
    # a zero row of W has scale 0 and gives the bias
    w[4] = 0
    z = pack_linear(w, b, dtype="int8")
    assert z.scale()[4] == 0 and np.array_equal(linear(x, z)[:, 4], np.full(6, b[4]))
    with pytest.raises(ValueError, match="non-finite"):
        pack_linear(np.full((2, 3), np.inf, np.float32), dtype="int8")


def test_int8_bfloat16_input(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes provides NumPy's bfloat16")
    x, w, b = _problem(rng, 8, 96, 24)
    p = pack_linear(w, b, dtype="int8")
    xb = x.astype(ml_dtypes.bfloat16)
    yb = linear(xb, p)
    assert yb.dtype == xb.dtype
    assert np.array_equal(yb, linear(xb.astype(np.float32), p).astype(ml_dtypes.bfloat16))


def test_int8_binding_checks_the_scales(rng):
    from fastattn import _core
    x, w, b = _problem(rng, 2, 8, 16)
    p = pack_linear(w, b, dtype="int8")
    out = np.empty((2, 16), np.float32)
    with pytest.raises(ValueError, match="w_scale"):
        _core.linear_f32(x, p._packed, None, out)
    with pytest.raises(ValueError, match="w_scale"):
        _core.linear_f32(x, p._packed, None, out, w_scale=np.ones(15, np.float32))
    assert fastattn.linear.__module__ == "fastattn.linear"


@pytest.mark.skipif("amx_emu" not in fastattn._core.isa_available(),
                    reason="this CPU does not run the tile emulation (amx_emu needs AVX-512 "
                           "with AVX512-BF16)")
@pytest.mark.parametrize("m, k, n", [(1, 70, 17), (37, 300, 40), (70, 1100, 48)])
def test_int8_on_the_tiles_is_the_vector_paths_bits(rng, m, k, n):
    """On the matrix units (TDPBSSD, here through the tile emulation) the
    block sums are the same exact integers, and the float steps after them
    the vector paths': the results are the same bits as the avx512 path's
    (K blocks of 1024, row blocks of 32 tile rows, a last single panel)."""
    x, w, b = _problem(rng, m, k, n)
    r = rng.standard_normal((m, n), dtype=np.float32)
    p = pack_linear(w, b, dtype="int8")
    got = {}
    before = fastattn._core.get_isa()
    try:
        for path in ("avx512", "amx_emu"):
            fastattn._core.set_isa(path)
            got[path] = (linear(x, p, activation="gelu", residual=r),
                         fastattn._core.linear_kernel("int8"),
                         fastattn._core.linear_kernel("bfloat16"),
                         fastattn._core.linear_kernel("float32"))
    finally:
        fastattn._core.set_isa(before)
    assert got["amx_emu"][1:] == ("amx_emu", "amx_emu", "avx512")
    assert np.array_equal(got["amx_emu"][0], got["avx512"][0])


# The rows that may run int8 on each path: the path's own block, or the
# refinement that brings the CPU's dot product; on the matrix-unit paths
# their tiles (amx only with AMX-INT8, else avx512's table).
INT8_ROWS = {"scalar": {"scalar"}, "avx2": {"avx2", "avxvnni"},
             "avx512": {"avx512", "avx512vnni"}, "amx": {"amx", "avx512", "avx512vnni"},
             "amx_emu": {"amx_emu"}, "neon": {"neon", "neon_dotprod"}}


def test_int8_kernel_is_a_row_of_its_path(isa):
    from fastattn import _core
    kernel = _core.linear_kernel("int8")
    assert kernel in INT8_ROWS[isa], (isa, kernel)
    # a dot product has its peak probe; a path's own block has none
    assert (_core.dot_peak("int8", seconds=0.01) is None) == (kernel in ("scalar", "avx2",
                                                                           "avx512", "neon"))


def test_int8_is_bitwise_the_same_on_every_vector_path(rng):
    """The block sums are exact on every path (vpmaddubsw, vpdpbusd on zmm
    or on AVX-VNNI's ymm, sdot) and the float steps are the same (one fused
    multiply-add a block, the column scale, the bias), so the vector paths
    agree to the bit.  (The scalar path may not fuse: x86-64's baseline has
    no FMA.)  csrc/test/test_linear.c compares a path's dot-product block
    with its other int8 block the same way."""
    from fastattn import _core
    x, w, b = _problem(rng, 37, 1100, 40)
    p = pack_linear(w, b, dtype="int8")
    before = _core.get_isa()
    results = {}
    try:
        for path in _core.isa_available():
            if path == "scalar":
                continue
            _core.set_isa(path)
            results[(path, _core.linear_kernel("int8"))] = linear(x, p)
    finally:
        _core.set_isa(before)
    first = next(iter(results.values()), None)
    for key, y in results.items():
        assert np.array_equal(y, first), key
