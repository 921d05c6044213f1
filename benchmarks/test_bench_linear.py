"""fastattn.linear (float32) against NumPy's sgemm on the products of
all-MiniLM-L6-v2 (256-row blocks, as the encoder runs them), one thread.

The point of fastattn.linear is that a row's result depends on that row
alone (the encoder's bitwise batch invariance rests on it); this measures
what that costs against the BLAS, and how close both come to the FMA peak
that ``_core.fma_peak()`` measures on the same core.  Each round times one
call of each, alternating which goes first; the table gives medians, GFLOP/s,
% of the peak and the ratio.

Run with ``python -m pytest benchmarks/test_bench_linear.py`` (pytest-benchmark;
GFLOP/s, % of peak, ISA and CPU model in ``extra_info``), or as a script for
the side-by-side table::

    python benchmarks/test_bench_linear.py [--rounds 21]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest

import fastattn
from fastattn import _core
from fastattn._bench import blas_limit, cpu_model, time_calls

# (rows, in_features, out_features): MiniLM's QKV, output, FFN up and down
SHAPES = [(256, 384, 1152), (256, 384, 384), (256, 384, 1536), (256, 1536, 384)]


def _problem(m: int, k: int, n: int) -> Tuple[Any, Any, Any, Any]:
    rng = np.random.default_rng(m * 7 + k * 3 + n)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    return x, w, b, fastattn.pack_linear(w, b)


def _runners(m: int, k: int, n: int) -> Dict[str, Callable[[], object]]:
    x, w, b, packed = _problem(m, k, n)
    wt = np.ascontiguousarray(w.T)
    out = np.empty((m, n), dtype=np.float32)

    def numpy_sgemm() -> object:
        np.matmul(x, wt, out=out)
        return np.add(out, b, out=out)

    return {"fastattn": lambda: fastattn.linear(x, packed, out=out), "numpy": numpy_sgemm}


def side_by_side(rounds: int) -> List[Dict[str, Any]]:
    """Medians of ``rounds`` alternating calls of each, per shape."""
    rows = []
    peak = float(_core.fma_peak())
    with blas_limit(1):
        for m, k, n in SHAPES:
            run = _runners(m, k, n)
            names = list(run)
            times = time_calls(run, rounds, alternate=True)
            med = {name: statistics.median(t) for name, t in times.items()}
            flops = 2.0 * m * k * n
            rows.append({"shape": f"{m}x{k} @ {k}x{n}", "peak": peak,
                         **{f"{name}_ms": med[name] * 1e3 for name in names},
                         **{f"{name}_gflops": flops / med[name] / 1e9 for name in names},
                         "ratio": med["numpy"] / med["fastattn"]})
    return rows


@pytest.mark.parametrize("impl", ["fastattn", "numpy"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_linear(benchmark: Any, fma_peak_gflops: Any, shape: Tuple[int, int, int],
                impl: str) -> None:
    m, k, n = shape
    fn = _runners(m, k, n)[impl]
    with blas_limit(1):
        benchmark(fn)
    median = getattr(getattr(getattr(benchmark, "stats", None), "stats", None), "median", None)
    if not median:   # --benchmark-disable: nothing was timed
        return
    gflops = 2.0 * m * k * n / median / 1e9
    benchmark.extra_info.update({
        "gflops": round(gflops, 1), "isa": fastattn.info()["isa"], "cpu": cpu_model(),
        "pct_fma_peak": round(100 * gflops / fma_peak_gflops, 1) if fma_peak_gflops else None})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=21)
    args = ap.parse_args()
    rows = side_by_side(args.rounds)
    print(f"cpu: {cpu_model()}  isa={fastattn.info()['isa']}  1 thread  "
          f"FMA peak {rows[0]['peak']:.1f} GFLOP/s  medians of {args.rounds} alternating rounds")
    print(f"{'product':<22}{'fastattn ms':>12}{'GFLOP/s':>9}{'% peak':>8}"
          f"{'numpy ms':>10}{'GFLOP/s':>9}{'% peak':>8}{'numpy/fastattn':>16}")
    for r in rows:
        print(f"{r['shape']:<22}{r['fastattn_ms']:>12.3f}{r['fastattn_gflops']:>9.1f}"
              f"{100 * r['fastattn_gflops'] / r['peak']:>7.0f}%{r['numpy_ms']:>10.3f}"
              f"{r['numpy_gflops']:>9.1f}{100 * r['numpy_gflops'] / r['peak']:>7.0f}%"
              f"{r['ratio']:>15.2f}x")


if __name__ == "__main__":
    main()
