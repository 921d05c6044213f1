"""The key/value cache for incremental decoding: ``KVCache``.

Contract: ``append(k, v, lengths=None)`` copies the first ``lengths[b]``
(default all n) new tokens of each row into place; a row that would exceed
``max_len`` raises ValueError and leaves the cache unchanged.
``attend(q, ...)`` is attention of the last Nq positions of each row over
that row's cached tokens (bottom-right alignment with the row's own
length), so decoding token by token, or prefilling in chunks, gives the
rows of one causal call over the whole sequence.  Results are checked
against the float64 reference under the tolerance rule of support/compare.py.
``isa_cases`` runs the core cases on every ISA path at 1 and 2 threads.
"""

import numpy as np
import pytest

import fastattn
from support import (ISA_COMBOS, AttentionRefs, IsaCase, check_isa_path, half_dtypes,
                      make_mask, randn, plan_kernel)



def _prefill_in_chunks(cache, Q, K, V, chunks):
    """Append the tokens chunk by chunk, attending (causal) after each;
    returns the outputs and lses concatenated along the queries."""
    outs, lses = [], []
    pos = 0
    for m in chunks:
        cache.append(K[:, :, pos:pos + m], V[:, :, pos:pos + m])
        o, lse = cache.attend(Q[:, :, pos:pos + m], causal=True, return_lse=True)
        outs.append(o)
        lses.append(lse)
        pos += m
    return np.concatenate(outs, axis=2), np.concatenate(lses, axis=2)

def snapshot(cache):
    return cache.k.tobytes(), cache.v.tobytes(), cache.lengths.copy()


def assert_unchanged(cache, snap):
    k, v, lengths = snap
    assert cache.k.tobytes() == k, "the cache's keys changed"
    assert cache.v.tobytes() == v, "the cache's values changed"
    np.testing.assert_array_equal(cache.lengths, lengths)


def test_constructor_state():
    c = fastattn.KVCache(3, 2, 10, 8, value_dim=5)
    assert c.k.shape == (3, 2, 10, 8) and c.v.shape == (3, 2, 10, 5)
    assert c.dtype == np.float32 and c.k.dtype == np.float32
    assert (c.batch, c.kv_heads, c.max_len) == (3, 2, 10)
    assert c.lengths.dtype == np.int64 and (c.lengths == 0).all() and c.lengths.shape == (3,)
    c = fastattn.KVCache(1, 1, 4, 8, dtype="float64")
    assert c.dtype == np.float64 and c.v.shape == (1, 1, 4, 8)
    c = fastattn.KVCache(np.int64(2), 1, 0, 8, dtype=np.float16)
    assert c.k.shape == (2, 1, 0, 8) and c.dtype == np.float16


def fill(rng, cache, n, dtype=None):
    """Random keys and values of n new tokens for every row."""
    dtype = cache.dtype if dtype is None else dtype
    k = randn(rng, (cache.batch, cache.kv_heads, n, cache.k.shape[3]), dtype)
    v = randn(rng, (cache.batch, cache.kv_heads, n, cache.v.shape[3]), dtype)
    return k, v


def test_fill_to_max_len_then_overflow_raises_and_leaves_the_cache_unchanged(rng):
    c = fastattn.KVCache(2, 2, 12, 8)
    ks, vs = [], []
    for n in (5, 0, 6, 1):            # exactly max_len = 12
        k, v = fill(rng, c, n)
        c.append(k, v)
        ks.append(k)
        vs.append(v)
    np.testing.assert_array_equal(c.lengths, [12, 12])
    K, V = np.concatenate(ks, axis=2), np.concatenate(vs, axis=2)
    np.testing.assert_array_equal(c.k, K)
    np.testing.assert_array_equal(c.v, V)
    snap = snapshot(c)
    for n, lengths in [(1, None), (3, None), (1, [0, 1]), (2, [1, 0])]:
        k, v = fill(rng, c, n)
        with pytest.raises(ValueError, match=r"max_len"):
            c.append(k, v, lengths=lengths)
        assert_unchanged(c, snap)
    # appending nothing to a full cache is fine
    c.append(*fill(rng, c, 0))
    c.append(*fill(rng, c, 3), lengths=[0, 0])
    assert_unchanged(c, snap)
    # and the cache still works
    q = randn(rng, (2, 4, 3, 8))
    out, lse = c.attend(q, causal=True, return_lse=True)
    AttentionRefs(q, K, V, causal=True).check(out, lse)


