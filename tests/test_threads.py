"""The thread rule: torch threads never outnumber the cores this process may use (affinity mask, cgroup quota)."""

from __future__ import annotations

import os

import pytest
import torch

from bundle.errors import InputError
from bundle.threads import available_cores, cgroup_cpu_limit, configure_threads, thread_count


def cgroup_v2(root, own: str, cpu_max: str):
    """A fake cgroup v2 tree with `cpu_max` in the process's own folder `own`; returns the /proc/self/cgroup file."""
    folder = root / own.lstrip("/")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.max").write_text(cpu_max + "\n")
    proc = root / "proc_self_cgroup"
    proc.write_text(f"0::{own}\n")
    return proc


def cgroup_v1(root, quota: int, period: int = 100000):
    """A fake cgroup v1 tree (cpu controller) with a CFS quota; returns a /proc/self/cgroup without a v2 line."""
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    proc = root / "proc_self_cgroup"
    proc.write_text("1:cpu:/\n")
    return proc


@pytest.fixture
def eight_cores(monkeypatch):
    """An affinity mask of 8 cores (whatever this machine has)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def test_affinity_mask_limits_cores(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)  # e.g. taskset -c 3
    assert available_cores(tmp_path, tmp_path / "none") == 1


def test_cgroup_v2_quota_caps_the_affinity_mask(tmp_path, eight_cores):
    proc = cgroup_v2(tmp_path, "/kubepods/pod1", "150000 100000")  # a pod limited to 1.5 CPUs
    assert cgroup_cpu_limit(tmp_path, proc) == pytest.approx(1.5)
    assert available_cores(tmp_path, proc) == 2  # rounded up
    assert available_cores(tmp_path, cgroup_v2(tmp_path / "free", "/", "max 100000")) == 8


def test_cgroup_v1_quota_caps_the_affinity_mask(tmp_path, eight_cores):
    assert available_cores(tmp_path, cgroup_v1(tmp_path, 300000)) == 3
    assert available_cores(tmp_path / "none", cgroup_v1(tmp_path / "none", -1)) == 8  # -1: no quota
    assert available_cores(tmp_path / "missing", tmp_path / "missing" / "cgroup") == 8  # nothing readable


def test_quota_larger_than_the_mask_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert available_cores(tmp_path, cgroup_v2(tmp_path, "/", "800000 100000")) == 2


def test_thread_count_order(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert thread_count(cores=3) == (3, "3 available cores")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # our docs' advice for two jobs side by side
    assert thread_count(cores=3) == (1, "OMP_NUM_THREADS")
    assert thread_count(4, cores=3) == (4, "--threads")  # the user's word wins
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    assert thread_count(cores=2)[0] == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_threads_is_one_line(bad):
    with pytest.raises(InputError, match=r"^--threads: .* is not a number of threads; pass a whole number"):
        thread_count(bad)


def test_configure_threads_sets_torch(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert configure_threads(2) == 2 and torch.get_num_threads() == 2
        monkeypatch.setattr("bundle.threads.available_cores", lambda: 1)
        assert configure_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
