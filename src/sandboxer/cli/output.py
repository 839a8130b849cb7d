"""Printing: stable JSON documents, human tables, progress on stderr."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, TextIO


def emit_json(doc: Any, stream: TextIO | None = None) -> None:
    """Indented for a terminal; compact (and several times faster) into a pipe or file."""
    out = stream or sys.stdout
    if out.isatty():
        text = json.dumps(doc, indent=2, ensure_ascii=False)
    else:
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    out.write(text + "\n")


def printable(value: Any, *, keep: str = "") -> str:
    """``str(value)`` with every character a terminal could act on (C0 and C1 controls,
    DEL, bidi overrides, other non-printables) shown as a Python escape (``\\x1b``), so
    stored text cannot move the cursor or rewrite what the user sees; ``keep`` are let
    through (a message's own newlines)."""
    text = str(value)
    if text.isprintable() and not keep:
        return text
    return "".join(c if c.isprintable() or c in keep
                   else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table; empty cells print as '-'; control characters escaped."""
    cells = [[("-" if v is None or v == "" else printable(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))
    lines = ["  ".join(h.upper().ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    lines += ["  ".join(v.ljust(widths[i]) for i, v in enumerate(row)).rstrip()
              for row in cells]
    return "\n".join(lines)


def kv(pairs: Sequence[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)}  {'-' if v is None else printable(v)}"
                     for k, v in pairs)


class Progress:
    """Progress on stderr: a spinner with elapsed time on a terminal, timed lines otherwise."""

    FRAMES = "|/-\\"

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self.message = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, message: str) -> None:
        self.message = message
        if self.quiet:
            return
        if not self.tty:
            self.stream.write(f"[{time.monotonic() - self.start:6.2f}s] {message}\n")
            self.stream.flush()
        elif self._thread is None:
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()

    def _spin(self) -> None:
        i = 0
        while not self._stop.wait(0.1):
            frame = self.FRAMES[i % len(self.FRAMES)]
            elapsed = time.monotonic() - self.start
            self.stream.write(f"\r\x1b[2K{frame} {self.message} ({elapsed:.1f}s)")
            self.stream.flush()
            i += 1

    def done(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
