"""float16 and bfloat16 additive masks (transformers builds masks in the
model's dtype): read by the core as they are, with no widened copy, and
equal bit for bit to the same mask widened to float32 (widening is exact).
``isa_cases`` checks that on every ISA path at 1 and 2 threads."""
from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

from support import ISA_COMBOS, IsaCase, check_isa_path, path_qkv, require

ml_dtypes = require("ml_dtypes", "bfloat16 arrays are ml_dtypes.bfloat16")

import fastattn  # noqa: E402

MASK_DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def _additive(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> Any:
    """A random additive mask in ``dtype``: values, -inf and a visible key 0."""
    mask = np.where(rng.random(shape) < 0.7, 4 * rng.standard_normal(shape),
                    -np.inf).astype(dtype)
    mask[..., 0] = 0
    return mask


@pytest.mark.parametrize("mdtype", list(MASK_DTYPES))
@pytest.mark.parametrize("qdtype", [np.float32, np.float64, np.float16, "bfloat16"])
def test_16bit_masks_equal_their_float32_values(mdtype: str, qdtype: Any) -> None:
    rng = np.random.default_rng(3)
    qdt = ml_dtypes.bfloat16 if qdtype == "bfloat16" else qdtype
    q, k, v = (rng.standard_normal((2, 3, n, 8)).astype(qdt) for n in (5, 7, 7))
    mask = _additive(rng, (2, 1, 5, 7), MASK_DTYPES[mdtype])
    exact = mask.astype(np.float32)   # every 16-bit value is exact in float32
    assert np.array_equal(fastattn.attention(q, k, v, mask=mask),
                          fastattn.attention(q, k, v, mask=exact))
    assert np.array_equal(fastattn.attention_weights(q, k, mask=mask),
                          fastattn.attention_weights(q, k, mask=exact))
    assert fastattn.explain(q, k, v, mask=mask) == fastattn.explain(q, k, v, mask=exact)


@pytest.mark.parametrize("mdtype", list(MASK_DTYPES))
def test_broadcast_16bit_mask_is_read_in_place(mdtype: str) -> None:
    """A (B, 1, 1, Nk) key mask broadcast to (B, H, Nq, Nk) (32 M entries)
    is read through its strides: the call allocates little more than its
    output, and the result is that of the float32 mask."""
    keys = np.zeros((2, 1, 1, 4096), dtype=MASK_DTYPES[mdtype])
    keys[1, ..., 100:] = -np.inf
    big = np.broadcast_to(keys, (2, 16, 1024, 4096))
    q = np.ones((2, 16, 1024, 8), dtype=np.float32)
    k = v = np.ones((2, 16, 4096, 8), dtype=np.float32)
    v = v * np.arange(4096, dtype=np.float32)[:, None]
    tracemalloc.start()
    try:
        out = fastattn.attention(q, k, v, mask=big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * out.nbytes, f"the call allocated {peak} bytes"
    assert np.array_equal(out, fastattn.attention(q, k, v, mask=big.astype(np.float32)))
    assert np.allclose(out[1], 49.5) and np.allclose(out[0], 2047.5)


def test_other_mask_dtypes_still_raise() -> None:
    q = np.ones((1, 2, 4, 8), dtype=np.float32)
    for bad in (np.zeros((4, 4), np.int32), np.zeros((4, 4), np.complex64)):
        with pytest.raises(TypeError, match="mask has dtype"):
            fastattn.attention(q, q, q, mask=bad)


# ---------------------------------------------------------------- every ISA path

def _mask_case(name: str, q: Any, k: Any, v: Any, mask: Any, **kw: Any) -> IsaCase:
    """fastattn with the 16-bit mask and with its float32 widening: the
    check wants outputs, lse and weights equal bit for bit."""
    def run() -> tuple[Any, ...]:
        res = []
        for m in (mask, mask.astype(np.float32)):
            out, lse, w = fastattn.attention(q, k, v, mask=m, return_lse=True,
                                             return_weights=True, **kw)
            res += [out, lse, w]
        return tuple(res)

    def check(res: tuple[Any, ...]) -> None:
        for i, what in enumerate(("out", "lse", "weights")):
            assert res[i].tobytes() == res[i + 3].tobytes(), (
                f"{what} with the {mask.dtype} mask differs from the float32 mask")

    return IsaCase(name, run, check)


def isa_cases() -> list[IsaCase]:
    rng = np.random.default_rng(1414)
    cases = []
    for path in ("decode", "decode_split", "tile", "tile_split"):
        for qname, qdt in (("f32", np.float32), ("bf16", ml_dtypes.bfloat16),
                           ("f16", np.float16), ("f64", np.float64)):
            q, k, v = path_qkv(rng, path, dtype=qdt)
            b, h, n_q = q.shape[:3]
            n_k = k.shape[2]
            for mname, mdt in MASK_DTYPES.items():
                full = _additive(rng, (b, h, n_q, n_k), mdt)
                cases.append(_mask_case(f"{path}-{qname}-{mname}", q, k, v, full))
                keys = _additive(rng, (b, 1, 1, n_k), mdt)
                cases.append(_mask_case(f"{path}-{qname}-{mname}-keys-causal", q, k, v,
                                        keys, causal=True))
    return cases


@pytest.mark.parametrize("isa, threads", ISA_COMBOS)
def test_every_isa_path(isa_runs: Any, isa: str, threads: int) -> None:
    check_isa_path(isa_runs, "test_mask_dtypes", isa, threads)
