"""Memory layouts of the inputs, GQA layouts and the out= argument."""

import numpy as np
import pytest

import fastattn
from support import (LAYOUTS, assert_result, check_attention, make_mask,
                      make_qkv, relayout)

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]


def assert_layout(a, kind):
    """Make sure relayout really produced the layout a test claims to cover."""
    if a.size <= 1:
        return
    if kind == "contiguous":
        assert a.flags.c_contiguous
    elif kind == "fortran":
        assert a.flags.f_contiguous and not a.flags.c_contiguous
    elif kind in ("transposed", "strided"):
        assert not a.flags.c_contiguous
    elif kind == "negative":
        assert min(a.strides) < 0
    elif kind == "unaligned":
        assert not a.flags.aligned
    elif kind == "readonly":
        assert not a.flags.writeable
    elif kind.startswith("broadcast"):
        assert 0 in a.strides
    else:
        raise AssertionError(f"unknown layout {kind}")


ARGS = ["q", "k", "v"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("arg", ARGS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_one_input_in_layout(rng, layout, arg, dtype):
    q, k, v = make_qkv(rng, (2, 3), 33, 70, 16, dv=8, dtype=dtype)
    arrays = {"q": q, "k": k, "v": v}
    arrays[arg] = relayout(arrays[arg], layout)
    assert_layout(arrays[arg], layout)
    check_attention(arrays["q"], arrays["k"], arrays["v"], causal=True)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("lead", [(), (3,), (2, 3)], ids=["2d", "3d", "4d"])
def test_all_inputs_in_layout(rng, layout, lead):
    q, k, v = make_qkv(rng, lead, 17, 65, 24, dv=40)
    q, k, v = (relayout(a, layout) for a in (q, k, v))
    for a in (q, k, v):
        assert_layout(a, layout)
    check_attention(q, k, v)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gqa_inputs_in_layout(rng, layout):
    q, k, v = make_qkv(rng, (2, 6), 20, 33, 8, hkv=2)
    q, k, v = (relayout(a, layout) for a in (q, k, v))
    check_attention(q, k, v, causal="top_left")


MASK_LAYOUTS = [l for l in LAYOUTS if l != "unaligned"]


@pytest.mark.parametrize("layout", MASK_LAYOUTS)
@pytest.mark.parametrize("kind", ["bool", "add32", "add64"])
def test_mask_in_layout(rng, layout, kind):
    q, k, v = make_qkv(rng, (2, 3), 33, 70, 16)
    mask = relayout(make_mask(rng, kind, (2, 3, 33, 70)), layout)
    assert_layout(mask, layout)
    check_attention(q, k, v, mask=mask)


@pytest.mark.parametrize("kind", ["add32", "add64"])
def test_unaligned_float_mask(rng, kind):
    q, k, v = make_qkv(rng, (2,), 33, 70, 16)
    mask = relayout(make_mask(rng, kind, (33, 70)), "unaligned")
    assert_layout(mask, "unaligned")
    check_attention(q, k, v, mask=mask)


def test_explicitly_broadcast_mask(rng):
    # A full-shape mask that is a stride-0 view of a single row of keys.
    q, k, v = make_qkv(rng, (2, 3), 17, 40, 8)
    row = make_mask(rng, "bool", (40,))
    mask = np.broadcast_to(row, (2, 3, 17, 40))
    assert mask.strides[:3] == (0, 0, 0)
    check_attention(q, k, v, mask=mask)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_projection_layout(rng, dtype):
    # q, k, v sliced out of one (B, N, 3, H, D) projection and viewed as
    # (B, H, N, D): non-contiguous, interleaved, sharing one buffer.
    b, n, h, d = 2, 45, 4, 16
    x = rng.standard_normal((b, n, 3, h, d)).astype(dtype)
    q, k, v = (x[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    assert not q.flags.c_contiguous
    check_attention(q, k, v, causal=True)


def test_step_slices(rng):
    big_q = rng.standard_normal((2, 6, 100, 48)).astype(np.float32)
    big_k = rng.standard_normal((2, 3, 200, 48)).astype(np.float32)
    big_v = rng.standard_normal((2, 3, 200, 40)).astype(np.float32)
    q = big_q[:, ::2, 3::3, ::3]     # (2, 3, 33, 16)
    k = big_k[:, :, 1::3, 1::3]      # (2, 3, 67, 16)
    v = big_v[:, :, ::-3, 5::5]      # (2, 3, 67, 7)
    check_attention(q, k, v)


def test_feature_stride_not_one(rng):
    base = rng.standard_normal((3, 40, 64)).astype(np.float32)
    q = base[:, :20, ::2]
    k = base[:, 5:, 1::2]
    v = base[:, 5:, ::4]
    check_attention(q, k, v, causal="top_left")


def test_heads_axis_reversed(rng):
    q, k, v = make_qkv(rng, (2, 4), 17, 33, 8, hkv=2)
    check_attention(q[:, ::-1], k[:, ::-1], v[:, ::-1])


def test_broadcast_batch_kv(rng):
    # One kv cache shared by every batch entry through a stride-0 batch axis.
    q = rng.standard_normal((3, 4, 9, 16)).astype(np.float32)
    k = np.broadcast_to(rng.standard_normal((1, 2, 50, 16)).astype(np.float32), (3, 2, 50, 16))
    v = np.broadcast_to(rng.standard_normal((1, 2, 50, 16)).astype(np.float32), (3, 2, 50, 16))
    check_attention(q, k, v, causal=True)


# ---------------------------------------------------------------------------
# out=
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("lead", [(), (3,), (2, 3)], ids=["2d", "3d", "4d"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_out_is_filled_and_returned(rng, lead, dtype):
    q, k, v = make_qkv(rng, lead, 33, 70, 16, dv=8, dtype=dtype)
    out = np.full(lead + (33, 8), np.nan, dtype=dtype)
    res = fastattn.attention(q, k, v, out=out, causal=True)
    assert res is out
    assert_result(q, k, v, out, causal=True)


def test_out_with_lse(rng):
    q, k, v = make_qkv(rng, (2, 4), 33, 70, 16, hkv=2)
    out = np.empty((2, 4, 33, 16), dtype=np.float32)
    res, lse = fastattn.attention(q, k, v, out=out, return_lse=True)
    assert res is out
    assert_result(q, k, v, out, lse)


def test_out_matches_fresh_result(rng):
    q, k, v = make_qkv(rng, (2, 2), 40, 50, 32)
    mask = make_mask(rng, "add32", (40, 50))
    fresh = fastattn.attention(q, k, v, mask=mask)
    out = np.zeros_like(fresh)
    fastattn.attention(q, k, v, mask=mask, out=out)
    np.testing.assert_array_equal(out, fresh)


def test_out_reused_across_calls(rng):
    q, k, v = make_qkv(rng, (2,), 17, 33, 8)
    out = np.empty((2, 17, 8), dtype=np.float32)
    first = fastattn.attention(q, k, v, out=out).copy()
    q2 = q[:, ::-1].copy()
    fastattn.attention(q2, k, v, out=out)
    assert_result(q2, k, v, out)
    assert not np.array_equal(out, first)


def test_out_fully_masked_rows_overwritten(rng):
    # Rows that see no key must be written as zeros, not left as they were.
    q, k, v = make_qkv(rng, (2,), 10, 4, 8)
    out = np.full((2, 10, 8), 123.0, dtype=np.float32)
    fastattn.attention(q, k, v, causal=True, out=out)
    np.testing.assert_array_equal(out[:, :6], 0.0)
    assert_result(q, k, v, out, causal=True)


def test_out_interleaved_with_input_but_disjoint(rng):
    # out and q take alternate columns of one buffer: no element is shared,
    # so this is allowed.
    buf = np.zeros((2, 3, 17, 16), dtype=np.float32)
    q = buf[..., ::2]
    q[...] = rng.standard_normal(q.shape)
    out = buf[..., 1::2]
    k = rng.standard_normal((2, 3, 20, 8)).astype(np.float32)
    v = rng.standard_normal((2, 3, 20, 8)).astype(np.float32)
    assert fastattn.attention(q, k, v, out=out) is out
    assert_result(q, k, v, out)


DECODE_NK = [300, 2100]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("nk", DECODE_NK, ids=[f"nk{n}" for n in DECODE_NK])
def test_decode_inputs_in_layout(rng, layout, nk):
    # One query row per head and 4 query heads per kv head: the few-rows
    # kernel when k and v have unit column strides, the general one otherwise.
    q, k, v = make_qkv(rng, (2, 8), 1, nk, 64, dv=48, hkv=2)
    q, k, v = (relayout(a, layout) for a in (q, k, v))
    check_attention(q, k, v, causal=True)
