"""Packed variable-length batches: ``attention_varlen``.

q is (total_q, H, D), k and v are (total_k, Hkv, D / Dv); sequence b owns
rows ``cu_seqlens_q[b]:cu_seqlens_q[b + 1]`` and the same for keys; every
option applies per sequence with that sequence's own lengths; lse comes back
as (H, total_q).  Results are checked against ``reference.attention_varlen``
on float64 copies under the tolerance rule of support/compare.py, and against the
same batch padded (queries left-padded, keys right-padded) with kv_lengths
and with an explicit bool mask.  ``isa_cases`` runs the core cases on every
ISA path at 1 and 2 threads.
"""

import numpy as np
import pytest

import fastattn
from support import (ISA_COMBOS, IsaCase, VarlenRefs, check_isa_path, half_dtypes,
                     plan_kernel_varlen)
from support.matrix import exact_oracle


def pack(rng, lq, lk, h=4, hkv=2, d=8, dv=None, dtype=np.float32):
    """Random packed q, k, v and the offsets for sequence lengths lq, lk."""
    dv = d if dv is None else dv
    cq = np.concatenate([[0], np.cumsum(lq)]).astype(np.int64)
    ck = np.concatenate([[0], np.cumsum(lk)]).astype(np.int64)
    q = rng.standard_normal((cq[-1], h, d)).astype(dtype)
    k = rng.standard_normal((ck[-1], hkv, d)).astype(dtype)
    v = rng.standard_normal((ck[-1], hkv, dv)).astype(dtype)
    return q, k, v, cq, ck


def check_varlen(q, k, v, cq, ck, **kw):
    out, lse = fastattn.attention_varlen(q, k, v, cq, ck, return_lse=True, **kw)
    assert out.shape == (q.shape[0], q.shape[1], v.shape[2]) and out.dtype == q.dtype
    assert lse.shape == (q.shape[1], q.shape[0])
    VarlenRefs(q, k, v, cq, ck, **kw).check(out, lse)
    return out, lse


SEQS = {
    "mixed": ([3, 0, 5, 1, 17, 0], [4, 6, 0, 1, 30, 0]),   # empty q, empty k, both
    "single": ([9], [9]),
    "q_ne_k": ([7, 2, 12], [3, 12, 12]),
    "long": ([70, 1], [130, 300]),
}
OPTIONS = {
    "plain": {},
    "causal": dict(causal=True),
    "top_left": dict(causal="top_left"),
    "window": dict(window=(3, 2)),
    "local": dict(causal=True, window=(5, 0)),
    "alibi_h": dict(alibi_slopes=[0.5, 0.25, -0.2, 1.0]),
    "alibi_bh": "per-batch",
    "softcap": dict(softcap=1.0, scale=0.7),
    "all": dict(causal=True, window=(20, -1), softcap=3.0, alibi_slopes=[0.1, 0.2, 0.3, 0.4]),
}


@pytest.mark.parametrize("opt", list(OPTIONS))
@pytest.mark.parametrize("seqs", list(SEQS))
def test_varlen_matches_reference(rng, seqs, opt):
    lq, lk = SEQS[seqs]
    q, k, v, cq, ck = pack(rng, lq, lk, dv=6)
    kw = OPTIONS[opt]
    if kw == "per-batch":
        kw = dict(alibi_slopes=rng.uniform(-0.5, 1.0, (len(lq), 4)), causal=True)
    out, lse = check_varlen(q, k, v, cq, ck, **kw)
    # sequences without keys: exact zeros, lse -inf
    for b in range(len(lq)):
        if lk[b] == 0:
            rows = slice(cq[b], cq[b + 1])
            assert (out[rows] == 0).all() and (lse[:, rows] == -np.inf).all()


