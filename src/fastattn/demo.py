"""Self-attention over a sentence, drawn as one heatmap per head.

This is what ``fastattn demo`` runs.  By default it is an illustration, not a
trained model: each word's embedding is drawn from a random generator seeded
with the CRC-32 of the word (so the same word always gets the same vector,
in every process, unlike Python's salted ``hash``), sinusoidal position
encodings are added, and the layer's weights come from
``MultiHeadAttention(..., rng=seed)``.  The patterns in the picture show how
attention is computed and masked, not what a language model has learned.

A real model plugs in through :func:`run_demo`: ``embed`` takes its
embeddings (a function from token to vector, or an ``(N, E)`` array) and
``layer`` its attention weights, for example
``MultiHeadAttention.from_torch_state_dict(sd, num_heads, prefix=...)``.
"""
import os
import re
import zlib
from typing import Callable, List, NamedTuple, Optional, Sequence, Union

import numpy as np

from .layer import MultiHeadAttention

__all__ = ["DEFAULT_TEXT", "DemoResult", "tokenize", "hashed_embedding",
           "positional_encoding", "run_demo", "render", "main"]

DEFAULT_TEXT = "Life is short, eat dessert first"

# a word: letters/digits/underscore, with inner apostrophes ("don't", "it's")
_WORD = re.compile(r"\w+(?:['\u2019]\w+)*")


def tokenize(text: str) -> List[str]:
    """One token per word; punctuation is dropped.

    >>> tokenize("Life is short, eat dessert first!")
    ['Life', 'is', 'short', 'eat', 'dessert', 'first']
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _WORD.findall(text)


def hashed_embedding(token: str, dim: int, *, seed: int = 0) -> np.ndarray:
    """A deterministic pseudo-random vector for a token: standard normal
    entries (float64, shape ``(dim,)``) from a generator seeded with
    ``(seed, crc32(casefolded token))``.  The same word gets the same vector
    whatever its case, in every run and on every machine."""
    key = zlib.crc32(token.casefold().encode("utf-8"))
    return np.random.default_rng([int(seed), key]).standard_normal(dim)


def positional_encoding(n: int, dim: int) -> np.ndarray:
    """The sinusoidal position encodings of "Attention Is All You Need",
    shape ``(n, dim)``: ``sin(p / 10000^(2i/dim))`` in even columns and
    ``cos`` of the same angle in odd ones."""
    pos = np.arange(n, dtype=np.float64)[:, None]
    freq = 10000.0 ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    pe = np.empty((n, dim), dtype=np.float64)
    pe[:, 0::2] = np.sin(pos * freq)
    pe[:, 1::2] = np.cos(pos * freq[: dim // 2])
    return pe


class DemoResult(NamedTuple):
    """What :func:`run_demo` computed."""

    tokens: List[str]
    embeddings: np.ndarray   # (N, E), the layer's input
    output: np.ndarray       # (N, E), the layer's output
    weights: np.ndarray      # (H, N, N), the attention matrix of each head
    causal: bool


Embed = Union[Callable[[str], Sequence[float]], np.ndarray, None]


def _embeddings(tokens: List[str], embed: Embed, dim: int, seed: int) -> np.ndarray:
    n = len(tokens)
    if embed is None:
        vecs = np.stack([hashed_embedding(t, dim, seed=seed) for t in tokens]) if n else \
            np.zeros((0, dim))
        with_positions: np.ndarray = vecs + positional_encoding(n, dim)
        return with_positions
    if callable(embed):
        rows = [np.asarray(embed(t), dtype=np.float64) for t in tokens]
        for t, r in zip(tokens, rows):
            if r.shape != (dim,):
                raise ValueError(f"embed({t!r}) has shape {r.shape}; expected ({dim},) "
                                 "(the layer's embed_dim)")
        return np.stack(rows) if rows else np.zeros((0, dim))
    arr = np.asarray(embed, dtype=np.float64)
    if arr.shape != (n, dim):
        raise ValueError(f"embed has shape {arr.shape}; expected (len(tokens), embed_dim) = "
                         f"({n}, {dim})")
    return arr


def run_demo(tokens: Sequence[str], *, embed: Embed = None,
             layer: Optional[MultiHeadAttention] = None, causal: bool = False,
             heads: int = 4, dim: int = 64, seed: int = 0) -> DemoResult:
    """Run one self-attention layer over ``tokens`` and keep its weights.

    Parameters
    ----------
    tokens : sequence of str
        The tokens, e.g. ``tokenize(text)``.
    embed : callable, array or None
        The input vectors: a function ``token -> vector`` of length
        ``embed_dim``, or an ``(N, embed_dim)`` array (positions included,
        as the model expects them).  Default: :func:`hashed_embedding` of
        each token plus :func:`positional_encoding`.
    layer : MultiHeadAttention or None
        The attention layer, e.g. loaded from a trained model.  Default:
        ``MultiHeadAttention(dim, heads, rng=seed)`` (random weights).
    causal : bool
        Causal self-attention: each token sees itself and the tokens
        before it (the masked upper triangle gets weight 0).
    heads, dim, seed : int
        Heads and width of the default layer; ``seed`` seeds its weights
        and the default embeddings.

    Returns
    -------
    DemoResult
    """
    tokens = [str(t) for t in tokens]
    if not tokens:
        raise ValueError("tokens is empty: nothing to attend")
    if layer is None:
        layer = MultiHeadAttention(dim, heads, rng=seed)
    elif not isinstance(layer, MultiHeadAttention):
        raise TypeError(f"layer must be a fastattn.MultiHeadAttention, got "
                        f"{type(layer).__name__}")
    x = _embeddings(tokens, embed, layer.embed_dim, seed).astype(layer.dtype)
    out, weights = layer(x, causal=bool(causal), need_weights=True)
    return DemoResult(tokens, x, out, weights, bool(causal))


PathLike = Union[str, "os.PathLike[str]"]


def render(result: DemoResult, path: PathLike, *, title: Optional[str] = None,
           dpi: int = 150) -> str:
    """Draw ``result.weights`` (one panel per head) with
    :func:`fastattn.plot.attention_heatmap` and save it to ``path`` (the
    format follows the extension; PNG for ``.png``).  With a causal result
    the hidden upper triangle is drawn empty.  Returns the path written."""
    from .plot import attention_heatmap

    n = len(result.tokens)
    # which keys each query may see: exact, rather than inferred from zeros
    mask = np.tril(np.ones((n, n), dtype=bool)) if result.causal else None
    fig = attention_heatmap(result.weights, result.tokens, mask=mask, title=title)
    out = os.fspath(path)
    fig.savefig(out, dpi=dpi)
    return out


def main(text: Optional[str] = None, out: PathLike = "attention.png", *, causal: bool = False,
         heads: int = 4, dim: int = 64, seed: int = 0) -> str:
    """``fastattn demo``: tokenize ``text`` (default :data:`DEFAULT_TEXT`),
    run the illustrative layer, write the heatmaps to ``out`` and return
    its path."""
    tokens = tokenize(DEFAULT_TEXT if text is None else text)
    if not tokens:
        raise ValueError(f"no words in the text {text!r}")
    if dim % heads:
        raise ValueError(f"--dim ({dim}) must be divisible by --heads ({heads})")
    result = run_demo(tokens, causal=causal, heads=heads, dim=dim, seed=seed)
    kind = "causal self-attention" if causal else "self-attention"
    title = (f"{kind} (random weights)\n"
             f"{heads} head{'s' if heads != 1 else ''}, E={dim}, seed {seed}")
    return render(result, out, title=title)
