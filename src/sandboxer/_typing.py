"""``override`` for the modules on the CLI's fast paths.

Python 3.11 has no ``typing.override`` and importing typing_extensions costs ~15 ms of every
CLI start; the type checker sees the real decorator, the interpreter an identity function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

F = TypeVar("F", bound=Any)

if TYPE_CHECKING:
    from typing_extensions import override
else:

    def override(f: F) -> F:
        """Mark an override, as typing.override does from Python 3.12 on."""
        f.__override__ = True
        return f

__all__ = ["override"]
