"""The thread rule: torch threads never outnumber the cores this process may use (affinity mask, cgroup quota) and
leave the cores that other processes keep busy to them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from bundle.errors import InputError
from bundle.threads import available_cores, busy_between, busy_cores, cgroup_cpu_limit, configure_threads, thread_count


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


def test_thread_count_order(monkeypatch, eight_cores):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert thread_count(cores=3, busy=0) == (3, "3 available cores")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # our docs' advice for two jobs side by side
    assert thread_count(cores=3, busy=0) == (1, "OMP_NUM_THREADS")
    assert thread_count(4, cores=3, busy=7) == (4, "--threads")  # the user's word wins
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    assert thread_count(cores=2, busy=0)[0] == 2


def stat_text(ticks: dict[int, tuple[int, int]]) -> str:
    """A /proc/stat text with, per CPU, `(user, idle)` ticks (the other fields 0)."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"] + [f"cpu{cpu} {user} 0 0 {idle} 0 0 0 0 0 0" for cpu, (user, idle) in ticks.items()]
    return "\n".join(lines + ["intr 1 2 3", "ctxt 4"]) + "\n"


def test_busy_between_counts_cores_more_than_half_busy():
    before = stat_text({0: (100, 100), 1: (100, 100), 2: (100, 100), 3: (100, 100)})
    after = stat_text({0: (200, 100), 1: (140, 160), 2: (190, 110), 3: (100, 200)})  # 100 %, 40 %, 90 %, 0 % busy
    assert busy_between(before, after, {0, 1, 2, 3}) == 2
    assert busy_between(before, after, {1, 3}) == 0  # only the CPUs of the affinity mask count
    assert busy_between(before, after, {0, 1, 2, 3}, own_cores=1.1) == 1  # this process's own work is not "other"
    assert busy_between(before, after, {0}, own_cores=2.0) == 0
    assert busy_between(before, before, {0, 1}) == 0  # no ticks between the readings


def test_thread_count_leaves_busy_cores_on_a_faked_mask(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert thread_count(cores=2, busy=1) == (1, "2 available cores, 1 busy with other processes")
    assert thread_count(cores=2, busy=2)[0] == 1  # never below one thread
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert thread_count(cores=2, busy=5) == (2, "2 available cores")  # a quota of 2 on a mask of 8: 3 are free
    assert thread_count(cores=2, busy=7)[0] == 1


def test_busy_cores_sees_a_spinning_process():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert busy_cores(interval=0.5) >= 1
    finally:
        spinner.kill()


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
