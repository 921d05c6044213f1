"""ALiBi (``alibi_slopes``) and soft capping (``softcap``), and the
kernel's vector tanh behind the soft cap.

Contract (fastattn.attention): ALiBi adds ``-slope * |i + Nk_b - Nq - j|``
to each scaled score, slopes of shape (H,) or (B, H); the soft cap maps a
scaled score s to ``softcap * tanh(s / softcap)`` before the ALiBi bias
and the masks.  Results are checked against the float64 reference under
the tolerance rule of support/compare.py.  ``isa_cases`` runs the core cases (and the
tanh) on every ISA path at 1 and 2 threads.
"""

import numpy as np
import pytest

import fastattn
from support import (ISA_COMBOS, IsaCase, assert_result, attention_case, check_attention,
                      check_isa_path, make_mask, make_qkv, path_qkv,
                      random_variant_cases)
from support.matrix import exact_oracle
from fastattn import _core

# ---------------------------------------------------------------------------
# ALiBi
# ---------------------------------------------------------------------------


def test_zero_slopes_are_plain_attention(rng):
    for lead, hkv, nq, nk in [((2, 4), 2, 9, 30), ((2, 4), 4, 1, 40), ((3,), 1, 5, 5)]:
        q, k, v = make_qkv(rng, lead, nq, nk, 16, hkv=hkv)
        h = lead[-1]
        for causal in (False, True):
            out, lse = fastattn.attention(q, k, v, alibi_slopes=np.zeros(h), causal=causal,
                                          return_lse=True)
            assert_result(q, k, v, out, lse, causal=causal)   # reference without ALiBi


@pytest.mark.parametrize("slopes", ["geometric", "negative", "large", "huge", "mixed"])
@pytest.mark.parametrize("nq, nk", [(7, 19), (19, 7), (12, 12)])
def test_alibi_matches_reference(rng, slopes, nq, nk):
    h = 4
    s = {"geometric": 2.0 ** -np.arange(1, h + 1),     # the ALiBi paper's slopes
         "negative": -rng.uniform(0.05, 0.5, h),        # favours far keys
         "large": np.array([3.0, 10.0, 30.0, 100.0]),   # only the nearest key matters
         "huge": np.full(h, 1e4),
         "mixed": np.array([0.0, -1.0, 0.5, 2.0])}[slopes]
    q, k, v = make_qkv(rng, (2, h), nq, nk, 8, hkv=2)
    check_attention(q, k, v, alibi_slopes=s)
    check_attention(q, k, v, alibi_slopes=s, causal=True)
    check_attention(q, k, v, alibi_slopes=s, window=(3, 1))


def test_per_batch_slopes(rng):
    q, k, v = make_qkv(rng, (3, 4), 10, 21, 8)
    s_bh = rng.uniform(-0.5, 1.0, (3, 4))
    out, lse = check_attention(q, k, v, alibi_slopes=s_bh)
    # each batch as its own call with that batch's (H,) slopes
    for b in range(3):
        ob, lb = fastattn.attention(q[b:b + 1], k[b:b + 1], v[b:b + 1],
                                    alibi_slopes=s_bh[b], return_lse=True)
        np.testing.assert_array_equal(ob[0], out[b])
        np.testing.assert_array_equal(lb[0], lse[b])
    # (B, H) slopes with equal rows are the (H,) slopes
    s_h = rng.uniform(0, 1, 4)
    o1 = fastattn.attention(q, k, v, alibi_slopes=s_h, causal=True)
    o2 = fastattn.attention(q, k, v, alibi_slopes=np.tile(s_h, (3, 1)), causal=True)
    np.testing.assert_array_equal(o1, o2)


def test_alibi_slope_dtypes_and_containers(rng):
    q, k, v = make_qkv(rng, (2, 3), 6, 9, 8)
    want = fastattn.attention(q, k, v, alibi_slopes=np.array([0.5, 1.0, 2.0]))
    assert_result(q, k, v, want, alibi_slopes=np.array([0.5, 1.0, 2.0]))
    for s in ([0.5, 1.0, 2.0], (0.5, 1, 2), np.array([0.5, 1.0, 2.0], np.float32),
              np.array([[0.5, 1.0, 2.0]] * 2, np.float16)):
        np.testing.assert_array_equal(fastattn.attention(q, k, v, alibi_slopes=s), want)
    # integer slopes
    out = fastattn.attention(q, k, v, alibi_slopes=np.array([0, 1, 2]))
    assert_result(q, k, v, out, alibi_slopes=np.array([0, 1, 2]))


