"""float16 and bfloat16 inputs.

Contract: stored 16-bit, computed in float32, output rounded to the input
dtype; lse is float32.  The reference computes 16-bit inputs in float32
and rounds the result, so the check is FlashAttention's rule at that
precision (support/compare.py, ``assert_matches_half``): error against the float64
reference <= 2 * the naive 16-bit computation's error + a floor of a few
float32 rounding errors.  bfloat16 needs the optional ml_dtypes package;
its tests are skipped, with that reason, without it.  ``isa_cases`` runs
the core cases on every ISA path at 1 and 2 threads.
"""

import numpy as np
import pytest

import fastattn
from support import (ISA_COMBOS, AttentionRefs, attention_case, check_any, check_isa_path,
                      check_weights, half_dtypes, make_mask, make_qkv,
                      random_variant_cases, relayout)
from support.matrix import exact_oracle

DTYPES = half_dtypes()


def qkv(rng, lead, nq, nk, d, dtype, **kw):
    return make_qkv(rng, lead, nq, nk, d, dtype=dtype, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
def test_plain_causal_gqa(rng, dtype):
    q, k, v = qkv(rng, (2, 4), 19, 37, 16, dtype, hkv=2, dv=12)
    for kw in ({}, dict(causal=True), dict(causal="top_left"), dict(scale=0.9)):
        out, lse = check_any(q, k, v, **kw)
        assert out.dtype == dtype and lse.dtype == np.float32
    q, k, v = qkv(rng, (), 5, 9, 8, dtype)
    check_any(q, k, v)
    q, k, v = qkv(rng, (6,), 5, 9, 8, dtype, hkv=1)
    check_any(q, k, v, causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead, hkv, nq, nk", [((2, 4), 4, 1, 300),    # MHA decode
                                              ((2, 4), 1, 1, 90),     # MQA, 4 rows
                                              ((1, 4), 2, 2, 2100),   # few rows, split-KV
                                              ((1, 2), 2, 1, 2048)],
                         ids=["mha_nq1", "mqa_nq1", "gqa_nq2_split", "nq1_2048"])
def test_decode_shapes(rng, dtype, lead, hkv, nq, nk):
    q, k, v = qkv(rng, lead, nq, nk, 32, dtype, hkv=hkv)
    check_any(q, k, v)
    check_any(q, k, v, causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["bool", "add32", "add16"])
