"""Thread control (defaults, per-call counts, threadpoolctl) and the runtime
report of fastattn.show_config()."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastattn
from fastattn import _threads, reference

OPENMP = fastattn.info()["openmp"]
needs_openmp = pytest.mark.skipif(not OPENMP, reason="built without OpenMP: always one thread")


@pytest.fixture
def restore_threads():
    before = fastattn.get_num_threads()
    yield
    fastattn.set_num_threads(before)


def _run(code, **env):
    """Output of ``code`` in a fresh interpreter with ``env`` (None: unset)."""
    full = dict(os.environ)
    for name in ("FASTATTN_NUM_THREADS", "OMP_NUM_THREADS"):
        full.pop(name, None)
    full.update({k: v for k, v in env.items() if v is not None})
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=full, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def _qkv(rng, dtype=np.float32):
    q = rng.standard_normal((2, 4, 130, 32)).astype(dtype)
    k = rng.standard_normal((2, 2, 300, 32)).astype(dtype)
    v = rng.standard_normal((2, 2, 300, 16)).astype(dtype)
    return q, k, v


def test_set_num_threads_returns_previous(restore_threads):
    fastattn.set_num_threads(1)
    assert fastattn.set_num_threads(2) == 1
    assert fastattn.set_num_threads(1) == (2 if OPENMP else 1)


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                      (True, TypeError), ("2", TypeError)])
def test_thread_counts_are_checked(bad, exc):
    rng = np.random.default_rng(0)
    q, k, v = _qkv(rng)
    with pytest.raises(exc, match="num_threads"):
        fastattn.attention(q, k, v, num_threads=bad)
    with pytest.raises(exc, match="^n "):
        fastattn.set_num_threads(bad)


def test_per_call_threads_same_result_and_setting_untouched(restore_threads):
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng)
    fastattn.set_num_threads(1)
    ref64 = reference.attention(q.astype(np.float64), k.astype(np.float64),
                                v.astype(np.float64), causal=True)
    naive = reference.attention(q, k, v, causal=True)  # float32 throughout
    outs = [fastattn.attention(q, k, v, causal=True, num_threads=n) for n in (1, 2, 3)]
    for o in outs[1:]:
        assert o.tobytes() == outs[0].tobytes()
    # FlashAttention's rule: at most twice the naive float32 error, plus a floor
    assert np.abs(outs[0] - ref64).max() <= 2 * np.abs(naive - ref64).max() + 1e-6
    assert fastattn.get_num_threads() == 1
    w1 = fastattn.attention_weights(q, k, num_threads=1)
    w2 = fastattn.attention_weights(q, k, num_threads=2)
    assert w1.tobytes() == w2.tobytes()
    cache = fastattn.KVCache(2, 2, 300, 32, value_dim=16, dtype=np.float32)
    cache.append(k, v)
    a1 = cache.attend(q, num_threads=1)
    a2 = cache.attend(q, num_threads=2)
    assert a1.tobytes() == a2.tobytes()
    np.testing.assert_allclose(a1, fastattn.attention(q, k, v), rtol=0, atol=0)


def test_varlen_per_call_threads():
    rng = np.random.default_rng(2)
    q = rng.standard_normal((70, 4, 16)).astype(np.float32)
    kv = rng.standard_normal((90, 2, 16)).astype(np.float32)
    cu_q, cu_k = np.array([0, 30, 70]), np.array([0, 50, 90])
    o1 = fastattn.attention_varlen(q, kv, kv, cu_q, cu_k, num_threads=1)
    o2 = fastattn.attention_varlen(q, kv, kv, cu_q, cu_k, num_threads=2)
    assert o1.tobytes() == o2.tobytes()


@needs_openmp
def test_threadpoolctl_limits_fastattn(restore_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="threadpoolctl is not installed")
    fastattn.set_num_threads(2)
    pools = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "openmp"]
    assert pools, "threadpoolctl does not see fastattn's OpenMP runtime"
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert fastattn.get_num_threads() == 1
        assert fastattn.show_config("dicts")["threading"]["num_threads"] == 1
    assert fastattn.get_num_threads() == 2


@needs_openmp
@pytest.mark.parametrize("env, expect", [
    (dict(FASTATTN_NUM_THREADS="3"), "3 FASTATTN_NUM_THREADS"),
    (dict(OMP_NUM_THREADS="1"), "1 OMP_NUM_THREADS"),
    (dict(FASTATTN_NUM_THREADS="3", OMP_NUM_THREADS="1"), "3 FASTATTN_NUM_THREADS"),
])
def test_default_from_environment(env, expect):
    code = ("import fastattn; from fastattn import _threads; "
            "print(fastattn.get_num_threads(), _threads.num_threads_source())")
    assert _run(code, **env) == expect


@needs_openmp
def test_default_follows_affinity():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("os.sched_setaffinity is not available on this platform")
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "import fastattn; print(fastattn.get_num_threads())")
    assert _run(code) == "1"


def test_bad_environment_count_fails_import():
    full = dict(os.environ, FASTATTN_NUM_THREADS="zero")
    res = subprocess.run([sys.executable, "-c", "import fastattn"], capture_output=True,
                         text=True, env=full, timeout=120)
    assert res.returncode != 0 and "FASTATTN_NUM_THREADS" in res.stderr


@pytest.mark.parametrize("files, expect", [
    ({"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/cpu.max": "150000 100000"}, 1.5),
    ({"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/cpu.max": "max 100000"}, None),
    ({"/proc/self/cgroup": "1:cpu,cpuacct:/job\n",
      "/sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us": "50000",
      "/sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_period_us": "100000"}, 0.5),
    ({"/proc/self/cgroup": "1:cpu:/\n", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1",
      "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000"}, None),
])
def test_cgroup_quota(monkeypatch, files, expect):
    monkeypatch.setattr(_threads, "_read", lambda path: files.get(os.path.normpath(path)))
    assert _threads.cgroup_cpu_quota() == expect
    if expect is not None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
        assert _threads.available_cpus() == max(1, int(expect))


def test_show_config_report():
    cfg = fastattn.show_config("dicts")
    assert cfg["fastattn"]["version"] == fastattn.__version__
    paths = {row["name"]: row for row in cfg["isa"]["paths"]}
    chosen = [name for name, row in paths.items() if row["chosen"]]
    assert chosen == [fastattn.info()["isa"]]
    assert paths["scalar"]["compiled"] and paths["scalar"]["available"]
    for row in paths.values():
        assert row["reason"], row
        if not row["compiled"]:
            assert not row["available"]
    th = cfg["threading"]
    assert th["num_threads"] == fastattn.get_num_threads()
    if OPENMP:
        assert any("omp" in os.path.basename(p) for p in th["library"]), th["library"]
    else:
        assert th["num_threads"] == 1 and th["library"] == []
    buf = io.StringIO()
    assert fastattn.show_config(file=buf) is None
    text = buf.getvalue()
    assert f"fastattn {fastattn.__version__}" in text and "ISA paths:" in text
    buf = io.StringIO()
    fastattn.show_config("json", file=buf)
    assert json.loads(buf.getvalue())["isa"]["paths"]
    with pytest.raises(ValueError, match="mode"):
        fastattn.show_config("yaml")


def test_show_config_reports_forced_isa():
    out = _run("import fastattn; cfg = fastattn.show_config('dicts'); "
               "print([r['reason'] for r in cfg['isa']['paths'] if r['chosen']][0])",
               FASTATTN_ISA="scalar")
    assert out == "forced by FASTATTN_ISA=scalar"


def test_version_matches_metadata():
    from importlib import metadata

    try:
        assert metadata.version("fastattn") == fastattn.__version__
    except metadata.PackageNotFoundError:
        pytest.skip("fastattn is imported from a source tree without installed metadata")
