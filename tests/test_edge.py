"""Edge cases: rows that see no key, NaN propagation, zero-size dimensions."""

import math

import numpy as np
import pytest

import fastattn
from conftest import check_attention, make_qkv

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]


def assert_empty_rows(out, lse, empty):
    """Rows flagged in ``empty`` are exact zeros with lse -inf; no NaN anywhere."""
    assert empty.any(), "test setup: expected some rows with no visible key"
    assert not np.isnan(out).any(), "NaN in the output"
    assert not np.isnan(lse).any(), "NaN in the lse"
    assert np.all(out[empty] == 0.0), "rows that see no key are not all zeros"
    assert np.all(lse[empty] == -np.inf), "rows that see no key do not have lse -inf"
    assert np.all(np.isfinite(lse[~empty])), "rows that see keys have a non-finite lse"


# ---------------------------------------------------------------------------
# Rows that see no key
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["bool", "add32", "add64"])
def test_fully_masked_rows(rng, dtype, kind):
    nq, nk = 70, 150
    q, k, v = make_qkv(rng, (2, 2), nq, nk, 16, dtype=dtype)
    visible = rng.random((nq, nk)) < 0.5
    empty_rows = np.array([0, 1, 31, 63, 64, 69])
    visible[empty_rows] = False
    mask = visible if kind == "bool" else np.where(
        visible, 0.0, -np.inf).astype(np.float32 if kind == "add32" else np.float64)
    out, lse = check_attention(q, k, v, mask=mask)
    empty = np.zeros((2, 2, nq), bool)
    empty[..., empty_rows] = True
    assert_empty_rows(out, lse, empty)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_row_masked(rng, dtype):
    q, k, v = make_qkv(rng, (2,), 33, 70, 8, dtype=dtype)
    out, lse = fastattn.attention(q, k, v, mask=np.zeros((33, 70), bool), return_lse=True)
    assert out.shape == (2, 33, 8)
    assert np.all(out == 0.0) and np.all(lse == -np.inf)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_row_minus_inf_additive(rng, dtype):
    q, k, v = make_qkv(rng, (), 17, 9, 8, dtype=dtype)
    mask = np.full((9,), -np.inf, dtype=dtype)
    out, lse = fastattn.attention(q, k, v, mask=mask, return_lse=True)
    assert np.all(out == 0.0) and np.all(lse == -np.inf)


