"""The public attention API over NumPy arrays.

Validation happens once, in the compiled binding (``fastattn._core``), so a
call costs a few microseconds on top of the kernel; this module holds the
documented signatures and the small pieces of NumPy glue (packed batches,
merging partial results).
"""
import numpy as np

from . import _core
from ._threads import call_threads

__all__ = ["attention", "attention_varlen", "attention_weights", "merge"]


def attention(q, k, v, *, mask=None, causal=False, scale=None, window=None,
              alibi_slopes=None, softcap=None, kv_lengths=None, out=None,
              return_lse=False, return_weights=False, num_threads=None):
    """Scaled dot-product attention, ``softmax(q @ k^T * scale + mask) @ v``,
    computed by a fused kernel that never materializes the score matrix.

    Parameters
    ----------
    q : ndarray, shape (..., Nq, D)
        Queries; ``...`` is ``()``, ``(H,)`` or ``(B, H)``.
    k : ndarray, shape (..., Nk, D)
        Keys, with ``Hkv`` heads where ``H % Hkv == 0`` (grouped-query and
        multi-query attention: query head h reads kv head ``h // (H // Hkv)``).
    v : ndarray, shape (..., Nk, Dv)
        Values; ``Dv`` may differ from ``D``.
    mask : ndarray or None
        Broadcastable to ``(..., Nq, Nk)`` (q's leading dims).  A bool mask
        keeps ``True`` entries (True = the query may attend the key, as in
        PyTorch); a float mask is added to the scaled scores (``-inf``
        hides a key).  Broadcast through strides, never materialized.
    causal : bool or str
        ``False``; ``True`` or ``"bottom_right"``: query i sees key j iff
        ``j <= i + Nk - Nq`` (the last query is aligned with the last key,
        the KV-cache convention); ``"top_left"``: ``j <= i`` (PyTorch's
        ``is_causal``).  Combines with ``mask``.
    scale : float or None
        Multiplier of ``q @ k^T``; default ``1 / sqrt(D)``.
    window : (int, int) or None
        Sliding window ``(left, right)``: query i sees key j iff
        ``i + Nk - Nq - left <= j <= i + Nk - Nq + right`` (bottom-right
        aligned; -1 leaves a side unbounded).  ``causal=True,
        window=(W, 0)`` is local causal attention over the last W + 1 keys.
        Key blocks outside the window are never read, so the cost grows
        with Nq * W, not Nq * Nk.  Not combinable with ``causal="top_left"``.
    alibi_slopes : array or None, shape (H,) or (B, H)
        ALiBi: ``-slope * |i + Nk - Nq - j|`` is added to each scaled score
        (computed in the kernel, never materialized).
    softcap : float or None
        Soft capping (Gemma 2): each scaled score s becomes
        ``softcap * tanh(s / softcap)`` before bias and masks.
    kv_lengths : int array or None, shape (B,)
        Key j of batch b exists iff ``j < kv_lengths[b]``: padded batches
        without a mask array, and padding keys cost nothing.  ``Nk_b =
        kv_lengths[b]`` also replaces Nk in the bottom-right alignments of
        ``causal``, ``window`` and ``alibi_slopes`` (the queries are the last
        ones of each sequence, as with a KV cache).
    out : ndarray or None
        Preallocated result of shape ``(..., Nq, Dv)`` and the inputs' dtype,
        written in place and returned.  Must not overlap an input.
    return_lse : bool
        Also return the log-sum-exp (natural log) of each row's scaled,
        masked scores, shape ``(..., Nq)`` (float32 for float32, float16 and
        bfloat16 inputs, float64 for float64).
    return_weights : bool
        Also return the attention matrix (softmax probabilities), shape
        ``(..., Nq, Nk)`` in the inputs' dtype, computed by a second kernel
        pass from the lse.  Costs O(Nq * Nk) memory, only when asked for.
    num_threads : int or None
        Threads for this call alone; None uses :func:`fastattn.get_num_threads`.

    Returns
    -------
    out : ndarray, shape (..., Nq, Dv), same dtype as the inputs
    lse : ndarray, shape (..., Nq), only if ``return_lse``
    weights : ndarray, shape (..., Nq, Nk), only if ``return_weights``
        (after lse when both are asked for)

    Notes
    -----
    float32 and float64 compute in their own precision; float16 and
    bfloat16 (``ml_dtypes.bfloat16``) are stored 16-bit, widened to float32
    in registers, accumulated in float32 and rounded once at the end.  A
    query row that can see no key gives exact zeros (and ``lse = -inf``),
    never NaN.  NaN in an input reaches every output row that attends to
    it.  Any strides are read in place, so a ``(B, N, H, D)`` array passed
    as ``x.transpose(0, 2, 1, 3)`` costs no copy.  Wrong types or dtypes
    raise ``TypeError``; wrong shapes or values raise ``ValueError``; the
    message names the argument.
    """
    return _core.attention(q, k, v, mask, causal, scale, out, return_lse, window,
                           alibi_slopes, softcap, kv_lengths, return_weights,
                           num_threads=call_threads(num_threads))


