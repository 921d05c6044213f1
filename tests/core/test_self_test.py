"""The self-test of the AMX tiles (csrc/amx/tile_canary.c, docs/amx.md).

Before the first call of a process that would run the real tiles, the
matrix kernels run once in a forked child and are held to the
matrix-precision rule against the vector path; a fault, a hang or a
mismatch turns the matrix unit off for the process, with one
RuntimeWarning, and show_config, ``fastattn info`` and explain say why.

The canary's subject here is the tile emulation (path "amx_emu") where the
CPU runs it, and otherwise the current vector path: then the child runs the
vector kernels, so what is tested is the harness itself (the fork, the
wait and its timeout, the checks, the injected faults and the reports).
The process-wide decision is taken through the test hook
``_core.tile_self_test_decide`` in child interpreters, since each process
takes it once; on a CPU with usable tiles the first-use path itself is
tested with FASTATTN_SELF_TEST_INJECT.
"""

import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastattn
from fastattn import _core
from support.child import child_env

VECTOR = next(p for p in ("avx512", "avx2", "neon", "scalar") if p in _core.isa_available())
NO_EMU = ("this CPU does not run the tile emulation (amx_emu needs AVX-512 with AVX512-BF16); "
          "the harness is tested on the vector path")
SUBJECTS = [pytest.param("amx_emu", marks=pytest.mark.skipif(
                "amx_emu" not in _core.isa_available(), reason=NO_EMU)),
            pytest.param(VECTOR, id="vector")]
CASE = "the bfloat16 kernel on the causal (bottom-right) case"


@pytest.mark.parametrize("subject", SUBJECTS)
def test_a_canary_passes(subject):
    res = _core.tile_self_test(subject)
    assert res["passed"], res["report"]
    # the 8 attention cases and the linear layer's 2 (bfloat16, int8)
    assert res["report"].startswith("passed: 10 cases"), res["report"]
    assert res["ms"] > 0


@pytest.mark.parametrize("subject", SUBJECTS)
@pytest.mark.parametrize("inject, expect", [
    pytest.param("mismatch", "the output differs from the vector path's by 0.5", id="mismatch"),
    pytest.param("nan", "the output differs from the vector path's by nan", id="nan"),
    pytest.param("sigill", "killed by signal 4 (SIGILL)", id="sigill"),
    pytest.param("sigsegv", "killed by signal 11 (SIGSEGV)", id="sigsegv"),
    pytest.param("sigbus", "(SIGBUS)", id="sigbus"),
    pytest.param("hang", "no result within 0.5 s (the child process was killed)", id="hang"),
])
def test_an_injected_failure_is_contained_and_reported(subject, inject, expect):
    # only the hang needs the timeout; the others must not meet it, however
    # slow the machine (a sanitizer build, valgrind)
    res = _core.tile_self_test(subject, inject, timeout=0.5 if inject == "hang" else 120)
    assert not res["passed"]
    assert res["report"].startswith(CASE) and expect in res["report"], res["report"]


def test_the_arguments_are_checked():
    with pytest.raises(ValueError, match="subject must be one of"):
        _core.tile_self_test("tiles")
    with pytest.raises(ValueError, match="inject must be one of"):
        _core.tile_self_test(VECTOR, "boom")
    with pytest.raises(ValueError, match="timeout must be > 0"):
        _core.tile_self_test(VECTOR, timeout=0)
    if "amx" not in _core.isa_available():
        with pytest.raises(ValueError, match="'amx' does not run on this CPU"):
            _core.tile_self_test("amx")


def _child(code, **env):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=child_env(**env),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"child failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_nothing_runs_at_import_or_in_the_reports():
    out = _child("""
        import fastattn
        from fastattn import _core
        fastattn.show_config("dicts")
        fastattn.show_config(file=open("/dev/null", "w"))
        print(_core.tile_self_test_status()["state"])
    """)
    assert out.strip() == "not run"


