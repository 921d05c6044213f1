"""Pictures of attention weights.

matplotlib is an optional dependency (``pip install "fastattn[plot]"``): it
is imported inside the functions here, so ``import fastattn`` and
``import fastattn.plot`` never load it.
"""
from __future__ import annotations

import functools
import math
import numbers
import unicodedata
import warnings
from typing import Any, FrozenSet, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["attention_heatmap"]

# Size of one heatmap cell and room for the token labels, in inches.  A panel
# grows with the tokens at _CELL_IN a cell up to its largest side, then its
# cells shrink (and the label font with them) down to _MIN_CELL_IN, which
# still fits a 6.5 pt label: 64 tokens on _MAX_PANEL_IN.  With more, the panel
# keeps its largest side and only every k-th token is labelled.  The largest
# side is _MAX_PANEL_IN, less in a grid of more than two panels a row or
# column (their sides add up to at most _MAX_GRID_IN), so that a figure is
# at most about 25 inches (3800 pixels at 150 dpi) a side.
_CELL_IN = 0.42
_MAX_PANEL_IN = 8.0
_MAX_GRID_IN = 20.0
_MIN_CELL_IN = 0.125
_MIN_PANEL_IN = 2.0
_LABEL_IN = 0.09          # per character of the longest label, at 9 pt
_MAX_LABEL_CHARS = 20     # longer labels are cut, with an ellipsis
_MAX_COLS = 4
# the background that masked cells show
_HATCH = dict(facecolor="#f4f4f4", edgecolor="#b0b0b0", hatch="////")

# (title or None, weights (Nq, Nk), masked cells (Nq, Nk)) of one heatmap
Panel = Tuple[Optional[str], NDArray[np.float64], NDArray[Any]]


class _Layout(NamedTuple):
    """Cell size (inches), label font size (points) and label step (every
    ``step``-th token labelled) for panels of ``n`` tokens a side."""

    cell_in: float
    fontsize: float
    step: int


def _layout(n: int, panel_in: float = _MAX_PANEL_IN) -> _Layout:
    """The layout of panels of ``n`` tokens a side, at most ``panel_in``
    inches."""
    step = max(1, math.ceil(n * _MIN_CELL_IN / panel_in))
    cell = min(_CELL_IN, panel_in / max(n, 1))
    # a label's line fills about 70% of the space between labelled rows
    fontsize = min(9.0, max(6.5, round(cell * step * 72 * 0.7, 1)))
    return _Layout(cell, fontsize, step)


def _short(label: str) -> str:
    return label if len(label) <= _MAX_LABEL_CHARS else label[:_MAX_LABEL_CHARS - 1] + "\u2026"


def _label_width(labels: Sequence[str]) -> int:
    """Width of the longest label in narrow characters (a wide East Asian
    character counts as two)."""
    return max((sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s)
                for s in labels), default=1)


@functools.lru_cache(maxsize=None)
def _charmap(path: str) -> FrozenSet[int]:
    """The code points the font file at ``path`` has glyphs for."""
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


def _label_fonts(matplotlib: Any, labels: Sequence[str]) -> Optional[List[str]]:
    """Font families for the labels: None when the default font has all
    their characters, else the default families followed by the installed
    font that has the most of the missing ones (e.g. Noto Sans CJK for
    Chinese, Japanese or Korean).  Warns once, naming the characters no
    installed font has (matplotlib draws them as boxes)."""
    from matplotlib import font_manager

    chars = {ord(c) for s in labels for c in s if not c.isspace()}
    default = font_manager.findfont(font_manager.FontProperties())
    missing = chars - _charmap(default)
    if not missing:
        return None
    best: Optional[str] = None
    left = missing
    # sans-serif faces first; the Last Resort font's glyphs are boxes
    for entry in sorted(font_manager.fontManager.ttflist,
                        key=lambda e: ("Sans" not in e.name, e.name)):
        if entry.fname == default or entry.name.startswith("Last Resort"):
            continue
        still = missing - _charmap(entry.fname)
        if len(still) < len(left):
            best, left = entry.name, still
            if not left:
                break
    if left:
        shown = "".join(chr(c) for c in sorted(left)[:12]) + (" ..." if len(left) > 12 else "")
        warnings.warn(f"no installed font has glyphs for {len(left)} characters of the labels "
                      f"({shown}): they are drawn as boxes; install a font that has them "
                      "(e.g. Noto Sans CJK for Chinese, Japanese and Korean)",
                      UserWarning, stacklevel=3)
    return None if best is None else [*matplotlib.rcParams["font.family"], best]


