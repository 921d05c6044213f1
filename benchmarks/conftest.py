"""Shared setup for the fastattn benchmarks (run with ``python -m pytest benchmarks/``).

These files are not part of the default test run: the project's pytest
configuration collects ``tests/`` only.  They need pytest-benchmark; torch is
optional and its benchmarks are skipped when it is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest

fastattn = pytest.importorskip("fastattn")


def pytest_report_header(config):
    try:
        info = fastattn.info()
    except Exception as exc:  # pragma: no cover - broken build
        return f"fastattn: info() failed: {exc!r}"
    return (
        f"fastattn {info.get('version')}: isa={info.get('isa')} "
        f"available={info.get('isa_available')} openmp={info.get('openmp')} "
        f"threads={info.get('num_threads')}"
    )


@pytest.fixture(scope="session")
def fma_peak_gflops():
    """Float32 FMA peak of one core in GFLOP/s on the SIMD path in use.

    Measured once per session (about a second), before any benchmark runs, with
    ``fastattn._core.fma_peak()``.  None if the probe is unavailable.
    """
    try:
        from fastattn import _core

        return float(_core.fma_peak())
    except Exception:  # pragma: no cover - probe missing or failing
        return None


@pytest.fixture(autouse=True)
def _restore_fastattn_threads():
    """Each benchmark sets its own thread count; put the old one back after."""
    before = fastattn.get_num_threads()
    yield
    fastattn.set_num_threads(before)


_INPUT_CACHE: dict = {}


@pytest.fixture
def make_inputs():
    """Return cached float32 (q, k, v) of a ``fastattn._bench.BenchCase``;
    the same arrays serve every implementation."""

    def make(case, dtype=np.float32):
        key = (case.B, case.H, case.kv_heads, case.Nq, case.Nk, case.D, np.dtype(dtype).str)
        if key not in _INPUT_CACHE:
            # keep at most one shape resident: the large cases are ~100 MB each
            _INPUT_CACHE.clear()
            _INPUT_CACHE[key] = case.make_inputs(seed=1234, dtype=dtype)
        return _INPUT_CACHE[key]

    return make
