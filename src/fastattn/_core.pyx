# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The binding between NumPy arrays and the fastattn C core.

Every argument is validated here, before any memory is touched; the C core
trusts the ``fa_params`` struct it is given.  Inputs are read in place
through their strides (as int64 element strides); only an array whose data
pointer or strides are not a multiple of its item size (a byte-offset view
into a raw buffer) is copied first, because the C core reads whole
elements.  The computation runs with the GIL released.

Layout of this file: argument helpers; ``_Call`` (one call's arrays and
its zeroed ``fa_params``) and the small steps that fill it; the entry
points ``attention`` and ``plan``; the runtime (threads, ISA registry).
The probes and test hooks (exp2, tanh, FMA peak, read bandwidth) are in
_probes.pxi.  The C declarations are in _core.pxd.
"""

cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.math cimport sqrt, isfinite
from libc.string cimport memset

import numpy as np

cnp.import_array()

cdef extern from "fa_build_info.h":
    const char *FA_BUILD_COMPILER
    const char *FA_BUILD_CFLAGS
    const char *FA_BUILD_KERNEL_FLAGS


# ---------------------------------------------------------------- helpers

cdef inline str _shape_str(tuple shape):
    return "(" + ", ".join([str(s) for s in shape]) + ")"


cdef bint _is_bfloat16(object dtype):
    """ml_dtypes' bfloat16 (recognized by name: ml_dtypes is optional and
    never imported here)."""
    return dtype.name == "bfloat16" and dtype.itemsize == 2 and dtype.kind == "V"


cdef fa_dtype _dtype_code(cnp.ndarray a):
    """The core's code for an array that passed _as_float_array."""
    cdef int t = cnp.PyArray_TYPE(a)
    if t == cnp.NPY_FLOAT32:
        return FA_F32
    if t == cnp.NPY_FLOAT64:
        return FA_F64
    if t == cnp.NPY_FLOAT16:
        return FA_F16
    return FA_BF16


