"""The safety net: every resolved secret value this process holds becomes ``***``.

Values are registered when the boundary resolves them (and when the ext.local endpoint
receives them) and are kept, reference-counted, until unregistered. Error rendering
(``SandboxerError.render``, the CLI's error report) and logging (a record factory plus a
filter on the handlers) pass text through ``redact``, so a bug that puts a value into a
message fails closed instead of leaking it. The net goes on logging the first time a
value is registered (and wherever a process calls ``install``), so a process that never
holds one -- the CLI's thin paths -- does not even import logging. Standard library only:
the CLI's read paths import this module.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging

MASK = "***"
_lock = threading.Lock()
_values: Counter[str] = Counter()
_ordered: tuple[str, ...] = ()  # longest first, so a value containing another goes whole
_installed = False


def _refresh() -> None:
    global _ordered
    _ordered = tuple(sorted(_values, key=len, reverse=True))


def register(values: Iterable[str]) -> None:
    """Remember ``values`` (non-empty ones) until as many ``unregister`` calls; the
    first call puts the net on logging (``install``)."""
    if not _installed:
        install()
    with _lock:
        for v in values:
            if v:
                _values[v] += 1
        _refresh()


def unregister(values: Iterable[str]) -> None:
    with _lock:
        for v in values:
            if v and _values[v] > 0:
                _values[v] -= 1
                if _values[v] == 0:
                    del _values[v]
        _refresh()


def active() -> bool:
    return bool(_ordered)


def forget_all() -> None:
    """Drop every registered value (tests; a process that holds no value any more)."""
    with _lock:
        _values.clear()
        _refresh()


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with every registered value (and every value in ``extra``) replaced."""
    values = _ordered
    more = [v for v in extra if v]
    if more:
        values = tuple(sorted({*values, *more}, key=len, reverse=True))
    for v in values:
        if v in text:
            text = text.replace(v, MASK)
    return text


def _scrub(record: logging.LogRecord) -> None:
    import logging

    if not _ordered:
        return
    try:
        message = record.getMessage()
    except Exception:  # a broken format string is logging's business, not ours
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactingFilter:
    """A logging filter that rewrites a record holding a registered value; never drops it.
    (A filter is any object with this method: logging.Filter itself is not needed.)"""

    def filter(self, record: logging.LogRecord) -> bool:
        _scrub(record)
        return True


FILTER = RedactingFilter()


def install() -> None:
    """Put the safety net on this process's logging (idempotent).

    The filter goes on sand-boxer's logger and on every handler the root logger has now
    (plus ``logging.lastResort``, the CLI's only handler); a record factory also scrubs
    records as they are made, which covers handlers added later.
    """
    import logging

    global _installed
    handlers: list[logging.Handler] = [*logging.getLogger().handlers,
                                       *logging.getLogger("sandboxer").handlers]
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for h in handlers:
        if FILTER not in h.filters:
            h.addFilter(FILTER)
    top = logging.getLogger("sandboxer")
    if FILTER not in top.filters:
        top.addFilter(FILTER)
    with _lock:
        if _installed:
            return
        _installed = True
        previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _scrub(record)
        return record

    logging.setLogRecordFactory(factory)
