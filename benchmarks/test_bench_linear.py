"""fastattn.linear (float32, bfloat16 and int8 products) against NumPy's
sgemm and NumKong's ``dots_packed`` (bfloat16 and int8, when numkong is
installed: the bench extra) on the products of all-MiniLM-L6-v2 (256-row
blocks, as the encoder runs them, and decode-sized and large row counts)
and of BERT-base, one thread.

Each product is measured against the peak of its own unit on the same
core: float32 against ``_core.fma_peak()``, bfloat16 and int8 against
``_core.dot_peak()`` (VDPBF16PS, VPDPBUSD; BFDOT, SDOT) where the path uses those
(``_core.linear_kernel``), else against the FMA peak (widened products).
fastattn's int8 times include the quantization of x (per row and block of
32 along K); NumKong's int8 is given x already quantized, untimed, and has
no bias.  Each round times one call of each, alternating which goes first;
the table gives medians, GFLOP/s (GOP/s for int8), % of the peak and the
ratios.

Run with ``python -m pytest benchmarks/test_bench_linear.py`` (pytest-benchmark;
GFLOP/s, % of peak, kernel and CPU model in ``extra_info``), or as a script
for the side-by-side table::

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
          (1, 384, 1536), (16, 384, 1536), (512, 384, 1536), (4096, 384, 1536),
          (512, 768, 3072), (512, 3072, 768)]
IMPLS = ["fastattn", "fastattn_bf16", "fastattn_int8", "numpy", "numkong_bf16", "numkong_int8"]
# each implementation's product type (its peak), and a weight's bytes in it
KIND = {"fastattn": "float32", "numpy": "float32", "fastattn_bf16": "bfloat16",
        "numkong_bf16": "bfloat16", "fastattn_int8": "int8", "numkong_int8": "int8"}
WBYTES = {"float32": 4, "bfloat16": 2, "int8": 1}


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
    out = np.empty((m, n), dtype=np.float32)
    run: Dict[str, Callable[[], object]] = {}
    for name, dtype in (("fastattn", "float32"), ("fastattn_bf16", "bfloat16"),
                        ("fastattn_int8", "int8")):
        packed = _ring(lambda d=dtype: fastattn.pack_linear(w, b, dtype=d),
                       WBYTES[dtype] * k * n, m)
        run[name] = lambda p=packed: fastattn.linear(x, p(), out=out, num_threads=1)
    wt = _ring(lambda: np.ascontiguousarray(w.T), 4 * k * n, m)

    def numpy_sgemm() -> object:
        np.matmul(x, wt(), out=out)
        return np.add(out, b, out=out)

    run["numpy"] = numpy_sgemm
    run.update(_numkong_runners(x, w, m, k, n))
    return run


def _numkong_runners(x: Any, w: Any, m: int, k: int, n: int) -> Dict[str, Callable[[], object]]:
    """NumKong's packed GEMM in bfloat16 and int8, or nothing when numkong
    or ml_dtypes is missing."""
    try:
        import ml_dtypes
        import numkong as nk
    except ImportError:
        return {}
    xb, wb = x.astype(ml_dtypes.bfloat16), w.astype(ml_dtypes.bfloat16)

    def q8(a: Any) -> Any:
        s = np.abs(a).max(axis=1, keepdims=True) / 127
        return np.clip(np.rint(a / s), -127, 127).astype(np.int8)

    x8, w8 = q8(x), q8(w)
    pb = _ring(lambda: nk.dots_pack(wb, dtype="bf16"), 2 * k * n, m)
    p8 = _ring(lambda: nk.dots_pack(w8, dtype="int8"), k * n, m)
    return {"numkong_bf16": lambda: nk.dots_packed(xb, pb()),
            "numkong_int8": lambda: nk.dots_packed(x8, p8())}


def peaks() -> Dict[str, Tuple[float, str]]:
    """The peak of each product type on this core and path, and its unit."""
    fma = float(_core.fma_peak())
    out = {"float32": (fma, "vfmadd231ps")}
    for dtype, insn, tile in (("bfloat16", "vdpbf16ps", "tdpbf16ps"),
                              ("int8", "vpdpbusd", "tdpbssd")):
        if _core.linear_kernel(dtype) == "amx":  # the real tiles (FASTATTN_ISA=amx)
            out[dtype] = (float(_core.amx_peak(dtype=dtype)), tile)
            continue
        insn = {"neon_bf16": "bfdot", "neon_dotprod": "sdot"}.get(_core.linear_kernel(dtype), insn)
        dot = _core.dot_peak(dtype)
        out[dtype] = ((float(dot), insn) if dot is not None
                      else (fma, "FMA peak: " + _core.linear_kernel(dtype) + " widens"))
    return out


def amx_note() -> str:
    """Whether the AMX rows were measured, and why not."""
    st = _core.amx_status()
    if _core.linear_kernel("bfloat16") == "amx":
        return "AMX: measured above (bfloat16 on TDPBF16PS" + (
            ", int8 on TDPBSSD)" if _core.linear_kernel("int8") == "amx" else "; no AMX-INT8)")
    if st["available"]:
        return "AMX: the tiles are usable but not selected (run with FASTATTN_ISA=amx)"
    return f"AMX-BF16 / AMX-INT8: could not be measured on this CPU ({st['reason']})"


def side_by_side(rounds: int) -> List[Dict[str, Any]]:
    """Medians of ``rounds`` alternating calls of each, per shape."""
    rows = []
    with blas_limit(1):
        for m, k, n in SHAPES:
            run = _runners(m, k, n)
            names = list(run)
            times = time_calls(run, rounds, alternate=True)
            med = {name: statistics.median(t) for name, t in times.items()}
            flops = 2.0 * m * k * n
            rows.append({"shape": f"{m}x{k} @ {k}x{n}", "m": m, "names": names,
                         "wbytes": {name: WBYTES[KIND[name]] * k * n for name in names},
                         **{f"{name}_ms": med[name] * 1e3 for name in names},
                         **{f"{name}_gflops": flops / med[name] / 1e9 for name in names}})
    return rows


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_linear(benchmark: Any, fma_peak_gflops: Any, shape: Tuple[int, int, int],
                impl: str) -> None:
    m, k, n = shape
    runners = _runners(m, k, n)
    if impl not in runners:
        pytest.skip("numkong (the bench extra) or ml_dtypes is not installed")
    with blas_limit(1):
        benchmark(runners[impl])
    median = getattr(getattr(getattr(benchmark, "stats", None), "stats", None), "median", None)
    if not median:   # --benchmark-disable: nothing was timed
        return
    gflops = 2.0 * m * k * n / median / 1e9
    peak, unit = peaks()[KIND[impl]]
    benchmark.extra_info.update({
        "gflops": round(gflops, 1), "isa": fastattn.info()["isa"], "cpu": cpu_model(),
        "kernel": _core.linear_kernel(KIND[impl]), "peak_of": unit,
        "pct_peak": round(100 * gflops / peak, 1) if peak else None})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=21)
    args = ap.parse_args()
    pk = peaks()
    rows = side_by_side(args.rounds)
    names = rows[0]["names"]
    print(f"cpu: {cpu_model()}  isa={fastattn.info()['isa']}  1 thread  medians of "
          f"{args.rounds} alternating rounds")
    print("peaks: " + ", ".join(f"{d} {v:.0f} G/s ({what})" for d, (v, what) in pk.items()))
    print("fastattn kernels: " + ", ".join(f"{d} {_core.linear_kernel(d)}" for d in WBYTES))
    print(amx_note())
    print(f"{'product':<22}" + "".join(f"{n:>22}" for n in names))
    print(f"{'':<22}" + "".join(f"{'ms':>8}{'G/s':>8}{'%pk':>6}" for _ in names))
    for r in rows:
        line = f"{r['shape']:<22}"
        for n in names:
            p = pk[KIND[n]][0]
            line += (f"{r[n + '_ms']:>8.3f}{r[n + '_gflops']:>8.1f}"
                     f"{100 * r[n + '_gflops'] / p:>5.0f}%")
        print(line)
    print("ratios, the peer's time over fastattn's:")
    for r in rows:
        line = (f"  {r['shape']:<22} NumPy sgemm / f32 {r['numpy_ms'] / r['fastattn_ms']:.2f}x,"
                f" / bf16 {r['numpy_ms'] / r['fastattn_bf16_ms']:.2f}x,"
                f" / int8 {r['numpy_ms'] / r['fastattn_int8_ms']:.2f}x")
        if "numkong_bf16" in names:
            line += (f"; NumKong bf16 {r['numkong_bf16_ms'] / r['fastattn_bf16_ms']:.2f}x,"
                     f" int8 {r['numkong_int8_ms'] / r['fastattn_int8_ms']:.2f}x")
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
        if r["m"] <= DECODE_ROWS:
            print("  " + r["shape"] + ": " + ", ".join(
                f"{n} {r['wbytes'][n] / (r[n + '_ms'] * 1e-3) / 1e9:.1f} GB/s "
                f"({100 * r['wbytes'][n] / (r[n + '_ms'] * 1e-3) / bw:.0f}%)" for n in names))


if __name__ == "__main__":
    main()
