"""MultiHeadAttention's packed projections (``projections=``) and bfloat16
tokens end to end: results against the float64 layer, the packed weights'
lifetime (assignment drops them, in-place edits need repack), and argument
errors."""

import numpy as np
import pytest

from fastattn import MultiHeadAttention

from test_layer import assert_layer_accurate, explicit_layer, randn, randomize_biases


def _layer(rng, **kw):
    layer = MultiHeadAttention(64, 4, rng=rng, **kw)
    randomize_biases(layer, rng)
    return layer


@pytest.mark.parametrize("causal", [False, True])
def test_float32_projections_match_float64(rng, causal):
    """projections="float32" runs fastattn.linear: the 2x rule of the layer."""
    layer = _layer(rng, num_kv_heads=2)
    x = randn(rng, (2, 33, 64))
    y = layer(x, causal=causal, projections="float32")
    assert y.dtype == np.float32
    assert_layer_accurate(layer, y, x, causal=causal)


@pytest.mark.parametrize("dtype, rel", [("bfloat16", 0.03), ("int8", 0.06)])
def test_low_precision_projections_near_float64(rng, dtype, rel):
    """bfloat16 (8-bit significands) and int8 (7-bit steps) projections:
    within a few of their steps of the float64 layer, and really rounded
    (float32 is far closer)."""
    layer = _layer(rng)
    x, c = randn(rng, (2, 21, 64)), randn(rng, (2, 17, 64))
    for context in (None, c):
        y64 = explicit_layer(layer, x, context, causal=True)[0]
        y = layer(x, context, causal=True, projections=dtype)
        err = np.abs(y - y64).max()
        assert err <= rel * np.abs(y64).max(), err
        assert np.abs(layer(x, context, causal=True) - y64).max() * 50 < err


def test_bfloat16_tokens_end_to_end(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes provides NumPy's bfloat16")
    layer = _layer(rng)
    x = randn(rng, (2, 25, 64))
    xb = x.astype(ml_dtypes.bfloat16)
    y, w = layer(xb, causal=True, need_weights=True)
    assert y.dtype == xb.dtype and y.shape == (2, 25, 64)
    y64, w64, _ = explicit_layer(layer, xb.astype(np.float32), causal=True)
    assert np.abs(y.astype(np.float64) - y64).max() <= 0.04 * np.abs(y64).max()
    assert np.abs(w.astype(np.float64) - w64).max() <= 0.02
    # int8 projections on bfloat16 tokens; unbatched
    y8 = layer(xb[0], causal=True, projections="int8")
    assert y8.dtype == xb.dtype and y8.shape == (25, 64)
    assert np.abs(y8.astype(np.float64) - y64[0]).max() <= 0.08 * np.abs(y64).max()
    with pytest.raises(TypeError, match="context has dtype"):
        layer(xb, x)


def test_packed_weights_follow_the_parameters(rng):
    layer = _layer(rng)
    x = randn(rng, (1, 9, 64))
    before = layer(x, projections="bfloat16")
    layer.w_o = 2 * layer.w_o            # assignment: packed again
    after = layer(x, projections="bfloat16")
    assert np.abs(after - layer(x)).max() < 0.05 * np.abs(after).max()
    assert np.abs(after - before).max() > 0.1
    layer.w_o[...] *= 0.5                # in place: the packed copy is stale ...
    assert np.array_equal(layer(x, projections="bfloat16"), after)
    layer.repack()                       # ... until repack
    assert np.array_equal(layer(x, projections="bfloat16"), before)


def test_projections_errors(rng):
    layer = _layer(rng)
    x = randn(rng, (1, 5, 64))
    with pytest.raises(ValueError, match="projections must be None or one of"):
        layer(x, projections="int4")
    layer64 = MultiHeadAttention(64, 4, rng=rng, dtype=np.float64)
    with pytest.raises(ValueError, match="for float32 layers"):
        layer64(x.astype(np.float64), projections="bfloat16")
    with pytest.raises(TypeError, match="the layer's dtype is"):
        layer64(x)
