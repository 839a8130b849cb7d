"""The spawner: a small helper process that forks an endpoint's jailed processes.

The endpoint is a large process (60-110 MiB, many threads): a fork of it with a preexec
step costs ~6 ms, a fork of this one ~1 ms. The endpoint starts one spawner lazily
(spawnerclient.py) as ``python -S -m sandboxer.extensions.local.spawner FD PARENT``, with
an allow-listed environment, and talks to it over ``FD``, its end of an AF_UNIX
SOCK_SEQPACKET socketpair: nobody else can reach it. It dies with the endpoint
(PR_SET_PDEATHSIG, checked against getppid) and exits when the endpoint's end closes.

One JSON message a request, its fds by SCM_RIGHTS (named by ``fds``, in order); the
spawner says ``{"ready": PID}`` once, first:

- ``{"op": "spawn", "id", "argv", "env", "session", "plan", "holder", "connect", "pass",
  "fds"}``: fork; the child takes stdin/stdout/stderr, leads a new session
  (``session``), runs a jail's bwrap's steps (enter.run_holder with ``holder``) or a
  session's (enter.run with ``plan``, the jail's fds), hands a forward's socket back
  (``connect``: family, address, port, timeout, over the ``reply`` fd), keeps the
  ``pass`` fds ``pass0``, ``pass1``, ... as 3, 4, ..., closes every other fd and execs
  ``argv`` with exactly ``env`` (never this process's own).
  Answer: ``{"id", "pid"}`` with a pidfd of the child once it exec'd, or ``{"id",
  "errno", "error"}`` naming the step that failed before (the child is reaped then).
  Later, ``{"id", "exit"}``: its exit status (negative: the signal), once reaped here.
- ``{"op": "kill", "id"}``: SIGKILL the child's process group (and the child). Only
  this process reaps its children, so a pid it still lists cannot have been reused.

Every child dies with this process: PR_SET_PDEATHSIG SIGKILL from the fork to the exec,
set again after the credentials change (which clears it) and kept across the exec. So a
request this process took but could not answer leaves nothing running once the endpoint
has reaped it (spawnerclient.py then starts that request itself).

The standard library and ctypes only (tests/unit/extensions/test_local_spawner.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import resource
import selectors
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from sandboxer.extensions.local import enter

PR_SET_PDEATHSIG = 1
MAX_MESSAGE = 1 << 20
MAX_FDS = 32
STDIO = ("stdin", "stdout", "stderr")
PASSED_FROM = 3  # a request's ``pass`` fds reach the exec'd program as 3, 4, ...
_libc = ctypes.CDLL(None, use_errno=True)


def die_with(parent: int) -> bool:
    """SIGKILL this process when its parent dies; False when ``parent`` is no longer its
    parent (it died before the prctl, which then never fires)."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return os.getppid() == parent


class _Kid:
    __slots__ = ("err", "errpipe", "id", "pid", "pidfd")

    def __init__(self, rid: int, pid: int, pidfd: int, errpipe: int) -> None:
        self.id, self.pid, self.pidfd, self.errpipe = rid, pid, pidfd, errpipe
        self.err = b""


class _Job:
    """One spawn request, checked and decoded before the fork."""

    def __init__(self, req: dict[str, Any], fds: dict[str, int]) -> None:
        self.fds = fds
        self.argv = [str(a) for a in req["argv"]]
        if not self.argv:
            raise OSError(errno.EINVAL, "no argv")
        self.env = {str(k): str(v) for k, v in req["env"].items()}
        self.exes = ([self.argv[0]] if "/" in self.argv[0]
                     else [os.path.join(d, self.argv[0]) for d in os.get_exec_path(self.env)])
        self.session = bool(req.get("session"))
        self.plan = None if req.get("plan") is None else enter.Plan.from_wire(
            req["plan"], {n: fds[n] for n in enter.NS_NAMES})
        # Allocated here: the child only calls it.
        self.load_filter = (None if self.plan is None
                            else enter.filter_loader(self.plan.seccomp))
        self.holder = (None if req.get("holder") is None
                       else enter.HolderPlan.from_wire(req["holder"]))
        self.connect: list[Any] | None = req.get("connect")
        self.passed = [fds[f"pass{i}"] for i in range(int(req.get("pass", 0)))]
        self.keep_below = PASSED_FROM + len(self.passed)


