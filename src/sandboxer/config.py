"""Where sand-boxer keeps its state, read from the environment once per process."""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandboxer import perms
from sandboxer._typing import override


def _default_home() -> Path:
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "sandboxer"


def _traversable_by_others(path: Path) -> bool:
    """True when every existing ancestor lets other users pass through (o+x)."""
    for p in [path, *path.parents]:
        try:
            if not p.stat().st_mode & 0o001:
                return False
        except FileNotFoundError:
            continue
    return True


def _check_home(home: Path) -> None:
    """OpenSSH expands ``${VAR}`` in key and known_hosts paths with no way to escape it, so
    a home holding ``${`` could never be reached over SSH; ``%`` and spaces are quoted."""
    if "${" in str(home):
        from sandboxer.errors import InvalidInput

        raise InvalidInput(f"SANDBOXER_HOME={str(home)!r} contains '${{', which OpenSSH "
                           "expands in identity and known_hosts paths",
                           hint="choose a directory without '${' in its path")


class Settings:
    """Process-wide settings; every path is absolute. Immutable: ``with_env`` makes a copy.

    Equal (and hashed) by home and profile directories; ``env`` is the environment they
    were read from. A plain class, not a dataclass: ``dataclasses`` costs every CLI
    command ~10 ms to import.
    """

    __slots__ = ("env", "home", "profile_dirs")
    home: Path
    profile_dirs: tuple[Path, ...]
    env: dict[str, str]

    def __init__(self, home: Path, profile_dirs: tuple[Path, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        object.__setattr__(self, "home", home)
        object.__setattr__(self, "profile_dirs", tuple(profile_dirs))
        object.__setattr__(self, "env", {} if env is None else env)

    @override
    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Settings are immutable (tried to set {name})")

    @override
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Settings):
            return NotImplemented
        return (self.home, self.profile_dirs) == (other.home, other.profile_dirs)

    @override
    def __hash__(self) -> int:
        return hash((self.home, self.profile_dirs))

    @override
    def __repr__(self) -> str:
        return f"Settings(home={self.home!r}, profile_dirs={self.profile_dirs!r})"

    def with_env(self, env: dict[str, str]) -> Settings:
        """The same settings, read in another environment (a caller's, for its secrets)."""
        return Settings(self.home, self.profile_dirs, env)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        from sandboxer import envvars

        env = dict(os.environ if environ is None else environ)
        envvars.check(env)
        home = envvars.path(env, "SANDBOXER_HOME", directory=True) or _default_home()
        _check_home(home)
        dirs: list[Path] = [Path.home() / ".config" / "sandboxer" / "profiles"]
        envvars.path(env, "SANDBOXER_PROFILES")  # no NUL byte
        dirs += [Path(p) for p in env.get("SANDBOXER_PROFILES", "").split(":") if p]
        return cls(home=home.absolute(), profile_dirs=tuple(dirs), env=env)

    @property
    def instance(self) -> str:
        """A short, stable id of this home, labelled on remote resources it creates."""
        return sha256_hex(str(self.home).encode())[:12]

    @property
    def db_path(self) -> Path:
        return self.home / "state.db"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "log"

    @property
    def local_root(self) -> Path:
        """Where ext.local keeps workspaces.

        When sand-boxer runs as root, jails run under unprivileged uids that must be able
        to reach their workspace, so a home behind a private directory (``/root``) gets
        its workspaces under ``/var/lib/sandboxer/local/<hash of home>`` instead.
        """
        from sandboxer import envvars

        chosen = envvars.path(self.env, "SANDBOXER_LOCAL_ROOT", directory=True)
        if chosen is not None:
            return chosen
        default = self.home / "local"
        if os.geteuid() != 0 or _traversable_by_others(self.home):
            return default
        digest = sha256_hex(str(self.home).encode())[:12]
        return Path("/var/lib/sandboxer/local") / digest

    def ensure(self) -> None:
        """Create the private directories (0700) sand-boxer writes to, and make sure no
        other user can write them (``sandboxer.perms``: repaired when ours, else refused).
        """
        for d in (self.home, self.keys_dir, self.run_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        perms.secure(self)


def sha256_hex(data: bytes) -> str:
    """``hashlib.sha256(data).hexdigest()``, with CPython's own SHA-256 where it has one:
    hashlib loads OpenSSL, ~2.5 ms of every thin CLI call (the settings key, the home's
    id)."""
    return str(_sha256()(data).hexdigest())


@functools.cache
def _sha256() -> Callable[[bytes], Any]:
    """The SHA-256 constructor, looked up once (a failed import searches sys.path, and
    under the ``-S`` command of cli/launch.py it would load ``site``)."""
    names = ("_sha2", "_sha256") if sys.version_info >= (3, 12) else ("_sha256", "_sha2")
    for name in names:
        try:
            found: Callable[[bytes], Any] = importlib.import_module(name).sha256
            return found
        except ImportError:
            continue
    import hashlib

    return hashlib.sha256
