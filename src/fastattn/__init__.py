"""fastattn: fast, fused self-attention on the CPU.

``fastattn.attention`` computes scaled dot-product attention with a C core
(SIMD kernels chosen at run time, OpenMP threads) over NumPy arrays;
``fastattn.reference`` is the plain NumPy reference it is tested against;
``fastattn.show_config()`` reports the build and how it runs here.

The environment is read once, at import: ``FASTATTN_ISA`` forces an ISA
path, ``FASTATTN_NUM_THREADS`` (else ``OMP_NUM_THREADS``) sets the default
thread count.  An invalid value (an unknown path or one this CPU lacks, a
count that is not a positive integer) makes ``import fastattn`` raise an
ImportError that names the variable, its value and what is expected, rather
than run silently on another path or thread count.  The ``fastattn``
command instead ignores the value and reports it as one error line.
"""
from typing import Any, Dict

from ._version import __version__
from . import _core
from . import _config, _threads
from ._config import show_config
from ._threads import get_num_threads, set_num_threads
from .api import attention, attention_paged, attention_varlen, attention_weights, explain, merge
from .kvcache import KVCache
from .paged import PagedKVCache
from .layer import MultiHeadAttention
from .linear import PackedLinear, layer_norm, linear, pack_linear
from . import plot  # matplotlib is imported only when a plot is drawn

__all__ = ["attention", "linear", "layer_norm", "pack_linear", "PackedLinear", "attention_varlen", "attention_paged", "attention_weights", "explain", "merge", "KVCache",
           "PagedKVCache",
           "MultiHeadAttention", "plot", "reference", "info", "show_config",
           "set_num_threads", "get_num_threads", "__version__"]


def _check_environment() -> None:
    errors = _config.apply_environment()
    if errors and not _config.started_by_command_line():
        raise ImportError("; ".join(errors.values()))


_check_environment()


def __getattr__(name: str) -> Any:
    # the NumPy reference is a test oracle: nothing in the package imports
    # it, so ``fastattn.reference`` loads it only when someone asks
    if name == "reference":
        import importlib

        return importlib.import_module(".reference", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def info() -> Dict[str, Any]:
    """Facts about this build and this machine, as a flat dict.

    Returns
    -------
    dict
        version, ISA path in use and available, the ``FASTATTN_ISA``
        override (None when unset), ``env_errors`` (the message of each
        environment variable whose invalid value was ignored: always empty
        outside the ``fastattn`` command, where the import raises instead),
        whether the AVX512-BF16 dot product is used, the matrix unit
        (``amx_available``, ``amx_reason`` and its CPU flags
        ``amx_flags``), threads, OpenMP, compiler and flags, NumPy version.
        :func:`show_config` gives the full report.
    """
    import numpy as np

    from ._config import matrix_unit

    b = _core.build_info()
    mu = matrix_unit()
    return {
        "version": __version__,
        "isa": _core.get_isa(),
        "isa_available": _core.isa_available(),
        "isa_override": mu["isa_override"],
        "env_errors": list(_config.environment_errors().values()),
        "bf16_dot_product": _core.bf16_dot_product(),
        "amx_available": mu["available"],
        "amx_reason": mu["reason"],
        "amx_flags": mu["flags"],
        "num_threads": get_num_threads(),
        "openmp": b["openmp"],
        "compiler": b["compiler"],
        "build_flags": b["cflags"],
        "kernel_flags": b["kernel_flags"],
        "numpy": np.__version__,
    }
