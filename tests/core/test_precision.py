"""The ``precision=`` keyword: its checks, and what it does where the matrix
kernels do not run.

Contract (docs/amx.md):

* ``"highest"`` (the default), ``"bf16"`` or ``"bf16x3"``, on every entry
  point that takes attention options; any other str raises ``ValueError``
  naming ``precision`` and the allowed values, a non-str ``TypeError``.
* The reduced modes are for float32 inputs: float64 with one raises
  ``ValueError``; float16 and bfloat16 inputs ignore the keyword (the same
  bits as without it).
* Where the matrix kernels do not run (a CPU without AMX, a forced vector
  path, decode shapes), a reduced mode computes at ``"highest"``: the same
  bits as the default, and ``explain`` says so (``precision`` is
  ``"highest"``, ``precision_note`` gives the reason).
* The attention weights are always computed at ``"highest"``.

The accuracy of the reduced modes on the matrix kernels is tested in
test_matrix.py.
"""

import numpy as np
import pytest

import fastattn
from fastattn import _core
from support import half_dtypes, make_qkv, require
from support.matrix import MATRIX_PATHS

REDUCED = ("bf16", "bf16x3")
VECTOR_PATHS = [p for p in _core.isa_available() if p not in MATRIX_PATHS]
ALLOWED = r"'highest', 'bf16' or 'bf16x3'"


def _varlen(q, k, v, **kw):
    # (1, H, N, D) as one packed sequence (N, H, D)
    pk = [a[0].transpose(1, 0, 2) for a in (q, k, v)]
    return fastattn.attention_varlen(*pk, [0, q.shape[2]], [0, k.shape[2]], **kw)


def _cache(q, k, v, **kw):
    c = fastattn.KVCache(1, k.shape[1], k.shape[2], k.shape[3], dtype=k.dtype)
    c.append(k, v)
    return c.attend(q, **kw)


def _layer(q, k, v, **kw):
    layer = fastattn.MultiHeadAttention(q.shape[1] * q.shape[3], q.shape[1], dtype=q.dtype,
                                        rng=0)
    return layer(q[0].transpose(1, 0, 2).reshape(q.shape[2], -1), **kw)


def _torch(q, k, v, **kw):
    torch = require("torch", "the torch adapter needs torch")
    from fastattn import torch as fatorch
    return fatorch.attention(*(torch.from_numpy(np.ascontiguousarray(a)) for a in (q, k, v)),
                             **kw)


ENTRIES = {
    "attention": lambda q, k, v, **kw: fastattn.attention(q, k, v, **kw),
    "attention_varlen": _varlen,
    "attention_weights": lambda q, k, v, **kw: fastattn.attention_weights(q, k, **kw),
    "explain": lambda q, k, v, **kw: fastattn.explain(q, k, v, **kw),
    "KVCache.attend": _cache,
    "MultiHeadAttention": _layer,
    "torch.attention": _torch,
}


def _qkv(rng, dtype=np.float32, nq=40, nk=50):
    return make_qkv(rng, (1, 2), nq, nk, 16, dtype=dtype)


@pytest.mark.parametrize("entry", sorted(ENTRIES))
@pytest.mark.parametrize("bad, exc, match", [
    ("fp32", ValueError, ALLOWED), ("BF16", ValueError, ALLOWED), ("", ValueError, ALLOWED),
    ("tf32", ValueError, ALLOWED), (1, TypeError, "must be a str"),
    (None, TypeError, "must be a str"), (b"bf16", TypeError, "must be a str"),
])
def test_bad_precision(rng, entry, bad, exc, match):
    q, k, v = _qkv(rng)
    with pytest.raises(exc, match=match) as e:
        ENTRIES[entry](q, k, v, precision=bad)
    assert "precision" in str(e.value)


@pytest.mark.parametrize("entry", sorted(ENTRIES))
@pytest.mark.parametrize("mode", REDUCED)
def test_float64_takes_only_highest(rng, entry, mode):
    q, k, v = _qkv(rng, np.float64)
    if entry == "torch.attention":
        require("torch", "the torch adapter needs torch")
    with pytest.raises(ValueError, match=r"precision='%s' is for float32 inputs" % mode):
        ENTRIES[entry](q, k, v, precision=mode)
    ENTRIES[entry](q, k, v, precision="highest")


def test_layer_checks_precision_before_the_cache_changes(rng):
    layer = fastattn.MultiHeadAttention(32, 2, rng=0)
    cache = layer.make_kv_cache(1, 16)
    x = rng.standard_normal((1, 4, 32)).astype(np.float32)
    with pytest.raises(ValueError, match="precision"):
        layer(x, kv_cache=cache, precision="half")
    assert cache.lengths.tolist() == [0]


