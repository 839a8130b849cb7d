"""The endpoint's side of the spawner (spawner.py): start it, ask it, or do without it.

``spawn_jailed`` is how a session's process (and a forward's connector) starts, and
``try_spawn`` how a jail's bwrap does (holder.py): the endpoint's one spawner forks it —
started lazily on first use (the first jail's start), again after it died — and when
there is none (it cannot start, it is still booting, it died while asked, the request
does not fit in one message) the endpoint starts the child itself: a session with the
same steps as a preexec function (enter.preexec), a jail through setpriv and prlimit.
Nothing waits for a spawner that boots (~20 ms of interpreter start): the children of
that moment start the other way. The spawner is a child of the event loop's thread (its
PR_SET_PDEATHSIG follows that thread) and is bound to that loop: a new loop gets a new
one, and the old one exits at the EOF of its socket.

A request the spawner took but did not answer before it died: its child dies with the
spawner (PDEATHSIG SIGKILL, kept from the fork through the exec), so once the endpoint
has reaped the spawner nothing of that request runs, and it is spawned in-process.
Children that were running die the same way; their exit status is gone with the spawner,
so they report -SIGKILL once their pidfd says they ended.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, BinaryIO

from sandboxer import childenv
from sandboxer.extensions.local import enter
from sandboxer.extensions.local.spawn import Child, Process, spawn
from sandboxer.extensions.local.spawner import MAX_MESSAGE

log = logging.getLogger(__name__)

DEVNULL = -1  # for ``stdio``: /dev/null
MODULE = "sandboxer.extensions.local.spawner"
PIDFD_SIGNAL_PROCESS_GROUP = 4  # linux/pidfd.h, 6.9+: the pidfd's process group
RETRY_AFTER = 30.0  # seconds without a spawner after it could not start
# A spawner that answers no request in this long is stuck (stopped, hung): it is killed
# and the request starts in process. A fork and its steps take milliseconds here.
SPAWN_TIMEOUT = 30.0
enabled = True  # False: always in-process (bench/warm_local.py measures both ways)


class Gone(Exception):
    """The spawner ended before it answered."""


class SpawnedChild:
    """A process the spawner forked (spawn.Process): its exit comes from the spawner,
    its kill goes through the spawner, which reaps it (or through its pidfd once the
    spawner is gone)."""

    def __init__(self, client: Client, rid: int, pid: int, pidfd: int) -> None:
        self._client, self._id, self.pid, self._pidfd = client, rid, pid, pidfd
        self._rc: int | None = None
        self._exited: asyncio.Future[int] = client.loop.create_future()
        self.stderr: BinaryIO | None = None  # a pipe's reading end, when the caller set one

    @property
    def returncode(self) -> int | None:
        return self._rc

    def close_pipes(self) -> None:
        """Close ``stderr``, if the caller gave it one (its other stdio are the caller's)."""
        if self.stderr is not None:
            self.stderr.close()

    async def wait(self) -> int:
        """Its exit status, once the spawner reaped it (negative: the signal)."""
        return await asyncio.shield(self._exited)

    def kill_group(self) -> None:
        """SIGKILL its process group: the spawner does it, which has not reaped it yet
        if it still lists it. Without a spawner (it died: so did this child, by its
        PDEATHSIG) the pidfd names this very process, whatever became of its pid."""
        if self._rc is not None:
            return
        if self._client.kill(self._id):
            return
        self._kill_by_pidfd()

    def _kill_by_pidfd(self) -> None:
        """SIGKILL its process group through its pidfd (Linux 6.9+), else the process
        itself: never a stranger, whatever became of its pid. The group outlives the
        process that leads it (a pipeline, a background job: in a jail that does not die
        with the spawner, one the endpoint started itself), so the group is what ends
        the session, as the spawner's killpg does."""
        if self._pidfd < 0:
            return
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL, None,
                                     PIDFD_SIGNAL_PROCESS_GROUP)
            return
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def _exit(self, rc: int) -> None:
        if self._rc is not None:
            return
        self._rc = rc
        if not self._exited.done():
            self._exited.set_result(rc)
        if self._pidfd >= 0:
            with contextlib.suppress(ValueError, OSError):
                self._client.loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    def _orphaned(self) -> None:
        """The spawner is gone: this child died with it, or will at once; what it started
        in its process group is killed now (its PDEATHSIG ends it alone)."""
        self._kill_by_pidfd()
        try:
            if self._pidfd >= 0:
                self._client.loop.add_reader(self._pidfd, self._exit, -signal.SIGKILL)
                return
        except RuntimeError:  # its loop is closed: nobody waits for it any more
            pass
        with contextlib.suppress(RuntimeError):
            self._exit(-signal.SIGKILL)


