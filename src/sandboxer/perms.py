"""Who may write sand-boxer's state: repair what is ours but too loose, refuse the rest.

Another user who can write a state directory can replace what sand-boxer trusts in it: the
endpoint's control socket (and receive secret values), a pinned ``*.known_hosts``, a
sandbox record naming the uid its sessions run as. So every command checks, before it
uses the home (``Settings.ensure()``):

* the parents of ``$SANDBOXER_HOME`` and of the local root: owned by root or by us, and
  not writable by group or others unless sticky (``/tmp``). Never repaired: they are not
  ours to change.
* the home, ``run/``, ``keys/``, ``log/``, the local root and each sandbox dir in it, and
  the entries directly inside them: owned by us or root. An entry owned by another user is
  refused (we did not put it there). What is ours and merely too loose is repaired with a
  chmod: directories lose group and other write (``run/``, ``keys/`` and ``log/`` become
  0700), files become 0600. Workspaces belong to their jail uid and are not looked into.

Trusted owners are our effective uid and root: root can replace anything anyway.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from sandboxer.errors import UnsafePermissions

if TYPE_CHECKING:
    from sandboxer.config import Settings

_LOOSE = stat.S_IWGRP | stat.S_IWOTH


class Finding(NamedTuple):
    """One path others could write; ``mode`` is what a repair sets (None: refuse)."""

    path: Path
    problem: str
    fix: str
    mode: int | None = None


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except (KeyError, ImportError):
        return f"uid {uid}"


def _foreign(path: Path, st: os.stat_result) -> Finding | None:
    me = os.geteuid()
    if st.st_uid in (me, 0):
        return None
    return Finding(path, f"is owned by {_owner(st.st_uid)}, not by you ({_owner(me)}) or root",
                   f"remove it if you did not create it (`rm -rf {path}`), or "
                   f"`chown {me} {path}` if you did")


def _parents(path: Path) -> list[Finding]:
    """Each existing ancestor must be ours or root's and not writable by others."""
    out: list[Finding] = []
    for p in reversed(path.parents):
        try:
            st = p.stat()
        except OSError:
            continue
        mode = stat.S_IMODE(st.st_mode)
        if (f := _foreign(p, st)) is not None:
            out.append(Finding(p, f"is a parent of {path} and {f.problem}",
                               f"move {path} under a directory you own"))
        elif mode & _LOOSE and not mode & stat.S_ISVTX:
            out.append(Finding(
                p, f"is a parent of {path} and writable by others (mode {mode:04o}), "
                   f"so they could replace {path}",
                f"run `chmod go-w {p}`, or move {path} elsewhere"))
    return out


def _check(path: Path, st: os.stat_result, private: bool) -> Finding | None:
    if (f := _foreign(path, st)) is not None:
        return f
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        want = mode & ~(0o077 if private else _LOOSE)
    elif stat.S_ISLNK(st.st_mode):
        return None
    else:
        want = mode & 0o700
    if want == mode:
        return None
    problem = f"is {'writable' if mode & _LOOSE else 'readable'} by others (mode {mode:04o})"
    fix = f"run `chmod {want:04o} {path}`"
    # Only the owner can chmod; a loose root-owned path in a user's home is refused.
    return Finding(path, problem, fix, want if st.st_uid == os.geteuid() else None)


def _tree(path: Path, *, private: bool = True, skip: frozenset[str] = frozenset(),
          depth: int = 1) -> list[Finding]:
    """``path`` and (``depth`` levels of) what is inside it, except names in ``skip``."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return []
    out = [f for f in [_check(path, st, private)] if f is not None]
    if depth <= 0 or not stat.S_ISDIR(st.st_mode):
        return out
    try:
        entries = [e for e in os.scandir(path) if e.name not in skip]
    except OSError:
        return out
    for e in entries:
        child = Path(e.path)
        if e.is_dir(follow_symlinks=False):
            out += _tree(child, private=private, skip=skip, depth=depth - 1)
        elif (f := _check(child, e.stat(follow_symlinks=False), private)) is not None:
            out.append(f)
    return out


def findings(settings: Settings) -> list[Finding]:
    """Every problem with the home and the local root; changes nothing."""
    home = settings.home.resolve()
    root = settings.local_root.resolve()
    out = _parents(home)
    if home.is_dir():
        private = {settings.run_dir.name, settings.keys_dir.name, settings.log_dir.name}
        out += _tree(home, private=False, depth=0)
        for e in os.scandir(home):
            if e.name in private:
                out += _tree(Path(e.path))
            elif e.path != str(root) and (f := _check(
                    Path(e.path), e.stat(follow_symlinks=False), private=False)) is not None:
                out.append(f)
    out += _parents(root)
    # The local root and its sandbox dirs stay passable (0711) by jail uids; a sandbox's
    # files (its record, its owner mark) must be ours; its workspace belongs to its jail.
    out += _tree(root, private=False, skip=frozenset({"workspace"}), depth=2)
    unique: dict[Path, Finding] = {}
    for f in out:
        unique.setdefault(f.path, f)
    return list(unique.values())


def secure(settings: Settings) -> None:
    """Repair what is ours but too loose; raise UnsafePermissions for the rest."""
    refused: list[Finding] = []
    for f in findings(settings):
        if f.mode is None:
            refused.append(f)
            continue
        try:
            os.chmod(f.path, f.mode)  # never a symlink: _check passes those
        except OSError:
            refused.append(f)
    if refused:
        first = refused[0]
        more = f" (and {len(refused) - 1} more: see `sandboxer doctor`)" if refused[1:] else ""
        raise UnsafePermissions(
            f"sand-boxer refuses to use {first.path}: it {first.problem}{more}",
            hint=first.fix,
        )


def open_regular(path: Path) -> int:
    """A read descriptor of ``path``, which must be a regular file (a file to copy): never
    blocks on a FIFO (opened non-blocking, checked, then made blocking). NotFound or
    InvalidInput otherwise."""
    from sandboxer.errors import InvalidInput, NotFound

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise NotFound(f"{path}: no such file") from e
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror}") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidInput(f"{path} is not a regular file",
                           hint="copy one file (`sandboxer cp -r` copies directories)")
    os.set_blocking(fd, True)
    return fd
