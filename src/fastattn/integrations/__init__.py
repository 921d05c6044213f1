"""Bridges from fastattn to other libraries (each imports its library lazily)."""
