"""Randomized tests (hypothesis): random shapes, layouts, masks, causal modes.

Shapes are kept small (with a few sizes around the 64-row block edges) so
the examples run quickly; every example is checked against the reference
with the tolerance rule of support/compare.py.
"""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastattn
from support import (LAYOUTS, assert_result, check_attention,
                      check_attention_out_only, make_mask, relayout)
from fastattn import reference

# Example counts come from the hypothesis profile loaded in conftest.py
# ("fastattn": 60 per test; "stress": 3000).
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

SEQ = st.one_of(st.integers(1, 9), st.sampled_from([16, 17, 33, 63, 64, 65, 100]))
DIM = st.one_of(st.integers(1, 9), st.sampled_from([16, 17, 32, 64, 80]))
MASK_LAYOUTS = ["contiguous", "fortran", "negative", "strided"]
CAUSAL = st.sampled_from([False, True, "bottom_right", "top_left"])


@st.composite
def problems(draw, nq_strategy=SEQ, nk_strategy=SEQ):
    ndim = draw(st.sampled_from([2, 3, 4]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    hkv = draw(st.integers(1, 3))
    h = hkv * draw(st.integers(1, 3))
    b = draw(st.integers(1, 3))
    nq, nk = draw(nq_strategy), draw(nk_strategy)
    d = draw(DIM)
    dv = draw(st.one_of(st.just(d), DIM))
    lead_q, lead_kv = {2: ((), ()), 3: ((h,), (hkv,)), 4: ((b, h), (b, hkv))}[ndim]

    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q = rng.standard_normal(lead_q + (nq, d)).astype(dtype)
    k = rng.standard_normal(lead_kv + (nk, d)).astype(dtype)
    v = rng.standard_normal(lead_kv + (nk, dv)).astype(dtype)
    q, k, v = (relayout(a, draw(st.sampled_from(LAYOUTS))) for a in (q, k, v))

    kw = {}
    kind = draw(st.sampled_from([None, "bool", "add32", "add64"]))
    if kind is not None:
        full = lead_q + (nq, nk)
        # Any subset of axes set to 1, and any number of leading axes dropped.
        shape = tuple(s if draw(st.booleans()) else 1 for s in full)
        shape = shape[draw(st.integers(0, len(full) - 1)):]
        p_visible = draw(st.sampled_from([0.05, 0.5, 0.9, 1.0]))
        mask = make_mask(rng, kind, shape, p_visible=p_visible)
        kw["mask"] = relayout(mask, draw(st.sampled_from(MASK_LAYOUTS)))
    causal = draw(CAUSAL)
    if causal is not False:
        kw["causal"] = causal
    scale = draw(st.one_of(st.none(), st.floats(-2.0, 2.0)))
    if scale is not None:
        kw["scale"] = scale
    return q, k, v, kw


@SETTINGS
@given(problems(), st.booleans())
def test_random_problems(problem, with_lse):
    q, k, v, kw = problem
    if with_lse:
        check_attention(q, k, v, **kw)
    else:
        check_attention_out_only(q, k, v, **kw)


# Decoding shapes: few query rows and long keys, which the core splits into
# chunks of keys that are merged at the end.
DECODE = problems(nq_strategy=st.integers(1, 5), nk_strategy=st.integers(1000, 2600))


@SETTINGS
@given(DECODE)
def test_random_decode_problems(problem):
    q, k, v, kw = problem
    check_attention(q, k, v, **kw)


@SETTINGS
@given(problems())
def test_random_problems_into_out(problem):
    q, k, v, kw = problem
    out = np.full(q.shape[:-1] + (v.shape[-1],), np.nan, dtype=q.dtype)
    res = fastattn.attention(q, k, v, out=out, **kw)
    assert res is out
    assert_result(q, k, v, out, **kw)


@SETTINGS
@given(nq=SEQ, nk=SEQ, mode=st.sampled_from(["bottom_right", "top_left"]),
       seed=st.integers(0, 2**32 - 1))
def test_causal_equals_explicit_mask(nq, nk, mode, seed):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((2, nq, 8)).astype(np.float32)
    k = rng.standard_normal((2, nk, 8)).astype(np.float32)
    v = rng.standard_normal((2, nk, 8)).astype(np.float32)
    offset = nk - nq if mode == "bottom_right" else 0
    tri = np.arange(nk)[None, :] <= np.arange(nq)[:, None] + offset
    # The reference's two spellings agree exactly.
    np.testing.assert_array_equal(reference.attention(q, k, v, causal=mode),
                                  reference.attention(q, k, v, mask=tri))
    # fastattn's causal path and its mask path both meet the tolerance.
    check_attention(q, k, v, causal=mode)
    check_attention(q, k, v, mask=tri)


@SETTINGS
@given(nq=SEQ, nk=SEQ, seed=st.integers(0, 2**32 - 1),
       p_visible=st.sampled_from([0.0, 0.1, 0.5, 1.0]))
def test_bool_and_additive_masks_agree(nq, nk, seed, p_visible):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((nq, 16)).astype(np.float64)
    k = rng.standard_normal((nk, 16)).astype(np.float64)
    v = rng.standard_normal((nk, 16)).astype(np.float64)
    vis = rng.random((nq, nk)) < p_visible
    ob, lb = fastattn.attention(q, k, v, mask=vis, return_lse=True)
    oa, la = fastattn.attention(q, k, v, mask=np.where(vis, 0.0, -np.inf), return_lse=True)
    np.testing.assert_allclose(oa, ob, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(la, lb, rtol=1e-12, atol=1e-13)
    empty = ~vis.any(axis=1)
    assert np.all(ob[empty] == 0.0) and np.all(lb[empty] == -np.inf)
