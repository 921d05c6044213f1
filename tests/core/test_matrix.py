"""The matrix-unit kernels (family "matrix"): results, plans and the gate.

The matrix kernels run on the "amx" path (real tiles, where the CPU and
the OS allow them) and on "amx_emu" (the same kernels on the portable tile
emulation, which has the instructions' exact rounding; forced only).
``isa_cases`` run through the per-ISA harness (support/isa.py) on every
path, 1 and 2 threads, so on the matrix paths they exercise:

* bfloat16 and float16 inputs, every variant (bool and additive masks,
  both causal alignments, window, ALiBi, soft cap, ``kv_lengths``, GQA,
  packed batches, odd sizes, strided and transposed inputs, rows that see
  no key), against the float64 reference under FlashAttention's rule at
  the operands' precision (support/matrix.py: the plain computation with
  P rounded to the operand type);
* float32 with ``precision="bf16"`` under the same rule with bfloat16
  operands, and ``precision="bf16x3"``, whose error against float64 must
  be at most 1/50 of the plain bfloat16 computation's on standard-normal
  inputs.

On the vector paths the same cases check the ordinary rules (16-bit inputs)
or the fallback to float32 (the reduced modes), which meets them a
fortiori.  The plans (``explain``), ``FASTATTN_ISA`` and the gate (a forked
child, a process with a small sigaltstack) are tested in child processes.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastattn
from fastattn import _core
from support import (ISA_COMBOS, AttentionRefs, IsaCase, VarlenRefs, attention_case,
                     check_isa_path, make_mask, make_qkv, plan_kernel_varlen, relayout)
from support.child import child_env
from support.matrix import (MATRIX_PATHS, bfloat16, exact_oracle, matrix_oracle,
                            matrix_reference_for)

BF16 = bfloat16()
MATRIX_AVAILABLE = [p for p in MATRIX_PATHS if p in _core.isa_available()]
NO_MATRIX = ("this CPU runs neither the AMX tiles nor their emulation (amx_emu needs "
             "AVX-512 with AVX512-BF16)")
NO_BF16 = "bfloat16 needs the optional ml_dtypes package (pip install ml_dtypes)"


def _dtypes():
    return [np.dtype(np.float16)] + ([BF16] if BF16 is not None else [])


def _variant_cases(rng, dtype, add):
    """Every variant on prefill shapes (16+ query rows per kv head)."""
    q, k, v = make_qkv(rng, (2, 4), 37, 300, 64, hkv=2, dtype=dtype)
    add("plain", q, k, v)
    add("causal", q, k, v, causal=True)
    add("top_left", q, k, v, causal="top_left")
    add("bool_mask", q, k, v, mask=make_mask(rng, "bool", (2, 1, 37, 300), 0.6))
    add("add_mask", q, k, v, mask=make_mask(rng, "add32", (37, 300), 0.6), causal=True)
    add("window", q, k, v, window=(40, 7))
    add("local_causal", q, k, v, causal=True, window=(64, 0))
    add("alibi", q, k, v, alibi_slopes=[0.5, 0.25, 0.1, -0.05])
    add("alibi_bh", q, k, v, alibi_slopes=rng.uniform(0, 0.3, (2, 4)), causal=True)
    add("softcap", q, k, v, softcap=2.0)
    add("kv_lengths", q, k, v, kv_lengths=[0, 190], causal=True)
    add("all", q, k, v, kv_lengths=[300, 75], window=(30, 30), softcap=4.0,
        alibi_slopes=[0.1, 0.1, 0.2, 0.2], mask=make_mask(rng, "bool", (37, 300), 0.9))
    # causal with more queries than keys: rows before the keys see nothing
    qt, kt, vt = make_qkv(rng, (1, 2), 80, 33, 32, dtype=dtype)
    add("causal_nq_gt_nk", qt, kt, vt, causal=True)
    add("top_left_nq_gt_nk", qt, kt, vt, causal="top_left")
    # odd sizes and head dims, Dv != D, MQA
    for nq, nk, d, dv in [(16, 1, 8, 8), (17, 33, 40, 24), (65, 129, 80, 16),
                          (33, 257, 128, 128), (50, 70, 3, 5)]:
        qo, ko, vo = make_qkv(rng, (1, 4), nq, nk, d, dv=dv, hkv=1, dtype=dtype)
        add(f"odd_{nq}x{nk}x{d}x{dv}", qo, ko, vo, causal=True)
    for lay in ("transposed", "strided", "negative"):
        add(lay, *(relayout(a, lay) for a in (q, k, v)), causal=True)
    add("no_keys", q, k[..., :0, :], v[..., :0, :])
    # decode shapes stay on the vector kernels
    qd, kd, vd = make_qkv(rng, (1, 8), 1, 600, 64, hkv=2, dtype=dtype)
    add("decode", qd, kd, vd, causal=True)


def _varlen_case(name, rng, dtype, oracle):
    """A packed batch through attention_varlen (lengths 0, 20, 90)."""
    lq, lk, h, hkv, d = [40, 0, 90], [20, 5, 130], 4, 2, 32
    q = rng.standard_normal((sum(lq), h, d)).astype(dtype)
    k = rng.standard_normal((sum(lk), hkv, d)).astype(dtype)
    v = rng.standard_normal((sum(lk), hkv, d)).astype(dtype)
    cq, ck = np.cumsum([0] + lq), np.cumsum([0] + lk)
    cache = {}

    def run():
        return fastattn.attention_varlen(q, k, v, cq, ck, causal=True, return_lse=True)

    def check(res):
        if "refs" not in cache:
            cache["refs"] = VarlenRefs(q, k, v, cq, ck, per_sequence=oracle(dtype),
                                       causal=True)
        cache["refs"].check(*res)

    return IsaCase(name, run, check, plan=lambda: plan_kernel_varlen(q, k, v, cq, ck))


def _bf16x3_case(name, q, k, v, **kw):
    """float32, precision="bf16x3": max error against float64 at most 1/50
    of the plain bfloat16 computation's (out and lse)."""
    cache = {}

    def run():
        return fastattn.attention(q, k, v, return_lse=True, precision="bf16x3", **kw)

    def check(res):
        if "ref" not in cache:
            from fastattn import reference
            q64, k64, v64 = (a.astype(np.float64) for a in (q, k, v))
            cache["ref"] = reference.attention(q64, k64, v64, return_lse=True, **kw)
            cache["bf16"] = matrix_reference_for(BF16)(q, k, v, return_lse=True, **kw)
        for i, name in enumerate(("out", "lse")):
            exact, plain = cache["ref"][i], cache["bf16"][i]
            err = np.max(np.abs(res[i].astype(np.float64) - exact))
            budget = np.max(np.abs(plain.astype(np.float64) - exact)) / 50
            assert err <= budget, (f"{name}: bf16x3 error {err:.3g} exceeds 1/50 of plain "
                                   f"bf16's ({budget:.3g})")

    return IsaCase(name, run, check, reduced=True)


