"""The NumPy BERT encoder against a float64 forward pass of the same tiny
random network (FlashAttention's 2x rule), and its bitwise batch and thread
invariance.  Needs no optional package."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pytest

import fastattn
from fastattn.models import BertModel, BertWeights, bert
from fastattn.models.encoder import SentenceEncoder
from models_support import (TINY, random_ids, reference_forward, reference_pooled,  # noqa: F401
                            tiny_model, tiny_tensors)

FLOOR = 1e-6
threadpool_limits: Any = importlib.import_module("threadpoolctl").threadpool_limits


@pytest.mark.parametrize("lengths", [[5], [1, 2, 3, 4, 5], [7, 30, 2, 48, 16, 17, 64 - 48]])
def test_hidden_states_two_x_rule(tiny_model: BertModel, lengths: list[int]) -> None:
    rng = np.random.default_rng(sum(lengths))
    ids = random_ids(rng, lengths)
    states, cu = tiny_model.hidden_states(ids)
    assert states.dtype == np.float32 and states.shape == (sum(lengths), TINY.hidden_size)
    t = tiny_tensors()
    for b, a in enumerate(ids):
        ref64 = reference_forward(t, TINY, a, np.float64)
        naive = reference_forward(t, TINY, a, np.float32)
        fast = states[cu[b]:cu[b + 1]]
        bound = 2 * np.abs(naive - ref64).max() + FLOOR
        assert np.abs(fast - ref64).max() <= bound, (b, np.abs(fast - ref64).max(), bound)


def _states_in(precision: str, seed: int) -> Any:
    """The tiny model's tensors, five random sentences, their hidden states
    (and cu_seqlens) in ``precision`` and in float32."""
    t = tiny_tensors()
    model = BertModel(TINY, BertWeights.from_state_dict(TINY, t), row_block=64,
                      precision=precision)
    assert model.precision == precision
    ids = random_ids(np.random.default_rng(seed), [7, 30, 2, 48, 16])
    states, cu = model.hidden_states(ids)
    f32_states, _ = BertModel(TINY, model.weights, row_block=64).hidden_states(ids)
    return t, ids, states, cu, f32_states


def test_bfloat16_products_two_x_rule() -> None:
    """precision="bfloat16": against a float64 forward pass whose products
    round their inputs and weights to bfloat16 as the model does, the 2x
    rule with the same pass in float32 as the naive one; and the rounding
    really happens (the float32 model is closer to the unrounded pass)."""
    pytest.importorskip("ml_dtypes", reason="ml_dtypes provides NumPy's bfloat16")
    t, ids, states, cu, f32_states = _states_in("bfloat16", seed=11)
    for b, a in enumerate(ids):
        ref64 = reference_forward(t, TINY, a, np.float64, products="bfloat16")
        naive = reference_forward(t, TINY, a, np.float32, products="bfloat16")
        fast = states[cu[b]:cu[b + 1]]
        bound = 2 * np.abs(naive - ref64).max() + FLOOR
        assert np.abs(fast - ref64).max() <= bound, (b, np.abs(fast - ref64).max(), bound)
        exact = reference_forward(t, TINY, a, np.float64)
        assert (np.abs(f32_states[cu[b]:cu[b + 1]] - exact).max()
                < np.abs(fast - exact).max())


def test_int8_products_near_float64() -> None:
    """precision="int8": quantization is a rounding of its own, so no 2x
    rule; instead each sentence's hidden states stay within a few percent
    of the float64 pass and its pooled vector within cosine 0.999 of it,
    while the rounding really happens (float32 is far closer)."""
    t, ids, states, cu, f32_states = _states_in("int8", seed=12)
    for b, a in enumerate(ids):
        exact = reference_forward(t, TINY, a, np.float64)
        fast = states[cu[b]:cu[b + 1]].astype(np.float64)
        err = np.abs(fast - exact).max()
        assert err <= 0.05 * np.abs(exact).max(), (b, err)
        u, v = fast.mean(axis=0), exact.mean(axis=0)
        assert u @ v / np.linalg.norm(u) / np.linalg.norm(v) >= 0.999
        assert np.abs(f32_states[cu[b]:cu[b + 1]] - exact).max() * 100 < err


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_low_precision_batch_invariance_bitwise(precision: str) -> None:
    model = BertModel(TINY, BertWeights.from_state_dict(TINY, tiny_tensors()), row_block=64,
                      precision=precision)
    rng = np.random.default_rng(8)
    ids = random_ids(rng, _lengths(rng, 40))
    together = model.mean_pooled(ids)
    assert np.array_equal(np.concatenate([model.mean_pooled([a]) for a in ids]), together)
    perm = rng.permutation(len(ids))
    assert np.array_equal(model.mean_pooled([ids[i] for i in perm]), together[perm])


def test_precision_is_checked() -> None:
    w = BertWeights.from_state_dict(TINY, tiny_tensors())
    with pytest.raises(ValueError, match="precision must be one of"):
        BertModel(TINY, w, precision="fp16")


def test_mean_pooled_two_x_rule(tiny_model: BertModel) -> None:
    rng = np.random.default_rng(3)
    ids = random_ids(rng, [3, 9, 1, 40, 12])
    got = tiny_model.mean_pooled(ids)
    t = tiny_tensors()
    ref64 = reference_pooled(t, TINY, ids, np.float64)
    naive = reference_pooled(t, TINY, ids, np.float32)
    assert np.abs(got - ref64).max() <= 2 * np.abs(naive - ref64).max() + FLOOR
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, rtol=1e-6)


def _lengths(rng: np.random.Generator, n: int) -> list[int]:
    # many very short sentences (the attention core's few-row kernel) among long ones
    return [int(x) for x in rng.choice([1, 2, 3, 4, 5, 6, 17, 33, 48], size=n)]


def test_short_sentence_bound_is_the_cores_few_row_bound() -> None:
    """Sentences up to bert._few_rows() tokens get calls of their own length:
    it must be the longest query length the core's plan gives its few-row
    kernel, as explain says for calls with one query head per kv head (as
    the model's)."""
    def kernel(rows: int) -> str:
        q = np.zeros((1, 1, rows, 32), dtype=np.float32)
        return str(fastattn.explain(q, q, q)["kernel"])

    bound = bert._few_rows()
    assert bound >= 1
    assert [kernel(n) for n in range(1, bound + 1)] == ["rows"] * bound
    assert kernel(bound + 1) != "rows"


def test_batch_invariance_bitwise(tiny_model: BertModel) -> None:
    rng = np.random.default_rng(7)
    ids = random_ids(rng, _lengths(rng, 60))
    alone = np.concatenate([tiny_model.mean_pooled([a]) for a in ids])
    together = tiny_model.mean_pooled(ids)
    assert np.array_equal(alone, together)
    perm = rng.permutation(len(ids))
    shuffled = tiny_model.mean_pooled([ids[i] for i in perm])
    assert np.array_equal(shuffled, together[perm])
    # a different row block changes the fixed GEMM shape: still the same sentences
    # (not asserted bitwise: only one block size is used at a time)
    other = BertModel(TINY, tiny_model.weights, row_block=128).mean_pooled(ids)
    np.testing.assert_allclose(other, together, atol=1e-6)


@pytest.mark.parametrize("budget", [1, 37, 200, 10_000])
def test_encoder_batches_and_threads_bitwise(tiny_model: BertModel, budget: int) -> None:
    class NoTokenizer:
        def no_padding(self) -> None: ...
        def no_truncation(self) -> None: ...

    enc = SentenceEncoder(tiny_model, NoTokenizer(), max_length=TINY.max_position_embeddings)
    rng = np.random.default_rng(11)
    ids = random_ids(rng, _lengths(rng, 80))
    ref = enc.encode_ids(ids, batch_tokens=10_000, threads=1)
    for threads in (1, 2, 3):
        got = enc.encode_ids(ids, batch_tokens=budget, threads=threads)
        assert np.array_equal(got, ref), (budget, threads)


def test_blas_thread_count_does_not_change_products(tiny_model: BertModel) -> None:
    # the model itself, run with the BLAS at 1 and at 2 threads
    rng = np.random.default_rng(5)
    ids = random_ids(rng, _lengths(rng, 50))
    with threadpool_limits(1, user_api="blas"):
        one = tiny_model.mean_pooled(ids)
    with threadpool_limits(2, user_api="blas"):
        two = tiny_model.mean_pooled(ids)
    assert np.array_equal(one, two)


def test_bad_ids(tiny_model: BertModel) -> None:
    with pytest.raises(ValueError, match="token ids"):
        tiny_model.mean_pooled([np.array([0, TINY.vocab_size])])
    with pytest.raises(ValueError, match="tokens"):
        tiny_model.mean_pooled([np.zeros(TINY.max_position_embeddings + 1, dtype=np.int64)])
    with pytest.raises(ValueError, match="row_block"):
        BertModel(TINY, tiny_model.weights, row_block=0)


def test_weights_errors() -> None:
    t = tiny_tensors()
    del t["encoder.layer.1.output.dense.bias"]
    with pytest.raises(ValueError, match="encoder.layer.1.output.dense.bias"):
        BertWeights.from_state_dict(TINY, t)
    t = tiny_tensors()
    t["embeddings.LayerNorm.weight"] = t["embeddings.LayerNorm.weight"][:-1]
    with pytest.raises(ValueError, match="shape"):
        BertWeights.from_state_dict(TINY, t)
    prefixed = {"bert." + k: v for k, v in tiny_tensors().items()}
    w = BertWeights.from_state_dict(TINY, prefixed)
    assert np.array_equal(w.word, tiny_tensors()["embeddings.word_embeddings.weight"])
