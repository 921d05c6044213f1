"""Packed linear layers: ``y = x @ W.T + b`` on fastattn's own GEMM.

``pack_linear`` lays a weight out once for the kernel (panels of 16 output
columns, ``csrc/kernels/linear.h``); ``linear`` applies it.  Every output
element is computed by the same sequence of operations whatever the other
rows of ``x`` are (K in fixed blocks, each summed in order, then the bias),
so a row's result never depends on its neighbours, on the number of rows or
on how a batch was cut.  Optimized BLAS libraries do not promise that: they
pick kernels and edge code by the shape of a call and by a row's position
in it.  The models build their bitwise batch invariance on this.

The products run in float32, in bfloat16 (``pack_linear(...,
dtype="bfloat16")``: the weight and x rounded once each, products summed
in float32) or in int8 (``dtype="int8"``: the weight per output channel, x
per row and block of :data:`INT8_BLOCK` along K, exact integer sums per
block), on the CPU's dot-product instructions where it has them; the bias, an activation and a residual are applied to the
finished sums (``linear(..., activation=, residual=)``), and
:func:`layer_norm` adds a residual and normalizes rows in one pass.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import numpy as np
from numpy.typing import NDArray

from . import _checks
from . import _core

__all__ = ["ACTIVATIONS", "INT8_BLOCK", "PackedLinear", "pack_linear", "linear", "layer_norm"]

_PANEL: int = int(_core.LINEAR_PANEL)
_KALIGN: int = int(_core.LINEAR_KALIGN)  # bfloat16 and int8 pad k to a multiple
_DTYPES = ("float32", "bfloat16", "int8")
#: k of a block of x with its own int8 scale (csrc/kernels/linear_i8.h)
INT8_BLOCK: int = int(_core.LINEAR_I8_BLOCK)


class PackedLinear:
    """A weight (and bias) packed for :func:`linear`; made by
    :func:`pack_linear`.  Immutable; pickles by value (the weight is
    unpacked and packed again on load, so another CPU gets its own
    layout)."""

    __slots__ = ("_packed", "_bias", "_scale", "_out", "_in", "_dtype", "_isa")

    _packed: NDArray[Any]
    _bias: Optional[NDArray[np.float32]]
    _scale: Optional[NDArray[np.float32]]
    _out: int
    _in: int
    _dtype: str
    _isa: str

    def __init__(self, packed: NDArray[Any], bias: Optional[NDArray[np.float32]],
                 out_features: int, in_features: int, dtype: str = "float32",
                 scale: Optional[NDArray[np.float32]] = None) -> None:
        for a in (packed, bias, scale):
            if a is not None:
                a.flags.writeable = False
        object.__setattr__(self, "_packed", packed)
        object.__setattr__(self, "_bias", bias)
        object.__setattr__(self, "_scale", scale)
        object.__setattr__(self, "_out", out_features)
        object.__setattr__(self, "_in", in_features)
        object.__setattr__(self, "_dtype", dtype)
        object.__setattr__(self, "_isa", str(_core.get_isa()))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("PackedLinear is immutable")

    @property
    def dtype(self) -> str:
        """The arithmetic of the products: ``"float32"``, ``"bfloat16"``
        (weights and x rounded to bfloat16, products summed in float32) or
        ``"int8"`` (weights per output channel, x per row and block of
        :data:`INT8_BLOCK` along K; exact int32 sums per block)."""
        return self._dtype

    @property
    def isa(self) -> str:
        """The ISA path that was current when the weight was packed (the
        layout serves every path of this build)."""
        return self._isa

    @property
    def in_features(self) -> int:
        return self._in

    @property
    def out_features(self) -> int:
        return self._out

    @property
    def shape(self) -> Tuple[int, int]:
        """``(out_features, in_features)``, the weight's shape."""
        return (self._out, self._in)

    @property
    def has_bias(self) -> bool:
        return self._bias is not None

    @property
    def nbytes(self) -> int:
        """Bytes held: the packed weight (padded to whole panels), the bias
        and the int8 channel scales."""
        return int(sum(a.nbytes for a in (self._packed, self._bias, self._scale)
                       if a is not None))

    def scale(self) -> Optional[NDArray[np.float32]]:
        """int8: the weight's scale per output channel (a copy, float32
        ``(out_features,)``), else None."""
        return None if self._scale is None else self._scale[:self._out].copy()

    def weight(self) -> NDArray[np.float32]:
        """The weight, ``(out_features, in_features)``, unpacked (a new
        float32 array; for bfloat16, the rounded values; for int8, the
        quantized values times their channel scales)."""
        if self._dtype == "int8":
            assert self._scale is not None
            return self._int8_values() * self._scale[:self._out, None]
        p = self._packed
        if self._dtype == "bfloat16":  # (panels, k/2, 16, 2) pairs -> (panels, k, 16)
            bits = p.transpose(0, 1, 3, 2).reshape(p.shape[0], -1, _PANEL)[:, :self._in]
            p = (bits.astype(np.uint32) << 16).view(np.float32)
        w = p.transpose(0, 2, 1).reshape(p.shape[0] * _PANEL, self._in)[:self._out]
        return np.ascontiguousarray(w)

    def bias(self) -> Optional[NDArray[np.float32]]:
        """The bias (a copy), or None."""
        return None if self._bias is None else self._bias.copy()

    def _int8_values(self) -> NDArray[np.int8]:
        """int8: the quantized weight, ``(out_features, in_features)``."""
        p = self._packed  # (panels, k/4, 16, 4) -> (panels * 16, k)
        q = p.transpose(0, 2, 1, 3).reshape(p.shape[0] * _PANEL, -1)
        return np.ascontiguousarray(q[:self._out, :self._in])

    def __reduce__(self) -> Tuple[Any, ...]:
        if self._dtype == "int8":  # the integers and scales themselves, exactly
            return (_unpickle_int8, (self._int8_values(), self.scale(), self.bias()))
        return (_unpickle, (self.weight(), self.bias(), self._dtype))

    def __repr__(self) -> str:
        return (f"PackedLinear(out_features={self._out}, in_features={self._in}, "
                f"dtype={self._dtype!r}, bias={self.has_bias}, nbytes={self.nbytes})")


