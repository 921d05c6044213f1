"""Subnormal inputs: flushed to zero inside the kernels, never a slow path.

What the core promises (csrc/attention.c, the driver):

* Every thread that computes part of a call (the caller's thread and the
  OpenMP workers) flushes subnormal operands and results to zero while it
  works (x86 MXCSR DAZ|FTZ, aarch64 FPCR.FZ) and restores its own control
  bits before it returns.  So a float32, float64 or bfloat16 input whose
  magnitude is below the smallest normal number (``np.finfo(dtype).tiny``)
  counts as a zero of the same sign.  float16 inputs are not affected: their
  subnormals widen to normal float32 values.
* Results for normal inputs are bitwise those of gradual underflow
  (``FASTATTN_KEEP_SUBNORMALS=1``, read once at the first call) unless an
  intermediate value underflows.
* The caller's floating-point control state is the same after the call, in
  the calling thread and in the pool's worker threads.

The bitwise comparison needs the environment switch, so it runs in child
processes, one per ISA path (``FASTATTN_ISA``).  Timing is not asserted
anywhere here: ``benchmarks/test_bench_subnormal.py`` measures it.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import textwrap
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest

import fastattn
from fastattn import _core
from fastattn import reference
from support import ISA_NAMES

ISA_PATHS: List[str] = list(ISA_NAMES)  # the paths under test (support.isa)
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastattn.__file__)))

try:
    import ml_dtypes

    BF16: Optional[np.dtype] = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # bfloat16 cases are skipped with that reason
    BF16 = None

# (id, lead, nq, nk): the few-row (decode) kernel, the tile kernel, and a
# call long enough in keys for the split-KV merge.
SHAPES = [("decode", (2, 2), 1, 70), ("tile", (2, 2), 40, 70), ("split", (1, 1), 20, 1100)]


def _dtypes() -> List[Any]:
    bf16 = (pytest.param(BF16, id="bf16") if BF16 is not None else
            pytest.param(None, id="bf16", marks=pytest.mark.skip(
                reason="bfloat16 needs the optional ml_dtypes package")))
    return [pytest.param(np.dtype(np.float32), id="f32"),
            pytest.param(np.dtype(np.float64), id="f64"), bf16]


def _tiny(dtype: np.dtype) -> float:
    """Smallest normal magnitude of dtype (bfloat16 shares float32's)."""
    return float(np.finfo(np.float64 if dtype == np.float64 else np.float32).tiny)


def _subnormal_like(rng: np.random.Generator, shape: Tuple[int, ...],
                    dtype: np.dtype) -> np.ndarray:
    """Random nonzero subnormals of both signs, spread over the range."""
    tiny = _tiny(dtype)
    mag = tiny * rng.uniform(0.01, 0.99, size=shape)
    x: np.ndarray = (mag * rng.choice([-1.0, 1.0], size=shape)).astype(dtype)
    x64 = np.abs(x.astype(np.float64))
    assert ((x64 > 0) & (x64 < tiny)).all(), "test data not subnormal"
    return x


def _flush(x: np.ndarray) -> np.ndarray:
    """float64 copy with subnormals replaced by signed zeros."""
    x64 = x.astype(np.float64)
    small = np.abs(x64) < _tiny(x.dtype)
    return np.where(small, np.copysign(0.0, x64), x64)


def _normal(rng: np.random.Generator, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


@pytest.fixture(params=ISA_PATHS)
def isa(request: pytest.FixtureRequest) -> Any:
    before, threads = _core.get_isa(), fastattn.get_num_threads()
    _core.set_isa(request.param)
    yield request.param
    _core.set_isa(before)
    fastattn.set_num_threads(threads)


def _tolerance(dtype: np.dtype, ref: np.ndarray) -> float:
    """Output rounding of the dtype plus float32 (or float64) accumulation."""
    scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
    if dtype == np.float64:
        return 1e-12 * scale
    eps = 2.0 ** -8 if dtype == BF16 else 0.0
    return (eps + 2e-6) * scale


def _check_against_flushed(q: np.ndarray, k: np.ndarray, v: np.ndarray, **kw: Any) -> None:
    out, lse = fastattn.attention(q, k, v, return_lse=True, **kw)
    ref_out, ref_lse = reference.attention(_flush(q), _flush(k), _flush(v), return_lse=True, **kw)
    err = float(np.abs(out.astype(np.float64) - ref_out).max())
    assert err <= _tolerance(q.dtype, ref_out), f"output differs from the flushed reference by {err}"
    lse_err = float(np.abs(lse.astype(np.float64) - ref_lse).max())
    assert lse_err <= _tolerance(q.dtype, ref_lse), f"lse differs by {lse_err}"


@pytest.mark.parametrize("dtype", _dtypes())
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("threads", [1, 2])
def test_subnormal_v_gives_exact_zeros(isa: str, dtype: np.dtype, shape: Any, threads: int) -> None:
    # Every v entry subnormal: each product p * v is a product with zero, so
    # the output is exactly 0; the lse depends on q and k only.
    fastattn.set_num_threads(threads)
    rng = np.random.default_rng(11)
    _, lead, nq, nk = shape
    q, k = _normal(rng, lead + (nq, 32), dtype), _normal(rng, lead + (nk, 32), dtype)
    v = _subnormal_like(rng, lead + (nk, 24), dtype)
    for causal in (False, True):
        out, lse = fastattn.attention(q, k, v, causal=causal, return_lse=True)
        assert not np.any(out.astype(np.float64)), "subnormal v reached the output"
        _, ref_lse = reference.attention(_flush(q), _flush(k), _flush(v), causal=causal,
                                         return_lse=True)
        lse_err = float(np.abs(lse.astype(np.float64) - ref_lse).max())
        assert lse_err <= _tolerance(dtype, ref_lse)


@pytest.mark.parametrize("dtype", _dtypes())
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_subnormal_q_or_k_is_uniform_attention(isa: str, dtype: np.dtype, shape: Any) -> None:
    # Every q (or k) entry subnormal: every score is 0, so the output is the
    # mean of v over the keys a row sees and the lse is log(count).
    rng = np.random.default_rng(12)
    _, lead, nq, nk = shape
    q, k = _normal(rng, lead + (nq, 32), dtype), _normal(rng, lead + (nk, 32), dtype)
    v = _normal(rng, lead + (nk, 24), dtype)
    for which in ("q", "k"):
        qs = _subnormal_like(rng, q.shape, dtype) if which == "q" else q
        ks = _subnormal_like(rng, k.shape, dtype) if which == "k" else k
        out, lse = fastattn.attention(qs, ks, v, return_lse=True)
        mean = v.astype(np.float64).mean(axis=-2, keepdims=True)
        np.testing.assert_allclose(out.astype(np.float64), np.broadcast_to(mean, out.shape),
                                   rtol=0, atol=_tolerance(dtype, mean))
        np.testing.assert_allclose(lse, np.log(nk), rtol=1e-6)


@pytest.mark.parametrize("dtype", _dtypes())
@pytest.mark.parametrize("shape", SHAPES, ids=[s[0] for s in SHAPES])
def test_mixed_subnormal_entries_match_flushed_reference(isa: str, dtype: np.dtype,
                                                         shape: Any) -> None:
    rng = np.random.default_rng(13)
    _, lead, nq, nk = shape
    arrays = [_normal(rng, lead + (n, d), dtype) for n, d in ((nq, 32), (nk, 32), (nk, 24))]
    for a in arrays:  # about a third of the entries subnormal
        pick = rng.random(a.shape) < 0.3
        a[pick] = _subnormal_like(rng, a.shape, dtype)[pick]
    q, k, v = arrays
    _check_against_flushed(q, k, v)
    _check_against_flushed(q, k, v, causal=True, window=(5, 0))
    mask = rng.standard_normal(lead[:1] + (1, nq, nk)) > -0.5
    _check_against_flushed(q, k, v, mask=mask)


def test_attention_weights_with_subnormal_q(isa: str) -> None:
    rng = np.random.default_rng(14)
    q = _subnormal_like(rng, (2, 3, 5, 16), np.dtype(np.float32))
    k = _normal(rng, (2, 3, 9, 16), np.dtype(np.float32))
    w = fastattn.attention_weights(q, k)
    np.testing.assert_allclose(w, 1.0 / 9, rtol=1e-6)


def test_float16_subnormals_are_kept(isa: str) -> None:
    # float16 subnormals (6e-8 .. 6e-5) are normal float32 values: kept.
    rng = np.random.default_rng(15)
    q = rng.standard_normal((2, 2, 9, 16)).astype(np.float16)
    k = rng.standard_normal((2, 2, 30, 16)).astype(np.float16)
    v = (rng.uniform(0.1, 0.9, (2, 2, 30, 8)) * 2.0 ** -15).astype(np.float16)
    assert (np.abs(v) < np.finfo(np.float16).tiny).all() and np.all(v)
    out = fastattn.attention(q, k, v).astype(np.float64)
    ref = reference.attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64))
    # float16 output of values ~1e-5: its subnormal grid (6e-8) is the limit
    assert np.abs(out - ref).max() <= 2.0 ** -24 + 1e-3 * np.abs(ref).max()
    assert np.count_nonzero(out) == out.size


