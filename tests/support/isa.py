"""The per-ISA child-process harness: one place that runs test cases on
every instruction-set path of the core, at 1 and 2 threads.

FASTATTN_ISA is read when fastattn is imported, so each forced path runs in
its own interpreter.  A case module is a test module that defines
``isa_cases()`` (a deterministic list of ``IsaCase``) and has a test using
the session fixture ``isa_runs``; a module with 16-bit cases checked against
the reference takes ``isa_cases(oracle=...)``, the reference function by
input dtype (support/matrix.py: ``exact_oracle`` by default,
``matrix_oracle`` for the matrix kernels' results), and builds its checks
on it.  ``run_all_paths`` starts one child per
(path, thread count) (two at a time: the machine may have two cores), which
imports the case modules, runs every case and pickles the results; a crash fails that path's tests, not the run, and
names the case that was running.  ``check_isa_path`` then checks, in the
parent, the results of one module on one path:

* ``"reference"``: each case's own check (the float64 reference under the
  tolerance rule, computed once in the parent for all paths);
* ``"scalar"``: float32/float64 results agree with the scalar path at 1
  thread: normalized MSE ``sum((a - b)**2) / sum(b**2)`` <= 1e-10 / 1e-24,
  with the same NaN and infinity positions;
* ``"threads"``: at 2 threads, bitwise equal to the same path at 1 thread.

``run_pytest_on_path`` runs a whole test file in a child pytest on one
forced path instead.  The paths are those ``fastattn._core`` reports as
available at run time; "amx_emu" (the matrix kernels on the tile
emulation) is one of them wherever its vector part runs, so every case
module also runs on the matrix kernels.

The matrix kernels (support/matrix.py) compute 16-bit operands with P
rounded to the operand type, which FlashAttention's rule at that precision
measures against the plain computation at the same precision.  Which
kernel ran is the plan's: a case that gives ``plan`` (``attention_case``
does: explain of its call) has the plan's kernel recorded in the child;
other cases count as matrix-kernel cases on a matrix path.  A case with
16-bit results from the matrix kernel is checked by the case built with
``isa_cases(oracle=matrix_oracle)`` (its references computed anew), and it
skips the "scalar" comparison (its float32 lse
carries the rounded P too); 16-bit decode cases on a matrix path run the
few-row kernel, which keeps P in float32, and get the plain rule.  A case that runs reduced precision on
purpose (``IsaCase(..., reduced=True)``, e.g. float32 with
``precision="bf16"``) skips the "scalar" comparison on every path.
"""

import importlib.util
import inspect
import os
import pickle
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fastattn import _core

from .arrays import random_variant_problem
from .child import TESTS_DIR, child_env
from . import compare
from .compare import AttentionRefs, is_half, plan_kernel
from .matrix import MATRIX_PATHS, exact_oracle, matrix_oracle

# FASTATTN_TEST_SKIP_PATHS (space-separated path names) leaves paths out of
# the harness: the sanitizer run drops "amx_emu", whose tile emulation is
# slow under ASan and is covered there by tools/check_amx.sh's own ASan
# build of the matrix kernels.
_SKIP_PATHS = set(os.environ.get("FASTATTN_TEST_SKIP_PATHS", "").split())
ISA_NAMES = tuple(p for p in _core.isa_available() if p not in _SKIP_PATHS)
ISA_THREADS = (1, 2)
ISA_COMBOS = [(i, t) for i in ISA_NAMES for t in ISA_THREADS]
# module name -> file of the case modules run in this process
_CASE_PATHS = {}
ISA_NMSE_MAX = {"float32": 1e-10, "float64": 1e-24}
CHECKS = ("reference", "scalar", "threads")
CHILD_TIMEOUT = 900  # seconds per child


class IsaCase:
    """One problem of the per-ISA runs.

    ``run()`` computes fastattn's results (an array or a tuple of arrays)
    in the child; ``check(results)`` raises AssertionError if they are
    wrong (in the parent; it may cache its reference); ``plan()``, if
    given, returns the kernel family of the call (``fastattn.explain``'s
    ``kernel``, in the child).
    """

    def __init__(self, name, run, check, reduced=False, plan=None):
        self.name, self.run, self.check = name, run, check
        self.reduced, self.plan = reduced, plan


def attention_case(name, q, k, v, fn=None, oracle=exact_oracle, **kw):
    """IsaCase of fastattn.attention(q, k, v, return_lse=True, **kw),
    checked against ``fn`` (default ``oracle(q.dtype)``, the reference for
    the exact oracle; e.g. support.matrix.matrix_reference_for(op) for a
    float32 case with ``precision="bf16"``, which is then a reduced case)."""
    fn = oracle(q.dtype) if fn is None else fn
    cache = {}
    ref_kw = {key: a for key, a in kw.items() if key != "precision"}

    def run():
        import fastattn
        return fastattn.attention(q, k, v, return_lse=True, **kw)

    def plan():
        return plan_kernel(q, k, v, **kw)

    def check(res):
        if "refs" not in cache:
            cache["refs"] = AttentionRefs(q, k, v, fn=fn, **ref_kw)
        out, lse = res
        cache["refs"].check(out, lse)

    return IsaCase(name, run, check, reduced=kw.get("precision", "highest") != "highest",
                   plan=plan)




