"""Every wrong argument, as one table, each row run in a child interpreter.

Each row builds the arguments of one call, breaks exactly one thing and says
what must happen: the exception type (a class name; a subclass also counts)
and a regular expression the message must match (the argument's name as a
whole word), or ``None`` for a call that must succeed (valid values at the
edge of the contract, next to the invalid ones; an attention call must then
return the output's shape).

The table has three parts, one row per call: the rows of fastattn.attention
defined here, the first set of them in ``bad_args_core.py`` (ids
``errors::<name>``), and the rows of the variants, attention_varlen,
KVCache and merge in ``bad_args_variants.py`` (ids ``variants::<name>``,
plus ``ok_variants_<call>`` for the valid calls they break).

How the rows run
----------------
A validation bug can crash the interpreter (a segfault or an abort in the C
core) instead of raising.  So the rows never run in the pytest process: the
table is split into a few chunks, each chunk runs in one child interpreter
(``python tests/robustness/test_bad_inputs.py --driver``, row ids on stdin), and the
child prints one JSON line when it starts a row and one with the row's
result.  If the child dies, the row it had started is reported as a crash
(exit status and the end of its stderr) and the rows it had not reached
run again in a fresh child, so one crash fails exactly one row.

For every row that raises, the child also checks that no argument was
written to (``out`` and the inputs keep their bytes).
"""

import decimal
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import bad_args_core  # noqa: E402  (its CASES join the table)
import bad_args_variants  # noqa: E402  (so do its CASES)
import fastattn  # noqa: E402
from bad_args_core import K, MASK, OUT, Q, V  # noqa: E402  (the argument names' patterns)
from support.child import child_env  # noqa: E402

SCALE = r"\bscale\b"
CAUSAL = r"\bcausal\b"
LSE = r"\breturn_lse\b"
N = r"\bn\b"

TYPE = ("TypeError",)
VALUE = ("ValueError",)
# For causal, the contract lists the accepted values; a value of another
# type may be reported either way, as long as the message names causal.
TYPE_OR_VALUE = ("TypeError", "ValueError")


class Row:
    """One call: ``build()`` returns the keyword arguments of ``fn``
    (for attention: q, k, v and the options); ``fn`` is the name of a
    fastattn function or a callable."""

    __slots__ = ("id", "exc", "pattern", "build", "fn")

    def __init__(self, id, exc, pattern, build, fn="attention"):
        self.id, self.exc, self.pattern, self.build, self.fn = id, exc, pattern, build, fn


def make(dtype=np.float32, lead=(2, 4), nq=5, nk=6, d=8, dv=8, hkv=None):
    """Valid q, k, v (B=2, H=4, Nq=5, Nk=6, D=Dv=8 unless told)."""
    rng = np.random.default_rng(0)
    kv_lead = lead if hkv is None else lead[:-1] + (hkv,)
    return dict(q=rng.standard_normal(lead + (nq, d)).astype(dtype),
                k=rng.standard_normal(kv_lead + (nk, d)).astype(dtype),
                v=rng.standard_normal(kv_lead + (nk, dv)).astype(dtype))


def call(shape=None, **changes):
    """A builder: valid arguments (``make(**shape)``), then ``changes``
    applied in order; a callable value gets the arguments built so far."""
    def build():
        a = make(**(shape or {}))
        for key, val in changes.items():
            if val is DROP:
                a.pop(key, None)
            else:
                a[key] = val(a) if callable(val) and not isinstance(val, type) else val
        return a
    return build


DROP = object()


# ---------------------------------------------------------------------------
# Builders for the aliasing rows
# ---------------------------------------------------------------------------

def _out_is_k(a):
    # Nq == Nk and D == Dv make out and k the same shape.
    a.update(make(nk=5))
    return a["k"]


def _out_reversed_q(a):
    return a["q"][..., ::-1, :]


