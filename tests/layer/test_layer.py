"""fastattn.MultiHeadAttention: the layer against a float64 computation
through fastattn.reference (FlashAttention's 2x rule, see support/compare.py),
against torch.nn.MultiheadAttention on the same weights, incremental
decoding through a KVCache, initialization, the state-dict loader, and
argument errors."""

import math

import numpy as np
import pytest

from support import assert_matches
from support import require

import fastattn
from fastattn import MultiHeadAttention, reference
from fastattn import layer as layer_mod


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def randn(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def randomize_biases(layer, rng):
    """Xavier init leaves the biases at 0; give them values so they are tested."""
    for name in ("b_q", "b_k", "b_v", "b_o"):
        if getattr(layer, name) is not None:
            setattr(layer, name, 0.5 * rng.standard_normal(getattr(layer, name).shape))


def explicit_layer(layer, x, context=None, mask=None, key_padding_mask=None, causal=False,
                   dtype=np.float64):
    """The layer written out step by step in NumPy in ``dtype``, with
    reference.attention; returns (out, weights, (q, k, v)) with heads in
    (B, H, N, D).  key_padding_mask: True = real key."""
    p = {n: (None if getattr(layer, n) is None else getattr(layer, n).astype(dtype))
         for n in ("w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o")}
    c = x if context is None else context
    x, c = x.astype(dtype), c.astype(dtype)
    B, Nq, _ = x.shape
    Nk = c.shape[1]
    H, Hkv, D = layer.num_heads, layer.num_kv_heads, layer.head_dim

    def proj(a, w, b):
        y = a @ w.T
        return y if b is None else y + b

    q = proj(x, p["w_q"], p["b_q"]).reshape(B, Nq, H, D).transpose(0, 2, 1, 3)
    k = proj(c, p["w_k"], p["b_k"]).reshape(B, Nk, Hkv, D).transpose(0, 2, 1, 3)
    v = proj(c, p["w_v"], p["b_v"]).reshape(B, Nk, Hkv, D).transpose(0, 2, 1, 3)
    m = mask
    if m is not None and m.dtype != np.bool_:
        m = m.astype(dtype)
    if key_padding_mask is not None:
        keep = key_padding_mask[:, None, None, :]
        if m is None:
            m = keep
        elif m.dtype == np.bool_:
            m = m & keep
        else:
            m = np.where(keep, m, -np.inf)
    with np.errstate(all="ignore"):
        o = reference.attention(q, k, v, mask=m, causal=causal)
        w = reference.attention_weights(q, k, mask=m, causal=causal)
        y = proj(o.transpose(0, 2, 1, 3).reshape(B, Nq, H * D), p["w_o"], p["b_o"])
    return y, w, (q, k, v)


def assert_layer_accurate(layer, y, x, context=None, **kw):
    """FlashAttention's rule for the whole layer: max|y - ref64| <= 2 *
    max|naive32 - ref64| + floor, where naive32 is the same explicit
    computation in float32.  The floor (support/compare.py's, propagated through the
    output projection): float32 rounding of sums of E or Nk terms relative
    to the result, plus the score rounding term 4 u S V times the largest
    row sum of |w_o|."""
    y64, _, (q64, k64, v64) = explicit_layer(layer, x, context, dtype=np.float64, **kw)
    if layer.dtype == np.float64:
        assert_matches("out", y, y64, y64, np.float64, 1)
        return
    y32, _, _ = explicit_layer(layer, x, context, dtype=np.float32, **kw)
    k_rep = np.repeat(k64, layer.num_heads // layer.num_kv_heads, axis=1)
    s_max = float(np.abs(q64 @ k_rep.swapaxes(-1, -2)).max(initial=0.0)) / math.sqrt(
        layer.head_dim)
    score_term = s_max * float(np.abs(v64).max(initial=0.0)) * float(
        np.abs(layer.w_o).sum(axis=1).max())
    n = max(layer.embed_dim, layer.context_dim, k64.shape[2])
    assert_matches("out", y, y64, y32, np.float32, n, score_term)


# ---------------------------------------------------------------------------
# against float64 through fastattn.reference
# ---------------------------------------------------------------------------

# (B, Nq, E, H, Hkv): awkward sizes, GQA and MQA, a single token
SHAPES = [
    (2, 7, 64, 4, 4),
    (3, 37, 48, 3, 3),
    (2, 33, 128, 8, 2),
    (1, 16, 96, 6, 1),
    (4, 1, 32, 2, 2),
]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}-n{}-e{}-h{}-kv{}".format(*s))
def test_self_attention_matches_float64(rng, shape, bias):
    B, N, E, H, Hkv = shape
    layer = MultiHeadAttention(E, H, num_kv_heads=Hkv, bias=bias, rng=rng)
    randomize_biases(layer, rng)
    x = randn(rng, (B, N, E))
    y = layer(x)
    assert y.shape == (B, N, E) and y.dtype == np.float32
    assert_layer_accurate(layer, y, x)


def _padding(rng, B, Nk, kind):
    if kind == "suffix":      # right padding: the kernel gets per-row key counts
        lengths = rng.integers(1, Nk + 1, size=B)
        lengths[0] = Nk
        return np.arange(Nk) < lengths[:, None]
    kpm = rng.random((B, Nk)) < 0.7   # holes anywhere: folded into the mask
    kpm[:, 0] = True
    return kpm


MASK_CASES = [
    # (mask kind, key padding, causal)
    (None, None, True),
    (None, None, "top_left"),
    ("bool2d", None, False),
    ("float4d", None, False),
    ("bool_heads", None, True),
    (None, "suffix", False),
    (None, "holes", False),
    (None, "suffix", True),
    ("bool2d", "suffix", False),
    ("bool2d", "holes", True),
    ("float4d", "holes", False),
    ("float2d", "suffix", False),
]


@pytest.mark.parametrize("case", MASK_CASES, ids=lambda c: "-".join(str(p) for p in c))
def test_masks_match_float64(rng, case):
    mask_kind, pad_kind, causal = case
    B, N, E, H, Hkv = 3, 29, 64, 4, 2
    layer = MultiHeadAttention(E, H, num_kv_heads=Hkv, rng=rng)
    randomize_biases(layer, rng)
    x = randn(rng, (B, N, E))
    mask = None
    if mask_kind == "bool2d":
        mask = rng.random((N, N)) < 0.8
        mask[:, 0] = True
    elif mask_kind == "bool_heads":
        mask = rng.random((1, H, N, N)) < 0.8
        mask[..., 0] = True
    elif mask_kind == "float2d":
        mask = randn(rng, (N, N))
    elif mask_kind == "float4d":
        mask = randn(rng, (B, H, N, N))
        mask[rng.random(mask.shape) < 0.2] = -np.inf
        mask[..., 0] = 0.0
    kpm = None if pad_kind is None else _padding(rng, B, N, pad_kind)
    y = layer(x, mask=mask, key_padding_mask=kpm, causal=causal)
    assert_layer_accurate(layer, y, x, mask=mask, key_padding_mask=kpm, causal=causal)


@pytest.mark.parametrize("causal", [False, True])
def test_cross_attention_matches_float64(rng, causal):
    B, Nq, Nk, E, C, H = 2, 5, 23, 64, 40, 4
    layer = MultiHeadAttention(E, H, num_kv_heads=2, context_dim=C, rng=rng)
    randomize_biases(layer, rng)
    x = randn(rng, (B, Nq, E))
    ctx = randn(rng, (B, Nk, C))
    kpm = _padding(rng, B, Nk, "suffix")
    y = layer(x, ctx, key_padding_mask=kpm, causal=causal)
    assert y.shape == (B, Nq, E)
    assert_layer_accurate(layer, y, x, ctx, key_padding_mask=kpm, causal=causal)
    # a layer with context_dim == embed_dim does cross-attention too
    layer2 = MultiHeadAttention(E, H, rng=rng)
    ctx2 = randn(rng, (B, Nk, E))
    assert_layer_accurate(layer2, layer2(x, ctx2, causal=causal), x, ctx2, causal=causal)


def test_float64_layer(rng):
    layer = MultiHeadAttention(48, 4, num_kv_heads=2, dtype=np.float64, rng=rng)
    randomize_biases(layer, rng)
    x = randn(rng, (2, 19, 48), np.float64)
    y, w = layer(x, causal=True, need_weights=True)
    assert y.dtype == np.float64 and w.dtype == np.float64
    assert_layer_accurate(layer, y, x, causal=True)
    _, w64, _ = explicit_layer(layer, x, causal=True)
    assert_matches("weights", w, w64, w64, np.float64, 1)


def test_need_weights(rng):
    B, Nq, Nk, E, H = 2, 11, 17, 32, 4
    layer = MultiHeadAttention(E, H, num_kv_heads=2, rng=rng)
    randomize_biases(layer, rng)
    x, ctx = randn(rng, (B, Nq, E)), randn(rng, (B, Nk, E))
    kpm = _padding(rng, B, Nk, "holes")
    y, w = layer(x, ctx, key_padding_mask=kpm, need_weights=True)
    assert w.shape == (B, H, Nq, Nk) and w.dtype == np.float32
    np.testing.assert_array_equal(y, layer(x, ctx, key_padding_mask=kpm))
    _, w64, _ = explicit_layer(layer, x, ctx, key_padding_mask=kpm)
    _, w32, _ = explicit_layer(layer, x, ctx, key_padding_mask=kpm, dtype=np.float32)
    assert_matches("weights", w, w64, w32, np.float32, Nk)
    assert np.all(w[np.broadcast_to(~kpm[:, None, None, :], w.shape)] == 0)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=0, atol=1e-6)


