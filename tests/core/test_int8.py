"""int8 keys and values (``attention(..., k_scale=, v_scale=)`` and
``KVCache(dtype="int8")``).

Two references:

* the float64 attention of the *dequantized* inputs (``k * k_scale``,
  ``v * v_scale``), the exact math the kernels do, under the 2x rule
  against the naive float32 computation of the same dequantized inputs;
* the float64 attention of the unquantized inputs, under the bound of the
  quantization itself (docs/numerics.md): with every score off by at most
  ``delta = scale * sum_c |q_c| * k_scale_c / 2`` and every value by at most
  ``v_scale_j / 2``, the output moves by at most
  ``(exp(2 delta) - 1) * max|v| + max_j v_scale_j / 2``.

``isa_cases`` runs the decode (few-row) and prefill (tile) int8 kernels on
every ISA path at 1 and 2 threads.
"""

import numpy as np
import pytest

import fastattn
from support import ISA_COMBOS, AttentionRefs, IsaCase, check_isa_path, randn


def quantize(k, v):
    """int8 k and v with per-channel key scales (k's leading dims, D) and
    per-token value scales (v's shape without its last dim)."""
    ks = (np.abs(k).max(axis=-2) / 127).astype(np.float32)
    vs = (np.abs(v).max(axis=-1) / 127).astype(np.float32)
    ks = np.maximum(ks, np.finfo(np.float32).tiny)
    vs = np.maximum(vs, np.finfo(np.float32).tiny)
    kq = np.clip(np.rint(k / ks[..., None, :]), -127, 127).astype(np.int8)
    vq = np.clip(np.rint(v / vs[..., None]), -127, 127).astype(np.int8)
    return kq, ks, vq, vs


def dequantize(kq, ks, vq, vs):
    """The float32 keys and values the int8 inputs stand for."""
    ks = np.broadcast_to(ks, kq.shape[:-2] + ks.shape[-1:])
    return kq * ks[..., None, :], vq * vs[..., None]


