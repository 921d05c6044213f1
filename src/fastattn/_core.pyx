# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The binding between NumPy arrays and the fastattn C core.

Every argument is validated here, before any memory is touched; the C core
trusts the ``fa_params`` struct it is given.  Inputs are read in place
through their strides (as int64 element strides); only an array whose data
pointer or strides are not a multiple of its item size (a byte-offset view
into a raw buffer) is copied first, because the C core reads whole
elements.  The computation runs with the GIL released.
"""

cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t
from libc.math cimport sqrt, isfinite

import numpy as np

cnp.import_array()

cdef extern from "fastattn.h" nogil:
    ctypedef enum fa_dtype:
        FA_F32
        FA_F64
        FA_F16
        FA_BF16
    ctypedef enum fa_mask_kind:
        FA_MASK_NONE
        FA_MASK_BOOL
        FA_MASK_ADD_F32
        FA_MASK_ADD_F64
    ctypedef enum fa_isa:
        FA_ISA_SCALAR
        FA_ISA_AVX2
        FA_ISA_AVX512
        FA_ISA_NEON
        FA_ISA_COUNT
    ctypedef struct fa_params:
        fa_dtype dtype
        int64_t batch, h_q, h_kv, n_q, n_k, d, dv
        const void *q
        int64_t q_sb, q_sh, q_sn, q_sd
        const void *k
        int64_t k_sb, k_sh, k_sn, k_sd
        const void *v
        int64_t v_sb, v_sh, v_sn, v_sd
        void *out
        int64_t o_sb, o_sh, o_sn, o_sd
        void *lse
        int64_t l_sb, l_sh, l_sn
        fa_mask_kind mask_kind
        const void *mask
        int64_t m_sb, m_sh, m_sq, m_sk
        int64_t band_lo, band_hi
        int band_from_end
        const double *alibi
        int64_t a_sb, a_sh
        double softcap
        const int64_t *q_start
        const int64_t *k_start
        const int64_t *k_len
        double scale
        void *weights
        int64_t w_sb, w_sh, w_sq, w_sk
        int num_threads
    int FA_OK
    int FA_ERR_NOMEM
    int64_t FA_UNBOUNDED_LO
    int64_t FA_UNBOUNDED_HI
    int fa_attention(const fa_params *p) noexcept
    int fa_attention_weights(const fa_params *p) noexcept
    void fa_set_num_threads(int n) noexcept
    int fa_get_num_threads() noexcept
    int fa_has_openmp() noexcept
    int fa_isa_supported(fa_isa isa) noexcept
    int fa_isa_compiled(fa_isa isa) noexcept
    fa_isa fa_get_isa() noexcept
    int fa_set_isa(fa_isa isa) noexcept
    const char *fa_isa_name(fa_isa isa) noexcept

cdef extern from "dispatch.h" nogil:
    void fa_exp2_f32(const float *x, float *y, int64_t n) noexcept
    void fa_exp2_f64(const double *x, double *y, int64_t n) noexcept
    void fa_tanh_f32(const float *x, float *y, int64_t n) noexcept
    void fa_tanh_f64(const double *x, double *y, int64_t n) noexcept
    double fa_fma_probe(fa_isa isa, int64_t iters, int *lanes) noexcept
    double fa_read_probe(const float *x, int64_t n) noexcept
    int fa_bf16_dot_product() noexcept

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


cdef fa_dtype _dtype_code(object dtype):
    if dtype == np.float64:
        return FA_F64
    if dtype == np.float16:
        return FA_F16
    if _is_bfloat16(dtype):
        return FA_BF16
    return FA_F32


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
    cdef int i
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(a), extent
    dims = [(abs(cnp.PyArray_STRIDES(a)[i]), cnp.PyArray_DIMS(a)[i])
            for i in range(cnp.PyArray_NDIM(a)) if cnp.PyArray_DIMS(a)[i] > 1]
    dims.sort()
    extent = item
    for stride, n in dims:
        if stride < extent:
            return True
        extent = stride * n
    return False


cdef bint _overlaps(object a, object b):
    if not np.may_share_memory(a, b):
        return False
    try:
        return np.shares_memory(a, b, max_work=100000)
    except np.exceptions.TooHardError:
        return True


_ISA_BY_NAME = {"scalar": FA_ISA_SCALAR, "avx2": FA_ISA_AVX2, "avx512": FA_ISA_AVX512,
                "neon": FA_ISA_NEON}


# ---------------------------------------------------------------- attention

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


def attention(q, k, v, mask=None, causal=False, scale=None, out=None,
              return_lse=False, window=None, alibi_slopes=None, softcap=None,
              kv_lengths=None, return_weights=False, cu_seqlens_q=None,
              cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0, int num_threads=0):
    """Fused attention; see fastattn.attention for the contract.

    With ``cu_seqlens_q`` / ``cu_seqlens_k`` (validated int64 arrays, from
    fastattn.attention_varlen) q, k, v are (1, H, total, D) views and the
    batch is given by the offsets.  ``return_weights`` also runs the
    weights pass; a v with Dv = 0 then gives just the weights' lse."""
    if not isinstance(return_lse, (bool, np.bool_)):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    if not isinstance(return_weights, (bool, np.bool_)):
        raise TypeError(f"return_weights must be a bool, got {type(return_weights).__name__}")
    cdef cnp.ndarray aq = _as_float_array(q, "q")
    cdef cnp.ndarray ak = _as_float_array(k, "k")
    cdef cnp.ndarray av = _as_float_array(v, "v")
    cdef cnp.ndarray amask = None
    cdef cnp.ndarray aout, alse = None, target
    cdef int nd = cnp.PyArray_NDIM(aq)
    cdef int i, j, mnd
    cdef int64_t qd[4]
    cdef int64_t qs[4]
    cdef int64_t kd[4]
    cdef int64_t ks[4]
    cdef int64_t vd[4]
    cdef int64_t vs[4]
    cdef int64_t od[4]
    cdef int64_t os[4]
    cdef int64_t ld[4]
    cdef int64_t ls[4]
    cdef int64_t md[4]
    cdef int64_t ms[4]
    cdef fa_params p
    cdef int status
    cdef double c_scale
    cdef Py_ssize_t mitem

    # dtypes and ranks
    if ak.dtype != aq.dtype or av.dtype != aq.dtype:
        bad, other = ("k", ak) if ak.dtype != aq.dtype else ("v", av)
        raise TypeError(f"{bad} has dtype {other.dtype} but q has {aq.dtype}; "
                        "q, k and v must share one dtype")
    if nd < 2 or nd > 4:
        raise ValueError(f"q must be 2-D (Nq, D), 3-D (H, Nq, D) or 4-D (B, H, Nq, D); "
                         f"got {nd}-D shape {_shape_str((<object>aq).shape)}")
    if cnp.PyArray_NDIM(ak) != nd:
        raise ValueError(f"k is {cnp.PyArray_NDIM(ak)}-D but q is {nd}-D; "
                         "q, k and v must have the same number of dimensions")
    if cnp.PyArray_NDIM(av) != nd:
        raise ValueError(f"v is {cnp.PyArray_NDIM(av)}-D but q is {nd}-D; "
                         "q, k and v must have the same number of dimensions")

    _dims4(aq, qd, qs)
    _dims4(ak, kd, ks)
    _dims4(av, vd, vs)

    # shapes
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

    oshape = (<object>aq).shape[:nd - 1] + ((<object>av).shape[nd - 1],)

    # causal and window: the band of visible keys
    cdef int c_causal = 0
    cdef int c_from_end = 1
    cdef int64_t band_lo = FA_UNBOUNDED_LO, band_hi = FA_UNBOUNDED_HI, wl, wr
    if causal is None or causal is False or (isinstance(causal, np.bool_) and not causal):
        c_causal = 0
    elif causal is True or isinstance(causal, np.bool_) or (
            isinstance(causal, str) and causal == "bottom_right"):
        c_causal = 1
    elif isinstance(causal, str) and causal == "top_left":
        c_causal = 1
        c_from_end = 0
    else:
        raise ValueError(f"causal must be False, True, 'bottom_right' or 'top_left'; "
                         f"got {causal!r}")
    if window is not None:
        if not isinstance(window, (tuple, list)) or len(window) != 2:
            raise TypeError("window must be a pair (left, right) of ints (-1 = unbounded), "
                            f"got {window!r}")
        if c_causal and not c_from_end:
            raise ValueError("window is aligned bottom-right (the last query on the last "
                             "key) and cannot be combined with causal='top_left'; use "
                             "causal=True")
        wl = _window_side(window[0], "left")
        wr = _window_side(window[1], "right")
        if wl >= 0:
            band_lo = -wl
        if wr >= 0:
            band_hi = wr
    if c_causal and band_hi > 0:
        band_hi = 0

    # scale
    if scale is None:
        c_scale = 1.0 / sqrt(<double>qd[3]) if qd[3] > 0 else 1.0
    else:
        if isinstance(scale, (bool, np.bool_)) or not isinstance(
                scale, (int, float, np.integer, np.floating)):
            raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
        try:
            c_scale = float(scale)
        except OverflowError:
            raise ValueError("scale must be finite, got an integer too large for a "
                             f"float ({len(str(abs(scale)))} digits)") from None
        if not isfinite(c_scale):
            raise ValueError(f"scale must be finite, got {c_scale}")

    # mask
    p.mask_kind = FA_MASK_NONE
    p.mask = NULL
    p.m_sb = p.m_sh = p.m_sq = p.m_sk = 0
    if mask is not None:
        if not isinstance(mask, cnp.ndarray):
            raise TypeError(f"mask must be a numpy.ndarray or None, got {type(mask).__name__}")
        amask = <cnp.ndarray>mask
        t = cnp.PyArray_TYPE(amask)
        if t == cnp.NPY_BOOL:
            p.mask_kind = FA_MASK_BOOL
        elif t == cnp.NPY_FLOAT32:
            p.mask_kind = FA_MASK_ADD_F32
        elif t == cnp.NPY_FLOAT64:
            p.mask_kind = FA_MASK_ADD_F64
        elif t == cnp.NPY_FLOAT16:
            amask = amask.astype(np.float32)
            p.mask_kind = FA_MASK_ADD_F32
        else:
            raise TypeError(f"mask has dtype {amask.dtype}; expected bool (True = may "
                            "attend) or a float dtype (added to the scaled scores)")
        amask = _whole_elements(amask)
        target = None
        tshape = (<object>aq).shape[:nd - 1] + ((<object>ak).shape[nd - 2],)
        mnd = cnp.PyArray_NDIM(amask)
        if mnd > nd:
            raise ValueError(f"mask has shape {_shape_str((<object>amask).shape)}, which does not "
                             f"broadcast to {_shape_str(tshape)} (q's leading dims, Nq, Nk)")
        mitem = cnp.PyArray_ITEMSIZE(amask)
        for i in range(4):
            md[i] = 0
            ms[i] = 0
        for i in range(mnd):
            # align to the right of the target shape
            j = nd - mnd + i
            if (<object>amask).shape[i] != tshape[j] and (<object>amask).shape[i] != 1:
                raise ValueError(f"mask has shape {_shape_str((<object>amask).shape)}, which does "
                                 f"not broadcast to {_shape_str(tshape)} "
                                 "(q's leading dims, Nq, Nk)")
            if (<object>amask).shape[i] != 1:
                ms[4 - mnd + i] = cnp.PyArray_STRIDES(amask)[i] // mitem
        p.mask = cnp.PyArray_DATA(amask)
        p.m_sb, p.m_sh, p.m_sq, p.m_sk = ms[0], ms[1], ms[2], ms[3]

    # ALiBi slopes: (H,) or (B, H), float64 for the core
    cdef cnp.ndarray aslopes = None
    if alibi_slopes is not None:
        if not isinstance(alibi_slopes, (cnp.ndarray, list, tuple)):
            raise TypeError("alibi_slopes must be a numpy.ndarray or None, got "
                            f"{type(alibi_slopes).__name__}")
        sl = np.asarray(alibi_slopes)
        if sl.dtype.kind not in "fiu" or sl.dtype == np.bool_:
            raise TypeError(f"alibi_slopes has dtype {sl.dtype}; expected a real dtype")
        nbatch = qd[0] if cu_seqlens_q is None else len(cu_seqlens_q) - 1
        if sl.shape != (qd[1],) and sl.shape != (nbatch, qd[1]):
            raise ValueError(f"alibi_slopes has shape {_shape_str(sl.shape)}; expected "
                             f"({qd[1]},) or ({nbatch}, {qd[1]}) (one slope per head, "
                             "optionally per batch)")
        aslopes = np.ascontiguousarray(sl, dtype=np.float64)
        if not np.isfinite(aslopes).all():
            raise ValueError("alibi_slopes must be finite")
    cdef double c_softcap = 0
    if softcap is not None:
        if isinstance(softcap, (bool, np.bool_)) or not isinstance(
                softcap, (int, float, np.integer, np.floating)):
            raise TypeError(f"softcap must be a positive real number or None, got "
                            f"{type(softcap).__name__}")
        try:
            c_softcap = float(softcap)
        except OverflowError:
            raise ValueError("softcap must be a positive finite number, got an integer "
                             f"too large for a float ({len(str(abs(softcap)))} digits)") from None
        if not (c_softcap > 0 and isfinite(c_softcap)):
            raise ValueError(f"softcap must be a positive finite number, got {softcap}")
    cdef cnp.ndarray alens = None
    if kv_lengths is not None:
        alens = _int_lengths(kv_lengths, "kv_lengths", qd[0], kd[2], "the number of keys")
    cdef cnp.ndarray acuq = None, acuk = None
    if cu_seqlens_q is not None:
        acuq = cu_seqlens_q
        acuk = cu_seqlens_k

    # out
    cdef bint copy_back = False
    user_out = out
    if out is None:
        aout = np.empty(oshape, dtype=aq.dtype)
    else:
        if not isinstance(out, cnp.ndarray):
            raise TypeError(f"out must be a numpy.ndarray or None, got {type(out).__name__}")
        aout = <cnp.ndarray>out
        if (<object>aout).shape != oshape:
            raise ValueError(f"out has shape {_shape_str((<object>aout).shape)}; expected "
                             f"{_shape_str(oshape)} (q's leading dims, Nq, Dv)")
        if aout.dtype != aq.dtype:
            raise ValueError(f"out has dtype {aout.dtype}; expected {aq.dtype}, "
                             "the dtype of q, k and v")
        if not aout.flags.writeable:
            raise ValueError("out is read-only; it must be a writeable array")
        for name, other in (("q", q), ("k", k), ("v", v), ("mask", mask)):
            if other is not None and _overlaps(aout, other):
                raise ValueError(f"out shares memory with {name}; it must not overlap "
                                 "any input")
        if _whole_elements(aout) is not aout or _may_self_overlap(aout):
            # compute into a fresh array, then one NumPy copy into out
            aout = np.empty(oshape, dtype=aq.dtype)
            copy_back = True
    cdef fa_dtype code = _dtype_code(aq.dtype)
    ltype = np.float64 if code == FA_F64 else np.float32
    if return_lse or return_weights:
        alse = np.empty((<object>aq).shape[:nd - 1], dtype=ltype)

    _dims4(aout, od, os)

    p.dtype = code
    p.batch, p.h_q, p.h_kv = qd[0], qd[1], kd[1]
    p.n_q, p.n_k, p.d, p.dv = qd[2], kd[2], qd[3], vd[3]
    p.q = cnp.PyArray_DATA(aq)
    p.q_sb, p.q_sh, p.q_sn, p.q_sd = qs[0], qs[1], qs[2], qs[3]
    p.k = cnp.PyArray_DATA(ak)
    p.k_sb, p.k_sh, p.k_sn, p.k_sd = ks[0], ks[1], ks[2], ks[3]
    p.v = cnp.PyArray_DATA(av)
    p.v_sb, p.v_sh, p.v_sn, p.v_sd = vs[0], vs[1], vs[2], vs[3]
    p.out = cnp.PyArray_DATA(aout)
    p.o_sb, p.o_sh, p.o_sn, p.o_sd = os[0], os[1], os[2], os[3]
    if alse is not None:
        # lse is (..., Nq): view it as (B, H, Nq, 1)
        _dims4(alse, ld, ls)
        p.lse = cnp.PyArray_DATA(alse)
        p.l_sb, p.l_sh, p.l_sn = ls[1], ls[2], ls[3]
        if nd == 2:
            p.l_sb = p.l_sh = 0
        elif nd == 3:
            p.l_sb = 0
    else:
        p.lse = NULL
        p.l_sb = p.l_sh = p.l_sn = 0
    p.band_lo, p.band_hi, p.band_from_end = band_lo, band_hi, c_from_end
    p.alibi = NULL
    p.a_sb = p.a_sh = 0
    if aslopes is not None:
        p.alibi = <const double *>cnp.PyArray_DATA(aslopes)
        p.a_sh = 1
        p.a_sb = qd[1] if cnp.PyArray_NDIM(aslopes) == 2 else 0
    p.softcap = c_softcap
    p.q_start = p.k_start = p.k_len = NULL
    if alens is not None:
        p.k_len = <const int64_t *>cnp.PyArray_DATA(alens)
    if acuq is not None:
        # packed batches: q, k, v, out, lse are (1, H, total, .) views
        p.q_start = <const int64_t *>cnp.PyArray_DATA(acuq)
        p.k_start = <const int64_t *>cnp.PyArray_DATA(acuk)
        p.batch = cnp.PyArray_DIMS(acuq)[0] - 1
        p.n_q, p.n_k = max_seqlen_q, max_seqlen_k
        p.q_sb = p.k_sb = p.v_sb = p.o_sb = p.l_sb = 0
    p.scale = c_scale
    p.weights = NULL
    p.num_threads = num_threads if num_threads > 0 else 0
    p.w_sb = p.w_sh = p.w_sq = p.w_sk = 0

    with nogil:
        status = fa_attention(&p)
    _check_status(status)

    cdef cnp.ndarray aw = None
    cdef int64_t wd[4]
    cdef int64_t ws[4]
    if return_weights:
        # (..., Nq, Nk), zero where no key block is visited
        aw = np.zeros((<object>aq).shape[:nd - 1] + ((<object>ak).shape[nd - 2],),
                      dtype=aq.dtype)
        _dims4(aw, wd, ws)
        p.weights = cnp.PyArray_DATA(aw)
        p.w_sb, p.w_sh, p.w_sq, p.w_sk = ws[0], ws[1], ws[2], ws[3]
        with nogil:
            status = fa_attention_weights(&p)
        _check_status(status)

    if copy_back:
        user_out[...] = aout
        aout = user_out
    res = (aout,)
    if return_lse:
        res += (alse,)
    if return_weights:
        res += (aw,)
    return res[0] if len(res) == 1 else res


