"""fastattn demo: the command writes a valid, deterministic PNG; the demo's
pieces (tokenizer, seeded embeddings, run_demo with plugged-in embeddings
and layers) and its errors."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastattn
from fastattn import demo
from fastattn.cli import main

from support import require

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def mpl():
    matplotlib = require("matplotlib",
                         reason="the demo draws with matplotlib (pip install \"fastattn[plot]\")")
    matplotlib.use("Agg")
    import matplotlib.image  # noqa: F401
    return matplotlib


def read_png(mpl, path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE, f"{path} is not a PNG file"
    return mpl.image.imread(str(path))


# ---------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------

def test_cli_writes_png(mpl, tmp_path, capsys):
    out = tmp_path / "attention.png"
    assert main(["demo", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    img = read_png(mpl, out)
    assert img.shape[0] > 300 and img.shape[1] > 300
    rgb = (img[..., :3] * 255).round().astype(np.uint8).reshape(-1, 3)
    assert len(np.unique(rgb, axis=0)) > 50
    assert np.any(rgb < 245, axis=1).mean() > 0.2


def test_cli_is_deterministic_across_processes(mpl, tmp_path):
    """Two runs in separate interpreters with different hash seeds draw the
    same picture: the embeddings are seeded by CRC-32, not hash()."""
    paths = []
    for hashseed in ("1", "2"):
        path = tmp_path / f"run{hashseed}.png"
        env = dict(os.environ, PYTHONHASHSEED=hashseed, MPLBACKEND="Agg")
        r = subprocess.run([sys.executable, "-m", "fastattn", "demo", "--causal",
                            "--out", str(path)], capture_output=True, text=True, env=env,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f"wrote {path}"
        paths.append(path)
    a, b = (read_png(mpl, p) for p in paths)
    np.testing.assert_array_equal(a, b)


def test_cli_options_change_the_picture(mpl, tmp_path):
    base = tmp_path / "base.png"
    assert main(["demo", "--out", str(base)]) == 0
    variants = {
        "causal": ["--causal"],
        "seed": ["--seed", "1"],
        "text": ["Eat dessert first, life is short"],
    }
    img = read_png(mpl, base)
    for name, args in variants.items():
        path = tmp_path / f"{name}.png"
        assert main(["demo", *args, "--out", str(path)]) == 0
        other = read_png(mpl, path)
        assert other.shape != img.shape or not np.array_equal(other, img), name
    path = tmp_path / "heads.png"
    assert main(["demo", "--heads", "2", "--dim", "16", "--out", str(path)]) == 0
    assert read_png(mpl, path).shape[0] < img.shape[0]      # one row of 2 panels, not 2x2


@pytest.mark.parametrize("args, message", [
    (["demo", "...", "--out", "x.png"], "no words in the text"),
    (["demo", "--heads", "3", "--out", "x.png"], "--dim (64) must be divisible by --heads (3)"),
])
def test_cli_errors(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_cli_rejects_bad_numbers(capsys):
    assert main(["demo", "--heads", "0"]) == 2
    assert "expected a positive integer" in capsys.readouterr().err


def test_cli_default_text_matches_module():
    from fastattn import cli

    assert cli._DEMO_TEXT == demo.DEFAULT_TEXT


# ---------------------------------------------------------------------------
# the pieces
# ---------------------------------------------------------------------------

def test_tokenize():
    assert demo.tokenize(demo.DEFAULT_TEXT) == ["Life", "is", "short", "eat", "dessert",
                                                "first"]
    assert demo.tokenize("Don't panic -- it's fine!") == ["Don't", "panic", "it's", "fine"]
    assert demo.tokenize("  ,;  ") == []
    with pytest.raises(TypeError, match="text must be a str"):
        demo.tokenize(["a"])


def test_hashed_embedding_is_per_word():
    a = demo.hashed_embedding("Dessert", 32)
    np.testing.assert_array_equal(a, demo.hashed_embedding("dessert", 32))
    assert not np.allclose(a, demo.hashed_embedding("desert", 32))
    assert not np.allclose(a, demo.hashed_embedding("dessert", 32, seed=1))
    assert a.shape == (32,) and a.dtype == np.float64


def test_positional_encoding():
    pe = demo.positional_encoding(5, 8)
    assert pe.shape == (5, 8)
    np.testing.assert_array_equal(pe[0, 0::2], 0.0)        # sin(0)
    np.testing.assert_array_equal(pe[0, 1::2], 1.0)        # cos(0)
    np.testing.assert_allclose(pe[3, 0], np.sin(3.0))
    np.testing.assert_allclose(pe[3, 3], np.cos(3.0 * 10000.0 ** (-2 / 8)))


@pytest.mark.parametrize("causal", [False, True])
def test_run_demo_weights(causal):
    toks = demo.tokenize(demo.DEFAULT_TEXT)
    r = demo.run_demo(toks, causal=causal, heads=4, dim=64, seed=0)
    assert r.weights.shape == (4, 6, 6) and r.output.shape == (6, 64)
    np.testing.assert_allclose(r.weights.sum(-1), 1.0, atol=1e-6)
    upper = ~np.tril(np.ones((6, 6), dtype=bool))
    if causal:
        assert np.all(r.weights[:, upper] == 0)
    else:
        assert np.all(r.weights > 0)
    again = demo.run_demo(toks, causal=causal, heads=4, dim=64, seed=0)
    np.testing.assert_array_equal(again.weights, r.weights)


def test_run_demo_with_plugged_in_model():
    """A model's embeddings (function or array) and weights (a state dict)
    go in unchanged."""
    toks = ["the", "cat", "sat"]
    rng = np.random.default_rng(5)
    table = {t: rng.standard_normal(16) for t in toks}
    trained = fastattn.MultiHeadAttention(16, 2, rng=9)
    layer = fastattn.MultiHeadAttention.from_torch_state_dict(
        trained.to_torch_state_dict(), 2)
    by_fn = demo.run_demo(toks, embed=table.__getitem__, layer=layer)
    by_array = demo.run_demo(toks, embed=np.stack([table[t] for t in toks]), layer=layer)
    np.testing.assert_array_equal(by_fn.weights, by_array.weights)
    x = np.stack([table[t] for t in toks]).astype(np.float32)
    out, w = trained(x, need_weights=True)
    np.testing.assert_array_equal(by_fn.weights, w)
    np.testing.assert_array_equal(by_fn.output, out)


def test_run_demo_errors():
    with pytest.raises(ValueError, match="tokens is empty"):
        demo.run_demo([])
    with pytest.raises(ValueError, match=r"embed has shape \(2, 8\); expected"):
        demo.run_demo(["a", "b"], embed=np.zeros((2, 8)), dim=16, heads=2)
    with pytest.raises(ValueError, match=r"embed\('a'\) has shape \(3,\)"):
        demo.run_demo(["a"], embed=lambda t: [0.0, 1.0, 2.0], dim=16, heads=2)
    with pytest.raises(TypeError, match="layer must be a fastattn.MultiHeadAttention"):
        demo.run_demo(["a"], layer=object())


def test_render_marks_causal_cells(mpl, tmp_path):
    r = demo.run_demo(["a", "b", "c"], causal=True, heads=2, dim=8)
    path = demo.render(r, tmp_path / "c.png", title="t")
    assert path == str(tmp_path / "c.png")
    read_png(mpl, path)
