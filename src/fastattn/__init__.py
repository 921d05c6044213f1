"""fastattn: fast, fused self-attention on the CPU.

``fastattn.attention`` computes scaled dot-product attention with a C core
(SIMD kernels chosen at run time, OpenMP threads) over NumPy arrays;
``fastattn.reference`` is the plain NumPy reference it is tested against.
"""
import os as _os

from ._version import __version__

from . import _core
from . import reference
from .api import attention, attention_varlen, attention_weights, merge
from .kvcache import KVCache
from .layer import MultiHeadAttention
from . import plot  # matplotlib is imported only when a plot is drawn



__all__ = ["attention", "attention_varlen", "attention_weights", "merge", "KVCache",
           "MultiHeadAttention", "plot",
           "reference", "info", "set_num_threads", "get_num_threads",
           "__version__"]


def _init_isa():
    name = _os.environ.get("FASTATTN_ISA", "").strip().lower()
    if not name:
        return
    try:
        _core.set_isa(name)
    except ValueError as e:
        raise ImportError(f"FASTATTN_ISA={name!r}: {e}") from None


_init_isa()


def set_num_threads(n):
    """Use at most ``n`` threads (``n >= 1``) in later calls.  The default
    is OpenMP's (``OMP_NUM_THREADS`` when set, else the number of cores)."""
    _core.set_num_threads(n)


def get_num_threads():
    """The number of threads later calls may use."""
    return _core.get_num_threads()


def info():
    """Facts about this build and this machine, as a dict: version, ISA path
    in use and available, threads, OpenMP, compiler and flags, NumPy."""
    import numpy as np

    b = _core.build_info()
    return {
        "version": __version__,
        "isa": _core.get_isa(),
        "isa_available": _core.isa_available(),
        "bf16_dot_product": _core.bf16_dot_product(),
        "num_threads": _core.get_num_threads(),
        "openmp": b["openmp"],
        "compiler": b["compiler"],
        "build_flags": b["cflags"],
        "kernel_flags": b["kernel_flags"],
        "numpy": np.__version__,
    }
