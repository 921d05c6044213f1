"""Instruction-set paths: every path this CPU supports gives correct results.

FASTATTN_ISA is read when fastattn is imported, so each forced path runs in
its own interpreter, once with 1 thread and once with 2.  Each run checks
its results against the reference (the tolerance rule of conftest) and also
saves the results of a fixed set of cases, which must

* agree with the scalar path at 1 thread: normalized mean squared error
  sum((a - b)**2) / sum(b**2) <= 1e-10 for float32 and <= 1e-24 for
  float64 (same NaN and infinity positions), and
* be bitwise identical at 1 and 2 threads on the same path.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastattn

ISAS = ["scalar", "avx2", "avx512"]
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastattn.__file__)))

THREADS = [1, 2]
NMSE_MAX = {"float32": 1e-10, "float64": 1e-24}

CHECK_SCRIPT = textwrap.dedent("""
    import os
    import numpy as np
    import fastattn
    from conftest import check_attention, make_mask, make_qkv, relayout

    forced = os.environ["FASTATTN_ISA"]
    info = fastattn.info()
    assert info["isa"] == forced, f"forced {forced!r} but info() says {info['isa']!r}"
    threads = int(os.environ["FASTATTN_TEST_THREADS"])
    fastattn.set_num_threads(threads)
    if info["openmp"]:
        assert fastattn.get_num_threads() == threads

    rng = np.random.default_rng(12345)
    for dtype in (np.float32, np.float64):
        # sizes across the block edges, head dims that leave vector tails
        for nq, nk, d, dv in [(1, 1, 1, 1), (17, 33, 8, 8), (65, 129, 17, 3),
                              (33, 70, 80, 64), (20, 40, 256, 256), (5, 300, 64, 128)]:
            q, k, v = make_qkv(rng, (2, 2), nq, nk, d, dv=dv, dtype=dtype)
            check_attention(q, k, v)
            check_attention(q, k, v, causal=True)
            check_attention(q, k, v, causal="top_left")
            for kind in ("bool", "add32", "add64"):
                mask = make_mask(rng, kind, (1, 2, nq, nk), p_visible=0.5)
                check_attention(q, k, v, mask=mask, causal="top_left")
        # decoding: few query rows per kv head, long keys split in chunks
        for nq in (1, 3):
            q, k, v = make_qkv(rng, (1, 8), nq, 2100, 64, dv=48, hkv=2, dtype=dtype)
            check_attention(q, k, v, causal=True)
            check_attention(q, k[..., ::-1], v[..., ::-1], causal="top_left")
            mask = make_mask(rng, "add32", (1, 8, nq, 2100), p_visible=0.3)
            check_attention(q, k, v, mask=mask)
        q, k, v = make_qkv(rng, (2, 6), 70, 65, 32, hkv=2, dtype=dtype)
        check_attention(q, k, v, causal=True)
        check_attention(*(relayout(a, "transposed") for a in (q, k, v)))
        check_attention(*(relayout(a, "negative") for a in (q, k, v)))
        check_attention(*(relayout(a, "unaligned") for a in (q, k, v)))
        # rows with no visible key
        out, lse = check_attention(q, k[..., :0, :], v[..., :0, :])
        assert (out == 0).all() and (lse == -np.inf).all()
        out, lse = check_attention(q, k[..., :30, :], v[..., :30, :], causal=True)
        assert (out[..., :40, :] == 0).all() and (lse[..., :40] == -np.inf).all()

    # Fixed cases whose results the test compares across paths and threads.
    rng = np.random.default_rng(2024)
    saved = {}
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        q, k, v = make_qkv(rng, (2, 4), 100, 150, 64, dtype=dtype)
        qt, kt, vt = make_qkv(rng, (2, 4), 150, 100, 40, dv=24, dtype=dtype)
        qg, kg, vg = make_qkv(rng, (2, 8), 77, 130, 32, hkv=2, dtype=dtype)
        qd, kd, vd = make_qkv(rng, (1, 8), 1, 3000, 64, hkv=2, dtype=dtype)
        bool_mask = make_mask(rng, "bool", (1, 4, 100, 150), p_visible=0.6)
        add_mask = make_mask(rng, "add32", (100, 150), p_visible=0.6)
        add_mask64 = make_mask(rng, "add64", (2, 1, 100, 150), p_visible=0.6)
        decode_mask = make_mask(rng, "add32", (1, 8, 1, 3000), p_visible=0.3)
        cases = {
            "plain": ((q, k, v), {}),
            "causal_bottom_right": ((q, k, v), dict(causal=True)),
            "causal_top_left": ((q, k, v), dict(causal="top_left")),
            "causal_bottom_right_nq_gt_nk": ((qt, kt, vt), dict(causal="bottom_right")),
            "causal_top_left_nq_gt_nk": ((qt, kt, vt), dict(causal="top_left")),
            "bool_mask": ((q, k, v), dict(mask=bool_mask)),
            "bool_mask_causal": ((q, k, v), dict(mask=bool_mask, causal=True)),
            "additive_mask32": ((q, k, v), dict(mask=add_mask)),
            "additive_mask64": ((q, k, v), dict(mask=add_mask64, causal="top_left")),
            "gqa": ((qg, kg, vg), {}),
            "gqa_causal": ((qg, kg, vg), dict(causal=True)),
            "decode": ((qd, kd, vd), {}),
            "decode_causal": ((qd, kd, vd), dict(causal=True)),
            "decode_mask": ((qd, kd, vd), dict(mask=decode_mask)),
        }
        for case, (args, kw) in cases.items():
            out, lse = check_attention(*args, **kw)
            saved[f"{name}/{case}/out"] = out
            saved[f"{name}/{case}/lse"] = lse
    np.savez(os.environ["FASTATTN_TEST_DUMP"], **saved)
    print("ok", info["isa"])
