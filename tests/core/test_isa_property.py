"""Randomized cases on every ISA path at 1 and 2 threads.

A seeded NumPy generator (deterministic: the same cases in every run and
every child) draws ``N_CASES`` problems: shapes with sizes 0 and 1 and sizes
around the 64-row/key blocks, head dims from 0 to 128, 2-D/3-D/4-D inputs,
grouped-query heads, float32 and float64, every layout of conftest.relayout
(transposed, sliced, negative and stride-0 strides, Fortran order,
unaligned, read-only), masks (bool; additive float32/float64 with -inf;
broadcast through size-1 axes, dropped leading axes and stride-0 views),
all causal modes, random and zero scales, preallocated ``out`` arrays with
odd strides, and NaN in q, k or v.

Each (ISA path, thread count) runs the cases in its own interpreter
(FASTATTN_ISA is read at import; ``python tests/test_isa_property.py
--child``), so a crash fails that path's tests instead of the run, and saves
every output.  The parent draws the same cases again, computes the float64
(and naive) references once for all paths, and requires

* every output of every path to meet the tolerance rule of conftest, with
  the reference's NaN and infinity positions, and rows that see no key to
  be exact zeros with lse -inf,
* every path's outputs to agree with the scalar path at 1 thread:
  normalized MSE ``sum((a - b)**2) / sum(b**2)`` <= 1e-10 (float32) or
  1e-24 (float64) per case, with the same NaN and infinity positions,
* bitwise identical outputs at 1 and 2 threads on each path.

NaN is only injected without a mask (and into v only without causal
masking): what a NaN at a masked position does is covered, with its
current bugs, in test_numeric_edges.py.
"""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

N_CASES = 150
SEED = 20240611
NMSE_MAX = {"float32": 1e-10, "float64": 1e-24}
SIZES = [0, 1, 1, 2, 3, 5, 8, 16, 17, 33, 63, 64, 65, 100, 130]
DIMS = [0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 32, 33, 64, 80, 128]
MASK_LAYOUTS = ["contiguous", "fortran", "negative", "strided", "broadcast_lead"]
OUT_LAYOUTS = ["contiguous", "fortran", "transposed", "negative", "strided", "unaligned"]


def gen_case(rng):
    """One random problem: (q, k, v, kw, out_or_None, description)."""
    from conftest import LAYOUTS, make_mask, relayout

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
# The child
# ---------------------------------------------------------------------------

def child_main():
    """Run every case on the forced path; save outputs (or the exception)."""
    import fastattn

    forced = os.environ["FASTATTN_ISA"]
    assert fastattn.info()["isa"] == forced, (forced, fastattn.info()["isa"])
    threads = int(os.environ["FASTATTN_TEST_THREADS"])
    fastattn.set_num_threads(threads)
    if fastattn.info()["openmp"]:
        assert fastattn.get_num_threads() == threads

    rng = np.random.default_rng(SEED)
    saved, errors = {}, {}
    for i in range(N_CASES):
        q, k, v, kw, out, desc = gen_case(rng)
        print(f"@@start {i}", flush=True)
        try:
            if out is not None:
                o, lse = fastattn.attention(q, k, v, out=out, return_lse=True, **kw)
                assert o is out, "out= was not returned"
            else:
                o, lse = fastattn.attention(q, k, v, return_lse=True, **kw)
        except Exception as e:
            errors[i] = f"{type(e).__name__}: {e}"
            continue
        saved[f"{i}/out"] = np.ascontiguousarray(o)
        saved[f"{i}/lse"] = np.ascontiguousarray(lse)
    np.savez(os.environ["FASTATTN_TEST_DUMP"], **saved)
    print("@@done " + json.dumps({"errors": errors}), flush=True)


if __name__ == "__main__" and "--child" in sys.argv:
    child_main()
    sys.exit(0)


# ---------------------------------------------------------------------------
# The parent
# ---------------------------------------------------------------------------

import pytest  # noqa: E402

import fastattn  # noqa: E402

ISAS = ["scalar", "avx2", "avx512"]
THREADS = [1, 2]
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastattn.__file__)))
AVAILABLE = fastattn.info()["isa_available"]


