"""Tests of the NumPy reference itself.

The reference is the yardstick for everything else, so it is checked here
against tiny cases whose answers can be worked out by hand and against an
independent, deliberately naive per-row loop written with the math module.
"""

import math

import numpy as np
import pytest

from support import make_mask, make_qkv, relayout
from fastattn import reference as ref


# ---------------------------------------------------------------------------
# An independent loop implementation (float64, one query row at a time)
# ---------------------------------------------------------------------------

def loop_attention(q, k, v, mask=None, causal=False, scale=None):
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    lead = q.shape[:-2]
    nq, d = q.shape[-2:]
    nk, dv = v.shape[-2:]
    # View everything as 4-D (B, H, N, D).
    q4 = q.reshape((1,) * (4 - q.ndim) + q.shape)
    k4 = k.reshape((1,) * (4 - k.ndim) + k.shape)
    v4 = v.reshape((1,) * (4 - v.ndim) + v.shape)
    nb, nh = q4.shape[:2]
    nhkv = k4.shape[1]
    group = nh // nhkv
    if scale is None:
        scale = 1.0 / math.sqrt(d) if d else 1.0
    m4 = None
    if mask is not None:
        m = np.broadcast_to(np.asarray(mask), lead + (nq, nk))
        m4 = m.reshape((1,) * (2 - len(lead)) + m.shape)
    offset = nk - nq if causal in (True, "bottom_right") else 0

    out = np.zeros((nb, nh, nq, dv))
    lse = np.full((nb, nh, nq), -math.inf)
    for b in range(nb):
        for h in range(nh):
            hk = h // group
            for i in range(nq):
                kept = []  # (score, key index) of the keys row i sees
                for j in range(nk):
                    if causal and j > i + offset:
                        continue
                    s = scale * sum(q4[b, h, i, c] * k4[b, hk, j, c] for c in range(d))
                    if m4 is not None:
                        mv = m4[b, h, i, j]
                        if m4.dtype == np.bool_:
                            if not mv:
                                continue
                        else:
                            s += float(mv)
                    if s == -math.inf:
                        continue
                    kept.append((s, j))
                if not kept:
                    continue
                top = max(s for s, _ in kept)
                w = [(math.exp(s - top), j) for s, j in kept]
                total = sum(x for x, _ in w)
                lse[b, h, i] = top + math.log(total)
                for x, j in w:
                    out[b, h, i] += (x / total) * v4[b, hk, j]
    return out.reshape(lead + (nq, dv)), lse.reshape(lead + (nq,))


# ---------------------------------------------------------------------------
# Hand-checkable cases
# ---------------------------------------------------------------------------

def test_single_key_returns_its_value_row():
    q = np.array([[1.0, 2.0]])
    k = np.array([[3.0, -1.0]])
    v = np.array([[5.0, 6.0, 7.0]])
    out, lse = ref.attention(q, k, v, return_lse=True)
    np.testing.assert_array_equal(out, v)
    # lse of a single score is the score: (1*3 + 2*-1) / sqrt(2)
    np.testing.assert_allclose(lse, [1.0 / math.sqrt(2.0)], rtol=1e-15)


def test_two_keys_hand_computed():
    q = np.array([[1.0, 0.0]])
    k = np.array([[1.0, 0.0], [0.0, 1.0]])
    v = np.array([[1.0], [0.0]])
    out, lse = ref.attention(q, k, v, scale=1.0, return_lse=True)
    e = math.e
    # scores [1, 0] -> weights [e, 1] / (e + 1)
    np.testing.assert_allclose(out, [[e / (e + 1.0)]], rtol=1e-15)
    np.testing.assert_allclose(lse, [math.log(e + 1.0)], rtol=1e-15)


def test_equal_scores_average_values():
    q = np.zeros((1, 4))
    k = np.ones((3, 4))
    v = np.array([[3.0, 0.0], [6.0, 3.0], [0.0, 9.0]])
    out, lse = ref.attention(q, k, v, return_lse=True)
    np.testing.assert_allclose(out, [[3.0, 4.0]], rtol=1e-15)
    np.testing.assert_allclose(lse, [math.log(3.0)], rtol=1e-15)


