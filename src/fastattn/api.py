"""The public attention API over NumPy arrays.

Validation happens once, in the compiled binding (``fastattn._core``), so a
call costs a few microseconds on top of the kernel; this module holds the
documented signatures and the small pieces of NumPy glue (packed batches,
merging partial results).
"""
from __future__ import annotations

import inspect
import threading
import warnings
from typing import Any, Dict, Optional, Sequence, Set, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _checks, _core
from ._threads import call_threads

__all__ = ["attention", "attention_varlen", "attention_paged", "attention_weights", "explain",
           "merge"]

_AS_NUMPY = _checks.AS_NUMPY


@_checks.entry("use fastattn.torch.attention, which reads CPU tensors in place")
def attention(q: NDArray[Any], k: NDArray[Any], v: NDArray[Any], *,
              mask: Optional[NDArray[Any]] = None, causal: Union[bool, str] = False,
              scale: Optional[float] = None, window: Optional[Tuple[int, int]] = None,
              alibi_slopes: Optional[ArrayLike] = None, softcap: Optional[float] = None,
              kv_lengths: Optional[ArrayLike] = None, out: Optional[NDArray[Any]] = None,
              return_lse: bool = False, return_weights: bool = False,
              num_threads: Optional[int] = None, precision: str = "highest",
              k_scale: Optional[NDArray[Any]] = None,
              v_scale: Optional[NDArray[Any]] = None) -> Any:
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
        PyTorch); a float mask (float32, float64, float16 or bfloat16) is
        added to the scaled scores (``-inf`` hides a key).  Broadcast
        through strides, never materialized or copied.
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
    precision : {"highest", "bf16", "bf16x3"}
        Arithmetic of the matrix products for float32 inputs (see
        docs/amx.md).  ``"highest"`` (the default) is float32 throughout.
        ``"bf16"`` rounds q, k, v and the softmax probabilities to bfloat16
        once and runs the products on the CPU's matrix unit (Intel AMX);
        ``"bf16x3"`` splits each float32 operand into a high and a low
        bfloat16 and sums three products, close to float32 accuracy.
        Where the matrix unit is missing (or for decode shapes, which run
        on the vector kernels) the call computes at ``"highest"`` and
        says so with a ``RuntimeWarning``, once per process for each
        reason; :func:`explain` reports the mode really used.  float64 inputs
        accept only ``"highest"`` (else ``ValueError``); float16 and
        bfloat16 inputs ignore the keyword.  ``return_weights`` gives the
        weights of :func:`attention_weights`, whatever the mode.
    k_scale, v_scale : ndarray or None
        Scales of int8 ``k`` and ``v`` (an 8-bit KV cache, as
        :class:`fastattn.KVCache` with ``dtype="int8"`` keeps), required
        with them and refused otherwise: key ``k[..., j, c]`` stands for
        ``k[..., j, c] * k_scale[..., c]``, value ``v[..., j, e]`` for
        ``v[..., j, e] * v_scale[..., j]``.  ``k_scale`` has k's leading
        dims and ``D``, one scale per channel of each kv head (``(Hkv, D)``
        is also accepted for 4-D inputs); ``v_scale`` has v's shape without
        its last dim, ``(B, Hkv, Nk)``, one scale per token.  float32
        (other float dtypes are converted), every entry finite and > 0.  q
        must be float32; out and lse are float32.  Dequantization happens
        in the kernels' registers (or one key block of scratch), never in
        memory; see docs/numerics.md for the rounding and the error.

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
    message names the argument; PyTorch's option names (``is_causal``,
    ``attn_mask``, ``dropout_p``, ``enable_gqa``) and torch tensors get a
    ``TypeError`` that says what to use instead.
    """
    code = _checks.precision(precision, q)
    threads = call_threads(num_threads)
    # reduced precision: the weights come from a pass of their own, at
    # "highest", so that they are the float32 softmax of the float32 scores
    split = bool(code) and isinstance(return_weights, (bool, np.bool_)) and bool(return_weights)
    res = _core.attention(q, k, v, mask=mask, causal=causal, scale=scale, out=out,
                          return_lse=return_lse, window=window, alibi_slopes=alibi_slopes,
                          softcap=softcap, kv_lengths=kv_lengths,
                          return_weights=False if split else return_weights,
                          num_threads=threads, precision=code, k_scale=k_scale,
                          v_scale=v_scale)
    if code and q.dtype == np.float32:
        _warn_fallback(precision, q, k, v, dict(
            mask=mask, causal=causal, scale=scale, window=window, alibi_slopes=alibi_slopes,
            softcap=softcap, kv_lengths=kv_lengths, precision=code, k_scale=k_scale,
            v_scale=v_scale))
    if not split:
        return res
    w = attention_weights(q, k, mask=mask, causal=causal, scale=scale, window=window,
                          alibi_slopes=alibi_slopes, softcap=softcap, kv_lengths=kv_lengths,
                          num_threads=num_threads)
    return (res + (w,)) if return_lse else (res, w)


@_checks.entry(_AS_NUMPY)
def explain(q: Any, k: Any, v: Any, **options: Any) -> Dict[str, Any]:
    """What :func:`attention` would do with the same arguments, without
    computing anything.

    The arguments are validated exactly as :func:`attention` validates them
    (the same errors), then the C core's planner, the one the core itself
    runs before every call, reports its choices.

    Parameters
    ----------
    q, k, v : ndarray
        As in :func:`attention`.
    **options
        Any keyword argument of :func:`attention` (``mask``, ``causal``,
        ``scale``, ``window``, ``alibi_slopes``, ``softcap``,
        ``kv_lengths``, ``out``, ``return_lse``, ``return_weights``,
        ``num_threads``, ``precision``, ``k_scale``, ``v_scale``).

    Returns
    -------
    dict
        ``kernel``: ``"tile"`` (vectors along the queries, ``q_block`` rows
        a tile), ``"rows"`` (the few-row decode kernel), ``"matrix"`` (the
        matrix-unit kernel, Intel AMX or its emulation) or ``"weights"``;
        ``precision``: for float32 inputs the mode the call really uses
        (``"highest"`` where a reduced mode falls back), None for other
        dtypes; ``precision_requested``: the keyword as given, and
        ``precision_note``: why the two differ (None when they agree);
        ``matrix_note``: for a call that asks for 16-bit products, why it
        does not run on the matrix unit when the AMX tiles failed their
        self-test (which kernel and case, and how), else None;
        ``isa``: the ISA path in use; ``kernel_isa``: the registry entry
        whose kernel runs (the path, or a refinement such as
        ``"avx512bf16"``); ``q_block`` and ``k_block``: query rows per work
        item and keys per inner block; ``tasks``: row tiles over all
        batches and kv heads; ``key_splits`` and ``split_keys``: key chunks
        per tile (1: no split-KV) and keys per chunk; ``work_items``;
        ``threads``: threads the call would run on (0: nothing to compute);
        ``scratch_bytes``: scratch per thread.  With ``return_weights`` the
        weights pass's plan is under ``"weights"``.

    Examples
    --------
    >>> import numpy as np, fastattn
    >>> q = np.zeros((1, 8, 1, 64), np.float32)
    >>> k = v = np.zeros((1, 8, 4096, 64), np.float32)
    >>> fastattn.explain(q, k, v)["kernel"]
    'rows'
    """
    _checks.keywords("explain", options, _options())
    if "num_threads" in options:
        options["num_threads"] = call_threads(options["num_threads"])
    requested = options.pop("precision", "highest")
    code = _checks.precision(requested, q)
    plan = dict(_core.plan(q, k, v, precision=code, **options))
    plan["precision_requested"] = requested
    plan["precision_note"] = _precision_note(plan, requested)
    plan["matrix_note"] = _matrix_note(plan, q, requested)
    return plan


def _matrix_note(plan: Dict[str, Any], q: Any, requested: str) -> Optional[str]:
    """Why a call that asks for 16-bit products (16-bit inputs, or a
    reduced ``precision``) does not run on the matrix kernels because the
    tiles failed their self-test: the failure; else None."""
    if plan["kernel"] == "matrix":
        return None
    dtype = getattr(q, "dtype", None)
    wanted = requested != "highest" or getattr(dtype, "itemsize", 0) == 2 and \
        getattr(dtype, "kind", "") != "i"
    test = _core.tile_self_test_status()
    if not wanted or test["state"] != "failed":
        return None
    return (f"the matrix unit is off for this process: the AMX tiles failed their self-test "
            f"({test['report']})")


def _options() -> Tuple[str, ...]:
    """The keyword options of :func:`attention`."""
    params = inspect.signature(attention).parameters.values()
    return tuple(p.name for p in params if p.kind == p.KEYWORD_ONLY)


def _precision_note(plan: Dict[str, Any], requested: str) -> Optional[str]:
    """Why a float32 call does not run at the precision it asked for."""
    used = plan["precision"]
    if used is None:
        return None if requested == "highest" else (
            f"precision={requested!r} applies to float32 inputs; these compute at their "
            "own precision")
    if used == requested:
        return None
    return _fallback(plan, requested)[1]


def _fallback(plan: Dict[str, Any], requested: str) -> Tuple[Tuple[str, ...], str]:
    """Why a float32 call planned as ``plan`` computes at "highest" instead
    of ``requested``: a key of the reason and the note that says it.  A
    reason that holds for every call on the ISA path (no matrix kernels,
    or no matrix unit) has the key ``("path", isa)``."""
    head = f"precision={requested!r} falls back to 'highest'"
    isa = plan["isa"]
    if isa in ("amx", "amx_emu") and plan["kernel"] == "rows":
        return ("decode",), (f"{head}: decode shapes (few query rows per kv head) run on "
                             "the float32 vector kernels")
    if isa != "amx_emu":
        status = _core.amx_status()
        if not status["available"]:
            return ("path", isa), (f"{head}: the matrix unit is not available "
                                   f"({status['reason']})")
        if isa != "amx":
            return ("path", isa), f"{head}: the {isa} path has no matrix kernels"
    return ("kernel", plan["kernel"]), f"{head} on the {plan['kernel']} kernel"


# the reasons (_fallback's keys) the fallback warning has been given for
_warned: Set[Tuple[str, ...]] = set()
_warned_lock = threading.Lock()


def _warn_fallback(requested: str, q: NDArray[Any], k: NDArray[Any], v: NDArray[Any],
                   options: Dict[str, Any]) -> None:
    """After a float32 call with a reduced ``precision``: a RuntimeWarning
    if it computed at "highest", once per process for each reason (the
    note of :func:`explain`).  Once the ISA path is known to fall back on
    every call, nothing is planned any more."""
    if ("path", _core.get_isa()) in _warned:
        return
    plan = dict(_core.plan(q, k, v, **options))
    if plan["precision"] != "highest":
        return
    key, note = _fallback(plan, requested)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(f"{note}; fastattn.explain shows the plan of a call", RuntimeWarning,
                  stacklevel=_checks.stacklevel())


@_checks.entry("use fastattn.torch.attention_weights, which reads CPU tensors in place")
def attention_weights(q: NDArray[Any], k: NDArray[Any], *,
                      mask: Optional[NDArray[Any]] = None, causal: Union[bool, str] = False,
                      scale: Optional[float] = None, window: Optional[Tuple[int, int]] = None,
                      alibi_slopes: Optional[ArrayLike] = None,
                      softcap: Optional[float] = None,
                      kv_lengths: Optional[ArrayLike] = None,
                      num_threads: Optional[int] = None,
                      precision: str = "highest") -> NDArray[Any]:
    """The attention matrix ``softmax(q @ k^T * scale + bias + mask)``,
    shape ``(..., Nq, Nk)`` in q's dtype, computed by the C core: one pass
    for each row's log-sum-exp, a second for ``exp(score - lse)``.  Rows
    that see no key are zeros.  Arguments as in :func:`attention`.

    The weights are always computed at ``"highest"``, whatever
    ``precision`` says (it is checked as in :func:`attention`): they are
    the product the caller inspects, not an input to one, so they stay the
    float32 softmax of the float32 scores.
    """
    _checks.precision(precision, q)
    _checks.ndarray("k", k)
    # Dv = 0 values: the first pass computes only the lse
    v = np.empty(k.shape[:-1] + (0,), dtype=k.dtype)
    _, w = _core.attention(q, k, v, mask=mask, causal=causal, scale=scale, window=window,
                           alibi_slopes=alibi_slopes, softcap=softcap,
                           kv_lengths=kv_lengths, return_weights=True,
                           num_threads=call_threads(num_threads))
    return w


@_checks.entry(_AS_NUMPY)
def attention_varlen(q: NDArray[Any], k: NDArray[Any], v: NDArray[Any],
                     cu_seqlens_q: ArrayLike, cu_seqlens_k: ArrayLike, *,
                     causal: Union[bool, str] = False, scale: Optional[float] = None,
                     window: Optional[Tuple[int, int]] = None,
                     alibi_slopes: Optional[ArrayLike] = None, softcap: Optional[float] = None,
                     out: Optional[NDArray[Any]] = None, return_lse: bool = False,
                     num_threads: Optional[int] = None, precision: str = "highest") -> Any:
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
    precision : {"highest", "bf16", "bf16x3"}
        As in :func:`attention`.

    Returns
    -------
    out : ndarray, shape (total_q, H, Dv); and lse if ``return_lse``
    """
    code = _checks.precision(precision, q)
    for name, a in (("q", q), ("k", k), ("v", v)):
        if _checks.ndarray(name, a).ndim != 3:
            raise ValueError(f"{name} must be 3-D (total, heads, head dim) for packed "
                             f"batches; got shape {a.shape}")
    cq = _checks.offsets("cu_seqlens_q", cu_seqlens_q, q.shape[0])
    ck = _checks.offsets("cu_seqlens_k", cu_seqlens_k, k.shape[0])
    if cq.size != ck.size:
        raise ValueError(f"cu_seqlens_q has {cq.size - 1} sequences but cu_seqlens_k has "
                         f"{ck.size - 1}")
    max_q = int(np.diff(cq).max()) if cq.size > 1 else 0
    max_k = int(np.diff(ck).max()) if ck.size > 1 else 0
    out = _packed_out(out, (q.shape[0], q.shape[1], v.shape[2]), q.dtype)
    # (total, H, D) viewed as (1, H, total, D): the core walks rows by the
    # offsets, with no copy
    def view(a: NDArray[Any]) -> NDArray[Any]:
        viewed: NDArray[Any] = a.transpose(1, 0, 2)[None]
        return viewed

    options: Dict[str, Any] = dict(
        causal=causal, scale=scale, window=window, alibi_slopes=alibi_slopes, softcap=softcap,
        cu_seqlens_q=cq, cu_seqlens_k=ck, max_seqlen_q=max_q, max_seqlen_k=max_k,
        precision=code)
    res = _core.attention(view(q), view(k), view(v), out=view(out), return_lse=return_lse,
                          num_threads=call_threads(num_threads), **options)
    if code and q.dtype == np.float32:
        _warn_fallback(precision, view(q), view(k), view(v), options)
    if return_lse:
        return out, res[1][0]
    return out


