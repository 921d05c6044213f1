"""A key/value cache for incremental (autoregressive) decoding."""
from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _checks
from .api import attention

__all__ = ["KVCache"]

_AS_NUMPY = _checks.AS_NUMPY
# attention without its error rewording: attend's own does it, for attend's
# arguments (and a decode step saves a wrapper's call)
_attention: Callable[..., Any] = getattr(attention, "__wrapped__", attention)


class KVCache:
    """Keys and values of past tokens, preallocated for ``max_len`` tokens
    per batch row, with a fill length per row.

    Parameters
    ----------
    batch, kv_heads, max_len, head_dim : int
        Cache shape ``(batch, kv_heads, max_len, head_dim)``.
    value_dim : int or None
        Head dim of the values (default ``head_dim``).
    dtype : numpy dtype or "int8"
        float32 (default), float64, float16 or ``ml_dtypes.bfloat16``; or
        ``"int8"`` (``np.int8``): an 8-bit cache, see below.

    Notes
    -----
    ``append`` copies the new tokens into place; ``attend`` runs the kernel
    on the cached prefix directly (the cache buffers are passed with
    per-row key counts, ``kv_lengths``), so nothing is copied per step.
    Rows may hold different numbers of tokens (batched decoding of prompts
    of different lengths).

    With ``dtype="int8"`` the cache stores int8 keys and values and their
    float32 scales (``k_scale`` of shape ``(batch, kv_heads, head_dim)``,
    one per channel of each kv head, and ``v_scale`` of shape ``(batch,
    kv_heads, max_len)``, one per token), half the memory of a 16-bit
    cache; ``append`` takes float keys and values and quantizes them (round
    to nearest even), ``attend`` takes float32 queries and the kernels
    dequantize in registers.  A value row is scaled by its own largest
    magnitude / 127.  A key channel's scale is set by the first tokens a
    row receives (the prefill): largest magnitude / 127.  When a later
    token exceeds a channel's range, the channel's scale grows to
    ``max(needed, 2 * old)`` and that row's stored keys of the channel are
    re-quantized, so keys never saturate; with the doubling a stored key is
    re-rounded at most log2(final / first scale) times and its error stays
    within one step of the final scale (half a step when the range never
    grows).  Keys and values must be finite.  See docs/numerics.md for the
    measured error.
    """

    def __init__(self, batch: int, kv_heads: int, max_len: int, head_dim: int, *,
                 value_dim: Optional[int] = None, dtype: DTypeLike = np.float32) -> None:
        dims = {"batch": batch, "kv_heads": kv_heads, "max_len": max_len,
                "head_dim": head_dim}
        if value_dim is not None:
            dims["value_dim"] = value_dim
        for name, x in dims.items():
            dims[name] = _checks.integer(name, x, 1 if name == "kv_heads" else 0)
        dt = _checks.cache_dtype(dtype)
        dv = dims.get("value_dim", dims["head_dim"])
        shape = (dims["batch"], dims["kv_heads"], dims["max_len"])
        self.k: NDArray[Any] = np.zeros(shape + (dims["head_dim"],), dtype=dt)
        self.v: NDArray[Any] = np.zeros(shape + (dv,), dtype=dt)
        self.lengths: NDArray[np.int64] = np.zeros(batch, dtype=np.int64)
        # int8 caches: per-channel key and per-token value scales (float32)
        self.k_scale: Optional[NDArray[np.float32]] = None
        self.v_scale: Optional[NDArray[np.float32]] = None
        if dt == np.int8:
            self.k_scale = np.ones(shape[:2] + (dims["head_dim"],), dtype=np.float32)
            self.v_scale = np.ones(shape, dtype=np.float32)

    @property
    def batch(self) -> int:
        return int(self.k.shape[0])

    @property
    def kv_heads(self) -> int:
        return int(self.k.shape[1])

    @property
    def max_len(self) -> int:
        return int(self.k.shape[2])

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.k.dtype

    def __repr__(self) -> str:
        dims = (f"batch={self.batch}, kv_heads={self.kv_heads}, max_len={self.max_len}, "
                f"head_dim={self.k.shape[3]}")
        if self.v.shape[3] != self.k.shape[3]:
            dims += f", value_dim={self.v.shape[3]}"
        if self.batch <= 8:
            held = str(self.lengths.tolist())
        else:   # the range of the row lengths
            held = f"{int(self.lengths.min())}..{int(self.lengths.max())}"
        return f"KVCache({dims}, dtype={self.dtype.name}, lengths={held})"

    def reset(self) -> None:
        """Empty every row (the buffers are kept)."""
        self.lengths[:] = 0

    @_checks.entry(_AS_NUMPY)
    def append(self, k: NDArray[Any], v: NDArray[Any], *,
               lengths: Optional[ArrayLike] = None) -> None:
        """Append new tokens' keys and values.

        Parameters
        ----------
        k : ndarray, shape (batch, kv_heads, n, head_dim)
        v : ndarray, shape (batch, kv_heads, n, value_dim)
        lengths : int array of shape (batch,) or None
            How many of the n new tokens are real for each row (the rest is
            padding and is ignored); default all n.

        Raises ``ValueError`` if a row would exceed ``max_len``; the cache
        is then left unchanged.
        """
        for name, a, ref in (("k", k, self.k), ("v", v, self.v)):
            _checks.ndarray(name, a)
            if self.k_scale is not None:
                _checks.quantizable(name, a)
            else:
                _checks.same_dtype(name, a, ref.dtype, "the cache holds")
            if a.ndim != 4 or a.shape[:2] != ref.shape[:2] or a.shape[3] != ref.shape[3]:
                raise ValueError(f"{name} has shape {a.shape}; expected ({ref.shape[0]}, "
                                 f"{ref.shape[1]}, n, {ref.shape[3]})")
        if k.shape[2] != v.shape[2]:
            raise ValueError(f"v has {v.shape[2]} new tokens but k has {k.shape[2]}")
        n = k.shape[2]
        if lengths is None:
            add = np.full(self.batch, n, dtype=np.int64)
        else:
            add = _checks.counts("lengths", lengths, self.batch, n)
        new = self.lengths + add
        if new.size and new.max() > self.max_len:
            b = int(np.argmax(new))
            raise ValueError(f"cache overflow: row {b} would hold {int(new[b])} tokens but "
                             f"max_len is {self.max_len}; the cache is unchanged")
        if self.k_scale is not None:
            self._append_int8(k, v, add)
        else:
            for b in range(self.batch):
                lo, m = int(self.lengths[b]), int(add[b])
                if m:
                    self.k[b, :, lo:lo + m] = k[b, :, :m]
                    self.v[b, :, lo:lo + m] = v[b, :, :m]
        self.lengths[:] = new

    def _append_int8(self, k: NDArray[Any], v: NDArray[Any], add: NDArray[np.int64]) -> None:
        """Quantize and store the new rows of an int8 cache (see the class
        notes for the scale policy).  Everything is computed before anything
        is written, so a failure leaves the cache unchanged."""
        assert self.k_scale is not None and self.v_scale is not None
        rows = []
        for b in range(self.batch):
            lo, m = int(self.lengths[b]), int(add[b])
            if not m:
                continue
            kb = np.asarray(k[b, :, :m], dtype=np.float64)
            vb = np.asarray(v[b, :, :m], dtype=np.float64)
            for name, x in (("k", kb), ("v", vb)):
                if not np.isfinite(x).all():
                    raise ValueError(f"{name} has non-finite values; an int8 cache stores "
                                     "finite keys and values only (the cache is unchanged)")
            ks, requant = _key_scales(self.k_scale[b], self.k[b, :, :lo], kb, first=lo == 0)
            vs = _scales(np.abs(vb).max(axis=2))
            rows.append((b, lo, m, ks, requant, _quantize(kb, ks[:, None, :]),
                         _quantize(vb, vs[:, :, None]), vs))
        for b, lo, m, ks, requant, kq, vq, vs in rows:
            if requant is not None:
                self.k[b, :, :lo] = requant
            self.k_scale[b] = ks
            self.k[b, :, lo:lo + m] = kq
            self.v[b, :, lo:lo + m] = vq
            self.v_scale[b, :, lo:lo + m] = vs

    def mask_prefix(self, mask: Any, n_keys: int) -> Any:
        """A mask that spans ``max_len`` keys cut to its first ``n_keys``
        columns (the keys a call over the filled prefix sees); any other
        mask is returned as it is."""
        if isinstance(mask, np.ndarray) and mask.ndim and mask.shape[-1] == self.max_len:
            return mask[..., :n_keys]
        return mask

    @_checks.entry(_AS_NUMPY)
    def attend(self, q: NDArray[Any], *, causal: Union[bool, str] = False,
               scale: Optional[float] = None, window: Optional[Tuple[int, int]] = None,
               alibi_slopes: Optional[ArrayLike] = None, softcap: Optional[float] = None,
               mask: Optional[NDArray[Any]] = None, out: Optional[NDArray[Any]] = None,
               return_lse: bool = False, return_weights: bool = False,
               num_threads: Optional[int] = None, precision: str = "highest") -> Any:
        """Attention of ``q`` (batch, H, Nq, head_dim) over each row's cached
        tokens, ``H`` a multiple of ``kv_heads``.  The queries are the last
        ``Nq`` positions of each row (bottom-right alignment), so after
        appending the queries' own keys, ``causal=True`` lets query i see
        the cached prefix and the new tokens up to itself.  Other arguments
        as in :func:`fastattn.attention`; a ``mask`` spans ``max_len`` keys
        or the filled prefix (the most tokens any row holds).
        ``return_weights`` also returns the attention matrix over that
        prefix, ``(batch, H, Nq, max(lengths))``, after the lse when both
        are asked for.  ``precision`` as in :func:`fastattn.attention`
        (a float32 cache may run its prefill on the matrix unit).

        Queries that can see no key are almost always a mistake (attending
        before appending the queries' own keys), so they are not answered
        with silent zeros: on an empty cache (every row holds 0 tokens)
        ``attend`` raises ``ValueError``; when some rows hold no token, or
        when the cache's own alignment hides every key from some queries
        (``causal=True`` or a bounded ``window`` with more queries than a
        row holds keys), the call computes (those queries get exact zeros
        and an lse of -inf, as in :func:`fastattn.attention`) and gives a
        ``RuntimeWarning`` once per call.  Queries hidden by ``mask`` are
        the caller's choice and are not warned about.
        """
        _checks.ndarray("q", q)
        if q.ndim != 4 or q.shape[0] != self.batch:
            raise ValueError(f"q has shape {q.shape}; expected ({self.batch}, H, Nq, "
                             f"{self.k.shape[3]})")
        # only the filled prefix is passed, so work and masks stay small
        least, used = self._fill_range()
        if self.batch and not used:
            raise ValueError("the cache is empty: append keys and values first (attend "
                             "computes over the cached tokens, the queries' own included)")
        v_scale = None if self.v_scale is None else self.v_scale[:, :, :used]
        res = _attention(q, self.k[:, :, :used], self.v[:, :, :used], k_scale=self.k_scale,
                         v_scale=v_scale,
                         mask=self.mask_prefix(mask, used), causal=causal, scale=scale,
                         window=window, alibi_slopes=alibi_slopes, softcap=softcap,
                         kv_lengths=self.lengths, out=out, return_lse=return_lse,
                         return_weights=return_weights, num_threads=num_threads,
                         precision=precision)
        n_q = q.shape[2]
        if least < n_q or not least:          # else every query sees a key
            _warn_unseen(self.lengths, n_q, least, causal, window)
        return res

    def _fill_range(self) -> Tuple[int, int]:
        """The fewest and the most tokens a row holds (0, 0 without rows);
        a Python list is the faster way for the usual few rows."""
        lengths = self.lengths
        if lengths.shape[0] > 64:
            return int(lengths.min()), int(lengths.max())
        held = lengths.tolist()
        return (min(held), max(held)) if held else (0, 0)