def test_additive_mask_hand_computed():
    q = np.zeros((1, 2))
    k = np.zeros((2, 2))
    v = np.array([[4.0], [8.0]])
    mask = np.array([0.0, math.log(3.0)])
    # weights proportional to [1, 3]
    out, lse = ref.attention(q, k, v, mask=mask, return_lse=True)
    np.testing.assert_allclose(out, [[7.0]], rtol=1e-15)
    np.testing.assert_allclose(lse, [math.log(4.0)], rtol=1e-15)


def test_bool_mask_hides_keys():
    q = np.zeros((2, 2))
    k = np.zeros((3, 2))
    v = np.array([[1.0], [2.0], [6.0]])
    mask = np.array([[True, False, True], [False, True, False]])
    out = ref.attention(q, k, v, mask=mask)
    np.testing.assert_allclose(out, [[3.5], [2.0]], rtol=1e-15)


def test_causal_alignments_hand_computed():
    # Equal scores, so each row averages the values of the keys it sees.
    q = np.zeros((2, 1))
    k = np.zeros((3, 1))
    v = np.array([[3.0], [6.0], [12.0]])
    br = ref.attention(q, k, v, causal="bottom_right")
    # row 0 sees keys 0..1, row 1 sees keys 0..2
    np.testing.assert_allclose(br, [[4.5], [7.0]], rtol=1e-15)
    np.testing.assert_array_equal(ref.attention(q, k, v, causal=True), br)
    tl = ref.attention(q, k, v, causal="top_left")
    # row 0 sees key 0, row 1 sees keys 0..1
    np.testing.assert_allclose(tl, [[3.0], [4.5]], rtol=1e-15)


def test_bottom_right_with_more_queries_than_keys():
    q = np.zeros((3, 1))
    k = np.zeros((1, 1))
    v = np.array([[5.0, -2.0]])
    out, lse = ref.attention(q, k, v, causal=True, return_lse=True)
    # rows 0 and 1 see no key (j <= i - 2 fails), row 2 sees key 0
    np.testing.assert_array_equal(out, [[0.0, 0.0], [0.0, 0.0], [5.0, -2.0]])
    np.testing.assert_array_equal(lse, [-np.inf, -np.inf, 0.0])


def test_fully_masked_row_is_zero_with_minus_inf_lse():
    q = np.ones((2, 2))
    k = np.ones((2, 2))
    v = np.array([[3.0, 4.0], [1.0, 2.0]])
    for mask in (np.array([[False, False], [False, True]]),
                 np.array([[-np.inf, -np.inf], [-np.inf, 0.0]])):
        out, lse = ref.attention(q, k, v, mask=mask, return_lse=True)
        np.testing.assert_array_equal(out[0], [0.0, 0.0])
        assert lse[0] == -np.inf
        np.testing.assert_allclose(out[1], [1.0, 2.0], rtol=1e-15)


def test_no_keys():
    q = np.ones((2, 3, 4))
    k = np.ones((2, 0, 4))
    v = np.ones((2, 0, 5))
    out, lse = ref.attention(q, k, v, return_lse=True)
    assert out.shape == (2, 3, 5) and lse.shape == (2, 3)
    np.testing.assert_array_equal(out, 0.0)
    np.testing.assert_array_equal(lse, -np.inf)


def test_no_queries():
    q = np.ones((2, 0, 4))
    k = np.ones((2, 3, 4))
    v = np.ones((2, 3, 5))
    out, lse = ref.attention(q, k, v, return_lse=True)
    assert out.shape == (2, 0, 5) and lse.shape == (2, 0)


def test_zero_head_dim_gives_uniform_weights():
    q = np.ones((3, 0))
    k = np.ones((4, 0))
    v = np.arange(8.0).reshape(4, 2)
    out, lse = ref.attention(q, k, v, return_lse=True)
    np.testing.assert_allclose(out, np.broadcast_to(v.mean(axis=0), (3, 2)), rtol=1e-15)
    np.testing.assert_allclose(lse, np.full(3, math.log(4.0)), rtol=1e-15)


