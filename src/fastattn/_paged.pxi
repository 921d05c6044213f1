# Paged keys and values (fastattn.attention_paged, fastattn.PagedKVCache),
# included by _core.pyx.  The pages are one pool per layer:
#
#   k_pages (P, Hkv, S, D), v_pages (P, Hkv, S, Dv): P pages of S rows for
#       every kv head, in q's dtype, or int8 with float32 queries and
#       k_scale (P, Hkv, D) (one per channel of each kv head of a page) and
#       v_scale (P, Hkv, S) (one per row);
#   block_table (B, W): page ids of each sequence, in key order; the first
#       ceil(seq_lens[b] / S) entries of row b are read, and must name
#       distinct pages of the pool (no page serves two places).
#
# Every argument is checked here, block table entries included, so the C
# core only ever reads pages of the pool.


cdef cnp.ndarray _page_pool(object a, str name, cnp.ndarray q, bint int8_kv):
    """One page pool: a 4-D ndarray in q's dtype (or int8)."""
    cdef cnp.ndarray arr
    if int8_kv:
        if not _is_int8(a):
            raise TypeError(f"{name} must be int8 like k_pages")
        arr = _whole_elements(<cnp.ndarray>a)
    else:
        arr = _as_float_array(a, name)
        if cnp.PyArray_TYPE(arr) != cnp.PyArray_TYPE(q) and arr.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {arr.dtype} but q has {q.dtype}; q and the "
                            "pages must share one dtype")
    if cnp.PyArray_NDIM(arr) != 4:
        raise ValueError(f"{name} must be 4-D (pages, kv heads, page size, head dim); got "
                         f"shape {_shape_str((<object>arr).shape)}")
    return arr


