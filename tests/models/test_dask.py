"""dask_embed on a LocalCluster (127.0.0.1, two worker processes): one shard
per partition, joined in input order, bitwise equal to one process; the
same lines, warnings and file rules as ``fastattn embed``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from support import require
from fastattn.cli import main
from fastattn.models import dask_embed, load_encoder
from fastattn.models.embed import EmbedError, OutputExistsError
from models_support import WORDS, tiny_folder  # noqa: F401  (fixture)


def test_dask_embed_matches_single_process(tiny_folder: Path, tmp_path: Path) -> None:
    require("dask.bag", "dask[bag] (the 'dask' extra) is not installed")
    require("distributed", "distributed (the 'dask' extra) is not installed")
    rng = np.random.default_rng(1)
    lines = [" ".join(rng.choice(WORDS, size=int(n))) for n in rng.integers(0, 30, size=90)]
    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "emb.npy"
    db: Any = require("dask.bag", "dask[bag] is not installed")
    bag = db.read_text(str(src), blocksize=300)
    assert bag.npartitions > 2
    with pytest.warns(UserWarning, match="were longer than 24 tokens"):
        got = dask_embed(bag, str(out), model_dir=str(tiny_folder), n_workers=2)
    ref = load_encoder(tiny_folder).encode(lines, threads=1)
    assert got.shape == ref.shape
    assert np.array_equal(np.asarray(got), ref)
    assert np.array_equal(np.load(out), ref)
    assert not (tmp_path / "emb.npy.shards").exists()


# --------------------------------------------------------------------------
# the same lines, bytes and file rules as ``fastattn embed``
# --------------------------------------------------------------------------

# non-UTF-8 bytes, a lone \r, \r\n, empty lines, a line over the tiny model's
# 24 tokens and no final newline
AWKWARD = (b"the cat sat\r\n\nthe dog \xff\xfe ran\rfar away\n"
           + b" ".join([b"sun"] * 30) + b"\n\r\n caf\xc3\xa9 is hot \n\xc3\nblue sky\r")


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    require("dask.bag", "dask[bag] (the 'dask' extra) is not installed")
    dist = require("distributed", "distributed (the 'dask' extra) is not installed")
    cluster = dist.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                host="127.0.0.1", dashboard_address=None)
    with dist.Client(cluster) as c:
        yield c
    cluster.close()


def cli_embed(capsys: pytest.CaptureFixture[str], model: Path, src: Path, out: Path) -> str:
    code = main(["embed", "--quiet", "--model", str(model), "--input", str(src),
                 "--output", str(out), "--batch-tokens", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    return err


def test_dask_embed_matches_the_command(tiny_folder: Path, tmp_path: Path, client: Any,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Bitwise the same file from the same bytes.  One sentence per batch
    (batch_tokens=1) on both sides, so that the comparison is about lines
    and bytes whatever the partitions (batch invariance is test_bert's)."""
    src, clean = tmp_path / "awkward.txt", tmp_path / "clean.txt"
    src.write_bytes(AWKWARD * 3)
    clean.write_bytes(b"the sun is hot\nthe sky is blue\n")
    ref, ref_clean = tmp_path / "cli.npy", tmp_path / "cli_clean.npy"
    err = cli_embed(capsys, tiny_folder, src, ref)
    cli_embed(capsys, tiny_folder, clean, ref_clean)
    # lines end at \n only; each copy's unterminated last line runs into the next copy
    assert np.load(ref).shape == ((AWKWARD * 3).count(b"\n") + 1, 32) == (22, 32)
    assert "fastattn embed: warning: 6 line(s) were not valid UTF-8 (first: line 3)" in err
    assert "3 line(s) were longer than 24 tokens, the model's maximum," in err

    out = tmp_path / "dask.npy"
    out.write_bytes(b"old")
    shards = tmp_path / "shards"
    with pytest.warns(UserWarning) as warned:
        dask_embed(str(src), str(out), model_dir=str(tiny_folder), client=client,
                   batch_tokens=1, blocksize=40, shard_dir=str(shards), keep_shards=True,
                   force=True)
    assert out.read_bytes() == ref.read_bytes()
    assert len(list(shards.glob("part-*.npy"))) > 3
    messages = " | ".join(str(w.message) for w in warned)
    assert f"6 line(s) were not valid UTF-8 (first: line 3 of {src});" in messages
    assert "3 line(s) were longer than 24 tokens, the model's maximum," in messages

    both = tmp_path / "both.npy"
    with pytest.warns(UserWarning) as warned:
        got = dask_embed([str(clean), str(src)], str(both), model_dir=str(tiny_folder),
                         client=client, batch_tokens=1, blocksize=40)
    assert any(f"(first: line 3 of {src})" in str(w.message) for w in warned)
    assert np.array_equal(got, np.concatenate([np.load(ref_clean), np.load(ref)]))
    assert sorted(p.name for p in tmp_path.iterdir() if not p.is_dir()) == [
        "awkward.txt", "both.npy", "clean.txt", "cli.npy", "cli_clean.npy", "dask.npy"]


