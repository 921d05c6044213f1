"""Optional third-party packages of the test suite (torch as an oracle,
matplotlib for drawing): import them, or skip the test with the reason.

Under tools/sanitize.sh the ASan runtime is preloaded into an interpreter
that was not built with it.  Uninstrumented C++ extensions misbehave there
for reasons that have nothing to do with fastattn: matplotlib's ft2font
aborts in ASan's ``__cxa_throw`` interceptor as soon as it raises, and
importing torch leaves allocations that LeakSanitizer reports at exit.  The
tests that need them are skipped in that run; everything of fastattn's
that they exercise also runs there through the tests that do not.
"""

import os

import pytest

_SANITIZER_RUNTIMES = ("libasan", "libtsan", "libubsan", "libhwasan")


def sanitizer_preloaded():
    preload = os.environ.get("LD_PRELOAD", "")
    return any(name in preload for name in _SANITIZER_RUNTIMES)


def require(module, reason):
    """``pytest.importorskip(module, reason=reason)``, and a skip under a
    preloaded sanitizer runtime (see the module docstring).  Works in a test
    and at module level (a module's tests are then skipped together)."""
    if sanitizer_preloaded():
        pytest.skip(f"{module} is not loaded under a preloaded sanitizer runtime: its "
                    "uninstrumented C++ extensions abort or leak there (tools/sanitize.sh)",
                    allow_module_level=True)
    return pytest.importorskip(module, reason=reason)
