"""fastattn._padding.fold_key_padding, the one rule by which the layer's
key_padding_mask and the transformers backend's padding masks become
kv_lengths: where it folds, the kernel with per-row key counts gives the
result of the (B, 1, 1, Nk) key mask it replaces (float64 reference,
tolerance rule of support/compare.py); where it refuses right padding,
kv_lengths would have computed something else."""

import numpy as np
import pytest

import fastattn
from fastattn._padding import fold_key_padding
from support import make_qkv
from support.compare import AttentionRefs

LENGTHS = [9, 6, 0]

# name: (Nq, Nk, causal, window, padding, what the rule gives)
CASES = {
    "full": (5, 9, True, None, "none", set()),
    "right": (5, 9, False, None, "right", {"kv_lengths"}),
    "right_top_left": (5, 9, "top_left", None, "right", {"kv_lengths", "causal"}),
    "right_causal_square": (9, 9, True, None, "right", {"kv_lengths", "causal"}),
    "right_causal_np_bool": (9, 9, np.bool_(True), None, "right", {"kv_lengths", "causal"}),
    "right_bottom_right": (5, 9, True, None, "right", None),
    "right_bottom_right_str": (5, 9, "bottom_right", None, "right", None),
    "right_window": (9, 9, False, (2, 1), "right", None),
    "right_causal_window": (9, 9, True, (3, 0), "right", None),
    "left": (5, 9, False, None, "left", None),
    "holes": (5, 9, "top_left", None, "holes", None),
}


def _keys(pad, n_k):
    keys = np.ones((len(LENGTHS), n_k), dtype=bool)
    for b, n in enumerate(LENGTHS):
        if pad == "right":
            keys[b, n:] = False
        elif pad == "left":
            keys[b, :n_k - n] = False
        elif pad == "holes":
            keys[b, 1::3] = False
    return keys


@pytest.mark.parametrize("name", list(CASES))
def test_fold_key_padding(name):
    n_q, n_k, causal, window, pad, expected = CASES[name]
    keys = _keys(pad, n_k)
    folded = fold_key_padding(keys, n_q, causal, window)
    assert (folded if folded is None else set(folded)) == expected
    q, k, v = make_qkv(np.random.default_rng(0), (len(LENGTHS), 2), n_q, n_k, 16)
    masked = dict(mask=keys[:, None, None, :], causal=causal, window=window)
    refs = AttentionRefs(q, k, v, **masked)
    if folded is not None:
        assert folded.get("causal", "top_left") == "top_left"
        if "kv_lengths" in folded:
            assert folded["kv_lengths"].dtype == np.int64
            assert folded["kv_lengths"].tolist() == keys.sum(axis=1).tolist()
        opts = dict(causal=causal, window=window)
        opts.update(folded)
        refs.check(*fastattn.attention(q, k, v, return_lse=True, **opts))
    elif pad == "right":
        # the counts would move the band's bottom-right diagonal: refused
        lengths = keys.sum(axis=1)
        out = fastattn.attention(q, k, v, causal=causal, window=window, kv_lengths=lengths)
        assert not np.allclose(out, refs.o64, atol=1e-3)


def test_fold_key_padding_leaves_unknown_causal_to_the_kernel():
    keys = _keys("right", 9)
    assert fold_key_padding(keys, 9, "sideways") is None
    assert fold_key_padding(np.ones((2, 9), bool), 9, "sideways") == {}
