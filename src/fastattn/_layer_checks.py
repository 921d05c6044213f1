"""The checks of :class:`fastattn.MultiHeadAttention`'s call: its tokens,
its KV cache and its masks, each against the layer's dims and dtype.
Errors follow ``_checks``: ``TypeError`` for a wrong type or dtype,
``ValueError`` for a wrong shape or value, naming the argument."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Tuple

import numpy as np
from numpy.typing import DTypeLike, NDArray

from . import _checks, weights_io
from .kvcache import KVCache

if TYPE_CHECKING:
    from .layer import MultiHeadAttention

Array = NDArray[Any]


def dims(embed_dim: object, num_heads: object, num_kv_heads: object,
         context_dim: object) -> Tuple[int, int, int, int]:
    """The layer's (E, H, Hkv, C), the defaults filled in."""
    E = _checks.integer("embed_dim", embed_dim, 1)
    H = _checks.integer("num_heads", num_heads, 1)
    if E % H:
        raise ValueError(f"embed_dim ({E}) must be divisible by num_heads ({H})")
    Hkv = H if num_kv_heads is None else _checks.integer("num_kv_heads", num_kv_heads, 1)
    if H % Hkv:
        raise ValueError(f"num_heads ({H}) must be a multiple of num_kv_heads ({Hkv})")
    C = E if context_dim is None else _checks.integer("context_dim", context_dim, 1)
    return E, H, Hkv, C


def layer_dtype(dtype: DTypeLike) -> np.dtype[Any]:
    """A layer's dtype: float32 or float64."""
    return _checks.float_dtype(dtype, half=False, not_a_dtype="float32 or float64")


def torch_dims(p: weights_io.MultiheadAttentionWeights, num_heads: object,
               dtype: Optional[DTypeLike]) -> Tuple[int, int, np.dtype[Any]]:
    """(E, H, dtype) of a layer loaded from a torch module's weights ``p``;
    the dtype defaults to that of the weights when float32 or float64,
    else float32."""
    E = p.w_q.shape[0]
    if dtype is None:
        dtype = p.w_q.dtype if p.w_q.dtype in (np.float32, np.float64) else np.float32
    H = _checks.integer("num_heads", num_heads, 1)
    if E % H:
        raise ValueError(f"num_heads ({H}) must divide the embedding dim ({E}) "
                         "of the state dict")
    return E, H, layer_dtype(dtype)


def tokens(layer: MultiHeadAttention, name: str, a: object, dim: int,
           ndim: Optional[int] = None) -> Array:
    """``a``, a (B, N, dim) or (N, dim) array of the layer's dtype (with
    ``ndim`` given, of that many dims: x's)."""
    t = _checks.ndarray(name, a)
    if not (t.dtype.name == "bfloat16" and layer.dtype == np.float32):
        # a float32 layer also takes bfloat16 tokens (bfloat16 end to end)
        _checks.same_dtype(name, t, layer.dtype, "the layer's dtype is")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"{name} has {t.ndim} dims but x has {ndim}; both are batched "
                         "(B, N, features) or both unbatched (N, features)")
    if t.ndim not in (2, 3):
        raise ValueError(f"{name} has shape {t.shape}; expected (B, N, {dim}) "
                         f"or (N, {dim})")
    if t.shape[-1] != dim:
        what = "the layer expects" if name == "x" else "the layer's context_dim is"
        raise ValueError(f"{name} has embedding dim {t.shape[-1]} but {what} {dim}")
    return t


def batched_inputs(layer: MultiHeadAttention, x: object, context: object
                   ) -> Tuple[Array, Optional[Array], bool]:
    """x and context as (B, N, features) arrays, and whether x was batched."""
    xs = tokens(layer, "x", x, layer.embed_dim)
    batched = xs.ndim == 3
    if not batched:
        xs = xs[None]
    if context is None:
        if layer.context_dim != layer.embed_dim:
            raise ValueError(f"context is required: the layer's context_dim "
                             f"({layer.context_dim}) differs from embed_dim "
                             f"({layer.embed_dim})")
        return xs, None, batched
    cs = tokens(layer, "context", context, layer.context_dim, ndim=3 if batched else 2)
    if not batched:
        cs = cs[None]
    if cs.shape[0] != xs.shape[0]:
        raise ValueError(f"context has batch size {cs.shape[0]} but x has {xs.shape[0]}")
    if cs.dtype != xs.dtype:
        raise TypeError(f"context has dtype {cs.dtype} but x has {xs.dtype}")
    return xs, cs, batched


