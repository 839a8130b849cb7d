"""Typed readers of ``SANDBOXER_*`` settings: each one names its variable when it is wrong.

A value that does not parse is an ``InvalidInput`` (exit 4, HTTP 422) saying which
variable, what it holds and what was expected; unset or empty means the default. Standard
library only (plus errors and values): the CLI's read paths import this module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

from sandboxer.errors import InvalidInput


def _bad(name: str, raw: str, expected: str) -> InvalidInput:
    from sandboxer.values import safe_repr  # here: every CLI call reads settings, few fail

    return InvalidInput(f"{name}={safe_repr(raw)}: expected {expected}",
                        hint=f"fix {name} or unset it for the default")


def _raw(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    return None if raw is None or not raw.strip() else raw


def count(env: Mapping[str, str], name: str, default: int, *, low: int = 1,
          high: int = 1_000_000) -> int:
    """A whole number in ``low..high``."""
    raw = _raw(env, name)
    if raw is None:
        return default
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 12 or not (
            low <= int(text) <= high):
        raise _bad(name, raw, f"a whole number from {low} to {high}")
    return int(text)


def seconds(env: Mapping[str, str], name: str, default: float, *, low: float = 0.0,
            high: float = 86_400.0) -> float:
    """A number of seconds, more than ``low`` and at most ``high`` (``1.5`` is fine)."""
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        value = float("nan")
    if not low < value <= high:  # NaN and infinities fail here too
        raise _bad(name, raw, f"a number of seconds above {low:g} and at most {high:g}")
    return value


def duration(env: Mapping[str, str], name: str, default: str) -> float:
    """A duration (``90s``, ``15m``, ``8h``, ``7d``) in seconds."""
    raw = _raw(env, name)
    try:
        from sandboxer.values import parse_duration

        return parse_duration(default if raw is None else raw).total_seconds()
    except ValueError as e:
        raise _bad(name, raw or default, "a duration like 90s, 15m, 8h or 7d") from e


def path(env: Mapping[str, str], name: str, default: Path | None = None, *,
         directory: bool = False) -> Path | None:
    """An absolute path (a relative one is taken from the current directory); with
    ``directory``, one that is a directory if it exists at all."""
    raw = _raw(env, name)
    if raw is None:
        return default
    if "\0" in raw:
        raise _bad(name, raw, "a path without NUL bytes")
    p = Path(raw).absolute()
    if directory and p.exists() and not p.is_dir():
        from sandboxer.values import safe_repr

        raise InvalidInput(f"{name}={safe_repr(raw)} is not a directory",
                           hint=f"point {name} at a directory (or a path that does not "
                           "exist yet)")
    return p


def url(env: Mapping[str, str], name: str) -> str | None:
    """An ``http://`` or ``https://`` URL without a trailing slash, or None when unset."""
    raw = _raw(env, name)
    if raw is None:
        return None
    text = raw.strip()
    if not text.startswith(("http://", "https://")) or any(c.isspace() for c in text):
        raise _bad(name, raw, "an http:// or https:// URL")
    return text.rstrip("/")