def padded(q, k, v, cq, ck):
    """The packed batch as (B, H, Nq, D) with queries left-padded (so the
    last query of each sequence is the last row: bottom-right alignment)
    and keys right-padded (kv_lengths); padding is NaN-free garbage."""
    lq, lk = np.diff(cq), np.diff(ck)
    nb, nq, nk = len(lq), int(lq.max()), int(lk.max())
    h, hkv = q.shape[1], k.shape[1]
    qp = np.full((nb, h, nq, q.shape[2]), 7.0, q.dtype)
    kp = np.full((nb, hkv, nk, k.shape[2]), -3.0, k.dtype)
    vp = np.full((nb, hkv, nk, v.shape[2]), 5.0, v.dtype)
    for b in range(nb):
        qp[b, :, nq - lq[b]:] = q[cq[b]:cq[b + 1]].transpose(1, 0, 2)
        kp[b, :, :lk[b]] = k[ck[b]:ck[b + 1]].transpose(1, 0, 2)
        vp[b, :, :lk[b]] = v[ck[b]:ck[b + 1]].transpose(1, 0, 2)
    return qp, kp, vp, lk


def unpad(out_p, lse_p, cq):
    """Rows of the real queries of a padded result, packed again."""
    lq = np.diff(cq)
    nq = out_p.shape[2]
    out = np.concatenate([out_p[b, :, nq - lq[b]:].transpose(1, 0, 2) for b in range(len(lq))])
    lse = np.concatenate([lse_p[b, :, nq - lq[b]:] for b in range(len(lq))], axis=1)
    return out, lse


def band_mask(cq, ck, nq, nk, causal=False, window=None):
    """(B, 1, Nq, Nk) bool of the padded layout: key exists, and the
    per-sequence causal / window band."""
    lq, lk = np.diff(cq), np.diff(ck)
    i = np.arange(nq)[None, :, None] - (nq - lq)[:, None, None]   # index within the sequence
    j = np.arange(nk)[None, None, :]
    diag = i + (lk - lq)[:, None, None]
    vis = j < lk[:, None, None]
    if causal:
        vis = vis & (j <= diag)
    if window is not None:
        left, right = window
        if left >= 0:
            vis = vis & (j >= diag - left)
        if right >= 0:
            vis = vis & (j <= diag + right)
    return vis[:, None]


@pytest.mark.parametrize("opt", ["plain", "causal", "window", "local", "alibi_h", "softcap"])
def test_varlen_equals_padding_with_kv_lengths_and_with_mask(rng, opt):
    lq, lk = [3, 0, 5, 1, 17, 4], [4, 6, 0, 1, 30, 9]
    q, k, v, cq, ck = pack(rng, lq, lk)
    kw = OPTIONS[opt]
    refs = VarlenRefs(q, k, v, cq, ck, **kw)
    out, lse = fastattn.attention_varlen(q, k, v, cq, ck, return_lse=True, **kw)
    refs.check(out, lse)
    qp, kp, vp, lens = padded(q, k, v, cq, ck)
    # padded + kv_lengths: the same results for the real rows
    o_p, l_p = fastattn.attention(qp, kp, vp, kv_lengths=lens, return_lse=True, **kw)
    refs.check(*unpad(o_p, l_p, cq))
    if "alibi_slopes" not in kw:
        # padded + an explicit bool mask (key padding and the per-sequence band)
        kw2 = {key: val for key, val in kw.items() if key not in ("causal", "window")}
        mask = band_mask(cq, ck, qp.shape[2], kp.shape[2], kw.get("causal", False),
                         kw.get("window"))
        o_m, l_m = fastattn.attention(qp, kp, vp, mask=mask, return_lse=True, **kw2)
        refs.check(*unpad(o_m, l_m, cq))


def test_varlen_gqa_and_mqa(rng):
    for h, hkv in [(6, 3), (6, 1), (2, 2)]:
        q, k, v, cq, ck = pack(rng, [4, 9, 1], [8, 9, 20], h=h, hkv=hkv, d=16, dv=4)
        check_varlen(q, k, v, cq, ck, causal=True)


