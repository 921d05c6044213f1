"""``fastattn.show_config()``: what this build is and what it does here.

The report gathers the build facts compiled into ``_core`` (compiler, flags,
kernels), the ISA paths and why any is off, the threading runtime actually
loaded in this process, the thread count and where it came from, and, when
threadpoolctl is installed, the thread pools of NumPy's BLAS (as
``numpy.show_runtime()`` does) beside fastattn's own OpenMP pool.

It also owns the environment read at import: ``FASTATTN_ISA`` here, the
thread counts in ``_threads``.  :func:`apply_environment` applies them and
keeps the message of any variable with an invalid value, which the package
raises as an ImportError and the ``fastattn`` command reports as one line.
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


_THREAD_VARIABLES = ("FASTATTN_NUM_THREADS", "OMP_NUM_THREADS")


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


# {variable: message} for each environment variable that had an invalid
# value at import (and was ignored); filled by apply_environment()
_env_errors: Dict[str, str] = {}


def _apply_isa() -> None:
    """Force the path FASTATTN_ISA names (case and blanks ignored), if set."""
    raw = os.environ.get("FASTATTN_ISA", "")
    name = raw.strip().lower()
    if not name:
        return
    if name not in _core.isa_names():
        raise ValueError(f"FASTATTN_ISA must be one of {', '.join(_core.isa_available())} "
                         f"(the ISA paths of this CPU) or unset, got {raw!r}")
    try:
        _core.set_isa(name)
    except ValueError as e:
        raise ValueError(f"FASTATTN_ISA={raw!r} cannot be used: {e}") from None


def apply_environment() -> Dict[str, str]:
    """Apply ``FASTATTN_ISA`` and the thread-count variables (once, at
    import).  A variable with an invalid value is ignored (the default
    applies instead) and its message kept for :func:`environment_errors`,
    which is also returned."""
    _env_errors.clear()
    try:
        _apply_isa()
    except ValueError as e:
        _env_errors["FASTATTN_ISA"] = str(e)
    _env_errors.update(_threads.init_default())
    return dict(_env_errors)


def environment_errors() -> Dict[str, str]:
    """``{variable: message}`` for each environment variable that had an
    invalid value when fastattn was imported (empty when all were fine)."""
    return dict(_env_errors)


def started_by_command_line() -> bool:
    """Whether this process is the ``fastattn`` command starting: ``python
    -m fastattn[.module]`` (while Python locates the module, ``sys.argv[0]``
    is ``"-m"``) or the ``fastattn`` console script.  The command reports an
    invalid environment variable as one error line, so ``import fastattn``
    then does not raise (``fastattn --help`` and ``fastattn info`` still
    work)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 != "-m":
        return os.path.basename(argv0) == "fastattn"
    args = list(getattr(sys, "orig_argv", []))
    for i, arg in enumerate(args[1:], 1):
        if arg == "-m" or arg.startswith("-m"):
            module = arg[2:] or (args[i + 1] if i + 1 < len(args) else "")
            return module == "fastattn" or module.startswith("fastattn.")
    return False


def isa_override() -> Optional[str]:
    """The path FASTATTN_ISA forces (as read at import), or None (also when
    its value was invalid and ignored)."""
    if "FASTATTN_ISA" in _env_errors:
        return None
    forced = os.environ.get("FASTATTN_ISA", "").strip().lower()
    return forced or None


