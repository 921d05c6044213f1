"""transformers' continuous batching (``generate_batch``) on fastattn.

Inside ``fastattn.integrations.transformers.continuous_batching()``, the
attention of continuous batching runs as ``attention_varlen``; greedy tokens
must equal those of transformers' own "sdpa" in float32, on a Llama-style
model with grouped-query attention and on a sliding-window (Mistral) one,
for a batch of ragged prompts.  Tiny random models are built from configs
(no download).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from support import require

torch = require("torch", "transformers runs on torch (the 'torch' extra)")
transformers = require("transformers", "continuous batching is transformers' "
                       "(the 'transformers' extra)")
require("ml_dtypes", "bfloat16 tensors are read as ml_dtypes.bfloat16 storage")

from fastattn.integrations import transformers as fa_hf  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers.logging.set_verbosity_error()


def _model(family: str) -> Any:
    common: dict[str, Any] = dict(vocab_size=300, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=8,
                                  num_key_value_heads=2, max_position_embeddings=512)
    if family == "llama":
        cfg = transformers.LlamaConfig(**common)
    else:                                       # a sliding window of 8 keys
        cfg = transformers.MistralConfig(**common, sliding_window=8)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()


def _prompts(seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 300, (n,), generator=g).tolist() for n in [3, 17, 1, 40, 9, 25, 2]]


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_generate_batch_tokens_equal_sdpa(family):
    model = _model(family)
    config = transformers.GenerationConfig(max_new_tokens=12, do_sample=False, eos_token_id=-1)
    # a small cache (by default it is sized from the free memory, slow to set up)
    cb_config = transformers.ContinuousBatchingConfig(num_blocks=64, max_batch_tokens=256,
                                                      page_size=32)
    ref = model.generate_batch(inputs=_prompts(), generation_config=config,
                               continuous_batching_config=cb_config)
    calls = []
    original = fa_hf._varlen_forward

    def counted(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        return original(*args, **kw)

    fa_hf._varlen_forward = counted
    try:
        with fa_hf.continuous_batching() as cb:
            got = model.generate_batch(inputs=_prompts(), generation_config=config,
                                       continuous_batching_config=cb_config)
    finally:
        fa_hf._varlen_forward = original
    assert set(got) == set(ref)
    for name in ref:
        assert got[name].generated_tokens == ref[name].generated_tokens, name
    # every attention call of the run went to fastattn: 2 layers per step
    assert cb.varlen_calls == len(calls) > 0 and cb.varlen_calls % 2 == 0
    assert cb.other_calls == 0


def test_the_registry_is_restored():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    before = ALL_ATTENTION_FUNCTIONS["sdpa"]
    with fa_hf.continuous_batching():
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is not before
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is before


def _block_diagonal(lq, lk, window=None):
    cq, ck = np.concatenate([[0], np.cumsum(lq)]), np.concatenate([[0], np.cumsum(lk)])
    m = torch.full((int(cq[-1]), int(ck[-1])), torch.finfo(torch.float32).min)
    for b in range(len(lq)):
        for i in range(lq[b]):
            d = i + lk[b] - lq[b]
            lo = 0 if window is None else max(0, d - window + 1)
            m[cq[b] + i, ck[b] + lo:ck[b] + d + 1] = 0
    return m[None, None], torch.tensor(cq), torch.tensor(ck)


def test_varlen_plan_recognizes_only_the_block_diagonal_mask():
    mask, cq, ck = _block_diagonal([1, 4, 1], [6, 4, 3])
    kw = {"cu_seq_lens_q": cq, "cu_seq_lens_k": ck}
    plan = fa_hf.varlen_plan(mask, 6, 13, kw, None)
    assert plan is not None and plan["window"] is None
    np.testing.assert_array_equal(plan["cu_seqlens_k"], [0, 6, 10, 13])
    # the same with the window transformers' sliding layers use
    wmask, _, _ = _block_diagonal([1, 4, 1], [6, 4, 3], window=2)
    assert fa_hf.varlen_plan(wmask, 6, 13, kw, 2)["window"] == (1, 0)
    assert fa_hf.varlen_plan(wmask, 6, 13, kw, None) is None
    # one entry off, other offsets, no offsets, a non-binary mask: not recognized
    bad = mask.clone()
    bad[0, 0, 2, 9] = 0
    assert fa_hf.varlen_plan(bad, 6, 13, kw, None) is None
    assert fa_hf.varlen_plan(mask, 6, 13, {"cu_seq_lens_q": cq,
                                           "cu_seq_lens_k": torch.tensor([0, 5, 10, 13])},
                             None) is None
    assert fa_hf.varlen_plan(mask, 6, 13, {}, None) is None
    assert fa_hf.varlen_plan(mask * 0.5 - 1.0, 6, 13, kw, None) is None


def test_other_sdpa_calls_go_to_sdpa():
    q = torch.randn(2, 4, 5, 8)
    k = torch.randn(2, 4, 5, 8)
    v = torch.randn(2, 4, 5, 8)

    class Layer(torch.nn.Module):
        is_causal = True

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    ref = ALL_ATTENTION_FUNCTIONS["sdpa"](Layer(), q, k, v, None, scaling=0.3)[0]
    with fa_hf.continuous_batching() as cb:
        got = ALL_ATTENTION_FUNCTIONS["sdpa"](Layer(), q, k, v, None, scaling=0.3)[0]
    assert cb.varlen_calls == 0 and cb.other_calls == 1
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