def test_alibi_2d_3d_float64(rng):
    q, k, v = make_qkv(rng, (), 9, 14, 8, dtype=np.float64)
    check_attention(q, k, v, alibi_slopes=[0.7])
    q, k, v = make_qkv(rng, (4,), 9, 14, 8, hkv=2, dtype=np.float64)
    check_attention(q, k, v, alibi_slopes=[0.1, -0.2, 0.3, 5.0], causal=True)
    q, k, v = make_qkv(rng, (2, 4), 9, 14, 8, hkv=1, dtype=np.float64)
    check_attention(q, k, v, alibi_slopes=rng.uniform(-1, 1, (2, 4)), window=(2, 2))


def test_large_slopes_pick_the_diagonal_key(rng):
    # slope 1e4: a key one step further loses e^-10000, so every query with
    # a diagonal key attends to it alone
    q, k, v = make_qkv(rng, (1, 2), 6, 10, 8, dv=4)
    out = fastattn.attention(q, k, v, alibi_slopes=[1e4, 1e4])
    assert_result(q, k, v, out, alibi_slopes=[1e4, 1e4])
    np.testing.assert_allclose(out[0], v[0, :, 4:10], rtol=1e-6, atol=1e-6)


def test_alibi_with_masks(rng):
    q, k, v = make_qkv(rng, (2, 2), 11, 17, 8)
    for kind in ("bool", "add32", "add64"):
        mask = make_mask(rng, kind, (2, 2, 11, 17), p_visible=0.4)
        check_attention(q, k, v, mask=mask, alibi_slopes=[0.3, 1.5])


# ---------------------------------------------------------------------------
# soft cap
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("softcap", [1e-3, 0.5, 2.0, 30.0, 1e6])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_softcap_matches_reference(rng, softcap, dtype):
    q, k, v = make_qkv(rng, (2, 4), 13, 29, 16, hkv=2, dtype=dtype)
    q *= 3
    check_attention(q, k, v, softcap=softcap)
    check_attention(q, k, v, softcap=softcap, causal=True)
    check_attention(q, k, v, softcap=softcap, window=(4, 0), alibi_slopes=[0.1, 0.2, 0.4, 0.8])


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the reference's s / c
@pytest.mark.parametrize("dtype, softcap", [(np.float32, 1e-30), (np.float32, 1e-40),
                                           (np.float64, 1e-300), (np.float64, 5e-324)],
                         ids=["f32-1e-30", "f32-subnormal", "f64-1e-300", "f64-subnormal"])
def test_extremely_small_softcap(rng, dtype, softcap):
    # s / softcap overflows to +-inf, tanh saturates: every capped score is
    # +-softcap, i.e. 0 to within the dtype: uniform attention
    q, k, v = make_qkv(rng, (2, 2), 5, 12, 8, dtype=dtype)
    out, lse = check_attention(q, k, v, softcap=softcap)
    mean = v.astype(np.float64).mean(axis=-2, keepdims=True)
    np.testing.assert_allclose(out, np.broadcast_to(mean, out.shape), atol=1e-6)


def test_softcap_bounds_the_scores(rng):
    # every capped score lies in [-c, c], so lse in [log(n) - c, log(n) + c]
    q, k, v = make_qkv(rng, (2, 2), 8, 50, 16)
    q *= 30
    for c in (0.1, 1.0, 5.0):
        out, lse = check_attention(q, k, v, softcap=c)
        assert (lse >= np.log(50) - c - 1e-5).all() and (lse <= np.log(50) + c + 1e-5).all()


def test_softcap_saturation_with_huge_scores(rng):
    # scores of about +-1e30 (q, k near 1e15): tanh saturates to +-1, so
    # every capped score is exactly +c or -c, by the sign of the raw score
    q, k, v = make_qkv(rng, (1, 2), 5, 40, 8)
    q *= 1e15
    k *= 1e15
    for c in (1.0, 20.0):
        out, lse = check_attention(q, k, v, softcap=c)
        assert np.isfinite(out).all() and np.isfinite(lse).all()
        s = np.einsum("hqd,hkd->hqk", q[0].astype(np.float64), k[0].astype(np.float64))
        n_pos, n_neg = (s > 0).sum(-1), (s < 0).sum(-1)
        np.testing.assert_allclose(lse[0], np.log(n_pos * np.exp(c) + n_neg * np.exp(-c)),
                                   rtol=1e-6)