@pytest.mark.parametrize("dtype", half_dtypes())
@pytest.mark.parametrize("mode", REDUCED)
def test_16bit_inputs_ignore_precision(rng, dtype, mode):
    for nq in (1, 40):                               # decode and prefill shapes
        q, k, v = _qkv(rng, dtype, nq=nq)
        want = fastattn.attention(q, k, v, causal=True, return_lse=True)
        got = fastattn.attention(q, k, v, causal=True, return_lse=True, precision=mode)
        for a, b in zip(got, want):
            assert a.tobytes() == b.tobytes()
        plan = fastattn.explain(q, k, v, precision=mode)
        assert plan["precision"] is None and plan["precision_requested"] == mode
        assert "applies to float32 inputs" in plan["precision_note"]


def _same_bits(got, want):
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


def _fallback_calls(rng):
    """(name, call(precision) -> result) on the shapes of every kernel."""
    q, k, v = make_qkv(rng, (2, 4), 70, 90, 32, hkv=2)          # prefill, GQA
    qd, kd, vd = make_qkv(rng, (1, 8), 1, 1500, 64, hkv=2)     # decode, split keys
    mask = rng.random((70, 90)) < 0.8
    return [
        ("prefill", lambda p: fastattn.attention(q, k, v, causal=True, return_lse=True,
                                                 precision=p)),
        ("masked_softcap", lambda p: fastattn.attention(q, k, v, mask=mask, softcap=5.0,
                                                        precision=p)),
        ("decode", lambda p: fastattn.attention(qd, kd, vd, return_lse=True, precision=p)),
        ("varlen", lambda p: _varlen(q[:1], k[:1], v[:1], causal=True, return_lse=True,
                                     precision=p)),
        ("weights", lambda p: fastattn.attention(q, k, v, return_lse=True,
                                                 return_weights=True, precision=p)),
    ]


@pytest.mark.filterwarnings("ignore:precision=.* falls back:RuntimeWarning")
@pytest.mark.parametrize("path", VECTOR_PATHS)
@pytest.mark.parametrize("mode", REDUCED)
def test_vector_paths_fall_back_bitwise(rng, path, mode):
    # a forced vector path never uses the matrix unit: the reduced modes
    # give the bits of the default, and explain says why
    before = _core.get_isa()
    _core.set_isa(path)
    try:
        for name, call in _fallback_calls(rng):
            _same_bits(call(mode), call("highest"))
        q, k, v = make_qkv(rng, (1, 4), 64, 64, 32)
        plan = fastattn.explain(q, k, v, precision=mode)
        assert plan["kernel"] != "matrix" and plan["precision"] == "highest"
        assert plan["precision_requested"] == mode
        assert plan["precision_note"].startswith(f"precision={mode!r} falls back to 'highest'")
    finally:
        _core.set_isa(before)


@pytest.mark.filterwarnings("ignore:precision=.* falls back:RuntimeWarning")
def test_default_path_without_amx_falls_back(rng):
    status = _core.amx_status()
    if status["available"]:
        pytest.skip("this CPU has AMX: the reduced modes run on the tiles (test_matrix.py)")
    if _core.get_isa() in MATRIX_PATHS:
        pytest.skip(f"FASTATTN_ISA={_core.get_isa()} runs the reduced modes on a matrix path")
    for mode in REDUCED:
        for name, call in _fallback_calls(rng):
            _same_bits(call(mode), call("highest"))
        q, k, v = make_qkv(rng, (1, 4), 64, 64, 32)
        plan = fastattn.explain(q, k, v, precision=mode)
        assert plan["precision"] == "highest" and plan["kernel"] == "tile"
        # the note names the gate's reason (e.g. "cpuid reports no AMX-TILE")
        assert status["reason"] in plan["precision_note"], plan["precision_note"]


def test_highest_is_the_default(rng):
    q, k, v = _qkv(rng)
    _same_bits(fastattn.attention(q, k, v, precision="highest"), fastattn.attention(q, k, v))
    plan = fastattn.explain(q, k, v)
    assert plan["precision"] == plan["precision_requested"] == "highest"
    assert plan["precision_note"] is None
    assert fastattn.explain(q, k, v, return_weights=True)["weights"]["precision"] == "highest"


@pytest.mark.parametrize("mode", REDUCED)
def test_weights_are_computed_at_highest(rng, mode):
    # on any path, the weights of a reduced-precision call are those of
    # attention_weights, which always runs at "highest"
    q, k, v = make_qkv(rng, (1, 2), 40, 70, 32)
    _, lse, w = fastattn.attention(q, k, v, causal=True, return_lse=True,
                                   return_weights=True, precision=mode)
    _same_bits(w, fastattn.attention_weights(q, k, causal=True))
    _same_bits(fastattn.attention_weights(q, k, causal=True, precision=mode), w)
    plan = fastattn.explain(q, k, v, return_weights=True, precision=mode)
    assert plan["weights"]["precision"] == "highest"


# ---------------------------------------------------------------- the fallback warning

SUFFIX = "; fastattn.explain shows the plan of a call"

