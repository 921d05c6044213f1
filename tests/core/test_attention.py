"""fastattn.attention against the NumPy reference (tolerance rule in support/compare.py)."""

import numpy as np
import pytest

import fastattn
from support import (assert_result, check_attention, check_attention_out_only,
                      make_mask, make_qkv)

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]


# ---------------------------------------------------------------------------
# Sizes: rows/keys around and across the block sizes, 1, odd, Nq != Nk
# ---------------------------------------------------------------------------

SEQ_CASES = [
    (1, 1), (1, 17), (17, 1), (2, 3), (17, 17), (33, 129), (129, 33),
    (63, 65), (64, 64), (65, 63), (128, 128), (257, 7), (7, 513), (513, 33),
]


@pytest.mark.parametrize("nq,nk", SEQ_CASES, ids=[f"nq{a}-nk{b}" for a, b in SEQ_CASES])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sequence_lengths(rng, nq, nk, dtype):
    q, k, v = make_qkv(rng, (1, 2), nq, nk, 32, dtype=dtype)
    check_attention(q, k, v)


@pytest.mark.parametrize("causal", [False, True, "top_left"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_long_sequence_1025(rng, causal, dtype):
    q, k, v = make_qkv(rng, (), 1025, 1025, 64, dtype=dtype)
    check_attention(q, k, v, causal=causal)


def test_long_keys_short_queries(rng):
    q, k, v = make_qkv(rng, (2,), 3, 1025, 80, dv=32)
    check_attention(q, k, v, causal=True)


HEAD_DIMS = [1, 8, 32, 64, 80, 128, 256]


@pytest.mark.parametrize("d", HEAD_DIMS, ids=[f"d{d}" for d in HEAD_DIMS])
@pytest.mark.parametrize("dtype", DTYPES)
def test_head_dims(rng, d, dtype):
    q, k, v = make_qkv(rng, (2,), 33, 70, d, dtype=dtype)
    check_attention(q, k, v)


DV_CASES = [(1, 8), (8, 1), (32, 64), (64, 32), (80, 128), (128, 80), (256, 1),
            (1, 256), (17, 3), (3, 129)]


@pytest.mark.parametrize("d,dv", DV_CASES, ids=[f"d{a}-dv{b}" for a, b in DV_CASES])
def test_value_dim_differs(rng, d, dv):
    q, k, v = make_qkv(rng, (2,), 19, 45, d, dv=dv)
    check_attention(q, k, v, causal="top_left")


@pytest.mark.parametrize("lead", [(), (3,), (2, 3)], ids=["2d", "3d", "4d"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_ranks(rng, lead, dtype):
    q, k, v = make_qkv(rng, lead, 21, 37, 16, dv=24, dtype=dtype)
    check_attention(q, k, v)


def test_many_batches_and_heads(rng):
    q, k, v = make_qkv(rng, (5, 7), 9, 13, 8)
    check_attention(q, k, v, causal=True)


def test_return_lse_false_returns_array(rng):
    q, k, v = make_qkv(rng, (2, 2), 5, 6, 8)
    out = check_attention_out_only(q, k, v)
    assert out.shape == (2, 2, 5, 8)


def test_lse_and_plain_calls_agree(rng):
    q, k, v = make_qkv(rng, (2, 2), 70, 90, 32)
    out1 = fastattn.attention(q, k, v, causal=True)
    out2, _ = fastattn.attention(q, k, v, causal=True, return_lse=True)
    assert_result(q, k, v, out1, causal=True)
    assert_result(q, k, v, out2, causal=True)


# ---------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------

MASK_KINDS = ["bool", "add32", "add64"]

# Broadcast shapes for 4-D inputs with B=2, H=3, Nq=37, Nk=70.
B, H, NQ, NK = 2, 3, 37, 70
MASK_SHAPES = [
    (NK,), (NQ, NK), (1, NK), (NQ, 1), (H, NQ, NK), (1, 1, NQ, NK),
    (B, 1, 1, NK), (1, H, NQ, 1), (B, H, NQ, NK), (B, 1, NQ, NK), (1, 1, 1, 1),
]


@pytest.mark.parametrize("mshape", MASK_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_mask_broadcast_shapes(rng, kind, mshape):
    q, k, v = make_qkv(rng, (B, H), NQ, NK, 16)
    mask = make_mask(rng, kind, mshape)
    check_attention(q, k, v, mask=mask)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mask_kinds(rng, kind, dtype):
    q, k, v = make_qkv(rng, (2,), 65, 129, 32, dtype=dtype)
    mask = make_mask(rng, kind, (2, 65, 129), p_visible=0.3)
    check_attention(q, k, v, mask=mask)


@pytest.mark.parametrize("lead", [(), (3,)], ids=["2d", "3d"])
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_mask_low_rank_inputs(rng, lead, kind):
    q, k, v = make_qkv(rng, lead, 20, 30, 8)
    check_attention(q, k, v, mask=make_mask(rng, kind, (20, 30)))
    check_attention(q, k, v, mask=make_mask(rng, kind, (30,)))


def test_additive_mask_finite_values_only(rng):
    q, k, v = make_qkv(rng, (2, 2), 17, 33, 8)
    mask = (rng.standard_normal((17, 33)) * 5).astype(np.float32)
    check_attention(q, k, v, mask=mask)


def test_additive_mask_large_negative_but_finite(rng):
    q, k, v = make_qkv(rng, (2,), 9, 40, 8)
    mask = np.where(rng.random((9, 40)) < 0.5, -1e30, 0.0).astype(np.float32)
    check_attention(q, k, v, mask=mask)


def test_mask_sparse_visibility(rng):
    # Each row sees only a handful of keys spread over several blocks.
    q, k, v = make_qkv(rng, (1, 2), 70, 300, 16)
    mask = make_mask(rng, "bool", (70, 300), p_visible=0.02)
    check_attention(q, k, v, mask=mask)


# ---------------------------------------------------------------------------
# Causal
# ---------------------------------------------------------------------------

CAUSAL_SEQ = [(1, 1), (5, 5), (17, 33), (33, 17), (64, 64), (65, 130), (130, 65),
              (1, 200), (200, 1), (129, 129)]


@pytest.mark.parametrize("nq,nk", CAUSAL_SEQ, ids=[f"nq{a}-nk{b}" for a, b in CAUSAL_SEQ])
@pytest.mark.parametrize("causal", [True, "bottom_right", "top_left"],
                         ids=["true", "bottom_right", "top_left"])
def test_causal(rng, nq, nk, causal):
    q, k, v = make_qkv(rng, (2,), nq, nk, 16)
    check_attention(q, k, v, causal=causal)


@pytest.mark.parametrize("dtype", DTYPES)
def test_causal_true_is_bottom_right(rng, dtype):
    q, k, v = make_qkv(rng, (2,), 20, 45, 8, dtype=dtype)
    a = fastattn.attention(q, k, v, causal=True)
    b = fastattn.attention(q, k, v, causal="bottom_right")
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("causal", ["bottom_right", "top_left"])
@pytest.mark.parametrize("nq,nk", [(40, 70), (70, 40)], ids=["nq<nk", "nq>nk"])
def test_causal_with_mask(rng, kind, causal, nq, nk):
    q, k, v = make_qkv(rng, (2, 2), nq, nk, 16)
    mask = make_mask(rng, kind, (2, 1, nq, nk), p_visible=0.6)
    check_attention(q, k, v, mask=mask, causal=causal)


# ---------------------------------------------------------------------------
# Grouped- and multi-query attention
# ---------------------------------------------------------------------------

GQA_CASES = [(2, 1), (4, 2), (8, 2), (6, 3), (4, 4), (3, 1), (8, 8), (12, 4)]


@pytest.mark.parametrize("h,hkv", GQA_CASES, ids=[f"h{a}-hkv{b}" for a, b in GQA_CASES])
@pytest.mark.parametrize("lead_batch", [(), (2,)], ids=["3d", "4d"])
def test_gqa(rng, h, hkv, lead_batch):
    q, k, v = make_qkv(rng, lead_batch + (h,), 33, 47, 16, dv=8, hkv=hkv)
    check_attention(q, k, v, causal=True)


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_gqa_with_per_head_mask(rng, kind):
    q, k, v = make_qkv(rng, (2, 6), 17, 29, 8, hkv=2)
    mask = make_mask(rng, kind, (1, 6, 17, 29))
    check_attention(q, k, v, mask=mask, causal="top_left")


def test_mqa_float64(rng):
    q, k, v = make_qkv(rng, (2, 8), 33, 65, 32, hkv=1, dtype=np.float64)
    check_attention(q, k, v)


# ---------------------------------------------------------------------------
# Scale and numerics
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [0.0, -0.5, 1.0, 0.125, 3.0, np.float32(0.3),
                                   np.float64(2.5), 7],
                         ids=["zero", "negative", "one", "eighth", "three",
                              "np_float32", "np_float64", "int"])
def test_scale(rng, scale):
    q, k, v = make_qkv(rng, (2,), 17, 33, 16)
    check_attention(q, k, v, scale=scale)


@pytest.mark.parametrize("scale_up", [6, 30], ids=["hundreds", "thousands"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_logits_are_stable(rng, dtype, scale_up):
    # Scores in the hundreds / thousands: exp overflows without the max
    # shift.  The tolerance's score term (4 u max|s| max|v|) covers the
    # rounding of such scores.
    q, k, v = make_qkv(rng, (2,), 33, 130, 16, dtype=dtype)
    out, lse = check_attention(q * scale_up, k * scale_up, v, causal=True)
    assert np.isfinite(out).all() and np.isfinite(lse).all()


def test_large_negative_scale(rng):
    q, k, v = make_qkv(rng, (2,), 33, 70, 16)
    check_attention(q, k, v, scale=-40.0)


def test_tiny_logits(rng):
    q, k, v = make_qkv(rng, (2,), 33, 70, 16)
    check_attention(q * 1e-20, k, v)


def test_large_values(rng):
    q, k, v = make_qkv(rng, (2,), 33, 70, 16)
    check_attention(q, k, v * 1e20)


# ---------------------------------------------------------------------------
# Inputs are left alone
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", MASK_KINDS)
def test_inputs_not_modified(rng, kind):
    q, k, v = make_qkv(rng, (2, 4), 33, 65, 16, hkv=2)
    mask = make_mask(rng, kind, (2, 1, 33, 65))
    copies = [a.copy() for a in (q, k, v, mask)]
    fastattn.attention(q, k, v, mask=mask, causal=True, return_lse=True)
    for name, a, c in zip(("q", "k", "v", "mask"), (q, k, v, mask), copies):
        assert np.array_equal(a, c, equal_nan=kind != "bool"), f"{name} was modified"
        assert a.flags.writeable, f"{name} was made read-only"


def test_repeated_calls_identical(rng):
    q, k, v = make_qkv(rng, (2, 2), 70, 70, 32)
    a, la = fastattn.attention(q, k, v, causal=True, return_lse=True)
    b, lb = fastattn.attention(q, k, v, causal=True, return_lse=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)


# ---------------------------------------------------------------------------
# Long key sequences with few query rows (decoding).  With few (batch, head,
# row-tile) work items the keys are split into chunks processed separately
# and merged, so these cases cover chunk edges, chunks that see no key and
# the merge.
# ---------------------------------------------------------------------------

DECODE_CASES = [
    # nq, nk, lead, hkv
    (1, 1024, (), None),
    (1, 1025, (1, 1), None),
    (3, 1025, (2,), None),
    (4, 2049, (1, 8), 2),
    (5, 2049, (1, 2), None),
    (1, 4097, (1, 8), 1),
    (2, 3000, (3,), 3),
    (65, 1100, (), None),
]


@pytest.mark.parametrize("nq,nk,lead,hkv", DECODE_CASES,
                         ids=[f"nq{c[0]}-nk{c[1]}-{len(c[2]) + 2}d-hkv{c[3]}"
                              for c in DECODE_CASES])
@pytest.mark.parametrize("causal", [False, "bottom_right", "top_left"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_long_keys(rng, nq, nk, lead, hkv, causal, dtype):
    q, k, v = make_qkv(rng, lead, nq, nk, 64, dv=32, hkv=hkv, dtype=dtype)
    check_attention(q, k, v, causal=causal)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_long_keys_masked(rng, kind, dtype):
    # Only a window of keys in the middle is visible: most chunks see nothing.
    nq, nk = 3, 3000
    q, k, v = make_qkv(rng, (1, 4), nq, nk, 32, hkv=2, dtype=dtype)
    visible = np.zeros((nq, nk), bool)
    visible[:, 1500:1540] = True
    visible[1, :] = False  # and one row sees no key at all
    mask = visible if kind == "bool" else np.where(visible, 0.0, -np.inf).astype(
        np.float32 if kind == "add32" else np.float64)
    out, lse = check_attention(q, k, v, mask=mask)
    assert np.all(out[:, :, 1] == 0.0) and np.all(lse[:, :, 1] == -np.inf)


def test_decode_long_keys_random_mask(rng):
    q, k, v = make_qkv(rng, (2, 2), 4, 2500, 16)
    check_attention(q, k, v, mask=make_mask(rng, "add32", (2, 1, 4, 2500), p_visible=0.3))


def test_decode_long_keys_strided(rng):
    # Non-unit column strides take the general kernel with the same split.
    q, k, v = make_qkv(rng, (1, 4), 2, 2100, 32)
    check_attention(q, k[..., ::-1], v[..., ::-1], causal=True)
