"""How many threads fastattn uses, and where that number came from.

The default, chosen once at import, is the first of:

1. ``FASTATTN_NUM_THREADS``;
2. ``OMP_NUM_THREADS`` (the OpenMP runtime reads it itself);
3. the CPUs this process may use: its affinity mask, capped by the cgroup
   (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) CPU
   quota, rounded down but at least 1, as scikit-learn does for containers.

A variable that is set but not a positive integer is skipped for the next
rule, and its message returned to the caller (``import fastattn`` turns it
into an ImportError; the command line into one error line).

``set_num_threads`` changes it for later calls, a call's ``num_threads=``
for that call alone.  The OpenMP thread count of the calling thread, when
lowered below what it was at import (``threadpoolctl.threadpool_limits(n,
user_api="openmp")`` does that), caps the setting.
"""
from __future__ import annotations

import math
import os
from typing import Dict, Optional

import numpy as np

from . import _core

_source = "OpenMP default"


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _cgroup_paths() -> dict[str, str]:
    """This process's cgroup path per hierarchy ("" for v2, else the v1
    controllers, e.g. "cpu,cpuacct"), from /proc/self/cgroup."""
    paths = {}
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths[parts[1]] = parts[2].lstrip("/")
    return paths


def cgroup_cpu_quota() -> Optional[float]:
    """The CPU quota of this process's cgroup in CPUs, or None when unlimited
    or unknown (cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``)."""
    paths = _cgroup_paths()
    for base in dict.fromkeys([os.path.join("/sys/fs/cgroup", paths.get("", "")),
                               "/sys/fs/cgroup"]):
        fields = (_read(os.path.join(base, "cpu.max")) or "").split()
        if len(fields) == 2:
            return None if fields[0] == "max" else int(fields[0]) / int(fields[1])
    rel = next((p for k, p in paths.items() if "cpu" in k.split(",")), "")
    for base in ("/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"):
        for d in dict.fromkeys([os.path.join(base, rel), base]):
            quota = _read(os.path.join(d, "cpu.cfs_quota_us"))
            period = _read(os.path.join(d, "cpu.cfs_period_us"))
            if quota and period:
                q, t = int(quota), int(period)
                return q / t if q > 0 and t > 0 else None
    return None


def available_cpus() -> int:
    """CPUs this process may run on: affinity mask, capped by the cgroup
    quota (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return max(1, n)


def _env_count(name: str) -> Optional[int]:
    """The thread count in the environment variable ``name`` (None when
    unset or blank); ValueError unless it is a positive integer (OpenMP's
    list form, ``"4,2"``, gives its first entry)."""
    raw = os.environ.get(name, "")
    text = raw.strip()
    if not text:
        return None
    try:
        n = int(text.split(",")[0])
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return min(n, 1 << 16)


def init_default() -> Dict[str, str]:
    """Apply the default thread count (called once, at import).

    Returns
    -------
    dict
        ``{variable: message}`` for each thread-count variable that is set
        to something other than a positive integer (and was skipped).
    """
    global _source
    errors: Dict[str, str] = {}
    for name in ("FASTATTN_NUM_THREADS", "OMP_NUM_THREADS"):
        try:
            n = _env_count(name)
        except ValueError as e:
            errors[name] = str(e)
            continue
        if n is None:
            continue
        if name == "FASTATTN_NUM_THREADS":
            _core.set_num_threads(n)
        # else: the OpenMP runtime applies OMP_NUM_THREADS itself
        _source = name
        return errors
    _core.set_num_threads(available_cpus())
    _source = "CPUs available to the process (affinity, cgroup quota)"
    return errors


def check_num_threads(n: object, name: str = "num_threads") -> int:
    """``n`` as a thread count (an int >= 1), else TypeError or ValueError."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    return int(min(int(n), 1 << 16))


def call_threads(n: object) -> int:
    """A call's ``num_threads=`` as the core's code: 0 for None (the current
    setting), else the checked count."""
    return 0 if n is None else check_num_threads(n)


def set_num_threads(n: int) -> int:
    """Use at most ``n`` threads (an int >= 1) in later calls.

    Parameters
    ----------
    n : int
        The thread count; a call's own ``num_threads=`` overrides it.

    Returns
    -------
    int
        The previous setting (what :func:`get_num_threads` returned).
    """
    global _source
    count = check_num_threads(n, "n")
    previous = get_num_threads()
    _core.set_num_threads(count)
    _source = "set_num_threads()"
    return previous


def get_num_threads() -> int:
    """The number of threads later calls may use (1 in a build without
    OpenMP).

    Returns
    -------
    int
        The count for a call from this thread without ``num_threads=``.
    """
    return int(_core.get_num_threads())


def num_threads_source() -> str:
    """Where the current thread count came from, for the runtime report."""
    if not _core.has_openmp():
        return "serial build (no OpenMP)"
    return _source
