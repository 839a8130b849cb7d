"""Starting core's keeper process for one extension (``sandboxer.service.daemon``).

Kept apart from the process itself, standard library only, so the manager can start a
keeper for an extension (``Host.ensure_keeper``) without importing the service layer, and
the CLI's thin client can start the local service (``ensure_service``) without looking up
which extension hosts it: that takes every installed distribution's entry points, and so
``site``, which the keeper loads anyway.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from sandboxer.config import Settings
from sandboxer.early import MODULE, held

LOG_MAX = 8 << 20  # a keeper's log past this when a keeper starts is rotated (one old copy)
EXTENSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # always fullmatch


def lock_path(settings: Settings, extension: str) -> Path:
    return settings.run_dir / f"keeper-{_checked(extension)}.lock"


def service_lock_path(settings: Settings) -> Path:
    """Held, besides its own lock, by the keeper that hosts the local service."""
    return settings.run_dir / "service.lock"


def log_path(settings: Settings, extension: str | None) -> Path:
    """``extension``'s keeper's log; None: where a keeper started by ``ensure_service``
    writes until it knows its extension (it then moves to that one's, and removes this
    one when nothing was written to it)."""
    if extension is None:
        return settings.log_dir / "local-service.log"
    return settings.log_dir / f"keeper-{_checked(extension)}.log"


def _checked(extension: str) -> str:
    if not EXTENSION_NAME.fullmatch(extension):
        from sandboxer.errors import InvalidInput

        raise InvalidInput(f"invalid extension name {extension!r}")
    return extension


def open_log(path: Path, *, rotate: bool = True) -> int:
    """``path`` opened for appending (0600); with ``rotate``, first moved to ``NAME.1``
    (replacing the last one) when it grew past ``LOG_MAX``, so that years of keepers do
    not fill the disk. A rotation that fails (an append-only or bind-mounted log, a
    directory in the way) leaves the log as it is: it never stops a keeper."""
    if rotate:
        try:
            if path.stat().st_size > LOG_MAX:
                os.replace(path, path.with_name(f"{path.name}.1"))
        except OSError:
            pass
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def argv(settings: Settings, extension: str | None) -> list[str]:
    """How the keeper of ``extension`` for this home is started; None: the keeper of the
    extension that hosts the local service, looked up by the keeper."""
    which = ["--local-service"] if extension is None else ["--extension", _checked(extension)]
    # -P: no working directory on sys.path, so a module or an entry_points.txt planted
    # where the caller stood is never imported or read. (The keeper keeps that directory
    # as its own: relative paths in settings and file: refs mean what they meant.)
    return [sys.executable, "-P", "-m", MODULE, "--home", str(settings.home), *which,
            "--piped-settings"]


def running(settings: Settings, extension: str) -> bool:
    """Whether a keeper holds the lock (one flock attempt)."""
    return held(os.fspath(lock_path(settings, extension)))


def service_running(settings: Settings) -> bool:
    """Whether the keeper that hosts the local service runs (one flock attempt)."""
    return held(os.fspath(service_lock_path(settings)))


def ensure(settings: Settings, extension: str) -> None:
    """Start the keeper for ``extension`` in ``settings.home`` unless one runs."""
    settings.ensure()
    if not running(settings, extension):
        _start(settings, extension)


def ensure_service(settings: Settings) -> bool:
    """Start the keeper that hosts the local service in ``settings.home`` unless it runs
    (True: started); one that finds another keeper of that extension running (without
    the service) exits."""
    settings.ensure()
    if service_running(settings):
        return False
    _start(settings, None)
    return True


def _start(settings: Settings, extension: str | None) -> None:
    import subprocess
    import threading

    from sandboxer import childenv

    caller = {**os.environ, **settings.env}
    env = childenv.for_sandboxer(caller, settings.home)
    fd = open_log(log_path(settings, extension))
    try:
        proc = subprocess.Popen(argv(settings, extension), stdin=subprocess.PIPE,
                                stdout=fd, stderr=fd, start_new_session=True,
                                close_fds=True, env=env)
    finally:
        os.close(fd)
    childenv.send_piped(proc, caller)
    # Its first process exits right after the fork: reap it without blocking the caller.
    threading.Thread(target=proc.wait, daemon=True).start()