class Client:
    """One running spawner, bound to the event loop that started it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            env = childenv.allowed(os.environ)
            env["PYTHONPATH"] = childenv.source_dir()
            # No preexec step: Popen vforks, so starting it holds the loop ~1 ms.
            self.proc = subprocess.Popen(
                # -P: no cwd on its import path (it runs as root, from /).
                [sys.executable, "-S", "-P", "-m", MODULE, str(theirs.fileno()),
                 str(os.getpid())],
                pass_fds=(theirs.fileno(),), env=env, cwd="/", stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock = ours
        self.alive = True
        self.ready = False  # it said so: not waited for while it boots (module docstring)
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self._next = 0
        self._pending: dict[int, asyncio.Future[SpawnedChild]] = {}
        self._children: dict[int, SpawnedChild] = {}
        self.reaped: asyncio.Future[int] = asyncio.ensure_future(Child(self.proc).wait())
        loop.add_reader(ours.fileno(), self._readable)

    async def spawn(self, argv: list[str], env: dict[str, str], stdio: tuple[int, int, int],
                    *, plan: enter.Plan | None = None, holder: enter.HolderPlan | None = None,
                    connect: tuple[int, str, int, float] | None = None, reply: int = -1,
                    pass_fds: Sequence[int] = ()) -> SpawnedChild:
        """Ask for one child (``try_spawn``); OSError (errno and step) when it failed
        before its exec, Gone when the spawner ended first, OSError EMSGSIZE when the
        request is too big for one message."""
        if not self.alive:
            raise Gone
        self._next += 1
        rid = self._next
        names = ["stdin", "stdout", "stderr"]
        fds = [self.devnull if fd == DEVNULL else fd for fd in stdio]
        if plan is not None:
            names += enter.NS_NAMES
            fds += [plan.ns[n] for n in enter.NS_NAMES]
        if connect is not None:
            names.append("reply")
            fds.append(reply)
        names += [f"pass{i}" for i in range(len(pass_fds))]
        fds += pass_fds
        msg = {"op": "spawn", "id": rid, "argv": argv, "env": env, "session": True,
               "plan": None if plan is None else plan.wire(),
               "holder": None if holder is None else holder.wire(), "connect": connect,
               "pass": len(pass_fds), "fds": names}
        data = json.dumps(msg).encode()
        if len(data) > MAX_MESSAGE:  # would leave with a large SO_SNDBUF and arrive cut short
            raise OSError(errno.EMSGSIZE, "the request is longer than the spawner reads")
        started: asyncio.Future[SpawnedChild] = self.loop.create_future()
        self._pending[rid] = started
        try:
            await self._send(data, fds)
        except BaseException:
            self._pending.pop(rid, None)
            raise
        try:
            return await asyncio.wait_for(asyncio.shield(started), SPAWN_TIMEOUT)
        except TimeoutError:
            self._pending.pop(rid, None)
            self._stuck()
            raise Gone from None
        except asyncio.CancelledError:
            # The caller gave up: the child (forked or about to be) is killed, not kept.
            self._pending.pop(rid, None)
            self.kill(rid)
            raise

    def kill(self, rid: int) -> bool:
        """Ask the spawner to SIGKILL child ``rid``'s group; False without a spawner."""
        if not self.alive:
            return False
        try:
            socket.send_fds(self.sock, [json.dumps({"op": "kill", "id": rid}).encode()], [])
        except OSError:
            return False
        return True

    async def _send(self, data: bytes, fds: list[int]) -> None:
        while True:
            try:
                socket.send_fds(self.sock, [data], fds)
                return
            except BlockingIOError:
                writable = self.loop.create_future()
                self.loop.add_writer(self.sock.fileno(), writable.set_result, None)
                try:
                    await writable
                finally:
                    self.loop.remove_writer(self.sock.fileno())
            except OSError as e:
                if e.errno == errno.EMSGSIZE:
                    raise
                self._gone()
                raise Gone from e

    def _readable(self) -> None:
        while self.alive:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 16, 4,
                                                          socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                msg, fds = b"", []
            if not msg:
                self._gone()
                return
            try:
                self._answer(json.loads(msg), fds)
            except (ValueError, KeyError, TypeError):
                log.warning("the spawner sent a message that is not understood")
                for fd in fds:
                    os.close(fd)

    def _answer(self, d: dict[str, Any], fds: list[int]) -> None:
        if "ready" in d:
            self.ready = True
            return
        rid = d["id"]
        if "exit" in d:
            child = self._children.pop(rid, None)
            if child is not None:
                child._exit(int(d["exit"]))
            return
        started = self._pending.pop(rid, None) if isinstance(rid, int) else None
        if "pid" in d and len(fds) == 1:
            if started is None or started.done():  # its caller gave up: killed already
                os.close(fds[0])
                return
            child = SpawnedChild(self, rid, int(d["pid"]), fds[0])
            self._children[rid] = child
            started.set_result(child)
            return
        for fd in fds:
            os.close(fd)
        if started is not None and not started.done():
            started.set_exception(OSError(int(d.get("errno") or errno.EIO),
                                          str(d.get("error", "the spawner failed"))))

    def _stuck(self) -> None:
        """It took a request and did not answer in ``SPAWN_TIMEOUT`` (stopped, hung): it
        is killed, its children with it (so nothing of that request runs on), and the
        next request starts a new one."""
        _once("the spawner is stuck", f"no answer in {SPAWN_TIMEOUT:g}s; killed")
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self._gone()

    def _gone(self) -> None:
        if not self.alive:
            return
        self.alive = False
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        os.close(self.devnull)
        for started in self._pending.values():
            if not started.done():
                started.set_exception(Gone())
        self._pending.clear()
        for child in self._children.values():
            child._orphaned()
        self._children.clear()

    def close(self) -> None:
        """Close our end: the spawner exits (and its children with it)."""
        self._gone()
        if self.proc.returncode is None:  # reaped, not a zombie, whatever its loop does
            threading.Thread(target=self.proc.wait, daemon=True).start()


