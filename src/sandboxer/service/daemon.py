"""Core's keeper process for one extension: ``python -m sandboxer.service.daemon``.

    python -m sandboxer.service.daemon --home HOME --extension NAME [--foreground]
    python -m sandboxer.service.daemon --home HOME --local-service [--foreground]

One runs per home and extension: it holds an exclusive flock on
``run/keeper-<NAME>.lock`` for its whole life (a second one finds it taken and exits). It
keeps the extension's leases, reaping them every ``Extension.keeper_interval()`` seconds
(the same code as every CLI call and ``sandboxer reap``), so a lease ends even when nobody
runs a command (and ``ttl.retain`` stops, then destroys). When the extension implements
``ReportsActivity`` it also watches its sandboxes of profiles with ``idle``
(``sandboxer.idling``, every ``SANDBOXER_IDLE_INTERVAL`` seconds). The keeper that hosts
the local service also keeps the warm pools of its extension's profiles filled
(``sandboxer.pools``). When the extension implements ``Housekeeping`` (ext.local serves
its SSH endpoints there) it awaits ``housekeep(host)`` alongside and exits when that
returns; otherwise it exits once no sandbox of the extension has been live for
``IDLE_EXIT`` seconds (stopped and paused ones are live: a sandbox kept by ``ttl.retain``
or watched for being idle keeps it running). It forks once at start, so whoever spawns it
can reap its first process at once.

``--local-service`` names no extension: the keeper looks up the one that hosts the local
service (``service/wire.py``), which the CLI's thin client then need not do, and moves its
output from ``log/local-service.log`` to that extension's keeper log. The keeper that
hosts the local service also holds ``run/service.lock`` (``keeper.service_running``).

It starts with an allow-listed environment (``childenv.for_sandboxer``), never a copy of
its caller's: it outlives the command that started it. One that a first ``create``
spawned at its first line (``--started-early``, ``sandboxer/early.py``) starts with even
less (what the interpreter's start reads), reads that environment from its stdin once the
command has read its settings, and opens its log itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandboxer import early
from sandboxer.config import Settings
from sandboxer.keeper import (
    EXTENSION_NAME,
    argv,
    ensure,
    lock_path,
    log_path,
    open_log,
    running,
    service_lock_path,
)

if TYPE_CHECKING:
    from sandboxer.extensions.base import Extension, Host
    from sandboxer.service.app import Service
    from sandboxer.service.local import LocalService

log = logging.getLogger(__name__)
IDLE_EXIT = 30.0  # seconds without a live sandbox before a keeper without housekeeping exits
# The cyclic garbage collector is off from the start of ``main`` until this long after the
# keeper serves (``_settle``). A start allocates ~80,000 objects that live as long as the
# process (modules, classes, pydantic's validators); with the collector on, their
# allocation alone set off collections that scanned them all, ~35 ms of a first create.
GC_AFTER = 5.0
LOCK_WAIT = 10.0  # how long a new keeper waits out one that is still shutting down
STOP_WAIT = 60.0  # how long a reap under way may take to finish when the keeper stops

__all__ = ["EXTENSION_NAME", "argv", "ensure", "keep", "lock_path", "log_path", "main",
           "running"]


def _extension(settings: Settings, name: str) -> tuple[Service, Extension]:
    """The application service this process hosts (the one every shell calls) and the
    extension with the host core gives it: the one place it builds core."""
    from sandboxer.service.app import Service
    from sandboxer.service.local import route_progress

    service = Service(settings, upkeep=False, progress=route_progress)
    return service, service.manager.extension(name)


def _resolve(settings: Settings) -> str | None:
    """``--local-service``: the extension that hosts the local service, with this
    process's output moved to its keeper log; None (logged) when none is installed."""
    from sandboxer.service import wire

    name = wire.host_extension()
    if name is None:
        log.error("no installed extension hosts a local service (entry-point group %s)",
                  wire.GROUP)
        return None
    first = log_path(settings, None)
    _log_to(open_log(log_path(settings, name), rotate=False))  # whoever started us rotated
    with contextlib.suppress(OSError):
        if first.stat().st_size == 0:
            first.unlink()
    return name


