#!/usr/bin/env python
"""Regenerate the benchmark results of docs/benchmarks.md: a markdown table and a plot.

Run from the repository root::

    python benchmarks/bench_report.py --quick               # smoke run, under a minute
    python benchmarks/bench_report.py                       # full run, a few minutes
    python benchmarks/bench_report.py --json results.json   # also keep the raw timings

fastattn, PyTorch's ``scaled_dot_product_attention`` (when torch is installed)
and the NumPy reference run side by side in this one process, on the same
float32 inputs, with 1 and 2 threads.  Because the machine may be shared and
noisy, the implementations are interleaved: after one warm-up call each, the
script times A B C A B C ... for ``--rounds`` rounds and reports the median of
each.  Calls shorter than ``MIN_SAMPLE_SECONDS`` are repeated inside a sample
and the per-call time is reported.

FLOP count: ``4 * B * H * Nq * Nk * D`` (the two matrix products), counting
only the visible (query, key) pairs for causal attention, which is about half
when ``Nq == Nk``.  ``% of peak`` divides fastattn's GFLOP/s by the float32 FMA
peak of one core (``fastattn._core.fma_peak()``, measured at the start on the
SIMD path in use) times the thread count.  For single-query decode the table
below the main one also gives the bandwidth: bytes of K and V read per second.

Writes ``docs/benchmark.png`` and the results into ``docs/benchmarks.md``
(paths relative to the repository root unless given explicitly): when that
file has the markers ``<!-- bench:start -->`` and ``<!-- bench:end -->``, only
the text between them is replaced and the prose around them is kept;
otherwise the file is written whole.  The plot needs matplotlib and limiting
the NumPy reference's BLAS threads needs threadpoolctl; both are in the
``bench`` extra (``pip install ".[bench]"``).  The case type, FLOP count and
thread limiter are fastattn._bench's, shared with ``fastattn bench`` and the
pytest-benchmark suite.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

import fastattn
from fastattn import reference
from fastattn._bench import (BenchCase, blas_limit, blas_limit_available, cpu_model,
                             format_ms, time_calls)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MD = REPO_ROOT / "docs" / "benchmarks.md"
DEFAULT_PNG = REPO_ROOT / "docs" / "benchmark.png"
MARK_START = "<!-- bench:start -->"
MARK_END = "<!-- bench:end -->"

# The NumPy reference materializes the (B, H, Nq, Nk) score matrix (and a few
# temporaries of that size); it is skipped when that matrix exceeds this.
NUMPY_SCORE_LIMIT_BYTES = 1.5e9

# A timed sample repeats calls shorter than this, so that timer resolution and
# per-call jitter of the small cases do not dominate.
SETTLE_SECONDS = 0.2  # idle time before each timed sample (see time_interleaved)
MIN_SAMPLE_SECONDS = 0.02
MAX_INNER_CALLS = 200

IMPLS = ("fastattn", "torch", "numpy")
SEED = 20240601


def full_cases() -> List[BenchCase]:
    cases = [
        BenchCase(1, 8, n, n, d, causal)
        for n in (512, 1024, 2048, 4096)
        for d in (64, 128)
        for causal in (False, True)
    ]
    # B=1 H=8 N=2048 D=64, causal and not, are part of the grid above; they are
    # the shapes the "speed-up vs NumPy" figures are quoted for.
    cases.append(BenchCase(32, 12, 128, 128, 32, label="batch"))
    cases.append(BenchCase(1, 32, 1, 8192, 128, label="decode"))
    return cases


def quick_cases() -> List[BenchCase]:
    cases = [BenchCase(1, 8, n, n, d) for n in (512, 1024) for d in (64, 128)]
    cases.append(BenchCase(1, 8, 1024, 1024, 64, causal=True))
    cases.append(BenchCase(32, 12, 128, 128, 32, label="batch"))
    cases.append(BenchCase(1, 32, 1, 8192, 128, label="decode"))
    return cases


# --------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------


def import_torch():
    try:
        import torch  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        print(f"torch is not available ({exc.__class__.__name__}: {exc}); "
              "its columns will read n/a", file=sys.stderr)
        return None
    return torch


def concurrent_fma_peak(n: int, seconds: float) -> float:
    """Sum of ``fma_peak`` run on ``n`` Python threads at once (GIL released)."""
    from fastattn import _core

    results = [0.0] * n

    def work(i: int) -> None:
        results[i] = _core.fma_peak(seconds=seconds)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(results)


# --------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------


class Impl(NamedTuple):
    name: str
    run: Callable[[], object]
    # entered around every sample, outside the timed region
    context: Callable[[], contextlib.AbstractContextManager]


def make_impls(case: BenchCase, threads: int, q, k, v, torch) -> List[Impl]:
    impls: List[Impl] = []
    null = contextlib.nullcontext

    fastattn.set_num_threads(threads)
    out = np.empty((case.B, case.H, case.Nq, case.D), dtype=np.float32)

    def run_fast():
        return fastattn.attention(q, k, v, causal=case.causal, out=out)

    impls.append(Impl("fastattn", run_fast, null))

    if torch is not None:
        torch.set_num_threads(threads)
        F = torch.nn.functional
        tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
        # torch's is_causal is top-left aligned, fastattn's bottom-right; they
        # agree for the Nq == Nk shapes, the only causal ones here.
        assert not case.causal or case.Nq == case.Nk

        def run_torch():
            with torch.no_grad():
                return F.scaled_dot_product_attention(tq, tk, tv, is_causal=case.causal)

        impls.append(Impl("torch", run_torch, null))

    if case.score_bytes <= NUMPY_SCORE_LIMIT_BYTES:
        def run_numpy():
            return reference.attention(q, k, v, causal=case.causal)

        impls.append(Impl("numpy", run_numpy, lambda: blas_limit(threads)))
    return impls


def time_interleaved(impls: Sequence[Impl], rounds: int) -> Dict[str, dict]:
    """Warm up each impl, then time them in turn for ``rounds`` rounds
    (fastattn._bench.time_calls).

    The warm-up results are compared with the first impl's (fastattn's) as a
    sanity check; the largest absolute difference is kept with the timings.
    """
    calls = {impl.name: impl.run for impl in impls}
    contexts = {impl.name: impl.context for impl in impls}
    inner: Dict[str, int] = {}
    reference_out = None
    max_diff: Dict[str, Optional[float]] = {}
    for impl in impls:
        with impl.context():
            t0 = time.perf_counter()
            result = impl.run()
            first = time.perf_counter() - t0
        result = np.asarray(result)
        if reference_out is None:
            reference_out = result
            max_diff[impl.name] = 0.0
        else:
            max_diff[impl.name] = float(np.max(np.abs(result - reference_out)))
            if not max_diff[impl.name] <= 1e-3:
                print(f"warning: {impl.name} differs from fastattn by up to "
                      f"{max_diff[impl.name]:.3g}", file=sys.stderr)
        del result
        if first < MIN_SAMPLE_SECONDS:
            # the first call may carry one-off costs: calibrate on a second one
            again = time_calls({impl.name: impl.run}, 1, warmup=0, context=contexts)
            first = min(first, again[impl.name][0])
        inner[impl.name] = max(1, min(MAX_INNER_CALLS,
                                      math.ceil(MIN_SAMPLE_SECONDS / max(first, 1e-9))))

    # SETTLE_SECONDS before each sample: OpenBLAS (NumPy) workers busy-wait
    # for a while after each call, and on a 2-core machine they would steal
    # the next run's core.
    samples = time_calls(calls, rounds, warmup=0, inner=inner, settle=SETTLE_SECONDS,
                         context=contexts)
    return {
        name: {
            "median_s": statistics.median(times),
            "times_s": times,
            "calls_per_sample": inner[name],
            "max_abs_diff_vs_fastattn": max_diff[name],
        }
        for name, times in samples.items()
    }


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------


def fmt_ms(seconds: Optional[float]) -> str:
    return format_ms(seconds, missing="n/a")

def fmt_ratio(num: Optional[float], den: Optional[float]) -> str:
    if num is None or den is None or den <= 0:
        return "n/a"
    return f"{num / den:.2f}x"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]

    def line(cells):
        padded = [c.ljust(w) if i == 0 else c.rjust(w)
                  for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    sep = "|" + "|".join([":" + "-" * (widths[0] + 1)] +
                         ["-" * (w + 1) + ":" for w in widths[1:]]) + "|"
    return "\n".join([line(headers), sep] + [line(r) for r in rows])


def _median(results: dict, impl: str) -> Optional[float]:
    entry = results.get(impl)
    return None if entry is None else entry["median_s"]


def build_markdown(meta: dict, records: List[dict], image_link: Optional[str]) -> str:
    peak = meta["fma_peak_gflops_per_core"]
    head = (
        f"Measured {meta['date']} on {meta['cpu']} ({meta['cpus']} CPUs) · "
        f"fastattn {meta['fastattn_version']} ({meta['isa']}) · "
        f"torch {meta['torch_version'] or 'n/a'} · NumPy {meta['numpy_version']} "
        f"({meta['numpy_threads']}) · "
        f"FMA peak {peak:.1f} GFLOP/s per core (fp32, {meta['isa']})"
    )
    lines = [head, ""]
    if meta.get("fma_peak_concurrent_gflops"):
        n, value = meta["fma_peak_concurrent_threads"], meta["fma_peak_concurrent_gflops"]
        lines += [f"FMA peak with {n} threads at once: {value:.1f} GFLOP/s in total.", ""]

    headers = ["case", "threads", "fastattn ms", "GFLOP/s", "% of peak", "torch ms",
               "speed-up vs torch", "NumPy ms", "speed-up vs NumPy"]
    rows = []
    for rec in records:
        res = rec["results"]
        t_fast = _median(res, "fastattn")
        t_torch = _median(res, "torch")
        t_np = _median(res, "numpy")
        fast = res["fastattn"]
        rows.append([
            rec["case"], str(rec["threads"]), fmt_ms(t_fast),
            f"{fast['gflops']:.1f}", f"{fast['pct_of_peak']:.0f}%",
            fmt_ms(t_torch), fmt_ratio(t_torch, t_fast),
            fmt_ms(t_np), fmt_ratio(t_np, t_fast),
        ])
    lines.append(markdown_table(headers, rows))

    target = [r for r in records if r["label"] == "" and r["B"] == 1 and r["H"] == 8
              and r["Nq"] == 2048 and r["D"] == 64 and "numpy" in r["results"]]
    if target:
        parts = []
        for rec in target:
            t_np = _median(rec["results"], "numpy")
            t_fast = _median(rec["results"], "fastattn")
            parts.append(f"{'causal' if rec['causal'] else 'non-causal'}, "
                         f"{rec['threads']} thread{'s' if rec['threads'] > 1 else ''}: "
                         f"{fmt_ratio(t_np, t_fast)}")
        lines += ["", "Speed-up vs NumPy at B=1, H=8, N=2048, D=64: "
                  + "; ".join(parts) + "."]

    decode = [r for r in records if r["Nq"] == 1]
    if decode:
        lines += ["", "Decode bandwidth (bytes of K and V read per second):", ""]
        drows = []
        for rec in decode:
            cells = [rec["case"], str(rec["threads"])]
            for impl in IMPLS:
                entry = rec["results"].get(impl)
                cells.append("n/a" if entry is None else f"{entry['gbps']:.1f}")
            drows.append(cells)
        lines.append(markdown_table(
            ["case", "threads", "fastattn GB/s", "torch GB/s", "NumPy GB/s"], drows))

    lines += [
        "",
        f"Median of {meta['rounds']} interleaved rounds after one warm-up call each, "
        f"with {SETTLE_SECONDS:g} s of idle time before every timed sample so that "
        "no implementation's spinning worker threads disturb the next; "
        "float32; times in ms. GFLOP/s counts `4*B*H*Nq*Nk*D`, halved for causal "
        "with `Nq == Nk`. % of peak = GFLOP/s / (FMA peak per core × threads). "
        "Speed-ups are the other implementation's time over fastattn's. "
        f"NumPy n/a: the NumPy reference is skipped where its score matrix "
        f"would exceed {NUMPY_SCORE_LIMIT_BYTES / 1e9:.1f} GB. "
        "Generated by `benchmarks/bench_report.py`.",
    ]
    if image_link:
        lines += ["", f"![GFLOP/s vs N]({image_link})"]
    return "\n".join(lines) + "\n"


def make_plot(meta: dict, records: List[dict], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed, so no plot was made "
              "(pip install matplotlib, or pip install '.[bench]')", file=sys.stderr)
        return False

    dims = [d for d in (64, 128)
            if any(r["label"] == "" and r["B"] == 1 and r["H"] == 8 and r["D"] == d
                   and not r["causal"] for r in records)]
    if not dims:
        print("no B=1 H=8 non-causal cases were run, so no plot was made", file=sys.stderr)
        return False

    colors = {"fastattn": "tab:blue", "torch": "tab:orange", "numpy": "tab:green"}
    labels = {"fastattn": "fastattn", "torch": "torch SDPA", "numpy": "NumPy reference"}
    styles = {1: "-", 2: "--"}
    thread_counts = sorted({r["threads"] for r in records})
    peak = meta["fma_peak_gflops_per_core"]

    fig, axes = plt.subplots(1, len(dims), figsize=(6.2 * len(dims), 4.8), squeeze=False)
    for ax, d in zip(axes[0], dims):
        sel = [r for r in records if r["label"] == "" and r["B"] == 1 and r["H"] == 8
               and r["D"] == d and not r["causal"]]
        ns = sorted({r["Nq"] for r in sel})
        for impl in IMPLS:
            for t in thread_counts:
                pts = sorted((r["Nq"], r["results"][impl]["gflops"]) for r in sel
                             if r["threads"] == t and impl in r["results"])
                if not pts:
                    continue
                xs, ys = zip(*pts)
                ax.plot(xs, ys, styles.get(t, ":"), marker="o", color=colors[impl],
                        label=f"{labels[impl]}, {t} thread{'s' if t > 1 else ''}")
        for t in thread_counts:
            ax.axhline(peak * t, color="gray", linestyle=styles.get(t, ":"), linewidth=1,
                       label=f"FMA peak × {t} ({peak * t:.0f} GFLOP/s)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns)
        ax.set_xticklabels([str(n) for n in ns])
        ax.set_ylim(bottom=0, top=peak * max(thread_counts) * 1.1)
        ax.set_xlabel("sequence length N (Nq = Nk)")
        ax.set_ylabel("GFLOP/s (float32)")
        ax.set_title(f"B=1, H=8, D={d}, non-causal")
        ax.grid(True, alpha=0.3)
    # one legend below the panels, where it hides no line
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"fastattn {meta['fastattn_version']} ({meta['isa']}) vs torch SDPA vs "
                 f"NumPy, {meta['cpu']}, {meta['date']}", fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_results(path: Path, block: str) -> None:
    """Put ``block`` between the markers of ``path``, or write the file whole."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    start, end = text.find(MARK_START), text.find(MARK_END)
    if start < 0 or end < start:
        text = f"# Benchmark results\n\n{MARK_START}\n{MARK_END}\n"
        start, end = text.find(MARK_START), text.find(MARK_END)
    new = text[:start + len(MARK_START)] + "\n" + block.rstrip("\n") + "\n" + text[end:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new, encoding="utf-8")


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a few small cases and 3 rounds: a smoke run of under a minute")
    p.add_argument("--rounds", type=int, default=None, metavar="R",
                   help="interleaved timing rounds per case (default 5, or 3 with --quick)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], metavar="N",
                   help="thread counts to run (default: 1 2)")
    p.add_argument("--out-md", type=Path, default=DEFAULT_MD, metavar="PATH",
                   help="markdown output, filled between its bench:start and bench:end "
                        "markers when it has them (default: docs/benchmarks.md)")
    p.add_argument("--out-png", type=Path, default=DEFAULT_PNG, metavar="PATH",
                   help="plot output (default: docs/benchmark.png)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="also write the raw results as JSON")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 3 if args.quick else 5
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if any(t < 1 for t in args.threads):
        p.error("--threads must be positive")
    args.threads = sorted(set(args.threads))
    return args


def _relative_link(target: Path, from_dir: Path) -> str:
    return Path(os.path.relpath(target.resolve(), from_dir.resolve())).as_posix()


def collect_meta(args: argparse.Namespace, torch) -> dict:
    """The machine, the versions and the FMA peaks the report is stated against."""
    from fastattn import _core

    ncpu = os.cpu_count() or 1
    if max(args.threads) > ncpu:
        print(f"warning: {max(args.threads)} threads requested, {ncpu} CPUs available",
              file=sys.stderr)
    if not blas_limit_available():
        numpy_threads = "numpy threads: default"
        print("threadpoolctl is not installed: the NumPy reference runs with its BLAS "
              "default thread count at every thread setting", file=sys.stderr)
    else:
        numpy_threads = "BLAS threads limited to the thread count via threadpoolctl"

    info = fastattn.info()
    peak_seconds = 0.1 if args.quick else 0.2
    peak = _core.fma_peak(seconds=peak_seconds)
    concurrent = None
    if max(args.threads) > 1:
        concurrent = concurrent_fma_peak(max(args.threads), peak_seconds)
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_model(),
        "cpus": ncpu,
        "fastattn_version": info.get("version"),
        "isa": info.get("isa"),
        "openmp": info.get("openmp"),
        "torch_version": None if torch is None else torch.__version__,
        "numpy_version": np.__version__,
        "numpy_threads": numpy_threads,
        "fma_peak_gflops_per_core": peak,
        "fma_peak_concurrent_threads": max(args.threads) if concurrent else None,
        "fma_peak_concurrent_gflops": concurrent,
        "rounds": args.rounds,
        "threads": args.threads,
        "quick": args.quick,
    }


