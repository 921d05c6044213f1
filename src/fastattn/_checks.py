"""Argument checks shared by the Python layer (``api``, ``layer``,
``kvcache`` and the models built on them).

The compiled binding validates the arrays it is handed; the checks here
are for what the Python modules take themselves: sizes, flags, dtypes,
offsets, masks and generators.  Each raises ``TypeError`` for a wrong
type or dtype and ``ValueError`` for a wrong shape or value, with a
message that names the argument and says what was expected.
"""
from __future__ import annotations

import functools
import inspect
import numbers
import os
import sys
from typing import Any, Callable, Collection, Dict, Optional, Tuple, TypeVar, cast

import numpy as np
from numpy.typing import DTypeLike, NDArray

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# the precision modes of float32 inputs, as fa_precision codes (fastattn.h)
PRECISIONS = {"highest": 0, "bf16": 1, "bf16x3": 2}


def is_half(dtype: np.dtype[Any]) -> bool:
    """True for float16 and bfloat16 (``ml_dtypes.bfloat16``)."""
    return bool(dtype == np.float16 or (dtype.name == "bfloat16" and dtype.itemsize == 2))


def integer(name: str, value: object, minimum: int) -> int:
    """``value`` as an int, which must be at least ``minimum`` (bools are
    not ints here)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def boolean(name: str, value: object) -> bool:
    """``value`` as a bool; only ``bool`` and ``numpy.bool_`` are accepted."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def ndarray(name: str, a: object) -> NDArray[Any]:
    """``a`` itself, which must be a ``numpy.ndarray``."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    return a


def same_dtype(name: str, a: NDArray[Any], dtype: np.dtype[Any], holder: str) -> None:
    """``a`` must have ``dtype``; ``holder`` completes the message, e.g.
    ``"the cache holds"`` gives "k has dtype float64 but the cache holds float32"."""
    if a.dtype != dtype:
        raise TypeError(f"{name} has dtype {a.dtype} but {holder} {dtype}")


def float_dtype(dtype: DTypeLike, *, half: bool, not_a_dtype: str) -> np.dtype[Any]:
    """``dtype`` as a NumPy dtype: float32 or float64, and with ``half``
    also float16 or bfloat16.  ``not_a_dtype`` says what was expected when
    ``dtype`` is not a dtype at all."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be {not_a_dtype}, got {dtype!r}") from None
    if dt in FLOAT_DTYPES or (half and is_half(dt)):
        return dt
    names = "float32, float64, float16 or bfloat16" if half else "float32 or float64"
    raise TypeError(f"dtype must be {names}, got {dt}")


def precision(value: object, q: object = None) -> int:
    """``precision`` ("highest", "bf16" or "bf16x3") as its fa_precision
    code.  The reduced modes are for float32 inputs: with a float64 ``q``
    they raise ``ValueError``; 16-bit inputs ignore the keyword (they
    already run at their own precision)."""
    if not isinstance(value, str):
        raise TypeError(f"precision must be a str ('highest', 'bf16' or 'bf16x3'), "
                        f"got {type(value).__name__}")
    code = PRECISIONS.get(value)
    if code is None:
        raise ValueError(f"precision must be 'highest', 'bf16' or 'bf16x3'; got {value!r}")
    if code and isinstance(q, np.ndarray) and q.dtype == np.float64:
        raise ValueError(f"precision={value!r} is for float32 inputs; float64 inputs "
                         "compute in float64 (use precision='highest', or cast to float32)")
    return code


