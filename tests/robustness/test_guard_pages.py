"""No read or write outside the arrays' elements, checked with guard pages.

Every array of a call (q, k, v, the mask and ``out``) gets its own
anonymous mapping laid out as ``[PROT_NONE page][data pages][PROT_NONE
page]``, and the array is placed flush against one of the guards: its last
byte is the last byte before the trailing guard ("end"), or its first byte
is the first byte after the leading guard ("start").  A kernel that loads
or stores a whole SIMD vector past the end of a row, or before its start
(negative strides), touches a guard page and gets SIGSEGV.

The sizes are chosen to end inside a vector (Nq, Nk in {1, 3, 17, 33, 65};
D, Dv in {1, 3, 5, 17, 31, 33, 80}), the layouts include transposed,
padded, element-strided and negative-stride views, and there are groups
for the few-row (decode) kernel and for shapes whose keys are split into
chunks merged by their lse.  Each group runs in a fresh interpreter (this
file run as a script) under every ISA path the CPU supports, so a fault
fails that test and names the case instead of killing pytest.

Besides surviving, each call must:

* match the NumPy reference (support/compare.py's tolerance rule), computed on
  plain copies of the inputs;
* leave every input byte unchanged (the whole mapping, gaps included);
* change no byte of ``out``'s mapping except ``out``'s elements (padding
  between strided elements must survive).
"""

import ctypes
import itertools
import json
import mmap
import os
import signal
import subprocess
import sys
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PAGE = mmap.PAGESIZE
PROT_NONE = 0

NS = (1, 3, 17, 33, 65)
DS = (1, 3, 5, 17, 31, 33, 80)
LAYOUTS = ("contiguous", "transposed", "rowpad", "strided", "negative")
CAUSALS = (False, True, "top_left")
MASKS = (None, "bool", "add32", "add64")


# ---------------------------------------------------------------------------
# Guarded memory
# ---------------------------------------------------------------------------

_libc = None


def _mprotect(addr, length, prot):
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        _libc.mprotect.restype = ctypes.c_int
    if _libc.mprotect(ctypes.c_void_p(addr), ctypes.c_size_t(length), prot) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mprotect failed: {os.strerror(err)}")


