"""fastattn on PyTorch tensors, without copies.

The kernel reads CPU tensors in place: each tensor is handed to the C core
as a NumPy view of its own memory (same data pointer, same strides), and the
result is allocated by the core and handed back as a tensor over the same
memory.  bfloat16 tensors are viewed bit for bit as ``ml_dtypes.bfloat16``
storage, never converted.  There is no backward: tensors that require grad
are refused, so run models under ``torch.inference_mode()`` or
``torch.no_grad()``.

torch is imported by this module only; ``import fastattn`` never needs it.
"""
from __future__ import annotations

from typing import Any, Callable, Union

import numpy as np
import torch

from . import _checks, api

__all__ = ["attention", "attention_weights", "as_numpy", "from_numpy"]

# the NumPy API, typed loosely: it is called with views of tensors (and
# without its error rewording, which is for callers passing tensors)
_np_attention: Callable[..., Any] = getattr(api.attention, "__wrapped__", api.attention)
_np_attention_weights: Callable[..., Any] = getattr(api.attention_weights, "__wrapped__",
                                                    api.attention_weights)

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_TORCH_BF16 = torch.bfloat16

Result = Union[torch.Tensor, tuple[torch.Tensor, ...]]


_BF16: list[Any] = []     # ml_dtypes.bfloat16, once imported


def _bfloat16() -> Any:
    """ml_dtypes' bfloat16 NumPy dtype (the storage type fastattn reads)."""
    if not _BF16:
        try:
            import ml_dtypes
        except ImportError:  # pragma: no cover - ml_dtypes ships with the torch extra
            raise TypeError("bfloat16 tensors need the ml_dtypes package (pip install "
                            "ml_dtypes): fastattn reads them as ml_dtypes.bfloat16 "
                            "storage") from None
        _BF16.append(np.dtype(ml_dtypes.bfloat16))
    return _BF16[0]


def _check_tensor(t: object, name: str, dtypes: tuple[torch.dtype, ...], what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype in dtypes and not t.requires_grad and t.is_cpu \
            and t.layout == torch.strided:
        return t                                    # the common case, checked at once
    if t.layout != torch.strided:
        raise TypeError(f"{name} has layout {t.layout}; expected a dense (strided) tensor")
    if t.device.type != "cpu":
        raise ValueError(f"{name} is on device {t.device}; fastattn computes on the CPU, "
                         "so pass CPU tensors")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {t.dtype}; expected {what}")
    if t.requires_grad:
        raise ValueError(f"{name} requires grad, and fastattn has no backward; call it "
                         "under torch.inference_mode() or torch.no_grad(), or pass "
                         f"{name}.detach()")
    return t


def as_numpy(t: torch.Tensor) -> np.ndarray[Any, Any]:
    """A NumPy view of a CPU tensor's memory (same pointer and strides).

    bfloat16 becomes ``ml_dtypes.bfloat16``, bit for bit.  The view keeps
    the tensor's storage alive.
    """
    if t.dtype is _TORCH_BF16:                    # dtypes are singletons
        return t.view(torch.int16).numpy().view(_bfloat16())
    return t.numpy()


def from_numpy(a: np.ndarray[Any, Any]) -> torch.Tensor:
    """A tensor over a NumPy array's memory (``ml_dtypes.bfloat16`` becomes
    ``torch.bfloat16``), without a copy."""
    if a.dtype.kind == "V" and a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _operand(t: object, name: str) -> np.ndarray[Any, Any]:
    return as_numpy(_check_tensor(t, name, _FLOAT_DTYPES,
                                  "float32, float64, float16 or bfloat16"))


def _mask(mask: object) -> np.ndarray[Any, Any] | None:
    if mask is None:
        return None
    return as_numpy(_check_tensor(mask, "mask", (torch.bool,) + _FLOAT_DTYPES,
                                  "bool (True = may attend) or a float dtype (added to "
                                  "the scaled scores)"))


def _small(a: object, name: str) -> object:
    """alibi_slopes or kv_lengths: a tensor becomes its NumPy view, anything
    else is passed on to fastattn's own checks."""
    if isinstance(a, torch.Tensor):
        dtypes = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8) + _FLOAT_DTYPES
        _check_tensor(a, name, dtypes, "an integer or float dtype")
        if a.dtype in (torch.float16, torch.bfloat16):
            return a.double().numpy()
        return a.numpy()
    return a


