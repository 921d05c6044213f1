"""Embedding a corpus with Dask: one shard per ``dask.bag`` partition, written
by the worker that computed it, then joined in input order.

Each worker process loads the model once (a per-process cache) and embeds
its partition with the same batch-invariant encoder as the single-process
path, so the joined result is bitwise the same.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["dask_embed"]

_ENCODERS: Dict[Tuple[str, int], Any] = {}


def _worker_encoder(model_dir: Optional[str], max_length: Optional[int]) -> Any:
    """The encoder of this process, loaded on first use."""
    from .encoder import load_encoder, minilm_path

    key = (model_dir or "", max_length or 0)
    if key not in _ENCODERS:
        _ENCODERS[key] = load_encoder(model_dir or minilm_path(), max_length=max_length)
    return _ENCODERS[key]


def _embed_partition(lines: Sequence[str], index: int, shard_dir: str,
                     model_dir: Optional[str], max_length: Optional[int],
                     batch_tokens: int, threads: int) -> Tuple[int, str, int]:
    """Embed one partition into ``shard_dir/part-<index>.npy``."""
    import numpy as np

    enc = _worker_encoder(model_dir, max_length)
    texts = [s.rstrip("\n").rstrip("\r") for s in lines]
    emb = enc.encode(texts, batch_tokens=batch_tokens, threads=threads)
    path = os.path.join(shard_dir, f"part-{index:06d}.npy")
    np.save(path, emb)
    return index, path, len(texts)


def dask_embed(bag_or_paths: Any, output: str, *, model_dir: Optional[str] = None,
               client: Any = None, n_workers: int = 2, threads_per_worker: int = 1,
               batch_tokens: int = 8192, max_length: Optional[int] = None,
               shard_dir: Optional[str] = None, keep_shards: bool = False) -> Any:
    """Embed a corpus on a Dask cluster into ``output`` (.npy, float32,
    (n, dim)), rows in input order.

    Parameters
    ----------
    bag_or_paths : dask.bag.Bag of str, or a path / glob / list of paths
        Text files are read with ``dask.bag.read_text`` (one line each).
    output : str
        The joined ``.npy``.
    model_dir : str or None
        A sentence-transformers BERT folder; default all-MiniLM-L6-v2.
    client : distributed.Client or None
        Default: a ``LocalCluster`` of ``n_workers`` processes bound to
        127.0.0.1, closed afterwards.
    threads_per_worker, batch_tokens, max_length
        Passed to each worker's encoder.
    shard_dir : str or None
        Where partitions write their shards (default ``output + ".shards"``);
        removed after the join unless ``keep_shards``.

    Returns
    -------
    numpy.ndarray
        The joined embeddings (memory-mapped from ``output``).
    """
    import numpy as np

    dask: Any = importlib.import_module("dask")
    db: Any = importlib.import_module("dask.bag")

    bag = bag_or_paths if isinstance(bag_or_paths, db.Bag) else db.read_text(bag_or_paths)
    shard_dir = shard_dir or output + ".shards"
    os.makedirs(shard_dir, exist_ok=True)
    parts = bag.to_delayed()
    tasks = [dask.delayed(_embed_partition)(p, i, shard_dir, model_dir, max_length,
                                            batch_tokens, threads_per_worker)
             for i, p in enumerate(parts)]
    own = client is None
    if own:
        client = _local_client(n_workers)
    try:
        results: List[Tuple[int, str, int]] = list(client.compute(tasks, sync=True))
    finally:
        if own:
            client.close()
            client.cluster.close()
    return _join(sorted(results), output, shard_dir, keep_shards, np)


def _local_client(n_workers: int) -> Any:
    dist: Any = importlib.import_module("distributed")
    cluster = dist.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address=None)
    return dist.Client(cluster)


def _join(results: List[Tuple[int, str, int]], output: str, shard_dir: str,
          keep_shards: bool, np: Any) -> Any:
    """Concatenate the shards in partition order into ``output``."""
    n = sum(r[2] for r in results)
    first = np.load(results[0][1], mmap_mode="r") if results else None
    dim = first.shape[1] if first is not None else 0
    if n == 0:
        np.save(output, np.zeros((0, dim), dtype=np.float32))
    else:
        out = np.lib.format.open_memmap(output, mode="w+", dtype=np.float32, shape=(n, dim))
        row = 0
        for _, path, count in results:
            out[row:row + count] = np.load(path, mmap_mode="r")
            row += count
        out.flush()
        del out
    if not keep_shards:
        for _, path, _ in results:
            os.remove(path)
        try:
            os.rmdir(shard_dir)
        except OSError:
            pass
    return np.load(output, mmap_mode="r")


