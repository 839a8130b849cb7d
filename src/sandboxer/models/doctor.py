"""One line of `sandboxer doctor`: a check, whether it passed, and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    """A doctor check; ``fix`` is shown only when it failed."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None

    def document(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail,
                "fix": None if self.ok else self.fix}
