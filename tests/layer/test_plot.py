"""fastattn.plot.attention_heatmap: rendered with Agg to PNG and read back,
pixels checked against the colour scale, masked cells drawn empty, the
panels and labels, argument errors, and the lazy matplotlib import."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastattn
from fastattn import plot

from support import require


def causal_weights(rng, H, N):
    s = rng.standard_normal((H, N, N)) * 2
    s[:, ~np.tril(np.ones((N, N), dtype=bool))] = -np.inf
    w = np.exp(s - s.max(-1, keepdims=True))
    return w / w.sum(-1, keepdims=True)


TOKENS = ["Life", "is", "short", "eat", "dessert", "first"]


# ---------------------------------------------------------------------------
# no matplotlib needed
# ---------------------------------------------------------------------------

def _run(code):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


def test_import_does_not_load_matplotlib():
    r = _run("""
        import sys, fastattn, fastattn.plot
        from fastattn.plot import attention_heatmap
        assert callable(fastattn.plot.attention_heatmap)
        print("matplotlib" in sys.modules)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_missing_matplotlib_says_how_to_install():
    r = _run("""
        import sys
        sys.modules["matplotlib"] = None          # as if it were not installed
        import numpy as np, fastattn
        try:
            fastattn.plot.attention_heatmap(np.eye(2), ["a", "b"])
        except ImportError as e:
            print(e)
        else:
            print("no error")
    """)
    assert r.returncode == 0, r.stderr
    assert 'pip install "fastattn[plot]"' in r.stdout
    assert "matplotlib" in r.stdout


# ---------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mpl():
    matplotlib = require("matplotlib",
                         reason="matplotlib is optional (pip install \"fastattn[plot]\")")
    matplotlib.use("Agg")
    import matplotlib.image  # noqa: F401
    return matplotlib


def render(mpl, fig, path):
    fig.canvas.draw()                       # final layout, so positions are known
    fig.savefig(path, dpi=fig.dpi)
    return mpl.image.imread(str(path))


def cell_pixel(fig, ax, img, i, j):
    """RGB of the pixel at the centre of cell (query i, key j)."""
    x, y = ax.transData.transform((j, i))
    return img[int(round(img.shape[0] - y)), int(round(x)), :3]


def test_png_is_nontrivial(mpl, rng, tmp_path):
    w = causal_weights(rng, 4, 6)
    fig = plot.attention_heatmap(w, TOKENS, title="four heads")
    img = render(mpl, fig, tmp_path / "heads.png")
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300
    rgb = (img[..., :3] * 255).round().astype(np.uint8).reshape(-1, 3)
    colours = np.unique(rgb, axis=0)
    assert len(colours) > 50, f"only {len(colours)} distinct colours"
    non_white = np.any(rgb < 245, axis=1).mean()
    assert non_white > 0.2, f"only {non_white:.0%} of the image is not white"


def test_colours_follow_fixed_scale_and_masked_cells_are_empty(mpl, rng, tmp_path):
    """Each visible cell has the colormap's colour of its weight on the 0..1
    scale (not rescaled to the data), each masked cell shows the grey
    hatching instead."""
    w = 0.6 * causal_weights(rng, 2, 6)          # max 0.6: an autoscale would differ
    fig = plot.attention_heatmap(w, TOKENS)
    img = render(mpl, fig, tmp_path / "cells.png")
    cmap = mpl.colormaps["viridis"]
    panels = [a for a in fig.axes if a.get_images()]
    assert len(panels) == 2
    for h, ax in enumerate(panels):
        assert ax.get_images()[0].get_clim() == (0.0, 1.0)
        for i in range(6):
            for j in range(6):
                px = cell_pixel(fig, ax, img, i, j)
                if j <= i:
                    expected = np.array(cmap(w[h, i, j])[:3])
                    assert np.abs(px - expected).max() < 0.02, (h, i, j, px, expected)
                else:
                    # hatch background or line: grey, light
                    assert np.ptp(px) < 0.02 and px.min() > 0.6, (h, i, j, px)