def test_tiny_softcap_is_nearly_uniform(rng):
    q, k, v = make_qkv(rng, (2, 2), 7, 33, 8)
    out, lse = check_attention(q, k, v, softcap=1e-6)
    # all scores within 1e-6 of 0: the mean of the values
    mean = v.astype(np.float64).mean(axis=-2, keepdims=True)
    np.testing.assert_allclose(out, np.broadcast_to(mean, out.shape), atol=1e-5)
    np.testing.assert_allclose(lse, np.log(33), atol=1e-5)


@pytest.mark.parametrize("kind", ["bool", "add32", "add64"])
def test_softcap_with_minus_inf_masks(rng, kind):
    # the mask applies after the cap: -inf (or False) still hides a key
    # completely (a capped score is finite, the mask must not be capped)
    q, k, v = make_qkv(rng, (2, 2), 9, 20, 8)
    mask = make_mask(rng, kind, (2, 2, 9, 20), p_visible=0.3)
    # some rows fully hidden
    mask[0, 1, 2] = False if kind == "bool" else -np.inf
    out, lse = check_attention(q, k, v, mask=mask, softcap=0.5)
    assert (out[0, 1, 2] == 0).all() and lse[0, 1, 2] == -np.inf
    if kind != "bool":
        # finite additive entries are added after the cap (unbounded)
        big = np.where(np.isneginf(mask), mask, mask + 50).astype(mask.dtype)
        check_attention(q, k, v, mask=big, softcap=0.5)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_softcap_infinite_scores(rng):
    # an infinite score is capped to +-c (tanh(inf) = 1); inf * 0 in q.k
    # stays NaN
    q, k, v = make_qkv(rng, (1, 1), 4, 6, 8)
    q[...] = np.abs(q) + 0.1
    k[0, 0, 2, 3] = np.inf     # score +inf -> +c for every query
    k[0, 0, 4, 5] = -np.inf    # score -inf -> -c
    out, lse = check_attention(q, k, v, softcap=2.0)
    assert np.isfinite(out).all()
    q[0, 0, 1, 3] = 0.0        # inf * 0 = NaN: row 1 is NaN
    out, lse = check_attention(q, k, v, softcap=2.0)
    assert np.isnan(out[0, 0, 1]).all() and np.isfinite(np.delete(out[0, 0], 1, 0)).all()


def test_softcap_nan_propagates(rng):
    q, k, v = make_qkv(rng, (2, 2), 6, 9, 8)
    q[1, 0, 3, 2] = np.nan
    v[0, 1, 4, 0] = np.nan
    out, lse = check_attention(q, k, v, softcap=1.5)
    assert np.isnan(out[1, 0, 3]).all() and np.isnan(lse[1, 0, 3])
    assert np.isnan(out[0, 1, :, 0]).all() and np.isfinite(out[0, 1, :, 1:]).all()


def test_softcap_argument_forms(rng):
    q, k, v = make_qkv(rng, (2, 2), 6, 9, 8)
    want = fastattn.attention(q, k, v, softcap=3.0)
    for c in (3, np.float32(3.0), np.int64(3), np.float64(3.0)):
        np.testing.assert_array_equal(fastattn.attention(q, k, v, softcap=c), want)


# ---------------------------------------------------------------------------
# the kernel's tanh
# ---------------------------------------------------------------------------

TANH_ULP = {np.float32: 4.0, np.float64: 8.0}   # measured: about 3 and 6


def tanh_points(dtype):
    lin = np.linspace(-30, 30, 60001)
    geo = np.geomspace(1e-30, 30, 4000)
    return np.concatenate([lin, geo, -geo]).astype(dtype)


