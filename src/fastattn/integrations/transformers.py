"""A Hugging Face transformers attention backend: ``attn_implementation="fastattn"``.

>>> from fastattn.integrations.transformers import register
>>> register()
>>> model = AutoModel.from_pretrained(path, attn_implementation="fastattn")

transformers (5.x) calls the registered function in every attention layer
with q as ``(B, H, Nq, D)`` and k, v as ``(B, Hkv, Nk, D)`` (straight from
its KV cache, possibly fewer heads), the mask its mask interface built, and
keyword arguments such as ``is_causal``, ``scaling``, ``sliding_window`` and
``softcap``.  The masks are built by transformers' own SDPA mask function
(registered under the same name): ``None`` where ``is_causal`` suffices, else
a bool ``(B, 1, Nq, Nk)`` mask.  Before the kernel runs, a mask is reduced to
what it really is (once per forward pass: every layer gets the same mask
object):

- causal (bottom-right, or top-left for PyTorch's ``is_causal`` with more
  keys than queries), optionally with transformers' sliding window, becomes
  ``causal=`` and ``window=``, so key blocks outside the band are skipped;
- right padding (each row's keys are a prefix) becomes ``kv_lengths``, so
  padding keys cost nothing;
- other padding (left padding, as ``generate()`` uses) becomes a ``(B, 1,
  1, Nk)`` key mask read through a stride-0 broadcast, with the band as
  above;
- anything else is passed to the kernel as the mask it is.

Continuous batching (``model.generate_batch``, ``ContinuousBatchingManager``)
accepts only "sdpa", "paged|eager" and flash implementations, and a custom
name with "flash" in it is taken for a hub kernel.  So it runs on fastattn
inside ``with continuous_batching():``, which puts a dispatcher under the
name "sdpa" (``AttentionInterface.register``, public API) for the block and
restores transformers' own afterwards.  The dispatcher recognizes the calls
of continuous batching: the keys and values of all sequences end to end,
``cu_seq_lens_q`` / ``cu_seq_lens_k`` among the keyword arguments, and the
dense block-diagonal mask (each sequence causal, bottom-right, with the
layer's sliding window) checked entry by entry once per forward pass.  It
runs them as ``attention_varlen``, linear in the number of sequences instead
of O(queries x all keys); any other call goes to transformers' SDPA.
"""
# Only the API is public here: the imports are bound to private names.
from __future__ import annotations as _annotations

import threading as _threading
import weakref as _weakref
from typing import TYPE_CHECKING as _TYPE_CHECKING

import torch as _torch

from .. import torch as _fatorch
from .._padding import fold_key_padding as _fold_key_padding

if _TYPE_CHECKING:      # the names of the annotations (strings at run time)
    import weakref
    from typing import Any

    import torch

__all__ = ["register", "attention_forward", "plan_mask", "NAME", "continuous_batching",
           "varlen_plan"]

NAME = "fastattn"

# kwargs transformers passes that change the math and that fastattn does not do
_UNSUPPORTED = ("position_bias", "s_aux", "sinks")


