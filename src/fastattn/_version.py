"""The version of fastattn: the one place it is written (pyproject.toml reads
it as a dynamic field, fastattn.__version__ re-exports it)."""

__version__ = "0.1.0"
