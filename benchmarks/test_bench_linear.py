"""fastattn.linear (float32 and bfloat16 products) against NumPy's sgemm on
the products of all-MiniLM-L6-v2 (256-row blocks, as the encoder runs them,
and decode-sized and large row counts) and of BERT-base, one thread.

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

# (rows, in_features, out_features): MiniLM's QKV, output, FFN up and down in
# the encoder's 256-row blocks; decode-sized and large row counts; BERT-base's
# FFN up and down
SHAPES = [(256, 384, 1152), (256, 384, 384), (256, 384, 1536), (256, 1536, 384),
          (1, 384, 1536), (16, 384, 1536), (4096, 384, 1536),
          (512, 768, 3072), (512, 3072, 768)]
IMPLS = ["fastattn", "fastattn_bf16", "numpy"]


def _problem(m: int, k: int, n: int) -> Tuple[Any, Any, Any]:
    rng = np.random.default_rng(m * 7 + k * 3 + n)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    return x, w, b


# decode-sized calls (rows <= DECODE_ROWS) cycle through copies of the
# weight that together exceed the last-level cache, as a model's layers do,
# so that they read their weights from memory
DECODE_ROWS = 16
COLD_BYTES = 256 << 20


def _ring(make: Callable[[], Any], nbytes: int, m: int) -> Callable[[], Any]:
    """A function returning the next of enough copies (``make()``) to
    exceed COLD_BYTES when m is decode-sized, else always the one copy."""
    copies = [make() for _ in range(max(1, -(-COLD_BYTES // nbytes)) if m <= DECODE_ROWS else 1)]
    state = [0]

    def nxt() -> Any:
        state[0] = (state[0] + 1) % len(copies)
        return copies[state[0]]

    return nxt


def _runners(m: int, k: int, n: int) -> Dict[str, Callable[[], object]]:
    x, w, b = _problem(m, k, n)
    packed = _ring(lambda: fastattn.pack_linear(w, b), 4 * k * n, m)
    packed16 = _ring(lambda: fastattn.pack_linear(w, b, dtype="bfloat16"), 2 * k * n, m)
    wt = _ring(lambda: np.ascontiguousarray(w.T), 4 * k * n, m)
    out = np.empty((m, n), dtype=np.float32)

    def numpy_sgemm() -> object:
        np.matmul(x, wt(), out=out)
        return np.add(out, b, out=out)

    return {"fastattn": lambda: fastattn.linear(x, packed(), out=out, num_threads=1),
            "fastattn_bf16": lambda: fastattn.linear(x, packed16(), out=out, num_threads=1),
            "numpy": numpy_sgemm}


def bf16_peak(fma_peak: float) -> Tuple[float, str]:
    """The bfloat16 products' peak on this path: without a bfloat16 dot
    product (no avx512bf16 row), they widen to float32 FMAs, so the FMA
    peak is theirs too."""
    if fastattn.info().get("bf16_dot_product"):
        return 2 * fma_peak, "2x FMA (vdpbf16ps, not probed)"
    return fma_peak, "the FMA peak (bfloat16 widened to float32 FMAs)"


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
                         "wbytes": {"fastattn": 4 * k * n, "fastattn_bf16": 2 * k * n,
                                    "numpy": 4 * k * n},
                         **{f"{name}_ms": med[name] * 1e3 for name in names},
                         **{f"{name}_gflops": flops / med[name] / 1e9 for name in names}})
    return rows


@pytest.mark.parametrize("impl", IMPLS)
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
    peak = rows[0]["peak"]
    p16, p16_what = bf16_peak(peak)
    print(f"cpu: {cpu_model()}  isa={fastattn.info()['isa']}  1 thread  "
          f"FMA peak {peak:.1f} GFLOP/s, bfloat16 peak {p16:.1f} ({p16_what})  "
          f"medians of {args.rounds} alternating rounds")
    print(f"{'product':<24}" + "".join(f"{n + ' ms':>18}{'GFLOP/s':>9}{'%peak':>7}"
                                       for n in IMPLS) + f"{'np/f32':>8}{'np/bf16':>8}")
    for r in rows:
        line = f"{r['shape']:<24}"
        for n in IMPLS:
            pk = p16 if n == "fastattn_bf16" else peak
            line += (f"{r[n + '_ms']:>18.3f}{r[n + '_gflops']:>9.1f}"
                     f"{100 * r[n + '_gflops'] / pk:>6.0f}%")
        line += (f"{r['numpy_ms'] / r['fastattn_ms']:>7.2f}x"
                 f"{r['numpy_ms'] / r['fastattn_bf16_ms']:>7.2f}x")
        print(line)
    before = fastattn.get_num_threads()
    fastattn.set_num_threads(1)
    try:
        bw = float(_core.read_bandwidth()) * 1e9
    finally:
        fastattn.set_num_threads(before)
    print(f"read bandwidth (1 thread): {bw / 1e9:.1f} GB/s; weight bytes / time for the "
          f"decode-sized rows (weights cycled through {COLD_BYTES >> 20} MiB of copies):")
    for r in rows:
        if int(r["shape"].split("x")[0]) <= 16:
            print("  " + r["shape"] + ": " + ", ".join(
                f"{n} {r['wbytes'][n] / (r[n + '_ms'] * 1e-3) / 1e9:.1f} GB/s "
                f"({100 * r['wbytes'][n] / (r[n + '_ms'] * 1e-3) / bw:.0f}%)" for n in IMPLS))


if __name__ == "__main__":
    main()
