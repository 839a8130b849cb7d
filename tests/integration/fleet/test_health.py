"""A host that goes down and comes back: probes, placement, unreachable, reconcile."""

from __future__ import annotations

import pytest
from tests.integration.conftest import ssh
from tests.integration.fleet.conftest import FleetEnv

pytestmark = pytest.mark.integration


def _check(fleet_env: FleetEnv) -> dict[str, dict[str, object]]:
    done = fleet_env.cli("targets", "check", "--json")
    import json

    return {c["name"]: c for c in json.loads(done.stdout)["items"]}


def test_a_host_whose_sshd_stops_is_unhealthy_and_its_sandboxes_unreachable(
        fleet_env: FleetEnv) -> None:
    on_h2 = fleet_env.create("spread", "--target", "h2")
    on_h3 = fleet_env.create("spread", "--target", "h3")
    h2 = fleet_env.host("h2")
    h2.stop_sshd()

    checked = _check(fleet_env)
    assert checked["h2"]["ok"] is False
    assert f"cannot reach target h2 over SSH (sbxtest@{h2.address}:22)" in str(
        checked["h2"]["error"])
    assert checked["h3"]["ok"] is True

    # Creates go to the others: zone b is h2 and h3, h2 is down.
    assert fleet_env.create("zone-b")["target"] == "h3"
    pinned = fleet_env.cli("create", "profile.spread", "--target", "h2")
    assert pinned.returncode == 6
    assert "h2: unhealthy: cannot reach target h2 over SSH" in pinned.stderr

    fleet_env.json("reconcile")
    down = fleet_env.get(on_h2["id"])
    assert down["state"] == "unreachable"
    assert down["reason"].startswith(f"target h2 is unhealthy: cannot reach target h2 over "
                                     f"SSH (sbxtest@{h2.address}:22)")
    assert fleet_env.get(on_h3["id"])["state"] == "ready"
    assert fleet_env.events(on_h2["id"])[-1] == "sandbox.unreachable"
    refused = fleet_env.cli("reachability", "show", on_h2["id"])
    assert refused.returncode != 0
    assert "is unreachable (target h2 is unhealthy: cannot reach target h2" in refused.stderr
    # Its lease can still be renewed; it stays unreachable.
    assert fleet_env.json("extend", on_h2["id"], "--ttl", "20m")["state"] == "unreachable"

    h2.start_sshd()
    fleet_env.json("reconcile")
    back = fleet_env.get(on_h2["id"])
    assert back["state"] == "ready"
    assert back["reason"] is None
    assert fleet_env.events(on_h2["id"])[-2:] == ["sandbox.extended", "sandbox.ready"]
    done = ssh(back["reachability"], "echo still-here")
    assert done.returncode == 0, done.stderr
    assert b"still-here" in done.stdout


def test_a_host_whose_link_goes_down_then_back_squares_lost_and_destroyed(
        fleet_env: FleetEnv) -> None:
    lost = fleet_env.create("zone-b", "--target", "h3")
    doomed = fleet_env.create("zone-b", "--target", "h3")
    kept = fleet_env.create("zone-b", "--target", "h3")
    h3 = fleet_env.host("h3")
    h3.link_down()
    try:
        fleet_env.json("reconcile")
        for doc in (lost, doomed, kept):
            now = fleet_env.get(doc["id"])
            assert now["state"] == "unreachable", now
            # No answer (a timeout) or "No route to host", whichever the kernel says first.
            assert now["reason"].startswith(f"target h3 is unhealthy: cannot reach target h3 "
                                            f"over SSH (sbxtest@{h3.address}:22): "), now
        # Behind our back, while nobody can reach it: one sandbox's containers go.
        containers = h3.labelled("sandboxer.id", lost["id"])
        assert containers
        h3.docker("rm", "-f", *containers)
        # A destroy while the host is down fails and stays destroying with its error.
        failed = fleet_env.cli("destroy", doomed["id"])
        assert failed.returncode != 0
        stuck = fleet_env.get(doomed["id"])
        assert stuck["state"] == "destroying"
        assert "destroy failed: cannot destroy" in stuck["error"]
    finally:
        h3.link_up()

    fleet_env.json("reconcile")
    gone = fleet_env.get(lost["id"])
    assert gone["state"] == "failed"
    assert gone["reason"] == "lost"
    assert "gone from target h3 while it was unreachable" in gone["error"]
    assert fleet_env.events(lost["id"])[-1] == "sandbox.failed"
    assert fleet_env.get(doomed["id"])["state"] == "destroyed"  # retried once h3 answered
    assert h3.labelled("sandboxer.id", doomed["id"]) == []
    assert fleet_env.get(kept["id"])["state"] == "ready"
    # The lost sandbox's leftovers (its network, its directory) went with the orphans.
    assert h3.docker("network", "ls", "-q", "--filter",
                     f"label=sandboxer.id={lost['id']}").stdout.split() == []
