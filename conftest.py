"""Collects the code blocks of README.md and docs/*.md as tests.

Only this hook lives here: pytest asks a conftest's ``pytest_collect_file``
about files below its own folder, and the documents sit at the root.  The
configuration (Sybil, skip reasons, per-document setup) is
tests/docs/sybil_docs.py; the suite's own fixtures are in tests/conftest.py.
"""

import importlib.util
import os
import sys

_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests", "docs",
                     "sybil_docs.py")
_spec = importlib.util.spec_from_file_location("sybil_docs", _PATH)
assert _spec is not None and _spec.loader is not None
sybil_docs = sys.modules.setdefault("sybil_docs", importlib.util.module_from_spec(_spec))
if not hasattr(sybil_docs, "ROOT"):
    _spec.loader.exec_module(sybil_docs)

pytest_collect_file = sybil_docs.pytest_collect_file_hook()
pytest_runtest_makereport = sybil_docs.pytest_runtest_makereport
