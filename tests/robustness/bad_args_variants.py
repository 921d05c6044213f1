"""Bad arguments of the attention variants, attention_varlen, KVCache and
merge: rows of the one table of test_bad_inputs.py (ids
``variants::<name>``), which runs them.

Each row is a call on valid inputs (BASE_CALLS, which must succeed) with
exactly one thing broken, and states the exception (TypeError for wrong
types and dtypes, ValueError for wrong shapes and values, as in GUIDE.md)
and a regular expression the message must match (the argument's name as a
whole word).
"""

import numpy as np

import fastattn

WINDOW = r"\bwindow\b"
ALIBI = r"\balibi_slopes\b"
SOFTCAP = r"\bsoftcap\b"
PRECISION = r"\bprecision\b"
LENS = r"\bkv_lengths\b"
CUQ = r"\bcu_seqlens_q\b"
CUK = r"\bcu_seqlens_k\b"


def qkv(lead=(2, 4), hkv=2, nq=5, nk=6, d=8, dtype=np.float32):
    rng = np.random.default_rng(0)
    q = rng.standard_normal(lead + (nq, d)).astype(dtype)
    k = rng.standard_normal(lead[:-1] + (hkv, nk, d)).astype(dtype)
    return q, k, k.copy()


def attn(**kw):
    """attention on valid (2, 4, 5, 8) / (2, 2, 6, 8) inputs with kw."""
    return lambda: fastattn.attention(*qkv(), **kw)


def weights(**kw):
    q, k, _ = qkv()
    return lambda: fastattn.attention_weights(q, k, **kw)


def varlen(q=None, k=None, v=None, cq=(0, 3, 7), ck=(0, 4, 9), **kw):
    rng = np.random.default_rng(1)
    q = rng.standard_normal((7, 4, 8)).astype(np.float32) if q is None else q
    k = rng.standard_normal((9, 2, 8)).astype(np.float32) if k is None else k
    v = rng.standard_normal((9, 2, 8)).astype(np.float32) if v is None else v
    cq = np.array(cq) if isinstance(cq, tuple) else cq
    ck = np.array(ck) if isinstance(ck, tuple) else ck
    return lambda: fastattn.attention_varlen(q, k, v, cq, ck, **kw)


def cache(*args, **kw):
    return lambda: fastattn.KVCache(*args, **kw)


def _cache():
    return fastattn.KVCache(2, 2, 6, 4, value_dim=3)


def append(k_shape=(2, 2, 3, 4), v_shape=(2, 2, 3, 3), k_dtype=np.float32,
           v_dtype=np.float32, k=None, v=None, **kw):
    def f():
        c = _cache()
        kk = np.zeros(k_shape, k_dtype) if k is None else k
        vv = np.zeros(v_shape, v_dtype) if v is None else v
        c.append(kk, vv, **kw)
    return f


def attend(q=None, **kw):
    def f():
        c = _cache()
        c.append(np.ones((2, 2, 3, 4), np.float32), np.ones((2, 2, 3, 3), np.float32))
        c.attend(np.zeros((2, 4, 1, 4), np.float32) if q is None else q, **kw)
    return f


O = np.zeros((2, 3, 4), np.float32)
L = np.zeros((2, 3), np.float32)


def merge(outs, lses, **kw):
    return lambda: fastattn.merge(outs, lses, **kw)


