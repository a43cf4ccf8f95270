"""Torch threads that fit the machine: never more than the cores this process may run on.

torch starts one intra-op thread per core it sees, and it sees every core of the machine: it ignores a container's
CPU quota (cgroup `cpu.max`, or `cpu.cfs_quota_us` under cgroup v1), so a pod limited to 2 CPUs on a 64-core node
runs 32+ threads that spin against each other. Threads that outnumber the cores are not a fair share, they are a
collapse: on a 2-core machine with one core taken by another process, a 2-thread prediction ran 7x slower
(issue "Close to the machine's limit").

`available_cores` is the smaller of the CPU affinity mask (`taskset`, SLURM's cpuset) and the cgroup quota rounded
up; `busy_cores` counts those of the mask that other processes keep busy, from two readings of `/proc/stat` a quarter
of a second apart (this process's own CPU time over the interval is not counted). `configure_threads`, early in the
configs' `initialize`, sets torch's threads to `--threads` when given, else to `OMP_NUM_THREADS` when set, else to the
available cores less the busy ones (at least 1). The count is decided once, at the start, and logged with its reason:
a job that starts beside another takes the free cores and keeps them. Data-loader worker processes are not
subtracted: each runs one torch thread and mostly waits (docs/results.md, "Speed").
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch

from bundle.errors import input_error

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_STAT = Path("/proc/stat")
BUSY_SHARE = 0.5  # a core more than half busy with other processes' work over the sample counts as taken
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


def affinity_mask() -> set[int]:
    """The CPUs this process may run on (`taskset`, a cpuset); every CPU where the platform cannot say."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def available_cores(root: str | os.PathLike = CGROUP_ROOT, proc_cgroup: str | os.PathLike = "/proc/self/cgroup",
                    ) -> int:  # fmt: skip
    """The cores this process may use: its CPU affinity mask, capped by its cgroup quota (rounded up), at least 1."""
    cores = len(affinity_mask())
    quota = cgroup_cpu_limit(root, proc_cgroup)
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


def cpu_jiffies(stat: str) -> dict[int, tuple[int, int]]:
    """Per CPU of a `/proc/stat` text: (busy, total) clock ticks since boot; iowait counts as idle."""
    ticks = {}
    for line in stat.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal (guest is in user)
            ticks[int(name[3:])] = (sum(values) - values[3] - values[4], sum(values))
    return ticks


def busy_between(before: str, after: str, cpus: set[int], own_cores: float = 0.0) -> int:
    """How many of `cpus` were more than BUSY_SHARE busy between two `/proc/stat` texts, less `own_cores` (this
    process's CPU time over the interval, in cores, rounded), never below 0."""
    first, second = cpu_jiffies(before), cpu_jiffies(after)
    busy = 0
    for cpu in cpus & first.keys() & second.keys():
        work, total = second[cpu][0] - first[cpu][0], second[cpu][1] - first[cpu][1]
        busy += total > 0 and work / total > BUSY_SHARE
    return max(0, busy - round(own_cores))


def busy_cores(interval: float = 0.25, stat: str | os.PathLike = PROC_STAT) -> int:
    """The cores of this process's affinity mask that other processes keep busy, over `interval` seconds; 0 where
    `/proc/stat` cannot be read (not Linux)."""
    cpus = affinity_mask()
    try:
        before, own = Path(stat).read_text(), os.times()
        time.sleep(interval)
        after, now = Path(stat).read_text(), os.times()
    except OSError:
        return 0
    own_cores = (now.user + now.system - own.user - own.system) / interval
    return busy_between(before, after, cpus, own_cores)


def thread_count(threads: int | None = None, cores: int | None = None, busy: int | None = None) -> tuple[int, str]:
    """The torch threads to run with and why: `threads` when given, else OMP_NUM_THREADS when set, else `cores`
    (default `available_cores()`) or, when fewer, the CPUs of the affinity mask that `busy` (default `busy_cores()`)
    leaves free, at least 1."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise input_error("--threads", f"{threads!r} is not a number of threads",
                              "pass a whole number >= 1, or leave it out to use the available cores")  # fmt: skip
        return threads, "--threads"
    environ = os.environ.get("OMP_NUM_THREADS", "").strip()
    if environ.isdigit() and int(environ) >= 1:
        return int(environ), "OMP_NUM_THREADS"
    cores = available_cores() if cores is None else cores
    busy = busy_cores() if busy is None else busy
    free = max(1, min(cores, len(affinity_mask()) - busy))
    if free < cores:
        return free, f"{cores} available cores, {busy} busy with other processes"
    return cores, f"{cores} available cores"


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads by `thread_count`'s rule (`threads`: `--threads`, None: derive it), log it, and
    return the count."""
    count, reason = thread_count(threads)
    torch.set_num_threads(count)
    logger.info("torch threads: %d (%s)", count, reason)
    return count
