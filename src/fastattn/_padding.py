"""Key padding as per-row key counts: the one rule for when a key-padding
pattern may be handed to the kernel as ``kv_lengths`` instead of a mask.

Used by :class:`fastattn.MultiHeadAttention` (its ``key_padding_mask``) and
by the transformers backend (right-padded attention masks), so both fold
padding the same way.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
from numpy.typing import NDArray


def _alignment(causal: object) -> Optional[str]:
    """"none", "bottom_right" or "top_left" for a value of ``causal=``, or
    None for a value the kernel will refuse (the caller keeps the mask
    form, and the kernel's error names it)."""
    if causal is None or causal is False or (isinstance(causal, np.bool_) and not causal):
        return "none"
    if causal is True or isinstance(causal, np.bool_):
        return "bottom_right"
    if isinstance(causal, str) and causal in ("bottom_right", "top_left"):
        return causal
    return None


def fold_key_padding(keys: NDArray[np.bool_], n_q: int, causal: object = False,
                     window: Optional[Tuple[int, int]] = None) -> Optional[Dict[str, Any]]:
    """Options standing for the key pattern ``keys`` without a mask array.

    ``keys`` is ``(B, Nk)`` bool, True for a real key.  Returns ``{}`` when
    every key is real; ``{"kv_lengths": lengths}`` (int64), with
    ``"causal"`` where the call's ``causal=`` must change, when each row's
    real keys are a prefix (right padding) and the band allows it; else
    None, and the caller passes ``keys`` as a ``(B, 1, 1, Nk)`` mask.

    The rule: ``kv_lengths[b]`` hides the keys from ``kv_lengths[b]`` on,
    but it also replaces Nk in every bottom-right alignment (``causal=True``,
    ``window``, ALiBi), moving the diagonal to each row's own end.  So the
    counts stand for right padding only where the band does not depend on
    Nk: no causal mask, or ``causal="top_left"``, or ``causal=True`` with
    ``Nq == Nk`` and no window (then bottom-right and top-left are the same
    band, and ``c`` is ``"top_left"``).  Any other band keeps the mask.
    """
    kind = _alignment(causal)
    if bool(keys.all()):
        return {}
    n_k = keys.shape[1]
    lengths = keys.sum(axis=1, dtype=np.int64)
    if kind is None or not np.array_equal(keys, np.arange(n_k) < lengths[:, None]):
        return None
    if kind == "none" and window is None:
        return {"kv_lengths": lengths}
    if kind == "top_left" or (kind == "bottom_right" and n_q == n_k and window is None):
        return {"kv_lengths": lengths, "causal": "top_left"}
    return None
