"""What every fastattn benchmark shares: the case type, the FLOP count, the
timing loop and the BLAS-thread limiter.

``fastattn bench`` (cli.py), the pytest-benchmark suite in ``benchmarks/`` and
the report scripts ``benchmarks/bench_report.py`` and
``benchmarks/bench_variants.py`` all describe a shape with :class:`BenchCase`,
count FLOPs with :func:`attention_flops`, take their timings with
:func:`time_calls` and hold NumPy's BLAS to a thread count with
:func:`blas_limit`.  This module lives in the package so that the
installed console script can use it without a source checkout.

Importing it loads no third-party module: NumPy is imported when inputs are
made, threadpoolctl when a limit is asked for.
"""

from __future__ import annotations

import contextlib
import platform
import time
from typing import (TYPE_CHECKING, Any, Callable, ContextManager, Dict, List, Mapping,
                    NamedTuple, Optional, Tuple)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt

__all__ = [
    "BenchCase",
    "attention_flops",
    "visible_pairs",
    "format_ms",
    "time_calls",
    "blas_limit",
    "blas_limit_available",
    "cpu_model",
]

# Bytes per element of the benchmarks' float32 inputs.
_F32 = 4


def visible_pairs(nq: int, nk: int, causal: bool) -> int:
    """Number of (query, key) pairs that take part in one head's attention.

    Parameters
    ----------
    nq, nk : int
        Query and key counts.
    causal : bool
        Bottom-right causal: query ``i`` sees key ``j`` iff ``j <= i + nk - nq``.

    Returns
    -------
    int
        ``nq * nk`` without ``causal``; ``n (n + 1) / 2`` for ``nq == nk == n``.
    """
    if not causal:
        return nq * nk
    offset = nk - nq
    # Rows with i + offset + 1 <= 0 see nothing, rows past nk - offset see all.
    return sum(min(nk, max(0, i + offset + 1)) for i in range(nq))


def attention_flops(B: int, H: int, nq: int, nk: int, d: int, dv: Optional[int] = None,
                    causal: bool = False) -> int:
    """Floating-point operations of one attention forward pass.

    Only the two matrix products count: ``2 * D`` for a row of Q.K^T and
    ``2 * Dv`` for a row of P.V per visible (query, key) pair.  For
    ``D == Dv`` without a mask this is ``4 * B * H * Nq * Nk * D``; causal
    attention counts only the visible pairs (about half when ``Nq == Nk``).

    Parameters
    ----------
    B, H, nq, nk, d : int
        Batch, query heads, queries, keys and head dim.
    dv : int, optional
        Head dim of the values (default ``d``).
    causal : bool
        Count only the pairs a bottom-right causal mask keeps.

    Returns
    -------
    int
        The FLOP count.
    """
    dv = d if dv is None else dv
    return 2 * (d + dv) * B * H * visible_pairs(nq, nk, causal)