""")


def run_python(code, isa, **extra_env):
    env = dict(os.environ)
    env["FASTATTN_ISA"] = isa
    env.update(extra_env)
    env["PYTHONPATH"] = os.pathsep.join(
        [PKG_PARENT, TESTS_DIR] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)


def test_info_reports_isa():
    info = fastattn.info()
    assert isinstance(info, dict)
    assert info["isa"] in ISAS
    available = list(info["isa_available"])
    assert "scalar" in available
    assert set(available) <= set(ISAS)
    assert info["isa"] in available
    forced = os.environ.get("FASTATTN_ISA")
    if forced:
        assert info["isa"] == forced


def _require(isa):
    if isa not in fastattn.info()["isa_available"]:
        pytest.skip(f"this CPU or build does not support the {isa} path")


@pytest.fixture(scope="module")
def isa_run(tmp_path_factory):
    """run(isa, threads) -> the saved results of CHECK_SCRIPT on that path
    with that many threads; each combination runs once per module."""
    cache = {}

    def run(isa, threads):
        if (isa, threads) not in cache:
            dump = tmp_path_factory.mktemp("isa") / f"{isa}-{threads}.npz"
            r = run_python(CHECK_SCRIPT, isa, FASTATTN_TEST_THREADS=str(threads),
                           FASTATTN_TEST_DUMP=str(dump))
            assert r.returncode == 0, (
                f"FASTATTN_ISA={isa} with {threads} threads failed:\n{r.stdout}\n{r.stderr}")
            assert r.stdout.strip() == f"ok {isa}"
            with np.load(dump) as z:
                cache[isa, threads] = {key: z[key] for key in z.files}
        return cache[isa, threads]

    return run


def nmse(a, b):
    """sum((a - b)**2) / sum(b**2) over the entries finite in b, in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    fin = np.isfinite(b)
    den = np.sum(b[fin] ** 2)
    num = np.sum((a[fin] - b[fin]) ** 2)
    return num / den if den > 0 else num


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("isa", ISAS)
def test_forced_isa_matches_reference(isa_run, isa, threads):
    # The reference checks run inside the script; this also requires the
    # saved results to match the scalar path at 1 thread.
    _require(isa)
    got = isa_run(isa, threads)
    base = isa_run("scalar", 1)
    assert sorted(got) == sorted(base)
    worst = {}
    for key, b in base.items():
        a = got[key]
        assert a.shape == b.shape and a.dtype == b.dtype, key
        assert np.array_equal(np.isnan(a), np.isnan(b)), f"{key}: NaN positions differ"
        inf = np.isinf(b)
        assert np.array_equal(np.isinf(a), inf) and np.array_equal(a[inf], b[inf]), (
            f"{key}: infinities differ")
        e = nmse(a, b)
        dtype = key.split("/")[0]
        worst[dtype] = max(worst.get(dtype, 0.0), e)
        assert e <= NMSE_MAX[dtype], (
            f"{isa} at {threads} threads, {key}: normalized MSE {e:.3g} against the "
            f"scalar path exceeds {NMSE_MAX[dtype]:g}")
    print(f"\n{isa}, {threads} threads: max normalized MSE vs scalar "
          + ", ".join(f"{d} {e:.3g}" for d, e in sorted(worst.items())))


@pytest.mark.parametrize("isa", ISAS)
def test_forced_isa_same_bits_at_1_and_2_threads(isa_run, isa):
    _require(isa)
    one, two = isa_run(isa, 1), isa_run(isa, 2)
    for key in one:
        assert one[key].tobytes() == two[key].tobytes(), (
            f"{isa}: {key} differs between 1 and 2 threads")


@pytest.mark.parametrize("name", ["bogus", "sse9"])
def test_unknown_isa_name_fails_import(name):
    r = run_python("import fastattn; fastattn.info()", name)
    assert r.returncode != 0, f"import with FASTATTN_ISA={name!r} should fail"
    assert "FASTATTN_ISA" in r.stderr, r.stderr
