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
    (["demo", "--heads", "32", "--dim", "64", "--out", "x.png"],
     "--heads is 32; the demo draws at most 16"),
    (["demo", "--heads", "1", "--dim", "4096", "--out", "x.png"],
     "--dim is 4096; the demo allows at most 1024"),
    (["demo", "--out", "x.foo"], "cannot write x.foo: unknown image format '.foo'; use one of "),
    (["demo", "--out", "sub"], "cannot write sub: it names a folder, not a file"),
    (["demo", "--out", "file/x.png"], "is not a folder"),
])
def test_cli_errors(mpl, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "file").write_text("")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastattn demo: error: ") and err.count("\n") == 1, err
    assert message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "sub"]
    assert not any((tmp_path / "sub").iterdir())


def test_cli_rejects_bad_numbers(capsys):
    assert main(["demo", "--heads", "0"]) == 2
    assert "expected a positive integer" in capsys.readouterr().err
    assert main(["demo", "--seed", "-1"]) == 2      # once a TypeError traceback
    assert "expected an integer >= 0, got '-1'" in capsys.readouterr().err


def _demo_child(tmp_path, *args):
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "fastattn", "demo", *args],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_cli_missing_folder_is_one_line(mpl, tmp_path):
    """Once a 33-line traceback."""
    r = _demo_child(tmp_path, "--out", str(tmp_path / "no" / "such" / "a.png"))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"fastattn demo: error: cannot write {tmp_path / 'no' / 'such' / 'a.png'}"
                        f": the folder {tmp_path / 'no' / 'such'} does not exist\n")


def test_cli_too_many_words_fail_at_once(tmp_path):
    """200 words once took 72 s and 8.2 GB for a 25638 x 25623 PNG."""
    r = _demo_child(tmp_path, " ".join(f"w{i}" for i in range(200)), "--out", "x.png")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("fastattn demo: error: the text has 200 words; the demo draws at most "
                        "64 (labels would be unreadable): shorten it\n")
    assert not any(tmp_path.iterdir())


def test_word_cap(mpl, monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "render", lambda result, path, title=None: str(path))
    words = " ".join(f"w{i}" for i in range(demo.MAX_WORDS))
    assert demo.main(words, tmp_path / "a.png") == str(tmp_path / "a.png")
    with pytest.raises(ValueError, match=f"has {demo.MAX_WORDS + 1} words; the demo draws at "
                                         f"most {demo.MAX_WORDS}"):
        demo.main(words + " extra", tmp_path / "a.png")


def test_cli_prints_the_name_it_writes(mpl, tmp_path):
    """``--out x`` once printed ``wrote x`` and wrote x.png (matplotlib adds
    the extension): now the .png is added first, and printed."""
    r = _demo_child(tmp_path, "--out", "x")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"wrote {tmp_path / 'x.png'}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]
    read_png(mpl, tmp_path / "x.png")


def test_cli_cjk_text_gives_at_most_one_warning(mpl, tmp_path):
    """Chinese and Japanese are one token per character; their labels use
    an installed font that has them, or give one warning (matplotlib warns
    once per missing glyph)."""
    from fastattn import plot

    text = "人生苦短，吃甜点先 dessert"
    tokens = demo.tokenize(text)
    r = _demo_child(tmp_path, text, "--out", "cjk.png")
    assert r.returncode == 0, r.stderr
    read_png(mpl, tmp_path / "cjk.png")
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot._label_fonts(mpl, tokens)
    lines = r.stderr.splitlines()
    assert "Glyph" not in r.stderr and len(lines) == len(caught) <= 1, r.stderr
    if lines:
        assert lines[0].startswith("fastattn demo: warning: no installed font has glyphs for ")


def test_failed_write_leaves_the_old_file(mpl, tmp_path, monkeypatch, capsys):
    """The image goes to a temporary file renamed into place: a write that
    fails (here: the disk fills up) leaves neither a partial image nor a
    temporary file, and the old image as it was."""
    import errno

    from matplotlib.figure import Figure

    def full_disk(self, f, **kwargs):
        f.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "a.png"
    out.write_bytes(b"old")
    monkeypatch.setattr(Figure, "savefig", full_disk)
    assert main(["demo", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"fastattn demo: error: cannot write {out}: "
                                       "No space left on device\n")
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"] and out.read_bytes() == b"old"


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
    # scripts without spaces: a token per character (as BERT splits Chinese)
    assert demo.tokenize("人生苦短，吃甜点！ok") == ["人", "生", "苦", "短", "吃", "甜", "点", "ok"]
    assert demo.tokenize("日本語のテキスト") == list("日本語のテキスト")
    assert demo.tokenize("한국어 텍스트") == ["한국어", "텍스트"]      # Korean has spaces
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
