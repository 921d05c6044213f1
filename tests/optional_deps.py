"""``from optional_deps import require`` keeps working: the helper lives in
support/optional_deps.py."""

from support.optional_deps import require, sanitizer_preloaded

__all__ = ["require", "sanitizer_preloaded"]