def _log_to(fd: int) -> None:
    """This process's output from now on goes to ``fd`` (which is closed)."""
    try:
        for out in (sys.stdout, sys.stderr):
            out.flush()
            os.dup2(fd, out.fileno())
    finally:
        os.close(fd)


def _hosts_local_service(extension: str) -> bool:
    """Whether this keeper hosts the local service (``service/local.py``): its extension
    registers under ``sandboxer.local_service``. With SANDBOXER_LOCAL_SERVICE=0 it still
    binds the socket and answers every request ``fallback``, at once."""
    from sandboxer.service import wire

    return extension == wire.host_extension()


async def _local_service(service: Service, sock: socket.socket | None,
                         keeping: set[asyncio.Task[Any]]) -> LocalService | None:
    """The local service on ``sock``, started (None without a socket); it takes requests
    only while every task in ``keeping`` runs (once one ends, the keeper stops)."""
    if sock is None:
        return None
    from sandboxer.service.local import LocalService

    local = LocalService(service)
    local.alive = lambda: not any(t.done() for t in keeping)
    service.manager.busy = local.busy
    await local.start(sock)
    return local


async def _pools(service: Service, extension: str) -> None:
    """Keep the warm pools of ``extension``'s profiles filled (sandboxer.pools), until
    cancelled; a round that fails is logged and the next one runs as usual."""
    from sandboxer.pools import REFILL_INTERVAL

    while True:
        try:
            if made := await service.refill_pools(extension=extension):
                log.info("provisioned %d sandbox(es) ahead for warm pools", made)
        except Exception as e:
            log.warning("refilling the warm pools of %s failed: %s", extension, e)
        await asyncio.sleep(REFILL_INTERVAL)


def _settle(loop: asyncio.AbstractEventLoop, busy: Callable[[], bool]) -> None:
    """``GC_AFTER`` seconds after the keeper serves, or once no request runs: every model's
    validator built (the keeper defers them, models/building.py; building one is not
    thread-safe in pydantic, and worker threads validate too), the garbage of the start
    collected (a value it held goes now, not never), what is left frozen (never scanned
    again: it lives as long as the process) and the collector back on."""
    if busy():
        loop.call_later(1.0, _settle, loop, busy)
        return
    from sandboxer.models.base import build_all

    try:
        build_all()
    finally:
        if not gc.isenabled():
            gc.collect()
            gc.freeze()
            gc.enable()


def _lock(path: Path, timeout: float = LOCK_WAIT) -> int | None:
    """Hold ``path``'s flock, waiting out a keeper that is still shutting down."""
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)
            continue
        try:  # a home deleted and made again meanwhile has a new lock file
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _orphaned(path: Path, fd: int) -> bool:
    """True once our lock file is gone or replaced (the home was deleted)."""
    try:
        return os.stat(path).st_ino != os.fstat(fd).st_ino
    except FileNotFoundError:
        return True


class _Leases:
    """The lease keeper: reap on an interval; report when idle for ``idle_exit``."""

    def __init__(self, host: Host, interval: float, idle_exit: float | None,
                 lock: tuple[Path, int] | None) -> None:
        self.host = host
        self.interval = interval
        self.idle_exit = idle_exit
        self.lock = lock
        self._warned: set[str] = set()
        self._stopping: asyncio.Event | None = None

    def stop(self) -> None:
        """Return after the reap under way, if any (a destroy is not cut in half)."""
        if self._stopping is not None:
            self._stopping.set()

    def _warn_once(self, what: str, e: Exception) -> None:
        # A missing store would otherwise flood the log every interval.
        level = logging.DEBUG if what in self._warned else logging.WARNING
        self._warned.add(what)
        log.log(level, "%s failed: %s", what, e)

    async def run(self) -> None:
        """Return once idle (without housekeeping), orphaned or stopped; never raises."""
        self._stopping = stopping = asyncio.Event()
        idle_since: float | None = None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.interval)
            if stopping.is_set():
                return
            if self.lock is not None and _orphaned(*self.lock):
                log.warning("%s is gone; exiting", self.lock[0])
                return
            try:
                if reaped := await self.host.reap():
                    log.info("reaped %d sandbox(es) of %s", reaped, self.host.extension)
            except Exception as e:
                self._warn_once("lease reaping", e)
            if self.idle_exit is None:
                continue
            try:
                live = bool(self.host.live_handles())
            except Exception as e:
                self._warn_once("reading the live sandboxes", e)
                live = True
            if live:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= self.idle_exit:
                log.info("no live sandbox of %s for %gs; exiting", self.host.extension,
                         self.idle_exit)
                return


