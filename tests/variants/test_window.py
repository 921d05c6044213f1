"""Sliding-window attention: ``window=(left, right)``.

Contract (fastattn.attention): query i sees key j iff
``i + Nk - Nq - left <= j <= i + Nk - Nq + right`` (bottom-right aligned,
-1 = that side unbounded); ``causal=True`` intersects with it (right
becomes min(right, 0)); rows that see no key give zeros and lse -inf.

Every result is checked against the float64 reference under the tolerance
rule of support/compare.py; the reference's window itself is cross-checked against
an explicit band mask built here from the formula above.  ``isa_cases``
runs the core cases on every ISA path at 1 and 2 threads (support/isa.py).
"""

import numpy as np
import pytest

import fastattn
from support import (ISA_COMBOS, AttentionRefs, assert_result, attention_case,
                      check_any, check_attention, check_isa_path, make_mask, make_qkv,
                      path_qkv, random_variant_cases)
from support.matrix import exact_oracle


def band_mask(nq, nk, left, right, causal=False):
    """(Nq, Nk) bool: True where query i may see key j (the contract's formula)."""
    i = np.arange(nq)[:, None]
    j = np.arange(nk)[None, :]
    diag = i + nk - nq
    vis = np.ones((nq, nk), dtype=bool)
    if left >= 0:
        vis &= j >= diag - left
    if right >= 0:
        vis &= j <= diag + right
    if causal:
        vis &= j <= diag
    return vis


WINDOWS = [(0, 0), (1, 2), (3, 0), (0, 3), (-1, 2), (2, -1), (-1, -1), (50, 50), (0, -1),
           (-1, 0)]
SHAPES = [(6, 11), (11, 6), (9, 9), (1, 13), (13, 1)]


@pytest.mark.parametrize("causal", [False, True], ids=["plain", "causal"])
@pytest.mark.parametrize("nq, nk", SHAPES, ids=[f"{a}x{b}" for a, b in SHAPES])
@pytest.mark.parametrize("window", WINDOWS, ids=[f"w{a}_{b}" for a, b in WINDOWS])
def test_window_matches_reference_and_band_mask(rng, window, nq, nk, causal):
    q, k, v = make_qkv(rng, (2, 2), nq, nk, 8)
    out, lse = check_attention(q, k, v, window=window, causal=causal)
    # the same result as the explicit band mask (independent of the
    # reference's own window code)
    band = band_mask(nq, nk, *window, causal=causal)
    assert_result(q, k, v, out, lse, mask=band)
    empty = ~band.any(axis=1)
    assert (out[..., empty, :] == 0).all() and (lse[..., empty] == -np.inf).all()


@pytest.mark.parametrize("window", [(0, 0), (2, 1), (-1, 3), (4, -1)])
def test_window_float64(rng, window):
    q, k, v = make_qkv(rng, (2, 3), 20, 33, 16, hkv=1, dtype=np.float64)
    check_attention(q, k, v, window=window)
    check_attention(q, k, v, window=window, causal=True)


def test_window_zero_zero_sees_only_the_diagonal_key(rng):
    # Nq > Nk: the first Nq - Nk queries have no diagonal key at all
    for nq, nk in [(5, 8), (8, 5), (6, 6)]:
        q, k, v = make_qkv(rng, (2, 2), nq, nk, 8, dv=5)
        out, lse = check_attention(q, k, v, window=(0, 0))
        scale = 1 / np.sqrt(8)
        for i in range(nq):
            j = i + nk - nq
            if j < 0:
                assert (out[..., i, :] == 0).all() and (lse[..., i] == -np.inf).all()
            else:
                # one key with weight 1: the output is that value row, the
                # lse that key's score
                np.testing.assert_allclose(out[..., i, :], v[..., j, :], rtol=2e-6, atol=1e-6)
                s = np.einsum("bhd,bhd->bh", q[..., i, :].astype(np.float64),
                              k[..., j, :].astype(np.float64)) * scale
                np.testing.assert_allclose(lse[..., i], s, rtol=1e-5, atol=1e-6)


