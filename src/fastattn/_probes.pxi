# Probes and test hooks of the fastattn core, apart from the attention path:
# the kernels' vector exp2 and tanh (for their accuracy tests), the FMA peak
# and the memory read bandwidth (for the benchmarks).  Included by _core.pyx.

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


def dot_peak(str dtype, double seconds=0.2):
    """The peak of one core's dot-product instruction for a linear layer of
    ``dtype`` on the current path: VDPBF16PS or BFDOT ("bfloat16", GFLOP/s,
    two per product), VPDPBUSD (zmm, or AVX-VNNI's ymm) or SDOT ("int8",
    GOP/s), independent chains timed for about ``seconds`` (best of
    three).  None where the path does not use one (see linear_kernel)."""
    import time
    cdef int wtype = {"bfloat16": 1, "int8": 2}[dtype]
    cdef int64_t iters = 1 << 14
    cdef double t0, dt, sink = 0
    cdef double per = 24.0 * (64.0 if wtype == 1 else 128.0)
    if fa_dot_probe(wtype, 1) < 0:
        return None
    while True:
        t0 = time.perf_counter()
        with nogil:
            sink += fa_dot_probe(wtype, iters)
        dt = time.perf_counter() - t0
        if dt >= seconds / 4 or iters > (1 << 40):
            break
        iters *= 2
    best = iters * per / dt / 1e9
    for _ in range(2):
        t0 = time.perf_counter()
        with nogil:
            sink += fa_dot_probe(wtype, iters)
        dt = time.perf_counter() - t0
        best = max(best, iters * per / dt / 1e9)
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


# The matrix units (AMX): the gate's report and the TDPBF16PS peak probe.
cdef extern from "fastattn.h" nogil:
    ctypedef struct fa_amx_info:
        int available
        const char *reason
        int amx_tile, amx_bf16, amx_int8, amx_fp16
        int os_enabled
        const char *permission
        int compiled
        const char *self_test
    void fa_amx_status(fa_amx_info *info, int request)
    double fa_amx_peak(int64_t iters)
    double fa_amx_peak_int8(int64_t iters)
    ctypedef struct fa_self_test_info:
        int state
        const char *report
        double ms
    void fa_tile_self_test_status(fa_self_test_info *info)
    int fa_tile_self_test_run(int subject, int inject, double timeout_s, char *report,
                              size_t cap, double *ms)
    int fa_tile_self_test_decide(int subject, int inject, double timeout_s)


def amx_status(bint request=True):
    """The AMX matrix units of this machine and whether fastattn uses them.

    With ``request`` (the default), runs the gate once per process (cpuid,
    XCR0, then, only where both allow, the kernel's tile-data permission),
    as the first matrix-unit call would.  With ``request=False`` it only
    reports: until the gate has run, the permission is read, never asked
    for, and while the process does not hold it ``available`` is False
    with a reason that says so.  Never executes a tile instruction.
    Returns a dict: ``available`` (bool: the "amx" path's matrix kernels
    may run), ``reason`` ("available" or why not), ``amx_tile``,
    ``amx_bf16``, ``amx_int8``, ``amx_fp16`` (cpuid bits), ``os_enabled``
    (XCR0 tile state), ``permission`` ("granted", "not requested", "not
    requested yet", "granted (held by the process)", or why the kernel
    refused), ``compiled`` (this build has the real-tile kernels) and
    ``self_test`` (the tiles' self-test: not run yet, not needed, or its
    report; with ``request`` it runs where the gate allows the tiles, and
    a failure makes ``available`` False with the failure as ``reason``)."""
    cdef fa_amx_info info
    cdef int req = 1 if request else 0
    with nogil:
        fa_amx_status(&info, req)
    return {
        "available": bool(info.available),
        "reason": info.reason.decode(),
        "amx_tile": bool(info.amx_tile),
        "amx_bf16": bool(info.amx_bf16),
        "amx_int8": bool(info.amx_int8),
        "amx_fp16": bool(info.amx_fp16),
        "os_enabled": bool(info.os_enabled),
        "permission": info.permission.decode(),
        "compiled": bool(info.compiled),
        "self_test": info.self_test.decode(),
    }


# the self-test's states (fa_self_test_state) and injections (fa_inject)
_SELF_TEST_STATES = ("not run", "passed", "failed")
_INJECTIONS = ("none", "mismatch", "sigill", "sigsegv", "sigbus", "hang", "nan")