def run_case(case: BenchCase, threads: int, rounds: int, q, k, v, torch, peak: float) -> dict:
    """One record of the report: every implementation on ``case`` at ``threads``."""
    t0 = time.perf_counter()
    results = time_interleaved(make_impls(case, threads, q, k, v, torch), rounds)
    for entry in results.values():
        t = entry["median_s"]
        entry["gflops"] = case.flops / t / 1e9
        entry["pct_of_peak"] = 100.0 * entry["gflops"] / (peak * threads)
        entry["gbps"] = case.kv_bytes / t / 1e9
    summary = "  ".join(f"{n} {fmt_ms(e['median_s'])} ms" for n, e in results.items())
    fast = results["fastattn"]
    vs_torch = fmt_ratio(_median(results, "torch"), fast["median_s"])
    print(f"  {case.name:<28} t{threads}: {summary}  | fastattn {fast['gflops']:.1f} GFLOP/s "
          f"{fast['pct_of_peak']:.0f}% of peak, {vs_torch} vs torch  "
          f"[{time.perf_counter() - t0:.1f} s]", file=sys.stderr)
    return {
        "case": case.name, "label": case.label, "B": case.B, "H": case.H,
        "Nq": case.Nq, "Nk": case.Nk, "D": case.D, "causal": case.causal,
        "flops": case.flops, "kv_bytes": case.kv_bytes, "threads": threads,
        "results": results,
    }


