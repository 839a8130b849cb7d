"""Plain value rules shared by models, store and CLI; no pydantic, so cheap to import."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sandboxer import states

# The state words live in sandboxer.states (no regex, no datetime: the CLI's thin paths
# need them and nothing else of this module); the same objects, under their old names.
SNAPSHOT_STATES = states.SNAPSHOT_STATES
SNAPSHOT_FINAL_STATES = states.SNAPSHOT_FINAL_STATES
SNAPSHOTTABLE_STATES = states.SNAPSHOTTABLE_STATES
STATES = states.STATES
LIVE_STATES = states.LIVE_STATES
FINAL_STATES = states.FINAL_STATES
LIFECYCLE = states.LIFECYCLE
_DURATION = re.compile(r"\s*(\d{1,9})\s*([smhd])\s*")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_B32 = "abcdefghijklmnopqrstuvwxyz234567"
# Patterns are used with fullmatch: ``$`` would also accept a trailing newline.
SANDBOX_ID = re.compile(r"sbx-[a-z2-7]{10}")  # what new_sandbox_id makes; always fullmatch
SNAPSHOT_ID = re.compile(r"snap-[a-z2-7]{10}")  # what new_snapshot_id makes; always fullmatch
LABEL_KEY = re.compile(r"[a-z0-9](?:[a-z0-9._/-]{0,62})")
LABEL_VALUE = re.compile(r"[A-Za-z0-9._:@/+=-]{0,128}")
# Who owns a sandbox, and the free-form name it may carry (no C0/C1 controls or DEL, so
# neither can move a terminal's cursor). The same rules bind the API, the CLI and MCP.
ACTOR_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]{1,128}$"
_ACTOR = re.compile(ACTOR_PATTERN)
# A login user and a host (name, IPv4 or IPv6 address) as they reach an ssh argv, a URL or
# a config line: neither starts with '-' (an option to ssh), and neither holds '@',
# whitespace, quotes or control characters. One rule for every source: profiles'
# reachability.user, ext.vm-packer's ssh.user and attach, targets' URLs and public hosts.
USER_PATTERN = r"^[a-z_][a-z0-9_-]{0,31}$"
HOST_PATTERN = r"^[A-Za-z0-9:][A-Za-z0-9.:_-]{0,252}$"
# A local SSH alias: a host name OpenSSH accepts in `Host` and `HostKeyAlias` (no
# wildcards, no whitespace, no shell metacharacters, no leading dash).
ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$"
_USER = re.compile(USER_PATTERN)
_HOST = re.compile(HOST_PATTERN)
_NAME = re.compile(NAME_PATTERN)
# Long enough for any lease, short enough that now + it never overflows a datetime.
MAX_DURATION = timedelta(days=36500)
_MAX_SECONDS = MAX_DURATION.total_seconds()
_TOO_LONG = "a duration must be at most 36500d (100 years)"


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Parse ``90s``, ``15m``, ``8h`` or ``7d`` (a bare number is seconds), at most
    ``MAX_DURATION``; anything else is a ValueError."""
    if isinstance(text, timedelta):
        value = text
    elif isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ValueError(f"expected a duration like 90s, 15m, 8h or 7d, got {text!r}")
    elif isinstance(text, int | float):
        if not -_MAX_SECONDS <= text <= _MAX_SECONDS:  # NaN fails this comparison too
            raise ValueError(_TOO_LONG)
        value = timedelta(seconds=float(text))
    else:
        m = _DURATION.fullmatch(text)
        if not m:
            raise ValueError(
                f"expected a duration like 90s, 15m, 8h or 7d, got {safe_repr(text)}"
            )
        seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        if seconds > _MAX_SECONDS:
            raise ValueError(_TOO_LONG)
        value = timedelta(seconds=seconds)
    if value <= timedelta(0):
        raise ValueError(f"a duration must be positive, got {text!r}")
    if value > MAX_DURATION:
        raise ValueError(_TOO_LONG)
    return value


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling of a duration in the same grammar."""
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def new_sandbox_id() -> str:
    """``sbx-`` followed by 10 random base32 characters (50 bits)."""
    import secrets  # hmac and hashlib: only where an id is made

    return "sbx-" + "".join(secrets.choice(_B32) for _ in range(10))


def new_snapshot_id() -> str:
    """``snap-`` followed by 10 random base32 characters (50 bits)."""
    import secrets

    return "snap-" + "".join(secrets.choice(_B32) for _ in range(10))


def safe_repr(text: str) -> str:
    """Quote user input for an error message, showing undecodable bytes as escapes."""
    return repr(text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))


def validate_label(key: str, value: str) -> None:
    """Raise ValueError unless ``key=value`` is a safe label (no shell metacharacters)."""
    # The rejected text is never quoted back: an error may reach an API answer or a log.
    if not isinstance(key, str) or not LABEL_KEY.fullmatch(key):
        raise ValueError(
            "a label key is not allowed: expected 1-63 characters of "
            "a-z, 0-9, '.', '_', '/', '-' starting with a letter or digit"
        )
    if not isinstance(value, str) or not LABEL_VALUE.fullmatch(value):
        raise ValueError(
            f"label value for {key!r} is not allowed: expected at most "
            "128 characters of A-Z, a-z, 0-9 and . _ : @ / + = - (no spaces or shell "
            "metacharacters)"
        )


def validate_actor(actor: str) -> str:
    """``actor`` if it is an actor id (1-64 of A-Z a-z 0-9 . _ -), else ValueError."""
    if not isinstance(actor, str) or not _ACTOR.fullmatch(actor):
        raise ValueError("an actor is 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-'")
    return actor


def validate_name(name: str) -> str:
    """``name`` if it is 1-128 characters with no control characters, else ValueError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError("a sandbox name is 1-128 characters with no control characters "
                         "(no newlines or escape sequences)")
    return name