def test_overflow_of_one_row_leaves_the_other_rows_unchanged(rng):
    c = fastattn.KVCache(3, 1, 6, 4)
    c.append(*fill(rng, c, 4), lengths=[4, 2, 0])
    snap = snapshot(c)
    with pytest.raises(ValueError, match=r"max_len"):
        c.append(*fill(rng, c, 5), lengths=[1, 5, 3])   # rows 0, 2 fit; row 1: 7 > 6
    assert_unchanged(c, snap)
    with pytest.raises(ValueError, match=r"max_len"):
        c.append(*fill(rng, c, 3), lengths=[3, 0, 0])   # row 0: 7 > 6
    assert_unchanged(c, snap)


@pytest.mark.parametrize("h, hkv", [(4, 2), (2, 2), (4, 1)])
def test_token_by_token_decode_equals_one_full_causal_call(rng, h, hkv):
    b, d, prompt, steps = 2, 16, 5, 12
    c = fastattn.KVCache(b, hkv, 40, d)
    K = randn(rng, (b, hkv, prompt + steps, d))
    V = randn(rng, (b, hkv, prompt + steps, d))
    Q = randn(rng, (b, h, steps, d))
    c.append(K[:, :, :prompt], V[:, :, :prompt])
    outs, lses = [], []
    for t in range(steps):
        s = prompt + t
        c.append(K[:, :, s:s + 1], V[:, :, s:s + 1])
        o, lse = c.attend(Q[:, :, t:t + 1], causal=True, return_lse=True)
        assert o.shape == (b, h, 1, d) and lse.shape == (b, h, 1)
        # one query at the end of the row: causal changes nothing
        o2 = c.attend(Q[:, :, t:t + 1])
        np.testing.assert_array_equal(o2, o)
        outs.append(o)
        lses.append(lse)
    out, lse = np.concatenate(outs, axis=2), np.concatenate(lses, axis=2)
    # the last `steps` query rows of causal attention over the whole sequence
    refs = AttentionRefs(Q, K, V, causal=True)
    refs.check(out, lse)
    refs.check(*fastattn.attention(Q, K, V, causal=True, return_lse=True))


def test_chunked_prefill_equals_full_causal(rng):
    b, h, hkv, d, dv = 2, 6, 3, 8, 12
    chunks = [5, 1, 17, 0, 9, 70]
    n = sum(chunks)
    K, V = randn(rng, (b, hkv, n, d)), randn(rng, (b, hkv, n, dv))
    Q = randn(rng, (b, h, n, d))
    c = fastattn.KVCache(b, hkv, n + 3, d, value_dim=dv)
    AttentionRefs(Q, K, V, causal=True).check(*_prefill_in_chunks(c, Q, K, V, chunks))


def test_per_row_lengths_equal_per_row_computations(rng):
    b, h, hkv, d = 3, 4, 2, 8
    c = fastattn.KVCache(b, hkv, 20, d)
    rows = [([], []) for _ in range(b)]
    for n, lengths in [(5, [3, 5, 0]), (4, [4, 0, 1]), (2, None), (6, np.array([0, 6, 2]))]:
        k, v = fill(rng, c, n)
        if lengths is not None:
            # padding tokens are ignored: make them obviously wrong
            for r in range(b):
                k[r, :, lengths[r]:] = np.nan
                v[r, :, lengths[r]:] = np.inf
        c.append(k, v, lengths=lengths)
        for r in range(b):
            m = n if lengths is None else int(lengths[r])
            rows[r][0].append(k[r, :, :m])
            rows[r][1].append(v[r, :, :m])
    want_len = [sum(x.shape[1] for x in rows[r][0]) for r in range(b)]
    np.testing.assert_array_equal(c.lengths, want_len)     # [9, 11, 5]
    q = randn(rng, (b, h, 3, d))
    for kw in ({}, dict(causal=True), dict(window=(2, 0), causal=True), dict(softcap=2.0),
               dict(alibi_slopes=[0.5, 0.1, 1.0, 0.0])):
        out, lse = c.attend(q, return_lse=True, **kw)
        for r in range(b):
            kr = np.concatenate(rows[r][0], axis=1)
            vr = np.concatenate(rows[r][1], axis=1)
            np.testing.assert_array_equal(c.k[r, :, :want_len[r]], kr)
            np.testing.assert_array_equal(c.v[r, :, :want_len[r]], vr)
            AttentionRefs(q[r], kr, vr, **kw).check(out[r], lse[r])
            # and a cache holding only this row
            c1 = fastattn.KVCache(1, hkv, 20, d)
            c1.append(kr[None], vr[None])
            AttentionRefs(q[r], kr, vr, **kw).check(*(a[0] for a in
                                                      c1.attend(q[r:r + 1], return_lse=True,
                                                                **kw)))


