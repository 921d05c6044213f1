"""A key/value cache for incremental (autoregressive) decoding."""
import numbers

import numpy as np

from . import _core
from ._threads import call_threads
from .reference import _is_half

__all__ = ["KVCache"]


class KVCache:
    """Keys and values of past tokens, preallocated for ``max_len`` tokens
    per batch row, with a fill length per row.

    Parameters
    ----------
    batch, kv_heads, max_len, head_dim : int
        Cache shape ``(batch, kv_heads, max_len, head_dim)``.
    value_dim : int or None
        Head dim of the values (default ``head_dim``).
    dtype : numpy dtype
        float32 (default), float64, float16 or ``ml_dtypes.bfloat16``.

    Notes
    -----
    ``append`` copies the new tokens into place; ``attend`` runs the kernel
    on the cached prefix directly (the cache buffers are passed with
    per-row key counts, ``kv_lengths``), so nothing is copied per step.
    Rows may hold different numbers of tokens (batched decoding of prompts
    of different lengths).
    """

    def __init__(self, batch, kv_heads, max_len, head_dim, *, value_dim=None,
                 dtype=np.float32):
        dims = {"batch": batch, "kv_heads": kv_heads, "max_len": max_len,
                "head_dim": head_dim}
        if value_dim is not None:
            dims["value_dim"] = value_dim
        for name, x in dims.items():
            if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
                raise TypeError(f"{name} must be an int, got {type(x).__name__}")
            if x < 0 or (name == "kv_heads" and x < 1):
                raise ValueError(f"{name} must be {'>= 1' if name == 'kv_heads' else '>= 0'}, "
                                 f"got {x}")
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be a numpy float dtype, got {dtype!r}") from None
        if dt not in (np.float32, np.float64) and not _is_half(dt):
            raise TypeError(f"dtype must be float32, float64, float16 or bfloat16, got {dt}")
        dv = head_dim if value_dim is None else value_dim
        self.k = np.zeros((batch, kv_heads, max_len, head_dim), dtype=dt)
        self.v = np.zeros((batch, kv_heads, max_len, dv), dtype=dt)
        self.lengths = np.zeros(batch, dtype=np.int64)

    @property
    def batch(self):
        return self.k.shape[0]

    @property
    def kv_heads(self):
        return self.k.shape[1]

    @property
    def max_len(self):
        return self.k.shape[2]

    @property
    def dtype(self):
        return self.k.dtype

    def reset(self):
        """Empty every row (the buffers are kept)."""
        self.lengths[:] = 0

    def append(self, k, v, *, lengths=None):
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
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
            if a.dtype != ref.dtype:
                raise TypeError(f"{name} has dtype {a.dtype} but the cache holds {ref.dtype}")
            if a.ndim != 4 or a.shape[:2] != ref.shape[:2] or a.shape[3] != ref.shape[3]:
                raise ValueError(f"{name} has shape {a.shape}; expected ({ref.shape[0]}, "
                                 f"{ref.shape[1]}, n, {ref.shape[3]})")
        if k.shape[2] != v.shape[2]:
            raise ValueError(f"v has {v.shape[2]} new tokens but k has {k.shape[2]}")
        n = k.shape[2]
        if lengths is None:
            add = np.full(self.batch, n, dtype=np.int64)
        else:
            add = np.asarray(lengths)
            if add.dtype.kind not in "iu":
                raise TypeError(f"lengths has dtype {add.dtype}; expected integers")
            if add.shape != (self.batch,):
                raise ValueError(f"lengths has shape {add.shape}; expected ({self.batch},)")
            if add.size and (add.min() < 0 or add.max() > n):
                raise ValueError(f"lengths must be in [0, {n}] (the new tokens given)")
            add = add.astype(np.int64)
        new = self.lengths + add
        if new.size and new.max() > self.max_len:
            b = int(np.argmax(new))
            raise ValueError(f"cache overflow: row {b} would hold {int(new[b])} tokens but "
                             f"max_len is {self.max_len}; the cache is unchanged")
        for b in range(self.batch):
            lo, m = int(self.lengths[b]), int(add[b])
            if m:
                self.k[b, :, lo:lo + m] = k[b, :, :m]
                self.v[b, :, lo:lo + m] = v[b, :, :m]
        self.lengths[:] = new

    def attend(self, q, *, causal=False, scale=None, window=None, alibi_slopes=None,
               softcap=None, mask=None, out=None, return_lse=False, num_threads=None):
        """Attention of ``q`` (batch, H, Nq, head_dim) over each row's cached
        tokens, ``H`` a multiple of ``kv_heads``.  The queries are the last
        ``Nq`` positions of each row (bottom-right alignment), so after
        appending the queries' own keys, ``causal=True`` lets query i see
        the cached prefix and the new tokens up to itself.  Other arguments
        as in :func:`fastattn.attention`; a ``mask`` spans ``max_len`` keys.
        """
        if not isinstance(q, np.ndarray):
            raise TypeError(f"q must be a numpy.ndarray, got {type(q).__name__}")
        if q.ndim != 4 or q.shape[0] != self.batch:
            raise ValueError(f"q has shape {q.shape}; expected ({self.batch}, H, Nq, "
                             f"{self.k.shape[3]})")
        # only the filled prefix is passed, so work and masks stay small
        used = int(self.lengths.max()) if self.batch else 0
        if isinstance(mask, np.ndarray) and mask.ndim and mask.shape[-1] == self.max_len:
            mask = mask[..., :used]  # the mask spans max_len keys: its filled prefix
        return _core.attention(q, self.k[:, :, :used], self.v[:, :, :used], mask, causal,
                               scale, out, return_lse, window, alibi_slopes, softcap,
                               self.lengths, False, num_threads=call_threads(num_threads))
