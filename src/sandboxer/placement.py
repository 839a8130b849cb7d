"""Route policies over targets: choose where a sandbox goes, or say why nowhere fits."""

from __future__ import annotations

from sandboxer.errors import NoTarget
from sandboxer.models.extension import Target

_KIND_ORDER = {
    "prefer-self-hosted": ("self-hosted", "cloud"),
    "self-hosted-only": ("self-hosted",),
    "prefer-cloud": ("cloud", "self-hosted"),
    "cloud-only": ("cloud",),
}


def choose(targets: list[Target], route: str, *, pinned: str | None = None) -> Target:
    """Pick the healthy eligible target with the most free capacity.

    Kinds are tried in the route's order; ``pinned`` restricts the choice to one target
    (still subject to health and capacity). Raises NoTarget with one line per target.
    """
    kinds = _KIND_ORDER[route]
    reasons: list[str] = []
    eligible: dict[str, list[Target]] = {k: [] for k in kinds}
    for t in targets:
        if pinned is not None and t.name != pinned:
            reasons.append(f"{t.name}: not the pinned target {pinned!r}")
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
            return max(eligible[kind], key=lambda t: (t.free is None, t.free or 0))
    if pinned is not None and all(t.name != pinned for t in targets):
        reasons.insert(0, f"{pinned}: no such target for this extension")
    detail = "\n".join(f"  {r}" for r in reasons) or "  (the extension offers no target)"
    raise NoTarget(f"no target can take this sandbox (route {route}):\n{detail}")