@pytest.mark.parametrize("case", ["no_dir", "is_input", "symlink_to_input", "exists"])
def test_dask_embed_path_rules(tiny_folder: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str], case: str) -> None:
    """Refused before anything runs, with the command's message."""
    require("dask.bag", "dask[bag] (the 'dask' extra) is not installed")
    src = tmp_path / "in.txt"
    src.write_bytes(b"the cat\n")
    out = {"no_dir": tmp_path / "no" / "o.npy", "is_input": src,
           "symlink_to_input": tmp_path / "link.npy", "exists": tmp_path / "o.npy"}[case]
    if case == "symlink_to_input":
        out.symlink_to(src)
    if case == "exists":
        out.write_bytes(b"old")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(EmbedError) as e:
        dask_embed(str(src), str(out), model_dir=str(tiny_folder))
    assert sorted(os.listdir(tmp_path)) == before
    assert src.read_bytes() == b"the cat\n"
    if case == "exists":
        assert isinstance(e.value, OutputExistsError) and out.read_bytes() == b"old"
        return
    code = main(["embed", "--model", str(tiny_folder), "--input", str(src),
                 "--output", str(out)])
    assert code == 2
    assert capsys.readouterr().err == f"fastattn embed: error: {e.value}\n"


def test_dask_embed_failure_removes_the_shards(tiny_folder: Path, tmp_path: Path,
                                               client: Any) -> None:
    src, out = tmp_path / "in.txt", tmp_path / "o.npy"
    src.write_bytes(b"the cat\nthe dog\n" * 20)
    with pytest.raises(ValueError, match="max_length"):   # the tiny model has 48 positions
        dask_embed(str(src), str(out), model_dir=str(tiny_folder), client=client,
                   max_length=1000, blocksize=30)
    assert sorted(os.listdir(tmp_path)) == ["in.txt"]


def test_dask_embed_late_failure_leaves_no_shard(tiny_folder: Path, tmp_path: Path,
                                                 client: Any) -> None:
    """One partition fails after others have written their shards: every
    shard, and this run's shard folder, is gone afterwards, and a folder
    given as shard_dir (made here) too."""
    db: Any = require("dask.bag", "dask[bag] is not installed")
    good = [f"sentence {i}" for i in range(30)]
    bag = db.from_sequence(good + [5], npartitions=6)   # the last partition fails
    out = tmp_path / "o.npy"
    with pytest.raises(TypeError, match="a Bag of str was expected"):
        dask_embed(bag, str(out), model_dir=str(tiny_folder), client=client,
                   shard_dir=str(tmp_path / "shards"))
    assert os.listdir(tmp_path) == []


def test_dask_embed_runs_do_not_share_shards(tiny_folder: Path, tmp_path: Path,
                                             client: Any) -> None:
    """Two runs into the same folder at once each join their own shards."""
    db: Any = require("dask.bag", "dask[bag] is not installed")
    from concurrent.futures import ThreadPoolExecutor

    texts = {name: [f"{name} sentence {i}" for i in range(40)] for name in ("a", "b")}
    with ThreadPoolExecutor(2) as pool:
        futs = {name: pool.submit(dask_embed, db.from_sequence(t, npartitions=5),
                                  str(tmp_path / f"{name}.npy"), model_dir=str(tiny_folder),
                                  client=client, shard_dir=str(tmp_path))
                for name, t in texts.items()}
        got = {name: np.asarray(f.result()) for name, f in futs.items()}
    enc = load_encoder(tiny_folder)
    for name, t in texts.items():
        assert np.array_equal(got[name], enc.encode(t, batch_tokens=1, threads=1))
    assert sorted(os.listdir(tmp_path)) == ["a.npy", "b.npy"]


def test_dask_embed_precision(tiny_folder: Path, tmp_path: Path, client: Any) -> None:
    """precision="bfloat16" on the workers gives the bfloat16 encoder's rows."""
    pytest.importorskip("ml_dtypes", reason="ml_dtypes provides NumPy's bfloat16")
    rng = np.random.default_rng(4)
    lines = [" ".join(rng.choice(WORDS, size=int(n))) for n in rng.integers(1, 20, size=40)]
    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(lines) + "\n")
    got = dask_embed(str(src), str(tmp_path / "bf16.npy"), model_dir=str(tiny_folder),
                     client=client, blocksize=200, precision="bfloat16")
    ref = load_encoder(tiny_folder, precision="bfloat16").encode(lines, threads=1)
    assert np.array_equal(np.asarray(got), ref)
    got8 = dask_embed(str(src), str(tmp_path / "i8.npy"), model_dir=str(tiny_folder),
                      client=client, blocksize=200, precision="int8")
    ref8 = load_encoder(tiny_folder, precision="int8").encode(lines, threads=1)
    assert np.array_equal(np.asarray(got8), ref8)
    with pytest.raises(ValueError, match="precision must be one of"):
        dask_embed(str(src), str(tmp_path / "x.npy"), model_dir=str(tiny_folder),
                   client=client, precision="int4")