def tanh_ulp_error(x, y):
    """max |y - tanh(x)| in ulps of the dtype, against long double tanh."""
    ref = np.tanh(x.astype(np.longdouble))
    ulp = np.spacing(np.abs(ref.astype(x.dtype))).astype(np.longdouble)
    return float(np.max(np.abs(y.astype(np.longdouble) - ref) / ulp))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_tanh_accuracy(dtype):
    x = tanh_points(dtype)
    y = _core.tanh(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert tanh_ulp_error(x, y) <= TANH_ULP[dtype]
    # odd, bounded by 1
    np.testing.assert_array_equal(_core.tanh(-x), -y)
    assert (np.abs(y) <= 1).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_tanh_special_values(dtype):
    tiny = np.finfo(dtype).smallest_subnormal
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 100.0, -100.0, 1e30, tiny, -tiny,
                  np.finfo(dtype).max, -np.finfo(dtype).max], dtype)
    y = _core.tanh(x)
    np.testing.assert_array_equal(y[:4], [0.0, -0.0, 1.0, -1.0])
    assert np.signbit(y[1]) and not np.signbit(y[0])
    assert np.isnan(y[4])
    np.testing.assert_array_equal(y[5:8], [1.0, -1.0, 1.0])
    np.testing.assert_array_equal(y[8:10], [tiny, -tiny])   # tanh(x) = x for tiny x
    np.testing.assert_array_equal(y[10:], [1.0, -1.0])
    # every length up to a few vectors exercises the vector tails
    assert _core.tanh(np.zeros(0, dtype)).shape == (0,)
    for n in range(1, 40):
        xs = np.linspace(-3, 3, n).astype(dtype)
        assert tanh_ulp_error(xs, _core.tanh(xs)) <= TANH_ULP[dtype], n


def test_tanh_rejects_other_dtypes():
    with pytest.raises(TypeError, match=r"\bx\b"):
        _core.tanh(np.zeros(3, np.int32))
    with pytest.raises(TypeError, match=r"\bx\b"):
        _core.tanh(np.zeros(3, np.float16))


# ---------------------------------------------------------------------------
# every ISA path, 1 and 2 threads
# ---------------------------------------------------------------------------

def _tanh_case(dtype):
    x = tanh_points(dtype)

    def check(y):
        assert y.dtype == dtype
        e = tanh_ulp_error(x, y)
        assert e <= TANH_ULP[dtype], f"tanh error {e:.3g} ulp > {TANH_ULP[dtype]}"
        assert (np.abs(y) <= 1).all()

    return IsaCase(f"tanh_{np.dtype(dtype).name}", lambda: _core.tanh(x), check)


def isa_cases(oracle=exact_oracle):
    rng = np.random.default_rng(202)
    cases = [_tanh_case(np.float32), _tanh_case(np.float64)]
    for path in ("decode", "decode_split", "tile", "tile_split"):
        q, k, v = path_qkv(rng, path)
        b, h = q.shape[:2]
        s_h = 2.0 ** -np.arange(1, h + 1)
        s_bh = rng.uniform(-0.2, 1.0, (b, h))
        cases += [
            attention_case(f"{path}-alibi", q, k, v, alibi_slopes=s_h),
            attention_case(f"{path}-alibi_bh_causal", q, k, v, alibi_slopes=s_bh, causal=True),
            attention_case(f"{path}-softcap", q * 4, k, v, softcap=3.0),
            attention_case(f"{path}-softcap_causal_window_alibi", q, k, v, softcap=1.0,
                           causal=True, window=(200, 0), alibi_slopes=s_h),
        ]
    q, k, v = make_qkv(rng, (2, 2), 100, 90, 32, dtype=np.float64)
    cases.append(attention_case("f64_alibi_softcap", q, k, v, softcap=5.0,
                                alibi_slopes=[0.25, -0.125]))
    q, k, v = make_qkv(rng, (1, 4), 1, 1200, 16, hkv=1, dtype=np.float64)
    cases.append(attention_case("f64_decode_split_alibi", q, k, v, alibi_slopes=[0.01] * 4,
                                softcap=2.0))
    mask = make_mask(rng, "add32", (1, 1, 1, 1200), p_visible=0.5)
    q, k, v = make_qkv(rng, (1, 4), 1, 1200, 16, hkv=1)
    cases.append(attention_case("decode_split_softcap_mask", q, k, v, softcap=0.3, mask=mask))
    # random problems with ALiBi / a soft cap and any other variants
    for seed, variant in ((1201, "alibi"), (1202, "softcap")):
        cases += random_variant_cases(seed, 15, prefix=f"random-{variant}-", force=(variant,),
                                      oracle=oracle)
    return cases


@pytest.mark.parametrize("isa, threads", ISA_COMBOS)
def test_every_isa_path(isa_runs, isa, threads):
    check_isa_path(isa_runs, "test_alibi_softcap", isa, threads)
