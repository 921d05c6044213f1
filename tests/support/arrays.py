"""Array builders of the test suite: random inputs, masks, memory layouts,
shapes that reach each path of the core, random variant problems."""

import numpy as np

LAYOUTS = (
    "contiguous",
    "fortran",
    "transposed",
    "negative",
    "strided",
    "unaligned",
    "readonly",
    "broadcast_rows",
    "broadcast_lead",
    "broadcast_cols",
)



def randn(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def make_qkv(rng, lead, nq, nk, d, dv=None, hkv=None, dtype=np.float32):
    """Random q, k, v with q of shape lead + (nq, d).

    ``lead`` is (), (H,) or (B, H).  ``hkv`` gives k/v fewer heads (GQA);
    ``dv`` defaults to ``d``.
    """
    lead = tuple(lead)
    dv = d if dv is None else dv
    kv_lead = lead
    if hkv is not None:
        kv_lead = lead[:-1] + (hkv,)
    q = randn(rng, lead + (nq, d), dtype)
    k = randn(rng, kv_lead + (nk, d), dtype)
    v = randn(rng, kv_lead + (nk, dv), dtype)
    return q, k, v


def make_mask(rng, kind, shape, p_visible=0.75):
    """A mask of the given shape.

    kind: "bool" (True = visible), "add32" / "add64" (float32 / float64
    additive mask: random values, about 1 - p_visible of them -inf).
    """
    hidden = rng.random(shape) >= p_visible
    if kind == "bool":
        return ~hidden
    dtype = {"add32": np.float32, "add64": np.float64}[kind]
    m = rng.standard_normal(shape).astype(dtype)
    m[hidden] = -np.inf
    return m


def relayout(a, kind):
    """Return an array of a's shape and dtype stored in the given layout.

    The values are a's, except for the stride-0 kinds, which repeat one
    slice of a along an axis (a broadcast view cannot hold distinct values).
    Tests compute their expectations from the returned array.
    """
    ndim = a.ndim
    if kind == "contiguous":
        return np.ascontiguousarray(a)
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "transposed":
        # The (B, N, H, D) storage of PyTorch-style projections, viewed as
        # (B, H, N, D); (N, H, D) for 3-D; column-major rows for 2-D.
        perm = {2: (1, 0), 3: (1, 0, 2), 4: (0, 2, 1, 3)}[ndim]
        return np.ascontiguousarray(a.transpose(perm)).transpose(perm)
    if kind == "negative":
        flip = (slice(None, None, -1),) * ndim
        return np.ascontiguousarray(a[flip])[flip]
    if kind == "strided":
        big = np.zeros(tuple(2 * s + 1 for s in a.shape), dtype=a.dtype)
        view = big[(slice(1, None, 2),) * ndim]
        view[...] = a
        return view
    if kind == "unaligned":
        buf = bytearray(a.nbytes + a.itemsize)
        u = np.ndarray(a.shape, dtype=a.dtype, buffer=buf, offset=1)
        u[...] = a
        return u
    if kind == "readonly":
        r = a.copy()
        r.setflags(write=False)
        return r
    if kind == "broadcast_rows":
        # Every row (query or key) identical: stride 0 on the row axis.
        return np.broadcast_to(a[..., :1, :], a.shape)
    if kind == "broadcast_lead":
        # Stride 0 on the outermost axis (batch or head; rows for 2-D).
        return np.broadcast_to(a[:1], a.shape)
    if kind == "broadcast_cols":
        # Stride 0 on the last (feature) axis: each row is one value repeated.
        return np.broadcast_to(a[..., :1], a.shape)
    raise ValueError(f"unknown layout {kind!r}")



# ---------------------------------------------------------------------------
# Shapes that reach each path of the core
# ---------------------------------------------------------------------------

# name: (lead of q, kv heads, Nq, Nk, D, Dv).  "decode" shapes run the
# few-row kernel, "tile" ones the tile kernel, and "_split" ones have their
# keys split among work items (split-KV, merged by lse): core/test_explain.py
# asserts each against the core's plan (fastattn.explain).
PATH_SHAPES = {
    "decode": ((2, 4), 2, 2, 150, 32, 24),          # 2 heads x 2 rows per kv head
    "decode_split": ((1, 4), 1, 1, 2100, 32, 32),   # MQA, 1 task, 4 key chunks
    "tile": ((2, 4), 2, 70, 130, 16, 16),           # GQA, 3 tiles per kv head
    "tile_split": ((1, 2), 2, 40, 1100, 16, 8),     # 2 tiles, 2 key chunks
}


def path_qkv(rng, path, dtype=np.float32):
    """Random q, k, v of the PATH_SHAPES entry ``path``."""
    lead, hkv, nq, nk, d, dv = PATH_SHAPES[path]
    return make_qkv(rng, lead, nq, nk, d, dv=dv, hkv=hkv, dtype=dtype)



def random_variant_problem(rng, force=(), dtypes=None):
    """A random attention problem with the variants mixed: (q, k, v, kw).

    Sizes around the 64-row/key blocks, decode shapes over long keys
    (few-row kernel, split-KV), few long tiles (tile kernel, split-KV),
    GQA, Dv != D, float32/float64/float16 (or ``dtypes``), any of window,
    alibi_slopes ((H,) or (B, H)), softcap, kv_lengths (0 and Nk included),
    causal modes, bool/additive masks with broadcasting, scales, and
    strided/transposed/negative layouts.  ``force`` names variants that
    must be present ("window", "alibi", "softcap", "kv_lengths").
    NaN is never injected (see robustness/test_edges.py for why).
    """
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    dtype = pick(dtypes or [np.float32, np.float32, np.float64, np.float16])
    hkv = pick([1, 1, 2])
    h = hkv * pick([1, 2, 4])
    b = pick([1, 2, 3])
    r = rng.random()
    if r < 0.2:        # decode: few rows per kv head, long keys
        nq, nk = pick([1, 1, 2, 3]), int(rng.integers(900, 2300))
        h = hkv * pick([1, 2]) if nq > 1 else h
    elif r < 0.3:      # few long tiles: split-KV on the tile kernel
        b, h, hkv = 1, 2, pick([1, 2])
        nq, nk = int(rng.integers(30, 140)), int(rng.integers(1024, 1400))
    else:
        sizes = [0, 1, 2, 5, 17, 63, 64, 65, 100, 130]
        nq, nk = pick(sizes), pick(sizes)
    d = pick([8, 16, 32, 64])
    dv = pick([d, d, 8, 24])
    q, k, v = make_qkv(rng, (b, h), nq, nk, d, dv=dv, hkv=hkv, dtype=dtype)
    q *= pick([1, 1, 4])      # larger scores now and then
    kw = {}
    causal = pick([False, False, True, "top_left"])
    if "window" in force or rng.random() < 0.4:
        sides = [-1, 0, 1, 3, 17, 64, 200]
        kw["window"] = (pick(sides), pick(sides))
        if causal == "top_left":
            causal = True
    if causal is not False:
        kw["causal"] = causal
    if "alibi" in force or rng.random() < 0.3:
        shape = pick([(h,), (b, h)])
        kw["alibi_slopes"] = rng.uniform(-0.3, 1.0, shape) * pick([0.01, 0.1, 1.0])
    if "softcap" in force or rng.random() < 0.3:
        kw["softcap"] = pick([0.05, 1.0, 5.0, 30.0])
    if "kv_lengths" in force or rng.random() < 0.3:
        kw["kv_lengths"] = np.array([pick([0, nk, int(rng.integers(0, nk + 1))])
                                     for _ in range(b)])
    if rng.random() < 0.2:
        full = (b, h, nq, nk)
        shape = tuple(s if rng.random() < 0.6 else 1 for s in full)
        shape = shape[int(rng.integers(0, 4)):]
        kw["mask"] = make_mask(rng, pick(["bool", "add32"]), shape, p_visible=pick([0.3, 0.9]))
    if rng.random() < 0.3:
        kw["scale"] = float(rng.uniform(-1.5, 1.5))
    if rng.random() < 0.3:
        lay = ["contiguous", "transposed", "negative", "strided"]
        q, k, v = (relayout(a, pick(lay)) for a in (q, k, v))
    return q, k, v, kw

