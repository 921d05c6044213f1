"""A multi-head attention layer over NumPy arrays, built on :func:`fastattn.attention`.

The layer is the usual Transformer block ``softmax(Q K^T / sqrt(d) + mask) V``
wrapped in its four linear maps::

    Q = x W_q^T + b_q      K = c W_k^T + b_k      V = c W_v^T + b_v
    y = merge_heads(attention(split_heads(Q), split_heads(K), split_heads(V))) W_o^T + b_o

with ``c = x`` for self-attention and ``c = context`` for cross-attention.

Why it is cheap: each projection is one matrix product over all ``B * N``
tokens (for self-attention Q, K and V come out of a single product with the
three weights stacked), the heads are split by reshaping the ``(B, N, H * D)``
result to ``(B, N, H, D)`` and handing ``transpose(0, 2, 1, 3)`` views to the
kernel, which reads any strides, and the kernel writes its result straight
into a ``(B, N, H, D)`` buffer through a transposed ``out=`` view, so that
merging the heads before ``W_o`` is a reshape.  No transposing copy is made.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _checks, weights_io
from .api import attention
from .kvcache import KVCache

__all__ = ["MultiHeadAttention"]

Array = NDArray[Any]


def _check_dtype(dtype: DTypeLike) -> np.dtype[Any]:
    return _checks.float_dtype(dtype, half=False, not_a_dtype="float32 or float64")


def _xavier_uniform(rng: np.random.Generator, fan_out: int, fan_in: int,
                    dtype: np.dtype[Any]) -> Array:
    # Glorot & Bengio (2010): U(-a, a) with a = sqrt(6 / (fan_in + fan_out)).
    # Drawn in float64 and rounded, so float32 and float64 layers built from
    # the same seed hold the same weights up to that rounding.
    a = math.sqrt(6.0 / (fan_in + fan_out)) if fan_in + fan_out else 0.0
    return rng.uniform(-a, a, size=(fan_out, fan_in)).astype(dtype)


def _param(name: str, doc: str) -> Any:
    """A property reading and writing the parameter ``name`` in place."""
    def fget(self: MultiHeadAttention) -> Optional[Array]:
        return self._views()[name]

    def fset(self: MultiHeadAttention, value: ArrayLike) -> None:
        self._set_param(name, value)

    return property(fget, fset, doc=doc)


class MultiHeadAttention:
    """Multi-head attention with learned projections, for self- and
    cross-attention, grouped-query attention and incremental decoding.

    Parameters
    ----------
    embed_dim : int
        Model width ``E``: the last dim of ``x`` and of the output.
    num_heads : int
        Query heads ``H``; ``E % H == 0`` and each head has ``D = E // H``
        features.
    num_kv_heads : int or None
        Key/value heads ``Hkv`` (grouped-query attention, ``H % Hkv == 0``;
        ``1`` is multi-query attention).  Default ``num_heads``.
    bias : bool
        Whether the four projections have a bias (default True).
    dtype : float32 or float64
        Dtype of the weights, of the inputs the layer accepts and of its
        outputs.  Inputs of another dtype raise ``TypeError``; nothing is
        cast silently.
    rng : numpy.random.Generator, int or None
        Source of the initial weights; an int is a seed, so the same seed
        gives the same layer.  ``None`` draws fresh OS entropy, as
        ``numpy.random.default_rng()`` does.
    context_dim : int or None
        Feature dim of ``context`` in cross-attention (PyTorch's
        ``kdim == vdim``); default ``embed_dim``.

    Notes
    -----
    The weights are stored in PyTorch's ``(out_features, in_features)``
    orientation and applied as ``x @ w.T + b``, so PyTorch weights load
    without transposes (``C = context_dim``):

    - ``w_q`` ``(H * D, E)`` and ``b_q`` ``(H * D,)``
    - ``w_k`` ``(Hkv * D, C)`` and ``b_k`` ``(Hkv * D,)``
    - ``w_v`` ``(Hkv * D, C)`` and ``b_v`` ``(Hkv * D,)``
    - ``w_o`` ``(E, H * D)`` and ``b_o`` ``(E,)``

    The attributes are writable views of the layer's storage (the three
    input projections share one buffer when ``C == E``, so that
    self-attention projects in one matrix product): edit them in place, or
    assign an array of the same shape, which is copied in.  The biases are
    None when ``bias=False``.  Initialization: each weight matrix is drawn
    Xavier-uniform (Glorot) from ``U(-a, a)``, ``a = sqrt(6 / (fan_in +
    fan_out))``, and the biases are zero.

    Examples
    --------
    >>> layer = MultiHeadAttention(512, 8, rng=0)
    >>> x = np.random.default_rng(1).standard_normal((2, 100, 512), dtype=np.float32)
    >>> y = layer(x, causal=True)                        # (2, 100, 512)
    >>> y, w = layer(x, need_weights=True)               # w: (2, 8, 100, 100)
    """

    def __init__(self, embed_dim: int, num_heads: int, *, num_kv_heads: Optional[int] = None,
                 bias: bool = True, dtype: DTypeLike = np.float32, rng: Any = None,
                 context_dim: Optional[int] = None) -> None:
        E = _checks.integer("embed_dim", embed_dim, 1)
        H = _checks.integer("num_heads", num_heads, 1)
        if E % H:
            raise ValueError(f"embed_dim ({E}) must be divisible by num_heads ({H})")
        Hkv = H if num_kv_heads is None else _checks.integer("num_kv_heads", num_kv_heads, 1)
        if H % Hkv:
            raise ValueError(f"num_heads ({H}) must be a multiple of num_kv_heads ({Hkv})")
        C = E if context_dim is None else _checks.integer("context_dim", context_dim, 1)
        has_bias = _checks.boolean("bias", bias)
        dt = _check_dtype(dtype)
        gen = _checks.generator(rng)
        self._allocate(E, H, Hkv, C, has_bias, dt)
        # Xavier-uniform weights, zero biases (np.empty above: set every entry)
        nq, nkv = H * self.head_dim, Hkv * self.head_dim
        self._w_x[...] = _xavier_uniform(gen, nq, E, dt)
        self._w_c[:nkv] = _xavier_uniform(gen, nkv, C, dt)
        self._w_c[nkv:] = _xavier_uniform(gen, nkv, C, dt)
        self._w_o[...] = _xavier_uniform(gen, E, nq, dt)
        if self._b_in is not None and self._b_o is not None:
            self._b_in[...] = 0
            self._b_o[...] = 0

    def _allocate(self, E: int, H: int, Hkv: int, C: int, bias: bool,
                  dt: np.dtype[Any]) -> None:
        """Set the dims and allocate (uninitialized) parameter storage."""
        self.embed_dim = E
        self.num_heads = H
        self.num_kv_heads = Hkv
        self.head_dim = D = E // H
        self.context_dim = C
        self.dtype = dt
        self.bias = bias
        nq, nkv = H * D, Hkv * D
        # The input projections are row blocks of one (out, in) matrix per
        # input width, so self-attention is one GEMM and cross-attention two
        # (queries from x, keys and values from the context).
        self._w_in: Optional[Array]
        if C == E:
            self._w_in = np.empty((nq + 2 * nkv, E), dtype=dt)
            self._w_x: Array = self._w_in[:nq]
            self._w_c: Array = self._w_in[nq:]
        else:
            self._w_in = None
            self._w_x = np.empty((nq, E), dtype=dt)
            self._w_c = np.empty((2 * nkv, C), dtype=dt)
        self._w_o: Array = np.empty((E, nq), dtype=dt)
        self._b_in: Optional[Array] = np.empty(nq + 2 * nkv, dtype=dt) if bias else None
        self._b_o: Optional[Array] = np.empty(E, dtype=dt) if bias else None

    # ------------------------------------------------------------------
    # parameters
    # ------------------------------------------------------------------

    def _views(self) -> Dict[str, Optional[Array]]:
        nq = self.num_heads * self.head_dim
        nkv = self.num_kv_heads * self.head_dim
        views: Dict[str, Optional[Array]] = {
            "w_q": self._w_x,
            "w_k": self._w_c[:nkv],
            "w_v": self._w_c[nkv:],
            "w_o": self._w_o,
        }
        b_in = self._b_in
        if b_in is not None:
            views.update(b_q=b_in[:nq], b_k=b_in[nq:nq + nkv], b_v=b_in[nq + nkv:],
                         b_o=self._b_o)
        else:
            views.update(b_q=None, b_k=None, b_v=None, b_o=None)
        return views

    def _set_param(self, name: str, value: ArrayLike) -> None:
        dst = self._views()[name]
        if dst is None:
            raise AttributeError(f"{name}: the layer was built with bias=False")
        src = np.asarray(value)
        if src.shape != dst.shape:
            raise ValueError(f"{name} must have shape {dst.shape}, got {src.shape}")
        if src.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers, got dtype {src.dtype}")
        np.copyto(dst, src, casting="same_kind")

    w_q = _param("w_q", "Query projection, shape (H * D, E).")
    w_k = _param("w_k", "Key projection, shape (Hkv * D, context_dim).")
    w_v = _param("w_v", "Value projection, shape (Hkv * D, context_dim).")
    w_o = _param("w_o", "Output projection, shape (E, H * D).")
    b_q = _param("b_q", "Query bias, shape (H * D,), or None.")
    b_k = _param("b_k", "Key bias, shape (Hkv * D,), or None.")
    b_v = _param("b_v", "Value bias, shape (Hkv * D,), or None.")
    b_o = _param("b_o", "Output bias, shape (E,), or None.")

    def parameters(self) -> Dict[str, Array]:
        """The weights (and biases, if any) by name, as a dict of the
        layer's own writable views: ``w_q, w_k, w_v, w_o[, b_q, b_k, b_v, b_o]``."""
        return {k: v for k, v in self._views().items() if v is not None}

    def __repr__(self) -> str:
        extra = "" if self.context_dim == self.embed_dim else f", context_dim={self.context_dim}"
        return (f"MultiHeadAttention(embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"num_kv_heads={self.num_kv_heads}, bias={self.bias}, "
                f"dtype={self.dtype.name}{extra})")

    # ------------------------------------------------------------------
    # PyTorch state dicts
    # ------------------------------------------------------------------

    @classmethod
    def from_torch_state_dict(cls, state_dict: Any, num_heads: int, *, prefix: str = "",
                              dtype: Optional[DTypeLike] = None) -> MultiHeadAttention:
        """Build a layer from the state dict of a ``torch.nn.MultiheadAttention``.

        Parameters
        ----------
        state_dict : mapping of str to array-like
            The module's ``state_dict()``, with torch tensors, NumPy arrays
            or anything ``numpy.asarray`` accepts as values (tensors are
            read by :func:`fastattn.weights_io.to_numpy`; torch is not
            imported otherwise).  Recognized keys: ``in_proj_weight``
            ``(3E, E)``, or ``q_proj_weight (E, E)``, ``k_proj_weight (E,
            kdim)`` and ``v_proj_weight (E, vdim)`` (the form PyTorch uses
            when ``kdim`` or ``vdim`` differ from ``embed_dim``; here they
            must be equal, since ``context`` feeds both); ``in_proj_bias
            (3E,)``; ``out_proj.weight (E, E)``; ``out_proj.bias (E,)``.
            A module built with ``bias=False`` has no bias keys.
        num_heads : int
            The module's ``num_heads`` (the state dict does not record it).
        prefix : str
            Prefix of the keys, e.g. ``"encoder.layers.0.self_attn."`` for
            a module inside a larger model's state dict; keys without it are
            ignored.
        dtype : float32, float64 or None
            The layer's dtype; default the dtype of the projection weights
            when it is float32 or float64, else float32.

        Returns
        -------
        MultiHeadAttention
            A layer computing what the module computes with
            ``batch_first=True``.

        Raises ``ValueError`` for missing, unexpected or inconsistently
        shaped keys, and for ``add_bias_kv`` modules (``bias_k``,
        ``bias_v``), which this layer does not implement.
        """
        p = weights_io.multihead_attention_weights(state_dict, prefix)
        E = p.w_q.shape[0]
        if dtype is None:
            dtype = p.w_q.dtype if p.w_q.dtype in (np.float32, np.float64) else np.float32
        H = _checks.integer("num_heads", num_heads, 1)
        if E % H:
            raise ValueError(f"num_heads ({H}) must divide the embedding dim ({E}) "
                             "of the state dict")
        layer = cls.__new__(cls)   # every parameter is set below: no random init
        layer._allocate(E, H, H, p.w_k.shape[1], p.b_in is not None, _check_dtype(dtype))
        layer.w_q, layer.w_k, layer.w_v, layer.w_o = p.w_q, p.w_k, p.w_v, p.w_o
        if p.b_in is not None:
            layer.b_q, layer.b_k, layer.b_v = p.b_in[:E], p.b_in[E:2 * E], p.b_in[2 * E:]
            layer.b_o = p.b_o
        return layer

    def to_torch_state_dict(self) -> Dict[str, Array]:
        """The weights as a ``torch.nn.MultiheadAttention`` state dict of
        NumPy arrays (copies): ``in_proj_weight`` or, when
        ``context_dim != embed_dim``, ``q/k/v_proj_weight``, plus
        ``in_proj_bias``, ``out_proj.weight`` and ``out_proj.bias``.  Load
        it into torch with ``{k: torch.from_numpy(v) for k, v in ...}``.
        PyTorch's module has no grouped-query attention, so this raises
        ``ValueError`` when ``num_kv_heads != num_heads``."""
        if self.num_kv_heads != self.num_heads:
            raise ValueError(f"num_kv_heads ({self.num_kv_heads}) != num_heads "
                             f"({self.num_heads}): torch.nn.MultiheadAttention has no "
                             "grouped-query attention")
        return weights_io.multihead_attention_state_dict(self._views(),
                                                         packed=self._w_in is not None)

    def make_kv_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty :class:`fastattn.KVCache` that fits this layer
        (``num_kv_heads``, ``head_dim``, ``dtype``) for ``batch`` sequences
        of up to ``max_len`` tokens."""
        return KVCache(batch, self.num_kv_heads, max_len, self.head_dim, dtype=self.dtype)

    # ------------------------------------------------------------------
    # forward
    # ------------------------------------------------------------------

    def _check_tokens(self, name: str, a: object, dim: int,
                      ndim: Optional[int] = None) -> Array:
        t = _checks.ndarray(name, a)
        _checks.same_dtype(name, t, self.dtype, "the layer's dtype is")
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

    def _batched_inputs(self, x: object, context: object
                        ) -> Tuple[Array, Optional[Array], bool]:
        """x and context as (B, N, features) arrays, and whether x was batched."""
        xs = self._check_tokens("x", x, self.embed_dim)
        batched = xs.ndim == 3
        if not batched:
            xs = xs[None]
        if context is None:
            if self.context_dim != self.embed_dim:
                raise ValueError(f"context is required: the layer's context_dim "
                                 f"({self.context_dim}) differs from embed_dim "
                                 f"({self.embed_dim})")
            return xs, None, batched
        cs = self._check_tokens("context", context, self.context_dim,
                                ndim=3 if batched else 2)
        if not batched:
            cs = cs[None]
        if cs.shape[0] != xs.shape[0]:
            raise ValueError(f"context has batch size {cs.shape[0]} but x has {xs.shape[0]}")
        return xs, cs, batched

    def _check_cache(self, kv_cache: object, B: int, context: Optional[Array],
                     key_padding_mask: object) -> KVCache:
        """kv_cache, which must fit this layer and a self-attention call of batch B."""
        if not isinstance(kv_cache, KVCache):
            raise TypeError(f"kv_cache must be a fastattn.KVCache, got "
                            f"{type(kv_cache).__name__}")
        if context is not None:
            raise ValueError("kv_cache is for self-attention; with context, project "
                             "the context once and attend to it without a cache")
        if key_padding_mask is not None:
            raise ValueError("key_padding_mask cannot be combined with kv_cache: the "
                             "cache's row lengths say which keys exist")
        Hkv, D = self.num_kv_heads, self.head_dim
        expected = (B, Hkv, D, self.dtype)
        got = (kv_cache.batch, kv_cache.kv_heads, kv_cache.k.shape[3], kv_cache.dtype)
        if got != expected:
            raise ValueError(
                f"kv_cache has (batch, kv_heads, head_dim, dtype) = "
                f"({got[0]}, {got[1]}, {got[2]}, {got[3]}) but this call needs "
                f"({B}, {Hkv}, {D}, {self.dtype}), as layer.make_kv_cache({B}, max_len) "
                f"gives")
        if kv_cache.v.shape[3] != D:
            raise ValueError(f"kv_cache has value_dim {kv_cache.v.shape[3]} but the "
                             f"layer's head_dim is {D}")
        return kv_cache

    def _project(self, a: Array, w: Array, b: Optional[Array]) -> Array:
        """``a @ w.T + b`` over all tokens, as one GEMM: (B, N, in) -> (B, N, out)."""
        B, N, _ = a.shape
        y: Array = np.matmul(a.reshape(B * N, a.shape[2]), w.T)
        if b is not None:
            y += b
        return y.reshape(B, N, w.shape[0])

    def _split(self, y: Array, heads: int) -> Array:
        """(B, N, heads * D) -> (B, heads, N, D), a view."""
        B, N, _ = y.shape
        heads_view: Array = y.reshape(B, N, heads, self.head_dim).transpose(0, 2, 1, 3)
        return heads_view

    def _qkv(self, x: Array, context: Optional[Array]) -> Tuple[Array, Array, Array]:
        """The heads of q, k and v as (B, heads, N, D) views of the
        projections' output: one GEMM for all three in self-attention."""
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        nq = H * D
        if context is None and self._w_in is not None:
            qkv = self._project(x, self._w_in, self._b_in)
            y_q, y_kv = qkv[..., :nq], qkv[..., nq:]
        else:
            b_in = self._b_in
            y_q = self._project(x, self._w_x, None if b_in is None else b_in[:nq])
            y_kv = self._project(x if context is None else context, self._w_c,
                                 None if b_in is None else b_in[nq:])
        return (self._split(y_q, H), self._split(y_kv[..., :Hkv * D], Hkv),
                self._split(y_kv[..., Hkv * D:], Hkv))

    def _masks(self, mask: object, key_padding_mask: object, kv_cache: Optional[KVCache],
               scores: Tuple[int, int, int], batched: bool, causal: Union[bool, str, None]
               ) -> Tuple[Optional[Array], Optional[NDArray[np.int64]]]:
        """(mask, kv_lengths) for the kernel; ``scores`` is (B, Nq, Nk)."""
        B, Nq, Nk = scores
        if mask is not None:
            if kv_cache is not None:
                # the keys held after this call's append
                Nk = int(kv_cache.lengths.max(initial=0)) + Nq
                mask = kv_cache.mask_prefix(mask, Nk)
            full = (B, self.num_heads, Nq, Nk)
            names, shown = ("(B, H, Nq, Nk)", full) if batched else ("(H, Nq, Nk)", full[1:])
            mask = _checks.mask(mask, full, names, shown)
        if key_padding_mask is not None:
            return self._apply_padding(key_padding_mask, mask, B, scores[2], batched, causal)
        return mask, None

    @_checks.entry("pass t.numpy() (fastattn.torch.as_numpy(t) also reads bfloat16 "
                   "tensors), a NumPy view of a CPU tensor's memory")
    def __call__(self, x: Array, context: Optional[Array] = None, *,
                 mask: Optional[Array] = None, key_padding_mask: Optional[Array] = None,
                 causal: Union[bool, str] = False, need_weights: bool = False,
                 kv_cache: Optional[KVCache] = None, precision: str = "highest") -> Any:
        """Apply the layer.

        Parameters
        ----------
        x : ndarray, shape (B, Nq, E) or (Nq, E)
            The tokens whose queries are computed (and, without
            ``context``, whose keys and values too).  An unbatched (2-D)
            ``x`` gives an unbatched result.
        context : ndarray or None, shape (B, Nk, context_dim) or (Nk, context_dim)
            Keys and values come from here (cross-attention); default
            ``x`` (self-attention).
        mask : ndarray or None
            Broadcastable to ``(B, H, Nq, Nk)``, e.g. ``(Nq, Nk)``.  bool:
            True = the query may attend the key; float: added to the scaled
            scores (``-inf`` hides a key).  Note that PyTorch's 3-D
            ``(B * H, Nq, Nk)`` masks are a different layout; reshape them
            to ``(B, H, Nq, Nk)``.
        key_padding_mask : bool ndarray or None, shape (B, Nk) or (Nk,)
            **True = a real key** that may be attended, False = padding,
            the same polarity as ``mask``.  PyTorch's
            ``nn.MultiheadAttention`` uses the opposite (True = ignore):
            pass ``~key_padding_mask`` from PyTorch code.  Combined with
            ``mask`` by broadcasting as ``(B, 1, 1, Nk)``; when it only
            pads the ends of the rows and ``causal`` is off it is given to
            the kernel as per-row key counts, so padding keys are not even
            read.
        causal : bool or str
            As in :func:`fastattn.attention`: True (bottom-right aligned:
            the last query sees every key) or ``"top_left"`` (PyTorch's
            ``is_causal``).  The two agree for self-attention without a
            cache.
        need_weights : bool
            Also return the attention matrix per head, ``(B, H, Nq, Nk)``
            (``(H, Nq, Nk)`` unbatched), computed by the C core; hidden
            keys get weight exactly 0.
        kv_cache : fastattn.KVCache or None
            Incremental decoding (self-attention only): the keys and values
            of ``x`` are appended to the cache, and the queries of ``x``
            attend to everything cached, as the last ``Nq`` positions of
            each row.  With ``causal=True``, feeding a sequence through the
            cache in pieces gives the result of one causal call on the
            whole sequence.  ``layer.make_kv_cache(batch, max_len)`` makes
            one of the right shape.  ``mask`` then spans the cached keys
            (all tokens held after the append) or ``max_len`` keys, as in
            ``KVCache.attend``; ``key_padding_mask`` is not accepted (use
            the cache's own row lengths).
        precision : {"highest", "bf16", "bf16x3"}
            Arithmetic of the attention's matrix products for a float32
            layer, as in :func:`fastattn.attention` (the projections are
            NumPy's and stay float32).

        Returns
        -------
        out : ndarray, shape (B, Nq, E) or (Nq, E), the layer's dtype
        weights : ndarray, shape (B, H, Nq, Nk) or (H, Nq, Nk), only if ``need_weights``

        Notes
        -----
        A query that sees no key at all (everything masked) gets an
        attention output of exactly 0, so its result is ``b_o``; PyTorch
        returns NaN there.
        """
        x, context, batched = self._batched_inputs(x, context)
        _checks.boolean("need_weights", need_weights)
        _checks.precision(precision, x)     # before the cache is appended to
        B, Nq = x.shape[:2]
        if kv_cache is not None:
            kv_cache = self._check_cache(kv_cache, B, context, key_padding_mask)
        q, k, v = self._qkv(x, context)
        mask, kv_lengths = self._masks(mask, key_padding_mask, kv_cache, (B, Nq, k.shape[2]),
                                       batched, causal)

        # attention, written straight into the (B, Nq, H, D) merge buffer
        H, D = self.num_heads, self.head_dim
        merged = np.empty((B, Nq, H, D), dtype=self.dtype)
        out_view = merged.transpose(0, 2, 1, 3)
        if kv_cache is None:
            res = attention(q, k, v, mask=mask, causal=causal, kv_lengths=kv_lengths,
                            out=out_view, return_weights=need_weights, precision=precision)
        else:
            kv_cache.append(k, v)
            res = kv_cache.attend(q, causal=causal, mask=mask, out=out_view,
                                  return_weights=need_weights, precision=precision)
        weights = res[1] if need_weights else None

        # merge heads (a reshape) and the output projection
        y = self._project(merged.reshape(B, Nq, H * D), self._w_o, self._b_o)
        if not batched:
            y = y[0]
            if weights is not None:
                weights = weights[0]
        return (y, weights) if need_weights else y

    def _apply_padding(self, key_padding_mask: object, mask: Optional[Array], B: int,
                       Nk: int, batched: bool, causal: Union[bool, str, None]
                       ) -> Tuple[Optional[Array], Optional[NDArray[np.int64]]]:
        """Fold key_padding_mask into (mask, kv_lengths)."""
        kpm = _checks.ndarray("key_padding_mask", key_padding_mask)
        if kpm.dtype != np.bool_:
            raise TypeError(f"key_padding_mask has dtype {kpm.dtype}; expected bool "
                            "(True = a real key that may be attended, False = padding)")
        want = (B, Nk) if batched else (Nk,)
        if kpm.shape != want:
            names = "(B, Nk)" if batched else "(Nk,)"
            raise ValueError(f"key_padding_mask has shape {kpm.shape}; expected {names} = "
                             f"{want}")
        if not batched:
            kpm = kpm[None]
        lengths = kpm.sum(axis=1)
        if np.array_equal(kpm, np.arange(Nk) < lengths[:, None]):
            # Padding only at the ends of the rows: no mask array at all.
            if (lengths == Nk).all():
                return mask, None
            if causal is None or (isinstance(causal, (bool, np.bool_)) and not causal):
                # Per-row key counts; with causal they would also move the
                # bottom-right diagonal, so causal keeps the mask form.
                return mask, lengths.astype(np.int64)
        keep = kpm[:, None, None, :]                # (B, 1, 1, Nk), a view
        if mask is None:
            return keep, None
        if mask.dtype == np.bool_:
            return mask & keep, None
        return np.where(keep, mask, mask.dtype.type(-np.inf)), None