def _warn_unseen(lengths: NDArray[np.int64], n_q: int, least: int, causal: object,
                 window: object) -> None:
    """A RuntimeWarning if some queries of a ``KVCache.attend`` (valid
    arguments; ``lengths`` the rows' token counts, ``least`` the fewest)
    see no key under the cache's own alignment: a row with no token, or
    with fewer keys than the band needs (query i of row b sees key j only
    if ``j <= i + lengths[b] - n_q + right``, ``right`` being 0 for causal
    and the window's right bound)."""
    if not n_q or not lengths.shape[0]:
        return
    right = None
    if isinstance(window, (tuple, list)) and int(window[1]) >= 0:
        right = int(window[1])
    if (causal is True or isinstance(causal, np.bool_) and causal
            or causal == "bottom_right"):
        right = 0 if right is None else min(right, 0)
    need = 1 if right is None else n_q - right
    if least >= need:
        return
    unseen = np.where(lengths == 0, n_q, np.clip(need - lengths, 0, n_q))
    rows = np.flatnonzero(unseen)
    b = int(rows[0])
    held = int(lengths[b])
    what = (f"row {b} holds {held} token{'' if held == 1 else 's'} and {unseen[b]} of "
            f"its {n_q} queries see no key")
    if rows.size > 1:
        what = f"{rows.size} rows have queries that see no key (e.g. {what})"
    warnings.warn(f"KVCache.attend: {what}; they get zeros. Append the queries' own "
                  "keys and values before attend (the queries are the last positions "
                  "of each row)", RuntimeWarning, stacklevel=_checks.stacklevel())


