"""Helpers of the encoder benchmark: a generated mixed-length corpus, and the
peers' runs as a script, so that each can be timed from start-up in its own
process like ``fastattn embed``: sentence-transformers (float32, bfloat16)
and ONNX Runtime on a model exported here from the same weights (float32
with the graph optimized, and int8 by ``quantize_dynamic``).

    python benchmarks/encoder_peer.py CORPUS OUT.npy THREADS {float32,bfloat16}
    python benchmarks/encoder_peer.py CORPUS OUT.npy THREADS ort MODEL.onnx
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict, List

import numpy as np

_WORDS = ("time person year way day thing man world life hand part child eye woman place "
          "work week case point government company number group problem fact be have do say "
          "get make go know take see come think look want give use find tell ask seem feel "
          "try leave call good new first last long great little own other old right big "
          "high different small large next early young important few public bad same able "
          "river mountain quickly carefully although because yesterday tomorrow electricity "
          "photosynthesis unbelievable international misunderstanding 2024 3.5 km/h e-mail "
          "naïve café résumé").split()


def make_corpus(n: int = 2200, seed: int = 0) -> List[str]:
    """``n`` sentences of mixed length: mostly 4-30 words, some 30-90, a few
    of 150-260 words (past the 256-token limit once tokenized)."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=n, p=[0.75, 0.22, 0.03])
    lo = np.array([4, 30, 150])[kind]
    hi = np.array([30, 90, 260])[kind]
    lengths = rng.integers(lo, hi)
    out = []
    for n_words in lengths:
        words = list(rng.choice(_WORDS, size=int(n_words)))
        words[0] = words[0].capitalize()
        out.append(" ".join(words) + ".")
    return out


def sentence_transformers_encode(texts: List[str], threads: int, dtype: str) -> Any:
    """Embeddings by SentenceTransformer(all-MiniLM-L6-v2).encode(batch_size=32)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from fastattn.models import minilm_path

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(minilm_path()), device="cpu")
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    emb = model.encode(texts, batch_size=32, normalize_embeddings=True,
                       convert_to_tensor=True)
    return emb.float().numpy()


def export_onnx(folder: str) -> Dict[str, str]:
    """Export all-MiniLM-L6-v2's transformer (token embeddings out) to ONNX
    with torch.onnx.export, let ONNX Runtime optimize its graph (saved), and
    quantize that with ``quantize_dynamic`` (QInt8 weights, the form
    fastembed-style tools ship).  Returns {"ort float32": path, "ort int8":
    path}."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer
    from transformers import AutoModel

    from fastattn.models import minilm_path

    model = AutoModel.from_pretrained(str(minilm_path())).eval()
    raw = os.path.join(folder, "minilm.onnx")
    ids = torch.ones((2, 16), dtype=torch.int64)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=512)
    with torch.no_grad():
        torch.onnx.export(model, (ids, torch.ones_like(ids)), raw,
                          input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"],
                          dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
                          dynamo=True)
    # ONNX Runtime's transformer optimizer: fused attention, LayerNorm,
    # GELU and bias adds (what its BERT deployments run)
    opt = os.path.join(folder, "minilm-opt.onnx")
    optimizer.optimize_model(raw, model_type="bert", num_heads=12, hidden_size=384,
                             opt_level=1).save_model_to_file(opt)
    q8 = os.path.join(folder, "minilm-int8.onnx")
    quantize_dynamic(opt, q8, weight_type=QuantType.QInt8)
    return {"ORT float32": opt, "ORT int8": q8}


def ort_encode(texts: List[str], threads: int, model_path: str, batch: int = 32) -> Any:
    """Mean-pooled, normalized embeddings by an ONNX Runtime session over
    ``model_path``, batches of ``batch`` sentences sorted by length (so
    padding costs little), returned in input order."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from fastattn.models import minilm_path

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)
    enc = tok.encode_batch(texts)
    order = np.argsort([len(e.ids) for e in enc], kind="stable")
    out = np.empty((len(texts), 384), dtype=np.float32)
    for b in range(0, len(order), batch):
        idx = order[b:b + batch]
        n = max(len(enc[i].ids) for i in idx)
        ids = np.zeros((len(idx), n), dtype=np.int64)
        mask = np.zeros((len(idx), n), dtype=np.int64)
        for r, i in enumerate(idx):
            ids[r, :len(enc[i].ids)] = enc[i].ids
            mask[r, :len(enc[i].ids)] = 1
        h = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        m = mask[:, :, None].astype(np.float32)
        pooled = (h * m).sum(1) / m.sum(1)
        out[idx] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    return out


def main(argv: List[str]) -> int:
    corpus, out, threads, dtype = argv[0], argv[1], int(argv[2]), argv[3]
    t0 = time.perf_counter()
    with open(corpus, encoding="utf-8") as f:
        texts = [line.rstrip("\n") for line in f]
    if dtype == "ort":
        np.save(out, ort_encode(texts, threads, argv[4]))
    else:
        np.save(out, sentence_transformers_encode(texts, threads, dtype))
    print(f"{time.perf_counter() - t0:.3f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