def test_mask_options(mpl, rng):
    w = causal_weights(rng, 2, 5)
    masked = lambda fig: [np.ma.getmaskarray(a.get_images()[0].get_array())  # noqa: E731
                          for a in fig.axes if a.get_images()]
    upper = ~np.tril(np.ones((5, 5), dtype=bool))
    for m in masked(plot.attention_heatmap(w, TOKENS[:5])):          # "zeros"
        np.testing.assert_array_equal(m, upper)
    for m in masked(plot.attention_heatmap(w, TOKENS[:5], mask=None)):
        assert not m.any()
    keep = np.ones((2, 5, 5), dtype=bool)
    keep[1, :, 0] = False                       # an explicit mask wins over the zeros
    ms = masked(plot.attention_heatmap(w, TOKENS[:5], mask=keep))
    assert not ms[0].any()
    np.testing.assert_array_equal(ms[1][:, 0], True)
    assert ms[1][:, 1:].sum() == 0
    # mean: empty only where every head is masked
    w2 = w.copy()
    w2[0, 0, 4] = 0.5                           # visible in head 0 only
    (m,) = masked(plot.attention_heatmap(w2, TOKENS[:5], head="mean"))
    expected = upper.copy()
    expected[0, 4] = False
    np.testing.assert_array_equal(m, expected)
    # a legend explains the hatching when something is masked
    assert plot.attention_heatmap(w, TOKENS[:5]).legends
    assert not plot.attention_heatmap(w, TOKENS[:5], mask=None).legends