def test_row_without_keys_gives_output_bias(rng):
    layer = MultiHeadAttention(32, 4, rng=rng)
    randomize_biases(layer, rng)
    x = randn(rng, (2, 6, 32))
    kpm = np.ones((2, 6), dtype=bool)
    kpm[1] = False                                # batch row 1: nothing to attend
    y, w = layer(x, key_padding_mask=kpm, need_weights=True)
    np.testing.assert_array_equal(y[1], np.broadcast_to(layer.b_o, (6, 32)))
    assert np.all(w[1] == 0)
    assert_layer_accurate(layer, y[:1], x[:1])


# ---------------------------------------------------------------------------
# key_padding_mask polarity: True = a real key
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_key_padding_mask_polarity(rng, causal):
    """Padding keys (False) hold garbage; the result of each row equals the
    layer run on that row's real keys alone."""
    B, Nq, Nk, E = 3, 4, 12, 32
    layer = MultiHeadAttention(E, 4, rng=rng)
    randomize_biases(layer, rng)
    x = randn(rng, (B, Nq, E))
    ctx = randn(rng, (B, Nk, E))
    lengths = np.array([12, 5, 1])
    kpm = np.arange(Nk) < lengths[:, None]
    ctx[~kpm] = 1e4                               # huge keys: dominate if attended
    y = layer(x, ctx, key_padding_mask=kpm, causal=causal)
    for b in range(B):
        # with causal, the padded call aligns the diagonal to Nk; shift the
        # solo call's queries by the same amount through an explicit mask
        solo_mask = None
        if causal:
            off = Nk - Nq
            solo_mask = np.arange(lengths[b]) <= np.arange(Nq)[:, None] + off
        solo = layer(x[b], ctx[b, :lengths[b]], mask=solo_mask)
        np.testing.assert_allclose(y[b], solo, rtol=1e-5, atol=1e-5)
    # the opposite polarity attends the garbage and gives something else
    assert not np.allclose(layer(x, ctx, key_padding_mask=~kpm), y)


