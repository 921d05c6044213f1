"""Fixtures and hooks of the fastattn test suite.

The helpers (reference comparison under the tolerance rule, array
builders, optional packages, the per-ISA child-process harness) live in
the ``support`` package next to this file; tests import them with
``from support import ...``.  This directory is put on ``sys.path`` so
that works whatever pytest import mode is configured, and in the child
interpreters the harness starts.
"""

import os
import sys
import zlib

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fastattn import _core  # noqa: E402
from support import isa as _isa  # noqa: E402

try:
    from hypothesis import HealthCheck, settings as _hsettings
except ImportError:  # the property tests need it; the others do not
    pass
else:
    # "default" keeps the suite fast; run a long search with
    # `pytest tests/core/test_property.py --hypothesis-profile=stress`.
    _common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow],
                   print_blob=True)
    _hsettings.register_profile("fastattn", max_examples=60, **_common)
    _hsettings.register_profile("stress", max_examples=3000, **_common)
    _hsettings.load_profile("fastattn")


@pytest.fixture
def rng(request):
    """A generator seeded from the test's file name and id: reproducible,
    distinct per test, and unchanged when a file moves between folders
    (the ``tests/`` prefix keeps the seeds the suite has always used)."""
    path, _, name = request.node.nodeid.partition("::")
    key = f"tests/{os.path.basename(path)}::{name}"
    return np.random.default_rng(zlib.crc32(key.encode()))


@pytest.fixture(params=_isa.ISA_NAMES)
def isa(request):
    """Each available ISA path in turn, switched in this process
    (``_core.set_isa``); the original path is restored after."""
    before = _core.get_isa()
    _core.set_isa(request.param)
    try:
        yield request.param
    finally:
        _core.set_isa(before)


@pytest.fixture(scope="session")
def isa_runs(request, tmp_path_factory):
    """{(isa, threads): child result} of the per-ISA harness
    (support/isa.py): the ``isa_cases()`` of every module with a collected
    test using this fixture, run once per session on every available path
    at 1 and 2 threads."""
    paths = {str(item.path) for item in request.session.items
             if "isa_runs" in getattr(item, "fixturenames", ())}
    return _isa.run_all_paths(tmp_path_factory.mktemp("isa_runs"), paths)
