"""``fastattn embed`` in a child process, stopped on the way: SIGINT and
SIGTERM during the model load, while rows are being written and right
before the rename, and a file-size limit (a full disk) while writing.  Each
time the earlier output must be byte for byte what it was, and no
temporary file may stay."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List

import numpy as np
import pytest

from support.child import child_env
from models_support import WORDS, tiny_folder  # noqa: F401  (fixture)

# The command with a pause (a marker file, then a long sleep) at one point,
# so that the test can send its signal there.  The input has 40 lines, read
# in chunks of 5: "load" pauses in the model load, "encode" after the 2nd
# of 8 chunks is embedded, "end" after the last, "rename" once every row
# is written and synced, before the rename.
CHILD = r"""
import sys, time
from fastattn.models import embed, encoder

point, marker = sys.argv[1], sys.argv[2]


def pause():
    open(marker, "w").close()
    time.sleep(60)


def pause_after(cls_or_module, name, calls):
    real = getattr(cls_or_module, name)
    done = []

    def wrapper(*args, **kwargs):
        if calls == 0:
            pause()
        result = real(*args, **kwargs)
        done.append(1)
        if len(done) == calls:
            pause()
        return result

    setattr(cls_or_module, name, wrapper)


embed.embed_file.__kwdefaults__["chunk_lines"] = 5
if point == "load":
    pause_after(encoder, "load_encoder", 0)
elif point == "encode":
    pause_after(encoder.SentenceEncoder, "encode_ids", 2)
elif point == "end":
    pause_after(encoder.SentenceEncoder, "encode_ids", 8)
elif point == "rename":
    pause_after(embed, "_publish", 0)

from fastattn.cli import main

sys.exit(main(["embed", *sys.argv[3:]]))
"""

MESSAGE = {signal.SIGINT: "fastattn embed: interrupted; nothing written\n",
           signal.SIGTERM: "fastattn embed: terminated; nothing written\n"}


def corpus(path: Path, n: int) -> None:
    rng = np.random.default_rng(3)
    path.write_text("\n".join(" ".join(rng.choice(WORDS, size=int(k)))
                              for k in rng.integers(0, 20, size=n)) + "\n")


def partial_files(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


def wait_for(cond: Callable[[], bool], proc: "subprocess.Popen[str]") -> None:
    deadline = time.monotonic() + 60
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"the child ended first (status {proc.returncode}): "
                        f"{proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the child never reached the point")
        time.sleep(0.01)


def previous_output(path: Path) -> bytes:
    np.save(path, np.arange(12, dtype=np.float32).reshape(3, 4))
    return path.read_bytes()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("point", ["load", "encode", "end", "rename"])
def test_signal_keeps_the_previous_output(tiny_folder: Path, tmp_path: Path, point: str,
                                          sig: int) -> None:
    src, out, marker = tmp_path / "in.txt", tmp_path / "prev.npy", tmp_path / "marker"
    corpus(src, 40)
    old = previous_output(out)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, point, str(marker), "--quiet", "--threads", "1",
         "--model", str(tiny_folder), "--input", str(src), "--output", str(out), "--force"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env())
    wait_for(marker.exists, proc)
    writing = partial_files(tmp_path)
    proc.send_signal(sig)
    err = proc.communicate(timeout=60)[1]
    assert out.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "marker", "prev.npy"]
    assert proc.returncode == 128 + sig, err
    assert err == MESSAGE[sig]
    # the output was being written beside itself when the signal came
    assert len(writing) == (0 if point == "load" else 1)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_the_plain_command(tiny_folder: Path, tmp_path: Path, sig: int) -> None:
    """No pause: the signal comes as soon as the command starts writing
    (a new file in the folder, or the old output changed), with thousands
    of lines still to embed."""
    src, out = tmp_path / "in.txt", tmp_path / "prev.npy"
    corpus(src, 30000)
    old = previous_output(out)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastattn", "embed", "--quiet", "--model", str(tiny_folder),
         "--input", str(src), "--output", str(out), "--force"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env())

    def state() -> object:
        st = out.stat()
        return sorted(os.listdir(tmp_path)), st.st_ino, st.st_size, st.st_mtime_ns

    before = state()
    wait_for(lambda: state() != before, proc)
    proc.send_signal(sig)
    err = proc.communicate(timeout=60)[1]
    assert out.read_bytes() == old
    assert partial_files(tmp_path) == []
    assert proc.returncode == 128 + sig, err
    assert err == MESSAGE[sig]


@pytest.mark.parametrize("limit", [100, 20000], ids=["in_header", "in_rows"])
@pytest.mark.parametrize("existing", [True, False], ids=["replacing", "new"])
def test_full_disk(tiny_folder: Path, tmp_path: Path, limit: int, existing: bool) -> None:
    """A file-size limit makes writes past ``limit`` bytes fail with EFBIG
    (SIGXFSZ ignored), as a full disk fails them with ENOSPC."""
    src, out = tmp_path / "in.txt", tmp_path / "out.npy"
    corpus(src, 1000)   # 1000 rows of 32 float32: 128 kB
    old = previous_output(out) if existing else None

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE,
                           (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    res = subprocess.run(
        [sys.executable, "-m", "fastattn", "embed", "--quiet", "--model", str(tiny_folder),
         "--input", str(src), "--output", str(out), "--force"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env(),
        preexec_fn=limit_file_size, timeout=120)
    assert res.returncode == 2
    assert res.stderr == f"fastattn embed: error: cannot write {out}: " \
                         f"{os.strerror(errno.EFBIG)}\n"
    assert partial_files(tmp_path) == []
    if existing:
        assert out.read_bytes() == old
    else:
        assert not out.exists()