def isa_cases(oracle=exact_oracle):
    rng = np.random.default_rng(1111)
    cases = []

    def adder(prefix, fn=None, **extra):
        def add(name, *args, **kw):
            cases.append(attention_case(f"{prefix}/{name}", *args, fn=fn, oracle=oracle,
                                        **extra, **kw))
        return add

    for dtype in _dtypes():
        _variant_cases(rng, dtype, adder(dtype.name))
        cases.append(_varlen_case(f"{dtype.name}/varlen", rng, dtype, oracle))
    if BF16 is None:
        return cases
    # float32 in the reduced modes
    _variant_cases(rng, np.float32, adder("f32_bf16", fn=matrix_reference_for(BF16),
                                          precision="bf16"))
    for nq, nk, d in [(64, 256, 64), (100, 300, 128), (37, 90, 32)]:
        q, k, v = make_qkv(rng, (1, 2), nq, nk, d)
        cases.append(_bf16x3_case(f"f32_bf16x3/{nq}x{nk}x{d}", q, k, v))
        cases.append(_bf16x3_case(f"f32_bf16x3/{nq}x{nk}x{d}_causal", q, k, v, causal=True))
    return cases


@pytest.mark.parametrize("isa, threads", ISA_COMBOS)
def test_every_isa_path(isa_runs, isa, threads):
    # the reference (at the matrix precision on the matrix paths), the
    # scalar path where it applies, the same bits at 1 and 2 threads
    check_isa_path(isa_runs, "test_matrix", isa, threads)


def test_a_matrix_path_is_tested():
    if not MATRIX_AVAILABLE:
        pytest.skip(NO_MATRIX)
    assert "amx_emu" in MATRIX_AVAILABLE


