"""Edge cases: rows that see no key, NaN propagation, zero-size dimensions;
numerical edges: huge and equal scores, denormals, infinities, NaN, very
long rows, and the caller's floating-point state.

Most tests run on every ISA path this machine supports (switched in process
with ``_core.set_isa``) and on both kernels of the core: the multi-row tile
kernel and the few-rows ("decode") kernel, which the core picks when a kv
head has at most 4 query rows (``H // Hkv * Nq <= 4``).  Results are checked
with the tolerance rule of support/compare.py against the float64 reference; where
that rule is loose (its floor grows with the largest score) a sharper
expectation is asserted as well.

What the reference does with infinities (``fastattn.reference``)
-------------------------------------------------------------------
* ``+inf`` or ``-inf`` in ``v`` at a key with positive weight: IEEE sums, so
  that output column is ``+inf`` / ``-inf`` in every row that sees the key,
  and ``NaN`` where ``+inf`` and ``-inf`` meet in one column.  The lse is
  unaffected.
* A score of ``+inf`` (``inf`` in ``k`` times a positive ``q`` component, or
  a ``+inf`` additive mask): the row max is ``+inf``, ``inf - inf`` gives
  ``NaN``: the whole output row and its lse are ``NaN``.
* A score of ``-inf``: that key gets weight 0, like a hidden key; a row
  whose every score is ``-inf`` is a row that sees no key (zeros, lse
  ``-inf``).
* ``inf * 0`` inside ``q . k`` is ``NaN``: the row is ``NaN``.
* Keys hidden by a bool mask, a ``-inf`` additive mask or the causal limit are replaced by ``-inf``
  before the softmax, so ``NaN`` / ``inf`` in ``q . k`` at a hidden key does
  not matter.  ``NaN`` / ``inf`` in ``v`` at a hidden key still reaches the
  rows of that head (``0 * NaN`` in ``p @ v``); fastattn does the same or
  skips the key depending on the kernel's blocking, so that case is left
  unchecked here.
"""

import json
import math
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import fastattn
from support import (ISA_NAMES, assert_matches, assert_result, check_attention, make_qkv,
                      max_abs_score, reference_results, to64)
from fastattn import _core
from support.child import child_env

ISA_PATHS = list(ISA_NAMES)  # the paths under test (support.isa)
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
# lead, nq: the decode kernel (1 row per kv head) and the tile kernel.
PATHS = {"decode": ((2,), 1), "tile": ((2,), 70)}
F32_MAX = float(np.finfo(np.float32).max)


def scaled_to(q, k, target):
    """The scale that makes max |scale * q.k| equal ``target``."""
    return target / max_abs_score(q, k, 1.0)


# ---------------------------------------------------------------------------
# Scores near float32 overflow
# ---------------------------------------------------------------------------

def assert_one_hot(q, k, v, out, lse, scale, causal=False):
    """Scores ~1e30 apart: every row's weight is exactly 1 on its best key,
    so out is that key's value row and lse its score (up to rounding)."""
    o64, l64, _, _ = reference_results(q, k, v, scale=scale, causal=causal)
    v_max = float(np.abs(v).max())
    np.testing.assert_allclose(out, o64, rtol=0, atol=4 * 2.0 ** -24 * v_max)
    fin = np.isfinite(l64)
    # the lse is that key's score: a float32 dot product, whose rounding
    # error is bounded by D * u * scale * sum|q_i k_i| (a score that cancels
    # has a larger relative error than rtol alone allows)
    terms = np.matmul(np.abs(to64(q)), np.swapaxes(np.abs(to64(k)), -1, -2)).max()
    atol = q.shape[-1] * 2.0 ** -24 * abs(scale) * float(terms)
    np.testing.assert_allclose(lse[fin], l64[fin], rtol=1e-5, atol=atol)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("target", [1e30, 1e37, -1e37, 2e38],
                         ids=["s1e30", "s1e37", "s-1e37", "s2e38"])
def test_huge_scores(rng, isa, path, target):
    # q, k ~ 1e15: q.k ~ 1e31 in float32.  target < 0 flips the sign of the
    # scale, so every row's best key is the one with the most negative q.k.
    if isa == "amx_emu":
        pytest.skip("amx_emu runs float32 on the avx512 kernels (bitwise the same "
                    "results): the avx512 case covers it")
    lead, nq = PATHS[path]
    q, k, v = make_qkv(rng, lead, nq, 150, 64)
    q *= np.float32(1e15)
    k *= np.float32(1e15)
    scale = scaled_to(q, k, target)
    for causal in (False, "top_left"):
        out, lse = check_attention(q, k, v, scale=scale, causal=causal)
        assert np.isfinite(out).all() and np.isfinite(lse).all()
        assert_one_hot(q, k, v, out, lse, scale, causal)


@pytest.mark.parametrize("path", list(PATHS))
def test_huge_scores_scale_one(rng, isa, path):
    # q, k ~ 1e15 with scale 1: |s| ~ 1e31.
    lead, nq = PATHS[path]
    q, k, v = make_qkv(rng, lead, nq, 150, 64)
    q *= np.float32(1e15)
    k *= np.float32(1e15)
    out, lse = check_attention(q, k, v, scale=1.0)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    assert_one_hot(q, k, v, out, lse, 1.0)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("sign", [1, -1], ids=["positive", "negative"])