def _packed_out(out: Optional[NDArray[Any]], oshape: Tuple[int, int, int],
                dtype: Any) -> NDArray[Any]:
    """The (total_q, H, Dv) output of a packed call: a new array, or the
    caller's, checked (the binding checks its dtype and memory)."""
    if out is None:
        return np.empty(oshape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray or None, got {type(out).__name__}")
    if out.shape != oshape:
        raise ValueError(f"out has shape {out.shape}; expected {oshape} (total_q, H, Dv)")
    return out


def merge(outs: Sequence[NDArray[Any]], lses: Sequence[NDArray[Any]], *,
          return_lse: bool = False) -> Any:
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
    o0 = _checks.ndarray("outs[0]", outs[0])
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


@_checks.entry(_checks.AS_NUMPY)
def attention_paged(q: NDArray[Any], cache: Any, cu_seqlens_q: ArrayLike,
                    seq_ids: Optional[ArrayLike] = None, *,
                    seq_lens: Optional[ArrayLike] = None,
                    causal: Union[bool, str] = False, scale: Optional[float] = None,
                    window: Optional[Tuple[int, int]] = None,
                    alibi_slopes: Optional[ArrayLike] = None, softcap: Optional[float] = None,
                    out: Optional[NDArray[Any]] = None, return_lse: bool = False,
                    num_threads: Optional[int] = None, precision: str = "highest") -> Any:
    """Attention of a packed batch of queries, each sequence against its
    own keys and values in a :class:`fastattn.PagedKVCache`, in one call.

    Every sequence may bring one query (decode), a chunk of its prompt
    (chunked prefill, its keys appended to the cache first) or none; the
    pages are read where they lie.

    Parameters
    ----------
    q : ndarray, shape (total_q, H, D)
        The queries of every sequence, end to end; H a multiple of the
        cache's kv heads.  float32 for an int8 cache, else the cache's dtype.
    cache : PagedKVCache
    cu_seqlens_q : int array, shape (B + 1,)
        Sequence b owns query rows ``cu_seqlens_q[b] : cu_seqlens_q[b + 1]``.
    seq_ids : int array of shape (B,), or None
        The cache's sequences, in the order of the queries; None: every
        open sequence, in id order.
    seq_lens : int array of shape (B,), or None
        Keys each sequence attends to, its first ``seq_lens[b]`` rows
        (at most what it holds); default all it holds.  The queries are
        its last positions (bottom-right alignment), as with
        :meth:`fastattn.KVCache.attend`.
    causal, scale, window, alibi_slopes, softcap
        As in :func:`attention_varlen`, per sequence.  No ``mask``.
    out : ndarray or None, shape (total_q, H, Dv)
    return_lse : bool
        Also return the lse, shape ``(H, total_q)``.
    num_threads : int or None
        Threads for this call alone.
    precision : {"highest", "bf16", "bf16x3"}
        Checked as in :func:`attention`; paged calls run on the vector
        kernels, so a reduced mode computes at "highest" (a
        ``RuntimeWarning`` once per process says so).

    Returns
    -------
    out : ndarray, shape (total_q, H, Dv); and lse if ``return_lse``
    """
    from .paged import PagedKVCache
    if not isinstance(cache, PagedKVCache):
        raise TypeError(f"cache must be a fastattn.PagedKVCache, got {type(cache).__name__}")
    code = _checks.precision(precision, q)
    if _checks.ndarray("q", q).ndim != 3:
        raise ValueError(f"q must be 3-D (total_q, heads, head dim); got shape {q.shape}")
    if cache.k_scale is None:
        _checks.same_dtype("q", q, cache.dtype, "the cache holds")
    ids = cache.seq_ids(seq_ids)
    cq = _checks.offsets("cu_seqlens_q", cu_seqlens_q, q.shape[0])
    if cq.size != ids.size + 1:
        raise ValueError(f"cu_seqlens_q has {cq.size - 1} sequences but seq_ids has "
                         f"{ids.size}")
    held = cache.lengths[ids]
    lens = held if seq_lens is None else _checks.lengths("seq_lens", seq_lens, ids.size)
    if seq_lens is not None and (lens > held).any():
        b = int(np.argmax(lens - held))
        raise ValueError(f"seq_lens[{b}] = {int(lens[b])} but sequence {int(ids[b])} holds "
                         f"{int(held[b])} rows")
    out = _packed_out(out, (q.shape[0], q.shape[1], cache.v_pages.shape[3]), q.dtype)
    # only the columns the call reads: the table may be as wide as the pool
    width = max(-(-int(lens.max()) // cache.page_size), 1) if lens.size else 1
    res = _core.attention_paged(
        q.transpose(1, 0, 2)[None], cache.k_pages, cache.v_pages, cache.block_table[ids, :width],
        cq, lens, causal=causal, scale=scale, window=window, alibi_slopes=alibi_slopes,
        softcap=softcap, out=out.transpose(1, 0, 2)[None], return_lse=return_lse,
        num_threads=call_threads(num_threads), k_scale=cache.k_scale, v_scale=cache.v_scale)
    if code and q.dtype == np.float32:
        _warn_paged_precision(precision)
    if return_lse:
        return out, res[1][0]
    return out


def _warn_paged_precision(requested: str) -> None:
    with _warned_lock:
        if ("paged",) in _warned:
            return
        _warned.add(("paged",))
    warnings.warn(f"precision={requested!r} falls back to 'highest': paged attention runs "
                  "on the float32 vector kernels", RuntimeWarning,
                  stacklevel=_checks.stacklevel())
