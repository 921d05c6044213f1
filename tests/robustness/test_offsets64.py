"""Element offsets and strides beyond 2**31 (64-bit address arithmetic).

A sparse file of 20 GiB (only the touched pages take memory or disk) is
mapped with ``np.memmap``; the cases take views of it whose rows, heads,
batches or columns lie more than 2**31 elements apart, or start beyond
element 2**31, so a 32-bit ``int`` anywhere in an offset computation
(``row * stride``, ``head * stride``...) would read or write the wrong place.
20 GiB rather than 12 so that float64 views can also have element offsets
beyond 2**31 (16 GiB).  Results are compared with the NumPy reference run
on compact copies; ``out`` and the mask live in the big mapping too.

Each case runs in a fresh interpreter (this file as a script), so a fault
from a truncated offset fails the case instead of killing pytest.
"""

import json
import os
import signal
import subprocess
import sys
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FILE_BYTES = 20 * 2 ** 30
E = 2 ** 31          # the element offset every case must cross
MI = 2 ** 20         # element-offset granularity of the placements below


def view(mm, start, shape, estrides):
    """A view of the 1-D memmap ``mm`` at element ``start`` with the given
    shape and element strides."""
    item = mm.dtype.itemsize
    return np.ndarray(shape, dtype=mm.dtype, buffer=mm, offset=start * item,
                      strides=tuple(s * item for s in estrides))


def cstrides(shape):
    st = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        st[i] = st[i + 1] * shape[i + 1]
    return st


