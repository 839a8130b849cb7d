"""Core's generic use of the optional extension capabilities (extensions/base.py):
targets, image builds and doctor checks, for every extension that offers them.

Core never names an extension here: each registered extension is loaded lazily and asked
whether it implements the capability; one that fails to load is skipped with a warning.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sandboxer import placement
from sandboxer.errors import Conflict, InvalidInput, NotFound
from sandboxer.extensions.base import BuildsImages, DoctorChecks, ManagesTargets, available
from sandboxer.models.target import name_problem
from sandboxer.values import safe_repr

if TYPE_CHECKING:
    from sandboxer.extensions.base import Extension
    from sandboxer.manager import Manager
    from sandboxer.models.doctor import Check

C = TypeVar("C")
log = logging.getLogger(__name__)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def offering(manager: Manager, capability: Callable[..., C]) -> list[C]:
    """Every registered extension (instance, with its host) that implements ``capability``
    (an abstract class of ``extensions.base``: hence not typed ``type[C]``)."""
    kind = cast("type[C]", capability)
    found: list[C] = []
    for name in available():
        try:
            ext = manager.extension(name)
        except Exception as e:  # a broken plugin costs only itself
            log.warning("skipped extension %s: %s", name, getattr(e, "message", e))
            continue
        if isinstance(ext, kind):
            found.append(ext)
    return found


def _name(ext: object) -> str:
    return str(getattr(ext, "name", type(ext).__name__))


# -- targets ----------------------------------------------------------------------------


def target_summaries(manager: Manager) -> list[dict[str, Any]]:
    """`targets list`: every target of every extension that manages targets."""
    return [row for ext in offering(manager, ManagesTargets) for row in ext.target_summaries()]


def _for_url(manager: Manager, name: str, url: str) -> ManagesTargets:
    """The one extension whose ``url_schemes`` take ``url``'s scheme."""
    exts = offering(manager, ManagesTargets)
    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match else None
    takers = [e for e in exts if scheme in e.url_schemes]
    if len(takers) == 1:
        return takers[0]
    known = ", ".join(f"{s}:// ({_name(e)})" for e in exts for s in e.url_schemes)
    if not takers:
        raise InvalidInput(f"targets add {name}: no extension takes the URL {safe_repr(url)}",
                           hint=f"URL schemes: {known or 'none'} (or name one with "
                           "--extension)")
    raise InvalidInput(f"targets add {name}: {scheme}:// URLs are taken by "
                       f"{', '.join(_name(e) for e in takers)}",
                       hint="name the extension with --extension")


def _named(manager: Manager, extension: str) -> ManagesTargets:
    ext = manager.extension(extension)
    if not isinstance(ext, ManagesTargets):
        takers = ", ".join(_name(e) for e in offering(manager, ManagesTargets))
        raise InvalidInput(f"{extension} has no targets to add",
                           hint=f"extensions with targets: {takers or 'none'}")
    return ext


async def add_target(manager: Manager, *, name: str, url: str, extension: str | None,
                     options: dict[str, Any],
                     confirm: Callable[[str], bool] | None) -> dict[str, Any]:
    """`targets add`: the extension (named, or the one whose url_schemes match ``url``)
    validates and contacts; the record is stored here. Its summary row + fingerprint."""
    problem = name_problem(name)
    if problem is not None:
        raise InvalidInput(f"targets add {name}: {problem}")
    ext = _for_url(manager, name, url) if extension is None else _named(manager, extension)
    if manager.store.get_target(name) is not None:  # before first contact
        raise Conflict(f"a target named {name!r} exists already",
                       hint="remove it first with `sandboxer targets remove`")
    record, summary = await ext.add_target(name, url, options, confirm)
    if record.name != name or record.extension != _name(ext):
        raise InvalidInput(f"{_name(ext)} returned a target record for "
                           f"{record.extension}/{record.name}, not for {name}")
    manager.store.add_target(record)
    placement.forget(cast("Extension", ext), name)  # a removed namesake's answer is not its
    return summary


async def check_targets(manager: Manager, name: str | None = None) -> list[dict[str, Any]]:
    """`targets check`: one target (NotFound if no extension has it) or all."""
    import asyncio

    exts = offering(manager, ManagesTargets)
    if name is not None:
        exts = [e for e in exts if any(s["name"] == name for s in e.target_summaries())]
        if not exts:
            raise NotFound(f"no target named {name!r}", hint="see `sandboxer targets list`")
    found = await asyncio.gather(*(e.check_targets(name) for e in exts))
    for ext, rows in zip(exts, found, strict=True):
        for row in rows:  # what answered, and what did not, for placement's next create
            done = placement.answered if row.get("ok") else placement.forget
            done(cast("Extension", ext), row["name"])
    return [row for rows in found for row in rows]


def remove_target(manager: Manager, name: str) -> None:
    """`targets remove`: refused for implicit targets and while live sandboxes use it."""
    record = manager.store.get_target(name)
    exts = offering(manager, ManagesTargets)
    if record is not None:  # its own extension decides; an unloadable one cannot object
        exts = [e for e in exts if _name(e) == record.extension]
    for ext in exts:
        ext.removable(name)
    manager.store.remove_target(name)
    for ext in exts:
        placement.forget(cast("Extension", ext), name)


# -- images -----------------------------------------------------------------------------


async def build_image(manager: Manager, name: str, *, target: str,
                      variables: dict[str, str], force: bool,
                      progress: Callable[[str], None],
                      confined: bool = False) -> dict[str, Any]:
    """`images build`: a profile id (its extension builds), or a name exactly one
    extension claims."""
    if name.startswith("profile."):  # whatever that profile's extension builds
        profile = manager.catalog.get(name)
        ext = manager.extension(profile.extension)
        if not isinstance(ext, BuildsImages):
            raise InvalidInput(f"{name} ({profile.extension}) needs no image to be built")
        return await ext.build_for_profile(profile, manager.catalog.source(name).path,
                                           target=target, variables=variables, force=force,
                                           progress=progress)
    builders = offering(manager, BuildsImages)
    claimed = [e for e in builders if e.claims_image(name)]
    if not claimed:
        known = [d for e in builders for d in e.buildable_images()]
        raise InvalidInput(f"nothing builds an image named {name!r}",
                           hint="give a profile id (`sandboxer profiles list`) or one of: "
                           + ("; ".join(known) or "none"))
    if len(claimed) > 1:
        raise InvalidInput(f"{name!r} names an image of "
                           f"{' and of '.join(_name(e) for e in claimed)}",
                           hint="give the id of the profile whose image you mean")
    return await claimed[0].build_image(name, target=target, variables=variables,
                                        force=force, progress=progress, confined=confined)


# -- doctor -----------------------------------------------------------------------------


def doctor_checks(manager: Manager) -> list[Check]:
    """Every extension's doctor checks (core's own checks are the service's)."""
    from sandboxer.models.doctor import Check

    out: list[Check] = []
    for ext in offering(manager, DoctorChecks):
        try:
            out += ext.doctor_checks()
        except Exception as e:  # a broken check is a failed check, never a crashed doctor
            log.warning("doctor checks of %s failed: %s", _name(ext), e)
            out.append(Check(_name(ext), False, f"its doctor checks failed: "
                             f"{getattr(e, 'message', None) or e!r}",
                             f"see the documentation of {_name(ext)}"))
    return out