def test_padding_tokens_are_ignored(rng):
    c = fastattn.KVCache(2, 1, 8, 4)
    k, v = fill(rng, c, 5)
    k[0, :, 2:] = np.nan
    v[0, :, 2:] = np.inf
    c.append(k, v, lengths=[2, 5])
    q = randn(rng, (2, 1, 2, 4))
    out, lse = c.attend(q, causal=True, return_lse=True)
    assert np.isfinite(out).all()
    AttentionRefs(q[:1], k[:1, :, :2], v[:1, :, :2], causal=True).check(out[:1], lse[:1])
    AttentionRefs(q[1:], k[1:], v[1:], causal=True).check(out[1:], lse[1:])


def test_attend_options_out_and_mask(rng):
    b, h, hkv, d = 2, 4, 2, 8
    c = fastattn.KVCache(b, hkv, 16, d)
    c.append(*fill(rng, c, 9), lengths=[9, 4])
    lens = c.lengths.copy()
    q = randn(rng, (b, h, 2, d))
    # a mask spans max_len keys (the docstring's contract)
    mask = make_mask(rng, "bool", (b, 1, 2, 16), p_visible=0.6)
    for kw in (dict(mask=mask), dict(mask=make_mask(rng, "add32", (1, h, 2, 16))),
               dict(alibi_slopes=rng.uniform(0, 1, (b, h)), causal=True),
               dict(scale=0.3, softcap=1.0, window=(3, 0))):
        out, lse = c.attend(q, return_lse=True, **kw)
        # the reference over the whole buffers with the row lengths
        AttentionRefs(q, c.k, c.v, kv_lengths=lens, **kw).check(out, lse)
    o = np.full((b, h, 2, d), np.nan, np.float32)
    got = c.attend(q, causal=True, out=o)
    assert got is o
    AttentionRefs(q, c.k, c.v, kv_lengths=lens, causal=True).check(o)


def test_reset(rng):
    c = fastattn.KVCache(2, 1, 6, 4)
    c.append(*fill(rng, c, 6))
    c.reset()
    np.testing.assert_array_equal(c.lengths, [0, 0])
    q = randn(rng, (2, 2, 3, 4))
    with pytest.raises(ValueError, match=r"the cache is empty"):
        c.attend(q, causal=True)
    k, v = fill(rng, c, 6)          # the full max_len again
    c.append(k, v)
    out, lse = c.attend(q, causal=True, return_lse=True)
    AttentionRefs(q, k, v, causal=True).check(out, lse)


def test_append_copies_and_accepts_any_layout(rng):
    c = fastattn.KVCache(2, 3, 8, 4)
    k = np.ascontiguousarray(randn(rng, (2, 5, 3, 4))).transpose(0, 2, 1, 3)   # (B, n, H, D)
    v = randn(rng, (2, 3, 10, 4))[:, :, ::-2]
    want_k, want_v = k.copy(), v.copy()
    c.append(k, v)
    k[...] = 0
    v[...] = 0
    np.testing.assert_array_equal(c.k[:, :, :5], want_k)
    np.testing.assert_array_equal(c.v[:, :, :5], want_v)


def test_empty_caches(rng):
    c = fastattn.KVCache(0, 1, 4, 8)
    c.append(np.zeros((0, 1, 2, 8), np.float32), np.zeros((0, 1, 2, 8), np.float32))
    assert c.attend(np.zeros((0, 2, 1, 8), np.float32)).shape == (0, 2, 1, 8)
    c = fastattn.KVCache(2, 1, 0, 8)
    c.append(*fill(rng, c, 0))
    with pytest.raises(ValueError, match=r"max_len"):
        c.append(*fill(rng, c, 1))
    with pytest.raises(ValueError, match=r"the cache is empty: append keys and values first"):
        c.attend(randn(rng, (2, 1, 1, 8)), return_lse=True)


