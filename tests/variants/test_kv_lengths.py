"""Per-batch key counts: ``kv_lengths``.

Contract (fastattn.attention): key j of batch b exists iff
``j < kv_lengths[b]``, and ``Nk_b = kv_lengths[b]`` replaces Nk in the
bottom-right alignments of causal, window and alibi_slopes.  So a call with
kv_lengths is, batch by batch, the call on the keys sliced to their length;
that is what the tests compare against (``by_slicing``, built on the float64
reference), besides the reference's own kv_lengths.  Padding keys are never
read: NaN there changes nothing.  ``isa_cases`` runs the core cases on every
ISA path at 1 and 2 threads.
"""

import numpy as np
import pytest

import fastattn
from support import (ISA_COMBOS, AttentionRefs, IsaCase, assert_result, check_attention,
                      check_isa_path, check_weights, make_mask, make_qkv, path_qkv,
                      random_variant_cases, plan_kernel)
from support.matrix import exact_oracle
from fastattn import reference


def by_slicing(lengths, per_batch=None):
    """A reference function (reference.attention's signature) that runs
    each batch on its keys sliced to kv_lengths[b], with no kv_lengths,
    through ``per_batch`` (default reference.attention)."""
    one = reference.attention if per_batch is None else per_batch

    def fn(q, k, v, *, mask=None, alibi_slopes=None, return_lse=False, **kw):
        nb = q.shape[0]
        if mask is not None:
            mask = np.broadcast_to(mask, q.shape[:-1] + (k.shape[-2],))
        outs, lses = [], []
        for b in range(nb):
            n = int(lengths[b])
            sl = alibi_slopes
            if sl is not None and np.ndim(sl) == 2:
                sl = np.asarray(sl)[b]
            o, lse = one(
                q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n], return_lse=True,
                mask=None if mask is None else mask[b:b + 1, ..., :n], alibi_slopes=sl, **kw)
            outs.append(o)
            lses.append(lse)
        out, lse = np.concatenate(outs), np.concatenate(lses)
        return (out, lse) if return_lse else out

    fn.rounds_p = getattr(per_batch, "rounds_p", False)
    return fn


def check_lengths(q, k, v, lengths, **kw):
    """fastattn with kv_lengths against the sliced reference and the
    reference's own kv_lengths (tolerance rule of support/compare.py)."""
    out, lse = fastattn.attention(q, k, v, kv_lengths=lengths, return_lse=True, **kw)
    AttentionRefs(q, k, v, fn=by_slicing(lengths), **kw).check(out, lse)
    AttentionRefs(q, k, v, kv_lengths=lengths, **kw).check(out, lse)
    return out, lse


OPTIONS = {
    "plain": {},
    "causal": dict(causal=True),
    "window": dict(window=(2, 1)),
    "local": dict(causal=True, window=(4, 0)),
    "alibi_h": dict(alibi_slopes=[0.5, 0.25, -0.1, 2.0]),
    "alibi_bh": dict(alibi_slopes=[[0.5, 0.25, -0.1, 2.0], [1.0, 0.0, 0.3, 0.05]]),
    "softcap": dict(softcap=1.5),
    "all": dict(causal=True, window=(6, 2), alibi_slopes=[0.1, 0.2, 0.3, 0.4], softcap=4.0),
}
LENGTHS = {"zero_and_full": lambda nk: [0, nk], "mixed": lambda nk: [3, nk - 2],
           "all_zero": lambda nk: [0, 0], "ones": lambda nk: [1, 1]}


@pytest.mark.parametrize("nq, nk", [(5, 14), (14, 5), (1, 30)], ids=["nq<nk", "nq>nk", "nq1"])
@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("opt", list(OPTIONS))
def test_kv_lengths_equal_sliced_keys(rng, opt, lengths, nq, nk):
    q, k, v = make_qkv(rng, (2, 4), nq, nk, 8, hkv=2)
    lens = np.array(LENGTHS[lengths](nk))
    out, lse = check_lengths(q, k, v, lens, **OPTIONS[opt])
    for b in range(2):
        if lens[b] == 0:
            assert (out[b] == 0).all() and (lse[b] == -np.inf).all()


