"""Attention forward-pass benchmarks: fastattn vs the NumPy reference vs PyTorch.

Run from the repository root::

    python -m pytest benchmarks/                      # full suite, a few minutes
    python -m pytest benchmarks/ -k "n1024"           # one size
    python -m pytest benchmarks/ --benchmark-disable  # run every case once, no timing
    python -m pytest benchmarks/ --benchmark-json=bench.json

Every case is run with 1 and 2 threads.  Results are grouped by case and thread
count, so each group of the pytest-benchmark table compares the
implementations on identical float32 inputs.  ``extra_info`` of each result
holds ``impl``, ``isa``, ``threads``, ``flops``, ``peak_gflops_per_core`` (the
float32 FMA peak of one core, measured once per session) and, when timing was
enabled, ``gflops`` (from the median time) and ``pct_of_peak``: ``gflops`` as a
percentage of ``peak_gflops_per_core * threads``.

FLOP count: ``2 * (D + Dv)`` per visible (query, key) pair, i.e.
``4 * B * H * Nq * Nk * D`` without a mask and about half of that for causal
attention with ``Nq == Nk`` (see ``fastattn._bench.attention_flops``).  The
cases are ``fastattn._bench.BenchCase`` shapes, the type ``fastattn bench``
and ``benchmarks/bench_report.py`` use too.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("pytest_benchmark", reason="the benchmarks need pytest-benchmark")
fastattn = pytest.importorskip("fastattn")

from fastattn import reference  # noqa: E402
from fastattn._bench import BenchCase, blas_limit, blas_limit_available  # noqa: E402


# Memory the NumPy reference may spend on one (B, H, Nq, Nk) score matrix.  It
# keeps a few arrays of that size alive at once (scores, exponentials,
# probabilities), so it is skipped above this.
REFERENCE_SCORE_LIMIT_BYTES = 2 * 1024**3


CASES = [
    BenchCase(1, 8, n, n, d, causal)
    for n in (512, 1024, 2048, 4096)
    for d in (64, 128)
    for causal in (False, True)
] + [
    BenchCase(32, 12, 128, 128, 32, label="batch"),
    BenchCase(1, 32, 1, 8192, 128, label="decode"),
]

THREADS = [1, 2]
IMPLS = ["fastattn", "numpy", "torch"]

# Rounds are chosen so that each timed benchmark does about this much work
# (clamped), which keeps the whole suite within a few minutes on 2 cores.
TARGET_FLOPS = {"fastattn": 2.0e10, "torch": 2.0e10, "numpy": 5.0e9}
MIN_ROUNDS = {"fastattn": 3, "torch": 3, "numpy": 2}
MAX_ROUNDS = 30


def _rounds(impl: str, case: BenchCase) -> int:
    r = int(TARGET_FLOPS[impl] // max(case.flops, 1))
    return max(MIN_ROUNDS[impl], min(MAX_ROUNDS, r))


def _prepare(impl: str, case: BenchCase, threads: int, q, k, v):
    """Return (callable, thread-count label) for one implementation, or skip."""
    if impl == "fastattn":
        fastattn.set_num_threads(threads)
        out = np.empty((case.B, case.H, case.Nq, case.D), dtype=q.dtype)

        def run():
            return fastattn.attention(q, k, v, causal=case.causal, out=out)

        return run, threads

    if impl == "numpy":
        if case.score_bytes > REFERENCE_SCORE_LIMIT_BYTES:
            pytest.skip(
                f"NumPy reference would materialize {case.score_bytes / 2**30:.1f} GiB "
                f"of scores (limit {REFERENCE_SCORE_LIMIT_BYTES / 2**30:.0f} GiB)"
            )
        limited = blas_limit_available()
        if not limited:
            if threads != max(THREADS):
                pytest.skip(
                    "threadpoolctl is not installed, so the NumPy reference's BLAS "
                    "thread count cannot be set: it runs once, at its default"
                )
            label = "blas-default"
        else:
            label = threads

        def run():
            with blas_limit(threads):
                return reference.attention(q, k, v, causal=case.causal)

        return run, label

    if impl == "torch":
        torch = pytest.importorskip(
            "torch", reason="torch is not installed (pip install '.[bench]')"
        )
        F = torch.nn.functional
        torch.set_num_threads(threads)
        tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))
        # torch's is_causal is top-left aligned; every causal case here has
        # Nq == Nk, where top-left and bottom-right are the same mask.
        assert not case.causal or case.Nq == case.Nk

        def run():
            with torch.no_grad():
                return F.scaled_dot_product_attention(tq, tk, tv, is_causal=case.causal)

        return run, threads

    raise AssertionError(f"unknown implementation {impl!r}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("threads", THREADS, ids=[f"t{t}" for t in THREADS])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_attention(benchmark, make_inputs, fma_peak_gflops, case, threads, impl):
    if threads > (os.cpu_count() or 1):
        pytest.skip(f"{threads} threads requested, {os.cpu_count()} CPUs available")

    q, k, v = make_inputs(case)

    torch_threads = None
    if impl == "torch":
        torch = pytest.importorskip(
            "torch", reason="torch is not installed (pip install '.[bench]')"
        )
        torch_threads = torch.get_num_threads()
    try:
        run, thread_label = _prepare(impl, case, threads, q, k, v)

        benchmark.group = f"{case.id} t{threads}"
        benchmark.extra_info.update(
            impl=impl,
            isa=fastattn.info().get("isa"),
            threads=thread_label,
            B=case.B, H=case.H, Nq=case.Nq, Nk=case.Nk, D=case.D,
            causal=case.causal,
            dtype="float32",
            flops=case.flops,
            peak_gflops_per_core=(None if fma_peak_gflops is None
                                  else round(fma_peak_gflops, 3)),
        )

        result = benchmark.pedantic(run, rounds=_rounds(impl, case), warmup_rounds=1,
                                    iterations=1)
    finally:
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)

    result = np.asarray(result)
    assert result.shape == (case.B, case.H, case.Nq, case.D)
    assert np.isfinite(result).all()

    stats = getattr(benchmark, "stats", None)
    median = getattr(getattr(stats, "stats", None), "median", None)
    if median:
        gflops = case.flops / median / 1e9
        benchmark.extra_info["gflops"] = round(gflops, 3)
        if fma_peak_gflops:
            # `threads` is the requested count; for the NumPy reference without
            # threadpoolctl (label "blas-default") that is the largest one
            benchmark.extra_info["pct_of_peak"] = round(
                100.0 * gflops / (fma_peak_gflops * threads), 2)
