"""Bad arguments of fastattn.attention, first set: rows of the one table of
test_bad_inputs.py (ids ``errors::<name>``), which runs them.

Each case builds valid inputs (4-D, B=2, H=4, Nq=5, Nk=6, D=8, Dv=8 unless
noted), breaks exactly one thing, and states which exception is expected
and a regular expression the message must match (the argument's name as a
whole word).  A case that repeated a row of test_bad_inputs.py (the same
call) lives there only.
"""

import numpy as np

Q = r"\bq\b"
K = r"\bk\b"
V = r"\bv\b"
MASK = r"\bmask\b"
OUT = r"\bout\b"


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


CASES = [
    # --- q, k, v types and dtypes -------------------------------------
    ("v_int", TypeError, V, with_(v=lambda a: a["v"].astype(np.int16))),
    ("q_bool", TypeError, Q, with_(q=lambda a: a["q"] > 0)),
    ("mixed_k_float64", TypeError, rf"{K}|{Q}",
     with_(k=lambda a: a["k"].astype(np.float64))),
    # --- shapes --------------------------------------------------------
    ("k_head_dim", ValueError, K, with_(k=lambda a: a["k"][..., :4])),
    ("v_num_keys", ValueError, V, with_(v=lambda a: a["v"][:, :, :5])),
    ("k_num_keys_vs_v", ValueError, rf"{V}|{K}", with_(k=lambda a: a["k"][:, :, :3])),
    ("v_heads", ValueError, V, with_(v=lambda a: a["v"][:, :2])),
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
    ("mask_too_many_dims", ValueError, MASK, with_(mask=np.ones((1, 2, 4, 5, 6), bool))),
    ("mask_wrong_nq", ValueError, MASK, with_(mask=np.ones((4, 6), np.float32))),
    ("mask_wrong_heads", ValueError, MASK, with_(mask=np.ones((2, 3, 5, 6), bool))),
    ("mask_wrong_batch", ValueError, MASK, with_(mask=np.ones((3, 1, 1, 6), bool))),
    # --- out -----------------------------------------------------------
    ("out_not_array", TypeError, OUT, with_(out=[[0.0]])),
    ("out_wrong_rank", ValueError, OUT, with_(out=np.empty((8, 5, 8), np.float32))),
    ("out_is_q", ValueError, OUT, with_(out=_shared_out_q)),
    ("out_overlaps_q", ValueError, OUT, with_(out=_overlapping_out)),
    ("out_overlaps_k", ValueError, OUT, with_(out=_overlapping_out_k)),
    ("out_is_v", ValueError, OUT, with_(out=_out_is_v)),
    ("out_is_mask", ValueError, OUT, with_(out=_out_is_mask)),
]