def _run_child(isa, threads, dump):
    env = dict(os.environ)
    # Two children share the machine: idle OpenMP threads must not spin.
    env.setdefault("OMP_WAIT_POLICY", "passive")
    env.update(FASTATTN_ISA=isa, FASTATTN_TEST_THREADS=str(threads),
               FASTATTN_TEST_DUMP=str(dump))
    env["PYTHONPATH"] = os.pathsep.join(
        [PKG_PARENT, TESTS_DIR] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child"], env=env,
                       capture_output=True, text=True, timeout=300, cwd=TESTS_DIR)
    done = [ln for ln in r.stdout.splitlines() if ln.startswith("@@done ")]
    started = [ln for ln in r.stdout.splitlines() if ln.startswith("@@start ")]
    res = {"returncode": r.returncode, "stderr": r.stderr[-3000:],
           "last_started": started[-1].split()[1] if started else None}
    if r.returncode == 0 and done:
        res.update(json.loads(done[-1][len("@@done "):]))
        with np.load(dump) as z:
            res["saved"] = {key: z[key] for key in z.files}
    return res


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{(isa, threads): child result} for every available path, run once,
    two children at a time (this machine may have only two cores)."""
    tmp = tmp_path_factory.mktemp("isa_property")
    combos = [(isa, t) for isa in ISAS if isa in AVAILABLE for t in THREADS]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {c: pool.submit(_run_child, c[0], c[1], tmp / f"{c[0]}-{c[1]}.npz")
                   for c in combos}
        return {c: f.result() for c, f in futures.items()}


def _require(isa):
    if isa not in AVAILABLE:
        pytest.skip(f"this CPU or build does not support the {isa} path")


def _ok(res, isa, threads):
    assert res["returncode"] == 0 and "saved" in res, (
        f"FASTATTN_ISA={isa}, {threads} threads: the child died (exit status "
        f"{res['returncode']}) during case {res['last_started']}:\n{res['stderr']}")


def nmse(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    fin = np.isfinite(b)
    den = np.sum(b[fin] ** 2)
    num = np.sum((a[fin] - b[fin]) ** 2)
    return num / den if den > 0 else num


@pytest.fixture(scope="module")
def cases():
    """The children's cases, drawn again here, with their float64 (and
    naive) references, computed once for all paths."""
    from conftest import _finite_abs_max, max_abs_score, reference_results

    rng = np.random.default_rng(SEED)
    drawn = []
    for _ in range(N_CASES):
        q, k, v, kw, out, desc = gen_case(rng)
        refs = reference_results(q, k, v, **kw)
        s_max = max_abs_score(q, k, kw.get("scale"))
        drawn.append(dict(q=q, k=k, v=v, kw=kw, out=out, desc=desc, refs=refs,
                          s_max=s_max, v_max=_finite_abs_max(v)))
    return drawn


def check_case(c, o, lse):
    """The tolerance rule of conftest, and exact zeros / -inf for rows that
    see no key."""
    from conftest import assert_matches

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


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("isa", ISAS)
def test_random_cases_match_reference(runs, cases, isa, threads):
    _require(isa)
    res = runs[isa, threads]
    _ok(res, isa, threads)
    fails = []
    for i, c in enumerate(cases):
        try:
            if str(i) in res["errors"]:
                raise AssertionError(f"raised {res['errors'][str(i)]}")
            check_case(c, res["saved"][f"{i}/out"], res["saved"][f"{i}/lse"])
        except AssertionError as e:
            fails.append(f"case {i} {json.dumps({k: str(v) for k, v in c['desc'].items()})}:"
                         f"\n    {str(e).strip()[:600]}")
    assert not fails, (
        f"FASTATTN_ISA={isa}, {threads} threads: {len(fails)} of {N_CASES} cases fail; "
        "first ones:\n" + "\n".join(fails[:5]))


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("isa", ISAS)
def test_paths_agree_with_scalar(runs, isa, threads, capsys):
    _require(isa)
    got, base = runs[isa, threads], runs["scalar", 1]
    _ok(got, isa, threads)
    _ok(base, "scalar", 1)
    assert sorted(got["saved"]) == sorted(base["saved"])
    worst = {}
    bad = []
    for key, b in base["saved"].items():
        a = got["saved"][key]
        assert a.shape == b.shape and a.dtype == b.dtype, key
        assert np.array_equal(np.isnan(a), np.isnan(b)), f"{key}: NaN positions differ"
        inf = np.isinf(b)
        assert np.array_equal(np.isinf(a), inf) and np.array_equal(a[inf], b[inf]), (
            f"{key}: infinities differ")
        e = nmse(a, b)
        name = b.dtype.name
        worst[name] = max(worst.get(name, 0.0), e)
        if e > NMSE_MAX[name]:
            bad.append(f"{key} ({name}): NMSE {e:.3g}")
    with capsys.disabled():
        print(f"\n[{isa}, {threads} threads vs scalar, 1 thread] worst NMSE per case: "
              + ", ".join(f"{d} {e:.3g}" for d, e in sorted(worst.items())))
    assert not bad, f"{isa}, {threads} threads disagree with the scalar path: {bad[:10]}"


@pytest.mark.parametrize("isa", ISAS)
def test_same_bits_at_1_and_2_threads(runs, isa):
    _require(isa)
    one, two = runs[isa, 1], runs[isa, 2]
    _ok(one, isa, 1)
    _ok(two, isa, 2)
    diff = [key for key in one["saved"]
            if one["saved"][key].tobytes() != two["saved"][key].tobytes()]
    assert not diff, f"{isa}: results differ between 1 and 2 threads: {diff[:10]}"


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

@pytest.mark.parametrize("isa", AVAILABLE)
def test_hypothesis_properties_on_every_isa(isa):
    """tests/test_property.py (hypothesis: random shapes, strides, masks,
    causal modes, GQA) run in a child interpreter with FASTATTN_ISA forced,
    at two threads, so every path meets the same properties."""
    env = dict(os.environ, FASTATTN_ISA=isa, OMP_NUM_THREADS="2")
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run(
        [sys.executable, "-m", "pytest", os.path.join(here, "test_property.py"),
         "-q", "-x", "-p", "no:cacheprovider"],
        env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"FASTATTN_ISA={isa}:\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}"