def test_scores_close_to_float32_max(rng, isa, path, sign):
    # Every score is finite in float32 (|s| <= 3e38 < 3.4e38) and the plain
    # float32 computation (the naive reference) gets the right answer; so
    # must fastattn.  sign=+1: the best key of some rows scores ~3e38;
    # sign=-1: every score of every row is about -3e38 (a row that sees
    # keys, however small their scores).  A kernel that works in log2 units
    # (scores times log2(e)) overflows past FLT_MAX / log2(e) ~ 2.36e38
    # unless it guards that step.
    lead, nq = PATHS[path]
    _, _, v = make_qkv(rng, lead, nq, 150, 64)
    if sign > 0:
        q, k, _ = make_qkv(rng, lead, nq, 150, 64)
    else:
        q = -np.ones(lead + (nq, 64), np.float32)
        k = (1.0 + 0.1 * rng.random(lead + (150, 64))).astype(np.float32)
    scale = scaled_to(q, k, 3e38)
    out, lse = fastattn.attention(q, k, v, scale=scale, return_lse=True)
    # The rule's floor (4 u S V with S = 3e38) accepts anything finite here;
    # the scores are ~1e37 apart, so each row is its best key's value row.
    assert_one_hot(q, k, v, out, lse, scale)
    assert_result(q, k, v, out, lse, scale=scale)


# ---------------------------------------------------------------------------
# All-equal scores
# ---------------------------------------------------------------------------

def prefix_means(v, seen):
    """Mean of the first seen[i] value rows, for every row i."""
    c = np.cumsum(to64(v), axis=-2)
    return c[..., seen - 1, :] / seen[:, None]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("how", ["q_zero", "scale_zero", "equal_keys", "equal_huge_keys"])
def test_all_equal_scores(rng, isa, dtype, path, how):
    # Every key of a row has the same score s: the weights are uniform, the
    # output is the mean of the visible value rows and lse = s + log(count).
    # equal_huge_keys: entries are small integers times 2**48, so every
    # q.k (~1e31) is exact in any summation order and the scores of a row
    # are exactly equal although huge.
    lead, nq = PATHS[path]
    nk, d = 200, 32
    q, k, v = make_qkv(rng, lead, nq, nk, d, dtype=dtype)
    scale = 1 / np.sqrt(d)
    kw = {}
    if how == "q_zero":
        q[...] = 0
    elif how == "scale_zero":
        kw["scale"] = scale = 0.0
    else:
        if how == "equal_huge_keys":
            q = (rng.integers(-4, 5, q.shape) * 2.0 ** 48).astype(dtype)
            k = (rng.integers(-4, 5, k.shape) * 2.0 ** 48).astype(dtype)
            kw["scale"] = scale = 1.0
        k[...] = k[..., :1, :]
    s = scale * np.einsum("...id,...d->...i", to64(q), to64(k)[..., 0, :])
    u = 2.0 ** -24 if dtype == np.float32 else 1e-13
    s_err = 4 * u * d * abs(scale) * float(np.abs(q).max()) * float(np.abs(k).max())
    for causal in (False, "top_left"):
        out, lse = check_attention(q, k, v, causal=causal, **kw)
        seen = np.arange(1, nq + 1) if causal else np.full(nq, nk)
        rtol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(out, prefix_means(v, seen), rtol=rtol,
                                   atol=rtol * float(np.abs(v).max()))
        np.testing.assert_allclose(lse, s + np.log(seen), rtol=rtol, atol=rtol + s_err)


# ---------------------------------------------------------------------------
# Denormal inputs
# ---------------------------------------------------------------------------

DENORMAL = {np.float32: 1e-40, np.float64: 1e-310}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("which", ["qkv", "qk", "k", "v"])
def test_denormal_inputs(rng, isa, dtype, path, which):
    # which: the arrays scaled into the subnormal range (|x| ~ 1e-40 for
    # float32, ~1e-310 for float64); the others stay ~1.
    lead, nq = PATHS[path]
    q, k, v = make_qkv(rng, lead, nq, 150, 64, dtype=dtype)
    tiny = dtype(DENORMAL[dtype])
    arrays = dict(q=q, k=k, v=v)
    for name in which:
        arrays[name] = arrays[name] * tiny
    q, k, v = arrays["q"], arrays["k"], arrays["v"]
    assert np.abs(arrays[which[0]]).max() < np.finfo(dtype).tiny  # really subnormal
    for causal in (False, "top_left"):
        out, lse = check_attention(q, k, v, causal=causal)
        if "v" in which:
            # The rule's floor (1e-6 absolute) says nothing at this size.
            # Subnormal inputs count as zero inside the kernels (flushed, so
            # that they never take the slow microcode path), hence every
            # product with v is zero: see tests/robustness/test_subnormal.py.
            assert not np.any(out), "subnormal v was not flushed"