def test_half_rule_follows_the_plan_not_the_path(rng):
    """The matrix oracle and the P-rounding slack of the 16-bit rule apply
    to results of the matrix kernel only: a decode shape on a matrix path
    runs the few-row kernel, which keeps P in float32, and is held to the
    plain rule.  Cases without a recorded plan count as the path says."""
    from support import isa as harness

    res = (np.zeros((2, 3), np.float16), np.zeros(2, np.float32))
    assert harness._matrix_operand("amx_emu", "rows", res) is None
    assert harness._matrix_operand("amx", "tile", res) is None
    assert harness._matrix_operand("amx_emu", "matrix", res) == np.float16
    assert harness._matrix_operand("amx_emu", None, res) == np.float16
    assert harness._matrix_operand("avx2", None, res) is None
    assert harness._matrix_operand("amx_emu", "matrix", res[1:]) is None
    q, k, v = make_qkv(rng, (1, 2), 1, 50, 32, dtype=np.float16)
    assert not AttentionRefs(q, k, v, kernel="rows").p_rounded
    assert AttentionRefs(q, k, v, kernel="matrix").p_rounded
    planned = fastattn.explain(q, k, v)["kernel"] == "matrix"
    assert AttentionRefs(q, k, v).p_rounded == planned


def test_oracles_are_chosen_by_dtype_and_passed_explicitly(rng):
    """The harness builds a module's matrix-kernel checks with
    isa_cases(oracle=matrix_oracle): 16-bit inputs get the plain
    computation at their precision (P rounded, so no slack on top), other
    dtypes and the float64 reference stay exact; fastattn.reference itself
    is never replaced."""
    from fastattn import reference

    exact_fn = reference.attention
    q, k, v = make_qkv(rng, (1, 2), 20, 40, 16, dtype=np.float16)
    assert exact_oracle(np.float16) is None and matrix_oracle(np.float32) is None
    plain = matrix_oracle(np.float16)
    exact, rounded = AttentionRefs(q, k, v, kernel="matrix"), AttentionRefs(q, k, v, fn=plain)
    np.testing.assert_array_equal(exact.o64, rounded.o64)
    assert not np.array_equal(exact.on, rounded.on)
    assert exact.p_rounded and not rounded.p_rounded
    assert reference.attention is exact_fn


# ---------------------------------------------------------------- plans

def _on_path(path):
    # "amx" in isa_available() is cpuid and XCR0 only; the tiles also need
    # the kernel's permission, which amx_status() asks for
    if path not in _core.isa_available() or (path == "amx" and
                                             not _core.amx_status()["available"]):
        pytest.skip(NO_MATRIX if path == "amx_emu" else "the AMX tiles are not usable here "
                    f"({_core.amx_status()['reason']})")
    before = _core.get_isa()
    _core.set_isa(path)
    return before


@pytest.mark.parametrize("path", MATRIX_PATHS)
def test_plans_on_a_matrix_path(rng, path):
    before = _on_path(path)
    try:
        if BF16 is None:
            pytest.skip(NO_BF16)
        for lead, hkv, nq in [((1, 8), 8, 16), ((2, 4), 2, 8), ((1, 4), 4, 300)]:
            q, k, v = (a.astype(BF16) for a in make_qkv(rng, lead, nq, 64, 64, hkv=hkv))
            plan = fastattn.explain(q, k, v, causal=True)
            # 16 or more query rows per kv head (GQA groups count together)
            assert plan["kernel"] == "matrix" and plan["kernel_isa"] == path, plan
            assert plan["precision"] is None
        qd, kd, vd = (a.astype(BF16) for a in make_qkv(rng, (1, 8), 1, 500, 64, hkv=2))
        assert fastattn.explain(qd, kd, vd)["kernel"] == "rows"
        q, k, v = make_qkv(rng, (1, 4), 64, 128, 64)
        assert fastattn.explain(q, k, v)["kernel"] == "tile"
        for mode in ("bf16", "bf16x3"):
            plan = fastattn.explain(q, k, v, precision=mode)
            assert (plan["kernel"], plan["precision"], plan["precision_note"]) == \
                ("matrix", mode, None), plan
            plan = fastattn.explain(q[..., :1, :], k, v, precision=mode)
            assert plan["kernel"] == "rows" and plan["precision"] == "highest"
            assert "decode shapes" in plan["precision_note"]
    finally:
        _core.set_isa(before)