# ---------------------------------------------------------------------------
# unbatched input and layout (no copies of heads)
# ---------------------------------------------------------------------------

def test_unbatched(rng):
    layer = MultiHeadAttention(32, 4, num_kv_heads=2, rng=rng)
    randomize_biases(layer, rng)
    x, ctx = randn(rng, (9, 32)), randn(rng, (5, 32))
    kpm = np.array([True, True, False, True, False])
    mask = rng.random((9, 5)) < 0.8
    y, w = layer(x, ctx, mask=mask, key_padding_mask=kpm, need_weights=True)
    yb, wb = layer(x[None], ctx[None], mask=mask, key_padding_mask=kpm[None],
                   need_weights=True)
    assert y.shape == (9, 32) and w.shape == (4, 9, 5)
    np.testing.assert_array_equal(y, yb[0])
    np.testing.assert_array_equal(w, wb[0])
    np.testing.assert_array_equal(layer(x), layer(x[None])[0])


def test_heads_are_views_and_merge_is_copy_free(rng, monkeypatch):
    """The kernel receives q, k, v as strided views of one projection buffer
    and writes into a transposed view of the (B, N, H, D) merge buffer."""
    seen = {}
    real = layer_mod.attention

    def spy(q, k, v, **kw):
        seen.update(q=q, k=k, v=v, out=kw["out"])
        return real(q, k, v, **kw)

    monkeypatch.setattr(layer_mod, "attention", spy)
    B, N, E, H = 2, 10, 64, 4
    layer = MultiHeadAttention(E, H, num_kv_heads=2, rng=rng)
    layer(randn(rng, (B, N, E)))
    q, k, v, out = seen["q"], seen["k"], seen["v"], seen["out"]
    assert q.shape == (B, H, N, 16) and k.shape == v.shape == (B, 2, N, 16)
    base = q.base
    while base.base is not None:
        base = base.base
    assert base.shape == (B * N, (H + 2 * 2) * 16)   # one GEMM's output
    for a in (q, k, v):
        assert np.shares_memory(a, base) and not a.flags.c_contiguous
    assert out.transpose(0, 2, 1, 3).flags.c_contiguous   # (B, N, H, D) storage


