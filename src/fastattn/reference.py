"""Plain NumPy reference implementation of scaled dot-product attention.

This module is the ground truth that the test suite and the benchmarks
compare the compiled kernels against.  It is written to be easy to check by
reading, not to be fast:

* the full score matrix ``(..., Nq, Nk)`` is materialized, so memory use is
  O(Nq * Nk) per (batch, head), unlike the compiled core which streams over
  keys;
* the arithmetic is done in the dtype of the inputs (float32 inputs give
  float32 math).  To get a float64 reference for float32 inputs, cast the
  inputs to float64 before calling.

The semantics are those of :func:`fastattn.attention`:

``q`` is ``(..., Nq, D)``, ``k`` is ``(..., Nk, D)``, ``v`` is
``(..., Nk, Dv)`` where ``...`` is ``()``, ``(H,)`` or ``(B, H)``.  k and v
may have fewer heads than q (grouped-query / multi-query attention): query
head ``h`` reads kv head ``h // (H // Hkv)``.

``mask`` is either a bool array (True = the query may attend the key, the
PyTorch convention) or a float array added to the scaled scores (``-inf``
allowed); it broadcasts to ``(..., Nq, Nk)``.  ``causal`` is False, True or
``"bottom_right"`` (query i sees key j iff ``j <= i + Nk - Nq``) or
``"top_left"`` (``j <= i``).  A query row that can see no key gives an
output row of zeros and a log-sum-exp of ``-inf``.

The variants follow :func:`fastattn.attention` too: ``window=(left,
right)`` keeps keys j with ``-left <= j - (i + Nk_b - Nq) <= right`` (-1 =
unbounded); ``softcap`` replaces each scaled score s by
``softcap * tanh(s / softcap)``; ``alibi_slopes`` (H,) or (B, H) add
``-slope * |i + Nk_b - Nq - j|``; ``kv_lengths`` (B,) hides keys
``j >= kv_lengths[b]`` and makes ``Nk_b = kv_lengths[b]`` the key count
that the bottom-right alignments use.  float16 and bfloat16 inputs are
computed in float32 and the result rounded to the input dtype.

Only NumPy is imported here, so this module works without the compiled
extension.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[Any]

__all__ = ["attention", "attention_weights", "attention_varlen"]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# numpy.exceptions exists from NumPy 1.25; older versions have it at the top.
_TooHardError = getattr(getattr(np, "exceptions", np), "TooHardError")

# The two alignments of the causal mask (True means "bottom_right").
_CAUSAL_MODES = ("bottom_right", "top_left")


# ---------------------------------------------------------------------------
# Argument checking
# ---------------------------------------------------------------------------

def _is_half(dtype: np.dtype[Any]) -> bool:
    return bool(dtype == np.float16 or (dtype.name == "bfloat16" and dtype.itemsize == 2))


def _check_array(name: str, a: ArrayLike) -> Array:
    a = np.asarray(a)
    if a.dtype not in _FLOAT_DTYPES and not _is_half(a.dtype):
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {a.dtype}")
    if a.ndim not in (2, 3, 4):
        raise ValueError(f"{name} must be 2-D, 3-D or 4-D, got {a.ndim}-D")
    return a


def _resolve_causal(causal: object) -> Optional[str]:
    """Return None (no causal mask), "bottom_right" or "top_left"."""
    if causal is None or causal is False or (isinstance(causal, np.bool_) and not causal):
        return None
    if causal is True or isinstance(causal, np.bool_):
        return "bottom_right"
    if isinstance(causal, str) and causal in _CAUSAL_MODES:
        return causal
    raise ValueError(
        "causal must be False, True, 'bottom_right' or 'top_left', "
        f"got {causal!r}")


def _resolve_scale(scale: object, d: int) -> float:
    if scale is None:
        # 1/sqrt(D); with D == 0 every score is 0 anyway, use 1.0.
        return 1.0 if d == 0 else 1.0 / math.sqrt(d)
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return scale


def _check_shapes(q: Array, k: Array, v: Optional[Array] = None) -> Tuple[int, int]:
    """Validate q, k (and v) against each other; return (H, Hkv).

    For 2-D inputs (no head axis) (1, 1) is returned.
    """
    if v is None:
        v = k  # only q and k are being checked
    if not (q.ndim == k.ndim == v.ndim):
        raise ValueError(
            f"q, k and v must have the same number of dimensions, got "
            f"q {q.ndim}-D, k {k.ndim}-D, v {v.ndim}-D")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"q, k and v must have the same dtype, got q {q.dtype}, "
            f"k {k.dtype}, v {v.dtype}")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"k has head dim {k.shape[-1]} but q has {q.shape[-1]}")
    if v.shape[:-1] != k.shape[:-1]:
        raise ValueError(
            f"v has shape {v.shape}, its leading dims and key count must "
            f"match k's {k.shape[:-1]}")
    if q.ndim == 2:
        return 1, 1
    h, hkv = q.shape[-3], k.shape[-3]
    if q.ndim == 4 and q.shape[0] != k.shape[0]:
        raise ValueError(
            f"k has batch size {k.shape[0]} but q has {q.shape[0]}")
    if hkv == 0:
        if h != 0:
            raise ValueError(f"k has 0 heads but q has {h}")
    elif h % hkv != 0:
        raise ValueError(
            f"q has {h} heads, which is not a multiple of k's {hkv} heads")
    return h, hkv


def _check_mask(mask: ArrayLike, target_shape: Tuple[int, ...]) -> Array:
    """Validate mask and return it broadcast (read-only view) to target_shape."""
    mask = np.asarray(mask)
    if mask.dtype == np.float16:
        mask = mask.astype(np.float32)  # widened, as fastattn.attention does
    if mask.dtype != np.bool_ and mask.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"mask must be bool, float16, float32 or float64, got {mask.dtype}")
    if mask.ndim > len(target_shape):
        raise ValueError(
            f"mask has {mask.ndim} dims, more than the {len(target_shape)} "
            f"of the scores {target_shape}")
    try:
        return np.broadcast_to(mask, target_shape)
    except ValueError:
        raise ValueError(
            f"mask of shape {mask.shape} does not broadcast to the scores "
            f"shape {target_shape}") from None


def _overlaps(a: Array, b: Array) -> bool:
    """True if a and b have an element in common (conservative if the exact
    answer is too expensive to work out)."""
    try:
        return bool(np.shares_memory(a, b, max_work=100_000))  # type: ignore[arg-type]
    except _TooHardError:
        return bool(np.may_share_memory(a, b))


# ---------------------------------------------------------------------------
# The computation
# ---------------------------------------------------------------------------

def _lengths(kv_lengths: Optional[ArrayLike], batch: int, nk: int) -> Optional[Array]:
    """Key count of each batch, shape (B, 1, 1) for broadcasting (or None)."""
    if kv_lengths is None:
        return None
    lens = np.asarray(kv_lengths)
    if lens.dtype.kind not in "iu":
        raise TypeError(f"kv_lengths must be integers, got {lens.dtype}")
    if lens.shape != (batch,):
        raise ValueError(f"kv_lengths has shape {lens.shape}, expected ({batch},)")
    if lens.size and (lens.min() < 0 or lens.max() > nk):
        raise ValueError(f"kv_lengths must be in [0, {nk}]")
    return lens.astype(np.int64).reshape(batch, 1, 1)


def _canonical(a: Array) -> Array:
    """``a`` C-contiguous and aligned (a copy unless it already is)."""
    return np.require(a, requirements=["C", "A"])


def _scores(q: Array, k: Array, mask: Optional[ArrayLike], causal: object, scale: object,
            window: Optional[Tuple[int, int]] = None, alibi_slopes: Optional[ArrayLike] = None,
            softcap: Optional[float] = None, kv_lengths: Optional[ArrayLike] = None
            ) -> Tuple[Array, Tuple[int, int]]:
    """Scaled, capped, biased, masked scores (-inf where a key is hidden)
    in q's dtype.

    Returns (scores, (H, Hkv)); scores has shape q.shape[:-1] + (Nk,).
    """
    h, hkv = _check_shapes(q, k)
    dtype = q.dtype
    nq, nk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = _resolve_scale(scale, d)
    mode = _resolve_causal(causal)
    batch = q.shape[0] if q.ndim == 4 else 1
    lens = _lengths(kv_lengths, batch, nk)
    # The key count each batch aligns its bottom-right diagonal with.
    nk_b = np.full((batch, 1, 1), nk, dtype=np.int64) if lens is None else lens
    i = np.arange(nq)[None, :, None]
    j = np.arange(nk)[None, None, :]
    rel = j - (i + nk_b - nq)  # (B, Nq, Nk): key offset from the diagonal

    def per_batch(x: Array) -> Array:
        # (B, Nq, Nk) -> broadcastable to the scores' shape
        return x[:, None] if q.ndim == 4 else x[0] if q.ndim == 2 else x

    # Grouped-query attention: give every query head its own copy of the
    # kv head it reads (head h reads kv head h // (H // Hkv)).
    if q.ndim >= 3 and hkv != h and hkv > 0:
        k = np.repeat(k, h // hkv, axis=-3)

    # scores[..., i, j] = scale * sum_c q[..., i, c] * k[..., j, c]; the
    # operands in one layout (C order, aligned), so that the BLAS, whose
    # kernels and rounding depend on the layout, gives every layout of the
    # same values the same result
    q, k = _canonical(q), _canonical(k)
    scores = np.matmul(q, np.swapaxes(k, -1, -2)).astype(dtype, copy=False)
    scores = scores * dtype.type(scale)
    target = scores.shape  # q.shape[:-1] + (Nk,)

    # visible[..., i, j] is True when query i may attend key j.
    if softcap is not None:
        scores = (dtype.type(softcap) * np.tanh(scores / dtype.type(softcap))).astype(dtype)
    if alibi_slopes is not None:
        slopes = np.asarray(alibi_slopes, dtype=np.float64)
        # (H,) or (B, H) -> (B or 1, H, 1, 1) against distances (B, 1, Nq, Nk)
        slopes4 = slopes[None, :, None, None] if slopes.ndim == 1 else slopes[:, :, None, None]
        bias = (-slopes4 * np.abs(rel)[:, None]).astype(dtype)
        bias = bias[0] if q.ndim == 3 else bias[0, 0] if q.ndim == 2 else bias
        scores = scores + bias

    visible = np.ones(target, dtype=bool)
    if mode is not None:
        if mode == "bottom_right":
            visible &= per_batch(rel <= 0)
        else:
            visible &= per_batch(np.broadcast_to(j - i <= 0, rel.shape))
    if window is not None:
        left, right = window
        if left >= 0:
            visible &= per_batch(rel >= -left)
        if right >= 0:
            visible &= per_batch(rel <= right)
    if lens is not None:
        visible &= per_batch(j < lens)
    if mask is not None:
        m = _check_mask(mask, target)
        if m.dtype == np.bool_:
            visible &= m
        else:
            # Additive mask, applied in the compute dtype.  -inf hides the
            # key exactly like False in a bool mask (so a NaN or inf score
            # at a hidden key is ignored, not turned into NaN).
            m = m.astype(dtype, copy=False)
            hidden = m == -np.inf
            visible &= ~hidden
            scores = scores + np.where(hidden, dtype.type(0), m)

    scores = np.where(visible, scores, dtype.type(-np.inf))
    return scores, (h, hkv)


def _softmax(scores: Array) -> Tuple[Array, Array, Array]:
    """Row softmax and log-sum-exp of scores, robust to all -inf rows.

    Returns (p, lse, empty) where ``empty`` flags rows that see no key
    (every score -inf, or Nk == 0); for those p is 0 and lse is -inf.
    """
    dtype = scores.dtype
    nk = scores.shape[-1]
    if nk == 0:
        lse = np.full(scores.shape[:-1], -np.inf, dtype=dtype)
        return scores.copy(), lse, np.ones(scores.shape[:-1], dtype=bool)
    row_max = scores.max(axis=-1)  # NaN propagates through max
    empty = row_max == -np.inf
    # Subtract the row maximum for stability; use 0 for empty rows so that
    # exp(-inf - 0) = 0 instead of exp(-inf - -inf) = NaN.
    shift = np.where(empty, dtype.type(0), row_max)
    e = np.exp(scores - shift[..., None])
    total = e.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = e / np.where(empty, dtype.type(1), total)[..., None]
        lse = row_max + np.log(total)
    lse = np.where(empty, dtype.type(-np.inf), lse).astype(dtype, copy=False)
    p = np.where(empty[..., None], dtype.type(0), p).astype(dtype, copy=False)
    return p, lse, empty


def _widen(*arrays: Array) -> Tuple[Array, ...]:
    """float16/bfloat16 arrays as float32 (the compute type), others as is."""
    return tuple(a.astype(np.float32) if _is_half(a.dtype) else a for a in arrays)


def attention_weights(q: ArrayLike, k: ArrayLike, *, mask: Optional[ArrayLike] = None,
                      causal: object = False, scale: Optional[float] = None,
                      window: Optional[Tuple[int, int]] = None,
                      alibi_slopes: Optional[ArrayLike] = None, softcap: Optional[float] = None,
                      kv_lengths: Optional[ArrayLike] = None) -> Array:
    """Softmax attention probabilities, shape ``q.shape[:-1] + (Nk,)``.

    Rows that can see no key are all zeros.  Same argument conventions as
    :func:`attention`.
    """
    q = _check_array("q", q)
    k = _check_array("k", k)
    dtype = q.dtype
    q, k = _widen(q, k)
    scores, _ = _scores(q, k, mask, causal, scale, window, alibi_slopes, softcap, kv_lengths)
    p, _, _ = _softmax(scores)
    return p.astype(dtype)


def attention(q: ArrayLike, k: ArrayLike, v: ArrayLike, *, mask: Optional[ArrayLike] = None,
              causal: object = False, scale: Optional[float] = None,
              out: Optional[Array] = None, return_lse: bool = False,
              window: Optional[Tuple[int, int]] = None,
              alibi_slopes: Optional[ArrayLike] = None, softcap: Optional[float] = None,
              kv_lengths: Optional[ArrayLike] = None) -> Any:
    """Reference attention: ``softmax(scale * q @ k.T + mask) @ v``.

    See the module docstring for the conventions.  Returns the output of
    shape ``q.shape[:-1] + (Dv,)`` in the inputs' dtype, or ``(out, lse)``
    with ``lse`` of shape ``q.shape[:-1]`` when ``return_lse`` is true.  If
    ``out`` is given the result is written into it and ``out`` itself is
    returned.
    """
    q = _check_array("q", q)
    k = _check_array("k", k)
    v = _check_array("v", v)
    h, hkv = _check_shapes(q, k, v)
    dtype = q.dtype
    out_shape = q.shape[:-1] + (v.shape[-1],)

    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
        if out.shape != out_shape:
            raise ValueError(f"out has shape {out.shape}, expected {out_shape}")
        if out.dtype != dtype:
            raise ValueError(f"out has dtype {out.dtype}, expected {dtype}")
        if not out.flags.writeable:
            raise ValueError("out is read-only")
        for name, a in (("q", q), ("k", k), ("v", v), ("mask", mask)):
            if a is not None and _overlaps(out, np.asarray(a)):
                raise ValueError(f"out shares memory with {name}")

    store = dtype
    q, k, v = _widen(q, k, v)
    dtype = q.dtype
    scores, _ = _scores(q, k, mask, causal, scale, window, alibi_slopes, softcap, kv_lengths)
    p, lse, empty = _softmax(scores)

    if q.ndim >= 3 and hkv != h and hkv > 0:
        v = np.repeat(v, h // hkv, axis=-3)
    result = np.matmul(p, _canonical(v)).astype(dtype, copy=False)
    # Rows that see no key are exactly zero (p is zero there, but 0 * NaN
    # or 0 * inf in v would otherwise leak into them).
    result = np.where(empty[..., None], dtype.type(0), result)
    result = np.asarray(result, dtype=dtype).reshape(out_shape).astype(store)

    if out is not None:
        out[...] = result
        result = out
    if return_lse:
        return result, lse.reshape(q.shape[:-1])
    return result


def attention_varlen(q: Array, k: Array, v: Array, cu_seqlens_q: Any, cu_seqlens_k: Any,
                     *, per_sequence: Optional[Callable[..., Any]] = None,
                     **kwargs: Any) -> Any:
    """Packed variable-length attention, one :func:`attention` call per
    sequence: q is (total_q, H, D), k and v (total_k, Hkv, D); sequence b
    owns rows ``cu_seqlens_q[b]:cu_seqlens_q[b + 1]`` (and likewise for
    keys).  ``alibi_slopes`` may be (H,) or (B, H).  Returns out
    (total_q, H, Dv) and, with ``return_lse``, lse (H, total_q).
    ``per_sequence`` replaces :func:`attention` for each sequence (a
    function with its signature, e.g. a model of another precision)."""
    one = attention if per_sequence is None else per_sequence
    return_lse = kwargs.pop("return_lse", False)
    slopes = kwargs.pop("alibi_slopes", None)
    outs, lses = [], []
    for b in range(len(cu_seqlens_q) - 1):
        qs = q[cu_seqlens_q[b]:cu_seqlens_q[b + 1]].transpose(1, 0, 2)
        ks = k[cu_seqlens_k[b]:cu_seqlens_k[b + 1]].transpose(1, 0, 2)
        vs = v[cu_seqlens_k[b]:cu_seqlens_k[b + 1]].transpose(1, 0, 2)
        sl = None if slopes is None else np.asarray(slopes)
        if sl is not None and sl.ndim == 2:
            sl = sl[b]
        o, lse = one(qs, ks, vs, return_lse=True, alibi_slopes=sl, **kwargs)
        outs.append(o.transpose(1, 0, 2))
        lses.append(lse)
    out = np.concatenate(outs, axis=0) if outs else np.zeros(
        (0,) + q.shape[1:-1] + (v.shape[-1],), q.dtype)
    if return_lse:
        lse = np.concatenate(lses, axis=1) if lses else np.zeros((q.shape[1], 0), np.float32)
        return out, lse
    return out