def run_cases(cases: Sequence[BenchCase], args: argparse.Namespace, torch,
              peak: float) -> List[dict]:
    """Every case at every thread count; the thread settings are restored after."""
    fast_threads_before = fastattn.get_num_threads()
    torch_threads_before = None if torch is None else torch.get_num_threads()
    records: List[dict] = []
    try:
        for index, case in enumerate(cases):
            q, k, v = case.make_inputs(SEED + index)
            for threads in args.threads:
                records.append(run_case(case, threads, args.rounds, q, k, v, torch, peak))
            del q, k, v
    finally:
        fastattn.set_num_threads(fast_threads_before)
        if torch is not None:
            torch.set_num_threads(torch_threads_before)
    return records


def write_outputs(args: argparse.Namespace, meta: dict, records: List[dict]) -> None:
    """The plot, the markdown results and (with --json) the raw timings."""
    out_md: Path = args.out_md
    out_png: Path = args.out_png
    have_png = make_plot(meta, records, out_png)
    if have_png:
        print(f"wrote {out_png}", file=sys.stderr)
    md = build_markdown(meta, records,
                        _relative_link(out_png, out_md.parent) if have_png else None)
    write_results(out_md, md)
    print(f"wrote {out_md}", file=sys.stderr)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "records": records}, indent=2),
                             encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    torch = import_torch()
    meta = collect_meta(args, torch)
    peak = meta["fma_peak_gflops_per_core"]
    print(f"fastattn {meta['fastattn_version']} ({meta['isa']}), "
          f"torch {meta['torch_version'] or 'n/a'}, NumPy {meta['numpy_version']}; "
          f"FMA peak {peak:.1f} GFLOP/s per core", file=sys.stderr)

    records = run_cases(quick_cases() if args.quick else full_cases(), args, torch, peak)
    meta["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    write_outputs(args, meta, records)
    print(build_markdown(meta, records, None))
    print(f"elapsed: {meta['elapsed_s']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