def test_denormal_speed(capsys, record_property):
    # Timing is recorded, not asserted (a loaded machine distorts it); what
    # is asserted is the caller's FP state (tests below).  One thread;
    # normal and subnormal calls alternate and the best of several runs of
    # each is kept.
    rng = np.random.default_rng(7)
    q, k, v = make_qkv(rng, (4,), 256, 512, 64)
    tiny = np.float32(1e-40)
    variants = {"normal": (q, k, v), "qkv": (q * tiny, k * tiny, v * tiny),
                "v": (q, k, v * tiny), "k": (q, k * tiny, v)}
    before_isa, before_threads = _core.get_isa(), fastattn.get_num_threads()
    lines = []
    try:
        fastattn.set_num_threads(1)
        for name in ISA_PATHS:
            _core.set_isa(name)
            best = dict.fromkeys(variants, float("inf"))
            for _ in range(3 if name == "scalar" else 15):
                for label, args in variants.items():
                    t = time.perf_counter()
                    fastattn.attention(*args)
                    best[label] = min(best[label], time.perf_counter() - t)
            ratios = {lb: best[lb] / best["normal"] for lb in variants if lb != "normal"}
            for lb, r in ratios.items():
                record_property(f"denormal_slowdown_{name}_{lb}", round(r, 3))
            lines.append(f"{name}: normal {best['normal'] * 1e3:.2f} ms, subnormal/normal "
                         + ", ".join(f"{lb} {r:.2f}x" for lb, r in ratios.items()))
    finally:
        _core.set_isa(before_isa)
        fastattn.set_num_threads(before_threads)
    with capsys.disabled():
        print("\n[denormal timing, (4, 256|512, 64) float32, 1 thread] " + "; ".join(lines))


# ---------------------------------------------------------------------------
# The caller's floating-point state
# ---------------------------------------------------------------------------

FP_STATE = textwrap.dedent("""
    import numpy as np

    def fp_state():
        '''Behavioural probes of the x86 MXCSR (or any FPU control word):
        DAZ flushes subnormal inputs, FTZ subnormal results; the rounding
        mode must be to nearest.  Scalars and arrays (NumPy's SIMD loops).'''
        f32, f64 = np.float32, np.float64
        half_ulp = f32(0.75 * 2.0 ** -23)
        with np.errstate(all="ignore"):
            return {
                "f32_subnormal_input_kept": bool(f32(1e-39) * f32(1.0) == f32(1e-39)),
                "f32_subnormal_result_kept": bool(f32(1e-30) * f32(1e-9) != 0),
                "f32_array_subnormal_input_kept": bool(
                    (np.full(64, 1e-39, f32) * f32(1.0) == f32(1e-39)).all()),
                "f32_array_subnormal_result_kept": bool(
                    (np.full(64, 1e-30, f32) * f32(1e-9) != 0).all()),
                "f64_subnormal_input_kept": bool(f64(1e-310) * 1.0 == f64(1e-310)),
                "f64_subnormal_result_kept": bool(f64(1e-300) * f64(1e-10) != 0),
                "smallest_subnormal_kept": bool(
                    np.finfo(f32).smallest_subnormal * f32(1) > 0),
                "round_to_nearest_up": bool(f32(1) + half_ulp == f32(1 + 2.0 ** -23)),
                "round_to_nearest_down": bool(-f32(1) - half_ulp == -f32(1 + 2.0 ** -23)),
                "round_ties_even": bool(f32(1) + f32(2.0 ** -24) == f32(1)),
            }
""")
_ns = {}
exec(FP_STATE, _ns)
fp_state = _ns["fp_state"]

FP_SCRIPT = FP_STATE + textwrap.dedent("""
    import json, threading
    bad = {}

    def check(when):
        s = fp_state()
        if not all(s.values()):
            bad[when] = [k for k, ok in s.items() if not ok]

    check("before importing fastattn")
    import fastattn
    from fastattn import _core
    check("after importing fastattn")

    rng = np.random.default_rng(3)
    def calls():
        for dtype, tiny in ((np.float32, 1e-40), (np.float64, 1e-310)):
            for lead, nq in (((2,), 1), ((2,), 70)):
                q = rng.standard_normal(lead + (nq, 64)).astype(dtype)
                k = rng.standard_normal(lead + (300, 64)).astype(dtype)
                v = rng.standard_normal(lead + (300, 64)).astype(dtype)
                yield "normal", lambda: fastattn.attention(q, k, v, causal=True)
                yield "subnormal", lambda: fastattn.attention(q * tiny, k * tiny, v * tiny,
                                                              return_lse=True)
                kn = k.copy(); kn[..., 5, 0] = np.inf; kn[..., 9, 1] = np.nan
                yield "inf_nan", lambda: fastattn.attention(q, kn, v)
                yield "huge", lambda: fastattn.attention(q * dtype(1e15), k * dtype(1e15), v,
                                                         scale=1.0)

    for isa in _core.isa_available():
        _core.set_isa(isa)
        for threads in (1, 2):
            fastattn.set_num_threads(threads)
            for label, fn in calls():
                fn()
                check(f"{isa}, {threads} threads, after a {label} call")
            try:
                fastattn.attention(np.zeros((2, 2), np.float32), None, None)
            except TypeError:
                pass
            check(f"{isa}, {threads} threads, after a failed call")

    def in_thread():
        for label, fn in calls():
            fn()
        check("in a Python thread, after its calls")
    t = threading.Thread(target=in_thread)
    t.start(); t.join()
    check("in the main thread, after calls in another thread")
    print("@@" + json.dumps(bad))
""")


