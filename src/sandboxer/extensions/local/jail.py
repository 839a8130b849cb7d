"""The bubblewrap jail: argv, environment, generated files and the child's rlimits.

Argument arrays only, never shell strings. ``build_argv``, ``session_env`` and
``etc_files`` are pure; the small helpers below them create the fds a spawn needs. The
environment is never on bwrap's command line (argv is world-readable in /proc): the
caller passes ``session_env`` as the child's whole environment, and secret files reach
``/run/secrets`` through pipes (``--ro-bind-data FD``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import struct
import termios
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sandboxer.extensions.local.spec import LocalSpec

JAIL_UID = 1000
JAIL_HOME = "/workspace"
JAIL_PATH = "/usr/local/bin:/usr/bin:/bin"
# Names the jail sets itself; a profile's env cannot override them.
RESERVED_ENV = frozenset({"HOME", "USER", "LOGNAME", "SANDBOXER_ID", "TERM", "SHELL"})
_ROOT_ENTRIES = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
SECRETS_DIR = "/run/secrets"


@dataclass(frozen=True)
class Session:
    """One process to start in a sandbox's jail."""

    sandbox_id: str
    user: str
    workspace: Path
    spec: LocalSpec
    command: str | None = None
    term: str | None = None          # set for PTY sessions
    pty: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    # Resolved secret values by variable name; kept out of repr so a logged session is safe.
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)


def host_layout(root: Path = Path("/")) -> list[tuple[str, str | None]]:
    """Top-level entries to mirror: (name, symlink target) or (name, None) for a real dir.

    Debian 12 has merged /usr (``/bin -> usr/bin``); older layouts get read-only binds.
    """
    out: list[tuple[str, str | None]] = []
    for name in _ROOT_ENTRIES:
        p = root / name
        if p.is_symlink():
            out.append((name, os.readlink(p)))
        elif p.is_dir():
            out.append((name, None))
    return out