def test_unbounded_window_is_plain_attention(rng):
    q, k, v = make_qkv(rng, (2, 4), 30, 45, 16, hkv=2)
    for causal in (False, True):
        plain = fastattn.attention(q, k, v, causal=causal, return_lse=True)
        for w in [(-1, -1), [-1, -1], (2 ** 62, 2 ** 62), (2 ** 70, -1),
                  (np.int64(2 ** 63 - 1), np.int32(-1))]:
            got = fastattn.attention(q, k, v, causal=causal, window=w, return_lse=True)
            # an unbounded side is no band at all: the very same computation
            np.testing.assert_array_equal(got[0], plain[0], err_msg=f"window={w}")
            np.testing.assert_array_equal(got[1], plain[1], err_msg=f"window={w}")
        check_attention(q, k, v, causal=causal, window=(-1, -1))


@pytest.mark.parametrize("nq, nk", [(7, 40), (40, 7), (30, 30)])
def test_window_wider_than_the_sequence(rng, nq, nk):
    q, k, v = make_qkv(rng, (2, 2), nq, nk, 8)
    wide = nq + nk + 3
    out, lse = fastattn.attention(q, k, v, window=(wide, wide), return_lse=True)
    # every key visible: the reference without any window
    assert_result(q, k, v, out, lse)
    out, lse = fastattn.attention(q, k, v, window=(wide, wide), causal=True, return_lse=True)
    assert_result(q, k, v, out, lse, causal=True)


@pytest.mark.parametrize("nq, nk", [(40, 40), (10, 70), (70, 10)])
@pytest.mark.parametrize("w", [0, 1, 7, 64])
def test_causal_local_attention(rng, nq, nk, w):
    q, k, v = make_qkv(rng, (2, 4), nq, nk, 16, hkv=2)
    out, lse = check_attention(q, k, v, causal=True, window=(w, 0))
    assert_result(q, k, v, out, lse, mask=band_mask(nq, nk, w, 0, causal=True))
    # causal makes the right side 0, whatever it was; and window (w, 0)
    # alone is the same band: the very same computation
    for kw in (dict(causal=True, window=(w, 5)), dict(causal=True, window=(w, -1)),
               dict(causal="bottom_right", window=(w, 0)),
               dict(causal=np.bool_(True), window=(w, 3)), dict(window=(w, 0))):
        o2, l2 = fastattn.attention(q, k, v, return_lse=True, **kw)
        np.testing.assert_array_equal(o2, out, err_msg=str(kw))
        np.testing.assert_array_equal(l2, lse, err_msg=str(kw))


@pytest.mark.parametrize("kind", ["bool", "add32", "add64"])
def test_window_with_masks(rng, kind):
    for nq, nk in [(12, 20), (20, 12)]:
        q, k, v = make_qkv(rng, (2, 2), nq, nk, 8)
        mask = make_mask(rng, kind, (2, 1, nq, nk), p_visible=0.5)
        check_attention(q, k, v, mask=mask, window=(2, 1))
        check_attention(q, k, v, mask=mask, window=(3, -1), causal=True)


def test_window_2d_3d_gqa_and_dv(rng):
    q, k, v = make_qkv(rng, (), 17, 23, 8, dv=3)
    check_attention(q, k, v, window=(4, 2))
    q, k, v = make_qkv(rng, (6,), 17, 23, 8, dv=12, hkv=2)
    check_attention(q, k, v, window=(0, 4), causal=True)
    q, k, v = make_qkv(rng, (2, 6), 3, 90, 8, hkv=3)
    check_attention(q, k, v, window=(10, -1))


def test_window_zero_sizes(rng):
    q, k, v = make_qkv(rng, (2, 2), 0, 5, 8)
    check_attention(q, k, v, window=(1, 1))
    q, k, v = make_qkv(rng, (2, 2), 4, 0, 8)
    out, lse = check_attention(q, k, v, window=(1, 1))
    assert (out == 0).all() and (lse == -np.inf).all()