cdef cnp.ndarray _as_float_array(object a, str name):
    """Check that ``a`` is a float32/float64/float16/bfloat16 ndarray; return
    it, or an aligned copy when its data or strides are not whole elements."""
    if not isinstance(a, cnp.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef int t = cnp.PyArray_TYPE(arr)
    if (t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64 and t != cnp.NPY_FLOAT16
            and not _is_bfloat16(arr.dtype)):
        raise TypeError(f"{name} has dtype {arr.dtype}; expected float32, float64, "
                        "float16 or bfloat16")
    return _whole_elements(arr)


cdef cnp.ndarray _whole_elements(cnp.ndarray arr):
    """``arr`` itself if every element sits at a multiple of its size
    (native byte order), else a C-contiguous aligned copy."""
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(arr)
    cdef int i
    cdef bint ok = cnp.PyArray_ISALIGNED(arr) and cnp.PyArray_ISNOTSWAPPED(arr)
    if ok:
        if (<size_t>cnp.PyArray_DATA(arr)) % item != 0:
            ok = False
        for i in range(cnp.PyArray_NDIM(arr)):
            if cnp.PyArray_DIMS(arr)[i] > 1 and cnp.PyArray_STRIDES(arr)[i] % item != 0:
                ok = False
    if ok:
        return arr
    return np.array(arr, dtype=arr.dtype.newbyteorder("="), order="C", copy=True)


cdef void _dims4(cnp.ndarray a, int64_t *dims, int64_t *strides):
    """The shape and element strides of ``a`` as 4-D (B, H, N, D): missing
    leading dims are size 1; a dim of size <= 1 gets stride 0."""
    cdef int nd = cnp.PyArray_NDIM(a)
    cdef int i, j
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(a)
    for i in range(4):
        j = i - (4 - nd)
        if j < 0:
            dims[i] = 1
            strides[i] = 0
        else:
            dims[i] = cnp.PyArray_DIMS(a)[j]
            strides[i] = cnp.PyArray_STRIDES(a)[j] // item if dims[i] > 1 else 0


cdef bint _may_self_overlap(cnp.ndarray a):
    """True unless the strides prove that no two elements of ``a`` share
    memory (sorted by stride, each stride must exceed the extent of the
    dims below it).  Stride-0 views written in place would race."""
    cdef Py_ssize_t st[32]
    cdef Py_ssize_t n[32]
    cdef Py_ssize_t extent = cnp.PyArray_ITEMSIZE(a), s0, n0
    cdef int i, j, m = 0
    for i in range(cnp.PyArray_NDIM(a)):      # insertion sort by |stride|
        if cnp.PyArray_DIMS(a)[i] <= 1:
            continue
        s0, n0 = abs(cnp.PyArray_STRIDES(a)[i]), cnp.PyArray_DIMS(a)[i]
        j = m
        while j > 0 and (st[j - 1] > s0 or (st[j - 1] == s0 and n[j - 1] > n0)):
            st[j], n[j] = st[j - 1], n[j - 1]
            j -= 1
        st[j], n[j] = s0, n0
        m += 1
    for i in range(m):
        if st[i] < extent:
            return True
        extent = st[i] * n[i]
    return False


cdef bint _bounds_disjoint(cnp.ndarray a, cnp.ndarray b):
    """True when the byte ranges that a and b span do not meet (the test
    np.may_share_memory makes, without the call)."""
    cdef Py_ssize_t alo, ahi, blo, bhi
    if not _byte_range(a, &alo, &ahi) or not _byte_range(b, &blo, &bhi):
        return True                               # an empty array holds no memory
    return ahi <= blo or bhi <= alo


cdef bint _byte_range(cnp.ndarray a, Py_ssize_t *lo, Py_ssize_t *hi):
    """[lo, hi): the bytes a spans; False if it has no element."""
    cdef int i
    cdef Py_ssize_t n, st
    lo[0] = <Py_ssize_t>cnp.PyArray_DATA(a)
    hi[0] = lo[0] + cnp.PyArray_ITEMSIZE(a)
    for i in range(cnp.PyArray_NDIM(a)):
        n, st = cnp.PyArray_DIMS(a)[i], cnp.PyArray_STRIDES(a)[i]
        if n == 0:
            return False
        if st < 0:
            lo[0] += st * (n - 1)
        else:
            hi[0] += st * (n - 1)
    return True


cdef bint _overlaps(object a, object b):
    if isinstance(b, cnp.ndarray) and _bounds_disjoint(<cnp.ndarray>a, <cnp.ndarray>b):
        return False
    if not np.may_share_memory(a, b):
        return False
    try:
        return np.shares_memory(a, b, max_work=100000)
    except np.exceptions.TooHardError:
        return True


cdef int64_t _window_side(object x, str side) except? -2:
    """One side of ``window``: -1 (unbounded) or a count >= 0."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"window {side} must be an int, got {type(x).__name__}")
    if x < -1:
        raise ValueError(f"window {side} must be >= 0, or -1 for unbounded; got {x}")
    # wider than any sequence is the same as unbounded (and keeps the C
    # core's index arithmetic far from int64 overflow)
    if x == -1 or x >= (1 << 62):
        return -1
    return <int64_t>x


cdef cnp.ndarray _int_lengths(object a, str name, int64_t n, int64_t limit, str what):
    """``a`` as a contiguous int64 array of n entries in [0, limit]."""
    if not isinstance(a, (cnp.ndarray, list, tuple)):
        raise TypeError(f"{name} must be a numpy.ndarray of ints, got {type(a).__name__}")
    arr = np.asarray(a)
    if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind == "f"):
        raise TypeError(f"{name} has dtype {arr.dtype}; expected an integer dtype")
    if arr.shape != (n,):
        raise ValueError(f"{name} has shape {_shape_str(arr.shape)}; expected ({n},), "
                         f"one entry per batch")
    if arr.dtype.kind == "u" and arr.size and arr.max() > (1 << 62):
        raise ValueError(f"{name} has an entry {arr.max()} larger than {what} {limit}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} has a negative entry {arr.min()}")
    if arr.size and arr.max() > limit:
        raise ValueError(f"{name} has an entry {arr.max()} larger than {what} {limit}")
    return arr


# ---------------------------------------------------------------- one call

cdef class _Call:
    """One call: its validated arrays (kept alive while the core runs) and
    the ``fa_params`` that describe them, zeroed before anything is set."""
    cdef fa_params p
    cdef int nd
    cdef int64_t qd[4]
    cdef int64_t kd[4]
    cdef int64_t vd[4]
    cdef cnp.ndarray q, k, v, mask, out, lse, slopes, lens, cuq, cuk, weights
    cdef cnp.ndarray ks, vs  # int8 k and v: their scales (_quant.pxi)
    cdef cnp.ndarray bt  # paged keys and values: the block table (_paged.pxi)
    cdef object user_out
    cdef bint copy_back

    def __cinit__(self):
        memset(&self.p, 0, sizeof(fa_params))


cdef _check_bool(object x, str name):
    if not isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(x).__name__}")


cdef double _real_arg(object x, str name, bint positive) except? -1.0:
    """A real-number argument (scale, softcap) as a finite double, > 0 if
    ``positive``."""
    what = "a positive real number" if positive else "a real number"
    need = "a positive finite number" if positive else "finite"
    if isinstance(x, (bool, np.bool_)) or not isinstance(
            x, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be {what} or None, got {type(x).__name__}")
    cdef double r
    try:
        r = float(x)
    except OverflowError:
        raise ValueError(f"{name} must be {need}, got an integer too large for a "
                         f"float ({len(str(abs(x)))} digits)") from None
    if not isfinite(r) or (positive and not r > 0):
        raise ValueError(f"{name} must be {need}, got {x if positive else r}")
    return r


cdef _set_qkv(_Call c, object q, object k, object v):
    """q, k, v: dtypes, ranks, and their (B, H, N, D) views in the params."""
    c.q = _as_float_array(q, "q")
    cdef bint int8_kv = _set_int8_kv(c, k, v)
    if not int8_kv:
        c.k = _as_float_array(k, "k")
        c.v = _as_float_array(v, "v")
    # equal type numbers: the same dtype (all three are native order now)
    if not int8_kv and ((cnp.PyArray_TYPE(c.k) != cnp.PyArray_TYPE(c.q)
            or cnp.PyArray_TYPE(c.v) != cnp.PyArray_TYPE(c.q))
            and (c.k.dtype != c.q.dtype or c.v.dtype != c.q.dtype)):
        bad, other = ("k", c.k) if c.k.dtype != c.q.dtype else ("v", c.v)
        raise TypeError(f"{bad} has dtype {other.dtype} but q has {c.q.dtype}; "
                        "q, k and v must share one dtype")
    c.nd = cnp.PyArray_NDIM(c.q)
    if c.nd < 2 or c.nd > 4:
        raise ValueError(f"q must be 2-D (Nq, D), 3-D (H, Nq, D) or 4-D (B, H, Nq, D); "
                         f"got {c.nd}-D shape {_shape_str((<object>c.q).shape)}")
    for name, a in (("k", c.k), ("v", c.v)):
        if cnp.PyArray_NDIM(a) != c.nd:
            raise ValueError(f"{name} is {cnp.PyArray_NDIM(a)}-D but q is {c.nd}-D; "
                             "q, k and v must have the same number of dimensions")
    cdef int64_t qs[4]
    cdef int64_t ks[4]
    cdef int64_t vs[4]
    _dims4(c.q, c.qd, qs)
    _dims4(c.k, c.kd, ks)
    _dims4(c.v, c.vd, vs)
    _check_shapes(c.qd, c.kd, c.vd)
    c.p.dtype = FA_I8KV if int8_kv else _dtype_code(c.q)
    c.p.batch, c.p.h_q, c.p.h_kv = c.qd[0], c.qd[1], c.kd[1]
    c.p.n_q, c.p.n_k, c.p.d, c.p.dv = c.qd[2], c.kd[2], c.qd[3], c.vd[3]
    c.p.q = cnp.PyArray_DATA(c.q)
    c.p.q_sb, c.p.q_sh, c.p.q_sn, c.p.q_sd = qs[0], qs[1], qs[2], qs[3]
    c.p.k = cnp.PyArray_DATA(c.k)
    c.p.k_sb, c.p.k_sh, c.p.k_sn, c.p.k_sd = ks[0], ks[1], ks[2], ks[3]
    c.p.v = cnp.PyArray_DATA(c.v)
    c.p.v_sb, c.p.v_sh, c.p.v_sn, c.p.v_sd = vs[0], vs[1], vs[2], vs[3]


cdef _check_shapes(int64_t *qd, int64_t *kd, int64_t *vd):
    if kd[3] != qd[3]:
        raise ValueError(f"k has head dim {kd[3]} but q has {qd[3]}")
    if vd[2] != kd[2]:
        raise ValueError(f"v has {vd[2]} keys but k has {kd[2]}")
    if kd[0] != qd[0]:
        raise ValueError(f"k has batch size {kd[0]} but q has {qd[0]}")
    if vd[0] != qd[0]:
        raise ValueError(f"v has batch size {vd[0]} but q has {qd[0]}")
    if vd[1] != kd[1]:
        raise ValueError(f"v has {vd[1]} heads but k has {kd[1]}")
    if kd[1] == 0 and qd[1] != 0:
        raise ValueError(f"k has 0 heads but q has {qd[1]}")
    if kd[1] != 0 and qd[1] % kd[1] != 0:
        raise ValueError(f"q has {qd[1]} heads, which is not a multiple of the "
                         f"{kd[1]} heads of k and v (grouped-query attention needs "
                         "H % Hkv == 0)")


cdef _set_band(_Call c, object causal, object window):
    """causal and window: the band of visible keys."""
    cdef bint is_causal = True, from_end = True
    if causal is None or causal is False or (isinstance(causal, np.bool_) and not causal):
        is_causal = False
    elif causal is True or isinstance(causal, np.bool_) or (
            isinstance(causal, str) and causal == "bottom_right"):
        pass
    elif isinstance(causal, str) and causal == "top_left":
        from_end = False
    else:
        raise ValueError(f"causal must be False, True, 'bottom_right' or 'top_left'; "
                         f"got {causal!r}")
    c.p.band_lo, c.p.band_hi, c.p.band_from_end = FA_UNBOUNDED_LO, FA_UNBOUNDED_HI, from_end
    if window is not None:
        if not isinstance(window, (tuple, list)) or len(window) != 2:
            raise TypeError("window must be a pair (left, right) of ints (-1 = unbounded), "
                            f"got {window!r}")
        if is_causal and not from_end:
            raise ValueError("window is aligned bottom-right (the last query on the last "
                             "key) and cannot be combined with causal='top_left'; use "
                             "causal=True")
        wl = _window_side(window[0], "left")
        wr = _window_side(window[1], "right")
        if wl >= 0:
            c.p.band_lo = -wl
        if wr >= 0:
            c.p.band_hi = wr
    if is_causal and c.p.band_hi > 0:
        c.p.band_hi = 0


cdef _set_mask(_Call c, object mask):
    """The optional mask: its kind, and strides broadcast to (B, H, Nq, Nk)."""
    if mask is None:
        return
    if not isinstance(mask, cnp.ndarray):
        raise TypeError(f"mask must be a numpy.ndarray or None, got {type(mask).__name__}")
    cdef cnp.ndarray m = <cnp.ndarray>mask
    cdef int t = cnp.PyArray_TYPE(m)
    if t == cnp.NPY_BOOL:
        c.p.mask_kind = FA_MASK_BOOL
    elif t == cnp.NPY_FLOAT32:
        c.p.mask_kind = FA_MASK_ADD_F32
    elif t == cnp.NPY_FLOAT64:
        c.p.mask_kind = FA_MASK_ADD_F64
    elif t == cnp.NPY_FLOAT16:
        c.p.mask_kind = FA_MASK_ADD_F16
    elif _is_bfloat16(m.dtype):
        c.p.mask_kind = FA_MASK_ADD_BF16
    else:
        raise TypeError(f"mask has dtype {m.dtype}; expected bool (True = may "
                        "attend) or a float dtype (added to the scaled scores)")
    c.mask = m = _whole_elements(m)
    cdef int64_t ms[4]
    _broadcast_strides(m, (<object>c.q).shape[:c.nd - 1] + ((<object>c.k).shape[c.nd - 2],),
                       c.nd, ms)
    c.p.mask = cnp.PyArray_DATA(m)
    c.p.m_sb, c.p.m_sh, c.p.m_sq, c.p.m_sk = ms[0], ms[1], ms[2], ms[3]


cdef _broadcast_strides(cnp.ndarray m, tuple tshape, int nd, int64_t *ms):
    """Element strides of m broadcast (right-aligned) to tshape, as 4-D."""
    cdef int mnd = cnp.PyArray_NDIM(m), i, j
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(m)
    shape = (<object>m).shape
    bad = (f"mask has shape {_shape_str(shape)}, which does not broadcast to "
           f"{_shape_str(tshape)} (q's leading dims, Nq, Nk)")
    if mnd > nd:
        raise ValueError(bad)
    for i in range(4):
        ms[i] = 0
    for i in range(mnd):
        j = nd - mnd + i
        if shape[i] != tshape[j] and shape[i] != 1:
            raise ValueError(bad)
        if shape[i] != 1:
            ms[4 - mnd + i] = cnp.PyArray_STRIDES(m)[i] // item


cdef _set_alibi(_Call c, object alibi_slopes, object cu_seqlens_q):
    """ALiBi slopes: (H,) or (B, H), float64 for the core."""
    if alibi_slopes is None:
        return
    if not isinstance(alibi_slopes, (cnp.ndarray, list, tuple)):
        raise TypeError("alibi_slopes must be a numpy.ndarray or None, got "
                        f"{type(alibi_slopes).__name__}")
    sl = np.asarray(alibi_slopes)
    if sl.dtype.kind not in "fiu" or sl.dtype == np.bool_:
        raise TypeError(f"alibi_slopes has dtype {sl.dtype}; expected a real dtype")
    nbatch = c.qd[0] if cu_seqlens_q is None else len(cu_seqlens_q) - 1
    if sl.shape != (c.qd[1],) and sl.shape != (nbatch, c.qd[1]):
        raise ValueError(f"alibi_slopes has shape {_shape_str(sl.shape)}; expected "
                         f"({c.qd[1]},) or ({nbatch}, {c.qd[1]}) (one slope per head, "
                         "optionally per batch)")
    c.slopes = np.ascontiguousarray(sl, dtype=np.float64)
    if not np.isfinite(c.slopes).all():
        raise ValueError("alibi_slopes must be finite")
    c.p.alibi = <const double *>cnp.PyArray_DATA(c.slopes)
    c.p.a_sh = 1
    c.p.a_sb = c.qd[1] if cnp.PyArray_NDIM(c.slopes) == 2 else 0


cdef _set_lengths(_Call c, object kv_lengths, object cuq, object cuk,
                  int64_t max_q, int64_t max_k):
    """Padded batches (kv_lengths) or packed ones (validated offsets, with
    q, k, v, out and lse as (1, H, total, .) views)."""
    if kv_lengths is not None:
        c.lens = _int_lengths(kv_lengths, "kv_lengths", c.qd[0], c.kd[2], "the number of keys")
        c.p.k_len = <const int64_t *>cnp.PyArray_DATA(c.lens)
    if cuq is not None:
        c.cuq, c.cuk = cuq, cuk
        c.p.q_start = <const int64_t *>cnp.PyArray_DATA(c.cuq)
        c.p.k_start = <const int64_t *>cnp.PyArray_DATA(c.cuk)
        c.p.batch = cnp.PyArray_DIMS(c.cuq)[0] - 1
        c.p.n_q, c.p.n_k = max_q, max_k
        c.p.q_sb = c.p.k_sb = c.p.v_sb = 0


cdef _set_out(_Call c, object out, tuple inputs):
    """The output: a new array, or the caller's (checked; computed into a
    fresh array and copied back when the core cannot write it in place)."""
    oshape = (<object>c.q).shape[:c.nd - 1] + ((<object>c.v).shape[c.nd - 1],)
    c.out = None
    if out is not None:
        if not isinstance(out, cnp.ndarray):
            raise TypeError(f"out must be a numpy.ndarray or None, got {type(out).__name__}")
        c.out = <cnp.ndarray>out
        if (<object>c.out).shape != oshape:
            raise ValueError(f"out has shape {_shape_str((<object>c.out).shape)}; expected "
                             f"{_shape_str(oshape)} (q's leading dims, Nq, Dv)")
        if cnp.PyArray_TYPE(c.out) != cnp.PyArray_TYPE(c.q) or (
                not cnp.PyArray_ISNOTSWAPPED(c.out) and c.out.dtype != c.q.dtype):
            raise ValueError(f"out has dtype {c.out.dtype}; expected {c.q.dtype}, "
                             "the dtype of q, k and v")
        if not cnp.PyArray_ISWRITEABLE(c.out):
            raise ValueError("out is read-only; it must be a writeable array")
        for name, other in zip(("q", "k", "v", "mask"), inputs):
            if other is not None and _overlaps(c.out, other):
                raise ValueError(f"out shares memory with {name}; it must not overlap "
                                 "any input")
        c.user_out = out
        c.copy_back = _whole_elements(c.out) is not c.out or _may_self_overlap(c.out)
    if c.out is None or c.copy_back:
        c.out = np.empty(oshape, dtype=c.q.dtype)
    cdef int64_t od[4]
    cdef int64_t os[4]
    _dims4(c.out, od, os)
    c.p.out = cnp.PyArray_DATA(c.out)
    c.p.o_sb, c.p.o_sh, c.p.o_sn, c.p.o_sd = os[0], os[1], os[2], os[3]
    if c.p.q_start != NULL:
        c.p.o_sb = 0


cdef _set_lse(_Call c):
    """The lse array (..., Nq), viewed as (B, H, Nq)."""
    c.lse = np.empty((<object>c.q).shape[:c.nd - 1],
                     dtype=np.float64 if c.p.dtype == FA_F64 else np.float32)
    cdef int64_t ld[4]
    cdef int64_t ls[4]
    _dims4(c.lse, ld, ls)
    c.p.lse = cnp.PyArray_DATA(c.lse)
    c.p.l_sb, c.p.l_sh, c.p.l_sn = ls[1], ls[2], ls[3]
    if c.nd == 2 or c.p.q_start != NULL:
        c.p.l_sb = 0
    if c.nd == 2:
        c.p.l_sh = 0


cdef _Call _prepare(q, k, v, mask, causal, scale, out, return_lse, window, alibi_slopes,
                    softcap, kv_lengths, return_weights, cu_seqlens_q, cu_seqlens_k,
                    max_seqlen_q, max_seqlen_k, k_scale=None, v_scale=None):
    """Validate one call's arguments (in the order of the public signature's
    checks) and fill its params."""
    _check_bool(return_lse, "return_lse")
    _check_bool(return_weights, "return_weights")
    cdef _Call c = _Call()
    _set_qkv(c, q, k, v)
    _set_scales(c, k_scale, v_scale)
    _set_band(c, causal, window)
    if scale is None:
        c.p.scale = 1.0 / sqrt(<double>c.qd[3]) if c.qd[3] > 0 else 1.0
    else:
        c.p.scale = _real_arg(scale, "scale", False)
    _set_mask(c, mask)
    _set_alibi(c, alibi_slopes, cu_seqlens_q)
    if softcap is not None:
        c.p.softcap = _real_arg(softcap, "softcap", True)
    _set_lengths(c, kv_lengths, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    _set_out(c, out, (q, k, v, mask))
    if return_lse or return_weights:
        _set_lse(c)
    return c


cdef extern from "fastattn.h" nogil:
    int fa_tile_self_test_news()


cdef _check_status(int status):
    if fa_tile_self_test_news():
        _warn_self_test()
    if status == FA_ERR_NOMEM:
        raise MemoryError("fastattn: could not allocate the kernel's scratch buffers")
    elif status != FA_OK:
        raise RuntimeError(f"fastattn: internal error {status}")


cdef _run_weights(_Call c):
    """The weights pass, (..., Nq, Nk), zero where no key block is visited."""
    c.weights = np.zeros((<object>c.q).shape[:c.nd - 1] + ((<object>c.k).shape[c.nd - 2],),
                         dtype=c.q.dtype)
    cdef int64_t wd[4]
    cdef int64_t ws[4]
    cdef int status
    _dims4(c.weights, wd, ws)
    # always float32 products: fastattn.attention asks for the weights of a
    # reduced-precision call in a pass of their own
    c.p.precision = 0
    c.p.weights = cnp.PyArray_DATA(c.weights)
    c.p.w_sb, c.p.w_sh, c.p.w_sq, c.p.w_sk = ws[0], ws[1], ws[2], ws[3]
    with nogil:
        status = fa_attention_weights(&c.p)
    _check_status(status)


def _warn_self_test():
    """The one RuntimeWarning after the tiles failed their self-test."""
    import warnings
    from fastattn import _checks
    warnings.warn(f"the AMX tiles failed their self-test, so the matrix unit is off for this "
                  f"process and every call runs on the vector path: "
                  f"{tile_self_test_status()['report']} (fastattn.show_config() reports it)",
                  RuntimeWarning, stacklevel=_checks.stacklevel())


# ---------------------------------------------------------------- entry points

def attention(q, k, v, *, mask=None, causal=False, scale=None, out=None,
              return_lse=False, window=None, alibi_slopes=None, softcap=None,
              kv_lengths=None, return_weights=False, cu_seqlens_q=None,
              cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, int num_threads=0,
              int precision=0, k_scale=None, v_scale=None):
    """Fused attention; see fastattn.attention for the contract.

    With ``cu_seqlens_q`` / ``cu_seqlens_k`` (validated int64 arrays, from
    fastattn.attention_varlen) q, k, v are (1, H, total, D) views and the
    batch is given by the offsets.  ``return_weights`` also runs the
    weights pass; a v with Dv = 0 then gives just the weights' lse.
    ``precision`` is an fa_precision code (fastattn._checks.PRECISIONS)."""
    cdef _Call c = _prepare(q, k, v, mask, causal, scale, out, return_lse, window,
                            alibi_slopes, softcap, kv_lengths, return_weights,
                            cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                            k_scale, v_scale)
    c.p.num_threads = num_threads if num_threads > 0 else 0
    c.p.precision = _precision_code(precision)
    cdef int status
    with nogil:
        status = fa_attention(&c.p)
    _check_status(status)
    if return_weights:
        _run_weights(c)
    if c.copy_back:
        c.user_out[...] = c.out
        c.out = c.user_out
    if not (return_lse or return_weights):
        return c.out
    res = (c.out,)
    if return_lse:
        res += (c.lse,)
    if return_weights:
        res += (c.weights,)
    return res


# fa_precision codes by name, in code order (fastattn.h)
_PRECISIONS = ("highest", "bf16", "bf16x3")


cdef int _precision_code(int code) except -1:
    if code < 0 or code >= len(_PRECISIONS):
        raise ValueError(f"precision code must be in [0, {len(_PRECISIONS) - 1}], got {code}")
    return code


cdef dict _plan_dict(const fa_plan_info *info, fa_dtype dtype):
    return {
        "kernel": fa_family_name(info.family).decode(),
        # the mode really used; the keyword applies to float32 inputs only
        "precision": _PRECISIONS[info.precision] if dtype == FA_F32 else None,
        # the bfloat16 tile policy; it acts on bfloat16 inputs only
        "bf16_tile": fa_bf16_tile_name(info.bf16_tile).decode() if dtype == FA_BF16 else None,
        "isa": fa_isa_name(info.isa).decode(),
        "kernel_isa": info.kernel_isa.decode(),
        "q_block": info.q_block,
        "k_block": info.k_block,
        "tasks": info.tasks,
        "key_splits": info.key_splits,
        "split_keys": info.split_keys,
        "work_items": info.items,
        "threads": info.threads,
        "scratch_bytes": info.scratch_bytes,
    }


def plan(q, k, v, *, mask=None, causal=False, scale=None, out=None,
         return_lse=False, window=None, alibi_slopes=None, softcap=None,
         kv_lengths=None, return_weights=False, cu_seqlens_q=None,
         cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, int num_threads=0,
         int precision=0, k_scale=None, v_scale=None):
    """What ``attention`` would do with the same arguments (validated the
    same way), without computing: the C core's plan as a dict (see
    fastattn.explain).  With ``return_weights`` the weights pass's plan is
    under "weights"."""
    cdef _Call c = _prepare(q, k, v, mask, causal, scale, out, return_lse, window,
                            alibi_slopes, softcap, kv_lengths, return_weights,
                            cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                            k_scale, v_scale)
    c.p.num_threads = num_threads if num_threads > 0 else 0
    c.p.precision = _precision_code(precision)
    cdef fa_plan_info info
    _check_status(fa_plan(&c.p, &info))
    res = _plan_dict(&info, c.p.dtype)
    if return_weights:
        c.p.precision = 0   # the weights pass runs at "highest" (see _run_weights)
        _check_status(fa_plan_weights(&c.p, &info))
        res["weights"] = _plan_dict(&info, c.p.dtype)
    return res


# ---------------------------------------------------------------- runtime

def set_num_threads(n):
    """Use at most ``n`` threads (n >= 1) in later calls."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    fa_set_num_threads(<int>min(n, 1 << 16))


