"""Randomized cases on every ISA path at 1 and 2 threads.

A seeded NumPy generator (deterministic: the same cases in every run and
every child) draws ``N_CASES`` problems: shapes with sizes 0 and 1 and sizes
around the 64-row/key blocks, head dims from 0 to 128, 2-D/3-D/4-D inputs,
grouped-query heads, float32 and float64, every layout of support.relayout
(transposed, sliced, negative and stride-0 strides, Fortran order,
unaligned, read-only), masks (bool; additive float32/float64 with -inf;
broadcast through size-1 axes, dropped leading axes and stride-0 views),
all causal modes, random and zero scales, preallocated ``out`` arrays with
odd strides, and NaN in q, k or v.

Each (ISA path, thread count) runs the cases in its own interpreter
(FASTATTN_ISA is read at import; the harness of support/isa.py), so a crash
fails that path's tests instead of the run, and saves every output.  The
parent draws the same cases again, computes the float64 (and naive)
references once for all paths, and requires

* every output of every path to meet the tolerance rule of support/compare.py, with
  the reference's NaN and infinity positions, and rows that see no key to
  be exact zeros with lse -inf,
* every path's outputs to agree with the scalar path at 1 thread:
  normalized MSE ``sum((a - b)**2) / sum(b**2)`` <= 1e-10 (float32) or
  1e-24 (float64) per case, with the same NaN and infinity positions,
* bitwise identical outputs at 1 and 2 threads on each path.

NaN is only injected without a mask (and into v only without causal
masking): what a NaN at a masked position does is covered, with its
current bugs, in robustness/test_edges.py.
"""

import json

import numpy as np
import pytest

import fastattn
from support import (ISA_COMBOS, ISA_NAMES, LAYOUTS, IsaCase, _finite_abs_max,
                     assert_matches, check_isa_path, make_mask, max_abs_score,
                     reference_results, relayout, plan_kernel)
from support.isa import run_pytest_on_path

N_CASES = 150
SEED = 20240611
SIZES = [0, 1, 1, 2, 3, 5, 8, 16, 17, 33, 63, 64, 65, 100, 130]
DIMS = [0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 32, 33, 64, 80, 128]
MASK_LAYOUTS = ["contiguous", "fortran", "negative", "strided", "broadcast_lead"]
OUT_LAYOUTS = ["contiguous", "fortran", "transposed", "negative", "strided", "unaligned"]


def gen_case(rng):
    """One random problem: (q, k, v, kw, out_or_None, description)."""
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    desc = {}
    ndim = pick([2, 3, 4, 4])
    dtype = pick([np.float32, np.float32, np.float64])
    hkv = pick([1, 1, 2, 3])
    h = hkv * pick([1, 1, 2, 3])
    b = pick([0, 1, 1, 2, 3]) if rng.random() < 0.9 else 1
    kind = rng.random()
    if kind < 0.1:      # bigger: several row tiles, threads engage
        nq, nk, d, dv = (int(rng.integers(100, 200)), int(rng.integers(150, 300)),
                         pick([16, 32, 64]), pick([16, 32, 64]))
        b, h, hkv = 1, 4, pick([1, 2, 4])
    elif kind < 0.2:    # decode: few rows, long keys split in chunks
        nq, nk, d, dv = (int(rng.integers(1, 4)), int(rng.integers(1000, 2600)),
                         pick([8, 32, 64]), pick([8, 32, 64]))
        b = 1
    else:
        nq, nk, d = pick(SIZES), pick(SIZES), pick(DIMS)
        dv = d if rng.random() < 0.5 else pick(DIMS)
    lead_q, lead_kv = {2: ((), ()), 3: ((h,), (hkv,)), 4: ((b, h), (b, hkv))}[ndim]
    desc.update(dtype=np.dtype(dtype).name, q=lead_q + (nq, d), k=lead_kv + (nk, d),
                v=lead_kv + (nk, dv))

    mag = pick([1.0, 1.0, 3.0])
    q = (rng.standard_normal(lead_q + (nq, d)) * mag).astype(dtype)
    k = (rng.standard_normal(lead_kv + (nk, d)) * mag).astype(dtype)
    v = rng.standard_normal(lead_kv + (nk, dv)).astype(dtype)

    kw = {}
    mkind = pick([None, None, "bool", "add32", "add64"])
    if mkind is not None:
        full = lead_q + (nq, nk)
        shape = tuple(s if rng.random() < 0.6 else 1 for s in full)
        shape = shape[int(rng.integers(0, len(full))):]
        mask = make_mask(rng, mkind, shape, p_visible=pick([0.0, 0.05, 0.5, 0.9, 1.0]))
        mlay = pick(MASK_LAYOUTS) if mask.ndim else "contiguous"
        kw["mask"] = relayout(mask, mlay)
        desc["mask"] = f"{mkind} {shape} {mlay}"
    causal = pick([False, False, True, "bottom_right", "top_left"])
    if causal is not False:
        kw["causal"] = causal
        desc["causal"] = causal
    r = rng.random()
    if r < 0.4:
        kw["scale"] = float(rng.uniform(-2, 2))
    elif r < 0.45:
        kw["scale"] = 0.0
    if "scale" in kw:
        desc["scale"] = kw["scale"]

    # NaN only where its reach is defined the same way everywhere (module doc).
    if mkind is None and rng.random() < 0.3:
        targets = [("q", q), ("k", k)] + ([("v", v)] if causal is False else [])
        name, arr = targets[int(rng.integers(len(targets)))]
        if arr.size:
            arr[np.unravel_index(int(rng.integers(arr.size)), arr.shape)] = np.nan
            desc["nan_in"] = name

    lay = [pick(LAYOUTS) for _ in range(3)]
    q, k, v = (relayout(a, lay_) for a, lay_ in zip((q, k, v), lay))
    desc["layouts"] = lay

    out = None
    if rng.random() < 0.25:
        olay = pick(OUT_LAYOUTS)
        out = relayout(np.full(lead_q + (nq, dv), np.nan, dtype), olay)
        desc["out"] = olay
    return q, k, v, kw, out, desc


