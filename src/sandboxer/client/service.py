"""ServiceClient: the CLI's thin client of the local service, standard library only.

``create``, ``destroy``, ``extend``, the lifecycle commands (``stop``, ``start``,
``pause``, ``resume``), ``snapshot``, ``fork``, ``ssh`` and ``reachability show`` send one
request
over ``$SANDBOXER_HOME/run/service.sock`` to the warm local service (``service/local.py``,
hosted by core's keeper for ext.local) and print its answer, so the command costs the
interpreter's start and a round trip instead of importing pydantic, the manager and an
SSH library and parsing the catalog every time. The service is started on demand, as
ext.local's endpoint always was.

``Unavailable`` means the request was not taken — no service can be started, or it runs
with other settings (``service/wire.py``: the settings key) — and the caller does the work
in its own process instead (``cli/_client.py``), exactly as before. Once a request is
taken, its answer (a result or an error with its stable code) is final: nothing is
retried in-process, so a create never runs twice.
"""

from __future__ import annotations

import _socket  # not socket.py, whose enums cost every command ~7 ms to build
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from sandboxer import childenv, early, keeper, peer
from sandboxer.config import Settings
from sandboxer.errors import SandboxerError, UnsafePermissions, from_code
from sandboxer.service import wire

START_TIMEOUT = 20.0  # a service that starts (imports, restores sandboxes) within this
STARTED_BY = 1.0  # a keeper that does not hold its lock after this has failed to start
BIND_WAIT = 0.5  # a running keeper's socket appears within this of its lock, or never


_started: set[str] = set()  # homes whose service this process started (start_early)


class Unavailable(Exception):
    """The local service did not take the request; do it in this process."""


