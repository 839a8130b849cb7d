"""Core's generic use of the optional extension capabilities (extensions/base.py):
targets, image builds and doctor checks, for every extension that offers them.

Core never names an extension here: each registered extension is loaded lazily and asked
whether it implements the capability; one that fails to load is skipped with a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from sandboxer.manager import Manager
    from sandboxer.models.doctor import Check

C = TypeVar("C")


def offering(manager: Manager, capability: type[C]) -> list[C]:
    """Every registered extension (instance, with its host) that implements ``capability``."""
    raise NotImplementedError  # i13-caps


def target_summaries(manager: Manager) -> list[dict[str, Any]]:
    """`targets list`: every target of every extension that manages targets."""
    raise NotImplementedError  # i13-caps


async def add_target(manager: Manager, *, name: str, url: str, extension: str | None,
                     options: dict[str, Any],
                     confirm: Callable[[str], bool] | None) -> dict[str, Any]:
    """`targets add`: the extension (named, or the one whose url_schemes match ``url``)
    validates and contacts; the record is stored here. Its summary row + fingerprint."""
    raise NotImplementedError  # i13-caps


async def check_targets(manager: Manager, name: str | None = None) -> list[dict[str, Any]]:
    """`targets check`: one target (NotFound if no extension has it) or all."""
    raise NotImplementedError  # i13-caps


def remove_target(manager: Manager, name: str) -> None:
    """`targets remove`: refused for implicit targets and while live sandboxes use it."""
    raise NotImplementedError  # i13-caps


async def build_image(manager: Manager, name: str, *, target: str,
                      variables: dict[str, str], force: bool,
                      progress: Callable[[str], None]) -> dict[str, Any]:
    """`images build`: a profile id (its extension builds), or a name exactly one
    extension claims."""
    raise NotImplementedError  # i13-caps


def doctor_checks(manager: Manager) -> list[Check]:
    """Every extension's doctor checks (core's own checks are the service's)."""
    raise NotImplementedError  # i13-caps