PROJECTIONS = ("float32", "bfloat16", "int8")


def projections(layer: MultiHeadAttention, value: object, x: Array) -> Optional[str]:
    """The call's ``projections`` (None: NumPy's products in the layer's
    dtype), which bfloat16 tokens require to be packed (default bfloat16)."""
    if value is None:
        return "bfloat16" if x.dtype.name == "bfloat16" else None
    if not isinstance(value, str) or value not in PROJECTIONS:
        raise ValueError(f"projections must be None or one of {list(PROJECTIONS)}, "
                         f"got {value!r}")
    if layer.dtype != np.float32:
        raise ValueError(f"projections={value!r} is for float32 layers; this one is "
                         f"{layer.dtype}")
    return value


def cache(layer: MultiHeadAttention, kv_cache: object, B: int, context: Optional[Array],
          key_padding_mask: object) -> KVCache:
    """kv_cache, which must fit the layer and a self-attention call of batch B."""
    if not isinstance(kv_cache, KVCache):
        raise TypeError(f"kv_cache must be a fastattn.KVCache, got "
                        f"{type(kv_cache).__name__}")
    if context is not None:
        raise ValueError("kv_cache is for self-attention; with context, project "
                         "the context once and attend to it without a cache")
    if key_padding_mask is not None:
        raise ValueError("key_padding_mask cannot be combined with kv_cache: the "
                         "cache's row lengths say which keys exist")
    Hkv, D = layer.num_kv_heads, layer.head_dim
    expected = (B, Hkv, D, layer.dtype)
    got = (kv_cache.batch, kv_cache.kv_heads, kv_cache.k.shape[3], kv_cache.dtype)
    if got != expected:
        raise ValueError(
            f"kv_cache has (batch, kv_heads, head_dim, dtype) = "
            f"({got[0]}, {got[1]}, {got[2]}, {got[3]}) but this call needs "
            f"({B}, {Hkv}, {D}, {layer.dtype}), as layer.make_kv_cache({B}, max_len) "
            f"gives")
    if kv_cache.v.shape[3] != D:
        raise ValueError(f"kv_cache has value_dim {kv_cache.v.shape[3]} but the "
                         f"layer's head_dim is {D}")
    return kv_cache


def attn_mask(mask: object, heads: int, kv_cache: Optional[KVCache],
              scores: Tuple[int, int, int], batched: bool) -> Array:
    """``mask``, which must broadcast to (B, H, Nq, Nk), ``scores`` being
    (B, Nq, Nk); with a cache, Nk counts the keys held after this call's
    append, and a mask over ``max_len`` keys is cut to them."""
    B, Nq, Nk = scores
    if kv_cache is not None:
        Nk = int(kv_cache.lengths.max(initial=0)) + Nq
        mask = kv_cache.mask_prefix(mask, Nk)
    full = (B, heads, Nq, Nk)
    names, shown = ("(B, H, Nq, Nk)", full) if batched else ("(H, Nq, Nk)", full[1:])
    return _checks.mask(mask, full, names, shown)


def key_padding_mask(kpm: object, B: int, Nk: int, batched: bool) -> NDArray[np.bool_]:
    """``key_padding_mask`` as a (B, Nk) bool array (True = a real key)."""
    a = _checks.ndarray("key_padding_mask", kpm)
    if a.dtype != np.bool_:
        raise TypeError(f"key_padding_mask has dtype {a.dtype}; expected bool "
                        "(True = a real key that may be attended, False = padding)")
    want = (B, Nk) if batched else (Nk,)
    if a.shape != want:
        names = "(B, Nk)" if batched else "(Nk,)"
        raise ValueError(f"key_padding_mask has shape {a.shape}; expected {names} = "
                         f"{want}")
    return a if batched else a[None]