_client: Client | None = None
_broken_until = 0.0
_said: set[str] = set()
_exit_hooked = False  # _at_exit registered (once a spawner started)


def _once(what: str, why: object) -> None:
    if what not in _said:
        _said.add(what)
        log.info("sessions start in the endpoint itself: %s (%s)", what, why)


def _reset() -> None:
    global _client
    _client = None  # a forked child has no spawner: its parent's socket is not its own


os.register_at_fork(after_in_child=_reset)


def _at_exit() -> None:
    """The spawner ends with this process: its socket closed, it exits and is reaped
    here (not left running for Popen's destructor to warn about)."""
    c = _client
    if c is not None and c.alive:
        c._gone()
        with contextlib.suppress(subprocess.TimeoutExpired):
            c.proc.wait(1.0)


def _pidfds() -> bool:
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


def client() -> Client | None:
    """The spawner of the running loop, started if needed; None: do without."""
    global _client, _broken_until, _exit_hooked
    loop = asyncio.get_running_loop()
    if _client is not None and (_client.loop is not loop or not _client.alive):
        _client.close()
        _client = None
    if _client is None and enabled and time.monotonic() >= _broken_until:
        if not _pidfds():
            _broken_until = float("inf")
            _once("no pidfds", "pidfd_open failed")
            return None
        try:
            _client = Client(loop)
            if not _exit_hooked:
                atexit.register(_at_exit)
                _exit_hooked = True
        except OSError as e:
            _broken_until = time.monotonic() + RETRY_AFTER
            _once("the spawner could not start", e)
    return _client if enabled else None