cdef _check_status(int status):
    if status == FA_ERR_NOMEM:
        raise MemoryError("fastattn: could not allocate the kernel's scratch buffers")
    elif status != FA_OK:
        raise RuntimeError(f"fastattn: internal error {status}")


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
    return bool(fa_has_openmp())


def isa_names():
    return list(_ISA_BY_NAME)


def isa_available():
    """The ISA paths this build can run on this CPU, best last."""
    return [name for name, v in _ISA_BY_NAME.items() if fa_isa_supported(v)]


def get_isa():
    return fa_isa_name(fa_get_isa()).decode()


def set_isa(name):
    """Force an ISA path ('scalar', 'avx2', 'avx512', 'neon')."""
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


def build_info():
    return {
        "compiler": FA_BUILD_COMPILER.decode(),
        "cflags": FA_BUILD_CFLAGS.decode(),
        "kernel_flags": FA_BUILD_KERNEL_FLAGS.decode(),
        "openmp": bool(fa_has_openmp()),
    }


ctypedef void (*_vec_f32)(const float *, float *, int64_t) noexcept nogil
ctypedef void (*_vec_f64)(const double *, double *, int64_t) noexcept nogil


cdef cnp.ndarray _apply_vector_fn(object x, _vec_f32 f32, _vec_f64 f64):
    """y = f(x) for a float32 or float64 array, through the kernel's vector
    function on the current ISA path; returns a new array."""
    cdef cnp.ndarray a = np.ascontiguousarray(x)
    cdef cnp.ndarray y
    cdef int64_t n = a.size
    if a.dtype == np.float32:
        y = np.empty_like(a)
        with nogil:
            f32(<const float *>cnp.PyArray_DATA(a), <float *>cnp.PyArray_DATA(y), n)
    elif a.dtype == np.float64:
        y = np.empty_like(a)
        with nogil:
            f64(<const double *>cnp.PyArray_DATA(a), <double *>cnp.PyArray_DATA(y), n)
    else:
        raise TypeError(f"x has dtype {a.dtype}; expected float32 or float64")
    return y


