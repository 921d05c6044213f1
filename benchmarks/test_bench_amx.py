"""The matrix-unit (AMX) paths against PyTorch's CPU SDPA, in one process.

Two comparisons per case (B=1, H=8, N = 1024, 2048, 4096, D = 64 and 128,
causal and not, 1 and 2 threads):

- bfloat16: fastattn (the matrix kernels where the CPU has AMX) against
  torch's SDPA on bfloat16 tensors (AMX through oneDNN where the CPU has it);
- float32: fastattn with ``precision="highest"`` (the default), ``"bf16"``
  and ``"bf16x3"``, against torch's float32 SDPA, by default and with its
  opt-in ``torch.backends.mkldnn.matmul.fp32_precision = "bf16"`` (restored
  after each call).

GFLOP/s count the visible (query, key) pairs (``fastattn._bench``), per core
(divided by the thread count), and as a % of the AMX peak of one core
measured by a ``TDPBF16PS`` probe (``fastattn._core.amx_peak()``).  On a CPU
without AMX there is no such peak, and the fastattn bf16/"bf16"/"bf16x3"
rows measure the vector paths they fall back to (the script says so).

``pytest benchmarks/test_bench_amx.py`` times every (case, implementation)
with pytest-benchmark; ``python benchmarks/test_bench_amx.py`` alternates the
implementations run by run and prints medians and ratios side by side, and
``--errors`` prints the table of each precision mode's error against
float64 (docs/amx.md), measured on the tile emulation, whose arithmetic is
the instruction's.  torch is optional: its rows are skipped, with the
reason, without it.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pytest

pytest.importorskip("pytest_benchmark", reason="the benchmarks need pytest-benchmark")
ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 inputs need ml_dtypes")

import fastattn  # noqa: E402
from fastattn import _core  # noqa: E402
from fastattn._bench import BenchCase, cpu_model, time_calls  # noqa: E402

CASES = [BenchCase(1, 8, n, n, d, causal) for n in (1024, 2048, 4096) for d in (64, 128)
         for causal in (False, True)]
THREADS = (1, 2)
# the implementations compared side by side, per input dtype
TABLES = {"bfloat16": ("fastattn bf16", "torch bf16"),
          "float32": ("fastattn f32 bf16", "fastattn f32 bf16x3", "fastattn f32", "torch f32",
                      "torch f32 bf16")}
IMPLS = TABLES["bfloat16"] + TABLES["float32"]
NO_TORCH = "torch is not installed (pip install torch==2.13.0)"


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


@contextlib.contextmanager
def _torch_fp32_precision(torch: Any, mode: str) -> Iterator[None]:
    """torch's oneDNN float32 matmul precision set to ``mode``, restored after."""
    saved = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = mode
    try:
        yield
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = saved


def make_call(impl: str, case: BenchCase, threads: int) -> Optional[Callable[[], Any]]:
    """One call of ``impl`` on ``case`` (same standard-normal inputs for every
    implementation of a dtype), or None when torch is missing."""
    bf16 = impl.split()[1] == "bf16"
    q, k, v = case.make_inputs(seed=0, dtype=ml_dtypes.bfloat16 if bf16 else np.float32)
    if impl.startswith("fastattn"):
        precision = impl.split()[2] if impl.count(" ") == 2 else "highest"
        return lambda: fastattn.attention(q, k, v, causal=case.causal, num_threads=threads,
                                          precision=precision)
    torch = _torch()
    if torch is None:
        return None
    from fastattn.torch import from_numpy
    tq, tk, tv = (from_numpy(np.ascontiguousarray(a)) for a in (q, k, v))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    mode = "bf16" if impl == "torch f32 bf16" else "none"

    def call() -> Any:
        torch.set_num_threads(threads)
        with torch.inference_mode(), _torch_fp32_precision(torch, mode):
            return sdpa(tq, tk, tv, is_causal=case.causal)
    return call


def amx_peak() -> Optional[float]:
    """The TDPBF16PS peak of one core (GFLOP/s), or None without AMX."""
    try:
        return float(_core.amx_peak())
    except RuntimeError:                  # the tiles are not available here
        return None


def _kernel(impl: str, case: BenchCase) -> str:
    """What runs a fastattn row, from its plan: "matrix bf16", "tile highest"..."""
    if not impl.startswith("fastattn"):
        return "oneDNN"
    bf16 = impl.split()[1] == "bf16"
    q, k, v = case.make_inputs(seed=0, dtype=ml_dtypes.bfloat16 if bf16 else np.float32)
    precision = impl.split()[2] if impl.count(" ") == 2 else "highest"
    plan = fastattn.explain(q, k, v, causal=case.causal, precision=precision)
    return f"{plan['kernel']} {plan['precision'] or 'bf16'}"


# ---------------------------------------------------------------- pytest-benchmark

@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_amx(benchmark: Any, case: BenchCase, impl: str, threads: int) -> None:
    call = make_call(impl, case, threads)
    if call is None:
        pytest.skip(NO_TORCH)
    benchmark.group = f"{case.id} {impl.split()[1]} {threads}t"
    call()
    benchmark.pedantic(call, rounds=3, warmup_rounds=0)
    peak = amx_peak()
    info: Dict[str, Any] = dict(impl=impl, threads=threads, flops=case.flops, cpu=cpu_model(),
                                isa=fastattn.info()["isa"], kernel=_kernel(impl, case),
                                amx_peak_gflops_per_core=peak)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        gflops = case.flops / stats.stats.median / 1e9
        info.update(gflops=gflops, gflops_per_core=gflops / threads,
                    pct_of_amx_peak=None if peak is None else 100 * gflops / threads / peak)
    benchmark.extra_info.update(info)


# ---------------------------------------------------------------- script mode