def test_attend_on_an_empty_cache_raises(rng):
    # attending before appending would answer every query with zeros
    c = fastattn.KVCache(2, 2, 8, 4)
    q = randn(rng, (2, 2, 3, 4))
    o = np.full((2, 2, 3, 4), 7.0, np.float32)
    for kw in ({}, dict(causal=True), dict(causal="top_left"), dict(out=o)):
        with pytest.raises(ValueError, match=r"the cache is empty"):
            c.attend(q, **kw)
    assert (o == 7.0).all()
    c.append(*fill(rng, c, 3), lengths=[0, 0])
    with pytest.raises(ValueError, match=r"the cache is empty"):
        c.attend(q)


def _unseen_warnings(call):
    """The RuntimeWarnings of call() about queries that see no key, and its result."""
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = call()
    return [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)], res


def test_queries_that_see_no_key_warn_once_per_call(rng):
    c = fastattn.KVCache(3, 1, 8, 4)
    k, v = fill(rng, c, 5)
    c.append(k, v, lengths=[5, 2, 0])
    q = randn(rng, (3, 2, 3, 4))
    # causal, 3 queries: row 1 (2 keys) hides everything from query 0, row 2 holds nothing
    msgs, (out, lse) = _unseen_warnings(lambda: c.attend(q, causal=True, return_lse=True))
    assert len(msgs) == 1, msgs
    assert msgs[0].startswith("KVCache.attend: 2 rows have queries that see no key (e.g. row 1 "
                              "holds 2 tokens and 1 of its 3 queries see no key)")
    assert "Append the queries' own keys and values before attend" in msgs[0]
    # the call still computes, with zeros (and lse -inf) for those queries
    assert (out[1, :, 0] == 0).all() and (lse[1, :, 0] == -np.inf).all()
    assert (out[2] == 0).all() and (lse[2] == -np.inf).all()
    AttentionRefs(q[:1], k[:1], v[:1], causal=True).check(out[:1], lse[:1])
    AttentionRefs(q[1:2], k[1:2, :, :2], v[1:2, :, :2], causal=True).check(out[1:2], lse[1:2])
    # without causal only the empty row sees nothing; top-left causal likewise
    for kw in ({}, dict(causal="top_left"), dict(window=(1, -1))):
        msgs, _ = _unseen_warnings(lambda: c.attend(q, **kw))
        assert len(msgs) == 1 and msgs[0].startswith(
            "KVCache.attend: row 2 holds 0 tokens and 3 of its 3 queries see no key"), (kw, msgs)


def test_the_band_decides_which_queries_see_no_key(rng):
    c = fastattn.KVCache(1, 1, 8, 4)
    c.append(*fill(rng, c, 2))
    q = randn(rng, (1, 1, 4, 4))
    # bottom-right: query i sees keys j <= i + 2 - 4 (+ the window's right bound)
    for kw, unseen in ((dict(causal=True), 2), (dict(causal="bottom_right"), 2),
                       (dict(causal=np.bool_(True)), 2), (dict(window=(0, 1)), 1),
                       (dict(window=(3, 0), causal=True), 2), (dict(window=(-1, 5)), 0),
                       (dict(window=(0, 2)), 0)):
        msgs, out = _unseen_warnings(lambda: c.attend(q, **kw))
        if unseen:
            assert msgs == [f"KVCache.attend: row 0 holds 2 tokens and {unseen} of its 4 "
                            "queries see no key; they get zeros. Append the queries' own keys "
                            "and values before attend (the queries are the last positions of "
                            "each row)"], kw
            assert (out[0, 0, :unseen] == 0).all() and (out[0, 0, unseen:] != 0).any()
        else:
            assert msgs == [], kw
    # the usual steps warn about nothing: append, then attend the new queries
    c.append(*fill(rng, c, 2))
    msgs, _ = _unseen_warnings(lambda: c.attend(q, causal=True))
    assert msgs == []
    # queries a mask hides are the caller's choice
    mask = np.zeros((4, 4), bool)
    msgs, out = _unseen_warnings(lambda: c.attend(q, causal=True, mask=mask))
    assert msgs == [] and (out == 0).all()


