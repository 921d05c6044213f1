"""Attention weights (``attention_weights``, ``return_weights``) and merging
partial results (``merge``).

Weights are ``softmax(scale * q @ k^T + bias + mask)`` per row, shape
(..., Nq, Nk) in the input dtype, zeros for rows that see no key; they are
checked against ``reference.attention_weights`` on float64 copies under the
tolerance rule of support/compare.py, and so are their row sums (1, or 0 for rows
that see nothing) and ``weights @ v`` (the output).  ``merge`` of the
results over disjoint key chunks must give the result over all keys, under
the same rule.  ``isa_cases`` runs the core cases on every ISA path at 1
and 2 threads.
"""

import warnings

import numpy as np
import pytest

import fastattn
from support import (ISA_COMBOS, AttentionRefs, IsaCase, _finite_abs_max, assert_matches,
                      assert_matches_half, check_isa_path, check_weights, half_dtypes,
                      make_mask, make_qkv, max_abs_score, path_qkv, random_variant_problem,
                      to32, to64, to64_any, plan_kernel)
from support.matrix import exact_oracle
from fastattn import reference

DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]


def check_sums_and_product(w, q, k, v, out, **kw):
    """Row sums of w and w @ v against the float64 reference under the
    rule (naive = the same quantity from the naive reference weights)."""
    dtype = q.dtype
    mask = kw.pop("mask", None)
    w64 = reference.attention_weights(to64(q), to64(k), mask=to64(mask), **kw)
    with np.errstate(all="ignore"):
        wn = w64 if dtype == np.float64 else reference.attention_weights(q, k, mask=mask, **kw)
    nk = k.shape[-2]
    s_max = max_abs_score(q, k, kw.get("scale"))
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    assert_matches("row sums", f64(w).sum(-1), w64.sum(-1), f64(wn).sum(-1), dtype, nk, s_max)
    if q.ndim >= 3 and k.shape[-3] != q.shape[-3]:
        v = np.repeat(v, q.shape[-3] // k.shape[-3], axis=-3)
    v64 = f64(v)
    with np.errstate(all="ignore"):
        assert_matches("weights @ v", f64(w) @ v64, w64 @ v64, f64(wn) @ v64, dtype, nk,
                       s_max * _finite_abs_max(v))
        # and the output of the same call
        assert_matches("out vs weights @ v", out, w64 @ v64, f64(wn) @ v64, dtype, nk,
                       s_max * _finite_abs_max(v))


OPTIONS = {
    "plain": {},
    "bool_mask": "bool",
    "add_mask": "add32",
    "causal": dict(causal=True),
    "top_left": dict(causal="top_left"),
    "window": dict(window=(3, 1)),
    "alibi": dict(alibi_slopes=[0.5, -0.25, 1.0, 0.0]),
    "softcap": dict(softcap=0.8, scale=2.0),
    "kv_lengths": dict(kv_lengths=[0, 11]),
    "all": dict(causal=True, window=(5, 0), alibi_slopes=[0.1, 0.2, 0.3, 0.4], softcap=3.0,
                kv_lengths=[17, 9]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nq, nk", [(1, 17), (9, 17), (17, 9)])
@pytest.mark.parametrize("opt", list(OPTIONS))
def test_weights_match_reference(rng, opt, nq, nk, dtype):
    q, k, v = make_qkv(rng, (2, 4), nq, nk, 8, hkv=2, dtype=dtype)
    kw = OPTIONS[opt]
    if isinstance(kw, str):
        kw = dict(mask=make_mask(rng, kw, (2, 1, nq, nk), p_visible=0.4))
    if "kv_lengths" in kw:
        kw = dict(kw, kv_lengths=[min(n, nk) for n in kw["kv_lengths"]])
    w = fastattn.attention_weights(q, k, **kw)
    assert w.shape == (2, 4, nq, nk) and w.dtype == dtype
    check_weights(w, q, k, **kw)
    out, lse, w2 = fastattn.attention(q, k, v, return_lse=True, return_weights=True, **kw)
    check_weights(w2, q, k, **kw)
    AttentionRefs(q, k, v, **kw).check(out, lse)
    check_sums_and_product(w2, q, k, v, out, **kw)
    # asking for the weights does not change out and lse
    o3, l3 = fastattn.attention(q, k, v, return_lse=True, **kw)
    np.testing.assert_array_equal(out, o3)
    np.testing.assert_array_equal(lse, l3)
    o4, w4 = fastattn.attention(q, k, v, return_weights=True, **kw)
    np.testing.assert_array_equal(o4, out)
    np.testing.assert_array_equal(w4, w2)


def test_weights_rows_that_see_no_key_are_zero(rng):
    q, k, v = make_qkv(rng, (2, 2), 8, 5, 8)
    w = fastattn.attention_weights(q, k, causal=True)
    assert (w[..., :3, :] == 0).all()
    check_weights(w, q, k, causal=True)
    w = fastattn.attention_weights(q, k, kv_lengths=[0, 5])
    assert (w[0] == 0).all()
    check_weights(w, q, k, kv_lengths=[0, 5])
    w = fastattn.attention_weights(q, k[..., :0, :])
    assert w.shape == (2, 2, 8, 0)
    w = fastattn.attention_weights(q[..., :0, :], k)
    assert w.shape == (2, 2, 0, 5)


def test_weights_2d_3d_and_layouts(rng):
    q, k, _ = make_qkv(rng, (), 6, 11, 8)
    check_weights(fastattn.attention_weights(q, k, window=(2, 2)), q, k, window=(2, 2))
    q, k, _ = make_qkv(rng, (6,), 6, 11, 8, hkv=3)
    check_weights(fastattn.attention_weights(q, k, causal=True), q, k, causal=True)
    q, k, _ = make_qkv(rng, (2, 4), 6, 11, 8)
    qt = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    kr = k[:, :, ::-1]
    check_weights(fastattn.attention_weights(qt, kr, alibi_slopes=[1, 2, 3, 4]), q, kr,
                  alibi_slopes=[1, 2, 3, 4])


def test_weights_nan(rng):
    # NaN in q makes that row's scores NaN, NaN in key j the scores of the
    # rows that see j; v plays no part in the weights.  Rows untouched by
    # NaN must match the reference; in NaN rows the weights of the visible
    # keys are NaN (hidden keys of a NaN row: test below).
    nq, nk = 5, 7
    q, k, v = make_qkv(rng, (1, 2), nq, nk, 8)
    band = np.abs(np.arange(nk)[None, :] - (np.arange(nq)[:, None] + nk - nq)) <= 1
    q[0, 0, 1, 0] = np.nan
    k[0, 1, 3, 2] = np.nan    # seen by queries 0, 1, 2 (|3 - (i + 2)| <= 1)
    v[...] = np.nan
    out, w = fastattn.attention(q, k, v, return_weights=True, mask=band)
    w2 = fastattn.attention_weights(q, k, mask=band)
    np.testing.assert_array_equal(w2, w)
    for h, rows in ((0, [1]), (1, [0, 1, 2])):
        assert np.isnan(w[0, h][rows][band[rows]]).all()
        clean = [i for i in range(nq) if i not in rows]
        check_weights(w[:, h:h + 1, clean], q[:, h:h + 1, clean], k[:, h:h + 1],
                      mask=band[clean])


@pytest.mark.parametrize("kw", [dict(window=(1, 1)), dict(kv_lengths=[4]),
                                dict(causal="top_left"), dict(causal=True),
                                dict(mask=np.arange(70) % 2 == 0)],
                         ids=["window", "kv_lengths", "top_left", "causal", "mask"])
def test_weights_of_a_nan_row_match_the_reference(rng, kw):
    # The reference gives a row with NaN scores NaN weights in every entry
    # (softmax of a NaN row), hidden keys included; the C core must agree
    # (whatever its key blocking).
    q, k, _ = make_qkv(rng, (1, 1), 5, 70, 8)
    q[0, 0, 2, 0] = np.nan
    w = fastattn.attention_weights(q, k, **kw)
    check_weights(w, q, k, **kw)
    assert np.isnan(w[0, 0, 2]).all()


def test_weights_long_rows(rng):
    # one query over many keys: the (separate) weights pass over long rows
    q, k, v = make_qkv(rng, (1, 4), 1, 2100, 32, hkv=1)
    out, lse, w = fastattn.attention(q, k, v, causal=True, return_lse=True,
                                     return_weights=True)
    check_weights(w, q, k, causal=True)
    check_sums_and_product(w, q, k, v, out, causal=True)


# ---------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------

def split_results(q, k, v, sizes, mask=None, **kw):
    """attention over consecutive key chunks of the given sizes."""
    outs, lses, lo = [], [], 0
    for n in sizes:
        m = None if mask is None else mask[..., lo:lo + n]
        o, lse = fastattn.attention(q, k[..., lo:lo + n, :], v[..., lo:lo + n, :], mask=m,
                                    return_lse=True, **kw)
        outs.append(o)
        lses.append(lse)
        lo += n
    assert lo == k.shape[-2]
    return outs, lses


SPLITS = [[40], [20, 20], [0, 13, 27], [5, 5, 30, 0], [1, 1, 1, 37], [39, 1]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", SPLITS, ids=["-".join(map(str, s)) for s in SPLITS])
def test_merge_of_chunks_equals_the_whole(rng, sizes, dtype):
    q, k, v = make_qkv(rng, (2, 4), 9, 40, 8, hkv=2, dv=6, dtype=dtype)
    mask = make_mask(rng, "bool", (2, 4, 9, 40), p_visible=0.7)
    mask[0, 0, 3, :] = False            # a row that sees no key at all
    mask[1, 2, 5, 20:] = False          # rows that see no key in later chunks
    mask[1, 3, :, :20] = False          # a head whose rows see no key in earlier chunks
    outs, lses = split_results(q, k, v, sizes, mask=mask)
    merged, mlse = fastattn.merge(outs, lses, return_lse=True)
    assert merged.dtype == dtype and mlse.dtype == dtype
    refs = AttentionRefs(q, k, v, mask=mask)
    refs.check(merged, mlse)
    np.testing.assert_array_equal(fastattn.merge(outs, lses), merged)
    np.testing.assert_array_equal(fastattn.merge(tuple(outs), tuple(lses)), merged)


def test_merge_with_chunks_where_every_key_is_hidden(rng):
    q, k, v = make_qkv(rng, (1, 2), 6, 30, 8)
    mask = np.ones((1, 2, 6, 30), bool)
    mask[0, 0, :, 10:20] = False        # chunk 1 hides every key from head 0
    mask[0, 1, 2, :] = False
    outs, lses = split_results(q, k, v, [10, 10, 10], mask=mask)
    assert (lses[1][0, 0] == -np.inf).all() and (outs[1][0, 0] == 0).all()
    merged, mlse = fastattn.merge(outs, lses, return_lse=True)
    AttentionRefs(q, k, v, mask=mask).check(merged, mlse)
    assert (merged[0, 1, 2] == 0).all() and mlse[0, 1, 2] == -np.inf


def test_merge_decode_gqa_and_causal_prefix(rng):
    # a long decode row in 4 chunks; causal with Nq = 1 at the end is no mask
    q, k, v = make_qkv(rng, (2, 8), 1, 1300, 32, hkv=2)
    outs, lses = split_results(q, k, v, [512, 512, 0, 276], causal=True)
    AttentionRefs(q, k, v).check(*fastattn.merge(outs, lses, return_lse=True))


@pytest.mark.parametrize("dtype", half_dtypes())
def test_merge_16_bit_outputs(rng, dtype):
    # Partial outputs are rounded to the 16-bit dtype before the merge, so
    # the naive computation to compare with is the same algorithm: the
    # naive reference on each chunk, merged (FlashAttention's rule at that
    # precision, support/compare.py).
    q, k, v = make_qkv(rng, (2, 2), 5, 30, 8, dtype=dtype)
    sizes = [10, 0, 20]
    outs, lses = split_results(q, k, v, sizes)
    merged, mlse = fastattn.merge(outs, lses, return_lse=True)
    assert merged.dtype == dtype and mlse.dtype == np.float32
    # the merge itself is in float64, rounded once
    wide = fastattn.merge([o.astype(np.float64) for o in outs], lses)
    np.testing.assert_array_equal(merged, wide.astype(dtype))
    parts16, parts32, lo = [], [], 0
    for n in sizes:
        kc, vc = k[..., lo:lo + n, :], v[..., lo:lo + n, :]
        parts16.append(reference.attention(q, kc, vc, return_lse=True))
        parts32.append(reference.attention(to32(q), to32(kc), to32(vc), return_lse=True))
        lo += n
    naive, naive_lse = fastattn.merge(*zip(*parts16), return_lse=True)
    naive32 = fastattn.merge(*zip(*parts32))
    o64, l64 = reference.attention(to64_any(q), to64_any(k), to64_any(v), return_lse=True)
    s_max = max_abs_score(to64_any(q), to64_any(k))
    assert_matches_half("merged", merged, o64, naive, naive32, 30,
                        s_max * _finite_abs_max(to64_any(v)))
    assert_matches("merged lse", mlse, l64, naive_lse, np.float32, 30, s_max)


def test_merge_single_part_is_identity(rng):
    for dtype in (np.float32, np.float64, np.float16):
        q, k, v = make_qkv(rng, (2, 2), 6, 8, 8, dtype=dtype)
        q[1, 1, 0, 0] = np.nan
        o, lse = fastattn.attention(q, k, v, causal=True, return_lse=True,
                                    kv_lengths=[0, 8])
        m, ml = fastattn.merge([o], [lse], return_lse=True)
        assert m.dtype == o.dtype and ml.dtype == lse.dtype
        np.testing.assert_array_equal(m, o)
        np.testing.assert_array_equal(ml, lse)


def test_merge_nan_propagates(rng):
    q, k, v = make_qkv(rng, (1, 2), 4, 20, 8)
    v[0, 0, 3, 1] = np.nan       # chunk 0, head 0, column 1
    q[0, 1, 2, 0] = np.nan       # head 1, row 2: NaN scores in every chunk
    outs, lses = split_results(q, k, v, [10, 10])
    merged, mlse = fastattn.merge(outs, lses, return_lse=True)
    AttentionRefs(q, k, v).check(merged, mlse)
    assert np.isnan(merged[0, 0, :, 1]).all() and np.isfinite(mlse[0, 0]).all()
    assert np.isnan(merged[0, 1, 2]).all() and np.isnan(mlse[0, 1, 2])
    # a NaN lse alone poisons its row
    lses[1] = lses[1].copy()
    lses[1][0, 0, 0] = np.nan
    merged, mlse = fastattn.merge(outs, lses, return_lse=True)
    assert np.isnan(merged[0, 0, 0]).all() and np.isnan(mlse[0, 0, 0])


def test_merge_ignores_parts_of_zero_weight(rng):
    # a part whose lse is -inf saw no key: whatever its out holds is ignored
    o = rng.standard_normal((3, 4)).astype(np.float32)
    lse = rng.standard_normal(3).astype(np.float32)
    junk = np.full((3, 4), np.inf, np.float32)
    junk[1] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # and no RuntimeWarning about 0 * inf
        m, ml = fastattn.merge([o, junk], [lse, np.full(3, -np.inf, np.float32)],
                               return_lse=True)
    np.testing.assert_array_equal(m, o)
    np.testing.assert_array_equal(ml, lse)
    # every part empty: zeros, -inf
    m, ml = fastattn.merge([junk, junk], [np.full(3, -np.inf, np.float32)] * 2,
                           return_lse=True)
    assert (m == 0).all() and (ml == -np.inf).all()


def test_merge_weighs_by_lse():
    # two parts with lse log(1) and log(3): weights 1/4 and 3/4
    o1 = np.array([[1.0, 0.0]])
    o2 = np.array([[0.0, 1.0]])
    m, ml = fastattn.merge([o1, o2], [np.array([0.0]), np.array([np.log(3.0)])],
                           return_lse=True)
    np.testing.assert_allclose(m, [[0.25, 0.75]], rtol=1e-15)
    np.testing.assert_allclose(ml, [np.log(4.0)], rtol=1e-15)


# ---------------------------------------------------------------------------
# every ISA path, 1 and 2 threads
# ---------------------------------------------------------------------------

def weights_case(name, q, k, v, oracle=exact_oracle, **kw):
    def run():
        return fastattn.attention(q, k, v, return_lse=True, return_weights=True, **kw)

    def check(res):
        out, lse, w = res
        check_weights(w, q, k, **kw)
        AttentionRefs(q, k, v, fn=oracle(q.dtype), **kw).check(out, lse)

    # the plan of the output pass (the weights pass never rounds P)
    return IsaCase(name, run, check, plan=lambda: plan_kernel(q, k, v, **kw))


def merge_case(name, q, k, v, sizes, oracle=exact_oracle, **kw):
    def run():
        outs, lses = split_results(q, k, v, sizes, **kw)
        return fastattn.merge(outs, lses, return_lse=True)

    return IsaCase(name, run,
                   lambda res: AttentionRefs(q, k, v, fn=oracle(q.dtype), **kw).check(*res))


def isa_cases(oracle=exact_oracle):
    rng = np.random.default_rng(707)
    cases = []
    for path in ("decode", "decode_split", "tile", "tile_split"):
        q, k, v = path_qkv(rng, path)
        b, h = q.shape[:2]
        cases.append(weights_case(f"{path}-plain", q, k, v))
        cases.append(weights_case(f"{path}-all", q, k, v, causal=True, window=(300, 0),
                                  alibi_slopes=rng.uniform(0, 0.1, (b, h)), softcap=2.0,
                                  kv_lengths=np.full(b, k.shape[2] - 9)))
        cases.append(merge_case(f"{path}-merge", q, k, v, [k.shape[2] // 3, 0,
                                                            k.shape[2] - k.shape[2] // 3]))
    q, k, v = make_qkv(rng, (2, 2), 70, 100, 16, dtype=np.float64)
    mask = make_mask(rng, "add64", (2, 1, 70, 100), p_visible=0.5)
    cases.append(weights_case("f64_mask", q, k, v, mask=mask))
    # random problems with any variants (the weights pass has one kernel)
    rng = np.random.default_rng(1701)
    for i in range(20):
        q, k, v, kw = random_variant_problem(rng)
        cases.append(weights_case(f"random-{i}", q, k, v, oracle=oracle, **kw))
    return cases


@pytest.mark.parametrize("isa, threads", ISA_COMBOS)
def test_every_isa_path(isa_runs, isa, threads):
    check_isa_path(isa_runs, "test_weights_merge", isa, threads)