@pytest.mark.parametrize("inject", ["mismatch", "sigsegv"])
def test_a_failed_decision_warns_once_and_every_report_names_it(inject):
    out = _child(f"""
        import io, json, subprocess, sys, warnings
        import numpy as np
        import fastattn
        from fastattn import _core
        from fastattn.cli import main
        assert _core.tile_self_test_decide({VECTOR!r}, {inject!r}) == "failed"
        rng = np.random.default_rng(0)
        q, k, v = (rng.standard_normal((1, 2, 40, 16)).astype(np.float16) for _ in range(3))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = fastattn.attention(q, k, v, causal=True)
            b = fastattn.attention(q, k, v, causal=True)
        ref = fastattn.reference.attention(*(x.astype(np.float64) for x in (q, k, v)), causal=True)
        report = _core.tile_self_test_status()["report"]
        buf = io.StringIO()
        fastattn.show_config(file=buf)
        print(json.dumps(dict(
            warnings=[(w.category.__name__, str(w.message), w.filename) for w in caught],
            err=float(np.abs(a.astype(np.float64) - ref).max()), same=bool((a == b).all()),
            report=report, text=buf.getvalue(),
            mu=fastattn.show_config("dicts")["matrix_unit"],
            note=fastattn.explain(q, k, v, causal=True)["matrix_note"],
            note32=fastattn.explain(q.astype(np.float32), k.astype(np.float32),
                                    v.astype(np.float32))["matrix_note"],
            note32bf=fastattn.explain(q.astype(np.float32), k.astype(np.float32),
                                      v.astype(np.float32), precision="bf16")["matrix_note"])))
    """)
    import json
    res = json.loads(out.strip().splitlines()[-1])
    report = res["report"]
    assert report.startswith(CASE), report
    assert len(res["warnings"]) == 1, res["warnings"]
    category, message, filename = res["warnings"][0]
    assert category == "RuntimeWarning" and "failed their self-test" in message
    assert report in message and filename == "<string>"
    assert res["same"] and res["err"] < 1e-2          # the vector path's answer
    assert res["mu"]["self_test"].startswith("failed in ") and report in res["mu"]["self_test"]
    assert "self-test: failed in " in res["text"] and report in res["text"]
    assert report in res["note"] and report in res["note32bf"]
    assert res["note32"] is None                      # float32 at "highest" wants no tiles


def test_fastattn_info_names_the_failure():
    out = _child(f"""
        import sys
        from fastattn import _core
        from fastattn.cli import main
        assert _core.tile_self_test_decide({VECTOR!r}, "sigill") == "failed"
        sys.exit(main(["info"]))
    """)
    assert "self-test: failed in " in out and "(SIGILL)" in out, out


def test_racing_first_callers_run_one_canary():
    """A second caller waits for the canary under way and takes its result:
    the first one hangs and fails; a canary of its own would pass."""
    out = _child(f"""
        import threading, time
        from fastattn import _core
        states = {{}}
        def decide(name, inject, timeout):
            states[name] = _core.tile_self_test_decide({VECTOR!r}, inject, timeout)
        a = threading.Thread(target=decide, args=("a", "hang", 3.0))
        a.start()
        time.sleep(1.0)  # a is in its canary long before this (margin for slow builds)
        t = time.perf_counter()
        decide("b", "none", 10.0)
        waited = time.perf_counter() - t
        a.join()
        print(states["a"], states["b"], waited > 0.5, _core.tile_self_test_status()["report"])
    """)
    a, b, waited, *report = out.split()
    assert (a, b, waited) == ("failed", "failed", "True"), out
    assert "no result within 3 s" in " ".join(report)


def test_a_child_forked_during_the_canary_starts_undecided():
    out = _child(f"""
        import os, threading, time
        from fastattn import _core
        a = threading.Thread(target=_core.tile_self_test_decide, args=({VECTOR!r}, "hang", 3.0))
        a.start()
        time.sleep(1.0)
        pid = os.fork()
        if pid == 0:
            ok = _core.tile_self_test_status()["state"] == "not run" and \\
                _core.tile_self_test_decide({VECTOR!r}, "none", 10.0) == "passed"
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        a.join()
        print(os.waitstatus_to_exitcode(status), _core.tile_self_test_status()["state"])
    """)
    assert out.split() == ["0", "failed"], out


