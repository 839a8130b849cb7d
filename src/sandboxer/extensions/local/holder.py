"""A sandbox's one jail: started once, entered by every SSH session, stopped with it.

``Jail.start`` runs bwrap (jail.holder_argv) in the sandbox's cgroup as its host uid —
forked by the spawner (spawnerclient.try_spawn) when one is ready, else through setpriv
and prlimit — and keeps open the namespaces of the jail's waiting child: its user
namespace (and that one's parent, which owns the others), mount, pid, net, ipc, uts and
cgroup namespaces, and its root directory. Fds, not pids, so a recycled pid can never
point a session elsewhere.

``Jail.plan`` is what a session's process does between fork and exec (enter.py), run in
the child while it is still the endpoint's user: join the cgroup, enter the namespaces
(the parent user namespace first, which owns the others, then the jail's own), chroot to
the jail's root, drop the capability bounding set, become the jail user, set rlimits,
then no_new_privs and the seccomp filter. The spawner (spawner.py) forks such children;
``Jail.enter`` makes the same steps a preexec function, for when it cannot. What the child
execs (jail.SPAWNER) is the jail's own binary running as the jail user: nothing in the
profile's environment reaches a host-side program.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from sandboxer.extensions.local import disk, jail, seccomp, spawnerclient
from sandboxer.extensions.local import enter as entry
from sandboxer.extensions.local.cgroups import SandboxCgroup
from sandboxer.extensions.local.spawn import Child, Process, in_thread, spawn
from sandboxer.extensions.local.spec import LocalSpec

log = logging.getLogger(__name__)

NS_GET_PARENT = 0xB702
_START_TIMEOUT = 10.0
SESSION_OOM_SCORE_ADJ = 500


class JailError(OSError):
    """The jail did not start, or is gone."""


@dataclass
class Namespaces:
    """Open fds of a running jail's namespaces and root directory."""

    fds: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, pid: int) -> Namespaces:
        ns = cls()
        try:
            ns.fds["user"] = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY)
            ns.fds["user_parent"] = fcntl.ioctl(ns.fds["user"], NS_GET_PARENT)
            os.set_inheritable(ns.fds["user_parent"], False)
            for name, _flag in entry.ORDER:
                ns.fds[name] = os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY)
            ns.fds["root"] = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY)
        except OSError:
            ns.close()
            raise
        return ns

    def close(self) -> None:
        jail.close_fds(self.fds.values())
        self.fds.clear()