# Each case: name -> (dtype, dict of arrays).  An array is given as
# (start element, shape, element strides); "mask" is bool, in bytes.
# Starts and strides are chosen so that no two arrays of a case overlap.
def _cases():
    cases = {}
    nq, nk, d, dv = 5, 300, 64, 48
    # Rows that start beyond element 2**31 (and 2**32): plain 2-D views.
    cases["rows_beyond_2g"] = ("float32", dict(
        q=(E + 3 * MI + 1, (nq, d), cstrides((nq, d))),
        k=(E + 5, (nk, d), cstrides((nk, d))),
        v=(2 * E + 7, (nk, dv), cstrides((nk, dv))),
        out=(E + 4 * MI, (nq, dv), cstrides((nq, dv))),
        mask=(3 * E + 11, (nq, nk), cstrides((nq, nk)))), {})
    # Two heads more than 2**31 elements apart (and unequal head strides).
    h = 2
    cases["head_stride_beyond_2g"] = ("float32", dict(
        q=(0, (h, nq, d), (E + 1, d, 1)),
        k=(1 * MI, (h, nk, d), (E + 4099, d, 1)),
        v=(2 * MI, (h, nk, dv), (E + 77, dv, 1)),
        out=(3 * MI, (h, nq, dv), (E + 3, dv, 1)),
        mask=(16 * MI * 4, (h, nq, nk), (E + 5, nk, 1))), dict(causal=True))
    # Decode with grouped-query heads: 4 query heads over 2 kv heads whose
    # stride is beyond 2**31 (the few-row kernel).
    cases["decode_gqa_head_stride"] = ("float32", dict(
        q=(5 * MI, (4, 1, d), (E // 2 + 9, d, 1)),
        k=(6 * MI, (2, 1500, d), (E + 13, d, 1)),
        v=(7 * MI + 100 * 1024, (2, 1500, dv), (E + 17, dv, 1)),
        out=(8 * MI, (4, 1, dv), (E // 2 + 19, dv, 1)),
        mask=None), {})
    # Batch stride beyond 2**31 in a 4-D (B, H, N, D) view.
    cases["batch_stride_beyond_2g"] = ("float32", dict(
        q=(9 * MI, (2, 1, nq, d), (E + 21, nq * d, d, 1)),
        k=(10 * MI, (2, 1, nk, d), (E + 23, nk * d, d, 1)),
        v=(11 * MI, (2, 1, nk, dv), (E + 25, nk * dv, dv, 1)),
        out=(12 * MI, (2, 1, nq, dv), (E + 27, nq * dv, dv, 1)),
        mask=(20 * MI * 4, (2, 1, nq, nk), (E + 29, nq * nk, nk, 1))),
        dict(causal="top_left"))
    # Row strides of 2**30 + x elements: row index * stride passes 2**31
    # (and 2**32) within one array.
    r = 2 ** 30
    cases["row_stride_product_beyond_2g"] = ("float32", dict(
        q=(13 * MI, (3, d), (r + 31, 1)),
        k=(14 * MI, (5, d), (r + 37, 1)),
        v=(15 * MI, (5, dv), (r + 41, 1)),
        out=(16 * MI, (3, dv), (r + 43, 1)),
        mask=(24 * MI * 4, (3, 5), (E + 47, r + 3))), {})
    # Column strides beyond 2**31 (k and v columns far apart: the general
    # strided kernel, not the contiguous-column one).
    dd = 3
    cases["column_stride_beyond_2g"] = ("float32", dict(
        q=(17 * MI, (4, dd), (dd, E + 53)),
        k=(18 * MI, (40, dd), (1, E // 2 + 59)),
        v=(19 * MI, (40, 2), (1, E + 61)),
        out=(20 * MI, (4, 2), (1, E + 67)),
        mask=None), {})
    # float64: element offsets beyond 2**31 (byte offsets beyond 16 GiB).
    cases["float64_head_stride_beyond_2g"] = ("float64", dict(
        q=(21 * MI, (2, nq, d), (E + 71, d, 1)),
        k=(22 * MI, (2, nk, d), (E + 73, d, 1)),
        v=(23 * MI, (2, nk, dv), (E + 79, dv, 1)),
        out=(24 * MI, (2, nq, dv), (E + 83, dv, 1)),
        mask=(28 * MI * 8, (2, nq, nk), (E + 89, nk, 1))), dict(causal=True))
    cases["float64_split_keys_beyond_2g"] = ("float64", dict(
        q=(E + 25 * MI, (1, d), (d, 1)),
        k=(E + 26 * MI, (1500, d), (d, 1)),
        v=(E + 27 * MI, (1500, dv), (dv, 1)),
        out=(E + 28 * MI, (1, dv), (dv, 1)),
        mask=None), {})
    return cases


CASES = _cases()


def extent(start, shape, estrides):
    lo = start + sum((n - 1) * s for n, s in zip(shape, estrides) if s < 0)
    hi = start + sum((n - 1) * s for n, s in zip(shape, estrides) if s > 0) + 1
    return lo, hi


def child_main(path, name):
    import fastattn
    from support import assert_result

    dtype_name, arrays, kw = CASES[name]
    dtype = np.dtype(dtype_name)
    n_elem = FILE_BYTES // dtype.itemsize
    big = np.memmap(path, dtype=dtype, mode="r+", shape=(n_elem,))
    bytes_ = np.memmap(path, dtype=np.uint8, mode="r+", shape=(FILE_BYTES,))
    rng = np.random.default_rng(zlib.crc32(name.encode()))

    views = {}
    crossed = False
    for key in ("q", "k", "v", "out", "mask"):
        spec = arrays[key]
        if spec is None:
            views[key] = None
            continue
        start, shape, st = spec
        src = bytes_ if key == "mask" else big
        lo, hi = extent(start, shape, st)
        assert 0 <= lo and hi <= src.shape[0], (key, lo, hi)
        crossed = crossed or hi > E
        a = view(src, start, shape, st)
        if key == "mask":
            a = a.view(np.bool_)
            a[...] = rng.random(shape) < 0.7
        elif key == "out":
            a[...] = np.nan
        else:
            a[...] = rng.standard_normal(shape)
        views[key] = a
    assert crossed
    q, k, v, out, mask = (views[x] for x in ("q", "k", "v", "out", "mask"))
    # Compact copies for the reference, taken before the call.
    qc, kc, vc = np.array(q), np.array(k), np.array(v)
    mc = None if mask is None else np.array(mask)

    o, lse = fastattn.attention(q, k, v, mask=mask, out=out, return_lse=True, **kw)
    assert o is out
    assert_result(qc, kc, vc, np.array(o), lse, mask=mc, **kw)
    # the inputs are unchanged
    np.testing.assert_array_equal(np.array(q), qc)
    np.testing.assert_array_equal(np.array(k), kc)
    np.testing.assert_array_equal(np.array(v), vc)
    print("OK")


if __name__ != "__main__":
    import pytest

    from support.child import child_env

    @pytest.fixture(scope="module")
    def sparse_file(tmp_path_factory):
        path = tmp_path_factory.mktemp("offsets64") / "sparse.bin"
        try:
            with open(path, "wb") as f:
                f.truncate(FILE_BYTES)
            st = os.stat(path)
        except (OSError, OverflowError) as e:
            path.unlink(missing_ok=True)
            pytest.skip(f"cannot create a {FILE_BYTES >> 30} GiB sparse file here: {e}")
        if st.st_size != FILE_BYTES or st.st_blocks * 512 > 16 * 2 ** 20:
            path.unlink(missing_ok=True)
            pytest.skip("the filesystem does not keep the file sparse "
                        f"({st.st_blocks * 512} bytes allocated)")
        yield path
        path.unlink(missing_ok=True)

    @pytest.mark.parametrize("name", list(CASES))
    def test_offsets_beyond_2g(sparse_file, name):
        r = subprocess.run([sys.executable, "-X", "faulthandler", __file__,
                            str(sparse_file), name],
                           env=child_env(), capture_output=True, text=True, timeout=120)
        if r.returncode < 0:
            pytest.fail(f"{name}: child killed by {signal.Signals(-r.returncode).name}:\n"
                        f"{r.stderr[-3000:]}")
        assert r.returncode == 0 and r.stdout.strip() == "OK", \
            f"{name} failed:\n{r.stdout[-1000:]}\n{r.stderr[-3000:]}"

    def test_cases_do_not_overlap():
        # The placements above must be disjoint within each case (byte
        # ranges of all elements of all arrays), or the comparison with the
        # reference would not mean anything.
        for name, (dtype, arrays, _) in CASES.items():
            item = np.dtype(dtype).itemsize
            starts, ends = [], []
            for key, spec in arrays.items():
                if spec is None:
                    continue
                start, shape, st = spec
                size = 1 if key == "mask" else item
                idx = np.zeros((), dtype=np.int64)
                for n, s in zip(shape, st):
                    idx = idx[..., None] + np.arange(n, dtype=np.int64) * s
                b = (start + idx.ravel()) * size
                assert b.min() >= 0 and b.max() + size <= FILE_BYTES, (name, key)
                starts.append(b)
                ends.append(b + size)
            s, e = np.concatenate(starts), np.concatenate(ends)
            order = np.argsort(s, kind="stable")
            s, e = s[order], e[order]
            assert np.all(s[1:] >= e[:-1]), f"{name}: two elements overlap"


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    child_main(sys.argv[1], sys.argv[2])
