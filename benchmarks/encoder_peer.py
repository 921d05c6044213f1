"""Helpers of the encoder benchmark: a generated mixed-length corpus, and a
sentence-transformers run (the peer) as a script, so that it can be timed
from start-up in its own process like ``fastattn embed``.

    python benchmarks/encoder_peer.py CORPUS OUT.npy THREADS {float32,bfloat16}
"""

from __future__ import annotations

import sys
import time
from typing import Any, List

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


def main(argv: List[str]) -> int:
    corpus, out, threads, dtype = argv[0], argv[1], int(argv[2]), argv[3]
    t0 = time.perf_counter()
    with open(corpus, encoding="utf-8") as f:
        texts = [line.rstrip("\n") for line in f]
    np.save(out, sentence_transformers_encode(texts, threads, dtype))
    print(f"{time.perf_counter() - t0:.3f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
