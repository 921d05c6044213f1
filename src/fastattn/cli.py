"""Command-line interface for fastattn.

Usage::

    fastattn info [--json]
    fastattn bench [--threads N] [--repeat N] [--quick] [--no-reference]
    fastattn demo [TEXT] [--out PATH] [--causal] [--heads N] [--dim E] [--seed S]
    fastattn --version

``python -m fastattn`` is equivalent to the ``fastattn`` console script.

Errors are one line on stderr (``fastattn: error: ...``) and exit status 2:
bad arguments, a bad output path, and an invalid ``FASTATTN_ISA``,
``FASTATTN_NUM_THREADS`` or ``OMP_NUM_THREADS`` (``--help`` and
``--version`` still work; ``fastattn info`` prints its report with the
problem in it, then the error line).

Importing this module has no side effects: NumPy and the compiled core are
only loaded when a subcommand runs.

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its
arguments and sets ``func`` to the function that runs it; ``SUBCOMMANDS``
lists them in the order ``--help`` shows.  A new subcommand is one such
function and one entry in that list.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import (TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence,
                    TextIO, Tuple)

from fastattn._bench import (BenchCase, attention_flops, format_ms, time_calls,
                             visible_pairs)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["main", "build_parser", "SUBCOMMANDS", "BenchCase", "attention_flops",
           "visible_pairs", "format_ms", "run_bench"]

PROG = "fastattn"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _package_version() -> str:
    try:
        from fastattn import __version__

        return str(__version__)
    except Exception:  # pragma: no cover - broken install
        try:
            from importlib.metadata import version

            return version("fastattn")
        except Exception:
            return "unknown"


def _format_value(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if value else "-"
    if value is None or value == "":
        return "-"
    return str(value)


def _format_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
                  left: Sequence[int] = (0,)) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def fmt(row: Sequence[str]) -> str:
        cells = []
        for i, cell in enumerate(row):
            cells.append(cell.ljust(widths[i]) if i in left else cell.rjust(widths[i]))
        return "  ".join(cells).rstrip()

    lines = [fmt(headers), "  ".join("-" * w for w in widths)]
    lines.extend(fmt(r) for r in rows)
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _environment_error() -> Optional[str]:
    """The invalid environment variables fastattn ignored at import, as one
    line, or None.  (``import fastattn`` raises for them, except in this
    command: see ``fastattn._config.started_by_command_line``.)"""
    from fastattn import _config

    errors = _config.environment_errors()
    return "; ".join(errors.values()) if errors else None


# --------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------

def cmd_info(args: argparse.Namespace) -> int:
    """``fastattn info``: the report of ``fastattn.show_config()``, or
    ``fastattn.info()`` as JSON."""
    import fastattn

    if args.json:
        print(json.dumps(dict(fastattn.info()), indent=2, default=str))
    else:
        fastattn.show_config()
    return 0


def _add_info(sub: SubParsers) -> None:
    p = sub.add_parser(
        "info", help="show version, SIMD path, threads and build details",
        description="Show version, SIMD path (in use and available), threads, "
                    "OpenMP, compiler, build flags and NumPy version.  An invalid "
                    "FASTATTN_ISA, FASTATTN_NUM_THREADS or OMP_NUM_THREADS shows in "
                    "the report (env_errors in the JSON) and makes the exit status 2.")
    p.add_argument("--json", action="store_true", help="print the details as JSON")
    p.set_defaults(func=cmd_info)


# --------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------

DEFAULT_CASES: List[BenchCase] = [
    BenchCase(1, 8, 512, 512, 64, label="n512"),
    BenchCase(1, 8, 1024, 1024, 64, label="n1024"),
    BenchCase(1, 8, 1024, 1024, 64, causal=True, label="n1024 causal"),
    BenchCase(1, 8, 2048, 2048, 64, label="n2048"),
    BenchCase(1, 8, 2048, 2048, 64, causal=True, label="n2048 causal"),
    BenchCase(1, 32, 1, 4096, 128, label="decode"),
    BenchCase(1, 32, 1, 4096, 128, Hkv=8, label="decode gqa"),
    BenchCase(32, 12, 128, 128, 32, label="batch"),
]

QUICK_CASES: List[BenchCase] = [
    BenchCase(1, 8, 512, 512, 64, label="n512"),
    BenchCase(1, 8, 1024, 1024, 64, causal=True, label="n1024 causal"),
    BenchCase(1, 32, 1, 4096, 128, label="decode"),
    BenchCase(32, 12, 128, 128, 32, label="batch"),
]

# Idle time between the fastattn and the reference phase of `fastattn bench`,
# so that neither's worker threads still spin when the other starts.
SETTLE_SECONDS = 0.2


def _median_time(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    return statistics.median(time_calls({"": fn}, max(1, repeat), warmup=warmup)[""])


def _time_fastattn(cases: Sequence[BenchCase], repeat: int
                   ) -> List[Tuple[float, "np.ndarray[Any, Any]"]]:
    """Median time of fastattn on each case, and its result (for the error
    column).  Case ``i`` uses the inputs of seed ``i``."""
    import numpy as np

    import fastattn

    timed = []
    for seed, case in enumerate(cases):
        q, k, v = case.make_inputs(seed)
        res = np.empty_like(q)

        def run(q: Any = q, k: Any = k, v: Any = v, res: Any = res,
                causal: bool = case.causal) -> object:
            return fastattn.attention(q, k, v, causal=causal, out=res)

        timed.append((_median_time(run, repeat), res))
    return timed


def _time_reference(cases: Sequence[BenchCase], results: Sequence["np.ndarray[Any, Any]"],
                    repeat: int, threads: int) -> List[Tuple[float, float]]:
    """Median time of the NumPy reference on each case (at most 3 runs, BLAS
    held to ``threads``) and the largest error of fastattn's ``results``
    against the reference computed in float64."""
    import numpy as np

    from fastattn import reference
    from fastattn._bench import blas_limit

    timed = []
    for seed, (case, got) in enumerate(zip(cases, results)):
        q, k, v = case.make_inputs(seed)
        with blas_limit(threads):
            t_ref = _median_time(lambda: reference.attention(q, k, v, causal=case.causal),
                                 min(repeat, 3), warmup=0)
            expected = reference.attention(q.astype(np.float64), k.astype(np.float64),
                                           v.astype(np.float64), causal=case.causal)
        err = float(np.max(np.abs(got.astype(np.float64) - expected)))
        timed.append((t_ref, err))
    return timed


def _bench_header(repeat: int, threads: int, peak: float, bandwidth: float,
                  reference: bool) -> str:
    import numpy as np

    import fastattn
    from fastattn._bench import blas_limit_available, cpu_model

    info = fastattn.info()
    if not reference:
        blas = "reference skipped"
    elif blas_limit_available():
        blas = f"reference BLAS threads={threads} (threadpoolctl)"
    else:
        blas = "reference BLAS threads=default (threadpoolctl not installed)"
    return (
        f"fastattn {info.get('version', _package_version())}  isa={info.get('isa', '?')}"
        f"  threads={threads}  openmp={_format_value(info.get('openmp'))}"
        f"  numpy={np.__version__}  dtype=float32  repeat={repeat} (median)"
        f"\ncpu: {cpu_model()}  ({os.cpu_count()} CPUs); {blas}"
        f"\nmeasured FMA peak: {peak:.1f} GFLOP/s per core ({peak * threads:.1f} for {threads})"
        f"\nmeasured read bandwidth: {bandwidth:.1f} GB/s with {threads} thread(s)"
    )


_BENCH_HEADERS = ["case", "B", "H", "Hkv", "Nq", "Nk", "D", "causal", "fastattn ms",
                  "GFLOP/s", "% peak", "GB/s", "% bw", "numpy ms", "speed-up", "max|err|"]

_BENCH_NOTES = (
    "\nGFLOP/s: 4*B*H*Nq*Nk*D, counting only the visible (query, key) pairs\n"
    "for causal (about half when Nq == Nk).  GB/s: the bytes a call must move\n"
    "(K, V and Q read, the output written, float32, once each) per second.\n"
    "A row is bounded by the FMA units or by memory, whichever its FLOPs per\n"
    "byte put first against the two measurements above (the roofline), and\n"
    "gives its percentage of that bound: % peak of the FMA peak of all threads\n"
    "in use, % bw of the read bandwidth (decode rows).  fastattn is timed on\n"
    "every shape first and the reference afterwards, so the reference's BLAS\n"
    "threads, which keep spinning for a while after each call, never compete\n"
    "with fastattn's timed runs."
)
_REFERENCE_NOTES = (
    "numpy: the NumPy reference on the same float32 inputs.  max|err|: fastattn\n"
    "against the NumPy reference computed in float64."
)


def _bench_row(case: BenchCase, t_fast: float, ref: Optional[Tuple[float, float]],
               peak_all: float, bandwidth: float) -> List[str]:
    """One table row; ``peak_all`` in GFLOP/s (all threads), ``bandwidth`` in
    GB/s (as measured at the thread count in use)."""
    gflops = case.flops / t_fast / 1e9 if t_fast > 0 else float("inf")
    gbs = case.moved_bytes / t_fast / 1e9 if t_fast > 0 else float("inf")
    t_ref, err = (None, None) if ref is None else ref
    speedup = "-" if t_ref is None or t_fast <= 0 else f"{t_ref / t_fast:.1f}x"
    if case.memory_bound(peak_all, bandwidth):
        pct_peak, pct_bw = "-", f"{100 * gbs / bandwidth:.0f}%"
    else:
        pct_peak, pct_bw = f"{100 * gflops / peak_all:.0f}%", "-"
    return [
        case.label or case.name, str(case.B), str(case.H), str(case.kv_heads), str(case.Nq),
        str(case.Nk), str(case.D), "yes" if case.causal else "no",
        format_ms(t_fast), f"{gflops:.1f}", pct_peak, f"{gbs:.1f}", pct_bw,
        format_ms(t_ref), speedup, "-" if err is None else f"{err:.1e}",
    ]


def run_bench(cases: Sequence[BenchCase], repeat: int, reference: bool = True,
              out: Optional[TextIO] = None, bandwidth: Optional[float] = None) -> int:
    """Time fastattn (and the NumPy reference) on ``cases``; print a table.

    ``bandwidth`` (GB/s) is measured by ``_core.read_bandwidth()`` at the
    thread count in use unless given.

    fastattn runs on every case first, the reference after an idle pause
    and with its BLAS held to fastattn's thread count (when threadpoolctl is
    installed), so that no thread pool spins on the cores of another's timed
    runs.  Returns the exit code (0).
    """
    import fastattn
    import fastattn._core as _core

    out = sys.stdout if out is None else out
    threads = fastattn.get_num_threads()
    peak = float(_core.fma_peak())  # one core, float32, the ISA path in use
    bandwidth = float(_core.read_bandwidth()) if bandwidth is None else bandwidth
    print(_bench_header(repeat, threads, peak, bandwidth, reference), file=out)
    out.flush()

    fast = _time_fastattn(cases, repeat)
    refs: List[Optional[Tuple[float, float]]] = [None] * len(cases)
    if reference:
        time.sleep(SETTLE_SECONDS)
        refs = list(_time_reference(cases, [res for _, res in fast], repeat, threads))
    rows = [_bench_row(case, t, ref, peak * threads, bandwidth)
            for case, (t, _), ref in zip(cases, fast, refs)]
    print(_format_table(_BENCH_HEADERS, rows), file=out)
    print(_BENCH_NOTES, file=out)
    if reference:
        print(_REFERENCE_NOTES, file=out)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``fastattn bench``: the default or quick cases at the requested threads."""
    import fastattn

    if args.threads is not None:
        fastattn.set_num_threads(args.threads)
    cases = QUICK_CASES if args.quick else DEFAULT_CASES
    repeat = args.repeat if args.repeat is not None else (3 if args.quick else 7)
    return run_bench(cases, repeat, reference=not args.no_reference)


