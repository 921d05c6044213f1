"""Benchmark cases of the attention variants, shared by
``benchmarks/test_bench_variants.py`` (pytest-benchmark) and
``benchmarks/bench_variants.py`` (interleaved side-by-side ratios).

Each comparison is a group of calls on the same data: the variant and the
baseline(s) its target is stated against.  ``useful_flops`` counts only the
(query, key) pairs that are visible, 4 * D per pair.
"""
from __future__ import annotations

import dataclasses

import numpy as np

import fastattn


@dataclasses.dataclass
class Call:
    name: str
    fn: object            # zero-argument callable
    useful_flops: float


def _qkv(rng, b, h, hkv, nq, nk, d, dtype=np.float32):
    q = rng.standard_normal((b, h, nq, d), dtype=np.float32).astype(dtype)
    k = rng.standard_normal((b, hkv, nk, d), dtype=np.float32).astype(dtype)
    v = rng.standard_normal((b, hkv, nk, d), dtype=np.float32).astype(dtype)
    return q, k, v


def window_group(n=16384, w=512, h=8, d=64):
    """Local causal attention (window W) against the same call with a dense
    bool mask of the window, and against plain attention with W + 512 keys
    per query."""
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng, 1, h, h, n, n, d)
    i = np.arange(n)
    dense = (i[None, :] <= i[:, None]) & (i[None, :] >= i[:, None] - w)
    visible = 4.0 * h * d * float(np.minimum(i, w).sum() + n)
    kp, vp = k[:, :, :w + 512].copy(), v[:, :, :w + 512].copy()
    return [
        Call(f"window N={n} W={w}", lambda: fastattn.attention(q, k, v, causal=True,
                                                               window=(w, 0)), visible),
        Call("dense window mask", lambda: fastattn.attention(q, k, v, causal=True,
                                                             mask=dense), visible),
        Call(f"plain Nk={w + 512}", lambda: fastattn.attention(q, kp, vp),
             4.0 * h * d * n * (w + 512)),
    ]


def varlen_group(batch=64, lo=16, hi=512, h=8, d=64):
    """A packed batch of sequences with lengths uniform in [lo, hi] against
    the same batch padded to hi with a key-padding mask (and with
    kv_lengths)."""
    rng = np.random.default_rng(2)
    lens = rng.integers(lo, hi + 1, batch)
    cu = np.concatenate([[0], np.cumsum(lens)])
    total = int(cu[-1])
    q = rng.standard_normal((total, h, d), dtype=np.float32)
    k = rng.standard_normal((total, h, d), dtype=np.float32)
    v = rng.standard_normal((total, h, d), dtype=np.float32)
    pad = [np.zeros((batch, h, hi, d), np.float32) for _ in range(3)]
    for b in range(batch):
        for dst, src in zip(pad, (q, k, v)):
            dst[b, :, :lens[b]] = src[cu[b]:cu[b + 1]].transpose(1, 0, 2)
    qp, kp, vp = pad
    key_mask = (np.arange(hi)[None, :] < lens[:, None])[:, None, None, :]
    useful = 4.0 * h * d * float((lens.astype(np.float64) ** 2).sum())
    return [
        Call(f"varlen B={batch} L={lo}..{hi}", lambda: fastattn.attention_varlen(q, k, v, cu, cu),
             useful),
        Call("padded + key mask", lambda: fastattn.attention(qp, kp, vp, mask=key_mask), useful),
        Call("padded + kv_lengths", lambda: fastattn.attention(qp, kp, vp, kv_lengths=lens),
             useful),
    ]


def decode_dtype_group(h=32, nk=8192, d=128):
    """Decode (one query per head) with float16 and bfloat16 caches against
    float32."""
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, 1, h, h, 1, nk, d)
    calls = [Call("decode float32", lambda: fastattn.attention(q, k, v), 4.0 * h * nk * d)]
    q16, k16, v16 = (x.astype(np.float16) for x in (q, k, v))
    calls.append(Call("decode float16", lambda: fastattn.attention(q16, k16, v16),
                      4.0 * h * nk * d))
    try:
        import ml_dtypes
    except ImportError:
        return calls
    qb, kb, vb = (x.astype(ml_dtypes.bfloat16) for x in (q, k, v))
    calls.append(Call("decode bfloat16", lambda: fastattn.attention(qb, kb, vb),
                      4.0 * h * nk * d))
    return calls


def per_flop_group(n=2048, h=8, d=64):
    """Each variant against the plain kernel on the same shape (all pairs
    visible, so useful FLOPs are equal), plus a causal window counted by its
    visible pairs."""
    rng = np.random.default_rng(4)
    q, k, v = _qkv(rng, 1, h, h, n, n, d)
    full = 4.0 * h * d * n * n
    slopes = np.geomspace(0.5, 0.5 ** 8, h)
    w = 256
    i = np.arange(n)
    win = 4.0 * h * d * float(np.minimum(i, w).sum() + n)
    causal = 4.0 * h * d * n * (n + 1) / 2
    q16, k16, v16 = (x.astype(np.float16) for x in (q, k, v))
    return [
        Call(f"plain N={n}", lambda: fastattn.attention(q, k, v), full),
        Call("alibi", lambda: fastattn.attention(q, k, v, alibi_slopes=slopes), full),
        Call("softcap", lambda: fastattn.attention(q, k, v, softcap=30.0), full),
        Call("kv_lengths", lambda: fastattn.attention(q, k, v, kv_lengths=np.array([n])), full),
        Call("float16", lambda: fastattn.attention(q16, k16, v16), full),
        Call("causal", lambda: fastattn.attention(q, k, v, causal=True), causal),
        Call(f"causal window W={w}", lambda: fastattn.attention(q, k, v, causal=True,
                                                                window=(w, 0)), win),
    ]


def weights_group(n=1024, h=8, d=64):
    """The weights pass: attention with return_weights against plain."""
    rng = np.random.default_rng(5)
    q, k, v = _qkv(rng, 1, h, h, n, n, d)
    full = 4.0 * h * d * n * n
    return [
        Call(f"plain N={n}", lambda: fastattn.attention(q, k, v), full),
        Call("return_weights", lambda: fastattn.attention(q, k, v, return_weights=True), full),
        Call("reference weights", lambda: fastattn.reference.attention_weights(q, k), full),
    ]


GROUPS = {
    "window": window_group,
    "varlen": varlen_group,
    "decode_dtype": decode_dtype_group,
    "per_flop": per_flop_group,
    "weights": weights_group,
}
