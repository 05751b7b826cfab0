"""The CPUs this process may use, torch-free: the parent sizes its workers' threads with it.

`available_cpus` follows the affinity mask (taskset, SLURM, cpusets) and a cgroup CPU quota
(containers); `os.cpu_count()` sees neither.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def available_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity mask (taskset, SLURM, cpusets), capped by a
    cgroup CPU quota (containers); `os.cpu_count()` sees neither."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return max(1, n)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs' worth of time the cgroup of this process may use, or None when unlimited.
    cgroup v2 (`cpu.max`) in this process's own group and the root; else cgroup v1."""
    own = _own_cgroup_v2()
    for path in ([root / own.lstrip("/") / "cpu.max"] if own else []) + [root / "cpu.max"]:
        quota = parse_cpu_max(_read(path))
        if quota is not None:
            return quota
    return parse_cfs_quota(_read(root / "cpu" / "cpu.cfs_quota_us"),
                           _read(root / "cpu" / "cpu.cfs_period_us"))


def parse_cpu_max(text: str | None) -> float | None:
    """cgroup v2 `cpu.max` ("max 100000" or "QUOTA PERIOD") as a number of CPUs."""
    parts = (text or "").split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        return int(parts[0]) / int(parts[1])
    except (ValueError, ZeroDivisionError):
        return None


def parse_cfs_quota(quota: str | None, period: str | None) -> float | None:
    """cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` as a number of CPUs (-1: none)."""
    try:
        q, p = int((quota or "").strip()), int((period or "").strip())
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _own_cgroup_v2() -> str | None:
    for line in (_read(Path("/proc/self/cgroup")) or "").splitlines():
        if line.startswith("0::"):
            return line[3:].strip()
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