@pytest.mark.parametrize("mode", ["bf16", "bf16x3"])
def test_weights_of_a_reduced_call_on_the_matrix_path(rng, mode):
    before = _on_path("amx_emu")
    try:
        q, k, v = make_qkv(rng, (1, 2), 48, 64, 32)
        out, w = fastattn.attention(q, k, v, return_weights=True, precision=mode)
        assert w.tobytes() == fastattn.attention_weights(q, k).tobytes()
        assert out.tobytes() == fastattn.attention(q, k, v, precision=mode).tobytes()
    finally:
        _core.set_isa(before)


def test_packing_a_huge_broadcast_key_range_is_refused(rng):
    # stride-0 K and V cost no memory, so nothing bounds the keys: the
    # packed copy of 2^57 keys (2^64 bytes and more) must be refused, not
    # wrap around and be written past a small allocation
    if BF16 is None:
        pytest.skip(NO_BF16)
    before = _on_path("amx_emu")
    try:
        q = rng.standard_normal((1, 1, 32, 16)).astype(BF16)
        k, v = (np.broadcast_to(rng.standard_normal((1, 1, 1, 16)).astype(BF16),
                                (1, 1, 2 ** 57, 16)) for _ in range(2))
        assert fastattn.explain(q, k, v)["kernel"] == "matrix"
        with pytest.raises(MemoryError):
            fastattn.attention(q, k, v)
    finally:
        _core.set_isa(before)

# ---------------------------------------------------------------- FASTATTN_ISA and the gate

def _run(code, **env):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                       env=child_env(**env), capture_output=True, text=True, timeout=600)
    return r


_REPORT = """
    import json, numpy as np, fastattn
    from fastattn import _core
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 4, 48, 64)).astype(np.float32) for _ in range(3))
    info = fastattn.info()
    cfg = fastattn.show_config("dicts")["matrix_unit"]
    print(json.dumps({"isa": info["isa"], "override": info["isa_override"],
                      "amx": info["amx_available"], "kernels": cfg["matrix_kernels"],
                      "plan": fastattn.explain(q, k, v, precision="bf16")}))
"""


def test_fastattn_isa_forces_the_emulation():
    if "amx_emu" not in MATRIX_AVAILABLE:
        pytest.skip(NO_MATRIX)
    import json
    r = _run(_REPORT, FASTATTN_ISA="amx_emu")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["isa"] == "amx_emu" and rep["override"] == "amx_emu"
    assert "emulation" in rep["kernels"]
    assert rep["plan"]["kernel"] == "matrix" and rep["plan"]["precision"] == "bf16"


def test_fastattn_isa_forbids_the_matrix_unit():
    # a forced vector path never uses the tiles, wherever they exist
    import json
    r = _run(_REPORT, FASTATTN_ISA="scalar")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["isa"] == "scalar" and rep["override"] == "scalar"
    assert rep["kernels"] == "none: the scalar path has no matrix kernels"
    assert rep["plan"]["kernel"] == "tile" and rep["plan"]["precision"] == "highest"


def test_fastattn_isa_amx_where_the_tiles_are_missing():
    status = _core.amx_status()
    r = _run("import fastattn; print(fastattn.info()['isa'])", FASTATTN_ISA="amx")
    if "amx" in _core.isa_available():
        assert r.returncode == 0 and r.stdout.strip() == "amx", r.stderr
    else:
        assert not status["available"] and status["reason"]
        assert r.returncode != 0 and "FASTATTN_ISA" in r.stderr and "amx" in r.stderr


def test_the_reports_never_request_the_tile_permission():
    # fastattn info, info() and show_config only read the permission: in a
    # fresh process that made no call, the gate has still not run after
    # them, and the report without request agrees with the gate's answer
    # wherever no request is needed to give it
    import json
    r = _run("""
        import json, fastattn
        from fastattn import _core
        fastattn.info(); fastattn.show_config("dicts")
        before = _core.amx_status(request=False)
        after = _core.amx_status()
        print(json.dumps([before, after]))
    """, FASTATTN_ISA="")
    assert r.returncode == 0, r.stderr
    before, after = json.loads(r.stdout)
    if not after["compiled"] or after["permission"] in ("not requested",
                                                        "not available (not Linux)"):
        # no request was due: CPU or OS lack the tiles, or no real build
        assert before == after
    else:
        # a CPU with AMX: the reports left the permission to the call
        assert before["permission"] in ("not requested yet", "granted (held by the process)")
        assert not before["available"] or before["permission"].startswith("granted")