_FALLBACK_CHILD = r'''
import json, sys, warnings
import numpy as np
import fastattn
from fastattn import api

rng = np.random.default_rng(0)
def qkv(lead, nq, nk, d, hkv):
    return (rng.standard_normal(lead + (nq, d)).astype(np.float32),
            rng.standard_normal(lead[:-1] + (hkv, nk, d)).astype(np.float32),
            rng.standard_normal(lead[:-1] + (hkv, nk, d)).astype(np.float32))
pre = qkv((1, 4), 64, 80, 32, 2)
dec = qkv((1, 8), 1, 300, 64, 2)
calls = [("prefill", pre, "bf16"), ("prefill", pre, "bf16"), ("decode", dec, "bf16"),
         ("decode", dec, "bf16"), ("prefill", pre, "bf16x3"), ("decode", dec, "bf16x3")]
seen, out = set(), []
for name, (q, k, v), mode in calls:
    plan = fastattn.explain(q, k, v, precision=mode)
    expected = []
    if plan["precision_note"] is not None:
        key = api._fallback(plan, mode)[0]
        if key not in seen:
            expected = [plan["precision_note"] + sys.argv[1]]
        seen.add(key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fastattn.attention(q, k, v, precision=mode)
    got = [str(w.message) for w in caught if w.category is RuntimeWarning]
    files = sorted({w.filename for w in caught})
    out.append(dict(call=f"{name} {mode}", got=got, expected=expected, files=files))
print(json.dumps(out))
'''


def _fallback_child(tmp_path, **env):
    import json
    import subprocess
    import sys

    from support.child import child_env

    script = tmp_path / "fallback_child.py"
    script.write_text(_FALLBACK_CHILD)
    run = subprocess.run([sys.executable, str(script), SUFFIX], capture_output=True, text=True,
                         env=child_env(**env), timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout), str(script)


def test_fallback_warns_once_per_process_and_reason(tmp_path):
    # a fresh interpreter on the default path: each call warns iff it falls
    # back for a reason not warned about before, with explain's note
    res, script = _fallback_child(tmp_path, FASTATTN_ISA="")
    for r in res:
        assert r["got"] == r["expected"], r
        assert r["files"] in ([], [script]), r        # attributed to the caller
    # the same call twice never warns twice
    assert res[1]["got"] == [] and res[3]["got"] == []


@pytest.mark.parametrize("path", VECTOR_PATHS)
def test_fallback_on_a_vector_path_warns_once_in_all(tmp_path, path):
    # a path without matrix kernels falls back on every call, for one reason
    res, _ = _fallback_child(tmp_path, FASTATTN_ISA=path)
    got = [m for r in res for m in r["got"]]
    assert len(got) == 1 and res[0]["got"] == got, res
    assert got[0].startswith("precision='bf16' falls back to 'highest': ") and \
        got[0].endswith(SUFFIX)
    assert "matrix" in got[0]


def _warnings_of(call):
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught if w.category is RuntimeWarning]


@pytest.mark.parametrize("entry", ["attention", "attention_varlen", "KVCache.attend",
                                   "MultiHeadAttention", "torch.attention"])
def test_every_entry_warns_about_its_fallback(rng, monkeypatch, entry):
    from fastattn import api
    if entry == "torch.attention":
        require("torch", "the torch adapter needs torch")
    q, k, v = _qkv(rng)
    before = _core.get_isa()
    _core.set_isa(VECTOR_PATHS[0])
    try:
        monkeypatch.setattr(api, "_warned", set())      # as in a fresh process
        first = _warnings_of(lambda: ENTRIES[entry](q, k, v, precision="bf16"))
        second = _warnings_of(lambda: ENTRIES[entry](q, k, v, precision="bf16x3"))
    finally:
        _core.set_isa(before)
    assert len(first) == 1 and first[0].startswith("precision='bf16' falls back to 'highest'")
    assert second == []


def test_no_fallback_warning_where_precision_does_not_fall_back(rng, monkeypatch):
    from fastattn import api
    q, k, v = _qkv(rng)
    monkeypatch.setattr(api, "_warned", set())
    assert _warnings_of(lambda: fastattn.attention(q, k, v)) == []
    assert _warnings_of(lambda: fastattn.attention(q, k, v, precision="highest")) == []
    assert _warnings_of(lambda: fastattn.explain(q, k, v, precision="bf16")) == []
    assert _warnings_of(lambda: fastattn.attention_weights(q, k, precision="bf16")) == []
    h = [a.astype(np.float16) for a in (q, k, v)]      # 16-bit inputs ignore the keyword
    assert _warnings_of(lambda: fastattn.attention(*h, precision="bf16")) == []
    # on every path: a call that runs in the mode it asked for does not warn
    before = _core.get_isa()
    try:
        for path in _core.isa_available():
            _core.set_isa(path)
            monkeypatch.setattr(api, "_warned", set())
            runs = fastattn.explain(q, k, v, precision="bf16")["precision"] == "bf16"
            got = _warnings_of(lambda: fastattn.attention(q, k, v, precision="bf16"))
            assert len(got) == (0 if runs else 1), (path, got)
    finally:
        _core.set_isa(before)
