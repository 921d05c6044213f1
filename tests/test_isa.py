"""Instruction-set paths: every path this CPU supports gives correct results.

FASTATTN_ISA is read when fastattn is imported, so each forced path runs in
its own interpreter.
"""

import os
import subprocess
import sys
import textwrap

import pytest

import fastattn

ISAS = ["scalar", "avx2", "avx512"]
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastattn.__file__)))

CHECK_SCRIPT = textwrap.dedent("""
    import os
    import numpy as np
    import fastattn
    from conftest import check_attention, make_mask, make_qkv, relayout

    forced = os.environ["FASTATTN_ISA"]
    info = fastattn.info()
    assert info["isa"] == forced, f"forced {forced!r} but info() says {info['isa']!r}"

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
    print("ok", info["isa"])
""")


def run_python(code, isa):
    env = dict(os.environ)
    env["FASTATTN_ISA"] = isa
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


@pytest.mark.parametrize("isa", ISAS)
def test_forced_isa_matches_reference(isa):
    if isa not in fastattn.info()["isa_available"]:
        pytest.skip(f"this CPU or build does not support the {isa} path")
    r = run_python(CHECK_SCRIPT, isa)
    assert r.returncode == 0, f"FASTATTN_ISA={isa} failed:\n{r.stdout}\n{r.stderr}"
    assert r.stdout.strip() == f"ok {isa}"


@pytest.mark.parametrize("name", ["bogus", "sse9"])
def test_unknown_isa_name_fails_import(name):
    r = run_python("import fastattn; fastattn.info()", name)
    assert r.returncode != 0, f"import with FASTATTN_ISA={name!r} should fail"
    assert "FASTATTN_ISA" in r.stderr, r.stderr
