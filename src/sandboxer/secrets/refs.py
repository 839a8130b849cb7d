"""Secret refs (docs/secrets.md): ``bao:<mount>/<path>#<field>``, ``env:<VAR>``, ``file:<path>``.

Pure: parsing reads nothing. A ref is a pointer, never a value, so refs may appear in
messages and in ``create --dry-run`` output. ``env:`` and ``file:`` are for development
and are refused when ``SANDBOXER_ENV=production``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from sandboxer.errors import SecretRefInvalid
from sandboxer.values import is_loader_variable

GRAMMAR = "bao:<mount>/<path>#<field>, env:<VAR> or file:<absolute path>"
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MOUNT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_.@+=-]+$")
_FIELD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# Names a secret may not take: the sandbox sets them itself, or they change how shells and
# the dynamic loader behave.
RESERVED_NAMES = frozenset({
    "HOME", "USER", "LOGNAME", "SHELL", "TERM", "PATH", "PWD", "OLDPWD", "SHLVL",
    "BASH_ENV", "ENV", "IFS", "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT",
})
MAX_VALUE_BYTES = 32 * 1024


@dataclass(frozen=True)
class BaoRef:
    """A field of an OpenBao KV v2 secret: ``bao:<mount>/<path>#<field>``."""

    name: str
    text: str
    mount: str
    path: str
    field: str

    scheme = "bao"

    @property
    def location(self) -> str:
        return f"{self.mount}/{self.path}"


@dataclass(frozen=True)
class EnvRef:
    """An environment variable of the creating process (development only)."""

    name: str
    text: str
    var: str

    scheme = "env"


@dataclass(frozen=True)
class FileRef:
    """A file on the creating machine (development only)."""

    name: str
    text: str
    path: str

    scheme = "file"


Ref = BaoRef | EnvRef | FileRef


def _bao(name: str, rest: str) -> BaoRef | str:
    if rest.count("#") != 1:
        return "expected exactly one '#' separating the path from the field"
    location, field = rest.split("#")
    if not field:
        return "the field after '#' is empty"
    if not _FIELD.fullmatch(field):
        return f"field {field!r} may hold only letters, digits, '_', '.' and '-'"
    mount, _, path = location.partition("/")
    if not mount:
        return "the mount before the first '/' is empty"
    if not _MOUNT.fullmatch(mount):
        return f"mount {mount!r} may hold only letters, digits, '_', '.' and '-'"
    if not path:
        return f"no path after the mount {mount!r}"
    for seg in path.split("/"):
        if seg in ("", ".", ".."):
            return f"path {path!r} has an empty, '.' or '..' segment"
        if not _SEGMENT.fullmatch(seg):
            return f"path segment {seg!r} may hold only letters, digits and _ . @ + = -"
    return BaoRef(name=name, text=f"bao:{rest}", mount=mount, path=path, field=field)


def parse_one(name: str, text: str, *, home: str | None = None) -> Ref | str:
    """The parsed ref, or the reason it is not one (naming the offending part)."""
    scheme, colon, rest = text.partition(":")
    if not colon:
        return "no scheme; expected one of bao:, env:, file:"
    if scheme == "bao":
        return _bao(name, rest)
    if scheme == "env":
        if not IDENT.fullmatch(rest):
            return f"variable name {rest!r} is not an identifier"
        return EnvRef(name=name, text=text, var=rest)
    if scheme == "file":
        path = rest
        if path.startswith("~/") and home:
            path = home.rstrip("/") + path[1:]
        if not path.startswith("/"):
            return f"path {rest!r} is not absolute"
        if "\0" in path:
            return "path holds a NUL byte"
        return FileRef(name=name, text=text, path=str(PurePosixPath(path)))
    return f"unknown scheme {scheme + ':'!r}; expected bao:, env: or file:"


def parse(
    profile_id: str,
    entries: Sequence[tuple[str, str]],
    env: Mapping[str, str],
    *,
    plain_env: Sequence[str] = (),
) -> list[Ref]:
    """Parse every ``(name, ref)`` entry of a profile, or raise one SecretRefInvalid naming
    every bad entry (profile, index, name and the offending part).

    ``plain_env`` are the profile's ``setup.env`` names, which a secret may not shadow.
    """
    production = env.get("SANDBOXER_ENV") == "production"
    refs: list[Ref] = []
    problems: list[str] = []
    seen: set[str] = set()
    for i, (name, text) in enumerate(entries):
        where = f"setup.secret_refs[{i}] ({name})"
        if not IDENT.fullmatch(name):
            problems.append(f"{where}: name is not an identifier")
            continue
        if name in RESERVED_NAMES or name.startswith("SANDBOXER_") or is_loader_variable(name):
            problems.append(f"{where}: {name} is reserved for the sandbox itself")
            continue
        if name in seen:
            problems.append(f"{where}: {name} is declared twice")
            continue
        if name in plain_env:
            problems.append(f"{where}: {name} is also set in setup.env")
            continue
        seen.add(name)
        parsed = parse_one(name, text, home=env.get("HOME"))
        if isinstance(parsed, str):
            problems.append(f"{where}: ref {text!r}: {parsed}")
        elif production and not isinstance(parsed, BaoRef):
            problems.append(f"{where}: ref {text!r}: {parsed.scheme}: refs are for "
                            "development and refused when SANDBOXER_ENV=production")
        else:
            refs.append(parsed)
    if problems:
        raise SecretRefInvalid(
            f"profile {profile_id}: " + "; ".join(problems),
            hint=f"a ref is {GRAMMAR} (see docs/secrets.md)",
        )
    return refs
