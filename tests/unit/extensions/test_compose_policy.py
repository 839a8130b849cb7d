"""The allow-list applied to `docker compose config` output (policy.resolved_violations)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from sandboxer.extensions.compose_ssh import policy
from sandboxer.extensions.compose_ssh.override import SSHD_CAPS

P = "sbx-abcdefghij"
LOCKED = {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"]}
# What `docker compose config --format json` prints for a clean sandbox (abridged).
CLEAN: dict[str, Any] = {
    "name": P,
    "networks": {"default": {"name": f"{P}_default", "ipam": {}}},
    "services": {
        "main": {**LOCKED, "image": "x", "cap_add": ["CHOWN"], "command": None,
                 "networks": {"default": None},
                 "ports": [{"mode": "ingress", "host_ip": "127.0.0.1", "target": 22,
                            "published": "23456", "protocol": "tcp"}],
                 "volumes": [{"type": "volume", "source": "data", "target": "/d"},
                             {"type": "tmpfs", "target": "/run/secrets"}]},
        "side": {**LOCKED, "image": "x", "pids_limit": 4096},
    },
    "volumes": {"data": {"name": f"{P}_data", "labels": {"sandboxer.id": P}}},
}
ANY = "0.0.0.0"  # noqa: S104 - a port published everywhere, as data
OWN = {"ports": [{"target": 22, "host_ip": "127.0.0.1", "published": 23456}], "binds": []}


def found(cfg: dict[str, Any]) -> list[str]:
    return [e for e, _ in policy.resolved_violations(cfg, project=P, main="main",
                                                     caps=SSHD_CAPS, own=OWN)]


def test_a_clean_sandbox_passes() -> None:
    assert found(CLEAN) == []


def _with(path: str, value: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(CLEAN)
    *parents, last = path.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return cfg


CASES = [
    ("services.side.pid", "host", "host-pid"),
    ("services.side.network_mode", "container:sbx-other-main-1", "shared-namespaces"),
    ("services.side.network_mode", "service:main", "shared-namespaces"),
    ("services.side.ipc", "container:x", "shared-namespaces"),
    ("services.side.cgroup", "host", "host-cgroup"),
    ("services.side.device_cgroup_rules", ["c 1:3 mr"], "devices"),
    ("services.side.devices", ["/dev/kmsg"], "devices"),
    ("services.side.cap_add", ["CHOWN"], "extra-capabilities"),
    ("services.main.cap_add", ["CHOWN", "SYS_ADMIN"], "extra-capabilities"),
    ("services.side.security_opt", ["no-new-privileges:true", "seccomp=unconfined"],
     "privileged"),
    ("services.side.cap_drop", [], "extra-capabilities"),
    ("services.side.volumes", [{"type": "bind", "source": "/", "target": "/host"}],
     "host-paths"),
    ("services.side.volumes", [{"type": "bind", "source": "/var/run/docker.sock",
                                "target": "/s"}], "docker-socket"),
    ("services.side.ports", [{"host_ip": ANY, "target": 22, "published": "18080"}],
     "ports"),
    ("services.side.sysctls", {"kernel.x": "1"}, "unlisted-keys"),
    ("services.side.build", {"context": "."}, "build"),
    ("volumes.data.driver_opts", {"type": "none", "o": "bind", "device": "/"},
     "driver-opts"),
    ("volumes.data.external", True, "external-resources"),
    ("volumes.data.name", "sbx-other_data", "external-resources"),
    ("networks.default.driver_opts", {"com.docker.network.bridge.name": "docker0"},
     "driver-opts"),
    ("secrets", {"s": {"file": "/etc/shadow"}}, "host-files"),
    ("configs", {"c": {"file": "/etc"}}, "host-files"),
]


@pytest.mark.parametrize(("path", "value", "entry"), CASES)
def test_each_setting_outside_the_allow_list_names_its_grant(path: str, value: Any,
                                                              entry: str) -> None:
    assert entry in found(_with(path, value))


def test_the_main_ports_must_be_the_overrides_own() -> None:
    cfg = copy.deepcopy(CLEAN)
    cfg["services"]["main"]["ports"].append(
        {"host_ip": ANY, "target": 22, "published": "18080"})
    assert found(cfg) == ["ports"]


def test_every_grant_the_policy_names_is_one_a_target_accepts() -> None:
    from sandboxer.extensions.compose_ssh.config import ALLOWABLE, TargetConfig

    named = {e for _, _, e in CASES} | set(policy._RAW_SERVICE_KEYS.values()) | {
        "include", "host-network", "host-ipc", "unlisted-keys"}
    assert named <= set(ALLOWABLE)
    assert TargetConfig(name="t", url="ssh://u@h", allow=sorted(named)).allow