# ---------------------------------------------------------------------------
# The caller's floating-point control state, including the pool's threads
# ---------------------------------------------------------------------------

def fp_state() -> Dict[str, bool]:
    """Behavioural probes of the control word of the calling thread: gradual
    underflow for inputs (DAZ off) and results (FTZ off), round to nearest."""
    f32, f64 = np.float32, np.float64
    with np.errstate(all="ignore"):
        return {
            "f32_subnormal_input_kept": bool(f32(1e-39) * f32(1.0) == f32(1e-39)),
            "f32_subnormal_result_kept": bool(f32(1e-30) * f32(1e-9) != 0),
            "f32_array_input_kept": bool((np.full(64, 1e-39, f32) * f32(1) == f32(1e-39)).all()),
            "f64_subnormal_input_kept": bool(f64(1e-310) * 1.0 == f64(1e-310)),
            "f64_subnormal_result_kept": bool(f64(1e-300) * f64(1e-10) != 0),
            "round_ties_even": bool(f32(1) + f32(2.0 ** -24) == f32(1)),
            "round_to_nearest_up": bool(f32(1) + f32(0.75 * 2.0 ** -23) == f32(1 + 2.0 ** -23)),
        }


def _subnormal_call(threads: int) -> None:
    rng = np.random.default_rng(16)
    fastattn.set_num_threads(threads)
    q = _subnormal_like(rng, (2, 4, 64, 32), np.dtype(np.float32))
    k = _subnormal_like(rng, (2, 4, 256, 32), np.dtype(np.float32))
    v = _subnormal_like(rng, (2, 4, 256, 32), np.dtype(np.float32))
    fastattn.attention(q, k, v, return_lse=True)
    fastattn.attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64))