def _unpickle(weight: NDArray[np.float32], bias: Optional[NDArray[np.float32]],
              dtype: str) -> PackedLinear:
    return pack_linear(weight, bias, dtype=dtype)


def _unpickle_int8(q: NDArray[np.int8], scale: NDArray[np.float32],
                   bias: Optional[NDArray[np.float32]]) -> PackedLinear:
    if (q.dtype != np.int8 or q.ndim != 2 or scale.shape != (q.shape[0],)
            or (q == -128).any() or not (np.isfinite(scale) & (scale >= 0)).all()):
        raise ValueError("not a pickled int8 PackedLinear")
    return _pack_int8(q, np.asarray(scale, dtype=np.float32), bias)


def _pack_int8(q: NDArray[np.int8], scale: NDArray[np.float32],
               bias: Optional[NDArray[np.float32]]) -> PackedLinear:
    """The int8 layout (csrc/kernels/linear_i8.h): panels of 16 columns,
    each kp / 4 quads of 16 columns x 4 consecutive k (kp: k rounded up to
    a multiple of _KALIGN, the pad zero)."""
    n, k = q.shape
    panels, kq = -(-n // _PANEL), -(-k // _KALIGN) * _KALIGN // 4
    padded = np.zeros((panels * _PANEL, 4 * kq), dtype=np.int8)
    padded[:n, :k] = q
    packed = _aligned_empty((panels, kq, _PANEL, 4), np.int8)
    packed[...] = padded.reshape(panels, _PANEL, kq, 4).transpose(0, 2, 1, 3)
    s = _aligned_empty((panels * _PANEL,), np.float32)
    s[...] = 0
    s[:n] = scale
    return PackedLinear(packed, bias, int(n), int(k), "int8", s)


def pack_linear(weight: Any, bias: Any = None, *, dtype: str = "float32") -> PackedLinear:
    """Pack a linear layer's weight for :func:`linear`.

    Parameters
    ----------
    weight : array_like, (out_features, in_features)
        In PyTorch's orientation (``y = x @ weight.T + bias``); any real
        floating dtype (bfloat16 from ml_dtypes too), converted to float32.
        Every value must be finite.
    bias : array_like (out_features,) or None
        Kept in float32 whatever ``dtype``; finite.
    dtype : {"float32", "bfloat16", "int8"}
        The arithmetic of the products.  ``"bfloat16"`` rounds the weight to
        bfloat16 once here (half the bytes) and x once per call, and sums
        the exact products in float32.  ``"int8"`` quantizes the weight
        symmetrically, one scale per output channel (``max|w| / 127``, a
        quarter of the bytes), and x on the fly per row and block of
        :data:`INT8_BLOCK` along K; each block's products are summed exactly
        in int32, then scaled and summed in float32.  Error models:
        docs/numerics.md.

    Returns
    -------
    PackedLinear
    """
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
    w = _float_array("weight", weight)
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("weight has non-finite values (NaN or infinity)")
    n, k = w.shape
    b: Optional[NDArray[np.float32]] = None
    if bias is not None:
        b = np.array(_float_array("bias", bias), dtype=np.float32, order="C")
        if b.shape != (n,):
            raise ValueError(f"bias must have shape ({n},) to match weight's out_features, "
                             f"got {b.shape}")
        if not np.isfinite(b).all():
            raise ValueError("bias has non-finite values (NaN or infinity)")
    panels = -(-n // _PANEL)
    if dtype == "float32":
        padded = np.zeros((panels * _PANEL, k), dtype=np.float32)
        padded[:n] = w
        packed = _aligned_empty((panels, k, _PANEL), np.float32)
        packed[...] = padded.reshape(panels, _PANEL, k).transpose(0, 2, 1)
        return PackedLinear(packed, b, int(n), int(k))
    if dtype == "int8":
        amax = np.abs(w).max(axis=1) if k else np.zeros(n, dtype=np.float32)
        scale = (amax / np.float32(127)).astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.rint(w.astype(np.float64) / scale[:, None].astype(np.float64))
        q = np.where(scale[:, None] > 0, np.clip(q, -127, 127), 0).astype(np.int8)
        return _pack_int8(q, scale, b)
    bits = _bf16_bits(w)
    if ((bits & 0x7FFF) == 0x7F80).any():
        raise ValueError("weight has values beyond bfloat16's range (about 3.39e38)")
    kp = -(-k // _KALIGN) * _KALIGN // 2
    padded16 = np.zeros((panels * _PANEL, 2 * kp), dtype=np.uint16)
    padded16[:n, :k] = bits
    # (panels, 16, kp, 2) -> (panels, kp, 16, 2): column c's pair j at [j, c]
    packed16 = _aligned_empty((panels, kp, _PANEL, 2), np.uint16)
    packed16[...] = padded16.reshape(panels, _PANEL, kp, 2).transpose(0, 2, 1, 3)
    return PackedLinear(packed16, b, int(n), int(k), "bfloat16")


def _bf16_bits(a: NDArray[np.float32]) -> NDArray[np.uint16]:
    """float32 (finite) rounded to the nearest bfloat16, ties to even: the bits."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    bits: NDArray[np.uint16] = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))
                                >> 16).astype(np.uint16)
    return bits


ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")


def linear(x: Any, packed: PackedLinear, *, activation: Optional[str] = None,
           residual: Any = None, out: Optional[NDArray[Any]] = None,
           num_threads: Optional[int] = None) -> NDArray[np.float32]:
    """``act(x @ W.T + b) + residual`` for a :class:`PackedLinear` made by
    :func:`pack_linear`, with the bias, activation and residual applied to
    each finished block of sums while it is still in registers.

    Parameters
    ----------
    x : numpy.ndarray, float32, (..., in_features)
        Any leading dims and any strides (a layout that cannot be viewed as
        aligned rows of adjacent elements is copied first).
    packed : PackedLinear
    activation : {None, "gelu", "gelu_tanh", "relu", "silu"}
        ``"gelu"`` is the erf form (``x * Phi(x)``), ``"gelu_tanh"`` the tanh
        approximation, ``"silu"`` ``x * sigmoid(x)``.  Their accuracy is in
        docs/numerics.md.
    residual : numpy.ndarray or None
        float32, of the output's shape; added after the activation.  It may
        be ``out`` itself (then it is read before ``out`` is written).
    out : numpy.ndarray or None
        float32 of shape ``x.shape[:-1] + (out_features,)``; written and
        returned.  It must not overlap ``x``.
    num_threads : int or None
        Threads over blocks of output columns (default: the setting of
        :func:`fastattn.set_num_threads`).  The result does not depend on it.

    Returns
    -------
    numpy.ndarray, float32, (..., out_features)

    A row's result depends on that row alone, bitwise (see the module
    docstring): not on the other rows, their number, its position, or the
    thread count.  NaN or inf in a row of ``x`` reaches that row only.
    The GIL is released during the computation.
    """
    if not isinstance(packed, PackedLinear):
        raise TypeError(f"packed must be a fastattn.PackedLinear (from pack_linear), got "
                        f"{type(packed).__name__}")
    if activation is not None and (not isinstance(activation, str)
                                   or activation not in ACTIVATIONS):
        raise ValueError(f"activation must be None or one of {list(ACTIVATIONS)}, got "
                         f"{activation!r}")
    nt = _threads(num_threads)
    xa = _checks.ndarray("x", x)
    if xa.dtype != np.float32 and xa.dtype.name != "bfloat16":
        raise TypeError(f"x has dtype {xa.dtype}; expected float32 or bfloat16")
    if xa.dtype != np.float32:
        return _linear_bf16_io(xa, packed, activation, residual, out, num_threads)
    if xa.ndim < 1 or xa.shape[-1] != packed.in_features:
        raise ValueError(f"x must have shape (..., {packed.in_features}) to match the "
                         f"layer's in_features, got {xa.shape}")
    lead = xa.shape[:-1]
    shape = lead + (packed.out_features,)
    if out is None:
        res = np.empty(shape, dtype=np.float32)
    else:
        res = _array_arg("out", out, np.dtype(np.float32), shape, writable=True)
        if np.shares_memory(res, xa):
            raise ValueError("out must not overlap x")
    ra = None if residual is None else \
        _array_arg("residual", residual, np.dtype(np.float32), shape, f"the output's shape {shape}")
    if res.size == 0:
        return res
    x2 = _rows_view(xa)
    if x2 is None:
        x2 = np.require(xa, requirements=["C", "A"]).reshape(-1, packed.in_features)
    r2: Optional[NDArray[np.float32]] = None
    if ra is not None:
        # out holds partial sums between K blocks: a residual that shares
        # its memory is read from a copy
        r2 = None if np.may_share_memory(ra, res) else _rows_view(ra)
        if r2 is None:
            r2 = np.array(ra, dtype=np.float32, order="C").reshape(-1, packed.out_features)
    y2 = _rows_view(res)
    if y2 is None:  # out's rows cannot be viewed in place: compute, then copy
        tmp = np.empty((x2.shape[0], packed.out_features), dtype=np.float32)
        _core.linear_f32(x2, packed._packed, packed._bias, tmp, r2, activation, nt,
                         packed._scale)
        res[...] = tmp.reshape(shape)
    else:
        _core.linear_f32(x2, packed._packed, packed._bias, y2, r2, activation, nt,
                         packed._scale)
    return res


def _linear_bf16_io(xa: NDArray[Any], packed: PackedLinear, activation: Optional[str],
                    residual: Any, out: Optional[NDArray[Any]],
                    num_threads: Optional[int]) -> NDArray[Any]:
    """:func:`linear` for bfloat16 x: widened to float32 (exact), computed,
    and the result rounded once to bfloat16; residual and out are then
    bfloat16 too."""
    shape = xa.shape[:-1] + (packed.out_features,)
    rf = None if residual is None else _array_arg(
        "residual", residual, xa.dtype, shape, f"the output's shape {shape}").astype(np.float32)
    if out is not None:
        res = _array_arg("out", out, xa.dtype, shape, writable=True)
        if np.shares_memory(res, xa):
            raise ValueError("out must not overlap x")
    yf = linear(xa.astype(np.float32), packed, activation=activation, residual=rf,
                num_threads=num_threads)
    if out is None:
        return yf.astype(xa.dtype)
    res[...] = yf
    return res


def layer_norm(x: Any, weight: Any, bias: Any, eps: float = 1e-5, *, residual: Any = None,
               out: Optional[NDArray[Any]] = None) -> NDArray[np.float32]:
    """``LayerNorm(x + residual) * weight + bias`` over the last axis, in
    one pass over memory per row, with float32 statistics.

    Parameters
    ----------
    x : numpy.ndarray, float32, (..., n)
    weight, bias : array_like, (n,)
        Converted to float32.
    eps : float
        Added to the variance (finite, >= 0).
    residual : numpy.ndarray or None
        float32 of x's shape, added to x first (the post-LN transformer
        block: ``LayerNorm(h + sublayer(h))``).
    out : numpy.ndarray or None
        float32 of x's shape; it may be ``x`` or ``residual`` itself
        (in place), but must not partly overlap either.

    Returns
    -------
    numpy.ndarray, float32, x's shape

    The mean and variance are float32 sums over the row (the variance from
    the centred values, not ``E[x^2] - E[x]^2``).  Each row depends on
    itself alone.  The GIL is released during the computation.
    """
    xa = _checks.ndarray("x", x)
    if xa.dtype != np.float32:
        raise TypeError(f"x has dtype {xa.dtype}; expected float32")
    if xa.ndim < 1:
        raise ValueError(f"x must have at least 1 dimension, got shape {xa.shape}")
    n = xa.shape[-1]
    g = np.ascontiguousarray(_float_array("weight", weight), dtype=np.float32)
    b = np.ascontiguousarray(_float_array("bias", bias), dtype=np.float32)
    for name, v in (("weight", g), ("bias", b)):
        if v.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) to match x's last dim, got "
                             f"{v.shape}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)):
        raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
    if not (0 <= float(eps) < float("inf")):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    f32 = np.dtype(np.float32)
    ra = None if residual is None else \
        _array_arg("residual", residual, f32, xa.shape, f"x's shape {xa.shape}")
    res = np.empty(xa.shape, dtype=np.float32) if out is None else \
        _array_arg("out", out, f32, xa.shape, writable=True)
    for name, a in (("x", xa), ("residual", ra)):
        if a is not None and out is not None and np.shares_memory(res, a) and not _same(res, a):
            raise ValueError(f"out must be {name} itself or not overlap it")
    if res.size == 0:
        return res
    x2 = _rows_view(xa)
    y2 = _rows_view(res)
    r2 = None if ra is None else _rows_view(ra)
    if x2 is None or y2 is None or (ra is not None and r2 is None):
        # a layout that cannot be viewed as rows: compute on copies
        xc = np.ascontiguousarray(xa).reshape(-1, n)
        rc = None if ra is None else np.ascontiguousarray(ra).reshape(-1, n)
        tmp = np.empty(xc.shape, dtype=np.float32)
        _core.layer_norm_f32(xc, g, b, float(eps), tmp, rc)
        res[...] = tmp.reshape(xa.shape)
    else:
        _core.layer_norm_f32(x2, g, b, float(eps), y2, r2)
    return res


def _same(a: NDArray[Any], b: NDArray[Any]) -> bool:
    """Whether two arrays are views of exactly the same elements."""
    return bool(a.shape == b.shape and a.strides == b.strides
                and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def _array_arg(name: str, a: Any, dtype: np.dtype[Any], shape: Tuple[int, ...],
               shape_text: Optional[str] = None, writable: bool = False) -> NDArray[Any]:
    """The array argument ``name``, checked: an ndarray of ``dtype`` (float32,
    or x's dtype) and ``shape`` (``shape_text`` describes it), writable
    when it is written."""
    arr = _checks.ndarray(name, a)
    if arr.dtype != dtype:
        want = "float32" if dtype == np.float32 else f"x's, {dtype}"
        raise TypeError(f"{name} has dtype {arr.dtype}; expected {want}")
    if arr.shape != shape:
        raise ValueError(f"{name} must have {shape_text or f'shape {shape}'}, got {arr.shape}")
    if writable and not arr.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return arr


def _threads(num_threads: Any) -> int:
    if num_threads is None:
        return 0
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)):
        raise TypeError(f"num_threads must be an int or None, got {type(num_threads).__name__}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return int(min(num_threads, 1 << 16))


def _aligned_empty(shape: Tuple[int, ...], dtype: Any, align: int = 64) -> NDArray[Any]:
    """A C-contiguous array whose data starts on an ``align``-byte boundary,
    so that each 64-byte row of a packed panel lies in one cache line
    (NumPy's allocations are only 16-byte aligned)."""
    size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    raw = np.empty(size + align, dtype=np.uint8)
    off = (-raw.ctypes.data) % align
    out: NDArray[Any] = raw[off:off + size].view(dtype).reshape(shape)
    return out


def _float_array(name: str, a: Any) -> NDArray[np.float32]:
    arr = np.asarray(a)
    if arr.dtype.kind != "f" and not (arr.dtype.name == "bfloat16"):
        raise TypeError(f"{name} has dtype {arr.dtype}; expected a floating dtype")
    return arr.astype(np.float32, copy=False)


def _rows_view(a: NDArray[Any]) -> Optional[NDArray[Any]]:
    """``a`` viewed as (rows, last dim), aligned, with adjacent elements in
    a row and rows at a non-negative multiple of the itemsize that does not
    overlap them; None where its layout does not allow that without a copy."""
    if a.ndim == 2 and a.flags.c_contiguous and a.flags.aligned:
        return a  # the common case, in a fraction of the general checks' time
    n = a.shape[-1]
    m = math.prod(a.shape[:-1])
    v = a.reshape(m, n)
    if v.size and not np.may_share_memory(v, a):
        return None  # reshape had to copy
    s0, s1 = v.strides
    if not v.flags.aligned or (n > 1 and s1 != v.itemsize):
        return None
    if m > 1 and (s0 < n * v.itemsize or s0 % v.itemsize):
        return None
    return v
