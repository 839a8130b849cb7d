"""Client side of the shared ext.local endpoint daemon: control socket and spawn-on-demand.

The endpoint runs in core's keeper process for ext.local (``python -m
sandboxer.service.daemon --home HOME --extension ext.local``, started here by its argv).
Protocol: one newline-terminated JSON object per connection each way. Requests carry
``op`` (ping, add, remove, list, destroy, started, stop, start, pause, resume, activity,
bind); replies carry ``ok`` and either the result or ``error`` (with ``code`` when it is a
sand-boxer error, raised again here as its class). Secret values travel only in ``add``,
``start`` and ``bind``, over this 0600 socket whose peer both sides check.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sandboxer import childenv
from sandboxer.config import Settings
from sandboxer.errors import (
    Conflict,
    InvalidInput,
    ProvisionFailed,
    SandboxerError,
    SandboxNotFound,
    UnsafePermissions,
)
from sandboxer.extensions.local.peer import check_server, unsafe

SHUTTING_DOWN = "shutting-down"
_REQUEST_TIMEOUT = 15.0
_START_TIMEOUT = 15.0
# Core's keeper process, which runs the endpoint as ext.local's housekeeping.
DAEMON = ("-P", "-m", "sandboxer.service.daemon", "--extension", "ext.local")  # -P: keeper.argv


SANDBOX_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # always fullmatch


def sandbox_dir(settings: Settings, sandbox_id: str) -> Path:
    if not SANDBOX_ID.fullmatch(sandbox_id):
        raise ProvisionFailed(f"invalid sandbox id {sandbox_id!r}")
    return settings.local_root / sandbox_id


def record_path(settings: Settings, sandbox_id: str) -> Path:
    """The sandbox's ``add`` request (no secrets), so a restarted daemon can serve it again."""
    return sandbox_dir(settings, sandbox_id) / "sandbox.json"


def read_record(settings: Settings, sandbox_id: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(record_path(settings, sandbox_id).read_text())
    except (OSError, ValueError):
        return None
    return data


def write_record(settings: Settings, sandbox_id: str, record: dict[str, Any]) -> None:
    path = record_path(settings, sandbox_id)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    tmp.replace(path)


def record_served(settings: Settings, record: dict[str, Any], port: int,
                  host_public: str) -> None:
    """A sandbox now served on ``port``: its record says so, and its known_hosts file pins
    its host key for that port (at create, and when a restore had to move it)."""
    from sandboxer.extensions import _keys
    from sandboxer.extensions.base import key_paths

    sid = str(record["sandbox_id"])
    write_record(settings, sid, {**record, "port": port})
    line = _keys.known_hosts_line("127.0.0.1", port, host_public)
    _keys.write_known_hosts(key_paths(settings, sid)["known_hosts"], [line])


def owner_path(sandbox_dir: Path) -> Path:
    """Which home created a sandbox dir: homes may share one SANDBOXER_LOCAL_ROOT."""
    return sandbox_dir / "owner"


def write_owner(settings: Settings, sandbox_dir: Path) -> None:
    fd = os.open(owner_path(sandbox_dir), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"instance": settings.instance, "home": str(settings.home)}, f)


def owned_by(settings: Settings, sandbox_dir: Path) -> bool | None:
    """True when this home created ``sandbox_dir``, False when another home did, None when
    nothing says (a create stopped before it wrote its mark).

    A dir from before owner marks counts as the home whose keys its record names.
    """
    try:
        mark = json.loads(owner_path(sandbox_dir).read_text())
        if mark.get("instance") == settings.instance:
            return True
        return Path(str(mark.get("home"))).resolve() == settings.home.resolve()
    except FileNotFoundError:
        pass
    except (OSError, ValueError, AttributeError):
        return False
    record = read_record(settings, sandbox_dir.name)
    if record is None:
        return None
    return Path(str(record.get("host_key_path"))).parent == settings.keys_dir


_RAISED: dict[str, type[SandboxerError]] = {
    "conflict": Conflict, "invalid_input": InvalidInput, "sandbox_not_found": SandboxNotFound}


class DaemonUnavailable(ProvisionFailed):
    """No endpoint daemon answers on the control socket (not running or going away)."""


def socket_path(settings: Settings) -> Path:
    return settings.run_dir / "local-endpoint.sock"


def pid_path(settings: Settings) -> Path:
    return settings.run_dir / "local-endpoint.pid"


def lock_path(settings: Settings) -> Path:
    return settings.run_dir / "local-endpoint.lock"


def log_path(settings: Settings) -> Path:
    # The same process as core's keeper for ext.local (sandboxer.keeper.log_path): one name
    # whichever of the two started it.
    return settings.log_dir / "keeper-ext.local.log"