def test_control_state_of_calling_threads(isa: str) -> None:
    assert all(fp_state().values()), "the test process starts with a flushing control word"
    for threads in (1, 2):
        _subnormal_call(threads)
        bad = [name for name, ok in fp_state().items() if not ok]
        assert not bad, f"after a call at {threads} threads: {bad}"
    found: Dict[str, List[str]] = {}

    def in_thread() -> None:
        _subnormal_call(2)
        found["python thread"] = [name for name, ok in fp_state().items() if not ok]

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert found == {"python thread": []}


def _gomp() -> Optional[ctypes.CDLL]:
    """The OpenMP runtime fastattn's core is linked with, if it is libgomp."""
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "libgomp" in line}
    return ctypes.CDLL(sorted(paths)[0]) if paths else None


def _task_count() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_control_state_of_pool_workers(isa: str) -> None:
    # After calls with subnormal inputs on 2 threads, run NumPy probes inside
    # the same OpenMP pool (GOMP_parallel with a Python callback: each worker
    # takes the GIL in turn) and check that no worker kept the flushing mode.
    gomp = _gomp()
    if gomp is None or not _core.build_info().get("openmp"):
        pytest.skip("the core is not built with libgomp: no worker threads to probe")
    _subnormal_call(2)
    tasks_after_call = _task_count()
    results: Dict[int, List[str]] = {}
    lock = threading.Lock()
    callback_type = ctypes.CFUNCTYPE(None, ctypes.c_void_p)

    def probe(_: Any) -> None:
        bad = [name for name, ok in fp_state().items() if not ok]
        with lock:
            results[threading.get_native_id()] = bad

    callback = callback_type(probe)
    gomp.GOMP_parallel.argtypes = [callback_type, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    gomp.GOMP_parallel(callback, None, 2, 0)
    assert _task_count() == tasks_after_call, "the probe did not run in the pool's threads"
    assert len(results) == 2, f"expected 2 pool threads, probed {len(results)}"
    assert all(not bad for bad in results.values()), f"pool threads left flushing: {results}"


# ---------------------------------------------------------------------------
# Normal inputs: bitwise the same with and without flushing, on every path
# ---------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import fastattn
    from fastattn import _core

    try:
        import ml_dtypes
        dtypes = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]
    except ImportError:
        dtypes = [np.float32, np.float64, np.float16]
    rng = np.random.default_rng(21)
    results = {"isa": np.array(_core.get_isa())}
    for di, dtype in enumerate(dtypes):
        for lead, nq, nk in (((2, 4), 1, 300), ((2, 4), 70, 150), ((1, 1), 30, 2100)):
            q = rng.standard_normal(lead + (nq, 64)).astype(dtype)
            k = rng.standard_normal(lead + (nk, 64)).astype(dtype)
            v = rng.standard_normal(lead + (nk, 48)).astype(dtype)
            mask = rng.standard_normal((nq, nk)) > -1.0
            calls = {
                "plain": lambda: fastattn.attention(q, k, v, return_lse=True),
                "causal": lambda: fastattn.attention(q, k, v, causal=True, return_lse=True),
                "mask_softcap": lambda: fastattn.attention(q, k, v, mask=mask, softcap=5.0),
                "alibi_window": lambda: fastattn.attention(
                    q, k, v, window=(40, 0), alibi_slopes=[0.5] * lead[-1]),
                # scores far apart: most weights underflow to 0 (clamped exp2)
                "wide_scores": lambda: fastattn.attention(q * 8, k * 8, v, return_lse=True),
                "weights": lambda: fastattn.attention_weights(q, k),
            }
            for threads in (1, 2):
                fastattn.set_num_threads(threads)
                for name, fn in calls.items():
                    res = fn()
                    res = res if isinstance(res, tuple) else (res,)
                    for i, r in enumerate(res):
                        key = f"{di}-{nq}-{nk}-{name}-{threads}-{i}"
                        results[key] = np.ascontiguousarray(r).view(np.uint8)
    np.savez(sys.argv[1], **results)