def _grid_columns(n: int) -> int:
    """Columns of the panel grid: a row for up to 3 panels, then as square
    as possible with at most 4 columns (4 -> 2x2, 6 -> 3x2, 8 -> 4x2)."""
    return {4: 2, 5: 3, 6: 3, 9: 3}.get(n, min(n, _MAX_COLS))


def _import_matplotlib() -> Tuple[Any, Any, Any]:
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as e:
        raise ImportError(
            "fastattn.plot needs matplotlib, which is not installed; install it with "
            'pip install "fastattn[plot]" (or pip install matplotlib)') from e
    return matplotlib, Figure, Patch


def _labels(name: str, tokens: object, n: int, what: str) -> List[str]:
    if isinstance(tokens, str):
        raise TypeError(f"{name} must be a sequence of token strings, not one str "
                        f"(split it first, e.g. {name}.split())")
    try:
        labels = [str(t) for t in tokens]  # type: ignore[attr-defined]
    except TypeError:
        raise TypeError(f"{name} must be a sequence of token strings, got "
                        f"{type(tokens).__name__}") from None
    if len(labels) != n:
        raise ValueError(f"{name} has {len(labels)} tokens but the weights have {n} {what}")
    return labels


def _heads(weights: ArrayLike) -> NDArray[np.float64]:
    """The weights as float64 (H, Nq, Nk)."""
    w = np.asarray(weights)
    if w.dtype == np.bool_ or w.dtype.kind not in "fiu":
        raise TypeError(f"weights must be a real array, got dtype {w.dtype}")
    if w.ndim == 4:
        if w.shape[0] != 1:
            raise ValueError(f"weights has shape {w.shape}; a 4-D array must be one batch "
                             "row (1, H, Nq, Nk): pass weights[b] to pick one")
        w = w[0]
    if w.ndim == 2:
        w = w[None]
    if w.ndim != 3:
        raise ValueError(f"weights has shape {w.shape}; expected (Nq, Nk), (H, Nq, Nk) "
                         "or (1, H, Nq, Nk)")
    return w.astype(np.float64)