def test_gqa_head_mapping():
    rng = np.random.default_rng(7)
    q, k, v = make_qkv(rng, (2, 6), 3, 5, 4, dv=2, hkv=3, dtype=np.float64)
    out = ref.attention(q, k, v)
    for b in range(2):
        for h in range(6):
            # 6 query heads over 3 kv heads: groups of 2
            expect = ref.attention(q[b, h], k[b, h // 2], v[b, h // 2])
            np.testing.assert_array_equal(out[b, h], expect)


def test_mqa_single_kv_head():
    rng = np.random.default_rng(8)
    q, k, v = make_qkv(rng, (5,), 4, 6, 3, hkv=1, dtype=np.float64)
    out = ref.attention(q, k, v)
    for h in range(5):
        np.testing.assert_array_equal(out[h], ref.attention(q[h], k[0], v[0]))


# ---------------------------------------------------------------------------
# Against the loop implementation
# ---------------------------------------------------------------------------

LOOP_CASES = [
    # lead, hkv, nq, nk, d, dv
    ((), None, 1, 1, 1, 1),
    ((), None, 3, 5, 4, 2),
    ((2,), None, 5, 3, 3, 4),
    ((2, 3), None, 4, 4, 2, 3),
    ((2, 4), 2, 3, 6, 5, 1),
    ((1, 3), 1, 6, 2, 2, 2),
]


@pytest.mark.parametrize("lead,hkv,nq,nk,d,dv", LOOP_CASES,
                         ids=[f"{len(c[0]) + 2}d-nq{c[2]}-nk{c[3]}-hkv{c[1]}" for c in LOOP_CASES])
@pytest.mark.parametrize("causal", [False, "bottom_right", "top_left"])
@pytest.mark.parametrize("mask_kind", [None, "bool", "add64"])
def test_matches_loop(rng, lead, hkv, nq, nk, d, dv, causal, mask_kind):
    q, k, v = make_qkv(rng, lead, nq, nk, d, dv=dv, hkv=hkv, dtype=np.float64)
    mask = None
    if mask_kind is not None:
        mask = make_mask(rng, mask_kind, lead + (nq, nk))
    out, lse = ref.attention(q, k, v, mask=mask, causal=causal, return_lse=True)
    eo, el = loop_attention(q, k, v, mask=mask, causal=causal)
    np.testing.assert_allclose(out, eo, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(lse, el, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mshape", [(5,), (4, 5), (1, 5), (4, 1), (1, 1, 4, 5),
                                    (2, 1, 1, 5), (1, 3, 4, 1), (3, 4, 5)],
                         ids=lambda s: "x".join(map(str, s)))
def test_mask_broadcast_matches_loop(rng, mshape):
    q, k, v = make_qkv(rng, (2, 3), 4, 5, 3, dtype=np.float64)
    mask = make_mask(rng, "bool", mshape, p_visible=0.6)
    out, lse = ref.attention(q, k, v, mask=mask, return_lse=True)
    eo, el = loop_attention(q, k, v, mask=mask)
    np.testing.assert_allclose(out, eo, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(lse, el, rtol=1e-12, atol=1e-14)


def test_custom_scale_matches_loop(rng):
    q, k, v = make_qkv(rng, (2,), 3, 4, 5, dtype=np.float64)
    for scale in (0.0, -0.7, 3.5, np.float32(0.25)):
        out = ref.attention(q, k, v, scale=scale)
        eo, _ = loop_attention(q, k, v, scale=float(scale))
        np.testing.assert_allclose(out, eo, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------
# API behaviour
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_dtype_preserved(rng, dtype):
    q, k, v = make_qkv(rng, (2, 2), 3, 4, 5, dtype=dtype)
    out, lse = ref.attention(q, k, v, return_lse=True)
    assert out.dtype == dtype and lse.dtype == dtype
    w = ref.attention_weights(q, k)
    assert w.dtype == dtype


def test_float32_is_close_to_float64(rng):
    q, k, v = make_qkv(rng, (2, 2), 9, 11, 8)
    o32 = ref.attention(q, k, v)
    o64 = ref.attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64))
    np.testing.assert_allclose(o32, o64, rtol=0, atol=1e-5)


def test_out_argument(rng):
    q, k, v = make_qkv(rng, (3,), 4, 5, 6, dv=2)
    out = np.full((3, 4, 2), np.nan, dtype=np.float32)
    res = ref.attention(q, k, v, out=out)
    assert res is out
    np.testing.assert_array_equal(out, ref.attention(q, k, v))
    res, lse = ref.attention(q, k, v, out=out, return_lse=True)
    assert res is out and lse.shape == (3, 4)


def test_out_argument_errors(rng):
    q, k, v = make_qkv(rng, (3,), 4, 5, 6)
    with pytest.raises(ValueError, match="out"):
        ref.attention(q, k, v, out=np.empty((3, 4, 5), np.float32))
    with pytest.raises(ValueError, match="out"):
        ref.attention(q, k, v, out=np.empty((3, 4, 6), np.float64))
    with pytest.raises(ValueError, match="out"):
        ref.attention(q, k, v, out=q)
    with pytest.raises(TypeError, match="out"):
        ref.attention(q, k, v, out=[[0.0]])


def test_weights_rows_sum_to_one_and_reproduce_output(rng):
    q, k, v = make_qkv(rng, (2, 4), 6, 7, 3, hkv=2, dtype=np.float64)
    mask = make_mask(rng, "bool", (6, 7), p_visible=0.5)
    w = ref.attention_weights(q, k, mask=mask, causal="top_left")
    assert w.shape == (2, 4, 6, 7)
    sums = w.sum(axis=-1)
    seen = (mask & np.tri(6, 7, dtype=bool)).any(axis=-1)
    np.testing.assert_allclose(sums, np.broadcast_to(seen.astype(float), sums.shape), rtol=1e-14)
    assert np.all(w[..., ~(mask & np.tri(6, 7, dtype=bool))] == 0.0)
    out = ref.attention(q, k, v, mask=mask, causal="top_left")
    expect = np.matmul(w, np.repeat(v, 2, axis=1))
    np.testing.assert_allclose(out, expect, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("layout", ["fortran", "transposed", "negative", "strided",
                                    "unaligned", "readonly"])
def test_layout_does_not_change_result(rng, layout):
    q, k, v = make_qkv(rng, (2, 3), 5, 6, 4)
    expect = ref.attention(q, k, v, causal=True)
    got = ref.attention(relayout(q, layout), relayout(k, layout), relayout(v, layout),
                        causal=True)
    np.testing.assert_array_equal(got, expect)


def test_nan_in_query_row_propagates_only_to_that_row(rng):
    q, k, v = make_qkv(rng, (), 4, 5, 3, dtype=np.float64)
    q[2, 1] = np.nan
    out, lse = ref.attention(q, k, v, return_lse=True)
    assert np.isnan(out[2]).all() and np.isnan(lse[2])
    assert np.isfinite(np.delete(out, 2, axis=0)).all()


@pytest.mark.parametrize("causal", ["diagonal", 2, "TOP_LEFT"])
def test_rejects_bad_causal(rng, causal):
    q, k, v = make_qkv(rng, (), 2, 2, 2)
    with pytest.raises(ValueError, match="causal"):
        ref.attention(q, k, v, causal=causal)


def test_rejects_bad_shapes_and_types(rng):
    q, k, v = make_qkv(rng, (2, 4), 3, 5, 8)
    with pytest.raises(ValueError, match=r"\bk\b"):
        ref.attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match=r"\bv\b"):
        ref.attention(q, k, v[..., :4, :])
    with pytest.raises(ValueError, match="heads"):
        ref.attention(q, k[:, :3], v[:, :3])
    with pytest.raises(TypeError, match="dtype"):
        ref.attention(q, k.astype(np.float64), v)
    with pytest.raises(TypeError, match=r"\bq\b"):
        ref.attention(q.astype(np.int32), k, v)
    with pytest.raises(ValueError, match="mask"):
        ref.attention(q, k, v, mask=np.ones((1, 2, 4, 3, 5), bool))
    with pytest.raises(ValueError, match="mask"):
        ref.attention(q, k, v, mask=np.ones((4,), bool))
    with pytest.raises(TypeError, match="mask"):
        ref.attention(q, k, v, mask=np.ones((5,), np.int64))
    with pytest.raises(ValueError, match="scale"):
        ref.attention(q, k, v, scale=float("nan"))
    with pytest.raises(TypeError, match="scale"):
        ref.attention(q, k, v, scale="1")
