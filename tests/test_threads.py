"""Results must be bitwise identical whatever the number of threads."""

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
