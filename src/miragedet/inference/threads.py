"""How many CPUs this process may really use: its affinity mask and its cgroup's CPU quota, not
the host's count; the engines' intra-op threads and the decode threads are set from it.

A container limited to 2 CPUs on a 64-core host still sees ``os.cpu_count() == 64``; PyTorch's
OpenMP pool and ONNX Runtime's default then start a thread per host core, which oversubscribe the
2 CPUs the quota grants (Linux CFS throttles the whole group once its quota is spent). Sources
read: ``os.sched_getaffinity`` (the CPUs the process may run on, set by ``taskset`` or a
scheduler), cgroup v2 ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD";
https://docs.kernel.org/admin-guide/cgroup-v2.html#cpu-interface-files) and cgroup v1
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1: no quota;
https://docs.kernel.org/scheduler/sched-bwc.html).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Cpus:
    count: int  # CPUs this process may use (at least 1)
    host: int  # what os.cpu_count() says
    source: str  # what limited it: "affinity", "cgroup quota", or "host"

    def describe(self) -> str:
        if self.source == "host":
            return f"{self.count} CPUs"
        return f"{self.count} of the host's {self.host} CPUs ({self.source})"


def _quota(root: Path = CGROUP) -> float | None:
    """CPUs granted by the cgroup's quota (fractional), or None without one."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cpus(root: Path = CGROUP) -> Cpus:
    """The CPUs this process may use: the smaller of its affinity mask and its cgroup quota
    (rounded up: 1.5 CPUs of quota keep two threads busy part of the time)."""
    host = os.cpu_count() or 1
    count, source = host, "host"
    if hasattr(os, "sched_getaffinity"):
        allowed = len(os.sched_getaffinity(0))
        if allowed < count:
            count, source = allowed, "affinity"
    quota = _quota(root)
    if quota is not None and math.ceil(quota) < count:
        count, source = max(1, math.ceil(quota)), "cgroup quota"
    return Cpus(max(1, count), host, source)


def decode_threads(cpus: Cpus | None = None, cap: int = 8) -> int:
    """Decode threads by default: the CPUs this process may use, 2 to ``cap`` (decoding overlaps
    the forward, so two threads help even on one CPU; 8 on a CPU, where the engine needs the
    cores too; 32 when a GPU scores and the cores only decode)."""
    return min(cap, max(2, (cpus or available_cpus()).count))


def decode_threads_for(device: object, cpus: Cpus | None = None) -> int:
    """:func:`decode_threads` for a job on ``device``: up to 32 when a GPU scores (the cores
    only decode), up to 8 on a CPU (the engine needs them too)."""
    import torch

    return decode_threads(cpus, cap=32 if torch.device(device).type == "cuda" else 8)


def configure_torch(cpus: Cpus | None = None) -> int:
    """Set PyTorch's intra-op threads to the CPUs available, unless the user chose them
    (``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``) or PyTorch already uses fewer. Returns the
    number of threads PyTorch now uses."""
    import torch

    cpus = cpus or available_cpus()
    chosen = any(os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"))
    if not chosen and torch.get_num_threads() > cpus.count:
        torch.set_num_threads(cpus.count)
    return torch.get_num_threads()
