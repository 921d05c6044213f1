"""pytest-benchmark runs of the attention variants (see variants.py for the
cases and what each is compared with).  Side-by-side ratios with interleaved
runs: ``python benchmarks/bench_variants.py``."""
from __future__ import annotations

import pytest

import fastattn

from variants import GROUPS

_CACHE: dict = {}


def _group(name):
    if name not in _CACHE:
        _CACHE.clear()  # one group's data resident at a time
        _CACHE[name] = GROUPS[name]()
    return _CACHE[name]


CASES = [(g, i) for g, make in GROUPS.items() for i in range(3 if g != "per_flop" else 7)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("group,index", CASES, ids=[f"{g}-{i}" for g, i in CASES])
def test_variant(benchmark, group, index, threads, fma_peak_gflops):
    calls = _group(group)
    if index >= len(calls):
        pytest.skip(f"{group} has {len(calls)} cases here (bfloat16 needs ml_dtypes)")
    call = calls[index]
    fastattn.set_num_threads(threads)
    benchmark.group = f"{group} {threads}T"
    benchmark.name = call.name
    slow = group == "window" and index == 1  # the dense N x N mask: seconds per call
    benchmark.pedantic(call.fn, rounds=2 if slow else 5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update({
        "case": call.name, "threads": threads, "isa": fastattn.info()["isa"]})
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    t = getattr(getattr(stats, "stats", None), "median", None)
    if t:
        gflops = call.useful_flops / t / 1e9
        benchmark.extra_info.update({
            "useful_gflops": gflops,
            "pct_of_peak": (100.0 * gflops / (fma_peak_gflops * threads)
                            if fma_peak_gflops else None),
        })