def exp2(x):
    """The kernel's vector exp2 on the current ISA path (for testing its
    accuracy).  ``x`` is float32 or float64; returns a new array."""
    return _apply_vector_fn(x, fa_exp2_f32, fa_exp2_f64)


def tanh(x):
    """The soft cap's vector tanh on the current ISA path (for testing its
    accuracy).  ``x`` is float32 or float64; returns a new array."""
    return _apply_vector_fn(x, fa_tanh_f32, fa_tanh_f64)


def fma_peak(isa=None, double seconds=0.2):
    """Measure the float32 FMA peak of one core on an ISA path (default: the
    one in use), in GFLOP/s: 12 independent FMA chains, timed for about
    ``seconds``.  Runs on the calling thread with the GIL released."""
    import time
    cdef fa_isa code = fa_get_isa() if isa is None else _ISA_BY_NAME[isa]
    cdef int lanes = 0
    cdef int64_t iters = 1 << 16
    cdef double t0, dt = 0, sink = 0
    if not fa_isa_supported(code):
        raise ValueError(f"ISA {isa!r} is not available on this CPU")
    while True:
        t0 = time.perf_counter()
        with nogil:
            sink += fa_fma_probe(code, iters, &lanes)
        dt = time.perf_counter() - t0
        if dt >= seconds or iters > (1 << 40):
            break
        iters *= 2 if dt < seconds / 8 else max(2, <int64_t>(seconds / max(dt, 1e-9)) + 1)
    best = iters * 12.0 * 2.0 * lanes / dt / 1e9
    # repeat twice more at that size and keep the best (least disturbed) run
    for _ in range(2):
        t0 = time.perf_counter()
        with nogil:
            sink += fa_fma_probe(code, iters, &lanes)
        dt = time.perf_counter() - t0
        best = max(best, iters * 12.0 * 2.0 * lanes / dt / 1e9)
    return best


def read_bandwidth(nbytes=512 * 2**20, repeat=5):
    """Measure the memory read bandwidth (GB/s) with the current thread
    count: the best of ``repeat`` passes summing a buffer of ``nbytes``
    (far larger than the caches)."""
    import time
    cdef cnp.ndarray buf = np.ones(max(int(nbytes) // 4, 1024), dtype=np.float32)
    cdef const float *x = <const float *>cnp.PyArray_DATA(buf)
    cdef int64_t n = buf.size
    cdef double sink = 0, t0
    best = 0.0
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        with nogil:
            sink += fa_read_probe(x, n)
        dt = time.perf_counter() - t0
        best = max(best, n * 4.0 / dt / 1e9)
    return best