def matrix_unit() -> Dict[str, Any]:
    """The matrix unit (Intel AMX): whether the matrix kernels run on it
    and why not, its CPUID flags, and the path the matrix kernels use in
    this process (the tiles, their emulation, or none).  A report only: it
    never asks the kernel for the tile permission (the first matrix-unit
    call does), so before that call a CPU with AMX reports the tiles as
    undecided."""
    status = dict(_core.amx_status(request=False))
    self_test = _core.tile_self_test_status()
    isa = _core.get_isa()
    if isa == "amx_emu":
        used = "the tile emulation (forced by FASTATTN_ISA=amx_emu)"
    elif isa == "amx" and status["available"]:
        used = "the AMX tiles"
    elif isa == "amx" and self_test["state"] == "failed":
        used = "none: the amx path runs like avx512 (the tiles failed their self-test)"
    elif isa == "amx" and status["reason"].startswith("undecided"):
        used = ("the AMX tiles once the first matrix-unit call is granted the permission "
                "and they pass the self-test")
    elif isa == "amx":
        used = "none: the amx path runs like avx512 (the tiles are refused)"
    else:
        used = f"none: the {isa} path has no matrix kernels"
    return {"available": bool(status["available"]), "reason": str(status["reason"]),
            "flags": [label for key, label in _AMX_FLAGS if status.get(key)],
            "os_enabled": bool(status.get("os_enabled")),
            "permission": status.get("permission"), "compiled": bool(status.get("compiled")),
            "self_test": status["self_test"] if self_test["state"] == "not run" else (
                f"{self_test['state']} in {self_test['ms']:.1f} ms: {self_test['report']}"),
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
                "bf16_dot_product": bool(_core.bf16_dot_product()),
                "bf16_tile": _core.bf16_tile_policy(),
                "env_error": _env_errors.get("FASTATTN_ISA")},
        "matrix_unit": matrix_unit(),
        "threading": {
            "runtime": "OpenMP" if openmp else "serial (built without OpenMP)",
            "library": _loaded_libraries(_OPENMP_LIBS) if openmp else [],
            "num_threads": _threads.get_num_threads(),
            "num_threads_source": _threads.num_threads_source(),
            "cpus_available": _threads.available_cpus(),
            "env_errors": [_env_errors[name] for name in _THREAD_VARIABLES
                           if name in _env_errors],
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
    if isa["env_error"]:
        lines.append(f"  error: {isa['env_error']} (ignored)")
    lines.append(f"  bfloat16 dot product (AVX512-BF16): "
                 f"{'used' if isa['bf16_dot_product'] else 'not used'}")
    lines.append(f"  bfloat16 tile policy: {isa['bf16_tile']} (FASTATTN_BF16_TILE=pairs|widen; "
                 f"acts where the CPU has AVX512-BF16)")
    lines += _format_matrix_unit(cfg["matrix_unit"])
    lines += ["Threads:", f"  runtime: {th['runtime']}"]
    lines += [f"  library: {path}" for path in th["library"]]
    lines += [f"  threads: {th['num_threads']} (from {th['num_threads_source']}; "
              f"{th['cpus_available']} CPUs available to this process)"]
    lines += [f"  error: {message} (ignored)" for message in th["env_errors"]]
    lines.append(f"Python {cfg['python']['version']}, NumPy {cfg['python']['numpy']}")
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
            f"  self-test: {mu['self_test']}",
            f"  matrix kernels: {mu['matrix_kernels']}",
            f"  FASTATTN_ISA: {mu['isa_override'] or 'not set'}"]


def show_config(mode: str = "stdout", file: Optional[TextIO] = None) -> Optional[Dict[str, Any]]:
    """Report this build of fastattn and how it runs in this process.

    The report gives the version; the compiler and its flags (per ISA kernel
    too); each ISA path, whether it is compiled, available on this CPU and
    chosen, with the reason any path is off; the matrix unit (Intel AMX):
    available or why not, its CPU flags, its self-test (not run yet, or
    passed, or which kernel and case failed and how), what runs the matrix kernels and
    the ``FASTATTN_ISA`` override (a report only: the tile permission is
    read, never requested; the first matrix-unit call requests it); OpenMP
    or serial, and the runtime library loaded; the thread count and where it came from; any
    environment variable whose invalid value was ignored (under the ISA
    paths and the threads; possible only in the ``fastattn`` command, where
    ``import fastattn`` does not raise for it); and, when threadpoolctl is
    installed, the thread pools loaded in the process
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