def _features(q, k, v, kw, out, desc):
    """Coverage tags of one case."""
    tags = set()
    for a in (q, k, v):
        if 0 in a.shape:
            tags.add("zero_size")
        if 1 in a.shape:
            tags.add("size_one")
        if any(s == 0 and n > 1 for s, n in zip(a.strides, a.shape)):
            tags.add("stride_0")
        if any(s < 0 for s in a.strides):
            tags.add("negative_stride")
        if not (a.flags.c_contiguous or a.flags.f_contiguous):
            tags.add("non_contiguous")
    tags.add(f"ndim_{q.ndim}")
    tags.add(desc["dtype"])
    if q.ndim >= 3 and k.shape[-3] != q.shape[-3]:
        tags.add("gqa")
    if q.shape[-1] != v.shape[-1]:
        tags.add("dv_ne_d")
    if "mask" in desc:
        tags.add("mask_" + desc["mask"].split()[0])
        m = kw["mask"]
        if m.ndim < q.ndim or 1 in m.shape:
            tags.add("mask_broadcast")
        if m.dtype != np.bool_ and np.isneginf(m).any():
            tags.add("mask_minus_inf")
    tags.add(f"causal_{kw.get('causal', False)}")
    if "scale" in kw:
        tags.add("scale_given")
    if "nan_in" in desc:
        tags.add("nan_" + desc["nan_in"])
    if out is not None:
        tags.add("out_given")
    if k.shape[-2] >= 1000:
        tags.add("long_keys")
    return tags


# ---------------------------------------------------------------------------
# The cases of the per-ISA harness
# ---------------------------------------------------------------------------

def _run(q, k, v, kw, out):
    def run():
        if out is None:
            return fastattn.attention(q, k, v, return_lse=True, **kw)
        o, lse = fastattn.attention(q, k, v, out=out, return_lse=True, **kw)
        assert o is out, "out= was not returned"
        return o, lse
    return run


def _drawn_case(i, c):
    def check(res):
        if "refs" not in c:
            c["refs"] = reference_results(c["q"], c["k"], c["v"], **c["kw"])
        try:
            check_case(c, *res)
        except AssertionError as e:
            desc = json.dumps({k: str(v) for k, v in c["desc"].items()})
            raise AssertionError(f"{desc}:\n    {str(e).strip()[:600]}") from None
    return IsaCase(str(i), _run(c["q"], c["k"], c["v"], c["kw"], c["out"]), check,
                   plan=lambda: plan_kernel(c["q"], c["k"], c["v"], **c["kw"]))


_DRAWN = []


