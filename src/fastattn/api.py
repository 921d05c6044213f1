"""The public attention API over NumPy arrays.

Validation happens once, in the compiled binding (``fastattn._core``), so a
call costs a few microseconds on top of the kernel; this module holds the
documented signatures.
"""
from . import _core

__all__ = ["attention"]


def attention(q, k, v, *, mask=None, causal=False, scale=None, out=None,
              return_lse=False):
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
    out : ndarray or None
        Preallocated result of shape ``(..., Nq, Dv)`` and the inputs' dtype,
        written in place and returned.  Must not overlap an input.
    return_lse : bool
        Also return the log-sum-exp (natural log) of each row's scaled,
        masked scores, shape ``(..., Nq)``.

    Returns
    -------
    out : ndarray, shape (..., Nq, Dv), same dtype as the inputs
    lse : ndarray, shape (..., Nq), only if ``return_lse``

    Notes
    -----
    float32 and float64 are supported; float32 accumulates in float32 with
    an online softmax.  A query row that can see no key gives exact zeros
    (and ``lse = -inf``), never NaN.  NaN in an input reaches every output
    row that attends to it.  Any strides are read in place, so a
    ``(B, N, H, D)`` array passed as ``x.transpose(0, 2, 1, 3)`` costs no
    copy.  Wrong types or dtypes raise ``TypeError``; wrong shapes or values
    raise ``ValueError``; the message names the argument.
    """
    return _core.attention(q, k, v, mask, causal, scale, out, return_lse)
