"""Cost of subnormal inputs: subnormal / normal time ratio per ISA path.

On Intel every arithmetic instruction that meets a subnormal operand takes a
microcode assist, so before subnormals were flushed inside the kernels a
call with subnormal q, k or v ran 30-250x slower than with normal inputs.
The target is at most 2x on every path.

Each case alternates normal and subnormal calls on the same shape (one
thread) and records the median of the per-pair time ratios in
``extra_info`` (``ratio_<variant>``; ``ratio_min_<variant>`` is the ratio of
the fastest calls, steadier on a loaded machine), with the ISA path, the CPU model and
whether ``FASTATTN_KEEP_SUBNORMALS`` was set (gradual underflow, the old
behaviour, for comparison).  Run with ``python -m pytest
benchmarks/test_bench_subnormal.py``.
"""

from __future__ import annotations

import os
import statistics
from typing import Any, Callable, Dict, Tuple

import numpy as np

from fastattn._bench import cpu_model, time_calls
import pytest

import fastattn
from fastattn import _core

try:
    import ml_dtypes

    BF16: Any = ml_dtypes.bfloat16
except ImportError:
    BF16 = None

# name: (dtype, lead, nq, nk, d): a tile-kernel call and, for bfloat16, a
# decode call (the AVX512-BF16 dot-product kernel where the CPU has it).
CASES: Dict[str, Tuple[Any, Tuple[int, ...], int, int, int]] = {
    "f32-tile": (np.float32, (4,), 256, 512, 64),
    "f64-tile": (np.float64, (4,), 128, 256, 64),
    "bf16-decode": (BF16, (8,), 1, 4096, 128),
}
VARIANTS = ("qkv", "q", "k", "v")


def _cpu_model() -> str:
    return cpu_model()


def _inputs(dtype: Any, lead: Tuple[int, ...], nq: int, nk: int,
            d: int) -> Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(5)
    q = rng.standard_normal(lead + (nq, d)).astype(dtype)
    k = rng.standard_normal(lead + (nk, d)).astype(dtype)
    v = rng.standard_normal(lead + (nk, d)).astype(dtype)
    tiny = 1e-310 if dtype == np.float64 else 1e-40
    small = {name: (a.astype(np.float64) * tiny).astype(dtype)
             for name, a in (("q", q), ("k", k), ("v", v))}
    out = {"normal": (q, k, v)}
    for variant in VARIANTS:
        out[variant] = (small["q"] if "q" in variant else q, small["k"] if "k" in variant else k,
                        small["v"] if "v" in variant else v)
    return out


def _caller(args: Tuple[np.ndarray, np.ndarray, np.ndarray]) -> Callable[[], Any]:
    def call() -> Any:
        return fastattn.attention(*args)

    return call


def _interleaved_ratios(calls: Dict[str, Callable[[], Any]],
                        pairs: int) -> Dict[str, Tuple[float, float]]:
    """Per variant: (median over `pairs` rounds of time(variant) /
    time(normal), each round timing the normal call right before the
    variant; and min time(variant) / min time(normal)).  On a loaded machine
    a preempted call distorts single pairs; the ratio of minimums is the
    steadier figure there."""
    out = {}
    for variant in calls:
        if variant == "normal":
            continue
        t = time_calls({"normal": calls["normal"], variant: calls[variant]}, pairs, warmup=0)
        ratios = [b / a for a, b in zip(t["normal"], t[variant])]
        out[variant] = (statistics.median(ratios), min(t[variant]) / min(t["normal"]))
    return out


@pytest.mark.parametrize("isa", _core.isa_available())
@pytest.mark.parametrize("case", list(CASES))
def test_subnormal_ratio(benchmark: Any, isa: str, case: str) -> None:
    dtype, lead, nq, nk, d = CASES[case]
    if dtype is None:
        pytest.skip("bfloat16 needs the optional ml_dtypes package")
    before_isa, before_threads = _core.get_isa(), fastattn.get_num_threads()
    _core.set_isa(isa)
    fastattn.set_num_threads(1)
    try:
        inputs = _inputs(dtype, lead, nq, nk, d)
        calls = {name: _caller(args) for name, args in inputs.items()}
        for fn in calls.values():  # warm up every variant once
            fn()
        pairs = 3 if isa == "scalar" else 15
        ratios = benchmark.pedantic(_interleaved_ratios, args=(calls, pairs), rounds=1,
                                    iterations=1)
    finally:
        _core.set_isa(before_isa)
        fastattn.set_num_threads(before_threads)
    benchmark.extra_info.update({
        "isa": isa, "case": case, "threads": 1, "pairs": pairs, "cpu": _cpu_model(),
        "keep_subnormals": os.environ.get("FASTATTN_KEEP_SUBNORMALS", ""),
        **{f"ratio_{v}": round(r[0], 3) for v, r in ratios.items()},
        **{f"ratio_min_{v}": round(r[1], 3) for v, r in ratios.items()},
    })
    print(f"\n[{isa} {case}] subnormal/normal ratio, median of pairs (of minimums): "
          + ", ".join(f"{v} {r[0]:.2f}x ({r[1]:.2f}x)" for v, r in ratios.items()))