@pytest.mark.parametrize("nq,nk", [(10, 3), (70, 5), (130, 65), (3, 1)],
                         ids=["nq10-nk3", "nq70-nk5", "nq130-nk65", "nq3-nk1"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bottom_right_more_queries_than_keys(rng, nq, nk, dtype):
    # Query i sees key j iff j <= i + nk - nq: the first nq - nk rows see nothing.
    q, k, v = make_qkv(rng, (2, 3), nq, nk, 16, dtype=dtype)
    out, lse = check_attention(q, k, v, causal=True)
    empty = np.zeros((2, 3, nq), bool)
    empty[..., :nq - nk] = True
    assert_empty_rows(out, lse, empty)


def test_causal_and_mask_leave_nothing(rng):
    # top_left: row i sees keys 0..i; the mask hides exactly those for
    # even rows, so even rows see nothing.
    nq, nk = 40, 40
    q, k, v = make_qkv(rng, (2,), nq, nk, 8)
    mask = np.ones((nq, nk), bool)
    even = np.arange(nq) % 2 == 0
    mask[even] = ~np.tri(nq, nk, dtype=bool)[even]
    out, lse = check_attention(q, k, v, mask=mask, causal="top_left")
    assert_empty_rows(out, lse, np.broadcast_to(even, (2, nq)))


def test_empty_rows_with_gqa_and_lse(rng):
    q, k, v = make_qkv(rng, (2, 8), 20, 30, 8, hkv=2)
    mask = np.ones((1, 8, 20, 30), bool)
    mask[0, 3, 5] = False          # head 3, row 5 sees nothing
    mask[0, 6, :, :] = False       # head 6 sees nothing at all
    out, lse = check_attention(q, k, v, mask=mask)
    empty = np.zeros((2, 8, 20), bool)
    empty[:, 3, 5] = True
    empty[:, 6] = True
    assert_empty_rows(out, lse, empty)


# ---------------------------------------------------------------------------
# NaN propagation
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("row", [0, 40, 99])
def test_nan_in_query_row(rng, dtype, row):
    q, k, v = make_qkv(rng, (2,), 100, 70, 16, dtype=dtype)
    q[1, row, 3] = np.nan
    out, lse = fastattn.attention(q, k, v, return_lse=True)
    assert np.isnan(out[1, row]).all(), "the NaN row of q did not give a NaN output row"
    assert np.isnan(lse[1, row])
    others = np.ones((2, 100), bool)
    others[1, row] = False
    assert np.isfinite(out[others]).all(), "NaN leaked into other query rows"
    assert np.isfinite(lse[others]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_in_key_row_visible_to_all(rng, dtype):
    q, k, v = make_qkv(rng, (2,), 20, 150, 16, dtype=dtype)
    k[0, 100, 5] = np.nan
    out, lse = fastattn.attention(q, k, v, return_lse=True)
    assert np.isnan(out[0]).all() and np.isnan(lse[0]).all()
    assert np.isfinite(out[1]).all(), "NaN leaked into another head"


def test_nan_in_key_row_with_causal(rng):
    n, j = 80, 50
    q, k, v = make_qkv(rng, (), n, n, 16)
    k[j, 0] = np.nan
    out, lse = fastattn.attention(q, k, v, causal="top_left", return_lse=True)
    # rows i >= j see key j
    assert np.isnan(out[j:]).all() and np.isnan(lse[j:]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_in_value_row(rng, dtype):
    q, k, v = make_qkv(rng, (3,), 20, 70, 16, dtype=dtype)
    v[2, 65, :] = np.nan
    out, lse = fastattn.attention(q, k, v, return_lse=True)
    assert np.isnan(out[2]).all()
    assert np.isfinite(out[:2]).all(), "NaN leaked into another head"
    assert np.isfinite(lse).all(), "NaN in v must not affect the lse"


def test_nan_in_additive_mask(rng):
    q, k, v = make_qkv(rng, (), 20, 30, 8)
    mask = np.zeros((20, 30), np.float32)
    mask[7, 11] = np.nan
    out, lse = fastattn.attention(q, k, v, mask=mask, return_lse=True)
    assert np.isnan(out[7]).all() and np.isnan(lse[7])
    assert np.isfinite(np.delete(out, 7, axis=0)).all()


# ---------------------------------------------------------------------------
# Zero-size dimensions
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("lead", [(), (3,), (2, 3)], ids=["2d", "3d", "4d"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True, "top_left"])
def test_no_keys(rng, lead, dtype, causal):
    q, k, v = make_qkv(rng, lead, 9, 0, 8, dv=5, dtype=dtype)
    out, lse = fastattn.attention(q, k, v, causal=causal, return_lse=True)
    assert out.shape == lead + (9, 5) and out.dtype == dtype
    assert lse.shape == lead + (9,) and lse.dtype == dtype
    assert np.all(out == 0.0) and np.all(lse == -np.inf)


def test_no_keys_with_mask_and_gqa(rng):
    q, k, v = make_qkv(rng, (2, 4), 9, 0, 8, hkv=2)
    out, lse = fastattn.attention(q, k, v, mask=np.ones((9, 0), bool), return_lse=True)
    assert out.shape == (2, 4, 9, 8)
    assert np.all(out == 0.0) and np.all(lse == -np.inf)


def test_no_keys_with_out(rng):
    q, k, v = make_qkv(rng, (2,), 9, 0, 8)
    out = np.full((2, 9, 8), 5.0, np.float32)
    res = fastattn.attention(q, k, v, out=out)
    assert res is out and np.all(out == 0.0)


@pytest.mark.parametrize("lead", [(), (3,), (2, 3)], ids=["2d", "3d", "4d"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_no_queries(rng, lead, dtype):
    q, k, v = make_qkv(rng, lead, 0, 7, 8, dv=5, dtype=dtype)
    out, lse = fastattn.attention(q, k, v, causal=True, return_lse=True)
    assert out.shape == lead + (0, 5) and out.dtype == dtype
    assert lse.shape == lead + (0,) and lse.dtype == dtype


def test_no_queries_no_keys(rng):
    q, k, v = make_qkv(rng, (2, 2), 0, 0, 8)
    out, lse = fastattn.attention(q, k, v, return_lse=True)
    assert out.shape == (2, 2, 0, 8) and lse.shape == (2, 2, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_batch(rng, dtype):
    q, k, v = make_qkv(rng, (0, 4), 5, 6, 8, hkv=2, dtype=dtype)
    mask = np.ones((5, 6), bool)
    out, lse = fastattn.attention(q, k, v, mask=mask, return_lse=True)
    assert out.shape == (0, 4, 5, 8) and lse.shape == (0, 4, 5)
    assert out.dtype == dtype


def test_zero_batch_with_out(rng):
    q, k, v = make_qkv(rng, (0, 4), 5, 6, 8)
    out = np.empty((0, 4, 5, 8), np.float32)
    assert fastattn.attention(q, k, v, out=out) is out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, "top_left"])
def test_zero_head_dim(rng, dtype, causal):
    # Every score is 0: each row averages the values of the keys it sees
    # and its lse is log(number of keys seen).
    nq, nk = 5, 70
    q, k, v = make_qkv(rng, (2,), nq, nk, 0, dv=8, dtype=dtype)
    out, lse = check_attention(q, k, v, causal=causal)
    seen = np.full(nq, nk) if not causal else np.arange(1, nq + 1)
    expect_lse = np.log(seen.astype(np.float64))
    np.testing.assert_allclose(lse, np.broadcast_to(expect_lse, (2, nq)),
                               rtol=1e-6 if dtype == np.float32 else 1e-12)
    expect = np.stack([np.cumsum(v[h], axis=0)[seen - 1] / seen[:, None] for h in range(2)])
    np.testing.assert_allclose(out, expect, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-6 if dtype == np.float32 else 1e-13)


def test_zero_head_dim_explicit_scale(rng):
    q, k, v = make_qkv(rng, (), 4, 6, 0, dv=3)
    check_attention(q, k, v, scale=2.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_value_dim(rng, dtype):
    q, k, v = make_qkv(rng, (2, 2), 7, 9, 8, dv=0, dtype=dtype)
    out, lse = check_attention(q, k, v, causal=True)
    assert out.shape == (2, 2, 7, 0)


def test_zero_heads(rng):
    q, k, v = make_qkv(rng, (0,), 3, 4, 8)
    out, lse = fastattn.attention(q, k, v, return_lse=True)
    assert out.shape == (0, 3, 8) and lse.shape == (0, 3)


# ---------------------------------------------------------------------------
# Size-1 dimensions
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_single_key_copies_value_row(rng, dtype):
    # With one visible key the weights are exactly 1.
    q, k, v = make_qkv(rng, (2, 3), 17, 1, 8, dv=5, dtype=dtype)
    out, lse = check_attention(q, k, v)
    np.testing.assert_allclose(out, np.broadcast_to(v, out.shape),
                               rtol=1e-6 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_ones(dtype):
    lead = (1, 1)
    q = np.ones(lead + (1, 1), dtype)
    k = np.ones(lead + (1, 1), dtype)
    v = np.ones(lead + (1, 1), dtype)
    out, lse = check_attention(q, k, v)
    assert out.shape == (1, 1, 1, 1)
    assert math.isclose(float(lse[0, 0, 0]), 1.0, rel_tol=1e-6)


# ---------------------------------------------------------------------------
# Long key sequences with few query rows (keys split into chunks)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_split_keys_top_left_sees_only_first_chunk(rng, dtype):
    # top_left: row i sees keys 0..i, so every chunk after the first is empty.
    q, k, v = make_qkv(rng, (1, 2), 3, 3000, 16, dtype=dtype)
    check_attention(q, k, v, causal="top_left")


@pytest.mark.parametrize("dtype", DTYPES)
def test_split_keys_bottom_right(rng, dtype):
    q, k, v = make_qkv(rng, (), 4, 1100, 16, dtype=dtype)
    out, lse = check_attention(q, k, v, causal=True)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("j", [0, 700, 2999])
def test_split_keys_nan_in_one_chunk(rng, dtype, j):
    q, k, v = make_qkv(rng, (1, 2), 2, 3000, 16, dtype=dtype)
    k[0, 1, j, 0] = np.nan
    out, lse = fastattn.attention(q, k, v, return_lse=True)
    assert np.isnan(out[0, 1]).all() and np.isnan(lse[0, 1]).all()
    assert np.isfinite(out[0, 0]).all() and np.isfinite(lse[0, 0]).all()


def test_split_keys_nan_in_value(rng):
    q, k, v = make_qkv(rng, (1, 2), 2, 3000, 16)
    v[0, 0, 2500, :] = np.nan
    out, lse = fastattn.attention(q, k, v, return_lse=True)
    assert np.isnan(out[0, 0]).all() and np.isfinite(lse).all()
    assert np.isfinite(out[0, 1]).all()


def test_split_keys_all_masked(rng):
    q, k, v = make_qkv(rng, (1, 2), 2, 3000, 16)
    out, lse = fastattn.attention(q, k, v, mask=np.zeros(3000, bool), return_lse=True)
    assert np.all(out == 0.0) and np.all(lse == -np.inf)


def test_absurd_head_dim_is_memory_error_not_overflow():
    """A stride-0 view can claim d = 2**60; the scratch size must not wrap
    around (that would under-allocate and overrun): MemoryError instead."""
    import subprocess
    import sys
    code = (
        "import numpy as np, fastattn\n"
        "q = np.broadcast_to(np.float32(1), (1, 1, 1, 2**60))\n"
        "v = np.zeros((1, 1, 1, 1), np.float32)\n"
        "try:\n"
        "    fastattn.attention(q, q, v, scale=1e-9)\n"
        "except MemoryError:\n"
        "    print('MemoryError')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "MemoryError" in r.stdout, (r.returncode, r.stderr[-2000:])


def test_self_overlapping_out_is_written_like_numpy():
    """An ``out`` whose elements share memory (stride 0 over the heads) must
    not be raced on by threads: it gets the same values as assigning the
    result with NumPy (the last head wins)."""
    from numpy.lib.stride_tricks import as_strided
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((1, 2, 200, 16)).astype(np.float32) for _ in range(3))
    buf = np.zeros(200 * 16, np.float32)
    out = as_strided(buf, (1, 2, 200, 16), (0, 0, 64, 4))
    expected = fastattn.attention(q, k, v)
    res = fastattn.attention(q, k, v, out=out)
    assert res is out
    np.testing.assert_array_equal(buf.reshape(200, 16), expected[0, 1])