def test_input_layouts(rng):
    """Non-contiguous x (a transposed view, a slice) gives the same result."""
    layer = MultiHeadAttention(32, 4, rng=rng)
    x = randn(rng, (2, 8, 32))
    y = layer(x)
    np.testing.assert_array_equal(layer(np.asfortranarray(x)), y)
    big = np.zeros((2, 16, 64), dtype=np.float32)
    big[:, ::2, ::2] = x
    np.testing.assert_allclose(layer(big[:, ::2, ::2]), y, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# KV cache: incremental decoding equals one causal call
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("hkv", [4, 2, 1])
def test_kv_cache_token_by_token_equals_full_causal(rng, hkv):
    B, N, E, H = 2, 13, 64, 4
    layer = MultiHeadAttention(E, H, num_kv_heads=hkv, rng=rng)
    randomize_biases(layer, rng)
    x = randn(rng, (B, N, E))
    full, w_full = layer(x, causal=True, need_weights=True)
    cache = layer.make_kv_cache(B, max_len=N)
    steps = [layer(x[:, t:t + 1], kv_cache=cache, causal=True) for t in range(N)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cache.lengths, [N, N])

    # prefill a prompt in one call, then decode one token at a time, with weights
    cache.reset()
    y0, w0 = layer(x[:, :5], kv_cache=cache, causal=True, need_weights=True)
    np.testing.assert_allclose(y0, full[:, :5], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(w0, w_full[:, :, :5, :5], rtol=1e-5, atol=1e-6)
    for t in range(5, N):
        yt, wt = layer(x[:, t:t + 1], kv_cache=cache, causal=True, need_weights=True)
        np.testing.assert_allclose(yt, full[:, t:t + 1], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(wt, w_full[:, :, t:t + 1, :t + 1], rtol=1e-5, atol=1e-6)


def test_kv_cache_with_mask(rng):
    """A mask given with the cache spans every cached key."""
    B, N, E = 1, 9, 32
    layer = MultiHeadAttention(E, 2, rng=rng)
    x = randn(rng, (B, N, E))
    mask = rng.random((N, N)) < 0.7
    mask[:, 0] = True
    full = layer(x, mask=mask, causal=True)
    cache = layer.make_kv_cache(B, N)
    layer(x[:, :4], kv_cache=cache, mask=mask[:4, :4], causal=True)
    for t in range(4, N):
        yt = layer(x[:, t:t + 1], kv_cache=cache, mask=mask[t:t + 1, :t + 1], causal=True)
        np.testing.assert_allclose(yt, full[:, t:t + 1], rtol=1e-5, atol=1e-5)
    # a mask may also span the cache's max_len keys, as in KVCache.attend
    cache = layer.make_kv_cache(B, 2 * N)
    wide = np.zeros((N, 2 * N), dtype=bool)
    wide[:, :N] = mask
    for t in range(N):
        yt, wt = layer(x[:, t:t + 1], kv_cache=cache, mask=wide[t:t + 1], causal=True,
                       need_weights=True)
        np.testing.assert_allclose(yt, full[:, t:t + 1], rtol=1e-5, atol=1e-5)
        assert wt.shape == (B, 2, 1, t + 1)


def test_kv_cache_overflow_leaves_cache_unchanged(rng):
    layer = MultiHeadAttention(16, 2, rng=rng)
    cache = layer.make_kv_cache(1, 4)
    layer(randn(rng, (1, 3, 16)), kv_cache=cache, causal=True)
    with pytest.raises(ValueError, match="max_len"):
        layer(randn(rng, (1, 2, 16)), kv_cache=cache, causal=True)
    np.testing.assert_array_equal(cache.lengths, [3])


# ---------------------------------------------------------------------------
# initialization and parameters
# ---------------------------------------------------------------------------

def test_deterministic_init():
    a = MultiHeadAttention(64, 4, num_kv_heads=2, rng=7)
    b = MultiHeadAttention(64, 4, num_kv_heads=2, rng=np.random.default_rng(7))
    c = MultiHeadAttention(64, 4, num_kv_heads=2, rng=8)
    d = MultiHeadAttention(64, 4, num_kv_heads=2, rng=7, dtype=np.float64)
    for name, w in a.parameters().items():
        np.testing.assert_array_equal(w, b.parameters()[name])
        np.testing.assert_array_equal(w, d.parameters()[name].astype(np.float32))
        if name.startswith("w"):
            assert not np.array_equal(w, c.parameters()[name])
        else:
            assert np.all(w == 0), f"{name} should start at 0"


def test_xavier_uniform_bounds():
    layer = MultiHeadAttention(256, 8, num_kv_heads=2, rng=0, dtype=np.float64)
    for name, w in layer.parameters().items():
        if not name.startswith("w"):
            continue
        fan_out, fan_in = w.shape
        a = math.sqrt(6.0 / (fan_in + fan_out))
        assert np.abs(w).max() <= a
        assert np.abs(w).max() > 0.99 * a
        # uniform on (-a, a): variance a^2 / 3; with >= 16k samples the
        # sample variance is within a few percent
        assert abs(w.var() / (a * a / 3) - 1) < 0.05, name
        assert abs(w.mean()) < 0.05 * a, name


def test_parameter_shapes_and_assignment(rng):
    E, H, Hkv, C = 48, 6, 2, 20
    layer = MultiHeadAttention(E, H, num_kv_heads=Hkv, context_dim=C, rng=rng)
    D = E // H
    shapes = {n: w.shape for n, w in layer.parameters().items()}
    assert shapes == {"w_q": (E, E), "w_k": (Hkv * D, C), "w_v": (Hkv * D, C),
                      "w_o": (E, E), "b_q": (E,), "b_k": (Hkv * D,), "b_v": (Hkv * D,),
                      "b_o": (E,)}
    x, ctx = randn(rng, (1, 3, E)), randn(rng, (1, 4, C))
    before = layer(x, ctx)
    new_v = rng.standard_normal((Hkv * D, C))          # float64, cast on assignment
    layer.w_v = new_v
    np.testing.assert_array_equal(layer.w_v, new_v.astype(np.float32))
    after = layer(x, ctx)
    assert not np.allclose(before, after)
    assert_layer_accurate(layer, after, x, ctx)
    layer.b_o[...] = 1.0                                 # in-place edits count too
    np.testing.assert_allclose(layer(x, ctx), after + 1.0, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"w_q must have shape \(48, 48\)"):
        layer.w_q = np.zeros((48, 20))
    with pytest.raises(TypeError, match="w_o"):
        layer.w_o = np.full((E, E), "x")


def test_bias_false(rng):
    layer = MultiHeadAttention(32, 4, bias=False, rng=rng)
    assert layer.b_q is None and layer.b_o is None
    assert set(layer.parameters()) == {"w_q", "w_k", "w_v", "w_o"}
    with pytest.raises(AttributeError, match="bias=False"):
        layer.b_o = np.zeros(32)
    x = randn(rng, (2, 6, 32))
    y = layer(x)
    assert_layer_accurate(layer, y, x)
    # without biases, zero tokens give zero q, k, v and a zero result
    np.testing.assert_array_equal(layer(np.zeros_like(x)), 0)
    assert "bias=False" in repr(layer)


def test_repr():
    r = repr(MultiHeadAttention(64, 8, num_kv_heads=2, rng=0, context_dim=32))
    assert r == ("MultiHeadAttention(embed_dim=64, num_heads=8, num_kv_heads=2, bias=True, "
                 "dtype=float32, context_dim=32)")


# ---------------------------------------------------------------------------
# state dicts (no torch needed)
# ---------------------------------------------------------------------------

def test_state_dict_round_trip(rng):
    for C in (32, 24):
        layer = MultiHeadAttention(32, 4, rng=rng, context_dim=C)
        randomize_biases(layer, rng)
        sd = layer.to_torch_state_dict()
        expected = ({"in_proj_weight"} if C == 32 else
                    {"q_proj_weight", "k_proj_weight", "v_proj_weight"})
        assert set(sd) == expected | {"in_proj_bias", "out_proj.weight", "out_proj.bias"}
        # lists (array-likes) and a prefix work as well
        wrapped = {"blocks.0.attn." + k: v.tolist() for k, v in sd.items()}
        wrapped["blocks.0.norm.weight"] = [1.0]        # other modules' keys are ignored
        back = MultiHeadAttention.from_torch_state_dict(wrapped, 4, prefix="blocks.0.attn.",
                                                        dtype=np.float32)
        assert back.dtype == np.float32
        # without dtype, the weights' own: lists of Python floats are float64
        assert MultiHeadAttention.from_torch_state_dict(
            wrapped, 4, prefix="blocks.0.attn.").dtype == np.float64
        x, ctx = randn(rng, (2, 5, 32)), randn(rng, (2, 3, C))
        np.testing.assert_array_equal(back(x, ctx), layer(x, ctx))
    nb = MultiHeadAttention(16, 2, bias=False, rng=0, dtype=np.float64)
    back = MultiHeadAttention.from_torch_state_dict(nb.to_torch_state_dict(), 2)
    assert back.bias is False and back.dtype == np.float64
    with pytest.raises(ValueError, match="num_kv_heads"):
        MultiHeadAttention(16, 4, num_kv_heads=2, rng=0).to_torch_state_dict()


def _sd(E=8):
    r = np.random.default_rng(0)
    return {"in_proj_weight": r.standard_normal((3 * E, E)).astype(np.float32),
            "in_proj_bias": np.zeros(3 * E, np.float32),
            "out_proj.weight": r.standard_normal((E, E)).astype(np.float32),
            "out_proj.bias": np.zeros(E, np.float32)}


def _without(d, *keys):
    return {k: v for k, v in d.items() if k not in keys}


def _with(d, **kv):
    d = dict(d)
    d.update({k.replace("__", "."): v for k, v in kv.items()})
    return d


LOADER_ERRORS = [
    (_without(_sd(), "out_proj.weight"), 2, ValueError, "out_proj.weight"),
    (_without(_sd(), "in_proj_weight"), 2, ValueError, "in_proj_weight"),
    (_without(_sd(), "out_proj.bias"), 2, ValueError, "in_proj_bias and out_proj.bias"),
    (_with(_sd(), bias_k=np.zeros((1, 1, 8))), 2, ValueError, "bias_k"),
    (_with(_sd(), extra=np.zeros(3)), 2, ValueError, "unexpected keys: extra"),
    (_with(_sd(), in_proj_weight=np.zeros((20, 8))), 2, ValueError, "in_proj_weight"),
    (_with(_sd(), out_proj__weight=np.zeros((8, 4))), 2, ValueError, "out_proj.weight"),
    (_with(_sd(), in_proj_bias=np.zeros(8)), 2, ValueError, "in_proj_bias"),
    (_with(_sd(), in_proj_weight=np.full((24, 8), "a")), 2, TypeError, "in_proj_weight"),
    (_with(_without(_sd(), "in_proj_weight"), q_proj_weight=np.zeros((8, 8)),
           k_proj_weight=np.zeros((8, 5)), v_proj_weight=np.zeros((8, 6))),
     2, ValueError, "kdim must equal vdim"),
    (_sd(), 3, ValueError, "num_heads"),
    (_sd(), "2", TypeError, "num_heads"),
    ([("in_proj_weight", 1)], 2, TypeError, "state_dict"),
]


@pytest.mark.parametrize("sd, heads, exc, match", LOADER_ERRORS)
def test_loader_errors(sd, heads, exc, match):
    with pytest.raises(exc, match=match):
        MultiHeadAttention.from_torch_state_dict(sd, heads)


# ---------------------------------------------------------------------------
# bad arguments: the right type, the argument named
# ---------------------------------------------------------------------------

CTOR_ERRORS = [
    (("8", 2), {}, TypeError, "embed_dim must be an int"),
    ((0, 2), {}, ValueError, "embed_dim must be >= 1"),
    ((8, 2.0), {}, TypeError, "num_heads must be an int"),
    ((8, 3), {}, ValueError, r"embed_dim \(8\) must be divisible by num_heads \(3\)"),
    ((8, 4), {"num_kv_heads": 3}, ValueError, r"num_heads \(4\) must be a multiple of "
                                             r"num_kv_heads \(3\)"),
    ((8, 4), {"num_kv_heads": 0}, ValueError, "num_kv_heads must be >= 1"),
    ((8, 4), {"bias": 1}, TypeError, "bias must be a bool"),
    ((8, 4), {"dtype": np.float16}, TypeError, "dtype must be float32 or float64"),
    ((8, 4), {"dtype": "nonsense"}, TypeError, "dtype must be float32 or float64"),
    ((8, 4), {"rng": "seed"}, TypeError, "rng must be"),
    ((8, 4), {"rng": True}, TypeError, "rng must be"),
    ((8, 4), {"context_dim": 0}, ValueError, "context_dim must be >= 1"),
]


@pytest.mark.parametrize("args, kwargs, exc, match", CTOR_ERRORS)
def test_constructor_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        MultiHeadAttention(*args, **kwargs)


def _call_errors():
    f32 = np.float32
    x = np.zeros((2, 5, 16), f32)
    ctx = np.zeros((2, 7, 16), f32)
    cache = fastattn.KVCache(2, 2, 8, 8)
    return [
        (([[0.0] * 16],), {}, TypeError, "x must be a numpy.ndarray"),
        ((x.astype(np.float64),), {}, TypeError, "x has dtype float64 but the layer's "
                                                 "dtype is float32"),
        ((np.zeros((2, 5, 12), f32),), {}, ValueError,
         "x has embedding dim 12 but the layer expects 16"),
        ((np.zeros((1, 2, 5, 16), f32),), {}, ValueError, r"x has shape \(1, 2, 5, 16\)"),
        ((x, ctx[..., :10]), {}, ValueError, "context has embedding dim 10"),
        ((x, ctx[0]), {}, ValueError, "context has 2 dims but x has 3"),
        ((x, ctx[:1]), {}, ValueError, "context has batch size 1 but x has 2"),
        ((x, ctx.astype(int)), {}, TypeError, "context has dtype"),
        ((x,), {"mask": [[True]]}, TypeError, "mask must be a numpy.ndarray"),
        ((x,), {"mask": np.ones((5, 5), np.int32)}, TypeError, "mask has dtype int32"),
        ((x,), {"mask": np.ones((5, 4), bool)}, ValueError,
         r"mask has shape \(5, 4\); expected a shape broadcastable to \(B, H, Nq, Nk\) = "
         r"\(2, 2, 5, 5\)"),
        ((x[0],), {"mask": np.ones((3, 5, 5), bool)}, ValueError,
         r"broadcastable to \(H, Nq, Nk\) = \(2, 5, 5\)"),
        ((x,), {"key_padding_mask": np.ones((2, 5))}, TypeError,
         "key_padding_mask has dtype float64; expected bool"),
        ((x,), {"key_padding_mask": [True] * 5}, TypeError,
         "key_padding_mask must be a numpy.ndarray"),
        ((x, ctx), {"key_padding_mask": np.ones((2, 5), bool)}, ValueError,
         r"key_padding_mask has shape \(2, 5\); expected \(B, Nk\) = \(2, 7\)"),
        ((x[0],), {"key_padding_mask": np.ones((1, 5), bool)}, ValueError,
         r"expected \(Nk,\) = \(5,\)"),
        ((x,), {"causal": "diagonal"}, ValueError, "causal must be"),
        ((x,), {"need_weights": 1}, TypeError, "need_weights must be a bool"),
        ((x,), {"kv_cache": {}}, TypeError, "kv_cache must be a fastattn.KVCache"),
        ((x, ctx), {"kv_cache": cache}, ValueError, "kv_cache is for self-attention"),
        ((x,), {"kv_cache": cache, "key_padding_mask": np.ones((2, 5), bool)}, ValueError,
         "key_padding_mask cannot be combined with kv_cache"),
        ((x,), {"kv_cache": fastattn.KVCache(2, 1, 8, 8)}, ValueError,
         r"kv_cache has \(batch, kv_heads, head_dim, dtype\) = \(2, 1, 8, float32\)"),
        ((x,), {"kv_cache": fastattn.KVCache(2, 2, 8, 8, dtype=np.float64)}, ValueError,
         "kv_cache has"),
        ((x,), {"kv_cache": fastattn.KVCache(2, 2, 8, 8, value_dim=4)}, ValueError,
         "kv_cache has value_dim 4"),
    ]


@pytest.mark.parametrize("args, kwargs, exc, match", _call_errors())
def test_call_errors(args, kwargs, exc, match):
    layer = MultiHeadAttention(16, 2, rng=0)
    with pytest.raises(exc, match=match):
        layer(*args, **kwargs)


def test_context_required_when_dims_differ():
    layer = MultiHeadAttention(16, 2, context_dim=8, rng=0)
    with pytest.raises(ValueError, match="context is required"):
        layer(np.zeros((1, 3, 16), np.float32))


# ---------------------------------------------------------------------------
# against torch.nn.MultiheadAttention
# ---------------------------------------------------------------------------

@pytest.fixture
def torch():
    return require("torch", reason="torch is an optional test oracle")


def _torch_module(torch, sd_layer, **kw):
    m = torch.nn.MultiheadAttention(sd_layer.embed_dim, sd_layer.num_heads, batch_first=True,
                                    bias=sd_layer.bias, **kw)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in sd_layer.to_torch_state_dict().items()})
    return m.eval()


def _torch_state_dict(module):
    return {k: t.detach().cpu().numpy() for k, t in module.state_dict().items()}


def _compare_with_torch(ours, theirs, y64):
    """Ours within float32 accuracy of torch's, and at most twice as far from
    the float64 result as torch's (plus support/compare.py's floor)."""
    scale = max(1.0, float(np.abs(y64).max()))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-5 * scale)
    assert_matches("out vs torch", ours, y64, theirs, np.float32, 1024)


