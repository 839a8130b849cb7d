"""The bubblewrap jail: argv of the jail and of its sessions, environment, generated files.

Argument arrays only, never shell strings. ``holder_argv``, ``session_argv``,
``session_env`` and ``etc_files`` are pure; the small helpers below them create the fds a
spawn needs. The environment is never on a command line (argv is world-readable in
/proc): a session's process gets ``session_env`` as its whole environment, and secret
files reach ``/run/secrets`` through pipes (``--ro-bind-data FD``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import stat
import struct
import termios
from collections.abc import Iterable, Mapping, Sequence
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
    # A program to run instead of the shell (the sftp subsystem's server): its argv.
    program: tuple[str, ...] = ()
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


def holder_argv(
    sandbox_id: str,
    workspace: Path,
    spec: LocalSpec,
    data_fds: Mapping[str, int],
    *,
    seccomp_fd: int,
    bwrap: str = "bwrap",
    layout: Sequence[tuple[str, str | None]] | None = None,
    secret_fds: Mapping[str, int] | None = None,
) -> list[str]:
    """The ``bwrap`` command line of a sandbox's jail: its namespaces, filesystem and init.

    The jail lives as long as the sandbox: bwrap's own pid 1 reaps orphans and its one
    child (``HOLDER``) waits; every SSH session enters these namespaces (holder.py), so
    what one session starts in the background the next one sees. ``data_fds`` maps a path
    inside (e.g. /etc/passwd) to a readable fd whose content bwrap copies in
    (``--ro-bind-data``); ``secret_fds`` does the same for ``/run/secrets/NAME`` (0400, in
    the /run tmpfs). Every tmpfs is sized (tmpfs_sizes), so even without a memory cgroup
    they cannot take more than ``limits.memory``. No environment here: argv is
    world-readable.
    """
    argv = [bwrap, "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try"]
    if not spec.network:
        argv.append("--unshare-net")
    # A nested user namespace with a full capability set is a large attack surface.
    argv += ["--disable-userns", "--die-with-parent", "--new-session"]
    argv += ["--uid", str(JAIL_UID), "--gid", str(JAIL_UID), "--cap-drop", "ALL"]
    argv += ["--seccomp", str(seccomp_fd)]
    argv += ["--ro-bind", "/usr", "/usr"]
    for name, target in host_layout() if layout is None else layout:
        if target is None:
            argv += ["--ro-bind", f"/{name}", f"/{name}"]
        else:
            argv += ["--symlink", target, f"/{name}"]
    argv += ["--ro-bind", "/etc", "/etc"]
    for path, fd in sorted(data_fds.items()):
        argv += ["--ro-bind-data", str(fd), path]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    for mount, size in tmpfs_sizes(spec).items():
        argv += ["--size", str(size), "--tmpfs", mount]
    if secret_fds:
        argv += ["--perms", "0755", "--dir", SECRETS_DIR]
        for path, fd in sorted(secret_fds.items()):
            argv += ["--perms", "0400", "--ro-bind-data", str(fd), path]
    argv += ["--bind", str(workspace), JAIL_HOME, "--chdir", JAIL_HOME]
    argv += ["--symlink", "/usr/bin/sleep", HOLDER[0]]
    # bwrap's /dev is a tmpfs the jail user could fill: read-only once its mounts exist.
    argv += ["--remount-ro", "/dev", "--remount-ro", "/"]
    argv += ["--hostname", spec.hostname or sandbox_id[:63]]
    argv += ["--", *HOLDER]
    return argv


def tmpfs_sizes(spec: LocalSpec) -> dict[str, int]:
    """Sizes of the jail's tmpfs mounts: together 13/16 of ``limits.memory``.

    tmpfs pages count against the sandbox's memory cgroup, and nothing reclaims them: a
    tmpfs as large as the limit would leave no memory to run ``rm`` with. Sized like this,
    a full /tmp fails with ENOSPC and the sandbox stays usable.
    """
    memory = spec.limits.memory_bytes
    return {"/dev/shm": memory // 4, "/tmp": memory // 2,  # noqa: S108 - inside the jail
            "/run": min(64 << 20, memory // 16)}


# The jail's one long-lived process besides bwrap's init: it only waits. Its name is its
# own (a symlink to sleep), so a `pkill sleep` inside does not end the jail by accident.
HOLDER = ("/run/sandboxer-jail", "infinity")
# What a session execs once it stands inside the jail: coreutils' timeout with no limit
# forks the command into the jail's pid namespace (entering it applies to children only),
# forwards the signals it gets to the command's process group, and exits as the command
# did (re-raising a fatal signal). It runs as the jail's uid under its seccomp filter.
SPAWNER = ("/usr/bin/timeout",)
# The sftp subsystem (sftp, scp in its default sftp mode, the service's cp): OpenSSH's own
# server, run as a session of the jail. /usr is the host's, read-only: the same binary.
SFTP_SERVER = "/usr/lib/openssh/sftp-server"


def session_argv(s: Session) -> list[str]:
    """The command line of one session, run from inside the jail (see SPAWNER)."""
    if s.program:
        return [*SPAWNER, "0", *s.program]
    if s.pty:
        # --foreground: the command stays in the terminal's foreground process group.
        argv = [*SPAWNER, "--foreground", "0", s.spec.shell]
        return [*argv, "-c", s.command] if s.command is not None else [*argv, "-l"]
    argv = [*SPAWNER, "0", s.spec.shell]
    return [*argv, "-c", s.command] if s.command is not None else argv


def rlimits(spec: LocalSpec, *, memory_cgroup: bool) -> list[tuple[int, int]]:
    """Per-process limits; RLIMIT_AS only stands in where no memory cgroup bounds the jail
    (it is per process, and breaks runtimes that reserve address space, such as GHC's)."""
    lim = spec.limits
    out = [
        (resource.RLIMIT_NPROC, lim.processes),
        (resource.RLIMIT_NOFILE, lim.open_files),
        (resource.RLIMIT_CORE, 0),
    ]
    if not memory_cgroup:
        out.append((resource.RLIMIT_AS, lim.memory_bytes))
    return out


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


TIOCSPTLCK = 0x40045431
TIOCGPTPEER = 0x5441


def open_pty(cols: int, rows: int, owner_uid: int | None,
             ptmx: str = "/dev/ptmx") -> tuple[int, int]:
    """A PTY pair sized for the client, from the devpts instance of ``ptmx``.

    A session passes its jail's own ``/dev/ptmx`` (through /proc/PID/root), so the slave
    exists inside the jail as /dev/pts/N and ``tty`` names it. The slave is handed to the
    sandbox's uid like sshd does.
    """
    # O_NOFOLLOW|O_NONBLOCK: the path lies in a filesystem tree the sandbox sees, so it
    # must name the devpts multiplexer itself (char device 5:2), never a file it planted.
    master = os.open(ptmx, os.O_RDWR | os.O_NOCTTY | os.O_NOFOLLOW | os.O_NONBLOCK)
    slave = -1
    try:
        st = os.fstat(master)
        if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != (5, 2):
            raise OSError(f"{ptmx} is not a pseudo-terminal multiplexer")
        os.set_blocking(master, True)
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))  # unlockpt
        slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
        if cols and rows:
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        if owner_uid is not None:
            os.fchown(slave, owner_uid, -1)
            os.fchmod(slave, 0o620)
    except BaseException:
        close_fds([master, slave] if slave >= 0 else [master])
        raise
    return master, slave