def tile_self_test_status():
    """The process's self-test of the AMX tiles: a dict with ``state``
    ("not run", "passed" or "failed"), ``report`` (what passed, or which
    kernel and case failed and how) and ``ms`` (what it cost)."""
    cdef fa_self_test_info info
    fa_tile_self_test_status(&info)
    return {"state": _SELF_TEST_STATES[info.state], "report": info.report.decode(),
            "ms": info.ms}


cdef int _self_test_args(str subject, str inject, double timeout, int *isa) except -1:
    if subject not in _ISA_BY_NAME:
        raise ValueError(f"subject must be one of {sorted(_ISA_BY_NAME)}, got {subject!r}")
    if inject not in _INJECTIONS:
        raise ValueError(f"inject must be one of {list(_INJECTIONS)}, got {inject!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    isa[0] = _ISA_BY_NAME[subject]
    if not fa_isa_supported(<fa_isa>isa[0]):
        raise ValueError(f"subject {subject!r} does not run on this CPU")
    return _INJECTIONS.index(inject)


def tile_self_test(str subject, str inject="none", double timeout=10.0):
    """Test hook: run one canary of the tiles' self-test now, in a forked
    child, with the kernels of path ``subject`` ("amx": the real tiles;
    "amx_emu": their emulation; a vector path: the harness alone) and a
    fault injected into the child (``inject``: "none", "mismatch",
    "nan", "sigill", "sigsegv", "sigbus" or "hang"), waiting at most ``timeout``
    seconds.  The process's own decision is untouched.  Returns a dict:
    ``passed``, ``report`` and ``ms``."""
    cdef int isa = 0
    cdef int code = _self_test_args(subject, inject, timeout, &isa)
    cdef char report[1024]
    cdef double ms = 0
    cdef int rc
    with nogil:
        rc = fa_tile_self_test_run(isa, code, timeout, report, sizeof(report), &ms)
    if rc == FA_ERR_PARAMS:
        raise ValueError(f"subject {subject!r} does not run here: {amx_status()['reason']}")
    return {"passed": rc == FA_OK, "report": report.decode(), "ms": ms}


def tile_self_test_decide(str subject, str inject="none", double timeout=10.0):
    """Test hook: take the process's self-test decision now with this
    canary (arguments as in :func:`tile_self_test`), unless it was taken.
    A failure turns the matrix unit off for the process, as on first use;
    the next call of the core warns once.  Returns the state."""
    cdef int isa = 0
    cdef int code = _self_test_args(subject, inject, timeout, &isa)
    cdef int st
    with nogil:
        st = fa_tile_self_test_decide(isa, code, timeout)
    if st < 0:
        raise ValueError(f"subject {subject!r} does not run here: {amx_status()['reason']}")
    return _SELF_TEST_STATES[st]


def amx_peak(double seconds=0.2, str dtype="bfloat16"):
    """Measure the TDPBF16PS peak of one core in GFLOP/s: four independent
    16 x 16 x 32 bfloat16 tile products per round on tiles already loaded,
    timed for about ``seconds`` on the calling thread (GIL released); with
    ``dtype="int8"``, TDPBSSD's in GOP/s (16 x 16 x 64 byte products).

    Raises RuntimeError, naming the reason, where the tiles (or, for int8,
    AMX-INT8) are not available (no tile instruction is then executed); the
    emulation is never measured."""
    import time
    cdef int64_t iters = 1 << 12
    cdef double r, t0, dt
    cdef bint int8
    if dtype not in ("bfloat16", "int8"):
        raise ValueError(f"dtype must be 'bfloat16' or 'int8', got {dtype!r}")
    int8 = dtype == "int8"
    status = amx_status()
    if not status["available"]:
        raise RuntimeError(f"AMX tiles are not available: {status['reason']}")
    if int8 and not status["amx_int8"]:
        raise RuntimeError("AMX tiles are available, but cpuid reports no AMX-INT8")
    best = 0.0
    while True:
        t0 = time.perf_counter()
        with nogil:
            r = fa_amx_peak_int8(iters) if int8 else fa_amx_peak(iters)
        dt = time.perf_counter() - t0
        if r < 0:
            raise RuntimeError("AMX tiles are not available")
        best = max(best, r)
        if dt >= seconds or iters > (1 << 40):
            break
        iters *= 2
    for _ in range(2):  # two more runs at that size; keep the least disturbed
        with nogil:
            r = fa_amx_peak_int8(iters) if int8 else fa_amx_peak(iters)
        best = max(best, r)
    return best
