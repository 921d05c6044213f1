"""Command-line interface for fastattn.

Usage::

    fastattn info [--json]
    fastattn bench [--threads N] [--repeat N] [--quick] [--no-reference]
    fastattn demo [TEXT] [--out PATH] [--causal] [--heads N] [--dim E] [--seed S]
    fastattn --version

``python -m fastattn`` is equivalent to the ``fastattn`` console script.

Importing this module has no side effects: NumPy and the compiled core are
only loaded when a subcommand runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, List, NamedTuple, Optional, Sequence

__all__ = ["main", "build_parser", "BenchCase", "attention_flops", "format_ms"]

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


class BenchCase(NamedTuple):
    """One benchmark shape: q (B, H, Nq, D), k/v (B, Hkv, Nk, D)."""

    name: str
    B: int
    H: int
    Nq: int
    Nk: int
    D: int
    causal: bool = False
    Hkv: Optional[int] = None

    @property
    def kv_heads(self) -> int:
        return self.H if self.Hkv is None else self.Hkv


def visible_pairs(nq: int, nk: int, causal: bool) -> int:
    """Number of (query, key) pairs that take part in one head's attention.

    With ``causal`` the bottom-right convention is used: query ``i`` sees key
    ``j`` iff ``j <= i + nk - nq``.  For ``nq == nk`` this is ``n (n + 1) / 2``,
    i.e. about half of the full ``nq * nk``.
    """
    if not causal:
        return nq * nk
    offset = nk - nq
    total = 0
    # closed form would be shorter, but this is exact for every nq/nk and cheap
    for i in range(nq):
        total += min(nk, max(0, i + offset + 1))
    return total


def attention_flops(B: int, H: int, nq: int, nk: int, d: int, dv: Optional[int] = None,
                    causal: bool = False) -> int:
    """Floating-point operations of one attention forward pass.

    Counts the two matrix products only: ``2 * D`` for a row of Q.K^T and
    ``2 * Dv`` for a row of P.V per visible (query, key) pair.  For
    ``D == Dv`` and no mask this is the usual ``4 * B * H * Nq * Nk * D``;
    for causal attention only the visible pairs are counted (about half
    when ``Nq == Nk``).
    """
    dv = d if dv is None else dv
    return 2 * (d + dv) * B * H * visible_pairs(nq, nk, causal)


def _median_time(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def format_ms(seconds: Optional[float], missing: str = "-") -> str:
    """A duration in milliseconds with 3 significant digits (``missing``
    for None); shared by ``fastattn bench`` and tools/bench_report.py."""
    if seconds is None:
        return missing
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


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


# --------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------

_INFO_LABELS = [
    ("version", "version"),
    ("isa", "ISA in use"),
    ("isa_available", "ISA available"),
    ("num_threads", "threads"),
    ("openmp", "OpenMP"),
    ("compiler", "compiler"),
    ("build_flags", "build flags"),
    ("kernel_flags", "kernel flags"),
    ("numpy", "numpy"),
]
# Shown only when info() reports them.
_OPTIONAL_INFO_KEYS = {"kernel_flags"}


def _format_value(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if value else "-"
    if value is None or value == "":
        return "-"
    return str(value)


def cmd_info(args: argparse.Namespace) -> int:
    import fastattn

    if not args.json:
        fastattn.show_config()
        return 0
    data = dict(fastattn.info())
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0

    known = {key for key, _ in _INFO_LABELS}
    lines = []
    for key, label in _INFO_LABELS:
        if key == "version" or (key in _OPTIONAL_INFO_KEYS and key not in data):
            continue
        lines.append((label, data.get(key)))
    lines.extend((k.replace("_", " "), data[k]) for k in data if k not in known)
    width = max(len(label) for label, _ in lines)
    print(f"fastattn {data.get('version', _package_version())}")
    for label, value in lines:
        text = _format_value(value)
        if label == "kernel flags":
            # "scalar: ...; avx2: ...": one ISA per line
            text = ("\n" + " " * (width + 4)).join(part.strip() for part in text.split(";"))
        print(f"  {label + ':':<{width + 1}} {text}")
    return 0


# --------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------

DEFAULT_CASES: List[BenchCase] = [
    BenchCase("n512", 1, 8, 512, 512, 64),
    BenchCase("n1024", 1, 8, 1024, 1024, 64),
    BenchCase("n1024 causal", 1, 8, 1024, 1024, 64, causal=True),
    BenchCase("n2048", 1, 8, 2048, 2048, 64),
    BenchCase("n2048 causal", 1, 8, 2048, 2048, 64, causal=True),
    BenchCase("decode", 1, 32, 1, 4096, 128),
    BenchCase("decode gqa", 1, 32, 1, 4096, 128, Hkv=8),
    BenchCase("batch", 32, 12, 128, 128, 32),
]

QUICK_CASES: List[BenchCase] = [
    BenchCase("n512", 1, 8, 512, 512, 64),
    BenchCase("n1024 causal", 1, 8, 1024, 1024, 64, causal=True),
    BenchCase("decode", 1, 32, 1, 4096, 128),
    BenchCase("batch", 32, 12, 128, 128, 32),
]


def _make_inputs(case: BenchCase, rng):
    import numpy as np

    q = rng.standard_normal((case.B, case.H, case.Nq, case.D), dtype=np.float32)
    k = rng.standard_normal((case.B, case.kv_heads, case.Nk, case.D), dtype=np.float32)
    v = rng.standard_normal((case.B, case.kv_heads, case.Nk, case.D), dtype=np.float32)
    return q, k, v


def run_bench(cases: Sequence[BenchCase], repeat: int, reference: bool = True,
              out=None) -> int:
    import numpy as np

    import fastattn

    out = sys.stdout if out is None else out
    ref_attention = None
    if reference:
        from fastattn import reference as _reference

        ref_attention = _reference.attention

    info = fastattn.info()
    threads = fastattn.get_num_threads()
    from fastattn import _core

    peak = _core.fma_peak()  # one core, float32, the ISA path in use
    print(
        f"fastattn {info.get('version', _package_version())}  isa={info.get('isa', '?')}"
        f"  threads={threads}  openmp={_format_value(info.get('openmp'))}"
        f"  numpy={np.__version__}  dtype=float32  repeat={repeat} (median)"
        f"\nmeasured FMA peak: {peak:.1f} GFLOP/s per core ({peak * threads:.1f} for {threads})",
        file=out,
    )
    out.flush()

    headers = ["case", "B", "H", "Hkv", "Nq", "Nk", "D", "causal",
               "fastattn ms", "GFLOP/s", "% peak", "numpy ms", "speed-up", "max|err|"]
    rows: List[List[str]] = []
    rng = np.random.default_rng(0)
    for case in cases:
        q, k, v = _make_inputs(case, rng)
        res = np.empty_like(q)

        def run_fast(q=q, k=k, v=v, res=res, causal=case.causal):
            return fastattn.attention(q, k, v, causal=causal, out=res)

        t_fast = _median_time(run_fast, repeat)
        flops = attention_flops(case.B, case.H, case.Nq, case.Nk, case.D,
                                causal=case.causal)
        gflops = flops / t_fast / 1e9 if t_fast > 0 else float("inf")

        t_ref = None
        err_s = "-"
        speedup_s = "-"
        if ref_attention is not None:
            def run_ref(q=q, k=k, v=v, causal=case.causal):
                return ref_attention(q, k, v, causal=causal)

            # The reference is slow and only serves as a baseline: fewer runs.
            t_ref = _median_time(run_ref, max(1, min(repeat, 3)), warmup=0)
            speedup_s = f"{t_ref / t_fast:.1f}x" if t_fast > 0 else "-"
            expected = ref_attention(q.astype(np.float64), k.astype(np.float64),
                                     v.astype(np.float64), causal=case.causal)
            got = fastattn.attention(q, k, v, causal=case.causal)
            err = float(np.max(np.abs(got.astype(np.float64) - expected)))
            err_s = f"{err:.1e}"

        rows.append([
            case.name, str(case.B), str(case.H), str(case.kv_heads), str(case.Nq),
            str(case.Nk), str(case.D), "yes" if case.causal else "no",
            format_ms(t_fast), f"{gflops:.1f}", f"{100 * gflops / (peak * threads):.0f}%",
            format_ms(t_ref), speedup_s, err_s,
        ])

    print(_format_table(headers, rows), file=out)
    print(
        "\nGFLOP/s: 4*B*H*Nq*Nk*D, counting only the visible (query, key) pairs\n"
        "for causal (about half when Nq == Nk).  % peak: of the measured FMA peak\n"
        "of all threads in use.",
        file=out,
    )
    if ref_attention is not None:
        print(
            "numpy: the NumPy reference on the same float32 inputs.  max|err|: fastattn\n"
            "against the NumPy reference computed in float64.",
            file=out,
        )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import fastattn

    if args.threads is not None:
        fastattn.set_num_threads(args.threads)
    cases = QUICK_CASES if args.quick else DEFAULT_CASES
    repeat = args.repeat if args.repeat is not None else (3 if args.quick else 7)
    return run_bench(cases, repeat, reference=not args.no_reference)


# --------------------------------------------------------------------------
# demo (the logic lives in fastattn.demo)
# --------------------------------------------------------------------------

_DEMO_TEXT = "Life is short, eat dessert first"   # fastattn.demo.DEFAULT_TEXT


def cmd_demo(args: argparse.Namespace) -> int:
    from fastattn import demo

    try:
        path = demo.main(args.text, args.out, causal=args.causal, heads=args.heads,
                         dim=args.dim, seed=args.seed)
    except (ValueError, ImportError) as exc:
        print(f"{PROG} demo: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {os.path.abspath(path)}")
    return 0


# --------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fast fused self-attention on the CPU.",
    )
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {_package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p_info = sub.add_parser(
        "info", help="show version, SIMD path, threads and build details",
        description="Show version, SIMD path (in use and available), threads, "
                    "OpenMP, compiler, build flags and NumPy version.")
    p_info.add_argument("--json", action="store_true", help="print the details as JSON")
    p_info.set_defaults(func=cmd_info)

    p_bench = sub.add_parser(
        "bench", help="time fastattn against the NumPy reference on a few shapes",
        description="Time fastattn (float32) against the NumPy reference on a few "
                    "shapes and print a table: median time, GFLOP/s, speed-up and "
                    "maximum absolute error against a float64 reference.")
    p_bench.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                         help="number of threads for fastattn (default: current setting, "
                              "OMP_NUM_THREADS or all cores)")
    p_bench.add_argument("--repeat", type=_positive_int, default=None, metavar="N",
                         help="timed runs per case after one warm-up; the median is "
                              "reported (default: 7, or 3 with --quick)")
    p_bench.add_argument("--quick", action="store_true",
                         help="fewer and smaller shapes, fewer runs")
    p_bench.add_argument("--no-reference", action="store_true",
                         help="skip the NumPy reference (no speed-up or error columns)")
    p_bench.set_defaults(func=cmd_bench)

    p_demo = sub.add_parser(
        "demo", help="draw the attention weights of a self-attention layer over a sentence",
        description="Run a MultiHeadAttention self-attention layer over TEXT (one token per "
                    "word) and write a heatmap of each head's attention weights.  The "
                    "embeddings (seeded by each word's CRC-32) and the layer's weights are "
                    "random: an illustration of the computation, not a trained model.")
    p_demo.add_argument("text", nargs="?", default=None, metavar="TEXT",
                        help=f"the sentence (default: {_DEMO_TEXT!r})")
    p_demo.add_argument("--out", default="attention.png", metavar="PATH",
                        help="image to write; the format follows the extension "
                             "(default: attention.png)")
    p_demo.add_argument("--causal", action="store_true",
                        help="causal attention: each word sees only itself and the words "
                             "before it (the hidden cells are drawn empty)")
    p_demo.add_argument("--heads", type=_positive_int, default=4, metavar="N",
                        help="attention heads, one panel each (default: 4)")
    p_demo.add_argument("--dim", type=_positive_int, default=64, metavar="E",
                        help="embedding width, a multiple of --heads (default: 64)")
    p_demo.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of the embeddings and weights (default: 0)")
    p_demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version, usage errors
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1

    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
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