class Guarded:
    """``nbytes`` of writable memory flush against a PROT_NONE page.

    ``where`` is "end" (the last byte is followed by the guard) or "start"
    (the first byte follows the guard).  ``raw`` is a uint8 array over
    exactly those bytes.
    """

    def __init__(self, nbytes, where):
        assert nbytes > 0
        pages = -(-nbytes // PAGE)
        self.mm = mmap.mmap(-1, (pages + 2) * PAGE,
                            prot=mmap.PROT_READ | mmap.PROT_WRITE)
        whole = np.frombuffer(self.mm, dtype=np.uint8)
        base = whole.ctypes.data
        del whole
        _mprotect(base, PAGE, PROT_NONE)
        _mprotect(base + (pages + 1) * PAGE, PAGE, PROT_NONE)
        offset = PAGE if where == "start" else (pages + 1) * PAGE - nbytes
        self.raw = np.frombuffer(self.mm, dtype=np.uint8, count=nbytes, offset=offset)
        assert self.raw.flags.writeable

    def close(self):
        self.raw = None
        try:
            self.mm.close()
        except BufferError:  # a view is still alive somewhere; leave it to gc
            pass


def layout_strides(shape, kind):
    """Element strides of an array of ``shape`` stored in layout ``kind``."""
    nd = len(shape)
    if kind == "contiguous":
        st = [1] * nd
        for i in range(nd - 2, -1, -1):
            st[i] = st[i + 1] * shape[i + 1]
        return st
    if kind == "negative":
        return [-s for s in layout_strides(shape, "contiguous")]
    if kind == "transposed":
        # (B, N, H, D) / (N, H, D) storage viewed as (B, H, N, D) / (H, N, D);
        # column-major for 2-D (the column stride is then not 1).
        perm = {2: (1, 0), 3: (1, 0, 2), 4: (0, 2, 1, 3)}[nd]
        stored = layout_strides([shape[p] for p in perm], "contiguous")
        st = [0] * nd
        for pos, axis in enumerate(perm):
            st[axis] = stored[pos]
        return st
    if kind in ("rowpad", "strided"):
        # Rows padded by an odd amount; "strided" also skips every other
        # column.  Heads and batches get odd padding too.
        col = 2 if kind == "strided" else 1
        st = [0] * nd
        st[-1] = col
        st[-2] = col * (shape[-1] - 1) + 1 + 3
        for i in range(nd - 3, -1, -1):
            st[i] = st[i + 1] * shape[i + 1] + 5
        return st
    raise ValueError(kind)


class Arena:
    """Places arrays in guarded memory and remembers them for the checks."""

    def __init__(self, where):
        self.where = where
        self.items = []  # (name, Guarded, view, raw bytes before the call)

    def place(self, name, values, kind):
        values = np.asarray(values)
        shape, dtype = values.shape, values.dtype
        item = dtype.itemsize
        est = layout_strides(shape, kind)
        lo = sum((n - 1) * s for n, s in zip(shape, est) if s < 0)
        hi = sum((n - 1) * s for n, s in zip(shape, est) if s > 0) + 1
        g = Guarded((hi - lo) * item, self.where)
        # Padding bytes get a recognizable pattern (a NaN for float32/64).
        g.raw[...] = 0xFF
        view = np.ndarray(shape, dtype=dtype, buffer=g.raw, offset=-lo * item,
                          strides=tuple(s * item for s in est))
        view[...] = values
        self.items.append((name, g, view, g.raw.copy()))
        return view

    def check_untouched(self, out_name="out"):
        """Inputs: no byte changed.  out: only its elements changed."""
        for name, g, view, before in self.items:
            if name == out_name:
                # Put the new element values into the snapshot through a view
                # with the same layout; every other byte must be unchanged.
                snap = before.copy()
                sview = np.ndarray(view.shape, dtype=view.dtype, buffer=snap,
                                   offset=view.ctypes.data - g.raw.ctypes.data,
                                   strides=view.strides)
                sview[...] = view
                bad = np.flatnonzero(snap != g.raw)
            else:
                bad = np.flatnonzero(before != g.raw)
            assert bad.size == 0, (
                f"{name}: {bad.size} byte(s) outside the expected elements changed, "
                f"first at byte offset {int(bad[0])} of {g.raw.size}")

    def close(self):
        for _, g, _, _ in self.items:
            g.close()
        self.items = []


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------

def _lead_shapes(lead, hkv):
    kv_lead = lead[:-1] + (hkv,) if lead and hkv else lead
    return tuple(lead), tuple(kv_lead)


def odd_cases():
    """Every (Nq, Nk, D) of the odd sizes, with Dv cycling so that all 49
    (D, Dv) pairs occur; each combination in two of the layouts (cycling,
    so every layout sees 70 of them), with the lead shape, causal mode and
    mask kind cycling too."""
    leads = (((), None), ((2,), None), ((1, 2), None), ((4,), 2))
    for i, (nq, nk, d) in enumerate(itertools.product(NS, NS, DS)):
        dv = DS[(DS.index(d) + i // len(DS)) % len(DS)]
        for j in range(2):
            layout = LAYOUTS[(2 * i + j) % len(LAYOUTS)]
            lead, hkv = leads[(i + j) % len(leads)]
            yield dict(lead=lead, hkv=hkv, nq=nq, nk=nk, d=d, dv=dv, layout=layout,
                       causal=CAUSALS[(i + 2 * j) % 3], mask=MASKS[(i + j) % 4],
                       mask_bcast=(i // 4 + j) % 3)


def decode_cases():
    """Few query rows per kv head (H / Hkv * Nq <= 4) over 700 (or 197)
    keys: the few-row kernel when the columns are contiguous."""
    shapes = [  # (lead, hkv, nq)
        ((), None, 1), ((), None, 3), ((4,), 4, 1), ((4,), 2, 2), ((4,), 1, 1),
        ((2, 2), 1, 2), ((1, 4), 1, 1), ((2,), None, 4)]
    for i, ((lead, hkv, nq), d) in enumerate(itertools.product(shapes, DS)):
        for j in range(2):
            layout = LAYOUTS[(2 * i + j) % len(LAYOUTS)]
            yield dict(lead=lead, hkv=hkv, nq=nq, nk=700 if (i + j) % 4 else 197,
                       d=d, dv=DS[(i + 3 * j) % len(DS)], layout=layout,
                       causal=CAUSALS[(i + j) % 3], mask=MASKS[(i + 2 * j) % 4],
                       mask_bcast=(i + j) % 3)


def split_cases():
    """Few tasks and >= 1024 keys: the keys are split into chunks computed
    separately and merged by their lse (few-row and tile kernels)."""
    shapes = [  # (lead, hkv, nq, nk)
        ((), None, 1, 1500), ((), None, 5, 1500), ((2,), 1, 1, 1500),
        ((1, 2), None, 1, 2049), ((4,), 2, 2, 1025)]
    for i, (shape, d) in enumerate(itertools.product(shapes, DS)):
        lead, hkv, nq, nk = shape
        for j in range(2):
            layout = LAYOUTS[(2 * i + j) % len(LAYOUTS)]
            yield dict(lead=lead, hkv=hkv, nq=nq, nk=nk, d=d,
                       dv=DS[(i + 2 * j + 1) % len(DS)], layout=layout,
                       causal=CAUSALS[(i + j) % 3], mask=MASKS[(i + j) % 4],
                       mask_bcast=(i + 2 * j) % 3)


GROUPS = {"odd": odd_cases, "decode": decode_cases, "split": split_cases}


def run_case(c, dtype, where, rng):
    import fastattn
    from support import assert_result

    lead, kv_lead = _lead_shapes(c["lead"], c["hkv"])
    nq, nk, d, dv = c["nq"], c["nk"], c["d"], c["dv"]
    q0 = rng.standard_normal(lead + (nq, d)).astype(dtype)
    k0 = rng.standard_normal(kv_lead + (nk, d)).astype(dtype)
    v0 = rng.standard_normal(kv_lead + (nk, dv)).astype(dtype)
    layout = c["layout"]
    arena = Arena(where)
    try:
        q = arena.place("q", q0, layout)
        k = arena.place("k", k0, layout)
        v = arena.place("v", v0, layout)
        mask = None
        mask0 = None
        if c["mask"] is not None:
            # full shape, (Nq, Nk) broadcast over heads, or (1, Nk) rows
            mshape = [lead + (nq, nk), (nq, nk), (1, nk)][c["mask_bcast"]]
            visible = rng.random(mshape) < 0.8
            if c["mask"] == "bool":
                mask0 = visible
            else:
                mdt = np.float32 if c["mask"] == "add32" else np.float64
                mask0 = rng.standard_normal(mshape).astype(mdt)
                mask0[~visible] = -np.inf
            mkind = layout if len(mshape) >= 2 else "contiguous"
            mask = arena.place("mask", mask0, mkind)
        out = arena.place("out", np.zeros(lead + (nq, dv), dtype), layout)
        o, lse = fastattn.attention(q, k, v, mask=mask, causal=c["causal"], out=out,
                                    return_lse=True)
        assert o is out
        arena.check_untouched()
        assert_result(q0, k0, v0, np.array(o), lse, mask=mask0, causal=c["causal"])
    finally:
        arena.close()


def child_main(spec):
    import fastattn

    spec = json.loads(spec)
    dtype = np.dtype(spec["dtype"])
    where = spec["where"]
    assert fastattn._core.get_isa() == spec["isa"], fastattn._core.get_isa()
    rng = np.random.default_rng(zlib.crc32(json.dumps(spec, sort_keys=True).encode()))
    counts = {}
    for group, cases in GROUPS.items():
        counts[group] = 0
        for c in cases():
            # Announce the case first: if it crashes, the parent names it.
            sys.stderr.write(f"CASE {group} " + json.dumps(c) + "\n")
            sys.stderr.flush()
            run_case(c, dtype, where, rng)
            counts[group] += 1
    print(json.dumps(counts))


# ---------------------------------------------------------------------------
# pytest side
# ---------------------------------------------------------------------------

if __name__ != "__main__":
    import concurrent.futures

    import pytest

    from support.child import child_env
    from support.isa import ISA_NAMES

    ISAS = ISA_NAMES  # every path, less FASTATTN_TEST_SKIP_PATHS

    def _spec(isa, dtype, where):
        return json.dumps(dict(isa=isa, dtype=dtype, where=where), sort_keys=True)

    def _run_child(spec):
        env = child_env(FASTATTN_ISA=json.loads(spec)["isa"])
        # Children run side by side: do not let idle OpenMP threads spin.
        env.setdefault("OMP_WAIT_POLICY", "passive")
        return subprocess.run([sys.executable, "-X", "faulthandler", __file__, spec],
                              env=env, capture_output=True, text=True, timeout=300)

    @pytest.fixture(scope="module")
    def children(request):
        """Start the children of all selected cases at once (one per CPU at
        a time); each test then waits for its own."""
        specs = []
        for item in request.session.items:
            cs = getattr(item, "callspec", None)
            if getattr(item, "function", None) is test_no_access_outside_arrays and cs:
                specs.append(_spec(cs.params["isa"], cs.params["dtype"], cs.params["where"]))
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2)
        futures = {s: pool.submit(_run_child, s) for s in specs}
        yield futures
        pool.shutdown(wait=True, cancel_futures=True)

    @pytest.mark.parametrize("where", ["end", "start"])
    @pytest.mark.parametrize("dtype", ["float32", "float64"])
    @pytest.mark.parametrize("isa", ISAS)
    def test_no_access_outside_arrays(children, isa, dtype, where):
        spec = _spec(isa, dtype, where)
        fut = children.get(spec)
        r = fut.result() if fut is not None else _run_child(spec)
        cases = [ln[5:] for ln in r.stderr.splitlines() if ln.startswith("CASE ")]
        last = cases[-1] if cases else "(none started)"
        if r.returncode < 0:
            sig = signal.Signals(-r.returncode).name
            pytest.fail(f"child killed by {sig} ({isa}, {dtype}, placed at {where}) "
                        f"during case {last}")
        tail = "\n".join(ln for ln in r.stderr.splitlines()
                         if not ln.startswith("CASE "))[-3000:]
        assert r.returncode == 0, f"case {last} failed ({isa}, {dtype}, {where}):\n{tail}"
        counts = json.loads(r.stdout.strip().splitlines()[-1])
        assert sum(counts.values()) == len(cases)
        assert all(n > 0 for n in counts.values()) and set(counts) == set(GROUPS)

    def test_guard_pages_fault():
        # The harness itself: touching a guard page must kill the child.
        code = ("import sys; sys.path.insert(0, %r); import test_guard_pages as t\n"
                "import numpy as np\n"
                "g = t.Guarded(100, 'end'); g.raw[-1] = 1\n"
                "v = np.ndarray((101,), np.uint8, buffer=g.mm, offset=g.raw.ctypes.data"
                " - np.frombuffer(g.mm, np.uint8).ctypes.data)\n"
                "print('read', v[100])\n" % HERE)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=child_env(), timeout=60)
        assert r.returncode == -signal.SIGSEGV, (r.returncode, r.stdout, r.stderr)
        assert "read" not in r.stdout


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    child_main(sys.argv[1])