def word(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    """One of ``choices``, case-insensitively."""
    raw = _raw(env, name)
    if raw is None:
        return default
    if raw.strip().lower() not in choices:
        raise _bad(name, raw, "one of " + ", ".join(choices))
    return raw.strip().lower()


def server(env: Mapping[str, str]) -> tuple[str | None, bool | str]:
    """``SANDBOXER_URL`` and how to verify it: ``SANDBOXER_CA_CERT`` (a file) or True."""
    ca = path(env, "SANDBOXER_CA_CERT")
    if ca is not None and not ca.is_file():
        raise InvalidInput(f"SANDBOXER_CA_CERT={str(ca)!r} is not a file",
                           hint="point it at a PEM CA bundle, or unset it")
    return url(env, "SANDBOXER_URL"), str(ca) if ca else True


DATABASE_SCHEMES = ("sqlite", "postgresql", "postgres")
_DB = "SANDBOXER_DATABASE_URL"


def database_url(env: Mapping[str, str]) -> tuple[str, str] | None:
    """``SANDBOXER_DATABASE_URL``: ``("sqlite", ABSOLUTE_PATH)`` for ``sqlite:///ABS/PATH``,
    ``("postgresql", URL)`` for ``postgresql://…`` or ``postgres://…`` (the URL as given,
    for libpq), None when unset (the store is ``$SANDBOXER_HOME/state.db``). Never echoes
    more of a wrong value than its scheme: a URL may carry a password."""
    raw = _raw(env, _DB)
    if raw is None:
        return None
    text = raw.strip()
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if scheme in ("postgresql", "postgres") and sep:
        return "postgresql", _postgres_url(f"{scheme}://{rest}")  # libpq wants it lower-case
    hint = f"fix {_DB} or unset it for the SQLite store at $SANDBOXER_HOME/state.db"
    if scheme != "sqlite" or not sep:
        known = bool(sep) and re.fullmatch(r"[a-z][a-z0-9+.-]{0,31}", scheme) is not None
        got = f"a URL of scheme {scheme!r}" if known else "a value that is not such a URL"
        raise InvalidInput(
            f"{_DB}: expected sqlite:///ABSOLUTE/PATH or postgresql://USER:PASSWORD@HOST/DB, "
            f"got {got} (accepted schemes: sqlite, postgresql, postgres)", hint=hint)
    from urllib.parse import unquote

    path = unquote(rest)
    if not path.startswith("/") or any(c in rest for c in "?#") or "\0" in path:
        raise InvalidInput(
            f"{_DB}: expected sqlite:///ABSOLUTE/PATH, an absolute file path after "
            "sqlite:// with no host, query or fragment", hint=hint)
    return "sqlite", str(Path(path))


def _postgres_url(text: str) -> str:
    from urllib.parse import urlsplit

    bad = InvalidInput(
        f"{_DB} names a PostgreSQL database but is not a URL libpq reads "
        "(postgresql://USER:PASSWORD@HOST:PORT/DATABASE, special characters of the password "
        "percent-encoded)", hint=f"fix {_DB}; its value is not shown, it may hold a password")
    if any(c.isspace() or ord(c) < 32 for c in text) or "#" in text:
        raise bad
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError as e:
        raise bad from e
    return text


def masked_database_url(url: str) -> str:
    """``url`` with its password (in the authority or a ``password=`` parameter) as ``***``:
    what doctor, logs and command output may show of a database URL."""
    scheme, _, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if at and ":" in userinfo:
        authority = f"{userinfo.partition(':')[0]}:***@{hostport}"
    tail = re.sub(r"(?i)(^|[?&])(password=)[^&]*", r"\1\2***", tail)
    return f"{scheme}://{authority}{slash}{tail}"


def database_label(env: Mapping[str, str], default: Path) -> str:
    """What to show of the database ``SANDBOXER_DATABASE_URL`` names: the SQLite file, or
    the PostgreSQL URL without its password."""
    chosen = database_url(env)
    if chosen is None:
        return str(default)
    return chosen[1] if chosen[0] == "sqlite" else masked_database_url(chosen[1])


def db_pool_size(env: Mapping[str, str]) -> int:
    """Connections of one process's pool to a PostgreSQL store."""
    return count(env, "SANDBOXER_DB_POOL_SIZE", 10, high=1000)


def db_timeout(env: Mapping[str, str]) -> float:
    """How long to wait for a PostgreSQL connection (connect, or a free one of the pool)."""
    return seconds(env, "SANDBOXER_DB_TIMEOUT", 10.0, high=600.0)


# -- the variables, each read through one of these (defaults live here, once) ----------


def local_capacity(env: Mapping[str, str]) -> int:
    return count(env, "SANDBOXER_LOCAL_CAPACITY", 64)


def local_idle_exit(env: Mapping[str, str]) -> float:
    return seconds(env, "SANDBOXER_LOCAL_IDLE_EXIT", 3.0)


def service_idle_exit(env: Mapping[str, str]) -> float:
    """How long the local service stays up after its last request (its sandboxes keep it
    up regardless)."""
    return seconds(env, "SANDBOXER_SERVICE_IDLE_EXIT", 300.0)


def local_service(env: Mapping[str, str]) -> bool:
    """``SANDBOXER_LOCAL_SERVICE``: 1 (default) lets the CLI use the local service, 0 runs
    every command in its own process."""
    return word(env, "SANDBOXER_LOCAL_SERVICE", ("0", "1"), "1") == "1"


def local_uid_base(env: Mapping[str, str]) -> int:
    return count(env, "SANDBOXER_LOCAL_UID_BASE", 1_100_000, high=2**32 - 2**17)


def compose_local_capacity(env: Mapping[str, str]) -> int:
    return count(env, "SANDBOXER_COMPOSE_LOCAL_CAPACITY", 16)


def vm_capacity(env: Mapping[str, str]) -> int:
    return count(env, "SANDBOXER_VM_CAPACITY", 8)


def vm_keeper_interval(env: Mapping[str, str]) -> float:
    return seconds(env, "SANDBOXER_VM_KEEPER_INTERVAL", 2.0, high=3600.0)


def reap_interval(env: Mapping[str, str]) -> float:
    return seconds(env, "SANDBOXER_REAP_INTERVAL", 5.0, high=3600.0)


def idle_interval(env: Mapping[str, str]) -> float:
    """Seconds between two activity samples of idle handling (sandboxer.idling)."""
    return seconds(env, "SANDBOXER_IDLE_INTERVAL", 5.0, low=0.01, high=3600.0)


def leader_interval(env: Mapping[str, str]) -> float:
    """How often a `sandboxer serve` replica campaigns for the leader role and its leader
    checks that it still holds it."""
    return seconds(env, "SANDBOXER_LEADER_INTERVAL", 1.0, low=0.01, high=60.0)


def reconcile_interval(env: Mapping[str, str]) -> float:
    return seconds(env, "SANDBOXER_RECONCILE_INTERVAL", 60.0, high=86_400.0)


def api_max_body(env: Mapping[str, str]) -> int:
    return count(env, "SANDBOXER_API_MAX_BODY", 1_048_576, high=2**31)


def api_max_file(env: Mapping[str, str]) -> int:
    """The largest file the API's files route takes or hands out (``PUT``/``GET
    /v1/sandboxes/{id}/files``), in bytes; `sandboxer cp` (scp) has no such cap."""
    return count(env, "SANDBOXER_API_MAX_FILE", 256 * 1_048_576, high=2**40)


def bao_timeout(env: Mapping[str, str]) -> float:
    return seconds(env, "SANDBOXER_BAO_TIMEOUT", 10.0, high=3600.0)


def warden_timeout(env: Mapping[str, str]) -> float:
    return seconds(env, "SANDBOXER_WARDEN_TIMEOUT", 10.0, high=3600.0)


def events_retention(env: Mapping[str, str]) -> float:
    return duration(env, "SANDBOXER_EVENTS_RETENTION", "7d")


def state_hub_timeout(env: Mapping[str, str]) -> float:
    return seconds(env, "SANDBOXER_STATE_HUB_TIMEOUT", 10.0, high=3600.0)


def state_hub_backoff_max(env: Mapping[str, str]) -> float:
    return seconds(env, "SANDBOXER_STATE_HUB_BACKOFF_MAX", 300.0)


def mcp_log_level(env: Mapping[str, str]) -> str:
    levels = ("debug", "info", "warning", "error", "critical")
    return word(env, "SANDBOXER_MCP_LOG_LEVEL", levels, "warning").upper()


# Checked whenever settings are read, so that a bad value fails the command that was given
# it, not a background process (the ext.local endpoint, the VM lease keeper) later.
CHECKED: tuple[Callable[[Mapping[str, str]], object], ...] = (
    local_capacity, local_idle_exit, service_idle_exit, local_service, local_uid_base,
    compose_local_capacity, vm_capacity, vm_keeper_interval, reap_interval, api_max_body,
    api_max_file, bao_timeout, warden_timeout,
    events_retention, state_hub_timeout, state_hub_backoff_max, database_url, db_pool_size,
    db_timeout, leader_interval, reconcile_interval, idle_interval,
)


def check(env: Mapping[str, str]) -> None:
    """Raise InvalidInput for the first of the numeric settings above that is wrong."""
    for read in CHECKED:
        read(env)
