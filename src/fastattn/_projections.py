"""The four linear maps of :class:`fastattn.MultiHeadAttention`: their
storage, their initialization, their PyTorch state-dict form, and the
products that split heads as views.

The input projections are row blocks of one ``(out, in)`` matrix per input
width, so self-attention is one GEMM and cross-attention two (queries from
x, keys and values from the context).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import weights_io
from .linear import PackedLinear, linear, pack_linear

Array = NDArray[Any]


def xavier_uniform(rng: np.random.Generator, fan_out: int, fan_in: int,
                   dtype: np.dtype[Any]) -> Array:
    """Glorot & Bengio (2010): U(-a, a) with a = sqrt(6 / (fan_in + fan_out)).
    Drawn in float64 and rounded, so float32 and float64 layers built from
    the same seed hold the same weights up to that rounding."""
    a = math.sqrt(6.0 / (fan_in + fan_out)) if fan_in + fan_out else 0.0
    return rng.uniform(-a, a, size=(fan_out, fan_in)).astype(dtype)


def project(a: Array, w: Array, b: Optional[Array]) -> Array:
    """``a @ w.T + b`` over all tokens, as one GEMM: (B, N, in) -> (B, N, out)."""
    B, N, _ = a.shape
    y: Array = np.matmul(a.reshape(B * N, a.shape[2]), w.T)
    if b is not None:
        y += b
    return y.reshape(B, N, w.shape[0])


def split_heads(y: Array, heads: int) -> Array:
    """(B, N, heads * D) -> (B, heads, N, D), a view."""
    B, N, width = y.shape
    view: Array = y.reshape(B, N, heads, width // heads).transpose(0, 2, 1, 3)
    return view


class Projections:
    """Uninitialized storage of the weights ``w_q, w_k, w_v, w_o`` and, with
    ``bias``, the biases ``b_q, b_k, b_v, b_o``, in PyTorch's ``(out, in)``
    orientation; ``E`` model width, ``H`` and ``Hkv`` heads of ``D =
    E // H`` features, ``C`` the context width."""

    def __init__(self, E: int, H: int, Hkv: int, C: int, bias: bool,
                 dt: np.dtype[Any]) -> None:
        D = E // H
        self.heads, self.kv_heads = H, Hkv
        self.nq, self.nkv = nq, nkv = H * D, Hkv * D
        self.w_in: Optional[Array]
        if C == E:
            self.w_in = np.empty((nq + 2 * nkv, E), dtype=dt)
            self.w_x: Array = self.w_in[:nq]
            self.w_c: Array = self.w_in[nq:]
        else:
            self.w_in = None
            self.w_x = np.empty((nq, E), dtype=dt)
            self.w_c = np.empty((2 * nkv, C), dtype=dt)
        self.w_o: Array = np.empty((E, nq), dtype=dt)
        self.b_in: Optional[Array] = np.empty(nq + 2 * nkv, dtype=dt) if bias else None
        self.b_o: Optional[Array] = np.empty(E, dtype=dt) if bias else None
        # the weights packed for fastattn.linear, by (dtype, matrix), each
        # made on first use; dropped by set() and repack() (in-place edits
        # need repack())
        self._packed: Dict[Tuple[str, str], PackedLinear] = {}

    def init_random(self, gen: np.random.Generator) -> None:
        """Xavier-uniform weights and zero biases (every entry is set)."""
        nq, nkv, dt = self.nq, self.nkv, self.w_o.dtype
        E, C = self.w_o.shape[0], self.w_c.shape[1]
        self.w_x[...] = xavier_uniform(gen, nq, E, dt)
        self.w_c[:nkv] = xavier_uniform(gen, nkv, C, dt)
        self.w_c[nkv:] = xavier_uniform(gen, nkv, C, dt)
        self.w_o[...] = xavier_uniform(gen, E, nq, dt)
        if self.b_in is not None and self.b_o is not None:
            self.b_in[...] = 0
            self.b_o[...] = 0

    def views(self) -> Dict[str, Optional[Array]]:
        """Every parameter by name, as a writable view (None for absent biases)."""
        nq, nkv = self.nq, self.nkv
        views: Dict[str, Optional[Array]] = {
            "w_q": self.w_x, "w_k": self.w_c[:nkv], "w_v": self.w_c[nkv:], "w_o": self.w_o}
        b_in = self.b_in
        if b_in is not None:
            views.update(b_q=b_in[:nq], b_k=b_in[nq:nq + nkv], b_v=b_in[nq + nkv:],
                         b_o=self.b_o)
        else:
            views.update(b_q=None, b_k=None, b_v=None, b_o=None)
        return views

    def set(self, name: str, value: ArrayLike) -> None:
        """Copy ``value`` into the parameter ``name`` (same shape, real numbers)."""
        dst = self.views()[name]
        if dst is None:
            raise AttributeError(f"{name}: the layer was built with bias=False")
        src = np.asarray(value)
        if src.shape != dst.shape:
            raise ValueError(f"{name} must have shape {dst.shape}, got {src.shape}")
        if src.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers, got dtype {src.dtype}")
        np.copyto(dst, src, casting="same_kind")
        self._packed.clear()

    def repack(self) -> None:
        """Forget the packed weights (they are made again on next use)."""
        self._packed.clear()

    def packed(self, dtype: str, which: str) -> PackedLinear:
        """One matrix packed in ``dtype``, made on first use: ``"in"`` (the
        three input projections, when they share one matrix), ``"x"`` (the
        queries'), ``"c"`` (the keys' and values') or ``"o"``."""
        got = self._packed.get((dtype, which))
        if got is None:
            nq, b_in = self.nq, self.b_in
            w, b = {"in": (self.w_in, b_in),
                    "x": (self.w_x, None if b_in is None else b_in[:nq]),
                    "c": (self.w_c, None if b_in is None else b_in[nq:]),
                    "o": (self.w_o, self.b_o)}[which]
            got = self._packed[(dtype, which)] = pack_linear(w, b, dtype=dtype)
        return got

    def load_torch(self, p: weights_io.MultiheadAttentionWeights) -> None:
        """Set every parameter from a ``torch.nn.MultiheadAttention``'s
        weights (the storage was made with ``Hkv == H`` and p's widths)."""
        for name in ("w_q", "w_k", "w_v", "w_o"):
            self.set(name, getattr(p, name))
        if p.b_in is not None and p.b_o is not None:
            nq = self.nq
            for name, part in (("b_q", p.b_in[:nq]), ("b_k", p.b_in[nq:2 * nq]),
                               ("b_v", p.b_in[2 * nq:]), ("b_o", p.b_o)):
                self.set(name, part)

    def torch_state_dict(self) -> Dict[str, Array]:
        """The ``torch.nn.MultiheadAttention`` state dict (copies); that
        module has no grouped-query attention."""
        if self.kv_heads != self.heads:
            raise ValueError(f"num_kv_heads ({self.kv_heads}) != num_heads "
                             f"({self.heads}): torch.nn.MultiheadAttention has no "
                             "grouped-query attention")
        return weights_io.multihead_attention_state_dict(self.views(),
                                                         packed=self.w_in is not None)

    def qkv(self, x: Array, context: Optional[Array],
            packed: Optional[str] = None) -> Tuple[Array, Array, Array]:
        """The heads of q, k and v as (B, heads, N, D) views of the
        projections' output: one GEMM for all three in self-attention.
        ``packed``: the products run on fastattn.linear in that dtype (the
        output is in x's dtype), else NumPy's in the layer's dtype."""
        nq, nkv = self.nq, self.nkv
        if packed is not None:
            if context is None and self.w_in is not None:
                qkv = linear(x, self.packed(packed, "in"))
                y_q, y_kv = qkv[..., :nq], qkv[..., nq:]
            else:
                y_q = linear(x, self.packed(packed, "x"))
                y_kv = linear(x if context is None else context, self.packed(packed, "c"))
        elif context is None and self.w_in is not None:
            qkv = project(x, self.w_in, self.b_in)
            y_q, y_kv = qkv[..., :nq], qkv[..., nq:]
        else:
            b_in = self.b_in
            y_q = project(x, self.w_x, None if b_in is None else b_in[:nq])
            y_kv = project(x if context is None else context, self.w_c,
                           None if b_in is None else b_in[nq:])
        H, Hkv = self.heads, self.kv_heads
        return (split_heads(y_q, H), split_heads(y_kv[..., :nkv], Hkv),
                split_heads(y_kv[..., nkv:], Hkv))

    def output(self, merged: Array, packed: Optional[str] = None) -> Array:
        """The output projection of the merged heads, (B, N, H * D) -> (B, N, E)
        (``packed`` as in :meth:`qkv`)."""
        if packed is not None:
            y: Array = linear(merged, self.packed(packed, "o"))
            return y
        return project(merged, self.w_o, self.b_o)