class BenchCase(NamedTuple):
    """One benchmark shape: q ``(B, H, Nq, D)``, k and v ``(B, Hkv, Nk, D)``.

    ``label`` is a short name ("batch", "decode gqa"); ``Hkv`` None means
    ``H`` (no grouped-query attention).  The inputs are float32.
    """

    B: int
    H: int
    Nq: int
    Nk: int
    D: int
    causal: bool = False
    Hkv: Optional[int] = None
    label: str = ""

    @property
    def kv_heads(self) -> int:
        """Heads of k and v."""
        return self.H if self.Hkv is None else self.Hkv

    @property
    def flops(self) -> int:
        """FLOPs of one call, see :func:`attention_flops`."""
        return attention_flops(self.B, self.H, self.Nq, self.Nk, self.D, causal=self.causal)

    @property
    def score_bytes(self) -> int:
        """Bytes of the float32 ``(B, H, Nq, Nk)`` score matrix a naive
        implementation materializes."""
        return self.B * self.H * self.Nq * self.Nk * _F32

    @property
    def kv_bytes(self) -> int:
        """Bytes of K and V (float32) that one call reads."""
        return 2 * self.B * self.kv_heads * self.Nk * self.D * _F32

    @property
    def moved_bytes(self) -> int:
        """Bytes one call must move at the least: K and V read, Q read and
        the output written (float32), each once."""
        return self.kv_bytes + 2 * self.B * self.H * self.Nq * self.D * _F32

    def memory_bound(self, peak_flops: float, bandwidth: float) -> bool:
        """Whether the case sits below the machine's balance point (the
        roofline): fewer FLOPs per byte moved than ``peak_flops`` (FLOP/s)
        per ``bandwidth`` (B/s) allows, so memory, not the FMA units, bounds
        it (single-token decode does, at about one FLOP per byte)."""
        return self.flops * bandwidth < peak_flops * self.moved_bytes

    def _shape_words(self) -> Tuple[str, ...]:
        n = (f"N{self.Nq}",) if self.Nq == self.Nk else (f"Nq{self.Nq}", f"Nk{self.Nk}")
        if self.Nq == 1:
            n = (f"Nk{self.Nk}",)
        kv = (f"Hkv{self.kv_heads}",) if self.kv_heads != self.H else ()
        return (f"B{self.B}", f"H{self.H}") + kv + n + (f"D{self.D}",)

    @property
    def name(self) -> str:
        """Readable name for tables, e.g. ``"batch B32 H12 N128 D32"`` or
        ``"B1 H8 N1024 D64 causal"``."""
        words = ((self.label,) if self.label else ()) + self._shape_words()
        return " ".join(words + (("causal",) if self.causal else ()))

    @property
    def id(self) -> str:
        """pytest parameter id, e.g. ``"batch-b32-h12-n128-d32"``."""
        words = [self.label.replace(" ", "-")] if self.label else []
        words += [w.lower() for w in self._shape_words()]
        if self.Nq == 1:  # keep the query count in the id: "nq1-nk8192"
            words.insert(len(words) - 2, "nq1")
        return "-".join(words + (["causal"] if self.causal else []))

    def make_inputs(self, seed: int = 0, dtype: "Optional[npt.DTypeLike]" = None
                    ) -> Tuple["np.ndarray[Any, Any]", ...]:
        """Standard-normal ``(q, k, v)`` of this shape from ``seed``.

        Parameters
        ----------
        seed : int
            Seed of ``numpy.random.default_rng``: the same seed gives the
            same arrays.
        dtype : dtype, optional
            Type of the arrays (default float32); drawn in float32 and cast.

        Returns
        -------
        tuple of ndarray
            ``q`` ``(B, H, Nq, D)``, ``k`` and ``v`` ``(B, Hkv, Nk, D)``.
        """
        import numpy as np

        rng = np.random.default_rng(seed)
        shapes = [(self.B, self.H, self.Nq, self.D), (self.B, self.kv_heads, self.Nk, self.D),
                  (self.B, self.kv_heads, self.Nk, self.D)]
        arrays = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
        if dtype is not None and np.dtype(dtype) != np.float32:
            arrays = [a.astype(dtype) for a in arrays]
        return tuple(arrays)


def format_ms(seconds: Optional[float], missing: str = "-") -> str:
    """A duration in milliseconds with 3 significant digits, or ``missing``
    for None."""
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


def time_calls(calls: Mapping[str, Callable[[], object]], rounds: int, *, warmup: int = 1,
               inner: Optional[Mapping[str, int]] = None, settle: float = 0.0,
               alternate: bool = False,
               context: Optional[Mapping[str, Callable[[], ContextManager[Any]]]] = None
               ) -> Dict[str, List[float]]:
    """Seconds per call of each of ``calls``: ``rounds`` samples each.

    Each call first runs ``warmup`` times (page faults, thread pools,
    first-call costs).  Then the calls take turns, A B C A B C ..., so the
    noise of a shared machine falls on all of them alike; with
    ``alternate`` every other round runs in reverse order, so that no call
    always follows the same one.  A sample times ``inner[name]`` calls in a
    row (default 1) and is divided by their number.  Before each sample the
    loop sleeps ``settle`` seconds, so that the worker threads of the
    previous call (OpenBLAS's spin for a while) are idle, and it enters
    ``context[name]()`` around the sample (e.g. :func:`blas_limit`).
    """
    def entered(name: str) -> ContextManager[Any]:
        make = None if context is None else context.get(name)
        return contextlib.nullcontext() if make is None else make()

    names = list(calls)
    for name in names:
        with entered(name):
            for _ in range(warmup):
                calls[name]()
    samples: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in (names[::-1] if alternate and r % 2 else names):
            n = 1 if inner is None else inner.get(name, 1)
            fn = calls[name]
            if settle:
                time.sleep(settle)
            with entered(name):
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                samples[name].append((time.perf_counter() - t0) / n)
    return samples


def blas_limit_available() -> bool:
    """Whether :func:`blas_limit` can limit anything (threadpoolctl is installed)."""
    try:
        import threadpoolctl  # type: ignore[import-untyped, unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def blas_limit(threads: int) -> ContextManager[Any]:
    """Context manager that holds NumPy's BLAS to ``threads`` threads.

    It uses threadpoolctl when it is installed and does nothing otherwise
    (check :func:`blas_limit_available`).  OpenBLAS's workers spin for a
    while after each call; limiting them to the thread count under test
    keeps them off the cores the next timed call needs.

    Parameters
    ----------
    threads : int
        BLAS thread count inside the ``with`` block.

    Returns
    -------
    context manager
    """
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return contextlib.nullcontext()
    limiter: ContextManager[Any] = threadpool_limits(limits=threads, user_api="blas")
    return limiter


def cpu_model() -> str:
    """The CPU's model name (``lscpu``'s), or the best guess the platform gives."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