def test_keys_outside_every_window_are_not_read(rng):
    # Only keys 289..299 are in the window of the single query; NaN and
    # inf in the keys before (whole key blocks never visited) must not
    # matter.  (v stays finite: the reference's p @ v would turn 0 * NaN
    # into NaN, see robustness/test_edges.py.)
    for lead, hkv, nq in [((1, 4), 1, 1), ((2, 2), 2, 70)]:
        q, k, v = make_qkv(rng, lead, nq, 300, 16, hkv=hkv)
        k[..., :200, :] = np.nan
        k[..., 0, 0] = np.inf
        out, lse = check_attention(q, k, v, window=(10, 0))
        assert np.isfinite(out).all() and np.isfinite(lse).all()


def test_window_nan_propagates_only_where_seen(rng):
    # NaN in key 5 of head 0 makes the scores of the queries that see it
    # NaN (whole rows); a hidden key's score does not matter.  (NaN in v
    # at a key hidden from some rows is left unspecified, see
    # robustness/test_edges.py.)
    q, k, v = make_qkv(rng, (1, 2), 20, 20, 8)
    k[0, 0, 5, 1] = np.nan
    q[0, 1, 12, 0] = np.nan  # one query row of head 1
    out, lse = check_attention(q, k, v, window=(0, 2))
    # window (0, 2) with Nq == Nk: query i sees keys i..i+2, so queries
    # 3, 4, 5 see key 5
    assert np.isnan(out[0, 0, 3:6]).all() and np.isnan(lse[0, 0, 3:6]).all()
    assert np.isfinite(out[0, 0, :3]).all() and np.isfinite(out[0, 0, 6:]).all()
    assert np.isnan(out[0, 1, 12]).all()
    assert np.isfinite(np.delete(out[0, 1], 12, axis=0)).all()


def test_window_out_and_layouts(rng):
    q, k, v = make_qkv(rng, (2, 4), 33, 50, 16)
    qt, kt, vt = (np.ascontiguousarray(a.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
                  for a in (q, k, v))
    out = np.full((2, 4, 33, 16), np.nan, np.float32)
    got = fastattn.attention(qt, kt, vt, window=(5, 2), out=out)
    assert got is out
    AttentionRefs(q, k, v, window=(5, 2)).check(out)
    check_any(q[:, :, ::-1], k[:, :, ::2], v[:, :, ::2], window=(3, 3))


# ---------------------------------------------------------------------------
# every ISA path, 1 and 2 threads
# ---------------------------------------------------------------------------

def isa_cases(oracle=exact_oracle):
    rng = np.random.default_rng(101)
    cases = []
    for path in ("decode", "decode_split", "tile", "tile_split"):
        q, k, v = path_qkv(rng, path)
        for w, causal in [((0, 0), False), ((5, 3), False), ((-1, 4), False),
                          ((16, 0), True), ((100, -1), True)]:
            cases.append(attention_case(f"{path}-w{w}-c{int(causal)}", q, k, v,
                                        window=w, causal=causal))
    # Nq > Nk and Nq < Nk with a window across tile edges; float64
    q, k, v = make_qkv(rng, (2, 2), 130, 70, 16)
    cases.append(attention_case("nq_gt_nk", q, k, v, window=(10, 10)))
    cases.append(attention_case("nq_gt_nk_causal", q, k, v, window=(70, 0), causal=True))
    q, k, v = make_qkv(rng, (1, 4), 100, 300, 24, hkv=2, dtype=np.float64)
    cases.append(attention_case("f64_local", q, k, v, window=(64, 0), causal=True))
    cases.append(attention_case("f64_two_sided", q, k, v, window=(3, 90)))
    q, k, v = make_qkv(rng, (1, 2), 1, 1500, 16, dtype=np.float64)
    cases.append(attention_case("f64_decode_split_window", q, k, v, window=(1200, 0)))
    # random problems with a window and any other variants
    cases += random_variant_cases(1101, 30, prefix="random-", force=("window",), oracle=oracle)
    return cases


@pytest.mark.parametrize("isa, threads", ISA_COMBOS)
def test_every_isa_path(isa_runs, isa, threads):
    check_isa_path(isa_runs, "test_window", isa, threads)