def test_varlen_lse_and_dtypes(rng):
    for dtype in (np.float32, np.float64):
        q, k, v, cq, ck = pack(rng, [2, 5], [3, 7], dtype=dtype)
        out, lse = check_varlen(q, k, v, cq, ck)
        assert out.dtype == dtype and lse.dtype == dtype and lse.shape == (4, 7)
        assert fastattn.attention_varlen(q, k, v, cq, ck).shape == (7, 4, 8)


@pytest.mark.parametrize("dtype", half_dtypes())
def test_varlen_16_bit(rng, dtype):
    q, k, v, cq, ck = pack(rng, [3, 0, 40, 1], [5, 3, 70, 1], dtype=dtype)
    out, lse = check_varlen(q, k, v, cq, ck, causal=True)
    assert out.dtype == dtype and lse.dtype == np.float32


def test_varlen_out_and_strides(rng):
    q, k, v, cq, ck = pack(rng, [6, 11], [9, 11], d=16)
    # (H, total, D) storage viewed as (total, H, D); v and out with a
    # column stride of 2
    qt = np.ascontiguousarray(q.transpose(1, 0, 2)).transpose(1, 0, 2)
    kt = np.ascontiguousarray(k.transpose(1, 0, 2)).transpose(1, 0, 2)
    vs = np.zeros((v.shape[0], v.shape[1], 2 * v.shape[2]), v.dtype)[..., ::2]
    vs[...] = v
    out = np.full((17, 4, 16 * 2), np.nan, np.float32)[..., 1::2]
    got, lse = fastattn.attention_varlen(qt, kt, vs, cq, ck, causal=True, out=out,
                                         return_lse=True)
    assert got is out
    VarlenRefs(q, k, v, cq, ck, causal=True).check(out, lse)


def test_varlen_nan_stays_in_its_sequence(rng):
    q, k, v, cq, ck = pack(rng, [4, 5, 3], [6, 5, 2])
    v[0, 1, 2] = np.nan      # sequence 0, kv head 1 (query heads 2, 3)
    k[ck[2], 0, 0] = np.nan  # sequence 2, kv head 0
    out, lse = check_varlen(q, k, v, cq, ck)
    assert np.isnan(out[0:4, 2:, 2]).all() and np.isfinite(out[0:4, :2]).all()
    assert np.isfinite(out[4:9]).all()                   # sequence 1 untouched
    assert np.isnan(out[9:12, :2]).all() and np.isfinite(out[9:12, 2:]).all()


def test_varlen_offsets_containers(rng):
    q, k, v, cq, ck = pack(rng, [2, 0, 3], [1, 4, 4])
    want = fastattn.attention_varlen(q, k, v, cq, ck, causal=True)
    for a, b in [(list(cq), list(ck)), (tuple(cq), tuple(ck)),
                 (cq.astype(np.int32), ck.astype(np.uint16)), (cq[::-1][::-1], ck)]:
        np.testing.assert_array_equal(
            fastattn.attention_varlen(q, k, v, a, b, causal=True), want)


def test_varlen_no_sequences_and_no_rows(rng):
    q, k, v, cq, ck = pack(rng, [], [])
    out, lse = fastattn.attention_varlen(q, k, v, [0], [0], return_lse=True)
    assert out.shape == (0, 4, 8) and lse.shape == (4, 0)
    # sequences that are all empty
    q, k, v, cq, ck = pack(rng, [0, 0], [0, 3])
    out, lse = check_varlen(q, k, v, cq, ck)
    assert out.shape == (0, 4, 8) and lse.shape == (4, 0)


# ---------------------------------------------------------------------------
# every ISA path, 1 and 2 threads
# ---------------------------------------------------------------------------