def draw_cases():
    """The N_CASES problems, drawn from SEED (the same in every process),
    once per process."""
    if _DRAWN:
        return _DRAWN
    rng = np.random.default_rng(SEED)
    drawn = _DRAWN
    for _ in range(N_CASES):
        q, k, v, kw, out, desc = gen_case(rng)
        drawn.append(dict(q=q, k=k, v=v, kw=kw, out=out, desc=desc,
                          s_max=max_abs_score(q, k, kw.get("scale")),
                          v_max=_finite_abs_max(v)))
    return drawn


def isa_cases():
    return [_drawn_case(i, c) for i, c in enumerate(draw_cases())]


@pytest.fixture(scope="module")
def cases():
    """The cases with their float64 (and naive) references."""
    drawn = draw_cases()
    for c in drawn:
        if "refs" not in c:
            c["refs"] = reference_results(c["q"], c["k"], c["v"], **c["kw"])
    return drawn


def check_case(c, o, lse):
    """The tolerance rule of support/compare.py, and exact zeros / -inf for
    rows that see no key."""
    q, k, v = c["q"], c["k"], c["v"]
    assert o.dtype == q.dtype and lse.dtype == q.dtype
    assert o.shape == q.shape[:-1] + (v.shape[-1],) and lse.shape == q.shape[:-1]
    o64, l64, on, ln = c["refs"]
    nk = k.shape[-2]
    assert_matches("out", o, o64, on, q.dtype, nk, c["s_max"] * c["v_max"])
    assert_matches("lse", lse, l64, ln, q.dtype, nk, c["s_max"])
    empty = l64 == -np.inf
    assert (o[empty] == 0).all(), "a row that sees no key is not exact zeros"
    assert (lse[empty] == -np.inf).all(), "a row that sees no key has lse != -inf"


@pytest.mark.parametrize("isa, threads", ISA_COMBOS)
def test_random_cases_match_reference(isa_runs, isa, threads):
    check_isa_path(isa_runs, "test_isa_property", isa, threads, checks=("reference",))


@pytest.mark.parametrize("isa, threads", ISA_COMBOS)
def test_paths_agree_with_scalar(isa_runs, isa, threads, capsys):
    worst = check_isa_path(isa_runs, "test_isa_property", isa, threads, checks=("scalar",))
    with capsys.disabled():
        print(f"\n[{isa}, {threads} threads vs scalar, 1 thread] worst NMSE per case: "
              + ", ".join(f"{d} {e:.3g}" for d, e in sorted(worst.items())))


@pytest.mark.parametrize("isa", ISA_NAMES)
def test_same_bits_at_1_and_2_threads(isa_runs, isa):
    check_isa_path(isa_runs, "test_isa_property", isa, 2, checks=("threads",))


def test_cases_cover_the_features(cases):
    # The generator really produces what the module docstring promises.
    cov = {}
    empty_rows = nan_cases = 0
    for c in cases:
        for tag in _features(c["q"], c["k"], c["v"], c["kw"], c["out"], c["desc"]):
            cov[tag] = cov.get(tag, 0) + 1
        empty_rows += int((c["refs"][1] == -np.inf).sum())
        nan_cases += int(np.isnan(c["refs"][0]).any())
    need = ["zero_size", "size_one", "stride_0", "negative_stride", "non_contiguous",
            "ndim_2", "ndim_3", "ndim_4", "float32", "float64", "gqa", "dv_ne_d",
            "mask_bool", "mask_add32", "mask_add64", "mask_broadcast", "mask_minus_inf",
            "causal_False", "causal_True", "causal_bottom_right", "causal_top_left",
            "scale_given", "nan_q", "nan_k", "nan_v", "out_given", "long_keys"]
    missing = [t for t in need if cov.get(t, 0) < 2]
    assert not missing, f"features drawn fewer than twice: {missing} (coverage {cov})"
    assert empty_rows > 0 and nan_cases > 0


# --------------------------------------------------------------------------
# The hypothesis property suite itself, once per forced ISA path
# --------------------------------------------------------------------------

@pytest.mark.parametrize("isa", ISA_NAMES)
def test_hypothesis_properties_on_every_isa(isa):
    """tests/core/test_property.py (hypothesis: random shapes, strides, masks,
    causal modes, GQA) run in a child interpreter with FASTATTN_ISA forced,
    at two threads, so every path meets the same properties."""
    r = run_pytest_on_path(isa, "core/test_property.py", threads=2)
    assert r.returncode == 0, f"FASTATTN_ISA={isa}:\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}"
