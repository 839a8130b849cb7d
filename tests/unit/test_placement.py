"""placement.choose: routes, capacity, health, spread, pin and prefer by label."""

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