TORCH_CASES = [
    # (attn_mask kind, key padding, causal, bias)
    (None, None, False, True),
    (None, None, False, False),
    ("bool", None, False, True),
    ("float", None, False, True),
    (None, "suffix", False, True),
    (None, "holes", False, True),
    ("bool", "holes", False, True),
    (None, None, True, True),
    (None, "suffix", True, True),
]


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: "-".join(str(p) for p in c))
def test_matches_torch_self_attention(torch, rng, case):
    mask_kind, pad_kind, causal, bias = case
    B, N, E, H = 3, 21, 64, 4
    module = torch.nn.MultiheadAttention(E, H, batch_first=True, bias=bias).eval()
    with torch.no_grad():                        # torch initializes biases to 0
        for p in module.parameters():
            if p.ndim == 1:
                p.normal_()
    layer = MultiHeadAttention.from_torch_state_dict(_torch_state_dict(module), H)
    x = randn(rng, (B, N, E))
    ours_mask = None                              # fastattn polarity: True = may attend
    torch_kw = {}
    if mask_kind == "bool":
        ours_mask = rng.random((N, N)) < 0.8
        ours_mask[:, 0] = True
        torch_kw["attn_mask"] = torch.from_numpy(~ours_mask)  # torch: True = masked out
    elif mask_kind == "float":
        ours_mask = randn(rng, (N, N))
        torch_kw["attn_mask"] = torch.from_numpy(ours_mask)
    if causal:
        tri = np.tril(np.ones((N, N), dtype=bool))
        torch_kw["attn_mask"] = torch.from_numpy(~tri)
        torch_kw["is_causal"] = True
    kpm = None
    if pad_kind is not None:
        kpm = _padding(rng, B, N, pad_kind)
        torch_kw["key_padding_mask"] = torch.from_numpy(~kpm)   # inverted polarity
    y, w = layer(x, mask=ours_mask, key_padding_mask=kpm, causal=causal, need_weights=True)
    tx = torch.from_numpy(x)
    with torch.no_grad():
        ty, tw = module(tx, tx, tx, need_weights=True, average_attn_weights=False,
                        **torch_kw)
    y64, w64, _ = explicit_layer(layer, x, mask=ours_mask, key_padding_mask=kpm,
                                 causal=causal)
    _compare_with_torch(y, ty.numpy(), y64)
    np.testing.assert_allclose(w, tw.numpy(), rtol=0, atol=2e-6)