def _options(mask: object, causal: bool | str, scale: float | None,
             window: tuple[int, int] | None, alibi_slopes: object, softcap: float | None,
             kv_lengths: object) -> dict[str, Any]:
    opts: dict[str, Any] = {"causal": causal, "scale": scale, "window": window,
                            "softcap": softcap}
    # the tensor options only when given (decode calls pass none of them)
    if mask is not None:
        opts["mask"] = _mask(mask)
    if alibi_slopes is not None:
        opts["alibi_slopes"] = _small(alibi_slopes, "alibi_slopes")
    if kv_lengths is not None:
        opts["kv_lengths"] = _small(kv_lengths, "kv_lengths")
    return opts


@_checks.entry(None)      # PyTorch's option names get fastattn's spellings
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
              mask: torch.Tensor | None = None, causal: bool | str = False,
              scale: float | None = None, window: tuple[int, int] | None = None,
              alibi_slopes: torch.Tensor | None = None, softcap: float | None = None,
              kv_lengths: torch.Tensor | None = None, out: torch.Tensor | None = None,
              return_lse: bool = False, return_weights: bool = False,
              num_threads: int | None = None, precision: str = "highest") -> Result:
    """:func:`fastattn.attention` on CPU tensors, read in place.

    Parameters
    ----------
    q, k, v : torch.Tensor, shapes (..., Nq, D), (..., Nk, D), (..., Nk, Dv)
        CPU tensors of one dtype: float32, float64, float16 or bfloat16,
        with any strides (a ``(B, N, H, D)`` tensor passed as
        ``x.transpose(1, 2)`` costs no copy).  k and v may have fewer heads
        than q (grouped-query attention).  They must not require grad.
    mask : torch.Tensor or None
        bool (True = may attend) or float (float32, float64, float16 or
        bfloat16, added to the scaled scores), broadcastable to
        ``(..., Nq, Nk)`` and read in place.
    causal, scale, window, softcap, return_lse, return_weights, precision
        As in :func:`fastattn.attention` (``precision="bf16"`` is the
        counterpart of ``torch.backends.mkldnn.matmul.fp32_precision``).
    alibi_slopes, kv_lengths : torch.Tensor, array or None
        As in :func:`fastattn.attention` (small; converted as needed).
    num_threads : int or None
        Threads for this call alone, as in :func:`fastattn.attention`.
    out : torch.Tensor or None
        Preallocated result of shape ``(..., Nq, Dv)`` and q's dtype, any
        strides, written in place and returned.

    Returns
    -------
    out : torch.Tensor, shape (..., Nq, Dv), q's dtype
    lse : torch.Tensor, shape (..., Nq), only if ``return_lse``
    weights : torch.Tensor, shape (..., Nq, Nk), only if ``return_weights``

    Raises
    ------
    TypeError
        For a non-tensor, a non-strided tensor or an unsupported dtype.
    ValueError
        For a tensor that is not on the CPU or that requires grad, and for
        the shape and value errors of :func:`fastattn.attention`.
    """
    aq, ak, av = _operand(q, "q"), _operand(k, "k"), _operand(v, "v")
    aout = None
    if out is not None:
        _check_tensor(out, "out", _FLOAT_DTYPES, "float32, float64, float16 or bfloat16")
        aout = as_numpy(out)
    res = _np_attention(aq, ak, av, out=aout, return_lse=return_lse,
                        return_weights=return_weights, num_threads=num_threads,
                        precision=precision,
                        **_options(mask, causal, scale, window, alibi_slopes, softcap,
                                   kv_lengths))
    if not (return_lse or return_weights):
        return out if out is not None else from_numpy(res)
    first = out if out is not None else from_numpy(res[0])
    return (first,) + tuple(from_numpy(r) for r in res[1:])


@_checks.entry(None)
def attention_weights(q: torch.Tensor, k: torch.Tensor, *, mask: torch.Tensor | None = None,
                      causal: bool | str = False, scale: float | None = None,
                      window: tuple[int, int] | None = None,
                      alibi_slopes: torch.Tensor | None = None, softcap: float | None = None,
                      kv_lengths: torch.Tensor | None = None,
                      num_threads: int | None = None,
                      precision: str = "highest") -> torch.Tensor:
    """:func:`fastattn.attention_weights` on CPU tensors: the softmax
    probabilities, shape ``(..., Nq, Nk)`` in q's dtype.  Arguments and
    errors as in :func:`attention`."""
    aq, ak = _operand(q, "q"), _operand(k, "k")
    w = _np_attention_weights(aq, ak, num_threads=num_threads, precision=precision,
                              **_options(mask, causal, scale, window, alibi_slopes,
                                                  softcap, kv_lengths))
    return from_numpy(w)