def etc_files(user: str, hostname: str, shell: str) -> dict[str, bytes]:
    """/etc/passwd, /etc/group and /etc/hostname so the jail user resolves (home /workspace)."""
    passwd = (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"{user}:x:{JAIL_UID}:{JAIL_UID}:{user}:{JAIL_HOME}:{shell}\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
    group = f"root:x:0:\n{user}:x:{JAIL_UID}:\nnogroup:x:65534:\n"
    return {
        "/etc/passwd": passwd.encode(),
        "/etc/group": group.encode(),
        "/etc/hostname": f"{hostname}\n".encode(),
    }


def checked_secrets(raw: object) -> dict[str, str]:
    """The ``secrets`` of an endpoint ``add`` request: identifier -> value, or ValueError."""
    if not raw:
        return {}
    if not isinstance(raw, dict):
        raise ValueError("secrets must be an object of NAME: value")
    out: dict[str, str] = {}
    for name, value in raw.items():
        if not (isinstance(name, str) and name.isidentifier() and name.isascii()
                and name not in RESERVED_ENV):
            raise ValueError(f"invalid secret name {name!r}")
        if not isinstance(value, str) or "\0" in value:
            raise ValueError(f"the value of secret {name} is not a string without NUL bytes")
        out[name] = value
    return out


def secret_files(secrets: Mapping[str, str]) -> dict[str, bytes]:
    """``/run/secrets/NAME`` -> value, for ``data_pipes``; names are identifiers."""
    return {f"{SECRETS_DIR}/{name}": value.encode() for name, value in secrets.items()}


def session_env(s: Session) -> dict[str, str]:
    """The complete environment of a session's processes, secrets included."""
    env = {k: v for k, v in s.secrets.items() if k not in RESERVED_ENV}
    env.update(jail_env(s))
    return env


def jail_env(s: Session) -> dict[str, str]:
    """The non-secret environment: the profile's env under the names the jail sets."""
    env = {k: v for k, v in s.env.items() if k not in RESERVED_ENV}
    env.setdefault("PATH", JAIL_PATH)
    env.update(
        HOME=JAIL_HOME, USER=s.user, LOGNAME=s.user, SHELL=s.spec.shell,
        SANDBOXER_ID=s.sandbox_id,
    )
    if s.term:
        env["TERM"] = s.term
    return env


def build_argv(
    s: Session,
    data_fds: Mapping[str, int],
    *,
    bwrap: str = "bwrap",
    layout: Sequence[tuple[str, str | None]] | None = None,
    secret_fds: Mapping[str, int] | None = None,
) -> list[str]:
    """The full ``bwrap`` command line for one session (no environment: see session_env).

    ``data_fds`` maps a path inside the jail (e.g. /etc/passwd) to a readable fd whose
    content bwrap copies in (``--ro-bind-data``); ``secret_fds`` does the same for
    ``/run/secrets/NAME`` files (read-only, 0400, in the jail's /run tmpfs). The caller
    passes those fds to the child.
    """
    argv = [bwrap, "--unshare-all"]
    if s.spec.network:
        argv.append("--share-net")
    argv.append("--die-with-parent")
    if not s.pty:
        # Without a PTY the jail gets its own session: no TIOCSTI into the caller's terminal.
        argv.append("--new-session")
    argv += ["--uid", str(JAIL_UID), "--gid", str(JAIL_UID), "--cap-drop", "ALL"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for name, target in host_layout() if layout is None else layout:
        if target is None:
            argv += ["--ro-bind", f"/{name}", f"/{name}"]
        else:
            argv += ["--symlink", target, f"/{name}"]
    argv += ["--ro-bind", "/etc", "/etc"]
    for path, fd in sorted(data_fds.items()):
        argv += ["--ro-bind-data", str(fd), path]
    # With a PTY on stdio, --dev binds it to /dev/console (so `tty` says /dev/console): the
    # jail's fresh devpts cannot hold the host's slave, and a fresh one keeps ptmx private.
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run"]  # noqa: S108
    if secret_fds:
        argv += ["--perms", "0755", "--dir", SECRETS_DIR]
        for path, fd in sorted(secret_fds.items()):
            argv += ["--perms", "0400", "--ro-bind-data", str(fd), path]
    argv += ["--bind", str(s.workspace), JAIL_HOME, "--chdir", JAIL_HOME]
    argv += ["--hostname", s.spec.hostname or s.sandbox_id[:63]]
    argv.append("--")
    if s.command is not None:
        argv += [s.spec.shell, "-c", s.command]
    elif s.pty:
        argv += [s.spec.shell, "-l"]
    else:
        argv.append(s.spec.shell)
    return argv


def rlimits(spec: LocalSpec) -> list[tuple[int, int]]:
    lim = spec.limits
    return [
        (resource.RLIMIT_NPROC, lim.processes),
        (resource.RLIMIT_AS, lim.memory_bytes),
        (resource.RLIMIT_NOFILE, lim.open_files),
    ]


def make_preexec(spec: LocalSpec, *, pty: bool) -> Callable[[], None]:
    """The child's last step before exec (after setuid in CPython): rlimits, controlling tty.

    RLIMIT_NPROC counts per real uid, which is why each sandbox gets its own host uid.
    """
    limits = rlimits(spec)

    def preexec() -> None:
        for which, value in limits:
            resource.setrlimit(which, (value, value))
        if pty:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    return preexec


def data_pipes(files: Mapping[str, bytes]) -> dict[str, int]:
    """One pipe per file, already filled and write-closed; returns path -> read fd."""
    fds: dict[str, int] = {}
    try:
        for path, data in files.items():
            r, w = os.pipe()
            fds[path] = r
            try:
                # Generated files are tiny (well under the 64 KiB pipe buffer): no blocking.
                os.write(w, data)
            finally:
                os.close(w)
    except BaseException:
        close_fds(fds.values())
        raise
    return fds


def close_fds(fds: Iterable[int]) -> None:
    for fd in list(fds):
        with contextlib.suppress(OSError):
            os.close(fd)


def open_pty(cols: int, rows: int, owner_uid: int | None) -> tuple[int, int, str]:
    """A PTY pair sized for the client; the slave is handed to the jail's uid like sshd does."""
    master, slave = os.openpty()
    try:
        if cols and rows:
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        path = os.ttyname(slave)
        if owner_uid is not None:
            os.chown(path, owner_uid, -1)
            os.chmod(path, 0o620)
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    return master, slave, path
