# The float32 linear-layer GEMM of the core (csrc/kernels/linear.h), included
# by _core.pyx.  fastattn.linear validates the user's arguments; this layer
# checks what the C code relies on (shapes, dtypes, unit column strides,
# bounds) so that no call can read or write outside its buffers.

LINEAR_PANEL = 16   # FA_LIN_NR: columns of a packed weight panel


cdef int64_t _row_stride(cnp.ndarray a, str name) except -1:
    """Row stride in elements of a 2-D float32 array with unit column stride."""
    if cnp.PyArray_NDIM(a) != 2 or a.dtype != np.float32:
        raise TypeError(f"{name} must be a 2-D float32 array")
    if a.shape[0] == 0 or a.shape[1] == 0:
        return a.shape[1]   # no element is read or written (NumPy gives such arrays 0 strides)
    if not a.flags.aligned:
        raise ValueError(f"{name} must be aligned to its itemsize")
    if a.shape[1] > 1 and a.strides[1] != 4:
        raise ValueError(f"{name} must have unit column stride")
    if a.shape[0] > 1 and (a.strides[0] < 0 or a.strides[0] % 4 or a.strides[0] // 4 < a.shape[1]):
        raise ValueError(f"{name} must have a positive row stride of at least its width")
    return a.strides[0] // 4 if a.shape[0] > 1 else a.shape[1]


def linear_f32(x, packed, bias, out):
    """``out[:] = x @ W + bias`` with W (k x n) packed by rows of panels:
    ``packed`` is float32 C-contiguous of shape (ceil(n / 16), k, 16), n is
    ``out.shape[1]``; ``bias`` is None or float32 contiguous (n,).  Every
    output element is one multiply-add chain over k in order, so a row's
    result does not depend on the other rows.  Runs on the calling thread
    with the GIL released."""
    cdef cnp.ndarray xa = x, pa = packed, oa = out, ba
    cdef int64_t m = xa.shape[0] if cnp.PyArray_NDIM(xa) == 2 else -1
    cdef int64_t k, n, ldx, ldy
    cdef const float *bp = NULL
    ldx = _row_stride(xa, "x")
    ldy = _row_stride(oa, "out")
    k, n = xa.shape[1], oa.shape[1]
    if oa.shape[0] != m:
        raise ValueError(f"out has {oa.shape[0]} rows but x has {m}")
    if (pa.dtype != np.float32 or not pa.flags.c_contiguous or not pa.flags.aligned
            or tuple(packed.shape) != ((n + LINEAR_PANEL - 1) // LINEAR_PANEL, k, LINEAR_PANEL)):
        raise ValueError(f"packed must be C-contiguous float32 of shape "
                         f"({(n + LINEAR_PANEL - 1) // LINEAR_PANEL}, {k}, {LINEAR_PANEL})")
    if bias is not None:
        ba = bias
        if (ba.dtype != np.float32 or not ba.flags.c_contiguous or not ba.flags.aligned
                or tuple(bias.shape) != (n,)):
            raise ValueError(f"bias must be C-contiguous float32 of shape ({n},)")
        bp = <const float *>cnp.PyArray_DATA(ba)
    if not oa.flags.writeable:
        raise ValueError("out is read-only")
    if m == 0 or n == 0:
        return out
    cdef int rc
    with nogil:
        rc = fa_linear_f32(<const float *>cnp.PyArray_DATA(xa), m, k, ldx,
                      <const float *>cnp.PyArray_DATA(pa), n, bp,
                      <float *>cnp.PyArray_DATA(oa), ldy)
    if rc != 0:
        raise MemoryError("linear_f32: no memory for the packing scratch")
    return out