def test_matches_torch_cross_attention_kdim(torch, rng):
    """kdim == vdim != embed_dim: torch stores separate q/k/v weights."""
    B, Nq, Nk, E, C, H = 2, 6, 15, 32, 20, 4
    module = torch.nn.MultiheadAttention(E, H, batch_first=True, kdim=C, vdim=C).eval()
    sd = _torch_state_dict(module)
    assert "q_proj_weight" in sd
    layer = MultiHeadAttention.from_torch_state_dict(sd, H)
    assert layer.context_dim == C
    x, ctx = randn(rng, (B, Nq, E)), randn(rng, (B, Nk, C))
    kpm = _padding(rng, B, Nk, "holes")
    y = layer(x, ctx, key_padding_mask=kpm)
    with torch.no_grad():
        ty, _ = module(torch.from_numpy(x), torch.from_numpy(ctx), torch.from_numpy(ctx),
                       key_padding_mask=torch.from_numpy(~kpm), need_weights=False)
    y64, _, _ = explicit_layer(layer, x, ctx, key_padding_mask=kpm)
    _compare_with_torch(y, ty.numpy(), y64)


def test_loads_from_torch_transformer_layer(torch, rng):
    """The loader picks the attention out of a bigger model's state dict."""
    E, H = 64, 8
    block = torch.nn.TransformerEncoderLayer(E, H, dim_feedforward=32, batch_first=True,
                                             dropout=0.0).eval()
    # the tensors of state_dict() go in as they are (numpy.asarray converts them)
    layer = MultiHeadAttention.from_torch_state_dict(block.state_dict(), H,
                                                     prefix="self_attn.")
    x = randn(rng, (2, 9, E))
    tx = torch.from_numpy(x)
    with torch.no_grad():
        ty, _ = block.self_attn(tx, tx, tx, need_weights=False)
    y64, _, _ = explicit_layer(layer, x)
    _compare_with_torch(layer(x), ty.numpy(), y64)


