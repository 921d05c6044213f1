"""dask_embed on a LocalCluster (127.0.0.1, two worker processes): one shard
per partition, joined in input order, bitwise equal to one process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from support import require
from fastattn.models import dask_embed, load_encoder
from models_support import WORDS, tiny_folder  # noqa: F401  (fixture)


def test_dask_embed_matches_single_process(tiny_folder: Path, tmp_path: Path) -> None:
    require("dask.bag", "dask[bag] (the 'dask' extra) is not installed")
    require("distributed", "distributed (the 'dask' extra) is not installed")
    rng = np.random.default_rng(1)
    lines = [" ".join(rng.choice(WORDS, size=int(n))) for n in rng.integers(0, 30, size=90)]
    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "emb.npy"
    db: Any = require("dask.bag", "dask[bag] is not installed")
    bag = db.read_text(str(src), blocksize=300)
    assert bag.npartitions > 2
    got = dask_embed(bag, str(out), model_dir=str(tiny_folder), n_workers=2)
    ref = load_encoder(tiny_folder).encode(lines, threads=1)
    assert got.shape == ref.shape
    assert np.array_equal(np.asarray(got), ref)
    assert np.array_equal(np.load(out), ref)
    assert not (tmp_path / "emb.npy.shards").exists()
