# The float32 linear-layer GEMM of the core (csrc/kernels/linear.h), included
# by _core.pyx.  fastattn.linear validates the user's arguments; this layer
# checks what the C code relies on (shapes, dtypes, unit column strides,
# bounds) so that no call can read or write outside its buffers.

LINEAR_PANEL = 16   # FA_LIN_NR: columns of a packed weight panel
LINEAR_KALIGN = 32  # FA_LIN_KALIGN: bfloat16 and int8 panels pad k to a multiple
LINEAR_I8_BLOCK = 32   # FA_LIN_QB: k of an int8 activation scale block


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


# the epilogue's activations, by name (FA_ACT_* of csrc/kernels/kernel.h)
LINEAR_ACTIVATIONS = {None: 0, "relu": 1, "gelu": 2, "gelu_tanh": 3, "silu": 4}


cdef const float *_vector_f32(object a, str name, int64_t n) except? NULL:
    """Data of a C-contiguous aligned float32 vector of length n."""
    cdef cnp.ndarray va = a
    if (va.dtype != np.float32 or cnp.PyArray_NDIM(va) != 1 or not va.flags.c_contiguous
            or not va.flags.aligned or va.shape[0] != n):
        raise ValueError(f"{name} must be C-contiguous float32 of shape ({n},)")
    return <const float *>cnp.PyArray_DATA(va)


cdef bint _overlap(cnp.ndarray a, cnp.ndarray b):
    """Whether the memory spans of two arrays (lowest to highest element)
    intersect."""
    return a.size != 0 and b.size != 0 and np.may_share_memory(a, b)