cdef cnp.ndarray _block_table(object bt, int64_t batch, int64_t pages, int64_t page_size,
                              cnp.ndarray lens):
    """The block table as contiguous int32, every entry it is read at
    checked: in [0, pages), and no page named twice."""
    if not isinstance(bt, cnp.ndarray):
        raise TypeError(f"block_table must be a numpy.ndarray of ints, got {type(bt).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>bt
    if a.dtype.kind not in "iu":
        raise TypeError(f"block_table has dtype {a.dtype}; expected an integer dtype "
                        "(int32 page ids)")
    if a.ndim != 2 or (<object>a).shape[0] != batch:
        raise ValueError(f"block_table has shape {_shape_str((<object>a).shape)}; expected "
                         f"({batch}, pages per sequence), one row per sequence")
    cdef int64_t width = (<object>a).shape[1], b, j, n, g
    cdef const int64_t *ln = <const int64_t *>cnp.PyArray_DATA(lens)
    for b in range(batch):
        if (ln[b] + page_size - 1) // page_size > width:
            raise ValueError(f"seq_lens[{b}] = {ln[b]} needs "
                             f"{(ln[b] + page_size - 1) // page_size} pages of {page_size} "
                             f"rows but block_table has {width} columns")
    if pages > 0x7fffffff:
        raise ValueError(f"the pool has {pages} pages; at most 2**31 - 1 can be addressed")
    # the entries read, as int64 (an unsigned id beyond int64 turns negative
    # and is refused below)
    cdef cnp.ndarray table = np.ascontiguousarray(a, dtype=np.int64)
    cdef const int64_t *r = <const int64_t *>cnp.PyArray_DATA(table)
    used = np.zeros(pages, dtype=np.uint8)
    cdef uint8_t[::1] mark = used
    for b in range(batch):
        n = (ln[b] + page_size - 1) // page_size
        for j in range(n):
            g = r[b * width + j]
            if g < 0 or g >= pages:
                raise ValueError(f"block_table[{b}, {j}] = {g} is not a page of the pool "
                                 f"(0 .. {pages - 1})")
            if mark[g]:
                raise ValueError(f"block_table[{b}, {j}] = {g} names a page already used "
                                 "by this call; every page may serve one place only")
            mark[g] = 1
    return np.ascontiguousarray(a, dtype=np.int32)


def attention_paged(q, k_pages, v_pages, block_table, cu_seqlens_q, seq_lens, *,
                    causal=False, scale=None, out=None, return_lse=False, window=None,
                    alibi_slopes=None, softcap=None, int num_threads=0, k_scale=None,
                    v_scale=None):
    """Attention of a packed batch of queries against paged keys and values;
    see fastattn.attention_paged.

    q is a (1, H, total_q, D) view, out likewise with Dv; cu_seqlens_q
    (B + 1 offsets over total_q) and seq_lens (B,) are int arrays."""
    _check_bool(return_lse, "return_lse")
    cdef _Call c = _Call()
    c.q = _as_float_array(q, "q")
    if cnp.PyArray_NDIM(c.q) != 4 or (<object>c.q).shape[0] != 1:
        raise ValueError(f"q must be a (1, H, total_q, D) view; got shape "
                         f"{_shape_str((<object>c.q).shape)}")
    cdef bint int8_kv = _is_int8(k_pages) or _is_int8(v_pages)
    if int8_kv and c.q.dtype != np.float32:
        raise TypeError(f"q has dtype {c.q.dtype}; int8 pages need float32 queries")
    c.k = _page_pool(k_pages, "k_pages", c.q, int8_kv)
    c.v = _page_pool(v_pages, "v_pages", c.q, int8_kv)
    c.nd = 4
    cdef int64_t qs[4]
    cdef int64_t ks[4]
    cdef int64_t vs[4]
    _dims4(c.q, c.qd, qs)
    _dims4(c.k, c.kd, ks)
    _dims4(c.v, c.vd, vs)
    if c.kd[3] != c.qd[3]:
        raise ValueError(f"k_pages has head dim {c.kd[3]} but q has {c.qd[3]}")
    if c.vd[0] != c.kd[0] or c.vd[1] != c.kd[1] or c.vd[2] != c.kd[2]:
        raise ValueError(f"v_pages has shape {_shape_str((<object>c.v).shape)} but k_pages "
                         f"has {_shape_str((<object>c.k).shape)}; they must agree in pages, "
                         "kv heads and page size")
    if c.kd[1] < 1 or c.qd[1] % c.kd[1] != 0:
        raise ValueError(f"q has {c.qd[1]} heads, which is not a multiple of the {c.kd[1]} "
                         "kv heads of the pages")
    if c.kd[2] < 1:
        raise ValueError("the pages must hold at least one row (page size >= 1)")
    cu = _checks_offsets("cu_seqlens_q", cu_seqlens_q, c.qd[2])
    cdef int64_t batch = cu.shape[0] - 1
    c.lens = _int_lengths(seq_lens, "seq_lens", batch, 1 << 62, "the limit")
    c.cuq = cu
    c.bt = _block_table(block_table, batch, c.kd[0], c.kd[2], c.lens)
    c.p.dtype = FA_I8KV if int8_kv else _dtype_code(c.q)
    c.p.batch, c.p.h_q, c.p.h_kv = batch, c.qd[1], c.kd[1]
    c.p.n_q = int(np.diff(cu).max()) if batch else 0
    c.p.n_k = int(c.lens.max()) if batch else 0
    c.p.d, c.p.dv = c.qd[3], c.vd[3]
    c.p.q = cnp.PyArray_DATA(c.q)
    c.p.q_sb, c.p.q_sh, c.p.q_sn, c.p.q_sd = 0, qs[1], qs[2], qs[3]
    c.p.k = cnp.PyArray_DATA(c.k)
    c.p.k_sb, c.p.k_sh, c.p.k_sn, c.p.k_sd = ks[0], ks[1], ks[2], ks[3]
    c.p.v = cnp.PyArray_DATA(c.v)
    c.p.v_sb, c.p.v_sh, c.p.v_sn, c.p.v_sd = vs[0], vs[1], vs[2], vs[3]
    c.p.q_start = <const int64_t *>cnp.PyArray_DATA(c.cuq)
    c.p.k_len = <const int64_t *>cnp.PyArray_DATA(c.lens)
    c.p.block_table = <const int32_t *>cnp.PyArray_DATA(c.bt)
    c.p.bt_sb = (<object>c.bt).shape[1]
    c.p.page_size = c.kd[2]
    cdef int64_t st[3]
    if int8_kv:
        kshape, vshape = (<object>c.k).shape, (<object>c.v).shape
        c.ks = _scale_array(k_scale, "k_scale", ((kshape[0], kshape[1], kshape[3]),),
                            "one scale per channel of each kv head of a page")
        c.vs = _scale_array(v_scale, "v_scale", (vshape[:3],), "one scale per row")
        _scale_strides(c.ks, st)
        c.p.k_scale = <const float *>cnp.PyArray_DATA(c.ks)
        c.p.ks_sb, c.p.ks_sh, c.p.ks_sd = st[0], st[1], st[2]
        _scale_strides(c.vs, st)
        c.p.v_scale = <const float *>cnp.PyArray_DATA(c.vs)
        c.p.vs_sb, c.p.vs_sh, c.p.vs_sn = st[0], st[1], st[2]
    else:
        for name, s in (("k_scale", k_scale), ("v_scale", v_scale)):
            if s is not None:
                raise TypeError(f"{name} is given but the pages have dtype {c.k.dtype}; "
                                "scales are only for int8 pages")
    _set_band(c, causal, window)
    if scale is None:
        c.p.scale = 1.0 / sqrt(<double>c.qd[3]) if c.qd[3] > 0 else 1.0
    else:
        c.p.scale = _real_arg(scale, "scale", False)
    _set_alibi(c, alibi_slopes, cu)
    if softcap is not None:
        c.p.softcap = _real_arg(softcap, "softcap", True)
    _set_out(c, out, (q, k_pages, v_pages, None))
    c.p.o_sb = 0
    if return_lse:
        _set_lse(c)
    c.p.num_threads = num_threads if num_threads > 0 else 0
    cdef int status
    with nogil:
        status = fa_attention(&c.p)
    _check_status(status)
    if c.copy_back:
        c.user_out[...] = c.out
        c.out = c.user_out
    return (c.out, c.lse) if return_lse else c.out


def _checks_offsets(name, cu, total):
    from fastattn import _checks
    return _checks.offsets(name, cu, total)
