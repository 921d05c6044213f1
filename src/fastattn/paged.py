"""A paged key/value cache: many sequences of any lengths in one bounded
pool of fixed-size pages, for serving many conversations at once."""
from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _checks
from .kvcache import _key_scales, _quantize, _scales

__all__ = ["PagedKVCache", "DEFAULT_PAGE_SIZE"]

# Rows per page.  Decode walks the pages inside one kernel call (its speed
# hardly depends on the page size: 64 to 256 rows measured alike), while a
# prefill chunk or an int8 page runs one kernel call per page, which wants
# pages of several key blocks of 64.  The last, partly filled page of a
# sequence wastes at most page_size - 1 rows.
DEFAULT_PAGE_SIZE = 256
# Page sizes are multiples of this (whole vectors of keys in every kernel).
PAGE_QUANTUM = 16


class PagedKVCache:
    """Keys and values of many sequences, in pages of ``page_size`` rows
    drawn from one pool preallocated for ``num_pages`` pages.

    Parameters
    ----------
    kv_heads, head_dim : int
        Heads and head dim of the keys (and of the values, unless
        ``value_dim`` is given).
    num_pages : int
        Pages in the pool: the memory is ``num_pages * page_size`` rows for
        every kv head, allocated here and never grown.
    page_size : int
        Rows per page, a multiple of 16 (default ``DEFAULT_PAGE_SIZE``).
    max_seqs : int
        Sequence slots: ids ``0 .. max_seqs - 1``.
    max_pages_per_seq : int or None
        Width of the block table (default ``num_pages``).
    dtype : numpy dtype or "int8"
        float32 (default), float16, ``ml_dtypes.bfloat16``, float64, or
        ``"int8"``: int8 rows with float32 scales, one per channel of each
        kv head of each page for keys (``k_scale``, ``(num_pages, kv_heads,
        head_dim)``) and one per row for values (``v_scale``).  A key
        channel's page scale is set by the page's first rows and grows as
        in :class:`fastattn.KVCache` (``max(needed, 2 * old)``, that page's
        rows re-quantized), so keys never saturate.

    Attributes
    ----------
    k_pages, v_pages : ndarray, (num_pages, kv_heads, page_size, head_dim)
        The pools (the layout vLLM's CPU backend uses).
    block_table : ndarray of int32, (max_seqs, max_pages_per_seq)
        Page ids of each sequence in key order; -1 where none.
    lengths : ndarray of int64, (max_seqs,)
        Rows each sequence holds.

    Notes
    -----
    ``allocate`` opens a sequence, ``append`` copies its new keys and
    values into its pages (taking free pages as needed), ``free`` returns
    its pages.  Running out of pages or slots raises ``MemoryError``
    before anything is written.  :func:`fastattn.attention_paged` (or
    ``attend``) reads the pages in place: nothing is gathered into a copy.
    """

    def __init__(self, kv_heads: int, head_dim: int, *, num_pages: int, max_seqs: int,
                 page_size: int = DEFAULT_PAGE_SIZE, max_pages_per_seq: Optional[int] = None,
                 value_dim: Optional[int] = None, dtype: DTypeLike = np.float32) -> None:
        kv_heads = _checks.integer("kv_heads", kv_heads, 1)
        head_dim = _checks.integer("head_dim", head_dim, 0)
        num_pages = _checks.integer("num_pages", num_pages, 1)
        max_seqs = _checks.integer("max_seqs", max_seqs, 1)
        page_size = _checks.integer("page_size", page_size, 1)
        if page_size % PAGE_QUANTUM:
            raise ValueError(f"page_size must be a multiple of {PAGE_QUANTUM}, got {page_size}")
        if num_pages > 0x7FFFFFFF:
            raise ValueError(f"num_pages must be at most 2**31 - 1, got {num_pages}")
        width = num_pages if max_pages_per_seq is None else _checks.integer(
            "max_pages_per_seq", max_pages_per_seq, 1)
        dv = head_dim if value_dim is None else _checks.integer("value_dim", value_dim, 0)
        dt = _checks.cache_dtype(dtype)
        self.k_pages: NDArray[Any] = np.zeros((num_pages, kv_heads, page_size, head_dim), dt)
        self.v_pages: NDArray[Any] = np.zeros((num_pages, kv_heads, page_size, dv), dt)
        self.k_scale: Optional[NDArray[np.float32]] = None
        self.v_scale: Optional[NDArray[np.float32]] = None
        if dt == np.int8:
            self.k_scale = np.ones((num_pages, kv_heads, head_dim), np.float32)
            self.v_scale = np.ones((num_pages, kv_heads, page_size), np.float32)
        self.block_table: NDArray[np.int32] = np.full((max_seqs, width), -1, np.int32)
        self.lengths: NDArray[np.int64] = np.zeros(max_seqs, np.int64)
        self._open = np.zeros(max_seqs, bool)
        # free pages, taken from the end (lowest ids first)
        self._free: List[int] = list(range(num_pages - 1, -1, -1))

    # ------------------------------------------------------------ shape
    @property
    def page_size(self) -> int:
        return int(self.k_pages.shape[2])

    @property
    def num_pages(self) -> int:
        return int(self.k_pages.shape[0])

    @property
    def free_pages(self) -> int:
        return len(self._free)

    @property
    def kv_heads(self) -> int:
        return int(self.k_pages.shape[1])

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.k_pages.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of the pools and their scales."""
        n = self.k_pages.nbytes + self.v_pages.nbytes
        if self.k_scale is not None and self.v_scale is not None:
            n += self.k_scale.nbytes + self.v_scale.nbytes
        return n

    def __repr__(self) -> str:
        return (f"PagedKVCache(kv_heads={self.kv_heads}, head_dim={self.k_pages.shape[3]}, "
                f"page_size={self.page_size}, pages {self.num_pages - self.free_pages}/"
                f"{self.num_pages} used, sequences {int(self._open.sum())}/"
                f"{self._open.size} open, dtype={self.dtype.name})")

    # ------------------------------------------------------------ sequences
    def allocate(self) -> int:
        """Open a sequence (no rows yet) and return its id."""
        free = np.flatnonzero(~self._open)
        if not free.size:
            raise MemoryError(f"PagedKVCache: all {self._open.size} sequence slots are open; "
                              "free one first")
        s = int(free[0])
        self._open[s] = True
        return s

    def free(self, seq_id: int) -> None:
        """Close a sequence and return its pages to the pool."""
        s = self._seq(seq_id)
        n = self._pages_for(int(self.lengths[s]))
        self._free.extend(int(g) for g in self.block_table[s, :n][::-1])
        self.block_table[s] = -1
        self.lengths[s] = 0
        self._open[s] = False

    def _seq(self, seq_id: object, name: str = "seq_id") -> int:
        s = _checks.integer(name, seq_id, 0)
        if s >= self._open.size or not self._open[s]:
            raise ValueError(f"{name} {s} is not an open sequence of this cache")
        return s

    def _pages_for(self, rows: int) -> int:
        return -(-rows // self.page_size)

    def seq_ids(self, seq_ids: Optional[ArrayLike]) -> NDArray[np.int64]:
        """``seq_ids`` checked (open, distinct) as int64; None: every open
        sequence in id order."""
        if seq_ids is None:
            return np.flatnonzero(self._open).astype(np.int64)
        ids = np.asarray(seq_ids)
        if ids.dtype.kind not in "iu" or ids.ndim != 1:
            raise TypeError(f"seq_ids must be a 1-D array of ints, got "
                            f"{ids.dtype if isinstance(seq_ids, np.ndarray) else type(seq_ids).__name__}")
        ids = ids.astype(np.int64)
        bad = (ids < 0) | (ids >= self._open.size)
        if bad.any() or not self._open[ids].all():
            s = int(ids[bad][0]) if bad.any() else int(ids[~self._open[ids]][0])
            raise ValueError(f"seq_ids has {s}, which is not an open sequence of this cache")
        if np.unique(ids).size != ids.size:
            raise ValueError("seq_ids names a sequence twice")
        return ids

    # ------------------------------------------------------------ append
    def append(self, seq_ids: Union[int, ArrayLike], k: NDArray[Any], v: NDArray[Any], *,
               cu_seqlens: Optional[ArrayLike] = None) -> None:
        """Append new rows to one sequence or to several at once.

        Parameters
        ----------
        seq_ids : int, or int array of shape (B,)
        k : ndarray, shape (n, kv_heads, head_dim); v likewise with value_dim
            The new rows, end to end when several sequences are given.
        cu_seqlens : int array of shape (B + 1,), or None
            With several sequences: sequence b gets rows ``cu_seqlens[b] :
            cu_seqlens[b + 1]``.

        Raises ``MemoryError`` when the free pages (or a block table row)
        cannot hold the rows, and ``ValueError``/``TypeError`` for bad
        arguments; the cache is then unchanged.
        """
        single = isinstance(seq_ids, (int, np.integer)) and not isinstance(seq_ids, bool)
        ids = np.array([self._seq(seq_ids)]) if single else self.seq_ids(seq_ids)
        for name, a, ref in (("k", k, self.k_pages), ("v", v, self.v_pages)):
            _checks.ndarray(name, a)
            if self.k_scale is not None:
                _checks.quantizable(name, a)
            else:
                _checks.same_dtype(name, a, ref.dtype, "the cache holds")
            if a.ndim != 3 or a.shape[1:] != (ref.shape[1], ref.shape[3]):
                raise ValueError(f"{name} has shape {a.shape}; expected (n, {ref.shape[1]}, "
                                 f"{ref.shape[3]}), rows end to end")
        if k.shape[0] != v.shape[0]:
            raise ValueError(f"v has {v.shape[0]} rows but k has {k.shape[0]}")
        if cu_seqlens is None:
            if ids.size != 1:
                raise ValueError("cu_seqlens is required when appending to several sequences")
            cu = np.array([0, k.shape[0]], np.int64)
        else:
            cu = _checks.offsets("cu_seqlens", cu_seqlens, k.shape[0])
            if cu.size != ids.size + 1:
                raise ValueError(f"cu_seqlens has {cu.size - 1} sequences but seq_ids has "
                                 f"{ids.size}")
        add = np.diff(cu)
        old = self.lengths[ids]
        new = old + add
        need = -(-new // self.page_size) - -(-old // self.page_size)
        width = self.block_table.shape[1]
        if new.size and (-(-new // self.page_size)).max() > width:
            b = int(np.argmax(-(-new // self.page_size)))
            raise MemoryError(f"PagedKVCache: sequence {int(ids[b])} would hold "
                              f"{int(new[b])} rows, more than its {width} pages of "
                              f"{self.page_size}; nothing was written")
        if int(need.sum()) > len(self._free):
            raise MemoryError(f"PagedKVCache: the new rows need {int(need.sum())} more pages "
                              f"but {len(self._free)} of {self.num_pages} are free; nothing "
                              "was written (free finished sequences first)")
        if self.k_scale is not None:
            plan = self._quantize_plan(ids, old, cu, k, v)
        # the pages: taken and written only now that everything checked
        for s, o, m in zip(ids.tolist(), old.tolist(), need.tolist()):
            first = -(-o // self.page_size)
            for j in range(m):
                self.block_table[s, first + j] = self._free.pop()
        rows_seq = np.repeat(ids, add)
        pos = np.arange(k.shape[0]) - np.repeat(cu[:-1], add) + np.repeat(old, add)
        page = self.block_table[rows_seq, pos // self.page_size]
        row = pos % self.page_size
        if self.k_scale is not None:
            self._write_int8(plan, page, row)
        else:
            self.k_pages[page, :, row] = k
            self.v_pages[page, :, row] = v
        self.lengths[ids] = new

    def _quantize_plan(self, ids: NDArray[np.int64], old: NDArray[np.int64],
                       cu: NDArray[np.int64], k: NDArray[Any], v: NDArray[Any]) -> Any:
        """int8: every page's new key scales and re-quantized rows, the new
        rows quantized: computed before anything is written."""
        assert self.k_scale is not None
        kf = np.asarray(k, np.float64)
        vf = np.asarray(v, np.float64)
        for name, x in (("k", kf), ("v", vf)):
            if not np.isfinite(x).all():
                raise ValueError(f"{name} has non-finite values; an int8 cache stores finite "
                                 "keys and values only (the cache is unchanged)")
        vs = _scales(np.abs(vf).max(axis=2))                    # (n, Hkv)
        vq = _quantize(vf, vs[:, :, None])
        ps = self.page_size
        pieces: List[Tuple[int, int, int, int, Any, Any, Any]] = []
        for b, s in enumerate(ids.tolist()):
            o, lo, hi = int(old[b]), int(cu[b]), int(cu[b + 1])
            while lo < hi:                   # rows that land on one page
                j, r0 = divmod(o, ps)
                m = min(hi - lo, ps - r0)
                kb = kf[lo:lo + m].transpose(1, 0, 2)           # (Hkv, m, D)
                if r0 == 0:
                    ks, requant = _scales(np.abs(kb).max(axis=1)), None
                else:
                    g = int(self.block_table[s, j])
                    ks, requant = _key_scales(self.k_scale[g], self.k_pages[g, :, :r0], kb,
                                              first=False)
                pieces.append((s, j, r0, m, ks, requant, _quantize(kb, ks[:, None, :])))
                o += m
                lo += m
        return pieces, vq, vs

    def _write_int8(self, plan: Any, page: NDArray[Any], row: NDArray[Any]) -> None:
        assert self.k_scale is not None and self.v_scale is not None
        pieces, vq, vs = plan
        for s, j, r0, m, ks, requant, kq in pieces:
            g = int(self.block_table[s, j])
            if requant is not None:
                self.k_pages[g, :, :r0] = requant
            self.k_scale[g] = ks
            self.k_pages[g, :, r0:r0 + m] = kq
        self.v_pages[page, :, row] = vq
        self.v_scale[page, :, row] = vs

    # ------------------------------------------------------------ attend
    def attend(self, q: NDArray[Any], cu_seqlens_q: ArrayLike,
               seq_ids: Optional[ArrayLike] = None, **options: Any) -> Any:
        """:func:`fastattn.attention_paged` on this cache."""
        from .api import attention_paged
        return attention_paged(q, self, cu_seqlens_q, seq_ids, **options)

