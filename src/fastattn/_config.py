"""``fastattn.show_config()``: what this build is and what it does here.

The report gathers the build facts compiled into ``_core`` (compiler, flags,
kernels), the ISA paths and why any is off, the threading runtime actually
loaded in this process, the thread count and where it came from, and, when
threadpoolctl is installed, the thread pools of NumPy's BLAS (as
``numpy.show_runtime()`` does) beside fastattn's own OpenMP pool.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Optional, TextIO

import numpy as np

from . import _core, _threads
from ._version import __version__

_OPENMP_LIBS = ("libgomp", "libomp", "libiomp")
_ISA_NEEDS = {
    "avx2": "AVX2, FMA and F16C with OS support for ymm state",
    "avx512": "AVX-512 F/DQ/BW/VL with OS support for zmm and opmask state",
    "neon": "an aarch64 CPU",
    "amx": "AMX-TILE and AMX-BF16 with OS support for tile state (besides AVX-512 and "
           "AVX512-BF16)",
    "amx_emu": "AVX-512 and AVX512-BF16 (the softmax of the matrix kernels)",
}
# CPUID feature flags of the matrix unit, as amx_status() reports them
_AMX_FLAGS = (("amx_tile", "AMX-TILE"), ("amx_bf16", "AMX-BF16"), ("amx_fp16", "AMX-FP16"),
              ("amx_int8", "AMX-INT8"))


def _kernel_flags(text: str) -> Dict[str, str]:
    """``"scalar: -O3 ...; avx2: ..."`` as ``{isa: flags}``."""
    rows = (part.split(":", 1) for part in text.split(";") if ":" in part)
    return {isa.strip(): flags.strip() for isa, flags in rows}


def _isa_report(kernels: Dict[str, str]) -> List[Dict[str, Any]]:
    available = _core.isa_available()
    chosen = _core.get_isa()
    forced = isa_override()
    rows = []
    for name in _core.isa_names():
        row: Dict[str, Any] = {"name": name, "compiled": name in kernels,
                               "available": name in available, "chosen": name == chosen}
        if name == chosen:
            row["reason"] = (f"forced by FASTATTN_ISA={forced}" if forced == name
                             else "the best path available")
        elif not row["compiled"]:
            row["reason"] = "not compiled for this build's target architecture"
        elif not row["available"]:
            row["reason"] = f"this CPU lacks {_ISA_NEEDS.get(name, 'what it needs')}"
        elif name == "amx_emu":
            row["reason"] = ("the matrix kernels on the portable tile emulation (slow, for "
                             "tests): used only when forced, FASTATTN_ISA=amx_emu")
        else:
            row["reason"] = f"available, not chosen ({chosen} is in use)"
        rows.append(row)
    return rows


def isa_override() -> Optional[str]:
    """The path FASTATTN_ISA forces (as read at import), or None."""
    forced = os.environ.get("FASTATTN_ISA", "").strip().lower()
    return forced or None


def matrix_unit() -> Dict[str, Any]:
    """The matrix unit (Intel AMX): whether the matrix kernels run on it
    and why not, its CPUID flags, and the path the matrix kernels use in
    this process (the tiles, their emulation, or none)."""
    status = dict(_core.amx_status())
    isa = _core.get_isa()
    if isa == "amx_emu":
        used = "the tile emulation (forced by FASTATTN_ISA=amx_emu)"
    elif isa == "amx" and status["available"]:
        used = "the AMX tiles"
    elif isa == "amx":
        used = "none: the amx path runs like avx512 (the tiles are refused)"
    else:
        used = f"none: the {isa} path has no matrix kernels"
    return {"available": bool(status["available"]), "reason": str(status["reason"]),
            "flags": [label for key, label in _AMX_FLAGS if status.get(key)],
            "os_enabled": bool(status.get("os_enabled")),
            "permission": status.get("permission"), "compiled": bool(status.get("compiled")),
            "matrix_kernels": used, "isa_override": isa_override()}


def _loaded_libraries(prefixes: tuple[str, ...]) -> List[str]:
    """Paths of the shared libraries mapped into this process whose file
    name starts with one of ``prefixes`` (from /proc/self/maps)."""
    found: Dict[str, None] = {}
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if line.count("/") else ""
                if os.path.basename(path).startswith(prefixes):
                    found[path] = None
    except OSError:
        pass
    return list(found)


def _threadpools() -> Optional[List[Dict[str, Any]]]:
    """threadpoolctl's view of the loaded thread pools, or None without it."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    keep = ("user_api", "internal_api", "num_threads", "prefix", "filepath", "version",
            "threading_layer", "architecture")
    return [{k: pool[k] for k in keep if k in pool} for pool in threadpool_info()]


