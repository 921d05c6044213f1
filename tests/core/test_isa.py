"""Instruction-set paths: every path this CPU supports gives correct results.

FASTATTN_ISA is read when fastattn is imported, so each forced path runs in
its own interpreter, once with 1 thread and once with 2 (the harness of
support/isa.py).  The results of every case of ``isa_cases`` must

* meet the tolerance rule of support/compare.py against the reference,
* agree with the scalar path at 1 thread: normalized mean squared error
  sum((a - b)**2) / sum(b**2) <= 1e-10 for float32 and <= 1e-24 for
  float64 (same NaN and infinity positions), and
* be bitwise identical at 1 and 2 threads on the same path.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastattn
from fastattn import _core
from support import (ISA_COMBOS, ISA_NAMES, attention_case, check_isa_path, make_mask,
                     make_qkv, relayout)
from support.child import child_env


def isa_cases():
    """The cases run on every path (support/isa.py): sizes across the
    block edges, head dims that leave vector tails, masks, decoding shapes,
    layouts, rows with no visible key, and a fixed set of larger cases."""
    rng = np.random.default_rng(12345)
    cases = []

    def add(name, *args, **kw):
        cases.append(attention_case(f"{name}-{len(cases)}", *args, **kw))

    for dtype in (np.float32, np.float64):
        # sizes across the block edges, head dims that leave vector tails
        for nq, nk, d, dv in [(1, 1, 1, 1), (17, 33, 8, 8), (65, 129, 17, 3),
                              (33, 70, 80, 64), (20, 40, 256, 256), (5, 300, 64, 128)]:
            q, k, v = make_qkv(rng, (2, 2), nq, nk, d, dv=dv, dtype=dtype)
            add("plain", q, k, v)
            add("causal", q, k, v, causal=True)
            add("top_left", q, k, v, causal="top_left")
            for kind in ("bool", "add32", "add64"):
                mask = make_mask(rng, kind, (1, 2, nq, nk), p_visible=0.5)
                add(f"mask_{kind}", q, k, v, mask=mask, causal="top_left")
        # decoding: few query rows per kv head, long keys split in chunks
        for nq in (1, 3):
            q, k, v = make_qkv(rng, (1, 8), nq, 2100, 64, dv=48, hkv=2, dtype=dtype)
            add("decode_causal", q, k, v, causal=True)
            add("decode_reversed", q, k[..., ::-1], v[..., ::-1], causal="top_left")
            mask = make_mask(rng, "add32", (1, 8, nq, 2100), p_visible=0.3)
            add("decode_mask", q, k, v, mask=mask)
        q, k, v = make_qkv(rng, (2, 6), 70, 65, 32, hkv=2, dtype=dtype)
        add("gqa_causal", q, k, v, causal=True)
        for lay in ("transposed", "negative", "unaligned"):
            add(lay, *(relayout(a, lay) for a in (q, k, v)))
        # rows with no visible key (exact zeros and lse -inf: the case check)
        add("no_keys", q, k[..., :0, :], v[..., :0, :])
        add("rows_before_the_keys", q, k[..., :30, :], v[..., :30, :], causal=True)

    # Fixed larger cases.
    rng = np.random.default_rng(2024)
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
        fixed = {
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
        for case, (args, kw) in fixed.items():
            add(f"{name}/{case}", *args, **kw)
    return cases


def run_python(code, isa, **extra_env):
    return subprocess.run([sys.executable, "-c", code],
                          env=child_env(FASTATTN_ISA=isa, **extra_env),
                          capture_output=True, text=True, timeout=300)


def test_info_reports_isa():
    info = fastattn.info()
    assert isinstance(info, dict)
    assert info["isa"] in _core.isa_names()
    available = list(info["isa_available"])
    assert "scalar" in available
    assert set(available) <= set(_core.isa_names())
    assert tuple(p for p in available if p in ISA_NAMES) == ISA_NAMES
    assert info["isa"] in available
    forced = os.environ.get("FASTATTN_ISA")
    if forced:
        assert info["isa"] == forced


@pytest.mark.parametrize("isa, threads", ISA_COMBOS)
def test_forced_isa_matches_reference(isa_runs, isa, threads):
    # Every case against the reference, and against the scalar path at 1
    # thread.
    worst = check_isa_path(isa_runs, "test_isa", isa, threads, checks=("reference", "scalar"))
    print(f"\n{isa}, {threads} threads: max normalized MSE vs scalar "
          + ", ".join(f"{d} {e:.3g}" for d, e in sorted(worst.items())))


@pytest.mark.parametrize("isa", ISA_NAMES)
def test_forced_isa_same_bits_at_1_and_2_threads(isa_runs, isa):
    check_isa_path(isa_runs, "test_isa", isa, 2, checks=("threads",))


@pytest.mark.parametrize("name", ["bogus", "sse9"])
def test_unknown_isa_name_fails_import(name):
    r = run_python("import fastattn; fastattn.info()", name)
    assert r.returncode != 0, f"import with FASTATTN_ISA={name!r} should fail"
    assert "FASTATTN_ISA" in r.stderr, r.stderr
