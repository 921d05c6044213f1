"""Child interpreters of the test suite: the installed fastattn and the
``support`` package importable, whatever the current directory."""

import os

import fastattn

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastattn.__file__)))


def child_env(**extra):
    """os.environ with ``extra`` set and PYTHONPATH starting with the
    directory fastattn was imported from and tests/."""
    env = dict(os.environ)
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join(
        [PKG_PARENT, TESTS_DIR] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env
