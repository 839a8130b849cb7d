"""Starting the local service at the first line of a ``create``: ``os`` and ``sys`` only.

A first ``create`` on a home waits for its keeper to start (the interpreter, ``site``,
asyncssh, pydantic and the catalog: most of the command). The command itself needs
~45 ms of imports before its parser would start that keeper, on a machine with two
CPUs where the keeper could have been starting on the other one. So the command that
``cli/launch.py`` writes calls ``start`` before it imports anything else, and the keeper
it spawns (``sandboxer.service.daemon --started-early``) loads while the command loads.

What ``start`` cannot decide without the rest of sand-boxer it leaves to the usual path:
it starts a keeper only for the plainest settings (no ``SANDBOXER_URL``,
``SANDBOXER_LOCAL_SERVICE`` unset or ``1``, a home given as a normalized absolute path or
left to its default) when no service runs there; it looks into ``run/`` only when that
is a directory of ours nobody else may write, and follows no symlink there. It gives that
keeper nothing of the caller's environment but what the interpreter's start reads
(``HOME``, the locale, the checkout on ``PYTHONPATH``). The keeper then waits on its
stdin for the rest: once the command has read its settings, ``client/service.py``
``start_early`` writes the environment a keeper is allowed (``childenv.send_environ``)
and closes the pipe — or closes it without a word (another home, settings it will not
serve, a keeper that did not read in time), and the keeper exits.
"""

from __future__ import annotations

import os
import sys

MODULE = "sandboxer.service.daemon"
FLAG = "--started-early"
# What a Python interpreter's start reads from the environment before the keeper can
# read its stdin: where the user's site-packages are, and the locale (by name: other
# LC_ names are anyone's, an ssh client's SendEnv LC_* among them).
_AT_START = ("HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE")
_pending: dict[str, int] = {}  # home -> the write end of its keeper's stdin


def asks_no_create(word: str) -> bool:
    """``-h``, ``--help`` or ``--dry-run``, an abbreviation argparse takes for one, or
    short options that may hold ``-h`` (``-qh``)."""
    if word.startswith("-") and not word.startswith("--"):
        return "h" in word
    return len(word) > 2 and any(full.startswith(word) for full in ("--help", "--dry-run"))


def start(words: list[str], root: str) -> None:
    """For ``sandboxer create ...`` on a home whose service is down: spawn its keeper now
    (``root``: the checkout the command runs, first on the keeper's ``PYTHONPATH``).
    Anything unusual, or any error, leaves the start to ``client/service.py``."""
    if words[:1] != ["create"] or any(map(asks_no_create, words)):
        return
    env = os.environ
    if env.get("SANDBOXER_URL") or env.get("SANDBOXER_LOCAL_SERVICE", "1") != "1":
        return
    home = _home(env)
    if home is None or not sys.executable or home in _pending:
        return
    try:
        run: int | None = _private_run(home)
    except FileNotFoundError:  # a fresh home
        run = None
    except OSError:  # not a directory only we may write: Settings.ensure's to judge
        return
    try:
        if run is not None:
            try:  # what is in run/ is ours: nobody else could have put it there
                if _exists("service.sock", run) or held("service.lock", run):
                    return
            finally:
                os.close(run)
        _pending[home] = _spawn(home, root, env)
    except OSError:
        return


def take(home: str) -> int | None:
    """The write end of the stdin of the keeper ``start`` spawned for ``home``, now the
    caller's to write and close; None when there is none."""
    return _pending.pop(home, None)


def abandon() -> None:
    """Close what ``take`` was not asked for: each such keeper reads nothing and exits."""
    while _pending:
        os.close(_pending.popitem()[1])


def _home(env: os._Environ[str]) -> str | None:
    """``Settings.from_env``'s home, when it is plainly spelled; None otherwise."""
    raw = env.get("SANDBOXER_HOME")
    if raw is None:
        base = env.get("XDG_STATE_HOME") or (
            f"{env['HOME']}/.local/state" if env.get("HOME") else None)
        raw = None if base is None else f"{base}/sandboxer"
    # What pathlib would spell otherwise (a trailing slash, "//", "." or ".."), a relative
    # path and "${" (refused by Settings) are the usual path's to judge.
    if not raw or not raw.startswith("/") or raw.startswith("//") or "${" in raw or (
            os.path.normpath(raw) != raw):
        return None
    return raw


def _private_run(home: str) -> int:
    """``home``'s run/ opened (no symlink followed), when it is a directory of ours that
    nobody else may write; OSError otherwise (FileNotFoundError: there is none)."""
    import stat

    fd = os.open(f"{home}/run", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        os.close(fd)
        raise PermissionError(f"{home}/run is not only ours")
    return fd


def _exists(name: str, run: int) -> bool:
    try:
        os.stat(name, dir_fd=run, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def held(path: str, dir_fd: int | None = None) -> bool:
    """Whether a keeper holds the lock at ``path`` (one flock attempt; nothing created:
    a lock file or run/ that is not there is held by nobody)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
                     dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _spawn(home: str, root: str, env: os._Environ[str]) -> int:
    """The keeper, spawned in its own session with stdin a pipe, output to /dev/null
    until it opens its log, and none of our other descriptors; the pipe's write end."""
    import _signal  # type: ignore[import-not-found]  # signal.py builds enums: ~2 ms

    start_env = {k: env[k] for k in _AT_START if k in env}
    start_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-P", "-m", MODULE, "--home", home, "--local-service", FLAG]
    r, w = os.pipe()  # both close on exec; dup2 makes the keeper's stdin inheritable
    try:
        actions: list[tuple[int, ...] | tuple[int, int, str, int, int]] = [
            (os.POSIX_SPAWN_DUP2, r, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, 1, 2)]
        actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited() if fd > 2]
        pid = os.posix_spawn(sys.executable, argv, start_env, file_actions=actions,
                             setsid=True, setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ))
    except BaseException:
        os.close(w)
        raise
    finally:
        os.close(r)
    del pid  # its first process exits once it forks; init reaps it after we exit
    return w


def _inherited() -> list[int]:
    """Our descriptors a spawned process would inherit (the caller's, passed to us)."""
    fds = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if os.get_inheritable(fd):
                fds.append(fd)
        except OSError:  # the directory's own descriptor, closed by now
            continue
    return fds
