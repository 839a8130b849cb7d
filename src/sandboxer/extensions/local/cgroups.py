"""One cgroup per ext.local sandbox: memory, CPU and pids of every process it runs.

Hosts differ: pure cgroup v2 (one hierarchy at /sys/fs/cgroup), or a hybrid with v1
controllers under /sys/fs/cgroup/<controller> and v2 at /sys/fs/cgroup/unified holding
none of them. ``detect`` picks v2 when it offers the memory controller, else the v1
hierarchies of memory, cpu and pids (freezer too, for pause, and cpuacct, for activity),
else nothing — then the jail falls back to per-process rlimits and ``sandboxer doctor``
says so.

Pause is the freezer: v1 ``freezer.state`` (FROZEN / THAWED, FREEZING on the way), v2
``cgroup.freeze`` (1 / 0, ``frozen 1`` in ``cgroup.events`` once done). Activity reads
cumulative CPU time: v1 ``cpuacct.usage`` (ns), v2 ``cpu.stat`` ``usage_usec``.

v2 sandboxes live under ``<root>/sandboxer/`` (the root cgroup may hold processes, a child
of ours may not, so the parent is the hierarchy's root); v1 ones under the endpoint's own
cgroup of each controller, so a limit the host puts on sand-boxer still covers them.
Only root manages cgroups here: a non-root endpoint gets no delegation it could rely on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from sandboxer.extensions._proc import kill_all

V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer")
V2_CONTROLLERS = ("memory", "cpu", "pids")
PERIOD_US = 100_000
GROUP = "sandboxer"


@dataclass(frozen=True)
class Hierarchy:
    """Where this host's sandbox cgroups go: ``parents`` by controller (one for v2)."""

    version: int  # 1 or 2
    parents: dict[str, Path]

    def describe(self) -> str:
        if self.version == 2:
            return f"cgroup v2 under {self.parents['memory']}"
        return "cgroup v1 (" + ", ".join(f"{c} under {p}" for c, p in self.parents.items()) + ")"

    def sandbox(self, sandbox_id: str) -> SandboxCgroup:
        return SandboxCgroup(self.version, {c: p / sandbox_id for c, p in self.parents.items()})


