"""Threads: the thread count, calls from many Python threads, fork() after
OpenMP has run, and leaks.

* Results must be bitwise identical whatever the number of threads; the
  default thread count follows OMP_NUM_THREADS; set_num_threads checks its
  argument.
* 16 Python threads call ``fastattn.attention`` at once on different
  shapes, dtypes, causal modes, masks and ``out=``, while some of them keep
  changing the process-wide thread count with ``set_num_threads(1 or 2)``;
  every result must be bitwise equal to the one computed serially
  beforehand (results do not depend on the thread count).
* A process that has run a threaded call (so the OpenMP pool exists) forks;
  the child computes several shapes, including one large enough to use
  threads, and must exit 0 with bitwise-correct results, and the parent
  must still work.  Done with ``os.fork()`` and with ``multiprocessing``'s
  "fork" start method (``Process`` and ``Pool``).  These run in a
  subprocess with a timeout, so a hang fails the test instead of hanging
  pytest.
* Leaks: 100,000 small calls (with and without ``return_lse``, masks,
  ``out=``, float64, causal, inputs that need an aligned copy) keep the RSS
  flat (growth after a 10,000-call warm-up < 4 MiB) and add no traced
  Python memory (tracemalloc, < 100 KB); 10,000 calls that raise keep
  both flat too.  Measured in a fresh interpreter so nothing else moves
  the RSS.
"""

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastattn
from support import check_attention, make_mask, make_qkv
from support.child import child_env



def _env():
    env = child_env()
    env.pop("OMP_NUM_THREADS", None)
    return env


def run_script(code, timeout=60, args=()):
    """Run ``code`` in a fresh interpreter; fail (not hang) on timeout."""
    try:
        r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code, *args],
                           env=_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"script did not finish within {timeout} s (hang?)\n"
                    f"stdout: {e.stdout!r}\nstderr: {e.stderr!r}")
    return r


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return (a.shape == b.shape and a.dtype == b.dtype
            and np.array_equal(a.view(np.uint8), b.view(np.uint8)))


# ---------------------------------------------------------------------------
# 16 Python threads at once
# ---------------------------------------------------------------------------

def _jobs(rng):
    """16 different calls: (name, args, kwargs)."""
    specs = [
        # name, lead, nq, nk, d, dv, hkv, dtype, kw
        ("big_causal_f32", (2, 4), 200, 200, 64, 64, None, np.float32, dict(causal=True)),
        ("big_f64", (1, 2), 150, 300, 32, 40, None, np.float64, {}),
        ("decode_split_f32", (), 1, 3000, 64, 64, None, np.float32, {}),
        ("decode_gqa_f64", (1, 8), 1, 2000, 32, 32, 2, np.float64, {}),
        ("gqa_top_left", (2, 4), 70, 90, 16, 24, 1, np.float32, dict(causal="top_left")),
        ("bool_mask", (2, 2), 65, 129, 33, 17, None, np.float32, dict(mask="bool")),
        ("add_mask_f64", (3,), 40, 77, 5, 80, None, np.float64,
         dict(mask="add64", causal="bottom_right")),
        ("small_f32", (1, 1), 16, 16, 64, 64, None, np.float32, {}),
        ("small_f64", (), 3, 17, 31, 3, None, np.float64, dict(causal=True)),
        ("long_keys_mask", (), 3, 2100, 64, 64, None, np.float32, dict(mask="add32")),
        ("tall_queries", (), 1000, 40, 16, 16, None, np.float32, dict(causal=True)),
        ("batch4", (4, 2), 33, 65, 80, 80, None, np.float32, {}),
        ("out_param_f32", (2, 2), 100, 100, 48, 48, None, np.float32, dict(out=True)),
        ("out_param_f64", (2,), 64, 256, 64, 32, None, np.float64,
         dict(out=True, causal=True)),
        ("nq_gt_nk_causal", (2,), 50, 20, 8, 8, None, np.float32, dict(causal=True)),
        ("mqa_transposed", (2, 8), 30, 500, 64, 64, 1, np.float32, dict(transposed=True)),
    ]
    jobs = []
    for name, lead, nq, nk, d, dv, hkv, dtype, kw in specs:
        q, k, v = make_qkv(rng, lead, nq, nk, d, dv, hkv=hkv, dtype=dtype)
        kw = dict(kw)
        if "mask" in kw:
            kw["mask"] = make_mask(rng, kw["mask"], lead + (nq, nk))
        if kw.pop("transposed", False):
            q, k, v = (np.ascontiguousarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
                       for x in (q, k, v))
        want_out = kw.pop("out", False)
        jobs.append((name, (q, k, v), kw, want_out))
    assert len(jobs) == 16
    return jobs