""")


def _run_child(isa: str, keep: bool, path: str) -> Dict[str, np.ndarray]:
    env = dict(os.environ, FASTATTN_ISA=isa, PYTHONPATH=PKG_PARENT)
    env.pop("FASTATTN_KEEP_SUBNORMALS", None)
    if keep:
        env["FASTATTN_KEEP_SUBNORMALS"] = "1"
    proc = subprocess.run([sys.executable, "-c", CHILD, path], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


@pytest.mark.parametrize("isa_path", ISA_PATHS)
def test_normal_inputs_bitwise_unchanged(isa_path: str, tmp_path: Any) -> None:
    flushed = _run_child(isa_path, False, str(tmp_path / "flush.npz"))
    kept = _run_child(isa_path, True, str(tmp_path / "keep.npz"))
    assert str(flushed.pop("isa")) == isa_path == str(kept.pop("isa"))
    assert flushed.keys() == kept.keys() and len(flushed) > 100
    differ = [key for key in flushed if not np.array_equal(flushed[key], kept[key])]
    assert not differ, f"{len(differ)} results differ bitwise, e.g. {differ[:5]}"


def test_keep_switch_really_keeps_subnormals(tmp_path: Any) -> None:
    # The comparison above means something only if the switch changes
    # behaviour: with it, subnormal v gives subnormal (nonzero) outputs.
    script = textwrap.dedent("""
        import numpy as np, fastattn
        rng = np.random.default_rng(3)
        q = rng.standard_normal((1, 1, 4, 8)).astype(np.float32)
        v = (rng.uniform(0.5, 1.0, (1, 1, 6, 8)) * 1e-39).astype(np.float32)
        print(np.count_nonzero(fastattn.attention(q, q[:, :, :1].repeat(6, 2), v)))
    """)
    counts = []
    for keep in ("", "1"):
        env = dict(os.environ, PYTHONPATH=PKG_PARENT, FASTATTN_KEEP_SUBNORMALS=keep)
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        counts.append(int(proc.stdout.strip()))
    assert counts == [0, 32], f"nonzero outputs (flush, keep): {counts}"
