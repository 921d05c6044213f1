"""Embedding a corpus with Dask: one shard per partition, written by the
worker that computed it, then joined in input order.

Text files are read as bytes (``dask.bytes.read_bytes``, blocks cut at
``\\n``) and split and decoded by the same helpers as ``fastattn embed``
(:func:`~fastattn.models.embed.split_lines`,
:func:`~fastattn.models.embed.decode_lines`), and the output follows the
command's file rules (:func:`~fastattn.models.embed.check_output`,
:class:`~fastattn.models.embed.NpyWriter`), so the two give the same
``.npy``, byte for byte.

Each worker process loads the model once (a per-process cache) and embeds
its partition with the same batch-invariant encoder as the single-process
path, so the joined result is bitwise the same.
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from .embed import (EmbedError, NpyWriter, check_output, decode_lines, replaced_message,
                    split_lines, truncated_message)

__all__ = ["dask_embed"]

_ENCODERS: Dict[Tuple[str, int, str], Any] = {}


@dataclass
class _Part:
    """What one partition did."""

    index: int
    path: str          # its shard
    rows: int
    dim: int
    truncated: int
    max_length: int
    replaced: int      # lines with bytes that were not UTF-8
    first_replaced: int   # 1-based within the partition, 0 when none


def _worker_encoder(model_dir: Optional[str], max_length: Optional[int],
                    precision: str = "float32") -> Any:
    """The encoder of this process, loaded on first use."""
    from .encoder import load_encoder, minilm_path

    key = (model_dir or "", max_length or 0, precision)
    if key not in _ENCODERS:
        _ENCODERS[key] = load_encoder(model_dir or minilm_path(), max_length=max_length,
                                      precision=precision)
    return _ENCODERS[key]


def _shard_path(shard_dir: str, index: int) -> str:
    return os.path.join(shard_dir, f"part-{index:06d}.npy")


def _embed_texts(texts: List[str], index: int, shard_dir: str, model_dir: Optional[str],
                 max_length: Optional[int], batch_tokens: int, threads: int,
                 precision: str, replaced: Tuple[int, int] = (0, 0)) -> _Part:
    """Embed one partition's texts into its shard."""
    enc = _worker_encoder(model_dir, max_length, precision)
    tok = enc.tokenize(texts)
    emb = enc.encode_ids(tok.ids, batch_tokens=batch_tokens, threads=threads)
    path = _shard_path(shard_dir, index)
    with NpyWriter(path, len(texts), enc.dim) as w:
        w.write(emb)
        w.commit(force=True)
    return _Part(index, path, len(texts), enc.dim, int(tok.truncated.sum()), enc.max_length,
                 *replaced)


def _embed_block(data: bytes, index: int, shard_dir: str, model_dir: Optional[str],
                 max_length: Optional[int], batch_tokens: int, threads: int,
                 precision: str = "float32") -> _Part:
    """A block of a text file (whole lines) into its shard."""
    texts, bad, first_bad = decode_lines(split_lines(data))
    return _embed_texts(texts, index, shard_dir, model_dir, max_length, batch_tokens,
                        threads, precision, (bad, first_bad))


def _embed_strings(lines: Sequence[Any], index: int, shard_dir: str,
                   model_dir: Optional[str], max_length: Optional[int], batch_tokens: int,
                   threads: int, precision: str = "float32") -> _Part:
    """A partition of a Bag of str: one trailing ``\\n`` (and a ``\\r``
    before it) removed from each element, nothing else."""
    texts = []
    for s in lines:
        if not isinstance(s, str):
            raise TypeError(f"bag_or_paths: a Bag of str was expected, got an element of "
                            f"type {type(s).__name__}")
        if s.endswith("\n"):
            s = s[:-1]
        if s.endswith("\r"):
            s = s[:-1]
        texts.append(s)
    return _embed_texts(texts, index, shard_dir, model_dir, max_length, batch_tokens, threads,
                        precision)