def test_fp_state_unchanged_fresh_interpreter():
    # FTZ/DAZ could be switched on by loading the library (a -ffast-math
    # build links crtfastmath.o, which sets them at load time) or by a call
    # that sets them for speed and does not restore them; the rounding mode
    # likewise.  Probed with NumPy arithmetic before the import, after it,
    # and after calls on every ISA path at 1 and 2 threads.
    r = subprocess.run([sys.executable, "-c", FP_SCRIPT], capture_output=True, text=True,
                       env=child_env(), timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("@@")][-1]
    bad = json.loads(line[2:])
    if "before importing fastattn" in bad:
        pytest.skip(f"this interpreter starts with a non-default FP state: {bad}")
    assert not bad, f"the floating-point state changed: {bad}"


@pytest.mark.parametrize("threads", [1, 2])
def test_fp_state_unchanged_after_calls(rng, isa, threads):
    before_threads = fastattn.get_num_threads()
    before = fp_state()
    fastattn.set_num_threads(threads)
    try:
        for lead, nq in PATHS.values():
            q, k, v = make_qkv(rng, lead, nq, 300, 64)
            tiny = np.float32(1e-40)
            fastattn.attention(q * tiny, k * tiny, v * tiny, causal=True)
            fastattn.attention(q, k, v * tiny, return_lse=True)
            assert fp_state() == before
    finally:
        fastattn.set_num_threads(before_threads)


# ---------------------------------------------------------------------------
# Infinities in keys and values
# ---------------------------------------------------------------------------

def _inf_cases(q, k, v, nk):
    """name -> (q, k, v, kw, expect) where expect(out, lse) documents the
    reference's answer beyond matching it."""
    j1, j2, c1, c2 = 3, nk - 2, 1, 5
    qp = np.abs(q) + q.dtype.type(0.01)       # positive components
    cases = {}

    def put(a, idx, val):
        a = a.copy()
        a[idx] = val
        return a

    def col(c, val):
        return lambda o, l: (np.all(o[..., c] == val) and np.isfinite(np.delete(o, c, -1)).all()
                             and np.isfinite(l).all())

    cases["v_plus_inf"] = (q, k, put(v, (..., j1, c1), np.inf), {}, col(c1, np.inf))
    cases["v_minus_inf"] = (q, k, put(v, (..., j2, c1), -np.inf), {}, col(c1, -np.inf))
    cases["v_plus_and_minus_inf_one_column"] = (
        q, k, put(put(v, (..., j1, c1), np.inf), (..., j2, c1), -np.inf), {},
        lambda o, l: np.isnan(o[..., c1]).all() and np.isfinite(np.delete(o, c1, -1)).all())
    cases["v_inf_two_columns"] = (
        q, k, put(put(v, (..., j1, c1), np.inf), (..., j1, c2), -np.inf), {},
        lambda o, l: (o[..., c1] == np.inf).all() and (o[..., c2] == -np.inf).all())
    cases["k_plus_inf_score"] = (
        qp, put(k, (..., j1, 0), np.inf), v, {},
        lambda o, l: np.isnan(o).all() and np.isnan(l).all())
    cases["k_minus_inf_score"] = (
        qp, put(k, (..., j1, 0), -np.inf), v, {},
        lambda o, l: np.isfinite(o).all() and np.isfinite(l).all())
    cases["k_all_minus_inf"] = (
        qp, np.full_like(k, -np.inf), v, {},
        lambda o, l: (o == 0).all() and (l == -np.inf).all())
    cases["k_inf_times_zero"] = (
        put(qp, (..., 0), 0), put(k, (..., j1, 0), np.inf), v, {},
        lambda o, l: np.isnan(o).all() and np.isnan(l).all())
    cases["k_plus_inf_score_causal"] = (
        qp, put(k, (..., j1, 0), np.inf), v, dict(causal="top_left"),
        lambda o, l: (np.isnan(o[..., j1:, :]).all() and np.isfinite(o[..., :j1, :]).all()))
    cases["mask_plus_inf"] = (
        q, k, v, dict(mask=put(np.zeros(nk, q.dtype), j1, np.inf)),
        lambda o, l: np.isnan(o).all() and np.isnan(l).all())
    # An additive -inf hides its key like a False in a bool mask, so an
    # inf (or NaN) score there does not reach the row.
    cases["mask_minus_inf_on_inf_score"] = (
        qp, put(k, (..., j1, 0), np.inf), v,
        dict(mask=put(np.zeros(nk, q.dtype), j1, -np.inf)),
        lambda o, l: np.isfinite(o).all() and np.isfinite(l).all())
    cases["only_visible_key_scores_minus_inf"] = (
        qp, put(k, (..., j1, 0), -np.inf), v,
        dict(mask=put(np.full(nk, -np.inf, q.dtype), j1, 0)),
        lambda o, l: (o == 0).all() and (l == -np.inf).all())
    return cases