def cache_dtype(dtype: DTypeLike) -> np.dtype[Any]:
    """A KV cache's dtype: a float dtype (see ``float_dtype``) or int8
    (``"int8"``, ``np.int8``: the 8-bit cache)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a numpy float dtype or 'int8', got {dtype!r}") from None
    if dt == np.int8 or dt in FLOAT_DTYPES or is_half(dt):
        return dt
    raise TypeError(f"dtype must be float32, float64, float16, bfloat16 or int8, got {dt}")


def quantizable(name: str, a: NDArray[Any]) -> None:
    """``a`` must hold real floats (the keys or values an int8 cache
    quantizes)."""
    if a.dtype.kind != "f" and not is_half(a.dtype):
        raise TypeError(f"{name} has dtype {a.dtype}; an int8 cache takes float keys and "
                        "values and quantizes them")


def offsets(name: str, cu: object, total: int) -> NDArray[np.int64]:
    """cu_seqlens as validated int64 offsets: 1-D, starting at 0, ending
    at ``total``, non-decreasing."""
    if not isinstance(cu, (np.ndarray, list, tuple)):
        raise TypeError(f"{name} must be a numpy.ndarray of ints, got {type(cu).__name__}")
    a = np.asarray(cu)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} has dtype {a.dtype}; expected an integer dtype")
    if a.ndim != 1 or a.size < 1:
        raise ValueError(f"{name} must be 1-D with batch + 1 offsets, got shape {a.shape}")
    if a.dtype.kind == "u" and a.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} has an offset larger than int64")
    a = np.ascontiguousarray(a, dtype=np.int64)
    if a[0] != 0:
        raise ValueError(f"{name} must start at 0, got {a[0]}")
    if np.any(np.diff(a) < 0):
        raise ValueError(f"{name} must be non-decreasing (offsets of consecutive sequences)")
    if a[-1] != total:
        raise ValueError(f"{name} ends at {a[-1]} but there are {total} rows")
    return a


def lengths(name: str, a: object, batch: int) -> NDArray[np.int64]:
    """Per-sequence lengths as int64, shape ``(batch,)``, each >= 0."""
    c = np.asarray(a)
    if c.dtype.kind not in "iu":
        raise TypeError(f"{name} has dtype {c.dtype}; expected integers")
    if c.shape != (batch,):
        raise ValueError(f"{name} has shape {c.shape}; expected ({batch},), one per sequence")
    if c.dtype.kind == "u" and c.size and c.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} has an entry larger than int64")
    wide = c.astype(np.int64)
    if (wide < 0).any():
        raise ValueError(f"{name} has a negative entry {int(wide.min())}")
    return wide


def counts(name: str, a: object, batch: int, most: int) -> NDArray[np.int64]:
    """Per-row counts as int64, shape ``(batch,)``, each in ``[0, most]``."""
    c = np.asarray(a)
    if c.dtype.kind not in "iu":
        raise TypeError(f"{name} has dtype {c.dtype}; expected integers")
    if c.shape != (batch,):
        raise ValueError(f"{name} has shape {c.shape}; expected ({batch},)")
    wide = c.astype(np.int64)
    if ((wide < 0) | (wide > most)).any():
        raise ValueError(f"{name} must be in [0, {most}] (the new tokens given)")
    return wide


def mask(a: object, full: Tuple[int, ...], names: str, shown: Tuple[int, ...]) -> NDArray[Any]:
    """A bool or float mask that broadcasts to ``full``; ``names`` and
    ``shown`` describe the expected shape in the message (e.g.
    ``"(H, Nq, Nk)"`` for an unbatched call)."""
    m = ndarray("mask", a)
    if m.dtype != np.bool_ and m.dtype.kind != "f":
        raise TypeError(f"mask has dtype {m.dtype}; expected bool (True = may attend) "
                        "or float (added to the scores)")
    try:
        ok = np.broadcast_shapes(m.shape, full) == full
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"mask has shape {m.shape}; expected a shape broadcastable "
                         f"to {names} = {shown}")
    return m


def generator(rng: object) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a Generator, an int seed or None."""
    if isinstance(rng, (bool, np.bool_)):
        raise TypeError("rng must be a numpy.random.Generator, an int seed or None, got bool")
    try:
        return np.random.default_rng(rng)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise TypeError("rng must be a numpy.random.Generator, an int seed or None, "
                        f"got {type(rng).__name__}: {e}") from None


# ---------------------------------------------------------------- PyTorch habits

# PyTorch's names of attention options: (fastattn's keyword or None, what to
# do instead).  PyTorch's ``scale`` has the same name and meaning here.
TORCH_KEYWORDS: Dict[str, Tuple[Optional[str], str]] = {
    "is_causal": ("causal", "fastattn spells it causal=; PyTorch's is_causal=True is "
                  "causal='top_left' (the diagonal aligned top-left), while causal=True "
                  "aligns it bottom-right, the KV-cache convention (the two agree when "
                  "Nq == Nk)"),
    "attn_mask": ("mask", "fastattn spells it mask=, with the same convention (bool: "
                  "True = may attend; float: added to the scaled scores)"),
    "dropout_p": (None, "fastattn has no dropout (it computes attention for inference); "
                  "leave dropout_p out"),
    "enable_gqa": (None, "grouped-query attention needs no flag in fastattn: k and v may "
                   "have fewer heads than q (H a multiple of Hkv); leave enable_gqa out"),
}