class ServiceClient:
    """Requests to the local service of ``settings.home``, as the local operator."""

    def __init__(self, settings: Settings, env: Mapping[str, str],
                 progress: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.env = dict(env)
        self.key = wire.settings_key(env, settings.home)
        self.progress = progress or (lambda _m: None)

    # -- operations (each answers a sandboxer.sandbox/v1 document) ----------------------

    def create(self, profile_id: str, *, ttl: str | None = None, actor: str | None = None,
               labels: dict[str, str] | None = None, target: str | None = None,
               name: str | None = None, from_snapshot: str | None = None) -> dict[str, Any]:
        args = {"profile": profile_id, "ttl": ttl, "actor": actor,
                "labels": labels or {}, "target": target, "name": name,
                "from_snapshot": from_snapshot}
        doc: dict[str, Any] = self.call("create", args)
        return doc

    def snapshot(self, sandbox_id: str, *, name: str | None = None,
                 retain: str | None = None) -> dict[str, Any]:
        """A sandboxer.snapshot/v1 document."""
        doc: dict[str, Any] = self.call("snapshot", {"id": sandbox_id, "name": name,
                                                     "retain": retain})
        return doc

    def fork(self, sandbox_id: str, *, ttl: str | None = None,
             labels: dict[str, str] | None = None, name: str | None = None,
             actor: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = self.call("fork", {"id": sandbox_id, "ttl": ttl,
                                                 "labels": labels or {}, "name": name,
                                                 "actor": actor})
        return doc

    def get_document(self, sandbox_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.call("get", {"id": sandbox_id})
        return doc

    def extend(self, sandbox_id: str, ttl: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.call("extend", {"id": sandbox_id, "ttl": ttl})
        return doc

    def destroy_document(self, sandbox_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.call("destroy", {"id": sandbox_id})
        return doc

    def lifecycle(self, op: str, sandbox_id: str) -> dict[str, Any]:
        """``stop``, ``start``, ``pause`` or ``resume`` (``values.LIFECYCLE``)."""
        doc: dict[str, Any] = self.call(op, {"id": sandbox_id})
        return doc

    # -- the wire ---------------------------------------------------------------------

    def call(self, op: str, args: dict[str, Any]) -> Any:
        """One request; its result, or the error it answered (raised, final)."""
        request = wire.encode({"v": wire.PROTOCOL, "op": op, "args": args,
                               "key": self.key, "env": self.env})
        if len(request) > wire.MAX_LINE:  # the service would refuse it: do it here
            raise Unavailable(f"a request over {wire.MAX_LINE} bytes (the environment)")
        sock = self._connect()
        taken = False
        try:
            # The environment goes only to our own uid's service (checked in _open).
            sock.sendall(request)
            for line in _lines(sock):
                msg = json.loads(line)
                if msg.get("taken") is True:
                    taken = True
                elif "progress" in msg:
                    self.progress(str(msg["progress"]))
                elif msg.get("ok"):
                    return msg.get("result")
                elif "fallback" in msg:
                    raise Unavailable(str(msg["fallback"]))
                else:
                    err = msg.get("error") or {}
                    raise from_code(str(err.get("code")), str(err.get("message")))
        except ConnectionError as e:  # reset: a service that stopped as we connected
            if not taken:
                raise Unavailable(f"the local service went away before it took {op}") from e
        finally:
            sock.close()
        if not taken:  # it never ran this request (it was stopping): do it here
            raise Unavailable(f"the local service went away before it took {op}")
        raise SandboxerError(f"the local service stopped before it answered {op}",
                             hint=f"its log is under {self.settings.log_dir}; `sandboxer "
                                  "list --all` shows what became of the sandbox")

    def _open(self) -> _socket.socket:
        path = wire.socket_path(self.settings)
        # Our uid behind the socket is not enough: a symlink put in a loosened run/ leads
        # to any socket of our uid, and the request carries our whole environment.
        if peer.unsafe(path, self.settings.home) is not None:
            self.settings.ensure()  # repairs what is ours but loose, refuses others' entries
            if (problem := peer.unsafe(path, self.settings.home)) is not None:
                raise UnsafePermissions(
                    f"refusing to send a request to {path}: {problem}",
                    hint=f"remove {path} (the local service makes it again) and make sure "
                         f"only you can write {path.parent} (sandboxer doctor)")
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.connect(os.fspath(path))
            peer.check_server(sock, path)  # before a byte is sent
        except BaseException:
            sock.close()
            raise
        return sock

    def _connect(self) -> _socket.socket:
        try:
            return self._open()
        except (FileNotFoundError, ConnectionRefusedError):
            pass
        except OSError as e:  # a path too long for a unix socket, a read-only home
            raise Unavailable(str(e)) from e
        try:
            # A keeper that hosts the service binds its socket right after taking its
            # lock: one that runs without it (SANDBOXER_LOCAL_SERVICE=0 when it started,
            # an older sand-boxer) will not grow one.
            # Which extension hosts it is the keeper's to look up (keeper.ensure_service).
            self.settings.ensure()  # a fresh home has no run/ yet
            running = keeper.service_running(self.settings)
            home = str(self.settings.home)
            if home in _started:  # start_early's keeper, still starting: not twice
                _started.discard(home)
            elif not running:
                keeper.ensure_service(self.settings)
        except OSError as e:
            raise Unavailable(f"cannot start the local service: {e}") from e
        start = time.monotonic()
        delay = 0.002
        while True:
            try:
                return self._open()
            except (FileNotFoundError, ConnectionRefusedError):
                waited = time.monotonic() - start
                if waited > (BIND_WAIT if running else START_TIMEOUT) or (
                        waited > STARTED_BY and not keeper.service_running(self.settings)):
                    raise Unavailable("the local service did not start") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.02)


def _lines(sock: _socket.socket) -> Iterator[bytes]:
    """The reply lines as they arrive (the last one may lack its newline)."""
    buf = b""
    while True:
        while b"\n" in buf:
            line, _, buf = buf.partition(b"\n")
            yield line
        chunk = sock.recv(65536)
        if not chunk:
            if buf:
                yield buf
            return
        buf += chunk
        if len(buf) > wire.MAX_LINE:
            raise SandboxerError(f"the local service sent a line over {wire.MAX_LINE} bytes")


def for_cli(progress: Callable[[str], None] | None = None) -> ServiceClient | None:
    """The thin client when this command may use the local service (no SANDBOXER_URL,
    SANDBOXER_LOCAL_SERVICE not 0); None otherwise."""
    env = os.environ
    if not _may_use(env):
        return None
    return ServiceClient(Settings.from_env(), env, progress)


def _may_use(env: Mapping[str, str]) -> bool:
    if env.get("SANDBOXER_URL"):
        return False
    from sandboxer import envvars

    return envvars.local_service(env)


def start_early() -> None:
    """Start the local service now when it is not running: called by ``create`` before its
    parser and request are built, so that the keeper's start (most of a first create)
    overlaps them. Anything that goes wrong is left for the request to meet."""
    env = os.environ
    try:
        if not _may_use(env):
            return
        settings = Settings.from_env()
        home = str(settings.home)
        fd = early.take(home)  # the keeper the command's first line started, if any
        if fd is not None and childenv.send_environ(fd, {**env, **settings.env},
                                                    settings.home):
            _started.add(home)
            return
        if os.path.exists(wire.socket_path(settings)):
            return  # up (or a dead one's socket: the request finds out)
        if keeper.ensure_service(settings):
            _started.add(home)
    except (OSError, SandboxerError):
        return
    finally:
        early.abandon()  # a keeper started early and left here reads nothing and exits