def test_zero_length_rows_are_exact_zeros_even_with_nan_queries(rng):
    q, k, v = make_qkv(rng, (3, 2), 6, 9, 8)
    q[1] = np.nan            # batch 1 has no key: its rows see nothing
    out, lse = check_lengths(q, k, v, np.array([9, 0, 4]), causal=True)
    assert (out[1] == 0).all() and (lse[1] == -np.inf).all()
    assert np.isfinite(out[0]).all() and np.isfinite(out[2]).all()


def test_full_lengths_are_plain_attention(rng):
    q, k, v = make_qkv(rng, (2, 4), 9, 17, 16, hkv=1)
    for kw in ({}, dict(causal=True), dict(window=(3, 3)), dict(alibi_slopes=[1, 2, 3, 4])):
        out, lse = fastattn.attention(q, k, v, kv_lengths=[17, 17], return_lse=True, **kw)
        assert_result(q, k, v, out, lse, **kw)      # the reference without kv_lengths


@pytest.mark.parametrize("causal", [False, True])
def test_queries_before_every_key_see_nothing(rng, causal):
    # Nq > Nk_b with causal: the first Nq - Nk_b queries see no key
    q, k, v = make_qkv(rng, (2, 2), 10, 12, 8)
    out, lse = check_lengths(q, k, v, np.array([4, 12]), causal=causal)
    if causal:
        assert (out[0, :, :6] == 0).all() and (lse[0, :, :6] == -np.inf).all()
        assert np.isfinite(lse[0, :, 6:]).all() and np.isfinite(lse[1]).all()


@pytest.mark.parametrize("lead, hkv, nq, nk", [((2, 4), 4, 1, 100), ((2, 4), 1, 1, 1500),
                                              ((2, 2), 2, 70, 130), ((1, 2), 2, 40, 1100)],
                         ids=["decode", "decode_split", "tile", "tile_split"])