def linear_f32(x, packed, bias, out, residual=None, activation=None, int num_threads=1,
               w_scale=None):
    """``out[:] = act(x @ W + bias) + residual`` with W (k x n) packed by
    rows of panels: ``packed`` is float32 C-contiguous of shape
    (ceil(n / 16), k, 16), or uint16 (bfloat16 bits) of shape
    (ceil(n / 16), kp / 2, 16, 2) (x is then rounded to bfloat16 once),
    or int8 of shape (ceil(n / 16), kp / 4, 16, 4) with ``w_scale``
    float32 (ceil(n / 16) * 16,) the column scales (x is then quantized per
    row and block of LINEAR_I8_BLOCK k), kp being k rounded up to a multiple
    of LINEAR_KALIGN (zero rows); n is ``out.shape[1]``; ``bias`` is None or
    float32 contiguous (n,); ``residual`` None or (m, n) float32 with unit
    column stride, not overlapping ``out``; ``activation`` a key of
    LINEAR_ACTIVATIONS.  Every output element is the same chain of
    operations whatever the other rows, panels or threads, so a row's
    result does not depend on them.  ``num_threads`` threads over the
    output panels (0: the setting of set_num_threads), GIL released."""
    cdef cnp.ndarray xa = x, pa = packed, oa = out, ra
    cdef int64_t m = xa.shape[0] if cnp.PyArray_NDIM(xa) == 2 else -1
    cdef int64_t k, n, ldx, ldy, ldr = 0
    cdef const float *bp = NULL
    cdef const float *rp = NULL
    cdef const float *sp = NULL
    cdef int act
    if activation not in LINEAR_ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(LINEAR_ACTIVATIONS)}, got {activation!r}")
    act = LINEAR_ACTIVATIONS[activation]
    ldx = _row_stride(xa, "x")
    ldy = _row_stride(oa, "out")
    k, n = xa.shape[1], oa.shape[1]
    if oa.shape[0] != m:
        raise ValueError(f"out has {oa.shape[0]} rows but x has {m}")
    cdef int64_t panels = (n + LINEAR_PANEL - 1) // LINEAR_PANEL
    cdef int wtype
    if pa.dtype == np.float32:
        wtype = 0
        want = (panels, k, LINEAR_PANEL)
    elif pa.dtype == np.uint16:
        wtype = 1
        want = (panels, (k + LINEAR_KALIGN - 1) // LINEAR_KALIGN * LINEAR_KALIGN // 2, LINEAR_PANEL, 2)
    elif pa.dtype == np.int8:
        wtype = 2
        want = (panels, (k + LINEAR_KALIGN - 1) // LINEAR_KALIGN * LINEAR_KALIGN // 4, LINEAR_PANEL, 4)
        if w_scale is None:
            raise ValueError("int8 packed weights need w_scale")
        sp = _vector_f32(w_scale, "w_scale", panels * LINEAR_PANEL)
    else:
        raise TypeError(f"packed must be float32, uint16 (bfloat16 pairs) or int8, got {pa.dtype}")
    if not pa.flags.c_contiguous or not pa.flags.aligned or tuple(packed.shape) != want:
        raise ValueError(f"packed must be C-contiguous {pa.dtype} of shape {want}")
    if bias is not None:
        bp = _vector_f32(bias, "bias", n)
    if residual is not None:
        ra = residual
        ldr = _row_stride(ra, "residual")
        if ra.shape[0] != m or ra.shape[1] != n:
            raise ValueError(f"residual must have shape ({m}, {n}), got {tuple(residual.shape)}")
        if _overlap(ra, oa):
            raise ValueError("residual must not overlap out")
        rp = <const float *>cnp.PyArray_DATA(ra)
    if not oa.flags.writeable:
        raise ValueError("out is read-only")
    if _overlap(xa, oa):
        raise ValueError("out must not overlap x")
    if m == 0 or n == 0:
        return out
    cdef int rc
    with nogil:
        rc = fa_linear_f32(<const float *>cnp.PyArray_DATA(xa), m, k, ldx,
                           <const void *>cnp.PyArray_DATA(pa), wtype, sp, n, bp, rp, ldr, act,
                           <float *>cnp.PyArray_DATA(oa), ldy, num_threads)
    if rc != 0:
        raise MemoryError("linear_f32: no memory for the packing scratch")
    return out


def linear_kernel(str dtype):
    """The registry row that runs a linear layer of dtype ("float32",
    "bfloat16" or "int8") on the current path: where the CPU's dot product
    serves it, the refinement that brings it ("avx512bf16", "avx512vnni"
    on avx512; "avxvnni" for int8 on avx2; "neon_bf16", "neon_dotprod" on
    neon), else the vector path's name."""
    cdef int wtype = {"float32": 0, "bfloat16": 1, "int8": 2}[dtype]
    return fa_linear_kernel(wtype).decode()


def layer_norm_f32(x, weight, bias, double eps, out, residual=None):
    """``out[:] = LayerNorm(x + residual) * weight + bias`` over the rows of
    2-D float32 arrays with unit column stride (float32 statistics);
    ``residual`` None or like x; out may be x or residual but must not
    partly overlap them.  GIL released."""
    cdef cnp.ndarray xa = x, oa = out, ra
    cdef int64_t m, n, ldx, ldy, ldr = 0
    cdef const float *rp = NULL
    cdef const float *gp
    cdef const float *bp
    ldx = _row_stride(xa, "x")
    ldy = _row_stride(oa, "out")
    m, n = xa.shape[0], xa.shape[1]
    if oa.shape[0] != m or oa.shape[1] != n:
        raise ValueError(f"out must have shape ({m}, {n}), got {tuple(out.shape)}")
    gp = _vector_f32(weight, "weight", n)
    bp = _vector_f32(bias, "bias", n)
    if not oa.flags.writeable:
        raise ValueError("out is read-only")
    if _overlap(xa, oa) and not (cnp.PyArray_DATA(xa) == cnp.PyArray_DATA(oa) and ldx == ldy):
        raise ValueError("out must be x itself or not overlap it")
    if residual is not None:
        ra = residual
        ldr = _row_stride(ra, "residual")
        if ra.shape[0] != m or ra.shape[1] != n:
            raise ValueError(f"residual must have shape ({m}, {n}), got {tuple(residual.shape)}")
        if _overlap(ra, oa) and not (cnp.PyArray_DATA(ra) == cnp.PyArray_DATA(oa) and ldr == ldy):
            raise ValueError("out must be residual itself or not overlap it")
        rp = <const float *>cnp.PyArray_DATA(ra)
    if not (eps >= 0 and eps < float("inf")):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    if m == 0 or n == 0:
        return out
    with nogil:
        fa_layer_norm_f32(<const float *>cnp.PyArray_DATA(xa), ldx, rp, ldr, m, n, gp, bp,
                          <float>eps, <float *>cnp.PyArray_DATA(oa), ldy)
    return out
