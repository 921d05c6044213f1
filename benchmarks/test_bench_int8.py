"""Decode over an int8 KV cache against a bfloat16 one.

Decode (one query row per head) reads every cached key and value once, so
it is bound by memory bandwidth: an int8 cache reads half the bytes of a
bfloat16 one (plus one float32 scale per token and per channel).  The
target: int8 at least 1.7x faster than bfloat16 at the same threads (1 and
2), within 85% of the read bandwidth ``_core.read_bandwidth()`` measures.

Both caches hold the same tokens (the bfloat16 one rounded, the int8 one
quantized by ``KVCache(dtype="int8")``); each round times one call of each,
alternating which goes first, and the table reports medians, their ratio,
the bytes each call reads per second and that as a % of the read bandwidth
measured at the same thread count.

Run with ``python -m pytest benchmarks/test_bench_int8.py`` (pytest-benchmark;
GB/s, % of bandwidth, ISA and CPU model in ``extra_info``), or as a script
for the side-by-side table::

    python benchmarks/test_bench_int8.py [--rounds 21] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any, Callable, Dict, Tuple

import numpy as np
import pytest

import fastattn
from fastattn import _core
from fastattn._bench import cpu_model, time_calls

try:
    import ml_dtypes

    BF16: Any = ml_dtypes.bfloat16
except ImportError:  # pragma: no cover - ml_dtypes is a test dependency
    BF16 = None

# (B, H, Hkv, Nk, D): the target case, and a grouped-query one
CASES: Dict[str, Tuple[int, int, int, int, int]] = {
    "decode-b1-h32-nk8192-d128": (1, 32, 32, 8192, 128),
    "decode-gqa-b1-h32-hkv8-nk8192-d128": (1, 32, 8, 8192, 128),
}
THREADS = (1, 2)


def make_caches(case: Tuple[int, int, int, int, int], seed: int = 0
                ) -> Tuple[np.ndarray, fastattn.KVCache, fastattn.KVCache]:
    """(q, int8 cache, bfloat16 cache) holding the same Nk tokens."""
    b, h, hkv, nk, d = case
    rng = np.random.default_rng(seed)
    k = rng.standard_normal((b, hkv, nk, d), dtype=np.float32)
    v = rng.standard_normal((b, hkv, nk, d), dtype=np.float32)
    q = rng.standard_normal((b, h, 1, d), dtype=np.float32)
    i8 = fastattn.KVCache(b, hkv, nk, d, dtype="int8")
    bf = fastattn.KVCache(b, hkv, nk, d, dtype=BF16)
    i8.append(k, v)
    bf.append(k.astype(BF16), v.astype(BF16))
    return q, i8, bf


def cache_bytes(cache: fastattn.KVCache) -> int:
    """Bytes one decode call reads: keys, values and their scales."""
    n = cache.k.nbytes + cache.v.nbytes
    if cache.k_scale is not None and cache.v_scale is not None:
        n += cache.k_scale.nbytes + cache.v_scale.nbytes
    return n


def callers(q: np.ndarray, i8: fastattn.KVCache, bf: fastattn.KVCache
            ) -> Dict[str, Callable[[], Any]]:
    qb = q.astype(BF16)
    return {"int8": lambda: i8.attend(q), "bf16": lambda: bf.attend(qb)}


def measure(name: str, threads: int, rounds: int) -> Dict[str, Any]:
    """One row of the table: medians, ratio, GB/s and % of bandwidth."""
    q, i8, bf = make_caches(CASES[name])
    fastattn.set_num_threads(threads)
    bw = float(_core.read_bandwidth())
    times = time_calls(callers(q, i8, bf), rounds, alternate=True)
    med = {n: statistics.median(t) for n, t in times.items()}
    gbs = {"int8": cache_bytes(i8) / med["int8"] / 1e9, "bf16": cache_bytes(bf) / med["bf16"] / 1e9}
    return {"case": name, "threads": threads, "int8_ms": med["int8"] * 1e3,
            "bf16_ms": med["bf16"] * 1e3, "speedup": med["bf16"] / med["int8"],
            "int8_gbs": gbs["int8"], "bf16_gbs": gbs["bf16"], "read_gbs": bw,
            "int8_pct_bw": 100 * gbs["int8"] / bw, "bf16_pct_bw": 100 * gbs["bf16"] / bw,
            "isa": _core.get_isa(), "cpu": cpu_model()}


@pytest.mark.skipif(BF16 is None, reason="ml_dtypes (bfloat16) is not installed")
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("name", list(CASES))
def test_int8_decode(benchmark, name, threads):
    q, i8, bf = make_caches(CASES[name])
    fastattn.set_num_threads(threads)
    row = measure(name, threads, rounds=7)
    benchmark.extra_info.update(row)
    benchmark.pedantic(lambda: i8.attend(q), rounds=5, warmup_rounds=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--threads", type=int, nargs="+", default=list(THREADS))
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = ap.parse_args()
    print(f"CPU: {cpu_model()}   ISA: {_core.get_isa()}   rounds: {args.rounds} "
          "(alternating, medians)")
    head = (f"{'case':36} {'thr':>3} {'int8 ms':>8} {'bf16 ms':>8} {'bf16/int8':>9} "
            f"{'int8 GB/s':>9} {'bf16 GB/s':>9} {'read GB/s':>9} {'int8 %bw':>8} {'bf16 %bw':>8}")
    print(head)
    for name in args.cases:
        for th in args.threads:
            r = measure(name, th, args.rounds)
            print(f"{name:36} {th:>3} {r['int8_ms']:8.2f} {r['bf16_ms']:8.2f} "
                  f"{r['speedup']:9.2f} {r['int8_gbs']:9.1f} {r['bf16_gbs']:9.1f} "
                  f"{r['read_gbs']:9.1f} {r['int8_pct_bw']:7.0f}% {r['bf16_pct_bw']:7.0f}%")


if __name__ == "__main__":
    main()