T, V = TypeError, ValueError
CASES = [
    # window
    ("window_int", T, WINDOW, attn(window=3)),
    ("window_one", T, WINDOW, attn(window=(1,))),
    ("window_three", T, WINDOW, attn(window=(1, 2, 3))),
    ("window_str", T, WINDOW, attn(window="ab")),
    ("window_dict", T, WINDOW, attn(window={1: 2})),
    ("window_array", T, WINDOW, attn(window=np.array([1, 2]))),
    ("window_left_below_minus_1", V, WINDOW, attn(window=(-2, 0))),
    ("window_right_below_minus_1", V, WINDOW, attn(window=(0, -5))),
    ("window_left_float", T, WINDOW, attn(window=(1.5, 0))),
    ("window_right_float_integral", T, WINDOW, attn(window=(0, 2.0))),
    ("window_left_np_float", T, WINDOW, attn(window=(np.float64(2), 0))),
    ("window_left_bool", T, WINDOW, attn(window=(True, 0))),
    ("window_right_none", T, WINDOW, attn(window=(1, None))),
    ("window_right_str", T, WINDOW, attn(window=(1, "1"))),
    ("window_top_left", V, WINDOW, attn(window=(1, 1), causal="top_left")),
    ("weights_window_bad", V, WINDOW, weights(window=(0, -3))),
    ("varlen_window_bad", T, WINDOW, varlen(window=(1,))),
    ("attend_window_bad", V, WINDOW, attend(window=(-3, 0))),
    # alibi_slopes
    ("alibi_too_many", V, ALIBI, attn(alibi_slopes=np.ones(5))),
    ("alibi_too_few", V, ALIBI, attn(alibi_slopes=np.ones(2))),
    ("alibi_empty", V, ALIBI, attn(alibi_slopes=np.ones(0))),
    ("alibi_3d", V, ALIBI, attn(alibi_slopes=np.ones((2, 4, 1)))),
    ("alibi_transposed", V, ALIBI, attn(alibi_slopes=np.ones((4, 2)))),
    ("alibi_wrong_batch", V, ALIBI, attn(alibi_slopes=np.ones((3, 4)))),
    ("alibi_0d", V, ALIBI, attn(alibi_slopes=np.array(1.0))),
    ("alibi_float", T, ALIBI, attn(alibi_slopes=1.0)),
    ("alibi_str", T, ALIBI, attn(alibi_slopes="abcd")),
    ("alibi_complex", T, ALIBI, attn(alibi_slopes=np.ones(4, complex))),
    ("alibi_bool", T, ALIBI, attn(alibi_slopes=np.ones(4, bool))),
    ("alibi_unicode", T, ALIBI, attn(alibi_slopes=np.array(["a"] * 4))),
    ("alibi_object", T, ALIBI, attn(alibi_slopes=[None] * 4)),
    ("alibi_nan", V, ALIBI, attn(alibi_slopes=np.array([1, np.nan, 1, 1]))),
    ("alibi_inf", V, ALIBI, attn(alibi_slopes=np.array([1, 1, -np.inf, 1]))),
    ("alibi_nan_bh", V, ALIBI, attn(alibi_slopes=np.full((2, 4), np.nan))),
    ("weights_alibi_bad", V, ALIBI, weights(alibi_slopes=np.ones(3))),
    ("varlen_alibi_wrong_batch", V, ALIBI, varlen(alibi_slopes=np.ones((3, 4)))),
    ("attend_alibi_bad", V, ALIBI, attend(alibi_slopes=np.ones(3))),
    # softcap
    ("softcap_zero", V, SOFTCAP, attn(softcap=0)),
    ("softcap_zero_float", V, SOFTCAP, attn(softcap=0.0)),
    ("softcap_negative", V, SOFTCAP, attn(softcap=-1)),
    ("softcap_nan", V, SOFTCAP, attn(softcap=np.nan)),
    ("softcap_inf", V, SOFTCAP, attn(softcap=np.inf)),
    ("softcap_minus_inf", V, SOFTCAP, attn(softcap=-np.inf)),
    ("softcap_np_float16_zero", V, SOFTCAP, attn(softcap=np.float16(0))),
    ("softcap_huge_int", V, SOFTCAP, attn(softcap=2 ** 2000)),
    ("softcap_str", T, SOFTCAP, attn(softcap="1")),
    ("softcap_bool", T, SOFTCAP, attn(softcap=True)),
    ("softcap_complex", T, SOFTCAP, attn(softcap=1 + 0j)),
    ("softcap_array", T, SOFTCAP, attn(softcap=np.array(2.0))),
    ("softcap_list", T, SOFTCAP, attn(softcap=[2.0])),
    ("weights_softcap_bad", V, SOFTCAP, weights(softcap=-2.0)),
    # precision (float32 only for the reduced modes)
    ("precision_unknown", V, PRECISION, attn(precision="fp32")),
    ("precision_none", T, PRECISION, attn(precision=None)),
    ("precision_float64", V, PRECISION, lambda: fastattn.attention(
        *qkv(dtype=np.float64), precision="bf16")),
    ("weights_precision_bad", V, PRECISION, weights(precision="half")),
    ("varlen_precision_bad", T, PRECISION, varlen(precision=1)),
    ("attend_precision_bad", V, PRECISION, attend(precision="bf16x2")),
    ("varlen_softcap_bad", V, SOFTCAP, varlen(softcap=0)),
    ("attend_softcap_bad", T, SOFTCAP, attend(softcap="x")),
    # kv_lengths
    ("lengths_too_many", V, LENS, attn(kv_lengths=np.array([1, 2, 3]))),
    ("lengths_2d", V, LENS, attn(kv_lengths=np.array([[1], [2]]))),
    ("lengths_0d", V, LENS, attn(kv_lengths=np.array(3))),
    ("lengths_int", T, LENS, attn(kv_lengths=3)),
    ("lengths_negative", V, LENS, attn(kv_lengths=np.array([-1, 2]))),
    ("lengths_above_nk", V, LENS, attn(kv_lengths=np.array([1, 7]))),
    ("lengths_huge_uint", V, LENS, attn(kv_lengths=np.array([1, 2 ** 63], np.uint64))),
    ("lengths_float", T, LENS, attn(kv_lengths=np.array([1.0, 2.0]))),
    ("lengths_float_list", T, LENS, attn(kv_lengths=[1.0, 2.0])),
    ("lengths_bool", T, LENS, attn(kv_lengths=np.array([True, False]))),
    ("lengths_object", T, LENS, attn(kv_lengths=np.array([1, 2], object))),
    ("lengths_str", T, LENS, attn(kv_lengths=["a", "b"])),
    ("weights_lengths_bad", V, LENS, weights(kv_lengths=[0, 9])),
    # return_weights
    ("return_weights_int", T, r"\breturn_weights\b", attn(return_weights=1)),
    ("return_weights_str", T, r"\breturn_weights\b", attn(return_weights="yes")),
    # attention_weights arguments
    ("weights_k_list", T, r"\bk\b", lambda: fastattn.attention_weights(qkv()[0],
                                                                      qkv()[1].tolist())),
    ("weights_q_list", T, r"\bq\b", lambda: fastattn.attention_weights(qkv()[0].tolist(),
                                                                      qkv()[1])),
    # 16-bit dtypes
    ("half_mixed_with_float32", T, r"\bk\b",
     lambda: fastattn.attention(qkv()[0].astype(np.float16), *qkv()[1:])),
    ("half_out_float32", V, r"\bout\b",
     lambda: fastattn.attention(*qkv(dtype=np.float16), out=np.zeros((2, 4, 5, 8), np.float32))),
    ("half_int8_q", T, r"\bq\b",
     lambda: fastattn.attention(qkv()[0].astype(np.int8), *qkv()[1:])),
    # attention_varlen
    ("cu_q_not_from_0", V, CUQ, varlen(cq=(1, 3, 7))),
    ("cu_k_not_from_0", V, CUK, varlen(ck=(2, 4, 9))),
    ("cu_q_decreasing", V, CUQ, varlen(cq=(0, 5, 3, 7), ck=(0, 1, 2, 9))),
    ("cu_k_decreasing", V, CUK, varlen(cq=(0, 1, 2, 7), ck=(0, 5, 4, 9))),
    ("cu_q_wrong_end", V, CUQ, varlen(cq=(0, 3, 6))),
    ("cu_k_wrong_end", V, CUK, varlen(ck=(0, 3, 10))),
    ("cu_counts_differ", V, CUQ, varlen(ck=(0, 9))),
    ("cu_q_float", T, CUQ, varlen(cq=np.array([0.0, 3.0, 7.0]))),
    ("cu_k_bool", T, CUK, varlen(ck=np.array([False, True]))),
    ("cu_q_2d", V, CUQ, varlen(cq=np.array([[0, 3, 7]]))),
    ("cu_q_empty", V, CUQ, varlen(cq=np.array([], np.int64))),
    ("cu_q_int", T, CUQ, varlen(cq=7)),
    ("cu_k_none", T, CUK, varlen(ck=None)),
    ("cu_q_uint_huge", V, CUQ, varlen(cq=np.array([0, 2 ** 64 - 1], np.uint64))),
    ("varlen_q_4d", V, r"\bq\b", varlen(q=np.zeros((1, 7, 4, 8), np.float32))),
    ("varlen_q_2d", V, r"\bq\b", varlen(q=np.zeros((7, 8), np.float32))),
    ("varlen_k_4d", V, r"\bk\b", varlen(k=np.zeros((1, 9, 2, 8), np.float32))),
    ("varlen_v_2d", V, r"\bv\b", varlen(v=np.zeros((9, 8), np.float32))),
    ("varlen_q_list", T, r"\bq\b", varlen(q=[[[0.0]]])),
    ("varlen_k_head_dim", V, r"\bk\b", varlen(k=np.zeros((9, 2, 4), np.float32))),
    ("varlen_v_rows", V, r"\bv\b", varlen(v=np.zeros((8, 2, 8), np.float32))),
    ("varlen_heads", V, r"\bq\b", varlen(q=np.zeros((7, 3, 8), np.float32))),
    ("varlen_dtype_mix", T, r"\bk\b", varlen(q=np.zeros((7, 4, 8)))),
    ("varlen_out_shape", V, r"\bout\b", varlen(out=np.zeros((7, 4, 7), np.float32))),
    ("varlen_out_type", T, r"\bout\b", varlen(out=[1])),
    ("varlen_out_dtype", V, r"\bout\b", varlen(out=np.zeros((7, 4, 8)))),
    ("varlen_return_lse", T, r"\breturn_lse\b", varlen(return_lse="x")),
    # KVCache constructor
    ("cache_batch_float", T, r"\bbatch\b", cache(2.0, 1, 4, 8)),
    ("cache_batch_negative", V, r"\bbatch\b", cache(-1, 1, 4, 8)),
    ("cache_kv_heads_zero", V, r"\bkv_heads\b", cache(2, 0, 4, 8)),
    ("cache_kv_heads_str", T, r"\bkv_heads\b", cache(2, "1", 4, 8)),
    ("cache_max_len_negative", V, r"\bmax_len\b", cache(2, 1, -4, 8)),
    ("cache_max_len_str", T, r"\bmax_len\b", cache(2, 1, "4", 8)),
    ("cache_head_dim_bool", T, r"\bhead_dim\b", cache(2, 1, 4, True)),
    ("cache_head_dim_negative", V, r"\bhead_dim\b", cache(2, 1, 4, -8)),
    ("cache_head_dim_none", T, r"\bhead_dim\b", cache(2, 1, 4, None)),
    ("cache_value_dim_negative", V, r"\bvalue_dim\b", cache(2, 1, 4, 8, value_dim=-1)),
    ("cache_value_dim_float", T, r"\bvalue_dim\b", cache(2, 1, 4, 8, value_dim=2.0)),
    ("cache_dtype_int", T, r"\bdtype\b.*\bint8\b", cache(2, 1, 4, 8, dtype=np.int32)),
    ("cache_dtype_complex", T, r"\bdtype\b", cache(2, 1, 4, 8, dtype=np.complex64)),
    ("cache_dtype_object", T, r"\bdtype\b", cache(2, 1, 4, 8, dtype=object)),
    ("cache_dtype_name", T, r"\bdtype\b", cache(2, 1, 4, 8, dtype="foo")),
    # KVCache.append
    ("append_k_3d", V, r"\bk\b", append(k_shape=(2, 3, 4))),
    ("append_k_batch", V, r"\bk\b", append(k_shape=(1, 2, 3, 4))),
    ("append_k_heads", V, r"\bk\b", append(k_shape=(2, 1, 3, 4))),
    ("append_k_head_dim", V, r"\bk\b", append(k_shape=(2, 2, 3, 3))),
    ("append_v_value_dim", V, r"\bv\b", append(v_shape=(2, 2, 3, 2))),
    ("append_v_tokens", V, r"\bv\b", append(v_shape=(2, 2, 2, 3))),
    ("append_k_dtype", T, r"\bk\b", append(k_dtype=np.float64)),
    ("append_v_dtype", T, r"\bv\b", append(v_dtype=np.float16)),
    ("append_k_list", T, r"\bk\b", append(k=[[[[0.0]]]])),
    ("append_v_none", T, r"\bv\b", append(v="v")),
    ("append_lengths_shape", V, r"\blengths\b", append(lengths=[1, 2, 3])),
    ("append_lengths_2d", V, r"\blengths\b", append(lengths=[[1, 2]])),
    ("append_lengths_scalar", V, r"\blengths\b", append(lengths=2)),
    ("append_lengths_float", T, r"\blengths\b", append(lengths=[1.0, 2.0])),
    ("append_lengths_bool", T, r"\blengths\b", append(lengths=[True, False])),
    ("append_lengths_negative", V, r"\blengths\b", append(lengths=[-1, 2])),
    ("append_lengths_above_n", V, r"\blengths\b", append(lengths=[4, 2])),
    ("append_overflow", V, r"\bmax_len\b", append(k_shape=(2, 2, 7, 4), v_shape=(2, 2, 7, 3))),
    # KVCache.attend
    ("attend_q_list", T, r"\bq\b", attend(q=[[[[0.0]]]])),
    ("attend_q_3d", V, r"\bq\b", attend(q=np.zeros((4, 1, 4), np.float32))),
    ("attend_q_batch", V, r"\bq\b", attend(q=np.zeros((1, 4, 1, 4), np.float32))),
    ("attend_q_head_dim", V, r"\bq\b", attend(q=np.zeros((2, 4, 1, 3), np.float32))),
    ("attend_q_heads", V, r"\bq\b", attend(q=np.zeros((2, 3, 1, 4), np.float32))),
    ("attend_q_dtype", T, r"\bq\b", attend(q=np.zeros((2, 4, 1, 4)))),
    ("attend_out_shape", V, r"\bout\b", attend(out=np.zeros((2, 4, 1, 4), np.float32))),
    ("attend_mask_shape", V, r"\bmask\b", attend(mask=np.ones((2, 4, 1, 5), bool))),
    ("attend_empty_cache", V, r"\bcache is empty\b.*\bappend\b",
     lambda: _cache().attend(np.zeros((2, 4, 1, 4), np.float32))),
    # merge
    ("merge_empty", V, r"\bouts\b", merge([], [])),
    ("merge_count_mismatch", V, r"\blses\b", merge([O, O], [L])),
    ("merge_not_lists", T, r"\bouts\b", merge(O, L)),
    ("merge_generator", T, r"\bouts\b", merge((x for x in [O]), [L])),
    ("merge_out_shapes", V, r"\bouts\[1\]", merge([O, O[:, :2]], [L, L[:, :2]])),
    ("merge_out_dv", V, r"\bouts\[1\]", merge([O, O[..., :3]], [L, L])),
    ("merge_lse_shape", V, r"\blses\[1\]", merge([O, O], [L, L[:, :2]])),
    ("merge_lse_ndim", V, r"\blses\[0\]", merge([O], [L[None]])),
    ("merge_out_list", T, r"\bouts\[1\]", merge([O, O.tolist()], [L, L])),
    ("merge_lse_list", T, r"\blses\[1\]", merge([O, O], [L, L.tolist()])),
    ("merge_first_out_scalar", T, r"\bouts\[0\]", merge([np.float32(1)], [np.float32(0)])),
    # PyTorch's option names: the message gives fastattn's spelling
    ("attn_is_causal", T, r"\bis_causal\b.*causal='top_left'", attn(is_causal=True)),
    ("attn_attn_mask", T, r"\battn_mask\b.*\bmask=", attn(attn_mask=np.ones((5, 6), bool))),
    ("attn_dropout_p", T, r"\bdropout_p\b.*no dropout", attn(dropout_p=0.1)),
    ("attn_enable_gqa", T, r"\benable_gqa\b.*fewer heads", attn(enable_gqa=True)),
    ("weights_is_causal", T, r"\bis_causal\b.*causal='top_left'", weights(is_causal=True)),
    ("varlen_is_causal", T, r"\bis_causal\b.*causal='top_left'", varlen(is_causal=True)),
    ("attend_is_causal", T, r"\bis_causal\b.*causal='top_left'", attend(is_causal=True)),
    ("explain_is_causal", T, r"\bis_causal\b.*causal='top_left'",
     lambda: fastattn.explain(*qkv(), is_causal=True)),
    ("explain_unknown_option", T, r"^explain\(\).*\bbogus\b",
     lambda: fastattn.explain(*qkv(), bogus=1)),
]


# every row above breaks exactly one thing of one of these calls
BASE_CALLS = {"attention": attn(), "weights": weights(), "varlen": varlen(), "attend": attend(),
              "append": append(), "merge": merge([O], [L]), "cache": cache(2, 1, 4, 8)}
