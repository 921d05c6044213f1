"""What ``fastattn embed`` and ``embed_file`` do to files: an output that is
the input (also through a link) or that exists is refused, ``--force``
replaces it only with a complete file, the temporary file never stays, and
the messages (one line each) say which limit cut a line.  The tiny model
folder (``--model``) keeps each run well under a second."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Tuple

import numpy as np
import pytest

from fastattn.cli import main
from fastattn.models import load_encoder
from fastattn.models.embed import (EmbedError, NpyWriter, OutputExistsError, decode_lines,
                                   embed_file, split_lines)
from models_support import WORDS, tiny_folder  # noqa: F401  (fixture)


def run(capsys: pytest.CaptureFixture[str], model: Path, *args: str) -> Tuple[int, str]:
    code = main(["embed", "--quiet", "--model", str(model), *args])
    return code, capsys.readouterr().err


def corpus(path: Path, n: int = 40, seed: int = 0) -> List[str]:
    rng = np.random.default_rng(seed)
    lines = [" ".join(rng.choice(WORDS, size=int(k))) for k in rng.integers(0, 20, size=n)]
    path.write_text("\n".join(lines) + "\n")
    return lines


def leftovers(folder: Path) -> List[str]:
    """Temporary files of an unfinished output."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


@pytest.mark.parametrize("how", ["same", "relative", "symlink", "hardlink"])
def test_output_that_is_the_input_is_refused(tiny_folder: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch,
                                             how: str) -> None:
    src = tmp_path / "small.txt"
    corpus(src, n=5)
    before = src.read_bytes()
    out = {"same": src, "relative": Path("sub/../small.txt"),
           "symlink": tmp_path / "link.npy", "hardlink": tmp_path / "hard.npy"}[how]
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    if how == "symlink":
        out.symlink_to(src)
    elif how == "hardlink":
        os.link(src, out)
    code, err = run(capsys, tiny_folder, "--input", str(src), "--output", str(out),
                    "--force")
    assert code == 2
    assert err == f"fastattn embed: error: cannot write {out}: it is the input {src}\n"
    assert src.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_existing_output_needs_force(tiny_folder: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    src, out = tmp_path / "in.txt", tmp_path / "out.npy"
    lines = corpus(src)
    np.save(out, np.arange(6, dtype=np.float32).reshape(2, 3))
    old = out.read_bytes()
    code, err = run(capsys, tiny_folder, "--input", str(src), "--output", str(out))
    assert code == 2
    assert err == f"fastattn embed: error: {out} exists; add --force to replace it\n"
    assert out.read_bytes() == old
    code, err = run(capsys, tiny_folder, "--input", str(src), "--output", str(out),
                    "--force", "--batch-tokens", "1")
    assert code == 0, err
    ref = load_encoder(tiny_folder).encode(lines, batch_tokens=1)
    assert np.array_equal(np.load(out), ref)
    assert leftovers(tmp_path) == []


def test_force_through_a_symlink_replaces_its_target(tiny_folder: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    src, real, link = tmp_path / "in.txt", tmp_path / "real.npy", tmp_path / "link.npy"
    corpus(src, n=3)
    np.save(real, np.zeros((1, 1), dtype=np.float32))
    link.symlink_to(real)
    code, err = run(capsys, tiny_folder, "--input", str(src), "--output", str(link),
                    "--force")
    assert code == 0, err
    assert link.is_symlink() and np.load(real).shape == (3, 32)


def test_messages(tiny_folder: Path, tmp_path: Path,
                  capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.txt"
    src.write_text("the cat sat on the mat\n")
    code, err = run(capsys, tiny_folder, "--input", str(src), "--output",
                    str(tmp_path / "a.npy"), "--max-length", "4")
    assert code == 0, err
    assert "fastattn embed: 1 sentence, 4 tokens in " in err
    assert ("1 line(s) were longer than 4 tokens, the limit set by --max-length, and were "
            "truncated") in err
    src.write_text(" ".join(["cat"] * 30) + "\nsun\n")   # the tiny folder's maximum is 24
    code, err = run(capsys, tiny_folder, "--input", str(src), "--output",
                    str(tmp_path / "b.npy"))
    assert code == 0, err
    assert "fastattn embed: 2 sentences, 27 tokens in " in err
    assert "1 line(s) were longer than 24 tokens, the model's maximum, and were" in err


def test_embed_file_rules(tiny_folder: Path, tmp_path: Path) -> None:
    src, out = tmp_path / "in.txt", tmp_path / "out.npy"
    lines = corpus(src, n=7)
    enc = load_encoder(tiny_folder)
    with pytest.raises(EmbedError, match="it is the input"):
        embed_file(str(src), str(src), encoder=enc, force=True)
    report = embed_file(str(src), str(out), encoder=enc, batch_tokens=1, chunk_lines=3)
    assert report.sentences == 7
    ref = enc.encode(lines, batch_tokens=1)
    assert np.array_equal(np.load(out), ref)
    corpus(src, n=4, seed=1)
    with pytest.raises(OutputExistsError, match="force=True"):
        embed_file(str(src), str(out), encoder=enc)
    assert np.array_equal(np.load(out), ref)
    embed_file(str(src), str(out), encoder=enc, force=True)
    assert np.load(out).shape == (4, 32)
    assert leftovers(tmp_path) == []


def test_a_failure_while_encoding_leaves_the_old_output(tiny_folder: Path,
                                                        tmp_path: Path) -> None:
    src, out = tmp_path / "in.txt", tmp_path / "out.npy"
    corpus(src, n=30)
    out.write_bytes(b"old")
    enc = load_encoder(tiny_folder)
    calls = []
    real = enc.encode_ids

    def fail_on_second_chunk(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    enc.encode_ids = fail_on_second_chunk
    with pytest.raises(RuntimeError, match="boom"):
        embed_file(str(src), str(out), encoder=enc, chunk_lines=10, force=True)
    assert out.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_writer_is_a_plain_npy(tmp_path: Path) -> None:
    a = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    np.save(tmp_path / "ref.npy", a)
    with NpyWriter(str(tmp_path / "w.npy"), 5, 7) as w:
        w.write(a[:2])
        w.write(a[2:2])
        w.write(a[2:])
        w.commit()
    assert (tmp_path / "w.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()
    with pytest.raises(EmbedError, match="2 rows of 5"):
        with NpyWriter(str(tmp_path / "short.npy"), 5, 7) as w:
            w.write(a[:2])
            w.commit()
    with pytest.raises(EmbedError, match="more than 5 rows"):
        with NpyWriter(str(tmp_path / "long.npy"), 5, 7) as w:
            w.write(a)
            w.write(a[:1])
    with pytest.raises(ValueError, match=r"rows has shape \(5, 6\), expected \(k, 7\)"):
        with NpyWriter(str(tmp_path / "narrow.npy"), 5, 7) as w:
            w.write(a[:, :6])
    with pytest.raises(OutputExistsError):   # appeared since the checks
        with NpyWriter(str(tmp_path / "w.npy"), 0, 7) as w:
            w.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.npy", "w.npy"]


def test_line_rules() -> None:
    raw = b"a\r\nb\rc\n\n\xff x\nlast\r"
    lines = split_lines(raw)
    assert lines == [b"a\r", b"b\rc", b"", b"\xff x", b"last\r"]
    assert split_lines(raw + b"\n") == lines
    assert split_lines(b"") == [] and split_lines(b"\n") == [b""]
    texts, bad, first = decode_lines(lines, first_line=10)
    assert texts == ["a", "b\rc", "", "\ufffd x", "last"]
    assert (bad, first) == (1, 13)


def test_an_interrupt_while_the_file_opens_leaves_nothing(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """KeyboardInterrupt between creating the temporary file and writing its
    header (here: in os.fdopen) removes the file."""
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fdopen", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with NpyWriter(str(tmp_path / "o.npy"), 3, 4):
            pass
    assert os.listdir(tmp_path) == []


def test_an_interrupt_after_the_rename_says_the_output_was_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A signal that arrives once the output is in place must not claim that
    nothing was written."""
    import fastattn.models.embed as embed_module

    src, out = tmp_path / "in.txt", tmp_path / "o.npy"
    src.write_text("hello\n")

    def done_then_interrupted(*args: Any, **kwargs: Any) -> Any:
        np.save(out, np.zeros((1, 4), np.float32))
        raise KeyboardInterrupt

    monkeypatch.setattr(embed_module, "embed_file", done_then_interrupted)
    code = main(["embed", "--quiet", "--input", str(src), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 130 and f"interrupted; {out} was written" in err, err


def test_precision(tiny_folder: Path, tmp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    """--precision bfloat16 and int8 give those encoders' rows bitwise (and
    they differ from float32's), say so in the final line, and are the
    same whatever the batch budget and threads; a bad value is refused."""
    pytest.importorskip("ml_dtypes", reason="ml_dtypes provides NumPy's bfloat16")
    src = tmp_path / "in.txt"
    lines = corpus(src, n=30)
    rows = {}
    for prec, budget, threads in (("bfloat16", "1", "1"), ("bfloat16", "5000", "2"),
                                  ("int8", "1", "1"), ("int8", "5000", "2"),
                                  ("float32", "5000", "2")):
        out = tmp_path / f"{prec}-{budget}.npy"
        code, err = run(capsys, tiny_folder, "--input", str(src), "--output", str(out),
                        "--precision", prec, "--batch-tokens", budget, "--threads", threads)
        assert code == 0, err
        assert f"tokens/s ({prec});" in err
        rows[prec, budget] = np.load(out)
    assert np.array_equal(rows["bfloat16", "1"], rows["bfloat16", "5000"])
    enc = load_encoder(tiny_folder, precision="bfloat16")
    assert np.array_equal(rows["bfloat16", "1"], enc.encode(lines, threads=1))
    assert not np.array_equal(rows["bfloat16", "1"], rows["float32", "5000"])
    assert np.array_equal(rows["int8", "1"], rows["int8", "5000"])
    assert np.array_equal(rows["int8", "1"],
                          load_encoder(tiny_folder, precision="int8").encode(lines, threads=1))
    assert not np.array_equal(rows["int8", "1"], rows["bfloat16", "1"])
    assert main(["embed", "--input", str(src), "--output", str(tmp_path / "x.npy"),
                 "--precision", "int4"]) == 2
    assert "invalid choice: 'int4'" in capsys.readouterr().err
    with pytest.raises(EmbedError, match="--precision must be one of"):
        embed_file(str(src), str(tmp_path / "y.npy"), precision="int4")