def _out_overlaps_v_one_element(a):
    # v and out are consecutive windows of one buffer sharing one element.
    n_v, n_o = 2 * 4 * 6 * 8, 2 * 4 * 5 * 8
    buf = np.zeros(n_v + n_o - 1, np.float32)
    buf[:n_v] = a["v"].ravel()
    a["v"] = buf[:n_v].reshape(2, 4, 6, 8)
    return buf[n_v - 1:].reshape(2, 4, 5, 8)


def _out_overlaps_k_transposed(a):
    # k stored (B, N, H, D) and read as (B, H, N, D); out is a window of it.
    buf = np.ascontiguousarray(a["k"].transpose(0, 2, 1, 3))  # (2, 6, 4, 8)
    a["k"] = buf.transpose(0, 2, 1, 3)
    return buf.transpose(0, 2, 1, 3)[:, :, 1:, :]


def _out_under_bool_mask(a):
    # A bool mask that is a view of out's bytes: (2, 4, 5, 8) float32 viewed
    # as (2, 4, 5, 32) bool needs Nk = 32.
    a.update(make(nk=32))
    out = np.zeros((2, 4, 5, 8), np.float32)
    a["mask"] = out.view(np.bool_)
    return out


def _q_broadcast_from_out(a):
    # q is a stride-0 broadcast of out's first row.
    out = np.zeros((2, 4, 5, 8), np.float32)
    out[...] = 1.0
    a["q"] = np.broadcast_to(out[:, :, :1, :], (2, 4, 5, 8))
    return out


def _out_interleaved_with_q(a):
    # q and out share one buffer but no element: must be accepted.
    buf = np.zeros((2, 4, 5, 16), np.float32)
    buf[..., ::2] = a["q"]
    a["q"] = buf[..., ::2]
    return buf[..., 1::2]


def _readonly(shape, dtype=np.float32):
    def build(a):
        o = np.zeros(shape, dtype)
        o.setflags(write=False)
        return o
    return build


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------