def varlen_case(name, q, k, v, cq, ck, kw=None, oracle=exact_oracle, **kws):
    kw = dict(kw or {}, **kws)
    cache = {}

    def run():
        return fastattn.attention_varlen(q, k, v, cq, ck, return_lse=True, **kw)

    def check(res):
        if "refs" not in cache:
            cache["refs"] = VarlenRefs(q, k, v, cq, ck, per_sequence=oracle(q.dtype), **kw)
        cache["refs"].check(*res)

    return IsaCase(name, run, check, plan=lambda: plan_kernel_varlen(q, k, v, cq, ck, **kw))


def isa_cases(oracle=exact_oracle):
    rng = np.random.default_rng(404)
    cases = []
    configs = {
        # few-row kernel (H / Hkv * 1 query <= 4), split-KV (2 tasks, 1500 keys)
        "decode_split": dict(lq=[1, 1, 0], lk=[1500, 40, 7], h=4, hkv=1, d=32, dv=16),
        "decode": dict(lq=[2, 1, 2], lk=[100, 0, 65], h=4, hkv=2, d=16),
        "tile": dict(lq=[70, 5, 0, 66], lk=[130, 0, 40, 66], h=4, hkv=2, d=16),
        "tile_split": dict(lq=[40], lk=[1100], h=2, hkv=2, d=16, dv=8),
    }
    for name, cfg in configs.items():
        q, k, v, cq, ck = pack(rng, cfg["lq"], cfg["lk"], h=cfg["h"], hkv=cfg["hkv"],
                               d=cfg["d"], dv=cfg.get("dv"))
        nb, h = len(cfg["lq"]), cfg["h"]
        for opt, kw in [("plain", {}), ("causal", dict(causal=True)),
                        ("local", dict(causal=True, window=(50, 0))),
                        ("alibi_bh_softcap", dict(alibi_slopes=rng.uniform(0, 0.3, (nb, h)),
                                                  softcap=2.5))]:
            cases.append(varlen_case(f"{name}-{opt}", q, k, v, cq, ck, oracle=oracle, **kw))
    q, k, v, cq, ck = pack(rng, [33, 0, 100], [50, 20, 90], dtype=np.float64)
    cases.append(varlen_case("f64", q, k, v, cq, ck, causal=True, window=(10, 10),
                             oracle=oracle))
    # random packed batches with any options
    for i in range(20):
        cases.append(varlen_case(f"random-{i}", *random_varlen(rng), oracle=oracle))
    return cases


def random_varlen(rng):
    """(q, k, v, cq, ck, kw = {...}) of a random packed batch."""
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    nb = pick([1, 2, 3, 5])
    sizes = [0, 1, 2, 5, 17, 64, 65, 130]
    lq = [pick(sizes) for _ in range(nb)]
    lk = [pick(sizes + [1100]) if rng.random() < 0.3 else pick(sizes) for _ in range(nb)]
    hkv = pick([1, 2])
    h = hkv * pick([1, 2, 4])
    d = pick([8, 16, 32])
    dtype = pick([np.float32, np.float32, np.float64, np.float16])
    q, k, v, cq, ck = pack(rng, lq, lk, h=h, hkv=hkv, d=d, dv=pick([d, 8]), dtype=dtype)
    kw = {}
    causal = pick([False, True, "top_left"])
    if rng.random() < 0.5:
        kw["window"] = (pick([-1, 0, 3, 70]), pick([-1, 0, 3, 70]))
        causal = True if causal == "top_left" else causal
    if causal:
        kw["causal"] = causal
    if rng.random() < 0.4:
        kw["alibi_slopes"] = rng.uniform(-0.2, 0.8, pick([(h,), (nb, h)]))
    if rng.random() < 0.4:
        kw["softcap"] = pick([0.5, 4.0])
    return q, k, v, cq, ck, kw


@pytest.mark.parametrize("isa, threads", ISA_COMBOS)
def test_every_isa_path(isa_runs, isa, threads):
    check_isa_path(isa_runs, "test_varlen", isa, threads)