def test_padding_is_never_read(rng, lead, hkv, nq, nk):
    q, k, v = make_qkv(rng, lead, nq, nk, 16, hkv=hkv)
    lens = np.array([nk // 3 + 1, nk - 65][:lead[0]])
    clean = fastattn.attention(q, k, v, kv_lengths=lens, causal=True, return_lse=True)
    for b, n in enumerate(lens):
        k[b, :, n:] = np.nan
        v[b, :, n:] = np.inf
    dirty = fastattn.attention(q, k, v, kv_lengths=lens, causal=True, return_lse=True)
    np.testing.assert_array_equal(dirty[0], clean[0])
    np.testing.assert_array_equal(dirty[1], clean[1])
    AttentionRefs(q, k, v, fn=by_slicing(lens), causal=True).check(*dirty)


def test_kv_lengths_equal_a_key_padding_mask(rng):
    # without bottom-right alignments, kv_lengths is a key-padding mask
    q, k, v = make_qkv(rng, (3, 4), 7, 20, 8, hkv=2)
    lens = np.array([20, 5, 0])
    pad = np.arange(20)[None, :] < lens[:, None]              # (B, Nk)
    mask = pad[:, None, None, :]                               # (B, 1, 1, Nk)
    for kw in ({}, dict(softcap=2.0)):
        by_len = fastattn.attention(q, k, v, kv_lengths=lens, return_lse=True, **kw)
        by_mask = fastattn.attention(q, k, v, mask=mask, return_lse=True, **kw)
        refs = AttentionRefs(q, k, v, mask=mask, **kw)
        refs.check(*by_len)
        refs.check(*by_mask)
    # kv_lengths and a mask combine
    extra = make_mask(rng, "bool", (3, 1, 7, 20), p_visible=0.5)
    check_attention(q, k, v, kv_lengths=lens, mask=extra, causal=True)
    check_lengths(q, k, v, lens, mask=extra, causal=True)


def test_kv_lengths_containers_and_dtypes(rng):
    q, k, v = make_qkv(rng, (2, 2), 6, 11, 8)
    want = fastattn.attention(q, k, v, kv_lengths=np.array([4, 11]), causal=True)
    check_lengths(q, k, v, np.array([4, 11]), causal=True)
    for lens in ([4, 11], (4, 11), np.array([4, 11], np.int32), np.array([4, 11], np.uint8),
                 np.array([4, 11], np.uint64), np.array([4, 11], np.int16)):
        got = fastattn.attention(q, k, v, kv_lengths=lens, causal=True)
        np.testing.assert_array_equal(got, want, err_msg=repr(lens))


def test_kv_lengths_2d_3d_float64_and_out(rng):
    q, k, v = make_qkv(rng, (), 5, 9, 8, dtype=np.float64)
    out, lse = fastattn.attention(q, k, v, kv_lengths=[6], causal=True, return_lse=True)
    AttentionRefs(q[None, None], k[None, None], v[None, None], fn=by_slicing([6]),
                  causal=True).check(out[None, None], lse[None, None])
    q, k, v = make_qkv(rng, (4,), 5, 9, 8, hkv=2, dtype=np.float64)
    o = np.full((4, 5, 8), np.nan)
    got, lse = fastattn.attention(q, k, v, kv_lengths=np.array([3]), window=(1, 1), out=o,
                                  return_lse=True)
    assert got is o
    AttentionRefs(q[None], k[None], v[None], fn=by_slicing([3]),
                  window=(1, 1)).check(o[None], lse[None])


def test_kv_lengths_empty_batch(rng):
    q, k, v = make_qkv(rng, (0, 2), 3, 4, 8)
    for lens in (np.zeros(0, np.int64), [], np.array([])):
        out, lse = fastattn.attention(q, k, v, kv_lengths=lens, return_lse=True)
        assert out.shape == (0, 2, 3, 8) and lse.shape == (0, 2, 3)


def test_kv_lengths_with_weights(rng):
    q, k, v = make_qkv(rng, (2, 2), 5, 9, 8)
    lens = np.array([0, 6])
    out, w = fastattn.attention(q, k, v, kv_lengths=lens, causal=True, return_weights=True)
    assert (w[0] == 0).all() and (w[1, ..., 6:] == 0).all()
    check_weights(w, q, k, kv_lengths=lens, causal=True)
    AttentionRefs(q, k, v, fn=by_slicing(lens), causal=True).check(out)


# ---------------------------------------------------------------------------
# every ISA path, 1 and 2 threads
# ---------------------------------------------------------------------------

def lengths_case(name, q, k, v, lens, oracle=exact_oracle, **kw):
    cache = {}

    def run():
        return fastattn.attention(q, k, v, kv_lengths=lens, return_lse=True, **kw)

    def check(res):
        if "refs" not in cache:
            cache["refs"] = AttentionRefs(q, k, v, fn=by_slicing(lens, oracle(q.dtype)), **kw)
        cache["refs"].check(*res)

    return IsaCase(name, run, check, plan=lambda: plan_kernel(q, k, v, kv_lengths=lens, **kw))


def isa_cases(oracle=exact_oracle):
    rng = np.random.default_rng(303)
    cases = []
    for path in ("decode", "decode_split", "tile", "tile_split"):
        q, k, v = path_qkv(rng, path)
        b, h, nk = q.shape[0], q.shape[1], k.shape[2]
        lens = np.array([0, nk - 3] if b == 2 else [nk - 70])
        # NaN in the padding: never read
        k, v = k.copy(), v.copy()
        for i, n in enumerate(lens):
            k[i, :, n:] = np.nan
            v[i, :, n:] = np.nan
        slopes = rng.uniform(0, 0.5, (b, h))
        for opt, kw in [("plain", {}), ("causal", dict(causal=True)),
                        ("local", dict(causal=True, window=(100, 0))),
                        ("alibi_softcap", dict(alibi_slopes=slopes, softcap=2.0))]:
            cases.append(lengths_case(f"{path}-{opt}", q, k, v, lens, oracle=oracle, **kw))
        short = np.array([1, 5] if b == 2 else [9])
        cases.append(lengths_case(f"{path}-short", q, k, v, short, causal=True,
                                  oracle=oracle))
    q, k, v = make_qkv(rng, (3, 2), 80, 200, 16, dtype=np.float64)
    cases.append(lengths_case("f64_tile", q, k, v, np.array([200, 0, 77]), causal=True,
                              alibi_slopes=[0.2, 0.7]))
    # random problems with kv_lengths and any other variants
    cases += random_variant_cases(1301, 30, prefix="random-", force=("kv_lengths",),
                                  oracle=oracle)
    return cases


@pytest.mark.parametrize("isa, threads", ISA_COMBOS)
def test_every_isa_path(isa_runs, isa, threads):
    check_isa_path(isa_runs, "test_kv_lengths", isa, threads)