def _signal_masks():
    """The caught and blocked signal masks of this process and thread."""
    with open("/proc/self/status") as f:
        proc = dict(line.split(":\t", 1) for line in f if ":\t" in line)
    with open(f"/proc/self/task/{threading.get_native_id()}/status") as f:
        task = dict(line.split(":\t", 1) for line in f if ":\t" in line)
    return proc["SigCgt"].strip(), proc["SigIgn"].strip(), task["SigBlk"].strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_the_callers_signal_handlers_and_mask_are_left_as_they_were():
    """The caller's handlers (Python's SIGINT, one for SIGUSR1, pytest's
    faulthandler for the fault signals when it is on) and its blocked mask
    are what they were after canaries that pass and that fault."""
    seen = []
    old_handler = signal.signal(signal.SIGUSR1, lambda *a: seen.append(a))
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
    try:
        before = _signal_masks()
        for inject in ("none", "sigsegv", "sigill"):
            _core.tile_self_test(VECTOR, inject, timeout=120)
        assert _signal_masks() == before
        os.kill(os.getpid(), signal.SIGUSR1)
        assert seen
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        signal.signal(signal.SIGUSR1, old_handler)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGCHLD semantics of Linux")
def test_a_caller_that_ignores_sigchld_still_gets_the_answer():
    """With SIGCHLD ignored the kernel reaps the child itself: the status is
    lost, and the flag in the shared mapping tells a finished child from
    one that died."""
    out = _child(f"""
        import signal
        from fastattn import _core
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        good = _core.tile_self_test({VECTOR!r})
        bad = _core.tile_self_test({VECTOR!r}, "sigsegv")
        print(good["passed"], bad["passed"], "|", bad["report"])
    """)
    head, report = out.split("|", 1)
    assert head.split() == ["True", "False"], out
    assert "ended without finishing" in report or "(SIGSEGV)" in report, report


@pytest.mark.skipif("amx" not in _core.isa_available(),
                    reason="the first-use path runs the canary only where the real tiles are "
                           "usable (cpuid AMX-TILE); elsewhere the decision is tested through "
                           "the test hook above")
@pytest.mark.parametrize("inject", ["none", "mismatch", "sigill"])
def test_the_first_matrix_call_on_real_tiles_runs_the_canary(inject):
    out = _child("""
        import json, warnings
        import numpy as np
        import fastattn
        from fastattn import _core
        assert _core.tile_self_test_status()["state"] == "not run"
        rng = np.random.default_rng(0)
        q, k, v = (rng.standard_normal((1, 2, 64, 64)).astype(np.float16) for _ in range(3))
        x = q.astype(np.float32), k.astype(np.float32), v.astype(np.float32)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fastattn.attention(*x, precision="bf16")
            fastattn.attention(*x, precision="bf16")
        print(json.dumps(dict(test=_core.tile_self_test_status(),
                              status=_core.amx_status(request=False),
                              kernel=fastattn.explain(*x, precision="bf16")["kernel"],
                              warnings=[str(w.message) for w in caught
                                        if "self-test" in str(w.message)])))
    """, FASTATTN_SELF_TEST_INJECT=inject)
    import json
    res = json.loads(out.strip().splitlines()[-1])
    if inject == "none":
        assert res["test"]["state"] == "passed", res
        assert res["kernel"] == "matrix" and not res["warnings"]
        assert res["test"]["ms"] < 1000
    else:
        assert res["test"]["state"] == "failed", res
        assert res["kernel"] != "matrix" and len(res["warnings"]) == 1
        assert not res["status"]["available"]
        assert res["status"]["reason"].startswith("the self-test of the tiles failed: ")


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_the_tile_peak_probes(dtype):
    """amx_peak measures TDPBF16PS (GFLOP/s) or TDPBSSD (GOP/s) only on
    tiles the gate granted, and names the reason where it cannot."""
    with pytest.raises(ValueError, match="dtype must be"):
        _core.amx_peak(dtype="float16")
    st = _core.amx_status()
    if not st["available"] or (dtype == "int8" and not st["amx_int8"]):
        with pytest.raises(RuntimeError, match="not available|no AMX-INT8"):
            _core.amx_peak(0.01, dtype=dtype)
    else:
        # at least one tile product a nanosecond: far below any real peak
        assert _core.amx_peak(0.01, dtype=dtype) > 256
