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