def test_heads_panels_and_labels(mpl, rng):
    w = causal_weights(rng, 3, 4)
    toks = TOKENS[:4]
    data = lambda fig: [a.get_images()[0].get_array().data  # noqa: E731
                        for a in fig.axes if a.get_images()]
    all_heads = plot.attention_heatmap(w, toks)
    assert len(data(all_heads)) == 3
    titles = [a.get_title() for a in all_heads.axes if a.get_images()]
    assert titles == ["head 0", "head 1", "head 2"]
    np.testing.assert_array_equal(data(plot.attention_heatmap(w, toks, head=1))[0], w[1])
    np.testing.assert_array_equal(data(plot.attention_heatmap(w, toks, head=-1))[0], w[2])
    np.testing.assert_allclose(data(plot.attention_heatmap(w, toks, head="mean"))[0],
                               w.mean(0))
    np.testing.assert_array_equal(data(plot.attention_heatmap(w[None], toks))[1], w[1])
    np.testing.assert_array_equal(data(plot.attention_heatmap(w[0], toks))[0], w[0])

    # queries on rows, keys on columns, with their own labels
    wc = np.full((2, 3), 1 / 3)
    fig = plot.attention_heatmap(wc, ["q1", "q2"], ["k1", "k2", "k3"])
    ax = [a for a in fig.axes if a.get_images()][0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["q1", "q2"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["k1", "k2", "k3"]
    assert ax.get_images()[0].get_array().shape == (2, 3)
    # one colorbar, labelled
    cbars = [a for a in fig.axes if a.get_ylabel() == "attention weight"]
    assert len(cbars) == 1


def test_into_given_axes(mpl, rng, tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    w = causal_weights(rng, 2, 6)
    got = plot.attention_heatmap(w, TOKENS, head=0, ax=ax, title="head 0 of 2")
    assert got is ax
    assert len(fig.axes) == 2                   # the panel and its colorbar
    np.testing.assert_array_equal(ax.get_images()[0].get_array().data, w[0])
    img = render(mpl, fig, tmp_path / "ax.png")
    assert len(np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 20


def test_works_with_fastattn_weights(mpl, rng, tmp_path):
    layer = fastattn.MultiHeadAttention(32, 4, rng=0)
    x = rng.standard_normal((1, 6, 32)).astype(np.float32)
    _, w = layer(x, causal=True, need_weights=True)
    fig = plot.attention_heatmap(w, TOKENS)      # (1, H, N, N) straight from the layer
    masked = [np.ma.getmaskarray(a.get_images()[0].get_array())
              for a in fig.axes if a.get_images()]
    assert len(masked) == 4
    for m in masked:
        np.testing.assert_array_equal(m, ~np.tril(np.ones((6, 6), dtype=bool)))


ERRORS = [
    (dict(weights=np.eye(3), tokens=["a", "b"]), ValueError,
     "tokens has 2 tokens but the weights have 3 queries"),
    (dict(weights=np.eye(3), tokens="abc"), TypeError, "tokens must be a sequence"),
    (dict(weights=np.eye(3), tokens=3), TypeError, "tokens must be a sequence"),
    (dict(weights=np.ones((3, 2)) / 2, tokens=list("abc")), ValueError,
     "key_tokens is needed: the weights have 3 queries but 2 keys"),
    (dict(weights=np.ones((3, 2)) / 2, tokens=list("abc"), key_tokens=["x"]), ValueError,
     "key_tokens has 1 tokens"),
    (dict(weights=np.ones((2, 2, 3, 3)), tokens=list("abc")), ValueError,
     "pass weights\\[b\\]"),
    (dict(weights=np.ones(3), tokens=list("abc")), ValueError, "weights has shape"),
    (dict(weights=np.ones((3, 3), bool), tokens=list("abc")), TypeError, "weights must be"),
    (dict(weights=np.ones((2, 3, 3)), tokens=list("abc"), head=2), ValueError,
     "head is 2 but the weights have 2 heads"),
    (dict(weights=np.ones((2, 3, 3)), tokens=list("abc"), head="max"), ValueError,
     "head must be None, an int or 'mean'"),
    (dict(weights=np.ones((2, 3, 3)), tokens=list("abc"), head=1.0), TypeError,
     "head must be"),
    (dict(weights=np.ones((3, 3)), tokens=list("abc"), mask="auto"), ValueError,
     "mask must be 'zeros', None or a bool array"),
    (dict(weights=np.ones((3, 3)), tokens=list("abc"), mask=np.ones((3, 3))), TypeError,
     "mask has dtype float64"),
    (dict(weights=np.ones((3, 3)), tokens=list("abc"), mask=np.ones((2, 3), bool)),
     ValueError, "mask has shape \\(2, 3\\)"),
]


@pytest.mark.parametrize("kwargs, exc, match", ERRORS)
def test_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        plot.attention_heatmap(**kwargs)


def test_ax_with_several_heads_is_an_error(mpl):
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    with pytest.raises(ValueError, match="choose one with head=INT or head='mean'"):
        plot.attention_heatmap(np.ones((2, 3, 3)) / 3, list("abc"), ax=ax)


# ---------------------------------------------------------------------------
# size, labels and fonts
# ---------------------------------------------------------------------------

def _ticklabels(fig):
    panels = [a for a in fig.axes if a.get_images()]
    return [[t for t in a.get_yticklabels()] for a in panels]


@pytest.mark.parametrize("n, heads", [(6, 4), (64, 4), (64, 16), (200, 4), (1000, 1)])
def test_figure_size_is_bounded_and_labels_readable(mpl, n, heads):
    """A figure grows with the tokens only up to about 25 inches a side
    (a 200-word demo once asked for 25638 x 25623 pixels); every label is
    kept up to 64 tokens a panel of 8 inches, at 6.5 pt or more, and past
    that every k-th one."""
    w = np.full((heads, n, n), 1.0 / n)
    fig = plot.attention_heatmap(w, [f"w{i}" for i in range(n)])
    width, height = fig.get_size_inches()
    assert max(width, height) <= 26, (width, height)
    labels = _ticklabels(fig)
    assert len(labels) == heads
    for panel in labels:
        assert all(t.get_fontsize() >= 6.5 for t in panel)
        if n <= 64 and heads <= 4:
            assert [t.get_text() for t in panel] == [f"w{i}" for i in range(n)]
        else:
            step = int(panel[1].get_text()[1:]) - int(panel[0].get_text()[1:])
            assert step > 1 and len(panel) == len(range(0, n, step))
    if n <= 6:
        assert all(t.get_fontsize() == 9 for t in labels[0])


def test_long_labels_are_cut(mpl):
    word = "pneumonoultramicroscopicsilicovolcanoconiosis" * 20
    fig = plot.attention_heatmap(np.eye(2), [word, "b"])
    text = _ticklabels(fig)[0][0].get_text()
    assert text == word[:19] + "\u2026"
    assert max(fig.get_size_inches()) < 10


def test_labels_use_a_font_that_has_their_glyphs(mpl, monkeypatch):
    """Labels the default font lacks are drawn with an installed font that
    has them (here a stand-in: the charmap of one font pretends to have
    every character), without a warning."""
    import warnings

    from matplotlib import font_manager

    default = font_manager.findfont(font_manager.FontProperties())
    other = next(e for e in font_manager.fontManager.ttflist
                 if e.fname != default and not e.name.startswith("Last Resort"))
    real = plot._charmap

    def charmap(path):
        return frozenset(range(0x3000, 0xA000)) | real(path) if path == other.fname \
            else real(path)

    monkeypatch.setattr(plot, "_charmap", charmap)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plot.attention_heatmap(np.eye(3), ["人生", "苦短", "ok"])
    families = _ticklabels(fig)[0][0].get_fontfamily()
    assert families[-1] == other.name and families[:-1] == mpl.rcParams["font.family"]
    assert plot.attention_heatmap(np.eye(2), ["a", "b"]).axes[0].get_yticklabels()[0] \
        .get_fontfamily() == mpl.rcParams["font.family"]


def test_missing_glyphs_give_one_warning(mpl, monkeypatch):
    """Where no installed font has the characters, one warning names them
    (matplotlib would warn once per glyph when drawing)."""
    import warnings

    from matplotlib import font_manager

    default = font_manager.findfont(font_manager.FontProperties())
    real = plot._charmap
    monkeypatch.setattr(plot, "_charmap", lambda path: real(path) if path == default
                        else frozenset())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot.attention_heatmap(np.eye(3), ["人生", "苦短", "ok"])
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert "4 characters" in message and all(c in message for c in "人生苦短")
