"""The CPUs a process may use, and the compute thread pools (torch, FAISS) sized to them.

torch and FAISS size their OpenMP pools by the cores they see, never by a container's CPU
limit: a pod limited to 2 CPUs on a 64-core node would run 64 threads, and the CFS quota
stops all of them for the rest of each period once 2 CPUs' worth is spent. Processes
sharing cores fare no better: OpenMP threads spin while they wait for each other, so
services with a pool per core each stall one another (measured: two generation processes
on two cores, first-token p95 of 0.2–1.7 s; with one thread each, 66–85 ms). The pools
are therefore sized once at start, to ``RAGMESH_COMPUTE_THREADS`` or, when it is 0, to
:func:`available`.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
MEMBERSHIP = Path("/proc/self/cgroup")
# pools of the libraries loaded later (OpenBLAS, MKL, the tokenizers' rayon pool) read these
POOL_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_limit(text: str | None) -> float | None:
    """``cpu.max`` ("max 100000" or "200000 100000") as CPUs; None when unlimited."""
    if not text:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max" or not period:
        return None
    return int(quota) / int(period)


def cpu_limit(root: Path = CGROUP_ROOT, membership: Path = MEMBERSHIP) -> float | None:
    """The CPU limit (Kubernetes ``resources.limits.cpu``) of this process's cgroup, in CPUs.

    cgroup v2: the smallest ``cpu.max`` of the process's cgroup and its ancestors. cgroup v1:
    ``cpu.cfs_quota_us / cpu.cfs_period_us`` of the ``cpu`` controller's mount (a
    container's own cgroup). None when there is no limit or no cgroup file to read.
    """
    lines = (_read(membership) or "").splitlines()
    v2 = next((line[3:] for line in lines if line.startswith("0::")), None)
    if v2 is not None and (root / "cgroup.controllers").exists():
        limits = []
        directory = root / v2.strip("/")
        while True:
            limit = _v2_limit(_read(directory / "cpu.max"))
            if limit is not None:
                limits.append(limit)
            if directory == root or root not in directory.parents:
                break
            directory = directory.parent
        return min(limits, default=None)
    quota, period = (
        _read(root / "cpu" / "cpu.cfs_quota_us"),
        _read(root / "cpu" / "cpu.cfs_period_us"),
    )
    if quota and period and int(quota) > 0 and int(period) > 0:
        return int(quota) / int(period)
    return None


def available(limit: float | None = None) -> int:
    """CPUs this process may use: its affinity mask, capped by the CPU limit rounded down
    (at least 1); ``limit`` defaults to :func:`cpu_limit`."""
    cpus = len(os.sched_getaffinity(0))
    limit = cpu_limit() if limit is None else limit
    if limit is not None:
        cpus = min(cpus, max(1, math.floor(limit)))
    return cpus


def size_pools(setting: int, *libraries: str) -> int:
    """Size the compute pools of ``libraries`` ("torch", "faiss") and of any library loaded
    later to ``setting`` threads, or to :func:`available` when it is 0; returns the count."""
    threads = setting or available()
    for name in POOL_VARIABLES:
        os.environ[name] = str(threads)
    if "torch" in libraries:
        import torch

        torch.set_num_threads(threads)
    if "faiss" in libraries:
        import faiss

        faiss.omp_set_num_threads(threads)
    why = "RAGMESH_COMPUTE_THREADS" if setting else f"CPU limit {cpu_limit() or 'none'}"
    log.info(
        "compute threads: %d (%s; %d CPUs in the affinity mask)",
        threads,
        why,
        len(os.sched_getaffinity(0)),
    )
    return threads