class Spawner:
    """The loop: requests from the endpoint, error pipes of children that have not exec'd
    yet, pidfds of those that run."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.me = os.getpid()
        self.sel = selectors.DefaultSelector()
        self.kids: dict[int, _Kid] = {}  # forked and not reaped, by request id
        self.maxfd = max(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1 << 16)
        self.sel.register(sock, selectors.EVENT_READ, self._request)

    def serve(self) -> None:
        """Until the endpoint's end closes (or the endpoint is gone)."""
        while True:
            for key, _events in self.sel.select():
                handler: Callable[[], bool] = key.data
                if not handler():
                    return

    def _send(self, msg: dict[str, Any], fds: tuple[int, ...] = ()) -> bool:
        try:
            socket.send_fds(self.sock, [json.dumps(msg).encode()], list(fds))
        except OSError:
            return False  # the endpoint is gone: serve() ends
        return True

    def _request(self) -> bool:
        try:
            msg, fds, flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE, MAX_FDS,
                                                     socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not msg and not fds:
            return False  # EOF: the endpoint closed its end
        rid: object = None
        try:
            req = json.loads(msg)
            rid = req.get("id")
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise OSError(errno.EMSGSIZE, "the request was cut short")
            if req.get("op") == "spawn":
                self._spawn(req, fds)
            elif req.get("op") == "kill":
                self._kill(int(req["id"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            code = e.errno if isinstance(e, OSError) and e.errno else errno.EINVAL
            return self._send({"id": rid, "errno": code, "error": f"the spawner: {e}"})
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        return True

    def _spawn(self, req: dict[str, Any], fds: list[int]) -> None:
        names = [str(n) for n in req["fds"]]
        if len(names) != len(fds) or not set(STDIO) <= set(names):
            raise OSError(errno.EINVAL, "the fds of the request do not match their names")
        byname = dict(zip(names, fds, strict=True))
        job = _Job(req, byname)
        rid = int(req["id"])
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork()
        except OSError:
            os.close(r)
            os.close(w)
            raise
        if pid == 0:
            self._child(job, w)
        os.close(w)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # the client checked that this kernel has pidfds: not reached
            os.close(r)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        kid = _Kid(rid, pid, pidfd, r)
        self.kids[rid] = kid
        self.sel.register(r, selectors.EVENT_READ, lambda: self._errpipe(kid))

    def _child(self, job: _Job, errpipe: int) -> None:
        """Between fork and exec: never returns."""
        step = "setting the parent-death signal"
        try:
            if not die_with(self.me):
                os._exit(255)
            # Above every fd the exec keeps (0-2 and the passed ones from PASSED_FROM).
            errpipe, old = fcntl.fcntl(errpipe, fcntl.F_DUPFD_CLOEXEC, job.keep_below), errpipe
            os.close(old)
            step = "taking stdin, stdout and stderr"
            for i, name in enumerate(STDIO):
                os.dup2(job.fds[name], i)
            # What Popen's restore_signals undoes for a child of a Python process.
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_DFL)
            if job.session:
                step = "setsid"
                os.setsid()
            if job.holder is not None:
                enter.run_holder(job.holder)
            if job.plan is not None and job.load_filter is not None:
                enter.run(job.plan, job.load_filter)
            step = "setting the parent-death signal"
            if not die_with(self.me):  # changing credentials cleared it
                os._exit(255)
            if job.connect is not None:
                family, address, port, timeout = job.connect
                enter.connect_back(job.fds["reply"], int(family), str(address), int(port),
                                   float(timeout))
            step = "placing the passed fds"
            moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, job.keep_below)
                     for fd in job.passed]
            for i, fd in enumerate(moved):
                os.dup2(fd, PASSED_FROM + i)  # inheritable: the exec keeps it
            step = "closing fds"
            os.closerange(job.keep_below, errpipe)
            os.closerange(errpipe + 1, self.maxfd)
            step = f"exec {job.argv[0]}"
            failed: OSError = FileNotFoundError(errno.ENOENT, "not found on PATH")
            for exe in job.exes:
                try:
                    os.execve(exe, job.argv, job.env)  # noqa: S606 - an argv, as Popen execs it
                except OSError as e:
                    failed = e
            raise failed
        except enter.StepError as e:
            self._report(errpipe, e.errno or 0, e.strerror or str(e))
        except OSError as e:
            self._report(errpipe, e.errno or 0, f"{step}: {e.strerror or e}")
        except BaseException as e:
            self._report(errpipe, 0, f"{step}: {type(e).__name__}: {e}")
        finally:
            os._exit(255)

    @staticmethod
    def _report(errpipe: int, code: int, text: str) -> None:
        with contextlib.suppress(OSError):
            os.write(errpipe, json.dumps({"errno": code, "error": text}).encode())

    def _errpipe(self, kid: _Kid) -> bool:
        data = os.read(kid.errpipe, 4096)
        if data:
            kid.err += data
            return True
        self.sel.unregister(kid.errpipe)
        os.close(kid.errpipe)
        if not kid.err:  # EOF and nothing said: it exec'd
            self.sel.register(kid.pidfd, selectors.EVENT_READ, lambda: self._exited(kid))
            return self._send({"id": kid.id, "pid": kid.pid}, (kid.pidfd,))
        os.waitpid(kid.pid, 0)  # it exits right after it reported
        self._forget(kid)
        try:
            said = json.loads(kid.err)
            code, text = int(said["errno"]), str(said["error"])
        except (ValueError, KeyError, TypeError):
            code, text = 0, kid.err.decode(errors="replace")
        return self._send({"id": kid.id, "errno": code, "error": text})

    def _exited(self, kid: _Kid) -> bool:
        pid, status = os.waitpid(kid.pid, os.WNOHANG)
        if pid == 0:
            return True
        self._forget(kid)
        return self._send({"id": kid.id, "exit": os.waitstatus_to_exitcode(status)})

    def _forget(self, kid: _Kid) -> None:
        self.kids.pop(kid.id, None)
        if kid.pidfd >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(kid.pidfd)
            os.close(kid.pidfd)
            kid.pidfd = -1

    def _kill(self, rid: int) -> None:
        kid = self.kids.get(rid)
        if kid is None:
            return  # reaped already (its exit is on the way) or never forked
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(kid.pid, signal.SIGKILL)  # its group, once it leads one
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(kid.pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    """``spawner FD PARENT``: serve the endpoint ``PARENT`` over the socket ``FD``."""
    fd, parent = int(argv[1]), int(argv[2])
    if not die_with(parent):
        return 0
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    spawner = Spawner(sock)
    if spawner._send({"ready": os.getpid()}):
        spawner.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