def side_by_side(case: BenchCase, impls: Tuple[str, ...], threads: int,
                 repeat: int) -> Dict[str, Optional[float]]:
    """Median seconds of each implementation, run in alternating order."""
    calls = {i: make_call(i, case, threads) for i in impls}
    live = {i: call for i, call in calls.items() if call is not None}
    times = time_calls(live, repeat, alternate=True)
    return {i: (statistics.median(times[i]) if i in times else None) for i in impls}


# ratios printed per table: (slower, faster): the speed-up of ``faster``
RATIOS = {
    "bfloat16": [("torch bf16", "fastattn bf16")],
    "float32": [("torch f32 bf16", "fastattn f32 bf16"), ("fastattn f32", "fastattn f32 bf16x3")],
}


def _row(case: BenchCase, threads: int, title: str, med: Dict[str, Optional[float]],
         peak: Optional[float]) -> str:
    cells = []
    for i in TABLES[title]:
        t = med[i]
        if t is None:
            cells.append("-")
            continue
        per_core = case.flops / t / 1e9 / threads
        pct = f", {100 * per_core / peak:.0f}%" if peak and i.startswith("fastattn") else ""
        cells.append(f"{t * 1e3:.1f} ms, {per_core:.0f}{pct}")
    for slow, fast in RATIOS[title]:
        a, b = med[slow], med[fast]
        cells.append(f"{a / b:.2f}x" if a and b else "-")
    return f"| {case.name} | {threads} | " + " | ".join(cells) + " |"


def speed_tables(cases: List[BenchCase], threads: Tuple[int, ...], repeat: int) -> None:
    peak = amx_peak()
    status = _core.amx_status()
    print(f"# {cpu_model()}; fastattn isa={fastattn.info()['isa']}; medians of {repeat} "
          "alternating runs; cells: median ms, GFLOP/s per core"
          + (f", % of the AMX peak {peak:.0f} GFLOP/s per core" if peak else ""))
    if peak is None:
        print(f"# AMX not available ({status['reason']}): the AMX rows are not measurable "
              "here; the fastattn bf16, 'bf16' and 'bf16x3' rows measure the vector paths "
              "they fall back to")
    if _torch() is None:
        print(f"# torch rows skipped: {NO_TORCH}")
    for title, impls in TABLES.items():
        kernels = ", ".join(f"{i}: {_kernel(i, cases[0])}" for i in impls
                            if i.startswith("fastattn"))
        ratios = [f"{slow} / {fast}" for slow, fast in RATIOS[title]]
        print(f"\n## {title} ({kernels})\n")
        print("| case | threads | " + " | ".join(list(impls) + ratios) + " |")
        print("|---|---|" + "---|" * (len(impls) + len(ratios)))
        for case in cases:
            for t in threads:
                med = side_by_side(case, impls, t, repeat)
                print(_row(case, t, title, med, peak), flush=True)


# ---------------------------------------------------------------- error table

ERROR_SHAPES = [BenchCase(1, 2, 256, 256, 64), BenchCase(1, 2, 512, 512, 128, True),
                BenchCase(1, 2, 1024, 1024, 64)]


def _max_error(a: Any, exact: np.ndarray[Any, Any]) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - exact)))


def error_row(case: BenchCase) -> Dict[str, float]:
    """Max |out - float64 reference| of each mode on standard-normal inputs."""
    from fastattn import reference
    q, k, v = case.make_inputs(seed=0)
    exact = reference.attention(*(a.astype(np.float64) for a in (q, k, v)), causal=case.causal)
    row = {"naive float32 (NumPy)": _max_error(reference.attention(q, k, v, causal=case.causal),
                                               exact)}
    before = _core.get_isa()
    try:
        for isa, modes in ((before, ("highest",)), ("amx_emu", ("bf16", "bf16x3"))):
            _core.set_isa(isa)
            for mode in modes:
                out = fastattn.attention(q, k, v, causal=case.causal, precision=mode)
                row[f"fastattn {mode!r}"] = _max_error(out, exact)
    finally:
        _core.set_isa(before)
    torch = _torch()
    if torch is not None:
        for mode in ("none", "bf16"):
            with _torch_fp32_precision(torch, mode), torch.inference_mode():
                out = torch.nn.functional.scaled_dot_product_attention(
                    *(torch.from_numpy(a) for a in (q, k, v)), is_causal=case.causal)
            row[f"torch SDPA fp32_precision={mode!r}"] = _max_error(out.numpy(), exact)
    return row


def error_table(cases: List[BenchCase]) -> None:
    if "amx_emu" not in _core.isa_available():
        print("# the tile emulation (amx_emu) needs AVX-512 with AVX512-BF16: no table")
        return
    rows = {c.name: error_row(c) for c in cases}
    modes = list(next(iter(rows.values())))
    print(f"# {cpu_model()}; max |out - float64 reference|, standard-normal q, k, v; "
          "fastattn 'bf16'/'bf16x3' on the tile emulation (amx_emu)")
    print("| mode | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for m in modes:
        print(f"| {m} | " + " | ".join(f"{rows[c][m]:.2g}" for c in rows) + " |")


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--sizes", nargs="+", type=int, default=[1024, 2048, 4096])
    p.add_argument("--dims", nargs="+", type=int, default=[64, 128])
    p.add_argument("--threads", nargs="+", type=int, default=list(THREADS))
    p.add_argument("--errors", action="store_true", help="print the error table instead")
    args = p.parse_args(argv)
    if args.errors:
        error_table(ERROR_SHAPES)
        return
    cases = [c for c in CASES if c.Nq in args.sizes and c.D in args.dims]
    speed_tables(cases, tuple(args.threads), args.repeat)


if __name__ == "__main__":
    main()