def attention_weights(q, k, *, mask=None, causal=False, scale=None, window=None,
                      alibi_slopes=None, softcap=None, kv_lengths=None, num_threads=None):
    """The attention matrix ``softmax(q @ k^T * scale + bias + mask)``,
    shape ``(..., Nq, Nk)`` in q's dtype, computed by the C core: one pass
    for each row's log-sum-exp, a second for ``exp(score - lse)``.  Rows
    that see no key are zeros.  Arguments as in :func:`attention`.
    """
    if not isinstance(k, np.ndarray):
        raise TypeError(f"k must be a numpy.ndarray, got {type(k).__name__}")
    # Dv = 0 values: the first pass computes only the lse
    v = np.empty(k.shape[:-1] + (0,), dtype=k.dtype)
    _, w = _core.attention(q, k, v, mask, causal, scale, None, False, window,
                           alibi_slopes, softcap, kv_lengths, True,
                           num_threads=call_threads(num_threads))
    return w


def _offsets(name, cu, total):
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


def attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, *, causal=False, scale=None,
                     window=None, alibi_slopes=None, softcap=None, out=None,
                     return_lse=False, num_threads=None):
    """Attention over a packed batch of variable-length sequences, with no
    padding computed at all.

    Parameters
    ----------
    q : ndarray, shape (total_q, H, D)
        The queries of every sequence, end to end.
    k, v : ndarray, shape (total_k, Hkv, D) and (total_k, Hkv, Dv)
    cu_seqlens_q, cu_seqlens_k : int arrays, shape (B + 1,)
        Offsets: sequence b owns query rows ``cu_seqlens_q[b] :
        cu_seqlens_q[b + 1]`` and key rows ``cu_seqlens_k[b] :
        cu_seqlens_k[b + 1]``.  Lengths may be 0.
    causal, scale, window, alibi_slopes, softcap
        As in :func:`attention`, per sequence (bottom-right alignments use
        each sequence's own lengths).  ``alibi_slopes`` is (H,) or (B, H).
    out : ndarray or None, shape (total_q, H, Dv)
    return_lse : bool
        Also return the lse, shape ``(H, total_q)``.
    num_threads : int or None
        Threads for this call alone, as in :func:`attention`.

    Returns
    -------
    out : ndarray, shape (total_q, H, Dv); and lse if ``return_lse``
    """
    for name, a in (("q", q), ("k", k), ("v", v)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
        if a.ndim != 3:
            raise ValueError(f"{name} must be 3-D (total, heads, head dim) for packed "
                             f"batches; got shape {a.shape}")
    cq = _offsets("cu_seqlens_q", cu_seqlens_q, q.shape[0])
    ck = _offsets("cu_seqlens_k", cu_seqlens_k, k.shape[0])
    if cq.size != ck.size:
        raise ValueError(f"cu_seqlens_q has {cq.size - 1} sequences but cu_seqlens_k has "
                         f"{ck.size - 1}")
    max_q = int(np.diff(cq).max()) if cq.size > 1 else 0
    max_k = int(np.diff(ck).max()) if ck.size > 1 else 0
    oshape = (q.shape[0], q.shape[1], v.shape[2])
    if out is None:
        out = np.empty(oshape, dtype=q.dtype)
    elif not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray or None, got {type(out).__name__}")
    elif out.shape != oshape:
        raise ValueError(f"out has shape {out.shape}; expected {oshape} (total_q, H, Dv)")
    # (total, H, D) viewed as (1, H, total, D): the core walks rows by the
    # offsets, with no copy
    view = lambda a: a.transpose(1, 0, 2)[None]
    res = _core.attention(view(q), view(k), view(v), None, causal, scale, view(out),
                          return_lse, window, alibi_slopes, softcap, None, False, cq, ck,
                          max_q, max_k, num_threads=call_threads(num_threads))
    if return_lse:
        return out, res[1][0]
    return out


def merge(outs, lses, *, return_lse=False):
    """Combine attention computed over disjoint slices of the keys into
    attention over all of them.

    ``outs[s]`` (..., Nq, Dv) and ``lses[s]`` (..., Nq) are the results of
    ``attention(q, k_s, v_s, return_lse=True)`` for key slices k_s that
    together make up all keys (chunked or streamed long contexts).  The
    merge weighs each partial by ``exp(lse_s - lse)`` with
    ``lse = log(sum_s exp(lse_s))``, in float64, so merging reproduces
    the whole computation up to rounding.  A row that saw no key in any
    slice stays zero (lse -inf); NaN propagates.

    Returns the merged output in the dtype of ``outs[0]`` (and the merged
    lse when ``return_lse``).
    """
    if not isinstance(outs, (list, tuple)) or not isinstance(lses, (list, tuple)):
        raise TypeError("outs and lses must be lists (or tuples) of arrays")
    if len(outs) == 0:
        raise ValueError("outs must hold at least one partial result")
    if len(outs) != len(lses):
        raise ValueError(f"outs has {len(outs)} partial results but lses has {len(lses)}")
    o0 = outs[0]
    if not isinstance(o0, np.ndarray):
        raise TypeError(f"outs[0] must be a numpy.ndarray, got {type(o0).__name__}")
    for s, (o, l) in enumerate(zip(outs, lses)):
        if not isinstance(o, np.ndarray) or not isinstance(l, np.ndarray):
            raise TypeError(f"outs[{s}] and lses[{s}] must be numpy.ndarrays")
        if o.shape != o0.shape:
            raise ValueError(f"outs[{s}] has shape {o.shape} but outs[0] has {o0.shape}")
        if l.shape != o0.shape[:-1]:
            raise ValueError(f"lses[{s}] has shape {l.shape}; expected {o0.shape[:-1]} "
                             "(the output's shape without its last dim)")
    lse = np.stack([np.asarray(l, dtype=np.float64) for l in lses])
    nan = np.isnan(lse).any(axis=0)
    top = np.max(np.where(np.isnan(lse), -np.inf, lse), axis=0)
    empty = top == -np.inf
    with np.errstate(invalid="ignore", over="ignore"):
        w = np.exp(lse - np.where(empty, 0.0, top))   # (S, ...), in [0, 1]
        total = w.sum(axis=0)
        w = w / np.where(empty, 1.0, total)
    acc = np.zeros(o0.shape, dtype=np.float64)
    for s, o in enumerate(outs):
        ws = w[s]
        # a slice with weight 0 contributes nothing, even if it holds inf
        # (0 * inf is computed, then discarded: no warning for it)
        with np.errstate(invalid="ignore"):
            acc += np.where(ws[..., None] > 0, ws[..., None] * np.asarray(o, dtype=np.float64),
                            0.0)
    acc[nan] = np.nan
    acc[empty & ~nan] = 0.0
    merged = acc.astype(o0.dtype)
    if not return_lse:
        return merged
    with np.errstate(divide="ignore"):
        mlse = np.where(empty, -np.inf, top + np.log(np.where(empty, 1.0, total)))
    mlse[nan] = np.nan
    return merged, mlse.astype(np.asarray(lses[0]).dtype)