# The smallest scale: an all-zero row or channel still gets a valid (> 0)
# scale, and quantizes to zeros.
_TINY = float(np.finfo(np.float32).tiny)


def _scales(absmax: NDArray[np.float64]) -> NDArray[np.float32]:
    """float32 scales that map ``absmax`` to 127 (at least _TINY)."""
    return np.maximum(absmax / 127.0, _TINY).astype(np.float32)


def _quantize(x: NDArray[np.float64], scale: NDArray[Any]) -> NDArray[np.int8]:
    """round(x / scale) to nearest even, as int8 in [-127, 127]."""
    return np.clip(np.rint(x / scale.astype(np.float64)), -127, 127).astype(np.int8)


def _key_scales(old: NDArray[np.float32], stored: NDArray[np.int8], new: NDArray[np.float64],
                first: bool) -> Tuple[NDArray[np.float32], Optional[NDArray[np.int8]]]:
    """The channel scales (kv_heads, head_dim) of one batch row after
    appending ``new`` keys, and the re-quantized ``stored`` keys if a scale
    grew (None otherwise)."""
    need = _scales(np.abs(new).max(axis=1))
    if first:
        return need, None
    grow = need > old
    if not grow.any():
        return old.copy(), None
    scale = np.where(grow, np.maximum(need, 2 * old), old).astype(np.float32)
    requant = _quantize(stored.astype(np.float64) * old[:, None, :], scale[:, None, :])
    return scale, requant