def _local_inputs(paths: Union[str, "os.PathLike[str]", Sequence[Any]]) -> List[str]:
    """The files of a path, a glob or a list of them (globs in sorted
    order); EmbedError, worded as the command's, for one that cannot be
    read.  URLs (``scheme://``) are left to Dask's file systems."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise ValueError("bag_or_paths: no input files given")
    files: List[str] = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"bag_or_paths: expected a dask.bag.Bag, a path, a glob or a "
                            f"list of paths, got {type(item).__name__}")
        p = os.fspath(item)
        if "://" in p:
            files.append(p)
            continue
        found = sorted(glob.glob(p)) if glob.has_magic(p) else [p]
        if not found:
            raise EmbedError(f"cannot read {p}: no file matches")
        for path in found:
            try:
                open(path, "rb").close()
            except OSError as e:
                raise EmbedError(f"cannot read {path}: {e.strerror or e}") from None
            if not os.path.isfile(path):
                raise EmbedError(f"cannot read {path}: not a regular file")
            files.append(path)
    return files


def _model_dim(model_dir: Optional[str]) -> int:
    """The embedding width, from the model folder's config.json."""
    from .encoder import minilm_path

    folder = model_dir or str(minilm_path())
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        return int(json.load(f)["hidden_size"])


def dask_embed(bag_or_paths: Any, output: str, *, model_dir: Optional[str] = None,
               client: Any = None, n_workers: int = 2, threads_per_worker: int = 1,
               batch_tokens: int = 8192, max_length: Optional[int] = None,
               blocksize: Union[int, str, None] = "16 MiB", shard_dir: Optional[str] = None,
               keep_shards: bool = False, force: bool = False,
               precision: str = "float32") -> Any:
    """Embed a corpus on a Dask cluster into ``output`` (.npy, float32,
    (n, dim)), rows in input order.

    Text files give the same rows as ``fastattn embed`` on their
    concatenation, and the same file rules apply: the output is written
    beside itself and renamed into place once complete; an output in a
    missing directory, one that is an input, or an existing one without
    ``force`` is refused (EmbedError) before anything runs.

    Parameters
    ----------
    bag_or_paths : path, glob or list of them, or a dask.bag.Bag of str
        Text files are read as bytes in blocks of about ``blocksize``, cut at
        ``\\n``, with the command's line rules: lines end at ``\\n`` only, a
        ``\\r`` before it is dropped, bytes that are not UTF-8 become U+FFFD
        (a warning gives the count and the first such line).  A Bag is taken
        as one sentence per element (a trailing ``\\n``, and a ``\\r`` before
        it, removed); note that ``dask.bag.read_text`` also splits at a lone
        ``\\r``, unlike the command, so pass the paths to get its lines.
    output : str
        The joined ``.npy``.
    model_dir : str or None
        A sentence-transformers BERT folder; default all-MiniLM-L6-v2.
    client : distributed.Client or None
        Default: a ``LocalCluster`` of ``n_workers`` processes bound to
        127.0.0.1, closed afterwards.
    threads_per_worker, batch_tokens, max_length
        Passed to each worker's encoder.  Lines longer than the maximum are
        cut, with a warning.
    blocksize : int, str or None
        Bytes per partition of the text files (None: one per file).
    shard_dir : str or None
        Where partitions write their shards, on a file system the workers
        and this process share (default: the output's folder).  Each run
        writes into a folder of its own there (``.<output>.shards-*``),
        removed afterwards, also after a failure, with ``shard_dir`` itself
        when it was made here.  With ``keep_shards`` the shards are written
        to ``shard_dir`` itself (default ``output + ".shards"``) and kept.
    force : bool
        Replace an existing ``output`` (once the new one is complete).
    precision : {"float32", "bfloat16"}
        The arithmetic of each worker's linear products (as ``fastattn
        embed --precision``); the rows are the command's in either.

    Returns
    -------
    numpy.ndarray
        The joined embeddings (memory-mapped from ``output``).
    """
    import numpy as np

    from .bert import PRECISIONS

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    dask: Any = importlib.import_module("dask")
    db: Any = importlib.import_module("dask.bag")

    parts: List[Tuple[Callable[..., _Part], Any]]   # (the task, its partition)
    if isinstance(bag_or_paths, db.Bag):
        inputs: List[str] = []
        parts = [(_embed_strings, p) for p in bag_or_paths.to_delayed()]
        files: List[str] = []
    else:
        inputs = _local_inputs(bag_or_paths)
        read_bytes: Any = importlib.import_module("dask.bytes").read_bytes
        _, blocks, sources = read_bytes(inputs, delimiter=b"\n", blocksize=blocksize,
                                        sample=False, compression=None, include_path=True)
        parts = [(_embed_block, b) for file_blocks in blocks for b in file_blocks]
        # the file of each partition, for the warning's line number
        files = [src for src, file_blocks in zip(sources, blocks) for _ in file_blocks]
    target = check_output(output, [p for p in inputs if "://" not in p], force)
    run_dir, made = _shard_folder(output, shard_dir, keep_shards)
    try:
        tasks = [dask.delayed(fn)(p, i, run_dir, model_dir, max_length, batch_tokens,
                                  threads_per_worker, precision)
                 for i, (fn, p) in enumerate(parts)]
        results = sorted(_compute(tasks, client, n_workers), key=lambda r: r.index)
        dim = results[0].dim if results else _model_dim(model_dir)
        _join(results, target, output, dim, force, np)
    finally:
        if not keep_shards:
            _remove_shards(run_dir, made)
    _warn(results, files, max_length is not None)
    return np.load(target, mmap_mode="r")