def _rows():
    R = []

    def row(id, exc, pattern, build, fn="attention"):
        R.append(Row(id, exc, pattern, build, fn))

    f32 = np.float32
    names = {"q": Q, "k": K, "v": V}

    # --- q, k, v: not arrays, wrong dtypes, wrong ranks -------------------
    for n, pat in names.items():
        row(f"{n}_nested_list", TYPE, pat, call(**{n: lambda a, n=n: a[n].tolist()}))
        row(f"{n}_tuple", TYPE, pat, call(**{n: lambda a, n=n: tuple(a[n].tolist())}))
        row(f"{n}_none", TYPE, pat, call(**{n: None}))
        row(f"{n}_python_float", TYPE, pat, call(**{n: 1.0}))
        row(f"{n}_numpy_scalar", TYPE, pat, call(**{n: np.float32(1.0)}))
        row(f"{n}_memoryview", TYPE, pat, call(**{n: lambda a, n=n: memoryview(a[n])}))
        row(f"{n}_string", TYPE, pat, call(**{n: "q"}))
        for dt in ("object", "int8", "int32", "int64", "uint64", "bool", "complex64",
                   "complex128", "float16", "longdouble", "datetime64[s]", "U3"):
            row(f"{n}_dtype_{dt}", TYPE, pat,
                call(**{n: lambda a, n=n, dt=dt: a[n].astype(dt)}))
        row(f"{n}_structured", TYPE, pat,
            call(**{n: lambda a, n=n: np.zeros(a[n].shape, [("x", f32)])}))
        row(f"{n}_0d", VALUE, pat, call(**{n: np.array(1.0, f32)}))
        row(f"{n}_1d", VALUE, pat, call(**{n: lambda a, n=n: a[n][0, 0, 0]}))
        row(f"{n}_5d", VALUE, pat if n != "q" else Q, call(**{n: lambda a, n=n: a[n][None]}))
        row(f"{n}_3d_with_others_4d", VALUE, pat, call(**{n: lambda a, n=n: a[n][0]}))
    row("ok_qkv_all_float16", None, None,
        call(q=lambda a: a["q"].astype(np.float16), k=lambda a: a["k"].astype(np.float16),
             v=lambda a: a["v"].astype(np.float16)))
    row("qkv_all_int", TYPE, Q,
        call(q=lambda a: a["q"].astype(int), k=lambda a: a["k"].astype(int),
             v=lambda a: a["v"].astype(int)))
    row("qkv_all_0d", VALUE, Q,
        call(q=np.array(1.0, f32), k=np.array(1.0, f32), v=np.array(1.0, f32)))
    row("qkv_all_1d", VALUE, Q,
        call(q=lambda a: a["q"][0, 0, 0], k=lambda a: a["k"][0, 0, 0],
             v=lambda a: a["v"][0, 0, 0]))
    row("qkv_all_5d", VALUE, Q,
        call(q=lambda a: a["q"][None], k=lambda a: a["k"][None], v=lambda a: a["v"][None]))
    row("qkv_all_6d", VALUE, Q,
        call(q=lambda a: a["q"][None, None], k=lambda a: a["k"][None, None],
             v=lambda a: a["v"][None, None]))
    row("q_f64_k_f32", TYPE, rf"{K}|{Q}", call(q=lambda a: a["q"].astype(np.float64)))
    row("q_f32_v_f64", TYPE, rf"{V}|{Q}", call(v=lambda a: a["v"].astype(np.float64)))
    row("q_f64_v_f32", TYPE, rf"{V}|{K}|{Q}",
        call(q=lambda a: a["q"].astype(np.float64), k=lambda a: a["k"].astype(np.float64)))
    row("missing_v", TYPE, V, call(v=DROP))

    # --- shapes ------------------------------------------------------------
    row("k_head_dim_4d", VALUE, K, call(k=lambda a: a["k"][..., :7]))
    row("k_head_dim_3d", VALUE, K, call(q=lambda a: a["q"][0], k=lambda a: a["k"][0, ..., :3],
                                        v=lambda a: a["v"][0]))
    row("k_head_dim_2d", VALUE, K, call(q=lambda a: a["q"][0, 0],
                                        k=lambda a: a["k"][0, 0, :, :1],
                                        v=lambda a: a["v"][0, 0]))
    row("k_head_dim_zero", VALUE, K, call(k=lambda a: a["k"][..., :0]))
    # the message gives both head dims
    row("k_head_dim_message_gives_sizes", VALUE, rf"{K}.*32.*64|{K}.*64.*32",
        call(shape=dict(d=64), k=lambda a: a["k"][..., :32]))
    row("v_fewer_keys", VALUE, rf"{V}|{K}", call(v=lambda a: a["v"][:, :, :2]))
    row("v_more_keys", VALUE, rf"{V}|{K}",
        call(v=lambda a: np.concatenate([a["v"], a["v"]], axis=2)))
    row("v_no_keys", VALUE, rf"{V}|{K}", call(v=lambda a: a["v"][:, :, :0]))
    row("k_batch", VALUE, rf"{K}|{Q}", call(k=lambda a: a["k"][:1]))
    row("v_batch", VALUE, V, call(v=lambda a: a["v"][:1]))
    row("kv_batch_larger", VALUE, rf"{K}|{Q}",
        call(k=lambda a: np.concatenate([a["k"]] * 2), v=lambda a: np.concatenate([a["v"]] * 2)))
    row("v_heads_vs_k", VALUE, rf"{V}|{K}", call(v=lambda a: a["v"][:, :1]))
    row("kv_heads_not_divisor_4d", VALUE, rf"{K}|{Q}",
        call(shape=dict(lead=(2, 6)), k=lambda a: a["k"][:, :4], v=lambda a: a["v"][:, :4]))
    row("kv_heads_more_than_q_3d", VALUE, rf"{K}|{Q}",
        call(q=lambda a: a["q"][0, :2], k=lambda a: a["k"][0], v=lambda a: a["v"][0]))
    row("kv_zero_heads", VALUE, rf"{K}|{Q}",
        call(k=lambda a: a["k"][:, :0], v=lambda a: a["v"][:, :0]))
    row("k_zero_batch", VALUE, rf"{K}|{Q}",
        call(k=lambda a: a["k"][:0], v=lambda a: a["v"][:0]))

    # --- mask ----------------------------------------------------------------
    row("mask_nested_list", TYPE, MASK, call(mask=[[True] * 6] * 5))
    row("mask_tuple", TYPE, MASK, call(mask=((0.0,) * 6,) * 5))
    row("mask_python_bool", TYPE, MASK, call(mask=True))
    row("mask_python_float", TYPE, MASK, call(mask=0.0))
    row("mask_memoryview", TYPE, MASK, call(mask=lambda a: memoryview(np.ones((5, 6), bool))))
    for dt in ("int8", "uint8", "int32", "int64", "complex64", "complex128", "object",
               "longdouble", "U1", "datetime64[s]"):
        row(f"mask_dtype_{dt}", TYPE, MASK, call(mask=lambda a, dt=dt: np.zeros((5, 6), dt)))
    row("mask_structured", TYPE, MASK, call(mask=lambda a: np.zeros((5, 6), [("x", "?")])))
    row("mask_5d_on_4d", VALUE, MASK, call(mask=np.ones((1, 1, 1, 5, 6), bool)))
    row("mask_3d_on_2d", VALUE, MASK,
        call(q=lambda a: a["q"][0, 0], k=lambda a: a["k"][0, 0], v=lambda a: a["v"][0, 0],
             mask=np.ones((1, 5, 6), bool)))
    row("mask_wrong_nk", VALUE, MASK, call(mask=np.ones((5, 7), bool)))
    row("mask_wrong_nq", VALUE, MASK, call(mask=np.zeros((3, 6), f32)))
    row("mask_transposed_nk_nq", VALUE, MASK, call(mask=np.ones((6, 5), bool)))
    row("mask_zero_rows", VALUE, MASK, call(mask=np.ones((0, 6), bool)))
    row("mask_1d_wrong_nk", VALUE, MASK, call(mask=np.zeros(5, np.float64)))
    row("mask_heads", VALUE, MASK, call(mask=np.ones((4, 1, 1, 1), bool)))
    row("mask_batch", VALUE, MASK, call(mask=np.ones((3, 4, 5, 6), bool)))
    row("mask_gqa_kv_heads", VALUE, MASK,
        call(shape=dict(hkv=2), mask=np.ones((1, 2, 5, 6), bool)))

    # --- causal --------------------------------------------------------------
    for val in ("diagonal", "bottom-right", "BOTTOM_RIGHT", "Top_Left", "", "causal",
                "true", "True", "lower"):
        row(f"causal_str_{val or 'empty'}", VALUE, CAUSAL, call(causal=val))
    row("causal_int_2", VALUE, CAUSAL, call(causal=2))
    for label, val in (("bytes", b"top_left"), ("int_0", 0), ("int_1", 1),
                       ("int_minus1", -1), ("np_int64", np.int64(1)), ("float_1", 1.0),
                       ("float_half", 0.5), ("list", [True]), ("tuple", ()), ("dict", {}),
                       ("set", {"top_left"}), ("object", object()),
                       ("array_0d", np.array(True)),
                       ("bool_array", np.array([True, False])),
                       ("str_array", np.array(["top_left", "bottom_right"]))):
        row(f"causal_{label}", TYPE_OR_VALUE, CAUSAL, call(causal=val))

    # --- scale ---------------------------------------------------------------
    for label, val in (("nan", float("nan")), ("inf", float("inf")), ("minus_inf", -np.inf),
                       ("np_float32_nan", np.float32("nan")),
                       ("np_float32_inf", np.float32("inf")),
                       ("np_float64_minus_inf", np.float64("-inf")),
                       ("longdouble_overflow", np.longdouble("1e4000")),
                       ("python_int_overflow", 10 ** 400),
                       ("python_int_overflow_neg", -(10 ** 400))):
        row(f"scale_{label}", VALUE, SCALE, call(scale=val))
    for label, val in (("str", "0.5"), ("bytes", b"0.5"), ("list", [0.5]), ("tuple", (0.5,)),
                       ("dict", {}), ("complex", 1j), ("np_complex64", np.complex64(1)),
                       ("bool", True), ("bool_false", False), ("np_bool", np.bool_(True)),
                       ("array_1d", np.array([0.5])), ("array_0d", np.array(0.5)),
                       ("decimal", decimal.Decimal("0.5")), ("object", object())):
        row(f"scale_{label}", TYPE, SCALE, call(scale=val))

    # --- out -----------------------------------------------------------------
    for label, val in (("list", lambda a: np.zeros((2, 4, 5, 8), f32).tolist()),
                       ("tuple", (0.0,)), ("python_float", 0.0), ("string", "out"),
                       ("numpy_scalar", np.float32(0.0)),
                       ("memoryview", lambda a: memoryview(np.zeros((2, 4, 5, 8), f32)))):
        row(f"out_{label}", TYPE, OUT, call(out=val))
    row("out_0d", VALUE, OUT, call(out=np.array(0.0, f32)))
    for label, shape in (("last_dim", (2, 4, 5, 7)), ("nk_rows", (2, 4, 6, 8)),
                         ("extra_lead", (1, 2, 4, 5, 8)), ("no_batch", (4, 5, 8)),
                         ("flat", (2 * 4 * 5 * 8,))):
        row(f"out_shape_{label}", VALUE, OUT, call(out=np.zeros(shape, f32)))
    row("out_shape_uses_d_not_dv", VALUE, OUT,
        call(shape=dict(dv=3), out=np.zeros((2, 4, 5, 8), f32)))
    row("out_shape_gqa_kv_heads", VALUE, OUT,
        call(shape=dict(hkv=2), out=np.zeros((2, 2, 5, 8), f32)))
    for dt in ("float64", "float16", "int32", "complex64", "bool", ">f4"):
        row(f"out_dtype_{dt}", VALUE, OUT, call(out=np.zeros((2, 4, 5, 8), dt)))
    row("out_dtype_f32_for_f64_inputs", VALUE, OUT,
        call(shape=dict(dtype=np.float64), out=np.zeros((2, 4, 5, 8), f32)))
    row("out_readonly", VALUE, OUT, call(out=_readonly((2, 4, 5, 8))))
    row("out_broadcast_view", VALUE, OUT,
        call(out=lambda a: np.broadcast_to(np.zeros(8, f32), (2, 4, 5, 8))))
    row("out_is_k", VALUE, OUT, call(out=_out_is_k))
    row("out_is_reversed_q", VALUE, OUT, call(out=_out_reversed_q))
    row("out_overlaps_v_one_element", VALUE, OUT, call(out=_out_overlaps_v_one_element))
    row("out_overlaps_transposed_k", VALUE, OUT, call(out=_out_overlaps_k_transposed))
    row("out_bytes_of_bool_mask", VALUE, OUT, call(out=_out_under_bool_mask))
    row("out_under_broadcast_q", VALUE, OUT, call(out=_q_broadcast_from_out))

    # --- return_lse and other keywords -------------------------------------
    row("return_lse_array", TYPE_OR_VALUE, LSE, call(return_lse=np.array([True, False])))
    row("unknown_keyword", TYPE, r"\bcausual\b", call(causual=True))

    # --- set_num_threads -----------------------------------------------------
    for label, val in (("zero", 0), ("negative", -1)):
        row(f"set_num_threads_{label}", VALUE, N, lambda val=val: dict(n=val), "set_num_threads")
    for label, val in (("float", 1.5), ("str", "2"), ("none", None), ("bool", True),
                       ("np_float", np.float64(2.0))):
        row(f"set_num_threads_{label}", TYPE, N, lambda val=val: dict(n=val), "set_num_threads")

    # --- valid values next to the invalid ones: must succeed -------------------
    for label, val in (("false", False), ("true", True), ("bottom_right", "bottom_right"),
                       ("top_left", "top_left"), ("np_bool_true", np.bool_(True)),
                       ("np_bool_false", np.bool_(False)), ("np_str", np.str_("top_left"))):
        row(f"ok_causal_{label}", None, None, call(causal=val))
    for label, val in (("negative", -1.0), ("zero_int", 0), ("zero", 0.0),
                       ("np_float16", np.float16(0.5)), ("np_int64", np.int64(3)),
                       ("np_uint8", np.uint8(2)), ("tiny", 1e-300), ("huge", 1e300),
                       ("np_float32_negative", np.float32(-0.5)), ("np_float32", np.float32(0.5)),
                       ("np_float64", np.float64(2.0)), ("tiny_1e-30", 1e-30),
                       ("huge_1e30", 1e30)):
        row(f"ok_scale_{label}", None, None, call(scale=val))
    row("ok_mask_0d_bool", None, None, call(mask=np.array(True)))
    row("ok_mask_one_key_column", None, None, call(mask=np.ones((5, 1), bool)))
    row("ok_mask_float16", None, None, call(mask=np.zeros((5, 6), np.float16)))
    row("ok_mask_big_endian", None, None, call(mask=np.zeros((2, 1, 5, 6), ">f8")))
    row("ok_q_big_endian", None, None, call(q=lambda a: a["q"].astype(">f4")))
    row("ok_out_strided", None, None,
        call(out=lambda a: np.zeros((2, 4, 5, 16), f32)[..., ::2]))
    row("ok_out_interleaved_with_q", None, None, call(out=_out_interleaved_with_q))
    row("ok_gqa", None, None, call(shape=dict(lead=(2, 6), hkv=3)))
    row("ok_empty_everything", None, None, call(shape=dict(lead=(0, 0), nq=0, nk=0, d=0, dv=0)))
    row("ok_set_num_threads_np_int", None, None, lambda: dict(n=np.int64(1)),
        "set_num_threads")

    # --- the rows of bad_args_core.py and bad_args_variants.py -------------
    for name, exc, pattern, build in bad_args_core.CASES:
        row(f"errors::{name}", (exc.__name__,), pattern, build)
    for name, exc, pattern, fn in bad_args_variants.CASES:
        row(f"variants::{name}", (exc.__name__,), pattern, dict, fn)
    for name, fn in bad_args_variants.BASE_CALLS.items():
        row(f"ok_variants_{name}", None, None, dict, fn)
    return R


