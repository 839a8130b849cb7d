"""Route policies over targets: choose where a sandbox goes, or say why nowhere fits.

Order of decisions: ``pinned`` (a create's --target) and the profile's ``placement.pin``
labels narrow the field; the route excludes kinds and orders the rest; health and capacity
drop what cannot take a sandbox now; ``placement.prefer`` labels come first within a
kind; among equals the least loaded target wins (fewest live sandboxes, then most free).

Health comes from the extension's probe, made before each create (``probe_candidates``),
except for a create that has one candidate only (pinned with --target, or the only
target) when that target answered within ``FRESH_SECONDS``: a successful probe, create or
`targets check` of it in this process. Any failure seen on a target forgets it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sandboxer.errors import NoTarget
from sandboxer.models.extension import Target

if TYPE_CHECKING:
    from sandboxer.extensions.base import Extension
    from sandboxer.models.profile import PlacementSpec

# How long a target that answered is trusted without a probe by a create that could not go
# anywhere else. Short: a target that goes down within it fails that create (exit 5, the
# sandbox recorded failed) where a probe would have refused it (exit 6), and is probed
# again by the next one.
FRESH_SECONDS = 5.0
_answered: dict[tuple[str, str, str], float] = {}  # (home, extension, target) -> monotonic

_KIND_ORDER = {
    "prefer-self-hosted": ("self-hosted", "cloud"),
    "self-hosted-only": ("self-hosted",),
    "prefer-cloud": ("cloud", "self-hosted"),
    "cloud-only": ("cloud",),
}


def _carries(t: Target, labels: dict[str, str]) -> bool:
    return all(t.labels.get(k) == v for k, v in labels.items())


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _load(t: Target, prefer: dict[str, str]) -> tuple[bool, int, bool, int]:
    """Sort key, smallest first: preferred, fewest live sandboxes, then most free
    (an unbounded target counts as the freest)."""
    return (not (prefer and _carries(t, prefer)), t.used, t.free is not None, -(t.free or 0))


def choose(targets: list[Target], route: str, *, pinned: str | None = None,
           placement: PlacementSpec | None = None) -> Target:
    """Pick the healthy eligible target that fits best (see the module docstring).

    Kinds are tried in the route's order; ``pinned`` restricts the choice to one target
    and ``placement.pin`` to the targets carrying all its labels (still subject to health
    and capacity). Raises NoTarget with one line per target.
    """
    kinds = _KIND_ORDER[route]
    pin = dict(placement.pin) if placement else {}
    prefer = dict(placement.prefer) if placement else {}
    reasons: list[str] = []
    eligible: dict[str, list[Target]] = {k: [] for k in kinds}
    for t in targets:
        if pinned is not None and t.name != pinned:
            reasons.append(f"{t.name}: not the pinned target {pinned!r}")
        elif pin and not _carries(t, pin):
            reasons.append(f"{t.name}: lacks the labels the profile pins "
                           f"({_labels(pin)}; it has {_labels(t.labels) or 'none'})")
        elif t.kind not in kinds:
            reasons.append(f"{t.name}: {t.kind} target, route {route} excludes it")
        elif not t.healthy:
            reasons.append(f"{t.name}: unhealthy: {t.reason or 'no reason given'}")
        elif t.free is not None and t.free <= 0:
            reasons.append(f"{t.name}: full ({t.used}/{t.capacity} sandboxes)")
        else:
            eligible[t.kind].append(t)
    for kind in kinds:
        if eligible[kind]:
            return min(eligible[kind], key=lambda t: _load(t, prefer))
    if pinned is not None and all(t.name != pinned for t in targets):
        reasons.insert(0, f"{pinned}: no such target for this extension")
    detail = "\n".join(f"  {r}" for r in reasons) or "  (the extension offers no target)"
    raise NoTarget(f"no target can take this sandbox (route {route}):\n{detail}",
                   hint="see `sandboxer targets check`" if any(
                       "unhealthy" in r or "full" in r for r in reasons) else None)


def _key(ext: Extension, target: str) -> tuple[str, str, str]:
    return (str(ext.settings.home), ext.name, target)


def answered(ext: Extension, target: str) -> None:
    """``target`` just answered (a probe, a create, a check succeeded)."""
    _answered[_key(ext, target)] = time.monotonic()


def forget(ext: Extension, target: str) -> None:
    """Something failed on ``target``: the next create probes it."""
    _answered.pop(_key(ext, target), None)


def record(ext: Extension, probed: Iterable[Target]) -> None:
    for t in probed:
        (answered if t.healthy else forget)(ext, t.name)


def _fresh(ext: Extension, t: Target) -> bool:
    at = _answered.get(_key(ext, t.name))
    return t.healthy and at is not None and time.monotonic() - at < FRESH_SECONDS


async def probe_candidates(ext: Extension, candidates: list[Target]) -> list[Target]:
    """The candidates of a create, probed at once; a lone one that answered within
    ``FRESH_SECONDS`` (and that ``targets()`` still calls healthy) is taken as it is."""
    if len(candidates) == 1 and _fresh(ext, candidates[0]):
        return candidates
    probed = list(await asyncio.gather(*(ext.probe(t) for t in candidates)))
    record(ext, probed)
    return probed