async def keep(settings: Settings, extension: str, *, idle_exit: float = IDLE_EXIT,
               lock: tuple[Path, int] | None = None,
               service_socket: socket.socket | None = None) -> None:
    """Keep ``extension``'s leases and run its housekeeping until there is nothing left.

    ``lock``: the held lock file and its fd; the keeper exits once that file is gone.
    ``service_socket``: the local service's listening socket, when this keeper hosts it.
    """
    import signal

    from sandboxer import idling
    from sandboxer.extensions.base import Housekeeping, ReportsActivity

    service, ext = _extension(settings, extension)
    host = ext.host
    housekeeping = isinstance(ext, Housekeeping)
    leases = _Leases(host, ext.keeper_interval(), None if housekeeping else idle_exit, lock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # housekeeping may install its own
        loop.add_signal_handler(sig, stop.set)
    keeping = asyncio.create_task(leases.run(), name="leases")
    others: set[asyncio.Task[Any]] = {asyncio.create_task(stop.wait(), name="stop")}
    if isinstance(ext, Housekeeping):
        others.add(asyncio.create_task(ext.housekeep(host), name="housekeep"))
    if isinstance(ext, ReportsActivity):  # never returns: it ends with the keeper
        watcher = idling.Watcher(service.manager, extension=extension)
        others.add(asyncio.create_task(watcher.run(idling.interval_of(service.manager)),
                                       name="idle"))
    if service_socket is not None:  # the local service hosts its extension's warm pools
        others.add(asyncio.create_task(_pools(service, extension), name="pools"))
    local = await _local_service(service, service_socket, {keeping, *others})
    loop.call_later(GC_AFTER, _settle, loop, lambda: local is not None and local.inflight > 0)
    log.info("keeper %d for %s in %s%s%s", os.getpid(), extension, settings.home,
             " with its housekeeping" if housekeeping else "",
             " and the local service" if local else "")
    try:
        done, _pending = await asyncio.wait({keeping, *others},
                                            return_when=asyncio.FIRST_COMPLETED)
    finally:
        if local is not None:  # requests under way finish before the endpoints stop
            await local.close(STOP_WAIT)
        leases.stop()
        for task in others:
            task.cancel()  # housekeeping cleans up when cancelled (a stop, an orphaned home)
        await asyncio.gather(*others, return_exceptions=True)
        try:
            await asyncio.wait_for(keeping, STOP_WAIT)
        except TimeoutError:
            log.warning("a reap of %s was still running after %gs; stopping it", extension,
                        STOP_WAIT)
    for task in done:
        if not task.cancelled() and (e := task.exception()) is not None:
            raise e


def _loader_cache_only() -> None:
    """Make ``ctypes.util.find_library`` ask only the dynamic loader's cache, read once,
    in this process.

    asyncssh's import looks for liboqs twice and for nettle, libseccomp's binding for
    itself; on Linux each miss then runs gcc and ld (~15 ms each where a compiler is
    installed), and each look runs ``ldconfig -p`` (~3 ms from a process this large). A
    keeper starts with an allow-listed environment (no LD_LIBRARY_PATH), so the loader
    finds a library by name only through its cache: the cache's answer is the one that
    matters, and it is read here once (with the regex CPython's own lookup uses)."""
    import ctypes.util
    import functools
    import re
    import struct
    import subprocess

    if not sys.platform.startswith("linux") or not callable(
            getattr(ctypes.util, "_findSoname_ldconfig", None)):  # CPython on Linux
        return

    @functools.cache
    def listing() -> bytes:
        try:
            return subprocess.run(["/sbin/ldconfig", "-p"], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  env={"LC_ALL": "C", "LANG": "C"}, check=False).stdout
        except OSError:
            return b""

    machine = f"{os.uname().machine}-{struct.calcsize('l') * 8}"
    abi = _LOADER_ABI.get(machine, "libc6")

    def find_library(name: str) -> str | None:
        pattern = rf"\s+(lib{re.escape(name)}\.[^\s]+)\s+\({abi}"
        found = re.search(os.fsencode(pattern), listing())
        return os.fsdecode(found.group(1)) if found else None

    ctypes.util.find_library = find_library


# ctypes.util's own table: how ``ldconfig -p`` names the ABI of this machine's libraries.
_LOADER_ABI = {"x86_64-64": "libc6,x86-64", "ppc64-64": "libc6,64bit",
               "sparc64-64": "libc6,64bit", "s390x-64": "libc6,64bit",
               "ia64-64": "libc6,IA-64"}


def main(args: list[str] | None = None) -> int:
    from sandboxer.models import building

    collecting, deferring = gc.isenabled(), building.defer
    gc.disable()  # until the keeper serves: GC_AFTER
    building.defer = True  # before any model is imported (models/building.py)
    try:
        return _main(args)
    finally:  # as they were, for a caller in this process (tests)
        building.defer = deferring
        if collecting:
            gc.enable()


def _main(args: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="sandboxer-daemon")
    ap.add_argument("--home", required=True)
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--extension")
    which.add_argument("--local-service", action="store_true",
                       help="the extension that hosts the local service")
    ap.add_argument("--foreground", action="store_true", help="do not fork")
    ap.add_argument("--idle-exit", type=float, default=IDLE_EXIT, help=argparse.SUPPRESS)
    ap.add_argument("--piped-settings", action="store_true",
                    help="read the settings kept out of the environment from stdin")
    ap.add_argument(early.FLAG, dest="started_early", action="store_true",
                    help="started by sandboxer/early.py: read the environment from stdin "
                    "and open the log")
    opts = ap.parse_args(args)
    if opts.extension is not None and not EXTENSION_NAME.fullmatch(opts.extension):
        ap.error(f"invalid extension name {opts.extension!r}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    from sandboxer import childenv
    from sandboxer.errors import SandboxerError

    # Settings kept out of our environment by whoever started us (childenv.PIPED): into
    # os.environ, which /proc/PID/environ does not show, before anything reads settings.
    if opts.started_early:  # all of it, once the command read its own settings
        handed = childenv.receive_environ(sys.stdin.buffer)
        if handed is None:
            return 0  # the command is served otherwise (another home, another process)
        os.environ.clear()
        os.environ.update(handed)
    elif opts.piped_settings:
        os.environ.update(childenv.receive_piped(sys.stdin.buffer))
    try:
        settings = Settings.from_env({**os.environ, "SANDBOXER_HOME": opts.home})
        settings.ensure()
    except SandboxerError as e:
        log.error("%s", e.render())
        return 1
    if opts.started_early:  # its starter could not open the log before the home existed
        _log_to(open_log(log_path(settings, None)))
    if not opts.foreground and os.fork() > 0:
        os._exit(0)  # the caller reaps this parent at once; the keeper is adopted by init
    _loader_cache_only()
    from sandboxer import redaction

    redaction.install()
    extension = opts.extension or _resolve(settings)
    if extension is None:
        return 1
    path = lock_path(settings, extension)
    fd = _lock(path)
    if fd is None:
        log.info("another keeper holds %s; exiting", path)
        return 0
    service_socket = None
    service_lock = None
    try:
        if opts.local_service or _hosts_local_service(extension):
            from sandboxer.service.local import bind

            # Ours once we hold the keeper lock: a keeper stopping still held it until
            # just before it let go of that one.
            service_lock = _lock(service_lock_path(settings))
            if service_lock is None:  # another keeper hosts it (another extension's)
                log.info("another keeper holds %s; exiting", service_lock_path(settings))
                return 0
            # Bound before anything loads: a client connects at once and waits for us.
            service_socket = bind(settings)
        asyncio.run(keep(settings, extension, idle_exit=opts.idle_exit, lock=(path, fd),
                         service_socket=service_socket))
    except SandboxerError as e:
        log.error("keeper for %s: %s", extension, e.render())
        return 1
    finally:
        if service_socket is not None:
            service_socket.close()
        for held in (service_lock, fd):  # the service's first: see above
            if held is not None:
                with contextlib.suppress(OSError):
                    os.close(held)
    return 0


if __name__ == "__main__":
    sys.exit(main())