def config() -> Dict[str, Any]:
    """The runtime report as a dict (see :func:`show_config`)."""
    build = _core.build_info()
    kernels = _kernel_flags(str(build["kernel_flags"]))
    openmp = bool(build["openmp"])
    return {
        "fastattn": {"version": __version__, "path": os.path.dirname(__file__)},
        "build": {"compiler": build["compiler"], "cflags": build["cflags"],
                  "kernel_flags": kernels},
        "isa": {"paths": _isa_report(kernels),
                "bf16_dot_product": bool(_core.bf16_dot_product())},
        "matrix_unit": matrix_unit(),
        "threading": {
            "runtime": "OpenMP" if openmp else "serial (built without OpenMP)",
            "library": _loaded_libraries(_OPENMP_LIBS) if openmp else [],
            "num_threads": _threads.get_num_threads(),
            "num_threads_source": _threads.num_threads_source(),
            "cpus_available": _threads.available_cpus(),
        },
        "python": {"version": sys.version.split()[0], "numpy": np.__version__},
        "threadpools": _threadpools(),
    }


def _format(cfg: Dict[str, Any]) -> str:
    b, isa, th = cfg["build"], cfg["isa"], cfg["threading"]
    lines = [f"fastattn {cfg['fastattn']['version']} ({cfg['fastattn']['path']})",
             f"  compiler: {b['compiler']}", f"  flags:    {b['cflags']}", "  kernels:"]
    lines += [f"    {name}: {flags}" for name, flags in b["kernel_flags"].items()]
    lines.append("ISA paths:")
    for row in isa["paths"]:
        mark = "*" if row["chosen"] else ("+" if row["available"] else "-")
        lines.append(f"  {mark} {row['name']:<8} {row['reason']}")
    lines.append(f"  bfloat16 dot product (AVX512-BF16): "
                 f"{'used' if isa['bf16_dot_product'] else 'not used'}")
    lines += _format_matrix_unit(cfg["matrix_unit"])
    lines += ["Threads:", f"  runtime: {th['runtime']}"]
    lines += [f"  library: {path}" for path in th["library"]]
    lines += [f"  threads: {th['num_threads']} (from {th['num_threads_source']}; "
              f"{th['cpus_available']} CPUs available to this process)",
              f"Python {cfg['python']['version']}, NumPy {cfg['python']['numpy']}"]
    pools = cfg["threadpools"]
    if pools is None:
        lines.append("Thread pools: install threadpoolctl to list NumPy's BLAS")
    else:
        lines.append("Thread pools (threadpoolctl):")
        for pool in pools:
            version = f" {pool['version']}" if pool.get("version") else ""
            lines.append(f"  {pool.get('user_api')}: {pool.get('internal_api')}{version}, "
                         f"{pool.get('num_threads')} threads, {pool.get('filepath')}")
    return "\n".join(lines)


def _format_matrix_unit(mu: Dict[str, Any]) -> List[str]:
    flags = ", ".join(mu["flags"]) or "none"
    state = "available" if mu["available"] else f"not available: {mu['reason']}"
    return ["Matrix unit (Intel AMX):", f"  {state}",
            f"  CPU flags: {flags}; OS tile state: {'on' if mu['os_enabled'] else 'off'}; "
            f"permission: {mu['permission']}",
            f"  matrix kernels: {mu['matrix_kernels']}",
            f"  FASTATTN_ISA: {mu['isa_override'] or 'not set'}"]


def show_config(mode: str = "stdout", file: Optional[TextIO] = None) -> Optional[Dict[str, Any]]:
    """Report this build of fastattn and how it runs in this process.

    The report gives the version; the compiler and its flags (per ISA kernel
    too); each ISA path, whether it is compiled, available on this CPU and
    chosen, with the reason any path is off; the matrix unit (Intel AMX):
    available or why not, its CPU flags, what runs the matrix kernels and
    the ``FASTATTN_ISA`` override (reading it runs the AMX gate, which on a
    CPU with AMX asks the kernel for the tile permission, as the first
    matrix-unit call would); OpenMP or serial, and the
    runtime library loaded; the thread count and where it came from; and,
    when threadpoolctl is installed, the thread pools loaded in the process
    (NumPy's BLAS among them), as ``numpy.show_runtime()`` does.

    Parameters
    ----------
    mode : {"stdout", "dicts", "json"}
        Print the report (``"stdout"``), return it as a dict (``"dicts"``)
        or print it as JSON (``"json"``).
    file : file-like or None
        Where to print (default ``sys.stdout``).

    Returns
    -------
    dict or None
        The report for ``mode="dicts"``, else None.
    """
    if mode not in ("stdout", "dicts", "json"):
        raise ValueError(f"mode must be 'stdout', 'dicts' or 'json', got {mode!r}")
    cfg = config()
    if mode == "dicts":
        return cfg
    text = json.dumps(cfg, indent=2, default=str) if mode == "json" else _format(cfg)
    print(text, file=file if file is not None else sys.stdout)
    return None