def _hidden(mask: Any, w: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Which cells of w to draw as masked, from the ``mask`` argument."""
    if isinstance(mask, str):
        if mask != "zeros":
            raise ValueError(f"mask must be 'zeros', None or a bool array, got {mask!r}")
        zeros: NDArray[np.bool_] = w == 0
        return zeros
    if mask is None:
        return np.zeros(w.shape, dtype=bool)
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise TypeError(f"mask has dtype {m.dtype}; expected bool (True = may attend)")
    if m.ndim == 4 and m.shape[0] == 1:
        m = m[0]
    try:
        hidden: NDArray[np.bool_] = ~np.broadcast_to(m, w.shape)
        return hidden
    except ValueError:
        raise ValueError(f"mask has shape {m.shape}, which does not broadcast to the "
                         f"weights' (H, Nq, Nk) = {w.shape}") from None


def _panels(w: NDArray[np.float64], hidden: NDArray[np.bool_], head: object) -> List[Panel]:
    """The heatmaps that ``head`` asks for."""
    H = w.shape[0]
    if head is None:
        if H == 1:
            return [(None, w[0], hidden[0])]
        return [(f"head {h}", w[h], hidden[h]) for h in range(H)]
    if isinstance(head, str):
        if head != "mean":
            raise ValueError(f"head must be None, an int or 'mean', got {head!r}")
        label = f"mean of {H} heads" if H > 1 else None
        return [(label, w.mean(axis=0), np.logical_and.reduce(hidden, axis=0))]
    if isinstance(head, numbers.Integral) and not isinstance(head, (bool, np.bool_)):  # type: ignore[unreachable]
        if not -H <= head < H:
            raise ValueError(f"head is {head} but the weights have {H} heads")
        h = int(head) % H
        return [(f"head {h}", w[h], hidden[h])]
    raise TypeError(f"head must be None, an int or 'mean', got {type(head).__name__}")


def _grid(n: int) -> Tuple[int, int]:
    """(rows, columns) of the grid of n panels."""
    ncols = _grid_columns(n)
    return math.ceil(n / ncols), ncols


def _new_figure(Figure: Any, n: int, Nq: int, Nk: int, layout: _Layout, label_in: float,
                title: Optional[str]) -> Tuple[Any, List[Any]]:
    """A figure sized for n panels of Nq x Nk cells, and its n Axes."""
    nrows, ncols = _grid(n)
    panel_w = max(_MIN_PANEL_IN, layout.cell_in * Nk)
    panel_h = max(_MIN_PANEL_IN, layout.cell_in * Nq)
    fig = Figure(figsize=(ncols * (panel_w + label_in + 0.5) + 1.2,
                          nrows * (panel_h + label_in + 0.6) + (0.9 if title else 0.5)),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for extra in axes[n:]:
        extra.set_visible(False)
    return fig, list(axes[:n])


def _draw_panel(matplotlib: Any, a: Any, panel: Panel, cm: Any, col_labels: List[str],
                row_labels: List[str], layout: _Layout, fonts: Optional[List[str]]) -> Any:
    """One heatmap into the Axes a; returns its image."""
    label, data, empty = panel
    Nq, Nk = data.shape
    step = layout.step
    text = {"fontsize": layout.fontsize, **({"fontfamily": fonts} if fonts else {})}
    # Hatching behind the image shows through the transparent masked cells.
    a.set_facecolor("white")
    a.add_patch(matplotlib.patches.Rectangle((-0.5, -0.5), Nk, Nq, linewidth=0, zorder=0,
                                             **_HATCH))
    image = a.imshow(np.ma.masked_array(data, mask=empty), cmap=cm, vmin=0.0, vmax=1.0,
                     interpolation="nearest", aspect="equal", zorder=1)
    a.set_xticks(np.arange(0, Nk, step), labels=col_labels[::step], rotation=60, ha="right",
                 rotation_mode="anchor", **text)
    a.set_yticks(np.arange(0, Nq, step), labels=row_labels[::step], **text)
    a.set_xlim(-0.5, Nk - 0.5)
    a.set_ylim(Nq - 0.5, -0.5)
    a.set_xlabel("key" if step == 1 else f"key (every {step}th labelled)")
    a.set_ylabel("query" if step == 1 else f"query (every {step}th labelled)")
    a.tick_params(length=0)
    if label:
        a.set_title(label, fontsize=10)
    return image


def _legend_and_title(fig: Any, ax: Any, Patch: Any, any_masked: bool,
                      title: Optional[str]) -> None:
    """The masked-cell legend and the title, on the figure (ax None) or on ax."""
    if ax is None:
        if any_masked:
            fig.legend(handles=[Patch(label="masked (weight 0, key hidden)", **_HATCH)],
                       loc="outside lower center", frameon=False, fontsize=9)
        if title:
            fig.suptitle(title, wrap=True)
        return
    if any_masked:
        ax.legend(handles=[Patch(label="masked", **_HATCH)], loc="lower right",
                  bbox_to_anchor=(1.0, 1.0), borderaxespad=0.2, frameon=False, fontsize=8)
    if title:
        ax.set_title(title, loc="left")


def attention_heatmap(weights: ArrayLike, tokens: Sequence[str],
                      key_tokens: Optional[Sequence[str]] = None, *, head: Any = None,
                      mask: Any = "zeros", ax: Any = None, title: Optional[str] = None,
                      cmap: Any = "viridis") -> Any:
    """Draw attention weights as heatmaps: query tokens on the rows, key
    tokens on the columns, one colour scale from 0 to 1 with a colorbar.

    Parameters
    ----------
    weights : array, shape (Nq, Nk), (H, Nq, Nk) or (1, H, Nq, Nk)
        Attention weights (rows summing to 1), e.g. from
        ``fastattn.attention(..., return_weights=True)``,
        ``fastattn.attention_weights`` or
        ``MultiHeadAttention(..., need_weights=True)`` (take one batch
        row, ``w[b]``).
    tokens : sequence of str, length Nq
        Labels of the queries (rows).
    key_tokens : sequence of str, length Nk, or None
        Labels of the keys (columns); default ``tokens`` (self-attention).
    head : None, int or "mean"
        None: one panel per head, in a grid of up to four columns; an int:
        only that head (negative counts from the end); ``"mean"``: the
        average over the heads in one panel.
    mask : "zeros", None or bool array broadcastable to the weights
        Which cells to draw as masked: empty, showing a hatched
        background instead of a colour, so that a hidden key is not
        mistaken for a key that merely gets little weight.  ``"zeros"``
        (default): cells whose weight is exactly 0.  fastattn gives hidden
        keys (masked, causal, padding) weight exactly 0, while a visible
        key's float32 weight underflows to 0 only when its score is about
        100 below the row's maximum, where it takes no part in the result
        either.  A bool array uses fastattn's polarity: True = may attend,
        False = drawn empty.  None: every cell is coloured.  With
        ``head="mean"`` a cell is empty only if it is masked in every head.
    ax : matplotlib Axes or None
        Draw into this Axes (one panel only: 2-D weights, or ``head`` an
        int or ``"mean"``), with a colorbar beside it.  Default: a new
        figure.
    title : str or None
        Title of the figure (or of ``ax``); panels are titled by head.
    cmap : str or matplotlib Colormap
        Colormap of the weights (default ``"viridis"``).

    Returns
    -------
    matplotlib.figure.Figure, or the Axes when ``ax`` was given.  A new
    figure is not registered with pyplot (no window opens, nothing to
    close): save it with ``fig.savefig("attention.png")``; Jupyter displays
    it when it is a cell's value.

    A new figure grows with the tokens up to 8 inches a panel side, the
    labels shrinking to 6.5 pt; past 64 tokens only every k-th token is
    labelled and the figure keeps that size.  Labels longer than 20
    characters are cut.  Labels the default font lacks glyphs for (Chinese,
    Japanese, Korean, ...) are drawn with an installed font that has them;
    where none does, one warning names the characters.

    Raises ``ImportError`` (with the install command) when matplotlib is
    missing, ``TypeError``/``ValueError`` for arguments of the wrong type
    or shape.
    """
    w = _heads(weights)
    H, Nq, Nk = w.shape
    row_labels = _labels("tokens", tokens, Nq, "queries (rows)")
    if key_tokens is None:
        if Nk != Nq:
            raise ValueError(f"key_tokens is needed: the weights have {Nq} queries but {Nk} "
                             "keys, so tokens cannot label both")
        col_labels = row_labels
    else:
        col_labels = _labels("key_tokens", key_tokens, Nk, "keys (columns)")
    panels = _panels(w, _hidden(mask, w), head)
    if ax is not None and len(panels) > 1:
        raise ValueError(f"ax holds one panel but the weights have {H} heads; choose one "
                         "with head=INT or head='mean'")

    matplotlib, Figure, Patch = _import_matplotlib()
    cm = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
    cm = cm.with_extremes(bad=(0.0, 0.0, 0.0, 0.0))   # masked: transparent over hatching
    row_labels, col_labels = [_short(t) for t in row_labels], [_short(t) for t in col_labels]
    fonts = _label_fonts(matplotlib, row_labels + col_labels)
    layout = _layout(max(Nq, Nk), min(_MAX_PANEL_IN, _MAX_GRID_IN / max(_grid(len(panels))))
                     if ax is None else _MAX_PANEL_IN)
    if ax is None:
        label_in = (_LABEL_IN * layout.fontsize / 9.0 *
                    _label_width(row_labels[::layout.step] + col_labels[::layout.step]))
        fig, axes = _new_figure(Figure, len(panels), Nq, Nk, layout, label_in, title)
    else:
        fig, axes = ax.figure, [ax]
    image = None
    for a, panel in zip(axes, panels):
        image = _draw_panel(matplotlib, a, panel, cm, col_labels, row_labels, layout, fonts)
    cbar = fig.colorbar(image, ax=axes, shrink=0.9 if len(axes) > 1 else 1.0,
                        fraction=0.05 if len(axes) > 1 else 0.08, pad=0.02)
    cbar.set_label("attention weight")
    _legend_and_title(fig, ax, Patch, any(empty.any() for _, _, empty in panels), title)
    return fig if ax is None else ax
