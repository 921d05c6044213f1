# int8 keys and values (dtype FA_I8KV), included by _core.pyx: their
# dtypes, their scales' validation and the scale pointers of the params.
#
#   k_scale: k's leading dims + (D,), float32 (other float dtypes are
#            converted), one scale per channel of each kv head; for 4-D
#            inputs (Hkv, D) is also accepted (shared by every batch).
#   v_scale: v's shape without its last dim, (B, Hkv, Nk): one scale per
#            token.
# Every scale must be finite and > 0.  Any strides are read in place.


from libc.stdint cimport uint32_t


cdef bint _all_positive_finite(cnp.ndarray a):
    """Every entry of the float32 array ``a`` (at most 3-D, any strides)
    finite and > 0: its bit pattern is in 1 .. 0x7f7fffff (sign clear, not
    zero, below infinity; NaN is above).  One pass, no temporaries: a
    decode step validates a scale per cached token."""
    cdef int nd = cnp.PyArray_NDIM(a), k
    cdef Py_ssize_t dims[3]
    cdef Py_ssize_t st[3]
    for k in range(3):
        dims[k] = 1
        st[k] = 0
    for k in range(nd):
        dims[3 - nd + k] = cnp.PyArray_DIMS(a)[k]
        st[3 - nd + k] = cnp.PyArray_STRIDES(a)[k]
    cdef const char *base = <const char *>cnp.PyArray_DATA(a)
    cdef const uint32_t *row
    cdef Py_ssize_t i, j, n, sn = st[2] // 4
    cdef uint32_t bad = 0
    with nogil:
        for i in range(dims[0]):
            for j in range(dims[1]):
                row = <const uint32_t *>(base + i * st[0] + j * st[1])
                if sn == 1:  # unit stride: the loop vectorizes
                    for n in range(dims[2]):
                        bad |= (row[n] - 1u) >= 0x7f7fffffu
                else:
                    for n in range(dims[2]):
                        bad |= (row[n * sn] - 1u) >= 0x7f7fffffu
    return bad == 0


cdef bint _is_int8(object a):
    return isinstance(a, cnp.ndarray) and (<cnp.ndarray>a).dtype == np.int8


cdef bint _set_int8_kv(_Call c, object k, object v) except -1:
    """True (with c.k and c.v set) when k and v are int8; False when
    neither is; TypeError for a mixed pair or non-float32 queries."""
    cdef bint ki = _is_int8(k), vi = _is_int8(v)
    if not (ki or vi):
        return False
    if not (ki and vi):
        name, other = ("v", v) if ki else ("k", k)
        what = other.dtype if isinstance(other, cnp.ndarray) else type(other).__name__
        raise TypeError(f"{name} has dtype {what} but {'k' if ki else 'v'} is int8; "
                        "int8 keys need int8 values and the other way round")
    if c.q.dtype != np.float32:
        raise TypeError(f"q has dtype {c.q.dtype}; int8 k and v need float32 queries")
    c.k = _whole_elements(<cnp.ndarray>k)
    c.v = _whole_elements(<cnp.ndarray>v)
    return True


cdef cnp.ndarray _scale_array(object s, str name, tuple shapes, str what):
    """One scale array: a float ndarray of one of ``shapes``, as float32,
    every entry finite and > 0."""
    if s is None:
        raise TypeError(f"{name} is required with int8 k and v ({what})")
    if not isinstance(s, cnp.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of float32, got {type(s).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>s
    if a.dtype.kind != "f":
        raise TypeError(f"{name} has dtype {a.dtype}; expected float32")
    if (<object>a).shape not in shapes:
        want = " or ".join(_shape_str(x) for x in shapes)
        raise ValueError(f"{name} has shape {_shape_str((<object>a).shape)}; expected "
                         f"{want} ({what})")
    if a.dtype != np.float32:
        a = a.astype(np.float32)
    a = _whole_elements(a)
    if not _all_positive_finite(a):
        with np.errstate(invalid="ignore"):
            bad = np.argwhere(~((a > 0) & (a < np.inf)))[0]
        raise ValueError(f"{name} must be finite and > 0; got {a[tuple(bad)]} at index "
                         f"{tuple(int(i) for i in bad)}")
    return a


cdef void _scale_strides(cnp.ndarray a, int64_t *st):
    """Element strides of ``a`` right-aligned to 3 dims (batch, head, last);
    missing or size-1 dims get stride 0."""
    cdef int nd = cnp.PyArray_NDIM(a), i, j
    for i in range(3):
        j = i - (3 - nd)
        st[i] = 0
        if j >= 0 and cnp.PyArray_DIMS(a)[j] > 1:
            st[i] = cnp.PyArray_STRIDES(a)[j] // 4


cdef _set_scales(_Call c, object k_scale, object v_scale):
    """k_scale and v_scale: required with int8 k and v, refused otherwise."""
    if c.p.dtype != FA_I8KV:
        for name, s in (("k_scale", k_scale), ("v_scale", v_scale)):
            if s is not None:
                raise TypeError(f"{name} is given but k has dtype {c.k.dtype}; scales "
                                "are only for int8 k and v")
        return
    # (this module is compiled without wraparound: no negative indices)
    kshape, vshape, n = (<object>c.k).shape, (<object>c.v).shape, c.nd
    kfull = kshape[:n - 2] + (kshape[n - 1],)
    kshapes = (kfull, kfull[1:]) if n == 4 else (kfull,)
    c.ks = _scale_array(k_scale, "k_scale", kshapes, "one scale per channel of each kv head")
    c.vs = _scale_array(v_scale, "v_scale", (vshape[:n - 1],), "one scale per token")
    cdef int64_t st[3]
    _scale_strides(c.ks, st)
    c.p.k_scale = <const float *>cnp.PyArray_DATA(c.ks)
    c.p.ks_sb, c.p.ks_sh, c.p.ks_sd = st[0], st[1], st[2]
    _scale_strides(c.vs, st)
    c.p.v_scale = <const float *>cnp.PyArray_DATA(c.vs)
    c.p.vs_sb, c.p.vs_sh, c.p.vs_sn = st[0], st[1], st[2]