def _compute(tasks: List[Any], client: Any, n_workers: int) -> List[_Part]:
    """Run the tasks on ``client`` (or a local cluster made and closed
    here); on failure, the remaining ones are cancelled."""
    own = client is None
    if own:
        client = _local_client(n_workers)
    try:
        futures = client.compute(tasks)
        try:
            return list(client.gather(futures))
        except BaseException:
            client.cancel(futures)
            raise
    finally:
        if own:
            client.close()
            client.cluster.close()


def _local_client(n_workers: int) -> Any:
    dist: Any = importlib.import_module("distributed")
    cluster = dist.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                host="127.0.0.1", dashboard_address=None)
    return dist.Client(cluster)


def _join(results: List[_Part], target: str, shown: str, dim: int, force: bool,
          np: Any) -> None:
    """Concatenate the shards in partition order into ``target``."""
    n = sum(r.rows for r in results)
    with NpyWriter(target, n, dim, shown=shown) as out:
        for r in results:
            out.write(np.load(r.path, mmap_mode="r"))
        out.commit(force)


def _shard_folder(output: str, shard_dir: Optional[str], keep: bool) -> Tuple[str, List[str]]:
    """The folder this run's shards go to, and the folders made for it
    (innermost first).  Unless the shards are kept, it is a folder of this
    run's own (``.<output>.shards-*`` in ``shard_dir``, default the output's
    folder), so that two runs never share shards and a task that finishes
    after a failure has nowhere left to write."""
    made: List[str] = []
    base = shard_dir if shard_dir else (output + ".shards" if keep else
                                        os.path.dirname(os.path.abspath(output)))
    if not os.path.isdir(base):
        os.makedirs(base)
        made.append(base)
    if keep:
        return base, made
    run = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.shards-", dir=base)
    return run, [run] + made


def _remove_shards(run_dir: str, made: List[str]) -> None:
    """Remove this run's shards and the folders made for them.

    After a failure, cancelled tasks that were already running go on, and
    one may create its shard while the folder is being emptied, so the
    removal is repeated until the folder is gone: once it is, a late task's
    write fails on the missing folder and leaves nothing."""
    for _ in range(200):
        shutil.rmtree(run_dir, ignore_errors=True)
        if not os.path.lexists(run_dir):
            break
        time.sleep(0.01)
    for folder in made[1:]:
        try:
            os.rmdir(folder)
        except OSError:
            pass


def _warn(results: List[_Part], files: List[str], max_length_given: bool) -> None:
    """The command's warnings: cut lines, and lines that were not UTF-8
    (the first named by file and line)."""
    truncated = sum(r.truncated for r in results)
    if truncated:
        warnings.warn(truncated_message(truncated, results[0].max_length,
                                        "max_length" if max_length_given else None),
                      stacklevel=3)
    replaced = sum(r.replaced for r in results)
    if not replaced:
        return
    seen: Dict[str, int] = {}   # lines of each file before the partition
    for r in results:
        name = files[r.index]
        if r.first_replaced:
            first = f"line {seen.get(name, 0) + r.first_replaced} of {name}"
            break
        seen[name] = seen.get(name, 0) + r.rows
    warnings.warn(replaced_message(replaced, first), stacklevel=3)