def get_num_threads():
    """The number of threads later calls may use."""
    return fa_get_num_threads()


def has_openmp():
    """Whether the core was built with OpenMP."""
    return bool(fa_has_openmp())


# The ISA paths of the C registry, by name, in registry order.
_ISA_BY_NAME = {fa_isa_name(i).decode(): i for i in range(fa_isa_count())}


def isa_names():
    """Every ISA path of the registry (built or not), in registry order."""
    return list(_ISA_BY_NAME)


def isa_compiled():
    """The ISA paths this build has kernels for."""
    return [name for name, v in _ISA_BY_NAME.items() if fa_isa_compiled(v)]


def isa_available():
    """The ISA paths this build can run on this CPU, best last."""
    return [name for name, v in _ISA_BY_NAME.items() if fa_isa_supported(v)]


def get_isa():
    """The ISA path in use."""
    return fa_isa_name(fa_get_isa()).decode()


def set_isa(name):
    """Force an ISA path by name (one of isa_names())."""
    if not isinstance(name, str):
        raise TypeError(f"isa must be a str, got {type(name).__name__}")
    if name not in _ISA_BY_NAME:
        raise ValueError(f"unknown ISA {name!r}; expected one of {', '.join(_ISA_BY_NAME)}")
    if fa_set_isa(_ISA_BY_NAME[name]) != FA_OK:
        why = "this build has no such kernel" if not fa_isa_compiled(_ISA_BY_NAME[name]) \
            else "this CPU does not support it"
        raise ValueError(f"ISA {name!r} is not available: {why} "
                         f"(available: {', '.join(isa_available())})")


def bf16_dot_product():
    """True when bfloat16 decode uses the AVX512-BF16 dot-product
    instruction on the current path."""
    return bool(fa_bf16_dot_product())


def bf16_tile_policy():
    """How the tile kernel takes a bfloat16 Q.K^T where the CPU has
    AVX512-BF16: "pairs" (vdpbf16ps) or "widen" (to float32), from
    FASTATTN_BF16_TILE or else the CPU's vendor (csrc/fastattn.h)."""
    return fa_bf16_tile_name(fa_bf16_tile_policy()).decode()


def build_info():
    """Compiler, flags and OpenMP of this build."""
    return {
        "compiler": FA_BUILD_COMPILER.decode(),
        "cflags": FA_BUILD_CFLAGS.decode(),
        "kernel_flags": FA_BUILD_KERNEL_FLAGS.decode(),
        "openmp": bool(fa_has_openmp()),
    }


include "_probes.pxi"
include "_quant.pxi"
include "_linear.pxi"
include "_paged.pxi"
