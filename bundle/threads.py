"""Torch threads that fit the machine: never more than the cores this process may run on.

torch starts one intra-op thread per core it sees, and it sees every core of the machine: it ignores a container's
CPU quota (cgroup `cpu.max`, or `cpu.cfs_quota_us` under cgroup v1), so a pod limited to 2 CPUs on a 64-core node
runs 32+ threads that spin against each other. Threads that outnumber the cores are not a fair share, they are a
collapse: on a 2-core machine with one core taken by another process, a 2-thread prediction ran 7x slower
(issue "Close to the machine's limit").

`available_cores` is the smaller of the CPU affinity mask (`taskset`, SLURM's cpuset) and the cgroup quota rounded
up; `configure_threads`, early in the configs' `initialize`, sets torch's threads to `--threads` when given, else to
`OMP_NUM_THREADS` when set, else to the available cores. Data-loader worker processes are not subtracted: each runs
one torch thread and mostly waits; whether training gains from subtracting them is not measured yet.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

from bundle.errors import input_error

CGROUP_ROOT = Path("/sys/fs/cgroup")
logger = logging.getLogger("mitoda.threads")


def cgroup_cpu_limit(root: str | os.PathLike = CGROUP_ROOT, proc_cgroup: str | os.PathLike = "/proc/self/cgroup",
                     ) -> float | None:  # fmt: skip
    """The CPU quota of this process's cgroup in cores (e.g. 1.5), or None when there is none or it cannot be read.

    cgroup v2: `cpu.max` ("QUOTA PERIOD" or "max PERIOD") in the process's own cgroup folder (from `proc_cgroup`'s
    `0::PATH` line) or at the root; cgroup v1: `cpu/cpu.cfs_quota_us` over `cpu/cpu.cfs_period_us` (-1: none)."""
    root = Path(root)
    own = ""
    try:
        own = next((line.split("::", 1)[1].strip() for line in Path(proc_cgroup).read_text().splitlines()
                    if line.startswith("0::")), "")  # fmt: skip
    except OSError:
        pass
    for folder in dict.fromkeys([root / own.lstrip("/"), root]):
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
        except (OSError, ValueError):
            continue
        return None if quota == "max" else int(quota) / int(period)
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def available_cores(root: str | os.PathLike = CGROUP_ROOT, proc_cgroup: str | os.PathLike = "/proc/self/cgroup",
                    ) -> int:  # fmt: skip
    """The cores this process may use: its CPU affinity mask, capped by its cgroup quota (rounded up), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_limit(root, proc_cgroup)
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


def thread_count(threads: int | None = None, cores: int | None = None) -> tuple[int, str]:
    """The torch threads to run with and why: `threads` when given, else OMP_NUM_THREADS when set, else `cores`
    (default `available_cores()`)."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise input_error("--threads", f"{threads!r} is not a number of threads",
                              "pass a whole number >= 1, or leave it out to use the available cores")  # fmt: skip
        return threads, "--threads"
    environ = os.environ.get("OMP_NUM_THREADS", "").strip()
    if environ.isdigit() and int(environ) >= 1:
        return int(environ), "OMP_NUM_THREADS"
    cores = available_cores() if cores is None else cores
    return cores, f"{cores} available cores"


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads by `thread_count`'s rule (`threads`: `--threads`, None: derive it), log it, and
    return the count."""
    count, reason = thread_count(threads)
    torch.set_num_threads(count)
    logger.info("torch threads: %d (%s)", count, reason)
    return count
