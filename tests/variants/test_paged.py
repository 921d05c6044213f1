"""Paged keys and values: ``PagedKVCache`` and ``attention_paged``.

A paged problem is a packed variable-length one whose keys lie in pages:
sequence b's keys are its pages, in block-table order, cut to its length.
Each result is checked against ``reference.attention_varlen`` of those keys
gathered (for the reference only) under the tolerance rule of
support/compare.py.  The caches are filled in interleaved chunks after
other sequences were freed, so every sequence's pages are scattered and out
of order in the pool.  ``isa_cases`` runs decode, mixed, split and 16-bit /
int8 page batches on every ISA path at 1 and 2 threads.
"""

import numpy as np
import pytest

import fastattn
from fastattn import _core
from support import ISA_COMBOS, IsaCase, VarlenRefs, check_isa_path, half_dtypes
from support.matrix import exact_oracle


def scattered_cache(rng, lk, hkv, d, dv, page_size, dtype, kdtype=None):
    """A cache holding sequences of lk[b] rows with scattered pages; returns
    (cache, ids, k, v, ck) with k, v the packed float keys and values the
    cache holds (dequantized for int8)."""
    kdtype = dtype if kdtype is None else kdtype
    pages = sum(-(-n // page_size) for n in lk) + 6
    cache = fastattn.PagedKVCache(hkv, d, value_dim=dv, num_pages=pages,
                                  max_seqs=len(lk) + 2, page_size=page_size, dtype=kdtype)
    # a sequence that takes pages and is freed: the free list is no longer in order
    junk = cache.allocate()
    cache.append(junk, np.ones((3 * page_size, hkv, d), dtype), np.ones((3 * page_size, hkv, dv), dtype))
    ids = [cache.allocate() for _ in lk]
    cache.free(junk)
    ks = [rng.standard_normal((n, hkv, d)).astype(dtype) for n in lk]
    vs = [rng.standard_normal((n, hkv, dv)).astype(dtype) for n in lk]
    done = [0] * len(lk)
    # interleaved appends of random chunk sizes, sometimes several sequences at once
    while any(done[b] < lk[b] for b in range(len(lk))):
        todo = [b for b in range(len(lk)) if done[b] < lk[b]]
        pick = [b for b in todo if rng.random() < 0.6] or todo[:1]
        sizes = [int(min(lk[b] - done[b], rng.integers(1, 2 * page_size + 2))) for b in pick]
        cu = np.concatenate([[0], np.cumsum(sizes)])
        kk = np.concatenate([ks[b][done[b]:done[b] + m] for b, m in zip(pick, sizes)])
        vv = np.concatenate([vs[b][done[b]:done[b] + m] for b, m in zip(pick, sizes)])
        cache.append([ids[b] for b in pick], kk, vv, cu_seqlens=cu)
        for b, m in zip(pick, sizes):
            done[b] += m
    assert [int(cache.lengths[i]) for i in ids] == list(lk)
    k, v = gathered(cache, ids)
    ck = np.concatenate([[0], np.cumsum(lk)]).astype(np.int64)
    return cache, ids, k, v, ck


def gathered(cache, ids):
    """The keys and values of sequences ids, packed, as the kernels see them
    (int8 dequantized in float32)."""
    ks, vs = [], []
    for s in ids:
        n = int(cache.lengths[s])
        pg = cache.block_table[s, :-(-n // cache.page_size)]
        kp, vp = cache.k_pages[pg], cache.v_pages[pg]
        if cache.k_scale is not None:
            kp = kp.astype(np.float32) * cache.k_scale[pg][:, :, None, :]
            vp = vp.astype(np.float32) * cache.v_scale[pg][:, :, :, None]
        ks.append(kp.transpose(0, 2, 1, 3).reshape(-1, *kp.shape[1:2], kp.shape[3])[:n])
        vs.append(vp.transpose(0, 2, 1, 3).reshape(-1, *vp.shape[1:2], vp.shape[3])[:n])
    return np.concatenate(ks), np.concatenate(vs)


def queries(rng, lq, h, d, dtype):
    cq = np.concatenate([[0], np.cumsum(lq)]).astype(np.int64)
    return rng.standard_normal((cq[-1], h, d)).astype(dtype), cq


def check_paged(rng, lq, lk, *, h=4, hkv=2, d=16, dv=None, page_size=16, dtype=np.float32,
                kdtype=None, **kw):
    dv = d if dv is None else dv
    cache, ids, k, v, ck = scattered_cache(rng, lk, hkv, d, dv, page_size, dtype, kdtype)
    qdt = np.float32 if kdtype == "int8" else dtype
    q, cq = queries(rng, lq, h, d, qdt)
    out, lse = fastattn.attention_paged(q, cache, cq, ids, return_lse=True, **kw)
    assert out.shape == (q.shape[0], h, dv) and out.dtype == q.dtype
    assert lse.shape == (h, q.shape[0])
    VarlenRefs(q, k.astype(qdt), v.astype(qdt), cq, ck, **kw).check(out, lse)
    return cache, ids, q, cq, out, lse


SEQS = {
    # decode of ragged histories, one-token histories included
    "decode": ([1, 1, 1, 1], [1, 40, 17, 100]),
    # chunked prefill after histories, decode beside it, an empty history
    "mixed": ([1, 9, 0, 1, 30], [65, 9, 5, 1, 80]),
    "prefill": ([70], [70]),
    "empty": ([2, 1], [0, 3]),
}
OPTIONS = {
    "plain": {},
    "causal": dict(causal=True),
    "top_left": dict(causal="top_left"),
    "window": dict(causal=True, window=(20, 0)),
    "both_sides": dict(window=(3, 2)),
    "alibi": dict(causal=True, alibi_slopes=[0.5, 0.25, -0.2, 1.0]),
    "softcap": dict(softcap=1.5, scale=0.7),
}


@pytest.mark.parametrize("page_size", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("opt", list(OPTIONS))
@pytest.mark.parametrize("seqs", list(SEQS))
def test_paged_matches_the_reference(rng, seqs, opt, page_size):
    lq, lk = SEQS[seqs]
    check_paged(rng, lq, lk, page_size=page_size, **OPTIONS[opt])


@pytest.mark.parametrize("dtype", half_dtypes() + [np.float64])
def test_paged_16_bit_and_float64_pages(rng, dtype):
    check_paged(rng, [1, 5, 1], [70, 40, 3], dtype=dtype, causal=True, d=32, dv=8)


@pytest.mark.parametrize("opt", ["plain", "causal", "window"])
def test_paged_int8_pages(rng, opt):
    check_paged(rng, [1, 5, 1], [70, 40, 3], dtype=np.float32, kdtype="int8",
                **OPTIONS[opt])


def test_paged_mqa_gqa_and_value_dim(rng):
    check_paged(rng, [1, 3], [50, 20], h=8, hkv=1, d=8, dv=24, causal=True)
    check_paged(rng, [1, 3], [50, 20], h=6, hkv=3, d=8, dv=4)


def test_paged_long_histories_split_and_merge(rng):
    # 4200 and 9000 keys: several splits of 4096 keys each; in pages of 16
    # hundreds of pages folded, in pages of 64 walked by the kernel
    for page_size in (16, 64):
        check_paged(rng, [1, 2, 1], [4200, 9000, 3], h=2, hkv=1, d=8, causal=True,
                    page_size=page_size)


def test_decode_equals_the_contiguous_cache_bitwise(rng):
    # walked pages, one split per sequence, 16 tiles: the contiguous call
    # runs the same kernel on the same keys in the same order
    lk = [300, 1, 77, 1000]
    cache, ids, k, v, ck = scattered_cache(rng, lk, 4, 32, 32, 64, np.float32)
    q, cq = queries(rng, [1, 1, 1, 1], 8, 32, np.float32)
    paged = fastattn.attention_paged(q, cache, cq, ids, causal=True)
    contig = fastattn.KVCache(4, 4, max(lk), 32)
    contig.append(np.stack([np.pad(k[ck[b]:ck[b + 1]], ((0, max(lk) - lk[b]), (0, 0), (0, 0)))
                            .transpose(1, 0, 2) for b in range(4)]),
                  np.stack([np.pad(v[ck[b]:ck[b + 1]], ((0, max(lk) - lk[b]), (0, 0), (0, 0)))
                            .transpose(1, 0, 2) for b in range(4)]), lengths=lk)
    want = contig.attend(q[:, :, None, :].copy(), causal=True)[:, :, 0, :]
    np.testing.assert_array_equal(paged, want)


def test_rows_that_see_no_key_are_zero_with_lse_minus_inf(rng):
    cache, ids, q, cq, out, lse = check_paged(rng, [2, 3], [0, 5], causal="top_left")
    assert (out[:2] == 0).all() and (lse[:, :2] == -np.inf).all()


def test_nan_stays_in_its_sequence(rng):
    cache, ids, k, v, ck = scattered_cache(rng, [40, 40], 1, 8, 8, 16, np.float32)
    s = ids[0]
    cache.k_pages[cache.block_table[s, 1], 0, 3, 2] = np.nan   # a NaN score: the whole row
    cache.v_pages[cache.block_table[s, 2], 0, 1, 5] = np.nan   # a NaN value: its column
    q, cq = queries(rng, [1, 1], 2, 8, np.float32)
    out = fastattn.attention_paged(q, cache, cq, ids)
    assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()
    cache.k_pages[cache.block_table[s, 1], 0, 3, 2] = 0
    out = fastattn.attention_paged(q, cache, cq, ids)
    assert np.isnan(out[0, :, 5]).all() and np.isfinite(np.delete(out, 5, axis=2)).all()


@pytest.mark.parametrize("page_size", [32, 64])      # pages folded one by one; walked
def test_results_depend_on_nothing_but_the_sequence(rng, page_size):
    """Bitwise: where the pages lie, the thread count, and the other
    sequences of the call change nothing."""
    lq, lk = [1, 7, 1], [5000, 70, 130]
    c1, ids1, *_ = scattered_cache(np.random.default_rng(5), lk, 2, 16, 16, page_size, np.float32)
    c2, ids2, *_ = scattered_cache(np.random.default_rng(5), lk, 2, 16, 16, page_size, np.float32)
    # the same rows, pages moved: reverse every page of the second pool
    perm = np.arange(c2.num_pages)[::-1]
    inv = np.argsort(perm)
    c2.k_pages[:] = c2.k_pages[perm]
    c2.v_pages[:] = c2.v_pages[perm]
    c2.block_table[c2.block_table >= 0] = inv[c2.block_table[c2.block_table >= 0]]
    q, cq = queries(rng, lq, 4, 16, np.float32)
    a = fastattn.attention_paged(q, c1, cq, ids1, causal=True, num_threads=1)
    b = fastattn.attention_paged(q, c2, cq, ids2, causal=True, num_threads=2)
    np.testing.assert_array_equal(a, b)
    alone = fastattn.attention_paged(q[1:8], c1, [0, 7], [ids1[1]], causal=True)
    np.testing.assert_array_equal(alone, a[1:8])


def test_seq_lens_attend_to_a_prefix(rng):
    cache, ids, k, v, ck = scattered_cache(rng, [50, 30], 2, 8, 8, 16, np.float32)
    q, cq = queries(rng, [1, 2], 4, 8, np.float32)
    out = fastattn.attention_paged(q, cache, cq, ids, seq_lens=[20, 30], causal=True)
    k2 = np.concatenate([k[:20], k[50:]])
    v2 = np.concatenate([v[:20], v[50:]])
    VarlenRefs(q, k2, v2, cq, np.array([0, 20, 50]), causal=True).check(out)
    with pytest.raises(ValueError, match=r"seq_lens\[0\] = 51 but sequence"):
        fastattn.attention_paged(q, cache, cq, ids, seq_lens=[51, 30])
    with pytest.raises(ValueError, match="seq_lens has a negative entry -1"):
        fastattn.attention_paged(q, cache, cq, ids, seq_lens=[-1, 30])


def test_out_argument_and_default_sequences(rng):
    cache, ids, k, v, ck = scattered_cache(rng, [10, 20], 2, 8, 8, 16, np.float32)
    q, cq = queries(rng, [1, 1], 2, 8, np.float32)
    out = np.full((2, 2, 8), 7.0, np.float32)
    res = fastattn.attention_paged(q, cache, cq, out=out)      # every open sequence
    assert res is out
    VarlenRefs(q, k, v, cq, ck).check(out)
    via = cache.attend(q, cq, ids)
    np.testing.assert_array_equal(via, out)


def test_reduced_precision_warns_and_computes_at_highest(rng):
    from fastattn import api
    api._warned.discard(("paged",))
    cache, ids, k, v, ck = scattered_cache(rng, [10], 1, 8, 8, 16, np.float32)
    q, cq = queries(rng, [1], 1, 8, np.float32)
    with pytest.warns(RuntimeWarning, match="paged attention runs on the float32 vector"):
        a = fastattn.attention_paged(q, cache, cq, precision="bf16")
    np.testing.assert_array_equal(a, fastattn.attention_paged(q, cache, cq))


# ---------------------------------------------------------------------------
# the cache
# ---------------------------------------------------------------------------

def snapshot(cache):
    keep = [cache.k_pages.copy(), cache.v_pages.copy(), cache.block_table.copy(),
            cache.lengths.copy(), cache.free_pages]
    if cache.k_scale is not None:
        keep += [cache.k_scale.copy(), cache.v_scale.copy()]
    return keep


def assert_unchanged(cache, keep):
    now = snapshot(cache)
    for a, b in zip(now, keep):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b


@pytest.mark.parametrize("dtype", [np.float32, "int8"])
def test_running_out_of_pages_writes_nothing(rng, dtype):
    cache = fastattn.PagedKVCache(1, 4, num_pages=3, max_seqs=2, page_size=16, dtype=dtype)
    a, b = cache.allocate(), cache.allocate()
    cache.append(a, np.ones((20, 1, 4), np.float32), np.ones((20, 1, 4), np.float32))
    keep = snapshot(cache)
    with pytest.raises(MemoryError, match="need 2 more pages but 1 of 3 are free; nothing"):
        cache.append([a, b], rng.standard_normal((30, 1, 4)).astype(np.float32),
                     rng.standard_normal((30, 1, 4)).astype(np.float32),
                     cu_seqlens=[0, 5, 30])
    assert_unchanged(cache, keep)
    with pytest.raises(MemoryError, match="all 2 sequence slots are open"):
        cache.allocate()
    cache.free(a)
    assert cache.free_pages == 3 and cache.lengths[a] == 0
    cache.append(b, np.ones((48, 1, 4), np.float32), np.ones((48, 1, 4), np.float32))
    assert cache.free_pages == 0


def test_block_table_row_width_is_a_bound(rng):
    cache = fastattn.PagedKVCache(1, 4, num_pages=8, max_seqs=1, page_size=16,
                                  max_pages_per_seq=2)
    s = cache.allocate()
    keep = snapshot(cache)
    with pytest.raises(MemoryError, match="more than its 2 pages of 16"):
        cache.append(s, np.ones((33, 1, 4), np.float32), np.ones((33, 1, 4), np.float32))
    assert_unchanged(cache, keep)


def test_int8_page_key_scales_grow_and_requantize(rng):
    cache = fastattn.PagedKVCache(1, 4, num_pages=4, max_seqs=1, page_size=16, dtype="int8")
    s = cache.allocate()
    k1 = rng.standard_normal((5, 1, 4))
    cache.append(s, k1, k1)
    g = cache.block_table[s, 0]
    first = cache.k_scale[g].copy()
    big = 10 * np.abs(k1).max() * np.ones((1, 1, 4))
    cache.append(s, big, big)
    assert (cache.k_scale[g] >= 2 * first - 1e-12).all()
    back = cache.k_pages[g, 0, :6].astype(np.float64) * cache.k_scale[g][0]
    step = cache.k_scale[g][0]
    assert np.abs(back[:5] - k1[:, 0]).max() <= step.max()
    assert np.abs(back[5] - big[0, 0]).max() <= step.max() / 2
    with pytest.raises(ValueError, match="non-finite"):
        cache.append(s, np.full((1, 1, 4), np.inf), big)


def test_cache_argument_errors(rng):
    with pytest.raises(ValueError, match="page_size must be a multiple of 16"):
        fastattn.PagedKVCache(1, 4, num_pages=2, max_seqs=1, page_size=24)
    with pytest.raises(TypeError, match="num_pages"):
        fastattn.PagedKVCache(1, 4, num_pages=2.5, max_seqs=1)
    cache = fastattn.PagedKVCache(2, 4, num_pages=4, max_seqs=2, page_size=16)
    s = cache.allocate()
    with pytest.raises(ValueError, match="seq_id 1 is not an open sequence"):
        cache.append(1, np.ones((1, 2, 4), np.float32), np.ones((1, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"k has shape \(1, 3, 4\); expected \(n, 2, 4\)"):
        cache.append(s, np.ones((1, 3, 4), np.float32), np.ones((1, 2, 4), np.float32))
    with pytest.raises(TypeError, match="float64"):
        cache.append(s, np.ones((1, 2, 4)), np.ones((1, 2, 4)))
    t = cache.allocate()
    with pytest.raises(ValueError, match="cu_seqlens is required"):
        cache.append([s, t], np.ones((1, 2, 4), np.float32), np.ones((1, 2, 4), np.float32))
    with pytest.raises(ValueError, match="seq_ids names a sequence twice"):
        cache.append([s, s], np.ones((1, 2, 4), np.float32), np.ones((1, 2, 4), np.float32),
                     cu_seqlens=[0, 1, 1])
    cache.free(t)
    cache.append(s, np.ones((3, 2, 4), np.float32), np.ones((3, 2, 4), np.float32))
    q = np.ones((1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="cu_seqlens_q has 2 sequences but seq_ids has 1"):
        fastattn.attention_paged(q, cache, [0, 1, 1], [s])
    with pytest.raises(ValueError, match="seq_ids names a sequence twice"):
        fastattn.attention_paged(q, cache, [0, 1, 1], [s, s])
    with pytest.raises(TypeError, match="cache must be a fastattn.PagedKVCache"):
        fastattn.attention_paged(q, object(), [0, 1])
    with pytest.raises(TypeError, match="float64"):
        fastattn.attention_paged(q.astype(np.float64), cache, [0, 1])
    with pytest.raises(ValueError, match="not a multiple of the 2 kv heads"):
        fastattn.attention_paged(np.ones((1, 3, 4), np.float32), cache, [0, 1])


# ---------------------------------------------------------------------------
# the core call: bad block tables raise before anything is written
# ---------------------------------------------------------------------------

def core_problem(rng):
    kp = rng.standard_normal((6, 1, 16, 8)).astype(np.float32)
    vp = rng.standard_normal((6, 1, 16, 8)).astype(np.float32)
    q = rng.standard_normal((1, 2, 3, 8)).astype(np.float32)
    bt = np.array([[4, 1, -1], [0, -1, -1]], np.int32)
    return q, kp, vp, bt, np.array([0, 2, 3]), np.array([20, 5])


@pytest.mark.parametrize("bad, exc, pattern", [
    (lambda bt: bt.__setitem__((0, 1), 6), ValueError, r"block_table\[0, 1\] = 6 is not a page"),
    (lambda bt: bt.__setitem__((1, 0), -2), ValueError, r"block_table\[1, 0\] = -2 is not a page"),
    (lambda bt: bt.__setitem__((1, 0), 4), ValueError, "names a page already used"),
    (lambda bt: bt.astype(np.float32), TypeError, "block_table has dtype float32"),
    (lambda bt: bt[:, :1], ValueError, "needs 2 pages of 16 rows but block_table has 1"),
    (lambda bt: bt[:1], ValueError, r"block_table has shape \(1, 3\); expected \(2, pages"),
])
def test_bad_block_tables_raise_and_write_nothing(rng, bad, exc, pattern):
    q, kp, vp, bt, cq, lens = core_problem(rng)
    got = bad(bt)
    bt = bt if got is None else got
    out = np.full((1, 2, 3, 8), 3.0, np.float32)
    with pytest.raises(exc, match=pattern):
        _core.attention_paged(q, kp, vp, bt, cq, lens, out=out)
    assert (out == 3.0).all()


def test_unused_block_table_entries_are_not_read(rng):
    q, kp, vp, bt, cq, lens = core_problem(rng)
    bt[0, 2] = 10 ** 6          # beyond the pool, but past sequence 0's 20 rows
    bt[1, 1:] = 4               # repeats a page, but unused
    out = _core.attention_paged(q, kp, vp, bt, cq, lens)
    assert np.isfinite(out).all()


def test_bad_pools_and_scales(rng):
    q, kp, vp, bt, cq, lens = core_problem(rng)
    with pytest.raises(ValueError, match="v_pages has shape"):
        _core.attention_paged(q, kp, vp[:, :, :8], bt, cq, lens)
    with pytest.raises(TypeError, match="v_pages has dtype float64"):
        _core.attention_paged(q, kp, vp.astype(np.float64), bt, cq, lens)
    with pytest.raises(TypeError, match="k_scale is given"):
        _core.attention_paged(q, kp, vp, bt, cq, lens, k_scale=np.ones((6, 1, 8), np.float32))
    k8, v8 = kp.astype(np.int8), vp.astype(np.int8)
    with pytest.raises(TypeError, match="k_scale is required"):
        _core.attention_paged(q, k8, v8, bt, cq, lens)
    with pytest.raises(ValueError, match="k_scale has shape"):
        _core.attention_paged(q, k8, v8, bt, cq, lens, k_scale=np.ones((6, 8), np.float32),
                              v_scale=np.ones((6, 1, 16), np.float32))
    with pytest.raises(ValueError, match="seq_lens has a negative entry"):
        _core.attention_paged(q, kp, vp, bt, cq, np.array([-1, 5]))


# ---------------------------------------------------------------------------
# every ISA path, 1 and 2 threads
# ---------------------------------------------------------------------------

def paged_case(name, rng, lq, lk, *, h, hkv, d, page_size, dtype=np.float32, kdtype=None,
               **kw):
    cache, ids, k, v, ck = scattered_cache(rng, lk, hkv, d, d, page_size, dtype, kdtype)
    qdt = np.float32 if kdtype == "int8" else dtype
    q, cq = queries(rng, lq, h, d, qdt)
    memo = {}

    def run():
        return fastattn.attention_paged(q, cache, cq, ids, return_lse=True, **kw)

    def check(res):
        if "refs" not in memo:
            memo["refs"] = VarlenRefs(q, k.astype(qdt), v.astype(qdt), cq, ck,
                                      per_sequence=exact_oracle(q.dtype), **kw)
        memo["refs"].check(*res)

    return IsaCase(name, run, check)


def isa_cases():
    rng = np.random.default_rng(2026)
    cases = [
        paged_case("decode", rng, [1, 1, 1], [300, 1, 77], h=4, hkv=1, d=32, page_size=64,
                   causal=True),
        paged_case("mixed", rng, [1, 40, 1, 0], [130, 90, 2, 5], h=4, hkv=2, d=16,
                   page_size=16, causal=True, window=(50, 0)),
        paged_case("split", rng, [1, 3], [4500, 60], h=2, hkv=2, d=16, page_size=64,
                   causal=True, alibi_slopes=[0.01, 0.02], softcap=4.0),
        paged_case("int8", rng, [1, 6], [200, 70], h=4, hkv=2, d=16, page_size=32,
                   kdtype="int8", causal=True),
        paged_case("f64", rng, [2, 5], [40, 20], h=2, hkv=1, d=8, page_size=16,
                   dtype=np.float64),
    ]
    for dt in [p.values[0] for p in half_dtypes() if p.values[0] is not None]:
        cases.append(paged_case(f"half-{np.dtype(dt).name}", rng, [1, 9], [150, 30], h=4,
                                hkv=2, d=32, page_size=32, dtype=dt, causal=True))
    return cases


@pytest.mark.parametrize("isa, threads", ISA_COMBOS)
def test_every_isa_path(isa_runs, isa, threads):
    check_isa_path(isa_runs, __name__, isa, threads)
