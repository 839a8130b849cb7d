"""The steps that put a process into a sandbox's jail, in one place for both ways it starts.

A session's process (and a forward's connector) either forks from the small spawner
(spawner.py) or, when that is not running, from the endpoint itself with these steps as
its preexec function (``preexec``). Either way the child runs ``run`` between the fork and
the exec: join the cgroup, raise its oom_score_adj, take the terminal (a PTY session),
enter the parent user namespace (which owns the others), then mnt, net, ipc, uts, cgroup
and pid, then the jail's own user namespace; chroot to the jail's root and chdir to its
home; drop the capability bounding set; become the jail user; set rlimits; close the
namespace fds; no_new_privs and the seccomp filter last.

The standard library and ctypes only: the spawner imports this module, and it must stay
small (tests/unit/extensions/test_local_spawner.py checks what it loads).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import resource
import socket
import termios
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
# Entered after the parent user namespace, before the jail's own (which owns none of them).
ORDER = (("mnt", CLONE_NEWNS), ("net", CLONE_NEWNET), ("ipc", CLONE_NEWIPC),
         ("uts", CLONE_NEWUTS), ("cgroup", CLONE_NEWCGROUP), ("pid", CLONE_NEWPID))
# Every fd a plan names, in the order a request to the spawner carries them.
NS_NAMES = ("user_parent", *(name for name, _flag in ORDER), "user", "root")
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
_libc = ctypes.CDLL(None, use_errno=True)


class Plan(NamedTuple):
    """What ``run`` needs, every field plain data (the spawner gets it as JSON) but
    ``ns``: the open fds of the jail's namespaces and root (``NS_NAMES``), in the process
    that runs the steps."""

    cgroup_join: tuple[str, ...]       # the files to write 0 to (cgroups.join_files)
    oom_score_adj: int
    pty: bool                          # fd 0 is the session's terminal: make it ours
    uid: int                           # the jail user, inside its user namespace
    home: str                          # where the session starts, inside the jail
    last_cap: int                      # the highest capability number of this kernel
    rlimits: tuple[tuple[int, int], ...]
    seccomp: bytes                     # the filter, a classic BPF program
    ns: Mapping[str, int]

    def wire(self) -> dict[str, Any]:
        """The plan as JSON-able data, but its fds (those travel by SCM_RIGHTS)."""
        d = self._asdict()
        del d["ns"]
        d["seccomp"] = self.seccomp.hex()
        return d

    @classmethod
    def from_wire(cls, d: Mapping[str, Any], ns: Mapping[str, int]) -> Plan:
        """The plan ``wire`` made, with the fds as the receiving process numbers them."""
        return cls(cgroup_join=tuple(str(p) for p in d["cgroup_join"]),
                   oom_score_adj=int(d["oom_score_adj"]), pty=bool(d["pty"]),
                   uid=int(d["uid"]), home=str(d["home"]), last_cap=int(d["last_cap"]),
                   rlimits=tuple((int(w), int(v)) for w, v in d["rlimits"]),
                   seccomp=bytes.fromhex(d["seccomp"]), ns=dict(ns))


class StepError(OSError):
    """A step failed: the errno, and which step in the message."""


def _fail(step: str, err: int) -> StepError:
    return StepError(err, f"{step}: {os.strerror(err)}")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def filter_loader(code: bytes) -> Callable[[], None]:
    """A function for a child's last step before exec: no_new_privs, then the filter
    ``code``. Everything it needs is allocated here, before the fork: the child makes
    two prctl calls."""
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.addressof(buf))
    prctl = _libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong,
                      ctypes.c_ulong]
    addr = ctypes.addressof(prog)

    def load() -> None:
        _keep = (buf, prog)  # referenced so the program outlives the parent's frame
        if prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
            raise _fail("prctl(PR_SET_NO_NEW_PRIVS)", ctypes.get_errno())
        if prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, addr, 0, 0) != 0:
            raise _fail("prctl(PR_SET_SECCOMP)", ctypes.get_errno())
        del _keep

    return load


def _setns(fd: int, flag: int, what: str) -> None:
    if _libc.setns(fd, flag) != 0:
        raise _fail(f"entering the jail's {what} namespace", ctypes.get_errno())


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def run(plan: Plan, load_filter: Callable[[], None]) -> None:
    """Every step, in order, in the child between fork and exec (see the module
    docstring); raises StepError naming the step that failed. ``load_filter`` is
    ``filter_loader(plan.seccomp)``, made before the fork where allocating is not safe."""
    ns, uid = plan.ns, plan.uid
    step = "joining the sandbox's cgroup"
    try:
        for path in plan.cgroup_join:  # 0: this process, one thread until its exec
            _write(path, "0")
        # The OOM killer picks what sessions run before the jail's own processes (a
        # killed init would end the sandbox). Raising needs no privilege, lowering would
        # (CAP_SYS_RESOURCE, which some hosts withhold even from root).
        step = "raising oom_score_adj"
        _write("/proc/self/oom_score_adj", str(plan.oom_score_adj))
        if plan.pty:
            step = "taking the terminal"
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        _setns(ns["user_parent"], CLONE_NEWUSER, "parent user")
        for name, flag in ORDER:
            _setns(ns[name], flag, name)
        _setns(ns["user"], CLONE_NEWUSER, "user")
        step = "chroot to the jail's root"
        os.fchdir(ns["root"])
        os.chroot(".")
        step = f"chdir to {plan.home}"
        os.chdir(plan.home)
        for cap in range(plan.last_cap + 1):
            if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise _fail(f"dropping capability {cap}", ctypes.get_errno())
        with contextlib.suppress(PermissionError):  # "deny" in an unprivileged userns
            os.setgroups([])
        step = "becoming the jail user"
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        step = "setting rlimits"
        for which, value in plan.rlimits:
            resource.setrlimit(which, (value, value))
    except StepError:
        raise
    except OSError as e:
        raise _fail(step, e.errno or 0) from e
    for fd in ns.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    load_filter()


class HolderPlan(NamedTuple):
    """What a jail's bwrap does before its exec (holder.Jail.start): join the sandbox's
    cgroup itself (its children inherit it), become the host uid (None: stay), set the
    rlimits."""

    cgroup_join: tuple[str, ...]  # the files to write 0 to (cgroups.join_files)
    uid: int | None
    rlimits: tuple[tuple[int, int], ...]

    def wire(self) -> dict[str, Any]:
        """The plan as JSON-able data."""
        return self._asdict()

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> HolderPlan:
        """The plan ``wire`` made."""
        return cls(cgroup_join=tuple(str(p) for p in d["cgroup_join"]),
                   uid=None if d["uid"] is None else int(d["uid"]),
                   rlimits=tuple((int(w), int(v)) for w, v in d["rlimits"]))


def run_holder(plan: HolderPlan) -> None:
    """A jail's bwrap between fork and exec; raises StepError naming the step."""
    step = "joining the sandbox's cgroup"
    try:
        for path in plan.cgroup_join:  # 0: this process, one thread until its exec
            _write(path, "0")
        if plan.uid is not None:
            step = "becoming the sandbox's host uid"
            os.setgroups([])
            os.setresgid(plan.uid, plan.uid, plan.uid)
            os.setresuid(plan.uid, plan.uid, plan.uid)
        step = "setting rlimits"
        for which, value in plan.rlimits:
            resource.setrlimit(which, (value, value))
    except OSError as e:
        raise _fail(step, e.errno or 0) from e


def preexec(plan: Plan | None, connect: tuple[int, str, int, float] | None = None,
            reply: int = -1) -> Callable[[], None] | None:
    """``run(plan)``, then ``connect_back`` with ``connect``, as a ``subprocess.Popen``
    preexec function (the in-process way: the same steps as the spawner's child); None
    when there is nothing to do."""
    if plan is None and connect is None:
        return None
    load_filter = None if plan is None else filter_loader(plan.seccomp)

    def step() -> None:
        if plan is not None and load_filter is not None:
            run(plan, load_filter)
        if connect is not None:
            connect_back(reply, *connect)

    return step


def connect_back(reply: int, family: int, address: str, port: int, timeout: float) -> None:
    """A forward's connector, once it stands in the jail: connect a TCP socket to
    ``address:port`` (so the socket belongs to the jail's network namespace) and hand its
    fd back over ``reply``, a socketpair's end; on failure send ``E<errno>`` instead."""
    back = socket.socket(fileno=os.dup(reply))
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            try:
                s.connect((address, port))
            except OSError as e:
                back.send(f"E{e.errno or 111}".encode())  # 111: ECONNREFUSED
                return
            socket.send_fds(back, [b"K"], [s.fileno()])
    finally:
        back.close()