def test_torch_unbatched_and_float64(torch, rng):
    E, H, N = 32, 2, 7
    module = torch.nn.MultiheadAttention(E, H, batch_first=True).double().eval()
    layer = MultiHeadAttention.from_torch_state_dict(_torch_state_dict(module), H)
    assert layer.dtype == np.float64
    x = randn(rng, (N, E), np.float64)
    kpm = np.array([True] * 5 + [False] * 2)
    tx = torch.from_numpy(x)
    with torch.no_grad():
        ty, _ = module(tx, tx, tx, key_padding_mask=torch.from_numpy(~kpm))
    np.testing.assert_allclose(layer(x, key_padding_mask=kpm), ty.numpy(), rtol=0,
                               atol=1e-12)


def test_torch_round_trip_of_our_weights(torch, rng):
    layer = MultiHeadAttention(48, 6, rng=3)
    randomize_biases(layer, rng)
    module = _torch_module(torch, layer)
    x = randn(rng, (2, 10, 48))
    with torch.no_grad():
        ty, _ = module(*(torch.from_numpy(x),) * 3, need_weights=False)
    y64, _, _ = explicit_layer(layer, x)
    _compare_with_torch(layer(x), ty.numpy(), y64)


def test_initialization_scale_like_torch(torch):
    """Our init has the spread of torch's Xavier init of separate projections."""
    E = 256
    torch.manual_seed(0)
    ours = MultiHeadAttention(E, 8, rng=0, context_dim=E + 1)   # separate q/k/v
    module = torch.nn.MultiheadAttention(E, 8, kdim=E + 1, vdim=E + 1)
    sd = _torch_state_dict(module)
    for name, key in (("w_q", "q_proj_weight"), ("w_k", "k_proj_weight")):
        assert abs(ours.parameters()[name].std() / sd[key].std() - 1) < 0.05