INF_CASES = list(_inf_cases(*make_qkv(np.random.default_rng(0), (), 2, 8, 8), 8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("case", INF_CASES)
def test_infinities_match_reference(rng, isa, dtype, path, case):
    lead, nq = PATHS[path]
    nk = 150
    q, k, v = make_qkv(rng, lead, nq, nk, 8, dtype=dtype)
    q *= dtype(0.1)  # every key keeps a weight far from 0 (and from underflow)
    q, k, v, kw, expect = _inf_cases(q, k, v, nk)[case]
    with np.errstate(all="ignore"):
        out, lse = check_attention(q, k, v, **kw)  # NaN/inf positions and values
        assert expect(out, lse), f"{case}: the documented pattern does not hold"


# ---------------------------------------------------------------------------
# NaN at visible positions reaches exactly the rows it touches
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", ["decode", "tile", "split"])
@pytest.mark.parametrize("where", ["q", "k", "k_causal", "v", "v_causal"])
def test_nan_reaches_exactly_the_rows_it_touches(rng, isa, dtype, path, where):
    # (B, H, Hkv) = (2, 4, 2): query heads 2 and 3 read kv head 1.
    nq, nk = {"decode": (1, 150), "tile": (70, 150), "split": (1, 3000)}[path]
    q, k, v = make_qkv(rng, (2, 4), nq, nk, 16, hkv=2, dtype=dtype)
    b, hq, hk, i, j, c = 1, 2, 1, nq - 1, 37, 4
    # top_left: row r sees keys 0..r, so rows 37.. see key j (tile) and the
    # single row of decode / split sees only key 0, not key j.
    causal = "top_left" if where.endswith("causal") else False
    # rows of (b, query heads of kv head hk) that see key j
    sees = np.arange(nq) >= j if causal else np.ones(nq, bool)
    expect = np.zeros((2, 4, nq, 16), bool)   # NaN entries of out
    expect_lse = np.zeros((2, 4, nq), bool)
    if where == "q":
        q[b, hq, i, c] = np.nan
        expect[b, hq, i, :] = True
        expect_lse[b, hq, i] = True
    elif where.startswith("k"):
        k[b, hk, j, c] = np.nan
        expect[b, 2:4, sees, :] = True
        expect_lse[b, 2:4, sees] = True
    else:
        v[b, hk, j, c] = np.nan
        expect[b, 2:4, sees, c] = True
    out, lse = fastattn.attention(q, k, v, causal=causal, return_lse=True)
    if where == "v_causal":
        # Rows that do not see key j: 0 * NaN in the reference; not checked.
        unchecked = np.zeros_like(expect)
        unchecked[b, 2:4, ~sees, c] = True
        got = np.isnan(out) & ~unchecked
    else:
        got = np.isnan(out)
    assert np.array_equal(got, expect), (
        f"NaN in {where}: NaN output entries {np.argwhere(got != expect)[:5].tolist()} "
        "differ from the rows/columns the NaN reaches")
    assert np.array_equal(np.isnan(lse), expect_lse)
    assert np.isfinite(out[~expect & ~np.isnan(out)]).all()
    if where != "v_causal":
        assert_result(q, k, v, out, lse, causal=causal)


# ---------------------------------------------------------------------------
# NaN / inf at keys a bool mask hides
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("what", ["k_nan", "k_inf", "q_nan_row_sees_nothing"])
def test_bool_mask_hides_nonfinite_keys(rng, isa, path, what):
    # A bool mask hides keys whatever their content (padding keys are often
    # garbage): the reference replaces their scores by -inf before the
    # softmax, and a row that sees no key is exact zeros with lse -inf.
    lead, nq = PATHS[path]
    nk = 40
    q, k, v = make_qkv(rng, lead, nq, nk, 8)
    mask = np.ones((nq, nk), bool)
    if what == "q_nan_row_sees_nothing":
        q[..., 0, 3] = np.nan
        mask[0, :] = False
    else:
        q = np.abs(q)
        k[..., 7, :] = np.nan if what == "k_nan" else np.inf
        mask[:, 7] = False
    out, lse = check_attention(q, k, v, mask=mask)
    if what == "q_nan_row_sees_nothing":
        assert (out[..., 0, :] == 0).all() and (lse[..., 0] == -np.inf).all()
        assert np.isnan(out[..., 1:, :]).sum() == 0
    else:
        assert np.isfinite(out).all() and np.isfinite(lse).all()


# ---------------------------------------------------------------------------
# A very long row
# ---------------------------------------------------------------------------

def _chunked_reference64(q, k, v, scale, chunk=1 << 17):
    """float64 attention of one query row over many keys, without float64
    copies of k and v: (out, lse, max |score|)."""
    q64 = q.astype(np.float64)[0]
    s = np.concatenate([k[i:i + chunk].astype(np.float64) @ q64 * scale
                        for i in range(0, len(k), chunk)])
    m = s.max()
    w = np.exp(s - m)
    total = w.sum()
    acc = sum(w[i:i + chunk] @ v[i:i + chunk].astype(np.float64)
              for i in range(0, len(k), chunk))
    return (acc / total)[None], np.array([m + np.log(total)]), float(np.abs(s).max())


@pytest.fixture(scope="module")
def million_keys():
    rng = np.random.default_rng(11)
    nk = 1_000_000
    return (rng.standard_normal((1, 64), dtype=np.float32),
            rng.standard_normal((nk, 64), dtype=np.float32),
            rng.standard_normal((nk, 64), dtype=np.float32))


@pytest.mark.parametrize("scale", [None, 1.0], ids=["default_scale", "scale_1"])
def test_one_query_a_million_keys(million_keys, scale):
    # Nq = 1, Nk = 1,000,000, D = Dv = 64 in float32 (256 MB each for k and
    # v): one row summed over a million keys (split in chunks across work
    # items, merged by their lse) still meets the rule against the float64
    # reference, computed chunk-wise in float64.  scale 1 concentrates the
    # weights (scores up to ~40).
    q, k, v = million_keys
    nk = len(k)
    out, lse = fastattn.attention(q, k, v, scale=scale, return_lse=True)
    assert np.isfinite(out).all() and np.isfinite(lse).all()
    o64, l64, s_max = _chunked_reference64(q, k, v, 0.125 if scale is None else scale)
    naive_out, naive_lse = fastattn.reference.attention(q, k, v, scale=scale, return_lse=True)
    v_max = float(np.abs(v).max())
    assert_matches("out", out, o64, naive_out, np.float32, nk, s_max * v_max)
    assert_matches("lse", lse, l64, naive_lse, np.float32, nk, s_max)


# ---------------------------------------------------------------------------
# Edge cases of the contract (any ISA path)
# ---------------------------------------------------------------------------

def assert_empty_rows(out, lse, empty):
    """Rows flagged in ``empty`` are exact zeros with lse -inf; no NaN anywhere."""
    assert empty.any(), "test setup: expected some rows with no visible key"
    assert not np.isnan(out).any(), "NaN in the output"
    assert not np.isnan(lse).any(), "NaN in the lse"
    assert np.all(out[empty] == 0.0), "rows that see no key are not all zeros"
    assert np.all(lse[empty] == -np.inf), "rows that see no key do not have lse -inf"
    assert np.all(np.isfinite(lse[~empty])), "rows that see keys have a non-finite lse"


# ---------------------------------------------------------------------------
# Rows that see no key
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["bool", "add32", "add64"])
def test_fully_masked_rows(rng, dtype, kind):
    nq, nk = 70, 150
    q, k, v = make_qkv(rng, (2, 2), nq, nk, 16, dtype=dtype)
    visible = rng.random((nq, nk)) < 0.5
    empty_rows = np.array([0, 1, 31, 63, 64, 69])
    visible[empty_rows] = False
    mask = visible if kind == "bool" else np.where(
        visible, 0.0, -np.inf).astype(np.float32 if kind == "add32" else np.float64)
    out, lse = check_attention(q, k, v, mask=mask)
    empty = np.zeros((2, 2, nq), bool)
    empty[..., empty_rows] = True
    assert_empty_rows(out, lse, empty)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_row_masked(rng, dtype):
    q, k, v = make_qkv(rng, (2,), 33, 70, 8, dtype=dtype)
    out, lse = fastattn.attention(q, k, v, mask=np.zeros((33, 70), bool), return_lse=True)
    assert out.shape == (2, 33, 8)
    assert np.all(out == 0.0) and np.all(lse == -np.inf)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_row_minus_inf_additive(rng, dtype):
    q, k, v = make_qkv(rng, (), 17, 9, 8, dtype=dtype)
    mask = np.full((9,), -np.inf, dtype=dtype)
    out, lse = fastattn.attention(q, k, v, mask=mask, return_lse=True)
    assert np.all(out == 0.0) and np.all(lse == -np.inf)


@pytest.mark.parametrize("nq,nk", [(10, 3), (70, 5), (130, 65), (3, 1)],
                         ids=["nq10-nk3", "nq70-nk5", "nq130-nk65", "nq3-nk1"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bottom_right_more_queries_than_keys(rng, nq, nk, dtype):
    # Query i sees key j iff j <= i + nk - nq: the first nq - nk rows see nothing.
    q, k, v = make_qkv(rng, (2, 3), nq, nk, 16, dtype=dtype)
    out, lse = check_attention(q, k, v, causal=True)
    empty = np.zeros((2, 3, nq), bool)
    empty[..., :nq - nk] = True
    assert_empty_rows(out, lse, empty)


def test_causal_and_mask_leave_nothing(rng):
    # top_left: row i sees keys 0..i; the mask hides exactly those for
    # even rows, so even rows see nothing.
    nq, nk = 40, 40
    q, k, v = make_qkv(rng, (2,), nq, nk, 8)
    mask = np.ones((nq, nk), bool)
    even = np.arange(nq) % 2 == 0
    mask[even] = ~np.tri(nq, nk, dtype=bool)[even]
    out, lse = check_attention(q, k, v, mask=mask, causal="top_left")
    assert_empty_rows(out, lse, np.broadcast_to(even, (2, nq)))


def test_empty_rows_with_gqa_and_lse(rng):
    q, k, v = make_qkv(rng, (2, 8), 20, 30, 8, hkv=2)
    mask = np.ones((1, 8, 20, 30), bool)
    mask[0, 3, 5] = False          # head 3, row 5 sees nothing
    mask[0, 6, :, :] = False       # head 6 sees nothing at all
    out, lse = check_attention(q, k, v, mask=mask)
    empty = np.zeros((2, 8, 20), bool)
    empty[:, 3, 5] = True
    empty[:, 6] = True
    assert_empty_rows(out, lse, empty)


# ---------------------------------------------------------------------------
# NaN propagation
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("row", [0, 40, 99])
def test_nan_in_query_row(rng, dtype, row):
    q, k, v = make_qkv(rng, (2,), 100, 70, 16, dtype=dtype)
    q[1, row, 3] = np.nan
    out, lse = fastattn.attention(q, k, v, return_lse=True)
    assert np.isnan(out[1, row]).all(), "the NaN row of q did not give a NaN output row"
    assert np.isnan(lse[1, row])
    others = np.ones((2, 100), bool)
    others[1, row] = False
    assert np.isfinite(out[others]).all(), "NaN leaked into other query rows"
    assert np.isfinite(lse[others]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_in_key_row_visible_to_all(rng, dtype):
    q, k, v = make_qkv(rng, (2,), 20, 150, 16, dtype=dtype)
    k[0, 100, 5] = np.nan
    out, lse = fastattn.attention(q, k, v, return_lse=True)
    assert np.isnan(out[0]).all() and np.isnan(lse[0]).all()
    assert np.isfinite(out[1]).all(), "NaN leaked into another head"


def test_nan_in_key_row_with_causal(rng):
    n, j = 80, 50
    q, k, v = make_qkv(rng, (), n, n, 16)
    k[j, 0] = np.nan
    out, lse = fastattn.attention(q, k, v, causal="top_left", return_lse=True)
    # rows i >= j see key j
    assert np.isnan(out[j:]).all() and np.isnan(lse[j:]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_in_value_row(rng, dtype):
    q, k, v = make_qkv(rng, (3,), 20, 70, 16, dtype=dtype)
    v[2, 65, :] = np.nan
    out, lse = fastattn.attention(q, k, v, return_lse=True)
    assert np.isnan(out[2]).all()
    assert np.isfinite(out[:2]).all(), "NaN leaked into another head"
    assert np.isfinite(lse).all(), "NaN in v must not affect the lse"


def test_nan_in_additive_mask(rng):
    q, k, v = make_qkv(rng, (), 20, 30, 8)
    mask = np.zeros((20, 30), np.float32)
    mask[7, 11] = np.nan
    out, lse = fastattn.attention(q, k, v, mask=mask, return_lse=True)
    assert np.isnan(out[7]).all() and np.isnan(lse[7])
    assert np.isfinite(np.delete(out, 7, axis=0)).all()


# ---------------------------------------------------------------------------
# Zero-size dimensions
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("lead", [(), (3,), (2, 3)], ids=["2d", "3d", "4d"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True, "top_left"])
def test_no_keys(rng, lead, dtype, causal):
    q, k, v = make_qkv(rng, lead, 9, 0, 8, dv=5, dtype=dtype)
    out, lse = fastattn.attention(q, k, v, causal=causal, return_lse=True)
    assert out.shape == lead + (9, 5) and out.dtype == dtype
    assert lse.shape == lead + (9,) and lse.dtype == dtype
    assert np.all(out == 0.0) and np.all(lse == -np.inf)


def test_no_keys_with_mask_and_gqa(rng):
    q, k, v = make_qkv(rng, (2, 4), 9, 0, 8, hkv=2)
    out, lse = fastattn.attention(q, k, v, mask=np.ones((9, 0), bool), return_lse=True)
    assert out.shape == (2, 4, 9, 8)
    assert np.all(out == 0.0) and np.all(lse == -np.inf)


def test_no_keys_with_out(rng):
    q, k, v = make_qkv(rng, (2,), 9, 0, 8)
    out = np.full((2, 9, 8), 5.0, np.float32)
    res = fastattn.attention(q, k, v, out=out)
    assert res is out and np.all(out == 0.0)


@pytest.mark.parametrize("lead", [(), (3,), (2, 3)], ids=["2d", "3d", "4d"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_no_queries(rng, lead, dtype):
    q, k, v = make_qkv(rng, lead, 0, 7, 8, dv=5, dtype=dtype)
    out, lse = fastattn.attention(q, k, v, causal=True, return_lse=True)
    assert out.shape == lead + (0, 5) and out.dtype == dtype
    assert lse.shape == lead + (0,) and lse.dtype == dtype


def test_no_queries_no_keys(rng):
    q, k, v = make_qkv(rng, (2, 2), 0, 0, 8)
    out, lse = fastattn.attention(q, k, v, return_lse=True)
    assert out.shape == (2, 2, 0, 8) and lse.shape == (2, 2, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_batch(rng, dtype):
    q, k, v = make_qkv(rng, (0, 4), 5, 6, 8, hkv=2, dtype=dtype)
    mask = np.ones((5, 6), bool)
    out, lse = fastattn.attention(q, k, v, mask=mask, return_lse=True)
    assert out.shape == (0, 4, 5, 8) and lse.shape == (0, 4, 5)
    assert out.dtype == dtype


def test_zero_batch_with_out(rng):
    q, k, v = make_qkv(rng, (0, 4), 5, 6, 8)
    out = np.empty((0, 4, 5, 8), np.float32)
    assert fastattn.attention(q, k, v, out=out) is out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, "top_left"])
def test_zero_head_dim(rng, dtype, causal):
    # Every score is 0: each row averages the values of the keys it sees
    # and its lse is log(number of keys seen).
    nq, nk = 5, 70
    q, k, v = make_qkv(rng, (2,), nq, nk, 0, dv=8, dtype=dtype)
    out, lse = check_attention(q, k, v, causal=causal)
    seen = np.full(nq, nk) if not causal else np.arange(1, nq + 1)
    expect_lse = np.log(seen.astype(np.float64))
    np.testing.assert_allclose(lse, np.broadcast_to(expect_lse, (2, nq)),
                               rtol=1e-6 if dtype == np.float32 else 1e-12)
    expect = np.stack([np.cumsum(v[h], axis=0)[seen - 1] / seen[:, None] for h in range(2)])
    np.testing.assert_allclose(out, expect, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-6 if dtype == np.float32 else 1e-13)


def test_zero_head_dim_explicit_scale(rng):
    q, k, v = make_qkv(rng, (), 4, 6, 0, dv=3)
    check_attention(q, k, v, scale=2.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_value_dim(rng, dtype):
    q, k, v = make_qkv(rng, (2, 2), 7, 9, 8, dv=0, dtype=dtype)
    out, lse = check_attention(q, k, v, causal=True)
    assert out.shape == (2, 2, 7, 0)


def test_zero_heads(rng):
    q, k, v = make_qkv(rng, (0,), 3, 4, 8)
    out, lse = fastattn.attention(q, k, v, return_lse=True)
    assert out.shape == (0, 3, 8) and lse.shape == (0, 3)


# ---------------------------------------------------------------------------
# Size-1 dimensions
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_single_key_copies_value_row(rng, dtype):
    # With one visible key the weights are exactly 1.
    q, k, v = make_qkv(rng, (2, 3), 17, 1, 8, dv=5, dtype=dtype)
    out, lse = check_attention(q, k, v)
    np.testing.assert_allclose(out, np.broadcast_to(v, out.shape),
                               rtol=1e-6 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_ones(dtype):
    lead = (1, 1)
    q = np.ones(lead + (1, 1), dtype)
    k = np.ones(lead + (1, 1), dtype)
    v = np.ones(lead + (1, 1), dtype)
    out, lse = check_attention(q, k, v)
    assert out.shape == (1, 1, 1, 1)
    assert math.isclose(float(lse[0, 0, 0]), 1.0, rel_tol=1e-6)


# ---------------------------------------------------------------------------
# Long key sequences with few query rows (keys split into chunks)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_split_keys_top_left_sees_only_first_chunk(rng, dtype):
    # top_left: row i sees keys 0..i, so every chunk after the first is empty.
    q, k, v = make_qkv(rng, (1, 2), 3, 3000, 16, dtype=dtype)
    check_attention(q, k, v, causal="top_left")


@pytest.mark.parametrize("dtype", DTYPES)
def test_split_keys_bottom_right(rng, dtype):
    q, k, v = make_qkv(rng, (), 4, 1100, 16, dtype=dtype)
    out, lse = check_attention(q, k, v, causal=True)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("j", [0, 700, 2999])
def test_split_keys_nan_in_one_chunk(rng, dtype, j):
    q, k, v = make_qkv(rng, (1, 2), 2, 3000, 16, dtype=dtype)
    k[0, 1, j, 0] = np.nan
    out, lse = fastattn.attention(q, k, v, return_lse=True)
    assert np.isnan(out[0, 1]).all() and np.isnan(lse[0, 1]).all()
    assert np.isfinite(out[0, 0]).all() and np.isfinite(lse[0, 0]).all()


def test_split_keys_nan_in_value(rng):
    q, k, v = make_qkv(rng, (1, 2), 2, 3000, 16)
    v[0, 0, 2500, :] = np.nan
    out, lse = fastattn.attention(q, k, v, return_lse=True)
    assert np.isnan(out[0, 0]).all() and np.isfinite(lse).all()
    assert np.isfinite(out[0, 1]).all()


def test_split_keys_all_masked(rng):
    q, k, v = make_qkv(rng, (1, 2), 2, 3000, 16)
    out, lse = fastattn.attention(q, k, v, mask=np.zeros(3000, bool), return_lse=True)
    assert np.all(out == 0.0) and np.all(lse == -np.inf)


def test_absurd_head_dim_is_memory_error_not_overflow():
    """A stride-0 view can claim d = 2**60; the scratch size must not wrap
    around (that would under-allocate and overrun): MemoryError instead."""
    import subprocess
    import sys
    code = (
        "import numpy as np, fastattn\n"
        "q = np.broadcast_to(np.float32(1), (1, 1, 1, 2**60))\n"
        "v = np.zeros((1, 1, 1, 1), np.float32)\n"
        "try:\n"
        "    fastattn.attention(q, q, v, scale=1e-9)\n"
        "except MemoryError:\n"
        "    print('MemoryError')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "MemoryError" in r.stdout, (r.returncode, r.stderr[-2000:])


def test_self_overlapping_out_is_written_like_numpy():
    """An ``out`` whose elements share memory (stride 0 over the heads) must
    not be raced on by threads: it gets the same values as assigning the
    result with NumPy (the last head wins)."""
    from numpy.lib.stride_tricks import as_strided
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((1, 2, 200, 16)).astype(np.float32) for _ in range(3))
    buf = np.zeros(200 * 16, np.float32)
    out = as_strided(buf, (1, 2, 200, 16), (0, 0, 64, 4))
    expected = fastattn.attention(q, k, v)
    res = fastattn.attention(q, k, v, out=out)
    assert res is out
    np.testing.assert_array_equal(buf.reshape(200, 16), expected[0, 1])