def register(name: str = NAME) -> None:
    """Register fastattn with transformers under ``name``.

    Afterwards ``from_pretrained(..., attn_implementation=name)`` (or
    ``model.set_attn_implementation(name)``) runs every attention layer on
    fastattn.  The attention function goes to ``AttentionInterface``; the
    mask builder (transformers' SDPA one, which leaves out the mask where
    ``is_causal`` suffices) goes to ``AttentionMaskInterface``, without which
    transformers would pass no mask at all to a custom backend.
    """
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, sdpa_mask)


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: torch.Tensor | None,
                      dropout: float = 0.0, scaling: float | None = None,
                      is_causal: bool | None = None, sliding_window: int | None = None,
                      softcap: float | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The attention function transformers calls in each layer.

    Parameters
    ----------
    module : torch.nn.Module
        The attention layer (read for ``is_causal`` and its config's
        ``output_attentions``).
    query, key, value : torch.Tensor
        ``(B, H, Nq, D)``, ``(B, Hkv, Nk, D)``, ``(B, Hkv, Nk, Dv)``.
    attention_mask : torch.Tensor or None
        bool (True = may attend) or additive, broadcastable to
        ``(B, H, Nq, Nk)``; ``None`` for no mask besides ``is_causal``.
    dropout : float
        Must be 0: fastattn is for inference.
    scaling : float or None
        Multiplier of ``q @ k^T`` (default ``1 / sqrt(D)``).
    is_causal : bool or None
        Causal when no mask is given (default: the module's ``is_causal``).
        With more keys than queries it is top-left aligned, as PyTorch's.
    sliding_window : int or None
        transformers' window: query i sees key j iff ``i - W < j <= i``.
    softcap : float or None
        Soft capping of the scores (Gemma 2).

    Returns
    -------
    out : torch.Tensor, shape (B, Nq, H, Dv)
    weights : torch.Tensor (B, H, Nq, Nk) when ``output_attentions``, else None
    """
    if dropout:
        raise ValueError(f"dropout must be 0 with fastattn (inference only), got {dropout}; "
                         "call model.eval()")
    for name in _UNSUPPORTED:
        if kwargs.get(name) is not None:
            raise ValueError(f"fastattn does not support {name}; use attn_implementation="
                             "'eager' or 'sdpa' for this model")
    if query.requires_grad or key.requires_grad or value.requires_grad:
        raise ValueError("fastattn has no backward: run the model under "
                         "torch.inference_mode() or torch.no_grad()")
    if is_causal is None:
        is_causal = bool(getattr(module, "is_causal", True))
    b, h, n_q, _ = query.shape
    n_k = key.shape[2]
    plan = plan_mask(attention_mask, b, n_q, n_k, is_causal, sliding_window)
    dv = value.shape[3]
    out = _torch.empty((b, n_q, h, dv), dtype=query.dtype)
    _fatorch.attention(query, key, value, out=out.transpose(1, 2), scale=scaling,
                      softcap=softcap, **plan)
    weights = None
    if _wants_weights(module, kwargs):
        weights = _fatorch.attention_weights(query, key, scale=scaling, softcap=softcap,
                                            **plan)
    return out, weights


def _wants_weights(module: torch.nn.Module, kwargs: dict[str, Any]) -> bool:
    flag = kwargs.get("output_attentions")
    if flag is None:
        flag = getattr(getattr(module, "config", None), "output_attentions", False)
    return bool(flag)


# ---------------------------------------------------------------- masks

class _PlanCache:
    """The plan of the last mask seen: transformers hands the same mask
    object to every layer of a forward pass, so it is analysed once."""

    def __init__(self) -> None:
        self._lock = _threading.Lock()
        self._ref: weakref.ref[torch.Tensor] | None = None
        self._key: tuple[Any, ...] = ()
        self._plan: dict[str, Any] = {}

    def get(self, mask: torch.Tensor, key: tuple[Any, ...]) -> dict[str, Any] | None:
        with self._lock:
            if self._ref is not None and self._ref() is mask and self._key == key:
                return self._plan
        return None

    def put(self, mask: torch.Tensor, key: tuple[Any, ...], plan: dict[str, Any]) -> None:
        with self._lock:
            self._ref, self._key, self._plan = _weakref.ref(mask), key, plan


_cache = _PlanCache()


def plan_mask(mask: torch.Tensor | None, batch: int, n_q: int, n_k: int, is_causal: bool,
              sliding_window: int | None) -> dict[str, Any]:
    """fastattn options (``mask``, ``causal``, ``window``, ``kv_lengths``)
    equivalent to a transformers attention mask.

    ``None`` follows SDPA's ``is_causal`` (top-left aligned, no mask for a
    single query) plus the sliding window.  A 4-D mask that is a causal band
    and/or a key padding pattern takes the fast path (see the module
    docstring); any other mask is passed on unchanged.
    """
    window = None if not sliding_window else (int(sliding_window) - 1, 0)
    if mask is None:
        if not is_causal or n_q <= 1:
            # one query: the last, which sees every key (as in SDPA)
            return {"window": window if n_q == 1 else None}
        if n_q == n_k:
            return {"causal": True, "window": window}
        return {"causal": "top_left"}
    if (mask.dim() != 4 or mask.shape[0] not in (1, batch) or mask.shape[1] != 1
            or tuple(mask.shape[2:]) != (n_q, n_k)):
        return {"mask": mask}
    # inference tensors have no version counter: identity, pointer and shape
    version = 0 if mask.is_inference() else mask._version
    key = (version, tuple(mask.shape), mask.stride(), mask.data_ptr(), sliding_window)
    plan = _cache.get(mask, key)
    if plan is None:
        plan = _analyse(mask, batch, n_q, n_k, window)
        _cache.put(mask, key, plan)
    return plan


def _allowed(mask: torch.Tensor) -> torch.Tensor | None:
    """A float mask's allowed entries as bool, when it is really a bool mask
    (entries 0 or "minus infinity", every row with a key); else None."""
    if mask.dtype == _torch.bool:
        return mask
    zero = mask == 0
    hidden = mask <= _torch.finfo(mask.dtype).min / 2
    if not bool((zero | hidden).all()) or not bool(zero.any(dim=-1).all()):
        return None
    return zero


def _band(n_q: int, n_k: int, kind: str, window: tuple[int, int] | None) -> torch.Tensor:
    """(Nq, Nk) bool: the band of fastattn's ``causal="top_left"``,
    ``causal=True`` ("bottom_right") or ``causal=True, window=window``."""
    i = _torch.arange(n_q)[:, None]
    j = _torch.arange(n_k)[None, :]
    diag = i if kind == "top_left" else i + (n_k - n_q)
    band = j <= diag
    if kind == "window" and window is not None:
        band &= j >= diag - window[0]
    return band


def _analyse(mask: torch.Tensor, batch: int, n_q: int, n_k: int,
             window: tuple[int, int] | None) -> dict[str, Any]:
    allowed = _allowed(mask)
    if allowed is None:
        return {"mask": mask}
    m = allowed[:, 0]                                   # (B, Nq, Nk)
    if m.stride(1) == 0 or n_q == 1:
        keys, band = m[:, 0, :], None                   # a key mask broadcast over queries
    else:
        keys = m.any(dim=1)                              # (B, Nk)
        band = _match_band(m, keys, n_q, n_k, window)
        if band is None:
            return {"mask": mask}
        if band == "none":
            band = None
    return _with_keys(keys.expand(batch, n_k), band, n_q, window)


def _match_band(m: torch.Tensor, keys: torch.Tensor, n_q: int, n_k: int,
                window: tuple[int, int] | None) -> str | None:
    """Which band, combined with the key pattern ``keys``, reproduces ``m``:
    "none", "bottom_right", "top_left" or "window" (bottom-right causal with
    transformers' sliding window); None if none does."""
    candidates: list[tuple[str, tuple[int, int] | None]] = [
        ("none", None), ("bottom_right", None), ("top_left", None)]
    if window is not None:
        candidates.append(("window", window))
    for kind, win in candidates:
        if kind == "none":
            full = keys[:, None, :].expand_as(m)
        else:
            full = keys[:, None, :] & _band(n_q, n_k, kind, win)[None]
        if _torch.equal(m, full.expand_as(m)):
            return kind
    return None


def _with_keys(keys: torch.Tensor, band: str | None, n_q: int,
               window: tuple[int, int] | None) -> dict[str, Any]:
    """Options for a band plus a key pattern: kv_lengths for right padding
    where ``fold_key_padding``'s rule allows it, else a broadcast (B, 1, 1,
    Nk) key mask."""
    opts: dict[str, Any] = {}
    if band == "bottom_right":
        opts["causal"] = True
    elif band == "window":
        opts["causal"], opts["window"] = True, window
    elif band == "top_left":
        opts["causal"] = "top_left"
    folded = _fold_key_padding(keys.numpy(), n_q, opts.get("causal", False),
                               opts.get("window"))
    if folded is None:
        opts["mask"] = keys[:, None, None, :]
    else:
        opts.update(folded)
    return opts


# ---------------------------------------------------------------- continuous batching

def varlen_plan(mask: torch.Tensor | None, n_q: int, n_k: int, kwargs: dict[str, Any],
                sliding_window: int | None) -> dict[str, Any] | None:
    """``attention_varlen`` options (``cu_seqlens_q``, ``cu_seqlens_k``,
    ``window``) for a call of transformers' continuous batching: q and k of
    batch 1 holding every sequence end to end, the offsets in ``kwargs``
    (``cu_seq_lens_q``, ``cu_seq_lens_k``), and ``mask`` exactly the
    block-diagonal mask of those sequences, each causal with its queries on
    its last keys (and the sliding window).  None when any of it does not
    hold.  The mask is checked once per mask object (every layer of a
    forward pass gets the same one)."""
    cq, ck = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if mask is None or not isinstance(cq, _torch.Tensor) or not isinstance(ck, _torch.Tensor):
        return None
    if (cq.dim() != 1 or ck.shape != cq.shape or cq.numel() < 2 or cq.is_floating_point()
            or ck.is_floating_point() or mask.dim() != 4 or tuple(mask.shape) != (1, 1, n_q, n_k)):
        return None
    cu_q = cq.to("cpu", _torch.int64)
    cu_k = ck.to("cpu", _torch.int64)
    if int(cu_q[0]) != 0 or int(cu_k[0]) != 0 or int(cu_q[-1]) != n_q or int(cu_k[-1]) != n_k:
        return None
    version = 0 if mask.is_inference() else mask._version
    key = ("varlen", version, tuple(mask.shape), mask.stride(), mask.data_ptr(), sliding_window,
           tuple(cu_q.tolist()), tuple(cu_k.tolist()))
    plan = _cache.get(mask, key)
    if plan is None:
        plan = _match_block_diagonal(mask, cu_q, cu_k, sliding_window) or {"none": True}
        _cache.put(mask, key, plan)
    return None if "none" in plan else plan


def _match_block_diagonal(mask: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                          sliding_window: int | None) -> dict[str, Any] | None:
    lq, lk = cu_q.diff(), cu_k.diff()
    if bool((lq < 0).any()) or bool((lk < lq).any()):
        return None
    allowed = _allowed_any(mask[0, 0])
    if allowed is None:
        return None
    # row r of sequence b (query i) sees keys ck[b] + [lo, i + lk - lq] of its own
    seq = _torch.repeat_interleave(_torch.arange(lq.numel()), lq)
    i = _torch.arange(int(cu_q[-1])) - cu_q[:-1][seq]
    diag = i + (lk - lq)[seq]
    hi = cu_k[:-1][seq] + diag + 1
    lo = cu_k[:-1][seq]
    window = None
    if sliding_window:
        window = (int(sliding_window) - 1, 0)
        lo = _torch.maximum(lo, hi - int(sliding_window))
    j = _torch.arange(allowed.shape[1])[None, :]
    if not _torch.equal(allowed, (j >= lo[:, None]) & (j < hi[:, None])):
        return None
    return {"cu_seqlens_q": cu_q.numpy(), "cu_seqlens_k": cu_k.numpy(), "window": window}


def _allowed_any(mask: torch.Tensor) -> torch.Tensor | None:
    """A 2-D mask's allowed entries as bool: bool as it is, float when every
    entry is 0 or "minus infinity"; else None."""
    if mask.dtype == _torch.bool:
        return mask
    zero = mask == 0
    if not bool((zero | (mask <= _torch.finfo(mask.dtype).min / 2)).all()):
        return None
    return zero


def _varlen_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                    value: torch.Tensor, plan: dict[str, Any], scaling: float | None,
                    softcap: float | None) -> torch.Tensor:
    """The packed sequences of a continuous-batching call, as
    ``attention_varlen``: out (1, Nq, H, Dv)."""
    import fastattn

    _, h, n_q, _ = query.shape
    out = _torch.empty((1, n_q, h, value.shape[3]), dtype=query.dtype)
    q = _fatorch._operand(query[0].transpose(0, 1), "query")
    k = _fatorch._operand(key[0].transpose(0, 1), "key")
    v = _fatorch._operand(value[0].transpose(0, 1), "value")
    fastattn.attention_varlen(q, k, v, plan["cu_seqlens_q"], plan["cu_seqlens_k"], causal=True,
                              window=plan["window"], scale=scaling, softcap=softcap,
                              out=_fatorch.as_numpy(out[0]))
    return out