def test_the_warning_points_at_the_caller(rng):
    import warnings
    c = fastattn.KVCache(1, 1, 8, 4)
    c.append(*fill(rng, c, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c.attend(randn(rng, (1, 1, 2, 4)), causal=True)
    assert len(caught) == 1 and caught[0].filename == __file__


def test_repr_gives_the_shape_dtype_and_fill(rng):
    c = fastattn.KVCache(2, 3, 16, 8, value_dim=4)
    assert repr(c) == ("KVCache(batch=2, kv_heads=3, max_len=16, head_dim=8, value_dim=4, "
                       "dtype=float32, lengths=[0, 0])")
    c.append(*fill(rng, c, 5), lengths=[5, 2])
    assert repr(c).endswith("dtype=float32, lengths=[5, 2])")
    assert repr(fastattn.KVCache(1, 1, 4, 8, dtype="int8")) == (
        "KVCache(batch=1, kv_heads=1, max_len=4, head_dim=8, dtype=int8, lengths=[0])")
    big = fastattn.KVCache(20, 1, 9, 2, dtype=np.float16)
    big.append(*fill(rng, big, 9), lengths=np.arange(20) % 10)
    assert repr(big) == ("KVCache(batch=20, kv_heads=1, max_len=9, head_dim=2, "
                         "dtype=float16, lengths=0..9)")


def test_dtype_error_lists_every_accepted_dtype():
    for bad in (np.int32, np.complex64, np.uint8, "float8"):
        with pytest.raises(TypeError, match=r"\bdtype\b.*float32, float64, float16, bfloat16 "
                                            r"or int8|dtype must be a numpy float dtype or "
                                            r"'int8'"):
            fastattn.KVCache(1, 1, 4, 8, dtype=bad)
    with pytest.raises(TypeError, match=r"^dtype must be float32, float64, float16, bfloat16 "
                                        r"or int8, got int32$"):
        fastattn.KVCache(1, 1, 4, 8, dtype=np.int32)


def test_attend_returns_weights_over_the_filled_prefix(rng):
    """return_weights: the same output as without, and the weights of each
    row over its own cached keys (bottom-right causal), zero beyond them;
    a mask spanning max_len keys is cut to the prefix as for the output."""
    c = fastattn.KVCache(2, 2, 12, 8)
    c.append(*fill(rng, c, 7), lengths=[7, 4])
    q = randn(rng, (2, 4, 3, 8))
    mask = rng.random((1, 1, 3, 12)) < 0.8
    out, w = c.attend(q, causal=True, mask=mask, return_weights=True)
    np.testing.assert_array_equal(out, c.attend(q, causal=True, mask=mask))
    assert w.shape == (2, 4, 3, 7) and w.dtype == np.float32
    ref = fastattn.reference.attention_weights
    kw = dict(causal=True, mask=mask[..., :7], kv_lengths=c.lengths)
    w64 = ref(q.astype(np.float64), c.k[:, :, :7].astype(np.float64), **kw)
    naive = ref(q, c.k[:, :, :7], **kw)          # float32, as computed plainly
    # FlashAttention's rule: at most twice the plain float32 error, plus a floor
    assert np.abs(w - w64).max() <= 2 * np.abs(naive - w64).max() + 1e-6
    assert (w[1, :, :, 4:] == 0).all()


@pytest.mark.parametrize("dtype", half_dtypes() + [pytest.param(np.dtype(np.float64), id="f64")])
def test_decode_in_other_dtypes(rng, dtype):
    b, h, hkv, d, prompt, steps = 2, 4, 2, 16, 30, 4
    c = fastattn.KVCache(b, hkv, 40, d, dtype=dtype)
    assert c.dtype == dtype
    K = randn(rng, (b, hkv, prompt + steps, d), dtype)
    V = randn(rng, (b, hkv, prompt + steps, d), dtype)
    Q = randn(rng, (b, h, steps, d), dtype)
    c.append(K[:, :, :prompt], V[:, :, :prompt])
    outs, lses = [], []
    for t in range(steps):
        c.append(K[:, :, prompt + t:prompt + t + 1], V[:, :, prompt + t:prompt + t + 1])
        o, lse = c.attend(Q[:, :, t:t + 1], return_lse=True)
        assert o.dtype == dtype
        assert lse.dtype == (np.float64 if dtype == np.float64 else np.float32)
        outs.append(o)
        lses.append(lse)
    AttentionRefs(Q, K, V, causal=True).check(np.concatenate(outs, axis=2),
                                              np.concatenate(lses, axis=2))


# ---------------------------------------------------------------------------
# every ISA path, 1 and 2 threads
# ---------------------------------------------------------------------------

def decode_case(name, rng, b, h, hkv, d, prompt, steps, dtype=np.float32, **kw):
    """Prompt appended at once, then `steps` single-token decode steps."""
    K = randn(rng, (b, hkv, prompt + steps, d), dtype)
    V = randn(rng, (b, hkv, prompt + steps, d), dtype)
    Q = randn(rng, (b, h, steps, d), dtype)
    cache = {}

    def run():
        c = fastattn.KVCache(b, hkv, prompt + steps, d, dtype=dtype)
        c.append(K[:, :, :prompt], V[:, :, :prompt])
        outs, lses = [], []
        for t in range(steps):
            s = prompt + t
            c.append(K[:, :, s:s + 1], V[:, :, s:s + 1])
            o, lse = c.attend(Q[:, :, t:t + 1], causal=True, return_lse=True, **kw)
            outs.append(o)
            lses.append(lse)
        return np.concatenate(outs, axis=2), np.concatenate(lses, axis=2)

    def check(res):
        if "refs" not in cache:
            cache["refs"] = AttentionRefs(Q, K, V, causal=True, **kw)
        cache["refs"].check(*res)

    # each step attends one query: the plan of the first step stands for all
    return IsaCase(name, run, check, plan=lambda: plan_kernel(Q[:, :, :1], K, V, causal=True,
                                                              **kw))


def prefill_case(name, rng, b, h, hkv, d, chunks):
    """Chunked prefill: append each chunk, attend its queries with causal=True."""
    n = sum(chunks)
    K, V, Q = randn(rng, (b, hkv, n, d)), randn(rng, (b, hkv, n, d)), randn(rng, (b, h, n, d))
    cache = {}

    def run():
        c = fastattn.KVCache(b, hkv, n, d)
        return _prefill_in_chunks(c, Q, K, V, chunks)

    def check(res):
        if "refs" not in cache:
            cache["refs"] = AttentionRefs(Q, K, V, causal=True)
        cache["refs"].check(*res)

    return IsaCase(name, run, check)


def rows_case(name, rng):
    """Rows of different lengths (append with lengths=), then one attend."""
    b, h, hkv, d = 3, 4, 1, 16
    k1, v1 = randn(rng, (b, hkv, 1200, d)), randn(rng, (b, hkv, 1200, d))
    k2, v2 = randn(rng, (b, hkv, 3, d)), randn(rng, (b, hkv, 3, d))
    l1, l2 = np.array([1200, 0, 700]), np.array([1, 3, 0])
    q = randn(rng, (b, h, 1, d))

    def run():
        c = fastattn.KVCache(b, hkv, 1300, d)
        c.append(k1, v1, lengths=l1)
        c.append(k2, v2, lengths=l2)
        return c.attend(q, causal=True, return_lse=True)

    def check(res):
        out, lse = res
        for r in range(b):
            kr = np.concatenate([k1[r, :, :l1[r]], k2[r, :, :l2[r]]], axis=1)
            vr = np.concatenate([v1[r, :, :l1[r]], v2[r, :, :l2[r]]], axis=1)
            AttentionRefs(q[r], kr, vr, causal=True).check(out[r], lse[r])

    return IsaCase(name, run, check)


def isa_cases():
    rng = np.random.default_rng(505)
    cases = [
        decode_case("decode_gqa", rng, 2, 4, 2, 32, 20, 5),             # few-row kernel
        decode_case("decode_split", rng, 1, 4, 1, 32, 1100, 3),         # + split-KV
        decode_case("decode_window_alibi", rng, 2, 2, 2, 16, 60, 3, window=(16, 0),
                    alibi_slopes=[0.25, 0.5]),
        decode_case("decode_f64", rng, 1, 2, 1, 16, 1030, 2, dtype=np.float64, softcap=4.0),
        decode_case("decode_f16", rng, 2, 4, 2, 32, 40, 3, dtype=np.float16),
        prefill_case("prefill_tile", rng, 2, 4, 2, 16, [70, 1, 65]),   # tile kernel
        prefill_case("prefill_split", rng, 1, 2, 2, 16, [1050, 40]),    # tile + split-KV
        rows_case("rows_of_different_lengths", rng),
    ]
    return cases


@pytest.mark.parametrize("isa, threads", ISA_COMBOS)
def test_every_isa_path(isa_runs, isa, threads):
    check_isa_path(isa_runs, "test_kvcache", isa, threads)