def module_name(path):
    """A case module's name: its file name without .py (as pytest's default
    import mode names test modules)."""
    return os.path.splitext(os.path.basename(path))[0]


def load_case_module(name):
    """The case module ``name`` (the one pytest imported, if it did)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _CASE_PATHS[name])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def child_main():
    """Child: run the cases of the module files in FASTATTN_TEST_MODULES on
    the forced path and pickle the results (or each case's exception)."""
    import fastattn

    forced = os.environ["FASTATTN_ISA"]
    assert fastattn.info()["isa"] == forced, (forced, fastattn.info()["isa"])
    threads = int(os.environ["FASTATTN_TEST_THREADS"])
    fastattn.set_num_threads(threads)
    if fastattn.info()["openmp"]:
        assert fastattn.get_num_threads() == threads
    saved, errors, kernels = {}, {}, {}
    for path in os.environ["FASTATTN_TEST_MODULES"].split(os.pathsep):
        mod = module_name(path)
        _CASE_PATHS[mod] = path
        try:
            cases = load_case_module(mod).isa_cases()
        except Exception:
            errors[mod] = traceback.format_exc(limit=5)
            continue
        for c in cases:
            key = f"{mod}::{c.name}"
            print(f"@@start {key}", flush=True)
            try:
                res = c.run()
            except Exception as e:
                errors[key] = f"{type(e).__name__}: {e}"
                continue
            res = res if isinstance(res, tuple) else (res,)
            saved[key] = tuple(np.array(a, copy=True) for a in res)
            if c.plan is not None:
                kernels[key] = c.plan()
    with open(os.environ["FASTATTN_TEST_DUMP"], "wb") as f:
        pickle.dump({"saved": saved, "errors": errors, "kernels": kernels}, f)
    print("@@done", flush=True)


def run_child(isa, threads, paths, dump):
    """Run the cases of the module files ``paths`` on one path in a child;
    returns its result (return code, end of stderr, the case it had
    started, and what child_main pickled if it finished)."""
    # FASTATTN_BF16_TILE=pairs: the bfloat16 tile kernel on vdpbf16ps pairs
    # wherever the CPU has AVX512-BF16 (by default only AMD uses it; the
    # rest of the suite runs the default)
    env = child_env(FASTATTN_ISA=isa, FASTATTN_TEST_THREADS=str(threads),
                    FASTATTN_TEST_DUMP=str(dump), FASTATTN_TEST_MODULES=os.pathsep.join(paths),
                    FASTATTN_BF16_TILE="pairs")
    env.setdefault("OMP_WAIT_POLICY", "passive")  # two children share the cores
    r = subprocess.run([sys.executable, "-c", "from support import isa; isa.child_main()"],
                       env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT,
                       cwd=TESTS_DIR)
    started = [ln for ln in r.stdout.splitlines() if ln.startswith("@@start ")]
    res = {"returncode": r.returncode, "stderr": r.stderr[-3000:],
           "modules": tuple(module_name(p) for p in paths),
           "last_started": started[-1].split(None, 1)[1] if started else None}
    if r.returncode == 0 and "@@done" in r.stdout:
        with open(dump, "rb") as f:
            res.update(pickle.load(f))
    return res


def run_all_paths(tmp, paths):
    """{(isa, threads): child result} of the case module files ``paths``
    for every available path and thread count, two children at a time."""
    paths = sorted(str(p) for p in paths)
    _CASE_PATHS.update((module_name(p), p) for p in paths)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {c: pool.submit(run_child, c[0], c[1], paths, tmp / f"{c[0]}-{c[1]}.pkl")
                   for c in ISA_COMBOS}
        return {c: f.result() for c, f in futures.items()}



def run_pytest_on_path(isa, test_file, threads=2, timeout=600):
    """Run the tests of ``test_file`` (relative to tests/) in a child
    pytest with FASTATTN_ISA forced and ``threads`` OpenMP threads; returns
    the CompletedProcess."""
    env = child_env(FASTATTN_ISA=isa, OMP_NUM_THREADS=str(threads))
    return subprocess.run(
        [sys.executable, "-m", "pytest", os.path.join(TESTS_DIR, test_file),
         "-q", "-x", "-p", "no:cacheprovider"],
        env=env, capture_output=True, text=True, timeout=timeout)


_ISA_CASES = {}
_MATRIX_CASES = {}


def module_cases(module, matrix=False):
    """``module``'s isa_cases(), drawn once in the parent (their checks
    cache the references); ``matrix``: a second copy built on
    ``matrix_oracle``, whose checks cache the references at the matrix
    precision (a module whose isa_cases takes no oracle checks without a
    reference: its one copy serves)."""
    store = _MATRIX_CASES if matrix else _ISA_CASES
    if module not in store:
        make = load_case_module(module).isa_cases
        takes = matrix and "oracle" in inspect.signature(make).parameters
        store[module] = make(oracle=matrix_oracle) if takes else make()
    return store[module]


def _matrix_operand(isa, kernel, res):
    """The 16-bit operand type of a case's results from the matrix kernel
    (``kernel`` the recorded plan's; None: the path says), else None."""
    if kernel != "matrix" and (kernel is not None or isa not in MATRIX_PATHS):
        return None
    return next((a.dtype for a in res if is_half(a.dtype)), None)


def _check_case(module, i, isa, kernel, res):
    """Case i of ``module``'s own check of its results on ``isa``.

    16-bit results of the matrix kernel are checked by the case built on
    ``matrix_oracle``, whose plain computation rounds P itself; any other
    result did not round P.  So compare.py's P-rounding slack, for checks
    that do not know the kernel, is off here (``compare.p_rounded``),
    rounding count included."""
    matrix = _matrix_operand(isa, kernel, res) is not None
    arg = res if len(res) > 1 else res[0]
    compare.p_rounded = False
    try:
        module_cases(module, matrix=matrix)[i].check(arg)
    finally:
        compare.p_rounded = None


def nmse(a, b):
    """sum((a - b)**2) / sum(b**2) over the entries finite in b, in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    fin = np.isfinite(b)
    den = np.sum(b[fin] ** 2)
    num = np.sum((a[fin] - b[fin]) ** 2)
    return num / den if den > 0 else num


def _child_ok(runs, combo, module):
    if combo not in runs:
        pytest.skip(f"this CPU or build does not support the {combo[0]} path")
    res = runs[combo]
    assert res["returncode"] == 0 and "saved" in res, (
        f"FASTATTN_ISA={combo[0]}, {combo[1]} threads: the child died (exit status "
        f"{res['returncode']}) during {res['last_started']}:\n{res['stderr']}")
    assert module in res["modules"], f"{module} was not among the modules run on each path"
    assert module not in res["errors"], f"{module}.isa_cases() failed:\n{res['errors'][module]}"
    return res


def _against_scalar(res, base, worst):
    for i, (a, b) in enumerate(zip(res, base)):
        assert a.shape == b.shape and a.dtype == b.dtype, f"result {i}: shape/dtype"
        assert np.array_equal(np.isnan(a), np.isnan(b)), (
            f"result {i}: NaN positions differ from the scalar path")
        if a.dtype.name in ISA_NMSE_MAX:
            inf = np.isinf(b)
            assert np.array_equal(np.isinf(a), inf) and np.array_equal(a[inf], b[inf]), (
                f"result {i}: infinities differ from the scalar path")
            e = nmse(a, b)
            worst[a.dtype.name] = max(worst.get(a.dtype.name, 0.0), e)
            assert e <= ISA_NMSE_MAX[a.dtype.name], (
                f"result {i}: normalized MSE {e:.3g} against the scalar path at 1 thread")


def check_isa_path(runs, module, isa, threads, checks=CHECKS):
    """The ``checks`` (see the module docstring) of one module's cases on
    one (path, thread count).  Returns the worst normalized MSE against
    the scalar path per dtype."""
    got = _child_ok(runs, (isa, threads), module)
    base = _child_ok(runs, ("scalar", 1), module) if "scalar" in checks else None
    one = (_child_ok(runs, (isa, 1), module)
           if "threads" in checks and threads != 1 else None)
    cases = module_cases(module)
    assert cases, f"{module} has no isa cases"
    fails, worst = [], {}
    for i, c in enumerate(cases):
        key = f"{module}::{c.name}"
        try:
            if key in got["errors"]:
                raise AssertionError(f"raised {got['errors'][key]}")
            res = got["saved"][key]
            kernel = got["kernels"].get(key)
            if "reference" in checks:
                _check_case(module, i, isa, kernel, res)
            if base is not None and not (c.reduced or _matrix_operand(isa, kernel, res)):
                _against_scalar(res, base["saved"][key], worst)
            if one is not None:
                for i, (a, b) in enumerate(zip(res, one["saved"][key])):
                    assert a.tobytes() == b.tobytes(), (
                        f"result {i}: differs from the same path at 1 thread")
        except AssertionError as e:
            fails.append(f"{c.name}: {str(e).strip()[:700]}")
    assert not fails, (f"FASTATTN_ISA={isa}, {threads} threads: {len(fails)} of {len(cases)} "
                       f"cases of {module} fail ({', '.join(checks)}):\n"
                       + "\n".join(fails[:6]))
    return worst


def random_variant_cases(seed, n, prefix="random", oracle=exact_oracle, **kwargs):
    """n IsaCase of random_variant_problem, reproducible from seed, checked
    against ``oracle`` (see attention_case)."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        q, k, v, kw = random_variant_problem(rng, **kwargs)
        cases.append(attention_case(f"{prefix}{i}", q, k, v, oracle=oracle, **kw))
    return cases