def _add_bench(sub: SubParsers) -> None:
    p = sub.add_parser(
        "bench", help="time fastattn against the NumPy reference on a few shapes",
        description="Time fastattn (float32) against the NumPy reference on a few "
                    "shapes and print a table: median time, GFLOP/s, speed-up and "
                    "maximum absolute error against a float64 reference.")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="number of threads for fastattn (default: current setting, "
                        "OMP_NUM_THREADS or all cores)")
    p.add_argument("--repeat", type=_positive_int, default=None, metavar="N",
                   help="timed runs per case after one warm-up; the median is "
                        "reported (default: 7, or 3 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="fewer and smaller shapes, fewer runs")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the NumPy reference (no speed-up or error columns)")
    p.set_defaults(func=cmd_bench)


# --------------------------------------------------------------------------
# demo (the logic lives in fastattn.demo)
# --------------------------------------------------------------------------

_DEMO_TEXT = "Life is short, eat dessert first"   # fastattn.demo.DEFAULT_TEXT


def cmd_demo(args: argparse.Namespace) -> int:
    """``fastattn demo``: write the attention heatmaps of a sentence.  Errors
    and warnings (e.g. labels no installed font can draw) are one line each."""
    import warnings

    from fastattn import demo

    error: Optional[BaseException] = None
    with warnings.catch_warnings(record=True) as caught:
        # the user's warnings (fonts, fallbacks), not third-party deprecations
        warnings.simplefilter("default", UserWarning)
        warnings.simplefilter("default", RuntimeWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            path = demo.main(args.text, args.out, causal=args.causal, heads=args.heads,
                             dim=args.dim, seed=args.seed)
        except (ValueError, ImportError, OSError, RuntimeError) as exc:
            error = exc
    for message in dict.fromkeys(str(w.message) for w in caught
                                 if issubclass(w.category, (UserWarning, RuntimeWarning))):
        print(f"{PROG} demo: warning: {message}", file=sys.stderr)
    if error is not None:
        print(f"{PROG} demo: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {os.path.abspath(path)}")
    return 0


def _add_demo(sub: SubParsers) -> None:
    from fastattn.demo import MAX_DIM, MAX_HEADS, MAX_WORDS

    p = sub.add_parser(
        "demo", help="draw the attention weights of a self-attention layer over a sentence",
        description="Run a MultiHeadAttention self-attention layer over TEXT (one token per "
                    "word, and per character in Chinese and Japanese) and write a heatmap "
                    "of each head's attention weights.  The embeddings (seeded by each "
                    "word's CRC-32) and the layer's weights are random: an illustration of "
                    "the computation, not a trained model.")
    p.add_argument("text", nargs="?", default=None, metavar="TEXT",
                   help=f"the sentence, at most {MAX_WORDS} words (default: {_DEMO_TEXT!r})")
    p.add_argument("--out", default="attention.png", metavar="PATH",
                   help="image to write, in an existing folder; the format follows the "
                        "extension (png, svg, pdf, jpg, ...; an unknown one is an error), "
                        "and a name without one gets .png added.  The file is replaced "
                        "only once the image is complete (default: attention.png)")
    p.add_argument("--causal", action="store_true",
                   help="causal attention: each word sees only itself and the words "
                        "before it (the hidden cells are drawn empty)")
    p.add_argument("--heads", type=_positive_int, default=4, metavar="N",
                   help=f"attention heads, one panel each, at most {MAX_HEADS} (default: 4)")
    p.add_argument("--dim", type=_positive_int, default=64, metavar="E",
                   help=f"embedding width, a multiple of --heads, at most {MAX_DIM} "
                        "(default: 64)")
    p.add_argument("--seed", type=_non_negative_int, default=0, metavar="S",
                   help="seed of the embeddings and weights, >= 0 (default: 0)")
    p.set_defaults(func=cmd_demo)


# --------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------

# One function per subcommand, in the order `fastattn --help` lists them.
def _add_embed(sub: "SubParsers") -> None:
    # the models subpackage is light to import; tokenizers, safetensors and
    # the model load only when the command runs
    from fastattn.models.embed import add_embed_parser
    add_embed_parser(sub)


SUBCOMMANDS: List[Callable[["SubParsers"], None]] = [
    _add_info,
    _add_bench,
    _add_demo,
    _add_embed,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``fastattn`` argument parser with every subcommand of ``SUBCOMMANDS``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fast fused self-attention on the CPU.",
    )
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {_package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]
           ) -> Tuple[Optional[argparse.Namespace], int]:
    """Parse ``argv``; on --help, --version or a usage error return the exit code."""
    try:
        return parser.parse_args(None if argv is None else list(argv)), 0
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return None, 0
        if isinstance(code, int):
            return None, code
        print(code, file=sys.stderr)
        return None, 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args, code = _parse(parser, argv)
    if args is None:
        return code
    func: Optional[Callable[[argparse.Namespace], Optional[int]]] = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    env_error = _environment_error()
    if env_error is not None and args.command != "info":   # info reports it, below
        print(f"{PROG}: error: {env_error}", file=sys.stderr)
        return 2
    try:
        code = int(func(args) or 0)
        if env_error is not None:
            print(f"{PROG}: error: {env_error}", file=sys.stderr)
            return 2
        return code
    except BrokenPipeError:  # e.g. `fastattn info | head -1`
        # Point stdout at /dev/null so the interpreter's final flush is quiet.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except Exception:
            pass
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
