"""Packed linear layers: ``y = x @ W.T + b`` on fastattn's own GEMM.

``pack_linear`` lays a weight out once for the kernel (panels of 16 output
columns, ``csrc/kernels/linear.h``); ``linear`` applies it.  Every output
element is computed by the same sequence of operations whatever the other
rows of ``x`` are (K in fixed blocks, each summed in order, then the bias),
so a row's result never depends on its neighbours, on the number of rows or
on how a batch was cut.  Optimized BLAS libraries do not promise that: they
pick kernels and edge code by the shape of a call and by a row's position
in it.  The models build their bitwise batch invariance on this.

Only float32 is implemented so far.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
from numpy.typing import NDArray

from . import _checks
from . import _core

__all__ = ["PackedLinear", "pack_linear", "linear"]

_PANEL: int = int(_core.LINEAR_PANEL)
_DTYPES = ("float32",)


class PackedLinear:
    """A weight (and bias) packed for :func:`linear`; made by
    :func:`pack_linear`.  Immutable; pickles by value (the weight is
    unpacked and packed again on load)."""

    __slots__ = ("_packed", "_bias", "_out", "_in")

    _packed: NDArray[np.float32]
    _bias: Optional[NDArray[np.float32]]
    _out: int
    _in: int

    def __init__(self, packed: NDArray[np.float32], bias: Optional[NDArray[np.float32]],
                 out_features: int, in_features: int) -> None:
        packed.flags.writeable = False
        if bias is not None:
            bias.flags.writeable = False
        object.__setattr__(self, "_packed", packed)
        object.__setattr__(self, "_bias", bias)
        object.__setattr__(self, "_out", out_features)
        object.__setattr__(self, "_in", in_features)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("PackedLinear is immutable")

    @property
    def dtype(self) -> str:
        """The arithmetic of the products: ``"float32"``."""
        return "float32"

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
        """Bytes held: the packed weight (padded to whole panels) and the bias."""
        return int(self._packed.nbytes + (0 if self._bias is None else self._bias.nbytes))

    def weight(self) -> NDArray[np.float32]:
        """The weight, ``(out_features, in_features)``, unpacked (a new array)."""
        w = self._packed.transpose(0, 2, 1).reshape(self._packed.shape[0] * _PANEL,
                                                    self._in)[:self._out]
        return np.ascontiguousarray(w)

    def bias(self) -> Optional[NDArray[np.float32]]:
        """The bias (a copy), or None."""
        return None if self._bias is None else self._bias.copy()

    def __reduce__(self) -> Tuple[Any, ...]:
        return (pack_linear, (self.weight(), self.bias()))

    def __repr__(self) -> str:
        return (f"PackedLinear(out_features={self._out}, in_features={self._in}, "
                f"dtype='float32', bias={self.has_bias}, nbytes={self.nbytes})")


def pack_linear(weight: Any, bias: Any = None, *, dtype: str = "float32") -> PackedLinear:
    """Pack a linear layer's weight for :func:`linear`.

    Parameters
    ----------
    weight : array_like, (out_features, in_features)
        In PyTorch's orientation (``y = x @ weight.T + bias``); any real
        floating dtype, converted to float32.
    bias : array_like (out_features,) or None
    dtype : {"float32"}
        The arithmetic of the products.  Only float32 is implemented.

    Returns
    -------
    PackedLinear
    """
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
    w = _float_array("weight", weight)
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {w.shape}")
    n, k = w.shape
    b: Optional[NDArray[np.float32]] = None
    if bias is not None:
        b = np.array(_float_array("bias", bias), dtype=np.float32, order="C")
        if b.shape != (n,):
            raise ValueError(f"bias must have shape ({n},) to match weight's out_features, "
                             f"got {b.shape}")
    panels = -(-n // _PANEL)
    padded = np.zeros((panels * _PANEL, k), dtype=np.float32)
    padded[:n] = w
    packed = np.ascontiguousarray(padded.reshape(panels, _PANEL, k).transpose(0, 2, 1))
    return PackedLinear(packed, b, int(n), int(k))


def linear(x: Any, packed: PackedLinear, *, out: Optional[NDArray[Any]] = None
           ) -> NDArray[np.float32]:
    """``x @ W.T + b`` for a :class:`PackedLinear` made by :func:`pack_linear`.

    Parameters
    ----------
    x : numpy.ndarray, float32, (..., in_features)
        Any leading dims and any strides (a layout that cannot be viewed as
        aligned rows of adjacent elements is copied first).
    packed : PackedLinear
    out : numpy.ndarray or None
        float32 of shape ``x.shape[:-1] + (out_features,)``, with adjacent
        elements in its last dim; written and returned.

    Returns
    -------
    numpy.ndarray, float32, (..., out_features)

    A row's result depends on that row alone, bitwise (see the module
    docstring).  Runs on the calling thread with the GIL released.
    """
    if not isinstance(packed, PackedLinear):
        raise TypeError(f"packed must be a fastattn.PackedLinear (from pack_linear), got "
                        f"{type(packed).__name__}")
    xa = _checks.ndarray("x", x)
    if xa.dtype != np.float32:
        raise TypeError(f"x has dtype {xa.dtype}; expected float32")
    if xa.ndim < 1 or xa.shape[-1] != packed.in_features:
        raise ValueError(f"x must have shape (..., {packed.in_features}) to match the "
                         f"layer's in_features, got {xa.shape}")
    lead = xa.shape[:-1]
    shape = lead + (packed.out_features,)
    if out is None:
        res = np.empty(shape, dtype=np.float32)
    else:
        res = _checks.ndarray("out", out)
        if res.dtype != np.float32:
            raise TypeError(f"out has dtype {res.dtype}; expected float32")
        if res.shape != shape:
            raise ValueError(f"out must have shape {shape}, got {res.shape}")
        if not res.flags.writeable:
            raise ValueError("out is read-only")
        if np.shares_memory(res, xa):
            raise ValueError("out must not overlap x")
    if res.size == 0:
        return res
    if xa.size == 0:  # in_features == 0: no products, the bias alone
        res[...] = 0 if packed._bias is None else packed._bias
        return res
    x2 = _rows_view(xa)
    if x2 is None:
        x2 = np.require(xa, requirements=["C", "A"]).reshape(-1, packed.in_features)
    y2 = _rows_view(res)
    if y2 is None:  # out's rows cannot be viewed in place: compute, then copy
        tmp = np.empty((x2.shape[0], packed.out_features), dtype=np.float32)
        _core.linear_f32(x2, packed._packed, packed._bias, tmp)
        res[...] = tmp.reshape(shape)
    else:
        _core.linear_f32(x2, packed._packed, packed._bias, y2)
    return res


def _float_array(name: str, a: Any) -> NDArray[np.float32]:
    arr = np.asarray(a)
    if arr.dtype.kind != "f" and not (arr.dtype.name == "bfloat16"):
        raise TypeError(f"{name} has dtype {arr.dtype}; expected a floating dtype")
    return arr.astype(np.float32, copy=False)


def _rows_view(a: NDArray[Any]) -> Optional[NDArray[Any]]:
    """``a`` viewed as (rows, last dim), aligned, with adjacent elements in
    a row and rows at a non-negative multiple of the itemsize that does not
    overlap them; None where its layout does not allow that without a copy."""
    n = a.shape[-1]
    m = int(np.prod(a.shape[:-1], dtype=np.int64))
    v = a.reshape(m, n)
    if v.size and not np.may_share_memory(v, a):
        return None  # reshape had to copy
    s0, s1 = v.strides
    if not v.flags.aligned or (n > 1 and s1 != v.itemsize):
        return None
    if m > 1 and (s0 < n * v.itemsize or s0 % v.itemsize):
        return None
    return v