TABLE = _rows()
ROWS = {r.id: r for r in TABLE}
assert len(ROWS) == len(TABLE), "duplicate row ids"


# ---------------------------------------------------------------------------
# The child side: run rows, one JSON line per event
# ---------------------------------------------------------------------------

PREFIX = "@@row "
SELFTEST_ROWS = ("__selftest_abort__", "__selftest_exit__")


def _emit(msg):
    sys.stdout.write(PREFIX + json.dumps(msg) + "\n")
    sys.stdout.flush()


def _snapshot(args):
    snap = {}
    for key, val in args.items():
        if isinstance(val, np.ndarray) and val.dtype != object:
            snap[key] = val.tobytes()
    return snap


def _run_row(rid):
    import warnings

    if rid == "__selftest_abort__":
        os.abort()
    if rid == "__selftest_exit__":
        os._exit(3)
    row = ROWS[rid]
    res = {"id": rid}
    try:
        args = row.build()
    except Exception as e:  # a broken row is a test bug; report it as such
        res.update(status="build_error", error=f"{type(e).__name__}: {e}")
        return res
    fn = row.fn if callable(row.fn) else getattr(fastattn, row.fn)
    before = _snapshot(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = fn(**args)
        except Exception as e:
            res.update(status="raised", exc=type(e).__name__,
                       mro=[c.__name__ for c in type(e).__mro__], message=str(e))
        else:
            res.update(status="returned", result=type(value).__name__)
            if isinstance(value, tuple):
                res["shapes"] = [list(np.shape(x)) for x in value]
            elif isinstance(value, np.ndarray):
                res["shapes"] = [list(value.shape)]
    if res["status"] == "raised":
        after = _snapshot(args)
        res["modified"] = sorted(k for k in before if after.get(k) != before[k])
    res["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    if row.fn == "set_num_threads":
        fastattn.set_num_threads(1)
    return res


def driver_main():
    ids = json.loads(sys.stdin.read())
    for rid in ids:
        _emit({"id": rid, "event": "start"})
        _emit(_run_row(rid))


# ---------------------------------------------------------------------------
# The parent side: chunks, crash detection, restarts
# ---------------------------------------------------------------------------

CHUNKS = 4
CHUNK_TIMEOUT = 120  # seconds per child
MAX_CHILDREN_PER_CHUNK = 20


def _child_env():
    env = child_env()
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def _text(x):
    if x is None:
        return ""
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else x


def run_rows(ids):
    """Run the given rows in child interpreters; return {id: result}.

    A row whose child died gets ``status: crashed`` with the exit status and
    the end of stderr; the remaining rows run again in a new child.
    """
    results = {}
    pending = list(ids)
    children = 0
    while pending:
        children += 1
        if children > MAX_CHILDREN_PER_CHUNK:
            for rid in pending:
                results[rid] = {"id": rid, "status": "crashed",
                                "detail": "too many children died; row not run"}
            break
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--driver"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=_child_env(),
                                cwd=HERE)
        try:
            out, err = proc.communicate(json.dumps(pending), timeout=CHUNK_TIMEOUT)
            how = f"exit status {proc.returncode}"
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            how = f"timed out after {CHUNK_TIMEOUT} s"
        out, err = _text(out), _text(err)
        started = None
        for line in out.splitlines():
            if not line.startswith(PREFIX):
                continue
            msg = json.loads(line[len(PREFIX):])
            if msg.get("event") == "start":
                started = msg["id"]
            else:
                results[msg["id"]] = msg
                started = None
        pending = [rid for rid in pending if rid not in results]
        if not pending:
            break
        detail = f"child {how}; stderr ends with:\n{err[-2000:]}"
        if started is None:
            # died before it began a row (e.g. at import): nothing will run
            for rid in pending:
                results[rid] = {"id": rid, "status": "crashed", "detail": detail}
            break
        results[started] = {"id": started, "status": "crashed", "detail": detail}
        pending.remove(started)
    return results


def run_table(ids, chunks=CHUNKS):
    parts = [ids[i::chunks] for i in range(chunks)]
    results = {}
    with ThreadPoolExecutor(max_workers=chunks) as pool:
        for part in pool.map(run_rows, [p for p in parts if p]):
            results.update(part)
    return results


def check_row(row, res):
    assert res is not None, f"{row.id}: no result"
    if res["status"] == "crashed":
        raise AssertionError(f"{row.id}: the interpreter died running this row "
                             f"({res['detail']})")
    if res["status"] == "build_error":
        raise AssertionError(f"{row.id}: building the arguments failed: {res['error']}")
    if row.exc is None:
        assert res["status"] == "returned", (
            f"{row.id}: a valid call raised {res.get('exc')}: {res.get('message')}")
        if row.fn == "attention":
            a = row.build()
            want = list(np.shape(a["q"])[:-1]) + [np.shape(a["v"])[-1]]
            assert res["shapes"][0] == want, f"{row.id}: output shape {res['shapes'][0]} != {want}"
        return
    assert res["status"] == "raised", (
        f"{row.id}: expected {' or '.join(row.exc)}, but the call returned "
        f"{res.get('result')} {res.get('shapes')}")
    assert any(e in res["mro"] for e in row.exc), (
        f"{row.id}: expected {' or '.join(row.exc)}, got {res['exc']}: {res['message']!r}")
    assert re.search(row.pattern, res["message"]), (
        f"{row.id}: the {res['exc']} message does not name the argument "
        f"(/{row.pattern}/): {res['message']!r}")
    assert not res["modified"], (
        f"{row.id}: the failed call wrote to {', '.join(res['modified'])}")


if __name__ == "__main__" and "--driver" in sys.argv:
    driver_main()
    sys.exit(0)


# ---------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def table_results(request):
    """The results of the rows whose tests were collected.  With
    FASTATTN_TEST_ROWS_IN_PROCESS=1 (tools/valgrind.sh) they run in this
    process, where memcheck sees them, without the crash guard."""
    ids = [item.callspec.params["row"].id for item in request.session.items
           if getattr(item, "module", None) is request.module and "row" in getattr(
               getattr(item, "callspec", None), "params", {})]
    if os.environ.get("FASTATTN_TEST_ROWS_IN_PROCESS") == "1":
        threads = fastattn.get_num_threads()
        try:
            return {rid: _run_row(rid) for rid in ids}
        finally:
            fastattn.set_num_threads(threads)
    return run_table(ids)


@pytest.mark.parametrize("row", TABLE, ids=[r.id for r in TABLE])
def test_bad_input(table_results, row):
    check_row(row, table_results.get(row.id))


def test_table_covers_every_argument():
    # Every argument of the public API has failing rows, and every row
    # that must fail names what it expects.
    covered = {m.group(1) for r in TABLE if r.pattern
               for m in re.finditer(r"\\b(\w+)\\b", r.pattern)}
    assert {"q", "k", "v", "mask", "causal", "scale", "out", "return_lse", "n"} <= covered
    assert all(r.pattern for r in TABLE if r.exc is not None)
    assert sum(r.exc is None for r in TABLE) >= 10


def test_harness_reports_a_crash_as_a_failed_row():
    # A child that dies fails the row it was running, and only that row:
    # the rows after it run in a new child.
    ids = ["errors::out_is_q", "__selftest_abort__", "q_none",
           "__selftest_exit__", "ok_scale_negative"]
    res = run_rows(ids)
    assert set(res) == set(ids)
    assert res["__selftest_abort__"]["status"] == "crashed"
    assert "exit status -6" in res["__selftest_abort__"]["detail"]
    assert res["__selftest_exit__"]["status"] == "crashed"
    assert "exit status 3" in res["__selftest_exit__"]["detail"]
    check_row(ROWS["errors::out_is_q"], res["errors::out_is_q"])
    check_row(ROWS["q_none"], res["q_none"])
    check_row(ROWS["ok_scale_negative"], res["ok_scale_negative"])
    with pytest.raises(AssertionError, match="interpreter died"):
        check_row(ROWS["q_none"], res["__selftest_abort__"])


def test_row_ids_are_unique():
    ids = [r.id for r in TABLE]
    assert len(ids) == len(set(ids))


def test_bfloat16_dtype_errors():
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs the optional ml_dtypes "
                                                        "package")
    q, k, v = bad_args_variants.qkv()
    bf = ml_dtypes.bfloat16
    with pytest.raises(TypeError, match=r"\bk\b"):
        fastattn.attention(q.astype(np.float16), k.astype(bf), v.astype(bf))
    with pytest.raises(TypeError, match=r"\bv\b"):
        fastattn.attention(q.astype(bf), k.astype(bf), v)
    with pytest.raises(ValueError, match=r"\bout\b"):
        fastattn.attention(q.astype(bf), k.astype(bf), v.astype(bf),
                           out=np.zeros((2, 4, 5, 8), np.float16))
    with pytest.raises(TypeError, match=r"\bq\b"):
        fastattn.attention(*(a.astype(ml_dtypes.float8_e4m3fn) for a in (q, k, v)))
    with pytest.raises(TypeError, match=r"\bdtype\b"):
        fastattn.KVCache(1, 1, 2, 8, dtype=ml_dtypes.float8_e4m3fn)
    c = fastattn.KVCache(1, 1, 2, 8, dtype=bf)
    with pytest.raises(TypeError, match=r"\bk\b"):
        c.append(np.zeros((1, 1, 1, 8), np.float16), np.zeros((1, 1, 1, 8), bf))
