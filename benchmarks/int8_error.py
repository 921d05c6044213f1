"""The error of an int8 KV cache against float64, next to bfloat16 storage
(the table of docs/numerics.md, "The 8-bit KV cache").

For each case: standard normal q, k, v (H = 8; "outliers": 4 of the D key
channels 20x larger), the output of ``KVCache(dtype="int8")`` (append, then
attend with float32 queries), of bfloat16 q, k, v, and of float32, each
against float64 attention of the original inputs: max absolute error and
relative RMS error.  Run with ``python benchmarks/int8_error.py``.
"""

from __future__ import annotations

from typing import List, Tuple

import ml_dtypes
import numpy as np

import fastattn

BF16 = ml_dtypes.bfloat16
# (label, Nk, D, Nq, causal, outliers)
CASES = [
    ("decode, Nk=1024, D=64", 1024, 64, 1, False, False),
    ("decode, Nk=8192, D=128", 8192, 128, 1, False, False),
    ("decode, Nk=8192, D=128, outliers", 8192, 128, 1, False, True),
    ("prefill, Nq=256, Nk=1024, D=128, causal", 1024, 128, 256, True, False),
]


def errors(nk: int, d: int, nq: int, causal: bool, outliers: bool, h: int = 8,
           seed: int = 0) -> List[Tuple[float, float]]:
    """(max abs, relative RMS) error of int8, bfloat16 and float32."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, h, nq, d)).astype(np.float32)
    k = rng.standard_normal((1, h, nk, d)).astype(np.float32)
    v = rng.standard_normal((1, h, nk, d)).astype(np.float32)
    if outliers:
        k[..., :4] *= 20
    ref = fastattn.attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
                             causal=causal)
    cache = fastattn.KVCache(1, h, nk, d, dtype="int8")
    cache.append(k, v)
    outs = [cache.attend(q, causal=causal),
            fastattn.attention(q.astype(BF16), k.astype(BF16), v.astype(BF16),
                               causal=causal).astype(np.float64),
            fastattn.attention(q, k, v, causal=causal)]
    res = []
    for o in outs:
        e = np.abs(o - ref)
        res.append((float(e.max()), float(np.sqrt((e ** 2).mean() / (ref ** 2).mean()))))
    return res


def main() -> None:
    print("| case | int8 max | int8 rel. RMS | bfloat16 max | bfloat16 rel. RMS | float32 max |")
    print("|---|---|---|---|---|---|")
    for label, nk, d, nq, causal, outliers in CASES:
        (i8, i8r), (bf, bfr), (f32, _) = errors(nk, d, nq, causal, outliers)
        print(f"| {label} | {i8:.1e} | {i8r:.1e} | {bf:.1e} | {bfr:.1e} | {f32:.1e} |")


if __name__ == "__main__":
    main()