@dataclass(eq=False)
class Jail:
    """The long-lived namespaces of one sandbox (see the module docstring)."""

    sandbox_id: str
    user: str
    workspace: Path
    host_uid: int
    spec: LocalSpec
    bwrap: str
    root: bool                      # the endpoint runs as root: drop to host_uid
    cgroup: SandboxCgroup | None
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    proc: Process | None = None
    holder_pid: int = 0
    ns: Namespaces = field(default_factory=Namespaces)
    # What /run/secrets holds: ``secrets`` as it was at start (a later bind changes it).
    started_secrets: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and bool(self.ns.fds)

    def _limits(self) -> list[tuple[int, int]]:
        return jail.rlimits(self.spec, memory_cgroup=self.cgroup is not None
                            and "memory" in self.cgroup.dirs)

    async def start(self) -> None:
        """Start bwrap and wait for its waiting child; raises JailError when it fails."""
        sandbox_dir = self.workspace.parent
        if disk.image_path(sandbox_dir).exists() and not disk.is_mounted(self.workspace):
            await asyncio.to_thread(disk.remount, sandbox_dir, self.workspace)
        if self.cgroup is not None:
            lim = self.spec.limits
            self.cgroup.create(memory=lim.memory_bytes, cpus=lim.cpus, pids=lim.processes)
        data_fds = jail.data_pipes(jail.etc_files(
            self.user, self.spec.hostname or self.sandbox_id, self.spec.shell))
        secret_fds: dict[str, int] = {}
        filter_fds: list[int] = []
        joining: asyncio.Task[None] | None = None
        try:
            self.started_secrets = dict(self.secrets)
            secret_fds = jail.data_pipes(jail.secret_files(self.started_secrets))
            filter_fds.append(seccomp.pipe_fd())
            # The spawner first: its child joins the cgroup itself, which costs no RCU
            # grace period (cgroups.join_files), and execs bwrap without setpriv and
            # prlimit in between; the launcher's join from outside writes a pid, which
            # does (~5 ms here, overlapped with bwrap's set-up). Interleaved creates:
            # 123.1 ms by the launcher, 116.8 ms by the spawner. The launcher while the
            # spawner is not ready yet (the first create), a fork of this process last.
            proc = await self._by_spawner(data_fds, secret_fds, filter_fds[0])
            if proc is None:
                launched = self._by_launcher(data_fds, secret_fds, filter_fds[0])
                if launched is not None:
                    proc, joining = launched
                else:
                    proc = await self._by_preexec(data_fds, secret_fds, filter_fds[0])
            self.proc = proc
        finally:
            jail.close_fds([*data_fds.values(), *secret_fds.values(), *filter_fds])
        try:
            self.holder_pid = await self._wait_for_holder()
            if joining is not None:
                await joining
                await in_thread(self._join_the_rest)
            self.ns = Namespaces.of(self.holder_pid)
        except BaseException:
            if joining is not None:
                with contextlib.suppress(BaseException):
                    await joining
            await self.stop()
            raise
        finally:
            self.proc.close_pipes()  # bwrap's stderr mattered only while it set up

    async def _by_spawner(self, data_fds: dict[str, int], secret_fds: dict[str, int],
                          filter_fd: int) -> Process | None:
        """bwrap forked by the spawner (the way tried first), whose child joins the
        cgroup itself (its children inherit it), becomes the host uid and sets the
        rlimits (enter.run_holder) before it execs bwrap. None: no spawner ready."""
        order = [*data_fds.values(), *secret_fds.values(), filter_fd]
        at = {fd: spawnerclient.PASSED_FROM + i for i, fd in enumerate(order)}
        argv = jail.holder_argv(self.sandbox_id, self.workspace, self.spec,
                                {p: at[fd] for p, fd in data_fds.items()},
                                seccomp_fd=at[filter_fd], bwrap=self.bwrap,
                                secret_fds={p: at[fd] for p, fd in secret_fds.items()})
        r, w = os.pipe()
        try:
            proc = await spawnerclient.try_spawn(
                argv, env={"PATH": jail.JAIL_PATH}, pass_fds=order,
                stdio=(spawnerclient.DEVNULL, spawnerclient.DEVNULL, w),
                holder=self._holder_plan())
        except OSError as e:
            os.close(r)
            raise JailError(f"the jail of {self.sandbox_id} did not start: {e}") from e
        finally:
            os.close(w)
        if proc is None:
            os.close(r)
            return None
        proc.stderr = os.fdopen(r, "rb")  # bwrap's: read if it fails (_wait_for_holder)
        return proc

    def _popen_args(self, data_fds: dict[str, int], secret_fds: dict[str, int],
                    filter_fd: int) -> tuple[list[str], dict[str, Any]]:
        argv = jail.holder_argv(self.sandbox_id, self.workspace, self.spec, data_fds,
                                seccomp_fd=filter_fd, bwrap=self.bwrap, secret_fds=secret_fds)
        kw: dict[str, Any] = {
            "stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL,
            "stderr": subprocess.PIPE, "env": {"PATH": jail.JAIL_PATH},
            "pass_fds": (*data_fds.values(), *secret_fds.values(), filter_fd),
            "start_new_session": True}
        return argv, kw

    async def _by_preexec(self, data_fds: dict[str, int], secret_fds: dict[str, int],
                          filter_fd: int) -> Process:
        """bwrap forked by this process with a preexec step (no launcher, no spawner)."""
        argv, kw = self._popen_args(data_fds, secret_fds, filter_fd)
        return await spawn(argv, preexec_fn=self._holder_preexec(), **kw)

    def _by_launcher(self, data_fds: dict[str, int], secret_fds: dict[str, int],
                     filter_fd: int) -> tuple[Process, asyncio.Task[None] | None] | None:
        """bwrap started by this process through setpriv and prlimit, and the task that
        joins it to its cgroup from outside; None when a tool is missing."""
        launcher = self._launcher()
        if launcher is None:
            return None
        argv, kw = self._popen_args(data_fds, secret_fds, filter_fd)
        # No preexec step: Popen vforks and returns at once.
        proc = Child(subprocess.Popen([*launcher, *argv], **kw))
        if self.cgroup is None:
            return proc, None
        # A cgroup join waits for an RCU grace period (10-20 ms on some hosts): it runs
        # while bwrap sets the jail up.
        return proc, asyncio.create_task(in_thread(partial(self.cgroup.add, proc.pid)))

    def _launcher(self) -> list[str] | None:
        """What runs before bwrap, as programs rather than a preexec step (which makes
        Popen fork this whole process and wait for the child's cgroup join): become the
        host uid, set the rlimits. None: a tool is missing.

        The jail joins its cgroup from outside (``start``): bwrap's own process while it
        sets the jail up, the two it forked (its init and the holder, which runs nothing
        but ``sleep``) once the holder runs; a session runs only after that.
        """
        tools = _launch_tools()
        if tools is None:
            return None
        setpriv, prlimit = tools
        drop = ([setpriv, f"--reuid={self.host_uid}", f"--regid={self.host_uid}",
                 "--clear-groups", "--"] if self.root else [])
        limits = [f"--{_PRLIMIT[which]}={value}:{value}" for which, value in self._limits()]
        return [*drop, prlimit, *limits, "--"]

    def _join_the_rest(self) -> None:
        """Every process bwrap forked joins the jail's cgroup (its own joined already)."""
        if self.cgroup is None or self.proc is None:
            return
        todo, seen = _children(self.proc.pid), set()
        while todo:
            pid = todo.pop()
            if pid not in seen:
                seen.add(pid)
                self.cgroup.add(pid)
                todo += _children(pid)

    def _holder_plan(self) -> entry.HolderPlan:
        join = () if self.cgroup is None else self.cgroup.join_files
        return entry.HolderPlan(cgroup_join=join,
                                uid=self.host_uid if self.root else None,
                                rlimits=tuple(self._limits()))

    def _holder_preexec(self) -> Callable[[], None]:
        plan = self._holder_plan()

        def preexec() -> None:
            entry.run_holder(plan)

        return preexec

    async def _wait_for_holder(self) -> int:
        """The pid of bwrap's init's child, once it runs HOLDER (the jail is complete)."""
        if self.proc is None:
            raise JailError(f"the jail of {self.sandbox_id} was never started")
        deadline = time.monotonic() + _START_TIMEOUT
        # bwrap sets a jail up in a few ms: look often at first (three /proc reads a look).
        delay = 0.0005
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                break
            for init in _children(self.proc.pid):
                for pid in _children(init):
                    if _cmdline(pid) == list(jail.HOLDER):
                        return pid
            await asyncio.sleep(delay)
            delay = min(delay * 1.1, 0.02)
        err = b""
        if self.proc.returncode is not None and self.proc.stderr is not None:
            # bwrap is gone and its children die with it (--die-with-parent): EOF soon.
            with contextlib.suppress(OSError, TimeoutError):
                err = await asyncio.wait_for(asyncio.to_thread(self.proc.stderr.read), 2)
        raise JailError(f"the jail of {self.sandbox_id} did not start: "
                        f"{err.decode(errors='replace').strip()[-300:] or 'timed out'}")

    def plan(self, *, pty: bool) -> entry.Plan:
        """What a session's process does between fork and exec (enter.py), with fds of
        its own: duplicates of the jail's, which the caller closes once the child runs
        (the child closes its copies in its last steps).

        Duplicates, because the spawn runs in a worker thread or in the spawner while the
        event loop goes on: if the loop stops this jail meanwhile (a destroy, a revive)
        and starts another sandbox's, the numbers of this jail's fds may name that one's
        namespaces by then. A duplicate keeps naming this jail's, even once it stopped.
        """
        if not self.alive:
            raise JailError(f"the jail of {self.sandbox_id} is not running")
        ns: dict[str, int] = {}
        try:
            for name in entry.NS_NAMES:
                ns[name] = os.dup(self.ns.fds[name])  # not inheritable: passed on purpose
        except (OSError, KeyError):
            jail.close_fds(ns.values())
            raise
        join = () if self.cgroup is None else self.cgroup.join_files
        return entry.Plan(cgroup_join=join, oom_score_adj=SESSION_OOM_SCORE_ADJ, pty=pty,
                          uid=jail.JAIL_UID, home=jail.JAIL_HOME, last_cap=_last_cap(),
                          rlimits=tuple(self._limits()), seccomp=seccomp.program(), ns=ns)

    def enter(self, *, pty: bool) -> tuple[Callable[[], None], tuple[int, ...]]:
        """The in-process way in: ``plan``'s steps as a preexec function, and the fds its
        spawn must pass to the child (the caller closes them once the child runs)."""
        plan = self.plan(pty=pty)
        load_filter = entry.filter_loader(plan.seccomp)

        def preexec() -> None:
            entry.run(plan, load_filter)

        return preexec, tuple(plan.ns.values())

    async def stop(self) -> None:
        """End every process of the jail; the namespaces go with them. Idempotent."""
        self.ns.close()
        self.started_secrets = {}
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.cgroup.kill)
        if self.proc is not None and self.proc.returncode is None:
            # bwrap's init dies with it (--die-with-parent), and the pid namespace with it.
            self.proc.kill_group()
            await self.proc.wait()


_PRLIMIT = {resource.RLIMIT_NPROC: "nproc", resource.RLIMIT_NOFILE: "nofile",
            resource.RLIMIT_CORE: "core", resource.RLIMIT_AS: "as"}


@functools.cache
def _launch_tools() -> tuple[str, str] | None:
    """setpriv and prlimit (util-linux), or None when one is missing."""
    setpriv, prlimit = (shutil.which(t, path=jail.JAIL_PATH) for t in ("setpriv", "prlimit"))
    if setpriv is None or prlimit is None:
        return None
    return setpriv, prlimit


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [w.decode(errors="replace") for w in f.read().split(b"\0") if w]
    except OSError:
        return []


def _last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 40