def daemon_pid(settings: Settings) -> int | None:
    """The pid recorded by a live daemon, or None when the pid file is missing or stale."""
    try:
        pid = int(pid_path(settings).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


async def request(settings: Settings, op: str, **args: Any) -> dict[str, Any]:
    """Send one request; raises DaemonUnavailable when nobody (or a dying daemon) answers.

    Raises UnsafePermissions, having sent nothing, when the socket is not our endpoint's.
    """
    path = socket_path(settings)
    # Our uid behind the socket is not enough: a symlink put in a loosened run/ leads to
    # any socket of our uid, and an ``add`` carries the sandbox's resolved secret values.
    if unsafe(path, settings.home) is not None:
        settings.ensure()  # repairs what is ours but loose, refuses others' entries
    if (problem := unsafe(path, settings.home)) is not None:
        raise UnsafePermissions(
            f"refusing to send {op!r} to {path}: {problem}",
            hint=f"remove {path} (the ext.local endpoint makes it again) and make sure only "
                 f"you can write {path.parent} (sandboxer doctor)")
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise DaemonUnavailable(f"the ext.local endpoint is not running ({path})") from e
    try:
        check_server(writer.get_extra_info("socket"), path)
        writer.write(json.dumps({"op": op, **args}).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), _REQUEST_TIMEOUT)
    except (ConnectionError, TimeoutError) as e:
        raise DaemonUnavailable(f"the ext.local endpoint did not answer {op!r}: {e}") from e
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    if not line:
        raise DaemonUnavailable(f"the ext.local endpoint closed the connection during {op!r}")
    reply: dict[str, Any] = json.loads(line)
    if not reply.get("ok"):
        error = str(reply.get("error", "unknown error"))
        if error == SHUTTING_DOWN:
            raise DaemonUnavailable("the ext.local endpoint is shutting down")
        if reply.get("code") in _RAISED:
            raise _RAISED[str(reply["code"])](error, hint=reply.get("hint"))
        raise ProvisionFailed(
            f"ext.local endpoint: {op} failed: {error}",
            hint=f"see {log_path(settings)}",
        )
    return reply


async def ping(settings: Settings) -> bool:
    try:
        await request(settings, "ping")
    except DaemonUnavailable:
        return False
    return True


def _spawn(settings: Settings) -> subprocess.Popen[bytes]:
    settings.ensure()
    # Never a copy of the caller's environment (its secrets would sit in /proc/PID/environ
    # for the daemon's life): the system basics plus sand-boxer's settings, and the same
    # sand-boxer as its caller, installed or from a checkout.
    caller = {**os.environ, **settings.env}
    env = childenv.for_sandboxer(caller, settings.home)
    argv = [sys.executable, *DAEMON, "--home", str(settings.home), "--piped-settings"]
    fd = os.open(log_path(settings), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        # The daemon forks once and its first process exits, so nobody keeps a zombie.
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=fd, stderr=fd,
            start_new_session=True, close_fds=True, env=env,
        )
    finally:
        os.close(fd)
    childenv.send_piped(proc, caller)
    return proc


async def _lock(path: Path, deadline: float) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    delay = 0.005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise ProvisionFailed(f"timed out waiting for {path}") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)


async def ensure_running(settings: Settings, timeout: float = _START_TIMEOUT) -> None:
    """Make sure a daemon answers on the control socket, starting one if needed.

    Concurrent callers serialise on ``local-endpoint.lock`` so only one of them spawns.
    """
    if await ping(settings):
        return
    settings.ensure()
    deadline = time.monotonic() + timeout
    fd = await _lock(lock_path(settings), deadline)
    try:
        if await ping(settings):
            return
        proc = _spawn(settings)
        try:
            delay = 0.005
            while not await ping(settings):
                rc = proc.poll()
                if rc not in (None, 0) or time.monotonic() > deadline:
                    raise ProvisionFailed(
                        "the ext.local endpoint did not start"
                        + (f" (exit status {rc})" if rc not in (None, 0) else ""),
                        hint=f"see {log_path(settings)}",
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
        finally:
            # The daemon answers from its forked child; the first process exits right
            # after the fork (later on a loaded machine) and is reaped here, also when
            # the caller gave up waiting (a create that failed meanwhile).
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15.0)
    finally:
        os.close(fd)


async def call(settings: Settings, op: str, **args: Any) -> dict[str, Any]:
    """``request`` against a running daemon, starting or replacing it when it is gone."""
    for attempt in range(3):
        try:
            # Asked first, started only when nobody answers: one round trip, not a ping too.
            return await request(settings, op, **args)
        except DaemonUnavailable:
            if attempt < 2:
                await ensure_running(settings)
    raise ProvisionFailed(f"the ext.local endpoint kept going away during {op!r}",
                          hint=f"see {log_path(settings)}")


async def started(settings: Settings, sandbox_id: str) -> None:
    """Return once the endpoint runs ``sandbox_id``'s jail (after an ``early`` add)."""
    try:
        await call(settings, "started", sandbox_id=sandbox_id)
    except ProvisionFailed as e:
        # An endpoint from before early adds: its `add` answered once the jail ran.
        if "unknown op 'started'" not in e.message:
            raise


async def call_if_running(settings: Settings, op: str, **args: Any) -> dict[str, Any] | None:
    """``request`` only if a daemon is up; None otherwise (never starts one)."""
    try:
        return await request(settings, op, **args)
    except DaemonUnavailable:
        return None
