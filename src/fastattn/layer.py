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

from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _checks
from . import _layer_checks as checks
from . import weights_io
from ._padding import fold_key_padding
from ._projections import Projections
from .api import attention
from .kvcache import KVCache

__all__ = ["MultiHeadAttention"]

Array = NDArray[Any]


def _param(name: str, doc: str) -> Any:
    """A property reading and writing the parameter ``name`` in place."""
    def fget(self: MultiHeadAttention) -> Optional[Array]:
        return self._p.views()[name]

    def fset(self: MultiHeadAttention, value: ArrayLike) -> None:
        self._p.set(name, value)

    return property(fget, fset, doc=doc)


def _fold_masks(mask: Optional[Array], kpm: Optional[NDArray[np.bool_]], n_q: int,
                causal: Union[bool, str]
                ) -> Tuple[Optional[Array], Optional[NDArray[np.int64]], Union[bool, str]]:
    """(mask, kv_lengths, causal) for the kernel from the checked ``mask``
    and the (B, Nk) key padding: right padding becomes per-row key counts
    where ``fold_key_padding`` allows it, anything else a (B, 1, 1, Nk)
    key mask combined with ``mask``."""
    if kpm is None:
        return mask, None, causal
    folded = fold_key_padding(kpm, n_q, causal)
    if folded is not None:
        return mask, folded.get("kv_lengths"), folded.get("causal", causal)
    keep = kpm[:, None, None, :]                # (B, 1, 1, Nk), a view
    if mask is None:
        return keep, None, causal
    if mask.dtype == np.bool_:
        return mask & keep, None, causal
    return np.where(keep, mask, mask.dtype.type(-np.inf)), None, causal


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
    The weights ``w_q, w_k, w_v, w_o`` and biases ``b_q, b_k, b_v, b_o``
    are stored in PyTorch's ``(out_features, in_features)`` orientation
    (shapes below) and applied as ``x @ w.T + b``, so PyTorch weights load
    without transposes.  The attributes are writable views of the layer's storage (the three
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
        E, H, Hkv, C = checks.dims(embed_dim, num_heads, num_kv_heads, context_dim)
        has_bias = _checks.boolean("bias", bias)
        dt = checks.layer_dtype(dtype)
        gen = _checks.generator(rng)
        self._allocate(E, H, Hkv, C, has_bias, dt)
        self._p.init_random(gen)

    def _allocate(self, E: int, H: int, Hkv: int, C: int, bias: bool,
                  dt: np.dtype[Any]) -> None:
        """Set the dims and allocate (uninitialized) parameter storage."""
        self.embed_dim = E
        self.num_heads = H
        self.num_kv_heads = Hkv
        self.head_dim = E // H
        self.context_dim = C
        self.dtype = dt
        self.bias = bias
        self._p = Projections(E, H, Hkv, C, bias, dt)

    w_q = _param("w_q", "Query projection, shape (H * D, E).")
    w_k = _param("w_k", "Key projection, shape (Hkv * D, context_dim).")
    w_v = _param("w_v", "Value projection, shape (Hkv * D, context_dim).")
    w_o = _param("w_o", "Output projection, shape (E, H * D).")
    b_q = _param("b_q", "Query bias, shape (H * D,), or None.")
    b_k = _param("b_k", "Key bias, shape (Hkv * D,), or None.")
    b_v = _param("b_v", "Value bias, shape (Hkv * D,), or None.")
    b_o = _param("b_o", "Output bias, shape (E,), or None.")

    def repack(self) -> None:
        """Drop the projections packed for ``projections=`` calls, so that
        the next such call packs the current weights: needed after editing
        a parameter's array in place (assigning one does it itself)."""
        self._p.repack()

    def parameters(self) -> Dict[str, Array]:
        """The weights (and biases, if any) by name, as a dict of the
        layer's own writable views: ``w_q, w_k, w_v, w_o[, b_q, b_k, b_v, b_o]``."""
        return {k: v for k, v in self._p.views().items() if v is not None}

    def __repr__(self) -> str:
        extra = "" if self.context_dim == self.embed_dim else f", context_dim={self.context_dim}"
        return (f"MultiHeadAttention(embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"num_kv_heads={self.num_kv_heads}, bias={self.bias}, "
                f"dtype={self.dtype.name}{extra})")

    @classmethod
    def from_torch_state_dict(cls, state_dict: Any, num_heads: int, *, prefix: str = "",
                              dtype: Optional[DTypeLike] = None) -> MultiHeadAttention:
        """Build a layer from the state dict of a ``torch.nn.MultiheadAttention``.

        Parameters
        ----------
        state_dict : mapping of str to array-like
            The module's ``state_dict()``, with torch tensors, NumPy arrays
            or anything ``numpy.asarray`` accepts as values, read by
            :func:`fastattn.weights_io.multihead_attention_weights` (which
            lists the keys; torch is not imported).
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

        Raises as ``multihead_attention_weights`` does (``ValueError`` for
        missing, unexpected or inconsistently shaped keys, and for
        ``add_bias_kv`` modules, which this layer does not implement).
        """
        p = weights_io.multihead_attention_weights(state_dict, prefix)
        E, H, dt = checks.torch_dims(p, num_heads, dtype)
        layer = cls.__new__(cls)   # every parameter is set below: no random init
        layer._allocate(E, H, H, p.w_k.shape[1], p.b_in is not None, dt)
        layer._p.load_torch(p)
        return layer

    def to_torch_state_dict(self) -> Dict[str, Array]:
        """The weights as a ``torch.nn.MultiheadAttention`` state dict of
        NumPy arrays (copies): ``in_proj_weight`` or, when
        ``context_dim != embed_dim``, ``q/k/v_proj_weight``, plus
        ``in_proj_bias``, ``out_proj.weight`` and ``out_proj.bias``.  Load
        it into torch with ``{k: torch.from_numpy(v) for k, v in ...}``.
        PyTorch's module has no grouped-query attention, so this raises
        ``ValueError`` when ``num_kv_heads != num_heads``."""
        return self._p.torch_state_dict()

    def make_kv_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty :class:`fastattn.KVCache` that fits this layer
        (``num_kv_heads``, ``head_dim``, ``dtype``) for ``batch`` sequences
        of up to ``max_len`` tokens."""
        return KVCache(batch, self.num_kv_heads, max_len, self.head_dim, dtype=self.dtype)

    @_checks.entry("pass t.numpy() (fastattn.torch.as_numpy(t) also reads bfloat16 "
                   "tensors), a NumPy view of a CPU tensor's memory")
    def __call__(self, x: Array, context: Optional[Array] = None, *,
                 mask: Optional[Array] = None, key_padding_mask: Optional[Array] = None,
                 causal: Union[bool, str] = False, need_weights: bool = False,
                 kv_cache: Optional[KVCache] = None, precision: str = "highest",
                 projections: Optional[str] = None) -> Any:
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
            pads the ends of the rows and the causal band does not depend
            on Nk, it is given to the kernel as per-row key counts, so
            padding keys are not even read.
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
            layer, as in :func:`fastattn.attention` (the projections follow
            ``projections``).
        projections : {None, "float32", "bfloat16", "int8"}
            Arithmetic of the four projections of a float32 layer.  None
            (the default for float32 and float64 inputs): NumPy's products
            in the layer's dtype.  A dtype: :func:`fastattn.linear` over the
            weights packed in it (:func:`fastattn.pack_linear`; made on
            first use and kept; assigning a parameter drops them, and after
            editing a parameter's array in place call :meth:`repack`).
            bfloat16 ``x`` (ml_dtypes) on a float32 layer runs in bfloat16
            end to end: projections (default ``"bfloat16"``), q, k, v, the
            attention and the output are bfloat16, with float32 sums.

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
        x, context, batched = checks.batched_inputs(self, x, context)
        packed = checks.projections(self, projections, x)
        _checks.boolean("need_weights", need_weights)
        _checks.precision(precision, x)     # before the cache is appended to
        B, Nq = x.shape[:2]
        if kv_cache is not None:
            kv_cache = checks.cache(self, kv_cache, B, context, key_padding_mask)
        q, k, v = self._p.qkv(x, context, packed)
        scores = (B, Nq, k.shape[2])
        if mask is not None:
            mask = checks.attn_mask(mask, self.num_heads, kv_cache, scores, batched)
        kpm = None if key_padding_mask is None else \
            checks.key_padding_mask(key_padding_mask, B, k.shape[2], batched)
        mask, kv_lengths, causal = _fold_masks(mask, kpm, Nq, causal)

        # attention, written straight into the (B, Nq, H, D) merge buffer
        H, D = self.num_heads, self.head_dim
        merged = np.empty((B, Nq, H, D), dtype=q.dtype)
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
        y = self._p.output(merged.reshape(B, Nq, H * D), packed)
        if not batched:
            y = y[0]
            if weights is not None:
                weights = weights[0]
        return (y, weights) if need_weights else y