F = TypeVar("F", bound=Callable[..., Any])


def unknown_keyword(func: str, name: str, accepted: Collection[str]) -> str:
    """The message for an unexpected keyword argument ``name`` of ``func``
    (which accepts ``accepted``), with fastattn's spelling where ``name`` is
    PyTorch's."""
    msg = f"{func}() got an unexpected keyword argument {name!r}"
    hint = TORCH_KEYWORDS.get(name)
    if hint is None:
        return msg
    ours, why = hint
    if ours is not None and ours not in accepted:
        return f"{msg} (PyTorch's name for fastattn's {ours}=, which {func} does not take)"
    return f"{msg}: {why}"


def keywords(func: str, given: Dict[str, Any], accepted: Collection[str]) -> None:
    """``given`` keyword arguments must all be in ``accepted`` (for
    functions that pass ``**options`` on, e.g. ``explain``)."""
    for name in given:
        if name not in accepted:
            raise TypeError(unknown_keyword(func, name, accepted))


def torch_type(x: object) -> Optional[str]:
    """The full name of ``x``'s type if it comes from torch (found without
    importing torch), else None."""
    t = type(x)
    if t.__module__.partition(".")[0] != "torch":
        return None
    return "torch.Tensor" if t.__module__ == "torch" and t.__name__ == "Tensor" else \
        f"{t.__module__}.{t.__qualname__}"


def _reworded(func: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any],
              message: str, tensors: Optional[str]) -> Optional[str]:
    """A better message for the TypeError ``message`` of ``func(*args,
    **kwargs)`` when a PyTorch habit caused it, else None."""
    sig = inspect.signature(func)
    name = func.__qualname__
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError:
        params = sig.parameters
        for key in kwargs:
            if key not in params and key in TORCH_KEYWORDS:
                return unknown_keyword(name, key, params)
        positional = [p for p in params.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(args) > len(positional) and "causal" in params:
            return (f"{message}: the options of {name}() are keyword-only (PyTorch's "
                    "positional attn_mask and is_causal are mask=... and "
                    "causal='top_left' here)")
        return None
    if tensors is None:
        return None
    for key, value in bound.arguments.items():
        values = value.items() if sig.parameters[key].kind == inspect.Parameter.VAR_KEYWORD \
            else [(key, value)]
        for arg, x in values:
            kind = torch_type(x)
            if kind is not None and message.startswith(f"{arg} "):
                return (f"{arg} is a {kind}; fastattn.{name}() takes NumPy arrays: "
                        f"{tensors}")
    return None


# what a torch tensor passed to a NumPy-only entry point should be instead
AS_NUMPY = ("pass fastattn.torch.as_numpy(t), a NumPy view of a CPU tensor's memory "
            "(no copy); fastattn.torch.from_numpy(out) turns a result into a tensor")


def entry(tensors: Optional[str]) -> Callable[[F], F]:
    """Decorator of the public functions of the NumPy API: a ``TypeError``
    that a PyTorch habit caused says what fastattn wants instead.

    - An unexpected keyword that is PyTorch's name for an option
      (``is_causal``, ``attn_mask``, ``dropout_p``, ``enable_gqa``) gets
      fastattn's spelling (``TORCH_KEYWORDS``).
    - A torch tensor refused as an argument gets ``tensors``, the way to
      call fastattn with tensors (e.g. "use fastattn.torch.attention");
      None for functions that take tensors.

    Only a failed call is analysed; a call that succeeds costs one more
    Python call.  ``inspect.signature`` of the decorated function is that
    of the function itself.
    """
    def decorate(func: F) -> F:
        @functools.wraps(func)
        def checked(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except TypeError as e:
                better = _reworded(func, args, kwargs, str(e), tensors)
                if better is None:
                    raise
                raise TypeError(better) from None
        return cast(F, checked)
    return decorate


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` in the calling function
    that attributes the warning to the first frame outside fastattn (the
    user's call, however many of fastattn's layers it went through)."""
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    return level