def test_masks(rng, dtype, kind):
    q, k, v = qkv(rng, (2, 2), 11, 23, 8, dtype)
    mask = make_mask(rng, "bool" if kind == "bool" else "add32", (2, 1, 11, 23), p_visible=0.5)
    if kind == "add16":
        mask = mask.astype(np.float16)
    check_any(q, k, v, mask=mask)
    check_any(q, k, v, mask=mask, causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_variants(rng, dtype):
    q, k, v = qkv(rng, (2, 4), 13, 29, 16, dtype, hkv=2)
    check_any(q, k, v, window=(3, 1))
    check_any(q, k, v, window=(5, 0), causal=True)
    check_any(q, k, v, alibi_slopes=[0.5, 0.25, 0.125, -0.1])
    check_any(q, k, v, alibi_slopes=rng.uniform(0, 1, (2, 4)), causal=True)
    check_any(q, k, v, softcap=1.0)
    check_any(q, k, v, kv_lengths=[0, 17], causal=True)
    check_any(q, k, v, kv_lengths=[29, 3], window=(2, 2), softcap=4.0, alibi_slopes=[1, 1, 1, 1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["fortran", "transposed", "negative", "strided", "unaligned",
                                    "readonly", "broadcast_lead"])
def test_layouts(rng, dtype, layout):
    q, k, v = qkv(rng, (2, 4), 9, 21, 16, dtype, hkv=2)
    q, k, v = (relayout(a, layout) for a in (q, k, v))
    check_any(q, k, v)
    check_any(q, k, v, causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_out(rng, dtype):
    q, k, v = qkv(rng, (2, 4), 9, 21, 16, dtype, dv=8)
    refs = AttentionRefs(q, k, v, causal=True)
    out = np.full((2, 4, 9, 8), np.nan, dtype)
    got, lse = fastattn.attention(q, k, v, causal=True, out=out, return_lse=True)
    assert got is out
    refs.check(out, lse)
    # a non-contiguous out
    big = np.full((2, 4, 9, 16), np.nan, dtype)
    got = fastattn.attention(q, k, v, causal=True, out=big[..., ::2])
    refs.check(big[..., ::2])
    assert np.isnan(big[..., 1::2].astype(np.float32)).all()
    # the float32 result of the same inputs is no valid out
    with pytest.raises(ValueError, match=r"\bout\b"):
        fastattn.attention(q, k, v, out=np.zeros((2, 4, 9, 8), np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_that_see_no_key(rng, dtype):
    q, k, v = qkv(rng, (2, 2), 12, 5, 8, dtype)
    out, lse = check_any(q, k, v, causal=True)
    assert (out[:, :, :7].astype(np.float32) == 0).all() and (lse[:, :, :7] == -np.inf).all()
    out, lse = check_any(q, k[..., :0, :], v[..., :0, :])
    assert (out.astype(np.float32) == 0).all() and (lse == -np.inf).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_propagates(rng, dtype):
    for lead, hkv, nq in [((2, 4), 4, 1), ((2, 4), 2, 40)]:     # few-row and tile kernels
        q, k, v = qkv(rng, lead, nq, 70, 16, dtype, hkv=hkv)
        q[0, 1, 0, 3] = np.nan
        k[1, 0, 5, 0] = np.nan
        v[0, hkv - 1, 9, 2] = np.nan
        out, lse = check_any(q, k, v)
        o = out.astype(np.float32)
        assert np.isnan(o[0, 1, 0]).all() and np.isnan(lse[0, 1, 0])
        assert np.isnan(o[1, :4 // hkv]).all()          # the query heads of kv head 0
        assert np.isnan(o[0, -1, :, 2]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_weights(rng, dtype):
    q, k, v = qkv(rng, (2, 4), 7, 30, 16, dtype, hkv=2)
    for kw in ({}, dict(causal=True, window=(4, 0)), dict(softcap=2.0, kv_lengths=[0, 20])):
        w = fastattn.attention_weights(q, k, **kw)
        assert w.dtype == dtype
        check_weights(w, q, k, **kw)
        out, lse, w2 = fastattn.attention(q, k, v, return_lse=True, return_weights=True, **kw)
        check_weights(w2, q, k, **kw)
        AttentionRefs(q, k, v, **kw).check(out, lse)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_and_tiny_values(rng, dtype):
    # values near the top of the dtype's range and below its normal range
    big = 6e4 if dtype == np.float16 else 1e38
    tiny = 1e-6 if dtype == np.float16 else 1e-39
    q, k, v = qkv(rng, (1, 2), 6, 10, 8, dtype)
    check_any(q, k, (v.astype(np.float32) * (big / 4)).astype(dtype))
    tiny_v = (v.astype(np.float32) * tiny).astype(dtype)
    if dtype == np.float16:
        check_any(q, k, tiny_v)  # float16 subnormals widen to normal floats: kept
    else:
        # bfloat16 subnormals count as zero inside the kernels (flushed)
        assert not np.any(fastattn.attention(q, k, tiny_v).astype(np.float32))


# ---------------------------------------------------------------------------
# every ISA path, 1 and 2 threads
# ---------------------------------------------------------------------------

SHAPES = {
    "mha_nq1": ((2, 4), 4, 1, 150, 32, 32),          # few-row kernel, one row per head
    "decode": ((2, 4), 2, 2, 150, 32, 24),           # few-row kernel, 4 rows per kv head
    "decode_split": ((1, 4), 1, 1, 2100, 32, 32),    # few-row kernel + split-KV
    "tile": ((2, 4), 2, 70, 130, 16, 16),            # tile kernel
    "tile_split": ((1, 2), 2, 40, 1100, 16, 8),      # tile kernel + split-KV
}


def isa_cases(oracle=exact_oracle):
    dtypes = [np.dtype(np.float16)]
    try:
        import ml_dtypes
        dtypes.append(np.dtype(ml_dtypes.bfloat16))
    except ImportError:     # test_half's bf16 tests report the skip
        pass
    rng = np.random.default_rng(606)
    cases = []
    for dt in dtypes:
        for name, (lead, hkv, nq, nk, d, dv) in SHAPES.items():
            q, k, v = make_qkv(rng, lead, nq, nk, d, dv=dv, hkv=hkv, dtype=dt)
            cases.append(attention_case(f"{dt.name}-{name}", q, k, v, oracle=oracle))
            cases.append(attention_case(f"{dt.name}-{name}-causal", q, k, v, causal=True,
                                        oracle=oracle))
            h = lead[1]
            cases.append(attention_case(f"{dt.name}-{name}-variants", q, k, v, oracle=oracle,
                                        window=(100, 0), causal=True, softcap=3.0,
                                        alibi_slopes=np.linspace(0.01, 0.1, h),
                                        kv_lengths=np.full(lead[0], nk - 7)))
        q, k, v = make_qkv(rng, (2, 4), 70, 90, 16, hkv=2, dtype=dt)
        q, k, v = relayout(q, "transposed"), relayout(k, "negative"), relayout(v, "strided")
        mask = make_mask(rng, "add32", (2, 1, 70, 90), p_visible=0.7)
        cases.append(attention_case(f"{dt.name}-strided-mask", q, k, v, mask=mask,
                                    oracle=oracle))
    # random 16-bit problems with any variants
    cases += random_variant_cases(1601, 30, prefix="random-", dtypes=dtypes, oracle=oracle)
    return cases


@pytest.mark.parametrize("isa, threads", ISA_COMBOS)
def test_every_isa_path(isa_runs, isa, threads):
    check_isa_path(isa_runs, "test_half", isa, threads)