def quant_bound(q, kq, ks, vs, v, scale=None):
    """The bound of the module docstring on |out - unquantized ref64|."""
    d = q.shape[-1]
    scale = 1 / np.sqrt(d) if scale is None else scale
    h, hkv = q.shape[-3], kq.shape[-3]
    ksb = np.repeat(np.broadcast_to(ks, kq.shape[:-2] + ks.shape[-1:]), h // hkv, axis=-2)
    delta = scale * np.max(np.abs(q.astype(np.float64)) @ (ksb[..., None] / 2.0))
    return np.expm1(2 * delta) * np.abs(v).max() + vs.max() / 2 + 1e-5


def problem(rng, b, h, hkv, nq, nk, d, dv=None):
    dv = d if dv is None else dv
    q = randn(rng, (b, h, nq, d), np.float32)
    k = randn(rng, (b, hkv, nk, d), np.float32)
    v = randn(rng, (b, hkv, nk, dv), np.float32)
    return q, k, v


CASES = {
    "decode": dict(shape=(2, 4, 4, 1, 300, 64)),
    "decode_gqa": dict(shape=(2, 8, 2, 1, 130, 32)),
    "decode_split": dict(shape=(1, 4, 1, 1, 1100, 64)),
    "few_rows_causal": dict(shape=(1, 2, 2, 3, 77, 16), causal=True),
    "prefill_causal": dict(shape=(2, 4, 2, 70, 90, 32), causal=True),
    "prefill_top_left": dict(shape=(1, 2, 1, 65, 65, 16), causal="top_left"),
    "prefill_dv": dict(shape=(1, 2, 2, 40, 50, 24, 40)),
    "prefill_split": dict(shape=(1, 2, 2, 40, 1100, 16), causal=True),
    "decode_window_alibi": dict(shape=(2, 2, 2, 1, 200, 32), window=(40, 0),
                                alibi_slopes=np.array([0.25, 0.5])),
    "prefill_softcap": dict(shape=(1, 2, 2, 33, 70, 16), softcap=3.0),
    "decode_kv_lengths": dict(shape=(3, 4, 2, 1, 150, 32), kv_lengths=np.array([150, 0, 7])),
    "prefill_kv_lengths": dict(shape=(2, 2, 1, 20, 100, 16), causal=True,
                               kv_lengths=np.array([60, 100])),
}


def case_kwargs(name, rng):
    kw = dict(CASES[name])
    shape = kw.pop("shape")
    return problem(rng, *shape), kw


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_the_reference_of_the_dequantized_inputs(rng, name):
    (q, k, v), kw = case_kwargs(name, rng)
    kq, ks, vq, vs = quantize(k, v)
    out, lse = fastattn.attention(q, kq, vq, k_scale=ks, v_scale=vs, return_lse=True, **kw)
    assert out.dtype == np.float32 and lse.dtype == np.float32
    kd, vd = dequantize(kq, ks, vq, vs)
    AttentionRefs(q, kd, vd, **kw).check(out, lse)


@pytest.mark.parametrize("name", ["decode", "decode_gqa", "prefill_causal", "decode_split"])
def test_error_against_the_unquantized_inputs_is_within_the_quantization_bound(rng, name):
    (q, k, v), kw = case_kwargs(name, rng)
    kq, ks, vq, vs = quantize(k, v)
    out = fastattn.attention(q, kq, vq, k_scale=ks, v_scale=vs, **kw)
    ref = fastattn.attention(q.astype(np.float64), k.astype(np.float64),
                             v.astype(np.float64), **kw)
    err = np.abs(out - ref).max()
    bound = quant_bound(q, kq, ks, vs, v)
    assert err <= bound, f"error {err:.3g} above the quantization bound {bound:.3g}"
    # and the quantization really is lossy, so the bound is not vacuous
    assert err > 1e-5


def test_masks_bool_and_additive(rng):
    q, k, v = problem(rng, 2, 4, 2, 3, 80, 32)
    kq, ks, vq, vs = quantize(k, v)
    kd, vd = dequantize(kq, ks, vq, vs)
    m = rng.random((2, 4, 3, 80)) < 0.7
    m[0, 1, 2] = False  # a row that sees nothing
    add = np.where(rng.random((3, 80)) < 0.8, rng.standard_normal((3, 80)), -np.inf)
    for mask in (m, add.astype(np.float32)):
        out, lse = fastattn.attention(q, kq, vq, k_scale=ks, v_scale=vs, mask=mask,
                                      return_lse=True)
        AttentionRefs(q, kd, vd, mask=mask).check(out, lse)


def test_shared_channel_scales_and_unbatched_inputs(rng):
    q, k, v = problem(rng, 2, 4, 2, 1, 60, 16)
    kq, ks, vq, vs = quantize(k, v)
    shared = ks.max(axis=0)                      # (Hkv, D) for every batch
    kq = np.clip(np.rint(k / shared[:, None, :]), -127, 127).astype(np.int8)
    out = fastattn.attention(q, kq, vq, k_scale=shared, v_scale=vs)
    kd, vd = dequantize(kq, shared, vq, vs)
    AttentionRefs(q, kd, vd).check(out)
    # 3-D (H, N, D) inputs: k_scale (Hkv, D), v_scale (Hkv, Nk)
    out3 = fastattn.attention(q[1], kq[1], vq[1], k_scale=shared, v_scale=vs[1])
    np.testing.assert_array_equal(out3, out[1])


def test_nan_and_large_probability_range(rng):
    """A NaN query row gives NaN; scores spread over a huge range (weights
    from 1 down to underflow) keep the float32 accuracy in the P.V sum."""
    q, k, v = problem(rng, 1, 2, 1, 2, 200, 64)
    q[0, 1, 0, 5] = np.nan
    q[0, 0] *= 40
    kq, ks, vq, vs = quantize(k, v)
    out, lse = fastattn.attention(q, kq, vq, k_scale=ks, v_scale=vs, return_lse=True)
    assert np.isnan(out[0, 1, 0]).all() and not np.isnan(out[0, 0]).any()
    kd, vd = dequantize(kq, ks, vq, vs)
    AttentionRefs(q, kd, vd).check(out, lse)


def test_any_strides(rng):
    """(B, N, H, D) storage viewed as (B, H, N, D), a reversed key axis and
    scales that are views with gaps are read in place."""
    q, k, v = problem(rng, 2, 4, 2, 1, 50, 32)
    kq, ks, vq, vs = quantize(k, v)
    base = fastattn.attention(q, kq, vq, k_scale=ks, v_scale=vs)
    kt = np.ascontiguousarray(kq.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    vt = np.ascontiguousarray(vq.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    wide_ks = np.zeros(ks.shape[:-1] + (2 * ks.shape[-1],), np.float32)
    wide_ks[..., ::2] = ks
    wide_vs = np.zeros(vs.shape + (3,), np.float32)
    wide_vs[..., 1] = vs
    out = fastattn.attention(q, kt, vt, k_scale=wide_ks[..., ::2], v_scale=wide_vs[..., 1])
    np.testing.assert_array_equal(out, base)
    # reversed keys: the same set of keys, so the same result up to rounding
    rev = fastattn.attention(q, kq[:, :, ::-1], vq[:, :, ::-1], k_scale=ks,
                             v_scale=vs[:, :, ::-1])
    np.testing.assert_allclose(rev, base, rtol=1e-5, atol=1e-6)
    # float64 scales are converted to float32
    out64 = fastattn.attention(q, kq, vq, k_scale=ks.astype(np.float64),
                               v_scale=vs.astype(np.float64))
    np.testing.assert_array_equal(out64, base)


def test_plans_and_weights(rng):
    q, k, v = problem(rng, 1, 4, 2, 1, 100, 32)
    kq, ks, vq, vs = quantize(k, v)
    plan = fastattn.explain(q, kq, vq, k_scale=ks, v_scale=vs)
    assert plan["kernel"] == "rows"
    # decode runs the AVX512-VNNI refinement where the CPU has it
    assert plan["kernel_isa"] in (plan["isa"], "avx512vnni")
    q2 = randn(rng, (1, 4, 70, 32), np.float32)
    assert fastattn.explain(q2, kq, vq, k_scale=ks, v_scale=vs)["kernel"] == "tile"
    out, lse, w = fastattn.attention(q2, kq, vq, k_scale=ks, v_scale=vs, causal=True,
                                     return_lse=True, return_weights=True)
    kd, vd = dequantize(kq, ks, vq, vs)
    _, _, w_ref = fastattn.attention(q2, kd, vd, causal=True, return_lse=True,
                                     return_weights=True)
    np.testing.assert_allclose(w, w_ref, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------ bad arguments

def _good(rng):
    q, k, v = problem(rng, 2, 2, 2, 1, 10, 8)
    kq, ks, vq, vs = quantize(k, v)
    return q, kq, vq, ks, vs


@pytest.mark.parametrize("which, bad, exc, pattern", [
    ("k_scale", lambda s: np.where(np.arange(s.size).reshape(s.shape) == 3, 0, s),
     ValueError, r"k_scale must be finite and > 0; got 0"),
    ("k_scale", lambda s: -s, ValueError, r"k_scale must be finite and > 0"),
    ("v_scale", lambda s: np.where(np.arange(s.size).reshape(s.shape) == 5, np.nan, s),
     ValueError, r"v_scale must be finite and > 0; got nan"),
    ("v_scale", lambda s: np.where(np.arange(s.size).reshape(s.shape) == 0, np.inf, s),
     ValueError, r"v_scale must be finite and > 0; got inf"),
    ("k_scale", lambda s: np.full(s.shape, 1e-60), ValueError, r"k_scale .* > 0"),
    ("k_scale", lambda s: s[..., :-1], ValueError, r"k_scale has shape \(2, 2, 7\)"),
    ("v_scale", lambda s: s[:, :, None], ValueError, r"v_scale has shape"),
    ("v_scale", lambda s: s.astype(np.int32) + 1, TypeError, r"v_scale has dtype int32"),
    ("k_scale", lambda s: s.tolist(), TypeError, r"k_scale must be a numpy.ndarray"),
    ("k_scale", lambda s: None, TypeError, r"k_scale is required"),
    ("v_scale", lambda s: None, TypeError, r"v_scale is required"),
])
def test_bad_scales_raise_and_write_nothing(rng, which, bad, exc, pattern):
    q, kq, vq, ks, vs = _good(rng)
    scales = {"k_scale": ks, "v_scale": vs}
    scales[which] = bad(scales[which])
    out = np.full(q.shape, 7.0, np.float32)
    with pytest.raises(exc, match=pattern):
        fastattn.attention(q, kq, vq, out=out, **scales)
    assert (out == 7.0).all()


def test_bad_dtype_combinations(rng):
    q, kq, vq, ks, vs = _good(rng)
    with pytest.raises(TypeError, match=r"q has dtype float64; int8 k and v need float32"):
        fastattn.attention(q.astype(np.float64), kq, vq, k_scale=ks, v_scale=vs)
    with pytest.raises(TypeError, match=r"v has dtype float32 but k is int8"):
        fastattn.attention(q, kq, vq.astype(np.float32), k_scale=ks, v_scale=vs)
    with pytest.raises(TypeError, match=r"k_scale is given but k has dtype float32"):
        fastattn.attention(q, kq.astype(np.float32), vq.astype(np.float32), k_scale=ks)
    with pytest.raises(ValueError, match=r"out has dtype float64"):
        fastattn.attention(q, kq, vq, k_scale=ks, v_scale=vs,
                           out=np.zeros(q.shape, np.float64))


# ------------------------------------------------------------ the int8 cache

def test_int8_cache_decodes_step_by_step(rng):
    b, hkv, h, d = 2, 2, 4, 32
    cache = fastattn.KVCache(b, hkv, 64, d, dtype="int8")
    exact = fastattn.KVCache(b, hkv, 64, d, dtype=np.float64)
    assert cache.dtype == np.int8 and cache.k_scale.shape == (b, hkv, d)
    assert cache.v_scale.shape == (b, hkv, 64)
    for n in (12, 1, 1, 4, 1):
        k, v = randn(rng, (b, hkv, n, d), np.float32), randn(rng, (b, hkv, n, d), np.float32)
        cache.append(k, v)
        exact.append(k.astype(np.float64), v.astype(np.float64))
        q = randn(rng, (b, h, n, d), np.float32)
        out, lse = cache.attend(q, causal=True, return_lse=True)
        used = int(cache.lengths.max())
        kd, vd = dequantize(cache.k[:, :, :used], cache.k_scale, cache.v[:, :, :used],
                            cache.v_scale[:, :, :used])
        AttentionRefs(q, kd, vd, causal=True).check(out, lse)
        ref = exact.attend(q.astype(np.float64), causal=True)
        bound = quant_bound(q, cache.k[:, :, :used], cache.k_scale, cache.v_scale[:, :, :used],
                            exact.v[:, :, :used])
        assert np.abs(out - ref).max() <= bound


def test_int8_cache_key_scales_grow_by_doubling_and_requantize(rng):
    cache = fastattn.KVCache(1, 1, 16, 8, dtype="int8")
    k0 = randn(rng, (1, 1, 4, 8), np.float32)
    v0 = randn(rng, (1, 1, 4, 8), np.float32)
    cache.append(k0, v0)
    first = cache.k_scale.copy()
    np.testing.assert_allclose(first[0, 0], np.abs(k0[0, 0]).max(axis=0) / 127, rtol=1e-6)
    big = k0[:, :, :1] * 0
    big[..., 0] = 3 * np.abs(k0[..., 0]).max()       # channel 0: 3x its range
    big[..., 1] = 1.5 * np.abs(k0[..., 1]).max()     # channel 1: 1.5x (doubling wins)
    cache.append(big, v0[:, :, :1])
    s = cache.k_scale[0, 0]
    np.testing.assert_allclose(s[0], 3 * first[0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(s[1], 2 * first[0, 0, 1], rtol=1e-6)
    np.testing.assert_array_equal(s[2:], first[0, 0, 2:])
    # every stored key within one step of its channel's final scale
    deq = cache.k[0, 0, :5] * s
    want = np.concatenate([k0[0, 0], big[0, 0]])
    assert (np.abs(deq - want) <= s * (1 + 1e-6)).all()
    assert (np.abs(deq[:, 2:] - want[:, 2:]) <= s[2:] / 2 * (1 + 1e-6)).all()


def test_int8_cache_failed_append_leaves_everything_unchanged(rng):
    cache = fastattn.KVCache(2, 1, 8, 4, dtype="int8")
    k, v = randn(rng, (2, 1, 3, 4), np.float32), randn(rng, (2, 1, 3, 4), np.float32)
    cache.append(k, v)
    before = [a.copy() for a in (cache.k, cache.v, cache.k_scale, cache.v_scale,
                                 cache.lengths)]
    bad_k = 10 * k.copy()          # would grow row 0's scales ...
    bad_k[1, 0, 0, 0] = np.nan     # ... but row 1 is bad
    with pytest.raises(ValueError, match=r"k has non-finite values"):
        cache.append(bad_k, v)
    with pytest.raises(ValueError, match=r"cache overflow"):
        cache.append(randn(rng, (2, 1, 6, 4), np.float32), randn(rng, (2, 1, 6, 4), np.float32))
    with pytest.raises(TypeError, match=r"k has dtype int64; an int8 cache takes float"):
        cache.append(np.zeros((2, 1, 1, 4), np.int64), v[:, :, :1])
    for a, b in zip(before, (cache.k, cache.v, cache.k_scale, cache.v_scale, cache.lengths)):
        np.testing.assert_array_equal(a, b)


def test_int8_cache_zero_rows_and_reset(rng):
    cache = fastattn.KVCache(1, 2, 8, 4, dtype=np.int8)
    cache.append(np.zeros((1, 2, 2, 4), np.float32), np.zeros((1, 2, 2, 4), np.float32))
    assert (cache.k_scale > 0).all() and (cache.v_scale > 0).all()
    q = randn(rng, (1, 2, 1, 4), np.float32)
    np.testing.assert_array_equal(cache.attend(q), np.zeros((1, 2, 1, 4), np.float32))
    cache.reset()
    k = randn(rng, (1, 2, 2, 4), np.float32)
    cache.append(k, k)
    np.testing.assert_allclose(cache.k_scale[0], np.abs(k[0]).max(axis=1) / 127, rtol=1e-6)


# ------------------------------------------------------------ every ISA path

def int8_case(name, rng, shape, **kw):
    q, k, v = problem(rng, *shape)
    kq, ks, vq, vs = quantize(k, v)
    cache = {}

    def run():
        return fastattn.attention(q, kq, vq, k_scale=ks, v_scale=vs, return_lse=True, **kw)

    def check(res):
        if "refs" not in cache:
            kd, vd = dequantize(kq, ks, vq, vs)
            cache["refs"] = AttentionRefs(q, kd, vd, **kw)
        cache["refs"].check(*res)

    return IsaCase(name, run, check)


def isa_cases():
    rng = np.random.default_rng(812)
    return [
        int8_case("decode_gqa", rng, (2, 8, 2, 1, 130, 64)),              # few-row kernel
        int8_case("decode_split", rng, (1, 4, 1, 1, 1100, 40)),           # + split-KV, d tail
        int8_case("few_rows_causal_tails", rng, (1, 2, 2, 3, 77, 19), causal=True),
        # a value-column tail after 64 columns and key blocks of 64 and 6
        # keys (the vpdpbusd P.V takes keys in fours and columns in 64s)
        int8_case("decode_dv_and_key_tails", rng, (1, 4, 2, 2, 70, 32, 100)),
        int8_case("prefill_causal", rng, (2, 4, 2, 70, 90, 32), causal=True),  # tile kernel
        int8_case("prefill_mask_dv", rng, (1, 2, 1, 40, 50, 24, 21),
                  mask=rng.random((40, 50)) < 0.8),
    ]


@pytest.mark.parametrize("isa, threads", ISA_COMBOS)
def test_every_isa_path(isa_runs, isa, threads):
    check_isa_path(isa_runs, "test_int8", isa, threads)
