"""Plain value rules shared by models, store and CLI; no pydantic, so cheap to import."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^\s*(\d{1,9})\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_B32 = "abcdefghijklmnopqrstuvwxyz234567"
SANDBOX_ID = re.compile(r"^sbx-[a-z2-7]{10}$")
LABEL_KEY = re.compile(r"^[a-z0-9](?:[a-z0-9._/-]{0,62})$")
LABEL_VALUE = re.compile(r"^[A-Za-z0-9._:@/+=-]{0,128}$")


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Parse ``90s``, ``15m``, ``8h`` or ``7d`` (a bare number is seconds)."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, bool):
        raise ValueError(f"expected a duration like 90s, 15m, 8h or 7d, got {text!r}")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise ValueError(
                f"expected a duration like 90s, 15m, 8h or 7d, got {safe_repr(str(text))}"
            )
        seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {text!r}")
    return timedelta(seconds=seconds)


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
    return "sbx-" + "".join(secrets.choice(_B32) for _ in range(10))


def safe_repr(text: str) -> str:
    """Quote user input for an error message, showing undecodable bytes as escapes."""
    return repr(text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))


def validate_label(key: str, value: str) -> None:
    """Raise ValueError unless ``key=value`` is a safe label (no shell metacharacters)."""
    if not LABEL_KEY.match(key):
        raise ValueError(
            f"label key {safe_repr(key)} is not allowed: expected 1-63 characters of "
            "a-z, 0-9, '.', '_', '/', '-' starting with a letter or digit"
        )
    if not LABEL_VALUE.match(value):
        raise ValueError(
            f"label value {safe_repr(value)} for {key!r} is not allowed: expected at most "
            "128 characters of A-Z, a-z, 0-9 and . _ : @ / + = - (no spaces or shell "
            "metacharacters)"
        )


def validate_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        validate_label(key, value)
    return labels


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` and millisecond precision."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


# glibc's list of variables it drops for setuid programs, less the harmless TMPDIR and TZDIR.
_LOADER_NAMES = frozenset({
    "GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH",
    "MALLOC_TRACE", "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS",
})


def is_loader_variable(name: str) -> bool:
    """True for ``LD_*`` and the other variables that change how a program is loaded."""
    return name.startswith("LD_") or name in _LOADER_NAMES
