"""placement.choose: routes, capacity, health, spread, pin and prefer by label; and the
plan-time probes it chooses from (probe_candidates)."""

from __future__ import annotations

import pytest

from sandboxer.errors import NoTarget
from sandboxer.models.extension import Target
from sandboxer.models.profile import PlacementSpec
from sandboxer.placement import choose


def _t(name: str, *, used: int = 0, capacity: int | None = None, healthy: bool = True,
       kind: str = "self-hosted", reason: str | None = None, **labels: str) -> Target:
    return Target.model_validate({"name": name, "extension": "ext.x", "kind": kind,
                                  "used": used, "capacity": capacity, "healthy": healthy,
                                  "reason": reason, "labels": labels})


def test_spread_picks_the_least_loaded_then_the_most_free() -> None:
    targets = [_t("a", used=2, capacity=10), _t("b", used=1, capacity=3),
               _t("c", used=1, capacity=5)]
    assert choose(targets, "prefer-self-hosted").name == "c"
    assert choose([_t("a", used=1), _t("b", used=0, capacity=9)],
                  "prefer-self-hosted").name == "b"


def test_an_unbounded_target_counts_as_freest_among_equal_loads() -> None:
    assert choose([_t("a", used=1, capacity=9), _t("b", used=1)],
                  "prefer-self-hosted").name == "b"


def test_unhealthy_and_full_targets_are_passed_over_with_reasons() -> None:
    targets = [_t("a", healthy=False, reason="ssh: Connection refused"),
               _t("b", used=2, capacity=2), _t("c", used=5)]
    assert choose(targets, "prefer-self-hosted").name == "c"
    with pytest.raises(NoTarget) as e:
        choose(targets[:2], "prefer-self-hosted")
    assert "a: unhealthy: ssh: Connection refused" in e.value.message
    assert "b: full (2/2 sandboxes)" in e.value.message


def test_routes_still_order_and_exclude_kinds() -> None:
    targets = [_t("self", used=5), _t("cloud", kind="cloud")]
    assert choose(targets, "prefer-self-hosted").name == "self"
    assert choose(targets, "prefer-cloud").name == "cloud"
    with pytest.raises(NoTarget, match="cloud target, route self-hosted-only excludes it"):
        choose([_t("cloud", kind="cloud")], "self-hosted-only")


def test_pin_keeps_only_targets_carrying_every_label() -> None:
    targets = [_t("a", zone="x"), _t("b", zone="y", gpu="yes", used=3),
               _t("c", zone="y", used=1)]
    pin = PlacementSpec(pin={"zone": "y"})
    assert choose(targets, "prefer-self-hosted", placement=pin).name == "c"
    both = PlacementSpec(pin={"zone": "y", "gpu": "yes"})
    assert choose(targets, "prefer-self-hosted", placement=both).name == "b"
    with pytest.raises(NoTarget) as e:
        choose(targets, "prefer-self-hosted", placement=PlacementSpec(pin={"zone": "z"}))
    assert "a: lacks the labels the profile pins (zone=z; it has zone=x)" in e.value.message


def test_pin_still_honours_health_and_capacity() -> None:
    targets = [_t("a", zone="y", healthy=False, reason="down"),
               _t("b", zone="y", used=1, capacity=1), _t("c")]
    with pytest.raises(NoTarget) as e:
        choose(targets, "prefer-self-hosted", placement=PlacementSpec(pin={"zone": "y"}))
    assert "a: unhealthy: down" in e.value.message
    assert "b: full" in e.value.message


def test_prefer_goes_first_but_falls_back_to_the_others() -> None:
    targets = [_t("a", used=0), _t("b", used=4, ssd="yes"), _t("c", used=1, ssd="yes")]
    prefer = PlacementSpec(prefer={"ssd": "yes"})
    assert choose(targets, "prefer-self-hosted", placement=prefer).name == "c"
    full = [_t("a", used=0), _t("b", used=1, capacity=1, ssd="yes")]
    assert choose(full, "prefer-self-hosted", placement=prefer).name == "a"


def test_prefer_does_not_override_the_route_order() -> None:
    targets = [_t("self"), _t("cloud", kind="cloud", ssd="yes")]
    prefer = PlacementSpec(prefer={"ssd": "yes"})
    assert choose(targets, "prefer-self-hosted", placement=prefer).name == "self"


def test_a_pinned_target_name_and_labels_combine() -> None:
    targets = [_t("a", zone="y"), _t("b", zone="y")]
    pin = PlacementSpec(pin={"zone": "y"})
    assert choose(targets, "prefer-self-hosted", pinned="b", placement=pin).name == "b"
    with pytest.raises(NoTarget, match="nope: no such target"):
        choose(targets, "prefer-self-hosted", pinned="nope")


def test_placement_labels_are_checked_like_sandbox_labels() -> None:
    with pytest.raises(ValueError, match="label"):
        PlacementSpec.model_validate({"pin": {"Bad Key": "x"}})


# -- plan-time probes: a lone candidate that answered recently ---------------------------


class _Probed:
    """An extension whose probe counts its calls and answers ``healthy``."""

    name = "ext.x"

    def __init__(self, home: str, healthy: bool = True) -> None:
        self.settings = type("S", (), {"home": home})()
        self.healthy = healthy
        self.calls: list[str] = []

    async def probe(self, t: Target) -> Target:
        self.calls.append(t.name)
        return t.model_copy(update={"healthy": self.healthy,
                                    "reason": None if self.healthy else "down"})


def _plan(ext: _Probed, *targets: Target) -> list[Target]:
    import asyncio

    from sandboxer.placement import probe_candidates

    return asyncio.run(probe_candidates(ext, list(targets)))  # type: ignore[arg-type]


def test_a_lone_candidate_that_answered_is_not_probed_again(tmp_path: object) -> None:
    from sandboxer import placement

    ext = _Probed(str(tmp_path))
    assert _plan(ext, _t("a"))[0].healthy
    assert _plan(ext, _t("a"))[0].healthy
    assert ext.calls == ["a"]
    placement.forget(ext, "a")  # type: ignore[arg-type]
    _plan(ext, _t("a"))
    assert ext.calls == ["a", "a"]
    # Several candidates: a cached one could have been the wrong choice, all are probed.
    _plan(ext, _t("a"), _t("b"))
    assert ext.calls == ["a", "a", "a", "b"]


def test_failures_are_never_cached_and_forget_what_answered(tmp_path: object) -> None:
    ext = _Probed(str(tmp_path))
    _plan(ext, _t("a"))
    ext.healthy = False
    found = _plan(ext, _t("a"), _t("b"))  # both probed, both fail
    assert not any(t.healthy for t in found)
    assert not _plan(ext, _t("a"))[0].healthy  # probed again: the failure was not kept
    assert ext.calls == ["a", "a", "b", "a"]


def test_a_cached_answer_expires_and_never_overrides_targets_own_health(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from sandboxer import placement

    ext = _Probed(str(tmp_path))
    _plan(ext, _t("a"))
    unhealthy = _t("a", healthy=False, reason="engine gone")
    _plan(ext, unhealthy)  # targets() itself says unhealthy: probed, not taken as cached
    assert ext.calls == ["a", "a"]
    monkeypatch.setattr(placement, "FRESH_SECONDS", 0.0)
    _plan(ext, _t("a"))
    assert ext.calls == ["a", "a", "a"]
    # Another home's target of the same name shares nothing.
    monkeypatch.setattr(placement, "FRESH_SECONDS", 60.0)
    other = _Probed(str(tmp_path) + "-other")
    _plan(other, _t("a"))
    assert other.calls == ["a"]