class _Dispatcher:
    """What ``continuous_batching`` puts under "sdpa": continuous-batching
    calls to fastattn, every other call to the function it replaced."""

    def __init__(self, original: Any) -> None:
        self.original = original
        self.varlen_calls = 0
        self.other_calls = 0

    def __call__(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                 value: torch.Tensor, attention_mask: torch.Tensor | None,
                 dropout: float = 0.0, scaling: float | None = None,
                 **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        plan = None
        if (not dropout and query.shape[0] == 1 and not query.requires_grad
                and not any(kwargs.get(n) is not None for n in _UNSUPPORTED)
                and not _wants_weights(module, kwargs) and query.is_cpu):
            plan = varlen_plan(attention_mask, query.shape[2], key.shape[2], kwargs,
                               kwargs.get("sliding_window"))
        if plan is None:
            self.other_calls += 1
            result: tuple[torch.Tensor, torch.Tensor | None] = self.original(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                **kwargs)
            return result
        self.varlen_calls += 1
        return _varlen_forward(module, query, key, value, plan, scaling,
                               kwargs.get("softcap")), None


class continuous_batching:
    """``with continuous_batching() as cb:`` runs transformers' continuous
    batching (on a model with ``attn_implementation="sdpa"``) on fastattn:
    see the module docstring.  ``cb.varlen_calls`` counts the attention
    calls fastattn ran, ``cb.other_calls`` those it left to SDPA.  Not reentrant; the registry is process-wide, so
    other threads' SDPA calls see the dispatcher too (it sends them to SDPA
    unless they are continuous-batching calls)."""

    def __enter__(self) -> "continuous_batching":
        from transformers import AttentionInterface
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        self._previous = ALL_ATTENTION_FUNCTIONS["sdpa"]
        self._dispatcher = _Dispatcher(self._previous)
        AttentionInterface.register("sdpa", self._dispatcher)
        return self

    def __exit__(self, *exc: object) -> None:
        from transformers import AttentionInterface

        AttentionInterface.register("sdpa", self._previous)

    @property
    def varlen_calls(self) -> int:
        return self._dispatcher.varlen_calls

    @property
    def other_calls(self) -> int:
        return self._dispatcher.other_calls
