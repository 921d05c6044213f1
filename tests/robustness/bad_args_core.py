"""Bad arguments: the exception type and that the message names the argument.

Each case builds valid inputs (4-D, B=2, H=4, Nq=5, Nk=6, D=8, Dv=8 unless
noted), breaks exactly one thing, and states which exception is expected
and a regular expression the message must match (the argument's name as a
whole word).
"""

import numpy as np
import pytest

import fastattn

Q = r"\bq\b"
K = r"\bk\b"
V = r"\bv\b"
MASK = r"\bmask\b"
OUT = r"\bout\b"
SCALE = r"\bscale\b"
CAUSAL = r"\bcausal\b"


def base(dtype=np.float32, lead=(2, 4), nq=5, nk=6, d=8, dv=8):
    rng = np.random.default_rng(0)
    q = rng.standard_normal(lead + (nq, d)).astype(dtype)
    k = rng.standard_normal(lead + (nk, d)).astype(dtype)
    v = rng.standard_normal(lead + (nk, dv)).astype(dtype)
    return dict(q=q, k=k, v=v)


def with_(**changes):
    """Valid arguments with some replaced; values may be callables of the base."""
    def build():
        args = base()
        for key, val in changes.items():
            args[key] = val(args) if callable(val) else val
        return args
    return build


def _shared_out_q(a):
    # out of the right shape and dtype that is a view of q's memory.
    return a["q"]


def _overlapping_out(a):
    # out and q are different views of one buffer that overlap in part.
    buf = np.zeros((2, 4, 5, 12), dtype=np.float32)
    a["q"] = buf[..., :8]
    a["q"][...] = 1.0
    return buf[..., 4:]


def _overlapping_out_k(a):
    buf = np.zeros((2, 4, 6, 8), dtype=np.float32)
    buf[...] = a["k"]
    a["k"] = buf
    return buf[:, :, :5, :]


def _out_is_v(a):
    a["v"] = np.zeros((2, 4, 5, 8), np.float32)
    a["k"] = a["k"][:, :, :5]
    return a["v"]


def _out_is_mask(a):
    # Nk == Dv == 8 so that a float mask has the output's shape.
    args = base(nk=8)
    a.update(k=args["k"], v=args["v"])
    m = np.zeros((2, 4, 5, 8), np.float32)
    a["mask"] = m
    return m


def _readonly_out(a):
    o = np.empty((2, 4, 5, 8), np.float32)
    o.setflags(write=False)
    return o