@dataclass(frozen=True)
class SandboxCgroup:
    """The cgroup directories of one sandbox, by controller (v2: all the same one)."""

    version: int
    dirs: dict[str, Path]

    @property
    def unique_dirs(self) -> list[Path]:
        return sorted(set(self.dirs.values()))

    def create(self, *, memory: int, cpus: float, pids: int) -> None:
        """Make the directories and write the limits; an existing one is reused."""
        for d in self.unique_dirs:
            d.mkdir(mode=0o755, parents=False, exist_ok=True)
        if self.frozen():
            # Left frozen by an endpoint that died while the sandbox was paused: its jail's
            # processes could not die with it. They go now (kill thaws), and so does the
            # freeze, which would hold the new jail too.
            self.kill()
        quota = max(1000, int(cpus * PERIOD_US))
        if self.version == 2:
            d = self.dirs["memory"]
            _write(d / "memory.max", str(memory))
            _write_if_present(d / "memory.swap.max", "0")
            if "cpu" in self.dirs:
                _write(d / "cpu.max", f"{quota} {PERIOD_US}")
            if "pids" in self.dirs:
                _write(d / "pids.max", str(pids))
            return
        if "memory" in self.dirs:
            m = self.dirs["memory"]
            _write(m / "memory.limit_in_bytes", str(memory))
            # Swap counts too (memsw >= limit, so written second): no way round the bound.
            _write_if_present(m / "memory.memsw.limit_in_bytes", str(memory))
        if "cpu" in self.dirs:
            _write(self.dirs["cpu"] / "cpu.cfs_period_us", str(PERIOD_US))
            _write(self.dirs["cpu"] / "cpu.cfs_quota_us", str(quota))
        if "pids" in self.dirs:
            _write(self.dirs["pids"] / "pids.max", str(pids))

    @property
    def join_files(self) -> tuple[str, ...]:
        """What a process writes ``0`` to, to move itself into every directory: on v2 each
        ``cgroup.procs``, on v1 each ``tasks``. A v1 ``tasks`` file with ``0`` moves the
        writing thread, which is the whole process between a fork and its exec. Unlike a
        pid written anywhere, it takes no threadgroup lock, whose first taker waits for an
        RCU grace period (here 5.6 ms against 0.7 ms for the five v1 controllers)."""
        name = "cgroup.procs" if self.version == 2 else "tasks"
        return tuple(str(d / name) for d in self.unique_dirs)

    def join_self(self) -> None:
        """Move the calling process into every directory; for a child's preexec step (one
        thread: ``join_files``)."""
        for path in self.join_files:
            _write(Path(path), "0")

    def add(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into every directory."""
        for d in self.unique_dirs:
            with open(d / "cgroup.procs", "w") as f:
                f.write(str(pid))

    def pids(self) -> set[int]:
        out: set[int] = set()
        for d in self.unique_dirs:
            with contextlib.suppress(OSError):
                out |= {int(x) for x in (d / "cgroup.procs").read_text().split()}
        return out

    def memory_limit(self) -> int | None:
        name = "memory.max" if self.version == 2 else "memory.limit_in_bytes"
        try:
            return int((self.dirs["memory"] / name).read_text().strip())
        except (KeyError, OSError, ValueError):
            return None

    def kill(self, timeout: float = 3.0) -> None:
        """SIGKILL every process in the sandbox until none is left (forks race the loop).
        A frozen sandbox is thawed once the signals are sent (a v1 frozen task dies only
        when it runs again)."""
        kill_file = self.dirs.get("memory", Path("/nonexistent")) / "cgroup.kill"
        if self.version == 2 and kill_file.exists():
            _write(kill_file, "1")
        if self.frozen():
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.thaw()
        if left := kill_all(self.pids, timeout):
            raise OSError(f"processes survive SIGKILL in {self.unique_dirs}: {sorted(left)}")

    @property
    def freezer(self) -> Path | None:
        """The file that freezes this sandbox, or None when the hierarchy has no freezer."""
        if self.version == 2:
            d = self.dirs.get("memory")
            return None if d is None else d / "cgroup.freeze"
        d = self.dirs.get("freezer")
        return None if d is None else d / "freezer.state"

    def frozen(self) -> bool:
        """Whether the sandbox is frozen (or freezing) now."""
        f = self.freezer
        try:
            value = f.read_text().strip() if f is not None else ""
        except OSError:
            return False
        return value in ("1", "FROZEN", "FREEZING")

    def freeze(self, timeout: float = 10.0) -> None:
        """Freeze every process; returns once the kernel says all are frozen."""
        self._set_frozen(True, timeout)

    def thaw(self, timeout: float = 10.0) -> None:
        """Thaw every process; returns once the kernel says none is frozen."""
        self._set_frozen(False, timeout)

    def try_set_frozen(self, frozen: bool) -> bool:
        """Write the freezer once; whether the kernel is done already (a thaw, a freeze of
        sleeping tasks: the common case, with no wait worth a thread)."""
        f = self._freezer_file()
        _write(f, self._value(frozen))
        return self._reached(f, frozen)

    def _freezer_file(self) -> Path:
        f = self.freezer
        if f is None:
            raise OSError(f"no freezer cgroup for {self.unique_dirs}")
        return f

    def _value(self, frozen: bool) -> str:
        if self.version == 2:
            return "1" if frozen else "0"
        return "FROZEN" if frozen else "THAWED"

    def _set_frozen(self, frozen: bool, timeout: float) -> None:
        f = self._freezer_file()
        value = self._value(frozen)
        _write(f, value)
        deadline = time.monotonic() + timeout
        delay = 0.0002
        while not self._reached(f, frozen):
            if time.monotonic() > deadline:
                raise OSError(f"{f} did not reach {'frozen' if frozen else 'thawed'} "
                              f"within {timeout:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
            if self.version == 1 and frozen:
                _write(f, value)  # FREEZING: a task was busy in the kernel; try again

    def _reached(self, f: Path, frozen: bool) -> bool:
        if self.version == 2:
            return f"frozen {int(frozen)}" in (f.parent / "cgroup.events").read_text().split("\n")
        return f.read_text().strip() == ("FROZEN" if frozen else "THAWED")

    def cpu_seconds(self) -> float | None:
        """Cumulative CPU time of every process the sandbox ran (None: not accounted)."""
        try:
            if self.version == 2:
                d = self.dirs.get("memory")
                if d is None:
                    return None
                for line in (d / "cpu.stat").read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "usage_usec":
                        return int(value) / 1e6
                return None
            d = self.dirs.get("cpuacct")
            if d is None:
                return None
            return int((d / "cpuacct.usage").read_text()) / 1e9
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        """Kill what is left and remove the directories; absent is fine."""
        if not any(d.exists() for d in self.unique_dirs):
            return
        self.kill()
        for d in self.unique_dirs:
            for _ in range(50):  # a killed task leaves the cgroup a moment after it dies
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _write_if_present(path: Path, value: str) -> None:
    if path.exists():
        _write(path, value)


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(mount root, mount point, fs type, super options) of every cgroup mount."""
    out = []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3 or rfields[0] not in ("cgroup", "cgroup2"):
            continue
        out.append((fields[3], fields[4], rfields[0], set(rfields[2].split(","))))
    return out


def detect(*, proc: Path = Path("/proc/self"), root_only: bool = True) -> Hierarchy | None:
    """This host's cgroup layout for sandboxes, or None when we cannot manage one."""
    if root_only and os.geteuid() != 0:
        return None
    try:
        mounts = _mounts((proc / "mountinfo").read_text())
        own = dict(_own_paths((proc / "cgroup").read_text()))
    except OSError:
        return None
    for mroot, point, fstype, _opts in mounts:
        if fstype != "cgroup2" or mroot != "/":
            continue
        base = Path(point)
        try:
            available = set((base / "cgroup.controllers").read_text().split())
        except OSError:
            continue
        if "memory" not in available:
            continue
        parent = base / GROUP
        wanted = [c for c in V2_CONTROLLERS if c in available]
        try:
            parent.mkdir(mode=0o755, exist_ok=True)
            enable = " ".join(f"+{c}" for c in wanted)
            _write(base / "cgroup.subtree_control", enable)
            _write(parent / "cgroup.subtree_control", enable)
        except OSError:
            return None
        _cap_all_sandboxes(parent / "memory.max", None)
        return Hierarchy(2, dict.fromkeys(wanted, parent))
    parents: dict[str, Path] = {}
    for controller in V1_CONTROLLERS:
        for mroot, point, fstype, opts in mounts:
            if fstype != "cgroup" or controller not in opts or controller not in own:
                continue
            rel = os.path.relpath(own[controller], mroot) if own[controller] != mroot else "."
            if rel.startswith(".."):
                continue  # our cgroup is outside what this mount shows
            parent = Path(point) / rel / GROUP
            try:
                parent.mkdir(mode=0o755, exist_ok=True)
            except OSError:
                continue
            parents[controller] = parent
            break
    if "memory" not in parents:
        return None
    m = parents["memory"]
    _cap_all_sandboxes(m / "memory.limit_in_bytes", m / "memory.memsw.limit_in_bytes")
    return Hierarchy(1, parents)


def host_cap(meminfo: str) -> int | None:
    """What all sandboxes together may use: the host's memory less max(1 GiB, 10 %)."""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
            return total - max(1 << 30, total // 10)
    return None


def _cap_all_sandboxes(limit: Path, swap: Path | None) -> None:
    """Bound the parent of every sandbox cgroup, unless someone set a bound already:
    sandboxes that each keep to their limit must not together starve the host (the
    endpoint, sshd) into a host-wide OOM."""
    try:
        current = limit.read_text().strip()
        if current != "max" and int(current) < 1 << 62:
            return
        cap = host_cap(Path("/proc/meminfo").read_text())
        if cap is None:
            return
        _write(limit, str(cap))
        if swap is not None:
            _write_if_present(swap, str(cap))
    except (OSError, ValueError):
        return  # best effort: each sandbox keeps its own bound regardless


def _own_paths(text: str) -> list[tuple[str, str]]:
    """(controller, path) pairs of /proc/self/cgroup; v1 lines may name several."""
    out = []
    for line in text.splitlines():
        _, names, path = line.split(":", 2)
        for name in names.split(","):
            if name:
                out.append((name, path))
    return out
