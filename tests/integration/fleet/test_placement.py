"""Placement over three docker hosts: spread, capacity, pin and prefer by target label."""

from __future__ import annotations

import pytest
from tests.integration.fleet.conftest import FleetEnv

pytestmark = pytest.mark.integration


def test_targets_list_shows_the_labels(fleet_env: FleetEnv) -> None:
    items = {t["name"]: t for t in fleet_env.json("targets", "list")["items"]}
    assert items["h2"]["labels"] == {"zone": "b", "disk": "ssd"}
    assert items["local"]["labels"] == {}
    table = fleet_env.cli("targets", "list").stdout
    assert "disk=ssd,zone=b" in table


def test_spread_puts_each_create_on_the_least_loaded_healthy_host(fleet_env: FleetEnv) -> None:
    placed = [fleet_env.create("spread")["target"] for _ in range(3)]
    assert sorted(placed) == ["h1", "h2", "h3"]  # never local: it has no engine here
    for doc in fleet_env.json("list")["items"]:
        h = fleet_env.host(doc["target"])
        assert h.labelled("sandboxer.id", doc["id"]), f"{doc['id']} not on {h.name}"
    # h1 (capacity 1) is full now; the next two go to h2 and h3, one each.
    more = sorted(fleet_env.create("spread")["target"] for _ in range(2))
    assert more == ["h2", "h3"]


def test_pin_by_label_and_the_target_capacity(fleet_env: FleetEnv) -> None:
    first = fleet_env.create("zone-a")
    assert first["target"] == "h1"
    full = fleet_env.cli("create", "profile.zone-a")
    assert full.returncode == 6, full.stderr
    assert "h1: full (1/1 sandboxes)" in full.stderr
    assert "h2: lacks the labels the profile pins (zone=a; it has disk=ssd,zone=b)" \
        in full.stderr
    assert [t for t in (d["target"] for d in fleet_env.json("list")["items"])] == ["h1"]
    zone_b = {fleet_env.create("zone-b")["target"] for _ in range(2)}
    assert zone_b == {"h2", "h3"}


def test_prefer_fills_the_preferred_host_first_then_spreads(fleet_env: FleetEnv) -> None:
    assert [fleet_env.create("ssd")["target"] for _ in range(2)] == ["h2", "h2"]
    # h2 (capacity 2) is full: the others, least loaded first.
    assert fleet_env.create("ssd")["target"] in ("h1", "h3")