def _call(args, kw, want_out):
    q, k, v = args
    out = None
    if want_out:
        out = np.empty(q.shape[:-1] + (v.shape[-1],), q.dtype)
    o, lse = fastattn.attention(q, k, v, out=out, return_lse=True, **kw)
    if want_out:
        assert o is out
    return o, lse


@pytest.fixture
def restore_threads():
    before = fastattn.get_num_threads()
    yield
    fastattn.set_num_threads(before)


# ---------------------------------------------------------------------------
# Thread counts: same bits, round trip, the default, argument checks
# ---------------------------------------------------------------------------

def run_with_threads(n, q, k, v, **kw):
    fastattn.set_num_threads(n)
    if fastattn.info()["openmp"]:
        assert fastattn.get_num_threads() == n
    return fastattn.attention(q, k, v, return_lse=True, **kw)


CASES = {
    # Many (batch, head, row-tile) work items.
    "many_tiles": dict(lead=(2, 4), nq=257, nk=200, d=64, kw=dict(causal=True)),
    # One head, few queries, many keys: work can only be split along keys.
    "long_keys": dict(lead=(), nq=3, nk=4100, d=64, kw={}),
    "decode_gqa": dict(lead=(1, 8), nq=1, nk=3000, d=32, hkv=2, kw={}),
    "masked": dict(lead=(2, 2), nq=130, nk=300, d=16, kw=dict(mask="add32",
                                                              causal="top_left")),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_bitwise_identical_across_thread_counts(rng, restore_threads, case, dtype):
    c = CASES[case]
    q, k, v = make_qkv(rng, c["lead"], c["nq"], c["nk"], c["d"], hkv=c.get("hkv"),
                       dtype=dtype)
    kw = dict(c["kw"])
    if "mask" in kw:
        kw["mask"] = make_mask(rng, kw["mask"], (c["nq"], c["nk"]))
    results = {n: run_with_threads(n, q, k, v, **kw) for n in (1, 2, 3)}
    o1, l1 = results[1]
    for n in (2, 3):
        on, ln = results[n]
        assert o1.tobytes() == on.tobytes(), f"output differs between 1 and {n} threads"
        assert l1.tobytes() == ln.tobytes(), f"lse differs between 1 and {n} threads"
    # And the result is right.
    fastattn.set_num_threads(2)
    check_attention(q, k, v, **kw)


def test_thread_count_round_trip(restore_threads):
    if not fastattn.info()["openmp"]:
        pytest.skip("built without OpenMP: always one thread")
    for n in (1, 2, 4):
        fastattn.set_num_threads(n)
        assert fastattn.get_num_threads() == n


def test_concurrent_calls_from_python_threads(rng):
    # Calls from several Python threads at once must not interfere.
    import threading

    q, k, v = make_qkv(rng, (2, 2), 130, 140, 32)
    expect = fastattn.attention(q, k, v, causal=True)
    results = [None] * 4
    errors = []

    def work(i):
        try:
            for _ in range(5):
                results[i] = fastattn.attention(q, k, v, causal=True)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for r in results:
        np.testing.assert_array_equal(r, expect)


# ---------------------------------------------------------------------------
# Default thread count from the environment, and argument checking
# ---------------------------------------------------------------------------

def _num_threads_in_subprocess(omp_num_threads):
    env = child_env(OMP_NUM_THREADS=omp_num_threads)
    code = ("import fastattn; "
            "print(fastattn.get_num_threads(), fastattn.info()['num_threads'])")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got, via_info = (int(s) for s in r.stdout.split())
    assert got == via_info
    return got


@pytest.mark.parametrize("n", [1, 2])
def test_omp_num_threads_sets_the_default(n):
    got = _num_threads_in_subprocess(str(n))
    if not fastattn.info()["openmp"]:
        assert got == 1, "a build without OpenMP always reports one thread"
    else:
        assert got == n, f"OMP_NUM_THREADS={n} but get_num_threads() returned {got}"


@pytest.mark.parametrize("n", [0, -1, -(2 ** 40)])
def test_set_num_threads_rejects_non_positive(restore_threads, n):
    before = fastattn.get_num_threads()
    with pytest.raises(ValueError, match=r"^n must be >= 1, got -?\d+$"):
        fastattn.set_num_threads(n)
    assert fastattn.get_num_threads() == before


@pytest.mark.parametrize("n, type_name", [(1.5, "float"), ("2", "str"), (True, "bool"),
                                          (np.bool_(True), "bool_?"), (None, "NoneType"),
                                          (2.0, "float")])
def test_set_num_threads_rejects_non_integers(restore_threads, n, type_name):
    before = fastattn.get_num_threads()
    with pytest.raises(TypeError, match=rf"^n must be an int, got {type_name}"):
        fastattn.set_num_threads(n)
    assert fastattn.get_num_threads() == before


def test_set_num_threads_accepts_numpy_integers(restore_threads):
    if not fastattn.info()["openmp"]:
        pytest.skip("built without OpenMP: always one thread")
    fastattn.set_num_threads(np.int64(2))
    assert fastattn.get_num_threads() == 2
    fastattn.set_num_threads(np.int32(1))
    assert fastattn.get_num_threads() == 1


# ---------------------------------------------------------------------------
# Many Python threads at once
# ---------------------------------------------------------------------------

def test_16_threads_bitwise_equal_to_serial(rng, restore_threads):
    jobs = _jobs(rng)
    fastattn.set_num_threads(2)
    expected = [_call(a, kw, w) for _, a, kw, w in jobs]
    fastattn.set_num_threads(1)
    # (the premise: results do not depend on the thread count)
    for (name, a, kw, w), (eo, el) in zip(jobs, expected):
        o, lse = _call(a, kw, w)
        assert same_bits(o, eo) and same_bits(lse, el), name

    rounds = 8
    barrier = threading.Barrier(len(jobs))
    errors = []
    mismatches = []

    def work(i):
        name, a, kw, w = jobs[i]
        try:
            barrier.wait(timeout=30)
            for r in range(rounds):
                if i % 3 == 0:
                    # these threads keep flipping the process-wide count
                    fastattn.set_num_threads(1 + (r + i) % 2)
                o, lse = _call(a, kw, w)
                if not (same_bits(o, expected[i][0]) and same_bits(lse, expected[i][1])):
                    mismatches.append((name, r))
        except Exception as e:  # reported below
            errors.append((name, repr(e)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish (hang?)"
    assert not errors, errors
    assert not mismatches, f"results differ from the serial ones: {mismatches}"
    assert fastattn.get_num_threads() in (1, 2)


# ---------------------------------------------------------------------------
# fork() after the OpenMP pool started
# ---------------------------------------------------------------------------

FORK_PRELUDE = textwrap.dedent("""
    import os, sys, time, signal, traceback
    import numpy as np
    import fastattn

    START_POOL = sys.argv[1] == "1"
    rng = np.random.default_rng(1234)

    def mk(lead, nq, nk, d, dtype=np.float32, hkv=None):
        kv = lead[:-1] + (hkv,) if hkv else lead
        return (rng.standard_normal(lead + (nq, d)).astype(dtype),
                rng.standard_normal(kv + (nk, d)).astype(dtype),
                rng.standard_normal(kv + (nk, d)).astype(dtype))

    CASES = [
        (mk((2, 8), 256, 256, 64), dict(causal=True)),        # large: threads
        (mk((), 1, 3000, 64), {}),                             # split keys
        (mk((1, 8), 1, 1500, 32, np.float64, hkv=2), {}),      # decode, GQA
        (mk((2,), 17, 33, 5), dict(causal="top_left")),        # small
    ]

    def compute():
        return [fastattn.attention(*a, return_lse=True, **kw) for a, kw in CASES]

    def same(res, exp):
        return all(np.array_equal(o.view(np.uint8), eo.view(np.uint8)) and
                   np.array_equal(l.view(np.uint8), el.view(np.uint8))
                   for (o, l), (eo, el) in zip(res, exp))

    fastattn.set_num_threads(1)
    EXPECTED = compute()                      # serial, no OpenMP at all
    if START_POOL:
        fastattn.set_num_threads(2)
        q, k, v = mk((4, 8), 512, 512, 64)
        fastattn.attention(q, k, v)           # starts the OpenMP pool
        assert same(compute(), EXPECTED)
    fastattn.set_num_threads(2)

    def child_work():
        # what every child does: all cases, twice, with 2 threads requested
        fastattn.set_num_threads(2)
        for _ in range(2):
            if not same(compute(), EXPECTED):
                return 2
        return 0

    def wait_pid(pid, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "hang"
            time.sleep(0.01)
""")

OS_FORK = FORK_PRELUDE + textwrap.dedent("""
    codes = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            try:
                code = child_work()
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
        codes.append(wait_pid(pid))
    # the parent keeps working, threads included
    parent_ok = same(compute(), EXPECTED)
    print("RESULT", codes, parent_ok)
""")

MP_FORK = FORK_PRELUDE + textwrap.dedent("""
    import multiprocessing as mp

    def pool_task(i):
        return child_work()

    def main():
        ctx = mp.get_context("fork")
        codes = []
        procs = [ctx.Process(target=lambda: sys.exit(child_work())) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill(); p.join()
                codes.append("hang")
            else:
                codes.append(p.exitcode)
        with ctx.Pool(2) as pool:
            try:
                codes.extend(pool.map_async(pool_task, range(4)).get(timeout=60))
            except mp.TimeoutError:
                codes.append("hang")
        parent_ok = same(compute(), EXPECTED)
        print("RESULT", codes, parent_ok)

    main()
""")


@pytest.mark.parametrize("pool_started", [True, False], ids=["after_pool", "no_pool"])
@pytest.mark.parametrize("how", ["os_fork", "mp_fork"])
def test_fork_child_computes_and_exits(how, pool_started):
    if not hasattr(os, "fork"):
        pytest.skip("no fork() on this platform")
    code = OS_FORK if how == "os_fork" else MP_FORK
    r = run_script(code, timeout=120, args=("1" if pool_started else "0",))
    assert r.returncode == 0, f"parent script failed ({r.returncode}):\n{r.stderr[-3000:]}"
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, r.stdout + r.stderr
    assert line[-1] == ("RESULT [0, 0, 0] True" if how == "os_fork"
                        else "RESULT [0, 0, 0, 0, 0, 0] True"), \
        f"{line[-1]} (child exit codes: 2 = wrong result, 'hang' = killed " \
        f"after 60 s)\n{r.stderr[-3000:]}"


# ---------------------------------------------------------------------------
# Leaks
# ---------------------------------------------------------------------------

LEAK_COMMON = textwrap.dedent("""
    import gc, json, os, resource, sys, tracemalloc
    import numpy as np
    import fastattn

    PAGE = resource.getpagesize()

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE

    def traced_growth(fn, n_warm, n):
        # bytes of traced Python memory still allocated after n calls
        # (after a warm-up), total and from frames in fastattn's files
        tracemalloc.start(5)
        for i in range(n_warm):
            fn(i)
        gc.collect()
        s1 = tracemalloc.take_snapshot()
        for i in range(n):
            fn(i)
        gc.collect()
        s2 = tracemalloc.take_snapshot()
        tracemalloc.stop()
        filt = [tracemalloc.Filter(False, tracemalloc.__file__)]
        s1, s2 = s1.filter_traces(filt), s2.filter_traces(filt)
        total = sum(st.size_diff for st in s2.compare_to(s1, "filename"))
        pkg = os.path.dirname(fastattn.__file__)
        ours = sum(st.size_diff for st in s2.compare_to(s1, "traceback")
                   if any(fr.filename.startswith(pkg) for fr in st.traceback))
        top = [str(st) for st in s2.compare_to(s1, "lineno")[:5]]
        return total, ours, top

    rng = np.random.default_rng(7)
""")

LEAK_CALLS = LEAK_COMMON + textwrap.dedent("""
    q = rng.standard_normal((1, 1, 16, 64)).astype(np.float32)
    k = rng.standard_normal((1, 1, 16, 64)).astype(np.float32)
    v = rng.standard_normal((1, 1, 16, 64)).astype(np.float32)
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    bmask = rng.random((16, 16)) < 0.7
    amask = np.where(bmask, 0.0, -np.inf).astype(np.float32)
    out = np.empty((1, 1, 16, 64), np.float32)
    buf = bytearray(q.nbytes + 1)       # misaligned: the binding copies it
    qu = np.ndarray(q.shape, np.float32, buffer=buf, offset=1); qu[...] = q
    obuf = bytearray(out.nbytes + 1)    # misaligned out: copied back
    ou = np.ndarray(out.shape, np.float32, buffer=obuf, offset=1)
    f = fastattn.attention
    calls = [
        lambda: f(q, k, v),
        lambda: f(q, k, v, return_lse=True),
        lambda: f(q, k, v, mask=bmask),
        lambda: f(q, k, v, mask=amask, causal=True, return_lse=True),
        lambda: f(q, k, v, out=out),
        lambda: f(q, k, v, out=out, return_lse=True, causal="top_left"),
        lambda: f(q64, k64, v64, scale=0.3, return_lse=True),
        lambda: f(qu, k, v, out=ou),
    ]
    nc = len(calls)
    def one(i):
        calls[i % nc]()

    WARM, TOTAL = 10_000, 100_000
    for i in range(WARM):
        one(i)
    gc.collect()
    r0 = rss()
    for i in range(WARM, TOTAL):
        one(i)
    gc.collect()
    r1 = rss()
    total, ours, top = traced_growth(one, 2_000, 20_000)
    print(json.dumps(dict(rss_growth=r1 - r0, rss=r1, traced_total=total,
                          traced_fastattn=ours, top=top)))
""")

LEAK_ERRORS = LEAK_COMMON + textwrap.dedent("""
    q = rng.standard_normal((2, 8, 16)).astype(np.float32)
    k = rng.standard_normal((2, 8, 16)).astype(np.float32)
    v = rng.standard_normal((2, 8, 16)).astype(np.float32)
    ro = np.empty((2, 8, 16), np.float32); ro.setflags(write=False)
    f = fastattn.attention
    bad = [
        lambda: f(q, k.astype(np.float64), v),                  # dtype mix
        lambda: f(q.astype(np.int32), k, v),                    # dtype
        lambda: f(q, k[:, :5], v),                              # keys differ
        lambda: f(q, k[..., :3], v),                            # head dim
        lambda: f(q, k, v, causal="sideways"),                  # causal value
        lambda: f(q, k, v, scale=float("nan")),                 # scale
        lambda: f(q, k, v, scale="1"),                          # scale type
        lambda: f(q, k, v, mask=np.ones((3, 8), bool)),         # mask shape
        lambda: f(q, k, v, mask=np.ones((8, 8), np.int8)),      # mask dtype
        lambda: f(q, k, v, out=q),                              # out overlaps q
        lambda: f(q, k, v, out=ro),                             # out read-only
        lambda: f(q, k, v, out=np.empty((2, 8, 15), np.float32)),
        lambda: f(q, k[:1].repeat(3, 0), v[:1].repeat(3, 0)),   # H % Hkv
        lambda: f([[1.0]], k, v),                               # not an array
        lambda: f(q[0, 0], k, v),                               # ranks differ
    ]
    nb = len(bad)
    def one(i):
        try:
            bad[i % nb]()
        except (TypeError, ValueError):
            return
        raise AssertionError(f"call {i % nb} did not raise")

    WARM, N = 2_000, 10_000
    for i in range(WARM):
        one(i)
    gc.collect()
    r0 = rss()
    for i in range(N):
        one(i)
    gc.collect()
    r1 = rss()
    total, ours, top = traced_growth(one, 1_000, 5_000)
    print(json.dumps(dict(rss_growth=r1 - r0, rss=r1, traced_total=total,
                          traced_fastattn=ours, top=top)))
""")

RSS_LIMIT = 4 * 2 ** 20
TRACED_LIMIT = 100_000


@pytest.mark.parametrize("which", ["calls", "errors"])
def test_no_leaks(which):
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("needs /proc/self/statm (Linux)")
    r = run_script(LEAK_CALLS if which == "calls" else LEAK_ERRORS, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"{which}: RSS growth {m['rss_growth'] / 2**10:.0f} KiB (RSS {m['rss'] / 2**20:.1f} "
          f"MiB), traced growth {m['traced_total']} B (fastattn frames "
          f"{m['traced_fastattn']} B)")
    # Under AddressSanitizer freed memory sits in a quarantine, so RSS grows
    # without a leak; there LeakSanitizer checks leaks instead (tools/sanitize.sh).
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):
        assert m["rss_growth"] < RSS_LIMIT, m
    assert m["traced_total"] < TRACED_LIMIT, m
    assert m["traced_fastattn"] < TRACED_LIMIT, m
