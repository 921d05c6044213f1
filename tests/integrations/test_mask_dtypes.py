"""float16 and bfloat16 additive masks (transformers builds masks in the
model's dtype): widened to float32 at the API edge, broadcast dims kept."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from support import require

ml_dtypes = require("ml_dtypes", "bfloat16 arrays are ml_dtypes.bfloat16")

import fastattn  # noqa: E402
from fastattn import api  # noqa: E402


@pytest.mark.parametrize("mdtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("qdtype", [np.float32, "bfloat16"])
def test_16bit_masks_equal_their_float32_values(mdtype: str, qdtype: Any) -> None:
    rng = np.random.default_rng(3)
    qdt = ml_dtypes.bfloat16 if qdtype == "bfloat16" else qdtype
    q, k, v = (rng.standard_normal((2, 3, n, 8)).astype(qdt) for n in (5, 7, 7))
    mdt = ml_dtypes.bfloat16 if mdtype == "bfloat16" else np.float16
    mask = np.where(rng.random((2, 1, 5, 7)) < 0.7, rng.standard_normal((2, 1, 5, 7)),
                    -np.inf).astype(mdt)
    mask[..., 0] = 0
    exact = mask.astype(np.float32)   # every 16-bit value is exact in float32
    assert np.array_equal(fastattn.attention(q, k, v, mask=mask),
                          fastattn.attention(q, k, v, mask=exact))
    assert np.array_equal(fastattn.attention_weights(q, k, mask=mask),
                          fastattn.attention_weights(q, k, mask=exact))


def test_broadcast_16bit_mask_stays_broadcast() -> None:
    """A (B, 1, 1, Nk) key mask expanded to (B, H, Nq, Nk) is widened once
    per key, not once per (head, query, key)."""
    keys = np.zeros((2, 1, 1, 4096), dtype=ml_dtypes.bfloat16)
    keys[1, ..., 100:] = -np.inf
    big = np.broadcast_to(keys, (2, 16, 4096, 4096))
    wide = api._widen_16bit_mask(big)
    assert wide.dtype == np.float32 and wide.shape == big.shape
    assert wide.strides[1:3] == (0, 0) and wide.base is not None
    assert wide.base.nbytes <= 2 * 4096 * 4 * 2
    q = np.ones((2, 16, 1, 8), dtype=np.float32)
    k = v = np.ones((2, 16, 4096, 8), dtype=np.float32)
    out = fastattn.attention(q, k, v, mask=big[:, :, :1])
    assert np.allclose(out, 1.0)
