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
import secrets
import warnings
import zlib
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Union

import numpy as np

from .layer import MultiHeadAttention

__all__ = ["DEFAULT_TEXT", "MAX_WORDS", "MAX_HEADS", "MAX_DIM", "DemoResult", "tokenize",
           "hashed_embedding", "positional_encoding", "run_demo", "render", "main"]

DEFAULT_TEXT = "Life is short, eat dessert first"

# What main() (``fastattn demo``) accepts: a 64-token picture still has
# readable labels (see fastattn.plot), and its weights stay small.
MAX_WORDS = 64
MAX_HEADS = 16
MAX_DIM = 1024

# Scripts written without spaces between words, one token per character (as
# BERT's tokenizer splits Chinese): kana, CJK ideographs and their extensions.
_CJK = ("\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
        "\uff66-\uff9f\U00020000-\U0003134f")
# a word: letters/digits/underscore, with inner apostrophes ("don't", "it's"),
# or one character of those scripts
_WORD = re.compile(rf"[^\W{_CJK}]+(?:['\u2019][^\W{_CJK}]+)*|[{_CJK}]")


def tokenize(text: str) -> List[str]:
    """One token per word, and one per character of Chinese and Japanese
    (written without spaces); punctuation is dropped.

    >>> tokenize("Life is short, eat dessert first!")
    ['Life', 'is', 'short', 'eat', 'dessert', 'first']
    >>> tokenize("人生苦短")
    ['人', '生', '苦', '短']
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


def _output_path(path: PathLike) -> str:
    """``path`` as the file the image goes to: ``.png`` added when it has no
    extension; ValueError for an extension matplotlib cannot write, an
    OSError with a clear message when the folder is missing or the path is
    a folder."""
    from .plot import _import_matplotlib

    out = os.fspath(path)
    if not isinstance(out, str):
        raise TypeError(f"path must be a str or os.PathLike[str], got {type(out).__name__}")
    if not out:
        raise ValueError("the output path is empty")
    if out.endswith(os.sep) or os.path.isdir(out):
        raise IsADirectoryError(f"cannot write {out}: it names a folder, not a file")
    ext = os.path.splitext(out)[1][1:].lower()
    if not ext:
        out, ext = out + ".png", "png"
    _import_matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if ext not in formats:
        raise ValueError(f"cannot write {out}: unknown image format '.{ext}'; use one of "
                         f"{', '.join('.' + f for f in sorted(formats))} "
                         "(a name without an extension gets .png)")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.exists(folder):
        raise FileNotFoundError(f"cannot write {out}: the folder {folder} does not exist")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"cannot write {out}: {folder} is not a folder")
    if os.path.isdir(out):
        raise IsADirectoryError(f"cannot write {out}: it names a folder, not a file")
    return out


def _save(fig: Any, out: str, dpi: int) -> None:
    """Save ``fig`` to a new file beside ``out``, then rename it to ``out``:
    a failure leaves no partial image, nor a changed old one."""
    folder = os.path.dirname(os.path.abspath(out))
    tmp = os.path.join(folder, f".{secrets.token_hex(6)}.fastattn-demo.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f, warnings.catch_warnings():
                # one warning from fastattn.plot names the characters no
                # font has, instead of one from matplotlib per glyph
                warnings.filterwarnings("ignore", r"Glyph \d+ .*missing from", UserWarning)
                fig.savefig(f, format=os.path.splitext(out)[1][1:].lower(), dpi=dpi)
            os.replace(tmp, out)
        except BaseException:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            raise
    except OSError as e:
        raise type(e)(f"cannot write {out}: {e.strerror or e}") from e
    except RuntimeError as e:   # e.g. a format whose tool is missing (.pgf without TeX)
        raise RuntimeError(f"cannot write {out}: {e}") from e


def render(result: DemoResult, path: PathLike, *, title: Optional[str] = None,
           dpi: int = 150) -> str:
    """Draw ``result.weights`` (one panel per head) with
    :func:`fastattn.plot.attention_heatmap` and save it to ``path``.

    The format follows the extension (PNG for ``.png``; any format
    matplotlib writes); a path without one gets ``.png`` added, and an
    unknown one is a ValueError.  A missing folder is a FileNotFoundError,
    and any OSError names the path.  The image is written to a temporary
    file beside ``path`` and renamed into place.  With a causal result the
    hidden upper triangle is drawn empty.  Returns the path written."""
    from .plot import attention_heatmap

    out = _output_path(path)
    n = len(result.tokens)
    # which keys each query may see: exact, rather than inferred from zeros
    mask = np.tril(np.ones((n, n), dtype=bool)) if result.causal else None
    fig = attention_heatmap(result.weights, result.tokens, mask=mask, title=title)
    _save(fig, out, dpi)
    return out


def main(text: Optional[str] = None, out: PathLike = "attention.png", *, causal: bool = False,
         heads: int = 4, dim: int = 64, seed: int = 0) -> str:
    """``fastattn demo``: tokenize ``text`` (default :data:`DEFAULT_TEXT`),
    run the illustrative layer, write the heatmaps to ``out`` (see
    :func:`render`) and return the path written.

    At most :data:`MAX_WORDS` tokens, :data:`MAX_HEADS` heads and an
    embedding width of :data:`MAX_DIM`; more, a bad output path or a
    negative seed is a ValueError or OSError before anything is computed."""
    tokens = tokenize(DEFAULT_TEXT if text is None else text)
    if not tokens:
        raise ValueError(f"no words in the text {text!r}")
    if len(tokens) > MAX_WORDS:
        raise ValueError(f"the text has {len(tokens)} words; the demo draws at most "
                         f"{MAX_WORDS} (labels would be unreadable): shorten it")
    if heads > MAX_HEADS:
        raise ValueError(f"--heads is {heads}; the demo draws at most {MAX_HEADS}")
    if dim > MAX_DIM:
        raise ValueError(f"--dim is {dim}; the demo allows at most {MAX_DIM}")
    if dim % heads:
        raise ValueError(f"--dim ({dim}) must be divisible by --heads ({heads})")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    path = _output_path(out)
    result = run_demo(tokens, causal=causal, heads=heads, dim=dim, seed=seed)
    kind = "causal self-attention" if causal else "self-attention"
    title = (f"{kind} (random weights)\n"
             f"{heads} head{'s' if heads != 1 else ''}, E={dim}, seed {seed}")
    return render(result, path, title=title)