CASES = [
    # --- q, k, v types and dtypes -------------------------------------
    ("q_int", TypeError, Q, with_(q=lambda a: a["q"].astype(np.int32))),
    ("k_int", TypeError, K, with_(k=lambda a: a["k"].astype(np.int64))),
    ("v_int", TypeError, V, with_(v=lambda a: a["v"].astype(np.int16))),
    ("q_bool", TypeError, Q, with_(q=lambda a: a["q"] > 0)),
    ("q_complex", TypeError, Q, with_(q=lambda a: a["q"].astype(np.complex64))),
    ("v_complex", TypeError, V, with_(v=lambda a: a["v"].astype(np.complex128))),
    ("k_object", TypeError, K, with_(k=lambda a: a["k"].astype(object))),
    ("q_float16", TypeError, Q, with_(q=lambda a: a["q"].astype(np.float16))),
    ("mixed_k_float64", TypeError, rf"{K}|{Q}",
     with_(k=lambda a: a["k"].astype(np.float64))),
    ("mixed_v_float64", TypeError, rf"{V}|{Q}",
     with_(v=lambda a: a["v"].astype(np.float64))),
    ("mixed_q_float64", TypeError, rf"{Q}|{K}",
     with_(q=lambda a: a["q"].astype(np.float64))),
    # --- ranks ---------------------------------------------------------
    ("q_1d", ValueError, Q, with_(q=lambda a: a["q"][0, 0, 0])),
    ("q_5d", ValueError, Q, with_(q=lambda a: a["q"][None])),
    ("q_0d", ValueError, Q, with_(q=np.array(1.0, dtype=np.float32))),
    ("k_5d", ValueError, rf"{K}|{Q}", with_(k=lambda a: a["k"][None])),
    ("k_rank_differs", ValueError, rf"{K}|{Q}", with_(k=lambda a: a["k"][0])),
    ("v_rank_differs", ValueError, rf"{V}|{K}", with_(v=lambda a: a["v"][0])),
    # --- shapes --------------------------------------------------------
    ("k_head_dim", ValueError, K, with_(k=lambda a: a["k"][..., :4])),
    ("v_num_keys", ValueError, V, with_(v=lambda a: a["v"][:, :, :5])),
    ("k_num_keys_vs_v", ValueError, rf"{V}|{K}", with_(k=lambda a: a["k"][:, :, :3])),
    ("v_heads", ValueError, V, with_(v=lambda a: a["v"][:, :2])),
    ("v_batch", ValueError, V, with_(v=lambda a: a["v"][:1])),
    ("kv_batch", ValueError, rf"{K}|{Q}",
     with_(k=lambda a: a["k"][:1], v=lambda a: a["v"][:1])),
    ("kv_heads_not_divisor", ValueError, rf"{K}|{Q}",
     with_(k=lambda a: a["k"][:, :3], v=lambda a: a["v"][:, :3])),
    ("kv_more_heads_than_q", ValueError, rf"{K}|{Q}",
     with_(k=lambda a: np.concatenate([a["k"]] * 2, axis=1),
           v=lambda a: np.concatenate([a["v"]] * 2, axis=1))),
    ("kv_heads_3d_not_divisor", ValueError, rf"{K}|{Q}",
     with_(q=lambda a: a["q"][0], k=lambda a: a["k"][0, :3], v=lambda a: a["v"][0, :3])),
    # --- mask ----------------------------------------------------------
    ("mask_int", TypeError, MASK, with_(mask=np.ones((5, 6), np.int32))),
    ("mask_uint8", TypeError, MASK, with_(mask=np.ones((5, 6), np.uint8))),
    ("mask_complex", TypeError, MASK, with_(mask=np.zeros((5, 6), np.complex64))),
    ("mask_too_many_dims", ValueError, MASK, with_(mask=np.ones((1, 2, 4, 5, 6), bool))),
    ("mask_wrong_nk", ValueError, MASK, with_(mask=np.ones((5, 7), bool))),
    ("mask_wrong_nq", ValueError, MASK, with_(mask=np.ones((4, 6), np.float32))),
    ("mask_wrong_heads", ValueError, MASK, with_(mask=np.ones((2, 3, 5, 6), bool))),
    ("mask_wrong_batch", ValueError, MASK, with_(mask=np.ones((3, 1, 1, 6), bool))),
    ("mask_more_dims_than_2d_q", ValueError, MASK,
     with_(q=lambda a: a["q"][0, 0], k=lambda a: a["k"][0, 0], v=lambda a: a["v"][0, 0],
           mask=np.ones((1, 5, 6), bool))),
    # --- causal --------------------------------------------------------
    ("causal_unknown_string", ValueError, CAUSAL, with_(causal="diagonal")),
    ("causal_misspelt", ValueError, CAUSAL, with_(causal="bottom-right")),
    ("causal_int_2", ValueError, CAUSAL, with_(causal=2)),
    # --- scale ---------------------------------------------------------
    ("scale_nan", ValueError, SCALE, with_(scale=float("nan"))),
    ("scale_inf", ValueError, SCALE, with_(scale=float("inf"))),
    ("scale_minus_inf", ValueError, SCALE, with_(scale=-np.inf)),
    ("scale_np_nan", ValueError, SCALE, with_(scale=np.float32("nan"))),
    ("scale_string", TypeError, SCALE, with_(scale="0.5")),
    ("scale_complex", TypeError, SCALE, with_(scale=1j)),
    ("scale_list", TypeError, SCALE, with_(scale=[0.5])),
    # --- out -----------------------------------------------------------
    ("out_not_array", TypeError, OUT, with_(out=[[0.0]])),
    ("out_wrong_shape", ValueError, OUT, with_(out=np.empty((2, 4, 5, 7), np.float32))),
    ("out_wrong_rank", ValueError, OUT, with_(out=np.empty((8, 5, 8), np.float32))),
    ("out_wrong_dtype", ValueError, OUT, with_(out=np.empty((2, 4, 5, 8), np.float64))),
    ("out_readonly", ValueError, OUT, with_(out=_readonly_out)),
    ("out_is_q", ValueError, OUT, with_(out=_shared_out_q)),
    ("out_overlaps_q", ValueError, OUT, with_(out=_overlapping_out)),
    ("out_overlaps_k", ValueError, OUT, with_(out=_overlapping_out_k)),
    ("out_is_v", ValueError, OUT, with_(out=_out_is_v)),
    ("out_is_mask", ValueError, OUT, with_(out=_out_is_mask)),
]


@pytest.mark.parametrize("name,exc,pattern,build", CASES, ids=[c[0] for c in CASES])
def test_bad_argument(name, exc, pattern, build):
    args = build()
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(exc, match=pattern):
        fastattn.attention(q, k, v, **args)


OUT_ARRAY_CASES = [c for c in CASES if c[0].startswith("out_") and c[0] != "out_not_array"]


@pytest.mark.parametrize("name,exc,pattern,build", OUT_ARRAY_CASES,
                         ids=[c[0] for c in OUT_ARRAY_CASES])
def test_failed_call_leaves_out_untouched(name, exc, pattern, build):
    args = build()
    out = args["out"]
    before = out.copy()
    q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
    with pytest.raises(exc):
        fastattn.attention(q, k, v, **args)
    np.testing.assert_array_equal(out, before)


def test_messages_give_sizes():
    # The spec's example: the message names both head dims.
    a = base(d=64)
    with pytest.raises(ValueError, match=r"\bk\b.*32.*64|\bk\b.*64.*32"):
        fastattn.attention(a["q"], a["k"][..., :32], a["v"])


@pytest.mark.parametrize("causal", [False, True, "bottom_right", "top_left"],
                         ids=["false", "true", "bottom_right", "top_left"])
def test_valid_causal_values_accepted(causal):
    a = base()
    out = fastattn.attention(a["q"], a["k"], a["v"], causal=causal)
    assert out.shape == (2, 4, 5, 8)


@pytest.mark.parametrize("scale", [0, 0.0, -1.0, 1e-30, 1e30, np.float32(0.5),
                                   np.float64(2.0), np.int64(3)],
                         ids=["int0", "zero", "negative", "tiny", "huge",
                              "np_float32", "np_float64", "np_int64"])
def test_valid_scales_accepted(scale):
    a = base()
    out = fastattn.attention(a["q"], a["k"], a["v"], scale=scale)
    assert out.shape == (2, 4, 5, 8)
