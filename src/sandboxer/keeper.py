"""Starting core's keeper process for one extension (``sandboxer.service.daemon``).

Kept apart from the process itself, standard library only, so the manager can start a
keeper for an extension (``Host.ensure_keeper``) without importing the service layer.
"""

from __future__ import annotations

import fcntl
import os
import re
import sys
from pathlib import Path

from sandboxer.config import Settings

MODULE = "sandboxer.service.daemon"
EXTENSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # always fullmatch


def lock_path(settings: Settings, extension: str) -> Path:
    return settings.run_dir / f"keeper-{_checked(extension)}.lock"


def log_path(settings: Settings, extension: str) -> Path:
    return settings.log_dir / f"keeper-{_checked(extension)}.log"


def _checked(extension: str) -> str:
    if not EXTENSION_NAME.fullmatch(extension):
        from sandboxer.errors import InvalidInput

        raise InvalidInput(f"invalid extension name {extension!r}")
    return extension


def argv(settings: Settings, extension: str) -> list[str]:
    """How the keeper of ``extension`` for this home is started."""
    return [sys.executable, "-m", MODULE, "--home", str(settings.home),
            "--extension", _checked(extension), "--piped-settings"]


def running(settings: Settings, extension: str) -> bool:
    """Whether a keeper holds the lock (one flock attempt)."""
    fd = os.open(lock_path(settings, extension), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def ensure(settings: Settings, extension: str) -> None:
    """Start the keeper for ``extension`` in ``settings.home`` unless one runs."""
    import subprocess
    import threading

    from sandboxer import childenv

    settings.ensure()
    if running(settings, extension):
        return
    caller = {**os.environ, **settings.env}
    env = childenv.for_sandboxer(caller, settings.home)
    fd = os.open(log_path(settings, extension), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                 0o600)
    try:
        proc = subprocess.Popen(argv(settings, extension), stdin=subprocess.PIPE,
                                stdout=fd, stderr=fd, start_new_session=True,
                                close_fds=True, env=env)
    finally:
        os.close(fd)
    childenv.send_piped(proc, caller)
    # Its first process exits right after the fork: reap it without blocking the caller.
    threading.Thread(target=proc.wait, daemon=True).start()
