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
import math
import numbers

import numpy as np

from .api import attention
from .kvcache import KVCache

__all__ = ["MultiHeadAttention"]

_PARAM_NAMES = ("w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o")


def _check_dim(name, value, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _make_rng(rng):
    if isinstance(rng, (bool, np.bool_)):
        raise TypeError("rng must be a numpy.random.Generator, an int seed or None, got bool")
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as e:
        raise TypeError("rng must be a numpy.random.Generator, an int seed or None, "
                        f"got {type(rng).__name__}: {e}") from None


def _xavier_uniform(rng, fan_out, fan_in, dtype):
    # Glorot & Bengio (2010): U(-a, a) with a = sqrt(6 / (fan_in + fan_out)).
    # Drawn in float64 and rounded, so float32 and float64 layers built from
    # the same seed hold the same weights up to that rounding.
    a = math.sqrt(6.0 / (fan_in + fan_out)) if fan_in + fan_out else 0.0
    return rng.uniform(-a, a, size=(fan_out, fan_in)).astype(dtype)


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

    def __init__(self, embed_dim, num_heads, *, num_kv_heads=None, bias=True,
                 dtype=np.float32, rng=None, context_dim=None):
        E = _check_dim("embed_dim", embed_dim)
        H = _check_dim("num_heads", num_heads)
        if E % H:
            raise ValueError(f"embed_dim ({E}) must be divisible by num_heads ({H})")
        Hkv = H if num_kv_heads is None else _check_dim("num_kv_heads", num_kv_heads)
        if H % Hkv:
            raise ValueError(f"num_heads ({H}) must be a multiple of num_kv_heads ({Hkv})")
        C = E if context_dim is None else _check_dim("context_dim", context_dim)
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
        dt = _check_dtype(dtype)
        gen = _make_rng(rng)
        self._allocate(E, H, Hkv, C, bool(bias), dt)
        # Xavier-uniform weights, zero biases (np.empty above: set every entry)
        nq, nkv = H * self.head_dim, Hkv * self.head_dim
        self._w_x[...] = _xavier_uniform(gen, nq, E, dt)
        self._w_c[:nkv] = _xavier_uniform(gen, nkv, C, dt)
        self._w_c[nkv:] = _xavier_uniform(gen, nkv, C, dt)
        self._w_o[...] = _xavier_uniform(gen, E, nq, dt)
        if self.bias:
            self._b_in[...] = 0
            self._b_o[...] = 0

    def _allocate(self, E, H, Hkv, C, bias, dt):
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
        if C == E:
            self._w_in = np.empty((nq + 2 * nkv, E), dtype=dt)
            self._w_x = self._w_in[:nq]
            self._w_c = self._w_in[nq:]
        else:
            self._w_in = None
            self._w_x = np.empty((nq, E), dtype=dt)
            self._w_c = np.empty((2 * nkv, C), dtype=dt)
        self._w_o = np.empty((E, nq), dtype=dt)
        if bias:
            self._b_in = np.empty(nq + 2 * nkv, dtype=dt)
            self._b_o = np.empty(E, dtype=dt)
        else:
            self._b_in = self._b_o = None

    # ------------------------------------------------------------------
    # parameters
    # ------------------------------------------------------------------

    def _views(self):
        nq = self.num_heads * self.head_dim
        nkv = self.num_kv_heads * self.head_dim
        views = {
            "w_q": self._w_x,
            "w_k": self._w_c[:nkv],
            "w_v": self._w_c[nkv:],
            "w_o": self._w_o,
        }
        if self.bias:
            views.update(b_q=self._b_in[:nq], b_k=self._b_in[nq:nq + nkv],
                         b_v=self._b_in[nq + nkv:], b_o=self._b_o)
        else:
            views.update(b_q=None, b_k=None, b_v=None, b_o=None)
        return views

    def _get_param(self, name):
        return self._views()[name]

    def _set_param(self, name, value):
        dst = self._views()[name]
        if dst is None:
            raise AttributeError(f"{name}: the layer was built with bias=False")
        src = np.asarray(value)
        if src.shape != dst.shape:
            raise ValueError(f"{name} must have shape {dst.shape}, got {src.shape}")
        if src.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers, got dtype {src.dtype}")
        np.copyto(dst, src, casting="same_kind")

    w_q = property(lambda self: self._get_param("w_q"),
                   lambda self, a: self._set_param("w_q", a),
                   doc="Query projection, shape (H * D, E).")
    w_k = property(lambda self: self._get_param("w_k"),
                   lambda self, a: self._set_param("w_k", a),
                   doc="Key projection, shape (Hkv * D, context_dim).")
    w_v = property(lambda self: self._get_param("w_v"),
                   lambda self, a: self._set_param("w_v", a),
                   doc="Value projection, shape (Hkv * D, context_dim).")
    w_o = property(lambda self: self._get_param("w_o"),
                   lambda self, a: self._set_param("w_o", a),
                   doc="Output projection, shape (E, H * D).")
    b_q = property(lambda self: self._get_param("b_q"),
                   lambda self, a: self._set_param("b_q", a),
                   doc="Query bias, shape (H * D,), or None.")
    b_k = property(lambda self: self._get_param("b_k"),
                   lambda self, a: self._set_param("b_k", a),
                   doc="Key bias, shape (Hkv * D,), or None.")
    b_v = property(lambda self: self._get_param("b_v"),
                   lambda self, a: self._set_param("b_v", a),
                   doc="Value bias, shape (Hkv * D,), or None.")
    b_o = property(lambda self: self._get_param("b_o"),
                   lambda self, a: self._set_param("b_o", a),
                   doc="Output bias, shape (E,), or None.")

    def parameters(self):
        """The weights (and biases, if any) by name, as a dict of the
        layer's own writable views: ``w_q, w_k, w_v, w_o[, b_q, b_k, b_v, b_o]``."""
        return {k: v for k, v in self._views().items() if v is not None}

    def __repr__(self):
        extra = "" if self.context_dim == self.embed_dim else f", context_dim={self.context_dim}"
        return (f"MultiHeadAttention(embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"num_kv_heads={self.num_kv_heads}, bias={self.bias}, "
                f"dtype={self.dtype.name}{extra})")

    # ------------------------------------------------------------------
    # PyTorch state dicts
    # ------------------------------------------------------------------

    @classmethod
    def from_torch_state_dict(cls, state_dict, num_heads, *, prefix="", dtype=None):
        """Build a layer from the state dict of a ``torch.nn.MultiheadAttention``.

        Parameters
        ----------
        state_dict : mapping of str to array-like
            The module's ``state_dict()``, with NumPy arrays or anything
            ``numpy.asarray`` accepts as values (CPU tensors of a
            ``state_dict()`` convert as they are); torch is never imported.  Recognized keys: ``in_proj_weight``
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
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        try:
            items = {k[len(prefix):]: v for k, v in state_dict.items()
                     if isinstance(k, str) and k.startswith(prefix)}
        except AttributeError:
            raise TypeError("state_dict must be a mapping of parameter names to arrays, "
                            f"got {type(state_dict).__name__}") from None
        arrays = {}
        for key, value in items.items():
            a = np.asarray(value)
            if a.dtype.kind not in "fiu":
                raise TypeError(f"state_dict[{prefix + key!r}] must hold real numbers, "
                                f"got dtype {a.dtype}")
            arrays[key] = a

        if "bias_k" in arrays or "bias_v" in arrays:
            raise ValueError("state_dict has bias_k/bias_v (add_bias_kv=True), "
                             "which MultiHeadAttention does not implement")
        separate = ("q_proj_weight", "k_proj_weight", "v_proj_weight")
        if "in_proj_weight" in arrays:
            if any(name in arrays for name in separate):
                raise ValueError("state_dict has both in_proj_weight and "
                                 "q_proj_weight/k_proj_weight/v_proj_weight")
            w_in = arrays.pop("in_proj_weight")
            if w_in.ndim != 2 or w_in.shape[0] != 3 * w_in.shape[1]:
                raise ValueError(f"in_proj_weight has shape {w_in.shape}; expected (3E, E)")
            E = w_in.shape[1]
            w_q, w_k, w_v = w_in[:E], w_in[E:2 * E], w_in[2 * E:]
        elif all(name in arrays for name in separate):
            w_q, w_k, w_v = (arrays.pop(name) for name in separate)
            if w_q.ndim != 2 or w_q.shape[0] != w_q.shape[1]:
                raise ValueError(f"q_proj_weight has shape {w_q.shape}; expected (E, E)")
            E = w_q.shape[0]
            for name, w in (("k_proj_weight", w_k), ("v_proj_weight", w_v)):
                if w.ndim != 2 or w.shape[0] != E:
                    raise ValueError(f"{name} has shape {w.shape}; expected ({E}, kdim)")
            if w_k.shape[1] != w_v.shape[1]:
                raise ValueError(
                    f"k_proj_weight has kdim {w_k.shape[1]} but v_proj_weight has vdim "
                    f"{w_v.shape[1]}; MultiHeadAttention takes one context array for "
                    "keys and values, so kdim must equal vdim")
        else:
            missing = [n for n in separate if n not in arrays]
            raise ValueError(f"state_dict needs in_proj_weight or all of {', '.join(separate)}"
                             f" (missing {', '.join(prefix + m for m in missing)})")
        if "out_proj.weight" not in arrays:
            raise ValueError(f"state_dict has no {prefix}out_proj.weight")
        w_o = arrays.pop("out_proj.weight")
        if w_o.shape != (E, E):
            raise ValueError(f"out_proj.weight has shape {w_o.shape}; expected ({E}, {E})")
        b_in = arrays.pop("in_proj_bias", None)
        b_o = arrays.pop("out_proj.bias", None)
        if (b_in is None) != (b_o is None):
            raise ValueError("state_dict has only one of in_proj_bias and out_proj.bias; "
                             "a torch.nn.MultiheadAttention has both or neither")
        if b_in is not None:
            if b_in.shape != (3 * E,):
                raise ValueError(f"in_proj_bias has shape {b_in.shape}; expected ({3 * E},)")
            if b_o.shape != (E,):
                raise ValueError(f"out_proj.bias has shape {b_o.shape}; expected ({E},)")
        if arrays:
            raise ValueError("state_dict has unexpected keys: "
                             + ", ".join(sorted(prefix + k for k in arrays)))

        if dtype is None:
            dtype = w_q.dtype if w_q.dtype in (np.float32, np.float64) else np.float32
        H = _check_dim("num_heads", num_heads)
        if E % H:
            raise ValueError(f"num_heads ({H}) must divide the embedding dim ({E}) "
                             "of the state dict")
        layer = cls.__new__(cls)   # every parameter is set below: no random init
        layer._allocate(E, H, H, w_k.shape[1], b_in is not None, _check_dtype(dtype))
        layer.w_q, layer.w_k, layer.w_v, layer.w_o = w_q, w_k, w_v, w_o
        if b_in is not None:
            layer.b_q, layer.b_k, layer.b_v = b_in[:E], b_in[E:2 * E], b_in[2 * E:]
            layer.b_o = b_o
        return layer

    def to_torch_state_dict(self):
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
        sd = {}
        if self._w_in is not None:
            sd["in_proj_weight"] = self._w_in.copy()
        else:
            sd["q_proj_weight"] = self.w_q.copy()
            sd["k_proj_weight"] = self.w_k.copy()
            sd["v_proj_weight"] = self.w_v.copy()
        if self.bias:
            sd["in_proj_bias"] = self._b_in.copy()
        sd["out_proj.weight"] = self._w_o.copy()
        if self.bias:
            sd["out_proj.bias"] = self._b_o.copy()
        return sd

    def make_kv_cache(self, batch, max_len):
        """An empty :class:`fastattn.KVCache` that fits this layer
        (``num_kv_heads``, ``head_dim``, ``dtype``) for ``batch`` sequences
        of up to ``max_len`` tokens."""
        return KVCache(batch, self.num_kv_heads, max_len, self.head_dim, dtype=self.dtype)

    # ------------------------------------------------------------------
    # forward
    # ------------------------------------------------------------------

    def _check_tokens(self, name, a, dim, ndim=None):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
        if a.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {a.dtype} but the layer's dtype is "
                            f"{self.dtype}")
        if ndim is not None and a.ndim != ndim:
            raise ValueError(f"{name} has {a.ndim} dims but x has {ndim}; both are batched "
                             "(B, N, features) or both unbatched (N, features)")
        if a.ndim not in (2, 3):
            raise ValueError(f"{name} has shape {a.shape}; expected (B, N, {dim}) "
                             f"or (N, {dim})")
        if a.shape[-1] != dim:
            what = "the layer expects" if name == "x" else "the layer's context_dim is"
            raise ValueError(f"{name} has embedding dim {a.shape[-1]} but {what} {dim}")

    def _project(self, a, w, b):
        """``a @ w.T + b`` over all tokens, as one GEMM: (B, N, in) -> (B, N, out)."""
        B, N, _ = a.shape
        y = np.matmul(a.reshape(B * N, a.shape[2]), w.T)
        if b is not None:
            y += b
        return y.reshape(B, N, w.shape[0])

    def _split(self, y, heads):
        """(B, N, heads * D) -> (B, heads, N, D), a view."""
        B, N, _ = y.shape
        return y.reshape(B, N, heads, self.head_dim).transpose(0, 2, 1, 3)

    def __call__(self, x, context=None, *, mask=None, key_padding_mask=None, causal=False,
                 need_weights=False, kv_cache=None):
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
        E, H, Hkv, D = self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim
        self._check_tokens("x", x, E)
        batched = x.ndim == 3
        if not batched:
            x = x[None]
        if context is not None:
            self._check_tokens("context", context, self.context_dim,
                               ndim=3 if batched else 2)
            if not batched:
                context = context[None]
            if context.shape[0] != x.shape[0]:
                raise ValueError(f"context has batch size {context.shape[0]} but x has "
                                 f"{x.shape[0]}")
        elif self.context_dim != E:
            raise ValueError(f"context is required: the layer's context_dim "
                             f"({self.context_dim}) differs from embed_dim ({E})")
        if not isinstance(need_weights, (bool, np.bool_)):
            raise TypeError(f"need_weights must be a bool, got {type(need_weights).__name__}")
        B, Nq = x.shape[:2]

        if kv_cache is not None:
            if not isinstance(kv_cache, KVCache):
                raise TypeError(f"kv_cache must be a fastattn.KVCache, got "
                                f"{type(kv_cache).__name__}")
            if context is not None:
                raise ValueError("kv_cache is for self-attention; with context, project "
                                 "the context once and attend to it without a cache")
            if key_padding_mask is not None:
                raise ValueError("key_padding_mask cannot be combined with kv_cache: the "
                                 "cache's row lengths say which keys exist")
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

        # -- projections: one GEMM for Q, K and V of self-attention --------
        nq = H * D
        if context is None and self._w_in is not None:
            qkv = self._project(x, self._w_in, self._b_in)
            y_q, y_kv = qkv[..., :nq], qkv[..., nq:]
        else:
            b_in = self._b_in
            y_q = self._project(x, self._w_x, None if b_in is None else b_in[:nq])
            y_kv = self._project(x if context is None else context, self._w_c,
                                 None if b_in is None else b_in[nq:])
        q = self._split(y_q, H)
        k = self._split(y_kv[..., :Hkv * D], Hkv)
        v = self._split(y_kv[..., Hkv * D:], Hkv)
        Nk = k.shape[2]

        # -- masks -----------------------------------------------------------
        kv_lengths = None
        if kv_cache is not None:
            n_keys = int(kv_cache.lengths.max(initial=0)) + Nq
        else:
            n_keys = Nk
        if mask is not None:
            if (kv_cache is not None and isinstance(mask, np.ndarray) and mask.ndim
                    and mask.shape[-1] == kv_cache.max_len):
                mask = mask[..., :n_keys]     # spans max_len keys: its filled prefix
            mask = self._check_mask(mask, (B, H, Nq, n_keys), batched)
        if key_padding_mask is not None:
            mask, kv_lengths = self._apply_padding(key_padding_mask, mask, B, Nk, batched,
                                                   causal)

        # -- attention, written straight into the (B, Nq, H, D) merge buffer --
        merged = np.empty((B, Nq, H, D), dtype=self.dtype)
        out_view = merged.transpose(0, 2, 1, 3)
        weights = None
        if kv_cache is None:
            res = attention(q, k, v, mask=mask, causal=causal, kv_lengths=kv_lengths,
                            out=out_view, return_weights=need_weights)
            if need_weights:
                weights = res[1]
        else:
            kv_cache.append(k, v)
            if need_weights:
                used = int(kv_cache.lengths.max(initial=0))
                _, weights = attention(q, kv_cache.k[:, :, :used], kv_cache.v[:, :, :used],
                                       mask=mask, causal=causal, kv_lengths=kv_cache.lengths,
                                       out=out_view, return_weights=True)
            else:
                kv_cache.attend(q, causal=causal, mask=mask, out=out_view)

        # -- merge heads (a reshape) and the output projection ----------------
        y = self._project(merged.reshape(B, Nq, nq), self._w_o, self._b_o)
        if not batched:
            y = y[0]
            if weights is not None:
                weights = weights[0]
        return (y, weights) if need_weights else y

    def _check_mask(self, mask, full, batched):
        if not isinstance(mask, np.ndarray):
            raise TypeError(f"mask must be a numpy.ndarray, got {type(mask).__name__}")
        if mask.dtype != np.bool_ and mask.dtype.kind != "f":
            raise TypeError(f"mask has dtype {mask.dtype}; expected bool (True = may attend) "
                            "or float (added to the scores)")
        try:
            ok = np.broadcast_shapes(mask.shape, full) == full
        except ValueError:
            ok = False
        if not ok:
            names, shape = ("(B, H, Nq, Nk)", full) if batched else ("(H, Nq, Nk)", full[1:])
            raise ValueError(f"mask has shape {mask.shape}; expected a shape broadcastable "
                             f"to {names} = {shape}")
        return mask

    def _apply_padding(self, kpm, mask, B, Nk, batched, causal):
        """Fold key_padding_mask into (mask, kv_lengths)."""
        if not isinstance(kpm, np.ndarray):
            raise TypeError(f"key_padding_mask must be a numpy.ndarray, got "
                            f"{type(kpm).__name__}")
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
