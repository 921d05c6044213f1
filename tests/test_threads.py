"""Results must be bitwise identical whatever the number of threads; the
default thread count follows OMP_NUM_THREADS; set_num_threads checks its
argument."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastattn
from conftest import check_attention, make_mask, make_qkv


@pytest.fixture
def restore_threads():
    before = fastattn.get_num_threads()
    yield
    fastattn.set_num_threads(before)


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
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastattn.__file__)))
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = omp_num_threads
    env["PYTHONPATH"] = os.pathsep.join(
        [pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
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