def test_default_never_picks_the_emulation():
    assert _core.get_isa() != "amx_emu" or os.environ.get("FASTATTN_ISA") == "amx_emu"


# A child that checks one prefill call: on the path chosen at import, its
# result must be that of the vector path (no tiles) or of the emulation
# (tiles), and within the reference's rule; prints the gate's answer.
_CHECK_CALL = """
    import json, numpy as np, fastattn, ml_dtypes
    from fastattn import _core
    from support import AttentionRefs
    from support.matrix import matrix_reference_for
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((1, 4, 64, 64)).astype(ml_dtypes.bfloat16)
               for _ in range(3))

    def check():
        status = _core.amx_status()
        plan = fastattn.explain(q, k, v, causal=True)
        out, lse = fastattn.attention(q, k, v, causal=True, return_lse=True)
        twin = "amx_emu" if plan["kernel"] == "matrix" else "avx512"
        before = _core.get_isa()
        _core.set_isa(twin)
        same = fastattn.attention(q, k, v, causal=True).tobytes() == out.tobytes()
        _core.set_isa(before)
        fn = matrix_reference_for(q.dtype) if plan["kernel"] == "matrix" else None
        AttentionRefs(q, k, v, fn=fn, causal=True).check(out, lse)
        return {"available": bool(status["available"]), "reason": status["reason"],
                "kernel": plan["kernel"], "kernel_isa": plan["kernel_isa"], "same": same}
"""


def _gate_child(body, timeout=600):
    if "amx_emu" not in MATRIX_AVAILABLE or BF16 is None:
        pytest.skip(NO_MATRIX if BF16 is not None else NO_BF16)
    import json
    # the child runs on the path chosen at import, whatever FASTATTN_ISA
    # this run has
    r = _run(textwrap.dedent(_CHECK_CALL) + textwrap.dedent(body), FASTATTN_ISA="")
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _expect_gate(rep, refused_by=None):
    # the tiles granted to this process (not only present on the CPU)
    tiles = _core.amx_status()["available"]
    if tiles and refused_by is None:
        # the tiles: the plan uses them (the child checked the result at the
        # matrix precision; "same" tells whether it has the emulation's bits)
        assert rep["available"] and rep["kernel"] == "matrix" and rep["kernel_isa"] == "amx"
        return
    assert not rep["available"] and rep["reason"] and rep["reason"] != "available"
    if tiles:
        assert refused_by in rep["reason"], rep
    # the vector path ran: the bits of the forced avx512 path
    assert rep["kernel"] == "tile" and rep["same"], rep


def test_forked_child_keeps_working():
    rep = _gate_child("""
        import os
        parent = check()               # the gate and the thread pool exist
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.write(w, json.dumps(check()).encode())
            finally:
                os._exit(0)
        os.close(w)
        data = os.read(r, 65536)
        assert os.waitpid(pid, 0)[1] == 0
        child = json.loads(data)
        assert parent == child, (parent, child)
        print(json.dumps(child))
    """)
    _expect_gate(rep)


def test_small_sigaltstack_keeps_working():
    # an alternate signal stack installed before the first call: 8 KB, room
    # for a signal frame without tile data (AVX-512 state included) and
    # Python's C handler, but no frame carrying the 8 KB of tile data fits.
    # Not sized from AT_MINSIGSTKSZ: on an AMX machine that already counts
    # the tile data, and the permission would be granted.  The kernel then
    # refuses the tile permission, the gate says so and the vector path
    # runs; a signal delivered on that stack still works
    rep = _gate_child("""
        import ctypes, os, signal
        libc = ctypes.CDLL(None, use_errno=True)
        size = 8192
        class StackT(ctypes.Structure):
            _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int),
                        ("ss_size", ctypes.c_size_t)]
        buf = ctypes.create_string_buffer(size)
        st = StackT(ctypes.cast(buf, ctypes.c_void_p), 0, size)
        assert libc.sigaltstack(ctypes.byref(st), None) == 0, ctypes.get_errno()
        got = []
        signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
        rep = check()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert got == [1]
        off = StackT(None, 2, 0)                            # SS_DISABLE
        assert libc.sigaltstack(ctypes.byref(off), None) == 0
        print(json.dumps(rep))
    """)
    _expect_gate(rep, refused_by="sigaltstack")