async def started(timeout: float = 10.0) -> Client | None:
    """The spawner of the running loop once it said it is ready (tests and benchmarks
    wait for it; the endpoint never does); None: there is none."""
    c = client()
    deadline = time.monotonic() + timeout
    while c is not None and c.alive and not c.ready and time.monotonic() < deadline:
        await asyncio.sleep(0.002)
    return c if c is not None and c.ready else None


PASSED_FROM = 3  # spawner.PASSED_FROM: where ``pass_fds`` land in the child


async def try_spawn(argv: list[str], *, env: dict[str, str], stdio: tuple[int, int, int],
                    plan: enter.Plan | None = None, holder: enter.HolderPlan | None = None,
                    connect: tuple[int, str, int, float] | None = None, reply: int = -1,
                    pass_fds: Sequence[int] = ()) -> SpawnedChild | None:
    """``argv`` forked by the spawner, leading a new session, with exactly ``env``:
    ``stdio`` fds (or DEVNULL) as its 0, 1 and 2, ``pass_fds`` as PASSED_FROM, +1, ...,
    no other fd; before its exec it runs ``holder``'s steps (a jail's bwrap:
    enter.run_holder) or ``plan``'s (a session: enter.run), then with ``connect``
    (family, address, port, timeout) hands a connected socket back over ``reply``
    (enter.connect_back). The caller keeps its fds (the plan's too) and closes them once
    this returns.

    None when there is no spawner ready (not enabled, not started, still booting, or it
    died while asked: then once it was reaped, so that nothing of this request runs), or
    the request does not fit in one message: the caller then starts the child itself.
    OSError when the child failed before its exec.
    """
    c = client()
    if c is None or not c.ready:
        return None
    try:
        return await c.spawn(argv, env, stdio, plan=plan, holder=holder, connect=connect,
                             reply=reply, pass_fds=pass_fds)
    except Gone:
        await c.reaped  # its children died with it: none of this request is left
        _once("the spawner died", f"exit status {c.proc.returncode}")
    except OSError as e:
        if e.errno != errno.EMSGSIZE:
            raise
        _once("a request does not fit in one message", e)
    return None


async def spawn_jailed(argv: list[str], *, env: dict[str, str],
                       stdio: tuple[int, int, int], plan: enter.Plan | None,
                       connect: tuple[int, str, int, float] | None = None,
                       reply: int = -1) -> Process:
    """A session's process (or a forward's connector): ``try_spawn``, or when that cannot,
    forked by this process with the same steps as its preexec function (``plan`` None:
    no jail, for tests). OSError (spawner) or SubprocessError (in-process) when the child
    failed before its exec."""
    child = await try_spawn(argv, env=env, stdio=stdio, plan=plan, connect=connect,
                            reply=reply)
    if child is not None:
        return child
    std = [subprocess.DEVNULL if fd == DEVNULL else fd for fd in stdio]
    return await spawn(argv, stdin=std[0], stdout=std[1], stderr=std[2], env=env,
                       pass_fds=() if plan is None else tuple(plan.ns.values()),
                       preexec_fn=enter.preexec(plan, connect, reply), start_new_session=True)
