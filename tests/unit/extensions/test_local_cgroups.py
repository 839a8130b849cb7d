"""cgroups.detect and SandboxCgroup.create against a directory tree shaped like each layout.

The hybrid layout is what this machine has (tests/integration/test_local_bounds.py runs
against it for real); pure cgroup v2 with the memory controller cannot be had here, so
its file writes are checked on a tree of plain files laid out as the kernel's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxer.extensions.local import cgroups

V1_CGROUP = "9:name=systemd:/\n8:pids:/\n4:memory:/outer/job\n1:cpu,cpuacct:/\n0::/\n"


def fake_proc(tmp: Path, mountinfo: str, cgroup: str) -> Path:
    proc = tmp / "proc"
    proc.mkdir()
    (proc / "mountinfo").write_text(mountinfo)
    (proc / "cgroup").write_text(cgroup)
    return proc


def test_hybrid_v1_nests_under_our_own_cgroup(tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    for c in ("memory/outer/job", "cpu,cpuacct", "pids", "unified"):
        (fs / c).mkdir(parents=True)
    (fs / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    mountinfo = "".join(
        f"{i} 1 0:{i} / {fs / point} rw - {kind} cgroup rw,{opts}\n"
        for i, (point, kind, opts) in enumerate([
            ("memory", "cgroup", "memory"), ("cpu,cpuacct", "cgroup", "cpu,cpuacct"),
            ("pids", "cgroup", "pids"), ("unified", "cgroup2", "nsdelegate")]))
    h = cgroups.detect(proc=fake_proc(tmp_path, mountinfo, V1_CGROUP), root_only=False)
    assert h is not None
    assert h.version == 1
    assert h.parents == {"memory": fs / "memory/outer/job/sandboxer",
                         "cpu": fs / "cpu,cpuacct/sandboxer",
                         "cpuacct": fs / "cpu,cpuacct/sandboxer", "pids": fs / "pids/sandboxer"}
    cg = h.sandbox("sbx-a")
    for d in cg.unique_dirs:  # the kernel makes these files; a plain tree needs them
        d.mkdir()
    (cg.dirs["memory"] / "memory.memsw.limit_in_bytes").write_text("max")
    cg.create(memory=256 << 20, cpus=1.5, pids=100)
    assert (cg.dirs["memory"] / "memory.limit_in_bytes").read_text() == str(256 << 20)
    assert (cg.dirs["memory"] / "memory.memsw.limit_in_bytes").read_text() == str(256 << 20)
    assert (cg.dirs["cpu"] / "cpu.cfs_quota_us").read_text() == "150000"
    assert (cg.dirs["cpu"] / "cpu.cfs_period_us").read_text() == "100000"
    assert (cg.dirs["pids"] / "pids.max").read_text() == "100"
    assert cg.memory_limit() == 256 << 20
    # A process joins by itself through each directory's tasks (its one thread: no
    # threadgroup lock), once per directory that cpu and cpuacct share.
    assert cg.join_files == tuple(str(d / "tasks") for d in cg.unique_dirs)
    assert len(cg.join_files) == 3
    cg.join_self()
    assert [Path(f).read_text() for f in cg.join_files] == ["0", "0", "0"]


def test_pure_v2_uses_one_directory_under_the_root(tmp_path: Path) -> None:
    fs = tmp_path / "cgroup"
    fs.mkdir()
    (fs / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    mountinfo = f"30 1 0:26 / {fs} rw - cgroup2 cgroup2 rw,nsdelegate\n"
    h = cgroups.detect(proc=fake_proc(tmp_path, mountinfo, "0::/user.slice/x.scope\n"),
                       root_only=False)
    assert h is not None
    assert h.version == 2
    assert set(h.parents.values()) == {fs / "sandboxer"}
    assert (fs / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    cg = h.sandbox("sbx-b")
    (fs / "sandboxer" / "sbx-b").mkdir()
    (fs / "sandboxer" / "sbx-b" / "memory.swap.max").write_text("max")
    cg.create(memory=1 << 30, cpus=0.25, pids=64)
    d = fs / "sandboxer" / "sbx-b"
    assert (d / "memory.max").read_text() == str(1 << 30)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "cpu.max").read_text() == "25000 100000"
    assert (d / "pids.max").read_text() == "64"
    assert cg.join_files == (str(d / "cgroup.procs"),)  # v2 has no per-thread file


def test_no_memory_controller_means_no_cgroup(tmp_path: Path) -> None:
    fs = tmp_path / "unified"
    fs.mkdir()
    (fs / "cgroup.controllers").write_text("hugetlb\n")
    mountinfo = f"41 1 0:38 / {fs} rw - cgroup2 cgroup2 rw\n"
    assert cgroups.detect(proc=fake_proc(tmp_path, mountinfo, "0::/\n"),
                          root_only=False) is None


def test_not_root_means_no_cgroup(tmp_path: Path) -> None:
    import os

    if os.geteuid() == 0:
        assert cgroups.detect(proc=tmp_path / "missing") is None  # unreadable: none
    else:
        assert cgroups.detect() is None


def _v2_sandbox(tmp_path: Path) -> cgroups.SandboxCgroup:
    d = tmp_path / "sandboxer" / "sbx-a"
    d.mkdir(parents=True)
    return cgroups.SandboxCgroup(2, dict.fromkeys(("memory", "cpu", "pids"), d))


def test_v2_freeze_writes_cgroup_freeze_and_waits_for_the_event(tmp_path: Path) -> None:
    cg = _v2_sandbox(tmp_path)
    d = cg.dirs["memory"]
    assert cg.freezer == d / "cgroup.freeze"
    (d / "cgroup.freeze").write_text("0\n")
    (d / "cgroup.events").write_text("populated 1\nfrozen 1\n")  # what the kernel says
    cg.freeze()
    assert (d / "cgroup.freeze").read_text() == "1"
    assert cg.frozen()
    (d / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    cg.thaw()
    assert (d / "cgroup.freeze").read_text() == "0"
    assert not cg.frozen()
    with pytest.raises(OSError, match="did not reach frozen"):  # the kernel never confirms
        cg.freeze(timeout=0.05)


def test_v2_cpu_seconds_from_cpu_stat(tmp_path: Path) -> None:
    cg = _v2_sandbox(tmp_path)
    assert cg.cpu_seconds() is None
    (cg.dirs["memory"] / "cpu.stat").write_text(
        "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    assert cg.cpu_seconds() == 2.5


def test_v1_freezer_state_and_cpuacct(tmp_path: Path) -> None:
    dirs = {c: tmp_path / c / "sandboxer" / "sbx-a" for c in ("memory", "freezer", "cpuacct")}
    for d in dirs.values():
        d.mkdir(parents=True)
    cg = cgroups.SandboxCgroup(1, dirs)
    state = dirs["freezer"] / "freezer.state"
    assert cg.freezer == state
    state.write_text("THAWED\n")
    cg.freeze()  # a plain file reads back what was written: FROZEN at once
    assert state.read_text() == "FROZEN"
    assert cg.frozen()
    cg.thaw()
    assert state.read_text() == "THAWED"
    (dirs["cpuacct"] / "cpuacct.usage").write_text("1500000000\n")
    assert cg.cpu_seconds() == 1.5
    assert cgroups.SandboxCgroup(1, {"memory": dirs["memory"]}).freezer is None
