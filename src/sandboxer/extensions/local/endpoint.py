"""The shared ext.local endpoint: one SSH listener per sandbox, sessions in bwrap.

``LocalExtension.housekeep`` runs it (``serve``) inside core's keeper process for
ext.local (``python -m sandboxer.service.daemon --extension ext.local``), which
``control.py`` starts on demand and which also keeps the leases. It holds an exclusive
flock on ``run/local-endpoint.pid`` for its whole life, serves newline-delimited JSON on
``run/local-endpoint.sock`` (ops ping, add, remove, list, destroy), and returns once it has
served no sandbox for ``SANDBOXER_LOCAL_IDLE_EXIT`` seconds (default 3). What it needs of
the store (states, live handles, descriptors, a destroy) comes from the ``Host`` core
hands it.

Secret values arrive in the ``add``, ``start`` and ``bind`` requests over the control
socket (0600, in a 0700 directory) and live only in this process's memory: never in
``sandbox.json``, never on a command line. A restarted endpoint restores sandboxes from
their records without them, then asks core for them again (``Host.rebind``, which
resolves the profile's refs in this process); until they are back, or where core cannot,
each session says what is missing (``SANDBOXER_SECRETS_MISSING``); see docs/secrets.md.
Stop, start, pause, resume, activity and bind: lifecycle.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh
from typing_extensions import override

from sandboxer import envvars, redaction
from sandboxer.config import Settings
from sandboxer.errors import Conflict
from sandboxer.extensions.local import cgroups, control, jail
from sandboxer.extensions.local.control import SANDBOX_ID, read_record, record_path
from sandboxer.extensions.local.holder import Jail, JailError
from sandboxer.extensions.local.lifecycle import Lifecycle
from sandboxer.extensions.local.sessions import Sandbox, SSHServer
from sandboxer.extensions.local.spec import LocalSpec

if TYPE_CHECKING:
    from sandboxer.extensions.base import Host

log = logging.getLogger(__name__)
FINAL_STATES = frozenset({"destroyed", "failed"})


class Daemon(Lifecycle):
    """The endpoint: registered sandboxes, their listeners and the control socket."""

    def __init__(self, settings: Settings, host: Host) -> None:
        self.settings = settings
        self.host = host
        self.sandboxes: dict[str, Sandbox] = {}
        self.shutting_down = False
        self.busy = 0
        self.accepting = False  # serving its control socket, and not shutting down
        self._ops: dict[str, asyncio.Lock] = {}  # per sandbox: its add and remove in turn
        self._waiting: dict[str, int] = {}  # per sandbox: ops holding or awaiting its lock
        self._failed: dict[str, str] = {}  # why a sandbox's jail did not start (started())
        self.root = os.geteuid() == 0
        self.bwrap = shutil.which("bwrap")
        self.cgroups = cgroups.detect()
        self.moved: set[str] = set()
        self._refreshing = asyncio.Lock()
        self.idle_exit = envvars.local_idle_exit(settings.env)
        self._stop = asyncio.Event()
        self._warned: set[str] = set()
        self._asking: set[asyncio.Task[None]] = set()  # rebinds of sandboxes added late

    def _warn_once(self, what: str, e: Exception) -> None:
        # A missing store would otherwise flood the log every second.
        level = logging.DEBUG if what in self._warned else logging.WARNING
        self._warned.add(what)
        log.log(level, "%s failed: %s", what, e)

    def _lock(self, sid: str) -> asyncio.Lock:
        """One sandbox's lock: creates of different sandboxes do not wait for each other."""
        lock = self._ops.get(sid)
        if lock is None:
            lock = self._ops[sid] = asyncio.Lock()
        return lock

    @override
    @contextlib.asynccontextmanager
    async def _turn(self, sid: str) -> AsyncIterator[None]:
        """Hold ``sid``'s lock. It is dropped once nobody holds or waits for it and the
        sandbox is not served: never while an op waits for it (``locked()`` is False
        between a release and the next waiter's wake-up), or a new op would take a new
        lock and run beside that waiter."""
        lock = self._lock(sid)
        self._waiting[sid] = self._waiting.get(sid, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._waiting[sid] -= 1
            if not self._waiting[sid]:
                del self._waiting[sid]
                if sid not in self.sandboxes and self._ops.get(sid) is lock:
                    del self._ops[sid]

    @override
    async def add_here(self, req: dict[str, Any], secrets: object, *,
                       early: bool = False) -> int:
        """The ``add`` op, called in this process or from the control socket: serve the
        sandbox of ``req`` (a record, see control.py) with ``secrets``; its port.
        ``early``: return once it listens, while its jail starts (see ``started``)."""
        if self.shutting_down:
            raise control.DaemonUnavailable("the ext.local endpoint is shutting down")
        sid = str(req["sandbox_id"])
        self.busy += 1  # not idle meanwhile
        try:
            async with self._turn(sid):
                return await self._add({**req, "secrets": secrets, "early": early})
        finally:
            self.busy -= 1

    @override
    async def remove_here(self, sid: str) -> None:
        """The ``remove`` op: stop serving ``sid``; not served is fine."""
        async with self._turn(sid):
            await self._remove(sid)

    # -- sandboxes --------------------------------------------------------------------

    @override
    async def _add(self, req: dict[str, Any]) -> int:
        sid = str(req["sandbox_id"])
        if not SANDBOX_ID.fullmatch(sid):
            raise ValueError(f"invalid sandbox id {sid!r}")
        if sid in self.sandboxes:
            return self.sandboxes[sid].port
        if req.get("stopped"):
            raise Conflict(f"ext.local sandbox {sid} is stopped",
                           hint=f"sandboxer start {sid} serves it again")
        if self.bwrap is None:
            raise ValueError("bwrap is not installed (apt-get install bubblewrap)")
        secrets = jail.checked_secrets(req.get("secrets"))
        sb = Sandbox(
            id=sid,
            user=str(req["user"]),
            workspace=Path(req["workspace"]),
            host_uid=int(req["host_uid"]),
            spec=LocalSpec.model_validate(req.get("spec") or {}),
            env={str(k): str(v) for k, v in (req.get("env") or {}).items()},
            client_key=asyncssh.import_public_key(str(req["authorized_key"])),
            secrets=secrets,
            secrets_missing=[str(n) for n in req.get("secret_names") or [] if n not in secrets],
        )
        if sb.secrets_missing:
            # Served without its secrets (a restore): sessions wait until core was asked
            # for them (after_restore; run() asks for those restored before it accepts).
            sb.rebound = asyncio.Event()
            if self.accepting:
                asking = asyncio.create_task(self.after_restore([sid]), name=f"rebind {sid}")
                asking.add_done_callback(_retrieved)
                self._asking.add(asking)
                asking.add_done_callback(self._asking.discard)
        host_key = asyncssh.read_private_key(str(req["host_key_path"]))
        sb.jail = self._jail(sb)
        sb.revive = partial(self._revive, sb)
        wanted = int(req.get("port") or 0)
        try:
            sb.acceptor = await self._listen(sb, host_key, wanted)
        except OSError as e:
            if not wanted:
                raise
            # Taken while nobody served it: a new port, and a new descriptor (moved).
            log.warning("port %d of %s is taken (%s); serving it on a new port", wanted, sid, e)
            sb.acceptor = await self._listen(sb, host_key, 0)
        # The jail starts while the client connects: a session waits for it (started()).
        sb.starting = asyncio.create_task(self._start(sb), name=f"jail {sid}")
        sb.starting.add_done_callback(_retrieved)
        self.sandboxes[sid] = sb
        self._failed.pop(sid, None)
        if not req.get("early"):
            await self.started(sid)
        if wanted and sb.port != wanted:
            self._moved(req, sb.port)
        return sb.port

    async def _start(self, sb: Sandbox) -> None:
        """Start a new sandbox's jail; when it fails, the sandbox is not served."""
        if sb.jail is None:
            return
        try:
            await sb.jail.start()
        except BaseException as e:
            if self.sandboxes.get(sb.id) is sb:
                del self.sandboxes[sb.id]
                if isinstance(e, Exception):  # kept for started(), asked after the fact
                    if len(self._failed) > 1000:
                        self._failed.clear()
                    self._failed[sb.id] = str(e)
            if sb.acceptor is not None:
                sb.acceptor.close()
            raise
        redaction.register(sb.secrets.values())
        log.info("serving %s on 127.0.0.1:%d (host uid %d, jail pid %d)", sb.id, sb.port,
                 sb.host_uid, sb.jail.holder_pid)
        if sb.secrets_missing:
            log.warning("%s is served without its secrets %s for now: they lived only in the "
                        "memory of the endpoint that stopped (core is asked to bind them "
                        "again)", sb.id, ", ".join(sb.secrets_missing))

    @override
    async def started(self, sid: str) -> None:
        """Return once ``sid``'s jail runs; raise why it did not start (then it is not
        served any more)."""
        sb = self.sandboxes.get(sid)
        if sb is None and sid in self._failed:
            # It failed before this was asked (an early add returned meanwhile).
            raise JailError(self._failed[sid])
        if sb is None or sb.starting is None:
            return
        await asyncio.shield(sb.starting)

    def _moved(self, req: dict[str, Any], port: int) -> None:
        """Record a restored sandbox's new port: its record, its pinned known_hosts line,
        and (once the control socket answers) its stored descriptor."""
        from sandboxer.extensions import _keys

        record = {k: v for k, v in req.items() if k not in ("op", "secrets", "early")}
        host_public = _keys.public_of(Path(str(record["host_key_path"])))
        control.record_served(self.settings, record, port, host_public)
        self.moved.add(str(record["sandbox_id"]))

    @override
    async def _refresh_moved(self) -> None:
        """Store the new descriptors of sandboxes restored on a new port (core reads the
        endpoint back through ``add``: never under a sandbox's lock)."""
        async with self._refreshing:
            while self.moved:
                sid = self.moved.pop()
                try:
                    if await self.host.refresh_reachability(sid):
                        log.info("%s: its descriptor now names its new port", sid)
                except Exception as e:
                    self._warn_once(f"refreshing the descriptor of {sid}", e)

    @override
    def _jail(self, sb: Sandbox) -> Jail:
        return Jail(sandbox_id=sb.id, user=sb.user, workspace=sb.workspace,
                    host_uid=sb.host_uid, spec=sb.spec, bwrap=self.bwrap or "bwrap",
                    root=self.root,
                    cgroup=self.cgroups.sandbox(sb.id) if self.cgroups else None,
                    secrets=sb.secrets)

    async def _listen(self, sb: Sandbox, host_key: asyncssh.SSHKey,
                      port: int) -> asyncssh.SSHAcceptor:
        return await asyncssh.listen(
            host="127.0.0.1",
            port=port,
            reuse_address=True,
            server_host_keys=[host_key],
            # Sessions (SSHServer.session_requested): processes in the jail, sftp too.
            server_factory=partial(SSHServer, sb, bwrap=self.bwrap, root=self.root),
            encoding=None,
            line_editor=False,
            allow_scp=False,
            sftp_factory=None,
            agent_forwarding=False,
            x11_forwarding=False,
            login_timeout=30,
        )

    @override
    async def _remove(self, sid: str) -> None:
        sb = self.sandboxes.pop(sid, None)
        if sb is None:
            return
        if sb.starting is not None and not sb.starting.done():
            sb.starting.cancel()
            with contextlib.suppress(BaseException):
                await sb.starting
        redaction.unregister(sb.secrets.values())
        sb.secrets.clear()
        if sb.acceptor is not None:
            sb.acceptor.close()
        procs = [p for server in list(sb.conns) for p in server.procs]
        for server in list(sb.conns):
            if server.conn is not None:
                server.conn.abort()
            server.connection_lost(None)
        if procs:
            await asyncio.wait([asyncio.create_task(p.wait()) for p in procs], timeout=3)
        if sb.jail is not None:
            await sb.jail.stop()
        log.info("removed %s", sid)

    # -- restore, housekeeping --------------------------------------------------------

    async def _restore(self) -> list[str]:
        """Serve again every live sandbox of this home, on its recorded port, but for
        stopped ones; the ids served.

        Candidates are the store's live handles plus every sandbox dir with a record (a
        store that does not know an id cannot veto it); any id whose state is final is not.
        """
        root = self.settings.local_root
        ids = {p.parent.name for p in root.glob("*/sandbox.json")
               if control.owned_by(self.settings, p.parent)} if root.is_dir() else set()
        try:
            ids |= {h.sandbox_id for h in self.host.live_handles()}
            states = self.host.states(sorted(ids)) if ids else {}
            ids -= {sid for sid, state in states.items() if state in FINAL_STATES}
        except Exception as e:
            self._warn_once("reading the store", e)
        restored = []
        for sid in sorted(ids):
            record = read_record(self.settings, sid)
            if record is None:
                log.info("not restoring %s: no %s", sid, record_path(self.settings, sid))
                continue
            if record.get("stopped"):
                continue  # start serves it again
            try:
                async with self._turn(sid):
                    await self._add(record)
                restored.append(sid)
            except Exception:
                log.exception("restoring %s failed", sid)
        return restored

    async def _revive_jails(self) -> None:
        for sb in list(self.sandboxes.values()):
            if sb.jail is not None and not sb.jail.alive and sb.started:
                await self._revive(sb)

    async def _revive(self, sb: Sandbox) -> None:
        """A jail that ended under a live sandbox (its waiting process was killed, or the
        OOM killer chose it) starts again, empty, as after a reboot."""
        async with sb.revive_lock:
            if (self.sandboxes.get(sb.id) is not sb or sb.jail is None or sb.jail.alive
                    or not sb.started):
                return
            log.warning("the jail of %s ended; starting it again", sb.id)
            await sb.jail.stop()
            sb.jail = self._jail(sb)
            try:
                await sb.jail.start()
            except Exception as e:
                self._warn_once(f"restarting the jail of {sb.id}", e)

    async def _housekeeping(self) -> None:
        await self._revive_jails()
        await self._refresh_moved()
        try:
            ids = list(self.sandboxes)
            if ids:
                for sid, state in self.host.states(ids).items():
                    if state in FINAL_STATES:
                        log.info("dropping %s: its state is %s", sid, state)
                        await self.remove_here(sid)
        except Exception as e:
            self._warn_once("store check", e)

    def _orphaned(self, socket_inode: int) -> bool:
        """True once our home is gone or another daemon took over our socket path."""
        try:
            return os.stat(control.socket_path(self.settings)).st_ino != socket_inode
        except FileNotFoundError:
            return True

    async def run(self, bind: Callable[[Daemon | None], None] | None = None) -> None:
        """Serve until idle or stopped; ``bind`` is told of this endpoint while it accepts
        (so that a Service in this process adds its sandboxes directly)."""
        path = control.socket_path(self.settings)
        path.unlink(missing_ok=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        # Restore before answering, so a client that sees us up also sees its sandbox.
        restored = await self._restore()
        server = await asyncio.start_unix_server(self._control, str(path))
        path.chmod(0o600)
        inode = os.stat(path).st_ino
        log.info("endpoint %d ready with %d sandbox(es)", os.getpid(), len(self.sandboxes))
        self.accepting = True
        if bind is not None:
            bind(self)
        # Secrets back, through core and then this endpoint's bind (it answers now).
        after = asyncio.create_task(self.after_restore(restored), name="after restore")
        after.add_done_callback(_retrieved)
        tick = max(0.05, min(1.0, self.idle_exit / 3))
        idle_since: float | None = None
        try:
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), tick)
                if self._orphaned(inode):
                    # Nobody can reach us any more (the home was deleted): serving on would
                    # keep jails alive that no store knows about.
                    log.warning("control socket %s is gone; exiting", path)
                    break
                await self._housekeeping()
                if self.sandboxes or self.busy or self.host.busy():
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since >= self.idle_exit:
                    break
        finally:
            # No await between the check above and this flag: a late add sees it.
            self.shutting_down = True
            self.accepting = False
            after.cancel()
            if bind is not None:
                bind(None)
            server.close()
            path.unlink(missing_ok=True)
            for sid in list(self.sandboxes):
                await self._remove(sid)
            log.info("endpoint %d exiting", os.getpid())


def _retrieved(task: asyncio.Task[None]) -> None:
    """A jail start nobody waited for (its create gave up) failed: it is logged."""
    if not task.cancelled() and (e := task.exception()) is not None:
        log.info("%s did not start: %s", task.get_name(), e)


def _lock_pid_file(settings: Settings, timeout: float = 10.0) -> int | None:
    """Hold the pid file's flock; wait out a daemon that is still shutting down."""
    path = control.pid_path(settings)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            time.sleep(0.02)
            continue
        # The previous owner unlinks the file on exit: make sure we locked the live one.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
    return None


async def serve(settings: Settings, host: Host,
                bind: Callable[[Daemon | None], None] | None = None) -> None:
    """Run the endpoint until it is idle (``LocalExtension.housekeep``); ``bind``: see
    ``Daemon.run``."""
    logging.getLogger("asyncssh").setLevel(logging.WARNING)  # one line per packet otherwise
    fd = await asyncio.to_thread(_lock_pid_file, settings)
    if fd is None:
        log.info("another endpoint holds %s; exiting", control.pid_path(settings))
        return
    try:
        await Daemon(settings, host).run(bind)
    finally:
        control.pid_path(settings).unlink(missing_ok=True)
        os.close(fd)