def validate_user(user: str, what: str = "a user name") -> str:
    """``user`` if it is a POSIX login name (1-32 of a-z 0-9 _ -, not starting with a digit
    or '-'), else ValueError naming ``what``."""
    if not isinstance(user, str) or not _USER.fullmatch(user):
        raise ValueError(f"{what}: expected a POSIX user name (1-32 of a-z, 0-9, '_', '-', "
                         f"starting with a letter or '_'), got {_quoted(user)}")
    return user


def validate_host(host: str, what: str = "a host") -> str:
    """``host`` if it is a host name or an IP address (letters, digits, '.', ':', '_', '-',
    not starting with '-' or '.'), else ValueError naming ``what``."""
    if not isinstance(host, str) or not _HOST.fullmatch(host):
        raise ValueError(f"{what}: expected a host name or IP address (letters, digits, "
                         f"'.', ':', '_', '-', not starting with '-'), got {_quoted(host)}")
    return host


MAX_REMOTE_PATH = 4096  # PATH_MAX: what a sandbox's filesystem takes


def validate_remote_path(path: str, what: str = "the sandbox path") -> str:
    """A path inside a sandbox for cp (sftp takes it as is, no shell sees it): not empty,
    no NUL, no newline, at most ``MAX_REMOTE_PATH`` bytes (ValueError otherwise)."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{what}: expected a path, got nothing")
    if "\0" in path or "\n" in path or "\r" in path:
        raise ValueError(f"{what} {safe_repr(path)}: a NUL or newline is not allowed")
    if len(path.encode("utf-8", "surrogateescape")) > MAX_REMOTE_PATH:
        raise ValueError(f"{what}: longer than {MAX_REMOTE_PATH} bytes")
    return path


def split_remote(spec: str) -> tuple[str, str] | None:
    """``("sbx-…", "PATH")`` for cp's ``ID:PATH``; None for a local path (a path that
    begins with a sandbox id and a colon is written ``./sbx-…:…``)."""
    sid, colon, path = spec.partition(":")
    if colon and SANDBOX_ID.fullmatch(sid):
        return sid, path
    return None


def _quoted(value: object) -> str:
    return safe_repr(value) if isinstance(value, str) else type(value).__name__


def validate_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        validate_label(key, value)
    return labels


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` and millisecond precision."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def config_value(value: str, *, path: bool = False, quote: bool = True) -> str:
    """A value as OpenSSH reads it in a config line or ``-o`` (ssh_config(5)): ``%``
    doubled in paths (OpenSSH expands tokens there), double quotes around whitespace,
    quotes, backslashes or ``#``, with ``\\`` and ``"`` escaped inside them."""
    if path:
        value = value.replace("%", "%%")
    if quote and re.search(r"[\s#\"'\\]", value):
        value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


# glibc's list of variables it drops for setuid programs, less the harmless TMPDIR and TZDIR.
_LOADER_NAMES = frozenset({
    "GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH",
    "MALLOC_TRACE", "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS",
})


def is_loader_variable(name: str) -> bool:
    """True for ``LD_*`` and the other variables that change how a program is loaded."""
    return name.startswith("LD_") or name in _LOADER_NAMES


def parse_labels(items: Iterable[str], what: str = "--label") -> dict[str, str]:
    """Labels from ``key=value`` items (repeated ``--label``, the API's ``label=``), each
    checked by ``validate_label``; ValueError ``WHAT 'ITEM': why`` otherwise."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{what} {safe_repr(item)}: expected key=value")
        try:
            validate_label(key, value)
        except ValueError as e:
            raise ValueError(f"{what} {safe_repr(item)}: {e}") from e
        labels[key] = value
    return labels


def rename_files(results: list[dict[str, Any]], names: dict[str, str]) -> list[dict[str, Any]]:
    """Profile validation results (``file``, ``error``) with each file named as its caller
    knows it (``names``: the name validated under -> the caller's), in its error text too."""
    for r in results:
        original = names.get(r["file"], r["file"])
        if r.get("error"):
            r["error"] = r["error"].replace(r["file"], original)
        r["file"] = original
    return results


def not_reachable_hint(sandbox_id: str, state: str) -> str | None:
    """What to do about a sandbox that is not ``ready`` (reachability show, ssh, a
    lifecycle command in the wrong state): how to bring it back, where there is a way."""
    return {
        "stopped": f"`sandboxer start {sandbox_id}` starts it again, its data intact",
        "paused": f"`sandboxer resume {sandbox_id}` thaws it where it was",
        "unreachable": "`sandboxer reconcile` checks its target again",
        "provisioning": f"wait until it is ready (`sandboxer get {sandbox_id}`)",
    }.get(state)
